"""Reports of a protocol run: summaries over seeds, ratios to ES, timings, the markdown table.

Beside every table: the popularity baseline (score = train popularity; a model that does not
beat it did not train, `untrained_cells`), every other method's test R@20 / N@20 relative to
ES at the same sparsity (`ratio_vs_es`), search methods' wall time relative to one full
training (`search_times`) and the papers' numbers for the same cells.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tfembsize.protocol.cells import CellResult, _metrics_of, cell_key
from tfembsize.protocol.config import ProtocolConfig
from tfembsize.protocol.paper import PAPER_METHOD_LABELS, PAPER_SOURCES, paper_cell
from tfembsize.search.environment import feedback_from_ranking

__all__ = [
    "REPORT_METRICS",
    "POPULARITY_MARGIN",
    "ProtocolReport",
    "popularity_result",
    "untrained_cells",
    "summarise_cells",
    "ratio_vs_es",
    "search_times",
    "markdown_report",
    "spearman",
]

REPORT_METRICS = ("recall@5", "recall@20", "ndcg@5", "ndcg@20")


# Popularity --------------------------------------------------------------------------------
def popularity_result(split: Any, evaluator: Any) -> dict[str, dict[str, float]]:
    """Validation and test metrics of ranking by training popularity (same for every user)."""
    pop = np.asarray(split.item_frequencies, np.float32)
    users = np.ones((split.num_users, 1), np.float32)
    items = pop.reshape(-1, 1)
    out = {}
    for phase in ("validation", "test"):
        fb = feedback_from_ranking(evaluator.evaluate((users, items), phase=phase))
        out[phase] = _metrics_of(fb)
    return out


POPULARITY_MARGIN = 1.05
"""A cell whose validation Recall@20 is below this multiple of the popularity baseline's is
flagged as possibly untrained (`untrained_cells`)."""


def untrained_cells(
    cells: Sequence[CellResult], popularity: Mapping[str, Mapping[str, float]]
) -> list[str]:
    """Keys of the cells whose validation Recall@20 is below 1.05x the popularity baseline's.

    A model that does not beat ranking by popularity did not train. The usual cause
    is early stopping during the initial plateau, where small tables can stay for thousands of
    steps (LightGCN on ML-100K at d = 6: 3000 steps); a larger ``patience`` fixes it. Only
    validation numbers are compared, so the check never looks at test.

    Args:
        cells: finished cells.
        popularity: `popularity_result` of the same split.

    Returns:
        The flagged cell keys, in the order of ``cells`` (empty if popularity has no
        validation Recall@20).
    """
    base = popularity.get("validation", {}).get("recall@20")
    if base is None or not math.isfinite(base):
        return []
    return [
        c.key() for c in cells if c.validation.get("recall@20", math.inf) < POPULARITY_MARGIN * base
    ]


# Summaries --------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class ProtocolReport:
    """Results of a protocol run so far.

    Attributes:
        config: the run's configuration.
        cells: finished cells.
        summary: one row per (method, sparsity): mean and std over seeds.
        popularity: the popularity baseline's validation and test metrics.
        dataset_info: users, items, interactions, rows.
        recipe: the retraining recipe as a dict.
        pending: cells not finished yet.
        json_path: path of the JSON results.
        markdown_path: path of the markdown table.
    """

    config: ProtocolConfig
    cells: tuple[CellResult, ...]
    summary: tuple[dict, ...]
    popularity: Mapping[str, Mapping[str, float]]
    dataset_info: Mapping[str, Any]
    recipe: Mapping[str, Any]
    pending: tuple[tuple[str, float | None, int], ...]
    json_path: str = ""
    markdown_path: str = ""


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    vals = [float(v) for v in values]
    if not vals:
        return math.nan, math.nan
    mean = statistics.fmean(vals)
    std = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return mean, std


def summarise_cells(cells: Sequence[CellResult], order: Sequence[str]) -> list[dict]:
    """Mean ± std over seeds per (method, sparsity), in method order then sparsity."""
    groups: dict[tuple[str, float | None], list[CellResult]] = {}
    for c in cells:
        groups.setdefault((c.method, c.sparsity), []).append(c)
    rank = {m: i for i, m in enumerate(order)}
    keys = sorted(groups, key=lambda k: (rank.get(k[0], len(rank)), -1.0 if k[1] is None else k[1]))
    rows = []
    for key in keys:
        group = sorted(groups[key], key=lambda c: c.seed)
        row: dict[str, Any] = {
            "method": key[0],
            "sparsity": key[1],
            "seeds": [c.seed for c in group],
            "n": len(group),
        }
        for metric in (*REPORT_METRICS, "quality"):
            m, s = _mean_std([c.test.get(metric, math.nan) for c in group])
            row[f"test_{metric}"] = {"mean": m, "std": s}
        m, s = _mean_std([c.validation.get("quality", math.nan) for c in group])
        row["validation_quality"] = {"mean": m, "std": s}
        for name in ("usable_params", "sparsity_reached", "retrain_time", "method_time"):
            m, s = _mean_std([getattr(c, name) for c in group])
            row[name] = {"mean": m, "std": s}
        row["best_step"] = {
            "mean": _mean_std([c.best_step or 0 for c in group])[0],
            "values": [c.best_step for c in group],
        }
        row["budget"] = group[0].budget
        row["steps_per_second"] = _mean_std([c.steps_per_second for c in group])[0]
        rows.append(row)
    return rows


def ratio_vs_es(summary: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """Test R@20 and N@20 of every budgeted method over ES's at the same sparsity.

    Returns:
        ``{method: {"<c>": {"recall@20": ratio, "ndcg@20": ratio}}}`` for every method other
        than ``es`` with a row at a sparsity where ``es`` has one (means over seeds).
    """
    es = {row["sparsity"]: row for row in summary if row["method"] == "es"}
    out: dict[str, dict[str, dict[str, float]]] = {}
    for row in summary:
        c = row["sparsity"]
        if row["method"] == "es" or c is None or c not in es:
            continue
        ratios = {}
        for metric in ("recall@20", "ndcg@20"):
            den = es[c][f"test_{metric}"]["mean"]
            num = row[f"test_{metric}"]["mean"]
            ratios[metric] = num / den if den > 0 else math.nan
        out.setdefault(row["method"], {})[f"{c:g}"] = ratios
    return out


_TIMING_KEYS = ("search_time", "full_train_time", "search_vs_full_train_ratio")


def search_times(cells: Sequence[CellResult]) -> dict[str, dict[str, dict[str, float]]]:
    """Search wall time, one full training's wall time and their ratio, per method and c.

    Read from the cells' ``info`` (search methods such as BET record ``search_time``,
    ``full_train_time`` and ``search_vs_full_train_ratio``); means over seeds.
    """
    groups: dict[tuple[str, str], list[CellResult]] = {}
    for c in cells:
        if all(c.info.get(k) is not None for k in _TIMING_KEYS):
            c_key = "none" if c.sparsity is None else f"{c.sparsity:g}"
            groups.setdefault((c.method, c_key), []).append(c)
    out: dict[str, dict[str, dict[str, float]]] = {}
    for (method, c_key), group in sorted(groups.items()):
        row: dict[str, float] = {"n": len(group)}
        for k in _TIMING_KEYS:
            row[k] = statistics.fmean(float(c.info[k]) for c in group)
        out.setdefault(method, {})[c_key] = row
    return out


# Markdown ----------------------------------------------------------------------------------
def _fmt(stat: Mapping[str, float], n: int) -> str:
    m, s = stat["mean"], stat["std"]
    if math.isnan(m):
        return "—"
    return f"{m:.4f} ± {s:.4f}" if n > 1 else f"{m:.4f}"


def markdown_report(report: ProtocolReport) -> str:
    """The markdown tables: ours (mean ± std over seeds), the papers' cells, popularity."""
    cfg = report.config
    info = report.dataset_info
    n_seeds = len(cfg.seeds)
    done = {len(r["seeds"]) for r in report.summary}
    lines = [
        f"# Paper protocol: {cfg.name}, {cfg.backbone.upper()} backbone",
        "",
        f"- Data: {info.get('num_users'):,} users, {info.get('num_items'):,} items, "
        f"{info.get('num_interactions'):,} interactions; split 50/25/25 per user (seed "
        f"{cfg.split_seed}); N = {info.get('num_entities'):,} entities "
        f"(rows of the tables, ids that occur), d_max = {cfg.d_max}.",
        f"- Seeds requested: {n_seeds} ({', '.join(map(str, cfg.seeds))}); seeds per row so far: "
        f"{', '.join(map(str, sorted(done))) or 'none'}. Mean ± std over seeds.",
        "- Retraining: from scratch on train, early stopping on validation only, best weights "
        "restored; test ranks all items with train + validation items excluded.",
        f"- Recipe: `{json.dumps(report.recipe, sort_keys=True)}`",
        f"- Paper cells: {PAPER_SOURCES.get(cfg.name, 'none for this dataset')}; "
        "R@20 / N@20 of the same method and sparsity.",
        "",
        "| method | c | R@5 | R@20 | N@5 | N@20 | params (budget) | best step | retrain s | "
        "paper R@20 / N@20 | ours / paper R@20 |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in report.summary:
        n = row["n"]
        c = "—" if row["sparsity"] is None else f"{row['sparsity']:.0%}"
        params = f"{row['usable_params']['mean']:,.0f}"
        if row["budget"] is not None:
            params += f" ({row['budget']:,})"
        else:
            params += f" (reached {row['sparsity_reached']['mean']:.1%})"
        paper = paper_cell(cfg.name, cfg.backbone, row["method"], row["sparsity"])
        ratio = "—"
        if paper.available:
            ratio = f"{row['test_recall@20']['mean'] / paper.recall20:.2f}"
        label = row["method"]
        if row["method"] in PAPER_METHOD_LABELS:
            label += f" ({PAPER_METHOD_LABELS[row['method']]})"
        steps = ", ".join("—" if v is None else str(v) for v in row["best_step"]["values"])
        lines.append(
            f"| {label} | {c} | {_fmt(row['test_recall@5'], n)} | {_fmt(row['test_recall@20'], n)} "
            f"| {_fmt(row['test_ndcg@5'], n)} | {_fmt(row['test_ndcg@20'], n)} | {params} | "
            f"{steps} | {row['retrain_time']['mean']:.0f} | {paper.text()} | {ratio} |"
        )
    pop = report.popularity.get("test")
    if pop:
        lines.append(
            f"| popularity (train counts) | — | {pop.get('recall@5', math.nan):.4f} | "
            f"{pop.get('recall@20', math.nan):.4f} | {pop.get('ndcg@5', math.nan):.4f} | "
            f"{pop.get('ndcg@20', math.nan):.4f} | 0 | — | — | — | — |"
        )
    lines.append("")
    flagged = untrained_cells(report.cells, report.popularity)
    if flagged:
        base = report.popularity["validation"]["recall@20"]
        lines.append(
            f"**Warning:** {', '.join(flagged)}: validation R@20 below "
            f"{POPULARITY_MARGIN:.2f}x the popularity baseline's ({base:.4f}); these models may "
            "not have trained (early stopping during the initial plateau?). Rerun them with a "
            "larger patience before reading their numbers."
        )
        lines.append("")
    lines.extend(_ratio_lines(report))
    lines.extend(_timing_lines(report))
    if report.pending:
        lines.append(
            f"{len(report.pending)} cells still to run: "
            + ", ".join(cell_key(*p) for p in report.pending[:12])
            + (" ..." if len(report.pending) > 12 else "")
        )
        lines.append("")
    speeds = [r["steps_per_second"] for r in report.summary if r["steps_per_second"]]
    if speeds and report.recipe.get("steps_per_epoch"):
        spe = report.recipe["steps_per_epoch"]
        lines.append(
            f"Training speed: {statistics.fmean(speeds):.1f} optimiser steps/s "
            f"({statistics.fmean(speeds) / spe:.3f} epochs/s at {spe} steps per epoch), "
            "validation evaluations included."
        )
        lines.append("")
    return "\n".join(lines)


def _ratio_lines(report: ProtocolReport) -> list[str]:
    cfg = report.config
    ratios = ratio_vs_es(report.summary)
    if not ratios:
        return []
    lines = [
        "Test R@20 / N@20 relative to ES at the same sparsity (same recipe and seeds), beside "
        "the paper's ratio of the same cells:",
        "",
        "| method | c | R@20 / ES | N@20 / ES | paper R@20 / ES |",
        "| --- | --- | --- | --- | --- |",
    ]
    for method, by_c in ratios.items():
        for c_key, r in by_c.items():
            c = float(c_key)
            ours, es = (paper_cell(cfg.name, cfg.backbone, m, c) for m in (method, "es"))
            paper = "—"
            if ours.recall20 is not None and es.recall20 is not None:  # both `available`
                paper = f"{ours.recall20 / es.recall20:.3f} ({ours.backbone})"
            lines.append(
                f"| {method} | {c:.0%} | {r['recall@20']:.3f} | {r['ndcg@20']:.3f} | {paper} |"
            )
    lines.append("")
    return lines


def _timing_lines(report: ProtocolReport) -> list[str]:
    times = search_times(report.cells)
    if not times:
        return []
    lines = [
        "Search wall time against one full training of the backbone in the same run:",
        "",
        "| method | c | search s | full training s | search / full training |",
        "| --- | --- | --- | --- | --- |",
    ]
    for method, by_c in times.items():
        for c_key, t in by_c.items():
            c = "—" if c_key == "none" else f"{float(c_key):.0%}"
            lines.append(
                f"| {method} | {c} | {t['search_time']:.0f} | {t['full_train_time']:.0f} | "
                f"{t['search_vs_full_train_ratio']:.2f} |"
            )
    lines.append("")
    return lines


# Statistics --------------------------------------------------------------------------------
def spearman(x: Any, y: Any, min_points: int = 3) -> float | None:
    """Spearman rank correlation of ``x`` and ``y``, or None where it is undefined.

    Undefined means fewer than ``min_points`` pairs or a constant side (scipy would warn and
    return nan there).

    Example:
        >>> spearman([0.1, 0.2, 0.3], [5.0, 9.0, 7.0])
        0.5
    """
    from scipy.stats import spearmanr

    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) < min_points or np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    return float(spearmanr(x, y).statistic)
