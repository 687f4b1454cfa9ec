"""CIESS evidence from protocol runs: CIESS vs ES vs MR, the ES seed band, the search curves.

Reads the protocol output folders given (cells of ``ciess``, ``es``, ``mr`` at each sparsity,
ES on several seeds for the noise band) and the CIESS search in the run's work folder, and
writes ``results/<name>.json`` and ``.md`` (command, machine, date) and
``results/<name>_curves.png`` (mean reward and mean size per side per episode; needs
matplotlib, ``pip install tfembsize[plots]``).

Example (after the protocol runs named in ``benchmarks/results/paper_protocol/*/NOTES.md``)::

    python benchmarks/ciess_report.py --name ciess_ml1m \\
        --runs benchmarks/results/paper_protocol/ml-1m_mf_ciess,\\
benchmarks/results/paper_protocol/ml-1m_mf_es_seeds \\
        --search _state/ml-1m_mf_ciess/ciess__shared__seed0

JSON keys: ``ratio_vs_es`` / ``ndcg_ratio_vs_es`` (CIESS test metric over the mean ES test
metric at each sparsity), ``es_band`` (each ES seed over the ES mean: the noise band),
``beyond_noise`` (the CIESS ratio above the band's top), ``paper_ratio`` (the CIESS paper's
CIESS/SU ratio, LightGCN column), ``missed`` (targets no archived mask met),
``search_vs_full_train_ratio``, ``episodes`` (the curves) and ``archive`` (density range).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS, command, machine, now, spearman, write_results  # noqa: E402

logger = logging.getLogger("ciess_report")


def _cells(runs: list[str]) -> tuple[list[dict], dict[str, str], dict]:
    cells, missed, config = [], {}, {}
    seen = set()
    for run in runs:
        results = json.loads(Path(run, "results.json").read_text())
        config = config or results.get("config", {})
        missed.update(results.get("missed") or {})
        for cell in results["cells"]:
            key = (cell["method"], cell["sparsity"], cell["seed"])
            if key not in seen:
                seen.add(key)
                cells.append(cell)
    return cells, missed, config


def _episodes(search: str) -> tuple[list[dict], dict[str, Any], dict[str, Any]]:
    """Per-episode curves and the archive summary from a saved CIESS search."""
    from tfembsize.controllers import CIESSController

    run = json.loads(Path(search, "run.json").read_text())
    controller = CIESSController.load(os.path.join(search, run["checkpoint"], "controller"))
    a = controller.archive()
    rows = []
    for e in np.unique(a.episode):
        m = a.episode == e
        rows.append(
            {
                "episode": int(e),
                "iterations": int(m.sum()),
                "user_reward": float(a.user_reward[m].mean()),
                "item_reward": float(a.item_reward[m].mean()),
                "user_size": float(a.user_sizes[m].mean()),
                "item_size": float(a.item_sizes[m].mean()),
                "density_min": float(a.density[m].min()),
                "density_mean": float(a.density[m].mean()),
                "density_max": float(a.density[m].max()),
                "mean_ratio": float(a.mean_ratio[m].mean()),
            }
        )
    archive = {
        "masks": len(a),
        "density_min": float(a.density.min()),
        "density_median": float(np.median(a.density)),
        "density_max": float(a.density.max()),
        "spearman_density_vs_mean_ratio": spearman(a.density, a.mean_ratio),
        "within": {
            f"{c:g}": int((a.density <= 1 - c + 1e-12).sum()) for c in controller.sparsities
        },
    }
    return rows, archive, controller.get_config()


def _plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [r["episode"] for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    ax1.plot(ep, [r["user_reward"] for r in rows], label="users")
    ax1.plot(ep, [r["item_reward"] for r in rows], label="items")
    ax1.set_xlabel("episode")
    ax1.set_ylabel("mean reward")
    ax1.legend()
    ax2.plot(ep, [r["user_size"] for r in rows], label="users")
    ax2.plot(ep, [r["item_size"] for r in rows], label="items")
    ax2.set_xlabel("episode")
    ax2.set_ylabel("mean size")
    ax2.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--name", required=True, help="results file stem, e.g. ciess_ml1m")
    p.add_argument("--runs", required=True, help="comma-separated protocol output folders")
    p.add_argument("--search", default=None, help="the CIESS search folder (for the curves)")
    p.add_argument("--method", default="ciess", help="the CIESS method name in the cells")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    from tfembsize.protocol.paper import paper_cell

    cells, missed, config = _cells(args.runs.split(","))
    by = {}
    for cell in cells:
        by.setdefault((cell["method"], cell["sparsity"]), []).append(cell)
    sparsities = sorted({c["sparsity"] for c in cells if c["sparsity"] is not None})
    out: dict[str, Any] = {
        "dataset": config.get("name"),
        "backbone": config.get("backbone"),
        "method": args.method,
        "runs": args.runs.split(","),
        "cells": {},
        "ratio_vs_es": {},
        "ndcg_ratio_vs_es": {},
        "es_band": {},
        "beyond_noise": {},
        "paper_ratio": {},
        "missed": {k: v for k, v in missed.items() if k.startswith(args.method + "__")},
    }
    ratios = []
    for c in sparsities:
        key = f"{c:g}"
        es = by.get(("es", c), [])
        mine = by.get((args.method, c), [])
        mr = by.get(("mr", c), [])
        row = {
            m: [
                {"seed": x["seed"], **{k: x["test"][k] for k in ("recall@20", "ndcg@20")}}
                for x in xs
            ]
            for m, xs in (("es", es), (args.method, mine), ("mr", mr))
        }
        out["cells"][key] = row
        paper_c = paper_cell(config.get("name", ""), "lightgcn", "ciess", c)
        paper_es = paper_cell(config.get("name", ""), "lightgcn", "es", c)
        if paper_c.available and paper_es.available:
            out["paper_ratio"][key] = paper_c.recall20 / paper_es.recall20
        if not es or not mine:
            continue
        es_r = statistics.mean(x["test"]["recall@20"] for x in es)
        es_n = statistics.mean(x["test"]["ndcg@20"] for x in es)
        ratio = statistics.mean(x["test"]["recall@20"] for x in mine) / es_r
        out["ratio_vs_es"][key] = ratio
        out["ndcg_ratio_vs_es"][key] = statistics.mean(x["test"]["ndcg@20"] for x in mine) / es_n
        band = [x["test"]["recall@20"] / es_r for x in es]
        out["es_band"][key] = {"seeds": len(es), "min": min(band), "max": max(band)}
        out["beyond_noise"][key] = bool(len(es) >= 3 and ratio > max(band))
        info = mine[0]["info"]
        out.setdefault("search_vs_full_train_ratio", info.get("search_vs_full_train_ratio"))
        scores = [r["search_score"] for r in info.get("candidates", [])]
        values = [r["selection_value"] for r in info.get("candidates", [])]
        out.setdefault("top_l_spearman_search_vs_retrained", {})[key] = spearman(scores, values)
        ratios.append((key, ratio))
    if args.search:
        rows, archive, settings = _episodes(args.search)
        out["episodes"], out["archive"], out["settings"] = rows, archive, settings
        png = RESULTS / f"{args.name}_curves.png"
        try:
            _plot(rows, png, f"{args.method} search, {out['dataset']} {out['backbone']}")
            out["curves_png"] = png.name
        except ImportError:
            logger.warning("matplotlib is not installed: no PNG (pip install tfembsize[plots]).")
    out.update(command=command(), machine=machine(), date=now())
    lines = [
        f"# CIESS on {out['dataset']} {out['backbone']}",
        "",
        "| c | CIESS R@20 / N@20 | ES R@20 (seeds) | MR R@20 | CIESS/ES R@20 | ES band | "
        "paper CIESS/SU |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for c in sparsities:
        key = f"{c:g}"
        row = out["cells"][key]
        mine = row[args.method]
        cm = (
            f"{statistics.mean(x['recall@20'] for x in mine):.4f} / "
            f"{statistics.mean(x['ndcg@20'] for x in mine):.4f}"
            if mine
            else "missed"
            if any(k.startswith(f"{args.method}__c{key}__") for k in out["missed"])
            else "not run"
        )
        es = row["es"]
        es_t = ", ".join(f"{x['recall@20']:.4f}" for x in es) or "—"
        mr_t = ", ".join(f"{x['recall@20']:.4f}" for x in row["mr"]) or "—"
        band = out["es_band"].get(key)
        band_t = f"{band['min']:.3f}–{band['max']:.3f} ({band['seeds']})" if band else "—"
        r = out["ratio_vs_es"].get(key)
        pr = out["paper_ratio"].get(key)
        lines.append(
            f"| {c:.0%} | {cm} | {es_t} | {mr_t} | {'—' if r is None else f'{r:.3f}'} | "
            f"{band_t} | {'—' if pr is None else f'{pr:.3f}'} |"
        )
    ratio = out.get("search_vs_full_train_ratio")
    if ratio is not None:
        lines += ["", f"Search wall time / one full training of the backbone: {ratio:.1f}."]
    top = out.get("top_l_spearman_search_vs_retrained")
    if top:
        lines += [
            "",
            "Spearman(search score, retrained validation value) over the top l masks: "
            + ", ".join(f"c={k}: {v}" for k, v in top.items())
            + " (3 points each: indicative only).",
        ]
    if out["missed"]:
        lines += ["", "Missed targets:", ""] + [f"- {k}: {v}" for k, v in out["missed"].items()]
    if "archive" in out:
        a = out["archive"]
        lines += [
            "",
            f"Archive: {a['masks']} masks, density {a['density_min']:.3f} to "
            f"{a['density_max']:.3f} (median {a['density_median']:.3f}); within each target: "
            f"{a['within']}.",
        ]
    write_results(args.name, out, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
