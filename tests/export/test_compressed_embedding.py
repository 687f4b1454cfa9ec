"""CompressedEmbedding and its storage format: exact layout, lookups, scores, config, errors."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from tfembsize._keras import keras
from tfembsize.layers import MaskedEmbedding
from tfembsize.layers.compressed_embedding import (
    CompressedEmbedding,
    _unpack_all_tf,
    _unpack_tf,
    bits_for,
    pack_table,
    pack_uint,
    unpack_uint,
)
from tfembsize.layers.pep_embedding import PEPEmbedding

# A 4 x 3 table 0..11 with sizes [3, 2, 1, 1]: the masked table is
#   [[0, 1, 2], [3, 4, 0], [6, 0, 0], [9, 0, 0]].
TABLE = np.arange(12, dtype=np.float32).reshape(4, 3)
SIZES = [3, 2, 1, 1]
MASKED = np.array([[0, 1, 2], [3, 4, 0], [6, 0, 0], [9, 0, 0]], dtype=np.float32)

# An unstructured mask on the same table: rows keep 2, 0, 1 and 3 entries.
MASK = np.array([[1, 0, 1], [0, 0, 0], [0, 1, 0], [1, 1, 1]], dtype=bool)


def masked_layer(sizes=SIZES) -> MaskedEmbedding:
    layer = MaskedEmbedding(
        4, 3, embeddings_initializer=keras.initializers.Constant(TABLE), name="m"
    )
    layer.assign_sizes(sizes)
    return layer


# Storage format, hand-computed -----------------------------------------------------------------


def test_prefix_layout_hand_computed():
    packed = pack_table(TABLE, sizes=np.array(SIZES))
    # Classes by width: rows 2, 3 (width 1), row 1 (width 2), row 0 (width 3).
    assert packed.kind == "prefix"
    assert packed.class_widths == (1, 2, 3)
    assert packed.class_counts == (2, 1, 1)
    np.testing.assert_array_equal(packed.values, [6, 9, 3, 4, 0, 1, 2])
    # row -> slot = [3, 2, 0, 1], 8 bits each, one int32 word, low byte first.
    assert packed.index_bits == 8
    assert packed.row_to_slot.tolist() == [3 | 2 << 8 | 0 << 16 | 1 << 24]
    assert packed.slot_to_row.size == packed.columns.size == packed.bitmask.size == 0
    assert packed.value_bytes() == 7 * 4
    assert packed.index_bytes() == 4
    np.testing.assert_array_equal(packed.to_dense(), MASKED)
    np.testing.assert_array_equal(packed.row_widths(), SIZES)


def test_sparse_layout_hand_computed():
    packed = pack_table(TABLE, mask=MASK, scoring=True)
    assert packed.kind == "sparse"
    # Widths 0 (row 1), 1 (row 2), 2 (row 0), 3 (row 3); with output_dim 3 a bitmask costs
    # 4 bytes per row and a column list w bytes, so every class stores column lists.
    assert packed.class_widths == (0, 1, 2, 3)
    assert packed.class_counts == (1, 1, 1, 1)
    assert packed.colist_classes == 4
    np.testing.assert_array_equal(packed.values, [7, 0, 2, 9, 10, 11])
    cols = unpack_uint(packed.columns, 8, 6)
    np.testing.assert_array_equal(cols, [1, 0, 2, 0, 1, 2])
    np.testing.assert_array_equal(unpack_uint(packed.slot_to_row, 8, 4), [1, 2, 0, 3])
    assert packed.index_bytes() == 4 + 4 + 8  # row->slot, slot->row, 6 columns in 2 words
    np.testing.assert_array_equal(packed.to_dense(), TABLE * MASK)


def test_sparse_layout_uses_bitmasks_for_dense_rows():
    rng = np.random.default_rng(0)
    table = rng.normal(size=(40, 64)).astype(np.float32)
    mask = rng.random((40, 64)) < np.linspace(0.02, 0.9, 40)[:, None]
    packed = pack_table(table, mask=mask, positions="smallest")
    widths = np.array(packed.class_widths)
    # A 64-wide bitmask is 8 bytes: column lists for widths < 8, bitmasks from 8 on.
    assert packed.colist_classes == int((widths < 8).sum())
    assert 0 < packed.colist_classes < len(widths)
    n_bitmask_rows = int(np.array(packed.class_counts)[widths >= 8].sum())
    assert packed.bitmask.size == 2 * n_bitmask_rows
    nnz_colist = int((np.array(packed.class_counts) * widths)[widths < 8].sum())
    assert packed.columns.size == -(-nnz_colist // 4)
    np.testing.assert_array_equal(packed.to_dense(), table * mask)
    # The default stores column lists for every row (fastest to score), bitmask everywhere
    # is the other extreme; all three hold the same table.
    columns = pack_table(table, mask=mask)
    assert columns.colist_classes == len(columns.class_widths) and columns.bitmask.size == 0
    bitmask = pack_table(table, mask=mask, positions="bitmask")
    assert bitmask.colist_classes == 0 and bitmask.columns.size == 0
    assert packed.index_bytes() < min(columns.index_bytes(), bitmask.index_bytes())
    for other in (columns, bitmask):
        np.testing.assert_array_equal(other.to_dense(), table * mask)


def test_prefix_shaped_mask_is_stored_as_prefix():
    packed = pack_table(TABLE, mask=np.arange(3)[None, :] < np.array(SIZES)[:, None])
    assert packed.kind == "prefix"
    np.testing.assert_array_equal(packed.to_dense(), MASKED)


def test_max_classes_pads_rows_to_their_class_width():
    sizes = np.array([1, 2, 3, 3, 8, 8, 8, 8])
    table = np.ones((8, 8), np.float32)
    packed = pack_table(table, sizes=sizes, max_classes=2)
    # Cheapest split into two classes: {1, 2, 3, 3} at width 3 and {8 x 4} at width 8.
    assert packed.class_widths == (3, 8)
    assert packed.class_counts == (4, 4)
    assert packed.values.size == 4 * 3 + 4 * 8
    dense = packed.to_dense()
    np.testing.assert_array_equal(dense, np.arange(8)[None, :] < sizes[:, None])


@pytest.mark.parametrize("bits", [8, 16, 32])
def test_pack_uint_round_trip(bits):
    rng = np.random.default_rng(bits)
    values = rng.integers(0, 2**bits if bits < 32 else 2**32, size=37, dtype=np.int64)
    words = pack_uint(values, bits)
    assert words.dtype == np.int32 and words.size == -(-37 * bits // 32)
    np.testing.assert_array_equal(unpack_uint(words, bits, 37), values)


@pytest.mark.parametrize("bits", [8, 16, 32])
def test_graph_unpacking_matches_numpy(bits):
    # The graph side reads the same words (bitcast fast path on little-endian hosts, also
    # under XLA) as the numpy packer wrote them.
    rng = np.random.default_rng(bits)
    values = rng.integers(0, 2 ** min(bits, 31), size=37, dtype=np.int64)
    values[:2] = [0, 2 ** min(bits, 31) - 1]
    words = tf.constant(pack_uint(values, bits))
    for fn in (_unpack_all_tf, tf.function(_unpack_all_tf, jit_compile=True)):
        got = fn(words, bits, 37)
        assert got.dtype == tf.int32
        np.testing.assert_array_equal(got.numpy(), values)
    index = tf.constant([[36, 0], [5, 17]], tf.int32)
    np.testing.assert_array_equal(_unpack_tf(words, index, bits).numpy(), values[index.numpy()])


def test_bits_for():
    assert [bits_for(v) for v in (0, 255, 256, 65535, 65536)] == [8, 8, 16, 16, 32]


# Lookups ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ids",
    [2, [1, 0, 3], [[1, 2], [0, 1]], [[[3, 1], [0, 0]], [[2, 2], [1, 3]]]],
    ids=["rank0", "rank1", "rank2", "rank3"],
)
def test_lookup_hand_computed_any_rank(ids):
    layer = CompressedEmbedding.from_layer(masked_layer())
    out = layer(tf.constant(ids))
    np.testing.assert_array_equal(out.numpy(), MASKED[np.array(ids)])
    assert out.shape == (*np.shape(ids), 3)
    sparse = CompressedEmbedding.from_packed(pack_table(TABLE, mask=MASK), name="s")
    np.testing.assert_array_equal(sparse(tf.constant(ids)).numpy(), (TABLE * MASK)[np.array(ids)])


def test_lookup_ragged_and_int64():
    layer = CompressedEmbedding.from_layer(masked_layer())
    ragged = tf.ragged.constant([[0, 3], [], [1]], dtype=tf.int64)
    out = layer(ragged)
    assert isinstance(out, tf.RaggedTensor)
    np.testing.assert_array_equal(out.flat_values.numpy(), MASKED[[0, 3, 1]])


@pytest.mark.parametrize("max_classes", [None, 3, 1])
@pytest.mark.parametrize("seed", [0, 1])
def test_random_prefix_plans_equal_masked_layer(seed, max_classes):
    rng = np.random.default_rng(seed)
    n, d = 300, 16
    layer = MaskedEmbedding(
        n, d, embeddings_initializer=keras.initializers.RandomNormal(seed=seed), name="t"
    )
    layer.assign_sizes(rng.integers(1, d + 1, size=n))
    small = CompressedEmbedding.from_layer(layer, max_classes=max_classes)
    assert small.index_bits == 16  # 300 rows
    ids = tf.constant(rng.integers(0, n, size=(7, 5)))
    expected = layer(ids).numpy()
    np.testing.assert_allclose(small(ids).numpy(), expected, atol=1e-6, rtol=0)
    np.testing.assert_allclose(tf.function(small)(ids).numpy(), expected, atol=1e-6, rtol=0)
    compiled = tf.function(lambda x: small(x), jit_compile=True)
    np.testing.assert_allclose(compiled(ids).numpy(), expected, atol=1e-6, rtol=0)
    np.testing.assert_array_equal(small.masked_table().numpy(), layer.masked_table().numpy())
    assert small.usable_params() == layer.usable_params()


@pytest.mark.parametrize(
    ("max_classes", "positions"), [(None, "columns"), (4, "smallest"), (None, "bitmask")]
)
def test_random_unstructured_masks_equal_masked_table(max_classes, positions):
    rng = np.random.default_rng(7)
    n, d = 120, 64
    table = rng.normal(size=(n, d)).astype(np.float32)
    # Row densities from 0 to 1: empty rows, column lists and bitmasks all occur.
    mask = rng.random((n, d)) < np.linspace(0.0, 1.0, n)[:, None]
    small = CompressedEmbedding.from_packed(
        pack_table(table, mask=mask, max_classes=max_classes, positions=positions), name="pep"
    )
    ids = tf.constant(rng.integers(0, n, size=(9, 4)))
    expected = (table * mask)[ids.numpy()]
    np.testing.assert_allclose(small(ids).numpy(), expected, atol=1e-6, rtol=0)
    compiled = tf.function(lambda x: small(x), jit_compile=True)
    np.testing.assert_allclose(compiled(ids).numpy(), expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("frozen", [False, True])
def test_pep_layer_compresses_to_its_lookups(frozen):
    rng = np.random.default_rng(3)
    layer = PEPEmbedding(
        60,
        16,
        threshold_init=0.0,
        name="pep",
        embeddings_initializer=keras.initializers.RandomNormal(0.0, 1.0, seed=5),
    )
    layer(tf.constant([0]))
    if frozen:
        layer.freeze_mask(rng.random((60, 16)) < 0.3)
    mask = layer.pruning_mask()
    assert 0.1 < mask.mean() < 0.9  # genuinely unstructured
    small = CompressedEmbedding.from_layer(layer, scoring=True)
    assert small.kind == "sparse"
    assert small.usable_params() == layer.usable_params() == int(mask.sum())
    ids = tf.constant(rng.integers(0, 60, size=(5, 3)))
    np.testing.assert_allclose(small(ids).numpy(), layer(ids).numpy(), atol=1e-6, rtol=0)


def test_out_of_range_ids_raise():
    layer = CompressedEmbedding.from_layer(masked_layer())
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"ids must be in \[0, input_dim=4\)"):
        layer(tf.constant([0, 4]))
    with pytest.raises(tf.errors.InvalidArgumentError, match="Received id -1"):
        layer(tf.constant([-1]))
    with pytest.raises(tf.errors.InvalidArgumentError, match="input_dim=4"):
        tf.function(layer)(tf.constant([1, 9]))


def test_mask_zero_and_output_shape():
    source = MaskedEmbedding(4, 3, mask_zero=True, name="z")
    layer = CompressedEmbedding.from_layer(source)
    assert layer.mask_zero
    np.testing.assert_array_equal(
        layer.compute_mask(tf.constant([[0, 2]])).numpy(), [[False, True]]
    )
    assert layer.compute_output_shape((2, 5)) == (2, 5, 3)


# Whole-table scoring -----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["prefix", "sparse", "sparse-smallest"])
def test_scores_and_top_k_match_dense_products(kind):
    rng = np.random.default_rng(11)
    n, d = 100, 12
    table = rng.normal(size=(n, d)).astype(np.float32)
    if kind == "prefix":
        sizes = rng.integers(1, d + 1, size=n)
        packed = pack_table(table, sizes=sizes, scoring=True)
        dense = table * (np.arange(d)[None, :] < sizes[:, None])
    else:
        mask = rng.random((n, d)) < rng.random((n, 1))
        positions = "smallest" if kind.endswith("smallest") else "columns"
        packed = pack_table(table, mask=mask, scoring=True, positions=positions)
        dense = table * mask
    layer = CompressedEmbedding.from_packed(packed, name="items")
    big = rng.normal(size=(layer.small_batch + 4, d)).astype(np.float32)  # expanded path
    np.testing.assert_allclose(
        layer.scores(tf.constant(big)).numpy(), big @ dense.T, atol=1e-5, rtol=0
    )
    q = rng.normal(size=(6, d)).astype(np.float32)  # small batch: gathered path
    ref = q @ dense.T
    np.testing.assert_allclose(layer.scores(tf.constant(q)).numpy(), ref, atol=1e-5, rtol=0)
    ids, scores = layer.top_k(tf.constant(q), 10)
    np.testing.assert_array_equal(ids.numpy(), np.argsort(-ref, axis=1, kind="stable")[:, :10])
    np.testing.assert_allclose(scores.numpy(), -np.sort(-ref, axis=1)[:, :10], atol=1e-5)
    compiled = tf.function(lambda x, k: layer.top_k(x, k), jit_compile=True)
    np.testing.assert_array_equal(compiled(tf.constant(q), tf.constant(10))[0].numpy(), ids)


def test_top_k_needs_scoring():
    layer = CompressedEmbedding.from_layer(masked_layer())
    with pytest.raises(ValueError, match="compressed with scoring=False"):
        layer.top_k(tf.ones([1, 3]), 2)


# Config and saving -------------------------------------------------------------------------------


def test_config_round_trip_and_set_weights():
    layer = CompressedEmbedding.from_layer(masked_layer(), scoring=True)
    config = layer.get_config()
    assert config["class_widths"] == [1, 2, 3] and config["scoring"] is True
    clone = CompressedEmbedding.from_config(config)
    assert clone.get_config() == config
    np.testing.assert_array_equal(clone(tf.constant([0, 1, 2, 3])).numpy(), np.zeros((4, 3)))
    clone.set_weights(layer.get_weights())
    np.testing.assert_array_equal(clone(tf.constant([0, 1, 2, 3])).numpy(), MASKED)
    assert not clone.trainable_weights
    assert [w.shape[0] for w in layer.weights] == [7, 1, 1]  # values, row->slot, slot->row


def test_keras_model_save_and_load(tmp_path):
    small = CompressedEmbedding.from_packed(pack_table(TABLE, mask=MASK), name="s")
    inputs = keras.Input((2,), dtype="int32")
    model = keras.Model(inputs, keras.layers.Flatten()(small(inputs)))
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    ids = tf.constant([[0, 3], [2, 1]])
    np.testing.assert_array_equal(loaded(ids).numpy(), model(ids).numpy())


def test_set_packed_rejects_other_structure():
    layer = CompressedEmbedding.from_layer(masked_layer())
    other = pack_table(TABLE, sizes=np.array([3, 3, 1, 1]))
    with pytest.raises(ValueError, match="does not match the layer's structure"):
        layer.set_packed(other)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"kind": "dense"}, "`kind` must be one of"),
        ({"class_widths": [2, 1], "class_counts": [2, 2]}, "strictly increasing"),
        ({"class_counts": [2, 1, 2]}, "sum to input_dim=4"),
        ({"class_widths": [1, 2, 4]}, "strictly increasing"),
        ({"index_bits": 12}, "`index_bits` must be 8, 16 or 32"),
    ],
)
def test_invalid_structure_is_rejected(kwargs, match):
    args = {
        "kind": "prefix",
        "class_widths": [1, 2, 3],
        "class_counts": [2, 1, 1],
        "usable_params": 7,
    }
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        CompressedEmbedding(4, 3, **args)


def test_pack_table_rejects_bad_arguments():
    with pytest.raises(ValueError, match="exactly one of `sizes` and `mask`"):
        pack_table(TABLE)
    with pytest.raises(ValueError, match=r"`mask` must have the table's shape \(4, 3\)"):
        pack_table(TABLE, mask=np.ones((4, 2), bool))
    with pytest.raises(ValueError, match=r"`sizes` must lie in \[0, 3\]"):
        pack_table(TABLE, sizes=np.array([1, 2, 3, 4]))
    with pytest.raises(ValueError, match="`max_classes` must be a positive integer"):
        pack_table(TABLE, sizes=np.array(SIZES), max_classes=0)
    with pytest.raises(ValueError, match="`positions` must be one of"):
        pack_table(TABLE, mask=MASK, positions="csr")


def test_from_layer_rejects_unknown_layers():
    with pytest.raises(TypeError, match="exposes neither"):
        CompressedEmbedding.from_layer(keras.layers.Dense(2, name="dense"))
