"""PNG plots of a size search: sizes vs frequency, the search's progress, quality vs size.

Three figures users ask for after a search:

* `plot_sizes_vs_frequency`: each row's size against its training frequency, one panel per
  side (users, items), with the median size per frequency bin;
* `plot_search_history`: the score of every search step (fitness, reward or quality, from a
  run directory's ``history.jsonl``) and the best so far;
* `plot_quality_vs_params`: quality against usable parameters for several methods, with the
  Pareto front (the points no other point beats on both).

Each function writes a PNG and returns the plotted numbers, so a script can also print or
test them. They need matplotlib (``pip install "tfembsize[plots]"``); without it they raise
an ``ImportError`` saying so. Figures are drawn with the non-interactive Agg backend and
closed after saving.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tfembsize.plan import SizePlan

__all__ = [
    "pareto_front",
    "plan_sides",
    "plot_quality_vs_params",
    "plot_search_history",
    "plot_sizes_vs_frequency",
    "protocol_points",
]

logger = logging.getLogger(__name__)

_SCORES = ("fitness", "quality", "quality_ratio", "mean_reward")


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            'Plotting needs matplotlib: pip install "tfembsize[plots]" (or pip install matplotlib).'
        ) from err
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _out_path(path: str | os.PathLike) -> Path:
    if not isinstance(path, (str, os.PathLike)) or not str(path):
        raise TypeError(f"`path` must be a file path. Received: path={path!r}")
    out = Path(path)
    if out.suffix.lower() != ".png":
        raise ValueError(f"`path` must end in .png. Received: path={str(path)!r}")
    out.parent.mkdir(parents=True, exist_ok=True)
    return out


def _save(fig: Any, plt: Any, out: Path) -> None:
    try:
        fig.savefig(out, dpi=110, bbox_inches="tight")
    finally:
        plt.close(fig)
    logger.info("Wrote %s", out)


def _binned_medians(
    freq: np.ndarray, sizes: np.ndarray, bins: int, statistic: str = "median"
) -> tuple[list, list]:
    """Median (or mean) size per logarithmic frequency bin (empty bins are left out)."""
    edges = np.unique(np.geomspace(1.0, max(2.0, float(freq.max()) + 1.0), bins + 1))
    where = np.clip(np.digitize(freq + 1.0, edges) - 1, 0, len(edges) - 2)
    centres, medians = [], []
    for b in range(len(edges) - 1):
        chosen = sizes[where == b]
        if chosen.size:
            centres.append(float(np.sqrt(edges[b] * edges[b + 1]) - 1.0))
            medians.append(float(np.median(chosen) if statistic == "median" else chosen.mean()))
    return centres, medians


def plot_sizes_vs_frequency(
    sides: Mapping[str, tuple[Any, Any]],
    path: str | os.PathLike,
    *,
    d_max: int | None = None,
    bins: int = 20,
    title: str = "",
    statistic: str = "median",
    xlabel: str = "training frequency + 1",
) -> dict[str, dict[str, list[float]]]:
    """Each row's size against its training frequency, one panel per side.

    Args:
        sides: ``{"users": (sizes, frequencies), "items": (sizes, frequencies)}`` (any
            names, one panel each); sizes and frequencies are equal-length vectors.
        path: the PNG file to write.
        d_max: draws the full width as a line, if given.
        bins: logarithmic frequency bins for the median line.
        title: figure title.
        statistic: the line drawn per bin, ``"median"`` or ``"mean"`` size.
        xlabel: label of the frequency axis.

    Returns:
        ``{side: {"bin_frequency": [...], "median_size": [...]}}``: the lines (the key is
        ``"mean_size"`` with ``statistic="mean"``).

    Raises:
        ValueError: empty ``sides``, vectors of different lengths, negative frequencies or
            sizes below 1, ``bins`` not a positive integer, or an unknown ``statistic``.

    Example:
        >>> plot_sizes_vs_frequency(
        ...     {"users": (plan["user_embedding"], split.user_frequencies),
        ...      "items": (plan["item_embedding"], split.item_frequencies)},
        ...     "sizes.png", d_max=128)  # doctest: +SKIP
    """
    if not isinstance(sides, Mapping) or not sides:
        raise ValueError(
            "`sides` must map a side name to (sizes, frequencies). "
            f"Received: {type(sides).__name__} {sides!r:.80}"
        )
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise ValueError(f"`bins` must be a positive integer. Received: bins={bins!r}")
    if statistic not in ("median", "mean"):
        raise ValueError(
            f"`statistic` must be 'median' or 'mean'. Received: statistic={statistic!r}"
        )
    data = {}
    for name, pair in sides.items():
        if not isinstance(pair, tuple) or len(pair) != 2:
            raise ValueError(
                f"`sides[{name!r}]` must be a (sizes, frequencies) tuple. Received: {pair!r:.80}"
            )
        sizes = np.asarray(pair[0], np.float64).reshape(-1)
        freq = np.asarray(pair[1], np.float64).reshape(-1)
        if sizes.shape != freq.shape:
            raise ValueError(
                f"`sides[{name!r}]`: sizes and frequencies must have the same length. "
                f"Received {sizes.size} sizes and {freq.size} frequencies."
            )
        if sizes.size == 0:
            raise ValueError(f"`sides[{name!r}]` has no rows.")
        if sizes.min() < 1 or freq.min() < 0:
            raise ValueError(
                f"`sides[{name!r}]`: sizes must be >= 1 and frequencies >= 0. Received "
                f"min size {sizes.min():g}, min frequency {freq.min():g}."
            )
        data[str(name)] = (sizes, freq)
    out = _out_path(path)
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(data), figsize=(5.0 * len(data), 3.8), squeeze=False)
    result = {}
    for ax, (name, (sizes, freq)) in zip(axes[0], data.items(), strict=True):
        centres, medians = _binned_medians(freq, sizes, bins, statistic)
        ax.scatter(freq + 1.0, sizes, s=3, alpha=0.25, color="tab:blue", label="rows")
        ax.plot(np.asarray(centres) + 1.0, medians, color="tab:red", lw=2, label=statistic)
        if d_max is not None:
            ax.axhline(d_max, color="grey", ls="--", lw=1, label=f"d_max = {d_max}")
        ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("size")
        ax.set_title(f"{name}: mean size {sizes.mean():.1f}")
        ax.legend(loc="best", fontsize=8)
        result[name] = {"bin_frequency": centres, f"{statistic}_size": medians}
    if title:
        fig.suptitle(title)
    _save(fig, plt, out)
    return result


def plan_sides(
    plan: SizePlan, frequencies: Mapping[str, Any]
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{table: (sizes, frequencies)}`` for the tables of ``plan`` named in ``frequencies``.

    Raises:
        KeyError: a name in ``frequencies`` is not a table of the plan.
    """
    missing = [n for n in frequencies if n not in list(plan)]
    if missing:
        raise KeyError(f"The plan has no table named {missing}; its tables are {list(plan)}.")
    return {n: (plan[n], np.asarray(f)) for n, f in frequencies.items()}


def _history_rows(run_dir: Path) -> list[dict]:
    path = run_dir / "history.jsonl"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist: `run_dir` must be a search run directory "
            "(the folder tfembsize.search.run wrote)."
        )
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}, line {number}: not JSON ({err.msg}).") from err
    return rows


def _step_value(row: Mapping[str, Any], score: str) -> float | None:
    info = row.get("info") or {}
    feedback = row.get("feedback") or {}
    for source in (info, feedback, row):
        value = source.get(score)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    return None


def plot_search_history(
    run_dir: str | os.PathLike,
    path: str | os.PathLike,
    *,
    score: str = "quality",
    title: str = "",
) -> dict[str, list[float]]:
    """The score of every step of a search run and the best so far.

    Args:
        run_dir: a search run directory (it holds ``history.jsonl``).
        path: the PNG file to write.
        score: which number per step: ``"quality"`` (validation quality), ``"quality_ratio"``
            (against the full model), ``"fitness"`` or ``"mean_reward"`` (when the
            controller records them).
        title: figure title.

    Returns:
        ``{"step": [...], "score": [...], "best": [...], "usable_params": [...]}`` for the
        steps that recorded ``score``.

    Raises:
        FileNotFoundError: ``run_dir`` has no ``history.jsonl``.
        ValueError: ``score`` unknown, or no step recorded it.
    """
    if score not in _SCORES:
        raise ValueError(f"`score` must be one of {_SCORES}. Received: score={score!r}")
    rows = _history_rows(Path(run_dir))
    steps: list[float] = []
    values: list[float] = []
    params: list[float] = []
    for i, row in enumerate(rows):
        value = _step_value(row, score)
        if value is None or not np.isfinite(value):
            continue
        steps.append(float(row.get("iteration", i)))
        values.append(value)
        params.append(float(row.get("plan_params") or 0))
    if not values:
        raise ValueError(
            f"No step of {Path(run_dir) / 'history.jsonl'} records {score!r} "
            f"({len(rows)} steps); try another `score`."
        )
    best = list(np.maximum.accumulate(values))
    out = _out_path(path)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.0, 3.8))
    ax.plot(steps, values, ".", ms=4, alpha=0.6, label=score)
    ax.plot(steps, best, "-", color="tab:red", label="best so far")
    ax.set_xlabel("search step")
    ax.set_ylabel(score)
    ax.legend(loc="best", fontsize=8)
    if title:
        ax.set_title(title)
    _save(fig, plt, out)
    return {
        "step": steps,
        "score": values,
        "best": [float(b) for b in best],
        "usable_params": params,
    }


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats, sorted by parameters.

    A point is beaten by one with fewer-or-equal parameters and higher-or-equal quality, one
    of them strictly.

    Example:
        >>> pareto_front([(10, 0.5), (20, 0.4), (30, 0.7)])
        [0, 2]
    """
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], -np.inf
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def plot_quality_vs_params(
    results: Mapping[str, Sequence[tuple[float, float]]],
    path: str | os.PathLike,
    *,
    metric: str = "quality",
    full_params: float | None = None,
    title: str = "",
) -> dict[str, Any]:
    """Quality against usable parameters per method, with the Pareto front over all points.

    Args:
        results: ``{method: [(usable_params, quality), ...]}``.
        path: the PNG file to write.
        metric: the y-axis label (e.g. ``"test recall@20"``).
        full_params: the full tables' parameters; the x-axis then shows density.
        title: figure title.

    Returns:
        ``{"front": [(method, usable_params, quality), ...]}`` sorted by parameters.

    Raises:
        ValueError: no points, a non-finite value, or parameters not positive.
    """
    if not isinstance(results, Mapping) or not any(results.values()):
        raise ValueError("`results` must map a method to a non-empty list of (params, quality).")
    flat: list[tuple[str, float, float]] = []
    for method, points in results.items():
        for point in points:
            try:
                params, quality = (float(v) for v in point)
            except (TypeError, ValueError) as err:
                raise ValueError(
                    f"`results[{method!r}]` must hold (usable_params, quality) pairs. "
                    f"Received: {point!r}"
                ) from err
            if not (np.isfinite(params) and np.isfinite(quality)) or params <= 0:
                raise ValueError(
                    f"`results[{method!r}]`: parameters must be positive and values finite. "
                    f"Received: ({params!r}, {quality!r})"
                )
            flat.append((str(method), params, quality))
    scale = 1.0 if full_params is None else float(full_params)
    if not scale > 0:
        raise ValueError(f"`full_params` must be positive. Received: full_params={full_params!r}")
    front = [flat[i] for i in pareto_front([(p, q) for _, p, q in flat])]
    out = _out_path(path)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for method in results:
        xs = [p / scale for m, p, _ in flat if m == method]
        ys = [q for m, _, q in flat if m == method]
        ax.scatter(xs, ys, s=28, label=method)
    ax.plot([p / scale for _, p, _ in front], [q for _, _, q in front], "k--", lw=1, label="front")
    ax.set_xscale("log")
    ax.set_xlabel("density (usable / full parameters)" if full_params else "usable parameters")
    ax.set_ylabel(metric)
    ax.legend(loc="best", fontsize=8)
    if title:
        ax.set_title(title)
    _save(fig, plt, out)
    return {"front": front}


def protocol_points(
    results_json: str | os.PathLike, *, metric: str = "recall@20", phase: str = "test"
) -> dict[str, list[tuple[float, float]]]:
    """``{method: [(usable_params, value), ...]}`` from a protocol run's ``results.json``.

    Args:
        results_json: the ``results.json`` a protocol run wrote.
        metric: a metric its cells record (``"recall@20"``, ``"ndcg@20"``, ...).
        phase: ``"test"`` or ``"validation"``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a protocol results file, or no cell records ``metric``.
    """
    if phase not in ("test", "validation"):
        raise ValueError(f"`phase` must be 'test' or 'validation'. Received: phase={phase!r}")
    path = Path(results_json)
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not JSON ({err.msg}).") from err
    cells = data.get("cells") if isinstance(data, dict) else None
    if not isinstance(cells, list):
        raise ValueError(f"{path} is not a protocol results file (it has no list of cells).")
    points: dict[str, list[tuple[float, float]]] = {}
    for cell in cells:
        value = (cell.get(phase) or {}).get(metric)
        params = cell.get("usable_params")
        if value is None or not params:
            continue
        points.setdefault(str(cell["method"]), []).append((float(params), float(value)))
    if not points:
        raise ValueError(f"No cell of {path} records {phase} {metric!r}.")
    return points
