"""Callbacks of the search loop: progress bar, TensorBoard scalars, logging.

A callback sees the loop's events (`SearchCallback.on_search_begin`, `on_step_end`,
`on_search_end`); the loop builds `ProgbarCallback` and `TensorBoardCallback` itself from its
``verbose`` and ``tensorboard`` arguments and runs any extra callbacks the user passes.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any, TypeGuard

from tfembsize.records import Feedback, Observation, StepRecord

__all__ = [
    "SearchCallback",
    "ProgbarCallback",
    "TensorBoardCallback",
    "LoggingCallback",
    "CallbackList",
    "step_scalars",
]

logger = logging.getLogger(__name__)


def _finite_number(x: Any) -> TypeGuard[float]:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(float(x))


def step_scalars(record: StepRecord, *, d_max: int | None = None) -> dict[str, float]:
    """The numbers logged for one step, by TensorBoard tag.

    ``feedback/*`` are the environment's numbers (quality, ratio, params, density, wall time,
    loss and any named metrics); ``decision/*`` are the numeric entries of the controller's
    decision info (e.g. predicted fitness); ``status/failed`` is 1 for a failed step;
    ``timing/elapsed`` is the loop's wall-clock time of the whole step.
    """
    fb: Feedback = record.feedback
    out: dict[str, float] = {
        "status/failed": 0.0 if fb.ok else 1.0,
        "feedback/usable_params": float(fb.usable_params),
        "feedback/wall_time": fb.wall_time,
    }
    if record.elapsed is not None:
        out["timing/elapsed"] = float(record.elapsed)
    rows = record.plan.num_rows()
    if rows and d_max:
        out["feedback/density"] = fb.usable_params / (float(d_max) * rows)
    for name in ("quality", "quality_ratio", "loss"):
        v = getattr(fb, name)
        if _finite_number(v):
            out[f"feedback/{name}"] = float(v)
    mean_ratio = fb.mean_entity_ratio()
    if _finite_number(mean_ratio):
        out["feedback/mean_entity_ratio"] = float(mean_ratio)
    for k, v in fb.metrics.items():
        if _finite_number(v):
            out[f"feedback/{k}"] = float(v)
    for k, v in record.info.items():
        if _finite_number(v):
            out[f"decision/{k}"] = float(v)
    return out


class SearchCallback:
    """Base class: override any of the hooks. Every hook is called in the loop's process."""

    def on_search_begin(
        self, *, completed: int, target: int | None, observation: Observation | None = None
    ) -> None:
        """Called once before the first step (``completed`` steps exist after a resume)."""

    def on_step_end(self, record: StepRecord, *, extra: Mapping[str, float] | None = None) -> None:
        """Called after each step, once the run state is written."""

    def on_search_end(self, result: Any) -> None:
        """Called with the `SearchResult` when the loop returns."""


class CallbackList(SearchCallback):
    """Runs several callbacks in order."""

    def __init__(self, callbacks: Sequence[SearchCallback]) -> None:
        self.callbacks = list(callbacks)

    def on_search_begin(
        self, *, completed: int, target: int | None, observation: Observation | None = None
    ) -> None:
        """Forwards to every callback."""
        for cb in self.callbacks:
            cb.on_search_begin(completed=completed, target=target, observation=observation)

    def on_step_end(self, record: StepRecord, *, extra: Mapping[str, float] | None = None) -> None:
        """Forwards to every callback."""
        for cb in self.callbacks:
            cb.on_step_end(record, extra=extra)

    def on_search_end(self, result: Any) -> None:
        """Forwards to every callback."""
        for cb in self.callbacks:
            cb.on_search_end(result)


class ProgbarCallback(SearchCallback):
    """A Keras ``Progbar`` over search steps showing quality, ratio, params and step time.

    Args:
        verbose: 1 for an interactive bar, 2 for one line per step, 0 for nothing.
    """

    def __init__(self, verbose: int = 1) -> None:
        self.verbose = int(verbose)
        self._bar: Any = None  # a keras.utils.Progbar once the search begins

    def on_search_begin(
        self, *, completed: int, target: int | None, observation: Observation | None = None
    ) -> None:
        """Creates the bar, starting at ``completed``."""
        if self.verbose <= 0:
            return
        from tfembsize._keras import keras

        names = ["quality", "ratio", "params", "step_s"]
        self._bar = keras.utils.Progbar(
            target, verbose=self.verbose, stateful_metrics=names, unit_name="step"
        )
        if completed:
            self._bar.update(completed)

    def on_step_end(self, record: StepRecord, *, extra: Mapping[str, float] | None = None) -> None:
        """Advances the bar."""
        if self._bar is None:
            return
        fb = record.feedback
        values = [("params", float(fb.usable_params)), ("step_s", fb.wall_time)]
        if fb.ok:
            values.insert(0, ("quality", fb.quality))
            if fb.quality_ratio is not None:
                values.insert(1, ("ratio", fb.quality_ratio))
        self._bar.update(record.iteration + 1, values=values)


class TensorBoardCallback(SearchCallback):
    """Writes `step_scalars` of every step with ``tf.summary`` (step = iteration).

    Args:
        log_dir: the event-file directory.
    """

    def __init__(self, log_dir: str | os.PathLike) -> None:
        self.log_dir = os.fspath(log_dir)
        self._writer = None
        self._d_max: int | None = None

    def on_search_begin(
        self, *, completed: int, target: int | None, observation: Observation | None = None
    ) -> None:
        """Opens the event writer."""
        import tensorflow as tf

        self._d_max = None if observation is None else observation.d_max
        self._writer = tf.summary.create_file_writer(self.log_dir)

    def on_step_end(self, record: StepRecord, *, extra: Mapping[str, float] | None = None) -> None:
        """Writes the scalars of the step (and ``extra`` ones, e.g. the controller's)."""
        if self._writer is None:
            return
        import tensorflow as tf

        scalars = step_scalars(record, d_max=self._d_max)
        for k, v in (extra or {}).items():
            if _finite_number(v):
                scalars[f"controller/{k}"] = float(v)
        with self._writer.as_default(step=record.iteration):
            for tag, value in scalars.items():
                tf.summary.scalar(tag, value)
        self._writer.flush()

    def on_search_end(self, result: Any) -> None:
        """Closes the writer."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class LoggingCallback(SearchCallback):
    """Logs one line per step through the ``logging`` module (INFO level)."""

    def on_step_end(self, record: StepRecord, *, extra: Mapping[str, float] | None = None) -> None:
        """Logs the step."""
        fb = record.feedback
        if fb.ok:
            logger.info(
                "step %d (%s): quality=%.5f ratio=%s params=%d in %.1fs",
                record.iteration,
                record.mode,
                fb.quality,
                "n/a" if fb.quality_ratio is None else f"{fb.quality_ratio:.4f}",
                fb.usable_params,
                fb.wall_time,
            )
        else:
            logger.warning("step %d (%s) failed: %s", record.iteration, record.mode, fb.message)
