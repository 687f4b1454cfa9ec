"""BPR triple sampling (Rendle et al., 2009) in numpy, and the `tf.data` pipeline built on it."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import tensorflow as tf

from tfembsize._checks import positive_int
from tfembsize.data.interactions import Interactions

__all__ = ["BPRSampler", "bpr_dataset"]

logger = logging.getLogger(__name__)

_STATE_FORMAT = "tfembsize.BPRSampler/1"


def _check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"`seed` must be a non-negative integer. Received: seed={seed!r}")
    return int(seed)


class BPRSampler:
    """Draws BPR training triples (user, positive item, negative item), as in CIESS and BET.

    Each batch: users are drawn uniformly from the users that have a training positive,
    without replacement when the batch is not larger than their number and with replacement
    otherwise (the official samplers' rule; ``replace=True`` always draws with replacement).
    Each user gets one of its training items uniformly at random as the positive, and one item
    uniformly at random among the items it has *not* interacted with in ``train`` as the
    negative (rejection sampling: draw uniformly from all items, redraw the ones that hit a
    positive; the membership test is a binary search over the sorted pair keys). Everything is
    vectorised numpy: a Gowalla batch of 2048 takes well under a millisecond.

    Batch number ``t`` is drawn from its own generator, seeded by ``(seed, t)``
    (``numpy.random.SeedSequence(seed, spawn_key=(t,))``), so any batch can be reproduced on its
    own (`sample_at`), `bpr_dataset` yields the very same batches, and the run state is just
    the step counter (`get_state` / `set_state`, JSON).

    Users with no training item cannot give a positive and are never drawn; users whose
    training items are *all* the items cannot give a negative and are left out with a
    warning.

    Args:
        train: the training interactions.
        seed: non-negative integer seed.
        replace: ``None`` (default) for the official samplers' rule above, ``True`` to always draw
            users with replacement, ``False`` to never do so (then ``batch_size`` must not exceed
            the number of eligible users).

    Example:
        >>> sampler = BPRSampler(train, seed=0)  # doctest: +SKIP
        >>> batch = sampler.sample(2048)  # {"user", "pos_item", "neg_item"}: int32 [2048]
        >>> state = sampler.get_state()  # JSON; BPRSampler(train, 0).set_state(state) resumes

    References:
        Rendle et al., "BPR: Bayesian Personalized Ranking from Implicit Feedback", UAI 2009.
    """

    def __init__(self, train: Interactions, seed: int = 0, *, replace: bool | None = None) -> None:
        if not isinstance(train, Interactions):
            raise TypeError(f"`train` must be an Interactions. Received: {type(train).__name__}")
        if replace not in (None, True, False):
            raise ValueError(f"`replace` must be None, True or False. Received: {replace!r}")
        self._train = train
        self._seed = _check_seed(seed)
        self._replace = replace
        self._step = 0
        indptr, indices = train.csr()
        self._indptr = indptr
        self._indices = indices
        self._keys = train.keys()
        self._num_items = train.num_items
        degree = np.diff(indptr)
        full = np.flatnonzero(degree >= train.num_items)
        if full.size:
            logger.warning(
                "%d user(s) have every item as a training positive and cannot get a negative; "
                "the BPR sampler leaves them out (e.g. user %d).",
                full.size,
                int(full[0]),
            )
        self._eligible = np.flatnonzero((degree >= 1) & (degree < train.num_items)).astype(np.int32)
        self._degree = degree
        if self._eligible.size == 0:
            raise ValueError(
                "`train` has no user with at least one positive and one non-positive item; "
                f"nothing to sample. Received: {train!r}"
            )

    @property
    def seed(self) -> int:
        """The seed."""
        return self._seed

    @property
    def step(self) -> int:
        """Number of batches drawn by `sample` so far (the next batch's index)."""
        return self._step

    @property
    def num_eligible_users(self) -> int:
        """Users that can be drawn (at least one positive and one negative)."""
        return int(self._eligible.size)

    def sample(self, batch_size: int) -> dict[str, np.ndarray]:
        """Draws the next batch and advances the step counter.

        Args:
            batch_size: number of triples.

        Returns:
            ``{"user", "pos_item", "neg_item"}``, each an int32 array of length
            ``batch_size``.
        """
        batch = self.sample_at(self._step, batch_size)
        self._step += 1
        return batch

    def sample_at(self, step: int, batch_size: int) -> dict[str, np.ndarray]:
        """Draws batch number ``step`` (pure: does not touch the step counter).

        Args:
            step: non-negative batch index.
            batch_size: number of triples.

        Returns:
            The same dict as `sample`.
        """
        if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
            raise ValueError(f"`step` must be a non-negative integer. Received: step={step!r}")
        batch_size = positive_int("batch_size", batch_size)
        rng = np.random.default_rng(np.random.SeedSequence(self._seed, spawn_key=(int(step),)))
        n = self._eligible.size
        replace = self._replace if self._replace is not None else batch_size > n
        if not replace and batch_size > n:
            raise ValueError(
                f"`batch_size` must be <= the {n} eligible users when sampling without "
                f"replacement (replace=False). Received: batch_size={batch_size}"
            )
        if replace:
            users = self._eligible[rng.integers(0, n, size=batch_size)]
        else:
            users = self._eligible[rng.choice(n, size=batch_size, replace=False)]
        offsets = rng.integers(0, self._degree[users])
        pos = self._indices[self._indptr[users] + offsets]
        neg = rng.integers(0, self._num_items, size=batch_size)
        base = users.astype(np.int64) * self._num_items
        todo = np.arange(batch_size)
        while todo.size:
            todo = todo[self._is_positive(base[todo] + neg[todo])]
            neg[todo] = rng.integers(0, self._num_items, size=todo.size)
        return {
            "user": users.astype(np.int32),
            "pos_item": pos.astype(np.int32),
            "neg_item": neg.astype(np.int32),
        }

    def _is_positive(self, keys: np.ndarray) -> np.ndarray:
        """Membership of pair keys in the training set (binary search over sorted keys)."""
        # Searching the queries in increasing order keeps the probes cache-friendly (~2x
        # faster on Gowalla than in random order).
        order = np.argsort(keys)
        q = keys[order]
        pos = np.minimum(np.searchsorted(self._keys, q), self._keys.size - 1)
        out = np.empty(keys.size, dtype=bool)
        out[order] = self._keys[pos] == q
        return out

    def get_state(self) -> dict[str, Any]:
        """JSON-serialisable run state (seed, step, and a fingerprint of the data)."""
        return {
            "format": _STATE_FORMAT,
            "seed": self._seed,
            "step": self._step,
            "replace": self._replace,
            "num_users": self._train.num_users,
            "num_items": self._train.num_items,
            "num_interactions": self._train.num_interactions,
        }

    def set_state(self, state: dict[str, Any]) -> None:
        """Restores a state from `get_state`; the next `sample` continues from there.

        Raises:
            ValueError: when the state comes from another sampler format or other data.
        """
        if not isinstance(state, dict) or state.get("format") != _STATE_FORMAT:
            raise ValueError(
                f"`state` must be a dict from BPRSampler.get_state() (format {_STATE_FORMAT!r})."
                f" Received: {state!r}"
            )
        mine = self.get_state()
        for key in ("num_users", "num_items", "num_interactions"):
            if state[key] != mine[key]:
                raise ValueError(
                    f"`state` was saved for other training data: {key}={state[key]} there, "
                    f"{mine[key]} here."
                )
        self._seed = _check_seed(state["seed"])
        self._replace = state["replace"]
        step = state["step"]
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"`state['step']` must be a non-negative integer. Received: {step!r}")
        self._step = step

    def __repr__(self) -> str:
        return (
            f"BPRSampler(seed={self._seed}, step={self._step}, "
            f"eligible_users={self.num_eligible_users}, num_items={self._num_items})"
        )


_PARALLEL_DRAWS = 2
_PREFETCH_BATCHES = 4


def bpr_dataset(
    train: Interactions,
    batch_size: int,
    seed: int = 0,
    num_steps: int | None = None,
    *,
    start_step: int = 0,
    replace: bool | None = None,
) -> tf.data.Dataset:
    """A `tf.data.Dataset` of BPR batches (see `BPRSampler`), deterministic under ``seed``.

    Element ``t`` is ``BPRSampler(train, seed).sample_at(start_step + t, batch_size)`` as
    tensors: ``{"user", "pos_item", "neg_item"}``, int32 of static shape ``[batch_size]``. The
    pipeline is a step counter mapped through the numpy sampler and prefetched; to resume a run
    after ``k`` steps, pass ``start_step=k``.

    Args:
        train: the training interactions.
        batch_size: triples per batch.
        seed: non-negative integer seed.
        num_steps: number of batches; ``None`` for an endless stream.
        start_step: index of the first batch.
        replace: user sampling rule, as in `BPRSampler`.

    Returns:
        The dataset.

    Example:
        >>> ds = bpr_dataset(split.train, batch_size=2048, seed=0)  # doctest: +SKIP
        >>> model.fit(ds, steps_per_epoch=400, epochs=10)  # doctest: +SKIP
    """
    batch_size = positive_int("batch_size", batch_size)
    if num_steps is not None:
        num_steps = positive_int("num_steps", num_steps)
    if (
        isinstance(start_step, bool)
        or not isinstance(start_step, (int, np.integer))
        or (start_step < 0)
    ):
        raise ValueError(
            f"`start_step` must be a non-negative integer. Received: start_step={start_step!r}"
        )
    sampler = BPRSampler(train, seed, replace=replace)
    sampler.sample_at(0, batch_size)  # fail early on a bad batch size / replace combination

    def draw(step: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        b = sampler.sample_at(int(step), batch_size)
        return b["user"], b["pos_item"], b["neg_item"]

    start = int(start_step)
    if num_steps is None:
        steps = tf.data.Dataset.counter(start, dtype=tf.int64)
    else:
        steps = tf.data.Dataset.range(start, start + num_steps)
    return _triples_dataset(steps, draw, batch_size=batch_size, name="bpr_sample")


def _triples_dataset(
    steps: tf.data.Dataset,
    draw: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]],
    *,
    batch_size: int | None,
    name: str,
) -> tf.data.Dataset:
    """Maps a dataset of step indices through a numpy ``draw(step) -> (user, pos, neg)``.

    Elements are ``{"user", "pos_item", "neg_item"}`` int32 tensors of shape ``[batch_size]``
    (``None``: batches may differ in length).
    """

    def to_batch(step: tf.Tensor) -> dict[str, tf.Tensor]:
        user, pos, neg = tf.numpy_function(
            draw, [step], (tf.int32, tf.int32, tf.int32), stateful=False, name=name
        )
        out = {"user": user, "pos_item": pos, "neg_item": neg}
        for t in out.values():
            t.set_shape([batch_size])
        return out

    # Fixed, small buffers and no tf.data autotuning: the stream is endless and a batch costs
    # about a millisecond to draw, so two parallel draws and a few prefetched batches keep any
    # training step fed. With autotuning on (even with fixed buffers, tf.data runs a model
    # thread for every iterator), two things went wrong in long searches on this 2-core
    # machine: (1) destroying an iterator after a long training run waited for the model
    # thread's optimisation period, about 30 s per `train_bpr` call (a third of a BET
    # fine-tuning step on ML-1M); (2) processes starved of CPU grew to 17-24 GB inside the
    # training loop (first with AUTOTUNE buffers, then intermittently with fixed ones, always
    # with the autotuner's thread running). Neither happens with autotuning off.
    ds = steps.map(to_batch, num_parallel_calls=_PARALLEL_DRAWS, deterministic=True).prefetch(
        _PREFETCH_BATCHES
    )
    options = tf.data.Options()
    options.autotune.enabled = False
    options.experimental_optimization.inject_prefetch = False
    return ds.with_options(options)
