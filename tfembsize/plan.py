"""SizePlan: per-row embedding sizes for the tables of a model."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from tfembsize import _io
from tfembsize.budget import (
    Budget,
    cut_by_priority,
    fill_by_priority,
    water_fill_down,
    water_fill_up,
)
from tfembsize.errors import BudgetInfeasibleError, StateFileError

__all__ = ["SizePlan"]

_FORMAT = "tfembsize.SizePlan"


def _as_sizes(name: str, values: Any, *, draft: bool = False) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(
            f"SizePlan: sizes for {name!r} must be a 1-D vector. Received shape {arr.shape}."
        )
    if arr.dtype.kind not in "iu":
        if arr.size == 0:
            arr = arr.astype(np.int32)
        else:
            raise TypeError(
                f"SizePlan: sizes for {name!r} must be integers. Received dtype {arr.dtype}."
            )
    if arr.size and (arr.min() < np.iinfo(np.int32).min or arr.max() > np.iinfo(np.int32).max):
        raise ValueError(f"SizePlan: sizes for {name!r} do not fit in int32.")
    if not draft and arr.size and arr.min() < 1:
        row = int(np.argmin(arr))
        raise ValueError(
            f"SizePlan: sizes for {name!r} must be at least 1 (every row keeps at least one "
            f"coordinate). Received size {int(arr[row])} at row {row}. Raw sizes that may fall "
            "below 1 become a plan with SizePlan.repaired(tables, budget)."
        )
    out = arr.astype(np.int32, copy=True)
    out.flags.writeable = False
    return out


def _tables_of(tables: Any, *, draft: bool = False) -> dict[str, np.ndarray]:
    """Checked, read-only int32 copies of ``tables`` (``draft`` allows sizes below 1)."""
    if not isinstance(tables, Mapping):
        raise TypeError(
            f"SizePlan takes a mapping of layer name to sizes. Received {type(tables)!r}."
        )
    out: dict[str, np.ndarray] = {}
    for name, values in tables.items():
        if not isinstance(name, str) or not name:
            raise TypeError(f"SizePlan: layer names must be non-empty strings: {name!r}")
        out[name] = _as_sizes(name, values, draft=draft)
    return out


class SizePlan(Mapping):
    """Maps embedding-layer names to int32 vectors of per-row sizes.

    A plan is what a controller decides and what a searchable layer applies: row ``n`` of
    layer ``name`` keeps its first ``plan[name][n]`` coordinates. A plan is immutable; its
    methods return new plans.

    Sizes are checked when the plan is made: they must be integers of at least 1. A size of 0
    is refused too: no searchable layer can drop a row entirely (their ``min_size`` is at
    least 1). The upper bound, the full width ``d_max``, belongs to the layers or the budget,
    not to the plan, so it is checked where it is known: by `check` and `fits` against a
    budget (which `repair` enforces), and by `apply` against each layer's width (a size over
    it is refused, naming the layer, the row and the size, and no layer changes). Raw sizes
    that may fall below 1 (a policy's rounded output, say) become a plan through
    `SizePlan.repaired`.

    Args:
        tables: mapping of layer name to a 1-D integer array of sizes (one per row), each
            at least 1.

    Raises:
        TypeError: ``tables`` is not a mapping, a name is not a non-empty string, or sizes
            are not integers.
        ValueError: sizes are not a 1-D vector, do not fit in int32, or a size is below 1
            (the message names the table, the row and the size).

    Example:
        >>> plan = SizePlan({"user_embedding": [4, 2], "item_embedding": [1, 1, 8]})
        >>> plan.total_params()
        16
    """

    def __init__(self, tables: Mapping[str, Any]) -> None:
        self._tables: dict[str, np.ndarray] = _tables_of(tables)

    # Mapping protocol -------------------------------------------------------------------------
    def __getitem__(self, name: str) -> np.ndarray:
        return self._tables[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._tables)

    def __len__(self) -> int:
        return len(self._tables)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SizePlan):
            return NotImplemented
        return self.keys() == other.keys() and all(np.array_equal(self[k], other[k]) for k in self)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        parts = ", ".join(
            f"{k}: {len(v)} rows, {int(v.sum())} params" for k, v in self._tables.items()
        )
        return f"SizePlan({parts})"

    # Accounting -------------------------------------------------------------------------------
    def num_rows(self) -> int:
        """Total rows over all tables."""
        return int(sum(v.size for v in self._tables.values()))

    def total_params(self) -> int:
        """Usable parameters: the sum of every size."""
        return int(sum(int(v.sum(dtype=np.int64)) for v in self._tables.values()))

    def check(self, budget: Budget, *, min_size: int = 1) -> None:
        """Raises if the plan breaks the budget or the bounds ``min_size <= d <= d_max``.

        Raises:
            BudgetExceededError: usable parameters exceed ``budget.max_params_for(rows)``;
                the message names the excess.
            ValueError: a size lies outside ``[min_size, budget.d_max]``.
        """
        self._check_bounds(min_size, budget.d_max)
        budget.check_total(self.total_params(), self.num_rows(), what="size plan")

    def fits(self, budget: Budget, *, min_size: int = 1) -> bool:
        """True when `check` would pass."""
        try:
            self.check(budget, min_size=min_size)
        except ValueError:
            return False
        return True

    def _check_bounds(self, min_size: int, d_max: int) -> None:
        for name, v in self._tables.items():
            if v.size and (v.min() < min_size or v.max() > d_max):
                bad = int(v.min()) if v.min() < min_size else int(v.max())
                row = int(np.flatnonzero(v == bad)[0])
                raise ValueError(
                    f"SizePlan: sizes of {name!r} must lie in [{min_size}, {d_max}]. Received "
                    f"size {bad} at row {row}."
                )

    # Repair -----------------------------------------------------------------------------------
    def repair(
        self,
        budget: Budget,
        priority: Mapping[str, Any] | None = None,
        *,
        min_size: int = 1,
    ) -> SizePlan:
        """Returns a plan that satisfies ``budget`` and ``min_size <= d <= budget.d_max``.

        A plan that already satisfies both is returned unchanged. Otherwise sizes are first
        clipped into the bounds; if the total is still over the budget, parameters are cut from
        the lowest-priority rows first (each down to ``min_size`` before the next row is
        touched); then any budget left unused is handed back to the highest-priority rows
        (each up to ``d_max``) until the budget is exhausted or every row is full.

        Args:
            budget: the budget, spanning every table of the plan.
            priority: optional mapping of layer name to one number per row (higher is more
                important, e.g. frequencies). ``None`` treats all rows alike: the largest
                rows are cut first and the smallest rows are refilled first (ties by order).
            min_size: smallest size a row may get.

        Returns:
            A new `SizePlan` with the same names and lengths.

        Raises:
            BudgetInfeasibleError: even ``min_size`` for every row exceeds the budget.
            ValueError: ``min_size`` is not an integer in ``[1, d_max]``, or a priority vector
                has the wrong shape or non-finite values.
            KeyError: ``priority`` lacks one of the plan's layer names.

        Example:
            >>> plan = SizePlan({"users": [8, 8], "items": [8, 8]})
            >>> plan.repair(Budget(max_params=20, d_max=8),
            ...             {"users": [3, 0], "items": [2, 1]})["users"].tolist()
            [8, 1]
        """
        d_max = budget.d_max
        if (
            isinstance(min_size, bool)
            or not isinstance(min_size, (int, np.integer))
            or not 1 <= min_size <= d_max
        ):
            raise ValueError(
                f"`min_size` must be an integer in [1, d_max={d_max}]. "
                f"Received: min_size={min_size!r}"
            )
        names = list(self._tables)
        lengths = [self._tables[n].size for n in names]
        prio = None if priority is None else self._flat_priority(priority, names, lengths)
        if self.fits(budget, min_size=min_size):
            return self
        limit = budget.max_params_for(self.num_rows())
        if min_size * self.num_rows() > limit:
            raise BudgetInfeasibleError(
                f"min_size={min_size} for all {self.num_rows()} rows needs "
                f"{min_size * self.num_rows()} parameters, more than the budget of {limit} "
                f"({budget.describe()})."
            )
        flat = np.concatenate([self._tables[n] for n in names]).astype(np.int64)
        flat = np.clip(flat, min_size, d_max).astype(np.int64)
        if prio is None:  # no `priority`
            excess = int(flat.sum()) - limit
            if excess > 0:
                flat = water_fill_down(flat, excess, min_size)
            flat = water_fill_up(flat, limit - int(flat.sum()), d_max)
        else:
            flat = cut_by_priority(flat, prio, int(flat.sum()) - limit, min_size)
            flat = fill_by_priority(flat, prio, limit - int(flat.sum()), d_max)
        out: dict[str, np.ndarray] = {}
        start = 0
        for name, n in zip(names, lengths, strict=True):
            out[name] = flat[start : start + n]
            start += n
        plan = SizePlan(out)
        plan.check(budget, min_size=min_size)  # the guarantee, asserted
        return plan

    def scaled_to(self, budget: Budget) -> SizePlan:
        """The plan with every size multiplied by one factor, as large as ``budget`` allows.

        Sizes become ``clip(floor(s * d), 1, d_max)`` for the largest factor ``s`` whose total
        fits the budget (found by bisection); what rounding down leaves of the budget is then
        handed out one unit per row, largest original sizes first (ties: earlier rows), so
        the budget is spent unless every row is full. The shape of the allocation is kept:
        a larger size never becomes smaller than a smaller one, and equal sizes differ by at
        most one. A plan under its budget grows (one that spends a third of the budget gets
        about three times its sizes, up to ``d_max``); one over it shrinks.

        Args:
            budget: the budget, spanning every table of the plan.

        Returns:
            A new `SizePlan` within ``budget`` (asserted).

        Raises:
            BudgetInfeasibleError: even size 1 for every row exceeds the budget.
            ValueError: a size is below 1.

        Example:
            >>> SizePlan({"users": [1, 2], "items": [4]}).scaled_to(
            ...     Budget(max_params=16, d_max=8))["users"].tolist()
            [2, 6]
        """
        names = list(self._tables)
        flat = np.concatenate([self._tables[n] for n in names]).astype(np.int64)
        if flat.size and flat.min() < 1:
            raise ValueError(f"Every size must be at least 1. Received a size of {flat.min()}.")
        limit = budget.max_params_for(self.num_rows())
        if flat.size > limit:
            raise BudgetInfeasibleError(
                f"Size 1 for all {flat.size} rows needs {flat.size} parameters, more than the "
                f"budget of {limit} ({budget.describe()})."
            )
        d_max = budget.d_max

        def total(factor: float) -> int:
            return int(np.clip(np.floor(factor * flat), 1, d_max).sum())

        lo, hi = 0.0, float(d_max)  # total(d_max) is the all-full plan (or over the budget)
        if total(hi) <= limit:
            lo = hi
        else:
            for _ in range(100):
                mid = 0.5 * (lo + hi)
                if total(mid) <= limit:
                    lo = mid
                else:
                    hi = mid
        scaled = np.clip(np.floor(lo * flat), 1, d_max).astype(np.int64)
        order = np.lexsort((np.arange(flat.size), -flat))  # largest first, then earlier
        left = limit - int(scaled.sum())
        while left > 0:
            room = order[scaled[order] < d_max][:left]
            if room.size == 0:
                break
            scaled[room] += 1
            left -= int(room.size)
        out: dict[str, np.ndarray] = {}
        start = 0
        for name in names:
            n = self._tables[name].size
            out[name] = scaled[start : start + n]
            start += n
        plan = SizePlan(out)
        plan.check(budget)  # the guarantee, asserted
        return plan

    @classmethod
    def repaired(
        cls,
        tables: Mapping[str, Any],
        budget: Budget,
        priority: Mapping[str, Any] | None = None,
        *,
        min_size: int = 1,
    ) -> SizePlan:
        """A plan within ``budget`` made from raw sizes, which may lie outside the bounds.

        The sizes are taken as they are if they already satisfy the budget and
        ``min_size <= d <= budget.d_max``; otherwise they are repaired exactly as `repair`
        does (clipped into the bounds, cut by priority, unused budget handed back).

        Args:
            tables: mapping of layer name to a 1-D integer array of raw sizes (any integers).
            budget: the budget, spanning every table.
            priority: as in `repair`.
            min_size: smallest size a row may get.

        Returns:
            A valid `SizePlan` with the same names and lengths.

        Raises:
            BudgetInfeasibleError, ValueError, KeyError: as `repair`.

        Example:
            >>> SizePlan.repaired({"t": [0, 9, 1]}, Budget(max_params=12, d_max=8))["t"].tolist()
            [2, 8, 2]
        """
        draft = cls.__new__(cls)
        draft._tables = _tables_of(tables, draft=True)
        out = draft.repair(budget, priority, min_size=min_size)
        return cls(draft._tables) if out is draft else out

    def _flat_priority(
        self, priority: Mapping[str, Any], names: list[str], lengths: list[int]
    ) -> np.ndarray:
        parts = []
        for name, n in zip(names, lengths, strict=True):
            if name not in priority:
                raise KeyError(
                    f"`priority` has no entry for layer {name!r}. Received keys {sorted(priority)}."
                )
            p = np.asarray(priority[name], dtype=np.float64)
            if p.shape != (n,):
                raise ValueError(
                    f"`priority[{name!r}]` must have shape ({n},). Received shape {p.shape}."
                )
            if not np.all(np.isfinite(p)):
                raise ValueError(f"`priority[{name!r}]` contains NaN or infinite values.")
            parts.append(p)
        return np.concatenate(parts) if parts else np.zeros(0)

    # Persistence ------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """JSON-serialisable form."""
        return {
            "format": _FORMAT,
            "version": 1,
            "tables": {k: v.tolist() for k, v in self._tables.items()},
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SizePlan:
        """Inverse of `to_dict`."""
        if d.get("format") != _FORMAT:
            raise ValueError(f"Not a serialised SizePlan (format={d.get('format')!r}).")
        return cls(d["tables"])

    def save(self, path: str | os.PathLike) -> None:
        """Writes the plan as JSON (``.json``) or numpy ``.npz`` (never pickle), atomically.

        The file carries a checksum, so `load` detects a size edited or damaged afterwards.
        """
        path = os.fspath(path)
        if _kind(path) == "json":
            _io.write_json(path, self.to_dict(), indent=None)
        else:
            _io.write_npz(path, {f"table:{k}": v for k, v in self._tables.items()}, format=_FORMAT)

    @classmethod
    def load(cls, path: str | os.PathLike) -> SizePlan:
        """Reads a plan written by `save`.

        Raises:
            tfembsize.errors.StateFileError: the file is missing, damaged, edited after it
                was saved, not a plan, or holds sizes that are not a valid plan (the message
                names the path).
        """
        path = os.fspath(path)
        remedy = "Save the plan again, or restore the file from a backup."
        if _kind(path) == "json":
            payload = _io.read_json(path, format=_FORMAT, what="size plan", remedy=remedy)
            tables = payload.get("tables")
        else:
            arrays = _io.read_npz(
                path, format=_FORMAT, what="size plan", remedy=remedy, untagged=True
            )
            tables = {k[len("table:") :]: v for k, v in arrays.items() if k.startswith("table:")}
            if not tables or len(tables) != len(arrays):
                tables = None
        if not isinstance(tables, Mapping):
            raise StateFileError(f"The size plan {path!r} holds no tables. {remedy}")
        try:
            return cls(tables)
        except (TypeError, ValueError) as e:
            raise StateFileError(f"The size plan {path!r} is not a valid plan: {e} {remedy}") from e

    # Models -----------------------------------------------------------------------------------
    def apply(self, model: Any) -> None:
        """Assigns the sizes to the model's searchable layers, matched by layer name.

        The assignment is all or nothing: if any layer rejects its sizes (out of range, or
        over a `BudgetedEmbedding`'s budget), every layer keeps its previous sizes.

        Args:
            model: a Keras model (or layer) containing the plan's layers, at any depth.

        Raises:
            KeyError: a name of the plan is not a searchable layer of ``model``.
            ValueError: a size vector's length differs from the layer's ``input_dim``, or
                the layer rejects it (see the layer's ``assign_sizes``).
            BudgetExceededError: a budgeted layer's sizes exceed its budget.
        """
        from tfembsize.layers.utils import find_searchable_layers

        layers = find_searchable_layers(model)
        missing = [n for n in self._tables if n not in layers]
        if missing:
            raise KeyError(
                f"SizePlan names {missing} are not searchable layers of the model; it has "
                f"{sorted(layers)}."
            )
        for name, sizes in self._tables.items():
            if sizes.size != layers[name].input_dim:
                raise ValueError(
                    f"SizePlan: {name!r} has {sizes.size} sizes but the layer has input_dim="
                    f"{layers[name].input_dim}."
                )
        # All or nothing: if a layer rejects its sizes (range, budget), restore the others.
        previous = {name: layers[name].sizes for name in self._tables}
        try:
            for name, sizes in self._tables.items():
                layers[name].assign_sizes(sizes)
        except Exception:
            for name, sizes in previous.items():
                layers[name].sizes_variable.assign(sizes)
            raise

    @classmethod
    def from_model(cls, model: Any) -> SizePlan:
        """The current sizes of every searchable layer of ``model``."""
        from tfembsize.layers.utils import find_searchable_layers

        return cls({n: layer.sizes for n, layer in find_searchable_layers(model).items()})


def _kind(path: str) -> str:
    if path.endswith(".json"):
        return "json"
    if path.endswith(".npz"):
        return "npz"
    raise ValueError(f"SizePlan files end in .json or .npz. Received path={path!r}")
