"""Serving signatures of a compressed model: retrieval top-k, scores, or the model's own call.

Each signature is a ``tf.function`` with an explicit input signature (ids and ``k`` are
inputs, so nothing is frozen at trace time), built from stock TensorFlow ops with GPU
kernels, and optionally compiled with XLA. Ids outside the tables are rejected with a clear
error instead of silently reading zeros.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from tfembsize._keras import is_legacy_keras
from tfembsize.layers._packing import unpack_tf
from tfembsize.layers.compressed_embedding import CompressedEmbedding
from tfembsize.layers.utils import iter_layers

__all__ = ["is_retrieval_model", "resolve_jit_compile"]

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class _Signature:
    function: Any  # tf.function
    concrete: Any  # its concrete function
    inputs: dict[str, tf.TensorSpec]


@dataclasses.dataclass
class _Built:
    """The signatures of an export, with what the root must track and extra metadata.

    Attributes:
        signatures: name -> signature.
        item_scoring: see `ExportResult.item_scoring`.
        num_users: rows of the user table (retrieval exports).
        num_items: rows of the item table (retrieval exports).
        trackables: objects the SavedModel root must hold so that the resources the
            signatures capture (vocabulary tables, their files) are saved.
        metadata: entries added to the export metadata.
    """

    signatures: dict[str, _Signature]
    item_scoring: str = ""
    num_users: int | None = None
    num_items: int | None = None
    trackables: list[Any] = dataclasses.field(default_factory=list)
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)


def is_retrieval_model(model: Any) -> bool:
    """Whether ``model`` follows the retrieval protocol (embed_users/embed_items/num_*)."""
    return (
        callable(getattr(model, "embed_users", None))
        and callable(getattr(model, "embed_items", None))
        and isinstance(getattr(model, "num_users", None), (int, np.integer))
        and isinstance(getattr(model, "num_items", None), (int, np.integer))
    )


def _resolve_kind(model: Any, signatures: str) -> str:
    if signatures not in ("auto", "retrieval", "call"):
        raise ValueError(
            "`signatures` must be 'auto', 'retrieval' or 'call'. "
            f"Received: signatures={signatures!r}"
        )
    if signatures == "retrieval" and not is_retrieval_model(model):
        raise ValueError(
            f"signatures='retrieval' needs a model with embed_users(ids), embed_items(ids), "
            f"num_users and num_items; {type(model).__name__} lacks some of them."
        )
    if signatures == "auto":
        return "retrieval" if is_retrieval_model(model) else "call"
    return signatures


def _checked_ids(ids: tf.Tensor, limit: int, name: str, what: str) -> tf.Tensor:
    """``ids`` as int32 after a run-time range check with a clear error."""
    # Elementwise test + All (Min has no int64 GPU kernel); the message shows the largest
    # id if it is too large, else the smallest (negative) one.
    upper = tf.cast(limit, ids.dtype)
    ok = tf.reduce_all(tf.logical_and(ids >= 0, ids < upper))
    hi = tf.reduce_max(ids)
    bad = tf.where(hi >= upper, hi, -tf.reduce_max(-ids))
    check = tf.debugging.Assert(
        ok, [f"`{name}` must be in [0, {what}={limit}). Received id", bad], summarize=1
    )
    with tf.control_dependencies([check]):
        return tf.cast(tf.identity(ids), tf.int32)


def _checked_k(k: tf.Tensor, num_items: int) -> tf.Tensor:
    ok = tf.logical_and(k >= 1, k <= num_items)
    check = tf.debugging.Assert(
        ok, [f"`k` must be in [1, num_items={num_items}]. Received k =", k], summarize=1
    )
    with tf.control_dependencies([check]):
        return tf.identity(k)


@dataclasses.dataclass
class _Scorer:
    """Scores every row of an item table for a batch of query vectors.

    Scores come in *positions*: the slot order of a compressed table (scored class block by
    class block, never decompressed) or the row order of a dense matrix.

    Attributes:
        scores: ``q [b, D] -> [b, rows]`` scores in position order.
        positions: ``rows int32 -> positions int32`` (valid rows only).
        rows: ``positions int32 -> rows int32``.
        num_rows: rows of the item table.
        how: the `ExportResult.item_scoring` name of the path.
    """

    scores: Callable[[tf.Tensor], tf.Tensor]
    positions: Callable[[tf.Tensor], tf.Tensor]
    rows: Callable[[tf.Tensor], tf.Tensor]
    num_rows: int
    how: str


def _identity(x: tf.Tensor) -> tf.Tensor:
    return x


def _matrix_scorer(matrix: Callable[[], tf.Tensor], num_rows: int, how: str) -> _Scorer:
    def scores(q: tf.Tensor) -> tf.Tensor:
        return tf.matmul(q, tf.cast(matrix(), q.dtype), transpose_b=True)

    return _Scorer(scores, _identity, _identity, num_rows, how)


def compressed_scorer(layer: CompressedEmbedding) -> _Scorer:
    """Scores on the compressed storage of a ``scoring=True`` table, in slot order."""
    bits = layer.index_bits

    def positions(rows: tf.Tensor) -> tf.Tensor:
        return unpack_tf(tf.convert_to_tensor(layer.tf_variables()["row_to_slot"]), rows, bits)

    def rows(slots: tf.Tensor) -> tf.Tensor:
        return unpack_tf(tf.convert_to_tensor(layer.tf_variables()["slot_to_row"]), slots, bits)

    return _Scorer(layer.slot_scores, positions, rows, int(layer.input_dim), "compressed")


def table_scorer(layer: Any, num_rows: int) -> _Scorer | None:
    """A direct scorer for an item table layer, or None when it has no direct path."""
    if isinstance(layer, CompressedEmbedding):
        if layer.scoring:
            return compressed_scorer(layer)
        logger.warning(
            "Item table '%s' was compressed with scoring=False; serving decompresses it "
            "in every call. Compress with scoring=True (the default for retrieval "
            "models) to score the compressed blocks directly.",
            layer.name,
        )
        return None
    table = getattr(layer, "embeddings", None)
    if table is not None and not getattr(layer, "_tfembsize_searchable", False):
        return _matrix_scorer(lambda: tf.convert_to_tensor(table), num_rows, "dense_table")
    return None


def _item_scorer(model: Any) -> _Scorer:
    """How to score all items of a retrieval-protocol model for a batch of user vectors."""
    num_items = int(model.num_items)
    ids = tf.range(num_items, dtype=tf.int32)
    items = None
    candidates = [
        layer
        for layer in [model, *iter_layers(model)]
        if getattr(layer, "input_dim", None) == num_items and layer is not model
    ]
    if candidates:
        items = np.asarray(model.embed_items(ids))
    for layer in candidates:
        try:
            rows = np.asarray(layer(ids))
        except Exception:  # noqa: BLE001 - not a lookup table after all
            continue
        if items is None or rows.shape != items.shape or not np.array_equal(rows, items):
            continue  # (items is set whenever there are candidates)
        scorer = table_scorer(layer, num_items)
        if scorer is not None:
            return scorer
        break
    if callable(getattr(model, "representations", None)):
        return _matrix_scorer(
            lambda: model.representations(training=False)[1], num_items, "representations"
        )
    return _matrix_scorer(
        lambda: model.embed_items(tf.range(num_items, dtype=tf.int32)), num_items, "embed_items"
    )


def masked_top_k(
    scorer: _Scorer,
    queries: tf.Tensor,
    k: tf.Tensor,
    exclude_rows: tf.Tensor,
    blocked_rows: Sequence[int] | np.ndarray = (),
) -> tuple[tf.Tensor, tf.Tensor]:
    """Top-k rows per query, with excluded rows masked to -inf before the top-k.

    Args:
        scorer: how to score every row.
        queries: ``[b, D]`` query vectors.
        k: int32 scalar.
        exclude_rows: ``[b, m]`` int32 rows to leave out per query; entries outside
            ``[0, num_rows)`` are padding and ignored.
        blocked_rows: rows that are never candidates (e.g. the out-of-vocabulary row of a
            lookup), masked for every query.

    Returns:
        ``(rows [b, k] int32, scores [b, k])``. A row whose score is -inf is excluded; it
        is returned only when ``k`` exceeds the rows left.
    """
    scores = scorer.scores(queries)
    n = scorer.num_rows
    neg = tf.constant(-np.inf, scores.dtype)
    if len(blocked_rows):
        pos = scorer.positions(tf.constant(np.asarray(blocked_rows, np.int32)))
        hit = tf.scatter_nd(pos[:, None], tf.ones_like(pos), [n]) > 0
        scores = tf.where(hit[None, :], neg, scores)
    b = tf.shape(scores)[0]
    m = tf.shape(exclude_rows)[1]
    valid = tf.logical_and(exclude_rows >= 0, exclude_rows < n)
    flat = tf.reshape(tf.where(valid, exclude_rows, 0), [-1])
    pos = tf.where(tf.reshape(valid, [-1]), scorer.positions(flat), n)  # n: a spare column
    batch = tf.reshape(tf.tile(tf.range(b)[:, None], [1, m]), [-1])
    padded = tf.concat([scores, tf.zeros([b, 1], scores.dtype)], axis=1)
    padded = tf.tensor_scatter_nd_update(
        padded, tf.stack([batch, pos], axis=1), tf.fill([b * m], neg)
    )
    top = tf.math.top_k(padded[:, :n], k)
    return scorer.rows(top.indices), top.values


def resolve_jit_compile(model: Any, jit_compile: bool | None) -> bool:
    """The ``jit_compile`` an export of ``model`` uses (see `save_compressed`).

    Args:
        model: the (compressed) model to export.
        jit_compile: ``True``/``False`` as given, or ``None`` for the default: ``True``
            exactly when ``model`` holds a `CompressedEmbedding` with an unstructured
            (``kind="sparse"``) layout.

    Returns:
        Whether the signature bodies are compiled with XLA.

    Raises:
        TypeError: ``jit_compile`` is not a bool or None.
    """
    if jit_compile is None:
        return any(
            isinstance(layer, CompressedEmbedding) and layer.kind == "sparse"
            for layer in [model, *iter_layers(model)]
        )
    if not isinstance(jit_compile, (bool, np.bool_)):
        raise TypeError(
            f"`jit_compile` must be True, False or None. Received: jit_compile={jit_compile!r}"
        )
    return bool(jit_compile)


def _maybe_jit(fn: Callable, jit_compile: bool) -> Callable:
    return tf.function(fn, jit_compile=True, autograph=False) if jit_compile else fn


def core_function(fn: Callable, specs: Sequence[tf.TensorSpec], jit_compile: bool) -> Any:
    """``fn`` as one ``tf.function`` with a fixed input signature, optionally XLA-compiled.

    Every signature that needs the computation calls this one function, so the SavedModel
    stores its graph once instead of once per signature.
    """
    return tf.function(
        fn, input_signature=list(specs), jit_compile=bool(jit_compile), autograph=False
    )


def no_exclusions(ids: tf.Tensor) -> tf.Tensor:
    """An empty ``[b, 0]`` int32 exclusion matrix for a batch of ``b`` ids."""
    return tf.zeros([tf.shape(ids)[0], 0], tf.int32)


def _retrieval_signatures(model: Any, *, id_dtype: tf.DType, jit_compile: bool) -> _Built:
    num_users, num_items = int(model.num_users), int(model.num_items)
    scorer = _item_scorer(model)

    rows_spec = tf.TensorSpec([None], tf.int32)

    def user_vectors(user_rows: tf.Tensor) -> tf.Tensor:
        return tf.cast(model.embed_users(user_rows), tf.float32)

    def item_vectors(item_rows: tf.Tensor) -> tf.Tensor:
        return tf.cast(model.embed_items(item_rows), tf.float32)

    core_users = core_function(user_vectors, [rows_spec], jit_compile)
    core_items = core_function(item_vectors, [rows_spec], jit_compile)

    def recommend(user_rows: tf.Tensor, k: tf.Tensor, exclude_rows: tf.Tensor) -> tuple:
        # core_users is called, not inlined: its graph is stored once for both signatures.
        return masked_top_k(scorer, core_users(user_rows), k, exclude_rows)

    core_recommend = core_function(
        recommend,
        [rows_spec, tf.TensorSpec([], tf.int32), tf.TensorSpec([None, None], tf.int32)],
        jit_compile,
    )

    user_spec = tf.TensorSpec([None], id_dtype, name="user_ids")
    item_spec = tf.TensorSpec([None], id_dtype, name="item_ids")
    k_spec = tf.TensorSpec([], tf.int32, name="k")
    exclude_spec = tf.TensorSpec([None, None], id_dtype, name="exclude_item_ids")

    def top_k(user_ids: tf.Tensor, k: tf.Tensor, exclude: tf.Tensor | None) -> dict:
        ids = _checked_ids(user_ids, num_users, "user_ids", "num_users")
        k = _checked_k(k, num_items)
        if exclude is None:
            rows = no_exclusions(ids)
        else:  # ids outside [0, num_items) are padding; the cast cannot wrap them inside
            inside = tf.logical_and(exclude >= 0, exclude < num_items)
            rows = tf.where(inside, tf.cast(exclude, tf.int32), -1)
        item_ids, scores = core_recommend(ids, k, rows)
        return {"item_ids": tf.cast(item_ids, id_dtype), "scores": tf.cast(scores, tf.float32)}

    @tf.function(input_signature=[user_spec, k_spec], autograph=False)
    def serving_default(user_ids: tf.Tensor, k: tf.Tensor) -> dict:
        return top_k(user_ids, k, None)

    @tf.function(input_signature=[user_spec, k_spec, exclude_spec], autograph=False)
    def serving_excluding(user_ids: tf.Tensor, k: tf.Tensor, exclude_item_ids: tf.Tensor) -> dict:
        return top_k(user_ids, k, exclude_item_ids)

    @tf.function(input_signature=[user_spec], autograph=False)
    def embed_users(user_ids: tf.Tensor) -> dict:
        ids = _checked_ids(user_ids, num_users, "user_ids", "num_users")
        return {"embeddings": core_users(ids)}

    @tf.function(input_signature=[item_spec], autograph=False)
    def embed_items(item_ids: tf.Tensor) -> dict:
        ids = _checked_ids(item_ids, num_items, "item_ids", "num_items")
        return {"embeddings": core_items(ids)}

    sigs = {}
    for name, fn, specs in (
        ("serving_default", serving_default, [user_spec, k_spec]),
        ("serving_excluding", serving_excluding, [user_spec, k_spec, exclude_spec]),
        ("embed_users", embed_users, [user_spec]),
        ("embed_items", embed_items, [item_spec]),
    ):
        sigs[name] = _Signature(fn, fn.get_concrete_function(), {s.name: s for s in specs})
    return _Built(sigs, item_scoring=scorer.how, num_users=num_users, num_items=num_items)


def _call_specs(model: Any, input_signature: Any) -> tuple[list[tf.TensorSpec], str]:
    """Flat named specs and the structure (``single``, ``list``, ``dict``) of the call."""

    def named(spec: Any, default: str) -> tf.TensorSpec:
        if not isinstance(spec, tf.TensorSpec):
            shape = [None, *list(spec.shape)[1:]] if spec.shape else []
            spec = tf.TensorSpec(shape, tf.as_dtype(spec.dtype), name=getattr(spec, "name", None))
        return tf.TensorSpec(spec.shape, spec.dtype, name=spec.name or default)

    if input_signature is None:
        inputs = None
        if _is_graph_model(model):
            inputs = getattr(model, "_inputs_struct", None)
            if inputs is None:
                inputs = model.inputs
        elif is_legacy_keras() and callable(getattr(model, "save_spec", None)):
            spec = model.save_spec()
            inputs = spec[0][0] if spec and spec[0] else None
        if inputs is None:
            raise ValueError(
                f"Cannot infer the call's input signature of {type(model).__name__} "
                f"'{getattr(model, 'name', '')}'. Pass input_signature= (a tf.TensorSpec, "
                "a list of them or a dict name -> tf.TensorSpec)."
            )
        input_signature = inputs
    if isinstance(input_signature, Mapping):
        specs = [named(s, str(n)) for n, s in input_signature.items()]
        return specs, "dict"
    if isinstance(input_signature, Sequence):
        specs = [named(s, f"input_{i}") for i, s in enumerate(input_signature)]
        if len(specs) == 1:
            return specs, "single"
        return specs, "list"
    return [named(input_signature, "inputs")], "single"


def _is_graph_model(model: Any) -> bool:
    cls = type(model)
    return cls.__name__ in ("Functional", "Sequential") and cls.__module__.startswith(
        ("keras.", "tf_keras.")
    )


def _call_signatures(model: Any, input_signature: Any, *, jit_compile: bool) -> _Built:
    specs, structure = _call_specs(model, input_signature)
    names = [s.name for s in specs]

    def run(*args: tf.Tensor) -> Any:
        if structure == "dict":
            inputs: Any = dict(zip(names, args, strict=True))
        elif structure == "list":
            inputs = list(args)
        else:
            inputs = args[0]
        return model(inputs, training=False)

    core = _maybe_jit(run, jit_compile)

    @tf.function(input_signature=specs, autograph=False)
    def serving_default(*args: tf.Tensor) -> dict:
        out = core(*args)
        if isinstance(out, Mapping):
            return dict(out)
        if isinstance(out, (list, tuple)):
            return {f"output_{i}": t for i, t in enumerate(out)}
        return {"outputs": out}

    sig = _Signature(
        serving_default, serving_default.get_concrete_function(), {s.name: s for s in specs}
    )
    return _Built({"serving_default": sig})
