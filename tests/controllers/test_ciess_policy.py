"""CIESS building blocks: features, the random walk's hop distribution, the reward."""

from __future__ import annotations

import numpy as np
import pytest

from tfembsize.controllers.ciess_policy import (
    ExplorationNoise,
    popularity_feature,
    random_walk,
    reward,
    state_features,
)


def test_popularity_is_scaled_within_the_side():
    assert popularity_feature([2, 4, 10]).tolist() == [-1.0, -0.5, 1.0]
    assert popularity_feature([3, 3]).tolist() == [0.0, 0.0]  # no spread: the middle
    assert popularity_feature([]).size == 0


def test_state_features_by_hand():
    s = state_features([0.5, -1.0], [1, 65], [0.25, 1.0], d_max=129)
    # size: 2 (d - 1) / (d_max - 1) - 1; quality: 2 q - 1
    np.testing.assert_allclose(s, [[0.5, -1.0, -0.5], [-1.0, 0.0, 1.0]])
    assert s.dtype == np.float32


def _hop_frequencies(start, weighting, radius=2, d_max=100, n=60_000):
    walk = random_walk(
        np.full(n, start),
        length=1,
        radius=radius,
        d_max=d_max,
        weighting=weighting,
        rng=np.random.default_rng(0),
    )
    steps, counts = np.unique(walk[:, 1] - start, return_counts=True)
    return dict(zip(steps.tolist(), (counts / n).tolist(), strict=True))


def test_inverse_weighting_prefers_short_hops():
    # Weights 1/|delta| over {-2, -1, 1, 2}: 1/2, 1, 1, 1/2 over a total of 3.
    freq = _hop_frequencies(50, "inverse")
    assert set(freq) == {-2, -1, 1, 2}
    for step, p in {-2: 1 / 6, -1: 1 / 3, 1: 1 / 3, 2: 1 / 6}.items():
        assert freq[step] == pytest.approx(p, abs=0.01)


def test_distance_weighting_prefers_long_hops():
    freq = _hop_frequencies(50, "distance")
    for step, p in {-2: 1 / 3, -1: 1 / 6, 1: 1 / 6, 2: 1 / 3}.items():
        assert freq[step] == pytest.approx(p, abs=0.01)


def test_walk_stays_in_range_at_the_edges():
    # From size 1 only 2 and 3 are linked: inverse weights 1 and 1/2.
    freq = _hop_frequencies(1, "inverse")
    assert set(freq) == {1, 2}
    assert freq[1] == pytest.approx(2 / 3, abs=0.01)
    walk = random_walk(
        np.arange(1, 9),
        length=6,
        radius=3,
        d_max=8,
        weighting="inverse",
        rng=np.random.default_rng(1),
    )
    assert walk.shape == (8, 7)
    assert walk.min() >= 1 and walk.max() <= 8
    hops = np.abs(np.diff(walk, axis=1))
    assert hops.min() >= 1 and hops.max() <= 3  # every hop moves, never beyond the radius
    np.testing.assert_array_equal(walk[:, 0], np.arange(1, 9))


def test_walk_edge_cases_and_errors():
    rng = np.random.default_rng(0)
    assert random_walk([3], length=0, radius=2, d_max=8, weighting="inverse", rng=rng).tolist() == [
        [3]
    ]
    assert random_walk([1], length=3, radius=2, d_max=1, weighting="inverse", rng=rng).tolist() == [
        [1, 1, 1, 1]
    ]
    with pytest.raises(ValueError, match="`weighting` must be one of"):
        random_walk([3], length=1, radius=2, d_max=8, weighting="uniform", rng=rng)
    with pytest.raises(ValueError, match=r"Start sizes must be in \[1, 8\]"):
        random_walk([9], length=1, radius=2, d_max=8, weighting="inverse", rng=rng)


def test_reward_ratio_and_raw_by_hand():
    r = reward([0.9, 0.5], [64, 128], d_max=128, weight=0.4)
    np.testing.assert_allclose(r, [0.9 - 0.4 * 0.25, 0.5 - 0.4], rtol=1e-6)
    raw = reward([0.2, 0.1], [1, 65], d_max=128, weight=0.01, quality_kind="raw")
    np.testing.assert_allclose(raw, [0.2, 0.1 - 0.01 * 0.25], rtol=1e-6)
    with pytest.raises(ValueError, match="`quality_kind` must be one of"):
        reward([0.1], [1], d_max=8, weight=0.1, quality_kind="log")


def test_exploration_noises():
    rng = np.random.default_rng(3)
    g = ExplorationNoise("gaussian", 6.0).draw(50_000, rng)
    assert abs(g.mean()) < 0.1 and g.std() == pytest.approx(6.0, rel=0.02)
    u = ExplorationNoise("uniform", 11 / 3**0.5).draw(50_000, rng)
    assert np.abs(u).max() <= 11.0 and u.std() == pytest.approx(11 / 3**0.5, rel=0.02)
    # OU by hand: x1 = 0 - 0.15 * 0 * 0.01 + 40 * 0.1 * z1, x2 = x1 (1 - 0.0015) + 4 z2.
    ou = ExplorationNoise("ou", 40.0)
    z = np.random.default_rng(9).normal(size=2)
    rng = np.random.default_rng(9)
    x1 = ou.step(rng)
    x2 = ou.step(rng)
    assert x1 == pytest.approx(4.0 * z[0])
    assert x2 == pytest.approx(x1 * (1 - 0.15 * 0.01) + 4.0 * z[1])
    ou.reset()
    assert ou.value == 0.0
    with pytest.raises(ValueError, match="one value per iteration"):
        ou.draw(3, rng)
    with pytest.raises(ValueError, match="`distribution` must be one of"):
        ExplorationNoise("pink", 1.0)
