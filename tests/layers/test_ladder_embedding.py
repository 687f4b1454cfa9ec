"""LadderEmbedding: hand-computed lifts, normalisation, growing (eager and XLA), gradients,
usable parameters, errors, save/load and the layer contract."""

from __future__ import annotations

import doctest

import numpy as np
import pytest
import tensorflow as tf

import tfembsize.layers.ladder_embedding as ladder_module
from tfembsize._keras import is_legacy_keras, keras
from tfembsize.layers import LadderEmbedding
from tfembsize.layers.ladder_embedding import DEFAULT_LADDER, LadderOverhead
from tfembsize.layers.utils import model_usage
from tfembsize.testing import LayerContract

EPS = 1e-3  # the layer's default epsilon
LADDER = (1, 2, 3)
# Rung tables (4 rows each), maps T_0: R^1 -> R^2 and T_1: R^2 -> R^3, all set by hand.
E0 = np.array([[1.0], [2.0], [-1.0], [0.5]], np.float32)
E1 = np.array([[0.1, 0.2], [0.3, -0.4], [1.0, 0.5], [-0.2, 0.0]], np.float32)
E2 = np.array([[0.5, -0.5, 1.0], [0.0, 0.2, 0.4], [-1.0, 0.3, 0.0], [0.7, 0.7, -0.7]], np.float32)
W0, B0 = np.array([[1.0, -1.0]], np.float32), np.array([0.5, 0.0], np.float32)
W1 = np.array([[1.0, 0.0, 1.0], [0.0, 1.0, -1.0]], np.float32)
B1 = np.array([0.0, 0.1, 0.0], np.float32)
RUNGS = [0, 1, 2, 1]


def t0(v):
    return v @ W0 + B0


def t1(v):
    return v @ W1 + B1


# Every row lifted to width 3 from its own rung under RUNGS, by hand:
#   row 0 (rung 0): T1(T0([1]))       = T1([1.5, -1])      = [1.5, -0.9, 2.5]
#   row 1 (rung 1): T1([0.3, -0.4])                        = [0.3, -0.3, 0.7]
#   row 2 (rung 2): E2[2]                                  = [-1, 0.3, 0]
#   row 3 (rung 1): T1([-0.2, 0])                          = [-0.2, 0.1, -0.2]
LIFTED = np.array(
    [[1.5, -0.9, 2.5], [0.3, -0.3, 0.7], [-1.0, 0.3, 0.0], [-0.2, 0.1, -0.2]], np.float32
)


def make_layer(rungs=RUNGS, **kwargs) -> LadderEmbedding:
    kwargs.setdefault("name", "ladder")
    layer = LadderEmbedding(4, LADDER, **kwargs)
    layer.build(None)
    for variable, value in zip(
        [*layer.tables, *layer.map_kernels, *layer.map_biases],
        [E0, E1, E2, W0, W1, B0, B1],
        strict=True,
    ):
        variable.assign(value)
    if rungs is not None:
        layer.assign_rungs(rungs)
    return layer


def inference(lifted, mean=0.0, var=1.0, gamma=1.0, beta=0.0):
    return np.tanh((lifted - mean) / np.sqrt(var + EPS) * gamma + beta)


# Lookups ----------------------------------------------------------------------------------------


def test_lift_by_hand():
    np.testing.assert_allclose(t1(t0(E0[[0]])), LIFTED[[0]], rtol=1e-6)
    np.testing.assert_allclose(t1(E1[[1, 3]]), LIFTED[[1, 3]], rtol=1e-6)
    layer = make_layer()
    np.testing.assert_allclose(layer.lift(tf.constant([0, 1, 2, 3])).numpy(), LIFTED, rtol=1e-6)


@pytest.mark.parametrize(
    "ids", [2, [1, 0, 3], [[1, 2], [0, 1]], [[[3, 1], [0, 0]], [[2, 2], [1, 3]]]]
)
def test_inference_lookup_hand_computed(ids):
    """Moving mean 0, variance 1, gamma 1, beta 0: the output is tanh(lift / sqrt(1 + eps))."""
    layer = make_layer()
    out = layer(tf.constant(ids))
    assert out.shape == (*np.shape(ids), 3) and out.dtype == tf.float32
    np.testing.assert_allclose(out.numpy(), inference(LIFTED[np.array(ids)]), rtol=1e-6)
    # training=False is the same; the moving statistics are untouched
    np.testing.assert_allclose(layer(tf.constant(ids), training=False).numpy(), out.numpy())
    np.testing.assert_array_equal(layer.moving_mean.numpy(), 0.0)


def test_inference_uses_moving_statistics_gamma_and_beta():
    layer = make_layer()
    mean, var = np.array([0.5, -0.1, 0.0]), np.array([4.0, 0.25, 1.0])
    gamma, beta = np.array([2.0, 1.0, -1.0]), np.array([0.0, 0.3, 0.1])
    for variable, value in (
        (layer.moving_mean, mean),
        (layer.moving_variance, var),
        (layer.gamma, gamma),
        (layer.beta, beta),
    ):
        variable.assign(value.astype(np.float32))
    want = inference(LIFTED, mean, var, gamma, beta)
    np.testing.assert_allclose(layer(tf.constant([0, 1, 2, 3])).numpy(), want, rtol=1e-5)


def test_training_uses_batch_statistics_and_moves_the_moving_ones():
    layer = make_layer(momentum=0.9)
    ids = np.array([[0, 1], [2, 0]])
    z = LIFTED[ids.ravel()]
    mean, var = z.mean(axis=0), z.var(axis=0)  # biased variance, as BatchNormalization
    want = np.tanh((z - mean) / np.sqrt(var + EPS)).reshape(2, 2, 3)
    out = layer(tf.constant(ids), training=True)
    np.testing.assert_allclose(out.numpy(), want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(layer.moving_mean.numpy(), 0.1 * mean, rtol=1e-5)
    np.testing.assert_allclose(layer.moving_variance.numpy(), 0.9 + 0.1 * var, rtol=1e-5)
    # a frozen layer normalises as in inference and leaves its statistics alone
    layer.trainable = False
    before = layer.moving_mean.numpy().copy()
    frozen = layer(tf.constant(ids), training=True).numpy()
    np.testing.assert_array_equal(layer.moving_mean.numpy(), before)
    np.testing.assert_allclose(frozen, layer(tf.constant(ids)).numpy())


def test_training_flag_may_be_a_tensor():
    traced, eager = make_layer(), make_layer()
    spec = [tf.TensorSpec([None], tf.int32), tf.TensorSpec([], tf.bool)]
    fn = tf.function(lambda ids, flag: traced(ids, training=flag), input_signature=spec)
    ids = tf.constant([0, 1, 2, 3, 1])
    for flag in (False, True):
        np.testing.assert_allclose(
            fn(ids, tf.constant(flag)).numpy(), eager(ids, training=flag).numpy(), rtol=1e-6
        )
        np.testing.assert_allclose(traced.moving_mean.numpy(), eager.moving_mean.numpy())


def test_padding_ids_are_left_out_of_the_batch_statistics():
    layer = make_layer(mask_zero=True)
    ids = np.array([[1, 0], [2, 3]])
    z = LIFTED[[1, 2, 3]]
    mean, var = z.mean(axis=0), z.var(axis=0)
    out = layer(tf.constant(ids), training=True).numpy()
    np.testing.assert_allclose(
        out[[0, 1, 1], [0, 0, 1]], np.tanh((z - mean) / np.sqrt(var + EPS)), rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(layer.moving_mean.numpy(), 0.01 * mean, rtol=1e-5)
    np.testing.assert_array_equal(layer.compute_mask(tf.constant(ids)).numpy(), ids != 0)


def test_empty_batch_in_training_leaves_statistics_finite():
    layer = make_layer()
    out = layer(tf.zeros([0, 2], tf.int32), training=True)
    assert out.shape == (0, 2, 3)
    np.testing.assert_array_equal(layer.moving_mean.numpy(), 0.0)
    np.testing.assert_array_equal(layer.moving_variance.numpy(), 1.0)


def test_id_dtypes_and_ragged_input():
    layer = make_layer()
    for dtype in (tf.int32, tf.int64, tf.float32, tf.uint8):
        out = layer(tf.constant([1, 2], dtype=dtype))
        np.testing.assert_allclose(out.numpy(), inference(LIFTED[[1, 2]]), rtol=1e-6)
    out = layer(tf.ragged.constant([[1, 2], [3]]))
    assert isinstance(out, tf.RaggedTensor)
    np.testing.assert_allclose(out.flat_values.numpy(), inference(LIFTED[[1, 2, 3]]), rtol=1e-6)
    np.testing.assert_array_equal(out.row_lengths().numpy(), [2, 1])


def test_mixed_precision_output():
    layer = make_layer(dtype="mixed_float16")
    out = layer(tf.constant([0, 1]))
    assert out.dtype == tf.float16
    assert all(w.dtype == tf.float32 for w in [*layer.tables, layer.gamma, layer.moving_mean])
    np.testing.assert_allclose(out.numpy(), inference(LIFTED[[0, 1]]), atol=2e-3)


# Sizes --------------------------------------------------------------------------------------------


def test_defaults_and_size_api():
    layer = LadderEmbedding(6)
    assert layer.ladder == DEFAULT_LADDER == (2, 4, 8, 16, 64, 128)
    assert layer.output_dim == 128
    assert layer.rungs.tolist() == [0] * 6 and layer.sizes.tolist() == [2] * 6
    assert layer.usable_params() == 12
    assert layer(tf.constant([[0, 5]])).shape == (1, 2, 128)
    rungs = layer.rungs
    rungs[0] = 3  # a copy
    assert layer.rungs.tolist() == [0] * 6
    assert layer.rungs_variable.dtype == tf.int32
    assert not layer.rungs_variable.trainable


def test_usable_and_overhead_params_by_hand():
    layer = make_layer()
    assert layer.sizes.tolist() == [1, 2, 3, 2]
    assert layer.usable_params() == 8
    # maps: 1 * 2 + 2 and 2 * 3 + 3; normalisation: gamma, beta, moving mean and variance of 3
    assert layer.overhead_params() == LadderOverhead(maps=13, batch_norm=12)
    assert layer.overhead_params().total == 25
    default = LadderEmbedding(3).overhead_params()
    assert default.maps == 2 * 4 + 4 + 4 * 8 + 8 + 8 * 16 + 16 + 16 * 64 + 64 + 64 * 128 + 128
    assert default.batch_norm == 512
    inp = keras.Input(shape=(), dtype="int32")
    model = keras.Model(inp, layer(inp))
    assert model_usage(model) == (8, 4)


# Growing ------------------------------------------------------------------------------------------


def test_grow_initialises_the_new_row_from_the_old_and_leaves_the_rest():
    layer = make_layer()
    before = layer(tf.constant([0, 1, 2, 3])).numpy()
    moved = layer.grow(tf.constant([[0, 1], [2, 0]]))  # row 0 twice, row 2 on the top rung
    assert moved.shape == (2, 2)
    assert moved.numpy().tolist() == [[True, True], [False, True]]
    assert layer.rungs.tolist() == [1, 2, 2, 1]  # grew once each; the top rung stays
    assert layer.usable_params() == 2 + 3 + 3 + 2
    e0, e1, e2 = (t.numpy() for t in layer.tables)
    np.testing.assert_allclose(e1[0], t0(E0[0]), rtol=1e-6)  # T_0(E0[0]) = [1.5, -1]
    np.testing.assert_allclose(e1[0], [1.5, -1.0], rtol=1e-6)
    np.testing.assert_allclose(e2[1], t1(E1[1]), rtol=1e-6)  # T_1(E1[1]) = [0.3, -0.3, 0.7]
    # untouched: old rows stay where they were, rows 2 and 3 everywhere
    want1, want2 = E1.copy(), E2.copy()
    want1[0], want2[1] = e1[0], e2[1]
    np.testing.assert_array_equal(e0, E0)
    np.testing.assert_array_equal(e1, want1)
    np.testing.assert_array_equal(e2, want2)
    for got, want in zip([*layer.map_kernels, *layer.map_biases], [W0, W1, B0, B1], strict=True):
        np.testing.assert_array_equal(got.numpy(), want)
    # growing does not change what the rows return
    np.testing.assert_allclose(layer(tf.constant([0, 1, 2, 3])).numpy(), before, rtol=1e-6)


def test_top_rung_rows_do_not_grow():
    layer = make_layer(rungs=[2, 2, 2, 2])
    weights = [w.copy() for w in layer.get_weights()]
    assert not np.any(layer.grow([0, 1, 2, 3, 3]).numpy())
    assert layer.rungs.tolist() == [2, 2, 2, 2]
    for got, want in zip(layer.get_weights(), weights, strict=True):
        np.testing.assert_array_equal(got, want)


def test_repeated_growth_climbs_to_the_top_and_stops():
    layer = make_layer(rungs=[0, 0, 0, 0])
    for step, want in ((1, [1, 0, 0, 0]), (2, [2, 0, 0, 0]), (3, [2, 0, 0, 0])):
        grown = layer.grow([0])
        assert layer.rungs.tolist() == want
        assert bool(grown.numpy()[0]) is (step < 3)
    np.testing.assert_allclose(layer.tables[2].numpy()[0], LIFTED[0], rtol=1e-6)
    # an empty id list is a no-op
    assert layer.grow(tf.zeros([0], tf.int32)).shape == (0,)
    assert layer.rungs.tolist() == [2, 0, 0, 0]


def test_grow_with_a_mask_moves_only_the_rows_asked_for():
    layer = make_layer(rungs=[0, 1, 0, 2])
    before = layer(tf.constant([0, 1, 2, 3])).numpy()
    # row 0: one entry asks (the other does not): it grows once; row 1 asks nowhere; row 2 asks;
    # row 3 asks but is on the top rung
    moved = layer.grow(tf.constant([0, 1, 0, 2, 3]), mask=[False, False, True, True, True])
    assert moved.numpy().tolist() == [True, False, True, True, False]
    assert layer.rungs.tolist() == [1, 1, 1, 2]
    np.testing.assert_allclose(layer.tables[1].numpy()[[0, 2]], t0(E0[[0, 2]]), rtol=1e-6)
    np.testing.assert_allclose(layer(tf.constant([0, 1, 2, 3])).numpy(), before, rtol=1e-6)
    assert not layer.grow([1, 2], mask=tf.zeros([2], tf.bool)).numpy().any()
    assert layer.rungs.tolist() == [1, 1, 1, 2]


@pytest.mark.parametrize("jit_compile", [False, True])
def test_grow_in_tf_function_matches_eager(jit_compile):
    eager, compiled = make_layer(rungs=[0, 1, 0, 2]), make_layer(rungs=[0, 1, 0, 2])
    ids = tf.constant([[1, 0], [3, 1]])
    mask = tf.constant([[False, True], [True, False]])  # row 0 asks, row 1 not, row 3 is top

    @tf.function(jit_compile=jit_compile)
    def grow_then_look_up(x):
        moved = compiled.grow(x, mask=mask)
        return moved, compiled(tf.constant([0, 1, 2, 3]))

    want_moved = eager.grow(ids, mask=mask)
    want_out = eager(tf.constant([0, 1, 2, 3]))
    moved, out = grow_then_look_up(ids)
    np.testing.assert_array_equal(moved.numpy(), want_moved.numpy())
    np.testing.assert_allclose(out.numpy(), want_out.numpy(), rtol=1e-6)
    assert compiled.rungs.tolist() == eager.rungs.tolist() == [1, 1, 0, 2]
    for got, want in zip(compiled.get_weights(), eager.get_weights(), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6)
    # the rungs are read at run time, not frozen at trace time
    grow_then_look_up(ids)
    assert compiled.rungs.tolist() == [2, 1, 0, 2]


# Gradients ----------------------------------------------------------------------------------------


def _dense(grad):
    return np.zeros(0) if grad is None else tf.convert_to_tensor(grad).numpy()


def test_gradients_reach_the_tables_of_the_rungs_in_use_only():
    layer = make_layer()
    ids = tf.constant([[0, 1], [2, 0]])  # row 3 is not looked up
    w = tf.constant(np.linspace(-1.0, 1.0, 12, dtype=np.float32).reshape(2, 2, 3))
    variables = [*layer.tables, *layer.map_kernels, *layer.map_biases]
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(layer(ids) * w)
    grads = [_dense(g) for g in tape.gradient(loss, variables)]
    # An independent formula: each id lifted by its own chain of maps.
    tables = [tf.constant(E0), tf.constant(E1), tf.constant(E2)]
    maps = [(tf.constant(W0), tf.constant(B0)), (tf.constant(W1), tf.constant(B1))]
    ref_vars = [*tables, maps[0][0], maps[1][0], maps[0][1], maps[1][1]]
    with tf.GradientTape() as tape:
        tape.watch(ref_vars)
        outs = []
        for n in np.asarray(ids).ravel():
            v = tables[RUNGS[n]][n : n + 1]
            for k in range(RUNGS[n], 2):
                v = tf.matmul(v, maps[k][0]) + maps[k][1]
            outs.append(v)
        ref = tf.tanh(tf.reshape(tf.concat(outs, 0), [2, 2, 3]) / np.sqrt(1.0 + EPS))
        ref_loss = tf.reduce_sum(ref * w)
    ref_grads = [_dense(g) for g in tape.gradient(ref_loss, ref_vars)]
    for got, want in zip(grads, ref_grads, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    g0, g1, g2 = grads[:3]
    # rows off their rung (and row 3, never looked up) get exactly zero
    assert np.all(g0[0] != 0) and np.all(g0[1:] == 0)
    assert np.all(g1[1] != 0) and np.all(g1[[0, 2, 3]] == 0)
    assert np.all(g2[2] != 0) and np.all(g2[[0, 1, 3]] == 0)


def test_no_gradient_flows_through_the_grow_write():
    layer = make_layer(rungs=[0, 0, 0, 0])
    with tf.GradientTape() as tape:
        layer.grow([1])  # E1[1] <- T_0(E0[1]), outside the gradient
        loss = tf.reduce_sum(layer(tf.constant([1])))
    g_e0, g_e1, g_w0, g_b0 = (
        _dense(g)
        for g in tape.gradient(
            loss, [layer.tables[0], layer.tables[1], layer.map_kernels[0], layer.map_biases[0]]
        )
    )
    # row 1 now reads E1[1]: E1 gets the gradient, E0 and T_0 (used only by the write) none
    assert np.all(g_e1[1] != 0)
    for g in (g_e0, g_w0, g_b0):
        assert g.size == 0 or np.all(g == 0)


def test_regularizer_applies_to_rows_on_their_rung():
    layer = make_layer(embeddings_regularizer=keras.regularizers.L2(0.5))
    # rows on their rung: E0[0], E1[1], E1[3], E2[2]
    want = 0.5 * (np.sum(E0[0] ** 2) + np.sum(E1[[1, 3]] ** 2) + np.sum(E2[2] ** 2))
    assert len(layer.losses) == 3
    np.testing.assert_allclose(float(tf.add_n(layer.losses)), want, rtol=1e-6)
    layer.assign_rungs([0, 0, 0, 0])
    np.testing.assert_allclose(float(tf.add_n(layer.losses)), 0.5 * np.sum(E0**2), rtol=1e-6)


# Errors -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        ((0,), {}, r"`input_dim` must be a positive integer\. Received: input_dim=0"),
        ((4, ()), {}, r"`ladder` must be a non-empty, strictly increasing .*ladder=\(\)"),
        ((4, (4, 2)), {}, r"Received: ladder=\(4, 2\)"),
        ((4, (2, 2)), {}, r"Received: ladder=\(2, 2\)"),
        ((4, (0, 2)), {}, r"Received: ladder=\(0, 2\)"),
        ((4, (2.0, 4)), {}, r"Received: ladder=\(2\.0, 4\)"),
        ((4, (True, 4)), {}, r"Received: ladder=\(True, 4\)"),
        ((4, "24"), {}, r"Received: ladder='24'"),
        ((4, 8), {}, r"Received: ladder=8"),
        ((4,), {"momentum": 1.0}, r"`momentum` must be in \[0, 1\)\. Received: momentum=1\.0"),
        ((4,), {"epsilon": 0.0}, r"`epsilon` must be positive\. Received: epsilon=0\.0"),
    ],
)
def test_constructor_errors(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        LadderEmbedding(*args, **kwargs)


def test_assign_rungs_errors_leave_rungs_unchanged():
    layer = make_layer()
    with pytest.raises(TypeError, match=r"Layer 'ladder': `rungs` must be integers\. Received"):
        layer.assign_rungs([0.0, 1.0, 2.0, 1.0])
    with pytest.raises(
        ValueError,
        match=r"`rungs` must have shape \(4,\) \(one per row\)\. Received shape \(3,\)",
    ):
        layer.assign_rungs([0, 1, 2])
    with pytest.raises(
        ValueError,
        match=r"`rungs` must lie in \[0, len\(ladder\) - 1 = 2\]\. Received rung 3 at row 2",
    ):
        layer.assign_rungs([0, 1, 3, 1])
    with pytest.raises(ValueError, match=r"Received rung -1 at row 0"):
        layer.assign_rungs([-1, 1, 2, 1])
    assert layer.rungs.tolist() == RUNGS


def test_out_of_range_ids():
    layer = make_layer()
    message = r"Layer `ladder`: ids must be in \[0, input_dim=4\)\. Received id"
    with pytest.raises(tf.errors.InvalidArgumentError, match=message + r" 4\."):
        layer(tf.constant([0, 4]))
    with pytest.raises(tf.errors.InvalidArgumentError, match=message + r" -1\."):
        layer.grow([-1])
    fn = tf.function(lambda ids: layer.grow(ids))
    with pytest.raises(tf.errors.InvalidArgumentError, match=message + r"\W*7"):
        fn(tf.constant([1, 7]))
    assert layer.rungs.tolist() == RUNGS


# Models, config, save / load ----------------------------------------------------------------------


def test_get_config_is_exactly_the_constructor_arguments():
    layer = LadderEmbedding(
        10,
        [2, 4],
        embeddings_initializer=keras.initializers.RandomNormal(stddev=0.01, seed=3),
        embeddings_regularizer=keras.regularizers.L2(1e-4),
        mask_zero=True,
        kernel_initializer="zeros",
        momentum=0.9,
        epsilon=1e-5,
        name="items",
    )
    config = layer.get_config()
    own = {
        "input_dim",
        "ladder",
        "embeddings_initializer",
        "embeddings_regularizer",
        "embeddings_constraint",
        "mask_zero",
        "kernel_initializer",
        "bias_initializer",
        "momentum",
        "epsilon",
    }
    assert set(config) == own | {"name", "trainable", "dtype"}
    assert config["ladder"] == [2, 4] and config["momentum"] == 0.9
    clone = LadderEmbedding.from_config(config)
    assert clone.get_config() == config and clone.ladder == (2, 4)


def test_model_fit_with_jit_trains_the_tables_and_moves_the_statistics():
    layer = make_layer()
    inp = keras.Input(shape=(2,), dtype="int32")
    out = keras.layers.Dense(1)(keras.layers.Flatten()(layer(inp)))
    model = keras.Model(inp, out)
    model.compile(optimizer="sgd", loss="mse", jit_compile=True)
    x = np.array([[0, 1], [2, 3], [1, 1], [3, 0]], np.int32)
    model.fit(x, np.ones((4, 1), np.float32), epochs=1, batch_size=4, verbose=0)
    assert not np.allclose(layer.moving_mean.numpy(), 0.0)
    assert not np.allclose(layer.tables[0].numpy()[0], E0[0])  # row 0 is on rung 0
    np.testing.assert_array_equal(layer.tables[0].numpy()[1:], E0[1:])  # off their rung
    assert layer.rungs.tolist() == RUNGS


def _formats():
    return ["savedmodel", ".h5", ".keras"] if is_legacy_keras() else [".keras"]


@pytest.mark.filterwarnings("ignore:You are saving your model as an HDF5 file")
@pytest.mark.parametrize("fmt", _formats())
def test_save_load_keeps_rungs_tables_and_predictions(tmp_path, fmt):
    layer = LadderEmbedding(
        6, [2, 3, 4], embeddings_initializer=keras.initializers.RandomUniform(seed=1), name="l"
    )
    inp = keras.Input(shape=(2,), dtype="int32")
    model = keras.Model(inp, layer(inp))
    layer.assign_rungs([0, 1, 2, 0, 1, 2])
    layer.grow([0, 1, 3])
    layer.moving_mean.assign(np.array([0.1, -0.2, 0.3, 0.0], np.float32))
    x = np.array([[0, 1], [2, 3], [4, 5]], np.int32)
    expected = model.predict(x, verbose=0)
    path = tmp_path / ("model" if fmt == "savedmodel" else f"model{fmt}")
    model.save(str(path))
    keras.backend.clear_session()
    loaded = keras.models.load_model(str(path))
    new = loaded.get_layer("l")
    assert isinstance(new, LadderEmbedding)
    assert new.rungs.tolist() == [1, 2, 2, 1, 1, 2]
    assert new.get_config() == layer.get_config()
    for got, want in zip(new.get_weights(), layer.get_weights(), strict=True):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), expected)


def test_checkpoint_round_trip(tmp_path):
    layer = make_layer()
    layer.grow([0])
    path = tf.train.Checkpoint(layer=layer).save(str(tmp_path / "ckpt"))
    other = LadderEmbedding(4, LADDER, name="other")
    other.build(None)
    tf.train.Checkpoint(layer=other).restore(path).assert_consumed()
    assert other.rungs.tolist() == [1, 1, 2, 1]
    ids = tf.constant([[0, 1], [2, 3]])
    np.testing.assert_array_equal(other(ids).numpy(), layer(ids).numpy())


def test_docstring_examples():
    result = doctest.testmod(ladder_module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


# The layer contract -------------------------------------------------------------------------------
IDS = np.array([[0, 3, 9], [1, 9, 4]], dtype=np.int32)


class TestLadderEmbeddingContract(LayerContract):
    """Rows spread over the rungs, some grown (their new rows written by `grow`)."""

    layer_cls = LadderEmbedding
    init_kwargs = {"input_dim": 10, "ladder": [2, 3, 4]}
    input_data = IDS

    def prepare(self, layer):
        layer.assign_rungs(np.arange(10) % 3)
        layer.grow([0, 1, 4, 9])


class TestLadderEmbeddingMaskZeroContract(LayerContract):
    """Rank-1 ids and a padding mask from the start."""

    layer_cls = LadderEmbedding
    init_kwargs = {"input_dim": 7, "ladder": [1, 2], "mask_zero": True}
    input_data = np.array([0, 6, 3, 1], dtype=np.int32)


class TestLadderEmbeddingDefaultsContract(LayerContract):
    """The default ladder and the contract's own ids."""

    layer_cls = LadderEmbedding
    init_kwargs = {"input_dim": 7}
