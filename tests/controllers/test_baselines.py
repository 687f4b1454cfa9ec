from __future__ import annotations

import numpy as np
import pytest
from fakes import (
    NCF_TABLES,
    FakeEnvironment,
    _seed_and_clear,  # noqa: F401  (no Keras session reset needed)
    drive,
    make_observation,
)

from tfembsize.budget import Budget
from tfembsize.controllers import ES, MR, FrequencyProportional
from tfembsize.testing import ControllerContract


class TestESContract(ControllerContract):
    stochastic = False

    def make_controller(self, sparsity, seed=0):
        return ES(sparsity=sparsity, seed=seed)


class TestMRContract(ControllerContract):
    def make_controller(self, sparsity, seed=0):
        return MR(sparsity=sparsity, seed=seed)


class TestFrequencyProportionalContract(ControllerContract):
    stochastic = False

    def make_controller(self, sparsity, seed=0):
        return FrequencyProportional(sparsity=sparsity, power=0.5, seed=seed)


@pytest.mark.parametrize("tables", [None, NCF_TABLES], ids=["mf", "ncf"])
@pytest.mark.parametrize(("sparsity", "size"), [(0.8, 25), (0.9, 12), (0.95, 6)])
def test_es_gives_everyone_floor_of_density_times_d_max(tables, sparsity, size):
    obs = make_observation(d_max=128, tables=tables)
    plan = ES(sparsity=sparsity).plans(obs)[sparsity]
    for name in obs.tables:
        assert (plan[name] == size).all()
    # The budget spans users and items: N * floor((1 - c) * d_max) <= B(c).
    assert plan.total_params() <= Budget(sparsity=sparsity, d_max=128).max_params_for(obs.num_rows)


def test_baseline_decisions_train_from_scratch_in_full():
    obs = make_observation()
    controller = MR(sparsity=(0.8, 0.9), seed=1)
    steps = drive(controller, FakeEnvironment(obs))
    assert [d.sparsity for d, _ in steps] == [0.8, 0.9]
    assert all(d.mode == "scratch" and d.phase == "final" for d, _ in steps)
    assert all(d.train_steps is None and d.train_epochs is None for d, _ in steps)
    assert [d.plan for d, _ in steps] == list(controller.plans(obs).values())
    assert controller.fitness(0.9) == pytest.approx(steps[1][1].quality_ratio)
    assert set(controller.metrics()) == {"0.9/fitness"}


def test_mr_is_random_uses_the_budget_and_is_seeded_per_sparsity():
    obs = make_observation(num_users=300, num_items=500, d_max=64)
    plans = MR(sparsity=(0.8, 0.9), seed=5).plans(obs)
    alone = MR(sparsity=0.9, seed=5).plans(obs)[0.9]
    assert plans[0.9] == alone  # independent of the other sparsities
    assert plans[0.9] != MR(sparsity=0.9, seed=6).plans(obs)[0.9]
    for c, plan in plans.items():
        users, items = obs.sizes_from_plan(plan)
        sizes = np.concatenate([users, items])
        limit = Budget(sparsity=c, d_max=64).max_params_for(obs.num_rows)
        assert plan.total_params() == limit  # leftover budget handed out
        mean = limit / sizes.size
        assert sizes.min() >= 1 and sizes.max() <= 64
        assert sizes.std() > 0.4 * mean  # spread like a uniform on [0, 2 * mean]
        # Not correlated with popularity.
        freq = np.concatenate([obs.user_frequencies, obs.item_frequencies])
        assert abs(np.corrcoef(freq, sizes)[0, 1]) < 0.2


def test_frequency_proportional_orders_by_frequency_and_fills_the_budget():
    obs = make_observation(num_users=300, num_items=500, d_max=64)
    for power in (1.0, 0.5):
        plan = FrequencyProportional(sparsity=0.9, power=power).plans(obs)[0.9]
        users, items = obs.sizes_from_plan(plan)
        sizes = np.concatenate([users, items])
        freq = np.concatenate([obs.user_frequencies, obs.item_frequencies])
        order = np.lexsort((np.arange(freq.size), -freq))
        assert (np.diff(sizes[order]) <= 0).all()  # more frequent -> at least as large
        limit = Budget(sparsity=0.9, d_max=64).max_params_for(obs.num_rows)
        assert plan.total_params() == limit
        assert sizes.max() == 64 and sizes.min() == 1
    with pytest.raises(ValueError, match="`power` must be a positive number. Received: power=0"):
        FrequencyProportional(sparsity=0.9, power=0)


def test_frequency_proportional_needs_a_nonzero_frequency():
    obs = make_observation()
    zero = obs.replace(
        user_frequencies=np.zeros(obs.num_users, np.int64),
        item_frequencies=np.zeros(obs.num_items, np.int64),
    )
    with pytest.raises(ValueError, match="at least one nonzero frequency"):
        FrequencyProportional(sparsity=0.9).plans(zero)
