from __future__ import annotations

import time

import numpy as np
import pytest
import scipy.stats
from fakes import _seed_and_clear  # noqa: F401  (no Keras session reset needed)
from hypothesis import given, settings
from hypothesis import strategies as st

from tfembsize.budget import Budget
from tfembsize.controllers import bet_sampler
from tfembsize.controllers.bet_sampler import (
    DEFAULT_BETA_MAX,
    FAMILIES,
    BudgetedActionSampler,
    _water_fill_counts,
    draw_family,
    family_quantile,
    frequency_order,
)
from tfembsize.errors import BudgetInfeasibleError


def zipf_frequencies(n, rng, ties=True):
    f = np.floor(500.0 / np.arange(1, n + 1) ** 1.2).astype(np.int64)
    return rng.permutation(f)  # plenty of ties among the rare entities


def limit_for(n_users, n_items, sparsity, d_max):
    return Budget(sparsity=sparsity, d_max=d_max).max_params_for(n_users + n_items)


# Budget and bounds -----------------------------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(
    n_users=st.integers(1, 300),
    n_items=st.integers(1, 300),
    d_max=st.sampled_from([2, 8, 32, 128]),
    sparsity=st.sampled_from([0.3, 0.5, 0.8, 0.9, 0.95, 0.99]),
    split=st.sampled_from(["feasible", "uniform"]),
    per_action=st.booleans(),
    seed=st.integers(0, 2**31),
)
def test_every_action_is_within_budget_and_bounds(
    n_users, n_items, d_max, sparsity, split, per_action, seed
):
    rng = np.random.default_rng(seed)
    freqs = (zipf_frequencies(n_users, rng), zipf_frequencies(n_items, rng))
    limit = limit_for(n_users, n_items, sparsity, d_max)
    if limit < n_users + n_items:
        with pytest.raises(BudgetInfeasibleError, match="cannot give"):
            BudgetedActionSampler(freqs, limit, d_max)
        return
    sampler = BudgetedActionSampler(freqs, limit, d_max, split=split, per_action=per_action)
    batch = sampler.sample(40, rng)
    assert batch.counts.shape == (40, 2, d_max)
    assert (batch.total_sizes() <= limit).all()
    assert (batch.side_limits.sum(axis=1) == limit).all()
    for i in range(len(batch)):
        users, items = sampler.entity_sizes(batch.counts[i])
        assert users.shape == (n_users,) and items.shape == (n_items,)
        assert users.min() >= 1 and items.min() >= 1
        assert users.max() <= d_max and items.max() <= d_max
        # Each side stays within its own share of the budget.
        assert users.sum() <= batch.side_limits[i, 0] and items.sum() <= batch.side_limits[i, 1]
        assert users.sum() + items.sum() <= limit


def test_thousands_of_draws_at_several_sparsities_and_sizes():
    rng = np.random.default_rng(0)
    for n_users, n_items, d_max in [(50, 2000, 128), (3000, 700, 64), (1, 1, 64)]:
        freqs = (zipf_frequencies(n_users, rng), zipf_frequencies(n_items, rng))
        for c in (0.8, 0.9, 0.95):
            limit = limit_for(n_users, n_items, c, d_max)
            sampler = BudgetedActionSampler(freqs, limit, d_max)
            batch = sampler.sample(1000, rng)
            assert (batch.total_sizes() <= limit).all()
            counts = batch.counts
            assert (counts.sum(axis=2) == [n_users, n_items]).all()
            # Unless clipped after R failed redraws, only rounding down loses budget.
            kept = ~batch.clipped.any(axis=1)
            assert kept.mean() > 0.9
            assert batch.total_sizes()[kept].min() >= limit - (n_users + n_items)


def test_split_bounds_give_every_entity_at_least_one():
    freqs = (np.arange(10), np.arange(990))
    sampler = BudgetedActionSampler(freqs, size_limit=2000, d_max=128)
    lo, hi = sampler.split_bounds()
    assert (lo, hi) == (10, 1010)  # users >= 1 each; items keep >= 990 units
    batch = sampler.sample(500, np.random.default_rng(0))
    assert (batch.side_limits[:, 0] >= 10).all() and (batch.side_limits[:, 0] <= 1010).all()
    assert batch.weights.min() >= 10 / 2000 and batch.weights.max() <= 1010 / 2000
    uniform = BudgetedActionSampler(freqs, 2000, 128, split="uniform")
    b = uniform.sample(500, np.random.default_rng(0))
    assert b.weights.min() < 0.1 and b.weights.max() > 0.9  # w ~ U(0, 1), then clamped
    assert (b.side_limits[:, 0] >= 10).all() and (b.side_limits[:, 1] >= 990).all()


# Frequency-rank assignment ---------------------------------------------------------------------
def test_sizes_are_assigned_by_frequency_rank_with_ties_by_id():
    freqs = (np.array([3, 9, 3, 0, 9, 1]), np.array([5, 5, 5, 7]))
    np.testing.assert_array_equal(frequency_order(freqs[0]), [1, 4, 0, 2, 5, 3])
    sampler = BudgetedActionSampler(freqs, size_limit=40, d_max=8)
    counts = np.zeros((2, 8), np.int64)
    counts[0, [7, 4, 2, 0]] = [1, 2, 2, 1]  # users: one 8, two 5s, two 3s, one 1
    counts[1, [5, 3, 1]] = [1, 2, 1]  # items: one 6, two 4s, one 2
    users, items = sampler.entity_sizes(counts)
    np.testing.assert_array_equal(users, [5, 8, 3, 1, 5, 3])
    np.testing.assert_array_equal(items, [4, 4, 2, 6])
    np.testing.assert_array_equal(sampler.counts_from_sizes([users, items]), counts)
    np.testing.assert_array_equal(sampler.rank_sizes(counts)[0], [8, 5, 5, 3, 3, 1])


def test_sampled_plans_are_monotone_in_frequency():
    rng = np.random.default_rng(1)
    freqs = (zipf_frequencies(200, rng), zipf_frequencies(300, rng))
    sampler = BudgetedActionSampler(freqs, limit_for(200, 300, 0.9, 64), 64)
    batch = sampler.sample(50, rng)
    for i in range(len(batch)):
        for f, sizes in zip(freqs, sampler.entity_sizes(batch.counts[i]), strict=True):
            order = frequency_order(f)
            assert (np.diff(sizes[order]) <= 0).all()
            # ties in frequency never give the larger id the larger size
            same = f[order][:-1] == f[order][1:]
            assert (sizes[order][:-1][same] >= sizes[order][1:][same]).all()


# Determinism -------------------------------------------------------------------------------------
def test_deterministic_under_seed():
    rng = np.random.default_rng(2)
    freqs = (zipf_frequencies(100, rng), zipf_frequencies(150, rng))
    sampler = BudgetedActionSampler(freqs, limit_for(100, 150, 0.9, 32), 32)
    a = sampler.sample(30, np.random.default_rng(7))
    b = sampler.sample(30, np.random.default_rng(7))
    c = sampler.sample(30, np.random.default_rng(8))
    for field in ("counts", "weights", "families", "betas", "redraws", "side_limits"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert not np.array_equal(a.counts, c.counts)


def test_per_iteration_variant_shares_family_and_beta():
    rng = np.random.default_rng(3)
    freqs = (zipf_frequencies(100, rng), zipf_frequencies(150, rng))
    sampler = BudgetedActionSampler(
        freqs, limit_for(100, 150, 0.9, 32), 32, per_action=False, families=("log_normal",)
    )
    batch = sampler.sample(20, rng)
    accepted = batch.redraws.sum(axis=1) == 0
    assert accepted.sum() >= 10
    first = np.flatnonzero(accepted)[0]
    assert (batch.betas[accepted] == batch.betas[first]).all()
    assert (batch.families == FAMILIES.index("log_normal")).all()
    assert len(np.unique(batch.weights)) == 20  # w is still drawn per action
    per_action = BudgetedActionSampler(freqs, limit_for(100, 150, 0.9, 32), 32)
    assert len(np.unique(per_action.sample(20, rng).betas[:, 0])) == 20


# Repair ------------------------------------------------------------------------------------------
def test_redraws_then_clips_when_no_draw_fits():
    # A power law with beta <= 0.3 gives the top entity > 3.2 times the mean share, more
    # than d_max = 16 allows at a mean size of 5.
    sampler = BudgetedActionSampler(
        [np.arange(100)],
        500,
        16,
        families=("power_law",),
        beta_max={"power_law": 0.3},
        max_redraws=3,
    )
    batch = sampler.sample(10, np.random.default_rng(0))
    assert batch.clipped.all() and (batch.redraws == 3).all()
    assert (batch.total_sizes() <= 500).all()
    assert batch.counts[:, :, -1].min() >= 1  # clipped at d_max


def test_repair_redraws_oversized_draws():
    rng = np.random.default_rng(4)
    freqs = (zipf_frequencies(50, rng), zipf_frequencies(60, rng))
    # At 20 % sparsity the mean size is ~0.8 * d_max, so skewed draws often exceed d_max.
    sampler = BudgetedActionSampler(freqs, limit_for(50, 60, 0.2, 16), 16)
    batch = sampler.sample(200, rng)
    assert batch.redraws.sum() > 0
    assert (batch.total_sizes() <= sampler.size_limit).all()


def _fixed_draws(monkeypatch, *draws):
    """Makes the sampler's family draws return ``draws`` in turn (the last one repeats).

    Returns the list of draws handed out, so a test can count the (re)draws.
    """
    handed = []

    def fake_quantile(family, u, beta):
        assert u.shape == (1, len(draws[0]))
        values = np.asarray(draws[min(len(handed), len(draws) - 1)], np.float64)
        handed.append(values)
        return values[None, :].copy()  # the sampler scales the draw in place

    monkeypatch.setattr(bet_sampler, "family_quantile", fake_quantile)
    return handed


def _two_entity_sampler(max_redraws=2):
    # Entity 0 is the more frequent, so it gets the larger size. Budget 6, d_max 4.
    return BudgetedActionSampler(
        [np.array([5, 1])], size_limit=6, d_max=4, families=("power_law",), max_redraws=max_redraws
    )


@pytest.mark.parametrize(
    ("draw", "largest", "redraws", "clipped", "sizes"),
    [
        # largest = 6 * share of entity 0. A size is floor(limit * share), so a draw is
        # acceptable exactly when largest < d_max + 1 = 5.
        ([2.0, 1.0], 4.0, 0, False, [4, 2]),  # exactly d_max: accepted
        ([3.0, 1.0], 4.5, 0, False, [4, 1]),  # in (d_max, d_max + 1): floor is d_max, accepted
        ([5.0, 1.0], 5.0, 2, True, [4, 1]),  # exactly d_max + 1: rejected, R redraws, clipped
    ],
)
def test_acceptance_boundary_is_largest_below_d_max_plus_one(
    monkeypatch, draw, largest, redraws, clipped, sizes
):
    assert 6 * draw[0] / sum(draw) == largest  # exact in floating point
    handed = _fixed_draws(monkeypatch, draw)
    sampler = _two_entity_sampler(max_redraws=2)
    batch = sampler.sample(1, np.random.default_rng(0))
    assert batch.redraws.tolist() == [[redraws]]
    assert batch.clipped.tolist() == [[clipped]]
    assert len(handed) == 1 + redraws
    assert sampler.entity_sizes(batch.counts[0])[0].tolist() == sizes
    assert batch.total_sizes().tolist() == [sum(sizes)]


def test_a_rejected_draw_is_redrawn_and_the_next_acceptable_one_kept(monkeypatch):
    # First draw: largest exactly d_max + 1 (rejected); second: largest 4.5 (accepted).
    handed = _fixed_draws(monkeypatch, [5.0, 1.0], [3.0, 1.0])
    sampler = _two_entity_sampler(max_redraws=2)
    batch = sampler.sample(1, np.random.default_rng(0))
    assert len(handed) == 2
    assert batch.redraws.tolist() == [[1]] and batch.clipped.tolist() == [[False]]
    np.testing.assert_array_equal(batch.counts[0, 0], [1, 0, 0, 1])  # one size 1, one size 4
    assert sampler.entity_sizes(batch.counts[0])[0].tolist() == [4, 1]


def _naive_cut(sizes, limit):
    sizes = sorted(sizes, reverse=True)
    while sum(sizes) > limit:
        sizes[int(np.argmax(sizes))] -= 1
    return sorted(sizes, reverse=True)


@settings(max_examples=100, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 12), min_size=1, max_size=40),
    slack=st.integers(0, 200),
)
def test_water_fill_equals_taking_one_from_the_largest(sizes, slack):
    limit = max(len(sizes), sum(sizes) - slack)
    counts = np.bincount(np.asarray(sizes) - 1, minlength=12)[None]
    out = _water_fill_counts(counts, np.array([limit]))[0]
    got = np.repeat(np.arange(12, 0, -1), out[::-1]).tolist()
    assert got == _naive_cut(sizes, limit)


# Families --------------------------------------------------------------------------------------
REFERENCE = {
    "power_law": lambda b: scipy.stats.powerlaw(b),
    "truncated_normal": lambda b: scipy.stats.truncnorm(0.0, b),
    "truncated_exponential": lambda b: scipy.stats.truncexpon(b),
    "log_normal": lambda b: scipy.stats.lognorm(b),
}


@pytest.mark.parametrize("family", FAMILIES)
def test_family_quantiles_equal_scipy_stats_ppf(family):
    u = np.linspace(1e-6, 1 - 1e-6, 1001)[None]
    for frac in (0.01, 0.3, 1.0):
        beta = DEFAULT_BETA_MAX[family] * frac
        want = REFERENCE[family](beta).ppf(u)
        np.testing.assert_allclose(family_quantile(family, u, [beta]), want, rtol=1e-7, atol=1e-12)


@pytest.mark.parametrize("family", FAMILIES)
def test_family_draws_follow_the_scipy_distribution(family):
    beta = 0.5 * DEFAULT_BETA_MAX[family]
    x = draw_family(family, np.array([beta]), 4000, np.random.default_rng(11))[0]
    assert scipy.stats.kstest(x, REFERENCE[family](beta).cdf).pvalue > 0.01


# Errors and speed ------------------------------------------------------------------------------
def test_bad_arguments():
    f = (np.arange(5), np.arange(5))
    with pytest.raises(BudgetInfeasibleError, match="size_limit=9 cannot give 10 entities"):
        BudgetedActionSampler(f, 9, 8)
    with pytest.raises(ValueError, match="`split` must be one of"):
        BudgetedActionSampler(f, 20, 8, split="half")
    with pytest.raises(ValueError, match="`families` must be a non-empty subset"):
        BudgetedActionSampler(f, 20, 8, families=("gamma",))
    with pytest.raises(ValueError, match="one or two sides"):
        BudgetedActionSampler([np.arange(3)] * 3, 20, 8)
    with pytest.raises(ValueError, match="`num_actions` must be a positive integer"):
        BudgetedActionSampler(f, 20, 8).sample(0, np.random.default_rng())
    with pytest.raises(TypeError, match="numpy Generator"):
        BudgetedActionSampler(f, 20, 8).sample(3, 0)
    with pytest.raises(ValueError, match="`family` must be one of"):
        family_quantile("gamma", np.zeros((1, 2)), [1.0])


@pytest.mark.slow
def test_gowalla_sized_sampling_is_fast():
    rng = np.random.default_rng(0)
    freqs = (zipf_frequencies(29_858, rng), zipf_frequencies(40_981, rng))
    sampler = BudgetedActionSampler(freqs, limit_for(29_858, 40_981, 0.9, 128), 128)
    sampler.sample(100, rng)  # warm up
    times = []  # CPU time of this process: other jobs on a shared machine do not count
    for _ in range(3):
        start = time.process_time()
        sampler.sample(100, rng)
        times.append(time.process_time() - start)
    assert min(times) < 1.0, times
