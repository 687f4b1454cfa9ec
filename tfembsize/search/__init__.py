"""Search: the environment protocol, its environments, typed records and the resumable loop.

`KerasEnvironment` trains the library's BPR backbones (`tfembsize.models`) with its own loop;
`FitEnvironment` trains a model of your own with its own ``compile``/``fit``; any class with
the `Environment` methods is an environment too.

Example:
    >>> import tfembsize as tes  # doctest: +SKIP
    >>> env = tes.search.KerasEnvironment(build_model, split, evaluator)  # doctest: +SKIP
    >>> result = tes.search.run(controller, env, "runs/bet")  # doctest: +SKIP
    >>> result.best_plan.apply(env.model)  # doctest: +SKIP
"""

from tfembsize.records import MODES, Feedback, Observation, StepRecord
from tfembsize.search.callbacks import (
    LoggingCallback,
    ProgbarCallback,
    SearchCallback,
    TensorBoardCallback,
)
from tfembsize.search.entities import count_frequencies
from tfembsize.search.environment import (
    Environment,
    KerasEnvironment,
    StatefulEnvironment,
    feedback_from_ranking,
    infer_tables,
    model_scorer,
)
from tfembsize.search.evaluation import TowerEvaluator, feedback_from_evaluation
from tfembsize.search.fit_checkpoint import EpochCheckpoint
from tfembsize.search.fit_environment import FitEnvironment
from tfembsize.search.loop import SearchResult, load_history, run, step_score

__all__ = [
    "Environment",
    "StatefulEnvironment",
    "KerasEnvironment",
    "FitEnvironment",
    "EpochCheckpoint",
    "TowerEvaluator",
    "count_frequencies",
    "feedback_from_evaluation",
    "Feedback",
    "Observation",
    "StepRecord",
    "MODES",
    "SearchResult",
    "SearchCallback",
    "ProgbarCallback",
    "TensorBoardCallback",
    "LoggingCallback",
    "run",
    "load_history",
    "step_score",
    "feedback_from_ranking",
    "infer_tables",
    "model_scorer",
]
