"""`ESAPNController`: grows per-row sizes up a ladder while a model trains on a stream."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import tensorflow as tf

from tfembsize.budget import Budget
from tfembsize.controllers.esapn._ops import (
    hashed_uniform,
    occurrences,
    remembered_mean,
    ring_writes,
)
from tfembsize.controllers.esapn.config import TABLES, ESAPNConfig
from tfembsize.controllers.hooks import InTrainingController
from tfembsize.errors import BudgetInfeasibleError
from tfembsize.layers.ladder_embedding import LadderEmbedding
from tfembsize.models.base import as_ids
from tfembsize.rl.reinforce import GROW, KEEP, ReinforcePolicy

__all__ = ["ESAPNController", "BPR_SAMPLE_FIELDS", "BPR_CREDITED_FIELDS"]

logger = logging.getLogger(__name__)

_STATE_FORMAT = "tfembsize.ESAPNController"

BPR_SAMPLE_FIELDS: tuple[tuple[str, str], ...] = (
    ("user", "int32"),
    ("pos_item", "int32"),
    ("neg_item", "int32"),
)
"""The fields of a BPR batch (what a backbone without ``sample_fields`` is read with)."""

BPR_CREDITED_FIELDS: tuple[str, str] = ("user", "pos_item")
"""The user and the positive item of a BPR triple get its loss; the negative item does not."""


class _Layout:
    """How the controller reads a model's batches: the fields and the two credited ones.

    A model declares it with two attributes: ``sample_fields``, the ``(name, dtype)`` of
    every per-sample field its ``sample_losses`` reads (each a ``[b]`` vector), and
    ``credited_fields``, the names of the fields holding the user and the item each sample's
    loss is credited to. A model without them is read as a BPR backbone.
    """

    def __init__(self, model: Any) -> None:
        fields: Any = getattr(model, "sample_fields", None)
        credited: Any = getattr(model, "credited_fields", None)
        if fields is None and credited is None:
            fields, credited = BPR_SAMPLE_FIELDS, BPR_CREDITED_FIELDS
        parsed: tuple[tuple[str, tf.DType], ...] = ()
        pair: tuple[str, ...] = ()
        try:
            parsed = tuple((str(name), tf.as_dtype(dtype)) for name, dtype in fields)
            pair = tuple(str(name) for name in credited)
        except (TypeError, ValueError):
            pass
        dtypes = dict(parsed)
        if (
            not parsed
            or len(dtypes) != len(parsed)
            or len(pair) != 2
            or pair[0] == pair[1]
            or any(dtypes.get(name) not in (tf.int32, tf.int64) for name in pair)
        ):
            raise ValueError(
                f"{type(model).__name__}.sample_fields must list (name, dtype) pairs of "
                "distinct fields, and credited_fields the two integer fields (user, item) "
                f"credited with each sample's loss. Received: sample_fields={fields!r}, "
                f"credited_fields={credited!r}"
            )
        self.fields = parsed
        self.credited = (pair[0], pair[1])
        self.names = tuple(name for name, _ in self.fields)
        self.extra = tuple((n, d) for n, d in self.fields if n not in self.credited)

    def read(self, batch: Any) -> dict[str, tf.Tensor]:
        """The batch's fields by name (credited ids as int32, the others in their dtype)."""
        if isinstance(batch, (tuple, list)) and len(batch) == 1:
            batch = batch[0]
        if isinstance(batch, Mapping):
            missing = [name for name in self.names if name not in batch]
            if missing:
                raise ValueError(
                    f"A batch must be a dict with the keys {list(self.names)}. Missing: "
                    f"{missing}; received keys {sorted(batch)}."
                )
            values = [batch[name] for name in self.names]
        elif isinstance(batch, (tuple, list)) and len(batch) == len(self.names):
            values = list(batch)
        else:
            raise ValueError(
                f"A batch must be a dict with the keys {list(self.names)} or a tuple of "
                f"{len(self.names)} tensors in that order. Received: {type(batch).__name__}"
            )
        out = {}
        for (name, dtype), value in zip(self.fields, values, strict=True):
            if name in self.credited:
                out[name] = as_ids(value)
            else:
                out[name] = tf.cast(value, dtype)
        return out


def _optimizer_variables(optimizer: Any) -> list[Any]:
    variables = optimizer.variables
    if callable(variables):  # tf-keras optimisers expose a method
        variables = variables()
    return list(variables)


def _variable(value: Any, name: str) -> tf.Variable:
    with tf.init_scope():
        return tf.Variable(value, trainable=False, name=name)


class _Side:
    """One side (users or items): its table, policy, loss memory and counters."""

    def __init__(self, name: str, index: int, layer: LadderEmbedding, config: ESAPNConfig) -> None:
        self.name = name
        self.layer = layer
        self.rows = int(layer.input_dim)
        self.top = len(layer.ladder) - 1
        self.sizes = tf.constant(layer.ladder, tf.int64)
        self.seed = 2 * int(config.seed) + index
        self.policy = ReinforcePolicy(
            len(layer.ladder),
            count_buckets=config.count_buckets,
            embedding_dim=config.policy_embedding_dim,
            hidden=config.policy_hidden,
            learning_rate=config.policy_learning_rate,
            seed=self.seed,
        )
        t, capacity = int(config.memory), int(config.batch_size)
        # One spare row: pushes a ring cannot keep go there (never read).
        self.memory = _variable(tf.zeros([self.rows + 1, t], tf.float32), f"esapn_{name}_memory")
        self.counts = _variable(tf.zeros([self.rows], tf.int32), f"esapn_{name}_counts")
        self.previous = _variable(tf.zeros([capacity], tf.int32), f"esapn_{name}_previous")
        self.policy_loss = _variable(0.0, f"esapn_{name}_policy_loss")
        self.updates = _variable(tf.constant(0, tf.int64), f"esapn_{name}_updates")
        self.grown = _variable(tf.constant(0, tf.int64), f"esapn_{name}_grown")
        self.refused = _variable(tf.constant(0, tf.int64), f"esapn_{name}_refused")

    def variables(self) -> list[Any]:
        own = [
            self.memory,
            self.counts,
            self.previous,
            self.policy_loss,
            self.updates,
            self.grown,
            self.refused,
        ]
        return own + list(self.policy.network.variables)

    def state(self, ids: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """Running interaction counts and current rungs of ``ids``."""
        counts = tf.gather(tf.convert_to_tensor(self.counts), ids)
        rungs = tf.gather(tf.convert_to_tensor(self.layer.rungs_variable), ids)
        return counts, rungs

    def usable(self) -> tf.Tensor:
        """Usable parameters of the table now (int64)."""
        return tf.reduce_sum(tf.gather(self.sizes, tf.convert_to_tensor(self.layer.rungs_variable)))


class ESAPNController(InTrainingController):
    """Grows each user's and item's size up a ladder while a model trains on a stream (ESAPN).

    The model's user and item tables are `tfembsize.layers.LadderEmbedding` layers
    (`esapn_model` converts a BPR backbone; `tfembsize.models.RatingClassifier` is the
    streaming rating classifier): every row sits on a rung of the ladder of candidate sizes
    (all start on the lowest) and only grows. Each side has a `ReinforcePolicy` whose state
    is the row's running interaction count and its rung, and whose actions are keep and
    grow. Each sample's loss is credited to one user and one item: for a BPR backbone the
    user and the positive item of a triple (the negative item gets no credit), for the
    rating classifier the user and the item rated. A model names these through two
    attributes, ``sample_fields`` (the ``(name, dtype)`` of every per-sample field its
    ``sample_losses(batch, training)`` reads) and ``credited_fields`` (the user and the item
    field); a model without them is read as a BPR backbone. Inside the compiled step of
    `tfembsize.training.train_bpr`, per batch:

    1. **Policy step** on the previous batch (none on the first batch). For its credited
       users and items, an action is drawn from each side's policy (one per row, shared by
       the row's samples); the rows whose action is grow are raised one rung, every sample's
       loss (``softplus(s_neg - s_pos)`` for a triple) is computed in inference mode (no
       gradient, no optimiser step), and the rungs are put back (no table is written: a
       raised row reads the row its next rung's table holds). A row's reward is the mean of
       its remembered losses (at most ``memory`` of them) minus that loss, and each policy
       takes one REINFORCE step on ``-sum R log pi(a | s)`` over the samples, leaving out
       rows already on the top rung.
       The draws are stateless, a hash of ``(seed, step, position)``: a resumed run draws
       the same, and so does a run compiled with XLA.
    2. **Growth** on the current batch: each credited user and item whose greedy action is
       grow moves up one rung, its new row initialised by lifting its old one
       (`LadderEmbedding.grow`, outside the gradient). With ``budget_cap`` a growth that
       would take the usable parameters of both tables over ``B(c)`` is refused (requests
       are taken in batch order, a user before its item; once one does not fit, the rest
       of the batch stays put).
    3. The model's own optimiser step (the loop's).
    4. After the step, each sample's loss (recomputed in inference mode with the new
       weights) is pushed into the ring buffers of its credited user and item, whose
       running counts go up (they never reset), and the batch is kept as the next
       previous batch.

    The per-row buffers and counters, the previous batch, both policies and their
    optimisers are `variables`, saved with every `train_bpr` checkpoint, so an interrupted
    run resumes exactly. After every chunk the controller reports the mean size per side,
    the sparsity reached ``1 - sum(d) / (d_max * N)``, the fraction of rows on each size,
    the mean policy losses and the rows grown (and refused). ESAPN has no budget: a run
    reports the sparsity it reaches; with ``budget_cap`` the end of training asserts that
    the usable parameters are within ``B(c)``.

    Args:
        config: the recipe (`ESAPNConfig`; default: the official code's values).

    Example:
        >>> model = esapn_model(MF.create(split.num_users, split.num_items))  # doctest: +SKIP
        >>> controller = ESAPNController(ESAPNConfig(seed=0))  # doctest: +SKIP
        >>> train_bpr(model, split, None, config=TrainConfig(max_steps=500),
        ...           hook=controller)  # doctest: +SKIP
        >>> controller.summary()["sparsity_reached"]  # doctest: +SKIP

    References:
        Liu et al., "Automated Embedding Size Search in Deep Recommender Systems",
        SIGIR 2020 (ESAPN).
    """

    requires_graph_hooks = True

    def __init__(self, config: ESAPNConfig | None = None) -> None:
        if config is None:
            config = ESAPNConfig()
        if not isinstance(config, ESAPNConfig):
            raise TypeError(f"`config` must be an ESAPNConfig. Received: config={config!r}")
        self.config = config
        self.model: Any = None
        self.sides: tuple[_Side, ...] = ()
        self.d_max: int | None = None
        self.num_rows: int | None = None
        self.budget: Budget | None = None
        self.limit: int | None = None
        self.last_metrics: dict[str, float] = {}
        self._layout: _Layout | None = None
        self._previous_fields: dict[str, tf.Variable] = {}
        self._previous_size: tf.Variable | None = None

    # Setup ------------------------------------------------------------------------------------
    def attach(self, model: Any) -> ESAPNController:
        """Finds the user and item `LadderEmbedding` of the model and makes the state.

        Raises:
            TypeError: ``model`` has no ``sample_losses`` (not a BPR backbone nor a
                `tfembsize.models.RatingClassifier`).
            ValueError: its user or item table is not a `LadderEmbedding`, the two tables
                differ in width, or its ``sample_fields`` / ``credited_fields`` are
                malformed.
            BudgetInfeasibleError: with ``budget_cap``, the tables are over ``B(c)`` already.
        """
        if not callable(getattr(model, "sample_losses", None)):
            raise TypeError(
                "ESAPNController needs a tfembsize BPR backbone (MF, LightGCN, NGCF) or a "
                "RatingClassifier: a model with per-sample losses (`sample_losses`). "
                f"Received: {type(model).__name__}"
            )
        found = {key: getattr(model, key, None) for key in TABLES}
        layers = {k: v for k, v in found.items() if isinstance(v, LadderEmbedding)}
        if len(layers) != len(TABLES):
            kinds = {key: type(layer).__name__ for key, layer in found.items()}
            raise ValueError(
                "ESAPNController needs user and item tables that are LadderEmbedding layers; "
                f"{type(model).__name__} has {kinds}. Convert the backbone with "
                "tfembsize.controllers.esapn_model(model)."
            )
        user, item = layers["user_embedding"], layers["item_embedding"]
        if user.output_dim != item.output_dim:
            raise ValueError(
                "The user and item tables must have the same width. Received widths "
                f"{user.output_dim} and {item.output_dim}."
            )
        layout = _Layout(model)
        self.model = model
        self._layout = layout
        self.d_max = int(user.output_dim)
        self.num_rows = int(user.input_dim + item.input_dim)
        self.sides = (
            _Side("user", 0, user, self.config),
            _Side("item", 1, item, self.config),
        )
        capacity = int(self.config.batch_size)
        self._previous_fields = {
            name: _variable(tf.zeros([capacity], dtype), f"esapn_previous_{name}")
            for name, dtype in layout.extra
        }
        self._previous_size = _variable(tf.constant(0, tf.int32), "esapn_previous_size")
        self.budget = self.config.budget(self.d_max)
        self.limit = None if self.budget is None else self.budget.max_params_for(self.num_rows)
        if self.limit is not None and self.usable_params() > self.limit:
            raise BudgetInfeasibleError(
                f"budget_cap: the tables hold {self.usable_params()} usable parameters "
                f"already, over the budget of {self.limit} ({self.budget.describe()}, "  # type: ignore[union-attr]
                f"{self.num_rows} rows); a smaller lowest rung or sparsity is needed."
            )
        return self

    @property
    def attached(self) -> bool:
        """True once `attach` found the tables."""
        return bool(self.sides)

    def _require_attached(self) -> None:
        if not self.sides:
            raise RuntimeError("ESAPNController: call `attach(model)` first.")

    def _previous(self) -> tuple[_Layout, dict[str, tf.Variable], tf.Variable]:
        if self._layout is None or self._previous_size is None:
            raise RuntimeError("ESAPNController: call `attach(model)` first.")
        return self._layout, self._previous_fields, self._previous_size

    @property
    def policies(self) -> dict[str, ReinforcePolicy]:
        """The policy of each side (``"user"``, ``"item"``)."""
        self._require_attached()
        return {side.name: side.policy for side in self.sides}

    def variables(self) -> list[Any]:
        """Every variable the controller updates besides the model's (for checkpoints).

        Per side: the ring buffers of remembered losses, the running counts, the side's ids of
        the previous batch, the chunk's statistics, the policy network; then the previous
        batch's other fields (a BPR triple's negative item, a rating) and its size; then
        each policy's optimiser variables.
        """
        self._require_attached()
        _, fields, size = self._previous()
        out: list[Any] = []
        for side in self.sides:
            out += side.variables()
        out += [*fields.values(), size]
        for side in self.sides:
            out += _optimizer_variables(side.policy.optimizer)
        return out

    # Counts -----------------------------------------------------------------------------------
    def usable_params(self) -> int:
        """Usable parameters of both tables now (the sum of the rows' sizes)."""
        self._require_attached()
        return int(sum(side.layer.usable_params() for side in self.sides))

    def memory(self, side: str) -> tuple[np.ndarray, np.ndarray]:
        """``(ring buffers [rows, memory], running counts [rows])`` of ``"user"`` or ``"item"``.

        Slot ``k`` of a row holds the push number ``k + memory * j`` for the largest such
        push done so far (unwritten slots hold 0).
        """
        self._require_attached()
        for s in self.sides:
            if s.name == side:
                return s.memory.numpy()[: s.rows].copy(), s.counts.numpy().copy()
        raise ValueError(f"`side` must be 'user' or 'item'. Received: side={side!r}")

    def summary(self) -> dict[str, Any]:
        """Sizes reached: per side the mean size and rows per size, the sparsity, the overhead.

        ``sparsity_reached`` is ``1 - sum(d) / (d_max * N)`` over both tables; the maps and the
        normalisation of each table are reported apart (``overhead``), as are the policies'
        parameters.
        """
        self._require_attached()
        assert self.d_max is not None and self.num_rows is not None
        usable = self.usable_params()
        out: dict[str, Any] = {
            "usable_params": usable,
            "num_rows": self.num_rows,
            "d_max": self.d_max,
            "sparsity_reached": 1.0 - usable / (self.d_max * self.num_rows),
        }
        for side in self.sides:
            sizes = side.layer.sizes
            out[f"{side.name}_mean_size"] = float(sizes.mean()) if sizes.size else 0.0
            out[f"{side.name}_rows_per_size"] = {
                str(d): int((sizes == d).sum()) for d in side.layer.ladder
            }
            overhead = side.layer.overhead_params()
            out[f"{side.name}_overhead"] = {
                "maps": overhead.maps,
                "batch_norm": overhead.batch_norm,
            }
            out[f"{side.name}_policy_params"] = int(
                sum(int(np.prod(v.shape)) for v in side.policy.network.trainable_variables)
            )
        if self.limit is not None:
            out["budget"] = self.limit
        return out

    # The training hook --------------------------------------------------------------------
    def before_batch(self, batch: Any, step: tf.Tensor) -> None:
        """In graph: the policy step on the previous batch, then growth on this one."""
        self._require_attached()
        layout, _, _ = self._previous()
        fields = layout.read(batch)
        users, items = (fields[name] for name in layout.credited)
        self._check_batch(users)
        self._policy_step(tf.cast(step, tf.int64))
        self._grow(users, items)

    def _check_batch(self, users: tf.Tensor) -> None:
        n = users.shape[0]
        if n is not None and n > self.config.batch_size:
            raise ValueError(
                f"ESAPNController got a batch of {n} samples; it keeps at most "
                f"ESAPNConfig.batch_size={self.config.batch_size}. Raise `batch_size` to the "
                "training batch size."
            )

    def _policy_step(self, step: tf.Tensor) -> None:
        """REINFORCE on the previous batch (kept in variables), with rows raised for a moment."""
        layout, fields, size = self._previous()
        capacity = int(self.config.batch_size)
        valid = tf.range(capacity) < tf.convert_to_tensor(size)
        ids, states, actions, used = [], [], [], []
        for side in self.sides:
            x = tf.convert_to_tensor(side.previous)
            counts, rungs = side.state(x)
            p_grow = side.policy.tf_probabilities(counts, rungs)[:, GROW]
            u = hashed_uniform(side.seed, step, capacity)
            first = occurrences(x).first
            on = tf.logical_and(valid, rungs < side.top)
            a = tf.where(on, tf.gather(tf.cast(u < p_grow, tf.int32), first), 0)
            ids.append(x)
            states.append((counts, rungs))
            actions.append(a)
            used.append(tf.logical_and(on, counts > 0))
        saved = [tf.convert_to_tensor(side.layer.rungs_variable) for side in self.sides]
        for side, x, a, old in zip(self.sides, ids, actions, saved, strict=True):
            flags = tf.maximum(tf.math.unsorted_segment_max(a, x, side.rows), 0)
            side.layer.rungs_variable.assign(old + flags)
        previous = {name: variable.read_value() for name, variable in fields.items()}
        previous.update(zip(layout.credited, ids, strict=True))
        raised = self.model.sample_losses(
            {name: previous[name] for name in layout.names}, training=False
        )
        raised = tf.stop_gradient(tf.cast(raised, tf.float32))
        with tf.control_dependencies([raised]):
            for side, old in zip(self.sides, saved, strict=True):
                side.layer.rungs_variable.assign(old)
        t = int(self.config.memory)
        for side, x, (counts, rungs), a, mask in zip(
            self.sides, ids, states, actions, used, strict=True
        ):
            baseline = remembered_mean(tf.gather(tf.convert_to_tensor(side.memory), x), counts, t)
            # padding slots hold arbitrary samples: their rewards never reach the update
            reward = tf.where(valid, baseline - raised, 0.0)
            info = side.policy.tf_update(counts, rungs, a, reward, mask)
            side.policy_loss.assign_add(info.loss)
            side.updates.assign_add(tf.cast(info.samples > 0, tf.int64))

    def _grow(self, users: tf.Tensor, items: tf.Tensor) -> None:
        """Grows the rows of this batch whose greedy action is grow (within the cap)."""
        asks = []
        for side, x in zip(self.sides, (users, items), strict=True):
            counts, rungs = side.state(x)
            p = side.policy.tf_probabilities(counts, rungs)
            occ = occurrences(x)
            greedy = tf.gather(p[:, GROW] > p[:, KEEP], occ.first)
            first = tf.equal(occ.first, tf.range(tf.shape(x)[0]))
            asks.append((x, rungs, tf.logical_and(greedy, rungs < side.top), first))
        masks = [ask[2] for ask in asks]
        if self.limit is not None:
            masks = self._within_cap(asks)
        for side, (x, _, _, first), mask in zip(self.sides, asks, masks, strict=True):
            moved = side.layer.grow(x, mask=mask)
            side.grown.assign_add(tf.reduce_sum(tf.cast(tf.logical_and(moved, first), tf.int64)))

    def _within_cap(self, asks: list[tuple[tf.Tensor, ...]]) -> list[tf.Tensor]:
        """The growth requests that keep both tables within the budget, in batch order."""
        assert self.limit is not None
        increments, requests = [], []
        for side, (_, rungs, want, first) in zip(self.sides, asks, strict=True):
            request = tf.logical_and(want, first)  # one request per row
            up = tf.gather(side.sizes, tf.minimum(rungs + 1, side.top))
            increments.append(tf.where(request, up - tf.gather(side.sizes, rungs), 0))
            requests.append(request)
        room = tf.constant(self.limit, tf.int64) - tf.add_n([side.usable() for side in self.sides])
        # interleaved: the user of sample 0, its item, the user of sample 1, ...
        total = tf.cumsum(tf.reshape(tf.stack(increments, axis=1), [-1]))
        fits = tf.reshape(total <= room, [-1, len(self.sides)])
        masks = []
        for k, (side, request) in enumerate(zip(self.sides, requests, strict=True)):
            accepted = tf.logical_and(request, fits[:, k])
            refused = tf.logical_and(request, tf.logical_not(fits[:, k]))
            side.refused.assign_add(tf.reduce_sum(tf.cast(refused, tf.int64)))
            masks.append(accepted)
        return masks

    def after_batch(self, batch: Any, loss: tf.Tensor, step: tf.Tensor) -> None:
        """In graph: remembers each sample's loss for its user and item; keeps the batch."""
        del loss, step
        self._require_attached()
        layout, fields, size = self._previous()
        current = layout.read(batch)
        users, items = (current[name] for name in layout.credited)
        losses = self.model.sample_losses(current, training=False)
        losses = tf.stop_gradient(tf.cast(losses, tf.float32))
        n = tf.shape(users)[0]
        capacity = int(self.config.batch_size)
        tf.debugging.assert_less_equal(
            n,
            capacity,
            message=f"ESAPNController keeps at most ESAPNConfig.batch_size={capacity} samples",
        )
        padding = [[0, capacity - n]]
        for side, x in zip(self.sides, (users, items), strict=True):
            counts = tf.gather(tf.convert_to_tensor(side.counts), x)
            index, kept = ring_writes(x, counts, int(self.config.memory), side.rows)
            side.memory.scatter_nd_update(index, tf.where(kept, losses, 0.0))
            side.counts.scatter_nd_add(x[:, None], tf.ones_like(x))
            side.previous.assign(tf.pad(x, padding))
        for name, variable in fields.items():
            variable.assign(tf.pad(current[name], padding))
        size.assign(n)
        return None

    def on_chunk_end(self, step: int, losses: np.ndarray) -> dict[str, float]:
        """Host: sizes reached, rows per size, the chunk's policy losses and growth."""
        del losses
        self._require_attached()
        summary = self.summary()
        metrics: dict[str, float] = {"sparsity_reached": float(summary["sparsity_reached"])}
        rows = float(self.num_rows or 1)
        per_size: dict[int, int] = {}
        for side in self.sides:
            metrics[f"{side.name}_mean_size"] = float(summary[f"{side.name}_mean_size"])
            for d, n in summary[f"{side.name}_rows_per_size"].items():
                per_size[int(d)] = per_size.get(int(d), 0) + n
        for d in sorted(per_size):
            metrics[f"rows_at_{d}"] = per_size[d] / rows
        for side in self.sides:
            updates = int(side.updates.numpy())
            metrics[f"{side.name}_policy_loss"] = (
                float(side.policy_loss.numpy()) / updates if updates else 0.0
            )
            metrics[f"{side.name}_grown"] = float(side.grown.numpy())
            if self.limit is not None:
                metrics[f"{side.name}_refused"] = float(side.refused.numpy())
            for variable in (side.policy_loss, side.updates, side.grown, side.refused):
                variable.assign(tf.zeros_like(variable))
        self.last_metrics = dict(metrics, step=float(step))
        return metrics

    def on_train_end(self, step: int) -> None:
        """Logs the sizes reached; with ``budget_cap`` asserts the budget (raises if broken)."""
        if not self.sides:
            return
        if self.budget is not None and self.num_rows is not None:
            self.budget.check_total(self.usable_params(), self.num_rows, what="ESAPN tables")
        summary = self.summary()
        logger.info(
            "ESAPN after %d steps: mean size users %.2f, items %.2f; sparsity reached %.4f.",
            step,
            summary["user_mean_size"],
            summary["item_mean_size"],
            summary["sparsity_reached"],
        )

    # Persistence ------------------------------------------------------------------------------
    def get_state(self) -> dict[str, Any]:
        """JSON run state (the arrays are in `variables`)."""
        return {
            "format": _STATE_FORMAT,
            "config": self.config.to_dict(),
            "rows": [side.rows for side in self.sides],
            "last_metrics": dict(self.last_metrics),
        }

    def set_state(self, state: Mapping[str, Any]) -> None:
        """Restores `get_state` output (an empty state is a run that has not started).

        Raises:
            ValueError: the state is not an ESAPN state, or it was written for other tables
                or another recipe.
        """
        if not state:
            return
        if state.get("format") != _STATE_FORMAT:
            raise ValueError(f"Not an ESAPNController state (format {state.get('format')!r}).")
        saved = ESAPNConfig.from_dict(state["config"])
        if saved != self.config:
            raise ValueError(
                f"The saved run used another ESAPN recipe: {saved.to_dict()}; this controller "
                f"has {self.config.to_dict()}."
            )
        if self.sides and list(state["rows"]) != [side.rows for side in self.sides]:
            raise ValueError(
                f"The saved run has tables of {state['rows']} rows, the attached model "
                f"{[side.rows for side in self.sides]}."
            )
        self.last_metrics = {k: float(v) for k, v in state.get("last_metrics", {}).items()}
