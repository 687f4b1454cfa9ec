"""ReinforcePolicy: hand-set weights, hand-computed probabilities and policy-gradient steps."""

from __future__ import annotations

import doctest
import math

import numpy as np
import pytest
import tensorflow as tf

import tfembsize.rl.reinforce as reinforce_module
from tfembsize._keras import keras
from tfembsize.rl import ReinforcePolicy, ReinforceUpdate

EPS = 1e-3  # the normalisations' default epsilon
# A tiny network: 4 count buckets of width 2, 2 rungs, 2 hidden units; weights set by hand.
WEIGHTS = {
    "count_embeddings": np.array([[0.5, -0.5], [1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]]),
    "hidden_kernel": np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.0], [0.0, -0.5]]),
    "hidden_bias": np.array([0.0, 0.1]),
    "output_kernel": np.array([[1.0, -1.0], [2.0, 0.0]]),
    "output_bias": np.array([0.0, 0.2]),
}
TRAINABLE = [
    "count_embeddings",
    "count_gamma",
    "count_beta",
    "hidden_kernel",
    "hidden_bias",
    "hidden_gamma",
    "hidden_beta",
    "output_kernel",
    "output_bias",
]


def make_policy(weights=WEIGHTS, **kwargs) -> ReinforcePolicy:
    kwargs = {"count_buckets": 4, "embedding_dim": 2, "hidden": 2, "seed": 0, **kwargs}
    policy = ReinforcePolicy(2, **kwargs)
    for name, value in weights.items():
        getattr(policy.network, name).assign(np.asarray(value, np.float32))
    return policy


def params_of(policy) -> dict:
    return {name: getattr(policy.network, name).numpy().astype(np.float64) for name in TRAINABLE}


def np_bn(x, w, training, gamma, beta):
    """Batch normalisation over the rows with weight 1 (training) or moving stats 0 / 1."""
    if training:
        used = x[w > 0]
        mean, var = used.mean(axis=0), used.var(axis=0)
    else:
        mean, var = 0.0, 1.0
    return (x - mean) / np.sqrt(var + EPS) * gamma + beta


def np_logits(params, counts, rungs, training=False, w=None):
    w = np.ones(len(counts)) if w is None else np.asarray(w, np.float64)
    buckets = np.minimum(counts, params["count_embeddings"].shape[0] - 1)
    e = np_bn(
        params["count_embeddings"][buckets],
        w,
        training,
        params["count_gamma"],
        params["count_beta"],
    )
    x = np.concatenate([e, np.eye(2)[rungs]], axis=1)
    z = x @ params["hidden_kernel"] + params["hidden_bias"]
    h = np.tanh(np_bn(z, w, training, params["hidden_gamma"], params["hidden_beta"]))
    return h @ params["output_kernel"] + params["output_bias"]


def np_softmax(logits):
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def np_loss(params, counts, rungs, actions, rewards, mask):
    logits = np_logits(params, counts, rungs, training=True, w=mask)
    log_p = np.log(np_softmax(logits))[np.arange(len(actions)), actions]
    return -np.sum(mask * rewards * log_p)


# Probabilities ------------------------------------------------------------------------------------


def test_probabilities_by_hand_with_only_an_output_bias():
    """Every kernel 0: pi = softmax(output_bias) for every state; bias (0, ln 3) gives 1/4, 3/4."""
    zero = {k: np.zeros_like(v) for k, v in WEIGHTS.items()}
    policy = make_policy({**zero, "output_bias": np.array([0.0, math.log(3.0)])})
    p = policy.probabilities([0, 2, 50], [0, 1, 1])
    np.testing.assert_allclose(p, [[0.25, 0.75]] * 3, rtol=1e-6)
    assert policy.greedy([0, 2, 50], [0, 1, 1]).tolist() == [1, 1, 1]
    policy.network.output_bias.assign([math.log(3.0), 0.0])
    assert policy.greedy([0, 3], [1, 0]).tolist() == [0, 0]
    policy.network.output_bias.assign([0.0, 0.0])
    assert policy.greedy([1], [0]).tolist() == [0]  # a tie keeps


def test_probabilities_by_hand_in_inference():
    policy = make_policy()
    s = 1.0 / math.sqrt(1.0 + EPS)  # inference normalisation: moving mean 0, variance 1
    # count 7 -> bucket 3 (clipped), rung 1: e = (-s, -s), x = (-s, -s, 0, 1)
    # z = (-s, -s - 0.5 + 0.1), h = tanh(s * z), logits = (h0 + 2 h1, -h0 + 0.2)
    h = np.tanh(s * np.array([-s, -s - 0.4]))
    logits = np.array([h[0] + 2 * h[1], -h[0] + 0.2])
    want = np.exp(logits) / np.exp(logits).sum()
    np.testing.assert_allclose(policy.probabilities([7], [1])[0], want, rtol=1e-5)
    counts, rungs = np.array([0, 1, 2, 3, 9]), np.array([0, 1, 0, 1, 0])
    params = params_of(policy)
    np.testing.assert_allclose(
        policy.probabilities(counts, rungs),
        np_softmax(np_logits(params, counts, rungs)),
        rtol=1e-5,
    )
    # inference leaves the moving statistics alone; training mode moves them
    np.testing.assert_array_equal(policy.network.count_moving_mean.numpy(), 0.0)
    got = policy.probabilities(counts, rungs, training=True)
    np.testing.assert_allclose(
        got, np_softmax(np_logits(params, counts, rungs, training=True)), rtol=1e-5
    )
    e = WEIGHTS["count_embeddings"][np.minimum(counts, 3)]
    np.testing.assert_allclose(
        policy.network.count_moving_mean.numpy(), 0.01 * e.mean(axis=0), rtol=1e-5
    )


# Sampling ---------------------------------------------------------------------------------------


def test_sampling_follows_the_probabilities_and_is_reproducible():
    zero = {k: np.zeros_like(v) for k, v in WEIGHTS.items()}
    weights = {**zero, "output_bias": np.array([0.0, math.log(3.0)])}  # p(grow) = 3/4
    counts, rungs = np.zeros(20000, np.int64), np.ones(20000, np.int64)
    a, b = make_policy(weights, seed=4), make_policy(weights, seed=4)
    draws = a.sample(counts, rungs)
    assert draws.dtype == np.int32 and set(np.unique(draws)) <= {0, 1}
    assert abs(draws.mean() - 0.75) < 0.015
    np.testing.assert_array_equal(b.sample(counts, rungs), draws)  # same seed, same draws
    assert not np.array_equal(a.sample(counts, rungs), draws)  # the generator moved on
    with_rng = a.sample(counts, rungs, rng=np.random.default_rng(7))
    np.testing.assert_array_equal(a.sample(counts, rungs, rng=7), with_rng)
    assert abs(with_rng.mean() - 0.75) < 0.015
    # the graph sampler draws what the eager one draws; under XLA the stream differs (XLA
    # implements the generator its own way) but is as reproducible and as distributed
    c, d = make_policy(weights, seed=9), make_policy(weights, seed=9)
    ids, r = tf.constant(counts[:2000].astype(np.int32)), tf.constant(rungs[:2000].astype(np.int32))
    np.testing.assert_array_equal(tf.function(d.tf_sample)(ids, r).numpy(), c.sample(ids, r))
    e, f = make_policy(weights, seed=9), make_policy(weights, seed=9)
    xla_e = tf.function(e.tf_sample, jit_compile=True)(ids, r).numpy()
    np.testing.assert_array_equal(tf.function(f.tf_sample, jit_compile=True)(ids, r), xla_e)
    assert abs(xla_e.mean() - 0.75) < 0.03


# Updates ------------------------------------------------------------------------------------------

COUNTS = np.array([0, 2, 7, 1])
RUNGS = np.array([1, 0, 1, 0])
ACTIONS = np.array([1, 0, 0, 1])
REWARDS = np.array([1.5, -0.5, 2.0, 0.7])
MASK = np.array([1.0, 1.0, 1.0, 0.0])  # the last sample is left out


def _numeric_gradient(params, *batch, h=1e-6):
    grads = {}
    for name, value in params.items():
        g = np.zeros_like(value)
        for i in np.ndindex(value.shape):
            up = {**params, name: value.copy()}
            down = {**params, name: value.copy()}
            up[name][i] += h
            down[name][i] -= h
            g[i] = (np_loss(up, *batch) - np_loss(down, *batch)) / (2 * h)
        grads[name] = g
    return grads


def test_one_policy_gradient_step_by_hand():
    lr = 0.1
    policy = make_policy(optimizer=keras.optimizers.SGD(lr))
    before = params_of(policy)
    batch = (COUNTS, RUNGS, ACTIONS, REWARDS, MASK)
    info = policy.update(COUNTS, RUNGS, ACTIONS, REWARDS, mask=MASK.astype(bool))
    # the loss before the step, and the bookkeeping over the three samples used
    assert isinstance(info, ReinforceUpdate)
    assert info.loss == pytest.approx(np_loss(before, *batch), rel=1e-5)
    assert info.samples == 3
    assert info.mean_reward == pytest.approx((1.5 - 0.5 + 2.0) / 3, rel=1e-6)
    assert info.grow_fraction == pytest.approx(1 / 3, rel=1e-6)
    after = params_of(policy)
    # The output layer by hand: dL/dlogits_i = -m_i R_i (onehot(a_i) - pi_i), so
    # dL/db = sum_i dL/dlogits_i and dL/dW = h^T dL/dlogits.
    logits = np_logits(before, COUNTS, RUNGS, training=True, w=MASK)
    d_logits = -(MASK * REWARDS)[:, None] * (np.eye(2)[ACTIONS] - np_softmax(logits))
    np.testing.assert_allclose(
        after["output_bias"], before["output_bias"] - lr * d_logits.sum(axis=0), rtol=1e-5
    )
    # every weight: one SGD step along the numerically differentiated numpy loss
    grads = _numeric_gradient(before, *batch)
    np.testing.assert_allclose(grads["output_bias"], d_logits.sum(axis=0), rtol=1e-6)
    for name in TRAINABLE:
        np.testing.assert_allclose(
            after[name], before[name] - lr * grads[name], rtol=1e-4, atol=1e-6, err_msg=name
        )
    # bucket 1 (only the masked-out sample's) gets no step, bucket 3 (count 7) does; the
    # moving statistics moved towards those of the samples used
    np.testing.assert_array_equal(after["count_embeddings"][1], before["count_embeddings"][1])
    assert np.all(after["count_embeddings"][3] != before["count_embeddings"][3])
    used = WEIGHTS["count_embeddings"][np.minimum(COUNTS, 3)][MASK > 0]
    np.testing.assert_allclose(
        policy.network.count_moving_mean.numpy(), 0.01 * used.mean(axis=0), rtol=1e-5
    )


def test_masked_samples_contribute_nothing():
    full = make_policy(optimizer=keras.optimizers.SGD(0.1))
    used = make_policy(optimizer=keras.optimizers.SGD(0.1))
    keep = MASK > 0
    a = full.update(COUNTS, RUNGS, ACTIONS, REWARDS, mask=MASK)
    b = used.update(COUNTS[keep], RUNGS[keep], ACTIONS[keep], REWARDS[keep])
    assert a.samples == b.samples == 3
    assert a.loss == pytest.approx(b.loss, rel=1e-6)
    assert (a.mean_reward, a.grow_fraction) == pytest.approx((b.mean_reward, b.grow_fraction))
    for x, y in zip(full.network.get_weights(), used.network.get_weights(), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)
    # the masked-out sample's bucket (1) is untouched
    np.testing.assert_array_equal(
        full.network.count_embeddings.numpy()[1], WEIGHTS["count_embeddings"][1]
    )


def test_nothing_changes_when_every_sample_is_masked_out():
    policy = make_policy()  # Adam: a zero-gradient step would still move the weights
    policy.update(COUNTS, RUNGS, ACTIONS, REWARDS)
    weights = policy.network.get_weights()
    iterations = int(policy.optimizer.iterations.numpy())
    info = policy.update(COUNTS, RUNGS, ACTIONS, REWARDS, mask=np.zeros(4, bool))
    assert info == ReinforceUpdate(loss=0.0, mean_reward=0.0, samples=0, grow_fraction=0.0)
    assert int(policy.optimizer.iterations.numpy()) == iterations
    for x, y in zip(policy.network.get_weights(), weights, strict=True):
        np.testing.assert_array_equal(x, y)
    empty = np.zeros(0, np.int64)
    assert policy.update(empty, empty, empty, np.zeros(0)).samples == 0


def test_adam_is_the_default_with_rate_1e_4():
    policy = ReinforcePolicy(3)
    assert isinstance(policy.optimizer, keras.optimizers.Adam)
    assert float(policy.optimizer.learning_rate.numpy()) == pytest.approx(1e-4)
    network = policy.network
    assert network.count_embeddings.shape == (1024, 32)
    assert network.hidden_kernel.shape == (32 + 3, 512)
    assert network.output_kernel.shape == (512, 2)


@pytest.mark.parametrize("jit_compile", [False, True])
@pytest.mark.parametrize("adam", [False, True])
def test_tf_update_in_a_compiled_function_matches_update(jit_compile, adam):
    # Adam divides by the gradient's size, so it turns round-off in gradients that are zero
    # in exact arithmetic (a normalisation's beta before another normalisation) into steps
    # of about 1e-5: it gets a looser tolerance than SGD.
    def optimizer():
        return keras.optimizers.Adam(1e-4) if adam else keras.optimizers.SGD(0.1)

    atol = 3e-5 if adam else 1e-7
    eager, compiled = make_policy(optimizer=optimizer()), make_policy(optimizer=optimizer())
    fn = tf.function(compiled.tf_update, jit_compile=jit_compile)
    for step in range(2):
        rewards = REWARDS * (step + 1)
        want = eager.update(COUNTS, RUNGS, ACTIONS, rewards, mask=MASK)
        got = fn(
            tf.constant(COUNTS, tf.int32),
            tf.constant(RUNGS, tf.int32),
            tf.constant(ACTIONS, tf.int32),
            tf.constant(rewards, tf.float32),
            tf.constant(MASK, tf.float32),
        )
        assert float(got.loss) == pytest.approx(want.loss, rel=1e-5)
        assert int(got.samples) == want.samples
    for x, y in zip(compiled.network.get_weights(), eager.network.get_weights(), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=atol)
    assert int(compiled.optimizer.iterations.numpy()) == 2
    for name in ("count_embeddings", "hidden_kernel", "output_kernel", "output_bias"):
        assert not np.allclose(getattr(compiled.network, name).numpy(), WEIGHTS[name]), name


def test_checkpoint_round_trip(tmp_path):
    a = make_policy()
    a.update(COUNTS, RUNGS, ACTIONS, REWARDS, mask=MASK)
    a.update(COUNTS, RUNGS, 1 - ACTIONS, REWARDS)
    a.sample(COUNTS, RUNGS)
    tf.train.Checkpoint(**a.trackables()).write(str(tmp_path / "ckpt"))
    b = ReinforcePolicy(2, count_buckets=4, embedding_dim=2, hidden=2, seed=5)
    tf.train.Checkpoint(**b.trackables()).read(str(tmp_path / "ckpt")).assert_consumed()
    for x, y in zip(a.network.get_weights(), b.network.get_weights(), strict=True):
        np.testing.assert_array_equal(x, y)
    assert int(b.optimizer.iterations.numpy()) == 2
    np.testing.assert_array_equal(a.sample(COUNTS, RUNGS), b.sample(COUNTS, RUNGS))
    assert a.update(COUNTS, RUNGS, ACTIONS, REWARDS) == b.update(COUNTS, RUNGS, ACTIONS, REWARDS)


# Errors -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_rungs": 0}, r"`num_rungs` must be a positive integer\. Received: num_rungs=0"),
        ({"count_buckets": 0}, r"Received: count_buckets=0"),
        ({"embedding_dim": 2.0}, r"Received: embedding_dim=2\.0"),
        ({"hidden": True}, r"Received: hidden=True"),
        ({"learning_rate": 0.0}, r"`learning_rate` must be positive\. Received: learning_rate=0"),
        ({"momentum": 1.0}, r"`momentum` must be in \[0, 1\)\. Received: momentum=1\.0"),
        ({"epsilon": -1.0}, r"`epsilon` must be positive\. Received: epsilon=-1\.0"),
        ({"seed": "a"}, r"`seed` must be an integer\. Received: seed='a'"),
    ],
)
def test_constructor_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ReinforcePolicy(**{"num_rungs": 2, **kwargs})


def test_input_errors():
    policy = make_policy()
    with pytest.raises(ValueError, match=r"`counts` must be a 1-D array of integers"):
        policy.probabilities([0.5, 1.0], [0, 1])
    with pytest.raises(
        ValueError, match=r"`rungs` must be a 1-D array of integers.*shape \(1, 2\)"
    ):
        policy.probabilities([0, 1], [[0, 1]])
    with pytest.raises(ValueError, match=r"must have the same length\. Received lengths 2 and 3"):
        policy.greedy([0, 1], [0, 1, 1])
    with pytest.raises(ValueError, match=r"`counts` must be >= 0\. Received count -3"):
        policy.sample([0, -3], [0, 1])
    with pytest.raises(
        ValueError, match=r"`rungs` must lie in \[0, num_rungs=2\)\. Received rung 2"
    ):
        policy.sample([0, 1], [0, 2])
    with pytest.raises(TypeError, match=r"`rng` must be a numpy\.random\.Generator"):
        policy.sample([0, 1], [0, 1], rng="seed")
    args = ([0, 1], [0, 1])
    with pytest.raises(ValueError, match=r"`actions` must be 2 values in \{0, 1\}.*\[0, 2\]"):
        policy.update(*args, [0, 2], [1.0, 1.0])
    with pytest.raises(ValueError, match=r"`actions` must be 2 values"):
        policy.update(*args, [1], [1.0, 1.0])
    with pytest.raises(ValueError, match=r"`rewards` must be 2 finite numbers.*nan"):
        policy.update(*args, [0, 1], [1.0, float("nan")])
    with pytest.raises(ValueError, match=r"`mask` must be 2 booleans \(or 0/1\)\. Received: mask"):
        policy.update(*args, [0, 1], [1.0, 1.0], mask=[0.5, 1.0])
    assert int(policy.optimizer.iterations.numpy()) == 0  # nothing ran


def test_large_counts_share_the_last_bucket():
    policy = make_policy()
    p = policy.probabilities(np.array([3, 10, 2**40], np.int64), [1, 1, 1])
    np.testing.assert_allclose(p[1:], np.repeat(p[:1], 2, axis=0), rtol=1e-6)


def test_docstring_examples():
    result = doctest.testmod(reinforce_module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
