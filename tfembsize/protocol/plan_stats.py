"""Statistics of size plans and of BET's archived actions, for diagnosing a search.

An archived BET action is stored as *counts*: an int array ``[2, d_max]`` holding, per side
(users, items), how many entities got each size 1 .. d_max. These helpers measure how a
budget is split between the sides and how unequal the sizes are, and build the simple
"uniform within each side" plans the diagnostics compare BET with.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from tfembsize.plan import SizePlan
from tfembsize.protocol.report import spearman

__all__ = ["user_share", "plan_share", "split_plan", "size_cv", "side_cv", "spearman_or_nan"]


def user_share(counts: np.ndarray) -> float:
    """The users' share of the parameters of an action given as counts ``[2, d_max]``.

    Example:
        >>> counts = np.zeros((2, 8), np.int64)
        >>> counts[0, 6], counts[1, 1] = 3, 5  # 3 users of size 7, 5 items of size 2
        >>> round(user_share(counts), 4)
        0.6774
    """
    sizes = np.arange(1, counts.shape[-1] + 1)
    user, item = float(counts[0] @ sizes), float(counts[1] @ sizes)
    return user / (user + item)


def plan_share(plan: SizePlan, tables: Mapping[str, str]) -> float:
    """The users' share of a plan's parameters (``tables``: layer name -> ``"user"``/``"item"``)."""
    side = {"user": 0.0, "item": 0.0}
    for name, kind in tables.items():
        side[kind] += float(np.sum(plan[name]))
    return side["user"] / (side["user"] + side["item"])


def split_plan(problem: Any, sparsity: float, share: float) -> SizePlan:
    """Uniform sizes within each side, the users' side getting ``share`` of the size budget.

    Args:
        problem: a `tfembsize.records.Problem` (its frequencies give the entity counts).
        sparsity: the target sparsity (the budget is ``problem.size_limit(sparsity)``).
        share: the users' share of the budget, in [0, 1].

    Returns:
        A plan of ``d_user`` for every user and ``d_item`` for every item, each in
        [1, d_max], the items taking what the users leave.
    """
    limit = problem.size_limit(sparsity)
    n_users, n_items = problem.user_frequencies.size, problem.item_frequencies.size
    d_user = int(np.clip(share * limit // n_users, 1, problem.d_max))
    d_item = int(np.clip((limit - d_user * n_users) // n_items, 1, problem.d_max))
    return problem.plan_from_sizes(
        np.full(n_users, d_user, np.int32), np.full(n_items, d_item, np.int32)
    )


def size_cv(counts: np.ndarray) -> float:
    """Coefficient of variation of the per-entity sizes (users and items pooled)."""
    sizes = np.arange(1, counts.shape[-1] + 1, dtype=np.float64)
    n = counts.sum(axis=0).astype(np.float64)
    mean = float(n @ sizes / n.sum())
    var = float(n @ (sizes - mean) ** 2 / n.sum())
    return float(np.sqrt(var) / mean)


def side_cv(counts: np.ndarray) -> float:
    """Mean over the two sides of the coefficient of variation of the sizes within the side."""
    return float(np.mean([size_cv(counts[s : s + 1]) for s in range(counts.shape[0])]))


def spearman_or_nan(x: Any, y: Any) -> float:
    """`spearman` from two points on, NaN where it is undefined (a constant side)."""
    rho = spearman(x, y, min_points=2)
    return float("nan") if rho is None else rho
