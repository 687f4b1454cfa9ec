"""SizePlan: accounting, checks, repair (hand examples + property test), persistence, apply."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st

from tfembsize import Budget, BudgetExceededError, BudgetInfeasibleError, SizePlan
from tfembsize._keras import keras
from tfembsize.errors import StateFileError
from tfembsize.layers import BudgetedEmbedding, MaskedEmbedding, find_searchable_layers
from tfembsize.layers.utils import iter_layers

# Construction and accounting ----------------------------------------------------------------------


def test_accounting_and_immutability():
    plan = SizePlan({"user_embedding": [4, 2], "item_embedding": np.array([1, 1, 8], np.int64)})
    assert plan.total_params() == 16
    assert plan.num_rows() == 5
    assert list(plan) == ["user_embedding", "item_embedding"]
    assert len(plan) == 2
    assert plan["item_embedding"].dtype == np.int32
    with pytest.raises(ValueError, match="read-only"):
        plan["user_embedding"][0] = 9
    assert repr(plan) == (
        "SizePlan(user_embedding: 2 rows, 6 params, item_embedding: 3 rows, 10 params)"
    )
    assert plan == SizePlan({"user_embedding": [4, 2], "item_embedding": [1, 1, 8]})
    assert plan != SizePlan({"user_embedding": [4, 2], "item_embedding": [1, 1, 7]})
    assert plan != SizePlan({"user_embedding": [4, 2]})
    assert SizePlan({"t": []}).total_params() == 0


def test_input_is_copied():
    sizes = np.array([3, 3], np.int32)
    plan = SizePlan({"t": sizes})
    sizes[0] = 1
    assert plan["t"].tolist() == [3, 3]


@pytest.mark.parametrize(
    "tables, error, match",
    [
        ([1, 2], TypeError, r"SizePlan takes a mapping of layer name to sizes\. Received"),
        ({1: [1]}, TypeError, r"layer names must be non-empty strings: 1"),
        ({"": [1]}, TypeError, r"layer names must be non-empty strings: ''"),
        ({"t": [[1, 2]]}, ValueError, r"sizes for 't' must be a 1-D vector\. Received shape"),
        ({"t": [1.5, 2.0]}, TypeError, r"sizes for 't' must be integers\. Received dtype float"),
        ({"t": [2**40]}, ValueError, r"sizes for 't' do not fit in int32"),
        (
            {"x": [-1, 2]},
            ValueError,
            r"sizes for 'x' must be at least 1 \(every row keeps at least one coordinate\)\. "
            r"Received size -1 at row 0\.",
        ),
        ({"ok": [1], "x": [3, 2, 0]}, ValueError, r"sizes for 'x' .* Received size 0 at row 2"),
        ({"x": np.array([2, 2.5])}, TypeError, r"sizes for 'x' must be integers"),
    ],
)
def test_construction_errors(tables, error, match):
    with pytest.raises(error, match=match):
        SizePlan(tables)


def test_check_and_fits():
    budget = Budget(sparsity=0.5, d_max=8)  # 4 rows -> 16
    SizePlan({"a": [7, 7], "b": [1, 1]}).check(budget)  # exactly at the limit
    over = SizePlan({"a": [8, 8], "b": [8, 1]})
    with pytest.raises(BudgetExceededError, match=r"uses 25 usable parameters, 9 more than the"):
        over.check(budget)
    assert not over.fits(budget)
    with pytest.raises(ValueError, match=r"sizes of 'b' must lie in \[1, 8\]\. Received size 9"):
        SizePlan({"a": [1, 1], "b": [1, 9]}).check(budget)
    with pytest.raises(ValueError, match=r"sizes of 'a' must lie in \[2, 8\]\. Received size 1 at"):
        SizePlan({"a": [2, 1], "b": [2, 2]}).check(budget, min_size=2)
    assert SizePlan({"a": [2, 2], "b": [2, 2]}).fits(budget, min_size=2)


# Repair: hand-computed ----------------------------------------------------------------------------


def test_repair_returns_the_same_plan_when_it_fits():
    budget = Budget(sparsity=0.5, d_max=8)
    plan = SizePlan({"a": [1, 2], "b": [3, 4]})  # 10 <= 16: not filled up, unchanged
    assert plan.repair(budget) is plan
    assert plan.repair(budget, {"a": [0, 0], "b": [1, 1]}) is plan


def test_repair_cuts_lowest_priority_first():
    budget = Budget(max_params=20, d_max=8)
    plan = SizePlan({"users": [8, 8], "items": [8, 8]})  # 32, 12 over
    prio = {"users": [3.0, 0.0], "items": [2.0, 1.0]}
    out = plan.repair(budget, prio)
    # users[1] (priority 0) drops to 1 (7 cut), then items[1] (priority 1) loses the other 5.
    assert out == SizePlan({"users": [8, 1], "items": [8, 3]})
    assert out.total_params() == 20


def test_repair_hands_back_to_highest_priority():
    budget = Budget(max_params=20, d_max=8)
    plan = SizePlan({"users": [20, 1], "items": [1, 1]})  # 20 > d_max: clipped to 8 -> 11
    prio = {"users": [0.0, 1.0], "items": [3.0, 2.0]}
    out = plan.repair(budget, prio)
    # 9 spare: items[0] (priority 3) up to 8 (+7), then items[1] (priority 2) +2.
    assert out == SizePlan({"users": [8, 1], "items": [8, 3]})


def test_repair_without_priority_water_fills():
    budget = Budget(max_params=12, d_max=8)
    # 17 -> 12: one unit at a time from the largest row (ties: lower index first):
    # [8, 3, 6] -> [7, 3, 6] -> [6, 3, 6] -> [5, 3, 6] -> [5, 3, 5] -> [4, 3, 5]
    out = SizePlan({"a": [8, 3], "b": [6]}).repair(budget)
    assert out == SizePlan({"a": [4, 3], "b": [5]})
    out = SizePlan({"a": [1, 9], "b": [1]}).repair(budget)  # clip -> [1, 8, 1] = 10, +2
    assert out == SizePlan({"a": [2, 8], "b": [2]})
    # Raw sizes below 1 are no plan, but `repaired` makes one from them the same way.
    assert SizePlan.repaired({"a": [0, 9], "b": [-2]}, budget) == SizePlan({"a": [2, 8], "b": [2]})


def test_repair_respects_min_size_and_full_tables():
    out = SizePlan({"a": [8, 8, 8]}).repair(Budget(max_params=7, d_max=8), min_size=2)
    assert out["a"].tolist() == [2, 2, 3] and out["a"].min() >= 2
    # A budget above N * d_max leaves every row full.
    out = SizePlan({"a": [9, 1]}).repair(Budget(max_params=100, d_max=8))
    assert out["a"].tolist() == [8, 8]


def test_repair_errors():
    plan = SizePlan({"a": [8, 8], "b": [8]})
    with pytest.raises(
        BudgetInfeasibleError,
        match=r"min_size=2 for all 3 rows needs 6 parameters, more than the budget of 5",
    ):
        plan.repair(Budget(max_params=5, d_max=8), min_size=2)
    budget = Budget(max_params=10, d_max=8)
    with pytest.raises(ValueError, match=r"`min_size` must be an integer in \[1, d_max=8\]\. Rec"):
        plan.repair(budget, min_size=0)
    with pytest.raises(ValueError, match=r"Received: min_size=9"):
        plan.repair(budget, min_size=9)
    with pytest.raises(KeyError, match=r"`priority` has no entry for layer 'b'"):
        plan.repair(budget, {"a": [1, 2]})
    with pytest.raises(ValueError, match=r"`priority\['a'\]` must have shape \(2,\)\. Received"):
        plan.repair(budget, {"a": [1, 2, 3], "b": [1]})
    with pytest.raises(ValueError, match=r"`priority\['b'\]` contains NaN or infinite values"):
        plan.repair(budget, {"a": [1, 2], "b": [np.nan]})
    # priority is validated even when the plan already fits
    with pytest.raises(KeyError, match="no entry for layer 'b'"):
        SizePlan({"a": [1, 1], "b": [1]}).repair(budget, {"a": [1, 2]})


# Repair: property test ----------------------------------------------------------------------------


@st.composite
def plans_and_budgets(draw):
    d_max = draw(st.integers(1, 24))
    num_tables = draw(st.integers(1, 3))
    tables = {}
    for t in range(num_tables):
        n = draw(st.integers(0, 25))
        tables[f"table_{t}"] = draw(st.lists(st.integers(-3, d_max + 5), min_size=n, max_size=n))
    rows = sum(len(v) for v in tables.values())
    if draw(st.booleans()):
        budget = Budget(sparsity=draw(st.floats(0.01, 0.99)), d_max=d_max)
    else:
        budget = Budget(max_params=draw(st.integers(1, max(1, rows * d_max + 10))), d_max=d_max)
    priority = None
    if draw(st.booleans()):
        priority = {
            k: draw(st.lists(st.integers(-3, 3), min_size=len(v), max_size=len(v)))
            for k, v in tables.items()
        }
    min_size = draw(st.integers(1, min(3, d_max)))
    return tables, budget, priority, min_size


@settings(max_examples=1200, deadline=None)
@given(case=plans_and_budgets())
def test_repair_property(case):
    raw, budget, priority, min_size = case
    valid = all(min(v, default=1) >= 1 for v in raw.values())
    plan = SizePlan(raw) if valid else SizePlan.__new__(SizePlan)  # a draft, for the checks
    if not valid:
        with pytest.raises(ValueError, match="must be at least 1"):
            SizePlan(raw)
        plan._tables = {k: np.asarray(v, np.int32) for k, v in raw.items()}
    rows = plan.num_rows()
    limit = budget.max_params_for(rows)
    if min_size * rows > limit:
        with pytest.raises(BudgetInfeasibleError):
            SizePlan.repaired(raw, budget, priority, min_size=min_size)
        return
    fitted = plan.fits(budget, min_size=min_size)
    out = SizePlan.repaired(raw, budget, priority, min_size=min_size)
    if valid:  # `repair` of a plan and `repaired` of its sizes agree
        repaired = plan.repair(budget, priority, min_size=min_size)
        assert repaired == out
        if fitted:
            assert repaired is plan  # a plan that already fits is returned unchanged
    # names, lengths and the guarantee
    assert list(out) == list(plan)
    assert [len(v) for v in out.values()] == [len(v) for v in plan.values()]
    assert out.total_params() <= limit
    assert out.fits(budget, min_size=min_size)
    for v in out.values():
        assert v.size == 0 or (v.min() >= min_size and v.max() <= budget.d_max)
    if fitted:
        assert out == plan  # sizes that already fit are kept
        return
    # otherwise the budget is used up, or every row is full
    assert out.total_params() == min(limit, rows * budget.d_max)
    if priority is not None:
        clipped = np.clip(np.concatenate(list(plan.values())), min_size, budget.d_max)
        got = np.concatenate(list(out.values()))
        prio = np.concatenate([np.asarray(priority[k], float) for k in plan])
        for r in np.flatnonzero(got < clipped):  # cut rows: lower priorities are at min_size
            assert np.all(got[prio < prio[r]] == min_size)
        for r in np.flatnonzero(got > clipped):  # filled rows: higher priorities are full
            assert np.all(got[prio > prio[r]] == budget.d_max)


# Persistence -------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".json", ".npz"])
def test_save_load_round_trip(tmp_path, suffix):
    plan = SizePlan({"user_embedding": [4, 2, 128], "item_embedding": [1], "empty": []})
    path = tmp_path / f"plan{suffix}"
    plan.save(path)
    loaded = SizePlan.load(path)
    assert loaded == plan
    assert all(v.dtype == np.int32 for v in loaded.values())
    assert list(loaded) == list(plan)
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temp files left
    plan.save(str(path))  # overwrite, str path
    assert SizePlan.load(str(path)) == plan


def test_json_format_and_dict_round_trip(tmp_path):
    plan = SizePlan({"a": [3, 1]})
    assert plan.to_dict() == {"format": "tfembsize.SizePlan", "version": 1, "tables": {"a": [3, 1]}}
    assert SizePlan.from_dict(json.loads(json.dumps(plan.to_dict()))) == plan
    with pytest.raises(ValueError, match=r"Not a serialised SizePlan \(format='other'\)"):
        SizePlan.from_dict({"format": "other", "tables": {}})


def test_persistence_errors(tmp_path):
    with pytest.raises(ValueError, match=r"SizePlan files end in \.json or \.npz\. Received path="):
        SizePlan({"a": [1]}).save(tmp_path / "plan.pkl")
    bad = tmp_path / "bad.npz"
    np.savez(bad, weights=np.ones(3))
    with pytest.raises(StateFileError, match=r"size plan '.*bad\.npz' holds no tables"):
        SizePlan.load(bad)
    cut = tmp_path / "cut.json"
    cut.write_text('{"format": "tfembsize.SizePlan", "tab')
    with pytest.raises(StateFileError, match=r"size plan '.*cut\.json' is not valid JSON"):
        SizePlan.load(cut)
    zipless = tmp_path / "zipless.npz"
    zipless.write_bytes(b"PK not really")
    with pytest.raises(StateFileError, match=r"'.*zipless\.npz' is not an \.npz archive"):
        SizePlan.load(zipless)
    with pytest.raises(StateFileError, match=r"size plan '.*missing\.json' does not exist"):
        SizePlan.load(tmp_path / "missing.json")
    obj = tmp_path / "obj.npz"
    np.savez(obj, **{"table:a": np.array([{"x": 1}], dtype=object)})
    with pytest.raises(ValueError, match="allow_pickle"):  # never unpickles
        SizePlan.load(obj)


def test_a_saved_plan_with_invalid_or_edited_sizes_is_refused(tmp_path):
    # A file written before plans were checked on construction (and before checksums).
    old = tmp_path / "old.json"
    old.write_text(
        json.dumps({"format": "tfembsize.SizePlan", "version": 1, "tables": {"x": [-1, 2]}})
    )
    with pytest.raises(
        StateFileError,
        match=r"size plan '.*old\.json' is not a valid plan: .*'x'.*size -1 at row 0",
    ):
        SizePlan.load(old)
    old_npz = tmp_path / "old.npz"
    np.savez(old_npz, **{"table:x": np.array([3, 0])})
    with pytest.raises(StateFileError, match=r"old\.npz' is not a valid plan: .*size 0 at row 1"):
        SizePlan.load(old_npz)
    # A plan saved now carries a checksum: an edited size is detected.
    path = tmp_path / "plan.json"
    SizePlan({"x": [3, 2]}).save(path)
    raw = json.loads(path.read_text())
    raw["tables"]["x"][0] = 8
    path.write_text(json.dumps(raw))
    with pytest.raises(StateFileError, match=r"plan\.json' does not match its checksum.*Save the"):
        SizePlan.load(path)


# Models ------------------------------------------------------------------------------------------


class Tower(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.items = MaskedEmbedding(5, 4, name="item_embedding")
        self.dense = keras.layers.Dense(2)

    def call(self, ids):
        return self.dense(self.items(ids))


class TwoTower(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.users = MaskedEmbedding(3, 4, name="user_embedding")
        self.tower = Tower(name="item_tower")
        self.plain = keras.layers.Embedding(3, 4, name="plain")

    def call(self, inputs):
        u, i = inputs
        return self.users(u) + self.tower(i)[..., :1] + self.plain(u)


def test_apply_and_from_model_on_nested_model():
    model = TwoTower()
    model((tf.constant([0, 1]), tf.constant([2, 4])))
    assert sorted(find_searchable_layers(model)) == ["item_embedding", "user_embedding"]
    assert len(iter_layers(model)) == len({id(x) for x in iter_layers(model)})
    plan = SizePlan({"user_embedding": [1, 2, 3], "item_embedding": [4, 3, 2, 1, 1]})
    plan.apply(model)
    assert model.users.sizes.tolist() == [1, 2, 3]
    assert model.tower.items.sizes.tolist() == [4, 3, 2, 1, 1]
    assert SizePlan.from_model(model) == plan
    # a partial plan only touches its layers
    SizePlan({"user_embedding": [4, 4, 4]}).apply(model)
    assert SizePlan.from_model(model)["item_embedding"].tolist() == [4, 3, 2, 1, 1]


def test_apply_works_before_the_model_is_built():
    model = TwoTower()
    SizePlan({"user_embedding": [1, 2, 3]}).apply(model)
    out = model((tf.constant([1]), tf.constant([0])))
    assert out.shape == (1, 4)
    assert model.users.sizes.tolist() == [1, 2, 3]


def test_apply_errors_and_atomicity():
    model = TwoTower()
    with pytest.raises(KeyError, match=r"names \['nope'\] are not searchable layers of the mod"):
        SizePlan({"nope": [1]}).apply(model)
    with pytest.raises(
        ValueError, match=r"'item_embedding' has 4 sizes but the layer has input_dim=5"
    ):
        SizePlan({"item_embedding": [1, 1, 1, 1]}).apply(model)
    # d_max is the layer's: a size over it is refused at apply, naming table, row and size.
    with pytest.raises(
        ValueError,
        match=r"Layer 'item_embedding': sizes must lie in \[min_size=1, output_dim=4\]\. "
        r"Received size 5 at row 4\.",
    ):
        SizePlan({"user_embedding": [1, 1, 1], "item_embedding": [1, 1, 1, 1, 5]}).apply(model)
    assert model.users.sizes.tolist() == [4, 4, 4]  # nothing was applied


def test_apply_is_all_or_nothing_with_budgets():
    inp = keras.Input(shape=(), dtype="int32")
    a = MaskedEmbedding(4, 4, name="a")
    b = BudgetedEmbedding(4, 4, max_params=8, name="b")
    model = keras.Model(inp, a(inp) + b(inp))
    before = b.sizes.copy()
    with pytest.raises(BudgetExceededError, match=r"uses 16 usable parameters, 8 more than"):
        SizePlan({"a": [1, 1, 1, 1], "b": [4, 4, 4, 4]}).apply(model)
    assert a.sizes.tolist() == [4, 4, 4, 4]
    assert b.sizes.tolist() == before.tolist()


def test_duplicate_searchable_names_are_rejected():
    inp = keras.Input(shape=(), dtype="int32")
    a = MaskedEmbedding(4, 2, name="same")
    inner = keras.Sequential([MaskedEmbedding(4, 2, name="same")], name="inner")
    model = keras.Model(inp, a(inp) + inner(inp))
    with pytest.raises(ValueError, match=r"Two searchable layers are named 'same'"):
        find_searchable_layers(model)


def test_scaled_to_grows_or_shrinks_by_one_factor_within_the_budget():
    plan = SizePlan({"users": [1, 2], "items": [4]})
    # factor just under 3: floor([2.9, 5.8, 11.6]) clipped to 8 -> [2, 5, 8] = 15 (3 gives
    # 17); the one unit left goes to the largest row with room: the user of size 2
    scaled = plan.scaled_to(Budget(max_params=16, d_max=8))
    assert scaled.to_dict()["tables"] == {"users": [2, 6], "items": [8]}
    # equal rows stay equal (also across tables), the order of sizes is kept
    shared = SizePlan({"u1": [3, 1, 3], "u2": [3, 1, 3], "i": [2, 2]})
    big = shared.scaled_to(Budget(sparsity=0.5, d_max=16))
    assert big["u1"].tolist() == big["u2"].tolist()
    assert big["u1"][0] == big["u1"][2] > big["u1"][1] and big["i"][0] == big["i"][1]
    assert big.total_params() == Budget(sparsity=0.5, d_max=16).max_params_for(8) == 64
    # over its budget: shrinks; everything at d_max when the budget allows the full plan
    small = SizePlan({"t": [8, 8, 4]}).scaled_to(Budget(max_params=10, d_max=8))
    assert small["t"].tolist() == [4, 4, 2]
    assert SizePlan({"t": [1, 2]}).scaled_to(Budget(max_params=100, d_max=8))["t"].tolist() == [
        8,
        8,
    ]
    with pytest.raises(BudgetInfeasibleError, match="Size 1 for all 3 rows needs 3"):
        SizePlan({"t": [1, 1, 1]}).scaled_to(Budget(max_params=2, d_max=8))


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.integers(1, 32), min_size=1, max_size=40),
    st.floats(0.05, 0.95),
)
def test_scaled_to_is_within_budget_and_keeps_the_order(sizes, sparsity):
    budget = Budget(sparsity=sparsity, d_max=32)
    plan = SizePlan({"t": sizes})
    if len(sizes) > budget.max_params_for(len(sizes)):
        return
    scaled = plan.scaled_to(budget)["t"]
    limit = budget.max_params_for(len(sizes))
    assert scaled.sum() == min(limit, 32 * len(sizes))  # the budget is spent
    d = np.asarray(sizes)
    smaller = d[:, None] < d[None, :]
    assert np.all((scaled[:, None] <= scaled[None, :])[smaller])  # order kept
    equal = d[:, None] == d[None, :]
    assert np.all(np.abs(scaled[:, None] - scaled[None, :])[equal] <= 1)
