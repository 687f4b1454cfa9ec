"""Fakes for controller tests: small observations and an environment with a known fitness."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from tfembsize.controllers import Controller, Decision
from tfembsize.records import Feedback, Observation


@pytest.fixture(autouse=True)
def _seed_and_clear() -> None:
    """Replaces the root conftest's fixture in modules that import it.

    Controllers never build Keras models, so these tests skip ``keras.backend.clear_session()``
    (a full ``gc.collect``, ~0.5 s per test on a busy machine) and only seed the generators.
    """
    tf.random.set_seed(0)
    np.random.seed(0)


MF_TABLES = {"user_embedding": "user", "item_embedding": "item"}
NCF_TABLES = {
    "user_gmf": "user",
    "item_gmf": "item",
    "user_mlp": "user",
    "item_mlp": "item",
}


def make_observation(
    num_users: int = 40,
    num_items: int = 60,
    *,
    d_max: int = 32,
    tables: dict | None = None,
    seed: int = 0,
) -> Observation:
    """Power-law (Zipf-like) frequencies, shuffled so that id order is not frequency order."""
    rng = np.random.default_rng(seed)

    def freqs(n: int) -> np.ndarray:
        f = np.floor(200.0 / np.arange(1, n + 1) ** 1.1).astype(np.int64)
        f[-3:] = 0  # a few cold entities
        return rng.permutation(f)

    return Observation(
        tables=dict(tables or MF_TABLES),
        user_frequencies=freqs(num_users),
        item_frequencies=freqs(num_items),
        d_max=d_max,
    )


class FakeEnvironment:
    """Fitness is a deterministic function of the plan that rewards sizing popular entities up.

    fitness = mean over sides of sum_n w_n * log(1 + d_n) / log(1 + d_max), with
    w_n = (f_n + 1) / sum(f + 1). Concave in each size, weighted by popularity: the best
    allocation gives frequent entities large sizes and rare ones small sizes. ``fail_at``
    lists step numbers whose feedback is a failed step.
    """

    def __init__(self, observation: Observation, *, fail_at: tuple[int, ...] = ()) -> None:
        self.observation = observation
        self.fail_at = set(fail_at)
        self.steps = 0
        self.modes: list[str] = []

    def fitness(self, plan) -> float:
        obs = self.observation
        users, items = obs.sizes_from_plan(plan)
        out = []
        for f, d in ((obs.user_frequencies, users), (obs.item_frequencies, items)):
            w = (f + 1.0) / (f + 1.0).sum()
            out.append(float((w * np.log1p(d)).sum() / np.log1p(obs.d_max)))
        return float(np.mean(out))

    def step(self, decision: Decision) -> Feedback:
        self.modes.append(decision.mode)
        i = self.steps
        self.steps += 1
        if i in self.fail_at:
            return Feedback.failed("loss became NaN (fake)")
        r = self.fitness(decision.plan)
        return Feedback(
            quality=0.2 * r,
            quality_ratio=r,
            metrics={"recall@20": 0.3 * r},
            usable_params=decision.plan.total_params(),
            wall_time=0.0,
            mode=decision.mode,
        )


def drive(controller: Controller, env: FakeEnvironment, steps: int | None = None) -> list:
    """Runs ask -> step -> tell; returns [(decision, feedback)]. ``steps=None``: until done."""
    out = []
    while not controller.done and (steps is None or len(out) < steps):
        decision = controller.ask(env.observation)
        feedback = env.step(decision)
        controller.tell(decision, feedback)
        out.append((decision, feedback))
    return out
