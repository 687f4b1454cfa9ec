"""JSON helpers of the protocol: numpy scalars and arrays as plain JSON values."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

__all__ = ["jsonable", "plain"]


def jsonable(o: Any) -> Any:
    """``default=`` for `json.dumps`: numpy scalars and arrays as Python values, else `str`."""
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def plain(payload: Any) -> Any:
    """``payload`` with every value made JSON-serialisable by `jsonable` (a deep copy)."""
    return json.loads(json.dumps(payload, default=jsonable))
