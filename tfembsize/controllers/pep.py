"""PEP's prune-then-retrain recipe: mask capture at several budgets, lottery-ticket retraining.

PEP (Liu et al., ICLR 2021; algorithms.md §6) trains a model whose tables are `PEPEmbedding`
layers with `PEPAdam` (coupled L2 on the thresholds, so they rise by about the learning rate
per step and the tables prune themselves). After every step the usable (non-zero) count
``P`` over all the PEP tables is compared with the budgets ``B(c) = floor((1 - c) d_max N)``
of the target sparsities; the first time ``P <= B(c)`` the binary mask ``M_c`` is captured.
Each mask is then retrained as a lottery ticket: the tables restart from their initial values
``E0 * M_c`` with the threshold off, the other weights from the same seed's initialisation, and
training stops early on **validation** (never test).

The pieces:

* `PEPController`: the capture bookkeeping (targets, budgets, masks saved as ``.npz`` as
  they are captured, missed targets, JSON state), usable with any training loop, and as a
  Keras callback (`PEPController.callback`, in the shape of tfmot's ``UpdatePruningStep``);
* `prune`: the pruning phase for a `tfembsize.models` backbone, in compiled chunks that stop
  at the exact step a budget is crossed; checkpointed and resumable;
* `ticket_model`, `retrain_ticket`: the lottery ticket and its retraining with `train_bpr`;
* `run_pep`: everything for a list of sparsities (what the paper protocol calls).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from tfembsize._keras import keras
from tfembsize.budget import Budget
from tfembsize.errors import BudgetExceededError
from tfembsize.layers.pep_embedding import (
    GRANULARITIES,
    THRESHOLD_FNS,
    PEPAdam,
    PEPEmbedding,
    find_pep_layers,
)

__all__ = [
    "PEPConfig",
    "PEPCapture",
    "PEPPruneResult",
    "PEPResult",
    "PEPController",
    "PEPCaptureCallback",
    "pep_model",
    "prune",
    "ticket_model",
    "retrain_ticket",
    "run_pep",
]

logger = logging.getLogger(__name__)

_STATE_FILE = "pep_state.json"
_INITIAL_FILE = "initial_tables.npz"
_STATE_FORMAT = "tfembsize.PEPController"


# Helpers -----------------------------------------------------------------------------------
def _write_json(path: str, payload: Any) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=2, sort_keys=True)
    os.replace(tmp, path)


def _write_npz(path: str, arrays: Mapping[str, np.ndarray]) -> None:
    tmp = f"{path}.tmp.npz"
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, path)


def _read_npz(path: str) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {k: np.array(data[k]) for k in data.files}


def _sparsity_tag(sparsity: float) -> str:
    return f"{sparsity:.6g}".replace(".", "p")


def _is_real(x: Any) -> bool:
    return (
        not isinstance(x, bool)
        and isinstance(x, (int, float, np.integer, np.floating))
        and math.isfinite(float(x))
    )


def _sparsities(sparsity: Any) -> tuple[float, ...]:
    values = list(sparsity) if isinstance(sparsity, (Sequence, np.ndarray)) else [sparsity]
    if isinstance(sparsity, str) or not values:
        raise ValueError(
            "`sparsity` must be a float in (0, 1) or a non-empty sequence of them. Received: "
            f"sparsity={sparsity!r}"
        )
    out = []
    for s in values:
        if not _is_real(s) or not 0.0 < float(s) < 1.0:
            raise ValueError(f"`sparsity` must be in (0, 1). Received: sparsity={s!r}")
        out.append(float(s))
    if len(set(out)) != len(out):
        raise ValueError(f"`sparsity` values must be distinct. Received: sparsity={sparsity!r}")
    return tuple(sorted(out))


def _pep_layers(model_or_layers: Any) -> dict:
    if isinstance(model_or_layers, PEPEmbedding):
        layers = {model_or_layers.name: model_or_layers}
    elif isinstance(model_or_layers, Mapping):
        layers = dict(model_or_layers)
    elif isinstance(model_or_layers, (list, tuple)):
        layers = {}
        for layer in model_or_layers:
            if layer.name in layers:
                raise ValueError(f"Two PEPEmbedding layers are named {layer.name!r}.")
            layers[layer.name] = layer
    else:
        layers = find_pep_layers(model_or_layers)
    if not layers or not all(isinstance(x, PEPEmbedding) for x in layers.values()):
        raise ValueError(
            "PEP needs PEPEmbedding tables. Received "
            f"{type(model_or_layers).__name__} with PEP layers {sorted(layers)}; convert a "
            "backbone with `pep_model(model)`."
        )
    return layers


# Config and records ------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class PEPConfig:
    """The pruning phase of PEP (algorithms.md §6.1-6.2). Defaults: the official code.

    Attributes:
        granularity: thresholds of the `PEPEmbedding` tables (``"feature_dimension"``: one
            per entry).
        threshold_init: ``s0`` (-15 in the official ML-1M code).
        threshold_fn: ``g``, ``"sigmoid"``.
        learning_rate: Adam's rate for the tables and other weights (1e-3).
        threshold_lr: Adam's rate for the thresholds (1e-3). With ``threshold_l2`` and
            ``threshold_init`` it sets the pruning speed: thresholds rise by about
            ``threshold_lr`` per step.
        threshold_l2: coupled L2 on the thresholds (1e-5).
        l2: coupled L2 on every other weight (1e-5).
        clipnorm: global gradient-norm clip (100).
        batch_size: BPR triples per step.
        max_steps: cap on pruning steps; targets not reached by then are reported missed.
        chunk_steps: steps per compiled chunk; the run is checkpointed after each chunk.
        check_every: count the usable parameters after every ``check_every`` steps (1: after
            every step, as the spec asks; larger values capture up to that many steps late,
            with a sparser mask, never an over-budget one).
        rewind: ``"initial"`` (lottery ticket: ``E0 * M``) or ``"fresh"`` (a new
            initialisation ``* M``) for the retraining.
    """

    granularity: str = "feature_dimension"
    threshold_init: float = -15.0
    threshold_fn: str = "sigmoid"
    learning_rate: float = 1e-3
    threshold_lr: float = 1e-3
    threshold_l2: float = 1e-5
    l2: float = 1e-5
    clipnorm: float | None = 100.0
    batch_size: int = 2048
    max_steps: int = 50_000
    chunk_steps: int = 1000
    check_every: int = 1
    rewind: str = "initial"

    def __post_init__(self) -> None:
        if self.granularity not in GRANULARITIES:
            raise ValueError(
                f"`granularity` must be one of {GRANULARITIES}. Received: "
                f"granularity={self.granularity!r}"
            )
        if self.threshold_fn not in THRESHOLD_FNS:
            raise ValueError(
                f"`threshold_fn` must be one of {THRESHOLD_FNS}. Received: "
                f"threshold_fn={self.threshold_fn!r}"
            )
        if not _is_real(self.threshold_init):
            raise ValueError(
                "`threshold_init` must be a finite number. Received: "
                f"threshold_init={self.threshold_init!r}"
            )
        for name in ("learning_rate", "threshold_lr"):
            value = getattr(self, name)
            if not _is_real(value) or value <= 0:
                raise ValueError(f"`{name}` must be a positive number. Received: {name}={value!r}")
        for name in ("threshold_l2", "l2"):
            value = getattr(self, name)
            if not _is_real(value) or value < 0:
                raise ValueError(f"`{name}` must be a number >= 0. Received: {name}={value!r}")
        if self.clipnorm is not None and (not _is_real(self.clipnorm) or self.clipnorm <= 0):
            raise ValueError(
                "`clipnorm` must be a positive number or None. Received: "
                f"clipnorm={self.clipnorm!r}"
            )
        for name in ("batch_size", "max_steps", "chunk_steps", "check_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"`{name}` must be a positive integer. Received: {name}={value!r}")
        if self.rewind not in ("initial", "fresh"):
            raise ValueError(
                f"`rewind` must be 'initial' or 'fresh'. Received: rewind={self.rewind!r}"
            )

    def layer_kwargs(self) -> dict:
        """`PEPEmbedding` arguments."""
        return {
            "granularity": self.granularity,
            "threshold_init": float(self.threshold_init),
            "threshold_fn": self.threshold_fn,
        }

    def optimizer(self) -> PEPAdam:
        """The pruning-phase optimiser (`PEPAdam` with this config's rates and L2)."""
        return PEPAdam(
            self.learning_rate,
            threshold_lr=self.threshold_lr,
            threshold_l2=self.threshold_l2,
            l2=self.l2,
            global_clipnorm=self.clipnorm,
        )

    def replace(self, **changes: Any) -> PEPConfig:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """JSON-ready dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PEPConfig:
        """Inverse of `to_dict`."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"Unknown PEPConfig fields {unknown}.")
        return cls(**dict(d))


@dataclasses.dataclass(frozen=True, eq=False)
class PEPCapture:
    """A mask captured the first time the usable count fell under a target's budget.

    Attributes:
        sparsity: the target sparsity ``c``.
        limit: its budget ``B(c)``.
        step: optimiser steps done when the mask was taken.
        usable_params: ones in the masks (<= ``limit``, asserted).
        num_rows: rows of the PEP tables (the ``N`` of the budget).
        layer_params: ones per table.
        masks: ``{table name: bool [input_dim, output_dim]}``.
    """

    sparsity: float
    limit: int
    step: int
    usable_params: int
    num_rows: int
    layer_params: Mapping[str, int]
    masks: Mapping[str, np.ndarray] = dataclasses.field(repr=False)

    @property
    def density(self) -> float:
        """Usable fraction of the full tables."""
        width = next(iter(self.masks.values())).shape[1]
        return self.usable_params / float(width * self.num_rows)

    def to_dict(self) -> dict:
        """JSON-ready dict (without the masks)."""
        return {
            "sparsity": self.sparsity,
            "limit": self.limit,
            "step": self.step,
            "usable_params": self.usable_params,
            "num_rows": self.num_rows,
            "layer_params": dict(self.layer_params),
        }


@dataclasses.dataclass(frozen=True, eq=False)
class PEPPruneResult:
    """What `prune` did.

    Attributes:
        captures: `PEPCapture` per captured sparsity.
        missed: sparsities whose budget was not reached within ``max_steps``.
        steps: pruning steps run in all (resumed runs included).
        history: ``{"step", "usable_params", "loss"}`` per chunk.
        initial_tables: ``E0`` per table (what the lottery tickets rewind to).
        wall_time: seconds of this call.
    """

    captures: Mapping[float, PEPCapture]
    missed: tuple[float, ...]
    steps: int
    history: tuple[dict, ...]
    initial_tables: Mapping[str, np.ndarray] = dataclasses.field(repr=False)
    wall_time: float = 0.0


@dataclasses.dataclass(frozen=True, eq=False)
class PEPResult:
    """The outcome of one target sparsity of `run_pep`.

    Attributes:
        sparsity: target sparsity.
        status: ``"ok"`` (captured and, if asked, retrained) or ``"missed"``.
        budget: ``B(c)``.
        capture: the captured mask (None if missed).
        usable_params: usable parameters of the retrained model's tables (None if missed).
        num_rows: rows of the PEP tables.
        train: summary of the retraining (None if not retrained): ``best_step``, ``steps``,
            ``stopped_early``, ``wall_time``, ``monitor``, ``best_value`` and the mean metrics
            of ``validation`` (at the best step) and ``test``.
        build_model: zero-argument callable building the (untrained) lottery ticket.
        model: the retrained model (None if not retrained, or if the result was reloaded).
    """

    sparsity: float
    status: str
    budget: int
    capture: PEPCapture | None
    usable_params: int | None
    num_rows: int
    train: Mapping[str, Any] | None = None
    build_model: Callable[[], Any] | None = dataclasses.field(default=None, repr=False)
    model: Any = dataclasses.field(default=None, repr=False)

    def metric(self, phase: str, name: str) -> float | None:
        """A mean metric of the retrained model, e.g. ``metric("test", "recall@20")``."""
        if not self.train or not self.train.get(phase):
            return None
        value = self.train[phase].get(name)
        return None if value is None else float(value)

    def to_dict(self) -> dict:
        """JSON-ready dict."""
        return {
            "sparsity": self.sparsity,
            "status": self.status,
            "budget": self.budget,
            "capture": None if self.capture is None else self.capture.to_dict(),
            "usable_params": self.usable_params,
            "num_rows": self.num_rows,
            "train": None if self.train is None else dict(self.train),
        }


# The controller ----------------------------------------------------------------------------
class PEPController:
    """Captures PEP masks the first time the usable count falls under each target budget.

    Targets are sparsities ``c`` (several in one run); a target's budget is
    ``B(c) = floor((1 - c) * d_max * N)`` over all the attached `PEPEmbedding` tables
    together (``N``: their rows; ``d_max``: their common width), or ``max_params`` given
    directly. After each training step call `observe` (or use `callback` with ``model.fit``):
    when the usable count ``P`` (non-zeros of the thresholded tables) is at most a pending
    target's budget, the current masks are captured for that target (for several at once if
    ``P`` jumped past several budgets). Every capture is checked against its budget
    (`Budget.check_total`); nothing over budget is ever recorded. With a ``directory`` each
    capture is written at once as ``masks_<c>.npz`` with the state in ``pep_state.json``, so
    an interrupted run keeps what it captured. Targets still pending when training stops are
    reported by `finish` as missed.

    Args:
        sparsity: one target sparsity or a sequence of them, in (0, 1).
        directory: where captures and state are written (None: memory only).

    Example:
        >>> controller = PEPController(sparsity=(0.8, 0.9, 0.95)).attach(model)  # doctest: +SKIP
        >>> model.fit(ds, epochs=100, callbacks=[controller.callback()])  # doctest: +SKIP
        >>> controller.captures[0.9].masks["item_embedding"].mean()  # doctest: +SKIP

    References:
        Liu et al., "Learnable Embedding Sizes for Recommender Systems", ICLR 2021.
    """

    def __init__(
        self, sparsity: Any = (0.8, 0.9, 0.95), *, directory: str | os.PathLike | None = None
    ) -> None:
        self.sparsities = _sparsities(sparsity)
        self.directory = None if directory is None else os.fspath(directory)
        self.layers: dict = {}
        self.d_max: int | None = None
        self.num_rows: int | None = None
        self.captures: dict[float, PEPCapture] = {}
        self.missed: tuple[float, ...] = ()
        self.last_step = 0
        self.last_usable: int | None = None

    # Setup ------------------------------------------------------------------------------------
    def attach(self, model_or_layers: Any) -> PEPController:
        """Finds the PEP tables (a model, a layer, a list or a name->layer mapping).

        Raises:
            ValueError: no `PEPEmbedding`, or tables of different widths.
        """
        layers = _pep_layers(model_or_layers)
        widths = {layer.output_dim for layer in layers.values()}
        if len(widths) != 1:
            raise ValueError(
                f"PEP tables must share one width d_max. Received widths {sorted(widths)}."
            )
        self.layers = layers
        self.d_max = widths.pop()
        self.num_rows = sum(int(layer.input_dim) for layer in layers.values())
        return self

    def _require_attached(self) -> None:
        if not self.layers:
            raise RuntimeError("PEPController: call `attach(model)` first.")

    def budget(self, sparsity: float) -> Budget:
        """The `Budget` of a target."""
        self._require_attached()
        return Budget(sparsity=sparsity, d_max=self.d_max)

    def limit(self, sparsity: float) -> int:
        """``B(c)`` of a target, in usable parameters."""
        return self.budget(sparsity).max_params_for(self.num_rows)

    @property
    def pending(self) -> tuple[float, ...]:
        """Targets neither captured nor missed, in increasing sparsity."""
        return tuple(c for c in self.sparsities if c not in self.captures and c not in self.missed)

    @property
    def done(self) -> bool:
        """True when no target is pending."""
        return not self.pending

    def next_limit(self) -> int | None:
        """The largest budget still pending (the next one a falling count crosses)."""
        pending = self.pending
        return None if not pending else self.limit(pending[0])

    # Capture ----------------------------------------------------------------------------------
    def usable_params(self) -> int:
        """The usable (non-zero) count over the attached tables now."""
        self._require_attached()
        return int(sum(int(layer.count_usable_params()) for layer in self.layers.values()))

    def observe(self, step: int, usable_params: int | None = None) -> list[PEPCapture]:
        """Checks the budgets after a training step and captures the masks that fit.

        Args:
            step: optimiser steps done.
            usable_params: the count if already known (it is recomputed from the masks when
                a capture happens).

        Returns:
            The new captures (empty if none).
        """
        self._require_attached()
        self.last_step = int(step)
        used = self.usable_params() if usable_params is None else int(usable_params)
        self.last_usable = used
        new = []
        pending = [c for c in self.pending if used <= self.limit(c)]
        if not pending:
            return new
        masks = {name: layer.pruning_mask() for name, layer in self.layers.items()}
        per_layer = {name: int(m.sum()) for name, m in masks.items()}
        total = sum(per_layer.values())
        for c in pending:
            limit = self.limit(c)
            if total > limit:  # the recount disagrees with the trigger: wait for a later step
                logger.warning(
                    "PEP step %d: masks hold %d usable parameters, over B(%g) = %d; not captured.",
                    step,
                    total,
                    c,
                    limit,
                )
                continue
            self.budget(c).check_total(total, self.num_rows, what=f"PEP mask for sparsity {c}")
            capture = PEPCapture(
                sparsity=c,
                limit=limit,
                step=int(step),
                usable_params=total,
                num_rows=self.num_rows,
                layer_params=per_layer,
                masks=masks,
            )
            self.captures[c] = capture
            new.append(capture)
            logger.info(
                "PEP: captured sparsity %g at step %d (%d usable parameters, budget %d).",
                c,
                step,
                total,
                limit,
            )
            if self.directory is not None:
                self._write_capture(capture)
        if new and self.directory is not None:
            self.save()
        return new

    def finish(self, step: int | None = None) -> tuple[float, ...]:
        """Marks every pending target as missed (training is over); returns them."""
        if step is not None:
            self.last_step = int(step)
        missed = self.pending
        if missed:
            logger.warning(
                "PEP: sparsities %s not reached within %d steps (usable parameters at the "
                "end: %s; budgets %s). No mask is saved for them.",
                list(missed),
                self.last_step,
                self.last_usable,
                [self.limit(c) for c in missed] if self.layers else "?",
            )
        self.missed = tuple(sorted(set(self.missed) | set(missed)))
        if self.directory is not None and self.layers:
            self.save()
        return missed

    def callback(self, *, check_every: int = 1, stop_when_done: bool = True) -> Any:
        """A Keras callback calling `observe` after training batches (see `PEPCaptureCallback`)."""
        return PEPCaptureCallback(self, check_every=check_every, stop_when_done=stop_when_done)

    # Persistence ------------------------------------------------------------------------------
    def _mask_path(self, sparsity: float, directory: str | None = None) -> str:
        return os.path.join(directory or self.directory, f"masks_{_sparsity_tag(sparsity)}.npz")

    def _write_capture(self, capture: PEPCapture) -> None:
        os.makedirs(self.directory, exist_ok=True)
        _write_npz(self._mask_path(capture.sparsity), capture.masks)

    def get_state(self) -> dict:
        """JSON run state (captures without their masks, which live in ``.npz`` files)."""
        return {
            "format": _STATE_FORMAT,
            "sparsities": list(self.sparsities),
            "captures": [self.captures[c].to_dict() for c in sorted(self.captures)],
            "missed": list(self.missed),
            "last_step": self.last_step,
            "last_usable": self.last_usable,
            "d_max": self.d_max,
            "num_rows": self.num_rows,
            "layers": sorted(self.layers),
        }

    def set_state(
        self, state: Mapping[str, Any], masks: Mapping[float, Mapping] | None = None
    ) -> None:
        """Restores `get_state` output (with the masks of each capture).

        Raises:
            ValueError: the state is for other targets or other tables.
        """
        if state.get("format") != _STATE_FORMAT:
            raise ValueError(f"Not a PEPController state (format {state.get('format')!r}).")
        if tuple(state["sparsities"]) != self.sparsities:
            raise ValueError(
                f"The saved run has targets {state['sparsities']}, this controller "
                f"{list(self.sparsities)}."
            )
        if self.layers and sorted(self.layers) != list(state["layers"]):
            raise ValueError(
                f"The saved run has tables {state['layers']}, the attached model "
                f"{sorted(self.layers)}."
            )
        masks = masks or {}
        self.captures = {}
        for d in state["captures"]:
            c = float(d["sparsity"])
            if c not in masks:
                raise ValueError(f"The masks of the capture at sparsity {c} are missing.")
            capture = PEPCapture(
                sparsity=c,
                limit=int(d["limit"]),
                step=int(d["step"]),
                usable_params=int(d["usable_params"]),
                num_rows=int(d["num_rows"]),
                layer_params={k: int(v) for k, v in d["layer_params"].items()},
                masks={k: np.asarray(v, dtype=bool) for k, v in masks[c].items()},
            )
            total = sum(int(m.sum()) for m in capture.masks.values())
            if total != capture.usable_params or total > capture.limit:
                raise BudgetExceededError(
                    f"The saved masks for sparsity {c} hold {total} usable parameters (state "
                    f"says {capture.usable_params}, budget {capture.limit}).",
                    used=total,
                    limit=capture.limit,
                )
            self.captures[c] = capture
        self.missed = tuple(float(c) for c in state["missed"])
        self.last_step = int(state["last_step"])
        self.last_usable = state.get("last_usable")
        if state.get("d_max") is not None and self.d_max is None:
            self.d_max = int(state["d_max"])
            self.num_rows = int(state["num_rows"])

    def save(self, directory: str | os.PathLike | None = None) -> None:
        """Writes ``pep_state.json`` and every capture's ``masks_<c>.npz``."""
        directory = os.fspath(directory) if directory is not None else self.directory
        if directory is None:
            raise ValueError("PEPController.save needs a `directory`.")
        os.makedirs(directory, exist_ok=True)
        for c, capture in self.captures.items():
            path = self._mask_path(c, directory)
            if not os.path.exists(path):
                _write_npz(path, capture.masks)
        _write_json(os.path.join(directory, _STATE_FILE), self.get_state())

    def restore(self, directory: str | os.PathLike | None = None) -> bool:
        """Loads a saved run; returns False if the directory holds none."""
        directory = os.fspath(directory) if directory is not None else self.directory
        if directory is None:
            raise ValueError("PEPController.restore needs a `directory`.")
        path = os.path.join(directory, _STATE_FILE)
        if not os.path.exists(path):
            return False
        with open(path) as f:
            state = json.load(f)
        masks = {
            float(d["sparsity"]): _read_npz(self._mask_path(float(d["sparsity"]), directory))
            for d in state["captures"]
        }
        self.set_state(state, masks)
        return True


class PEPCaptureCallback(keras.callbacks.Callback):
    """Keras callback driving a `PEPController` from ``model.fit`` (as tfmot's UpdatePruningStep).

    After every ``check_every`` training batches it calls ``controller.observe(step)``; when
    every target is captured it stops training (``stop_when_done``). At the end of training
    the targets still pending are reported by ``controller.finish``. Train with `PEPAdam`
    so the thresholds move.

    Args:
        controller: the `PEPController` (attached on ``on_train_begin`` if it is not yet).
        check_every: batches between two checks.
        stop_when_done: set ``model.stop_training`` once every target is captured.
    """

    def __init__(
        self, controller: PEPController, *, check_every: int = 1, stop_when_done: bool = True
    ) -> None:
        super().__init__()
        if isinstance(check_every, bool) or not isinstance(check_every, int) or check_every < 1:
            raise ValueError(
                f"`check_every` must be a positive integer. Received: check_every={check_every!r}"
            )
        self.controller = controller
        self.check_every = check_every
        self.stop_when_done = bool(stop_when_done)
        self.step = 0

    def on_train_begin(self, logs: Any = None) -> None:
        """Attaches the controller to the model if needed."""
        if not self.controller.layers:
            self.controller.attach(self.model)
        self.step = self.controller.last_step

    def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
        """Counts and captures."""
        self.step += 1
        if self.step % self.check_every == 0:
            self.controller.observe(self.step)
            if self.stop_when_done and self.controller.done:
                self.model.stop_training = True

    def on_train_end(self, logs: Any = None) -> None:
        """Reports the targets not reached."""
        self.controller.finish(self.step)


# Models ------------------------------------------------------------------------------------
def pep_model(model: Any, config: PEPConfig | None = None) -> Any:
    """The same backbone with every embedding table replaced by a `PEPEmbedding`.

    A table (any layer attribute with ``input_dim`` and ``output_dim`` that appears in the
    model's config, e.g. ``user_embedding``, ``item_embedding`` and NCF's ``*_mlp`` tables)
    becomes a `PEPEmbedding` with the same name, size and initialiser; the model is rebuilt
    from its config. A model whose tables are PEP layers already is returned unchanged.

    Args:
        model: a `tfembsize.models` backbone (``get_config``/``from_config`` with layer
            arguments).
        config: gives the `PEPEmbedding` arguments (default `PEPConfig()`).

    Raises:
        ValueError: the model has no embedding table to convert.
    """
    config = config or PEPConfig()
    model_config = dict(model.get_config())
    converted = 0
    for key in list(model_config):
        layer = getattr(model, key, None)
        if not isinstance(layer, keras.layers.Layer) or not hasattr(layer, "input_dim"):
            continue
        if isinstance(layer, PEPEmbedding):
            model_config[key] = layer
            continue
        init = keras.initializers.deserialize(
            keras.initializers.serialize(getattr(layer, "embeddings_initializer", "uniform"))
        )
        model_config[key] = PEPEmbedding(
            int(layer.input_dim),
            int(layer.output_dim),
            embeddings_initializer=init,
            name=layer.name,
            **config.layer_kwargs(),
        )
        converted += 1
    if not converted:
        if find_pep_layers(model):
            return model
        raise ValueError(
            f"{type(model).__name__} has no embedding table (a layer argument with input_dim "
            "and output_dim) to convert to PEPEmbedding."
        )
    return type(model).from_config(model_config)


def _build(builder: Callable[[int], Any], seed: int, config: PEPConfig) -> Any:
    keras.utils.set_random_seed(int(seed))
    return pep_model(builder(int(seed)), config)


def ticket_model(
    backbone_builder: Callable[[int], Any],
    seed: int,
    masks: Mapping[str, np.ndarray],
    initial_tables: Mapping[str, np.ndarray],
    config: PEPConfig | None = None,
) -> Any:
    """The lottery ticket of a capture (algorithms.md §6.3), ready to train.

    The backbone is rebuilt with ``seed`` (so its other weights get the pruning run's
    initialisation), converted with `pep_model`, and every PEP table is frozen on its mask
    with ``E = E0 * M`` (``rewind="initial"``) or a fresh initialisation ``* M``
    (``rewind="fresh"``, the tables of the backbone built with ``seed + 1``).
    """
    config = config or PEPConfig()
    model = _build(backbone_builder, seed, config)
    fresh = None
    if config.rewind == "fresh":
        fresh = find_pep_layers(_build(backbone_builder, seed + 1, config))
        keras.utils.set_random_seed(int(seed))
    layers = find_pep_layers(model)
    if sorted(layers) != sorted(masks):
        raise ValueError(
            f"The masks are for tables {sorted(masks)}; the model has {sorted(layers)}."
        )
    for name, layer in layers.items():
        values = initial_tables[name] if fresh is None else fresh[name].embeddings.numpy()
        layer.freeze_mask(masks[name], rewind_values=values)
    return model


def _budget_of(model_layers: Mapping[str, PEPEmbedding], sparsity: float) -> tuple[Budget, int]:
    width = next(iter(model_layers.values())).output_dim
    rows = sum(int(layer.input_dim) for layer in model_layers.values())
    return Budget(sparsity=sparsity, d_max=width), rows


def retrain_ticket(
    model: Any,
    split: Any,
    evaluator: Any,
    sparsity: float,
    *,
    train_config: Any = None,
) -> Any:
    """Trains a frozen ticket with `train_bpr` (validation early stopping); returns its result.

    The budget is asserted before training and again after (the usable parameters of frozen
    tables are the mask counts). The optimiser is `PEPAdam` without L2, i.e. Keras's Adam
    maths, so the recipe is the one every other method is retrained with; the frozen
    thresholds are skipped.

    Raises:
        BudgetExceededError: the ticket's usable parameters exceed ``B(sparsity)``.
    """
    from tfembsize.models import train_bpr

    layers = _pep_layers(model)
    budget, rows = _budget_of(layers, sparsity)
    used = sum(layer.usable_params() for layer in layers.values())
    budget.check_total(used, rows, what=f"PEP ticket for sparsity {sparsity}")
    result = train_bpr(
        model,
        split,
        evaluator,
        config=train_config,
        optimizer=lambda lr: PEPAdam(lr, l2=0.0, threshold_l2=0.0),
    )
    used = sum(layer.usable_params() for layer in layers.values())
    budget.check_total(used, rows, what=f"retrained PEP model for sparsity {sparsity}")
    return result


def _train_summary(result: Any) -> dict:
    """The compact JSON summary of a `TrainResult` kept in a `PEPResult`."""

    def metrics(r: Any) -> Any:
        return None if r is None else {k: float(v) for k, v in r.metrics().items()}

    return {
        "best_step": int(result.best_step),
        "steps": int(result.steps),
        "stopped_early": bool(result.stopped_early),
        "wall_time": float(result.wall_time),
        "monitor": result.monitor,
        "best_value": float(result.best_value),
        "validation": metrics(result.validation),
        "test": metrics(result.test),
    }


# The pruning phase -------------------------------------------------------------------------
def _prune_runner(model: Any, layers: Sequence[PEPEmbedding], check_every: int) -> Any:
    """A compiled loop: up to ``n`` steps, stopping right after the step whose count <= limit."""

    def count() -> tf.Tensor:
        return tf.add_n([layer.count_usable_params() for layer in layers])

    def run(iterator: Any, n: tf.Tensor, limit: tf.Tensor, start: tf.Tensor) -> tuple:
        def cond(i: tf.Tensor, used: tf.Tensor, finite: tf.Tensor, losses: Any) -> tf.Tensor:
            return tf.logical_and(tf.logical_and(i < n, used > limit), finite)

        def body(i: tf.Tensor, used: tf.Tensor, finite: tf.Tensor, losses: Any) -> tuple:
            loss = model.train_batch(iterator.get_next()).loss
            with tf.control_dependencies([loss]):
                check = tf.equal((start + i + 1) % check_every, 0)
                used = tf.cond(check, count, lambda: used)
            return i + 1, used, tf.math.is_finite(loss), losses.write(i, loss)

        init = (
            tf.constant(0, tf.int32),
            tf.constant(np.iinfo(np.int64).max, tf.int64),
            tf.constant(True),
            tf.TensorArray(tf.float32, size=0, dynamic_size=True),
        )
        i, used, _, losses = tf.while_loop(cond, body, init)
        return i, used, losses.stack()

    return tf.function(run, autograph=False)


def prune(
    model: Any,
    split: Any,
    controller: PEPController,
    *,
    config: PEPConfig | None = None,
    seed: int = 0,
    directory: str | os.PathLike | None = None,
    verbose: int = 0,
) -> PEPPruneResult:
    """Runs PEP's pruning phase on a BPR backbone with PEP tables and captures the masks.

    Trains on ``bpr_dataset(split.train, batch_size, seed)`` with `PEPAdam` (config's rates,
    coupled L2 and clip norm), in compiled chunks of ``chunk_steps`` that stop right after the
    first step whose usable count is at most the next pending budget; the controller then
    captures the mask(s). Only the training loss is used (no validation, as in the official
    code). Stops when every target is captured or at ``max_steps`` (the rest are reported
    missed).

    With a ``directory`` the run is resumable: ``E0`` goes to ``initial_tables.npz``, masks to
    ``masks_<c>.npz`` as captured, and after every chunk the model and optimiser are
    checkpointed (``ckpt/``) with the step count; calling `prune` again with a model built the
    same way continues from the last chunk (the BPR batches continue from that step).

    Args:
        model: a `tfembsize.models` backbone whose tables are `PEPEmbedding` (`pep_model`).
        split: the data split (only ``split.train`` is used).
        controller: a `PEPController` (attached here).
        config: the pruning recipe.
        seed: seed of the BPR sampler.
        directory: where to keep the run (None: in memory, not resumable).
        verbose: 1 for a progress bar.

    Returns:
        A `PEPPruneResult`.

    Raises:
        NonFiniteLossError: the loss became NaN or infinite.
    """
    from tfembsize.data import bpr_dataset
    from tfembsize.models import NonFiniteLossError

    config = config or PEPConfig()
    t0 = time.perf_counter()
    if not callable(getattr(model, "train_batch", None)):
        raise TypeError(
            "`model` must be a tfembsize BPR backbone (with `train_batch`). Received: "
            f"{type(model).__name__}"
        )
    controller.attach(model)
    layers = controller.layers
    directory = None if directory is None else os.fspath(directory)
    if directory is not None:
        os.makedirs(directory, exist_ok=True)
        controller.directory = directory
    optimizer = config.optimizer()
    model.compile(optimizer=optimizer)
    optimizer.build(model.trainable_variables)

    # E0, and the state of an interrupted run.
    initial_path = None if directory is None else os.path.join(directory, _INITIAL_FILE)
    step, history = 0, []
    manager = None
    if directory is not None:
        checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer)
        manager = tf.train.CheckpointManager(checkpoint, os.path.join(directory, "ckpt"), 1)
    if initial_path is not None and os.path.exists(initial_path):
        initial = _read_npz(initial_path)
        if sorted(initial) != sorted(layers):
            raise ValueError(
                f"{initial_path} holds tables {sorted(initial)}; the model has {sorted(layers)}."
            )
        if controller.restore(directory) and manager.latest_checkpoint:
            manager.checkpoint.restore(manager.latest_checkpoint).assert_existing_objects_matched()
            with open(os.path.join(directory, "prune_history.json")) as f:
                saved = json.load(f)
            step, history = int(saved["step"]), list(saved["history"])
            if step < config.max_steps:  # targets missed at an earlier max_steps: try again
                controller.missed = ()
            logger.info("PEP: resuming the pruning run at step %d.", step)
        else:  # interrupted before the first checkpoint: start again from the saved E0
            controller.captures, controller.missed = {}, ()
            for name, layer in layers.items():
                layer.embeddings.assign(initial[name])
    else:
        initial = {name: layer.embeddings.numpy().copy() for name, layer in layers.items()}
        if initial_path is not None:
            _write_npz(initial_path, initial)

    if step == 0 and not controller.captures:
        controller.observe(0)
    runner = _prune_runner(model, list(layers.values()), config.check_every)
    iterator = iter(bpr_dataset(split.train, config.batch_size, seed=seed, start_step=step))
    progbar = keras.utils.Progbar(config.max_steps, unit_name="step") if verbose else None
    while controller.pending and step < config.max_steps:
        limit = controller.next_limit()
        n = min(config.chunk_steps, config.max_steps - step)
        done, used, losses = runner(
            iterator,
            tf.constant(n, tf.int32),
            tf.constant(limit, tf.int64),
            tf.constant(step, tf.int32),
        )
        losses = losses.numpy()
        done = int(done)
        step += done
        bad = np.flatnonzero(~np.isfinite(losses))
        if bad.size:
            raise NonFiniteLossError(step - done + int(bad[0]) + 1, float(losses[bad[0]]))
        used = int(used)
        if used <= limit:
            controller.observe(step, used)
        else:
            fresh = config.check_every == 1 and done > 0
            controller.last_step = step
            controller.last_usable = used if fresh else controller.usable_params()
        history.append(
            {
                "step": step,
                "usable_params": int(controller.last_usable),
                "loss": float(losses.mean()) if losses.size else None,
            }
        )
        if progbar is not None:
            progbar.update(step, values=[("usable", float(controller.last_usable))])
        if manager is not None:
            manager.save(checkpoint_number=step)
            _write_json(
                os.path.join(directory, "prune_history.json"), {"step": step, "history": history}
            )
            controller.save()
    missed = controller.finish(step) if controller.pending else controller.missed
    return PEPPruneResult(
        captures=dict(controller.captures),
        missed=tuple(missed),
        steps=step,
        history=tuple(history),
        initial_tables=initial,
        wall_time=time.perf_counter() - t0,
    )


# Everything --------------------------------------------------------------------------------
def run_pep(
    split: Any,
    backbone_builder: Callable[[int], Any],
    sparsities: Any = (0.8, 0.9, 0.95),
    config: Any = None,
    seed: int = 0,
    directory: str | os.PathLike | None = None,
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
            with open(path) as f:
                saved = json.load(f)
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
            _write_json(path, result.to_dict())
        results[c] = result
    return results
