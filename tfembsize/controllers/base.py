"""The ask/tell controller interface shared by every embedding-size search method.

A controller decides which sizes to try; it never sees the recommender. The search loop
(`tfembsize.search.run`) hands it an `Observation` (table layout, training frequencies,
``d_max``, the last feedback), receives a `Decision` (a `SizePlan` within a budget and the
environment mode it needs), runs the environment step, and returns the `Feedback`:

    decision = controller.ask(observation)
    feedback = env.step(decision.plan, decision.mode, train_steps=decision.train_steps)
    controller.tell(decision, feedback)
    controller.save(directory)          # after every step; restore(directory) resumes

The base class owns the public methods and validates their input and output; subclasses
override the hooks ``_ask``/``_tell``/``_is_done`` (and, for run state, ``_get_state``,
``_set_state``, ``_get_arrays``, ``_set_arrays``, ``_trackables``). State is split three ways,
none of it pickled: JSON (`get_state`: config, counters, generator states), ``.npz`` (buffers
such as an archive of actions) and ``tf.train.Checkpoint`` (networks).
"""

from __future__ import annotations

import abc
import hashlib
import json
import logging
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from fractions import Fraction
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from tfembsize.budget import Budget
from tfembsize.errors import BudgetInfeasibleError
from tfembsize.plan import SizePlan

if TYPE_CHECKING:  # imported lazily at run time: tfembsize.search imports the loop
    from tfembsize.search.records import Feedback, Observation

__all__ = [
    "Controller",
    "Decision",
    "Problem",
    "MODES",
    "PHASES",
    "fitness_of",
    "generator_state",
    "set_generator_state",
    "validate_sparsities",
]

logger = logging.getLogger(__name__)

MODES = ("scratch", "snapshot", "continue")
"""Environment modes (the same tuple as `tfembsize.search.records.MODES`)."""

PHASES = ("search", "final")
"""``"search"``: a step of the search itself; ``"final"``: a candidate result trained in
full (e.g. BET's selective retraining, or the single plan of a baseline)."""

_STATE_FORMAT = "tfembsize.Controller"
_DECISION_FORMAT = "tfembsize.Decision"


# Decision -----------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class Decision:
    """What a controller asks the environment to do next.

    Args:
        plan: the sizes to apply (a `SizePlan` naming every searchable table).
        mode: where training starts: ``"scratch"`` (fresh initialisation), ``"snapshot"``
            (the stored snapshot, e.g. BET's pretrained full model) or ``"continue"``.
        budget: the budget the plan satisfies (checked by `Controller.ask` and again by the
            loop). None only for unbudgeted methods.
        train_steps: optimiser steps to train for; None leaves it to the environment (train
            to convergence with validation early stopping, or its configured recipe).
        train_epochs: the same as a number of passes over the training interactions (the
            environment converts with its batch size); at most one of the two is set.
        phase: ``"search"`` for a search step, ``"final"`` for a full training of a result
            candidate (selective retraining, a baseline's single plan).
        info: controller-specific JSON details (iteration, strategy, predicted fitness...).
            The loop keeps the scalar entries in the run history.
        id: sequence number set by `Controller.ask` (-1 before).

    Example:
        >>> plan = SizePlan({"user_embedding": [4, 4], "item_embedding": [4, 4, 4]})
        >>> d = Decision(plan, "snapshot", budget=Budget(sparsity=0.5, d_max=8), train_epochs=10)
        >>> d.sparsity
        0.5
    """

    plan: SizePlan
    mode: str = "scratch"
    budget: Budget | None = None
    train_steps: int | None = None
    train_epochs: float | None = None
    phase: str = "search"
    info: Mapping[str, Any] = field(default_factory=dict)
    id: int = -1

    def __post_init__(self) -> None:
        if not isinstance(self.plan, SizePlan):
            raise TypeError(f"`plan` must be a SizePlan. Received {type(self.plan).__name__}.")
        if self.mode not in MODES:
            raise ValueError(f"`mode` must be one of {MODES}. Received: mode={self.mode!r}")
        if self.phase not in PHASES:
            raise ValueError(f"`phase` must be one of {PHASES}. Received: phase={self.phase!r}")
        if self.budget is not None and not isinstance(self.budget, Budget):
            raise TypeError(
                f"`budget` must be a Budget or None. Received {type(self.budget).__name__}."
            )
        steps = self.train_steps
        if steps is not None:
            if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
                raise ValueError(
                    f"`train_steps` must be a positive integer or None. Received: "
                    f"train_steps={steps!r}"
                )
            object.__setattr__(self, "train_steps", int(steps))
        epochs = self.train_epochs
        if epochs is not None:
            if (
                isinstance(epochs, bool)
                or not isinstance(epochs, (int, float, np.integer, np.floating))
                or not math.isfinite(float(epochs))
                or float(epochs) <= 0
            ):
                raise ValueError(
                    f"`train_epochs` must be a positive number or None. Received: "
                    f"train_epochs={epochs!r}"
                )
            object.__setattr__(self, "train_epochs", float(epochs))
        if self.train_steps is not None and self.train_epochs is not None:
            raise ValueError(
                "Set at most one of `train_steps` and `train_epochs`. Received: "
                f"train_steps={self.train_steps}, train_epochs={self.train_epochs}"
            )
        object.__setattr__(self, "info", _json_clean("info", dict(self.info)))
        object.__setattr__(self, "id", int(self.id))

    @property
    def sparsity(self) -> float | None:
        """The budget's target sparsity (None without a sparsity budget)."""
        return None if self.budget is None else self.budget.sparsity

    def replace(self, **changes: Any) -> Decision:
        """A copy with some fields changed."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values.update(changes)
        return Decision(**values)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Decision):
            return NotImplemented
        return all(getattr(self, f.name) == getattr(other, f.name) for f in fields(self))

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        length = (
            f", train_steps={self.train_steps}"
            if self.train_steps is not None
            else (f", train_epochs={self.train_epochs:g}" if self.train_epochs else "")
        )
        return (
            f"Decision(id={self.id}, mode={self.mode!r}, phase={self.phase!r}, "
            f"sparsity={self.sparsity}, params={self.plan.total_params()}{length})"
        )

    def to_dict(self) -> dict:
        """JSON-serialisable form (the plan's sizes as lists)."""
        return {
            "format": _DECISION_FORMAT,
            "version": 1,
            "plan": self.plan.to_dict(),
            "mode": self.mode,
            "budget": None if self.budget is None else self.budget.to_dict(),
            "train_steps": self.train_steps,
            "train_epochs": self.train_epochs,
            "phase": self.phase,
            "info": dict(self.info),
            "id": self.id,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Decision:
        """Inverse of `to_dict`."""
        if d.get("format") != _DECISION_FORMAT:
            raise ValueError(f"Not a serialised Decision (format={d.get('format')!r}).")
        return cls(
            plan=SizePlan.from_dict(d["plan"]),
            mode=d["mode"],
            budget=None if d.get("budget") is None else Budget.from_dict(d["budget"]),
            train_steps=d.get("train_steps"),
            train_epochs=d.get("train_epochs"),
            phase=d.get("phase", "search"),
            info=d.get("info") or {},
            id=d.get("id", -1),
        )


def _json_clean(name: str, value: Any) -> Any:
    """Numpy scalars to Python ones; rejects anything JSON cannot hold."""
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value
    if isinstance(value, Mapping):
        return {str(k): _json_clean(f"{name}[{k!r}]", v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_clean(f"{name}[{i}]", v) for i, v in enumerate(value)]
    raise TypeError(
        f"`{name}` must hold JSON values (numbers, strings, lists, dicts). Received "
        f"{type(value).__name__}."
    )


# Problem ------------------------------------------------------------------------------------
def _digest(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a, dtype=np.int64).tobytes())
        h.update(b"|")
    return h.hexdigest()


@dataclass(frozen=True, eq=False)
class Problem:
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

    @property
    def tables_per_side(self) -> int:
        """Tables per side (1, or 2 for NCF)."""
        return sum(1 for v in self.tables.values() if v == "user")

    @property
    def num_entities(self) -> int:
        """Users plus items."""
        return self.num_users + self.num_items

    @property
    def num_rows(self) -> int:
        """Rows of every table together: the N of the budget."""
        return self.tables_per_side * self.num_entities

    def budget(self, sparsity: float) -> Budget:
        """The budget for ``sparsity`` at this problem's ``d_max``."""
        return Budget(sparsity=sparsity, d_max=self.d_max)

    def max_params(self, sparsity: float) -> int:
        """B(c) = floor((1 - c) * d_max * N) usable parameters."""
        return self.budget(sparsity).max_params_for(self.num_rows)

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

    def plan(self, user_sizes: np.ndarray, item_sizes: np.ndarray) -> SizePlan:
        """The plan giving every user-side table ``user_sizes`` and item-side ``item_sizes``."""
        return SizePlan(
            {n: (user_sizes if s == "user" else item_sizes) for n, s in self.tables.items()}
        )

    def sizes(self, plan: SizePlan) -> tuple[np.ndarray, np.ndarray]:
        """The (user, item) size vectors of a plan."""
        user = next(n for n, s in self.tables.items() if s == "user")
        item = next(n for n, s in self.tables.items() if s == "item")
        return plan[user], plan[item]

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

    def to_dict(self) -> dict:
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


# Helpers ------------------------------------------------------------------------------------
def validate_sparsities(sparsity: Any) -> tuple[float, ...]:
    """One sparsity or a sequence of distinct sparsities in (0, 1), as a tuple of floats."""
    values = [sparsity] if not isinstance(sparsity, (Sequence, np.ndarray)) else list(sparsity)
    if isinstance(sparsity, str) or not values:
        raise ValueError(
            "`sparsity` must be a float in (0, 1) or a non-empty sequence of them. Received: "
            f"sparsity={sparsity!r}"
        )
    out = []
    for s in values:
        if isinstance(s, bool) or not isinstance(s, (int, float, np.integer, np.floating)):
            raise ValueError(f"`sparsity` must be in (0, 1). Received: sparsity={sparsity!r}")
        if not 0.0 < float(s) < 1.0:  # also rejects NaN
            raise ValueError(f"`sparsity` must be in (0, 1). Received: sparsity={s!r}")
        out.append(float(s))
    if len(set(out)) != len(out):
        raise ValueError(f"`sparsity` values must be distinct. Received: sparsity={sparsity!r}")
    return tuple(out)


def validate_seed(seed: Any) -> int | None:
    """None or a non-negative integer."""
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"`seed` must be a non-negative integer or None. Received: seed={seed!r}")
    return int(seed)


def sparsity_key(sparsity: float) -> int:
    """An integer naming a sparsity in seed derivations (parts per million)."""
    return int(Fraction(repr(float(sparsity))) * 1_000_000)


def uniform_size(sparsity: float, d_max: int) -> int:
    """floor((1 - c) * d_max), computed exactly."""
    return int(math.floor((1 - Fraction(repr(float(sparsity)))) * d_max))


def fitness_of(feedback: Feedback) -> float | None:
    """The number controllers maximise: the quality ratio to the full model, else the quality.

    Returns None for a failed step.
    """
    if not feedback.ok:
        return None
    if feedback.quality_ratio is not None:
        return float(feedback.quality_ratio)
    return float(feedback.quality)


def _records() -> Any:
    from tfembsize.search import records

    return records


# Controller ---------------------------------------------------------------------------------
class Controller(abc.ABC):
    """Base class of embedding-size controllers (ask/tell, resumable, seeded).

    The public methods validate and keep the books; subclasses override hooks:

    * ``_ask(observation) -> Decision`` (required). It may advance generators and change
      JSON state, but must not change arrays or networks: those change only in ``_tell``.
      This is what makes `get_state` during a pending decision well defined: the state
      returned is the one from before the ask, and asking again after `set_state` gives the
      same decision.
    * ``_tell(decision, feedback)`` (required): learn from the feedback.
    * ``_is_done() -> bool`` (required).
    * ``_total_steps() -> int | None``: the number of asks a full run makes (progress bar).
    * ``_get_state() / _set_state(state)``: JSON run state of the subclass.
    * ``_get_arrays() / _set_arrays(arrays)``: numpy buffers, saved as ``.npz``.
    * ``_trackables() -> dict``: networks saved with ``tf.train.Checkpoint``.
    * ``_best_plan(sparsity) -> SizePlan | None``.
    * ``get_config()`` must return exactly the constructor arguments.

    Args:
        sparsity: target sparsity c in (0, 1), or a sequence of them; each gets its own
            budget B(c) = floor((1 - c) * d_max * N), and every plan the controller returns
            satisfies its budget (asserted in `ask`).
        seed: seed of the controller's generators; None draws fresh entropy (recorded in the
            state, so a restored run continues identically).

    Example:
        >>> controller = tfembsize.controllers.ES(sparsity=(0.8, 0.9))  # doctest: +SKIP
        >>> while not controller.done:  # doctest: +SKIP
        ...     decision = controller.ask(env.observation())
        ...     controller.tell(decision, env.step(decision.plan, decision.mode))
    """

    name: ClassVar[str] = "controller"

    def __init__(self, sparsity: float | Sequence[float], *, seed: int | None = None) -> None:
        self._sparsities = validate_sparsities(sparsity)
        self._seed = validate_seed(seed)
        entropy = np.random.SeedSequence(self._seed).entropy
        self._entropy: int = int(entropy)  # type: ignore[arg-type]
        self._rng = np.random.default_rng(np.random.SeedSequence(self._entropy))
        self._problem: Problem | None = None
        self._pending: Decision | None = None
        self._state_before_ask: dict | None = None
        self._num_asked = 0
        self._num_told = 0
        self._metrics: dict[str, float] = {}

    # Configuration -------------------------------------------------------------------------
    def get_config(self) -> dict:
        """The constructor arguments (JSON)."""
        return {"sparsity": list(self._sparsities), "seed": self._seed}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Controller:
        """A new controller from `get_config` output."""
        config = dict(config)
        if isinstance(config.get("sparsity"), list):
            config["sparsity"] = tuple(config["sparsity"])
        for key, value in list(config.items()):
            if isinstance(value, list):
                config[key] = tuple(value)
        return cls(**config)

    # Properties ------------------------------------------------------------------------------
    @property
    def sparsities(self) -> tuple[float, ...]:
        """The target sparsities, in the order they are searched."""
        return self._sparsities

    @property
    def seed(self) -> int | None:
        """The seed given to the constructor."""
        return self._seed

    @property
    def rng(self) -> np.random.Generator:
        """The controller's generator (its state is part of `get_state`)."""
        return self._rng

    @property
    def problem(self) -> Problem | None:
        """The problem seen at the first ask (None before)."""
        return self._problem

    @property
    def budgets(self) -> dict[float, Budget] | None:
        """Budget per target sparsity (None until ``d_max`` is known from an observation)."""
        if self._problem is None:
            return None
        return {c: self._problem.budget(c) for c in self._sparsities}

    @property
    def pending(self) -> Decision | None:
        """The decision asked for and not yet told."""
        return self._pending

    @property
    def iteration(self) -> int:
        """Number of decisions told so far."""
        return self._num_told

    @property
    def done(self) -> bool:
        """True when the controller has nothing more to ask."""
        return self._pending is None and self._is_done()

    @property
    def num_iterations(self) -> int | None:
        """How many asks a full run makes (an upper bound; None if open-ended)."""
        return self._total_steps()

    def child_rng(self, *keys: int) -> np.random.Generator:
        """A generator derived from the controller's seed and ``keys`` (stateless derivation)."""
        return np.random.default_rng(np.random.SeedSequence(self._entropy, spawn_key=keys))

    # Ask / tell ------------------------------------------------------------------------------
    def ask(self, observation: Observation) -> Decision:
        """The next decision.

        Args:
            observation: a `tfembsize.search.Observation`. Its tables, ``d_max`` and
                frequencies must stay the same for the whole run.

        Returns:
            A `Decision` whose plan satisfies ``decision.budget`` (asserted).

        Raises:
            TypeError: ``observation`` is not an `Observation`.
            RuntimeError: a decision is pending (call `tell` first) or the controller is done.
            ValueError: the observation describes a different problem from the first one.
            BudgetInfeasibleError: a target sparsity leaves less than one parameter per row.
        """
        records = _records()
        if not isinstance(observation, records.Observation):
            raise TypeError(
                "`observation` must be a tfembsize.search.Observation. Received: "
                f"{type(observation).__name__}"
            )
        if self._pending is not None:
            raise RuntimeError(
                f"{type(self).__name__} already has a pending decision (id={self._pending.id}); "
                "call tell(decision, feedback) before asking again."
            )
        if self._is_done():
            raise RuntimeError(f"{type(self).__name__} is done; there is nothing more to ask.")
        self._adopt(observation)
        for c in self._sparsities:
            self._problem.size_limit(c)  # raises BudgetInfeasibleError early and clearly
        before = self.get_state()
        decision = self._ask(observation)
        if not isinstance(decision, Decision):
            raise TypeError(
                f"{type(self).__name__}._ask must return a Decision. Received "
                f"{type(decision).__name__}."
            )
        self._check_decision(decision, observation)
        decision = decision.replace(id=self._num_asked)
        self._num_asked += 1
        self._pending = decision
        self._state_before_ask = before
        return decision

    def tell(self, decision: Decision, feedback: Feedback) -> None:
        """Reports the environment's feedback on ``decision``.

        Args:
            decision: the decision returned by the last `ask`.
            feedback: a `tfembsize.search.Feedback` (a failed step is allowed; controllers
                do not learn from its numbers).

        Raises:
            RuntimeError: there is no pending decision.
            ValueError: ``decision`` is not the pending decision.
            TypeError: ``feedback`` is not a `Feedback`.
        """
        if self._pending is None:
            raise RuntimeError(
                f"{type(self).__name__}.tell() called with no pending decision; call ask() first."
            )
        if not isinstance(decision, Decision) or decision.id != self._pending.id:
            got = decision.id if isinstance(decision, Decision) else type(decision).__name__
            raise ValueError(
                f"`decision` is not the pending decision (id={self._pending.id}). Received: {got!r}"
            )
        if decision != self._pending:
            raise ValueError(
                f"`decision` (id={decision.id}) was changed after ask(); tell the decision "
                "object that ask() returned."
            )
        records = _records()
        if not isinstance(feedback, records.Feedback):
            raise TypeError(
                "`feedback` must be a tfembsize.search.Feedback. Received: "
                f"{type(feedback).__name__}"
            )
        if not feedback.ok:
            logger.warning(
                "%s: step %d failed (%s); not learning from it.",
                type(self).__name__,
                decision.id,
                feedback.message,
            )
        self._metrics = {}
        self._tell(decision, feedback)
        self._pending = None
        self._state_before_ask = None
        self._num_told += 1

    def _adopt(self, observation: Observation) -> None:
        if self._problem is None:
            self._problem = Problem.from_observation(observation)
            self._on_problem()
            return
        diff = self._problem.same_as(observation)
        if diff is not None:
            raise ValueError(
                f"The observation describes a different problem from the one "
                f"{type(self).__name__} started with: {diff}."
            )
        if not self._problem.has_frequencies:
            self._problem = self._problem.with_frequencies(
                observation.user_frequencies, observation.item_frequencies
            )
            self._on_problem()

    def _on_problem(self) -> None:
        """Called once the problem (with frequencies) is known; subclasses may prepare."""
        return None

    def _check_decision(self, decision: Decision, observation: Observation) -> None:
        plan = decision.plan
        if set(plan) != set(observation.tables):
            raise ValueError(
                f"{type(self).__name__} returned a plan for tables {sorted(plan)}; the "
                f"observation has {sorted(observation.tables)}."
            )
        users, items = self._problem.sizes(plan)
        for name, side in observation.tables.items():
            want = users if side == "user" else items
            if plan[name].shape != want.shape or not np.array_equal(plan[name], want):
                raise ValueError(f"Plan table {name!r} must share the {side} sizes.")
        if users.size != observation.num_users or items.size != observation.num_items:
            raise ValueError(
                f"Plan sizes have lengths ({users.size}, {items.size}); expected "
                f"({observation.num_users}, {observation.num_items})."
            )
        if decision.budget is None:
            raise ValueError(f"{type(self).__name__} returned a decision without a budget.")
        if decision.budget.sparsity not in self._sparsities:
            raise ValueError(
                f"Decision budget sparsity {decision.budget.sparsity} is not a target "
                f"{self._sparsities}."
            )
        plan.check(decision.budget)  # the budget guarantee, asserted

    # Results ---------------------------------------------------------------------------------
    def best_plan(self, sparsity: float | None = None) -> SizePlan | None:
        """The controller's answer for ``sparsity`` (the only one if None); None if none yet."""
        if sparsity is None:
            if len(self._sparsities) != 1:
                raise ValueError(
                    f"{type(self).__name__} has several sparsities {self._sparsities}; pass "
                    "`sparsity`."
                )
            sparsity = self._sparsities[0]
        sparsity = self._check_sparsity(sparsity)
        return self._best_plan(sparsity)

    def best_plans(self) -> dict[float, SizePlan | None]:
        """`best_plan` for every target sparsity."""
        return {c: self._best_plan(c) for c in self._sparsities}

    def _check_sparsity(self, sparsity: float) -> float:
        s = float(sparsity)
        if s not in self._sparsities:
            raise ValueError(
                f"`sparsity` must be one of the controller's {self._sparsities}. Received: "
                f"sparsity={sparsity!r}"
            )
        return s

    def metrics(self) -> dict[str, float]:
        """Scalars of the last `tell` (e.g. fitness, predicted fitness, surrogate loss)."""
        return dict(self._metrics)

    def log(self, step: int, writer: Any = None) -> None:
        """Writes `metrics` as TensorBoard scalars named ``<name>/<metric>`` at ``step``.

        Args:
            step: the global step.
            writer: a ``tf.summary`` writer; None uses the default writer.
        """
        import tensorflow as tf

        def _write() -> None:
            for key, value in self._metrics.items():
                tf.summary.scalar(f"{self.name}/{key}", value, step=step)

        if writer is None:
            _write()
        else:
            with writer.as_default():
                _write()

    # State -----------------------------------------------------------------------------------
    def get_state(self) -> dict:
        """The JSON run state (buffers and networks are saved by `save`).

        While a decision is pending, this is the state from before that ask: restoring it and
        asking again returns the same decision.
        """
        if self._pending is not None and self._state_before_ask is not None:
            return json.loads(json.dumps(self._state_before_ask))
        state = {
            "format": _STATE_FORMAT,
            "version": 1,
            "class": type(self).__name__,
            "config": self.get_config(),
            "entropy": str(self._entropy),
            "rng": generator_state(self._rng),
            "num_asked": self._num_asked,
            "num_told": self._num_told,
            "problem": None if self._problem is None else self._problem.to_dict(),
            "metrics": dict(self._metrics),
            "controller": self._get_state(),
        }
        return json.loads(json.dumps(state))  # a deep copy that is certainly JSON

    def set_state(self, state: Mapping[str, Any]) -> None:
        """Restores a state from `get_state` (of a controller with the same config).

        Raises:
            ValueError: the state is not a controller state, belongs to another class, or was
                made with a different configuration.
        """
        if not isinstance(state, Mapping) or state.get("format") != _STATE_FORMAT:
            raise ValueError("`state` is not a tfembsize controller state.")
        if state.get("class") != type(self).__name__:
            raise ValueError(f"`state` belongs to {state.get('class')}, not {type(self).__name__}.")
        mine = json.loads(json.dumps(self.get_config()))
        if state["config"] != mine:
            diff = sorted(
                k for k in set(mine) | set(state["config"]) if mine.get(k) != state["config"].get(k)
            )
            raise ValueError(
                f"The saved state was made with a different configuration ({diff}: saved "
                f"{ {k: state['config'].get(k) for k in diff} }, this controller "
                f"{ {k: mine.get(k) for k in diff} }). Use a new directory or the saved config."
            )
        self._entropy = int(state["entropy"])
        set_generator_state(self._rng, state["rng"])
        self._num_asked = int(state["num_asked"])
        self._num_told = int(state["num_told"])
        old = self._problem
        problem = state["problem"]
        if problem is None:
            self._problem = None
        else:
            restored = Problem.from_dict(problem)
            if old is not None and old.has_frequencies and old.digest == restored.digest:
                restored = restored.with_frequencies(old.user_frequencies, old.item_frequencies)
            self._problem = restored
            if restored.has_frequencies:
                self._on_problem()
        self._metrics = {k: float(v) for k, v in state.get("metrics", {}).items()}
        self._pending = None
        self._state_before_ask = None
        self._set_state(state["controller"])

    def save(self, directory: str | os.PathLike) -> None:
        """Writes the state into ``directory``: JSON, ``.npz`` buffers, network checkpoint.

        Files of one save share a generation number; ``controller.json`` (written last,
        atomically) names the generation, so a save interrupted at any point leaves the
        previous one readable.
        """
        directory = os.fspath(directory)
        os.makedirs(directory, exist_ok=True)
        manifest = os.path.join(directory, "controller.json")
        generation = 0
        if os.path.exists(manifest):
            with open(manifest, encoding="utf-8") as f:
                generation = int(json.load(f).get("generation", -1)) + 1
        state = self.get_state()
        arrays = self._all_arrays()
        arrays_file = f"arrays-{generation:06d}.npz"
        _write_npz(os.path.join(directory, arrays_file), arrays)
        trackables = self._trackables()
        networks = None
        if trackables:
            import tensorflow as tf

            networks = f"networks-{generation:06d}"
            tf.train.Checkpoint(**trackables).write(os.path.join(directory, networks))
        payload = {
            "format": _STATE_FORMAT + ".files",
            "version": 1,
            "generation": generation,
            "arrays": arrays_file,
            "networks": networks,
            "state": state,
        }
        tmp = f"{manifest}.tmp-{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, manifest)
        keep = {arrays_file, networks}
        for entry in os.listdir(directory):
            m = re.match(r"^(arrays|networks)-(\d{6})", entry)
            if (
                m
                and int(m.group(2)) != generation
                and not any(k and entry.startswith(k) for k in keep)
            ):
                os.remove(os.path.join(directory, entry))

    def restore(self, directory: str | os.PathLike) -> None:
        """Reads a state written by `save` (into a controller with the same config).

        Raises:
            FileNotFoundError: ``directory`` holds no saved controller.
            ValueError: the saved state is of another class or configuration.
        """
        directory = os.fspath(directory)
        manifest = os.path.join(directory, "controller.json")
        if not os.path.exists(manifest):
            raise FileNotFoundError(f"No saved controller in {directory!r} (no controller.json).")
        with open(manifest, encoding="utf-8") as f:
            payload = json.load(f)
        if payload.get("format") != _STATE_FORMAT + ".files":
            raise ValueError(f"{manifest} is not a saved tfembsize controller.")
        self.set_state(payload["state"])
        with np.load(os.path.join(directory, payload["arrays"]), allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        self._set_all_arrays(arrays)
        if payload.get("networks"):
            import tensorflow as tf

            trackables = self._trackables()
            tf.train.Checkpoint(**trackables).read(
                os.path.join(directory, payload["networks"])
            ).assert_consumed()

    @classmethod
    def load(cls, directory: str | os.PathLike) -> Controller:
        """A controller built from the config saved in ``directory`` and restored from it."""
        manifest = os.path.join(os.fspath(directory), "controller.json")
        if not os.path.exists(manifest):
            raise FileNotFoundError(f"No saved controller in {directory!r} (no controller.json).")
        with open(manifest, encoding="utf-8") as f:
            config = json.load(f)["state"]["config"]
        controller = cls.from_config(config)
        controller.restore(directory)
        return controller

    def _all_arrays(self) -> dict[str, np.ndarray]:
        arrays = {}
        p = self._problem
        if p is not None and p.has_frequencies:
            arrays["problem:user_frequencies"] = p.user_frequencies
            arrays["problem:item_frequencies"] = p.item_frequencies
        for k, v in self._get_arrays().items():
            arrays[f"controller:{k}"] = np.asarray(v)
        return arrays

    def _set_all_arrays(self, arrays: Mapping[str, np.ndarray]) -> None:
        if self._problem is not None and "problem:user_frequencies" in arrays:
            self._problem = self._problem.with_frequencies(
                arrays["problem:user_frequencies"], arrays["problem:item_frequencies"]
            )
            self._on_problem()
        prefix = "controller:"
        self._set_arrays({k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)})

    # Hooks -----------------------------------------------------------------------------------
    @abc.abstractmethod
    def _ask(self, observation: Observation) -> Decision:
        """Returns the next decision (see the class docstring for what it may change)."""

    @abc.abstractmethod
    def _tell(self, decision: Decision, feedback: Feedback) -> None:
        """Learns from the feedback on ``decision``."""

    @abc.abstractmethod
    def _is_done(self) -> bool:
        """True when there is nothing more to ask."""

    def _total_steps(self) -> int | None:
        return None

    def _best_plan(self, sparsity: float) -> SizePlan | None:
        return None

    def _get_state(self) -> dict:
        return {}

    def _set_state(self, state: Mapping[str, Any]) -> None:
        del state

    def _get_arrays(self) -> dict[str, np.ndarray]:
        return {}

    def _set_arrays(self, arrays: Mapping[str, np.ndarray]) -> None:
        del arrays

    def _trackables(self) -> dict[str, Any]:
        return {}

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(sparsity={self._sparsities}, seed={self._seed}, "
            f"iteration={self._num_told}, done={self.done})"
        )


def generator_state(rng: np.random.Generator) -> dict:
    """The JSON state of a numpy Generator's bit generator."""
    state = rng.bit_generator.state
    return json.loads(json.dumps(state, default=int))


def set_generator_state(rng: np.random.Generator, state: Mapping[str, Any]) -> None:
    """Restores a state from `generator_state` (same bit generator type)."""
    if state.get("bit_generator") != type(rng.bit_generator).__name__:
        raise ValueError(
            f"Generator state is for {state.get('bit_generator')}, not "
            f"{type(rng.bit_generator).__name__}."
        )
    rng.bit_generator.state = dict(state)


def _write_npz(path: str, arrays: Mapping[str, np.ndarray]) -> None:
    import io

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(buf.getvalue())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
