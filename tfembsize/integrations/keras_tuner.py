"""Tune a size search's knobs with keras-tuner's oracles (random search, Bayesian, Hyperband).

keras-tuner's `Tuner` trains a Keras model per trial and only accepts Keras 3 models; a size
search is not one model fit, so `SizeSearchTuner` subclasses its `BaseTuner` instead and
runs one whole search per trial (`tfembsize.search.run`). It works in both Keras modes,
because no Keras model passes through keras-tuner.

Each trial calls your ``build_search(hp)``, which reads hyperparameters from ``hp`` (a
controller knob such as BET's number of sampled actions or CIESS's lambda, or a training
knob such as the learning rate of the search steps) and returns the ``(controller,
environment)`` pair to search with. The trial's search runs in the trial's own folder and
resumes there after a crash; the oracle's state is keras-tuner's own (rerunning the same
script with ``overwrite=False`` continues the tuning). The trial reports, for the answer of
the loosest budget:

* ``quality``: its validation quality (the environment's monitored metric), and
  ``quality_ratio`` against the full-size model when the environment has a reference;
* ``usable_params`` and ``sparsity_reached = 1 - usable_params / full_params``;
* ``sparsity_gap = |sparsity_reached - target_sparsity|`` when ``target_sparsity`` is given
  (to tune a knob such as lambda until a search lands on a sparsity);
* ``steps``: the steps the search ran.

Pick any of them as the oracle's objective, e.g. ``keras_tuner.Objective("quality",
"max")`` or ``keras_tuner.Objective("sparsity_gap", "min")``.

Example:
    >>> import keras_tuner
    >>> def build_search(hp):
    ...     controller = FrequencyProportional(0.9, power=hp.Float("power", 0.25, 1.0))
    ...     return controller, KerasEnvironment(make_model, split)
    >>> tuner = SizeSearchTuner(
    ...     keras_tuner.oracles.RandomSearchOracle(
    ...         objective=keras_tuner.Objective("quality", "max"), max_trials=8),
    ...     build_search, directory="runs", project_name="power")  # doctest: +SKIP
    >>> tuner.search()  # doctest: +SKIP
    >>> tuner.get_best_hyperparameters()[0].values  # doctest: +SKIP
    >>> plan = tuner.get_best_models()[0]  # the best trial's SizePlan  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from typing import Any

from tfembsize.plan import SizePlan

__all__ = ["SizeSearchTuner", "search_metrics"]

logger = logging.getLogger(__name__)

try:
    import keras_tuner as _kt
except ImportError as err:  # pragma: no cover - keras-tuner is a dependency
    raise ImportError(
        "tfembsize.integrations.keras_tuner needs keras-tuner: pip install keras-tuner"
    ) from err


def search_metrics(result: Any, *, target_sparsity: float | None = None) -> dict[str, float]:
    """The numbers a trial reports for a `tfembsize.search.SearchResult` (module docstring).

    Raises:
        ValueError: the search produced no answer (no completed step within a budget).
    """
    best = result.best
    if best is None or best.feedback is None:
        raise ValueError(
            f"The search in {result.directory or 'its directory'} produced no answer within "
            "its budget; give it more iterations."
        )
    fb = best.feedback
    usable = float(fb.usable_params)
    full = float(result.reference.usable_params) if result.reference is not None else math.nan
    metrics = {
        "quality": float(fb.quality),
        "usable_params": usable,
        "steps": float(len(result.history)),
    }
    if fb.quality_ratio is not None:
        metrics["quality_ratio"] = float(fb.quality_ratio)
    if full > 0:
        metrics["sparsity_reached"] = 1.0 - usable / full
        if target_sparsity is not None:
            metrics["sparsity_gap"] = abs(metrics["sparsity_reached"] - float(target_sparsity))
    elif target_sparsity is not None:
        raise ValueError(
            "`target_sparsity` needs the full-size parameter count: use an environment with a "
            "full-size reference (KerasEnvironment(..., reference=True))."
        )
    return metrics


class SizeSearchTuner(_kt.engine.base_tuner.BaseTuner):
    """Runs one size search per keras-tuner trial and reports its result to the oracle.

    Args:
        oracle: a keras-tuner oracle (``RandomSearchOracle``, ``BayesianOptimizationOracle``,
            ``HyperbandOracle`` ...) with an objective among the reported metrics.
        build_search: ``build_search(hp) -> (controller, environment)``.
        iterations: steps per search (None: until the controller is done).
        target_sparsity: report ``sparsity_gap`` against this sparsity.
        search_verbose: ``verbose`` of each search (0 silent, 1 bar, 2 a line per step).
        **kwargs: `BaseTuner` arguments (``directory``, ``project_name``, ``overwrite``,
            ``logger`` ...).

    Raises:
        TypeError: ``build_search`` is not callable, or it returns something else than a
            ``(controller, environment)`` pair.
        ValueError: ``target_sparsity`` not in (0, 1) or ``iterations`` not positive.

    References:
        O'Malley et al., "KerasTuner", 2019, https://github.com/keras-team/keras-tuner.
    """

    def __init__(
        self,
        oracle: Any,
        build_search: Callable[[Any], tuple[Any, Any]],
        *,
        iterations: int | None = None,
        target_sparsity: float | None = None,
        search_verbose: int = 0,
        **kwargs: Any,
    ) -> None:
        if not callable(build_search):
            raise TypeError(
                "`build_search` must be a callable hp -> (controller, environment). "
                f"Received: {type(build_search).__name__}"
            )
        if iterations is not None and (
            isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1
        ):
            raise ValueError(
                f"`iterations` must be a positive integer or None. Received: {iterations!r}"
            )
        if target_sparsity is not None and (
            isinstance(target_sparsity, bool)
            or not isinstance(target_sparsity, (int, float))
            or not 0.0 < float(target_sparsity) < 1.0
        ):
            raise ValueError(
                "`target_sparsity` must be in (0, 1). "
                f"Received: target_sparsity={target_sparsity!r}"
            )
        super().__init__(oracle, hypermodel=None, **kwargs)
        self.build_search = build_search
        self.iterations = iterations
        self.target_sparsity = None if target_sparsity is None else float(target_sparsity)
        self.search_verbose = int(search_verbose)

    def _search_dir(self, trial_id: str) -> str:
        return os.path.join(self.get_trial_dir(trial_id), "search")

    def run_trial(self, trial: Any, *args: Any, **kwargs: Any) -> dict[str, float]:
        """Builds the trial's search, runs it (resuming in the trial folder), reports metrics."""
        from tfembsize.controllers import Controller
        from tfembsize.search import run

        built = self.build_search(trial.hyperparameters)
        if not isinstance(built, tuple) or len(built) != 2:
            raise TypeError(
                "`build_search(hp)` must return a (controller, environment) pair. "
                f"Received: {type(built).__name__}"
            )
        controller, env = built
        if not isinstance(controller, Controller):
            raise TypeError(
                "`build_search(hp)` must return a tfembsize Controller first. "
                f"Received: {type(controller).__name__}"
            )
        result = run(
            controller,
            env,
            self._search_dir(trial.trial_id),
            iterations=self.iterations,
            verbose=self.search_verbose,
            tensorboard=False,
        )
        metrics = search_metrics(result, target_sparsity=self.target_sparsity)
        if result.best_plan is not None:
            self.save_model(trial.trial_id, result.best_plan)
        logger.info("trial %s: %s", trial.trial_id, metrics)
        return metrics

    def save_model(self, trial_id: str, model: Any, step: int = 0) -> None:
        """Saves the trial's answer (a `SizePlan`) as ``best_plan.json`` in its folder."""
        del step
        model.save(os.path.join(self.get_trial_dir(trial_id), "best_plan.json"))

    def load_model(self, trial: Any) -> SizePlan:
        """The trial's answer, a `SizePlan` (what ``get_best_models`` returns)."""
        return SizePlan.load(os.path.join(self.get_trial_dir(trial.trial_id), "best_plan.json"))
