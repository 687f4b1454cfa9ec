"""Small models and helpers shared by the export tests (imported as `export_helpers`)."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tfembsize._keras import keras, register_serializable
from tfembsize.layers import BudgetedEmbedding, MaskedEmbedding


def random_sizes(layer, rng: np.random.Generator, low: int = 1) -> np.ndarray:
    """Assigns random sizes in [low, output_dim] to a searchable layer and returns them."""
    sizes = rng.integers(low, layer.output_dim + 1, size=layer.input_dim)
    layer.assign_sizes(sizes)
    return sizes


def normal_init(seed: int):
    return keras.initializers.RandomNormal(0.0, 1.0, seed=seed)


@register_serializable
class ExportTestTwoTower(keras.Model):
    """A minimal retrieval model: two tables, dot-product score, retrieval protocol."""

    def __init__(self, user_embedding, item_embedding, **kwargs):
        super().__init__(**kwargs)
        if isinstance(user_embedding, dict):
            user_embedding = keras.layers.deserialize(user_embedding)
        if isinstance(item_embedding, dict):
            item_embedding = keras.layers.deserialize(item_embedding)
        self.user_embedding = user_embedding
        self.item_embedding = item_embedding
        self.num_users = int(user_embedding.input_dim)
        self.num_items = int(item_embedding.input_dim)
        for layer in (user_embedding, item_embedding):
            if not layer.built:
                layer(tf.zeros([1], tf.int32))

    def embed_users(self, ids):
        return self.user_embedding(ids)

    def embed_items(self, ids):
        return self.item_embedding(ids)

    def call(self, inputs):
        return tf.reduce_sum(self.embed_users(inputs[:, 0]) * self.embed_items(inputs[:, 1]), -1)

    def get_config(self):
        config = super().get_config()
        config.update(
            user_embedding=keras.layers.serialize(self.user_embedding),
            item_embedding=keras.layers.serialize(self.item_embedding),
        )
        return config


def two_tower(
    num_users: int = 30,
    num_items: int = 50,
    dim: int = 8,
    *,
    seed: int = 0,
    cls=MaskedEmbedding,
    **layer_kwargs,
) -> ExportTestTwoTower:
    user = cls(
        num_users,
        dim,
        name="user_embedding",
        embeddings_initializer=normal_init(seed),
        **layer_kwargs,
    )
    item = cls(
        num_items,
        dim,
        name="item_embedding",
        embeddings_initializer=normal_init(seed + 1),
        **layer_kwargs,
    )
    return ExportTestTwoTower(user, item, name="two_tower")


def budgeted_two_tower(rng: np.random.Generator) -> ExportTestTwoTower:
    """A two-tower model with BET-like frequency allocations at sparsity 0.75."""
    freq_u = rng.pareto(1.5, size=30) + 1
    freq_i = rng.pareto(1.5, size=50) + 1
    user = BudgetedEmbedding(
        30,
        8,
        sparsity=0.75,
        allocation="frequency",
        frequencies=freq_u,
        name="user_embedding",
        embeddings_initializer=normal_init(3),
    )
    item = BudgetedEmbedding(
        50,
        8,
        sparsity=0.75,
        allocation="frequency",
        frequencies=freq_i,
        name="item_embedding",
        embeddings_initializer=normal_init(4),
    )
    return ExportTestTwoTower(user, item, name="budgeted")
