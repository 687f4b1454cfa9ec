"""What a CIESS search step rewards: the per-iteration quality ratio against uniform sizes.

A CIESS iteration trains a fresh backbone for a short fixed length and rewards each entity by
``q_n - lambda (d_n / d_max)^2``. This probe trains the same short runs with one uniform size
d for every entity (d in ``--sizes``), through the same environment the protocol's CIESS
search uses (same recipe, same pretrained full-size reference), and reports the mean
per-entity quality ratio q(d) and, for each lambda in ``--lambdas``, the mean reward and the
size it peaks at. If the reward peaks far above the sizes a target needs (about
``(1 - c) d_max``), a search with that lambda is not pulled into the target's band.

Example::

    python benchmarks/ciess_probe.py --dataset ml-1m --backbone mf \\
        --work-dir _state/ml-1m_mf_ciess --name ciess_probe_ml-1m_mf

Writes ``results/<name>.json`` and ``.md`` with command, machine and date. Steps are
appended to ``<work-dir>/ciess_probe.jsonl`` as they finish, so a killed probe resumes.
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

from common import command, machine, now, protocol_context, write_results  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="ml-1m")
    p.add_argument("--backbone", default="mf")
    p.add_argument("--work-dir", required=True, help="the protocol run's work folder")
    p.add_argument("--name", required=True)
    p.add_argument("--sizes", default="2,4,8,16,32,64,128")
    p.add_argument("--lambdas", default="0.01,0.1,0.4,1,2,4")
    p.add_argument("--epochs", type=float, default=5.0, help="training per step, epochs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jit-compile", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    from tfembsize.protocol.methods.ciess import search_config

    ctx = protocol_context(
        args.dataset,
        args.backbone,
        args.work_dir,
        os.path.join(args.work_dir, "ciess_probe"),
        seed=args.seed,
        method="ciess",
        jit_compile=args.jit_compile,
    )
    recipe = ctx.train_config
    env = ctx.environment(train_config=search_config(recipe))
    obs = env.observation()  # the reference (pretrained once per seed, shared)
    log = Path(args.work_dir, f"ciess_probe_{args.epochs:g}ep.jsonl")
    done = {}
    if log.exists():
        for line in log.read_text().splitlines():
            row = json.loads(line)
            done[row["size"]] = row
    sizes = [int(s) for s in args.sizes.split(",")]
    for d in sizes:
        if d in done:
            continue
        plan = obs.plan_from_sizes(np.full(obs.num_users, d), np.full(obs.num_items, d))
        fb = env.step(plan, "scratch", train_epochs=args.epochs)
        row = {
            "size": d,
            "mean_ratio": fb.mean_entity_ratio(),
            "user_ratio": float(np.mean(fb.user_quality_ratio)),
            "item_ratio": float(np.mean(fb.item_quality_ratio)),
            "quality_ratio": fb.quality_ratio,
            "recall@20": fb.metrics.get("recall@20"),
            "wall_time": fb.wall_time,
        }
        with log.open("a") as f:
            f.write(json.dumps(row) + "\n")
        done[d] = row
    rows = [done[d] for d in sizes]
    lambdas = [float(x) for x in args.lambdas.split(",")]
    rewards = {
        f"{lam:g}": [r["mean_ratio"] - lam * (r["size"] / 128) ** 2 for r in rows]
        for lam in lambdas
    }
    peaks = {k: sizes[int(np.argmax(v))] for k, v in rewards.items()}
    payload = {
        "dataset": args.dataset,
        "backbone": args.backbone,
        "epochs_per_step": args.epochs,
        "reference_validation_quality": obs.reference.quality if obs.reference else None,
        "rows": rows,
        "reward_by_lambda": rewards,
        "reward_peak_size_by_lambda": peaks,
        "command": command(),
        "machine": machine(),
        "date": now(),
    }
    lines = [
        f"# What a CIESS step rewards: {args.dataset} {args.backbone}, {args.epochs:g} epochs",
        "",
        "| uniform size d | mean q (users and items) | q users | q items | val R@20 | "
        + " | ".join(f"reward lambda={k}" for k in rewards)
        + " |",
        "| --- " * (5 + len(rewards)) + "|",
    ]
    for i, r in enumerate(rows):
        lines.append(
            f"| {r['size']} | {r['mean_ratio']:.4f} | {r['user_ratio']:.4f} | "
            f"{r['item_ratio']:.4f} | {r['recall@20']:.4f} | "
            + " | ".join(f"{v[i]:.4f}" for v in rewards.values())
            + " |"
        )
    lines += [
        "",
        "Reward peaks at size: " + ", ".join(f"lambda {k}: {v}" for k, v in peaks.items()),
    ]
    write_results(args.name, payload, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
