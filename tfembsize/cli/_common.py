"""What every subcommand shares: exit codes, the one error type, logging, help formatting."""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn

__all__ = [
    "EXIT_OK",
    "EXIT_FAILURE",
    "EXIT_USAGE",
    "EXIT_DATA",
    "EXIT_STATE",
    "EXIT_BUDGET",
    "EXIT_MISSING_EXTRA",
    "EXIT_INTERRUPTED",
    "EXIT_CODES",
    "ArgumentParser",
    "CliError",
    "HelpFormatter",
    "add_verbosity",
    "describe",
    "verbosity",
    "logging_to",
    "log_file",
]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_DATA = 3
EXIT_STATE = 4
EXIT_BUDGET = 5
EXIT_MISSING_EXTRA = 6
EXIT_INTERRUPTED = 130

EXIT_CODES: dict[int, str] = {
    EXIT_OK: "success",
    EXIT_FAILURE: "an unexpected error (rerun with --debug for the traceback)",
    EXIT_USAGE: "bad usage: an unknown option, a bad option value, or a run directory created "
    "with other options",
    EXIT_DATA: "a data problem: the data set or --data-dir is missing, empty or malformed",
    EXIT_STATE: "a damaged, edited or foreign state file in the run directory, or a file that "
    "could not be written (disk full, read-only, no permission)",
    EXIT_BUDGET: "the budget cannot be met: no plan of the method fits floor((1-c) d_max N) at a "
    "target sparsity (the budget is never relaxed)",
    EXIT_MISSING_EXTRA: 'an optional dependency is missing (plots: pip install "tfembsize[plots]")',
    EXIT_INTERRUPTED: "interrupted (Ctrl-C): rerun the same command to resume",
}
"""Exit status -> what it means (printed by ``tfembsize --help`` and docs/cli.md)."""


class CliError(Exception):
    """A failure the command line reports as one line on stderr and an exit status.

    Attributes:
        code: the exit status (one of `EXIT_CODES`).
    """

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = int(code)


class ArgumentParser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line naming the option and the way out."""

    def error(self, message: str) -> NoReturn:
        """Prints ``<prog>: error: <message>`` and a pointer to ``--help``; exits with 2."""
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the description and epilog as written (examples), wraps option help."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=32, width=100)


def describe(doc: str | None) -> str:
    """A subcommand's ``--help`` description from its module docstring (plain text).

    The first two paragraphs, without the leading ````tfembsize <command>````: and without
    reStructuredText quotes.
    """
    paragraphs = (doc or "").strip().split("\n\n")[:2]
    text = "\n\n".join(paragraphs)
    text = re.sub(r"^``[^`]+``: ", "", text)
    text = text.replace("``", "").replace("`", "")
    return text[:1].upper() + text[1:]


def add_verbosity(parser: argparse.ArgumentParser) -> None:
    """Adds ``--verbose``, ``--quiet`` and ``--debug`` to a subcommand."""
    group = parser.add_argument_group("output")
    group.add_argument(
        "-v",
        "--verbose",
        type=int,
        choices=(0, 1, 2),
        default=1,
        help="progress on stderr: 0 warnings and errors only, 1 one line per phase and per "
        "validation check, 2 everything the library logs (debug) (default: 1)",
    )
    group.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="same as --verbose 0 (default: off)",
    )
    group.add_argument(
        "--debug",
        action="store_true",
        help="print the full traceback of an error instead of one line (default: off)",
    )


def verbosity(args: argparse.Namespace) -> int:
    """0, 1 or 2 from ``--verbose`` and ``--quiet``."""
    return 0 if getattr(args, "quiet", False) else int(getattr(args, "verbose", 1))


_LEVELS = {0: logging.WARNING, 1: logging.INFO, 2: logging.DEBUG}


@contextmanager
def logging_to(verbose: int) -> Iterator[None]:
    """Sends the library's log records to stderr while the block runs.

    Args:
        verbose: 0, 1 or 2 (warnings, info, debug).
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setLevel(_LEVELS[verbose])
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    with _handler(handler):
        yield


@contextmanager
def log_file(path: str | os.PathLike, verbose: int = 1) -> Iterator[None]:
    """Appends the library's info records (debug with ``verbose`` 2) to ``path``.

    Args:
        path: the log file, e.g. a run directory's ``run.log``.
        verbose: 2 also logs debug records.
    """
    handler = logging.FileHandler(os.fspath(path), encoding="utf-8")
    handler.setLevel(logging.DEBUG if verbose >= 2 else logging.INFO)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    with _handler(handler):
        yield


@contextmanager
def _handler(handler: logging.Handler) -> Iterator[None]:
    logger = logging.getLogger("tfembsize")
    previous_level, previous_propagate = logger.level, logger.propagate
    levels = [h.level for h in logger.handlers] + [handler.level]
    logger.setLevel(min(levels))
    logger.propagate = False
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        handler.close()
        logger.setLevel(previous_level)
        logger.propagate = previous_propagate
