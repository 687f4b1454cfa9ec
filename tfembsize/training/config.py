"""BPR training recipes: `TrainConfig`, the staircase learning-rate schedule and presets.

The recipe: Adam with a staircase-decayed learning rate ``max(lr * gamma^(step // every),
floor)``, training in chunks of ``eval_every`` steps on `tfembsize.data.bpr_dataset` batches,
evaluating on the **validation** split after each chunk, early stopping with ``patience``,
restoring the best weights and recording the best step ``S*``. Optionally ("parity mode",
``refit=True``) the model is then retrained from its initial weights on train ∪ validation
for ``S*`` steps. The test split is evaluated once, at the very end, and never used for any
decision.

Learning rates (measured): the papers' rate 0.03 leaves MF on ML-1M at the popularity
baseline; the per-backbone defaults below (`PRESETS`) use constant 1e-3 and batch 2048, which
train. The papers' recipes are kept as named presets (``"ciess-lightgcn"``, ``"bet-finetune"``,
...). Tune the rate once per backbone and data set on validation (``benchmarks/lr_grid.py``)
and use it for every method and sparsity.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import tensorflow as tf

from tfembsize._dataclass_config import DictConfig
from tfembsize._keras import keras, register_serializable

__all__ = [
    "PRESETS",
    "StaircaseDecay",
    "TrainConfig",
    "default_config",
    "monitor_value",
]


# Learning-rate schedule --------------------------------------------------------------------
@register_serializable
class StaircaseDecay(keras.optimizers.schedules.LearningRateSchedule):
    """``max(initial_learning_rate * decay_rate^(step // decay_steps), min_learning_rate)``.

    The step-wise decay of the CIESS and BET authors' Adam recipes: multiply by ``decay_rate``
    every ``decay_steps`` steps, never below the floor. Works as the ``learning_rate`` of a
    Keras 3 or tf-keras optimiser.

    Args:
        initial_learning_rate: rate at step 0 (> 0).
        decay_rate: factor ``gamma`` in (0, 1].
        decay_steps: steps between two decays (>= 1).
        min_learning_rate: the floor (>= 0).

    Example:
        >>> schedule = StaircaseDecay(0.03, 0.95, 200, 1e-3)
        >>> round(float(schedule(400)), 6)
        0.027075
    """

    def __init__(
        self,
        initial_learning_rate: float,
        decay_rate: float = 1.0,
        decay_steps: int = 200,
        min_learning_rate: float = 0.0,
    ) -> None:
        super().__init__()
        _check_schedule(initial_learning_rate, decay_rate, decay_steps, min_learning_rate)
        self.initial_learning_rate = float(initial_learning_rate)
        self.decay_rate = float(decay_rate)
        self.decay_steps = int(decay_steps)
        self.min_learning_rate = float(min_learning_rate)

    def __call__(self, step: Any) -> tf.Tensor:
        """The learning rate at ``step``."""
        step = tf.cast(tf.convert_to_tensor(step), tf.float32)
        exponent = tf.floor(step / float(self.decay_steps))
        lr = self.initial_learning_rate * tf.pow(tf.constant(self.decay_rate, tf.float32), exponent)
        return tf.maximum(lr, self.min_learning_rate)

    def value_at(self, step: int) -> float:
        """The learning rate at ``step`` as a Python float (no TensorFlow)."""
        lr = self.initial_learning_rate * self.decay_rate ** (int(step) // self.decay_steps)
        return max(lr, self.min_learning_rate)

    def get_config(self) -> dict:
        """Constructor arguments."""
        return {
            "initial_learning_rate": self.initial_learning_rate,
            "decay_rate": self.decay_rate,
            "decay_steps": self.decay_steps,
            "min_learning_rate": self.min_learning_rate,
        }


def _check_schedule(lr: Any, gamma: Any, every: Any, floor: Any) -> None:
    if not _is_real(lr) or not lr > 0:
        raise ValueError(
            f"`learning_rate` must be a positive float. Received: learning_rate={lr!r}"
        )
    if not _is_real(gamma) or not 0 < gamma <= 1:
        raise ValueError(f"`decay_rate` must be in (0, 1]. Received: decay_rate={gamma!r}")
    if not _is_int(every) or every < 1:
        raise ValueError(
            f"`decay_steps` must be a positive integer. Received: decay_steps={every!r}"
        )
    if not _is_real(floor) or floor < 0:
        raise ValueError(
            "`min_learning_rate` must be a non-negative float. Received: "
            f"min_learning_rate={floor!r}"
        )


def _is_real(x: Any) -> bool:
    return (
        not isinstance(x, bool)
        and isinstance(x, (int, float, np.integer, np.floating))
        and math.isfinite(float(x))
    )


def _is_int(x: Any) -> bool:
    return not isinstance(x, bool) and isinstance(x, (int, np.integer))


# Config and results ------------------------------------------------------------------------
_MONITOR_HELP = '"quality", "recall@K" or "ndcg@K"'


def _parse_monitor(monitor: Any) -> tuple[str, int | None]:
    if monitor == "quality":
        return "quality", None
    if isinstance(monitor, str) and "@" in monitor:
        kind, _, k = monitor.partition("@")
        if kind in ("recall", "ndcg") and k.isdigit() and int(k) > 0:
            return kind, int(k)
    raise ValueError(f"`monitor` must be {_MONITOR_HELP}. Received: monitor={monitor!r}")


def monitor_value(result: Any, monitor: str) -> float:
    """The monitored number of a `RankingResult`: ``quality``, ``recall@K`` or ``ndcg@K``."""
    kind, k = _parse_monitor(monitor)
    if kind == "quality":
        return float(result.quality)
    if kind == "recall":
        return float(result.recall_at(k))
    return float(result.ndcg_at(k))


@dataclasses.dataclass(frozen=True)
class TrainConfig(DictConfig):
    """A BPR training recipe with validation early stopping. Defaults: the measured-good MF recipe.

    Attributes:
        learning_rate: Adam's initial rate.
        batch_size: BPR triples per step.
        decay_rate: ``gamma`` of the staircase decay (1.0: constant rate).
        decay_steps: steps between decays.
        min_learning_rate: floor of the decayed rate.
        max_steps: cap on training steps (phase 1).
        eval_every: steps per chunk; the model is evaluated on validation after each chunk.
        patience: chunks without improvement before stopping.
        min_delta: smallest increase of the monitored value that counts as improvement.
        monitor: validation number to maximise: ``"quality"``, ``"recall@K"``, ``"ndcg@K"``.
        restore_best: restore the weights of the best chunk at the end.
        refit: parity mode: after early stopping, retrain from the initial weights on train ∪
            validation for ``S*`` steps, the best step count found on validation (test is
            still never used for a decision).
        evaluate_test: evaluate on test once at the end (never used for any decision).
        seed: seed of the BPR sampler.
        verbose: 0 silent (logging only), 1 a Keras progress bar.
        jit_compile: compile each optimiser step with XLA (about 1.5x faster for MF on CPU).
            Under XLA TensorFlow drops assertions, so ids are not range-checked inside the
            step (the BPR pipeline only produces valid ids).

    Example:
        >>> TrainConfig.preset("lightgcn", max_steps=2000).learning_rate
        0.001
    """

    learning_rate: float = 1e-3
    batch_size: int = 2048
    decay_rate: float = 1.0
    decay_steps: int = 200
    min_learning_rate: float = 0.0
    max_steps: int = 100_000
    eval_every: int = 1000
    patience: int = 3
    min_delta: float = 0.0
    monitor: str = "recall@20"
    restore_best: bool = True
    refit: bool = False
    evaluate_test: bool = True
    seed: int = 0
    verbose: int = 0
    jit_compile: bool = False

    def __post_init__(self) -> None:
        _check_schedule(
            self.learning_rate, self.decay_rate, self.decay_steps, self.min_learning_rate
        )
        for name in ("batch_size", "max_steps", "eval_every", "patience"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise ValueError(f"`{name}` must be a positive integer. Received: {name}={value!r}")
        if not _is_real(self.min_delta) or self.min_delta < 0:
            raise ValueError(
                f"`min_delta` must be a non-negative float. Received: min_delta={self.min_delta!r}"
            )
        _parse_monitor(self.monitor)
        if not _is_int(self.seed) or self.seed < 0:
            raise ValueError(f"`seed` must be a non-negative integer. Received: seed={self.seed!r}")
        if not _is_int(self.verbose) or self.verbose < 0:
            raise ValueError(f"`verbose` must be 0 or 1. Received: verbose={self.verbose!r}")
        if not isinstance(self.jit_compile, bool):
            raise ValueError(
                f"`jit_compile` must be True or False. Received: jit_compile={self.jit_compile!r}"
            )

    def schedule(self) -> Any:
        """The learning rate: a float if constant, else a `StaircaseDecay`."""
        if self.decay_rate == 1.0:
            return float(self.learning_rate)
        return StaircaseDecay(
            self.learning_rate, self.decay_rate, self.decay_steps, self.min_learning_rate
        )

    def learning_rate_at(self, step: int) -> float:
        """The learning rate used at ``step``."""
        if self.decay_rate == 1.0:
            return float(self.learning_rate)
        lr = self.learning_rate * self.decay_rate ** (int(step) // self.decay_steps)
        return max(lr, self.min_learning_rate)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> TrainConfig:
        """A named recipe from `PRESETS` (backbone defaults or the papers' recipes)."""
        if name not in PRESETS:
            raise ValueError(f"Unknown preset {name!r}. Known presets: {sorted(PRESETS)}.")
        return PRESETS[name].replace(**overrides)


PRESETS: dict[str, TrainConfig] = {
    # Backbone defaults (this library's choice): constant Adam 1e-3, batch 2048. MF: measured on
    # ML-1M validation (benchmarks/results/lr_grid.md: 1e-3 beats 3e-3, 1e-2, 3e-2 and the papers'
    # 0.03 recipe). LightGCN: the LightGCN authors' recipe (1e-3, batch 2048). NGCF and NCF:
    # not measured here; 1e-3 is the NCF authors' rate (NGCF's authors use 1e-4, batch 1024).
    # Tune per data set on validation, never on test, with benchmarks/lr_grid.py.
    "mf": TrainConfig(learning_rate=1e-3, batch_size=2048),
    "lightgcn": TrainConfig(learning_rate=1e-3, batch_size=2048),
    "ngcf": TrainConfig(learning_rate=1e-3, batch_size=2048),
    "ncf": TrainConfig(learning_rate=1e-3, batch_size=2048),
    # The recipes of the CIESS and BET authors' released code: batch 10 000, lr 0.03 decayed.
    "ciess-lightgcn": TrainConfig(
        learning_rate=0.03,
        batch_size=10_000,
        decay_rate=0.9,
        decay_steps=200,
        min_learning_rate=1e-3,
        max_steps=2000,
        eval_every=2000,
    ),
    "ciess-ngcf": TrainConfig(
        learning_rate=0.03,
        batch_size=10_000,
        decay_rate=0.9,
        decay_steps=100,
        min_learning_rate=1e-3,
        max_steps=3000,
        eval_every=3000,
    ),
    "ciess-ncf": TrainConfig(
        learning_rate=0.03,
        batch_size=10_000,
        decay_rate=0.9,
        decay_steps=50,
        min_learning_rate=1e-4,
        max_steps=1500,
        eval_every=1500,
    ),
    "bet-finetune": TrainConfig(
        learning_rate=0.03,
        batch_size=10_000,
        decay_rate=0.98,
        decay_steps=200,
        min_learning_rate=1e-3,
    ),
    "paper-retrain": TrainConfig(
        learning_rate=0.03,
        batch_size=10_000,
        decay_rate=0.95,
        decay_steps=200,
        min_learning_rate=1e-3,
        eval_every=2000,
        patience=3,
    ),
}
"""Named recipes. Backbone names (``"mf"``, ``"ncf"``, ``"ngcf"``, ``"lightgcn"``) are the
defaults `train_bpr` uses; the ``ciess-*`` presets are one CIESS search iteration (fixed step
count, one evaluation at the end), ``bet-finetune`` BET's fine-tuning, ``paper-retrain`` the
papers' pretraining/final retraining (lr 0.03 does not train MF on ML-1M: it stays near the
popularity baseline, benchmarks/results/lr_grid.md)."""


def default_config(model_or_backbone: Any) -> TrainConfig:
    """The default recipe of a backbone, or `TrainConfig()` for anything else.

    Args:
        model_or_backbone: a model (its ``backbone`` attribute) or one of ``"mf"``,
            ``"ncf"``, ``"ngcf"``, ``"lightgcn"``.
    """
    name = (
        model_or_backbone
        if isinstance(model_or_backbone, str)
        else getattr(model_or_backbone, "backbone", None)
    )
    return PRESETS[name] if name in ("mf", "ncf", "ngcf", "lightgcn") else TrainConfig()
