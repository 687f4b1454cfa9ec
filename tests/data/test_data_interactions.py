"""Interactions (ids, CSR, frequencies, set operations) and the per-user 50/25/25 split."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tfembsize.data import Interactions, Split, synthetic


def small():
    # user 0: items 2, 0; user 1: item 1; user 2: none; user 3: items 3, 1, 0
    return Interactions([0, 1, 0, 3, 3, 3], [2, 1, 0, 3, 1, 0], num_users=4, num_items=5)


# Interactions ------------------------------------------------------------------------------


def test_pairs_are_sorted_by_user_then_item():
    d = small()
    assert d.users.tolist() == [0, 0, 1, 3, 3, 3]
    assert d.items.tolist() == [0, 2, 1, 0, 1, 3]
    assert d.users.dtype == np.int32 and d.items.dtype == np.int32
    assert (d.num_users, d.num_items, d.num_interactions, len(d)) == (4, 5, 6, 6)
    assert d.num_entities == 9


def test_csr_items_of_and_frequencies():
    d = small()
    indptr, indices = d.csr()
    assert indptr.tolist() == [0, 2, 3, 3, 6]
    assert indices.tolist() == [0, 2, 1, 0, 1, 3]
    assert d.items_of(3).tolist() == [0, 1, 3]
    assert d.items_of(2).tolist() == []
    assert d.user_frequencies.tolist() == [2, 1, 0, 3]
    assert d.item_frequencies.tolist() == [2, 2, 1, 1, 0]
    assert d.user_frequencies.dtype == np.int64 and d.item_frequencies.dtype == np.int64
    assert d.density == pytest.approx(6 / 20)


def test_arrays_are_read_only():
    d = small()
    with pytest.raises(ValueError):
        d.users[0] = 1
    with pytest.raises(ValueError):
        d.csr()[0][0] = 1


def test_items_of_rejects_bad_user():
    with pytest.raises(ValueError, match=r"`user` must be in \[0, num_users=4\). Received: user=4"):
        small().items_of(4)
    with pytest.raises(TypeError, match="`user` must be an integer"):
        small().items_of(1.0)


def test_default_id_maps_are_identity():
    d = small()
    assert d.user_ids.tolist() == [0, 1, 2, 3]
    assert d.item_ids.tolist() == [0, 1, 2, 3, 4]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(users=[0, 1], items=[0]), "same length"),
        (
            dict(users=[0, 5], items=[0, 1]),
            r"`users` ids must be in \[0, num_users=4\). Received id 5",
        ),
        (
            dict(users=[0, 1], items=[-1, 1]),
            r"`items` ids must be in \[0, num_items=5\). Received id -1",
        ),
        (
            dict(users=[1, 0, 1], items=[2, 0, 2]),
            r"1 repeated \(user, item\) pair\(s\), e.g. \(1, 2\)",
        ),
        (dict(users=[[0]], items=[[0]]), "must be a 1-D array"),
    ],
)
def test_constructor_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Interactions(num_users=4, num_items=5, **kwargs)


def test_constructor_rejects_floats_and_bad_sizes():
    with pytest.raises(TypeError, match="`users` must hold integers"):
        Interactions([0.5], [1], 2, 2)
    with pytest.raises(ValueError, match="`num_items` must be a non-negative integer"):
        Interactions([0], [0], 2, -1)
    with pytest.raises(ValueError, match=r"`user_ids` must have one raw id per row, shape \(2,\)"):
        Interactions([0], [0], 2, 2, user_ids=[5])


def test_from_raw_remaps_and_deduplicates():
    d = Interactions.from_raw(["b", "a", "b", "c", "b"], [10, 30, 10, 20, 30], name="toy")
    assert d.user_ids.tolist() == ["a", "b", "c"]
    assert d.item_ids.tolist() == [10, 20, 30]
    assert d.duplicates_removed == 1
    assert list(zip(d.users.tolist(), d.items.tolist(), strict=True)) == [
        (0, 2),
        (1, 0),
        (1, 2),
        (2, 1),
    ]
    assert d.user_index(["c", "a"]).tolist() == [2, 0]
    assert d.item_index([30]).tolist() == [2]
    with pytest.raises(KeyError, match="raw item id 99"):
        d.item_index([99])
    assert d.name == "toy" and "toy" in repr(d)


def test_equality_ignores_input_order():
    a = small()
    perm = np.random.default_rng(1).permutation(6)
    b = Interactions(a.users[perm], a.items[perm], 4, 5)
    assert a == b
    assert a != Interactions([0], [0], 4, 5)


def test_contains_union_select():
    d = small()
    assert d.contains([0, 0, 2, 3], [2, 1, 0, 3]).tolist() == [True, False, False, True]
    other = Interactions([2, 0], [4, 2], 4, 5)
    u = d.union(other)
    assert u.num_interactions == 7 and u.contains([2], [4]).tolist() == [True]
    s = d.select(d.users == 3)
    assert s.users.tolist() == [3, 3, 3] and s.num_users == 4
    with pytest.raises(ValueError, match="same rows"):
        d.union(Interactions([0], [0], 4, 6))


def test_to_scipy():
    m = small().to_scipy()
    assert m.shape == (4, 5) and m.nnz == 6 and m[3, 3] == 1.0 and m[2, 0] == 0.0


def test_save_load_round_trip(tmp_path):
    d = Interactions.from_raw(["x", "y", "y"], [3, 1, 3], name="toy")
    path = tmp_path / "d.npz"
    d.save(path)
    e = Interactions.load(path)
    assert e == d and e.name == "toy" and e.user_ids.tolist() == ["x", "y"]
    np.savez(tmp_path / "bad.npz", meta=np.array(json.dumps({"format": "other"})))
    with pytest.raises(ValueError, match="is not an Interactions file"):
        Interactions.load(tmp_path / "bad.npz")


# Split ---------------------------------------------------------------------------------------


def per_user_sizes(split):
    return (
        split.train.user_frequencies,
        split.validation.user_frequencies,
        split.test.user_frequencies,
    )


def test_split_sizes_follow_round_half_even():
    # user u has u + 1 interactions (1..8)
    users = np.repeat(np.arange(8), np.arange(1, 9))
    items = np.concatenate([np.arange(n) for n in range(1, 9)])
    d = Interactions(users, items, 8, 8)
    tr, va, te = per_user_sizes(d.split(0.5, 0.25, 0.25, seed=42))
    # n:      1  2  3  4  5  6  7  8
    # train = round(n/2):   0 1 2 2 2 3 4 4   (round half to even: 0.5->0, 1.5->2, 2.5->2)
    # train+val = round(3n/4): 1 2 2 3 4 4 5 6
    assert tr.tolist() == [0, 1, 2, 2, 2, 3, 4, 4]
    assert (tr + va).tolist() == [1, 2, 2, 3, 4, 4, 5, 6]
    assert (tr + va + te).tolist() == list(range(1, 9))
    for n in range(1, 9):
        assert tr[n - 1] == round(0.5 * n) and tr[n - 1] + va[n - 1] == round(0.75 * n)


def check_split_invariants(data, split, fractions=(0.5, 0.25, 0.25)):
    parts = (split.train, split.validation, split.test)
    for p in parts:
        assert (p.num_users, p.num_items) == (data.num_users, data.num_items)
        assert np.array_equal(p.user_ids, data.user_ids)
        assert np.array_equal(p.item_ids, data.item_ids)
    # disjoint and covering
    all_keys = np.concatenate([p.keys() for p in parts])
    assert all_keys.size == data.num_interactions
    assert np.array_equal(np.sort(all_keys), data.keys())
    # per-user sizes
    n = data.user_frequencies
    tr, va, te = per_user_sizes(split)
    assert np.array_equal(tr, np.rint(fractions[0] * n).astype(np.int64))
    assert np.array_equal(tr + va, np.rint((fractions[0] + fractions[1]) * n).astype(np.int64))
    assert np.array_equal(tr + va + te, n)
    # frequencies come from train
    assert np.array_equal(split.user_frequencies, split.train.user_frequencies)
    assert np.array_equal(split.item_frequencies, split.train.item_frequencies)


def test_split_invariants_synthetic():
    data = synthetic(300, 400, 6000, seed=3)
    split = data.split(0.5, 0.25, 0.25, seed=42)
    check_split_invariants(data, split)
    # every synthetic user has >= 4 interactions, so every user is in every part
    for p in (split.train, split.validation, split.test):
        assert p.user_frequencies.min() >= 1


def test_split_is_deterministic_and_seed_dependent():
    data = synthetic(200, 300, 4000, seed=1)
    a, b = data.split(seed=42), data.split(seed=42)
    c = data.split(seed=43)
    assert a.train == b.train and a.validation == b.validation and a.test == b.test
    assert a.train != c.train
    assert a.seed == 42 and a.fractions == (0.5, 0.25, 0.25)


def test_split_ignores_input_order():
    data = synthetic(100, 200, 2000, seed=2)
    perm = np.random.default_rng(0).permutation(data.num_interactions)
    shuffled = Interactions(data.users[perm], data.items[perm], data.num_users, data.num_items)
    assert shuffled.split(seed=7).test == data.split(seed=7).test


def test_split_other_fractions():
    data = synthetic(100, 200, 3000, seed=2)
    split = data.split(0.8, 0.1, 0.1, seed=0)
    check_split_invariants(data, split, (0.8, 0.1, 0.1))
    only_train = data.split(1.0, 0.0, 0.0)
    assert only_train.train == data and only_train.test.num_interactions == 0


@settings(max_examples=25, deadline=None)
@given(
    degrees=st.lists(st.integers(1, 12), min_size=1, max_size=12),
    seed=st.integers(0, 2**31),
    train=st.sampled_from([0.5, 0.6, 0.7, 0.8]),
)
def test_split_property(degrees, seed, train):
    rng = np.random.default_rng(seed)
    users = np.repeat(np.arange(len(degrees)), degrees)
    items = np.concatenate([rng.choice(12, size=d, replace=False) for d in degrees])
    data = Interactions(users, items, len(degrees), 12)
    val = (1 - train) / 2
    check_split_invariants(
        data, data.split(train, val, 1 - train - val, seed=seed), (train, val, 0)
    )


@pytest.mark.parametrize(
    ("args", "error", "match"),
    [
        (
            (0.5, 0.25, 0.2),
            ValueError,
            r"must sum to 1. Received: train=0.5, validation=0.25, test=0.2",
        ),
        ((1.5, -0.25, -0.25), ValueError, r"`train` must be in \[0, 1\]. Received: train=1.5"),
        ((0.5, "0.25", 0.25), TypeError, "`validation` must be a float"),
    ],
)
def test_split_fraction_errors(args, error, match):
    with pytest.raises(error, match=match):
        small().split(*args)


def test_split_seed_must_be_int():
    with pytest.raises(
        TypeError, match="`seed` must be a non-negative integer. Received: seed=None"
    ):
        small().split(seed=None)


def test_known_items_and_held_out():
    data = synthetic(50, 80, 1000, seed=4)
    split = data.split(seed=42)
    assert split.known("validation") == split.train
    indptr, indices = split.known_items("test")
    tv = split.train.union(split.validation)
    assert np.array_equal(indptr, tv.csr()[0]) and np.array_equal(indices, tv.csr()[1])
    for u in range(5):  # sorted per user
        row = indices[indptr[u] : indptr[u + 1]]
        assert np.all(np.diff(row) > 0)
    assert split.held_out("validation") == split.validation
    assert split.held_out("test") == split.test
    assert split.train_validation() is split.train_validation()  # cached
    with pytest.raises(
        ValueError,
        match=r"`phase` must be one of \('validation', 'test'\). Received: phase='train'",
    ):
        split.known_items("train")
    assert split.num_entities == 130 and "seed=42" in repr(split)


def test_split_rejects_overlapping_parts():
    a = Interactions([0, 1], [0, 1], 2, 2)
    b = Interactions([1], [1], 2, 2)
    c = Interactions([0], [1], 2, 2)
    with pytest.raises(
        ValueError,
        match=r"`train` and `validation` must be disjoint; 1 pair\(s\) are in both, "
        r"e.g. \(user 1, item 1\)",
    ):
        Split(a, b, c)
    with pytest.raises(ValueError, match="same num_users/num_items"):
        Split(a, Interactions([], [], 2, 3), c)


# Real data -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["gowalla", "ml1m", "ml100k"])
def test_split_invariants_real_data(name, request):
    data = request.getfixturevalue(name)
    split = data.split(0.5, 0.25, 0.25, seed=42)
    check_split_invariants(data, split)
    again = data.split(0.5, 0.25, 0.25, seed=42)
    assert again.validation == split.validation and again.test == split.test
    # these data sets have >= 10 (Gowalla) / >= 20 (MovieLens) interactions per user
    for p in (split.train, split.validation, split.test):
        assert p.user_frequencies.min() >= 1
