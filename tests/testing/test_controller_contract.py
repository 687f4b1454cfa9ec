"""The shipped controller contract passes on a small user controller and catches broken ones."""

from __future__ import annotations

import numpy as np
import pytest

from tfembsize.controllers import Controller, Decision
from tfembsize.errors import BudgetExceededError
from tfembsize.testing import ControllerContract


class RandomUniform(Controller):
    """A user's controller: three random uniform plans per sparsity, best kept."""

    def __init__(self, sparsity, *, seed=None):
        super().__init__(sparsity, seed=seed)
        self.tried: dict = {}

    def _ask(self, observation):
        c = self.sparsities[self.iteration % len(self.sparsities)]
        budget = self.budgets[c]
        top = max(1, budget.max_params_for(observation.num_rows) // observation.num_rows)
        d = int(self.rng.integers(1, top + 1))
        plan = observation.plan_from_sizes(
            np.full(observation.num_users, d), np.full(observation.num_items, d)
        )
        return Decision(plan, "scratch", budget=budget, info={"d": d})

    def _tell(self, decision, feedback):
        if feedback.ok:
            best = self.tried.get(decision.sparsity)
            if best is None or feedback.quality > best[0]:
                self.tried[decision.sparsity] = (feedback.quality, decision.info["d"])

    def _is_done(self):
        return self.iteration >= 3 * len(self.sparsities)

    def _total_steps(self):
        return 3 * len(self.sparsities)

    def _best_plan(self, sparsity):
        if sparsity not in self.tried:
            return None
        d = self.tried[sparsity][1]
        p = self.problem
        return p.plan_from_sizes(np.full(p.num_users, d), np.full(p.num_items, d))

    def _get_state(self):
        return {"tried": {str(k): list(v) for k, v in self.tried.items()}}

    def _set_state(self, state):
        self.tried = {float(k): tuple(v) for k, v in state["tried"].items()}


class TestRandomUniform(ControllerContract):
    def make_controller(self, sparsity, seed=0):
        return RandomUniform(sparsity, seed=seed)


class OverBudgetResult(RandomUniform):
    def _best_plan(self, sparsity):
        return self.problem.full_plan()


def test_the_contract_catches_an_over_budget_result():
    class Broken(ControllerContract):
        def make_controller(self, sparsity, seed=0):
            return OverBudgetResult(sparsity, seed=seed)

    with pytest.raises(BudgetExceededError):
        Broken().test_every_plan_is_within_its_budget(tables=None)


def test_the_contract_catches_a_controller_that_ignores_its_seed():
    class Unseeded(RandomUniform):
        def _ask(self, observation):
            self._rng = np.random.default_rng()  # fresh entropy: not reproducible
            return super()._ask(observation)

    class Broken(ControllerContract):
        def make_controller(self, sparsity, seed=0):
            return Unseeded(sparsity, seed=seed)

    with pytest.raises(AssertionError):
        for _ in range(5):  # a chance repeat of all draws is possible once, not five times
            Broken().test_same_seed_same_decisions()
