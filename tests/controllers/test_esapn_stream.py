"""ESAPN on a rating stream: credit, FIXED vs ESAPN, prequential order, memory, resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tensorflow as tf

from tfembsize.controllers import ESAPNController, run_esapn_stream
from tfembsize.controllers.esapn import stream_config
from tfembsize.data import RatingStream
from tfembsize.models import RatingClassifier
from tfembsize.rl.reinforce import ReinforceUpdateTensors
from tfembsize.training import checkpoint as checkpoint_module

LADDER = (2, 4, 8)
CONFIG = stream_config(
    ladder=LADDER,
    batch_size=50,
    chunk_steps=4,
    policy_hidden=16,
    policy_embedding_dim=4,
    count_buckets=64,
    policy_learning_rate=1e-3,
    seed=3,
)
HIDDEN = 16


def synthetic_stream(n=560, users=30, items=40, seed=0):
    """Ratings from user and item biases plus noise, in time order (popular items first)."""
    rng = np.random.default_rng(seed)
    u = rng.integers(0, users, n)
    i = np.minimum(rng.geometric(0.08, n) - 1, items - 1)
    score = rng.normal(size=users)[u] + rng.normal(size=items)[i] + rng.normal(0, 0.5, n)
    ratings = np.clip(np.round(3 + score), 1, 5)
    return RatingStream.from_raw(u, i, ratings, np.arange(n) // 3, name="synthetic")


@pytest.fixture(scope="module")
def stream():
    return synthetic_stream()


def lean_to_grow(monkeypatch):
    """Policies that start leaning towards grow, so that rows do grow in a short stream."""
    original = ESAPNController.attach

    def attach(self, model):
        out = original(self, model)
        for side in self.sides:
            side.policy.network.output_bias.assign([0.0, 0.4])
        return out

    monkeypatch.setattr(ESAPNController, "attach", attach)


def run(stream, method="esapn", task="binary", **kwargs):
    return run_esapn_stream(stream, task, method=method, config=CONFIG, hidden=HIDDEN, **kwargs)


@pytest.fixture(scope="module")
def esapn_run(stream):
    with pytest.MonkeyPatch.context() as mp:
        lean_to_grow(mp)
        return run(stream)


# The controller on rating batches -------------------------------------------------------------


def tiny_classifier():
    model = RatingClassifier.create(3, 4, "binary", ladder=(1, 2), hidden=4, seed=1)
    for layer in (model.user_embedding, model.item_embedding):  # distinct rung rows
        for k, table in enumerate(layer.tables):
            table.assign(np.random.default_rng(k).normal(size=table.shape).astype(np.float32))
    return model


def rating_batch(users, items, ratings):
    return {
        "user": tf.constant(users, tf.int32),
        "item": tf.constant(items, tf.int32),
        "rating": tf.constant(ratings, tf.float32),
        "test": tf.zeros(len(users), tf.bool),
    }


def test_each_rating_credits_its_user_and_its_item():
    model = tiny_classifier()
    controller = ESAPNController(CONFIG.replace(batch_size=5, memory=2)).attach(model)
    b = rating_batch([0, 1, 0], [3, 3, 2], [5.0, 1.0, 4.0])
    losses = model.sample_losses(b).numpy()
    controller.after_batch(b, tf.constant(0.0), tf.constant(1))
    memory, counts = controller.memory("user")
    assert counts.tolist() == [2, 1, 0]
    np.testing.assert_allclose(memory[0], [losses[0], losses[2]], rtol=1e-6)
    np.testing.assert_allclose(memory[1], [losses[1], 0.0], rtol=1e-6)
    memory, counts = controller.memory("item")
    assert counts.tolist() == [0, 0, 1, 2]  # every rated item, no negatives
    np.testing.assert_allclose(memory[3], [losses[0], losses[1]], rtol=1e-6)
    np.testing.assert_allclose(memory[2], [losses[2], 0.0], rtol=1e-6)
    # the previous batch is kept with its ratings (the policy step scores it again)
    assert controller._previous_fields["rating"].numpy().tolist() == [5.0, 1.0, 4.0, 0.0, 0.0]
    user, item = controller.sides
    assert user.previous.numpy().tolist() == [0, 1, 0, 0, 0]
    assert item.previous.numpy().tolist() == [3, 3, 2, 0, 0]


def test_the_policy_step_rewards_the_raised_loss_of_the_previous_ratings(monkeypatch):
    model = tiny_classifier()
    controller = ESAPNController(CONFIG.replace(batch_size=4, memory=3)).attach(model)
    b = rating_batch([0, 1, 2], [1, 2, 1], [5.0, 2.0, 3.0])
    controller.after_batch(b, tf.constant(0.0), tf.constant(1))
    remembered = model.sample_losses(b).numpy()
    calls = {}

    def recorder(name):
        def update(counts, rungs, actions, rewards, mask=None):
            calls[name] = (np.asarray(actions), np.asarray(rewards), np.asarray(mask))
            zero = tf.constant(0.0)
            return ReinforceUpdateTensors(zero, zero, tf.constant(0), zero)

        return update

    for side in controller.sides:
        side.policy.network.output_kernel.assign(np.zeros((16, 2), np.float32))
        side.policy.network.output_bias.assign([-40.0, 40.0])  # always grow
        monkeypatch.setattr(side.policy, "tf_update", recorder(side.name))
    controller._policy_step(tf.constant(2, tf.int64))
    # every row was raised to rung 1 for the step and put back afterwards
    assert model.user_embedding.rungs.tolist() == [0, 0, 0]
    model.user_embedding.assign_rungs([1, 1, 1])
    model.item_embedding.assign_rungs([1, 1, 1, 1])
    raised = model.sample_losses(b).numpy()
    # users 0, 1, 2 remember one loss each; item 1 two (its ratings 0 and 2), item 2 one
    item_1 = (remembered[0] + remembered[2]) / 2
    baselines = {"user": remembered, "item": np.array([item_1, remembered[1], item_1])}
    for name in ("user", "item"):
        actions, rewards, mask = calls[name]
        assert actions.tolist() == [1, 1, 1, 0] and mask.tolist() == [True, True, True, False]
        np.testing.assert_allclose(rewards[:3], baselines[name] - raised, rtol=1e-5, atol=1e-6)
        assert rewards[3] == 0.0  # the padding slot


# FIXED and ESAPN --------------------------------------------------------------------------------


def test_fixed_is_the_same_classifier_at_full_size_without_a_policy(stream):
    fixed = run(stream, "fixed", "multiclass")
    assert fixed.controller is None and fixed.model.user_embedding.ladder == (8,)
    assert fixed.steps == stream.num_steps(50) == 12
    test = fixed.metrics["test"]
    assert test["samples"] == stream.num_test == 112
    assert fixed.metrics["train"]["samples"] == stream.test_start
    assert 0.0 <= test["accuracy"] <= 1.0 and np.isfinite(test["cross_entropy"])
    for side, rows in (("user", stream.num_users), ("item", stream.num_items)):
        assert fixed.memory[side] == {
            "rows": rows,
            "usable_params": 8 * rows,
            "full_params": 8 * rows,
            "ratio": 1.0,
            "mean_size": 8.0,
        }
        assert (fixed.sizes[side] == 8).all()
    head = 4 * 16 + 16 * HIDDEN + HIDDEN + 4 * HIDDEN + HIDDEN * 5 + 5
    assert fixed.overhead == {
        "user_maps": 0,
        "user_batch_norm": 32,
        "item_maps": 0,
        "item_batch_norm": 32,
        "head": head,
    }


def test_esapn_grows_sizes_and_accounts_memory_by_hand(stream, esapn_run):
    r = esapn_run
    assert r.method == "esapn" and r.controller is not None
    assert r.metrics["test"]["samples"] == stream.num_test
    assert np.isfinite(r.metrics["test"]["mse"])
    ladder = np.asarray(LADDER)
    for side, layer in (("user", r.model.user_embedding), ("item", r.model.item_embedding)):
        rungs = layer.rungs
        usable = int(ladder[rungs].sum())
        rows = layer.input_dim
        assert r.memory[side] == {
            "rows": rows,
            "usable_params": usable,
            "full_params": 8 * rows,
            "ratio": usable / (8 * rows),
            "mean_size": float(ladder[rungs].mean()),
        }
        np.testing.assert_array_equal(r.sizes[side], ladder[rungs])
        # the running counts went through the whole stream without a reset
        np.testing.assert_array_equal(r.controller.memory(side)[1], stream.frequencies(side))
        np.testing.assert_array_equal(r.frequencies[side], stream.frequencies(side))
    assert r.memory["item"]["usable_params"] > 2 * stream.num_items  # some rows grew
    assert r.memory["item"]["ratio"] < 1.0
    maps = (2 * 4 + 4) + (4 * 8 + 8)
    assert r.overhead["user_maps"] == r.overhead["item_maps"] == maps
    assert r.overhead["user_batch_norm"] == 4 * 8
    policy = 64 * 4 + 2 * 4 + (4 + 3) * 16 + 16 + 2 * 16 + 16 * 2 + 2
    assert r.overhead["user_policy"] == r.overhead["item_policy"] == policy
    summary = r.to_dict()
    json.dumps(summary)
    assert sum(summary["rows_per_size"]["item"].values()) == stream.num_items
    history = r.train.history[-1].metrics
    assert {"test_accuracy", "test_mse", "train_accuracy", "item_mean_size"} <= set(history)


@pytest.mark.parametrize("method", ["fixed", "esapn"])
def test_the_first_batch_is_scored_before_the_model_trains_on_it(stream, method):
    one = run(stream, method, max_steps=1)
    assert one.steps == 1
    ladder = LADDER if method == "esapn" else (8,)
    fresh = RatingClassifier.create(
        stream.num_users, stream.num_items, "binary", ladder=ladder, hidden=HIDDEN, seed=3
    )
    first = {k: tf.constant(v) for k, v in stream.batch_at(0, 50).items()}
    losses = fresh.sample_losses(first, training=True).numpy()
    recorded = one.metrics["train"]
    assert recorded["samples"] == 50
    assert recorded["mse"] == pytest.approx(float(losses.mean()), rel=1e-5)
    # the trained model scores the batch otherwise
    after = one.model.sample_losses(first, training=True).numpy()
    assert np.abs(after - losses).max() > 1e-4


def test_bad_arguments_name_what_was_received(stream):
    with pytest.raises(ValueError, match=r"`method` must be one of \('esapn', 'fixed'\)"):
        run_esapn_stream(stream, method="random")
    with pytest.raises(ValueError, match=r"`task` must be one of"):
        run_esapn_stream(stream, "ordinal")
    with pytest.raises(ValueError, match=r"`config.epochs` must be 1. Received: epochs=2"):
        run_esapn_stream(stream, config=CONFIG.replace(epochs=2))
    with pytest.raises(ValueError, match=r"`max_steps` must be a positive integer or None"):
        run_esapn_stream(stream, config=CONFIG, max_steps=0)
    other = RatingClassifier.create(3, 4, "binary", ladder=LADDER, hidden=4)
    rows = f"over {stream.num_users} users and {stream.num_items} items. Received a 'binary'"
    with pytest.raises(ValueError, match=rows):
        run_esapn_stream(stream, config=CONFIG, model=other)
    with pytest.raises(TypeError, match=r"`stream` must be a RatingStream"):
        run_esapn_stream([1, 2, 3])


# Resume -----------------------------------------------------------------------------------------


def assert_same(a, b):
    assert a.model.user_embedding.rungs.tolist() == b.model.user_embedding.rungs.tolist()
    assert a.model.item_embedding.rungs.tolist() == b.model.item_embedding.rungs.tolist()
    for x, y in zip(a.model.get_weights(), b.model.get_weights(), strict=True):
        np.testing.assert_array_equal(x, y)
    for x, y in zip(a.controller.variables(), b.controller.variables(), strict=True):
        np.testing.assert_array_equal(np.asarray(x.numpy()), np.asarray(y.numpy()))
    assert a.metrics == b.metrics and a.memory == b.memory


def test_an_interrupted_stream_resumes_to_the_same_result(stream, esapn_run, tmp_path, monkeypatch):
    lean_to_grow(monkeypatch)
    # stopped after 7 batches (mid-chunk), then continued by new objects
    run(stream, directory=tmp_path / "stopped", max_steps=7)
    assert_same(run(stream, directory=tmp_path / "stopped"), esapn_run)
    # killed while writing its second checkpoint, then run again
    saves = {"n": 0}
    original = checkpoint_module.TrainCheckpoint.save

    def crash(self, *args, **kwargs):
        saves["n"] += 1
        if saves["n"] == 2:
            raise KeyboardInterrupt("killed")
        return original(self, *args, **kwargs)

    with monkeypatch.context() as mp:
        mp.setattr(checkpoint_module.TrainCheckpoint, "save", crash)
        with pytest.raises(KeyboardInterrupt):
            run(stream, directory=tmp_path / "killed")
    resumed = run(stream, directory=tmp_path / "killed")
    assert_same(resumed, esapn_run)
    # a finished run is read back, not trained again
    again = run(stream, directory=tmp_path / "killed")
    assert_same(again, esapn_run)
