"""Results record paths that mean the same on another machine (relative to the repository)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from tfembsize.data import synthetic
from tfembsize.protocol import cli
from tfembsize.protocol.provenance import portable_args, portable_path, repo_root

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "benchmarks" / "results"
FAST = ["--d-max", "8", "--lr", "0.01", "--batch-size", "128", "--max-steps", "20"]
FAST += ["--eval-every", "20", "--verbose", "0"]

# An absolute path of one machine: /work/... or /root/... not preceded by a path character
# (``ml-1m_mf_pep/work/pep__shared__seed0`` is a relative path and fine).
_MACHINE_PATH = re.compile(r"(?<![\w.~-])/(?:work|root)/")


@pytest.fixture
def fake_repo(tmp_path):
    """A folder that `repo_root` takes for a repository root, with an outside folder beside it."""
    repo = tmp_path / "repo"
    (repo / ".git").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    return repo


def test_repo_root_is_the_nearest_folder_with_git(fake_repo, tmp_path):
    assert repo_root(fake_repo / "a" / "not-yet" / "file.json") == fake_repo
    assert repo_root(fake_repo) == fake_repo
    assert repo_root(tmp_path / "outside") is None
    worktree = tmp_path / "outside" / "wt"  # a git worktree has a .git file
    worktree.mkdir()
    (worktree / ".git").write_text("gitdir: elsewhere\n")
    assert repo_root(worktree / "runs") == worktree


def test_portable_path_is_relative_inside_the_repo_and_as_given_outside(
    fake_repo, tmp_path, monkeypatch
):
    inside = fake_repo / "benchmarks" / "results" / "paper_protocol" / "ml-1m_mf"
    assert portable_path(inside) == "benchmarks/results/paper_protocol/ml-1m_mf"
    assert portable_path(str(inside) + "/") == "benchmarks/results/paper_protocol/ml-1m_mf"
    assert portable_path(fake_repo) == "."
    outside = tmp_path / "outside" / "gowalla"
    assert portable_path(outside) == str(outside)
    monkeypatch.chdir(tmp_path / "outside")  # a data folder beside the repo, typed relative
    assert portable_path("../shared/data/gowalla") == "../shared/data/gowalla"
    monkeypatch.chdir(fake_repo / ".git")  # relative to a folder inside the repo
    assert portable_path("../runs/a") == "runs/a"
    assert portable_path("../../outside/x") == "../../outside/x"  # outside: as typed
    # an explicit root
    assert portable_path(inside, root=fake_repo / "benchmarks") == "results/paper_protocol/ml-1m_mf"
    assert portable_path(outside, root=fake_repo) == str(outside)


def test_portable_args_rewrite_absolute_paths_only(fake_repo, tmp_path):
    run_a, run_b = fake_repo / "runs" / "a", fake_repo / "runs" / "b"
    outside = tmp_path / "outside" / "data"
    args = [
        f"{fake_repo}/benchmarks/paper_protocol.py",
        "--out",
        str(run_a),
        f"--reuse-cells={run_a},{run_b}",
        "--reuse-cells",
        f"{run_b},runs/c",
        "--data-dir",
        str(outside),
        "--methods",
        "full,es",
        "--lr",
        "-1e-3",
    ]
    assert portable_args(args) == [
        "benchmarks/paper_protocol.py",
        "--out",
        "runs/a",
        "--reuse-cells=runs/a,runs/b",
        "--reuse-cells",
        "runs/b,runs/c",
        "--data-dir",
        str(outside),
        "--methods",
        "full,es",
        "--lr",
        "-1e-3",
    ]


def _lightgcn_folder(folder: Path) -> Path:
    """The synthetic data set written as a LightGCN-format folder."""
    data = synthetic(60, 80, 1200, seed=0)
    folder.mkdir(parents=True)
    indptr, indices = data.csr()
    lines = [" ".join(map(str, [u, *indices[indptr[u] : indptr[u + 1]]])) for u in range(60)]
    (folder / "train.txt").write_text("\n".join(lines[:40]) + "\n")
    (folder / "test.txt").write_text("\n".join(lines[40:]) + "\n")
    return folder


def test_a_protocol_run_inside_a_repo_records_no_absolute_path(fake_repo):
    """Absolute --data-dir, --out and --reuse-cells inside the repo are recorded relative."""
    data = _lightgcn_folder(fake_repo / "data" / "synth")
    run_a, run_b = fake_repo / "runs" / "a", fake_repo / "runs" / "b"
    common = ["--data-dir", str(data), "--methods", "es", "--sparsity", "0.75", *FAST]
    assert cli.main([*common, "--out", str(run_a)]) == 0
    assert cli.main([*common, "--out", str(run_b), "--reuse-cells", str(run_a)]) == 0

    results = json.loads((run_b / "results.json").read_text())
    assert results["config"]["dataset"] == "data/synth"
    assert results["command"].endswith("--out runs/b --reuse-cells runs/a")
    assert results["cells"][0]["info"]["reused_from"] == "runs/a"
    written = [run / name for run in (run_a, run_b) for name in ("results.json", "results.md")]
    written += sorted(run_a.glob("cells/*.json")) + sorted(run_b.glob("cells/*.json"))
    assert len(written) == 6
    for path in written:
        assert str(fake_repo.parent) not in path.read_text(), path


def _tracked_result_files() -> list[Path]:
    """The files of benchmarks/results that git tracks (every file there without git)."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z", "--", "benchmarks/results"],
            cwd=REPO,
            capture_output=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return sorted(p for p in RESULTS.rglob("*") if p.is_file())
    return [REPO / name for name in listed.decode().split("\0") if name]


def test_tracked_results_hold_no_absolute_path_of_one_machine():
    files = _tracked_result_files()
    assert any(p.name == "results.json" for p in files)
    offenders = []
    for path in files:
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        for number, line in enumerate(text.splitlines(), start=1):
            if _MACHINE_PATH.search(line):
                offenders.append(f"{path.relative_to(REPO).as_posix()}:{number}: {line.strip()}")
    assert not offenders, (
        "Absolute paths of one machine in tracked results (write them relative to the "
        "repository root, see benchmarks/results/README.md):\n" + "\n".join(offenders)
    )


def test_the_machine_path_pattern():
    for text in ('"reused_from": "/work/main/benchmarks"', "cd /work/main &&", "`/root/x`"):
        assert _MACHINE_PATH.search(text), text
    for text in ("ml-1m_mf_pep/work/pep__shared__seed0", "benchmarks/results/x", "../work/x"):
        assert not _MACHINE_PATH.search(text), text
