"""Retrieval exports from a model's own towers: raw ids in, raw item ids out.

A two-tower model written by its user (the TensorFlow Recommenders retrieval recipe: a query
tower ``Sequential([StringLookup(vocabulary=...), MaskedEmbedding(...)])``, a candidate tower
of the same shape, a ``tfrs.Model`` that trains them) is exported from its two towers:

* Each tower is split into its **lookup** (a ``StringLookup`` or ``IntegerLookup`` applied
  first, or none when the tower takes table rows) and its **body** (the layers after it,
  applied one after another). Sequential towers (with or without an ``Input``) and
  functional towers that form such a chain are supported; the split is checked numerically
  against the tower itself.
* The body's searchable tables are compressed (`tfembsize.export.compress_layer`); other
  layers (``Embedding``, ``Dense``...) are served as they are.
* The lookup is replaced by the export's own map from raw ids to rows, built from the
  lookup's vocabulary: string vocabularies become a hash table initialised from a vocabulary
  file stored in the SavedModel's ``assets/``; integer vocabularies become sorted arrays
  searched with ``tf.searchsorted`` (every op of an integer-id signature has a GPU kernel and
  compiles with XLA). Strings cannot live on a GPU, so string ids are mapped to rows (and
  rows back to string ids) by hash-table ops on the host; everything between runs on the
  device. The map is checked against the lookup layer on its whole vocabulary.
* Candidates are the vocabulary's items: the rows of the mask and out-of-vocabulary tokens
  (and table rows past the vocabulary) are never returned.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from tfembsize._keras import keras
from tfembsize.export.compress import CompressionError, compress, compress_layer, is_searchable
from tfembsize.export.signatures import (
    _Built,
    _Scorer,
    _Signature,
    core_function,
    masked_top_k,
    no_exclusions,
    table_scorer,
)
from tfembsize.layers.compressed_embedding import CompressedEmbedding
from tfembsize.layers.utils import iter_layers

__all__ = ["Tower", "is_index_lookup", "tower_signatures"]

logger = logging.getLogger(__name__)

_VERIFY_IDS = 257


def is_index_lookup(layer: Any) -> bool:
    """Whether ``layer`` is a Keras ``StringLookup``/``IntegerLookup`` (any Keras version)."""
    return any(cls.__name__ == "IndexLookup" for cls in type(layer).__mro__)


# --------------------------------------------------------------------------------------------
# Raw ids <-> rows
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _Vocabulary:
    """How a lookup layer numbers raw ids: token ``i`` of ``tokens`` is row ``i``."""

    layer_name: str
    dtype: tf.DType
    tokens: tuple[Any, ...]
    first_item: int  # rows before it belong to the mask and out-of-vocabulary tokens
    oov_row: int  # the row of unknown ids; -1 when the lookup rejects them

    @classmethod
    def of(cls, layer: Any) -> _Vocabulary:
        kind = type(layer).__name__
        mode = getattr(layer, "output_mode", "int")
        oov = int(getattr(layer, "num_oov_indices", 1))
        if mode != "int" or getattr(layer, "invert", False) or oov > 1:
            raise CompressionError(
                f"{kind} '{layer.name}' maps ids with output_mode={mode!r}, "
                f"invert={getattr(layer, 'invert', False)}, num_oov_indices={oov}. A tower "
                "exported with raw ids needs output_mode='int', invert=False and at most one "
                "out-of-vocabulary index (several are hashed buckets, not a vocabulary); use "
                "such a lookup, or export the tower without its lookup and map ids yourself."
            )
        string = "String" in kind or getattr(layer, "vocabulary_dtype", "") == "string"
        raw = layer.get_vocabulary()
        tokens: tuple[Any, ...]
        if string:
            tokens = tuple(t.decode("utf-8") if isinstance(t, bytes) else str(t) for t in raw)
        else:
            tokens = tuple(int(t) for t in raw)
        mask = 0 if getattr(layer, "mask_token", None) is None else 1
        return cls(
            layer_name=layer.name,
            dtype=tf.string if string else tf.int64,
            tokens=tokens,
            first_item=mask + oov,
            oov_row=mask if oov else -1,
        )


class _StringIds(tf.Module):
    """String ids <-> rows through hash tables initialised from a vocabulary file."""

    def __init__(self, vocab: _Vocabulary, directory: Path, stem: str) -> None:
        super().__init__(name=f"{stem}_vocabulary")
        self.dtype = tf.string
        self.oov_row = vocab.oov_row
        tokens = list(vocab.tokens)
        if all(t and "\n" not in t and "\r" not in t for t in tokens):
            path = directory / f"{stem}_vocabulary.txt"
            path.write_text("\n".join(tokens) + "\n", encoding="utf-8")
            whole, number = tf.lookup.TextFileIndex.WHOLE_LINE, tf.lookup.TextFileIndex.LINE_NUMBER
            forward: Any = tf.lookup.TextFileInitializer(
                str(path), tf.string, whole, tf.int64, number
            )
            backward: Any = tf.lookup.TextFileInitializer(
                str(path), tf.int64, number, tf.string, whole
            )
        else:  # tokens a line-based file cannot hold: the vocabulary goes into the graph
            keys = tf.constant(tokens, tf.string)
            rows = tf.range(len(tokens), dtype=tf.int64)
            forward = tf.lookup.KeyValueTensorInitializer(keys, rows)
            backward = tf.lookup.KeyValueTensorInitializer(rows, keys)
        self.table = tf.lookup.StaticHashTable(forward, default_value=vocab.oov_row)
        self.inverse = tf.lookup.StaticHashTable(backward, default_value="")

    def rows(self, ids: tf.Tensor) -> tf.Tensor:
        """Rows of ``ids`` (int32); -1 for unknown ids when there is no unknown-id row."""
        return tf.cast(self.table.lookup(ids), tf.int32)

    def raw(self, rows: tf.Tensor) -> tf.Tensor:
        """The raw ids of ``rows``."""
        return self.inverse.lookup(tf.cast(rows, tf.int64))


class _IntegerIds(tf.Module):
    """Integer ids <-> rows with sorted arrays (``tf.searchsorted``; GPU kernels, XLA)."""

    def __init__(self, vocab: _Vocabulary, stem: str) -> None:
        super().__init__(name=f"{stem}_vocabulary")
        self.dtype = tf.int64
        self.oov_row = vocab.oov_row
        tokens = np.asarray(vocab.tokens, np.int64)
        order = np.argsort(tokens, kind="stable")
        self.size = len(tokens)
        self.keys = tf.Variable(tokens[order], trainable=False, name="sorted_ids")
        self.key_rows = tf.Variable(order.astype(np.int32), trainable=False, name="sorted_rows")
        self.tokens = tf.Variable(tokens, trainable=False, name="ids")

    def rows(self, ids: tf.Tensor) -> tf.Tensor:
        """Rows of ``ids`` (int32); -1 for unknown ids when there is no unknown-id row."""
        ids = tf.cast(ids, tf.int64)
        shape = tf.shape(ids)
        flat = tf.reshape(ids, [-1])
        keys = tf.convert_to_tensor(self.keys)
        pos = tf.minimum(tf.searchsorted(keys, flat, out_type=tf.int32), self.size - 1)
        found = tf.equal(tf.gather(keys, pos), flat)
        rows = tf.where(found, tf.gather(tf.convert_to_tensor(self.key_rows), pos), self.oov_row)
        return tf.reshape(rows, shape)

    def raw(self, rows: tf.Tensor) -> tf.Tensor:
        """The raw ids of ``rows``."""
        return tf.gather(tf.convert_to_tensor(self.tokens), rows)


class _RowIds(tf.Module):
    """Ids that are rows already (a tower without a lookup)."""

    def __init__(self, num_rows: int, dtype: tf.DType) -> None:
        super().__init__(name="row_ids")
        self.dtype = dtype
        self.num_rows = num_rows
        self.oov_row = -1

    def rows(self, ids: tf.Tensor) -> tf.Tensor:
        """``ids`` as int32 rows; -1 for ids outside ``[0, num_rows)``."""
        inside = tf.logical_and(ids >= 0, ids < tf.cast(self.num_rows, ids.dtype))
        return tf.where(inside, tf.cast(ids, tf.int32), -1)

    def raw(self, rows: tf.Tensor) -> tf.Tensor:
        """``rows`` in the id dtype."""
        return tf.cast(rows, self.dtype)


# --------------------------------------------------------------------------------------------
# Towers
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Tower:
    """One tower of a retrieval export, split into its lookup and its (compressed) body.

    Attributes:
        role: ``"query"`` or ``"candidate"``.
        source: the tower as the user built it.
        lookup: its ``StringLookup``/``IntegerLookup``, or None (the tower takes rows).
        body: the layers after the lookup, searchable tables replaced by compressed ones.
        num_rows: rows of the body's first table.
        vocabulary: how the lookup numbers raw ids (None without lookup).
        ids: the export's map between raw ids and rows (a ``tf.Module`` the root holds).
    """

    role: str
    source: Any
    lookup: Any
    body: list[Any]
    num_rows: int
    vocabulary: _Vocabulary | None = None
    ids: Any = None

    @property
    def name(self) -> str:
        """The tower's name."""
        return str(getattr(self.source, "name", type(self.source).__name__))

    def vectors(self, rows: tf.Tensor) -> tf.Tensor:
        """Tower outputs ``[b, D]`` (float32) for int32 ``rows``."""
        x = rows
        for layer in self.body:
            x = layer(x)
        return tf.cast(x, tf.float32)

    def item_rows(self) -> np.ndarray:
        """The rows that are candidates: the vocabulary's items (all rows without lookup)."""
        if self.vocabulary is None:
            return np.arange(self.num_rows)
        return np.arange(self.vocabulary.first_item, len(self.vocabulary.tokens))

    def blocked_rows(self) -> np.ndarray:
        """Rows that are never returned (mask and unknown-id rows, rows past the vocabulary)."""
        items = np.zeros(self.num_rows, bool)
        items[self.item_rows()] = True
        return np.flatnonzero(~items)


def _chain(tower: Any, role: str) -> list[Any]:
    if isinstance(tower, keras.Model) and hasattr(tower, "layers") and _is_graph(tower):
        return [layer for layer in tower.layers if type(layer).__name__ != "InputLayer"]
    if is_index_lookup(tower):
        raise CompressionError(f"The {role} tower is a lookup layer alone: it holds no table.")
    if any(is_index_lookup(layer) for layer in iter_layers(tower)):
        raise CompressionError(
            f"The {role} tower {type(tower).__name__} '{tower.name}' is a subclassed model "
            "holding a lookup layer; export cannot separate the lookup from the tables in it. "
            "Build the tower as keras.Sequential([lookup, embedding, ...]) or as a functional "
            "model whose first layer is the lookup."
        )
    return [tower]


def _is_graph(model: Any) -> bool:
    cls = type(model)
    return cls.__name__ in ("Functional", "Sequential") and cls.__module__.startswith(
        ("keras.", "tf_keras.")
    )


def _check_built(tower: Any, role: str, layers: Sequence[Any]) -> None:
    for top in layers:
        for layer in [top, *iter_layers(top)]:
            if iter_layers(layer):  # containers are checked through their layers
                continue
            if not getattr(layer, "built", True):
                raise CompressionError(
                    f"Layer '{layer.name}' of the {role} tower '{tower.name}' has no weights "
                    "yet: the tower was never called. Train the model (or call the tower once "
                    "on a batch of ids, e.g. tower(tf.constant([...]))) before exporting, or "
                    "start the tower with a keras.Input so that it is built when created."
                )


def _first_rows(layers: Sequence[Any], role: str, tower: Any) -> int:
    for top in layers:
        for layer in [top, *iter_layers(top)]:
            rows = getattr(layer, "input_dim", None)
            if isinstance(rows, (int, np.integer)):
                return int(rows)
    raise CompressionError(
        f"The {role} tower '{getattr(tower, 'name', '')}' holds no embedding table (no layer "
        "with input_dim) after its lookup."
    )


def _compress_body(
    layers: Sequence[Any], scoring: bool, options: Mapping[str, Any] | None
) -> list[Any]:
    if options is None:
        return list(layers)
    out = []
    for layer in layers:
        if is_searchable(layer):
            out.append(compress_layer(layer, scoring=scoring and len(layers) == 1, **options))
        elif any(is_searchable(sub) for sub in iter_layers(layer)):
            out.append(compress(layer, scoring=False, **options))
        else:
            out.append(layer)
    return out


def build_tower(
    tower: Any,
    role: str,
    *,
    id_dtype: tf.DType,
    directory: Path,
    compress_options: Mapping[str, Any] | None,
) -> Tower:
    """Splits, compresses and checks one tower; see the module docstring.

    Args:
        tower: the user's tower (a Keras model or layer).
        role: ``"query"`` or ``"candidate"``.
        id_dtype: dtype of the ids of a tower without lookup.
        directory: where vocabulary files are written before they are saved as assets.
        compress_options: ``max_classes``/``positions`` for `compress_layer` when the
            searchable tables are to be compressed; None leaves the tables as they are.

    Returns:
        The `Tower`.

    Raises:
        CompressionError: the tower cannot be exported, with the reason and the fix.
    """
    if not isinstance(tower, keras.layers.Layer):
        raise CompressionError(
            f"The {role} tower must be a Keras model or layer (or the name of one of the "
            f"model's attributes). Received: {type(tower).__name__}"
        )
    chain = _chain(tower, role)
    lookup = chain[0] if chain and is_index_lookup(chain[0]) else None
    layers = chain[1:] if lookup is not None else chain
    if not layers:
        raise CompressionError(f"The {role} tower '{tower.name}' has no layer after its lookup.")
    _check_built(tower, role, layers)
    num_rows = _first_rows(layers, role, tower)
    body = _compress_body(layers, role == "candidate", compress_options)
    stem = "user" if role == "query" else "item"
    vocab = None
    ids: Any
    if lookup is None:
        ids = _RowIds(num_rows, id_dtype)
    else:
        vocab = _Vocabulary.of(lookup)
        if len(vocab.tokens) > num_rows:
            raise CompressionError(
                f"The {role} tower '{tower.name}': lookup '{lookup.name}' numbers "
                f"{len(vocab.tokens)} ids (vocabulary, mask and out-of-vocabulary tokens) but "
                f"its table has {num_rows} rows. Make the table at least "
                "lookup.vocabulary_size() rows."
            )
        ids = (
            _StringIds(vocab, directory, stem)
            if vocab.dtype == tf.string
            else _IntegerIds(vocab, stem)
        )
    built = Tower(role, tower, lookup, body, num_rows, vocab, ids)
    _verify_tower(built)
    return built


def _sample_ids(tower: Tower) -> np.ndarray:
    n = len(tower.vocabulary.tokens) if tower.vocabulary else tower.num_rows
    picks = np.unique(np.linspace(0, n - 1, min(n, _VERIFY_IDS)).astype(np.int64))
    if tower.vocabulary is None:
        return picks
    return np.asarray([tower.vocabulary.tokens[i] for i in picks], dtype=object)


def _unknown_id(vocab: _Vocabulary) -> Any:
    if vocab.dtype == tf.string:
        return "\x00tfembsize-unknown-id"
    return int(max(vocab.tokens)) + 1


def _verify_tower(tower: Tower) -> None:
    """The export's id map and body reproduce the tower (on a spread of its ids)."""
    raw = _sample_ids(tower)
    dtype = tower.ids.dtype
    ids = tf.constant(raw.tolist(), dtype)
    if tower.lookup is not None and tower.vocabulary is not None:
        probe = list(raw.tolist())
        if tower.vocabulary.oov_row >= 0:
            probe.append(_unknown_id(tower.vocabulary))
        probe_t = tf.constant(probe, dtype)
        want = np.asarray(tower.lookup(tf.cast(probe_t, _lookup_dtype(tower.lookup, dtype))))
        got = np.asarray(tower.ids.rows(probe_t))
        if want.shape != got.shape or not np.array_equal(want, got):
            raise CompressionError(
                f"The export's id map of the {tower.role} tower '{tower.name}' disagrees with "
                f"its lookup layer '{tower.lookup.name}' (rows {got[:5].tolist()} vs "
                f"{want[:5].tolist()}); this lookup configuration is not supported with raw "
                "ids. Export the tower without its lookup and map ids yourself."
            )
    rows = tower.ids.rows(ids)
    try:
        expected = np.asarray(tower.source(_as_lookup_input(tower, ids)), np.float32)
    except Exception as err:  # noqa: BLE001 - reported with the fix
        raise CompressionError(
            f"Calling the {tower.role} tower '{tower.name}' on its own ids failed "
            f"({type(err).__name__}: {_first_line(err)}). The tower must map a batch of raw "
            "ids [b] to vectors [b, D]."
        ) from err
    got_v = np.asarray(tower.vectors(rows))
    if expected.shape != got_v.shape or not np.allclose(expected, got_v, rtol=1e-5, atol=1e-5):
        raise CompressionError(
            f"The {tower.role} tower '{tower.name}' does not compute its layers one after "
            "another from the lookup (its outputs differ from lookup -> layers in order). "
            "Export supports towers that are a chain: a Sequential, or a functional model "
            "whose layers each take the previous one's output, starting with the lookup."
        )


def _lookup_dtype(lookup: Any, dtype: tf.DType) -> tf.DType:
    if dtype == tf.string:
        return tf.string
    return tf.as_dtype(getattr(lookup, "vocabulary_dtype", "int64") or "int64")


def _as_lookup_input(tower: Tower, ids: tf.Tensor) -> tf.Tensor:
    if tower.lookup is None:
        return ids
    return tf.cast(ids, _lookup_dtype(tower.lookup, ids.dtype)) if ids.dtype.is_integer else ids


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:300] if text else ""


# --------------------------------------------------------------------------------------------
# Signatures
# --------------------------------------------------------------------------------------------
def _candidate_scorer(tower: Tower, vectors: Callable[[tf.Tensor], tf.Tensor]) -> _Scorer:
    """Scores on the item table itself when the tower is just a table, else ``vectors``."""
    if len(tower.body) == 1:
        direct = table_scorer(tower.body[0], tower.num_rows)
        if direct is not None:
            return direct

    def scores(q: tf.Tensor) -> tf.Tensor:
        items = vectors(tf.range(tower.num_rows, dtype=tf.int32))
        return tf.matmul(q, items, transpose_b=True)

    return _Scorer(scores, _same, _same, tower.num_rows, "tower")


def _same(x: tf.Tensor) -> tf.Tensor:
    return x


def _known_rows(tower: Tower, ids: tf.Tensor, name: str) -> tf.Tensor:
    """Rows of query ids, failing on ids that have no row."""
    rows = tower.ids.rows(ids)
    if tower.ids.oov_row >= 0:
        return rows
    if tower.vocabulary is None:
        what = f"in [0, {tower.num_rows}) (rows of the {tower.role} tower's table)"
    else:
        what = f"in the vocabulary of lookup '{tower.vocabulary.layer_name}'"
    ok = tf.reduce_all(rows >= 0)
    data: list[Any] = [f"Every id of `{name}` must be {what}."]
    if ids.dtype.is_integer:  # the offending id (the one with the smallest row)
        data += ["Received id", tf.gather(ids, tf.argmin(rows, output_type=tf.int32))]
    check = tf.debugging.Assert(ok, data, summarize=1)
    with tf.control_dependencies([check]):
        return tf.identity(rows)


def _checked_k(k: tf.Tensor, limit: int) -> tf.Tensor:
    ok = tf.logical_and(k >= 1, k <= limit)
    check = tf.debugging.Assert(
        ok, [f"`k` must be in [1, number of candidate items={limit}]. Received k =", k]
    )
    with tf.control_dependencies([check]):
        return tf.identity(k)


def tower_signatures(query: Tower, candidate: Tower, *, jit_compile: bool) -> _Built:
    """The retrieval signatures of a two-tower export with raw ids.

    Signatures: ``serving_default(user_ids, k) -> {item_ids, scores}``,
    ``serving_excluding(user_ids, k, exclude_item_ids) -> {item_ids, scores}``,
    ``embed_users(user_ids) -> {embeddings}``, ``embed_items(item_ids) -> {embeddings}``.
    Ids are raw ids of the towers' lookups (rows for a tower without lookup);
    ``exclude_item_ids`` is ``[b, m]``, padded with any id that is not an item.

    Args:
        query: the query (user) tower.
        candidate: the candidate (item) tower.
        jit_compile: compile the row computations (everything between the id maps) with XLA.

    Returns:
        The signatures, the id maps to track and metadata entries.
    """
    blocked = candidate.blocked_rows().astype(np.int32)
    num_candidates = int(len(candidate.item_rows()))
    if num_candidates < 1:
        raise CompressionError(
            f"The candidate tower '{candidate.name}' has no item in its vocabulary."
        )

    rows_spec = tf.TensorSpec([None], tf.int32)

    def user_vectors(user_rows: tf.Tensor) -> tf.Tensor:
        return query.vectors(user_rows)

    def item_vectors(item_rows: tf.Tensor) -> tf.Tensor:
        return candidate.vectors(item_rows)

    core_users = core_function(user_vectors, [rows_spec], jit_compile)
    core_items = core_function(item_vectors, [rows_spec], jit_compile)
    scorer = _candidate_scorer(candidate, core_items)

    def recommend(user_rows: tf.Tensor, k: tf.Tensor, exclude_rows: tf.Tensor) -> tuple:
        # The tower functions are called, not inlined: each graph is stored once.
        return masked_top_k(scorer, core_users(user_rows), k, exclude_rows, blocked)

    core_recommend = core_function(
        recommend,
        [rows_spec, tf.TensorSpec([], tf.int32), tf.TensorSpec([None, None], tf.int32)],
        jit_compile,
    )

    user_spec = tf.TensorSpec([None], query.ids.dtype, name="user_ids")
    item_spec = tf.TensorSpec([None], candidate.ids.dtype, name="item_ids")
    k_spec = tf.TensorSpec([], tf.int32, name="k")
    exclude_spec = tf.TensorSpec([None, None], candidate.ids.dtype, name="exclude_item_ids")

    def top_k(user_ids: tf.Tensor, k: tf.Tensor, exclude: tf.Tensor | None) -> dict:
        rows = _known_rows(query, user_ids, "user_ids")
        k = _checked_k(k, num_candidates)
        excluded = no_exclusions(rows) if exclude is None else candidate.ids.rows(exclude)
        item_rows, scores = core_recommend(rows, k, excluded)
        return {"item_ids": candidate.ids.raw(item_rows), "scores": tf.cast(scores, tf.float32)}

    @tf.function(input_signature=[user_spec, k_spec], autograph=False)
    def serving_default(user_ids: tf.Tensor, k: tf.Tensor) -> dict:
        return top_k(user_ids, k, None)

    @tf.function(input_signature=[user_spec, k_spec, exclude_spec], autograph=False)
    def serving_excluding(user_ids: tf.Tensor, k: tf.Tensor, exclude_item_ids: tf.Tensor) -> dict:
        return top_k(user_ids, k, exclude_item_ids)

    @tf.function(input_signature=[user_spec], autograph=False)
    def embed_users(user_ids: tf.Tensor) -> dict:
        return {"embeddings": core_users(_known_rows(query, user_ids, "user_ids"))}

    @tf.function(input_signature=[item_spec], autograph=False)
    def embed_items(item_ids: tf.Tensor) -> dict:
        return {"embeddings": core_items(_known_rows(candidate, item_ids, "item_ids"))}

    sigs = {}
    for name, fn, specs in (
        ("serving_default", serving_default, [user_spec, k_spec]),
        ("serving_excluding", serving_excluding, [user_spec, k_spec, exclude_spec]),
        ("embed_users", embed_users, [user_spec]),
        ("embed_items", embed_items, [item_spec]),
    ):
        sigs[name] = _Signature(fn, fn.get_concrete_function(), {s.name: s for s in specs})
    metadata = {
        "num_candidates": num_candidates,
        "ids": {
            "user_ids": _ids_metadata(query),
            "item_ids": _ids_metadata(candidate),
        },
    }
    return _Built(
        sigs,
        item_scoring=scorer.how,
        num_users=query.num_rows,
        num_items=candidate.num_rows,
        trackables=[query.ids, candidate.ids],
        metadata=metadata,
    )


def _ids_metadata(tower: Tower) -> dict[str, Any]:
    rows = tower.item_rows()
    picks = rows[np.unique(np.linspace(0, len(rows) - 1, min(len(rows), 4)).astype(int))]
    if tower.vocabulary is None:
        examples: list[Any] = [int(r) for r in picks]
    else:
        examples = [tower.vocabulary.tokens[int(r)] for r in picks]
    return {
        "dtype": tower.ids.dtype.name,
        "lookup": None if tower.lookup is None else tower.lookup.name,
        "lookup_class": None if tower.lookup is None else type(tower.lookup).__name__,
        "examples": examples,
    }


def resolve_tower(model: Any, tower: Any, role: str) -> Any:
    """The tower object for ``tower`` (an object, or the name of an attribute of ``model``)."""
    if isinstance(tower, str):
        found = getattr(model, tower, None)
        if found is None:
            raise CompressionError(
                f"{type(model).__name__} '{getattr(model, 'name', '')}' has no attribute "
                f"{tower!r} for the {role} tower. Attributes holding embedding tables: "
                f"{tower_attributes(model)}."
            )
        return found
    return tower


def tower_attributes(model: Any) -> list[str]:
    """Names of ``model``'s attributes that hold Keras layers with embedding tables.

    Names that read as a query tower (``user``, ``query``) come first.
    """
    names = []
    for name, value in sorted(vars(model).items()):
        if name.startswith("_") or not isinstance(value, keras.layers.Layer):
            continue
        layers = [value, *iter_layers(value)]
        if any(is_searchable(x) or isinstance(x, CompressedEmbedding) for x in layers) or any(
            isinstance(getattr(x, "input_dim", None), (int, np.integer)) for x in layers
        ):
            names.append(name)
    return sorted(names, key=lambda n: (not any(w in n.lower() for w in ("user", "query")), n))


def jit_default(towers: Sequence[Tower]) -> bool:
    """Whether the export compiles by default: a body holds an unstructured compressed table."""
    return any(
        isinstance(layer, CompressedEmbedding) and layer.kind == "sparse"
        for t in towers
        for top in t.body
        for layer in [top, *iter_layers(top)]
    )


def compressed_layers(towers: Sequence[Tower]) -> list[CompressedEmbedding]:
    """The compressed tables of the towers' bodies (each once)."""
    out: list[CompressedEmbedding] = []
    for t in towers:
        for top in t.body:
            for layer in [top, *iter_layers(top)]:
                if isinstance(layer, CompressedEmbedding) and all(layer is not x for x in out):
                    out.append(layer)
    return out
