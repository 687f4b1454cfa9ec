"""Does a CIESS search's score predict retrained quality? Retrain a probe set of archived masks.

CIESS ranks the archived masks within a budget by their mean per-entity quality ratio after
the search's short training, and retrains only the top l. This probe retrains ``--probe``
masks spread evenly over that ranking (best, worst and between) with the protocol's recipe
(from scratch, early stopping on validation) and reports the Spearman correlation between
the search score and the retrained validation numbers. A correlation near zero means the
search's ranking carries little information about what retraining will give.

Example::

    python benchmarks/ciess_retrain_probe.py --dataset ml-1m --backbone mf --jit-compile \\
        --search _state/ml-1m_mf_ciess/ciess__shared__seed0 --work-dir _state/ml-1m_mf_ciess \\
        --sparsity 0.8 --probe 6 --name ciess_retrain_probe_ml-1m_mf

Retrainings are kept in ``<work-dir>/retrain_probe_c<c>`` and a rerun resumes there. Writes
``results/<name>.json`` and ``.md`` with command, machine and date.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    command,
    machine,
    now,
    protocol_context,
    spearman,
    write_results,
)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="ml-1m")
    p.add_argument("--backbone", default="mf")
    p.add_argument("--search", required=True, help="the CIESS search folder")
    p.add_argument("--work-dir", required=True, help="the protocol run's work folder")
    p.add_argument("--sparsity", type=float, required=True)
    p.add_argument("--probe", type=int, default=6, help="masks to retrain")
    p.add_argument("--name", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jit-compile", action="store_true")
    p.add_argument("--eval-every", type=int, default=None)
    p.add_argument("--patience", type=int, default=None)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    from tfembsize.controllers import CIESSController
    from tfembsize.protocol.selective import retrain_top
    from tfembsize.search.selection import shortlist

    run = json.loads(Path(args.search, "run.json").read_text())
    controller = CIESSController.load(os.path.join(args.search, run["checkpoint"], "controller"))
    c = float(args.sparsity)
    ranked = controller.candidates(c)  # best search score first, distinct, within B(c)
    if not ranked:
        raise SystemExit(f"No archived mask is within the budget of c={c:g}.")
    picks = sorted(set(np.linspace(0, len(ranked) - 1, min(args.probe, len(ranked))).round()))
    chosen = [ranked[int(i)] for i in picks]
    budget = controller.problem.budget(c)
    short = shortlist(chosen, len(chosen), budget)  # each asserted within B(c)

    ctx = protocol_context(
        args.dataset,
        args.backbone,
        args.work_dir,
        os.path.join(args.work_dir, f"retrain_probe_c{c:g}"),
        sparsity=c,
        seed=args.seed,
        method="ciess",
        jit_compile=args.jit_compile,
        eval_every=args.eval_every,
        patience=args.patience,
    )
    recipe = ctx.train_config
    reference = ctx.environment().reference()
    records, _, _ = retrain_top(
        ctx,
        short,
        os.path.join(ctx.directory, "retrain"),
        monitor="entity_ratio",
        reference=reference,
        label=f"probe c={c:g}",
    )
    rows = []
    for entry, rec in zip(short.entries, records, strict=True):
        rows.append(
            {
                "search_rank": int(ranked.index(entry.candidate)),
                "search_score": entry.candidate.score,
                "density": entry.candidate.info["density"],
                "retrained_entity_ratio": rec["selection_value"],
                "retrained_recall@20": rec["validation"].get("recall@20"),
                "best_step": rec.get("best_step"),
            }
        )
    scores = [r["search_score"] for r in rows]
    out = {
        "dataset": args.dataset,
        "backbone": args.backbone,
        "sparsity": c,
        "archived_within_budget": len(ranked),
        "rows": rows,
        "spearman_search_vs_retrained_entity_ratio": spearman(
            scores, [r["retrained_entity_ratio"] for r in rows]
        ),
        "spearman_search_vs_retrained_recall@20": spearman(
            scores, [r["retrained_recall@20"] for r in rows]
        ),
        "recipe": recipe.to_dict(),
        "command": command(),
        "machine": machine(),
        "date": now(),
    }
    lines = [
        f"# CIESS search score vs retrained quality: {args.dataset} {args.backbone}, c = {c:g}",
        "",
        f"{len(ranked)} distinct archived masks within B(c); {len(rows)} retrained, spread "
        "over the search ranking.",
        "",
        "| search rank | search score | density | retrained val entity ratio | retrained val R@20 "
        "| best step |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['search_rank']} | {r['search_score']:.4f} | {r['density']:.4f} | "
            f"{r['retrained_entity_ratio']:.4f} | {r['retrained_recall@20']:.4f} | "
            f"{r['best_step']} |"
        )
    lines += [
        "",
        "Spearman(search score, retrained entity ratio) = "
        f"{out['spearman_search_vs_retrained_entity_ratio']}; with retrained R@20 = "
        f"{out['spearman_search_vs_retrained_recall@20']}.",
    ]
    write_results(args.name, out, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
