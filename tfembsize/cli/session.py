"""`Session`: a run's data, backbone, recipe and method, rebuilt from its stored options.

``search``, ``retrain`` and ``export`` all work on the same cells as the paper protocol
(`tfembsize.protocol`): the same data split (50/25/25, seed 42), backbone builders, recipe
resolution (`tfembsize.protocol.cli.build_config`) and `MethodContext`, so a plan found here
is produced and retrained exactly as the protocol would.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tfembsize.cli._common import EXIT_DATA, EXIT_USAGE, CliError
from tfembsize.cli.run_dir import RunDir

__all__ = ["Session", "DATASETS", "BACKBONES"]

logger = logging.getLogger(__name__)

DATASETS = ("synthetic", "ml-100k", "ml-1m", "gowalla")
"""Built-in data set names of ``--dataset``."""

BACKBONES = ("mf", "ncf", "ngcf", "lightgcn")
"""Backbones of ``--backbone``."""


class Session:
    """The protocol objects of one run directory.

    Args:
        run: the run directory.
        options: the search options stored in its ``run.json``.
        verbose: 0, 1 or 2.

    Raises:
        CliError: the data cannot be loaded (exit status 3) or an option is invalid (2).
    """

    def __init__(self, run: RunDir, options: Mapping[str, Any], verbose: int = 1) -> None:
        from tfembsize.protocol.cli import build_config
        from tfembsize.protocol.registry import get_method

        self.run = run
        self.options = dict(options)
        self.verbose = verbose
        args = argparse.Namespace(
            dataset=_dataset(self.options),
            data_dir=self.options["data_dir"],
            backbone=self.options["backbone"],
            methods=self.options["method"],
            sparsity=",".join(f"{c:g}" for c in self.options["sparsity"]),
            seeds=1,
            seed_list=str(self.options["seed"]),
            out=os.fspath(run.path),
            work_dir=os.fspath(run.work),
            d_max=self.options["d_max"],
            preset=self.options["preset"],
            lr=self.options["lr"],
            batch_size=self.options["batch_size"],
            max_steps=self.options["max_steps"],
            eval_every=self.options["eval_every"],
            patience=self.options["patience"],
            monitor=self.options["monitor"],
            jit_compile=self.options["jit_compile"],
            method_settings=self.options["method_settings"],
        )
        try:
            self.config = build_config(args)
            self.method = get_method(self.options["method"])
        except KeyError as e:
            raise CliError(EXIT_USAGE, f"--method: {e.args[0]}") from e
        except ValueError as e:
            raise CliError(EXIT_USAGE, f"bad option value: {e}") from e
        self._split: Any = None
        self._evaluator: Any = None

    @property
    def seed(self) -> int:
        """The run's seed."""
        return int(self.options["seed"])

    @property
    def targets(self) -> list[float | None]:
        """Target sparsities (``[None]`` for an unbudgeted method)."""
        if not self.method.budgeted:
            return [None]
        return [float(c) for c in self.options["sparsity"]]

    @property
    def split(self) -> Any:
        """The data split (loaded on first use)."""
        if self._split is None:
            self._split = _load_split(self.config, self.options)
        return self._split

    @property
    def evaluator(self) -> Any:
        """The full-ranking evaluator of the split (Recall/NDCG@{5,10,20})."""
        if self._evaluator is None:
            from tfembsize.metrics import RankingEvaluator

            self._evaluator = RankingEvaluator(self.split, ks=(5, 10, 20))
        return self._evaluator

    def context(self, sparsity: float | None, directory: str | os.PathLike) -> Any:
        """The `MethodContext` of a target, working in ``directory``."""
        from tfembsize.models import train_bpr
        from tfembsize.protocol.backbones import get_backbone
        from tfembsize.protocol.context import MethodContext

        builder = get_backbone(self.config.backbone)
        split, d_max = self.split, self.config.d_max
        name = self.method.name
        return MethodContext(
            dataset=self.config.dataset,
            backbone=self.config.backbone,
            split=split,
            evaluator=self.evaluator,
            sparsity=sparsity,
            seed=self.seed,
            d_max=d_max,
            directory=os.fspath(directory),
            train_config=self.config.train_config,
            backbone_builder=lambda s: builder(split, d_max, s),
            train_fn=train_bpr,
            verbose=self.verbose,
            method=name,
            sparsities=tuple(float(c) for c in self.config.sparsities),
            root=os.fspath(self.run.work),
            options=dict(self.config.method_options.get(name, {})),
        )


def _dataset(options: Mapping[str, Any]) -> str | None:
    """``--dataset`` as the protocol reads it: None lets a LightGCN ``--data-dir`` be the data.

    Raises:
        CliError: ``--data-dir`` is neither a LightGCN-format folder nor the folder of a named
            data set (exit status 3).
    """
    from tfembsize.protocol.cli import _is_lightgcn_dir

    dataset, data_dir = options.get("dataset"), options.get("data_dir")
    if not data_dir:
        return dataset or "synthetic"
    if not os.path.isdir(data_dir):
        raise CliError(EXIT_DATA, f"--data-dir {data_dir}: no such folder.")
    if _is_lightgcn_dir(Path(data_dir)):
        return None if dataset in (None, "synthetic") else dataset
    if dataset in (None, "synthetic"):
        raise CliError(
            EXIT_DATA,
            f"--data-dir {data_dir}: no train.txt (LightGCN format) there; to read a named data "
            "set from its parent folder, pass --dataset ml-100k, ml-1m or gowalla too.",
        )
    return dataset


def _load_split(config: Any, options: Mapping[str, Any]) -> Any:
    from tfembsize.data import load_dataset

    where = options.get("data_dir") or options.get("dataset")
    kwargs = {"data_root": config.data_dir} if config.data_dir else {}
    logger.info("Loading data set %s.", where)
    try:
        data = load_dataset(config.dataset, **kwargs)
        split = data.split(0.5, 0.25, 0.25, seed=config.split_seed)
    except (OSError, ValueError) as e:
        flag = "--data-dir" if options.get("data_dir") else "--dataset"
        raise CliError(
            EXIT_DATA,
            f"{flag} {where}: cannot load the data: {e} Pass --data-dir with a LightGCN-format "
            "folder (train.txt, test.txt) or the folder holding ml-100k/, ml-1m/, gowalla/.",
        ) from e
    logger.info(
        "Data: %d users, %d items, %d training interactions.",
        split.num_users,
        split.num_items,
        split.train.num_interactions,
    )
    return split
