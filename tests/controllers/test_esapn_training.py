"""ESAPN inside train_bpr: ladder backbones, the interaction stream, resume and XLA."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from tfembsize._keras import keras
from tfembsize.controllers import ESAPNConfig, ESAPNController, esapn_model, run_esapn
from tfembsize.data import InteractionStream, stream_dataset, synthetic
from tfembsize.layers import LadderEmbedding
from tfembsize.models import MF, LightGCN, TrainConfig, train_bpr

LADDER = (2, 4, 8)
CONFIG = ESAPNConfig(
    ladder=LADDER,
    batch_size=32,
    epochs=2,
    policy_hidden=16,
    count_buckets=64,
    learning_rate=0.01,
    policy_learning_rate=1e-3,
    chunk_steps=4,
    seed=3,
)


@pytest.fixture(scope="module")
def split():
    return synthetic(40, 60, 600, seed=0).split(0.5, 0.25, 0.25, seed=42)


def mf(split, seed=0):
    keras.utils.set_random_seed(seed)
    return esapn_model(MF.create(split.num_users, split.num_items, 8))


# The stream -----------------------------------------------------------------------------------


def test_the_stream_visits_every_interaction_once_per_epoch(split):
    train = split.train
    stream = InteractionStream(train, 64, seed=5, epochs=2)
    n = train.num_interactions
    assert stream.num_triples == n and stream.steps_per_epoch == -(-n // 64)
    keys = set(zip(train.users.tolist(), train.items.tolist(), strict=True))
    for epoch in range(2):
        seen = []
        for j in range(stream.steps_per_epoch):
            b = stream.batch_at(epoch * stream.steps_per_epoch + j)
            seen += list(zip(b["user"].tolist(), b["pos_item"].tolist(), strict=True))
            assert not train.contains(b["user"], b["neg_item"]).any()  # negatives are negative
        assert sorted(seen) == sorted(keys)  # each interaction once
        assert len(b["user"]) == n - 64 * (stream.steps_per_epoch - 1)  # the remainder last
    first = [stream.batch_at(j)["user"].tolist() for j in range(stream.steps_per_epoch)]
    second = [stream.batch_at(stream.steps_per_epoch + j)["user"] for j in range(1)]
    assert first[0] != second[0].tolist()  # another order in the second epoch
    again = InteractionStream(train, 64, seed=5, epochs=2).batch_at(3)
    for key, value in stream.batch_at(3).items():
        np.testing.assert_array_equal(again[key], value)
    ds = list(stream_dataset(train, 64, seed=5, epochs=2, start_step=3).take(2))
    np.testing.assert_array_equal(ds[0]["neg_item"].numpy(), again["neg_item"])
    assert len(list(stream_dataset(train, 64, seed=5, epochs=2))) == stream.num_steps
    with pytest.raises(ValueError, match=r"`step` must be < num_steps="):
        stream.batch_at(stream.num_steps)
    with pytest.raises(ValueError, match=r"`epochs` must be a positive integer"):
        InteractionStream(train, 64, epochs=0)


# Ladder backbones -------------------------------------------------------------------------------


@pytest.mark.parametrize("backbone", ["mf", "lightgcn"])
def test_ladder_backbones_train_with_train_bpr(split, backbone):
    keras.utils.set_random_seed(0)
    if backbone == "mf":
        model = esapn_model(MF.create(split.num_users, split.num_items, 8))
    else:
        model = esapn_model(LightGCN.create(split.train, 8, num_layers=2))
    users, items = model.user_embedding, model.item_embedding
    assert isinstance(users, LadderEmbedding) and users.ladder == LADDER
    users.assign_rungs(np.arange(split.num_users) % 3)
    config = TrainConfig(learning_rate=0.01, batch_size=32, max_steps=6, eval_every=6)
    result = train_bpr(model, split, None, config=config)
    assert np.isfinite(result.final_loss)
    # the training steps normalised with batch statistics and moved the moving ones
    assert np.abs(users.moving_mean.numpy()).max() > 0
    assert np.abs(items.moving_variance.numpy() - 1.0).max() > 0
    # evaluation uses every row lifted and normalised with the moving statistics
    lifted = users(tf.range(split.num_users), training=False).numpy()
    if backbone == "mf":
        got = model.representations()[0].numpy()
    else:
        got = model.ego_embeddings()[: split.num_users].numpy()
    np.testing.assert_allclose(got, lifted, rtol=1e-6)
    if backbone == "lightgcn":  # in training, every node is lifted and normalised together
        z = users.lift(tf.range(split.num_users)).numpy()
        scale = users.gamma.numpy() / np.sqrt(z.var(axis=0) + 1e-3)
        want = np.tanh((z - z.mean(axis=0)) * scale + users.beta.numpy())
        got = model.ego_embeddings(training=True)[: split.num_users].numpy()
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


# Resume and XLA ---------------------------------------------------------------------------------


def _train(split, max_steps, directory=None, jit_compile=False, sgd=False):
    model = mf(split)
    config = CONFIG.replace(jit_compile=jit_compile)
    controller = ESAPNController(config).attach(model)
    for side in controller.sides:  # lean towards grow, so that some rows do
        side.policy.network.output_bias.assign([0.0, 0.4])

    def batches(interactions, start):
        return stream_dataset(interactions, 32, seed=3, epochs=2, start_step=start)

    train_bpr(
        model,
        split,
        None,
        config=config.train_config(max_steps, seed=3),
        hook=controller,
        batches=batches,
        checkpoint_dir=directory,
        optimizer=(lambda lr: keras.optimizers.SGD(lr)) if sgd else None,
    )
    return model, controller


@pytest.fixture(scope="module")
def uninterrupted(split):
    return _train(split, 12)


def _assert_same(a, b, rtol=0.0, atol=0.0, policy_atol=0.0):
    (model_a, ctrl_a), (model_b, ctrl_b) = a, b
    assert model_a.user_embedding.rungs.tolist() == model_b.user_embedding.rungs.tolist()
    assert model_a.item_embedding.rungs.tolist() == model_b.item_embedding.rungs.tolist()
    for x, y in zip(model_a.get_weights(), model_b.get_weights(), strict=True):
        np.testing.assert_allclose(x, y, rtol=rtol, atol=atol)
    for x, y in zip(ctrl_a.variables(), ctrl_b.variables(), strict=True):
        x, y = np.asarray(x.numpy()), np.asarray(y.numpy())
        if x.dtype.kind in "iub":  # counts, ids, rungs: exactly
            np.testing.assert_array_equal(x, y)
        else:
            np.testing.assert_allclose(x, y, rtol=rtol, atol=policy_atol)


def test_an_interrupted_run_resumes_to_the_same_weights_rungs_and_policies(
    split, uninterrupted, tmp_path
):
    model, controller = uninterrupted
    assert controller.usable_params() > 2 * (split.num_users + split.num_items)  # rows grew
    _train(split, 7, tmp_path)  # stopped after 7 steps (mid-chunk, mid-epoch) ...
    resumed = _train(split, 12, tmp_path)  # ... continued by a new process's objects
    _assert_same(resumed, uninterrupted)


def test_a_run_compiled_with_xla_makes_the_same_decisions(split):
    # Plain SGD for the recommender: Adam's normalised steps would turn rounding noise in the
    # maps' biases (whose gradient the normalisation cancels) into steps of about lr.
    compiled = _train(split, 10, jit_compile=True, sgd=True)
    # The policies keep Adam (rate 1e-3): agreement to about that rate's rounding-driven steps.
    _assert_same(compiled, _train(split, 10, sgd=True), rtol=1e-4, atol=1e-5, policy_atol=2e-4)


def test_run_esapn_reports_and_resumes(split, tmp_path):
    config = CONFIG.replace(epochs=1, budget_cap=0.6)
    run = run_esapn(mf(split), split, config, directory=tmp_path)
    assert run.steps == InteractionStream(split.train, 32, epochs=1).num_steps
    assert run.train.steps == run.steps and run.train.validation is None
    summary = run.summary
    rows = split.num_users + split.num_items
    assert summary["usable_params"] <= summary["budget"] == int(0.4 * 8 * rows)
    assert summary["sparsity_reached"] == pytest.approx(1 - summary["usable_params"] / (8 * rows))
    last = run.train.history[-1].metrics
    assert last["sparsity_reached"] == pytest.approx(summary["sparsity_reached"])
    assert {"user_mean_size", "item_mean_size", "rows_at_2", "user_policy_loss"} <= set(last)
    # the finished run is read back, not trained again
    again = run_esapn(mf(split), split, config, directory=tmp_path)
    assert again.summary == summary
