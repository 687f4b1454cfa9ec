"""Fakes for the search loop: a seeded random-plan controller and a cheap environment."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from tfembsize.controllers import Controller, Decision
from tfembsize.search import Feedback, Observation


class FakeController(Controller):
    """Random plans under a budget; its RNG state and tell-log are its saved state."""

    def __init__(self, sparsity=0.5, seed=0, num_iterations=None, over_budget_at=None):
        super().__init__(sparsity, seed=seed)
        self.told: list[tuple[int, float]] = []
        self._limit = num_iterations
        self.over_budget_at = over_budget_at
        self.fail_save_at = None

    def get_config(self):
        return {
            **super().get_config(),
            "num_iterations": self._limit,
            "over_budget_at": self.over_budget_at,
        }

    def _is_done(self):
        return self._limit is not None and len(self.told) >= self._limit

    def _total_steps(self):
        return self._limit

    def _ask(self, observation: Observation) -> Decision:
        assert observation.iteration == len(self.told)
        budget = self.budgets[self.sparsities[0]]
        u = self.rng.integers(1, 9, observation.num_users)
        i = self.rng.integers(1, 9, observation.num_items)
        plan = observation.plan_from_sizes(u, i)
        if self.over_budget_at == observation.iteration:
            plan = observation.full_plan()
        else:
            plan = plan.repair(budget)
        return Decision(plan, "snapshot", budget=budget, info={"draw": float(u[0])})

    def _tell(self, decision, feedback):
        self.told.append((len(self.told), feedback.quality))
        self._metrics = {"told": float(len(self.told))}

    def _get_state(self):
        return {"told": [[i, None if np.isnan(q) else q] for i, q in self.told]}

    def _set_state(self, state):
        self.told = [(int(i), float("nan") if q is None else q) for i, q in state["told"]]

    def save(self, directory, **kwargs):
        if self.fail_save_at is not None and len(self.told) - 1 == self.fail_save_at:
            self.fail_save_at = None
            raise KeyboardInterrupt("killed while saving")
        super().save(directory, **kwargs)


class FakeEnv:
    """Quality = weighted share of params; counts steps; fails on NaN-marked plans."""

    def __init__(self, num_users=5, num_items=7, fail_at=None):
        self.num_users, self.num_items = num_users, num_items
        self.steps = 0
        self.fail_at = fail_at
        self.crash_at = None
        self.reference_fb = Feedback(
            quality=0.5,
            user_quality=np.full(num_users, 0.5),
            item_quality=np.full(num_items, 0.5),
            usable_params=8 * (num_users + num_items),
        )

    def observation(self):
        return Observation(
            {"user_embedding": "user", "item_embedding": "item"},
            user_frequencies=np.arange(self.num_users),
            item_frequencies=np.arange(self.num_items)[::-1],
            d_max=8,
            reference=self.reference_fb,
        )

    def step(self, plan, mode="scratch", **kwargs):
        if self.crash_at == self.steps:
            self.crash_at = None
            raise KeyboardInterrupt("killed during a step")
        self.steps += 1
        if self.fail_at == self.steps - 1:
            return Feedback.failed("loss became NaN", usable_params=plan.total_params(), mode=mode)
        u = plan["user_embedding"].astype(float) / 8
        i = plan["item_embedding"].astype(float) / 8
        q = float(0.3 * u.mean() + 0.2 * i.mean())
        return Feedback(
            quality=q,
            user_quality=u * 0.5,
            item_quality=i * 0.5,
            usable_params=plan.total_params(),
            wall_time=0.01,
            quality_ratio=q / 0.5,
            user_quality_ratio=np.minimum(u, 1),
            item_quality_ratio=np.minimum(i, 1),
            metrics={"recall@20": q},
            mode=mode,
        )

    def snapshot(self):
        pass

    def restore(self):
        pass


@pytest.fixture
def fakes():
    return FakeController, FakeEnv


class StatefulFakeEnv(FakeEnv):
    """FakeEnv whose step counter is persisted by the loop."""

    def attach(self, directory):
        self.attached = directory

    def save_state(self, directory):
        with open(os.path.join(directory, "env.json"), "w") as f:
            json.dump({"steps": self.steps}, f)

    def load_state(self, directory):
        with open(os.path.join(directory, "env.json")) as f:
            self.steps = json.load(f)["steps"]


@pytest.fixture
def stateful_env_cls():
    return StatefulFakeEnv
