r"""The paper protocol's command line: ``python -m tfembsize.protocol``.

For each method and sparsity: produce a plan, assert the budget B(c) = floor((1-c) d_max N),
retrain from scratch on train with validation early stopping (`tfembsize.models.train_bpr`),
and report test Recall/NDCG@{5,20}, usable params, best step and wall time, beside the papers'
numbers for the same cells (ML-1M: CIESS paper; Gowalla: BET paper) and the popularity
baseline. Mean ± std over seeds.

Resumable: every (method, sparsity, seed) cell is written to OUT/cells/ when it finishes and
skipped when the command is run again; OUT/results.json and OUT/results.md are rewritten
after every cell. Cells run seed by seed, so the first seed fills the whole table first.

Usage:
    python -m tfembsize.protocol --dataset ml-1m --backbone mf \
        --methods full,es,mr --sparsity 0.8,0.9,0.95 --seeds 3 --out runs/ml-1m_mf
    python -m tfembsize.protocol --data-dir /path/to/lightgcn_format_dir ...
    python -m tfembsize.protocol --dataset synthetic --backbone mf --methods full,es \
        --d-max 32 --max-steps 200 --eval-every 50        # a smoke test in seconds
    python -m tfembsize.protocol --dataset ml-1m --backbone mf --methods bet,es,mr \
        --bet-iterations 50 --bet-candidates 100 --bet-epochs 10 \
        --reuse-cells runs/ml-1m_mf --out runs/ml-1m_mf_bet

Method options are generated from each method's registered settings dataclass:
``--<group>-<field>`` per field (e.g. ``--bet-top-k``, ``--pep-max-steps``), validated by the
dataclass and recorded in the results (``config.method_options``) for the methods of the
run that use them. BET (``bet``, and the ablations ``bet-random``, ``bet-sizes-only``, one
option group) runs one search per seed for all sparsities (in
OUT/work/<method>__shared__seed<s>, resumable), then retrains the top K actions of each
sparsity and reports the one best on validation. ``--reuse-cells`` copies finished cells of
another run with the same data and recipe instead of computing them again.

Methods are looked up in the registry (``--list-methods``); a method registered before
`main` runs (``register_method(...)``) gets its options like the built-in ones.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["parse_args", "build_config", "main", "DEFAULT_RESULTS_ROOT", "PROGRAM"]

DEFAULT_RESULTS_ROOT = Path("paper_protocol")
"""Default parent of ``--out`` (``<root>/<dataset>_<backbone>``), relative to the current
folder."""

PROGRAM = "python -m tfembsize.protocol"
"""How the command is written in the results."""

_DEST = "method_setting:"  # argparse dest prefix of the generated options


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(x) for x in text.split(",") if x.strip())


def _names(text: str) -> tuple[str, ...]:
    return tuple(x.strip().lower() for x in text.split(",") if x.strip())


def _is_lightgcn_dir(path: Path) -> bool:
    return any((path / f).exists() for f in ("train.txt", "train.txt.gz"))


def _add_method_options(p: argparse.ArgumentParser) -> dict[str, tuple[type, list]]:
    """One option per settings field of every registered option group."""
    from tfembsize.protocol.registry import option_groups
    from tfembsize.protocol.settings import parse_bool, setting_options

    groups = {}
    for group, (settings, methods) in option_groups().items():
        options = setting_options(group, settings)
        section = p.add_argument_group(
            f"{group} options ({settings.__name__}; methods: {', '.join(methods)})"
        )
        for opt in options:
            # A yes/no option given alone means yes (``--ciess-fill-budget``).
            flag_alone: dict[str, Any] = (
                {"nargs": "?", "const": True} if opt.parse is parse_bool else {}
            )
            try:
                section.add_argument(
                    *opt.flags,
                    dest=f"{_DEST}{group}:{opt.field}",
                    type=opt.parse,
                    default=None,
                    metavar=opt.metavar,
                    help=f"{opt.help} [default: {opt.default!r}]",
                    **flag_alone,
                )
            except argparse.ArgumentError as e:
                raise ValueError(
                    f"The settings of method(s) {', '.join(methods)} generate {opt.flags}, which "
                    f"clash with another option: {e}"
                ) from e
        groups[group] = (settings, options)
    return groups


def _validate_method_options(
    p: argparse.ArgumentParser, args: argparse.Namespace, groups: dict[str, tuple[type, list]]
) -> None:
    """Moves the generated options into ``args.method_settings``, validated by the dataclass."""
    given: dict[str, dict[str, Any]] = {}
    for group, (settings, options) in groups.items():
        values = {}
        for opt in options:
            value = getattr(args, f"{_DEST}{group}:{opt.field}")
            delattr(args, f"{_DEST}{group}:{opt.field}")
            if value is None:
                continue
            try:
                settings(**{opt.field: value})
            except (TypeError, ValueError) as e:
                p.error(f"argument {'/'.join(opt.flags)}: invalid value {value!r}: {e}")
            values[opt.field] = value
        if values:
            try:
                settings(**values)
            except (TypeError, ValueError) as e:
                flags = ", ".join(o.flags[0] for o in options if o.field in values)
                p.error(f"arguments {flags}: invalid combination {values}: {e}")
            given[group] = values
    args.method_settings = given


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parses the command line (the method options of every registered method included).

    Returns:
        The namespace; ``method_settings`` maps each option group given on the command line to
        its validated ``{field: value}``.
    """
    p = argparse.ArgumentParser(
        prog=None,
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawTextHelpFormatter,
    )
    p.add_argument(
        "--dataset",
        default=None,
        help="gowalla, ml-1m, ml-100k, synthetic, or a directory (default: synthetic, or the "
        "--data-dir folder if it is in LightGCN format)",
    )
    p.add_argument(
        "--data-dir",
        default=None,
        help="a LightGCN-format folder (train.txt/test.txt), or the folder holding gowalla/, "
        "ml-1m/, ml-100k/ (default: $TFEMBSIZE_DATA_DIR or ../shared/data)",
    )
    p.add_argument("--backbone", default="mf", help="mf, ncf, ngcf or lightgcn")
    p.add_argument("--methods", default="full,es,mr", help="comma-separated method names")
    p.add_argument("--sparsity", default="0.8,0.9,0.95", help="comma-separated sparsities")
    p.add_argument("--seeds", type=int, default=1, help="number of seeds (0..N-1)")
    p.add_argument("--seed-list", default=None, help="explicit comma-separated seeds")
    p.add_argument(
        "--out",
        default=None,
        help="output directory (default: <results root>/<dataset>_<backbone>)",
    )
    p.add_argument(
        "--work-dir",
        default=None,
        help="working directories (resumable searches, reference models; default <out>/work)",
    )
    p.add_argument("--d-max", type=int, default=128)
    p.add_argument("--preset", default=None, help="a tfembsize.models.PRESETS recipe name")
    p.add_argument("--lr", type=float, default=None, help="learning rate (overrides the recipe)")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--eval-every", type=int, default=None)
    p.add_argument("--patience", type=int, default=None)
    p.add_argument("--monitor", default=None, help="recall@20 (default), ndcg@20 or quality")
    p.add_argument(
        "--reuse-cells",
        default=None,
        help="comma-separated output directories of other runs whose finished cells (same "
        "data, backbone, d_max and recipe) are copied instead of rerun",
    )
    p.add_argument("--max-cells", type=int, default=None, help="stop after N new cells")
    p.add_argument(
        "--jit-compile",
        action="store_true",
        help="compile each training step with XLA (faster on CPU; same recipe, so cells run "
        "with and without it are interchangeable)",
    )
    p.add_argument("--list-methods", action="store_true")
    p.add_argument("-v", "--verbose", type=int, default=1)
    groups = _add_method_options(p)
    args = p.parse_args(None if argv is None else list(argv))
    _validate_method_options(p, args, groups)
    return args


def build_config(args: argparse.Namespace, results_root: str | os.PathLike | None = None) -> Any:
    """The `ProtocolConfig` of the command line.

    Args:
        args: from `parse_args`.
        results_root: parent of the default ``--out`` (default `DEFAULT_RESULTS_ROOT`).

    Raises:
        KeyError: ``--methods`` names an unregistered method.
    """
    from tfembsize.models import PRESETS, TrainConfig
    from tfembsize.protocol.config import ProtocolConfig
    from tfembsize.protocol.registry import get_method

    dataset = args.dataset
    data_dir = args.data_dir
    if data_dir is not None and _is_lightgcn_dir(Path(data_dir)):
        if dataset is None or dataset.lower() in ("gowalla", "ml-1m", "ml-100k"):
            label = (dataset or Path(data_dir).resolve().name).lower()
            dataset, data_dir = os.fspath(data_dir), None
        else:
            label = dataset.lower()
    else:
        dataset = dataset or "synthetic"
        label = Path(dataset).name.lower() if os.path.isdir(dataset) else dataset.lower()
    if args.preset:
        recipe = TrainConfig.preset(args.preset)
    else:
        recipe = PRESETS.get(args.backbone, TrainConfig())
    changes = {
        k: v
        for k, v in {
            "learning_rate": args.lr,
            "batch_size": args.batch_size,
            "max_steps": args.max_steps,
            "eval_every": args.eval_every,
            "patience": args.patience,
            "monitor": args.monitor,
        }.items()
        if v is not None
    }
    recipe = recipe.replace(**changes)
    if getattr(args, "jit_compile", False):
        recipe = recipe.replace(jit_compile=True)
    seeds = (
        tuple(int(s) for s in args.seed_list.split(","))
        if args.seed_list
        else tuple(range(args.seeds))
    )
    root = Path(DEFAULT_RESULTS_ROOT if results_root is None else results_root)
    out = args.out or str(root / f"{label}_{args.backbone}")
    methods = _names(args.methods)
    given = getattr(args, "method_settings", {})
    method_options = {}
    for name in methods:
        method = get_method(name)
        if method.settings is not None and given.get(method.group):
            method_options[name] = dict(given[method.group])
    return ProtocolConfig(
        dataset=dataset,
        backbone=args.backbone,
        methods=methods,
        sparsities=_floats(args.sparsity),
        seeds=seeds,
        out=out,
        d_max=args.d_max,
        train_config=recipe,
        data_dir=data_dir,
        label=label,
        method_options=method_options,
        work_dir=args.work_dir,
    )


def main(
    argv: Sequence[str] | None = None,
    *,
    program: str = PROGRAM,
    results_root: str | os.PathLike | None = None,
    program_as_typed: bool = False,
) -> int:
    """Runs the protocol from the command line; returns the exit status.

    Args:
        argv: the arguments (default ``sys.argv[1:]``).
        program: how the program is written in the results' ``command``.
        results_root: parent of the default ``--out`` (default `DEFAULT_RESULTS_ROOT`).
        program_as_typed: with ``argv`` None, record ``python`` and ``sys.argv`` as typed
            instead of ``program`` (what a script wrapping this function wants).
    """
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(message)s",
    )
    from tfembsize.protocol.provenance import command, machine, now, portable_args
    from tfembsize.protocol.registry import available_methods, get_method
    from tfembsize.protocol.runner import run_protocol

    out = sys.stdout
    if args.list_methods:
        for name in available_methods():
            m = get_method(name)
            out.write(
                f"{name:12s} {'budgeted' if m.budgeted else 'no budget':10s} {m.description}\n"
            )
        return 0
    try:
        config = build_config(args, results_root)
    except KeyError as e:
        sys.stderr.write(f"error: --methods: {e.args[0]}\n")
        return 2
    if argv is None:
        cmd = command(None if program_as_typed else program)
    else:
        cmd = f"{program} " + shlex.join(portable_args(argv))
    meta = {"command": cmd, "date": now(), "machine": machine()}
    reuse = [d for d in (args.reuse_cells or "").split(",") if d.strip()]
    report = run_protocol(
        config,
        meta=meta,
        max_cells=args.max_cells,
        verbose=args.verbose,
        reuse_cells_from=reuse,
    )
    with open(report.markdown_path, encoding="utf-8") as f:
        out.write(f.read() + "\n")
    out.write(f"Results: {report.json_path}\n         {report.markdown_path}\n")
    if report.pending:
        out.write(
            f"{len(report.pending)} cells still to run; rerun the same command to continue.\n"
        )
    return 0
