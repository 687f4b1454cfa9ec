import json
import math

import numpy as np
import pytest

from tfembsize.plan import SizePlan
from tfembsize.search import Feedback, Observation, StepRecord


def _feedback(**kw):
    base = dict(
        quality=0.25,
        user_quality=[0.1, 0.4],
        item_quality=[0.3, 0.0, 0.2],
        usable_params=40,
        wall_time=1.5,
        quality_ratio=0.8,
        user_quality_ratio=[0.5, 1.0],
        item_quality_ratio=[1.0, 0.0, 0.25],
        metrics={"recall@20": 0.3, "ndcg@20": 0.2},
        mode="snapshot",
        train_steps=100,
        best_step=60,
        loss=0.69,
        info={"note": "x", "nested": {"a": [1, 2]}},
    )
    base.update(kw)
    return Feedback(**base)


def test_feedback_dict_round_trip_is_exact():
    fb = _feedback()
    d = json.loads(json.dumps(fb.to_dict()))
    back = Feedback.from_dict(d)
    assert back == fb
    assert back.user_quality.dtype == np.float32
    np.testing.assert_array_equal(back.item_quality_ratio, [1.0, 0.0, 0.25])
    assert back.metrics == {"recall@20": 0.3, "ndcg@20": 0.2}
    assert back.info == {"note": "x", "nested": {"a": [1, 2]}}


@pytest.mark.parametrize("suffix", [".json", ".npz"])
def test_feedback_file_round_trip(tmp_path, suffix):
    fb = _feedback()
    path = tmp_path / f"fb{suffix}"
    fb.save(path)
    assert Feedback.load(path) == fb


def test_feedback_without_arrays_and_side_arrays():
    fb = _feedback()
    scalars = fb.to_dict(arrays=False)
    assert "arrays" not in scalars
    assert Feedback.from_dict(scalars, fb.arrays()) == fb
    assert Feedback.from_dict(scalars).user_quality is None


def test_failed_feedback_round_trips_nan_quality(tmp_path):
    fb = Feedback.failed(
        "loss became NaN at step 3", usable_params=7, wall_time=0.5, mode="scratch"
    )
    assert not fb.ok and math.isnan(fb.quality)
    text = json.dumps(fb.to_dict(), allow_nan=False)  # strict JSON: NaN stored as a string
    back = Feedback.from_dict(json.loads(text))
    assert back == fb and math.isnan(back.quality)
    assert back.message == "loss became NaN at step 3"
    fb.save(tmp_path / "f.npz")
    assert Feedback.load(tmp_path / "f.npz") == fb


def test_feedback_arrays_are_read_only_copies():
    src = np.array([0.1, 0.2], np.float32)
    fb = Feedback(quality=0.1, user_quality=src, item_quality=[0.0])
    src[0] = 9.0
    assert fb.user_quality[0] == pytest.approx(0.1)
    with pytest.raises(ValueError):
        fb.user_quality[0] = 1.0


def test_feedback_validation_messages():
    with pytest.raises(ValueError, match=r"`status` must be one of .*Received: status='bad'"):
        Feedback(status="bad", quality=0.1)
    with pytest.raises(ValueError, match="An ok Feedback needs a finite `quality`"):
        Feedback(quality=float("nan"))
    with pytest.raises(ValueError, match="needs a `message`"):
        Feedback(status="failed")
    with pytest.raises(ValueError, match=r"`mode` must be one of .*Received: mode='warm'"):
        Feedback(quality=0.1, mode="warm")
    with pytest.raises(ValueError, match="`user_quality` of an ok Feedback contains NaN"):
        Feedback(quality=0.1, user_quality=[np.nan])
    with pytest.raises(ValueError, match=r"`usable_params` must be a non-negative integer"):
        Feedback(quality=0.1, usable_params=-1)
    with pytest.raises(ValueError, match="must be a 1-D array"):
        Feedback(quality=0.1, user_quality=[[0.1]])
    with pytest.raises(TypeError, match=r"`info\[.x.\]` must hold JSON values"):
        Feedback(quality=0.1, info={"x": object()})


def test_feedback_mean_entity_ratio_is_mean_over_users_and_items():
    fb = _feedback()
    assert fb.mean_entity_ratio() == pytest.approx((0.5 + 1.0 + 1.0 + 0.0 + 0.25) / 5)
    assert Feedback(quality=0.1).mean_entity_ratio() is None


def test_feedback_equality_and_replace():
    fb = _feedback()
    assert fb == _feedback()
    assert fb != _feedback(user_quality=[0.1, 0.5])
    assert fb.replace(quality=0.3).quality == 0.3
    assert fb.replace(quality=0.3) != fb


def _obs(**kw):
    base = dict(
        tables={"user_embedding": "user", "item_embedding": "item"},
        user_frequencies=[3, 1],
        item_frequencies=[2, 2, 0],
        d_max=8,
    )
    base.update(kw)
    return Observation(**base)


def test_observation_builds_plans_for_every_table_of_a_side():
    obs = _obs(
        tables={"u": "user", "i": "item", "u_mlp": "user", "i_mlp": "item"},
    )
    plan = obs.plan_from_sizes([8, 2], [4, 4, 1])
    assert set(plan) == {"u", "i", "u_mlp", "i_mlp"}
    np.testing.assert_array_equal(plan["u_mlp"], [8, 2])
    assert plan.total_params() == 2 * (10 + 9)
    assert obs.num_rows == 2 * (2 + 3)
    assert obs.user_tables == ["u", "u_mlp"]
    u, i = obs.sizes_from_plan(plan)
    np.testing.assert_array_equal(i, [4, 4, 1])
    assert obs.full_plan().total_params() == 8 * 10


def test_observation_round_trip_and_errors():
    obs = _obs(
        iteration=3,
        plan=SizePlan({"user_embedding": [1, 2], "item_embedding": [3, 4, 5]}),
        feedback=_feedback(),
        reference=Feedback(quality=0.5, user_quality=[0.5, 0.5], item_quality=[0.1, 0.2, 0.3]),
    )
    back = Observation.from_dict(json.loads(json.dumps(obs.to_dict())))
    assert back == obs
    assert back.replace(iteration=4) != obs
    with pytest.raises(ValueError, match=r"`user_sizes` must have shape \(2,\)"):
        obs.plan_from_sizes([1, 2, 3], [1, 1, 1])
    with pytest.raises(ValueError, match=r"`tables\['x'\]` must be 'user' or 'item'"):
        _obs(tables={"x": "feature", "u": "user"})
    with pytest.raises(ValueError, match="`tables` has no item table"):
        _obs(tables={"u": "user"})
    with pytest.raises(ValueError, match="`d_max` must be a positive integer"):
        _obs(d_max=0)


def test_step_record_equality():
    plan = SizePlan({"a": [1, 2]})
    a = StepRecord(0, plan, "scratch", _feedback(), {"sparsity": 0.9})
    b = StepRecord(0, SizePlan({"a": [1, 2]}), "scratch", _feedback(), {"sparsity": 0.9})
    assert a == b
    assert a != StepRecord(1, plan, "scratch", _feedback(), {"sparsity": 0.9})
