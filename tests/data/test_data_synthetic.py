"""The synthetic data set: sizes, guarantees, determinism, power-law popularity, errors."""

from __future__ import annotations

import numpy as np
import pytest

from tfembsize.data import synthetic
from tfembsize.data.synthetic import _successive_sampling, _TopicModel


def test_defaults():
    d = synthetic()
    assert (d.num_users, d.num_items, d.num_interactions) == (1000, 1500, 40_000)
    assert d.name == "synthetic"
    assert d.user_frequencies.min() >= 4
    assert d.user_frequencies.max() <= 1500
    keys = d.keys()
    assert np.all(keys[1:] > keys[:-1])  # no repeated pair


def test_deterministic_and_seed_dependent():
    a, b, c = (
        synthetic(300, 500, 6000, seed=5),
        synthetic(300, 500, 6000, seed=5),
        synthetic(300, 500, 6000, seed=6),
    )
    assert a == b
    assert a != c


def test_every_user_gets_train_validation_and_test_items():
    split = synthetic(500, 400, 2000, seed=1).split(0.5, 0.25, 0.25, seed=42)  # exactly 4 each
    for part in (split.train, split.validation, split.test):
        assert part.user_frequencies.min() >= 1


def test_item_popularity_is_heavy_tailed():
    d = synthetic(2000, 2000, 60_000, seed=0, popularity_exponent=1.0)
    f = np.sort(d.item_frequencies)[::-1]
    top_decile = f[: len(f) // 10].sum() / f.sum()
    assert top_decile > 0.4  # uniform popularity would give about 0.1
    flat = synthetic(2000, 2000, 60_000, seed=0, popularity_exponent=0.0, popularity_mix=1.0)
    g = np.sort(flat.item_frequencies)[::-1]
    assert g[: len(g) // 10].sum() / g.sum() < 0.15


def test_topics_give_users_a_preference_structure():
    # The centred user x item matrix of topic-driven data has most of its energy in about
    # `num_topics` directions; popularity-only data does not.
    def top_share(data):
        m = data.to_scipy().toarray()
        s = np.linalg.svd(m - m.mean(axis=0), compute_uv=False)
        return (s[:5] ** 2).sum() / (s**2).sum()

    kw = dict(num_users=150, num_items=300, num_interactions=4500, seed=0)
    topical = synthetic(**kw, num_topics=5, topic_concentration=0.05, popularity_mix=0.0)
    plain = synthetic(**kw, popularity_mix=1.0)
    assert top_share(topical) > top_share(plain) + 0.15


def test_full_matrix_and_exact_fallback():
    full = synthetic(5, 10, 50, seed=0)
    assert full.num_interactions == 50 and np.all(full.user_frequencies == 10)
    # heavy skew: a user needs almost every item, so the exact Gumbel fallback runs
    d = synthetic(3, 40, 110, seed=1, popularity_exponent=3.0, activity_exponent=3.0)
    assert d.num_interactions == 110 and d.user_frequencies.max() <= 40


def test_successive_sampling_fallback_directly():
    rng = np.random.default_rng(0)
    pop = np.array([0.9, 0.1 - 3e-12, 1e-12, 1e-12, 1e-12])
    model = _TopicModel(pop, np.zeros(5, np.int64), 1, 1.0, np.ones((2, 1)), np.ones((2, 1)))
    keys = _successive_sampling(rng, model, np.array([5, 5]), 5)
    assert keys.tolist() == list(range(10))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(num_users=0), r"`num_users` must be an integer >= 1. Received: num_users=0"),
        (dict(num_items=3), r"`num_items` must be an integer >= 4"),
        (dict(num_interactions=100), r"`num_interactions` must be in \[min_per_user \* num_users"),
        (dict(num_interactions=10**9), r"= \[4000, 1500000\]"),
        (dict(seed=-1), "`seed` must be an integer >= 0"),
        (dict(popularity_mix=1.5), r"`popularity_mix` must be in \[0, 1\]"),
        (dict(topic_concentration=0.0), "`topic_concentration` must be > 0"),
        (dict(popularity_exponent=float("nan")), "must be a finite number"),
    ],
)
def test_argument_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        synthetic(**kwargs)
