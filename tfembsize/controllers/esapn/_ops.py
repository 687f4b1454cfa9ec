"""TensorFlow helpers of the ESAPN controller (graph code, XLA-compatible: fixed shapes only)."""

from __future__ import annotations

from typing import NamedTuple

import tensorflow as tf

__all__ = ["Occurrences", "occurrences", "remembered_mean", "ring_writes", "hashed_uniform"]


class Occurrences(NamedTuple):
    """Where each entry of an id vector stands among the entries with the same id.

    Attributes:
        first: index of the first entry with the same id (in vector order).
        rank: how many entries with the same id come before this one.
        count: how many entries have this id.
    """

    first: tf.Tensor
    rank: tf.Tensor
    count: tf.Tensor


def occurrences(ids: tf.Tensor) -> Occurrences:
    """`Occurrences` of a 1-D int id vector, computed with a stable sort (no dynamic shapes)."""
    ids = tf.reshape(ids, [-1])
    n = tf.shape(ids)[0]
    order = tf.argsort(ids, stable=True)
    ranked = tf.gather(ids, order)
    position = tf.range(n)
    starts = tf.logical_or(
        tf.equal(position, 0), tf.not_equal(ranked, tf.roll(ranked, shift=1, axis=0))
    )
    segment = tf.cumsum(tf.cast(starts, tf.int32)) - 1
    start = tf.math.unsorted_segment_min(position, segment, n)
    size = tf.math.unsorted_segment_sum(tf.ones_like(position), segment, n)
    own_start = tf.gather(start, segment)
    values = tf.stack(
        [tf.gather(order, own_start), position - own_start, tf.gather(size, segment)], axis=1
    )
    # back from sorted order to vector order
    back = tf.scatter_nd(order[:, None], values, tf.stack([n, 3]))
    return Occurrences(back[:, 0], back[:, 1], back[:, 2])


def remembered_mean(memory: tf.Tensor, counts: tf.Tensor, size: int) -> tf.Tensor:
    """Mean of each row's remembered values: ``sum(memory row) / min(count, size)``.

    ``memory`` rows ``[n, size]`` are filled slot by slot from 0 (unwritten slots hold 0), so
    the sum over a row is the sum of its ``min(count, size)`` values. A count of 0 gives 0.
    """
    filled = tf.cast(tf.minimum(counts, size), tf.float32)
    return tf.math.divide_no_nan(tf.reduce_sum(memory, axis=1), filled)


def ring_writes(
    ids: tf.Tensor, counts: tf.Tensor, size: int, spare_row: int
) -> tuple[tf.Tensor, tf.Tensor]:
    """Scatter indices of pushing one value per entry into per-row rings of ``size`` slots.

    Entry ``j`` of row ``r`` (in vector order, after ``counts[j]`` earlier pushes of ``r``)
    goes to slot ``(counts[j] + rank) % size``. When a row has more than ``size`` entries
    only its last ``size`` are written; the others are sent to ``[spare_row, 0]`` (a row
    never read), so no two kept writes hit the same slot.

    Returns:
        ``(indices [n, 2], kept [n] bool)``.
    """
    occ = occurrences(ids)
    kept = occ.rank >= occ.count - size
    slot = tf.math.floormod(counts + occ.rank, size)
    rows = tf.where(kept, tf.cast(ids, tf.int32), spare_row)
    slots = tf.where(kept, slot, 0)
    return tf.stack([rows, slots], axis=1), kept


_MASK32 = 0xFFFFFFFF
_MULTIPLIER = 0x45D9F3B  # small enough that no int64 product overflows


def _mix32(x: tf.Tensor) -> tf.Tensor:
    """A 32-bit integer hash (two xorshift-multiply rounds) of int64 values in ``[0, 2^32)``."""
    for _ in range(2):
        x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, 16))
        x = tf.bitwise.bitwise_and(x * _MULTIPLIER, _MASK32)
    return tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, 16))


def hashed_uniform(seed: int, step: tf.Tensor, n: int) -> tf.Tensor:
    """``n`` uniforms in ``[0, 1)`` (float32), a pure function of ``(seed, step, index)``.

    Stateless like ``tf.random.stateless_uniform``, but built from integer operations only,
    so it gives the very same numbers eagerly, in a ``tf.function`` and under XLA (the
    stateless random kernels do not: XLA has its own implementation of them). Each value
    has 24 random bits.
    """
    key = _mix32(tf.constant(int(seed) & _MASK32, tf.int64))
    key = _mix32(
        tf.bitwise.bitwise_xor(key, tf.bitwise.bitwise_and(tf.cast(step, tf.int64), _MASK32))
    )
    index = tf.range(n, dtype=tf.int64)
    bits = _mix32(tf.bitwise.bitwise_xor(_mix32(index), key))
    return tf.cast(tf.bitwise.right_shift(bits, 8), tf.float32) * (1.0 / (1 << 24))
