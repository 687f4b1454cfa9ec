"""The persistence toolkit: atomic tagged files, clear errors, append-only array logs."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from tfembsize import _io
from tfembsize.errors import StateFileError


def test_json_round_trip_with_tag(tmp_path):
    path = tmp_path / "sub" / "state.json"
    _io.write_json(path, {"step": 3, "format": "ignored"}, format="t.State", version=2)
    raw = json.loads(path.read_text())
    assert raw == {"format": "t.State", "version": 2, "step": 3}
    assert _io.read_json(path, format="t.State", max_version=2)["step"] == 3
    assert not [p for p in os.listdir(path.parent) if ".tmp-" in p]


def test_json_errors_name_the_path(tmp_path):
    path = tmp_path / "state.json"
    with pytest.raises(StateFileError, match="does not exist"):
        _io.read_json(path, what="run state")
    path.write_text('{"format": "t.State", "ver')
    with pytest.raises(StateFileError, match=r"state\.json.*not valid JSON"):
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
    with pytest.raises(StateFileError, match=r"a\.npz.*not a readable \.npz"):
        _io.read_npz(path)
    with pytest.raises(ValueError, match="reserved key"):
        _io.write_npz(path, {"__format__": np.zeros(1)})
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
