"""ESAPN as a ranking baseline: what it reached, beside ES at the same sparsity and the papers.

Reads a paper-protocol run that holds an ``esapn`` cell and an ``es`` cell at the sparsity
ESAPN reached (rounded up to four decimals, so ES never has more parameters), plus the full
model's cell when one is found in ``--full-cells``; writes
``results/esapn_ranking_<run folder name>.{json,md}`` and ``..._sizes.png`` (mean size
chosen against training frequency, users and items: the ESAPN paper's Figure 5 for ranking).

The ESAPN cell's end-of-stream sizes are read from ``<work-dir>/<cell>/esapn_sizes.npz``
(written by the protocol method). The papers' ESAPN rows (CIESS paper on ML-1M, BET paper on
Gowalla; no MF column there, NCF is the nearest backbone) are printed beside.

Example (the queue that produced the results)::

    python benchmarks/paper_protocol.py --dataset ml-1m --backbone mf --methods esapn \\
        --seeds 1 --jit-compile --out benchmarks/results/paper_protocol/ml-1m_mf_esapn \\
        --work-dir _state/ml-1m_mf_esapn
    python benchmarks/paper_protocol.py ... --methods esapn,es --sparsity <reached, ceil 4dp>
    python benchmarks/esapn_ranking.py --dataset ml-1m --backbone mf \\
        --run benchmarks/results/paper_protocol/ml-1m_mf_esapn --work-dir _state/ml-1m_mf_esapn \\
        --full-cells benchmarks/results/paper_protocol/ml-1m_mf
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS, command, machine, now, write_results  # noqa: E402

# The papers' ESAPN rows (R@20 / N@20, sparsity reached), by dataset and backbone.
PAPER = {
    "ml-1m": {
        "source": "CIESS paper, Table 1",
        "lightgcn": (0.2422, 0.4178, 0.72),
        "ngcf": (0.2276, 0.3829, 0.85),
        "ncf": (0.2283, 0.3822, 0.72),
    },
    "gowalla": {
        "source": "BET paper, Table 2",
        "lightgcn": (0.1579, 0.1329, 0.75),
        "ngcf": (0.1396, 0.1193, 0.83),
        "ncf": (0.1280, 0.0959, 0.74),
    },
}


def _cells(folder: Path, method: str) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(folder.glob(f"cells/{method}__*.json"))]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--dataset", default="ml-1m")
    p.add_argument("--backbone", default="mf")
    p.add_argument("--run", required=True, help="the protocol run folder with the cells")
    p.add_argument("--work-dir", required=True, help="that run's --work-dir")
    p.add_argument("--full-cells", default=None, help="a protocol run with the full cell")
    args = p.parse_args(argv)
    from tfembsize import _io
    from tfembsize.data import load_dataset
    from tfembsize.plots import plot_sizes_vs_frequency
    from tfembsize.protocol.cells import cell_key

    run = Path(args.run)
    esapn = _cells(run, "esapn")
    if not esapn:
        raise SystemExit(f"No esapn cell in {run / 'cells'}.")
    cell = esapn[0]
    reached = float(cell["sparsity_reached"])
    es = [c for c in _cells(run, "es") if c["sparsity"] >= reached]
    es_cell = min(es, key=lambda c: c["sparsity"]) if es else None
    full = _cells(Path(args.full_cells), "full") if args.full_cells else []
    split = load_dataset(args.dataset).split(0.5, 0.25, 0.25, seed=42)
    epochs = int(cell["info"]["esapn"].get("epochs", 1))
    key = cell_key("esapn", cell["sparsity"], int(cell["seed"]))
    sizes_file = cell["info"].get("sizes_file", "esapn_sizes.npz")
    sizes = _io.read_npz(Path(args.work_dir, key, sizes_file))
    d_max = int(json.loads((run / "results.json").read_text())["config"]["d_max"])
    name = f"esapn_ranking_{run.resolve().name}"
    png = RESULTS / f"{name}_sizes.png"
    lines_of = plot_sizes_vs_frequency(
        {
            "users": (sizes["user_embedding"], split.user_frequencies),
            "items": (sizes["item_embedding"], split.item_frequencies),
        },
        png,
        d_max=d_max,
        statistic="mean",
        title=f"ESAPN sizes, {args.dataset} {args.backbone} (BPR stream, {epochs} pass"
        f"{'es' if epochs > 1 else ''})",
    )

    def row(c: dict[str, Any] | None) -> dict[str, Any] | None:
        if c is None:
            return None
        return {
            "test_recall@20": c["test"]["recall@20"],
            "test_ndcg@20": c["test"]["ndcg@20"],
            "usable_params": c["usable_params"],
            "sparsity": c.get("sparsity"),
            "sparsity_reached": c.get("sparsity_reached"),
            "train_steps": c.get("train_steps"),
        }

    paper = PAPER.get(args.dataset, {})
    result: dict[str, Any] = {
        "dataset": args.dataset,
        "backbone": args.backbone,
        "esapn": row(cell),
        "es_same_sparsity": row(es_cell),
        "full": row(full[0]) if full else None,
        "esapn_vs_es": (
            cell["test"]["recall@20"] / es_cell["test"]["recall@20"] if es_cell else None
        ),
        "mean_size": {
            "users": float(np.mean(sizes["user_embedding"])),
            "items": float(np.mean(sizes["item_embedding"])),
        },
        "sizes_vs_frequency": lines_of,
        "paper_esapn": paper,
        "command": command(),
        "machine": machine(),
        "date": now(),
    }
    md = [
        f"# ESAPN as a ranking baseline: {args.dataset} {args.backbone}",
        "",
        "| method | sparsity | test R@20 | test N@20 | usable params | steps |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for label, r in (
        (f"ESAPN ({epochs} pass{'es' if epochs > 1 else ''}, end of stream)", result["esapn"]),
        ("ES at the same sparsity", result["es_same_sparsity"]),
        ("full (128)", result["full"]),
    ):
        if r is not None:
            sp = r["sparsity_reached"] if r["sparsity_reached"] is not None else r["sparsity"]
            md.append(
                f"| {label} | {sp:.4f} | {r['test_recall@20']:.4f} | {r['test_ndcg@20']:.4f} | "
                f"{r['usable_params']:,} | {r['train_steps']} |"
            )
    if result["esapn_vs_es"] is not None:
        md += ["", f"ESAPN / ES test Recall@20: {result['esapn_vs_es']:.3f}."]
    md += [
        "",
        f"Mean size: users {result['mean_size']['users']:.1f}, items "
        f"{result['mean_size']['items']:.1f}.",
    ]
    if paper:
        md += ["", f"Papers' ESAPN rows ({paper['source']}; R@20 / N@20 at the sparsity reached):"]
        for bb in ("lightgcn", "ngcf", "ncf"):
            r20, n20, sp = paper[bb]
            md.append(f"- {bb}: {r20:.4f} / {n20:.4f} at {sp:.0%}")
    for side in ("user", "item"):
        if f"{side}_grow_probability" not in sizes:
            continue
        grid, grow = sizes[f"{side}_grid_counts"], sizes[f"{side}_grow_probability"]
        result[f"{side}_grow_probability"] = {
            "counts": grid.tolist(),
            "by_rung": grow.T.tolist(),
        }
        ladder = cell["info"]["esapn"]["ladder"]
        md += [
            "",
            f"Learned probability that a {side} grows, by its running count (rows) and the size "
            "it is at (columns):",
            "",
            "| count | " + " | ".join(str(d) for d in ladder[:-1]) + " |",
            "| --- |" + " --- |" * (len(ladder) - 1),
        ]
        for k in range(0, grid.size, max(1, grid.size // 10)):
            md.append(f"| {grid[k]} | " + " | ".join(f"{p:.2f}" for p in grow[k]) + " |")
    md += ["", f"![mean size against frequency]({png.name})", ""]
    write_results(name, result, "\n".join(md) + "\n")


if __name__ == "__main__":
    main()
