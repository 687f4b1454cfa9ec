"""compress(model): replace every searchable embedding layer by a CompressedEmbedding.

How each kind of model is rebuilt (the original is never modified):

* **Functional and Sequential models** are cloned with ``keras.models.clone_model`` and a
  clone function that substitutes each searchable layer by its `CompressedEmbedding`,
  rebuilds nested models (recursively) and copies the weights of every other layer.
* **Subclassed models and layers** (including models nested in them) are rebuilt from their
  config: ``type(obj).from_config(obj.get_config())``, built with the original's build
  config, given the original's weights, and then every attribute that refers to a
  searchable layer (directly, or in a list, tuple or dict) is pointed at the compressed
  layer; nested models and layers holding searchable layers are rebuilt the same way.
  This needs a ``get_config()`` that returns the constructor arguments (the house style of
  tfembsize backbones; Keras 3 derives one automatically when every constructor argument
  is a plain value). State that is neither config nor weights is carried over by a
  ``_tfembsize_copy_state(source)`` method of the class if it has one; otherwise tensors
  the original holds where the rebuilt object holds None (e.g. the interaction graph of
  LightGCN) are shared. A model whose config cannot be round-tripped raises
  `CompressionError` saying so; build such a model yourself from `compress_layer` outputs.

After the rebuild, the new model is checked: no searchable layer may remain anywhere in it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import tensorflow as tf

from tfembsize._keras import is_legacy_keras, keras
from tfembsize.layers.compressed_embedding import CompressedEmbedding
from tfembsize.layers.compressed_ladder import CompressedLadderEmbedding
from tfembsize.layers.utils import iter_layers

__all__ = [
    "CompressionError",
    "compress",
    "compress_layer",
    "is_searchable",
    "searchable_layers",
    "retrieval_table",
]

logger = logging.getLogger(__name__)

# Attributes through which Keras / TF track sub-objects themselves; never rewritten.
_INTERNAL_ATTRS = frozenset(
    {
        "_layers",
        "_tracker",
        "_tracked",
        "_trainable_variables",
        "_non_trainable_variables",
        "_trainable_weights",
        "_non_trainable_weights",
        "_metrics",
        "_seed_generators",
        "_obj_reference_counts_dict",
        "_inbound_nodes_value",
        "_outbound_nodes_value",
        "_inbound_nodes",
        "_outbound_nodes",
        "_operations",
        "_functional",
        "_compiled_trainable_state",
    }
)


class CompressionError(ValueError):
    """A model (or layer) cannot be turned into its compressed counterpart."""


def is_searchable(layer: Any) -> bool:
    """Whether ``layer`` holds searchable embedding state that `compress` must replace.

    True for layers flagged ``_tfembsize_searchable`` (prefix-size layers),
    ``_tfembsize_pep`` or ``_tfembsize_ladder`` (`LadderEmbedding`), layers with a
    ``_tfembsize_compress`` hook, and any layer exposing ``pruning_mask()`` and
    ``pruned_table()``.
    """
    if isinstance(layer, (CompressedEmbedding, CompressedLadderEmbedding)) or not isinstance(
        layer, keras.layers.Layer
    ):
        return False
    if getattr(layer, "_tfembsize_searchable", False) or getattr(layer, "_tfembsize_pep", False):
        return True
    if getattr(layer, "_tfembsize_ladder", False):
        return True
    if callable(getattr(layer, "_tfembsize_compress", None)):
        return True
    return callable(getattr(layer, "pruning_mask", None)) and callable(
        getattr(layer, "pruned_table", None)
    )


def _can_compress(layer: Any) -> bool:
    if callable(getattr(layer, "_tfembsize_compress", None)):
        return True
    if getattr(layer, "_tfembsize_ladder", False):
        return True
    if callable(getattr(layer, "pruning_mask", None)) and callable(
        getattr(layer, "pruned_table", None)
    ):
        return True
    return hasattr(layer, "sizes") and callable(getattr(layer, "masked_table", None))


def searchable_layers(model: Any) -> dict[str, Any]:
    """Name -> layer for every searchable layer in ``model`` (or ``model`` itself).

    Raises:
        CompressionError: two different searchable layers share a name.
    """
    found: dict[str, Any] = {}
    for layer in [model, *iter_layers(model)]:
        if is_searchable(layer):
            if layer.name in found and found[layer.name] is not layer:
                raise CompressionError(
                    f"Two searchable layers are named {layer.name!r}; give them distinct names."
                )
            found[layer.name] = layer
    return found


def compress_layer(
    layer: Any,
    *,
    scoring: bool = False,
    max_classes: int | None = None,
    positions: str = "columns",
) -> keras.layers.Layer:
    """The inference-only replacement of one searchable layer.

    A layer may define ``_tfembsize_compress(scoring=..., max_classes=..., positions=...)`` to
    provide its own replacement. A `tfembsize.layers.LadderEmbedding` becomes a
    `tfembsize.layers.CompressedLadderEmbedding` (each row at its rung's size, plus the maps
    and the normalisation's inference statistics; one size class per rung, so
    ``max_classes``, ``positions`` and ``scoring`` do not apply: its lookup is not a plain
    row, so items are scored from their lifted vectors). Otherwise PEP-style layers
    (``pruning_mask()``/``pruned_table()``) and prefix-size layers (``sizes``/
    ``masked_table()``) become a `CompressedEmbedding`.

    Args:
        layer: the searchable layer.
        scoring: store the slot -> row map (needed to score the whole table, i.e. for the
            item table of a retrieval model).
        max_classes: see `tfembsize.layers.compressed_embedding.pack_table`.
        positions: see `tfembsize.layers.compressed_embedding.pack_table`.

    Raises:
        CompressionError: the layer type is unknown.
    """
    hook = getattr(layer, "_tfembsize_compress", None)
    if callable(hook):
        return hook(scoring=scoring, max_classes=max_classes, positions=positions)
    if getattr(layer, "_tfembsize_ladder", False):
        return CompressedLadderEmbedding.from_layer(layer)
    if not _can_compress(layer):
        raise CompressionError(
            f"Layer '{layer.name}' ({type(layer).__name__}) is marked searchable but "
            "tfembsize does not know how to compress it: it exposes neither "
            "`pruning_mask()`/`pruned_table()` nor `sizes`/`masked_table()`, nor a "
            "`_tfembsize_compress()` hook."
        )
    return CompressedEmbedding.from_layer(
        layer, scoring=scoring, max_classes=max_classes, positions=positions
    )


def retrieval_table(model: Any, candidates: Mapping[str, Any]) -> str | None:
    """Name of the layer whose lookup *is* ``model.embed_items`` (checked on every item).

    For retrieval models (``embed_items``/``num_items``), the item table can then be scored
    directly in its compressed form. Returns None when no layer in ``candidates`` matches
    (e.g. the item tower transforms the embedding, or graph propagation mixes rows).
    """
    num_items = getattr(model, "num_items", None)
    if not callable(getattr(model, "embed_items", None)) or not isinstance(
        num_items, (int, np.integer)
    ):
        return None
    ids = tf.range(int(num_items), dtype=tf.int32)
    try:
        items = np.asarray(model.embed_items(ids))
    except Exception as err:  # noqa: BLE001 - an unusable protocol simply disables the path
        logger.info("embed_items(all ids) failed (%s); no direct item scoring.", err)
        return None
    for name, layer in candidates.items():
        if getattr(layer, "input_dim", None) != num_items:
            continue
        rows = np.asarray(layer(ids))
        if rows.shape == items.shape and np.array_equal(rows, items):
            return name
    return None


def compress(
    model: Any,
    *,
    max_classes: int | None = None,
    positions: str = "columns",
    scoring: Any = "auto",
) -> Any:
    """A copy of ``model`` whose searchable embedding layers are inference-only and small.

    Every searchable layer (`MaskedEmbedding`, `BudgetedEmbedding`, PEP layers,
    `LadderEmbedding`, layers with a ``_tfembsize_compress`` hook) is replaced by its
    `compress_layer` result, in nested, Functional, Sequential and subclassed models alike
    (see the module docstring for how subclassed models are rebuilt). The outputs of the new
    model equal the original's; the original model is left untouched.

    Args:
        model: a Keras model (or layer) holding searchable layers.
        max_classes: see `tfembsize.layers.compressed_embedding.pack_table` (None: no
            padding).
        positions: how unstructured (PEP) masks locate their non-zeros, see
            `tfembsize.layers.compressed_embedding.pack_table`.
        scoring: which tables store the slot -> row map for full-table top-k: ``"auto"``
            (the item table of a retrieval model, found with `retrieval_table`), ``True``
            (all), ``False`` (none) or an iterable of layer names.

    Returns:
        The compressed model.

    Raises:
        CompressionError: nothing to compress, an unknown searchable layer, or a model that
            cannot be rebuilt.

    Example:
        >>> small = compress(model)
        >>> np.allclose(small(ids), model(ids))
        True
    """
    found = searchable_layers(model)
    if not found:
        raise CompressionError(
            f"{type(model).__name__} '{getattr(model, 'name', '')}' holds no searchable "
            "embedding layer (MaskedEmbedding, BudgetedEmbedding, PEP...); nothing to compress."
        )
    for layer_name, layer in found.items():
        if not getattr(layer, "built", True):
            raise CompressionError(
                f"Layer '{layer_name}' ({type(layer).__name__}) has no weights yet: it was never "
                "called. Train the model (or call it once on a batch of ids) before "
                "compressing it, or start the model or tower that holds the layer with a "
                "keras.Input so that it is built when created."
            )
    unknown = [n for n, layer in found.items() if not _can_compress(layer)]
    if unknown:
        compress_layer(found[unknown[0]])  # raises the descriptive error
    if scoring == "auto":
        name = retrieval_table(model, found)
        scoring_names = {name} if name else set()
    elif scoring is True:
        scoring_names = set(found)
    elif scoring is False or scoring is None:
        scoring_names = set()
    elif isinstance(scoring, Iterable) and not isinstance(scoring, (str, bytes)):
        scoring_names = set(scoring)
        missing = scoring_names - set(found)
        if missing:
            raise CompressionError(
                f"`scoring` names layers that are not searchable layers of the model: "
                f"{sorted(missing)}. Searchable layers: {sorted(found)}"
            )
    else:
        raise CompressionError(
            "`scoring` must be 'auto', True, False or an iterable of layer names. "
            f"Received: scoring={scoring!r}"
        )
    compressed = {
        name: compress_layer(
            layer, scoring=name in scoring_names, max_classes=max_classes, positions=positions
        )
        for name, layer in found.items()
    }
    new = _Rebuilder(compressed).transform(model)
    left = searchable_layers(new)
    if left:
        raise CompressionError(
            f"compress() could not replace the searchable layers {sorted(left)} of "
            f"{type(model).__name__}: they are reachable through something other than "
            "attributes, lists, tuples or dicts of the model and its layers."
        )
    return new


# --------------------------------------------------------------------------------------------
# Rebuilding
# --------------------------------------------------------------------------------------------
def _is_functional(obj: Any) -> bool:
    cls = type(obj)
    return cls.__name__ in ("Functional", "Sequential") and cls.__module__.startswith(
        ("keras.", "tf_keras.")
    )


def _contains_searchable(obj: Any) -> bool:
    return is_searchable(obj) or any(is_searchable(layer) for layer in iter_layers(obj))


_SHARD = re.compile(r"^(.*)/part_(\d+)(:\d+)?$")


def _logical_weights(src: Any) -> list[np.ndarray]:
    """``src.get_weights()`` with the shards of a partitioned variable joined into one array.

    Under ``ParameterServerStrategy`` with a ``variable_partitioner``, tf-keras lists each
    shard (``<name>/part_<k>``, in row order) as a weight of its own; the rebuilt model has
    one unsharded variable per weight.
    """
    weights = src.get_weights()
    names = [str(getattr(v, "name", "")) for v in src.weights]
    if len(names) != len(weights) or not any(_SHARD.match(n) for n in names):
        return list(weights)
    out: list[np.ndarray] = []
    base_of_last = None
    for name, value in zip(names, weights, strict=True):
        match = _SHARD.match(name)
        base = match.group(1) if match else None
        if match is not None and base == base_of_last and int(match.group(2)) > 0:
            out[-1] = np.concatenate([out[-1], value])
        else:
            out.append(value)
        base_of_last = base
    return out


def _copy_weights(src: Any, dst: Any) -> None:
    try:
        weights = _logical_weights(src)
    except ValueError as err:  # tf-keras: a model that was never built
        raise CompressionError(
            f"Cannot copy the weights of {type(src).__name__} '{src.name}' ({err}). Call "
            "the model once on a batch before exporting, or start it with a keras.Input."
        ) from err
    if len(weights) != len(dst.weights) or any(
        tuple(w.shape) != tuple(v.shape) for w, v in zip(weights, dst.weights, strict=True)
    ):
        raise CompressionError(
            f"Rebuilding '{src.name}' ({type(src).__name__}) from its config gave different "
            f"weights ({len(dst.weights)} vs {len(weights)} in the original, or other "
            "shapes); its get_config()/build() does not reproduce the layer."
        )
    if weights:
        dst.set_weights(weights)


def _copy_runtime_state(src: Any, dst: Any) -> None:
    """Carries state that is neither config nor weights over to a rebuilt object.

    A class may implement ``_tfembsize_copy_state(self, source)`` to do this itself.
    Otherwise immutable tensors (``tf.Tensor``, ``tf.SparseTensor``, e.g. the interaction
    graph of LightGCN/NGCF) that the original holds where the rebuilt object holds None are
    shared with the rebuilt object.
    """
    hook = getattr(dst, "_tfembsize_copy_state", None)
    if callable(hook):
        hook(src)
        return
    for name, value in vars(src).items():
        if isinstance(value, (tf.Tensor, tf.SparseTensor)) and getattr(dst, name, 0) is None:
            object.__setattr__(dst, name, value)


class _Rebuilder:
    """Rebuilds models and layers with searchable layers substituted (one call of compress)."""

    def __init__(self, compressed: Mapping[str, Any]) -> None:
        self.compressed = compressed
        self.memo: dict[int, Any] = {}

    def transform(self, obj: Any) -> Any:
        if id(obj) in self.memo:
            return self.memo[id(obj)]
        if is_searchable(obj):
            out = self.compressed[obj.name]
        elif not _contains_searchable(obj):
            out = self._copy(obj)
        elif _is_functional(obj):
            out = self._clone_functional(obj)
        else:
            out = self._rebuild(obj)
        self.memo[id(obj)] = out
        return out

    # Plain copies -----------------------------------------------------------------------------
    def _copy(self, obj: Any) -> Any:
        if _is_functional(obj):
            new = keras.models.clone_model(obj)
            self._build_like(new, obj)
        else:
            new = self._from_config(obj)
            self._build_like(new, obj)
        _copy_weights(obj, new)
        return new

    def _from_config(self, obj: Any) -> Any:
        cls = type(obj)
        try:
            config = obj.get_config()
        except NotImplementedError as err:
            raise CompressionError(self._config_help(obj, err)) from err
        try:
            return cls.from_config(config)
        except Exception as err:  # noqa: BLE001 - any failure means "cannot rebuild"
            raise CompressionError(self._config_help(obj, err)) from err

    @staticmethod
    def _config_help(obj: Any, err: Exception) -> str:
        return (
            f"compress() rebuilds subclassed models and layers from their config, but "
            f"{type(obj).__name__} '{obj.name}' could not be rebuilt with "
            f"`{type(obj).__name__}.from_config(obj.get_config())` "
            f"({type(err).__name__}: {str(err).strip().splitlines()[0] if str(err) else ''}). "
            "Implement get_config() returning the constructor arguments (serialise layer "
            "arguments with keras.saving.serialize_keras_object) and, if needed, from_config(); "
            "or construct the serving model yourself with "
            "tfembsize.export.compress_layer(layer) for each searchable layer."
        )

    @staticmethod
    def _build_like(new: Any, old: Any) -> None:
        if (
            not getattr(old, "built", False)
            or getattr(new, "built", False)
            and len(new.weights) == len(old.weights)
        ):
            return
        get_cfg = getattr(old, "get_build_config", None)
        config = get_cfg() if callable(get_cfg) else None
        if config:
            try:
                new.build_from_config(config)
            except Exception as err:  # noqa: BLE001
                raise CompressionError(
                    f"Could not build the rebuilt {type(old).__name__} '{old.name}' from its "
                    f"build config {config!r}: {type(err).__name__}: {err}"
                ) from err

    # Functional / Sequential ------------------------------------------------------------------
    def _clone_functional(self, model: Any) -> Any:
        pairs: list[tuple[Any, Any]] = []

        def clone_fn(layer: Any) -> Any:
            if is_searchable(layer) or _contains_searchable(layer):
                return self.transform(layer)
            if _is_functional(layer) or isinstance(layer, keras.Model):
                return self.transform(layer)  # copied with its weights
            new = layer.__class__.from_config(layer.get_config())
            pairs.append((layer, new))
            return new

        new_model = keras.models.clone_model(model, clone_function=clone_fn)
        self._build_like(new_model, model)
        for old, new in pairs:
            _copy_weights(old, new)
        return new_model

    # Subclassed -------------------------------------------------------------------------------
    def _rebuild(self, obj: Any) -> Any:
        new = self._from_config(obj)
        self._build_like(new, obj)
        _copy_weights(obj, new)
        _copy_runtime_state(obj, new)
        self._substitute(new)
        return new

    def _substitute(self, obj: Any) -> None:
        """Points every attribute of the freshly rebuilt ``obj`` at compressed layers."""
        replaced: list[Any] = []
        for name, value in list(vars(obj).items()):
            if name in _INTERNAL_ATTRS or name.startswith("_self_"):
                continue
            new_value = self._replace(value, replaced)
            if new_value is not value:
                self._set_attr(obj, name, new_value)
        if replaced and not is_legacy_keras():
            self._untrack_keras3(obj, replaced)

    def _replace(self, value: Any, replaced: list[Any]) -> Any:
        if isinstance(value, keras.layers.Layer):
            if is_searchable(value):
                replaced.append(value)
                return self.compressed[value.name]
            if _contains_searchable(value):
                if _is_functional(value):
                    replaced.append(value)
                    return self._clone_functional(value)
                self._substitute(value)  # a fresh sub-object of the rebuilt model
            return value
        if isinstance(value, (list, tuple)) and not isinstance(value, (str, bytes)):
            items = [self._replace(v, replaced) for v in value]
            if all(a is b for a, b in zip(items, value, strict=True)):
                return value
            if isinstance(value, tuple) and hasattr(value, "_fields"):
                return type(value)(*items)
            return tuple(items) if isinstance(value, tuple) else list(items)
        if isinstance(value, Mapping):
            mapped = {k: self._replace(v, replaced) for k, v in value.items()}
            if all(mapped[k] is value[k] for k in value):
                return value
            return dict(mapped)
        return value

    @staticmethod
    def _set_attr(obj: Any, name: str, value: Any) -> None:
        tracker: Any = getattr(obj, "_tracker", None)  # Keras' private attribute tracker
        locked = bool(getattr(tracker, "locked", False))
        if locked:
            tracker.unlock()
        try:
            setattr(obj, name, value)
        finally:
            if locked:
                tracker.lock()

    @staticmethod
    def _untrack_keras3(obj: Any, replaced: list[Any]) -> None:
        """Drops replaced layers from Keras 3's layer store unless still referenced."""
        still = set()
        for name, value in vars(obj).items():
            if name in _INTERNAL_ATTRS or name.startswith("_self_"):
                continue
            for leaf in (
                tf.nest.flatten(value) if isinstance(value, (list, tuple, dict)) else [value]
            ):
                still.add(id(leaf))
        tracker = getattr(obj, "_tracker", None)
        if tracker is None:
            return
        for old in replaced:
            if id(old) not in still:
                tracker.untrack(old)
