"""Crash-safe state of a `train_bpr` run, so a killed training resumes where it stopped.

After every validation chunk `train_bpr` writes, atomically, the model weights, the optimiser
state (Adam's moments and step counter), the variables of the training hook if it has any
(`TrainingHook.variables`), the best weights so far, the early-stopping state and the
evaluation history into ``checkpoint_dir``. Rerunning the same call with the same
``checkpoint_dir`` continues after the last written chunk with the sampler positioned at the
same step, so an interrupted run and an uninterrupted one take the same optimiser steps on the
same batches. When training has finished, the directory holds the final result and a rerun
returns it without training again.

Each save writes a new folder ``step-<steps>-<id>`` (weights, optimiser, best weights as
``.npz``; the loop state and results as JSON; every file checksummed, no pickle), then points
the ``LATEST`` file at it (the commit), then deletes the folders it supersedes. A checkpoint
written for another recipe, model layout or optimiser is refused with an error naming the
difference rather than silently mixed in.

On reading, an empty, unreadable or dangling ``LATEST`` (or a missing one beside ``step-*``
folders) is not taken for "no checkpoint": the newest ``step-*`` folder whose files all read
back intact is used (with a warning, and ``LATEST`` is repaired), and if there is none the
error names ``LATEST`` and the folder. Leftovers of interrupted saves (temporary folders and
files, superseded ``step-*`` folders older than the committed one) are deleted when the
checkpoint is next read or written; a save never deletes a folder newer than the one it
commits.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from tfembsize import _io
from tfembsize.errors import StateFileError

__all__ = ["TrainCheckpoint"]

logger = logging.getLogger(__name__)

_FORMAT = "tfembsize.TrainCheckpoint"
_VERSION = 1
_ARRAYS_FORMAT = _FORMAT + ".arrays"
_BEST_RESULT_FORMAT = "tfembsize.RankingResult/1"  # the tag RankingResult.to_dict carries
_RESULT_FORMAT = _FORMAT + ".result"
_STEP_DIR = re.compile(r"^step-(\d+)-[0-9a-f]+$")
_TMP_DIR = re.compile(r"^\.tmp-(?:(\d+)-)?[0-9a-f]+$")


def _optimizer_variables(optimizer: Any) -> list:
    variables = optimizer.variables
    if callable(variables):  # tf-keras legacy optimisers expose a method
        variables = variables()
    return list(variables)


_FINGERPRINT_KEYS = (
    "model",
    "weights",
    "optimizer",
    "optimizer_variables",
    "config",
    "hook_variables",
)


def _hook_variables(hook: Any) -> list:
    """The hook's checkpointed variables (none without a hook)."""
    if hook is None:
        return []
    fn = getattr(hook, "variables", None)
    return list(fn()) if callable(fn) else []


def _assign_all(
    variables: list, values: list[np.ndarray], what: str, path: Path, remedy: str
) -> None:
    """Assigns saved arrays to variables, checking their number and shapes first."""
    if len(values) != len(variables):
        raise StateFileError(
            f"The training checkpoint {os.fspath(path)!r} has {len(values)} {what} variables, "
            f"the {what} has {len(variables)}. {remedy}"
        )
    for var, value in zip(variables, values, strict=True):
        if tuple(var.shape) != value.shape:
            raise StateFileError(
                f"The {what} variable {getattr(var, 'name', '?')} has shape {tuple(var.shape)}; "
                f"the checkpoint {os.fspath(path)!r} holds {value.shape}. {remedy}"
            )
    for var, value in zip(variables, values, strict=True):
        var.assign(value)


def _save_arrays(path: Path, arrays: list[np.ndarray]) -> None:
    _io.write_npz(
        path, {f"a{i:05d}": np.asarray(a) for i, a in enumerate(arrays)}, format=_ARRAYS_FORMAT
    )


def _load_arrays(path: Path, remedy: str) -> list[np.ndarray]:
    data = _io.read_npz(
        path, format=_ARRAYS_FORMAT, what="training checkpoint arrays", remedy=remedy, untagged=True
    )
    names = [f"a{i:05d}" for i in range(len(data))]
    if sorted(data) != names:
        raise StateFileError(
            f"The training checkpoint arrays {os.fspath(path)!r} hold entries {sorted(data)[:5]}, "
            f"not a00000, a00001, ... {remedy}"
        )
    return [data[name] for name in names]


def _step_of(folder: Path) -> int:
    m = _STEP_DIR.match(folder.name)
    return -1 if m is None else int(m.group(1))


class TrainCheckpoint:
    """The on-disk state of one `train_bpr` run (see the module docstring).

    Args:
        directory: where the state lives (created on the first save).

    Example:
        >>> result = train_bpr(model, split, evaluator, checkpoint_dir="runs/mf")  # doctest: +SKIP
        >>> # killed? run the same line again: it continues after the last evaluation.
    """

    def __init__(self, directory: str | os.PathLike) -> None:
        if not isinstance(directory, (str, os.PathLike)) or not str(directory):
            raise TypeError(
                f"`checkpoint_dir` must be a non-empty path. Received: checkpoint_dir={directory!r}"
            )
        self.directory = Path(directory)
        self._resolved: Path | None = None

    @property
    def _remedy(self) -> str:
        return f"Delete the folder {os.fspath(self.directory)!r} to start this training over."

    @property
    def _current(self) -> Path:
        """The committed checkpoint folder (a missing path when there is none)."""
        found = self._resolve()
        return self.directory / "missing" if found is None else found

    def _resolve(self) -> Path | None:
        """The committed folder: the one ``LATEST`` names, else the newest intact one.

        Also deletes the leftovers of interrupted saves (see the module docstring).

        Raises:
            StateFileError: ``LATEST`` is damaged or dangling and no intact folder is left.
        """
        if self._resolved is not None and self._resolved.is_dir():
            return self._resolved
        pointer = self.directory / "LATEST"
        folders = sorted(
            (p for p in self.directory.glob("step-*") if _STEP_DIR.match(p.name) and p.is_dir()),
            key=lambda p: (_step_of(p), p.stat().st_mtime),
            reverse=True,
        )
        problem = None
        if pointer.is_file():
            try:
                name = pointer.read_bytes().decode("ascii").strip()
            except (OSError, UnicodeDecodeError):
                name, problem = "", "is not readable"
            if name and _STEP_DIR.match(name) and (self.directory / name / "state.json").is_file():
                self._resolved = self.directory / name
            elif problem is None:
                problem = "is empty" if not name else f"names {name!r}, which is not a checkpoint"
        elif folders:
            problem = "is missing"
        if self._resolved is None and problem is not None:
            for folder in folders:
                if self._intact(folder):
                    logger.warning(
                        "The training checkpoint pointer %s %s; resuming from the newest intact "
                        "checkpoint %s instead.",
                        pointer,
                        problem,
                        folder.name,
                    )
                    _io.write_bytes(pointer, folder.name.encode())
                    self._resolved = folder
                    break
            else:
                raise StateFileError(
                    f"The training checkpoint pointer {os.fspath(pointer)!r} {problem}, and no "
                    f"intact step-* checkpoint is left in {os.fspath(self.directory)!r}. "
                    f"{self._remedy}"
                )
        self._remove_leftovers()
        return self._resolved

    def _intact(self, folder: Path) -> bool:
        """True if every file of a checkpoint folder reads back (format and checksum)."""
        try:
            _io.read_json(folder / "state.json", format=_FORMAT, max_version=_VERSION)
            for name in ("weights.npz", "optimizer.npz", "best.npz"):
                if name != "best.npz" or (folder / name).is_file():
                    _load_arrays(folder / name, self._remedy)
            results = (("best_result.json", _BEST_RESULT_FORMAT), ("result.json", _RESULT_FORMAT))
            for name, fmt in results:
                if (folder / name).is_file():
                    _io.read_json(folder / name, format=fmt, untagged=name == "result.json")
        except StateFileError:
            return False
        return True

    def _remove_leftovers(self, after_save: bool = False) -> None:
        """Deletes temporary files and folders of dead saves and superseded folders.

        A ``step-*`` folder is removed only when it is older than the committed one; a
        temporary folder when its writer process is gone or it is older than ``LATEST``.
        """
        current = self._resolved
        if current is None or not self.directory.is_dir():
            return
        _io.remove_stale_temporaries(self.directory)
        pointer = self.directory / "LATEST"
        committed_at = pointer.stat().st_mtime if pointer.is_file() else float("inf")
        for entry in self.directory.iterdir():
            if entry == current or not entry.is_dir():
                continue
            step = _step_of(entry)
            m = _TMP_DIR.match(entry.name)
            if step >= 0:
                stale = step < _step_of(current) or (
                    step == _step_of(current) and entry.stat().st_mtime < current.stat().st_mtime
                )
            elif m is not None:
                pid = m.group(1)
                stale = entry.stat().st_mtime < committed_at or (
                    pid is not None and not _io.process_running(int(pid))
                )
            else:
                continue
            if stale:
                # After a save, the folder it supersedes goes as a matter of course; on a read,
                # a leftover is the trace of an interrupted run, worth a line in the log.
                log = logger.debug if after_save else logger.info
                log("Removing the superseded checkpoint leftover %s.", entry)
                shutil.rmtree(entry, ignore_errors=True)

    # -- identity --------------------------------------------------------------------------
    @staticmethod
    def fingerprint(model: Any, config: Any, optimizer: Any, hook: Any = None) -> dict:
        """What must match between the run that wrote a checkpoint and the one resuming it.

        A hook with variables adds their shapes (``hook_variables``); without any, the
        fingerprint is the same as with no hook.
        """
        cfg = config.to_dict()
        # How it runs, not what it computes; a larger `max_steps` continues a run.
        for key in ("verbose", "jit_compile", "max_steps"):
            cfg.pop(key, None)
        out = {
            "model": type(model).__name__,
            "weights": [list(map(int, np.shape(w))) for w in model.get_weights()],
            "optimizer": type(optimizer).__name__,
            "optimizer_variables": len(_optimizer_variables(optimizer)),
            "config": cfg,
        }
        variables = _hook_variables(hook)
        if variables:
            out["hook_variables"] = [list(map(int, v.shape)) for v in variables]
        return out

    # -- reading ---------------------------------------------------------------------------
    def exists(self) -> bool:
        """True if a complete checkpoint is on disk.

        Raises:
            tfembsize.errors.StateFileError: ``LATEST`` is damaged and no intact checkpoint
                folder is left.
        """
        return self._resolve() is not None

    def load_state(self, fingerprint: dict) -> dict | None:
        """The saved JSON state (None if there is none); raises if it belongs to another run.

        Raises:
            ValueError: the checkpoint was written for another recipe, model or optimiser.
            tfembsize.errors.StateFileError: a file of the checkpoint is damaged (the message
                names it and the way out).
        """
        if not self.exists():
            return None
        path = self._current / "state.json"
        state = _io.read_json(
            path,
            format=_FORMAT,
            max_version=_VERSION,
            what="training checkpoint state",
            remedy=self._remedy,
        )
        saved = state.get("fingerprint")
        missing = [k for k in ("fingerprint", "steps", "history") if k not in state]
        if missing or not isinstance(saved, dict):
            raise StateFileError(
                f"The training checkpoint state {os.fspath(path)!r} lacks the entries "
                f"{missing or ['fingerprint']}. {self._remedy}"
            )
        for key in _FINGERPRINT_KEYS:
            if saved.get(key) != fingerprint.get(key):
                raise ValueError(
                    f"The training checkpoint in {self.directory} was written by another run: "
                    f"its {key} is {saved.get(key)!r}, this run's is {fingerprint.get(key)!r}. "
                    "Use another `checkpoint_dir` or delete this one to start over."
                )
        return state

    def restore_into(self, model: Any, optimizer: Any, hook: Any = None) -> None:
        """Loads the saved weights, optimiser variables and hook variables.

        Call after ``optimizer.build`` and after the hook's ``on_train_begin`` (which makes
        its variables).

        Raises:
            tfembsize.errors.StateFileError: the saved arrays are damaged or do not fit.
        """
        weights_path = self._current / "weights.npz"
        weights = _load_arrays(weights_path, self._remedy)
        shapes = [tuple(np.shape(w)) for w in model.get_weights()]
        if [w.shape for w in weights] != shapes:
            raise StateFileError(
                f"The training checkpoint weights {os.fspath(weights_path)!r} hold "
                f"{len(weights)} arrays that do not fit the model's {len(shapes)} weights. "
                f"{self._remedy}"
            )
        model.set_weights(weights)
        path = self._current / "optimizer.npz"
        _assign_all(
            _optimizer_variables(optimizer),
            _load_arrays(path, self._remedy),
            "optimiser",
            path,
            self._remedy,
        )
        variables = _hook_variables(hook)
        if variables:
            path = self._current / "hook.npz"
            if not path.is_file():
                raise StateFileError(
                    f"The training checkpoint in {self.directory} has no hook variables "
                    f"(hook.npz); {type(hook).__name__} has {len(variables)}. {self._remedy}"
                )
            _assign_all(variables, _load_arrays(path, self._remedy), "hook", path, self._remedy)

    def best_weights(self) -> list[np.ndarray] | None:
        """The best weights so far (None if none were kept)."""
        path = self._current / "best.npz"
        return _load_arrays(path, self._remedy) if path.is_file() else None

    def best_result(self) -> dict | None:
        """``RankingResult.to_dict()`` of the best evaluation so far (None if none)."""
        return self._read_result("best_result.json", _BEST_RESULT_FORMAT, untagged=False)

    def result(self) -> dict | None:
        """``TrainResult.to_dict()`` of a finished run (None while unfinished)."""
        out = self._read_result("result.json", _RESULT_FORMAT, untagged=True)
        if out is not None:
            out.pop("format", None)
            out.pop("version", None)
        return out

    def _read_result(self, name: str, format: str, *, untagged: bool) -> dict | None:
        path = self._current / name
        if not path.is_file():
            return None
        payload = _io.read_json(
            path,
            format=format,
            what="training checkpoint result",
            remedy=self._remedy,
            untagged=untagged,
        )
        return dict(payload)

    # -- writing ---------------------------------------------------------------------------
    def save(
        self,
        state: dict,
        fingerprint: dict,
        model: Any,
        optimizer: Any,
        best_weights: list | None,
        best_result: dict | None = None,
        result: dict | None = None,
        hook: Any = None,
    ) -> None:
        """Writes a new checkpoint atomically (a crash leaves the previous one intact).

        Args:
            state: JSON-ready loop state; ``state["best_unchanged"]`` True copies the previous
                checkpoint's best weights and best result instead of writing them again.
            fingerprint: `fingerprint` of the run.
            model: the model (its current weights are saved).
            optimizer: its built optimiser (every variable is saved).
            best_weights: the best weights so far, or None.
            best_result: ``RankingResult.to_dict()`` of the best evaluation, or None.
            result: ``TrainResult.to_dict()`` once training has finished, else None.
            hook: the training hook; its `TrainingHook.variables` are saved (``hook.npz``).

        Raises:
            tfembsize.errors.StateWriteError: the disk is full, read-only or not writable;
                the previous checkpoint is intact.
        """
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            tmp = self.directory / f".tmp-{os.getpid()}-{uuid.uuid4().hex}"
            tmp.mkdir()
        except OSError as e:
            raise _io.write_error(self.directory, e) from e
        try:
            _save_arrays(tmp / "weights.npz", model.get_weights())
            _save_arrays(
                tmp / "optimizer.npz", [v.numpy() for v in _optimizer_variables(optimizer)]
            )
            variables = _hook_variables(hook)
            if variables:
                _save_arrays(tmp / "hook.npz", [np.asarray(v.numpy()) for v in variables])
            previous = self._current
            reuse = bool(state.get("best_unchanged"))
            if best_weights is not None:
                if reuse and (previous / "best.npz").is_file():
                    _copy(previous / "best.npz", tmp / "best.npz")
                else:
                    _save_arrays(tmp / "best.npz", best_weights)
            if best_result is not None:
                if reuse and (previous / "best_result.json").is_file():
                    _copy(previous / "best_result.json", tmp / "best_result.json")
                else:
                    _io.write_json(tmp / "best_result.json", best_result, indent=None)
            if result is not None:
                _io.write_json(tmp / "result.json", result, format=_RESULT_FORMAT, indent=None)
            payload = dict(state, fingerprint=fingerprint)
            payload.pop("best_unchanged", None)
            _io.write_json(tmp / "state.json", payload, format=_FORMAT, version=_VERSION)
            final = self.directory / f"step-{int(state['steps']):09d}-{uuid.uuid4().hex[:8]}"
            try:
                os.replace(tmp, final)
            except OSError as e:
                raise _io.write_error(final, e) from e
            _io.write_bytes(self.directory / "LATEST", final.name.encode())  # the commit point
            self._resolved = final
            self._remove_leftovers(after_save=True)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)


def _copy(source: Path, target: Path) -> None:
    """Copies a file of the previous checkpoint into the new one."""
    try:
        shutil.copyfile(source, target)
    except OSError as e:
        raise _io.write_error(target, e) from e
