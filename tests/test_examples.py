"""The examples run end to end (in the same Keras mode as the test run), at small settings."""

from __future__ import annotations

import importlib
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from tfembsize._keras import is_legacy_keras

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_quickstart_runs(tmp_path):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "quickstart.py")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "after repair: 38,400 usable params <= budget 38,400" in out
    assert "rejected: The size vector of 'budgeted' uses 256000 usable parameters" in out
    assert "repaired: 25600 <= 25600" in out
    assert "sizes survive save/load: True" in out
    assert list(tmp_path.iterdir()) == []  # writes only to temporary directories


@pytest.mark.slow
def test_demo_searches_retrains_and_exports(tmp_path):
    """`make demo`: BET search -> retraining within budget -> compressed SavedModel."""
    sys.path.insert(0, str(EXAMPLES))
    try:
        import demo
    finally:
        sys.path.remove(str(EXAMPLES))
    out = demo.main(str(tmp_path / "demo"))
    assert out["usable_params"] <= out["budget"] == 44_800
    # Both sized models learn more than item popularity.
    assert out["bet_recall"] > out["popularity_recall"]
    assert out["es_recall"] > out["popularity_recall"]
    assert (Path(out["export"]) / "saved_model.pb").is_file()
    assert out["top_items"].shape == (3, 10)


def _example(name: str):
    """Imports ``examples/<name>.py`` as a module (its ``main(argv)`` runs the example)."""
    sys.path.insert(0, str(EXAMPLES))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(EXAMPLES))


@pytest.mark.skipif(not is_legacy_keras(), reason="TensorFlow Recommenders needs tf-keras")
def test_tfrs_retrieval_example_searches_exports_and_serves(tmp_path):
    out = _example("tfrs_retrieval").main(["--small", "--output", str(tmp_path)])
    # N counts every table row: 60 users and 90 movies, each lookup's OOV row included.
    assert out["num_rows"] == (60 + 1) + (90 + 1)
    assert out["usable_params"] <= out["budget"] == int(0.1 * 32 * out["num_rows"])
    assert out["steps"] == 3 and 0 < out["reference_quality"] <= 1
    assert (Path(out["export"]) / "saved_model.pb").is_file()
    # The export serves what the model ranks: top-5 of every movie for users "1" and "10".
    model, top = out["model"], out["top_items"]
    titles = np.asarray(model.movie_model.layers[0].get_vocabulary()[1:])
    scores = model.user_model(tf.constant(["1", "10"])) @ tf.transpose(model.movie_model(titles))
    expected = titles[np.argsort(-scores.numpy(), axis=1, kind="stable")[:, :5]]
    np.testing.assert_array_equal(np.vectorize(bytes.decode)(top), expected)


def test_keras3_fit_example_searches_saves_and_loads(tmp_path):
    out = _example("keras3_fit").main(["--small", "--output", str(tmp_path)])
    assert out["num_rows"] == (80 + 1) + (120 + 1)
    assert out["usable_params"] <= out["budget"] == int(0.1 * 32 * out["num_rows"])
    assert out["steps"] == 3 and out["reference_quality"] > 0
    assert out["same_scores"] and out["same_sizes"]
    assert Path(out["path"]).is_file()


def test_custom_loop_example_runs_bet_and_es():
    out = _example("custom_loop").main(["--small"])
    for name in ("bet", "es"):
        fb = out[name]
        assert fb.ok and fb.usable_params <= out["budget"]
        assert fb.user_quality_ratio is not None  # per-entity ratios: CIESS could use them


@pytest.mark.slow
def test_tfrs_retrieval_example_on_ml_100k(tmp_path, data_dir):
    if not is_legacy_keras():
        pytest.skip("TensorFlow Recommenders needs tf-keras")
    argv = ["--data-dir", str(data_dir), "--output", str(tmp_path), "--method", "es"]
    out = _example("tfrs_retrieval").main(argv)
    assert out["num_rows"] == (943 + 1) + (1664 + 1)  # ML-100K has 1,664 distinct titles
    assert out["usable_params"] <= out["budget"]
    assert out["test"] > 0.05  # top-100 accuracy of the sized model


def test_pep_ctr_example_prunes_retrains_the_ticket_exports_and_serves(tmp_path, data_dir):
    out = _example("pep_ctr").main(
        ["--small", "--data-dir", str(data_dir), "--output", str(tmp_path)]
    )
    assert out["source"] == "criteo_sample"
    # 39 fields (13 bucketed integers, 26 hashed categories), each with an unseen-value row.
    assert out["num_features"] > 39
    full = out["num_features"] * out["dim"]
    # Every target was captured under its budget, so the most pruned one was retrained.
    assert set(out["captures"]) == {0.5, 0.8} and out["missed"] == ()
    for c, capture in out["captures"].items():
        assert capture.usable_params <= capture.limit == int((1 - c) * full)
    assert out["captures"][0.5].step <= out["captures"][0.8].step
    assert out["reached_sparsity"] >= 0.8
    assert out["ticket_sparsity"] == 0.8
    assert out["ticket_params"] == out["captures"][0.8].usable_params <= out["budget"]
    assert 0.0 <= out["auc"]["test"] <= 1.0
    # The export stores the ticket's kept entries and serves what the model predicts.
    assert (Path(out["export"]) / "saved_model.pb").is_file()
    np.testing.assert_allclose(out["served_logits"], out["model_logits"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        out["served_probabilities"], 1 / (1 + np.exp(-out["model_logits"])), rtol=1e-5
    )


def test_pep_ctr_example_data_helpers(tmp_path):
    pep_ctr = _example("pep_ctr")
    # Integer features become categories int(log(x)^2) above 2; empty fields are "missing".
    assert [pep_ctr._bucket(v) for v in ("", "0.0", "2.0", "3.0", "260.0")] == [
        "missing",
        "0",
        "2",
        str(int(math.log(3.0) ** 2)),
        "30",  # log(260)^2 = 30.9
    ]
    # Training values get rows 1.. per field (sorted), offset by the earlier fields' sizes;
    # a value never seen in training maps to the field's row 0.
    raw = np.array([["a", "x"], ["b", "x"], ["c", "y"]], dtype=object)
    ids, dims = pep_ctr.encode(raw, np.array([0, 1]))
    assert dims.tolist() == [3, 2]
    assert ids.tolist() == [[1, 4], [2, 4], [0, 3]]
    # Mann-Whitney AUC with ties counted half: pairs (pos, neg) = 4, wins 2 + 0.5.
    labels = np.array([1.0, 1.0, 0.0, 0.0])
    assert pep_ctr.exact_auc(labels, np.array([0.9, 0.4, 0.4, 0.1])) == pytest.approx(0.875)
    assert math.isnan(pep_ctr.exact_auc(np.ones(3), np.arange(3.0)))
    # The synthetic clicks depend on the features: smoothed click rates per value, counted on
    # the first half, rank the second half's clicks better than chance.
    raw, y = pep_ctr.synthetic_ctr(4000, 8, 200, seed=0)
    ids, dims = pep_ctr.encode(raw, np.arange(2000))
    assert raw.shape == (4000, 8) and 0.1 < y.mean() < 0.9 and ids.max() < dims.sum()
    score = np.zeros(2000)
    for f in range(8):
        clicks = np.bincount(ids[:2000, f], weights=y[:2000], minlength=dims.sum())
        rate = (clicks + 5 * y[:2000].mean()) / (
            np.bincount(ids[:2000, f], minlength=dims.sum()) + 5
        )
        score += np.log(rate / (1 - rate))[ids[2000:, f]]
    assert pep_ctr.exact_auc(y[2000:], score) > 0.53
    bad = tmp_path / "bad.csv"
    bad.write_text("click,I1\n1,2\n")
    with pytest.raises(ValueError, match="expected the header label,I1..I13,C1..C26"):
        pep_ctr.read_criteo(bad)


def test_esapn_stream_example_runs_both_methods_exports_serves_and_resumes(tmp_path):
    out = _example("esapn_stream").main(["--small", "--output", str(tmp_path)])
    stream, runs = out["stream"], out["runs"]
    assert set(runs) == {"fixed", "esapn"}
    for run in runs.values():  # one pass: every rating of the test part scored once
        assert run.metrics["test"]["samples"] == stream.num_interactions - stream.test_start
        assert 0.0 <= run.metrics["test"]["accuracy"] <= 1.0
    assert runs["fixed"].memory["user"]["ratio"] == runs["fixed"].memory["item"]["ratio"] == 1.0
    esapn = runs["esapn"]
    for side in ("user", "item"):  # sizes are rungs of the ladder; memory is their share
        assert set(np.unique(esapn.sizes[side])) <= {2, 4, 8}
        assert esapn.memory[side]["ratio"] == pytest.approx(esapn.sizes[side].mean() / 8)
    assert out["usable_params"] == esapn.sizes["user"].sum() + esapn.sizes["item"].sum()
    assert (Path(out["export"]) / "saved_model.pb").is_file()
    np.testing.assert_allclose(out["served_logits"], out["model_logits"], rtol=1e-5, atol=1e-5)
    assert out["served_probability"].shape == (5,)
    # A rerun resumes both finished runs from their checkpoints (nothing is trained again).
    again = _example("esapn_stream").main(["--small", "--output", str(tmp_path)])
    assert again["runs"]["esapn"].metrics == esapn.metrics
