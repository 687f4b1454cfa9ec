"""`EpochCheckpoint`: ``model.fit`` that a killed process resumes after its last finished epoch.

`FitEnvironment` pretrains the full-size reference model with the user's own ``fit``, which
may take many epochs. With a run directory it passes this callback, which writes the model's
weights, its optimizer's variables and the number of finished epochs after every epoch, in
one atomic, checksummed ``.npz`` file; a rerun reads it back and continues ``fit`` at
``initial_epoch`` = the finished epochs instead of starting over.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np

from tfembsize import _io
from tfembsize._keras import keras
from tfembsize.errors import StateFileError
from tfembsize.training.weights import assign_weights, get_weights

__all__ = ["EpochCheckpoint"]

logger = logging.getLogger(__name__)

_FORMAT = "tfembsize.EpochCheckpoint"
_FILE = "fit_checkpoint.npz"


def optimizer_variables(optimizer: Any) -> list[Any]:
    """The optimizer's variables (its ``variables`` list, or what its ``variables()`` returns)."""
    variables = optimizer.variables
    if callable(variables) and not isinstance(variables, list):
        variables = variables()  # optimizers whose `variables` is a method
    return list(variables)


class EpochCheckpoint(keras.callbacks.Callback):
    """Saves weights, optimizer state and finished epochs after every epoch of ``model.fit``.

    Put it first in ``callbacks`` so an epoch is saved before later callbacks can stop the
    process. `restore` loads the last save into a model built the same way and returns the
    number of finished epochs, to pass as ``initial_epoch``. A save is refused on restore
    when its ``seed`` differs from this one's (the checkpoint belongs to another run).

    Args:
        directory: where ``fit_checkpoint.npz`` is written.
        seed: identifies the training the checkpoint belongs to.

    Example:
        >>> checkpoint = EpochCheckpoint("run/env/pretraining", seed=0)  # doctest: +SKIP
        >>> done = checkpoint.restore(model)  # doctest: +SKIP
        >>> model.fit(ds, epochs=20, initial_epoch=done, callbacks=[checkpoint])  # doctest: +SKIP
    """

    def __init__(self, directory: str | os.PathLike[str], *, seed: int) -> None:
        super().__init__()
        self.directory = os.fspath(directory)
        self.seed = int(seed)

    @property
    def path(self) -> str:
        """The checkpoint file."""
        return os.path.join(self.directory, _FILE)

    def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
        """Writes the model and optimizer state with ``epoch + 1`` finished epochs.

        An epoch whose loss is not finite is not saved (a resumed fit would diverge again).
        """
        loss = (logs or {}).get("loss")
        if loss is not None and not np.all(np.isfinite(np.asarray(loss, dtype=np.float64))):
            logger.warning("Epoch %d ended with loss %s; it is not saved.", epoch + 1, loss)
            return
        arrays: dict[str, Any] = {
            "epochs_done": np.int64(epoch + 1),
            "seed": np.int64(self.seed),
        }
        for i, w in enumerate(get_weights(self.model)):
            arrays[f"w{i:04d}"] = w
        optimizer = getattr(self.model, "optimizer", None)
        if optimizer is not None:
            for i, v in enumerate(optimizer_variables(optimizer)):
                arrays[f"o{i:04d}"] = np.asarray(v.numpy())
        _io.write_npz(self.path, arrays, format=_FORMAT)
        logger.debug("Saved epoch %d of the fit in %s.", epoch + 1, self.path)

    def restore(self, model: Any) -> int:
        """Loads the last save into ``model`` (and its optimizer); returns the epochs done.

        Returns 0 (and changes nothing) when there is no save, or a save of another seed.

        Raises:
            tfembsize.errors.StateFileError: the file is damaged.
            ValueError: the saved weights do not fit ``model`` (it was built differently).
        """
        if not os.path.exists(self.path):
            return 0
        arrays = _io.read_npz(self.path, format=_FORMAT, what="fit checkpoint")
        if int(arrays["seed"]) != self.seed:
            logger.warning(
                "Ignoring %s: it was written with seed %d, not %d.",
                self.path,
                int(arrays["seed"]),
                self.seed,
            )
            return 0
        weights = [arrays[k] for k in sorted(arrays) if k.startswith("w")]
        assign_weights(model, weights, source=f"The weights in {self.path}")
        saved = [arrays[k] for k in sorted(arrays) if k.startswith("o")]
        optimizer = getattr(model, "optimizer", None)
        variables = [] if optimizer is None else optimizer_variables(optimizer)
        if saved and not variables:  # an optimizer that creates its variables on first use
            logger.warning(
                "The optimizer of %r has no variables yet; the fit resumes with the saved "
                "weights and a fresh optimizer state.",
                getattr(model, "name", ""),
            )
        elif len(saved) != len(variables):
            raise StateFileError(
                f"{self.path} holds {len(saved)} optimizer variables but the model's optimizer "
                f"has {len(variables)}; it was written for another model. Delete the folder "
                f"{self.directory} to train from the start."
            )
        else:
            for variable, value in zip(variables, saved, strict=True):
                variable.assign(value)
        done = int(arrays["epochs_done"])
        logger.info("Resuming the fit after epoch %d (from %s).", done, self.path)
        return done
