"""NCF: scores, L2, shared/uniform sizes, budget accounting over both tables."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from models_testutil import dense

from tfembsize._keras import keras
from tfembsize.budget import Budget
from tfembsize.errors import BudgetExceededError
from tfembsize.layers import BudgetedEmbedding, MaskedEmbedding
from tfembsize.models import NCF
from tfembsize.plan import SizePlan


def _ncf(mode: str = "shared", d: int = 8, users: int = 5, items: int = 7) -> NCF:
    return NCF.create(users, items, d, ncf_gmf_mode=mode)


def test_scores_by_hand():
    tables = [
        MaskedEmbedding(2, 2, embeddings_initializer=keras.initializers.Constant(v), name=n)
        for v, n in ((1.0, "u_g"), (2.0, "i_g"), (0.5, "u_m"), (1.0, "i_m"))
    ]
    model = NCF(*tables, hidden_units=1)
    model.mlp_layer.kernel.assign(np.ones((4, 1)))
    model.mlp_layer.bias.assign([-1.0])
    model.output_layer.kernel.assign([[3.0], [1.0], [10.0]])  # [mlp; gmf (2 dims)]
    # gmf = [1*2, 1*2]; mlp = relu(0.5 + 0.5 + 1 + 1 - 1) = 2; score = 3*2 + 2 + 10*2 = 28
    out = model({"user": tf.constant([0]), "item": tf.constant([1])})
    assert out.numpy()[0] == pytest.approx(28.0)
    tables[0].assign_sizes([1, 2])  # GMF user 0 keeps 1 coordinate: gmf = [2, 0]
    tables[2].assign_sizes([1, 2])  # MLP user 0: mlp = relu(0.5 + 2 - 1) = 1.5
    assert model({"user": tf.constant([0]), "item": tf.constant([1])}).numpy()[0] == 6.5
    np.testing.assert_allclose(model.score_users([0, 1]).numpy(), [[6.5, 6.5], [28.0, 28.0]])


def test_score_users_matches_pair_scores():
    model = _ncf(users=4, items=300)
    users = tf.constant([0, 1, 2, 3])
    full = model.score_users(users).numpy()
    uu, ii = np.meshgrid(np.arange(4), np.arange(300), indexing="ij")
    pairs = model.score_pairs(tf.constant(uu.ravel()), tf.constant(ii.ravel())).numpy()
    np.testing.assert_allclose(full, pairs.reshape(4, 300), rtol=1e-5, atol=1e-6)


def test_l2_covers_the_six_masked_rows():
    tables = [
        MaskedEmbedding(2, 3, embeddings_initializer="ones", name=n) for n in ("a", "b", "c", "d")
    ]
    model = NCF(*tables, l2=1.0)
    tables[0].assign_sizes([1, 3])
    tables[2].assign_sizes([2, 3])
    tables[1].assign_sizes([3, 1])
    out = model.compute_bpr_loss({"user": [0], "pos_item": [0], "neg_item": [1]})
    # user 1 + 2, positive 3 + 3, negative 1 + 3 -> 13 over a batch of 1
    assert out.reg_loss.numpy() == pytest.approx(13.0)


def test_masked_coordinates_get_zero_gradient():
    model = _ncf()
    plan = model.size_plan(np.array([8, 3, 1, 5, 2]), np.array([1, 2, 3, 4, 5, 6, 7]))
    plan.apply(model)
    batch = {"user": [0, 1, 2, 3, 4], "pos_item": [0, 1, 2, 3, 4], "neg_item": [5, 6, 0, 1, 2]}
    layers = model.embedding_layers()
    with tf.GradientTape() as tape:
        loss = model.compute_bpr_loss(batch).loss
    grads = tape.gradient(loss, [layer.embeddings for layer in layers])
    for g, layer in zip(grads, layers, strict=True):
        g = dense(g)
        mask = np.arange(8)[None, :] < layer.sizes[:, None]
        assert np.all(g[~mask] == 0), layer.name
        assert np.count_nonzero(g[mask]) > 0.9 * mask.sum(), layer.name


def test_shared_sizes_and_budget_over_both_tables():
    model = _ncf("shared", d=8, users=5, items=7)
    n = 12
    budget = Budget(sparsity=0.75, d_max=8)
    rng = np.random.default_rng(0)
    # per-entity sizes using exactly the budget of one table: (1 - c) * d * N = 24
    sizes = np.full(n, 2)
    sizes[rng.permutation(n)[:6]] += rng.integers(-1, 2, 6)
    sizes[-1] += 24 - sizes.sum()
    plan = model.size_plan(sizes[:5], sizes[5:])
    assert set(plan) == {
        "user_embedding",
        "item_embedding",
        "user_embedding_mlp",
        "item_embedding_mlp",
    }
    np.testing.assert_array_equal(plan["user_embedding"], plan["user_embedding_mlp"])
    np.testing.assert_array_equal(plan["item_embedding"], plan["item_embedding_mlp"])
    assert plan.num_rows() == 2 * n
    assert budget.max_params_for(plan.num_rows()) == 48  # floor((1 - c) * 2 * d_max * N)
    assert plan.total_params() == 48
    plan.check(budget)
    plan.apply(model)
    model.check_sizes()
    assert model.usable_params() == 48
    over = model.size_plan(sizes[:5] + np.eye(5, dtype=int)[0], sizes[5:])
    with pytest.raises(BudgetExceededError):
        over.check(budget)


def test_uniform_gmf_sizes():
    model = _ncf("uniform", d=8, users=5, items=7)
    user_sizes = np.array([8, 8, 1, 1, 2])
    item_sizes = np.array([3, 3, 3, 3, 3, 3, 4])
    plan = model.size_plan(user_sizes, item_sizes)
    g = (20 + 22) // 12  # the MLP tables' mean size, floored
    np.testing.assert_array_equal(plan["user_embedding"], np.full(5, g))
    np.testing.assert_array_equal(plan["item_embedding"], np.full(7, g))
    np.testing.assert_array_equal(plan["user_embedding_mlp"], user_sizes)
    assert plan.total_params() == 42 + 12 * g <= 2 * 42
    plan.apply(model)
    model.check_sizes()
    expanded = model.expand_plan(
        SizePlan({"user_embedding_mlp": user_sizes, "item_embedding_mlp": item_sizes})
    )
    assert expanded == plan


def test_broken_tie_is_detected():
    model = _ncf("shared")
    model.size_plan(np.full(5, 4), np.full(7, 4)).apply(model)
    model.user_embedding.assign_sizes(np.full(5, 3))
    with pytest.raises(
        ValueError, match=r"GMF table 'user_embedding'.*row 0 has size 3, expected 4"
    ):
        model.check_sizes()
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    batch = {"user": [0], "pos_item": [1], "neg_item": [2]}
    before = model.get_weights()
    with pytest.raises(tf.errors.InvalidArgumentError, match="GMF sizes do not follow"):
        model.train_batch(batch)  # the same assertion runs inside compiled training loops
    for a, b in zip(model.get_weights(), before, strict=True):
        np.testing.assert_array_equal(a, b)


def test_plain_tables_have_no_ties():
    tables = [keras.layers.Embedding(n, 4) for n in (3, 5, 3, 5)]
    model = NCF(*tables)
    assert model.tied_tables == {}
    model.check_sizes()
    assert model.usable_params() == 2 * (3 + 5) * 4
    with pytest.raises(ValueError, match="needs four searchable tables"):
        model.size_plan(np.full(3, 2), np.full(5, 2))


def test_budgeted_tables():
    tables = [
        BudgetedEmbedding(n, 8, sparsity=0.5, name=name)
        for n, name in ((5, "ug"), (7, "ig"), (5, "um"), (7, "im"))
    ]
    model = NCF(*tables)
    model.check_sizes()
    assert model.usable_params() == 2 * 12 * 4
    assert model.score_users([0, 4]).shape == (2, 7)


def test_config_round_trip():
    model = _ncf("uniform")
    config = model.get_config()
    clone = NCF.from_config(config)
    assert clone.get_config() == config
    assert clone.ncf_gmf_mode == "uniform"
    clone.set_weights(model.get_weights())
    np.testing.assert_allclose(clone.score_users([0, 1]), model.score_users([0, 1]), rtol=1e-6)


def test_bad_arguments():
    t = [MaskedEmbedding(3, 4), MaskedEmbedding(5, 4)]
    with pytest.raises(ValueError, match="`ncf_gmf_mode` must be one of"):
        NCF(*t, MaskedEmbedding(3, 4), MaskedEmbedding(5, 4), ncf_gmf_mode="bet")
    with pytest.raises(ValueError, match=r"`item_embedding_mlp` must have input_dim=5"):
        NCF(*t, MaskedEmbedding(3, 4), MaskedEmbedding(6, 4))
    with pytest.raises(ValueError, match="four tables of one width"):
        NCF(*t, MaskedEmbedding(3, 4), MaskedEmbedding(5, 2))
