"""BET's population: evaluated actions (`ArchivedAction`, `Archive`) and per-sparsity run state."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from tfembsize._io import AppendOnlyArrays
from tfembsize.plan import SizePlan
from tfembsize.search.selection import rank_distinct

__all__ = ["Archive", "ArchivedAction", "STRATEGIES"]

STRATEGIES = ("predict", "random", "nearest")
"""Candidate choice: surrogate argmax (I), uniform (II), nearest to the best archived
action in surrogate embedding space (III)."""

_DEFAULT_CYCLE = ("predict", "predict", "predict", "random", "nearest")
_DEFAULT_MONITOR = "recall@20"


@dataclass(frozen=True, eq=False)
class ArchivedAction:
    """An evaluated action of the population.

    Attributes:
        plan: its sizes (assigned by frequency rank).
        fitness: validation quality ratio after fine-tuning.
        predicted_fitness: the surrogate's prediction when it was chosen.
        iteration: search iteration that evaluated it.
        strategy: how it was chosen (one of `STRATEGIES`).
        sparsity: its target sparsity.
        retrain_fitness: fitness after full retraining (None if not retrained).
        retrain_value: the validation ``monitor`` value after full retraining (None if not
            retrained); the best one is `best_plan`.
    """

    plan: SizePlan
    fitness: float
    predicted_fitness: float
    iteration: int
    strategy: str
    sparsity: float
    retrain_fitness: float | None = None
    retrain_value: float | None = None


@dataclass(frozen=True, eq=False)
class Archive:
    """The population of one sparsity's search, as arrays.

    Attributes:
        counts: int64 ``[n, 2, d_max]``: users/items per size of each action (rank-assigned).
        fitness: float64 ``[n]``.
        predicted: float64 ``[n]``, surrogate prediction at choice time.
        iterations: int64 ``[n]``.
        strategies: int8 ``[n]``, index into `STRATEGIES`.
    """

    counts: np.ndarray
    fitness: np.ndarray
    predicted: np.ndarray
    iterations: np.ndarray
    strategies: np.ndarray

    def __len__(self) -> int:
        return int(self.fitness.size)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Archive):
            return NotImplemented
        return all(
            np.array_equal(getattr(self, k), getattr(other, k))
            for k in ("counts", "fitness", "predicted", "iterations", "strategies")
        )

    __hash__ = None  # type: ignore[assignment]


def _archive_fields(d_max: int) -> dict[str, tuple[tuple[int, ...], Any]]:
    return {
        "counts": ((2, int(d_max)), np.int64),
        "fitness": ((), np.float64),
        "predicted": ((), np.float64),
        "iterations": ((), np.int64),
        "strategies": ((), np.int8),
    }


class _Search:
    """Run state of one sparsity's search (JSON part + the archive; the surrogate separately).

    The archive (per evaluated action: size counts, fitness, predicted fitness, iteration and
    strategy) only grows, so it is an `AppendOnlyArrays`: each save appends the new rows.
    """

    def __init__(self, sparsity: float, rng: np.random.Generator, d_max: int | None) -> None:
        self.sparsity = sparsity
        self.rng = rng
        self.t = 0  # search iterations told
        self.failed = 0
        self.retrain_fitness: list[float | None] = []
        self.retrain_values: list[float | None] = []
        self.log: AppendOnlyArrays | None = None
        if d_max is not None:
            self.ensure_log(d_max)

    def ensure_log(self, d_max: int) -> AppendOnlyArrays:
        """The archive, made for width ``d_max`` when first needed."""
        if self.log is None:
            self.log = AppendOnlyArrays(_archive_fields(d_max))
        return self.log

    def _column(self, name: str, empty: np.ndarray) -> np.ndarray:
        return empty if self.log is None else self.log.arrays[name]

    @property
    def counts(self) -> np.ndarray:
        """Size counts per archived action, ``[n, 2, d_max]`` (read-only)."""
        return self._column("counts", np.zeros((0, 2, 1), np.int64))

    @property
    def fitness(self) -> np.ndarray:
        """Measured fitness per archived action (read-only)."""
        return self._column("fitness", np.zeros(0, np.float64))

    @property
    def predicted(self) -> np.ndarray:
        """The surrogate's prediction when each action was chosen (read-only)."""
        return self._column("predicted", np.zeros(0, np.float64))

    @property
    def iterations(self) -> np.ndarray:
        """Search iteration of each archived action (read-only)."""
        return self._column("iterations", np.zeros(0, np.int64))

    @property
    def strategies(self) -> np.ndarray:
        """Index into `STRATEGIES` of each archived action (read-only)."""
        return self._column("strategies", np.zeros(0, np.int8))

    def append(
        self, counts: np.ndarray, fitness: float, predicted: float, iteration: int, strategy: int
    ) -> None:
        self.ensure_log(int(counts.shape[-1])).append(
            counts=np.asarray(counts)[None],
            fitness=[fitness],
            predicted=[predicted],
            iterations=[iteration],
            strategies=[strategy],
        )

    def ranking(self) -> np.ndarray:
        """Archive indices by fitness (descending), ties by earlier iteration; duplicates out."""
        # The archive is in iteration order, so "ties to the earlier index" is "earlier
        # iteration"; the same rule as the selective retraining's shortlist.
        return np.asarray(rank_distinct(self.fitness, list(self.counts)), np.int64)
