"""Every kind of file a real run leaves, damaged in every way, then read back.

A small search (a baseline controller with a growing log, arrays and a network variable,
driven by `search.run` against a `KerasEnvironment`), an unfinished and a finished `train_bpr`
checkpoint and saved size plans are written once. Each test copies them, damages one file
(truncated, emptied, random bytes, one byte flipped, a value edited in otherwise valid
content, another format tag) and repeats what reads it. The read must fail with
`StateFileError` naming the file and the way out, or be provably harmless: the call succeeds
with exactly the result of the undamaged files (files that are only outputs are rewritten;
a damaged checkpoint pointer is replaced by the newest intact checkpoint). Nothing is silent.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil

import numpy as np
import pytest
import tensorflow as tf

from tfembsize import _io
from tfembsize._keras import keras
from tfembsize.controllers import ES
from tfembsize.data import synthetic
from tfembsize.errors import StateFileError
from tfembsize.metrics import RankingEvaluator
from tfembsize.models import MF, TrainConfig, train_bpr
from tfembsize.plan import SizePlan
from tfembsize.search import KerasEnvironment, run

SPARSITIES = (0.5, 0.75)
CONFIG = TrainConfig(learning_rate=0.01, batch_size=64, max_steps=10, eval_every=5, patience=2)
WAY_OUT = r"overwrite=True|Delete the folder|Save the plan again"

# Every file the runs below leave (TensorBoard event files, written for viewing and never
# read back, aside), with the call that reads it. Outputs are rewritten from the committed
# state by the next call; a damaged checkpoint pointer is recovered.
FILES = {
    "run/run.json": "run",
    "run/history.jsonl": "run",
    "run/steps/000000.npz": "run",
    "run/steps/000001.npz": "run",
    "run/checkpoints/000001/controller/controller.json": "run",
    "run/checkpoints/000001/controller/arrays-*.npz": "run",
    "run/checkpoints/000001/controller/networks-*.index": "run",
    "run/checkpoints/000001/controller/networks-*.data-*": "run",
    "run/checkpoints/000001/env/state.json": "run",
    "run/checkpoints/000001/env/weights.npz": "run",
    "run/controller_logs/fitness/000000000000-000000000001.npz": "run",
    "run/controller_logs/fitness/000000000001-000000000002.npz": "run",
    "run/env/reference.npz": "run",
    "run/env/reference_weights.npz": "run",
    "run/best_plan.json": "run",
    "run/result.json": "run",
    "run/plans/c0.5.json": "run",
    "run/plans/c0.75.json": "run",
    "ckpt_open/LATEST": "ckpt_open",
    "ckpt_open/step-*/state.json": "ckpt_open",
    "ckpt_open/step-*/weights.npz": "ckpt_open",
    "ckpt_open/step-*/optimizer.npz": "ckpt_open",
    "ckpt_open/step-*/best.npz": "ckpt_open",
    "ckpt_open/step-*/best_result.json": "ckpt_open",
    "ckpt_done/LATEST": "ckpt_done",
    "ckpt_done/step-*/state.json": "ckpt_done",
    "ckpt_done/step-*/weights.npz": "ckpt_done",
    "ckpt_done/step-*/optimizer.npz": "ckpt_done",
    "ckpt_done/step-*/result.json": "ckpt_done",
    "plan.json": "plan",
    "plan.npz": "plan",
}
OUTPUTS = {"run/best_plan.json", "run/result.json", "run/plans/c0.5.json", "run/plans/c0.75.json"}
POINTERS = {"ckpt_open/LATEST", "ckpt_done/LATEST"}


def _modes(pattern: str) -> list[str]:
    if pattern.endswith((".json", ".npz")):
        return ["truncate", "zero", "random", "flip", "edit", "wrong_format"]
    if pattern.endswith((".jsonl", "LATEST")):
        return ["truncate", "zero", "random", "flip", "edit"]
    return ["truncate", "zero", "random", "flip"]  # TensorFlow's own checkpoint files


CASES = [(pattern, mode) for pattern in FILES for mode in _modes(pattern)]


# The runs ----------------------------------------------------------------------------------
class LoggedES(ES):
    """ES with what richer controllers save: a growing log, arrays and a network variable."""

    def __init__(self, sparsity, *, seed=None):
        super().__init__(sparsity, seed=seed)
        self._log = _io.AppendOnlyArrays({"fitness": ((), "float64")})
        self._var = tf.Variable(0.0)
        self.restored_told = None

    def _tell(self, decision, feedback):
        super()._tell(decision, feedback)
        self._log.append(fitness=[feedback.quality])
        self._var.assign_add(1.0)

    def _get_arrays(self):
        return {"told": np.arange(self.iteration)}

    def _set_arrays(self, arrays):
        self.restored_told = arrays["told"]

    def _array_logs(self):
        return {"fitness": self._log}

    def _trackables(self):
        return {"v": self._var}


class _KilledError(RuntimeError):
    pass


class KilledAtSecondValidation:
    """A real evaluator whose second validation raises (the training is killed there)."""

    def __init__(self, split):
        self.inner = RankingEvaluator(split)
        self.calls = 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def evaluate(self, *args, **kwargs):
        if kwargs.get("phase", "validation") == "validation":
            self.calls += 1
            if self.calls == 2:
                raise _KilledError("killed")
        return self.inner.evaluate(*args, **kwargs)


def _env(split):
    return KerasEnvironment(
        lambda: MF.create(split.num_users, split.num_items, 4),
        split,
        RankingEvaluator(split),
        train_config=CONFIG,
        reference_config=CONFIG,
    )


def _model(split):
    keras.utils.set_random_seed(7)
    return MF.create(split.num_users, split.num_items, 4)


def _attempt(kind, root, split):
    """Repeats the call that reads the files of ``kind``; returns a comparable summary."""
    if kind == "run":
        result = run(
            LoggedES(SPARSITIES, seed=0),
            _env(split),
            root / "run",
            iterations=2,
            verbose=0,
            tensorboard=False,
        )
        return [(r.iteration, r.plan.total_params(), r.feedback.quality) for r in result.history]
    if kind in ("ckpt_open", "ckpt_done"):
        out = train_bpr(
            _model(split),
            split,
            RankingEvaluator(split),
            config=CONFIG,
            checkpoint_dir=root / kind,
        )
        return [(h.step, h.value) for h in out.history], out.best_step, out.test.quality
    return SizePlan.load(root / "plan.json"), SizePlan.load(root / "plan.npz")


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """The files of every run, and what reading them gives when undamaged."""
    root = tmp_path_factory.mktemp("pristine")
    split = synthetic(30, 40, 500, seed=0).split(0.5, 0.25, 0.25, seed=42)
    for iterations in (1, 2):  # two calls: a resumed run, two chunks in the controller log
        run(
            LoggedES(SPARSITIES, seed=0),
            _env(split),
            root / "run",
            iterations=iterations,
            verbose=0,
            tensorboard=False,
        )
    with pytest.raises(_KilledError):
        train_bpr(
            _model(split),
            split,
            KilledAtSecondValidation(split),
            config=CONFIG,
            checkpoint_dir=root / "ckpt_open",
        )
    train_bpr(
        _model(split),
        split,
        RankingEvaluator(split),
        config=CONFIG,
        checkpoint_dir=root / "ckpt_done",
    )
    SizePlan({"user_embedding": [1, 2, 3], "item_embedding": [4]}).save(root / "plan.json")
    SizePlan({"user_embedding": [1, 2, 3], "item_embedding": [4]}).save(root / "plan.npz")
    shutil.rmtree(root / "run" / "tensorboard", ignore_errors=True)
    expected = {}
    for kind in ("run", "ckpt_open", "ckpt_done", "plan"):
        work = tmp_path_factory.mktemp(f"expected-{kind}")
        shutil.copytree(root, work, dirs_exist_ok=True)
        expected[kind] = _attempt(kind, work, split)
        if kind == "run":
            expected["outputs"] = {f: (work / f).read_bytes() for f in OUTPUTS}
    return root, split, expected


# Damage ----------------------------------------------------------------------------------------
def _last_number(node, path=()):
    """The path of the last int/float leaf (not a version or checksum) of a JSON value."""
    found = None
    items = (
        node.items()
        if isinstance(node, dict)
        else enumerate(node)
        if isinstance(node, list)
        else []
    )
    for key, value in items:
        if key in ("version", "checksum"):
            continue
        if isinstance(value, (dict, list)):
            found = _last_number(value, (*path, key)) or found
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            found = (*path, key)
    return found


def _edit_json(payload):
    where = _last_number(payload)
    assert where is not None
    node = payload
    for key in where[:-1]:
        node = node[key]
    node[where[-1]] = node[where[-1]] + 1
    return payload


def _npz_entries(path):
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def damage(path, mode):
    data = path.read_bytes()
    name = path.name
    if mode == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif mode == "zero":
        path.write_bytes(b"")
    elif mode == "random":
        path.write_bytes(np.random.default_rng(0).bytes(max(len(data), 16)))
    elif mode == "flip":
        flipped = bytearray(data)
        flipped[len(flipped) // 2] ^= 0x01
        path.write_bytes(bytes(flipped))
    elif mode == "edit" and name == "LATEST":
        path.write_text("step-000000099-deadbeef")  # a checkpoint that does not exist
    elif mode == "edit" and name.endswith(".jsonl"):
        lines = data.decode().splitlines()
        lines[0] = json.dumps(_edit_json(json.loads(lines[0])))
        path.write_text("\n".join(lines) + "\n")
    elif mode == "edit" and name.endswith(".json"):
        path.write_text(json.dumps(_edit_json(json.loads(data))))  # keeps the old checksum
    elif mode == "edit":
        arrays = _npz_entries(path)
        key = next(
            k
            for k, v in arrays.items()
            if not k.startswith("__") and v.dtype.kind in "iuf" and v.size
        )
        changed = arrays[key].copy()
        changed.flat[0] += 1
        arrays[key] = changed
        np.savez(path, **arrays)  # a valid archive, its old checksum kept
    elif mode == "wrong_format" and name.endswith(".json"):
        payload = json.loads(data)
        payload.pop("checksum", None)
        payload["format"] = "tfembsize.Other"
        _io.write_json(path, payload)  # a valid file of another kind
    elif mode == "wrong_format":
        arrays = {k: v for k, v in _npz_entries(path).items() if not k.startswith("__")}
        _io.write_npz(path, arrays, format="tfembsize.Other")
    else:
        raise AssertionError(mode)


# Tests -----------------------------------------------------------------------------------------
def test_every_file_a_run_leaves_is_covered(pristine):
    root, _, _ = pristine
    left = sorted(
        os.path.relpath(os.path.join(folder, f), root).replace(os.sep, "/")
        for folder, _, names in os.walk(root)
        for f in names
    )
    assert len(left) == len(FILES)  # one file per pattern, nothing unchecked
    for rel in left:
        assert [p for p in FILES if fnmatch.fnmatch(rel, p)], rel


@pytest.mark.parametrize("pattern, mode", CASES, ids=[f"{p}-{m}" for p, m in CASES])
def test_a_damaged_state_file_fails_naming_it_or_is_harmless(pristine, tmp_path, pattern, mode):
    root, split, expected = pristine
    shutil.copytree(root, tmp_path, dirs_exist_ok=True)
    (path,) = tmp_path.glob(pattern)
    damage(path, mode)
    kind = FILES[pattern]
    if pattern in OUTPUTS or pattern in POINTERS:
        # Harmless: the call gives the undamaged result and leaves sound files behind.
        assert _attempt(kind, tmp_path, split) == expected[kind]
        if pattern in OUTPUTS:
            assert path.read_bytes() == expected["outputs"][pattern]  # rewritten
        else:
            (step,) = [p.name for p in (tmp_path / kind).glob("step-*")]
            assert path.read_text() == step  # the pointer names the intact checkpoint
        return
    with pytest.raises(StateFileError) as info:
        _attempt(kind, tmp_path, split)
    message = str(info.value)
    assert str(path) in message, message
    assert re.search(WAY_OUT, message), message
