"""`TD3Agent`: twin-delayed deep deterministic policy gradient for a bounded scalar action.

The agent knows nothing of embeddings: states are feature vectors, actions are numbers in
``[action_low, action_high]``. It has

* an actor ``state -> action``: ReLU hidden layers and a ``tanh`` output mapped affinely
  onto ``[action_low, action_high]`` (last-layer weights start in U(-3e-3, 3e-3));
* twin critics ``(state, action) -> Q``, each with its own ReLU hidden layers; the action
  enters rescaled to [-1, 1];
* target copies of all three, moved towards the online networks by Polyak averaging
  (``target <- tau * online + (1 - tau) * target``).

One `update` on a batch ``(s, a, r, s')``: the target action is
``clip(actor'(s') + clip(N(0, target_noise), -noise_clip, noise_clip), low, high)`` with the
noise drawn **per sample** (target-policy smoothing); the target is
``y = r + gamma * min(Q1', Q2')(s', a')`` (no terminal states); the critic loss is
``MSE(Q1(s, a), y) + MSE(Q2(s, a), y)``. Every ``policy_delay``-th update the actor is moved
to maximise ``Q1(s, actor(s))`` (loss ``-mean Q1``) and the targets are updated. Gradients are
optionally clipped by global norm.

References:
    Fujimoto et al., "Addressing Function Approximation Error in Actor-Critic Methods",
    ICML 2018.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import tensorflow as tf

from tfembsize._keras import keras
from tfembsize.rl.replay_buffer import Transitions

__all__ = ["TD3Agent", "UpdateInfo"]


class UpdateInfo(NamedTuple):
    """What one `TD3Agent.update` did.

    Attributes:
        critic_loss: ``MSE(Q1, y) + MSE(Q2, y)`` before the step.
        actor_loss: ``-mean Q1(s, actor(s))`` before the actor step, or None when the actor
            was not updated (delayed).
        q1_mean: mean ``Q1(s, a)`` of the batch before the step.
        target_mean: mean target ``y``.
        updates: critic updates done so far (this one included).
    """

    critic_loss: float
    actor_loss: float | None
    q1_mean: float
    target_mean: float
    updates: int


def _mlp(
    inputs: int,
    hidden: Sequence[int],
    name: str,
    *,
    seed: int,
    small_last: bool,
    activation: str | None,
) -> Any:
    """``inputs -> hidden (ReLU) ... -> 1`` as a Keras ``Sequential``, seeded per layer.

    Hidden layers start Glorot-uniform; the last layer too, or in U(-3e-3, 3e-3) when
    ``small_last`` (the actor's, so its first actions sit near the middle of the range).
    """
    init = keras.initializers
    layers: list[Any] = [keras.Input((inputs,))]
    layers += [
        keras.layers.Dense(
            int(units),
            activation="relu",
            kernel_initializer=init.GlorotUniform(seed=seed + i),
            name=f"{name}_h{i}",
        )
        for i, units in enumerate(hidden)
    ]
    last = (
        init.RandomUniform(-3e-3, 3e-3, seed=seed + len(hidden))
        if small_last
        else init.GlorotUniform(seed=seed + len(hidden))
    )
    layers.append(
        keras.layers.Dense(1, activation=activation, kernel_initializer=last, name=f"{name}_out")
    )
    return keras.Sequential(layers, name=name)


class TD3Agent:
    """TD3 for one bounded scalar action (see the module docstring).

    Args:
        state_dim: features per state.
        action_low: smallest action.
        action_high: largest action.
        hidden: hidden layer widths of the actor and of each critic.
        actor_learning_rate: Adam rate of the actor.
        critic_learning_rate: Adam rate of the critics.
        gamma: discount.
        tau: Polyak factor of the target updates.
        policy_delay: critic updates per actor (and target) update.
        target_noise: standard deviation of the target-policy smoothing noise, in action units.
        noise_clip: the smoothing noise is clipped to ``[-noise_clip, noise_clip]``.
        clip_norm: clip each gradient list by this global norm (None: no clipping).
        seed: seed of the initialisation and of the smoothing noise.

    Example:
        >>> agent = TD3Agent(3, 1.0, 16.0, hidden=(8, 8), seed=0)
        >>> a = agent.act(np.zeros((2, 3), np.float32))
        >>> bool(np.all((a >= 1.0) & (a <= 16.0)))
        True
    """

    def __init__(
        self,
        state_dim: int,
        action_low: float,
        action_high: float,
        *,
        hidden: Sequence[int] = (256, 256),
        actor_learning_rate: float = 1e-3,
        critic_learning_rate: float = 3e-3,
        gamma: float = 0.99,
        tau: float = 0.005,
        policy_delay: int = 2,
        target_noise: float = 2.0,
        noise_clip: float = 5.0,
        clip_norm: float | None = None,
        seed: int = 0,
    ) -> None:
        if isinstance(state_dim, bool) or not isinstance(state_dim, int) or state_dim < 1:
            raise ValueError(f"`state_dim` must be a positive integer. Received: {state_dim!r}")
        if not float(action_low) < float(action_high):
            raise ValueError(
                "`action_low` must be below `action_high`. Received: "
                f"action_low={action_low!r}, action_high={action_high!r}"
            )
        if not 0.0 <= float(gamma) <= 1.0:
            raise ValueError(f"`gamma` must be in [0, 1]. Received: gamma={gamma!r}")
        if not 0.0 < float(tau) <= 1.0:
            raise ValueError(f"`tau` must be in (0, 1]. Received: tau={tau!r}")
        if isinstance(policy_delay, bool) or not isinstance(policy_delay, int) or policy_delay < 1:
            raise ValueError(
                "`policy_delay` must be a positive integer. Received: "
                f"policy_delay={policy_delay!r}"
            )
        for name, value in (("target_noise", target_noise), ("noise_clip", noise_clip)):
            if not float(value) >= 0.0:
                raise ValueError(f"`{name}` must be >= 0. Received: {name}={value!r}")
        if clip_norm is not None and not float(clip_norm) > 0.0:
            raise ValueError(f"`clip_norm` must be positive or None. Received: {clip_norm!r}")
        self.state_dim = int(state_dim)
        self.low = float(action_low)
        self.high = float(action_high)
        self.gamma = float(gamma)
        self.tau = float(tau)
        self.policy_delay = int(policy_delay)
        self.target_noise = float(target_noise)
        self.noise_clip = float(noise_clip)
        self.clip_norm = None if clip_norm is None else float(clip_norm)
        self.updates = tf.Variable(0, dtype=tf.int64, trainable=False, name="updates")
        hidden = tuple(int(h) for h in hidden)
        if not hidden or min(hidden) < 1:
            raise ValueError(f"`hidden` must be positive layer widths. Received: {hidden!r}")
        d, k, g = self.state_dim, 1000 * int(seed), len(hidden) + 1  # distinct layer seeds
        self.actor = _mlp(d, hidden, "actor", seed=k, small_last=True, activation="tanh")
        self.critic1 = _mlp(d + 1, hidden, "critic1", seed=k + g, small_last=False, activation=None)
        self.critic2 = _mlp(
            d + 1, hidden, "critic2", seed=k + 2 * g, small_last=False, activation=None
        )
        # The targets start as copies of the online networks (their own init is overwritten).
        self.target_actor = _mlp(d, hidden, "t_actor", seed=k, small_last=True, activation="tanh")
        self.target_critic1 = _mlp(
            d + 1, hidden, "t_critic1", seed=k + g, small_last=False, activation=None
        )
        self.target_critic2 = _mlp(
            d + 1, hidden, "t_critic2", seed=k + 2 * g, small_last=False, activation=None
        )
        for online, target in self._pairs():
            target.set_weights(online.get_weights())
        self.actor_optimizer = keras.optimizers.Adam(float(actor_learning_rate))
        self.critic_optimizer = keras.optimizers.Adam(float(critic_learning_rate))
        self.actor_optimizer.build(self.actor.trainable_variables)
        self.critic_optimizer.build(self._critic_variables())
        self._noise = tf.random.Generator.from_seed(int(seed) + 1)

    # Networks -----------------------------------------------------------------------------------
    def _pairs(self) -> list[tuple[Any, Any]]:
        return [
            (self.actor, self.target_actor),
            (self.critic1, self.target_critic1),
            (self.critic2, self.target_critic2),
        ]

    def _critic_variables(self) -> list[Any]:
        return list(self.critic1.trainable_variables) + list(self.critic2.trainable_variables)

    def _scale_action(self, action: tf.Tensor) -> tf.Tensor:
        return 2.0 * (action - self.low) / (self.high - self.low) - 1.0

    def _actor(self, model: Any, states: tf.Tensor) -> tf.Tensor:
        out = model(states, training=False)[:, 0]
        return self.low + (out + 1.0) * 0.5 * (self.high - self.low)

    def _q(self, model: Any, states: tf.Tensor, actions: tf.Tensor) -> tf.Tensor:
        x = tf.concat([states, self._scale_action(actions)[:, None]], axis=1)
        return model(x, training=False)[:, 0]

    def act(self, states: Any) -> np.ndarray:
        """The actor's actions for a batch of states (floats in ``[low, high]``)."""
        s = tf.convert_to_tensor(np.asarray(states, np.float32))
        return np.asarray(self._actor(self.actor, s).numpy())

    def q1(self, states: Any, actions: Any) -> np.ndarray:
        """``Q1(s, a)`` of the online critic for a batch (e.g. to score candidate actions)."""
        s = tf.convert_to_tensor(np.asarray(states, np.float32))
        a = tf.convert_to_tensor(np.asarray(actions, np.float32).reshape(-1))
        return np.asarray(self._q(self.critic1, s, a).numpy())

    # Learning -----------------------------------------------------------------------------------
    def _clip(self, grads: list[Any]) -> list[Any]:
        if self.clip_norm is None:
            return grads
        clipped, _ = tf.clip_by_global_norm(grads, self.clip_norm)
        return list(clipped)

    def targets(self, batch: Transitions, noise: Any = None) -> tf.Tensor:
        """``y = r + gamma * min(Q1', Q2')(s', a')`` with smoothed target actions.

        Args:
            batch: the transitions.
            noise: per-sample smoothing noise (before clipping); None draws
                ``N(0, target_noise)`` per sample from the agent's generator.
        """
        s2 = tf.convert_to_tensor(batch.next_states, tf.float32)
        r = tf.convert_to_tensor(batch.rewards, tf.float32)
        n = int(s2.shape[0])
        if noise is None:
            eps = self._noise.normal([n], stddev=self.target_noise)
        else:
            eps = tf.convert_to_tensor(np.asarray(noise, np.float32).reshape(n))
        eps = tf.clip_by_value(eps, -self.noise_clip, self.noise_clip)
        a2 = tf.clip_by_value(self._actor(self.target_actor, s2) + eps, self.low, self.high)
        q_next = tf.minimum(
            self._q(self.target_critic1, s2, a2), self._q(self.target_critic2, s2, a2)
        )
        return r + self.gamma * q_next

    def update(self, batch: Transitions, *, noise: Any = None) -> UpdateInfo:
        """One TD3 step on ``batch`` (critics; actor and targets every ``policy_delay``).

        Args:
            batch: transitions (``actions`` of shape ``[n]`` or ``[n, 1]``).
            noise: optional per-sample smoothing noise (for reproducible tests).

        Returns:
            An `UpdateInfo`.
        """
        s = tf.convert_to_tensor(batch.states, tf.float32)
        a = tf.reshape(tf.convert_to_tensor(batch.actions, tf.float32), [-1])
        y = tf.stop_gradient(self.targets(batch, noise))
        variables = self._critic_variables()
        with tf.GradientTape() as tape:
            q1 = self._q(self.critic1, s, a)
            q2 = self._q(self.critic2, s, a)
            critic_loss = tf.reduce_mean(tf.square(q1 - y)) + tf.reduce_mean(tf.square(q2 - y))
        grads = self._clip(tape.gradient(critic_loss, variables))
        self.critic_optimizer.apply_gradients(zip(grads, variables, strict=True))
        self.updates.assign_add(1)
        actor_loss = None
        if int(self.updates.numpy()) % self.policy_delay == 0:
            actor_vars = list(self.actor.trainable_variables)
            with tf.GradientTape() as tape:
                loss = -tf.reduce_mean(self._q(self.critic1, s, self._actor(self.actor, s)))
            grads = self._clip(tape.gradient(loss, actor_vars))
            self.actor_optimizer.apply_gradients(zip(grads, actor_vars, strict=True))
            self.update_targets()
            actor_loss = float(loss.numpy())
        return UpdateInfo(
            critic_loss=float(critic_loss.numpy()),
            actor_loss=actor_loss,
            q1_mean=float(tf.reduce_mean(q1).numpy()),
            target_mean=float(tf.reduce_mean(y).numpy()),
            updates=int(self.updates.numpy()),
        )

    def update_targets(self) -> None:
        """Polyak step: every target weight ``<- tau * online + (1 - tau) * target``."""
        for online, target in self._pairs():
            for w, tw in zip(online.weights, target.weights, strict=True):
                tw.assign(self.tau * w + (1.0 - self.tau) * tw)

    def trackables(self) -> dict[str, Any]:
        """Networks, optimisers, counters and the noise generator, for ``tf.train.Checkpoint``."""
        return {
            "actor": self.actor,
            "critic1": self.critic1,
            "critic2": self.critic2,
            "target_actor": self.target_actor,
            "target_critic1": self.target_critic1,
            "target_critic2": self.target_critic2,
            "actor_optimizer": self.actor_optimizer,
            "critic_optimizer": self.critic_optimizer,
            "updates": self.updates,
            "noise": self._noise,
        }
