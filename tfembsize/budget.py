"""Parameter budgets for embedding tables."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from tfembsize.errors import BudgetExceededError, BudgetInfeasibleError

__all__ = [
    "Budget",
    "cut_by_priority",
    "fill_by_priority",
    "water_fill_down",
    "water_fill_up",
]


@dataclass(frozen=True)
class Budget:
    """A hard limit on the usable parameters of one or several embedding tables.

    A budget spans every table it is applied to (users and items share one budget, as in
    the CIESS and BET papers). With ``sparsity`` c, the limit for tables with N rows in all
    is ``B = floor((1 - c) * d_max * N)`` usable parameters; with ``max_params`` the limit is
    that number whatever the row count.

    Args:
        sparsity: fraction of the full ``N x d_max`` table forced to zero, in (0, 1).
        max_params: an absolute limit on usable parameters (a positive integer).
        d_max: full embedding width.

    Example:
        >>> Budget(sparsity=0.9, d_max=128).max_params_for(1000)
        12800
    """

    sparsity: float | None = None
    max_params: int | None = None
    d_max: int = 128

    def __post_init__(self) -> None:
        if (self.sparsity is None) == (self.max_params is None):
            raise ValueError(
                "Budget takes exactly one of `sparsity` or `max_params`. Received: "
                f"sparsity={self.sparsity!r}, max_params={self.max_params!r}"
            )
        if self.sparsity is not None:
            s = self.sparsity
            if isinstance(s, bool) or not isinstance(s, (int, float, np.floating, np.integer)):
                raise TypeError(f"`sparsity` must be a float. Received: sparsity={s!r}")
            if not (0.0 < float(s) < 1.0) or math.isnan(float(s)):
                raise ValueError(f"`sparsity` must be in (0, 1). Received: sparsity={s!r}")
            object.__setattr__(self, "sparsity", float(s))
        if self.max_params is not None:
            m = self.max_params
            if isinstance(m, bool) or not isinstance(m, (int, np.integer)) or m < 1:
                raise ValueError(
                    f"`max_params` must be a positive integer. Received: max_params={m!r}"
                )
            object.__setattr__(self, "max_params", int(m))
        d = self.d_max
        if isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d < 1:
            raise ValueError(f"`d_max` must be a positive integer. Received: d_max={d!r}")
        object.__setattr__(self, "d_max", int(d))

    def max_params_for(self, num_rows: int) -> int:
        """Returns the parameter limit for tables with ``num_rows`` rows in all.

        Args:
            num_rows: total rows of every table the budget spans.

        Returns:
            ``floor((1 - sparsity) * d_max * num_rows)``, or ``max_params``.
        """
        if isinstance(num_rows, bool) or not isinstance(num_rows, (int, np.integer)):
            raise TypeError(f"`num_rows` must be an integer. Received: num_rows={num_rows!r}")
        if num_rows < 0:
            raise ValueError(f"`num_rows` must be >= 0. Received: num_rows={num_rows}")
        if self.max_params is not None:
            return self.max_params
        # Exact rational arithmetic: (1 - c) * d * N computed in floats can land a hair below
        # an integer and floor one parameter too low (or above and break the guarantee).
        from fractions import Fraction

        density = 1 - Fraction(repr(self.sparsity))
        return int(math.floor(density * self.d_max * int(num_rows)))

    def check_total(self, used: int, num_rows: int, *, what: str = "plan") -> None:
        """Raises `BudgetExceededError` if ``used`` exceeds the limit for ``num_rows`` rows."""
        limit = self.max_params_for(num_rows)
        if used > limit:
            raise BudgetExceededError(
                f"The {what} uses {used} usable parameters, {used - limit} more than the "
                f"budget of {limit} ({self.describe()}, {num_rows} rows).",
                used=used,
                limit=limit,
            )

    def describe(self) -> str:
        """A short human-readable description."""
        if self.sparsity is not None:
            return f"sparsity={self.sparsity:g}, d_max={self.d_max}"
        return f"max_params={self.max_params}, d_max={self.d_max}"

    def to_dict(self) -> dict:
        """JSON-serialisable form."""
        return {"sparsity": self.sparsity, "max_params": self.max_params, "d_max": self.d_max}

    @classmethod
    def from_dict(cls, d: dict) -> Budget:
        """Inverse of `to_dict`."""
        return cls(sparsity=d.get("sparsity"), max_params=d.get("max_params"), d_max=d["d_max"])


def water_fill_down(sizes: np.ndarray, excess: int, floor: int) -> np.ndarray:
    """Removes ``excess`` units, always from the currently largest entries, never below ``floor``.

    Equivalent to taking one unit at a time from the largest entry (ties: lower index first),
    computed in O(n log max) by finding the water level. The result has exactly
    ``sizes.sum() - excess`` units.

    Args:
        sizes: integer vector.
        excess: units to remove (nothing happens when ``<= 0``).
        floor: smallest value an entry may get.

    Returns:
        A new int64 vector.

    Raises:
        BudgetInfeasibleError: fewer than ``excess`` units lie above ``floor``.

    Example:
        >>> water_fill_down(np.array([8, 3, 6]), 6, 1).tolist()
        [4, 3, 4]
    """
    s = np.asarray(sizes, dtype=np.int64).copy()
    if excess <= 0:
        return s
    room = int(np.maximum(s - floor, 0).sum())
    if excess > room:
        raise BudgetInfeasibleError(
            f"Cannot remove {excess} parameters: only {room} lie above min_size={floor}."
        )
    # Find the smallest level L >= floor with sum(max(s - L, 0)) <= excess ... then cut the rest.
    lo, hi = floor, int(s.max())
    while lo < hi:  # smallest L with removed(L) <= excess
        mid = (lo + hi) // 2
        if int(np.maximum(s - mid, 0).sum()) <= excess:
            hi = mid
        else:
            lo = mid + 1
    level = lo
    removed = int(np.maximum(s - level, 0).sum())
    s = np.minimum(s, level)
    left = excess - removed
    if left > 0:  # take one more unit from `left` rows sitting at `level`
        at_level = np.flatnonzero(s == level)
        s[at_level[:left]] -= 1
    return s


def water_fill_up(sizes: np.ndarray, amount: int, ceil: int) -> np.ndarray:
    """Adds up to ``amount`` units, always to the currently smallest entries, never above ``ceil``.

    Equivalent to giving one unit at a time to the smallest entry (ties: lower index first).
    Stops when ``amount`` is used up or every entry is at ``ceil``.

    Args:
        sizes: integer vector.
        amount: units to hand out (nothing happens when ``<= 0``).
        ceil: largest value an entry may get.

    Returns:
        A new int64 vector.

    Example:
        >>> water_fill_up(np.array([1, 5, 2]), 4, 8).tolist()
        [4, 5, 3]
    """
    s = np.asarray(sizes, dtype=np.int64).copy()
    room = int(np.maximum(ceil - s, 0).sum())
    amount = min(int(amount), room)
    if amount <= 0:
        return s
    lo, hi = int(s.min()), ceil
    while lo < hi:  # largest L with added(L) <= amount
        mid = (lo + hi + 1) // 2
        if int(np.maximum(mid - s, 0).sum()) <= amount:
            lo = mid
        else:
            hi = mid - 1
    level = lo
    added = int(np.maximum(level - s, 0).sum())
    s = np.maximum(s, level)
    left = amount - added
    if left > 0:
        at_level = np.flatnonzero(s == level)
        s[at_level[:left]] += 1
    return s


def cut_by_priority(sizes: np.ndarray, priority: np.ndarray, excess: int, floor: int) -> np.ndarray:
    """Removes ``excess`` units from the lowest-priority entries first, never below ``floor``.

    Entries are visited in increasing priority (ties by index, lower index first); each is
    lowered to ``floor`` before the next is touched, and the last one visited only as far as
    needed. The result has exactly ``sizes.sum() - excess`` units.

    Args:
        sizes: integer vector.
        priority: one number per entry; higher is more important.
        excess: units to remove (nothing happens when ``<= 0``).
        floor: smallest value an entry may get.

    Returns:
        A new int64 vector.

    Raises:
        BudgetInfeasibleError: fewer than ``excess`` units lie above ``floor``.

    Example:
        >>> cut_by_priority(np.array([5, 5, 5]), np.array([2.0, 0.0, 1.0]), 6, 1).tolist()
        [5, 1, 3]
    """
    s = np.asarray(sizes, dtype=np.int64).copy()
    excess = int(excess)
    if excess <= 0:
        return s
    room = np.maximum(s - floor, 0)
    if excess > int(room.sum()):
        raise BudgetInfeasibleError(
            f"Cannot remove {excess} parameters: only {int(room.sum())} lie above min_size={floor}."
        )
    order = np.lexsort((np.arange(s.size), np.asarray(priority)))  # lowest priority first
    cum = np.cumsum(room[order])
    k = int(np.searchsorted(cum, excess))  # order[:k] go to floor, order[k] partially
    before = int(cum[k - 1]) if k > 0 else 0
    s[order[:k]] = np.minimum(s[order[:k]], floor)
    s[order[k]] -= excess - before
    return s


def fill_by_priority(sizes: np.ndarray, priority: np.ndarray, amount: int, ceil: int) -> np.ndarray:
    """Adds up to ``amount`` units to the highest-priority entries first, never above ``ceil``.

    Entries are visited in decreasing priority (ties by index, lower index first); each is
    raised to ``ceil`` before the next is touched. Stops when ``amount`` is used up or every
    entry is at ``ceil``.

    Args:
        sizes: integer vector.
        priority: one number per entry; higher is more important.
        amount: units to hand out (nothing happens when ``<= 0``).
        ceil: largest value an entry may get.

    Returns:
        A new int64 vector.

    Example:
        >>> fill_by_priority(np.array([1, 1, 1]), np.array([2.0, 0.0, 1.0]), 6, 4).tolist()
        [4, 1, 4]
    """
    s = np.asarray(sizes, dtype=np.int64).copy()
    room = np.maximum(ceil - s, 0)
    amount = min(int(amount), int(room.sum()))
    if amount <= 0:
        return s
    order = np.lexsort((np.arange(s.size), -np.asarray(priority, dtype=np.float64)))
    cum = np.cumsum(room[order])
    k = int(np.searchsorted(cum, amount))  # order[:k] go to ceil, order[k] partially
    before = int(cum[k - 1]) if k > 0 else 0
    s[order[:k]] = np.maximum(s[order[:k]], ceil)
    s[order[k]] += amount - before
    return s
