"""Implicit-feedback interaction sets and the per-user train/validation/test split.

An `Interactions` object is a set of positive (user, item) pairs over contiguous 0-based ids,
with the maps back to the raw ids of the source file. `Interactions.split` cuts it into a
`Split` following the evaluation protocol of the CIESS and BET papers (50/25/25 per user): every
user's interactions are shuffled with a seeded generator and cut at ``round(0.5 n_u)`` and
``round(0.75 n_u)``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tfembsize.data._arrays import unique, unique_inverse

__all__ = ["Interactions", "Split", "PHASES"]

PHASES = ("validation", "test")
"""Phases a `Split` can be evaluated on."""

_NPZ_FORMAT = "tfembsize.Interactions/1"


def _check_count(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(
            f"`{name}` must be a non-negative integer. Received: {name}={value!r} "
            f"(of type {type(value).__name__})."
        )
    return int(value)


def _as_id_array(name: str, value: Any) -> np.ndarray:
    arr = np.asarray(value)
    if arr.ndim != 1:
        raise ValueError(f"`{name}` must be a 1-D array. Received shape {arr.shape}.")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"`{name}` must hold integers. Received dtype {arr.dtype}.")
    return arr.astype(np.int64, copy=False)


def _readonly(arr: np.ndarray) -> np.ndarray:
    arr.flags.writeable = False
    return arr


class Interactions:
    """A set of positive (user, item) pairs with contiguous 0-based ids.

    The pairs are stored once, sorted by user and then by item, so ``csr()`` is free and two
    objects with the same pairs are equal whatever order the pairs came in. Ids must lie in
    ``[0, num_users)`` and ``[0, num_items)``; ``num_users`` / ``num_items`` are the embedding
    table sizes, so they may exceed the largest id that occurs (a validation set keeps the
    sizes of the full data). Frequencies count the pairs of *this* set only: for a `Split`,
    use ``split.user_frequencies`` (training counts, what the controllers use).

    Args:
        users: user id of each pair (integers in ``[0, num_users)``).
        items: item id of each pair (integers in ``[0, num_items)``), same length.
        num_users: number of user rows.
        num_items: number of item rows.
        user_ids: raw id of each contiguous user id (length ``num_users``); defaults to
            ``arange(num_users)``.
        item_ids: raw id of each contiguous item id (length ``num_items``).
        name: a label for logs and reprs (for loaded data, the dataset name).
        duplicates_removed: number of repeated pairs the loader dropped (metadata only).

    Raises:
        ValueError: when lengths differ, an id is out of range, a pair occurs twice, or an id
            map has the wrong length.

    Example:
        >>> data = Interactions([0, 0, 1], [2, 0, 1], num_users=2, num_items=3)
        >>> data.csr()[1].tolist(), data.item_frequencies.tolist()
        ([0, 2, 1], [1, 1, 1])
    """

    def __init__(
        self,
        users: Any,
        items: Any,
        num_users: int,
        num_items: int,
        *,
        user_ids: Any = None,
        item_ids: Any = None,
        name: str | None = None,
        duplicates_removed: int = 0,
    ) -> None:
        num_users = _check_count("num_users", num_users)
        num_items = _check_count("num_items", num_items)
        u = _as_id_array("users", users)
        i = _as_id_array("items", items)
        if u.shape != i.shape:
            raise ValueError(
                "`users` and `items` must have the same length. Received: "
                f"len(users)={u.size}, len(items)={i.size}"
            )
        for arr, arg, n in ((u, "users", num_users), (i, "items", num_items)):
            if arr.size and (arr.min() < 0 or arr.max() >= n):
                bad = arr[(arr < 0) | (arr >= n)][0]
                raise ValueError(
                    f"`{arg}` ids must be in [0, num_{arg}={n}). Received id {int(bad)}."
                )
        key = u * max(num_items, 1) + i
        if key.size > 1 and not np.all(key[1:] > key[:-1]):
            order = np.argsort(key, kind="stable")
            key = key[order]
            dup = np.flatnonzero(key[1:] == key[:-1])
            if dup.size:
                k = int(key[dup[0]])
                raise ValueError(
                    f"`users`/`items` contain {dup.size} repeated (user, item) pair(s), e.g. "
                    f"({k // num_items}, {k % num_items}). An Interactions set holds each "
                    "positive pair once; the loaders de-duplicate (see `duplicates_removed`)."
                )
            u, i = u[order], i[order]
        self._init(u, i, num_users, num_items, user_ids, item_ids, name, duplicates_removed)

    def _init(
        self,
        users: np.ndarray,
        items: np.ndarray,
        num_users: int,
        num_items: int,
        user_ids: Any,
        item_ids: Any,
        name: str | None,
        duplicates_removed: int,
    ) -> None:
        self._num_users = int(num_users)
        self._num_items = int(num_items)
        self._users = _readonly(users.astype(np.int32))
        self._items = _readonly(items.astype(np.int32))
        self._user_ids = self._id_map("user_ids", user_ids, num_users)
        self._item_ids = self._id_map("item_ids", item_ids, num_items)
        self.name = name
        self.duplicates_removed = _check_count("duplicates_removed", duplicates_removed)
        self._csr: tuple[np.ndarray, np.ndarray] | None = None
        self._keys: np.ndarray | None = None

    @classmethod
    def _from_canonical(
        cls,
        users: np.ndarray,
        items: np.ndarray,
        num_users: int,
        num_items: int,
        *,
        user_ids: Any = None,
        item_ids: Any = None,
        name: str | None = None,
        duplicates_removed: int = 0,
    ) -> Interactions:
        """Builds from pairs already sorted by (user, item), unique and in range (no checks)."""
        obj = cls.__new__(cls)
        obj._init(users, items, num_users, num_items, user_ids, item_ids, name, duplicates_removed)
        return obj

    @staticmethod
    def _id_map(name: str, value: Any, n: int) -> np.ndarray:
        if value is None:
            return _readonly(np.arange(n, dtype=np.int64))
        arr = np.array(value, copy=True)
        if arr.shape != (n,):
            raise ValueError(
                f"`{name}` must have one raw id per row, shape ({n},). Received shape {arr.shape}."
            )
        return _readonly(arr)

    @classmethod
    def from_raw(cls, raw_users: Any, raw_items: Any, *, name: str | None = None) -> Interactions:
        """Builds a set from raw (user, item) ids, remapping them to contiguous ids.

        Raw ids are sorted (``np.unique``) and numbered from 0, so only entities that occur get
        a row (the N of the budget counts only the rows that appear). Repeated pairs are kept
        once and counted in ``duplicates_removed``.

        Args:
            raw_users: raw user id of each pair (integers or strings).
            raw_items: raw item id of each pair.
            name: a label for logs.

        Returns:
            The interaction set, with ``user_ids`` / ``item_ids`` mapping back to raw ids.
        """
        ru, ri = np.asarray(raw_users), np.asarray(raw_items)
        if ru.ndim != 1 or ru.shape != ri.shape:
            raise ValueError(
                "`raw_users` and `raw_items` must be 1-D arrays of the same length. Received "
                f"shapes {ru.shape} and {ri.shape}."
            )
        user_ids, u = unique_inverse(ru)
        item_ids, i = unique_inverse(ri)
        num_users, num_items = user_ids.size, item_ids.size
        key = unique(u.astype(np.int64) * max(num_items, 1) + i)
        return cls._from_canonical(
            key // max(num_items, 1),
            key % max(num_items, 1),
            num_users,
            num_items,
            user_ids=user_ids,
            item_ids=item_ids,
            name=name,
            duplicates_removed=ru.size - key.size,
        )

    # Basic properties --------------------------------------------------------------------
    @property
    def num_users(self) -> int:
        """Number of user rows."""
        return self._num_users

    @property
    def num_items(self) -> int:
        """Number of item rows."""
        return self._num_items

    @property
    def num_entities(self) -> int:
        """``num_users + num_items``, the N of the budget ``floor((1 - c) * d_max * N)``."""
        return self._num_users + self._num_items

    @property
    def num_interactions(self) -> int:
        """Number of (user, item) pairs."""
        return int(self._users.size)

    def __len__(self) -> int:
        return self.num_interactions

    @property
    def users(self) -> np.ndarray:
        """User id of each pair (int32, read-only), sorted by user then item."""
        return self._users

    @property
    def items(self) -> np.ndarray:
        """Item id of each pair (int32, read-only), aligned with `users`."""
        return self._items

    @property
    def user_ids(self) -> np.ndarray:
        """Raw id of each contiguous user id (read-only)."""
        return self._user_ids

    @property
    def item_ids(self) -> np.ndarray:
        """Raw id of each contiguous item id (read-only)."""
        return self._item_ids

    @property
    def user_frequencies(self) -> np.ndarray:
        """Interactions per user in this set (int64, length ``num_users``)."""
        return np.bincount(self._users, minlength=self._num_users).astype(np.int64)

    @property
    def item_frequencies(self) -> np.ndarray:
        """Interactions per item in this set (int64, length ``num_items``)."""
        return np.bincount(self._items, minlength=self._num_items).astype(np.int64)

    @property
    def density(self) -> float:
        """``num_interactions / (num_users * num_items)``."""
        cells = self._num_users * self._num_items
        return self.num_interactions / cells if cells else 0.0

    def csr(self) -> tuple[np.ndarray, np.ndarray]:
        """Items of every user in compressed sparse row form.

        Returns:
            ``(indptr, indices)``: ``indices[indptr[u]:indptr[u + 1]]`` are the items of user
            ``u`` in increasing order. ``indptr`` is int64 of length ``num_users + 1``,
            ``indices`` int32. Both are read-only and cached.
        """
        if self._csr is None:
            indptr = np.zeros(self._num_users + 1, dtype=np.int64)
            np.cumsum(np.bincount(self._users, minlength=self._num_users), out=indptr[1:])
            self._csr = (_readonly(indptr), self._items)
        return self._csr

    def items_of(self, user: int) -> np.ndarray:
        """The items of ``user`` in increasing order (int32, read-only)."""
        if isinstance(user, bool) or not isinstance(user, (int, np.integer)):
            raise TypeError(f"`user` must be an integer. Received: user={user!r}")
        if not 0 <= user < self._num_users:
            raise ValueError(
                f"`user` must be in [0, num_users={self._num_users}). Received: user={user}"
            )
        indptr, indices = self.csr()
        return indices[indptr[user] : indptr[user + 1]]

    def keys(self) -> np.ndarray:
        """Sorted pair keys ``user * num_items + item`` (int64, read-only, cached)."""
        if self._keys is None:
            self._keys = _readonly(self._users.astype(np.int64) * self._num_items + self._items)
        return self._keys

    def contains(self, users: Any, items: Any) -> np.ndarray:
        """Whether each (user, item) pair is in the set (vectorised; bool array)."""
        q = np.asarray(users, dtype=np.int64) * self._num_items + np.asarray(items, np.int64)
        keys = self.keys()
        if keys.size == 0:
            return np.zeros(q.shape, dtype=bool)
        pos = np.minimum(np.searchsorted(keys, q), keys.size - 1)
        return keys[pos] == q

    def user_index(self, raw_ids: Any) -> np.ndarray:
        """Maps raw user ids to contiguous ids (raises `KeyError` for unknown ids)."""
        return _lookup(self._user_ids, raw_ids, "user")

    def item_index(self, raw_ids: Any) -> np.ndarray:
        """Maps raw item ids to contiguous ids (raises `KeyError` for unknown ids)."""
        return _lookup(self._item_ids, raw_ids, "item")

    # Set operations ----------------------------------------------------------------------
    def _check_compatible(self, other: Interactions, what: str) -> None:
        if not isinstance(other, Interactions):
            raise TypeError(f"`{what}` needs an Interactions. Received: {type(other).__name__}")
        if (other.num_users, other.num_items) != (self.num_users, self.num_items):
            raise ValueError(
                f"`{what}` needs sets over the same rows. Received num_users/num_items "
                f"{self.num_users}/{self.num_items} and {other.num_users}/{other.num_items}."
            )

    def union(self, other: Interactions) -> Interactions:
        """Pairs in either set (same rows and id maps), e.g. train ∪ validation for a refit."""
        self._check_compatible(other, "union")
        keys = unique(np.concatenate([self.keys(), other.keys()]))
        n = max(self._num_items, 1)
        return self._subset_from_keys(keys, n)

    def _subset_from_keys(self, keys: np.ndarray, n: int) -> Interactions:
        return Interactions._from_canonical(
            keys // n,
            keys % n,
            self._num_users,
            self._num_items,
            user_ids=self._user_ids,
            item_ids=self._item_ids,
            name=self.name,
        )

    def select(self, mask_or_index: Any) -> Interactions:
        """The pairs picked by a boolean mask or integer index over rows (same id maps)."""
        sel = np.asarray(mask_or_index)
        keys = self.keys()[sel]
        if keys.size > 1 and not np.all(keys[1:] > keys[:-1]):
            keys = unique(keys)
        return self._subset_from_keys(keys, max(self._num_items, 1))

    def to_scipy(self) -> Any:
        """The user x item matrix as a ``scipy.sparse.csr_matrix`` of float32 ones."""
        import scipy.sparse as sp

        indptr, indices = self.csr()
        data = np.ones(indices.size, dtype=np.float32)
        return sp.csr_matrix((data, indices, indptr), shape=(self._num_users, self._num_items))

    # Split -------------------------------------------------------------------------------
    def split(
        self,
        train: float = 0.5,
        validation: float = 0.25,
        test: float = 0.25,
        seed: int = 42,
    ) -> Split:
        """Splits every user's interactions into train, validation and test (50/25/25 by default).

        For each user with ``n_u`` interactions, the items (in increasing id order) are put in
        a random order drawn from ``numpy.random.default_rng(seed)``, and the first
        ``round(train * n_u)`` go to train, the next ones up to ``round((train + validation) *
        n_u)`` to validation and the rest to test. ``round`` rounds halves to even, as Python's
        ``round`` in the official code does: a user with 3 interactions gets 2/0/1 and one with
        4 gets 2/1/1. The result depends only on the set of pairs and the seed, not on file
        order. Every pair lands in exactly one part; all parts keep ``num_users``,
        ``num_items`` and the id maps of this set.

        Args:
            train: fraction for training, in [0, 1].
            validation: fraction for validation, in [0, 1].
            test: fraction for testing, in [0, 1]; the three must sum to 1.
            seed: non-negative integer seed of the per-user shuffles.

        Returns:
            A `Split`.

        Raises:
            ValueError: when a fraction is outside [0, 1] or they do not sum to 1.
            TypeError: when ``seed`` is not an integer.
        """
        fractions = {"train": train, "validation": validation, "test": test}
        for arg, value in fractions.items():
            if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
                raise TypeError(f"`{arg}` must be a float. Received: {arg}={value!r}")
            if not (0.0 <= float(value) <= 1.0):
                raise ValueError(f"`{arg}` must be in [0, 1]. Received: {arg}={value!r}")
        total = float(train) + float(validation) + float(test)
        if not math.isclose(total, 1.0, rel_tol=0.0, abs_tol=1e-9):
            raise ValueError(
                "`train`, `validation` and `test` must sum to 1. Received: "
                f"train={train!r}, validation={validation!r}, test={test!r} (sum {total!r})"
            )
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise TypeError(f"`seed` must be a non-negative integer. Received: seed={seed!r}")

        rng = np.random.default_rng(int(seed))
        # Sort by (user, 32 random bits): a uniformly random order within each user. The sort
        # is stable, so the (astronomically rare) equal draws keep their item order.
        shuffle_key = rng.integers(0, 1 << 32, size=self.num_interactions, dtype=np.int64)
        order = np.argsort((self._users.astype(np.int64) << 32) | shuffle_key, kind="stable")
        indptr, _ = self.csr()
        counts = np.diff(indptr)
        users_sorted = self._users[order]
        rank = np.arange(order.size, dtype=np.int64) - indptr[users_sorted]
        # np.rint rounds halves to even, exactly like Python's round() on the same float.
        cut1 = np.rint(float(train) * counts).astype(np.int64)
        cut2 = np.rint((float(train) + float(validation)) * counts).astype(np.int64)
        part = np.where(rank < cut1[users_sorted], 0, np.where(rank < cut2[users_sorted], 1, 2))
        part_of_row = np.empty(order.size, dtype=np.int8)
        part_of_row[order] = part
        parts = [self.select(part_of_row == p) for p in range(3)]
        return Split(
            train=parts[0],
            validation=parts[1],
            test=parts[2],
            seed=int(seed),
            fractions=(float(train), float(validation), float(test)),
        )

    # Persistence -------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """Writes the set to an ``.npz`` file (no pickle)."""
        meta = {
            "format": _NPZ_FORMAT,
            "num_users": self._num_users,
            "num_items": self._num_items,
            "name": self.name,
            "duplicates_removed": self.duplicates_removed,
        }
        import json

        from tfembsize import _io

        _io.write_npz(
            path,
            {
                "meta": np.array(json.dumps(meta)),
                "users": self._users,
                "items": self._items,
                "user_ids": _plain(self._user_ids),
                "item_ids": _plain(self._item_ids),
            },
            compress=True,
        )

    @classmethod
    def load(cls, path: str | os.PathLike) -> Interactions:
        """Reads a set written by `save`.

        Raises:
            tfembsize.errors.StateFileError: the file is missing, damaged or of another kind.
        """
        import json

        from tfembsize import _io
        from tfembsize.errors import StateFileError

        f = _io.read_npz(path, what="interactions file")
        meta = json.loads(str(f["meta"])) if "meta" in f else {}
        if meta.get("format") != _NPZ_FORMAT:
            raise StateFileError(
                f"{os.fspath(path)!r} is not an Interactions file (format "
                f"{meta.get('format')!r}, expected {_NPZ_FORMAT!r})."
            )
        return cls(
            f["users"],
            f["items"],
            meta["num_users"],
            meta["num_items"],
            user_ids=f["user_ids"],
            item_ids=f["item_ids"],
            name=meta["name"],
            duplicates_removed=meta["duplicates_removed"],
        )

    # Dunder ------------------------------------------------------------------------------
    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Interactions):
            return NotImplemented
        return (
            self.num_users == other.num_users
            and self.num_items == other.num_items
            and np.array_equal(self._users, other._users)
            and np.array_equal(self._items, other._items)
            and np.array_equal(self._user_ids, other._user_ids)
            and np.array_equal(self._item_ids, other._item_ids)
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        label = f"{self.name!r}, " if self.name else ""
        return (
            f"Interactions({label}num_users={self.num_users}, num_items={self.num_items}, "
            f"num_interactions={self.num_interactions})"
        )


def _plain(ids: np.ndarray) -> np.ndarray:
    """Id maps as a dtype `np.savez` stores without pickle (object arrays become strings)."""
    return ids.astype(str) if ids.dtype == object else ids


def _lookup(id_map: np.ndarray, raw_ids: Any, what: str) -> np.ndarray:
    raw = np.asarray(raw_ids)
    if id_map.size > 1 and np.all(id_map[1:] > id_map[:-1]):
        pos = np.searchsorted(id_map, raw)
        pos_c = np.minimum(pos, id_map.size - 1)
        ok = (pos < id_map.size) & (id_map[pos_c] == raw)
    else:
        index = {v: k for k, v in enumerate(id_map.tolist())}
        flat = [index.get(v, -1) for v in raw.reshape(-1).tolist()]
        pos_c = np.asarray(flat, dtype=np.int64).reshape(raw.shape)
        ok = pos_c >= 0
    if not np.all(ok):
        bad = raw[~ok].reshape(-1)[0].item()
        raise KeyError(f"raw {what} id {bad!r} is not in this data set.")
    return pos_c.astype(np.int32)


@dataclass(frozen=True, eq=False)
class Split:
    """A per-user train/validation/test split of one interaction set.

    The three parts are disjoint, cover the original pairs, and share ``num_users``,
    ``num_items`` and the id maps. Frequencies (interaction counts per entity) come from the
    training part only.

    Attributes:
        train: pairs to fit on.
        validation: pairs for early stopping and search rewards.
        test: pairs for the final report only.
        seed: the shuffle seed.
        fractions: ``(train, validation, test)`` fractions.

    Example:
        >>> split = synthetic(200, 300, 4000, seed=0).split(0.5, 0.25, 0.25, seed=42)
        >>> indptr, indices = split.known_items("test")  # train + validation items per user
    """

    train: Interactions
    validation: Interactions
    test: Interactions
    seed: int = 42
    fractions: tuple[float, float, float] = (0.5, 0.25, 0.25)
    _cache: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        parts = (self.train, self.validation, self.test)
        for name, part in zip(("train", "validation", "test"), parts, strict=True):
            if not isinstance(part, Interactions):
                raise TypeError(f"`{name}` must be an Interactions. Received: {type(part)}")
        shapes = {(p.num_users, p.num_items) for p in parts}
        if len(shapes) != 1:
            raise ValueError(
                "train, validation and test must have the same num_users/num_items. Received: "
                f"{[(p.num_users, p.num_items) for p in parts]}"
            )
        for (a, name_a), (b, name_b) in (
            ((self.train, "train"), (self.validation, "validation")),
            ((self.train, "train"), (self.test, "test")),
            ((self.validation, "validation"), (self.test, "test")),
        ):
            shared = a.contains(b.users, b.items)
            if shared.any():
                j = int(np.argmax(shared))
                raise ValueError(
                    f"`{name_a}` and `{name_b}` must be disjoint; {int(shared.sum())} pair(s) are "
                    f"in both, e.g. (user {int(b.users[j])}, item {int(b.items[j])})."
                )

    @property
    def num_users(self) -> int:
        """Number of user rows."""
        return self.train.num_users

    @property
    def num_items(self) -> int:
        """Number of item rows."""
        return self.train.num_items

    @property
    def num_entities(self) -> int:
        """``num_users + num_items``: the N of the budget, counting every table row."""
        return self.num_users + self.num_items

    @property
    def user_frequencies(self) -> np.ndarray:
        """Training interactions per user (int64)."""
        return self.train.user_frequencies

    @property
    def item_frequencies(self) -> np.ndarray:
        """Training interactions per item (int64)."""
        return self.train.item_frequencies

    @property
    def name(self) -> str | None:
        """Name of the underlying data set."""
        return self.train.name

    def held_out(self, phase: str = "validation") -> Interactions:
        """The pairs scored at ``phase``: ``validation`` or ``test``."""
        _check_phase(phase)
        return self.validation if phase == "validation" else self.test

    def known(self, phase: str = "validation") -> Interactions:
        """The pairs excluded from the ranking at ``phase`` (train; train + validation)."""
        _check_phase(phase)
        if phase == "validation":
            return self.train
        return self.train_validation()

    def known_items(self, phase: str = "validation") -> tuple[np.ndarray, np.ndarray]:
        """CSR ``(indptr, indices)`` of the items excluded from ranking at ``phase``.

        At ``"validation"`` these are the training items, at ``"test"`` the training and
        validation items: a known positive is never recommended again. Items per user are sorted.
        """
        return self.known(phase).csr()

    def train_validation(self) -> Interactions:
        """``train ∪ validation``, for the parity-mode refit (`TrainConfig.refit`); cached."""
        if "train_validation" not in self._cache:
            self._cache["train_validation"] = self.train.union(self.validation)
        return self._cache["train_validation"]

    def __repr__(self) -> str:
        return (
            f"Split({self.name!r}, num_users={self.num_users}, num_items={self.num_items}, "
            f"train={self.train.num_interactions}, validation="
            f"{self.validation.num_interactions}, test={self.test.num_interactions}, "
            f"seed={self.seed})"
        )


def _check_phase(phase: Any) -> None:
    if phase not in PHASES:
        raise ValueError(f"`phase` must be one of {PHASES}. Received: phase={phase!r}")
