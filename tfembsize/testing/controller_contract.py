"""The contract every embedding-size controller must satisfy, shipped for your own controllers.

Modelled on optuna's ``testing/pytest_samplers.py``: one test class holds the behaviour every
`tfembsize.controllers.Controller` shares (budgets asserted on every budgeted decision and
every result, seeded determinism, JSON state and save/restore that continue identically,
failed steps accepted, clear errors for bad calls). A controller's test module subclasses
`ControllerContract` and implements ``make_controller(sparsity, seed)``; pytest collects the
inherited tests. Set ``stochastic = False`` for deterministic controllers.

`FakeEnvironment` (a deterministic fitness that rewards sizing popular entities up),
`make_observation` and `drive` (ask -> step -> tell until done) make the tests fast: no model
is trained.

Example:
    >>> from tfembsize.testing import ControllerContract
    >>> from tfembsize.controllers import ES
    >>> class TestES(ControllerContract):
    ...     stochastic = False
    ...     def make_controller(self, sparsity, seed=0):
    ...         return ES(sparsity=sparsity, seed=seed)
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from tfembsize.budget import Budget
from tfembsize.controllers import MODES, PHASES, Controller, Decision
from tfembsize.errors import BudgetInfeasibleError
from tfembsize.plan import SizePlan
from tfembsize.records import Feedback, Observation

__all__ = [
    "ControllerContract",
    "FakeEnvironment",
    "MF_TABLES",
    "NCF_TABLES",
    "drive",
    "make_observation",
]

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
    tables: dict[str, str] | None = None,
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
    lists step numbers whose feedback is a failed step. Per entity, the quality ratio to the
    full-size model is ``log(1 + d_n) / log(1 + d_max)`` (`entity_ratios`).
    """

    def __init__(self, observation: Observation, *, fail_at: tuple[int, ...] = ()) -> None:
        self.observation = observation
        self.fail_at = set(fail_at)
        self.steps = 0
        self.modes: list[str] = []

    def fitness(self, plan: SizePlan) -> float:
        """Popularity-weighted concave fitness of ``plan`` in [0, 1]."""
        obs = self.observation
        users, items = obs.sizes_from_plan(plan)
        out: list[float] = []
        for f, d in ((obs.user_frequencies, users), (obs.item_frequencies, items)):
            w = (f + 1.0) / (f + 1.0).sum()
            out.append(float((w * np.log1p(d)).sum() / np.log1p(obs.d_max)))
        return float(np.mean(out))

    def entity_ratios(self, plan: SizePlan) -> tuple[np.ndarray, np.ndarray]:
        """Per-entity quality ratios: ``log(1 + d_n) / log(1 + d_max)`` for users and items."""
        obs = self.observation
        users, items = obs.sizes_from_plan(plan)
        scale = np.log1p(obs.d_max)
        return np.log1p(users) / scale, np.log1p(items) / scale

    def step(self, decision: Decision) -> Feedback:
        """A deterministic `Feedback` for the decision (a failed one at ``fail_at``)."""
        self.modes.append(decision.mode)
        i = self.steps
        self.steps += 1
        if i in self.fail_at:
            return Feedback.failed("loss became NaN (fake)")
        r = self.fitness(decision.plan)
        users, items = self.entity_ratios(decision.plan)
        return Feedback(
            quality=0.2 * r,
            quality_ratio=r,
            user_quality=0.2 * users,
            item_quality=0.2 * items,
            user_quality_ratio=users,
            item_quality_ratio=items,
            metrics={"recall@20": 0.3 * r},
            usable_params=decision.plan.total_params(),
            wall_time=0.0,
            mode=decision.mode,
        )


def drive(
    controller: Controller, env: FakeEnvironment, steps: int | None = None
) -> list[tuple[Decision, Feedback]]:
    """Runs ask -> step -> tell; returns [(decision, feedback)]. ``steps=None``: until done."""
    out: list[tuple[Decision, Feedback]] = []
    while not controller.done and (steps is None or len(out) < steps):
        decision = controller.ask(env.observation)
        feedback = env.step(decision)
        controller.tell(decision, feedback)
        out.append((decision, feedback))
    return out


SPARSITIES = (0.5, 0.8, 0.95)


def _same(a: Decision, b: Decision) -> bool:
    """Equal decisions apart from their sequence number."""
    return a.replace(id=-1) == b.replace(id=-1)


class ControllerContract:
    """Shared behaviour of every `Controller`."""

    stochastic = True
    may_miss_targets = False
    """True for controllers whose search may find nothing within a budget (CIESS's search is
    unbudgeted): `best_plan` may then be None for a target, never an over-budget plan."""

    def make_controller(self, sparsity: float | Sequence[float], seed: int = 0) -> Controller:
        """A new controller for ``sparsity`` and ``seed`` (implement this)."""
        raise NotImplementedError

    # Budgets ---------------------------------------------------------------------------------
    @pytest.mark.parametrize("tables", [None, NCF_TABLES], ids=["mf", "ncf"])
    def test_every_plan_is_within_its_budget(self, tables: dict[str, str] | None) -> None:
        """Every plan is within its budget."""
        obs = make_observation(tables=tables)
        controller = self.make_controller(SPARSITIES)
        assert isinstance(controller, Controller)
        env = FakeEnvironment(obs)
        seen: set[float | None] = set()
        for decision, _ in drive(controller, env):
            assert isinstance(decision, Decision)
            assert decision.mode in MODES and decision.phase in PHASES
            users, items = obs.sizes_from_plan(decision.plan)
            for name, side in obs.tables.items():  # shared per-entity sizes across tables
                assert np.array_equal(decision.plan[name], users if side == "user" else items)
            if decision.budget is None:  # an unbudgeted search step (exploration)
                assert not controller.budgeted_decisions
                assert decision.phase == "search"
                continue
            assert decision.budget == Budget(sparsity=decision.sparsity, d_max=obs.d_max)
            decision.plan.check(decision.budget)  # raises if over budget or out of bounds
            assert decision.plan.total_params() <= decision.budget.max_params_for(obs.num_rows)
            seen.add(decision.sparsity)
        if controller.budgeted_decisions:
            assert seen == set(SPARSITIES)
        assert controller.done
        total = controller.num_iterations  # None: an open-ended controller
        assert total is None or controller.iteration <= total
        for c in SPARSITIES:
            plan = controller.best_plan(c)
            if plan is None and self.may_miss_targets:
                continue
            assert plan is not None
            plan.check(Budget(sparsity=c, d_max=obs.d_max))

    def test_ask_after_done_raises(self) -> None:
        """Ask after done raises."""
        obs = make_observation()
        controller = self.make_controller(0.9)
        drive(controller, FakeEnvironment(obs))
        with pytest.raises(RuntimeError, match="is done"):
            controller.ask(obs)

    def test_infeasible_sparsity_raises(self) -> None:
        """Infeasible sparsity raises."""
        obs = make_observation(d_max=16)  # 1 - 0.97 leaves 0.48 parameters per row
        controller = self.make_controller(0.97)
        with pytest.raises(BudgetInfeasibleError, match="fewer than one per row"):
            controller.ask(obs)

    # Determinism and state -------------------------------------------------------------------
    def test_same_seed_same_decisions(self) -> None:
        """Same seed same decisions."""
        obs = make_observation()
        a = drive(self.make_controller((0.8, 0.9), seed=3), FakeEnvironment(obs))
        b = drive(self.make_controller((0.8, 0.9), seed=3), FakeEnvironment(obs))
        assert len(a) == len(b)
        assert all(_same(x, y) for (x, _), (y, _) in zip(a, b, strict=True))
        if self.stochastic:
            c = drive(self.make_controller((0.8, 0.9), seed=4), FakeEnvironment(obs))
            assert not all(x.plan == y.plan for (x, _), (y, _) in zip(a, c, strict=False))

    def test_get_state_is_json_and_round_trips_to_identical_asks(self) -> None:
        """Get state is json and round trips to identical asks."""
        obs = make_observation()
        env = FakeEnvironment(obs)
        controller = self.make_controller(SPARSITIES)
        drive(controller, env, steps=1)
        state = controller.get_state()
        assert json.loads(json.dumps(state)) == state
        first = controller.ask(obs)
        controller.set_state(state)
        assert controller.pending is None
        again = controller.ask(obs)
        assert _same(first, again)

    def test_state_while_pending_is_the_state_before_the_ask(self) -> None:
        """State while pending is the state before the ask."""
        obs = make_observation()
        controller = self.make_controller(0.9)
        first = controller.ask(obs)
        state = controller.get_state()  # taken while `first` is pending
        controller.set_state(state)
        assert _same(controller.ask(obs), first)

    def test_save_restore_continues_identically(self, tmp_path: Path) -> None:
        """Save restore continues identically."""
        obs = make_observation()
        a = self.make_controller((0.8, 0.9), seed=7)
        env_a = FakeEnvironment(obs)
        drive(a, env_a, steps=1)
        a.save(tmp_path / "ckpt")
        a.save(tmp_path / "ckpt")  # a second generation replaces the first
        b = self.make_controller((0.8, 0.9), seed=7)
        b.restore(tmp_path / "ckpt")
        assert b.iteration == a.iteration
        rest_a = drive(a, env_a)
        rest_b = drive(b, FakeEnvironment(obs))
        assert len(rest_a) == len(rest_b)
        assert all(_same(x, y) for (x, _), (y, _) in zip(rest_a, rest_b, strict=True))
        for c in (0.8, 0.9):
            assert a.best_plan(c) == b.best_plan(c)
        loaded = type(a).load(tmp_path / "ckpt")
        assert loaded.get_config() == a.get_config() and loaded.iteration == 1

    def test_save_while_pending_then_restore_asks_the_same(self, tmp_path: Path) -> None:
        """Save while pending then restore asks the same."""
        obs = make_observation()
        a = self.make_controller((0.8, 0.9))
        drive(a, FakeEnvironment(obs), steps=1)
        pending = a.ask(obs)
        a.save(tmp_path)
        b = self.make_controller((0.8, 0.9))
        b.restore(tmp_path)
        assert _same(b.ask(obs), pending)

    def test_restore_rejects_another_configuration(self, tmp_path: Path) -> None:
        """Restore rejects another configuration."""
        obs = make_observation()
        a = self.make_controller(0.9, seed=1)
        drive(a, FakeEnvironment(obs), steps=1)
        a.save(tmp_path)
        with pytest.raises(ValueError, match="different configuration"):
            self.make_controller(0.8, seed=1).restore(tmp_path)

    def test_restore_missing_directory(self, tmp_path: Path) -> None:
        """Restore missing directory."""
        with pytest.raises(FileNotFoundError, match="No saved controller"):
            self.make_controller(0.9).restore(tmp_path / "nothing")

    def test_failed_step_is_accepted(self) -> None:
        """Failed step is accepted."""
        obs = make_observation()
        controller = self.make_controller(0.9)
        env = FakeEnvironment(obs, fail_at=(0,))
        steps = drive(controller, env)
        assert not steps[0][1].ok
        assert controller.done

    # Bad input -------------------------------------------------------------------------------
    def test_bad_sparsity(self) -> None:
        """Bad sparsity."""
        with pytest.raises(
            ValueError, match=r"`sparsity` must be in \(0, 1\). Received: sparsity=1.3"
        ):
            self.make_controller(1.3)
        with pytest.raises(ValueError, match="distinct"):
            self.make_controller((0.9, 0.9))

    def test_bad_calls(self) -> None:
        """Bad calls."""
        obs = make_observation()
        controller = self.make_controller((0.9, 0.8))
        with pytest.raises(TypeError, match="must be a tfembsize.search.Observation"):
            controller.ask({"tables": {}})  # type: ignore[arg-type]  # the wrong type on purpose
        fb = Feedback(quality=0.1, quality_ratio=0.5)
        with pytest.raises(RuntimeError, match="no pending decision"):
            controller.tell(None, fb)  # type: ignore[arg-type]  # the wrong type on purpose
        decision = controller.ask(obs)
        with pytest.raises(RuntimeError, match="pending decision"):
            controller.ask(obs)
        with pytest.raises(ValueError, match="not the pending decision"):
            controller.tell(decision.replace(id=decision.id + 1), fb)
        with pytest.raises(ValueError, match="changed after ask"):
            controller.tell(decision.replace(mode="continue"), fb)
        with pytest.raises(TypeError, match="must be a tfembsize.search.Feedback"):
            controller.tell(decision, {"quality": 0.1})  # type: ignore[arg-type]  # on purpose
        controller.tell(decision, FakeEnvironment(obs).step(decision))
        other = make_observation(seed=1)  # same shapes, other frequencies
        with pytest.raises(ValueError, match="different problem.*frequencies differ"):
            controller.ask(other)
        with pytest.raises(ValueError, match="one of the controller's"):
            controller.best_plan(0.5)
