"""The per-batch seam of `train_bpr`: work inside the compiled loop and between chunks.

A `TrainingHook` lets an in-training controller act while a model trains, without a training
loop of its own. `train_bpr` calls it

* on the host, once, before the loop is traced (`on_train_begin`: find the layers, make the
  ``tf.Variable`` objects the in-graph methods use);
* **inside the compiled loop**, around every optimiser step (`before_batch`, `after_batch`):
  TensorFlow ops only, traced once; with ``jit_compile`` they are part of the step's XLA
  cluster. ``after_batch`` may return a boolean scalar that ends the chunk right after that
  batch (e.g. "the usable count just fell under the next budget");
* on the host after every chunk (`on_chunk_end`, with the chunk's losses): capture results,
  update variables for the next chunk, return scalars for the training history, and say
  through `done` that training can stop;
* on the host when training ends (`on_train_end`);
* for checkpoints: `get_state` / `set_state` (JSON) and `variables` (the hook's own
  ``tf.Variable`` objects, saved as arrays beside the model's weights), so a resumed run
  continues exactly.

The same host methods drive ``model.fit`` through `HookCallback` (there, the in-graph methods
cannot run: a hook that needs them says so with ``requires_graph_hooks``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import tensorflow as tf

from tfembsize._keras import keras

__all__ = ["HookCallback", "TrainingHook"]


class TrainingHook:
    """Base class of the work an in-training controller does inside `train_bpr`.

    Override what you need; every method has a no-op default.

    Example:
        >>> class CountBatches(TrainingHook):
        ...     def on_train_begin(self, model, optimizer):
        ...         self.count = tf.Variable(0, dtype=tf.int64)
        ...     def after_batch(self, batch, loss, step):
        ...         self.count.assign_add(1)
        ...         return None
    """

    requires_graph_hooks: bool = False
    """True if the hook only works with its in-graph methods (so not under ``model.fit``)."""

    def on_train_begin(self, model: Any, optimizer: Any) -> None:
        """Host, once before the compiled loop is traced: find layers, make variables."""
        del model, optimizer

    def before_batch(self, batch: Any, step: tf.Tensor) -> None:
        """In graph, before the optimiser step of ``batch``; ``step`` is its 1-based number."""
        del batch, step

    def after_batch(self, batch: Any, loss: tf.Tensor, step: tf.Tensor) -> tf.Tensor | None:
        """In graph, after the optimiser step; a True boolean scalar ends the chunk here."""
        del batch, loss, step
        return None

    def on_chunk_end(self, step: int, losses: np.ndarray) -> Mapping[str, float]:
        """Host, after every chunk; returns scalars for the training history.

        Args:
            step: optimiser steps done so far.
            losses: the chunk's per-step losses (all finite).
        """
        del step, losses
        return {}

    def on_train_end(self, step: int) -> None:
        """Host, once when training ends (after the last checkpoint), with the step count."""
        del step

    @property
    def done(self) -> bool:
        """True when training can stop (checked after every chunk)."""
        return False

    def get_state(self) -> dict[str, Any]:
        """JSON state written with every training checkpoint."""
        return {}

    def variables(self) -> list[Any]:
        """The hook's own variables, saved and restored with every training checkpoint.

        Variables the in-graph methods update and the model does not hold (per-row
        statistics, a policy network and its optimiser, ...). `train_bpr` saves their values
        after every chunk and assigns them back when it resumes (after `on_train_begin`, which
        must have made them). The list must have the same order and shapes every time.
        """
        return []

    def set_state(self, state: Mapping[str, Any]) -> None:
        """Restores a state from `get_state` (after `on_train_begin`)."""
        del state


class HookCallback(keras.callbacks.Callback):
    """Drives a `TrainingHook`'s host methods from ``model.fit`` (as tfmot's UpdatePruningStep).

    Every ``check_every`` training batches it calls ``hook.on_chunk_end(step, losses)`` with
    the batches' losses (when the logs carry them); once ``hook.done`` it stops training
    (``stop_when_done``). The in-graph methods do not run under ``fit``.

    Args:
        hook: the hook.
        check_every: batches between two calls.
        stop_when_done: set ``model.stop_training`` once the hook is done.
        start_step: the step count training starts from (when resuming).

    Raises:
        ValueError: ``check_every`` is not a positive integer, or the hook needs its
            in-graph methods.
    """

    def __init__(
        self,
        hook: TrainingHook,
        *,
        check_every: int = 1,
        stop_when_done: bool = True,
        start_step: int = 0,
    ) -> None:
        super().__init__()
        if isinstance(check_every, bool) or not isinstance(check_every, int) or check_every < 1:
            raise ValueError(
                f"`check_every` must be a positive integer. Received: check_every={check_every!r}"
            )
        if hook.requires_graph_hooks:
            raise ValueError(
                f"{type(hook).__name__} acts inside the compiled training step; train with "
                "tfembsize.training.train_bpr(..., hook=...) instead of model.fit."
            )
        self.hook = hook
        self.check_every = check_every
        self.stop_when_done = bool(stop_when_done)
        self.step = int(start_step)
        self._losses: list[float] = []

    def on_train_begin(self, logs: Any = None) -> None:
        """Calls ``hook.on_train_begin`` with the model and its optimiser."""
        self.hook.on_train_begin(self.model, getattr(self.model, "optimizer", None))

    def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
        """Counts batches; every ``check_every`` of them runs the hook's host step."""
        self.step += 1
        loss = None if not logs else logs.get("loss")
        if loss is not None:
            self._losses.append(float(loss))
        if self.step % self.check_every == 0:
            self.hook.on_chunk_end(self.step, np.asarray(self._losses, np.float32))
            self._losses = []
            if self.stop_when_done and self.hook.done:
                self.model.stop_training = True

    def on_train_end(self, logs: Any = None) -> None:
        """Runs the hook's host step on the batches left over, then ``hook.on_train_end``."""
        if self._losses:
            self.hook.on_chunk_end(self.step, np.asarray(self._losses, np.float32))
            self._losses = []
        self.hook.on_train_end(self.step)
