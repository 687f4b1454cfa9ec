"""``tfembsize retrain``: each plan of a run retrained from scratch and tested.

The paper protocol's recipe (`tfembsize.protocol.cells.run_cell` with
`MethodContext.retrain`): a fresh backbone with the plan applied, trained on train with
validation early stopping and the best weights restored (`tfembsize.training.train_plan`),
the budget asserted on the plan and on the trained model, then test Recall/NDCG@{5,10,20}
with train and validation items excluded. Each target's metrics and weights are written as it
finishes, and a killed retraining resumes from its last validation checkpoint, so rerunning
the command skips finished targets and continues the others.
"""

from __future__ import annotations

import argparse
import logging
import shutil
from typing import Any

from tfembsize import _io
from tfembsize.cli._common import (
    EXIT_USAGE,
    CliError,
    HelpFormatter,
    add_verbosity,
    describe,
    log_file,
)
from tfembsize.cli.run_dir import RunDir
from tfembsize.cli.session import Session

__all__ = ["add_parser", "run"]

logger = logging.getLogger(__name__)

_EPILOG = """\
example:
  tfembsize retrain runs/demo                 # every target of the run
  tfembsize retrain runs/demo --target c0.8   # one target

Rerunning resumes: finished targets are skipped. Next: tfembsize export RUN_DIR.
"""

METRICS_FORMAT = "tfembsize.ProtocolCell"


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Adds ``retrain`` to the subcommands."""
    p = subparsers.add_parser(
        "retrain",
        help="retrain each plan from scratch, write test metrics and weights (resumable)",
        description=describe(__doc__),
        epilog=_EPILOG,
        formatter_class=HelpFormatter,
    )
    p.add_argument("run_dir", help="a run directory written by tfembsize search")
    p.add_argument(
        "--target",
        action="append",
        default=None,
        help="retrain only this target (c<sparsity> as in plans/, e.g. c0.9; repeatable; "
        "default: every plan of the run)",
    )
    add_verbosity(p)
    return p


def selected_targets(run_dir: RunDir, wanted: list[str] | None, folder: str = "plans") -> list:
    """The target keys of ``folder`` to work on (all, or those named with ``--target``)."""
    keys = run_dir.keys(folder)
    if not keys:
        raise CliError(
            EXIT_USAGE,
            f"{run_dir.path} has no {folder}/ yet: run the previous step "
            f"({'tfembsize search' if folder == 'plans' else 'tfembsize retrain'}) first.",
        )
    if wanted:
        missing = [k for k in wanted if k not in keys]
        if missing:
            raise CliError(
                EXIT_USAGE,
                f"--target {', '.join(missing)}: not in {run_dir.path / folder} (there: "
                f"{', '.join(keys)}).",
            )
        return [k for k in keys if k in wanted]
    return keys


def sparsity_of(key: str) -> float | None:
    """Inverse of `tfembsize.cli.run_dir.target_key`."""
    return None if key == "full" else float(key[1:])


def run(args: argparse.Namespace, command: str, verbose: int) -> tuple[str, dict]:
    """Retrains the selected targets; returns the text to print and a JSON summary."""
    run_dir = RunDir(args.run_dir)
    description = run_dir.read()
    keys = selected_targets(run_dir, args.target)
    session = Session(run_dir, description["options"], verbose)
    rows = []
    with log_file(run_dir.log, verbose):
        logger.info("retrain: %s", command)
        for key in keys:
            rows.append(_retrain_target(session, key))
    return _summary(run_dir, rows), {"run_dir": str(run_dir.path), "targets": rows}


def _retrain_target(session: Session, key: str) -> dict[str, Any]:
    from tfembsize.plan import SizePlan
    from tfembsize.protocol._json import plain
    from tfembsize.protocol.cells import CellResult, run_cell
    from tfembsize.protocol.context import MethodOutput
    from tfembsize.protocol.registry import Method
    from tfembsize.training.weights import get_weights, save_weights

    run_dir = session.run
    metrics_path = run_dir.metrics_path(key)
    if metrics_path.exists():
        logger.info("%s: already retrained (%s); skipped.", key, metrics_path)
        cell = CellResult.from_dict(_io.read_json(metrics_path, format=METRICS_FORMAT))
        return _row(key, cell)
    plan = SizePlan.load(run_dir.plan_path(key))
    sparsity = sparsity_of(key)
    ctx = session.context(sparsity, run_dir.work / "retrain" / key)
    kept: dict[str, Any] = {}

    def retrained(context: Any) -> MethodOutput:
        kept["retrained"] = context.retrain(plan)
        return MethodOutput(plan=plan, retrained=kept["retrained"])

    method = Method(
        session.method.name, retrained, budgeted=sparsity is not None, description="retrain"
    )
    logger.info("%s: retraining from scratch (%d usable params).", key, plan.total_params())
    cell = run_cell(method, ctx)
    search = run_dir.search_path(key)
    if search.exists():
        record = _io.read_json(search, what="search record")
        cell = CellResult(
            **{
                **{k: v for k, v in cell.to_dict().items() if k not in ("format", "version")},
                "method_time": float(record.get("method_time", 0.0)),
                "info": plain({"search": record.get("info", {})}),
            }
        )
    save_weights(run_dir.weights_path(key), get_weights(kept["retrained"].model))
    payload = plain(cell.to_dict())
    _io.write_json(metrics_path, payload, format=METRICS_FORMAT, version=payload["version"])
    shutil.rmtree(run_dir.work / "retrain" / key / "training", ignore_errors=True)
    logger.info(
        "%s: test recall@20 %.4f ndcg@20 %.4f, best step %s, %.1fs.",
        key,
        cell.test.get("recall@20", float("nan")),
        cell.test.get("ndcg@20", float("nan")),
        cell.best_step,
        cell.retrain_time,
    )
    return _row(key, cell)


def _row(key: str, cell: Any) -> dict[str, Any]:
    return {
        "target": key,
        "method": cell.method,
        "sparsity": cell.sparsity,
        "usable_params": cell.usable_params,
        "budget": cell.budget,
        "test": dict(cell.test),
        "validation": dict(cell.validation),
        "best_step": cell.best_step,
        "retrain_time": cell.retrain_time,
    }


def _summary(run_dir: RunDir, rows: list[dict]) -> str:
    lines = [
        "| target | usable params | budget | test R@20 | test N@20 | best step | retrain s |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        budget = "—" if r["budget"] is None else f"{r['budget']:,}"
        lines.append(
            f"| {r['target']} | {r['usable_params']:,} | {budget} | "
            f"{r['test'].get('recall@20', float('nan')):.4f} | "
            f"{r['test'].get('ndcg@20', float('nan')):.4f} | {r['best_step']} | "
            f"{r['retrain_time']:.1f} |"
        )
    lines += ["", f"Next: tfembsize export {run_dir.path}"]
    return "\n".join(lines) + "\n"
