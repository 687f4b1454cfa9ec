"""Runs a training recipe for the search environment and the protocol, NaN-safe."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["run_training", "steps_per_epoch", "resolve_config"]


def steps_per_epoch(split: Any, batch_size: int) -> int:
    """Optimiser steps in one pass over the training interactions: ceil(|train| / batch)."""
    return max(1, math.ceil(int(split.train.num_interactions) / int(batch_size)))


def resolve_config(
    config: Any,
    model: Any,
    split: Any,
    *,
    train_steps: int | None = None,
    train_epochs: float | None = None,
    seed: int | None = None,
) -> Any:
    """The `TrainConfig` of one run.

    ``None`` takes the backbone's default recipe. ``train_steps`` (or ``train_epochs``,
    converted with the recipe's batch size) turns it into a fixed-length run: that many steps
    and one validation evaluation at the end, no early stopping. ``seed`` reseeds the BPR
    sampler. Test evaluation is always off: the caller evaluates test when it reports.
    """
    from tfembsize.models import TrainConfig, default_config

    if config is None:
        config = default_config(model)
    if not isinstance(config, TrainConfig):
        raise TypeError(
            f"The training recipe must be a tfembsize.models.TrainConfig. Received: "
            f"{type(config).__name__}"
        )
    if train_steps is not None and train_epochs is not None:
        raise ValueError("Pass at most one of `train_steps` and `train_epochs`.")
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


def _weights_finite(model: Any) -> bool:
    for v in model.trainable_weights:
        w = np.asarray(v.numpy())
        if w.dtype.kind == "f" and not np.all(np.isfinite(w)):
            return False
    return True


def run_training(
    train_fn: Callable[..., Any],
    model: Any,
    split: Any,
    evaluator: Any,
    config: Any,
    **kwargs: Any,
) -> dict:
    """Trains with ``train_fn`` and reports what happened without raising on divergence.

    ``kwargs`` go to ``train_fn`` (e.g. ``checkpoint_dir`` for `train_bpr`).

    Returns:
        ``{"finite", "steps", "best_step", "loss", "validation", "message"}``: ``finite`` is
        False when the loss or the weights became NaN/inf (``message`` says where);
        ``validation`` is the `RankingResult` of the restored weights.
    """
    from tfembsize.models import NonFiniteLossError

    try:
        result = train_fn(model, split, evaluator, config=config, **kwargs)
    except NonFiniteLossError as err:
        return {
            "finite": False,
            "steps": err.step,
            "best_step": None,
            "loss": err.loss,
            "validation": None,
            "message": str(err),
        }
    loss = getattr(result, "final_loss", None)
    finite = _weights_finite(model) and (loss is None or math.isfinite(float(loss)))
    return {
        "finite": finite,
        "steps": int(result.steps),
        "best_step": None if result.best_step is None else int(result.best_step),
        "loss": None if loss is None or not math.isfinite(float(loss)) else float(loss),
        "validation": result.validation,
        "message": "" if finite else "the weights or the final loss are not finite",
        # Over all resumed segments when train_fn resumed from a checkpoint (train_bpr).
        "wall_time": getattr(result, "wall_time", None),
    }


def accepts_keyword(fn: Callable[..., Any], name: str) -> bool:
    """True if ``fn`` takes a keyword argument ``name`` (or ``**kwargs``)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == name or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)
