"""Helpers shared by the benchmark scripts: machine description and result writing."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict[str, Any]:
    """A description of this machine and software stack."""
    import tensorflow as tf

    from tfembsize._keras import keras_version

    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem_gib = None
    try:
        with open("/proc/meminfo") as f:
            mem_gib = round(int(f.readline().split()[1]) / 2**20, 1)
    except OSError:
        pass
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
        ).stdout.strip()
    except OSError:
        commit = ""
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": mem_gib,
        "gpu": bool(tf.config.list_physical_devices("GPU")),
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras_version(),
        "platform": platform.platform(),
        "git_commit": commit,
        # Other jobs on the machine when the results were written (1, 5, 15 min averages):
        # ratios measured side by side stay meaningful, absolute times do not.
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def command() -> str:
    """The command line that ran this script, for the results file."""
    env = " ".join(f"{k}={os.environ[k]}" for k in ("TF_USE_LEGACY_KERAS",) if os.environ.get(k))
    cmd = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    return f"{env} {cmd}".strip()


def now() -> str:
    """UTC timestamp."""
    return _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def write_results(name: str, payload: dict[str, Any], markdown: str) -> tuple[Path, Path]:
    """Writes ``results/<name>.json`` and ``results/<name>.md`` with command, machine, date."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    meta = {"command": command(), "date": now(), "machine": machine()}
    full = {**meta, **payload}
    jpath = RESULTS / f"{name}.json"
    tmp = jpath.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(full, indent=2, sort_keys=False, default=_jsonable) + "\n")
    os.replace(tmp, jpath)
    m = meta["machine"]
    header = (
        f"Command: `{meta['command']}`  \n"
        f"Date: {meta['date']}  \n"
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, GPU: {m['gpu']}; "
        f"Python {m['python']}, TensorFlow {m['tensorflow']}, Keras {m['keras']}, "
        f"commit {m['git_commit']}; load average {m['load_average']}\n\n"
    )
    mpath = RESULTS / f"{name}.md"
    mpath.write_text(markdown.rstrip() + "\n\n" + header)
    return jpath, mpath


def _jsonable(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def alternate_clocks(
    fns: dict[str, Callable[[], Any]], repeats: int, warmup: int = 2
) -> dict[str, dict[str, list[float]]]:
    """Like `alternate`, recording wall time and process CPU time (all threads) of each call.

    On a shared machine the wall clock also counts time the process was descheduled; CPU time
    counts only the work done (including any thread-pool spinning), so its ratios are steadier.

    Returns:
        ``{"wall": {name: [seconds, ...]}, "cpu": {name: [seconds, ...]}}``.
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    wall: dict[str, list[float]] = {k: [] for k in fns}
    cpu: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            c0, t0 = time.process_time(), time.perf_counter()
            fn()
            wall[k].append(time.perf_counter() - t0)
            cpu[k].append(time.process_time() - c0)
    return {"wall": wall, "cpu": cpu}


def alternate(
    fns: dict[str, Callable[[], Any]], repeats: int, warmup: int = 2
) -> dict[str, list[float]]:
    """Times each function in turn (A B A B ...) so machine noise hits all of them alike.

    Returns the list of wall times in seconds per name.
    """
    return alternate_clocks(fns, repeats, warmup)["wall"]


def spearman(x: Any, y: Any, min_points: int = 3) -> float | None:
    """Spearman rank correlation of ``x`` and ``y``, or None where it is undefined.

    Undefined means fewer than ``min_points`` pairs or a constant side (scipy would warn and
    return nan there).
    """
    import numpy as np
    from scipy.stats import spearmanr

    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) < min_points or np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    return float(spearmanr(x, y).statistic)


def diagnostics_stem(dataset: str, backbone: str) -> Path:
    """Path stem of ``bet_diagnostics.py``'s results for one run (add ``.finetune.json`` ...)."""
    return RESULTS / f"bet_diagnostics_{dataset}_{backbone}"


def median_ratio(times: dict[str, list[float]], num: str, den: str) -> float:
    """Median of per-round ratios ``num/den`` (paired, robust to drifting load)."""
    return statistics.median(a / b for a, b in zip(times[num], times[den], strict=True))
