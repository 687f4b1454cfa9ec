"""RankingEvaluator and RankingResult: hand-computed cases, the brute-force reference, errors."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import tensorflow as tf
from ranking_reference import assert_matches_reference, reference_metrics

from tfembsize._keras import keras
from tfembsize.data import Interactions, Split, load_movielens
from tfembsize.metrics import RankingEvaluator, RankingResult, ranking

L3 = 1 / math.log2(3)  # discount at rank 2
L4 = 1 / math.log2(4)  # discount at rank 3


def make_split(num_users, num_items, train, validation, test):
    def part(pairs):
        u = [p[0] for p in pairs]
        i = [p[1] for p in pairs]
        return Interactions(np.array(u, np.int64), np.array(i, np.int64), num_users, num_items)

    return Split(part(train), part(validation), part(test))


def as_matrices(scores):
    """(user_matrix, item_matrix) whose product is exactly `scores` (one-hot users)."""
    scores = np.asarray(scores, np.float32)
    return np.eye(scores.shape[0], dtype=np.float32), np.ascontiguousarray(scores.T)


# Hand-computed cases -------------------------------------------------------------------------

HAND = make_split(
    3,
    6,
    train=[(0, 0), (1, 1), (2, 0), (2, 3)],
    validation=[(0, 2), (0, 4), (2, 1)],
    test=[(0, 5), (1, 3)],
)
HAND_SCORES = [
    [9, 1, 5, 7, 3, 0],
    [0, 8, 0, 4, 1, 0],
    [2, 2, 2, 2, 2, 2],  # all tied: lower item id first
]


def test_hand_case_validation():
    ev = RankingEvaluator(HAND, ks=(1, 2, 3), batch_size=2)
    r = ev.evaluate(as_matrices(HAND_SCORES), phase="validation")
    # user 0: item 0 excluded; ranking 3, 2, 4, 1, 5; held out {2, 4} at ranks 2 and 3.
    # user 1: no validation item -> skipped. user 2: items 0, 3 excluded; all scores tie, so
    # the ranking is 1, 2, 4, 5 and the held-out item 1 is first.
    assert r.users.tolist() == [0, 2]
    assert r.skipped_users.tolist() == [1] and r.num_skipped == 1 and r.num_evaluated == 2
    assert r.recall[1].tolist() == [0.0, 1.0]
    assert r.recall[2].tolist() == [0.5, 1.0]
    assert r.recall[3].tolist() == [1.0, 1.0]
    n2 = L3 / (1 + L3)
    n3 = (L3 + L4) / (1 + L3)
    np.testing.assert_allclose(r.ndcg[1], [0.0, 1.0])
    np.testing.assert_allclose(r.ndcg[2], [n2, 1.0])
    np.testing.assert_allclose(r.ndcg[3], [n3, 1.0])
    q0 = (0 + 0.5 + 1 + 0 + n2 + n3) / 6
    np.testing.assert_allclose(r.user_quality, [q0, 0.0, 1.0])
    assert r.quality == pytest.approx((q0 + 1) / 2)
    # item 0 is trained by users 0 and 2; item 1 only by the skipped user 1; item 3 by user 2.
    np.testing.assert_allclose(r.item_quality, [(q0 + 1) / 2, 0, 0, 1.0, 0, 0])
    assert r.recall_at(2) == pytest.approx(0.75)
    assert r.ndcg_at(3) == pytest.approx((n3 + 1) / 2)


def test_hand_case_test_phase_excludes_train_and_validation():
    r = RankingEvaluator(HAND, ks=(1, 2, 3)).evaluate(as_matrices(HAND_SCORES), phase="test")
    # user 0: items 0, 2, 4 excluded; ranking 3, 1, 5: the test item 5 is third.
    # user 1: item 1 excluded; ranking 3, 4, 0: the test item 3 is first. user 2: skipped.
    assert r.users.tolist() == [0, 1] and r.skipped_users.tolist() == [2]
    assert r.recall[2].tolist() == [0.0, 1.0]
    assert r.recall[3].tolist() == [1.0, 1.0]
    np.testing.assert_allclose(r.ndcg[3], [L4, 1.0])
    np.testing.assert_allclose(r.ndcg[1], [0.0, 1.0])


def test_tie_rule_lower_item_id_first():
    split = make_split(1, 4, train=[], validation=[(0, 3)], test=[])
    ev = RankingEvaluator(split, ks=(1, 3))
    r = ev.evaluate(as_matrices([[1, 1, 1, 1]]))
    assert r.recall[1].tolist() == [0.0] and r.recall[3].tolist() == [0.0]  # ranking 0, 1, 2
    r = ev.evaluate(as_matrices([[1, 1, 1, 1.0000001]]))
    assert r.recall[1].tolist() == [1.0]


def test_idcg_uses_min_of_k_and_held_out_count():
    split = make_split(1, 5, train=[], validation=[(0, 0), (0, 1), (0, 2)], test=[])
    r = RankingEvaluator(split, ks=(1, 2, 3, 4)).evaluate(as_matrices([[5, 4, 3, 2, 1]]))
    assert [r.recall[k][0] for k in (1, 2, 3, 4)] == [1 / 3, 2 / 3, 1.0, 1.0]
    assert [r.ndcg[k][0] for k in (1, 2, 3, 4)] == [1.0, 1.0, 1.0, 1.0]


def test_known_items_never_count_even_when_top_k_runs_out():
    # 4 of 6 items are known: top-5 holds the 2 candidates and 3 excluded (-inf) items.
    split = make_split(1, 6, train=[(0, 0), (0, 1), (0, 2), (0, 3)], validation=[(0, 5)], test=[])
    r = RankingEvaluator(split, ks=(1, 5)).evaluate(as_matrices([[9, 9, 9, 9, 1, 2]]))
    assert r.recall[1].tolist() == [1.0] and r.ndcg[5].tolist() == [1.0]
    r = RankingEvaluator(split, ks=(1, 5)).evaluate(as_matrices([[9, 9, 9, 9, 2, 1]]))
    assert r.recall[1].tolist() == [0.0] and r.recall[5].tolist() == [1.0]
    np.testing.assert_allclose(r.ndcg[5], [L3])


def test_top_k_hits_matrix():
    users, hits = RankingEvaluator(HAND, ks=(1, 2, 3)).top_k_hits(as_matrices(HAND_SCORES))
    assert users.tolist() == [0, 2]
    assert hits.tolist() == [[False, True, True], [True, False, False]]


# Brute-force reference -----------------------------------------------------------------------


def random_split(seed, num_users=40, num_items=30, density=0.3):
    rng = np.random.default_rng(seed)
    mask = rng.random((num_users, num_items)) < density
    mask[:3] = False  # users 0-2 have no interaction at all
    mask[3, :] = False
    mask[3, :2] = True  # user 3: 2 interactions -> 1 train, 1 test, no validation
    u, i = np.nonzero(mask)
    return Interactions(u, i, num_users, num_items).split(0.5, 0.25, 0.25, seed=seed)


def integer_embeddings(split, seed, dim=4):
    rng = np.random.default_rng(seed + 100)
    user = rng.integers(-3, 4, size=(split.num_users, dim)).astype(np.float32)
    item = rng.integers(-3, 4, size=(split.num_items, dim)).astype(np.float32)
    return user, item  # products are small integers: exact in float32, with many ties


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("phase", ["validation", "test"])
def test_matches_reference_exactly(seed, phase):
    split = random_split(seed)
    user, item = integer_embeddings(split, seed)
    ref = reference_metrics(split, user @ item.T, phase)
    assert ref["skipped"].size >= 3  # the test covers skipped users
    for batch_size in (1, 7, 1024):
        ev = RankingEvaluator(split, batch_size=batch_size)
        assert_matches_reference(ev.evaluate((user, item), phase), ref)


@pytest.mark.parametrize("limit", [-1, 1_000_000])
def test_scatter_and_candidate_paths_match_reference(monkeypatch, limit):
    # limit -1: every batch rewrites the scores (scatter path); huge: every batch filters the
    # top k + c candidates.
    monkeypatch.setattr(ranking, "_CANDIDATE_LIMIT", limit)
    split = random_split(11, num_users=30, num_items=200, density=0.5)  # ~50 known per user
    user, item = integer_embeddings(split, 11)
    for phase in ("validation", "test"):
        ref = reference_metrics(split, user @ item.T, phase)
        assert_matches_reference(
            RankingEvaluator(split, batch_size=4).evaluate((user, item), phase), ref
        )


def test_mixed_paths_in_one_phase():
    # Users with few and with many (> _CANDIDATE_LIMIT) known items in separate batches.
    rng = np.random.default_rng(3)
    num_items = 400
    pairs = []
    for u in range(12):
        n = 8 if u % 2 else 320
        pairs += [(u, i) for i in rng.choice(num_items, n, replace=False)]
    u, i = np.array(pairs).T
    split = Interactions(u, i, 12, num_items).split(seed=0)
    ev = RankingEvaluator(split, batch_size=6)
    data = ev._phase("validation")
    assert sorted(int(b.num_candidates) for b in data.batches) == [0, 20 + 4]
    user, item = integer_embeddings(split, 3)
    ref = reference_metrics(split, user @ item.T, "validation")
    assert_matches_reference(ev.evaluate((user, item)), ref)


def test_minus_inf_scores_follow_the_scatter_rule():
    # A scorer may return -inf (e.g. unavailable items); -inf candidates send the batch to the
    # scatter path so that ties with excluded items order exactly as the reference does.
    split = random_split(4)
    user, item = integer_embeddings(split, 4)
    scores = (user @ item.T).astype(np.float32)
    scores[:, :-3] = -np.inf  # only the last 3 items are finite: fewer than k = 20
    ref = reference_metrics(split, scores, "validation")
    ev = RankingEvaluator(split, batch_size=8)
    assert_matches_reference(ev.evaluate(lambda ids: scores[ids.numpy()]), ref)


def test_callable_and_model_paths_equal_matrix_path():
    split = random_split(5)
    user, item = integer_embeddings(split, 5)
    ev = RankingEvaluator(split, batch_size=8)
    ref = reference_metrics(split, user @ item.T, "validation")
    scores = tf.constant(user @ item.T)

    class DotModel:
        def representations(self, training=False):
            assert training is False
            return tf.constant(user), tf.constant(item)

    class ScoringModel:
        def score_users(self, user_ids):
            return tf.gather(scores, user_ids)

    for scorer in (
        (user, item),
        [tf.Variable(user), tf.Variable(item)],
        DotModel(),
        ScoringModel(),
        lambda ids: tf.gather(scores, ids),
        lambda ids: (user @ item.T)[ids.numpy()],  # numpy scores
        (user.astype(np.float64), item.astype(np.float64)),
        (user.astype(np.float16), item.astype(np.float16)),
    ):
        assert_matches_reference(ev.evaluate(scorer), ref)


class TinyDotModel(keras.Model):
    """A Keras dot-product recommender exposing the retrieval protocol."""

    def __init__(self, user, item):
        super().__init__()
        self.user_embedding = keras.layers.Embedding(
            user.shape[0], user.shape[1], embeddings_initializer=keras.initializers.Constant(user)
        )
        self.item_embedding = keras.layers.Embedding(
            item.shape[0], item.shape[1], embeddings_initializer=keras.initializers.Constant(item)
        )
        self.user_embedding.build((None,))
        self.item_embedding.build((None,))

    def representations(self, training=False):
        return self.user_embedding.embeddings, self.item_embedding.embeddings

    def score_users(self, user_ids):
        return tf.matmul(
            self.user_embedding(user_ids), self.item_embedding.embeddings, transpose_b=True
        )

    def call(self, inputs):
        return self.score_users(inputs)


def test_keras_model_scorer(legacy):
    split = random_split(7)
    user, item = integer_embeddings(split, 7)
    model = TinyDotModel(user, item)
    ref = reference_metrics(split, user @ item.T, "test")
    ev = RankingEvaluator(split, batch_size=16)
    assert_matches_reference(ev.evaluate(model, "test"), ref)  # representations() path
    assert_matches_reference(ev.evaluate(model.score_users, "test"), ref)
    assert_matches_reference(ev.evaluate(model, "test"), ref)  # cached phase data


def test_real_ml100k_matches_reference(data_dir):
    split = load_movielens(data_dir / "ml-100k").split(seed=42)
    user, item = integer_embeddings(split, 0, dim=8)
    ev = RankingEvaluator(split, batch_size=300)
    for phase in ("validation", "test"):
        ref = reference_metrics(split, user @ item.T, phase)
        result = ev.evaluate((user, item), phase)
        assert_matches_reference(result, ref)
        assert result.num_skipped == 0
    # float scores through the callable path (the reference sees the same float32 scores)
    rng = np.random.default_rng(1)
    scores = rng.standard_normal((split.num_users, split.num_items)).astype(np.float32)
    ref = reference_metrics(split, scores, "validation")
    assert_matches_reference(ev.evaluate(lambda ids: scores[ids.numpy()]), ref)


# RankingResult -------------------------------------------------------------------------------


def test_result_round_trip_and_summary():
    r = RankingEvaluator(HAND, ks=(1, 2, 3)).evaluate(as_matrices(HAND_SCORES))
    d = json.loads(json.dumps(r.to_dict()))
    back = RankingResult.from_dict(d)
    assert back.ks == r.ks and back.phase == "validation" and back.quality == r.quality
    for k in r.ks:
        np.testing.assert_array_equal(back.recall[k], r.recall[k])
        np.testing.assert_array_equal(back.ndcg[k], r.ndcg[k])
    np.testing.assert_array_equal(back.item_quality, r.item_quality)
    np.testing.assert_array_equal(back.skipped_users, r.skipped_users)
    m = r.metrics()
    assert list(m) == ["recall@1", "recall@2", "recall@3", "ndcg@1", "ndcg@2", "ndcg@3", "quality"]
    assert "evaluated=2, skipped=1" in repr(r)
    assert (r.num_users, r.num_items) == (3, 6)
    with pytest.raises(ValueError, match="Not a RankingResult dict"):
        RankingResult.from_dict({"format": "x"})


def test_result_is_immutable():
    r = RankingEvaluator(HAND, ks=(1, 2)).evaluate(as_matrices(HAND_SCORES))
    with pytest.raises(ValueError):
        r.user_quality[0] = 1.0
    with pytest.raises(ValueError):
        r.recall[1][0] = 1.0
    with pytest.raises(TypeError):
        r.recall[5] = np.zeros(2)
    with pytest.raises(AttributeError):
        r.quality = 1.0
    with pytest.raises(
        ValueError, match=r"`k` must be one of the evaluated ks \(1, 2\). Received: k=20"
    ):
        r.recall_at(20)


def test_result_validates_alignment():
    with pytest.raises(ValueError, match=r"`recall\[1\]` must be aligned with `users`"):
        RankingResult(
            phase="validation",
            ks=(1,),
            users=[0, 1],
            recall={1: [0.0]},
            ndcg={1: [0.0, 0.0]},
            user_quality=[0, 0],
            item_quality=[0],
            skipped_users=[],
            quality=0.0,
        )


# Errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(ks=()), "`ks` must be a non-empty sequence of integers. Received: ks=()"),
        (dict(ks=5), "`ks` must be a non-empty sequence"),
        (dict(ks=(0, 5)), r"`ks` must hold positive integers. Received: ks=\(0, 5\)"),
        (dict(ks=(5, 5)), "`ks` must not repeat a value"),
        (dict(ks=(5, 7)), r"`ks` must not exceed num_items=6. Received: ks=\(5, 7\)"),
        (
            dict(ks=(1,), batch_size=0),
            "`batch_size` must be a positive integer. Received: batch_size=0",
        ),
    ],
)
def test_constructor_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RankingEvaluator(HAND, **kwargs)


def test_constructor_needs_split():
    with pytest.raises(TypeError, match="`split` must be a tfembsize.data.Split"):
        RankingEvaluator(HAND.train)


def test_evaluate_errors():
    ev = RankingEvaluator(HAND, ks=(1, 2))
    user, item = as_matrices(HAND_SCORES)
    with pytest.raises(
        ValueError,
        match=r"`phase` must be one of \('validation', 'test'\). Received: phase='train'",
    ):
        ev.evaluate((user, item), phase="train")
    with pytest.raises(
        ValueError, match=r"`item_matrix` must have shape \[6, D\]. Received shape \(5, 3\)"
    ):
        ev.evaluate((user, item[:5]))
    with pytest.raises(ValueError, match="must have the same width"):
        ev.evaluate((user, item[:, :2]))
    with pytest.raises(
        ValueError, match=r"must be \(user_matrix, item_matrix\). Received 3 elements"
    ):
        ev.evaluate((user, item, item))
    bad = item.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="`item_matrix` contains NaN or infinite values"):
        ev.evaluate((user, bad))
    with pytest.raises(TypeError, match="matrices must be floating point"):
        ev.evaluate((user.astype(np.int32), item.astype(np.int32)))
    with pytest.raises(
        ValueError,
        match=r"must return scores of shape \[batch, num_items\] = \[2, 6\]. "
        r"Received shape \(2, 5\)",
    ):
        ev.evaluate(lambda ids: tf.zeros([2, 5]))
    with pytest.raises(ValueError, match="`scorer` returned NaN scores"):
        ev.evaluate(lambda ids: tf.fill([2, 6], np.nan))
    with pytest.raises(TypeError, match="`scorer` must return floats"):
        ev.evaluate(lambda ids: tf.zeros([2, 6], tf.int32))
    with pytest.raises(TypeError, match=r"`scorer` must be \(user_matrix, item_matrix\), a model"):
        ev.evaluate(42)


def test_phase_without_held_out_items():
    split = make_split(2, 3, train=[(0, 0)], validation=[(1, 1)], test=[])
    ev = RankingEvaluator(split, ks=(1,))
    with pytest.raises(ValueError, match="No user has a held-out item at phase='test'"):
        ev.evaluate(as_matrices(np.ones((2, 3))), phase="test")
