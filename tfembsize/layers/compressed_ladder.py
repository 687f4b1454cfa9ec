"""CompressedLadderEmbedding: a trained `LadderEmbedding` for serving, each row at its own size.

A `LadderEmbedding` keeps one table per rung while its sizes are searched; a row only ever
reads the table of its current rung. For serving, `pack_ladder` keeps exactly those values
(``d_{r_n}`` floats for row ``n``) in the size-class layout of `tfembsize.layers.packed_table`
(one class per rung in use; a row's class is its rung), and `CompressedLadderEmbedding` holds
them with the maps between rungs and the output normalisation's inference statistics. A
lookup lifts each row from its rung to the full width, normalises it with the moving
statistics and applies ``tanh``: the very computation of the trained layer in inference, so
its outputs are equal. Every op has a GPU kernel and the lookup compiles with XLA.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow as tf

from tfembsize._batch_norm import batch_norm
from tfembsize._keras import is_legacy_keras, keras, register_serializable
from tfembsize.layers.compressed_embedding import CompressedEmbedding
from tfembsize.layers.ladder_embedding import LadderEmbedding, LadderOverhead, _validate_ladder
from tfembsize.layers.packed_table import PackedTable, pack_table
from tfembsize.layers.utils import EmbeddingOutputsMixin, integer_ids, validate_dim

__all__ = ["CompressedLadderEmbedding", "pack_ladder"]


def pack_ladder(layer: LadderEmbedding) -> PackedTable:
    """Each row of a ladder's current rung, packed: ``d_{r_n}`` values for row ``n``.

    The rows are laid out as a prefix table of width ``d_max`` whose row ``n`` keeps its
    first ``d_{r_n}`` coordinates, the row ``E^(r_n)[n]``; one size class per rung in use.
    """
    if not isinstance(layer, LadderEmbedding):
        raise TypeError(f"`layer` must be a LadderEmbedding. Received: {type(layer).__name__}")
    rungs = layer.rungs
    ladder = np.asarray(layer.ladder, np.int64)
    tables = [np.asarray(t.numpy()) for t in layer.tables]
    own = np.zeros((layer.input_dim, layer.output_dim), tables[0].dtype)
    for k, table in enumerate(tables):
        rows = np.flatnonzero(rungs == k)
        own[rows, : ladder[k]] = table[rows]
    return pack_table(own, sizes=ladder[rungs], usable_params=layer.usable_params())


@register_serializable
class CompressedLadderEmbedding(EmbeddingOutputsMixin, keras.layers.Layer):
    """An inference-only `LadderEmbedding`: each row stored at its rung's size (ESAPN).

    Row ``n`` on rung ``r_n`` stores only its ``d_{r_n}`` values (a `CompressedEmbedding`
    sublayer, ``rows``, in the size-class layout: one class per rung in use). A lookup
    lifts them to ``d_max`` through the maps ``T_{r_n}, ..., T_{L-2}``, normalises with the
    moving statistics (``gamma * (x - mean) / sqrt(variance + epsilon) + beta``) and applies
    ``tanh``, exactly as the trained `LadderEmbedding` does in inference. Ids of any shape
    (or ragged) are accepted; an id outside ``[0, input_dim)`` raises
    `tf.errors.InvalidArgumentError` (under XLA the check is dropped). The lookup uses only
    ops with GPU kernels and compiles with XLA.

    Stored: 4 bytes per usable parameter (`usable_params`, the sum of the rows' sizes) and
    a bit-packed row map (``rows``), plus the maps and the normalisation
    (`overhead_params`), shared by all rows. Build one with
    `from_layer`; `tfembsize.export.compress` replaces every `LadderEmbedding` of a model
    with one. The constructor takes the structure (as `get_config` returns it) and creates
    zero-filled weights, so Keras model loading and ``set_weights`` restore the values.

    Args:
        input_dim: rows of the table.
        ladder: the candidate sizes of the source layer (strictly increasing).
        rows: the config of the ``rows`` `CompressedEmbedding` (prefix layout, width
            ``ladder[-1]``, class widths taken from ``ladder``).
        epsilon: the normalisation's epsilon.
        mask_zero: whether id 0 is padding (as in ``Embedding``).
        **kwargs: base ``Layer`` arguments (``name``, ``dtype``).

    Example:
        >>> ladder = LadderEmbedding(6, (2, 4, 8))
        >>> _ = ladder.grow([1, 2, 2])
        >>> small = CompressedLadderEmbedding.from_layer(ladder)
        >>> small.usable_params(), bool(np.allclose(small(tf.range(6)), ladder(tf.range(6))))
        (16, True)

    References:
        Liu et al., "Automated Embedding Size Search in Deep Recommender Systems",
        SIGIR 2020 (ESAPN).
    """

    def __init__(
        self,
        input_dim: int,
        ladder: Any,
        *,
        rows: dict[str, Any],
        epsilon: float = 1e-3,
        mask_zero: bool = False,
        **kwargs: Any,
    ) -> None:
        kwargs.pop("trainable", None)
        super().__init__(trainable=False, **kwargs)
        self.input_dim = validate_dim("input_dim", input_dim)
        self.ladder = _validate_ladder(ladder)
        self.output_dim = self.ladder[-1]
        if (
            isinstance(epsilon, bool)
            or not isinstance(epsilon, (int, float, np.floating))
            or not float(epsilon) > 0.0
        ):
            raise ValueError(f"`epsilon` must be positive. Received: epsilon={epsilon!r}")
        self.epsilon = float(epsilon)
        self.mask_zero = bool(mask_zero)
        self.supports_masking = self.mask_zero
        if not isinstance(rows, dict):
            raise TypeError(f"`rows` must be a CompressedEmbedding config. Received: {rows!r}")
        self.rows = CompressedEmbedding(**rows)
        widths = list(self.rows.class_widths)
        if (
            self.rows.input_dim != self.input_dim
            or self.rows.output_dim != self.output_dim
            or self.rows.kind != "prefix"
            or any(w not in self.ladder for w in widths)
        ):
            raise ValueError(
                f"`rows` must be a prefix table of {self.input_dim} rows, width "
                f"{self.output_dim} and class widths from the ladder {list(self.ladder)}. "
                f"Received {self.rows.input_dim} rows, width {self.rows.output_dim}, kind "
                f"{self.rows.kind!r}, class widths {widths}."
            )
        self._class_rungs = np.asarray([self.ladder.index(w) for w in widths], np.int32)
        with tf.init_scope():
            self._create_weights()
        self.built = True

    def _create_weights(self) -> None:
        # The lift runs in float32 (as the stored rows) and casts its result to the compute
        # dtype, so a mixed-precision policy must not autocast the weights when they are read.
        no_autocast = {"experimental_autocast": False} if is_legacy_keras() else {"autocast": False}

        def weight(name: str, shape: tuple[int, ...]) -> Any:
            return self.add_weight(
                name=name,
                shape=shape,
                dtype="float32",
                initializer="zeros",
                trainable=False,
                **no_autocast,
            )

        # One attribute per variable (as LadderEmbedding): checkpoints follow attributes.
        for k, (lo, hi) in enumerate(zip(self.ladder, self.ladder[1:], strict=False)):
            setattr(self, f"map_{k}_kernel", weight(f"map_{k}_kernel", (lo, hi)))
            setattr(self, f"map_{k}_bias", weight(f"map_{k}_bias", (hi,)))
        top = (self.output_dim,)
        self.gamma = weight("gamma", top)
        self.beta = weight("beta", top)
        self.moving_mean = weight("moving_mean", top)
        self.moving_variance = weight("moving_variance", top)

    def build(self, input_shape: Any = None) -> None:
        """Weights are created by the constructor (their shapes come from the config)."""
        self.built = True

    @property
    def map_kernels(self) -> list[Any]:
        """The maps' weights ``W_0, ..., W_{L-2}``."""
        return [getattr(self, f"map_{k}_kernel") for k in range(len(self.ladder) - 1)]

    @property
    def map_biases(self) -> list[Any]:
        """The maps' biases ``b_0, ..., b_{L-2}``."""
        return [getattr(self, f"map_{k}_bias") for k in range(len(self.ladder) - 1)]

    # Construction -----------------------------------------------------------------------------
    @classmethod
    def from_layer(cls, layer: LadderEmbedding) -> CompressedLadderEmbedding:
        """The serving copy of a trained ladder: its rows at their rungs, maps, statistics.

        The new layer has the source's name, ``mask_zero``, dtype policy and epsilon; its
        ``rows`` sublayer is named ``<name>_rows``.
        """
        packed = pack_ladder(layer)
        rows = {
            **CompressedEmbedding.config_for(packed),
            "name": f"{layer.name}_rows",
            "mask_zero": bool(layer.mask_zero),
        }
        kwargs: dict[str, Any] = {"name": layer.name}
        policy = getattr(layer, "dtype_policy", None)
        if policy is not None:
            kwargs["dtype"] = policy
        out = cls(
            layer.input_dim,
            layer.ladder,
            rows=rows,
            epsilon=layer.epsilon,
            mask_zero=layer.mask_zero,
            **kwargs,
        )
        out.rows.set_packed(packed)
        pairs = list(zip(out.map_kernels, layer.map_kernels, strict=True))
        pairs += list(zip(out.map_biases, layer.map_biases, strict=True))
        for name in ("gamma", "beta", "moving_mean", "moving_variance"):
            pairs.append((getattr(out, name), getattr(layer, name)))
        for target, source in pairs:
            target.assign(tf.convert_to_tensor(source))
        return out

    # Counts -----------------------------------------------------------------------------------
    @property
    def rungs(self) -> np.ndarray:
        """Every row's rung (int32, shape ``(input_dim,)``)."""
        ids = tf.range(self.input_dim, dtype=tf.int32)
        return np.asarray(tf.gather(self._class_rungs, self.rows.row_classes(ids)).numpy())

    @property
    def sizes(self) -> np.ndarray:
        """Every row's stored size ``ladder[rung]`` (int32)."""
        return np.asarray(self.ladder, np.int32)[self.rungs]

    def usable_params(self) -> int:
        """Usable parameters: the sum over rows of their size (the values ``rows`` stores)."""
        return int(self.rows.usable_params())

    def overhead_params(self) -> LadderOverhead:
        """Parameters shared by all rows: the maps and the normalisation's four vectors."""
        maps = sum(lo * hi + hi for lo, hi in zip(self.ladder, self.ladder[1:], strict=False))
        return LadderOverhead(maps=int(maps), batch_norm=4 * self.output_dim)

    # Lookups ----------------------------------------------------------------------------------
    def call(self, inputs: Any, training: Any = None) -> tf.Tensor:
        """Looks up ``inputs`` (ids of any rank, or ragged); ``training`` is ignored."""
        del training  # inference only: the moving statistics are always used
        if isinstance(inputs, tf.RaggedTensor):
            return tf.ragged.map_flat_values(self._lookup, inputs)
        return self._lookup(inputs)

    def _lookup(self, inputs: Any) -> tf.Tensor:
        ids = integer_ids(inputs, self.input_dim, self.name)
        if ids.dtype != tf.int32:
            ids = tf.cast(ids, tf.int32)
        flat = tf.reshape(ids, [-1])
        normalised = batch_norm(
            self.lift(flat),
            gamma=self.gamma,
            beta=self.beta,
            moving_mean=self.moving_mean,
            moving_variance=self.moving_variance,
            training=False,
            momentum=0.0,
            epsilon=self.epsilon,
        )
        out = tf.reshape(tf.tanh(normalised), tf.concat([tf.shape(ids), [self.output_dim]], 0))
        out.set_shape(ids.shape.concatenate([self.output_dim]))
        return tf.cast(out, self.compute_dtype)

    def lift(self, ids: tf.Tensor) -> tf.Tensor:
        """Each row lifted from its rung to ``d_max`` (before normalisation), ``[m, d_max]``.

        Args:
            ids: a 1-D int32 tensor of valid ids.
        """
        stored = tf.cast(self.rows.lookup_flat(ids), tf.float32)
        rung = tf.gather(tf.constant(self._class_rungs), self.rows.row_classes(ids))
        z = stored[:, : self.ladder[0]]
        # As the trained layer: after step k, z holds the lift to width d_k of every row on a
        # rung <= k; the row's own values are the first d_k stored coordinates.
        for k in range(1, len(self.ladder)):
            kernel = tf.convert_to_tensor(self.map_kernels[k - 1])
            bias = tf.convert_to_tensor(self.map_biases[k - 1])
            own = stored[:, : self.ladder[k]]
            z = tf.where(tf.equal(rung, k)[:, None], own, tf.matmul(z, kernel) + bias)
        return z

    # Config -----------------------------------------------------------------------------------
    def get_config(self) -> dict:
        """Exactly the constructor arguments."""
        config = super().get_config()
        config.pop("trainable", None)
        rows = self.rows.get_config()
        rows.pop("dtype", None)
        config.update(
            {
                "input_dim": self.input_dim,
                "ladder": list(self.ladder),
                "rows": rows,
                "epsilon": self.epsilon,
                "mask_zero": self.mask_zero,
            }
        )
        return config
