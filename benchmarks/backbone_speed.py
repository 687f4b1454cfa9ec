"""Training and evaluation speed of the BPR backbones with the `train_bpr` loop.

For each data set, times chunks of training steps (the compiled loop `train_bpr` runs, batch
2048, d=128, BPR sampling from `bpr_dataset` included) for each backbone alternately in one
process (`common.alternate`, so machine load hits all alike), and one full validation ranking.
Reports steps/s, epochs/s (an epoch is |train| / batch steps) and the per-step time ratio of
each backbone to MF.

    python benchmarks/backbone_speed.py --datasets ml-1m,gowalla --backbones mf,lightgcn
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import tensorflow as tf  # noqa: E402
from common import alternate, median_ratio, write_results  # noqa: E402

from tfembsize._keras import keras  # noqa: E402
from tfembsize.data import bpr_dataset, load_dataset  # noqa: E402
from tfembsize.metrics import RankingEvaluator  # noqa: E402
from tfembsize.models import TrainConfig  # noqa: E402
from tfembsize.protocol.backbones import get_backbone  # noqa: E402
from tfembsize.training.loop import _chunk_runner, _prepare  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", default="ml-1m,gowalla")
    p.add_argument("--backbones", default="mf,lightgcn")
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=2048)
    p.add_argument("--steps", default="mf=40,lightgcn=8,ngcf=4,ncf=20", help="steps per chunk")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    chunk = {k: int(v) for k, v in (kv.split("=") for kv in args.steps.split(","))}
    backbones = args.backbones.split(",")

    payload: dict = {"dim": args.dim, "batch_size": args.batch_size, "datasets": {}}
    rows = [
        "| data set | backbone | ms/step | steps/s | epochs/s | s/epoch | step ratio to MF | "
        "validation ranking (s) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name in args.datasets.split(","):
        split = load_dataset(name).split(0.5, 0.25, 0.25, seed=42)
        evaluator = RankingEvaluator(split)
        steps_per_epoch = split.train.num_interactions / args.batch_size
        config = TrainConfig(batch_size=args.batch_size)
        fns, evals = {}, {}
        for b in backbones:
            keras.utils.set_random_seed(0)
            model = get_backbone(b)(split, args.dim, None)
            _prepare(model, config)
            runner = _chunk_runner(model)
            iterator = iter(bpr_dataset(split.train, args.batch_size, seed=0))
            n = tf.constant(chunk[b], tf.int32)
            zero = tf.constant(0, tf.int32)
            fns[b] = lambda runner=runner, iterator=iterator, n=n, z=zero: runner(
                iterator, n, z
            ).numpy()
            evaluator.evaluate(model.ranking_scorer())  # warm-up
            t0 = time.perf_counter()
            evaluator.evaluate(model.ranking_scorer())
            evals[b] = time.perf_counter() - t0
        times = alternate(fns, repeats=args.repeats, warmup=1)
        result = {}
        for b in backbones:
            per_step = statistics.median(times[b]) / chunk[b]
            ratio = (
                median_ratio({k: [t / chunk[k] for t in v] for k, v in times.items()}, b, "mf")
                if "mf" in times
                else None
            )
            result[b] = {
                "seconds_per_step": per_step,
                "steps_per_second": 1 / per_step,
                "epochs_per_second": 1 / (per_step * steps_per_epoch),
                "seconds_per_epoch": per_step * steps_per_epoch,
                "step_ratio_to_mf": ratio,
                "validation_ranking_seconds": evals[b],
                "raw_chunk_seconds": times[b],
                "steps_per_chunk": chunk[b],
            }
            rows.append(
                f"| {name} | {b} | {per_step * 1e3:.1f} | {1 / per_step:.2f} | "
                f"{1 / (per_step * steps_per_epoch):.4f} | {per_step * steps_per_epoch:.1f} | "
                f"{'' if ratio is None else f'{ratio:.2f}'} | {evals[b]:.2f} |"
            )
        payload["datasets"][name] = {
            "num_users": split.num_users,
            "num_items": split.num_items,
            "train_interactions": split.train.num_interactions,
            "steps_per_epoch": steps_per_epoch,
            "backbones": result,
        }
        print("\n".join(rows), flush=True)
    markdown = (
        f"# Backbone training speed (d={args.dim}, batch {args.batch_size})\n\n"
        "Compiled `train_bpr` loop incl. BPR sampling; chunks timed alternately between "
        "backbones in one process (median of "
        f"{args.repeats}); epoch = |train| / batch steps. Validation ranking: one full "
        "evaluation (all users, all items).\n\n" + "\n".join(rows) + "\n"
    )
    write_results("backbone_speed", payload, markdown)
    print(markdown)


if __name__ == "__main__":
    main()
