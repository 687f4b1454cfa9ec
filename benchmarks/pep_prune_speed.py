"""PEP's pruning phase compiled with XLA (``PEPConfig(jit_compile=True)``) versus the plain loop.

Both arms are the same `train_bpr` loop with `PEPController` as its hook (the usable count is
taken inside the compiled step every step, as in a real pruning run): one builds MF with PEP
tables (d = 128) and `PEPAdam`, the other the same with every step one XLA cluster. Chunks of
``--steps`` steps of each arm are alternated in one process (so load hits both alike) and the
median of the paired per-round ratios xla / plain is reported for wall and CPU time, with the
chunk losses of both arms (the recipe is the same: they must agree closely).

Usage:
    python benchmarks/pep_prune_speed.py [--dataset ml-1m] [--steps 500] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import alternate_clocks, median_ratio, write_results  # noqa: E402

from tfembsize._keras import is_legacy_keras, keras  # noqa: E402
from tfembsize.controllers.pep import PEPConfig, PEPController, pep_model  # noqa: E402
from tfembsize.data import bpr_dataset, load_dataset  # noqa: E402
from tfembsize.models import MF  # noqa: E402
from tfembsize.training.loop import _chunk_runner, _prepare  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="ml-1m")
    p.add_argument("--steps", type=int, default=500, help="steps per timed chunk")
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()

    split = load_dataset(args.dataset).split(0.5, 0.25, 0.25, seed=42)
    arms = {}
    losses: dict[str, list[float]] = {"plain": [], "xla": []}
    done = {"plain": 0, "xla": 0}
    for name, jit in (("plain", False), ("xla", True)):
        pep = PEPConfig(jit_compile=jit)
        keras.utils.set_random_seed(0)
        model = pep_model(MF.create(split.num_users, split.num_items, 128), pep)
        config = pep.train_config(seed=0)
        opt = _prepare(model, config, lambda lr, pep=pep: pep.optimizer())
        hook = PEPController((0.8, 0.9, 0.95))
        hook.on_train_begin(model, opt)
        runner = _chunk_runner(model, jit, hook)
        iterator = iter(bpr_dataset(split.train, pep.batch_size, seed=0))

        def chunk(runner=runner, iterator=iterator, name=name, hook=hook) -> None:
            n = tf.constant(args.steps, tf.int32)
            out = runner(iterator, n, tf.constant(done[name], tf.int32)).numpy()
            done[name] += int(out.size)
            hook.on_chunk_end(done[name], out)
            losses[name].append(float(np.mean(out)))

        arms[name] = chunk
    clocks = alternate_clocks(arms, repeats=args.rounds, warmup=1)
    wall = median_ratio(clocks["wall"], "xla", "plain")
    cpu = median_ratio(clocks["cpu"], "xla", "plain")
    rate = {k: args.steps / statistics.median(v) for k, v in clocks["wall"].items()}
    gap = max(abs(a - b) for a, b in zip(losses["plain"], losses["xla"], strict=True))
    mode = "tf-keras" if is_legacy_keras() else "keras3"
    payload = {
        "dataset": args.dataset,
        "keras": mode,
        "steps_per_chunk": args.steps,
        "rounds": args.rounds,
        "xla_vs_plain_wall": wall,
        "xla_vs_plain_cpu": cpu,
        "steps_per_second_wall": rate,
        "max_chunk_loss_gap": gap,
        "chunk_losses": losses,
    }
    md = (
        f"# PEP pruning with XLA vs the plain loop (MF, {args.dataset}, d=128, {mode})\n\n"
        f"`train_bpr` chunks of {args.steps} steps with `PEPController` as hook (count every "
        f"step), alternated, {args.rounds} rounds after one warm-up round; median of paired "
        "per-round ratios.\n\n"
        "| xla / plain (wall) | xla / plain (CPU) | steps/s plain | steps/s xla | max chunk "
        "loss gap |\n| --- | --- | --- | --- | --- |\n"
        f"| {wall:.3f} | {cpu:.3f} | {rate['plain']:.1f} | {rate['xla']:.1f} | {gap:.2e} |\n"
    )
    write_results("pep_prune_speed", payload, md)
    print(md)  # noqa: T201


if __name__ == "__main__":
    main()
