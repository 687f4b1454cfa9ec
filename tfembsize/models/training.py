"""BPR training recipes: `train_bpr` (custom loop) and `ValidationRanking` (``model.fit``).

The recipe (spec §1.3, §2): Adam with a staircase-decayed learning rate
``max(lr * gamma^(step // every), floor)``, training in chunks of ``eval_every`` steps on
`tfembsize.data.bpr_dataset` batches, evaluating on the **validation** split after each chunk,
early stopping with ``patience``, restoring the best weights and recording the best step
``S*``. Optionally ("parity mode", ``refit=True``) the model is then retrained from its
initial weights on train ∪ validation for ``S*`` steps. The test split is evaluated once, at
the very end, and never used for any decision.

Learning rates (spec §2, measured warning): the papers' lr 0.03 leaves MF on ML-1M at the
popularity baseline; the per-backbone defaults below (`PRESETS`) use constant 1e-3 and batch
2048, which train. The papers' recipes are kept as named presets (``"ciess-lightgcn"``,
``"bet-finetune"``, ...). Tune the rate once per backbone and data set on validation
(``benchmarks/lr_grid.py``) and use it for every method and sparsity.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import tensorflow as tf

from tfembsize._keras import keras, register_serializable
from tfembsize.models.train_checkpoint import TrainCheckpoint

__all__ = [
    "StaircaseDecay",
    "TrainConfig",
    "TrainResult",
    "EvalRecord",
    "NonFiniteLossError",
    "PRESETS",
    "default_config",
    "train_bpr",
    "ValidationRanking",
    "monitor_value",
]

logger = logging.getLogger(__name__)


# Learning-rate schedule --------------------------------------------------------------------
@register_serializable
class StaircaseDecay(keras.optimizers.schedules.LearningRateSchedule):
    """``max(initial_learning_rate * decay_rate^(step // decay_steps), min_learning_rate)``.

    The step-wise decay of the papers' Adam recipes (spec §2): multiply by ``decay_rate``
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
class TrainConfig:
    """A BPR training recipe (spec §1.3, §2). Defaults: the measured-good MF recipe.

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
            validation for ``S*`` steps (spec §1.3 step 2).
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

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """JSON-ready dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainConfig:
        """Inverse of `to_dict`."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"Unknown TrainConfig fields {unknown}.")
        return cls(**dict(d))

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> TrainConfig:
        """A named recipe from `PRESETS` (backbone defaults or the papers' recipes)."""
        if name not in PRESETS:
            raise ValueError(f"Unknown preset {name!r}. Known presets: {sorted(PRESETS)}.")
        return PRESETS[name].replace(**overrides)


PRESETS: dict[str, TrainConfig] = {
    # Backbone defaults [ours]: constant Adam 1e-3, batch 2048. MF: measured on ML-1M
    # validation (benchmarks/results/lr_grid.md: 1e-3 beats 3e-3, 1e-2, 3e-2 and the papers'
    # 0.03 recipe). LightGCN: the LightGCN authors' recipe (1e-3, batch 2048). NGCF and NCF:
    # not measured here; 1e-3 is the NCF authors' rate (NGCF's authors use 1e-4, batch 1024).
    # Tune per data set on validation (spec §2) with benchmarks/lr_grid.py.
    "mf": TrainConfig(learning_rate=1e-3, batch_size=2048),
    "lightgcn": TrainConfig(learning_rate=1e-3, batch_size=2048),
    "ngcf": TrainConfig(learning_rate=1e-3, batch_size=2048),
    "ncf": TrainConfig(learning_rate=1e-3, batch_size=2048),
    # The papers' recipes [code] (spec §2 table); batch 10 000, lr 0.03 decayed.
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
papers' pretraining/final retraining (lr 0.03 does not train MF on ML-1M; see the spec)."""


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
    metrics: dict
    learning_rate: float
    seconds: float

    def to_dict(self) -> dict:
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

    def to_dict(self) -> dict:
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


# Helpers ---------------------------------------------------------------------------------
def _metrics_of(result: Any, evaluator: Any) -> dict:
    ks = tuple(getattr(evaluator, "ks", (5, 10, 20)))
    out = {}
    for k in ks:
        out[f"recall@{k}"] = float(result.recall_at(k))
        out[f"ndcg@{k}"] = float(result.ndcg_at(k))
    out["quality"] = float(result.quality)
    return out


def _evaluate(model: Any, evaluator: Any, phase: str) -> Any:
    scorer = model.ranking_scorer() if hasattr(model, "ranking_scorer") else model.score_users
    return evaluator.evaluate(scorer, phase=phase)


class _EarlyStopping:
    """Best-value tracking and patience, shared by `train_bpr` and `ValidationRanking`."""

    def __init__(self, patience: int, min_delta: float) -> None:
        self.patience = patience
        self.min_delta = min_delta
        self.best_value = -math.inf
        self.best_step = 0
        self.best_result: Any = None
        self.best_weights: list | None = None
        self.wait = 0

    def update(self, value: float, step: int, result: Any, model: Any, keep: bool) -> bool:
        """Records an evaluation; returns True if it improved on the best."""
        if math.isfinite(value) and value > self.best_value + self.min_delta:
            self.best_value = value
            self.best_step = step
            self.best_result = result
            self.best_weights = model.get_weights() if keep else None
            self.wait = 0
            return True
        self.wait += 1
        return False

    @property
    def exhausted(self) -> bool:
        return self.wait >= self.patience


def _chunk_runner(model: Any, jit_compile: bool = False) -> Any:
    """A compiled loop running up to ``n`` optimiser steps; stops at a non-finite loss.

    Written as an explicit ``tf.while_loop`` and traced without AutoGraph: converting the
    Keras call stack with AutoGraph costs seconds per trace and changes nothing for our
    backbones. Models whose code needs AutoGraph (TFRS tasks call ``len`` on tensors) set the
    class attribute ``requires_autograph = True``. With ``jit_compile`` the optimiser step
    (forward, gradient, Adam update) is one XLA cluster called from the loop (the input
    pipeline stays outside); on CPU that is about 1.5x faster for MF (`benchmarks/jit_step.py`).
    """
    autograph = bool(getattr(model, "requires_autograph", False))

    def one_step(batch: Any) -> tf.Tensor:
        return model.train_batch(batch).loss

    step = tf.function(one_step, jit_compile=True, autograph=autograph) if jit_compile else one_step

    def run(iterator: Any, n: tf.Tensor) -> tf.Tensor:
        def cond(i: tf.Tensor, finite: tf.Tensor, losses: tf.TensorArray) -> tf.Tensor:
            return tf.logical_and(i < n, finite)

        def body(
            i: tf.Tensor, finite: tf.Tensor, losses: tf.TensorArray
        ) -> tuple[tf.Tensor, tf.Tensor, tf.TensorArray]:
            loss = step(iterator.get_next())
            return i + 1, tf.math.is_finite(loss), losses.write(i, loss)

        start = (
            tf.constant(0, tf.int32),
            tf.constant(True),
            tf.TensorArray(tf.float32, size=0, dynamic_size=True),
        )
        _, _, losses = tf.while_loop(cond, body, start)
        return losses.stack()

    runner = tf.function(run, autograph=autograph)
    # Each new model (and, without XLA, each `train_bpr` call) traces its own loop, so
    # TensorFlow's "frequent retracing" warning, keyed by the code object, would fire in every
    # search. XLA loops are reused per model and schedule (`_optimizer_and_runner`).
    for fn in (runner, step):
        if isinstance(fn, tf.types.experimental.PolymorphicFunction):
            fn._omit_frequent_tracing_warning = True
    return runner


def _prepare(model: Any, config: TrainConfig, optimizer: Callable[[Any], Any] | None = None) -> Any:
    lr = config.schedule()
    opt = keras.optimizers.Adam(learning_rate=lr) if optimizer is None else optimizer(lr)
    if not hasattr(opt, "apply_gradients"):
        raise TypeError(
            "`optimizer` must be a callable returning a Keras optimizer for a learning rate. "
            f"It returned: {type(opt).__name__}"
        )
    model.compile(optimizer=opt)
    opt.build(model.trainable_variables)
    return opt


_STEP_CACHE_ATTR = "_tfembsize_step_cache"


def _schedule_key(config: TrainConfig) -> tuple:
    return (
        float(config.learning_rate),
        float(config.decay_rate),
        int(config.decay_steps),
        float(config.min_learning_rate),
    )


def _initial_state(opt: Any) -> list:
    """Per optimiser variable: None if it starts at zero, else a copy of its initial value."""
    out = []
    for var in opt.variables:
        value = np.asarray(var.numpy())
        out.append(value.copy() if value.any() else None)
    return out


def _reset(opt: Any, initial: list) -> None:
    """Puts every variable of ``opt`` back to its value when it was built (a fresh optimiser)."""
    for var, value in zip(opt.variables, initial, strict=True):
        if value is None:
            var.assign(tf.zeros(tuple(var.shape), tf.as_dtype(var.dtype)))
        else:
            var.assign(value)


def _optimizer_and_runner(
    model: Any, config: TrainConfig, optimizer: Callable[[Any], Any] | None = None
) -> tuple[Any, Any]:
    """A freshly initialised Adam for ``config`` and the compiled chunk loop that uses it.

    With ``jit_compile`` and the default Adam, the optimiser and the XLA-compiled loop are
    cached on the model, keyed by the learning-rate schedule and the trainable variables, and
    reused by the next `train_bpr` call with its optimiser state reset to the initial values
    (the same numbers as a new Adam). Without the cache every call traced and compiled a new
    XLA executable, and TensorFlow keeps every compiled executable for the life of the
    process: a search fine-tuning the same model hundreds of times (BET) grew by about 6 MB
    per call (MF, ML-1M) and spent seconds per call compiling.
    """
    if optimizer is not None or not config.jit_compile:
        return _prepare(model, config, optimizer), _chunk_runner(model, config.jit_compile)
    cache = getattr(model, _STEP_CACHE_ATTR, None)
    if cache is None:
        cache = {}
        # Not tracked by Keras (the cache holds the optimiser and a function of the model).
        object.__setattr__(model, _STEP_CACHE_ATTR, cache)
    key = (_schedule_key(config), tuple(id(v) for v in model.trainable_variables))
    entry = cache.get(key)
    if entry is None:
        opt = _prepare(model, config, None)
        entry = (opt, _chunk_runner(model, True), _initial_state(opt))
        cache[key] = entry
        return entry[0], entry[1]
    opt, runner, initial = entry
    _reset(opt, initial)
    if getattr(model, "optimizer", None) is not opt:
        model.compile(optimizer=opt)
    return opt, runner


def _run_steps(
    model: Any,
    runner: Any,
    iterator: Any,
    n: int,
    done: int,
    config: TrainConfig,
) -> float:
    """Runs ``n`` steps after ``done``; returns their mean loss or raises on a bad one."""
    losses = runner(iterator, tf.constant(n, tf.int32)).numpy()
    bad = np.flatnonzero(~np.isfinite(losses))
    if bad.size:
        step = done + int(bad[0]) + 1
        raise NonFiniteLossError(step, float(losses[bad[0]]), config.learning_rate_at(step - 1))
    return float(losses.mean())


def _dataset(interactions: Any, config: TrainConfig, start_step: int = 0) -> Any:
    from tfembsize.data import bpr_dataset

    return bpr_dataset(interactions, config.batch_size, seed=config.seed, start_step=start_step)


def _train_validation(split: Any) -> Any:
    fn = getattr(split, "train_validation", None)
    if callable(fn):
        return fn()
    return split.train.union(split.validation)


# The custom-loop recipe --------------------------------------------------------------------
def train_bpr(
    model: Any,
    split: Any,
    evaluator: Any,
    *,
    config: TrainConfig | None = None,
    optimizer: Callable[[Any], Any] | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
) -> TrainResult:
    """Trains a BPR backbone with early stopping on validation (spec §1.3, §2).

    1. Compiles ``model`` with a fresh Adam whose rate follows ``config`` (a float, or a
       `StaircaseDecay`). Graph backbones get their graph from ``split.train``. With
       ``jit_compile`` the Adam and the XLA-compiled loop are kept on the model and reused,
       state reset, by later calls with the same schedule (one compilation per model and
       schedule, not per call).
    2. Trains in chunks of ``eval_every`` steps on ``bpr_dataset(split.train, batch_size,
       seed)`` (one compiled loop per chunk), evaluates on **validation** after each chunk and
       stops when the monitored value has not improved for ``patience`` chunks or at
       ``max_steps``. The best weights are restored (``restore_best``) and the best step is
       ``S*``.
    3. Parity mode (``refit=True``): restores the initial weights, rebuilds a graph model's
       graph from train ∪ validation, and trains ``S*`` steps on train ∪ validation.
    4. Evaluates on test once (``evaluate_test``). Test results never influence training.

    Args:
        model: a `tfembsize.models` backbone, a `TwoTowerRetrieval`, or any ``keras.Model``
            with ``train_batch(batch) -> losses with .loss`` and ``ranking_scorer`` /
            ``score_users``.
        split: the `tfembsize.data.Split`.
        evaluator: a `tfembsize.metrics.RankingEvaluator` for ``split``.
        config: the recipe; default `default_config(model)`.
        optimizer: optional factory ``learning_rate -> optimizer`` replacing Adam (e.g.
            ``lambda lr: PEPAdam(lr, threshold_lr=1e-3)`` for PEP); it gets the config's
            rate (a float or a `StaircaseDecay`) and is called again for the refit.
        checkpoint_dir: if given, the run's state (weights, optimiser, best weights, early
            stopping, history) is written there atomically after every validation chunk,
            and a rerun of the same call continues after the last chunk written, on the
            same batches (`TrainCheckpoint`). A finished run's directory holds its result:
            rerunning returns it (model set to the final weights) without training. The
            parity refit, if any, is redone after a crash during it.

    Returns:
        A `TrainResult`.

    Raises:
        NonFiniteLossError: a training loss was NaN or infinite (names the step).
        TypeError: ``model`` is not a BPR backbone.
        ValueError: ``checkpoint_dir`` holds a checkpoint of another recipe or model, or
            ``config.jit_compile`` is set for a model that cannot be XLA-compiled (graph
            backbones).

    Example:
        >>> result = train_bpr(MF.create(split.num_users, split.num_items), split,
        ...                    RankingEvaluator(split))  # doctest: +SKIP
        >>> result.best_step, result.test.recall_at(20)  # doctest: +SKIP
    """
    if not callable(getattr(model, "train_batch", None)):
        raise TypeError(
            "`model` must be a tfembsize BPR backbone (MF, NCF, NGCF, LightGCN) or implement "
            f"`train_batch`. Received: {type(model).__name__}"
        )
    if config is None:
        config = default_config(model)
    if not isinstance(config, TrainConfig):
        raise TypeError(f"`config` must be a TrainConfig. Received: {type(config).__name__}")
    if config.jit_compile and getattr(model, "supports_jit", True) is False:
        raise ValueError(
            f"`jit_compile=True` is not supported for {type(model).__name__}: its graph "
            "propagation (sparse-dense matmul) has no XLA kernel. Use jit_compile=False."
        )
    t0 = time.perf_counter()
    if callable(getattr(model, "set_graph", None)):
        model.set_graph(split.train)
    if callable(getattr(model, "check_sizes", None)):
        model.check_sizes()
    initial = model.get_weights() if config.refit else None

    opt, runner = _optimizer_and_runner(model, config, optimizer)
    stopper = _EarlyStopping(config.patience, config.min_delta)
    history: list[EvalRecord] = []
    steps = 0
    last_loss = math.nan
    ckpt = fingerprint = None
    if checkpoint_dir is not None:
        ckpt = TrainCheckpoint(checkpoint_dir)
        fingerprint = TrainCheckpoint.fingerprint(model, config, opt)
        state = ckpt.load_state(fingerprint)
        if state is not None and state.get("finished"):
            logger.info(
                "%s: training finished earlier; result from %s.", model.name, ckpt.directory
            )
            ckpt.restore_into(model, opt)
            return _result_from_dict(ckpt.result())
        if state is not None:
            ckpt.restore_into(model, opt)
            steps = int(state["steps"])
            last_loss = float(state["last_loss"])
            stopper.best_value = float(state["best_value"])
            stopper.best_step = int(state["best_step"])
            stopper.wait = int(state["wait"])
            best = ckpt.best_result()
            stopper.best_result = None if best is None else _ranking_from_dict(best)
            stopper.best_weights = ckpt.best_weights() if config.restore_best else None
            history = [EvalRecord(**h) for h in state["history"]]
            t0 -= float(state["elapsed"])
            logger.info(
                "%s: resuming from %s after %d steps (best %s %.5f at step %d).",
                model.name,
                ckpt.directory,
                steps,
                config.monitor,
                stopper.best_value,
                stopper.best_step,
            )
    iterator = iter(_dataset(split.train, config, start_step=steps))
    progbar = keras.utils.Progbar(config.max_steps, unit_name="step") if config.verbose else None
    if progbar is not None and steps:
        progbar.update(steps)
    while steps < config.max_steps and not stopper.exhausted:
        n = min(config.eval_every, config.max_steps - steps)
        last_loss = _run_steps(model, runner, iterator, n, steps, config)
        steps += n
        result = _evaluate(model, evaluator, "validation")
        value = monitor_value(result, config.monitor)
        improved = stopper.update(value, steps, result, model, keep=config.restore_best)
        record = EvalRecord(
            step=steps,
            loss=last_loss,
            value=value,
            metrics=_metrics_of(result, evaluator),
            learning_rate=config.learning_rate_at(steps - 1),
            seconds=time.perf_counter() - t0,
        )
        history.append(record)
        logger.info(
            "%s step %d: loss %.5f, validation %s %.5f (best %.5f at step %d), lr %.3g, %.1fs",
            model.name,
            steps,
            last_loss,
            config.monitor,
            value,
            stopper.best_value,
            stopper.best_step,
            record.learning_rate,
            record.seconds,
        )
        if progbar is not None:
            progbar.update(steps, values=[("loss", last_loss), (f"val_{config.monitor}", value)])
        if ckpt is not None:
            ckpt.save(
                _loop_state(steps, last_loss, stopper, history, t0, improved),
                fingerprint,
                model,
                opt,
                stopper.best_weights,
                None if stopper.best_result is None else stopper.best_result.to_dict(),
            )
        if stopper.exhausted:
            logger.info(
                "%s: no improvement for %d evaluations; stopping at step %d.",
                model.name,
                config.patience,
                steps,
            )
    stopped_early = stopper.exhausted and steps < config.max_steps
    if stopper.best_result is None:
        raise FloatingPointError(
            "No validation evaluation gave a finite value of "
            f"{config.monitor!r}; the model did not produce usable scores."
        )
    if config.restore_best and stopper.best_weights is not None:
        model.set_weights(stopper.best_weights)

    refit_steps = 0
    if config.refit:
        refit_steps = stopper.best_step
        logger.info("%s: parity refit on train+validation for %d steps.", model.name, refit_steps)
        model.set_weights(initial)
        full = _train_validation(split)
        if callable(getattr(model, "set_graph", None)):
            model.set_graph(full)
        _, runner = _optimizer_and_runner(model, config, optimizer)
        iterator = iter(_dataset(full, config))
        done = 0
        while done < refit_steps:
            n = min(config.eval_every, refit_steps - done)
            _run_steps(model, runner, iterator, n, done, config)
            done += n

    test = _evaluate(model, evaluator, "test") if config.evaluate_test else None
    if test is not None:
        logger.info(
            "%s: test %s %.5f (best validation step %d).",
            model.name,
            config.monitor,
            monitor_value(test, config.monitor),
            stopper.best_step,
        )
    out = TrainResult(
        best_step=stopper.best_step,
        steps=steps,
        best_value=stopper.best_value,
        monitor=config.monitor,
        validation=stopper.best_result,
        test=test,
        history=tuple(history),
        stopped_early=stopped_early,
        refit_steps=refit_steps,
        final_loss=last_loss,
        wall_time=time.perf_counter() - t0,
        config=config,
    )
    if ckpt is not None:
        state = _loop_state(steps, last_loss, stopper, history, t0, False)
        state["finished"] = True
        ckpt.save(state, fingerprint, model, model.optimizer, None, None, out.to_dict())
    return out


def _loop_state(
    steps: int,
    last_loss: float,
    stopper: _EarlyStopping,
    history: list[EvalRecord],
    t0: float,
    improved: bool,
) -> dict:
    """JSON-ready state of the `train_bpr` loop for `TrainCheckpoint`."""
    return {
        "steps": steps,
        "last_loss": last_loss,
        "best_value": stopper.best_value,
        "best_step": stopper.best_step,
        "wait": stopper.wait,
        "history": [h.to_dict() for h in history],
        "elapsed": time.perf_counter() - t0,
        "finished": False,
        "best_unchanged": not improved,
    }


def _ranking_from_dict(d: Mapping[str, Any]) -> Any:
    from tfembsize.metrics import RankingResult

    return RankingResult.from_dict(d)


def _result_from_dict(d: Mapping[str, Any]) -> TrainResult:
    """Inverse of `TrainResult.to_dict`."""
    return TrainResult(
        best_step=int(d["best_step"]),
        steps=int(d["steps"]),
        best_value=float(d["best_value"]),
        monitor=d["monitor"],
        validation=None if d["validation"] is None else _ranking_from_dict(d["validation"]),
        test=None if d["test"] is None else _ranking_from_dict(d["test"]),
        history=tuple(EvalRecord(**h) for h in d["history"]),
        stopped_early=bool(d["stopped_early"]),
        refit_steps=int(d["refit_steps"]),
        final_loss=float(d["final_loss"]),
        wall_time=float(d["wall_time"]),
        config=TrainConfig.from_dict(d["config"]),
    )


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
