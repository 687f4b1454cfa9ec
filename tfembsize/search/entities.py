"""Entities of a model of one's own: which tables embed whom, and how often each row occurs.

A search sizes *entities*: every user-side table gets one size per user row and every
item-side table one size per item row. For a model whose tables are fed by a
``StringLookup`` / ``IntegerLookup``, a table row is what the lookup returns, so the rows of
the lookup's mask token and out-of-vocabulary ids are rows of the table like any other: they
have a size, they count in the budget's N, and their frequency is the number of training ids
the lookup maps to them (0 for the mask row; for the out-of-vocabulary row, the unknown ids).

`count_frequencies` counts training ids per table row through the model's own lookup;
`side_rows` and `checked_frequencies` check a table layout and its frequencies against a
model.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import tensorflow as tf

from tfembsize._keras import keras
from tfembsize.layers.utils import find_searchable_layers, iter_layers
from tfembsize.records._common import SIDES

__all__ = [
    "checked_frequencies",
    "count_frequencies",
    "find_lookup",
    "is_index_lookup",
    "lookup_special_rows",
    "side_rows",
]


def is_index_lookup(layer: Any) -> bool:
    """True for a ``StringLookup`` or ``IntegerLookup`` layer."""
    return isinstance(layer, (keras.layers.StringLookup, keras.layers.IntegerLookup))


def find_lookup(obj: Any, what: str = "`lookup`") -> Any:
    """The index lookup ``obj`` is, or the only one nested in ``obj`` (a tower or a model).

    Args:
        obj: a ``StringLookup`` / ``IntegerLookup``, or a layer or model holding exactly one.
        what: how to name ``obj`` in error messages.

    Raises:
        ValueError: ``obj`` holds no index lookup, several, or one that does not map ids to
            single row indices (``output_mode`` other than ``"int"``, or ``invert=True``).
    """
    if is_index_lookup(obj):
        lookup = obj
    else:
        found = [layer for layer in iter_layers(obj) if is_index_lookup(layer)]
        if len(found) != 1:
            names = [layer.name for layer in found]
            raise ValueError(
                f"{what} must be a StringLookup or IntegerLookup layer, or a tower holding "
                f"exactly one. Received {type(obj).__name__} "
                f"{getattr(obj, 'name', '')!r}, which holds {len(found)}: {names}."
            )
        lookup = found[0]
    if getattr(lookup, "output_mode", "int") != "int" or getattr(lookup, "invert", False):
        raise ValueError(
            f"{what}: lookup {lookup.name!r} must map ids to row indices (output_mode='int', "
            f"invert=False). Received output_mode={lookup.output_mode!r}, "
            f"invert={lookup.invert!r}."
        )
    return lookup


def lookup_special_rows(lookup: Any) -> np.ndarray:
    """Rows of a lookup that are not vocabulary entries: the mask row, then the OOV rows.

    A ``StringLookup`` / ``IntegerLookup`` numbers its output as: the mask token (row 0, when
    ``mask_token`` is set), ``num_oov_indices`` out-of-vocabulary rows, then the vocabulary.
    """
    count = int(lookup.mask_token is not None) + int(lookup.num_oov_indices)
    return np.arange(count, dtype=np.int64)


def _as_id_batches(ids: Any) -> Any:
    """Yields arrays of ids from an array, a tensor, a list or a ``tf.data.Dataset``."""
    if isinstance(ids, tf.data.Dataset):
        for element in ids:
            if isinstance(element, Mapping) or isinstance(element, tuple):
                raise TypeError(
                    "`ids` must yield ids, not structures: map the dataset to the id feature "
                    "first, e.g. `ratings.map(lambda x: x['user_id'])`. Received elements of "
                    f"type {type(element).__name__}."
                )
            if isinstance(element, tf.RaggedTensor):
                element = element.flat_values
            yield element
        return
    if isinstance(ids, tf.RaggedTensor):
        ids = ids.flat_values
    if isinstance(ids, Mapping):
        raise TypeError(
            "`ids` must be the ids of one side (an array, a tensor or a dataset of ids), not a "
            f"mapping. Received keys {sorted(map(str, ids))}."
        )
    yield ids


def count_frequencies(ids: Any, lookup: Any = None, *, num_rows: int | None = None) -> np.ndarray:
    """How many training ids each row of a table receives: the frequencies a search needs.

    Each id is mapped to its table row the way the model maps it (through ``lookup`` when the
    table sits behind one) and counted. Rows of the lookup's mask and out-of-vocabulary
    tokens are rows of the table: the mask row counts 0, the out-of-vocabulary row counts the
    ids missing from the vocabulary (0 when every training id is known).

    Args:
        ids: the id of every training interaction of one side (users or items): a NumPy
            array, a list, a tensor, or a ``tf.data.Dataset`` of ids or batches of ids (e.g.
            ``ratings.map(lambda x: x["user_id"])``). Repeated ids count every time.
        lookup: the ``StringLookup`` / ``IntegerLookup`` that maps raw ids to rows in the
            model, or a tower holding exactly one (e.g. ``model.user_model``); None when the
            ids are table rows already.
        num_rows: the table's number of rows (its ``input_dim``). Default: the lookup's
            ``vocabulary_size()``, or the largest id + 1 without a lookup.

    Returns:
        int64 counts, one per table row.

    Raises:
        ValueError: an id maps outside ``[0, num_rows)``, or a bad ``lookup`` / ``num_rows``.
        TypeError: ``ids`` is not ids (e.g. a dataset of feature dicts).

    Example:
        >>> lookup = tf.keras.layers.StringLookup(vocabulary=["a", "b"], mask_token=None)
        >>> count_frequencies(["a", "b", "b", "zz"], lookup).tolist()  # row 0: unknown ids
        [1, 1, 2]
    """
    if lookup is not None:
        lookup = find_lookup(lookup)
    if num_rows is not None and (
        isinstance(num_rows, bool) or not isinstance(num_rows, (int, np.integer)) or num_rows < 1
    ):
        raise ValueError(
            f"`num_rows` must be a positive integer or None. Received: num_rows={num_rows!r}"
        )
    if num_rows is None and lookup is not None:
        num_rows = int(lookup.vocabulary_size())
    counts = np.zeros(0 if num_rows is None else int(num_rows), np.int64)
    for batch in _as_id_batches(ids):
        if lookup is not None:
            rows = np.asarray(lookup(tf.reshape(tf.convert_to_tensor(batch), [-1])))
        else:
            rows = np.asarray(batch).reshape(-1)
            if rows.size and rows.dtype.kind not in "iu":
                raise TypeError(
                    "Without a `lookup`, `ids` must be integer table rows. Received dtype "
                    f"{rows.dtype}; pass the model's StringLookup/IntegerLookup as `lookup`."
                )
        rows = rows.astype(np.int64).reshape(-1)
        if not rows.size:
            continue
        if rows.min() < 0 or (num_rows is not None and rows.max() >= num_rows):
            bad = int(rows.min()) if rows.min() < 0 else int(rows.max())
            raise ValueError(
                f"An id maps to row {bad}, outside the table's [0, num_rows={num_rows}); pass "
                "the table's input_dim as `num_rows` (a lookup's vocabulary_size())."
            )
        found = np.bincount(rows, minlength=counts.size)
        if found.size > counts.size:
            counts = np.concatenate([counts, np.zeros(found.size - counts.size, np.int64)])
        counts += found.astype(np.int64)
    return counts


def side_rows(model: Any, tables: Mapping[str, str]) -> dict[str, int]:
    """Rows per side (``{"user": n, "item": m}``) of the tables ``tables`` names in ``model``.

    Every searchable layer of the model must be named, each as ``"user"`` or ``"item"``, both
    sides must have a table, and the tables of one side must have the same number of rows
    (one size per entity). A table's rows are its ``input_dim``: a lookup's mask and
    out-of-vocabulary rows included.

    Raises:
        ValueError: a name that is not a searchable layer, a layer left out, a bad side, or
            tables of one side with different row counts.
    """
    layers = find_searchable_layers(model)
    rows: dict[str, int] = {}
    for name, side in tables.items():
        if name not in layers:
            raise ValueError(
                f"`tables` names {name!r}, which is not a searchable layer of the model; its "
                f"searchable layers are {sorted(layers)}."
            )
        if side not in SIDES:
            raise ValueError(f"`tables[{name!r}]` must be 'user' or 'item'. Received: {side!r}")
        n = int(layers[name].input_dim)
        if side in rows and rows[side] != n:
            others = [t for t, s in tables.items() if s == side]
            raise ValueError(
                f"The {side} tables {others} have different row counts ({rows[side]} and {n}); "
                "tables of one side share one size per entity, so they need the same input_dim."
            )
        rows[side] = n
    missing = sorted(set(layers) - set(tables))
    if missing:
        raise ValueError(
            f"`tables` leaves out searchable layers {missing}; name every searchable layer as "
            "'user' or 'item'."
        )
    for side in SIDES:
        if side not in rows:
            raise ValueError(f"`tables` has no {side} table. Received: tables={dict(tables)!r}")
    return rows


def checked_frequencies(
    frequencies: Any, rows: Mapping[str, int], tables: Mapping[str, str]
) -> dict[str, np.ndarray]:
    """``frequencies`` as int64 arrays, checked to give one count per table row of each side.

    Args:
        frequencies: ``{"user": counts, "item": counts}``.
        rows: rows per side (`side_rows`).
        tables: layer name -> side, for the error messages.

    Raises:
        TypeError: not a mapping of the two sides.
        ValueError: a count vector of the wrong length, negative or not integral.
    """
    if not isinstance(frequencies, Mapping) or set(frequencies) != set(SIDES):
        keys = sorted(map(str, frequencies)) if isinstance(frequencies, Mapping) else None
        raise TypeError(
            "`frequencies` must be a mapping {'user': counts, 'item': counts} with one training "
            "count per table row (see tfembsize.search.count_frequencies). Received: "
            f"{type(frequencies).__name__}" + ("" if keys is None else f" with keys {keys}")
        )
    out: dict[str, np.ndarray] = {}
    for side in SIDES:
        arr = np.asarray(frequencies[side])
        if arr.dtype.kind == "f" and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
            arr = arr.astype(np.int64)
        if arr.ndim != 1 or arr.dtype.kind not in "iu" or (arr.size and arr.min() < 0):
            raise ValueError(
                f"`frequencies[{side!r}]` must be a 1-D vector of non-negative integer counts. "
                f"Received shape {arr.shape}, dtype {arr.dtype}."
            )
        if arr.size != rows[side]:
            names = [t for t, s in tables.items() if s == side]
            raise ValueError(
                f"`frequencies[{side!r}]` has {arr.size} counts but the {side} table {names[0]!r} "
                f"has {rows[side]} rows (input_dim). Give one count per table row, the rows of a "
                "StringLookup/IntegerLookup's mask and out-of-vocabulary tokens included: "
                "tfembsize.search.count_frequencies(ids, lookup) puts every count on the row "
                "the lookup maps its id to."
            )
        out[side] = arr.astype(np.int64)
    return out
