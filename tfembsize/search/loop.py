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
    controller_logs/         the controller's growing buffers, appended chunk by chunk (each
                             checkpoint records how many rows it commits)
    env/                     the environment's persistent files (e.g. the pretrained model)
    tensorboard/             tf.summary scalars per step
    best_plan.json           the best plan found so far (`SearchResult.best_plan`)
    result.json, plans/      at the end: a summary and the answer per target sparsity

A step is committed only when ``run.json`` is replaced (an atomic rename) after the step's
files and the checkpoint are written, so a run killed at any moment resumes from its last
completed step: history lines past the committed count are dropped, and the controller and
environment are restored from the committed checkpoint.

Every file is checked when a run resumes: its format and checksum (a damaged or edited file
raises `tfembsize.errors.StateFileError` naming it), and ``run.json`` against the rest (the
checkpoint it names must be the one of its last completed step, the history must hold that
many steps in order, and the restored controller must have been told as many decisions as
``run.json`` recorded). Leftovers of a crash are deleted then: temporary files of
interrupted writes and checkpoint folders older than the committed one.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from tfembsize import _io
from tfembsize.budget import Budget
from tfembsize.controllers.base import Controller
from tfembsize.errors import StateFileError
from tfembsize.plan import SizePlan
from tfembsize.records import Decision, Feedback, StepRecord, step_score
from tfembsize.search.callbacks import (
    CallbackList,
    LoggingCallback,
    ProgbarCallback,
    SearchCallback,
    TensorBoardCallback,
)
from tfembsize.search.environment import Environment, StatefulEnvironment

__all__ = ["run", "SearchResult", "load_history", "step_score"]

logger = logging.getLogger(__name__)

_RUN_FORMAT = "tfembsize.SearchRun"
_STEP_FORMAT = "tfembsize.SearchStep"
_REMEDY = (
    "The run folder is damaged: restore it from a backup, or pass overwrite=True to start the "
    "search again."
)


# Result ------------------------------------------------------------------------------------
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


def _summarise(
    history: Sequence[StepRecord],
    budgets: Mapping[float, Budget],
    reference: Feedback | None,
    directory: str,
    finished: bool,
    controller: Controller,
) -> SearchResult:
    # best_plans() asserts every plan within its budget (Controller._checked_result).
    chosen = {float(s): p for s, p in controller.best_plans().items() if p is not None}
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
def _step_file(directory: str, iteration: int) -> str:
    return os.path.join(directory, "steps", f"{iteration:06d}.npz")


def _save_step(directory: str, record: StepRecord) -> dict[str, Any]:
    """Writes the step's arrays and returns its history line."""
    arrays = {f"plan:{k}": v for k, v in record.plan.items()}
    arrays.update({f"feedback:{k}": v for k, v in record.feedback.arrays().items()})
    _io.write_npz(_step_file(directory, record.iteration), arrays, format=_STEP_FORMAT)
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
    path = _step_file(directory, it)
    z = _io.read_npz(path, format=_STEP_FORMAT, what="search step", remedy=_REMEDY, untagged=True)
    try:
        plan = SizePlan({k[5:]: v for k, v in z.items() if k.startswith("plan:")})
        arrays = {k[9:]: v for k, v in z.items() if k.startswith("feedback:")}
        return StepRecord(
            iteration=it,
            plan=plan,
            mode=line["mode"],
            feedback=Feedback.from_dict(line["feedback"], arrays),
            info=line.get("info") or {},
            elapsed=line.get("elapsed"),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise StateFileError(
            f"Step {it} of the search in {directory!r} cannot be read back from {path!r} and "
            f"its line in history.jsonl ({type(e).__name__}: {e}). {_REMEDY}"
        ) from e


def load_history(directory: str | os.PathLike[str]) -> list[StepRecord]:
    """Reads the committed steps of a run directory written by `run`."""
    directory = os.fspath(directory)
    state = _read_run(directory)
    if state is None:
        return []
    return _read_history(directory, int(state["completed"]))


def _read_run(directory: str) -> dict[str, Any] | None:
    path = os.path.join(directory, "run.json")
    if not os.path.exists(path):
        return None
    state = dict(
        _io.read_json(
            path, format=_RUN_FORMAT, max_version=1, what="search run state", remedy=_REMEDY
        )
    )
    completed, ckpt = state.get("completed"), state.get("checkpoint")
    if isinstance(completed, bool) or not isinstance(completed, int) or completed < 0:
        raise StateFileError(
            f"The search run state {path!r} has completed={completed!r}, not a count of "
            f"steps. {_REMEDY}"
        )
    expected = _checkpoint_name(completed - 1) if completed else None
    if ckpt != expected:
        raise StateFileError(
            f"The search run state {path!r} records {completed} completed steps but names the "
            f"checkpoint {ckpt!r}; the checkpoint of its last step is {expected!r}. {_REMEDY}"
        )
    return state


def _checkpoint_name(iteration: int) -> str:
    return os.path.join("checkpoints", f"{iteration:06d}")


def _read_history(directory: str, completed: int) -> list[StepRecord]:
    path = os.path.join(directory, "history.jsonl")
    if completed and not os.path.exists(path):
        raise StateFileError(
            f"The search history {path!r} does not exist, but run.json records {completed} "
            f"completed steps. {_REMEDY}"
        )
    lines = _io.read_jsonl(path, completed, what="search history", remedy=_REMEDY)
    for i, line in enumerate(lines):
        if not isinstance(line, Mapping) or line.get("iteration") != i:
            found = line.get("iteration") if isinstance(line, Mapping) else line
            raise StateFileError(
                f"The search history {path!r}, line {i + 1}, is step {found!r}, not step {i} "
                f"(run.json records {completed} completed steps). {_REMEDY}"
            )
    return [_load_step(directory, line) for line in lines]


def _rewrite_history(directory: str, history: Sequence[StepRecord]) -> None:
    """Drops history lines past the committed count (left by a run killed mid-step)."""
    path = os.path.join(directory, "history.jsonl")
    with open(path, "rb") as f:
        lines = [line for line in f.read().split(b"\n") if line.strip()]
    kept = lines[: len(history)]
    _io.write_bytes(path, b"".join(line + b"\n" for line in kept))


def _restore(
    directory: str,
    state: Mapping[str, Any],
    controller: Controller,
    env: StatefulEnvironment | None,
) -> None:
    """Restores the controller and the environment from the committed checkpoint.

    Raises:
        StateFileError: the checkpoint is missing or damaged, or the controller it holds was
            told another number of decisions than ``run.json`` recorded.
    """
    run_path = os.path.join(directory, "run.json")
    ckpt = state.get("checkpoint")
    if not ckpt:
        return
    ckpt_dir = os.path.join(directory, ckpt)
    manifest = os.path.join(ckpt_dir, "controller", "controller.json")
    if not os.path.isfile(manifest):
        raise StateFileError(
            f"The search run state {run_path!r} names the checkpoint {ckpt!r}, but "
            f"{manifest!r} does not exist. {_REMEDY}"
        )
    try:
        controller.restore(os.path.join(ckpt_dir, "controller"))
        if env is not None and os.path.isdir(os.path.join(ckpt_dir, "env")):
            env.load_state(os.path.join(ckpt_dir, "env"))
    except StateFileError as e:
        raise _cannot_resume(e, directory) from e
    told = state.get("controller_iteration")
    if told is not None and controller.iteration != told:
        raise StateFileError(
            f"The search run state {run_path!r} records a controller told {told} decisions, "
            f"but the one saved in {manifest!r} was told {controller.iteration}: the two files "
            f"are from different moments of the run. {_REMEDY}"
        )


def _cannot_resume(error: StateFileError, directory: str) -> StateFileError:
    """``error`` with the way out of a search run (instead of the generic one)."""
    message = str(error).replace(_io.DEFAULT_REMEDY, "").rstrip()
    return StateFileError(
        f"{message} The search in {directory!r} cannot resume from it: restore the file from a "
        "backup, or pass overwrite=True to start the search again."
    )


def _remove_leftovers(directory: str, state: Mapping[str, Any]) -> None:
    """Deletes temporary files of interrupted writes and checkpoints older than the committed.

    Only files that can never be committed are removed: temporary files whose writer is gone
    or that are older than their committed file, and checkpoint folders of steps before the
    committed one. The committed files are never touched.
    """
    for sub in (".", "steps", "plans", "env", "checkpoints", "controller_logs"):
        _io.remove_stale_temporaries(
            os.path.join(directory, sub), recursive=sub in ("env", "checkpoints", "controller_logs")
        )
    ckpt = state.get("checkpoint")
    if not ckpt:
        return
    committed = int(os.path.basename(ckpt))
    root = os.path.join(directory, "checkpoints")
    for entry in os.listdir(root) if os.path.isdir(root) else []:
        if entry.isdigit() and int(entry) < committed:
            logger.info("Removing the superseded checkpoint %s.", os.path.join(root, entry))
            shutil.rmtree(os.path.join(root, entry), ignore_errors=True)


def _decision_info(decision: Decision) -> dict[str, Any]:
    """The scalar entries of a decision's info, with its sparsity, phase and length."""
    info = {
        str(k): v
        for k, v in decision.info.items()
        if v is None or isinstance(v, (bool, int, float, str))
    }
    if decision.sparsity is not None:
        info.setdefault("sparsity", decision.sparsity)
    info.setdefault("phase", decision.phase)
    for name in ("train_steps", "train_epochs"):
        value = getattr(decision, name)
        if value is not None:
            info.setdefault(name, value)
    return info


# The loop ----------------------------------------------------------------------------------
def run(
    controller: Controller,
    env: Environment,
    directory: str | os.PathLike[str],
    *,
    iterations: int | None = None,
    overwrite: bool = False,
    verbose: int = 1,
    tensorboard: bool = True,
    callbacks: Sequence[SearchCallback] | None = None,
) -> SearchResult:
    """Runs a search: ask -> step -> tell until the controller is done, resumable.

    Args:
        controller: a `tfembsize.controllers.Controller` (it validates its own decisions
            and asserts their budgets; its ``metrics()`` are logged after every step and its
            ``best_plans()`` are the answers, asserted within their budgets).
        env: the environment (`tfembsize.search.Environment`).
        directory: run directory; created if missing. An existing run there is resumed.
        iterations: total number of steps to reach (counting steps of a resumed run). None
            runs until the controller is done; with neither, the loop raises ValueError.
        overwrite: delete an existing run in ``directory`` and start again.
        verbose: 0 silent, 1 progress bar, 2 one line per step. An environment with a
            ``set_default_verbose`` method (`FitEnvironment`) gets it too, for the progress
            of its own training (pretraining included) unless it was given one itself.
        tensorboard: write ``tf.summary`` scalars to ``directory/tensorboard``.
        callbacks: extra `SearchCallback` objects.

    Returns:
        A `SearchResult`.

    Raises:
        TypeError: ``controller`` is not a `Controller`, or ``env.step`` returned no
            `Feedback`.
        ValueError: bad arguments, or a run of another controller in ``directory``.
        tfembsize.errors.StateFileError: a damaged run directory.
        tfembsize.BudgetExceededError: a result breaks its budget (never expected).

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
    if not isinstance(controller, Controller):
        raise TypeError(
            "`controller` must be a tfembsize.controllers.Controller (subclass it and implement "
            f"_ask, _tell and _is_done). Received: {type(controller).__name__}"
        )
    target = int(iterations) if iterations is not None else controller.num_iterations
    directory = os.fspath(directory)
    if overwrite and os.path.exists(directory):
        shutil.rmtree(directory)
    os.makedirs(os.path.join(directory, "steps"), exist_ok=True)
    os.makedirs(os.path.join(directory, "checkpoints"), exist_ok=True)
    history_path = os.path.join(directory, "history.jsonl")

    state = _read_run(directory)
    history: list[StepRecord] = []
    stateful = env if isinstance(env, StatefulEnvironment) else None
    if stateful is not None:
        try:
            stateful.attach(os.path.join(directory, "env"))
        except StateFileError as e:
            raise _cannot_resume(e, directory) from e
    if state is not None:
        name = type(controller).__name__
        if state.get("controller") not in (None, name):
            raise ValueError(
                f"{directory} holds a run of {state['controller']}, not {name}; use another "
                "directory or overwrite=True."
            )
        history = _read_history(directory, int(state["completed"]))
        _restore(directory, state, controller, stateful)
        _rewrite_history(directory, history)
        _remove_leftovers(directory, state)
        logger.info("Resuming the search in %s after %d steps.", directory, len(history))
    else:
        open(history_path, "w").close()

    share_verbose = getattr(env, "set_default_verbose", None)
    if callable(share_verbose):  # e.g. FitEnvironment: its fits show progress as asked here
        share_verbose(verbose)
    base = env.observation()  # may pretrain the reference model (persisted by the env)
    budgets = {c: Budget(sparsity=c, d_max=base.d_max) for c in controller.sparsities}
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
        if iterations is None and controller.done:
            finished = True
            break
        t0 = mark if mark is not None else time.perf_counter()
        last = history[-1] if history else None
        obs = base.replace(
            iteration=it,
            plan=None if last is None else last.plan,
            feedback=None if last is None else last.feedback,
        )
        decision = controller.ask(obs)  # validated by the controller, budget asserted
        kwargs: dict[str, Any] = {}
        if decision.train_steps is not None:
            kwargs["train_steps"] = decision.train_steps
        if decision.train_epochs is not None:
            kwargs["train_epochs"] = decision.train_epochs
        if decision.phase != "search":
            kwargs["phase"] = decision.phase
        feedback = env.step(decision.plan, decision.mode, **kwargs)
        if not isinstance(feedback, Feedback):
            raise TypeError(f"env.step() must return a Feedback. Received {feedback!r}.")
        if not feedback.ok:
            logger.warning("Step %d failed: %s", it, feedback.message)
        controller.tell(decision, feedback)
        record = StepRecord(
            iteration=it,
            plan=decision.plan,
            mode=decision.mode,
            feedback=feedback,
            info=_decision_info(decision),
        )
        record, mark = _commit(directory, record, controller, stateful, history_path, t0)
        history.append(record)
        result_so_far = _summarise(history, budgets, base.reference, directory, False, controller)
        if result_so_far.best_plan is not None:
            result_so_far.best_plan.save(os.path.join(directory, "best_plan.json"))
        cb.on_step_end(record, extra=controller.metrics())

    state = _read_run(directory) or _new_run_state(controller)
    state["finished"] = finished
    _io.write_json(os.path.join(directory, "run.json"), state)
    result = _summarise(history, budgets, base.reference, directory, finished, controller)
    _write_result(directory, result)
    if result.best_plan is not None:  # also rewrites one damaged since the last step
        result.best_plan.save(os.path.join(directory, "best_plan.json"))
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
    _io.write_json(
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


def _new_run_state(controller: Any) -> dict[str, Any]:
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
    _io.append_jsonl(history_path, line)
    ckpt_rel = _checkpoint_name(record.iteration)
    ckpt_dir = os.path.join(directory, ckpt_rel)
    if os.path.exists(ckpt_dir):
        shutil.rmtree(ckpt_dir)
    os.makedirs(os.path.join(ckpt_dir, "controller"))
    controller.save(
        os.path.join(ckpt_dir, "controller"),
        logs_directory=os.path.join(directory, "controller_logs"),
    )
    if env is not None:
        os.makedirs(os.path.join(ckpt_dir, "env"))
        env.save_state(os.path.join(ckpt_dir, "env"))
    state = _read_run(directory) or _new_run_state(controller)
    previous = state.get("checkpoint")
    state.update(
        completed=record.iteration + 1,
        checkpoint=ckpt_rel,
        finished=False,
        controller_iteration=controller.iteration,
    )
    _io.write_json(os.path.join(directory, "run.json"), state)
    if previous and previous != ckpt_rel:
        shutil.rmtree(os.path.join(directory, previous), ignore_errors=True)
    return record, now
