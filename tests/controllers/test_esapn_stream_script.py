"""benchmarks/esapn_stream.py on a small slice of ML-1M: results keys, figure, resume."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _script():
    path = REPO / "benchmarks" / "esapn_stream.py"
    spec = importlib.util.spec_from_file_location("_bench_esapn_stream", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_benchmark_runs_fixed_and_esapn_on_a_slice(tmp_path, monkeypatch, data_dir):
    script = _script()
    monkeypatch.setattr(script.common, "RESULTS", tmp_path)
    argv = [
        "--dataset",
        str(data_dir / "ml-1m"),
        "--max-interactions",
        "1500",
        "--batch-size",
        "100",
        "--chunk-steps",
        "5",
        "--hidden",
        "16",
        "--name",
        "slice",
    ]
    assert script.parse_args(argv[:4]).name == "esapn_ml1m_stream_1500"
    assert script.main(argv) == 0
    payload = json.loads((tmp_path / "slice.json").read_text())
    assert payload["interactions"] == 1500 and payload["test_interactions"] == 300
    assert payload["pending"] == []
    for task, loss in (("binary", "mse"), ("multiclass", "cross_entropy")):
        for method in ("fixed", "esapn"):
            assert 0.0 <= payload[task][f"{method}_accuracy"] <= 1.0
            assert payload[task][f"{method}_{loss}"] > 0.0
    ratios = payload["memory_ratio"]
    assert 0.0 < ratios["users"] <= 1.0 and 0.0 < ratios["items"] <= 1.0
    assert payload["memory"]["binary_fixed"]["user"]["ratio"] == 1.0
    assert payload["overhead"]["binary_esapn"]["user_policy"] > 0
    assert payload["paper"]["binary"]["ml-20m"]["esapn"] == [72.98, 0.1785]
    assert (tmp_path / "slice_sizes.png").read_bytes()[:4] == b"\x89PNG"
    assert set(payload["size_curves"]) == {"users", "items"}
    markdown = (tmp_path / "slice.md").read_text()
    assert "| binary (ml-20m in the paper) |" in markdown and "72.98 %" in markdown
    # a rerun keeps the finished runs (nothing is trained again) and writes the same numbers
    assert script.main(argv) == 0
    again = json.loads((tmp_path / "slice.json").read_text())
    assert again["binary"] == payload["binary"] and again["memory"] == payload["memory"]
