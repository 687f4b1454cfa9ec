"""PEP's models: tables converted to `PEPEmbedding`, lottery tickets and their retraining."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from tfembsize._keras import keras
from tfembsize.budget import Budget
from tfembsize.controllers.pep.config import PEPConfig, _pep_layers
from tfembsize.controllers.pep.overlap import prefix_masks
from tfembsize.layers.pep_embedding import PEPEmbedding, find_pep_layers
from tfembsize.optimizers import PEPAdam
from tfembsize.training.loop import train_bpr

__all__ = ["pep_model", "retrain_ticket", "ticket_model"]


def pep_model(model: Any, config: PEPConfig | None = None) -> Any:
    """The same backbone with every embedding table replaced by a `PEPEmbedding`.

    A table (any layer attribute with ``input_dim`` and ``output_dim`` that appears in the
    model's config, e.g. ``user_embedding``, ``item_embedding`` and NCF's ``*_mlp`` tables)
    becomes a `PEPEmbedding` with the same name, size and initialiser; the model is rebuilt
    from its config. A model whose tables are PEP layers already is returned unchanged.

    Args:
        model: a `tfembsize.models` backbone (``get_config``/``from_config`` with layer
            arguments).
        config: gives the `PEPEmbedding` arguments (default `PEPConfig()`).

    Raises:
        ValueError: the model has no embedding table to convert.
    """
    config = config or PEPConfig()
    model_config = dict(model.get_config())
    converted = 0
    for key in list(model_config):
        layer = getattr(model, key, None)
        if not isinstance(layer, keras.layers.Layer) or not hasattr(layer, "input_dim"):
            continue
        if isinstance(layer, PEPEmbedding):
            model_config[key] = layer
            continue
        init = keras.initializers.deserialize(
            keras.initializers.serialize(getattr(layer, "embeddings_initializer", "uniform"))
        )
        model_config[key] = PEPEmbedding(
            int(layer.input_dim),
            int(layer.output_dim),
            embeddings_initializer=init,
            name=layer.name,
            **config.layer_kwargs(),
        )
        converted += 1
    if not converted:
        if find_pep_layers(model):
            return model
        raise ValueError(
            f"{type(model).__name__} has no embedding table (a layer argument with input_dim "
            "and output_dim) to convert to PEPEmbedding."
        )
    return type(model).from_config(model_config)


def _build(builder: Callable[[int], Any], seed: int, config: PEPConfig) -> Any:
    keras.utils.set_random_seed(int(seed))
    return pep_model(builder(int(seed)), config)


def ticket_model(
    backbone_builder: Callable[[int], Any],
    seed: int,
    masks: Mapping[str, np.ndarray],
    initial_tables: Mapping[str, np.ndarray],
    config: PEPConfig | None = None,
) -> Any:
    """The lottery ticket of a capture, ready to train.

    The backbone is rebuilt with ``seed`` (so its other weights get the pruning run's
    initialisation), converted with `pep_model`, and every PEP table is frozen on its mask
    with ``E = E0 * M`` (``rewind="initial"``) or a fresh initialisation ``* M``
    (``rewind="fresh"``, the tables of the backbone built with ``seed + 1``). With
    ``config.ticket="prefix"`` each mask is first replaced by per-row prefixes of the same
    counts (`tfembsize.controllers.pep.prefix_masks`).
    """
    config = config or PEPConfig()
    model = _build(backbone_builder, seed, config)
    fresh = None
    if config.rewind == "fresh":
        fresh = find_pep_layers(_build(backbone_builder, seed + 1, config))
        keras.utils.set_random_seed(int(seed))
    layers = find_pep_layers(model)
    if config.ticket == "prefix":
        masks = prefix_masks(dict(masks))
    if sorted(layers) != sorted(masks):
        raise ValueError(
            f"The masks are for tables {sorted(masks)}; the model has {sorted(layers)}."
        )
    for name, layer in layers.items():
        values = initial_tables[name] if fresh is None else fresh[name].embeddings.numpy()
        layer.freeze_mask(masks[name], rewind_values=values)
    return model


def _budget_of(model_layers: Mapping[str, PEPEmbedding], sparsity: float) -> tuple[Budget, int]:
    width = next(iter(model_layers.values())).output_dim
    rows = sum(int(layer.input_dim) for layer in model_layers.values())
    return Budget(sparsity=sparsity, d_max=width), rows


def retrain_ticket(
    model: Any,
    split: Any,
    evaluator: Any,
    sparsity: float,
    *,
    train_config: Any = None,
) -> Any:
    """Trains a frozen ticket with `train_bpr` (validation early stopping); returns its result.

    The budget is asserted before training and again after (the usable parameters of frozen
    tables are the mask counts). The optimiser is `PEPAdam` without L2, i.e. Keras's Adam
    maths, so the recipe is the one every other method is retrained with; the frozen
    thresholds are skipped.

    Raises:
        BudgetExceededError: the ticket's usable parameters exceed ``B(sparsity)``.
    """
    layers = _pep_layers(model)
    budget, rows = _budget_of(layers, sparsity)
    used = sum(layer.usable_params() for layer in layers.values())
    budget.check_total(used, rows, what=f"PEP ticket for sparsity {sparsity}")
    result = train_bpr(
        model,
        split,
        evaluator,
        config=train_config,
        optimizer=lambda lr: PEPAdam(lr, l2=0.0, threshold_l2=0.0),
    )
    used = sum(layer.usable_params() for layer in layers.values())
    budget.check_total(used, rows, what=f"retrained PEP model for sparsity {sparsity}")
    return result


def _train_summary(result: Any) -> dict[str, Any]:
    """The compact JSON summary of a `TrainResult` kept in a `PEPResult`."""

    def metrics(r: Any) -> Any:
        return None if r is None else {k: float(v) for k, v in r.metrics().items()}

    return {
        "best_step": int(result.best_step),
        "steps": int(result.steps),
        "stopped_early": bool(result.stopped_early),
        "wall_time": float(result.wall_time),
        "monitor": result.monitor,
        "best_value": float(result.best_value),
        "validation": metrics(result.validation),
        "test": metrics(result.test),
    }
