"""What PEP returns: a captured mask (`PEPCapture`), a pruning run, a target's result."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

__all__ = ["PEPCapture", "PEPPruneResult", "PEPResult"]


@dataclasses.dataclass(frozen=True, eq=False)
class PEPCapture:
    """A mask captured the first time the usable count fell under a target's budget.

    Attributes:
        sparsity: the target sparsity ``c``.
        limit: its budget ``B(c)``.
        step: optimiser steps done when the mask was taken.
        usable_params: ones in the masks (<= ``limit``, asserted).
        num_rows: rows of the PEP tables (the ``N`` of the budget).
        layer_params: ones per table.
        masks: ``{table name: bool [input_dim, output_dim]}``.
    """

    sparsity: float
    limit: int
    step: int
    usable_params: int
    num_rows: int
    layer_params: Mapping[str, int]
    masks: Mapping[str, np.ndarray] = dataclasses.field(repr=False)

    @property
    def density(self) -> float:
        """Usable fraction of the full tables."""
        width = next(iter(self.masks.values())).shape[1]
        return self.usable_params / float(width * self.num_rows)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (without the masks)."""
        return {
            "sparsity": self.sparsity,
            "limit": self.limit,
            "step": self.step,
            "usable_params": self.usable_params,
            "num_rows": self.num_rows,
            "layer_params": dict(self.layer_params),
        }


@dataclasses.dataclass(frozen=True, eq=False)
class PEPPruneResult:
    """What `prune` did.

    Attributes:
        captures: `PEPCapture` per captured sparsity.
        missed: sparsities whose budget was not reached within ``max_steps``.
        steps: pruning steps run in all (resumed runs included).
        history: ``{"step", "usable_params", "loss"}`` per chunk.
        initial_tables: ``E0`` per table (what the lottery tickets rewind to).
        wall_time: seconds of this call.
    """

    captures: Mapping[float, PEPCapture]
    missed: tuple[float, ...]
    steps: int
    history: tuple[dict[str, Any], ...]
    initial_tables: Mapping[str, np.ndarray] = dataclasses.field(repr=False)
    wall_time: float = 0.0


@dataclasses.dataclass(frozen=True, eq=False)
class PEPResult:
    """The outcome of one target sparsity of `run_pep`.

    Attributes:
        sparsity: target sparsity.
        status: ``"ok"`` (captured and, if asked, retrained) or ``"missed"``.
        budget: ``B(c)``.
        capture: the captured mask (None if missed).
        usable_params: usable parameters of the retrained model's tables (None if missed).
        num_rows: rows of the PEP tables.
        train: summary of the retraining (None if not retrained): ``best_step``, ``steps``,
            ``stopped_early``, ``wall_time``, ``monitor``, ``best_value`` and the mean metrics
            of ``validation`` (at the best step) and ``test``.
        build_model: zero-argument callable building the (untrained) lottery ticket.
        model: the retrained model (None if not retrained, or if the result was reloaded).
    """

    sparsity: float
    status: str
    budget: int
    capture: PEPCapture | None
    usable_params: int | None
    num_rows: int
    train: Mapping[str, Any] | None = None
    build_model: Callable[[], Any] | None = dataclasses.field(default=None, repr=False)
    model: Any = dataclasses.field(default=None, repr=False)

    def metric(self, phase: str, name: str) -> float | None:
        """A mean metric of the retrained model, e.g. ``metric("test", "recall@20")``."""
        if not self.train or not self.train.get(phase):
            return None
        value = self.train[phase].get(name)
        return None if value is None else float(value)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {
            "sparsity": self.sparsity,
            "status": self.status,
            "budget": self.budget,
            "capture": None if self.capture is None else self.capture.to_dict(),
            "usable_params": self.usable_params,
            "num_rows": self.num_rows,
            "train": None if self.train is None else dict(self.train),
        }
