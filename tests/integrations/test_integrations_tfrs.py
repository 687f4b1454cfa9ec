"""TFRS two-tower integration (tf-keras only) and the clear error under Keras 3."""

from __future__ import annotations

import importlib
import sys

import numpy as np
import pytest
import tensorflow as tf

from tfembsize._keras import is_legacy_keras, keras
from tfembsize.data import synthetic
from tfembsize.layers import BudgetedEmbedding, MaskedEmbedding
from tfembsize.metrics import RankingEvaluator

legacy_only = pytest.mark.skipif(
    not is_legacy_keras(), reason="TensorFlow Recommenders needs TF_USE_LEGACY_KERAS=1"
)


@pytest.mark.skipif(is_legacy_keras(), reason="checks the error raised under Keras 3")
def test_import_under_keras3_raises_a_clear_error():
    sys.modules.pop("tfembsize.integrations.tfrs", None)
    with pytest.raises(
        ImportError,
        match=r"Set the environment variable TF_USE_LEGACY_KERAS=1 before TensorFlow is first "
        r"imported",
    ):
        importlib.import_module("tfembsize.integrations.tfrs")
    import tfembsize.integrations  # noqa: F401  (the package itself imports fine)


@pytest.fixture(scope="module")
def split():
    return synthetic(50, 70, 1200, seed=5).split(0.5, 0.25, 0.25, seed=42)


def _tables(kind: str, nu: int, ni: int, d: int = 16):
    init = keras.initializers.RandomNormal(0, 0.1, seed=1)
    if kind == "embedding":
        return (
            keras.layers.Embedding(nu, d, embeddings_initializer=init),
            keras.layers.Embedding(ni, d, embeddings_initializer=init),
        )
    if kind == "masked":
        user = MaskedEmbedding(nu, d, embeddings_initializer=init, name="user_embedding")
        item = MaskedEmbedding(ni, d, embeddings_initializer=init, name="item_embedding")
        user.assign_sizes(np.arange(nu) % d + 1)
        return user, item
    return (
        BudgetedEmbedding(nu, d, sparsity=0.5, embeddings_initializer=init, name="user_embedding"),
        BudgetedEmbedding(ni, d, sparsity=0.75, allocation="random", seed=0, name="item_embedding"),
    )


@legacy_only
@pytest.mark.parametrize("kind", ["embedding", "masked", "budgeted"])
def test_two_tower_trains_and_index_matches_score_users(split, kind):
    from tfembsize.integrations.tfrs import TwoTowerRetrieval, build_index, pairs_dataset

    user, item = _tables(kind, split.num_users, split.num_items)
    model = TwoTowerRetrieval(user, item, split.num_items)
    model.compile(optimizer=keras.optimizers.Adagrad(0.5))
    before = [w.copy() for w in model.get_weights()]
    history = model.fit(pairs_dataset(split.train, 64, seed=0), epochs=3, verbose=0)
    losses = history.history["loss"]
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]
    assert any(not np.array_equal(a, b) for a, b in zip(before, model.get_weights(), strict=True))
    if kind != "embedding":
        for layer in (user, item):
            w = layer.embeddings.numpy()
            mask = np.arange(16)[None, :] < layer.sizes[:, None]
            w0 = before[[v.name for v in model.weights].index(layer.embeddings.name)]
            np.testing.assert_array_equal(w[~mask], w0[~mask])
    users = tf.constant([0, 3, 7, 11])
    scores = model.score_users(users)
    top_scores, top_items = tf.math.top_k(scores, k=10)
    index = build_index(model, k=10)
    got_scores, got_items = index(users)
    np.testing.assert_array_equal(got_items.numpy(), top_items.numpy())
    np.testing.assert_allclose(got_scores.numpy(), top_scores.numpy(), rtol=1e-6)
    result = RankingEvaluator(split).evaluate(model.ranking_scorer())
    assert 0 <= result.recall_at(20) <= 1


@legacy_only
def test_index_saves_and_reloads(split, tmp_path):
    from tfembsize.integrations.tfrs import TwoTowerRetrieval, build_index

    model = TwoTowerRetrieval(*_tables("masked", split.num_users, split.num_items))
    index = build_index(model, k=5)
    path = str(tmp_path / "index")
    tf.saved_model.save(index, path)
    loaded = tf.saved_model.load(path)
    users = tf.constant([1, 2])
    np.testing.assert_array_equal(loaded(users)[1].numpy(), index(users)[1].numpy())


@legacy_only
def test_index_over_a_bpr_backbone(split):
    from tfembsize.integrations.tfrs import build_index
    from tfembsize.models import MF

    model = MF.create(split.num_users, split.num_items, 8)
    index = build_index(model, k=7)
    users = tf.constant([0, 5])
    np.testing.assert_array_equal(
        index(users)[1].numpy(), tf.math.top_k(model.score_users(users), 7).indices.numpy()
    )
    with pytest.raises(ValueError, match=r"`k` must be an integer in \[1, num_items=70\]"):
        build_index(model, k=71)


@legacy_only
def test_protocol_config_and_errors(split):
    from tfembsize.integrations.tfrs import TwoTowerRetrieval

    user, item = _tables("masked", split.num_users, split.num_items)
    model = TwoTowerRetrieval(
        user,
        item,
        user_tower=keras.layers.Dense(4, name="user_tower"),
        item_tower=keras.layers.Dense(4, name="item_tower"),
        temperature=0.5,
    )
    assert (model.num_users, model.num_items) == (split.num_users, split.num_items)
    users, items = model.representations()
    assert users.shape == (split.num_users, 4) and items.shape == (split.num_items, 4)
    np.testing.assert_allclose(
        model.score_users([2]).numpy()[0], items.numpy() @ users.numpy()[2], rtol=1e-5
    )
    clone = TwoTowerRetrieval.from_config(model.get_config())
    assert clone.get_config() == model.get_config()
    with pytest.raises(ValueError, match=r"`num_items`=3 differs from the table's input_dim=70"):
        TwoTowerRetrieval(*_tables("masked", split.num_users, split.num_items), 3)
    with pytest.raises(ValueError, match=r"batches must be dicts \{'user': ids, 'item': ids\}"):
        model.compute_loss((tf.constant([0]), tf.constant([1])))


@legacy_only
def test_train_bpr_trains_the_two_tower_model(split):
    from tfembsize.integrations.tfrs import TwoTowerRetrieval
    from tfembsize.models import TrainConfig, train_bpr

    model = TwoTowerRetrieval(*_tables("masked", split.num_users, split.num_items))
    config = TrainConfig(learning_rate=0.05, batch_size=32, max_steps=40, eval_every=20)
    result = train_bpr(model, split, RankingEvaluator(split), config=config)
    # TFRS sums the softmax cross-entropy over the batch: 32 * log(32) at the start.
    assert result.history[-1].loss < result.history[0].loss < 32 * np.log(32) + 1
    assert result.test is not None and result.best_step in (20, 40)
