"""`Observation` (what a controller sees) and `Problem` (what it keeps of the first one)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from tfembsize.errors import BudgetInfeasibleError
from tfembsize.plan import SizePlan
from tfembsize.records._common import (
    _OBSERVATION_FORMAT,
    SIDES,
    _arrays_equal,
    _frozen_array,
    _TableLayout,
)
from tfembsize.records.feedback import Feedback

__all__ = ["Observation", "Problem"]


# Observation --------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class Observation(_TableLayout):
    """What a controller sees before deciding: the problem, the current plan, the last result.

    Args:
        tables: maps each searchable layer name to the side it embeds, ``"user"`` or
            ``"item"``. A backbone with two tables per side (NCF: GMF and MLP) lists both;
            they share one size vector per entity (`plan_from_sizes`).
        user_frequencies: training interactions per user (int64, length ``num_users``).
        item_frequencies: training interactions per item (int64, length ``num_items``).
        d_max: full embedding width.
        iteration: number of steps completed so far.
        plan: the sizes currently applied to the model (None before the first step).
        feedback: the feedback of the last step (None before the first step).
        reference: the feedback of the full-size reference model, whose per-entity quality
            is the denominator of the quality ratios (None if the environment has none).

    Example:
        >>> obs = Observation({"user_embedding": "user", "item_embedding": "item"},
        ...                   user_frequencies=[3, 1], item_frequencies=[2, 2, 0], d_max=8)
        >>> obs.plan_from_sizes([8, 2], [4, 4, 1]).total_params()
        19
    """

    tables: Mapping[str, str]
    user_frequencies: np.ndarray
    item_frequencies: np.ndarray
    d_max: int = 128
    iteration: int = 0
    plan: SizePlan | None = None
    feedback: Feedback | None = None
    reference: Feedback | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.tables, Mapping) or not self.tables:
            raise ValueError(
                "`tables` must be a non-empty mapping of layer name to 'user' or 'item'. "
                f"Received: tables={self.tables!r}"
            )
        tables = {}
        for name, side in self.tables.items():
            if side not in SIDES:
                raise ValueError(f"`tables[{name!r}]` must be 'user' or 'item'. Received: {side!r}")
            tables[str(name)] = side
        for side in SIDES:
            if side not in tables.values():
                raise ValueError(f"`tables` has no {side} table. Received: tables={tables!r}")
        object.__setattr__(self, "tables", tables)
        for name in ("user_frequencies", "item_frequencies"):
            arr = _frozen_array(name, getattr(self, name), np.int64)
            if arr.size and arr.min() < 0:
                raise ValueError(f"`{name}` must be non-negative.")
            object.__setattr__(self, name, arr)
        d = self.d_max
        if isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d < 1:
            raise ValueError(f"`d_max` must be a positive integer. Received: d_max={d!r}")
        object.__setattr__(self, "d_max", int(d))
        it = self.iteration
        if isinstance(it, bool) or not isinstance(it, (int, np.integer)) or it < 0:
            raise ValueError(f"`iteration` must be a non-negative integer. Received: {it!r}")
        object.__setattr__(self, "iteration", int(it))
        if self.plan is not None and not isinstance(self.plan, SizePlan):
            raise TypeError(f"`plan` must be a SizePlan or None. Received {type(self.plan)!r}.")

    def _counts(self) -> tuple[int, int]:
        return int(self.user_frequencies.size), int(self.item_frequencies.size)

    @property
    def num_users(self) -> int:
        """Number of users."""
        return int(self.user_frequencies.size)

    @property
    def num_items(self) -> int:
        """Number of items."""
        return int(self.item_frequencies.size)

    def replace(self, **changes: Any) -> Observation:
        """A copy with some fields changed."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values.update(changes)
        return Observation(**values)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Observation):
            return NotImplemented
        return (
            self.tables == other.tables
            and _arrays_equal(self.user_frequencies, other.user_frequencies)
            and _arrays_equal(self.item_frequencies, other.item_frequencies)
            and self.d_max == other.d_max
            and self.iteration == other.iteration
            and self.plan == other.plan
            and self.feedback == other.feedback
            and self.reference == other.reference
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (
            f"Observation(iteration={self.iteration}, tables={self.tables}, "
            f"num_users={self.num_users}, num_items={self.num_items}, d_max={self.d_max})"
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (arrays as lists)."""
        return {
            "format": _OBSERVATION_FORMAT,
            "version": 1,
            "tables": dict(self.tables),
            "user_frequencies": self.user_frequencies.tolist(),
            "item_frequencies": self.item_frequencies.tolist(),
            "d_max": self.d_max,
            "iteration": self.iteration,
            "plan": None if self.plan is None else self.plan.to_dict(),
            "feedback": None if self.feedback is None else self.feedback.to_dict(),
            "reference": None if self.reference is None else self.reference.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Observation:
        """Inverse of `to_dict`."""
        if d.get("format") != _OBSERVATION_FORMAT:
            raise ValueError(f"Not a serialised Observation (format={d.get('format')!r}).")
        return cls(
            tables=d["tables"],
            user_frequencies=np.asarray(d["user_frequencies"], np.int64),
            item_frequencies=np.asarray(d["item_frequencies"], np.int64),
            d_max=d["d_max"],
            iteration=d.get("iteration", 0),
            plan=None if d.get("plan") is None else SizePlan.from_dict(d["plan"]),
            feedback=None if d.get("feedback") is None else Feedback.from_dict(d["feedback"]),
            reference=None if d.get("reference") is None else Feedback.from_dict(d["reference"]),
        )


# Problem ------------------------------------------------------------------------------------
def _digest(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a, dtype=np.int64).tobytes())
        h.update(b"|")
    return h.hexdigest()


@dataclass(frozen=True, eq=False)
class Problem(_TableLayout):
    """The fixed facts of a search, taken from the first `Observation` a controller sees.

    Sizes are per *entity*: every user-side table gets the user's size and every item-side
    table the item's. The parameter cost of one unit of size is the number of tables per
    side (2 for NCF's GMF and MLP tables), so a budget of B parameters allows
    ``floor(B / tables_per_side)`` units of entity size (`size_limit`).

    Args:
        tables: layer name -> ``"user"`` or ``"item"``.
        d_max: full width.
        user_frequencies: training interactions per user (may be None after `set_state`
            until the next observation or `restore` supplies them).
        item_frequencies: training interactions per item (likewise).
        num_users: number of users.
        num_items: number of items.
        digest: SHA-256 of the frequency arrays, to recognise the same problem later.
    """

    tables: Mapping[str, str]
    d_max: int
    num_users: int
    num_items: int
    digest: str
    user_frequencies: np.ndarray | None = None
    item_frequencies: np.ndarray | None = None

    def _counts(self) -> tuple[int, int]:
        return self.num_users, self.num_items

    @classmethod
    def from_observation(cls, observation: Observation) -> Problem:
        """The problem an observation describes."""
        tables = dict(observation.tables)
        per_side = {s: sum(1 for v in tables.values() if v == s) for s in ("user", "item")}
        if per_side["user"] != per_side["item"]:
            raise ValueError(
                "Controllers size entities, so the user and item sides must have the same "
                f"number of tables. Received tables={tables!r}"
            )
        return cls(
            tables=tables,
            d_max=observation.d_max,
            num_users=observation.num_users,
            num_items=observation.num_items,
            digest=_digest(observation.user_frequencies, observation.item_frequencies),
            user_frequencies=np.asarray(observation.user_frequencies, np.int64),
            item_frequencies=np.asarray(observation.item_frequencies, np.int64),
        )

    def size_limit(self, sparsity: float) -> int:
        """Largest total of entity sizes whose parameters fit B(c); raises if < 1 per entity.

        Raises:
            BudgetInfeasibleError: the budget cannot give every entity size 1.
        """
        limit = self.max_params(sparsity) // self.tables_per_side
        if limit < self.num_entities:
            raise BudgetInfeasibleError(
                f"sparsity={sparsity:g} leaves {self.max_params(sparsity)} parameters for "
                f"{self.num_rows} rows: fewer than one per row (d_max={self.d_max})."
            )
        return limit

    @property
    def has_frequencies(self) -> bool:
        """True when the frequency arrays are known."""
        return self.user_frequencies is not None

    def with_frequencies(self, user: np.ndarray, item: np.ndarray) -> Problem:
        """The same problem with its frequency arrays (checked against the digest)."""
        if _digest(user, item) != self.digest:
            raise ValueError(
                "The frequency arrays differ from the ones this controller was started with."
            )
        return Problem(
            tables=self.tables,
            d_max=self.d_max,
            num_users=self.num_users,
            num_items=self.num_items,
            digest=self.digest,
            user_frequencies=np.asarray(user, np.int64),
            item_frequencies=np.asarray(item, np.int64),
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON form without the frequency arrays (they go to the .npz)."""
        return {
            "tables": dict(self.tables),
            "d_max": self.d_max,
            "num_users": self.num_users,
            "num_items": self.num_items,
            "digest": self.digest,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Problem:
        """Inverse of `to_dict` (no frequency arrays)."""
        return cls(
            tables=dict(d["tables"]),
            d_max=int(d["d_max"]),
            num_users=int(d["num_users"]),
            num_items=int(d["num_items"]),
            digest=str(d["digest"]),
        )

    def same_as(self, observation: Observation) -> str | None:
        """None if ``observation`` describes this problem, else what differs."""
        if dict(observation.tables) != dict(self.tables):
            return f"tables {dict(observation.tables)} != {dict(self.tables)}"
        if observation.d_max != self.d_max:
            return f"d_max {observation.d_max} != {self.d_max}"
        if (observation.num_users, observation.num_items) != (self.num_users, self.num_items):
            return (
                f"(num_users, num_items) ({observation.num_users}, {observation.num_items}) "
                f"!= ({self.num_users}, {self.num_items})"
            )
        if _digest(observation.user_frequencies, observation.item_frequencies) != self.digest:
            return "the training frequencies differ"
        return None
