"""Training: the BPR recipe, the one compiled loop with its hook seam, checkpoints, callbacks.

`TrainConfig` is the recipe; `train_bpr` the compiled loop (with `TrainingHook`, the per-batch
seam for in-training controllers); `TrainCheckpoint` its crash-safe state; `ValidationRanking`
the ``model.fit`` callback; `train_plan` the shared build -> apply plan -> train -> evaluate
path of search environments and retraining.
"""

from tfembsize.training.callbacks import ValidationRanking
from tfembsize.training.checkpoint import TrainCheckpoint
from tfembsize.training.config import (
    PRESETS,
    StaircaseDecay,
    TrainConfig,
    default_config,
    monitor_value,
)
from tfembsize.training.hooks import HookCallback, TrainingHook
from tfembsize.training.loop import train_bpr
from tfembsize.training.outcome import EvalRecord, NonFiniteLossError, Outcome, TrainResult
from tfembsize.training.plan_training import (
    model_scorer,
    resolve_config,
    steps_per_epoch,
    train_plan,
)

__all__ = [
    "PRESETS",
    "EvalRecord",
    "HookCallback",
    "NonFiniteLossError",
    "Outcome",
    "StaircaseDecay",
    "TrainCheckpoint",
    "TrainConfig",
    "TrainResult",
    "TrainingHook",
    "ValidationRanking",
    "default_config",
    "model_scorer",
    "monitor_value",
    "resolve_config",
    "steps_per_epoch",
    "train_bpr",
    "train_plan",
]
