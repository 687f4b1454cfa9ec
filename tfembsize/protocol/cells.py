"""One cell of the protocol: a method's sizes at one sparsity and seed, retrained and tested.

`run_cell` runs a method and measures its result the same way for every method:

1. the method produces sizes (`MethodOutput`): a `SizePlan`, or a model builder for methods
   whose masks are not prefix sizes;
2. the budget B(c) = floor((1 - c) * d_max * N) is **asserted** on the plan and again on the
   retrained model's usable parameters (`BudgetExceededError` otherwise);
3. the model is retrained from scratch on train with validation early stopping (the shared
   recipe, `MethodContext.retrain`), restoring the best weights and recording the best step;
4. test Recall/NDCG@{5, 10, 20} are computed with train + validation items excluded.

The `CellResult` is written as ``<out>/cells/<method>__c<sparsity>__seed<seed>.json``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tfembsize import _io
from tfembsize.protocol._json import plain
from tfembsize.protocol.context import MethodContext, MethodOutput
from tfembsize.protocol.registry import Method
from tfembsize.records import Feedback
from tfembsize.search.environment import feedback_from_ranking, model_scorer

__all__ = ["CellResult", "cell_key", "run_cell", "load_cells", "save_cell"]

_CELL_FORMAT = "tfembsize.ProtocolCell"


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


def save_cell(directory: str, cell: CellResult) -> str:
    """Writes ``cell`` as ``directory/<key>.json`` (atomically); returns the path."""
    path = os.path.join(directory, f"{cell.key()}.json")
    payload = plain(cell.to_dict())
    _io.write_json(path, payload, format=payload["format"], version=payload["version"])
    return path


def load_cells(directory: str) -> dict[str, CellResult]:
    """The cells written into ``directory`` by `save_cell`, by key."""
    cells: dict[str, CellResult] = {}
    if not os.path.isdir(directory):
        return cells
    for name in sorted(os.listdir(directory)):
        if name.endswith(".json"):
            path = os.path.join(directory, name)
            cell = CellResult.from_dict(
                _io.read_json(path, format=_CELL_FORMAT, what="protocol cell")
            )
            cells[cell.key()] = cell
    return cells
