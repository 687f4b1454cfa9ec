"""Budget, the budget errors and the water-filling / priority helpers."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tfembsize import Budget, BudgetExceededError, BudgetInfeasibleError
from tfembsize.budget import cut_by_priority, fill_by_priority, water_fill_down, water_fill_up

# Budget ----------------------------------------------------------------------------------------


def test_max_params_for_is_exact_floor():
    n = 29_858 + 40_981  # Gowalla users + items
    b = Budget(sparsity=0.9, d_max=128)
    # floor(0.1 * 128 * 70839) = floor(906739.2)
    assert b.max_params_for(n) == 906_739
    assert b.max_params_for(n) == math.floor((1 - Fraction("0.9")) * 128 * n)
    for c in (0.8, 0.9, 0.95, 0.99, 0.123456789):
        for rows in (1, 7, 1000, 70_839, 10**9 + 7):
            expected = math.floor((1 - Fraction(repr(c))) * 128 * rows)
            assert Budget(sparsity=c).max_params_for(rows) == expected


def test_max_params_for_avoids_float_rounding_down():
    # In floats (1 - 0.9) * 10 * 10 == 9.999999999999998, whose floor would lose a parameter.
    assert math.floor((1 - 0.9) * 10 * 10) == 9
    assert Budget(sparsity=0.9, d_max=10).max_params_for(10) == 10
    # ... and (1 - 0.7) * 10 * 10 == 30.000000000000004 must not round up either.
    assert Budget(sparsity=0.7, d_max=10).max_params_for(10) == 30


def test_max_params_budget_ignores_rows():
    b = Budget(max_params=500, d_max=64)
    assert b.max_params_for(3) == 500
    assert b.max_params_for(10_000) == 500
    assert Budget(max_params=np.int64(7)).max_params == 7


def test_budget_defaults_and_describe():
    b = Budget(sparsity=0.9)
    assert b.d_max == 128
    assert b.max_params is None
    assert b.describe() == "sparsity=0.9, d_max=128"
    assert Budget(max_params=10, d_max=4).describe() == "max_params=10, d_max=4"
    assert isinstance(Budget(sparsity=np.float32(0.5)).sparsity, float)


def test_budget_is_frozen_and_round_trips():
    b = Budget(sparsity=0.95, d_max=64)
    with pytest.raises(AttributeError):
        b.sparsity = 0.5  # type: ignore[misc]
    assert Budget.from_dict(b.to_dict()) == b
    m = Budget(max_params=123, d_max=16)
    assert Budget.from_dict(m.to_dict()) == m
    assert m.to_dict() == {"sparsity": None, "max_params": 123, "d_max": 16}


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({}, ValueError, r"exactly one of `sparsity` or `max_params`\. Received: sparsity=None"),
        (
            {"sparsity": 0.5, "max_params": 10},
            ValueError,
            r"exactly one of `sparsity` or `max_params`\. Received: sparsity=0\.5, max_params=10",
        ),
        (
            {"sparsity": 1.3},
            ValueError,
            r"`sparsity` must be in \(0, 1\)\. Received: sparsity=1\.3",
        ),
        (
            {"sparsity": 0.0},
            ValueError,
            r"`sparsity` must be in \(0, 1\)\. Received: sparsity=0\.0",
        ),
        ({"sparsity": 1}, ValueError, r"`sparsity` must be in \(0, 1\)\. Received: sparsity=1"),
        ({"sparsity": -0.1}, ValueError, r"Received: sparsity=-0\.1"),
        ({"sparsity": float("nan")}, ValueError, r"Received: sparsity=nan"),
        ({"sparsity": "0.9"}, TypeError, r"`sparsity` must be a float\. Received: sparsity='0\.9'"),
        ({"sparsity": True}, TypeError, r"`sparsity` must be a float\. Received: sparsity=True"),
        ({"max_params": 0}, ValueError, r"`max_params` must be a positive integer\. Received: max"),
        ({"max_params": -5}, ValueError, r"Received: max_params=-5"),
        ({"max_params": 1.5}, ValueError, r"Received: max_params=1\.5"),
        ({"max_params": True}, ValueError, r"Received: max_params=True"),
        ({"sparsity": 0.5, "d_max": 0}, ValueError, r"`d_max` must be a positive integer\. Rec"),
        ({"sparsity": 0.5, "d_max": 8.0}, ValueError, r"Received: d_max=8\.0"),
    ],
)
def test_budget_rejects_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        Budget(**kwargs)


def test_max_params_for_rejects_bad_rows():
    b = Budget(sparsity=0.5)
    with pytest.raises(TypeError, match=r"`num_rows` must be an integer\. Received: num_rows=2\.0"):
        b.max_params_for(2.0)
    with pytest.raises(ValueError, match=r"`num_rows` must be >= 0\. Received: num_rows=-1"):
        b.max_params_for(-1)
    assert b.max_params_for(0) == 0


def test_check_total_names_the_excess():
    b = Budget(sparsity=0.9, d_max=128)  # 100 rows -> 1280
    b.check_total(1280, 100)  # at the limit is fine
    with pytest.raises(BudgetExceededError) as info:
        b.check_total(1300, 100, what="size plan")
    err = info.value
    assert (err.used, err.limit, err.excess) == (1300, 1280, 20)
    assert isinstance(err, ValueError)
    assert str(err) == (
        "The size plan uses 1300 usable parameters, 20 more than the budget of 1280 "
        "(sparsity=0.9, d_max=128, 100 rows)."
    )


# Water filling -----------------------------------------------------------------------------------


def _naive_down(sizes, excess, floor):
    s = list(int(x) for x in sizes)
    for _ in range(excess):
        top = max(s)
        s[s.index(top)] -= 1  # largest first, lower index on ties
    assert min(s) >= floor
    return s


def _naive_up(sizes, amount, ceil):
    s = list(int(x) for x in sizes)
    for _ in range(amount):
        low = min(s)
        if low >= ceil:
            break
        s[s.index(low)] += 1
    return s


def test_water_fill_hand_examples():
    assert water_fill_down(np.array([8, 3, 6]), 6, 1).tolist() == [4, 3, 4]
    assert water_fill_down(np.array([8, 3, 6]), 0, 1).tolist() == [8, 3, 6]
    assert water_fill_down(np.array([8, 3, 6]), 14, 1).tolist() == [1, 1, 1]
    assert water_fill_down(np.array([5, 5, 5]), 2, 1).tolist() == [4, 4, 5]
    assert water_fill_up(np.array([1, 5, 2]), 4, 8).tolist() == [4, 5, 3]
    assert water_fill_up(np.array([1, 5, 2]), 100, 8).tolist() == [8, 8, 8]
    assert water_fill_up(np.array([3, 3]), 1, 8).tolist() == [4, 3]
    assert water_fill_up(np.array([], dtype=np.int64), 5, 8).tolist() == []


def test_water_fill_down_infeasible():
    with pytest.raises(
        BudgetInfeasibleError, match=r"Cannot remove 15 parameters: only 14 lie above min_size=1"
    ):
        water_fill_down(np.array([8, 3, 6]), 15, 1)


sizes_st = st.lists(st.integers(1, 64), min_size=1, max_size=40)


@settings(max_examples=300, deadline=None)
@given(sizes=sizes_st, data=st.data())
def test_water_fill_down_matches_one_at_a_time(sizes, data):
    floor = data.draw(st.integers(1, min(sizes)))
    room = sum(s - floor for s in sizes)
    excess = data.draw(st.integers(0, room))
    out = water_fill_down(np.array(sizes), excess, floor)
    assert int(out.sum()) == sum(sizes) - excess  # exact total
    assert out.min() >= floor
    assert out.tolist() == _naive_down(sizes, excess, floor)


@settings(max_examples=300, deadline=None)
@given(sizes=sizes_st, amount=st.integers(0, 3000), ceil=st.integers(64, 80))
def test_water_fill_up_matches_one_at_a_time(sizes, amount, ceil):
    out = water_fill_up(np.array(sizes), amount, ceil)
    room = sum(ceil - s for s in sizes)
    assert int(out.sum()) == sum(sizes) + min(amount, room)  # exact total
    assert out.max() <= ceil
    assert out.tolist() == _naive_up(sizes, amount, ceil)


# Priority cut / fill ----------------------------------------------------------------------------


def test_cut_and_fill_by_priority_hand_examples():
    prio = np.array([2.0, 0.0, 1.0])
    # lowest priority (row 1) goes to the floor first, then row 2 partially
    assert cut_by_priority(np.array([5, 5, 5]), prio, 6, 1).tolist() == [5, 1, 3]
    assert cut_by_priority(np.array([5, 5, 5]), prio, 0, 1).tolist() == [5, 5, 5]
    # highest priority (row 0) is filled first, then row 2
    assert fill_by_priority(np.array([1, 1, 1]), prio, 6, 4).tolist() == [4, 1, 4]
    assert fill_by_priority(np.array([1, 1, 1]), prio, 100, 4).tolist() == [4, 4, 4]
    # ties go by index
    assert cut_by_priority(np.array([3, 3]), np.zeros(2), 2, 1).tolist() == [1, 3]
    assert fill_by_priority(np.array([1, 1]), np.zeros(2), 2, 3).tolist() == [3, 1]
    with pytest.raises(BudgetInfeasibleError, match=r"Cannot remove 13 parameters: only 12"):
        cut_by_priority(np.array([5, 5, 5]), prio, 13, 1)


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_cut_and_fill_by_priority_properties(data):
    n = data.draw(st.integers(1, 30))
    sizes = np.array(data.draw(st.lists(st.integers(2, 32), min_size=n, max_size=n)))
    prio = np.array(data.draw(st.lists(st.integers(0, 5), min_size=n, max_size=n)), float)
    excess = data.draw(st.integers(0, int((sizes - 2).sum())))
    cut = cut_by_priority(sizes, prio, excess, 2)
    assert int(cut.sum()) == int(sizes.sum()) - excess
    assert cut.min() >= 2 and np.all(cut <= sizes)
    for r in np.flatnonzero(cut < sizes):  # every lower-priority row is already at the floor
        assert np.all(cut[prio < prio[r]] == 2)
    amount = data.draw(st.integers(0, 40 * n))
    filled = fill_by_priority(sizes, prio, amount, 32)
    assert int(filled.sum()) == min(int(sizes.sum()) + amount, 32 * n)
    for r in np.flatnonzero(filled > sizes):  # every higher-priority row is already full
        assert np.all(filled[prio > prio[r]] == 32)
