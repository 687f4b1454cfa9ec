"""Every layer behaves as ``keras.layers.Embedding`` where a drop-in must: symbolic calls,
padding masks and output shapes, in whichever Keras TensorFlow resolved."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from tfembsize._keras import is_legacy_keras, keras
from tfembsize.layers import (
    BudgetedEmbedding,
    CompressedEmbedding,
    MaskedEmbedding,
    PEPEmbedding,
)


def _compressed(**kwargs) -> CompressedEmbedding:
    source = MaskedEmbedding(5, 4, **kwargs)
    source.assign_sizes([4, 3, 2, 1, 4])
    return CompressedEmbedding.from_layer(source)


FACTORIES = {
    "embedding": lambda **kw: keras.layers.Embedding(5, 4, **kw),
    "masked": lambda **kw: MaskedEmbedding(5, 4, **kw),
    "budgeted": lambda **kw: BudgetedEmbedding(5, 4, sparsity=0.5, **kw),
    "pep": lambda **kw: PEPEmbedding(5, 4, **kw),
    "compressed": _compressed,
}
OURS = [name for name in FACTORIES if name != "embedding"]


@pytest.mark.parametrize("name", OURS)
def test_symbolic_call_with_mask_zero_matches_embedding(name):
    ref = FACTORIES["embedding"](mask_zero=True)(keras.Input((3,), dtype="int32"))
    out = FACTORIES[name](mask_zero=True)(keras.Input((3,), dtype="int32"))
    assert tuple(out.shape) == tuple(ref.shape) == (None, 3, 4)
    mask, ref_mask = out._keras_mask, ref._keras_mask
    assert tuple(mask.shape) == tuple(ref_mask.shape) == (None, 3)
    assert tf.as_dtype(mask.dtype) == tf.bool


@pytest.mark.parametrize("name", OURS)
def test_padding_mask_reaches_the_next_layer(name):
    """A mask-aware average over a padded sequence skips the id-0 positions."""
    layer = FACTORIES[name](mask_zero=True)
    ids = keras.Input((3,), dtype="int32")
    pooled = keras.layers.GlobalAveragePooling1D()(layer(ids))
    model = keras.Model(ids, pooled)
    x = np.array([[1, 2, 0], [3, 0, 0]], dtype=np.int32)
    rows = layer(tf.constant(x)).numpy()
    want = np.stack([rows[0, :2].mean(axis=0), rows[1, :1].mean(axis=0)])
    np.testing.assert_allclose(model.predict(x, verbose=0), want, rtol=1e-6)
    np.testing.assert_array_equal(layer.compute_mask(tf.constant(x)).numpy(), x != 0)
    assert FACTORIES[name]().compute_mask(tf.constant(x)) is None


@pytest.mark.parametrize("name", OURS)
@pytest.mark.parametrize("shape", [(2, 3), (None, 3), (None,), (2, None, 5)])
def test_output_shape_has_embeddings_type_and_value(name, shape):
    ref = FACTORIES["embedding"]().compute_output_shape(shape)
    got = FACTORIES[name]().compute_output_shape(shape)
    assert type(got) is type(ref)
    assert type(got) is (tf.TensorShape if is_legacy_keras() else tuple)
    assert tuple(got) == tuple(ref) == (*shape, 4)


@pytest.mark.skipif(is_legacy_keras(), reason="ragged KerasTensors are a Keras 3 feature")
@pytest.mark.parametrize("name", OURS)
def test_ragged_symbolic_input_gives_ragged_output_as_embedding(name):
    ref = FACTORIES["embedding"]()(keras.Input((None,), dtype="int32", ragged=True))
    layer = FACTORIES[name]()
    inp = keras.Input((None,), dtype="int32", ragged=True)
    out = layer(inp)
    assert out.ragged and ref.ragged
    ids = tf.ragged.constant([[1, 2], [3]], dtype=tf.int32)
    got = keras.Model(inp, out)(ids)
    assert isinstance(got, tf.RaggedTensor)
    np.testing.assert_array_equal(got.flat_values.numpy(), layer(ids).flat_values.numpy())


@pytest.mark.parametrize("name", OURS)
def test_mixed_precision_policy_gives_float16_rows_in_both_call_modes(name):
    """Weights stay float32, rows come out in the compute dtype (as Embedding's)."""
    ids = tf.constant([[0, 3], [4, 1]])
    plain = FACTORIES[name]()
    mixed = FACTORIES[name](dtype="mixed_float16")
    want = plain(ids).numpy()
    mixed(ids)
    mixed.set_weights(plain.get_weights())
    for call in (mixed, tf.function(mixed.__call__)):
        got = call(ids)
        assert got.dtype == tf.float16
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-3, atol=1e-3)
    assert all(w.dtype != tf.float16 for w in mixed.weights)
