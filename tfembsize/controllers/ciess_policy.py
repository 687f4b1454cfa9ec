"""CIESS building blocks: state features, the random walk on sizes, the reward.

Each function works on whole sides (every user, or every item) at once with NumPy, and
knows nothing of TD3 or of the search loop (`tfembsize.controllers.ciess` puts them
together).

References:
    Qu et al., "Continuous Input Embedding Size Search For Recommender Systems",
    SIGIR 2023.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = [
    "DEFAULT_NOISE_STD",
    "ExplorationNoise",
    "NOISE_DISTRIBUTIONS",
    "WALK_WEIGHTINGS",
    "REWARD_QUALITIES",
    "popularity_feature",
    "state_features",
    "random_walk",
    "reward",
]

WALK_WEIGHTINGS = ("inverse", "distance")
"""Hop weights of the random walk: ``"inverse"`` (proportional to 1/|d' - d|, as the CIESS
authors' code) or ``"distance"`` (proportional to |d' - d|, as the paper's Eq. 13)."""

REWARD_QUALITIES = ("ratio", "raw")
"""Quality term of the reward: ``"ratio"`` (q_n, the per-entity quality relative to the
full-size model, as the paper) or ``"raw"`` (Q_n itself, as the authors' code)."""


def popularity_feature(frequencies: Any) -> np.ndarray:
    """Frequencies scaled to [-1, 1] within one side: ``2 (f - f_min) / (f_max - f_min) - 1``.

    A side whose entities all have the same frequency gets 0 for every entity.

    Example:
        >>> popularity_feature([0, 5, 10]).tolist()
        [-1.0, 0.0, 1.0]
    """
    f = np.asarray(frequencies, np.float64)
    if f.size == 0:
        return np.zeros(0, np.float32)
    lo, hi = float(f.min()), float(f.max())
    if hi == lo:
        return np.zeros(f.shape, np.float32)
    return (2.0 * (f - lo) / (hi - lo) - 1.0).astype(np.float32)


def state_features(popularity: Any, sizes: Any, ratios: Any, d_max: int) -> np.ndarray:
    """The CIESS state of every entity of a side, each feature in [-1, 1].

    Args:
        popularity: `popularity_feature` of the side.
        sizes: current sizes in ``[1, d_max]``.
        ratios: current quality ratios q_n in [0, 1].
        d_max: full width.

    Returns:
        float32 array ``[n, 3]``: popularity, ``2 (d - 1) / (d_max - 1) - 1`` and ``2 q - 1``.

    Example:
        >>> state_features([1.0], [128], [1.0], 128).tolist()
        [[1.0, 1.0, 1.0]]
    """
    d = np.asarray(sizes, np.float64)
    span = max(int(d_max) - 1, 1)
    size = 2.0 * (d - 1.0) / span - 1.0 if d_max > 1 else np.ones_like(d)
    q = 2.0 * np.asarray(ratios, np.float64) - 1.0
    return np.stack([np.asarray(popularity, np.float64), size, q], axis=1).astype(np.float32)


def random_walk(
    start: Any,
    *,
    length: int,
    radius: int,
    d_max: int,
    weighting: str,
    rng: np.random.Generator,
) -> np.ndarray:
    """A random walk of ``length`` hops from every start size, on the graph of sizes.

    Sizes d and d' in ``[1, d_max]`` are linked when ``0 < |d - d'| <= radius``; each hop
    starts from the previous node and moves to a linked size drawn with weights
    proportional to ``1 / |d' - d|`` (``"inverse"``) or ``|d' - d|`` (``"distance"``).

    Args:
        start: integer start sizes, one per entity.
        length: hops L (0 returns the start column only).
        radius: walk radius t.
        d_max: largest size.
        weighting: one of `WALK_WEIGHTINGS`.
        rng: the generator of the draws.

    Returns:
        int32 array ``[n, length + 1]``: the start, then the node after every hop.

    Example:
        >>> walk = random_walk([1, 64], length=3, radius=2, d_max=64, weighting="inverse",
        ...                    rng=np.random.default_rng(0))
        >>> walk.shape, bool(np.all(np.abs(np.diff(walk, axis=1)) >= 1))
        ((2, 4), True)
    """
    if weighting not in WALK_WEIGHTINGS:
        raise ValueError(
            f"`weighting` must be one of {WALK_WEIGHTINGS}. Received: weighting={weighting!r}"
        )
    cur = np.asarray(start, np.int64).reshape(-1)
    if cur.size and (cur.min() < 1 or cur.max() > d_max):
        raise ValueError(f"Start sizes must be in [1, {d_max}]. Received {cur.min()}..{cur.max()}")
    out = np.empty((cur.size, int(length) + 1), np.int32)
    out[:, 0] = cur
    if d_max < 2 or length == 0 or cur.size == 0:
        out[:] = cur[:, None]
        return out
    offsets = np.concatenate([np.arange(-radius, 0), np.arange(1, radius + 1)])
    w = np.abs(offsets).astype(np.float64)
    w = 1.0 / w if weighting == "inverse" else w
    rows = np.arange(cur.size)
    for hop in range(1, int(length) + 1):
        nxt = cur[:, None] + offsets[None, :]
        weights = np.where((nxt >= 1) & (nxt <= d_max), w[None, :], 0.0)
        cum = np.cumsum(weights, axis=1)
        x = rng.random(cur.size) * cum[:, -1]
        # The first neighbour whose cumulative weight passes x: always a linked size.
        k = np.minimum((cum <= x[:, None]).sum(axis=1), offsets.size - 1)
        cur = nxt[rows, k]
        out[:, hop] = cur
    return out


def reward(
    quality: Any, sizes: Any, *, d_max: int, weight: float, quality_kind: str = "ratio"
) -> np.ndarray:
    """The CIESS reward of every entity of a side.

    ``"ratio"``: ``q_n - weight * (d_n / d_max)^2`` (the paper's). ``"raw"``:
    ``Q_n - weight * ((d_n - 1) / d_max)^2`` (the authors' code, with its smaller weight).

    Args:
        quality: q_n (``"ratio"``) or Q_n (``"raw"``) per entity.
        sizes: the sizes the quality was measured with.
        d_max: full width.
        weight: lambda, the weight of the memory cost.
        quality_kind: one of `REWARD_QUALITIES`.

    Example:
        >>> reward([1.0, 0.5], [128, 64], d_max=128, weight=0.4).tolist()
        [0.6000000238418579, 0.4000000059604645]
    """
    if quality_kind not in REWARD_QUALITIES:
        raise ValueError(
            f"`quality_kind` must be one of {REWARD_QUALITIES}. Received: {quality_kind!r}"
        )
    d = np.asarray(sizes, np.float64)
    if quality_kind == "raw":
        d = d - 1.0
    cost = float(weight) * (d / float(d_max)) ** 2
    return (np.asarray(quality, np.float64) - cost).astype(np.float32)


NOISE_DISTRIBUTIONS = ("gaussian", "uniform", "ou")
"""Exploration noise distributions: ``"gaussian"`` (the default), ``"uniform"`` (with the same
standard deviation) or ``"ou"`` (an Ornstein-Uhlenbeck process stepped once per iteration)."""

DEFAULT_NOISE_STD = {"gaussian": 6.0, "uniform": 11.0 / 3.0**0.5, "ou": 40.0}
"""The CIESS paper's noises: N(0, 6), U(-11, 11) and an OU process with sigma 40."""


class ExplorationNoise:
    """CIESS's exploration noise, in size units.

    ``"gaussian"`` and ``"uniform"`` draws are independent with mean 0 and standard deviation
    ``std`` (uniform on ``[-std sqrt(3), std sqrt(3)]``). ``"ou"`` is an Ornstein-Uhlenbeck
    process ``x <- x - theta x dt + std sqrt(dt) N(0, 1)`` (theta 0.15, dt 0.01) stepped once
    per `step` call and restarted at 0 by `reset`; it has one value per iteration, so it can
    only be shared by every entity.

    Args:
        distribution: one of `NOISE_DISTRIBUTIONS`.
        std: the standard deviation (the OU process's sigma).

    Example:
        >>> noise = ExplorationNoise("uniform", 1.0)
        >>> draws = noise.draw(10_000, np.random.default_rng(0))
        >>> bool(abs(draws.std() - 1.0) < 0.02 and np.abs(draws).max() <= 3.0**0.5)
        True
    """

    theta = 0.15
    dt = 0.01

    def __init__(self, distribution: str, std: float) -> None:
        if distribution not in NOISE_DISTRIBUTIONS:
            raise ValueError(
                f"`distribution` must be one of {NOISE_DISTRIBUTIONS}. Received: {distribution!r}"
            )
        self.distribution = distribution
        self.std = float(std)
        self.value = 0.0  # the OU process's current value

    def draw(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` independent draws (Gaussian or uniform; not for the OU process)."""
        if self.distribution == "ou":
            raise ValueError("An Ornstein-Uhlenbeck noise has one value per iteration: use step.")
        if self.distribution == "uniform":
            half = self.std * 3.0**0.5
            return rng.uniform(-half, half, n)
        return rng.normal(0.0, self.std, n)

    def reset(self) -> None:
        """Restarts the OU process at 0 (no effect on the other distributions)."""
        self.value = 0.0

    def step(self, rng: np.random.Generator) -> float:
        """The noise of one iteration: a new draw, or the OU process moved one step."""
        if self.distribution != "ou":
            return float(self.draw(1, rng)[0])
        shock = float(rng.normal())
        self.value += -self.theta * self.value * self.dt + self.std * self.dt**0.5 * shock
        return self.value
