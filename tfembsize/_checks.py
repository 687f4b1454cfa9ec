"""Argument checks shared across the package (errors name the argument and the value)."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["positive_float", "positive_int"]


def positive_int(name: str, value: Any, minimum: int = 1) -> int:
    """An integer >= ``minimum`` (named ``name`` in the error), as ``int``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        kind = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ValueError(f"`{name}` must be {kind}. Received: {name}={value!r}")
    return int(value)


def positive_float(name: str, value: Any, *, allow_zero: bool = False) -> float:
    """A number > 0 (or >= 0 with ``allow_zero``), as ``float``."""
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    if not ok or not (float(value) >= 0.0 if allow_zero else float(value) > 0.0):
        kind = "a number >= 0" if allow_zero else "a positive number"
        raise ValueError(f"`{name}` must be {kind}. Received: {name}={value!r}")
    return float(value)
