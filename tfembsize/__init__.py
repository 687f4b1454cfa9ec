"""tfembsize: embedding-size search and compressed export for TensorFlow/Keras recommenders.

Keras comes from `tfembsize._keras` (Keras 3, or tf-keras under ``TF_USE_LEGACY_KERAS=1``).
"""

from tfembsize import (
    controllers,
    data,
    export,
    layers,
    metrics,
    models,
    optimizers,
    plots,
    records,
    rl,
    search,
    surrogates,
    training,
)
from tfembsize._version import __version__
from tfembsize.budget import Budget
from tfembsize.errors import BudgetExceededError, BudgetInfeasibleError, TargetMissedError
from tfembsize.plan import SizePlan

__all__ = [
    "Budget",
    "BudgetExceededError",
    "BudgetInfeasibleError",
    "TargetMissedError",
    "SizePlan",
    "controllers",
    "data",
    "export",
    "layers",
    "metrics",
    "models",
    "records",
    "rl",
    "optimizers",
    "plots",
    "search",
    "surrogates",
    "training",
    "__version__",
]
