"""The one compiled BPR training loop, `train_bpr`, with a per-batch hook seam.

`train_bpr` trains any model with ``train_batch(batch) -> losses`` in compiled chunks of
``eval_every`` steps (one ``tf.while_loop`` per chunk, each optimiser step optionally one XLA
cluster), evaluates on validation between chunks, early-stops, restores the best weights,
checkpoints after every chunk and resumes from a checkpoint. A `TrainingHook` adds work
inside the compiled loop (before and after every batch: e.g. PEP's budget check, an
in-training controller's actions) and on the host after every chunk.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import tensorflow as tf

from tfembsize._keras import keras
from tfembsize.training.checkpoint import TrainCheckpoint
from tfembsize.training.config import TrainConfig, default_config, monitor_value
from tfembsize.training.distributed import (
    active_strategy,
    check_strategy,
    collect_losses,
    distribute_dataset,
    distributed_chunk_runner,
)
from tfembsize.training.hooks import TrainingHook
from tfembsize.training.outcome import EvalRecord, NonFiniteLossError, TrainResult

__all__ = ["needs_autograph", "train_bpr"]

logger = logging.getLogger(__name__)


# Helpers ---------------------------------------------------------------------------------
def _metrics_of(result: Any, evaluator: Any) -> dict[str, float]:
    ks = tuple(getattr(evaluator, "ks", (5, 10, 20)))
    out: dict[str, float] = {}
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
        self.best_weights: list[np.ndarray] | None = None
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


def needs_autograph(model: Any) -> bool:
    """True if `train_bpr` must trace ``model.train_batch`` with AutoGraph.

    AutoGraph converts Python control flow on tensors (``if``, ``for``, ``len``) into graph
    ops; the library's backbones do without it, which makes tracing much faster. A model
    needs it when it sets the class attribute ``requires_autograph = True`` or is a
    TensorFlow Recommenders ``tfrs.Model`` (its tasks call ``len`` on tensors, which fails
    without AutoGraph with "len is not well defined for a symbolic Tensor").
    """
    if getattr(model, "requires_autograph", False):
        return True
    return any(
        getattr(cls, "__module__", "").startswith("tensorflow_recommenders")
        for cls in type(model).__mro__
    )


def _chunk_runner(model: Any, jit_compile: bool = False, hook: TrainingHook | None = None) -> Any:
    """A compiled loop running up to ``n`` optimiser steps; stops at a non-finite loss.

    ``runner(iterator, n, start)`` runs steps ``start + 1 .. start + n`` and returns their
    losses; it stops early after a non-finite loss or when ``hook.after_batch`` says so.

    Written as an explicit ``tf.while_loop`` and traced without AutoGraph: converting the
    Keras call stack with AutoGraph costs seconds per trace and changes nothing for our
    backbones. Models whose code needs AutoGraph are traced with it (`needs_autograph`). With
    ``jit_compile`` the optimiser step
    (the hook's in-graph work, forward, gradient, Adam update) is one XLA cluster called from
    the loop (the input pipeline stays outside); on CPU that is about 1.5x faster for MF
    (`benchmarks/jit_step.py`).
    """
    autograph = needs_autograph(model)

    def one_step(batch: Any, step: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        if hook is not None:
            hook.before_batch(batch, step)
        loss = model.train_batch(batch).loss
        stop = tf.constant(False)
        if hook is not None:
            with tf.control_dependencies([loss]):
                hook_stop = hook.after_batch(batch, loss, step)
            if hook_stop is not None:
                stop = tf.convert_to_tensor(hook_stop, tf.bool)
        return loss, stop

    step = tf.function(one_step, jit_compile=True, autograph=autograph) if jit_compile else one_step

    def run(iterator: Any, n: tf.Tensor, start: tf.Tensor) -> tf.Tensor:
        def one(i: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            loss, stop = step(iterator.get_next(), start + i + 1)
            return loss, tf.logical_and(tf.math.is_finite(loss), tf.logical_not(stop))

        return collect_losses(n, one)

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


def _schedule_key(config: TrainConfig) -> tuple[float, float, int, float]:
    return (
        float(config.learning_rate),
        float(config.decay_rate),
        int(config.decay_steps),
        float(config.min_learning_rate),
    )


def _initial_state(opt: Any) -> list[np.ndarray | None]:
    """Per optimiser variable: None if it starts at zero, else a copy of its initial value."""
    out: list[np.ndarray | None] = []
    for var in opt.variables:
        value = np.asarray(var.numpy())
        out.append(value.copy() if value.any() else None)
    return out


def _reset(opt: Any, initial: list[np.ndarray | None]) -> None:
    """Puts every variable of ``opt`` back to its value when it was built (a fresh optimiser)."""
    for var, value in zip(opt.variables, initial, strict=True):
        if value is None:
            var.assign(tf.zeros(tuple(var.shape), tf.as_dtype(var.dtype)))
        else:
            var.assign(value)


def _optimizer_and_runner(
    model: Any,
    config: TrainConfig,
    optimizer: Callable[[Any], Any] | None = None,
    hook: TrainingHook | None = None,
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
    strategy = active_strategy()
    if strategy is not None:  # a model built in strategy.scope(): strategy.run per step
        return _prepare(model, config, optimizer), distributed_chunk_runner(model, strategy)
    if optimizer is not None or hook is not None or not config.jit_compile:
        opt = _prepare(model, config, optimizer)
        return opt, _chunk_runner(model, config.jit_compile, hook)
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


def _run_steps(runner: Any, iterator: Any, n: int, done: int, config: TrainConfig) -> np.ndarray:
    """Runs up to ``n`` steps after ``done``; returns their losses or raises on a bad one."""
    losses: np.ndarray = runner(
        iterator, tf.constant(n, tf.int32), tf.constant(done, tf.int32)
    ).numpy()
    bad = np.flatnonzero(~np.isfinite(losses))
    if bad.size:
        step = done + int(bad[0]) + 1
        raise NonFiniteLossError(step, float(losses[bad[0]]), config.learning_rate_at(step - 1))
    return losses


def _dataset(
    interactions: Any,
    config: TrainConfig,
    start_step: int = 0,
    batches: Callable[[Any, int], Any] | None = None,
) -> Any:
    if batches is not None:
        dataset = batches(interactions, start_step)
    else:
        from tfembsize.data import bpr_dataset

        dataset = bpr_dataset(
            interactions, config.batch_size, seed=config.seed, start_step=start_step
        )
    strategy = active_strategy()
    return dataset if strategy is None else distribute_dataset(strategy, dataset)


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
    checkpoint_dir: str | os.PathLike[str] | None = None,
    hook: TrainingHook | None = None,
    batches: Callable[[Any, int], Any] | None = None,
) -> TrainResult:
    """Trains a BPR backbone in compiled chunks, with early stopping on validation.

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

    Called inside ``strategy.scope()`` with a model built there (``MirroredStrategy`` and
    other in-process strategies), every step runs on all replicas with ``strategy.run`` on a
    split of the global batch (`tfembsize.training.distributed`; no XLA, no hook).

    Without an ``evaluator`` there is no validation: training runs ``max_steps`` (or until
    ``hook.done``) in chunks of ``eval_every`` steps, the last weights are kept and
    ``best_step`` is the last step (e.g. PEP's pruning, which only watches the training loss).

    A ``hook`` (`TrainingHook`) works inside the compiled loop around every batch and on the
    host after every chunk (a chunk may end early when the hook asks); its state is part of
    the checkpoint. Parity refits do not run hooks.

    Args:
        model: a `tfembsize.models` backbone, a `TwoTowerRetrieval`, or any ``keras.Model``
            with ``train_batch(batch) -> losses with .loss`` and ``ranking_scorer`` /
            ``score_users``. ``train_batch`` is traced without AutoGraph unless the model
            needs it (`needs_autograph`: a ``tfrs.Model``, or a class attribute
            ``requires_autograph = True`` for Python control flow on tensors).
        split: the `tfembsize.data.Split`.
        evaluator: a `tfembsize.metrics.RankingEvaluator` for ``split``, or None for no
            validation (see above).
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
        hook: a `TrainingHook` (e.g. an in-training controller's), or None.
        batches: optional ``batches(interactions, start_step) -> tf.data.Dataset`` replacing
            the default ``bpr_dataset(interactions, batch_size, seed, start_step=start_step)``
            (e.g. `tfembsize.data.stream_dataset`, one pass over the training interactions
            per epoch). Its element ``t`` must be batch number ``start_step + t`` of the same
            sequence whatever ``start_step`` is, so that a resumed run sees the same batches;
            a finite dataset must hold at least ``max_steps`` batches.

    Returns:
        A `TrainResult`.

    Raises:
        NonFiniteLossError: a training loss was NaN or infinite (names the step).
        TypeError: ``model`` is not a BPR backbone.
        ValueError: ``checkpoint_dir`` holds a checkpoint of another recipe or model,
            ``config.jit_compile`` is set for a model that cannot be XLA-compiled (graph
            backbones), or ``refit`` is combined with a hook or with no evaluator.

    Example:
        >>> result = train_bpr(MF.create(split.num_users, split.num_items), split,
        ...                    RankingEvaluator(split))  # doctest: +SKIP
        >>> result.best_step, result.test.recall_at(20)  # doctest: +SKIP
    """
    if not callable(getattr(model, "train_batch", None)):
        raise TypeError(
            "`model` must be a tfembsize BPR backbone (MF, NCF, NGCF, LightGCN) or implement "
            f"`train_batch`. Received: {type(model).__name__}. To train (and size-search) a "
            "model of your own with its compile() and fit(), use "
            "tfembsize.search.FitEnvironment."
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
    if config.refit and (hook is not None or evaluator is None):
        raise ValueError(
            "`refit=True` needs an evaluator (it refits for the best validation step) and no hook."
        )
    if active_strategy() is not None:
        check_strategy(active_strategy(), hook, config.refit)
    t0 = time.perf_counter()
    if callable(getattr(model, "set_graph", None)):
        model.set_graph(split.train)
    if callable(getattr(model, "check_sizes", None)):
        model.check_sizes()
    initial = model.get_weights() if config.refit else None

    opt, runner = _optimizer_and_runner(model, config, optimizer, hook)
    if hook is not None:  # before the loop is traced (at its first call)
        hook.on_train_begin(model, opt)
    stopper = _EarlyStopping(config.patience, config.min_delta)
    history: list[EvalRecord] = []
    steps = 0
    last_loss = math.nan
    ckpt: TrainCheckpoint | None = None
    fingerprint: dict[str, Any] = {}
    if checkpoint_dir is not None:
        ckpt = TrainCheckpoint(checkpoint_dir)
        fingerprint = TrainCheckpoint.fingerprint(model, config, opt, hook)
        state = ckpt.load_state(fingerprint)
        if state is not None and state.get("finished"):
            ckpt.restore_into(model, opt, hook)
            if hook is not None:
                hook.set_state(state.get("hook") or {})
            more = hook is not None and not hook.done and int(state["steps"]) < config.max_steps
            if not more:
                logger.info(
                    "%s: training finished earlier; result from %s.", model.name, ckpt.directory
                )
                if hook is not None:
                    hook.on_train_end(int(state["steps"]))
                finished = ckpt.result()
                if finished is None:
                    raise ValueError(
                        f"The training checkpoint in {ckpt.directory} is marked finished but has "
                        "no result. Delete it to start over."
                    )
                return _result_from_dict(finished)
            # A hook with work left and a larger `max_steps`: train on from the last step.
        if state is not None:
            ckpt.restore_into(model, opt, hook)
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
            if hook is not None:
                hook.set_state(state.get("hook") or {})
            logger.info(
                "%s: resuming from %s after %d steps (best %s %.5f at step %d).",
                model.name,
                ckpt.directory,
                steps,
                config.monitor,
                stopper.best_value,
                stopper.best_step,
            )
    iterator = iter(_dataset(split.train, config, steps, batches))
    progbar = keras.utils.Progbar(config.max_steps, unit_name="step") if config.verbose else None
    if progbar is not None and steps:
        progbar.update(steps)
    while steps < config.max_steps and not stopper.exhausted:
        if hook is not None and hook.done:
            break
        target = min(steps + config.eval_every, config.max_steps)
        chunk: list[np.ndarray] = []
        hook_metrics: dict[str, float] = {}
        while steps < target:
            losses = _run_steps(runner, iterator, target - steps, steps, config)
            steps += int(losses.size)
            chunk.append(losses)
            if hook is not None:
                hook_metrics.update(hook.on_chunk_end(steps, losses))
                if hook.done:
                    break
        losses = np.concatenate(chunk) if chunk else np.zeros(0, np.float32)
        last_loss = float(losses.mean()) if losses.size else last_loss
        if evaluator is not None:
            result = _evaluate(model, evaluator, "validation")
            value = monitor_value(result, config.monitor)
            improved = stopper.update(value, steps, result, model, keep=config.restore_best)
            metrics = _metrics_of(result, evaluator)
        else:
            value, improved, metrics = math.nan, False, {}
            stopper.best_step = steps
        metrics.update(hook_metrics)
        record = EvalRecord(
            step=steps,
            loss=last_loss,
            value=value,
            metrics=metrics,
            learning_rate=config.learning_rate_at(steps - 1),
            seconds=time.perf_counter() - t0,
        )
        history.append(record)
        if evaluator is not None:
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
        else:
            logger.info(
                "%s step %d: loss %.5f%s, lr %.3g, %.1fs",
                model.name,
                steps,
                last_loss,
                "".join(f", {k} {v:g}" for k, v in hook_metrics.items()),
                record.learning_rate,
                record.seconds,
            )
        if progbar is not None:
            shown = [("loss", last_loss)]
            shown += [(f"val_{config.monitor}", value)] if evaluator is not None else []
            shown += list(hook_metrics.items())
            progbar.update(steps, values=shown)
        if ckpt is not None:
            ckpt.save(
                _loop_state(steps, last_loss, stopper, history, t0, improved, hook),
                fingerprint,
                model,
                opt,
                stopper.best_weights,
                None if stopper.best_result is None else stopper.best_result.to_dict(),
                hook=hook,
            )
        if stopper.exhausted:
            logger.info(
                "%s: no improvement for %d evaluations; stopping at step %d.",
                model.name,
                config.patience,
                steps,
            )
    stopped_early = stopper.exhausted and steps < config.max_steps
    if evaluator is not None and stopper.best_result is None:
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
        iterator = iter(_dataset(full, config, 0, batches))
        done = 0
        while done < refit_steps:
            n = min(config.eval_every, refit_steps - done)
            _run_steps(runner, iterator, n, done, config)
            done += n

    test = (
        _evaluate(model, evaluator, "test")
        if config.evaluate_test and evaluator is not None
        else None
    )
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
        state = _loop_state(steps, last_loss, stopper, history, t0, False, hook)
        state["finished"] = True
        ckpt.save(state, fingerprint, model, model.optimizer, None, None, out.to_dict(), hook=hook)
    if hook is not None:
        hook.on_train_end(steps)
    return out


def _loop_state(
    steps: int,
    last_loss: float,
    stopper: _EarlyStopping,
    history: list[EvalRecord],
    t0: float,
    improved: bool,
    hook: TrainingHook | None = None,
) -> dict[str, Any]:
    """JSON-ready state of the `train_bpr` loop for `TrainCheckpoint`."""
    return {
        "hook": None if hook is None else hook.get_state(),
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
