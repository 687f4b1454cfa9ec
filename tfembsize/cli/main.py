"""The ``tfembsize`` command: parser of every subcommand, error handling and exit codes."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import textwrap
import traceback
from collections.abc import Sequence
from typing import Any

from tfembsize._version import __version__
from tfembsize.cli import export, plot, report, retrain, search
from tfembsize.cli._common import (
    EXIT_BUDGET,
    EXIT_CODES,
    EXIT_DATA,
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_MISSING_EXTRA,
    EXIT_STATE,
    EXIT_USAGE,
    ArgumentParser,
    CliError,
    HelpFormatter,
    logging_to,
    verbosity,
)

__all__ = ["main", "build_parser", "PROGRAM"]

PROGRAM = "tfembsize"
"""The program name in help and in recorded commands."""

_DESCRIPTION = """\
Search per-row embedding sizes under a parameter budget, retrain, export and report.

A run directory holds everything of one search: run.json (command, version, options, what
is where), plans/, metrics/, weights/, export/, plots/, run.log. Every step can be rerun
and resumes where it stopped."""

_WORKFLOW = """\
workflow:
  tfembsize search --dataset synthetic --method es --sparsity 0.5,0.8 --d-max 8 \\
      --max-steps 300 --run-dir runs/demo
  tfembsize retrain runs/demo
  tfembsize export runs/demo
  tfembsize report runs/demo
  tfembsize plot runs/demo

Run `tfembsize <command> --help` for every option of a command.
"""

_SUBCOMMANDS = {
    "search": search,
    "retrain": retrain,
    "export": export,
    "report": report,
    "plot": plot,
}


def _epilog() -> str:
    codes = "\n".join(
        textwrap.fill(text, 96, initial_indent=f"  {code:<4d} ", subsequent_indent=" " * 7)
        for code, text in EXIT_CODES.items()
    )
    return f"{_WORKFLOW}\nexit status:\n{codes}\n"


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, Any]]:
    """The ``tfembsize`` parser and ``{"search": (search parser, its method option groups)}``."""
    parser = ArgumentParser(
        prog=PROGRAM,
        description=_DESCRIPTION,
        epilog=_epilog(),
        formatter_class=HelpFormatter,
    )
    parser.add_argument(
        "--version", action="version", version=f"tfembsize {__version__}", help="print the version"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    search_parser, groups = search.add_parser(sub)
    for name in ("retrain", "export", "report", "plot"):
        _SUBCOMMANDS[name].add_parser(sub)
    return parser, {"search": (search_parser, groups)}


def _classify(error: BaseException) -> tuple[int, str]:
    """Exit status and one-line message of an error."""
    from tfembsize.data.loaders import EmptyDataFileError, MalformedFileError
    from tfembsize.errors import (
        BudgetExceededError,
        BudgetInfeasibleError,
        StateFileError,
        StateWriteError,
        TargetMissedError,
    )

    if isinstance(error, CliError):
        return error.code, str(error)
    if isinstance(error, KeyboardInterrupt):
        return (
            EXIT_INTERRUPTED,
            "interrupted; the finished work is saved: rerun the same command to resume.",
        )
    if isinstance(error, (StateFileError, StateWriteError)):
        return EXIT_STATE, str(error)
    if isinstance(error, (BudgetInfeasibleError, TargetMissedError, BudgetExceededError)):
        return EXIT_BUDGET, (
            f"{error} Use a lower --sparsity or a larger --d-max (the budget is never relaxed)."
        )
    if isinstance(error, (EmptyDataFileError, MalformedFileError)):
        return EXIT_DATA, str(error)
    if isinstance(error, ImportError) and "matplotlib" in str(error):
        return EXIT_MISSING_EXTRA, str(error)
    return EXIT_FAILURE, (
        f"unexpected {type(error).__name__}: {error} (rerun with --debug for the traceback)"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Runs ``tfembsize`` with ``argv`` (default ``sys.argv[1:]``); returns the exit status.

    Output for the user goes to stdout, progress and errors to stderr.
    """
    from tfembsize.protocol.cli import _validate_method_options

    argv = list(sys.argv[1:] if argv is None else argv)
    parser, extra = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command == "search":
            search_parser, groups = extra["search"]
            _validate_method_options(search_parser, args, groups)
    except SystemExit as e:  # --help, --version (0) or a usage error (2, printed by argparse)
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    command = f"{PROGRAM} {shlex.join(argv)}"
    verbose = verbosity(args)
    with logging_to(verbose):
        try:
            text, data = _SUBCOMMANDS[args.command].run(args, command, verbose)
        except (Exception, KeyboardInterrupt) as error:
            code, message = _classify(error)
            if getattr(args, "debug", False):
                traceback.print_exc(file=sys.stderr)
            sys.stderr.write(f"tfembsize {args.command}: error: {message}\n")
            return code
    if getattr(args, "json", False):
        sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
    else:
        sys.stdout.write(text)
    sys.stdout.flush()
    return 0
