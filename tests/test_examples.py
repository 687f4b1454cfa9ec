"""The quickstart example runs end to end (in the same Keras mode as the test run)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

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
