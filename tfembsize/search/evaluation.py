"""Validation quality of a model of one's own: ``evaluate(model)`` results and `TowerEvaluator`.

`feedback_from_evaluation` turns what a user's ``evaluate(model)`` returns into a `Feedback`;
`TowerEvaluator` computes full-ranking quality per user and per item for a two-tower model.

What each controller needs from the evaluation:

* ES, MR, the frequency baseline and BET need one number, the validation ``quality``
  (higher is better; BET's fitness is its ratio to the full-size reference model). BET
  chooses among its retrained candidates by ``monitor`` (``"recall@20"`` by default): give it
  a metric your evaluation reports (``TowerEvaluator`` reports ``recall@k`` and ``ndcg@k``)
  or ``monitor="quality"``.
* CIESS also needs the quality of every user and every item (``user_quality`` and
  ``item_quality``, one value per table row): its reward is per entity.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from tfembsize.layers.utils import find_searchable_layers, iter_layers
from tfembsize.records import Feedback
from tfembsize.search.entities import find_lookup, is_index_lookup, lookup_special_rows

__all__ = ["TowerEvaluator", "feedback_from_evaluation"]

logger = logging.getLogger(__name__)


def _scalar(value: Any) -> float | None:
    """``value`` as a float if it is a real number (Python, NumPy or a 0-d tensor)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float, np.integer, np.floating)):
        return float(value)
    if isinstance(value, (np.ndarray, tf.Tensor, tf.Variable)) and tuple(value.shape) == ():
        arr = np.asarray(value)
        return float(arr) if arr.dtype.kind in "iuf" else None
    return None


def _entity_array(name: str, value: Any, rows: int) -> np.ndarray:
    arr = np.asarray(value, np.float64).reshape(-1)
    if arr.size != rows:
        raise ValueError(
            f"`evaluate` returned `{name}` with {arr.size} values; the tables have {rows} rows "
            "on that side (one value per table row, mask and out-of-vocabulary rows included)."
        )
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"`evaluate` returned `{name}` with NaN or infinite values.")
    return arr


def feedback_from_evaluation(
    value: Any,
    *,
    num_users: int,
    num_items: int,
    reference: Feedback | None = None,
    **fields: Any,
) -> Feedback:
    """The `Feedback` of what an ``evaluate(model)`` function returned.

    ``value`` may be:

    * a number: the validation quality (higher is better);
    * a mapping with ``"quality"`` and optionally ``"user_quality"`` / ``"item_quality"``
      (one value per table row of that side) and ``"metrics"`` (a mapping of named numbers);
      every other numeric entry becomes a metric too;
    * a `tfembsize.metrics.RankingResult` (what `TowerEvaluator` and `RankingEvaluator`
      return): quality, per-entity quality and ``recall@k`` / ``ndcg@k``;
    * a `Feedback` (its quality, per-entity arrays and metrics are kept).

    A NaN or infinite quality gives a failed feedback. With a ``reference``, the ratios are
    added (`Feedback.with_reference`).

    Args:
        value: what ``evaluate`` returned.
        num_users: user rows (the length ``user_quality`` must have).
        num_items: item rows.
        reference: the full-size reference feedback, if any.
        **fields: further `Feedback` fields (``usable_params``, ``wall_time``, ``mode``,
            ``train_steps``, ``loss``, ``info``).

    Raises:
        TypeError: ``value`` is none of the above.
        ValueError: a per-entity array of the wrong length or with NaN values.
    """
    metrics: dict[str, float] = {}
    user_q = item_q = None
    if isinstance(value, Feedback):
        if not value.ok:
            return Feedback.failed(value.message, **_failed_fields(fields))
        quality: float | None = value.quality
        user_q, item_q = value.user_quality, value.item_quality
        metrics.update(value.metrics)
    elif hasattr(value, "user_quality") and hasattr(value, "quality") and hasattr(value, "ks"):
        quality = _scalar(value.quality)
        user_q, item_q = value.user_quality, value.item_quality
        for k in value.ks:
            metrics[f"recall@{k}"] = float(value.recall_at(k))
            metrics[f"ndcg@{k}"] = float(value.ndcg_at(k))
    elif isinstance(value, Mapping):
        if "quality" not in value:
            raise TypeError(
                "`evaluate` returned a mapping without 'quality'; it must hold the validation "
                f"quality under 'quality'. Received keys {sorted(map(str, value))}."
            )
        quality = _scalar(value["quality"])
        user_q, item_q = value.get("user_quality"), value.get("item_quality")
        for key, entry in value.items():
            if key in ("quality", "user_quality", "item_quality"):
                continue
            if key == "metrics" and isinstance(entry, Mapping):
                for name, number in entry.items():
                    metrics[str(name)] = _require_scalar(f"metrics[{name!r}]", number)
                continue
            metrics[str(key)] = _require_scalar(str(key), entry)
    else:
        quality = _scalar(value)
        if quality is None:
            raise TypeError(
                "`evaluate` must return the validation quality: a number, a mapping with "
                "'quality' (and optionally 'user_quality', 'item_quality', 'metrics'), a "
                f"RankingResult or a Feedback. Received: {type(value).__name__}"
            )
    if quality is None:
        raise TypeError(
            "`evaluate` returned a 'quality' that is not a number. Received: "
            f"{type(value['quality']).__name__}"  # only mappings reach this line
        )
    if not math.isfinite(quality):
        return Feedback.failed(
            f"The evaluation returned quality={quality!r}.", **_failed_fields(fields)
        )
    feedback = Feedback(
        quality=quality,
        user_quality=None if user_q is None else _entity_array("user_quality", user_q, num_users),
        item_quality=None if item_q is None else _entity_array("item_quality", item_q, num_items),
        metrics=metrics,
        **fields,
    )
    return feedback.with_reference(reference)


def _require_scalar(name: str, value: Any) -> float:
    number = _scalar(value)
    if number is None:
        raise TypeError(
            f"`evaluate` returned {name!r}, which is not a number (entries besides 'quality', "
            f"'user_quality', 'item_quality' and 'metrics' are metrics). Received: "
            f"{type(value).__name__}"
        )
    return number


def _failed_fields(fields: Mapping[str, Any]) -> dict[str, Any]:
    keep = ("usable_params", "wall_time", "mode", "train_steps", "loss", "info")
    return {k: v for k, v in fields.items() if k in keep}


# TowerEvaluator -----------------------------------------------------------------------------
class _Side:
    """One tower's id -> row map and row count, read from its lookup (or its table)."""

    def __init__(self, tower: Any, role: str) -> None:
        lookups = [tower] if is_index_lookup(tower) else []
        lookups += [layer for layer in iter_layers(tower) if is_index_lookup(layer)]
        if lookups:
            self.lookup = find_lookup(tower, f"The {role} tower")
            self.rows = int(self.lookup.vocabulary_size())
            self.special = lookup_special_rows(self.lookup)
            return
        tables = list(find_searchable_layers(tower).values())
        if len(tables) != 1:
            raise ValueError(
                f"The {role} tower {getattr(tower, 'name', '')!r} has no StringLookup/"
                "IntegerLookup, so its ids must be the rows of its one table; it has "
                f"{len(tables)} searchable tables."
            )
        self.lookup = None
        self.rows = int(tables[0].input_dim)
        self.special = np.zeros(0, np.int64)

    def to_rows(self, ids: Any) -> np.ndarray:
        ids = tf.reshape(tf.convert_to_tensor(ids), [-1])
        if self.lookup is None:
            return np.asarray(ids, np.int64)
        return np.asarray(self.lookup(ids), np.int64)

    def all_ids(self) -> tf.Tensor:
        """One id per table row, in row order (the lookup's tokens, or the rows)."""
        if self.lookup is None:
            return tf.range(self.rows)
        tokens = self.lookup.get_vocabulary()
        ids = tf.constant(tokens)
        if not np.array_equal(self.to_rows(ids), np.arange(self.rows)):
            raise ValueError(
                f"Lookup {self.lookup.name!r} does not map its own vocabulary back to rows "
                "0, 1, ...: TowerEvaluator needs one out-of-vocabulary index at most."
            )
        return ids


class TowerEvaluator:
    """Full-ranking validation quality of a two-tower model, per user and per item.

    An ``evaluate`` function for `FitEnvironment` (it returns a `RankingResult`): every
    user row's query vector is scored against every candidate row's vector, items the user
    has in training are removed, and Recall@k / NDCG@k are computed on the validation pairs
    as `tfembsize.metrics.RankingEvaluator` does. The quality of a user is the mean of its
    Recall@k and NDCG@k over ``ks``; of an item, the mean quality of the users that have it in
    training: what CIESS needs, besides the aggregate quality that every method uses.

    Ids go through the towers' own ``StringLookup`` / ``IntegerLookup``, so the pairs are
    given by raw ids. The rows of the lookups' mask and out-of-vocabulary tokens are rows of
    the tables: they are evaluated (an unknown user id lands on the out-of-vocabulary row) but
    are never recommended as items.

    Args:
        train: the training pairs as raw ids, ``(user_ids, item_ids)`` (arrays, lists or
            tensors); their items are excluded from each user's ranking.
        validation: the validation pairs, likewise (pairs also in ``train`` are dropped).
        query_tower: how to find the query tower in the model: an attribute or layer name
            (``"user_model"``), or a callable ``model -> tower``. The tower maps ids to
            vectors.
        candidate_tower: the same for the candidate tower.
        ks: the cut-offs of Recall@k and NDCG@k.
        batch_size: users ranked at once.

    Example:
        >>> evaluate = TowerEvaluator((train_users, train_titles), (val_users, val_titles),
        ...                           query_tower="user_model",
        ...                           candidate_tower="movie_model")  # doctest: +SKIP
        >>> evaluate(model).recall_at(10)  # doctest: +SKIP
    """

    def __init__(
        self,
        train: Sequence[Any],
        validation: Sequence[Any],
        *,
        query_tower: str | Callable[[Any], Any],
        candidate_tower: str | Callable[[Any], Any],
        ks: Sequence[int] = (5, 10, 20),
        batch_size: int = 1024,
    ) -> None:
        for arg, pairs in (("train", train), ("validation", validation)):
            if not isinstance(pairs, (tuple, list)) or len(pairs) != 2:
                raise TypeError(
                    f"`{arg}` must be a pair (user_ids, item_ids) of raw ids. Received: "
                    f"{type(pairs).__name__}"
                )
            if len(np.asarray(pairs[0])) != len(np.asarray(pairs[1])):
                raise ValueError(
                    f"`{arg}` must hold as many user ids as item ids. Received "
                    f"{len(np.asarray(pairs[0]))} and {len(np.asarray(pairs[1]))}."
                )
        for arg, tower in (("query_tower", query_tower), ("candidate_tower", candidate_tower)):
            if not (isinstance(tower, str) or callable(tower)):
                raise TypeError(
                    f"`{arg}` must be an attribute or layer name of the model, or a callable "
                    f"model -> tower. Received: {type(tower).__name__}"
                )
        self._train = (np.asarray(train[0]), np.asarray(train[1]))
        self._validation = (np.asarray(validation[0]), np.asarray(validation[1]))
        self.query_tower = query_tower
        self.candidate_tower = candidate_tower
        self.ks = tuple(int(k) for k in ks)
        self.batch_size = batch_size
        self._evaluator: Any = None
        self._shape: tuple[int, int] | None = None

    def _tower(self, model: Any, which: str | Callable[[Any], Any], role: str) -> Any:
        if callable(which) and not isinstance(which, str):
            return which(model)
        tower = getattr(model, which, None)
        if tower is None and callable(getattr(model, "get_layer", None)):
            try:
                tower = model.get_layer(which)
            except ValueError:
                tower = None
        if tower is None:
            raise ValueError(
                f"The model has no attribute or layer {which!r} for `{role}`; pass its name "
                "or a callable model -> tower."
            )
        return tower

    def _ranking(self, users: _Side, items: _Side) -> Any:
        from tfembsize.data import Interactions, Split
        from tfembsize.metrics import RankingEvaluator

        shape = (users.rows, items.rows)
        if self._evaluator is not None and self._shape == shape:
            return self._evaluator

        def pairs(raw: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
            u, i = users.to_rows(raw[0]), items.to_rows(raw[1])
            return np.unique(u * items.rows + i)

        train = pairs(self._train)
        validation = np.setdiff1d(pairs(self._validation), train, assume_unique=True)

        def interactions(keys: np.ndarray) -> Interactions:
            return Interactions(keys // items.rows, keys % items.rows, *shape)

        empty = np.zeros(0, np.int64)
        split = Split(interactions(train), interactions(validation), interactions(empty))
        self._evaluator = RankingEvaluator(split, ks=self.ks, batch_size=self.batch_size)
        self._shape = shape
        return self._evaluator

    def __call__(self, model: Any) -> Any:
        """Ranks every item for every validation user; returns a `RankingResult`."""
        query = self._tower(model, self.query_tower, "query_tower")
        candidate = self._tower(model, self.candidate_tower, "candidate_tower")
        users, items = _Side(query, "query"), _Side(candidate, "candidate")
        evaluator = self._ranking(users, items)
        user_matrix = tf.cast(query(users.all_ids()), tf.float32)
        item_matrix = tf.cast(candidate(items.all_ids()), tf.float32)
        blocked = np.zeros(items.rows, np.float32)
        blocked[items.special] = -np.inf
        penalty = tf.constant(blocked)[tf.newaxis, :]

        def score_users(user_rows: tf.Tensor) -> tf.Tensor:
            queries = tf.gather(user_matrix, user_rows)
            return tf.matmul(queries, item_matrix, transpose_b=True) + penalty

        if not items.special.size:
            return evaluator.evaluate((user_matrix, item_matrix), phase="validation")
        return evaluator.evaluate(score_users, phase="validation")

    def __repr__(self) -> str:
        return (
            f"TowerEvaluator(train={self._train[0].size} pairs, validation="
            f"{self._validation[0].size} pairs, ks={self.ks})"
        )
