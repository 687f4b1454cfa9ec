"""MaskedEmbedding: an Embedding whose rows keep only a prefix of their coordinates."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import tensorflow as tf

from tfembsize._keras import keras, register_serializable
from tfembsize.layers.utils import (
    EmbeddingOutputsMixin,
    embedding_base_kwargs,
    gather_rows,
    integer_ids,
    set_embedding_arguments,
    validate_dim,
)

__all__ = ["MaskedEmbedding"]

logger = logging.getLogger(__name__)


class _MaskedRegularizer:
    """Applies a regularizer to the kept (unmasked) coordinates of a layer's table only."""

    def __init__(self, regularizer: Any, layer: MaskedEmbedding) -> None:
        self.regularizer = regularizer
        self.layer = layer

    def __call__(self, table: tf.Tensor) -> tf.Tensor:
        return self.regularizer(table * self.layer.full_mask(table.dtype))

    def get_config(self) -> dict:
        return keras.regularizers.serialize(self.regularizer)


@register_serializable
class MaskedEmbedding(EmbeddingOutputsMixin, keras.layers.Layer):
    """A drop-in for ``tf.keras.layers.Embedding`` with a per-row size (a prefix mask).

    Row ``n`` keeps its first ``d_n`` coordinates and zeros the rest: the lookup returns
    ``E[ids] * m(sizes[ids])`` where ``m(d)`` is 1 on the first ``d`` of ``output_dim``
    coordinates and 0 elsewhere. The mask is computed on the fly from the size vector, so no
    dense ``input_dim x output_dim`` mask is stored. Masked coordinates get zero gradient and
    no regularisation. Sizes live in a non-trainable int32 variable (default: all
    ``output_dim``), so checkpoints and SavedModels carry them.

    Ids may have any rank (or be a ``tf.RaggedTensor``), as for ``Embedding``. An id outside
    ``[0, input_dim)`` raises ``tf.errors.InvalidArgumentError`` naming the layer, the id and
    ``input_dim`` (a GPU gather would silently return zeros); XLA (``jit_compile=True``) drops
    that check, so compiled code must be given valid ids.

    This is the prefix-mask parameterisation of CIESS and BET; a controller chooses the sizes
    and `assign_sizes` writes them. For graph backbones that need every row, `masked_table`
    returns the whole table with masked coordinates zeroed.

    Args:
        input_dim: number of rows (vocabulary size).
        output_dim: full embedding width ``d_max``.
        min_size: smallest size a row may be given, in ``[1, output_dim]``.
        embeddings_initializer: initializer of the table (as in ``Embedding``).
        embeddings_regularizer: regularizer of the table, applied to kept coordinates only.
        embeddings_constraint: constraint applied to the table.
        mask_zero: whether id 0 is padding (as in ``Embedding``).
        **kwargs: base ``Layer`` arguments (``name``, ``dtype``, ``trainable``, ...).

    Example:
        >>> layer = MaskedEmbedding(4, 3, embeddings_initializer="ones")
        >>> layer.assign_sizes([3, 2, 1, 1])
        >>> layer(tf.constant([1])).numpy().tolist()
        [[1.0, 1.0, 0.0]]

    References:
        Qu et al., "Continuous Input Embedding Size Search For Recommender Systems",
        SIGIR 2023. Qu et al., "Budgeted Embedding Table For Recommender Systems", WSDM 2024.
    """

    _tfembsize_searchable = True

    def __init__(
        self,
        input_dim: int,
        output_dim: int,
        *,
        min_size: int = 1,
        embeddings_initializer: Any = "uniform",
        embeddings_regularizer: Any = None,
        embeddings_constraint: Any = None,
        mask_zero: bool = False,
        **kwargs: Any,
    ) -> None:
        input_dim = validate_dim("input_dim", input_dim)
        output_dim = validate_dim("output_dim", output_dim)
        if (
            isinstance(min_size, bool)
            or not isinstance(min_size, (int, np.integer))
            or not 1 <= min_size <= output_dim
        ):
            raise ValueError(
                f"`min_size` must be an integer in [1, output_dim={output_dim}]. "
                f"Received: min_size={min_size!r}"
            )
        super().__init__(**embedding_base_kwargs(type(self).__name__, kwargs))
        set_embedding_arguments(
            self,
            input_dim,
            output_dim,
            embeddings_initializer,
            embeddings_regularizer,
            embeddings_constraint,
            mask_zero,
        )
        self.min_size = int(min_size)

    # Weights ---------------------------------------------------------------------------------
    def build(self, input_shape: Any = None) -> None:
        """Creates the table and the size vector."""
        if self.built:
            return
        reg = (
            _MaskedRegularizer(self.embeddings_regularizer, self)
            if self.embeddings_regularizer is not None
            else None
        )
        self.embeddings = self.add_weight(
            name="embeddings",
            shape=(self.input_dim, self.output_dim),
            initializer=self.embeddings_initializer,
            regularizer=reg,
            constraint=self.embeddings_constraint,
            trainable=True,
        )
        self._sizes = self.add_weight(
            name="sizes",
            shape=(self.input_dim,),
            dtype="int32",
            initializer=self._sizes_initializer,
            trainable=False,
        )
        self.built: bool = True

    def initial_sizes(self) -> np.ndarray:
        """The size vector the layer starts with (all ``output_dim`` here)."""
        return np.full(self.input_dim, self.output_dim, dtype=np.int32)

    def _sizes_initializer(self, shape: Any, dtype: Any = None) -> tf.Tensor:
        return tf.constant(self.initial_sizes(), dtype=tf.int32)

    def _ensure_built(self) -> None:
        if not self.built:
            with tf.init_scope():
                self.build(None)

    # Size API --------------------------------------------------------------------------------
    @property
    def sizes(self) -> np.ndarray:
        """A numpy copy of the per-row sizes (int32, shape ``(input_dim,)``)."""
        self._ensure_built()
        return np.array(self._sizes.numpy(), dtype=np.int32, copy=True)

    @property
    def sizes_variable(self) -> tf.Variable:
        """The int32 variable that holds the sizes (for graph code)."""
        self._ensure_built()
        return self._sizes

    def validate_sizes(self, sizes: Any) -> np.ndarray:
        """Checks dtype, shape and range of a size vector and returns it as int32.

        Raises:
            TypeError: the sizes are not integers.
            ValueError: wrong length, or a size outside ``[min_size, output_dim]``.
        """
        arr = np.asarray(sizes)
        if arr.dtype.kind not in "iu":
            raise TypeError(
                f"Layer '{self.name}': sizes must be integers. Received dtype {arr.dtype}."
            )
        if arr.shape != (self.input_dim,):
            raise ValueError(
                f"Layer '{self.name}': sizes must have shape ({self.input_dim},) (one per row). "
                f"Received shape {arr.shape}."
            )
        lo, hi = int(arr.min()), int(arr.max())
        if lo < self.min_size or hi > self.output_dim:
            bad = lo if lo < self.min_size else hi
            row = int(np.flatnonzero(arr == bad)[0])
            raise ValueError(
                f"Layer '{self.name}': sizes must lie in [min_size={self.min_size}, "
                f"output_dim={self.output_dim}]. Received size {bad} at row {row}."
            )
        return arr.astype(np.int32)

    def assign_sizes(self, sizes: Any) -> None:
        """Sets the per-row sizes (eagerly).

        Args:
            sizes: integer vector of length ``input_dim`` with values in
                ``[min_size, output_dim]``.
        """
        arr = self.validate_sizes(sizes)
        self._ensure_built()
        self._sizes.assign(arr)

    def usable_params(self) -> int:
        """Parameters allowed to be non-zero: the sum of the sizes."""
        return int(self.sizes.sum(dtype=np.int64))

    def full_mask(self, dtype: Any = tf.float32) -> tf.Tensor:
        """The ``input_dim x output_dim`` prefix mask, computed from the sizes on demand."""
        return tf.sequence_mask(self._sizes, self.output_dim, dtype=dtype)

    def masked_table(self) -> tf.Tensor:
        """The whole table with masked coordinates zeroed (for graph backbones and export)."""
        self._ensure_built()
        table = tf.convert_to_tensor(self.embeddings)
        return table * self.full_mask(table.dtype)

    # Forward ---------------------------------------------------------------------------------
    def call(self, inputs: Any) -> tf.Tensor:
        """Looks up ``inputs`` (ids of any rank, or ragged) and zeros masked coordinates."""
        if isinstance(inputs, tf.RaggedTensor):
            return tf.ragged.map_flat_values(self._lookup, inputs)
        return self._lookup(inputs)

    def _lookup(self, inputs: Any) -> tf.Tensor:
        ids = integer_ids(inputs, self.input_dim, self.name)
        rows = gather_rows(self.embeddings, ids)
        sizes = gather_rows(self._sizes, ids)
        # Row d of `prefixes` is the mask of size d. Gathering it writes the [..., output_dim]
        # mask in one pass (tf.sequence_mask takes two: compare, then cast). `prefixes` depends
        # on nothing, so Grappler folds it into a constant; the saved graph stays small.
        prefixes = tf.sequence_mask(tf.range(self.output_dim + 1), self.output_dim, rows.dtype)
        return tf.cast(rows * tf.gather(prefixes, sizes), self.compute_dtype)

    # Config ----------------------------------------------------------------------------------
    def get_config(self) -> dict:
        """Exactly the constructor arguments."""
        config = super().get_config()
        config.update(
            {
                "input_dim": self.input_dim,
                "output_dim": self.output_dim,
                "min_size": self.min_size,
                "embeddings_initializer": keras.initializers.serialize(self.embeddings_initializer),
                "embeddings_regularizer": keras.regularizers.serialize(self.embeddings_regularizer)
                if self.embeddings_regularizer is not None
                else None,
                "embeddings_constraint": keras.constraints.serialize(self.embeddings_constraint)
                if self.embeddings_constraint is not None
                else None,
                "mask_zero": self.mask_zero,
            }
        )
        if self.activity_regularizer is not None:
            config["activity_regularizer"] = keras.regularizers.serialize(self.activity_regularizer)
        return config
