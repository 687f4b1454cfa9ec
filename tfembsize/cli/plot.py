"""``tfembsize plot``: PNG figures of a run (`tfembsize.plots`; needs matplotlib).

* ``sizes_<target>.png``: each row's size against its training frequency, users and items
  (`tfembsize.plots.plot_sizes_vs_frequency`);
* ``history_<search>.png``: the score of every step of each search loop of the run and the
  best so far (`tfembsize.plots.plot_search_history`; methods that search, such as BET);
* ``quality_vs_params.png``: test Recall@20 against usable parameters for the retrained
  targets of this run and of the runs or protocol folders given with ``--compare``, with the
  Pareto front (`tfembsize.plots.plot_quality_vs_params`).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from tfembsize import _io
from tfembsize.cli._common import (
    EXIT_MISSING_EXTRA,
    EXIT_USAGE,
    CliError,
    HelpFormatter,
    add_verbosity,
    describe,
    log_file,
)
from tfembsize.cli.run_dir import RUN_FORMAT, RunDir
from tfembsize.cli.session import Session

__all__ = ["add_parser", "run"]

logger = logging.getLogger(__name__)

_EPILOG = """\
example:
  tfembsize plot runs/demo                                   # writes runs/demo/plots/*.png
  tfembsize plot runs/bet --compare runs/es --compare paper_protocol/ml-1m_mf

Needs matplotlib: pip install "tfembsize[plots]".
"""

_SCORES = ("quality", "quality_ratio", "fitness", "mean_reward")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Adds ``plot`` to the subcommands."""
    p = subparsers.add_parser(
        "plot",
        help="PNG figures: sizes vs frequency, search progress, quality vs parameters",
        description=describe(__doc__),
        epilog=_EPILOG,
        formatter_class=HelpFormatter,
    )
    p.add_argument("run_dir", help="a run directory written by tfembsize search")
    p.add_argument(
        "--out",
        default=None,
        help="folder for the PNG files (default: RUN_DIR/plots)",
    )
    p.add_argument(
        "--compare",
        action="append",
        default=[],
        help="another run directory or a python -m tfembsize.protocol output folder whose "
        "retrained results join the quality-vs-parameters figure (repeatable; default: none)",
    )
    p.add_argument(
        "--score",
        default="quality",
        choices=_SCORES,
        help="the per-step number of the search-progress figure: validation quality, its "
        "ratio to the full model, the controller's fitness or its mean reward (default: "
        "quality)",
    )
    add_verbosity(p)
    return p


def run(args: argparse.Namespace, command: str, verbose: int) -> tuple[str, dict]:
    """Writes the figures; returns the list of files and a JSON summary."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise CliError(
            EXIT_MISSING_EXTRA,
            'plot needs matplotlib, which is not installed: pip install "tfembsize[plots]".',
        ) from None
    run_dir = RunDir(args.run_dir)
    description = run_dir.read()
    out = Path(args.out) if args.out else run_dir.plots
    out.mkdir(parents=True, exist_ok=True)
    written: list[str] = []
    with log_file(run_dir.log, verbose):
        logger.info("plot: %s", command)
        session = Session(run_dir, description["options"], verbose)
        written += _sizes(session, out)
        written += _histories(run_dir, out, args.score)
        written += _quality(run_dir, out, args.compare)
    if not written:
        raise CliError(
            EXIT_USAGE, f"plot: {run_dir.path} has no plan yet: run tfembsize search first."
        )
    text = "".join(f"{p}\n" for p in written)
    return text, {"run_dir": str(run_dir.path), "files": written}


def _sizes(session: Session, out: Path) -> list[str]:
    from tfembsize.plan import SizePlan
    from tfembsize.plots import plot_sizes_vs_frequency

    run_dir = session.run
    keys = run_dir.keys("plans")
    if not keys:
        return []
    split = session.split
    frequencies = {
        split.num_users: ("users", split.user_frequencies),
        split.num_items: ("items", split.item_frequencies),
    }
    written = []
    for key in keys:
        plan = SizePlan.load(run_dir.plan_path(key))
        sides = {}
        for name in plan:
            side = frequencies.get(len(plan[name]))
            if side is not None:
                sides[f"{side[0]} ({name})"] = (plan[name], side[1])
        if not sides:
            logger.warning("%s: no table has as many rows as users or items; skipped.", key)
            continue
        path = out / f"sizes_{key}.png"
        plot_sizes_vs_frequency(
            sides, path, d_max=session.config.d_max, title=f"{session.method.name} {key}"
        )
        written.append(str(path))
    return written


def _histories(run_dir: RunDir, out: Path, score: str) -> list[str]:
    from tfembsize.plots import plot_search_history

    written = []
    for history in sorted(run_dir.work.rglob("history.jsonl")):
        folder = history.parent
        path = out / f"history_{folder.name}.png"
        try:
            plot_search_history(folder, path, score=score, title=folder.name)
        except ValueError as e:
            logger.warning("%s: no search-progress figure: %s", folder, e)
            continue
        written.append(str(path))
    return written


def _points(folder: Path) -> dict[str, list[tuple[float, float]]]:
    from tfembsize.plots import protocol_points

    run_json = folder / "run.json"
    if run_json.is_file():
        head = _io.read_json(run_json, what="run description")
        if head.get("format") == RUN_FORMAT:
            other = RunDir(folder)
            points: list[tuple[float, float]] = []
            for key in other.keys("metrics"):
                cell = _io.read_json(other.metrics_path(key), what="retrained metrics")
                points.append((float(cell["usable_params"]), float(cell["test"]["recall@20"])))
            name = f"{head['options']['method']} ({folder.name})"
            return {name: points} if points else {}
    if (folder / "results.json").is_file():
        try:
            return protocol_points(folder / "results.json")
        except ValueError as e:
            raise CliError(EXIT_USAGE, f"--compare {folder}: {e}") from e
    raise CliError(
        EXIT_USAGE,
        f"--compare {folder}: neither a run directory nor a protocol output folder.",
    )


def _quality(run_dir: RunDir, out: Path, compare: list[str]) -> list[str]:
    from tfembsize.plots import plot_quality_vs_params

    results: dict[str, list[tuple[float, float]]] = {}
    for folder in [run_dir.path, *map(Path, compare)]:
        for method, points in _points(folder).items():
            results.setdefault(method, []).extend(points)
    if not any(results.values()):
        logger.info("No retrained target yet: no quality-vs-parameters figure.")
        return []
    path = out / "quality_vs_params.png"
    plot_quality_vs_params(results, path, metric="test recall@20")
    return [str(path)]
