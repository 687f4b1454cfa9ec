"""`Decision` (what a controller asks for), `StepRecord` (one completed step), the fitness rule."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from tfembsize.budget import Budget
from tfembsize.plan import SizePlan
from tfembsize.records._common import _DECISION_FORMAT, MODES, PHASES, json_clean
from tfembsize.records.feedback import Feedback

__all__ = ["Decision", "StepRecord", "fitness_of", "step_score"]


# Decision -----------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class Decision:
    """What a controller asks the environment to do next.

    Args:
        plan: the sizes to apply (a `SizePlan` naming every searchable table).
        mode: where training starts: ``"scratch"`` (fresh initialisation), ``"snapshot"``
            (the stored snapshot, e.g. BET's pretrained full model) or ``"continue"``.
        budget: the budget the plan satisfies (checked by `Controller.ask` and again by the
            loop). None only for unbudgeted methods.
        train_steps: optimiser steps to train for; None leaves it to the environment (train
            to convergence with validation early stopping, or its configured recipe).
        train_epochs: the same as a number of passes over the training interactions (the
            environment converts with its batch size); at most one of the two is set.
        phase: ``"search"`` for a search step, ``"final"`` for a full training of a result
            candidate (selective retraining, a baseline's single plan).
        info: controller-specific JSON details (iteration, strategy, predicted fitness...).
            The loop keeps the scalar entries in the run history.
        id: sequence number set by `Controller.ask` (-1 before).

    Example:
        >>> plan = SizePlan({"user_embedding": [4, 4], "item_embedding": [4, 4, 4]})
        >>> d = Decision(plan, "snapshot", budget=Budget(sparsity=0.5, d_max=8), train_epochs=10)
        >>> d.sparsity
        0.5
    """

    plan: SizePlan
    mode: str = "scratch"
    budget: Budget | None = None
    train_steps: int | None = None
    train_epochs: float | None = None
    phase: str = "search"
    info: Mapping[str, Any] = field(default_factory=dict)
    id: int = -1

    def __post_init__(self) -> None:
        if not isinstance(self.plan, SizePlan):
            raise TypeError(f"`plan` must be a SizePlan. Received {type(self.plan).__name__}.")
        if self.mode not in MODES:
            raise ValueError(f"`mode` must be one of {MODES}. Received: mode={self.mode!r}")
        if self.phase not in PHASES:
            raise ValueError(f"`phase` must be one of {PHASES}. Received: phase={self.phase!r}")
        if self.budget is not None and not isinstance(self.budget, Budget):
            raise TypeError(
                f"`budget` must be a Budget or None. Received {type(self.budget).__name__}."
            )
        steps = self.train_steps
        if steps is not None:
            if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
                raise ValueError(
                    f"`train_steps` must be a positive integer or None. Received: "
                    f"train_steps={steps!r}"
                )
            object.__setattr__(self, "train_steps", int(steps))
        epochs = self.train_epochs
        if epochs is not None:
            if (
                isinstance(epochs, bool)
                or not isinstance(epochs, (int, float, np.integer, np.floating))
                or not math.isfinite(float(epochs))
                or float(epochs) <= 0
            ):
                raise ValueError(
                    f"`train_epochs` must be a positive number or None. Received: "
                    f"train_epochs={epochs!r}"
                )
            object.__setattr__(self, "train_epochs", float(epochs))
        if self.train_steps is not None and self.train_epochs is not None:
            raise ValueError(
                "Set at most one of `train_steps` and `train_epochs`. Received: "
                f"train_steps={self.train_steps}, train_epochs={self.train_epochs}"
            )
        object.__setattr__(self, "info", json_clean("info", dict(self.info)))
        object.__setattr__(self, "id", int(self.id))

    @property
    def sparsity(self) -> float | None:
        """The budget's target sparsity (None without a sparsity budget)."""
        return None if self.budget is None else self.budget.sparsity

    def replace(self, **changes: Any) -> Decision:
        """A copy with some fields changed."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values.update(changes)
        return Decision(**values)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Decision):
            return NotImplemented
        return all(getattr(self, f.name) == getattr(other, f.name) for f in fields(self))

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        length = (
            f", train_steps={self.train_steps}"
            if self.train_steps is not None
            else (f", train_epochs={self.train_epochs:g}" if self.train_epochs else "")
        )
        return (
            f"Decision(id={self.id}, mode={self.mode!r}, phase={self.phase!r}, "
            f"sparsity={self.sparsity}, params={self.plan.total_params()}{length})"
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (the plan's sizes as lists)."""
        return {
            "format": _DECISION_FORMAT,
            "version": 1,
            "plan": self.plan.to_dict(),
            "mode": self.mode,
            "budget": None if self.budget is None else self.budget.to_dict(),
            "train_steps": self.train_steps,
            "train_epochs": self.train_epochs,
            "phase": self.phase,
            "info": dict(self.info),
            "id": self.id,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Decision:
        """Inverse of `to_dict`."""
        if d.get("format") != _DECISION_FORMAT:
            raise ValueError(f"Not a serialised Decision (format={d.get('format')!r}).")
        return cls(
            plan=SizePlan.from_dict(d["plan"]),
            mode=d["mode"],
            budget=None if d.get("budget") is None else Budget.from_dict(d["budget"]),
            train_steps=d.get("train_steps"),
            train_epochs=d.get("train_epochs"),
            phase=d.get("phase", "search"),
            info=d.get("info") or {},
            id=d.get("id", -1),
        )


# History ------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class StepRecord:
    """One completed step of a search: what was decided and what came back.

    Args:
        iteration: 0-based index of the step.
        plan: the sizes that were applied.
        mode: the environment mode of the step.
        feedback: the environment's feedback.
        info: JSON details the controller attached to its decision (e.g. predicted fitness,
            target sparsity, ``phase``).
        elapsed: wall-clock seconds of the whole step as the search loop measured it (the
            controller's ask and tell, the environment step and the commit); None when
            unknown. A measurement, not part of the step's identity: equality ignores it.
    """

    iteration: int
    plan: SizePlan
    mode: str
    feedback: Feedback
    info: Mapping[str, Any] = field(default_factory=dict)
    elapsed: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "info", json_clean("info", dict(self.info)))
        if self.elapsed is not None:
            object.__setattr__(self, "elapsed", float(self.elapsed))

    @property
    def phase(self) -> str:
        """``"final"`` for a full training of a result candidate, else ``"search"``.

        Read from the decision's info (the loop records a decision's ``phase`` there), else
        from the feedback's info (`KerasEnvironment` records the phase it trained in).
        """
        phase = self.info.get("phase") or self.feedback.info.get("phase")
        return "final" if phase == "final" else "search"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, StepRecord):
            return NotImplemented
        return (
            self.iteration == other.iteration
            and self.plan == other.plan
            and self.mode == other.mode
            and self.feedback == other.feedback
            and self.info == other.info
        )

    __hash__ = None  # type: ignore[assignment]


# The fitness rule ---------------------------------------------------------------------------
def fitness_of(feedback: Feedback) -> float | None:
    """The number controllers maximise: the quality ratio to the full model, else the quality.

    Returns None for a failed step.
    """
    if not feedback.ok:
        return None
    if feedback.quality_ratio is not None:
        return float(feedback.quality_ratio)
    return float(feedback.quality)


def step_score(record: StepRecord) -> float:
    """The number a step is ranked by: `fitness_of` its feedback, ``-inf`` if it failed."""
    value = fitness_of(record.feedback)
    return -math.inf if value is None else value
