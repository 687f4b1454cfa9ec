"""XLA-compiled training steps (``TrainConfig(jit_compile=True)``) versus the plain loop.

Builds two MF models (d = 128, `MaskedEmbedding` tables, Adam) on the same data and times the
compiled `train_bpr` chunk loop (`BPR sampling included) of each, alternating plain and XLA
chunks in one process, and reports the median of the paired per-round ratios xla / plain for
wall and process CPU time, and the two chunks' mean losses (they must agree: the recipe is the
same, only the compilation differs).

Usage:
    python benchmarks/jit_step.py [--dataset ml-1m] [--steps 200] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import alternate_clocks, median_ratio, write_results  # noqa: E402

from tfembsize._keras import is_legacy_keras, keras  # noqa: E402
from tfembsize.data import bpr_dataset, load_dataset  # noqa: E402
from tfembsize.models import MF  # noqa: E402
from tfembsize.training.loop import _chunk_runner  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="ml-1m")
    p.add_argument("--batch-size", type=int, default=2048)
    p.add_argument("--steps", type=int, default=200, help="steps per timed chunk")
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()

    split = load_dataset(args.dataset).split(0.5, 0.25, 0.25, seed=42)
    arms = {}
    losses: dict[str, list[float]] = {"plain": [], "xla": []}
    for name, jit in (("plain", False), ("xla", True)):
        keras.utils.set_random_seed(0)
        model = MF.create(split.num_users, split.num_items, 128)
        model.compile(optimizer=keras.optimizers.Adam(1e-3))
        model.optimizer.build(model.trainable_variables)
        runner = _chunk_runner(model, jit)
        iterator = iter(bpr_dataset(split.train, args.batch_size, seed=0))

        def chunk(runner=runner, iterator=iterator, name=name) -> None:
            n, start = tf.constant(args.steps, tf.int32), tf.constant(0, tf.int32)
            out = runner(iterator, n, start).numpy()
            losses[name].append(float(out.mean()))

        arms[name] = chunk
    clocks = alternate_clocks(arms, repeats=args.rounds, warmup=1)
    wall = median_ratio(clocks["wall"], "xla", "plain")
    cpu = median_ratio(clocks["cpu"], "xla", "plain")
    ms = {k: 1000 * statistics.median(v) / args.steps for k, v in clocks["wall"].items()}
    # Both arms draw the same batches from the same start: their chunk losses must agree.
    loss_gap = max(abs(a - b) for a, b in zip(losses["plain"], losses["xla"], strict=True))
    mode = "tf-keras" if is_legacy_keras() else "keras3"
    payload = {
        "dataset": args.dataset,
        "keras": mode,
        "steps_per_chunk": args.steps,
        "rounds": args.rounds,
        "xla_vs_plain_wall": wall,
        "xla_vs_plain_cpu": cpu,
        "ms_per_step_wall": ms,
        "max_chunk_loss_gap": loss_gap,
    }
    md = (
        f"# XLA training steps vs the plain loop (MF, {args.dataset}, d=128, batch "
        f"{args.batch_size}, {mode})\n\n"
        f"Chunks of {args.steps} steps (sampling included), alternated, {args.rounds} rounds; "
        "median of paired per-round ratios.\n\n"
        "| xla / plain (wall) | xla / plain (CPU) | ms/step plain | ms/step xla | max chunk "
        "loss gap |\n| --- | --- | --- | --- | --- |\n"
        f"| {wall:.3f} | {cpu:.3f} | {ms['plain']:.1f} | {ms['xla']:.1f} | {loss_gap:.2e} |\n"
    )
    write_results("jit_step", payload, md)
    print(md)  # noqa: T201


if __name__ == "__main__":
    main()
