"""``tfembsize search``: a registered method's size plan for each target sparsity.

The plans are produced by the paper protocol's method functions (`tfembsize.protocol`
registry: ``es``, ``mr``, ``frequency``, ``bet``, ``ciess``, ``full``, ...) with the same
`MethodContext` the protocol builds, asserted within the budget
``floor((1 - c) * d_max * N)``, and written to ``RUN/plans/``. A search method's loop works
in ``RUN/work/`` and resumes there, so rerunning the same command continues where it
stopped; targets whose plan is written are skipped.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from typing import Any

from tfembsize import _io
from tfembsize._version import __version__
from tfembsize.cli._common import (
    EXIT_USAGE,
    CliError,
    HelpFormatter,
    add_verbosity,
    describe,
    log_file,
)
from tfembsize.cli.run_dir import RunDir, target_key
from tfembsize.cli.session import BACKBONES, DATASETS, Session

__all__ = ["add_parser", "run", "search_options"]

logger = logging.getLogger(__name__)

_EPILOG = """\
example (seconds on a laptop):
  tfembsize search --dataset synthetic --backbone mf --method es --sparsity 0.5,0.8 \\
      --d-max 8 --max-steps 300 --run-dir runs/demo
  tfembsize search --dataset ml-1m --method bet --sparsity 0.9 --bet-search-iterations 20 \\
      --run-dir runs/ml-1m-bet          # Ctrl-C, then the same command resumes

Rerunning the same command on the same --run-dir resumes; other options there are refused.
Next: tfembsize retrain RUN_DIR.
"""

# Methods whose output is not a per-row size plan (masks, or a stream-trained model).
_NOT_PLANS = {
    "pep": "PEP prunes individual weights (masks, not per-row sizes)",
    "esapn": "ESAPN trains its sizes during one streamed training (no plan to retrain)",
    "esapn-cap": "ESAPN trains its sizes during one streamed training (no plan to retrain)",
}


def _sparsities(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be comma-separated numbers in (0, 1), e.g. 0.8,0.9; received {text!r}"
        ) from None
    if not values or not all(0.0 < c < 1.0 for c in values):
        raise argparse.ArgumentTypeError(
            f"every sparsity must be in (0, 1) (0.9 keeps 10 % of d_max * N); received {text!r}"
        )
    return values


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer; received {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer; received {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive number; received {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number; received {text!r}")
    return value


def add_parser(subparsers: Any) -> tuple[argparse.ArgumentParser, dict]:
    """Adds ``search`` to the subcommands; returns the parser and its method option groups."""
    from tfembsize.protocol.cli import _add_method_options

    p = subparsers.add_parser(
        "search",
        help="find a size plan per target sparsity (resumable)",
        description=describe(__doc__),
        epilog=_EPILOG,
        formatter_class=HelpFormatter,
    )
    p.add_argument(
        "--run-dir",
        required=False,
        default=None,
        help="the run directory to create or resume (required unless --list-methods)",
    )
    p.add_argument(
        "--list-methods",
        action="store_true",
        help="list the registered methods with one line each and exit (default: off)",
    )
    data = p.add_argument_group("data and model")
    data.add_argument(
        "--dataset",
        default=None,
        choices=DATASETS,
        help="a built-in data set; ml-100k, ml-1m and gowalla are read from the folder given "
        "by --data-dir or $TFEMBSIZE_DATA_DIR (default: synthetic, generated in memory, "
        "unless --data-dir is a LightGCN-format folder)",
    )
    data.add_argument(
        "--data-dir",
        default=None,
        help="a LightGCN-format folder (train.txt and test.txt, one 'user item item ...' line "
        "per user) to use instead of --dataset, or the folder holding ml-100k/, ml-1m/, "
        "gowalla/ (default: none)",
    )
    data.add_argument(
        "--backbone", default="mf", choices=BACKBONES, help="the recommender model (default: mf)"
    )
    data.add_argument(
        "--d-max", type=_positive, default=128, help="full embedding width (default: 128)"
    )
    search = p.add_argument_group("search")
    search.add_argument(
        "--method",
        default="es",
        help="a registered method name (see --list-methods; default: es, the uniform size "
        "floor((1-c) d_max))",
    )
    search.add_argument(
        "--sparsity",
        type=_sparsities,
        default=(0.8, 0.9, 0.95),
        help="comma-separated target sparsities c; the budget is floor((1-c) d_max N) usable "
        "parameters (default: 0.8,0.9,0.95)",
    )
    search.add_argument(
        "--seed", type=int, default=0, help="seed of the model, sampling and method (default: 0)"
    )
    recipe = p.add_argument_group("training recipe (search steps and retraining)")
    recipe.add_argument(
        "--preset",
        default=None,
        help="a tfembsize.models.PRESETS recipe name (default: the backbone's recipe)",
    )
    recipe.add_argument(
        "--lr", type=_positive_float, default=None, help="learning rate (default: the recipe's)"
    )
    recipe.add_argument(
        "--batch-size", type=_positive, default=None, help="batch size (default: the recipe's)"
    )
    recipe.add_argument(
        "--max-steps",
        type=_positive,
        default=None,
        help="cap on optimiser steps per training (default: the recipe's)",
    )
    recipe.add_argument(
        "--eval-every",
        type=_positive,
        default=None,
        help="steps between validation checks (default: the recipe's)",
    )
    recipe.add_argument(
        "--patience",
        type=_positive,
        default=None,
        help="validation checks without improvement before early stopping (default: the recipe's)",
    )
    recipe.add_argument(
        "--monitor",
        default=None,
        choices=("recall@20", "ndcg@20", "quality"),
        help="validation metric of early stopping and selection (default: recall@20)",
    )
    recipe.add_argument(
        "--jit-compile",
        action="store_true",
        help="compile each training step with XLA (default: off)",
    )
    add_verbosity(p)
    groups = _add_method_options(p)
    return p, groups


def search_options(args: argparse.Namespace) -> dict[str, Any]:
    """The options that define a run (what a rerun must repeat to resume), JSON-ready."""
    data_dir = os.path.abspath(args.data_dir) if args.data_dir else None
    return {
        "dataset": args.dataset,
        "data_dir": data_dir,
        "backbone": args.backbone,
        "d_max": args.d_max,
        "method": args.method.strip().lower(),
        "sparsity": [float(c) for c in args.sparsity],
        "seed": args.seed,
        "preset": args.preset,
        "lr": args.lr,
        "batch_size": args.batch_size,
        "max_steps": args.max_steps,
        "eval_every": args.eval_every,
        "patience": args.patience,
        "monitor": args.monitor,
        "jit_compile": bool(args.jit_compile),
        "method_settings": {k: dict(v) for k, v in sorted(args.method_settings.items())},
    }


def list_methods() -> str:
    """One line per registered method."""
    from tfembsize.protocol.registry import available_methods, get_method

    lines = []
    for name in available_methods():
        m = get_method(name)
        note = " [not a size plan: use python -m tfembsize.protocol]" if name in _NOT_PLANS else ""
        kind = "budgeted" if m.budgeted else "no budget"
        lines.append(f"{name:15s} {kind:10s} {m.description}{note}")
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace, command: str, verbose: int) -> tuple[str, dict]:
    """Runs (or resumes) the search; returns the text to print and a JSON summary."""
    from tfembsize.protocol.registry import get_method

    if args.list_methods:
        return list_methods(), {}
    if not args.run_dir:
        raise CliError(EXIT_USAGE, "search: --run-dir is required (the folder to write to).")
    options = search_options(args)
    try:
        method = get_method(options["method"])
    except KeyError as e:
        raise CliError(EXIT_USAGE, f"--method: {e.args[0]}") from e
    if method.name in _NOT_PLANS:
        raise CliError(
            EXIT_USAGE,
            f"--method {method.name}: {_NOT_PLANS[method.name]}; run it with "
            f"python -m tfembsize.protocol --methods {method.name} instead.",
        )
    if not method.budgeted and method.name != "full":
        raise CliError(EXIT_USAGE, f"--method {method.name}: not a budgeted size-plan method.")
    used = {k: v for k, v in options["method_settings"].items() if k == method.group}
    unused = sorted(set(options["method_settings"]) - set(used))
    if unused:
        raise CliError(
            EXIT_USAGE,
            f"options of {', '.join(unused)} given, but --method {method.name} does not use "
            "them; drop them.",
        )
    run_dir = RunDir(args.run_dir)
    session = Session(run_dir, options, verbose)  # validates before anything is written
    description = {"command": command, "tfembsize_version": __version__, "options": options}
    run_dir.create_or_check(description)
    with log_file(run_dir.log, verbose):
        logger.info("search: %s", command)
        rows = [_search_target(session, c) for c in session.targets]
    return _summary(run_dir, rows), {"run_dir": str(run_dir.path), "targets": rows}


def _search_target(session: Session, sparsity: float | None) -> dict[str, Any]:
    """The plan of one target (read back when already written)."""
    from tfembsize.budget import Budget
    from tfembsize.plan import SizePlan
    from tfembsize.protocol._json import plain
    from tfembsize.protocol.cells import cell_key

    run_dir = session.run
    key = target_key(sparsity)
    path = run_dir.plan_path(key)
    if path.exists():
        plan = SizePlan.load(path)
        logger.info("%s: plan already in %s; skipped.", key, path)
        info = _io.read_json(run_dir.search_path(key), what="search record")
    else:
        ctx = session.context(sparsity, run_dir.work / cell_key(session.method.name, sparsity, 0))
        logger.info("%s: running method %s.", key, session.method.name)
        t0 = time.perf_counter()
        out = session.method.fn(ctx)
        elapsed = time.perf_counter() - t0
        plan = out.plan
        if plan is None and out.build_model is None and out.retrained is None:
            plan = SizePlan.from_model(ctx.build_model())  # the full-size model
        if plan is None:
            raise CliError(
                EXIT_USAGE,
                f"--method {session.method.name} returned no size plan; run it with "
                "python -m tfembsize.protocol instead.",
            )
        if sparsity is not None:
            plan.check(Budget(sparsity=sparsity, d_max=session.config.d_max))  # asserted
        info = {
            "format": "tfembsize.CliSearch",
            "method": session.method.name,
            "sparsity": sparsity,
            "seed": session.seed,
            "method_time": elapsed,
            "info": plain(dict(out.info)),
        }
        _io.write_json(run_dir.search_path(key), info)
        plan.save(path)
        logger.info("%s: plan written to %s (%.1fs).", key, path, elapsed)
    d_max = session.config.d_max
    limit = None
    if sparsity is not None:
        limit = Budget(sparsity=sparsity, d_max=d_max).max_params_for(plan.num_rows())
    return {
        "target": key,
        "sparsity": sparsity,
        "usable_params": int(plan.total_params()),
        "budget": limit,
        "full_params": int(d_max * plan.num_rows()),
        "plan": str(path),
        "method_time": float(info.get("method_time", 0.0)),
    }


def _summary(run_dir: RunDir, rows: list[dict]) -> str:
    lines = [
        "| target | usable params | budget | density | plan |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        budget = "—" if r["budget"] is None else f"{r['budget']:,}"
        density = r["usable_params"] / max(r["full_params"], 1)
        rel = os.path.relpath(r["plan"], run_dir.path)
        lines.append(
            f"| {r['target']} | {r['usable_params']:,} | {budget} | {density:.3f} | {rel} |"
        )
    lines.append("")
    lines.append(f"Run directory: {run_dir.path}")
    lines.append(f"Next: tfembsize retrain {run_dir.path}")
    return "\n".join(lines) + "\n"
