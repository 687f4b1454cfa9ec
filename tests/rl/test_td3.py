"""TD3Agent: hand-computed actor, critic and target values with fixed weights."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from tfembsize.rl import TD3Agent, Transitions

LOW, HIGH = 1.0, 9.0

# One hidden layer of 2 units; weights chosen by hand.
ACTOR = [
    np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]], np.float32),  # state -> hidden
    np.array([0.0, 0.1], np.float32),
    np.array([[0.5], [0.25]], np.float32),  # hidden -> tanh output
    np.array([0.0], np.float32),
]
CRITIC1 = [
    np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0], [1.0, -1.0]], np.float32),
    np.array([0.0, 0.0], np.float32),
    np.array([[1.0], [2.0]], np.float32),
    np.array([0.5], np.float32),
]
CRITIC2 = [
    np.array([[0.0, 1.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], np.float32),
    np.array([0.1, 0.0], np.float32),
    np.array([[1.0], [1.0]], np.float32),
    np.array([0.0], np.float32),
]


def _np_actor(s):
    h = np.maximum(s @ ACTOR[0] + ACTOR[1], 0.0)
    out = np.tanh(h @ ACTOR[2] + ACTOR[3])[:, 0]
    return LOW + (out + 1.0) / 2.0 * (HIGH - LOW)


def _np_q(weights, s, a):
    x = np.concatenate([s, (2.0 * (a - LOW) / (HIGH - LOW) - 1.0)[:, None]], axis=1)
    h = np.maximum(x @ weights[0] + weights[1], 0.0)
    return (h @ weights[2] + weights[3])[:, 0]


def _agent(**kwargs):
    agent = TD3Agent(3, LOW, HIGH, hidden=(2,), seed=0, **kwargs)
    for model, weights in (
        (agent.actor, ACTOR),
        (agent.critic1, CRITIC1),
        (agent.critic2, CRITIC2),
        (agent.target_actor, ACTOR),
        (agent.target_critic1, CRITIC1),
        (agent.target_critic2, CRITIC2),
    ):
        model.set_weights(weights)
    return agent


S = np.array([[0.2, 0.4, -1.0], [1.0, -0.5, 0.3], [-0.3, 0.9, 0.0]], np.float32)
A = np.array([[2.0], [7.5], [5.0]], np.float32)
R = np.array([0.5, -0.2, 1.0], np.float32)
S2 = np.array([[0.0, 0.6, 0.2], [0.7, 0.1, -0.4], [0.3, 0.3, 0.3]], np.float32)
BATCH = Transitions(S, A, R, S2)


def test_actor_and_critic_outputs_by_hand():
    agent = _agent()
    np.testing.assert_allclose(agent.act(S), _np_actor(S), rtol=1e-6)
    np.testing.assert_allclose(agent.q1(S, A), _np_q(CRITIC1, S, A[:, 0]), rtol=1e-6)
    # s = (0.2, 0.4, -1): hidden (0.2, 0.5), output tanh(0.1 + 0.125) -> 1 + (tanh(.225)+1) * 4
    assert agent.act(S[:1])[0] == pytest.approx(1 + (np.tanh(0.225) + 1) * 4, rel=1e-6)


def test_targets_use_min_of_twin_target_critics_and_clipped_per_sample_noise():
    agent = _agent(gamma=0.9, noise_clip=0.5)
    noise = np.array([3.0, -3.0, 0.25], np.float32)  # clipped to 0.5, -0.5, 0.25
    a2 = np.clip(_np_actor(S2) + np.array([0.5, -0.5, 0.25]), LOW, HIGH)
    want = R + 0.9 * np.minimum(_np_q(CRITIC1, S2, a2), _np_q(CRITIC2, S2, a2))
    np.testing.assert_allclose(agent.targets(BATCH, noise=noise).numpy(), want, rtol=1e-5)


def test_critic_loss_then_delayed_actor_loss_and_polyak_targets():
    agent = _agent(gamma=0.9, policy_delay=2, tau=0.25, critic_learning_rate=1e-3)
    zero = np.zeros(3, np.float32)
    y = R + 0.9 * np.minimum(_np_q(CRITIC1, S2, _np_actor(S2)), _np_q(CRITIC2, S2, _np_actor(S2)))
    q1, q2 = _np_q(CRITIC1, S, A[:, 0]), _np_q(CRITIC2, S, A[:, 0])
    want_loss = np.mean((q1 - y) ** 2) + np.mean((q2 - y) ** 2)
    first = agent.update(BATCH, noise=zero)
    assert first.critic_loss == pytest.approx(want_loss, rel=1e-5)
    assert first.q1_mean == pytest.approx(q1.mean(), rel=1e-5)
    assert first.target_mean == pytest.approx(y.mean(), rel=1e-5)
    assert first.actor_loss is None and first.updates == 1  # delayed
    # no actor or target update yet
    for got, want in zip(agent.actor.get_weights(), ACTOR, strict=True):
        np.testing.assert_array_equal(got, want)
    for got, want in zip(agent.target_critic1.get_weights(), CRITIC1, strict=True):
        np.testing.assert_array_equal(got, want)
    critic_now = agent.critic1.get_weights()
    second = agent.update(BATCH, noise=zero)
    assert second.updates == 2 and second.actor_loss is not None
    # actor loss: -mean Q1(s, actor(s)) under the critic after the second critic step
    c1 = agent.critic1.get_weights()
    assert second.actor_loss == pytest.approx(-np.mean(_np_q(c1, S, _np_actor(S))), rel=1e-5)
    # Polyak: target = 0.25 * online (after the step) + 0.75 * target (initial)
    for online, target, initial in zip(
        agent.critic1.get_weights(), agent.target_critic1.get_weights(), CRITIC1, strict=True
    ):
        np.testing.assert_allclose(target, 0.25 * online + 0.75 * initial, rtol=1e-5, atol=1e-7)
    for online, target, initial in zip(
        agent.actor.get_weights(), agent.target_actor.get_weights(), ACTOR, strict=True
    ):
        np.testing.assert_allclose(target, 0.25 * online + 0.75 * initial, rtol=1e-5, atol=1e-7)
    assert not np.allclose(critic_now[0], CRITIC1[0])  # the critics did learn


def test_gradient_clipping_shrinks_the_step():
    clipped = _agent(critic_learning_rate=1.0, clip_norm=1e-7)
    free = _agent(critic_learning_rate=1.0)
    clipped.update(BATCH, noise=np.zeros(3))
    free.update(BATCH, noise=np.zeros(3))

    def largest_change(agent):
        return max(
            np.abs(w - w0).max() for w, w0 in zip(agent.critic1.get_weights(), CRITIC1, strict=True)
        )

    # Adam's first step is lr * g / (|g| + 1e-7): about lr for the raw gradients, at most
    # lr / 2 once they are clipped to a global norm of 1e-7.
    assert largest_change(free) > 0.9
    assert largest_change(clipped) < 0.55


def test_same_seed_same_networks_and_noise():
    a, b = (
        TD3Agent(3, LOW, HIGH, hidden=(4, 4), seed=3),
        TD3Agent(3, LOW, HIGH, hidden=(4, 4), seed=3),
    )
    for x, y in zip(a.critic2.get_weights(), b.critic2.get_weights(), strict=True):
        np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(a.targets(BATCH).numpy(), b.targets(BATCH).numpy())


def test_checkpoint_round_trip(tmp_path):
    a = _agent()
    a.update(BATCH, noise=np.zeros(3))
    a.update(BATCH, noise=np.zeros(3))
    tf.train.Checkpoint(**a.trackables()).write(str(tmp_path / "ckpt"))
    b = TD3Agent(3, LOW, HIGH, hidden=(2,), seed=5)
    tf.train.Checkpoint(**b.trackables()).read(str(tmp_path / "ckpt")).assert_consumed()
    assert int(b.updates.numpy()) == 2
    for x, y in zip(a.target_actor.get_weights(), b.target_actor.get_weights(), strict=True):
        np.testing.assert_array_equal(x, y)
    ia, ib = a.update(BATCH), b.update(BATCH)  # same noise state, same optimiser state
    assert ia == ib


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"action_low": 5.0, "action_high": 5.0}, "`action_low` must be below `action_high`"),
        ({"gamma": 1.5}, r"`gamma` must be in \[0, 1\]. Received: gamma=1.5"),
        ({"tau": 0.0}, r"`tau` must be in \(0, 1\]. Received: tau=0.0"),
        (
            {"policy_delay": 0},
            "`policy_delay` must be a positive integer. Received: policy_delay=0",
        ),
        ({"target_noise": -1.0}, "`target_noise` must be >= 0. Received: target_noise=-1.0"),
        ({"clip_norm": 0.0}, "`clip_norm` must be positive or None"),
        ({"hidden": ()}, "`hidden` must be positive layer widths"),
    ],
)
def test_argument_errors(kwargs, match):
    args = {"state_dim": 3, "action_low": LOW, "action_high": HIGH, **kwargs}
    with pytest.raises(ValueError, match=match):
        TD3Agent(**args)


@pytest.mark.parametrize("name", ["tfembsize.rl.td3", "tfembsize.rl.replay_buffer"])
def test_docstring_examples(name):
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
