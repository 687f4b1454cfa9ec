"""DeepSets fitness predictor for whole-table size allocations (BET; Qu et al., WSDM 2024).

The surrogate scores an *action*: an integer size for every element of one or more typed
sets (users and items). It knows nothing of embeddings: it takes one array of element
frequencies per type and, per action, one integer size array per type.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import tensorflow as tf

__all__ = ["DeepSetsSurrogate", "SortedSizes", "UpdateInfo", "FEATURES"]

FEATURES = ("frequency", "constant")

_ROWS_PER_CHUNK = 1 << 19  # entity rows per segment-sum call (~64 MB of float64 at 16 units)


class SortedSizes(NamedTuple):
    """Actions whose sizes never increase along the element order, given as histograms.

    ``counts[..., t, d - 1]`` elements of type t get size d: the first ``counts[t, d_max - 1]``
    elements (in the order of ``frequencies``) get d_max, the next ones d_max - 1, and so on.
    BET's actions have this form when elements are listed by decreasing frequency. The
    surrogate then takes set sums as differences of one cumulative sum (O(N) per call
    rather than O(N) per action).

    Attributes:
        counts: integers ``[types, d_max]`` (one action) or ``[batch, types, d_max]``.
    """

    counts: Any


class UpdateInfo(NamedTuple):
    """What one round of online surrogate training did.

    Attributes:
        loss: mean squared error over the updates of the round (before each update).
        losses: the loss of each update.
        predictions: the prediction for each update's action, before that update.
        targets: each update's target fitness.
        indices: archive index of each update's (action, fitness) pair.
        learning_rates: the learning rate each update used.
    """

    loss: float
    losses: tuple[float, ...]
    predictions: tuple[float, ...]
    targets: tuple[float, ...]
    indices: tuple[int, ...]
    learning_rates: tuple[float, ...]


def _mlp(params: Sequence[tf.Variable], x: tf.Tensor, slope: float, linear: bool) -> tf.Tensor:
    """Two dense layers with LeakyReLU after the first (and the second unless ``linear``)."""
    k0, k1, b0, b1 = params
    x = tf.nn.leaky_relu(tf.matmul(x, k0) + b0, alpha=slope)
    x = tf.matmul(x, k1) + b1
    return x if linear else tf.nn.leaky_relu(x, alpha=slope)


def _set_sums(
    params: tuple,
    inputs: Sequence[tf.Tensor],
    sizes: Sequence[tf.Tensor],
    d_max: tf.Tensor,
    slope: float,
) -> tuple[tf.Tensor, tf.Tensor]:
    """Sums of rho and member counts per (action, size), ``[B * d_max, E]`` and ``[B * d_max]``."""
    b = tf.shape(sizes[0])[0]
    segments = b * d_max
    sums = counts = None
    for rho_params, x, size in zip(params[0], inputs, sizes, strict=True):
        rho = tf.cast(_mlp(rho_params, x, slope, False), tf.float64)  # [n_t, E]
        seg = tf.reshape(tf.range(b)[:, None] * d_max + size - 1, [-1])
        part = tf.math.unsorted_segment_sum(tf.tile(rho, [b, 1]), seg, segments)
        count = tf.math.unsorted_segment_sum(tf.ones_like(seg, tf.float64), seg, segments)
        sums = part if sums is None else sums + part
        counts = count if counts is None else counts + count
    return sums, counts


def _sorted_set_sums(
    params: tuple, inputs: Sequence[tf.Tensor], counts: tf.Tensor, d_max: tf.Tensor, slope: float
) -> tuple[tf.Tensor, tf.Tensor]:
    """`_set_sums` for `SortedSizes` ``counts [B, T, d_max]``: runs of a cumulative sum."""
    b = tf.shape(counts)[0]
    sums = None
    for t, (rho_params, x) in enumerate(zip(params[0], inputs, strict=True)):
        rho = tf.cast(_mlp(rho_params, x, slope, False), tf.float64)  # [n_t, E]
        cum = tf.concat([tf.zeros_like(rho[:1]), tf.cumsum(rho, axis=0)], axis=0)
        desc = tf.reverse(counts[:, t, :], axis=[1])  # sizes d_max, d_max - 1, ..., 1
        ends = tf.cumsum(desc, axis=1)
        part = tf.gather(cum, ends) - tf.gather(cum, ends - desc)  # [B, d_max, E]
        part = tf.reverse(part, axis=[1])
        sums = part if sums is None else sums + part
    sums = tf.reshape(sums, [b * d_max, -1])
    member_counts = tf.reshape(tf.cast(tf.reduce_sum(counts, axis=1), tf.float64), [-1])
    return sums, member_counts


def _embed(
    params: tuple,
    inputs: Sequence[tf.Tensor],
    action: Any,
    d_max: tf.Tensor,
    slope: float,
    sorted_: bool,
) -> tf.Tensor:
    """Action embeddings h ``[B, units]`` (see `DeepSetsSurrogate`)."""
    if sorted_:
        b = tf.shape(action)[0]
        sums, counts = _sorted_set_sums(params, inputs, action, d_max, slope)
    else:
        b = tf.shape(action[0])[0]
        sums, counts = _set_sums(params, inputs, action, d_max, slope)
    z = sums / tf.maximum(counts, 1.0)[:, None]  # true mean; empty sizes: 0 / 1 = 0
    z = tf.reshape(tf.cast(z, tf.float32), [b, d_max, -1])
    feature = tf.cast(tf.range(1, d_max + 1), tf.float32) / tf.cast(d_max, tf.float32)
    feature = tf.broadcast_to(feature[None, :, None], [b, d_max, 1])
    x = tf.reshape(tf.concat([z, feature], axis=-1), [b * d_max, -1])
    s = tf.reshape(_mlp(params[1], x, slope, False), [b, d_max, -1])
    return tf.reduce_mean(s, axis=1)  # mean over all d_max sizes, empty ones included


# Shared by every surrogate instance (variables are arguments), so each process traces these
# once per input structure rather than once per surrogate.
@tf.function(reduce_retracing=True)
def _embed_and_predict(params, inputs, action, d_max, slope, sorted_):
    h = _embed(params, inputs, action, d_max, slope, sorted_)
    return h, _mlp(params[2], h, slope, True)[:, 0]


@tf.function(reduce_retracing=True)
def _train_step(params, adam_m, adam_v, updates, inputs, action, target, lr, d_max, slope, sorted_):
    weights = tf.nest.flatten(params)
    with tf.GradientTape() as tape:
        h = _embed(params, inputs, action, d_max, slope, sorted_)
        pred = _mlp(params[2], h, slope, True)[0, 0]
        loss = tf.square(pred - target)
    grads = tape.gradient(loss, weights)
    # Adam with the Keras defaults: beta_1 0.9, beta_2 0.999, epsilon 1e-7.
    beta_1, beta_2, epsilon = 0.9, 0.999, 1e-7
    updates.assign_add(1)
    t = tf.cast(updates, tf.float32)
    alpha = lr * tf.sqrt(1.0 - tf.pow(beta_2, t)) / (1.0 - tf.pow(beta_1, t))
    for var, g, m, v in zip(weights, grads, adam_m, adam_v, strict=True):
        if g is None:
            g = tf.zeros_like(var)
        m.assign(beta_1 * m + (1.0 - beta_1) * g)
        v.assign(beta_2 * v + (1.0 - beta_2) * tf.square(g))
        var.assign_sub(alpha * m / (tf.sqrt(v) + epsilon))
    return loss, pred


class _MLP(tf.Module):
    """The variables of a two-layer MLP (Glorot-uniform kernels, zero biases)."""

    def __init__(self, units: Sequence[int], rng: np.random.Generator, *, name: str) -> None:
        super().__init__(name=name)
        self.kernels = []
        self.biases = []
        for i, (fan_in, fan_out) in enumerate(zip(units[:-1], units[1:], strict=True)):
            limit = math.sqrt(6.0 / (fan_in + fan_out))  # Glorot uniform, as Keras Dense
            w = rng.uniform(-limit, limit, size=(fan_in, fan_out)).astype(np.float32)
            b = np.zeros(fan_out, np.float32)
            self.kernels.append(tf.Variable(w, name=f"{name}/kernel_{i}"))
            self.biases.append(tf.Variable(b, name=f"{name}/bias_{i}"))

    @property
    def params(self) -> list[tf.Variable]:
        """kernel_0, kernel_1, bias_0, bias_1."""
        return [*self.kernels, *self.biases]


class DeepSetsSurrogate(tf.Module):
    """Predicts the fitness of a size allocation from set embeddings (BET's predictor).

    For each entity type t (users, items) an element encoder rho_t maps the scalar input
    x_n = f_n / max f (frequency over the largest frequency of its type) to a vector. For
    each size d in 1..d_max, z_d is the **mean** of rho over all entities (of every type)
    given size d, or the zero vector if there are none; the set encoder gives
    s_d = mu([z_d ; d / d_max]); the action embedding is the mean of s_d over all d_max sizes
    (empty sizes included); the decoder predicts r_hat = pi(h).

    Networks (as BET): rho_t 1 -> 16 -> 16, mu 17 -> 64 -> 64 and pi 64 -> 64 -> 1, each
    a two-layer MLP with LeakyReLU (slope 0.01), pi with a linear output. Kernels start
    Glorot-uniform, biases zero, from ``seed``.

    Online training (BET's code): each call of `update` makes ``num_updates`` (N = 2) Adam steps,
    each on one (action, fitness) pair drawn uniformly from the archive, minimising the
    squared error. The learning rate of update k (0-based, over the surrogate's life) is
    max(learning_rate * decay**k, min_learning_rate): 0.01, 0.009, ... floored at 0.002.
    Adam uses beta_1 0.9, beta_2 0.999, epsilon 1e-7 (Keras defaults); its moments and the
    update count live in variables, so a ``tf.train.Checkpoint`` of the surrogate restores
    training exactly.

    Args:
        frequencies: one 1-D array of non-negative element frequencies per type.
        d_max: largest size.
        element_units: width of rho (16).
        set_units: width of mu and of the action embedding (64).
        decoder_units: hidden width of pi (64).
        negative_slope: LeakyReLU slope (0.01).
        learning_rate: initial Adam learning rate (0.01).
        learning_rate_decay: factor applied after each update (0.9).
        min_learning_rate: floor of the learning rate (0.002).
        features: ``"frequency"`` (x_n = f_n / max f) or ``"constant"`` (x_n = 1: the
            surrogate sees only which sizes are used and by how many types; an ablation).
        seed: seed of the initial weights.
        name: module name.

    Example:
        >>> s = DeepSetsSurrogate([np.array([5, 1]), np.array([3, 3, 0])], d_max=8, seed=0)
        >>> s.predict([np.array([[8, 2]]), np.array([[4, 4, 1]])]).shape
        (1,)

    References:
        Qu et al., "Budgeted Embedding Table For Recommender Systems", WSDM 2024.
        Zaheer et al., "Deep Sets", NeurIPS 2017.
    """

    def __init__(
        self,
        frequencies: Sequence[Any],
        d_max: int,
        *,
        element_units: int = 16,
        set_units: int = 64,
        decoder_units: int = 64,
        negative_slope: float = 0.01,
        learning_rate: float = 0.01,
        learning_rate_decay: float = 0.9,
        min_learning_rate: float = 0.002,
        features: str = "frequency",
        seed: int | None = None,
        name: str = "deep_sets_surrogate",
    ) -> None:
        super().__init__(name=name)
        if isinstance(frequencies, np.ndarray) and frequencies.ndim == 1:
            frequencies = [frequencies]
        freqs = [np.asarray(f, np.float64) for f in frequencies]
        if not freqs:
            raise ValueError("`frequencies` must hold at least one type. Received none.")
        for i, f in enumerate(freqs):
            if f.ndim != 1 or f.size == 0:
                raise ValueError(
                    f"`frequencies[{i}]` must be a non-empty 1-D array. Received shape {f.shape}."
                )
            if not np.all(np.isfinite(f)) or f.min() < 0:
                raise ValueError(f"`frequencies[{i}]` must be finite and non-negative.")
        for arg, value in (
            ("d_max", d_max),
            ("element_units", element_units),
            ("set_units", set_units),
            ("decoder_units", decoder_units),
        ):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"`{arg}` must be a positive integer. Received: {arg}={value!r}")
        if features not in FEATURES:
            raise ValueError(f"`features` must be one of {FEATURES}. Received: {features!r}")
        for arg, rate in (
            ("learning_rate", learning_rate),
            ("min_learning_rate", min_learning_rate),
        ):
            if not (isinstance(rate, (int, float)) and rate > 0):
                raise ValueError(f"`{arg}` must be > 0. Received: {arg}={rate!r}")
        if not (isinstance(learning_rate_decay, (int, float)) and 0 < learning_rate_decay <= 1):
            raise ValueError(
                f"`learning_rate_decay` must be in (0, 1]. Received: {learning_rate_decay!r}"
            )
        self.d_max = int(d_max)
        self.num_types = len(freqs)
        self.num_elements = tuple(int(f.size) for f in freqs)
        self.features = features
        self.initial_learning_rate = float(learning_rate)
        self.learning_rate_decay = float(learning_rate_decay)
        self.min_learning_rate = float(min_learning_rate)
        self.negative_slope = float(negative_slope)
        if features == "frequency":
            inputs = [f / f.max() if f.max() > 0 else np.zeros_like(f) for f in freqs]
        else:
            inputs = [np.ones_like(f) for f in freqs]
        self._inputs = [x.astype(np.float32).reshape(-1, 1) for x in inputs]
        rng = np.random.default_rng(seed)
        self.rho = [
            _MLP([1, element_units, element_units], rng, name=f"rho_{t}")
            for t in range(self.num_types)
        ]
        self.mu = _MLP([element_units + 1, set_units, set_units], rng, name="mu")
        self.pi = _MLP([set_units, decoder_units, 1], rng, name="pi")
        self._weights = [v for m in [*self.rho, self.mu, self.pi] for v in m.params]
        self.adam_m = [tf.Variable(tf.zeros_like(v), trainable=False) for v in self._weights]
        self.adam_v = [tf.Variable(tf.zeros_like(v), trainable=False) for v in self._weights]
        self.updates = tf.Variable(0, dtype=tf.int64, trainable=False, name="updates")
        self._tensors = tuple(tf.constant(x) for x in self._inputs)
        self._d_max_t = tf.constant(self.d_max, tf.int32)

    # Weights ---------------------------------------------------------------------------------
    @property
    def weights(self) -> list[tf.Variable]:
        """The trainable variables: rho_0, rho_1, ..., mu, pi (kernels then biases)."""
        return list(self._weights)

    def get_weights(self) -> list[np.ndarray]:
        """Copies of `weights` as numpy arrays."""
        return [v.numpy() for v in self._weights]

    def set_weights(self, weights: Sequence[Any]) -> None:
        """Assigns arrays in the order of `weights` (shapes must match)."""
        if len(weights) != len(self._weights):
            raise ValueError(f"Expected {len(self._weights)} arrays. Received {len(weights)}.")
        for v, w in zip(self._weights, weights, strict=True):
            w = np.asarray(w, np.float32)
            if tuple(w.shape) != tuple(v.shape):
                raise ValueError(f"{v.name}: expected shape {tuple(v.shape)}, got {w.shape}.")
            v.assign(w)

    @property
    def num_updates(self) -> int:
        """Adam updates made so far."""
        return int(self.updates.numpy())

    @property
    def learning_rate(self) -> float:
        """The learning rate the next update will use."""
        k = self.num_updates
        return max(self.initial_learning_rate * self.learning_rate_decay**k, self.min_learning_rate)

    # Forward ---------------------------------------------------------------------------------
    def _as_batch(self, action: Any) -> tuple[Any, bool, int]:
        """Validated ``(batch, sorted, batch_size)``: int32 arrays ready for the graph."""
        if isinstance(action, SortedSizes):
            c = np.asarray(action.counts)
            if c.ndim == 2:
                c = c[None]
            if c.ndim != 3 or c.shape[1:] != (self.num_types, self.d_max):
                raise ValueError(
                    f"SortedSizes.counts must have shape [{self.num_types}, {self.d_max}] or "
                    f"[batch, {self.num_types}, {self.d_max}]. Received shape {np.shape(c)}."
                )
            if c.dtype.kind not in "iu":
                raise TypeError(f"SortedSizes.counts must be integers. Received dtype {c.dtype}.")
            if c.size and c.min() < 0:
                raise ValueError("SortedSizes.counts must be non-negative.")
            if not np.array_equal(c.sum(axis=2), np.broadcast_to(self.num_elements, c.shape[:2])):
                raise ValueError(
                    f"SortedSizes.counts of each type must sum to its {self.num_elements} elements."
                )
            return c.astype(np.int32), True, c.shape[0]
        if len(action) != self.num_types:
            raise ValueError(
                f"An action needs one size array per type ({self.num_types}). Received "
                f"{len(action)}."
            )
        out, batch = [], None
        for t, sizes in enumerate(action):
            a = np.asarray(sizes)
            if a.ndim == 1:
                a = a[None]
            if a.ndim != 2 or a.shape[1] != self.num_elements[t]:
                raise ValueError(
                    f"Sizes of type {t} must have shape [{self.num_elements[t]}] or "
                    f"[batch, {self.num_elements[t]}]. Received shape {np.shape(sizes)}."
                )
            if a.dtype.kind not in "iu":
                raise TypeError(f"Sizes of type {t} must be integers. Received dtype {a.dtype}.")
            if a.size and (a.min() < 1 or a.max() > self.d_max):
                raise ValueError(
                    f"Sizes of type {t} must lie in [1, {self.d_max}]. Received values in "
                    f"[{a.min()}, {a.max()}]."
                )
            if batch is not None and a.shape[0] != batch:
                raise ValueError("Every type must have the same batch size.")
            batch = a.shape[0]
            out.append(a.astype(np.int32))
        assert batch is not None  # num_types >= 1 (checked in __init__)
        return out, False, batch

    def _params(self) -> tuple:
        # (rho per type, mu, pi): tf.nest flattens this in the order of `weights`.
        return ([m.params for m in self.rho], self.mu.params, self.pi.params)

    def _chunks(self, batch: Any, sorted_: bool, size: int) -> list[Any]:
        if sorted_:
            return [batch]  # O(N) once, whatever the batch size
        step = max(1, _ROWS_PER_CHUNK // max(1, sum(self.num_elements)))
        return [[s[i : i + step] for s in batch] for i in range(0, size, step)]

    def embed(self, action: Any) -> np.ndarray:
        """Action embeddings h.

        Args:
            action: one integer size array per type, each ``[n_t]`` or ``[batch, n_t]``, in
                the element order of ``frequencies``; or a `SortedSizes`.

        Returns:
            float32 array ``[batch, set_units]``.
        """
        return self.embed_and_predict(action)[0]

    def predict(self, action: Any) -> np.ndarray:
        """Predicted fitness r_hat = pi(h), float32 ``[batch]`` (arguments as `embed`)."""
        return self.embed_and_predict(action)[1]

    def embed_and_predict(self, action: Any) -> tuple[np.ndarray, np.ndarray]:
        """``(embed(action), predict(action))`` computed in one pass."""
        batch, sorted_, size = self._as_batch(action)
        hs, preds = [], []
        for chunk in self._chunks(batch, sorted_, size):
            h, pred = _embed_and_predict(
                self._params(), self._tensors, chunk, self._d_max_t, self.negative_slope, sorted_
            )
            hs.append(h.numpy())
            preds.append(pred.numpy())
        return np.concatenate(hs, axis=0), np.concatenate(preds, axis=0)

    def __call__(self, action: Any) -> np.ndarray:
        """Same as `predict`."""
        return self.predict(action)

    # Training --------------------------------------------------------------------------------
    def train_step(self, action: Any, target: float) -> tuple[float, float, float]:
        """One Adam step on the squared error of one action.

        Args:
            action: one size array ``[n_t]`` per type, or a `SortedSizes` of one action.
            target: its fitness.

        Returns:
            ``(loss, prediction, learning_rate)``, loss and prediction before the step.
        """
        batch, sorted_, size = self._as_batch(action)
        if size != 1:
            raise ValueError("`train_step` takes a single action.")
        target = float(target)
        if not math.isfinite(target):
            raise ValueError(f"`target` must be finite. Received: target={target!r}")
        lr = self.learning_rate
        loss, pred = _train_step(
            self._params(),
            self.adam_m,
            self.adam_v,
            self.updates,
            self._tensors,
            batch,
            tf.constant(target, tf.float32),
            tf.constant(lr, tf.float32),
            self._d_max_t,
            self.negative_slope,
            sorted_,
        )
        return float(loss.numpy()), float(pred.numpy()), lr

    def update(
        self,
        actions: Sequence[Sequence[Any]],
        targets: Sequence[float],
        *,
        rng: np.random.Generator,
        num_updates: int = 2,
    ) -> UpdateInfo:
        """Online training: ``num_updates`` steps, each on a pair drawn uniformly.

        Args:
            actions: the archive (any sequence; item ``i`` is one action: one size array per
                type, or a `SortedSizes`). Only the drawn items are read.
            targets: fitness of each action.
            rng: generator of the draws.
            num_updates: N (2 in BET).

        Returns:
            `UpdateInfo`.

        Raises:
            ValueError: empty archive, or lengths differ.
        """
        n = len(actions)
        if n == 0:
            raise ValueError("`actions` is empty: there is nothing to train on.")
        if len(targets) != n:
            raise ValueError(f"`targets` has {len(targets)} entries for {n} actions.")
        if isinstance(num_updates, bool) or not isinstance(num_updates, int) or num_updates < 1:
            raise ValueError(f"`num_updates` must be a positive integer. Received {num_updates!r}")
        losses, preds, tgts, idx, lrs = [], [], [], [], []
        for _ in range(num_updates):
            i = int(rng.integers(0, n))
            loss, pred, lr = self.train_step(actions[i], targets[i])
            losses.append(loss)
            preds.append(pred)
            tgts.append(float(targets[i]))
            idx.append(i)
            lrs.append(lr)
        return UpdateInfo(
            loss=float(np.mean(losses)),
            losses=tuple(losses),
            predictions=tuple(preds),
            targets=tuple(tgts),
            indices=tuple(idx),
            learning_rates=tuple(lrs),
        )
