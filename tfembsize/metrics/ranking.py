"""Full-ranking evaluation: Recall@k, NDCG@k, per-user and per-item quality.

Every user is ranked against *all* items. Items the user is already known to like are removed
from the ranking first (train items at validation; train and validation items at test): the
result is exactly that of setting their scores to -inf before ``tf.math.top_k``. The evaluator
runs one fused TensorFlow function per batch of users; memory is bounded by
``batch_size x num_items`` scores. The metrics are then computed in float64 numpy from the
top-k hit matrix.

Exclusion, two exact ways: users are batched by their number of known items (fewest first).
For a batch whose users have at most c known items each (c <= 128), the function takes the top
``k + c`` raw scores and drops the known candidates (the best k unknown items are always among
them), so the ``[batch, num_items]`` score matrix is never rewritten; otherwise it scatters
-inf over the known (user, item) pairs (``tf.tensor_scatter_nd_update``) and takes the top k.

Tie rule: among items with equal scores the one with the lower item id ranks first (the rule of
``tf.math.top_k``, and of a stable sort by decreasing score).
"""

from __future__ import annotations

import json
import logging
import time
import types
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import tensorflow as tf

from tfembsize.data.interactions import PHASES, Split

__all__ = ["RankingEvaluator", "RankingResult", "DEFAULT_KS"]

logger = logging.getLogger(__name__)

DEFAULT_KS = (5, 10, 20)
_RESULT_FORMAT = "tfembsize.RankingResult/1"

Scorer = Any
"""A pair ``(user_matrix, item_matrix)``, a callable ``user_ids -> scores``, or a model with
``representations()`` or ``score_users()``."""


def _frozen(arr: Any, dtype: Any) -> np.ndarray:
    out = np.array(arr, dtype=dtype, copy=True)
    out.flags.writeable = False
    return out


@dataclass(frozen=True, eq=False)
class RankingResult:
    """Per-user and aggregate full-ranking metrics of one evaluation.

    Attributes:
        phase: ``"validation"`` or ``"test"``.
        ks: the cut-offs, increasing.
        users: ids of the evaluated users (those with at least one held-out item), increasing,
            int32.
        recall: ``{k: per-user Recall@k}``, float64 arrays aligned with ``users``. Recall@k is
            the number of held-out items in the top k divided by the number of held-out items
            (not by ``min(k, |R_u|)``).
        ndcg: ``{k: per-user NDCG@k}`` aligned with ``users``: binary gains, discount
            ``1 / log2(rank + 1)``, normalised by the DCG of ``min(k, |R_u|)`` hits at the top.
        user_quality: length ``num_users``: for an evaluated user, the mean of its Recall@k and
            NDCG@k over all ``ks`` (the six numbers for the default ks, the CIESS and BET
            papers' quality score); 0 for a skipped user. NaN-free.
        item_quality: length ``num_items``: the mean ``user_quality`` over the evaluated users
            that have the item in their *training* interactions; 0 if there are none.
        skipped_users: users with no held-out item in this phase (not evaluated), int32.
        quality: mean ``user_quality`` over the evaluated users: the aggregate score the
            controllers use.

    Example:
        >>> result = evaluator.evaluate((user_matrix, item_matrix))  # doctest: +SKIP
        >>> result.recall_at(20), result.ndcg_at(20), result.quality  # doctest: +SKIP
    """

    phase: str
    ks: tuple[int, ...]
    users: np.ndarray
    recall: Mapping[int, np.ndarray]
    ndcg: Mapping[int, np.ndarray]
    user_quality: np.ndarray
    item_quality: np.ndarray
    skipped_users: np.ndarray
    quality: float

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "ks", tuple(int(k) for k in self.ks))
        set_(self, "users", _frozen(self.users, np.int32))
        set_(self, "skipped_users", _frozen(self.skipped_users, np.int32))
        set_(self, "user_quality", _frozen(self.user_quality, np.float64))
        set_(self, "item_quality", _frozen(self.item_quality, np.float64))
        for name in ("recall", "ndcg"):
            table = getattr(self, name)
            if set(table) != set(self.ks):
                raise ValueError(f"`{name}` must have one array per k in {self.ks}.")
            frozen = {int(k): _frozen(table[k], np.float64) for k in self.ks}
            for k, arr in frozen.items():
                if arr.shape != self.users.shape:
                    raise ValueError(
                        f"`{name}[{k}]` must be aligned with `users` (shape "
                        f"{self.users.shape}). Received shape {arr.shape}."
                    )
            set_(self, name, types.MappingProxyType(frozen))
        set_(self, "quality", float(self.quality))

    @property
    def num_users(self) -> int:
        """Number of user rows (length of ``user_quality``)."""
        return int(self.user_quality.size)

    @property
    def num_items(self) -> int:
        """Number of item rows (length of ``item_quality``)."""
        return int(self.item_quality.size)

    @property
    def num_evaluated(self) -> int:
        """Number of evaluated users."""
        return int(self.users.size)

    @property
    def num_skipped(self) -> int:
        """Number of users skipped for having no held-out item."""
        return int(self.skipped_users.size)

    def _check_k(self, k: int) -> int:
        if k not in self.ks:
            raise ValueError(f"`k` must be one of the evaluated ks {self.ks}. Received: k={k!r}")
        return int(k)

    def recall_at(self, k: int) -> float:
        """Mean Recall@k over the evaluated users."""
        return float(np.mean(self.recall[self._check_k(k)]))

    def ndcg_at(self, k: int) -> float:
        """Mean NDCG@k over the evaluated users."""
        return float(np.mean(self.ndcg[self._check_k(k)]))

    def metrics(self) -> dict[str, float]:
        """Mean metrics by name: ``{"recall@5": ..., "ndcg@5": ..., ..., "quality": ...}``."""
        out: dict[str, float] = {}
        for k in self.ks:
            out[f"recall@{k}"] = self.recall_at(k)
        for k in self.ks:
            out[f"ndcg@{k}"] = self.ndcg_at(k)
        out["quality"] = self.quality
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (arrays as lists); `from_dict` inverts it."""
        return {
            "format": _RESULT_FORMAT,
            "phase": self.phase,
            "ks": list(self.ks),
            "users": self.users.tolist(),
            "recall": {str(k): v.tolist() for k, v in self.recall.items()},
            "ndcg": {str(k): v.tolist() for k, v in self.ndcg.items()},
            "user_quality": self.user_quality.tolist(),
            "item_quality": self.item_quality.tolist(),
            "skipped_users": self.skipped_users.tolist(),
            "quality": self.quality,
            "summary": self.metrics(),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RankingResult:
        """Inverse of `to_dict`."""
        if d.get("format") != _RESULT_FORMAT:
            raise ValueError(
                f"Not a RankingResult dict (format {d.get('format')!r}, expected "
                f"{_RESULT_FORMAT!r})."
            )
        return cls(
            phase=d["phase"],
            ks=tuple(d["ks"]),
            users=np.asarray(d["users"], np.int32),
            recall={int(k): np.asarray(v, np.float64) for k, v in d["recall"].items()},
            ndcg={int(k): np.asarray(v, np.float64) for k, v in d["ndcg"].items()},
            user_quality=np.asarray(d["user_quality"], np.float64),
            item_quality=np.asarray(d["item_quality"], np.float64),
            skipped_users=np.asarray(d["skipped_users"], np.int32),
            quality=d["quality"],
        )

    def to_json(self) -> str:
        """`to_dict` as a JSON string."""
        return json.dumps(self.to_dict())

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={v:.4f}" for k, v in self.metrics().items())
        return (
            f"RankingResult(phase={self.phase!r}, evaluated={self.num_evaluated}, "
            f"skipped={self.num_skipped}, {shown})"
        )


_CANDIDATE_LIMIT = 128
"""A batch whose users have at most this many known items each uses the candidate path."""


def _member(sorted_keys: tf.Tensor, keys: tf.Tensor) -> tf.Tensor:
    """Whether each of ``keys`` is in the non-empty sorted 1-D ``sorted_keys``."""
    flat = tf.reshape(keys, [-1])
    pos = tf.searchsorted(sorted_keys, flat, side="left")
    pos = tf.minimum(pos, tf.size(sorted_keys, out_type=pos.dtype) - 1)
    return tf.reshape(tf.equal(tf.gather(sorted_keys, pos), flat), tf.shape(keys))


def _pair_keys(items: tf.Tensor, num_items: tf.Tensor) -> tf.Tensor:
    """``row * num_items + item`` for an int32 ``[b, n]`` item matrix (int64)."""
    rows = tf.range(tf.shape(items, out_type=tf.int64)[0], dtype=tf.int64)[:, None]
    return rows * num_items + tf.cast(items, tf.int64)


def _top_scatter(scores: tf.Tensor, known: tf.Tensor, k: tf.Tensor) -> tf.Tensor:
    """Top-k items after setting the known (row, item) pairs to -inf."""
    minus_inf = tf.fill(tf.shape(known)[:1], tf.constant(-np.inf, scores.dtype))
    scores = tf.tensor_scatter_nd_update(scores, known, minus_inf)
    return tf.math.top_k(scores, k=k, sorted=True).indices


def _top_candidates(
    scores: tf.Tensor,
    known: tf.Tensor,
    known_keys: tf.Tensor,
    k: tf.Tensor,
    num_candidates: tf.Tensor,
) -> tf.Tensor:
    """Top-k items excluding known ones, without rewriting the [b, num_items] scores.

    With at most c known items per row, the best k unknown items are among the best
    ``k + c`` items, so one ``top_k(k + c)`` over the raw scores and a second ``top_k(k)``
    over the candidates (known ones at -inf) give exactly the scatter path's ranking, ties
    included (both ``top_k`` put equal values in increasing position, and candidates are in
    increasing item id among equal scores). If a candidate score is already -inf, ties
    between it and the excluded items could order differently, so that batch falls back to
    the scatter path.
    """
    values, candidates = tf.math.top_k(scores, k=num_candidates, sorted=True)
    num_items = tf.shape(scores, out_type=tf.int64)[1]
    is_known = _member(known_keys, _pair_keys(candidates, num_items))
    minus_inf = tf.constant(-np.inf, scores.dtype)

    def filtered() -> tf.Tensor:
        masked = tf.where(is_known, minus_inf, values)
        _, pos = tf.math.top_k(masked, k=k, sorted=True)
        return tf.gather(candidates, pos, batch_dims=1)

    return tf.cond(
        tf.reduce_any(tf.equal(values, minus_inf)),
        lambda: _top_scatter(scores, known, k),
        filtered,
    )


def _hits(top: tf.Tensor, held_out_keys: tf.Tensor, num_items: tf.Tensor) -> tf.Tensor:
    return _member(held_out_keys, _pair_keys(top, num_items))


def _hits_from_scores(
    scores: tf.Tensor,
    known: tf.Tensor,
    known_keys: tf.Tensor,
    held_out_keys: tf.Tensor,
    k: tf.Tensor,
    num_candidates: tf.Tensor,
) -> tf.Tensor:
    """Bool ``[b, k]``: is the item at each rank a held-out one (known items excluded)?

    ``num_candidates`` > 0 selects the candidate path, 0 the scatter path.
    """
    top = tf.cond(
        num_candidates > 0,
        lambda: _top_candidates(scores, known, known_keys, k, num_candidates),
        lambda: _top_scatter(scores, known, k),
    )
    return _hits(top, held_out_keys, tf.shape(scores, out_type=tf.int64)[1])


def _hits_from_matrices(
    user_matrix: tf.Tensor,
    item_matrix: tf.Tensor,
    users: tf.Tensor,
    known: tf.Tensor,
    known_keys: tf.Tensor,
    held_out_keys: tf.Tensor,
    k: tf.Tensor,
    num_candidates: tf.Tensor,
) -> tf.Tensor:
    """`_hits_from_scores` of ``user_matrix[users] @ item_matrix^T``."""
    scores = tf.matmul(tf.gather(user_matrix, users), item_matrix, transpose_b=True)
    return _hits_from_scores(scores, known, known_keys, held_out_keys, k, num_candidates)


_FUNCTIONS: dict[tf.DType, tuple[Callable, Callable]] = {}


def _functions(dtype: tf.DType) -> tuple[Callable, Callable]:
    """The traced functions for one score dtype, shared by every evaluator (traced once)."""
    if dtype not in _FUNCTIONS:
        m = tf.TensorSpec([None, None], dtype)
        users = tf.TensorSpec([None], tf.int32)
        known = tf.TensorSpec([None, 2], tf.int32)
        keys = tf.TensorSpec([None], tf.int64)
        scalar = tf.TensorSpec([], tf.int32)
        batch = (known, keys, keys, scalar, scalar)
        _FUNCTIONS[dtype] = (
            tf.function(_hits_from_matrices, input_signature=(m, m, users, *batch)),
            tf.function(_hits_from_scores, input_signature=(m, *batch)),
        )
    return _FUNCTIONS[dtype]


class _Batch(NamedTuple):
    """Constant tensors for one batch of users at one phase."""

    users: tf.Tensor  # int32 [b]
    known: tf.Tensor  # int32 [m, 2]: (row in batch, item) pairs to exclude
    known_keys: tf.Tensor  # int64 [m + 1], sorted: -1, then row * num_items + item
    held_out_keys: tf.Tensor  # int64 [h], sorted: row * num_items + item
    num_candidates: tf.Tensor  # int32 scalar: k + max known per row, or 0 (scatter path)

    def args(self) -> tuple[tf.Tensor, ...]:
        return (self.known, self.known_keys, self.held_out_keys)


class _PhaseData(NamedTuple):
    users: np.ndarray  # evaluated users, increasing
    num_held_out: np.ndarray  # |R_u| per evaluated user, int64
    skipped: np.ndarray
    batches: list[_Batch]
    rows: np.ndarray  # row of `users` for each batch row, batches concatenated


def _csr_rows(indptr: np.ndarray, indices: np.ndarray, rows: np.ndarray) -> tuple:
    """``(row_position, values, counts)`` of the CSR rows ``rows``, concatenated in order."""
    starts = indptr[rows]
    counts = indptr[rows + 1] - starts
    total = int(counts.sum())
    offsets = np.repeat(starts - (np.cumsum(counts) - counts), counts) + np.arange(total)
    return np.repeat(np.arange(rows.size), counts), indices[offsets], counts


class RankingEvaluator:
    """Full-ranking Recall@k / NDCG@k evaluation on a `Split`, as in the CIESS and BET papers.

    For each user with at least one held-out item at ``phase`` (validation or test items), the
    scores of all items are computed, the known items are set to -inf (train items at
    validation; train and validation items at test), and the top ``max(ks)`` items are taken
    with ``tf.math.top_k`` (ties: lower item id first). Recall@k = hits@k / |R_u|; NDCG@k uses
    binary gains, discount ``1 / log2(rank + 1)`` and an ideal DCG of ``min(k, |R_u|)`` hits.
    Users without held-out items are skipped and counted. See `RankingResult` for the
    per-user and per-item quality scores.

    ``scorer`` may be:

    * a pair ``(user_matrix [num_users, D], item_matrix [num_items, D])`` for dot-product
      models: the fast path, one fused ``gather -> matmul -> top_k -> exclude`` per batch;
    * a model with ``representations(training=False) -> (user_matrix, item_matrix)``: the
      same fast path;
    * a model with ``score_users(user_ids) -> [b, num_items]``, or any callable of that
      signature (NCF and other non-dot-product models), called eagerly per batch.

    The per-batch index tensors (user ids, exclusion pairs, held-out keys) are built once per
    phase and cached. Users are batched by their number of known items so that most batches
    avoid rewriting the score matrix (see the module docstring); results are returned in
    increasing user id whatever the batching.

    Args:
        split: the data split.
        ks: cut-offs, positive integers not larger than ``num_items``.
        batch_size: users scored at once; peak memory is about
            ``batch_size * num_items * 4`` bytes of scores.

    Example:
        >>> split = tes.data.load_dataset("synthetic").split(seed=42)  # doctest: +SKIP
        >>> evaluator = RankingEvaluator(split)  # doctest: +SKIP
        >>> result = evaluator.evaluate(model.representations())  # doctest: +SKIP
        >>> result.recall_at(20), result.quality  # doctest: +SKIP

    References:
        Krichene and Rendle, "On Sampled Metrics for Item Recommendation", KDD 2020 (why full
        ranking); Järvelin and Kekäläinen, "Cumulated gain-based evaluation of IR techniques",
        TOIS 2002 (NDCG).
    """

    def __init__(
        self, split: Split, ks: Sequence[int] = DEFAULT_KS, batch_size: int = 1024
    ) -> None:
        if not isinstance(split, Split):
            raise TypeError(f"`split` must be a tfembsize.data.Split. Received: {type(split)}")
        if isinstance(ks, (int, np.integer)) or not isinstance(ks, Sequence) or not ks:
            raise ValueError(f"`ks` must be a non-empty sequence of integers. Received: ks={ks!r}")
        for k in ks:
            if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
                raise ValueError(f"`ks` must hold positive integers. Received: ks={ks!r}")
        if len(set(ks)) != len(ks):
            raise ValueError(f"`ks` must not repeat a value. Received: ks={ks!r}")
        if max(ks) > split.num_items:
            raise ValueError(
                f"`ks` must not exceed num_items={split.num_items}. Received: ks={ks!r}"
            )
        if (
            isinstance(batch_size, bool)
            or not isinstance(batch_size, (int, np.integer))
            or (batch_size < 1)
        ):
            raise ValueError(
                f"`batch_size` must be a positive integer. Received: batch_size={batch_size!r}"
            )
        self._split = split
        self._ks = tuple(sorted(int(k) for k in ks))
        self._kmax = self._ks[-1]
        self._batch_size = int(batch_size)
        self._phases: dict[str, _PhaseData] = {}
        self._train_users = split.train.users
        self._train_items = split.train.items
        # log2(rank + 1) discounts for ranks 1..kmax and the ideal DCG of n hits.
        self._discount = 1.0 / np.log2(np.arange(2, self._kmax + 2, dtype=np.float64))
        self._ideal = np.concatenate(([np.inf], np.cumsum(self._discount)))
        self._k = tf.constant(self._kmax, tf.int32)

    @property
    def split(self) -> Split:
        """The data split."""
        return self._split

    @property
    def ks(self) -> tuple[int, ...]:
        """The cut-offs, increasing."""
        return self._ks

    @property
    def batch_size(self) -> int:
        """Users per batch."""
        return self._batch_size

    # Per-phase constants -------------------------------------------------------------------
    def _phase(self, phase: str) -> _PhaseData:
        if phase not in PHASES:
            raise ValueError(f"`phase` must be one of {PHASES}. Received: phase={phase!r}")
        if phase in self._phases:
            return self._phases[phase]
        split, num_items = self._split, self._split.num_items
        h_indptr, h_items = split.held_out(phase).csr()
        k_indptr, k_items = split.known_items(phase)
        num_held = np.diff(h_indptr)
        users = np.flatnonzero(num_held > 0).astype(np.int32)
        skipped = np.flatnonzero(num_held == 0).astype(np.int32)
        if users.size == 0:
            raise ValueError(
                f"No user has a held-out item at phase={phase!r}; nothing to evaluate."
            )
        # Batch users with similar numbers of known items together (fewest first), so most
        # batches can take the cheap candidate path (see `_top_candidates`).
        num_known = np.diff(k_indptr)[users]
        order = np.argsort(num_known, kind="stable")
        batches = []
        for start in range(0, users.size, self._batch_size):
            rows = users[order[start : start + self._batch_size]]
            k_row, k_item, counts = _csr_rows(k_indptr, k_items, rows)
            h_row, h_item, _ = _csr_rows(h_indptr, h_items, rows)
            most = int(counts.max()) if counts.size else 0
            candidates = min(self._kmax + most, num_items) if most <= _CANDIDATE_LIMIT else 0
            known_keys = np.concatenate(([-1], k_row.astype(np.int64) * num_items + k_item))
            batches.append(
                _Batch(
                    users=tf.constant(rows, tf.int32),
                    known=tf.constant(np.stack([k_row, k_item], axis=1).astype(np.int32)),
                    known_keys=tf.constant(known_keys, tf.int64),
                    held_out_keys=tf.constant(h_row.astype(np.int64) * num_items + h_item),
                    num_candidates=tf.constant(candidates, tf.int32),
                )
            )
        data = _PhaseData(
            users, num_held[users].astype(np.int64), skipped, batches, np.argsort(order)
        )
        self._phases[phase] = data
        logger.debug(
            "RankingEvaluator: phase %s, %d users in %d batches, %d skipped.",
            phase,
            users.size,
            len(batches),
            skipped.size,
        )
        return data

    # Scorers -------------------------------------------------------------------------------
    def _matrices(self, scorer: Any) -> tuple[tf.Tensor, tf.Tensor] | None:
        if isinstance(scorer, (tuple, list)):
            if len(scorer) != 2:
                raise ValueError(
                    "`scorer` given as a sequence must be (user_matrix, item_matrix). Received "
                    f"{len(scorer)} elements."
                )
            pair = scorer
        elif callable(getattr(scorer, "representations", None)):
            pair = scorer.representations(training=False)
        else:
            return None
        u, v = (tf.convert_to_tensor(x) for x in pair)
        if u.dtype != v.dtype or u.dtype not in (tf.float32, tf.float64):
            if u.dtype.is_floating and v.dtype.is_floating:
                u, v = tf.cast(u, tf.float32), tf.cast(v, tf.float32)
            else:
                raise TypeError(
                    f"`scorer` matrices must be floating point. Received dtypes {u.dtype.name} "
                    f"and {v.dtype.name}."
                )
        expected = ((self._split.num_users, None), (self._split.num_items, None))
        for name, m, (rows, _) in zip(
            ("user_matrix", "item_matrix"), (u, v), expected, strict=True
        ):
            if m.shape.rank != 2 or m.shape[0] != rows:
                raise ValueError(f"`{name}` must have shape [{rows}, D]. Received shape {m.shape}.")
        if u.shape[1] != v.shape[1]:
            raise ValueError(
                f"`user_matrix` and `item_matrix` must have the same width. Received shapes "
                f"{u.shape} and {v.shape}."
            )
        for name, m in (("user_matrix", u), ("item_matrix", v)):
            if not bool(tf.reduce_all(tf.math.is_finite(m))):
                raise ValueError(f"`{name}` contains NaN or infinite values.")
        return u, v

    def _callable(self, scorer: Any) -> Callable[[tf.Tensor], Any]:
        fn = getattr(scorer, "score_users", None)
        if callable(fn):
            return fn
        if callable(scorer):
            return scorer
        raise TypeError(
            "`scorer` must be (user_matrix, item_matrix), a model with representations() or "
            f"score_users(), or a callable user_ids -> scores. Received: {type(scorer).__name__}"
        )

    # Evaluation ----------------------------------------------------------------------------
    def top_k_hits(
        self, scorer: Scorer, phase: str = "validation"
    ) -> tuple[np.ndarray, np.ndarray]:
        """Which of each evaluated user's top ``max(ks)`` items are held-out positives.

        Args:
            scorer: see the class docstring.
            phase: ``"validation"`` or ``"test"``.

        Returns:
            ``(users, hits)``: the evaluated users (increasing) and a bool array
            ``[num_evaluated, max(ks)]`` whose column r says whether the item at rank r + 1 is
            held out.
        """
        data = self._phase(phase)
        hits = np.empty((data.users.size, self._kmax), dtype=bool)
        pair = self._matrices(scorer)
        row = 0
        if pair is not None:
            u, v = pair
            fn = _functions(u.dtype)[0]
            for batch in data.batches:
                out = fn(u, v, batch.users, *batch.args(), self._k, batch.num_candidates)
                out = out.numpy()
                hits[row : row + out.shape[0]] = out
                row += out.shape[0]
            return data.users, hits[data.rows]
        score = self._callable(scorer)
        expected = self._split.num_items
        for batch in data.batches:
            scores = tf.convert_to_tensor(score(batch.users))
            b = int(batch.users.shape[0])
            if scores.shape.rank != 2 or tuple(scores.shape) != (b, expected):
                raise ValueError(
                    f"`scorer` must return scores of shape [batch, num_items] = [{b}, "
                    f"{expected}]. Received shape {scores.shape}."
                )
            if not scores.dtype.is_floating:
                raise TypeError(f"`scorer` must return floats. Received dtype {scores.dtype}.")
            if scores.dtype not in (tf.float32, tf.float64):
                scores = tf.cast(scores, tf.float32)
            if bool(tf.reduce_any(tf.math.is_nan(scores))):
                raise ValueError("`scorer` returned NaN scores.")
            fn = _functions(scores.dtype)[1]
            out = fn(scores, *batch.args(), self._k, batch.num_candidates).numpy()
            hits[row : row + b] = out
            row += b
        return data.users, hits[data.rows]

    def evaluate(self, scorer: Scorer, phase: str = "validation") -> RankingResult:
        """Ranks all items for every user with held-out items and computes the metrics.

        Args:
            scorer: ``(user_matrix, item_matrix)``, a model with ``representations()`` or
                ``score_users()``, or a callable ``user_ids [b] -> scores [b, num_items]``.
            phase: ``"validation"`` (exclude train items, score validation items) or
                ``"test"`` (exclude train and validation items, score test items).

        Returns:
            A `RankingResult`.

        Raises:
            ValueError: on a bad phase, wrong shapes, or NaN scores.
        """
        start = time.perf_counter()
        users, hits = self.top_k_hits(scorer, phase)
        data = self._phase(phase)
        result = self._metrics(phase, users, hits, data.num_held_out, data.skipped)
        logger.debug(
            "RankingEvaluator.evaluate(%s): %.3fs, %r", phase, time.perf_counter() - start, result
        )
        return result

    def _metrics(
        self,
        phase: str,
        users: np.ndarray,
        hits: np.ndarray,
        num_held_out: np.ndarray,
        skipped: np.ndarray,
    ) -> RankingResult:
        """Metrics from a hit matrix (float64, sequential sums over ranks)."""
        hit_count = np.cumsum(hits, axis=1)
        dcg = np.cumsum(np.where(hits, self._discount, 0.0), axis=1)
        recall, ndcg = {}, {}
        for k in self._ks:
            recall[k] = hit_count[:, k - 1] / num_held_out
            ndcg[k] = dcg[:, k - 1] / self._ideal[np.minimum(num_held_out, k)]
        total = np.zeros(users.size, dtype=np.float64)
        for k in self._ks:
            total += recall[k]
        for k in self._ks:
            total += ndcg[k]
        per_user = total / (2 * len(self._ks))
        user_quality = np.zeros(self._split.num_users, dtype=np.float64)
        user_quality[users] = per_user
        evaluated = np.zeros(self._split.num_users, dtype=bool)
        evaluated[users] = True
        mask = evaluated[self._train_users]
        items = self._train_items[mask]
        num = np.bincount(
            items, weights=user_quality[self._train_users[mask]], minlength=self._split.num_items
        )
        den = np.bincount(items, minlength=self._split.num_items)
        item_quality = np.zeros(self._split.num_items, dtype=np.float64)
        np.divide(num, den, out=item_quality, where=den > 0)
        return RankingResult(
            phase=phase,
            ks=self._ks,
            users=users,
            recall=recall,
            ndcg=ndcg,
            user_quality=user_quality,
            item_quality=item_quality,
            skipped_users=skipped,
            quality=float(np.mean(per_user)),
        )

    def __repr__(self) -> str:
        return (
            f"RankingEvaluator(split={self._split!r}, ks={self._ks}, batch_size={self._batch_size})"
        )
