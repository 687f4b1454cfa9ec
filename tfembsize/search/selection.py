"""Selective retraining: the top K distinct candidates of a search, retrained, one winner.

A search ranks its candidates by a cheap *search score* (BET: the validation quality ratio
after a short fine-tuning; CIESS: the mean per-entity quality of an archived mask). The
score is only a proxy, so the best few are trained again from scratch and the winner is
chosen on the retrained models. This module is that step, once for every controller:

1. `shortlist`: the candidates in search order (higher score first, ties to the earlier
   candidate), each checked against its target's budget ``B(c) = floor((1 - c) d_max N)``
   with `SizePlan.check`. A plan over its budget is dropped, or repaired with
   `SizePlan.repair` when the caller asks (``repair=True``; the repair is recorded). Plans
   equal to one already taken are dropped, and the first K distinct plans are kept. A target
   without any candidate within its budget is *missed* (`Shortlist.missed`): its budget is
   never relaxed.
2. `retrain_shortlist`: retrains every shortlisted plan through a function the caller gives
   (the caller owns the recipe), resumably: a manifest (``retraining.json``) lists the
   finished retrainings and each writes its plan, validation feedback and weights
   (``r<rank>.*``) first, so a killed run resumes without retraining a finished candidate.
3. `choose_winner`: ONE rule picks the winner, the highest validation value of the
   monitored metric (`selection_value`: the number early stopping already selects on), ties
   to the better search rank.

Example:
    >>> from tfembsize.budget import Budget
    >>> from tfembsize.plan import SizePlan
    >>> budget = Budget(max_params=6, d_max=4)
    >>> candidates = [
    ...     Candidate(SizePlan({"t": [2, 2, 2]}), score=0.7),
    ...     Candidate(SizePlan({"t": [4, 4, 4]}), score=0.9),  # 12 > 6: over the budget
    ...     Candidate(SizePlan({"t": [2, 2, 2]}), score=0.7),  # a duplicate
    ...     Candidate(SizePlan({"t": [3, 2, 1]}), score=0.8),
    ... ]
    >>> short = shortlist(candidates, 2, budget)
    >>> [e.index for e in short.entries], [r["index"] for r in short.rejected]
    ([3, 0], [1])
    >>> choose_winner([0.21, 0.25, 0.25])  # ties go to the better search rank
    1
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tfembsize import _io
from tfembsize.budget import Budget
from tfembsize.errors import BudgetInfeasibleError
from tfembsize.plan import SizePlan
from tfembsize.records import Feedback
from tfembsize.training.weights import assign_weights, get_weights, load_weights, save_weights

__all__ = [
    "Candidate",
    "ShortlistEntry",
    "Shortlist",
    "Retraining",
    "Selection",
    "search_order",
    "rank_distinct",
    "shortlist",
    "shortlists",
    "selection_value",
    "choose_winner",
    "retrain_shortlist",
    "ENTITY_RATIO",
]

logger = logging.getLogger(__name__)

_MANIFEST = "retraining.json"

ENTITY_RATIO = "entity_ratio"
"""The `selection_value` monitor of the mean per-entity quality ratio over users and items."""
_FORMAT = "tfembsize.Retraining"
# Manifests written by the protocol's BET method before this module existed: same layout.
_OLD_FORMATS = ("tfembsize.BETRetraining",)


# Candidates and the shortlist ---------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class Candidate:
    """A plan the search proposes, with its search score.

    Attributes:
        plan: the sizes.
        score: the search score (higher is better), e.g. BET's fitness.
        info: JSON details the caller wants back (iteration, strategy, ...).
    """

    plan: SizePlan
    score: float
    info: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.plan, SizePlan):
            raise TypeError(f"`plan` must be a SizePlan. Received: {type(self.plan).__name__}")
        score = float(self.score)
        if not math.isfinite(score):
            raise ValueError(f"`score` must be a finite number. Received: score={self.score!r}")
        object.__setattr__(self, "score", score)
        object.__setattr__(self, "info", dict(self.info))


@dataclass(frozen=True, eq=False)
class ShortlistEntry:
    """A shortlisted candidate.

    Attributes:
        candidate: the candidate as proposed.
        index: its position in the list given to `shortlist`.
        plan: the plan to retrain: the candidate's, its repair, or its scaling to the budget.
        repaired: True if the candidate's plan was over its budget and was repaired.
        filled: True if the plan is the candidate's scaled to spend the budget
            (`SizePlan.scaled_to`).
    """

    candidate: Candidate
    index: int
    plan: SizePlan
    repaired: bool = False
    filled: bool = False


@dataclass(frozen=True, eq=False)
class Shortlist:
    """The top K distinct candidates of one target within its budget, best search rank first.

    Attributes:
        budget: the target's budget.
        entries: the shortlisted candidates (search rank = position).
        rejected: candidates over the budget that were not repaired: ``{"index", "score",
            "reason"}`` each.
        duplicates: candidates dropped because their plan equals one taken before them.
    """

    budget: Budget
    entries: tuple[ShortlistEntry, ...]
    rejected: tuple[dict[str, Any], ...] = ()
    duplicates: int = 0

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def missed(self) -> bool:
        """True when no candidate is within the budget (the target is reported as missed)."""
        return not self.entries

    @property
    def plans(self) -> list[SizePlan]:
        """The plans to retrain, best search rank first."""
        return [e.plan for e in self.entries]

    def to_dict(self) -> dict[str, Any]:
        """JSON summary (indices, scores, repairs, rejections; not the plans)."""
        return {
            "budget": self.budget.to_dict(),
            "indices": [e.index for e in self.entries],
            "scores": [e.candidate.score for e in self.entries],
            "repaired": [e.index for e in self.entries if e.repaired],
            "rejected": [dict(r) for r in self.rejected],
            "duplicates": self.duplicates,
            "missed": self.missed,
        }


def search_order(scores: Sequence[float] | np.ndarray) -> list[int]:
    """Indices by search score, best first; ties go to the earlier index.

    Example:
        >>> search_order([0.5, 0.9, 0.5, 0.7])
        [1, 3, 0, 2]
    """
    values = [float(s) for s in scores]
    return sorted(range(len(values)), key=lambda i: (-values[i], i))


def rank_distinct(
    scores: Sequence[float] | np.ndarray,
    keys: Sequence[Any],
    same: Callable[[Any, Any], bool] = np.array_equal,
) -> list[int]:
    """`search_order` without duplicates: an index whose key equals an earlier kept one's is out.

    Args:
        scores: search scores (higher is better).
        keys: what makes two candidates the same (a plan, or a compact form of it).
        same: equality of two keys.

    Returns:
        Indices, best first.
    """
    if len(scores) != len(keys):
        raise ValueError(
            f"`scores` and `keys` must have the same length. Received: {len(scores)} scores, "
            f"{len(keys)} keys."
        )
    kept: list[int] = []
    for i in search_order(scores):
        if not any(same(keys[i], keys[j]) for j in kept):
            kept.append(i)
    return kept


def shortlist(
    candidates: Sequence[Candidate],
    k: int,
    budget: Budget,
    *,
    repair: bool = False,
    priority: Mapping[str, Any] | None = None,
    fill: bool = False,
) -> Shortlist:
    """The top ``k`` distinct candidates within ``budget``, best search rank first.

    Candidates are taken in `search_order`; each plan is checked with
    ``plan.check(budget)``. A plan over the budget is dropped (listed in
    `Shortlist.rejected`), or with ``repair=True`` replaced by ``plan.repair(budget,
    priority)`` and marked `ShortlistEntry.repaired`. A plan equal to one already taken is
    dropped. Every kept plan is asserted within the budget again before it is returned.

    Args:
        candidates: the search's candidates, in any order.
        k: how many to keep (a positive integer).
        budget: the target's budget.
        repair: repair plans over the budget instead of dropping them.
        priority: row priorities for the repair (see `SizePlan.repair`).
        fill: replace each plan that fits the budget by its scaling to spend the budget
            (`SizePlan.scaled_to`; marked `ShortlistEntry.filled`). Candidates are still
            ranked, and kept or dropped, as proposed.

    Returns:
        A `Shortlist` (empty, i.e. `Shortlist.missed`, when no candidate fits).

    Raises:
        ValueError: ``k`` is not a positive integer.
        TypeError: ``budget`` is not a `Budget` or a candidate is not a `Candidate`.
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"`k` must be a positive integer. Received: k={k!r}")
    if not isinstance(budget, Budget):
        raise TypeError(f"`budget` must be a Budget. Received: {type(budget).__name__}")
    for i, c in enumerate(candidates):
        if not isinstance(c, Candidate):
            raise TypeError(f"`candidates[{i}]` must be a Candidate. Received: {type(c).__name__}")
    entries: list[ShortlistEntry] = []
    rejected: list[dict[str, Any]] = []
    duplicates = 0
    for i in search_order([c.score for c in candidates]):
        if len(entries) == int(k):
            break
        candidate = candidates[i]
        plan, repaired = candidate.plan, False
        try:
            plan.check(budget)
        except ValueError as e:  # BudgetExceededError, or a size out of [1, d_max]
            if not repair:
                rejected.append({"index": i, "score": candidate.score, "reason": str(e)})
                continue
            try:
                plan, repaired = plan.repair(budget, priority), True
            except BudgetInfeasibleError as err:
                rejected.append({"index": i, "score": candidate.score, "reason": str(err)})
                continue
        filled = False
        if fill and not repaired:
            plan, filled = plan.scaled_to(budget), True
        if any(plan == e.plan for e in entries):
            duplicates += 1
            continue
        entries.append(ShortlistEntry(candidate, i, plan, repaired, filled))
    for entry in entries:
        entry.plan.check(budget)  # the guarantee, asserted on what will be retrained
    if rejected:
        logger.info(
            "%d of %d candidates are over the budget (%s) and were dropped.",
            len(rejected),
            len(candidates),
            budget.describe(),
        )
    return Shortlist(budget, tuple(entries), tuple(rejected), duplicates)


def shortlists(
    candidates: Mapping[float, Sequence[Candidate]],
    k: int,
    d_max: int,
    *,
    repair: bool = False,
    priority: Mapping[str, Any] | None = None,
) -> dict[float, Shortlist]:
    """`shortlist` per target sparsity c, each within ``B(c) = floor((1 - c) d_max N)``.

    Args:
        candidates: target sparsity -> that target's candidates.
        k: how many to keep per target.
        d_max: full width.
        repair: see `shortlist`.
        priority: see `shortlist`.

    Returns:
        target sparsity -> `Shortlist` (check `Shortlist.missed` for targets without one).
    """
    return {
        float(c): shortlist(
            cands, k, Budget(sparsity=float(c), d_max=d_max), repair=repair, priority=priority
        )
        for c, cands in candidates.items()
    }


# The winner ---------------------------------------------------------------------------------
def selection_value(feedback: Feedback, monitor: str) -> float:
    """The validation number a retrained candidate is chosen by (the recipe's ``monitor``).

    Args:
        feedback: the candidate's validation feedback after retraining.
        monitor: ``"quality"``, ``"entity_ratio"`` (the mean over users and items of the
            per-entity quality ratios to the full-size model, `Feedback.mean_entity_ratio`;
            CIESS's rule) or a metric of ``feedback.metrics`` (e.g. ``"recall@20"``).

    Raises:
        ValueError: the feedback has no such metric (or no per-entity ratios).
    """
    if monitor == "quality":
        return float(feedback.quality)
    if monitor == ENTITY_RATIO:
        value = feedback.mean_entity_ratio()
        if value is None:
            raise ValueError(
                "monitor='entity_ratio' needs per-entity quality ratios, which come from a "
                "full-size reference model; this validation feedback has none."
            )
        return value
    if monitor not in feedback.metrics:
        raise ValueError(
            f"The validation feedback has no {monitor!r}; it has {sorted(feedback.metrics)}. "
            "Pass a `monitor` the environment reports (or 'quality')."
        )
    return float(feedback.metrics[monitor])


def choose_winner(values: Sequence[float | None]) -> int | None:
    """The position of the highest value; ties go to the better (earlier) search rank.

    Args:
        values: validation values of the retrained candidates in search-rank order; None or
            non-finite for a candidate without a usable value (a failed retraining).

    Returns:
        The winner's position, or None when no value is usable.
    """
    usable = {
        i: float(v) for i, v in enumerate(values) if v is not None and math.isfinite(float(v))
    }
    if not usable:
        return None
    return max(usable, key=lambda i: (usable[i], -i))


# Resumable retraining -----------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class Retraining:
    """One retrained candidate, as the caller's retraining function returns it.

    Attributes:
        validation: validation `Feedback` of the retrained model.
        model: the trained model (None if the caller keeps no model).
        details: JSON numbers to record (usable parameters, steps, wall time, ...).
    """

    validation: Feedback
    model: Any = None
    details: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, eq=False)
class Selection:
    """The outcome of `retrain_shortlist`.

    Attributes:
        shortlist: what was retrained.
        monitor: the validation number the winner was chosen by.
        records: one JSON record per retrained candidate, in search-rank order:
            ``rank``, ``selection_value``, ``validation`` (metrics and ``quality``) and the
            caller's ``details``.
        winner: the winner's search rank (None when the target was missed).
        result: the winner's `Retraining` (its model rebuilt from the saved weights when an
            earlier run trained it).
    """

    shortlist: Shortlist
    monitor: str
    records: tuple[dict[str, Any], ...]
    winner: int | None
    result: Retraining | None

    @property
    def missed(self) -> bool:
        """True when the target had no candidate within its budget."""
        return self.shortlist.missed

    @property
    def plan(self) -> SizePlan | None:
        """The winner's plan."""
        return None if self.winner is None else self.shortlist.entries[self.winner].plan


def _read_manifest(path: str, monitor: str) -> list[dict[str, Any]]:
    state = _io.read_json(path, what="retraining manifest")
    if not isinstance(state, Mapping) or state.get("format") not in (_FORMAT, *_OLD_FORMATS):
        raise ValueError(f"{path!r} is not a retraining manifest.")
    if state.get("monitor") != monitor:
        raise ValueError(
            f"{path!r} chose by {state.get('monitor')!r}, this run by monitor={monitor!r}: "
            "delete its folder to retrain again."
        )
    return [dict(r) for r in state["records"]]


def retrain_shortlist(
    short: Shortlist,
    retrain: Callable[[SizePlan], Retraining],
    directory: str | os.PathLike[str],
    *,
    monitor: str,
    build: Callable[[SizePlan], Any] | None = None,
    label: str = "",
) -> Selection:
    """Retrains every shortlisted plan (resumably) and chooses the winner with `choose_winner`.

    Files in ``directory``: ``retraining.json`` lists the finished retrainings (written after
    each one); ``r<rank>.plan.json`` and ``r<rank>.validation.npz`` are written for every
    candidate, ``r<rank>.weights.npz`` too, and the weights of all but the current winner are
    deleted once the manifest names it. A rerun skips every candidate the manifest lists.

    Args:
        short: the `shortlist` to retrain (a missed target retrains nothing).
        retrain: ``retrain(plan) -> Retraining``: trains from scratch and validates.
        directory: where the manifest and the per-candidate files live.
        monitor: the validation number to choose by (see `selection_value`).
        build: ``build(plan) -> model``, a fresh model with the plan applied, into which the
            winner's saved weights are loaded when an earlier run retrained it. None: no
            weights are saved and such a winner comes back without a model.
        label: a prefix for log lines (e.g. ``"BET c=0.9"``).

    Returns:
        A `Selection`.

    Raises:
        ValueError: ``directory`` holds a retraining of other plans or another monitor.
    """
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    plans = short.plans
    manifest = os.path.join(directory, _MANIFEST)
    records: list[dict[str, Any]] = []
    if os.path.exists(manifest):
        records = _read_manifest(manifest, monitor)
    if len(records) > len(plans):
        raise ValueError(
            f"{directory!r} holds {len(records)} retrainings, more than the {len(plans)} "
            "shortlisted plans; the search changed: delete the folder to retrain again."
        )
    for rec in records:  # the saved plans must be the plans being retrained now
        saved = SizePlan.from_dict(
            _io.read_json(os.path.join(directory, f"r{rec['rank']}.plan.json"), what="plan")
        )
        if saved != plans[rec["rank"]]:
            raise ValueError(
                f"{directory} holds a retraining of other plans (rank {rec['rank']}); the search "
                "changed: delete the directory to retrain again."
            )
    best: Retraining | None = None
    for rank in range(len(records), len(plans)):
        plan = plans[rank]
        logger.info(
            "%sretraining candidate %d of %d.", f"{label}: " if label else "", rank + 1, len(plans)
        )
        result = retrain(plan)
        if not isinstance(result, Retraining):
            raise TypeError(
                f"`retrain` must return a Retraining. Received: {type(result).__name__}"
            )
        stem = os.path.join(directory, f"r{rank}")
        _io.write_json(f"{stem}.plan.json", plan.to_dict())
        result.validation.save(f"{stem}.validation.npz")
        if build is not None and result.model is not None:
            save_weights(f"{stem}.weights.npz", get_weights(result.model))
        value = selection_value(result.validation, monitor) if result.validation.ok else math.nan
        records.append(
            {
                "rank": rank,
                "selection_value": value,
                "validation": {
                    **{k: float(v) for k, v in result.validation.metrics.items()},
                    "quality": float(result.validation.quality),
                },
                **dict(result.details),
            }
        )
        best_rank = choose_winner([r["selection_value"] for r in records])
        _io.write_json(
            manifest,
            {"monitor": monitor, "records": records, "best": best_rank},
            format=_FORMAT,
        )
        for r in range(rank + 1):
            path = os.path.join(directory, f"r{r}.weights.npz")
            if r != best_rank and os.path.exists(path):
                os.remove(path)
        if best_rank == rank:
            best = result
    winner = choose_winner([r["selection_value"] for r in records])
    if best is None and winner is not None:  # retrained by an earlier run: rebuild it
        rec = records[winner]
        model = None
        if build is not None:
            model = build(plans[winner])
            path = os.path.join(directory, f"r{winner}.weights.npz")
            assign_weights(model, load_weights(path), source=repr(path))
        best = Retraining(
            validation=Feedback.load(os.path.join(directory, f"r{winner}.validation.npz")),
            model=model,
            details={
                k: v for k, v in rec.items() if k not in ("rank", "selection_value", "validation")
            },
        )
    return Selection(short, monitor, tuple(records), winner, best)
