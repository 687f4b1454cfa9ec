"""The one "apply plan -> train -> evaluate" path of search environments and retraining.

`train_plan` applies a `SizePlan` to a built model, checks the budget, trains it with a
recipe (`train_bpr` by default) and scores the weights it keeps on validation, returning a
typed `Outcome`. It never raises on divergence: a NaN loss or NaN weights give
``Outcome(finite=False, message=...)``, so a search can record a failed step and go on.
`tfembsize.search.KerasEnvironment` (search steps) and the paper protocol's retraining both
go through it.
"""

from __future__ import annotations

import inspect
import math
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from tfembsize.budget import Budget
from tfembsize.layers.utils import model_usage
from tfembsize.plan import SizePlan
from tfembsize.training.config import TrainConfig, default_config
from tfembsize.training.loop import train_bpr
from tfembsize.training.outcome import NonFiniteLossError, Outcome

__all__ = [
    "accepts_keyword",
    "model_scorer",
    "resolve_config",
    "steps_per_epoch",
    "train_plan",
    "weights_finite",
]


def steps_per_epoch(split: Any, batch_size: int) -> int:
    """Optimiser steps in one pass over the training interactions: ceil(|train| / batch)."""
    return max(1, math.ceil(int(split.train.num_interactions) / int(batch_size)))


def resolve_config(
    config: TrainConfig | None,
    model: Any,
    split: Any,
    *,
    train_steps: int | None = None,
    train_epochs: float | None = None,
    seed: int | None = None,
) -> TrainConfig:
    """The `TrainConfig` of one run.

    ``None`` takes the backbone's default recipe. ``train_steps`` (or ``train_epochs``,
    converted with the recipe's batch size) turns it into a fixed-length run: that many steps
    and one validation evaluation at the end, no early stopping. ``seed`` reseeds the BPR
    sampler. Test evaluation is always off: the caller evaluates test when it reports.

    Raises:
        TypeError: ``config`` is not a `TrainConfig`.
        ValueError: both ``train_steps`` and ``train_epochs`` are given.
    """
    if config is None:
        config = default_config(model)
    if not isinstance(config, TrainConfig):
        raise TypeError(
            "The training recipe must be a tfembsize.training.TrainConfig. Received: "
            f"{type(config).__name__}"
        )
    if train_steps is not None and train_epochs is not None:
        raise ValueError(
            "Pass at most one of `train_steps` and `train_epochs`. Received: "
            f"train_steps={train_steps}, train_epochs={train_epochs}"
        )
    if train_epochs is not None:
        train_steps = max(
            1, math.ceil(float(train_epochs) * steps_per_epoch(split, config.batch_size))
        )
    changes: dict[str, Any] = {"evaluate_test": False}
    if train_steps is not None:
        changes.update(max_steps=int(train_steps), eval_every=int(train_steps))
    if seed is not None:
        changes["seed"] = int(seed) % (2**31 - 1)
    return config.replace(**changes)


def model_scorer(model: Any) -> Any:
    """What `RankingEvaluator.evaluate` takes for ``model``.

    The model's own ``ranking_scorer()`` decides first; otherwise dot-product backbones
    (``representations()``) give the fast ``(user_matrix, item_matrix)`` path, and any other
    model must have ``score_users(user_ids) -> [b, num_items]``.

    Raises:
        TypeError: the model offers none of the three.
    """
    if callable(getattr(model, "ranking_scorer", None)):
        return model.ranking_scorer()
    if callable(getattr(model, "representations", None)):
        users, items = model.representations(training=False)
        return (users, items)
    if callable(getattr(model, "score_users", None)):
        return model.score_users
    raise TypeError(
        f"{type(model).__name__} has neither `representations()` nor `score_users(user_ids)`; "
        "the evaluator cannot rank items with it."
    )


def accepts_keyword(fn: Callable[..., Any], name: str) -> bool:
    """True if ``fn`` takes a keyword argument ``name`` (or ``**kwargs``)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == name or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def weights_finite(model: Any) -> bool:
    """Whether every floating-point trainable weight of ``model`` is finite."""
    for v in model.trainable_weights:
        w = np.asarray(v.numpy())
        if w.dtype.kind == "f" and not np.all(np.isfinite(w)):
            return False
    return True


def train_plan(
    model: Any,
    split: Any,
    evaluator: Any,
    config: TrainConfig | None = None,
    *,
    plan: SizePlan | None = None,
    budget: Budget | None = None,
    budget_what: str = "model to train",
    train_fn: Callable[..., Any] = train_bpr,
    train_steps: int | None = None,
    train_epochs: float | None = None,
    seed: int | None = None,
    checkpoint_dir: str | os.PathLike[str] | None = None,
) -> Outcome:
    """Applies ``plan`` to ``model``, trains it and scores the kept weights on validation.

    Args:
        model: a built model whose searchable layers ``plan`` names (already initialised
            the way the caller wants: fresh, from a snapshot, or as it is).
        split: the data split.
        evaluator: a `tfembsize.metrics.RankingEvaluator` for ``split``.
        config: the recipe (None: the backbone's default), made fixed-length by
            ``train_steps``/``train_epochs`` and reseeded by ``seed`` (`resolve_config`).
        plan: sizes to apply first (None: keep the model's sizes).
        budget: if given, the model's usable parameters (`model_usage`) are asserted within
            it before training.
        budget_what: what the model is, in the over-budget message.
        train_fn: ``train_fn(model, split, evaluator, config=..., [checkpoint_dir=...])``
            returning a `TrainResult`-like object (``steps``, ``best_step``, ``final_loss``,
            ``validation``, ``wall_time``).
        train_steps: train exactly this many steps (one evaluation at the end).
        train_epochs: the same in passes over the training interactions.
        seed: seed of the BPR sampler.
        checkpoint_dir: passed to ``train_fn`` when it takes one (a killed training resumes).

    Returns:
        The `Outcome` (``finite=False`` with a message when training diverged).

    Raises:
        tfembsize.BudgetExceededError: the model is over ``budget``.
    """
    if plan is not None:
        plan.apply(model)
    used, rows = model_usage(model)
    if budget is not None:
        budget.check_total(used, rows, what=budget_what)
    config = resolve_config(
        config, model, split, train_steps=train_steps, train_epochs=train_epochs, seed=seed
    )
    kwargs: dict[str, Any] = {}
    if checkpoint_dir is not None and accepts_keyword(train_fn, "checkpoint_dir"):
        kwargs["checkpoint_dir"] = checkpoint_dir
    t0 = time.perf_counter()
    try:
        result = train_fn(model, split, evaluator, config=config, **kwargs)
    except NonFiniteLossError as err:
        return Outcome(
            finite=False,
            steps=err.step,
            best_step=None,
            loss=err.loss,
            validation=None,
            message=str(err),
            wall_time=time.perf_counter() - t0,
            usable_params=used,
            num_rows=rows,
            model=model,
        )
    loss = getattr(result, "final_loss", None)
    finite = weights_finite(model) and (loss is None or math.isfinite(float(loss)))
    validation = result.validation
    if finite and (validation is None or not config.restore_best):
        # the weights kept are the last ones: score them
        validation = evaluator.evaluate(model_scorer(model), phase="validation")
    wall = getattr(result, "wall_time", None)
    return Outcome(
        finite=finite,
        steps=int(result.steps),
        best_step=None if result.best_step is None else int(result.best_step),
        loss=None if loss is None or not math.isfinite(float(loss)) else float(loss),
        validation=validation if finite else None,
        message="" if finite else "the weights or the final loss are not finite",
        # Over all resumed segments when train_fn resumed from a checkpoint (train_bpr).
        wall_time=time.perf_counter() - t0 if wall is None else float(wall),
        usable_params=used,
        num_rows=rows,
        model=model,
    )
