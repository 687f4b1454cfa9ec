"""PEPAdam: Adam with coupled L2 and its own learning rate for PEP thresholds.

PEP (Liu et al., ICLR 2021) moves the thresholds of a `tfembsize.layers.PEPEmbedding` with a
coupled L2 term (the ``weight_decay`` of PyTorch's Adam, added to the gradient). Keras's
``weight_decay=`` is decoupled and does not reproduce it; `PEPAdam` does, and
`coupled_l2_gradients` adds the term for custom training loops with any optimiser.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from typing import Any

import numpy as np
import tensorflow as tf

from tfembsize._keras import keras, register_serializable
from tfembsize.layers._soft_threshold import FROZEN_ATTR, is_threshold_variable, tf_variable

__all__ = ["PEPAdam", "coupled_l2_gradients"]

logger = logging.getLogger(__name__)


def _check_l2(name: str, value: Any) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float, np.integer, np.floating))
        or not math.isfinite(float(value))
        or value < 0
    ):
        raise ValueError(f"`{name}` must be a finite number >= 0. Received: {name}={value!r}")
    return float(value)


def _add_l2(grad: Any, var: Any, l2: float) -> tf.Tensor:
    """``grad + l2 * var`` as a dense tensor (an IndexedSlices gradient is scattered in)."""
    value = tf.convert_to_tensor(var)
    if isinstance(grad, tf.IndexedSlices):
        return tf.tensor_scatter_nd_add(
            l2 * value, tf.expand_dims(grad.indices, -1), tf.cast(grad.values, value.dtype)
        )
    return tf.cast(grad, value.dtype) + l2 * value


def coupled_l2_gradients(
    grads_and_vars: Iterable[tuple[Any, Any]], l2: float, *, threshold_l2: float | None = None
) -> list[tuple[Any, Any]]:
    """Adds coupled L2 to gradients: ``grad + l2 * var`` (PyTorch's optimiser weight_decay).

    Use this in a custom training loop with any optimiser, between ``tape.gradient`` (and
    clipping) and ``apply_gradients``. Unlike Keras's decoupled ``weight_decay=``, the term
    goes through the optimiser's statistics, which is what drives PEP's thresholds (see
    `PEPAdam`). Sparse (``IndexedSlices``) gradients become dense, because the
    term applies to every row. ``None`` gradients stay ``None`` (no update at all, as in
    PyTorch). `PEPAdam` does all of this internally.

    Args:
        grads_and_vars: pairs ``(gradient, variable)``.
        l2: coefficient for every variable (0 to leave non-threshold variables alone).
        threshold_l2: coefficient for PEP threshold variables; defaults to ``l2``.

    Returns:
        A list of ``(gradient, variable)`` pairs.

    Example:
        >>> grads = tape.gradient(loss, model.trainable_variables)  # doctest: +SKIP
        >>> optimizer.apply_gradients(coupled_l2_gradients(
        ...     zip(grads, model.trainable_variables), 1e-5))  # doctest: +SKIP
    """
    l2 = _check_l2("l2", l2)
    t_l2 = l2 if threshold_l2 is None else _check_l2("threshold_l2", threshold_l2)
    out = []
    for grad, var in grads_and_vars:
        coeff = t_l2 if is_threshold_variable(var) else l2
        if grad is None or coeff == 0.0:
            out.append((grad, var))
        else:
            out.append((_add_l2(grad, var, coeff), var))
    return out


# Fused threshold update (XLA): one pass over S and its moments. The functions take and return
# values (not variables), so the compiled code is shared safely by every optimiser.
def _adam_l2_update(s, m, v, g, lr, beta_1, beta_2, epsilon, step):  # noqa: ANN001, ANN202
    new_m = m + (g - m) * (1.0 - beta_1)
    new_v = v + (tf.square(g) - v) * (1.0 - beta_2)
    alpha = lr * tf.sqrt(1.0 - tf.pow(beta_2, step)) / (1.0 - tf.pow(beta_1, step))
    return s - alpha * new_m / (tf.sqrt(new_v) + epsilon), new_m, new_v


def _bucketed(indices: tf.Tensor, values: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Pads a sparse gradient of unknown length to the next power of two (zeros at row 0).

    XLA compiles once per input shape; gradients whose length changes from step to step
    (multi-hot features, ragged ids) would otherwise recompile the update every step.
    Adding zeros changes nothing.
    """
    indices = tf.reshape(indices, [-1])
    if indices.shape[0] is not None:
        return indices, values
    n = tf.shape(indices)[0]
    bits = tf.math.ceil(tf.math.log(tf.cast(tf.maximum(n, 1), tf.float32)) / math.log(2.0))
    pad = tf.bitwise.left_shift(1, tf.cast(bits, tf.int32)) - n
    pad = tf.maximum(pad, 0)
    return tf.pad(indices, [[0, pad]]), tf.pad(values, [[0, pad], [0, 0]])


@tf.function(jit_compile=True, autograph=False)
def _adam_l2_sparse(s, m, v, indices, values, lr, l2, beta_1, beta_2, epsilon, step):  # noqa: ANN001, ANN202
    g = tf.tensor_scatter_nd_add(l2 * s, tf.expand_dims(indices, -1), values)
    return _adam_l2_update(s, m, v, g, lr, beta_1, beta_2, epsilon, step)


@tf.function(jit_compile=True, autograph=False)
def _adam_l2_dense(s, m, v, grad, lr, l2, beta_1, beta_2, epsilon, step):  # noqa: ANN001, ANN202
    return _adam_l2_update(s, m, v, grad + l2 * s, lr, beta_1, beta_2, epsilon, step)


def _squared_norm(grad: Any) -> tf.Tensor:
    """Squared L2 norm of a gradient; for IndexedSlices, of the dense gradient it stands for.

    Duplicate indices are summed first (the dense gradient's row is their sum), with a
    fixed-size sort and segment sum that also compiles under XLA.
    """
    if not isinstance(grad, tf.IndexedSlices):
        return tf.reduce_sum(tf.square(tf.cast(grad, tf.float32)))
    indices = tf.reshape(grad.indices, [-1])
    values = tf.cast(grad.values, tf.float32)
    order = tf.argsort(indices)
    sorted_idx = tf.gather(indices, order)
    first = tf.concat([[True], sorted_idx[1:] != sorted_idx[:-1]], axis=0)
    segment = tf.cumsum(tf.cast(first, tf.int32)) - 1
    summed = tf.math.unsorted_segment_sum(tf.gather(values, order), segment, tf.shape(indices)[0])
    return tf.reduce_sum(tf.square(summed))


def _clip_by_global_norm(grads: list, clip_norm: float) -> list:
    """Keras's global-norm clipping without densifying sparse gradients."""
    norm = tf.sqrt(tf.add_n([_squared_norm(g) for g in grads if g is not None]))
    scale = clip_norm * tf.minimum(1.0 / norm, 1.0 / clip_norm)
    scale = scale + (norm - norm)  # NaN for a non-finite norm, as in Keras
    out: list[Any] = []
    for g in grads:
        if g is None:
            out.append(g)
        elif isinstance(g, tf.IndexedSlices):
            vals = g.values * tf.cast(scale, g.values.dtype)
            out.append(tf.IndexedSlices(vals, g.indices, g.dense_shape))
        else:
            out.append(g * tf.cast(scale, g.dtype))
    return out


@register_serializable
class PEPAdam(keras.optimizers.Adam):
    """Adam with coupled L2 and its own learning rate for PEP thresholds (the official recipe).

    For a `PEPEmbedding` threshold ``S`` the gradient becomes ``grad + threshold_l2 * S``
    (coupled, as PyTorch's ``Adam(weight_decay=...)``), and the step uses ``threshold_lr``.
    With zero data gradient Adam normalises that term, so ``S`` rises by about
    ``threshold_lr`` per step: ``threshold_lr``, ``threshold_l2`` and the layer's
    ``threshold_init`` set the pruning speed. Every other variable gets
    ``grad + l2 * var`` and the ordinary Adam step. Gradient clipping (``global_clipnorm``,
    100 in the official code) happens before the L2 term is added, as in PyTorch. Once a
    layer is frozen (`PEPEmbedding.freeze_mask`) its threshold is left untouched.

    The maths is Keras's Adam (``epsilon`` added to ``sqrt(v)``, bias corrections folded into
    the step size). Thresholds and variables with sparse gradients (embedding tables) are
    updated by one fused XLA pass over the variable and its two moments, about twice as fast
    as Keras's Adam on a large table on CPU; the L2 term makes their update dense, as in
    PyTorch. Other variables use Keras's own Adam step. Global-norm clipping computes the
    norm of sparse gradients without densifying them (Keras 3's own clipping materialises
    every table-sized gradient).

    Works with ``model.fit`` and with custom loops (``apply_gradients``), in Keras 3 and
    tf-keras. Keras's decoupled ``weight_decay=`` is still available but is not PEP's
    mechanism.

    Args:
        learning_rate: learning rate (float or schedule) of every non-threshold variable.
        threshold_lr: learning rate (float or schedule) of the thresholds; ``None`` uses
            ``learning_rate``.
        threshold_l2: coupled L2 coefficient of the thresholds (1e-5 in the official code).
        l2: coupled L2 coefficient of every other variable (1e-5 in the official code).
        name: optimiser name.
        **kwargs: `keras.optimizers.Adam` arguments (``beta_1``, ``beta_2``, ``epsilon``,
            ``global_clipnorm``, ...). ``amsgrad`` is not supported.

    Example:
        >>> opt = PEPAdam(1e-3, threshold_lr=1e-3, threshold_l2=1e-5, global_clipnorm=100.0)
        >>> model.compile(optimizer=opt, loss=...)  # doctest: +SKIP

    References:
        Liu et al., "Learnable Embedding Sizes for Recommender Systems", ICLR 2021.
    """

    def __init__(
        self,
        learning_rate: Any = 1e-3,
        *,
        threshold_lr: Any = None,
        threshold_l2: float = 1e-5,
        l2: float = 1e-5,
        name: str = "pep_adam",
        **kwargs: Any,
    ) -> None:
        if kwargs.get("amsgrad"):
            raise ValueError("PEPAdam does not support `amsgrad`. Received: amsgrad=True")
        kwargs.pop("amsgrad", None)
        if isinstance(threshold_lr, dict):
            threshold_lr = keras.optimizers.schedules.deserialize(threshold_lr)
        if threshold_lr is not None and not callable(threshold_lr):
            if (
                isinstance(threshold_lr, bool)
                or not isinstance(threshold_lr, (int, float, np.integer, np.floating))
                or not float(threshold_lr) > 0
                or not math.isfinite(float(threshold_lr))
            ):
                raise ValueError(
                    "`threshold_lr` must be a positive number, a learning-rate schedule or "
                    f"None. Received: threshold_lr={threshold_lr!r}"
                )
            threshold_lr = float(threshold_lr)
        threshold_l2 = _check_l2("threshold_l2", threshold_l2)
        l2 = _check_l2("l2", l2)
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        self.threshold_lr = threshold_lr
        self.threshold_l2 = threshold_l2
        self.l2 = l2

    def _slots(self, variable: Any) -> tuple[Any, Any]:
        if hasattr(self, "_get_variable_index"):  # Keras 3
            i = self._get_variable_index(variable)
        else:  # tf-keras
            i = self._index_dict[self._var_key(variable)]
        return self._momentums[i], self._velocities[i]

    def _threshold_learning_rate(self, learning_rate: Any) -> Any:
        if self.threshold_lr is None:
            return learning_rate
        if callable(self.threshold_lr):
            return self.threshold_lr(self.iterations)
        return self.threshold_lr

    def _deduplicate_sparse_grad(self, grads: Any) -> Any:
        """No de-duplication (tf-keras): the fused update sums duplicate rows itself.

        tf-keras merges duplicate indices with ``tf.unique``, whose length changes every step
        and would make XLA recompile the update each time.
        """
        return grads

    def _clip_gradients(self, grads: list) -> list:
        """Keras's clipping, with global-norm clipping that keeps sparse gradients sparse."""
        if self.global_clipnorm and self.global_clipnorm > 0 and not self.clipnorm:
            return _clip_by_global_norm(list(grads), float(self.global_clipnorm))
        return super()._clip_gradients(grads)

    def update_step(self, gradient: Any, variable: Any, learning_rate: Any = None) -> None:
        """One Adam step for ``variable`` with coupled L2 (threshold step for thresholds)."""
        lr = self.learning_rate if learning_rate is None else learning_rate
        frozen = getattr(variable, FROZEN_ATTR, None)
        if frozen is not None:
            self._fused_step(
                gradient, variable, self._threshold_learning_rate(lr), self.threshold_l2, frozen
            )
        elif isinstance(gradient, tf.IndexedSlices):
            self._fused_step(gradient, variable, lr, self.l2)
        else:
            if self.l2:
                gradient = _add_l2(gradient, variable, self.l2)
            if learning_rate is None:  # tf-keras: update_step(gradient, variable)
                super().update_step(gradient, variable)
            else:
                super().update_step(gradient, variable, learning_rate)

    def _fused_step(
        self, gradient: Any, variable: Any, lr: Any, l2: float, frozen: Any = None
    ) -> None:
        var = tf_variable(variable)
        m, v = (tf_variable(x) for x in self._slots(variable))
        dtype = var.dtype
        step = tf.cast(self.iterations + 1, dtype)
        epsilon = tf.cast(self.epsilon, dtype)
        if getattr(self, "adaptive_epsilon", False):  # tf-keras option
            epsilon = epsilon * tf.sqrt(1.0 - tf.pow(tf.cast(self.beta_2, dtype), step))
        args = (
            tf.cast(lr, dtype),
            tf.cast(l2, dtype),
            tf.cast(self.beta_1, dtype),
            tf.cast(self.beta_2, dtype),
            epsilon,
            step,
        )

        def update() -> tf.Tensor:
            state = (var.read_value(), m.read_value(), v.read_value())
            if isinstance(gradient, tf.IndexedSlices):
                indices, values = _bucketed(gradient.indices, tf.cast(gradient.values, dtype))
                new = _adam_l2_sparse(*state, indices, values, *args)
            else:
                new = _adam_l2_dense(*state, tf.cast(gradient, dtype), *args)
            # Assigning a value nothing else holds hands its buffer over (no copy).
            m.assign(new[1])
            v.assign(new[2])
            var.assign(new[0])
            return tf.constant(True)

        if frozen is None:
            update()
        else:
            tf.cond(tf.convert_to_tensor(frozen), lambda: tf.constant(False), update)

    def get_config(self) -> dict:
        """Adam's config plus ``threshold_lr``, ``threshold_l2`` and ``l2``."""
        config = super().get_config()
        config.pop("amsgrad", None)
        tlr = self.threshold_lr
        if tlr is not None and callable(tlr):
            tlr = keras.optimizers.schedules.serialize(tlr)
        config.update({"threshold_lr": tlr, "threshold_l2": self.threshold_l2, "l2": self.l2})
        return config
