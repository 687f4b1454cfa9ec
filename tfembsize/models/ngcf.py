"""NGCF: graph propagation with sum and bi-interaction messages."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from tfembsize._keras import keras, register_serializable
from tfembsize.models._factory import glorot, make_tables
from tfembsize.models.base import BPRTerms, _squared_norms, embedding_width
from tfembsize.models.graph import GraphModel, sparse_matmul

__all__ = ["NGCF"]


def _check_rate(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)):
        raise ValueError(f"`{name}` must be a float in [0, 1). Received: {name}={value!r}")
    if not 0.0 <= float(value) < 1.0:
        raise ValueError(f"`{name}` must be in [0, 1). Received: {name}={value!r}")
    return float(value)


@register_serializable
class NGCF(GraphModel):
    """NGCF (Wang et al., SIGIR 2019) trained with BPR.

    With ``L = D^-1 (A + I)`` (row-normalised adjacency of the training pairs with self loops),
    ``E_0`` the masked tables stacked, and ``W1_k``, ``W2_k`` dense layers (with biases) of
    width ``layer_sizes[k]``, each layer computes

        S = L E_{k-1}
        E_k = LeakyReLU_0.2( W1_k(S) + W2_k(E_{k-1} * S) )

    then message dropout (rate ``message_dropout``) on ``E_k``. Node dropout drops each
    nonzero of ``L`` with probability ``node_dropout`` and rescales the rest by
    ``1 / (1 - node_dropout)``. **Both dropouts act only in training** (the official code also
    drops at evaluation, which makes its scores noisy; this library does not). The final
    representation is ``[E_0, n(E_1), ..., n(E_K)]`` with ``n`` the row-wise L2 normalisation (512
    dims for three layers of 128), the score a dot product, and the L2 term
    ``l2 * (|f_u|^2 + |f_i|^2 + |f_j|^2) / batch`` on the final rows. The mask is applied to
    the raw tables before propagation. Dropout draws are stateless, seeded by ``seed`` and a
    counter that is a (non-trainable) weight of the model, so runs repeat exactly.

    The adjacency is not saved with the config or the weights: call ``set_graph(split.train)``
    after reloading.

    Recommended initialiser (the NGCF authors'): Xavier (``GlorotUniform``); `NGCF.create`
    uses it.

    Args:
        user_embedding: user table (any tfembsize embedding layer or ``Embedding``).
        item_embedding: item table (same width).
        interactions: training `tfembsize.data.Interactions` for the graph (or None, then
            call `set_graph` before use).
        layer_sizes: widths of the propagation layers (default three of 128).
        message_dropout: dropout rate on each layer's output (default 0.1).
        node_dropout: dropout rate on the nonzeros of ``L`` (default 0.1).
        l2: L2 weight (default 1e-3).
        seed: seed of the dropout draws.
        **kwargs: ``keras.Model`` arguments (``name``).

    Example:
        >>> from tfembsize.data import Interactions
        >>> train = Interactions([0, 0, 1], [0, 1, 1], num_users=2, num_items=3)
        >>> model = NGCF.create(train, embedding_dim=8, layer_sizes=(8, 8))
        >>> model.score_users(tf.constant([0, 1])).shape.as_list()
        [2, 3]

    References:
        Wang et al., "Neural Graph Collaborative Filtering", SIGIR 2019.
    """

    backbone = "ngcf"
    _normalization = "left"
    _self_loops = True

    def __init__(
        self,
        user_embedding: Any,
        item_embedding: Any,
        interactions: Any = None,
        *,
        layer_sizes: Sequence[int] = (128, 128, 128),
        message_dropout: float = 0.1,
        node_dropout: float = 0.1,
        l2: float = 1e-3,
        seed: int = 0,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("name", "ngcf")
        super().__init__(user_embedding, item_embedding, interactions, l2=l2, **kwargs)
        d = embedding_width(user_embedding)
        if embedding_width(item_embedding) != d:
            raise ValueError(
                "NGCF needs user and item tables of the same width. Received: "
                f"{d} and {embedding_width(item_embedding)}."
            )
        sizes = tuple(layer_sizes)
        if not sizes or any(
            isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 1 for s in sizes
        ):
            raise ValueError(
                "`layer_sizes` must be a non-empty sequence of positive integers. Received: "
                f"layer_sizes={layer_sizes!r}"
            )
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise ValueError(f"`seed` must be an integer. Received: seed={seed!r}")
        self.layer_sizes = tuple(int(s) for s in sizes)
        self.message_dropout = _check_rate("message_dropout", message_dropout)
        self.node_dropout = _check_rate("node_dropout", node_dropout)
        self.seed = int(seed)
        self.sum_layers = []
        self.bi_layers = []
        width = d
        for k, size in enumerate(self.layer_sizes):
            w1 = keras.layers.Dense(size, kernel_initializer=glorot(), name=f"gc_{k}")
            w2 = keras.layers.Dense(size, kernel_initializer=glorot(), name=f"bi_{k}")
            w1.build((None, width))
            w2.build((None, width))
            self.sum_layers.append(w1)
            self.bi_layers.append(w2)
            width = size
        self.output_dim = d + sum(self.layer_sizes)
        self.dropout_counter = self.add_weight(
            name="dropout_counter", shape=(), dtype="int64", initializer="zeros", trainable=False
        )
        self._finish_init()

    @classmethod
    def create(
        cls,
        interactions: Any,
        embedding_dim: int = 128,
        *,
        embedding_cls: Any = None,
        layer_sizes: Sequence[int] = (128, 128, 128),
        message_dropout: float = 0.1,
        node_dropout: float = 0.1,
        l2: float = 1e-3,
        seed: int = 0,
        **layer_kwargs: Any,
    ) -> NGCF:
        """NGCF with Xavier-initialised tables sized from ``interactions``."""
        user, item = make_tables(
            interactions.num_users,
            interactions.num_items,
            embedding_dim,
            embedding_cls,
            glorot,
            layer_kwargs,
        )
        return cls(
            user,
            item,
            interactions,
            layer_sizes=layer_sizes,
            message_dropout=message_dropout,
            node_dropout=node_dropout,
            l2=l2,
            seed=seed,
        )

    def _seeds(self) -> tf.Tensor:
        """A fresh ``[n_layers + 1, 2]`` block of stateless seeds (advances the counter)."""
        count = self.dropout_counter.assign_add(1)
        base = tf.stack([tf.constant(self.seed, tf.int64), count])
        return tf.random.experimental.stateless_split(base, num=len(self.layer_sizes) + 1)

    def _propagate(self, training: bool) -> tuple[tf.Tensor, tf.Tensor]:
        ego = self.ego_embeddings(training)
        adj = self.adjacency
        dropping = training and (self.message_dropout > 0 or self.node_dropout > 0)
        seeds = self._seeds() if dropping else None
        if seeds is not None and self.node_dropout > 0:  # training with node dropout
            keep = 1.0 - self.node_dropout
            u = tf.random.stateless_uniform(tf.shape(adj.values), seed=seeds[0])
            adj = tf.sparse.retain(adj, u < keep)
            adj = tf.SparseTensor(adj.indices, adj.values / keep, adj.dense_shape)
        matmul = sparse_matmul(adj)
        outputs = [ego]
        e = ego
        for k in range(len(self.layer_sizes)):
            side = matmul(e)
            h = self.sum_layers[k](side) + self.bi_layers[k](e * side)
            h = tf.nn.leaky_relu(h, alpha=0.2)
            if seeds is not None and self.message_dropout > 0:  # training with message dropout
                h = tf.nn.experimental.stateless_dropout(
                    h, rate=self.message_dropout, seed=seeds[k + 1]
                )
            e = h
            outputs.append(tf.math.l2_normalize(h, axis=1))
        return tf.concat(outputs, axis=1), ego

    def bpr_terms(
        self, users: tf.Tensor, pos_items: tf.Tensor, neg_items: tf.Tensor, training: bool
    ) -> BPRTerms:
        """Dot products of the final rows; L2 on the final rows."""
        final, _ = self._propagate(training)
        u, p, n = self._batch_rows(final, users, pos_items, neg_items)
        batch = tf.cast(tf.shape(u)[0], tf.float32)
        reg = self.l2 * _squared_norms(u, p, n) / batch
        return BPRTerms(tf.reduce_sum(u * p, -1), tf.reduce_sum(u * n, -1), reg)

    def get_config(self) -> dict:
        """Constructor arguments except the graph."""
        config = super().get_config()
        config.update(
            {
                "layer_sizes": list(self.layer_sizes),
                "message_dropout": self.message_dropout,
                "node_dropout": self.node_dropout,
                "seed": self.seed,
            }
        )
        return config
