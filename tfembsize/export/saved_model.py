"""SavedModel export with explicit serving signatures, written atomically.

`save_compressed(model, path)` compresses the model (`tfembsize.export.compress`) and writes a
SavedModel whose root is a plain ``tf.Module`` holding only the variables and resources the
signatures read (so no optimizer slots, task metrics or TFRS candidate datasets are exported);
the signature functions are stored once each, as signatures, and every computation they share
(the user vectors, the item vectors, the top-k) is one function they all call. It loads with
``tf.saved_model.load`` wherever TensorFlow is installed, without tfembsize, and runs with
``saved_model_cli run`` and TF Serving.

Signatures:

* Retrieval models (``embed_users``, ``embed_items``, ``num_users``, ``num_items``):
  ``serving_default(user_ids, k) -> {item_ids, scores}`` (``k`` is an input, so it is not
  frozen at trace time), ``serving_excluding(user_ids, k, exclude_item_ids) -> {item_ids,
  scores}`` (``exclude_item_ids [b, m]`` are masked to -inf before the top-k; ids outside
  ``[0, num_items)`` are padding), ``embed_users(user_ids) -> {embeddings}``,
  ``embed_items(item_ids) -> {embeddings}``. The top-k is ``tf.math.top_k`` over the dot
  products with every item; when the item table of the model is a `CompressedEmbedding`
  whose lookup *is* ``embed_items``, the products are computed class block by class block on
  the compressed storage (no dense item matrix is ever built).
* Two-tower models given by their towers (``query_tower=``, ``candidate_tower=``): the same
  four signatures, taking and returning the raw ids of the towers' ``StringLookup`` /
  ``IntegerLookup`` layers (`tfembsize.export.towers`).
* Other models: ``serving_default`` is the model's call (``training=False``); the tables of
  lookup layers in the model are saved with it.

Ids are validated in the signature, before any (optionally XLA-compiled) computation: an id
outside ``[0, num_users)`` / ``[0, num_items)`` or a ``k`` outside ``[1, num_items]`` fails with
``InvalidArgumentError`` naming the input, its range and the offending value.

The write is atomic: everything goes to a temporary directory beside ``path`` that is renamed
to ``path`` only after the export has been written and (with ``verify=True``) reloaded and
checked; on any failure the temporary directory is removed and ``path`` is untouched.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from tfembsize import _io
from tfembsize._keras import keras_version
from tfembsize.export._failures import ExportVerificationError, exporting, lookup_resources
from tfembsize.export.compress import CompressionError, compress, searchable_layers
from tfembsize.export.signatures import (
    _Built,
    _call_signatures,
    _resolve_kind,
    _retrieval_signatures,
    is_retrieval_model,
    resolve_jit_compile,
)
from tfembsize.export.towers import (
    build_tower,
    compressed_layers,
    jit_default,
    resolve_tower,
    tower_attributes,
    tower_signatures,
)
from tfembsize.layers.compressed_embedding import CompressedEmbedding
from tfembsize.layers.compressed_ladder import CompressedLadderEmbedding
from tfembsize.layers.utils import iter_layers

__all__ = [
    "ExportResult",
    "ExportVerificationError",
    "METADATA_PATH",
    "save_compressed",
    "save_serving_model",
    "read_metadata",
]

logger = logging.getLogger(__name__)

METADATA_PATH = os.path.join("assets.extra", "tfembsize.json")
_FORMAT = "tfembsize.export"
_FORMAT_VERSION = 1


@dataclasses.dataclass(frozen=True)
class ExportResult:
    """What `save_compressed` / `save_serving_model` wrote.

    Attributes:
        path: the SavedModel directory.
        kind: ``"retrieval"`` or ``"call"``.
        signatures: names of the exported signatures.
        item_scoring: how ``serving_default`` scores items (retrieval only):
            ``"compressed"`` (class blocks of a `CompressedEmbedding`), ``"dense_table"``
            (an embedding variable), ``"representations"``, ``"embed_items"`` or ``"tower"``
            (the item matrix recomputed by the model or the candidate tower in every call);
            empty for ``"call"``.
        tables: names of the compressed tables in the export.
        jit_compile: whether the signature bodies are compiled with XLA.
    """

    path: str
    kind: str
    signatures: tuple[str, ...]
    item_scoring: str
    tables: tuple[str, ...]
    jit_compile: bool = False


# --------------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------------
def save_compressed(
    model: Any,
    path: str | os.PathLike,
    *,
    signatures: str = "auto",
    k: int = 10,
    input_signature: Any = None,
    query_tower: Any = None,
    candidate_tower: Any = None,
    max_classes: int | None = None,
    positions: str = "columns",
    id_dtype: Any = tf.int64,
    jit_compile: bool | None = None,
    overwrite: bool = False,
    verify: bool = True,
) -> ExportResult:
    """Compresses ``model`` and writes it as a serving SavedModel (atomically).

    Args:
        model: a Keras model with searchable embedding layers (or already compressed).
        path: target directory (local filesystem); must not exist unless ``overwrite``.
        signatures: ``"auto"`` (retrieval signatures when the model follows the retrieval
            protocol or towers are given, else the call), ``"retrieval"`` or ``"call"``.
        k: default ``k`` recorded in the export metadata and used by the export check
            (the ``serving_default`` signature always takes ``k`` as an input).
        input_signature: for ``"call"`` exports of models whose inputs cannot be inferred
            (Keras 3 subclassed models): a ``tf.TensorSpec``, a list of them, or a dict of
            name -> spec.
        query_tower: for a two-tower model of your own (a ``tfrs.Model``, or any model
            whose user and item towers map raw ids to vectors): the query (user) tower, as
            a Keras model or the name of the attribute of ``model`` that holds it. With
            ``candidate_tower``, the export serves by the towers' raw ids (see
            `tfembsize.export.towers`): towers that start with a ``StringLookup`` or
            ``IntegerLookup`` take and return the lookup's ids.
        candidate_tower: the candidate (item) tower, likewise; every item of its lookup's
            vocabulary (every row without a lookup) is a candidate.
        max_classes: see `tfembsize.layers.compressed_embedding.pack_table`.
        positions: see `tfembsize.layers.compressed_embedding.pack_table`.
        id_dtype: dtype of the id inputs of the retrieval signatures (int64 or int32) when
            the ids are rows (no lookup).
        jit_compile: compile the signature bodies with XLA (ids are still validated
            outside the compiled region). ``None`` (default) compiles exactly when the
            model holds an unstructured (PEP, ``kind="sparse"``) compressed table: without
            XLA, scoring every item gathers each stored value op by op and is several times
            slower than a dense matrix-vector product at batch 1 on CPU; with XLA it is not
            slower (``benchmarks/results/export.md``). Prefix (size-plan) tables are as fast
            as dense without XLA, so they are not compiled by default. XLA compiles once per
            distinct batch size; pass ``False`` to avoid that for highly variable batches.
        overwrite: replace an existing directory at ``path``.
        verify: reload the written SavedModel and check it reproduces the in-memory
            compressed model, and check the compressed lookups against ``model``, before
            moving it into place.

    Returns:
        An `ExportResult`.

    Raises:
        CompressionError: the model (or a tower) cannot be exported; the message names the
            layer and the fix. Every failure of the export other than file-system errors
            and the verification is raised as this error.
        FileExistsError: ``path`` exists and ``overwrite`` is False.
        ExportVerificationError: the verification failed (nothing is written).

    Example:
        >>> save_compressed(model, "export/gowalla-bet-90")
        >>> served = tf.saved_model.load("export/gowalla-bet-90")
        >>> served.signatures["serving_default"](user_ids=tf.constant([0], tf.int64),
        ...                                      k=tf.constant(10))
        >>> save_compressed(tutorial_model, "export/ml-100k", query_tower="user_model",
        ...                 candidate_tower="movie_model")  # serves by raw ids
    """
    if query_tower is not None or candidate_tower is not None:
        return _save_towers(
            model,
            path,
            query_tower,
            candidate_tower,
            compress_options={"max_classes": max_classes, "positions": positions},
            signatures=signatures,
            k=k,
            id_dtype=id_dtype,
            jit_compile=jit_compile,
            overwrite=overwrite,
            verify=verify,
        )
    _refuse_tower_models(model, signatures)
    if searchable_layers(model):
        with exporting(model, "compressing the tables"):
            small = compress(model, max_classes=max_classes, positions=positions)
            if verify:
                _check_lookups(model, small)
    elif any(isinstance(layer, CompressedEmbedding) for layer in [model, *iter_layers(model)]):
        small = model
    else:
        raise CompressionError(
            f"{type(model).__name__} '{getattr(model, 'name', '')}' holds neither searchable "
            "nor compressed embedding layers. Use tfembsize.export.save_serving_model to "
            "export a model as it is."
        )
    return save_serving_model(
        small,
        path,
        signatures=signatures,
        k=k,
        input_signature=input_signature,
        id_dtype=id_dtype,
        jit_compile=jit_compile,
        overwrite=overwrite,
        verify=verify,
    )


def save_serving_model(
    model: Any,
    path: str | os.PathLike,
    *,
    signatures: str = "auto",
    k: int = 10,
    input_signature: Any = None,
    query_tower: Any = None,
    candidate_tower: Any = None,
    id_dtype: Any = tf.int64,
    jit_compile: bool | None = None,
    overwrite: bool = False,
    verify: bool = True,
) -> ExportResult:
    """Writes ``model`` as it is (no compression) with the serving signatures.

    The signatures, metadata and atomic write are those of `save_compressed`; use this for
    an already compressed model or to export a dense baseline the same way.

    Args:
        model: a Keras model.
        path: target directory.
        signatures: see `save_compressed`.
        k: see `save_compressed`.
        input_signature: see `save_compressed`.
        query_tower: see `save_compressed`.
        candidate_tower: see `save_compressed`.
        id_dtype: see `save_compressed`.
        jit_compile: see `save_compressed`.
        overwrite: see `save_compressed`.
        verify: reload the written SavedModel and compare it with ``model``.

    Returns:
        An `ExportResult`.
    """
    if query_tower is not None or candidate_tower is not None:
        return _save_towers(
            model,
            path,
            query_tower,
            candidate_tower,
            compress_options=None,
            signatures=signatures,
            k=k,
            id_dtype=id_dtype,
            jit_compile=jit_compile,
            overwrite=overwrite,
            verify=verify,
        )
    target, id_dtype = _check_arguments(path, k, id_dtype, overwrite)
    jit_compile = resolve_jit_compile(model, jit_compile)
    kind = _resolve_kind(model, signatures)
    with exporting(model, "tracing the serving functions"):
        if kind == "retrieval":
            built = _retrieval_signatures(model, id_dtype=id_dtype, jit_compile=jit_compile)
        else:
            built = _call_signatures(model, input_signature, jit_compile=jit_compile)
        built.trackables.extend(lookup_resources(model))
    holders = [model, *iter_layers(model)]
    return _write(
        model, target, kind, built, holders, k=int(k), jit_compile=jit_compile, verify=verify
    )


def _check_arguments(
    path: str | os.PathLike, k: Any, id_dtype: Any, overwrite: bool
) -> tuple[Path, tf.DType]:
    target = _local_path(path)
    if target.exists() and not overwrite:
        raise FileExistsError(
            f"`path` already exists: {str(target)!r}. Pass overwrite=True to replace it."
        )
    id_dtype = tf.as_dtype(id_dtype)
    if id_dtype not in (tf.int32, tf.int64):
        raise ValueError(f"`id_dtype` must be int32 or int64. Received: id_dtype={id_dtype!r}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"`k` must be a positive integer. Received: k={k!r}")
    return target, id_dtype


def _save_towers(
    model: Any,
    path: str | os.PathLike,
    query_tower: Any,
    candidate_tower: Any,
    *,
    compress_options: dict | None,
    signatures: str,
    k: int,
    id_dtype: Any,
    jit_compile: bool | None,
    overwrite: bool,
    verify: bool,
) -> ExportResult:
    """A retrieval export built from the model's two towers (see `save_compressed`)."""
    if query_tower is None or candidate_tower is None:
        raise CompressionError(
            "Pass both query_tower= and candidate_tower= (the user and the item tower), or neither."
        )
    if signatures not in ("auto", "retrieval"):
        raise ValueError(
            "query_tower=/candidate_tower= export retrieval signatures; `signatures` must be "
            f"'auto' or 'retrieval'. Received: signatures={signatures!r}"
        )
    target, id_dtype = _check_arguments(path, k, id_dtype, overwrite)
    if jit_compile is not None:
        jit_compile = resolve_jit_compile(model, jit_compile)  # checks the type
    scratch = Path(tempfile.mkdtemp(prefix="tfembsize-vocabulary-"))
    try:
        towers = []
        for role, tower in (("query", query_tower), ("candidate", candidate_tower)):
            tower = resolve_tower(model, tower, role)
            with exporting(model, f"preparing the {role} tower"):
                towers.append(
                    build_tower(
                        tower,
                        role,
                        id_dtype=id_dtype,
                        directory=scratch,
                        compress_options=compress_options,
                    )
                )
        jit = jit_default(towers) if jit_compile is None else bool(jit_compile)
        with exporting(model, "tracing the serving functions"):
            built = tower_signatures(towers[0], towers[1], jit_compile=jit)
        return _write(
            model,
            target,
            "retrieval",
            built,
            compressed_layers(towers),
            k=int(k),
            jit_compile=jit,
            verify=verify,
        )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _refuse_tower_models(model: Any, signatures: str) -> None:
    """A clear error for a two-tower model of one's own exported without its towers."""
    if is_retrieval_model(model) or signatures == "call":
        return
    if not any(c.__module__.startswith("tensorflow_recommenders") for c in type(model).__mro__):
        return
    names = tower_attributes(model)
    example = (
        f"query_tower={names[0]!r}, candidate_tower={names[1]!r}"
        if len(names) == 2
        else "query_tower='user_model', candidate_tower='movie_model'"
    )
    raise CompressionError(
        f"{type(model).__name__} '{getattr(model, 'name', '')}' trains through compute_loss "
        "(a TensorFlow Recommenders model) and has no serving call to export. Export it from "
        f"its two towers: save_compressed(model, path, {example}). Attributes of the model "
        f"holding embedding tables: {names}."
    )


def _write(
    model: Any,
    target: Path,
    kind: str,
    built: _Built,
    holders: list[Any],
    *,
    k: int,
    jit_compile: bool,
    verify: bool,
) -> ExportResult:
    root, tables = _export_root(holders, built)
    metadata = _metadata(model, kind, built, tables, default_k=k, jit_compile=jit_compile)
    tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:12]}"
    try:
        _save(root, tmp, built, model)
        _io.write_bytes(
            tmp / METADATA_PATH, (json.dumps(metadata, indent=2, sort_keys=True) + "\n").encode()
        )
        if verify:
            _verify_saved(tmp, built, metadata)
        _move_into_place(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("Wrote %s SavedModel to %s (signatures: %s)", kind, target, list(built.signatures))
    return ExportResult(
        path=str(target),
        kind=kind,
        signatures=tuple(built.signatures),
        item_scoring=built.item_scoring,
        tables=tuple(t["name"] for t in tables),
        jit_compile=jit_compile,
    )


def _save(root: tf.Module, tmp: Path, built: _Built, model: Any) -> None:
    """``tf.saved_model.save`` with a clear error for computations SavedModel cannot store."""
    try:
        with exporting(model, "writing the SavedModel"):
            tf.saved_model.save(
                root,
                str(tmp),
                signatures={name: sig.concrete for name, sig in built.signatures.items()},
            )
    except CompressionError as wrapped:
        err = wrapped.__cause__
        if not isinstance(err, KeyError) or "captures tensor" not in str(err):
            raise
        raise CompressionError(
            f"Cannot write a serving SavedModel of {type(model).__name__} "
            f"'{getattr(model, 'name', '')}': its serving computation captures a tensor that "
            "is neither a variable nor a constant (for graph backbones such as LightGCN and "
            "NGCF, the interaction graph kept as a CSR sparse matrix), which SavedModel cannot "
            "store. Propagation over the graph is not exportable yet: serve the propagated "
            "representations (`model.representations()`) as plain tables instead. "
            f"(TensorFlow: {err})"
        ) from err


def read_metadata(path: str | os.PathLike) -> dict:
    """The tfembsize metadata of an exported SavedModel (``assets.extra/tfembsize.json``).

    Raises:
        FileNotFoundError: ``path`` is not a tfembsize export.
    """
    meta = Path(path) / METADATA_PATH
    if not meta.is_file():
        raise FileNotFoundError(
            f"{str(path)!r} is not a tfembsize export (no {METADATA_PATH} inside)."
        )
    return dict(_io.read_json(meta, format=_FORMAT, what="export metadata"))


# --------------------------------------------------------------------------------------------
# Root object, metadata, verification, atomic move
# --------------------------------------------------------------------------------------------
def _export_root(holders: list[Any], built: _Built) -> tuple[tf.Module, list[dict]]:
    """The SavedModel root: the variables the signatures read, and nothing else.

    Compressed tables go under ``tables`` (their checkpoint keys are recorded in the
    metadata for `compression_report`), the other variables the signatures read under
    ``other_variables``, the id maps and lookup tables under ``resources``. The signature
    functions are not attached to the root: attached, SavedModel would store each of them
    a second time beside its signature.
    """
    used: dict[int, tf.Variable] = {}
    for sig in built.signatures.values():
        for var in sig.concrete.variables:
            used[id(var)] = var
    root = tf.Module()
    tables: list[dict] = []
    table_vars: list[dict[str, tf.Variable]] = []
    for layer in holders:
        if not isinstance(layer, CompressedEmbedding):
            continue
        tvars = layer.tf_variables()
        if not any(id(v) in used for v in tvars.values()):
            continue
        index = len(tables)
        tables.append(
            {
                "name": layer.name,
                "config": _plain_config(layer),
                "checkpoint_keys": {
                    w: f"tables/{index}/{w}/.ATTRIBUTES/VARIABLE_VALUE" for w in tvars
                },
            }
        )
        table_vars.append(dict(tvars))
        for v in tvars.values():
            used.pop(id(v), None)
    root.tables = table_vars
    root.other_variables = list(used.values())
    root.resources = list(built.trackables)
    return root, tables


def _plain_config(layer: CompressedEmbedding) -> dict:
    config = layer.get_config()
    config.pop("dtype", None)
    return config


def _metadata(
    model: Any,
    kind: str,
    built: _Built,
    tables: list[dict],
    *,
    default_k: int,
    jit_compile: bool,
) -> dict:
    from tfembsize._version import __version__

    return {
        "format": _FORMAT,
        "format_version": _FORMAT_VERSION,
        "tfembsize_version": __version__,
        "tensorflow_version": tf.__version__,
        "keras_version": keras_version(),
        "model_class": type(model).__name__,
        "kind": kind,
        "item_scoring": built.item_scoring,
        "jit_compile": jit_compile,
        "num_users": built.num_users,
        "num_items": built.num_items,
        "default_k": default_k,
        "signatures": {
            name: {
                "inputs": {
                    n: {"dtype": s.dtype.name, "shape": s.shape.as_list()}
                    for n, s in sig.inputs.items()
                }
            }
            for name, sig in built.signatures.items()
        },
        "tables": tables,
        **built.metadata,
    }


def sample_inputs(meta: Mapping[str, Any], signature: str, *, k: int | None = None) -> dict:
    """Valid example inputs for a signature of an export (from its metadata).

    Ids are spread over ``[0, num_users)`` / ``[0, num_items)``, or taken from the examples
    recorded for raw ids; ``exclude_item_ids`` holds two item ids per user; for ``"call"``
    exports, integer inputs are 0 (valid for every table), string inputs empty (the
    out-of-vocabulary id of a lookup) and float inputs a fixed ramp.
    """
    spec = meta["signatures"][signature]["inputs"]
    raw = meta.get("ids") or {}
    out = {}
    batch = 4
    for name, s in spec.items():
        dtype = tf.as_dtype(s["dtype"])
        shape = [batch if d is None else d for d in s["shape"]]
        if name == "k":
            k_val = k if k is not None else meta.get("default_k") or 1
            limit = meta.get("num_candidates") or meta["num_items"]
            out[name] = tf.constant(min(int(k_val), int(limit)), dtype)
        elif name in ("user_ids", "item_ids", "exclude_item_ids") and meta.get("kind") == (
            "retrieval"
        ):
            key = "user_ids" if name == "user_ids" else "item_ids"
            if key in raw:
                examples = list(raw[key]["examples"])
                values = [examples[i % len(examples)] for i in range(batch)]
            else:
                limit = int(meta["num_users"] if key == "user_ids" else meta["num_items"])
                values = np.linspace(0, limit - 1, batch).astype(np.int64).tolist()
            if name == "exclude_item_ids":
                values = [[values[i], values[(i + 1) % batch]] for i in range(batch)]
            out[name] = tf.constant(values, dtype)
        elif dtype.is_integer:
            out[name] = tf.zeros(shape, dtype)
        elif dtype == tf.string:  # an id a lookup does not know: its out-of-vocabulary row
            out[name] = tf.fill(shape, "")
        else:
            size = int(np.prod(shape)) if shape else 1
            ramp = np.linspace(-1.0, 1.0, size).reshape(shape).astype(dtype.as_numpy_dtype)
            out[name] = tf.constant(ramp)
    return out


def _verify_saved(tmp: Path, built: _Built, metadata: dict) -> None:
    try:
        loaded = tf.saved_model.load(str(tmp))
    except Exception as err:  # noqa: BLE001 - reported as a failed verification
        raise ExportVerificationError(
            f"The written SavedModel does not load ({type(err).__name__}: {err}); nothing was "
            "written."
        ) from err
    for name, sig in built.signatures.items():
        inputs = sample_inputs(metadata, name)
        try:
            expected = sig.concrete(**inputs)
            got = loaded.signatures[name](**inputs)
        except Exception as err:  # noqa: BLE001 - reported as a failed verification
            raise ExportVerificationError(
                f"Signature {name!r} failed on example inputs {sorted(inputs)} "
                f"({type(err).__name__}: {str(err).strip()[:400]}); nothing was written. "
                "Check the model's call on such inputs, or pass verify=False."
            ) from err
        for key, value in expected.items():
            a, b = np.asarray(value), np.asarray(got[key])
            if a.dtype.kind in "fc":
                same = a.shape == b.shape and np.allclose(a, b, rtol=1e-6, atol=1e-6)
            else:  # integer or string ids
                same = a.shape == b.shape and np.array_equal(a, b)
            if not same:
                raise ExportVerificationError(
                    f"Signature {name!r} output {key!r} of the reloaded SavedModel differs "
                    "from the in-memory model; nothing was written."
                )


def _check_lookups(model: Any, small: Any) -> None:
    """Compressed lookups equal the searchable layers' on a spread of ids of each table."""
    new_layers = {
        layer.name: layer
        for layer in [small, *iter_layers(small)]
        if isinstance(layer, (CompressedEmbedding, CompressedLadderEmbedding))
    }
    for name, layer in searchable_layers(model).items():
        new = new_layers.get(name)
        if new is None:
            continue
        n = int(layer.input_dim)
        ids = tf.constant(np.unique(np.linspace(0, n - 1, min(n, 257)).astype(np.int32)))
        a, b = np.asarray(layer(ids)), np.asarray(new(ids))
        if a.shape != b.shape or not np.array_equal(a, b):
            raise ExportVerificationError(
                f"The compressed table '{name}' does not reproduce the searchable layer's "
                "lookups; nothing was written."
            )


def _local_path(path: str | os.PathLike) -> Path:
    text = os.fspath(path)
    if "://" in text:
        raise ValueError(
            "save_compressed writes atomically to a local directory (rename); received "
            f"path={text!r}. Export locally and copy the directory."
        )
    return Path(text).expanduser().absolute()


def _move_into_place(tmp: Path, target: Path) -> None:
    if target.exists():
        trash = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:12]}"
        os.replace(target, trash)
        try:
            os.replace(tmp, target)
        except BaseException:
            os.replace(trash, target)
            raise
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp, target)
