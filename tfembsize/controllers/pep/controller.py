"""`PEPController`: captures PEP masks at the step the usable count crosses each budget."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import tensorflow as tf

from tfembsize import _io
from tfembsize.budget import Budget
from tfembsize.controllers.hooks import InTrainingController
from tfembsize.controllers.pep.config import _pep_layers, _sparsities, _sparsity_tag
from tfembsize.controllers.pep.results import PEPCapture
from tfembsize.errors import BudgetExceededError
from tfembsize.layers.pep_embedding import PEPEmbedding
from tfembsize.training.hooks import HookCallback

__all__ = ["PEPController"]

logger = logging.getLogger(__name__)

_STATE_FILE = "pep_state.json"
_STATE_FORMAT = "tfembsize.PEPController"
_NO_COUNT = np.iinfo(np.int64).max  # "not counted in this chunk yet": crosses no budget


class PEPController(InTrainingController):
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

    It is an in-training controller (`tfembsize.controllers.InTrainingController`): with
    ``train_bpr(..., hook=controller)`` the usable count is taken inside the compiled step
    every ``check_every`` steps and a chunk ends right after the step whose count falls under
    the next pending budget, so the capture happens at exactly that step; under
    ``model.fit`` (`callback`) the count is taken on the host after every ``check_every``
    batches.

    Args:
        sparsity: one target sparsity or a sequence of them, in (0, 1).
        directory: where captures and state are written (None: memory only).
        check_every: steps between two counts inside `train_bpr`'s loop.

    Example:
        >>> controller = PEPController(sparsity=(0.8, 0.9, 0.95)).attach(model)  # doctest: +SKIP
        >>> model.fit(ds, epochs=100, callbacks=[controller.callback()])  # doctest: +SKIP
        >>> controller.captures[0.9].masks["item_embedding"].mean()  # doctest: +SKIP

    References:
        Liu et al., "Learnable Embedding Sizes for Recommender Systems", ICLR 2021.
    """

    def __init__(
        self,
        sparsity: Any = (0.8, 0.9, 0.95),
        *,
        directory: str | os.PathLike[str] | None = None,
        check_every: int = 1,
    ) -> None:
        if isinstance(check_every, bool) or not isinstance(check_every, int) or check_every < 1:
            raise ValueError(
                f"`check_every` must be a positive integer. Received: check_every={check_every!r}"
            )
        self.check_every = check_every
        self._used: tf.Variable | None = None
        self._limit: tf.Variable | None = None
        self._graph_counted = False
        self.sparsities = _sparsities(sparsity)
        self.directory = None if directory is None else os.fspath(directory)
        self.layers: dict[str, PEPEmbedding] = {}
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

    @property
    def attached(self) -> bool:
        """True once `attach` found the PEP tables."""
        return bool(self.layers)

    def _require_attached(self) -> None:
        if not self.layers:
            raise RuntimeError("PEPController: call `attach(model)` first.")

    def _sizes(self) -> tuple[int, int]:
        """``(d_max, num_rows)`` of the attached tables; raises RuntimeError before `attach`."""
        self._require_attached()
        if self.d_max is None or self.num_rows is None:
            raise RuntimeError("PEPController: call `attach(model)` first.")
        return self.d_max, self.num_rows

    def budget(self, sparsity: float) -> Budget:
        """The `Budget` of a target."""
        d_max, _ = self._sizes()
        return Budget(sparsity=sparsity, d_max=d_max)

    def limit(self, sparsity: float) -> int:
        """``B(c)`` of a target, in usable parameters."""
        return self.budget(sparsity).max_params_for(self._sizes()[1])

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
        _, num_rows = self._sizes()
        self.last_step = int(step)
        used = self.usable_params() if usable_params is None else int(usable_params)
        self.last_usable = used
        new: list[PEPCapture] = []
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
            self.budget(c).check_total(total, num_rows, what=f"PEP mask for sparsity {c}")
            capture = PEPCapture(
                sparsity=c,
                limit=limit,
                step=int(step),
                usable_params=total,
                num_rows=num_rows,
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
                self._write_capture(capture, self.directory)
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

    def callback(
        self, *, check_every: int = 1, stop_when_done: bool = True, start_step: int | None = None
    ) -> HookCallback:
        """A Keras callback for ``model.fit`` (as tfmot's ``UpdatePruningStep``).

        Every ``check_every`` batches it counts and captures (`observe`); once every target
        is captured it stops training (``stop_when_done``); at the end of training the
        targets still pending are reported by `finish`. Train with `PEPAdam` so the
        thresholds move.
        """
        start = self.last_step if start_step is None else start_step
        return super().callback(
            check_every=check_every, stop_when_done=stop_when_done, start_step=start
        )

    # The training hook --------------------------------------------------------------------
    def on_train_begin(self, model: Any, optimizer: Any) -> None:
        """Attaches the PEP tables and makes the in-graph count and limit variables."""
        super().on_train_begin(model, optimizer)
        if self._used is None:
            self._used = tf.Variable(_NO_COUNT, dtype=tf.int64, trainable=False)
            self._limit = tf.Variable(-1, dtype=tf.int64, trainable=False)
        self._arm()

    def _arm(self) -> None:
        """Sets the in-graph limit to the next pending budget and forgets the last count."""
        if self._used is not None and self._limit is not None:
            limit = self.next_limit()
            self._used.assign(_NO_COUNT)
            self._limit.assign(-1 if limit is None else limit)

    def _variables(self) -> tuple[tf.Variable, tf.Variable]:
        """The in-graph count and limit variables (made by `on_train_begin`)."""
        if self._used is None or self._limit is None:
            raise RuntimeError("PEPController: `on_train_begin` has not run.")
        return self._used, self._limit

    def _count(self) -> tf.Tensor:
        counts = [tf.cast(layer.count_usable_params(), tf.int64) for layer in self.layers.values()]
        return tf.add_n(counts)

    def after_batch(self, batch: Any, loss: tf.Tensor, step: tf.Tensor) -> tf.Tensor:
        """In graph: every ``check_every`` steps, count; stop the chunk at a budget crossing."""
        del batch, loss
        self._graph_counted = True
        used_var, limit_var = self._variables()
        check = tf.equal(step % self.check_every, 0)
        used = tf.cond(check, self._count, lambda: used_var.read_value())
        with tf.control_dependencies([used_var.assign(used)]):
            return tf.logical_and(limit_var >= 0, used <= limit_var)

    def on_chunk_end(self, step: int, losses: np.ndarray) -> dict[str, float]:
        """Host: captures the masks when the count fell under a budget; re-arms the check."""
        if not self._graph_counted:  # under model.fit: no in-graph count, count here
            self.observe(step)
        else:
            used_var, limit_var = self._variables()
            used = int(used_var.numpy())
            limit = int(limit_var.numpy())
            if 0 <= used <= limit:
                self.observe(step, used)
            else:
                fresh = self.check_every == 1 and losses.size > 0 and used != _NO_COUNT
                self.last_step = int(step)
                self.last_usable = used if fresh else self.usable_params()
        self._arm()
        assert self.last_usable is not None  # set by `observe` or above
        return {"usable_params": float(self.last_usable)}

    def on_train_end(self, step: int) -> None:
        """Reports the targets still pending as missed (`finish`)."""
        if self.pending and self.layers:
            self.finish(step)

    # Persistence ------------------------------------------------------------------------------
    def _mask_path(self, sparsity: float, directory: str | None = None) -> str:
        directory = directory or self.directory
        if directory is None:
            raise ValueError("PEPController: no `directory` for the masks.")
        return os.path.join(directory, f"masks_{_sparsity_tag(sparsity)}.npz")

    def _write_capture(self, capture: PEPCapture, directory: str) -> None:
        os.makedirs(directory, exist_ok=True)
        _io.write_npz(self._mask_path(capture.sparsity, directory), capture.masks, compress=True)

    def get_state(self) -> dict[str, Any]:
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
        self, state: Mapping[str, Any], masks: Mapping[float, Mapping[str, Any]] | None = None
    ) -> None:
        """Restores `get_state` output (with the masks of each capture).

        Args:
            state: a `get_state` dict (an empty one is a run that has not started).
            masks: the masks of each capture; None reads them from ``directory``.

        Raises:
            ValueError: the state is for other targets or other tables.
        """
        if not state:
            return
        if masks is None and self.directory is not None:
            masks = {
                float(d["sparsity"]): _io.read_npz(
                    self._mask_path(float(d["sparsity"])), what="PEP masks"
                )
                for d in state["captures"]
            }
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
        self._arm()

    def save(self, directory: str | os.PathLike[str] | None = None) -> None:
        """Writes ``pep_state.json`` and every capture's ``masks_<c>.npz``."""
        directory = os.fspath(directory) if directory is not None else self.directory
        if directory is None:
            raise ValueError("PEPController.save needs a `directory`.")
        os.makedirs(directory, exist_ok=True)
        for c, capture in self.captures.items():
            path = self._mask_path(c, directory)
            if not os.path.exists(path):
                _io.write_npz(path, capture.masks, compress=True)
        _io.write_json(os.path.join(directory, _STATE_FILE), self.get_state())

    def restore(self, directory: str | os.PathLike[str] | None = None) -> bool:
        """Loads a saved run; returns False if the directory holds none."""
        directory = os.fspath(directory) if directory is not None else self.directory
        if directory is None:
            raise ValueError("PEPController.restore needs a `directory`.")
        path = os.path.join(directory, _STATE_FILE)
        if not os.path.exists(path):
            return False
        state = _io.read_json(path, what="PEP controller state")
        masks = {
            float(d["sparsity"]): _io.read_npz(
                self._mask_path(float(d["sparsity"]), directory), what="PEP masks"
            )
            for d in state["captures"]
        }
        self.set_state(state, masks)
        return True
