"""BET in the paper protocol: one multi-sparsity search per seed, top-K retraining per cell.

For every cell (``bet``, c, seed):

1. **Search, once per seed for every sparsity.** A `tfembsize.controllers.BETController`
   over all the run's sparsities (each with its own budget, archive and surrogate) runs in
   `MethodContext.shared_directory` with `tfembsize.search.run`, so the first cell of a seed
   runs (or resumes) the whole search and the other cells read its result. Each iteration
   samples m budgeted candidates, picks one (surrogate argmax / random / nearest), fine-tunes
   the pretrained full model from its snapshot for h epochs and records the validation
   quality ratio to the full model. The full model is the protocol's pretrained reference
   (`MethodContext.environment`), shared with the other search methods of the seed.
2. **Selective retraining.** The top K = 5 distinct actions of the cell's sparsity, each
   asserted within the cell's budget, are retrained from scratch with the protocol's recipe
   (`MethodContext.retrain`: train, early stopping on validation, best weights restored) by
   `tfembsize.search.selection` (the same shortlist and winner rule as `BETController`'s own
   final phase). The winner is chosen by the recipe's validation ``monitor`` (Recall@20 by
   default, the number early stopping already selects on; ties to the better search rank)
   and handed to the runner, which evaluates test once. Each retraining is written to the
   cell's directory as it finishes, so a killed cell resumes without retraining again.

**Fine-tuning recipe (our adaptation).** BET fine-tunes at lr 0.03, x0.98 every 200 steps,
floor 1e-3, batch 10 000, for h epochs of ceil(|train| / 10 000) steps; its fine-tuning and
its retraining both start at the same rate (0.03). We measured that lr 0.03 does not train a
TensorFlow BPR-MF at all, and every method of the protocol gets one tuned rate per backbone
and data set. So fine-tuning starts at the protocol recipe's tuned rate (as BET, the same
start as retraining), keeps BET's decay shape (x0.98 every 200 steps, floor at 1/30 of the
start, BET's 0.03 -> 1e-3 ratio) and uses the recipe's batch size; h epochs are h passes
over the training interactions of ceil(|train| / batch) steps each, the same number of
training triples as BET's h epochs at batch 10 000 (`bet_finetune_config`).

Settings are `BETSettings` (``search_iterations`` T, ``num_candidates`` m, ``finetune_epochs``
h, ``top_k`` K; defaults T = 50, m = 100, h = 10 or 15 for NGCF, K = 5), read from
`MethodContext.options`; the command line offers them as ``--bet-search-iterations``,
``--bet-num-candidates``, ``--bet-finetune-epochs`` and ``--bet-top-k`` (also
``--bet-iterations``, ``--bet-candidates``, ``--bet-epochs``). They are recorded in every
cell's ``info`` with the search wall time, the wall time of one full training of the
backbone in the same run (the reference pretraining) and their ratio
``search_vs_full_train_ratio``.

References:
    Qu et al., "Budgeted Embedding Table For Recommender Systems", WSDM 2024.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from tfembsize.errors import TargetMissedError
from tfembsize.protocol.context import MethodContext, MethodOutput
from tfembsize.protocol.registry import register_method
from tfembsize.protocol.selective import retrain_top
from tfembsize.protocol.settings import setting, settings_from_options
from tfembsize.search.selection import shortlist

__all__ = [
    "BETSettings",
    "bet_finetune_config",
    "bet_controller",
    "bet_method",
    "BET_VARIANTS",
]

logger = logging.getLogger(__name__)

BET_VARIANTS: dict[str, dict[str, Any]] = {
    "bet": {},
    "bet-random": {"strategy_cycle": ("random",)},
    "bet-sizes-only": {"surrogate_features": "constant"},
}
"""Registered BET methods and their controller arguments: the paper's method, the
random-selection ablation and the ablation whose surrogate sees only the sizes (Table 2)."""

# BET's fine-tuning schedule: x0.98 every 200 steps, floor 1e-3 from 0.03.
_FT_DECAY_RATE = 0.98
_FT_DECAY_STEPS = 200
_FT_FLOOR_RATIO = 1e-3 / 0.03


@dataclass(frozen=True)
class BETSettings:
    """The iteration counts of a protocol BET run (defaults: the BET paper's).

    The options of ``bet``, ``bet-random`` and ``bet-sizes-only`` (one option group, ``bet``).

    Attributes:
        search_iterations: T, search iterations per sparsity.
        num_candidates: m, candidates sampled per iteration.
        finetune_epochs: h, fine-tuning epochs per iteration.
        top_k: K, actions retrained from scratch per sparsity.
        search_start: where each search iteration trains from: ``"full"`` (fine-tune the
            pretrained full model with BET's decaying rate, the paper) or ``"scratch"`` (h
            epochs from a fresh initialisation with the protocol recipe).
    """

    search_iterations: int = setting(
        50, help="BET: T, search iterations per sparsity", aliases=("--bet-iterations",)
    )
    num_candidates: int = setting(
        100, help="BET: m, candidates sampled per iteration", aliases=("--bet-candidates",)
    )
    finetune_epochs: float = setting(
        10.0,
        help="BET: h, fine-tuning epochs per iteration (15 for NGCF)",
        aliases=("--bet-epochs",),
    )
    top_k: int = setting(5, help="BET: K, actions retrained from scratch per sparsity")
    search_start: str = setting(
        "full",
        help=(
            "BET: where each search iteration trains from: 'full' (fine-tune the pretrained "
            "full model, the paper) or 'scratch' (h epochs from a fresh initialisation)"
        ),
    )

    def __post_init__(self) -> None:
        for name in ("search_iterations", "num_candidates", "top_k"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be a positive integer. Received: {name}={value!r}")
        if self.search_start not in ("full", "scratch"):
            raise ValueError(
                "`search_start` must be 'full' or 'scratch'. Received: "
                f"search_start={self.search_start!r}"
            )
        h = self.finetune_epochs
        if isinstance(h, bool) or not isinstance(h, (int, float)) or not h > 0:
            raise ValueError(
                f"`finetune_epochs` must be a positive number. Received: finetune_epochs={h!r}"
            )
        object.__setattr__(self, "finetune_epochs", float(h))

    @classmethod
    def from_options(cls, options: Mapping[str, Any], backbone: str = "") -> BETSettings:
        """Settings from a method's options; h defaults to 15 for NGCF (as the BET paper), else 10.

        Raises:
            ValueError: an unknown option name or a bad value.
        """
        default_h = 15.0 if backbone == "ngcf" else 10.0
        return settings_from_options(cls, options, defaults={"finetune_epochs": default_h})

    def to_dict(self) -> dict:
        """JSON form (``T``, ``m``, ``h``, ``K`` under their long names)."""
        return asdict(self)


def bet_finetune_config(recipe: Any) -> Any:
    """BET's fine-tuning recipe adapted to a tuned protocol recipe.

    The start rate and batch size are the recipe's; the rate is multiplied by 0.98 every 200
    steps down to a floor of 1/30 of the start (BET: 0.03 -> 1e-3). The number of steps comes
    from each decision (h epochs of ceil(|train| / batch) steps).

    Args:
        recipe: the protocol's `tfembsize.models.TrainConfig`.

    Returns:
        A `TrainConfig`.

    Example:
        >>> from tfembsize.models import TrainConfig
        >>> ft = bet_finetune_config(TrainConfig(learning_rate=3e-3, batch_size=2048))
        >>> ft.learning_rate, ft.decay_rate, ft.decay_steps, round(ft.min_learning_rate, 6)
        (0.003, 0.98, 200, 0.0001)
    """
    lr = float(recipe.learning_rate)
    return recipe.replace(
        decay_rate=_FT_DECAY_RATE,
        decay_steps=_FT_DECAY_STEPS,
        min_learning_rate=lr * _FT_FLOOR_RATIO,
        evaluate_test=False,
        refit=False,
    )


def bet_controller(
    sparsities: tuple[float, ...], seed: int, settings: BETSettings, **variant: Any
) -> Any:
    """The protocol's `BETController`: search only (the protocol retrains the top K itself)."""
    from tfembsize.controllers import BETController

    return BETController(
        sparsity=tuple(sparsities),
        search_iterations=settings.search_iterations,
        num_candidates=settings.num_candidates,
        finetune_epochs=settings.finetune_epochs,
        top_k=settings.top_k,
        search_start=settings.search_start,
        retrain=False,
        seed=int(seed),
        **variant,
    )


def _search_config(ctx: MethodContext, settings: BETSettings) -> Any:
    """The recipe of a search iteration: BET's fine-tuning, or the protocol's from scratch."""
    if settings.search_start == "full":
        return bet_finetune_config(ctx.train_config)
    return ctx.train_config.replace(evaluate_test=False, refit=False)


def _search(ctx: MethodContext, settings: BETSettings, variant: Mapping[str, Any]) -> tuple:
    """Runs or resumes the seed's multi-sparsity search; returns (controller, result, env)."""
    from tfembsize.search import run

    if ctx.sparsity is None:
        raise ValueError("BET needs a target sparsity; the cell has none.")
    if ctx.sparsity in ctx.sparsities:
        sparsities, directory = tuple(ctx.sparsities), ctx.shared_directory
    else:  # a cell outside the run's list: a search of its own
        sparsities, directory = (float(ctx.sparsity),), os.path.join(ctx.directory, "search")
    controller = bet_controller(sparsities, ctx.seed, settings, **variant)
    env = ctx.environment(train_config=_search_config(ctx, settings))
    result = run(controller, env, directory, verbose=0, tensorboard=True)
    if not result.finished:
        raise RuntimeError(f"The BET search in {directory} did not finish.")
    return controller, result, env, directory


# The method ---------------------------------------------------------------------------------
def bet_method(**variant: Any) -> Callable[[MethodContext], MethodOutput]:
    """The protocol method of BET (``variant``: extra `BETController` arguments, for ablations).

    Args:
        **variant: e.g. ``strategy_cycle=("random",)`` or ``surrogate_features="constant"``.

    Returns:
        ``fn(ctx) -> MethodOutput`` with the retrained winner (the runner evaluates test).
    """

    def method(ctx: MethodContext) -> MethodOutput:
        if ctx.sparsity is None:
            raise ValueError("BET needs a target sparsity; the cell has none.")
        settings = BETSettings.from_options(ctx.options, ctx.backbone)
        controller, result, env, directory = _search(ctx, settings, variant)
        c = float(ctx.sparsity)
        archived = controller.candidates(sparsity=c)
        if not archived:
            raise RuntimeError(f"The BET search at c={c:g} has no successful iteration.")
        budget = ctx.budget
        if budget is None:  # not with a sparsity (checked above)
            raise ValueError("BET needs a target sparsity; the cell has none.")
        short = shortlist(archived, settings.top_k, budget)  # each asserted in B(c)
        if short.missed:
            raise TargetMissedError(
                f"BET missed c={c:g}: no archived action is within the budget "
                f"({budget.describe()}); the budget is not relaxed."
            )
        records, best_rank, best = retrain_top(
            ctx,
            short,
            os.path.join(ctx.directory, "retrain"),
            monitor=ctx.train_config.monitor,
            label=f"BET c={ctx.sparsity}",
        )
        reference = env.reference()
        search_time = result.elapsed_by("sparsity", phase="search").get(c, 0.0)
        full_time = None if reference is None else float(reference.wall_time)
        ratio = None if not full_time else search_time / full_time
        candidates = []
        for entry, rec in zip(short.entries, records, strict=True):
            action = entry.candidate
            candidates.append(
                {
                    **rec,
                    "search_iteration": action.info["iteration"],
                    "search_fitness": action.score,
                    "predicted_fitness": action.info["predicted_fitness"],
                    "strategy": action.info["strategy"],
                }
            )
        archive = controller.archive(c)
        info = {
            "controller": type(controller).__name__,
            "variant": {k: list(v) if isinstance(v, tuple) else v for k, v in variant.items()},
            "settings": settings.to_dict(),
            "T": settings.search_iterations,
            "m": settings.num_candidates,
            "h": settings.finetune_epochs,
            "K": settings.top_k,
            "search_start": settings.search_start,
            "finetune_recipe": _search_config(ctx, settings).to_dict(),
            "search_directory": os.path.relpath(directory, ctx.root or ctx.directory),
            "search_iterations_done": len(archive),
            "search_steps_all": len(result.history),
            "search_time": search_time,
            "search_time_all": result.elapsed,
            "full_train_time": full_time,
            "full_train_steps": None if reference is None else reference.train_steps,
            "search_vs_full_train_ratio": ratio,
            "reference_validation_quality": None if reference is None else reference.quality,
            "best_search_fitness": float(archive.fitness.max()),
            "selection": ctx.train_config.monitor,
            "chosen_rank": best_rank,
            "top_k_retrain_time": float(sum(r["wall_time"] for r in records)),
            "candidates": candidates,
        }
        if not all(math.isfinite(float(r["selection_value"])) for r in records):
            raise FloatingPointError("A retrained BET candidate has a non-finite validation score.")
        return MethodOutput(plan=short.plans[best_rank], retrained=best, info=info)

    return method


_DESCRIPTIONS = {
    "bet": "BET: budgeted whole-table search with a DeepSets predictor (one search per "
    "seed for all sparsities; top-5 retraining)",
    "bet-random": "BET ablation: random candidate selection (no predictor)",
    "bet-sizes-only": "BET ablation: the predictor sees only the sizes (no frequencies)",
}

for _name, _variant in BET_VARIANTS.items():
    register_method(
        _name,
        bet_method(**_variant),
        description=_DESCRIPTIONS[_name],
        settings=BETSettings,
        group="bet",
    )
