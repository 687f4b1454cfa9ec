"""TrainCheckpoint on damaged or leftover files: the pointer, superseded folders, full disks."""

from __future__ import annotations

import errno
import logging
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from tfembsize._keras import keras
from tfembsize.data import synthetic
from tfembsize.errors import StateFileError, StateWriteError
from tfembsize.metrics import RankingEvaluator
from tfembsize.models import MF
from tfembsize.training import TrainCheckpoint, TrainConfig, train_bpr

CONFIG = TrainConfig(
    learning_rate=0.01, batch_size=32, max_steps=30, eval_every=10, patience=5, evaluate_test=False
)


@pytest.fixture(scope="module")
def split():
    return synthetic(30, 40, 400, seed=0).split(0.5, 0.25, 0.25, seed=42)


class _KilledError(RuntimeError):
    pass


class CountingEvaluator:
    """A real evaluator that counts validations and raises on the ``crash_at``-th."""

    def __init__(self, split, crash_at=None):
        self.inner = RankingEvaluator(split)
        self.crash_at = crash_at
        self.calls = 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def evaluate(self, *args, **kwargs):
        if kwargs.get("phase", "validation") == "validation":
            self.calls += 1
            if self.calls == self.crash_at:
                raise _KilledError(f"killed at validation {self.calls}")
        return self.inner.evaluate(*args, **kwargs)


def _train(split, ckpt, crash_at=None, config=CONFIG):
    keras.utils.set_random_seed(7)
    model = MF.create(split.num_users, split.num_items, 8)
    evaluator = CountingEvaluator(split, crash_at)
    result = train_bpr(model, split, evaluator, config=config, checkpoint_dir=ckpt)
    return result, evaluator


def _killed_after_two_chunks(split, ckpt):
    with pytest.raises(_KilledError):
        _train(split, ckpt, crash_at=3)
    (folder,) = [p for p in ckpt.iterdir() if p.name.startswith("step-")]
    assert folder.name.startswith("step-000000020-")
    return folder


def _steps(ckpt):
    return sorted(p.name for p in ckpt.iterdir() if p.name.startswith("step-"))


@pytest.mark.parametrize("pointer", ["empty", "blank", "dangling", "garbage", "missing"])
def test_a_damaged_pointer_resumes_from_the_newest_intact_checkpoint(
    split, tmp_path, caplog, pointer
):
    expected, _ = _train(split, tmp_path / "plain")
    ckpt = tmp_path / "ckpt"
    folder = _killed_after_two_chunks(split, ckpt)
    latest = ckpt / "LATEST"
    if pointer == "missing":
        latest.unlink()
    else:
        latest.write_bytes(
            {
                "empty": b"",
                "blank": b" \n",
                "dangling": b"step-000000090-0badc0de",
                "garbage": b"\xff\xfe",
            }[pointer]
        )
    with caplog.at_level(logging.WARNING, logger="tfembsize.training.checkpoint"):
        resumed, evaluator = _train(split, ckpt)
    assert "resuming from the newest intact checkpoint " + folder.name in caplog.text
    assert evaluator.calls == 1  # only the third chunk ran: no restart from step 0
    np.testing.assert_allclose(
        [h.value for h in resumed.history], [h.value for h in expected.history], atol=1e-9
    )
    assert len(_steps(ckpt)) == 1 and latest.read_text() == _steps(ckpt)[0]


def test_a_damaged_pointer_without_an_intact_checkpoint_fails_and_deletes_nothing(split, tmp_path):
    ckpt = tmp_path / "ckpt"
    folder = _killed_after_two_chunks(split, ckpt)
    (ckpt / "LATEST").write_text("")
    (folder / "weights.npz").write_bytes(b"PK\x03\x04 damaged")
    with pytest.raises(StateFileError) as info:
        _train(split, ckpt)
    message = str(info.value)
    assert f"The training checkpoint pointer {str(ckpt / 'LATEST')!r} is empty" in message
    assert f"no intact step-* checkpoint is left in {str(ckpt)!r}" in message
    assert f"Delete the folder {str(ckpt)!r} to start this training over" in message
    assert _steps(ckpt) == [folder.name]  # the evidence is kept


def _dead_pid():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_leftovers_of_interrupted_saves_are_removed_on_the_next_call(split, tmp_path):
    ckpt = tmp_path / "ckpt"
    _train(split, ckpt, config=CONFIG.replace(max_steps=10))
    (committed,) = _steps(ckpt)
    older = ckpt / "step-000000000-0000abcd"  # superseded, its removal cut by a crash
    shutil.copytree(ckpt / committed, older)
    os.utime(older, (1, 1))
    dead_tmp = ckpt / f".tmp-{_dead_pid()}-{'a' * 32}"  # a save whose process died
    dead_tmp.mkdir()
    old_style = ckpt / f".tmp-{'b' * 32}"  # an older version's temporary, before LATEST
    old_style.mkdir()
    os.utime(old_style, (1, 1))
    live_tmp = ckpt / f".tmp-{os.getpid()}-{'c' * 32}"  # may still be in progress: kept
    live_tmp.mkdir()
    pointer_tmp = ckpt / f"LATEST.tmp-{_dead_pid()}"
    pointer_tmp.write_text("step-000000000-0000abcd")
    newer = ckpt / "step-000000099-0000ffff"  # newer than the committed one: never deleted
    shutil.copytree(ckpt / committed, newer)
    again, evaluator = _train(split, ckpt, config=CONFIG.replace(max_steps=10))
    assert evaluator.calls == 0  # finished: answered from the checkpoint
    left = sorted(p.name for p in ckpt.iterdir())
    assert left == sorted(["LATEST", committed, live_tmp.name, newer.name])


def test_a_save_never_deletes_a_newer_checkpoint(split, tmp_path):
    ckpt = tmp_path / "ckpt"
    folder = _killed_after_two_chunks(split, ckpt)
    newer = ckpt / "step-000000099-0000ffff"
    shutil.copytree(folder, newer)
    _train(split, ckpt)  # resumes from LATEST (step 20), saves steps 30 and the final one
    assert newer.is_dir() and folder.name not in _steps(ckpt)
    assert (ckpt / "LATEST").read_text().startswith("step-000000030-")


def test_a_full_disk_during_a_save_keeps_the_previous_checkpoint(split, tmp_path, monkeypatch):
    ckpt = tmp_path / "ckpt"
    folder = _killed_after_two_chunks(split, ckpt)
    real_open = os.open

    def full(path, flags, *args, **kwargs):  # a full disk refuses new files, not reads
        if os.fspath(path).startswith(str(ckpt)) and flags & os.O_CREAT:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", full)
    with pytest.raises(StateWriteError) as info:
        _train(split, ckpt)
    assert info.value.errno == errno.ENOSPC
    assert f"Cannot write '{ckpt}" in str(info.value) and "Free some space" in str(info.value)
    monkeypatch.undo()
    assert sorted(p.name for p in ckpt.iterdir()) == ["LATEST", folder.name]  # no leftovers
    assert TrainCheckpoint(ckpt).exists()
    resumed, evaluator = _train(split, ckpt)  # the previous checkpoint is intact
    assert evaluator.calls == 1
