from __future__ import annotations

import numpy as np
import pytest
import scipy.stats
import tensorflow as tf

from tfembsize.surrogates import DeepSetsSurrogate, SortedSizes, UpdateInfo
from tfembsize.surrogates import deepsets as deepsets_module


@pytest.fixture(autouse=True)
def _seed_and_clear() -> None:
    """No Keras here (plain tf.Modules): skip the root conftest's clear_session."""
    tf.random.set_seed(0)
    np.random.seed(0)


USERS_F = np.array([4, 2, 0])  # x = [1, 0.5, 0]
ITEMS_F = np.array([10, 5])  # x = [1, 0.5]
ACTION = [np.array([4, 1, 1]), np.array([1, 2])]


def constant_surrogate(value=0.1, d_max=4, **kwargs):
    s = DeepSetsSurrogate([USERS_F, ITEMS_F], d_max, **kwargs)
    s.set_weights([np.full(w.shape, value if "kernel" in w.name else 0.0) for w in s.weights])
    return s


def test_constant_weights_hand_computed_output():
    # With every kernel entry a = 0.1 and zero biases, all pre-activations are >= 0, so:
    #   rho(x) = 16 a^2 x                        (16 equal units)
    #   z_d    = 16 a^2 * mean{x_n : d_n = d}    (0 for an empty size)
    #   s_d    = 64 a^2 (16 * 16 a^3 ... ) = 64 a^2 (256 a^2 xbar_d + d / D)
    #   h      = mean over all D sizes of s_d    (empty sizes included)
    #   r_hat  = 64 a * 64 a * h = 4096 a^2 h
    # Sizes: S_1 = {user 1 (x .5), user 2 (x 0), item 0 (x 1)}, S_2 = {item 1 (x .5)},
    # S_3 = {}, S_4 = {user 0 (x 1)}: xbar = (0.5, 0.5, 0, 1), mean 0.5;
    # mean of d / D over d = 1..4 is 10 / 16.
    s = constant_surrogate()
    h = 0.64 * (2.56 * 0.5 + 10 / 16)
    np.testing.assert_allclose(s.embed(ACTION), np.full((1, 64), h), rtol=1e-6)
    np.testing.assert_allclose(s.predict(ACTION), [40.96 * h], rtol=1e-6)
    # Double division (the official code divides the mean by the padded set length, 3, too)
    # would give xbar / 3: a different number.
    double = 40.96 * 0.64 * (2.56 * 0.5 / 3 + 10 / 16)
    assert abs(s.predict(ACTION)[0] - double) > 1.0


def test_leaky_relu_slope_and_linear_output():
    s = constant_surrogate()
    # Push the decoder's hidden pre-activations below zero: slope 0.01 applies there, and the
    # output layer is linear (a negative prediction is allowed).
    weights = s.get_weights()
    names = [w.name for w in s.weights]
    weights[names.index("pi/bias_0:0")][:] = -100.0
    s.set_weights(weights)
    h = 0.64 * (2.56 * 0.5 + 10 / 16)
    hidden = 0.01 * (6.4 * h - 100.0)
    np.testing.assert_allclose(s.predict(ACTION), [6.4 * hidden], rtol=1e-5)
    assert s.predict(ACTION)[0] < 0


def _numpy_forward(s, action):
    """An independent numpy implementation of BET's DeepSets predictor for random weights."""
    w = s.get_weights()
    lrelu = lambda v: np.where(v > 0, v, 0.01 * v)  # noqa: E731
    per_mlp = 4  # kernel_0, kernel_1, bias_0, bias_1
    mlps = [w[i : i + per_mlp] for i in range(0, len(w), per_mlp)]

    def mlp(p, x, linear=False):
        k0, k1, b0, b1 = p
        y = lrelu(x @ k0 + b0) @ k1 + b1
        return y if linear else lrelu(y)

    freqs = [USERS_F, ITEMS_F] if len(action) == 2 else None
    d_max = s.d_max
    rho = [mlp(mlps[t], (f / f.max())[:, None].astype(np.float64)) for t, f in enumerate(freqs)]
    s_sum = 0.0
    for d in range(1, d_max + 1):
        members = [rho[t][action[t] == d] for t in range(2)]
        stacked = np.concatenate(members)
        z = stacked.mean(axis=0) if len(stacked) else np.zeros(rho[0].shape[1])
        s_sum = s_sum + mlp(mlps[2], np.append(z, d / d_max)[None])
    h = s_sum / d_max
    return mlp(mlps[3], h, linear=True)[0, 0]


def test_random_weights_match_an_independent_numpy_forward():
    s = DeepSetsSurrogate([USERS_F, ITEMS_F], 6, seed=3)
    rng = np.random.default_rng(0)
    for _ in range(5):
        action = [rng.integers(1, 7, 3), rng.integers(1, 7, 2)]
        np.testing.assert_allclose(s.predict(action)[0], _numpy_forward(s, action), rtol=1e-4)


def test_permutation_invariance():
    rng = np.random.default_rng(1)
    users_f, items_f = rng.integers(0, 100, 50), rng.integers(0, 100, 70)
    action = [rng.integers(1, 17, (3, 50)), rng.integers(1, 17, (3, 70))]
    s = DeepSetsSurrogate([users_f, items_f], 16, seed=0)
    pu, pi = rng.permutation(50), rng.permutation(70)
    t = DeepSetsSurrogate([users_f[pu], items_f[pi]], 16, seed=0)  # same weights
    np.testing.assert_allclose(
        s.predict(action), t.predict([action[0][:, pu], action[1][:, pi]]), rtol=1e-6
    )
    # Permuting sizes without their entities does change the prediction.
    assert not np.allclose(s.predict(action), s.predict([action[0][:, pu], action[1]]))


def test_batched_and_chunked_predictions_equal_single_ones(monkeypatch):
    rng = np.random.default_rng(2)
    s = DeepSetsSurrogate([USERS_F, ITEMS_F], 8, seed=1)
    batch = [rng.integers(1, 9, (9, 3)), rng.integers(1, 9, (9, 2))]
    single = np.array([s.predict([batch[0][i], batch[1][i]])[0] for i in range(9)])
    monkeypatch.setattr(deepsets_module, "_ROWS_PER_CHUNK", 10)  # two actions per chunk
    h, pred = s.embed_and_predict(batch)
    assert h.shape == (9, 64)
    np.testing.assert_allclose(pred, single, rtol=1e-6)


def _sorted_batch(rng, n_users, n_items, d_max, batch):
    """Random actions with sizes non-increasing along the element order, both forms."""
    counts = np.zeros((batch, 2, d_max), np.int64)
    for b in range(batch):
        for t, n in enumerate((n_users, n_items)):
            counts[b, t] = np.bincount(rng.integers(0, d_max, n), minlength=d_max)
    desc = np.arange(d_max, 0, -1)
    sizes = [np.stack([np.repeat(desc, counts[b, t][::-1]) for b in range(batch)]) for t in (0, 1)]
    return SortedSizes(counts), sizes


def test_sorted_sizes_input_equals_the_general_input():
    rng = np.random.default_rng(5)
    users_f, items_f = (
        np.sort(rng.integers(0, 50, 40))[::-1],
        np.sort(rng.integers(0, 50, 30))[::-1],
    )
    s = DeepSetsSurrogate([users_f, items_f], 12, seed=2)
    sorted_batch, sizes = _sorted_batch(rng, 40, 30, 12, 6)
    h1, p1 = s.embed_and_predict(sorted_batch)
    h2, p2 = s.embed_and_predict(sizes)
    np.testing.assert_allclose(h1, h2, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(p1, p2, rtol=1e-5, atol=1e-6)
    t = DeepSetsSurrogate([users_f, items_f], 12, seed=2)
    one = SortedSizes(sorted_batch.counts[0])
    s.train_step(one, 0.7)
    t.train_step([sizes[0][0], sizes[1][0]], 0.7)
    for a, b in zip(s.get_weights(), t.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="must sum to its"):
        s.predict(SortedSizes(np.ones((2, 12), np.int64)))
    with pytest.raises(ValueError, match=r"must have shape \[2, 12\]"):
        s.predict(SortedSizes(np.ones((2, 11), np.int64)))


def test_learning_rate_schedule_and_first_adam_step():
    s = DeepSetsSurrogate([USERS_F, ITEMS_F], 4, seed=0)
    assert s.learning_rate == pytest.approx(0.01)
    before = s.get_weights()
    loss, pred, lr = s.train_step(ACTION, 1.0)
    assert lr == pytest.approx(0.01) and loss == pytest.approx((pred - 1.0) ** 2, rel=1e-5)
    # Adam's first step moves every weight with a nonzero gradient by lr * g / |g| = lr.
    moved = np.concatenate(
        [np.abs(a - b).ravel() for a, b in zip(s.get_weights(), before, strict=True)]
    )
    assert moved.max() == pytest.approx(0.01, rel=1e-3)
    assert (moved > 0.0099).mean() > 0.5
    lrs = [lr] + [s.train_step(ACTION, 1.0)[2] for _ in range(19)]
    want = [max(0.01 * 0.9**k, 0.002) for k in range(20)]
    np.testing.assert_allclose(lrs, want, rtol=1e-12)
    assert lrs[-1] == 0.002 and s.num_updates == 20


def test_online_update_draws_uniform_pairs_and_returns_update_info():
    s = DeepSetsSurrogate([USERS_F, ITEMS_F], 4, seed=0)
    rng = np.random.default_rng(0)
    archive = [[rng.integers(1, 5, 3), rng.integers(1, 5, 2)] for _ in range(7)]
    targets = np.linspace(0.5, 0.9, 7)
    info = s.update(archive, targets, rng=np.random.default_rng(42), num_updates=2)
    assert isinstance(info, UpdateInfo)
    ref = np.random.default_rng(42)
    assert info.indices == tuple(int(ref.integers(0, 7)) for _ in range(2))
    assert info.targets == tuple(targets[i] for i in info.indices)
    assert info.learning_rates == (0.01, 0.009000000000000001)
    assert info.loss == pytest.approx(np.mean(info.losses))
    with pytest.raises(ValueError, match="`actions` is empty"):
        s.update([], [], rng=rng)
    with pytest.raises(ValueError, match="`targets` has 2 entries for 7 actions"):
        s.update(archive, [1.0, 2.0], rng=rng)


def test_learns_to_rank_popularity_weighted_allocations():
    rng = np.random.default_rng(0)
    users_f = np.floor(300 / np.arange(1, 61) ** 1.1).astype(int)
    items_f = np.floor(300 / np.arange(1, 81) ** 1.1).astype(int)

    def fitness(u, i):
        out = [
            (f + 1) @ np.log1p(d) / (f + 1).sum() / np.log1p(16)
            for f, d in ((users_f, u), (items_f, i))
        ]
        return float(np.mean(out))

    def action():
        # sizes sorted to favour either the popular or the rare end, at random strength
        k = rng.uniform(-2, 2)
        u = np.clip(np.round(8 * np.exp(k * np.linspace(0.5, -0.5, 60))), 1, 16).astype(int)
        i = np.clip(np.round(8 * np.exp(k * np.linspace(0.5, -0.5, 80))), 1, 16).astype(int)
        return [u, i]

    train = [action() for _ in range(40)]
    targets = np.array([fitness(*a) for a in train])
    s = DeepSetsSurrogate([users_f, items_f], 16, seed=0, min_learning_rate=0.002)
    for _ in range(150):
        s.update(train, targets, rng=rng, num_updates=2)
    test = [action() for _ in range(30)]
    truth = [fitness(*a) for a in test]
    pred = s.predict([np.stack([a[0] for a in test]), np.stack([a[1] for a in test])])
    assert scipy.stats.spearmanr(pred, truth)[0] > 0.8


def test_checkpoint_round_trip_restores_weights_and_optimizer(tmp_path):
    rng = np.random.default_rng(0)
    archive = [[rng.integers(1, 5, 3), rng.integers(1, 5, 2)] for _ in range(5)]
    targets = np.linspace(0.1, 0.5, 5)
    a = DeepSetsSurrogate([USERS_F, ITEMS_F], 4, seed=0)
    a.update(archive, targets, rng=np.random.default_rng(1), num_updates=3)
    tf.train.Checkpoint(s=a).write(str(tmp_path / "ckpt"))
    b = DeepSetsSurrogate([USERS_F, ITEMS_F], 4, seed=99)
    tf.train.Checkpoint(s=b).read(str(tmp_path / "ckpt")).assert_consumed()
    assert b.num_updates == 3 and b.learning_rate == a.learning_rate
    np.testing.assert_array_equal(b.predict(ACTION), a.predict(ACTION))
    a.update(archive, targets, rng=np.random.default_rng(2))
    b.update(archive, targets, rng=np.random.default_rng(2))
    for x, y in zip(a.get_weights(), b.get_weights(), strict=True):
        np.testing.assert_array_equal(x, y)


def test_constant_features_ablation_ignores_frequencies():
    a = DeepSetsSurrogate([USERS_F, ITEMS_F], 4, seed=0, features="constant")
    b = DeepSetsSurrogate([USERS_F[::-1], ITEMS_F[::-1]], 4, seed=0, features="constant")
    np.testing.assert_array_equal(a.predict(ACTION), b.predict(ACTION))


def test_bad_input():
    s = DeepSetsSurrogate([USERS_F, ITEMS_F], 4, seed=0)
    with pytest.raises(ValueError, match=r"must lie in \[1, 4\]. Received values in \[0, 1\]"):
        s.predict([np.array([0, 1, 1]), np.array([1, 2])])
    with pytest.raises(ValueError, match=r"Sizes of type 1 must have shape \[2\]"):
        s.predict([np.array([1, 1, 1]), np.array([1, 2, 3])])
    with pytest.raises(TypeError, match="must be integers"):
        s.predict([np.array([1.0, 1, 1]), np.array([1, 2])])
    with pytest.raises(ValueError, match=r"one size array per type \(2\)"):
        s.predict([np.array([1, 1, 1])])
    with pytest.raises(ValueError, match="`d_max` must be a positive integer. Received: d_max=0"):
        DeepSetsSurrogate([USERS_F], 0)
    with pytest.raises(ValueError, match="must be finite and non-negative"):
        DeepSetsSurrogate([np.array([1, -1])], 4)
    with pytest.raises(ValueError, match="`features` must be one of"):
        DeepSetsSurrogate([USERS_F], 4, features="ids")
    with pytest.raises(ValueError, match="`target` must be finite"):
        s.train_step(ACTION, float("nan"))


def test_docstring_examples():
    import doctest

    result = doctest.testmod(deepsets_module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
