"""Which search fitness follows retrained quality? BET's options scored on a designed family.

A size search ranks plans by a cheap fitness and retrains only the best few, so it can only
find a good plan if its fitness ranks plans the way their full retraining does. This script
takes the designed family of prefix allocations that ``prefix_landscape.py`` retrained from
scratch (the ground truth: each member's retrained validation and test Recall@20) and scores
every member with each fitness option of `tfembsize.controllers.BETController`:

* ``full`` (the BET paper): restore the pretrained full model, apply the plan, fine-tune h
  epochs with BET's decaying rate (`tfembsize.protocol.methods.bet.bet_finetune_config`);
* ``scratch``: apply the plan to a fresh initialisation and train h epochs with the protocol
  recipe.

The fitness is the validation quality ratio to the full model, as BET archives it. For each
option and sparsity the script reports Spearman's rank correlation with the retrained
validation and test Recall@20, and which member the option ranks first.

Resumable: each scored (member, option) is appended to ``<work-dir>/fitness_c<c>.jsonl``
and skipped when the command runs again; each step is seeded by the member's index, so the
result does not depend on where a run was interrupted.

Example (after ``prefix_landscape.py`` on the same data)::

    python benchmarks/bet_fitness.py --dataset ml-1m --backbone mf --jit-compile \\
        --sparsity 0.9,0.95 --landscape _state/prefix_landscape_ml-1m_mf \\
        --work-dir _state/bet_fitness_ml-1m_mf \\
        --reference-from _state/ml-1m_mf_ciess/reference__seed0

Writes ``results/bet_fitness_<dataset>_<backbone>.{json,md}`` with command, machine and date.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import command, machine, now, protocol_context, spearman, write_results  # noqa: E402
from prefix_landscape import family, grid_of  # noqa: E402

STARTS = ("full", "scratch")


def _read_jsonl(path: Path) -> dict[str, dict[str, Any]]:
    rows: dict[str, dict[str, Any]] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                rows[row.get("key", row["name"])] = row
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--dataset", default="ml-1m")
    p.add_argument("--backbone", default="mf")
    p.add_argument("--sparsity", default="0.9,0.95")
    p.add_argument("--landscape", required=True, help="prefix_landscape.py's --work-dir")
    p.add_argument("--work-dir", required=True)
    p.add_argument("--reference-from", default=None, help="a reference__seed<s> folder to reuse")
    p.add_argument("--starts", default=",".join(STARTS), help=f"options among {STARTS}")
    p.add_argument("--epochs", type=float, default=10.0, help="h, epochs per fitness")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jit-compile", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    log = logging.getLogger("bet_fitness")
    starts = [s for s in args.starts.split(",") if s]
    if not starts or any(s not in STARTS for s in starts):
        p.error(f"--starts must list some of {STARTS}; received {args.starts!r}")
    from tfembsize.budget import Budget
    from tfembsize.protocol.methods.bet import bet_finetune_config

    os.makedirs(args.work_dir, exist_ok=True)
    ref = Path(args.work_dir, f"reference__seed{args.seed}")
    if args.reference_from and not ref.exists():
        shutil.copytree(args.reference_from, ref)
    result: dict[str, Any] = {
        "dataset": args.dataset,
        "backbone": args.backbone,
        "epochs": args.epochs,
        "starts": starts,
        "members": {},
        "spearman": {},
        "ranked_first": {},
    }
    sparsities = [float(x) for x in args.sparsity.split(",") if x]
    for c in sparsities:
        key = f"{c:g}"
        truth = _read_jsonl(Path(args.landscape, f"prefix_landscape_c{key}.jsonl"))
        if len(truth) < 3:
            log.warning(
                "c=%s: only %d retrained members in %s; skipped.", key, len(truth), args.landscape
            )
            continue
        ctx = protocol_context(
            args.dataset,
            args.backbone,
            args.work_dir,
            os.path.join(args.work_dir, f"c{key}"),
            sparsity=c,
            seed=args.seed,
            method="bet_fitness",
            jit_compile=args.jit_compile,
        )
        obs = ctx.observation()
        limit = Budget(sparsity=c, d_max=obs.d_max).max_params_for(obs.num_rows)
        shares, alphas = grid_of(list(truth))
        members = family(
            obs.user_frequencies.astype(float),
            obs.item_frequencies.astype(float),
            limit,
            obs.d_max,
            shares=shares,
            alphas=alphas,
        )
        names = [n for n in members if n in truth]
        path = Path(args.work_dir, f"fitness_c{key}.jsonl")
        done = _read_jsonl(path)
        configs = {"full": bet_finetune_config(ctx.train_config), "scratch": ctx.train_config}
        for start in starts:
            for k, name in enumerate(names):
                row_key = f"{start}|{name}"
                if row_key in done:
                    continue
                log.info("c=%s %s %d/%d: %s", key, start, k + 1, len(names), name)
                env = ctx.environment(
                    train_config=configs[start].replace(evaluate_test=False, refit=False),
                    seed=args.seed + 1000 * (k + 1),
                )
                plan = obs.plan_from_sizes(*members[name])
                plan.check(Budget(sparsity=c, d_max=obs.d_max))
                fb = env.step(
                    plan, "snapshot" if start == "full" else "scratch", train_epochs=args.epochs
                )
                row = {
                    "key": row_key,
                    "name": name,
                    "start": start,
                    "fitness": fb.quality_ratio,
                    "validation_recall@20": fb.metrics.get("recall@20"),
                    "status": fb.status,
                    "train_steps": fb.train_steps,
                    "wall_time": fb.wall_time,
                }
                with path.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                done[row_key] = row
        rows = []
        for name in names:
            r = {
                "name": name,
                "retrained_validation_recall@20": truth[name]["validation_recall@20"],
                "retrained_test_recall@20": truth[name]["test_recall@20"],
            }
            for start in starts:
                got = done.get(f"{start}|{name}")
                r[f"fitness_{start}"] = None if got is None else got["fitness"]
            rows.append(r)
        result["members"][key] = rows
        result["spearman"][key] = {}
        result["ranked_first"][key] = {}
        for start in starts:
            scored = [r for r in rows if r[f"fitness_{start}"] is not None]
            fit = [r[f"fitness_{start}"] for r in scored]
            result["spearman"][key][start] = {
                "vs_retrained_validation": spearman(
                    fit, [r["retrained_validation_recall@20"] for r in scored]
                ),
                "vs_retrained_test": spearman(fit, [r["retrained_test_recall@20"] for r in scored]),
                "members": len(scored),
            }
            if scored:
                first = max(scored, key=lambda r: r[f"fitness_{start}"])
                result["ranked_first"][key][start] = {
                    "name": first["name"],
                    "retrained_test_recall@20": first["retrained_test_recall@20"],
                }
        best = max(rows, key=lambda r: r["retrained_validation_recall@20"])
        result["ranked_first"][key]["retrained_validation"] = {
            "name": best["name"],
            "retrained_test_recall@20": best["retrained_test_recall@20"],
        }
    result.update({"command": command(), "machine": machine(), "date": now()})
    lines = [f"# BET fitness options vs retrained quality: {args.dataset} {args.backbone}", ""]
    lines += [
        f"Fitness: validation quality ratio after {args.epochs:g} epochs; ground truth: each "
        "member retrained from scratch with the protocol recipe (prefix_landscape.py).",
        "",
    ]
    for key, by_start in result["spearman"].items():
        lines += [
            f"## c = {key}",
            "",
            "| option | members | Spearman vs retrained val R@20 | vs test R@20 | ranked first "
            "(its retrained test R@20) |",
            "| --- | --- | --- | --- | --- |",
        ]
        for start, s in by_start.items():
            first = result["ranked_first"][key].get(start, {})

            def fmt(v: Any) -> str:
                return "n/a" if v is None else f"{v:.3f}"

            lines.append(
                f"| {start} | {s['members']} | {fmt(s['vs_retrained_validation'])} | "
                f"{fmt(s['vs_retrained_test'])} | {first.get('name', '-')} "
                f"({fmt(first.get('retrained_test_recall@20'))}) |"
            )
        oracle = result["ranked_first"][key]["retrained_validation"]
        lines += [
            "",
            f"Best retrained on validation: {oracle['name']} (test R@20 "
            f"{oracle['retrained_test_recall@20']:.4f}).",
            "",
        ]
    write_results(f"bet_fitness_{args.dataset}_{args.backbone}", result, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
