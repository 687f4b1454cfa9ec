"""A resumed search checks run.json against its other files and cleans up after crashes."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys

import pytest

from tfembsize import _io
from tfembsize.errors import StateFileError, StateWriteError
from tfembsize.search import load_history, run


def _run(fakes, directory, iterations, env=None):
    make_ctrl, make_env = fakes
    return run(
        make_ctrl(seed=3),
        env or make_env(),
        directory,
        iterations=iterations,
        verbose=0,
        tensorboard=False,
    )


def _summary(result):
    return [(r.iteration, r.plan.total_params(), r.feedback.quality) for r in result.history]


def _rewrite_run_json(directory, **changes):
    """run.json with other values, written properly (a valid, checksummed file)."""
    path = directory / "run.json"
    state = _io.read_json(path)
    state.update(changes)
    _io.write_json(path, state)


def test_a_completed_count_that_disagrees_with_the_checkpoint_is_refused(tmp_path, fakes):
    _run(fakes, tmp_path, 3)
    _rewrite_run_json(tmp_path, completed=1)
    with pytest.raises(StateFileError) as info:
        _run(fakes, tmp_path, 4)
    message = str(info.value)
    assert f"{str(tmp_path / 'run.json')!r} records 1 completed steps" in message
    assert f"names the checkpoint {os.path.join('checkpoints', '000002')!r}" in message
    assert "pass overwrite=True" in message
    with pytest.raises(StateFileError, match="records 1 completed steps"):
        load_history(tmp_path)


def test_a_run_json_naming_a_missing_checkpoint_is_refused(tmp_path, fakes):
    _run(fakes, tmp_path, 3)
    _rewrite_run_json(tmp_path, completed=2, checkpoint=os.path.join("checkpoints", "000001"))
    with pytest.raises(StateFileError) as info:
        _run(fakes, tmp_path, 4)
    manifest = tmp_path / "checkpoints" / "000001" / "controller" / "controller.json"
    assert f"{str(tmp_path / 'run.json')!r} names the checkpoint" in str(info.value)
    assert f"but {str(manifest)!r} does not exist" in str(info.value)


def test_a_controller_state_from_another_moment_is_refused_naming_both_files(tmp_path, fakes):
    _run(fakes, tmp_path, 3)
    shutil.copytree(tmp_path / "checkpoints" / "000002", tmp_path / "checkpoints" / "000001")
    _rewrite_run_json(
        tmp_path,
        completed=2,
        checkpoint=os.path.join("checkpoints", "000001"),
        controller_iteration=2,
    )
    with pytest.raises(StateFileError) as info:
        _run(fakes, tmp_path, 4)
    message = str(info.value)
    manifest = tmp_path / "checkpoints" / "000001" / "controller" / "controller.json"
    assert f"{str(tmp_path / 'run.json')!r} records a controller told 2 decisions" in message
    assert f"the one saved in {str(manifest)!r} was told 3" in message


def test_history_lines_out_of_order_are_refused(tmp_path, fakes):
    _run(fakes, tmp_path, 3)
    path = tmp_path / "history.jsonl"
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[1], lines[0], lines[2]]) + "\n")  # each line intact
    with pytest.raises(StateFileError, match=r"history\.jsonl', line 1, is step 1, not step 0"):
        _run(fakes, tmp_path, 4)


def test_a_run_json_of_an_older_version_still_resumes(tmp_path, fakes):
    full = _run(fakes, tmp_path / "a", 4)
    _run(fakes, tmp_path / "b", 2)
    state = json.loads((tmp_path / "b" / "run.json").read_text())
    for key in ("checksum", "controller_iteration"):  # written before these existed
        state.pop(key)
    (tmp_path / "b" / "run.json").write_text(json.dumps(state))
    assert _summary(_run(fakes, tmp_path / "b", 4)) == _summary(full)


def _dead_pid():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_leftovers_of_a_crash_are_removed_on_the_next_call(tmp_path, fakes):
    first = _run(fakes, tmp_path, 3)
    dead = _dead_pid()
    stale = [
        tmp_path / f"run.json.tmp-{dead}",
        tmp_path / f"best_plan.json.tmp-{dead}",
        tmp_path / "steps" / f"000001.npz.tmp-{dead}",
        tmp_path / "checkpoints" / "000002" / "controller" / f"controller.json.tmp-{dead}",
    ]
    for path in stale:
        path.write_text("cut short")
    superseded = tmp_path / "checkpoints" / "000000"  # its removal was cut by a crash
    shutil.copytree(tmp_path / "checkpoints" / "000002", superseded)
    in_progress = tmp_path / f"run.json.tmp-{os.getppid()}"  # a live writer, newer: kept
    in_progress.write_text("{")
    uncommitted = tmp_path / "checkpoints" / "000007"  # newer than the commit: kept
    uncommitted.mkdir()
    again = _run(fakes, tmp_path, 3)
    assert _summary(again) == _summary(first)
    assert not [p for p in stale if p.exists()] and not superseded.exists()
    assert in_progress.exists() and uncommitted.exists()
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["000002", "000007"]


def test_a_full_disk_at_the_commit_keeps_the_last_committed_step(tmp_path, fakes, monkeypatch):
    full = _run(fakes, tmp_path / "a", 3)
    d = tmp_path / "b"
    _run(fakes, d, 2)
    real_open = os.open

    def full_disk(path, flags, *args, **kwargs):
        if os.path.basename(os.fspath(path)).startswith("run.json.tmp-"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", full_disk)
    with pytest.raises(StateWriteError) as info:
        _run(fakes, d, 3)
    assert f"Cannot write {str(d / 'run.json')!r}: the disk (or the quota) is full" in str(
        info.value
    )
    monkeypatch.undo()
    assert json.loads((d / "run.json").read_text())["completed"] == 2  # intact
    assert not [p for p in os.listdir(d) if ".tmp-" in p]
    assert _summary(_run(fakes, d, 3)) == _summary(full)
