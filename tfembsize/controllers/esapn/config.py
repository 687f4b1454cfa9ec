"""ESAPN's recipe (`ESAPNConfig`), the default ladder and the conversion of a backbone's tables."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from tfembsize._checks import positive_float, positive_int
from tfembsize._dataclass_config import DictConfig
from tfembsize._keras import keras
from tfembsize.budget import Budget
from tfembsize.layers.ladder_embedding import DEFAULT_LADDER, LadderEmbedding, _validate_ladder
from tfembsize.training.config import TrainConfig

__all__ = ["ESAPNConfig", "default_ladder", "esapn_model"]

TABLES = ("user_embedding", "item_embedding")
"""The backbone attributes ESAPN acts on: one user table and one item table."""


def default_ladder(d_max: int) -> tuple[int, ...]:
    """The candidate sizes for full width ``d_max``: ``(2, 4, 8, 16, 64, 128)`` cut at ``d_max``.

    Sizes of the default ladder below ``d_max`` are kept and ``d_max`` ends the ladder, so
    ``d_max = 128`` gives the default ladder and ``d_max = 32`` gives ``(2, 4, 8, 16, 32)``.

    Example:
        >>> default_ladder(128), default_ladder(8)
        ((2, 4, 8, 16, 64, 128), (2, 4, 8))
    """
    d_max = positive_int("d_max", d_max)
    return (*(d for d in DEFAULT_LADDER if d < d_max), d_max)


def _is_real(x: Any) -> bool:
    return (
        not isinstance(x, bool)
        and isinstance(x, (int, float, np.integer, np.floating))
        and math.isfinite(float(x))
    )


def _budget_cap(value: Any) -> float | Budget | None:
    """None, a sparsity in (0, 1) or a `Budget` (a dict from ``to_dict`` is read back)."""
    if value is None or isinstance(value, Budget):
        return value
    if isinstance(value, Mapping):
        try:
            return Budget.from_dict(dict(value))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(
                f"`budget_cap` must be None, a sparsity in (0, 1) or a Budget. Received: "
                f"budget_cap={value!r} ({e})"
            ) from None
    if not _is_real(value) or not 0.0 < float(value) < 1.0:
        raise ValueError(
            "`budget_cap` must be None, a sparsity in (0, 1) or a Budget. Received: "
            f"budget_cap={value!r}"
        )
    return float(value)


@dataclasses.dataclass(frozen=True)
class ESAPNConfig(DictConfig):
    """ESAPN's recipe: the policies, the loss memory, the optional cap and the stream.

    Defaults: the authors' official code (memory T = 5, policy Adam 1e-4, a 32-wide count
    embedding and 512 hidden units, one pass over the stream) with this library's BPR recipe
    for the recommender (Adam 1e-3, batch 2048).

    Attributes:
        ladder: candidate sizes of the tables `esapn_model` makes (strictly increasing; the
            last is the full width). A controller attached to existing tables uses theirs.
        memory: ``T``, the losses remembered per row; a reward is the mean of a row's
            remembered losses (at most ``T``) minus its loss with the size raised.
        policy_learning_rate: Adam's rate for the two policies.
        policy_hidden: hidden units of a policy network.
        policy_embedding_dim: width of a policy's interaction-count embedding.
        count_buckets: rows of that embedding; larger counts share the last row.
        budget_cap: None (the default, ESAPN as published: no budget), a target sparsity
            ``c`` or a `tfembsize.Budget`: a row whose growth would take the usable
            parameters of both tables over ``B(c) = floor((1 - c) * d_max * N)`` stays put.
        seed: seed of the policies' initialisation and of the action sampling.
        batch_size: triples per batch of the stream, and the largest batch the controller
            accepts (its copy of the previous batch has this many slots).
        epochs: passes over the training interactions.
        learning_rate: Adam's rate for the recommender.
        chunk_steps: steps per compiled chunk; a run with a directory is checkpointed after
            each chunk.
        jit_compile: compile each step (the controller's work included) with XLA.

    References:
        Liu et al., "Automated Embedding Size Search in Deep Recommender Systems",
        SIGIR 2020 (ESAPN).
    """

    ladder: tuple[int, ...] = DEFAULT_LADDER
    memory: int = 5
    policy_learning_rate: float = 1e-4
    policy_hidden: int = 512
    policy_embedding_dim: int = 32
    count_buckets: int = 1024
    budget_cap: float | Budget | None = None
    seed: int = 0
    batch_size: int = 2048
    epochs: int = 1
    learning_rate: float = 1e-3
    chunk_steps: int = 1000
    jit_compile: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "ladder", _validate_ladder(self.ladder))
        for name in (
            "memory",
            "policy_hidden",
            "policy_embedding_dim",
            "count_buckets",
            "batch_size",
            "epochs",
            "chunk_steps",
        ):
            positive_int(name, getattr(self, name))
        for name in ("policy_learning_rate", "learning_rate"):
            value = getattr(self, name)
            if not _is_real(value):
                raise ValueError(f"`{name}` must be a positive number. Received: {name}={value!r}")
            positive_float(name, value)
        object.__setattr__(self, "budget_cap", _budget_cap(self.budget_cap))
        seed = self.seed
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"`seed` must be a non-negative integer. Received: seed={seed!r}")
        if not isinstance(self.jit_compile, bool):
            raise ValueError(
                f"`jit_compile` must be True or False. Received: jit_compile={self.jit_compile!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of the fields (the ladder as a list, a `Budget` as its dict)."""
        out = super().to_dict()
        out["ladder"] = list(self.ladder)
        if isinstance(self.budget_cap, Budget):
            out["budget_cap"] = self.budget_cap.to_dict()
        return out

    def budget(self, d_max: int) -> Budget | None:
        """The cap as a `Budget` for tables of full width ``d_max`` (None without a cap)."""
        if self.budget_cap is None or isinstance(self.budget_cap, Budget):
            return self.budget_cap
        return Budget(sparsity=float(self.budget_cap), d_max=int(d_max))

    def train_config(self, max_steps: int, *, seed: int = 0, verbose: int = 0) -> TrainConfig:
        """The `train_bpr` recipe of a stream of ``max_steps`` batches.

        No validation while the stream runs (the controller decides from the training
        losses), chunks of ``chunk_steps``, the last weights kept.
        """
        return TrainConfig(
            learning_rate=float(self.learning_rate),
            batch_size=int(self.batch_size),
            max_steps=positive_int("max_steps", max_steps),
            eval_every=int(self.chunk_steps),
            restore_best=False,
            evaluate_test=False,
            seed=int(seed),
            verbose=int(verbose),
            jit_compile=bool(self.jit_compile),
        )


def esapn_model(model: Any, ladder: Sequence[int] | None = None) -> Any:
    """The same backbone with its user and item tables replaced by `LadderEmbedding` layers.

    The new tables keep the names, row counts and initialisers of the old ones; their ladder
    ends at the old width (default `default_ladder` of it). The model is rebuilt from its
    config, so its other weights are new. A model whose two tables are ladders already is
    returned unchanged.

    Args:
        model: a `tfembsize.models` backbone with one user and one item table (MF,
            LightGCN, NGCF).
        ladder: the candidate sizes; the last must be the tables' width.

    Raises:
        ValueError: the model has other embedding tables too (NCF), lacks one of the two,
            or ``ladder`` does not end at the tables' width.
    """
    layers: dict[str, Any] = {key: getattr(model, key, None) for key in TABLES}
    if all(isinstance(layer, LadderEmbedding) for layer in layers.values()):
        return model
    config = dict(model.get_config())
    others = sorted(
        key
        for key in config
        if key not in TABLES
        and isinstance(getattr(model, key, None), keras.layers.Layer)
        and hasattr(getattr(model, key), "input_dim")
    )
    if others or any(layer is None or not hasattr(layer, "input_dim") for layer in layers.values()):
        raise ValueError(
            "ESAPN needs a backbone with exactly one user table and one item table "
            f"({', '.join(TABLES)}; e.g. MF, LightGCN, NGCF). {type(model).__name__} has "
            f"tables {sorted(k for k, v in layers.items() if v is not None) + others}."
        )
    for key, layer in layers.items():
        width = int(layer.output_dim)
        rungs = default_ladder(width) if ladder is None else _validate_ladder(ladder)
        if rungs[-1] != width:
            raise ValueError(
                f"`ladder` must end at the width of {key} ({width}). Received: "
                f"ladder={tuple(rungs)!r}"
            )
        init = keras.initializers.deserialize(
            keras.initializers.serialize(getattr(layer, "embeddings_initializer", "uniform"))
        )
        config[key] = LadderEmbedding(
            int(layer.input_dim), rungs, embeddings_initializer=init, name=layer.name
        )
    return type(model).from_config(config)
