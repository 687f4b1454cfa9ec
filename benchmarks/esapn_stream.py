"""ESAPN in its own setting: a time-ordered rating stream classified test-then-train.

Runs FIXED (every row at d_max = 128, no policy) and ESAPN on the binary (liked: rating > 3.5)
and the five-class task, each one pass over the stream in batches of 500 (Adam 1e-3, loss
summed over the batch), with the prequential metrics of the last 20 % of the stream
(`tfembsize.controllers.run_esapn_stream`). The results sit beside the ESAPN paper's own
rows (ML-20M and ML-latest, last 5M interactions; the paper's stream is shuffled and its
counters restart for the test part, ours is in time order with continuous counters).

    python benchmarks/esapn_stream.py                          # ML-1M, all four runs
    python benchmarks/esapn_stream.py --max-interactions 20000 # a quick slice

Resumable: each run checkpoints every ``--chunk-steps`` batches under ``--work-dir`` and a
rerun continues it; finished runs are kept in ``results/<name>.partial.json`` and the
results files are rewritten after every run (with the runs still missing listed as
``pending``).

Results: ``results/esapn_ml1m_stream.{json,md}`` for the whole ML-1M stream (else
``results/esapn_<dataset>_stream_<n>.{json,md}``, ``--name`` overrides) and
``results/<name>_sizes.png``: the mean size ESAPN chose against the interaction count, for
users and items (the paper's Figure 5), from the binary run.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

from tfembsize import _io  # noqa: E402
from tfembsize.controllers.esapn import run_esapn_stream, stream_config  # noqa: E402
from tfembsize.data import load_rating_stream  # noqa: E402

logger = logging.getLogger("esapn_stream")

TASKS = ("binary", "multiclass")
METHODS = ("fixed", "esapn")
LOSS = {"binary": "mse", "multiclass": "cross_entropy"}
_PARTIAL_FORMAT = "tfembsize.benchmarks.esapn_stream"

# The ESAPN paper's prequential test (last 5M interactions), accuracy % / loss.
PAPER = {
    "note": (
        "Liu et al., SIGIR 2020: ML-20M and ML-latest, shuffled stream, counters restarted "
        "for the test part; the extracted layout is ambiguous about which data set each "
        "five-class row belongs to."
    ),
    "binary": {
        "ml-20m": {"fixed": [72.13, 0.1845], "esapn": [72.98, 0.1785]},
        "ml-latest": {"fixed": [72.13, 0.1845], "esapn": [72.88, 0.1790]},
    },
    "multiclass": {
        "(ml-20m)": {"fixed": [49.45, 1.1517], "esapn": [51.10, 1.1126]},
        "(ml-latest)": {"fixed": [50.01, 1.1414], "esapn": [51.11, 1.1147]},
    },
    "memory_ratio_binary": {
        "ml-20m": {"users": 0.517, "items": 0.304},
        "ml-latest": {"users": 0.267, "items": 0.125},
    },
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--dataset", default="ml-1m", help="ml-1m, ml-100k or a ratings file")
    p.add_argument("--max-interactions", type=int, default=None, help="the first n in time")
    p.add_argument("--test-fraction", type=float, default=0.2)
    p.add_argument("--tasks", default=",".join(TASKS))
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--chunk-steps", type=int, default=100, help="batches between checkpoints")
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--ladder",
        default=None,
        help="candidate sizes, e.g. 2,4,8,16,64,128 (default); FIXED uses the last one "
        "(--ladder 16 --methods fixed: every row at 16)",
    )
    p.add_argument("--jit", action="store_true", help="compile the steps with XLA")
    p.add_argument("--work-dir", default=None, help="checkpoints (default results/_work/...)")
    p.add_argument("--name", default=None, help="results file stem")
    args = p.parse_args(argv)
    if args.name is None:
        stem = "ml1m" if args.dataset == "ml-1m" else Path(args.dataset).name.replace("-", "")
        args.name = f"esapn_{stem}_stream"
        if args.max_interactions is not None:
            args.name += f"_{args.max_interactions}"
    for key, allowed in (("tasks", TASKS), ("methods", METHODS)):
        values = [v for v in getattr(args, key).split(",") if v]
        bad = [v for v in values if v not in allowed]
        if bad or not values:
            p.error(f"--{key} must list some of {allowed}; received {getattr(args, key)!r}")
        setattr(args, key, values)
    return args


def _sizes_figure(run: dict[str, Any], path: Path, title: str, d_max: int) -> dict[str, Any]:
    from tfembsize.plots import plot_sizes_vs_frequency

    sides = {
        label: (np.asarray(run["sizes"][side]), np.asarray(run["frequencies"][side]))
        for label, side in (("users", "user"), ("items", "item"))
    }
    return plot_sizes_vs_frequency(
        sides,
        path,
        d_max=d_max,
        bins=15,
        statistic="mean",
        xlabel="interactions in the stream + 1",
        title=title,
    )


def _payload(
    args: argparse.Namespace, stream: Any, runs: dict[str, Any], config: Any
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "dataset": args.dataset,
        "interactions": stream.num_interactions,
        "users": stream.num_users,
        "items": stream.num_items,
        "test_start": stream.test_start,
        "test_interactions": stream.num_test,
        "order": "time (stable ties), counters never reset",
        "config": config.to_dict(),
        "hidden": args.hidden,
        "pending": [f"{t}_{m}" for t in args.tasks for m in args.methods if f"{t}_{m}" not in runs],
        "memory_ratio": {},
        "memory": {},
        "overhead": {},
        "wall_time": {key: run["wall_time"] for key, run in runs.items()},
        "paper": PAPER,
    }
    for task in TASKS:
        entry: dict[str, Any] = {}
        for method in METHODS:
            run = runs.get(f"{task}_{method}")
            test = None if run is None else run["metrics"]["test"]
            entry[f"{method}_accuracy"] = None if test is None else test["accuracy"]
            entry[f"{method}_{LOSS[task]}"] = None if test is None else test[LOSS[task]]
            if run is not None:
                entry[f"{method}_train_part"] = run["metrics"]["train"]
                out["memory"][f"{task}_{method}"] = run["memory"]
                out["overhead"][f"{task}_{method}"] = run["overhead"]
        out[task] = entry
        esapn = runs.get(f"{task}_esapn")
        if esapn is not None:
            ratios = {"users": esapn["memory"]["user"]["ratio"]}
            ratios["items"] = esapn["memory"]["item"]["ratio"]
            if task == "binary":
                out["memory_ratio"].update(ratios)
            else:
                out["memory_ratio"].update({f"{task}_{k}": v for k, v in ratios.items()})
    return out


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.2f} %"


def _num(x: float | None) -> str:
    return "—" if x is None else f"{x:.4f}"


def _markdown(payload: dict[str, Any], figure: str | None) -> str:
    d_max = int(payload["config"]["ladder"][-1])
    lines = [
        f"# ESAPN on the {payload['dataset']} rating stream (prequential, time order)",
        "",
        f"{payload['interactions']:,} ratings, {payload['users']:,} users, "
        f"{payload['items']:,} items; the test part is the last "
        f"{payload['test_interactions']:,} (from position {payload['test_start']:,}). One pass "
        "in batches of "
        f"{payload['config']['batch_size']}; every batch is scored before the model trains on "
        "it. Counters are never reset.",
        "",
        f"| task | FIXED ({d_max}) | ESAPN | paper FIXED (128) | paper ESAPN |",
        "| --- | --- | --- | --- | --- |",
    ]
    for task, loss in LOSS.items():
        ours = payload[task]
        for data, row in PAPER[task].items():
            lines.append(
                f"| {task} ({data} in the paper) | {_pct(ours['fixed_accuracy'])} / "
                f"{_num(ours[f'fixed_{loss}'])} | {_pct(ours['esapn_accuracy'])} / "
                f"{_num(ours[f'esapn_{loss}'])} | {row['fixed'][0]:.2f} % / {row['fixed'][1]} | "
                f"{row['esapn'][0]:.2f} % / {row['esapn'][1]} |"
            )
    lines += [
        "",
        "Accuracy / loss on the test part (binary: MSE of sigmoid(logit) against rating > 3.5; "
        "five classes: cross-entropy over floor(rating - 0.5)).",
        "",
        f"Memory at the end of the stream, sum of the rows' sizes over {d_max} per row:",
        "",
        "| run | users | items | paper users (ML-20M / ML-latest) | paper items |",
        "| --- | --- | --- | --- | --- |",
    ]
    paper = PAPER["memory_ratio_binary"]
    for key, memory in payload["memory"].items():
        if not key.endswith("_esapn"):
            continue
        lines.append(
            f"| {key} | {_pct(memory['user']['ratio'])} | {_pct(memory['item']['ratio'])} | "
            f"{_pct(paper['ml-20m']['users'])} / {_pct(paper['ml-latest']['users'])} | "
            f"{_pct(paper['ml-20m']['items'])} / {_pct(paper['ml-latest']['items'])} |"
        )
    lines += ["", "Parameters besides the rows' own (maps, normalisation, classifier, policies):"]
    lines += ["", "| run | " + " | ".join(_OVERHEAD) + " |", "| --- |" + " --- |" * len(_OVERHEAD)]
    for key, overhead in payload["overhead"].items():
        cells = " | ".join(str(overhead.get(k, "—")) for k in _OVERHEAD)
        lines.append(f"| {key} | {cells} |")
    if payload["pending"]:
        lines += ["", f"Pending runs: {', '.join(payload['pending'])}."]
    if figure:
        lines += ["", f"![mean size against interactions]({figure})"]
    return "\n".join(lines) + "\n"


_OVERHEAD = (
    "user_maps",
    "user_batch_norm",
    "item_maps",
    "item_batch_norm",
    "head",
    "user_policy",
    "item_policy",
)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    results = Path(common.RESULTS)
    work = Path(args.work_dir) if args.work_dir else results / "_work" / "esapn_stream" / args.name
    partial_path = results / f"{args.name}.partial.json"
    stream = load_rating_stream(
        args.dataset, test_fraction=args.test_fraction, max_interactions=args.max_interactions
    )
    config = stream_config(batch_size=args.batch_size, chunk_steps=args.chunk_steps, seed=args.seed)
    config = config.replace(jit_compile=bool(args.jit))
    if args.ladder:
        config = config.replace(ladder=tuple(int(x) for x in args.ladder.split(",") if x))
    runs: dict[str, Any] = {}
    if partial_path.exists():
        saved = _io.read_json(partial_path, format=_PARTIAL_FORMAT, what="partial results")
        if saved.get("stream") == repr(stream) and saved.get("config") == config.to_dict():
            runs = dict(saved["runs"])
        else:
            logger.warning("%s is for another stream or recipe; starting over.", partial_path)
    for task in args.tasks:
        for method in args.methods:
            key = f"{task}_{method}"
            if key in runs:
                logger.info("%s: finished earlier, kept from %s.", key, partial_path)
                continue
            t0 = time.perf_counter()
            run = run_esapn_stream(
                stream,
                task,
                method=method,
                config=config,
                hidden=args.hidden,
                directory=work / key,
            )
            entry = run.to_dict()
            entry["sizes"] = {side: sizes.tolist() for side, sizes in run.sizes.items()}
            entry["frequencies"] = {s: f.tolist() for s, f in run.frequencies.items()}
            runs[key] = entry
            _io.write_json(
                partial_path,
                {"stream": repr(stream), "config": config.to_dict(), "runs": runs},
                format=_PARTIAL_FORMAT,
                indent=None,
            )
            logger.info("%s done in %.0fs.", key, time.perf_counter() - t0)
            _write(args, stream, runs, config)
    _write(args, stream, runs, config)
    return 0


def _write(args: argparse.Namespace, stream: Any, runs: dict[str, Any], config: Any) -> None:
    """Writes the results files (and the sizes figure once an ESAPN run is done)."""
    payload = _payload(args, stream, runs, config)
    figure = None
    source = runs.get("binary_esapn") or runs.get("multiclass_esapn")
    if source is not None:
        name = f"{args.name}_sizes.png"
        task = "binary" if "binary_esapn" in runs else "multiclass"
        payload["size_curves"] = _sizes_figure(
            source,
            Path(common.RESULTS) / name,
            f"ESAPN ({task}) on {args.dataset}: mean size by interactions",
            int(config.ladder[-1]),
        )
        payload["figure"] = name
        figure = name
    common.write_results(args.name, payload, _markdown(payload, figure))


if __name__ == "__main__":
    sys.exit(main())
