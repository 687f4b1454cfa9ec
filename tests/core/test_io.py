"""The persistence toolkit: atomic tagged files, clear errors, append-only array logs."""

from __future__ import annotations

import errno
import json
import os

import numpy as np
import pytest

from tfembsize import _io
from tfembsize.errors import StateFileError, StateWriteError


def test_json_round_trip_with_tag(tmp_path):
    path = tmp_path / "sub" / "state.json"
    _io.write_json(path, {"step": 3, "format": "ignored"}, format="t.State", version=2)
    raw = json.loads(path.read_text())
    assert raw["checksum"].startswith("sha256:")
    assert {k: v for k, v in raw.items() if k != "checksum"} == {
        "format": "t.State",
        "version": 2,
        "step": 3,
    }
    got = _io.read_json(path, format="t.State", max_version=2)
    assert got == {"format": "t.State", "version": 2, "step": 3}  # the checksum is stripped
    assert not [p for p in os.listdir(path.parent) if ".tmp-" in p]


def test_json_errors_name_the_path(tmp_path):
    path = tmp_path / "state.json"
    with pytest.raises(StateFileError, match="does not exist"):
        _io.read_json(path, what="run state")
    path.write_text('{"format": "t.State", "ver')
    with pytest.raises(StateFileError, match=r"state\.json.*not valid JSON"):
        _io.read_json(path)
    path.write_text(" \n")
    with pytest.raises(StateFileError, match=r"state\.json' is empty"):
        _io.read_json(path)
    _io.write_json(path, {"a": 1}, format="t.Other")
    with pytest.raises(StateFileError, match="has format 't.Other'; expected 't.State'"):
        _io.read_json(path, format="t.State")
    _io.write_json(path, {"a": 1}, format="t.State", version=3)
    with pytest.raises(StateFileError, match="version 3; this tfembsize reads up to version 2"):
        _io.read_json(path, format="t.State", max_version=2)


def test_npz_round_trip_tag_and_errors(tmp_path):
    path = tmp_path / "a.npz"
    _io.write_npz(path, {"x": np.arange(4)}, format="t.Arrays")
    got = _io.read_npz(path, format="t.Arrays")
    assert list(got) == ["x"] and got["x"].tolist() == [0, 1, 2, 3]
    with pytest.raises(StateFileError, match="has format 't.Arrays'; expected 't.B'"):
        _io.read_npz(path, format="t.B")
    path.write_bytes(b"not a zip")
    with pytest.raises(StateFileError, match=r"a\.npz' is not an \.npz archive"):
        _io.read_npz(path)
    path.write_bytes(b"")
    with pytest.raises(StateFileError, match=r"a\.npz' is empty"):
        _io.read_npz(path)
    for reserved in ("__format__", "__checksum__"):
        with pytest.raises(ValueError, match="reserved key"):
            _io.write_npz(path, {reserved: np.zeros(1)})
    with pytest.raises(TypeError, match="dtype object"):
        _io.write_npz(path, {"o": np.array([{}], dtype=object)})


def test_append_jsonl(tmp_path):
    path = tmp_path / "h.jsonl"
    _io.append_jsonl(path, {"i": 0})
    _io.append_jsonl(path, {"i": 1})
    assert [json.loads(line)["i"] for line in path.read_text().splitlines()] == [0, 1]


FIELDS = {"s": ((2,), "float32"), "a": ((), "int64")}


def test_append_only_arrays_write_each_row_once(tmp_path):
    log = _io.AppendOnlyArrays(FIELDS)
    log.append(s=np.ones((3, 2)), a=[1, 2, 3])
    assert log.flush(tmp_path) == 3
    log.append(s=np.zeros((2, 2)), a=[4, 5])
    assert log.flush(tmp_path) == 5
    assert log.flush(tmp_path) == 5  # nothing new: no new chunk
    assert sorted(os.listdir(tmp_path)) == [
        "000000000000-000000000003.npz",
        "000000000003-000000000005.npz",
    ]
    got = _io.AppendOnlyArrays.load(tmp_path, FIELDS, 5)
    assert got["a"].tolist() == [1, 2, 3, 4, 5]
    assert got["s"].shape == (5, 2) and got["s"].dtype == np.float32
    # A committed length of 3 ignores the rows past it.
    assert _io.AppendOnlyArrays.load(tmp_path, FIELDS, 3)["a"].tolist() == [1, 2, 3]


def test_append_only_arrays_resume_after_uncommitted_flush(tmp_path):
    log = _io.AppendOnlyArrays(FIELDS)
    log.append(s=np.ones((2, 2)), a=[1, 2])
    committed = log.flush(tmp_path)
    log.append(s=np.ones((2, 2)), a=[99, 98])
    log.flush(tmp_path)  # crash before the caller records 4
    resumed = _io.AppendOnlyArrays.restore(tmp_path, FIELDS, committed)
    resumed.append(s=np.zeros((1, 2)), a=[3])
    assert resumed.flush(tmp_path) == 3
    assert _io.AppendOnlyArrays.load(tmp_path, FIELDS, 3)["a"].tolist() == [1, 2, 3]


def test_append_only_arrays_errors(tmp_path):
    log = _io.AppendOnlyArrays(FIELDS)
    with pytest.raises(ValueError, match=r"needs exactly the fields \['a', 's'\]"):
        log.append(s=np.ones((1, 2)))
    with pytest.raises(ValueError, match=r"Rows of 's' must have shape \(n, 2\)"):
        log.append(s=np.ones((1, 3)), a=[1])
    with pytest.raises(ValueError, match="same number of rows"):
        log.append(s=np.ones((2, 2)), a=[1])
    with pytest.raises(StateFileError, match="no chunk starting at row 0"):
        _io.AppendOnlyArrays.load(tmp_path, FIELDS, 2)


def test_append_only_arrays_into_a_new_folder_write_every_row(tmp_path):
    log = _io.AppendOnlyArrays(FIELDS)
    log.append(s=np.ones((2, 2)), a=[1, 2])
    log.flush(tmp_path / "a")
    log.append(s=np.ones((1, 2)), a=[3])
    assert log.flush(tmp_path / "a") == 3
    assert log.flush(tmp_path / "b") == 3  # a new folder gets all rows, not only the new one
    for folder in ("a", "b"):
        assert _io.AppendOnlyArrays.load(tmp_path / folder, FIELDS, 3)["a"].tolist() == [1, 2, 3]


# Checksums ----------------------------------------------------------------------------------
def test_an_edited_json_value_is_detected(tmp_path):
    path = tmp_path / "state.json"
    _io.write_json(path, {"completed": 3, "nested": {"x": [1.5, float("nan")]}}, format="t.S")
    raw = json.loads(path.read_text())
    assert _io.read_json(path, format="t.S")["completed"] == 3
    raw["completed"] = 4  # valid JSON, checksum kept
    path.write_text(json.dumps(raw))
    with pytest.raises(StateFileError, match=r"state\.json' does not match its checksum.*Restore"):
        _io.read_json(path, format="t.S")
    # The checksum's own key damaged: not taken for a file written before checksums.
    raw["completed"] = 3
    raw["checkstm"] = raw.pop("checksum")
    path.write_text(json.dumps(raw))
    with pytest.raises(StateFileError, match="damaged checksum entry \\('checkstm'\\)"):
        _io.read_json(path, format="t.S")


def test_files_written_before_checksums_still_load(tmp_path):
    path = tmp_path / "old.json"
    path.write_text(json.dumps({"format": "t.S", "version": 1, "step": 2}))
    assert _io.read_json(path, format="t.S")["step"] == 2
    old = tmp_path / "old.npz"
    np.savez(old, x=np.arange(3), __format__=np.array("t.A"))
    assert _io.read_npz(old, format="t.A")["x"].tolist() == [0, 1, 2]
    untagged = tmp_path / "untagged.npz"
    np.savez(untagged, x=np.arange(2))
    assert list(_io.read_npz(untagged, format="t.A", untagged=True)) == ["x"]
    with pytest.raises(StateFileError, match="has format None; expected 't.A'"):
        _io.read_npz(untagged, format="t.A")
    # `untagged` accepts a missing tag, never another one.
    _io.write_npz(untagged, {"x": np.arange(2)}, format="t.B")
    with pytest.raises(StateFileError, match="has format 't.B'; expected 't.A'"):
        _io.read_npz(untagged, format="t.A", untagged=True)


def test_an_edited_npz_array_is_detected(tmp_path):
    path = tmp_path / "a.npz"
    _io.write_npz(path, {"x": np.arange(4), "y": np.ones(2)}, format="t.A", compress=True)
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    assert str(arrays["__checksum__"]).startswith("sha256:")
    arrays["x"] = arrays["x"] + 1  # a valid archive with the old checksum
    np.savez(path, **arrays)
    with pytest.raises(StateFileError, match=r"a\.npz' does not match its checksum"):
        _io.read_npz(path, format="t.A")


def test_jsonl_lines_are_checksummed_and_counted(tmp_path):
    path = tmp_path / "h.jsonl"
    for i in range(3):
        _io.append_jsonl(path, {"i": i})
    assert _io.read_jsonl(path, 2) == [{"i": 0}, {"i": 1}]
    with open(path, "ab") as f:
        f.write(b'{"i": 3, "che')  # a line cut by a crash, past the committed count
    assert [x["i"] for x in _io.read_jsonl(path, 3)] == [0, 1, 2]
    with pytest.raises(StateFileError, match=r"line 4, is not valid JSON"):
        _io.read_jsonl(path, 4)
    with pytest.raises(StateFileError, match="holds 4 lines but 5 were committed"):
        _io.read_jsonl(path, 5)
    lines = path.read_text().splitlines()
    lines[1] = lines[1].replace('"i": 1', '"i": 7')
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(StateFileError, match=r"h\.jsonl', line 2, does not match its checksum"):
        _io.read_jsonl(path, 3)


def test_a_payload_may_not_hold_the_checksum_key(tmp_path):
    with pytest.raises(ValueError, match="reserved key 'checksum'"):
        _io.write_json(tmp_path / "x.json", {"checksum": 1})


# Failed writes --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "code, remedy",
    [
        (errno.ENOSPC, "Free some space there"),
        (errno.EROFS, "Write to a folder on a writable disk"),
        (errno.EACCES, "Fix the folder's permissions"),
    ],
)
@pytest.mark.parametrize("writer", ["json", "npz", "bytes"])
def test_a_failed_write_names_the_path_and_keeps_the_previous_file(
    tmp_path, monkeypatch, code, remedy, writer
):
    path = tmp_path / f"state.{'npz' if writer == 'npz' else 'json'}"
    write = {
        "json": lambda v: _io.write_json(path, {"v": v}, format="t.S"),
        "npz": lambda v: _io.write_npz(path, {"v": np.array(v)}, format="t.S"),
        "bytes": lambda v: _io.write_bytes(path, json.dumps({"v": v}).encode()),
    }[writer]
    read = {
        "json": lambda: _io.read_json(path, format="t.S")["v"],
        "npz": lambda: int(_io.read_npz(path, format="t.S")["v"]),
        "bytes": lambda: _io.read_json(path)["v"],
    }[writer]
    write(1)

    def fail(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "write", fail)
    with pytest.raises(StateWriteError) as info:
        write(2)
    message = str(info.value)
    assert info.value.errno == code and info.value.path == str(path)
    assert f"Cannot write {str(path)!r}" in message and remedy in message
    assert "previous version of the file, if there was one, is intact" in message
    monkeypatch.undo()
    assert read() == 1  # the committed file is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temporary left


def test_a_failed_open_or_append_names_the_path(tmp_path, monkeypatch):
    path = tmp_path / "h.jsonl"
    _io.append_jsonl(path, {"i": 0})
    real_open = os.open

    def fail(name, *args, **kwargs):
        if os.fspath(name).startswith(os.fspath(tmp_path)):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_open(name, *args, **kwargs)

    monkeypatch.setattr(os, "open", fail)
    with pytest.raises(StateWriteError, match=r"Cannot write '.*h\.jsonl': the disk .* is full"):
        _io.append_jsonl(path, {"i": 1})
    with pytest.raises(StateWriteError, match=r"Cannot write '.*x\.json'"):
        _io.write_json(tmp_path / "x.json", {"a": 1})
    monkeypatch.undo()
    assert _io.read_jsonl(path, 1) == [{"i": 0}]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["h.jsonl"]


# Leftovers ------------------------------------------------------------------------------------
def _dead_pid() -> int:
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_remove_stale_temporaries_keeps_what_may_still_be_committed(tmp_path):
    committed = tmp_path / "run.json"
    _io.write_json(committed, {"a": 1})
    dead = tmp_path / f"run.json.tmp-{_dead_pid()}"  # its writer is gone
    dead.write_text("x")
    live_new = tmp_path / f"best_plan.json.tmp-{os.getpid()}"  # a live writer, no target yet
    live_new.write_text("x")
    live_old = tmp_path / "sub" / f"run.json.tmp-{os.getpid()}"  # older than its target
    live_old.parent.mkdir()
    live_old.write_text("x")
    os.utime(live_old, (1, 1))
    (tmp_path / "sub" / "run.json").write_text("{}")
    other = tmp_path / "notes.tmp-x"  # not a temporary of ours
    other.write_text("x")
    assert _io.remove_stale_temporaries(tmp_path) == [str(dead)]
    assert _io.remove_stale_temporaries(tmp_path, recursive=True) == [str(live_old)]
    assert committed.exists() and live_new.exists() and other.exists()
    assert _io.remove_stale_temporaries(tmp_path / "missing") == []


def test_a_failed_log_flush_names_the_path_and_keeps_the_committed_chunks(tmp_path, monkeypatch):
    log = _io.AppendOnlyArrays(FIELDS)
    log.append(s=np.ones((2, 2)), a=[1, 2])
    committed = log.flush(tmp_path)
    log.append(s=np.ones((1, 2)), a=[3])

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(StateWriteError, match=r"Cannot write '.*000000000002-000000000003\.npz'"):
        log.flush(tmp_path)
    monkeypatch.undo()
    assert _io.AppendOnlyArrays.load(tmp_path, FIELDS, committed)["a"].tolist() == [1, 2]
    assert log.flush(tmp_path) == 3  # the next flush writes the rows again
    assert _io.AppendOnlyArrays.load(tmp_path, FIELDS, 3)["a"].tolist() == [1, 2, 3]
