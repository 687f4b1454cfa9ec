"""``tfembsize report``: a summary of any folder tfembsize writes, as markdown or JSON.

Recognised folders:

* a command-line run directory (``run.json`` of ``tfembsize search``): per target, the
  plan's usable parameters and budget, the retrained test metrics and the export's bytes;
* a paper-protocol output folder (``results.json`` of ``python -m tfembsize.protocol``):
  mean test metrics per method and sparsity;
* a search loop folder (``run.json`` + ``result.json`` of `tfembsize.search.run`): steps
  done and the best step per target;
* an export (a SavedModel of `tfembsize.export.save_compressed`): its size report.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from tfembsize import _io
from tfembsize.cli._common import EXIT_USAGE, CliError, HelpFormatter, add_verbosity, describe
from tfembsize.cli.run_dir import RUN_FORMAT, RunDir

__all__ = ["add_parser", "run", "summarise"]

_EPILOG = """\
example:
  tfembsize report runs/demo                  # a tfembsize search run directory
  tfembsize report paper_protocol/ml-1m_mf    # python -m tfembsize.protocol output
  tfembsize report runs/demo/export/c0.8 --json
"""


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Adds ``report`` to the subcommands."""
    p = subparsers.add_parser(
        "report",
        help="summarise a run directory, protocol output, search folder or export",
        description=describe(__doc__),
        epilog=_EPILOG,
        formatter_class=HelpFormatter,
    )
    p.add_argument("path", help="the folder to summarise")
    p.add_argument(
        "--json",
        action="store_true",
        help="print the summary as JSON for programs instead of markdown (default: off)",
    )
    add_verbosity(p)
    return p


def run(args: argparse.Namespace, command: str, verbose: int) -> tuple[str, dict]:
    """Summarises ``args.path``; returns the markdown text and the JSON summary."""
    del command, verbose
    return summarise(Path(args.path))


def summarise(path: Path) -> tuple[str, dict]:
    """Markdown and JSON summaries of a folder tfembsize wrote.

    Raises:
        CliError: the folder is none of the recognised kinds (exit status 2).
    """
    if not path.is_dir():
        raise CliError(EXIT_USAGE, f"report: {path} is not a folder.")
    if (path / "run.json").is_file():
        head = _io.read_json(path / "run.json", what="run description")
        if head.get("format") == RUN_FORMAT:
            return _cli_run(RunDir(path))
        if (path / "result.json").is_file():
            return _search_loop(path, head)
    if (path / "results.json").is_file():
        return _protocol(path)
    if (path / "saved_model.pb").is_file():
        return _export(path)
    raise CliError(
        EXIT_USAGE,
        f"report: {path} is not a folder tfembsize wrote (no run.json, results.json or "
        "saved_model.pb); pass a run directory, a protocol output folder or an export.",
    )


def _fmt(value: Any, pattern: str = ".4f") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, int):
        return f"{value:,}"
    return format(value, pattern)


def _cli_run(run_dir: RunDir) -> tuple[str, dict]:
    from tfembsize.plan import SizePlan

    description = run_dir.read()
    options = description["options"]
    targets = sorted(set(run_dir.keys("plans")) | set(run_dir.keys("metrics")))
    rows = []
    for key in targets:
        row: dict[str, Any] = {"target": key}
        if run_dir.plan_path(key).exists():
            plan = SizePlan.load(run_dir.plan_path(key))
            row["plan_params"] = plan.total_params()
            row["full_params"] = options["d_max"] * plan.num_rows()
        if run_dir.metrics_path(key).exists():
            cell = _io.read_json(run_dir.metrics_path(key), what="retrained metrics")
            row.update(
                usable_params=cell["usable_params"],
                budget=cell["budget"],
                test=cell["test"],
                validation=cell["validation"],
                best_step=cell["best_step"],
                retrain_time=cell["retrain_time"],
            )
        export = run_dir.path / "export" / f"{key}.json"
        if export.exists():
            total = _io.read_json(export, what="export report")["total"]
            row["export"] = {k: total[k] for k in ("raw_bytes", "dense_bytes", "ratio")}
        rows.append(row)
    data = options["data_dir"] or options["dataset"] or "synthetic"
    summary = {
        "kind": "cli_run",
        "path": str(run_dir.path),
        "command": description.get("command"),
        "tfembsize_version": description.get("tfembsize_version"),
        "options": options,
        "targets": rows,
    }
    lines = [
        f"# Run {run_dir.path}",
        "",
        f"- command: `{description.get('command')}`",
        f"- method {options['method']}, backbone {options['backbone']}, data {data}, "
        f"d_max {options['d_max']}, seed {options['seed']}",
        "",
        "| target | plan params | budget | test R@20 | test N@20 | best step | export bytes "
        "| vs dense |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        test = r.get("test", {})
        export = r.get("export", {})
        lines.append(
            f"| {r['target']} | {_fmt(r.get('plan_params'))} | {_fmt(r.get('budget'))} | "
            f"{_fmt(test.get('recall@20'))} | {_fmt(test.get('ndcg@20'))} | "
            f"{_fmt(r.get('best_step'))} | {_fmt(export.get('raw_bytes'))} | "
            f"{_fmt(export.get('ratio'), '.3f')} |"
        )
    todo = [r["target"] for r in rows if "test" not in r]
    if todo:
        lines += ["", f"Not retrained yet: {', '.join(todo)} (tfembsize retrain {run_dir.path})."]
    return "\n".join(lines) + "\n", summary


def _protocol(path: Path) -> tuple[str, dict]:
    results = _io.read_json(path / "results.json", what="protocol results")
    rows = []
    for row in results.get("summary", []):
        rows.append(
            {
                "method": row["method"],
                "sparsity": row["sparsity"],
                "seeds": row.get("n"),
                "test_recall@20": row["test_recall@20"]["mean"],
                "test_ndcg@20": row["test_ndcg@20"]["mean"],
                "usable_params": row["usable_params"]["mean"],
                "budget": row.get("budget"),
            }
        )
    summary = {
        "kind": "protocol",
        "path": str(path),
        "command": results.get("command"),
        "config": results.get("config"),
        "rows": rows,
        "pending": results.get("pending", []),
        "missed": results.get("missed", {}),
    }
    lines = [
        f"# Protocol results {path}",
        "",
        f"- command: `{results.get('command')}`",
        "",
        "| method | c | seeds | test R@20 | test N@20 | usable params | budget |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        c = "—" if r["sparsity"] is None else f"{r['sparsity']:g}"
        lines.append(
            f"| {r['method']} | {c} | {r['seeds']} | {_fmt(r['test_recall@20'])} | "
            f"{_fmt(r['test_ndcg@20'])} | {_fmt(int(r['usable_params']))} | "
            f"{_fmt(r['budget'])} |"
        )
    if summary["pending"]:
        lines += ["", f"Pending cells: {len(summary['pending'])} (rerun the command to continue)."]
    return "\n".join(lines) + "\n", summary


def _search_loop(path: Path, state: dict) -> tuple[str, dict]:
    result = _io.read_json(path / "result.json", what="search result")
    best = result.get("best_step_per_sparsity") or {}
    summary = {
        "kind": "search_loop",
        "path": str(path),
        "controller": state.get("controller"),
        "steps": result.get("steps"),
        "finished": result.get("finished"),
        "best": best,
        "plans": result.get("plans", {}),
    }
    lines = [
        f"# Search {path} ({state.get('controller')})",
        "",
        f"- steps: {result.get('steps')}, finished: {result.get('finished')}",
        "",
        "| target | best iteration | quality | usable params | plan |",
        "| --- | --- | --- | --- | --- |",
    ]
    for c, step in best.items():
        lines.append(
            f"| {c} | {step.get('iteration')} | {_fmt(step.get('quality'))} | "
            f"{_fmt(step.get('usable_params'))} | {(result.get('plans') or {}).get(c, '—')} |"
        )
    return "\n".join(lines) + "\n", summary


def _export(path: Path) -> tuple[str, dict]:
    from tfembsize.export import compression_report

    try:
        report = compression_report(path)
    except FileNotFoundError as e:
        raise CliError(
            EXIT_USAGE, f"report: {path} is a SavedModel but not a tfembsize export: {e}"
        ) from e
    summary = {"kind": "export", "path": str(path), **json.loads(json.dumps(report.to_dict()))}
    text = f"# Export {path}\n\n{report.to_markdown()}\n"
    return text, summary
