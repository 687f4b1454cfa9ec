"""`Feedback`: what one environment step returned."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from tfembsize import _io
from tfembsize.errors import StateFileError
from tfembsize.records._common import (
    _FEEDBACK_ARRAYS,
    _FEEDBACK_FORMAT,
    MODES,
    STATUSES,
    _arrays_equal,
    _decode_float,
    _encode_float,
    _file_kind,
    _float_or_none,
    _frozen_array,
    json_clean,
)

__all__ = ["Feedback"]


def _decode_float_or(x: Any, default: float) -> float:
    value = _decode_float(x)
    return default if value is None else value


PEAK_FLOOR = 1e-5
"""The smallest per-entity reference quality a ratio divides by (CIESS's ``max(Q, 1e-5)``)."""


def _entity_ratio(values: np.ndarray | None, peak: np.ndarray | None) -> np.ndarray | None:
    if values is None or peak is None or values.shape != peak.shape:
        return None
    ratio: np.ndarray = np.minimum(values / np.maximum(peak, PEAK_FLOOR), 1.0)
    return ratio.astype(np.float32)


# Feedback -----------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class Feedback:
    """What one environment step returned.

    Quality follows the CIESS and BET papers' convention: ``Q_u`` is the mean of Recall@k and
    NDCG@k for k in {5, 10, 20} on the split being scored (validation during search); ``Q_v`` is the
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

    def with_reference(self, reference: Feedback | None) -> Feedback:
        """A copy with the ratios to a full-size ``reference`` (None or failed: none).

        ``quality_ratio = quality / reference.quality`` (0 when the reference quality is 0)
        and, per entity, ``q_n = min(Q_n / max(Q_n_ref, 1e-5), 1)`` where the per-entity
        arrays have the reference's shape.
        """
        ratio = user_ratio = item_ratio = None
        if reference is not None and reference.ok and self.ok:
            ratio = self.quality / reference.quality if reference.quality > 0 else 0.0
            user_ratio = _entity_ratio(self.user_quality, reference.user_quality)
            item_ratio = _entity_ratio(self.item_quality, reference.item_quality)
        return self.replace(
            quality_ratio=ratio, user_quality_ratio=user_ratio, item_quality_ratio=item_ratio
        )

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
    def scalars(self) -> dict[str, Any]:
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

    def to_dict(self, *, arrays: bool = True) -> dict[str, Any]:
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
            quality=_decode_float_or(d.get("quality"), math.nan),
            usable_params=d.get("usable_params", 0),
            wall_time=d.get("wall_time", 0.0),
            quality_ratio=_decode_float(d.get("quality_ratio")),
            metrics={k: _decode_float_or(v, math.nan) for k, v in (d.get("metrics") or {}).items()},
            mode=d.get("mode"),
            train_steps=d.get("train_steps"),
            best_step=d.get("best_step"),
            loss=_decode_float(d.get("loss")),
            info=d.get("info") or {},
            **{k: arr.get(k) for k in _FEEDBACK_ARRAYS},
        )

    def save(self, path: str | os.PathLike[str]) -> None:
        """Writes the record atomically as ``.json`` (arrays inline) or ``.npz``."""
        path = os.fspath(path)
        if _file_kind(path, "Feedback") == "json":
            _io.write_json(path, self.to_dict(), indent=None)
            return
        arrays: dict[str, Any] = {"__scalars__": np.array(json.dumps(self.scalars()))}
        arrays.update(self.arrays())
        _io.write_npz(path, arrays, format=_FEEDBACK_FORMAT)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Feedback:
        """Reads a record written by `save`.

        Raises:
            tfembsize.errors.StateFileError: the file is missing, damaged or of another kind.
        """
        path = os.fspath(path)
        if _file_kind(path, "Feedback") == "json":
            return cls.from_dict(_io.read_json(path, format=_FEEDBACK_FORMAT, what="feedback"))
        arrays = _io.read_npz(path, format=_FEEDBACK_FORMAT, what="feedback", untagged=True)
        if "__scalars__" not in arrays:
            raise StateFileError(f"The feedback {path!r} is not a Feedback .npz file.")
        scalars = json.loads(str(arrays.pop("__scalars__")))
        return cls.from_dict(scalars, arrays)
