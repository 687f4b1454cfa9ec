"""BudgetedEmbedding: allocations, the budget guarantee, errors, config, save/load."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from tfembsize import Budget, BudgetExceededError, BudgetInfeasibleError
from tfembsize._keras import is_legacy_keras, keras
from tfembsize.layers import BudgetedEmbedding, MaskedEmbedding


def power_law(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.floor(rng.pareto(1.2, size=n) * 5).astype(np.int64)


# Allocations --------------------------------------------------------------------------------------


def test_uniform_is_the_largest_equal_size():
    layer = BudgetedEmbedding(1000, 128, sparsity=0.9, name="b")
    assert layer.max_params == 12_800  # floor(0.1 * 128 * 1000)
    assert layer.sizes.tolist() == [12] * 1000
    assert layer.usable_params() == 12_000
    layer = BudgetedEmbedding(10, 8, max_params=37)
    assert layer.sizes.tolist() == [3] * 10  # 4 * 10 = 40 > 37
    layer = BudgetedEmbedding(10, 8, max_params=1000)
    assert layer.sizes.tolist() == [8] * 10  # never above output_dim
    assert isinstance(layer, MaskedEmbedding)
    assert layer._tfembsize_searchable


@pytest.mark.parametrize("allocation", ["uniform", "random", "frequency"])
@pytest.mark.parametrize("sparsity", [0.5, 0.8, 0.9, 0.95])
def test_every_allocation_meets_the_budget_for_many_seeds(allocation, sparsity):
    for seed in range(25):
        n = 50 + 37 * seed
        freq = power_law(n, seed)
        layer = BudgetedEmbedding(
            n, 64, sparsity=sparsity, allocation=allocation, frequencies=freq, seed=seed
        )
        sizes = layer.initial_sizes()
        limit = Budget(sparsity=sparsity, d_max=64).max_params_for(n)
        assert layer.max_params == limit
        assert sizes.dtype == np.int32 and sizes.shape == (n,)
        assert int(sizes.sum()) <= limit
        assert sizes.min() >= 1 and sizes.max() <= 64
        if allocation != "uniform":  # the whole budget is handed out
            assert int(sizes.sum()) == limit


def test_random_allocation_is_seeded_and_varied():
    a = BudgetedEmbedding(500, 32, sparsity=0.8, allocation="random", seed=7).sizes
    b = BudgetedEmbedding(500, 32, sparsity=0.8, allocation="random", seed=7).sizes
    c = BudgetedEmbedding(500, 32, sparsity=0.8, allocation="random", seed=8).sizes
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert len(np.unique(a)) > 5  # really random sizes, not a few levels
    assert a.max() > 2 * a.min()


def test_random_allocation_with_a_loose_budget_fills_rows():
    layer = BudgetedEmbedding(20, 8, max_params=10_000, allocation="random", seed=0)
    assert layer.sizes.tolist() == [8] * 20


def test_frequency_allocation_is_monotone_in_frequency():
    for seed in range(20):
        n = 300
        freq = power_law(n, seed)
        layer = BudgetedEmbedding(
            n, 32, sparsity=0.9, allocation="frequency", frequencies=freq, min_size=2
        )
        sizes = layer.sizes
        assert sizes.min() >= 2 and int(sizes.sum()) == layer.max_params
        order = np.argsort(freq, kind="stable")
        f, s = freq[order], sizes[order]
        higher = f[1:] > f[:-1]
        assert np.all(s[1:][higher] >= s[:-1][higher])  # more frequent -> never smaller
        assert sizes[np.argmax(freq)] == sizes.max()


def test_frequency_allocation_hand_computed():
    # B = floor(0.5 * 4 * 4) = 8; floor(8 * [0, 1, 3, 4] / 8) = [0, 1, 3, 4]; clipping to >= 1
    # gives [1, 1, 3, 4] = 9, so 1 is cut from the least frequent row above the floor (row 2).
    layer = BudgetedEmbedding(4, 4, sparsity=0.5, allocation="frequency", frequencies=[0, 1, 3, 4])
    assert layer.sizes.tolist() == [1, 1, 2, 4]
    # B = 12: floor(12 * [1, 1, 6] / 8) = [1, 1, 9] -> clip [1, 1, 4] = 6; the 6 left go to the
    # most frequent rows first: row 2 is full, so rows 0 and 1 (ties by index) get 3 and 3.
    layer = BudgetedEmbedding(3, 4, max_params=12, allocation="frequency", frequencies=[1, 1, 6])
    assert layer.sizes.tolist() == [4, 4, 4]
    layer = BudgetedEmbedding(3, 4, max_params=9, allocation="frequency", frequencies=[1, 1, 6])
    # floor(9 * [1, 1, 6] / 8) = [1, 1, 6] -> [1, 1, 4] = 6; 3 left: row 0 gets 3 (ties by index)
    assert layer.sizes.tolist() == [4, 1, 4]


# assign_sizes -------------------------------------------------------------------------------------


def test_assign_sizes_rejects_over_budget_naming_the_excess():
    layer = BudgetedEmbedding(10, 8, max_params=37, name="b")
    before = layer.sizes
    with pytest.raises(BudgetExceededError) as info:
        layer.assign_sizes([8] * 5 + [1] * 5)  # 45
    assert str(info.value) == (
        "The size vector of 'b' uses 45 usable parameters, 8 more than the budget of 37 "
        "(max_params=37, d_max=8, 10 rows)."
    )
    assert info.value.excess == 8
    np.testing.assert_array_equal(layer.sizes, before)  # unchanged
    layer.assign_sizes([8, 8, 8, 7, 1, 1, 1, 1, 1, 1])  # exactly 37 is fine
    assert layer.usable_params() == 37
    # range errors come before the budget check
    with pytest.raises(ValueError, match=r"Layer 'b': sizes must lie in \[min_size=1, output_dim"):
        layer.assign_sizes([9] + [1] * 9)


def test_assign_sizes_with_repair():
    layer = BudgetedEmbedding(10, 8, sparsity=0.5, name="b")  # B = 40
    layer.assign_sizes([8] * 10, repair=True)
    assert layer.usable_params() == 40
    assert layer.sizes.tolist() == [4] * 10  # the largest rows are cut first: all equal
    layer.assign_sizes([8, 8, 1, 1, 1, 1, 1, 1, 1, 1], repair=True)  # fits: unchanged
    assert layer.sizes.tolist() == [8, 8, 1, 1, 1, 1, 1, 1, 1, 1]
    layer.assign_sizes([0] * 10, repair=True)  # out of bounds: clipped, then filled to B
    assert layer.usable_params() == 40 and layer.sizes.min() >= 1
    with pytest.raises(TypeError, match=r"Layer 'b': sizes must be integers\. Received dtype"):
        layer.assign_sizes([4.0] * 10, repair=True)


def test_sizes_stay_within_budget_under_plan_apply():
    from tfembsize import SizePlan

    layer = BudgetedEmbedding(6, 4, sparsity=0.5, name="items")  # B = 12
    inp = keras.Input(shape=(), dtype="int32")
    model = keras.Model(inp, layer(inp))
    SizePlan({"items": [4, 4, 1, 1, 1, 1]}).apply(model)
    assert layer.usable_params() == 12
    with pytest.raises(BudgetExceededError, match="1 more than the budget of 12"):
        SizePlan({"items": [4, 4, 2, 1, 1, 1]}).apply(model)
    plan = SizePlan({"items": [4, 4, 4, 4, 4, 4]}).repair(layer.budget)
    plan.apply(model)
    assert layer.usable_params() == 12


# Errors -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (
            {"sparsity": 1.3},
            ValueError,
            r"`sparsity` must be in \(0, 1\)\. Received: sparsity=1\.3",
        ),
        ({}, ValueError, r"exactly one of `sparsity` or `max_params`"),
        ({"sparsity": 0.5, "max_params": 5}, ValueError, r"exactly one of `sparsity` or `max_p"),
        ({"max_params": 0}, ValueError, r"`max_params` must be a positive integer\. Received: m"),
        ({"max_params": 2.5}, ValueError, r"Received: max_params=2\.5"),
        (
            {"sparsity": 0.5, "allocation": "greedy"},
            ValueError,
            r"`allocation` must be one of \('uniform', 'random', 'frequency'\)\. Received: "
            r"allocation='greedy'",
        ),
        (
            {"sparsity": 0.5, "allocation": "frequency"},
            ValueError,
            r'`allocation="frequency"` needs `frequencies`\. Received None\.',
        ),
        (
            {"sparsity": 0.5, "frequencies": [1, 2, 3]},
            ValueError,
            r"`frequencies` must have shape \(10,\)\. Received shape \(3,\)\.",
        ),
        (
            {"sparsity": 0.5, "frequencies": [1] * 9 + [-2]},
            ValueError,
            r"`frequencies` must be finite and non-negative\. Received frequencies\[9\]=-2\.0\.",
        ),
        (
            {"sparsity": 0.5, "frequencies": [1, np.nan] + [1] * 8},
            ValueError,
            r"Received frequencies\[1\]=nan\.",
        ),
        ({"sparsity": 0.5, "seed": "7"}, ValueError, r"`seed` must be an integer or None\. Rec"),
        ({"sparsity": 0.5, "seed": 1.0}, ValueError, r"Received: seed=1\.0"),
        (
            {"sparsity": 0.95, "min_size": 1},
            BudgetInfeasibleError,
            r"Layer 'b': min_size=1 for 10 rows needs 10 parameters, more than the budget of 4 "
            r"\(sparsity=0\.95, d_max=8\)\.",
        ),
        ({"sparsity": 0.5, "min_size": 9}, ValueError, r"`min_size` must be an integer in \[1, o"),
    ],
)
def test_constructor_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        BudgetedEmbedding(10, 8, name="b", **kwargs)


# Config and persistence ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"sparsity": 0.9},
        {"max_params": 50, "allocation": "random", "seed": 3},
        {"sparsity": 0.8, "allocation": "frequency", "frequencies": list(range(20)), "min_size": 2},
    ],
)
def test_config_round_trip(kwargs):
    layer = BudgetedEmbedding(20, 16, name="b", **kwargs)
    config = layer.get_config()
    own = {"sparsity", "max_params", "allocation", "frequencies", "seed"}
    masked = set(MaskedEmbedding(2, 2).get_config())
    assert set(config) == own | masked
    for key, value in kwargs.items():
        assert config[key] == value
    assert config["input_dim"] == 20 and config["output_dim"] == 16
    clone = BudgetedEmbedding.from_config(config)
    assert clone.get_config() == config
    assert clone.budget == layer.budget
    np.testing.assert_array_equal(clone.sizes, layer.sizes)  # seeded: same allocation
    assert keras.utils.get_registered_name(BudgetedEmbedding) == "tfembsize>BudgetedEmbedding"


def _formats():
    return ["savedmodel", ".h5", ".keras"] if is_legacy_keras() else [".keras"]


@pytest.mark.filterwarnings("ignore:You are saving your model as an HDF5 file")
@pytest.mark.parametrize("fmt", _formats())
def test_save_load_keeps_sizes_and_budget(tmp_path, fmt):
    freq = power_law(30, 0)
    layer = BudgetedEmbedding(
        30, 8, sparsity=0.75, allocation="frequency", frequencies=freq, name="items"
    )
    inp = keras.Input(shape=(3,), dtype="int32")
    model = keras.Model(inp, layer(inp))
    sizes = np.arange(30) % 3 + 1  # 60 = B
    layer.assign_sizes(sizes)
    x = np.array([[0, 1, 2], [27, 28, 29]], dtype=np.int32)
    expected = model.predict(x, verbose=0)
    path = str(tmp_path / ("model" if fmt == "savedmodel" else f"model{fmt}"))
    model.save(path)
    keras.backend.clear_session()
    loaded = keras.models.load_model(path)
    new = loaded.get_layer("items")
    assert isinstance(new, BudgetedEmbedding)
    np.testing.assert_array_equal(new.sizes, sizes)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), expected)
    assert new.budget == layer.budget and new.max_params == 60
    with pytest.raises(BudgetExceededError):
        new.assign_sizes(np.full(30, 8))


def test_checkpoint_round_trip(tmp_path):
    layer = BudgetedEmbedding(12, 4, sparsity=0.5, allocation="random", seed=1)
    layer.assign_sizes([3, 1] * 6)
    path = tf.train.Checkpoint(layer=layer).save(str(tmp_path / "ckpt"))
    other = BudgetedEmbedding(12, 4, sparsity=0.5)
    other.build(None)
    tf.train.Checkpoint(layer=other).restore(path).assert_consumed()
    assert other.sizes.tolist() == [3, 1] * 6
    np.testing.assert_array_equal(other.embeddings.numpy(), layer.embeddings.numpy())
