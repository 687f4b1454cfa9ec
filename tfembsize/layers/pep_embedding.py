"""PEPEmbedding: an embedding table pruned by learnable soft thresholds (PEP).

PEP (Liu et al., ICLR 2021) re-parameterises an embedding table ``E`` as
``Ê = sign(E) * relu(|E| - g(S))`` with a learnable threshold parameter ``S`` and
``g = sigmoid``. Entries whose magnitude falls under their threshold become exactly zero
while training goes on, so the table prunes itself; the zero pattern is then retrained from
the original initial values (lottery ticket). The optimiser that moves the thresholds the way
the official code does (coupled L2 under Adam) is `tfembsize.optimizers.PEPAdam`; it is
re-exported here, as is `tfembsize.optimizers.coupled_l2_gradients`.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import tensorflow as tf

from tfembsize._keras import keras, register_serializable
from tfembsize.layers._soft_threshold import (
    FROZEN_ATTR,
    LIVE,
    SOFT_THRESHOLD,
    THRESHOLD_FN,
    THRESHOLD_FNS,
    is_threshold_variable,
    tf_variable,
)
from tfembsize.layers.utils import (
    EmbeddingOutputsMixin,
    embedding_base_kwargs,
    gather_rows,
    integer_ids,
    iter_layers,
    set_embedding_arguments,
    validate_dim,
)
from tfembsize.optimizers.pep_adam import PEPAdam as PEPAdam  # re-export
from tfembsize.optimizers.pep_adam import coupled_l2_gradients as coupled_l2_gradients  # re-export

__all__ = [
    "PEPEmbedding",
    "GRANULARITIES",
    "THRESHOLD_FNS",
    "find_pep_layers",
    "is_threshold_variable",
]

logger = logging.getLogger(__name__)

#: Canonical granularity names, in order of increasing threshold count.
GRANULARITIES = ("global", "dimension", "feature", "feature_dimension")

# Accepted spellings -> canonical name. "per_*"/"entry" are other common names of the same
# granularities, "feature_dim" is the official code's.
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

    Granularity of ``S`` (the spellings in the last column are accepted too):

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
    `tfembsize.optimizers.PEPAdam` (which adds ``threshold_l2 * S`` to the gradient of ``S``
    and uses ``threshold_lr``) or add the term yourself with
    `tfembsize.optimizers.coupled_l2_gradients`.

    **Retraining.** `freeze_mask` switches the layer to PEP's lottery-ticket mode: the
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
        self._g = THRESHOLD_FN[threshold_fn]
        self._soft_threshold = SOFT_THRESHOLD[threshold_fn]

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
        for var in {id(v): v for v in (self.threshold, tf_variable(self.threshold))}.values():
            setattr(var, FROZEN_ATTR, self._frozen)
        self.built: bool = True

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
        ids = integer_ids(inputs, self.input_dim, self.name)
        rows = gather_rows(self.embeddings, ids)
        if self.granularity in ("feature", "feature_dimension"):
            s = gather_rows(self.threshold, ids)
        else:
            s = tf.convert_to_tensor(self.threshold)
        keep = gather_rows(self._mask, ids)
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
        return LIVE[self.threshold_fn](
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
