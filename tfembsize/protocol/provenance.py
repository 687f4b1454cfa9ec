"""Where a result came from: the command, the machine, the date; results files that carry them.

Every results file of the protocol's command lines and of the benchmark scripts records the
command that produced it, a description of the machine and software stack, and the date, so
a number can be traced and compared with numbers measured elsewhere.

Paths in results are written to be read on another machine: a path inside a git work tree is
recorded relative to the work tree's root (`portable_path`), any other path as it was given.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import shlex
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tfembsize import _io
from tfembsize.protocol._json import plain

__all__ = [
    "machine",
    "command",
    "now",
    "write_results",
    "repo_root",
    "portable_path",
    "portable_args",
]


def machine() -> dict[str, Any]:
    """A description of this machine and software stack."""
    import tensorflow as tf

    from tfembsize._keras import keras_version

    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem_gib = None
    try:
        with open("/proc/meminfo") as f:
            mem_gib = round(int(f.readline().split()[1]) / 2**20, 1)
    except OSError:
        pass
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
        ).stdout.strip()
    except OSError:
        commit = ""
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": mem_gib,
        "gpu": bool(tf.config.list_physical_devices("GPU")),
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras_version(),
        "platform": platform.platform(),
        "git_commit": commit,
        # Other jobs on the machine when the results were written (1, 5, 15 min averages):
        # ratios measured side by side stay meaningful, absolute times do not.
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def repo_root(path: str | os.PathLike) -> Path | None:
    """The root of the git work tree holding ``path`` (the nearest folder with a ``.git``).

    ``path`` need not exist yet. Returns None outside any work tree.
    """
    current = Path(os.path.abspath(os.fspath(path)))
    for folder in (current, *current.parents):
        if (folder / ".git").exists():
            return folder
    return None


def portable_path(path: str | os.PathLike, root: str | os.PathLike | None = None) -> str:
    """``path`` as results record it: relative to the repository root when inside it.

    Args:
        path: a path, absolute or relative to the current folder.
        root: the repository root (default: `repo_root` of ``path``).

    Returns:
        The path relative to ``root`` with ``/`` separators (``"."`` for the root itself) if
        it lies inside ``root``; otherwise ``path`` as given.
    """
    text = os.fspath(path)
    absolute = os.path.abspath(text)
    base = repo_root(absolute) if root is None else Path(os.path.abspath(os.fspath(root)))
    if base is None:
        return text
    relative = os.path.relpath(absolute, base)
    if relative == os.pardir or relative.startswith(os.pardir + os.sep):
        return text
    return Path(relative).as_posix()


def portable_args(args: Sequence[str]) -> list[str]:
    """Command-line arguments with every absolute path made `portable_path`.

    Handles ``--flag=/abs/path`` and comma-separated lists (``--reuse-cells /a,/b``). Relative
    arguments are kept as typed: recorded commands are meant to be run from the repository
    root.
    """
    out = []
    for arg in args:
        flag, eq, value = arg.partition("=") if arg.startswith("-") else ("", "", arg)
        parts = [portable_path(p) if os.path.isabs(p) else p for p in value.split(",")]
        out.append(flag + eq + ",".join(parts))
    return out


def command(program: str | None = None) -> str:
    """The command line that ran this process, for the results file.

    Absolute paths inside the repository are written relative to its root (`portable_args`).

    Args:
        program: how to write the program (e.g. ``"python -m tfembsize.protocol"``); default
            ``python`` and ``sys.argv[0]`` as typed.
    """
    env = " ".join(f"{k}={os.environ[k]}" for k in ("TF_USE_LEGACY_KERAS",) if os.environ.get(k))
    argv = portable_args(sys.argv)
    if program is None:
        cmd = "python " + " ".join(shlex.quote(a) for a in argv)
    else:
        cmd = " ".join([program, *(shlex.quote(a) for a in argv[1:])])
    return f"{env} {cmd}".strip()


def now() -> str:
    """UTC timestamp."""
    return _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def write_results(
    directory: str | os.PathLike,
    name: str,
    payload: dict[str, Any],
    markdown: str,
    *,
    program: str | None = None,
) -> tuple[Path, Path]:
    """Writes ``<directory>/<name>.json`` and ``.md`` with command, machine and date.

    Args:
        directory: the results folder (created if missing).
        name: the file stem.
        payload: the JSON results (numpy values are converted).
        markdown: the markdown report; a header with the provenance is appended.
        program: see `command`.

    Returns:
        The JSON and markdown paths.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    meta: dict[str, Any] = {"command": command(program), "date": now(), "machine": machine()}
    full = {**meta, **payload}
    jpath = directory / f"{name}.json"
    _io.write_json(jpath, plain(full), indent=2)
    m = meta["machine"]
    header = (
        f"Command: `{meta['command']}`  \n"
        f"Date: {meta['date']}  \n"
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, GPU: {m['gpu']}; "
        f"Python {m['python']}, TensorFlow {m['tensorflow']}, Keras {m['keras']}, "
        f"commit {m['git_commit']}; load average {m['load_average']}\n\n"
    )
    mpath = directory / f"{name}.md"
    _io.write_bytes(mpath, (markdown.rstrip() + "\n\n" + header).encode("utf-8"))
    return jpath, mpath
