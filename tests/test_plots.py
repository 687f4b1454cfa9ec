"""PNG plots: the numbers they draw (by hand), the files they write, their errors."""

import json

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from tfembsize.plan import SizePlan  # noqa: E402
from tfembsize.plots import (  # noqa: E402
    pareto_front,
    plan_sides,
    plot_quality_vs_params,
    plot_search_history,
    plot_sizes_vs_frequency,
    protocol_points,
)

PNG = b"\x89PNG\r\n\x1a\n"


def _is_png(path):
    return path.read_bytes()[:8] == PNG and path.stat().st_size > 1000


def test_sizes_vs_frequency_draws_the_median_size_per_frequency_bin(tmp_path):
    # Frequencies 0, 0, 9, 9, 99: bins on log(f + 1) put {0, 0}, {9, 9} and {99} apart.
    freq = np.array([0, 0, 9, 9, 99])
    sizes = np.array([2, 4, 8, 16, 64])
    out = tmp_path / "sizes.png"
    lines = plot_sizes_vs_frequency({"users": (sizes, freq)}, out, d_max=64, bins=2)
    assert _is_png(out)
    # Two log bins over [1, 100]: [1, 10) holds f + 1 = 1, 1 (sizes 2, 4); [10, 100] the rest.
    assert lines["users"]["median_size"] == [3.0, 16.0]
    assert lines["users"]["bin_frequency"] == pytest.approx([np.sqrt(10) - 1, np.sqrt(1000) - 1])


def test_plan_sides_pairs_a_plan_with_frequencies(tmp_path):
    plan = SizePlan({"user": [1, 2, 3], "item": [4, 5]})
    sides = plan_sides(plan, {"user": [5, 6, 7], "item": [1, 1]})
    assert sides["item"][0].tolist() == [4, 5]
    assert sides["user"][1].tolist() == [5, 6, 7]
    with pytest.raises(KeyError, match=r"no table named \['users'\]"):
        plan_sides(plan, {"users": [1, 2, 3]})
    lines = plot_sizes_vs_frequency(sides, tmp_path / "two.png", bins=3)
    assert set(lines) == {"user", "item"}
    assert lines["item"]["median_size"] == [4.5]


def test_search_history_score_and_best_so_far(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    rows = [
        {"iteration": 0, "plan_params": 10, "feedback": {"quality": 0.2}},
        {"iteration": 1, "plan_params": 12, "feedback": {"quality": 0.1}},
        {"iteration": 2, "plan_params": 8, "feedback": {"status": "diverged"}},
        {"iteration": 3, "plan_params": 9, "feedback": {"quality": 0.3}},
    ]
    (run / "history.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = tmp_path / "history.png"
    drawn = plot_search_history(run, out)
    assert _is_png(out)
    assert drawn["step"] == [0, 1, 3]
    assert drawn["score"] == [0.2, 0.1, 0.3]
    assert drawn["best"] == [0.2, 0.2, 0.3]
    assert drawn["usable_params"] == [10.0, 12.0, 9.0]
    with pytest.raises(ValueError, match="No step of .*history.jsonl records 'fitness'"):
        plot_search_history(run, out, score="fitness")
    with pytest.raises(ValueError, match="`score` must be one of"):
        plot_search_history(run, out, score="loss")
    with pytest.raises(FileNotFoundError, match="must be a search run directory"):
        plot_search_history(tmp_path / "nowhere", out)
    (run / "history.jsonl").write_text('{"iteration": 0}\n{not json\n')
    with pytest.raises(ValueError, match=r"history.jsonl, line 2: not JSON"):
        plot_search_history(run, out)


def test_pareto_front_by_hand():
    assert pareto_front([(10, 0.5), (20, 0.4), (30, 0.7)]) == [0, 2]
    assert pareto_front([(10, 0.5), (10, 0.6), (5, 0.1)]) == [2, 1]
    assert pareto_front([(1, 1.0)]) == [0]


def test_quality_vs_params_front_across_methods(tmp_path):
    out = tmp_path / "pareto.png"
    drawn = plot_quality_vs_params(
        {"es": [(100, 0.18), (50, 0.16)], "ciess": [(100, 0.17), (60, 0.17)]},
        out,
        full_params=1000,
    )
    assert _is_png(out)
    assert drawn["front"] == [("es", 50.0, 0.16), ("ciess", 60.0, 0.17), ("es", 100.0, 0.18)]
    with pytest.raises(ValueError, match="parameters must be positive"):
        plot_quality_vs_params({"es": [(0, 0.1)]}, out)
    with pytest.raises(ValueError, match="non-empty list"):
        plot_quality_vs_params({}, out)
    with pytest.raises(ValueError, match=r"must end in \.png"):
        plot_quality_vs_params({"es": [(1, 0.1)]}, tmp_path / "x.jpg")


def test_protocol_points_read_a_results_file(tmp_path):
    cells = [
        {"method": "es", "usable_params": 100, "test": {"recall@20": 0.2}},
        {"method": "es", "usable_params": 50, "test": {"recall@20": 0.1}},
        {"method": "mr", "usable_params": 50, "test": {}},
    ]
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"cells": cells}))
    assert protocol_points(path) == {"es": [(100.0, 0.2), (50.0, 0.1)]}
    with pytest.raises(ValueError, match="records test 'ndcg@20'"):
        protocol_points(path, metric="ndcg@20")
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match="not a protocol results file"):
        protocol_points(path)


@pytest.mark.parametrize(
    ("sides", "message"),
    [
        ({}, "`sides` must map a side name"),
        ({"u": ([1, 2], [1])}, "same length"),
        ({"u": ([0, 2], [1, 1])}, "sizes must be >= 1"),
        ({"u": [1, 2]}, r"must be a \(sizes, frequencies\) tuple"),
    ],
)
def test_sizes_vs_frequency_bad_input(tmp_path, sides, message):
    with pytest.raises(ValueError, match=message):
        plot_sizes_vs_frequency(sides, tmp_path / "x.png")
