"""`FitEnvironment`: a size search on a model of one's own, trained by its own ``fit``.

The model is the user's: a ``build_model()`` function returns it compiled with the user's
optimizer and loss (a functional Keras model, a subclassed one, a TensorFlow Recommenders
``tfrs.Model``), its embedding tables being tfembsize layers. A search step applies the
controller's sizes to those tables, calls ``model.fit(train_data, ...)`` and scores the model
with the user's ``evaluate``. Nothing of the library's own training loop is involved.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import tensorflow as tf

from tfembsize._keras import keras
from tfembsize.layers.utils import find_searchable_layers, iter_layers
from tfembsize.plan import SizePlan
from tfembsize.records import MODES, Feedback, Observation
from tfembsize.search._reference import ReferenceStore, check_reference_arguments
from tfembsize.search.entities import checked_frequencies, side_rows
from tfembsize.search.environment import _build_searchable, _usable_params, infer_tables
from tfembsize.search.evaluation import feedback_from_evaluation
from tfembsize.search.fit_checkpoint import EpochCheckpoint
from tfembsize.search.fit_checkpoint import optimizer_variables as _optimizer_variables
from tfembsize.training.plan_training import weights_finite
from tfembsize.training.weights import assign_weights, get_weights

__all__ = ["FitEnvironment"]

logger = logging.getLogger(__name__)

_RESERVED_FIT_KEYS = ("x", "y", "validation_split", "sample_weight")


def _checked_verbose(verbose: Any) -> int:
    if isinstance(verbose, bool) or not isinstance(verbose, (int, np.integer)) or verbose < 0:
        raise ValueError(
            f"`verbose` must be 0 (silent), 1 (progress bar) or 2 (one line per epoch). "
            f"Received: verbose={verbose!r}"
        )
    return int(verbose)


def _checked_fit_kwargs(name: str, value: Mapping[str, Any] | None) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise TypeError(
            f"`{name}` must be a dict of model.fit arguments (e.g. {{'epochs': 3}}). Received: "
            f"{type(value).__name__}"
        )
    bad = sorted(k for k in value if k in _RESERVED_FIT_KEYS)
    if bad:
        raise ValueError(
            f"`{name}` must not set {bad}: the training data is `train_data` (a tf.data.Dataset "
            f"or a function returning one). Received: {name}={dict(value)!r}"
        )
    return dict(value)


class FitEnvironment(ReferenceStore):
    """A search environment that trains a model of your own with its own ``fit``.

    ``build_model()`` returns a fresh, compiled Keras model (your optimizer, your loss, your
    metrics) whose embedding tables are tfembsize layers (`MaskedEmbedding`,
    `BudgetedEmbedding`, ...): a functional model, a subclassed one, or a TensorFlow
    Recommenders ``tfrs.Model``, with ``StringLookup`` / ``IntegerLookup`` layers before the
    tables if you like. Each `step`:

    1. starts from fresh weights (``"scratch"``: a new ``build_model()``), from the snapshot
       (``"snapshot"``: the pretrained full-size model unless `snapshot` stored others) or
       from the current weights (``"continue"``); the optimizer always starts in the state
       ``compile`` gave it;
    2. applies the plan's sizes to the tables;
    3. calls ``model.fit(train_data, **fit_kwargs)``. A decision's length replaces the
       number of epochs: ``train_epochs=h`` trains h epochs (a fraction of an epoch counts
       ``ceil(h * batches per epoch)`` batches), ``train_steps=n`` trains n batches of
       ``train_data`` repeated; the other ``fit_kwargs`` (callbacks, verbosity...) apply as
       given;
    4. scores the model with ``evaluate`` (see `feedback_from_evaluation` for what it may
       return) and returns a `Feedback`, failed if the loss or the weights became NaN.

    **Tables and rows.** ``tables`` says which layer embeds users and which items (default:
    `infer_tables`, by the names). A table's rows are its ``input_dim``; behind a lookup these
    include the lookup's mask and out-of-vocabulary rows, which are sized and budgeted like
    any row (the N of B(c) = floor((1 - c) * d_max * N) counts them). ``frequencies`` gives
    one training count per table row and side (`count_frequencies` counts them through the
    model's lookups).

    **Reference.** With ``reference=True`` the full-size model (every row at ``d_max``) is
    trained once with ``reference_fit_kwargs``; its evaluation is the denominator of the
    quality ratios, and its weights are the snapshot that ``"snapshot"`` steps start from
    (BET's pretrained model). The search loop stores it in the run directory, so a resumed
    search does not train it again; while it trains, the weights and optimizer state are
    saved there after every epoch (`EpochCheckpoint`), so a process killed during the
    pretraining resumes it after its last finished epoch (with the user's other callbacks
    starting afresh) instead of starting over.

    **Progress.** ``verbose`` (or, when it is None, the ``verbose`` of
    `tfembsize.search.run`, 0 elsewhere) is passed to every ``model.fit`` and metric-name
    ``model.evaluate`` whose ``*fit_kwargs`` do not set one: 1 shows Keras's progress bar,
    2 one line per epoch. Each phase (the pretraining, a search step's training and
    evaluation, a final retraining) also reports its elapsed time in one line: written to
    standard output next to Keras's progress when ``verbose`` > 0, logged at INFO otherwise.

    **Resuming.** The environment saves its step counter and weights after every step; step
    t seeds Python, NumPy and TensorFlow with ``seed + 1 + t`` before building and training.
    Pass ``train_data`` as a function returning a new dataset (shuffled with no fixed seed)
    to make every step's batches depend only on that seed: a resumed search then repeats
    exactly what the uninterrupted one would have done. A dataset object is iterated anew
    every step, and its shuffle order after a resume differs.

    Args:
        build_model: zero-argument function returning a new compiled model. Every call must
            give the same layer names and shapes.
        train_data: a ``tf.data.Dataset`` of training batches (what ``model.fit`` takes), or
            a zero-argument function returning one.
        evaluate: the validation quality, higher is better: a function ``model -> number``
            (or a mapping / `RankingResult` with per-user and per-item quality, e.g. a
            `TowerEvaluator`), or the name of a metric that ``model.evaluate(validation_data,
            return_dict=True)`` reports (e.g. ``"factorized_top_k/top_100_categorical_accuracy"``).
        frequencies: ``{"user": counts, "item": counts}``, one training count per table row.
        tables: layer name -> ``"user"`` / ``"item"`` for every searchable layer.
        validation_data: the data of a metric-name ``evaluate`` (a dataset or a function
            returning one).
        fit_kwargs: ``model.fit`` arguments of a search step (default: one epoch, with the
            environment's ``verbose``).
        reference_fit_kwargs: ``model.fit`` arguments of the reference pretraining (default
            ``fit_kwargs``).
        final_fit_kwargs: ``model.fit`` arguments of ``phase="final"`` steps, full trainings
            of result candidates (default ``reference_fit_kwargs``).
        reference: True to train the full-size reference when first needed, False for none
            (no ratios; ``"snapshot"`` steps then need an explicit `snapshot`), or a
            `Feedback` to use as the reference.
        seed: base seed of the steps.
        reference_directory: a directory the reference (weights and feedback) is also read
            from and written to, to share it between searches of the same model and data.
        verbose: 0 silent (phases logged at INFO), 1 Keras progress bars, 2 one line per
            epoch; None (default) takes the ``verbose`` of `tfembsize.search.run`.

    Raises:
        TypeError: ``build_model`` is not a function returning a compiled Keras model,
            ``train_data`` is no dataset, ``evaluate`` is neither a function nor a metric
            name, or ``frequencies`` is not ``{"user": ..., "item": ...}``.
        ValueError: the model has no searchable tables, ``tables`` does not name each of them
            as ``"user"`` or ``"item"``, a frequency vector's length is not its tables' row
            count, the tables have different widths, or ``fit_kwargs`` sets the data.

    Example:
        >>> env = FitEnvironment(build_model, train_ds, "factorized_top_k/top_100_categorical_"
        ...                      "accuracy", validation_data=val_ds,
        ...                      frequencies={"user": user_counts, "item": item_counts},
        ...                      tables={"user_embedding": "user", "movie_embedding": "item"},
        ...                      fit_kwargs={"epochs": 3})  # doctest: +SKIP
        >>> result = tfembsize.search.run(BETController(0.9, monitor="quality"), env,
        ...                               "runs/bet")  # doctest: +SKIP
    """

    _STATE_FORMAT = "tfembsize.FitEnvironment"

    def __init__(
        self,
        build_model: Callable[[], Any],
        train_data: Any,
        evaluate: Callable[[Any], Any] | str,
        *,
        frequencies: Mapping[str, Any],
        tables: Mapping[str, str] | None = None,
        validation_data: Any = None,
        fit_kwargs: Mapping[str, Any] | None = None,
        reference_fit_kwargs: Mapping[str, Any] | None = None,
        final_fit_kwargs: Mapping[str, Any] | None = None,
        reference: bool | Feedback = True,
        seed: int = 0,
        reference_directory: str | os.PathLike[str] | None = None,
        verbose: int | None = None,
    ) -> None:
        self._verbose = None if verbose is None else _checked_verbose(verbose)
        self._default_verbose = 0
        if not callable(build_model) or hasattr(build_model, "weights"):
            raise TypeError(
                "`build_model` must be a zero-argument function returning a new compiled model "
                f"(not the model itself). Received: {type(build_model).__name__}"
            )
        if not (isinstance(train_data, tf.data.Dataset) or callable(train_data)):
            raise TypeError(
                "`train_data` must be a tf.data.Dataset of training batches or a function "
                "returning one (wrap arrays with tf.data.Dataset.from_tensor_slices((x, y))"
                f".batch(b)). Received: {type(train_data).__name__}"
            )
        if isinstance(evaluate, str):
            if validation_data is None:
                raise ValueError(
                    f"`evaluate`={evaluate!r} names a metric of model.evaluate, which needs "
                    "`validation_data` (a dataset or a function returning one)."
                )
            if "loss" in evaluate:
                raise ValueError(
                    f"`evaluate` must name a metric where higher is better; a loss is not one. "
                    f"Received: evaluate={evaluate!r}. Pass a function returning a quality."
                )
        elif not callable(evaluate):
            raise TypeError(
                "`evaluate` must be a function model -> quality or the name of a metric of "
                f"model.evaluate. Received: {type(evaluate).__name__}"
            )
        check_reference_arguments(seed, reference)
        self._build_model = build_model
        self._train_data = train_data
        self._evaluate_arg = evaluate
        self._validation_data = validation_data
        self.fit_kwargs = _checked_fit_kwargs("fit_kwargs", fit_kwargs)
        self.reference_fit_kwargs = (
            self.fit_kwargs
            if reference_fit_kwargs is None
            else _checked_fit_kwargs("reference_fit_kwargs", reference_fit_kwargs)
        )
        self.final_fit_kwargs = (
            self.reference_fit_kwargs
            if final_fit_kwargs is None
            else _checked_fit_kwargs("final_fit_kwargs", final_fit_kwargs)
        )
        self._want_reference = reference is True
        self._reference: Feedback | None = reference if isinstance(reference, Feedback) else None
        self.seed = int(seed)
        self._steps_done = 0
        self._snapshot: list[np.ndarray] | None = None
        self._reference_weights: list[np.ndarray] | None = None
        self._directory: str | None = None
        self._reference_dir = (
            None if reference_directory is None else os.fspath(reference_directory)
        )
        self._batches_per_epoch: int | None = None
        self._optimizer_state: list[np.ndarray] | None = None
        self._seed_everything(self.seed)
        self._model = self._new_model()
        self.tables = dict(tables) if tables is not None else infer_tables(self._model)
        rows = side_rows(self._model, self.tables)
        self.num_users, self.num_items = rows["user"], rows["item"]
        freq = checked_frequencies(frequencies, rows, self.tables)
        self.user_frequencies, self.item_frequencies = freq["user"], freq["item"]
        widths = {layer.output_dim for layer in find_searchable_layers(self._model).values()}
        if len(widths) != 1:
            raise ValueError(
                f"The searchable layers have different widths {sorted(widths)}; a search sizes "
                "tables of one full width d_max."
            )
        self.d_max = int(widths.pop())

    # Model plumbing ----------------------------------------------------------------------
    @property
    def model(self) -> Any:
        """The model of the last step (a new one after every ``"scratch"`` step)."""
        return self._model

    @property
    def verbose(self) -> int:
        """The verbosity in use: the constructor's, else the search loop's (0 by default)."""
        return self._default_verbose if self._verbose is None else self._verbose

    def set_default_verbose(self, verbose: int) -> None:
        """The verbosity to use when the constructor's ``verbose`` is None (`run` sets it)."""
        self._default_verbose = _checked_verbose(verbose)

    def _announce(self, message: str, *args: Any) -> None:
        """One progress line: on standard output (next to Keras's bars) when verbose, else INFO."""
        if self.verbose > 0:
            sys.stdout.write((message % args if args else message) + "\n")
            sys.stdout.flush()
            logger.debug(message, *args)
        else:
            logger.info(message, *args)

    @staticmethod
    def _seed_everything(seed: int) -> None:
        keras.utils.set_random_seed(int(seed) % (2**31 - 1))

    def _dataset(self, data: Any, what: str) -> tf.data.Dataset:
        ds = data if isinstance(data, tf.data.Dataset) else data()
        if not isinstance(ds, tf.data.Dataset):
            raise TypeError(
                f"`{what}` must be a tf.data.Dataset or a function returning one; the function "
                f"returned {type(ds).__name__}."
            )
        return ds

    def _new_model(self) -> Any:
        """``build_model()``, checked, with every variable and the optimizer created."""
        model = self._build_model()
        if not isinstance(model, keras.Model):
            raise TypeError(
                f"`build_model` must return a Keras model. It returned: {type(model).__name__}"
            )
        optimizer = getattr(model, "optimizer", None)
        if optimizer is None:
            raise TypeError(
                f"`build_model` returned the model {model.name!r} without an optimizer: call "
                "model.compile(optimizer=..., loss=...) before returning it."
            )
        _build_searchable(model)
        if not find_searchable_layers(model):
            raise ValueError(
                f"The model {model.name!r} has no searchable embedding layers (e.g. tfembsize."
                "layers.MaskedEmbedding in place of keras.layers.Embedding); nothing to size."
            )
        if not all(layer.built for layer in iter_layers(model)):
            # Layers created at their first call (towers without an Input): one forward pass
            # of the model's own test step creates them, with no training.
            model.evaluate(self._dataset(self._train_data, "train_data").take(1), verbose=0)
        if hasattr(optimizer, "build"):
            if not (getattr(optimizer, "built", False) or getattr(optimizer, "_built", False)):
                optimizer.build(model.trainable_variables)
            self._optimizer_state = [
                np.array(v.numpy(), copy=True) for v in _optimizer_variables(optimizer)
            ]
        else:
            self._optimizer_state = None  # rebuilt before every step instead (`_fresh_start`)
        return model

    def _check_same_layout(self, model: Any) -> None:
        layers = set(find_searchable_layers(model))
        if layers != set(self.tables):
            raise ValueError(
                f"`build_model` returned searchable layers {sorted(layers)}, but the first model "
                f"had {sorted(self.tables)}; give the layers fixed names."
            )

    def _fresh_model(self) -> None:
        model = self._new_model()
        self._check_same_layout(model)
        self._model = model

    def _reset_optimizer(self) -> None:
        """Puts the optimizer back in the state ``compile`` gave it."""
        if self._optimizer_state is None:  # an optimizer without build(): a new model
            weights = get_weights(self._model)
            self._fresh_model()
            assign_weights(self._model, weights)
            return
        variables = _optimizer_variables(self._model.optimizer)
        for var, value in zip(variables, self._optimizer_state, strict=True):
            var.assign(value)

    # Protocol -----------------------------------------------------------------------------
    def observation(self) -> Observation:
        """The problem; trains the reference model first if it is needed and missing."""
        return Observation(
            tables=self.tables,
            user_frequencies=self.user_frequencies,
            item_frequencies=self.item_frequencies,
            d_max=self.d_max,
            reference=self.reference(),
        )

    def full_plan(self) -> SizePlan:
        """Every row at full width."""
        rows = {"user": self.num_users, "item": self.num_items}
        return SizePlan(
            {name: np.full(rows[side], self.d_max, np.int32) for name, side in self.tables.items()}
        )

    def reference(self) -> Feedback | None:
        """The full-size model's validation feedback, trained on first use and cached."""
        if self._reference_known():
            return self._reference
        t0 = time.perf_counter()
        self._seed_everything(self.seed - 1)
        self._fresh_model()
        self.full_plan().apply(self._model)
        # With a directory, every finished epoch is saved: a killed process resumes there.
        checkpoint = self._reference_checkpoint()
        self._announce(
            "Pretraining the full-size reference model: %s epoch(s) of fit.",
            self.reference_fit_kwargs.get("epochs", 1),
        )
        steps, loss, message = self._fit(self.reference_fit_kwargs, checkpoint=checkpoint)
        trained = time.perf_counter() - t0
        if message:
            raise FloatingPointError(
                f"Training the full-size reference model diverged ({message}); lower the "
                "learning rate or check the data."
            )
        feedback = self._feedback(
            reference=None,
            usable_params=_usable_params(self._model),
            wall_time=time.perf_counter() - t0,
            train_steps=steps,
            loss=loss,
        )
        if not feedback.ok:
            raise FloatingPointError(
                f"The full-size reference model cannot be a denominator: {feedback.message}"
            )
        self._reference = feedback
        self._reference_weights = get_weights(self._model)
        if self._snapshot is None:
            self._snapshot = self._reference_weights
        for directory in self._reference_directories():
            self._save_reference(directory)
        if checkpoint is not None:
            shutil.rmtree(checkpoint.directory, ignore_errors=True)  # the reference replaces it
        self._announce(
            "Pretrained the reference model in %.1fs (training %.1fs, evaluation %.1fs): "
            "validation quality %.5f.",
            time.perf_counter() - t0,
            trained,
            time.perf_counter() - t0 - trained,
            feedback.quality,
        )
        return self._reference

    def _reference_checkpoint(self) -> EpochCheckpoint | None:
        """Where the reference pretraining saves its epochs (None: no directory known)."""
        directories = self._reference_directories()
        if not directories:
            return None
        return EpochCheckpoint(os.path.join(directories[0], "pretraining"), seed=self.seed)

    def step(
        self,
        plan: SizePlan,
        mode: str = "scratch",
        *,
        train_steps: int | None = None,
        train_epochs: float | None = None,
        phase: str = "search",
    ) -> Feedback:
        """Applies ``plan``, trains with ``model.fit`` from the start ``mode`` names, evaluates.

        Args:
            plan: sizes for the searchable layers (every layer must be named).
            mode: ``"scratch"``, ``"snapshot"`` or ``"continue"``.
            train_steps: train exactly this many batches.
            train_epochs: train this many passes over ``train_data``.
            phase: ``"search"`` uses ``fit_kwargs``; ``"final"`` uses ``final_fit_kwargs``.

        Returns:
            The `Feedback`; failed if the loss, the weights or the quality are not finite.
        """
        if mode not in MODES:
            raise ValueError(f"`mode` must be one of {MODES}. Received: mode={mode!r}")
        if phase not in ("search", "final"):
            raise ValueError(f"`phase` must be 'search' or 'final'. Received: phase={phase!r}")
        if not isinstance(plan, SizePlan):
            raise TypeError(f"`plan` must be a SizePlan. Received: {type(plan).__name__}")
        missing = sorted(set(self.tables) - set(plan))
        if missing:
            raise ValueError(f"`plan` has no sizes for searchable layers {missing}.")
        if train_steps is not None and train_epochs is not None:
            raise ValueError(
                "Pass at most one of `train_steps` and `train_epochs`. Received: "
                f"train_steps={train_steps}, train_epochs={train_epochs}"
            )
        reference = self.reference()
        t0 = time.perf_counter()
        self._seed_everything(self.seed + 1 + self._steps_done)
        if mode == "scratch":
            self._fresh_model()
        elif mode == "snapshot":
            self.restore()
        plan.apply(self._model)
        usable = _usable_params(self._model)
        kwargs = self.final_fit_kwargs if phase == "final" else self.fit_kwargs
        what = "Retraining" if phase == "final" else "Search step"
        what = f"{what} {self._steps_done + 1} ({mode}, {usable:,} usable parameters)"
        steps, loss, message = self._fit(kwargs, train_steps=train_steps, train_epochs=train_epochs)
        self._steps_done += 1
        wall = time.perf_counter() - t0
        if message:
            self._announce("%s failed after %.1fs: %s.", what, wall, message)
            return Feedback.failed(
                f"{message} (mode={mode!r}, {usable} usable parameters, {steps} steps).",
                usable_params=usable,
                wall_time=wall,
                mode=mode,
                train_steps=steps,
                info={"phase": phase},
            )
        feedback = self._feedback(
            reference=reference,
            usable_params=usable,
            wall_time=time.perf_counter() - t0,
            mode=mode,
            train_steps=steps,
            loss=loss,
            info={"phase": phase},
        )
        self._announce(
            "%s: trained %d batches in %.1fs, evaluated in %.1fs: quality %.5f.",
            what,
            steps,
            wall,
            time.perf_counter() - t0 - wall,
            feedback.quality,
        )
        return feedback

    def evaluate(self) -> Feedback:
        """Evaluates the current model without training."""
        return self._feedback(reference=self._reference, usable_params=_usable_params(self._model))

    # Training and evaluation --------------------------------------------------------------
    def _epoch_batches(self, ds: tf.data.Dataset, kwargs: Mapping[str, Any]) -> int:
        if kwargs.get("steps_per_epoch"):
            return int(kwargs["steps_per_epoch"])
        if self._batches_per_epoch is None:
            n = int(ds.cardinality())
            if n == int(tf.data.INFINITE_CARDINALITY):
                raise ValueError(
                    "`train_data` repeats forever, so an epoch has no length: set "
                    "fit_kwargs={'steps_per_epoch': n, ...}."
                )
            if n == int(tf.data.UNKNOWN_CARDINALITY):
                n = int(ds.reduce(np.int64(0), lambda count, _: count + 1))
            self._batches_per_epoch = max(1, n)
        return self._batches_per_epoch

    def _fit(
        self,
        kwargs: Mapping[str, Any],
        *,
        train_steps: int | None = None,
        train_epochs: float | None = None,
        checkpoint: EpochCheckpoint | None = None,
    ) -> tuple[int, float | None, str]:
        """Trains with ``model.fit``; returns (optimizer steps, last loss, failure message).

        With a ``checkpoint`` (whole epochs only), the fit continues after the epochs it
        saved and saves every epoch it finishes.
        """
        self._reset_optimizer()
        ds = self._dataset(self._train_data, "train_data")
        kw = dict(kwargs)
        kw.setdefault("verbose", self.verbose)
        kw.setdefault("shuffle", False)  # fit never shuffles a dataset (Keras 3 warns if asked)
        callbacks = [*list(kw.pop("callbacks", None) or []), keras.callbacks.TerminateOnNaN()]
        if checkpoint is not None and train_steps is None and train_epochs is None:
            done = checkpoint.restore(self._model)
            if done:
                kw["initial_epoch"] = max(done, int(kw.get("initial_epoch", 0)))
                self._announce("Resuming the fit after epoch %d of %s.", done, kw.get("epochs", 1))
            callbacks.insert(0, checkpoint)  # first: an epoch is saved before anything stops
        if train_epochs is not None:
            epochs = float(train_epochs)
            if epochs == int(epochs) and "steps_per_epoch" not in kw:
                kw["epochs"] = int(epochs)
            else:
                train_steps = max(1, math.ceil(epochs * self._epoch_batches(ds, kw)))
        if train_steps is not None:
            ds = ds.repeat()
            kw.pop("initial_epoch", None)
            kw.update(epochs=1, steps_per_epoch=int(train_steps))
        history = self._model.fit(ds, callbacks=callbacks, **kw)
        steps = int(self._model.optimizer.iterations.numpy())
        losses = [float(x) for x in (getattr(history, "history", {}) or {}).get("loss", [])]
        loss = losses[-1] if losses else None
        if loss is not None and not math.isfinite(loss):
            return steps, None, f"Training diverged: the loss is {loss}"
        if not weights_finite(self._model):
            return steps, None, "Training diverged: the weights are not finite"
        return steps, loss, ""

    def _quality(self) -> Any:
        if isinstance(self._evaluate_arg, str):
            ds = self._dataset(self._validation_data, "validation_data")
            results = self._model.evaluate(ds, return_dict=True, verbose=self.verbose)
            if self._evaluate_arg not in results:
                raise ValueError(
                    f"`evaluate`={self._evaluate_arg!r} is not a metric of model.evaluate; it "
                    f"reports {sorted(results)}."
                )
            metrics = {k: float(v) for k, v in results.items() if np.ndim(v) == 0}
            return {"quality": results[self._evaluate_arg], "metrics": metrics}
        return self._evaluate_arg(self._model)

    def _feedback(self, *, reference: Feedback | None, **fields: Any) -> Feedback:
        return feedback_from_evaluation(
            self._quality(),
            num_users=self.num_users,
            num_items=self.num_items,
            reference=reference,
            **fields,
        )

    def __repr__(self) -> str:
        ref = "none" if self._reference is None else f"{self._reference.quality:.4f}"
        return (
            f"FitEnvironment(tables={self.tables}, rows=({self.num_users}, {self.num_items}), "
            f"d_max={self.d_max}, steps_done={self._steps_done}, reference_quality={ref})"
        )
