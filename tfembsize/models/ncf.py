"""NCF (NeuMF) trained with BPR, with one size per entity shared by its two tables."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import tensorflow as tf

from tfembsize._keras import keras, register_serializable
from tfembsize.layers.utils import is_searchable
from tfembsize.models._factory import glorot, make_table
from tfembsize.models.base import (
    BPRModel,
    BPRTerms,
    _build_layer,
    _squared_norms,
    as_ids,
    embedding_rows,
    embedding_table,
    embedding_width,
    serialize_layer,
)

__all__ = ["NCF", "GMF_MODES"]

GMF_MODES = ("shared", "uniform")
"""How the GMF tables are sized from the MLP tables' per-entity sizes (see `NCF`)."""

_SCORE_CHUNK_ELEMENTS = 1 << 24  # users x items x hidden floats per chunk of score_users


@register_serializable
class NCF(BPRModel):
    """NeuMF (GMF + MLP; He et al., WWW 2017) trained with BPR, as in the CIESS and BET papers.

    For user ``u`` and item ``i`` with GMF rows ``g_u, g_i`` and MLP rows ``m_u, m_i`` (masked
    rows of the four tables):

        gmf = g_u * g_i                                   (width d)
        mlp = ReLU(W [m_u; m_i] + b)                      (W: 2d -> hidden)
        score = w^T [mlp; gmf]                            (no bias)

    The L2 term is ``l2 * (|g_u|^2 + |m_u|^2 + |g_i|^2 + |m_i|^2 + |g_j|^2 + |m_j|^2) / batch``
    over the masked rows used. No user or item bias terms.

    **Sizes of the two tables.** The MLP tables (``user_embedding_mlp``,
    ``item_embedding_mlp``) carry the per-entity sizes a controller chooses; the GMF tables
    (``user_embedding``, ``item_embedding``) follow them:

    * ``ncf_gmf_mode="shared"`` (default, this library's convention; the official CIESS code
      leaves the GMF tables unmasked): each entity has one size for both of its tables;
    * ``ncf_gmf_mode="uniform"`` (the official BET code): every GMF row has the same size,
      ``floor(sum of MLP sizes / (num_users + num_items))``, the MLP tables' mean, so both
      tables have the same overall density.

    Both tables count in the budget: with four searchable tables a `SizePlan` covers ``2N``
    rows, so ``Budget.max_params_for(plan.num_rows())`` is ``floor((1 - c) * 2 * d_max * N)``.
    Build plans with `size_plan` (or complete a plan of the MLP tables with `expand_plan`);
    the tie is checked before training (`check_sizes`) and asserted in every training step.

    Recommended initialiser (the CIESS and BET authors' code): Xavier (``GlorotUniform``);
    `NCF.create` uses it.

    Args:
        user_embedding: GMF user table.
        item_embedding: GMF item table.
        user_embedding_mlp: MLP user table (same rows as ``user_embedding``).
        item_embedding_mlp: MLP item table.
        hidden_units: width of the MLP layer (default: the MLP tables' width, 128 in the
            papers).
        ncf_gmf_mode: ``"shared"`` or ``"uniform"``.
        l2: L2 weight (default 1e-2).
        **kwargs: ``keras.Model`` arguments (``name``).

    Example:
        >>> model = NCF.create(num_users=100, num_items=50, embedding_dim=16)
        >>> plan = model.size_plan(np.full(100, 8), np.full(50, 4))
        >>> plan.apply(model)

    References:
        He et al., "Neural Collaborative Filtering", WWW 2017.
    """

    backbone = "ncf"

    def __init__(
        self,
        user_embedding: Any,
        item_embedding: Any,
        user_embedding_mlp: Any,
        item_embedding_mlp: Any,
        *,
        hidden_units: int | None = None,
        ncf_gmf_mode: str = "shared",
        l2: float = 1e-2,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("name", "ncf")
        super().__init__(user_embedding, item_embedding, l2=l2, **kwargs)
        if ncf_gmf_mode not in GMF_MODES:
            raise ValueError(
                f"`ncf_gmf_mode` must be one of {GMF_MODES}. Received: "
                f"ncf_gmf_mode={ncf_gmf_mode!r}"
            )
        for arg, layer, rows in (
            ("user_embedding_mlp", user_embedding_mlp, self.num_users),
            ("item_embedding_mlp", item_embedding_mlp, self.num_items),
        ):
            if not isinstance(layer, keras.layers.Layer):
                raise TypeError(
                    f"`{arg}` must be a Keras embedding layer. Received: {type(layer).__name__}"
                )
            if embedding_rows(layer) != rows:
                raise ValueError(
                    f"`{arg}` must have input_dim={rows} (as the GMF table). Received: "
                    f"input_dim={embedding_rows(layer)}"
                )
        widths = {
            "user_embedding": embedding_width(user_embedding),
            "item_embedding": embedding_width(item_embedding),
            "user_embedding_mlp": embedding_width(user_embedding_mlp),
            "item_embedding_mlp": embedding_width(item_embedding_mlp),
        }
        if len(set(widths.values())) != 1:
            raise ValueError(f"NCF needs four tables of one width. Received widths {widths}.")
        d = widths["user_embedding"]
        hidden = d if hidden_units is None else hidden_units
        if isinstance(hidden, bool) or not isinstance(hidden, (int, np.integer)) or hidden < 1:
            raise ValueError(
                f"`hidden_units` must be a positive integer. Received: hidden_units={hidden!r}"
            )
        self.user_embedding_mlp = user_embedding_mlp
        self.item_embedding_mlp = item_embedding_mlp
        self.hidden_units = int(hidden)
        self.ncf_gmf_mode = ncf_gmf_mode
        self.mlp_layer = keras.layers.Dense(
            self.hidden_units, activation="relu", kernel_initializer=glorot(), name="mlp"
        )
        self.mlp_layer.build((None, 2 * d))
        self.output_layer = keras.layers.Dense(
            1, use_bias=False, kernel_initializer=glorot(), name="prediction"
        )
        self.output_layer.build((None, self.hidden_units + d))
        self.embedding_dim = d
        for layer in (user_embedding_mlp, item_embedding_mlp):
            _build_layer(layer)
        self._finish_init()

    @classmethod
    def create(
        cls,
        num_users: int,
        num_items: int,
        embedding_dim: int = 128,
        *,
        embedding_cls: Any = None,
        hidden_units: int | None = None,
        ncf_gmf_mode: str = "shared",
        l2: float = 1e-2,
        **layer_kwargs: Any,
    ) -> NCF:
        """NCF with four Xavier-initialised tables (see `NCF`).

        The tables are named ``user_embedding``, ``item_embedding`` (GMF),
        ``user_embedding_mlp`` and ``item_embedding_mlp``.
        """
        tables = [
            make_table(rows, embedding_dim, embedding_cls, glorot, name, layer_kwargs)
            for rows, name in (
                (num_users, "user_embedding"),
                (num_items, "item_embedding"),
                (num_users, "user_embedding_mlp"),
                (num_items, "item_embedding_mlp"),
            )
        ]
        return cls(*tables, hidden_units=hidden_units, ncf_gmf_mode=ncf_gmf_mode, l2=l2)

    def embedding_layers(self) -> list:
        """GMF user, GMF item, MLP user, MLP item."""
        return [
            self.user_embedding,
            self.item_embedding,
            self.user_embedding_mlp,
            self.item_embedding_mlp,
        ]

    # Sizes ------------------------------------------------------------------------------
    @property
    def tied_tables(self) -> dict[str, str]:
        """GMF layer name -> the MLP layer name whose sizes it follows (searchable pairs)."""
        ties = {}
        for gmf, mlp in (
            (self.user_embedding, self.user_embedding_mlp),
            (self.item_embedding, self.item_embedding_mlp),
        ):
            if is_searchable(gmf) and is_searchable(mlp):
                ties[gmf.name] = mlp.name
        return ties

    def _gmf_uniform_size(self, user_sizes: np.ndarray, item_sizes: np.ndarray) -> int:
        total = int(np.sum(user_sizes, dtype=np.int64) + np.sum(item_sizes, dtype=np.int64))
        size = total // (self.num_users + self.num_items)
        lo = max(
            int(getattr(self.user_embedding, "min_size", 1)),
            int(getattr(self.item_embedding, "min_size", 1)),
        )
        return int(min(self.embedding_dim, max(lo, size)))

    def gmf_sizes(self, user_sizes: Any, item_sizes: Any) -> tuple[np.ndarray, np.ndarray]:
        """GMF sizes that follow MLP sizes under ``ncf_gmf_mode``."""
        u = np.asarray(user_sizes, dtype=np.int32)
        i = np.asarray(item_sizes, dtype=np.int32)
        if self.ncf_gmf_mode == "shared":
            return u.copy(), i.copy()
        g = self._gmf_uniform_size(u, i)
        return np.full(self.num_users, g, np.int32), np.full(self.num_items, g, np.int32)

    def size_plan(self, user_sizes: Any, item_sizes: Any) -> Any:
        """A `SizePlan` for the four tables from one size per user and per item.

        Args:
            user_sizes: per-user sizes (length ``num_users``) of the MLP user table.
            item_sizes: per-item sizes (length ``num_items``).

        Returns:
            `SizePlan` naming the four layers; the GMF sizes follow ``ncf_gmf_mode``.

        Raises:
            ValueError: a table is not searchable, or a size vector has the wrong length.
        """
        from tfembsize.plan import SizePlan

        for layer in self.embedding_layers():
            if not is_searchable(layer):
                raise ValueError(
                    f"NCF.size_plan needs four searchable tables; {layer.name!r} is a "
                    f"{type(layer).__name__}."
                )
        u = np.asarray(user_sizes)
        i = np.asarray(item_sizes)
        if u.shape != (self.num_users,) or i.shape != (self.num_items,):
            raise ValueError(
                f"`user_sizes` and `item_sizes` must have shapes ({self.num_users},) and "
                f"({self.num_items},). Received {u.shape} and {i.shape}."
            )
        gu, gi = self.gmf_sizes(u, i)
        return SizePlan(
            {
                self.user_embedding_mlp.name: u,
                self.item_embedding_mlp.name: i,
                self.user_embedding.name: gu,
                self.item_embedding.name: gi,
            }
        )

    def expand_plan(self, plan: Mapping[str, Any]) -> Any:
        """Completes a plan of the MLP tables with the GMF sizes ``ncf_gmf_mode`` implies.

        GMF entries already in ``plan`` are replaced. Layers other than the four tables are
        kept as they are.
        """
        from tfembsize.plan import SizePlan

        mu, mi = self.user_embedding_mlp.name, self.item_embedding_mlp.name
        missing = [n for n in (mu, mi) if n not in plan]
        if missing:
            raise KeyError(f"NCF.expand_plan: the plan has no sizes for {missing}.")
        tables = {k: np.asarray(v) for k, v in plan.items()}
        gu, gi = self.gmf_sizes(tables[mu], tables[mi])
        tables[self.user_embedding.name] = gu
        tables[self.item_embedding.name] = gi
        return SizePlan(tables)

    def assign_sizes(self, user_sizes: Any, item_sizes: Any) -> None:
        """Applies `size_plan` (all or nothing)."""
        self.size_plan(user_sizes, item_sizes).apply(self)

    def check_sizes(self) -> None:
        """Checks that the GMF sizes follow the MLP sizes as ``ncf_gmf_mode`` says.

        Raises:
            ValueError: naming the table and the first row that breaks the tie.
        """
        if len(self.tied_tables) < 2:
            return
        gu, gi = self.gmf_sizes(self.user_embedding_mlp.sizes, self.item_embedding_mlp.sizes)
        for layer, expected in ((self.user_embedding, gu), (self.item_embedding, gi)):
            got = layer.sizes
            bad = np.flatnonzero(got != expected)
            if bad.size:
                r = int(bad[0])
                raise ValueError(
                    f"NCF (ncf_gmf_mode={self.ncf_gmf_mode!r}): the sizes of GMF table "
                    f"{layer.name!r} must follow the MLP tables; row {r} has size "
                    f"{int(got[r])}, expected {int(expected[r])}. Build plans with "
                    "`model.size_plan(...)` or `model.expand_plan(plan)`."
                )

    def _train_assertions(self) -> list:
        if len(self.tied_tables) < 2:
            return []
        su = self.user_embedding_mlp.sizes_variable
        si = self.item_embedding_mlp.sizes_variable
        if self.ncf_gmf_mode == "shared":
            eu, ei = su, si
        else:
            total = tf.reduce_sum(tf.cast(su, tf.int64)) + tf.reduce_sum(tf.cast(si, tf.int64))
            g = tf.cast(total // (self.num_users + self.num_items), tf.int32)
            lo = max(
                int(getattr(self.user_embedding, "min_size", 1)),
                int(getattr(self.item_embedding, "min_size", 1)),
            )
            g = tf.clip_by_value(g, lo, self.embedding_dim)
            eu = tf.fill([self.num_users], g)
            ei = tf.fill([self.num_items], g)
        msg = (
            f"NCF (ncf_gmf_mode={self.ncf_gmf_mode!r}): the GMF sizes do not follow the MLP "
            "sizes; build plans with model.size_plan(...) or model.expand_plan(plan)."
        )
        return [
            tf.debugging.assert_equal(self.user_embedding.sizes_variable, eu, message=msg),
            tf.debugging.assert_equal(self.item_embedding.sizes_variable, ei, message=msg),
        ]

    # Scores -----------------------------------------------------------------------------
    def _rows(self, users: tf.Tensor, items: tf.Tensor) -> tuple[tf.Tensor, ...]:
        gu = tf.cast(self.user_embedding(users), tf.float32)
        mu = tf.cast(self.user_embedding_mlp(users), tf.float32)
        gi = tf.cast(self.item_embedding(items), tf.float32)
        mi = tf.cast(self.item_embedding_mlp(items), tf.float32)
        return gu, mu, gi, mi

    def _head(self, gu: tf.Tensor, mu: tf.Tensor, gi: tf.Tensor, mi: tf.Tensor) -> tf.Tensor:
        mlp = self.mlp_layer(tf.concat([mu, mi], axis=-1))
        out = self.output_layer(tf.concat([mlp, gu * gi], axis=-1))
        return tf.squeeze(out, axis=-1)

    def score_pairs(self, users: tf.Tensor, items: tf.Tensor, training: bool = False) -> tf.Tensor:
        """NeuMF scores ``[b]`` of the pairs."""
        return self._head(*self._rows(as_ids(users), as_ids(items)))

    def bpr_terms(
        self, users: tf.Tensor, pos_items: tf.Tensor, neg_items: tf.Tensor, training: bool
    ) -> BPRTerms:
        """Pair scores; L2 on the six masked rows used."""
        gu, mu, gp, mp = self._rows(users, pos_items)
        gn = tf.cast(self.item_embedding(neg_items), tf.float32)
        mn = tf.cast(self.item_embedding_mlp(neg_items), tf.float32)
        pos = self._head(gu, mu, gp, mp)
        neg = self._head(gu, mu, gn, mn)
        batch = tf.cast(tf.shape(gu)[0], tf.float32)
        reg = self.l2 * _squared_norms(gu, mu, gp, mp, gn, mn) / batch
        return BPRTerms(pos, neg, reg)

    def score_users(self, user_ids: Any) -> tf.Tensor:
        """Scores ``[b, num_items]`` of every item (chunked over items to bound memory)."""
        users = as_ids(user_ids)
        gu = tf.cast(self.user_embedding(users), tf.float32)
        mu = tf.cast(self.user_embedding_mlp(users), tf.float32)
        gi = embedding_table(self.item_embedding)
        mi = embedding_table(self.item_embedding_mlp)
        d = self.embedding_dim
        kernel = tf.convert_to_tensor(self.mlp_layer.kernel)
        bias = tf.convert_to_tensor(self.mlp_layer.bias)
        w = tf.convert_to_tensor(self.output_layer.kernel)[:, 0]
        w_mlp, w_gmf = w[: self.hidden_units], w[self.hidden_units :]
        hu = tf.matmul(mu, kernel[:d])  # [b, h]
        hi = tf.matmul(mi, kernel[d:]) + bias  # [I, h]
        gmf = tf.matmul(gu * w_gmf, gi, transpose_b=True)  # [b, I]
        b_static = users.shape[0] if users.shape.rank == 1 else None
        per_chunk = max(1, _SCORE_CHUNK_ELEMENTS // ((b_static or 1024) * self.hidden_units))
        parts = []
        for start in range(0, self.num_items, per_chunk):
            h = tf.nn.relu(hu[:, None, :] + hi[None, start : start + per_chunk, :])
            parts.append(tf.tensordot(h, w_mlp, axes=[[2], [0]]))
        return gmf + tf.concat(parts, axis=1)

    # Config -----------------------------------------------------------------------------
    def get_config(self) -> dict:
        """Constructor arguments; the four tables as nested Keras configs."""
        config = super().get_config()
        config.update(
            {
                "user_embedding_mlp": serialize_layer(self.user_embedding_mlp),
                "item_embedding_mlp": serialize_layer(self.item_embedding_mlp),
                "hidden_units": self.hidden_units,
                "ncf_gmf_mode": self.ncf_gmf_mode,
            }
        )
        return config

    @classmethod
    def from_config(cls, config: dict, custom_objects: Any = None) -> NCF:
        """Rebuilds the model (fresh weights) from `get_config`."""
        keys = ("user_embedding", "item_embedding", "user_embedding_mlp", "item_embedding_mlp")
        config = cls._deserialize_layers(config, keys)
        args = [config.pop(k) for k in keys]
        return cls(*args, **config)
