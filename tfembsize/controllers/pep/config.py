"""PEP's pruning recipe (`PEPConfig`) and the small helpers of the PEP package."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from tfembsize._checks import positive_int
from tfembsize._dataclass_config import DictConfig
from tfembsize.controllers._common import validate_sparsities
from tfembsize.layers.pep_embedding import (
    GRANULARITIES,
    THRESHOLD_FNS,
    PEPEmbedding,
    find_pep_layers,
)
from tfembsize.optimizers import PEPAdam
from tfembsize.training.config import TrainConfig

__all__ = ["PEPConfig", "TICKETS"]

TICKETS = ("entries", "prefix")
"""What a PEP retraining keeps: the captured entries, or per-row prefixes of the same counts."""


def _sparsity_tag(sparsity: float) -> str:
    return f"{sparsity:.6g}".replace(".", "p")


def _is_real(x: Any) -> bool:
    return (
        not isinstance(x, bool)
        and isinstance(x, (int, float, np.integer, np.floating))
        and math.isfinite(float(x))
    )


def _sparsities(sparsity: Any) -> tuple[float, ...]:
    """Distinct sparsities in (0, 1), in increasing order (the order a falling count meets)."""
    return tuple(sorted(validate_sparsities(sparsity)))


def _pep_layers(model_or_layers: Any) -> dict[str, PEPEmbedding]:
    if isinstance(model_or_layers, PEPEmbedding):
        layers = {model_or_layers.name: model_or_layers}
    elif isinstance(model_or_layers, Mapping):
        layers = dict(model_or_layers)
    elif isinstance(model_or_layers, (list, tuple)):
        layers = {}
        for layer in model_or_layers:
            if layer.name in layers:
                raise ValueError(f"Two PEPEmbedding layers are named {layer.name!r}.")
            layers[layer.name] = layer
    else:
        layers = find_pep_layers(model_or_layers)
    if not layers or not all(isinstance(x, PEPEmbedding) for x in layers.values()):
        raise ValueError(
            "PEP needs PEPEmbedding tables. Received "
            f"{type(model_or_layers).__name__} with PEP layers {sorted(layers)}; convert a "
            "backbone with `pep_model(model)`."
        )
    return layers


@dataclasses.dataclass(frozen=True)
class PEPConfig(DictConfig):
    """The pruning phase of PEP. Defaults: the authors' official code.

    Attributes:
        granularity: thresholds of the `PEPEmbedding` tables (``"feature_dimension"``: one
            per entry).
        threshold_init: ``s0`` (-15 in the official ML-1M code).
        threshold_fn: ``g``, ``"sigmoid"``.
        learning_rate: Adam's rate for the tables and other weights (1e-3).
        threshold_lr: Adam's rate for the thresholds (1e-3). With ``threshold_l2`` and
            ``threshold_init`` it sets the pruning speed: thresholds rise by about
            ``threshold_lr`` per step.
        threshold_l2: coupled L2 on the thresholds (1e-5).
        l2: coupled L2 on every other weight (1e-5).
        clipnorm: global gradient-norm clip (100).
        batch_size: BPR triples per step.
        max_steps: cap on pruning steps; targets not reached by then are reported missed.
        chunk_steps: steps per compiled chunk; the run is checkpointed after each chunk.
        check_every: count the usable parameters after every ``check_every`` steps (1: after
            every step, so the first crossing is caught exactly; larger values capture up to
            that many steps late, with a sparser mask, never an over-budget one).
        rewind: ``"initial"`` (lottery ticket: ``E0 * M``) or ``"fresh"`` (a new
            initialisation ``* M``) for the retraining.
        ticket: which entries the retraining keeps: ``"entries"`` (PEP: the captured
            per-entry mask) or ``"prefix"`` (each row keeps its first ``k_n`` coordinates,
            ``k_n`` its captured count: the same usable parameters, with the kept
            coordinates of a user and an item aligned, so a dot-product score uses
            ``min(k_u, k_i)`` of them; see `tfembsize.controllers.pep.mask_overlap`).
        jit_compile: compile each pruning step (the budget check included) with XLA, as
            retraining does with ``TrainConfig(jit_compile=True)``.
    """

    granularity: str = "feature_dimension"
    threshold_init: float = -15.0
    threshold_fn: str = "sigmoid"
    learning_rate: float = 1e-3
    threshold_lr: float = 1e-3
    threshold_l2: float = 1e-5
    l2: float = 1e-5
    clipnorm: float | None = 100.0
    batch_size: int = 2048
    max_steps: int = 50_000
    chunk_steps: int = 1000
    check_every: int = 1
    rewind: str = "initial"
    ticket: str = "entries"
    jit_compile: bool = False

    def __post_init__(self) -> None:
        if self.granularity not in GRANULARITIES:
            raise ValueError(
                f"`granularity` must be one of {GRANULARITIES}. Received: "
                f"granularity={self.granularity!r}"
            )
        if self.threshold_fn not in THRESHOLD_FNS:
            raise ValueError(
                f"`threshold_fn` must be one of {THRESHOLD_FNS}. Received: "
                f"threshold_fn={self.threshold_fn!r}"
            )
        if not _is_real(self.threshold_init):
            raise ValueError(
                "`threshold_init` must be a finite number. Received: "
                f"threshold_init={self.threshold_init!r}"
            )
        for name in ("learning_rate", "threshold_lr"):
            value = getattr(self, name)
            if not _is_real(value) or value <= 0:
                raise ValueError(f"`{name}` must be a positive number. Received: {name}={value!r}")
        for name in ("threshold_l2", "l2"):
            value = getattr(self, name)
            if not _is_real(value) or value < 0:
                raise ValueError(f"`{name}` must be a number >= 0. Received: {name}={value!r}")
        if self.clipnorm is not None and (not _is_real(self.clipnorm) or self.clipnorm <= 0):
            raise ValueError(
                "`clipnorm` must be a positive number or None. Received: "
                f"clipnorm={self.clipnorm!r}"
            )
        for name in ("batch_size", "max_steps", "chunk_steps", "check_every"):
            positive_int(name, getattr(self, name))
        if not isinstance(self.jit_compile, bool):
            raise ValueError(
                f"`jit_compile` must be True or False. Received: jit_compile={self.jit_compile!r}"
            )
        if self.ticket not in TICKETS:
            raise ValueError(f"`ticket` must be one of {TICKETS}. Received: ticket={self.ticket!r}")
        if self.rewind not in ("initial", "fresh"):
            raise ValueError(
                f"`rewind` must be 'initial' or 'fresh'. Received: rewind={self.rewind!r}"
            )

    def layer_kwargs(self) -> dict[str, Any]:
        """`PEPEmbedding` arguments."""
        return {
            "granularity": self.granularity,
            "threshold_init": float(self.threshold_init),
            "threshold_fn": self.threshold_fn,
        }

    def optimizer(self) -> PEPAdam:
        """The pruning-phase optimiser (`PEPAdam` with this config's rates and L2)."""
        return PEPAdam(
            self.learning_rate,
            threshold_lr=self.threshold_lr,
            threshold_l2=self.threshold_l2,
            l2=self.l2,
            global_clipnorm=self.clipnorm,
        )

    def train_config(self, *, seed: int = 0, verbose: int = 0) -> TrainConfig:
        """The `train_bpr` recipe of the pruning phase.

        No validation, chunks of ``chunk_steps``, at most ``max_steps``, last weights kept.
        """
        return TrainConfig(
            learning_rate=float(self.learning_rate),
            batch_size=int(self.batch_size),
            max_steps=int(self.max_steps),
            eval_every=int(self.chunk_steps),
            restore_best=False,
            evaluate_test=False,
            seed=int(seed),
            verbose=int(verbose),
            jit_compile=bool(self.jit_compile),
        )
