"""Recommender backbones trained with BPR, and their training recipes.

`RatingClassifier` is ESAPN's streaming rating classifier (trained test-then-train on a
`tfembsize.data.RatingStream`).

`MF`, `NCF`, `NGCF` and `LightGCN` take their embedding layers as constructor arguments (any
tfembsize layer or a plain ``Embedding``) and implement the retrieval protocol
(``embed_users``, ``embed_items``, ``representations``, ``score_users``). `train_bpr` trains one
with early stopping on validation (test is never used for a decision); `ValidationRanking`
does the same inside ``model.fit``.

Example:
    >>> import tfembsize as tes
    >>> split = tes.data.load_dataset("synthetic").split(0.5, 0.25, 0.25, seed=42)
    >>> model = tes.models.MF.create(split.num_users, split.num_items, 64)
    >>> result = tes.models.train_bpr(model, split, tes.metrics.RankingEvaluator(split),
    ...                               config=tes.models.TrainConfig(max_steps=2000))
"""

from tfembsize.models.base import BPRLosses, BPRModel, BPRTerms, DotProductModel, embedding_table
from tfembsize.models.baselines import popularity_scorer
from tfembsize.models.graph import GraphModel, normalized_adjacency
from tfembsize.models.lightgcn import LightGCN
from tfembsize.models.mf import MF
from tfembsize.models.ncf import GMF_MODES, NCF
from tfembsize.models.ngcf import NGCF
from tfembsize.models.rating import TASKS, RatingClassifier, RatingLosses
from tfembsize.training import (
    PRESETS,
    EvalRecord,
    NonFiniteLossError,
    StaircaseDecay,
    TrainConfig,
    TrainResult,
    ValidationRanking,
    default_config,
    monitor_value,
    train_bpr,
)

__all__ = [
    "BPRLosses",
    "BPRModel",
    "BPRTerms",
    "DotProductModel",
    "EvalRecord",
    "GMF_MODES",
    "GraphModel",
    "LightGCN",
    "MF",
    "NCF",
    "NGCF",
    "NonFiniteLossError",
    "RatingClassifier",
    "RatingLosses",
    "TASKS",
    "PRESETS",
    "StaircaseDecay",
    "TrainConfig",
    "TrainResult",
    "ValidationRanking",
    "default_config",
    "embedding_table",
    "monitor_value",
    "normalized_adjacency",
    "popularity_scorer",
    "train_bpr",
]
