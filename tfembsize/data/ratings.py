"""A time-ordered stream of ratings, for test-then-train (prequential) evaluation.

A `RatingStream` holds ``(user, item, rating, timestamp)`` interactions sorted by time, with
dense ids, and marks its last part (20 % by default) as the prequential test part: a model
goes once through the stream in batches, predicts every batch before it trains on it, and
reports its accuracy on the test part. `load_rating_stream` reads MovieLens ratings (ML-1M
``ratings.dat``, ML-100K ``u.data``); `rating_stream_dataset` cuts a stream into batches.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from tfembsize._checks import positive_int
from tfembsize.data.loaders import _movielens_fields, _movielens_file, default_data_root

__all__ = ["RatingStream", "load_rating_stream", "rating_stream_dataset", "RATING_RANGE"]

logger = logging.getLogger(__name__)

RATING_RANGE = (0.5, 5.0)
"""Ratings a stream accepts: a five-star scale, half stars allowed."""

_NAMED = ("ml-1m", "ml-100k")


def _non_negative_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"`{name}` must be a non-negative integer. Received: {name}={value!r}")
    return int(value)


def _vector(name: str, value: Any, kinds: str) -> np.ndarray:
    arr = np.asarray(value)
    if arr.ndim != 1 or arr.dtype.kind not in kinds:
        what = "integers" if kinds == "iu" else "numbers"
        raise ValueError(
            f"`{name}` must be a 1-D array of {what}. Received shape {arr.shape}, dtype "
            f"{arr.dtype}: {name}={value!r:.80}"
        )
    return arr


def _check_ratings(ratings: np.ndarray) -> None:
    low, high = RATING_RANGE
    bad = ~(np.isfinite(ratings) & (ratings >= low) & (ratings <= high))
    if bad.any():
        j = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"`ratings` must lie in [{low}, {high}] (a five-star scale). Received rating "
            f"{float(ratings[j]):g} at position {j}."
        )


class RatingStream:
    """Ratings in time order with dense ids; the last part is the prequential test part.

    Build one with `from_raw` (sorts by time and remaps ids) or `load_rating_stream`. The
    constructor takes arrays already in stream order.

    Args:
        users: dense user ids ``[n]`` in ``[0, num_users)``.
        items: dense item ids ``[n]`` in ``[0, num_items)``.
        ratings: ratings ``[n]`` in ``[0.5, 5]``.
        timestamps: non-decreasing integer times ``[n]``.
        test_start: position of the first interaction of the test part, in ``[1, n)``.
        num_users: rows of the user table (default: the largest user id + 1).
        num_items: rows of the item table (default: the largest item id + 1).
        user_ids: the raw id of each dense user id (default: the dense ids).
        item_ids: the raw id of each dense item id (default: the dense ids).
        name: a label.

    Raises:
        ValueError: arrays of different lengths or wrong types, an id outside its table, a
            rating outside ``[0.5, 5]``, timestamps out of order, or ``test_start`` outside
            ``[1, n)``.

    Example:
        >>> stream = RatingStream.from_raw([7, 3, 7], [1, 1, 2], [4, 2, 5], [30, 10, 20],
        ...                                test_fraction=1 / 3)
        >>> stream.users.tolist(), stream.items.tolist(), stream.test_start
        ([0, 1, 1], [0, 1, 0], 2)
    """

    def __init__(
        self,
        users: Any,
        items: Any,
        ratings: Any,
        timestamps: Any,
        *,
        test_start: int,
        num_users: int | None = None,
        num_items: int | None = None,
        user_ids: Any = None,
        item_ids: Any = None,
        name: str = "",
    ) -> None:
        u = _vector("users", users, "iu")
        i = _vector("items", items, "iu")
        r = _vector("ratings", ratings, "iuf")
        t = _vector("timestamps", timestamps, "iu")
        n = u.size
        if not (i.size == r.size == t.size == n):
            raise ValueError(
                "`users`, `items`, `ratings` and `timestamps` must have the same length. "
                f"Received lengths {u.size}, {i.size}, {r.size} and {t.size}."
            )
        if n < 2:
            raise ValueError(f"A rating stream needs at least 2 interactions. Received {n}.")
        r = r.astype(np.float32)
        _check_ratings(r)
        if (np.diff(t.astype(np.int64)) < 0).any():
            j = int(np.flatnonzero(np.diff(t.astype(np.int64)) < 0)[0]) + 1
            raise ValueError(
                f"`timestamps` must be non-decreasing (the stream's order). Received "
                f"{t[j]} at position {j} after {t[j - 1]}; use RatingStream.from_raw to sort."
            )
        test_start = _non_negative_int("test_start", test_start)
        if not 1 <= test_start < n:
            raise ValueError(
                f"`test_start` must be in [1, {n}) (both parts non-empty). Received: "
                f"test_start={test_start}"
            )
        sides = {}
        for side, ids, rows, raw in (
            ("user", u, num_users, user_ids),
            ("item", i, num_items, item_ids),
        ):
            if ids.min() < 0:
                raise ValueError(f"`{side}s` must be >= 0. Received id {int(ids.min())}.")
            rows = int(ids.max()) + 1 if rows is None else positive_int(f"num_{side}s", rows)
            if int(ids.max()) >= rows:
                raise ValueError(
                    f"`{side}s` must be < num_{side}s={rows}. Received id {int(ids.max())}."
                )
            raw_ids = np.arange(rows) if raw is None else _vector(f"{side}_ids", raw, "iu")
            if raw_ids.shape != (rows,):
                raise ValueError(
                    f"`{side}_ids` must hold one raw id per row ({rows}). Received {raw_ids.size}."
                )
            sides[side] = (ids.astype(np.int32), rows, raw_ids.astype(np.int64))
        self.users, self.num_users, self.user_ids = sides["user"]
        self.items, self.num_items, self.item_ids = sides["item"]
        self.ratings = r
        self.timestamps = t.astype(np.int64)
        self.test_start = test_start
        self.name = str(name)

    @classmethod
    def from_raw(
        cls,
        users: Any,
        items: Any,
        ratings: Any,
        timestamps: Any,
        *,
        test_fraction: float = 0.2,
        max_interactions: int | None = None,
        name: str = "",
    ) -> RatingStream:
        """Sorts raw interactions by time and remaps the ids of the users and items present.

        Interactions with equal timestamps keep their input order (a stable sort). With
        ``max_interactions`` only the first ones in time are kept. Ids are then remapped to
        ``0 .. N - 1`` in increasing order of the raw ids, over the entities that appear in
        what is kept. The last ``round(test_fraction * n)`` interactions are the test part.

        Args:
            users: raw user ids ``[n]``.
            items: raw item ids ``[n]``.
            ratings: ratings ``[n]`` in ``[0.5, 5]``.
            timestamps: integer times ``[n]``.
            test_fraction: share of the stream, at its end, that is the test part; in
                ``(0, 1)``.
            max_interactions: keep only the first this many interactions in time (None: all).
            name: a label.

        Raises:
            ValueError: bad arrays, ``test_fraction`` outside ``(0, 1)``, a non-positive
                ``max_interactions``, or a stream too short for two non-empty parts.
        """
        u = _vector("users", users, "iu")
        i = _vector("items", items, "iu")
        r = _vector("ratings", ratings, "iuf")
        t = _vector("timestamps", timestamps, "iu")
        if not (i.size == r.size == t.size == u.size):
            raise ValueError(
                "`users`, `items`, `ratings` and `timestamps` must have the same length. "
                f"Received lengths {u.size}, {i.size}, {r.size} and {t.size}."
            )
        if (
            isinstance(test_fraction, bool)
            or not isinstance(test_fraction, (int, float, np.floating))
            or not 0.0 < float(test_fraction) < 1.0
        ):
            raise ValueError(
                f"`test_fraction` must be in (0, 1). Received: test_fraction={test_fraction!r}"
            )
        order = np.argsort(t, kind="stable")
        if max_interactions is not None:
            order = order[: positive_int("max_interactions", max_interactions)]
        n = order.size
        num_test = int(round(float(test_fraction) * n))
        if not 1 <= num_test < n:
            raise ValueError(
                f"A stream of {n} interactions with test_fraction={test_fraction} has no "
                "interaction in one of its parts; use more interactions or another fraction."
            )
        user_ids, dense_users = np.unique(u[order], return_inverse=True)
        item_ids, dense_items = np.unique(i[order], return_inverse=True)
        return cls(
            dense_users,
            dense_items,
            r[order],
            t[order],
            test_start=n - num_test,
            num_users=len(user_ids),
            num_items=len(item_ids),
            user_ids=user_ids,
            item_ids=item_ids,
            name=name,
        )

    # Sizes ------------------------------------------------------------------------------------
    @property
    def num_interactions(self) -> int:
        """Interactions in the stream."""
        return int(self.users.size)

    @property
    def num_test(self) -> int:
        """Interactions in the test part (the last ones)."""
        return self.num_interactions - self.test_start

    def num_steps(self, batch_size: int) -> int:
        """Batches of ``batch_size`` in one pass, ``ceil(n / batch_size)``."""
        return math.ceil(self.num_interactions / positive_int("batch_size", batch_size))

    def frequencies(self, side: str) -> np.ndarray:
        """Interactions per user (``"user"``) or item (``"item"``) over the whole stream."""
        if side == "user":
            return np.bincount(self.users, minlength=self.num_users).astype(np.int64)
        if side == "item":
            return np.bincount(self.items, minlength=self.num_items).astype(np.int64)
        raise ValueError(f"`side` must be 'user' or 'item'. Received: side={side!r}")

    # Batches ----------------------------------------------------------------------------------
    def batch_at(self, step: int, batch_size: int) -> dict[str, np.ndarray]:
        """Batch number ``step`` (0-based) of ``batch_size`` consecutive interactions.

        Returns:
            ``{"user", "item"}`` (int32), ``"rating"`` (float32) and ``"test"`` (bool: the
            interaction is in the test part). The last batch holds the remainder.

        Raises:
            ValueError: ``step`` is negative or past the end of the stream.
        """
        steps = self.num_steps(batch_size)
        step = _non_negative_int("step", step)
        if step >= steps:
            raise ValueError(f"`step` must be < {steps} (the batches). Received: step={step}")
        window = slice(step * batch_size, (step + 1) * batch_size)
        return {
            "user": self.users[window],
            "item": self.items[window],
            "rating": self.ratings[window],
            "test": np.arange(window.start, window.start + self.users[window].size)
            >= self.test_start,
        }

    def __repr__(self) -> str:
        return (
            f"RatingStream({self.name or 'ratings'}: {self.num_interactions} interactions, "
            f"{self.num_users} users, {self.num_items} items, test part from "
            f"{self.test_start})"
        )


def rating_stream_dataset(
    stream: RatingStream, batch_size: int, *, start_step: int = 0
) -> tf.data.Dataset:
    """A finite `tf.data.Dataset` of the stream's batches from ``start_step`` on, in order.

    Element ``t`` is ``stream.batch_at(start_step + t, batch_size)`` as tensors of shape
    ``[None]``: ``user`` and ``item`` (int32), ``rating`` (float32), ``test`` (bool). Pass
    it to `tfembsize.training.train_bpr` as ``batches=lambda _, start:
    rating_stream_dataset(stream, batch_size, start_step=start)``.

    Args:
        stream: the stream.
        batch_size: interactions per batch.
        start_step: index of the first batch.

    Returns:
        The dataset.
    """
    if not isinstance(stream, RatingStream):
        raise TypeError(f"`stream` must be a RatingStream. Received: {type(stream).__name__}")
    batch_size = positive_int("batch_size", batch_size)
    start = min(_non_negative_int("start_step", start_step) * batch_size, stream.num_interactions)
    columns = {
        "user": stream.users[start:],
        "item": stream.items[start:],
        "rating": stream.ratings[start:],
        "test": np.arange(start, stream.num_interactions) >= stream.test_start,
    }
    ds = tf.data.Dataset.from_tensor_slices(columns).batch(batch_size)
    options = tf.data.Options()  # as the BPR datasets: no autotuning threads
    options.autotune.enabled = False
    options.experimental_optimization.inject_prefetch = False
    return ds.with_options(options)


def load_rating_stream(
    name_or_path: str | os.PathLike[str],
    *,
    test_fraction: float = 0.2,
    max_interactions: int | None = None,
    data_root: str | os.PathLike[str] | None = None,
) -> RatingStream:
    """Reads MovieLens ratings as a time-ordered `RatingStream`.

    Reads ML-1M's ``ratings.dat`` (``UserID::MovieID::Rating::Timestamp``) or ML-100K's
    ``u.data`` (tab-separated, same fields), plain or ``.gz``; the ratings must be integers.
    The interactions are sorted by timestamp (ties keep the file's order), cut to the first
    ``max_interactions`` if given, and the ids of the users and movies that appear are
    remapped to dense ids (see `RatingStream.from_raw`).

    Args:
        name_or_path: ``"ml-1m"`` or ``"ml-100k"`` (under ``data_root``), a folder holding
            ``ratings.dat[.gz]`` or ``u.data[.gz]``, or the file itself.
        test_fraction: share of the stream, at its end, that is the test part.
        max_interactions: keep only the first this many interactions in time.
        data_root: folder of the named data sets (default `default_data_root`).

    Returns:
        The stream (ML-1M: 1,000,209 ratings, 6,040 users, 3,706 movies).

    Raises:
        FileNotFoundError: no ratings file is found.
        MalformedFileError: a line without 4 integer fields.
        ValueError: a rating outside ``[0.5, 5]`` or bad ``test_fraction`` /
            ``max_interactions``.

    Example:
        >>> stream = load_rating_stream("ml-100k", max_interactions=5000)  # doctest: +SKIP
        >>> stream.num_interactions, stream.test_start  # doctest: +SKIP
        (5000, 4000)
    """
    key = os.fspath(name_or_path)
    if key.strip().lower() in _NAMED:
        root = Path(data_root) if data_root is not None else default_data_root()
        path = root / key.strip().lower()
        name = key.strip().lower()
    else:
        path = Path(key)
        name = path.name if path.is_dir() else path.parent.name
    file = _movielens_file(path)
    fields = _movielens_fields(file, 4, "the user id, item id, rating and timestamp")
    stream = RatingStream.from_raw(
        fields[:, 0],
        fields[:, 1],
        fields[:, 2],
        fields[:, 3],
        test_fraction=test_fraction,
        max_interactions=max_interactions,
        name=name,
    )
    logger.info("Loaded %r from %s.", stream, file)
    return stream
