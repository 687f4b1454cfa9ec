"""``--help`` of every subcommand explains every option; ``python -m tfembsize`` runs."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tfembsize.cli._common import EXIT_CODES
from tfembsize.cli.main import build_parser

SUBCOMMANDS = ("search", "retrain", "export", "report", "plot")


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser, _ = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_every_option_has_help_and_the_help_shows_it_with_an_example(cli, name):
    parser = _subparsers()[name]
    options = [a for a in parser._actions if not isinstance(a, argparse._HelpAction)]
    assert options
    lacking = [a.dest for a in options if not a.help or a.help == argparse.SUPPRESS]
    assert lacking == []
    result = cli(name, "--help")
    assert result.code == 0
    for action in options:
        shown = action.option_strings[0] if action.option_strings else action.dest
        assert shown in result.out, shown
    assert "example" in result.out


def test_options_with_a_default_say_it():
    for name, parser in _subparsers().items():
        for a in parser._actions:
            if a.option_strings and a.default not in (None, False, argparse.SUPPRESS, []):
                assert "default" in a.help, (name, a.dest)


def test_top_level_help_lists_the_commands_and_exit_codes(cli):
    result = cli("--help")
    assert result.code == 0
    for name in SUBCOMMANDS:
        assert name in result.out
    for code in EXIT_CODES:
        assert f"  {code} " in result.out
    assert "rerun the same command to resume" in result.out
    assert cli().code == 2  # no command


def test_python_dash_m_tfembsize_help():
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root), "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run(
        [sys.executable, "-m", "tfembsize", "--help"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: tfembsize")
    assert "exit status:" in done.stdout


def test_list_methods_names_each_method_and_where_non_plan_methods_run(cli):
    result = cli("search", "--list-methods")
    assert result.code == 0
    lines = {line.split()[0]: line for line in result.out.splitlines()}
    assert {"es", "mr", "bet", "ciess", "full", "pep"} <= set(lines)
    assert "budgeted" in lines["es"] and "no budget" in lines["full"]
    assert "python -m tfembsize.protocol" in lines["pep"]
    assert "python -m tfembsize.protocol" not in lines["bet"]
