"""compression_report: exact byte counts from a model, a compressed model and an export."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
import tensorflow as tf
from export_helpers import ExportTestTwoTower

from tfembsize._keras import keras
from tfembsize.export import CompressionError, compress, compression_report, save_compressed
from tfembsize.layers import MaskedEmbedding
from tfembsize.layers.pep_embedding import PEPEmbedding

TABLE = np.arange(12, dtype=np.float32).reshape(4, 3)


def hand_model() -> ExportTestTwoTower:
    """Users: 4 x 3 table, sizes [3, 2, 1, 1]. Items: 6 x 3, PEP mask keeping 7 entries."""
    users = MaskedEmbedding(
        4, 3, embeddings_initializer=keras.initializers.Constant(TABLE), name="user_embedding"
    )
    items = PEPEmbedding(
        6,
        3,
        name="item_embedding",
        embeddings_initializer=keras.initializers.Constant(
            np.arange(1, 19, dtype=np.float32).reshape(6, 3)
        ),
    )
    model = ExportTestTwoTower(users, items)
    users.assign_sizes([3, 2, 1, 1])
    mask = np.zeros((6, 3), bool)
    mask[[0, 0, 1, 2, 3, 3, 5], [0, 2, 1, 1, 0, 1, 2]] = True
    items.freeze_mask(mask)
    return model


def check_hand_numbers(report):
    users, items = report.tables
    assert (users.name, users.rows, users.width, users.kind) == ("user_embedding", 4, 3, "prefix")
    assert (users.usable_params, users.stored_values, users.classes) == (7, 7, 3)
    assert (users.value_bytes, users.index_bytes, users.raw_bytes) == (28, 4, 32)
    assert users.dense_bytes == 48
    assert users.ratio == pytest.approx(32 / 48)
    assert users.bytes_per_usable_param == pytest.approx(32 / 28)
    # Items: row widths [2, 1, 1, 2, 0, 1] -> 7 values; row->slot and slot->row (scored
    # table) are 8-bit, 6 rows in 2 words each; 7 column indices, 8-bit, in 2 words.
    assert (items.kind, items.usable_params, items.stored_values) == ("sparse", 7, 7)
    assert (items.value_bytes, items.index_bytes) == (28, 8 + 8 + 8)
    assert report.raw_bytes == 32 + 52 and report.dense_bytes == 48 + 72
    assert report.usable_params == 14


def test_report_of_a_model_with_searchable_layers():
    report = compression_report(hand_model())
    check_hand_numbers(report)
    assert report.source == "model" and report.variables_bytes is None


def test_report_of_compressed_model_and_export_agree(tmp_path):
    model = hand_model()
    small = compress(model)
    from_small = compression_report(small)
    check_hand_numbers(from_small)
    result = save_compressed(model, tmp_path / "m", verify=False)
    from_path = compression_report(result.path)
    check_hand_numbers(from_path)
    assert [t.to_dict() for t in from_path.tables] == [t.to_dict() for t in from_small.tables]
    packed = small.user_embedding.packed()
    raw = b"".join(a.tobytes() for a in packed.arrays().values())
    assert from_path.tables[0].gzip_bytes == len(gzip.compress(raw, compresslevel=6, mtime=0))
    files = (tmp_path / "m" / "variables").iterdir()
    assert from_path.variables_bytes == sum(f.stat().st_size for f in files)
    assert from_path.graph_bytes == (tmp_path / "m" / "saved_model.pb").stat().st_size


def test_report_serialisation():
    report = compression_report(hand_model())
    data = json.loads(json.dumps(report.to_dict()))
    assert data["total"]["raw_bytes"] == 84
    assert data["tables"][0]["bytes_per_usable_param"] == pytest.approx(32 / 28)
    text = str(report)
    assert text.startswith("| table | rows |") and "| **total** |" in text
    assert "| user_embedding | 4 | 3 | prefix | 3 | 7 | 28 | 4 | 32 |" in text


def test_report_errors(tmp_path):
    with pytest.raises(CompressionError, match="no compressed or searchable embedding tables"):
        compression_report(keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)]))
    with pytest.raises(FileNotFoundError, match="is not a tfembsize export"):
        compression_report(tmp_path)


def test_max_classes_trades_padding_for_fewer_classes():
    model = hand_model()
    exact = compression_report(model).tables[0]
    one = compression_report(model, max_classes=1).tables[0]
    assert (exact.classes, one.classes) == (3, 1)
    assert one.stored_values == 12 and one.value_bytes == 48  # every row padded to width 3
    assert tf.reduce_all(
        tf.equal(
            compress(model, max_classes=1).embed_users(tf.range(4)), model.embed_users(tf.range(4))
        )
    )
