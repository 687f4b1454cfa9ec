import json
import os

import numpy as np
import pytest

from tfembsize.controllers import Controller, Decision
from tfembsize.errors import BudgetExceededError
from tfembsize.plan import SizePlan
from tfembsize.search import Feedback, load_history, run


def _summary(result):
    return [
        (r.iteration, r.mode, r.plan.total_params(), r.feedback.quality, r.feedback.ok)
        for r in result.history
    ]


def test_run_records_every_step_and_picks_best_per_sparsity(tmp_path, fakes):
    make_ctrl, make_env = fakes
    ctrl = make_ctrl(sparsity=0.5, seed=1)
    env = make_env()
    result = run(ctrl, env, tmp_path / "run", iterations=4, verbose=0, tensorboard=False)
    assert len(result.history) == 4 and result.finished
    assert [r.iteration for r in result.history] == [0, 1, 2, 3]
    assert len(ctrl.told) == 4 and env.steps == 4
    limit = (12 * 8) // 2
    for r in result.history:
        assert r.plan.total_params() <= limit
        assert r.mode == "snapshot"
        assert r.info["sparsity"] == 0.5 and "draw" in r.info
    best = max(result.history, key=lambda r: r.feedback.quality_ratio)
    assert result.best is not None and result.best.iteration == best.iteration
    assert result.per_sparsity[0.5].iteration == best.iteration
    assert result.best_plan == best.plan
    # files of the run
    d = tmp_path / "run"
    state = json.loads((d / "run.json").read_text())
    assert state["completed"] == 4 and state["finished"] is True
    assert state["checkpoint"] == os.path.join("checkpoints", "000003")
    assert sorted(os.listdir(d / "checkpoints")) == ["000003"]  # older ones removed
    assert len((d / "history.jsonl").read_text().splitlines()) == 4
    assert load_history(d) == list(result.history)
    summary = json.loads((d / "result.json").read_text())
    assert summary["best_step_per_sparsity"]["0.5"]["iteration"] == best.iteration
    assert SizePlan.load(d / "plans" / "c0.5.json") == best.plan


def test_resume_continues_and_equals_an_uninterrupted_run(tmp_path, fakes, stateful_env_cls):
    make_ctrl, _ = fakes
    full = run(
        make_ctrl(seed=3),
        stateful_env_cls(),
        tmp_path / "a",
        iterations=6,
        verbose=0,
        tensorboard=False,
    )
    env = stateful_env_cls()
    run(make_ctrl(seed=3), env, tmp_path / "b", iterations=2, verbose=0, tensorboard=False)
    assert env.attached == os.path.join(tmp_path / "b", "env")
    env2 = stateful_env_cls()
    resumed = run(
        make_ctrl(seed=3), env2, tmp_path / "b", iterations=6, verbose=0, tensorboard=False
    )
    assert env2.steps == 6  # restored counter 2 + 4 new steps
    assert _summary(resumed) == _summary(full)
    assert [r.plan for r in resumed.history] == [r.plan for r in full.history]


@pytest.mark.parametrize("where", ["step", "save"])
def test_killed_run_resumes_from_last_committed_step(tmp_path, fakes, where):
    make_ctrl, make_env = fakes
    full = run(
        make_ctrl(seed=5), make_env(), tmp_path / "a", iterations=5, verbose=0, tensorboard=False
    )
    ctrl, env = make_ctrl(seed=5), make_env()
    if where == "step":
        env.crash_at = 3
    else:
        ctrl.fail_save_at = 3  # step 3 ran and its history line was written, not committed
    with pytest.raises(KeyboardInterrupt):
        run(ctrl, env, tmp_path / "b", iterations=5, verbose=0, tensorboard=False)
    assert json.loads((tmp_path / "b" / "run.json").read_text())["completed"] == 3
    assert len(load_history(tmp_path / "b")) == 3
    resumed = run(
        make_ctrl(seed=5), make_env(), tmp_path / "b", iterations=5, verbose=0, tensorboard=False
    )
    assert _summary(resumed) == _summary(full)
    lines = (tmp_path / "b" / "history.jsonl").read_text().splitlines()
    assert [json.loads(x)["iteration"] for x in lines] == [0, 1, 2, 3, 4]


def test_overwrite_starts_again(tmp_path, fakes):
    make_ctrl, make_env = fakes
    run(make_ctrl(seed=1), make_env(), tmp_path, iterations=3, verbose=0, tensorboard=False)
    env = make_env()
    result = run(
        make_ctrl(seed=2),
        env,
        tmp_path,
        iterations=2,
        overwrite=True,
        verbose=0,
        tensorboard=False,
    )
    assert len(result.history) == 2 and env.steps == 2


def test_a_finished_run_is_not_repeated(tmp_path, fakes):
    make_ctrl, make_env = fakes
    first = run(make_ctrl(seed=1), make_env(), tmp_path, iterations=3, verbose=0, tensorboard=False)
    env = make_env()
    again = run(make_ctrl(seed=1), env, tmp_path, iterations=3, verbose=0, tensorboard=False)
    assert env.steps == 0 and _summary(again) == _summary(first)


def test_controller_done_stops_the_loop(tmp_path, fakes):
    make_ctrl, make_env = fakes
    result = run(make_ctrl(num_iterations=3), make_env(), tmp_path, verbose=0, tensorboard=False)
    assert len(result.history) == 3 and result.finished


def test_the_loop_takes_controllers_only(tmp_path, fakes):
    make_ctrl, make_env = fakes

    class DuckTyped:
        done = False

        def ask(self, obs): ...
        def tell(self, d, f): ...

    with pytest.raises(TypeError, match="must be a tfembsize.controllers.Controller.*DuckTyped"):
        run(DuckTyped(), make_env(), tmp_path, verbose=0, tensorboard=False)
    with pytest.raises(ValueError, match="`iterations` must be >= 0. Received: iterations=-1"):
        run(make_ctrl(), make_env(), tmp_path, iterations=-1)


def test_over_budget_decision_raises_before_the_step(tmp_path, fakes):
    make_ctrl, make_env = fakes
    env = make_env()
    with pytest.raises(BudgetExceededError, match="more than the budget of 48"):
        run(make_ctrl(over_budget_at=1), env, tmp_path, iterations=3, verbose=0, tensorboard=False)
    assert env.steps == 1  # the bad plan never reached the environment


def test_failed_steps_are_recorded_and_told(tmp_path, fakes):
    make_ctrl, make_env = fakes
    ctrl = make_ctrl(seed=0)
    result = run(ctrl, make_env(fail_at=1), tmp_path, iterations=3, verbose=0, tensorboard=False)
    fb = result.history[1].feedback
    assert not fb.ok and fb.message == "loss became NaN"
    assert np.isnan(ctrl.told[1][1])
    assert result.best.iteration != 1
    reloaded = load_history(tmp_path)
    assert not reloaded[1].feedback.ok


def test_other_controller_in_directory_is_refused(tmp_path, fakes):
    make_ctrl, make_env = fakes
    run(make_ctrl(), make_env(), tmp_path, iterations=1, verbose=0, tensorboard=False)

    class Other(make_ctrl):
        pass

    with pytest.raises(ValueError, match="holds a run of FakeController, not Other"):
        run(Other(), make_env(), tmp_path, iterations=2, verbose=0, tensorboard=False)


def test_tensorboard_and_progbar(tmp_path, fakes, capsys):
    import tensorflow as tf

    make_ctrl, make_env = fakes
    run(make_ctrl(seed=0), make_env(), tmp_path, iterations=2, verbose=2, tensorboard=True)
    out = capsys.readouterr().out
    assert "quality" in out and "params" in out
    tags = {}
    for f in (tmp_path / "tensorboard").iterdir():
        for event in tf.compat.v1.train.summary_iterator(str(f)):
            for v in event.summary.value:
                tags.setdefault(v.tag, []).append(event.step)
    for tag in (
        "feedback/quality",
        "feedback/quality_ratio",
        "feedback/usable_params",
        "feedback/density",
        "feedback/recall@20",
        "decision/draw",
        "controller/told",
        "timing/elapsed",
    ):
        assert tags[tag] == [0, 1], tag


def test_env_feedback_must_be_a_feedback(tmp_path, fakes):
    make_ctrl, make_env = fakes

    class Bad(make_env):
        def step(self, plan, mode="scratch", **kw):
            return 0.5

    with pytest.raises(TypeError, match="env.step\\(\\) must return a Feedback"):
        run(make_ctrl(), Bad(), tmp_path, iterations=1, verbose=0, tensorboard=False)
    assert Feedback  # keep import used


class _ScriptedController(Controller):
    """Plays a fixed script of decisions (plan size, phase, length); optional best plan."""

    def __init__(self, script, best=None):
        super().__init__(0.5, seed=0)
        self.script = list(script)
        self.told = 0
        self.best = best

    def _is_done(self):
        return self.told >= len(self.script)

    def _ask(self, obs):
        size, phase, length = self.script[self.told]
        plan = obs.plan_from_sizes(np.full(obs.num_users, size), np.full(obs.num_items, size))
        mode = "scratch" if phase == "final" else "snapshot"
        return Decision(plan, mode, budget=self.budgets[0.5], phase=phase, **length)

    def _tell(self, decision, feedback):
        self.told += 1

    def _best_plan(self, sparsity):
        return self.best

    def _get_state(self):
        return {"told": self.told}

    def _set_state(self, state):
        self.told = state["told"]


class _KwargsEnv:
    """Records what the loop passes to step(); quality = size / 8 (final steps score less)."""

    def __init__(self, fakes):
        self.inner = fakes[1]()
        self.calls = []

    def observation(self):
        return self.inner.observation()

    def step(self, plan, mode="scratch", **kwargs):
        self.calls.append((mode, kwargs))
        fb = self.inner.step(plan, mode)
        q = float(plan["user_embedding"][0]) / 8
        if kwargs.get("phase") == "final":
            q /= 4  # a full training is scored on another scale than a fine-tuning
        return fb.replace(quality=q, quality_ratio=q / 0.5, info={"phase": kwargs.get("phase")})

    def snapshot(self):
        pass

    def restore(self):
        pass


def test_decision_lengths_and_phase_reach_the_environment(tmp_path, fakes):
    script = [
        (2, "search", {"train_epochs": 2.5}),
        (3, "search", {"train_steps": 7}),
        (1, "final", {}),
    ]
    env = _KwargsEnv(fakes)
    result = run(_ScriptedController(script), env, tmp_path, verbose=0, tensorboard=False)
    assert env.calls == [
        ("snapshot", {"train_epochs": 2.5}),
        ("snapshot", {"train_steps": 7}),
        ("scratch", {"phase": "final"}),
    ]
    infos = [r.info for r in result.history]
    assert infos[0]["train_epochs"] == 2.5 and infos[1]["train_steps"] == 7
    assert [r.phase for r in result.history] == ["search", "search", "final"]


def test_final_steps_outrank_search_steps_and_the_controller_plan_wins(tmp_path, fakes):
    script = [
        (4, "search", {"train_epochs": 1}),  # best search score (0.5)
        (2, "final", {}),  # final scores: 0.0625 ...
        (3, "final", {}),  # ... and 0.09375: the best final step
        (1, "search", {"train_epochs": 1}),
    ]
    plain = run(
        _ScriptedController(script),
        _KwargsEnv(fakes),
        tmp_path / "a",
        verbose=0,
        tensorboard=False,
    )
    assert plain.per_sparsity[0.5].iteration == 2  # only final steps are ranked
    assert plain.best.iteration == 2 and plain.best_plan == plain.history[2].plan
    # A controller that names its answer decides, and per_sparsity is the step of that plan.
    obs = _KwargsEnv(fakes).observation()
    answer = obs.plan_from_sizes(np.full(obs.num_users, 1), np.full(obs.num_items, 1))
    ruled = run(
        _ScriptedController(script, best=answer),
        _KwargsEnv(fakes),
        tmp_path / "b",
        verbose=0,
        tensorboard=False,
    )
    assert ruled.plans[0.5] == answer and ruled.best_plan == answer
    assert ruled.per_sparsity[0.5].iteration == 3
    summary = json.loads((tmp_path / "b" / "result.json").read_text())
    assert summary["best_step_per_sparsity"]["0.5"] == {
        "iteration": 3,
        "phase": "search",
        "quality": 0.125,
        "quality_ratio": 0.25,
        "usable_params": 12,
    }
    assert SizePlan.load(tmp_path / "b" / "plans" / "c0.5.json") == answer
    # Without final steps every step is ranked.
    only_search = run(
        _ScriptedController([script[0], script[3]]),
        _KwargsEnv(fakes),
        tmp_path / "c",
        verbose=0,
        tensorboard=False,
    )
    assert only_search.per_sparsity[0.5].iteration == 0


def test_elapsed_time_is_recorded_and_survives_a_resume(tmp_path, fakes, stateful_env_cls):
    make_ctrl, _ = fakes
    first = run(
        make_ctrl(seed=3), stateful_env_cls(), tmp_path, iterations=2, verbose=0, tensorboard=False
    )
    assert all(r.elapsed is not None and r.elapsed > 0 for r in first.history)
    resumed = run(
        make_ctrl(seed=3), stateful_env_cls(), tmp_path, iterations=3, verbose=0, tensorboard=False
    )
    assert [r.elapsed for r in resumed.history[:2]] == [r.elapsed for r in first.history]
    assert resumed.elapsed == pytest.approx(sum(r.elapsed for r in resumed.history))
    assert resumed.elapsed_by("sparsity") == {0.5: pytest.approx(resumed.elapsed)}
    assert resumed.elapsed_by("sparsity", phase="final") == {}
    assert json.loads((tmp_path / "result.json").read_text())["elapsed"] == pytest.approx(
        resumed.elapsed
    )
