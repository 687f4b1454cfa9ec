"""Helpers shared by the benchmark scripts: timing, and the package's result writing.

Provenance (command, machine, date) and results files come from
`tfembsize.protocol.provenance`, imported on use so that a script can set environment
variables before TensorFlow is imported.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict[str, Any]:
    """A description of this machine and software stack (`tfembsize.protocol.provenance`)."""
    from tfembsize.protocol.provenance import machine as _machine

    return _machine()


def command() -> str:
    """The command line that ran this script, for the results file."""
    from tfembsize.protocol.provenance import command as _command

    return _command()


def now() -> str:
    """UTC timestamp."""
    from tfembsize.protocol.provenance import now as _now

    return _now()


def write_results(name: str, payload: dict[str, Any], markdown: str) -> tuple[Path, Path]:
    """Writes ``results/<name>.json`` and ``results/<name>.md`` with command, machine, date."""
    from tfembsize.protocol.provenance import write_results as _write_results

    return _write_results(RESULTS, name, payload, markdown)


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
    """Spearman rank correlation, None where undefined (`tfembsize.protocol.report.spearman`)."""
    from tfembsize.protocol.report import spearman as _spearman

    return _spearman(x, y, min_points=min_points)


def diagnostics_stem(dataset: str, backbone: str) -> Path:
    """Path stem of ``bet_diagnostics.py``'s results for one run (add ``.finetune.json`` ...)."""
    from tfembsize.protocol.bet_report import diagnostics_stem as _stem

    return _stem(RESULTS, dataset, backbone)


def median_ratio(times: dict[str, list[float]], num: str, den: str) -> float:
    """Median of per-round ratios ``num/den`` (paired, robust to drifting load)."""
    return statistics.median(a / b for a, b in zip(times[num], times[den], strict=True))


def protocol_context(
    dataset: str,
    backbone: str,
    work_dir: str,
    directory: str,
    *,
    sparsity: float | None = None,
    seed: int = 0,
    method: str = "",
    jit_compile: bool = False,
    **recipe_changes: Any,
) -> Any:
    """A `tfembsize.protocol.context.MethodContext` on the protocol's split and default recipe.

    Args:
        dataset: a named dataset (50/25/25 split, seed 42, as the protocol).
        backbone: a registered backbone.
        work_dir: the protocol run's work folder (its pretrained reference is reused).
        directory: the context's own working folder.
        sparsity: the target sparsity, if any.
        seed: the cell's seed.
        method: the method name (for `MethodContext.shared_directory`).
        jit_compile: compile training steps with XLA (does not change the recipe).
        **recipe_changes: fields of the recipe to change (None values are ignored).
    """
    from tfembsize.data import load_dataset
    from tfembsize.metrics import RankingEvaluator
    from tfembsize.models import train_bpr
    from tfembsize.protocol.backbones import default_train_config, get_backbone
    from tfembsize.protocol.context import MethodContext

    split = load_dataset(dataset).split(0.5, 0.25, 0.25, seed=42)
    changes = {k: v for k, v in recipe_changes.items() if v is not None}
    if jit_compile:
        changes["jit_compile"] = True
    recipe = default_train_config(backbone, split)
    recipe = recipe.replace(**changes) if changes else recipe
    builder = get_backbone(backbone)
    return MethodContext(
        dataset=dataset,
        backbone=backbone,
        split=split,
        evaluator=RankingEvaluator(split, ks=(5, 10, 20)),
        sparsity=sparsity,
        seed=seed,
        d_max=128,
        directory=directory,
        train_config=recipe,
        backbone_builder=lambda s: builder(split, 128, s),
        train_fn=train_bpr,
        method=method,
        root=work_dir,
    )
