"""Export of ESAPN's ladder models: rows at their rungs, same outputs, served without tfembsize."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from tfembsize._keras import keras
from tfembsize.controllers import ESAPNConfig, ESAPNController, esapn_model, run_esapn
from tfembsize.data import synthetic
from tfembsize.export import (
    check_gpu_ready,
    compress,
    compression_report,
    read_metadata,
    save_compressed,
)
from tfembsize.layers import CompressedLadderEmbedding, LadderEmbedding
from tfembsize.layers.utils import model_usage
from tfembsize.models import MF

LADDER = (2, 4, 8, 16, 32)


@pytest.fixture(scope="module")
def trained():
    """MF over ladders after one short ESAPN pass: rows on several rungs, moving statistics."""
    split = synthetic(200, 300, 3000, seed=0).split(0.5, 0.25, 0.25, seed=42)
    keras.utils.set_random_seed(0)
    model = esapn_model(MF.create(split.num_users, split.num_items, 32))
    config = ESAPNConfig(
        ladder=LADDER,
        batch_size=64,
        policy_hidden=16,
        count_buckets=64,
        learning_rate=0.01,
        policy_learning_rate=1e-3,
        chunk_steps=8,
        seed=3,
    )
    original = ESAPNController.attach

    def attach(self, m):  # policies leaning towards grow: rows do grow in a short pass
        out = original(self, m)
        for side in self.sides:
            side.policy.network.output_bias.assign([0.0, 0.4])
        return out

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ESAPNController, "attach", attach)
        run_esapn(model, split, config)
    for layer in (model.user_embedding, model.item_embedding):
        assert len(np.unique(layer.rungs)) > 1  # several rungs in use
        assert np.abs(layer.moving_mean.numpy()).max() > 0  # trained statistics
    return model


def test_compress_stores_each_row_at_its_rung_and_gives_the_same_outputs(trained):
    model = trained
    small = compress(model)
    assert model.user_embedding is not small.user_embedding  # the original is untouched
    for side in ("user", "item"):
        ladder = getattr(model, f"{side}_embedding")
        packed_layer = getattr(small, f"{side}_embedding")
        assert isinstance(ladder, LadderEmbedding)
        assert isinstance(packed_layer, CompressedLadderEmbedding)
        packed = packed_layer.rows.packed()
        np.testing.assert_array_equal(packed.row_widths(), ladder.sizes)
        assert packed.values.size == ladder.sizes.sum() == packed_layer.rows.usable_params()
        np.testing.assert_array_equal(packed_layer.rungs, ladder.rungs)
        dense = packed.to_dense()
        for k, table in enumerate(ladder.tables):  # each row's values: its own rung's row
            rows = np.flatnonzero(ladder.rungs == k)
            np.testing.assert_array_equal(dense[rows, : LADDER[k]], table.numpy()[rows])
        assert packed_layer.overhead_params() == ladder.overhead_params()
        ids = tf.range(ladder.input_dim)
        np.testing.assert_array_equal(packed_layer(ids).numpy(), ladder(ids).numpy())
    users = tf.range(model.num_users)
    np.testing.assert_array_equal(small.embed_users(users).numpy(), model.embed_users(users))
    np.testing.assert_allclose(
        small.score_users(users).numpy(), model.score_users(users).numpy(), rtol=1e-6, atol=1e-6
    )
    # the usable parameters are counted once (by the rows tables)
    want = int(model.user_embedding.sizes.sum() + model.item_embedding.sizes.sum())
    assert model_usage(small)[0] == want


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    path = tmp_path_factory.mktemp("ladder") / "mf"
    return save_compressed(trained, path, k=5)


def test_the_export_serves_the_trained_model_and_is_smaller_than_dense(trained, exported):
    model = trained
    assert exported.signatures == (
        "serving_default",
        "serving_excluding",
        "embed_users",
        "embed_items",
    )
    assert exported.item_scoring == "representations"  # items lifted from their rungs
    served = tf.saved_model.load(exported.path)
    users = tf.constant([0, 7, 199], tf.int64)
    got = served.signatures["embed_users"](user_ids=users)["embeddings"].numpy()
    np.testing.assert_allclose(got, model.embed_users(users).numpy(), rtol=1e-6, atol=1e-6)
    top = served.signatures["serving_default"](user_ids=users, k=tf.constant(5))
    scores = model.score_users(users).numpy()
    np.testing.assert_array_equal(top["item_ids"].numpy(), np.argsort(-scores, axis=1)[:, :5])
    report = compression_report(exported.path)
    assert [t.name for t in report.tables] == ["user_embedding_rows", "item_embedding_rows"]
    layers = (model.user_embedding, model.item_embedding)
    for table, layer in zip(report.tables, layers, strict=True):
        assert table.usable_params == table.stored_values == int(layer.sizes.sum())
        assert table.dense_bytes == layer.input_dim * 32 * 4
        assert table.raw_bytes < table.dense_bytes / 2
    # everything the export stores (rows, maps, statistics) is below the dense tables' bytes
    assert report.variables_bytes < report.dense_bytes
    in_memory = compression_report(model)  # the same layout, computed from the model
    assert [t.raw_bytes for t in in_memory.tables] == [t.raw_bytes for t in report.tables]
    meta = read_metadata(exported.path)
    assert meta["model_class"] == "MF" and meta["num_users"] == model.num_users


_LOADER = textwrap.dedent(
    """
    import importlib.abc, json, sys

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "tfembsize" or name.startswith("tfembsize."):
                raise ImportError("tfembsize is blocked in this process")

    sys.meta_path.insert(0, Block())
    import tensorflow as tf

    loaded = tf.saved_model.load(sys.argv[1])
    users = tf.constant(json.loads(sys.argv[2]), tf.int64)
    vectors = loaded.signatures["embed_users"](user_ids=users)["embeddings"]
    top = loaded.signatures["serving_default"](user_ids=users, k=tf.constant(4))
    assert not any(m.startswith("tfembsize") for m in sys.modules)
    print(json.dumps({"vectors": vectors.numpy().tolist(),
                      "item_ids": top["item_ids"].numpy().tolist()}))
    """
)


def test_the_export_loads_in_a_process_without_tfembsize(trained, exported, tmp_path):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": ""}
    env.pop("TF_USE_LEGACY_KERAS", None)
    users = [0, 3, 150]
    proc = subprocess.run(
        [sys.executable, "-c", _LOADER, exported.path, json.dumps(users)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    ids = tf.constant(users)
    np.testing.assert_allclose(got["vectors"], trained.embed_users(ids).numpy(), atol=1e-6)
    scores = trained.score_users(ids).numpy()
    assert got["item_ids"] == np.argsort(-scores, axis=1)[:, :4].tolist()


def test_an_xla_compiled_export_is_gpu_ready(trained, tmp_path):
    result = save_compressed(trained, tmp_path / "xla", jit_compile=True)
    assert result.jit_compile is True
    served = tf.saved_model.load(result.path)
    items = tf.constant([0, 5, 299], tf.int64)
    got = served.signatures["embed_items"](item_ids=items)["embeddings"].numpy()
    np.testing.assert_allclose(got, trained.embed_items(items).numpy(), rtol=1e-5, atol=1e-6)
    report = check_gpu_ready(result.path)
    assert report.ok
    for signature in report.signatures:
        assert signature.jit_compiled is True and not signature.missing
    # the layer on its own compiles with XLA too
    layer = compress(trained).user_embedding
    compiled = tf.function(layer, jit_compile=True)
    ids = tf.range(trained.num_users)
    np.testing.assert_allclose(compiled(ids).numpy(), layer(ids).numpy(), rtol=1e-5, atol=1e-6)


def test_the_compressed_layer_round_trips_its_config():
    ladder = LadderEmbedding(7, (2, 4, 8), mask_zero=True, name="table")
    ladder.grow([1, 2, 2, 5])
    ladder.grow([2])
    ladder.gamma.assign(np.linspace(0.5, 1.5, 8))
    small = CompressedLadderEmbedding.from_layer(ladder)
    assert small.name == "table" and small.rows.name == "table_rows"
    assert small.rungs.tolist() == [0, 1, 2, 0, 0, 1, 0] and small.mask_zero
    again = CompressedLadderEmbedding.from_config(small.get_config())
    again.set_weights(small.get_weights())
    ids = tf.constant([[0, 2], [5, 6]])
    np.testing.assert_array_equal(again(ids).numpy(), ladder(ids).numpy())
    ragged = tf.ragged.constant([[1], [2, 3, 4]])
    np.testing.assert_array_equal(small(ragged).flat_values.numpy(), ladder(ragged).flat_values)
    assert small.compute_mask(ids).numpy().tolist() == [[False, True], [True, True]]
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"table"):
        small(tf.constant([7]))
    bad = dict(small.get_config()["rows"], class_widths=[2, 3, 8])
    with pytest.raises(ValueError, match=r"class widths from the ladder \[2, 4, 8\]"):
        CompressedLadderEmbedding(7, (2, 4, 8), rows=bad)
