"""Interaction data: loaders, the per-user split, synthetic data, BPR sampling and streams.

`RatingStream` (with `load_rating_stream`, `rating_stream_dataset`) is a time-ordered stream
of ratings for test-then-train evaluation (ESAPN's own setting).

Example:
    >>> import tfembsize as tes
    >>> split = tes.data.load_dataset("synthetic").split(0.5, 0.25, 0.25, seed=42)
    >>> ds = tes.data.bpr_dataset(split.train, batch_size=1024, seed=0)
"""

from tfembsize.data.interactions import PHASES, Interactions, Split
from tfembsize.data.loaders import (
    DATASETS,
    EmptyDataFileError,
    MalformedFileError,
    default_data_root,
    load_dataset,
    load_lightgcn,
    load_movielens,
)
from tfembsize.data.ratings import (
    RATING_RANGE,
    RatingStream,
    load_rating_stream,
    rating_stream_dataset,
)
from tfembsize.data.sampler import BPRSampler, bpr_dataset
from tfembsize.data.stream import InteractionStream, stream_dataset
from tfembsize.data.synthetic import synthetic

__all__ = [
    "BPRSampler",
    "DATASETS",
    "Interactions",
    "EmptyDataFileError",
    "InteractionStream",
    "MalformedFileError",
    "PHASES",
    "RATING_RANGE",
    "RatingStream",
    "Split",
    "bpr_dataset",
    "default_data_root",
    "load_dataset",
    "load_lightgcn",
    "load_movielens",
    "load_rating_stream",
    "rating_stream_dataset",
    "stream_dataset",
    "synthetic",
]
