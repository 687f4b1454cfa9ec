"""PEPEmbedding and PEPAdam: thresholds, gradients, retraining mode, optimiser, save/load."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import tensorflow as tf

from tfembsize._keras import is_legacy_keras, keras
from tfembsize.layers.pep_embedding import (
    GRANULARITIES,
    PEPAdam,
    PEPEmbedding,
    coupled_l2_gradients,
    find_pep_layers,
    is_threshold_variable,
)

# A 2 x 3 table. Thresholds are chosen so that g(S) = sigmoid(S) is a simple number:
# sigmoid(0) = 0.5, sigmoid(log 3) = 0.75, sigmoid(-log 3) = 0.25.
TABLE = np.array([[1.0, -0.6, 0.2], [0.3, -0.9, 0.8]], dtype=np.float32)
L3 = math.log(3.0)
CASES = {
    # granularity: (S, hand-computed sign(E) * relu(|E| - g(S)))
    "global": ([0.0], [[0.5, -0.1, 0.0], [0.0, -0.4, 0.3]]),
    "dimension": ([-L3, 0.0, L3], [[0.75, -0.1, 0.0], [0.05, -0.4, 0.05]]),
    "feature": ([[0.0], [L3]], [[0.5, -0.1, 0.0], [0.0, -0.15, 0.05]]),
    "feature_dimension": (
        [[L3, -L3, 0.0], [0.0, L3, -L3]],
        [[0.25, -0.35, 0.0], [0.0, -0.15, 0.55]],
    ),
}


def make_layer(granularity="feature_dimension", s=None, **kwargs) -> PEPEmbedding:
    kwargs.setdefault("name", "p")
    layer = PEPEmbedding(2, 3, granularity=granularity, **kwargs)
    layer.build(None)
    layer.embeddings.assign(TABLE)
    if s is not None:
        layer.threshold.assign(np.asarray(s, dtype=np.float32))
    return layer


# Lookups ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_lookup_hand_computed_per_granularity(granularity):
    s, expected = CASES[granularity]
    layer = make_layer(granularity, s)
    expected = np.array(expected, dtype=np.float32)
    assert layer.threshold.shape == np.shape(s)
    np.testing.assert_allclose(layer(tf.constant([0, 1])).numpy(), expected, atol=1e-6)
    np.testing.assert_allclose(
        layer(tf.constant([1, 1, 0])).numpy(), expected[[1, 1, 0]], atol=1e-6
    )
    np.testing.assert_allclose(layer.pruned_table().numpy(), expected, atol=1e-6)
    np.testing.assert_allclose(layer.masked_table().numpy(), expected, atol=1e-6)
    nonzero = expected != 0
    np.testing.assert_array_equal(layer.pruning_mask(), nonzero)
    assert layer.pruning_mask().dtype == bool
    assert layer.usable_params() == int(nonzero.sum())
    assert int(layer.count_usable_params()) == int(nonzero.sum())
    assert layer.row_sizes().tolist() == nonzero.sum(axis=1).tolist()
    np.testing.assert_allclose(layer.threshold_values(), 1 / (1 + np.exp(-np.asarray(s))), 1e-6)


def test_constant_initialisers_and_softplus():
    # E = 0.3 everywhere, S = threshold_init = 0: sigmoid -> 0.3 - 0.5 < 0, all pruned;
    # softplus(-2) = log(1 + e^-2) = 0.126928...
    layer = PEPEmbedding(
        4, 2, threshold_init=0.0, embeddings_initializer=keras.initializers.Constant(0.3)
    )
    np.testing.assert_array_equal(layer(tf.constant([0, 3])).numpy(), np.zeros((2, 2)))
    assert layer.usable_params() == 0
    layer = PEPEmbedding(
        4,
        2,
        threshold_init=-2.0,
        threshold_fn="softplus",
        embeddings_initializer=keras.initializers.Constant(0.3),
    )
    expected = 0.3 - math.log1p(math.exp(-2.0))
    np.testing.assert_allclose(layer(tf.constant([[1]])).numpy(), [[[expected, expected]]], 1e-6)
    assert layer.usable_params() == 8


def test_default_threshold_barely_changes_the_table():
    # s0 = -15: g = 3.06e-7, the documented reason why the data gradient hardly moves S.
    init = keras.initializers.RandomNormal(stddev=0.01, seed=1)
    layer = PEPEmbedding(100, 8, embeddings_initializer=init)
    plain = keras.layers.Embedding(100, 8, embeddings_initializer=init)
    ids = tf.constant([3, 7, 99])
    np.testing.assert_allclose(layer(ids).numpy(), plain(ids).numpy(), atol=1e-6)
    assert layer.granularity == "feature_dimension" and layer.threshold.shape == (100, 8)
    np.testing.assert_array_equal(layer.threshold.numpy(), -15.0)


@pytest.mark.parametrize(
    "ids",
    [1, [[1, 0], [0, 0]], [[[1], [0]], [[0], [1]]]],
    ids=["rank0", "rank2", "rank3"],
)
def test_any_id_rank_and_dtype(ids):
    s, expected = CASES["feature"]
    layer = make_layer("feature", s)
    expected = np.array(expected, dtype=np.float32)
    for dtype in (tf.int32, tf.int64, tf.float32):
        out = layer(tf.constant(ids, dtype=dtype))
        assert out.shape == (*np.shape(ids), 3)
        np.testing.assert_allclose(out.numpy(), expected[np.array(ids)], atol=1e-6)


def test_ragged_input_and_mask_zero():
    s, expected = CASES["global"]
    layer = make_layer("global", s, mask_zero=True)
    out = layer(tf.ragged.constant([[1, 0], [1]]))
    assert isinstance(out, tf.RaggedTensor)
    np.testing.assert_allclose(out.flat_values.numpy(), np.array(expected)[[1, 0, 1]], atol=1e-6)
    ids = tf.constant([[0, 1]])
    np.testing.assert_array_equal(layer.compute_mask(ids).numpy(), [[False, True]])
    assert layer.supports_masking and make_layer().compute_mask(ids) is None
    assert tuple(layer.compute_output_shape((2, 5))) == (2, 5, 3)


def test_mixed_precision_output():
    layer = PEPEmbedding(
        2, 3, granularity="global", threshold_init=0.0, dtype="mixed_float16", name="mp"
    )
    layer.build(None)
    layer.embeddings.assign(TABLE)
    out = layer(tf.constant([0, 1]))
    assert out.dtype == tf.float16 and layer.embeddings.dtype == tf.float32
    np.testing.assert_allclose(out.numpy(), CASES["global"][1], atol=1e-3)


def test_aliases_map_to_canonical_granularities():
    for alias, canonical in (
        ("per_dim", "dimension"),
        ("per_entity", "feature"),
        ("per_entity_dim", "feature_dimension"),
        ("entry", "feature_dimension"),
        ("feature_dim", "feature_dimension"),
    ):
        layer = PEPEmbedding(5, 4, granularity=alias)
        assert layer.granularity == canonical
        assert layer.get_config()["granularity"] == canonical
    shapes = {g: PEPEmbedding(5, 4, granularity=g).threshold_shape() for g in GRANULARITIES}
    assert shapes == {
        "global": (1,),
        "dimension": (4,),
        "feature": (5, 1),
        "feature_dimension": (5, 4),
    }


# Gradients ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_gradients_hand_computed(granularity):
    s, expected = CASES[granularity]
    layer = make_layer(granularity, s)
    expected = np.array(expected, dtype=np.float32)
    weights = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], dtype=np.float32)
    ids = tf.constant([0, 1])
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(layer(ids) * weights)
    g_e, g_s = tape.gradient(loss, [layer.embeddings, layer.threshold])
    kept = expected != 0
    # dÊ/dE = 1 where kept, 0 where pruned
    np.testing.assert_allclose(tf.convert_to_tensor(g_e).numpy(), weights * kept)
    # dÊ/dS = -sign(E) g'(S) where kept; g' = g (1 - g); summed over broadcast axes
    g = 1 / (
        1
        + np.exp(
            -np.broadcast_to(
                np.array(s, np.float32).reshape(
                    (1, -1) if granularity in ("global", "dimension") else np.shape(s)
                ),
                TABLE.shape,
            )
        )
    )
    per_entry = -np.sign(TABLE) * g * (1 - g) * weights * kept
    reduce = {
        "global": lambda x: x.sum(keepdims=True).reshape(1),
        "dimension": lambda x: x.sum(axis=0),
        "feature": lambda x: x.sum(axis=1, keepdims=True),
        "feature_dimension": lambda x: x,
    }[granularity]
    np.testing.assert_allclose(tf.convert_to_tensor(g_s).numpy(), reduce(per_entry), rtol=1e-5)


def test_gradients_are_sparse_and_zero_where_pruned():
    layer = PEPEmbedding(
        50, 4, embeddings_initializer=keras.initializers.RandomNormal(stddev=1.0, seed=2)
    )
    layer.build(None)
    layer.threshold.assign(np.full((50, 4), 0.0, np.float32))  # threshold 0.5: prunes some
    ids = tf.constant([3, 9, 9])
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(layer(ids))
    g_e, g_s = tape.gradient(loss, [layer.embeddings, layer.threshold])
    assert isinstance(g_e, tf.IndexedSlices) and isinstance(g_s, tf.IndexedSlices)
    dense = tf.convert_to_tensor(g_e).numpy()
    pruned = ~layer.pruning_mask()
    assert pruned[[3, 9]].any() and (~pruned[[3, 9]]).any()
    assert np.all(dense[pruned] == 0)
    np.testing.assert_array_equal(dense[3], (~pruned[3]).astype(np.float32))
    np.testing.assert_array_equal(dense[9], 2 * (~pruned[9]).astype(np.float32))
    assert not dense[np.setdiff1d(np.arange(50), [3, 9])].any()


# Retraining mode ----------------------------------------------------------------------------------


def test_freeze_mask_with_rewinding():
    s, _ = CASES["feature_dimension"]
    layer = make_layer("feature_dimension", s)
    mask = np.array([[1, 0, 1], [0, 1, 1]], dtype=np.int64)
    e0 = np.array([[0.1, 0.2, 0.0], [0.4, 0.5, 0.6]], dtype=np.float32)
    assert not layer.is_frozen
    layer.freeze_mask(mask, rewind_values=e0)
    assert layer.is_frozen
    expected = e0 * mask
    np.testing.assert_array_equal(layer.embeddings.numpy(), expected)
    np.testing.assert_array_equal(layer(tf.constant([1, 0])).numpy(), expected[[1, 0]])
    np.testing.assert_array_equal(layer.pruned_table().numpy(), expected)
    # usable = entries allowed to be non-zero (the mask), even where the value is 0
    assert layer.usable_params() == 4 and int(layer.count_usable_params()) == 4
    np.testing.assert_array_equal(layer.pruning_mask(), mask.astype(bool))
    assert layer.row_sizes().tolist() == [2, 2]
    # kept entries get the full gradient (even the one at exactly 0), pruned ones none
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(layer(tf.constant([0, 1])) * 3.0)
    g_e, g_s = tape.gradient(loss, [layer.embeddings, layer.threshold])
    np.testing.assert_array_equal(tf.convert_to_tensor(g_e).numpy(), 3.0 * mask)
    np.testing.assert_array_equal(tf.convert_to_tensor(g_s).numpy(), 0.0)


def test_freeze_mask_without_rewinding_keeps_the_effective_table():
    s, expected = CASES["dimension"]
    layer = make_layer("dimension", s)
    layer.freeze_mask(np.ones((2, 3), dtype=bool))
    np.testing.assert_allclose(layer.embeddings.numpy(), expected, atol=1e-6)
    np.testing.assert_allclose(layer(tf.constant([0, 1])).numpy(), expected, atol=1e-6)
    # a second freeze with a smaller mask works from the frozen table
    layer.freeze_mask(np.array([[True, False, False], [False, False, True]]))
    np.testing.assert_allclose(
        layer.pruned_table().numpy(), [[0.75, 0, 0], [0, 0, 0.05]], atol=1e-6
    )
    assert layer.usable_params() == 2


def test_frozen_training_keeps_pruned_entries_zero_and_thresholds_still():
    layer = PEPEmbedding(
        6, 4, embeddings_initializer=keras.initializers.RandomNormal(stddev=1.0, seed=3)
    )
    layer.build(None)
    rng = np.random.default_rng(0)
    mask = rng.random((6, 4)) < 0.5
    e0 = layer.embeddings.numpy().copy()
    layer.freeze_mask(mask, rewind_values=e0)
    s_before = layer.threshold.numpy().copy()
    opt = PEPAdam(0.1, threshold_lr=0.1, threshold_l2=1e-2, l2=1e-2, global_clipnorm=100.0)
    ids = tf.constant([0, 1, 2, 3, 4, 5, 5])

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.square(layer(ids) - 1.0))
        grads = tape.gradient(loss, layer.trainable_weights)
        opt.apply_gradients(zip(grads, layer.trainable_weights, strict=True))

    for _ in range(5):
        step()
    table = layer.embeddings.numpy()
    np.testing.assert_array_equal(table[~mask], 0.0)
    assert np.all(table[mask] != e0[mask])
    np.testing.assert_array_equal(layer.threshold.numpy(), s_before)
    assert layer.usable_params() == int(mask.sum())


def test_freeze_mask_errors():
    layer = make_layer()
    with pytest.raises(
        ValueError, match=r"Layer 'p': `mask` must have shape \(2, 3\)\. Received shape \(3, 2\)"
    ):
        layer.freeze_mask(np.ones((3, 2), bool))
    with pytest.raises(ValueError, match=r"`mask` must be boolean or contain only 0 and 1"):
        layer.freeze_mask(np.full((2, 3), 2))
    with pytest.raises(
        ValueError, match=r"`rewind_values` must have shape \(2, 3\)\. Received shape \(2,\)"
    ):
        layer.freeze_mask(np.ones((2, 3), bool), rewind_values=np.ones(2))
    with pytest.raises(ValueError, match=r"`rewind_values` must be finite numbers"):
        layer.freeze_mask(np.ones((2, 3), bool), rewind_values=np.full((2, 3), np.nan))
    assert not layer.is_frozen  # nothing changed
    np.testing.assert_array_equal(layer.embeddings.numpy(), TABLE)


# Errors -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (
            {"granularity": "row"},
            r"`granularity` must be one of \('global', 'dimension', "
            r"'feature', 'feature_dimension'\).*Received: granularity='row'",
        ),
        (
            {"threshold_init": float("nan")},
            r"`threshold_init` must be a finite number\. "
            r"Received: threshold_init=nan",
        ),
        ({"threshold_init": True}, r"Received: threshold_init=True"),
        ({"threshold_init": "-15"}, r"Received: threshold_init='-15'"),
        (
            {"threshold_fn": "relu"},
            r"`threshold_fn` must be one of \('sigmoid', 'softplus'\)\. "
            r"Received: threshold_fn='relu'",
        ),
        ({"input_dim": 0}, r"`input_dim` must be a positive integer\. Received: input_dim=0"),
    ],
)
def test_constructor_errors(kwargs, match):
    args = {"input_dim": 4, "output_dim": 3, **kwargs}
    with pytest.raises(ValueError, match=match):
        PEPEmbedding(**args)


def test_out_of_range_ids():
    layer = make_layer()
    with pytest.raises(
        tf.errors.InvalidArgumentError,
        match=r"Layer `p`: ids must be in \[0, input_dim=2\)\. Received id 5\.",
    ):
        layer(tf.constant([0, 5]))
    fn = tf.function(lambda ids: layer(ids))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"Received id\W*-1"):
        fn(tf.constant([-1, 1]))


def test_input_length_is_accepted(caplog):
    if is_legacy_keras():
        model = keras.Sequential([PEPEmbedding(10, 4, input_length=3)])
        assert tuple(model.output_shape) == (None, 3, 4)
    else:
        with caplog.at_level(logging.WARNING, logger="tfembsize"):
            layer = PEPEmbedding(10, 4, input_length=3)
        assert "`input_length` is ignored" in caplog.text
        assert layer(tf.constant([[1, 2, 3]])).shape == (1, 3, 4)


# Config -------------------------------------------------------------------------------------------


def test_get_config_is_exactly_the_constructor_arguments():
    layer = PEPEmbedding(
        10,
        8,
        granularity="per_entity",
        threshold_init=-150,
        threshold_fn="softplus",
        embeddings_initializer=keras.initializers.RandomNormal(stddev=0.01, seed=3),
        embeddings_regularizer=keras.regularizers.L2(1e-4),
        embeddings_constraint=keras.constraints.NonNeg(),
        mask_zero=True,
        name="users",
    )
    config = layer.get_config()
    own = {
        "input_dim",
        "output_dim",
        "granularity",
        "threshold_init",
        "threshold_fn",
        "embeddings_initializer",
        "embeddings_regularizer",
        "embeddings_constraint",
        "mask_zero",
    }
    assert set(config) - {"activity_regularizer"} == own | {"name", "trainable", "dtype"}
    assert config["granularity"] == "feature" and config["threshold_init"] == -150.0
    assert config["threshold_fn"] == "softplus" and config["mask_zero"] is True
    clone = PEPEmbedding.from_config(config)
    assert clone.get_config() == config
    assert isinstance(clone.embeddings_regularizer, keras.regularizers.L2)
    name = keras.utils.get_registered_name(PEPEmbedding)
    assert name == "tfembsize>PEPEmbedding"
    assert keras.utils.get_registered_object(name) is PEPEmbedding
    defaults = PEPEmbedding(3, 2).get_config()
    assert (defaults["granularity"], defaults["threshold_init"], defaults["threshold_fn"]) == (
        "feature_dimension",
        -15.0,
        "sigmoid",
    )


def test_regularizer_ignores_frozen_out_entries():
    layer = make_layer(embeddings_regularizer=keras.regularizers.L1(1.0))
    assert float(tf.add_n(layer.losses)) == pytest.approx(np.abs(TABLE).sum(), rel=1e-6)
    layer.freeze_mask(np.array([[1, 0, 0], [0, 0, 1]]), rewind_values=TABLE)
    assert float(tf.add_n(layer.losses)) == pytest.approx(1.0 + 0.8, rel=1e-6)


def test_find_pep_layers_and_threshold_marker():
    users, items = PEPEmbedding(5, 2, name="u"), PEPEmbedding(6, 2, name="i")
    inp = keras.Input(shape=(2,), dtype="int32")
    out = keras.layers.Dot(axes=-1)([users(inp[:, 0]), items(inp[:, 1])])
    model = keras.Model(inp, out)
    assert find_pep_layers(model) == {"u": users, "i": items}
    assert [is_threshold_variable(v) for v in users.trainable_weights] == [False, True]
    assert not any(is_threshold_variable(v) for v in users.non_trainable_weights)


# PEPAdam: the threshold dynamics -----------------------------------------------------------------


def _adam_reference(s0, grads, lr, l2, steps, beta_1=0.9, beta_2=0.999, eps=1e-7):
    """Keras's Adam maths on grad + l2 * s, in float64."""
    s, m, v = np.float64(s0), 0.0, 0.0
    out = []
    for t in range(1, steps + 1):
        g = grads(t) + l2 * s
        m = beta_1 * m + (1 - beta_1) * g
        v = beta_2 * v + (1 - beta_2) * g * g
        s = s - lr * math.sqrt(1 - beta_2**t) / (1 - beta_1**t) * m / (math.sqrt(v) + eps)
        out.append(s)
    return np.array(out)


def _train_thresholds(opt, layer, steps, data_weight=0.0, variables=None):
    ids = tf.constant([0, 1])
    layer.build(None)
    variables = layer.trainable_weights if variables is None else variables

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            loss = data_weight * tf.reduce_sum(layer(ids))
        grads = tape.gradient(loss, variables)
        opt.apply_gradients(zip(grads, variables, strict=True))

    history = []
    for _ in range(steps):
        step()
        history.append(layer.threshold.numpy().copy())
    return np.array(history)


def test_thresholds_rise_by_about_lr_per_step_under_zero_data_gradient():
    # algorithms.md §6.2: at s0 = -15 the coupled L2 term (1e-5 * -15 = -1.5e-4) dominates
    # and Adam normalises it, so S rises by ~threshold_lr per step; the table moves with lr.
    layer = PEPEmbedding(4, 3, embeddings_initializer="ones")
    opt = PEPAdam(0.05, threshold_lr=1e-3, threshold_l2=1e-5, l2=0.0)
    history = _train_thresholds(opt, layer, 200)
    rise = history[:, 0, 0] + 15.0
    steps = np.arange(1, 201)
    # ~lr per step: 2 % less at first (Keras adds epsilon=1e-7 to sqrt(v) before the bias
    # correction, a few percent of |g| = 1.5e-4 early on), then lr to within 1 % (|g| shrinks
    # as S rises, and sqrt(v) averages the larger past values)
    np.testing.assert_allclose(rise, 1e-3 * steps, rtol=3e-2)
    np.testing.assert_allclose(np.diff(rise[-50:]).mean(), 1e-3, rtol=1e-2)
    np.testing.assert_allclose(history[-1], history[-1, 0, 0])  # every entry alike
    np.testing.assert_allclose(
        history[:, 0, 0], _adam_reference(-15.0, lambda t: 0.0, 1e-3, 1e-5, 200), rtol=1e-6
    )
    # Keras's decoupled weight decay does not do this: S moves by lr * wd * |S| per step.
    layer2 = PEPEmbedding(4, 3, embeddings_initializer="ones")
    decoupled = keras.optimizers.Adam(1e-3, weight_decay=1e-5)
    history2 = _train_thresholds(decoupled, layer2, 200)
    assert abs(history2[-1, 0, 0] + 15.0) < 1e-4


def test_threshold_step_matches_adam_on_coupled_gradient_with_its_own_lr():
    # A data gradient on S too: E = 1, S = 0 -> Ê = 0.5, d loss / dS = -w * g'(0) = -w / 4.
    for granularity in ("global", "feature_dimension"):
        layer = PEPEmbedding(
            2, 3, granularity=granularity, threshold_init=0.0, embeddings_initializer="ones"
        )
        opt = PEPAdam(0.5, threshold_lr=0.01, threshold_l2=0.1, l2=0.0)
        layer.build(None)  # E stays 1: only S is trained here
        history = _train_thresholds(opt, layer, 20, data_weight=2.0, variables=[layer.threshold])
        count = 6 if granularity == "global" else 1  # a global S sums the 6 entries
        # reference with the exact data gradient -2 * count * g'(s), g' = g (1 - g)
        s, m, v, out = 0.0, 0.0, 0.0, []
        for t in range(1, 21):
            sig = 1 / (1 + math.exp(-s))
            g = -2.0 * count * sig * (1 - sig) + 0.1 * s
            m = 0.9 * m + 0.1 * g
            v = 0.999 * v + 0.001 * g * g
            s -= 0.01 * math.sqrt(1 - 0.999**t) / (1 - 0.9**t) * m / (math.sqrt(v) + 1e-7)
            out.append(s)
        np.testing.assert_allclose(history.reshape(20, -1)[:, 0], out, rtol=1e-5, atol=1e-7)


def test_table_gets_coupled_l2_with_learning_rate():
    layer = PEPEmbedding(3, 2, granularity="global", embeddings_initializer="ones")
    opt = PEPAdam(0.1, threshold_lr=1e-4, threshold_l2=0.0, l2=0.5)
    _train_thresholds(opt, layer, 3)  # zero data gradient: only the L2 moves E
    expected = _adam_reference(1.0, lambda t: 0.0, 0.1, 0.5, 3)[-1]
    np.testing.assert_allclose(layer.embeddings.numpy(), expected, rtol=1e-5)
    # with threshold_l2 = 0 and no data gradient on S, S does not move
    np.testing.assert_array_equal(layer.threshold.numpy(), -15.0)


def test_dense_and_sparse_threshold_gradients_agree():
    def run(dense):
        layer = PEPEmbedding(
            5, 2, threshold_init=0.0, embeddings_initializer=keras.initializers.Constant(0.7)
        )
        layer.build(None)
        opt = PEPAdam(0.1, threshold_lr=0.01, threshold_l2=0.1)
        ids = tf.constant([0, 2, 2])
        for _ in range(3):
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(layer(ids))
            grads = tape.gradient(loss, layer.trainable_weights)
            if dense:
                grads = [tf.convert_to_tensor(g) for g in grads]
            opt.apply_gradients(zip(grads, layer.trainable_weights, strict=True))
        return layer.threshold.numpy()

    sparse, dense = run(False), run(True)
    np.testing.assert_allclose(sparse, dense, rtol=1e-6)
    assert sparse[2, 0] != sparse[1, 0]  # rows 0 and 2 saw data, all rows saw the L2


def test_pep_adam_config_and_errors():
    schedule = keras.optimizers.schedules.ExponentialDecay(1e-3, 100, 0.5)
    opt = PEPAdam(2e-3, threshold_lr=schedule, threshold_l2=3e-5, l2=0.0, global_clipnorm=100.0)
    config = opt.get_config()
    assert config["threshold_l2"] == 3e-5 and config["l2"] == 0.0
    clone = PEPAdam.from_config(config)
    assert isinstance(clone.threshold_lr, keras.optimizers.schedules.ExponentialDecay)
    assert clone.threshold_l2 == 3e-5 and clone.global_clipnorm == 100.0
    plain = PEPAdam.from_config(PEPAdam(threshold_lr=5e-4).get_config())
    assert plain.threshold_lr == 5e-4 and plain.l2 == 1e-5 and plain.threshold_l2 == 1e-5
    with pytest.raises(
        ValueError,
        match=r"`threshold_l2` must be a finite number >= 0\. "
        r"Received: threshold_l2=-1",
    ):
        PEPAdam(threshold_l2=-1)
    with pytest.raises(
        ValueError,
        match=r"`threshold_lr` must be a positive number.*"
        r"Received: threshold_lr=0",
    ):
        PEPAdam(threshold_lr=0)
    with pytest.raises(ValueError, match=r"PEPAdam does not support `amsgrad`"):
        PEPAdam(amsgrad=True)


def test_coupled_l2_gradients():
    layer = PEPEmbedding(3, 2, granularity="global", embeddings_initializer="ones")
    layer.build(None)
    dense_var = tf.Variable([2.0, -4.0])
    sparse = tf.IndexedSlices(tf.constant([[1.0, 1.0]]), tf.constant([1]), tf.constant([3, 2]))
    out = coupled_l2_gradients(
        [(sparse, layer.embeddings), (None, dense_var), (tf.constant([0.5]), layer.threshold)],
        0.5,
        threshold_l2=0.1,
    )
    np.testing.assert_allclose(out[0][1].numpy(), layer.embeddings.numpy())
    np.testing.assert_allclose(out[0][0].numpy(), [[0.5, 0.5], [1.5, 1.5], [0.5, 0.5]])
    assert out[1][0] is None
    np.testing.assert_allclose(out[2][0].numpy(), [0.5 + 0.1 * -15.0])
    with pytest.raises(ValueError, match=r"`l2` must be a finite number >= 0\. Received: l2=nan"):
        coupled_l2_gradients([], float("nan"))


# Models, save / load ------------------------------------------------------------------------------


def _model(granularity="feature_dimension", threshold_init=-1.0, **kwargs):
    kwargs.setdefault("embeddings_initializer", keras.initializers.RandomNormal(stddev=1.0, seed=5))
    layer = PEPEmbedding(
        6, 4, granularity=granularity, threshold_init=threshold_init, name="p", **kwargs
    )
    inp = keras.Input(shape=(2,), dtype="int32")
    out = keras.layers.Dense(1, kernel_initializer="ones")(keras.layers.Flatten()(layer(inp)))
    return keras.Model(inp, out), layer


X = np.array([[0, 1], [2, 3], [4, 5], [5, 0]], dtype=np.int32)
Y = np.array([[1.0], [-1.0], [0.5], [2.0]], dtype=np.float32)


@pytest.mark.parametrize("jit_compile", [False, True])
def test_model_fit_with_pep_adam(jit_compile):
    model, layer = _model(threshold_init=-15.0)
    model.compile(
        optimizer=PEPAdam(0.01, threshold_lr=0.05, threshold_l2=1e-5),
        loss="mse",
        jit_compile=jit_compile,
    )
    model.fit(X, Y, epochs=3, batch_size=2, verbose=0)
    # 6 optimiser steps from S = -15: every S rises by about threshold_lr per step
    rise = layer.threshold.numpy() + 15.0
    assert np.all(rise > 0.29) and np.all(rise < 0.301)
    layer.freeze_mask(np.arange(24).reshape(6, 4) % 3 != 0)
    frozen = layer.threshold.numpy().copy()
    model.fit(X, Y, epochs=1, batch_size=2, verbose=0)
    np.testing.assert_array_equal(layer.threshold.numpy(), frozen)
    # The optimiser's moments from before the freeze may move raw E at pruned positions; the
    # effective table, and so the model, keeps them at exactly zero.
    np.testing.assert_array_equal(layer.pruned_table().numpy()[~layer.pruning_mask()], 0.0)
    assert layer.usable_params() == 16


def _formats():
    return ["savedmodel", ".keras"] if is_legacy_keras() else [".keras"]


@pytest.mark.parametrize("fmt", _formats())
@pytest.mark.parametrize("frozen", [False, True])
def test_save_load_keeps_predictions_and_state(tmp_path, fmt, frozen):
    model, layer = _model(granularity="dimension")
    layer.threshold.assign(np.array([-1.0, 0.0, 1.0, -2.0], np.float32))
    if frozen:
        rng = np.random.default_rng(1)
        layer.freeze_mask(rng.random((6, 4)) < 0.5, rewind_values=rng.normal(size=(6, 4)))
    expected = model.predict(X, verbose=0)
    mask, usable = layer.pruning_mask(), layer.usable_params()
    path = tmp_path / ("model" if fmt == "savedmodel" else f"model{fmt}")
    model.save(str(path))
    keras.backend.clear_session()
    loaded = keras.models.load_model(str(path))
    new = loaded.get_layer("p")
    assert isinstance(new, PEPEmbedding)
    assert new.is_frozen is frozen and new.usable_params() == usable
    np.testing.assert_array_equal(new.pruning_mask(), mask)
    np.testing.assert_allclose(loaded.predict(X, verbose=0), expected, rtol=1e-6)
    assert new.get_config() == layer.get_config()


def test_checkpoint_round_trip(tmp_path):
    model, layer = _model()
    layer.freeze_mask(layer.pruning_mask() & (np.arange(4) < 2))
    table, mask = layer.embeddings.numpy().copy(), layer.pruning_mask()
    path = tf.train.Checkpoint(model=model).save(str(tmp_path / "ckpt"))
    other_model, other = _model(embeddings_initializer="zeros")
    assert not other.is_frozen
    tf.train.Checkpoint(model=other_model).restore(path).assert_existing_objects_matched()
    assert other.is_frozen
    np.testing.assert_array_equal(other.pruning_mask(), mask)
    np.testing.assert_array_equal(other.embeddings.numpy(), table)
    np.testing.assert_allclose(other_model(X).numpy(), model(X).numpy(), rtol=1e-6)


def test_global_norm_clipping_keeps_sparse_gradients_sparse_and_exact():
    opt = PEPAdam(0.1, global_clipnorm=2.0)
    # dense gradient this stands for: row 1 = [3, 0] + [1, 0] = [4, 0], row 2 = [0, 3]
    sparse = tf.IndexedSlices(
        tf.constant([[3.0, 0.0], [0.0, 3.0], [1.0, 0.0]]),
        tf.constant([1, 2, 1]),
        tf.constant([4, 2]),
    )
    dense = tf.constant([0.0, 0.0])  # norm sqrt(16 + 9) = 5
    clipped = opt._clip_gradients([sparse, None, dense])
    assert isinstance(clipped[0], tf.IndexedSlices) and clipped[1] is None
    np.testing.assert_allclose(
        tf.convert_to_tensor(clipped[0]).numpy(),
        tf.convert_to_tensor(sparse).numpy() * 2.0 / 5.0,
        rtol=1e-6,
    )
    small = [tf.IndexedSlices(tf.constant([[0.3, 0.4]]), tf.constant([0]), tf.constant([4, 2]))]
    np.testing.assert_allclose(opt._clip_gradients(small)[0].values.numpy(), [[0.3, 0.4]])


def test_sparse_updates_of_unknown_length_match_dense_updates():
    # ids of changing length in one traced function: the sparse update is padded to a
    # power-of-two length (zeros at row 0) and must equal the dense update.
    def run(dense):
        layer = PEPEmbedding(
            6, 2, threshold_init=0.0, embeddings_initializer=keras.initializers.Constant(0.7)
        )
        layer.build(None)
        opt = PEPAdam(0.1, threshold_lr=0.01, threshold_l2=0.1, l2=0.2)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.int32)])
        def step(ids):
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(layer(ids) * 1.5)
            grads = tape.gradient(loss, layer.trainable_weights)
            if dense:
                grads = [tf.convert_to_tensor(g) for g in grads]
            opt.apply_gradients(zip(grads, layer.trainable_weights, strict=True))

        for ids in ([0, 2, 2], [5], [1, 3, 4, 4, 4], [2, 0]):
            step(tf.constant(ids, tf.int32))
        return layer.embeddings.numpy(), layer.threshold.numpy()

    for sparse, dense in zip(run(False), run(True), strict=True):
        # the dense table gradient takes Keras's own Adam code: same maths, other rounding
        np.testing.assert_allclose(sparse, dense, rtol=2e-5)


def test_model_with_pep_adam_saves_and_resumes(tmp_path):
    model, layer = _model(threshold_init=-15.0)
    opt = PEPAdam(0.01, threshold_lr=0.05, threshold_l2=2e-5, l2=0.0)
    model.compile(optimizer=opt, loss="mse")
    model.fit(X, Y, epochs=1, batch_size=2, verbose=0)
    path = tmp_path / "model.keras"
    model.save(str(path))
    keras.backend.clear_session()
    loaded = keras.models.load_model(str(path))
    assert isinstance(loaded.optimizer, PEPAdam)
    assert (loaded.optimizer.threshold_lr, loaded.optimizer.threshold_l2) == (0.05, 2e-5)
    np.testing.assert_allclose(
        loaded.get_layer("p").threshold.numpy(), layer.threshold.numpy(), rtol=1e-6
    )
    # training continues: the thresholds keep rising by about threshold_lr per step
    before = loaded.get_layer("p").threshold.numpy().copy()
    loaded.fit(X, Y, epochs=1, batch_size=2, verbose=0)
    rise = loaded.get_layer("p").threshold.numpy() - before
    assert np.all(rise > 0.09) and np.all(rise < 0.101)
