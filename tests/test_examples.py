"""The examples run end to end (in the same Keras mode as the test run), at small settings."""

from __future__ import annotations

import importlib
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
