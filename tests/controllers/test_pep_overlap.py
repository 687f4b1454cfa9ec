"""Kept-coordinate overlap of PEP masks, prefix tickets, and the failure mode they remove."""

from __future__ import annotations

import numpy as np
import pytest

from tfembsize.controllers.pep import (
    PEPConfig,
    mask_overlap,
    prefix_masks,
    retrain_ticket,
    ticket_model,
)
from tfembsize.layers.pep_embedding import find_pep_layers

USERS = [[1, 1, 0, 0], [1, 0, 0, 0]]
ITEMS = [[0, 1, 1, 0], [0, 0, 1, 1]]


def test_overlap_by_hand():
    got = mask_overlap(USERS, ITEMS, [0, 0, 1], [0, 1, 0])
    # pairs: (0,0) share coordinate 1 of min(2, 2); (0,1) share none of 2; (1,0) none of 1
    assert got.pairs == 3
    assert got.mean_shared == pytest.approx(1 / 3)
    assert got.mean_min_count == pytest.approx(5 / 3)
    assert got.alignment == pytest.approx(0.2)
    assert got.zero_shared_fraction == pytest.approx(2 / 3)
    chunked = mask_overlap(USERS, ITEMS, [0, 0, 1], [0, 1, 0], chunk=1)
    assert chunked == got


def test_prefix_masks_keep_the_counts_and_align_fully():
    prefix = prefix_masks({"u": USERS, "i": ITEMS})
    assert prefix["u"].astype(int).tolist() == [[1, 1, 0, 0], [1, 0, 0, 0]]
    assert prefix["i"].astype(int).tolist() == [[1, 1, 0, 0], [1, 1, 0, 0]]
    got = mask_overlap(prefix["u"], prefix["i"], [0, 0, 1], [0, 1, 0])
    assert got.alignment == 1.0 and got.zero_shared_fraction == 0.0
    assert got.mean_shared == got.mean_min_count == pytest.approx(5 / 3)


@pytest.mark.parametrize(
    "args,match",
    [
        ((USERS, [[1, 0, 1]], [0], [0]), "same width. Received 4 and 3"),
        ((USERS, ITEMS, [0, 2], [0, 0]), r"`users` has ids outside \[0, 2\)"),
        ((USERS, ITEMS, [0], [5]), r"`items` has ids outside \[0, 2\)"),
        ((USERS, ITEMS, [], []), "non-empty and of equal length"),
        (([[2, 0, 0, 0]], ITEMS, [0], [0]), "`user_mask` must be boolean or contain only 0"),
        (([1, 0], ITEMS, [0], [0]), r"`user_mask` must be a 2-D"),
    ],
)
def test_bad_arguments(args, match):
    with pytest.raises(ValueError, match=match):
        mask_overlap(*args)


def test_config_rejects_an_unknown_ticket():
    assert PEPConfig().ticket == "entries"
    with pytest.raises(ValueError, match=r"`ticket` must be one of \('entries', 'prefix'\)"):
        PEPConfig(ticket="rows")


def _split():
    from tfembsize.data import synthetic

    return synthetic(150, 200, 6000, seed=0).split(0.5, 0.25, 0.25, seed=42)


def _builder(split, d):
    from tfembsize.models import MF

    return lambda seed: MF.create(split.num_users, split.num_items, d)


def test_scattered_masks_cannot_fit_where_prefix_masks_of_the_same_counts_can():
    """The failure mode: a dot product only uses the coordinates both rows keep.

    Every row keeps 4 of 16 coordinates. Scattered independently per row (as unstructured
    per-entry pruning may leave them), a user and an item share about one coordinate; as
    prefixes of the same counts they share all four. Same usable parameters, same
    initial values on the kept entries, same recipe: the scattered ticket trains to a
    clearly higher loss.
    """
    from tfembsize.metrics import RankingEvaluator
    from tfembsize.models import TrainConfig

    d, keep = 16, 4
    split = _split()
    rng = np.random.default_rng(0)
    masks = {}
    for name, rows in (("user_embedding", split.num_users), ("item_embedding", split.num_items)):
        m = np.zeros((rows, d), bool)
        for r in range(rows):
            m[r, rng.choice(d, keep, replace=False)] = True
        masks[name] = m
    initial = {
        name: rng.normal(0, 0.1, size=m.shape).astype(np.float32) for name, m in masks.items()
    }
    pairs = (split.train.users, split.train.items)
    scattered = mask_overlap(masks["user_embedding"], masks["item_embedding"], *pairs)
    assert scattered.alignment < 0.4 and scattered.zero_shared_fraction > 0.2
    assert scattered.mean_min_count == keep
    recipe = TrainConfig(
        learning_rate=0.05, max_steps=800, eval_every=400, patience=10, batch_size=64
    )
    evaluator = RankingEvaluator(split, ks=(20,))
    losses = {}
    for ticket in ("entries", "prefix"):
        config = PEPConfig(ticket=ticket)
        model = ticket_model(_builder(split, d), 3, masks, initial, config)
        layers = find_pep_layers(model)
        kept = {n: layer.pruning_mask() for n, layer in layers.items()}
        assert sum(int(k.sum()) for k in kept.values()) == sum(int(m.sum()) for m in masks.values())
        if ticket == "prefix":
            expected = prefix_masks(masks)
            for n in masks:
                np.testing.assert_array_equal(kept[n], expected[n])
                np.testing.assert_array_equal(
                    layers[n].embeddings.numpy(), initial[n] * expected[n]
                )
        result = retrain_ticket(model, split, evaluator, 0.75, train_config=recipe)
        losses[ticket] = result.final_loss
    assert losses["prefix"] < 0.93 * losses["entries"], losses
