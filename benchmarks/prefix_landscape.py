"""Is there a prefix allocation better than uniform sizes? Retrain a designed family and see.

Every size search over per-row prefix sizes (BET, CIESS, ESAPN with a cap) can only beat
uniform sizes (ES) if the landscape holds an allocation that does. This script retrains,
from scratch with the protocol's recipe, a designed family of allocations at each target
sparsity c (all exactly within B(c) = floor((1 - c) d_max N), asserted):

* ``share=s alpha=a``: a fraction ``s`` of the budget to the users, the rest to the items;
  within a side, sizes proportional to ``(frequency + 1) ** a`` (``a = 0``: uniform within
  the side). ``s = natural`` is the users' share of the rows; ``share=natural alpha=0`` is
  ES with the rounding remainder of the budget handed out (one unit more for some rows),
  which separates the effect of spending the whole budget from that of the shape.
* ``joint alpha=a``: one proportionality constant across both sides, each side's
  frequencies divided by its mean, so a user and an item of the same relative popularity
  get the same size (an MF score only uses ``min(d_u, d_i)`` coordinates).
* ``two-level top=q ratio=r``: the top ``q`` of users *and* items by frequency get
  ``r`` times the size of the others, with the same two sizes on both sides.

ES itself is not retrained here: its cells (3 seeds, same recipe) are read from the
protocol runs given by ``--es-cells`` and give the noise band. Members are retrained with
seed 0 (``--seed``), one at a time; each finished member is appended to
``<work-dir>/prefix_landscape_c<c>.jsonl`` and each retraining checkpoints itself, so a
killed run resumes where it stopped.

Example::

    python benchmarks/prefix_landscape.py --dataset ml-1m --backbone mf --jit-compile \\
        --sparsity 0.9,0.95 --work-dir _state/prefix_landscape_ml-1m_mf \\
        --es-cells benchmarks/results/paper_protocol/ml-1m_mf,\\
benchmarks/results/paper_protocol/ml-1m_mf_es_seeds

Writes ``results/prefix_landscape_<dataset>_<backbone>.{json,md}`` (key ``best_vs_es`` per
sparsity with the ES seed band) with command, machine and date.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import command, machine, now, protocol_context, write_results  # noqa: E402

SHARES = ("0.3", "0.5", "natural", "0.7")
ALPHAS = (0.0, 0.5, 1.0)
JOINT_ALPHAS = (0.5,)
TWO_LEVEL = ((0.2, 4.0),)


def fill_to(weights: np.ndarray, total: int, d_max: int) -> np.ndarray:
    """Integer sizes in [1, d_max], proportional to ``weights`` where not clipped, summing to
    at most ``total`` and as close to it as one unit per row allows."""
    w = np.asarray(weights, np.float64)
    n = w.size
    if total < n:
        raise ValueError(f"total={total} cannot give {n} rows a size of at least 1")
    lo, hi = 0.0, float(d_max) / float(w.min())
    for _ in range(200):  # bisection on the scale
        mid = 0.5 * (lo + hi)
        if np.clip(np.floor(mid * w), 1, d_max).sum() <= total:
            lo = mid
        else:
            hi = mid
    sizes = np.clip(np.floor(lo * w), 1, d_max).astype(np.int64)
    left = int(total - sizes.sum())
    if left > 0:  # hand the rounding remainder to the heaviest rows not yet full
        order = np.argsort(-w, kind="stable")
        room = order[sizes[order] < d_max][:left]
        sizes[room] += 1
    assert 1 <= sizes.min() and sizes.max() <= d_max and sizes.sum() <= total
    return sizes


def family(
    fu: np.ndarray,
    fi: np.ndarray,
    limit: int,
    d_max: int,
    shares: tuple[str, ...] = SHARES,
    alphas: tuple[float, ...] = ALPHAS,
) -> dict[str, Any]:
    """The designed allocations ``name -> (user sizes, item sizes)`` within ``limit``."""
    nu, ni = fu.size, fi.size
    members: dict[str, Any] = {}
    for share in shares:
        s = nu / (nu + ni) if share == "natural" else float(share)
        for a in alphas:
            users = int(np.floor(s * limit))
            members[f"share={share} alpha={a:g}"] = (
                fill_to((fu + 1.0) ** a, users, d_max),
                fill_to((fi + 1.0) ** a, limit - users, d_max),
            )
    for a in JOINT_ALPHAS:
        w = np.concatenate([(fu / fu.mean() + 1e-3) ** a, (fi / fi.mean() + 1e-3) ** a])
        sizes = fill_to(w, limit, d_max)
        members[f"joint alpha={a:g}"] = (sizes[:nu], sizes[nu:])
    for q, r in TWO_LEVEL:
        top_u = fu >= np.quantile(fu, 1 - q)
        top_i = fi >= np.quantile(fi, 1 - q)
        n_top = int(top_u.sum() + top_i.sum())
        n_low = nu + ni - n_top
        low = int(np.floor(limit / (n_low + r * n_top)))
        # the rest of the budget to the top rows (about r times the others' size)
        high = min(d_max, int(np.floor((limit - low * n_low) / n_top)))
        u = np.where(top_u, high, low).astype(np.int64)
        i = np.where(top_i, high, low).astype(np.int64)
        members[f"two-level top={q:g} ratio={r:g}"] = (u, i)
    for name, (u, i) in members.items():
        total = int(u.sum() + i.sum())
        assert total <= limit, (name, total, limit)
        assert u.min() >= 1 and i.min() >= 1 and max(u.max(), i.max()) <= d_max, name
    return members


def grid_of(names: list[str]) -> tuple[tuple[str, ...], tuple[float, ...]]:
    """The ``share=s alpha=a`` grid (shares, alphas) that produced the member ``names``, in
    the order `family` uses by default, so a later script rebuilds the same allocations."""
    shares, alphas = [], []
    for name in names:
        if name.startswith("share="):
            s, a = name.split()
            shares.append(s.split("=", 1)[1])
            alphas.append(float(a.split("=", 1)[1]))
    order_s = [x for x in SHARES if x in shares] + sorted(set(shares) - set(SHARES))
    return tuple(order_s), tuple(sorted(set(alphas)))


def es_band(cells: list[str], c: float) -> dict[str, Any]:
    """ES test/validation numbers at ``c`` over every seed found in the cell folders."""
    rows = {}
    for folder in cells:
        for path in sorted(Path(folder, "cells").glob(f"es__c{c:g}__seed*.json")):
            d = json.loads(path.read_text())
            rows[int(d["seed"])] = {
                "test_recall@20": d["test"]["recall@20"],
                "test_ndcg@20": d["test"]["ndcg@20"],
                "validation_recall@20": d["validation"]["recall@20"],
                "usable_params": d["usable_params"],
            }
    if not rows:
        raise SystemExit(f"No ES cells for c={c:g} in {cells}.")
    r = np.array([v["test_recall@20"] for v in rows.values()])
    return {
        "seeds": rows,
        "test_recall@20_mean": float(r.mean()),
        "test_recall@20_min": float(r.min()),
        "test_recall@20_max": float(r.max()),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="ml-1m")
    p.add_argument("--backbone", default="mf")
    p.add_argument("--sparsity", default="0.9,0.95")
    p.add_argument("--work-dir", required=True)
    p.add_argument("--es-cells", required=True, help="comma-separated protocol run folders")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jit-compile", action="store_true")
    p.add_argument("--eval-every", type=int, default=None)
    p.add_argument("--patience", type=int, default=None)
    p.add_argument("--only", default="", help="comma-separated member names (default: all)")
    p.add_argument(
        "--name",
        default="",
        help="results file stem (default: prefix_landscape_<dataset>_<backbone>)",
    )
    p.add_argument(
        "--shares",
        default=",".join(SHARES),
        help="users' budget shares of the share/alpha family ('natural': the users' row share)",
    )
    p.add_argument(
        "--alphas",
        default=",".join(f"{a:g}" for a in ALPHAS),
        help="frequency exponents of the share/alpha family",
    )
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    from tfembsize.budget import Budget

    sparsities = [float(x) for x in args.sparsity.split(",")]
    cells = [x for x in args.es_cells.split(",") if x]
    os.makedirs(args.work_dir, exist_ok=True)
    log = logging.getLogger("prefix_landscape")
    result: dict[str, Any] = {
        "dataset": args.dataset,
        "backbone": args.backbone,
        "seed": args.seed,
        "members": {},
        "es": {},
        "best_vs_es": {},
    }
    for c in sparsities:
        ctx = protocol_context(
            args.dataset,
            args.backbone,
            args.work_dir,
            os.path.join(args.work_dir, f"c{c:g}"),
            sparsity=c,
            seed=args.seed,
            method="prefix_landscape",
            jit_compile=args.jit_compile,
            eval_every=args.eval_every,
            patience=args.patience,
        )
        obs = ctx.observation()
        d_max = obs.d_max
        limit = Budget(sparsity=c, d_max=d_max).max_params_for(obs.num_rows)
        fu = np.asarray(obs.user_frequencies, np.float64)
        fi = np.asarray(obs.item_frequencies, np.float64)
        members = family(
            fu,
            fi,
            limit,
            d_max,
            shares=tuple(x for x in args.shares.split(",") if x),
            alphas=tuple(float(x) for x in args.alphas.split(",") if x),
        )
        if args.only:
            members = {k: v for k, v in members.items() if k in args.only.split(",")}
        path = Path(args.work_dir, f"prefix_landscape_c{c:g}.jsonl")
        done = {}
        if path.exists():
            for line in path.read_text().splitlines():
                row = json.loads(line)
                done[row["name"]] = row
        for k, (name, (u, i)) in enumerate(members.items()):
            if name in done:
                continue
            log.info("c=%g member %d/%d: %s", c, k + 1, len(members), name)
            plan = obs.plan_from_sizes(u, i)
            retrained = ctx.retrain(plan)
            assert retrained.usable_params <= limit, (name, retrained.usable_params, limit)
            test = ctx.evaluator.evaluate(retrained.model.ranking_scorer(), "test")
            row = {
                "name": name,
                "usable_params": int(retrained.usable_params),
                "budget": int(limit),
                "user_share": float(u.sum() / (u.sum() + i.sum())),
                "mean_user_size": float(u.mean()),
                "mean_item_size": float(i.mean()),
                "validation_recall@20": retrained.validation.metrics.get("recall@20"),
                "test_recall@20": test.recall_at(20),
                "test_ndcg@20": test.ndcg_at(20),
                "best_step": retrained.best_step,
                "train_steps": retrained.train_steps,
                "wall_time": retrained.wall_time,
            }
            with path.open("a") as f:
                f.write(json.dumps(row) + "\n")
            done[name] = row
        rows = [done[n] for n in members if n in done]
        band = es_band(cells, c)
        for r in rows:
            r["test_recall@20_vs_es"] = r["test_recall@20"] / band["test_recall@20_mean"]
            r["beyond_es_band"] = r["test_recall@20"] > band["test_recall@20_max"]
        best_val = max(rows, key=lambda r: r["validation_recall@20"])
        best_test = max(rows, key=lambda r: r["test_recall@20"])
        result["members"][f"{c:g}"] = rows
        result["es"][f"{c:g}"] = band
        result["best_vs_es"][f"{c:g}"] = {
            "chosen_on_validation": best_val["name"],
            "ratio": best_val["test_recall@20_vs_es"],
            "beyond_es_band": best_val["beyond_es_band"],
            "best_on_test": best_test["name"],
            "best_on_test_ratio": best_test["test_recall@20_vs_es"],
            "es_band_ratio": [
                band["test_recall@20_min"] / band["test_recall@20_mean"],
                band["test_recall@20_max"] / band["test_recall@20_mean"],
            ],
            "members_retrained": len(rows),
            "members_designed": len(members),
        }
    result.update({"command": command(), "machine": machine(), "date": now()})
    lines = [f"# Prefix allocations vs uniform sizes: {args.dataset} {args.backbone}", ""]
    for c in sparsities:
        key = f"{c:g}"
        band, best = result["es"][key], result["best_vs_es"][key]
        lines += [
            f"## c = {key}",
            "",
            f"ES test R@20 over {len(band['seeds'])} seeds: mean {band['test_recall@20_mean']:.4f}"
            f" (min {band['test_recall@20_min']:.4f}, max {band['test_recall@20_max']:.4f}).",
            "",
            "| member | user share | mean size u / i | val R@20 | test R@20 | test N@20 | "
            "R@20 / ES | above ES max |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for r in sorted(result["members"][key], key=lambda r: -r["validation_recall@20"]):
            lines.append(
                f"| {r['name']} | {r['user_share']:.2f} | {r['mean_user_size']:.1f} / "
                f"{r['mean_item_size']:.1f} | {r['validation_recall@20']:.4f} | "
                f"{r['test_recall@20']:.4f} | {r['test_ndcg@20']:.4f} | "
                f"{r['test_recall@20_vs_es']:.3f} | {'yes' if r['beyond_es_band'] else 'no'} |"
            )
        lines += [
            "",
            f"Chosen on validation: {best['chosen_on_validation']}, {best['ratio']:.3f} x ES "
            f"(ES seed band {best['es_band_ratio'][0]:.3f}-{best['es_band_ratio'][1]:.3f}); "
            f"best on test: {best['best_on_test']}, {best['best_on_test_ratio']:.3f} x ES. "
            f"{best['members_retrained']} of {best['members_designed']} members retrained.",
            "",
        ]
    name = args.name or f"prefix_landscape_{args.dataset}_{args.backbone}"
    write_results(name, result, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
