"""Learning-rate grid for a BPR backbone at full size, selected on validation only.

For each learning rate (constant Adam) and the papers' recipe (lr 0.03, x0.95 every 200 steps,
floor 1e-3, batch 10 000), trains the backbone with `train_bpr` (early stopping on validation
Recall@20, patience 2) and records the best validation Recall@20 / NDCG@20, the best step and
the wall time, next to the popularity baseline. Test numbers are reported once per run at the
end, never used for the choice. Resumable: finished runs are kept in
``results/lr_grid.partial.json`` and skipped when the script is run again.

    python benchmarks/lr_grid.py --dataset ml-1m --backbone mf --max-steps 8000

Results: ``results/lr_grid.{md,json}`` for ML-1M MF (d = 128), else
``results/lr_grid_<dataset>_<backbone>.{md,json}`` (``--name`` overrides).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS, write_results  # noqa: E402

from tfembsize._keras import keras  # noqa: E402
from tfembsize.data import load_dataset  # noqa: E402
from tfembsize.metrics import RankingEvaluator  # noqa: E402
from tfembsize.models import (  # noqa: E402
    TrainConfig,
    popularity_scorer,
    train_bpr,
)
from tfembsize.protocol.backbones import get_backbone  # noqa: E402

PAPER = "paper (0.03, x0.95/200, floor 1e-3, batch 10k)"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="ml-1m")
    p.add_argument("--backbone", default="mf", choices=["mf", "lightgcn", "ngcf", "ncf"])
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--lrs", default="1e-3,3e-3,1e-2,3e-2")
    p.add_argument("--batch-size", type=int, default=2048)
    p.add_argument("--max-steps", type=int, default=8000)
    p.add_argument("--eval-every", type=int, default=1000)
    p.add_argument("--patience", type=int, default=2)
    p.add_argument("--no-paper", action="store_true", help="skip the papers' recipe")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--name",
        default=None,
        help="results file stem (default: lr_grid for ml-1m mf d=128, the first grid run, "
        "else lr_grid_<dataset>_<backbone>)",
    )
    args = p.parse_args()
    if args.name is None:
        default = (args.dataset, args.backbone, args.dim) == ("ml-1m", "mf", 128)
        args.name = "lr_grid" if default else f"lr_grid_{args.dataset}_{args.backbone}"
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    data = load_dataset(args.dataset)
    split = data.split(0.5, 0.25, 0.25, seed=42)
    evaluator = RankingEvaluator(split)
    pop_val = evaluator.evaluate(popularity_scorer(split.train), "validation")
    pop_test = evaluator.evaluate(popularity_scorer(split.train), "test")

    configs = {
        f"constant {lr}": TrainConfig(
            learning_rate=float(lr),
            batch_size=args.batch_size,
            max_steps=args.max_steps,
            eval_every=args.eval_every,
            patience=args.patience,
            seed=args.seed,
        )
        for lr in args.lrs.split(",")
    }
    if not args.no_paper:
        configs[PAPER] = TrainConfig.preset(
            "paper-retrain",
            max_steps=args.max_steps,
            eval_every=args.eval_every,
            patience=args.patience,
            seed=args.seed,
        )

    key = f"{args.dataset}-{args.backbone}-d{args.dim}"
    partial_path = RESULTS / "lr_grid.partial.json"
    partial = json.loads(partial_path.read_text()) if partial_path.exists() else {}
    runs = partial.setdefault(key, {})
    for name, config in configs.items():
        if name in runs and runs[name].get("config") == config.to_dict():
            logging.info("%s: %s already done", key, name)
            continue
        keras.utils.set_random_seed(args.seed)
        model = get_backbone(args.backbone)(split, args.dim, None)
        t0 = time.perf_counter()
        try:
            result = train_bpr(model, split, evaluator, config=config)
        except FloatingPointError as err:
            runs[name] = {"config": config.to_dict(), "error": str(err)}
        else:
            runs[name] = {
                "config": config.to_dict(),
                "best_step": result.best_step,
                "steps": result.steps,
                "val_recall@20": result.validation.recall_at(20),
                "val_ndcg@20": result.validation.ndcg_at(20),
                "test_recall@20": result.test.recall_at(20),
                "test_ndcg@20": result.test.ndcg_at(20),
                "history": [(h.step, h.value) for h in result.history],
                "seconds": time.perf_counter() - t0,
            }
        RESULTS.mkdir(parents=True, exist_ok=True)
        tmp = partial_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(partial, indent=1))
        os.replace(tmp, partial_path)
        del model
        keras.backend.clear_session()

    rows = [
        "| recipe | best val R@20 | val N@20 | best step | steps run (cap) | test R@20 | "
        "test N@20 | seconds |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
        f"| popularity | {pop_val.recall_at(20):.4f} | {pop_val.ndcg_at(20):.4f} | | | "
        f"{pop_test.recall_at(20):.4f} | {pop_test.ndcg_at(20):.4f} | |",
    ]
    for name, r in runs.items():
        if "error" in r:
            rows.append(f"| {name} | diverged: {r['error']} | | | | | | |")
            continue
        rows.append(
            f"| {name} | {r['val_recall@20']:.4f} | {r['val_ndcg@20']:.4f} | {r['best_step']} | "
            f"{r['steps']} ({r['config']['max_steps']}) | {r['test_recall@20']:.4f} | "
            f"{r['test_ndcg@20']:.4f} | "
            f"{r['seconds']:.0f} |"
        )
    valid = {n: r for n, r in runs.items() if "error" not in r}
    best = max(valid, key=lambda n: valid[n]["val_recall@20"]) if valid else None
    markdown = (
        f"# Learning-rate grid: {args.backbone} on {args.dataset}, d={args.dim}\n\n"
        f"Adam, batch {args.batch_size} (paper recipe: 10 000), early stopping on validation "
        f"Recall@20 every {args.eval_every} steps with patience {args.patience}, at most "
        "the step cap in brackets; split 50/25/25 seed 42; test reported once at the end and "
        "never used for the choice. Seconds are wall time on a shared, heavily loaded "
        "machine (compare them only within this table).\n\n" + "\n".join(rows) + "\n\n"
        f"Chosen on validation: **{best}**.\n"
    )
    payload = {
        "dataset": args.dataset,
        "backbone": args.backbone,
        "dim": args.dim,
        "popularity": {
            "val_recall@20": pop_val.recall_at(20),
            "val_ndcg@20": pop_val.ndcg_at(20),
            "test_recall@20": pop_test.recall_at(20),
            "test_ndcg@20": pop_test.ndcg_at(20),
        },
        "runs": runs,
        "chosen": best,
    }
    write_results(args.name, payload, markdown)
    print(markdown)


if __name__ == "__main__":
    main()
