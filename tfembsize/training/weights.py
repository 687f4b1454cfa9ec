"""Model weights as plain arrays: copy, assign (shape-checked), save and load (``.npz``)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from tfembsize import _io

__all__ = ["assign_weights", "get_weights", "load_weights", "save_weights"]

_FORMAT = "tfembsize.Weights"


def get_weights(model: Any) -> list[np.ndarray]:
    """Copies of every variable of ``model`` (``model.weights`` order)."""
    return [np.array(v.numpy(), copy=True) for v in model.weights]


def assign_weights(model: Any, values: list[np.ndarray], *, source: str = "Stored weights") -> None:
    """Assigns ``values`` to ``model.weights`` after checking their count and shapes.

    Args:
        model: the model.
        values: one array per variable, as `get_weights` returns them.
        source: what the values are, for error messages (e.g. the file they came from).

    Raises:
        ValueError: the count or a shape differs (the model changed since they were taken).
    """
    variables = model.weights
    if len(variables) != len(values):
        raise ValueError(
            f"{source} hold {len(values)} arrays but the model has {len(variables)} variables; "
            "the model changed since they were stored."
        )
    for v, w in zip(variables, values, strict=True):
        if tuple(v.shape) != tuple(w.shape):
            raise ValueError(
                f"{source}: the weight for {v.name} has shape {w.shape}, the variable "
                f"{tuple(v.shape)}."
            )
        v.assign(w)


def save_weights(path: str | os.PathLike[str], values: list[np.ndarray]) -> None:
    """Writes the arrays of `get_weights` atomically to an ``.npz`` file."""
    _io.write_npz(path, {f"w{i:04d}": np.asarray(w) for i, w in enumerate(values)}, format=_FORMAT)


def load_weights(path: str | os.PathLike[str]) -> list[np.ndarray]:
    """Reads arrays written by `save_weights` (files without a format tag are read too)."""
    arrays = _io.read_npz(path, format=_FORMAT, what="saved weights", untagged=True)
    return [arrays[k] for k in sorted(arrays)]
