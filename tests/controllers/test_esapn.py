"""ESAPN's controller on hand-set tiny models: rewards, growth, credit, masks, the cap, modes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tensorflow as tf

from tfembsize._keras import keras
from tfembsize.budget import Budget
from tfembsize.controllers import ESAPNConfig, ESAPNController, default_ladder, esapn_model
from tfembsize.controllers.esapn._ops import hashed_uniform, occurrences, ring_writes
from tfembsize.errors import BudgetExceededError, BudgetInfeasibleError
from tfembsize.layers import LadderEmbedding, MaskedEmbedding
from tfembsize.models import MF
from tfembsize.rl.reinforce import ReinforceUpdateTensors

EPS = 1e-3  # LadderEmbedding's default epsilon
SMALL = {"policy_hidden": 4, "policy_embedding_dim": 2, "count_buckets": 8}


def ladder_table(rows, ladder, values, name):
    """A LadderEmbedding whose tables and maps are set from ``values`` (seeded otherwise)."""
    layer = LadderEmbedding(
        rows,
        ladder,
        name=name,
        embeddings_initializer=keras.initializers.RandomNormal(0.0, 0.5, seed=len(name)),
        kernel_initializer=keras.initializers.GlorotUniform(seed=rows),
    )
    layer.build(None)
    for key, value in values.items():
        getattr(layer, key).assign(np.asarray(value, np.float32))
    return layer


def tiny_mf():
    """MF over ladders (1, 2): 3 users and 4 items with rows and maps set by hand."""
    users = ladder_table(
        3,
        (1, 2),
        {
            "embeddings_0": [[1.0], [-0.5], [0.25]],
            "embeddings_1": [[0.3, -0.2], [0.5, 0.5], [-0.4, 0.1]],
            "map_0_kernel": [[1.0, -0.5]],
            "map_0_bias": [0.1, 0.0],
        },
        "user_embedding",
    )
    items = ladder_table(
        4,
        (1, 2),
        {
            "embeddings_0": [[0.5], [-1.0], [2.0], [0.2]],
            "embeddings_1": [[0.6, 0.1], [-0.3, 0.4], [0.2, -0.7], [1.0, 0.0]],
            "map_0_kernel": [[0.5, 1.0]],
            "map_0_bias": [0.0, -0.2],
        },
        "item_embedding",
    )
    return MF(users, items, l2=0.0)


def out(v):
    """The layer's inference output for a lifted vector (moving mean 0, variance 1)."""
    return np.tanh(np.asarray(v, np.float64) / math.sqrt(1.0 + EPS))


def softplus(x):
    return np.log1p(np.exp(x))


def set_side(controller, side, memory=None, counts=None, previous=None):
    s = {x.name: x for x in controller.sides}[side]
    if memory is not None:
        m = s.memory.numpy()
        for row, values in memory.items():
            m[row, : len(values)] = values
        s.memory.assign(m)
    if counts is not None:
        c = s.counts.numpy()
        for row, value in counts.items():
            c[row] = value
        s.counts.assign(c)
    if previous is not None:
        s.previous.assign(np.asarray(previous, np.int32))
    return s


def force(policy, grow):
    """Makes a policy choose grow (or keep) with probability 1."""
    policy.network.output_kernel.assign(np.zeros(policy.network.output_kernel.shape, np.float32))
    policy.network.output_bias.assign([-40.0, 40.0] if grow else [40.0, -40.0])


def recorder(calls, name):
    def update(counts, rungs, actions, rewards, mask=None):
        calls[name] = {
            "counts": np.asarray(counts),
            "rungs": np.asarray(rungs),
            "actions": np.asarray(actions),
            "rewards": np.asarray(rewards),
            "mask": np.asarray(mask),
        }
        zero = tf.constant(0.0)
        return ReinforceUpdateTensors(zero, zero, tf.constant(0), zero)

    return update


def batch(users, pos, neg):
    return {
        "user": tf.constant(users, tf.int32),
        "pos_item": tf.constant(pos, tf.int32),
        "neg_item": tf.constant(neg, tf.int32),
    }


# Graph helpers ------------------------------------------------------------------------------


def test_occurrences_and_ring_writes_by_hand():
    occ = occurrences(tf.constant([5, 2, 5, 5, 2, 7]))
    assert occ.first.numpy().tolist() == [0, 1, 0, 0, 1, 5]
    assert occ.rank.numpy().tolist() == [0, 0, 1, 2, 1, 0]
    assert occ.count.numpy().tolist() == [3, 2, 3, 3, 2, 1]
    # rings of 2 slots; row 5 was pushed 3 times before (next slot 1), row 2 never, row 7 once
    index, kept = ring_writes(
        tf.constant([5, 2, 5, 5, 2, 7]), tf.constant([3, 0, 3, 3, 0, 1]), 2, 9
    )
    assert kept.numpy().tolist() == [False, True, True, True, True, True]  # row 5: last 2 only
    assert index.numpy().tolist() == [[9, 0], [2, 0], [5, 0], [5, 1], [2, 1], [7, 1]]


@pytest.mark.parametrize("jit_compile", [False, True])
def test_hashed_uniforms_are_the_same_in_every_mode(jit_compile):
    eager = hashed_uniform(3, tf.constant(11), 4096).numpy()
    compiled = tf.function(lambda s: hashed_uniform(3, s, 4096), jit_compile=jit_compile)
    np.testing.assert_array_equal(compiled(tf.constant(11)).numpy(), eager)
    assert eager.dtype == np.float32 and 0.0 <= eager.min() and eager.max() < 1.0
    assert abs(eager.mean() - 0.5) < 0.03
    other = hashed_uniform(3, tf.constant(12), 4096).numpy()
    assert abs(np.corrcoef(eager, other)[0, 1]) < 0.1
    assert not np.array_equal(hashed_uniform(4, tf.constant(11), 4096).numpy(), eager)


# The policy step ---------------------------------------------------------------------------


def test_reward_is_the_remembered_mean_minus_the_raised_loss_by_hand(monkeypatch):
    model = tiny_mf()
    controller = ESAPNController(ESAPNConfig(memory=3, batch_size=4, **SMALL)).attach(model)
    model.user_embedding.assign_rungs([0, 1, 0])  # user 1 on the top rung
    model.item_embedding.assign_rungs([0, 0, 1, 0])  # item 2 on the top rung
    weights = [w.copy() for w in model.get_weights()]
    # previous batch (3 triples and one padding slot): (0, 0, 1), (1, 2, 1), (0, 3, 1)
    set_side(
        controller,
        "user",
        memory={0: [0.5, 0.7], 1: [0.1, 0.2, 0.3]},
        counts={0: 2, 1: 7},
        previous=[0, 1, 0, 0],
    )
    set_side(
        controller,
        "item",
        memory={0: [0.9], 2: [0.1, 0.3], 3: [0.4, 0.5, 0.6]},
        counts={0: 1, 2: 2, 3: 4},
        previous=[0, 2, 3, 0],
    )
    controller._previous_fields["neg_item"].assign([1, 1, 1, 0])
    controller._previous_size.assign(3)
    calls = {}
    for side in controller.sides:
        force(side.policy, grow=True)
        monkeypatch.setattr(side.policy, "tf_update", recorder(calls, side.name))
    controller._policy_step(tf.constant(1, tf.int64))

    # raised: user 0 and items 0, 3 read their rung-1 rows, the top rows read theirs; the
    # negative item 1 is not raised: rung 0, lifted by the map to [-1] W + b = [-0.5, -1.2]
    e1u = np.array([[0.3, -0.2], [0.5, 0.5], [-0.4, 0.1]])
    e1i = np.array([[0.6, 0.1], [-0.3, 0.4], [0.2, -0.7], [1.0, 0.0]])
    neg = out(np.array([-1.0]) @ np.array([[0.5, 1.0]]) + np.array([0.0, -0.2]))
    losses = []
    for u, p in ((0, 0), (1, 2), (0, 3)):
        eu, ep = out(e1u[u]), out(e1i[p])
        losses.append(softplus(eu @ neg - eu @ ep))
    losses = np.array(losses)
    user, item = calls["user"], calls["item"]
    want_user, want_item = [0.6, 0.2, 0.6] - losses, [0.9, 0.2, 0.5] - losses
    np.testing.assert_allclose(user["rewards"][:3], want_user, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(item["rewards"][:3], want_item, rtol=1e-5, atol=1e-6)
    assert user["actions"].tolist() == [1, 0, 1, 0]  # the top row keeps; padding keeps
    assert item["actions"].tolist() == [1, 0, 1, 0]
    # top-rung rows and the padding slot are left out of the policy loss
    assert user["mask"].tolist() == [True, False, True, False]
    assert item["mask"].tolist() == [True, False, True, False]
    # the states are the ones before the raise: counts and rungs of the positives only
    assert user["counts"].tolist() == [2, 7, 2, 2] and user["rungs"].tolist() == [0, 1, 0, 0]
    assert item["counts"].tolist() == [1, 2, 4, 1] and item["rungs"].tolist() == [0, 1, 0, 0]
    # the rungs are back and nothing was written
    assert model.user_embedding.rungs.tolist() == [0, 1, 0]
    assert model.item_embedding.rungs.tolist() == [0, 0, 1, 0]
    for got, want in zip(model.get_weights(), weights, strict=True):
        np.testing.assert_array_equal(got, want)


def test_the_first_batch_has_no_policy_step_and_updates_skip_rows_without_memory(monkeypatch):
    model = tiny_mf()
    controller = ESAPNController(ESAPNConfig(batch_size=4, **SMALL)).attach(model)
    calls = {}
    for side in controller.sides:
        monkeypatch.setattr(side.policy, "tf_update", recorder(calls, side.name))
    controller._policy_step(tf.constant(1, tf.int64))
    assert not calls["user"]["mask"].any() and not calls["item"]["mask"].any()


# Growth -------------------------------------------------------------------------------------


def test_growth_follows_the_greedy_action_never_passes_the_top_and_skips_negatives(monkeypatch):
    users = LadderEmbedding(3, (1, 2, 4), name="user_embedding")
    items = LadderEmbedding(5, (1, 2, 4), name="item_embedding")
    model = MF(users, items)
    controller = ESAPNController(ESAPNConfig(ladder=(1, 2, 4), batch_size=6, **SMALL))
    controller.attach(model)
    items.assign_rungs([0, 2, 0, 0, 1])
    set_side(controller, "item", counts={0: 1, 1: 3, 2: 5, 3: 2, 4: 7})
    set_side(controller, "user", counts={0: 1, 1: 1, 2: 1})
    user_side, item_side = controller.sides
    force(user_side.policy, grow=False)

    def odd_grows(counts, rungs, training=False):  # greedy action: grow iff the count is odd
        p = tf.where(tf.math.floormod(counts, 2) == 1, 0.9, 0.1)
        return tf.stack([1.0 - p, p], axis=1)

    monkeypatch.setattr(item_side.policy, "tf_probabilities", odd_grows)
    before = items(tf.range(5)).numpy()
    # positives 0 (odd: grows), 1 (odd, top: stays, listed twice), 3 (even: keeps), 4 (odd)
    # negative 2 has an odd count but is never a positive here: it stays
    b = batch([0, 1, 2, 0, 1, 2], [0, 1, 3, 1, 4, 0], [2, 2, 2, 2, 2, 2])
    controller.before_batch(b, tf.constant(1))
    assert items.rungs.tolist() == [1, 2, 0, 0, 2]
    assert users.rungs.tolist() == [0, 0, 0]
    assert int(item_side.grown.numpy()) == 2 and int(user_side.grown.numpy()) == 0
    # lift-initialised: the grown rows return what they returned before
    np.testing.assert_allclose(items(tf.range(5)).numpy(), before, rtol=1e-5, atol=1e-6)


def test_after_batch_credits_the_user_and_the_positive_item_only():
    model = tiny_mf()
    controller = ESAPNController(ESAPNConfig(memory=2, batch_size=5, **SMALL)).attach(model)
    b = batch([0, 1, 0, 0], [0, 2, 0, 3], [1, 1, 2, 1])
    losses = model.sample_losses(b).numpy()
    set_side(controller, "user", counts={0: 1})
    controller.after_batch(b, tf.constant(0.0), tf.constant(1))
    memory, counts = controller.memory("user")
    assert counts.tolist() == [4, 1, 0]
    # user 0 had one push (slot 0 next is 1): its three new losses go to 1, 0, 1; the last two kept
    np.testing.assert_allclose(memory[0], [losses[2], losses[3]], rtol=1e-6)
    np.testing.assert_allclose(memory[1], [losses[1], 0.0], rtol=1e-6)
    memory, counts = controller.memory("item")
    assert counts.tolist() == [2, 0, 1, 1]  # the negatives 1 and 2 get nothing
    np.testing.assert_allclose(memory[0], [losses[0], losses[2]], rtol=1e-6)
    assert not memory[1].any()
    np.testing.assert_allclose(memory[2], [losses[1], 0.0], rtol=1e-6)
    user, item = controller.sides
    assert user.previous.numpy().tolist() == [0, 1, 0, 0, 0]
    assert item.previous.numpy().tolist() == [0, 2, 0, 3, 0]
    assert controller._previous_fields["neg_item"].numpy().tolist() == [1, 1, 2, 1, 0]
    assert int(controller._previous_size.numpy()) == 4


# The budget cap -----------------------------------------------------------------------------


def _oracle(user_rungs, item_rungs, users, pos, ladder, limit):
    """The cap's rule in plain Python: requests in batch order, user before item, a prefix."""
    sizes = np.asarray(ladder)
    top = len(ladder) - 1
    rungs = {"u": user_rungs.copy(), "i": item_rungs.copy()}
    used = int(sizes[user_rungs].sum() + sizes[item_rungs].sum())
    seen = {"u": set(), "i": set()}
    total, full = 0, False
    for u, p in zip(users, pos, strict=True):
        for side, row in (("u", u), ("i", p)):
            if row in seen[side]:
                continue
            seen[side].add(row)
            r = rungs[side][row]
            if r == top:
                continue
            total += sizes[r + 1] - sizes[r]
            if not full and used + total <= limit:
                rungs[side][row] = r + 1
            else:
                full = True
    return rungs["u"], rungs["i"]


def test_the_cap_never_exceeds_the_budget_and_refused_rows_stay_put():
    ladder = (1, 2, 4, 8)
    grown_somewhere = refused_somewhere = False
    for seed in range(12):
        rng = np.random.default_rng(seed)
        n_users, n_items = int(rng.integers(3, 8)), int(rng.integers(3, 9))
        sparsity = float(rng.uniform(0.55, 0.8))
        limit = Budget(sparsity=sparsity, d_max=8).max_params_for(n_users + n_items)
        users = LadderEmbedding(n_users, ladder, name="user_embedding")
        items = LadderEmbedding(n_items, ladder, name="item_embedding")
        model = MF(users, items)
        config = ESAPNConfig(ladder=ladder, batch_size=8, budget_cap=sparsity, **SMALL)
        controller = ESAPNController(config).attach(model)
        for side in controller.sides:
            force(side.policy, grow=True)
        for step in range(4):
            u = rng.integers(0, n_users, 8)
            p = rng.integers(0, n_items, 8)
            want = _oracle(users.rungs, items.rungs, u, p, ladder, limit)
            controller._grow(tf.constant(u, tf.int32), tf.constant(p, tf.int32))
            assert users.rungs.tolist() == want[0].tolist(), (seed, step)
            assert items.rungs.tolist() == want[1].tolist(), (seed, step)
            assert controller.usable_params() <= limit
        refused = sum(int(s.refused.numpy()) for s in controller.sides)
        grown = sum(int(s.grown.numpy()) for s in controller.sides)
        refused_somewhere |= refused > 0
        grown_somewhere |= grown > 0
        controller.on_train_end(4)  # within budget: no error
    assert grown_somewhere and refused_somewhere


def test_the_cap_is_asserted_at_the_end_and_checked_at_attach():
    users = LadderEmbedding(4, (2, 4, 8), name="user_embedding")
    items = LadderEmbedding(4, (2, 4, 8), name="item_embedding")
    model = MF(users, items)
    # B(0.7) = floor(0.3 * 8 * 8) = 19 >= 16 usable parameters at the start
    controller = ESAPNController(ESAPNConfig(ladder=(2, 4, 8), budget_cap=0.7, **SMALL))
    controller.attach(model)
    assert controller.limit == 19
    users.assign_rungs([1, 1, 0, 0])  # 20 usable: over the budget
    with pytest.raises(BudgetExceededError, match="ESAPN tables uses 20 usable parameters"):
        controller.on_train_end(10)
    with pytest.raises(BudgetInfeasibleError, match="already, over the budget of 19"):
        ESAPNController(ESAPNConfig(budget_cap=0.7, **SMALL)).attach(model)
    capped = ESAPNController(ESAPNConfig(budget_cap=Budget(max_params=30), **SMALL))
    assert capped.attach(model).limit == 30


# Modes ----------------------------------------------------------------------------------------


def _drive(model, controller, batches, mode):
    def step(b, t):
        controller.before_batch(b, t)
        controller.after_batch(b, tf.constant(0.0), t)
        return tf.constant(0)

    if mode != "eager":
        step = tf.function(step, jit_compile=mode == "xla")
    for t, b in enumerate(batches, start=1):
        step(b, tf.constant(t))


def _setup(seed=0):
    keras.utils.set_random_seed(seed)
    users = LadderEmbedding(6, (1, 2, 4), name="user_embedding")
    items = LadderEmbedding(9, (1, 2, 4), name="item_embedding")
    model = MF(users, items)
    config = ESAPNConfig(
        ladder=(1, 2, 4), batch_size=8, policy_learning_rate=1e-3, seed=seed, **SMALL
    )
    controller = ESAPNController(config).attach(model)
    for side in controller.sides:  # lean towards grow, so that some rows do
        side.policy.network.output_bias.assign([0.0, 0.3])
    return model, controller


def test_eager_function_and_xla_give_identical_results():
    rng = np.random.default_rng(0)
    batches = [
        batch(rng.integers(0, 6, n), rng.integers(0, 9, n), rng.integers(0, 9, n))
        for n in (8, 8, 5, 8)
    ]
    results = {}
    for mode in ("eager", "function", "xla"):
        model, controller = _setup()
        _drive(model, controller, batches, mode)
        results[mode] = (model, controller)
    model, controller = results["eager"]
    assert model.user_embedding.rungs.any() or model.item_embedding.rungs.any()  # some grew
    for mode in ("function", "xla"):
        other, other_controller = results[mode]
        assert other.user_embedding.rungs.tolist() == model.user_embedding.rungs.tolist()
        assert other.item_embedding.rungs.tolist() == model.item_embedding.rungs.tolist()
        for side in ("user", "item"):
            got, want = other_controller.memory(side), controller.memory(side)
            np.testing.assert_array_equal(got[1], want[1])
            np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-6)
        for got, want in zip(other.get_weights(), model.get_weights(), strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
        # The policies agree up to rounding: XLA fuses the arithmetic, and Adam's normalised
        # steps can turn a rounding difference in a near-zero gradient into one of about lr.
        for got, want in zip(other_controller.variables(), controller.variables(), strict=True):
            np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-4, atol=1e-4)


# Configuration and attachment -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"memory": 0}, r"`memory` must be a positive integer. Received: memory=0"),
        ({"batch_size": 2.5}, r"`batch_size` must be a positive integer. Received: batch_size"),
        ({"epochs": -1}, r"`epochs` must be a positive integer. Received: epochs=-1"),
        ({"policy_learning_rate": 0.0}, r"`policy_learning_rate` must be a positive number"),
        ({"learning_rate": float("nan")}, r"`learning_rate` must be a positive number"),
        ({"budget_cap": 1.5}, r"`budget_cap` must be None, a sparsity in \(0, 1\) or a Budget"),
        ({"budget_cap": "0.8"}, r"Received: budget_cap='0.8'"),
        ({"ladder": (4, 2)}, r"`ladder` must be a non-empty, strictly increasing"),
        ({"ladder": [2, 4.5]}, r"Received: ladder=\[2, 4.5\]"),
        ({"seed": -1}, r"`seed` must be a non-negative integer. Received: seed=-1"),
        ({"jit_compile": 1}, r"`jit_compile` must be True or False"),
        ({"count_buckets": 0}, r"`count_buckets` must be a positive integer"),
    ],
)
def test_config_errors_name_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ESAPNConfig(**kwargs)


def test_config_round_trip_and_train_config():
    config = ESAPNConfig(ladder=[2, 4, 8], budget_cap=Budget(sparsity=0.9, d_max=8), epochs=2)
    assert config.ladder == (2, 4, 8)
    again = ESAPNConfig.from_dict(config.to_dict())
    assert again == config and isinstance(again.budget_cap, Budget)
    assert ESAPNConfig(budget_cap=0.8).budget(64) == Budget(sparsity=0.8, d_max=64)
    train = ESAPNConfig(learning_rate=0.01, batch_size=64, chunk_steps=7).train_config(30, seed=3)
    assert (train.max_steps, train.eval_every, train.batch_size, train.seed) == (30, 7, 64, 3)
    assert not train.restore_best and not train.evaluate_test
    assert default_ladder(128) == (2, 4, 8, 16, 64, 128) and default_ladder(32)[-1] == 32
    with pytest.raises(TypeError, match=r"`config` must be an ESAPNConfig"):
        ESAPNController({"memory": 5})


def test_attach_needs_ladder_tables_of_a_bpr_backbone():
    plain = MF.create(3, 4, 8)
    with pytest.raises(ValueError, match=r"LadderEmbedding layers; MF has \{'user_embedding': "):
        ESAPNController().attach(plain)
    with pytest.raises(TypeError, match=r"needs a tfembsize BPR backbone"):
        ESAPNController().attach(keras.Sequential([keras.layers.Dense(2)]))
    with pytest.raises(RuntimeError, match=r"call `attach\(model\)` first"):
        ESAPNController().variables()
    mixed = MF(LadderEmbedding(3, (2, 8), name="u"), MaskedEmbedding(4, 8, name="i"))
    with pytest.raises(ValueError, match="'item_embedding': 'MaskedEmbedding'"):
        ESAPNController().attach(mixed)


def test_esapn_model_converts_the_two_tables_and_refuses_other_backbones():
    from tfembsize.models import NCF

    model = esapn_model(MF.create(5, 7, 16))
    for layer, rows in ((model.user_embedding, 5), (model.item_embedding, 7)):
        assert isinstance(layer, LadderEmbedding) and layer.input_dim == rows
        assert layer.ladder == (2, 4, 8, 16) and layer.output_dim == 16
    assert esapn_model(model) is model
    assert esapn_model(MF.create(5, 7, 8), (1, 8)).user_embedding.ladder == (1, 8)
    with pytest.raises(ValueError, match=r"`ladder` must end at the width of user_embedding"):
        esapn_model(MF.create(5, 7, 8), (2, 4))
    with pytest.raises(ValueError, match=r"exactly one user table and one item table"):
        esapn_model(NCF.create(5, 7, 8))


def test_state_round_trip_and_mismatches():
    model = tiny_mf()
    controller = ESAPNController(ESAPNConfig(batch_size=4, **SMALL)).attach(model)
    metrics = controller.on_chunk_end(3, np.zeros(3, np.float32))
    assert metrics["sparsity_reached"] == pytest.approx(1 - 7 / (2 * 7))
    assert metrics["rows_at_1"] == 1.0 and metrics["user_mean_size"] == 1.0
    state = controller.get_state()
    other = ESAPNController(ESAPNConfig(batch_size=4, **SMALL)).attach(tiny_mf())
    other.set_state(state)
    assert other.last_metrics == controller.last_metrics
    with pytest.raises(ValueError, match="another ESAPN recipe"):
        ESAPNController(ESAPNConfig(batch_size=8, **SMALL)).attach(tiny_mf()).set_state(state)
    with pytest.raises(ValueError, match="Not an ESAPNController state"):
        other.set_state({"format": "x"})
    summary = controller.summary()
    assert summary["user_overhead"] == {"maps": 1 * 2 + 2, "batch_norm": 4 * 2}
    assert summary["item_rows_per_size"] == {"1": 4, "2": 0}
