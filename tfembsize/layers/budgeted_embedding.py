"""BudgetedEmbedding: a MaskedEmbedding whose sizes never exceed a parameter budget."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from tfembsize._keras import register_serializable
from tfembsize.budget import (
    Budget,
    cut_by_priority,
    fill_by_priority,
    water_fill_down,
)
from tfembsize.errors import BudgetInfeasibleError
from tfembsize.layers.masked_embedding import MaskedEmbedding
from tfembsize.plan import SizePlan

__all__ = ["BudgetedEmbedding", "ALLOCATIONS"]

logger = logging.getLogger(__name__)

ALLOCATIONS = ("uniform", "random", "frequency")


@register_serializable
class BudgetedEmbedding(MaskedEmbedding):
    """A `MaskedEmbedding` whose size vector satisfies a parameter budget at every moment.

    The budget is ``B = floor((1 - sparsity) * output_dim * input_dim)`` usable parameters
    (or ``max_params``). Every size vector the layer ever holds satisfies
    ``sum(sizes) <= B`` and ``min_size <= d <= output_dim``: the initial allocation is
    checked when it is made, and `assign_sizes` rejects an over-budget vector with
    `BudgetExceededError` (or repairs it with ``repair=True``).

    Initial allocations:

    * ``"uniform"``: every row gets ``min(output_dim, floor(B / input_dim))``, the largest
      equal size that fits (the papers' ES/SU baseline).
    * ``"random"``: random sizes under the budget (the papers' SR/MR baseline): row ``n``
      gets ``floor(u_n / sum(u) * B)`` with ``u_n ~ U(0, 1)`` drawn from ``seed``, clipped to
      ``[min_size, output_dim]``; any overshoot is cut from the largest rows and the units
      left over by rounding go to random rows, so the total is ``B`` (or every row is full).
    * ``"frequency"``: sizes proportional to ``frequencies`` (``floor(f_n / sum(f) * B)``),
      clipped to the bounds; an overshoot is cut from the least frequent rows first and the
      budget left over is handed to the most frequent rows first (up to ``output_dim``), so
      sizes never decrease with frequency.

    Args:
        input_dim: number of rows.
        output_dim: full width ``d_max``.
        sparsity: fraction of the table forced to zero, in (0, 1). Exactly one of
            ``sparsity`` and ``max_params``.
        max_params: absolute limit on usable parameters.
        allocation: ``"uniform"``, ``"random"`` or ``"frequency"``.
        frequencies: per-row frequencies (length ``input_dim``), needed by ``"frequency"``.
        seed: seed of the ``"random"`` allocation.
        **kwargs: `MaskedEmbedding` arguments.

    Example:
        >>> layer = BudgetedEmbedding(1000, 128, sparsity=0.9)
        >>> layer.usable_params() <= layer.max_params
        True

    References:
        Qu et al., "Budgeted Embedding Table For Recommender Systems", WSDM 2024.
    """

    def __init__(
        self,
        input_dim: int,
        output_dim: int,
        *,
        sparsity: float | None = None,
        max_params: int | None = None,
        allocation: str = "uniform",
        frequencies: Any = None,
        seed: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(input_dim, output_dim, **kwargs)
        self.budget = Budget(sparsity=sparsity, max_params=max_params, d_max=self.output_dim)
        self.sparsity = self.budget.sparsity
        self.max_params_arg = self.budget.max_params
        if allocation not in ALLOCATIONS:
            raise ValueError(
                f"`allocation` must be one of {ALLOCATIONS}. Received: allocation={allocation!r}"
            )
        self.allocation = allocation
        self.frequencies: np.ndarray | None = None
        if frequencies is not None:
            freq = np.asarray(frequencies, dtype=np.float64)
            if freq.shape != (self.input_dim,):
                raise ValueError(
                    f"`frequencies` must have shape ({self.input_dim},). "
                    f"Received shape {freq.shape}."
                )
            bad = np.flatnonzero(~np.isfinite(freq) | (freq < 0))
            if bad.size:
                raise ValueError(
                    "`frequencies` must be finite and non-negative. Received "
                    f"frequencies[{int(bad[0])}]={float(freq[bad[0]])!r}."
                )
            self.frequencies = freq
        if allocation == "frequency" and self.frequencies is None:
            raise ValueError('`allocation="frequency"` needs `frequencies`. Received None.')
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
            raise ValueError(f"`seed` must be an integer or None. Received: seed={seed!r}")
        self.seed = None if seed is None else int(seed)
        if self.min_size * self.input_dim > self.max_params:
            raise BudgetInfeasibleError(
                f"Layer '{self.name}': min_size={self.min_size} for {self.input_dim} rows needs "
                f"{self.min_size * self.input_dim} parameters, more than the budget of "
                f"{self.max_params} ({self.budget.describe()})."
            )
        self._initial_sizes = self._allocate()

    @property
    def max_params(self) -> int:
        """The layer's parameter budget B."""
        return self.budget.max_params_for(self.input_dim)

    def _allocate(self) -> np.ndarray:
        n, d_max, lo, limit = self.input_dim, self.output_dim, self.min_size, self.max_params
        if self.allocation == "uniform":
            sizes = np.full(n, min(d_max, limit // n), dtype=np.int64)
        elif self.allocation == "random":
            rng = np.random.default_rng(self.seed)
            shares = np.asarray(rng.random(n), dtype=np.float64) + 1e-12
            sizes = np.floor(shares / float(shares.sum()) * limit).astype(np.int64)
            sizes = np.clip(sizes, lo, d_max)
            sizes = water_fill_down(sizes, int(sizes.sum()) - limit, lo)
            sizes = _spread_randomly(sizes, limit - int(sizes.sum()), d_max, rng)
        else:
            freq = self.frequencies
            if freq is None:  # checked in __init__
                raise ValueError('`allocation="frequency"` needs `frequencies`. Received None.')
            total = freq.sum()
            share = freq / total if total > 0 else np.full(n, 1.0 / n)
            sizes = np.clip(np.floor(share * limit).astype(np.int64), lo, d_max)
            sizes = cut_by_priority(sizes, freq, int(sizes.sum()) - limit, lo)
            sizes = fill_by_priority(sizes, freq, limit - int(sizes.sum()), d_max)
        plan = SizePlan({self.name: sizes})
        plan.check(self.budget, min_size=lo)  # the guarantee, asserted
        return plan[self.name].copy()

    def initial_sizes(self) -> np.ndarray:
        """The initial allocation (already checked against the budget)."""
        return self._initial_sizes.copy()

    def assign_sizes(self, sizes: Any, *, repair: bool = False) -> None:
        """Sets the sizes; an over-budget vector is rejected, or repaired with ``repair=True``.

        Args:
            sizes: integer vector of length ``input_dim``.
            repair: if True, a vector that breaks the budget or the bounds is first repaired
                with `SizePlan.repair` (no priority: sizes clipped into
                ``[min_size, output_dim]``, the largest rows cut first, unused budget handed to
                the smallest rows); a vector that already fits is kept as is.

        Raises:
            TypeError: the sizes are not integers.
            ValueError: wrong length, or (without ``repair``) a size out of range.
            BudgetExceededError: the vector uses more than ``max_params`` and ``repair`` is
                False. The message names the excess.
        """
        arr = np.asarray(sizes)
        if repair:
            if arr.dtype.kind not in "iu":
                self.validate_sizes(arr)  # raises the dtype error
            plan = SizePlan.repaired({self.name: arr}, self.budget, min_size=self.min_size)
            arr = plan[self.name]
        arr = self.validate_sizes(arr)
        self.budget.check_total(
            int(arr.sum(dtype=np.int64)), self.input_dim, what=f"size vector of '{self.name}'"
        )
        super().assign_sizes(arr)

    def get_config(self) -> dict:
        """Exactly the constructor arguments."""
        config = super().get_config()
        config.update(
            {
                "sparsity": self.sparsity,
                "max_params": self.max_params_arg,
                "allocation": self.allocation,
                "frequencies": None if self.frequencies is None else self.frequencies.tolist(),
                "seed": self.seed,
            }
        )
        return config


def _spread_randomly(
    sizes: np.ndarray, amount: int, ceil: int, rng: np.random.Generator
) -> np.ndarray:
    """Adds ``amount`` units one per row to random rows below ``ceil``, in rounds."""
    s = sizes.astype(np.int64).copy()
    while amount > 0:
        open_rows = np.flatnonzero(s < ceil)
        if open_rows.size == 0:
            break
        take = rng.permutation(open_rows)[:amount]
        s[take] += 1
        amount -= take.size
    return s
