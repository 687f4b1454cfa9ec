"""Compressing, saving, loading and serving big tables: cost against the dense table.

For each table size N (default 1M and 10M rows, d_max 64), a `BudgetedEmbedding` with a
random budgeted plan at c = 0.9 (sizes drawn under B = floor(0.1 * d_max * N)) is
compressed (`tfembsize.export.compress_layer`), saved as a SavedModel, loaded in a fresh
process and served (batches of 1024 lookups); the dense N x d_max table goes through the
same save / load / serve. Every phase runs in its own subprocess, so each peak RSS is that
phase's alone: ``export`` (build the table, compress, save) and ``serve`` (load, look up).

The compression path reads the table in chunks of rows (`tfembsize.layers.packed_table.
TableRows`): no dense N x d_max mask and no dense copy of the compressed table is made.

Usage:
    python benchmarks/big_table.py                 # 1M and 10M rows -> results/big_table.*
    python benchmarks/big_table.py --quick         # 100k rows -> results/big_table_quick.*
    python benchmarks/big_table.py --rows 100000,1000000 --name big_table_small
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parents[1]))

SERVE_BATCH = 1024
SERVE_ROUNDS = 50


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in (path / "variables").rglob("*") if p.is_file())


def child_export(mode: str, rows: int, dim: int, sparsity: float, path: Path) -> dict:
    import tensorflow as tf

    from tfembsize._keras import keras
    from tfembsize.export import compress_layer
    from tfembsize.layers import BudgetedEmbedding

    t0 = time.perf_counter()
    init = keras.initializers.RandomNormal(0.0, 0.01, seed=0)
    if mode == "dense":
        table = tf.Variable(init((rows, dim)), name="embeddings")
        built = time.perf_counter()

        class Dense(tf.Module):
            def __init__(self) -> None:
                super().__init__()
                self.table = table

            @tf.function(input_signature=[tf.TensorSpec([None], tf.int64)])
            def lookup(self, ids: tf.Tensor) -> tf.Tensor:
                return tf.gather(self.table, ids)

        module: tf.Module = Dense()
        usable = rows * dim
    else:
        layer = BudgetedEmbedding(
            rows, dim, sparsity=sparsity, allocation="random", seed=0, embeddings_initializer=init
        )
        layer.build(None)
        built = time.perf_counter()
        usable = layer.usable_params()
        assert usable <= layer.max_params  # the budget guarantee
        small = compress_layer(layer)
        probe = tf.constant([0, 1, rows // 2, rows - 1], tf.int64)
        assert bool(tf.reduce_all(small(probe) == layer(probe)))  # exact lookups

        class Compressed(tf.Module):
            def __init__(self) -> None:
                super().__init__()
                self.layer = small

            @tf.function(input_signature=[tf.TensorSpec([None], tf.int64)])
            def lookup(self, ids: tf.Tensor) -> tf.Tensor:
                return self.layer(ids)

        module = Compressed()
    compressed = time.perf_counter()
    tf.saved_model.save(module, str(path))
    saved = time.perf_counter()
    return {
        "build_seconds": built - t0,
        "compress_seconds": compressed - built,
        "save_seconds": saved - compressed,
        "seconds": saved - built,
        "usable_params": int(usable),
        "bytes": _folder_bytes(path),
        "peak_rss_mib": _peak_rss_mib(),
    }


def child_serve(rows: int, path: Path) -> dict:
    import numpy as np
    import tensorflow as tf

    t0 = time.perf_counter()
    loaded = tf.saved_model.load(str(path))
    t1 = time.perf_counter()
    rng = np.random.default_rng(0)
    batches = [tf.constant(rng.integers(0, rows, SERVE_BATCH)) for _ in range(SERVE_ROUNDS)]
    loaded.lookup(batches[0])  # warm-up
    t2 = time.perf_counter()
    for b in batches:
        loaded.lookup(b).numpy()
    t3 = time.perf_counter()
    return {
        "load_seconds": t1 - t0,
        "lookup_ms_per_batch": 1000.0 * (t3 - t2) / SERVE_ROUNDS,
        "seconds": t1 - t0 + (t3 - t2),
        "peak_rss_mib": _peak_rss_mib(),
    }


def _spawn(*args: str) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", *args],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    lines = [x for x in proc.stdout.splitlines() if x.startswith("CHILD ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"child {args} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("CHILD ") :])


def measure(rows: int, dim: int, sparsity: float) -> dict:
    out: dict = {"rows": rows, "dim": dim}
    work = Path(tempfile.mkdtemp(prefix="big_table_"))
    try:
        for mode in ("dense", "compressed"):
            path = work / mode
            exp = _spawn("export", mode, str(rows), str(dim), str(sparsity), str(path))
            srv = _spawn("serve", mode, str(rows), str(dim), str(sparsity), str(path))
            out[mode] = {"export": exp, "serve": srv}
            shutil.rmtree(path, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    d, c = out["dense"], out["compressed"]
    out["bytes_ratio"] = c["export"]["bytes"] / d["export"]["bytes"]
    out["peak_rss_ratio"] = {
        "export": c["export"]["peak_rss_mib"] / d["export"]["peak_rss_mib"],
        "serve": c["serve"]["peak_rss_mib"] / d["serve"]["peak_rss_mib"],
    }
    out["seconds"] = {
        mode: {"export": out[mode]["export"]["seconds"], "serve": out[mode]["serve"]["seconds"]}
        for mode in ("dense", "compressed")
    }
    return out


def markdown(payload: dict) -> str:
    lines = [
        "# Big tables: compress + save + load + serve vs the dense table",
        "",
        f"d_max {payload['dim']}, random budgeted plan at c = {payload['sparsity']}; each "
        "phase in its own process (peak RSS per phase). export = build the table + compress "
        "+ save (seconds exclude the build); serve = load + "
        f"{SERVE_ROUNDS} lookups of {SERVE_BATCH} ids.",
        "",
        "| rows | bytes ratio | peak RSS ratio export | peak RSS ratio serve | dense export s | "
        "compressed export s | dense serve s | compressed serve s | compressed export s "
        "per M rows |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in payload["sizes"]:
        s = r["seconds"]
        lines.append(
            f"| {r['rows']:,} | {r['bytes_ratio']:.3f} | {r['peak_rss_ratio']['export']:.3f} | "
            f"{r['peak_rss_ratio']['serve']:.3f} | {s['dense']['export']:.2f} | "
            f"{s['compressed']['export']:.2f} | {s['dense']['serve']:.2f} | "
            f"{s['compressed']['serve']:.2f} | "
            f"{s['compressed']['export'] / (r['rows'] / 1e6):.2f} |"
        )
    lines += ["", "Peak RSS (MiB):", ""]
    for r in payload["sizes"]:
        lines.append(
            f"- {r['rows']:,} rows: dense export {r['dense']['export']['peak_rss_mib']:.0f}, "
            f"compressed export {r['compressed']['export']['peak_rss_mib']:.0f}, dense serve "
            f"{r['dense']['serve']['peak_rss_mib']:.0f}, compressed serve "
            f"{r['compressed']['serve']['peak_rss_mib']:.0f}"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="1000000,10000000", help="comma-separated sizes")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--quick", action="store_true", help="100k rows, big_table_quick.*")
    parser.add_argument("--name", default=None, help="results file stem")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        phase, mode, rows, dim, sparsity, path = args.child
        if phase == "export":
            res = child_export(mode, int(rows), int(dim), float(sparsity), Path(path))
        else:
            res = child_serve(int(rows), Path(path))
        print("CHILD " + json.dumps(res), flush=True)
        return
    rows = [100_000] if args.quick else [int(x) for x in args.rows.split(",")]
    name = args.name or ("big_table_quick" if args.quick else "big_table")
    sizes = []
    for n in rows:
        sizes.append(measure(n, args.dim, args.sparsity))
        print(json.dumps({k: sizes[-1][k] for k in ("rows", "bytes_ratio", "peak_rss_ratio")}))
    payload = {"dim": args.dim, "sparsity": args.sparsity, "sizes": sizes}
    from common import write_results

    write_results(name, payload, markdown(payload))


if __name__ == "__main__":
    main()
