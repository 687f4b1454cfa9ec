"""LightGCN: linear propagation of the (masked) tables over the normalised graph."""

from __future__ import annotations

from typing import Any

import tensorflow as tf

from tfembsize._keras import register_serializable
from tfembsize.models._factory import make_tables, normal_001
from tfembsize.models.base import BPRTerms, _squared_norms, embedding_width
from tfembsize.models.graph import GraphModel, sparse_matmul

__all__ = ["LightGCN"]


@register_serializable
class LightGCN(GraphModel):
    """LightGCN (He et al., SIGIR 2020) trained with BPR.

    Layer 0 is the masked tables stacked, ``E_0 = [U_masked; I_masked]``; each of the
    ``num_layers`` layers multiplies by ``Â = D^-1/2 A D^-1/2`` (the bipartite adjacency of the
    training pairs, no self loops): ``E_k = Â E_{k-1}``. The final representation is the mean
    ``(E_0 + ... + E_K) / (K + 1)`` and the score the dot product of the final user and item
    rows. The L2 term is ``l2 * (|e0_u|^2 + |e0_i|^2 + |e0_j|^2) / batch`` on the masked
    layer-0 rows. The mask is applied before propagation, so a masked coordinate of one node
    never reaches its neighbours, and gets no gradient. No bias terms.

    The adjacency is built from ``interactions`` (the training split) and is not saved with
    the config or the weights: call ``set_graph(split.train)`` after reloading.

    Recommended initialiser (the LightGCN authors'): ``RandomNormal(0, 0.01)``;
    `LightGCN.create` uses it.

    Args:
        user_embedding: user table (any tfembsize embedding layer or ``Embedding``).
        item_embedding: item table (same width).
        interactions: training `tfembsize.data.Interactions` for the graph (or None, then
            call `set_graph` before use).
        num_layers: propagation layers (default 3).
        l2: L2 weight (default 1e-4).
        **kwargs: ``keras.Model`` arguments (``name``).

    Example:
        >>> from tfembsize.data import Interactions
        >>> train = Interactions([0, 0, 1], [0, 1, 1], num_users=2, num_items=3)
        >>> model = LightGCN.create(train, embedding_dim=8)
        >>> [m.shape.as_list() for m in model.representations()]
        [[2, 8], [3, 8]]

    References:
        He et al., "LightGCN: Simplifying and Powering Graph Convolution Network for
        Recommendation", SIGIR 2020.
    """

    backbone = "lightgcn"
    _normalization = "symmetric"
    _self_loops = False

    def __init__(
        self,
        user_embedding: Any,
        item_embedding: Any,
        interactions: Any = None,
        *,
        num_layers: int = 3,
        l2: float = 1e-4,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("name", "lightgcn")
        if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 0:
            raise ValueError(
                f"`num_layers` must be a non-negative integer. Received: num_layers={num_layers!r}"
            )
        super().__init__(user_embedding, item_embedding, interactions, l2=l2, **kwargs)
        if embedding_width(user_embedding) != embedding_width(item_embedding):
            raise ValueError(
                "LightGCN needs user and item tables of the same width. Received: "
                f"{embedding_width(user_embedding)} and {embedding_width(item_embedding)}."
            )
        self.num_layers = num_layers
        self._finish_init()

    @classmethod
    def create(
        cls,
        interactions: Any,
        embedding_dim: int = 128,
        *,
        embedding_cls: Any = None,
        num_layers: int = 3,
        l2: float = 1e-4,
        **layer_kwargs: Any,
    ) -> LightGCN:
        """LightGCN with ``RandomNormal(0, 0.01)`` tables sized from ``interactions``."""
        user, item = make_tables(
            interactions.num_users,
            interactions.num_items,
            embedding_dim,
            embedding_cls,
            normal_001,
            layer_kwargs,
        )
        return cls(user, item, interactions, num_layers=num_layers, l2=l2)

    def _propagate(self, training: bool) -> tuple[tf.Tensor, tf.Tensor]:
        ego = self.ego_embeddings(training)
        if self.num_layers == 0:
            return ego, ego
        matmul = sparse_matmul(self.adjacency, symmetric=True)
        acc = ego
        e = ego
        for _ in range(self.num_layers):
            e = matmul(e)
            acc = acc + e
        return acc / float(self.num_layers + 1), ego

    def bpr_terms(
        self, users: tf.Tensor, pos_items: tf.Tensor, neg_items: tf.Tensor, training: bool
    ) -> BPRTerms:
        """Dot products of the final rows; L2 on the masked layer-0 rows."""
        final, ego = self._propagate(training)
        u, p, n = self._batch_rows(final, users, pos_items, neg_items)
        u0, p0, n0 = self._batch_rows(ego, users, pos_items, neg_items)
        batch = tf.cast(tf.shape(u)[0], tf.float32)
        reg = self.l2 * _squared_norms(u0, p0, n0) / batch
        return BPRTerms(tf.reduce_sum(u * p, -1), tf.reduce_sum(u * n, -1), reg)

    def get_config(self) -> dict:
        """Constructor arguments except the graph."""
        config = super().get_config()
        config["num_layers"] = self.num_layers
        return config
