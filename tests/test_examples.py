"""The quickstart example runs end to end (in the same Keras mode as the test run)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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
