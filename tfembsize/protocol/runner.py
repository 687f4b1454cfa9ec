"""The paper protocol: produce a plan per (method, sparsity, seed), retrain, report test.

For every method and sparsity (spec §1):

1. the method produces sizes (`MethodOutput`): a `SizePlan`, or a model builder for methods
   whose masks are not prefix sizes;
2. the budget B(c) = floor((1 - c) * d_max * N) is **asserted** on the plan and again on the
   retrained model's usable parameters (`BudgetExceededError` otherwise);
3. the model is retrained from scratch on train with validation early stopping (the shared
   recipe, `MethodContext.retrain`), restoring the best weights and recording the best step;
4. test Recall/NDCG@{5, 10, 20} are computed with train + validation items excluded.

Each (method, sparsity, seed) cell is written to ``out/cells/`` as soon as it finishes and
skipped when the protocol is run again, and the JSON and markdown tables are rewritten after
every cell, so a killed run resumes where it stopped; finished cells of another run with the
same data and recipe can be reused (``reuse_cells_from``). The popularity baseline (score =
train popularity) is reported beside every table: a model that does not beat it did not
train. With ES in the run, every other method's test R@20 / N@20 is also reported relative
to ES (``ratio_vs_es``), and search methods' wall time relative to one full training
(``search_time``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import shutil
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tfembsize.budget import Budget
from tfembsize.plan import SizePlan
from tfembsize.protocol.paper import PAPER_METHOD_LABELS, PAPER_SOURCES, paper_cell
from tfembsize.protocol.registry import Method, get_method
from tfembsize.records import Feedback, Observation
from tfembsize.search._training import accepts_keyword
from tfembsize.search.environment import feedback_from_ranking, infer_tables, model_scorer

__all__ = [
    "MethodContext",
    "MethodOutput",
    "Retrained",
    "CellResult",
    "ProtocolConfig",
    "ProtocolReport",
    "run_cell",
    "run_protocol",
    "popularity_result",
    "untrained_cells",
    "summarise_cells",
    "markdown_report",
    "model_usage",
    "ratio_vs_es",
    "search_times",
    "REPORT_METRICS",
]

logger = logging.getLogger(__name__)

REPORT_METRICS = ("recall@5", "recall@20", "ndcg@5", "ndcg@20")
_CELL_FORMAT = "tfembsize.ProtocolCell"


# Records -----------------------------------------------------------------------------------
def model_usage(model: Any) -> tuple[int, int]:
    """(usable parameters, rows) over every sized embedding table of ``model``.

    A table counts if it has ``usable_params()`` and ``input_dim`` (MaskedEmbedding,
    BudgetedEmbedding, PEPEmbedding, ...). NCF's two tables per side both count (spec §0).
    """
    from tfembsize.layers.utils import iter_layers

    used = rows = 0
    seen = False
    for layer in iter_layers(model):
        if callable(getattr(layer, "usable_params", None)) and hasattr(layer, "input_dim"):
            used += int(layer.usable_params())
            rows += int(layer.input_dim)
            seen = True
    if not seen:
        raise ValueError(
            f"{type(model).__name__} has no sized embedding tables (layers with "
            "usable_params()); the budget cannot be checked."
        )
    return used, rows


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
            ``search_iterations``); methods record what they used in their ``info``.
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
    backbone_builder: Callable[[int], Any]
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
        from tfembsize.search._training import resolve_config, run_training

        seed = self.seed if seed is None else int(seed)
        keras.utils.set_random_seed(seed)
        model = build_model() if build_model is not None else self.backbone_builder(seed)
        if plan is not None:
            plan.apply(model)
        used, rows = model_usage(model)
        if self.budget is not None:
            self.budget.check_total(used, rows, what="model to retrain")
        config = resolve_config(self.train_config, model, self.split, seed=seed)
        extra = {}
        if self.directory and accepts_keyword(self.train_fn, "checkpoint_dir"):
            # A killed retraining resumes after its last validation chunk (`TrainCheckpoint`);
            # the key names this exact start (initial weights, sizes, recipe).
            key = _training_key(model, plan, config)
            extra["checkpoint_dir"] = os.path.join(self.directory, "training", key)
        t0 = time.perf_counter()
        train = run_training(self.train_fn, model, self.split, self.evaluator, config, **extra)
        wall = time.perf_counter() - t0
        if not train["finite"]:
            raise FloatingPointError(
                f"Retraining diverged ({train['message']}; {used} usable parameters); lower "
                "the learning rate of the recipe."
            )
        result = train["validation"]
        if result is None or not config.restore_best:
            result = self.evaluator.evaluate(model_scorer(model), phase="validation")
        validation = feedback_from_ranking(
            result,
            usable_params=used,
            wall_time=wall,
            mode="scratch",
            train_steps=train["steps"],
            best_step=train["best_step"],
            loss=train["loss"],
        )
        return Retrained(model, validation, train["best_step"], train["steps"], wall, used, rows)


@dataclass(frozen=True)
class CellResult:
    """The outcome of one (method, sparsity, seed) cell.

    Attributes:
        method: method name.
        sparsity: target sparsity (None for unbudgeted methods).
        seed: seed.
        test: test metrics (``recall@k``, ``ndcg@k``, ``quality``).
        validation: validation metrics of the same weights.
        usable_params: usable parameters of the retrained model.
        num_rows: rows of its tables.
        budget: B(c) (None for unbudgeted methods).
        sparsity_reached: ``1 - usable_params / (d_max * num_rows)``.
        best_step: step of the restored weights.
        train_steps: steps run in the retraining.
        retrain_time: seconds of the retraining.
        method_time: seconds the method took to produce its sizes (search included).
        steps_per_second: retraining optimiser steps per second (evaluations included).
        info: the method's details.
    """

    method: str
    sparsity: float | None
    seed: int
    test: Mapping[str, float]
    validation: Mapping[str, float]
    usable_params: int
    num_rows: int
    budget: int | None
    sparsity_reached: float
    best_step: int | None
    train_steps: int
    retrain_time: float
    method_time: float
    steps_per_second: float
    info: Mapping[str, Any] = field(default_factory=dict)

    def key(self) -> str:
        """File name stem: ``<method>__c<sparsity>__seed<seed>``."""
        return cell_key(self.method, self.sparsity, self.seed)

    def to_dict(self) -> dict:
        """JSON form."""
        return {
            "format": _CELL_FORMAT,
            "version": 1,
            "method": self.method,
            "sparsity": self.sparsity,
            "seed": self.seed,
            "test": dict(self.test),
            "validation": dict(self.validation),
            "usable_params": self.usable_params,
            "num_rows": self.num_rows,
            "budget": self.budget,
            "sparsity_reached": self.sparsity_reached,
            "best_step": self.best_step,
            "train_steps": self.train_steps,
            "retrain_time": self.retrain_time,
            "method_time": self.method_time,
            "steps_per_second": self.steps_per_second,
            "info": dict(self.info),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CellResult:
        """Inverse of `to_dict`."""
        if d.get("format") != _CELL_FORMAT:
            raise ValueError(f"Not a protocol cell (format={d.get('format')!r}).")
        return cls(**{k: v for k, v in d.items() if k not in ("format", "version")})


def cell_key(method: str, sparsity: float | None, seed: int) -> str:
    """The file name stem of a cell."""
    c = "none" if sparsity is None else f"{float(sparsity):g}"
    return f"{method}__c{c}__seed{int(seed)}"


def _metrics_of(fb: Feedback) -> dict[str, float]:
    out = {k: float(v) for k, v in fb.metrics.items()}
    out["quality"] = float(fb.quality)
    return out


# Cells -------------------------------------------------------------------------------------
def run_cell(method: Method, context: MethodContext) -> CellResult:
    """Runs one cell: the method's sizes, the budget assertions, retraining, test metrics.

    Raises:
        BudgetExceededError: the method's plan or retrained model breaks the budget.
        TypeError: the method returned something other than a `MethodOutput`.
    """
    t0 = time.perf_counter()
    out = method.fn(context)
    method_time = time.perf_counter() - t0
    if not isinstance(out, MethodOutput):
        raise TypeError(
            f"Method {method.name!r} must return a MethodOutput. Received {type(out).__name__}."
        )
    budget = context.budget if method.budgeted else None
    if method.budgeted and budget is None:
        raise ValueError(f"Method {method.name!r} is budgeted but the cell has no sparsity.")
    if budget is not None and out.plan is not None:
        out.plan.check(budget)  # asserted before spending time on retraining
    retrained = out.retrained
    if retrained is None:
        retrained = context.retrain(out.plan, build_model=out.build_model)
    limit = None
    if budget is not None:
        limit = budget.max_params_for(retrained.num_rows)
        budget.check_total(retrained.usable_params, retrained.num_rows, what="retrained model")
    result = context.evaluator.evaluate(model_scorer(retrained.model), phase="test")
    test = feedback_from_ranking(result, usable_params=retrained.usable_params)
    full = context.d_max * retrained.num_rows
    return CellResult(
        method=method.name,
        sparsity=context.sparsity if method.budgeted else None,
        seed=context.seed,
        test=_metrics_of(test),
        validation=_metrics_of(retrained.validation),
        usable_params=retrained.usable_params,
        num_rows=retrained.num_rows,
        budget=limit,
        sparsity_reached=1.0 - retrained.usable_params / full,
        best_step=retrained.best_step,
        train_steps=retrained.train_steps,
        retrain_time=retrained.wall_time,
        method_time=method_time,
        steps_per_second=retrained.train_steps / max(retrained.wall_time, 1e-9),
        info=dict(out.info),
    )


def popularity_result(split: Any, evaluator: Any) -> dict[str, dict[str, float]]:
    """Validation and test metrics of ranking by training popularity (same for every user)."""
    pop = np.asarray(split.item_frequencies, np.float32)
    users = np.ones((split.num_users, 1), np.float32)
    items = pop.reshape(-1, 1)
    out = {}
    for phase in ("validation", "test"):
        fb = feedback_from_ranking(evaluator.evaluate((users, items), phase=phase))
        out[phase] = _metrics_of(fb)
    return out


POPULARITY_MARGIN = 1.05
"""A cell whose validation Recall@20 is below this multiple of the popularity baseline's is
flagged as possibly untrained (`untrained_cells`)."""


def untrained_cells(
    cells: Sequence[CellResult], popularity: Mapping[str, Mapping[str, float]]
) -> list[str]:
    """Keys of the cells whose validation Recall@20 is below 1.05x the popularity baseline's.

    A model that does not beat ranking by popularity did not train (spec §2). The usual cause
    is early stopping during the initial plateau, where small tables can stay for thousands of
    steps (LightGCN on ML-100K at d = 6: 3000 steps); a larger ``patience`` fixes it. Only
    validation numbers are compared, so the check never looks at test.

    Args:
        cells: finished cells.
        popularity: `popularity_result` of the same split.

    Returns:
        The flagged cell keys, in the order of ``cells`` (empty if popularity has no
        validation Recall@20).
    """
    base = popularity.get("validation", {}).get("recall@20")
    if base is None or not math.isfinite(base):
        return []
    return [
        c.key() for c in cells if c.validation.get("recall@20", math.inf) < POPULARITY_MARGIN * base
    ]


# Configuration -----------------------------------------------------------------------------
@dataclass(frozen=True)
class ProtocolConfig:
    """A paper-protocol run.

    Attributes:
        dataset: ``"gowalla"``, ``"ml-1m"``, ``"ml-100k"``, ``"synthetic"`` or a LightGCN-format
            directory.
        backbone: ``"mf"``, ``"ncf"``, ``"ngcf"`` or ``"lightgcn"``.
        methods: registered method names, in table order.
        sparsities: target sparsities of the budgeted methods.
        seeds: the seeds (cells run seed by seed, so a first seed fills every cell).
        out: output directory (cells, working directories, tables).
        d_max: full width.
        train_config: the shared retraining recipe (`tfembsize.models.TrainConfig`); None uses
            the backbone's default recipe.
        split_seed: seed of the 50/25/25 split (42 as in the official code).
        data_dir: root directory holding the named datasets (default: the shared data dir).
        label: the data set's name in tables and paper lookups when ``dataset`` is a path
            (e.g. ``"gowalla"`` for a LightGCN-format copy of Gowalla).
        method_options: settings per method name, handed to the method as
            `MethodContext.options` and written to the results (e.g.
            ``{"bet": {"search_iterations": 50, "num_candidates": 100}}``).
    """

    dataset: str
    backbone: str
    methods: tuple[str, ...]
    sparsities: tuple[float, ...] = (0.8, 0.9, 0.95)
    seeds: tuple[int, ...] = (0,)
    out: str = "paper_protocol"
    d_max: int = 128
    train_config: Any = None
    split_seed: int = 42
    data_dir: str | None = None
    label: str | None = None
    method_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """The data set's name in tables and paper lookups (``label``, else ``dataset``)."""
        if self.label:
            return self.label
        return os.path.basename(os.path.normpath(self.dataset)).lower()

    def __post_init__(self) -> None:
        if not self.methods:
            raise ValueError("`methods` must name at least one method.")
        for s in self.sparsities:
            if not 0.0 < float(s) < 1.0:
                raise ValueError(f"`sparsity` must be in (0, 1). Received: sparsity={s!r}")
        if not self.seeds:
            raise ValueError("`seeds` must hold at least one seed.")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"`seeds` must be distinct. Received: seeds={self.seeds!r}")
        unknown = sorted(set(self.method_options) - set(self.methods))
        if unknown:
            raise ValueError(
                f"`method_options` names methods that do not run: {unknown} (methods: "
                f"{list(self.methods)})."
            )

    def cells(self) -> list[tuple[str, float | None, int]]:
        """Every (method, sparsity, seed) cell, seed-major, in table order."""
        out = []
        for seed in self.seeds:
            for name in self.methods:
                method = get_method(name)
                if method.budgeted:
                    out.extend((name, float(s), int(seed)) for s in self.sparsities)
                else:
                    out.append((name, None, int(seed)))
        return out


@dataclass(frozen=True, eq=False)
class ProtocolReport:
    """Results of a protocol run so far.

    Attributes:
        config: the run's configuration.
        cells: finished cells.
        summary: one row per (method, sparsity): mean and std over seeds.
        popularity: the popularity baseline's validation and test metrics.
        dataset_info: users, items, interactions, rows.
        recipe: the retraining recipe as a dict.
        pending: cells not finished yet.
        json_path: path of the JSON results.
        markdown_path: path of the markdown table.
    """

    config: ProtocolConfig
    cells: tuple[CellResult, ...]
    summary: tuple[dict, ...]
    popularity: Mapping[str, Mapping[str, float]]
    dataset_info: Mapping[str, Any]
    recipe: Mapping[str, Any]
    pending: tuple[tuple[str, float | None, int], ...]
    json_path: str = ""
    markdown_path: str = ""


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    vals = [float(v) for v in values]
    if not vals:
        return math.nan, math.nan
    mean = statistics.fmean(vals)
    std = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return mean, std


def summarise_cells(cells: Sequence[CellResult], order: Sequence[str]) -> list[dict]:
    """Mean ± std over seeds per (method, sparsity), in method order then sparsity."""
    groups: dict[tuple[str, float | None], list[CellResult]] = {}
    for c in cells:
        groups.setdefault((c.method, c.sparsity), []).append(c)
    rank = {m: i for i, m in enumerate(order)}
    keys = sorted(groups, key=lambda k: (rank.get(k[0], len(rank)), -1.0 if k[1] is None else k[1]))
    rows = []
    for key in keys:
        group = sorted(groups[key], key=lambda c: c.seed)
        row: dict[str, Any] = {
            "method": key[0],
            "sparsity": key[1],
            "seeds": [c.seed for c in group],
            "n": len(group),
        }
        for metric in (*REPORT_METRICS, "quality"):
            m, s = _mean_std([c.test.get(metric, math.nan) for c in group])
            row[f"test_{metric}"] = {"mean": m, "std": s}
        m, s = _mean_std([c.validation.get("quality", math.nan) for c in group])
        row["validation_quality"] = {"mean": m, "std": s}
        for name in ("usable_params", "sparsity_reached", "retrain_time", "method_time"):
            m, s = _mean_std([getattr(c, name) for c in group])
            row[name] = {"mean": m, "std": s}
        row["best_step"] = {
            "mean": _mean_std([c.best_step or 0 for c in group])[0],
            "values": [c.best_step for c in group],
        }
        row["budget"] = group[0].budget
        row["steps_per_second"] = _mean_std([c.steps_per_second for c in group])[0]
        rows.append(row)
    return rows


def ratio_vs_es(summary: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """Test R@20 and N@20 of every budgeted method over ES's at the same sparsity.

    Returns:
        ``{method: {"<c>": {"recall@20": ratio, "ndcg@20": ratio}}}`` for every method other
        than ``es`` with a row at a sparsity where ``es`` has one (means over seeds).
    """
    es = {row["sparsity"]: row for row in summary if row["method"] == "es"}
    out: dict[str, dict[str, dict[str, float]]] = {}
    for row in summary:
        c = row["sparsity"]
        if row["method"] == "es" or c is None or c not in es:
            continue
        ratios = {}
        for metric in ("recall@20", "ndcg@20"):
            den = es[c][f"test_{metric}"]["mean"]
            num = row[f"test_{metric}"]["mean"]
            ratios[metric] = num / den if den > 0 else math.nan
        out.setdefault(row["method"], {})[f"{c:g}"] = ratios
    return out


_TIMING_KEYS = ("search_time", "full_train_time", "search_vs_full_train_ratio")


def search_times(cells: Sequence[CellResult]) -> dict[str, dict[str, dict[str, float]]]:
    """Search wall time, one full training's wall time and their ratio, per method and c.

    Read from the cells' ``info`` (search methods such as BET record ``search_time``,
    ``full_train_time`` and ``search_vs_full_train_ratio``); means over seeds.
    """
    groups: dict[tuple[str, str], list[CellResult]] = {}
    for c in cells:
        if all(c.info.get(k) is not None for k in _TIMING_KEYS):
            c_key = "none" if c.sparsity is None else f"{c.sparsity:g}"
            groups.setdefault((c.method, c_key), []).append(c)
    out: dict[str, dict[str, dict[str, float]]] = {}
    for (method, c_key), group in sorted(groups.items()):
        row: dict[str, float] = {"n": len(group)}
        for k in _TIMING_KEYS:
            row[k] = statistics.fmean(float(c.info[k]) for c in group)
        out.setdefault(method, {})[c_key] = row
    return out


# Markdown ----------------------------------------------------------------------------------
def _fmt(stat: Mapping[str, float], n: int) -> str:
    m, s = stat["mean"], stat["std"]
    if math.isnan(m):
        return "—"
    return f"{m:.4f} ± {s:.4f}" if n > 1 else f"{m:.4f}"


def markdown_report(report: ProtocolReport) -> str:
    """The markdown tables: ours (mean ± std over seeds), the papers' cells, popularity."""
    cfg = report.config
    info = report.dataset_info
    n_seeds = len(cfg.seeds)
    done = {len(r["seeds"]) for r in report.summary}
    lines = [
        f"# Paper protocol: {cfg.name}, {cfg.backbone.upper()} backbone",
        "",
        f"- Data: {info.get('num_users'):,} users, {info.get('num_items'):,} items, "
        f"{info.get('num_interactions'):,} interactions; split 50/25/25 per user (seed "
        f"{cfg.split_seed}); N = {info.get('num_entities'):,} entities "
        f"(rows of the tables, ids that occur; spec §1.1), d_max = {cfg.d_max}.",
        f"- Seeds requested: {n_seeds} ({', '.join(map(str, cfg.seeds))}); seeds per row so far: "
        f"{', '.join(map(str, sorted(done))) or 'none'}. Mean ± std over seeds.",
        "- Retraining: from scratch on train, early stopping on validation only, best weights "
        "restored; test ranks all items with train + validation items excluded.",
        f"- Recipe: `{json.dumps(report.recipe, sort_keys=True)}`",
        f"- Paper cells: {PAPER_SOURCES.get(cfg.name, 'none for this dataset')}; "
        "R@20 / N@20 of the same method and sparsity.",
        "",
        "| method | c | R@5 | R@20 | N@5 | N@20 | params (budget) | best step | retrain s | "
        "paper R@20 / N@20 | ours / paper R@20 |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in report.summary:
        n = row["n"]
        c = "—" if row["sparsity"] is None else f"{row['sparsity']:.0%}"
        params = f"{row['usable_params']['mean']:,.0f}"
        if row["budget"] is not None:
            params += f" ({row['budget']:,})"
        else:
            params += f" (reached {row['sparsity_reached']['mean']:.1%})"
        paper = paper_cell(cfg.name, cfg.backbone, row["method"], row["sparsity"])
        ratio = "—"
        if paper.available:
            ratio = f"{row['test_recall@20']['mean'] / paper.recall20:.2f}"
        label = row["method"]
        if row["method"] in PAPER_METHOD_LABELS:
            label += f" ({PAPER_METHOD_LABELS[row['method']]})"
        steps = ", ".join("—" if v is None else str(v) for v in row["best_step"]["values"])
        lines.append(
            f"| {label} | {c} | {_fmt(row['test_recall@5'], n)} | {_fmt(row['test_recall@20'], n)} "
            f"| {_fmt(row['test_ndcg@5'], n)} | {_fmt(row['test_ndcg@20'], n)} | {params} | "
            f"{steps} | {row['retrain_time']['mean']:.0f} | {paper.text()} | {ratio} |"
        )
    pop = report.popularity.get("test")
    if pop:
        lines.append(
            f"| popularity (train counts) | — | {pop.get('recall@5', math.nan):.4f} | "
            f"{pop.get('recall@20', math.nan):.4f} | {pop.get('ndcg@5', math.nan):.4f} | "
            f"{pop.get('ndcg@20', math.nan):.4f} | 0 | — | — | — | — |"
        )
    lines.append("")
    flagged = untrained_cells(report.cells, report.popularity)
    if flagged:
        base = report.popularity["validation"]["recall@20"]
        lines.append(
            f"**Warning:** {', '.join(flagged)}: validation R@20 below "
            f"{POPULARITY_MARGIN:.2f}x the popularity baseline's ({base:.4f}); these models may "
            "not have trained (early stopping during the initial plateau?). Rerun them with a "
            "larger patience before reading their numbers."
        )
        lines.append("")
    lines.extend(_ratio_lines(report))
    lines.extend(_timing_lines(report))
    if report.pending:
        lines.append(
            f"{len(report.pending)} cells still to run: "
            + ", ".join(cell_key(*p) for p in report.pending[:12])
            + (" ..." if len(report.pending) > 12 else "")
        )
        lines.append("")
    speeds = [r["steps_per_second"] for r in report.summary if r["steps_per_second"]]
    if speeds and report.recipe.get("steps_per_epoch"):
        spe = report.recipe["steps_per_epoch"]
        lines.append(
            f"Training speed: {statistics.fmean(speeds):.1f} optimiser steps/s "
            f"({statistics.fmean(speeds) / spe:.3f} epochs/s at {spe} steps per epoch), "
            "validation evaluations included."
        )
        lines.append("")
    return "\n".join(lines)


def _ratio_lines(report: ProtocolReport) -> list[str]:
    cfg = report.config
    ratios = ratio_vs_es(report.summary)
    if not ratios:
        return []
    lines = [
        "Test R@20 / N@20 relative to ES at the same sparsity (same recipe and seeds), beside "
        "the paper's ratio of the same cells:",
        "",
        "| method | c | R@20 / ES | N@20 / ES | paper R@20 / ES |",
        "| --- | --- | --- | --- | --- |",
    ]
    for method, by_c in ratios.items():
        for c_key, r in by_c.items():
            c = float(c_key)
            ours, es = (paper_cell(cfg.name, cfg.backbone, m, c) for m in (method, "es"))
            paper = "—"
            if ours.available and es.available:
                paper = f"{ours.recall20 / es.recall20:.3f} ({ours.backbone})"
            lines.append(
                f"| {method} | {c:.0%} | {r['recall@20']:.3f} | {r['ndcg@20']:.3f} | {paper} |"
            )
    lines.append("")
    return lines


def _timing_lines(report: ProtocolReport) -> list[str]:
    times = search_times(report.cells)
    if not times:
        return []
    lines = [
        "Search wall time against one full training of the backbone in the same run:",
        "",
        "| method | c | search s | full training s | search / full training |",
        "| --- | --- | --- | --- | --- |",
    ]
    for method, by_c in times.items():
        for c_key, t in by_c.items():
            c = "—" if c_key == "none" else f"{float(c_key):.0%}"
            lines.append(
                f"| {method} | {c} | {t['search_time']:.0f} | {t['full_train_time']:.0f} | "
                f"{t['search_vs_full_train_ratio']:.2f} |"
            )
    lines.append("")
    return lines


# The protocol ------------------------------------------------------------------------------
def _write_json(path: str, payload: Any) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(payload, f, indent=1, default=_jsonable)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _jsonable(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def _training_key(model: Any, plan: SizePlan | None, config: Any) -> str:
    """A short hash of a retraining's start: initial weights, sizes and recipe."""
    h = hashlib.sha1()
    for w in model.get_weights():
        arr = np.ascontiguousarray(w)
        h.update(str(arr.shape).encode())
        h.update(arr.tobytes())
    if plan is not None:
        h.update(json.dumps(plan.to_dict(), sort_keys=True, default=_jsonable).encode())
    h.update(json.dumps(config.to_dict(), sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def _load_cells(directory: str) -> dict[str, CellResult]:
    cells = {}
    if not os.path.isdir(directory):
        return cells
    for name in sorted(os.listdir(directory)):
        if name.endswith(".json"):
            with open(os.path.join(directory, name), encoding="utf-8") as f:
                cell = CellResult.from_dict(json.load(f))
            cells[cell.key()] = cell
    return cells


def run_protocol(
    config: ProtocolConfig,
    *,
    split: Any = None,
    backbone_builder: Callable[[Any, int, int], Any] | None = None,
    train_fn: Callable[..., Any] | None = None,
    meta: Mapping[str, Any] | None = None,
    max_cells: int | None = None,
    verbose: int = 1,
    reuse_cells_from: Sequence[str | os.PathLike] = (),
) -> ProtocolReport:
    """Runs (or resumes) every cell of ``config`` and writes the tables.

    Args:
        config: the run.
        split: the data split (default: ``load_dataset(config.dataset).split(...)``).
        backbone_builder: ``builder(split, d_max, seed) -> model`` (default: the registered
            backbone ``config.backbone``).
        train_fn: retraining function (default `tfembsize.models.train_bpr`).
        meta: extra JSON written at the top of the results (command, machine, date).
        max_cells: stop after this many new cells (tests use it to simulate a kill).
        verbose: 0 silent, 1 one log line per cell.
        reuse_cells_from: output directories of other protocol runs; before a cell runs, a
            finished cell of the same key there is copied instead (its ``info`` gets
            ``reused_from``) if that run used the same data, split, backbone, ``d_max`` and
            recipe, and the same `ProtocolConfig.method_options` for the cell's method.
            Checked before every cell, so cells another run finishes meanwhile are picked up.

    Returns:
        A `ProtocolReport` (also written as ``results.json`` and ``results.md`` in
        ``config.out``).
    """
    from tfembsize.protocol.backbones import default_train_config, get_backbone, recipe_dict

    out = os.path.abspath(config.out)
    cells_dir = os.path.join(out, "cells")
    os.makedirs(cells_dir, exist_ok=True)
    if split is None:
        from tfembsize.data import load_dataset

        kwargs = {"data_root": config.data_dir} if config.data_dir else {}
        split = load_dataset(config.dataset, **kwargs).split(
            0.5, 0.25, 0.25, seed=config.split_seed
        )
    if backbone_builder is None:
        backbone_builder = get_backbone(config.backbone)
    if train_fn is None:
        from tfembsize.models import train_bpr

        train_fn = train_bpr
    train_config = config.train_config
    if train_config is None:
        train_config = default_train_config(config.backbone, split)
    from tfembsize.metrics import RankingEvaluator

    evaluator = RankingEvaluator(split, ks=(5, 10, 20))
    methods = {name: get_method(name) for name in config.methods}  # unknown names fail early
    dataset_info = {
        "name": config.name,
        "num_users": int(split.num_users),
        "num_items": int(split.num_items),
        "num_entities": int(split.num_users + split.num_items),
        "num_interactions": int(
            split.train.num_interactions
            + split.validation.num_interactions
            + split.test.num_interactions
        ),
        "num_train": int(split.train.num_interactions),
    }
    recipe = recipe_dict(train_config, split)
    pop_path = os.path.join(out, "popularity.json")
    if os.path.exists(pop_path):
        with open(pop_path, encoding="utf-8") as f:
            popularity = json.load(f)
    else:
        popularity = popularity_result(split, evaluator)
        _write_json(pop_path, popularity)

    finished = _load_cells(cells_dir)
    todo = [c for c in config.cells() if cell_key(*c) not in finished]
    report = _write_report(config, finished, popularity, dataset_info, recipe, todo, out, meta)
    signature = _run_signature(config, dataset_info, recipe)
    sources = [os.path.abspath(os.fspath(d)) for d in reuse_cells_from]

    def reuse(cell: tuple[str, float | None, int]) -> bool:
        """Copies a finished cell of another run; True if it did."""
        key = cell_key(*cell)
        options = json.loads(json.dumps(dict(config.method_options.get(cell[0], {}))))
        reused = _reusable_cell(key, sources, {**signature, "method_options": options})
        if reused is None:
            return False
        _write_json(os.path.join(cells_dir, f"{key}.json"), reused.to_dict())
        finished[key] = reused
        todo.remove(cell)
        if verbose:
            logger.info("Cell %s: reused from %s.", key, reused.info["reused_from"])
        return True

    if sources and any([reuse(cell) for cell in list(todo)]):
        report = _write_report(config, finished, popularity, dataset_info, recipe, todo, out, meta)
    ran = 0
    for name, sparsity, seed in list(todo):
        key = cell_key(name, sparsity, seed)
        if sources and reuse((name, sparsity, seed)):  # finished meanwhile by the other run
            report = _write_report(
                config, finished, popularity, dataset_info, recipe, todo, out, meta
            )
            continue
        if max_cells is not None and ran >= max_cells:
            break
        method = methods[name]
        ctx = MethodContext(
            dataset=config.dataset,
            backbone=config.backbone,
            split=split,
            evaluator=evaluator,
            sparsity=sparsity,
            seed=seed,
            d_max=config.d_max,
            directory=os.path.join(out, "work", key),
            train_config=train_config,
            backbone_builder=lambda s: backbone_builder(split, config.d_max, s),
            train_fn=train_fn,
            verbose=verbose,
            method=name,
            sparsities=tuple(float(x) for x in config.sparsities),
            root=os.path.join(out, "work"),
            options=dict(config.method_options.get(name, {})),
        )
        if verbose:
            logger.info("Cell %s: running.", key)
        cell = run_cell(method, ctx)
        _write_json(os.path.join(cells_dir, f"{key}.json"), cell.to_dict())
        # The cell is on disk: its retraining checkpoints are no longer needed.
        shutil.rmtree(os.path.join(ctx.directory, "training"), ignore_errors=True)
        finished[key] = cell
        todo.remove((name, sparsity, seed))
        ran += 1
        if untrained_cells([cell], popularity):
            logger.warning(
                "Cell %s: validation R@20 %.4f is below %.2fx the popularity baseline's %.4f: "
                "the model may not have trained (early stopping during the initial plateau?). "
                "Consider a larger patience (now %d) or eval_every (now %d).",
                key,
                cell.validation.get("recall@20", math.nan),
                POPULARITY_MARGIN,
                popularity["validation"]["recall@20"],
                getattr(train_config, "patience", -1),
                getattr(train_config, "eval_every", -1),
            )
        if verbose:
            logger.info(
                "Cell %s: test R@20 %.4f N@20 %.4f, %d params, best step %s, %.0fs.",
                key,
                cell.test.get("recall@20", math.nan),
                cell.test.get("ndcg@20", math.nan),
                cell.usable_params,
                cell.best_step,
                cell.retrain_time,
            )
        report = _write_report(config, finished, popularity, dataset_info, recipe, todo, out, meta)
    return report


def _run_signature(
    config: ProtocolConfig, dataset_info: Mapping[str, Any], recipe: Mapping[str, Any]
) -> dict:
    """What two runs must share for their cells to be interchangeable (JSON-normalised)."""
    return json.loads(
        json.dumps(
            {
                "name": config.name,
                "backbone": config.backbone,
                "d_max": config.d_max,
                "split_seed": config.split_seed,
                "dataset": dict(dataset_info),
                "recipe": dict(recipe),
            },
            default=_jsonable,
        )
    )


def _reusable_cell(key: str, sources: Sequence[str], signature: Mapping[str, Any]) -> Any:
    """A finished cell ``key`` of another run with the same signature, or None."""
    for src in sources:
        cell_path = os.path.join(src, "cells", f"{key}.json")
        results_path = os.path.join(src, "results.json")
        if not (os.path.exists(cell_path) and os.path.exists(results_path)):
            continue
        with open(results_path, encoding="utf-8") as f:
            other = json.load(f)
        cfg = other.get("config", {})
        theirs = {
            "name": cfg.get("name"),
            "backbone": cfg.get("backbone"),
            "d_max": cfg.get("d_max"),
            "split_seed": cfg.get("split_seed"),
            "dataset": other.get("dataset"),
            "recipe": other.get("recipe"),
            "method_options": (cfg.get("method_options") or {}).get(key.split("__")[0], {}),
        }
        if theirs != signature:
            diff = sorted(k for k in signature if theirs.get(k) != signature[k])
            logger.warning("Not reusing %s from %s: it differs in %s.", key, src, diff)
            continue
        with open(cell_path, encoding="utf-8") as f:
            cell = CellResult.from_dict(json.load(f))
        return dataclasses.replace(cell, info={**cell.info, "reused_from": src})
    return None


def _write_report(
    config: ProtocolConfig,
    finished: Mapping[str, CellResult],
    popularity: Mapping[str, Any],
    dataset_info: Mapping[str, Any],
    recipe: Mapping[str, Any],
    todo: Sequence[tuple[str, float | None, int]],
    out: str,
    meta: Mapping[str, Any] | None,
) -> ProtocolReport:
    wanted = {cell_key(*c) for c in config.cells()}
    cells = tuple(c for k, c in sorted(finished.items()) if k in wanted)
    summary = tuple(summarise_cells(cells, config.methods))
    report = ProtocolReport(
        config=config,
        cells=cells,
        summary=summary,
        popularity=popularity,
        dataset_info=dataset_info,
        recipe=recipe,
        pending=tuple(todo),
        json_path=os.path.join(out, "results.json"),
        markdown_path=os.path.join(out, "results.md"),
    )
    paper = {}
    for row in summary:
        cell = paper_cell(config.name, config.backbone, row["method"], row["sparsity"])
        paper[cell_key(row["method"], row["sparsity"], 0).rsplit("__seed", 1)[0]] = {
            "recall@20": cell.recall20,
            "ndcg@20": cell.ndcg20,
            "backbone_column": cell.backbone,
            "source": cell.source,
            "note": cell.note,
        }
    payload = {
        **(meta or {}),
        "config": {
            "dataset": config.dataset,
            "name": config.name,
            "backbone": config.backbone,
            "methods": list(config.methods),
            "sparsities": list(config.sparsities),
            "seeds": list(config.seeds),
            "d_max": config.d_max,
            "split_seed": config.split_seed,
            "method_options": {k: dict(v) for k, v in config.method_options.items()},
        },
        "dataset": dict(dataset_info),
        "recipe": dict(recipe),
        "popularity": popularity,
        "summary": list(summary),
        "ratio_vs_es": {
            m: {c: r["recall@20"] for c, r in by_c.items()}
            for m, by_c in ratio_vs_es(summary).items()
        },
        "ndcg_ratio_vs_es": {
            m: {c: r["ndcg@20"] for c, r in by_c.items()}
            for m, by_c in ratio_vs_es(summary).items()
        },
        "search_time": search_times(cells),
        "paper": paper,
        "cells": [c.to_dict() for c in cells],
        "pending": [cell_key(*p) for p in todo],
    }
    _write_json(report.json_path, payload)
    md = markdown_report(report)
    if meta:
        md += "\n" + "\n".join(
            f"{k}: {v if isinstance(v, str) else json.dumps(v)}" for k, v in meta.items()
        )
    tmp = f"{report.markdown_path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(md.rstrip() + "\n")
    os.replace(tmp, report.markdown_path)
    return report


__all__ += ["cell_key"]
