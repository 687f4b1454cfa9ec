"""Helpers shared by the searchable layers."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import tensorflow as tf

from tfembsize._keras import is_legacy_keras, keras

logger = logging.getLogger(__name__)

__all__ = [
    "embedding_base_kwargs",
    "set_embedding_arguments",
    "find_searchable_layers",
    "integer_ids",
    "check_ids_in_range",
    "ids_out_of_range_message",
    "validate_dim",
    "iter_layers",
    "EmbeddingOutputsMixin",
    "gather_rows",
    "is_sharded",
]


def validate_dim(name: str, value: Any) -> int:
    """Checks that ``value`` is a positive Python/numpy integer and returns it as int."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(
            f"`{name}` must be a positive integer. Received: {name}={value!r} "
            f"(of type {type(value).__name__})."
        )
    return int(value)


def embedding_base_kwargs(layer_class: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Base ``Layer`` kwargs of an Embedding-like layer, with ``input_length`` handled.

    As tf-keras's ``Embedding``, ``input_length`` fixes the input shape under tf-keras; Keras 3
    ignores it (a warning naming ``layer_class`` says so).
    """
    kwargs = dict(kwargs)
    input_length = kwargs.pop("input_length", None)
    if input_length is not None:
        if is_legacy_keras() and "input_shape" not in kwargs:
            kwargs["input_shape"] = (input_length,)
        else:
            logger.warning(
                "%s: `input_length` is ignored (as by Keras 3's Embedding). "
                "Received: input_length=%r",
                layer_class,
                input_length,
            )
    return kwargs


def set_embedding_arguments(
    layer: Any,
    input_dim: int,
    output_dim: int,
    embeddings_initializer: Any,
    embeddings_regularizer: Any,
    embeddings_constraint: Any,
    mask_zero: bool,
) -> None:
    """Sets the ``Embedding`` attributes every searchable layer shares (Keras's names)."""
    layer.input_dim = input_dim
    layer.output_dim = output_dim
    layer.embeddings_initializer = keras.initializers.get(embeddings_initializer)
    layer.embeddings_regularizer = keras.regularizers.get(embeddings_regularizer)
    layer.embeddings_constraint = keras.constraints.get(embeddings_constraint)
    layer.mask_zero = bool(mask_zero)
    layer.supports_masking = layer.mask_zero


def ids_out_of_range_message(layer_name: str, input_dim: int, bad_id: Any = None) -> str:
    """The error message for an out-of-range id (shared by the eager and graph checks)."""
    # Backticks, not quotes: the graph-mode Assert escapes quotes when it prints the message.
    msg = f"Layer `{layer_name}`: ids must be in [0, input_dim={input_dim}). Received id"
    return msg if bad_id is None else f"{msg} {bad_id}."


def integer_ids(inputs: Any, input_dim: int, layer_name: str) -> tf.Tensor:
    """A layer's lookup ids as an integer tensor, checked to lie in ``[0, input_dim)``.

    ``inputs`` is converted to a tensor; int32 and int64 ids keep their dtype (the range is
    checked before any narrowing cast, so an int64 id such as 2**32 cannot wrap to 0), any
    other dtype is cast to int32. See `check_ids_in_range` for the check.

    Args:
        inputs: ids of any shape (a tensor, array or nested list).
        input_dim: number of rows of the table.
        layer_name: name used in the error message.

    Returns:
        The checked int32 or int64 ids.

    Raises:
        tf.errors.InvalidArgumentError: eagerly, when an id is negative or >= ``input_dim``.
    """
    ids = tf.convert_to_tensor(inputs)
    if ids.dtype not in (tf.int32, tf.int64):
        ids = tf.cast(ids, tf.int32)
    return check_ids_in_range(ids, input_dim, layer_name)


def check_ids_in_range(ids: tf.Tensor, input_dim: int, layer_name: str) -> tf.Tensor:
    """Returns ``ids`` with a run-time check that every id lies in ``[0, input_dim)``.

    On GPU an out-of-range gather silently returns zeros, so the check is explicit. The
    error (`tf.errors.InvalidArgumentError`) names the layer, one offending id and
    ``input_dim``. Eagerly it is raised at once with a clean message; in a graph it is a
    ``tf.debugging.Assert`` that runs before the lookup. Under XLA (``jit_compile=True``) the
    check compiles to nothing (tf2xla drops ``Assert``) and XLA clamps the gather index, so
    compiled functions must receive valid ids (validate them before the compiled region).

    Args:
        ids: integer tensor of any shape.
        input_dim: number of rows of the table.
        layer_name: name used in the error message.

    Returns:
        ``ids``, with the check as a control dependency in graph mode.

    Raises:
        tf.errors.InvalidArgumentError: eagerly, when an id is negative or >= ``input_dim``.
    """
    if ids.shape.num_elements() == 0:
        return ids
    lo = tf.reduce_min(ids)
    hi = tf.reduce_max(ids)
    limit = tf.constant(input_dim, dtype=ids.dtype)
    if tf.executing_eagerly():
        lo_v, hi_v = int(lo), int(hi)
        if lo_v < 0 or hi_v >= input_dim:
            bad = hi_v if hi_v >= input_dim else lo_v
            raise tf.errors.InvalidArgumentError(
                None, None, ids_out_of_range_message(layer_name, input_dim, bad)
            )
        return ids
    ok = tf.logical_and(lo >= 0, hi < limit)
    bad = tf.where(hi >= limit, hi, lo)
    assert_op = tf.debugging.Assert(
        ok,
        [ids_out_of_range_message(layer_name, input_dim), bad],
        summarize=1,
        name="check_ids_in_range",
    )
    with tf.control_dependencies([assert_op]):
        return tf.identity(ids)


def _tf_variable(v: Any) -> Any:
    """The ``tf.Variable`` (or ``ShardedVariable``) behind a Keras 3 variable."""
    inner = getattr(v, "_value", None)
    return v if inner is None or isinstance(v, tf.Variable) else inner


def is_sharded(variable: Any) -> bool:
    """True for a variable split into shards by a ``ParameterServerStrategy`` partitioner."""
    return isinstance(_tf_variable(variable), tf.__internal__.distribute.ShardedVariable)


def gather_rows(variable: Any, ids: tf.Tensor) -> tf.Tensor:
    """Rows ``ids`` of a table variable, sharded or not.

    A ``ShardedVariable`` (a table split over parameter servers by
    ``tf.distribute.experimental.ParameterServerStrategy``'s ``variable_partitioner``) is read
    with ``tf.nn.embedding_lookup``, which fetches each row from the shard that holds it
    instead of concatenating the whole table first; any other variable with ``tf.gather``.
    Ids are global row numbers either way.
    """
    inner = _tf_variable(variable)
    if isinstance(inner, tf.__internal__.distribute.ShardedVariable):
        return tf.nn.embedding_lookup(inner, ids)
    return tf.gather(tf.convert_to_tensor(variable), ids)


class EmbeddingOutputsMixin:
    """The padding mask, output shape and symbolic output of ``keras.layers.Embedding``.

    Put it before the Keras ``Layer`` base class. The layer needs ``output_dim`` and
    ``mask_zero`` attributes. The three methods behave as those of the ``Embedding`` of the
    Keras that TensorFlow resolved:

    * Keras 3 builds functional models from symbolic ``KerasTensor`` inputs, which TensorFlow
      ops reject, so the padding mask uses ``keras.ops.not_equal`` there (``tf.not_equal``
      under tf-keras, whose symbolic tensors are TensorFlow tensors). The lookup itself stays
      in ``call`` with ``tf.*`` ops.
    * Output shapes are tuples under Keras 3 and ``tf.TensorShape`` under tf-keras.
    * Under Keras 3 a ragged symbolic input gives a ragged symbolic output.
    """

    # Provided by the layer the mixin is combined with.
    mask_zero: bool
    output_dim: int
    compute_dtype: Any

    def compute_mask(self, inputs: Any, mask: Any = None) -> Any:
        """Padding mask (``ids != 0``) when ``mask_zero`` is set, as in ``Embedding``."""
        if not self.mask_zero:
            return None
        if is_legacy_keras():
            return tf.not_equal(inputs, 0)
        return keras.ops.not_equal(inputs, 0)

    def compute_output_shape(self, input_shape: Any) -> Any:
        """Input shape with ``output_dim`` appended (a ``tf.TensorShape`` under tf-keras)."""
        if is_legacy_keras():
            return tf.TensorShape(input_shape).concatenate([self.output_dim])
        return (*tuple(input_shape), self.output_dim)

    def compute_output_spec(self, inputs: Any) -> Any:
        """Keras 3: the symbolic output (ragged for a ragged input), as ``Embedding``'s."""
        shape = self.compute_output_shape(inputs.shape)
        return keras.KerasTensor(
            shape, dtype=self.compute_dtype, ragged=bool(getattr(inputs, "ragged", False))
        )


def iter_layers(model: Any) -> list:
    """All layers nested in ``model`` (recursively), without the model itself, deduplicated."""
    if hasattr(model, "_flatten_layers"):
        layers = list(model._flatten_layers(include_self=False, recursive=True))
    else:
        layers = list(getattr(model, "layers", []))
    seen: set[int] = set()
    out = []
    for layer in layers:
        if id(layer) not in seen:
            seen.add(id(layer))
            out.append(layer)
    return out


def find_searchable_layers(model: Any) -> dict:
    """Maps layer name to layer for every searchable embedding layer nested in ``model``.

    A searchable layer exposes ``sizes``, ``assign_sizes`` and ``usable_params``.

    Raises:
        ValueError: two searchable layers share a name.
    """
    found: dict = {}
    candidates = [model, *iter_layers(model)]
    for layer in candidates:
        if getattr(layer, "_tfembsize_searchable", False):
            name = layer.name
            if name in found and found[name] is not layer:
                raise ValueError(
                    f"Two searchable layers are named {name!r}; give them distinct names."
                )
            found[name] = layer
    return found


def is_searchable(layer: Any) -> bool:
    """True for a layer whose per-row sizes a search sets (``sizes``/``assign_sizes``).

    Such layers set the class flag ``_tfembsize_searchable`` (`MaskedEmbedding`,
    `BudgetedEmbedding`). PEP's learned masks are not sizes: `PEPEmbedding` is not searchable
    in this sense, but it has usable parameters (`model_usage` counts it).
    """
    return bool(getattr(layer, "_tfembsize_searchable", False))


def table_params(layer: Any) -> int:
    """Usable parameters of one embedding table: its ``usable_params()``, else rows x width."""
    if callable(getattr(layer, "usable_params", None)):
        return int(layer.usable_params())
    return int(layer.input_dim) * int(layer.output_dim)


def model_usage(model: Any) -> tuple[int, int]:
    """(usable parameters, rows) over every sized embedding table of ``model``.

    The one place usable parameters are summed: a table counts if it has ``usable_params()``
    and ``input_dim`` (`MaskedEmbedding`, `BudgetedEmbedding`, `PEPEmbedding`, ...; NCF's
    two tables per side both count). A table held inside another counted table (the rows
    of a `CompressedLadderEmbedding`) is counted with it, not again. This is what a budget
    is checked against.

    Raises:
        ValueError: ``model`` has no sized embedding table.
    """
    used = rows = 0
    seen = False
    inner: set[int] = set()
    for layer in [model, *iter_layers(model)]:
        if id(layer) in inner:
            continue
        if callable(getattr(layer, "usable_params", None)) and hasattr(layer, "input_dim"):
            used += int(layer.usable_params())
            rows += int(layer.input_dim)
            seen = True
            inner.update(id(x) for x in iter_layers(layer))
    if not seen:
        raise ValueError(
            f"{type(model).__name__} has no sized embedding tables (layers with "
            "usable_params()); the budget cannot be checked."
        )
    return used, rows
