"""Helpers of the command-line tests: run ``tfembsize`` in-process and capture its output."""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass

import pytest

from tfembsize.cli import main

# Tiny settings: 2,500 rows at d_max 8, trainings of 100 steps.
TINY = ["--dataset", "synthetic", "--d-max", "8", "--max-steps", "100", "--eval-every", "50"]


@dataclass
class Result:
    """Exit status and output of one in-process run."""

    code: int
    out: str
    err: str


def run_cli(*argv: str) -> Result:
    """``main(argv)`` with stdout and stderr captured."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return Result(code, out.getvalue(), err.getvalue())


@pytest.fixture(name="cli", scope="session")
def _cli():
    """``cli(*argv) -> Result``: runs ``tfembsize`` in-process."""
    return run_cli


@pytest.fixture(name="tiny", scope="session")
def _tiny():
    """Options of a tiny synthetic run."""
    return list(TINY)
