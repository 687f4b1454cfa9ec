"""CIESS in the paper protocol: one search per seed for every sparsity, top-l retraining per cell.

For every cell (``ciess``, c, seed):

1. **Search, once per seed for every sparsity.** A `tfembsize.controllers.CIESSController`
   runs M episodes of T iterations in `MethodContext.shared_directory` with
   `tfembsize.search.run` (resumable after every iteration). Each iteration trains a freshly
   initialised backbone with the sizes the two TD3 agents chose, for ``train_epochs``
   passes over the training interactions (or ``train_steps`` steps) with the protocol
   recipe's learning rate and batch size and no early stopping, and evaluates it on
   validation against the protocol's pretrained full-size model (`MethodContext.environment`,
   shared with the other search methods of the seed). The search itself is not budgeted.
2. **Selective retraining.** The cell's candidates are all archived masks within B(c)
   (every density band, not only the tightest one), ranked by their mean per-entity quality
   ratio over users and items; the top l = 3 distinct ones are retrained from scratch with
   the protocol's recipe (`MethodContext.retrain`) by `tfembsize.protocol.selective
   .retrain_top`, and the winner is the best by validation mean per-entity quality ratio
   (``monitor="entity_ratio"``; ``--ciess-monitor recall@20`` chooses as the other methods).
   The runner evaluates test once. A target no archived mask meets raises
   `tfembsize.errors.TargetMissedError`; the runner records it as missed and goes on.

Settings are `CIESSSettings`, read from `MethodContext.options`; the command line offers them
as ``--ciess-episodes``, ``--ciess-iterations``, ``--ciess-train-epochs``, ... . They are
recorded in every cell's ``info`` with the search wall time, the wall time of one full
training of the backbone in the same run (the reference pretraining) and their ratio
``search_vs_full_train_ratio``.

References:
    Qu et al., "Continuous Input Embedding Size Search For Recommender Systems",
    SIGIR 2023.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from tfembsize.errors import TargetMissedError
from tfembsize.protocol.context import MethodContext, MethodOutput
from tfembsize.protocol.registry import register_method
from tfembsize.protocol.selective import retrain_top
from tfembsize.protocol.settings import setting, settings_from_options

__all__ = ["CIESSSettings", "ciess_controller", "ciess_method", "CIESS_VARIANTS"]

logger = logging.getLogger(__name__)

CIESS_VARIANTS: dict[str, dict[str, Any]] = {
    "ciess": {},
    "ciess-no-walk": {"walk_length": 0},
}
"""Registered CIESS methods and their controller arguments: the method and the ablation
without the random walk (the CIESS paper's Table 2)."""


@dataclass(frozen=True)
class CIESSSettings:
    """The options of a protocol CIESS run (defaults: the CIESS paper's).

    Attributes:
        episodes: M, episodes.
        iterations: T, iterations per episode.
        train_epochs: passes over the training interactions per iteration.
        train_steps: optimiser steps per iteration instead (0: use ``train_epochs``).
        reward_weight: lambda, the weight of the memory cost in the reward.
        reward_quality: ``"ratio"`` (paper) or ``"raw"`` (authors' code; use lambda 0.01).
        walk_length: L, hops of the random walk (0: no walk).
        walk_weighting: ``"inverse"`` (code) or ``"distance"`` (paper).
        noise: ``"shared"`` (code) or ``"per_entity"`` (paper).
        noise_distribution: ``"gaussian"`` (default), ``"uniform"`` or ``"ou"`` (the paper's
            ablation noises).
        top_k: l, masks retrained from scratch per sparsity.
        monitor: what the retrained winner is chosen by.
        fill_budget: scale each of the top l masks to spend the budget B(c) before it is
            retrained (`tfembsize.plan.SizePlan.scaled_to`; not in the paper). The search
            and its ranking are unchanged, so a finished search can be reused.
    """

    episodes: int = setting(30, help="CIESS: M, episodes")
    iterations: int = setting(10, help="CIESS: T, iterations per episode")
    train_epochs: float = setting(5.0, help="CIESS: training epochs per iteration")
    train_steps: int = setting(0, help="CIESS: training steps per iteration (0: use epochs)")
    reward_weight: float = setting(0.4, help="CIESS: lambda, weight of the memory cost")
    reward_quality: str = setting("ratio", help="CIESS: reward quality, 'ratio' or 'raw'")
    walk_length: int = setting(5, help="CIESS: L, random-walk hops (0: off)")
    walk_weighting: str = setting("inverse", help="CIESS: hop weights, 'inverse' or 'distance'")
    noise: str = setting("shared", help="CIESS: exploration noise, 'shared' or 'per_entity'")
    noise_distribution: str = setting(
        "gaussian", help="CIESS: noise distribution, 'gaussian', 'uniform' or 'ou'"
    )
    top_k: int = setting(3, help="CIESS: l, masks retrained from scratch per sparsity")
    monitor: str = setting("entity_ratio", help="CIESS: retrained winner by this validation value")
    fill_budget: bool = setting(
        False,
        help="CIESS: scale the top l masks to spend the budget before retraining (not in "
        "the paper)",
    )

    def __post_init__(self) -> None:
        if isinstance(self.train_steps, bool) or self.train_steps < 0:
            raise ValueError(
                f"`train_steps` must be >= 0 (0: use train_epochs). Received: {self.train_steps!r}"
            )
        ciess_controller((0.9,), 0, self)  # the controller's checks, with its messages

    def to_dict(self) -> dict:
        """JSON form."""
        return asdict(self)


def ciess_controller(
    sparsities: tuple[float, ...], seed: int, settings: CIESSSettings, **variant: Any
) -> Any:
    """The protocol's `CIESSController`: search only (the protocol retrains the top l itself)."""
    from tfembsize.controllers import CIESSController

    options: dict[str, Any] = {
        "episodes": settings.episodes,
        "iterations": settings.iterations,
        "train_epochs": settings.train_epochs,
        "train_steps": settings.train_steps or None,
        "reward_weight": settings.reward_weight,
        "reward_quality": settings.reward_quality,
        "walk_length": settings.walk_length,
        "walk_weighting": settings.walk_weighting,
        "noise": settings.noise,
        "noise_distribution": settings.noise_distribution,
        "top_k": settings.top_k,
        "monitor": settings.monitor,
    }
    options.update(variant)
    return CIESSController(sparsity=tuple(sparsities), retrain=False, seed=int(seed), **options)


def search_config(recipe: Any) -> Any:
    """The recipe of one search iteration: the protocol's, without test or refit.

    The length comes from each decision (``train_epochs`` or ``train_steps``), which makes
    the run fixed-length with one validation evaluation at its end.
    """
    return recipe.replace(evaluate_test=False, refit=False)


def _search(ctx: MethodContext, settings: CIESSSettings, variant: Mapping[str, Any]) -> tuple:
    """Runs or resumes the seed's search; returns (controller, result, env, directory)."""
    from tfembsize.search import run

    if ctx.sparsity is None:
        raise ValueError("CIESS needs a target sparsity; the cell has none.")
    if ctx.sparsity in ctx.sparsities:
        sparsities, directory = tuple(ctx.sparsities), ctx.shared_directory
    else:  # a cell outside the run's list: a search of its own
        sparsities, directory = (float(ctx.sparsity),), os.path.join(ctx.directory, "search")
    controller = ciess_controller(sparsities, ctx.seed, settings, **variant)
    env = ctx.environment(train_config=search_config(ctx.train_config))
    result = run(controller, env, directory, verbose=0, tensorboard=True)
    if not result.finished:
        raise RuntimeError(f"The CIESS search in {directory} did not finish.")
    return controller, result, env, directory


def ciess_method(**variant: Any) -> Callable[[MethodContext], MethodOutput]:
    """The protocol method of CIESS (``variant``: extra `CIESSController` arguments).

    Returns:
        ``fn(ctx) -> MethodOutput`` with the retrained winner (the runner evaluates test).
    """

    def method(ctx: MethodContext) -> MethodOutput:
        settings = settings_from_options(CIESSSettings, ctx.options)
        controller, result, env, directory = _search(ctx, settings, variant)
        c = float(ctx.sparsity)  # type: ignore[arg-type]  # checked by _search
        archive = controller.archive()
        short = controller.top_masks(c, fill=settings.fill_budget)
        budget = ctx.budget
        if short.missed or budget is None:
            smallest = float(archive.density.min()) if len(archive) else math.nan
            raise TargetMissedError(
                f"CIESS missed c={c:g}: none of the {len(archive)} archived masks is within "
                f"the budget ({budget.describe() if budget else 'none'}; density <= "
                f"{1 - c:.3g}); the sparsest archived mask has density {smallest:.4f}. The "
                "budget is not relaxed."
            )
        reference = env.reference()
        records, best_rank, best = retrain_top(
            ctx,
            short,
            os.path.join(ctx.directory, "retrain"),
            monitor=settings.monitor,
            reference=reference,
            label=f"CIESS c={c:g}",
        )
        # One search serves every sparsity: its whole wall time is each cell's search time.
        search_total = float(sum(result.elapsed_by("method", phase="search").values()))
        full_time = None if reference is None else float(reference.wall_time)
        candidates = []
        for entry, rec in zip(short.entries, records, strict=True):
            candidates.append(
                {
                    **rec,
                    "search_score": entry.candidate.score,
                    "filled": entry.filled,
                    "archived_params": entry.candidate.plan.total_params(),
                    **entry.candidate.info,
                }
            )
        eligible = archive.params <= controller.problem.max_params(c)
        info = {
            "controller": type(controller).__name__,
            "variant": dict(variant),
            "settings": settings.to_dict(),
            "M": settings.episodes,
            "T": settings.iterations,
            "l": settings.top_k,
            "search_directory": os.path.relpath(directory, ctx.root or ctx.directory),
            "search_iterations_done": len(archive),
            "search_steps_all": len(result.history),
            "search_time": search_total,
            "full_train_time": full_time,
            "full_train_steps": None if reference is None else reference.train_steps,
            "search_vs_full_train_ratio": None if not full_time else search_total / full_time,
            "reference_validation_quality": None if reference is None else reference.quality,
            "archive_density": {
                "min": float(archive.density.min()),
                "median": float(np.median(archive.density)),
                "max": float(archive.density.max()),
                "within_budget": int(eligible.sum()),
            },
            "selection": settings.monitor,
            "chosen_rank": best_rank,
            "top_l_retrain_time": float(sum(r["wall_time"] for r in records)),
            "candidates": candidates,
        }
        if not all(math.isfinite(float(r["selection_value"])) for r in records):
            raise FloatingPointError("A retrained CIESS mask has a non-finite validation score.")
        return MethodOutput(plan=short.plans[best_rank], retrained=best, info=info)

    return method


_DESCRIPTIONS = {
    "ciess": "CIESS: per-entity sizes from two TD3 agents with random-walk exploration (one "
    "search per seed for all sparsities; top-3 retraining)",
    "ciess-no-walk": "CIESS ablation: without the random walk",
}

for _name, _variant in CIESS_VARIANTS.items():
    register_method(
        _name,
        ciess_method(**_variant),
        description=_DESCRIPTIONS[_name],
        settings=CIESSSettings,
        group="ciess",
    )
