"""ESAPN in the paper protocol: one stream per seed, the end-of-stream model is the result.

``esapn`` (no budget, one cell per seed):

1. The backbone (the protocol's builder, seeded with the cell's seed) gets
   `tfembsize.layers.LadderEmbedding` user and item tables (`esapn_model`, ladder
   ``(2, 4, 8, 16, 64, 128)`` cut at ``d_max`` unless set) and is trained by
   `tfembsize.controllers.run_esapn`: ``epochs`` passes (default 1) over the training
   interactions as BPR triples, in an order shuffled with the seed, with the
   `ESAPNController` as the hook of `train_bpr` (each triple's loss is credited to its user
   and positive item; the negative gets none). The recommender uses the protocol recipe's
   learning rate, batch size and XLA setting; there is no validation and no early stopping
   while the stream runs. The run lives in the cell's working directory and resumes after
   a kill.
2. The end-of-stream model (its sizes are ESAPN's result) is evaluated on validation here
   and on test by the runner; the cell reports the sparsity reached, ``1 - sum(d) /
   (d_max * N)``, with the ladders' maps and normalisation reported apart in ``info``.

``esapn-cap`` is the same with the optional budget cap (not part of ESAPN): one cell per
target sparsity, growth past ``B(c)`` refused, and the runner asserts the budget on the result.

Both read `ESAPNSettings` (``--esapn-epochs``, ``--esapn-ladder``, ``--esapn-memory``,
``--esapn-policy-learning-rate``).

References:
    Liu et al., "Automated Embedding Size Search in Deep Recommender Systems", SIGIR 2020
    (ESAPN).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from tfembsize.controllers.esapn.config import ESAPNConfig, default_ladder
from tfembsize.layers.ladder_embedding import _validate_ladder
from tfembsize.protocol.context import MethodContext, MethodOutput, Retrained
from tfembsize.protocol.registry import register_method
from tfembsize.protocol.settings import setting

__all__ = ["ESAPNSettings", "esapn_config", "esapn_method"]

logger = logging.getLogger(__name__)


def _parse_ladder(text: str) -> tuple[int, ...]:
    """``"2,4,8"`` -> ``(2, 4, 8)``."""
    return tuple(int(part) for part in text.split(",") if part.strip())


@dataclass(frozen=True)
class ESAPNSettings:
    """The options of a protocol ESAPN run a user tunes.

    Attributes:
        epochs: passes over the training interactions.
        ladder: the candidate sizes (None: ``(2, 4, 8, 16, 64, 128)`` cut at ``d_max``);
            the last must be ``d_max``.
        memory: losses remembered per entity (the reward's baseline is their mean).
        policy_learning_rate: Adam's rate for the two policies.

    References:
        Liu et al., "Automated Embedding Size Search in Deep Recommender Systems",
        SIGIR 2020 (ESAPN).
    """

    epochs: int = setting(1, help="ESAPN: passes over the training interactions")
    ladder: tuple[int, ...] | None = setting(
        None,
        help="ESAPN: candidate sizes, comma-separated (default 2,4,8,16,64,128 cut at d_max)",
        parse=_parse_ladder,
    )
    memory: int = setting(5, help="ESAPN: losses remembered per entity (T)")
    policy_learning_rate: float = setting(1e-4, help="ESAPN: Adam's rate for the policies")

    def __post_init__(self) -> None:
        if self.ladder is not None:
            object.__setattr__(self, "ladder", _validate_ladder(self.ladder))
        ESAPNConfig(  # ESAPNConfig's checks, with its messages
            epochs=self.epochs,
            memory=self.memory,
            policy_learning_rate=self.policy_learning_rate,
            ladder=self.ladder or default_ladder(128),
        )


def esapn_config(
    settings: ESAPNSettings,
    train_config: Any,
    *,
    d_max: int,
    seed: int,
    budget_cap: float | None = None,
    count_buckets: int = 1024,
) -> ESAPNConfig:
    """The ESAPN recipe of a protocol cell.

    Args:
        settings: the cell's `ESAPNSettings`.
        train_config: the protocol's `TrainConfig` (its learning rate, batch size, chunk
            length ``eval_every`` and XLA setting are the recommender's).
        d_max: the full width (the ladder must end there).
        seed: the cell's seed (stream order, policies, action draws).
        budget_cap: a target sparsity for ``esapn-cap``, else None.
        count_buckets: rows of the policies' count embeddings.

    Raises:
        ValueError: the ladder does not end at ``d_max``.
    """
    ladder = settings.ladder or default_ladder(d_max)
    if ladder[-1] != d_max:
        raise ValueError(f"`ladder` must end at d_max={d_max}. Received: ladder={tuple(ladder)!r}")
    return ESAPNConfig(
        ladder=tuple(ladder),
        memory=settings.memory,
        policy_learning_rate=settings.policy_learning_rate,
        count_buckets=count_buckets,
        budget_cap=budget_cap,
        seed=int(seed),
        batch_size=int(train_config.batch_size),
        epochs=settings.epochs,
        learning_rate=float(train_config.learning_rate),
        chunk_steps=int(train_config.eval_every),
        jit_compile=bool(train_config.jit_compile),
    )


def _method(ctx: MethodContext, capped: bool) -> MethodOutput:
    from tfembsize._keras import keras
    from tfembsize.controllers.esapn import esapn_model, run_esapn
    from tfembsize.search.environment import feedback_from_ranking
    from tfembsize.training.plan_training import model_scorer

    if capped and ctx.sparsity is None:
        raise ValueError("esapn-cap needs a target sparsity; the cell has none.")
    settings = ctx.settings()
    frequencies = np.concatenate(
        [np.asarray(ctx.split.user_frequencies), np.asarray(ctx.split.item_frequencies)]
    )
    # One count-embedding row per count the stream can reach (as the official code).
    buckets = int(frequencies.max(initial=0)) * settings.epochs + 1
    config = esapn_config(
        settings,
        ctx.train_config,
        d_max=ctx.d_max,
        seed=ctx.seed,
        budget_cap=float(ctx.sparsity) if capped and ctx.sparsity is not None else None,
        count_buckets=buckets,
    )
    keras.utils.set_random_seed(int(ctx.seed))
    model = esapn_model(ctx.build_model(), config.ladder)
    directory = os.path.join(ctx.directory, "training", "esapn")
    t0 = time.perf_counter()
    run = run_esapn(
        model, ctx.split, config, directory=directory, verbose=1 if ctx.verbose > 1 else 0
    )
    result = ctx.evaluator.evaluate(model_scorer(model), phase="validation")
    wall = time.perf_counter() - t0
    summary = run.summary
    usable, rows = int(summary["usable_params"]), int(summary["num_rows"])
    validation = feedback_from_ranking(
        result,
        usable_params=usable,
        wall_time=wall,
        mode="scratch",
        train_steps=run.train.steps,
        best_step=run.train.steps,
        loss=run.train.final_loss,
    )
    retrained = Retrained(model, validation, run.train.steps, run.train.steps, wall, usable, rows)
    sizes_path = _save_sizes(model, ctx.directory, run.controller, buckets)
    info = {
        "esapn": config.to_dict(),
        "stream_steps": run.steps,
        "sizes": summary,
        "sizes_file": os.path.basename(sizes_path),
        "selection": "end of stream (no validation selection)",
    }
    logger.info(
        "ESAPN seed %d%s: %d usable parameters after %d steps (sparsity reached %.4f).",
        ctx.seed,
        f", cap c={ctx.sparsity:g}" if capped and ctx.sparsity is not None else "",
        usable,
        run.train.steps,
        summary["sparsity_reached"],
    )
    return MethodOutput(retrained=retrained, info=info)


def _save_sizes(model: Any, directory: str, controller: Any, buckets: int) -> str:
    """Writes the end-of-stream row sizes and the policies' grow probabilities.

    ``directory/esapn_sizes.npz`` holds every ladder layer's row sizes (named after the layer,
    e.g. ``user_embedding``) and, per policy side (``user``, ``item``), the probability of
    growing on a grid of running counts (``<side>_grid_counts``, about log-spaced) times
    rungs below the top (``<side>_grow_probability``, ``[counts, rungs]``): with the split's
    frequencies they explain the sizes-against-frequency view of the result.
    """
    from tfembsize import _io
    from tfembsize.layers.utils import iter_layers

    arrays: dict[str, np.ndarray] = {
        layer.name: np.asarray(layer.sizes, np.int32)
        for layer in iter_layers(model)
        if getattr(layer, "_tfembsize_ladder", False)
    }
    grid = np.unique(np.round(np.geomspace(1, max(buckets - 1, 1), 40)).astype(np.int64))
    grid = np.concatenate([[0], grid])
    for side, policy in controller.policies.items():
        rungs = int(policy.num_rungs) - 1
        if rungs < 1:
            continue
        c = np.repeat(grid, rungs)
        r = np.tile(np.arange(rungs), grid.size)
        p = policy.probabilities(c, r)[:, 1].reshape(grid.size, rungs)
        arrays[f"{side}_grid_counts"] = grid
        arrays[f"{side}_grow_probability"] = p.astype(np.float32)
    path = os.path.join(directory, "esapn_sizes.npz")
    _io.write_npz(path, arrays, format="tfembsize.esapn_sizes")
    return path


def esapn_method(ctx: MethodContext) -> MethodOutput:
    """The protocol method ``esapn``: sizes grown over the stream, no budget."""
    return _method(ctx, capped=False)


def esapn_cap_method(ctx: MethodContext) -> MethodOutput:
    """The protocol method ``esapn-cap``: ESAPN with growth refused past the cell's budget.

    Raises:
        ValueError: the cell has no sparsity.
    """
    return _method(ctx, capped=True)


register_method(
    "esapn",
    esapn_method,
    budgeted=False,
    description="ESAPN: REINFORCE policies grow per-entity sizes up a ladder over one pass "
    "of the training stream (no budget; reports the sparsity reached)",
    settings=ESAPNSettings,
)
register_method(
    "esapn-cap",
    esapn_cap_method,
    description="ESAPN with growth refused past the budget B(c) (a cap that is not part of "
    "ESAPN), one run per sparsity",
    settings=ESAPNSettings,
    group="esapn",
)
