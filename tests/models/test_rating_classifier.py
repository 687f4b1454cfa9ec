"""RatingClassifier by hand: labels, binary and multiclass losses, prequential recording."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from tfembsize._keras import keras
from tfembsize.layers import LadderEmbedding
from tfembsize.models import RatingClassifier

EPS = 1e-3
RATINGS = np.array([1.0, 2.0, 3.0, 3.5, 4.0, 4.5, 5.0], np.float32)
USERS = np.array([0, 1, 2, 0, 1, 2, 0], np.int32)
ITEMS = np.array([1, 0, 1, 2, 2, 0, 0], np.int32)
E_USER = np.array([[0.5, -1.0], [1.5, 0.25], [-0.75, 0.5]], np.float32)
E_ITEM = np.array([[1.0, 0.0], [-0.5, 2.0], [0.3, -0.4]], np.float32)


def tiny(task):
    """Two 2-wide one-rung tables and a head with 3 hidden units, every weight set by hand."""
    users = LadderEmbedding(3, (2,), name="user_embedding")
    items = LadderEmbedding(3, (2,), name="item_embedding")
    model = RatingClassifier(users, items, task=task, hidden=3)
    users.embeddings_0.assign(E_USER)
    items.embeddings_0.assign(E_ITEM)
    head = model.head
    rng = np.random.default_rng(7)
    outputs = 1 if task == "binary" else 5
    head.hidden_kernel.assign(rng.normal(size=(4, 3)).astype(np.float32))
    head.hidden_bias.assign([0.1, -0.2, 0.3])
    head.output_kernel.assign(rng.normal(size=(3, outputs)).astype(np.float32))
    head.output_bias.assign(np.linspace(-0.5, 0.5, outputs).astype(np.float32))
    head.input_gamma.assign(np.array([1.0, 2.0, 0.5, 1.0], np.float32))
    head.hidden_beta.assign(np.array([0.0, 0.1, -0.1], np.float32))
    return model


def reference_logits(model, users, items, training):
    """The classifier in numpy: tanh(BN(rows)) per side, BN, dense, BN, tanh, dense."""

    def bn(x, gamma=1.0, beta=0.0):
        if training:
            mean, var = x.mean(axis=0), x.var(axis=0)
        else:
            mean, var = 0.0, 1.0  # the moving statistics of a fresh model
        return gamma * (x - mean) / np.sqrt(var + EPS) + beta

    h = model.head
    u = np.tanh(bn(E_USER[users].astype(np.float64)))
    i = np.tanh(bn(E_ITEM[items].astype(np.float64)))
    x = bn(np.concatenate([u, i], axis=1), h.input_gamma.numpy())
    z = x @ h.hidden_kernel.numpy() + h.hidden_bias.numpy()
    z = np.tanh(bn(z, 1.0, h.hidden_beta.numpy()))
    return z @ h.output_kernel.numpy() + h.output_bias.numpy()


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def batch(test=None):
    out = {
        "user": tf.constant(USERS),
        "item": tf.constant(ITEMS),
        "rating": tf.constant(RATINGS),
    }
    if test is not None:
        out["test"] = tf.constant(test)
    return out


def test_labels():
    binary, multiclass = tiny("binary"), tiny("multiclass")
    assert binary.labels(RATINGS).numpy().tolist() == [0, 0, 0, 0, 1, 1, 1]  # rating > 3.5
    # floor(rating - 0.5): 1..5 -> 0..4, half stars round down
    assert multiclass.labels(RATINGS).numpy().tolist() == [0, 1, 2, 3, 3, 4, 4]


def test_binary_losses_by_hand():
    model = tiny("binary")
    logits = reference_logits(model, USERS, ITEMS, training=False)[:, 0]
    labels = (RATINGS > 3.5).astype(np.float64)
    want = (sigmoid(logits) - labels) ** 2
    np.testing.assert_allclose(model(batch()).numpy()[:, 0], logits, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.sample_losses(batch()).numpy(), want, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(
        model.probabilities(batch()).numpy(), sigmoid(logits), rtol=1e-5, atol=1e-7
    )
    assert model.loss_name == "mse"


def test_multiclass_losses_by_hand():
    model = tiny("multiclass")
    logits = reference_logits(model, USERS, ITEMS, training=False)
    classes = np.floor(RATINGS - 0.5).astype(int)
    log_p = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    want = -log_p[np.arange(len(classes)), classes]
    np.testing.assert_allclose(model.sample_losses(batch()).numpy(), want, rtol=1e-5, atol=1e-6)
    assert model.loss_name == "cross_entropy"


@pytest.mark.parametrize("task", ["binary", "multiclass"])
def test_the_step_records_the_predictions_made_before_it(task):
    model = tiny(task)
    model.compile(optimizer=keras.optimizers.SGD(0.5))
    before = [w.copy() for w in model.get_weights()]
    logits = reference_logits(model, USERS, ITEMS, training=True)  # the batch's statistics
    if task == "binary":
        labels = (RATINGS > 3.5).astype(np.float64)
        p = sigmoid(logits[:, 0])
        losses, hits = (p - labels) ** 2, (p > 0.5) == (labels > 0.5)
    else:
        classes = np.floor(RATINGS - 0.5).astype(int)
        log_p = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        losses = -log_p[np.arange(len(classes)), classes]
        hits = logits.argmax(axis=1) == classes
    test = np.array([False, False, False, False, True, True, True])
    out = model.train_batch(batch(test))
    # the loss is summed over the batch, and the step changed the weights
    np.testing.assert_allclose(float(out.loss), losses.sum(), rtol=1e-5)
    assert any(not np.allclose(a, b) for a, b in zip(before, model.get_weights(), strict=True))
    # the totals are those of the predictions before the step, per part of the stream
    totals = model.prequential_totals.numpy()
    np.testing.assert_allclose(totals[0], [4, losses[:4].sum(), hits[:4].sum()], rtol=1e-5)
    np.testing.assert_allclose(totals[1], [3, losses[4:].sum(), hits[4:].sum()], rtol=1e-5)
    metrics = model.prequential_metrics()
    assert metrics["test"]["samples"] == 3
    assert metrics["test"]["accuracy"] == pytest.approx(hits[4:].mean())
    assert metrics["test"][model.loss_name] == pytest.approx(losses[4:].mean(), rel=1e-5)
    # the weights after the step predict otherwise: what was recorded is not their loss
    after = model.sample_losses(batch(), training=True).numpy()
    assert not np.allclose(after, losses, rtol=1e-3)
    model.reset_prequential()
    assert np.isnan(model.prequential_metrics()["train"]["accuracy"])


def test_create_config_and_bad_arguments():
    model = RatingClassifier.create(5, 4, "multiclass", ladder=(2, 4), hidden=6, seed=3)
    assert model.user_embedding.ladder == (2, 4) and model.embedding_dim == 4
    assert model(batch_of(2)).shape == (2, 5)
    assert model.head_params() == 4 * 8 + 8 * 6 + 6 + 4 * 6 + 6 * 5 + 5
    again = RatingClassifier.from_config(model.get_config())
    assert again.task == "multiclass" and again.hidden == 6
    assert again.user_embedding.ladder == (2, 4)
    twin = RatingClassifier.create(5, 4, "multiclass", ladder=(2, 4), hidden=6, seed=3)
    for a, b in zip(model.get_weights(), twin.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)  # seeded
    with pytest.raises(ValueError, match=r"`task` must be one of \('binary', 'multiclass'\)"):
        RatingClassifier.create(5, 4, "ordinal")
    with pytest.raises(ValueError, match=r"`hidden` must be a positive integer"):
        RatingClassifier.create(5, 4, hidden=0)
    with pytest.raises(ValueError, match=r"same width. Received widths 4 and 8"):
        RatingClassifier(LadderEmbedding(5, (2, 4)), LadderEmbedding(4, (2, 8)))
    with pytest.raises(ValueError, match=r"keys 'user', 'item', 'rating'"):
        model.sample_losses({"user": tf.constant([0]), "item": tf.constant([0])})


def batch_of(n):
    return {"user": tf.range(n), "item": tf.range(n)}
