"""TensorFlow Recommenders integration: a two-tower retrieval model over tfembsize tables.

TensorFlow Recommenders (TFRS) runs on tf-keras (Keras 2) only: set ``TF_USE_LEGACY_KERAS=1``
*before* TensorFlow is first imported. Importing this module under Keras 3 raises an
`ImportError` that says so.

`TwoTowerRetrieval` is a ``tfrs.Model`` with a ``tfrs.tasks.Retrieval`` task (in-batch
softmax) whose query and candidate towers start with embedding layers you pass in: a plain
``Embedding``, a `MaskedEmbedding`, a `BudgetedEmbedding`, ... The model also speaks the
tfembsize retrieval protocol (``embed_users``, ``embed_items``, ``representations``,
``score_users``), so `RankingEvaluator`, `ValidationRanking`, `KerasEnvironment` and
`SizePlan.apply` work with it unchanged, and so does `tfembsize.models.train_bpr` (BPR batches
train it with in-batch softmax: their negatives are ignored). `build_index` wraps it in a
``tfrs.layers.factorized_top_k.BruteForce`` index over all items.

Example:
    >>> # TF_USE_LEGACY_KERAS=1 python ...
    >>> from tfembsize.integrations.tfrs import TwoTowerRetrieval, build_index, pairs_dataset
    >>> model = TwoTowerRetrieval(MaskedEmbedding(nu, 64), MaskedEmbedding(ni, 64))
    >>> model.compile(optimizer=keras.optimizers.Adagrad(0.1))
    >>> model.fit(pairs_dataset(split.train, 4096, seed=0), epochs=5)
    >>> index = build_index(model, k=20)
    >>> scores, items = index(tf.constant([0, 1]))
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf

from tfembsize._keras import is_legacy_keras, keras, keras_version
from tfembsize.layers.utils import table_params

if not is_legacy_keras():
    raise ImportError(
        "tfembsize.integrations.tfrs needs legacy Keras (tf-keras, Keras 2): TensorFlow "
        f"Recommenders does not run on Keras 3 (found Keras {keras_version()}). Set the "
        "environment variable TF_USE_LEGACY_KERAS=1 before TensorFlow is first imported "
        "(e.g. `TF_USE_LEGACY_KERAS=1 python train.py`, or os.environ['TF_USE_LEGACY_KERAS'] "
        "= '1' at the very top of your script), and install tf-keras."
    )

try:
    import tensorflow_recommenders as tfrs
except ImportError as err:  # pragma: no cover - depends on the installation
    raise ImportError(
        "tfembsize.integrations.tfrs needs TensorFlow Recommenders: "
        "`pip install tensorflow-recommenders`."
    ) from err

from tfembsize.models.base import (  # noqa: E402
    BPRLosses,
    as_ids,
    embedding_rows,
    serialize_layer,
)

__all__ = ["TwoTowerRetrieval", "build_index", "pairs_dataset"]


def pairs_dataset(
    interactions: Any,
    batch_size: int,
    *,
    seed: int = 0,
    shuffle: bool = True,
    drop_remainder: bool = True,
) -> tf.data.Dataset:
    """The positive (user, item) pairs as batches ``{"user", "item"}`` for in-batch softmax.

    One pass over the pairs per iteration, reshuffled every pass (seeded).

    Args:
        interactions: the training `tfembsize.data.Interactions` (``split.train``).
        batch_size: pairs per batch.
        seed: shuffle seed.
        shuffle: shuffle the pairs.
        drop_remainder: drop a last smaller batch.

    Returns:
        A `tf.data.Dataset` of ``{"user": int32 [b], "item": int32 [b]}``.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(
            f"`batch_size` must be a positive integer. Received: batch_size={batch_size!r}"
        )
    users = tf.constant(interactions.users, tf.int32)
    items = tf.constant(interactions.items, tf.int32)
    ds = tf.data.Dataset.from_tensor_slices({"user": users, "item": items})
    if shuffle:
        ds = ds.shuffle(int(users.shape[0]), seed=seed, reshuffle_each_iteration=True)
    return ds.batch(batch_size, drop_remainder=drop_remainder).prefetch(tf.data.AUTOTUNE)


class TwoTowerRetrieval(tfrs.Model):
    """A two-tower ``tfrs.Model`` whose towers are embedding tables (plus optional layers).

    The query tower maps user ids to ``tower(user_embedding(ids))`` and the candidate tower
    item ids to ``tower(item_embedding(ids))``; the score is their dot product. Training
    uses ``tfrs.tasks.Retrieval``: softmax cross-entropy of each positive pair against the
    other items of the batch (in-batch negatives), optionally with a temperature and with
    accidental hits removed. Metrics are left out of the task (computing them needs a
    candidate dataset and breaks ``model.save``; evaluate with `RankingEvaluator` instead).

    Swapping the layers (``Embedding`` -> `MaskedEmbedding` -> `BudgetedEmbedding`) needs no
    other change: masked coordinates of searchable layers get no gradient, and the model
    follows the retrieval protocol of `tfembsize.models`.

    Args:
        user_embedding: user table (``input_dim = num_users``).
        item_embedding: item table.
        num_items: number of items; defaults to ``item_embedding.input_dim`` (checked).
        num_users: number of users; defaults to ``user_embedding.input_dim`` (checked).
        user_tower: optional layer applied after the user table.
        item_tower: optional layer applied after the item table.
        temperature: softmax temperature of the task.
        remove_accidental_hits: mask in-batch negatives that are the positive item.
        **kwargs: ``keras.Model`` arguments (``name``).

    Example:
        >>> model = TwoTowerRetrieval(MaskedEmbedding(100, 32), MaskedEmbedding(50, 32))
        >>> model.score_users(tf.constant([0, 1])).shape
        TensorShape([2, 50])

    References:
        Yi et al., "Sampling-Bias-Corrected Neural Modeling for Large Corpus Item
        Recommendations", RecSys 2019 (in-batch softmax two-tower retrieval).
    """

    backbone = "two_tower"
    requires_autograph = True  # tfrs.tasks.Retrieval calls len() on tensors

    def __init__(
        self,
        user_embedding: Any,
        item_embedding: Any,
        num_items: int | None = None,
        *,
        num_users: int | None = None,
        user_tower: Any = None,
        item_tower: Any = None,
        temperature: float | None = None,
        remove_accidental_hits: bool = False,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("name", "two_tower")
        super().__init__(**kwargs)
        for arg, layer in (("user_embedding", user_embedding), ("item_embedding", item_embedding)):
            if not isinstance(layer, keras.layers.Layer):
                raise TypeError(
                    f"`{arg}` must be a Keras embedding layer. Received: {type(layer).__name__}"
                )
        for arg, given, layer in (
            ("num_users", num_users, user_embedding),
            ("num_items", num_items, item_embedding),
        ):
            rows = embedding_rows(layer)
            if given is not None and int(given) != rows:
                raise ValueError(f"`{arg}`={given} differs from the table's input_dim={rows}.")
        if temperature is not None and not float(temperature) > 0:
            raise ValueError(
                f"`temperature` must be positive or None. Received: temperature={temperature!r}"
            )
        self.user_embedding = user_embedding
        self.item_embedding = item_embedding
        self.user_tower = user_tower
        self.item_tower = item_tower
        self._num_users = embedding_rows(user_embedding)
        self._num_items = embedding_rows(item_embedding)
        self.temperature = None if temperature is None else float(temperature)
        self.remove_accidental_hits = bool(remove_accidental_hits)
        self.query_model = keras.Sequential(
            [user_embedding] + ([user_tower] if user_tower is not None else []),
            name="query_model",
        )
        self.candidate_model = keras.Sequential(
            [item_embedding] + ([item_tower] if item_tower is not None else []),
            name="candidate_model",
        )
        self.task = tfrs.tasks.Retrieval(
            temperature=self.temperature, remove_accidental_hits=self.remove_accidental_hits
        )
        with tf.init_scope():
            self.query_model(tf.zeros([1], tf.int32))
            self.candidate_model(tf.zeros([1], tf.int32))

    # Protocol -------------------------------------------------------------------------------
    @property
    def num_users(self) -> int:
        """Number of user rows."""
        return self._num_users

    @property
    def num_items(self) -> int:
        """Number of item rows."""
        return self._num_items

    def embed_users(self, user_ids: Any) -> tf.Tensor:
        """Query-tower outputs ``[b, D]``."""
        return tf.cast(self.query_model(as_ids(user_ids)), tf.float32)

    def embed_items(self, item_ids: Any) -> tf.Tensor:
        """Candidate-tower outputs ``[b, D]``."""
        return tf.cast(self.candidate_model(as_ids(item_ids)), tf.float32)

    def representations(self, training: bool = False) -> tuple[tf.Tensor, tf.Tensor]:
        """``(user_matrix [num_users, D], item_matrix [num_items, D])``."""
        return (
            self.embed_users(tf.range(self.num_users)),
            self.embed_items(tf.range(self.num_items)),
        )

    def score_users(self, user_ids: Any) -> tf.Tensor:
        """Scores ``[b, num_items]``: query embeddings times every candidate embedding."""
        items = self.embed_items(tf.range(self.num_items))
        return tf.matmul(self.embed_users(user_ids), items, transpose_b=True)

    def ranking_scorer(self) -> tuple[tf.Tensor, tf.Tensor]:
        """``representations()``, for `RankingEvaluator.evaluate`."""
        return self.representations()

    def usable_params(self) -> int:
        """Usable parameters of the two tables (sizes for searchable tables)."""
        return sum(table_params(layer) for layer in (self.user_embedding, self.item_embedding))

    # TFRS -----------------------------------------------------------------------------------
    def compute_loss(self, features: Any, training: bool = False) -> tf.Tensor:
        """In-batch softmax loss of a batch of positive pairs.

        ``features`` is ``{"user": ids, "item": ids}`` (`pairs_dataset`) or a BPR batch
        ``{"user", "pos_item", "neg_item"}`` (`tfembsize.data.bpr_dataset`), whose negatives
        are ignored: the other items of the batch are the negatives.
        """
        item_key = "item" if isinstance(features, dict) and "item" in features else "pos_item"
        if not isinstance(features, dict) or "user" not in features or item_key not in features:
            raise ValueError(
                "TwoTowerRetrieval batches must be dicts {'user': ids, 'item': ids} (see "
                "`pairs_dataset`) or BPR batches {'user', 'pos_item', 'neg_item'}. Received: "
                f"{type(features).__name__}"
            )
        items = as_ids(features[item_key])
        queries = self.embed_users(features["user"])
        candidates = self.embed_items(items)
        return self.task(
            queries,
            candidates,
            candidate_ids=items if self.remove_accidental_hits else None,
            compute_metrics=False,
            compute_batch_metrics=False,
        )

    def train_batch(self, data: Any) -> BPRLosses:
        """One optimiser step (what `tfembsize.models.train_bpr` runs on BPR batches).

        Returns:
            `BPRLosses` whose ``bpr_loss`` is the in-batch softmax loss and ``layer_loss``
            the layers' regularisation losses.
        """
        with tf.GradientTape() as tape:
            task_loss = self.compute_loss(data, training=True)
            layer_losses = self.losses
            layer_loss = tf.add_n(layer_losses) if layer_losses else tf.constant(0.0)
            loss = task_loss + layer_loss
        variables = self.trainable_variables
        grads = tape.gradient(loss, variables)
        self.optimizer.apply_gradients(
            [(g, v) for g, v in zip(grads, variables, strict=True) if g is not None]
        )
        return BPRLosses(loss, task_loss, tf.constant(0.0), layer_loss)

    def check_sizes(self) -> None:
        """No size rules between the two tables (for `train_bpr`)."""

    def call(self, inputs: Any, training: bool | None = None) -> tf.Tensor:
        """Scores pairs ``{"user": ids, "item": ids}``."""
        users = self.embed_users(inputs["user"])
        return tf.reduce_sum(users * self.embed_items(inputs["item"]), axis=-1)

    def get_config(self) -> dict:
        """Constructor arguments; the tables (and towers) as nested Keras configs."""
        return {
            "name": self.name,
            "user_embedding": serialize_layer(self.user_embedding),
            "item_embedding": serialize_layer(self.item_embedding),
            "user_tower": None if self.user_tower is None else serialize_layer(self.user_tower),
            "item_tower": None if self.item_tower is None else serialize_layer(self.item_tower),
            "temperature": self.temperature,
            "remove_accidental_hits": self.remove_accidental_hits,
        }

    @classmethod
    def from_config(cls, config: dict, custom_objects: Any = None) -> TwoTowerRetrieval:
        """Rebuilds the model (fresh weights) from `get_config`."""
        config = dict(config)
        for key in ("user_embedding", "item_embedding", "user_tower", "item_tower"):
            if isinstance(config.get(key), dict):
                config[key] = keras.layers.deserialize(config[key])
        return cls(**config)


def build_index(
    model: Any, k: int = 10, *, name: str | None = None
) -> tfrs.layers.factorized_top_k.BruteForce:
    """A ``BruteForce`` top-k index over every item, queried with user ids.

    The index holds the current candidate embeddings (rebuild it after training or after
    changing sizes) and ``model.query_model`` (a retrieval model's query tower) or, for the
    other tfembsize backbones, a query model that looks up ``embed_users``. It is called once
    on user 0 so that it can be saved with ``tf.saved_model.save`` at once (GitHub issues
    tensorflow/recommenders#131 and #640). ``k`` is fixed when the index is traced: pass ``k``
    explicitly in your serving signature if it must vary (tensorflow/recommenders#744). Known
    positives are not excluded; use ``index.query_with_exclusions`` for that.

    Args:
        model: a model with the retrieval protocol (``embed_users``, ``representations``).
        k: default number of items returned.
        name: layer name.

    Returns:
        The index: ``index(user_ids) -> (scores [b, k], item_ids [b, k])``.
    """
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= int(model.num_items):
        raise ValueError(
            f"`k` must be an integer in [1, num_items={model.num_items}]. Received: k={k!r}"
        )
    query_model = getattr(model, "query_model", None)
    if query_model is None:
        query_model = _QueryModel(model)
    index = tfrs.layers.factorized_top_k.BruteForce(query_model=query_model, k=k, name=name)
    _, items = model.representations(training=False)
    index.index(candidates=items, identifiers=tf.range(int(model.num_items), dtype=tf.int32))
    index(tf.constant([0], tf.int32))
    return index


class _QueryModel(keras.Model):
    """User ids -> ``embed_users`` of a tfembsize backbone (for `build_index`)."""

    def __init__(self, model: Any) -> None:
        super().__init__(name="query_model")
        self.backbone = model

    def call(self, inputs: Any) -> tf.Tensor:
        return self.backbone.embed_users(inputs)
