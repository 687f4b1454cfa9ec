"""`ProtocolConfig`: one run of the protocol (data, backbone, methods, sparsities, seeds)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tfembsize.protocol.registry import get_method

__all__ = ["ProtocolConfig"]


@dataclass(frozen=True)
class ProtocolConfig:
    """A paper-protocol run.

    Attributes:
        dataset: ``"gowalla"``, ``"ml-1m"``, ``"ml-100k"``, ``"synthetic"`` or a LightGCN-format
            directory.
        backbone: ``"mf"``, ``"ncf"``, ``"ngcf"`` or ``"lightgcn"``.
        methods: registered method names, in table order.
        sparsities: target sparsities of the budgeted methods.
        seeds: the seeds (cells run seed by seed, so a first seed fills every cell).
        out: output directory (cells, working directories, tables).
        d_max: full width.
        train_config: the shared retraining recipe (`tfembsize.models.TrainConfig`); None uses
            the backbone's default recipe.
        split_seed: seed of the 50/25/25 split (42 as in the official code).
        data_dir: root directory holding the named datasets (default: the shared data dir).
        label: the data set's name in tables and paper lookups when ``dataset`` is a path
            (e.g. ``"gowalla"`` for a LightGCN-format copy of Gowalla).
        method_options: settings per method name, handed to the method as
            `MethodContext.options` and written to the results (e.g.
            ``{"bet": {"search_iterations": 50, "num_candidates": 100}}``).
        work_dir: where the working directories (resumable searches, pretrained reference
            models, retraining checkpoints) live; default ``<out>/work``. Put it on storage
            that outlives the process when a run spans several sessions.
    """

    dataset: str
    backbone: str
    methods: tuple[str, ...]
    sparsities: tuple[float, ...] = (0.8, 0.9, 0.95)
    seeds: tuple[int, ...] = (0,)
    out: str = "paper_protocol"
    d_max: int = 128
    train_config: Any = None
    split_seed: int = 42
    data_dir: str | None = None
    label: str | None = None
    method_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    work_dir: str | None = None

    @property
    def name(self) -> str:
        """The data set's name in tables and paper lookups (``label``, else ``dataset``)."""
        if self.label:
            return self.label
        return os.path.basename(os.path.normpath(self.dataset)).lower()

    def __post_init__(self) -> None:
        if not self.methods:
            raise ValueError("`methods` must name at least one method.")
        for s in self.sparsities:
            if not 0.0 < float(s) < 1.0:
                raise ValueError(f"`sparsity` must be in (0, 1). Received: sparsity={s!r}")
        if not self.seeds:
            raise ValueError("`seeds` must hold at least one seed.")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"`seeds` must be distinct. Received: seeds={self.seeds!r}")
        unknown = sorted(set(self.method_options) - set(self.methods))
        if unknown:
            raise ValueError(
                f"`method_options` names methods that do not run: {unknown} (methods: "
                f"{list(self.methods)})."
            )

    def cells(self) -> list[tuple[str, float | None, int]]:
        """Every (method, sparsity, seed) cell, seed-major, in table order."""
        out: list[tuple[str, float | None, int]] = []
        for seed in self.seeds:
            for name in self.methods:
                method = get_method(name)
                if method.budgeted:
                    out.extend((name, float(s), int(seed)) for s in self.sparsities)
                else:
                    out.append((name, None, int(seed)))
        return out
