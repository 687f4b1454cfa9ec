"""PEP in the paper protocol: one pruning run per seed, one lottery ticket per cell.

For every cell (``pep``, c, seed):

1. **Pruning, once per seed for every sparsity.** The backbone (the protocol's builder, seeded
   with the cell's seed) gets `PEPEmbedding` tables and is trained with `PEPAdam` (coupled L2
   on the thresholds) by `tfembsize.controllers.pep.prune`, which captures the mask
   ``M_c = 1[Ê != 0]`` the first time the usable count falls under each budget ``B(c)`` of the
   run's sparsities. The run lives in `MethodContext.shared_directory` and is resumable: the
   first cell of a seed runs (or resumes) it, the other cells read its captures. Only the
   training loss is used here (no validation, as in the official code).
2. **Retraining.** The cell's ticket (tables ``E0 * M_c`` with the threshold off, the
   other weights from the same seed) is handed to the runner as ``build_model``, so it is
   retrained with exactly the recipe of every other method (`MethodContext.retrain`: early
   stopping on validation, best weights restored) and evaluated on test once. The runner
   asserts the budget on the ticket before training and on the retrained model after.

**Pruning recipe.** `tfembsize.controllers.pep.PEPConfig` defaults (the official code:
``s0 = -15``, threshold rate 1e-3, coupled L2 1e-5 on every parameter, clip norm 100,
feature-dimension thresholds) with the protocol recipe's learning rate and batch size for the
tables. `MethodContext.options` (`ProtocolConfig.method_options["pep"]`) may override any
`PEPConfig` field, e.g. ``{"max_steps": 80000, "threshold_init": -10.0}``; the command line
offers the fields a user tunes (`PEPSettings`) as ``--pep-max-steps``,
``--pep-threshold-init``, ``--pep-threshold-lr``, ``--pep-threshold-l2`` and
``--pep-rewind``. A target missed within ``max_steps`` fails its cell with the count reached
(no over-budget mask is used).

References:
    Liu et al., "Learnable Embedding Sizes for Recommender Systems", ICLR 2021.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from tfembsize.controllers.pep import PEPConfig
from tfembsize.protocol.context import MethodContext, MethodOutput
from tfembsize.protocol.registry import register_method
from tfembsize.protocol.settings import setting

__all__ = ["PEPSettings", "pep_config", "pep_method"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PEPSettings:
    """The pruning options of a protocol PEP run a user tunes (a subset of `PEPConfig`).

    Defaults are `PEPConfig`'s (the official code's). Through the API,
    `ProtocolConfig.method_options["pep"]` may set any other `PEPConfig` field too.

    Attributes:
        max_steps: cap on pruning steps; targets not reached by then are reported missed.
        threshold_init: ``s0``, the initial threshold (lower prunes later).
        threshold_lr: Adam's rate for the thresholds (about the threshold's rise per step).
        threshold_l2: coupled L2 on the thresholds.
        rewind: ``"initial"`` (lottery ticket ``E0 * M``) or ``"fresh"`` for the retraining.
        ticket: ``"entries"`` (the captured per-entry mask) or ``"prefix"`` (per-row
            prefixes of the same counts) for the retraining.
    """

    max_steps: int = setting(PEPConfig.max_steps, help="PEP: cap on pruning steps")
    threshold_init: float = setting(PEPConfig.threshold_init, help="PEP: initial threshold s0")
    threshold_lr: float = setting(
        PEPConfig.threshold_lr,
        help="PEP: Adam's rate for the thresholds",
    )
    threshold_l2: float = setting(
        PEPConfig.threshold_l2,
        help="PEP: coupled L2 on the thresholds",
    )
    rewind: str = setting(PEPConfig.rewind, help="PEP: 'initial' or 'fresh' retraining")
    ticket: str = setting(
        PEPConfig.ticket,
        help=(
            "PEP: what the retraining keeps: 'entries' (the captured mask) or 'prefix' "
            "(each row's first k coordinates, k its captured count)"
        ),
    )

    def __post_init__(self) -> None:
        PEPConfig(**dataclasses.asdict(self))  # PEPConfig's checks, with its messages


def pep_config(options: Mapping[str, Any], train_config: Any = None) -> Any:
    """The pruning recipe of a protocol cell.

    Args:
        options: `PEPConfig` fields to override.
        train_config: the protocol's `TrainConfig`; its ``learning_rate``, ``batch_size`` and
            ``jit_compile`` are the defaults of the pruning phase (so both phases see the same
            batches and pruning compiles with XLA when retraining does).

    Returns:
        A `tfembsize.controllers.pep.PEPConfig`.

    Raises:
        ValueError: an unknown option or a bad value.
    """
    values: dict[str, Any] = {}
    if train_config is not None:
        values["learning_rate"] = float(train_config.learning_rate)
        values["batch_size"] = int(train_config.batch_size)
        values["jit_compile"] = bool(train_config.jit_compile)
    values.update({k: v for k, v in options.items() if v is not None})
    return PEPConfig.from_dict(values)


def _index_overhead(capture: Any) -> dict:
    """CSR index sizes of a capture (reported apart from the usable count)."""
    rows = sum(int(m.shape[0]) for m in capture.masks.values())
    return {
        "format": "csr",
        "column_indices": int(capture.usable_params),
        "row_pointers": rows + len(capture.masks),
    }


def _overlap(masks: Mapping[str, Any], split: Any, max_pairs: int = 200_000) -> dict | None:
    """Kept coordinates shared by the training pairs' user and item rows, or None.

    Measured on the captured masks (``entries``) over at most ``max_pairs`` training pairs
    (the first ones, a fixed choice), beside what prefix masks of the same counts share.
    """
    from tfembsize.controllers.pep import mask_overlap

    if "user_embedding" not in masks or "item_embedding" not in masks:
        return None
    users = np.asarray(split.train.users)[:max_pairs]
    items = np.asarray(split.train.items)[:max_pairs]
    um, im = masks["user_embedding"], masks["item_embedding"]
    if um.shape[1] != im.shape[1]:
        return None
    return mask_overlap(um, im, users, items).to_dict()


def pep_method(ctx: MethodContext) -> MethodOutput:
    """The protocol method of PEP: the cell's lottery ticket, for the runner to retrain.

    Raises:
        ValueError: the cell has no sparsity.
        RuntimeError: the pruning run did not reach the cell's budget within ``max_steps``.
    """
    from tfembsize.controllers.pep import run_pep

    if ctx.sparsity is None:
        raise ValueError("PEP needs a target sparsity; the cell has none.")
    c = float(ctx.sparsity)
    if c in ctx.sparsities:
        sparsities, directory = tuple(float(s) for s in ctx.sparsities), ctx.shared_directory
    else:  # a cell outside the run's list: a pruning run of its own
        sparsities, directory = (c,), os.path.join(ctx.directory, "prune")
    config = pep_config(ctx.options, ctx.train_config)
    results = run_pep(
        ctx.split,
        ctx.backbone_builder,
        sparsities,
        seed=ctx.seed,
        directory=directory,
        pep=config,
        retrain=False,
        verbose=1 if ctx.verbose > 1 else 0,
    )
    result = results[c]
    if result.status != "ok" or result.capture is None:
        raise RuntimeError(
            f"PEP did not reach sparsity {c:g} (budget {result.budget:,} usable parameters) "
            f"within max_steps={config.max_steps}; see {directory}. Raise `max_steps` or the "
            "threshold learning rate."
        )
    capture = result.capture
    prune_state = os.path.join(directory, "prune_history.json")
    info = {
        "pruning": config.to_dict(),
        "pruning_directory": os.path.relpath(directory, ctx.root or ctx.directory),
        "capture_step": capture.step,
        "capture_usable_params": capture.usable_params,
        "capture_layer_params": dict(capture.layer_params),
        "capture_budget": capture.limit,
        "captured": {f"{s:g}": r.capture.step for s, r in results.items() if r.capture},
        "missed": [s for s, r in results.items() if r.status != "ok"],
        "index_overhead": _index_overhead(capture),
        "selection": ctx.train_config.monitor if ctx.train_config is not None else None,
        "rewind": config.rewind,
        "ticket": config.ticket,
        "overlap": _overlap(capture.masks, ctx.split),
        "history_file": os.path.relpath(prune_state, ctx.root or ctx.directory),
    }
    logger.info(
        "PEP c=%g: ticket from step %d with %d usable parameters (budget %d).",
        c,
        capture.step,
        capture.usable_params,
        capture.limit,
    )
    return MethodOutput(build_model=result.build_model, info=info)


register_method(
    "pep",
    pep_method,
    description="PEP: learnable soft thresholds (one pruning run per seed captures every "
    "sparsity's mask), lottery-ticket retraining",
    settings=PEPSettings,
)
