"""Bit packing of unsigned integers into int32 words, with numpy and with TensorFlow.

A `tfembsize.layers.CompressedEmbedding` stores its row maps, column indices and bitmasks in
int32 words: ``32 // bits`` values per word (8, 16 or 32 bits each), low bits first. The numpy
functions pack and unpack when a table is compressed; the TensorFlow functions read the words
inside lookups and scores, with ops that have GPU kernels and compile with XLA.
"""

from __future__ import annotations

import sys

import numpy as np
import tensorflow as tf

__all__ = [
    "WORD_BITS",
    "bits_for",
    "pack_uint",
    "unpack_uint",
    "bits_np",
    "mask_words_np",
    "unpack_tf",
    "unpack_all_tf",
    "bits_tf",
]

#: Bits of one storage word.
WORD_BITS = 32


# --------------------------------------------------------------------------------------------
# numpy side
# --------------------------------------------------------------------------------------------
def bits_for(max_value: int) -> int:
    """The fewest bits in {8, 16, 32} that hold every integer in ``[0, max_value]``."""
    for bits in (8, 16):
        if max_value < (1 << bits):
            return bits
    return 32


def pack_uint(values: np.ndarray, bits: int) -> np.ndarray:
    """Packs non-negative integers into int32 words, ``32 // bits`` per word, low bits first.

    Args:
        values: 1-D array of integers in ``[0, 2**bits)``.
        bits: 8, 16 or 32.

    Returns:
        int32 array of ``ceil(len(values) * bits / 32)`` words.
    """
    values = np.asarray(values, dtype=np.int64).ravel()
    if values.size and (values.min() < 0 or values.max() >= (1 << bits)):
        raise ValueError(f"values do not fit in {bits} unsigned bits")
    if bits == 32:
        return values.astype(np.uint32).view(np.int32).copy()
    per = WORD_BITS // bits
    n_words = -(-values.size // per)
    padded = np.zeros(n_words * per, dtype=np.uint64)
    padded[: values.size] = values
    shifts = (np.arange(per, dtype=np.uint64) * np.uint64(bits))[None, :]
    words = np.bitwise_or.reduce(padded.reshape(n_words, per) << shifts, axis=1)
    return words.astype(np.uint32).view(np.int32) if n_words else np.zeros(0, np.int32)


def unpack_uint(words: np.ndarray, bits: int, count: int) -> np.ndarray:
    """Inverse of `pack_uint`: the first ``count`` integers (int64) stored in ``words``."""
    w = np.asarray(words, dtype=np.int32).view(np.uint32).astype(np.uint64)
    if bits == 32:
        return w[:count].astype(np.int64)
    per = WORD_BITS // bits
    shifts = (np.arange(per, dtype=np.uint64) * np.uint64(bits))[None, :]
    out = (w[:, None] >> shifts) & np.uint64((1 << bits) - 1)
    return out.ravel()[:count].astype(np.int64)


def bits_np(words: np.ndarray, d: int) -> np.ndarray:
    """Expands ``[..., W]`` int32 words to ``[..., d]`` bools (low bit first)."""
    u = words.view(np.uint32).astype(np.uint64)
    bits = (u[..., None] >> np.arange(WORD_BITS, dtype=np.uint64)) & np.uint64(1)
    return bits.reshape(*words.shape[:-1], -1)[..., :d].astype(bool)


def mask_words_np(m: np.ndarray) -> np.ndarray:
    """Packs a bool ``[rows, d]`` mask into ``ceil(d / 32)`` int32 words per row (low bit first)."""
    c, d = m.shape
    w_words = -(-d // WORD_BITS)
    padded = np.zeros((c, w_words * WORD_BITS), dtype=np.uint64)
    padded[:, :d] = m
    shifts = np.arange(WORD_BITS, dtype=np.uint64)
    words = np.bitwise_or.reduce(padded.reshape(c, w_words, WORD_BITS) << shifts, axis=2)
    return words.astype(np.uint32).view(np.int32).ravel()


# --------------------------------------------------------------------------------------------
# TensorFlow side
# --------------------------------------------------------------------------------------------
def unpack_tf(words: tf.Tensor, index: tf.Tensor, bits: int) -> tf.Tensor:
    """Reads packed unsigned integers at ``index`` (int32, any shape) from int32 words."""
    if bits == 32:
        return tf.gather(words, index)
    per = WORD_BITS // bits
    shift = per.bit_length() - 1
    w = tf.gather(words, tf.bitwise.right_shift(index, shift))
    sh = tf.bitwise.bitwise_and(index, per - 1) * bits
    return tf.bitwise.bitwise_and(tf.bitwise.right_shift(w, sh), (1 << bits) - 1)


def unpack_all_tf(words: tf.Tensor, bits: int, count: int) -> tf.Tensor:
    """The first ``count`` packed unsigned integers of ``words`` (elementwise, no gather).

    On little-endian hosts the low-bits-first packing is the memory order of the words, so
    the unpacking is a free ``tf.bitcast`` to 8/16-bit unsigned integers and one cast (about
    3x less CPU time than shifting and masking for a 500k-value column list).
    """
    if bits == 32:
        return words[:count]
    if sys.byteorder == "little":
        narrow = tf.uint8 if bits == 8 else tf.uint16
        return tf.cast(tf.reshape(tf.bitcast(words, narrow), [-1])[:count], tf.int32)
    per = WORD_BITS // bits
    shifts = tf.range(per, dtype=tf.int32) * bits
    out = tf.bitwise.bitwise_and(tf.bitwise.right_shift(words[:, None], shifts), (1 << bits) - 1)
    return tf.reshape(out, [-1])[:count]


def bits_tf(words: tf.Tensor, d: int) -> tf.Tensor:
    """Expands ``[..., W]`` int32 words to ``[..., d]`` int32 bits (low bit first)."""
    shifts = tf.range(WORD_BITS, dtype=tf.int32)
    bits = tf.bitwise.bitwise_and(tf.bitwise.right_shift(words[..., None], shifts), 1)
    shape = tf.concat([tf.shape(words)[:-1], [-1]], axis=0)
    return tf.reshape(bits, shape)[..., :d]
