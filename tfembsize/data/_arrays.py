"""Sort-based set helpers for int arrays.

numpy 2.x routes ``np.unique`` (and ``union1d``) on int64 through a hash table that is ~50x
slower than sorting for arrays of a million pair keys, so the data code uses these instead.
"""

from __future__ import annotations

import numpy as np

__all__ = ["unique", "unique_inverse", "first_occurrence"]


def unique(a: np.ndarray) -> np.ndarray:
    """Sorted distinct values of ``a``."""
    s = np.sort(np.asarray(a).reshape(-1), kind="stable")
    if s.size == 0:
        return s
    keep = np.empty(s.size, dtype=bool)
    keep[0] = True
    np.not_equal(s[1:], s[:-1], out=keep[1:])
    return s[keep]


def unique_inverse(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(values, inverse)`` as ``np.unique(a, return_inverse=True)`` for a 1-D array."""
    a = np.asarray(a).reshape(-1)
    if a.size and np.issubdtype(a.dtype, np.integer):
        lo, hi = int(a.min()), int(a.max())
        if lo >= 0 and hi < 4 * a.size + 1024:  # dense ids: counting beats sorting
            present = np.bincount(a, minlength=hi + 1) > 0
            remap = np.cumsum(present) - 1
            return np.flatnonzero(present).astype(a.dtype), remap[a]
    order = np.argsort(a, kind="stable")
    s = a[order]
    new = np.empty(s.size, dtype=bool)
    if s.size:
        new[0] = True
        np.not_equal(s[1:], s[:-1], out=new[1:])
    inverse = np.empty(s.size, dtype=np.int64)
    inverse[order] = np.cumsum(new) - 1
    return s[new], inverse


def first_occurrence(a: np.ndarray) -> np.ndarray:
    """Boolean mask, True at the first occurrence of every distinct value of 1-D ``a``."""
    a = np.asarray(a)
    order = np.argsort(a, kind="stable")
    s = a[order]
    new = np.empty(s.size, dtype=bool)
    if s.size:
        new[0] = True
        np.not_equal(s[1:], s[:-1], out=new[1:])
    mask = np.zeros(a.size, dtype=bool)
    mask[order[new]] = True
    return mask
