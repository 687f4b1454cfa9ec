"""The shared vocabulary of controllers, environments and the search loop.

This module sits below both `tfembsize.controllers` and `tfembsize.search` (it imports
neither), so every part of the package speaks the same typed records:

* `Decision`: what a controller asks the environment to do (a plan, a mode, a budget).
* `StepRecord`: one completed step of a search (decision, plan, feedback).
* `Problem`: the fixed facts a controller keeps from the first observation.
* `MODES`, `PHASES`, `STATUSES`, `SIDES` and the one fitness rule, `fitness_of` (with
  `step_score`, the same number with failed steps ranked last).

Two records carry everything a controller ever sees of the recommender:

* `Observation`: the fixed facts of the problem (which tables belong to users and items, the
  training frequencies, the full width ``d_max``), the plan currently applied, the feedback
  of the last step, and the feedback of the full-size reference model.
* `Feedback`: what one environment step returned: per-entity quality for users and items,
  the aggregate quality, ratios against the full-size model, usable parameters, wall time,
  and a status (``"ok"`` or ``"failed"`` with a message).

Both are frozen dataclasses whose numpy arrays are read-only copies. Both round-trip through
JSON (`to_dict` / `from_dict`, arrays as lists) and through files (`save` / `load`, ``.json``
with arrays inline, or ``.npz`` with the scalars as a JSON string beside the arrays, never
pickle).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from tfembsize import _io
from tfembsize.budget import Budget
from tfembsize.errors import BudgetInfeasibleError
from tfembsize.plan import SizePlan

__all__ = [
    "Decision",
    "Feedback",
    "Observation",
    "Problem",
    "StepRecord",
    "MODES",
    "PHASES",
    "STATUSES",
    "SIDES",
    "fitness_of",
    "json_clean",
    "step_score",
]

MODES = ("scratch", "snapshot", "continue")
"""Environment modes: train from fresh initialisation, from the stored snapshot, or on."""

PHASES = ("search", "final")
"""``"search"``: a step of the search itself; ``"final"``: a candidate result trained in
full (e.g. BET's selective retraining, or the single plan of a baseline)."""

STATUSES = ("ok", "failed")
SIDES = ("user", "item")

_DECISION_FORMAT = "tfembsize.Decision"
_FEEDBACK_FORMAT = "tfembsize.Feedback"
_OBSERVATION_FORMAT = "tfembsize.Observation"
_FEEDBACK_ARRAYS = ("user_quality", "item_quality", "user_quality_ratio", "item_quality_ratio")


# Helpers ------------------------------------------------------------------------------------
def _frozen_array(name: str, value: Any, dtype: Any, *, allow_none: bool = False) -> Any:
    if value is None:
        if allow_none:
            return None
        raise ValueError(f"`{name}` is required. Received: {name}=None")
    arr = np.array(value, dtype=dtype, copy=True)
    if arr.ndim != 1:
        raise ValueError(f"`{name}` must be a 1-D array. Received shape {arr.shape}.")
    arr.flags.writeable = False
    return arr


def json_clean(name: str, value: Any) -> Any:
    """``value`` with numpy scalars made Python ones; raises TypeError for what JSON can't hold.

    Args:
        name: the argument's name, for the error message.
        value: numbers, strings, None, and lists/tuples/mappings of them.
    """
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value
    if isinstance(value, Mapping):
        return {str(k): json_clean(f"{name}[{k!r}]", v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_clean(f"{name}[{i}]", v) for i, v in enumerate(value)]
    raise TypeError(
        f"`{name}` must hold JSON values (numbers, strings, lists, dicts). Received "
        f"{type(value).__name__}."
    )


def _float_or_none(x: Any) -> float | None:
    return None if x is None else float(x)


def _encode_float(x: float | None) -> Any:
    # JSON has no NaN/inf; keep them as strings so the round trip is exact.
    if x is None:
        return None
    if math.isfinite(x):
        return x
    return repr(float(x))


def _decode_float(x: Any) -> float | None:
    if x is None:
        return None
    return float(x)


def _arrays_equal(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return a.shape == b.shape and np.array_equal(a, b, equal_nan=True)


def _file_kind(path: str, what: str) -> str:
    if path.endswith(".json"):
        return "json"
    if path.endswith(".npz"):
        return "npz"
    raise ValueError(f"{what} files end in .json or .npz. Received path={path!r}")


# Table layout -------------------------------------------------------------------------------
class _TableLayout:
    """Table bookkeeping shared by `Observation` and `Problem`.

    Subclasses provide ``tables`` (layer name -> ``"user"``/``"item"``), ``num_users``,
    ``num_items`` and ``d_max``.
    """

    tables: Mapping[str, str]
    d_max: int
    num_users: int
    num_items: int

    @property
    def user_tables(self) -> list[str]:
        """Names of the user-side tables."""
        return [n for n, s in self.tables.items() if s == "user"]

    @property
    def item_tables(self) -> list[str]:
        """Names of the item-side tables."""
        return [n for n, s in self.tables.items() if s == "item"]

    @property
    def tables_per_side(self) -> int:
        """Tables per side (1, or 2 for NCF's GMF and MLP tables)."""
        return len(self.user_tables)

    @property
    def num_entities(self) -> int:
        """Users plus items."""
        return self.num_users + self.num_items

    @property
    def num_rows(self) -> int:
        """Rows of every table together: the ``N`` of the budget (NCF counts both tables)."""
        return len(self.user_tables) * self.num_users + len(self.item_tables) * self.num_items

    def budget(self, sparsity: float) -> Budget:
        """The budget for ``sparsity`` at this ``d_max``."""
        return Budget(sparsity=sparsity, d_max=self.d_max)

    def max_params(self, sparsity: float) -> int:
        """B(c) = floor((1 - c) * d_max * N) usable parameters."""
        return self.budget(sparsity).max_params_for(self.num_rows)

    def plan_from_sizes(self, user_sizes: Any, item_sizes: Any) -> SizePlan:
        """Builds the `SizePlan` that gives every user- and item-side table these sizes."""
        u = np.asarray(user_sizes)
        i = np.asarray(item_sizes)
        if u.shape != (self.num_users,):
            raise ValueError(
                f"`user_sizes` must have shape ({self.num_users},). Received shape {u.shape}."
            )
        if i.shape != (self.num_items,):
            raise ValueError(
                f"`item_sizes` must have shape ({self.num_items},). Received shape {i.shape}."
            )
        return SizePlan({n: (u if s == "user" else i) for n, s in self.tables.items()})

    def sizes_from_plan(self, plan: SizePlan) -> tuple[np.ndarray, np.ndarray]:
        """The (user, item) size vectors of a plan (the first table of each side)."""
        return plan[self.user_tables[0]], plan[self.item_tables[0]]

    def full_plan(self) -> SizePlan:
        """The plan that gives every row the full width ``d_max``."""
        return self.plan_from_sizes(
            np.full(self.num_users, self.d_max, np.int32),
            np.full(self.num_items, self.d_max, np.int32),
        )


# Feedback -----------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class Feedback:
    """What one environment step returned.

    Quality follows the spec's convention: ``Q_u`` is the mean of Recall@k and NDCG@k for
    k in {5, 10, 20} on the split being scored (validation during search); ``Q_v`` is the
    mean of ``Q_u`` over the users who have item v in training; the aggregate ``quality`` is
    the mean of ``Q_u`` over evaluated users. Ratios compare with the full-size reference
    model: ``quality_ratio = quality / Q_full`` and, per entity,
    ``q_n = min(Q_n / max(Q_n_full, 1e-5), 1)``.

    A failed step (e.g. the loss became NaN) has ``status="failed"``, a message, NaN quality
    and no per-entity arrays; controllers must check `ok` before using the numbers.

    Args:
        status: ``"ok"`` or ``"failed"``.
        message: why a step failed (empty when ok).
        quality: aggregate validation quality (mean over users of ``Q_u``).
        user_quality: ``Q_u`` per user (float32, length ``num_users``).
        item_quality: ``Q_v`` per item (float32, length ``num_items``).
        usable_params: usable parameters of the evaluated model (sum of sizes).
        wall_time: seconds spent in the step (training and evaluation).
        quality_ratio: ``quality`` over the reference quality, or None without a reference.
        user_quality_ratio: ``q_u`` per user, or None.
        item_quality_ratio: ``q_v`` per item, or None.
        metrics: named scalar metrics, e.g. ``{"recall@20": 0.15, "ndcg@20": 0.12}``.
        mode: the environment mode of the step (one of `MODES`), if any.
        train_steps: optimiser steps run in the step.
        best_step: step count of the restored (best) weights, when early stopping ran.
        loss: last training loss.
        info: any further JSON-serialisable details.

    Example:
        >>> fb = Feedback(quality=0.2, user_quality=[0.1, 0.3], item_quality=[0.2],
        ...               usable_params=24, wall_time=1.5)
        >>> Feedback.from_dict(fb.to_dict()) == fb
        True
    """

    status: str = "ok"
    message: str = ""
    quality: float = float("nan")
    user_quality: np.ndarray | None = None
    item_quality: np.ndarray | None = None
    usable_params: int = 0
    wall_time: float = 0.0
    quality_ratio: float | None = None
    user_quality_ratio: np.ndarray | None = None
    item_quality_ratio: np.ndarray | None = None
    metrics: Mapping[str, float] = field(default_factory=dict)
    mode: str | None = None
    train_steps: int | None = None
    best_step: int | None = None
    loss: float | None = None
    info: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(
                f"`status` must be one of {STATUSES}. Received: status={self.status!r}"
            )
        if self.mode is not None and self.mode not in MODES:
            raise ValueError(f"`mode` must be one of {MODES} or None. Received: mode={self.mode!r}")
        if not isinstance(self.message, str):
            raise TypeError(f"`message` must be a string. Received: message={self.message!r}")
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731
        set_("quality", float(self.quality))
        for name in _FEEDBACK_ARRAYS:
            set_(name, _frozen_array(name, getattr(self, name), np.float32, allow_none=True))
        up = self.usable_params
        if isinstance(up, bool) or not isinstance(up, (int, np.integer)) or up < 0:
            raise ValueError(
                f"`usable_params` must be a non-negative integer. Received: usable_params={up!r}"
            )
        set_("usable_params", int(up))
        set_("wall_time", float(self.wall_time))
        if not self.wall_time >= 0:
            raise ValueError(f"`wall_time` must be >= 0. Received: wall_time={self.wall_time!r}")
        set_("quality_ratio", _float_or_none(self.quality_ratio))
        set_("loss", _float_or_none(self.loss))
        for name in ("train_steps", "best_step"):
            v = getattr(self, name)
            if v is not None:
                if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
                    raise ValueError(
                        f"`{name}` must be a non-negative integer or None. Received: {name}={v!r}"
                    )
                set_(name, int(v))
        set_("metrics", {str(k): float(v) for k, v in dict(self.metrics).items()})
        set_("info", json_clean("info", dict(self.info)))
        if self.status == "ok":
            if not math.isfinite(self.quality):
                raise ValueError(
                    "An ok Feedback needs a finite `quality`. Received: "
                    f"quality={self.quality!r}; use Feedback.failed(...) for a failed step."
                )
            for name in _FEEDBACK_ARRAYS:
                arr = getattr(self, name)
                if arr is not None and not np.all(np.isfinite(arr)):
                    raise ValueError(f"`{name}` of an ok Feedback contains NaN or inf values.")
        elif not self.message:
            raise ValueError("A failed Feedback needs a `message` saying why the step failed.")

    @classmethod
    def failed(
        cls,
        message: str,
        *,
        usable_params: int = 0,
        wall_time: float = 0.0,
        mode: str | None = None,
        train_steps: int | None = None,
        loss: float | None = None,
        info: Mapping[str, Any] | None = None,
    ) -> Feedback:
        """A failed step: NaN quality, no per-entity arrays, and the reason in ``message``."""
        return cls(
            status="failed",
            message=message,
            usable_params=usable_params,
            wall_time=wall_time,
            mode=mode,
            train_steps=train_steps,
            loss=loss,
            info=info or {},
        )

    @property
    def ok(self) -> bool:
        """True when the step succeeded."""
        return self.status == "ok"

    @property
    def num_users(self) -> int | None:
        """Length of `user_quality` (None when absent)."""
        return None if self.user_quality is None else int(self.user_quality.size)

    @property
    def num_items(self) -> int | None:
        """Length of `item_quality` (None when absent)."""
        return None if self.item_quality is None else int(self.item_quality.size)

    def mean_entity_ratio(self) -> float | None:
        """Mean of the per-entity ratios over users and items together (CIESS Eq. 16)."""
        if self.user_quality_ratio is None or self.item_quality_ratio is None:
            return None
        both = np.concatenate([self.user_quality_ratio, self.item_quality_ratio])
        return float(both.astype(np.float64).mean()) if both.size else None

    def replace(self, **changes: Any) -> Feedback:
        """A copy with some fields changed (as `dataclasses.replace`)."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values.update(changes)
        return Feedback(**values)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Feedback):
            return NotImplemented
        for f in fields(self):
            a, b = getattr(self, f.name), getattr(other, f.name)
            if f.name in _FEEDBACK_ARRAYS:
                if not _arrays_equal(a, b):
                    return False
            elif isinstance(a, float) and isinstance(b, float):
                if not (a == b or (math.isnan(a) and math.isnan(b))):
                    return False
            elif a != b:
                return False
        return True

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        if not self.ok:
            return f"Feedback(status='failed', message={self.message!r})"
        ratio = "" if self.quality_ratio is None else f", quality_ratio={self.quality_ratio:.4f}"
        return (
            f"Feedback(quality={self.quality:.4f}{ratio}, usable_params={self.usable_params}, "
            f"wall_time={self.wall_time:.1f}s, mode={self.mode!r})"
        )

    # Serialisation ----------------------------------------------------------------------------
    def scalars(self) -> dict:
        """The JSON-serialisable fields without the per-entity arrays."""
        return {
            "format": _FEEDBACK_FORMAT,
            "version": 1,
            "status": self.status,
            "message": self.message,
            "quality": _encode_float(self.quality),
            "usable_params": self.usable_params,
            "wall_time": self.wall_time,
            "quality_ratio": _encode_float(self.quality_ratio),
            "metrics": {k: _encode_float(v) for k, v in self.metrics.items()},
            "mode": self.mode,
            "train_steps": self.train_steps,
            "best_step": self.best_step,
            "loss": _encode_float(self.loss),
            "info": dict(self.info),
        }

    def arrays(self) -> dict[str, np.ndarray]:
        """The per-entity arrays that are present, by field name."""
        return {k: getattr(self, k) for k in _FEEDBACK_ARRAYS if getattr(self, k) is not None}

    def to_dict(self, *, arrays: bool = True) -> dict:
        """JSON-serialisable form; ``arrays=False`` leaves out the per-entity arrays."""
        d = self.scalars()
        if arrays:
            d["arrays"] = {k: v.tolist() for k, v in self.arrays().items()}
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], arrays: Mapping[str, Any] | None = None) -> Feedback:
        """Inverse of `to_dict`; ``arrays`` supplies arrays stored elsewhere (e.g. an .npz)."""
        if d.get("format") != _FEEDBACK_FORMAT:
            raise ValueError(f"Not a serialised Feedback (format={d.get('format')!r}).")
        arr = dict(d.get("arrays") or {})
        if arrays is not None:
            arr.update(arrays)
        unknown = set(arr) - set(_FEEDBACK_ARRAYS)
        if unknown:
            raise ValueError(f"Unknown Feedback arrays: {sorted(unknown)}")
        return cls(
            status=d["status"],
            message=d.get("message", ""),
            quality=_decode_float(d.get("quality")) if d.get("quality") is not None else math.nan,
            usable_params=d.get("usable_params", 0),
            wall_time=d.get("wall_time", 0.0),
            quality_ratio=_decode_float(d.get("quality_ratio")),
            metrics={k: _decode_float(v) for k, v in (d.get("metrics") or {}).items()},
            mode=d.get("mode"),
            train_steps=d.get("train_steps"),
            best_step=d.get("best_step"),
            loss=_decode_float(d.get("loss")),
            info=d.get("info") or {},
            **{k: arr.get(k) for k in _FEEDBACK_ARRAYS},
        )

    def save(self, path: str | os.PathLike) -> None:
        """Writes the record atomically as ``.json`` (arrays inline) or ``.npz``."""
        path = os.fspath(path)
        if _file_kind(path, "Feedback") == "json":
            _io.write_bytes(path, json.dumps(self.to_dict()).encode("utf-8"))
            return
        buf = io.BytesIO()
        np.savez(buf, __scalars__=np.array(json.dumps(self.scalars())), **self.arrays())
        _io.write_bytes(path, buf.getvalue())

    @classmethod
    def load(cls, path: str | os.PathLike) -> Feedback:
        """Reads a record written by `save`."""
        path = os.fspath(path)
        if _file_kind(path, "Feedback") == "json":
            with open(path, encoding="utf-8") as f:
                return cls.from_dict(json.load(f))
        with np.load(path, allow_pickle=False) as z:
            if "__scalars__" not in z.files:
                raise ValueError(f"{path} is not a Feedback .npz file.")
            scalars = json.loads(str(z["__scalars__"]))
            arrays = {k: z[k] for k in z.files if k != "__scalars__"}
        return cls.from_dict(scalars, arrays)


# Observation --------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class Observation(_TableLayout):
    """What a controller sees before deciding: the problem, the current plan, the last result.

    Args:
        tables: maps each searchable layer name to the side it embeds, ``"user"`` or
            ``"item"``. A backbone with two tables per side (NCF: GMF and MLP) lists both;
            they share one size vector per entity (`plan_from_sizes`).
        user_frequencies: training interactions per user (int64, length ``num_users``).
        item_frequencies: training interactions per item (int64, length ``num_items``).
        d_max: full embedding width.
        iteration: number of steps completed so far.
        plan: the sizes currently applied to the model (None before the first step).
        feedback: the feedback of the last step (None before the first step).
        reference: the feedback of the full-size reference model, whose per-entity quality
            is the denominator of the quality ratios (None if the environment has none).

    Example:
        >>> obs = Observation({"user_embedding": "user", "item_embedding": "item"},
        ...                   user_frequencies=[3, 1], item_frequencies=[2, 2, 0], d_max=8)
        >>> obs.plan_from_sizes([8, 2], [4, 4, 1]).total_params()
        19
    """

    tables: Mapping[str, str]
    user_frequencies: np.ndarray
    item_frequencies: np.ndarray
    d_max: int = 128
    iteration: int = 0
    plan: SizePlan | None = None
    feedback: Feedback | None = None
    reference: Feedback | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.tables, Mapping) or not self.tables:
            raise ValueError(
                "`tables` must be a non-empty mapping of layer name to 'user' or 'item'. "
                f"Received: tables={self.tables!r}"
            )
        tables = {}
        for name, side in self.tables.items():
            if side not in SIDES:
                raise ValueError(f"`tables[{name!r}]` must be 'user' or 'item'. Received: {side!r}")
            tables[str(name)] = side
        for side in SIDES:
            if side not in tables.values():
                raise ValueError(f"`tables` has no {side} table. Received: tables={tables!r}")
        object.__setattr__(self, "tables", tables)
        for name in ("user_frequencies", "item_frequencies"):
            arr = _frozen_array(name, getattr(self, name), np.int64)
            if arr.size and arr.min() < 0:
                raise ValueError(f"`{name}` must be non-negative.")
            object.__setattr__(self, name, arr)
        d = self.d_max
        if isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d < 1:
            raise ValueError(f"`d_max` must be a positive integer. Received: d_max={d!r}")
        object.__setattr__(self, "d_max", int(d))
        it = self.iteration
        if isinstance(it, bool) or not isinstance(it, (int, np.integer)) or it < 0:
            raise ValueError(f"`iteration` must be a non-negative integer. Received: {it!r}")
        object.__setattr__(self, "iteration", int(it))
        if self.plan is not None and not isinstance(self.plan, SizePlan):
            raise TypeError(f"`plan` must be a SizePlan or None. Received {type(self.plan)!r}.")

    @property
    def num_users(self) -> int:
        """Number of users."""
        return int(self.user_frequencies.size)

    @property
    def num_items(self) -> int:
        """Number of items."""
        return int(self.item_frequencies.size)

    def replace(self, **changes: Any) -> Observation:
        """A copy with some fields changed."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values.update(changes)
        return Observation(**values)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Observation):
            return NotImplemented
        return (
            self.tables == other.tables
            and _arrays_equal(self.user_frequencies, other.user_frequencies)
            and _arrays_equal(self.item_frequencies, other.item_frequencies)
            and self.d_max == other.d_max
            and self.iteration == other.iteration
            and self.plan == other.plan
            and self.feedback == other.feedback
            and self.reference == other.reference
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (
            f"Observation(iteration={self.iteration}, tables={self.tables}, "
            f"num_users={self.num_users}, num_items={self.num_items}, d_max={self.d_max})"
        )

    def to_dict(self) -> dict:
        """JSON-serialisable form (arrays as lists)."""
        return {
            "format": _OBSERVATION_FORMAT,
            "version": 1,
            "tables": dict(self.tables),
            "user_frequencies": self.user_frequencies.tolist(),
            "item_frequencies": self.item_frequencies.tolist(),
            "d_max": self.d_max,
            "iteration": self.iteration,
            "plan": None if self.plan is None else self.plan.to_dict(),
            "feedback": None if self.feedback is None else self.feedback.to_dict(),
            "reference": None if self.reference is None else self.reference.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Observation:
        """Inverse of `to_dict`."""
        if d.get("format") != _OBSERVATION_FORMAT:
            raise ValueError(f"Not a serialised Observation (format={d.get('format')!r}).")
        return cls(
            tables=d["tables"],
            user_frequencies=np.asarray(d["user_frequencies"], np.int64),
            item_frequencies=np.asarray(d["item_frequencies"], np.int64),
            d_max=d["d_max"],
            iteration=d.get("iteration", 0),
            plan=None if d.get("plan") is None else SizePlan.from_dict(d["plan"]),
            feedback=None if d.get("feedback") is None else Feedback.from_dict(d["feedback"]),
            reference=None if d.get("reference") is None else Feedback.from_dict(d["reference"]),
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

    def to_dict(self) -> dict:
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


# Problem ------------------------------------------------------------------------------------
def _digest(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a, dtype=np.int64).tobytes())
        h.update(b"|")
    return h.hexdigest()


@dataclass(frozen=True, eq=False)
class Problem(_TableLayout):
    """The fixed facts of a search, taken from the first `Observation` a controller sees.

    Sizes are per *entity*: every user-side table gets the user's size and every item-side
    table the item's. The parameter cost of one unit of size is the number of tables per
    side (2 for NCF's GMF and MLP tables), so a budget of B parameters allows
    ``floor(B / tables_per_side)`` units of entity size (`size_limit`).

    Args:
        tables: layer name -> ``"user"`` or ``"item"``.
        d_max: full width.
        user_frequencies: training interactions per user (may be None after `set_state`
            until the next observation or `restore` supplies them).
        item_frequencies: training interactions per item (likewise).
        num_users: number of users.
        num_items: number of items.
        digest: SHA-256 of the frequency arrays, to recognise the same problem later.
    """

    tables: Mapping[str, str]
    d_max: int
    num_users: int
    num_items: int
    digest: str
    user_frequencies: np.ndarray | None = None
    item_frequencies: np.ndarray | None = None

    @classmethod
    def from_observation(cls, observation: Observation) -> Problem:
        """The problem an observation describes."""
        tables = dict(observation.tables)
        per_side = {s: sum(1 for v in tables.values() if v == s) for s in ("user", "item")}
        if per_side["user"] != per_side["item"]:
            raise ValueError(
                "Controllers size entities, so the user and item sides must have the same "
                f"number of tables. Received tables={tables!r}"
            )
        return cls(
            tables=tables,
            d_max=observation.d_max,
            num_users=observation.num_users,
            num_items=observation.num_items,
            digest=_digest(observation.user_frequencies, observation.item_frequencies),
            user_frequencies=np.asarray(observation.user_frequencies, np.int64),
            item_frequencies=np.asarray(observation.item_frequencies, np.int64),
        )

    def size_limit(self, sparsity: float) -> int:
        """Largest total of entity sizes whose parameters fit B(c); raises if < 1 per entity.

        Raises:
            BudgetInfeasibleError: the budget cannot give every entity size 1.
        """
        limit = self.max_params(sparsity) // self.tables_per_side
        if limit < self.num_entities:
            raise BudgetInfeasibleError(
                f"sparsity={sparsity:g} leaves {self.max_params(sparsity)} parameters for "
                f"{self.num_rows} rows: fewer than one per row (d_max={self.d_max})."
            )
        return limit

    def plan(self, user_sizes: Any, item_sizes: Any) -> SizePlan:
        """The plan giving every user-side table ``user_sizes`` and item-side ``item_sizes``."""
        return self.plan_from_sizes(user_sizes, item_sizes)

    def sizes(self, plan: SizePlan) -> tuple[np.ndarray, np.ndarray]:
        """The (user, item) size vectors of a plan."""
        return self.sizes_from_plan(plan)

    @property
    def has_frequencies(self) -> bool:
        """True when the frequency arrays are known."""
        return self.user_frequencies is not None

    def with_frequencies(self, user: np.ndarray, item: np.ndarray) -> Problem:
        """The same problem with its frequency arrays (checked against the digest)."""
        if _digest(user, item) != self.digest:
            raise ValueError(
                "The frequency arrays differ from the ones this controller was started with."
            )
        return Problem(
            tables=self.tables,
            d_max=self.d_max,
            num_users=self.num_users,
            num_items=self.num_items,
            digest=self.digest,
            user_frequencies=np.asarray(user, np.int64),
            item_frequencies=np.asarray(item, np.int64),
        )

    def to_dict(self) -> dict:
        """JSON form without the frequency arrays (they go to the .npz)."""
        return {
            "tables": dict(self.tables),
            "d_max": self.d_max,
            "num_users": self.num_users,
            "num_items": self.num_items,
            "digest": self.digest,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Problem:
        """Inverse of `to_dict` (no frequency arrays)."""
        return cls(
            tables=dict(d["tables"]),
            d_max=int(d["d_max"]),
            num_users=int(d["num_users"]),
            num_items=int(d["num_items"]),
            digest=str(d["digest"]),
        )

    def same_as(self, observation: Observation) -> str | None:
        """None if ``observation`` describes this problem, else what differs."""
        if dict(observation.tables) != dict(self.tables):
            return f"tables {dict(observation.tables)} != {dict(self.tables)}"
        if observation.d_max != self.d_max:
            return f"d_max {observation.d_max} != {self.d_max}"
        if (observation.num_users, observation.num_items) != (self.num_users, self.num_items):
            return (
                f"(num_users, num_items) ({observation.num_users}, {observation.num_items}) "
                f"!= ({self.num_users}, {self.num_items})"
            )
        if _digest(observation.user_frequencies, observation.item_frequencies) != self.digest:
            return "the training frequencies differ"
        return None


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
