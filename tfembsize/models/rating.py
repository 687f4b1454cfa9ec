"""`RatingClassifier`: ESAPN's streaming rating classifier, trained test-then-train.

The model of the ESAPN paper's own experiments: a user and an item vector (ladder tables
lifted to the full width, or plain full-width tables) go through a small normalised MLP that
classifies the rating, either as liked or not (binary) or as one of five classes. It trains
on a time-ordered `tfembsize.data.RatingStream` with `tfembsize.training.train_bpr` (one pass,
batches in time order) and records its prequential metrics itself: every training step
scores its batch before the optimiser changes any weight, and the step's counts of correct
predictions and losses are added to running totals, apart for the test part of the stream.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import tensorflow as tf

from tfembsize._batch_norm import batch_norm
from tfembsize._checks import positive_int
from tfembsize._keras import keras, register_serializable
from tfembsize.layers.ladder_embedding import DEFAULT_LADDER, LadderEmbedding
from tfembsize.models.base import (
    _build_layer,
    as_ids,
    embedding_rows,
    lookup_rows,
    serialize_layer,
)

__all__ = ["RatingClassifier", "RatingLosses", "TASKS"]

TASKS = ("binary", "multiclass")
"""``binary``: liked (rating > 3.5) or not; ``multiclass``: class ``floor(rating - 0.5)``."""

_OUTPUTS = {"binary": 1, "multiclass": 5}
_LOSS_NAMES = {"binary": "mse", "multiclass": "cross_entropy"}
_PARTS = ("train", "test")


class RatingLosses(NamedTuple):
    """What one `RatingClassifier.train_batch` step computed (before its optimiser step).

    Attributes:
        loss: the loss minimised, summed over the batch (plus any layer regularisation).
        sample_losses: each sample's loss ``[b]``.
        correct: whether each sample's prediction was right ``[b]`` (bool).
    """

    loss: tf.Tensor
    sample_losses: tf.Tensor
    correct: tf.Tensor


def _non_negative_seed(seed: Any) -> int | None:
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"`seed` must be a non-negative integer or None. Received: seed={seed!r}")
    return int(seed)


class _Head(keras.layers.Layer):
    """``BN -> Dense(hidden) -> BN -> tanh -> Dense(outputs)`` with the library's normalisation."""

    def __init__(
        self,
        inputs: int,
        hidden: int,
        outputs: int,
        momentum: float,
        epsilon: float,
        seed: int | None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.sizes = (inputs, hidden, outputs)
        self.momentum = momentum
        self.epsilon = epsilon
        self.seed = seed

    def build(self, input_shape: Any = None) -> None:
        if self.built:
            return
        d, h, o = self.sizes
        s = self.seed

        def glorot(offset: int) -> Any:
            return keras.initializers.GlorotUniform(seed=None if s is None else s + offset)

        def weight(name: str, shape: tuple[int, ...], init: Any, trainable: bool = True) -> Any:
            return self.add_weight(name=name, shape=shape, initializer=init, trainable=trainable)

        self.input_gamma = weight("input_gamma", (d,), "ones")
        self.input_beta = weight("input_beta", (d,), "zeros")
        self.hidden_kernel = weight("hidden_kernel", (d, h), glorot(1))
        self.hidden_bias = weight("hidden_bias", (h,), "zeros")
        self.hidden_gamma = weight("hidden_gamma", (h,), "ones")
        self.hidden_beta = weight("hidden_beta", (h,), "zeros")
        self.output_kernel = weight("output_kernel", (h, o), glorot(2))
        self.output_bias = weight("output_bias", (o,), "zeros")
        self.input_moving_mean = weight("input_moving_mean", (d,), "zeros", False)
        self.input_moving_variance = weight("input_moving_variance", (d,), "ones", False)
        self.hidden_moving_mean = weight("hidden_moving_mean", (h,), "zeros", False)
        self.hidden_moving_variance = weight("hidden_moving_variance", (h,), "ones", False)
        self.built: bool = True

    def call(self, x: tf.Tensor, training: Any = None) -> tf.Tensor:
        def norm(v: tf.Tensor, prefix: str) -> tf.Tensor:
            return batch_norm(
                v,
                gamma=getattr(self, f"{prefix}_gamma"),
                beta=getattr(self, f"{prefix}_beta"),
                moving_mean=getattr(self, f"{prefix}_moving_mean"),
                moving_variance=getattr(self, f"{prefix}_moving_variance"),
                training=training,
                momentum=self.momentum,
                epsilon=self.epsilon,
            )

        z = tf.matmul(norm(x, "input"), tf.convert_to_tensor(self.hidden_kernel))
        z = tf.tanh(norm(z + self.hidden_bias, "hidden"))
        return tf.matmul(z, tf.convert_to_tensor(self.output_kernel)) + self.output_bias


@register_serializable
class RatingClassifier(keras.Model):
    """Classifies a user's rating of an item from their two vectors (ESAPN's predictor).

    The input is ``[user vector; item vector]`` (``2 * d`` wide, ``d`` the tables' width),
    then ``BatchNorm -> Dense(hidden) -> BatchNorm -> tanh -> Dense(outputs)``:

    * ``task="binary"``: one output; the label is ``rating > 3.5``, the prediction
      ``p = sigmoid(logit)`` and a sample's loss the squared error ``(p - label)^2`` (so the
      mean loss is the MSE); a prediction is right when ``p > 0.5`` matches the label.
    * ``task="multiclass"``: five outputs; the class is ``floor(rating - 0.5)`` (ratings
      1..5 give 0..4; half stars round down) and a sample's loss the softmax cross-entropy;
      a prediction is right when the arg-max is the class.

    The loss a step minimises is the sum over the batch. The tables are any embedding layers
    of one width: `create` makes `tfembsize.layers.LadderEmbedding` tables, which an
    `tfembsize.controllers.ESAPNController` grows while the model trains (the model tells the
    controller how to read its batches through ``sample_fields`` and ``credited_fields``:
    each sample's loss is credited to its user and its item); a one-rung ladder ``(d,)`` is
    a plain ``d``-wide table with the same output normalisation (the fixed-size baseline).

    Batches are dicts ``{"user", "item", "rating"}`` and, optionally, ``"test"`` (bool, the
    sample belongs to the prequential test part). `train_batch` records the prequential
    metrics of the predictions it makes before its optimiser step (`prequential_metrics`).

    Args:
        user_embedding: the user table.
        item_embedding: the item table (same width).
        task: ``"binary"`` or ``"multiclass"``.
        hidden: width of the hidden layer.
        momentum: momentum of the normalisations' moving statistics.
        epsilon: added to the variance by the normalisations.
        seed: seed of the dense layers' initialisation (None: unseeded).
        **kwargs: ``keras.Model`` arguments (``name``).

    Example:
        >>> model = RatingClassifier.create(100, 50, task="binary", seed=0)
        >>> model({"user": tf.constant([0, 1]), "item": tf.constant([3, 4])}).shape
        TensorShape([2, 1])

    References:
        Liu et al., "Automated Embedding Size Search in Deep Recommender Systems",
        SIGIR 2020 (ESAPN).
    """

    sample_fields: tuple[tuple[str, str], ...] = (
        ("user", "int32"),
        ("item", "int32"),
        ("rating", "float32"),
    )
    """The per-sample fields `sample_losses` reads (for `ESAPNController`)."""

    credited_fields: tuple[str, str] = ("user", "item")
    """The user and the item each sample's loss is credited to (for `ESAPNController`)."""

    def __init__(
        self,
        user_embedding: Any,
        item_embedding: Any,
        *,
        task: str = "binary",
        hidden: int = 512,
        momentum: float = 0.99,
        epsilon: float = 1e-3,
        seed: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        for arg, layer in (("user_embedding", user_embedding), ("item_embedding", item_embedding)):
            if not isinstance(layer, keras.layers.Layer) or not hasattr(layer, "output_dim"):
                raise TypeError(
                    f"`{arg}` must be a Keras embedding layer (a tfembsize layer or Embedding). "
                    f"Received: {type(layer).__name__}"
                )
        if int(user_embedding.output_dim) != int(item_embedding.output_dim):
            raise ValueError(
                "The user and item tables must have the same width. Received widths "
                f"{user_embedding.output_dim} and {item_embedding.output_dim}."
            )
        if task not in TASKS:
            raise ValueError(f"`task` must be one of {TASKS}. Received: task={task!r}")
        if (
            isinstance(momentum, bool)
            or not isinstance(momentum, (int, float, np.floating))
            or not 0.0 <= float(momentum) < 1.0
        ):
            raise ValueError(f"`momentum` must be in [0, 1). Received: momentum={momentum!r}")
        if (
            isinstance(epsilon, bool)
            or not isinstance(epsilon, (int, float, np.floating))
            or not float(epsilon) > 0.0
        ):
            raise ValueError(f"`epsilon` must be positive. Received: epsilon={epsilon!r}")
        self.user_embedding = user_embedding
        self.item_embedding = item_embedding
        self.task = task
        self.hidden = positive_int("hidden", hidden)
        self.momentum = float(momentum)
        self.epsilon = float(epsilon)
        self.seed = _non_negative_seed(seed)
        self.embedding_dim = int(user_embedding.output_dim)
        self._num_users = embedding_rows(user_embedding)
        self._num_items = embedding_rows(item_embedding)
        self.head = _Head(
            2 * self.embedding_dim,
            self.hidden,
            _OUTPUTS[task],
            self.momentum,
            self.epsilon,
            self.seed,
            name="head",
        )
        self.head.build(None)
        for layer in (user_embedding, item_embedding):
            _build_layer(layer)
        # Running totals of the prequential metrics: rows train part / test part, columns
        # samples, summed loss, correct predictions (float64: exact counts over long streams).
        self.prequential_totals = self.add_weight(
            name="prequential_totals",
            shape=(len(_PARTS), 3),
            dtype="float64",
            initializer="zeros",
            trainable=False,
        )
        self.built = True

    @classmethod
    def create(
        cls,
        num_users: int,
        num_items: int,
        task: str = "binary",
        *,
        ladder: Any = DEFAULT_LADDER,
        hidden: int = 512,
        seed: int | None = None,
        **kwargs: Any,
    ) -> RatingClassifier:
        """A classifier over two `tfembsize.layers.LadderEmbedding` tables.

        The tables are named ``user_embedding`` and ``item_embedding``, every row on the
        lowest rung; their width is ``ladder[-1]``. ``ladder=(128,)`` gives plain 128-wide
        tables (one rung: nothing can grow), the fixed-size baseline.

        Args:
            num_users: user rows.
            num_items: item rows.
            task: ``"binary"`` or ``"multiclass"``.
            ladder: the candidate sizes (strictly increasing).
            hidden: width of the hidden layer.
            seed: seed of every initialiser (None: unseeded).
            **kwargs: more `RatingClassifier` arguments.
        """
        seed = _non_negative_seed(seed)
        tables = []
        for offset, (rows, name) in enumerate(
            ((num_users, "user_embedding"), (num_items, "item_embedding"))
        ):
            s = None if seed is None else seed * 10 + 3 + offset
            tables.append(
                LadderEmbedding(
                    positive_int(f"num_{name[:4]}s", rows),
                    ladder,
                    embeddings_initializer=keras.initializers.RandomUniform(-0.05, 0.05, seed=s),
                    kernel_initializer=keras.initializers.GlorotUniform(
                        seed=None if s is None else s + 100
                    ),
                    name=name,
                )
            )
        return cls(tables[0], tables[1], task=task, hidden=hidden, seed=seed, **kwargs)

    # Protocol -------------------------------------------------------------------------------
    @property
    def num_users(self) -> int:
        """Number of user rows."""
        return self._num_users

    @property
    def num_items(self) -> int:
        """Number of item rows."""
        return self._num_items

    @property
    def loss_name(self) -> str:
        """``"mse"`` (binary) or ``"cross_entropy"`` (multiclass): what the mean loss is."""
        return _LOSS_NAMES[self.task]

    def head_params(self) -> int:
        """Parameters of the classifier after the tables (dense layers and normalisations)."""
        return int(sum(int(np.prod(w.shape)) for w in self.head.weights))

    # Forward ----------------------------------------------------------------------------------
    @staticmethod
    def _pair(inputs: Any) -> tuple[tf.Tensor, tf.Tensor]:
        if isinstance(inputs, dict):
            if "user" not in inputs or "item" not in inputs:
                raise ValueError(
                    f"`inputs` must have keys 'user' and 'item'. Received keys {sorted(inputs)}."
                )
            return as_ids(inputs["user"]), as_ids(inputs["item"])
        if isinstance(inputs, (tuple, list)) and len(inputs) == 2:
            return as_ids(inputs[0]), as_ids(inputs[1])
        raise ValueError(
            "`inputs` must be {'user': ids, 'item': ids} or a (users, items) pair. "
            f"Received: {type(inputs).__name__}"
        )

    def logits(self, users: Any, items: Any, training: bool = False) -> tf.Tensor:
        """Logits ``[b, outputs]`` of the pairs ``(users[b], items[b])``."""
        u = lookup_rows(self.user_embedding, as_ids(users), training)
        i = lookup_rows(self.item_embedding, as_ids(items), training)
        return self.head(tf.concat([u, i], axis=1), training=training)

    def call(self, inputs: Any, training: bool | None = None) -> tf.Tensor:
        """Logits ``[b, outputs]``: ``inputs`` is ``{"user", "item"}`` or ``(users, items)``."""
        users, items = self._pair(inputs)
        return self.logits(users, items, training=bool(training))

    def probabilities(self, inputs: Any) -> tf.Tensor:
        """Inference: ``P(liked)`` ``[b]`` (binary) or class probabilities ``[b, 5]``."""
        logits = self(inputs, training=False)
        if self.task == "binary":
            return tf.sigmoid(logits[:, 0])
        return tf.nn.softmax(logits, axis=-1)

    # Losses -----------------------------------------------------------------------------------
    def labels(self, ratings: Any) -> tf.Tensor:
        """Binary labels ``rating > 3.5`` (float32) or classes ``floor(rating - 0.5)`` (int32).

        Classes are clipped into ``[0, 4]``.
        """
        r = tf.cast(ratings, tf.float32)
        if self.task == "binary":
            return tf.cast(r > 3.5, tf.float32)
        return tf.clip_by_value(tf.cast(tf.floor(r - 0.5), tf.int32), 0, 4)

    def _losses_and_hits(self, logits: tf.Tensor, ratings: Any) -> tuple[tf.Tensor, tf.Tensor]:
        labels = self.labels(ratings)
        if self.task == "binary":
            p = tf.sigmoid(logits[:, 0])
            return tf.square(p - labels), tf.equal(p > 0.5, labels > 0.5)
        losses = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
        return losses, tf.equal(tf.argmax(logits, axis=1, output_type=tf.int32), labels)

    @staticmethod
    def _fields(batch: Any) -> dict[str, Any]:
        if isinstance(batch, (tuple, list)) and len(batch) == 1:
            batch = batch[0]
        if not isinstance(batch, dict) or any(k not in batch for k in ("user", "item", "rating")):
            got = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
            raise ValueError(
                "A rating batch must be a dict with keys 'user', 'item', 'rating' (and "
                f"optionally 'test'), as made by tfembsize.data.rating_stream_dataset. "
                f"Received: {got}"
            )
        return batch

    def sample_losses(self, batch: Any, training: bool = False) -> tf.Tensor:
        """Each sample's loss ``[b]`` (squared error or cross-entropy); a forward pass only.

        With ``training=False`` the normalisations use their moving statistics.
        """
        fields = self._fields(batch)
        logits = self.logits(fields["user"], fields["item"], training=training)
        return self._losses_and_hits(logits, fields["rating"])[0]

    @tf.autograph.experimental.do_not_convert
    def train_batch(self, batch: Any) -> RatingLosses:
        """Predicts the batch, records the prequential metrics, then one optimiser step.

        The predictions (and so the recorded metrics) are those of the forward pass whose
        summed loss the step minimises, made with the weights before the step; the
        normalisations use the batch's statistics, as in any training step.
        """
        fields = self._fields(batch)
        with tf.GradientTape() as tape:
            logits = self.logits(fields["user"], fields["item"], training=True)
            losses, hits = self._losses_and_hits(logits, fields["rating"])
            loss = tf.reduce_sum(losses)
            if self.losses:
                loss += tf.add_n([tf.cast(x, tf.float32) for x in self.losses])
        self._record(losses, hits, fields.get("test"))
        variables = self.trainable_variables
        grads = tape.gradient(loss, variables)
        pairs = [(g, v) for g, v in zip(grads, variables, strict=True) if g is not None]
        self.optimizer.apply_gradients(pairs)
        return RatingLosses(loss, losses, hits)

    def _record(self, losses: tf.Tensor, hits: tf.Tensor, test: Any) -> None:
        """Adds a batch's samples, losses and correct predictions to the running totals."""
        if test is None:
            test = tf.zeros_like(hits)
        part = tf.cast(tf.cast(test, tf.bool), tf.int32)
        values = tf.stack(
            [tf.ones_like(losses), losses, tf.cast(hits, tf.float32)], axis=1
        )  # [b, 3]
        sums = tf.math.unsorted_segment_sum(tf.cast(values, tf.float64), part, len(_PARTS))
        self.prequential_totals.assign_add(tf.stop_gradient(sums))

    def prequential_metrics(self) -> dict[str, dict[str, float]]:
        """The running prequential metrics of the training part and the test part.

        Returns:
            ``{"train": {...}, "test": {...}}``, each with ``samples``, ``accuracy`` and the
            mean loss under its name (``mse`` for binary, ``cross_entropy`` for multiclass);
            NaN for a part with no sample yet.
        """
        totals = np.asarray(self.prequential_totals.numpy(), np.float64)
        out = {}
        for part, (n, loss, correct) in zip(_PARTS, totals, strict=True):
            out[part] = {
                "samples": int(n),
                "accuracy": float(correct / n) if n else float("nan"),
                self.loss_name: float(loss / n) if n else float("nan"),
            }
        return out

    def reset_prequential(self) -> None:
        """Sets the running prequential totals back to zero."""
        self.prequential_totals.assign(np.zeros((len(_PARTS), 3), np.float64))

    # Config -----------------------------------------------------------------------------------
    def get_config(self) -> dict:
        """Constructor arguments; the tables as nested Keras configs."""
        return {
            "name": self.name,
            "user_embedding": serialize_layer(self.user_embedding),
            "item_embedding": serialize_layer(self.item_embedding),
            "task": self.task,
            "hidden": self.hidden,
            "momentum": self.momentum,
            "epsilon": self.epsilon,
            "seed": self.seed,
        }

    @classmethod
    def from_config(cls, config: dict, custom_objects: Any = None) -> RatingClassifier:
        """Rebuilds the model (fresh weights) from `get_config`."""
        config = dict(config)
        for key in ("user_embedding", "item_embedding"):
            if isinstance(config.get(key), dict):
                config[key] = keras.layers.deserialize(config[key])
        return cls(**config)
