"""BET's budget-aware action sampler (Qu et al., WSDM 2024).

An *action* sizes every user and item. Sizes are assigned by frequency rank (most frequent
first, ties by id), so an action is fully described by how many entities of each side get
each size: a histogram ``counts[side, d - 1]``. The sampler draws whole actions that satisfy
the budget by construction:

1. split the size budget S between users and items with w ~ U(w_lo, w_hi);
2. per side, pick a distribution family and its parameter beta, draw one value per entity,
   normalise to shares, and take ``floor(S_side * share)``;
3. repair: clamp to >= 1; if a size exceeds d_max redraw family and beta (up to R times,
   then clip); while the side is over its budget take one unit from the largest size;
4. assert that every action fits.

Everything is vectorised over candidates; only the variates are O(N) per candidate.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.special

from tfembsize.errors import BudgetExceededError, BudgetInfeasibleError

__all__ = [
    "ActionBatch",
    "BudgetedActionSampler",
    "FAMILIES",
    "DEFAULT_BETA_MAX",
    "SPLITS",
    "draw_family",
    "family_quantile",
    "frequency_order",
]

logger = logging.getLogger(__name__)

FAMILIES = ("power_law", "truncated_normal", "truncated_exponential", "log_normal")
"""The four share distributions BET draws sizes from (power law, truncated normal, truncated
exponential, log-normal; parameter beta ~ U(0, beta_max) with the maxima in `DEFAULT_BETA_MAX`)."""

DEFAULT_BETA_MAX = {
    "power_law": 20.0,
    "truncated_normal": 20.0,
    "truncated_exponential": 5.0,
    "log_normal": 0.5,
}
"""beta ~ U(0, beta_max) per family, the maxima of the BET authors' released code."""

SPLITS = ("feasible", "uniform")


def family_quantile(family: str, u: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """The quantile function of a BET family, applied to uniforms ``u`` (inverse CDF).

    Each is the closed form of the ``ppf`` of the `scipy.stats` distribution named below
    (tests check equality with ``scipy.stats.<dist>.ppf``); writing them out avoids scipy's
    generic argument handling, which costs more than the arithmetic at 10^7 values per
    iteration:

    * ``power_law``: density beta * x**(beta - 1) on [0, 1]: ``scipy.stats.powerlaw(beta)``,
      quantile u**(1/beta).
    * ``truncated_normal``: standard normal restricted to [0, beta]:
      ``scipy.stats.truncnorm(0, beta)``, quantile Phi^-1(1/2 + u (Phi(beta) - 1/2)).
    * ``truncated_exponential``: density proportional to exp(-x) on [0, beta]:
      ``scipy.stats.truncexpon(beta)``, quantile -log(1 - u (1 - exp(-beta))).
    * ``log_normal``: shape beta, scale 1: ``scipy.stats.lognorm(beta)``, quantile
      exp(beta * Phi^-1(u)).

    Args:
        family: one of `FAMILIES`.
        u: uniforms in [0, 1), shape ``[rows, num]``.
        beta: parameters > 0, shape ``[rows]`` (or broadcastable to ``[rows, 1]``).

    Returns:
        float64 array shaped like ``u``.
    """
    u = np.asarray(u, np.float64)
    beta = np.asarray(beta, np.float64).reshape(-1, 1)
    with np.errstate(divide="ignore", over="ignore", under="ignore", invalid="ignore"):
        if family == "power_law":
            return np.exp(np.log(u) / beta)
        if family == "truncated_normal":
            top = scipy.special.ndtr(beta) - 0.5
            return np.clip(scipy.special.ndtri(0.5 + u * top), 0.0, beta)
        if family == "truncated_exponential":
            return -np.log1p(u * np.expm1(-beta))
        if family == "log_normal":
            return np.exp(beta * scipy.special.ndtri(u))
    raise ValueError(f"`family` must be one of {FAMILIES}. Received: family={family!r}")


def draw_family(family: str, beta: np.ndarray, num: int, rng: np.random.Generator) -> np.ndarray:
    """Draws ``num`` values per row from a BET family with that row's ``beta``.

    Inverse-CDF sampling: ``family_quantile(family, rng.random((rows, num)), beta)``.

    Returns:
        float64 array ``[rows, num]``.
    """
    beta = np.asarray(beta, np.float64).reshape(-1)
    return family_quantile(family, rng.random((beta.size, num)), beta)


def frequency_order(frequencies: np.ndarray) -> np.ndarray:
    """Entity ids by descending frequency, ties by ascending id (rank r -> entity id)."""
    f = np.asarray(frequencies)
    return np.lexsort((np.arange(f.size), -f.astype(np.float64)))


@dataclass(frozen=True, eq=False)
class ActionBatch:
    """Candidate actions drawn by `BudgetedActionSampler.sample`.

    Attributes:
        counts: int64 ``[m, sides, d_max]``; ``counts[i, s, d - 1]`` entities of side ``s``
            get size ``d`` in action ``i`` (the largest sizes go to the most frequent).
        weights: float64 ``[m]``, the budget split w (the users' share).
        side_limits: int64 ``[m, sides]``, the size budget of each side.
        families: int8 ``[m, sides]``, index into `FAMILIES` of the accepted draw.
        betas: float64 ``[m, sides]``, the accepted parameter.
        redraws: int32 ``[m, sides]``, how many family/beta draws were rejected.
        clipped: bool ``[m, sides]``, True where R redraws failed and sizes were clipped.
    """

    counts: np.ndarray
    weights: np.ndarray
    side_limits: np.ndarray
    families: np.ndarray
    betas: np.ndarray
    redraws: np.ndarray
    clipped: np.ndarray

    def __len__(self) -> int:
        return int(self.counts.shape[0])

    def total_sizes(self) -> np.ndarray:
        """Sum of entity sizes per action (both sides), int64 ``[m]``."""
        d = np.arange(1, self.counts.shape[-1] + 1, dtype=np.int64)
        return (self.counts * d).sum(axis=(1, 2))

    def family_names(self, index: int) -> tuple[str, ...]:
        """Family name of each side of action ``index``."""
        return tuple(FAMILIES[int(f)] for f in self.families[index])


class BudgetedActionSampler:
    """Draws whole-table size allocations that meet a budget by construction (BET).

    Args:
        frequencies: training frequencies per side, ``(users, items)`` (or one side). Used
            only for the frequency-rank assignment of sizes to entities.
        size_limit: S, the budget on the total of entity sizes over both sides (for one
            table per side this is B(c) itself; `tfembsize.controllers.base.Problem`
            computes it).
        d_max: largest size.
        split: ``"feasible"`` (this library's default) draws w ~ U(N_U / S, 1 - N_V / S), so every
            entity can get size >= 1 (further capped so that no side gets more than N_side * d_max);
            ``"uniform"`` draws w ~ U(0, 1) as the paper and code, then clamps the users' budget
            into the same feasible range.
        per_action: True (the BET authors' code) draws family and beta anew for every action;
            False (the BET paper's Algorithm 1) draws them once per `sample` call for each side
            (a rejected draw is redrawn for that action only).
        families: the families to choose from (uniformly).
        beta_max: beta_max per family (defaults: `DEFAULT_BETA_MAX`).
        max_redraws: R, rejected family/beta draws per side before clipping to d_max.

    Raises:
        BudgetInfeasibleError: ``size_limit`` is below the number of entities.

    Example:
        >>> sampler = BudgetedActionSampler(([5, 3, 1], [4, 4]), size_limit=12, d_max=8)
        >>> batch = sampler.sample(10, np.random.default_rng(0))
        >>> bool((batch.total_sizes() <= 12).all())
        True

    References:
        Qu et al., "Budgeted Embedding Table For Recommender Systems", WSDM 2024.
    """

    def __init__(
        self,
        frequencies: Sequence[Any],
        size_limit: int,
        d_max: int,
        *,
        split: str = "feasible",
        per_action: bool = True,
        families: Sequence[str] = FAMILIES,
        beta_max: Mapping[str, float] | None = None,
        max_redraws: int = 50,
    ) -> None:
        if isinstance(frequencies, np.ndarray) and frequencies.ndim == 1:
            frequencies = [frequencies]
        self.frequencies = [np.asarray(f, np.int64) for f in frequencies]
        if not 1 <= len(self.frequencies) <= 2:
            raise ValueError(
                "`frequencies` must hold one or two sides (users, items). Received "
                f"{len(self.frequencies)} sides."
            )
        for i, f in enumerate(self.frequencies):
            if f.ndim != 1 or f.size == 0:
                raise ValueError(f"`frequencies[{i}]` must be a non-empty 1-D array.")
            if f.min() < 0:
                raise ValueError(f"`frequencies[{i}]` must be non-negative.")
        if isinstance(d_max, bool) or not isinstance(d_max, (int, np.integer)) or d_max < 1:
            raise ValueError(f"`d_max` must be a positive integer. Received: d_max={d_max!r}")
        self.d_max = int(d_max)
        self.sizes = np.array([f.size for f in self.frequencies], np.int64)
        if isinstance(size_limit, bool) or not isinstance(size_limit, (int, np.integer)):
            raise ValueError(f"`size_limit` must be an integer. Received: {size_limit!r}")
        self.size_limit = int(size_limit)
        if self.size_limit < self.sizes.sum():
            raise BudgetInfeasibleError(
                f"size_limit={self.size_limit} cannot give {int(self.sizes.sum())} entities "
                "size >= 1."
            )
        if split not in SPLITS:
            raise ValueError(f"`split` must be one of {SPLITS}. Received: split={split!r}")
        self.split = split
        self.per_action = bool(per_action)
        families = tuple(families)
        if not families or any(f not in FAMILIES for f in families):
            raise ValueError(
                f"`families` must be a non-empty subset of {FAMILIES}. Received: {families!r}"
            )
        self.families = families
        bm = dict(DEFAULT_BETA_MAX)
        if beta_max is not None:
            unknown = set(beta_max) - set(FAMILIES)
            if unknown:
                raise ValueError(f"`beta_max` has unknown families {sorted(unknown)}.")
            for k, v in beta_max.items():
                if not (isinstance(v, (int, float)) and v > 0):
                    raise ValueError(f"`beta_max[{k!r}]` must be > 0. Received: {v!r}")
                bm[k] = float(v)
        self.beta_max = bm
        if isinstance(max_redraws, bool) or not isinstance(max_redraws, int) or max_redraws < 0:
            raise ValueError(f"`max_redraws` must be an integer >= 0. Received: {max_redraws!r}")
        self.max_redraws = max_redraws
        self.orders = [frequency_order(f) for f in self.frequencies]
        self._family_index = np.array([FAMILIES.index(f) for f in self.families], np.int8)
        self._beta_max = np.array([bm[FAMILIES[i]] for i in self._family_index])

    @property
    def num_sides(self) -> int:
        """1 or 2."""
        return len(self.frequencies)

    # Budget split ----------------------------------------------------------------------------
    def split_bounds(self) -> tuple[int, int]:
        """Integer bounds [lo, hi] of the users' size budget S_U."""
        s = self.size_limit
        if self.num_sides == 1:
            return s, s
        nu, nv = int(self.sizes[0]), int(self.sizes[1])
        lo = max(nu, s - nv * self.d_max)
        hi = min(s - nv, nu * self.d_max)
        return lo, hi

    def _side_limits(self, rng: np.random.Generator, m: int) -> tuple[np.ndarray, np.ndarray]:
        s = self.size_limit
        if self.num_sides == 1:
            return np.ones(m), np.full((m, 1), s, np.int64)
        lo, hi = self.split_bounds()
        if self.split == "feasible":
            w = rng.uniform(lo / s, hi / s, size=m)
        else:
            w = rng.random(m)
        su = np.clip(np.floor(w * s).astype(np.int64), lo, hi)
        return w, np.stack([su, s - su], axis=1)

    # Sampling --------------------------------------------------------------------------------
    def _draw_params(self, rng: np.random.Generator, rows: int) -> tuple[np.ndarray, np.ndarray]:
        pick = rng.integers(0, len(self.families), size=rows)
        fam = self._family_index[pick]
        beta = self._beta_max[pick] * (1.0 - rng.random(rows))  # in (0, beta_max]
        return fam, beta

    def _draw_side(
        self,
        side: int,
        fam: np.ndarray,
        beta: np.ndarray,
        limits: np.ndarray,
        rng: np.random.Generator,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Histograms [rows, d_max] of one draw per row, and whether each row is acceptable.

        Sizes are ``floor(limit * share)`` clamped to >= 1 (and, for the histogram of a
        rejected row, clipped to d_max); a row is acceptable when its shares are finite and
        no size exceeds d_max. A row whose shares are not finite counts as rejected and, if
        it stays rejected, gives every entity size 1.
        """
        n = int(self.sizes[side])
        d_max = self.d_max
        rows = fam.size
        counts = np.zeros((rows, d_max), np.int64)
        ok = np.zeros(rows, bool)
        # Row by row: each row's arrays stay in cache through the whole chain of operations.
        for r in range(rows):
            values = family_quantile(FAMILIES[int(fam[r])], rng.random((1, n)), beta[r : r + 1])[0]
            with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
                total = values.sum()
                scale = limits[r] / total
                largest = values.max() * scale
            if not (total > 0 and np.isfinite(scale) and np.isfinite(largest)):
                counts[r, 0] = n  # unusable draw (all zero or not finite): rejected
                continue
            ok[r] = largest < d_max + 1
            values *= scale  # limit * share
            np.minimum(values, d_max, out=values)
            hist = np.bincount(values.astype(np.int64), minlength=d_max + 1)  # floor, >= 0
            hist[1] += hist[0]  # the clamp to size >= 1
            counts[r] = hist[1:]
        return counts, ok

    def sample(self, num_actions: int, rng: np.random.Generator) -> ActionBatch:
        """Draws ``num_actions`` candidate actions, each within the budget (asserted).

        Args:
            num_actions: m.
            rng: the generator (its state advances; the result is a function of it).

        Returns:
            An `ActionBatch`.

        Raises:
            BudgetExceededError: an action breaks the budget (a bug; never expected).
        """
        if isinstance(num_actions, bool) or not isinstance(num_actions, (int, np.integer)):
            raise ValueError(f"`num_actions` must be a positive integer. Received: {num_actions!r}")
        if num_actions < 1:
            raise ValueError(f"`num_actions` must be a positive integer. Received: {num_actions}")
        if not isinstance(rng, np.random.Generator):
            raise TypeError(f"`rng` must be a numpy Generator. Received {type(rng).__name__}.")
        m = int(num_actions)
        k = self.num_sides
        d_max = self.d_max
        weights, limits = self._side_limits(rng, m)
        if self.per_action:
            fam, beta = self._draw_params(rng, m * k)
            fam, beta = fam.reshape(m, k), beta.reshape(m, k)
        else:
            f1, b1 = self._draw_params(rng, k)
            fam, beta = np.tile(f1, (m, 1)), np.tile(b1, (m, 1))
        counts = np.zeros((m, k, d_max), np.int64)
        redraws = np.zeros((m, k), np.int32)
        clipped = np.zeros((m, k), bool)
        for s in range(k):
            hist, ok = self._draw_side(s, fam[:, s], beta[:, s], limits[:, s], rng)
            for _ in range(self.max_redraws):
                bad = np.flatnonzero(~ok)
                if bad.size == 0:
                    break
                redraws[bad, s] += 1
                nf, nb = self._draw_params(rng, bad.size)
                fam[bad, s], beta[bad, s] = nf, nb
                hist[bad], ok[bad] = self._draw_side(s, nf, nb, limits[bad, s], rng)
            clipped[~ok, s] = True  # R redraws failed: sizes were clipped to d_max
            if not ok.all():
                logger.debug("%d actions clipped after %d redraws", (~ok).sum(), self.max_redraws)
            counts[:, s, :] = _water_fill_counts(hist, limits[:, s])
        batch = ActionBatch(
            counts=counts,
            weights=weights,
            side_limits=limits,
            families=fam.astype(np.int8),
            betas=beta,
            redraws=redraws,
            clipped=clipped,
        )
        self.check(batch)
        return batch

    def check(self, batch: ActionBatch) -> None:
        """Asserts bounds and budget for every action of ``batch``.

        Raises:
            BudgetExceededError: an action's total size exceeds ``size_limit``.
            ValueError: a side's counts do not cover its entities.
        """
        counts = batch.counts
        if counts.shape[1:] != (self.num_sides, self.d_max):
            raise ValueError(
                f"counts must have shape [m, {self.num_sides}, {self.d_max}]. Received "
                f"{counts.shape}."
            )
        if (counts < 0).any() or not np.array_equal(
            counts.sum(axis=2), np.broadcast_to(self.sizes, counts.shape[:2])
        ):
            raise ValueError("Every action must give each entity exactly one size.")
        totals = batch.total_sizes()
        worst = int(np.argmax(totals))
        if totals[worst] > self.size_limit:
            raise BudgetExceededError(
                f"BET action {worst} uses {int(totals[worst])} size units, more than the "
                f"limit of {self.size_limit}.",
                used=int(totals[worst]),
                limit=self.size_limit,
            )

    # Conversions -----------------------------------------------------------------------------
    def rank_sizes(self, counts: np.ndarray) -> list[np.ndarray]:
        """Sizes per side in rank order (descending) for one action's ``counts [sides, d_max]``."""
        d = np.arange(self.d_max, 0, -1, dtype=np.int32)
        return [np.repeat(d, np.asarray(c)[::-1]) for c in counts]

    def entity_sizes(self, counts: np.ndarray) -> list[np.ndarray]:
        """Sizes per side in entity-id order: the most frequent entity gets the largest size."""
        out = []
        for ranked, order in zip(self.rank_sizes(counts), self.orders, strict=True):
            sizes = np.empty(order.size, np.int32)
            sizes[order] = ranked
            out.append(sizes)
        return out

    def counts_from_sizes(self, sizes: Sequence[np.ndarray]) -> np.ndarray:
        """The histogram ``[sides, d_max]`` of per-side entity sizes (any order)."""
        if len(sizes) != self.num_sides:
            raise ValueError(f"Expected {self.num_sides} size arrays. Received {len(sizes)}.")
        out = np.zeros((self.num_sides, self.d_max), np.int64)
        for s, v in enumerate(sizes):
            v = np.asarray(v)
            if v.shape != (int(self.sizes[s]),) or v.min() < 1 or v.max() > self.d_max:
                raise ValueError(
                    f"sizes[{s}] must have shape ({int(self.sizes[s])},) and values in "
                    f"[1, {self.d_max}]."
                )
            out[s] = np.bincount(v - 1, minlength=self.d_max)
        return out


def _water_fill_counts(counts: np.ndarray, limits: np.ndarray) -> np.ndarray:
    """Repeatedly takes one unit from the largest size until each row's total <= its limit.

    Works on histograms ``counts [rows, d_max]`` (``counts[r, d - 1]`` entities of size d).
    Equivalent to lowering every size above a level L to L and then moving the remaining
    excess from level L to L - 1, with L the smallest level whose cut does not exceed the
    excess. Never lowers a size below 1 (feasible because each limit >= entities).
    """
    counts = counts.copy()
    rows, d_max = counts.shape
    d = np.arange(1, d_max + 1, dtype=np.int64)
    excess = (counts * d).sum(axis=1) - limits
    for r in np.flatnonzero(excess > 0):
        c = counts[r]
        e = int(excess[r])
        # cut(L) = sum_{d > L} (d - L) c_d for L = 1..d_max.
        above_cnt = np.cumsum(c[::-1])[::-1]  # entities with size >= d
        above_sum = np.cumsum((c * d)[::-1])[::-1]
        cnt_gt = np.append(above_cnt[1:], 0)  # size > L
        sum_gt = np.append(above_sum[1:], 0)
        cut = sum_gt - d * cnt_gt
        level = int(np.flatnonzero(cut <= e)[0]) + 1  # smallest L with cut(L) <= e
        new = c.copy()
        new[level - 1] = above_cnt[level - 1]
        new[level:] = 0
        rest = e - int(cut[level - 1])
        if rest:
            new[level - 1] -= rest
            new[level - 2] += rest
        counts[r] = new
    return counts
