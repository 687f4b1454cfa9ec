"""``tfembsize export``: a compressed SavedModel of each retrained plan, with its size report.

Rebuilds the backbone with the plan, loads the retrained weights and writes
``RUN/export/<target>/`` with `tfembsize.export.save_compressed` (checked against the
in-memory model before it is moved into place), then prints the stored bytes against the
dense tables (`tfembsize.export.compression_report`), also kept as ``export/<target>.json``.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

from tfembsize import _io
from tfembsize.cli._common import HelpFormatter, add_verbosity, describe, log_file
from tfembsize.cli.retrain import selected_targets
from tfembsize.cli.run_dir import RunDir
from tfembsize.cli.session import Session

__all__ = ["add_parser", "run"]

logger = logging.getLogger(__name__)

_EPILOG = """\
example:
  tfembsize export runs/demo                  # every retrained target
  tfembsize export runs/demo --target c0.8 --overwrite

Load it with tf.saved_model.load("runs/demo/export/c0.8"); its serving_default signature
takes user_ids and k and returns the top-k item ids and scores.
"""


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Adds ``export`` to the subcommands."""
    p = subparsers.add_parser(
        "export",
        help="write a compressed SavedModel per retrained plan and print its size report",
        description=describe(__doc__),
        epilog=_EPILOG,
        formatter_class=HelpFormatter,
    )
    p.add_argument("run_dir", help="a run directory whose plans were retrained (tfembsize retrain)")
    p.add_argument(
        "--target",
        action="append",
        default=None,
        help="export only this target (e.g. c0.9; repeatable; default: every retrained target)",
    )
    p.add_argument(
        "--k",
        type=int,
        default=10,
        help="default number of items the export's check and metadata use (default: 10)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing export (default: off: an existing export is kept and only "
        "its report is printed)",
    )
    add_verbosity(p)
    return p


def run(args: argparse.Namespace, command: str, verbose: int) -> tuple[str, dict]:
    """Exports the selected targets; returns the text to print and a JSON summary."""
    run_dir = RunDir(args.run_dir)
    description = run_dir.read()
    keys = selected_targets(run_dir, args.target, folder="metrics")
    session = Session(run_dir, description["options"], verbose)
    parts, reports = [], {}
    with log_file(run_dir.log, verbose):
        logger.info("export: %s", command)
        for key in keys:
            report = _export_target(session, key, overwrite=args.overwrite, k=args.k)
            reports[key] = report.to_dict()
            parts.append(
                f"## {key}: {run_dir.export_path(key)}\n\n{report.to_markdown()}\n\n"
                f"{key}: tables {report.raw_bytes:,} bytes stored vs {report.dense_bytes:,} "
                f"dense ({report.ratio:.3f} of dense); the export takes "
                f"{report.total_bytes or 0:,} bytes on disk.\n"
            )
    return "\n".join(parts), {"run_dir": str(run_dir.path), "exports": reports}


def _export_target(session: Session, key: str, *, overwrite: bool, k: int) -> Any:
    from tfembsize.cli.retrain import sparsity_of
    from tfembsize.export import compression_report, save_compressed
    from tfembsize.plan import SizePlan
    from tfembsize.training.weights import assign_weights, load_weights

    run_dir = session.run
    target = run_dir.export_path(key)
    if target.exists() and not overwrite:
        logger.info("%s: already exported to %s (pass --overwrite to redo it).", key, target)
    else:
        plan = SizePlan.load(run_dir.plan_path(key))
        ctx = session.context(sparsity_of(key), run_dir.work / "export" / key)
        model = ctx.build_model()
        plan.apply(model)
        weights = run_dir.weights_path(key)
        assign_weights(model, load_weights(weights), source=repr(str(weights)))
        logger.info("%s: compressing and writing %s.", key, target)
        save_compressed(model, target, k=k, overwrite=overwrite)
    report = compression_report(target)
    _io.write_json(target.parent / f"{key}.json", report.to_dict(), format="tfembsize.ExportReport")
    return report
