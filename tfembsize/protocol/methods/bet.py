"""BET in the paper protocol: one multi-sparsity search per seed, top-K retraining per cell.

Spec §4 under the protocol of §1, for every cell (``bet``, c, seed):

1. **Search, once per seed for every sparsity.** A `tfembsize.controllers.BETController`
   over all the run's sparsities (each with its own budget, archive and surrogate) runs in
   `MethodContext.shared_directory` with `tfembsize.search.run`, so the first cell of a seed
   runs (or resumes) the whole search and the other cells read its result. Each iteration
   samples m budgeted candidates, picks one (surrogate argmax / random / nearest), fine-tunes
   the pretrained full model from its snapshot for h epochs and records the validation
   quality ratio to the full model. The full model is the protocol's pretrained reference
   (`MethodContext.environment`), shared with the other search methods of the seed.
2. **Selective retraining (§4.5).** The top K = 5 distinct actions of the cell's sparsity are
   retrained from scratch with the protocol's recipe (`MethodContext.retrain`: train, early
   stopping on validation, best weights restored). The winner is chosen by the recipe's
   validation ``monitor`` (Recall@20 by default, the number early stopping already selects
   on) and handed to the runner, which evaluates test once. Each retraining is written to the
   cell's directory as it finishes, so a killed cell resumes without retraining again.

**Fine-tuning recipe (spec §2, adapted) [ours].** BET fine-tunes at lr 0.03, x0.98 every 200
steps, floor 1e-3, batch 10 000, for h epochs of ceil(|train| / 10 000) steps; its fine-tuning
and its retraining both start at the same rate (0.03). Spec §2 measured that lr 0.03 does not
train a TensorFlow BPR-MF at all and asks for one tuned rate per backbone and data set for
every method. So fine-tuning starts at the protocol recipe's tuned rate (as BET, the same
start as retraining), keeps BET's decay shape (x0.98 every 200 steps, floor at 1/30 of the
start, BET's 0.03 -> 1e-3 ratio) and uses the recipe's batch size; h epochs are h passes
over the training interactions of ceil(|train| / batch) steps each, the same number of
training triples as BET's h epochs at batch 10 000 (`bet_finetune_config`).

Settings come from `MethodContext.options` (``search_iterations`` T, ``num_candidates`` m,
``finetune_epochs`` h, ``top_k`` K; defaults T = 50, m = 100, h = 10 or 15 for NGCF, K = 5;
``benchmarks/paper_protocol.py --bet-iterations/--bet-candidates/--bet-epochs/--bet-top-k``)
and are recorded in every cell's ``info`` with the search wall time, the wall time of one
full training of the backbone in the same run (the reference pretraining) and their ratio
``search_vs_full_train_ratio``.

References:
    Qu et al., "Budgeted Embedding Table For Recommender Systems", WSDM 2024.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from tfembsize.plan import SizePlan
from tfembsize.protocol.runner import MethodContext, MethodOutput, Retrained
from tfembsize.records import Feedback

__all__ = [
    "BETSettings",
    "bet_finetune_config",
    "bet_controller",
    "bet_method",
    "selection_value",
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

# BET's fine-tuning schedule (spec §2, §4.6): x0.98 every 200 steps, floor 1e-3 from 0.03.
_FT_DECAY_RATE = 0.98
_FT_DECAY_STEPS = 200
_FT_FLOOR_RATIO = 1e-3 / 0.03

_RETRAIN_FORMAT = "tfembsize.BETRetraining"


@dataclass(frozen=True)
class BETSettings:
    """The iteration counts of a protocol BET run (spec §4.6 defaults).

    Attributes:
        search_iterations: T, search iterations per sparsity.
        num_candidates: m, candidates sampled per iteration.
        finetune_epochs: h, fine-tuning epochs per iteration.
        top_k: K, actions retrained from scratch per sparsity.
    """

    search_iterations: int = 50
    num_candidates: int = 100
    finetune_epochs: float = 10.0
    top_k: int = 5

    def __post_init__(self) -> None:
        for name in ("search_iterations", "num_candidates", "top_k"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be a positive integer. Received: {name}={value!r}")
        h = self.finetune_epochs
        if isinstance(h, bool) or not isinstance(h, (int, float)) or not h > 0:
            raise ValueError(
                f"`finetune_epochs` must be a positive number. Received: finetune_epochs={h!r}"
            )
        object.__setattr__(self, "finetune_epochs", float(h))

    @classmethod
    def from_options(cls, options: Mapping[str, Any], backbone: str = "") -> BETSettings:
        """Settings from a method's options; h defaults to 15 for NGCF [paper], else 10.

        Raises:
            ValueError: an unknown option name or a bad value.
        """
        names = {"search_iterations", "num_candidates", "finetune_epochs", "top_k"}
        unknown = sorted(set(options) - names)
        if unknown:
            raise ValueError(f"Unknown BET option(s) {unknown}; known options: {sorted(names)}.")
        values = {k: v for k, v in options.items() if v is not None}
        values.setdefault("finetune_epochs", 15.0 if backbone == "ngcf" else 10.0)
        return cls(**values)

    def to_dict(self) -> dict:
        """JSON form (``T``, ``m``, ``h``, ``K`` under their long names)."""
        return asdict(self)


def bet_finetune_config(recipe: Any) -> Any:
    """BET's fine-tuning recipe (spec §2) adapted to a tuned protocol recipe.

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
        retrain=False,
        seed=int(seed),
        **variant,
    )


def selection_value(feedback: Feedback, monitor: str) -> float:
    """The validation number a retrained candidate is chosen by (the recipe's ``monitor``)."""
    if monitor == "quality":
        return float(feedback.quality)
    if monitor not in feedback.metrics:
        raise ValueError(
            f"The validation feedback has no {monitor!r}; it has {sorted(feedback.metrics)}."
        )
    return float(feedback.metrics[monitor])


def _search(ctx: MethodContext, settings: BETSettings, variant: Mapping[str, Any]) -> tuple:
    """Runs or resumes the seed's multi-sparsity search; returns (controller, result, env)."""
    from tfembsize.search import run

    if ctx.sparsity is not None and ctx.sparsity in ctx.sparsities:
        sparsities, directory = tuple(ctx.sparsities), ctx.shared_directory
    else:  # a cell outside the run's list: a search of its own
        sparsities, directory = (float(ctx.sparsity),), os.path.join(ctx.directory, "search")
    controller = bet_controller(sparsities, ctx.seed, settings, **variant)
    env = ctx.environment(train_config=bet_finetune_config(ctx.train_config))
    result = run(controller, env, directory, verbose=0, tensorboard=True)
    if not result.finished:
        raise RuntimeError(f"The BET search in {directory} did not finish.")
    return controller, result, env, directory


# Selective retraining ---------------------------------------------------------------------
def _read_json(path: str) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _write_json(path: str, payload: Any) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(payload, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _retrain_top_k(
    ctx: MethodContext, plans: list[SizePlan], directory: str
) -> tuple[list[dict], int, Retrained]:
    """Retrains every plan under the protocol, resumably; returns (records, best rank, model).

    ``directory/retraining.json`` lists the finished retrainings; each writes its plan,
    validation feedback and weights (``r<rank>.*``) first, and the weights of all but the
    best are deleted once the list names the new best.
    """
    from tfembsize.search.environment import _assign, _load_weights, _save_weights, _weights

    os.makedirs(directory, exist_ok=True)
    monitor = ctx.train_config.monitor
    manifest = os.path.join(directory, "retraining.json")
    records: list[dict] = []
    if os.path.exists(manifest):
        state = _read_json(manifest)
        if state.get("format") != _RETRAIN_FORMAT or state.get("monitor") != monitor:
            raise ValueError(f"{manifest} is not a retraining of this configuration.")
        records = list(state["records"])
    for rec in records:  # the saved plans must be the plans being retrained now
        if (
            SizePlan.load(os.path.join(directory, f"r{rec['rank']}.plan.json"))
            != plans[rec["rank"]]
        ):
            raise ValueError(
                f"{directory} holds a retraining of other plans (rank {rec['rank']}); the search "
                "changed: delete the directory to retrain again."
            )
    best: Retrained | None = None
    for rank in range(len(records), len(plans)):
        plan = plans[rank]
        logger.info("BET c=%s: retraining candidate %d of %d.", ctx.sparsity, rank + 1, len(plans))
        retrained = ctx.retrain(plan)
        stem = os.path.join(directory, f"r{rank}")
        plan.save(f"{stem}.plan.json")
        retrained.validation.save(f"{stem}.validation.npz")
        _save_weights(f"{stem}.weights.npz", _weights(retrained.model))
        records.append(
            {
                "rank": rank,
                "selection_value": selection_value(retrained.validation, monitor),
                "validation": {
                    **{k: float(v) for k, v in retrained.validation.metrics.items()},
                    "quality": float(retrained.validation.quality),
                },
                "usable_params": retrained.usable_params,
                "num_rows": retrained.num_rows,
                "best_step": retrained.best_step,
                "train_steps": retrained.train_steps,
                "wall_time": retrained.wall_time,
            }
        )
        best_rank = _best_rank(records)
        _write_json(
            manifest,
            {"format": _RETRAIN_FORMAT, "monitor": monitor, "records": records, "best": best_rank},
        )
        for r in range(rank + 1):
            path = os.path.join(directory, f"r{r}.weights.npz")
            if r != best_rank and os.path.exists(path):
                os.remove(path)
        if best_rank == rank:
            best = retrained
    best_rank = _best_rank(records)
    if best is None:  # the winner was retrained by an earlier process: rebuild it
        rec = records[best_rank]
        model = ctx.build_model()
        plans[best_rank].apply(model)
        _assign(model, _load_weights(os.path.join(directory, f"r{best_rank}.weights.npz")))
        best = Retrained(
            model=model,
            validation=Feedback.load(os.path.join(directory, f"r{best_rank}.validation.npz")),
            best_step=rec["best_step"],
            train_steps=rec["train_steps"],
            wall_time=rec["wall_time"],
            usable_params=rec["usable_params"],
            num_rows=rec["num_rows"],
        )
    return records, best_rank, best


def _best_rank(records: list[dict]) -> int:
    """Highest validation selection value; ties go to the better search rank."""
    return max(range(len(records)), key=lambda r: (records[r]["selection_value"], -r))


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
        actions = controller.top_actions(settings.top_k, sparsity=c)
        if not actions:
            raise RuntimeError(f"The BET search at c={c:g} has no successful iteration.")
        plans = [a.plan for a in actions]
        budget = ctx.budget
        for plan in plans:
            plan.check(budget)
        records, best_rank, best = _retrain_top_k(
            ctx, plans, os.path.join(ctx.directory, "retrain")
        )
        reference = env.reference()
        search_time = result.elapsed_by("sparsity", phase="search").get(c, 0.0)
        full_time = None if reference is None else float(reference.wall_time)
        ratio = None if not full_time else search_time / full_time
        candidates = []
        for action, rec in zip(actions, records, strict=True):
            candidates.append(
                {
                    **rec,
                    "search_iteration": action.iteration,
                    "search_fitness": action.fitness,
                    "predicted_fitness": action.predicted_fitness,
                    "strategy": action.strategy,
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
            "finetune_recipe": bet_finetune_config(ctx.train_config).to_dict(),
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
        return MethodOutput(plan=plans[best_rank], retrained=best, info=info)

    return method
