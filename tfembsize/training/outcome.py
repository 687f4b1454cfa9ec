"""What a training run returns: `TrainResult`, `EvalRecord`, `NonFiniteLossError`, `Outcome`."""

from __future__ import annotations

import dataclasses
from typing import Any

from tfembsize.training.config import TrainConfig

__all__ = ["EvalRecord", "NonFiniteLossError", "Outcome", "TrainResult"]


@dataclasses.dataclass(frozen=True)
class EvalRecord:
    """One validation evaluation during training.

    Attributes:
        step: training steps done when evaluating.
        loss: mean training loss over the chunk that ended at ``step``.
        value: the monitored validation number.
        metrics: validation Recall@k, NDCG@k and quality.
        learning_rate: the rate of the chunk's last step.
        seconds: wall time since training started.
    """

    step: int
    loss: float
    value: float
    metrics: dict[str, Any]
    learning_rate: float
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """What `train_bpr` did.

    Attributes:
        best_step: ``S*``, the step count of the best validation evaluation.
        steps: training steps run in phase 1 (train split).
        best_value: the monitored validation number at ``S*``.
        monitor: its name.
        validation: the `RankingResult` on validation at ``S*``.
        test: the `RankingResult` on test at the end (None if ``evaluate_test=False``). With
            ``refit=True`` it is the refitted model's.
        history: every validation evaluation, in order.
        stopped_early: True if patience ran out before ``max_steps``.
        refit_steps: steps of the parity-mode refit (0 without refit).
        final_loss: mean training loss of the last chunk of phase 1.
        wall_time: seconds, everything included.
        config: the recipe.
    """

    best_step: int
    steps: int
    best_value: float
    monitor: str
    validation: Any
    test: Any
    history: tuple[EvalRecord, ...]
    stopped_early: bool
    refit_steps: int
    final_loss: float
    wall_time: float
    config: TrainConfig

    @property
    def loss(self) -> float:
        """Alias of ``final_loss``."""
        return self.final_loss

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (ranking results through their ``to_dict``)."""

        def res(r: Any) -> Any:
            return None if r is None else r.to_dict()

        return {
            "best_step": self.best_step,
            "steps": self.steps,
            "best_value": self.best_value,
            "monitor": self.monitor,
            "validation": res(self.validation),
            "test": res(self.test),
            "history": [h.to_dict() for h in self.history],
            "stopped_early": self.stopped_early,
            "refit_steps": self.refit_steps,
            "final_loss": self.final_loss,
            "wall_time": self.wall_time,
            "config": self.config.to_dict(),
        }


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite.

    Attributes:
        step: the 1-based training step whose loss was not finite.
        loss: that loss value.
        learning_rate: the learning rate of that step (None if unknown).
    """

    def __init__(self, step: int, loss: float, learning_rate: float | None = None) -> None:
        self.step = int(step)
        self.loss = float(loss)
        self.learning_rate = learning_rate
        lr = "" if learning_rate is None else f" (learning rate {learning_rate:.3g})"
        super().__init__(
            f"Training diverged: the BPR loss is {self.loss} at step {self.step}{lr}. Lower "
            "the learning rate or raise the L2 weight."
        )


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What one training of a plan did, without raising on divergence (`train_plan`).

    Attributes:
        finite: False when the loss or the weights became NaN/inf (``message`` says where).
        steps: optimiser steps run (the failing step when the loss diverged).
        best_step: the step of the restored weights (None when training diverged).
        loss: the last finite mean training loss (None if unknown or not finite).
        validation: the `RankingResult` on validation of the weights kept (None if diverged).
        message: why training failed (empty when ``finite``).
        wall_time: seconds, over every resumed segment of a checkpointed run.
        usable_params: usable parameters of the trained model.
        num_rows: rows of its searchable tables.
        model: the trained model.
    """

    finite: bool
    steps: int
    best_step: int | None
    loss: float | None
    validation: Any
    message: str = ""
    wall_time: float | None = None
    usable_params: int = 0
    num_rows: int = 0
    model: Any = dataclasses.field(default=None, repr=False, compare=False)
