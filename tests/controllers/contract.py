"""The contract every controller must satisfy (subclass `ControllerContract` in a test module).

Modelled on optuna's ``testing/pytest_samplers.py``: one test class holds the behaviour every
implementation shares; a controller's test module subclasses it and implements
``make_controller(sparsity, seed)``. Set ``stochastic = False`` for deterministic controllers.

    class TestMyController(ControllerContract):
        def make_controller(self, sparsity, seed=0):
            return MyController(sparsity=sparsity, seed=seed, small_settings=...)
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from fakes import NCF_TABLES, FakeEnvironment, drive, make_observation

from tfembsize.budget import Budget
from tfembsize.controllers import MODES, PHASES, Controller, Decision
from tfembsize.errors import BudgetInfeasibleError
from tfembsize.records import Feedback

SPARSITIES = (0.5, 0.8, 0.95)


def _same(a: Decision, b: Decision) -> bool:
    return (
        a.plan == b.plan
        and a.mode == b.mode
        and a.budget == b.budget
        and a.info == b.info
        and a.phase == b.phase
        and a.train_steps == b.train_steps
        and a.train_epochs == b.train_epochs
    )


class ControllerContract:
    """Shared behaviour of every `Controller`."""

    stochastic = True

    def make_controller(self, sparsity, seed: int = 0) -> Controller:
        raise NotImplementedError

    # Budgets ---------------------------------------------------------------------------------
    @pytest.mark.parametrize("tables", [None, NCF_TABLES], ids=["mf", "ncf"])
    def test_every_plan_is_within_its_budget(self, tables):
        obs = make_observation(tables=tables)
        controller = self.make_controller(SPARSITIES)
        assert isinstance(controller, Controller)
        env = FakeEnvironment(obs)
        seen = set()
        for decision, _ in drive(controller, env):
            assert isinstance(decision, Decision)
            assert decision.mode in MODES and decision.phase in PHASES
            assert decision.budget == Budget(sparsity=decision.sparsity, d_max=obs.d_max)
            decision.plan.check(decision.budget)  # raises if over budget or out of bounds
            assert decision.plan.total_params() <= decision.budget.max_params_for(obs.num_rows)
            users, items = obs.sizes_from_plan(decision.plan)
            for name, side in obs.tables.items():  # shared per-entity sizes across tables
                assert np.array_equal(decision.plan[name], users if side == "user" else items)
            seen.add(decision.sparsity)
        assert seen == set(SPARSITIES)
        assert controller.done
        assert controller.iteration <= controller.num_iterations
        for c in SPARSITIES:
            plan = controller.best_plan(c)
            assert plan is not None
            plan.check(Budget(sparsity=c, d_max=obs.d_max))

    def test_ask_after_done_raises(self):
        obs = make_observation()
        controller = self.make_controller(0.9)
        drive(controller, FakeEnvironment(obs))
        with pytest.raises(RuntimeError, match="is done"):
            controller.ask(obs)

    def test_infeasible_sparsity_raises(self):
        obs = make_observation(d_max=16)  # 1 - 0.97 leaves 0.48 parameters per row
        controller = self.make_controller(0.97)
        with pytest.raises(BudgetInfeasibleError, match="fewer than one per row"):
            controller.ask(obs)

    # Determinism and state -------------------------------------------------------------------
    def test_same_seed_same_decisions(self):
        obs = make_observation()
        a = drive(self.make_controller((0.8, 0.9), seed=3), FakeEnvironment(obs))
        b = drive(self.make_controller((0.8, 0.9), seed=3), FakeEnvironment(obs))
        assert len(a) == len(b)
        assert all(_same(x, y) for (x, _), (y, _) in zip(a, b, strict=True))
        if self.stochastic:
            c = drive(self.make_controller((0.8, 0.9), seed=4), FakeEnvironment(obs))
            assert not all(x.plan == y.plan for (x, _), (y, _) in zip(a, c, strict=False))

    def test_get_state_is_json_and_round_trips_to_identical_asks(self):
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

    def test_state_while_pending_is_the_state_before_the_ask(self):
        obs = make_observation()
        controller = self.make_controller(0.9)
        first = controller.ask(obs)
        state = controller.get_state()  # taken while `first` is pending
        controller.set_state(state)
        assert _same(controller.ask(obs), first)

    def test_save_restore_continues_identically(self, tmp_path):
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
        c = type(a).load(tmp_path / "ckpt")
        assert c.get_config() == a.get_config() and c.iteration == 1

    def test_save_while_pending_then_restore_asks_the_same(self, tmp_path):
        obs = make_observation()
        a = self.make_controller((0.8, 0.9))
        drive(a, FakeEnvironment(obs), steps=1)
        pending = a.ask(obs)
        a.save(tmp_path)
        b = self.make_controller((0.8, 0.9))
        b.restore(tmp_path)
        assert _same(b.ask(obs), pending)

    def test_restore_rejects_another_configuration(self, tmp_path):
        obs = make_observation()
        a = self.make_controller(0.9, seed=1)
        drive(a, FakeEnvironment(obs), steps=1)
        a.save(tmp_path)
        with pytest.raises(ValueError, match="different configuration"):
            self.make_controller(0.8, seed=1).restore(tmp_path)

    def test_restore_missing_directory(self, tmp_path):
        with pytest.raises(FileNotFoundError, match="No saved controller"):
            self.make_controller(0.9).restore(tmp_path / "nothing")

    def test_failed_step_is_accepted(self):
        obs = make_observation()
        controller = self.make_controller(0.9)
        env = FakeEnvironment(obs, fail_at=(0,))
        steps = drive(controller, env)
        assert not steps[0][1].ok
        assert controller.done

    # Bad input -------------------------------------------------------------------------------
    def test_bad_sparsity(self):
        with pytest.raises(
            ValueError, match=r"`sparsity` must be in \(0, 1\). Received: sparsity=1.3"
        ):
            self.make_controller(1.3)
        with pytest.raises(ValueError, match="distinct"):
            self.make_controller((0.9, 0.9))

    def test_bad_calls(self):
        obs = make_observation()
        controller = self.make_controller((0.9, 0.8))
        with pytest.raises(TypeError, match="must be a tfembsize.search.Observation"):
            controller.ask({"tables": {}})
        fb = Feedback(quality=0.1, quality_ratio=0.5)
        with pytest.raises(RuntimeError, match="no pending decision"):
            controller.tell(None, fb)
        decision = controller.ask(obs)
        with pytest.raises(RuntimeError, match="pending decision"):
            controller.ask(obs)
        with pytest.raises(ValueError, match="not the pending decision"):
            controller.tell(decision.replace(id=decision.id + 1), fb)
        with pytest.raises(ValueError, match="changed after ask"):
            controller.tell(decision.replace(mode="continue"), fb)
        with pytest.raises(TypeError, match="must be a tfembsize.search.Feedback"):
            controller.tell(decision, {"quality": 0.1})
        controller.tell(decision, fb)
        other = make_observation(seed=1)  # same shapes, other frequencies
        with pytest.raises(ValueError, match="different problem.*frequencies differ"):
            controller.ask(other)
        with pytest.raises(ValueError, match="one of the controller's"):
            controller.best_plan(0.5)
