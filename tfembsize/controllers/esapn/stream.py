"""`run_esapn_stream`: ESAPN's own setting, a rating stream classified test-then-train.

One pass over a time-ordered `tfembsize.data.RatingStream` in batches: a
`tfembsize.models.RatingClassifier` predicts each batch, its prequential metrics are
recorded, then it trains on the batch. With ``method="esapn"`` an `ESAPNController` grows
the user and item sizes along the way; ``method="fixed"`` is the same classifier with
full-width tables and no policy (the paper's FIXED baseline). Metrics are reported on the
test part of the stream (its last interactions), the memory of each table as the sum of its
rows' sizes against ``d_max`` per row.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import types
from collections.abc import Mapping
from typing import Any

import numpy as np
import tensorflow as tf

from tfembsize.controllers.esapn.config import ESAPNConfig
from tfembsize.controllers.esapn.controller import ESAPNController
from tfembsize.data.ratings import RatingStream, rating_stream_dataset
from tfembsize.layers.utils import table_params
from tfembsize.models.rating import TASKS, RatingClassifier
from tfembsize.training.hooks import TrainingHook
from tfembsize.training.loop import train_bpr
from tfembsize.training.outcome import TrainResult

__all__ = ["ESAPNStreamRun", "METHODS", "run_esapn_stream", "stream_config"]

logger = logging.getLogger(__name__)

METHODS = ("esapn", "fixed")
"""``esapn``: sizes grown by the policies; ``fixed``: every row at ``d_max``, no policy."""

_SIDES = (("user", "user_embedding"), ("item", "item_embedding"))


def stream_config(**changes: Any) -> ESAPNConfig:
    """ESAPN's recipe for the rating stream: batches of 500 and Adam 1e-3 (the authors' code).

    The other fields keep the `ESAPNConfig` defaults (memory 5, policy Adam 1e-4, ...);
    ``chunk_steps`` is 100 (the stream is checkpointed and logged every 100 batches).

    Args:
        **changes: fields to change.
    """
    base: dict[str, Any] = {"batch_size": 500, "learning_rate": 1e-3, "chunk_steps": 100}
    base.update(changes)
    return ESAPNConfig(**base)


@dataclasses.dataclass(frozen=True, eq=False)
class ESAPNStreamRun:
    """The outcome of `run_esapn_stream`.

    Attributes:
        method: ``"esapn"`` or ``"fixed"``.
        task: ``"binary"`` or ``"multiclass"``.
        metrics: the prequential metrics, ``{"train": {...}, "test": {...}}`` (see
            `RatingClassifier.prequential_metrics`); the test part is what a run reports.
        memory: per side (``"user"``, ``"item"``): ``rows``, ``usable_params`` (the sum of
            the rows' sizes), ``full_params`` (``d_max`` per row), ``ratio`` (their quotient)
            and ``mean_size``.
        overhead: parameters besides the rows' own: per side the maps between rungs and the
            output normalisation (``user_maps``, ``user_batch_norm``, ...), the classifier
            after the tables (``head``) and, for ESAPN, each policy (``user_policy``,
            ``item_policy``).
        sizes: each side's final sizes.
        frequencies: each side's interactions over the stream.
        model: the trained classifier.
        controller: the controller (None for ``fixed``).
        train: `tfembsize.training.train_bpr`'s result (its history holds the chunks' logs).
        steps: batches of the stream.
        wall_time: seconds (a resumed run counts the time before the interruption too).
    """

    method: str
    task: str
    metrics: dict[str, dict[str, float]]
    memory: dict[str, dict[str, float]]
    overhead: dict[str, int]
    sizes: dict[str, np.ndarray]
    frequencies: dict[str, np.ndarray]
    model: Any
    controller: ESAPNController | None
    train: TrainResult
    steps: int
    wall_time: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary: metrics, memory, overhead, rows per size (no arrays)."""
        rows_per_size = {}
        for side, sizes in self.sizes.items():
            values, counts = np.unique(sizes, return_counts=True)
            rows_per_size[side] = {str(int(v)): int(c) for v, c in zip(values, counts, strict=True)}
        return {
            "method": self.method,
            "task": self.task,
            "metrics": self.metrics,
            "memory": self.memory,
            "overhead": self.overhead,
            "rows_per_size": rows_per_size,
            "steps": self.steps,
            "wall_time": self.wall_time,
        }


class _Progress(TrainingHook):
    """The controller's hook (if any) plus the running prequential metrics in the logs."""

    def __init__(self, model: RatingClassifier, controller: ESAPNController | None) -> None:
        self.model = model
        self.controller = controller
        self.requires_graph_hooks = controller is not None

    def on_train_begin(self, model: Any, optimizer: Any) -> None:
        if self.controller is not None:
            self.controller.on_train_begin(model, optimizer)

    def before_batch(self, batch: Any, step: tf.Tensor) -> None:
        if self.controller is not None:
            self.controller.before_batch(batch, step)

    def after_batch(self, batch: Any, loss: tf.Tensor, step: tf.Tensor) -> tf.Tensor | None:
        if self.controller is not None:
            self.controller.after_batch(batch, loss, step)
        return None

    def on_chunk_end(self, step: int, losses: np.ndarray) -> Mapping[str, float]:
        out: dict[str, float] = {}
        if self.controller is not None:
            out.update(self.controller.on_chunk_end(step, losses))
        for part, values in self.model.prequential_metrics().items():
            if values["samples"]:
                out[f"{part}_accuracy"] = values["accuracy"]
                out[f"{part}_{self.model.loss_name}"] = values[self.model.loss_name]
        return out

    def on_train_end(self, step: int) -> None:
        if self.controller is not None:
            self.controller.on_train_end(step)

    @property
    def done(self) -> bool:
        return False

    def get_state(self) -> dict[str, Any]:
        return {} if self.controller is None else self.controller.get_state()

    def set_state(self, state: Mapping[str, Any]) -> None:
        if self.controller is not None:
            self.controller.set_state(state)

    def variables(self) -> list[Any]:
        return [] if self.controller is None else self.controller.variables()


def _memory(model: Any, d_max: int) -> dict[str, dict[str, float]]:
    out = {}
    for side, attr in _SIDES:
        layer = getattr(model, attr)
        rows = int(layer.input_dim)
        usable = table_params(layer)
        sizes = getattr(layer, "sizes", None)
        out[side] = {
            "rows": rows,
            "usable_params": usable,
            "full_params": d_max * rows,
            "ratio": usable / (d_max * rows),
            "mean_size": float(np.mean(sizes)) if sizes is not None else float(layer.output_dim),
        }
    return out


def _sizes(layer: Any) -> np.ndarray:
    sizes = getattr(layer, "sizes", None)
    if sizes is None:
        return np.full(int(layer.input_dim), int(layer.output_dim), np.int32)
    return np.asarray(sizes)


def _overhead(model: Any, controller: ESAPNController | None) -> dict[str, int]:
    out: dict[str, int] = {}
    for side, attr in _SIDES:
        fn = getattr(getattr(model, attr), "overhead_params", None)
        overhead = fn() if callable(fn) else None
        out[f"{side}_maps"] = 0 if overhead is None else int(overhead.maps)
        out[f"{side}_batch_norm"] = 0 if overhead is None else int(overhead.batch_norm)
    out["head"] = model.head_params()
    if controller is not None:
        for name, policy in controller.policies.items():
            out[f"{name}_policy"] = int(
                sum(int(np.prod(v.shape)) for v in policy.network.trainable_variables)
            )
    return out


def run_esapn_stream(
    stream: RatingStream,
    task: str = "binary",
    *,
    method: str = "esapn",
    config: ESAPNConfig | None = None,
    model: RatingClassifier | None = None,
    hidden: int = 512,
    directory: str | os.PathLike[str] | None = None,
    max_steps: int | None = None,
    verbose: int = 0,
) -> ESAPNStreamRun:
    """One test-then-train pass over a rating stream, with ESAPN or at full size.

    The stream is cut into batches of ``config.batch_size`` in time order
    (`tfembsize.data.rating_stream_dataset`) and trained on once with
    `tfembsize.training.train_bpr` (Adam at ``config.learning_rate``, the loss summed over
    each batch). Per batch, with ESAPN: the policy step on the previous batch and the
    growth of this batch's users and items (`ESAPNController`; each rating's loss is
    credited to its user and its item, and the running counts never reset), then the
    classifier scores the batch, its prequential metrics are recorded and it takes its
    optimiser step. The policy step writes no table and a grown row's output is unchanged
    (its new row is its lifted old one), so the scores are those the classifier gives
    before it trains on the batch whatever the order of these steps. With ``fixed`` the
    tables are one-rung ladders at ``d_max`` and nothing grows.

    With a ``directory`` the run is checkpointed every ``config.chunk_steps`` batches
    (model, optimiser, prequential totals, the controller's buffers, policies and their
    optimisers) and a call with the same arguments continues from the last checkpoint to
    the same result; a finished run is read back. Progress (loss, running accuracy of both
    parts, sizes) is logged every chunk.

    Args:
        stream: the stream.
        task: ``"binary"`` or ``"multiclass"``.
        method: ``"esapn"`` or ``"fixed"``.
        config: the recipe (default `stream_config()`); ``epochs`` must be 1, ``ladder``
            gives the candidate sizes (``fixed`` uses its last, ``d_max``) and ``seed`` the
            initialisation and the policies' draws.
        model: a classifier to train instead of ``RatingClassifier.create(...)`` (its
            tables must be `LadderEmbedding` layers for ``esapn``).
        hidden: hidden width of the classifier `run_esapn_stream` creates.
        directory: where the checkpoints live (None: not resumable).
        max_steps: stop after this many batches (None: the whole stream); a later call
            with the same ``directory`` goes on.
        verbose: 1 for a progress bar.

    Returns:
        An `ESAPNStreamRun`.

    Raises:
        TypeError: ``stream`` is not a `RatingStream` or ``model`` not a `RatingClassifier`.
        ValueError: an unknown ``task`` or ``method``, ``config.epochs`` other than 1, a
            ``model`` for another task or other table sizes, or a bad ``max_steps``.

    Example:
        >>> stream = load_rating_stream("ml-1m")  # doctest: +SKIP
        >>> run = run_esapn_stream(stream, "binary", directory="runs/esapn")  # doctest: +SKIP
        >>> run.metrics["test"]["accuracy"], run.memory["item"]["ratio"]  # doctest: +SKIP
    """
    if not isinstance(stream, RatingStream):
        raise TypeError(f"`stream` must be a RatingStream. Received: {type(stream).__name__}")
    if task not in TASKS:
        raise ValueError(f"`task` must be one of {TASKS}. Received: task={task!r}")
    if method not in METHODS:
        raise ValueError(f"`method` must be one of {METHODS}. Received: method={method!r}")
    config = stream_config() if config is None else config
    if not isinstance(config, ESAPNConfig):
        raise TypeError(f"`config` must be an ESAPNConfig. Received: config={config!r}")
    if config.epochs != 1:
        raise ValueError(
            "A rating stream is seen once (test-then-train); `config.epochs` must be 1. "
            f"Received: epochs={config.epochs}"
        )
    steps = stream.num_steps(config.batch_size)
    steps_run = steps
    if max_steps is not None:
        if (
            isinstance(max_steps, bool)
            or not isinstance(max_steps, (int, np.integer))
            or max_steps < 1
        ):
            raise ValueError(
                f"`max_steps` must be a positive integer or None. Received: max_steps={max_steps!r}"
            )
        steps_run = min(int(max_steps), steps)
    d_max = int(config.ladder[-1])
    if model is None:
        ladder = tuple(config.ladder) if method == "esapn" else (d_max,)
        model = RatingClassifier.create(
            stream.num_users, stream.num_items, task, ladder=ladder, hidden=hidden, seed=config.seed
        )
    elif not isinstance(model, RatingClassifier):
        raise TypeError(f"`model` must be a RatingClassifier. Received: {type(model).__name__}")
    if model.task != task or (model.num_users, model.num_items) != (
        stream.num_users,
        stream.num_items,
    ):
        raise ValueError(
            f"`model` must classify {task!r} over {stream.num_users} users and "
            f"{stream.num_items} items. Received a {model.task!r} model over "
            f"{model.num_users} users and {model.num_items} items."
        )
    d_max = int(model.embedding_dim)
    controller = ESAPNController(config).attach(model) if method == "esapn" else None
    logger.info(
        "%s (%s) on %r: %d batches of %d%s.",
        method.upper(),
        task,
        stream,
        steps,
        config.batch_size,
        "" if steps_run == steps else f", stopping after {steps_run}",
    )

    def batches(_: Any, start: int) -> tf.data.Dataset:
        return rating_stream_dataset(stream, config.batch_size, start_step=start)

    result = train_bpr(
        model,
        types.SimpleNamespace(train=stream),
        None,
        config=config.train_config(steps_run, seed=config.seed, verbose=verbose),
        checkpoint_dir=None if directory is None else os.fspath(directory),
        hook=_Progress(model, controller),
        batches=batches,
    )
    metrics = model.prequential_metrics()
    memory = _memory(model, d_max)
    run = ESAPNStreamRun(
        method=method,
        task=task,
        metrics=metrics,
        memory=memory,
        overhead=_overhead(model, controller),
        sizes={side: _sizes(getattr(model, attr)) for side, attr in _SIDES},
        frequencies={side: stream.frequencies(side) for side, _ in _SIDES},
        model=model,
        controller=controller,
        train=result,
        steps=int(result.steps),
        wall_time=float(result.wall_time),
    )
    test = metrics["test"]
    logger.info(
        "%s (%s): test accuracy %.4f, %s %.4f over %d samples; memory users %.3f, items %.3f "
        "of d_max; %.1fs.",
        method.upper(),
        task,
        test["accuracy"],
        model.loss_name,
        test[model.loss_name],
        test["samples"],
        memory["user"]["ratio"],
        memory["item"]["ratio"],
        run.wall_time,
    )
    return run
