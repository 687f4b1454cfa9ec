"""compress(model): functional, sequential, subclassed and nested models; backbones; errors."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from export_helpers import (
    ExportTestTwoTower,
    budgeted_two_tower,
    normal_init,
    random_sizes,
)

from tfembsize._keras import is_legacy_keras, keras, register_serializable
from tfembsize.export import CompressionError, compress, compress_layer, searchable_layers
from tfembsize.layers import BudgetedEmbedding, MaskedEmbedding
from tfembsize.layers.compressed_embedding import CompressedEmbedding
from tfembsize.layers.pep_embedding import PEPEmbedding
from tfembsize.layers.utils import iter_layers


def kinds(model) -> list[str]:
    return sorted(type(layer).__name__ for layer in iter_layers(model))


def assert_no_dense_tables(model):
    assert not searchable_layers(model)
    names = [getattr(w, "path", w.name) for w in model.weights]
    assert not any("embeddings" in n or "sizes" in n for n in names), names


# Functional and Sequential ----------------------------------------------------------------------


def test_functional_model(rng):
    inputs = keras.Input((3,), dtype="int32")
    emb = MaskedEmbedding(20, 6, name="emb", embeddings_initializer=normal_init(0))
    x = keras.layers.Flatten()(emb(inputs))
    model = keras.Model(inputs, keras.layers.Dense(2, name="head")(x))
    random_sizes(emb, rng)
    ids = tf.constant(rng.integers(0, 20, size=(5, 3)))
    before = [w.copy() for w in model.get_weights()]
    small = compress(model)
    np.testing.assert_allclose(small(ids).numpy(), model(ids).numpy(), atol=1e-6, rtol=0)
    assert "CompressedEmbedding" in kinds(small) and "MaskedEmbedding" not in kinds(small)
    assert_no_dense_tables(small)
    # The original is untouched: same layer objects, same weights, independent copies.
    assert model.get_layer("emb") is emb
    for a, b in zip(before, model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    small.get_layer("head").kernel.assign(tf.zeros([18, 2]))
    assert np.abs(model.get_layer("head").kernel.numpy()).sum() > 0


@pytest.mark.parametrize("with_input", [True, False])
def test_sequential_model(rng, with_input):
    layers = [
        BudgetedEmbedding(
            20,
            8,
            sparsity=0.5,
            allocation="random",
            seed=2,
            name="emb",
            embeddings_initializer=normal_init(1),
        ),
        keras.layers.GlobalAveragePooling1D(),
        keras.layers.Dense(3),
    ]
    if with_input:
        layers.insert(0, keras.Input((4,), dtype="int32"))
    model = keras.Sequential(layers)
    ids = tf.constant(rng.integers(0, 20, size=(6, 4)))
    expected = model(ids).numpy()
    small = compress(model)
    assert isinstance(small, keras.Sequential)
    np.testing.assert_allclose(small(ids).numpy(), expected, atol=1e-6, rtol=0)
    assert_no_dense_tables(small)


@register_serializable
class ExportTestTower(keras.layers.Layer):
    """A subclassed layer that holds a searchable table (built from its config)."""

    def __init__(self, rows=12, width=4, **kwargs):
        super().__init__(**kwargs)
        self.rows, self.width = rows, width
        self.table = MaskedEmbedding(
            rows, width, name=f"{self.name}_table", embeddings_initializer=normal_init(9)
        )
        self.proj = keras.layers.Dense(2, name=f"{self.name}_proj")

    def build(self, input_shape):
        self.table.build(None)
        self.proj.build((None, self.width))
        self.built = True

    def call(self, ids):
        return self.proj(self.table(ids))

    def get_config(self):
        return {**super().get_config(), "rows": self.rows, "width": self.width}


def test_functional_model_with_subclassed_layer_holding_a_table(rng):
    inputs = keras.Input((), dtype="int32")
    tower = ExportTestTower(name="tower")
    model = keras.Model(inputs, tower(inputs))
    random_sizes(tower.table, rng)
    ids = tf.constant(rng.integers(0, 12, size=7))
    small = compress(model)
    np.testing.assert_allclose(small(ids).numpy(), model(ids).numpy(), atol=1e-6, rtol=0)
    assert_no_dense_tables(small)
    assert isinstance(tower.table, MaskedEmbedding)


# Subclassed --------------------------------------------------------------------------------------


def test_subclassed_retrieval_model(retrieval_model, rng):
    model = retrieval_model
    pairs = tf.constant(np.stack([rng.integers(0, 30, 9), rng.integers(0, 50, 9)], 1))
    small = compress(model)
    assert isinstance(small, ExportTestTwoTower) and small is not model
    np.testing.assert_allclose(small(pairs).numpy(), model(pairs).numpy(), atol=1e-6, rtol=0)
    ids = tf.range(30)
    np.testing.assert_array_equal(small.embed_users(ids).numpy(), model.embed_users(ids).numpy())
    assert isinstance(small.user_embedding, CompressedEmbedding)
    # "auto" scoring: the item table is what embed_items returns, so it keeps slot -> row.
    assert small.item_embedding.scoring and not small.user_embedding.scoring
    assert isinstance(model.user_embedding, MaskedEmbedding)
    assert_no_dense_tables(small)
    stored = sum(int(np.prod(w.shape)) for w in small.weights)
    assert stored < sum(int(np.prod(w.shape)) for w in model.weights)


@register_serializable
class ExportTestNested(keras.Model):
    """Tables in a list, a dict, a nested functional model and a shared attribute."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.tables = [
            MaskedEmbedding(10, 4, name="a", embeddings_initializer=normal_init(1)),
            keras.layers.Dense(3, name="d"),
        ]
        self.by_name = {"b": MaskedEmbedding(8, 4, name="b", embeddings_initializer=normal_init(2))}
        self.alias = self.tables[0]  # the same layer under two attributes
        inp = keras.Input((), dtype="int32")
        self.sub = keras.Model(
            inp,
            MaskedEmbedding(6, 4, name="c", embeddings_initializer=normal_init(3))(inp),
            name="sub",
        )

    def call(self, ids):
        a = self.tables[0](ids[:, 0]) + self.alias(ids[:, 0])
        return self.tables[1](a * self.by_name["b"](ids[:, 1]) + self.sub(ids[:, 2]))

    def get_config(self):
        return super().get_config() if not is_legacy_keras() else {"name": self.name}


def test_subclassed_model_with_containers_nested_and_shared_layers(rng):
    model = ExportTestNested(name="nested")
    ids = tf.constant(np.stack([rng.integers(0, 6, 5)] * 3, 1))
    model(ids)
    for name in ("a", "b"):
        random_sizes(searchable_layers(model)[name], rng)
    random_sizes(model.sub.layers[1], rng)
    small = compress(model)
    np.testing.assert_allclose(small(ids).numpy(), model(ids).numpy(), atol=1e-6, rtol=0)
    assert small.alias is small.tables[0]  # sharing is preserved
    assert isinstance(small.by_name["b"], CompressedEmbedding)
    assert kinds(small).count("CompressedEmbedding") == 3
    assert_no_dense_tables(small)


class ExportTestNoConfig(keras.Model):
    def __init__(self, table, **kwargs):
        super().__init__(**kwargs)
        self.table = table

    def call(self, ids):
        return self.table(ids)


def test_subclassed_model_without_config_gets_a_clear_error():
    model = ExportTestNoConfig(MaskedEmbedding(5, 2, name="t"))
    model(tf.constant([0]))
    with pytest.raises(CompressionError, match="could not be rebuilt.*Implement get_config"):
        compress(model)


# Backbones ----------------------------------------------------------------------------------------


def test_mf_lightgcn_and_pep_backbones(rng):
    from tfembsize.data import synthetic
    from tfembsize.models import MF, LightGCN

    data = synthetic(25, 40, 300, seed=0)
    ids = tf.range(25)
    mf = MF.create(
        25, 40, 16, embedding_cls=BudgetedEmbedding, sparsity=0.8, allocation="random", seed=4
    )
    lgcn = LightGCN.create(data, 16, num_layers=2)
    for layer in (lgcn.user_embedding, lgcn.item_embedding):
        random_sizes(layer, rng)
    pep = MF.create(25, 40, 16, embedding_cls=PEPEmbedding, threshold_init=-5.0)
    pep.item_embedding.freeze_mask(rng.random((40, 16)) < 0.2)
    for model, scoring in ((mf, True), (lgcn, False), (pep, True)):
        small = compress(model)
        assert type(small) is type(model)
        np.testing.assert_allclose(
            small.embed_users(ids).numpy(), model.embed_users(ids).numpy(), atol=1e-6, rtol=0
        )
        np.testing.assert_allclose(
            small.score_users(ids).numpy(), model.score_users(ids).numpy(), atol=1e-5, rtol=0
        )
        assert small.item_embedding.scoring is scoring
        assert_no_dense_tables(small)
    assert compress(pep).item_embedding.kind == "sparse"


def test_budgeted_frequency_allocation_round_trip(rng):
    model = budgeted_two_tower(rng)
    small = compress(model, max_classes=2)
    assert len(small.user_embedding.class_widths) <= 2
    ids = tf.range(50)
    np.testing.assert_array_equal(small.embed_items(ids).numpy(), model.embed_items(ids).numpy())


# Options and errors -------------------------------------------------------------------------------


def test_scoring_option(retrieval_model):
    small = compress(retrieval_model, scoring=["user_embedding"])
    assert small.user_embedding.scoring and not small.item_embedding.scoring
    assert compress(retrieval_model, scoring=True).user_embedding.scoring
    with pytest.raises(CompressionError, match=r"not searchable layers of the model: \['nope'\]"):
        compress(retrieval_model, scoring=["nope"])
    with pytest.raises(CompressionError, match="`scoring` must be"):
        compress(retrieval_model, scoring="items")


def test_model_without_searchable_layers():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2)])
    with pytest.raises(CompressionError, match="holds no searchable embedding layer"):
        compress(model)


class ExportTestOpaque(keras.layers.Layer):
    _tfembsize_searchable = True

    def call(self, ids):
        return tf.cast(ids, tf.float32)


def test_unknown_searchable_layer_type():
    inputs = keras.Input((), dtype="int32")
    model = keras.Model(inputs, ExportTestOpaque(name="opaque")(inputs))
    with pytest.raises(CompressionError, match="'opaque' .*does not know how to compress it"):
        compress(model)


def test_compress_layer_hook():
    class Ladder(keras.layers.Layer):
        def _tfembsize_compress(self, *, scoring, max_classes, positions):
            return keras.layers.Dense(1, name="replacement")

    assert compress_layer(Ladder(name="l")).name == "replacement"


def test_duplicate_searchable_names():
    model = ExportTestTwoTower(MaskedEmbedding(3, 2, name="t"), MaskedEmbedding(4, 2, name="t"))
    with pytest.raises(CompressionError, match="Two searchable layers are named"):
        compress(model)
