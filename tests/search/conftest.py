"""Fakes for the search loop: a seeded random-plan controller and a cheap environment."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import numpy as np
import pytest

from tfembsize.budget import Budget
from tfembsize.plan import SizePlan
from tfembsize.search import Feedback, Observation


@dataclass(frozen=True)
class FakeDecision:
    plan: SizePlan
    mode: str = "scratch"
    budget: Budget | None = None
    info: dict = field(default_factory=dict)


class FakeController:
    """Random plans under a budget; its RNG state and tell-log are its saved state."""

    def __init__(self, sparsity=0.5, seed=0, num_iterations=None, over_budget_at=None):
        self.budget = Budget(sparsity=sparsity, d_max=8)
        self.rng = np.random.default_rng(seed)
        self.told: list[tuple[int, float]] = []
        self.num_iterations = num_iterations
        self.over_budget_at = over_budget_at
        self.fail_save_at = None

    @property
    def done(self):
        return self.num_iterations is not None and len(self.told) >= self.num_iterations

    def ask(self, observation: Observation) -> FakeDecision:
        assert observation.iteration == len(self.told)
        u = self.rng.integers(1, 9, observation.num_users)
        i = self.rng.integers(1, 9, observation.num_items)
        plan = observation.plan_from_sizes(u, i)
        if self.over_budget_at == observation.iteration:
            plan = observation.full_plan()
        else:
            plan = plan.repair(self.budget)
        return FakeDecision(plan, "snapshot", self.budget, {"draw": float(u[0])})

    def tell(self, decision, feedback):
        self.told.append((len(self.told), feedback.quality))

    @property
    def last_info(self):
        return {"told": len(self.told)}

    def save(self, directory):
        if self.fail_save_at is not None and len(self.told) - 1 == self.fail_save_at:
            self.fail_save_at = None
            raise KeyboardInterrupt("killed while saving")
        with open(os.path.join(directory, "state.json"), "w") as f:
            json.dump({"rng": self.rng.bit_generator.state, "told": self.told}, f)

    def restore(self, directory):
        with open(os.path.join(directory, "state.json")) as f:
            state = json.load(f)
        self.rng.bit_generator.state = state["rng"]
        self.told = [tuple(t) for t in state["told"]]


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
