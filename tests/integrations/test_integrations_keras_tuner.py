"""keras-tuner drives whole size searches (one per trial), in both Keras modes."""

import json
import math

import numpy as np
import pytest

keras_tuner = pytest.importorskip("keras_tuner")

from tfembsize.controllers import FrequencyProportional  # noqa: E402
from tfembsize.data import synthetic  # noqa: E402
from tfembsize.integrations.keras_tuner import SizeSearchTuner, search_metrics  # noqa: E402
from tfembsize.metrics import RankingEvaluator  # noqa: E402
from tfembsize.models import MF, TrainConfig  # noqa: E402
from tfembsize.plan import SizePlan  # noqa: E402
from tfembsize.search import KerasEnvironment  # noqa: E402

D = 8
CONFIG = TrainConfig(learning_rate=0.01, batch_size=128, max_steps=20, eval_every=10, patience=2)


@pytest.fixture(scope="module")
def split():
    return synthetic(60, 80, 1200, seed=0).split(0.5, 0.25, 0.25, seed=42)


class Builder:
    """build_search(hp): FrequencyProportional with a tuned power and a tuned learning rate."""

    def __init__(self, split):
        self.split = split
        self.evaluator = RankingEvaluator(split)
        self.calls = []

    def __call__(self, hp):
        power = hp.Choice("power", [0.5, 1.0])
        lr = hp.Choice("learning_rate", [0.01])
        self.calls.append((power, lr))
        env = KerasEnvironment(
            lambda: MF.create(self.split.num_users, self.split.num_items, D),
            self.split,
            self.evaluator,
            train_config=CONFIG.replace(learning_rate=lr),
            reference_config=CONFIG,
            seed=0,
        )
        return FrequencyProportional(0.5, power=power), env


def _oracle(max_trials=2):
    return keras_tuner.oracles.GridSearchOracle(
        objective=keras_tuner.Objective("quality", "max"), max_trials=max_trials, seed=0
    )


def test_each_trial_runs_a_search_and_the_oracle_ranks_by_its_quality(tmp_path, split):
    build = Builder(split)
    tuner = SizeSearchTuner(
        _oracle(), build, target_sparsity=0.5, directory=str(tmp_path), project_name="p"
    )
    tuner.search()
    assert sorted(p for p, _ in build.calls) == [0.5, 1.0]
    trials = tuner.oracle.get_best_trials(2)
    qualities = [t.metrics.get_best_value("quality") for t in trials]
    assert qualities[0] >= qualities[1]
    best = trials[0]
    for trial in trials:
        m = trial.metrics
        assert 0.0 < m.get_best_value("quality") <= 1.0
        # Sparsity reached by hand from the usable parameters and the full tables.
        full = (split.num_users + split.num_items) * D
        reached = 1 - m.get_best_value("usable_params") / full
        assert m.get_best_value("sparsity_reached") == pytest.approx(reached)
        assert m.get_best_value("sparsity_gap") == pytest.approx(abs(reached - 0.5))
        assert reached >= 0.5 - 1e-9  # the answer is within the budget
    # The best trial's answer is its saved SizePlan.
    plan = tuner.get_best_models(1)[0]
    assert isinstance(plan, SizePlan)
    assert plan.num_rows() == split.num_users + split.num_items
    params = sum(int(plan[n].sum()) for n in plan)
    assert params == best.metrics.get_best_value("usable_params")
    assert tuner.get_best_hyperparameters(1)[0].values["power"] == best.hyperparameters["power"]
    # Rerunning the same script continues the tuning: no trial is searched again.
    again = Builder(split)
    SizeSearchTuner(
        _oracle(), again, target_sparsity=0.5, directory=str(tmp_path), project_name="p"
    ).search()
    assert again.calls == []


def test_search_metrics_by_hand(tmp_path, split):
    from tfembsize.records import Feedback, StepRecord
    from tfembsize.search.loop import SearchResult

    fb = Feedback(quality=0.2, usable_params=300, quality_ratio=0.8)
    step = StepRecord(iteration=0, plan=None, mode="scratch", feedback=fb)
    ref = Feedback(quality=0.25, usable_params=1000)
    result = SearchResult(history=(step,), reference=ref, best=step)
    m = search_metrics(result, target_sparsity=0.6)
    assert m == {
        "quality": 0.2,
        "usable_params": 300.0,
        "steps": 1.0,
        "quality_ratio": 0.8,
        "sparsity_reached": 0.7,
        "sparsity_gap": pytest.approx(0.1),
    }
    no_ref = SearchResult(history=(step,), best=step)
    assert "sparsity_reached" not in search_metrics(no_ref)
    with pytest.raises(ValueError, match="needs the full-size parameter count"):
        search_metrics(no_ref, target_sparsity=0.5)
    with pytest.raises(ValueError, match="produced no answer"):
        search_metrics(SearchResult(history=(), directory="runs/x"))
    assert math.isfinite(m["quality"]) and json.dumps(m)


def test_bad_arguments(tmp_path, split):
    with pytest.raises(TypeError, match="`build_search` must be a callable"):
        SizeSearchTuner(_oracle(), 3, directory=str(tmp_path))
    with pytest.raises(ValueError, match="`iterations` must be a positive integer"):
        SizeSearchTuner(_oracle(), Builder(split), iterations=0, directory=str(tmp_path))
    with pytest.raises(ValueError, match=r"`target_sparsity` must be in \(0, 1\)"):
        SizeSearchTuner(_oracle(), Builder(split), target_sparsity=1.5, directory=str(tmp_path))
    tuner = SizeSearchTuner(
        _oracle(1), lambda hp: "nope", directory=str(tmp_path), project_name="bad"
    )
    with pytest.raises(TypeError, match=r"must return a \(controller, environment\) pair"):
        tuner.run_trial(tuner.oracle.create_trial("t"))
    tuner = SizeSearchTuner(
        _oracle(1), lambda hp: (1, 2), directory=str(tmp_path), project_name="bad2"
    )
    with pytest.raises(TypeError, match="must return a tfembsize Controller first"):
        tuner.run_trial(tuner.oracle.create_trial("t"))
    assert np.isfinite(CONFIG.learning_rate)
