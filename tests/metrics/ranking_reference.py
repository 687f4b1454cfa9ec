"""A brute-force numpy reference for full-ranking evaluation (loops, no batching, no TF)."""

from __future__ import annotations

import numpy as np


def reference_metrics(split, scores, phase="validation", ks=(5, 10, 20)):
    """Per-user metrics from a dense score matrix, one user at a time.

    Ties: a stable sort by decreasing score, so the lower item id ranks first.
    Returns a dict with users, skipped, recall {k: array}, ndcg, user_quality, item_quality,
    quality.
    """
    ks = tuple(sorted(ks))
    kmax = ks[-1]
    scores = np.asarray(scores)
    held = split.validation if phase == "validation" else split.test
    known_sets = [set(split.train.items_of(u).tolist()) for u in range(split.num_users)]
    if phase == "test":
        for u in range(split.num_users):
            known_sets[u] |= set(split.validation.items_of(u).tolist())
    disc = 1.0 / np.log2(np.arange(2, kmax + 2, dtype=np.float64))
    users, skipped = [], []
    recall = {k: [] for k in ks}
    ndcg = {k: [] for k in ks}
    quality = np.zeros(split.num_users)
    for u in range(split.num_users):
        relevant = set(held.items_of(u).tolist())
        if not relevant:
            skipped.append(u)
            continue
        users.append(u)
        s = scores[u].astype(np.float64).copy()
        s[sorted(known_sets[u])] = -np.inf
        ranking = np.argsort(-s, kind="stable")[:kmax].tolist()
        q = 0.0
        rec_u, ndcg_u = [], []
        for k in ks:
            hits = sum(1 for item in ranking[:k] if item in relevant)
            rec_u.append(hits / len(relevant))
            dcg = 0.0
            for r, item in enumerate(ranking[:k]):
                if item in relevant:
                    dcg += disc[r]
            idcg = 0.0
            for r in range(min(k, len(relevant))):
                idcg += disc[r]
            ndcg_u.append(dcg / idcg)
        for k, v in zip(ks, rec_u, strict=True):
            recall[k].append(v)
            q += v
        for k, v in zip(ks, ndcg_u, strict=True):
            ndcg[k].append(v)
            q += v
        quality[u] = q / (2 * len(ks))
    evaluated = set(users)
    train_sets = [set(split.train.items_of(u).tolist()) for u in range(split.num_users)]
    item_quality = np.zeros(split.num_items)
    for v in range(split.num_items):
        total, count = 0.0, 0
        for u in range(split.num_users):  # users in increasing order
            if u in evaluated and v in train_sets[u]:
                total += quality[u]
                count += 1
        item_quality[v] = total / count if count else 0.0
    return {
        "users": np.asarray(users),
        "skipped": np.asarray(skipped),
        "recall": {k: np.asarray(v) for k, v in recall.items()},
        "ndcg": {k: np.asarray(v) for k, v in ndcg.items()},
        "user_quality": quality,
        "item_quality": item_quality,
        "quality": float(np.mean(quality[users])) if users else float("nan"),
    }


def assert_matches_reference(result, ref):
    """Exact (bitwise) equality of every per-user and per-item number."""
    np.testing.assert_array_equal(result.users, ref["users"])
    np.testing.assert_array_equal(result.skipped_users, ref["skipped"])
    for k in result.ks:
        np.testing.assert_array_equal(result.recall[k], ref["recall"][k])
        np.testing.assert_array_equal(result.ndcg[k], ref["ndcg"][k])
    np.testing.assert_array_equal(result.user_quality, ref["user_quality"])
    np.testing.assert_array_equal(result.item_quality, ref["item_quality"])
    assert result.quality == ref["quality"]
