"""Base classes of the BPR backbones: the retrieval protocol and the BPR ``train_step``.

Every backbone (`MF`, `NCF`, `NGCF`, `LightGCN`) is a ``keras.Model`` that takes its embedding
layers as constructor arguments (any tfembsize layer or a plain ``Embedding``), scores
(user, item) pairs, and trains with BPR (Rendle et al., 2009):

    loss = mean_b softplus(s(u_b, j_b) - s(u_b, i_b)) + L2 / batch

where ``i_b`` is a training positive of user ``u_b`` and ``j_b`` a sampled negative. The L2 term
is each backbone's own and acts on masked embeddings, so coordinates a prefix mask zeroes
are neither penalised nor updated. Regularisation losses of the layers themselves
(``embeddings_regularizer``) are added on top.

The retrieval protocol (dot-product backbones and the TFRS two-tower model):
``num_users``, ``num_items``, ``embed_users(ids)``, ``embed_items(ids)``,
``representations(training=False) -> (user_matrix, item_matrix)``, and for every backbone
``score_users(ids) -> [b, num_items]``.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any, NamedTuple

import numpy as np
import tensorflow as tf

from tfembsize._keras import keras
from tfembsize.layers.utils import table_params

__all__ = [
    "BPRModel",
    "DotProductModel",
    "BPRTerms",
    "BPRLosses",
    "embedding_table",
    "embedding_width",
    "lookup_rows",
    "embedding_rows",
    "as_ids",
]

logger = logging.getLogger(__name__)


class BPRTerms(NamedTuple):
    """What a backbone computes for a batch of BPR triples.

    Attributes:
        pos_scores: ``[b]`` scores of (user, positive item).
        neg_scores: ``[b]`` scores of (user, negative item).
        reg_loss: scalar L2 term, already divided by the batch size.
    """

    pos_scores: tf.Tensor
    neg_scores: tf.Tensor
    reg_loss: tf.Tensor


class BPRLosses(NamedTuple):
    """The loss of one BPR batch and its parts (scalars).

    Attributes:
        loss: ``bpr_loss + reg_loss + layer_loss``, the value that is minimised.
        bpr_loss: ``mean softplus(s_neg - s_pos)``.
        reg_loss: the backbone's L2 term (divided by the batch size).
        layer_loss: regularisation losses of the layers (``embeddings_regularizer``), 0 if none.
    """

    loss: tf.Tensor
    bpr_loss: tf.Tensor
    reg_loss: tf.Tensor
    layer_loss: tf.Tensor


# Layer helpers -----------------------------------------------------------------------------
def embedding_rows(layer: Any) -> int:
    """Number of rows (``input_dim``) of an embedding layer."""
    rows = getattr(layer, "input_dim", None)
    if rows is None:
        raise TypeError(
            f"Layer {getattr(layer, 'name', layer)!r} of type {type(layer).__name__} has no "
            "`input_dim`; pass an embedding layer (tfembsize layer or keras Embedding)."
        )
    return int(rows)


def embedding_width(layer: Any) -> int:
    """Width (``output_dim``) of an embedding layer."""
    width = getattr(layer, "output_dim", None)
    if width is None:
        raise TypeError(
            f"Layer {getattr(layer, 'name', layer)!r} of type {type(layer).__name__} has no "
            "`output_dim`; pass an embedding layer (tfembsize layer or keras Embedding)."
        )
    return int(width)


def _takes_training(layer: Any) -> bool:
    """True if the layer's ``call`` has a ``training`` argument (it normalises over a batch)."""
    try:
        return "training" in inspect.signature(layer.call).parameters
    except (TypeError, ValueError):
        return False


def lookup_rows(layer: Any, ids: Any, training: bool = False) -> tf.Tensor:
    """The rows ``ids`` of an embedding layer, as float32.

    ``training`` reaches layers whose ``call`` takes it (`tfembsize.layers.LadderEmbedding`
    normalises with the batch's statistics in training and with its moving statistics
    otherwise); the other layers ignore it.
    """
    if _takes_training(layer):
        return tf.cast(layer(ids, training=bool(training)), tf.float32)
    return tf.cast(layer(ids), tf.float32)


def embedding_table(layer: Any, training: bool = False) -> tf.Tensor:
    """The whole effective table of an embedding layer, masks applied (``[rows, width]``).

    Searchable layers give ``masked_table()`` (masked coordinates zeroed), PEP layers
    ``pruned_table()``, a plain ``Embedding`` its ``embeddings``; any other layer is called
    on every id (a `tfembsize.layers.LadderEmbedding` lifts every row to the top width and
    normalises them, with ``training`` as given). Graph backbones propagate this table, so
    the mask acts *before* propagation and masked coordinates get zero gradient.
    """
    for attr in ("masked_table", "pruned_table"):
        fn = getattr(layer, attr, None)
        if callable(fn):
            return tf.cast(fn(), tf.float32)
    emb = getattr(layer, "embeddings", None)
    if emb is not None:
        return tf.cast(tf.convert_to_tensor(emb), tf.float32)
    return lookup_rows(layer, tf.range(embedding_rows(layer)), training)


def as_ids(ids: Any) -> tf.Tensor:
    """Converts ids to an int32 tensor (int64 ids are cast)."""
    ids = tf.convert_to_tensor(ids)
    if ids.dtype != tf.int32:
        ids = tf.cast(ids, tf.int32)
    return ids


def serialize_layer(layer: Any) -> dict:
    """Keras config of a layer, without the build record (the model builds its tables)."""
    config = dict(keras.layers.serialize(layer))
    config.pop("build_config", None)
    return config


def _build_layer(layer: Any) -> None:
    if not layer.built:
        with tf.init_scope():
            layer(tf.zeros([1], tf.int32))


def _unpack_batch(data: Any) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Users, positive and negative items of a BPR batch (a dict from `bpr_dataset`)."""
    if isinstance(data, (tuple, list)) and len(data) == 1:
        data = data[0]
    if isinstance(data, dict):
        missing = [k for k in ("user", "pos_item", "neg_item") if k not in data]
        if missing:
            raise ValueError(
                "A BPR batch must be a dict with keys 'user', 'pos_item', 'neg_item' (as made "
                f"by tfembsize.data.bpr_dataset). Missing: {missing}; received keys "
                f"{sorted(data)}."
            )
        return as_ids(data["user"]), as_ids(data["pos_item"]), as_ids(data["neg_item"])
    if isinstance(data, (tuple, list)) and len(data) == 3:
        return as_ids(data[0]), as_ids(data[1]), as_ids(data[2])
    raise ValueError(
        "A BPR batch must be a dict {'user', 'pos_item', 'neg_item'} (from "
        f"tfembsize.data.bpr_dataset) or a (user, pos_item, neg_item) tuple. Received: "
        f"{type(data).__name__}"
    )


def _check_l2(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise ValueError(f"`{name}` must be a non-negative float. Received: {name}={value!r}")
    if not np.isfinite(value) or value < 0:
        raise ValueError(f"`{name}` must be a non-negative float. Received: {name}={value!r}")
    return float(value)


def _replicas_in_sync() -> float:
    """Replicas a gradient is summed over: 1 outside a replica context of a strategy."""
    ctx = tf.distribute.get_replica_context()
    if ctx is None or not tf.distribute.has_strategy():
        return 1.0
    return float(ctx.num_replicas_in_sync)


def _squared_norms(*tensors: tf.Tensor) -> tf.Tensor:
    return tf.add_n([tf.reduce_sum(tf.square(t)) for t in tensors])


# Base classes ------------------------------------------------------------------------------
class BPRModel(keras.Model):
    """A recommender trained with BPR on ``{"user", "pos_item", "neg_item"}`` batches.

    Subclasses implement ``bpr_terms`` (pair scores and the L2 term of a batch),
    ``score_pairs`` and ``score_users``. This class owns the BPR ``train_step`` (works with
    ``model.fit`` in Keras 3 and tf-keras, ``tf.GradientTape`` + ``optimizer.apply_gradients``),
    the loss trackers and the config of the embedding layers.

    Args:
        user_embedding: the user table (any tfembsize embedding layer or ``Embedding``).
        item_embedding: the item table.
        l2: weight of the backbone's L2 term (divided by the batch size).
        **kwargs: ``keras.Model`` arguments (``name``).
    """

    backbone: str = "base"
    """Short name of the backbone (``"mf"``, ``"ncf"``, ...); selects training defaults."""

    def __init__(
        self, user_embedding: Any, item_embedding: Any, *, l2: float, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        for arg, layer in (("user_embedding", user_embedding), ("item_embedding", item_embedding)):
            if not isinstance(layer, keras.layers.Layer):
                raise TypeError(
                    f"`{arg}` must be a Keras embedding layer (a tfembsize layer or "
                    f"Embedding). Received: {type(layer).__name__}"
                )
        self.user_embedding = user_embedding
        self.item_embedding = item_embedding
        self._num_users = embedding_rows(user_embedding)
        self._num_items = embedding_rows(item_embedding)
        self.l2 = _check_l2("l2", l2)
        # Set without attribute tracking: tf-keras would otherwise list the trackers' state
        # among the model's weights (Keras 3 does not), and snapshots of the weights would
        # differ between the two Keras versions.
        object.__setattr__(
            self,
            "_loss_trackers",
            (
                keras.metrics.Mean(name="loss"),
                keras.metrics.Mean(name="bpr_loss"),
                keras.metrics.Mean(name="reg_loss"),
            ),
        )

    def _finish_init(self) -> None:
        """Builds every embedding layer (so weights exist before the first batch)."""
        for layer in self.embedding_layers():
            _build_layer(layer)
        self.built = True

    # Protocol -------------------------------------------------------------------------------
    @property
    def num_users(self) -> int:
        """Number of user rows."""
        return self._num_users

    @property
    def num_items(self) -> int:
        """Number of item rows."""
        return self._num_items

    def embedding_layers(self) -> list:
        """The embedding tables of the model (users first)."""
        return [self.user_embedding, self.item_embedding]

    def usable_params(self) -> int:
        """Usable embedding parameters: sizes summed over searchable tables, full width else."""
        return sum(table_params(layer) for layer in self.embedding_layers())

    def bpr_terms(
        self, users: tf.Tensor, pos_items: tf.Tensor, neg_items: tf.Tensor, training: bool
    ) -> BPRTerms:
        """Scores of the positive and negative pairs and the L2 term of a batch."""
        raise NotImplementedError

    def score_pairs(self, users: tf.Tensor, items: tf.Tensor, training: bool = False) -> tf.Tensor:
        """Scores ``[b]`` of the pairs ``(users[b], items[b])``."""
        raise NotImplementedError

    def score_users(self, user_ids: Any) -> tf.Tensor:
        """Scores ``[b, num_items]`` of every item for each user (evaluation mode)."""
        raise NotImplementedError

    def ranking_scorer(self) -> Any:
        """What `RankingEvaluator.evaluate` takes: matrices if dot-product, else a callable."""
        return self.score_users

    def check_sizes(self) -> None:
        """Raises if the per-row sizes break a backbone rule (NCF ties tables); no-op here."""

    def call(self, inputs: Any, training: bool | None = None) -> tf.Tensor:
        """Scores pairs: ``inputs`` is ``{"user": ids, "item": ids}`` or ``(users, items)``."""
        if isinstance(inputs, dict):
            if "user" not in inputs or "item" not in inputs:
                raise ValueError(
                    f"`inputs` must have keys 'user' and 'item'. Received keys {sorted(inputs)}."
                )
            users, items = inputs["user"], inputs["item"]
        elif isinstance(inputs, (tuple, list)) and len(inputs) == 2:
            users, items = inputs
        else:
            raise ValueError(
                "`inputs` must be {'user': ids, 'item': ids} or a (users, items) pair. "
                f"Received: {type(inputs).__name__}"
            )
        return self.score_pairs(as_ids(users), as_ids(items), training=bool(training))

    # BPR training ---------------------------------------------------------------------------
    def compute_bpr_loss(self, data: Any, training: bool = True) -> BPRLosses:
        """The BPR loss of a batch ``{"user", "pos_item", "neg_item"}`` and its parts."""
        users, pos, neg = _unpack_batch(data)
        terms = self.bpr_terms(users, pos, neg, training)
        bpr = tf.reduce_mean(tf.nn.softplus(terms.neg_scores - terms.pos_scores))
        layer_losses = self.losses
        layer_loss = (
            tf.add_n([tf.cast(x, tf.float32) for x in layer_losses])
            if layer_losses
            else tf.constant(0.0)
        )
        reg = tf.cast(terms.reg_loss, tf.float32)
        return BPRLosses(bpr + reg + layer_loss, bpr, reg, layer_loss)

    def sample_losses(self, data: Any, training: bool = False) -> tf.Tensor:
        """Per-triple BPR losses ``softplus(s_neg - s_pos)`` of a batch (``[b]``, no L2).

        Only a forward pass: no gradient and no optimiser step. With ``training=False``,
        layers that normalise use their moving statistics and dropout is off.
        """
        users, pos, neg = _unpack_batch(data)
        terms = self.bpr_terms(users, pos, neg, training)
        return tf.nn.softplus(tf.cast(terms.neg_scores - terms.pos_scores, tf.float32))

    @tf.autograph.experimental.do_not_convert
    def train_batch(self, data: Any) -> BPRLosses:
        """One optimiser step on a BPR batch; returns the losses (no tracker update)."""
        assertions = self._train_assertions()
        with tf.control_dependencies(assertions):
            with tf.GradientTape() as tape:
                losses = self.compute_bpr_loss(data, training=True)
                # Under a tf.distribute strategy each replica holds 1/R of the batch and the
                # optimiser sums the replicas' gradients: scale so the sum is the gradient of
                # the global batch mean.
                objective = losses.loss / _replicas_in_sync()
        variables = self.trainable_variables
        grads = tape.gradient(objective, variables)
        pairs = [(g, v) for g, v in zip(grads, variables, strict=True) if g is not None]
        self.optimizer.apply_gradients(pairs)
        return losses

    def _train_assertions(self) -> list:
        return []

    # The backbones have no tensor-dependent Python control flow: skipping AutoGraph makes
    # ``fit`` trace several times faster and changes nothing else.
    @tf.autograph.experimental.do_not_convert
    def train_step(self, data: Any) -> dict:
        """BPR step for ``model.fit`` on `tfembsize.data.bpr_dataset` batches.

        Returns:
            ``{"loss", "bpr_loss", "reg_loss"}``: running means over the epoch.
        """
        losses = self.train_batch(data)
        trackers = self._loss_trackers
        for tracker, value in zip(
            trackers, (losses.loss, losses.bpr_loss, losses.reg_loss), strict=True
        ):
            tracker.update_state(value)
        return {m.name: m.result() for m in trackers}

    @property
    def metrics(self) -> list:
        """The loss trackers (reset by Keras at each epoch)."""
        return list(self._loss_trackers)

    # Config ---------------------------------------------------------------------------------
    def get_config(self) -> dict:
        """Constructor arguments; embedding layers as nested Keras configs."""
        return {
            "name": self.name,
            "user_embedding": serialize_layer(self.user_embedding),
            "item_embedding": serialize_layer(self.item_embedding),
            "l2": self.l2,
        }

    @classmethod
    def _deserialize_layers(cls, config: dict, keys: tuple[str, ...]) -> dict:
        config = dict(config)
        for key in keys:
            if isinstance(config.get(key), dict):
                config[key] = keras.layers.deserialize(config[key])
        return config

    @classmethod
    def from_config(cls, config: dict, custom_objects: Any = None) -> BPRModel:
        """Rebuilds the model (fresh weights) from `get_config`."""
        return cls(**cls._deserialize_layers(config, ("user_embedding", "item_embedding")))


class DotProductModel(BPRModel):
    """A BPR backbone whose score is a dot product of a user and an item representation.

    Implements the retrieval protocol on top of one hook, ``representations(training)``
    (graph models) or the layer lookups (MF): ``embed_users``, ``embed_items``,
    ``score_users = embed_users(ids) @ item_matrix^T``.
    """

    def representations(self, training: bool = False) -> tuple[tf.Tensor, tf.Tensor]:
        """``(user_matrix [num_users, D], item_matrix [num_items, D])`` of all rows."""
        raise NotImplementedError

    def embed_users(self, user_ids: Any) -> tf.Tensor:
        """Representations ``[b, D]`` of the given users (evaluation mode)."""
        users, _ = self.representations(training=False)
        return tf.gather(users, as_ids(user_ids))

    def embed_items(self, item_ids: Any) -> tf.Tensor:
        """Representations ``[b, D]`` of the given items (evaluation mode)."""
        _, items = self.representations(training=False)
        return tf.gather(items, as_ids(item_ids))

    def score_users(self, user_ids: Any) -> tf.Tensor:
        """Scores ``[b, num_items]``: dot products with every item (evaluation mode)."""
        users, items = self.representations(training=False)
        return tf.matmul(tf.gather(users, as_ids(user_ids)), items, transpose_b=True)

    def score_pairs(self, users: tf.Tensor, items: tf.Tensor, training: bool = False) -> tf.Tensor:
        """Dot products ``[b]`` of the pairs ``(users[b], items[b])``."""
        u, i = self.representations(training=training)
        return tf.reduce_sum(tf.gather(u, users) * tf.gather(i, items), axis=-1)

    def ranking_scorer(self) -> tuple[tf.Tensor, tf.Tensor]:
        """``representations(training=False)``: the evaluator's fast matrix path."""
        return self.representations(training=False)
