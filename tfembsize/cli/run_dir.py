"""`RunDir`: the self-describing folder a ``tfembsize search`` writes and the later steps read.

Layout (``run.json`` says the same for a reader without these docs)::

    RUN/
      run.json            format tag, the exact command, version, every search option, layout
      README.md           the same in words
      run.log             every info log line of every command run on this folder
      plans/<key>.json    one SizePlan per target (key c0.9 for sparsity 0.9; "full")
      search/<key>.json   what the method reported while producing the plan
      metrics/<key>.json  test and validation metrics of the retrained plan
      weights/<key>.npz   the retrained weights
      export/<key>/       compressed SavedModel; export/<key>.json its size report
      plots/*.png         figures of ``tfembsize plot``
      work/               resumable working state (search loops, reference model, retraining
                          checkpoints)
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tfembsize import _io
from tfembsize.cli._common import EXIT_USAGE, CliError

__all__ = ["RunDir", "RUN_FORMAT", "LAYOUT", "target_key"]

RUN_FORMAT = "tfembsize.CliRun"
"""The ``format`` tag of ``run.json``."""

LAYOUT: dict[str, str] = {
    "run.json": "this file: the command, version and every option of the search",
    "README.md": "the same in words",
    "run.log": "log of every command run on this folder",
    "plans/<key>.json": "the SizePlan chosen for each target (key c<sparsity>, or full)",
    "search/<key>.json": "what the method reported while producing the plan",
    "metrics/<key>.json": "test/validation metrics of the plan retrained from scratch",
    "weights/<key>.npz": "the retrained weights",
    "export/<key>/": "compressed SavedModel (export/<key>.json: its size report)",
    "plots/": "PNG figures",
    "work/": "resumable working state (search loops, reference model, checkpoints)",
}
"""What is where in a run directory (written into ``run.json``)."""


def target_key(sparsity: float | None) -> str:
    """File stem of a target: ``c0.9`` for sparsity 0.9, ``full`` for an unbudgeted method."""
    return "full" if sparsity is None else f"c{float(sparsity):g}"


class RunDir:
    """A command-line run directory.

    Args:
        path: the folder.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path).resolve()

    # Paths ------------------------------------------------------------------------------------
    @property
    def run_json(self) -> Path:
        """``run.json``."""
        return self.path / "run.json"

    @property
    def log(self) -> Path:
        """``run.log``."""
        return self.path / "run.log"

    @property
    def work(self) -> Path:
        """``work/``: the methods' resumable working folders."""
        return self.path / "work"

    def plan_path(self, key: str) -> Path:
        """``plans/<key>.json``."""
        return self.path / "plans" / f"{key}.json"

    def search_path(self, key: str) -> Path:
        """``search/<key>.json``."""
        return self.path / "search" / f"{key}.json"

    def metrics_path(self, key: str) -> Path:
        """``metrics/<key>.json``."""
        return self.path / "metrics" / f"{key}.json"

    def weights_path(self, key: str) -> Path:
        """``weights/<key>.npz``."""
        return self.path / "weights" / f"{key}.npz"

    def export_path(self, key: str) -> Path:
        """``export/<key>/``."""
        return self.path / "export" / key

    @property
    def plots(self) -> Path:
        """``plots/``."""
        return self.path / "plots"

    # State ------------------------------------------------------------------------------------
    def exists(self) -> bool:
        """Whether ``run.json`` exists (a search started here)."""
        return self.run_json.is_file()

    def read(self) -> dict[str, Any]:
        """The contents of ``run.json``.

        Raises:
            CliError: the folder is not a run directory (exit status 2).
            StateFileError: ``run.json`` is damaged or edited.
        """
        if not self.exists():
            raise CliError(
                EXIT_USAGE,
                f"{self.path} is not a run directory (no run.json): run `tfembsize search "
                f"--run-dir {self.path} ...` first.",
            )
        return dict(
            _io.read_json(
                self.run_json,
                format=RUN_FORMAT,
                what="run description",
                remedy="Restore run.json from a backup, or start a new run directory.",
            )
        )

    def create_or_check(self, description: Mapping[str, Any]) -> dict[str, Any]:
        """Writes ``run.json`` and README.md for a new run, or checks an existing one matches.

        Args:
            description: ``{"command", "version", "options", ...}``; ``options`` is what must
                match for a rerun to resume.

        Returns:
            The description in effect (the stored one when resuming).

        Raises:
            CliError: the folder holds a run with other options (exit status 2).
        """
        if self.exists():
            stored = self.read()
            old, new = stored.get("options", {}), dict(description["options"])
            if old != new:
                diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
                detail = "; ".join(f"{k}: {old.get(k)!r} there, {new.get(k)!r} now" for k in diff)
                raise CliError(
                    EXIT_USAGE,
                    f"--run-dir {self.path} holds a run with other options ({detail}). Rerun "
                    f"with the same options to resume it (its command: {stored.get('command')}), "
                    "or pass a new --run-dir.",
                )
            return stored
        self.path.mkdir(parents=True, exist_ok=True)
        payload = {**description, "layout": LAYOUT}
        _io.write_json(self.run_json, payload, format=RUN_FORMAT, version=1)
        _io.write_bytes(self.path / "README.md", _readme(payload).encode("utf-8"))
        return dict(_io.read_json(self.run_json, format=RUN_FORMAT, what="run description"))

    def keys(self, folder: str) -> list[str]:
        """Target keys with a file in ``plans``, ``metrics``, ``weights``, ``search``."""
        directory = self.path / folder
        if not directory.is_dir():
            return []
        return sorted(p.stem for p in directory.iterdir() if p.suffix in (".json", ".npz"))


def _readme(description: Mapping[str, Any]) -> str:
    lines = [
        "# tfembsize run",
        "",
        "Made by:",
        "",
        f"    {description.get('command', '')}",
        "",
        f"tfembsize {description.get('tfembsize_version', '')}. Rerun the same command here to "
        "resume; `tfembsize report <this folder>` summarises it.",
        "",
        "| path | what |",
        "| --- | --- |",
    ]
    lines += [f"| `{k}` | {v} |" for k, v in LAYOUT.items()]
    return "\n".join(lines) + "\n"
