"""The storage format of compressed embedding tables: `PackedTable` and `pack_table`.

The format is a *size-class* layout:

* Rows are grouped into classes of equal stored width ``w`` (by default one class per
  distinct row size, so nothing is padded) and ordered by ``(class, row id)``. A row's
  position in that order is its *slot*.
* ``values`` is one flat float array: the classes one after another, each a row-major
  ``[count, w]`` block, so a class is a dense matrix (a slice and a reshape, no copy of the
  index) that a full-table score can multiply directly.
* ``row_to_slot`` maps row id to slot, bit-packed into int32 words with 8, 16 or 32 bits
  per row (the fewest that hold ``input_dim - 1``). The class of a slot and its offset in
  ``values`` follow from the per-class widths and counts, a few dozen integers kept in the
  layer config, so a lookup needs no other index.
* Tables used for full-table retrieval (``scoring=True``) also store ``slot_to_row``
  (same packing) to map top-k slots back to item ids.
* Unstructured (PEP) masks store each row's non-zeros in column order plus their
  positions: by default the column indices (8 bits each for ``output_dim <= 256``, 4 per
  int32 word), which score fastest; optionally (``positions="smallest"``) per class a
  bitmask of ``ceil(output_dim / 32)`` int32 words per row where that is smaller.

Why this layout (measured in ``benchmarks/export_size_latency.py``, Gowalla-sized tables):
a few padded width buckets (TorchRec-style) waste 5-15 % of the bytes on padding for
frequency-based size plans, while exact classes cost nothing beyond the values and a 2-byte
row map; a flat array with per-row offsets needs the same map plus sizes and cannot be
scored class block by class block with matmuls.

`tfembsize.layers.CompressedEmbedding` holds a packed table and serves lookups, full tables
and scores from it.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import numpy as np
import tensorflow as tf

from tfembsize.layers._packing import (
    WORD_BITS,
    bits_for,
    bits_np,
    mask_words_np,
    pack_uint,
    unpack_uint,
)
from tfembsize.layers.utils import gather_rows

__all__ = [
    "KINDS",
    "POSITIONS",
    "PackedTable",
    "TableRows",
    "merge_classes",
    "pack_layer",
    "pack_table",
]

logger = logging.getLogger(__name__)

#: ``"prefix"``: row ``n`` keeps its first ``w`` coordinates; ``"sparse"``: any subset.
KINDS = ("prefix", "sparse")


@dataclasses.dataclass(frozen=True)
class PackedTable:
    """The arrays and class structure of a compressed table (see the module docstring).

    Attributes:
        input_dim: rows of the table.
        output_dim: width of a lookup (``d_max``).
        kind: ``"prefix"`` (row ``n`` keeps its first ``w`` coordinates) or ``"sparse"``
            (any subset, positions stored).
        class_widths: stored width of each class, in slot order (ascending).
        class_counts: rows in each class.
        colist_classes: for ``"sparse"``, classes ``[0, colist_classes)`` store column
            indices and the rest store bitmasks; 0 for ``"prefix"``.
        index_bits: bits per entry of ``row_to_slot`` / ``slot_to_row``.
        column_bits: bits per stored column index (``"sparse"``), else 0.
        usable_params: parameters allowed to be non-zero in the source layer.
        values: float array, the class blocks one after another.
        row_to_slot: int32 words (packed row -> slot map).
        slot_to_row: int32 words (packed slot -> row map), or an empty array.
        columns: int32 words (packed column indices of column-list classes), maybe empty.
        bitmask: int32 words (bitmasks of bitmask classes), maybe empty.
    """

    input_dim: int
    output_dim: int
    kind: str
    class_widths: tuple[int, ...]
    class_counts: tuple[int, ...]
    colist_classes: int
    index_bits: int
    column_bits: int
    usable_params: int
    values: np.ndarray
    row_to_slot: np.ndarray
    slot_to_row: np.ndarray
    columns: np.ndarray
    bitmask: np.ndarray

    @property
    def scoring(self) -> bool:
        """Whether the slot -> row map is stored (needed for full-table top-k)."""
        return self.slot_to_row.size > 0

    @property
    def mask_words(self) -> int:
        """int32 words of one row's bitmask."""
        return -(-self.output_dim // WORD_BITS)

    def arrays(self) -> dict[str, np.ndarray]:
        """The stored arrays by name (the weights of a `CompressedEmbedding`)."""
        return {
            "values": self.values,
            "row_to_slot": self.row_to_slot,
            "slot_to_row": self.slot_to_row,
            "columns": self.columns,
            "bitmask": self.bitmask,
        }

    def value_bytes(self) -> int:
        """Bytes of the stored values (kept parameters plus any class padding)."""
        return int(self.values.nbytes)

    def index_bytes(self) -> int:
        """Bytes of everything that locates the values (maps, columns, bitmasks)."""
        return int(
            self.row_to_slot.nbytes
            + self.slot_to_row.nbytes
            + self.columns.nbytes
            + self.bitmask.nbytes
        )

    def row_widths(self) -> np.ndarray:
        """Stored width of every row (int32, in row-id order)."""
        slots = unpack_uint(self.row_to_slot, self.index_bits, self.input_dim)
        per_slot = np.repeat(
            np.asarray(self.class_widths, np.int32), np.asarray(self.class_counts, np.int64)
        )
        return per_slot[slots].astype(np.int32)

    def to_dense(self) -> np.ndarray:
        """The full ``[input_dim, output_dim]`` table, zeros where nothing is stored."""
        n, d = self.input_dim, self.output_dim
        out = np.zeros((n, d), dtype=self.values.dtype)
        slot_rows = _slot_to_row_np(self)
        v_base = c_base = m_base = s0 = 0
        w_words = self.mask_words
        for k, (w, c) in enumerate(zip(self.class_widths, self.class_counts, strict=True)):
            rows = slot_rows[s0 : s0 + c]
            vals = self.values[v_base : v_base + c * w].reshape(c, w)
            if self.kind == "prefix":
                out[rows, :w] = vals
            elif k < self.colist_classes:
                cols = unpack_uint(self.columns, self.column_bits, c_base + c * w)[c_base:]
                np.add.at(out, (np.repeat(rows, w), cols), vals.ravel())
                c_base += c * w
            else:
                words = self.bitmask[m_base : m_base + c * w_words].reshape(c, w_words)
                bits = bits_np(words, d)
                rank = np.cumsum(bits, axis=1) - 1
                rr, cc = np.nonzero(bits)
                out[rows[rr], cc] = vals[rr, rank[rr, cc]]
                m_base += c * w_words
            v_base += c * w
            s0 += c
        return out


def _slot_to_row_np(packed: PackedTable) -> np.ndarray:
    if packed.scoring:
        return unpack_uint(packed.slot_to_row, packed.index_bits, packed.input_dim)
    slots = unpack_uint(packed.row_to_slot, packed.index_bits, packed.input_dim)
    inv = np.empty_like(slots)
    inv[slots] = np.arange(slots.size)
    return inv


POSITIONS = ("columns", "smallest", "bitmask")


def _position_bytes(
    kind: str, width: int, output_dim: int, column_bits: int, positions: str = "columns"
) -> tuple[float, bool]:
    """Bytes per row to locate ``width`` stored values, and whether column lists are used.

    ``positions``: ``"columns"`` (column lists for every row: the fastest to score),
    ``"bitmask"`` (a bitmask for every row) or ``"smallest"`` (per class, whichever is
    smaller: column lists for rows with fewer than ``32 * words / column_bits`` values).
    """
    if kind == "prefix":
        return 0.0, False
    colist = width * column_bits / 8.0
    bitmask = 4.0 * (-(-output_dim // WORD_BITS))
    if positions == "columns":
        return colist, True
    if positions == "bitmask":
        return bitmask, False
    return (colist, True) if colist < bitmask else (bitmask, False)


def merge_classes(
    widths: np.ndarray,
    counts: np.ndarray,
    max_classes: int,
    row_bytes: Any,
) -> np.ndarray:
    """Groups sorted distinct widths into at most ``max_classes`` classes (fewest bytes).

    Rows of distinct width ``widths[i]`` (``counts[i]`` of them) go to a class whose stored
    width is the largest width in it; ``row_bytes(w)`` is the cost of one row stored at
    width ``w``. Dynamic programming over the sorted widths, O(K^2 * max_classes).

    Returns:
        For each distinct width, the stored width of its class.
    """
    k = len(widths)
    if k <= max_classes:
        return np.asarray(widths).copy()
    cum = np.concatenate([[0], np.cumsum(counts)])
    cost_row = np.array([row_bytes(int(w)) for w in widths])
    inf = np.inf
    best = np.full((max_classes + 1, k + 1), inf)
    arg = np.zeros((max_classes + 1, k + 1), dtype=np.int64)
    best[0, 0] = 0.0
    for b in range(1, max_classes + 1):
        for j in range(1, k + 1):
            cand = best[b - 1, :j] + (cum[j] - cum[:j]) * cost_row[j - 1]
            i = int(np.argmin(cand))
            best[b, j], arg[b, j] = cand[i], i
    b = int(np.argmin(best[1:, k])) + 1
    out = np.empty(k, dtype=np.int64)
    j = k
    while j > 0:
        i = arg[b, j]
        out[i:j] = widths[j - 1]
        j, b = i, b - 1
    return out


_CHUNK_ROWS = 65536


class TableRows:
    """A table variable read in chunks of rows (plain, Keras 3 or sharded across servers).

    `pack_table` takes one in place of an array for prefix sizes, so that packing a large
    table never holds a second dense copy of it: each chunk of a size class is gathered,
    cut to the class width and written into the packed values.

    Args:
        variable: a 2-D table variable.
    """

    def __init__(self, variable: Any) -> None:
        self.variable = variable
        self.shape = tuple(int(x) for x in variable.shape)
        self.dtype = np.dtype(tf.as_dtype(variable.dtype).as_numpy_dtype)

    def rows(self, ids: np.ndarray) -> np.ndarray:
        """The rows ``ids`` as a ``[len(ids), width]`` numpy array."""
        return np.asarray(gather_rows(self.variable, tf.constant(ids, tf.int64)).numpy())


def pack_table(
    table: Any,
    *,
    sizes: Any = None,
    mask: Any = None,
    usable_params: int | None = None,
    max_classes: int | None = None,
    scoring: bool = False,
    positions: str = "columns",
) -> PackedTable:
    """Packs the kept coordinates of a table into the size-class layout.

    Exactly one of ``sizes`` (row ``n`` keeps its first ``sizes[n]`` coordinates) and
    ``mask`` (a boolean ``[rows, width]`` array of kept coordinates) is needed. A mask that
    happens to be a prefix mask is stored as ``"prefix"`` (no positions needed).

    Args:
        table: ``[rows, width]`` float array (values outside the kept set are ignored), or
            a `TableRows` reading a table variable in chunks (prefix ``sizes`` only).
        sizes: per-row prefix sizes in ``[0, width]``.
        mask: boolean kept-coordinate mask.
        usable_params: parameters the source layer may use (default: kept coordinates).
        max_classes: at most this many size classes (rows padded with stored zeros up to
            their class width, classes chosen to minimise bytes); None for one class per
            distinct size (no padding).
        scoring: also store the slot -> row map (for full-table top-k).
        positions: for unstructured masks, how non-zeros are located: ``"columns"``
            (column indices for every row, the default: scoring needs no expansion of the
            rows), ``"smallest"`` (per class, column indices or a bitmask, whichever is
            smaller) or ``"bitmask"``.

    Returns:
        The `PackedTable`.

    Raises:
        ValueError: bad shapes or sizes, or both / neither of ``sizes`` and ``mask``.
    """
    reader = table if isinstance(table, TableRows) else None
    if reader is not None and mask is not None:
        table = reader.rows(np.arange(reader.shape[0]))  # a mask is dense anyway
        reader = None
    if reader is None:
        table = np.asarray(table)
    if len(table.shape) != 2 or not np.issubdtype(table.dtype, np.floating):
        raise ValueError(
            f"`table` must be a 2-D float array. Received shape {table.shape}, dtype {table.dtype}."
        )
    n, d = table.shape
    if (sizes is None) == (mask is None):
        raise ValueError("pack_table takes exactly one of `sizes` and `mask`.")
    if positions not in POSITIONS:
        raise ValueError(
            f"`positions` must be one of {POSITIONS}. Received: positions={positions!r}"
        )
    if max_classes is not None and (
        isinstance(max_classes, bool)
        or not isinstance(max_classes, (int, np.integer))
        or max_classes < 1
    ):
        raise ValueError(
            f"`max_classes` must be a positive integer or None. Received: "
            f"max_classes={max_classes!r}"
        )
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != (n, d):
            raise ValueError(
                f"`mask` must have the table's shape {(n, d)}. Received shape {mask.shape}."
            )
        nnz = mask.sum(axis=1).astype(np.int64)
        is_prefix = bool(np.array_equal(mask, np.arange(d)[None, :] < nnz[:, None]))
        if is_prefix:
            sizes, mask = nnz, None
    if sizes is not None:
        kind = "prefix"
        row_w = np.asarray(sizes)
        if row_w.shape != (n,) or row_w.dtype.kind not in "iu":
            raise ValueError(
                f"`sizes` must be an integer vector of length {n}. Received shape "
                f"{row_w.shape}, dtype {row_w.dtype}."
            )
        if n and (row_w.min() < 0 or row_w.max() > d):
            raise ValueError(
                f"`sizes` must lie in [0, {d}]. Received range [{row_w.min()}, {row_w.max()}]."
            )
        row_w = row_w.astype(np.int64)
        column_bits = 0
    else:
        kind = "sparse"
        row_w = nnz
        column_bits = bits_for(d - 1)
    kept = int(row_w.sum())
    usable = kept if usable_params is None else int(usable_params)

    distinct, counts = np.unique(row_w, return_counts=True)
    value_bytes = table.dtype.itemsize

    def row_bytes(w: int) -> float:
        return w * value_bytes + _position_bytes(kind, w, d, column_bits, positions)[0]

    if max_classes is not None:
        stored = merge_classes(distinct, counts, int(max_classes), row_bytes)
    else:
        stored = distinct.copy()
    # Vectorised (no Python object per row): distinct is sorted, so searchsorted finds each
    # row's width in it.
    row_class_w = (
        np.asarray(stored, dtype=np.int64)[np.searchsorted(distinct, row_w)]
        if n
        else np.zeros(0, np.int64)
    )
    widths, counts = np.unique(row_class_w, return_counts=True)
    # Slot order: by class width, then by row id.
    slot_to_row = np.lexsort((np.arange(n), row_class_w))
    row_to_slot = np.empty(n, dtype=np.int64)
    row_to_slot[slot_to_row] = np.arange(n)

    colist_flags = [
        kind == "sparse" and _position_bytes(kind, int(w), d, column_bits, positions)[1]
        for w in widths
    ]
    colist_classes = int(sum(colist_flags))
    if any(colist_flags[colist_classes:]):  # widths ascend, so column lists come first
        raise AssertionError("column-list classes must precede bitmask classes")

    values_parts, col_parts, mask_parts = [], [], []
    s0 = 0
    for k, (w, c) in enumerate(zip(widths.tolist(), counts.tolist(), strict=True)):
        rows = slot_to_row[s0 : s0 + c]
        s0 += c
        if kind == "prefix":
            # In chunks of rows: no [rows, width] temporary (mask or copy) of a whole class.
            block = np.zeros((c, w), dtype=table.dtype)
            for a in range(0, c, _CHUNK_ROWS):
                part = rows[a : a + _CHUNK_ROWS]
                got = reader.rows(part)[:, :w] if reader is not None else table[part, :w]
                keep = np.arange(w)[None, :] < row_w[part][:, None]
                block[a : a + part.size] = np.where(keep, got, 0)
            values_parts.append(block.ravel())
            continue
        m = mask[rows]
        rank = np.cumsum(m, axis=1) - 1
        rr, cc = np.nonzero(m)
        block = np.zeros((c, w), dtype=table.dtype)
        block[rr, rank[rr, cc]] = table[rows[rr], cc]
        values_parts.append(block.ravel())
        if k < colist_classes:
            cols = np.zeros((c, w), dtype=np.int64)
            cols[rr, rank[rr, cc]] = cc
            col_parts.append(cols.ravel())
        else:
            mask_parts.append(mask_words_np(m))
    values = (
        np.concatenate(values_parts).astype(table.dtype)
        if values_parts
        else np.zeros(0, table.dtype)
    )
    index_bits = bits_for(max(n - 1, 0))
    columns = (
        pack_uint(np.concatenate(col_parts), column_bits) if col_parts else np.zeros(0, np.int32)
    )
    bitmask = np.concatenate(mask_parts).astype(np.int32) if mask_parts else np.zeros(0, np.int32)
    return PackedTable(
        input_dim=int(n),
        output_dim=int(d),
        kind=kind,
        class_widths=tuple(int(w) for w in widths),
        class_counts=tuple(int(c) for c in counts),
        colist_classes=colist_classes,
        index_bits=index_bits,
        column_bits=column_bits,
        usable_params=usable,
        values=values,
        row_to_slot=pack_uint(row_to_slot, index_bits),
        slot_to_row=pack_uint(slot_to_row, index_bits) if scoring else np.zeros(0, np.int32),
        columns=columns,
        bitmask=bitmask,
    )


def pack_layer(
    layer: Any,
    *,
    scoring: bool = False,
    max_classes: int | None = None,
    positions: str = "columns",
) -> PackedTable:
    """Packs a searchable layer's kept coordinates (see `CompressedEmbedding.from_layer`)."""
    usable = None
    if callable(getattr(layer, "usable_params", None)):
        usable = int(layer.usable_params())
    if callable(getattr(layer, "pruning_mask", None)) and callable(
        getattr(layer, "pruned_table", None)
    ):
        mask = np.asarray(layer.pruning_mask(), dtype=bool)
        table = np.asarray(tf.convert_to_tensor(layer.pruned_table()).numpy())
        return pack_table(
            table,
            mask=mask,
            usable_params=usable,
            max_classes=max_classes,
            scoring=scoring,
            positions=positions,
        )
    if hasattr(layer, "sizes") and callable(getattr(layer, "masked_table", None)):
        source = getattr(layer, "embeddings", None)
        # Rows are read from the table variable in chunks (coordinates past a row's size
        # are dropped while packing); `masked_table()` would build a dense mask and copy.
        rows: TableRows | np.ndarray = (
            TableRows(source)
            if source is not None and len(source.shape) == 2
            else np.asarray(tf.convert_to_tensor(layer.masked_table()).numpy())
        )
        return pack_table(
            rows,
            sizes=np.asarray(layer.sizes),
            usable_params=usable,
            max_classes=max_classes,
            scoring=scoring,
        )
    raise TypeError(
        f"Cannot compress layer '{getattr(layer, 'name', layer)}' of type "
        f"{type(layer).__name__}: it exposes neither `pruning_mask()`/`pruned_table()` (PEP) "
        "nor `sizes`/`masked_table()` (MaskedEmbedding)."
    )
