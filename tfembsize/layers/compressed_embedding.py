"""CompressedEmbedding: an inference-only table that stores only the kept parameters.

The storage format (`PackedTable`, the size-class layout) and the packing of a searchable
layer's kept coordinates (`pack_table`, `pack_layer`) live in `tfembsize.layers.packed_table`;
the bit packing of its index arrays in ``tfembsize.layers._packing``. They are re-exported here,
so ``from tfembsize.layers.compressed_embedding import PackedTable, pack_table`` keeps working.

Lookups, full tables and scores only use ops with GPU kernels and compile with XLA.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import tensorflow as tf

from tfembsize._keras import is_legacy_keras, keras, register_serializable
from tfembsize.layers._packing import WORD_BITS, bits_for, bits_tf, unpack_all_tf, unpack_tf
from tfembsize.layers._packing import pack_uint as pack_uint  # re-export
from tfembsize.layers._packing import unpack_uint as unpack_uint  # re-export
from tfembsize.layers.packed_table import KINDS, PackedTable, pack_layer, pack_table
from tfembsize.layers.packed_table import POSITIONS as POSITIONS  # re-export
from tfembsize.layers.packed_table import merge_classes as merge_classes  # re-export
from tfembsize.layers.utils import EmbeddingOutputsMixin, integer_ids, validate_dim

__all__ = ["CompressedEmbedding", "PackedTable", "pack_table", "KINDS"]

# The old private names of the graph-side unpacking helpers, kept for existing imports.
_unpack_tf = unpack_tf
_unpack_all_tf = unpack_all_tf

logger = logging.getLogger(__name__)


@register_serializable
class CompressedEmbedding(EmbeddingOutputsMixin, keras.layers.Layer):
    """An inference-only embedding table that stores only the kept parameters.

    A lookup returns exactly what the searchable layer it was made from returned: row
    ``n``'s kept coordinates in their places and zeros elsewhere, ``output_dim`` wide, for
    integer ids of any shape (or ragged). The storage is the size-class layout described in
    `tfembsize.layers.packed_table`: the values of all kept coordinates in one flat array
    (rows of equal stored width form a dense block), a bit-packed row -> slot map, and for
    unstructured masks the positions of the non-zeros (column indices, or bitmasks). Stored
    bytes are 4 bytes per usable parameter plus ``index_bits / 8`` bytes per row (twice that
    for a ``scoring`` table), plus the positions of unstructured masks (1 byte per non-zero
    with 8-bit columns); `tfembsize.export.compression_report` counts all of it.

    Build one with `CompressedEmbedding.from_layer` (from a `MaskedEmbedding`,
    `BudgetedEmbedding` or a PEP layer) or `from_packed`; `tfembsize.export.compress`
    replaces every searchable layer of a model with one. The constructor takes the class
    structure (as `get_config` returns it) and creates zero-filled weights of the right
    shapes, so Keras model loading and `set_weights` restore the arrays.

    Ids outside ``[0, input_dim)`` raise `tf.errors.InvalidArgumentError` (eagerly at
    once; in a graph through an ``Assert`` before the lookup). Under XLA the ``Assert`` is
    dropped and indices are clamped, so validate ids before a compiled region (the
    signatures written by `tfembsize.export.save_compressed` do).

    Args:
        input_dim: rows of the table.
        output_dim: width of a lookup (``d_max`` of the source layer).
        kind: ``"prefix"`` or ``"sparse"``.
        class_widths: stored width of each size class (ascending).
        class_counts: rows in each class (same length, sums to ``input_dim``).
        usable_params: usable parameters of the source layer (for reports).
        colist_classes: ``"sparse"`` only: leading classes that store column indices.
        index_bits: bits per row of the packed maps (8, 16 or 32).
        column_bits: ``"sparse"`` only: bits per column index (8 or 16).
        scoring: whether the slot -> row map is stored (enables `top_k`).
        mask_zero: whether id 0 is padding (as in ``Embedding``).
        value_dtype: dtype of the stored values (the source table's dtype).
        **kwargs: base ``Layer`` arguments (``name``, ``dtype``, ...).

    Example:
        >>> layer = MaskedEmbedding(4, 3, embeddings_initializer="ones")
        >>> layer.assign_sizes([3, 2, 1, 1])
        >>> packed = CompressedEmbedding.from_layer(layer)
        >>> packed(tf.constant([1])).numpy().tolist()
        [[1.0, 1.0, 0.0]]

    References:
        Qu et al., "Budgeted Embedding Table For Recommender Systems", WSDM 2024 (the
        budgets being exported); Liu et al., "Learnable Embedding Sizes for Recommender
        Systems" (PEP), ICLR 2021 (unstructured masks).
    """

    def __init__(
        self,
        input_dim: int,
        output_dim: int,
        *,
        kind: str,
        class_widths: Any,
        class_counts: Any,
        usable_params: int,
        colist_classes: int = 0,
        index_bits: int | None = None,
        column_bits: int = 0,
        scoring: bool = False,
        mask_zero: bool = False,
        value_dtype: str = "float32",
        **kwargs: Any,
    ) -> None:
        kwargs.pop("trainable", None)
        super().__init__(trainable=False, **kwargs)
        self.input_dim = validate_dim("input_dim", input_dim)
        self.output_dim = validate_dim("output_dim", output_dim)
        if kind not in KINDS:
            raise ValueError(f"`kind` must be one of {KINDS}. Received: kind={kind!r}")
        self.kind = kind
        self.class_widths = tuple(int(w) for w in class_widths)
        self.class_counts = tuple(int(c) for c in class_counts)
        if len(self.class_widths) != len(self.class_counts) or not self.class_widths:
            raise ValueError(
                "`class_widths` and `class_counts` must be non-empty and of equal length. "
                f"Received {len(self.class_widths)} widths and {len(self.class_counts)} counts."
            )
        if sum(self.class_counts) != self.input_dim or min(self.class_counts) < 1:
            raise ValueError(
                f"`class_counts` must be positive and sum to input_dim={self.input_dim}. "
                f"Received sum {sum(self.class_counts)}."
            )
        if (
            list(self.class_widths) != sorted(set(self.class_widths))
            or self.class_widths[0] < 0
            or self.class_widths[-1] > self.output_dim
        ):
            raise ValueError(
                "`class_widths` must be strictly increasing within "
                f"[0, output_dim={self.output_dim}]. Received: {list(self.class_widths)}"
            )
        self._usable_params = int(usable_params)
        self.colist_classes = int(colist_classes) if kind == "sparse" else 0
        if not 0 <= self.colist_classes <= len(self.class_widths):
            raise ValueError(
                f"`colist_classes` must be in [0, {len(self.class_widths)}]. "
                f"Received: colist_classes={colist_classes!r}"
            )
        self.index_bits = (
            int(index_bits) if index_bits is not None else bits_for(self.input_dim - 1)
        )
        if self.index_bits not in (8, 16, 32) or (1 << min(self.index_bits, 40)) < self.input_dim:
            raise ValueError(
                f"`index_bits` must be 8, 16 or 32 and hold input_dim - 1. Received: "
                f"index_bits={index_bits!r} for input_dim={self.input_dim}"
            )
        self.column_bits = int(column_bits) if kind == "sparse" else 0
        if kind == "sparse" and self.colist_classes and self.column_bits not in (8, 16):
            raise ValueError(
                f"`column_bits` must be 8 or 16. Received: column_bits={column_bits!r}"
            )
        self.scoring = bool(scoring)
        self.mask_zero = bool(mask_zero)
        self.supports_masking = self.mask_zero
        self.value_dtype = tf.as_dtype(value_dtype).name
        self._derive_structure()
        with tf.init_scope():
            self._create_weights()
        self.built = True

    # Structure --------------------------------------------------------------------------------
    def _derive_structure(self) -> None:
        widths = np.asarray(self.class_widths, dtype=np.int64)
        counts = np.asarray(self.class_counts, dtype=np.int64)
        self._starts = np.concatenate([[0], np.cumsum(counts)])
        self._bases = np.concatenate([[0], np.cumsum(widths * counts)])
        self.num_values = int(self._bases[-1])
        if self.num_values >= 2**31:
            raise ValueError("CompressedEmbedding holds at most 2**31 - 1 values.")
        self._mask_words = -(-self.output_dim // WORD_BITS)
        k_t = self.colist_classes
        col = np.zeros(len(widths) + 1, dtype=np.int64)
        col[1 : k_t + 1] = np.cumsum(widths[:k_t] * counts[:k_t])
        col[k_t + 1 :] = col[k_t]
        self._col_bases = col
        msk = np.zeros(len(widths) + 1, dtype=np.int64)
        if self.kind == "sparse":
            msk[k_t + 1 :] = np.cumsum(counts[k_t:] * self._mask_words)
        self._mask_bases = msk
        self.num_columns = int(col[-1])
        self.num_mask_words = int(msk[-1])
        self._wmax = int(widths.max())
        self._wmax_colist = int(widths[:k_t].max()) if k_t else 0

    def _shapes(self) -> dict[str, tuple[int, str]]:
        index_words = -(-self.input_dim * self.index_bits // WORD_BITS)
        col_words = -(-self.num_columns * max(self.column_bits, 1) // WORD_BITS)
        return {
            "values": (self.num_values, self.value_dtype),
            "row_to_slot": (index_words, "int32"),
            "slot_to_row": (index_words if self.scoring else 0, "int32"),
            "columns": (col_words if self.num_columns else 0, "int32"),
            "bitmask": (self.num_mask_words, "int32"),
        }

    def _create_weights(self) -> None:
        self._arrays: dict[str, Any] = {}
        # Lookups work in the stored dtype and cast their result to the compute dtype, so
        # a mixed-precision policy must not autocast the values when they are read.
        no_autocast = {"experimental_autocast": False} if is_legacy_keras() else {"autocast": False}
        for name, (size, dtype) in self._shapes().items():
            if name in ("slot_to_row", "columns", "bitmask") and size == 0:
                continue
            self._arrays[name] = self.add_weight(
                name=name,
                shape=(size,),
                dtype=dtype,
                initializer="zeros",
                trainable=False,
                **no_autocast,
            )

    def build(self, input_shape: Any = None) -> None:
        """Weights are created by the constructor (their shapes come from the config)."""
        self.built = True

    @property
    def weight_names(self) -> tuple[str, ...]:
        """Names of the stored arrays, in the order of ``get_weights()``."""
        return tuple(self._arrays)

    # Construction -----------------------------------------------------------------------------
    @classmethod
    def config_for(cls, packed: PackedTable) -> dict:
        """Constructor arguments for a packed table (without ``name``)."""
        return {
            "input_dim": packed.input_dim,
            "output_dim": packed.output_dim,
            "kind": packed.kind,
            "class_widths": list(packed.class_widths),
            "class_counts": list(packed.class_counts),
            "usable_params": packed.usable_params,
            "colist_classes": packed.colist_classes,
            "index_bits": packed.index_bits,
            "column_bits": packed.column_bits,
            "scoring": packed.scoring,
            "value_dtype": packed.values.dtype.name,
        }

    @classmethod
    def from_packed(cls, packed: PackedTable, **kwargs: Any) -> CompressedEmbedding:
        """A layer holding ``packed`` (``kwargs``: ``name``, ``mask_zero``, ``dtype``)."""
        layer = cls(**cls.config_for(packed), **kwargs)
        layer.set_packed(packed)
        return layer

    @classmethod
    def from_layer(
        cls,
        layer: Any,
        *,
        scoring: bool = False,
        max_classes: int | None = None,
        positions: str = "columns",
    ) -> CompressedEmbedding:
        """Compresses a searchable layer (prefix-size or PEP-style).

        The source must expose either ``pruning_mask()`` and ``pruned_table()`` (PEP) or
        ``sizes`` and ``masked_table()`` (`MaskedEmbedding`, `BudgetedEmbedding`). The new
        layer has the source's name, ``mask_zero`` and dtype policy.

        Args:
            layer: the searchable layer.
            scoring: store the slot -> row map so `top_k` and `scores` work.
            max_classes: see `pack_table`.
            positions: see `pack_table`.

        Raises:
            TypeError: the layer exposes neither interface.
        """
        packed = pack_layer(layer, scoring=scoring, max_classes=max_classes, positions=positions)
        kwargs: dict[str, Any] = {
            "name": layer.name,
            "mask_zero": getattr(layer, "mask_zero", False),
        }
        policy = getattr(layer, "dtype_policy", None)
        if policy is not None:
            kwargs["dtype"] = policy
        return cls.from_packed(packed, **kwargs)

    def set_packed(self, packed: PackedTable) -> None:
        """Writes the arrays of ``packed`` (its structure must match this layer's config)."""
        mine = {k: v for k, v in self.get_config().items() if k in self.config_for(packed)}
        theirs = self.config_for(packed)
        if mine != theirs:
            diff = {k: (mine.get(k), v) for k, v in theirs.items() if mine.get(k) != v}
            raise ValueError(
                f"Layer '{self.name}': the packed table does not match the layer's structure "
                f"(config key: (layer, packed)): {diff}"
            )
        arrays = packed.arrays()
        for name, var in self._arrays.items():
            var.assign(arrays[name])

    def packed(self) -> PackedTable:
        """The stored arrays and structure as a `PackedTable` (numpy copies)."""
        arrays = {name: np.asarray(var.numpy()) for name, var in self._arrays.items()}
        empty = np.zeros(0, np.int32)
        return PackedTable(
            input_dim=self.input_dim,
            output_dim=self.output_dim,
            kind=self.kind,
            class_widths=self.class_widths,
            class_counts=self.class_counts,
            colist_classes=self.colist_classes,
            index_bits=self.index_bits,
            column_bits=self.column_bits,
            usable_params=self._usable_params,
            values=arrays["values"],
            row_to_slot=arrays["row_to_slot"],
            slot_to_row=arrays.get("slot_to_row", empty),
            columns=arrays.get("columns", empty),
            bitmask=arrays.get("bitmask", empty),
        )

    def tf_variables(self) -> dict[str, tf.Variable]:
        """The underlying ``tf.Variable`` of every stored array (for SavedModel export)."""
        return {name: _as_tf_variable(var) for name, var in self._arrays.items()}

    # Lookups ----------------------------------------------------------------------------------
    def call(self, inputs: Any) -> tf.Tensor:
        """Looks up ``inputs`` (integer ids of any rank, or ragged)."""
        if isinstance(inputs, tf.RaggedTensor):
            return tf.ragged.map_flat_values(self._lookup, inputs)
        return self._lookup(inputs)

    def _lookup(self, inputs: Any) -> tf.Tensor:
        ids = integer_ids(inputs, self.input_dim, self.name)
        if ids.dtype != tf.int32:
            ids = tf.cast(ids, tf.int32)
        flat = tf.reshape(ids, [-1])
        rows = self.lookup_flat(flat)
        out_shape = tf.concat([tf.shape(ids), [self.output_dim]], axis=0)
        return tf.cast(tf.reshape(rows, out_shape), self.compute_dtype)

    def _read(self, name: str) -> tf.Tensor:
        return tf.convert_to_tensor(self._arrays[name])

    def _class_consts(self) -> dict[str, tf.Tensor]:
        c = {
            "widths": tf.constant(np.asarray(self.class_widths, np.int32)),
            "starts": tf.constant(self._starts[:-1].astype(np.int32)),
            "bases": tf.constant(self._bases[:-1].astype(np.int32)),
        }
        if self.kind == "sparse":
            c["col_bases"] = tf.constant(self._col_bases[:-1].astype(np.int32))
            c["mask_bases"] = tf.constant(self._mask_bases[:-1].astype(np.int32))
        return c

    def _class_of(self, slots: tf.Tensor) -> tf.Tensor:
        if len(self.class_widths) == 1:
            return tf.zeros_like(slots)
        bounds = tf.constant(self._starts[1:-1].astype(np.int32))
        return tf.reduce_sum(tf.cast(slots[:, None] >= bounds[None, :], tf.int32), axis=1)

    def row_classes(self, ids: tf.Tensor) -> tf.Tensor:
        """Size class (index into ``class_widths``) of each of a 1-D int32 tensor of ids."""
        slots = unpack_tf(self._read("row_to_slot"), ids, self.index_bits)
        return self._class_of(slots)

    def lookup_flat(self, ids: tf.Tensor) -> tf.Tensor:
        """Rows for a 1-D int32 tensor of (already validated) ids: ``[m, output_dim]``."""
        m = tf.shape(ids)[0]
        d = self.output_dim
        dtype = tf.as_dtype(self.value_dtype)
        if self.num_values == 0:
            return tf.zeros([m, d], dtype)
        consts = self._class_consts()
        slots = unpack_tf(self._read("row_to_slot"), ids, self.index_bits)
        cls = self._class_of(slots)
        width = tf.gather(consts["widths"], cls)
        local = slots - tf.gather(consts["starts"], cls)
        first = tf.gather(consts["bases"], cls) + local * width
        values = self._read("values")
        if self.kind == "prefix":
            j = tf.range(self._wmax, dtype=tf.int32)
            valid = j[None, :] < width[:, None]
            idx = tf.where(valid, first[:, None] + j[None, :], 0)
            rows = tf.where(valid, tf.gather(values, idx), tf.zeros([], dtype))
            if self._wmax < d:
                rows = tf.pad(rows, [[0, 0], [0, d - self._wmax]])
            return rows
        out = tf.zeros([m, d], dtype)
        k_t = self.colist_classes
        if k_t:
            is_c = cls < k_t
            wc = self._wmax_colist
            j = tf.range(wc, dtype=tf.int32)
            valid = tf.logical_and(j[None, :] < width[:, None], is_c[:, None])
            v_idx = tf.where(valid, first[:, None] + j[None, :], 0)
            vals = tf.where(valid, tf.gather(values, v_idx), tf.zeros([], dtype))
            c_first = tf.gather(consts["col_bases"], cls) + local * width
            c_idx = tf.where(valid, c_first[:, None] + j[None, :], 0)
            cols = unpack_tf(self._read("columns"), c_idx, self.column_bits)
            # Scatter-add into [m, d]; padding entries add 0 to column 0 of their row.
            seg = tf.range(m, dtype=tf.int32)[:, None] * d + tf.where(valid, cols, 0)
            scattered = tf.math.unsorted_segment_sum(
                tf.reshape(vals, [-1]), tf.reshape(seg, [-1]), m * d
            )
            out += tf.reshape(scattered, [m, d])
        if k_t < len(self.class_widths):
            is_b = cls >= k_t
            nw = self._mask_words
            w_first = tf.gather(consts["mask_bases"], cls) + local * nw
            w_idx = tf.where(is_b[:, None], w_first[:, None] + tf.range(nw)[None, :], 0)
            words = tf.gather(self._read("bitmask"), w_idx)
            bits = bits_tf(words, d) * tf.cast(is_b, tf.int32)[:, None]
            rank = tf.cumsum(bits, axis=1, exclusive=True)
            on = bits > 0
            idx = tf.where(on, first[:, None] + rank, 0)
            out += tf.where(on, tf.gather(values, idx), tf.zeros([], dtype))
        return out

    # Whole-table operations -------------------------------------------------------------------
    def masked_table(self) -> tf.Tensor:
        """The whole ``[input_dim, output_dim]`` table (zeros where nothing is kept).

        Same name as `MaskedEmbedding.masked_table`, so graph backbones that propagate over
        all rows work unchanged on a compressed model.
        """
        rows = self.lookup_flat(tf.range(self.input_dim, dtype=tf.int32))
        return tf.cast(rows, self.compute_dtype)

    def pruned_table(self) -> tf.Tensor:
        """Alias of `masked_table` (the name PEP layers use)."""
        return self.masked_table()

    def usable_params(self) -> int:
        """Usable parameters of the source layer (what its budget counted)."""
        return self._usable_params

    def slot_scores(self, queries: tf.Tensor) -> tf.Tensor:
        """Dot products of ``queries [b, output_dim]`` with every row, in slot order.

        Prefix tables: each size class is a dense ``[count, width]`` block, so this is one
        matmul per class over the class's ``width`` leading query coordinates; nothing is
        decompressed. Sparse tables: rows with column lists are scored as gathered products
        summed per row when the batch is small (at most `small_batch` queries), and
        expanded to ``output_dim`` once and multiplied otherwise; rows with bitmasks are
        expanded and multiplied.
        """
        q = tf.convert_to_tensor(queries)
        if self.kind == "sparse":
            return self._sparse_slot_scores(q)
        values = tf.cast(self._read("values"), q.dtype)
        b = tf.shape(q)[0]
        parts = []
        for k, (w, c) in enumerate(zip(self.class_widths, self.class_counts, strict=True)):
            if w == 0:
                parts.append(tf.zeros([b, c], q.dtype))
                continue
            base = int(self._bases[k])
            block = tf.reshape(values[base : base + c * w], [c, w])
            parts.append(tf.matmul(q[:, :w], block, transpose_b=True))
        return parts[0] if len(parts) == 1 else tf.concat(parts, axis=1)

    #: Batches of at most this many queries score column-list rows without expanding them.
    small_batch = 16

    def _sparse_slot_scores(self, q: tf.Tensor) -> tf.Tensor:
        values = tf.cast(self._read("values"), q.dtype)
        d = self.output_dim
        k_t = self.colist_classes
        widths, counts = self.class_widths, self.class_counts
        parts = []
        if k_t:
            rows_c = int(self._starts[k_t])
            n_vals = int(self._bases[k_t])
            if n_vals == 0:
                parts.append(tf.zeros([tf.shape(q)[0], rows_c], q.dtype))
            else:
                vals = values[:n_vals]
                cols = unpack_all_tf(self._read("columns"), self.column_bits, n_vals)
                starts, bases = self._starts, self._bases

                def gathered() -> tf.Tensor:
                    # Products of every stored value with its query coordinate, summed row
                    # by row: each class is a contiguous [count, width] block.
                    b = tf.shape(q)[0]
                    prods = tf.gather(tf.transpose(q), cols) * vals[:, None]  # [n_vals, b]
                    sums = []
                    for k in range(k_t):
                        w, c = widths[k], counts[k]
                        if w == 0:
                            sums.append(tf.zeros([c, b], q.dtype))
                            continue
                        block = prods[int(bases[k]) : int(bases[k]) + c * w]
                        sums.append(tf.reduce_sum(tf.reshape(block, [c, w, b]), axis=1))
                    return tf.transpose(sums[0] if len(sums) == 1 else tf.concat(sums, 0))

                def expanded() -> tf.Tensor:
                    # The slot of every stored value, each slot repeated `width` times.
                    seg = tf.concat(
                        [
                            tf.reshape(
                                tf.tile(
                                    tf.range(int(starts[k]), int(starts[k + 1]))[:, None],
                                    [1, widths[k]],
                                ),
                                [-1],
                            )
                            for k in range(k_t)
                            if widths[k]
                        ],
                        axis=0,
                    )
                    dense = tf.math.unsorted_segment_sum(vals, seg * d + cols, rows_c * d)
                    return tf.matmul(q, tf.reshape(dense, [rows_c, d]), transpose_b=True)

                parts.append(tf.cond(tf.shape(q)[0] <= self.small_batch, gathered, expanded))
        if k_t < len(widths):
            rows_b = int(self._starts[-1] - self._starts[k_t])
            nw = self._mask_words
            words = tf.reshape(self._read("bitmask"), [rows_b, nw])
            bits = bits_tf(words, d)
            rank = tf.cumsum(bits, axis=1, exclusive=True)
            offsets = tf.concat(
                [
                    int(self._bases[k]) + tf.range(counts[k], dtype=tf.int32) * widths[k]
                    for k in range(k_t, len(widths))
                ],
                axis=0,
            )
            on = bits > 0
            dense = tf.where(
                on,
                tf.gather(values, tf.where(on, offsets[:, None] + rank, 0)),
                tf.zeros([], q.dtype),
            )
            parts.append(tf.matmul(q, dense, transpose_b=True))
        return parts[0] if len(parts) == 1 else tf.concat(parts, axis=1)

    def scores(self, queries: tf.Tensor) -> tf.Tensor:
        """Dot products of ``queries [b, output_dim]`` with every row, in row-id order."""
        slot_scores = self.slot_scores(queries)
        slots = unpack_all_tf(self._read("row_to_slot"), self.index_bits, self.input_dim)
        return tf.gather(slot_scores, slots, axis=1)

    def top_k(self, queries: tf.Tensor, k: Any) -> tuple[tf.Tensor, tf.Tensor]:
        """The ``k`` rows with the largest dot product with each query.

        Needs ``scoring=True`` (the stored slot -> row map).

        Args:
            queries: ``[b, output_dim]`` float tensor.
            k: int scalar (Python or tensor), ``1 <= k <= input_dim``.

        Returns:
            ``(ids [b, k] int32, scores [b, k])``, scores descending.
        """
        if not self.scoring:
            raise ValueError(
                f"Layer '{self.name}' was compressed with scoring=False, so it does not store "
                "the slot -> row map `top_k` needs. Compress it with scoring=True."
            )
        top = tf.math.top_k(self.slot_scores(queries), k=k)
        ids = unpack_tf(self._read("slot_to_row"), top.indices, self.index_bits)
        return ids, top.values

    # Config -----------------------------------------------------------------------------------
    def get_config(self) -> dict:
        """Exactly the constructor arguments."""
        config = super().get_config()
        config.pop("trainable", None)
        config.update(
            {
                "input_dim": self.input_dim,
                "output_dim": self.output_dim,
                "kind": self.kind,
                "class_widths": list(self.class_widths),
                "class_counts": list(self.class_counts),
                "usable_params": self._usable_params,
                "colist_classes": self.colist_classes,
                "index_bits": self.index_bits,
                "column_bits": self.column_bits,
                "scoring": self.scoring,
                "mask_zero": self.mask_zero,
                "value_dtype": self.value_dtype,
            }
        )
        return config


def _as_tf_variable(var: Any) -> tf.Variable:
    """The ``tf.Variable`` behind a Keras 3 variable (tf-keras weights already are one)."""
    if isinstance(var, tf.Variable):
        return var
    inner = getattr(var, "value", None)
    if isinstance(inner, tf.Variable):
        return inner
    raise TypeError(f"Cannot find the tf.Variable behind {var!r}.")
