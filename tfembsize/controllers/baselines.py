"""Baseline controllers: uniform (ES), random (MR) and frequency-proportional sizes.

Each produces one plan per target sparsity, asserted within the budget
B(c) = floor((1 - c) * d_max * N) that spans users and items together, and asks the
environment to train it from scratch (``mode="scratch"``, ``phase="final"``). They go through
the same ask/tell interface as the search methods, so the search loop and the paper-protocol
harness treat every method alike.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from tfembsize.budget import water_fill_down
from tfembsize.controllers._common import sparsity_key, uniform_size
from tfembsize.controllers.base import Controller, Decision, Problem, fitness_of
from tfembsize.errors import BudgetInfeasibleError
from tfembsize.plan import SizePlan

__all__ = ["StaticController", "ES", "MR", "FrequencyProportional"]


class StaticController(Controller):
    """A controller whose answer for each sparsity is fixed in advance (no search).

    Subclasses implement ``_entity_sizes(problem, sparsity) -> (user_sizes, item_sizes)``,
    deterministic given the seed and the sparsity. `ask` returns the plan of each sparsity in
    turn (``mode="scratch"``, ``phase="final"``); `tell` records the fitness.
    `plans(observation)` gives every plan at once without touching the run state.
    """

    def __init__(self, sparsity: float | Sequence[float], *, seed: int | None = None) -> None:
        super().__init__(sparsity, seed=seed)
        self._fitness: dict[float, float | None] = {}

    @abc.abstractmethod
    def _entity_sizes(self, problem: Problem, sparsity: float) -> tuple[np.ndarray, np.ndarray]:
        """Integer (user, item) sizes in [1, d_max] whose total is at most size_limit(c)."""

    def _plan(self, problem: Problem, sparsity: float) -> SizePlan:
        users, items = self._entity_sizes(problem, sparsity)
        users = np.asarray(users, np.int32)
        items = np.asarray(items, np.int32)
        plan = problem.plan_from_sizes(users, items)
        plan.check(problem.budget(sparsity))
        return plan

    def plans(self, observation: Any) -> dict[float, SizePlan]:
        """Every target sparsity's plan for ``observation`` (does not change the run state)."""
        from tfembsize.records import Observation

        if not isinstance(observation, Observation):
            raise TypeError(
                "`observation` must be a tfembsize.search.Observation. Received: "
                f"{type(observation).__name__}"
            )
        problem = Problem.from_observation(observation)
        return {c: self._plan(problem, c) for c in self.sparsities}

    def _ask(self, observation: Any) -> Decision:
        c = self.sparsities[self.iteration]
        problem = self._known_problem()
        return Decision(
            plan=self._plan(problem, c),
            mode="scratch",
            budget=problem.budget(c),
            phase="final",
            info={"method": self.name, "sparsity": c},
        )

    def _tell(self, decision: Decision, feedback: Any) -> None:
        fitness = fitness_of(feedback)
        if decision.sparsity is None:
            return
        self._fitness[decision.sparsity] = fitness
        if fitness is not None:
            self._metrics = {f"{decision.sparsity:g}/fitness": fitness}

    def _is_done(self) -> bool:
        return self.iteration >= len(self.sparsities)

    def _total_steps(self) -> int:
        return len(self.sparsities)

    def _best_plan(self, sparsity: float) -> SizePlan | None:
        if self.problem is None or not self.problem.has_frequencies:
            return None
        return self._plan(self.problem, sparsity)

    def fitness(self, sparsity: float) -> float | None:
        """The fitness told for ``sparsity`` (None if not told or failed)."""
        return self._fitness.get(self._check_sparsity(sparsity))

    def _get_state(self) -> dict:
        return {"fitness": [[c, f] for c, f in self._fitness.items()]}

    def _set_state(self, state: Mapping[str, Any]) -> None:
        self._fitness = {float(c): f for c, f in state.get("fitness", [])}


class ES(StaticController):
    """Equal sizes: every user and item gets floor((1 - c) * d_max).

    The uniform baseline of the CIESS and BET papers ("SU" or "ES"). The budget spans users and
    items, so this is also the largest size every entity can share:
    N * floor((1 - c) * d_max) <= B(c).

    Args:
        sparsity: target sparsity in (0, 1), or a sequence of them.
        seed: unused (ES is deterministic); accepted for a uniform interface.

    Example:
        >>> from tfembsize.search import Observation
        >>> obs = Observation({"user_embedding": "user", "item_embedding": "item"},
        ...                   user_frequencies=[3, 1], item_frequencies=[2, 2, 0], d_max=128)
        >>> ES(sparsity=0.9).plans(obs)[0.9]["item_embedding"]
        array([12, 12, 12], dtype=int32)

    References:
        Qu et al., "Budgeted Embedding Table For Recommender Systems", WSDM 2024.
    """

    name = "es"

    def _entity_sizes(self, problem: Problem, sparsity: float) -> tuple[np.ndarray, np.ndarray]:
        size = min(problem.d_max, uniform_size(sparsity, problem.d_max))
        if size < 1:
            raise BudgetInfeasibleError(
                f"sparsity={sparsity:g} with d_max={problem.d_max} gives a uniform size of 0."
            )
        return (
            np.full(problem.num_users, size, np.int32),
            np.full(problem.num_items, size, np.int32),
        )


class MR(StaticController):
    """Random sizes under the budget (the papers' "SR"/"MR" baseline).

    Each entity draws u ~ U(0, 1); sizes are ``floor(u * S / sum(u))`` for the size limit
    S = floor(B(c) / tables per side), i.e. roughly uniform on [0, 2 * S / N], then clamped to
    [1, d_max]. If the clamp pushed the total over S, units are taken from the largest sizes
    (ties by index); budget left unused by rounding is handed out one unit at a time to
    entities drawn uniformly among those below d_max. Seeded per sparsity, so each
    sparsity's plan is the same whichever other sparsities run beside it.

    Args:
        sparsity: target sparsity in (0, 1), or a sequence of them.
        seed: seed of the draws.

    Example:
        >>> from tfembsize.search import Observation
        >>> obs = Observation({"user_embedding": "user", "item_embedding": "item"},
        ...                   user_frequencies=[3, 1], item_frequencies=[2, 2, 0], d_max=16)
        >>> plan = MR(sparsity=0.5, seed=3).plans(obs)[0.5]
        >>> plan.total_params()  # floor(0.5 * 16 * 5)
        40
    """

    name = "mr"

    def _entity_sizes(self, problem: Problem, sparsity: float) -> tuple[np.ndarray, np.ndarray]:
        rng = self.child_rng(1, sparsity_key(sparsity))
        limit = problem.size_limit(sparsity)
        n = problem.num_entities
        d_max = problem.d_max
        u = rng.random(n)
        total = u.sum()
        sizes = np.floor(u * (limit / total)).astype(np.int64) if total > 0 else np.ones(n, int)
        sizes = np.clip(sizes, 1, d_max)
        excess = int(sizes.sum()) - limit
        if excess > 0:
            sizes = water_fill_down(sizes, excess, 1)
        spare = limit - int(sizes.sum())
        while spare > 0:
            room = np.flatnonzero(sizes < d_max)
            if room.size == 0:
                break
            pick = rng.choice(room, size=min(spare, room.size), replace=False)
            sizes[pick] += 1
            spare -= pick.size
        return sizes[: problem.num_users], sizes[problem.num_users :]


class FrequencyProportional(StaticController):
    """Sizes proportional to a power of the training frequency.

    Sizes are ``clip(floor(s * f_n ** power), 1, d_max)`` with the largest scale s whose
    total fits the size limit S = floor(B(c) / tables per side); budget left over by rounding
    goes one unit at a time to the most frequent entities below d_max (ties by index, users
    before items). Users and items share one pool, since both frequencies count the same
    training interactions.

    Args:
        sparsity: target sparsity in (0, 1), or a sequence of them.
        power: exponent applied to the frequencies (1 is proportional; 0.5 flattens).
        seed: unused (deterministic); accepted for a uniform interface.

    Raises:
        ValueError: ``power`` is not positive, or every frequency is zero (at ask time).

    Example:
        >>> from tfembsize.search import Observation
        >>> obs = Observation({"user_embedding": "user", "item_embedding": "item"},
        ...                   user_frequencies=[30, 1], item_frequencies=[20, 8, 0], d_max=16)
        >>> FrequencyProportional(sparsity=0.5).plans(obs)[0.5]["item_embedding"]
        array([16,  6,  1], dtype=int32)
    """

    name = "frequency"

    def __init__(
        self,
        sparsity: float | Sequence[float],
        *,
        power: float = 1.0,
        seed: int | None = None,
    ) -> None:
        if isinstance(power, bool) or not isinstance(power, (int, float)) or not power > 0:
            raise ValueError(f"`power` must be a positive number. Received: power={power!r}")
        self.power = float(power)
        super().__init__(sparsity, seed=seed)

    def get_config(self) -> dict:
        """The constructor arguments."""
        return {**super().get_config(), "power": self.power}

    def _entity_sizes(self, problem: Problem, sparsity: float) -> tuple[np.ndarray, np.ndarray]:
        freq = np.concatenate([problem.user_frequencies, problem.item_frequencies]).astype(
            np.float64
        )
        if not np.any(freq > 0):
            raise ValueError("FrequencyProportional needs at least one nonzero frequency.")
        limit = problem.size_limit(sparsity)
        d_max = problem.d_max
        weight = freq**self.power

        def sizes_at(scale: float) -> np.ndarray:
            return np.clip(np.floor(scale * weight), 1, d_max).astype(np.int64)

        lo, hi = 0.0, d_max / weight[weight > 0].min() + 1.0
        if sizes_at(hi).sum() <= limit:
            lo = hi
        else:
            for _ in range(200):  # bisection on the monotone total
                mid = 0.5 * (lo + hi)
                if sizes_at(mid).sum() <= limit:
                    lo = mid
                else:
                    hi = mid
                if hi - lo <= 1e-12 * hi:
                    break
        sizes = sizes_at(lo)
        order = np.lexsort((np.arange(freq.size), -freq))  # most frequent first, then index
        spare = limit - int(sizes.sum())
        while spare > 0:
            room = order[sizes[order] < d_max]
            if room.size == 0:
                break
            take = room[:spare]
            sizes[take] += 1
            spare -= take.size
        return sizes[: problem.num_users], sizes[problem.num_users :]
