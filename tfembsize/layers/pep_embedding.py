"""PEPEmbedding: an embedding table pruned by learnable soft thresholds (PEP), and PEPAdam.

PEP (Liu et al., ICLR 2021) re-parameterises an embedding table ``E`` as
``Ê = sign(E) * relu(|E| - g(S))`` with a learnable threshold parameter ``S`` and
``g = sigmoid``. Entries whose magnitude falls under their threshold become exactly zero
while training goes on, so the table prunes itself; the zero pattern is then retrained from
the original initial values (lottery ticket). This module holds the layer and the optimiser
that moves the thresholds the way the official code does (coupled L2 under Adam).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from typing import Any

import numpy as np
import tensorflow as tf

from tfembsize._keras import keras, register_serializable
from tfembsize.layers.utils import (
    EmbeddingOutputsMixin,
    check_ids_in_range,
    embedding_base_kwargs,
    iter_layers,
    set_embedding_arguments,
    validate_dim,
)

__all__ = [
    "PEPEmbedding",
    "PEPAdam",
    "GRANULARITIES",
    "THRESHOLD_FNS",
    "coupled_l2_gradients",
    "find_pep_layers",
    "is_threshold_variable",
]

logger = logging.getLogger(__name__)

#: Canonical granularity names (the issue's), in order of increasing threshold count.
GRANULARITIES = ("global", "dimension", "feature", "feature_dimension")

# Accepted spellings -> canonical name. "per_*"/"entry" are algorithms.md §6.1's names,
# "feature_dim" is the official code's.
_GRANULARITY_ALIASES = {
    "global": "global",
    "dimension": "dimension",
    "per_dim": "dimension",
    "feature": "feature",
    "per_entity": "feature",
    "feature_dimension": "feature_dimension",
    "feature_dim": "feature_dimension",
    "per_entity_dim": "feature_dimension",
    "entry": "feature_dimension",
}

#: Threshold functions ``g`` mapping the raw parameter ``S`` to a non-negative threshold.
THRESHOLD_FNS = ("sigmoid", "softplus")

_FROZEN_ATTR = "_tfembsize_pep_frozen"


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


_SOFT_THRESHOLD = {
    "sigmoid": _make_soft_threshold(tf.sigmoid, lambda s, t: t * (1.0 - t)),
    "softplus": _make_soft_threshold(tf.nn.softplus, lambda s, t: tf.sigmoid(s)),
}
_THRESHOLD_FN = {"sigmoid": tf.sigmoid, "softplus": tf.nn.softplus}


def _make_live(g: Any) -> Any:
    @tf.function(jit_compile=True, autograph=False)
    def live(table: tf.Tensor, s: tf.Tensor, keep: tf.Tensor, frozen: tf.Tensor) -> tuple:
        """The mask of usable entries (``keep & (frozen | |E| > g(S))``) and its row counts."""
        mask = tf.logical_and(keep, tf.logical_or(frozen, tf.abs(table) > g(s)))
        # Row sums first: XLA's CPU backend vectorises them, not a flat reduction.
        return mask, tf.reduce_sum(tf.cast(mask, tf.int32), axis=-1)

    return live


# Whole-table mask and count in one fused (XLA) pass; one function for both, so they agree.
_LIVE = {name: _make_live(g) for name, g in _THRESHOLD_FN.items()}


def _tf_variable(v: Any) -> Any:
    """The ``tf.Variable`` behind a Keras 3 variable (tf-keras variables are tf.Variables)."""
    if isinstance(v, tf.Variable):
        return v
    inner = getattr(v, "_value", None)
    return inner if isinstance(inner, tf.Variable) else v


def is_threshold_variable(variable: Any) -> bool:
    """True for the threshold parameter ``S`` of a `PEPEmbedding` (Keras or tf variable)."""
    return getattr(variable, _FROZEN_ATTR, None) is not None


class _PEPRegularizer:
    """Applies a regularizer to ``E * M``: entries frozen out by `freeze_mask` are excluded."""

    def __init__(self, regularizer: Any, layer: PEPEmbedding) -> None:
        self.regularizer = regularizer
        self.layer = layer

    def __call__(self, table: tf.Tensor) -> tf.Tensor:
        return self.regularizer(table * tf.cast(self.layer.mask_variable, table.dtype))

    def get_config(self) -> dict:
        return keras.regularizers.serialize(self.regularizer)


@register_serializable
class PEPEmbedding(EmbeddingOutputsMixin, keras.layers.Layer):
    """A drop-in for ``tf.keras.layers.Embedding`` that prunes itself with learnable thresholds.

    The table the model sees is the soft-thresholded ``Ê = sign(E) * relu(|E| - g(S))``: an
    entry is exactly zero when its magnitude is at most its threshold ``g(S)``, and shrunk by
    the threshold otherwise. ``g`` is the sigmoid (``threshold_fn``) and ``S`` is a trainable
    parameter starting at ``threshold_init``. Gradients reach ``E`` through the subgradient
    (zero where an entry is pruned) and ``S`` through ``g``. Lookups gather only the rows of
    ``E`` and ``S`` they need; nothing of size ``input_dim x output_dim`` is computed per step.

    Granularity of ``S`` (names from the issue; algorithms.md §6.1 and the official code
    use the others, all accepted):

    ==================== ============================ ===========================
    ``granularity``      shape of ``S``               also accepted
    ==================== ============================ ===========================
    ``"global"``         ``(1,)``                     --
    ``"dimension"``      ``(output_dim,)``            ``"per_dim"``
    ``"feature"``        ``(input_dim, 1)``           ``"per_entity"``
    ``"feature_dimension"`` ``(input_dim, output_dim)`` ``"entry"``, ``"per_entity_dim"``,
                                                      ``"feature_dim"``
    ==================== ============================ ===========================

    The default, ``"feature_dimension"`` (one threshold per entry), is the official code's.

    **Moving the thresholds.** At ``S = -15``, ``g'(S)`` is about 3e-7, so the loss hardly
    moves ``S``; in the official code a coupled L2 term (``weight_decay`` of PyTorch's Adam,
    added to the gradient) does, and Adam turns it into a rise of about the learning rate per
    step. Keras's ``weight_decay=`` is *decoupled* and does not reproduce this: train with
    `PEPAdam` (which adds ``threshold_l2 * S`` to the gradient of ``S`` and uses
    ``threshold_lr``) or add the term yourself with `coupled_l2_gradients`.

    **Retraining.** `freeze_mask` switches the layer to the lottery-ticket mode of §6.3: the
    threshold is off and the lookup returns ``E * M`` for a fixed binary mask ``M``, so pruned
    entries stay zero and get no gradient. The mask and the mode live in non-trainable
    variables, so checkpoints and SavedModels carry them.

    Args:
        input_dim: number of rows (vocabulary size).
        output_dim: embedding width ``d_max``.
        granularity: how many thresholds, see the table above.
        threshold_init: initial value ``s_0`` of ``S`` (-15 in the official ML-1M code,
            -150 for Criteo and Avazu). Lower values prune later.
        threshold_fn: ``g``, ``"sigmoid"`` (the paper's) or ``"softplus"``.
        embeddings_initializer: initializer of ``E`` (as in ``Embedding``).
        embeddings_regularizer: regularizer of ``E``, applied to ``E * M`` (all of ``E``
            before `freeze_mask`).
        embeddings_constraint: constraint applied to ``E``.
        mask_zero: whether id 0 is padding (as in ``Embedding``).
        **kwargs: base ``Layer`` arguments (``name``, ``dtype``, ``trainable``, ...).

    Example:
        >>> layer = PEPEmbedding(3, 2, granularity="global", threshold_init=0.0,
        ...                      embeddings_initializer="ones")
        >>> layer(tf.constant([0])).numpy().tolist()  # 1 - sigmoid(0) = 0.5
        [[0.5, 0.5]]
        >>> layer.usable_params()
        6

    References:
        Liu et al., "Learnable Embedding Sizes for Recommender Systems", ICLR 2021.
    """

    _tfembsize_pep = True

    def __init__(
        self,
        input_dim: int,
        output_dim: int,
        *,
        granularity: str = "feature_dimension",
        threshold_init: float = -15.0,
        threshold_fn: str = "sigmoid",
        embeddings_initializer: Any = "uniform",
        embeddings_regularizer: Any = None,
        embeddings_constraint: Any = None,
        mask_zero: bool = False,
        **kwargs: Any,
    ) -> None:
        input_dim = validate_dim("input_dim", input_dim)
        output_dim = validate_dim("output_dim", output_dim)
        if not isinstance(granularity, str) or granularity not in _GRANULARITY_ALIASES:
            raise ValueError(
                f"`granularity` must be one of {GRANULARITIES} (or an alias: "
                f"{sorted(set(_GRANULARITY_ALIASES) - set(GRANULARITIES))}). "
                f"Received: granularity={granularity!r}"
            )
        if (
            isinstance(threshold_init, bool)
            or not isinstance(threshold_init, (int, float, np.integer, np.floating))
            or not math.isfinite(float(threshold_init))
        ):
            raise ValueError(
                f"`threshold_init` must be a finite number. Received: "
                f"threshold_init={threshold_init!r}"
            )
        if threshold_fn not in THRESHOLD_FNS:
            raise ValueError(
                f"`threshold_fn` must be one of {THRESHOLD_FNS}. Received: "
                f"threshold_fn={threshold_fn!r}"
            )
        super().__init__(**embedding_base_kwargs(type(self).__name__, kwargs))
        set_embedding_arguments(
            self,
            input_dim,
            output_dim,
            embeddings_initializer,
            embeddings_regularizer,
            embeddings_constraint,
            mask_zero,
        )
        self.granularity = _GRANULARITY_ALIASES[granularity]
        self.threshold_init = float(threshold_init)
        self.threshold_fn = threshold_fn
        self._g = _THRESHOLD_FN[threshold_fn]
        self._soft_threshold = _SOFT_THRESHOLD[threshold_fn]

    # Weights ---------------------------------------------------------------------------------
    def threshold_shape(self) -> tuple[int, ...]:
        """Shape of ``S`` for this layer's granularity."""
        return {
            "global": (1,),
            "dimension": (self.output_dim,),
            "feature": (self.input_dim, 1),
            "feature_dimension": (self.input_dim, self.output_dim),
        }[self.granularity]

    def build(self, input_shape: Any = None) -> None:
        """Creates ``E``, ``S``, the retraining mask and the mode flag."""
        if self.built:
            return
        reg = (
            _PEPRegularizer(self.embeddings_regularizer, self)
            if self.embeddings_regularizer is not None
            else None
        )
        self.embeddings = self.add_weight(
            name="embeddings",
            shape=(self.input_dim, self.output_dim),
            initializer=self.embeddings_initializer,
            regularizer=reg,
            constraint=self.embeddings_constraint,
            trainable=True,
        )
        self.threshold = self.add_weight(
            name="threshold",
            shape=self.threshold_shape(),
            initializer=keras.initializers.Constant(self.threshold_init),
            trainable=True,
        )
        self._mask = self.add_weight(
            name="mask",
            shape=(self.input_dim, self.output_dim),
            dtype="bool",
            initializer="ones",
            trainable=False,
        )
        self._frozen = self.add_weight(
            name="frozen", shape=(), dtype="bool", initializer="zeros", trainable=False
        )
        # Mark S (and, under Keras 3, the tf.Variable the optimiser actually receives) so
        # that PEPAdam and coupled_l2_gradients recognise it and can skip it once frozen.
        for var in {id(v): v for v in (self.threshold, _tf_variable(self.threshold))}.values():
            setattr(var, _FROZEN_ATTR, self._frozen)
        self.built = True

    def _ensure_built(self) -> None:
        if not self.built:
            with tf.init_scope():
                self.build(None)

    @property
    def mask_variable(self) -> Any:
        """The bool ``input_dim x output_dim`` variable of the retraining mask ``M``."""
        self._ensure_built()
        return self._mask

    @property
    def frozen_variable(self) -> Any:
        """The bool scalar variable that is True in retraining mode (for graph code)."""
        self._ensure_built()
        return self._frozen

    @property
    def is_frozen(self) -> bool:
        """True after `freeze_mask`: threshold off, lookups return ``E * M``."""
        self._ensure_built()
        return bool(self._frozen.numpy())

    # Forward ---------------------------------------------------------------------------------
    def _effective(self, values: tf.Tensor, s: tf.Tensor, keep: tf.Tensor) -> tf.Tensor:
        """Soft threshold (pruning mode) or identity (frozen), then the mask ``M``."""
        if s.shape != values.shape:
            s = tf.broadcast_to(s, tf.shape(values))  # its gradient sums back to S's shape
        return self._soft_threshold(values, s, keep, tf.convert_to_tensor(self._frozen))

    def call(self, inputs: Any) -> tf.Tensor:
        """Looks up ``inputs`` (ids of any rank, or ragged) in the thresholded table."""
        if isinstance(inputs, tf.RaggedTensor):
            return tf.ragged.map_flat_values(self._lookup, inputs)
        return self._lookup(inputs)

    def _lookup(self, inputs: Any) -> tf.Tensor:
        ids = tf.convert_to_tensor(inputs)
        if ids.dtype not in (tf.int32, tf.int64):
            ids = tf.cast(ids, tf.int32)
        ids = check_ids_in_range(ids, self.input_dim, self.name)
        rows = tf.gather(tf.convert_to_tensor(self.embeddings), ids)
        s = tf.convert_to_tensor(self.threshold)
        if self.granularity in ("feature", "feature_dimension"):
            s = tf.gather(s, ids)
        keep = tf.gather(tf.convert_to_tensor(self._mask), ids)
        return tf.cast(self._effective(rows, s, keep), self.compute_dtype)

    # Whole-table views -------------------------------------------------------------------------
    def pruned_table(self) -> tf.Tensor:
        """The effective table ``Ê`` (zeros where pruned), a differentiable ``tf.Tensor``.

        In retraining mode this is ``E * M``. Use it for graph backbones that need all rows
        (it is also available as `masked_table`, the name `MaskedEmbedding` uses) and for
        export.
        """
        self._ensure_built()
        table = tf.convert_to_tensor(self.embeddings)
        return self._effective(
            table, tf.convert_to_tensor(self.threshold), tf.convert_to_tensor(self._mask)
        )

    def masked_table(self) -> tf.Tensor:
        """Alias of `pruned_table` (the whole-table method name of `MaskedEmbedding`)."""
        return self.pruned_table()

    def _live(self) -> tuple[tf.Tensor, tf.Tensor]:
        self._ensure_built()
        return _LIVE[self.threshold_fn](
            tf.convert_to_tensor(self.embeddings),
            tf.convert_to_tensor(self.threshold),
            tf.convert_to_tensor(self._mask),
            tf.convert_to_tensor(self._frozen),
        )

    def count_usable_params(self) -> tf.Tensor:
        """`usable_params` as an int64 ``tf.Tensor`` (usable inside ``tf.function``).

        One fused pass over ``E``, ``S`` and ``M``, cheap enough to run after every step.
        """
        return tf.reduce_sum(tf.cast(self._live()[1], tf.int64))

    def usable_params(self) -> int:
        """Entries allowed to be non-zero: the size of `pruning_mask`.

        While pruning: the non-zero count of ``Ê`` (entries with ``|E| > g(S)``). In
        retraining mode: the number of ones in the mask ``M`` (an upper bound on the non-zero
        count, which is what the budget guarantee needs).
        """
        return int(self.count_usable_params())

    def pruning_mask(self) -> np.ndarray:
        """The current binary mask as a numpy bool array ``[input_dim, output_dim]``.

        While pruning: ``Ê != 0``, i.e. ``|E| > g(S)``. In retraining mode: ``M``. Computed
        together with the count in one fused XLA pass, so ``pruning_mask().sum() ==
        usable_params()`` always. (XLA's sigmoid may round differently from the lookup's by
        an ulp, so an entry within float rounding of its threshold could be counted on the
        other side; a mask given to `freeze_mask` is exact by construction.)
        """
        return np.asarray(self._live()[0].numpy(), dtype=bool)

    def row_sizes(self) -> np.ndarray:
        """Per-row count of usable entries (an entity's "size" under an unstructured mask)."""
        return np.asarray(self._live()[1].numpy(), dtype=np.int32)

    def threshold_values(self) -> np.ndarray:
        """``g(S)`` as a numpy array of the shape of ``S``."""
        self._ensure_built()
        return self._g(tf.convert_to_tensor(self.threshold)).numpy()

    # Retraining ------------------------------------------------------------------------------
    def _validate_table_arg(self, name: str, value: Any) -> np.ndarray:
        arr = np.asarray(value.numpy() if hasattr(value, "numpy") else value)
        if arr.shape != (self.input_dim, self.output_dim):
            raise ValueError(
                f"Layer '{self.name}': `{name}` must have shape ({self.input_dim}, "
                f"{self.output_dim}). Received shape {arr.shape}."
            )
        return arr

    def freeze_mask(self, mask: Any, rewind_values: Any = None) -> None:
        """Fixes the binary mask ``M`` and switches the threshold off (retraining mode).

        Afterwards the lookup returns ``E * M``: pruned entries stay zero and get no
        gradient, and `PEPAdam` leaves ``S`` alone. ``E`` is set to ``rewind_values * M``
        (lottery-ticket rewinding to the initial table ``E0``, or a fresh initialisation),
        or, without ``rewind_values``, to the effective table the model sees now
        (`pruned_table`) times ``M``. May be called again with another mask.

        Args:
            mask: bool (or 0/1) array of shape ``[input_dim, output_dim]``; True = kept.
            rewind_values: optional array of shape ``[input_dim, output_dim]`` to restart
                the kept entries from.

        Raises:
            ValueError: a shape is wrong, ``mask`` has values other than 0 and 1, or
                ``rewind_values`` is not finite.
        """
        self._ensure_built()
        m = self._validate_table_arg("mask", mask)
        if m.dtype != bool:
            if m.dtype.kind not in "biuf" or not np.isin(m, (0, 1)).all():
                raise ValueError(
                    f"Layer '{self.name}': `mask` must be boolean or contain only 0 and 1."
                )
            m = m.astype(bool)
        if rewind_values is None:
            base = self.pruned_table().numpy()
        else:
            base = self._validate_table_arg("rewind_values", rewind_values)
            if base.dtype.kind not in "iuf" or not np.isfinite(base).all():
                raise ValueError(f"Layer '{self.name}': `rewind_values` must be finite numbers.")
        dtype = self.embeddings.dtype
        dtype = dtype.as_numpy_dtype if hasattr(dtype, "as_numpy_dtype") else dtype
        self.embeddings.assign(np.where(m, base, 0).astype(dtype))
        self._mask.assign(m)
        self._frozen.assign(True)
        logger.debug("Layer %r frozen with %d usable entries.", self.name, int(m.sum()))

    # Config ----------------------------------------------------------------------------------
    def get_config(self) -> dict:
        """Exactly the constructor arguments (``granularity`` in its canonical spelling)."""
        config = super().get_config()
        config.update(
            {
                "input_dim": self.input_dim,
                "output_dim": self.output_dim,
                "granularity": self.granularity,
                "threshold_init": self.threshold_init,
                "threshold_fn": self.threshold_fn,
                "embeddings_initializer": keras.initializers.serialize(self.embeddings_initializer),
                "embeddings_regularizer": keras.regularizers.serialize(self.embeddings_regularizer)
                if self.embeddings_regularizer is not None
                else None,
                "embeddings_constraint": keras.constraints.serialize(self.embeddings_constraint)
                if self.embeddings_constraint is not None
                else None,
                "mask_zero": self.mask_zero,
            }
        )
        return config


def find_pep_layers(model: Any) -> dict:
    """Maps layer name to layer for every `PEPEmbedding` in ``model`` (or ``model`` itself).

    Raises:
        ValueError: two PEP layers share a name.
    """
    found: dict = {}
    for layer in [model, *iter_layers(model)]:
        if getattr(layer, "_tfembsize_pep", False) and isinstance(layer, keras.layers.Layer):
            if layer.name in found and found[layer.name] is not layer:
                raise ValueError(
                    f"Two PEPEmbedding layers are named {layer.name!r}; give them distinct names."
                )
            found[layer.name] = layer
    return found


# Coupled L2 ----------------------------------------------------------------------------------
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
    goes through the optimiser's statistics, which is what drives PEP's thresholds
    (algorithms.md §6.2). Sparse (``IndexedSlices``) gradients become dense, because the
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
    out = []
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
    ``threshold_init`` set the pruning speed (algorithms.md §6.2). Every other variable gets
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
        frozen = getattr(variable, _FROZEN_ATTR, None)
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
        var = _tf_variable(variable)
        m, v = (_tf_variable(x) for x in self._slots(variable))
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
