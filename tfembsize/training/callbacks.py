"""Keras callbacks for ``model.fit``: validation ranking with early stopping."""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import numpy as np

from tfembsize._keras import keras
from tfembsize.training.config import _is_int, _is_real, _parse_monitor, monitor_value
from tfembsize.training.loop import _EarlyStopping, _evaluate, _metrics_of
from tfembsize.training.outcome import EvalRecord, NonFiniteLossError

__all__ = ["ValidationRanking"]

logger = logging.getLogger(__name__)


# The fit-based recipe --------------------------------------------------------------------
class ValidationRanking(keras.callbacks.Callback):
    """Keras callback: full-ranking validation after each epoch, early stopping, best weights.

    Use it with plain ``model.fit`` on `tfembsize.data.bpr_dataset` batches; an "epoch" is a
    chunk of ``steps_per_epoch`` steps. After each epoch the model is evaluated on the
    **validation** split; the numbers go into the epoch logs (``val_recall@20``,
    ``val_ndcg@20``, ..., ``val_quality``) and the `History`. Training stops after
    ``patience`` epochs without improvement of ``monitor``; at the end the best weights are
    restored (``restore_best_weights``). A non-finite training loss raises
    `NonFiniteLossError` naming the step. The test split is never touched.

    Args:
        evaluator: a `tfembsize.metrics.RankingEvaluator`.
        monitor: ``"quality"``, ``"recall@K"`` or ``"ndcg@K"`` (validation).
        patience: epochs without improvement before stopping.
        min_delta: smallest increase that counts as improvement.
        restore_best_weights: restore the best epoch's weights when training ends.
        verbose: 1 to log each evaluation at INFO level (0: DEBUG).

    Attributes:
        best_value: best monitored value.
        best_epoch: 0-based epoch of the best value.
        best_step: training steps done at the best epoch (``S*``).
        best_result: the `RankingResult` of the best epoch.
        history: `EvalRecord` per epoch.

    Example:
        >>> model.compile(optimizer=keras.optimizers.Adam(1e-3))  # doctest: +SKIP
        >>> cb = ValidationRanking(RankingEvaluator(split), patience=3)  # doctest: +SKIP
        >>> model.fit(bpr_dataset(split.train, 2048, seed=0), steps_per_epoch=1000,
        ...           epochs=100, callbacks=[cb])  # doctest: +SKIP
        >>> cb.best_step  # doctest: +SKIP
    """

    def __init__(
        self,
        evaluator: Any,
        *,
        monitor: str = "recall@20",
        patience: int = 3,
        min_delta: float = 0.0,
        restore_best_weights: bool = True,
        verbose: int = 0,
    ) -> None:
        super().__init__()
        if not callable(getattr(evaluator, "evaluate", None)):
            raise TypeError(
                "`evaluator` must be a RankingEvaluator (with `evaluate(scorer, phase)`). "
                f"Received: {type(evaluator).__name__}"
            )
        _parse_monitor(monitor)
        if not _is_int(patience) or patience < 1:
            raise ValueError(
                f"`patience` must be a positive integer. Received: patience={patience!r}"
            )
        if not _is_real(min_delta) or min_delta < 0:
            raise ValueError(
                f"`min_delta` must be a non-negative float. Received: min_delta={min_delta!r}"
            )
        self.evaluator = evaluator
        self.monitor = monitor
        self.patience = int(patience)
        self.min_delta = float(min_delta)
        self.restore_best_weights = bool(restore_best_weights)
        self.verbose = int(verbose)
        self._reset()

    def _reset(self) -> None:
        self._stopper = _EarlyStopping(self.patience, self.min_delta)
        self.history: list[EvalRecord] = []
        self.best_epoch = -1
        self._steps = 0
        self._epoch_steps = 0
        self._t0 = time.perf_counter()

    @property
    def best_value(self) -> float:
        """Best monitored validation value so far."""
        return self._stopper.best_value

    @property
    def best_step(self) -> int:
        """Training steps done at the best epoch."""
        return self._stopper.best_step

    @property
    def best_result(self) -> Any:
        """`RankingResult` of the best epoch."""
        return self._stopper.best_result

    def on_train_begin(self, logs: dict | None = None) -> None:
        """Resets the state; checks backbone size rules (NCF)."""
        self._reset()
        if callable(getattr(self.model, "check_sizes", None)):
            self.model.check_sizes()

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        """Starts counting the epoch's steps."""
        self._epoch_steps = 0

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        """Counts steps; raises `NonFiniteLossError` on a non-finite loss."""
        self._epoch_steps = batch + 1
        if logs and "loss" in logs:
            loss = float(np.asarray(logs["loss"]))
            if not math.isfinite(loss):
                raise NonFiniteLossError(self._steps + self._epoch_steps, loss)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        """Evaluates on validation, logs the metrics, updates early stopping."""
        self._steps += self._epoch_steps
        result = _evaluate(self.model, self.evaluator, "validation")
        value = monitor_value(result, self.monitor)
        metrics = _metrics_of(result, self.evaluator)
        if logs is not None:
            for k, v in metrics.items():
                logs[f"val_{k}"] = v
        loss = math.nan
        if logs and "loss" in logs:
            loss = float(np.asarray(logs["loss"]))
        if self._stopper.update(value, self._steps, result, self.model, self.restore_best_weights):
            self.best_epoch = epoch
        self.history.append(
            EvalRecord(
                step=self._steps,
                loss=loss,
                value=value,
                metrics=metrics,
                learning_rate=math.nan,
                seconds=time.perf_counter() - self._t0,
            )
        )
        logger.log(
            logging.INFO if self.verbose else logging.DEBUG,
            "epoch %d (step %d): validation %s %.5f (best %.5f at epoch %d)",
            epoch,
            self._steps,
            self.monitor,
            value,
            self.best_value,
            self.best_epoch,
        )
        if self._stopper.exhausted:
            self.model.stop_training = True

    def on_train_end(self, logs: dict | None = None) -> None:
        """Restores the best weights."""
        if self.restore_best_weights and self._stopper.best_weights is not None:
            self.model.set_weights(self._stopper.best_weights)
