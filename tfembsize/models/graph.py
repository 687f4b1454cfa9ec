"""The user-item interaction graph of NGCF and LightGCN, and their common base class.

Nodes are the users ``0..U-1`` followed by the items ``U..U+I-1``; each training pair
``(u, i)`` gives the two edges ``u -> U+i`` and ``U+i -> u`` of the bipartite adjacency ``A``.

* LightGCN (He et al., SIGIR 2020): ``D^-1/2 A D^-1/2`` without self loops, ``D`` the
  degrees of ``A``.
* NGCF (Wang et al., SIGIR 2019): ``D^-1 (A + I)``, ``D`` the degrees of ``A + I`` (each
  row sums to 1).

Nodes without an edge get an all-zero row (LightGCN) or only their self loop (NGCF).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import tensorflow as tf

from tfembsize.models.base import DotProductModel, as_ids

__all__ = [
    "NORMALIZATIONS",
    "interaction_edges",
    "normalized_adjacency",
    "sparse_matmul",
    "GraphModel",
]

logger = logging.getLogger(__name__)

NORMALIZATIONS = ("symmetric", "left")
"""``"symmetric"``: ``D^-1/2 M D^-1/2``; ``"left"``: ``D^-1 M`` (row-normalised)."""


def interaction_edges(interactions: Any) -> tuple[np.ndarray, np.ndarray, int, int]:
    """``(users, items, num_users, num_items)`` of an `Interactions` (unique pairs).

    Accepts a `tfembsize.data.Interactions` or any object with ``users``, ``items``,
    ``num_users`` and ``num_items``. Repeated pairs are kept once.

    Raises:
        TypeError: the object lacks one of the attributes.
        ValueError: an id is outside ``[0, num_users)`` / ``[0, num_items)``.
    """
    for attr in ("users", "items", "num_users", "num_items"):
        if not hasattr(interactions, attr):
            raise TypeError(
                "`interactions` must be a tfembsize.data.Interactions (users, items, "
                f"num_users, num_items). Received {type(interactions).__name__} without "
                f"`{attr}`."
            )
    users = np.asarray(interactions.users, dtype=np.int64).ravel()
    items = np.asarray(interactions.items, dtype=np.int64).ravel()
    nu, ni = int(interactions.num_users), int(interactions.num_items)
    if users.shape != items.shape:
        raise ValueError(f"`users` and `items` differ in length: {users.size} vs {items.size}.")
    for arr, name, n in ((users, "users", nu), (items, "items", ni)):
        if arr.size and (arr.min() < 0 or arr.max() >= n):
            bad = int(arr[(arr < 0) | (arr >= n)][0])
            raise ValueError(f"`{name}` ids must be in [0, {n}). Received id {bad}.")
    key = np.unique(users * max(ni, 1) + items)
    return key // max(ni, 1), key % max(ni, 1), nu, ni


def normalized_adjacency(
    interactions: Any, *, normalization: str = "symmetric", self_loops: bool = False
) -> tf.SparseTensor:
    """The normalised bipartite adjacency ``[(U+I), (U+I)]`` as a `tf.SparseTensor`.

    Args:
        interactions: the training pairs (`tfembsize.data.Interactions`).
        normalization: ``"symmetric"`` (``D^-1/2 M D^-1/2``, LightGCN) or ``"left"``
            (``D^-1 M``, NGCF), where ``M = A`` or ``A + I`` and ``D`` the degrees of ``M``.
        self_loops: add ``I`` (NGCF) before normalising.

    Returns:
        A float32 `tf.SparseTensor` in canonical (row-major) order.

    Example:
        >>> from tfembsize.data import Interactions
        >>> data = Interactions([0, 1], [0, 0], num_users=2, num_items=1)
        >>> tf.sparse.to_dense(normalized_adjacency(data)).numpy().astype(float).round(3).tolist()
        [[0.0, 0.0, 0.707], [0.0, 0.0, 0.707], [0.707, 0.707, 0.0]]
    """
    if normalization not in NORMALIZATIONS:
        raise ValueError(
            f"`normalization` must be one of {NORMALIZATIONS}. Received: "
            f"normalization={normalization!r}"
        )
    users, items, nu, ni = interaction_edges(interactions)
    n = nu + ni
    rows = [users, items + nu]
    cols = [items + nu, users]
    if self_loops:
        rows.append(np.arange(n, dtype=np.int64))
        cols.append(np.arange(n, dtype=np.int64))
    row = np.concatenate(rows)
    col = np.concatenate(cols)
    deg = np.bincount(row, minlength=n).astype(np.float64)
    if normalization == "symmetric":
        inv = np.zeros(n)
        np.power(deg, -0.5, out=inv, where=deg > 0)
        values = inv[row] * inv[col]
    else:
        inv = np.zeros(n)
        np.divide(1.0, deg, out=inv, where=deg > 0)
        values = inv[row]
    order = np.lexsort((col, row))
    indices = np.stack([row[order], col[order]], axis=1)
    return tf.SparseTensor(
        indices=tf.constant(indices, tf.int64),
        values=tf.constant(values[order], tf.float32),
        dense_shape=[n, n],
    )


def sparse_matmul(adjacency: tf.SparseTensor, *, symmetric: bool = False) -> Any:
    """A function ``x -> adjacency @ x`` for dense ``x``, fast on CPU and GPU.

    The matrix is converted once to TensorFlow's CSR format
    (``SparseTensorToCSRSparseMatrix`` + ``SparseMatrixMatMul``, about 8x faster than
    ``tf.sparse.sparse_dense_matmul`` on CPU for a 1M-nonzero graph with 128 columns), and the
    gradient is only taken with respect to ``x``: ``adjacency^T @ g`` (``adjacency @ g`` when
    ``symmetric``). ``adjacency`` must be in canonical row-major order (as
    `normalized_adjacency` and ``tf.sparse.retain`` of it are).

    Args:
        adjacency: a float32 `tf.SparseTensor` ``[n, n]``.
        symmetric: True if ``adjacency`` equals its transpose (LightGCN), which saves the
            transposed product in the backward pass.

    Returns:
        The product function; call it for every layer of a propagation.
    """
    csr = tf.raw_ops.SparseTensorToCSRSparseMatrix(
        indices=adjacency.indices, values=adjacency.values, dense_shape=adjacency.dense_shape
    )

    @tf.custom_gradient
    def matmul(x: tf.Tensor) -> Any:
        y = tf.raw_ops.SparseMatrixMatMul(a=csr, b=x)

        def grad(g: tf.Tensor) -> tf.Tensor:
            return tf.raw_ops.SparseMatrixMatMul(a=csr, b=g, transpose_a=not symmetric)

        return y, grad

    return matmul


class GraphModel(DotProductModel):
    """A dot-product backbone that propagates the embedding tables over the interaction graph.

    The graph is built from the *training* interactions (``interactions`` argument or
    `set_graph`) and held as a `tf.SparseTensor` constant, not as a weight: it is **not**
    saved by ``get_config``, ``save_weights`` or checkpoints. After ``from_config`` or
    ``load_model``, call ``set_graph(split.train)`` before training or scoring
    (`tfembsize.models.train_bpr` does it itself). Masks are applied to the raw tables before
    propagation (``masked_table()``), so a masked coordinate never reaches a neighbour.

    Subclasses set ``_normalization`` / ``_self_loops`` and implement ``_propagate``.
    """

    _normalization = "symmetric"
    _self_loops = False

    def __init__(
        self,
        user_embedding: Any,
        item_embedding: Any,
        interactions: Any = None,
        *,
        l2: float,
        **kwargs: Any,
    ) -> None:
        super().__init__(user_embedding, item_embedding, l2=l2, **kwargs)
        # Sparse-dense matmul has no XLA kernel: keep Keras 3's fit(jit_compile="auto") off
        # XLA on GPU machines.
        self.supports_jit = False
        self._adjacency: tf.SparseTensor | None = None
        self._num_edges = 0
        if interactions is not None:
            self.set_graph(interactions)

    # Graph ----------------------------------------------------------------------------------
    def set_graph(self, interactions: Any) -> None:
        """Builds the normalised adjacency from training interactions.

        Args:
            interactions: `tfembsize.data.Interactions` with this model's ``num_users`` and
                ``num_items`` (usually ``split.train``; ``split.train_validation()`` for a
                parity-mode refit).

        Raises:
            ValueError: the interactions have other user/item counts than the tables.
        """
        nu = int(getattr(interactions, "num_users", -1))
        ni = int(getattr(interactions, "num_items", -1))
        if (nu, ni) != (self.num_users, self.num_items):
            raise ValueError(
                f"{type(self).__name__}: the graph must have num_users={self.num_users} and "
                f"num_items={self.num_items} (the table sizes). Received interactions with "
                f"num_users={nu}, num_items={ni}."
            )
        self._adjacency = normalized_adjacency(
            interactions, normalization=self._normalization, self_loops=self._self_loops
        )
        self._num_edges = int(np.asarray(interactions.users).size)
        # Compiled Keras functions captured the previous graph.
        self.train_function = None
        self.predict_function = None
        self.test_function = None
        logger.debug("%s: graph with %d interactions.", self.name, self._num_edges)

    @property
    def has_graph(self) -> bool:
        """Whether `set_graph` has been called."""
        return self._adjacency is not None

    @property
    def adjacency(self) -> tf.SparseTensor:
        """The normalised adjacency ``[(U+I), (U+I)]``.

        Raises:
            ValueError: no graph yet.
        """
        if self._adjacency is None:
            raise ValueError(
                f"{type(self).__name__} has no interaction graph: call "
                "`model.set_graph(split.train)` (the graph is not part of the saved config or "
                "weights)."
            )
        return self._adjacency

    def ego_embeddings(self, training: bool = False) -> tf.Tensor:
        """Layer 0: the masked user table stacked on the masked item table ``[U+I, d]``.

        Tables that lift and normalise their rows (`tfembsize.layers.LadderEmbedding`) give
        every row lifted to the top width, normalised as ``training`` says, before any
        propagation.
        """
        from tfembsize.models.base import embedding_table

        return tf.concat(
            [
                embedding_table(self.user_embedding, training),
                embedding_table(self.item_embedding, training),
            ],
            axis=0,
        )

    def _propagate(self, training: bool) -> tuple[tf.Tensor, tf.Tensor]:
        """``(final [U+I, D], ego [U+I, d])``."""
        raise NotImplementedError

    def representations(self, training: bool = False) -> tuple[tf.Tensor, tf.Tensor]:
        """Final user and item representations after propagation."""
        final, _ = self._propagate(training)
        return final[: self.num_users], final[self.num_users :]

    def _batch_rows(
        self, table: tf.Tensor, users: tf.Tensor, pos: tf.Tensor, neg: tf.Tensor
    ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        offset = tf.constant(self.num_users, tf.int32)
        return (
            tf.gather(table, as_ids(users)),
            tf.gather(table, as_ids(pos) + offset),
            tf.gather(table, as_ids(neg) + offset),
        )

    def get_config(self) -> dict:
        """Constructor arguments except the graph (see the class docstring)."""
        return super().get_config()
