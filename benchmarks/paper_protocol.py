"""The papers' evaluation protocol for every registered method (algorithms.md §1, §7).

For each method and sparsity: produce a plan, assert the budget B(c) = floor((1-c) d_max N),
retrain from scratch on train with validation early stopping (tfembsize.models.train_bpr),
and report test Recall/NDCG@{5,20}, usable params, best step and wall time, beside the papers'
numbers for the same cells (ML-1M: CIESS paper; Gowalla: BET paper) and the popularity
baseline. Mean ± std over seeds.

Resumable: every (method, sparsity, seed) cell is written to OUT/cells/ when it finishes and
skipped when the command is run again; OUT/results.json and OUT/results.md are rewritten
after every cell. Cells run seed by seed, so the first seed fills the whole table first.

Usage:
    python benchmarks/paper_protocol.py --dataset ml-1m --backbone mf \
        --methods full,es,mr --sparsity 0.8,0.9,0.95 --seeds 3 \
        --out benchmarks/results/paper_protocol/ml-1m_mf
    python benchmarks/paper_protocol.py --data-dir /path/to/lightgcn_format_dir ...
    python benchmarks/paper_protocol.py --dataset synthetic --backbone mf --methods full,es \
        --d-max 16 --max-steps 200 --eval-every 50        # a smoke test in seconds
    python benchmarks/paper_protocol.py --dataset ml-1m --backbone mf --methods bet,es,mr \
        --bet-iterations 50 --bet-candidates 100 --bet-epochs 10 \
        --reuse-cells benchmarks/results/paper_protocol/ml-1m_mf \
        --out benchmarks/results/paper_protocol/ml-1m_mf_bet
    python benchmarks/bet_report.py benchmarks/results/paper_protocol/ml-1m_mf_bet

BET (``bet``, and the ablations ``bet-random``, ``bet-sizes-only``) runs one search per seed
for all sparsities (in OUT/work/<method>__shared__seed<s>, resumable), then retrains the top 5
actions of each sparsity and reports the one best on validation. ``--bet-*`` set T, m, h and K
(recorded in the results); ``--reuse-cells`` copies finished cells of another run with the
same data and recipe instead of computing them again.

Methods are looked up in tfembsize.protocol's registry (``--list-methods``); later
controllers register themselves there (bet, pep, ciess, esapn).
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

sys.path.insert(0, str(Path(__file__).resolve().parent))

RESULTS_ROOT = Path(__file__).resolve().parent / "results" / "paper_protocol"


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(x) for x in text.split(",") if x.strip())


def _names(text: str) -> tuple[str, ...]:
    return tuple(x.strip().lower() for x in text.split(",") if x.strip())


def _is_lightgcn_dir(path: Path) -> bool:
    return any((path / f).exists() for f in ("train.txt", "train.txt.gz"))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument(
        "--dataset",
        default=None,
        help="gowalla, ml-1m, ml-100k, synthetic, or a directory (default: synthetic, or the "
        "--data-dir folder if it is in LightGCN format)",
    )
    p.add_argument(
        "--data-dir",
        default=None,
        help="a LightGCN-format folder (train.txt/test.txt), or the folder holding gowalla/, "
        "ml-1m/, ml-100k/ (default: $TFEMBSIZE_DATA_DIR or ../shared/data)",
    )
    p.add_argument("--backbone", default="mf", help="mf, ncf, ngcf or lightgcn")
    p.add_argument("--methods", default="full,es,mr", help="comma-separated method names")
    p.add_argument("--sparsity", default="0.8,0.9,0.95", help="comma-separated sparsities")
    p.add_argument("--seeds", type=int, default=1, help="number of seeds (0..N-1)")
    p.add_argument("--seed-list", default=None, help="explicit comma-separated seeds")
    p.add_argument(
        "--out",
        default=None,
        help="output directory (default: results/paper_protocol/<dataset>_<backbone>)",
    )
    p.add_argument("--d-max", type=int, default=128)
    p.add_argument("--preset", default=None, help="a tfembsize.models.PRESETS recipe name")
    p.add_argument("--lr", type=float, default=None, help="learning rate (overrides the recipe)")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--eval-every", type=int, default=None)
    p.add_argument("--patience", type=int, default=None)
    p.add_argument("--monitor", default=None, help="recall@20 (default), ndcg@20 or quality")
    p.add_argument("--bet-iterations", type=int, default=None, help="BET: T search iterations (50)")
    p.add_argument(
        "--bet-candidates", type=int, default=None, help="BET: m candidates per iteration (100)"
    )
    p.add_argument(
        "--bet-epochs",
        type=float,
        default=None,
        help="BET: h fine-tuning epochs per iteration (10; 15 for NGCF)",
    )
    p.add_argument("--bet-top-k", type=int, default=None, help="BET: K actions retrained (5)")
    p.add_argument(
        "--reuse-cells",
        default=None,
        help="comma-separated output directories of other runs whose finished cells (same "
        "data, backbone, d_max and recipe) are copied instead of rerun",
    )
    p.add_argument("--max-cells", type=int, default=None, help="stop after N new cells")
    p.add_argument(
        "--jit-compile",
        action="store_true",
        help="compile each training step with XLA (faster on CPU; same recipe, so cells run "
        "with and without it are interchangeable)",
    )
    p.add_argument("--list-methods", action="store_true")
    p.add_argument("-v", "--verbose", type=int, default=1)
    return p.parse_args(argv)


def build_config(args: argparse.Namespace):
    """The ProtocolConfig of the command line."""
    from tfembsize.models import PRESETS, TrainConfig
    from tfembsize.protocol import ProtocolConfig

    dataset = args.dataset
    data_dir = args.data_dir
    if data_dir is not None and _is_lightgcn_dir(Path(data_dir)):
        if dataset is None or dataset.lower() in ("gowalla", "ml-1m", "ml-100k"):
            label = (dataset or Path(data_dir).resolve().name).lower()
            dataset, data_dir = str(Path(data_dir).resolve()), None
        else:
            label = dataset.lower()
    else:
        dataset = dataset or "synthetic"
        label = Path(dataset).name.lower() if os.path.isdir(dataset) else dataset.lower()
    if args.preset:
        recipe = TrainConfig.preset(args.preset)
    else:
        recipe = PRESETS.get(args.backbone, TrainConfig())
    changes = {
        k: v
        for k, v in {
            "learning_rate": args.lr,
            "batch_size": args.batch_size,
            "max_steps": args.max_steps,
            "eval_every": args.eval_every,
            "patience": args.patience,
            "monitor": args.monitor,
        }.items()
        if v is not None
    }
    recipe = recipe.replace(**changes)
    if getattr(args, "jit_compile", False):
        recipe = recipe.replace(jit_compile=True)
    seeds = (
        tuple(int(s) for s in args.seed_list.split(","))
        if args.seed_list
        else tuple(range(args.seeds))
    )
    out = args.out or str(RESULTS_ROOT / f"{label}_{args.backbone}")
    methods = _names(args.methods)
    bet = {
        k: v
        for k, v in {
            "search_iterations": args.bet_iterations,
            "num_candidates": args.bet_candidates,
            "finetune_epochs": args.bet_epochs,
            "top_k": args.bet_top_k,
        }.items()
        if v is not None
    }
    method_options = {m: dict(bet) for m in methods if m.startswith("bet") and bet}
    return ProtocolConfig(
        dataset=dataset,
        backbone=args.backbone,
        methods=methods,
        sparsities=_floats(args.sparsity),
        seeds=seeds,
        out=out,
        d_max=args.d_max,
        train_config=recipe,
        data_dir=data_dir,
        label=label,
        method_options=method_options,
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(message)s",
    )
    from tfembsize.protocol import available_methods, get_method, run_protocol

    if args.list_methods:
        for name in available_methods():
            m = get_method(name)
            print(f"{name:12s} {'budgeted' if m.budgeted else 'no budget':10s} {m.description}")
        return 0
    from common import command, machine, now

    config = build_config(args)
    cmd = command() if argv is None else "python benchmarks/paper_protocol.py " + shlex.join(argv)
    meta = {"command": cmd, "date": now(), "machine": machine()}
    reuse = [d for d in (args.reuse_cells or "").split(",") if d.strip()]
    report = run_protocol(
        config,
        meta=meta,
        max_cells=args.max_cells,
        verbose=args.verbose,
        reuse_cells_from=reuse,
    )
    print(open(report.markdown_path, encoding="utf-8").read())
    print(f"Results: {report.json_path}\n         {report.markdown_path}")
    if report.pending:
        print(f"{len(report.pending)} cells still to run; rerun the same command to continue.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
