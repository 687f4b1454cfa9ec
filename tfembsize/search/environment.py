"""Search environments: the protocol the search loop talks to, and `KerasEnvironment`.

The environment protocol
------------------------
A controller never sees the recommender. The search loop (`tfembsize.search.run`) hands the
controller's decisions to an *environment*, which owns the model, the data and the training
recipe. Anything with these four methods is an environment (`Environment`, a
``typing.Protocol``; no base class needed):

``observation() -> Observation``
    The fixed facts of the problem: which searchable tables embed users and which items
    (``{"user_embedding": "user", "item_embedding": "item"}``), training frequencies of users
    and items, the full width ``d_max`` and, if the environment has one, the feedback of the
    full-size reference model (``reference``). The loop fills in the iteration, the current
    plan and the last feedback from its history.

``step(plan, mode="scratch", *, train_steps=None, train_epochs=None, phase="search") -> Feedback``
    Applies the `SizePlan` to the model's searchable layers, trains, evaluates on the
    validation split and returns a `Feedback`. The loop passes a decision's
    ``train_steps`` / ``train_epochs`` (a fixed length; an epoch is ceil(|train| / batch)
    steps of the environment's recipe) and a non-default ``phase`` (``"final"``: a full
    training of a result candidate) as keywords. ``mode`` says where training starts:

    * ``"scratch"``: from a fresh random initialisation (CIESS: a new backbone per step);
    * ``"snapshot"``: from the weights stored by the last `snapshot` (BET: the pretrained
      full model, restored before every step);
    * ``"continue"``: from the current weights (streaming methods such as ESAPN).

    A step whose training diverges must return ``Feedback.failed(message)`` (status
    ``"failed"``, NaN quality) instead of numbers computed from garbage weights.

``snapshot()`` / ``restore()``
    Copy the current weights into memory / copy them back.

Environments that also implement `StatefulEnvironment` (``attach(directory)``,
``save_state(directory)``, ``load_state(directory)``) are persisted by the loop after every
step, so a resumed search continues exactly where it stopped; ``attach`` gives the
environment a directory for files that do not change between steps (such as the pretrained
reference model).

A model of one's own trained with its ``compile``/``fit`` (a functional Keras model, a TFRS
model) is searched by `tfembsize.search.FitEnvironment`. A custom training loop (a
``tf.GradientTape`` loop, a multi-task ranker, a JAX port of the data pipeline) plugs in by
writing a small class with these methods; ``KerasEnvironment`` is the implementation for the
library's BPR backbones, on top of `tfembsize.models.train_bpr` and
`tfembsize.metrics.RankingEvaluator`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol, runtime_checkable

import numpy as np

from tfembsize.layers.utils import find_searchable_layers, iter_layers, model_usage
from tfembsize.plan import SizePlan
from tfembsize.records import MODES, Feedback, Observation
from tfembsize.search._reference import ReferenceStore, check_reference_arguments
from tfembsize.training.outcome import Outcome
from tfembsize.training.plan_training import accepts_keyword, model_scorer, train_plan
from tfembsize.training.weights import assign_weights, get_weights

__all__ = [
    "Environment",
    "StatefulEnvironment",
    "KerasEnvironment",
    "feedback_from_ranking",
    "infer_tables",
    "model_scorer",
]

logger = logging.getLogger(__name__)


@runtime_checkable
class Environment(Protocol):
    """What the search loop needs from an environment (see the module docstring)."""

    def observation(self) -> Observation:
        """The problem: table layout, frequencies, ``d_max`` and the reference feedback."""
        ...

    def step(self, plan: SizePlan, mode: str = "scratch", **kwargs: Any) -> Feedback:
        """Applies ``plan``, trains from the start ``mode`` names, evaluates on validation."""
        ...

    def snapshot(self) -> None:
        """Stores the current weights in memory."""
        ...

    def restore(self) -> None:
        """Restores the weights stored by `snapshot`."""
        ...


@runtime_checkable
class StatefulEnvironment(Environment, Protocol):
    """An environment the loop can persist and resume."""

    def attach(self, directory: str) -> None:
        """Uses ``directory`` for files that outlive a step (e.g. the reference model)."""
        ...

    def save_state(self, directory: str) -> None:
        """Writes the run state (weights, counters) into ``directory``."""
        ...

    def load_state(self, directory: str) -> None:
        """Reads a state written by `save_state`."""
        ...


# Helpers -----------------------------------------------------------------------------------
def infer_tables(model: Any) -> dict[str, str]:
    """Maps each searchable layer of ``model`` to ``"user"`` or ``"item"``.

    The backbones' attributes decide first (``user_embedding``, ``user_embedding_mlp``,
    ``item_embedding``, ``item_embedding_mlp``); otherwise the layer name must contain
    ``"user"`` or ``"item"``.

    Raises:
        ValueError: a searchable layer whose side cannot be told.
    """
    layers = find_searchable_layers(model)
    by_id = {id(layer): name for name, layer in layers.items()}
    tables: dict[str, str] = {}
    for side in ("user", "item"):
        for attr in (f"{side}_embedding", f"{side}_embedding_mlp"):
            layer = getattr(model, attr, None)
            if layer is not None and id(layer) in by_id:
                tables[by_id[id(layer)]] = side
    for name in layers:
        if name in tables:
            continue
        lowered = name.lower()
        if "user" in lowered and "item" not in lowered:
            tables[name] = "user"
        elif "item" in lowered and "user" not in lowered:
            tables[name] = "item"
        else:
            raise ValueError(
                f"Cannot tell whether searchable layer {name!r} embeds users or items; pass "
                "`tables={'<layer name>': 'user' | 'item', ...}`."
            )
    if not tables:
        raise ValueError(
            "The model has no searchable embedding layers (e.g. tfembsize.layers."
            "MaskedEmbedding); there is nothing to size."
        )
    return tables


def _ranking_metrics(result: Any, ks: tuple[int, ...]) -> dict[str, float]:
    out = {}
    for k in ks:
        try:
            out[f"recall@{k}"] = float(result.recall_at(k))
            out[f"ndcg@{k}"] = float(result.ndcg_at(k))
        except (KeyError, ValueError):
            continue
    return out


def feedback_from_ranking(
    result: Any,
    *,
    reference: Feedback | None = None,
    usable_params: int = 0,
    wall_time: float = 0.0,
    mode: str | None = None,
    train_steps: int | None = None,
    best_step: int | None = None,
    loss: float | None = None,
    info: Mapping[str, Any] | None = None,
) -> Feedback:
    """Builds a `Feedback` from a `tfembsize.metrics.RankingResult`.

    With a ``reference``, adds ``quality_ratio = quality / reference.quality`` and the
    per-entity ratios ``q_n = min(Q_n / max(Q_n_ref, 1e-5), 1)``, the
    quality-ratio feature and reward of CIESS (Qu et al., SIGIR 2023).
    """
    ks = tuple(sorted(getattr(result, "ks", None) or getattr(result, "recall", {}).keys()))
    feedback = Feedback(
        quality=float(result.quality),
        user_quality=np.asarray(result.user_quality, np.float32),
        item_quality=np.asarray(result.item_quality, np.float32),
        usable_params=usable_params,
        wall_time=wall_time,
        metrics=_ranking_metrics(result, ks),
        mode=mode,
        train_steps=train_steps,
        best_step=best_step,
        loss=loss,
        info=info or {},
    )
    return feedback.with_reference(reference)


def _all_finite(model: Any) -> bool:
    for v in model.trainable_weights:
        w = v.numpy()
        if w.dtype.kind == "f" and not np.all(np.isfinite(w)):
            return False
    return True


def _usable_params(model: Any) -> int:
    return model_usage(model)[0]


def _has_index_lookup(model: Any) -> bool:
    from tfembsize._keras import keras

    lookups = (keras.layers.StringLookup, keras.layers.IntegerLookup)
    return any(isinstance(layer, lookups) for layer in iter_layers(model))


def _build_searchable(model: Any) -> None:
    for layer in find_searchable_layers(model).values():
        if not layer.built:
            layer.sizes  # noqa: B018  (builds the layer's variables)


# KerasEnvironment --------------------------------------------------------------------------
class KerasEnvironment(ReferenceStore):
    """The reference search environment for Keras recommenders trained with BPR.

    ``step(plan, mode)`` applies a `SizePlan` to the model's searchable layers, trains with
    ``train_fn`` (default `tfembsize.models.train_bpr`) from a fresh initialisation
    (``"scratch"``), from the stored snapshot (``"snapshot"``) or from the current weights
    (``"continue"``), evaluates on the validation split and returns a `Feedback` whose
    ratios compare with the full-size reference model.

    The reference model is the model with every row at full width, trained once with
    ``reference_config`` (early stopping on validation). Its validation feedback gives
    ``Q_full`` and the per-entity ``Q_n_full`` (the denominators of the ratios), and its
    weights become the snapshot that ``"snapshot"`` steps restore (BET's θ⁰). When the loop
    attaches a directory, the reference weights and feedback are stored there, so a resumed
    search does not pretrain again.

    Args:
        model: a Keras model with searchable embedding layers, or a zero-argument callable
            building one (needed for truly fresh ``"scratch"`` steps; with a model instance,
            ``"scratch"`` resets to the weights the model had when the environment was made).
        split: a `tfembsize.data.Split`.
        evaluator: a `tfembsize.metrics.RankingEvaluator` for ``split`` (default: one with
            k in {5, 10, 20}).
        train_config: recipe of a search step (a `tfembsize.models.TrainConfig`; None: the
            backbone's default, trained to convergence with validation early stopping). A
            decision's ``train_steps`` / ``train_epochs`` turn it into a fixed-length run
            (one validation evaluation at the end).
        reference_config: recipe of the reference pretraining (None: the backbone's default,
            early stopping on validation).
        final_config: recipe of ``phase="final"`` steps, full trainings of result candidates
            (default ``reference_config``).
        reference: True to pretrain the full-size reference lazily (the first time it is
            needed), False for none (no ratios; ``"snapshot"`` then needs an explicit
            `snapshot`), or a `Feedback` to use as the reference as it is.
        tables: layer name -> ``"user"`` / ``"item"``; inferred by `infer_tables` if None.
        train_fn: ``train_fn(model, split, evaluator, config=...) -> TrainResult``.
        seed: base seed; step ``t`` seeds Keras/TF/NumPy with ``seed + t`` before building and
            training, so a resumed search repeats the same steps.
        reference_directory: where the pretrained reference (weights and feedback) is read
            from and written to, besides the directory the search loop attaches; share it
            between searches on the same data, backbone and seed to pretrain only once.
            When a directory is known and ``train_fn`` takes ``checkpoint_dir`` (as
            `train_bpr` does), the pretraining checkpoints in ``<directory>/pretraining``
            after every validation chunk and a killed process resumes it there.
        strategy: a ``tf.distribute`` strategy (e.g. ``MirroredStrategy``): the builder runs
            and every training runs inside its ``scope()`` (a model instance must have been
            built there). None: no strategy. See docs/distribute.md.

    Example:
        >>> env = KerasEnvironment(lambda: MF(...), split, RankingEvaluator(split),
        ...                        train_config=TrainConfig(max_steps=2000))  # doctest: +SKIP
        >>> fb = env.step(plan, mode="snapshot")  # doctest: +SKIP
        >>> fb.quality_ratio  # doctest: +SKIP
        0.93
    """

    _STATE_FORMAT = "tfembsize.KerasEnvironment"

    def __init__(
        self,
        model: Any,
        split: Any,
        evaluator: Any = None,
        *,
        train_config: Any = None,
        reference_config: Any = None,
        final_config: Any = None,
        reference: bool | Feedback = True,
        tables: Mapping[str, str] | None = None,
        train_fn: Callable[..., Any] | None = None,
        seed: int = 0,
        reference_directory: str | os.PathLike[str] | None = None,
        strategy: Any = None,
    ) -> None:
        if strategy is not None and not callable(getattr(strategy, "scope", None)):
            raise TypeError(f"`strategy` must be a tf.distribute.Strategy. Received: {strategy!r}")
        self.strategy = strategy
        if callable(model) and not hasattr(model, "weights"):
            self._builder: Callable[[], Any] | None = model
            self._model = None
        elif hasattr(model, "weights"):
            self._builder = None
            self._model = model
        else:
            raise TypeError(
                "`model` must be a Keras model or a zero-argument callable returning one. "
                f"Received: {type(model).__name__}"
            )
        if not hasattr(split, "train") or not hasattr(split, "validation"):
            raise TypeError(
                f"`split` must be a tfembsize.data.Split. Received: {type(split).__name__}"
            )
        check_reference_arguments(seed, reference)
        self.split = split
        if evaluator is None:
            from tfembsize.metrics import RankingEvaluator

            evaluator = RankingEvaluator(split)
        self.evaluator = evaluator
        self.train_config = train_config
        self.reference_config = reference_config
        self.final_config = final_config if final_config is not None else reference_config
        self._want_reference = reference is True
        self._reference: Feedback | None = reference if isinstance(reference, Feedback) else None
        self._uses_train_bpr = train_fn is None
        if train_fn is None:
            from tfembsize.models import train_bpr

            train_fn = train_bpr
        self.train_fn = train_fn
        self.seed = int(seed)
        self._steps_done = 0
        self._snapshot: list[np.ndarray] | None = None
        self._initial: list[np.ndarray] | None = None
        self._directory: str | None = None
        self._reference_dir = (
            None if reference_directory is None else os.fspath(reference_directory)
        )
        self._reference_weights: list[np.ndarray] | None = None
        self._tables_arg = dict(tables) if tables is not None else None
        if self._model is None and self._builder is not None:  # built from a builder
            self._seed_everything(self.seed)
            with self._scope():
                self._model = self._builder()
        self._prepare_model(self._model)
        if self._builder is None:
            self._initial = get_weights(self._model)
        if self._uses_train_bpr and not callable(getattr(self._model, "train_batch", None)):
            raise TypeError(
                "KerasEnvironment trains the library's BPR backbones (MF, NCF, NGCF, LightGCN, "
                "TwoTowerRetrieval) or models with `train_batch`; "
                f"{type(self._model).__name__} has none. To search a model of your own "
                "trained with its compile() and fit(), use tfembsize.search.FitEnvironment."
            )
        self.tables = self._validated_tables()
        self.d_max = self._common_width()

    # Model plumbing ----------------------------------------------------------------------
    @property
    def model(self) -> Any:
        """The model being searched (replaced by a new one on every ``"scratch"`` step)."""
        return self._model

    def _prepare_model(self, model: Any) -> None:
        _build_searchable(model)
        if not find_searchable_layers(model):
            raise ValueError(
                "The model has no searchable embedding layers (e.g. tfembsize.layers."
                "MaskedEmbedding); there is nothing to size."
            )

    def _validated_tables(self) -> dict[str, str]:
        tables = self._tables_arg or infer_tables(self._model)
        layers = find_searchable_layers(self._model)
        for name, side in tables.items():
            if name not in layers:
                raise ValueError(
                    f"`tables` names {name!r}, which is not a searchable layer of the model "
                    f"({sorted(layers)})."
                )
            expected = self.split.num_users if side == "user" else self.split.num_items
            if layers[name].input_dim != expected:
                hint = (
                    " KerasEnvironment feeds the split's ids to the tables as rows; a model "
                    "whose ids go through a StringLookup/IntegerLookup (whose mask and "
                    "out-of-vocabulary rows are rows of the table) is searched with "
                    "tfembsize.search.FitEnvironment, which counts every table row."
                    if _has_index_lookup(self._model)
                    else ""
                )
                raise ValueError(
                    f"Layer {name!r} embeds {side}s but has input_dim={layers[name].input_dim}; "
                    f"the split has {expected} {side}s.{hint}"
                )
        missing = sorted(set(layers) - set(tables))
        if missing:
            raise ValueError(f"`tables` leaves out searchable layers {missing}.")
        return dict(tables)

    def _common_width(self) -> int:
        widths = {layer.output_dim for layer in find_searchable_layers(self._model).values()}
        if len(widths) != 1:
            raise ValueError(f"The searchable layers have different widths {sorted(widths)}.")
        return int(widths.pop())

    def _seed_everything(self, seed: int) -> None:
        from tfembsize._keras import keras

        keras.utils.set_random_seed(int(seed) % (2**31 - 1))

    def _fresh_model(self) -> None:
        if self._builder is not None:
            with self._scope():
                model = self._builder()
            self._prepare_model(model)
            layers = set(find_searchable_layers(model))
            if layers != set(self.tables):
                raise ValueError(
                    f"The model builder returned searchable layers {sorted(layers)}, but the "
                    f"first model had {sorted(self.tables)}; give the layers fixed names."
                )
            self._model = model
        else:
            assert self._initial is not None  # kept in __init__ for a model instance
            assign_weights(self._model, self._initial)

    # Protocol -----------------------------------------------------------------------------
    def observation(self) -> Observation:
        """The problem; pretrains the reference model first if it is needed and missing."""
        return Observation(
            tables=self.tables,
            user_frequencies=np.asarray(self.split.user_frequencies, np.int64),
            item_frequencies=np.asarray(self.split.item_frequencies, np.int64),
            d_max=self.d_max,
            reference=self.reference(),
        )

    def full_plan(self) -> SizePlan:
        """Every row at full width."""
        return SizePlan(
            {
                name: np.full(layer.input_dim, self.d_max, np.int32)
                for name, layer in find_searchable_layers(self._model).items()
            }
        )

    def reference(self) -> Feedback | None:
        """The full-size model's validation feedback, trained on first use and cached."""
        if self._reference_known():
            return self._reference
        logger.info("Pretraining the full-size reference model.")
        t0 = time.perf_counter()
        self._seed_everything(self.seed - 1)
        self._fresh_model()
        self.full_plan().apply(self._model)
        # With a reference directory the pretraining is checkpointed after every validation
        # chunk, so a killed process resumes it instead of starting over (hours on Gowalla).
        checkpoint = self._pretraining_checkpoint()
        train = self._train(self.reference_config, seed=self.seed, checkpoint_dir=checkpoint)
        if not train.finite:
            raise FloatingPointError(
                f"Pretraining the full-size reference model diverged ({train.message}); "
                "lower the learning rate of `reference_config`."
            )
        self._reference = feedback_from_ranking(
            train.validation,
            usable_params=_usable_params(self._model),
            wall_time=train.wall_time if train.wall_time is not None else time.perf_counter() - t0,
            train_steps=train.steps,
            best_step=train.best_step,
            loss=train.loss,
        )
        self._reference_weights = get_weights(self._model)
        if self._snapshot is None:
            self._snapshot = self._reference_weights
        for directory in self._reference_directories():
            self._save_reference(directory)
        if checkpoint is not None:
            shutil.rmtree(checkpoint, ignore_errors=True)  # the reference files replace it
        logger.info("Reference model: validation quality %.5f.", self._reference.quality)
        return self._reference

    def step(
        self,
        plan: SizePlan,
        mode: str = "scratch",
        *,
        train_steps: int | None = None,
        train_epochs: float | None = None,
        phase: str = "search",
    ) -> Feedback:
        """Applies ``plan``, trains from the start ``mode`` names, evaluates on validation.

        Args:
            plan: sizes for the searchable layers (every layer must be named).
            mode: ``"scratch"``, ``"snapshot"`` or ``"continue"``.
            train_steps: train exactly this many steps (one evaluation at the end).
            train_epochs: the same in passes over the training interactions
                (``ceil(|train| / batch_size)`` steps each).
            phase: ``"search"`` uses ``train_config``; ``"final"`` (a full training of a
                result candidate) uses ``final_config``.

        Returns:
            The `Feedback`; ``status="failed"`` if the loss or the weights became NaN.
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
        reference = self.reference()
        t0 = time.perf_counter()
        step_seed = self.seed + 1 + self._steps_done
        self._seed_everything(step_seed)
        if mode == "scratch":
            self._fresh_model()
        elif mode == "snapshot":
            self.restore()
        plan.apply(self._model)
        usable = _usable_params(self._model)
        config = self.final_config if phase == "final" else self.train_config
        train = self._train(
            config, train_steps=train_steps, train_epochs=train_epochs, seed=step_seed
        )
        self._steps_done += 1
        if not train.finite:
            return Feedback.failed(
                f"{train.message} (mode={mode!r}, {usable} usable parameters, "
                f"{train.steps} steps).",
                usable_params=usable,
                wall_time=time.perf_counter() - t0,
                mode=mode,
                train_steps=train.steps,
                info={"phase": phase},
            )
        return feedback_from_ranking(
            train.validation,
            reference=reference,
            usable_params=usable,
            wall_time=time.perf_counter() - t0,
            mode=mode,
            train_steps=train.steps,
            best_step=train.best_step,
            loss=train.loss,
            info={"phase": phase},
        )

    def evaluate(self, phase: str = "validation") -> Feedback:
        """Evaluates the current model without training (e.g. ``phase="test"`` at the end)."""
        result = self.evaluator.evaluate(model_scorer(self._model), phase=phase)
        return feedback_from_ranking(
            result, reference=self._reference, usable_params=_usable_params(self._model)
        )

    def _pretraining_checkpoint(self) -> str | None:
        """Where the reference pretraining checkpoints (None: no directory or no support)."""
        directories = self._reference_directories()
        if not directories or not accepts_keyword(self.train_fn, "checkpoint_dir"):
            return None
        return os.path.join(directories[0], "pretraining")

    def _train(
        self,
        config: Any,
        *,
        train_steps: int | None = None,
        train_epochs: float | None = None,
        seed: int | None = None,
        checkpoint_dir: str | None = None,
    ) -> Outcome:
        with self._scope():
            return train_plan(
                self._model,
                self.split,
                self.evaluator,
                config,
                train_fn=self.train_fn,
                train_steps=train_steps,
                train_epochs=train_epochs,
                seed=seed,
                checkpoint_dir=checkpoint_dir,
            )

    def _scope(self) -> Any:
        """The strategy's scope (a no-op context without a strategy)."""
        return contextlib.nullcontext() if self.strategy is None else self.strategy.scope()

    def __repr__(self) -> str:
        ref = "none" if self._reference is None else f"{self._reference.quality:.4f}"
        return (
            f"KerasEnvironment(tables={self.tables}, d_max={self.d_max}, "
            f"steps_done={self._steps_done}, reference_quality={ref})"
        )
