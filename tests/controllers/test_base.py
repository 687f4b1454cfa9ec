from __future__ import annotations

import json
import os

import numpy as np
import pytest
from fakes import (
    NCF_TABLES,
    FakeEnvironment,
    _seed_and_clear,  # noqa: F401  (no Keras session reset needed)
    drive,
    make_observation,
)

from tfembsize import records
from tfembsize.budget import Budget
from tfembsize.controllers import MODES, Controller, Decision, Problem
from tfembsize.controllers.base import fitness_of, validate_sparsities
from tfembsize.errors import BudgetExceededError
from tfembsize.plan import SizePlan
from tfembsize.records import Feedback

PLAN = SizePlan({"user_embedding": [4, 4], "item_embedding": [4, 4, 4]})


def test_modes_match_the_search_records():
    assert MODES == records.MODES


def test_decision_validation_and_json_round_trip():
    d = Decision(
        PLAN,
        "snapshot",
        budget=Budget(sparsity=0.5, d_max=8),
        train_epochs=10,
        info={"strategy": "predict", "p": np.float32(0.5)},
    )
    assert d.sparsity == 0.5 and d.train_epochs == 10.0 and d.info["p"] == 0.5
    assert Decision.from_dict(json.loads(json.dumps(d.to_dict()))) == d
    with pytest.raises(ValueError, match="`mode` must be one of .* Received: mode='warm'"):
        Decision(PLAN, "warm")
    with pytest.raises(ValueError, match="at most one of `train_steps` and `train_epochs`"):
        Decision(PLAN, train_steps=5, train_epochs=1)
    with pytest.raises(ValueError, match="`train_steps` must be a positive integer"):
        Decision(PLAN, train_steps=0)
    with pytest.raises(ValueError, match="`phase` must be one of"):
        Decision(PLAN, phase="warmup")
    with pytest.raises(TypeError, match="`plan` must be a SizePlan"):
        Decision({"user_embedding": [1]})
    with pytest.raises(TypeError, match=r"`info\['x'\]` must hold JSON values"):
        Decision(PLAN, info={"x": object()})


def test_problem_counts_every_table_in_the_budget():
    obs = make_observation(tables=NCF_TABLES, d_max=32)
    p = Problem.from_observation(obs)
    assert p.tables_per_side == 2 and p.num_rows == 2 * 100
    # B(0.9) = floor(0.1 * 32 * 200) = 640 parameters = 320 units of entity size.
    assert p.max_params(0.9) == 640 and p.size_limit(0.9) == 320
    odd = dict(NCF_TABLES)
    del odd["item_mlp"]
    with pytest.raises(ValueError, match="same number of tables"):
        Problem.from_observation(obs.replace(tables=odd))


def test_validate_sparsities_messages():
    assert validate_sparsities(0.9) == (0.9,)
    assert validate_sparsities([0.8, 0.95]) == (0.8, 0.95)
    with pytest.raises(ValueError, match=r"Received: sparsity=0"):
        validate_sparsities(0)
    with pytest.raises(ValueError, match="non-empty sequence"):
        validate_sparsities([])
    with pytest.raises(ValueError, match=r"Received: sparsity='0.9'"):
        validate_sparsities("0.9")


def test_fitness_is_the_quality_ratio_else_the_quality():
    assert fitness_of(Feedback(quality=0.2, quality_ratio=0.8)) == 0.8
    assert fitness_of(Feedback(quality=0.2)) == 0.2
    assert fitness_of(Feedback.failed("nan")) is None


class Greedy(Controller):
    """A controller as a user would write one: the hooks only."""

    name = "greedy"

    def __init__(self, sparsity, *, seed=None, cheat=None):
        super().__init__(sparsity, seed=seed)
        self.cheat = cheat
        self.scores = []

    def get_config(self):
        return {**super().get_config(), "cheat": self.cheat}

    def _ask(self, observation):
        c = self.sparsities[0]
        size = int(self.rng.integers(1, 4))
        plan = observation.plan_from_sizes(
            np.full(observation.num_users, size), np.full(observation.num_items, size)
        )
        if self.cheat == "over":
            plan = observation.full_plan()
        if self.cheat == "tables":
            plan = SizePlan({"user_embedding": plan["user_embedding"]})
        if self.cheat == "type":
            return plan
        return Decision(plan, "scratch", budget=self.problem.budget(c))

    def _tell(self, decision, feedback):
        self.scores.append(fitness_of(feedback))

    def _is_done(self):
        return len(self.scores) >= 3

    def _get_state(self):
        return {"scores": self.scores}

    def _set_state(self, state):
        self.scores = list(state["scores"])


def test_a_subclass_only_writes_hooks():
    obs = make_observation()
    controller = Greedy(0.9, seed=0)
    steps = drive(controller, FakeEnvironment(obs))
    assert len(steps) == 3 and controller.done and controller.iteration == 3
    assert [d.id for d, _ in steps] == [0, 1, 2]
    assert controller.budgets == {0.9: Budget(sparsity=0.9, d_max=32)}


@pytest.mark.parametrize(
    ("cheat", "error", "match"),
    [
        ("over", BudgetExceededError, "more than the budget"),
        ("tables", ValueError, "returned a plan for tables"),
        ("type", TypeError, "must return a Decision"),
    ],
)
def test_the_base_class_checks_every_decision(cheat, error, match):
    with pytest.raises(error, match=match):
        Greedy(0.9, cheat=cheat).ask(make_observation())


def test_an_interrupted_save_leaves_the_previous_one_readable(tmp_path, monkeypatch):
    obs = make_observation()
    a = Greedy(0.9, seed=1)
    drive(a, FakeEnvironment(obs), steps=1)
    a.save(tmp_path)
    state = a.get_state()
    drive(a, FakeEnvironment(obs), steps=1)

    real_replace = os.replace

    def crash(src, dst):
        if str(dst).endswith("controller.json"):
            raise OSError("disk full")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crash)  # arrays written; the manifest swap fails
    with pytest.raises(OSError, match="disk full"):
        a.save(tmp_path)
    monkeypatch.undo()
    b = Greedy(0.9, seed=1)
    b.restore(tmp_path)
    assert b.get_state() == state and b.iteration == 1
    with open(tmp_path / "controller.json") as f:
        assert json.load(f)["generation"] == 0
    assert (tmp_path / "arrays-000001.npz").exists()  # the new generation, never committed
    a.save(tmp_path)  # the next save commits and cleans up older generations
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("arrays")) == [
        "arrays-000001.npz"
    ]


def test_set_state_rejects_other_classes_and_garbage():
    a = Greedy(0.9)
    with pytest.raises(ValueError, match="not a tfembsize controller state"):
        a.set_state({"format": "x"})
    state = a.get_state()
    state["class"] = "BETController"
    with pytest.raises(ValueError, match="belongs to BETController, not Greedy"):
        a.set_state(state)


@pytest.mark.parametrize(
    "name",
    [
        "tfembsize.records.decision",
        "tfembsize.records.observation",
        "tfembsize.records.feedback",
        "tfembsize.controllers.baselines",
        "tfembsize.controllers.bet",
        "tfembsize.controllers.bet_sampler",
    ],
)
def test_docstring_examples(name):
    import doctest
    import importlib

    result = doctest.testmod(
        importlib.import_module(name), optionflags=doctest.NORMALIZE_WHITESPACE
    )
    assert result.attempted > 0 and result.failed == 0


class _Logged(Controller):
    """Appends one row per tell to an append-only buffer; unbudgeted search decisions."""

    budgeted_decisions = False

    def __init__(self, sparsity=0.5, *, seed=None):
        super().__init__(sparsity, seed=seed)
        from tfembsize._io import AppendOnlyArrays

        self.buffer = AppendOnlyArrays({"q": ((), "float64")})

    def _ask(self, observation):
        plan = observation.plan_from_sizes(
            np.full(observation.num_users, observation.d_max),
            np.full(observation.num_items, observation.d_max),
        )
        return Decision(plan, "scratch", budget=None)  # exploration: over budget, unbudgeted

    def _tell(self, decision, feedback):
        self.buffer.append(q=[feedback.quality])

    def _is_done(self):
        return False

    def _array_logs(self):
        return {"buffer": self.buffer}

    def _best_plan(self, sparsity):
        p = self.problem
        return p.plan_from_sizes(np.full(p.num_users, p.d_max), np.full(p.num_items, p.d_max))


def test_growing_buffers_are_appended_not_rewritten(tmp_path):
    obs = make_observation()
    ctrl = _Logged(seed=0)
    logs = tmp_path / "logs"
    for i in range(3):
        d = ctrl.ask(obs)
        assert d.budget is None and d.plan.total_params() > ctrl.problem.max_params(0.5)
        ctrl.tell(d, Feedback(quality=0.1 * (i + 1), user_quality=[0.1], item_quality=[0.1]))
        ctrl.save(tmp_path / f"ckpt{i}", logs_directory=logs)
    chunks = sorted(os.listdir(logs / "buffer"))
    assert chunks == [f"{i:012d}-{i + 1:012d}.npz" for i in range(3)]  # one new row per save
    restored = _Logged(seed=0)
    restored.restore(tmp_path / "ckpt1")  # an older checkpoint commits 2 rows
    assert restored.buffer.arrays["q"].tolist() == pytest.approx([0.1, 0.2])
    restored.restore(tmp_path / "ckpt2")
    assert restored.buffer.arrays["q"].tolist() == pytest.approx([0.1, 0.2, 0.3])


def test_results_are_asserted_within_budget_even_with_unbudgeted_decisions():
    obs = make_observation()
    ctrl = _Logged(seed=0)
    ctrl.ask(obs)
    with pytest.raises(BudgetExceededError):
        ctrl.best_plan()  # the full plan exceeds B(0.5)


def test_budgeted_controllers_must_give_a_budget():
    class NoBudget(_Logged):
        budgeted_decisions = True

    with pytest.raises(ValueError, match="returned a decision without a budget; set the class"):
        NoBudget(seed=0).ask(make_observation())
