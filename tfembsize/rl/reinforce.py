"""`ReinforcePolicy`: a REINFORCE learner for a binary keep/grow decision.

The learner knows nothing of embeddings: a state is a pair of integers, a count (clipped into
``count_buckets`` buckets) and a rung index in ``[0, num_rungs)``, and an action is 0 (keep)
or 1 (grow). The policy network is

``concat[BN(Embedding(count)); one_hot(rung)] -> Dense(hidden) -> BN -> tanh -> Dense(2)
-> softmax``

(the hidden layer keeps its bias, although the normalisation after it cancels any constant
shift, so that bias gets no gradient). One `update` is one optimiser step (Adam by default)
on the REINFORCE loss ``-sum_i m_i * R_i * log pi(a_i | s_i)``, where the mask ``m`` leaves
samples out. A sample
left out plays no part at all: not in the loss and not in the batch statistics of the
normalisations, which run in training mode during an update (moving statistics move towards
the batch's); `probabilities`, `sample` and `greedy` use the moving statistics.

Arrays in, typed results out: the numpy methods validate their inputs and return numpy
arrays or a `ReinforceUpdate`; the ``tf_*`` methods take tensors, run in a ``tf.function``
(also with ``jit_compile=True``) and are what compiled training loops call.

References:
    Williams, "Simple Statistical Gradient-Following Algorithms for Connectionist
    Reinforcement Learning", Machine Learning 1992. Liu et al., "Automated Embedding Size
    Search in Deep Recommender Systems", SIGIR 2020 (ESAPN).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import tensorflow as tf

from tfembsize._batch_norm import batch_norm
from tfembsize._checks import positive_int
from tfembsize._keras import keras

__all__ = ["ReinforcePolicy", "ReinforceUpdate", "ReinforceUpdateTensors", "KEEP", "GROW"]

KEEP = 0
GROW = 1


class ReinforceUpdate(NamedTuple):
    """What one `ReinforcePolicy.update` did.

    Attributes:
        loss: ``-sum_i m_i R_i log pi(a_i | s_i)`` before the step.
        mean_reward: mean reward of the samples used (0 when none).
        samples: number of samples used (mask 1).
        grow_fraction: fraction of the samples used whose action was grow (0 when none).
    """

    loss: float
    mean_reward: float
    samples: int
    grow_fraction: float


class ReinforceUpdateTensors(NamedTuple):
    """`ReinforcePolicy.tf_update`'s result: the fields of `ReinforceUpdate` as tensors."""

    loss: tf.Tensor
    mean_reward: tf.Tensor
    samples: tf.Tensor
    grow_fraction: tf.Tensor


def _is_number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float, np.integer, np.floating))


class _PolicyNetwork(keras.layers.Layer):
    """The policy's weights and its forward pass (called directly, not through Keras)."""

    def __init__(
        self,
        num_rungs: int,
        count_buckets: int,
        embedding_dim: int,
        hidden: int,
        momentum: float,
        epsilon: float,
        seed: int,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.num_rungs = num_rungs
        self.count_buckets = count_buckets
        self.embedding_dim = embedding_dim
        self.hidden = hidden
        self.momentum = momentum
        self.epsilon = epsilon
        self.seed = seed

    def build(self, input_shape: Any = None) -> None:
        init = keras.initializers
        e, h, s = self.embedding_dim, self.hidden, self.seed

        def weight(
            name: str, shape: tuple[int, ...], initializer: Any, trainable: bool = True
        ) -> Any:
            return self.add_weight(
                name=name, shape=shape, initializer=initializer, trainable=trainable
            )

        self.count_embeddings = weight(
            "count_embeddings", (self.count_buckets, e), init.RandomUniform(-0.05, 0.05, seed=s)
        )
        self.count_gamma = weight("count_gamma", (e,), "ones")
        self.count_beta = weight("count_beta", (e,), "zeros")
        self.hidden_kernel = weight(
            "hidden_kernel", (e + self.num_rungs, h), init.GlorotUniform(seed=s + 1)
        )
        self.hidden_bias = weight("hidden_bias", (h,), "zeros")
        self.hidden_gamma = weight("hidden_gamma", (h,), "ones")
        self.hidden_beta = weight("hidden_beta", (h,), "zeros")
        self.output_kernel = weight("output_kernel", (h, 2), init.GlorotUniform(seed=s + 2))
        self.output_bias = weight("output_bias", (2,), "zeros")
        self.count_moving_mean = weight("count_moving_mean", (e,), "zeros", trainable=False)
        self.count_moving_variance = weight("count_moving_variance", (e,), "ones", trainable=False)
        self.hidden_moving_mean = weight("hidden_moving_mean", (h,), "zeros", trainable=False)
        self.hidden_moving_variance = weight(
            "hidden_moving_variance", (h,), "ones", trainable=False
        )
        self.built: bool = True

    def logits(
        self, buckets: tf.Tensor, rungs: tf.Tensor, *, training: bool, weights: tf.Tensor | None
    ) -> tf.Tensor:
        """``[n, 2]`` logits for bucket and rung indices ``[n]`` (float32)."""

        def norm(x: tf.Tensor, prefix: str) -> tf.Tensor:
            return batch_norm(
                x,
                gamma=getattr(self, f"{prefix}_gamma"),
                beta=getattr(self, f"{prefix}_beta"),
                moving_mean=getattr(self, f"{prefix}_moving_mean"),
                moving_variance=getattr(self, f"{prefix}_moving_variance"),
                training=training,
                momentum=self.momentum,
                epsilon=self.epsilon,
                weights=weights,
            )

        table = tf.convert_to_tensor(self.count_embeddings)
        counts = norm(tf.gather(table, buckets), "count")
        x = tf.concat([counts, tf.one_hot(rungs, self.num_rungs, dtype=tf.float32)], axis=1)
        z = tf.matmul(x, tf.convert_to_tensor(self.hidden_kernel)) + self.hidden_bias
        h = tf.tanh(norm(z, "hidden"))
        return tf.matmul(h, tf.convert_to_tensor(self.output_kernel)) + self.output_bias


class ReinforcePolicy:
    """A REINFORCE policy over {0: keep, 1: grow} (see the module docstring).

    Args:
        num_rungs: number of rung indices (the one-hot width of the rung feature).
        count_buckets: rows of the count embedding; a count ``c`` uses bucket
            ``min(c, count_buckets - 1)``.
        embedding_dim: width of the count embedding.
        hidden: width of the hidden layer.
        learning_rate: rate of the default Adam optimiser.
        optimizer: a new optimiser to use instead (e.g. ``keras.optimizers.SGD`` for an
            exactly predictable step); it is built on the policy's variables.
        momentum: momentum of the normalisations' moving statistics.
        epsilon: added to the variance by the normalisations.
        seed: seed of the initialisation and of the policy's sampling generator.

    Example:
        >>> policy = ReinforcePolicy(3, count_buckets=8, embedding_dim=4, hidden=8, seed=0)
        >>> p = policy.probabilities([0, 5, 100], [0, 1, 2])
        >>> p.shape, bool(np.allclose(p.sum(axis=1), 1.0))
        ((3, 2), True)
        >>> info = policy.update([0, 5, 100], [0, 1, 2], [1, 0, 1], [1.0, -1.0, 0.5],
        ...                      mask=[True, True, False])
        >>> info.samples, info.mean_reward, info.grow_fraction
        (2, 0.0, 0.5)

    References:
        Liu et al., "Automated Embedding Size Search in Deep Recommender Systems",
        SIGIR 2020 (ESAPN). Williams, "Simple Statistical Gradient-Following Algorithms for
        Connectionist Reinforcement Learning", Machine Learning 1992.
    """

    def __init__(
        self,
        num_rungs: int,
        *,
        count_buckets: int = 1024,
        embedding_dim: int = 32,
        hidden: int = 512,
        learning_rate: float = 1e-4,
        optimizer: Any = None,
        momentum: float = 0.99,
        epsilon: float = 1e-3,
        seed: int = 0,
    ) -> None:
        self.num_rungs = positive_int("num_rungs", num_rungs)
        self.count_buckets = positive_int("count_buckets", count_buckets)
        self.embedding_dim = positive_int("embedding_dim", embedding_dim)
        self.hidden = positive_int("hidden", hidden)
        if not (_is_number(learning_rate) and float(learning_rate) > 0.0):
            raise ValueError(
                f"`learning_rate` must be positive. Received: learning_rate={learning_rate!r}"
            )
        if not (_is_number(momentum) and 0.0 <= float(momentum) < 1.0):
            raise ValueError(f"`momentum` must be in [0, 1). Received: momentum={momentum!r}")
        if not (_is_number(epsilon) and float(epsilon) > 0.0):
            raise ValueError(f"`epsilon` must be positive. Received: epsilon={epsilon!r}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise ValueError(f"`seed` must be an integer. Received: seed={seed!r}")
        self.network = _PolicyNetwork(
            self.num_rungs,
            self.count_buckets,
            self.embedding_dim,
            self.hidden,
            float(momentum),
            float(epsilon),
            1000 * int(seed),
            name="reinforce_policy",
        )
        self.network.build(None)
        self.optimizer = (
            keras.optimizers.Adam(float(learning_rate)) if optimizer is None else optimizer
        )
        if not (
            getattr(self.optimizer, "built", False) or getattr(self.optimizer, "_built", False)
        ):
            self.optimizer.build(self._variables())
        self._generator = tf.random.Generator.from_seed(int(seed) + 1)
        ints = tf.TensorSpec([None], tf.int32)
        floats = tf.TensorSpec([None], tf.float32)
        self._update_fn = tf.function(
            self.tf_update, input_signature=[ints, ints, ints, floats, floats]
        )

    def _variables(self) -> list[Any]:
        return list(self.network.trainable_variables)

    # Graph methods ----------------------------------------------------------------------------
    def _buckets(self, counts: Any) -> tf.Tensor:
        counts = tf.cast(counts, tf.int32)
        return tf.clip_by_value(counts, 0, self.count_buckets - 1)

    def tf_logits(
        self, counts: Any, rungs: Any, *, training: bool = False, weights: Any = None
    ) -> tf.Tensor:
        """``[n, 2]`` logits of keep and grow for tensors of counts and rungs ``[n]``.

        Counts are clipped into ``[0, count_buckets - 1]``; rungs must lie in
        ``[0, num_rungs)`` (not checked here: a rung outside gives a zero one-hot).
        ``training=True`` normalises with the batch's statistics (rows with weight 0 left
        out) and moves the moving statistics.
        """
        w = None if weights is None else tf.cast(weights, tf.float32)
        return self.network.logits(
            self._buckets(counts), tf.cast(rungs, tf.int32), training=training, weights=w
        )

    def tf_probabilities(self, counts: Any, rungs: Any, *, training: bool = False) -> tf.Tensor:
        """``[n, 2]`` probabilities of keep and grow (``softmax`` of `tf_logits`)."""
        return tf.nn.softmax(self.tf_logits(counts, rungs, training=training), axis=-1)

    def tf_sample(self, counts: Any, rungs: Any) -> tf.Tensor:
        """One action per sample (int32 ``[n]``), drawn from the policy's own generator.

        Reproducible from ``seed`` (and checkpointed). Under XLA (``jit_compile=True``) the
        generator yields another, equally reproducible stream than outside it.
        """
        p_grow = self.tf_probabilities(counts, rungs)[:, GROW]
        u = self._generator.uniform(tf.shape(p_grow), dtype=tf.float32)
        return tf.cast(u < p_grow, tf.int32)

    def tf_update(
        self, counts: Any, rungs: Any, actions: Any, rewards: Any, mask: Any = None
    ) -> ReinforceUpdateTensors:
        """One optimiser step on ``-sum_i m_i R_i log pi(a_i | s_i)`` (tensors in and out).

        Usable inside a ``tf.function``, also with ``jit_compile=True``. When no sample is
        used (all masked out, or an empty batch) nothing changes: no step, no statistics.

        Args:
            counts: int ``[n]``.
            rungs: int ``[n]``.
            actions: int ``[n]`` of 0 (keep) or 1 (grow).
            rewards: float ``[n]``.
            mask: ``[n]`` 0/1 or bool (1 = use the sample); None uses every sample.

        Returns:
            A `ReinforceUpdateTensors` (loss before the step).
        """
        actions = tf.cast(actions, tf.int32)
        rewards = tf.cast(rewards, tf.float32)
        m = tf.ones_like(rewards) if mask is None else tf.cast(mask, tf.float32)
        samples = tf.reduce_sum(m)
        variables = self._variables()

        def step() -> tf.Tensor:
            with tf.GradientTape() as tape:
                logits = self.tf_logits(counts, rungs, training=True, weights=m)
                log_p = tf.reduce_sum(
                    tf.nn.log_softmax(logits) * tf.one_hot(actions, 2, dtype=tf.float32), axis=1
                )
                loss = -tf.reduce_sum(m * rewards * log_p)
            grads = tape.gradient(loss, variables)
            self.optimizer.apply_gradients(zip(grads, variables, strict=True))
            return loss

        loss = tf.cond(samples > 0, step, lambda: tf.constant(0.0, tf.float32))
        grow = tf.cast(tf.equal(actions, GROW), tf.float32)
        return ReinforceUpdateTensors(
            loss=loss,
            mean_reward=tf.math.divide_no_nan(tf.reduce_sum(m * rewards), samples),
            samples=tf.cast(samples, tf.int32),
            grow_fraction=tf.math.divide_no_nan(tf.reduce_sum(m * grow), samples),
        )

    # Numpy methods ----------------------------------------------------------------------------
    def _states(self, counts: Any, rungs: Any) -> tuple[np.ndarray, np.ndarray]:
        c, r = np.asarray(counts), np.asarray(rungs)
        for name, arr, value in (("counts", c, counts), ("rungs", r, rungs)):
            if arr.ndim != 1 or arr.dtype.kind not in "iu":
                raise ValueError(
                    f"`{name}` must be a 1-D array of integers. Received: {name}={value!r} "
                    f"(shape {arr.shape}, dtype {arr.dtype})"
                )
        if c.shape != r.shape:
            raise ValueError(
                "`counts` and `rungs` must have the same length. Received lengths "
                f"{len(c)} and {len(r)}."
            )
        if c.size and int(c.min()) < 0:
            raise ValueError(f"`counts` must be >= 0. Received count {int(c.min())}.")
        if r.size and (int(r.min()) < 0 or int(r.max()) >= self.num_rungs):
            bad = int(r.min()) if int(r.min()) < 0 else int(r.max())
            raise ValueError(
                f"`rungs` must lie in [0, num_rungs={self.num_rungs}). Received rung {bad}."
            )
        clipped = np.minimum(c, self.count_buckets - 1)  # before a cast to int32 could wrap
        return clipped.astype(np.int32), r.astype(np.int32)

    def probabilities(self, counts: Any, rungs: Any, training: bool = False) -> np.ndarray:
        """``[n, 2]`` probabilities of keep and grow for each ``(count, rung)`` state.

        ``training=True`` normalises with the batch's statistics and moves the moving
        statistics, as a Keras ``BatchNormalization`` in training does.
        """
        c, r = self._states(counts, rungs)
        return np.asarray(self.tf_probabilities(c, r, training=bool(training)).numpy())

    def sample(self, counts: Any, rungs: Any, rng: Any = None) -> np.ndarray:
        """One action per state, drawn independently from the policy (int32 ``[n]``).

        Args:
            counts: non-negative integer counts ``[n]``.
            rungs: integer rungs ``[n]`` in ``[0, num_rungs)``.
            rng: a ``numpy.random.Generator``, an integer seed, or None for the policy's own
                generator (seeded by ``seed``, checkpointed with the policy).
        """
        c, r = self._states(counts, rungs)
        if rng is None:
            return np.asarray(self.tf_sample(c, r).numpy(), dtype=np.int32)
        if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
            rng = np.random.default_rng(int(rng))
        if not isinstance(rng, np.random.Generator):
            raise TypeError(
                "`rng` must be a numpy.random.Generator, an integer seed or None. "
                f"Received: rng={rng!r}"
            )
        p_grow = self.probabilities(c, r)[:, GROW]
        return (rng.random(len(c)) < p_grow).astype(np.int32)

    def greedy(self, counts: Any, rungs: Any) -> np.ndarray:
        """The more probable action per state (int32 ``[n]``; a tie keeps)."""
        probabilities = self.probabilities(counts, rungs)
        return np.asarray(np.argmax(probabilities, axis=1), dtype=np.int32)

    def update(
        self, counts: Any, rungs: Any, actions: Any, rewards: Any, mask: Any = None
    ) -> ReinforceUpdate:
        """One optimiser step on ``-sum_i m_i R_i log pi(a_i | s_i)`` (see `tf_update`).

        Args:
            counts: non-negative integer counts ``[n]``.
            rungs: integer rungs ``[n]`` in ``[0, num_rungs)``.
            actions: ``[n]`` of 0 (keep) or 1 (grow).
            rewards: finite rewards ``[n]``.
            mask: ``[n]`` booleans (or 0/1): which samples the loss uses; None uses all.

        Returns:
            A `ReinforceUpdate`.
        """
        c, r = self._states(counts, rungs)
        n = len(c)
        a = np.asarray(actions)
        if a.shape != (n,) or a.dtype.kind not in "iub" or not np.isin(a, (KEEP, GROW)).all():
            raise ValueError(
                f"`actions` must be {n} values in {{0, 1}} (0 keep, 1 grow). "
                f"Received: actions={actions!r}"
            )
        rew = np.asarray(rewards)
        if rew.shape != (n,) or rew.dtype.kind not in "iuf" or not np.isfinite(rew).all():
            raise ValueError(f"`rewards` must be {n} finite numbers. Received: rewards={rewards!r}")
        m = np.ones(n, np.float32) if mask is None else np.asarray(mask)
        if m.shape != (n,) or m.dtype.kind not in "iubf" or not np.isin(m, (0, 1)).all():
            raise ValueError(f"`mask` must be {n} booleans (or 0/1). Received: mask={mask!r}")
        out = self._update_fn(
            tf.constant(c),
            tf.constant(r),
            tf.constant(a.astype(np.int32)),
            tf.constant(rew.astype(np.float32)),
            tf.constant(m.astype(np.float32)),
        )
        return ReinforceUpdate(
            loss=float(out.loss.numpy()),
            mean_reward=float(out.mean_reward.numpy()),
            samples=int(out.samples.numpy()),
            grow_fraction=float(out.grow_fraction.numpy()),
        )

    def trackables(self) -> dict[str, Any]:
        """The network, the optimiser and the sampling generator, for ``tf.train.Checkpoint``."""
        return {"network": self.network, "optimizer": self.optimizer, "generator": self._generator}
