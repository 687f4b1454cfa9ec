"""Overhead of PEPEmbedding over a plain Keras Embedding: one BPR-MF training epoch.

Trains BPR matrix factorisation (the library's MF: d = 128, batch 2048, loss = mean
softplus(neg - pos) + 1e-4 x squared norms of the batch embeddings / batch) for one epoch,
ceil(|train| / 2048) steps, with every arm alternated A B C ... in one process:

* ``plain``: ``keras.layers.Embedding`` tables and ``keras.optimizers.Adam(1e-3)`` (what a
  user runs without tfembsize);
* ``pep``: `PEPEmbedding` tables (per-entry thresholds, the default, s0 = -15) and
  `PEPAdam(1e-3, threshold_lr=1e-3, threshold_l2=1e-5, l2=0)`: what PEP's pruning phase
  costs as shipped;
* ``plain_pepadam``: ``Embedding`` tables with the same `PEPAdam`, whose fused Adam kernel is
  about twice as fast as Keras's on a large table: ``pep / plain_pepadam`` is the cost of
  PEP's extra state and lookup maths with the optimiser kernel held fixed;
* ``pep_recipe``: the full §6.2 pruning recipe (coupled L2 1e-5 on the tables too, global
  clip norm 100, and the non-zero count after every step that the mask capture reads);
* ``pep_feature`` / ``pep_global``: coarser thresholds (one per row / one per table);
* ``plain_xla`` / ``pep_xla``: ``plain`` and ``pep`` with the step compiled by XLA
  (``TrainConfig(jit_compile=True)``); ``xla_epoch_ratio`` = pep_xla / plain_xla.

``epoch_ratio`` = pep / plain; ``same_optimizer_ratio`` = pep / plain_pepadam; every ratio is
the median over rounds of paired per-round ratios, from wall time and, less sensitive to other
processes on a shared machine, from process CPU time (``cpu_ratios``).

Data: the Gowalla train split (50/25/25 per user, seed 42) through ``tfembsize.data`` when
that package and the data are available, else Gowalla-sized synthetic ids (29,858 users,
40,981 items, 513,685 training pairs); batches are sampled once, outside the timing.

Usage:
    python benchmarks/pep_overhead.py              # both Keras modes (~1 hour on 2 cores)
    python benchmarks/pep_overhead.py --quick      # smoke test
    python benchmarks/pep_overhead.py --no-legacy
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import alternate, median_ratio, write_results  # noqa: E402

from tfembsize._keras import is_legacy_keras, keras  # noqa: E402
from tfembsize.layers.pep_embedding import PEPAdam, PEPEmbedding  # noqa: E402

DIM = 128
BATCH = 2048
L2 = 1e-4
GOWALLA = {"num_users": 29_858, "num_items": 40_981, "num_train": 513_685}


def load_batches(num_steps: int | None, seed: int) -> tuple[dict, list]:
    """Batches of (user, pos, neg) ids for one epoch, and a description of the data."""
    try:
        from tfembsize.data import bpr_dataset, load_dataset

        data_dir = Path(__file__).resolve().parents[2] / "shared" / "data" / "gowalla"
        split = load_dataset(str(data_dir)).split(0.5, 0.25, 0.25, seed=42)
        train = split.train
        steps = math.ceil(train.num_interactions / BATCH)
        ds = bpr_dataset(train, BATCH, seed=seed, num_steps=num_steps or steps)
        batches = [(b["user"], b["pos_item"], b["neg_item"]) for b in ds.take(num_steps or steps)]
        info = {
            "data": "gowalla train split (tfembsize.data)",
            "num_users": split.num_users,
            "num_items": split.num_items,
            "num_train": train.num_interactions,
        }
        return info, batches
    except Exception as err:  # noqa: BLE001 - data package or files not available
        info = {"data": f"gowalla-sized synthetic ({type(err).__name__}: {err})", **GOWALLA}
    steps = num_steps or math.ceil(info["num_train"] / BATCH)
    rng = np.random.default_rng(seed)
    batches = [
        (
            tf.constant(rng.integers(0, info["num_users"], BATCH), tf.int32),
            tf.constant(rng.integers(0, info["num_items"], BATCH), tf.int32),
            tf.constant(rng.integers(0, info["num_items"], BATCH), tf.int32),
        )
        for _ in range(steps)
    ]
    return info, batches


def make_arm(kind: str, info: dict, seed: int = 0):  # noqa: ANN201
    jit = kind.endswith("_xla")
    kind = kind.removesuffix("_xla")
    nu, ni = info["num_users"], info["num_items"]
    init_u = keras.initializers.RandomNormal(stddev=0.01, seed=seed)
    init_i = keras.initializers.RandomNormal(stddev=0.01, seed=seed + 1)
    count = False
    if kind.startswith("plain"):
        users = keras.layers.Embedding(nu, DIM, embeddings_initializer=init_u)
        items = keras.layers.Embedding(ni, DIM, embeddings_initializer=init_i)
        users.build((None,))
        items.build((None,))
    else:
        gran = {"pep_feature": "feature", "pep_global": "global"}.get(kind, "feature_dimension")
        users = PEPEmbedding(nu, DIM, granularity=gran, embeddings_initializer=init_u)
        items = PEPEmbedding(ni, DIM, granularity=gran, embeddings_initializer=init_i)
        users.build(None)
        items.build(None)
    if kind == "plain":
        opt = keras.optimizers.Adam(1e-3)
    elif kind == "pep_recipe":
        opt = PEPAdam(1e-3, threshold_lr=1e-3, threshold_l2=1e-5, l2=1e-5, global_clipnorm=100.0)
        count = True
    else:
        opt = PEPAdam(1e-3, threshold_lr=1e-3, threshold_l2=1e-5, l2=0.0)
    variables = users.trainable_weights + items.trainable_weights

    @tf.function(jit_compile=jit)
    def step(u: tf.Tensor, i: tf.Tensor, j: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            eu, ei, ej = users(u), items(i), items(j)
            pos = tf.reduce_sum(eu * ei, axis=-1)
            neg = tf.reduce_sum(eu * ej, axis=-1)
            reg = tf.reduce_sum(eu * eu) + tf.reduce_sum(ei * ei) + tf.reduce_sum(ej * ej)
            loss = tf.reduce_mean(tf.nn.softplus(neg - pos)) + L2 * reg / BATCH
        grads = tape.gradient(loss, variables)
        opt.apply_gradients(zip(grads, variables, strict=True))
        if count:  # what PEP's mask capture reads after every step
            return users.count_usable_params() + items.count_usable_params()
        return tf.cast(loss, tf.int64)

    return step


def runner(step, batches, cpu: list):  # noqa: ANN001, ANN201
    def run() -> None:
        c0 = time.process_time()
        out = None
        for b in batches:
            out = step(*b)
        out.numpy()
        cpu.append(time.process_time() - c0)

    return run


def measure(rounds: int, num_steps: int | None, arms: list[str]) -> dict:
    info, batches = load_batches(num_steps, seed=1)
    names = ["plain", *arms]
    cpu: dict = {k: [] for k in names}
    fns = {k: runner(make_arm(k, info), batches, cpu[k]) for k in names}
    warmup = 1
    times = alternate(fns, repeats=rounds, warmup=warmup)
    cpu = {k: v[warmup:] for k, v in cpu.items()}  # drop the warm-up rounds
    ratio = {k: median_ratio(times, k, "plain") for k in arms}
    cpu_ratio = {k: median_ratio(cpu, k, "plain") for k in arms}
    out = {
        "keras": "tf-keras" if is_legacy_keras() else "keras3",
        "epoch_ratio": ratio["pep"],
        "same_optimizer_ratio": median_ratio(times, "pep", "plain_pepadam")
        if "plain_pepadam" in arms
        else None,
        "ratios": ratio,
        "cpu_ratios": cpu_ratio,
        "epoch_seconds": {k: float(np.median(v)) for k, v in times.items()},
        "epoch_cpu_seconds": {k: float(np.median(v)) for k, v in cpu.items()},
        "settings": {**info, "dim": DIM, "batch": BATCH, "steps": len(batches), "rounds": rounds},
        "raw_times_s": times,
        "raw_cpu_s": cpu,
    }
    if "plain_pepadam" in arms:
        out["same_optimizer_cpu_ratio"] = median_ratio(cpu, "pep", "plain_pepadam")
    if "pep_xla" in arms and "plain_xla" in arms:
        # Both training steps compiled with XLA (TrainConfig(jit_compile=True)).
        out["xla_epoch_ratio"] = median_ratio(times, "pep_xla", "plain_xla")
        out["xla_epoch_cpu_ratio"] = median_ratio(cpu, "pep_xla", "plain_xla")
    return out


def markdown(result: dict) -> str:
    arms = (
        "pep",
        "plain_pepadam",
        "pep_recipe",
        "pep_feature",
        "pep_global",
        "plain_xla",
        "pep_xla",
    )
    lines = [
        "# PEPEmbedding overhead vs Embedding (one BPR-MF epoch)",
        "",
        f"Data: {result['settings']['data']}; d=128, batch 2048, "
        f"{result['settings']['steps']} steps per epoch, {result['settings']['rounds']} "
        "alternating rounds. Each cell: median of paired per-round ratios arm / plain (plain = "
        "Embedding + Keras Adam), wall time (process CPU time). PEP paper: about 1.24; goal "
        "<= 1.15. `pep` = PEPEmbedding (per-entry thresholds) + PEPAdam; `plain_pepadam` = "
        "Embedding + the same PEPAdam kernel; pep / plain_pepadam is PEP's cost with the "
        "optimiser kernel held fixed. `plain_xla` / `pep_xla`: the same steps compiled with "
        "XLA (`tf.function(jit_compile=True)`, what `TrainConfig(jit_compile=True)` does); "
        "pep_xla / plain_xla is PEP's cost when both are compiled.",
        "",
        "| Keras | "
        + " | ".join(arms)
        + " | pep / plain_pepadam | pep_xla / plain_xla | epoch s plain / pep |",
        "| --- | " + " | ".join("---" for _ in arms) + " | --- | --- | --- |",
    ]
    for r in [result, result.get("legacy")]:
        if not r:
            continue
        rr, cr, s = r["ratios"], r["cpu_ratios"], r["epoch_seconds"]
        cells = " | ".join(f"{rr[k]:.3f} ({cr[k]:.3f})" if k in rr else "-" for k in arms)
        same = r.get("same_optimizer_ratio")
        same = f"{same:.3f} ({r['same_optimizer_cpu_ratio']:.3f})" if same else "-"
        xla = r.get("xla_epoch_ratio")
        xla = f"{xla:.3f} ({r['xla_epoch_cpu_ratio']:.3f})" if xla else "-"
        lines.append(
            f"| {r['keras']} | {cells} | {same} | {xla} | {s['plain']:.1f} / {s['pep']:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="short epochs, few rounds")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--arms", default="pep,plain_pepadam,pep_recipe,pep_feature,pep_global")
    parser.add_argument("--no-legacy", action="store_true", help="skip the tf-keras run")
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    rounds, steps = (2, 20) if args.quick else (args.rounds, None)
    arms = [a for a in args.arms.split(",") if a]
    if "pep" not in arms:
        arms.insert(0, "pep")
    result = measure(rounds, steps, arms)
    if args.child:
        print("RESULT " + json.dumps(result))
        return
    if not is_legacy_keras() and not args.no_legacy:
        cmd = [sys.executable, __file__, "--child", f"--rounds={rounds}", f"--arms={args.arms}"]
        cmd += ["--quick"] if args.quick else []
        env = {**os.environ, "TF_USE_LEGACY_KERAS": "1"}
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
        line = next(x for x in out.splitlines() if x.startswith("RESULT "))
        result["legacy"] = json.loads(line[len("RESULT ") :])
    print(markdown(result))
    if not args.no_write:
        jpath, mpath = write_results("pep_overhead", result, markdown(result))
        print(f"wrote {jpath} and {mpath}")


if __name__ == "__main__":
    main()
