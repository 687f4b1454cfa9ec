"""What a protocol method sees and returns: `MethodContext`, `MethodOutput`, `Retrained`.

A method is ``fn(context: MethodContext) -> MethodOutput``. The context holds the cell (data,
backbone, target sparsity, seed, working directories, the method's settings) and the shared
retraining recipe (`MethodContext.retrain`: from scratch on train, early stopping on
validation, best weights restored), so every method is retrained and measured the same way.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tfembsize.budget import Budget
from tfembsize.layers.utils import model_usage
from tfembsize.plan import SizePlan
from tfembsize.protocol._json import jsonable
from tfembsize.protocol.registry import get_method
from tfembsize.protocol.settings import settings_from_options
from tfembsize.records import Feedback, Observation
from tfembsize.search.environment import feedback_from_ranking, infer_tables
from tfembsize.training.plan_training import resolve_config, train_plan

__all__ = ["MethodContext", "MethodOutput", "Retrained", "model_usage"]


@dataclass(frozen=True, eq=False)
class Retrained:
    """A model retrained under the protocol (train, early stopping on validation).

    Attributes:
        model: the trained model with its best weights restored.
        validation: validation `Feedback` of the restored weights.
        best_step: optimiser step of the best validation score.
        train_steps: optimiser steps run in all.
        wall_time: seconds spent training (evaluations included).
        usable_params: usable parameters of the model's tables.
        num_rows: rows of the model's tables (the N of the budget).
    """

    model: Any
    validation: Feedback
    best_step: int | None
    train_steps: int
    wall_time: float
    usable_params: int
    num_rows: int


@dataclass(frozen=True, eq=False)
class MethodOutput:
    """What a method returns.

    Attributes:
        plan: the sizes to retrain with (None with ``build_model``, or for the full model).
        build_model: a zero-argument callable building the model to retrain, for methods
            whose masks are not prefix sizes (PEP's lottery ticket); its tables' usable
            parameters are checked against the budget.
        retrained: a model the method already retrained under the protocol (e.g. the winner
            of BET's selective retraining); the runner then only evaluates it on test.
        info: JSON details for the results file (search time, candidates tried, ...).
    """

    plan: SizePlan | None = None
    build_model: Callable[[], Any] | None = None
    retrained: Retrained | None = None
    info: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.plan is not None and not isinstance(self.plan, SizePlan):
            raise TypeError(f"`plan` must be a SizePlan. Received {type(self.plan).__name__}.")
        if self.plan is not None and self.build_model is not None:
            raise ValueError("Give a `plan` or a `build_model`, not both.")
        if self.retrained is not None and not isinstance(self.retrained, Retrained):
            raise TypeError("`retrained` must be a Retrained (from MethodContext.retrain).")


@dataclass(frozen=True, eq=False)
class MethodContext:
    """Everything a method may use to produce its sizes for one cell.

    Attributes:
        dataset: dataset name (or directory).
        backbone: backbone name (``"mf"``, ``"ncf"``, ``"ngcf"``, ``"lightgcn"``).
        split: the `tfembsize.data.Split` (50/25/25, seed 42).
        evaluator: the shared `tfembsize.metrics.RankingEvaluator`.
        sparsity: the target sparsity, or None for unbudgeted methods.
        seed: the cell's seed (model initialisation, sampling, the method's own draws).
        d_max: full width.
        directory: a working directory kept across reruns (a search can resume there);
            created by whoever writes into it (large files such as pretrained weights go
            under ``out/work``, which is not meant to be committed).
        train_config: the shared retraining recipe (a `tfembsize.models.TrainConfig`).
        backbone_builder: ``builder(seed) -> model`` building the full-size backbone with
            searchable (`MaskedEmbedding`) tables (``seed=None``: under the current global
            random state).
        train_fn: ``train_fn(model, split, evaluator, config=...) -> TrainResult``.
        verbose: verbosity for methods that print progress.
        method: the method's registered name.
        sparsities: every target sparsity of the run (a method that searches several
            sparsities at once can run one search in `shared_directory` and answer each
            cell from it).
        root: the run's working root (``out/work``).
        options: the method's settings from `ProtocolConfig.method_options` (e.g. BET's
            ``search_iterations``); `settings` reads them into the method's registered
            settings dataclass. Methods record what they used in their ``info``.
    """

    dataset: str
    backbone: str
    split: Any
    evaluator: Any
    sparsity: float | None
    seed: int
    d_max: int
    directory: str
    train_config: Any
    backbone_builder: Callable[[int | None], Any]
    train_fn: Callable[..., Any]
    verbose: int = 0
    method: str = ""
    sparsities: tuple[float, ...] = ()
    root: str = ""
    options: Mapping[str, Any] = field(default_factory=dict)

    @property
    def shared_directory(self) -> str:
        """A directory shared by this method's cells of the same seed (all sparsities)."""
        return os.path.join(self.root or self.directory, f"{self.method}__shared__seed{self.seed}")

    @property
    def reference_directory(self) -> str:
        """Where the pretrained full-size model of this seed is kept (shared by methods)."""
        return os.path.join(self.root or self.directory, f"reference__seed{self.seed}")

    def environment(self, *, train_config: Any = None, **kwargs: Any) -> Any:
        """A `KerasEnvironment` on this cell's data and backbone, for search methods.

        The reference model is pretrained with the protocol's recipe once per seed (stored in
        `reference_directory`) and ``phase="final"`` steps use the same recipe.

        Args:
            train_config: recipe of a search step (None: the protocol's recipe).
            **kwargs: more `KerasEnvironment` arguments (override the defaults above).
        """
        from tfembsize.search.environment import KerasEnvironment

        options = {
            "train_config": train_config if train_config is not None else self.train_config,
            "reference_config": self.train_config,
            "final_config": self.train_config,
            "train_fn": self.train_fn,
            "seed": self.seed,
            "reference_directory": self.reference_directory,
        }
        options.update(kwargs)
        # The environment seeds every step itself; the builder must not reseed.
        return KerasEnvironment(
            lambda: self.backbone_builder(None), self.split, self.evaluator, **options
        )

    def settings(self, **defaults: Any) -> Any:
        """The method's registered settings dataclass, filled from `options`.

        Args:
            **defaults: defaults that depend on the cell (e.g. a per-backbone default), used
                for fields that `options` does not set.

        Returns:
            An instance of the settings class given to `register_method`.

        Raises:
            ValueError: the method registered no settings class, or an option is unknown or
                invalid (the message names it).
        """
        settings = get_method(self.method).settings
        if settings is None:
            raise ValueError(
                f"Method {self.method!r} registered no settings class; pass `settings=` to "
                "register_method."
            )
        return settings_from_options(settings, self.options, defaults=defaults)

    @property
    def budget(self) -> Budget | None:
        """B(c) for the cell's sparsity (None without one)."""
        return None if self.sparsity is None else Budget(sparsity=self.sparsity, d_max=self.d_max)

    def build_model(self, seed: int | None = None) -> Any:
        """A fresh full-size backbone (seeded with ``seed``, default the cell's seed)."""
        return self.backbone_builder(self.seed if seed is None else int(seed))

    def observation(self) -> Observation:
        """The `Observation` a controller needs (table layout, training frequencies, d_max)."""
        model = self.build_model()
        return Observation(
            tables=infer_tables(model),
            user_frequencies=np.asarray(self.split.user_frequencies, np.int64),
            item_frequencies=np.asarray(self.split.item_frequencies, np.int64),
            d_max=self.d_max,
        )

    def retrain(
        self,
        plan: SizePlan | None = None,
        *,
        build_model: Callable[[], Any] | None = None,
        seed: int | None = None,
    ) -> Retrained:
        """Trains from scratch under the protocol and returns the restored best model.

        Args:
            plan: sizes to apply to a fresh backbone (None: full size, or ``build_model``).
            build_model: builds the model instead of the backbone (e.g. PEP's pruned tables).
            seed: initialisation/sampling seed (default: the cell's seed).

        Returns:
            A `Retrained`.

        Raises:
            BudgetExceededError: the model's usable parameters exceed the cell's budget.
            FloatingPointError: training diverged (NaN loss or weights).
        """
        from tfembsize._keras import keras

        seed = self.seed if seed is None else int(seed)
        keras.utils.set_random_seed(seed)
        model = build_model() if build_model is not None else self.backbone_builder(seed)
        if plan is not None:
            plan.apply(model)
        config = resolve_config(self.train_config, model, self.split, seed=seed)
        checkpoint = None
        if self.directory:
            # A killed retraining resumes after its last validation chunk (`TrainCheckpoint`);
            # the key names this exact start (initial weights, sizes, recipe).
            key = _training_key(model, plan, config)
            checkpoint = os.path.join(self.directory, "training", key)
        t0 = time.perf_counter()
        train = train_plan(
            model,
            self.split,
            self.evaluator,
            config,
            budget=self.budget,
            budget_what="model to retrain",
            train_fn=self.train_fn,
            seed=seed,
            checkpoint_dir=checkpoint,
        )
        wall = time.perf_counter() - t0
        if not train.finite:
            raise FloatingPointError(
                f"Retraining diverged ({train.message}; {train.usable_params} usable "
                "parameters); lower the learning rate of the recipe."
            )
        validation = feedback_from_ranking(
            train.validation,
            usable_params=train.usable_params,
            wall_time=wall,
            mode="scratch",
            train_steps=train.steps,
            best_step=train.best_step,
            loss=train.loss,
        )
        return Retrained(
            model,
            validation,
            train.best_step,
            train.steps,
            wall,
            train.usable_params,
            train.num_rows,
        )


def _training_key(model: Any, plan: SizePlan | None, config: Any) -> str:
    """A short hash of a retraining's start: initial weights, sizes and recipe."""
    h = hashlib.sha1()
    for w in model.get_weights():
        arr = np.ascontiguousarray(w)
        h.update(str(arr.shape).encode())
        h.update(arr.tobytes())
    if plan is not None:
        h.update(json.dumps(plan.to_dict(), sort_keys=True, default=jsonable).encode())
    h.update(json.dumps(config.to_dict(), sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]
