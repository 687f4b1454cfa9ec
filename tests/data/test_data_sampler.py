"""BPR sampling: validity, distribution, determinism, resume, and the tf.data pipeline."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import tensorflow as tf

from tfembsize.data import BPRSampler, Interactions, bpr_dataset, synthetic


@pytest.fixture(scope="module")
def train():
    return synthetic(300, 400, 8000, seed=3).split(seed=42).train


def check_batch(batch, train, batch_size):
    assert set(batch) == {"user", "pos_item", "neg_item"}
    for v in batch.values():
        assert v.dtype == np.int32 and v.shape == (batch_size,)
    assert train.contains(batch["user"], batch["pos_item"]).all()
    assert not train.contains(batch["user"], batch["neg_item"]).any()
    assert (batch["neg_item"] >= 0).all() and (batch["neg_item"] < train.num_items).all()


def test_batches_are_valid(train):
    sampler = BPRSampler(train, seed=0)
    for size in (1, 64, 300, 5000):
        check_batch(sampler.sample(size), train, size)
    assert sampler.step == 4


def test_users_without_replacement_when_batch_fits(train):
    sampler = BPRSampler(train, seed=0)
    batch = sampler.sample(300)  # = number of users
    assert np.unique(batch["user"]).size == 300
    big = sampler.sample(301)  # larger than |U|: with replacement
    assert np.unique(big["user"]).size < 301
    always = BPRSampler(train, seed=0, replace=True).sample(300)
    assert np.unique(always["user"]).size < 300
    with pytest.raises(
        ValueError,
        match=r"`batch_size` must be <= the 300 eligible users .*Received: batch_size=301",
    ):
        BPRSampler(train, seed=0, replace=False).sample(301)


def test_sampling_distribution():
    # user 0 likes {0, 1}, user 1 likes {2}; 5 items.
    train = Interactions([0, 0, 1], [0, 1, 2], 2, 5)
    sampler = BPRSampler(train, seed=1, replace=True)
    batches = [sampler.sample(2000) for _ in range(10)]
    user = np.concatenate([b["user"] for b in batches])
    pos = np.concatenate([b["pos_item"] for b in batches])
    neg = np.concatenate([b["neg_item"] for b in batches])
    assert abs(np.mean(user == 0) - 0.5) < 0.02  # users uniform
    assert abs(np.mean(pos[user == 0] == 0) - 0.5) < 0.02  # positives uniform per user
    counts = np.bincount(neg[user == 0], minlength=5)
    assert counts[0] == counts[1] == 0
    assert np.all(np.abs(counts[2:] / counts.sum() - 1 / 3) < 0.02)  # negatives uniform
    counts1 = np.bincount(neg[user == 1], minlength=5)
    assert counts1[2] == 0 and np.all(np.abs(counts1[[0, 1, 3, 4]] / counts1.sum() - 0.25) < 0.02)


def test_deterministic_under_seed(train):
    a, b, c = BPRSampler(train, 7), BPRSampler(train, 7), BPRSampler(train, 8)
    for _ in range(3):
        x, y, z = a.sample(128), b.sample(128), c.sample(128)
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])
        assert not np.array_equal(x["neg_item"], z["neg_item"])


def test_sample_at_is_pure(train):
    s = BPRSampler(train, 3)
    seq = [s.sample(64) for _ in range(4)]
    again = BPRSampler(train, 3).sample_at(2, 64)
    for k in again:
        np.testing.assert_array_equal(again[k], seq[2][k])
    assert s.step == 4
    with pytest.raises(
        ValueError, match="`step` must be a non-negative integer. Received: step=-1"
    ):
        s.sample_at(-1, 4)


def test_resume_from_json_state(train):
    a = BPRSampler(train, 11)
    for _ in range(5):
        a.sample(32)
    state = json.loads(json.dumps(a.get_state()))
    expected = [a.sample(32) for _ in range(3)]
    b = BPRSampler(train, 0)
    b.set_state(state)
    assert b.seed == 11 and b.step == 5
    for e in expected:
        got = b.sample(32)
        for k in e:
            np.testing.assert_array_equal(got[k], e[k])


def test_state_errors(train):
    s = BPRSampler(train, 0)
    with pytest.raises(ValueError, match="must be a dict from BPRSampler.get_state"):
        s.set_state({"seed": 0})
    other = BPRSampler(synthetic(50, 60, 500, seed=0).split().train, 0).get_state()
    with pytest.raises(
        ValueError, match="was saved for other training data: num_users=50 there, 300 here"
    ):
        s.set_state(other)


def test_ineligible_users(caplog):
    # user 0 likes every item (no negative), user 1 nothing (no positive), user 2 is normal.
    train = Interactions([0, 0, 0, 2], [0, 1, 2, 1], 3, 3)
    with caplog.at_level(logging.WARNING):
        s = BPRSampler(train, 0)
    assert "1 user(s) have every item" in caplog.text
    assert s.num_eligible_users == 1
    assert set(s.sample(50)["user"].tolist()) == {2}
    with pytest.raises(
        ValueError, match="has no user with at least one positive and one non-positive"
    ):
        BPRSampler(Interactions([0, 0], [0, 1], 1, 2), 0)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (
            lambda t: BPRSampler(t, seed=-1),
            "`seed` must be a non-negative integer. Received: seed=-1",
        ),
        (
            lambda t: BPRSampler(t, 0).sample(0),
            "`batch_size` must be a positive integer. Received: batch_size=0",
        ),
        (lambda t: BPRSampler(t, 0, replace="yes"), "`replace` must be None, True or False"),
        (lambda t: bpr_dataset(t, 8, 0, num_steps=0), "`num_steps` must be a positive integer"),
        (
            lambda t: bpr_dataset(t, 8, 0, start_step=-2),
            "`start_step` must be a non-negative integer",
        ),
    ],
)
def test_argument_errors(train, call, match):
    with pytest.raises(ValueError, match=match):
        call(train)


def test_requires_interactions():
    with pytest.raises(TypeError, match="`train` must be an Interactions"):
        BPRSampler([[0, 1]], 0)


# tf.data ---------------------------------------------------------------------------------------


def test_dataset_yields_the_sampler_batches(train):
    ds = bpr_dataset(train, batch_size=100, seed=4, num_steps=5)
    spec = ds.element_spec
    assert set(spec) == {"user", "pos_item", "neg_item"}
    assert all(s.shape == (100,) and s.dtype == tf.int32 for s in spec.values())
    sampler = BPRSampler(train, 4)
    batches = list(ds.as_numpy_iterator())
    assert len(batches) == 5
    for b in batches:
        expected = sampler.sample(100)
        for k in expected:
            np.testing.assert_array_equal(b[k], expected[k])
        check_batch(b, train, 100)


def test_dataset_is_deterministic_and_resumable(train):
    full = list(bpr_dataset(train, 50, seed=9, num_steps=6).as_numpy_iterator())
    again = list(bpr_dataset(train, 50, seed=9, num_steps=6).as_numpy_iterator())
    tail = list(bpr_dataset(train, 50, seed=9, num_steps=2, start_step=4).as_numpy_iterator())
    for x, y in zip(full, again, strict=True):
        np.testing.assert_array_equal(x["neg_item"], y["neg_item"])
    for x, y in zip(full[4:], tail, strict=True):
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])


def test_endless_dataset(train):
    ds = bpr_dataset(train, 16, seed=0)
    assert ds.cardinality() == tf.data.INFINITE_CARDINALITY
    assert len(list(ds.take(3).as_numpy_iterator())) == 3


def test_dataset_runs_without_tf_data_autotuning(train):
    """No autotuner thread: it stalled iterator teardown ~30 s and coincided with RSS blow-ups."""
    options = bpr_dataset(train, 16, seed=0).options()
    assert options.autotune.enabled is False
    assert options.experimental_optimization.inject_prefetch is False


def test_dataset_iterator_checkpoint(train, tmp_path):
    ds = bpr_dataset(train, 20, seed=2, num_steps=10)
    it = iter(ds)
    for _ in range(3):
        next(it)
    ckpt = tf.train.Checkpoint(iterator=it)
    path = ckpt.write(str(tmp_path / "it"))
    expected = next(it)["neg_item"].numpy()
    it2 = iter(bpr_dataset(train, 20, seed=2, num_steps=10))
    tf.train.Checkpoint(iterator=it2).read(path).assert_consumed()
    np.testing.assert_array_equal(next(it2)["neg_item"].numpy(), expected)


def test_gowalla_batches(data_dir):
    from tfembsize.data import load_lightgcn

    train = load_lightgcn(data_dir / "gowalla").split(seed=42).train
    sampler = BPRSampler(train, 0)
    for _ in range(3):
        check_batch(sampler.sample(2048), train, 2048)
