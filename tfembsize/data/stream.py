"""A stream of BPR triples over the training interactions: each interaction once per epoch.

`bpr_dataset` draws users uniformly, so every user is seen about equally often. A stream
instead walks through the training interactions themselves, in an order shuffled with the
seed (a new order every epoch), and pairs each ``(user, positive item)`` with a negative
item drawn uniformly among the items the user has not interacted with. How often an entity
appears in the stream is then its training frequency, which in-training controllers that
count interactions (ESAPN) rely on.
"""

from __future__ import annotations

import logging
import math
import threading
from typing import Any

import numpy as np
import tensorflow as tf

from tfembsize._checks import positive_int
from tfembsize.data.interactions import Interactions
from tfembsize.data.sampler import _triples_dataset

__all__ = ["InteractionStream", "stream_dataset"]

logger = logging.getLogger(__name__)


def _non_negative_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"`{name}` must be a non-negative integer. Received: {name}={value!r}")
    return int(value)


class InteractionStream:
    """The training interactions as BPR triples, ``epochs`` passes in seeded orders.

    Epoch ``e`` visits every usable training interaction once, in the order of a permutation
    drawn from ``numpy.random.SeedSequence(seed, spawn_key=(0, e))``, cut into batches of
    ``batch_size`` (the last batch of an epoch holds the remainder, so it may be smaller).
    Batch ``t`` of the stream gets its negatives from its own generator
    (``SeedSequence(seed, spawn_key=(1, t))``): each one is uniform among the items its user
    has no training interaction with (rejection sampling). Any batch can be drawn on its own
    (`batch_at`), so a run resumes by its step count.

    Interactions of users whose training items are *all* the items cannot get a negative and
    are left out, with a warning.

    Args:
        train: the training interactions.
        batch_size: triples per batch.
        seed: non-negative integer seed.
        epochs: passes over the interactions.

    Example:
        >>> stream = InteractionStream(train, batch_size=500, seed=0)  # doctest: +SKIP
        >>> stream.num_steps, stream.batch_at(0)["user"].shape  # doctest: +SKIP
    """

    def __init__(self, train: Interactions, batch_size: int, *, seed: int = 0, epochs: int = 1):
        if not isinstance(train, Interactions):
            raise TypeError(f"`train` must be an Interactions. Received: {type(train).__name__}")
        self.batch_size = positive_int("batch_size", batch_size)
        self.seed = _non_negative_int("seed", seed)
        self.epochs = positive_int("epochs", epochs)
        users = np.asarray(train.users, np.int64)
        items = np.asarray(train.items, np.int64)
        degree = np.bincount(users, minlength=train.num_users)
        full = degree[users] >= train.num_items
        if full.any():
            logger.warning(
                "%d interaction(s) belong to users with every item as a training positive; "
                "they cannot get a negative and are left out of the stream.",
                int(full.sum()),
            )
            users, items = users[~full], items[~full]
        if users.size == 0:
            raise ValueError(
                "`train` has no interaction whose user has a non-positive item; nothing to "
                f"stream. Received: {train!r}"
            )
        self._users = users.astype(np.int32)
        self._items = items.astype(np.int32)
        self._keys = np.sort(users * train.num_items + items)
        self._num_items = int(train.num_items)
        self._lock = threading.Lock()
        self._order: tuple[int, np.ndarray] | None = None

    @property
    def num_triples(self) -> int:
        """Interactions visited per epoch."""
        return int(self._users.size)

    @property
    def steps_per_epoch(self) -> int:
        """Batches per epoch, ``ceil(num_triples / batch_size)``."""
        return math.ceil(self.num_triples / self.batch_size)

    @property
    def num_steps(self) -> int:
        """Batches in the whole stream, ``epochs * steps_per_epoch``."""
        return self.epochs * self.steps_per_epoch

    def _permutation(self, epoch: int) -> np.ndarray:
        with self._lock:
            if self._order is None or self._order[0] != epoch:
                seq = np.random.SeedSequence(self.seed, spawn_key=(0, epoch))
                self._order = (epoch, np.random.default_rng(seq).permutation(self.num_triples))
            return self._order[1]

    def batch_at(self, step: int) -> dict[str, np.ndarray]:
        """Batch number ``step`` (0-based): ``{"user", "pos_item", "neg_item"}``, int32.

        Raises:
            ValueError: ``step`` is negative or past the end of the stream.
        """
        step = _non_negative_int("step", step)
        if step >= self.num_steps:
            raise ValueError(
                f"`step` must be < num_steps={self.num_steps} ({self.epochs} epoch(s) of "
                f"{self.steps_per_epoch} batches). Received: step={step}"
            )
        epoch, j = divmod(step, self.steps_per_epoch)
        index = self._permutation(epoch)[j * self.batch_size : (j + 1) * self.batch_size]
        users, pos = self._users[index], self._items[index]
        rng = np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=(1, step)))
        neg = rng.integers(0, self._num_items, size=users.size)
        base = users.astype(np.int64) * self._num_items
        todo = np.arange(users.size)
        while todo.size:
            keys = base[todo] + neg[todo]
            at = np.minimum(np.searchsorted(self._keys, keys), self._keys.size - 1)
            todo = todo[self._keys[at] == keys]
            neg[todo] = rng.integers(0, self._num_items, size=todo.size)
        return {"user": users, "pos_item": pos, "neg_item": neg.astype(np.int32)}

    def __repr__(self) -> str:
        return (
            f"InteractionStream(triples={self.num_triples}, batch_size={self.batch_size}, "
            f"epochs={self.epochs}, seed={self.seed})"
        )


def stream_dataset(
    train: Interactions,
    batch_size: int,
    *,
    seed: int = 0,
    epochs: int = 1,
    start_step: int = 0,
) -> tf.data.Dataset:
    """A finite `tf.data.Dataset` of the `InteractionStream` batches from ``start_step`` on.

    Element ``t`` is ``InteractionStream(train, batch_size, seed=seed,
    epochs=epochs).batch_at(start_step + t)`` as int32 tensors of shape ``[None]`` (the last
    batch of an epoch may be smaller). Pass it to `tfembsize.training.train_bpr` as
    ``batches=lambda interactions, start: stream_dataset(interactions, ..., start_step=start)``
    with ``max_steps`` at most ``num_steps``.

    Args:
        train: the training interactions.
        batch_size: triples per batch.
        seed: non-negative integer seed.
        epochs: passes over the interactions.
        start_step: index of the first batch.

    Returns:
        The dataset.
    """
    stream = InteractionStream(train, batch_size, seed=seed, epochs=epochs)
    start = _non_negative_int("start_step", start_step)

    def draw(step: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        b = stream.batch_at(int(step))
        return b["user"], b["pos_item"], b["neg_item"]

    steps = tf.data.Dataset.range(start, max(start, stream.num_steps))
    return _triples_dataset(steps, draw, batch_size=None, name="bpr_stream")
