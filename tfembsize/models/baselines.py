"""Non-learned reference scorers: report the popularity baseline beside every result."""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow as tf

__all__ = ["popularity_scorer"]


def popularity_scorer(interactions: Any) -> tuple[tf.Tensor, tf.Tensor]:
    """Ranks items by their number of training interactions, the same for every user.

    Returns matrices for `RankingEvaluator.evaluate`: a ``[num_users, 1]`` column of ones and
    a ``[num_items, 1]`` column of item frequencies, so the score of (u, i) is ``f_i``. A model
    that does not beat this on validation did not train (a too-large learning rate, for
    example, can leave BPR-MF at the popularity level).

    Args:
        interactions: the training `tfembsize.data.Interactions` (``split.train``).

    Example:
        >>> evaluator.evaluate(popularity_scorer(split.train))  # doctest: +SKIP
    """
    freq = np.bincount(
        np.asarray(interactions.items, dtype=np.int64), minlength=int(interactions.num_items)
    )
    users = tf.ones([int(interactions.num_users), 1], tf.float32)
    items = tf.constant(freq.astype(np.float32)[:, None])
    return users, items
