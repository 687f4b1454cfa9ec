"""Crash-safe state of a `train_bpr` run, so a killed training resumes where it stopped.

After every validation chunk `train_bpr` writes, atomically, the model weights, the optimiser
state (Adam's moments and step counter), the variables of the training hook if it has any
(`TrainingHook.variables`), the best weights so far, the early-stopping state and the
evaluation history into ``checkpoint_dir``. Rerunning the same call with the same
``checkpoint_dir`` continues after the last written chunk with the sampler positioned at the
same step, so an interrupted run and an uninterrupted one take the same optimiser steps on the
same batches. When training has finished, the directory holds the final result and a rerun
returns it without training again.

Files are ``.npz`` arrays and a JSON state (no pickle). A checkpoint written for another
recipe, model layout or optimiser is refused with an error naming the difference rather than
silently mixed in.
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from tfembsize import _io

__all__ = ["TrainCheckpoint"]

logger = logging.getLogger(__name__)

_FORMAT = "tfembsize.TrainCheckpoint"
_VERSION = 1


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


def _assign_all(variables: list, values: list[np.ndarray], what: str) -> None:
    """Assigns saved arrays to variables, checking their number and shapes."""
    if len(values) != len(variables):
        raise ValueError(
            f"The checkpoint has {len(values)} {what} variables, the {what} has {len(variables)}."
        )
    for var, value in zip(variables, values, strict=True):
        if tuple(var.shape) != value.shape:
            raise ValueError(
                f"The {what} variable {getattr(var, 'name', '?')} has shape "
                f"{tuple(var.shape)}; the checkpoint's is {value.shape}."
            )
    for var, value in zip(variables, values, strict=True):
        var.assign(value)


def _save_arrays(path: Path, arrays: list[np.ndarray]) -> None:
    _io.write_npz(path, {f"a{i:05d}": np.asarray(a) for i, a in enumerate(arrays)})


def _load_arrays(path: Path) -> list[np.ndarray]:
    data = _io.read_npz(path, what="training checkpoint arrays")
    return [data[f"a{i:05d}"] for i in range(len(data))]


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

    @property
    def _current(self) -> Path:
        """The directory the ``LATEST`` pointer names (a missing one if there is none)."""
        pointer = self.directory / "LATEST"
        name = pointer.read_text().strip() if pointer.is_file() else "missing"
        return self.directory / name

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
        """True if a complete checkpoint is on disk."""
        return (self._current / "state.json").is_file()

    def load_state(self, fingerprint: dict) -> dict | None:
        """The saved JSON state (None if there is none); raises if it belongs to another run.

        Raises:
            ValueError: the checkpoint was written for another recipe, model or optimiser.
        """
        if not self.exists():
            return None
        state = _io.read_json(
            self._current / "state.json",
            format=_FORMAT,
            max_version=_VERSION,
            what="training checkpoint state",
        )
        saved = state["fingerprint"]
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
        """
        model.set_weights(_load_arrays(self._current / "weights.npz"))
        _assign_all(
            _optimizer_variables(optimizer),
            _load_arrays(self._current / "optimizer.npz"),
            "optimiser",
        )
        variables = _hook_variables(hook)
        if variables:
            path = self._current / "hook.npz"
            if not path.is_file():
                raise ValueError(
                    f"The training checkpoint in {self.directory} has no hook variables; "
                    f"{type(hook).__name__} has {len(variables)}."
                )
            _assign_all(variables, _load_arrays(path), "hook")

    def best_weights(self) -> list[np.ndarray] | None:
        """The best weights so far (None if none were kept)."""
        path = self._current / "best.npz"
        return _load_arrays(path) if path.is_file() else None

    def best_result(self) -> dict | None:
        """``RankingResult.to_dict()`` of the best evaluation so far (None if none)."""
        path = self._current / "best_result.json"
        return _io.read_json(path, what="training checkpoint") if path.is_file() else None

    def result(self) -> dict | None:
        """``TrainResult.to_dict()`` of a finished run (None while unfinished)."""
        path = self._current / "result.json"
        return _io.read_json(path, what="training checkpoint") if path.is_file() else None

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
        """
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = self.directory / f".tmp-{uuid.uuid4().hex}"
        tmp.mkdir()
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
                    shutil.copyfile(previous / "best.npz", tmp / "best.npz")
                else:
                    _save_arrays(tmp / "best.npz", best_weights)
            if best_result is not None:
                if reuse and (previous / "best_result.json").is_file():
                    shutil.copyfile(previous / "best_result.json", tmp / "best_result.json")
                else:
                    _io.write_json(tmp / "best_result.json", best_result, indent=None)
            if result is not None:
                _io.write_json(tmp / "result.json", result, indent=None)
            payload = dict(state, fingerprint=fingerprint)
            payload.pop("best_unchanged", None)
            _io.write_json(tmp / "state.json", payload, format=_FORMAT, version=_VERSION)
            final = self.directory / f"step-{int(state['steps']):09d}-{uuid.uuid4().hex[:8]}"
            os.replace(tmp, final)
            _io.write_bytes(self.directory / "LATEST", final.name.encode())  # the commit point
            for stale in self.directory.iterdir():  # this and earlier runs' leftovers
                if stale != final and stale.name.startswith(("step-", ".tmp-", ".LATEST-")):
                    if stale.is_dir():
                        shutil.rmtree(stale, ignore_errors=True)
                    else:
                        stale.unlink(missing_ok=True)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
