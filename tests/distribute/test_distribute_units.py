"""In-process pieces of the tf.distribute support (no second device needed)."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import tensorflow as tf

from tfembsize.layers import BudgetedEmbedding, packed_table
from tfembsize.layers.packed_table import TableRows, pack_table
from tfembsize.layers.utils import gather_rows, is_sharded
from tfembsize.training.distributed import check_strategy


def test_table_rows_pack_in_chunks_like_the_dense_table(monkeypatch):
    monkeypatch.setattr(packed_table, "_CHUNK_ROWS", 3)  # several chunks per size class
    rng = np.random.default_rng(0)
    table = rng.normal(size=(11, 5)).astype(np.float32)
    sizes = np.array([1, 5, 2, 2, 3, 5, 1, 1, 4, 2, 5], np.int32)
    var = tf.Variable(table)
    for max_classes in (None, 2):
        dense = pack_table(table, sizes=sizes, max_classes=max_classes)
        chunked = pack_table(TableRows(var), sizes=sizes, max_classes=max_classes)
        assert dense.class_widths == chunked.class_widths
        for name, value in dense.arrays().items():
            np.testing.assert_array_equal(value, chunked.arrays()[name], err_msg=name)
        # Coordinates past a row's size are dropped: row 0 keeps only table[0, 0].
        restored = chunked.to_dense()
        np.testing.assert_array_equal(restored[0], [table[0, 0], 0, 0, 0, 0])
        np.testing.assert_array_equal(restored[1], table[1])


def test_compressing_a_budgeted_layer_reads_its_variable_not_a_masked_copy(monkeypatch):
    layer = BudgetedEmbedding(50, 8, sparsity=0.7, allocation="random", seed=3)
    layer.build(None)

    def refuse():
        raise AssertionError("masked_table() builds a dense mask; packing must not call it")

    monkeypatch.setattr(layer, "masked_table", refuse)
    packed = packed_table.pack_layer(layer)
    ids = np.arange(50)
    expected = np.asarray(layer.embeddings.numpy()) * (np.arange(8)[None] < layer.sizes[:, None])
    np.testing.assert_array_equal(packed.to_dense()[ids], expected)
    assert packed.usable_params == layer.usable_params() <= layer.max_params


def test_gather_rows_of_a_plain_variable_is_a_gather():
    var = tf.Variable(np.arange(12, dtype=np.float32).reshape(6, 2))
    got = gather_rows(var, tf.constant([5, 0, 5]))
    np.testing.assert_array_equal(got.numpy(), [[10, 11], [0, 1], [10, 11]])
    assert not is_sharded(var)


def test_logical_weights_join_shards_in_row_order():
    class Fake:
        def __init__(self):
            self.weights = [
                tf.Variable(np.zeros((2, 2)), name="u/embeddings/part_0"),
                tf.Variable(np.ones((1, 2)), name="u/embeddings/part_1"),
                tf.Variable(np.arange(3), name="u/sizes"),
                tf.Variable(np.full((1, 2), 7.0), name="i/embeddings/part_0"),
            ]

        def get_weights(self):
            return [v.numpy() for v in self.weights]

    compress_module = importlib.import_module("tfembsize.export.compress")
    joined = compress_module._logical_weights(Fake())
    assert [w.shape for w in joined] == [(3, 2), (3,), (1, 2)]
    np.testing.assert_array_equal(joined[0], [[0, 0], [0, 0], [1, 1]])


def test_train_bpr_refuses_a_hook_or_a_parameter_server_strategy():
    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    with pytest.raises(ValueError, match="hook.*MyHook.*OneDeviceStrategy"):

        class MyHook:
            pass

        check_strategy(strategy, MyHook(), refit=False)

    class ParameterServerStrategyV2:  # the class name TensorFlow's strategy has
        pass

    with pytest.raises(ValueError, match="ClusterCoordinator"):
        check_strategy(ParameterServerStrategyV2(), None, refit=False)
    check_strategy(strategy, None, refit=False)  # fine


def test_train_bpr_inside_a_one_device_strategy_equals_the_plain_loop():
    from tfembsize._keras import keras
    from tfembsize.data import synthetic
    from tfembsize.metrics import RankingEvaluator
    from tfembsize.models import MF, TrainConfig, train_bpr

    split = synthetic(30, 40, 500, seed=0).split(0.5, 0.25, 0.25, seed=1)
    evaluator = RankingEvaluator(split)
    config = TrainConfig(learning_rate=0.01, batch_size=32, max_steps=6, eval_every=3)
    config = config.replace(jit_compile=False)
    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    out = []
    for scope in (None, strategy):
        keras.utils.set_random_seed(5)
        if scope is None:
            model = MF.create(split.num_users, split.num_items, 4)
            res = train_bpr(model, split, evaluator, config=config)
        else:
            with scope.scope():
                model = MF.create(split.num_users, split.num_items, 4)
                res = train_bpr(model, split, evaluator, config=config)
        out.append((model.get_weights(), res.final_loss, res.steps))
    assert out[0][2] == out[1][2] == 6
    assert abs(out[0][1] - out[1][1]) < 1e-6
    for a, b in zip(out[0][0], out[1][0], strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_keras_environment_names_a_bad_strategy():
    from tfembsize.data import synthetic
    from tfembsize.models import MF
    from tfembsize.search import KerasEnvironment

    split = synthetic(30, 40, 500, seed=0).split(0.5, 0.25, 0.25, seed=1)
    with pytest.raises(TypeError, match="`strategy` must be a tf.distribute.Strategy.*'mirrored'"):
        KerasEnvironment(
            lambda: MF.create(split.num_users, split.num_items, 4),
            split,
            reference=False,
            strategy="mirrored",
        )
