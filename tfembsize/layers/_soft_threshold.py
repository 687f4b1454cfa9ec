"""PEP's soft-threshold maths and the marker of threshold variables.

The lookup of a `tfembsize.layers.PEPEmbedding` is ``sign(E) * relu(|E| - g(S))`` with a
hand-written gradient; its threshold variable ``S`` carries an attribute (`FROZEN_ATTR`) that
`tfembsize.optimizers.PEPAdam` and `tfembsize.optimizers.coupled_l2_gradients` use to find
it (`is_threshold_variable`) and to leave it alone once the layer is frozen. Both the layer
and the optimiser import from here, so neither imports the other.
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf

__all__ = [
    "THRESHOLD_FNS",
    "THRESHOLD_FN",
    "SOFT_THRESHOLD",
    "LIVE",
    "FROZEN_ATTR",
    "is_threshold_variable",
    "tf_variable",
]

#: Threshold functions ``g`` mapping the raw parameter ``S`` to a non-negative threshold.
THRESHOLD_FNS = ("sigmoid", "softplus")

#: Attribute set on a threshold variable; its value is the layer's "frozen" flag variable.
FROZEN_ATTR = "_tfembsize_pep_frozen"


def _make_soft_threshold(g: Any, g_prime: Any) -> Any:
    """The PEP lookup maths for one threshold function, with a hand-written gradient.

    ``f(x, s, keep, frozen)`` is ``sign(x) * relu(|x| - g(s))`` where ``keep`` (and zero
    elsewhere) while pruning, and ``x`` where ``keep`` once frozen. The gradient is the
    subgradient of that expression: ``1`` to ``x`` where the entry is live and ``0`` where it
    is pruned, ``-sign(x) g'(s)`` to ``s`` where live (``0`` once frozen). Writing it by hand
    keeps the lookup to a few element-wise ops on the gathered rows. ``s`` must have the shape
    of ``x``.
    """

    @tf.custom_gradient
    def soft_threshold(x: tf.Tensor, s: tf.Tensor, keep: tf.Tensor, frozen: tf.Tensor) -> Any:
        t = g(s)
        on = 1.0 - tf.cast(frozen, x.dtype)  # 1 while pruning, 0 once frozen
        live = tf.logical_and(keep, tf.logical_or(frozen, tf.abs(x) > t))
        sign = tf.sign(x)
        out = tf.where(live, x - sign * (t * on), tf.zeros_like(x))

        def grad(upstream: tf.Tensor) -> tuple:
            gx = tf.where(live, upstream, tf.zeros_like(upstream))
            return gx, (-on) * sign * gx * g_prime(s, t), None, None

        return out, grad

    return soft_threshold


#: The soft-threshold lookup (with its hand-written gradient) per threshold function.
SOFT_THRESHOLD = {
    "sigmoid": _make_soft_threshold(tf.sigmoid, lambda s, t: t * (1.0 - t)),
    "softplus": _make_soft_threshold(tf.nn.softplus, lambda s, t: tf.sigmoid(s)),
}
#: ``g`` per threshold function name.
THRESHOLD_FN = {"sigmoid": tf.sigmoid, "softplus": tf.nn.softplus}


def _make_live(g: Any) -> Any:
    """The fused (XLA) whole-table mask-and-count function for threshold function ``g``."""

    @tf.function(jit_compile=True, autograph=False)
    def live(table: tf.Tensor, s: tf.Tensor, keep: tf.Tensor, frozen: tf.Tensor) -> tuple:
        """The mask of usable entries (``keep & (frozen | |E| > g(S))``) and its row counts."""
        mask = tf.logical_and(keep, tf.logical_or(frozen, tf.abs(table) > g(s)))
        # Row sums first: XLA's CPU backend vectorises them, not a flat reduction.
        return mask, tf.reduce_sum(tf.cast(mask, tf.int32), axis=-1)

    return live


# Whole-table mask and count in one fused (XLA) pass; one function for both, so they agree.
LIVE = {name: _make_live(g) for name, g in THRESHOLD_FN.items()}


def tf_variable(v: Any) -> Any:
    """The ``tf.Variable`` behind a Keras 3 variable (tf-keras variables are tf.Variables)."""
    if isinstance(v, tf.Variable):
        return v
    inner = getattr(v, "_value", None)
    return inner if isinstance(inner, tf.Variable) else v


def is_threshold_variable(variable: Any) -> bool:
    """True for the threshold parameter ``S`` of a `PEPEmbedding` (Keras or tf variable)."""
    return getattr(variable, FROZEN_ATTR, None) is not None
