"""ReplayBuffer: ring semantics, uniform sampling with replacement, incremental save/restore."""

from __future__ import annotations

import os

import numpy as np
import pytest

from tfembsize.rl import ReplayBuffer


def _push(buf, start, n):
    s = np.arange(start, start + n, dtype=np.float32)[:, None].repeat(3, axis=1)
    buf.push(s, s[:, :1] * 2, np.arange(start, start + n, dtype=np.float32), s + 1)


def test_the_ring_keeps_the_last_capacity_transitions():
    buf = ReplayBuffer(3, 1, capacity=5)
    _push(buf, 0, 3)
    assert len(buf) == 3 and buf.num_pushed == 3
    _push(buf, 3, 4)
    assert len(buf) == 5 and buf.num_pushed == 7
    c = buf.contents()
    assert c.rewards.tolist() == [2, 3, 4, 5, 6]
    np.testing.assert_array_equal(c.actions[:, 0], 2 * c.rewards)
    np.testing.assert_array_equal(c.next_states, c.states + 1)


def test_sampling_is_uniform_with_replacement_over_the_ring_only():
    buf = ReplayBuffer(3, 1, capacity=4)
    _push(buf, 0, 10)  # the ring holds rewards 6..9
    a = buf.sample(2000, np.random.default_rng(0))
    b = buf.sample(2000, np.random.default_rng(0))
    np.testing.assert_array_equal(a.rewards, b.rewards)  # the caller's generator decides
    values, counts = np.unique(a.rewards, return_counts=True)
    assert values.tolist() == [6, 7, 8, 9]
    assert counts.min() > 400  # about 500 each
    assert a.states.shape == (2000, 3) and a.actions.shape == (2000, 1)


def test_save_appends_only_new_transitions_and_restore_rebuilds_the_ring(tmp_path):
    buf = ReplayBuffer(3, 1, capacity=4)
    _push(buf, 0, 3)
    n1 = buf.save(tmp_path)
    _push(buf, 3, 3)
    n2 = buf.save(tmp_path)
    assert (n1, n2) == (3, 6)
    assert sorted(os.listdir(tmp_path)) == [
        "000000000000-000000000003.npz",
        "000000000003-000000000006.npz",
    ]
    again = ReplayBuffer(3, 1, capacity=4)
    again.restore(tmp_path, n2)
    assert again.contents().rewards.tolist() == [2, 3, 4, 5]
    older = ReplayBuffer(3, 1, capacity=4)
    older.restore(tmp_path, n1)  # an older commit ignores the rows past it
    assert older.contents().rewards.tolist() == [0, 1, 2]


def test_errors_name_the_argument():
    with pytest.raises(
        ValueError, match="`capacity` must be a positive integer. Received: capacity=0"
    ):
        ReplayBuffer(3, 1, 0)
    buf = ReplayBuffer(3, 1, 4)
    with pytest.raises(ValueError, match="The replay buffer is empty"):
        buf.sample(2, np.random.default_rng(0))
    with pytest.raises(ValueError, match="`rewards` holds NaN"):
        buf.push(np.zeros((1, 3)), np.zeros((1, 1)), [np.nan], np.zeros((1, 3)))
    with pytest.raises(ValueError, match=r"Rows of 'states' must have shape \(n, 3\)"):
        buf.push(np.zeros((1, 2)), np.zeros((1, 1)), [0.0], np.zeros((1, 3)))
    _push(buf, 0, 1)
    with pytest.raises(ValueError, match="`batch_size` must be a positive integer"):
        buf.sample(0, np.random.default_rng(0))
