"""MF: BPR matrix factorisation over (masked) user and item tables."""

from __future__ import annotations

from typing import Any

import tensorflow as tf

from tfembsize._keras import register_serializable
from tfembsize.models._factory import make_tables, normal_001
from tfembsize.models.base import (
    BPRTerms,
    DotProductModel,
    _squared_norms,
    _takes_training,
    as_ids,
    embedding_table,
    embedding_width,
    lookup_rows,
)

__all__ = ["MF"]


@register_serializable
class MF(DotProductModel):
    """Matrix factorisation trained with BPR: the score is ``<e_u, e_i>``.

    ``e_u`` and ``e_i`` are the rows the layers return (masked rows for searchable layers), so
    MF is LightGCN with zero propagation layers. The L2 term is
    ``l2 * (|e_u|^2 + |e_i|^2 + |e_j|^2)`` summed over the batch and divided by the batch size,
    on the masked rows: masked coordinates are neither penalised nor updated. No bias terms.

    Recommended initialiser (as LightGCN): ``RandomNormal(0, 0.01)``; `MF.create` uses it.

    Args:
        user_embedding: user table, any tfembsize embedding layer or ``Embedding``
            (``input_dim = num_users``).
        item_embedding: item table (same ``output_dim``).
        l2: L2 weight (default 1e-4, LightGCN's).
        **kwargs: ``keras.Model`` arguments (``name``).

    Example:
        >>> model = MF.create(num_users=100, num_items=50, embedding_dim=16)
        >>> model.score_users(tf.constant([0, 1])).shape
        TensorShape([2, 50])

    References:
        Rendle et al., "BPR: Bayesian Personalized Ranking from Implicit Feedback", UAI 2009.
    """

    backbone = "mf"

    def __init__(
        self, user_embedding: Any, item_embedding: Any, *, l2: float = 1e-4, **kwargs: Any
    ) -> None:
        kwargs.setdefault("name", "mf")
        super().__init__(user_embedding, item_embedding, l2=l2, **kwargs)
        if embedding_width(user_embedding) != embedding_width(item_embedding):
            raise ValueError(
                "MF needs user and item tables of the same width. Received: "
                f"user output_dim={embedding_width(user_embedding)}, item output_dim="
                f"{embedding_width(item_embedding)}."
            )
        self._finish_init()

    @classmethod
    def create(
        cls,
        num_users: int,
        num_items: int,
        embedding_dim: int = 128,
        *,
        embedding_cls: Any = None,
        l2: float = 1e-4,
        **layer_kwargs: Any,
    ) -> MF:
        """MF with two tables of the recommended initialiser (``RandomNormal(0, 0.01)``).

        Args:
            num_users: user rows.
            num_items: item rows.
            embedding_dim: full width ``d_max``.
            embedding_cls: layer class (default `tfembsize.layers.MaskedEmbedding`).
            l2: L2 weight.
            **layer_kwargs: more layer arguments (e.g. ``sparsity`` for `BudgetedEmbedding`).
        """
        user, item = make_tables(
            num_users, num_items, embedding_dim, embedding_cls, normal_001, layer_kwargs
        )
        return cls(user, item, l2=l2)

    def embed_users(self, user_ids: Any) -> tf.Tensor:
        """Masked user rows ``[b, D]``."""
        return tf.cast(self.user_embedding(as_ids(user_ids)), tf.float32)

    def embed_items(self, item_ids: Any) -> tf.Tensor:
        """Masked item rows ``[b, D]``."""
        return tf.cast(self.item_embedding(as_ids(item_ids)), tf.float32)

    def representations(self, training: bool = False) -> tuple[tf.Tensor, tf.Tensor]:
        """The two masked tables."""
        return (
            embedding_table(self.user_embedding, training),
            embedding_table(self.item_embedding, training),
        )

    def score_users(self, user_ids: Any) -> tf.Tensor:
        """Scores ``[b, num_items]``: ``e_u`` times every masked item row."""
        return tf.matmul(
            self.embed_users(user_ids), embedding_table(self.item_embedding), transpose_b=True
        )

    def score_pairs(self, users: tf.Tensor, items: tf.Tensor, training: bool = False) -> tf.Tensor:
        """``<e_u, e_i>`` for each pair."""
        u = lookup_rows(self.user_embedding, as_ids(users), training)
        return tf.reduce_sum(u * lookup_rows(self.item_embedding, as_ids(items), training), axis=-1)

    def bpr_terms(
        self, users: tf.Tensor, pos_items: tf.Tensor, neg_items: tf.Tensor, training: bool
    ) -> BPRTerms:
        """Pair scores and ``l2 * squared norms of the masked rows / batch``.

        A table that normalises over the batch (`tfembsize.layers.LadderEmbedding` in
        training) looks up the positive and negative items together, as one batch.
        """
        u = lookup_rows(self.user_embedding, as_ids(users), training)
        b = tf.shape(u)[0]
        if _takes_training(self.item_embedding):
            items = tf.concat([as_ids(pos_items), as_ids(neg_items)], axis=0)
            both = lookup_rows(self.item_embedding, items, training)
            p, n = both[:b], both[b:]
        else:
            p = lookup_rows(self.item_embedding, as_ids(pos_items))
            n = lookup_rows(self.item_embedding, as_ids(neg_items))
        batch = tf.cast(b, tf.float32)
        reg = self.l2 * _squared_norms(u, p, n) / batch
        return BPRTerms(tf.reduce_sum(u * p, -1), tf.reduce_sum(u * n, -1), reg)
