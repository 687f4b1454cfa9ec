"""How many kept coordinates a user and an item share: the coordinates a dot product uses."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

__all__ = ["MaskOverlap", "mask_overlap", "prefix_masks"]


@dataclass(frozen=True)
class MaskOverlap:
    """Shared kept coordinates of user and item rows over a set of (user, item) pairs.

    A dot-product score ``<e_u, e_i>`` (MF, and the final score of LightGCN-like models) only
    uses the coordinates both rows keep. With per-row prefix sizes that is ``min(k_u, k_i)``
    coordinates; with unstructured per-entry masks it can be far fewer.

    Attributes:
        pairs: number of pairs measured.
        mean_shared: mean over pairs of the coordinates both rows keep.
        mean_min_count: mean over pairs of ``min(k_u, k_i)``, the kept counts of the rows
            (what prefix masks of the same counts would share).
        alignment: ``mean_shared / mean_min_count`` (1 for prefix masks; about
            ``max(k_u, k_i) / d`` for independent random masks).
        zero_shared_fraction: fraction of pairs that share no kept coordinate (their score
            is the bias terms only, whatever the rows' values).
    """

    pairs: int
    mean_shared: float
    mean_min_count: float
    alignment: float
    zero_shared_fraction: float

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return asdict(self)


def _bool_mask(name: str, mask: Any) -> np.ndarray:
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"`{name}` must be a 2-D [rows, width] mask. Received shape {m.shape}.")
    if m.dtype != bool:
        if m.dtype.kind not in "biuf" or not np.isin(m, (0, 1)).all():
            raise ValueError(f"`{name}` must be boolean or contain only 0 and 1.")
        m = m.astype(bool)
    return m


def mask_overlap(
    user_mask: Any, item_mask: Any, users: Any, items: Any, *, chunk: int = 65_536
) -> MaskOverlap:
    """Measures the kept coordinates shared by each pair's user and item rows.

    Args:
        user_mask: ``[num_users, d]`` booleans (True = kept).
        item_mask: ``[num_items, d]`` booleans, the same width.
        users: user row of each pair.
        items: item row of each pair (same length as ``users``).
        chunk: pairs per vectorised block (bounds the memory to ``chunk * d`` booleans).

    Returns:
        A `MaskOverlap`.

    Raises:
        ValueError: masks of different widths or not 2-D/binary, pairs of different
            lengths or none, or a row id out of range.

    Example:
        >>> u = [[1, 1, 0, 0]]
        >>> i = [[0, 1, 1, 0], [0, 0, 1, 1]]
        >>> mask_overlap(u, i, [0, 0], [0, 1]).mean_shared
        0.5
    """
    um, im = _bool_mask("user_mask", user_mask), _bool_mask("item_mask", item_mask)
    if um.shape[1] != im.shape[1]:
        raise ValueError(
            f"`user_mask` and `item_mask` must have the same width. Received {um.shape[1]} "
            f"and {im.shape[1]}."
        )
    u = np.asarray(users, np.int64).reshape(-1)
    i = np.asarray(items, np.int64).reshape(-1)
    if u.size != i.size or u.size == 0:
        raise ValueError(
            f"`users` and `items` must be non-empty and of equal length. Received {u.size} "
            f"and {i.size}."
        )
    for name, ids, rows in (("users", u, um.shape[0]), ("items", i, im.shape[0])):
        if ids.min() < 0 or ids.max() >= rows:
            raise ValueError(f"`{name}` has ids outside [0, {rows}).")
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"`chunk` must be a positive integer. Received: chunk={chunk!r}")
    ku, ki = um.sum(axis=1), im.sum(axis=1)
    shared = np.empty(u.size, np.int64)
    for start in range(0, u.size, chunk):
        stop = start + chunk
        shared[start:stop] = np.count_nonzero(um[u[start:stop]] & im[i[start:stop]], axis=1)
    least = np.minimum(ku[u], ki[i])
    mean_min = float(least.mean())
    return MaskOverlap(
        pairs=int(u.size),
        mean_shared=float(shared.mean()),
        mean_min_count=mean_min,
        alignment=float(shared.mean() / mean_min) if mean_min > 0 else 0.0,
        zero_shared_fraction=float(np.mean(shared == 0)),
    )


def prefix_masks(masks: dict[str, Any]) -> dict[str, np.ndarray]:
    """Per-row prefix masks with the same kept count per row as ``masks``.

    Row ``n`` of table ``t`` keeps its first ``k_n`` coordinates, ``k_n`` the number of
    entries ``masks[t][n]`` keeps: the usable parameters are unchanged, and any user and
    item share ``min(k_u, k_i)`` coordinates.

    Args:
        masks: table name -> ``[rows, d]`` binary mask.

    Returns:
        Table name -> boolean ``[rows, d]`` prefix mask.

    Example:
        >>> prefix_masks({"t": [[0, 1, 0, 1], [1, 0, 0, 0]]})["t"].astype(int).tolist()
        [[1, 1, 0, 0], [1, 0, 0, 0]]
    """
    out = {}
    for name, mask in masks.items():
        m = _bool_mask(f"masks[{name!r}]", mask)
        counts = m.sum(axis=1)
        out[name] = np.arange(m.shape[1])[None, :] < counts[:, None]
    return out
