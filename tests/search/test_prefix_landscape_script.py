"""benchmarks/prefix_landscape.py: the designed allocations are exact, within the budget and
rebuilt identically from their names."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def script():
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        path = REPO / "benchmarks" / "prefix_landscape.py"
        spec = importlib.util.spec_from_file_location("_bench_prefix_landscape", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    return module


def test_fill_to_by_hand(script):
    # scale 2: floor(2 * [1, 1, 2]) = [2, 2, 4] spends all 8
    assert script.fill_to(np.array([1.0, 1.0, 2.0]), 8, 4).tolist() == [2, 2, 4]
    # [2, 2, 2] leaves 1: it goes to the first of the equally heavy rows
    assert script.fill_to(np.ones(3), 7, 4).tolist() == [3, 2, 2]
    # clipped at d_max = 4 (and kept at least 1); the total is never exceeded
    assert script.fill_to(np.array([1.0, 100.0]), 5, 4).tolist() == [1, 4]
    assert script.fill_to(np.array([1.0, 100.0]), 20, 4).tolist() == [4, 4]
    with pytest.raises(ValueError, match="total=2 cannot give 3 rows"):
        script.fill_to(np.ones(3), 2, 4)


def test_family_members_spend_the_budget_in_their_shape(script):
    fu = np.array([0.0, 1.0, 3.0, 7.0, 15.0, 31.0])
    fi = np.array([0.0, 0.0, 2.0, 9.0])
    d_max, limit = 16, 40  # N = 10 rows
    members = script.family(fu, fi, limit, d_max)
    assert len(members) == 4 * 3 + 1 + 1
    for name, (u, i) in members.items():
        assert u.sum() + i.sum() <= limit, name
        assert min(u.min(), i.min()) >= 1 and max(u.max(), i.max()) <= d_max, name
    u, i = members["share=0.5 alpha=0"]
    # 20 units to 6 users: 3 each and the 2 left to the first two (equal weights)
    assert u.tolist() == [4, 4, 3, 3, 3, 3] and i.tolist() == [5, 5, 5, 5]
    u, i = members["share=natural alpha=0"]  # ES with the remainder handed out
    assert u.tolist() == [4] * 6 and i.tolist() == [4] * 4
    u, i = members["share=0.5 alpha=1"]  # larger sizes for more frequent rows
    assert np.all(np.diff(u) >= 0) and u[-1] > u[0] and u.sum() <= 20
    u, i = members["two-level top=0.2 ratio=4"]
    assert sorted(set(u.tolist()) | set(i.tolist())) == [2, 8]


def test_grid_of_rebuilds_the_same_members(script):
    fu, fi = np.arange(6.0), np.arange(4.0)
    members = script.family(fu, fi, 40, 16, shares=("0.7", "0.3"), alphas=(0.25, 0.0))
    names = [n for n in members if n.startswith("share=")]
    shares, alphas = script.grid_of(names)
    assert shares == ("0.3", "0.7") and alphas == (0.0, 0.25)
    again = script.family(fu, fi, 40, 16, shares=shares, alphas=alphas)
    for name in names:
        assert [x.tolist() for x in again[name]] == [x.tolist() for x in members[name]]
