"""Helpers and constants shared by the record modules."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from tfembsize.budget import Budget
from tfembsize.plan import SizePlan

__all__ = ["MODES", "PHASES", "SIDES", "STATUSES", "json_clean"]

MODES = ("scratch", "snapshot", "continue")
"""Environment modes: train from fresh initialisation, from the stored snapshot, or on."""

PHASES = ("search", "final")
"""``"search"``: a step of the search itself; ``"final"``: a candidate result trained in
full (e.g. BET's selective retraining, or the single plan of a baseline)."""

STATUSES = ("ok", "failed")
SIDES = ("user", "item")

_DECISION_FORMAT = "tfembsize.Decision"
_FEEDBACK_FORMAT = "tfembsize.Feedback"
_OBSERVATION_FORMAT = "tfembsize.Observation"
_FEEDBACK_ARRAYS = ("user_quality", "item_quality", "user_quality_ratio", "item_quality_ratio")


# Helpers ------------------------------------------------------------------------------------
def _frozen_array(name: str, value: Any, dtype: Any, *, allow_none: bool = False) -> Any:
    if value is None:
        if allow_none:
            return None
        raise ValueError(f"`{name}` is required. Received: {name}=None")
    arr = np.array(value, dtype=dtype, copy=True)
    if arr.ndim != 1:
        raise ValueError(f"`{name}` must be a 1-D array. Received shape {arr.shape}.")
    arr.flags.writeable = False
    return arr


def json_clean(name: str, value: Any) -> Any:
    """``value`` with numpy scalars made Python ones; raises TypeError for what JSON can't hold.

    Args:
        name: the argument's name, for the error message.
        value: numbers, strings, None, and lists/tuples/mappings of them.
    """
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value
    if isinstance(value, Mapping):
        return {str(k): json_clean(f"{name}[{k!r}]", v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_clean(f"{name}[{i}]", v) for i, v in enumerate(value)]
    raise TypeError(
        f"`{name}` must hold JSON values (numbers, strings, lists, dicts). Received "
        f"{type(value).__name__}."
    )


def _float_or_none(x: Any) -> float | None:
    return None if x is None else float(x)


def _encode_float(x: float | None) -> Any:
    # JSON has no NaN/inf; keep them as strings so the round trip is exact.
    if x is None:
        return None
    if math.isfinite(x):
        return x
    return repr(float(x))


def _decode_float(x: Any) -> float | None:
    if x is None:
        return None
    return float(x)


def _arrays_equal(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return a.shape == b.shape and np.array_equal(a, b, equal_nan=True)


def _file_kind(path: str, what: str) -> str:
    if path.endswith(".json"):
        return "json"
    if path.endswith(".npz"):
        return "npz"
    raise ValueError(f"{what} files end in .json or .npz. Received path={path!r}")


# Table layout -------------------------------------------------------------------------------
class _TableLayout:
    """Table bookkeeping shared by `Observation` and `Problem`.

    Subclasses provide ``tables`` (layer name -> ``"user"``/``"item"``), ``d_max`` and
    ``_counts()`` (users, items).
    """

    tables: Mapping[str, str]
    d_max: int

    def _counts(self) -> tuple[int, int]:
        """(users, items); implemented by the record."""
        raise NotImplementedError

    @property
    def user_tables(self) -> list[str]:
        """Names of the user-side tables."""
        return [n for n, s in self.tables.items() if s == "user"]

    @property
    def item_tables(self) -> list[str]:
        """Names of the item-side tables."""
        return [n for n, s in self.tables.items() if s == "item"]

    @property
    def tables_per_side(self) -> int:
        """Tables per side (1, or 2 for NCF's GMF and MLP tables)."""
        return len(self.user_tables)

    @property
    def num_entities(self) -> int:
        """Users plus items."""
        return sum(self._counts())

    @property
    def num_rows(self) -> int:
        """Rows of every table together: the ``N`` of the budget (NCF counts both tables)."""
        users, items = self._counts()
        return len(self.user_tables) * users + len(self.item_tables) * items

    @property
    def full_params(self) -> int:
        """Parameters of the full tables (every row at ``d_max``): the denominator of density.

        At least 1, so that a density never divides by zero (tables without rows).
        """
        return max(self.num_rows * self.d_max, 1)

    def budget(self, sparsity: float) -> Budget:
        """The budget for ``sparsity`` at this ``d_max``."""
        return Budget(sparsity=sparsity, d_max=self.d_max)

    def max_params(self, sparsity: float) -> int:
        """B(c) = floor((1 - c) * d_max * N) usable parameters."""
        return self.budget(sparsity).max_params_for(self.num_rows)

    def plan_from_sizes(self, user_sizes: Any, item_sizes: Any) -> SizePlan:
        """Builds the `SizePlan` that gives every user- and item-side table these sizes."""
        users, items = self._counts()
        u = np.asarray(user_sizes)
        i = np.asarray(item_sizes)
        if u.shape != (users,):
            raise ValueError(f"`user_sizes` must have shape ({users},). Received shape {u.shape}.")
        if i.shape != (items,):
            raise ValueError(f"`item_sizes` must have shape ({items},). Received shape {i.shape}.")
        return SizePlan({n: (u if s == "user" else i) for n, s in self.tables.items()})

    def sizes_from_plan(self, plan: SizePlan) -> tuple[np.ndarray, np.ndarray]:
        """The (user, item) size vectors of a plan (the first table of each side)."""
        return plan[self.user_tables[0]], plan[self.item_tables[0]]

    def full_plan(self) -> SizePlan:
        """The plan that gives every row the full width ``d_max``."""
        return self.plan_from_sizes(
            np.full(self._counts()[0], self.d_max, np.int32),
            np.full(self._counts()[1], self.d_max, np.int32),
        )
