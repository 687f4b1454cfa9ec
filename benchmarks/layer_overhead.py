"""Overhead of MaskedEmbedding over a plain Keras Embedding.

Times a BPR matrix-factorisation train step on Gowalla-sized synthetic tables (29,858 users x
40,981 items, d = 128, batch 2048, Adam, the library's default MF recipe) with
``MaskedEmbedding`` tables (A) and ``Embedding`` tables (B), alternating A B A B in one process,
plus forward-only lookups at batch 1 and 1024. Ratios are masked / plain medians of paired
rounds. A second train-step pair with plain SGD (sparse updates, the cheapest optimiser) shows
the worst case for the relative overhead.

By default the script measures Keras 3 and then, in a subprocess, tf-keras
(``TF_USE_LEGACY_KERAS=1``); the top-level keys of the JSON are the Keras 3 numbers and the
tf-keras numbers are under ``"legacy"``.

Usage:
    python benchmarks/layer_overhead.py            # both Keras modes, ~5 minutes on 2 idle cores
    python benchmarks/layer_overhead.py --quick    # fewer rounds, for a smoke test
    python benchmarks/layer_overhead.py --no-legacy
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import alternate_clocks, median_ratio, write_results  # noqa: E402

from tfembsize._keras import is_legacy_keras, keras  # noqa: E402
from tfembsize.layers import MaskedEmbedding  # noqa: E402

NUM_USERS = 29_858
NUM_ITEMS = 40_981
DIM = 128
BATCH = 2048
L2 = 1e-4


def make_tables(masked: bool, seed: int) -> tuple:
    init = keras.initializers.RandomNormal(stddev=0.01, seed=seed)
    init2 = keras.initializers.RandomNormal(stddev=0.01, seed=seed + 1)
    if masked:
        users = MaskedEmbedding(NUM_USERS, DIM, embeddings_initializer=init, name="user_embedding")
        items = MaskedEmbedding(NUM_ITEMS, DIM, embeddings_initializer=init2, name="item_embedding")
        rng = np.random.default_rng(seed)
        # Realistic searched sizes: mixed widths, so the mask really zeros coordinates.
        users.assign_sizes(rng.integers(1, DIM + 1, size=NUM_USERS))
        items.assign_sizes(rng.integers(1, DIM + 1, size=NUM_ITEMS))
    else:
        users = keras.layers.Embedding(
            NUM_USERS, DIM, embeddings_initializer=init, name="user_embedding"
        )
        items = keras.layers.Embedding(
            NUM_ITEMS, DIM, embeddings_initializer=init2, name="item_embedding"
        )
        users.build((None,))
        items.build((None,))
    return users, items


def make_train_step(users, items, optimizer):  # noqa: ANN001, ANN201
    variables = [users.embeddings, items.embeddings]

    @tf.function
    def step(u: tf.Tensor, i: tf.Tensor, j: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            eu, ei, ej = users(u), items(i), items(j)
            pos = tf.reduce_sum(eu * ei, axis=-1)
            neg = tf.reduce_sum(eu * ej, axis=-1)
            reg = tf.reduce_sum(eu * eu) + tf.reduce_sum(ei * ei) + tf.reduce_sum(ej * ej)
            loss = tf.reduce_mean(tf.nn.softplus(neg - pos)) + L2 * reg / BATCH
        grads = tape.gradient(loss, variables)
        optimizer.apply_gradients(zip(grads, variables, strict=True))
        return loss

    return step


def batches(num: int, seed: int) -> list:
    rng = np.random.default_rng(seed)
    return [
        (
            tf.constant(rng.integers(0, NUM_USERS, BATCH), tf.int32),
            tf.constant(rng.integers(0, NUM_ITEMS, BATCH), tf.int32),
            tf.constant(rng.integers(0, NUM_ITEMS, BATCH), tf.int32),
        )
        for _ in range(num)
    ]


def runner(step, data, steps: int):  # noqa: ANN001, ANN201
    def run() -> None:
        loss = None
        for k in range(steps):
            loss = step(*data[k % len(data)])
        loss.numpy()  # wait for the last step

    return run


def lookup_runner(layer, ids: tf.Tensor, calls: int):  # noqa: ANN001, ANN201
    fn = tf.function(lambda x: layer(x))

    def run() -> None:
        out = None
        for _ in range(calls):
            out = fn(ids)
        out.numpy()

    return run


def measure(rounds: int, steps: int, calls: int) -> dict:
    data = batches(8, seed=1)
    summary: dict = {"keras": "tf-keras" if is_legacy_keras() else "keras3"}
    cpu_ratios: dict = {}
    times: dict = {}

    def record(key: str, fns: dict, per: int, unit: float, unit_name: str) -> None:
        clocks = alternate_clocks(fns, repeats=rounds, warmup=2)
        times[key] = clocks
        summary[key] = median_ratio(clocks["wall"], "masked", "plain")
        cpu_ratios[key] = median_ratio(clocks["cpu"], "masked", "plain")
        summary[f"{key}_{unit_name}"] = {
            k: unit * float(np.median(v)) / per for k, v in clocks["wall"].items()
        }

    for opt_name, make_opt in (
        ("adam", lambda: keras.optimizers.Adam(1e-3)),
        ("sgd", lambda: keras.optimizers.SGD(1e-2)),
    ):
        mu, mi = make_tables(True, seed=0)
        pu, pi = make_tables(False, seed=0)
        fns = {
            "masked": runner(make_train_step(mu, mi, make_opt()), data, steps),
            "plain": runner(make_train_step(pu, pi, make_opt()), data, steps),
        }
        key = "train_step_ratio" if opt_name == "adam" else "train_step_ratio_sgd"
        record(key, fns, steps, 1e3, "ms")
        del mu, mi, pu, pi, fns

    mu, _ = make_tables(True, seed=0)
    pu, _ = make_tables(False, seed=0)
    rng = np.random.default_rng(2)
    for b in (1, 1024):
        ids = tf.constant(rng.integers(0, NUM_USERS, b), tf.int32)
        fns = {
            "masked": lookup_runner(mu, ids, calls),
            "plain": lookup_runner(pu, ids, calls),
        }
        record(f"lookup_ratio_b{b}", fns, calls, 1e6, "us")
    summary["cpu_time_ratios"] = cpu_ratios
    summary["settings"] = {
        "num_users": NUM_USERS,
        "num_items": NUM_ITEMS,
        "dim": DIM,
        "batch": BATCH,
        "rounds": rounds,
        "steps_per_round": steps,
        "lookup_calls_per_round": calls,
        "optimizers": {"train_step_ratio": "Adam(1e-3)", "train_step_ratio_sgd": "SGD(1e-2)"},
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
    }
    summary["raw_times_s"] = times
    return summary


def markdown(result: dict) -> str:
    keys = ["train_step_ratio", "train_step_ratio_sgd", "lookup_ratio_b1", "lookup_ratio_b1024"]
    lines = [
        "# MaskedEmbedding overhead vs Embedding",
        "",
        "BPR-MF train step (29,858 x 40,981 rows, d=128, batch 2048; Adam, and plain SGD as the "
        "worst case) and forward lookups. Ratio = masked / plain, median over paired "
        "alternating rounds (A B A B in one process); lower is better, goal for the Adam train "
        "step <= 1.05. Wall-clock ratios are the headline; CPU-time ratios (process CPU time, "
        "all threads) are steadier when other jobs share the machine.",
        "",
        "| Keras | clock | train step (Adam) | train step (SGD) | lookup b=1 | lookup b=1024 |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in [result, result.get("legacy")]:
        if not r:
            continue
        wall = " | ".join(f"{r[k]:.3f}" for k in keys)
        cpu = " | ".join(f"{r['cpu_time_ratios'][k]:.3f}" for k in keys)
        lines.append(f"| {r['keras']} | wall | {wall} |")
        lines.append(f"| {r['keras']} | CPU | {cpu} |")
    lines += ["", "Median wall time per call, masked / plain:", ""]
    for r in [result, result.get("legacy")]:
        if not r:
            continue
        ms_a, ms_s = r["train_step_ratio_ms"], r["train_step_ratio_sgd_ms"]
        us1, us2 = r["lookup_ratio_b1_us"], r["lookup_ratio_b1024_us"]
        lines.append(
            f"- {r['keras']}: train step Adam {ms_a['masked']:.1f} / {ms_a['plain']:.1f} ms, "
            f"SGD {ms_s['masked']:.1f} / {ms_s['plain']:.1f} ms; lookup b=1 "
            f"{us1['masked']:.0f} / {us1['plain']:.0f} us, b=1024 {us2['masked']:.0f} / "
            f"{us2['plain']:.0f} us (load average at end {r['settings']['load_average_at_end']})"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="few rounds (smoke test)")
    parser.add_argument("--no-legacy", action="store_true", help="skip the tf-keras run")
    parser.add_argument("--rounds", type=int, default=25, help="A/B rounds per measurement")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    rounds, steps, calls = (3, 3, 20) if args.quick else (args.rounds, 10, 200)

    result = measure(rounds, steps, calls)
    if args.child:
        print("RESULT " + json.dumps(result))
        return
    if not is_legacy_keras() and not args.no_legacy:
        cmd = [sys.executable, __file__, "--child", "--rounds", str(args.rounds)]
        cmd += ["--quick"] if args.quick else []
        env = {**os.environ, "TF_USE_LEGACY_KERAS": "1"}
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
        line = next(x for x in out.splitlines() if x.startswith("RESULT "))
        result["legacy"] = json.loads(line[len("RESULT ") :])
    jpath, mpath = write_results("layer_overhead", result, markdown(result))
    print(markdown(result))
    print(f"wrote {jpath} and {mpath}")


if __name__ == "__main__":
    main()
