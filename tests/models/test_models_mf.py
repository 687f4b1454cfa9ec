"""MF: hand-computed scores and losses, masks, gradients, config and the retrieval protocol."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tensorflow as tf
from models_testutil import dense

from tfembsize._keras import keras
from tfembsize.layers import BudgetedEmbedding, MaskedEmbedding
from tfembsize.models import MF, embedding_table


def _mf(l2: float = 1e-4) -> MF:
    user = MaskedEmbedding(3, 4, embeddings_initializer="ones", name="user_embedding")
    item = MaskedEmbedding(
        4, 4, embeddings_initializer=keras.initializers.Constant(0.5), name="item_embedding"
    )
    model = MF(user, item, l2=l2)
    user.assign_sizes([4, 2, 1])
    item.assign_sizes([4, 3, 2, 1])
    return model


def test_scores_are_dot_products_of_masked_rows():
    model = _mf()
    # score(u, i) = 0.5 * min(d_u, d_i) with user rows of ones and item rows of 0.5.
    expected = 0.5 * np.minimum.outer([4, 2, 1], [4, 3, 2, 1])
    np.testing.assert_allclose(model.score_users(tf.constant([0, 1, 2])).numpy(), expected)
    users, items = model.representations()
    np.testing.assert_allclose((users @ tf.transpose(items)).numpy(), expected)
    pairs = model({"user": tf.constant([0, 1, 2]), "item": tf.constant([3, 1, 0])})
    np.testing.assert_allclose(pairs.numpy(), [0.5, 1.0, 0.5])
    np.testing.assert_allclose(model.embed_users([1]).numpy(), [[1, 1, 0, 0]])
    np.testing.assert_allclose(model.embed_items([2]).numpy(), [[0.5, 0.5, 0, 0]])


def test_bpr_loss_by_hand():
    model = _mf(l2=1e-4)
    batch = {"user": [0, 1], "pos_item": [0, 1], "neg_item": [3, 2]}
    out = model.compute_bpr_loss(batch)
    # s_pos = [2.0, 1.0], s_neg = [0.5, 1.0]
    bpr = (math.log1p(math.exp(-1.5)) + math.log(2.0)) / 2
    # squared norms: users 4 + 2, positives 4/4 + 3/4, negatives 1/4 + 2/4 -> 8.5, / batch 2
    reg = 1e-4 * 8.5 / 2
    assert out.bpr_loss.numpy() == pytest.approx(bpr, rel=1e-6)
    assert out.reg_loss.numpy() == pytest.approx(reg, rel=1e-6)
    assert out.loss.numpy() == pytest.approx(bpr + reg, rel=1e-6)
    assert float(out.layer_loss) == 0.0


def test_layer_regularizer_is_added_to_the_loss():
    user = MaskedEmbedding(3, 4, embeddings_initializer="ones", embeddings_regularizer="l2")
    item = MaskedEmbedding(4, 4, embeddings_initializer="zeros")
    model = MF(user, item, l2=0.0)
    user.assign_sizes([4, 2, 1])
    out = model.compute_bpr_loss({"user": [0], "pos_item": [0], "neg_item": [1]})
    # keras "l2" is 0.01 * sum of squares of the kept coordinates: 0.01 * 7
    assert out.layer_loss.numpy() == pytest.approx(0.07, rel=1e-6)
    assert out.loss.numpy() == pytest.approx(math.log(2.0) + 0.07, rel=1e-6)


def test_masked_coordinates_get_zero_gradient():
    model = MF.create(3, 4, 4)
    model.user_embedding.assign_sizes([4, 2, 1])
    model.item_embedding.assign_sizes([1, 3, 2, 4])
    batch = {"user": [0, 1, 2, 1], "pos_item": [0, 1, 2, 3], "neg_item": [3, 2, 1, 0]}
    with tf.GradientTape() as tape:
        loss = model.compute_bpr_loss(batch).loss
    g_user, g_item = (
        dense(g)
        for g in tape.gradient(
            loss, [model.user_embedding.embeddings, model.item_embedding.embeddings]
        )
    )
    for g, layer in ((g_user, model.user_embedding), (g_item, model.item_embedding)):
        mask = np.arange(4)[None, :] < layer.sizes[:, None]
        assert np.all(g[~mask] == 0)
        assert np.all(np.abs(g[mask]) > 0)


def test_plain_embedding_tables():
    user = keras.layers.Embedding(3, 2, embeddings_initializer="ones")
    item = keras.layers.Embedding(4, 2, embeddings_initializer="ones")
    model = MF(user, item)
    np.testing.assert_allclose(model.score_users([0, 2]).numpy(), np.full((2, 4), 2.0))
    assert model.usable_params() == (3 + 4) * 2
    np.testing.assert_allclose(embedding_table(item).numpy(), np.ones((4, 2)))


def test_create_uses_the_spec_initialiser_and_names():
    model = MF.create(50, 60, 32)
    assert model.user_embedding.name == "user_embedding"
    assert model.item_embedding.name == "item_embedding"
    w = model.user_embedding.embeddings.numpy()
    assert abs(w.std() - 0.01) < 0.002
    assert not np.allclose(w, model.item_embedding.embeddings.numpy()[:50])


def test_budgeted_tables():
    user = BudgetedEmbedding(10, 8, sparsity=0.5, name="user_embedding")
    item = BudgetedEmbedding(20, 8, sparsity=0.75, name="item_embedding")
    model = MF(user, item)
    assert model.usable_params() == 10 * 4 + 20 * 2
    out = model.score_users([0, 1])
    assert out.shape == (2, 20)


def test_config_round_trip_and_weights():
    model = _mf(l2=3e-4)
    config = model.get_config()
    clone = MF.from_config(config)
    assert clone.get_config() == config
    assert clone.l2 == 3e-4
    clone.set_weights(model.get_weights())
    np.testing.assert_array_equal(clone.user_embedding.sizes, [4, 2, 1])
    np.testing.assert_allclose(clone.score_users([0, 1, 2]), model.score_users([0, 1, 2]))


def test_save_and_load_weights(tmp_path):
    model = _mf()
    path = str(tmp_path / "mf.weights.h5")
    model.save_weights(path)
    other = MF.create(3, 4, 4)
    other.load_weights(path)
    np.testing.assert_array_equal(other.item_embedding.sizes, [4, 3, 2, 1])
    np.testing.assert_allclose(other.score_users([0, 1, 2]), model.score_users([0, 1, 2]))


def test_bad_arguments():
    user = MaskedEmbedding(3, 4)
    with pytest.raises(ValueError, match=r"same width.*output_dim=4.*output_dim=2"):
        MF(user, MaskedEmbedding(4, 2))
    with pytest.raises(ValueError, match=r"`l2` must be a non-negative float. Received: l2=-1"):
        MF(user, MaskedEmbedding(4, 4), l2=-1)
    with pytest.raises(TypeError, match="`user_embedding` must be a Keras embedding layer"):
        MF("table", MaskedEmbedding(4, 4))
    model = MF.create(3, 4, 4)
    with pytest.raises(ValueError, match="Missing: \\['neg_item'\\]"):
        model.compute_bpr_loss({"user": [0], "pos_item": [1]})
    with pytest.raises(ValueError, match="keys 'user' and 'item'"):
        model({"user": tf.constant([0])})
