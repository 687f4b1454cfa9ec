"""The paper protocol's runner: every (method, sparsity, seed) cell, resumably, and the tables.

`run_protocol` runs each cell with `run_cell` (the method's sizes, the budget asserted,
retraining from scratch with validation early stopping, test metrics). Each cell is written
to ``out/cells/`` as soon as it finishes and skipped when the protocol is run again, and the
JSON and markdown tables (`tfembsize.protocol.report`) are rewritten after every cell, so a
killed run resumes where it stopped; finished cells of another run with the same data and
recipe can be reused (``reuse_cells_from``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from tfembsize import _io
from tfembsize.errors import TargetMissedError
from tfembsize.protocol._json import jsonable, plain
from tfembsize.protocol.cells import CellResult, cell_key, load_cells, run_cell, save_cell
from tfembsize.protocol.config import ProtocolConfig
from tfembsize.protocol.context import MethodContext
from tfembsize.protocol.paper import paper_cell
from tfembsize.protocol.provenance import portable_path
from tfembsize.protocol.registry import get_method
from tfembsize.protocol.report import (
    POPULARITY_MARGIN,
    ProtocolReport,
    markdown_report,
    popularity_result,
    ratio_vs_es,
    search_times,
    summarise_cells,
    untrained_cells,
)

__all__ = ["run_protocol"]

logger = logging.getLogger(__name__)


def run_protocol(
    config: ProtocolConfig,
    *,
    split: Any = None,
    backbone_builder: Callable[[Any, int, int | None], Any] | None = None,
    train_fn: Callable[..., Any] | None = None,
    meta: Mapping[str, Any] | None = None,
    max_cells: int | None = None,
    verbose: int = 1,
    reuse_cells_from: Sequence[str | os.PathLike] = (),
) -> ProtocolReport:
    """Runs (or resumes) every cell of ``config`` and writes the tables.

    Args:
        config: the run.
        split: the data split (default: ``load_dataset(config.dataset).split(...)``).
        backbone_builder: ``builder(split, d_max, seed) -> model`` (default: the registered
            backbone ``config.backbone``).
        train_fn: retraining function (default `tfembsize.models.train_bpr`).
        meta: extra JSON written at the top of the results (command, machine, date).
        max_cells: stop after this many new cells (tests use it to simulate a kill).
        verbose: 0 silent, 1 one log line per cell.
        reuse_cells_from: output directories of other protocol runs; before a cell runs, a
            finished cell of the same key there is copied instead (its ``info`` gets
            ``reused_from``: the folder relative to the repository root when inside it, else
            as given) if that run used the same data, split, backbone, ``d_max`` and
            recipe, and the same `ProtocolConfig.method_options` for the cell's method.
            Checked before every cell, so cells another run finishes meanwhile are picked up.

    Returns:
        A `ProtocolReport` (also written as ``results.json`` and ``results.md`` in
        ``config.out``).
    """
    from tfembsize.protocol.backbones import default_train_config, get_backbone, recipe_dict

    out = os.path.abspath(config.out)
    cells_dir = os.path.join(out, "cells")
    work = os.path.abspath(config.work_dir) if config.work_dir else os.path.join(out, "work")
    os.makedirs(cells_dir, exist_ok=True)
    if split is None:
        from tfembsize.data import load_dataset

        kwargs = {"data_root": config.data_dir} if config.data_dir else {}
        split = load_dataset(config.dataset, **kwargs).split(
            0.5, 0.25, 0.25, seed=config.split_seed
        )
    if backbone_builder is None:
        backbone_builder = get_backbone(config.backbone)
    if train_fn is None:
        from tfembsize.models import train_bpr

        train_fn = train_bpr
    train_config = config.train_config
    if train_config is None:
        train_config = default_train_config(config.backbone, split)
    from tfembsize.metrics import RankingEvaluator

    evaluator = RankingEvaluator(split, ks=(5, 10, 20))
    methods = {name: get_method(name) for name in config.methods}  # unknown names fail early
    dataset_info = {
        "name": config.name,
        "num_users": int(split.num_users),
        "num_items": int(split.num_items),
        "num_entities": int(split.num_users + split.num_items),
        "num_interactions": int(
            split.train.num_interactions
            + split.validation.num_interactions
            + split.test.num_interactions
        ),
        "num_train": int(split.train.num_interactions),
    }
    recipe = recipe_dict(train_config, split)
    pop_path = os.path.join(out, "popularity.json")
    if os.path.exists(pop_path):
        popularity = _io.read_json(pop_path, what="popularity baseline")
    else:
        popularity = popularity_result(split, evaluator)
        _io.write_json(pop_path, plain(popularity))

    finished = load_cells(cells_dir)
    missed_path = os.path.join(out, "missed.json")
    missed: dict[str, str] = (
        dict(_io.read_json(missed_path, what="missed targets"))
        if os.path.exists(missed_path)
        else {}
    )
    todo = [c for c in config.cells() if cell_key(*c) not in finished]
    report = _write_report(
        config, finished, popularity, dataset_info, recipe, todo, out, meta, missed
    )
    signature = _run_signature(config, dataset_info, recipe)
    sources = [os.fspath(d) for d in reuse_cells_from]

    def reuse(cell: tuple[str, float | None, int]) -> bool:
        """Copies a finished cell of another run; True if it did."""
        key = cell_key(*cell)
        options = json.loads(json.dumps(dict(config.method_options.get(cell[0], {}))))
        reused = _reusable_cell(key, sources, {**signature, "method_options": options})
        if reused is None:
            return False
        save_cell(cells_dir, reused)
        finished[key] = reused
        todo.remove(cell)
        if verbose:
            logger.info("Cell %s: reused from %s.", key, reused.info["reused_from"])
        return True

    if sources and any([reuse(cell) for cell in list(todo)]):
        report = _write_report(
            config, finished, popularity, dataset_info, recipe, todo, out, meta, missed
        )
    ran = 0
    for name, sparsity, seed in list(todo):
        key = cell_key(name, sparsity, seed)
        if sources and reuse((name, sparsity, seed)):  # finished meanwhile by the other run
            report = _write_report(
                config, finished, popularity, dataset_info, recipe, todo, out, meta, missed
            )
            continue
        if max_cells is not None and ran >= max_cells:
            break
        method = methods[name]
        ctx = MethodContext(
            dataset=config.dataset,
            backbone=config.backbone,
            split=split,
            evaluator=evaluator,
            sparsity=sparsity,
            seed=seed,
            d_max=config.d_max,
            directory=os.path.join(work, key),
            train_config=train_config,
            backbone_builder=lambda s: backbone_builder(split, config.d_max, s),
            train_fn=train_fn,
            verbose=verbose,
            method=name,
            sparsities=tuple(float(x) for x in config.sparsities),
            root=work,
            options=dict(config.method_options.get(name, {})),
        )
        if verbose:
            logger.info("Cell %s: running.", key)
        try:
            cell = run_cell(method, ctx)
        except TargetMissedError as e:  # reported, never relaxed; the other cells go on
            logger.warning("Cell %s: target missed: %s", key, e)
            missed[key] = str(e)
            _io.write_json(missed_path, missed)
            todo.remove((name, sparsity, seed))
            report = _write_report(
                config, finished, popularity, dataset_info, recipe, todo, out, meta, missed
            )
            continue
        if missed.pop(key, None) is not None:  # met now (e.g. rerun with a longer search)
            _io.write_json(missed_path, missed)
        save_cell(cells_dir, cell)
        # The cell is on disk: its retraining checkpoints are no longer needed.
        shutil.rmtree(os.path.join(ctx.directory, "training"), ignore_errors=True)
        finished[key] = cell
        todo.remove((name, sparsity, seed))
        ran += 1
        if untrained_cells([cell], popularity):
            logger.warning(
                "Cell %s: validation R@20 %.4f is below %.2fx the popularity baseline's %.4f: "
                "the model may not have trained (early stopping during the initial plateau?). "
                "Consider a larger patience (now %d) or eval_every (now %d).",
                key,
                cell.validation.get("recall@20", math.nan),
                POPULARITY_MARGIN,
                popularity["validation"]["recall@20"],
                getattr(train_config, "patience", -1),
                getattr(train_config, "eval_every", -1),
            )
        if verbose:
            logger.info(
                "Cell %s: test R@20 %.4f N@20 %.4f, %d params, best step %s, %.0fs.",
                key,
                cell.test.get("recall@20", math.nan),
                cell.test.get("ndcg@20", math.nan),
                cell.usable_params,
                cell.best_step,
                cell.retrain_time,
            )
        report = _write_report(
            config, finished, popularity, dataset_info, recipe, todo, out, meta, missed
        )
    return report


def _run_signature(
    config: ProtocolConfig, dataset_info: Mapping[str, Any], recipe: Mapping[str, Any]
) -> dict:
    """What two runs must share for their cells to be interchangeable (JSON-normalised)."""
    return json.loads(
        json.dumps(
            {
                "name": config.name,
                "backbone": config.backbone,
                "d_max": config.d_max,
                "split_seed": config.split_seed,
                "dataset": dict(dataset_info),
                "recipe": dict(recipe),
            },
            default=jsonable,
        )
    )


def _reusable_cell(key: str, sources: Sequence[str], signature: Mapping[str, Any]) -> Any:
    """A finished cell ``key`` of another run with the same signature, or None."""
    for src in sources:
        cell_path = os.path.join(src, "cells", f"{key}.json")
        results_path = os.path.join(src, "results.json")
        if not (os.path.exists(cell_path) and os.path.exists(results_path)):
            continue
        other = _io.read_json(results_path, what="protocol results")
        cfg = other.get("config", {})
        theirs = {
            "name": cfg.get("name"),
            "backbone": cfg.get("backbone"),
            "d_max": cfg.get("d_max"),
            "split_seed": cfg.get("split_seed"),
            "dataset": other.get("dataset"),
            "recipe": other.get("recipe"),
            "method_options": (cfg.get("method_options") or {}).get(key.split("__")[0], {}),
        }
        if theirs != signature:
            diff = sorted(k for k in signature if theirs.get(k) != signature[k])
            logger.warning("Not reusing %s from %s: it differs in %s.", key, src, diff)
            continue
        cell = CellResult.from_dict(_io.read_json(cell_path, what="protocol cell"))
        return dataclasses.replace(cell, info={**cell.info, "reused_from": portable_path(src)})
    return None


def _write_report(
    config: ProtocolConfig,
    finished: Mapping[str, CellResult],
    popularity: Mapping[str, Any],
    dataset_info: Mapping[str, Any],
    recipe: Mapping[str, Any],
    todo: Sequence[tuple[str, float | None, int]],
    out: str,
    meta: Mapping[str, Any] | None,
    missed: Mapping[str, str] | None = None,
) -> ProtocolReport:
    wanted = {cell_key(*c) for c in config.cells()}
    cells = tuple(c for k, c in sorted(finished.items()) if k in wanted)
    summary = tuple(summarise_cells(cells, config.methods))
    report = ProtocolReport(
        config=config,
        cells=cells,
        summary=summary,
        popularity=popularity,
        dataset_info=dataset_info,
        recipe=recipe,
        pending=tuple(todo),
        json_path=os.path.join(out, "results.json"),
        markdown_path=os.path.join(out, "results.md"),
    )
    paper = {}
    for row in summary:
        cell = paper_cell(config.name, config.backbone, row["method"], row["sparsity"])
        paper[cell_key(row["method"], row["sparsity"], 0).rsplit("__seed", 1)[0]] = {
            "recall@20": cell.recall20,
            "ndcg@20": cell.ndcg20,
            "backbone_column": cell.backbone,
            "source": cell.source,
            "note": cell.note,
        }
    payload = {
        **(meta or {}),
        "config": {
            "dataset": portable_path(config.dataset)
            if os.path.isdir(config.dataset)
            else config.dataset,
            "name": config.name,
            "backbone": config.backbone,
            "methods": list(config.methods),
            "sparsities": list(config.sparsities),
            "seeds": list(config.seeds),
            "d_max": config.d_max,
            "split_seed": config.split_seed,
            "method_options": {k: dict(v) for k, v in config.method_options.items()},
        },
        "dataset": dict(dataset_info),
        "recipe": dict(recipe),
        "popularity": popularity,
        "summary": list(summary),
        "ratio_vs_es": {
            m: {c: r["recall@20"] for c, r in by_c.items()}
            for m, by_c in ratio_vs_es(summary).items()
        },
        "ndcg_ratio_vs_es": {
            m: {c: r["ndcg@20"] for c, r in by_c.items()}
            for m, by_c in ratio_vs_es(summary).items()
        },
        "search_time": search_times(cells),
        "paper": paper,
        "cells": [c.to_dict() for c in cells],
        "pending": [cell_key(*p) for p in todo],
        "missed": dict(missed or {}),
    }
    _io.write_json(report.json_path, plain(payload))
    md = markdown_report(report)
    if missed:
        md += "\nMissed targets (no result within the budget; the budget is not relaxed):\n\n"
        md += "".join(f"- {k}: {v}\n" for k, v in sorted(missed.items()))
    if meta:
        md += "\n" + "\n".join(
            f"{k}: {v if isinstance(v, str) else json.dumps(v)}" for k, v in meta.items()
        )
    _io.write_bytes(report.markdown_path, (md.rstrip() + "\n").encode("utf-8"))
    return report
