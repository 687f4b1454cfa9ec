"""A seeded synthetic implicit-feedback data set: the default that needs no files."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from tfembsize.data._arrays import first_occurrence, unique
from tfembsize.data.interactions import Interactions

__all__ = ["synthetic"]

_MAX_ROUNDS = 30  # rounds of vectorised draws before the exact per-user fallback


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"`{name}` must be an integer >= {minimum}. Received: {name}={value!r}")
    return int(value)


def _check_float(name: str, value: Any, minimum: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
        raise TypeError(f"`{name}` must be a float. Received: {name}={value!r}")
    if not math.isfinite(float(value)) or float(value) < minimum:
        raise ValueError(f"`{name}` must be a finite number >= {minimum}. Received: {value!r}")
    return float(value)


def _degrees(
    rng: np.random.Generator,
    num_users: int,
    num_items: int,
    total: int,
    exponent: float,
    minimum: int,
) -> np.ndarray:
    """Per-user counts >= ``minimum`` and <= ``num_items`` summing to ``total`` (power law)."""
    weights = (np.arange(num_users) + 1.0) ** (-exponent)
    weights = weights[rng.permutation(num_users)]
    deg = np.full(num_users, minimum, dtype=np.int64)
    extra = total - minimum * num_users
    while extra > 0:
        room = deg < num_items
        w = np.where(room, weights, 0.0)
        deg += rng.multinomial(extra, w / w.sum())
        over = np.maximum(deg - num_items, 0)
        deg -= over
        extra = int(over.sum())
    return deg


def synthetic(
    num_users: int = 1000,
    num_items: int = 1500,
    num_interactions: int = 40_000,
    seed: int = 0,
    *,
    popularity_exponent: float = 0.8,
    activity_exponent: float = 0.5,
    num_topics: int = 16,
    topic_concentration: float = 0.1,
    popularity_mix: float = 0.2,
    min_per_user: int = 4,
) -> Interactions:
    """Generates implicit feedback with power-law popularity and a topic structure.

    Item v has popularity ``p_v ∝ (r_v + 1) ** -popularity_exponent`` for a random rank
    ``r_v`` and one of ``num_topics`` topics (a random balanced assignment). User u has topic
    weights ``θ_u ~ Dirichlet(topic_concentration)`` (small values: a few favourite topics).
    One draw for user u is, with probability ``popularity_mix``, an item drawn by popularity;
    otherwise a topic drawn from ``θ_u`` and an item of that topic drawn by popularity. User u
    keeps the first ``n_u`` distinct items of its draws, which is weighted sampling without
    replacement. User activity ``n_u`` follows a power law with ``activity_exponent`` over a
    random user order, with at least ``min_per_user`` interactions per user (so the default
    50/25/25 split gives every user train, validation and test items) and at most
    ``num_items``.

    So the data has a popularity signal any model finds and a low-rank (about
    ``num_topics``) preference signal that needs embedding capacity: what a size search
    needs. There are no repeated pairs; the result depends only on the arguments; generation
    takes O(num_interactions) time (a Gowalla-sized set takes a few seconds).

    All ``num_items`` rows are kept, even an item nobody picked (rare with the defaults).

    Args:
        num_users: number of users (>= 1).
        num_items: number of items (>= ``min_per_user``).
        num_interactions: number of distinct pairs, in ``[min_per_user * num_users,
            num_users * num_items]``.
        seed: non-negative integer seed.
        popularity_exponent: power-law exponent of item popularity (0 gives uniform).
        activity_exponent: power-law exponent of user activity (0 gives equal activity).
        num_topics: number of topics (>= 1).
        topic_concentration: Dirichlet concentration of the users' topic weights (> 0).
        popularity_mix: probability that a draw ignores topics, in [0, 1].
        min_per_user: smallest number of interactions per user.

    Returns:
        The interactions, named ``"synthetic"``.

    Raises:
        ValueError: on an argument out of range.

    Example:
        >>> data = synthetic(200, 300, 4000, seed=0)
        >>> data.num_interactions, int(data.user_frequencies.min()) >= 4
        (4000, True)
    """
    num_users = _check_int("num_users", num_users, 1)
    min_per_user = _check_int("min_per_user", min_per_user, 1)
    num_items = _check_int("num_items", num_items, min_per_user)
    num_interactions = _check_int("num_interactions", num_interactions, 0)
    seed = _check_int("seed", seed, 0)
    num_topics = _check_int("num_topics", num_topics, 1)
    popularity_exponent = _check_float("popularity_exponent", popularity_exponent, 0.0)
    activity_exponent = _check_float("activity_exponent", activity_exponent, 0.0)
    topic_concentration = _check_float("topic_concentration", topic_concentration, 0.0)
    if topic_concentration == 0.0:
        raise ValueError("`topic_concentration` must be > 0. Received: topic_concentration=0.0")
    popularity_mix = _check_float("popularity_mix", popularity_mix, 0.0)
    if popularity_mix > 1.0:
        raise ValueError(
            f"`popularity_mix` must be in [0, 1]. Received: popularity_mix={popularity_mix}"
        )
    lo, hi = min_per_user * num_users, num_users * num_items
    if not lo <= num_interactions <= hi:
        raise ValueError(
            f"`num_interactions` must be in [min_per_user * num_users, num_users * num_items] "
            f"= [{lo}, {hi}]. Received: num_interactions={num_interactions}"
        )

    rng = np.random.default_rng(seed)
    pop = (np.arange(num_items) + 1.0) ** (-popularity_exponent)
    pop = pop[rng.permutation(num_items)]
    pop /= pop.sum()
    num_topics = min(num_topics, num_items)
    topic = rng.permutation(num_items) % num_topics  # balanced, no empty topic
    deg = _degrees(rng, num_users, num_items, num_interactions, activity_exponent, min_per_user)
    theta = rng.dirichlet(np.full(num_topics, topic_concentration), size=num_users)
    theta_cdf = np.cumsum(theta, axis=1)
    theta_cdf /= theta_cdf[:, -1:]
    model = _TopicModel(pop, topic, num_topics, popularity_mix, theta, theta_cdf)

    keys = _successive_sampling(rng, model, deg, num_items)
    return Interactions._from_canonical(
        keys // num_items, keys % num_items, num_users, num_items, name="synthetic"
    )


class _TopicModel:
    """Draws items for users from the popularity/topic mixture (vectorised)."""

    def __init__(
        self,
        pop: np.ndarray,
        topic: np.ndarray,
        num_topics: int,
        mix: float,
        theta: np.ndarray,
        theta_cdf: np.ndarray,
    ) -> None:
        self.pop, self.topic, self.mix = pop, topic, mix
        self.theta, self.theta_cdf = theta, theta_cdf
        self.pop_cdf = np.cumsum(pop)
        self.pop_cdf /= self.pop_cdf[-1]
        # Items grouped by topic; within topic t the cumulative popularity runs over (t, t+1],
        # so one searchsorted over `topic_cdf` with `t + uniform` draws from topic t.
        self.by_topic = np.argsort(topic, kind="stable")
        mass = np.bincount(topic, weights=pop, minlength=num_topics)
        t_sorted = topic[self.by_topic]
        within = np.cumsum(pop[self.by_topic]) - np.concatenate(([0.0], np.cumsum(mass)))[t_sorted]
        safe = np.where(mass > 0, mass, 1.0)
        self.topic_cdf = t_sorted + within / safe[t_sorted]
        last_of_topic = np.append(t_sorted[1:] != t_sorted[:-1], True)
        self.topic_cdf[last_of_topic] = t_sorted[last_of_topic] + 1.0  # close exactly

    def draw(self, rng: np.random.Generator, users: np.ndarray) -> np.ndarray:
        n = users.size
        n_items = self.pop.size
        items = np.minimum(np.searchsorted(self.pop_cdf, rng.random(n)), n_items - 1)
        by_topic = rng.random(n) >= self.mix
        u = users[by_topic]
        r = rng.random(u.size)
        t = (r[:, None] >= self.theta_cdf[u]).sum(axis=1)
        t = np.minimum(t, self.theta_cdf.shape[1] - 1)
        pos = np.searchsorted(self.topic_cdf, t + rng.random(u.size), side="left")
        items[by_topic] = self.by_topic[np.minimum(pos, n_items - 1)]
        return items

    def weights(self, user: int) -> np.ndarray:
        """Exact draw probabilities of every item for one user."""
        mass = np.bincount(self.topic, weights=self.pop, minlength=self.theta.shape[1])
        safe = np.where(mass > 0, mass, 1.0)
        in_topic = self.pop / safe[self.topic]
        return self.mix * self.pop + (1 - self.mix) * self.theta[user][self.topic] * in_topic


def _successive_sampling(
    rng: np.random.Generator, model: _TopicModel, deg: np.ndarray, num_items: int
) -> np.ndarray:
    """Sorted pair keys: for every user the first ``deg[u]`` distinct items of its draws."""
    num_users = deg.size
    chosen = np.zeros(0, dtype=np.int64)
    need = deg.astype(np.int64).copy()
    for _ in range(_MAX_ROUNDS):
        active = np.flatnonzero(need > 0)
        if active.size == 0:
            break
        draws = need[active] + np.ceil(0.25 * need[active]).astype(np.int64) + 2
        users = np.repeat(active, draws)
        keys = users * num_items + model.draw(rng, users)
        # Keep the first occurrence of each key within this round, in draw order ...
        fresh = first_occurrence(keys)
        # ... that was not chosen in an earlier round ...
        if chosen.size:
            pos = np.minimum(np.searchsorted(chosen, keys), chosen.size - 1)
            fresh &= chosen[pos] != keys
        # ... and only as many as the user still needs.
        rank = np.cumsum(fresh) - 1
        start = np.repeat(np.cumsum(draws) - draws, draws)
        rank_in_user = rank - np.concatenate(([0], np.cumsum(fresh)))[start]
        take = fresh & (rank_in_user < np.repeat(need[active], draws))
        chosen = unique(np.concatenate([chosen, keys[take]]))
        need -= np.bincount(users[take], minlength=num_users)
    extra = [chosen]
    for u in np.flatnonzero(need > 0):
        # Rare: a user needs most of the items with non-negligible weight. Finish its
        # successive sampling exactly with the Gumbel-top-k trick over the items not chosen.
        mine = chosen[(chosen >= u * num_items) & (chosen < (u + 1) * num_items)] - u * num_items
        w = model.weights(int(u))
        w[mine] = 0.0
        with np.errstate(divide="ignore"):
            g = np.log(w) + rng.gumbel(size=num_items)
        picked = np.argsort(-g, kind="stable")[: need[u]]
        extra.append(u * num_items + picked)
    return np.sort(np.concatenate(extra))
