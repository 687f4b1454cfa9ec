"""The archive of a CIESS search: every evaluated mask, and its candidates for a budget."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from tfembsize._io import AppendOnlyArrays
from tfembsize.records import Problem
from tfembsize.search.selection import Candidate, search_order

__all__ = ["CIESSArchive", "archive_fields", "archive_view", "archived_candidates"]


@dataclass(frozen=True)
class CIESSArchive:
    """Every mask the search evaluated (copies), one row per successful iteration.

    Attributes:
        user_sizes: ``[n, num_users]`` sizes.
        item_sizes: ``[n, num_items]`` sizes.
        params: usable parameters of each mask (every table counted).
        density: ``params`` over the full table's parameters.
        mean_ratio: mean per-entity quality ratio over users and items (the search score).
        quality: mean validation quality over users.
        user_reward: mean reward of the users.
        item_reward: mean reward of the items.
        episode: episode of each row.
        step: search iteration of each row (counting over episodes).
    """

    user_sizes: np.ndarray
    item_sizes: np.ndarray
    params: np.ndarray
    density: np.ndarray
    mean_ratio: np.ndarray
    quality: np.ndarray
    user_reward: np.ndarray
    item_reward: np.ndarray
    episode: np.ndarray
    step: np.ndarray

    def __len__(self) -> int:
        return int(self.params.size)


def archive_fields(num_users: int, num_items: int, d_max: int) -> dict[str, Any]:
    """The `AppendOnlyArrays` fields of an archive (one row per successful iteration)."""
    size_type = np.int16 if d_max < 2**15 else np.int32
    return {
        "user_sizes": ((num_users,), size_type),
        "item_sizes": ((num_items,), size_type),
        "params": ((), np.int64),
        "mean_ratio": ((), np.float64),
        "quality": ((), np.float64),
        "user_reward": ((), np.float64),
        "item_reward": ((), np.float64),
        "episode": ((), np.int32),
        "step": ((), np.int32),
    }


def archive_view(log: AppendOnlyArrays, full_params: int) -> CIESSArchive:
    """A `CIESSArchive` of copies of ``log``'s rows (density relative to ``full_params``)."""
    a = {k: np.array(v) for k, v in log.arrays.items()}
    return CIESSArchive(
        user_sizes=a["user_sizes"].astype(np.int32),
        item_sizes=a["item_sizes"].astype(np.int32),
        params=a["params"],
        density=a["params"] / full_params,
        mean_ratio=a["mean_ratio"],
        quality=a["quality"],
        user_reward=a["user_reward"],
        item_reward=a["item_reward"],
        episode=a["episode"],
        step=a["step"],
    )


def archived_candidates(
    log: AppendOnlyArrays, problem: Problem, sparsity: float, limit: int | None = None
) -> list[Candidate]:
    """The archived masks within ``B(sparsity)`` as `Candidate` s, best score first, distinct.

    Every archived mask whose usable parameters are within the budget qualifies (not only
    those of the tightest density band); they are ranked by their mean per-entity quality
    ratio, ties to the earlier mask, and a mask equal to a better-ranked one is left out.

    Args:
        log: the archive's rows.
        problem: the table layout (budget and plan construction).
        sparsity: the target sparsity c.
        limit: keep at most this many (None: all).
    """
    if len(log) == 0:
        return []
    a = log.arrays
    eligible = np.flatnonzero(a["params"] <= problem.max_params(sparsity))
    kept: list[int] = []
    for pos in search_order(a["mean_ratio"][eligible]):
        i = int(eligible[pos])
        same = any(
            np.array_equal(a["user_sizes"][i], a["user_sizes"][j])
            and np.array_equal(a["item_sizes"][i], a["item_sizes"][j])
            for j in kept
        )
        if not same:
            kept.append(i)
        if limit is not None and len(kept) >= limit:
            break
    return [
        Candidate(
            plan=problem.plan_from_sizes(a["user_sizes"][i], a["item_sizes"][i]),
            score=float(a["mean_ratio"][i]),
            info={
                "archive_index": i,
                "episode": int(a["episode"][i]),
                "step": int(a["step"][i]),
                "density": float(a["params"][i]) / problem.full_params,
                "quality": float(a["quality"][i]),
            },
        )
        for i in kept
    ]
