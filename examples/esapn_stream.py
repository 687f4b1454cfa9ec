"""ESAPN on a rating stream: sizes grow while the data arrive, then a compressed export is served.

ESAPN (Liu et al., SIGIR 2020) starts every user and item on the smallest rung of a ladder of
candidate sizes and lets two REINFORCE policies grow rows, batch by batch, while a
`RatingClassifier` is trained test-then-train on a time-ordered stream of ratings: each batch
is first predicted (the prequential metrics), then trained on. ESAPN has no budget; the run
reports the memory it reached. Steps:

1. read the stream (ML-100K in time order, the last 20 % the prequential test part; or a
   synthetic stream with ``--synthetic``);
2. ``run_esapn_stream`` classifies it with ESAPN and, for comparison, at the full size
   (``method="fixed"``); both are checkpointed in the output directory, so a rerun resumes;
3. ``tes.export.save_compressed`` writes the ESAPN classifier with every row stored at its
   own size (`CompressedLadderEmbedding`), and ``tf.saved_model.load`` serves it: the
   probability that a user likes an item, without tfembsize.

Runs under Keras 3 (the default) and tf-keras (``TF_USE_LEGACY_KERAS=1``):
``python examples/esapn_stream.py [--data-dir DIR] [--output DIR] [--max-interactions N]``
(ML-100K from ``DIR/ml-100k``, default ``../shared/data``; a few minutes on 2 CPU cores);
``--small`` runs a short synthetic stream with small tables (seconds).
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import tfembsize as tes  # noqa: E402
from tfembsize.controllers.esapn import run_esapn_stream, stream_config  # noqa: E402
from tfembsize.data import RatingStream, load_rating_stream  # noqa: E402


def synthetic_stream(
    n: int, num_users: int, num_items: int, seed: int, test_fraction: float
) -> RatingStream:
    """Ratings 1..5 from a user bias, an item bias and noise; popular items get more ratings."""
    rng = np.random.default_rng(seed)
    users = rng.integers(0, num_users, n)
    items = np.minimum(rng.geometric(8.0 / num_items, n) - 1, num_items - 1)
    score = rng.normal(size=num_users)[users] + rng.normal(size=num_items)[items]
    ratings = np.clip(np.round(3.5 + score + rng.normal(0.0, 0.5, n)), 1, 5)
    times = np.sort(rng.integers(0, 10 * n, n))
    return RatingStream.from_raw(
        users, items, ratings, times, test_fraction=test_fraction, name="synthetic"
    )


def main(argv: list[str] | None = None) -> dict:
    """Runs the example; returns its numbers (the tests check them)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "data")
    )
    parser.add_argument("--output", default="esapn_stream_output")
    parser.add_argument("--synthetic", action="store_true", help="a synthetic stream, no files")
    parser.add_argument("--small", action="store_true", help="synthetic, small tables (seconds)")
    parser.add_argument("--max-interactions", type=int, default=None, help="the first n in time")
    parser.add_argument("--task", choices=("binary", "multiclass"), default="binary")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    t_start = time.perf_counter()

    # 1. The stream.
    if args.small:
        stream = synthetic_stream(args.max_interactions or 1200, 40, 60, args.seed, 0.2)
        ladder, hidden, batch, policy_hidden = (2, 4, 8), 16, args.batch_size or 100, 16
    elif args.synthetic:
        stream = synthetic_stream(args.max_interactions or 50_000, 1000, 1500, args.seed, 0.2)
        ladder, hidden, batch, policy_hidden = (2, 4, 8, 16, 64), 128, args.batch_size or 500, 64
    else:
        path = Path(args.data_dir) / "ml-100k"
        stream = load_rating_stream(path, max_interactions=args.max_interactions)
        ladder, hidden, batch, policy_hidden = (2, 4, 8, 16, 64), 128, args.batch_size or 500, 64
    print(f"{stream!r}: test part from interaction {stream.test_start:,}.")
    config = stream_config(
        ladder=ladder,
        batch_size=batch,
        chunk_steps=max(1, stream.num_steps(batch) // (1 if args.small else 4)),
        policy_hidden=policy_hidden,
        policy_embedding_dim=8,
        count_buckets=128,
        seed=args.seed,
    )

    # 2. ESAPN, and the full-size baseline, on the same stream (each resumable).
    runs = {}
    for method in ("fixed", "esapn"):
        runs[method] = run_esapn_stream(
            stream,
            args.task,
            method=method,
            config=config,
            hidden=hidden,
            directory=os.path.join(args.output, f"run-{method}"),
        )
        test = runs[method].metrics["test"]
        memory = runs[method].memory
        print(
            f"{method.upper():>5}: prequential test accuracy {test['accuracy']:.4f} over "
            f"{int(test['samples']):,} ratings; memory {memory['user']['ratio']:.1%} (users) "
            f"and {memory['item']['ratio']:.1%} (items) of the full {ladder[-1]}-wide tables "
            f"({runs[method].wall_time:.1f}s)."
        )
    model = runs["esapn"].model
    sizes = runs["esapn"].sizes
    used = int(sizes["user"].sum() + sizes["item"].sum())
    for side in ("user", "item"):
        counts = np.bincount(np.searchsorted(ladder, sizes[side]), minlength=len(ladder))
        print(f"ESAPN {side} rows per size {dict(zip(ladder, counts.tolist(), strict=True))}")

    # 3. Export with each row at its own size, then serve with plain TensorFlow.
    ids = tf.TensorSpec([None], tf.int64)
    export_path = os.path.join(args.output, "export")
    result = tes.export.save_compressed(
        model,
        export_path,
        signatures="call",
        input_signature={"user": ids, "item": ids},
        overwrite=True,
    )
    served = tf.saved_model.load(export_path)
    signature = served.signatures["serving_default"]
    users = stream.users[stream.test_start :][:5].astype(np.int64)
    items = stream.items[stream.test_start :][:5].astype(np.int64)
    logits = signature(user=tf.constant(users), item=tf.constant(items))["outputs"].numpy()
    expected = model({"user": users, "item": items}).numpy()
    served_probability = tf.sigmoid(logits[:, 0]).numpy() if args.task == "binary" else None
    print(f"Exported to {export_path}: {result.signatures}")
    if served_probability is not None:
        for u, i, p in zip(users, items, served_probability, strict=True):
            print(f"  served: user {stream.user_ids[u]} likes movie {stream.item_ids[i]}: {p:.3f}")
    print(f"Done in {time.perf_counter() - t_start:.0f}s; outputs in {args.output}/.")
    return {
        "stream": stream,
        "runs": runs,
        "usable_params": used,
        "export": export_path,
        "served_logits": logits,
        "model_logits": expected,
        "served_probability": served_probability,
    }


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    main()
