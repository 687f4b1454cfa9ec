"""The contract every Embedding-like layer of tfembsize keeps, as checks you can run on yours.

A layer that replaces ``keras.layers.Embedding`` must pass Keras's own layer tests, survive
``get_config``/``from_config`` and ``model.save``/``load_model`` unchanged, produce the padding
mask ``Embedding`` produces, and reject every id outside ``[0, input_dim)`` with its own error,
eagerly, inside ``tf.function`` and under ``model.fit`` alike, while accepting ``0`` and
``input_dim - 1``. The checks below test exactly that, in whichever Keras TensorFlow resolved:

* `check_keras_layer_test`: Keras's own harness, ``keras.src.testing.TestCase.run_layer_test``
  under Keras 3 (serialization, build, symbolic and eager calls, a training step,
  mixed precision) or ``tf_keras.src.testing_infra.test_utils.layer_test`` under tf-keras
  (functional and Sequential models, shape inference, config round trips, a training step);
* `check_config_round_trip`: ``get_config()`` holds every constructor argument given, and
  ``from_config(get_config())`` gives the same config (JSON-ready) and, with the same
  weights, the same outputs; so does ``keras.layers.deserialize``;
* `check_save_load`: a model holding the layer saves and loads with equal config, weights and
  predictions (``.keras`` under Keras 3; SavedModel, ``.h5`` and ``.keras`` under tf-keras);
* `check_mask_zero`: with ``mask_zero=True`` the mask is ``ids != 0`` eagerly and on symbolic
  inputs and reaches the next layer of a functional model; with ``mask_zero=False`` there is
  none;
* `check_id_boundary`: ids ``input_dim`` and ``-1`` raise the layer's own out-of-range error
  (by default the message of `tfembsize.layers.ids_out_of_range_message`, which
  `tfembsize.layers.check_ids_in_range` raises) eagerly, in a ``tf.function`` and under
  ``model.fit``, for int32 and int64 ids (and so does the int64 id ``2**32``, which a cast
  to int32 would turn into the valid id 0), while ids ``0`` and ``input_dim - 1`` pass.

`check_layer_contract` runs all five; `LayerContract` is a pytest mixin with one test per
check. Every check builds its layers from ``layer_cls(**init_kwargs)``; the optional
``prepare(layer)`` callback puts a built layer into a non-trivial state (sizes, masks, packed
arrays) before its outputs are compared. Failures raise ``AssertionError`` (Keras's harness
may also raise the error of the call it ran).

Example:
    A layer of your own, here a `MaskedEmbedding` that doubles its output, checked with the
    same function the tests of tfembsize run:

    >>> import numpy as np
    >>> from tfembsize._keras import keras
    >>> from tfembsize.layers import MaskedEmbedding
    >>> from tfembsize.testing import check_layer_contract
    >>> @keras.utils.register_keras_serializable(package="my_project")
    ... class DoubledEmbedding(MaskedEmbedding):
    ...     def call(self, inputs):
    ...         return 2.0 * super().call(inputs)
    >>> check_layer_contract(
    ...     DoubledEmbedding,
    ...     {"input_dim": 10, "output_dim": 4},
    ...     input_data=np.array([[0, 3, 9], [1, 2, 0]], dtype="int32"),
    ...     prepare=lambda layer: layer.assign_sizes(np.arange(10) % 4 + 1),
    ... )

    Or as a pytest class (one test per check)::

        from tfembsize.testing import LayerContract

        class TestDoubledEmbedding(LayerContract):
            layer_cls = DoubledEmbedding
            init_kwargs = {"input_dim": 10, "output_dim": 4}

            def prepare(self, layer):
                layer.assign_sizes(np.arange(10) % 4 + 1)
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import inspect
import io
import json
import logging
import re
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from tfembsize._keras import is_legacy_keras, keras
from tfembsize.layers.utils import ids_out_of_range_message

__all__ = [
    "check_layer_contract",
    "check_keras_layer_test",
    "check_config_round_trip",
    "check_save_load",
    "check_mask_zero",
    "check_id_boundary",
    "default_input_data",
    "default_save_formats",
    "out_of_range_pattern",
    "LayerContract",
]

logger = logging.getLogger(__name__)

Prepare = Callable[[Any], None] | None


# Helpers -------------------------------------------------------------------------------------
def _keras_package() -> str:
    """Top-level package of the Keras that TensorFlow resolved (``keras`` or ``tf_keras``)."""
    return keras.layers.Layer.__module__.split(".")[0]


def default_input_data(input_dim: int) -> np.ndarray:
    """Int32 ids ``[2, 3]`` holding ``0``, ``input_dim - 1`` and ids in between."""
    if isinstance(input_dim, bool) or not isinstance(input_dim, (int, np.integer)) or input_dim < 1:
        raise ValueError(
            f"`input_dim` must be a positive integer. Received: input_dim={input_dim!r}"
        )
    n = int(input_dim)
    ids = [[0, n // 2, n - 1], [min(1, n - 1), n - 1, 0]]
    return np.asarray(ids, dtype=np.int32)


def default_save_formats() -> tuple[str, ...]:
    """``(".keras",)`` under Keras 3; ``("savedmodel", ".h5", ".keras")`` under tf-keras."""
    if is_legacy_keras():
        return ("savedmodel", ".h5", ".keras")
    return (".keras",)


def out_of_range_pattern(layer: Any, input_dim: int, bad_id: int) -> str:
    """Regex of the error tfembsize's layers raise for ``bad_id`` (eagerly or in a graph).

    Eagerly the message ends with the id; in a graph ``tf.debugging.Assert`` prints the id
    after the message, inside brackets.
    """
    head = re.escape(ids_out_of_range_message(layer.name, input_dim))
    return rf"{head}\W*{re.escape(str(bad_id))}(?!\d)"


def _input_dim(layer_cls: type, init_kwargs: dict, input_dim: int | None) -> int:
    if input_dim is not None:
        return int(input_dim)
    if "input_dim" in init_kwargs:
        return int(init_kwargs["input_dim"])
    layer = layer_cls(**init_kwargs)
    value = getattr(layer, "input_dim", None)
    if value is None:
        raise ValueError(
            f"Cannot tell the number of rows of {layer_cls.__name__}: pass `input_dim`. "
            f"Received: init_kwargs={init_kwargs!r}"
        )
    return int(value)


def _ids(layer_cls: type, init_kwargs: dict, input_data: Any) -> np.ndarray:
    if input_data is None:
        return default_input_data(_input_dim(layer_cls, init_kwargs, None))
    ids = np.asarray(input_data)
    if ids.dtype.kind not in "iu" or ids.ndim < 1 or ids.size == 0:
        raise ValueError(
            "`input_data` must be a non-empty integer array with a batch axis. Received "
            f"shape {ids.shape}, dtype {ids.dtype}."
        )
    return ids


def _built(layer_cls: type, init_kwargs: dict, ids: np.ndarray, prepare: Prepare) -> Any:
    """A new layer, called once on ``ids`` (so it is built), then ``prepare``d."""
    layer = layer_cls(**init_kwargs)
    layer(tf.constant(ids))
    if prepare is not None:
        prepare(layer)
    return layer


def _functional(layer: Any, ids: np.ndarray, dtype: Any = None) -> Any:
    inp = keras.Input(shape=ids.shape[1:], dtype=dtype or ids.dtype.name)
    return keras.Model(inp, layer(inp))


def _numpy(x: Any) -> np.ndarray:
    if isinstance(x, tf.RaggedTensor):
        return x.to_tensor().numpy()
    return np.asarray(x.numpy() if hasattr(x, "numpy") else x)


def _assert_weights_equal(got: Sequence, want: Sequence, what: str) -> None:
    if len(got) != len(want):
        raise AssertionError(f"{what}: {len(got)} weights, expected {len(want)}.")
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        g, w = np.asarray(g), np.asarray(w)
        if g.shape != w.shape or not np.array_equal(g, w):
            raise AssertionError(f"{what}: weight {i} differs (shape {g.shape} vs {w.shape}).")


def _assert_outputs_equal(got: Any, want: Any, what: str) -> None:
    g, w = _numpy(got), _numpy(want)
    if g.shape != w.shape or not np.array_equal(g, w):
        raise AssertionError(f"{what}: outputs differ.\n got: {g!r}\nwant: {w!r}")


def _takes_mask_zero(layer_cls: type, init_kwargs: dict) -> bool:
    """Whether the layer takes ``mask_zero`` (it names it in its signature or its config)."""
    if "mask_zero" in inspect.signature(layer_cls).parameters:
        return True
    return "mask_zero" in layer_cls(**init_kwargs).get_config()


# Keras's own harness -------------------------------------------------------------------------
def check_keras_layer_test(
    layer_cls: type,
    init_kwargs: dict,
    *,
    input_data: Any = None,
    run_training_check: bool = True,
    custom_objects: dict | None = None,
) -> None:
    """Runs Keras's own layer-test harness on ``layer_cls(**init_kwargs)``.

    Under Keras 3 this is ``keras.src.testing.TestCase.run_layer_test`` (serialization, build,
    symbolic and eager calls, a training step with ``model.fit``, mixed precision); under
    tf-keras ``tf_keras.src.testing_infra.test_utils.layer_test`` (functional and Sequential
    models, shape inference, config round trips, a training step). Both are told the expected
    output shape (``input_data.shape + (output_dim,)``) and dtype, and whether the layer
    supports masking (``mask_zero``); under Keras 3 also the mask's shape.

    Args:
        layer_cls: the layer class.
        init_kwargs: constructor arguments.
        input_data: integer ids (default: `default_input_data`).
        run_training_check: whether the harness trains the layer for a step.
        custom_objects: passed to Keras's deserialisation (registered classes need none).

    Raises:
        AssertionError: a check of the harness failed.
    """
    ids = _ids(layer_cls, init_kwargs, input_data)
    probe = layer_cls(**init_kwargs)
    mask_zero = bool(getattr(probe, "mask_zero", False))
    out_dim = int(probe.output_dim)
    dtype = tf.as_dtype(probe.compute_dtype).name
    package = _keras_package()
    if is_legacy_keras():
        test_utils = importlib.import_module(f"{package}.src.testing_infra.test_utils")
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):  # its predict() calls print progress bars
            test_utils.layer_test(
                layer_cls,
                kwargs=dict(init_kwargs),
                input_data=ids,
                expected_output_dtype=dtype,
                expected_output_shape=(None, *ids.shape[1:], out_dim),
                validate_training=run_training_check,
                custom_objects=custom_objects,
                supports_masking=mask_zero,
            )
        logger.debug("tf-keras layer_test printed: %s", printed.getvalue())
        return
    test_case = importlib.import_module(f"{package}.src.testing.test_case")
    harness = test_case.TestCase()
    harness.run_layer_test(
        layer_cls,
        dict(init_kwargs),
        input_data=tf.constant(ids),
        expected_output_shape=(*ids.shape, out_dim),
        expected_output_dtype=dtype,
        supports_masking=mask_zero,
        expected_mask_shape=tuple(ids.shape) if mask_zero else None,
        custom_objects=custom_objects,
        run_training_check=run_training_check,
    )


# Config ---------------------------------------------------------------------------------------
def check_config_round_trip(
    layer_cls: type,
    init_kwargs: dict,
    *,
    input_data: Any = None,
    prepare: Prepare = None,
) -> None:
    """``from_config(get_config())`` rebuilds the same layer; so does Keras deserialisation.

    The config must hold every argument of ``init_kwargs``, be JSON-serialisable and survive
    the round trip unchanged; the rebuilt layer must be of the same class and, with the
    original's weights, return the same outputs for ``input_data``.

    Args:
        layer_cls: the layer class.
        init_kwargs: constructor arguments.
        input_data: integer ids (default: `default_input_data`).
        prepare: optional ``prepare(layer)`` run on the built original.

    Raises:
        AssertionError: an argument is missing, or the config, the class or the outputs
            differ.
    """
    ids = _ids(layer_cls, init_kwargs, input_data)
    layer = _built(layer_cls, init_kwargs, ids, prepare)
    config = layer.get_config()
    try:
        text = json.dumps(config, sort_keys=True)
    except TypeError as err:
        raise AssertionError(f"{layer_cls.__name__}.get_config() is not JSON: {err}") from err
    missing = sorted(set(init_kwargs) - set(config))
    if missing:
        raise AssertionError(
            f"{layer_cls.__name__}.get_config() lacks the constructor arguments {missing}."
        )
    want = layer(tf.constant(ids))
    revived = {
        "from_config": getattr(layer_cls, "from_config")(json.loads(text)),  # noqa: B009
        "keras.layers.deserialize": keras.layers.deserialize(
            json.loads(json.dumps(keras.layers.serialize(layer)))
        ),
    }
    for how, clone in revived.items():
        if type(clone) is not type(layer):
            raise AssertionError(
                f"{how} gave a {type(clone).__name__}, expected {type(layer).__name__}."
            )
        if clone.get_config() != config:
            raise AssertionError(
                f"{how}: the config changed.\n got: {clone.get_config()!r}\nwant: {config!r}"
            )
        clone(tf.constant(ids))
        clone.set_weights(layer.get_weights())
        _assert_outputs_equal(clone(tf.constant(ids)), want, f"{how} with the same weights")


# Saving ----------------------------------------------------------------------------------------
def check_save_load(
    layer_cls: type,
    init_kwargs: dict,
    *,
    input_data: Any = None,
    prepare: Prepare = None,
    formats: Sequence[str] | None = None,
    directory: str | Path | None = None,
) -> None:
    """A functional model holding the layer saves and loads with nothing changed.

    For each format, ``model.save`` then ``keras.models.load_model`` must give a layer of the
    same class (found by name) with the same config and weights, and the same predictions.

    Args:
        layer_cls: the layer class.
        init_kwargs: constructor arguments.
        input_data: integer ids (default: `default_input_data`).
        prepare: optional ``prepare(layer)`` run on the built layer before saving.
        formats: ``".keras"``, ``".h5"`` or ``"savedmodel"`` (tf-keras); default
            `default_save_formats`.
        directory: where to write (default: a temporary directory, removed afterwards).

    Raises:
        AssertionError: something differs after loading.
    """
    ids = _ids(layer_cls, init_kwargs, input_data)
    formats = tuple(default_save_formats() if formats is None else formats)
    for fmt in formats:
        if fmt not in (".keras", ".h5", "savedmodel"):
            raise ValueError(
                f'`formats` may hold ".keras", ".h5" and "savedmodel". Received: {fmt!r}'
            )
        if fmt == "savedmodel" and not is_legacy_keras():
            raise ValueError(
                '`formats` may not hold "savedmodel" under Keras 3, whose load_model cannot '
                f"read a SavedModel. Received: formats={formats!r}"
            )
    layer = layer_cls(**init_kwargs)
    model = _functional(layer, ids)
    if prepare is not None:
        prepare(layer)
    want = model.predict(ids, verbose=0)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(directory) if directory is not None else Path(tmp)
        for fmt in formats:
            path = root / ("model_savedmodel" if fmt == "savedmodel" else f"model{fmt}")
            model.save(str(path))
            loaded = keras.models.load_model(str(path))
            new = loaded.get_layer(layer.name)
            what = f"{layer_cls.__name__} saved as {fmt}"
            if type(new) is not type(layer):
                raise AssertionError(f"{what}: loaded a {type(new).__name__}.")
            if new.get_config() != layer.get_config():
                raise AssertionError(
                    f"{what}: the config changed.\n got: {new.get_config()!r}\n"
                    f"want: {layer.get_config()!r}"
                )
            _assert_weights_equal(new.get_weights(), layer.get_weights(), what)
            _assert_outputs_equal(loaded.predict(ids, verbose=0), want, what)


# Masking ----------------------------------------------------------------------------------------
class _MaskEcho(keras.layers.Layer):
    """Returns the mask it receives (as float, one value per id), or -1 without a mask."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.supports_masking = True

    def call(self, inputs: Any, mask: Any = None) -> Any:
        if mask is None:
            return -tf.ones_like(inputs[..., 0])
        return tf.cast(mask, inputs.dtype)

    def compute_mask(self, inputs: Any, mask: Any = None) -> Any:
        return None

    def compute_output_shape(self, input_shape: Any) -> Any:
        return tuple(input_shape)[:-1]


def check_mask_zero(
    layer_cls: type,
    init_kwargs: dict,
    *,
    input_data: Any = None,
    prepare: Prepare = None,
) -> None:
    """``mask_zero`` behaves as in ``Embedding`` (both settings, if the layer takes it).

    With ``mask_zero=True``: ``supports_masking`` is True, ``compute_mask(ids)`` is
    ``ids != 0`` for eager ids, a symbolic call on ``keras.Input`` works and carries a boolean
    mask of the input's shape, and in a functional model the next layer receives
    ``ids != 0``. With ``mask_zero=False``: no mask anywhere. The ids are ``input_data`` with
    its first entry set to 0 (padding).

    Raises:
        AssertionError: a mask is wrong, missing or unexpected.
    """
    ids = _ids(layer_cls, init_kwargs, input_data).copy()
    ids.flat[0] = 0
    settings = (False, True) if _takes_mask_zero(layer_cls, init_kwargs) else (None,)
    for mask_zero in settings:
        kwargs = dict(init_kwargs) if mask_zero is None else {**init_kwargs, "mask_zero": mask_zero}
        layer = _built(layer_cls, kwargs, ids, prepare)
        expect = bool(getattr(layer, "mask_zero", False))
        what = f"{layer_cls.__name__}(mask_zero={expect})"
        if bool(layer.supports_masking) != expect:
            raise AssertionError(f"{what}: supports_masking is {layer.supports_masking}.")
        eager = layer.compute_mask(tf.constant(ids))
        if not expect:
            if eager is not None:
                raise AssertionError(f"{what}: compute_mask returned a mask.")
        elif eager is None or not np.array_equal(_numpy(eager), ids != 0):
            raise AssertionError(f"{what}: compute_mask(ids) is not ids != 0: {eager!r}")
        inp = keras.Input(shape=ids.shape[1:], dtype=ids.dtype.name)
        out = layer(inp)  # the symbolic call Keras 3 makes for functional models
        sym = getattr(out, "_keras_mask", None)
        if not expect:
            if sym is not None:
                raise AssertionError(f"{what}: the symbolic output carries a mask.")
        else:
            if sym is None:
                raise AssertionError(f"{what}: the symbolic output carries no mask.")
            if tuple(sym.shape) != (None, *ids.shape[1:]) or tf.as_dtype(sym.dtype) != tf.bool:
                raise AssertionError(
                    f"{what}: symbolic mask of shape {tuple(sym.shape)} and dtype {sym.dtype}."
                )
        model = keras.Model(inp, _MaskEcho()(out))
        got = np.asarray(model.predict(ids, verbose=0))
        want = (ids != 0).astype(got.dtype) if expect else -np.ones(ids.shape, got.dtype)
        if got.shape != want.shape or not np.array_equal(got, want):
            raise AssertionError(f"{what}: the next layer received the mask {got!r}.")


# Id boundary ------------------------------------------------------------------------------------
def _with_id(ids: np.ndarray, value: int, dtype: Any) -> np.ndarray:
    out = ids.astype(dtype)
    out.flat[-1] = value
    return out


def _expect_error(
    run: Callable[..., Any],
    args: tuple[Any, ...],
    error: type[BaseException] | tuple[type[BaseException], ...],
    pattern: str,
    what: str,
) -> None:
    try:
        run(*args)
    except error as err:
        if not re.search(pattern, str(err)):
            raise AssertionError(
                f"{what}: raised {type(err).__name__} without the layer's own out-of-range "
                f"message (pattern {pattern!r}): {err}"
            ) from err
        return
    raise AssertionError(f"{what}: accepted without an error.")


def _expect_ok(run: Callable[..., Any], args: tuple, what: str) -> Any:
    try:
        return run(*args)
    except Exception as err:
        raise AssertionError(f"{what}: raised {type(err).__name__}: {err}") from err


def _call_eagerly(layer: Any, ids: np.ndarray) -> Any:
    return layer(tf.constant(ids))


def _traced(layer: Any, rank: int, dtype: Any) -> Callable[[np.ndarray], Any]:
    """``layer`` in a ``tf.function`` traced once for ids of any shape of that rank."""
    graph_fn = tf.function(layer.__call__, input_signature=[tf.TensorSpec([None] * rank, dtype)])
    return lambda ids: graph_fn(tf.constant(ids))


def _fit(layer: Any, ids: np.ndarray) -> None:
    model = _functional(layer, ids)
    kwargs = {} if is_legacy_keras() else {"jit_compile": False}  # XLA drops the check
    model.compile(optimizer="sgd", loss="mse", **kwargs)
    target = np.zeros((*ids.shape, int(layer.output_dim)), np.float32)
    model.fit(ids, target, batch_size=len(ids), epochs=1, verbose=0)


def check_id_boundary(
    layer_cls: type,
    init_kwargs: dict,
    *,
    input_data: Any = None,
    prepare: Prepare = None,
    input_dim: int | None = None,
    dtypes: Sequence[str] = ("int32", "int64"),
    error: type = tf.errors.InvalidArgumentError,
    pattern: Callable[[Any, int, int], str] = out_of_range_pattern,
) -> None:
    """Ids ``input_dim`` and ``-1`` raise the layer's error; ``0`` and ``input_dim - 1`` pass.

    Each is tried eagerly, in a ``tf.function`` traced once for ids of any shape, and under
    ``model.fit`` of a functional model (compiled without XLA, which drops run-time checks),
    for every dtype in ``dtypes``; int64 ids also try ``2**32``, which a cast to int32 before
    the check would turn into the valid id 0. The ids are ``input_data`` with its last entry
    replaced.
    An error of the right type with another message (for example the CPU gather's own
    complaint) does not count: the layer must notice the id itself.

    Args:
        layer_cls: the layer class.
        init_kwargs: constructor arguments.
        input_data: integer ids (default: `default_input_data`).
        prepare: optional ``prepare(layer)`` run on the built layer.
        input_dim: rows of the table (default: ``init_kwargs["input_dim"]`` or the layer's
            ``input_dim`` attribute).
        dtypes: id dtypes to try.
        error: the exception type of an out-of-range id.
        pattern: ``pattern(layer, input_dim, bad_id)``, a regex the error message must match
            (default: `out_of_range_pattern`, the message of tfembsize's layers).

    Raises:
        AssertionError: an out-of-range id was accepted or gave the wrong error, or a valid
            id was rejected.
    """
    ids = _ids(layer_cls, init_kwargs, input_data)
    n = _input_dim(layer_cls, init_kwargs, input_dim)
    layer = _built(layer_cls, init_kwargs, ids, prepare)
    name = layer_cls.__name__
    for dtype in dtypes:
        runners: dict[str, Callable[..., Any]] = {
            "eagerly": functools.partial(_call_eagerly, layer),
            "in a tf.function": _traced(layer, ids.ndim, tf.as_dtype(dtype)),
            "under model.fit": functools.partial(_fit, layer),
        }
        for where, run in runners.items():
            good = _with_id(ids, n - 1, dtype)
            good.flat[0] = 0
            out = _expect_ok(run, (good,), f"{name} {where}: {dtype} ids 0 and {n - 1}")
            if where != "under model.fit":
                _assert_outputs_equal(out, layer(tf.constant(good)), f"{name} {where}")
            # An int64 id of 2**32 wraps to the valid id 0 if the layer casts before checking.
            for bad in (n, -1, *((2**32,) if dtype == "int64" else ())):
                _expect_error(
                    run,
                    (_with_id(ids, bad, dtype),),
                    error,
                    pattern(layer, n, bad),
                    f"{name} {where}: {dtype} id {bad} (input_dim={n})",
                )


# Everything --------------------------------------------------------------------------------------
def check_layer_contract(
    layer_cls: type,
    init_kwargs: dict,
    *,
    input_data: Any = None,
    prepare: Prepare = None,
    run_training_check: bool = True,
    save_formats: Sequence[str] | None = None,
    custom_objects: dict | None = None,
) -> None:
    """Runs every check of the contract on ``layer_cls(**init_kwargs)``.

    In order: `check_keras_layer_test`, `check_config_round_trip`, `check_save_load`,
    `check_mask_zero` and `check_id_boundary` (see each for what it asserts).

    Args:
        layer_cls: the layer class (registered as Keras-serializable).
        init_kwargs: constructor arguments.
        input_data: integer ids with a batch axis (default: `default_input_data`).
        prepare: optional ``prepare(layer)`` that puts a built layer into the state to test.
        run_training_check: whether Keras's harness trains the layer for a step (False for
            inference-only layers whose training is not meaningful).
        save_formats: see `check_save_load`.
        custom_objects: see `check_keras_layer_test`.

    Raises:
        AssertionError: the first check that failed.
    """
    check_keras_layer_test(
        layer_cls,
        init_kwargs,
        input_data=input_data,
        run_training_check=run_training_check,
        custom_objects=custom_objects,
    )
    check_config_round_trip(layer_cls, init_kwargs, input_data=input_data, prepare=prepare)
    check_save_load(
        layer_cls, init_kwargs, input_data=input_data, prepare=prepare, formats=save_formats
    )
    check_mask_zero(layer_cls, init_kwargs, input_data=input_data, prepare=prepare)
    check_id_boundary(layer_cls, init_kwargs, input_data=input_data, prepare=prepare)


class LayerContract:
    """pytest mixin: one test per contract check for ``layer_cls(**init_kwargs)``.

    Subclass it in a class whose name starts with ``Test`` and set the class attributes;
    override `prepare` to put each built layer into a non-trivial state. See the module
    docstring for an example.

    Attributes:
        layer_cls: the layer class under test.
        init_kwargs: its constructor arguments.
        input_data: integer ids with a batch axis, or None for `default_input_data`.
        run_training_check: whether Keras's harness trains the layer for a step.
        save_formats: formats of `check_save_load`, or None for `default_save_formats`.
    """

    layer_cls: type | None = None
    init_kwargs: dict = {}
    input_data: Any = None
    run_training_check: bool = True
    save_formats: Sequence[str] | None = None

    def prepare(self, layer: Any) -> None:
        """Puts a built layer into the state under test (default: leaves it as built)."""

    def _args(self) -> tuple[type, dict]:
        if self.layer_cls is None:
            raise TypeError(f"{type(self).__name__} must set `layer_cls`.")
        return self.layer_cls, dict(self.init_kwargs)

    def test_keras_layer_test(self) -> None:
        """Keras's own layer-test harness passes."""
        check_keras_layer_test(
            *self._args(), input_data=self.input_data, run_training_check=self.run_training_check
        )

    def test_config_round_trip(self) -> None:
        """``from_config(get_config())`` rebuilds the same layer."""
        check_config_round_trip(*self._args(), input_data=self.input_data, prepare=self.prepare)

    def test_save_load(self, tmp_path: Path) -> None:
        """``model.save`` / ``load_model`` keep config, weights and predictions."""
        check_save_load(
            *self._args(),
            input_data=self.input_data,
            prepare=self.prepare,
            formats=self.save_formats,
            directory=tmp_path,
        )

    def test_mask_zero(self) -> None:
        """``mask_zero`` behaves as in ``Embedding``."""
        check_mask_zero(*self._args(), input_data=self.input_data, prepare=self.prepare)

    def test_id_boundary(self) -> None:
        """Ids ``input_dim`` and ``-1`` raise the layer's error; ``0``, ``input_dim - 1`` pass."""
        check_id_boundary(*self._args(), input_data=self.input_data, prepare=self.prepare)
