"""MaskedEmbedding: lookups, gradients, regularisation, errors, models, compilation, save/load."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import tensorflow as tf

from tfembsize._keras import is_legacy_keras, keras
from tfembsize.layers import MaskedEmbedding

# A 4 x 3 table 0..11 and sizes [3, 2, 1, 1]: the masked table is
#   [[0, 1, 2], [3, 4, 0], [6, 0, 0], [9, 0, 0]].
TABLE = np.arange(12, dtype=np.float32).reshape(4, 3)
SIZES = [3, 2, 1, 1]
MASKED = np.array([[0, 1, 2], [3, 4, 0], [6, 0, 0], [9, 0, 0]], dtype=np.float32)


def make_layer(sizes=SIZES, **kwargs) -> MaskedEmbedding:
    kwargs.setdefault("name", "m")
    layer = MaskedEmbedding(
        4, 3, embeddings_initializer=keras.initializers.Constant(TABLE), **kwargs
    )
    if sizes is not None:
        layer.assign_sizes(sizes)
    return layer


# Lookups ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ids",
    [
        2,
        [1, 0, 3],
        [[1, 2], [0, 1]],
        [[[3, 1], [0, 0]], [[2, 2], [1, 3]]],
    ],
    ids=["rank0", "rank1", "rank2", "rank3"],
)
def test_lookup_hand_computed(ids):
    layer = make_layer()
    out = layer(tf.constant(ids))
    np.testing.assert_array_equal(out.numpy(), MASKED[np.array(ids)])
    assert out.shape == (*np.shape(ids), 3)
    assert out.dtype == tf.float32


def test_defaults_keep_full_rows_like_embedding():
    layer = make_layer(sizes=None)
    assert layer.sizes.tolist() == [3, 3, 3, 3]
    assert layer.initial_sizes().tolist() == [3, 3, 3, 3]
    assert layer.usable_params() == 12
    ids = tf.constant([[3, 0], [1, 2]])
    plain = keras.layers.Embedding(4, 3, embeddings_initializer=keras.initializers.Constant(TABLE))
    np.testing.assert_array_equal(layer(ids).numpy(), plain(ids).numpy())


def test_id_dtypes_and_ragged_input():
    layer = make_layer()
    for dtype in (tf.int32, tf.int64, tf.float32, tf.uint8):
        out = layer(tf.constant([1, 2], dtype=dtype))
        np.testing.assert_array_equal(out.numpy(), MASKED[[1, 2]])
    ragged = tf.ragged.constant([[1, 2], [3]])
    out = layer(ragged)
    assert isinstance(out, tf.RaggedTensor)
    np.testing.assert_array_equal(out.flat_values.numpy(), MASKED[[1, 2, 3]])
    np.testing.assert_array_equal(out.row_lengths().numpy(), [2, 1])


def test_size_api_hand_computed():
    layer = make_layer()
    assert layer.usable_params() == 7
    sizes = layer.sizes
    assert sizes.dtype == np.int32 and sizes.tolist() == SIZES
    sizes[0] = 1  # a copy
    assert layer.sizes.tolist() == SIZES
    np.testing.assert_array_equal(
        layer.full_mask().numpy(), [[1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 0, 0]]
    )
    assert layer.full_mask(tf.bool).dtype == tf.bool
    np.testing.assert_array_equal(layer.masked_table().numpy(), MASKED)
    var = layer.sizes_variable
    assert var.dtype == tf.int32 and not var.trainable
    assert [w.name.split("/")[-1].split(":")[0] for w in layer.trainable_weights] == ["embeddings"]
    assert [w.name.split("/")[-1].split(":")[0] for w in layer.non_trainable_weights] == ["sizes"]
    # the table itself is untouched: masking happens at lookup
    np.testing.assert_array_equal(layer.embeddings.numpy(), TABLE)
    layer.assign_sizes(np.array([1, 3, 3, 2], dtype=np.int64))
    np.testing.assert_array_equal(layer(tf.constant([1, 3])).numpy(), [[3, 4, 5], [9, 10, 0]])


def test_mask_zero_and_output_shape():
    layer = make_layer(mask_zero=True)
    ids = tf.constant([[0, 1], [2, 0]])
    np.testing.assert_array_equal(layer.compute_mask(ids).numpy(), [[False, True], [True, False]])
    assert layer.supports_masking
    assert make_layer().compute_mask(ids) is None
    assert tuple(layer.compute_output_shape((2, 5))) == (2, 5, 3)


def test_mixed_precision_output():
    layer = make_layer(dtype="mixed_float16")
    out = layer(tf.constant([0, 1]))
    assert out.dtype == tf.float16
    assert layer.embeddings.dtype == tf.float32
    np.testing.assert_array_equal(out.numpy(), MASKED[[0, 1]].astype(np.float16))


# Gradients and regularisation ------------------------------------------------------------------


def test_gradient_is_zero_on_masked_coordinates():
    layer = make_layer()
    ids = tf.constant([[1, 1], [2, 0]])
    w = tf.constant(np.arange(1, 13, dtype=np.float32).reshape(2, 2, 3))
    layer.build(None)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(layer(ids) * w)
    grad = tf.convert_to_tensor(tape.gradient(loss, layer.embeddings))
    # row 1 is looked up twice (w[0,0] + w[0,1]), row 2 once (w[1,0]), row 0 once (w[1,1]);
    # row 3 never; masked coordinates get exactly zero.
    expected = np.array(
        [[10, 11, 12], [1 + 4, 2 + 5, 0], [7, 0, 0], [0, 0, 0]],
        dtype=np.float32,
    )
    np.testing.assert_array_equal(grad.numpy(), expected)


def test_regularizer_applies_to_kept_coordinates_only():
    layer = make_layer(embeddings_regularizer=keras.regularizers.L2(0.5))
    # 0.5 * (0 + 1 + 4 + 9 + 16 + 36 + 81) = 73.5
    assert len(layer.losses) == 1
    np.testing.assert_allclose(float(layer.losses[0]), 73.5, rtol=0, atol=0)
    layer.assign_sizes([1, 1, 1, 1])  # 0.5 * (0 + 9 + 36 + 81) = 63
    np.testing.assert_allclose(float(layer.losses[0]), 63.0, rtol=0, atol=0)
    with tf.GradientTape() as tape:
        reg = tf.add_n(layer.losses)
    grad = tf.convert_to_tensor(tape.gradient(reg, layer.embeddings)).numpy()
    np.testing.assert_array_equal(grad[:, 1:], 0.0)  # d/dE 0.5 * E^2 = E on kept coords only
    np.testing.assert_array_equal(grad[:, 0], TABLE[:, 0])


# Errors -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, kwargs, error, match",
    [
        ((0, 3), {}, ValueError, r"`input_dim` must be a positive integer\. Received: input_dim=0"),
        ((-4, 3), {}, ValueError, r"Received: input_dim=-4 \(of type int\)"),
        ((4.0, 3), {}, ValueError, r"Received: input_dim=4\.0 \(of type float\)"),
        ((True, 3), {}, ValueError, r"Received: input_dim=True \(of type bool\)"),
        ((4, 0), {}, ValueError, r"`output_dim` must be a positive integer\. Received: output_d"),
        ((4, "3"), {}, ValueError, r"Received: output_dim='3' \(of type str\)"),
        (
            (4, 3),
            {"min_size": 0},
            ValueError,
            r"`min_size` must be an integer in \[1, output_dim=3\]\. Rec",
        ),
        ((4, 3), {"min_size": 4}, ValueError, r"Received: min_size=4"),
        ((4, 3), {"min_size": 1.5}, ValueError, r"Received: min_size=1\.5"),
    ],
)
def test_constructor_errors(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        MaskedEmbedding(*args, **kwargs)


def test_assign_sizes_errors_leave_sizes_unchanged():
    layer = make_layer(min_size=1)
    with pytest.raises(
        TypeError, match=r"Layer 'm': sizes must be integers\. Received dtype float"
    ):
        layer.assign_sizes([3.0, 2.0, 1.0, 1.0])
    with pytest.raises(TypeError, match=r"Received dtype bool"):
        layer.assign_sizes([True, True, True, True])
    with pytest.raises(
        ValueError,
        match=r"Layer 'm': sizes must have shape \(4,\) \(one per row\)\. Received shape \(3,\)",
    ):
        layer.assign_sizes([1, 2, 3])
    with pytest.raises(ValueError, match=r"Received shape \(1, 4\)"):
        layer.assign_sizes([[1, 2, 3, 3]])
    with pytest.raises(
        ValueError,
        match=r"Layer 'm': sizes must lie in \[min_size=1, output_dim=3\]\. "
        r"Received size 0 at row 1",
    ):
        layer.assign_sizes([1, 0, 3, 3])
    with pytest.raises(ValueError, match=r"Received size 4 at row 2"):
        layer.assign_sizes([1, 1, 4, 3])
    assert layer.sizes.tolist() == SIZES
    strict = make_layer(sizes=None, min_size=2, name="s")
    with pytest.raises(
        ValueError, match=r"\[min_size=2, output_dim=3\]\. Received size 1 at row 3"
    ):
        strict.assign_sizes([2, 2, 2, 1])


def test_out_of_range_ids_eager():
    layer = make_layer()
    for bad, shown in (([0, 7, 1], "7"), ([[0, -2]], "-2"), ([4], "4")):
        with pytest.raises(
            tf.errors.InvalidArgumentError,
            match=rf"Layer `m`: ids must be in \[0, input_dim=4\)\. Received id {shown}\.",
        ):
            layer(tf.constant(bad))


def test_out_of_range_ids_in_graph():
    layer = make_layer()
    fn = tf.function(lambda ids: layer(ids))
    np.testing.assert_array_equal(fn(tf.constant([3, 0])).numpy(), MASKED[[3, 0]])
    with pytest.raises(
        tf.errors.InvalidArgumentError,
        match=r"Layer `m`: ids must be in \[0, input_dim=4\)\. Received id\W*9",
    ):
        fn(tf.constant([1, 9]))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"Received id\W*-1"):
        fn(tf.constant([-1, 2]))
    # an empty batch is fine
    assert fn(tf.zeros([0], tf.int32)).shape == (0, 3)


def test_input_length_is_accepted(caplog):
    if is_legacy_keras():
        model = keras.Sequential([MaskedEmbedding(10, 4, input_length=3)])
        assert tuple(model.output_shape) == (None, 3, 4)
    else:
        with caplog.at_level(logging.WARNING, logger="tfembsize"):
            layer = MaskedEmbedding(10, 4, input_length=3)
        assert "`input_length` is ignored" in caplog.text
        assert layer(tf.constant([[1, 2, 3]])).shape == (1, 3, 4)


# Config -------------------------------------------------------------------------------------------


def test_get_config_is_exactly_the_constructor_arguments():
    layer = MaskedEmbedding(
        10,
        8,
        min_size=2,
        embeddings_initializer=keras.initializers.RandomNormal(stddev=0.01, seed=3),
        embeddings_regularizer=keras.regularizers.L2(1e-4),
        embeddings_constraint=keras.constraints.NonNeg(),
        mask_zero=True,
        activity_regularizer=keras.regularizers.L1(0.5),
        name="users",
    )
    config = layer.get_config()
    own = {
        "input_dim",
        "output_dim",
        "min_size",
        "embeddings_initializer",
        "embeddings_regularizer",
        "embeddings_constraint",
        "mask_zero",
        "activity_regularizer",
    }
    assert set(config) == own | {"name", "trainable", "dtype"}
    assert (config["input_dim"], config["output_dim"], config["min_size"]) == (10, 8, 2)
    assert config["mask_zero"] is True and config["name"] == "users"
    clone = MaskedEmbedding.from_config(config)
    assert clone.get_config() == config
    assert isinstance(clone.embeddings_regularizer, keras.regularizers.L2)
    assert isinstance(clone.embeddings_constraint, keras.constraints.NonNeg)
    # defaults
    config = MaskedEmbedding(3, 2).get_config()
    assert config["embeddings_regularizer"] is None and config["embeddings_constraint"] is None
    assert config["min_size"] == 1 and config["mask_zero"] is False
    assert "activity_regularizer" not in config or config["activity_regularizer"] is None
    assert MaskedEmbedding.from_config(config).get_config() == config


def test_registered_serializable():
    name = keras.utils.get_registered_name(MaskedEmbedding)
    assert name == "tfembsize>MaskedEmbedding"
    assert keras.utils.get_registered_object(name) is MaskedEmbedding


# Models -------------------------------------------------------------------------------------------


def _check_training_keeps_masked_coordinates(model, layer, x, y):
    before = layer.embeddings.numpy().copy()
    model.compile(optimizer=keras.optimizers.Adam(0.1), loss="mse")
    model.fit(x, y, epochs=2, batch_size=4, verbose=0)
    after = layer.embeddings.numpy()
    mask = layer.full_mask().numpy().astype(bool)
    np.testing.assert_array_equal(after[~mask], before[~mask])  # masked: untouched
    assert np.all(after[mask] != before[mask])  # kept (all rows are looked up): trained


def test_sequential_model():
    layer = make_layer()
    model = keras.Sequential(
        [
            keras.Input(shape=(2,), dtype="int32"),
            layer,
            keras.layers.Flatten(),
            keras.layers.Dense(1, kernel_initializer="ones", use_bias=False),
        ]
    )
    x = np.array([[0, 1], [2, 3], [1, 1], [3, 0]], dtype=np.int32)
    expected = MASKED[x].sum(axis=(1, 2))[:, None]  # the Dense sums everything
    np.testing.assert_array_equal(model(x).numpy(), expected)
    np.testing.assert_array_equal(model.predict(x, verbose=0), expected)
    _check_training_keeps_masked_coordinates(model, layer, x, np.zeros((4, 1)))


def test_functional_model():
    users = make_layer(name="users")
    items = MaskedEmbedding(4, 3, embeddings_initializer="ones", name="items")
    items.assign_sizes([1, 2, 3, 3])
    u = keras.Input(shape=(), dtype="int32")
    i = keras.Input(shape=(), dtype="int32")
    score = keras.layers.Dot(axes=-1)([users(u), items(i)])
    model = keras.Model([u, i], score)
    xu = np.array([0, 1, 2, 3], dtype=np.int32)
    xi = np.array([2, 1, 0, 3], dtype=np.int32)
    # <masked user row, ones[:size]>: [0+1+2, 3+4, 6, 9]
    np.testing.assert_array_equal(model([xu, xi]).numpy().ravel(), [3, 7, 6, 9])
    _check_training_keeps_masked_coordinates(model, users, [xu, xi], np.ones((4, 1)))


class DotModel(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.users = make_layer(name="users")
        self.items = MaskedEmbedding(4, 3, embeddings_initializer="ones", name="items")

    def call(self, inputs):
        u, i = inputs[:, 0], inputs[:, 1]
        return tf.reduce_sum(self.users(u) * self.items(i), axis=-1, keepdims=True)


def test_subclassed_model():
    model = DotModel()
    x = np.array([[0, 0], [1, 1], [2, 2], [3, 3]], dtype=np.int32)
    np.testing.assert_array_equal(model(x).numpy().ravel(), [3, 7, 6, 9])
    model.items.assign_sizes([1, 1, 1, 1])
    np.testing.assert_array_equal(model(x).numpy().ravel(), [0, 3, 6, 9])
    model.items.assign_sizes([3, 3, 3, 3])  # so every kept user coordinate gets a gradient
    _check_training_keeps_masked_coordinates(model, model.users, x, np.zeros((4, 1)))


@pytest.mark.parametrize("jit_compile", [False, True])
def test_tf_function_matches_eager(jit_compile):
    layer = make_layer()
    ids = tf.constant([[3, 1, 0], [2, 2, 1]])
    w = tf.constant(np.linspace(-1, 1, 18, dtype=np.float32).reshape(2, 3, 3))

    def forward_and_grad(x):
        with tf.GradientTape() as tape:
            out = layer(x)
            loss = tf.reduce_sum(out * w)
        return out, tf.convert_to_tensor(tape.gradient(loss, layer.embeddings))

    eager_out, eager_grad = forward_and_grad(ids)
    fn = tf.function(forward_and_grad, jit_compile=jit_compile)
    out, grad = fn(ids)
    np.testing.assert_array_equal(out.numpy(), eager_out.numpy())
    np.testing.assert_allclose(grad.numpy(), eager_grad.numpy(), rtol=1e-6, atol=0)
    assert np.all(grad.numpy()[~layer.full_mask().numpy().astype(bool)] == 0)
    # sizes are read at run time, not frozen at trace time
    layer.assign_sizes([1, 1, 1, 1])
    out, _ = fn(ids)
    np.testing.assert_array_equal(out.numpy(), layer(ids).numpy())
    np.testing.assert_array_equal(out.numpy()[..., 1:], 0)


def test_model_compiled_with_jit():
    model = DotModel()
    x = np.array([[0, 1], [1, 2], [2, 3], [3, 0]], dtype=np.int32)
    eager = model(x).numpy()
    model.compile(optimizer="sgd", loss="mse", jit_compile=True)
    np.testing.assert_allclose(model.predict(x, verbose=0), eager, rtol=1e-6)
    model.fit(x, np.zeros((4, 1)), epochs=1, verbose=0)
    mask = model.users.full_mask().numpy().astype(bool)
    table = model.users.embeddings.numpy()
    np.testing.assert_array_equal(table[~mask], TABLE[~mask])  # masked: untouched
    assert np.any(table[mask] != TABLE[mask])  # trained


# Save / load --------------------------------------------------------------------------------------


def _functional(**layer_kwargs):
    # Not a Constant(ndarray) initializer: tf-keras cannot deserialize one from .h5/SavedModel.
    layer_kwargs.setdefault("embeddings_initializer", keras.initializers.RandomUniform(seed=1))
    layer = MaskedEmbedding(4, 3, name="m", **layer_kwargs)
    inp = keras.Input(shape=(2,), dtype="int32")
    model = keras.Model(inp, layer(inp))
    return model, layer


def _formats():
    if is_legacy_keras():
        return ["savedmodel", ".h5", ".keras"]
    return [".keras"]


@pytest.mark.filterwarnings("ignore:You are saving your model as an HDF5 file")
@pytest.mark.parametrize("fmt", _formats())
def test_save_load_keeps_predictions_and_sizes(tmp_path, fmt):
    model, layer = _functional(embeddings_regularizer=keras.regularizers.L2(0.5))
    layer.assign_sizes([2, 3, 1, 2])
    x = np.array([[0, 1], [2, 3]], dtype=np.int32)
    expected = model.predict(x, verbose=0)
    path = tmp_path / ("model" if fmt == "savedmodel" else f"model{fmt}")
    model.save(str(path))
    keras.backend.clear_session()
    loaded = keras.models.load_model(str(path))
    new = loaded.get_layer("m")
    assert isinstance(new, MaskedEmbedding)
    assert new.sizes.tolist() == [2, 3, 1, 2]
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), expected)
    assert new.get_config() == layer.get_config()
    np.testing.assert_allclose(float(tf.add_n(loaded.losses)), float(tf.add_n(model.losses)))
    # the loaded layer is still searchable
    new.assign_sizes([3, 3, 3, 3])
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), layer.embeddings.numpy()[x])


def test_checkpoint_round_trip(tmp_path):
    layer = make_layer()
    layer.assign_sizes([1, 2, 3, 1])
    path = tf.train.Checkpoint(layer=layer).save(str(tmp_path / "ckpt"))
    other = MaskedEmbedding(4, 3, name="other")
    other.build(None)
    tf.train.Checkpoint(layer=other).restore(path).assert_consumed()
    assert other.sizes.tolist() == [1, 2, 3, 1]
    np.testing.assert_array_equal(other.embeddings.numpy(), TABLE)
    ids = tf.constant([[0, 1], [2, 3]])
    np.testing.assert_array_equal(other(ids).numpy(), layer(ids).numpy())


def test_model_checkpoint_round_trip(tmp_path):
    model, layer = _functional()
    layer.assign_sizes([3, 1, 1, 2])
    table = layer.embeddings.numpy().copy()
    path = tf.train.Checkpoint(model=model).save(str(tmp_path / "ckpt"))
    layer.assign_sizes([1, 1, 1, 1])
    layer.embeddings.assign(np.zeros((4, 3), np.float32))
    tf.train.Checkpoint(model=model).restore(path).assert_existing_objects_matched()
    assert layer.sizes.tolist() == [3, 1, 1, 2]
    np.testing.assert_array_equal(layer.embeddings.numpy(), table)
