"""The search loop: ask -> step -> tell, persisted after every step, resumed automatically.

`run` drives any controller with the ask/tell interface against any environment that
implements `tfembsize.search.Environment`:

1. ``observation = env.observation()`` (the table layout, frequencies, the full-size reference)
   with the iteration, current plan and last feedback filled in from the run's history;
2. ``decision = controller.ask(observation)`` (a plan and an environment mode);
3. ``feedback = env.step(decision.plan, decision.mode, **length)``, where the decision's
   ``train_steps`` / ``train_epochs`` (when set) and a non-default ``phase`` (``"final"``)
   are passed as keywords;
4. ``controller.tell(decision, feedback)``;
5. the run state is written atomically into ``directory``.

Directory layout (everything JSON or ``.npz``; no pickle)::

    run.json                 commit record: completed steps, current checkpoint, finished flag
    history.jsonl            one JSON line per completed step (scalars of the feedback and
                             the step's wall-clock ``elapsed`` seconds)
    steps/000012.npz         plan and per-entity arrays of step 12
    checkpoints/000012/      controller.save(...) and env.save_state(...) after step 12
    env/                     the environment's persistent files (e.g. the pretrained model)
    tensorboard/             tf.summary scalars per step
    best_plan.json           the best plan found so far (`SearchResult.best_plan`)
    result.json, plans/      at the end: a summary and the answer per target sparsity

A step is committed only when ``run.json`` is replaced (an atomic rename) after the step's
files and the checkpoint are written, so a run killed at any moment resumes from its last
completed step: history lines past the committed count are dropped, and the controller and
environment are restored from the committed checkpoint.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from tfembsize.budget import Budget
from tfembsize.plan import SizePlan
from tfembsize.search.callbacks import (
    CallbackList,
    LoggingCallback,
    ProgbarCallback,
    SearchCallback,
    TensorBoardCallback,
)
from tfembsize.search.environment import Environment, StatefulEnvironment
from tfembsize.search.records import MODES, Feedback, StepRecord

__all__ = ["run", "SearchResult", "load_history", "step_score"]

logger = logging.getLogger(__name__)

_RUN_FORMAT = "tfembsize.SearchRun"


# Result ------------------------------------------------------------------------------------
def step_score(record: StepRecord) -> float:
    """The number a step is ranked by: the quality ratio, else the quality (-inf if failed)."""
    fb = record.feedback
    if not fb.ok:
        return -math.inf
    return fb.quality_ratio if fb.quality_ratio is not None else fb.quality


@dataclass(frozen=True, eq=False)
class SearchResult:
    """What `run` returns.

    How the answer is chosen, per target sparsity c:

    1. The controller decides when it can: if it has ``best_plans()`` (every
       `tfembsize.controllers.Controller` has), its plan for c is the answer (``plans[c]``),
       and ``per_sparsity[c]`` is the best step that evaluated exactly that plan (a
       ``phase="final"`` step if there is one).
    2. Otherwise, and when the controller's plan was never evaluated by a step, steps are
       ranked by `step_score` among those whose plan satisfies B(c), counting only
       ``phase="final"`` steps (full trainings of result candidates) when any exist: a search
       step's score (e.g. BET's fitness after a few fine-tuning epochs) is not comparable with
       a full training's.

    Args:
        history: every completed step in order.
        per_sparsity: for each target sparsity of the controller, the step of its answer
            (see above; None if no step qualifies).
        plans: the answer per sparsity: ``controller.best_plans()`` where it gives a plan,
            else the plan of ``per_sparsity``.
        reference: the full-size reference feedback of the environment, if any.
        directory: the run directory.
        finished: True when the controller said it was done (or ``iterations`` was reached).
        best: the answer's step for the loosest of the controller's budgets (without budgets:
            the best step, final steps first).

    Attributes:
        best_plan: the answer for the loosest budget (``plans``), else ``best.plan``.
        elapsed: wall-clock seconds of the committed steps, summed over resumes.
    """

    history: tuple[StepRecord, ...]
    per_sparsity: Mapping[float, StepRecord | None] = field(default_factory=dict)
    plans: Mapping[float, SizePlan | None] = field(default_factory=dict)
    reference: Feedback | None = None
    directory: str = ""
    finished: bool = False
    best: StepRecord | None = None

    @property
    def best_plan(self) -> SizePlan | None:
        """The answer for the loosest budget (the controller's if it has one), else None."""
        if self.plans:
            plan = self.plans[min(self.plans)]
            if plan is not None:
                return plan
        return None if self.best is None else self.best.plan

    @property
    def elapsed(self) -> float:
        """Wall-clock seconds of the committed steps (steps without a measurement count 0)."""
        return float(sum(r.elapsed or 0.0 for r in self.history))

    def elapsed_by(self, key: str = "sparsity", phase: str | None = None) -> dict[Any, float]:
        """`elapsed` grouped by a decision-info entry (e.g. per target sparsity).

        Args:
            key: the ``StepRecord.info`` entry to group by (steps without it are left out).
            phase: count only steps of this phase (``"search"`` or ``"final"``); None: all.

        Returns:
            ``{value: seconds}``.
        """
        out: dict[Any, float] = {}
        for r in self.history:
            if key not in r.info or (phase is not None and r.phase != phase):
                continue
            out[r.info[key]] = out.get(r.info[key], 0.0) + (r.elapsed or 0.0)
        return out

    @property
    def best_feedback(self) -> Feedback | None:
        """The feedback of the best step."""
        return None if self.best is None else self.best.feedback

    def __repr__(self) -> str:
        return (
            f"SearchResult(steps={len(self.history)}, finished={self.finished}, "
            f"best={self.best_feedback!r}, sparsities={sorted(self.per_sparsity)})"
        )


def _best(records: Sequence[StepRecord], plan: SizePlan | None = None) -> StepRecord | None:
    """The best successful step: of ``plan`` if given and evaluated, final steps first."""
    ok = [r for r in records if r.feedback.ok]
    if plan is not None:
        same = [r for r in ok if r.plan == plan]
        if same:
            ok = same
    final = [r for r in ok if r.phase == "final"]
    if final:
        ok = final
    if not ok:
        return None
    return max(ok, key=lambda r: (step_score(r), -r.iteration))


def _controller_budgets(controller: Any, d_max: int) -> dict[float, Budget]:
    """The controller's target budgets by sparsity, read from its public attributes."""
    budgets: dict[float, Budget] = {}
    for attr in ("budgets", "budget"):
        value = getattr(controller, attr, None)
        if value is None:
            continue
        items = value.values() if isinstance(value, Mapping) else value
        items = [items] if isinstance(items, Budget) else list(items)
        for b in items:
            if isinstance(b, Budget) and b.sparsity is not None:
                budgets[b.sparsity] = b
        if budgets:
            return budgets
    for attr in ("sparsities", "sparsity"):
        value = getattr(controller, attr, None)
        if value is None:
            continue
        values = [value] if isinstance(value, (int, float)) else list(value)
        for s in values:
            budgets[float(s)] = Budget(sparsity=float(s), d_max=d_max)
        if budgets:
            return budgets
    return budgets


def _summarise(
    history: Sequence[StepRecord],
    budgets: Mapping[float, Budget],
    reference: Feedback | None,
    directory: str,
    finished: bool,
    controller: Any = None,
) -> SearchResult:
    chosen: dict[float, SizePlan] = {}
    best_plans = getattr(controller, "best_plans", None)
    if callable(best_plans):
        for s, plan in best_plans().items():
            if plan is not None:
                plan.check(budgets.get(float(s)) or Budget(sparsity=float(s)))
                chosen[float(s)] = plan
    per: dict[float, StepRecord | None] = {}
    for s in sorted(budgets):
        b = budgets[s]
        per[s] = _best([r for r in history if r.plan.fits(b)], chosen.get(s))
    plans: dict[float, SizePlan | None] = {
        s: chosen.get(s, None if r is None else r.plan) for s, r in per.items()
    }
    for s, plan in chosen.items():
        plans.setdefault(s, plan)
    best = per[min(budgets)] if budgets else _best(history)
    return SearchResult(
        history=tuple(history),
        per_sparsity=per,
        plans=plans,
        reference=reference,
        directory=directory,
        finished=finished,
        best=best,
    )


# Persistence -------------------------------------------------------------------------------
def _write_json_atomic(path: str, payload: Any) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(payload, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _step_file(directory: str, iteration: int) -> str:
    return os.path.join(directory, "steps", f"{iteration:06d}.npz")


def _save_step(directory: str, record: StepRecord) -> dict:
    """Writes the step's arrays and returns its history line."""
    import io

    arrays = {f"plan:{k}": v for k, v in record.plan.items()}
    arrays.update({f"feedback:{k}": v for k, v in record.feedback.arrays().items()})
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    path = _step_file(directory, record.iteration)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(buf.getvalue())
    os.replace(tmp, path)
    return {
        "iteration": record.iteration,
        "mode": record.mode,
        "info": dict(record.info),
        "plan_params": record.plan.total_params(),
        "feedback": record.feedback.scalars(),
        "elapsed": record.elapsed,
    }


def _load_step(directory: str, line: Mapping[str, Any]) -> StepRecord:
    it = int(line["iteration"])
    with np.load(_step_file(directory, it), allow_pickle=False) as z:
        plan = SizePlan({k[5:]: z[k] for k in z.files if k.startswith("plan:")})
        arrays = {k[9:]: z[k] for k in z.files if k.startswith("feedback:")}
    return StepRecord(
        iteration=it,
        plan=plan,
        mode=line["mode"],
        feedback=Feedback.from_dict(line["feedback"], arrays),
        info=line.get("info") or {},
        elapsed=line.get("elapsed"),
    )


def load_history(directory: str | os.PathLike) -> list[StepRecord]:
    """Reads the committed steps of a run directory written by `run`."""
    directory = os.fspath(directory)
    state = _read_run(directory)
    if state is None:
        return []
    return _read_history(directory, int(state["completed"]))


def _read_run(directory: str) -> dict | None:
    path = os.path.join(directory, "run.json")
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        state = json.load(f)
    if state.get("format") != _RUN_FORMAT:
        raise ValueError(f"{path} is not a tfembsize search run (format={state.get('format')!r}).")
    return state


def _read_history(directory: str, completed: int) -> list[StepRecord]:
    path = os.path.join(directory, "history.jsonl")
    lines: list[dict] = []
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            for raw in f:
                raw = raw.strip()
                if raw:
                    try:
                        lines.append(json.loads(raw))
                    except json.JSONDecodeError:
                        break  # a line cut by a crash; it lies past the committed count
    if len(lines) < completed:
        raise ValueError(
            f"{path} holds {len(lines)} steps but run.json says {completed} were completed; "
            "the run directory is damaged (pass overwrite=True to start again)."
        )
    return [_load_step(directory, line) for line in lines[:completed]]


def _rewrite_history(directory: str, history: Sequence[StepRecord]) -> None:
    """Drops history lines past the committed count (left by a run killed mid-step)."""
    path = os.path.join(directory, "history.jsonl")
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(path, encoding="utf-8") as f:
        kept = [line for line, _ in zip(f, range(len(history)), strict=False)]
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(kept)
    os.replace(tmp, path)


def _append_line(path: str, payload: Mapping[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(payload) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _controller_extra(controller: Any) -> dict[str, float]:
    """Numeric diagnostics a controller exposes after `tell` (``last_info``/``metrics()``)."""
    extra = getattr(controller, "last_info", None)
    if callable(extra):
        extra = extra()
    if extra is None:
        metrics = getattr(controller, "metrics", None)
        extra = metrics() if callable(metrics) else metrics
    if not isinstance(extra, Mapping):
        return {}
    out = {}
    for k, v in extra.items():
        if isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool):
            out[str(k)] = float(v)
    return out


def _controller_done(controller: Any) -> bool:
    for attr in ("done", "is_done", "finished"):
        value = getattr(controller, attr, None)
        if value is None:
            continue
        return bool(value() if callable(value) else value)
    return False


def _controller_target(controller: Any) -> int | None:
    for attr in ("num_iterations", "max_iterations", "iterations"):
        value = getattr(controller, attr, None)
        if callable(value):
            value = value()
        if isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value > 0:
            return int(value)
    return None


def _validate_decision(decision: Any, iteration: int) -> tuple[SizePlan, str, dict]:
    plan = getattr(decision, "plan", None)
    if not isinstance(plan, SizePlan):
        raise TypeError(
            f"controller.ask() must return a decision with a `plan` SizePlan. Received at "
            f"iteration {iteration}: {decision!r}"
        )
    mode = getattr(decision, "mode", "scratch")
    if mode not in MODES:
        raise ValueError(
            f"The decision's `mode` must be one of {MODES}. Received: mode={mode!r} at "
            f"iteration {iteration}."
        )
    budget = getattr(decision, "budget", None)
    if isinstance(budget, Budget):
        plan.check(budget)  # the guarantee, asserted before any step runs
    info = getattr(decision, "info", None) or {}
    if not isinstance(info, Mapping):
        info = {}
    clean = {}
    for k, v in info.items():
        if isinstance(v, np.generic):
            v = v.item()
        if v is None or isinstance(v, (bool, int, float, str)):
            clean[str(k)] = v
    if isinstance(budget, Budget) and budget.sparsity is not None:
        clean.setdefault("sparsity", budget.sparsity)
    for name in ("phase", "train_steps", "train_epochs"):
        value = getattr(decision, name, None)
        if value is not None:
            clean.setdefault(name, value)
    return plan, mode, clean


# The loop ----------------------------------------------------------------------------------
def run(
    controller: Any,
    env: Environment,
    directory: str | os.PathLike,
    *,
    iterations: int | None = None,
    overwrite: bool = False,
    verbose: int = 1,
    tensorboard: bool = True,
    callbacks: Sequence[SearchCallback] | None = None,
) -> SearchResult:
    """Runs a search: ask -> step -> tell until the controller is done, resumable.

    Args:
        controller: an object with ``ask(observation) -> decision`` (the decision has a
            `SizePlan` ``plan``, a ``mode`` in ``("scratch", "snapshot", "continue")`` and
            optionally a ``budget`` that the plan is checked against and an ``info`` dict),
            ``tell(decision, feedback)``, ``save(directory)`` and ``restore(directory)``;
            it may expose ``done`` (bool or callable), ``num_iterations`` (for the progress
            bar), ``budgets``/``sparsities`` (for `SearchResult.per_sparsity`) and
            ``last_info`` (numeric diagnostics logged to TensorBoard after each step).
        env: the environment (`tfembsize.search.Environment`).
        directory: run directory; created if missing. An existing run there is resumed.
        iterations: total number of steps to reach (counting steps of a resumed run). None
            runs until the controller is done; with neither, the loop raises ValueError.
        overwrite: delete an existing run in ``directory`` and start again.
        verbose: 0 silent, 1 progress bar, 2 one line per step.
        tensorboard: write ``tf.summary`` scalars to ``directory/tensorboard``.
        callbacks: extra `SearchCallback` objects.

    Returns:
        A `SearchResult`.

    Raises:
        ValueError: bad arguments, a damaged run directory, or a decision that breaks the
            bounds; `tfembsize.BudgetExceededError` if a decision breaks its own budget.

    Example:
        >>> result = run(controller, env, "runs/bet-gowalla", iterations=50)  # doctest: +SKIP
        >>> result.best_plan.apply(model)  # doctest: +SKIP
    """
    if iterations is not None and (
        isinstance(iterations, bool) or not isinstance(iterations, (int, np.integer))
    ):
        raise TypeError(f"`iterations` must be an integer or None. Received: {iterations!r}")
    if iterations is not None and iterations < 0:
        raise ValueError(f"`iterations` must be >= 0. Received: iterations={iterations}")
    target = int(iterations) if iterations is not None else _controller_target(controller)
    if iterations is None and not any(
        getattr(controller, a, None) is not None for a in ("done", "is_done", "finished")
    ):
        raise ValueError(
            "`iterations` is None and the controller has no `done` attribute: the loop would "
            "never stop. Pass iterations=N."
        )
    directory = os.fspath(directory)
    if overwrite and os.path.exists(directory):
        shutil.rmtree(directory)
    os.makedirs(os.path.join(directory, "steps"), exist_ok=True)
    os.makedirs(os.path.join(directory, "checkpoints"), exist_ok=True)
    history_path = os.path.join(directory, "history.jsonl")

    state = _read_run(directory)
    history: list[StepRecord] = []
    stateful = isinstance(env, StatefulEnvironment)
    if stateful:
        env.attach(os.path.join(directory, "env"))
    if state is not None:
        name = type(controller).__name__
        if state.get("controller") not in (None, name):
            raise ValueError(
                f"{directory} holds a run of {state['controller']}, not {name}; use another "
                "directory or overwrite=True."
            )
        history = _read_history(directory, int(state["completed"]))
        _rewrite_history(directory, history)
        ckpt = state.get("checkpoint")
        if ckpt:
            ckpt_dir = os.path.join(directory, ckpt)
            controller.restore(os.path.join(ckpt_dir, "controller"))
            if stateful and os.path.isdir(os.path.join(ckpt_dir, "env")):
                env.load_state(os.path.join(ckpt_dir, "env"))
        logger.info("Resuming the search in %s after %d steps.", directory, len(history))
    else:
        open(history_path, "w").close()

    base = env.observation()  # may pretrain the reference model (persisted by the env)
    budgets = _controller_budgets(controller, base.d_max)
    cbs: list[SearchCallback] = [LoggingCallback()]
    if verbose:
        cbs.append(ProgbarCallback(verbose))
    if tensorboard:
        cbs.append(TensorBoardCallback(os.path.join(directory, "tensorboard")))
    cbs.extend(callbacks or [])
    cb = CallbackList(cbs)
    cb.on_search_begin(completed=len(history), target=target, observation=base)

    finished = False
    mark: float | None = None  # when the last step's time was taken (its commit follows)
    while True:
        it = len(history)
        if iterations is not None and it >= iterations:
            finished = True
            break
        if iterations is None and _controller_done(controller):
            finished = True
            break
        t0 = mark if mark is not None else time.perf_counter()
        last = history[-1] if history else None
        obs = base.replace(
            iteration=it,
            plan=None if last is None else last.plan,
            feedback=None if last is None else last.feedback,
        )
        decision = controller.ask(obs)
        plan, mode, info = _validate_decision(decision, it)
        kwargs: dict[str, Any] = {}
        for name in ("train_steps", "train_epochs"):
            value = getattr(decision, name, None)
            if value is not None:
                kwargs[name] = value
        phase = getattr(decision, "phase", None)
        if phase is not None and phase != "search":
            kwargs["phase"] = phase
        feedback = env.step(plan, mode, **kwargs)
        if not isinstance(feedback, Feedback):
            raise TypeError(f"env.step() must return a Feedback. Received {feedback!r}.")
        if not feedback.ok:
            logger.warning("Step %d failed: %s", it, feedback.message)
        controller.tell(decision, feedback)
        record = StepRecord(iteration=it, plan=plan, mode=mode, feedback=feedback, info=info)
        record, mark = _commit(
            directory, record, controller, env if stateful else None, history_path, t0
        )
        history.append(record)
        result_so_far = _summarise(history, budgets, base.reference, directory, False, controller)
        if result_so_far.best_plan is not None:
            result_so_far.best_plan.save(os.path.join(directory, "best_plan.json"))
        cb.on_step_end(record, extra=_controller_extra(controller))

    state = _read_run(directory) or _new_run_state(controller)
    state["finished"] = finished
    _write_json_atomic(os.path.join(directory, "run.json"), state)
    result = _summarise(history, budgets, base.reference, directory, finished, controller)
    _write_result(directory, result)
    cb.on_search_end(result)
    return result


def _write_result(directory: str, result: SearchResult) -> None:
    """``result.json`` (a summary) and ``plans/c<sparsity>.json`` (the answer per sparsity)."""
    os.makedirs(os.path.join(directory, "plans"), exist_ok=True)
    per = {}
    for s, record in result.per_sparsity.items():
        per[f"{s:g}"] = (
            None
            if record is None
            else {
                "iteration": record.iteration,
                "phase": record.phase,
                "quality": record.feedback.quality,
                "quality_ratio": record.feedback.quality_ratio,
                "usable_params": record.feedback.usable_params,
            }
        )
    for s, plan in result.plans.items():
        if plan is not None:
            plan.save(os.path.join(directory, "plans", f"c{s:g}.json"))
    _write_json_atomic(
        os.path.join(directory, "result.json"),
        {
            "steps": len(result.history),
            "finished": result.finished,
            "best_iteration": None if result.best is None else result.best.iteration,
            "best_step_per_sparsity": per,
            "plans": {f"{s:g}": f"plans/c{s:g}.json" for s, p in result.plans.items() if p},
            "reference_quality": None if result.reference is None else result.reference.quality,
            "elapsed": result.elapsed,
        },
    )


def _new_run_state(controller: Any) -> dict:
    return {
        "format": _RUN_FORMAT,
        "version": 1,
        "controller": type(controller).__name__,
        "completed": 0,
        "checkpoint": None,
        "finished": False,
    }


def _commit(
    directory: str,
    record: StepRecord,
    controller: Any,
    env: StatefulEnvironment | None,
    history_path: str,
    started: float,
) -> tuple[StepRecord, float]:
    """Writes the step, then the checkpoint, then run.json (the commit).

    Returns the record with its ``elapsed`` seconds (from ``started`` to just before its
    history line is written) and that moment: the next step's time starts there, so this
    step's checkpoint and callbacks count in the next step (the last step's in none).
    """
    now = time.perf_counter()
    record = replace(record, elapsed=now - started)
    line = _save_step(directory, record)
    _append_line(history_path, line)
    name = f"{record.iteration:06d}"
    ckpt_rel = os.path.join("checkpoints", name)
    ckpt_dir = os.path.join(directory, ckpt_rel)
    if os.path.exists(ckpt_dir):
        shutil.rmtree(ckpt_dir)
    os.makedirs(os.path.join(ckpt_dir, "controller"))
    controller.save(os.path.join(ckpt_dir, "controller"))
    if env is not None:
        os.makedirs(os.path.join(ckpt_dir, "env"))
        env.save_state(os.path.join(ckpt_dir, "env"))
    state = _read_run(directory) or _new_run_state(controller)
    previous = state.get("checkpoint")
    state.update(completed=record.iteration + 1, checkpoint=ckpt_rel, finished=False)
    _write_json_atomic(os.path.join(directory, "run.json"), state)
    if previous and previous != ckpt_rel:
        shutil.rmtree(os.path.join(directory, previous), ignore_errors=True)
    return record, now
