"""Batch normalisation over rows with optional row weights, in TensorFlow ops.

`LadderEmbedding` and `ReinforcePolicy` normalise with this function instead of a Keras
``BatchNormalization`` sublayer so that both behave the same under Keras 3 and tf-keras (whose
layers differ in masked moments, fused kernels and mixed-precision handling), and so that rows
left out by a weight of 0 (padding ids, samples masked out of a policy update) play no part in
the batch statistics at all.
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf

__all__ = ["batch_norm", "weighted_moments"]


def weighted_moments(
    x: tf.Tensor, weights: tf.Tensor | None = None
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Mean, biased variance and total weight of the rows of ``x`` (``[n, d]``).

    Args:
        x: float tensor ``[n, d]``.
        weights: optional 0/1 (or non-negative) float tensor ``[n]``; None weighs every row 1.

    Returns:
        ``(mean [d], variance [d], count [])``. With no weight at all (an empty batch, or
        every row masked out) the mean and variance are 0, not NaN.
    """
    if weights is None:
        weights = tf.ones(tf.shape(x)[:1], x.dtype)
    w = tf.cast(weights, x.dtype)
    used = w[:, None] > 0  # rows left out never reach a sum, even when not finite
    count, total = _across_replicas(
        tf.reduce_sum(w), tf.reduce_sum(tf.where(used, w[:, None] * x, tf.zeros_like(x)), axis=0)
    )
    mean = tf.math.divide_no_nan(total, count)
    centred = tf.where(used, x - mean, tf.zeros_like(x))
    (squares,) = _across_replicas(tf.reduce_sum(w[:, None] * tf.square(centred), axis=0))
    variance = tf.math.divide_no_nan(squares, count)
    return mean, variance, count


def _across_replicas(*sums: tf.Tensor) -> tuple[tf.Tensor, ...]:
    """``sums`` added over the replicas of a tf.distribute strategy (as they are without one).

    Inside ``strategy.run`` with several replicas, each replica holds a slice of the batch:
    summing the moments' parts over replicas gives every replica the statistics of the whole
    batch, so a distributed run normalises as a single-device run does. The all-reduce is
    differentiable.
    """
    ctx = tf.distribute.get_replica_context()
    if ctx is None or not tf.distribute.has_strategy() or ctx.num_replicas_in_sync == 1:
        return sums
    return tuple(ctx.all_reduce(tf.distribute.ReduceOp.SUM, list(sums)))


def _static_bool(flag: Any) -> bool | None:
    """``flag`` as a Python bool when it is known now (None counts as False), else None."""
    if flag is None or isinstance(flag, (bool, int)):
        return bool(flag)
    value = tf.get_static_value(flag)
    return None if value is None else bool(value)


def batch_norm(
    x: tf.Tensor,
    *,
    gamma: Any,
    beta: Any,
    moving_mean: Any,
    moving_variance: Any,
    training: Any,
    momentum: float,
    epsilon: float,
    weights: tf.Tensor | None = None,
) -> tf.Tensor:
    """``gamma * (x - mean) / sqrt(variance + epsilon) + beta`` over the rows of ``x``.

    In training the mean and (biased) variance are those of the batch, over the rows with
    non-zero ``weights``, and the moving statistics move towards them:
    ``moving <- momentum * moving + (1 - momentum) * batch`` (as Keras's
    ``BatchNormalization``); a batch with no weight leaves them unchanged. In inference the
    moving statistics are used. Computations are in float32 whatever the dtype of ``x``.

    Args:
        x: tensor ``[n, d]``.
        gamma: scale variable ``[d]``.
        beta: offset variable ``[d]``.
        moving_mean: moving mean variable ``[d]`` (assigned in training).
        moving_variance: moving variance variable ``[d]`` (assigned in training).
        training: Python bool, None (inference) or a boolean tensor.
        momentum: factor of the moving statistics.
        epsilon: added to the variance.
        weights: optional ``[n]`` row weights (0 leaves a row out of the statistics).

    Returns:
        The normalised float32 tensor ``[n, d]``.
    """
    x = tf.cast(x, tf.float32)
    scale = tf.cast(tf.convert_to_tensor(gamma), tf.float32)
    offset = tf.cast(tf.convert_to_tensor(beta), tf.float32)

    def normalise(mean: tf.Tensor, variance: tf.Tensor) -> tf.Tensor:
        return (x - mean) * (scale * tf.math.rsqrt(variance + epsilon)) + offset

    def inference() -> tf.Tensor:
        mean = tf.cast(tf.convert_to_tensor(moving_mean), tf.float32)
        variance = tf.cast(tf.convert_to_tensor(moving_variance), tf.float32)
        return normalise(mean, variance)

    def train() -> tf.Tensor:
        mean, variance, count = weighted_moments(x, weights)
        for variable, batch in ((moving_mean, mean), (moving_variance, variance)):
            old = tf.cast(tf.convert_to_tensor(variable), tf.float32)
            new = tf.where(count > 0, momentum * old + (1.0 - momentum) * batch, old)
            variable.assign(tf.cast(new, variable.dtype))
        return normalise(mean, variance)

    known = _static_bool(training)
    if known is None:
        return tf.cond(tf.cast(training, tf.bool), train, inference)
    return train() if known else inference()
