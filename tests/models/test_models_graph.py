"""LightGCN and NGCF: hand-checked adjacencies, propagation, masks before propagation."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from models_testutil import dense

from tfembsize._keras import keras
from tfembsize.data import Interactions
from tfembsize.layers import MaskedEmbedding
from tfembsize.models import NGCF, LightGCN, normalized_adjacency
from tfembsize.models.graph import sparse_matmul

R2 = 2**-0.5
# Nodes: u0 u1 u2 i0 i1 i2 i3. Pairs (0,0) (0,1) (1,1) (2,2) (2,3).
# Degrees: u0 2, u1 1, u2 2, i0 1, i1 2, i2 1, i3 1; entry (a, b) = 1 / sqrt(deg a * deg b).
LIGHTGCN_ADJ = np.array(
    [
        [0, 0, 0, R2, 0.5, 0, 0],
        [0, 0, 0, 0, R2, 0, 0],
        [0, 0, 0, 0, 0, R2, R2],
        [R2, 0, 0, 0, 0, 0, 0],
        [0.5, R2, 0, 0, 0, 0, 0],
        [0, 0, R2, 0, 0, 0, 0],
        [0, 0, R2, 0, 0, 0, 0],
    ]
)
# A + I has degrees 3 2 3 2 3 2 2; each row of D^-1 (A + I) is 1 / degree on its support.
T, H = 1 / 3, 1 / 2
NGCF_ADJ = np.array(
    [
        [T, 0, 0, T, T, 0, 0],
        [0, H, 0, 0, H, 0, 0],
        [0, 0, T, 0, 0, T, T],
        [H, 0, 0, H, 0, 0, 0],
        [T, T, 0, 0, T, 0, 0],
        [0, 0, H, 0, 0, H, 0],
        [0, 0, H, 0, 0, 0, H],
    ]
)


def _tables(d: int, init: str = "ones") -> tuple[MaskedEmbedding, MaskedEmbedding]:
    return (
        MaskedEmbedding(3, d, embeddings_initializer=init, name="user_embedding"),
        MaskedEmbedding(4, d, embeddings_initializer=init, name="item_embedding"),
    )


def test_adjacencies_by_hand(tiny):
    lightgcn = tf.sparse.to_dense(normalized_adjacency(tiny)).numpy()
    np.testing.assert_allclose(lightgcn, LIGHTGCN_ADJ, rtol=1e-6)
    ngcf = normalized_adjacency(tiny, normalization="left", self_loops=True)
    np.testing.assert_allclose(tf.sparse.to_dense(ngcf).numpy(), NGCF_ADJ, rtol=1e-6)
    model = LightGCN(*_tables(2), tiny)
    np.testing.assert_allclose(tf.sparse.to_dense(model.adjacency), LIGHTGCN_ADJ, rtol=1e-6)
    model = NGCF(*_tables(2), tiny, layer_sizes=(2,))
    np.testing.assert_allclose(tf.sparse.to_dense(model.adjacency), NGCF_ADJ, rtol=1e-6)


@pytest.mark.parametrize("symmetric", [False, True])
def test_sparse_matmul_value_and_gradient(symmetric):
    rng = np.random.default_rng(0)
    dense_a = rng.normal(size=(6, 6)) * (rng.random((6, 6)) < 0.4)
    if symmetric:
        dense_a = dense_a + dense_a.T
    a = tf.sparse.from_dense(tf.constant(dense_a, tf.float32))
    x = tf.constant(rng.normal(size=(6, 3)), tf.float32)
    w = tf.constant(rng.normal(size=(6, 3)), tf.float32)
    matmul = sparse_matmul(a, symmetric=symmetric)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = matmul(x)
        loss = tf.reduce_sum(y * w)
    np.testing.assert_allclose(y.numpy(), dense_a @ x.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        tape.gradient(loss, x).numpy(), dense_a.T @ w.numpy(), rtol=1e-5, atol=1e-5
    )
    compiled = tf.function(lambda v: sparse_matmul(a, symmetric=symmetric)(v))
    np.testing.assert_allclose(compiled(x).numpy(), y.numpy(), rtol=1e-6)


def test_adjacency_errors(tiny):
    with pytest.raises(ValueError, match="`normalization` must be one of"):
        normalized_adjacency(tiny, normalization="row")
    with pytest.raises(TypeError, match="without `users`"):
        normalized_adjacency(object())


def test_lightgcn_one_layer_by_hand(tiny):
    model = LightGCN(*_tables(2), tiny, num_layers=1)
    users, items = model.representations()
    # E1 = A E0 with E0 all ones; final = (E0 + E1) / 2.
    np.testing.assert_allclose(
        users.numpy()[:, 0], [(1 + R2 + 0.5) / 2, (1 + R2) / 2, (1 + 2 * R2) / 2], rtol=1e-6
    )
    np.testing.assert_allclose(
        items.numpy()[:, 1],
        [(1 + R2) / 2, (1 + 0.5 + R2) / 2, (1 + R2) / 2, (1 + R2) / 2],
        rtol=1e-6,
    )
    expected = 2 * ((1 + R2) / 2) * ((1.5 + R2) / 2)  # score(u1, i1), two equal coordinates
    assert model.score_users([1]).numpy()[0, 1] == pytest.approx(expected, rel=1e-6)


def test_lightgcn_three_layers_match_the_matrix_by_hand(tiny):
    user, item = _tables(3, init=keras.initializers.RandomNormal(0, 1.0, seed=1))
    model = LightGCN(user, item, tiny)
    e0 = np.concatenate([user.embeddings.numpy(), item.embeddings.numpy()])
    layers = [e0]
    for _ in range(3):
        layers.append(LIGHTGCN_ADJ @ layers[-1])
    final = np.mean(layers, axis=0)
    users, items = model.representations()
    np.testing.assert_allclose(users.numpy(), final[:3], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(items.numpy(), final[3:], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        model.score_users([0, 2]).numpy(), final[[0, 2]] @ final[3:].T, rtol=1e-5, atol=1e-6
    )


def test_lightgcn_loss_by_hand(tiny):
    user, item = _tables(2)
    model = LightGCN(user, item, tiny, num_layers=1, l2=1.0)
    user.assign_sizes([2, 1, 2])
    out = model.compute_bpr_loss({"user": [1, 0], "pos_item": [1, 0], "neg_item": [2, 3]})
    # L2 on masked layer-0 rows: users 1 + 2, items 2 + 2, 2 + 2 -> 11, / batch 2.
    assert out.reg_loss.numpy() == pytest.approx(11 / 2, rel=1e-6)
    users, items = model.representations(training=True)
    s = tf.linalg.matmul(users, items, transpose_b=True).numpy()
    bpr = np.mean(np.log1p(np.exp([s[1, 2] - s[1, 1], s[0, 3] - s[0, 0]])))
    assert out.bpr_loss.numpy() == pytest.approx(bpr, rel=1e-6)


def test_lightgcn_mask_applies_before_propagation(tiny):
    user, item = _tables(2)
    model = LightGCN(user, item, tiny, num_layers=1)
    user.assign_sizes([2, 1, 2])  # u1 keeps coordinate 0 only
    raw = user.embeddings.numpy()
    raw[1, 1] = 1e6  # a masked coordinate with a huge raw value
    user.embeddings.assign(raw)
    _, items = model.representations()
    # E1[i1] = 1/2 E0[u0] + R2 E0[u1] = [1/2 + R2, 1/2]: u1's masked coordinate adds nothing.
    np.testing.assert_allclose(items.numpy()[1], [(1 + 0.5 + R2) / 2, (1 + 0.5) / 2], rtol=1e-6)
    users, items = model.representations()
    assert np.abs(users.numpy()).max() < 10 and np.abs(items.numpy()).max() < 10


@pytest.mark.parametrize("backbone", ["lightgcn", "ngcf"])
def test_graph_models_give_zero_gradient_to_masked_coordinates(tiny, backbone):
    init = keras.initializers.RandomNormal(0, 0.5, seed=3)
    user, item = _tables(4, init=init)
    if backbone == "lightgcn":
        model = LightGCN(user, item, tiny)
    else:
        model = NGCF(user, item, tiny, layer_sizes=(4, 4), node_dropout=0.0, message_dropout=0.0)
    user.assign_sizes([4, 2, 1])
    item.assign_sizes([1, 3, 2, 4])
    batch = {"user": [0, 1, 2], "pos_item": [0, 1, 2], "neg_item": [2, 3, 1]}
    with tf.GradientTape() as tape:
        loss = model.compute_bpr_loss(batch).loss
    grads = tape.gradient(loss, [user.embeddings, item.embeddings])
    for g, layer in zip(grads, (user, item), strict=True):
        g = dense(g)
        mask = np.arange(4)[None, :] < layer.sizes[:, None]
        assert np.all(g[~mask] == 0)
        assert np.count_nonzero(g[mask]) == mask.sum()


def _ngcf_reference(model, e0, adj):
    """NGCF forward in numpy (no dropout)."""
    outs, e = [e0], e0
    for w1, w2 in zip(model.sum_layers, model.bi_layers, strict=True):
        side = adj @ e
        h = side @ w1.kernel.numpy() + w1.bias.numpy() + (e * side) @ w2.kernel.numpy()
        h = h + w2.bias.numpy()
        h = np.where(h > 0, h, 0.2 * h)
        e = h
        outs.append(h / np.maximum(np.linalg.norm(h, axis=1, keepdims=True), 1e-6))
    return np.concatenate(outs, axis=1)


def test_ngcf_matches_a_numpy_reference(tiny):
    user, item = _tables(3, init=keras.initializers.RandomNormal(0, 1.0, seed=2))
    model = NGCF(user, item, tiny, layer_sizes=(5, 4))
    user.assign_sizes([3, 1, 2])
    e0 = np.concatenate([embedding_rows(user), embedding_rows(item)])
    final = _ngcf_reference(model, e0, NGCF_ADJ)
    assert final.shape == (7, 3 + 5 + 4)
    users, items = model.representations()
    np.testing.assert_allclose(users.numpy(), final[:3], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(items.numpy(), final[3:], rtol=1e-5, atol=1e-6)
    out = model.compute_bpr_loss({"user": [0], "pos_item": [1], "neg_item": [2]}, training=False)
    reg = 1e-3 * (np.sum(final[0] ** 2) + np.sum(final[4] ** 2) + np.sum(final[5] ** 2))
    assert out.reg_loss.numpy() == pytest.approx(reg, rel=1e-5)


def embedding_rows(layer):
    return layer.masked_table().numpy()


def test_ngcf_default_width_is_512(tiny):
    model = NGCF.create(tiny)
    assert model.representations()[0].shape == (3, 512)


def test_ngcf_dropout_only_in_training(tiny):
    model = NGCF.create(tiny, 8, layer_sizes=(8, 8), message_dropout=0.5, node_dropout=0.5)
    counter = int(model.dropout_counter.numpy())
    a = model.score_users([0, 1, 2]).numpy()
    b = model.score_users([0, 1, 2]).numpy()
    np.testing.assert_array_equal(a, b)
    ua, _ = model.representations(training=False)
    ub, _ = model.representations(training=False)
    np.testing.assert_array_equal(ua.numpy(), ub.numpy())
    assert int(model.dropout_counter.numpy()) == counter  # evaluation draws nothing
    t1, _ = model.representations(training=True)
    t2, _ = model.representations(training=True)
    assert not np.allclose(t1.numpy(), t2.numpy())
    assert not np.allclose(t1.numpy(), ua.numpy())
    assert int(model.dropout_counter.numpy()) == counter + 2


def test_ngcf_dropout_is_seeded(tiny):
    a = NGCF.create(tiny, 8, layer_sizes=(8,), seed=7)
    b = NGCF.create(tiny, 8, layer_sizes=(8,), seed=7)
    b.set_weights(a.get_weights())
    np.testing.assert_array_equal(
        a.representations(training=True)[0].numpy(), b.representations(training=True)[0].numpy()
    )


@pytest.mark.parametrize("cls", [LightGCN, NGCF])
def test_graph_is_not_saved_and_must_be_set_again(tiny, cls):
    model = cls.create(tiny, 4)
    config = model.get_config()
    clone = cls.from_config(config)
    assert clone.get_config() == config
    assert not clone.has_graph
    with pytest.raises(ValueError, match=r"no interaction graph: call `model.set_graph"):
        clone.representations()
    clone.set_graph(tiny)
    clone.set_weights(model.get_weights())
    np.testing.assert_allclose(clone.score_users([0, 1, 2]), model.score_users([0, 1, 2]))


def test_set_graph_checks_the_sizes(tiny):
    model = LightGCN.create(tiny, 4)
    other = Interactions([0], [0], num_users=3, num_items=5)
    with pytest.raises(ValueError, match=r"num_items=4 \(the table sizes\).*num_items=5"):
        model.set_graph(other)
