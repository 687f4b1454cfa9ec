"""Reference-model and step-state persistence shared by the search environments.

`KerasEnvironment` and `FitEnvironment` both pretrain a full-size reference model once, store
it next to the search run (and optionally in a shared folder), and save the step counter and
current weights after every step. `ReferenceStore` is that one implementation; the
environments set the attributes listed on the class.
"""

from __future__ import annotations

import logging
import os
from typing import Any, ClassVar

import numpy as np

from tfembsize import _io
from tfembsize.records import Feedback
from tfembsize.training.weights import assign_weights, get_weights, load_weights, save_weights

__all__ = ["ReferenceStore", "check_reference_arguments"]

logger = logging.getLogger(__name__)


def check_reference_arguments(seed: Any, reference: Any) -> None:
    """Validates an environment's ``seed`` and ``reference`` arguments.

    Raises:
        TypeError: ``seed`` is not an integer, or ``reference`` is not a bool or a `Feedback`.
        ValueError: ``reference`` is a failed `Feedback`.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"`seed` must be an integer. Received: seed={seed!r}")
    if not isinstance(reference, (bool, Feedback)):
        raise TypeError(f"`reference` must be True, False or a Feedback. Received: {reference!r}")
    if isinstance(reference, Feedback) and not reference.ok:
        raise ValueError("`reference` is a failed Feedback; it cannot be a denominator.")


class ReferenceStore:
    """Mixin: stores the reference model and the environment's step state in a folder.

    The host class sets, in its constructor: ``_model`` (the Keras model), ``_reference``
    (`Feedback` or None), ``_reference_weights`` (list of arrays or None), ``_want_reference``
    (bool), ``_reference_dir`` (a shared folder or None), ``_directory`` (None until
    `attach`), ``_snapshot`` (weights for ``"continue"`` steps or None), ``_steps_done`` (int)
    and ``seed``; and the class attribute ``_STATE_FORMAT`` (the format tag of state.json).

    Files: ``reference.npz`` (the reference's feedback) and ``reference_weights.npz`` in each
    reference folder, written once; ``state.json``, ``weights.npz`` and, when the snapshot is
    not the reference's, ``snapshot.npz`` in each state folder.
    """

    _STATE_FORMAT: ClassVar[str]
    _model: Any
    _reference: Feedback | None
    _reference_weights: list[np.ndarray] | None
    _want_reference: bool
    _reference_dir: str | None
    _directory: str | None
    _snapshot: list[np.ndarray] | None
    _steps_done: int
    seed: int

    def reference(self) -> Feedback | None:
        """The full-size model's validation feedback (implemented by the environment)."""
        raise NotImplementedError

    def _reference_known(self) -> bool:
        """True when no reference training is needed: it is known, stored, or not wanted.

        A reference found in a reference folder is loaded on the way.
        """
        if self._reference is not None or not self._want_reference:
            return True
        return any(self._load_reference(d) for d in self._reference_directories())

    def snapshot(self) -> None:
        """Stores the current weights (sizes included) in memory."""
        self._snapshot = get_weights(self._model)

    def restore(self) -> None:
        """Restores the weights stored by `snapshot` (or the pretrained reference)."""
        if self._snapshot is None:
            if self._want_reference and self._reference is None:
                self.reference()  # the pretraining stores the snapshot
            if self._snapshot is None:
                raise ValueError(
                    "No snapshot to restore: call snapshot() first (or create the environment "
                    "with reference=True so the pretrained model is the snapshot)."
                )
        assign_weights(self._model, self._snapshot)

    def attach(self, directory: str) -> None:
        """Stores the reference model in ``directory`` (and reloads one found there)."""
        os.makedirs(directory, exist_ok=True)
        self._directory = directory
        if self._reference is None and self._want_reference:
            for d in self._reference_directories():
                if self._load_reference(d):
                    break
        if self._reference_weights is not None:
            for d in self._reference_directories():
                self._save_reference(d)

    def _reference_directories(self) -> list[str]:
        return [d for d in (self._reference_dir, self._directory) if d is not None]

    def _save_reference(self, directory: str) -> None:
        os.makedirs(directory, exist_ok=True)
        if os.path.exists(os.path.join(directory, "reference.npz")):
            return  # written once; the reference never changes
        if self._reference_weights is None or self._reference is None:
            raise RuntimeError(
                f"{type(self).__name__}: there is no trained reference model to store."
            )
        save_weights(os.path.join(directory, "reference_weights.npz"), self._reference_weights)
        self._reference.save(os.path.join(directory, "reference.npz"))

    def _load_reference(self, directory: str) -> bool:
        fb_path = os.path.join(directory, "reference.npz")
        w_path = os.path.join(directory, "reference_weights.npz")
        if not (os.path.exists(fb_path) and os.path.exists(w_path)):
            return False
        weights = load_weights(w_path)
        # Validates the shapes against the model and names the file on a mismatch.
        assign_weights(self._model, weights, source=f"The reference weights in {w_path}")
        self._reference_weights = weights
        if self._snapshot is None:
            self._snapshot = weights
        self._reference = Feedback.load(fb_path)
        logger.info("Loaded the reference model from %s.", directory)
        return True

    def save_state(self, directory: str) -> None:
        """Writes the step counter, the current weights and a snapshot of one's own.

        The snapshot (the weights ``"continue"`` steps start from) is written only when it is
        not the reference's, which is stored once in the reference folder.
        """
        os.makedirs(directory, exist_ok=True)
        save_weights(os.path.join(directory, "weights.npz"), get_weights(self._model))
        own_snapshot = self._snapshot is not None and self._snapshot is not self._reference_weights
        if own_snapshot and self._snapshot is not None:
            save_weights(os.path.join(directory, "snapshot.npz"), self._snapshot)
        _io.write_json(
            os.path.join(directory, "state.json"),
            {"steps_done": self._steps_done, "seed": self.seed, "snapshot": own_snapshot},
            format=self._STATE_FORMAT,
        )

    def load_state(self, directory: str) -> None:
        """Reads a state written by `save_state`."""
        state = _io.read_json(
            os.path.join(directory, "state.json"),
            format=self._STATE_FORMAT,
            what="environment state",
        )
        self._steps_done = int(state["steps_done"])
        if state.get("snapshot"):
            self._snapshot = load_weights(os.path.join(directory, "snapshot.npz"))
        path = os.path.join(directory, "weights.npz")
        if os.path.exists(path):
            assign_weights(self._model, load_weights(path), source=f"The weights in {path}")
