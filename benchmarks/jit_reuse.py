"""Repeated `train_bpr` calls on one model: the reused XLA loop versus a new loop per call.

A search such as BET fine-tunes the same model hundreds of times. With
``TrainConfig(jit_compile=True)`` and the default Adam, `train_bpr` keeps the optimiser and the
XLA-compiled loop on the model and reuses them (state reset) from the second call on. Before
that cache (commit d941e17) every call built a new Adam and compiled a new XLA executable,
which TensorFlow keeps for the life of the process. This script measures both in one process,
side by side for wall time (and each arm alone in a fresh process for memory), plus the plain
(no XLA) loop:

- ``xla_reused``: `train_bpr(model, ..., config.jit_compile=True)` (the library default path);
- ``xla_per_call``: the same, with ``optimizer=lambda lr: Adam(lr)``: an explicit optimiser
  factory bypasses the cache, so every call builds a new Adam and compiles a new loop, which
  is exactly the behaviour before d941e17;
- ``plain``: ``jit_compile=False`` (a new traced loop per call, no XLA).

Each arm has its own MF model (d = 128, same seed) and calls `train_bpr` with ``--steps``
steps and one validation ranking per call. Wall time: the arms are called in turn
(A B C A B C ...) in one process, so machine load hits them alike; reported are the median
wall time per call and the median of the paired per-round ratios. Memory: each arm then runs
alone in a fresh process, and its RSS growth per call after warm-up is (RSS after the last
call - RSS after warm-up) / calls. The growth attributed to each arm inside the shared process
is kept too, but there memory one arm frees another reuses, so it is only indicative.

Usage:
    python benchmarks/jit_reuse.py [--dataset ml-1m] [--steps 20] [--calls 20] [--warmup 3]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import median_ratio, write_results  # noqa: E402

from tfembsize._keras import is_legacy_keras, keras  # noqa: E402
from tfembsize.data import load_dataset  # noqa: E402
from tfembsize.metrics import RankingEvaluator  # noqa: E402
from tfembsize.models import train_bpr  # noqa: E402
from tfembsize.protocol.backbones import default_train_config, get_backbone  # noqa: E402

ARMS = ("xla_reused", "xla_per_call", "plain")


def rss_mb() -> float:
    """Resident set size of this process in MiB (Linux)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("VmRSS not found in /proc/self/status")


def run_arms(
    arms: tuple[str, ...], dataset: str, steps: int, calls: int, warmup: int, verbose: bool
) -> dict:
    """Calls `train_bpr` ``warmup + calls`` times per arm, arms in turn; returns measurements."""
    split = load_dataset(dataset).split(0.5, 0.25, 0.25, seed=42)
    evaluator = RankingEvaluator(split)
    base = default_train_config("mf", split).replace(
        max_steps=steps, eval_every=steps, evaluate_test=False
    )
    setups = {}
    for arm in arms:
        model = get_backbone("mf")(split, 128, 0)
        config = base.replace(jit_compile=arm != "plain")
        factory = (
            (lambda lr: keras.optimizers.Adam(learning_rate=lr)) if arm == "xla_per_call" else None
        )
        setups[arm] = (model, config, factory)

    wall: dict[str, list[float]] = {a: [] for a in arms}
    growth: dict[str, list[float]] = {a: [] for a in arms}
    losses: dict[str, list[float]] = {a: [] for a in arms}
    rss_after_warmup = 0.0
    for i in range(warmup + calls):
        for arm in arms:
            model, config, factory = setups[arm]
            gc.collect()
            r0, t0 = rss_mb(), time.perf_counter()
            result = train_bpr(model, split, evaluator, config=config, optimizer=factory)
            dt = time.perf_counter() - t0
            gc.collect()
            r1 = rss_mb()
            if i >= warmup:
                wall[arm].append(dt)
                growth[arm].append(r1 - r0)
                losses[arm].append(float(result.final_loss))
        if i == warmup - 1:
            rss_after_warmup = rss_mb()
        if verbose:
            line = ", ".join(f"{a} {wall[a][-1]:.2f}s" for a in arms if wall[a])
            print(f"round {i + 1}/{warmup + calls}: {line}", flush=True)  # noqa: T201
    return {
        "wall": wall,
        "growth": growth,
        "losses": losses,
        "rss_after_warmup_mb": rss_after_warmup,
        "rss_end_mb": rss_mb(),
    }


def isolated_growth(arm: str, args: argparse.Namespace) -> dict:
    """Runs one arm alone in a fresh process; RSS growth per call after warm-up."""
    cmd = [
        sys.executable,
        __file__,
        "--only",
        arm,
        "--dataset",
        args.dataset,
        "--steps",
        str(args.steps),
        "--calls",
        str(args.calls),
        "--warmup",
        str(args.warmup),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    res = json.loads(out.strip().splitlines()[-1])
    res["mb_per_call"] = (res["rss_end_mb"] - res["rss_after_warmup_mb"]) / args.calls
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="ml-1m")
    p.add_argument("--steps", type=int, default=20, help="optimiser steps per train_bpr call")
    p.add_argument("--calls", type=int, default=20, help="measured calls per arm")
    p.add_argument("--warmup", type=int, default=3, help="unmeasured calls per arm first")
    p.add_argument("--only", choices=ARMS, help=argparse.SUPPRESS)  # the isolated memory runs
    args = p.parse_args()
    for name in ("steps", "calls", "warmup"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.only:
        res = run_arms((args.only,), args.dataset, args.steps, args.calls, args.warmup, False)
        print(json.dumps({k: res[k] for k in ("rss_after_warmup_mb", "rss_end_mb")}))  # noqa: T201
        return

    res = run_arms(ARMS, args.dataset, args.steps, args.calls, args.warmup, True)
    wall, growth, losses = res["wall"], res["growth"], res["losses"]
    alone = {}
    for arm in ARMS:
        alone[arm] = isolated_growth(arm, args)
        print(f"{arm} alone: {alone[arm]['mb_per_call']:.2f} MB per call", flush=True)  # noqa: T201

    mode = "tf-keras" if is_legacy_keras() else "keras3"
    per_call = {a: statistics.median(wall[a]) for a in ARMS}
    mb_alone = {a: alone[a]["mb_per_call"] for a in ARMS}
    mb_interleaved = {a: sum(growth[a]) / len(growth[a]) for a in ARMS}
    ratio_reused = median_ratio(wall, "xla_reused", "xla_per_call")
    ratio_plain = median_ratio(wall, "xla_reused", "plain")
    # Same model seed, batches and fresh Adam state in both XLA arms: their losses must agree.
    loss_gap = max(
        abs(a - b) for a, b in zip(losses["xla_reused"], losses["xla_per_call"], strict=True)
    )
    payload = {
        "dataset": args.dataset,
        "keras": mode,
        "steps_per_call": args.steps,
        "calls": args.calls,
        "warmup_calls": args.warmup,
        "median_wall_per_call_s": per_call,
        "rss_growth_mb_per_call_alone": mb_alone,
        "rss_growth_mb_per_call_interleaved": mb_interleaved,
        "xla_reused_vs_xla_per_call_wall": ratio_reused,
        "xla_reused_vs_plain_wall": ratio_plain,
        "wall_s": wall,
        "rss_growth_mb_interleaved": growth,
        "rss_alone": alone,
        "last_chunk_loss": losses,
        "max_loss_gap_reused_vs_per_call": loss_gap,
    }
    rows = "\n".join(
        f"| {a} | {per_call[a]:.2f} | {mb_alone[a]:.2f} | {mb_interleaved[a]:.2f} |" for a in ARMS
    )
    md = (
        f"# Repeated train_bpr calls: reused XLA loop vs a new one per call (MF, {args.dataset}, "
        f"d=128, {mode})\n\n"
        f"{args.calls} measured calls per arm after {args.warmup} warm-up calls, "
        f"{args.steps} optimiser steps + one validation ranking per call. Wall times: arms "
        "alternated in one process. RSS growth: each arm alone in a fresh process (RSS after "
        "the last call minus RSS after warm-up, per call); the interleaved column attributes "
        "each call's RSS change to its arm in the shared process, where memory one arm frees "
        "another reuses (order of magnitude only).\n\n"
        "| arm | median wall per call (s) | RSS growth per call, alone (MB) | same, "
        "interleaved (MB) |\n| --- | --- | --- | --- |\n"
        f"{rows}\n\n"
        f"Median paired wall ratio xla_reused / xla_per_call: {ratio_reused:.3f}; "
        f"xla_reused / plain: {ratio_plain:.3f}. Largest gap between the two XLA arms' "
        f"per-call training losses (same model seed, batches and fresh Adam): {loss_gap:.2e}.\n"
    )
    write_results("jit_reuse", payload, md)
    print(md)  # noqa: T201


if __name__ == "__main__":
    main()
