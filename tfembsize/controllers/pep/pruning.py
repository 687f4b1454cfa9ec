"""PEP's pruning phase (`prune`) and the whole recipe for several sparsities (`run_pep`)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from tfembsize import _io
from tfembsize.controllers.pep.config import PEPConfig, _sparsities, _sparsity_tag
from tfembsize.controllers.pep.controller import PEPController
from tfembsize.controllers.pep.results import PEPCapture, PEPPruneResult, PEPResult
from tfembsize.controllers.pep.tickets import (
    _budget_of,
    _build,
    _train_summary,
    retrain_ticket,
    ticket_model,
)
from tfembsize.layers.pep_embedding import find_pep_layers
from tfembsize.training.checkpoint import TrainCheckpoint
from tfembsize.training.loop import train_bpr

__all__ = ["prune", "run_pep"]

_INITIAL_FILE = "initial_tables.npz"


def prune(
    model: Any,
    split: Any,
    controller: PEPController,
    *,
    config: PEPConfig | None = None,
    seed: int = 0,
    directory: str | os.PathLike[str] | None = None,
    verbose: int = 0,
) -> PEPPruneResult:
    """Runs PEP's pruning phase on a BPR backbone with PEP tables and captures the masks.

    The pruning phase is `tfembsize.training.train_bpr` with the controller as its hook:
    training on ``bpr_dataset(split.train, batch_size, seed)`` with `PEPAdam` (the config's
    rates, coupled L2 and clip norm), in compiled chunks of ``chunk_steps``; inside the
    compiled step the controller counts the usable parameters every ``check_every`` steps
    and ends the chunk right after the first step whose count is at most the next pending
    budget, then captures the mask(s) on the host. Only the training loss is used (no
    validation, as in the authors' code). Stops when every target is captured or at
    ``max_steps`` (the rest are reported missed). With ``config.jit_compile`` every step,
    the count included, is one XLA cluster.

    With a ``directory`` the run is resumable: ``E0`` goes to ``initial_tables.npz``, masks to
    ``masks_<c>.npz`` as captured, and after every chunk the model, the optimiser and the
    controller's state are checkpointed (``train/``); calling `prune` again with a model
    built the same way continues from the last chunk (the BPR batches continue from that
    step). A run that missed targets at ``max_steps`` continues when called again with a
    larger ``max_steps``.

    Args:
        model: a `tfembsize.models` backbone whose tables are `PEPEmbedding` (`pep_model`).
        split: the data split (only ``split.train`` is used).
        controller: a `PEPController` (attached here; its ``check_every`` is set from the
            config).
        config: the pruning recipe.
        seed: seed of the BPR sampler.
        directory: where to keep the run (None: in memory, not resumable).
        verbose: 1 for a progress bar.

    Returns:
        A `PEPPruneResult`.

    Raises:
        NonFiniteLossError: the loss became NaN or infinite.
        TypeError: ``model`` is not a BPR backbone.
    """
    config = config or PEPConfig()
    t0 = time.perf_counter()
    if not callable(getattr(model, "train_batch", None)):
        raise TypeError(
            "`model` must be a tfembsize BPR backbone (with `train_batch`). Received: "
            f"{type(model).__name__}"
        )
    controller.attach(model)
    controller.check_every = int(config.check_every)
    layers = controller.layers
    directory = None if directory is None else os.fspath(directory)
    checkpoint_dir = None
    if directory is not None:
        os.makedirs(directory, exist_ok=True)
        controller.directory = directory
        checkpoint_dir = os.path.join(directory, "train")

    # E0: written once, before training; a rerun rewinds to the saved one.
    initial_path = None if directory is None else os.path.join(directory, _INITIAL_FILE)
    if initial_path is not None and os.path.exists(initial_path):
        initial = _io.read_npz(initial_path, what="PEP initial tables")
        if sorted(initial) != sorted(layers):
            raise ValueError(
                f"{initial_path} holds tables {sorted(initial)}; the model has {sorted(layers)}."
            )
        for name, layer in layers.items():
            layer.embeddings.assign(initial[name])
    else:
        initial = {name: layer.embeddings.numpy().copy() for name, layer in layers.items()}
        if initial_path is not None:
            _io.write_npz(initial_path, initial, compress=True)
    if checkpoint_dir is None or not TrainCheckpoint(checkpoint_dir).exists():
        controller.captures, controller.missed = {}, ()
        controller.observe(0)  # tables already within a budget at initialisation

    result = train_bpr(
        model,
        split,
        None,
        config=config.train_config(seed=seed, verbose=verbose),
        optimizer=lambda lr: config.optimizer(),
        checkpoint_dir=checkpoint_dir,
        hook=controller,
    )
    history = tuple(
        {"step": h.step, "usable_params": h.metrics.get("usable_params"), "loss": h.loss}
        for h in result.history
    )
    if directory is not None:
        _io.write_json(
            os.path.join(directory, "prune_history.json"),
            {"step": result.steps, "history": list(history)},
        )
    return PEPPruneResult(
        captures=dict(controller.captures),
        missed=tuple(controller.missed),
        steps=result.steps,
        history=history,
        initial_tables=initial,
        wall_time=time.perf_counter() - t0,
    )


def run_pep(
    split: Any,
    backbone_builder: Callable[[int], Any],
    sparsities: Any = (0.8, 0.9, 0.95),
    config: Any = None,
    seed: int = 0,
    directory: str | os.PathLike[str] | None = None,
    *,
    pep: PEPConfig | None = None,
    evaluator: Any = None,
    retrain: bool = True,
    verbose: int = 0,
) -> dict[float, PEPResult]:
    """PEP for several target sparsities: one pruning run, then one lottery ticket per target.

    1. ``backbone_builder(seed)`` (under ``keras.utils.set_random_seed(seed)``) is converted
       to PEP tables (`pep_model`) and pruned (`prune`), capturing a mask per sparsity.
    2. For each captured sparsity, the ticket (`ticket_model`: ``E0 * M``, the other weights
       from the same seed) is retrained with `train_bpr` and ``config`` (the shared recipe),
       early-stopping on validation; test is evaluated once at the end.

    With a ``directory`` the pruning run is resumable and each retraining's result is written
    to ``result_<c>.json`` (a rerun skips finished targets; their ``model`` is then None).

    Args:
        split: the data split.
        backbone_builder: ``builder(seed) -> model``: a `tfembsize.models` backbone (any
            table layers; they are converted).
        sparsities: target sparsities.
        config: the retraining recipe (`tfembsize.models.TrainConfig`; None: the backbone's
            default).
        seed: seed of the initialisation and the samplers.
        directory: where to keep the run.
        pep: the pruning recipe (`PEPConfig`).
        evaluator: a `RankingEvaluator` (default: one on ``split``).
        retrain: False to stop after the captures (results carry ``build_model`` for a
            caller that retrains itself, e.g. the paper protocol).
        verbose: 1 for progress bars.

    Returns:
        ``{sparsity: PEPResult}`` for every target; missed targets have ``status="missed"``.
    """
    pep = pep or PEPConfig()
    targets = _sparsities(sparsities)
    directory = None if directory is None else os.fspath(directory)
    if evaluator is None and retrain:
        from tfembsize.metrics import RankingEvaluator

        evaluator = RankingEvaluator(split)
    model = _build(backbone_builder, seed, pep)
    controller = PEPController(targets)
    pruned = prune(
        model, split, controller, config=pep, seed=seed, directory=directory, verbose=verbose
    )
    layers = controller.layers
    results: dict[float, PEPResult] = {}
    for c in targets:
        budget, rows = _budget_of(layers, c)
        limit = budget.max_params_for(rows)
        capture = pruned.captures.get(c)
        if capture is None:
            results[c] = PEPResult(c, "missed", limit, None, None, rows)
            continue

        def build(capture: PEPCapture = capture) -> Any:
            return ticket_model(backbone_builder, seed, capture.masks, pruned.initial_tables, pep)

        if not retrain:
            results[c] = PEPResult(
                c, "ok", limit, capture, capture.usable_params, rows, build_model=build
            )
            continue
        path = (
            None
            if directory is None
            else os.path.join(directory, f"result_{_sparsity_tag(c)}.json")
        )
        if path is not None and os.path.exists(path):
            saved = _io.read_json(path, what="PEP retraining result")
            results[c] = PEPResult(
                c, "ok", limit, capture, saved["usable_params"], rows, saved["train"], build
            )
            continue
        ticket = build()
        train = retrain_ticket(ticket, split, evaluator, c, train_config=config)
        used = sum(layer.usable_params() for layer in find_pep_layers(ticket).values())
        result = PEPResult(
            c, "ok", limit, capture, used, rows, _train_summary(train), build, ticket
        )
        if path is not None:
            _io.write_json(path, result.to_dict())
        results[c] = result
    return results
