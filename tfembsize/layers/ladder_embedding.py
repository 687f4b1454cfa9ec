"""LadderEmbedding: one table per candidate size, rows lifted to the top width by learned maps."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import tensorflow as tf

from tfembsize._batch_norm import batch_norm
from tfembsize._keras import keras, register_serializable
from tfembsize.layers.utils import (
    EmbeddingOutputsMixin,
    embedding_base_kwargs,
    gather_rows,
    integer_ids,
    set_embedding_arguments,
    validate_dim,
)

__all__ = ["LadderEmbedding", "LadderOverhead", "DEFAULT_LADDER"]

logger = logging.getLogger(__name__)

DEFAULT_LADDER: tuple[int, ...] = (2, 4, 8, 16, 64, 128)


class LadderOverhead(NamedTuple):
    """Parameters a `LadderEmbedding` holds besides its rows' own coordinates.

    Attributes:
        maps: weights and biases of the maps between consecutive rungs,
            ``sum_k (d_k * d_{k+1} + d_{k+1})``.
        batch_norm: gamma, beta, moving mean and moving variance of the output
            normalisation, ``4 * ladder[-1]``.
    """

    maps: int
    batch_norm: int

    @property
    def total(self) -> int:
        """``maps + batch_norm``."""
        return self.maps + self.batch_norm


def _validate_ladder(ladder: Any) -> tuple[int, ...]:
    ok = isinstance(ladder, Sequence) and not isinstance(ladder, (str, bytes)) and len(ladder) > 0
    values: list[int] = []
    if ok:
        for v in ladder:
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                ok = False
                break
            values.append(int(v))
    if ok and any(b <= a for a, b in zip(values, values[1:], strict=False)):
        ok = False
    if not ok:
        raise ValueError(
            "`ladder` must be a non-empty, strictly increasing sequence of positive integers "
            f"(the candidate sizes). Received: ladder={ladder!r}"
        )
    return tuple(values)


def _fresh(initializer: Any) -> Any:
    """A new instance of ``initializer`` (tf-keras repeats the values of a reused instance).

    A plain function (no ``get_config``) is returned as it is.
    """
    if not callable(getattr(initializer, "get_config", None)):
        return initializer
    return type(initializer).from_config(initializer.get_config())


class _RungRegularizer:
    """Applies a regularizer to the rows of one rung's table that sit on that rung."""

    def __init__(self, regularizer: Any, layer: LadderEmbedding, rung: int) -> None:
        self.regularizer = regularizer
        self.layer = layer
        self.rung = rung

    def __call__(self, table: tf.Tensor) -> tf.Tensor:
        on_rung = tf.equal(tf.convert_to_tensor(self.layer.rungs_variable), self.rung)
        return self.regularizer(table * tf.cast(on_rung, table.dtype)[:, None])

    def get_config(self) -> dict:
        return keras.regularizers.serialize(self.regularizer)


@register_serializable
class LadderEmbedding(EmbeddingOutputsMixin, keras.layers.Layer):
    """An embedding whose rows each sit on one rung of a ladder of candidate sizes.

    ``ladder = (d_0 < d_1 < ... < d_{L-1})`` are the candidate sizes; the output width is
    ``output_dim = d_{L-1}``. Rung ``k`` has its own table ``E^(k)`` of ``input_dim x d_k``
    and consecutive rungs are joined by learned affine maps
    ``T_k(v) = v W_k + b_k: R^{d_k} -> R^{d_{k+1}}``. Every row ``n`` sits on exactly one
    rung ``r_n`` (a non-trainable int32 variable ``rungs``, all 0 at first); its output is
    ``tanh(BN(T_{L-2}(...T_{r_n}(E^(r_n)[n]))))``: its own vector lifted to the top width,
    batch-normalised (training flag respected: batch statistics and moving-average updates in
    training, moving statistics in inference; padding ids are left out of the batch statistics
    when ``mask_zero``) and squashed by ``tanh``.

    `grow` moves rows one rung up (top-rung rows stay) and writes the new rung's row as
    ``T_k(E^(k)[n])``, so a row's output is continuous when it grows. The write is a plain
    variable assignment of stop-gradient values, done with TF ops: it runs eagerly, in a
    ``tf.function`` and under XLA (``jit_compile=True``). `assign_rungs` sets the rungs
    directly (for restoring a state; it writes no table).

    A row's usable parameters are its current size ``d_{r_n}`` (`usable_params` sums them;
    `tfembsize.layers.utils.model_usage` counts this layer). The maps and the normalisation
    are shared by all rows (`overhead_params`). While the size search runs, every rung's table
    is stored (``input_dim * sum(ladder)`` floats); rows off their rung are stale and get no
    gradient and no regularisation. Sizes come from the ladder, not from a size plan: the
    layer has no ``assign_sizes``, so `tfembsize.layers.find_searchable_layers` does not list
    it. For serving, `tfembsize.export.compress` (and `tfembsize.export.save_compressed`)
    replaces it with a `tfembsize.layers.CompressedLadderEmbedding` that stores each row at
    its current size only and gives the same outputs.

    Ids may have any rank (or be a ``tf.RaggedTensor``). An id outside ``[0, input_dim)``
    raises ``tf.errors.InvalidArgumentError`` naming the layer, the id and ``input_dim``,
    except under XLA, which drops the check.

    Args:
        input_dim: number of rows (vocabulary size).
        ladder: the candidate sizes, strictly increasing.
        embeddings_initializer: initializer of every rung's table.
        embeddings_regularizer: regularizer of the tables, applied to each row on its own rung.
        embeddings_constraint: constraint applied to every table.
        mask_zero: whether id 0 is padding (as in ``Embedding``).
        kernel_initializer: initializer of the maps' weights.
        bias_initializer: initializer of the maps' biases.
        momentum: momentum of the normalisation's moving statistics.
        epsilon: added to the variance by the normalisation.
        **kwargs: base ``Layer`` arguments (``name``, ``dtype``, ``trainable``, ...).

    Example:
        >>> layer = LadderEmbedding(5, ladder=(2, 4, 8))
        >>> layer.sizes.tolist()
        [2, 2, 2, 2, 2]
        >>> layer.grow([1, 3, 3]).numpy().tolist()
        [True, True, True]
        >>> layer.sizes.tolist(), layer.usable_params()
        ([2, 4, 2, 4, 2], 14)
        >>> layer(tf.constant([[0, 1]])).shape
        TensorShape([1, 2, 8])

    References:
        Liu et al., "Automated Embedding Size Search in Deep Recommender Systems",
        SIGIR 2020 (ESAPN).
    """

    _tfembsize_ladder = True
    """`tfembsize.export.compress` turns the layer into a `CompressedLadderEmbedding`."""

    def __init__(
        self,
        input_dim: int,
        ladder: Sequence[int] = DEFAULT_LADDER,
        *,
        embeddings_initializer: Any = "uniform",
        embeddings_regularizer: Any = None,
        embeddings_constraint: Any = None,
        mask_zero: bool = False,
        kernel_initializer: Any = "glorot_uniform",
        bias_initializer: Any = "zeros",
        momentum: float = 0.99,
        epsilon: float = 1e-3,
        **kwargs: Any,
    ) -> None:
        input_dim = validate_dim("input_dim", input_dim)
        ladder = _validate_ladder(ladder)
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
        super().__init__(**embedding_base_kwargs(type(self).__name__, kwargs))
        set_embedding_arguments(
            self,
            input_dim,
            ladder[-1],
            embeddings_initializer,
            embeddings_regularizer,
            embeddings_constraint,
            mask_zero,
        )
        self.ladder = ladder
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.momentum = float(momentum)
        self.epsilon = float(epsilon)

    # Weights ---------------------------------------------------------------------------------
    def build(self, input_shape: Any = None) -> None:
        """Creates the rung tables, the maps, the normalisation and the rung vector."""
        if self.built:
            return
        # One attribute per variable: tf.train.Checkpoint follows attributes, not lists
        # (Keras 3 does not track a list attribute for it).
        for k, width in enumerate(self.ladder):
            reg = (
                _RungRegularizer(self.embeddings_regularizer, self, k)
                if self.embeddings_regularizer is not None
                else None
            )
            table = self.add_weight(
                name=f"embeddings_{k}",
                shape=(self.input_dim, width),
                initializer=_fresh(self.embeddings_initializer),
                regularizer=reg,
                constraint=self.embeddings_constraint,
                trainable=True,
            )
            setattr(self, f"embeddings_{k}", table)
        for k, (lo, hi) in enumerate(zip(self.ladder, self.ladder[1:], strict=False)):
            kernel = self.add_weight(
                name=f"map_{k}_kernel", shape=(lo, hi), initializer=_fresh(self.kernel_initializer)
            )
            bias = self.add_weight(
                name=f"map_{k}_bias", shape=(hi,), initializer=_fresh(self.bias_initializer)
            )
            setattr(self, f"map_{k}_kernel", kernel)
            setattr(self, f"map_{k}_bias", bias)
        top = (self.output_dim,)
        self.gamma = self.add_weight(name="gamma", shape=top, initializer="ones")
        self.beta = self.add_weight(name="beta", shape=top, initializer="zeros")
        self.moving_mean = self.add_weight(
            name="moving_mean", shape=top, initializer="zeros", trainable=False
        )
        self.moving_variance = self.add_weight(
            name="moving_variance", shape=top, initializer="ones", trainable=False
        )
        self._rungs = self.add_weight(
            name="rungs",
            shape=(self.input_dim,),
            dtype="int32",
            initializer="zeros",
            trainable=False,
        )
        self.built: bool = True

    @property
    def tables(self) -> list[Any]:
        """The rung tables ``E^(0), ..., E^(L-1)`` (variables ``embeddings_k``)."""
        self._ensure_built()
        return [getattr(self, f"embeddings_{k}") for k in range(len(self.ladder))]

    @property
    def map_kernels(self) -> list[Any]:
        """The maps' weights ``W_0, ..., W_{L-2}`` (variables ``map_k_kernel``)."""
        self._ensure_built()
        return [getattr(self, f"map_{k}_kernel") for k in range(len(self.ladder) - 1)]

    @property
    def map_biases(self) -> list[Any]:
        """The maps' biases ``b_0, ..., b_{L-2}`` (variables ``map_k_bias``)."""
        self._ensure_built()
        return [getattr(self, f"map_{k}_bias") for k in range(len(self.ladder) - 1)]

    def _ensure_built(self) -> None:
        if not self.built:
            with tf.init_scope():
                self.build(None)

    # Rung API --------------------------------------------------------------------------------
    @property
    def rungs(self) -> np.ndarray:
        """A numpy copy of every row's rung (int32, shape ``(input_dim,)``)."""
        self._ensure_built()
        return np.array(self._rungs.numpy(), dtype=np.int32, copy=True)

    @property
    def rungs_variable(self) -> Any:
        """The int32 variable that holds the rungs (for graph code)."""
        self._ensure_built()
        return self._rungs

    @property
    def sizes(self) -> np.ndarray:
        """Every row's current size ``ladder[rung]`` (int32, shape ``(input_dim,)``)."""
        return np.asarray(self.ladder, dtype=np.int32)[self.rungs]

    def validate_rungs(self, rungs: Any) -> np.ndarray:
        """Checks dtype, shape and range of a rung vector and returns it as int32.

        Raises:
            TypeError: the rungs are not integers.
            ValueError: wrong length, or a rung outside ``[0, len(ladder) - 1]``.
        """
        arr = np.asarray(rungs)
        if arr.dtype.kind not in "iu":
            raise TypeError(
                f"Layer '{self.name}': `rungs` must be integers. Received dtype {arr.dtype}: "
                f"rungs={rungs!r}"
            )
        if arr.shape != (self.input_dim,):
            raise ValueError(
                f"Layer '{self.name}': `rungs` must have shape ({self.input_dim},) (one per "
                f"row). Received shape {arr.shape}."
            )
        top = len(self.ladder) - 1
        if arr.size and (int(arr.min()) < 0 or int(arr.max()) > top):
            bad = int(arr.min()) if int(arr.min()) < 0 else int(arr.max())
            row = int(np.flatnonzero(arr == bad)[0])
            raise ValueError(
                f"Layer '{self.name}': `rungs` must lie in [0, len(ladder) - 1 = {top}]. "
                f"Received rung {bad} at row {row}."
            )
        return arr.astype(np.int32)

    def assign_rungs(self, rungs: Any) -> None:
        """Sets every row's rung (eagerly); no table is written.

        Args:
            rungs: integer vector of length ``input_dim`` with values in
                ``[0, len(ladder) - 1]``.
        """
        arr = self.validate_rungs(rungs)
        self._ensure_built()
        self._rungs.assign(arr)

    def grow(self, ids: Any, mask: Any = None) -> tf.Tensor:
        """Moves the rows ``ids`` one rung up and initialises their new rows from the old.

        A row on rung ``k`` below the top moves to ``k + 1`` and its row of ``E^(k+1)``
        becomes ``T_k(E^(k)[n])`` (its lifted vector one level up, so the layer's output for
        it does not change); a row on the top rung stays. A row listed several times grows
        once. With a ``mask``, only the rows with at least one True entry move (the others
        stay put, whatever their other entries say). The writes are variable assignments of
        stop-gradient values: no gradient flows through them. Works eagerly, in a
        ``tf.function`` and with ``jit_compile=True``.

        Args:
            ids: integer ids of any shape (an id must be in ``[0, input_dim)``).
            mask: optional booleans shaped like ``ids``: which entries ask their row to grow
                (None: every entry).

        Returns:
            A boolean tensor shaped like ``ids``: True where the row moved up.
        """
        self._ensure_built()
        ids = integer_ids(ids, self.input_dim, self.name)
        flat = tf.reshape(ids, [-1])
        index = flat[:, None]
        old = tf.gather(tf.convert_to_tensor(self._rungs), flat)
        top = len(self.ladder) - 1
        if mask is None:
            move = tf.ones_like(old, tf.bool)
        else:
            asked = tf.cast(tf.reshape(tf.cast(mask, tf.bool), [-1]), tf.int32)
            # One decision per row (any entry asking), so repeated ids write one value.
            per_row = tf.math.unsorted_segment_max(asked, flat, self.input_dim)
            move = tf.gather(per_row, flat) > 0
        tables = [tf.convert_to_tensor(t) for t in self.tables]  # read everything first
        writes = []
        for k in range(top):
            kernel = tf.convert_to_tensor(self.map_kernels[k])
            bias = tf.convert_to_tensor(self.map_biases[k])
            lifted = tf.stop_gradient(tf.matmul(tf.gather(tables[k], flat), kernel) + bias)
            current = tf.gather(tables[k + 1], flat)
            here = tf.logical_and(tf.equal(old, k), move)
            writes.append(tf.where(here[:, None], lifted, current))
        for k in range(top):
            self.tables[k + 1].assign(tf.tensor_scatter_nd_update(tables[k + 1], index, writes[k]))
        new = tf.where(move, tf.minimum(old + 1, top), old)
        self._rungs.assign(
            tf.tensor_scatter_nd_update(tf.convert_to_tensor(self._rungs), index, new)
        )
        return tf.reshape(tf.logical_and(move, old < top), tf.shape(ids))

    def usable_params(self) -> int:
        """Usable parameters: the sum over rows of their current size ``ladder[rung]``."""
        return int(self.sizes.sum(dtype=np.int64))

    def overhead_params(self) -> LadderOverhead:
        """Parameters shared by all rows: the maps and the normalisation (a `LadderOverhead`)."""
        maps = sum(lo * hi + hi for lo, hi in zip(self.ladder, self.ladder[1:], strict=False))
        return LadderOverhead(maps=int(maps), batch_norm=4 * self.output_dim)

    # Forward ---------------------------------------------------------------------------------
    def call(self, inputs: Any, training: Any = None) -> Any:
        """Looks up ``inputs`` (ids of any rank, or ragged): lift, normalise, ``tanh``."""
        if isinstance(inputs, tf.RaggedTensor):
            return tf.ragged.map_flat_values(lambda ids: self._lookup(ids, training), inputs)
        return self._lookup(inputs, training)

    def lift(self, ids: tf.Tensor) -> tf.Tensor:
        """Every id's vector lifted from its rung to the top width (before normalisation).

        Args:
            ids: a 1-D tensor of valid ids.

        Returns:
            A ``[len(ids), output_dim]`` tensor.
        """
        rung = gather_rows(self._rungs, ids)
        z = gather_rows(self.tables[0], ids)
        # After step k, z holds the lift to width d_k of every id on a rung <= k (ids on
        # higher rungs hold values that a later step replaces): one matmul per map for all
        # ids, and tf.where sends no gradient to the branch it drops.
        for k in range(1, len(self.ladder)):
            kernel = tf.convert_to_tensor(self.map_kernels[k - 1])
            bias = tf.convert_to_tensor(self.map_biases[k - 1])
            own = gather_rows(self.tables[k], ids)
            z = tf.where(tf.equal(rung, k)[:, None], own, tf.matmul(z, kernel) + bias)
        return z

    def _lookup(self, inputs: Any, training: Any) -> tf.Tensor:
        ids = integer_ids(inputs, self.input_dim, self.name)
        flat = tf.reshape(ids, [-1])
        weights = tf.cast(tf.not_equal(flat, 0), tf.float32) if self.mask_zero else None
        if not self.trainable:  # as BatchNormalization: a frozen layer normalises as in inference
            training = False
        normalised = batch_norm(
            self.lift(flat),
            gamma=self.gamma,
            beta=self.beta,
            moving_mean=self.moving_mean,
            moving_variance=self.moving_variance,
            training=training,
            momentum=self.momentum,
            epsilon=self.epsilon,
            weights=weights,
        )
        out = tf.reshape(tf.tanh(normalised), tf.concat([tf.shape(ids), [self.output_dim]], 0))
        out.set_shape(ids.shape.concatenate([self.output_dim]))
        return tf.cast(out, self.compute_dtype)

    # Config ----------------------------------------------------------------------------------
    def get_config(self) -> dict:
        """Exactly the constructor arguments."""
        config = super().get_config()
        config.update(
            {
                "input_dim": self.input_dim,
                "ladder": list(self.ladder),
                "embeddings_initializer": keras.initializers.serialize(self.embeddings_initializer),
                "embeddings_regularizer": keras.regularizers.serialize(self.embeddings_regularizer)
                if self.embeddings_regularizer is not None
                else None,
                "embeddings_constraint": keras.constraints.serialize(self.embeddings_constraint)
                if self.embeddings_constraint is not None
                else None,
                "mask_zero": self.mask_zero,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
                "bias_initializer": keras.initializers.serialize(self.bias_initializer),
                "momentum": self.momentum,
                "epsilon": self.epsilon,
            }
        )
        if self.activity_regularizer is not None:
            config["activity_regularizer"] = keras.regularizers.serialize(self.activity_regularizer)
        return config
