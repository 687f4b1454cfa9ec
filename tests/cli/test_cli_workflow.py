"""search -> retrain -> export -> report -> plot end to end on a tiny synthetic BET run, and
resuming an interrupted search."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tensorflow as tf

import tfembsize
import tfembsize.models
from tfembsize.plan import SizePlan

TINY = ["--dataset", "synthetic", "--d-max", "8", "--max-steps", "60", "--eval-every", "30"]
BET = [
    "--method",
    "bet",
    "--sparsity",
    "0.5,0.8",
    "--bet-search-iterations",
    "2",
    "--bet-num-candidates",
    "4",
    "--bet-finetune-epochs",
    "0.3",
    "--bet-top-k",
    "1",
]
ROWS = 1000 + 1500  # users + items of the default synthetic data set


def _budget(c: float) -> int:
    """floor((1 - c) * d_max * N), by hand for the two targets."""
    return {0.5: 10_000, 0.8: 4_000}[c]  # 0.5 * 8 * 2500, 0.2 * 8 * 2500


@pytest.fixture(scope="module")
def workflow(tmp_path_factory, cli):
    """Every step once on one run directory (shared by the tests of this module)."""
    run = tmp_path_factory.mktemp("cli") / "run"
    steps = {"search": cli("search", *TINY, *BET, "--run-dir", str(run))}
    steps["retrain"] = cli("retrain", str(run))
    steps["export"] = cli("export", str(run))
    steps["report"] = cli("report", str(run))
    steps["report_json"] = cli("report", str(run), "--json")
    steps["plot"] = cli("plot", str(run), "-q")
    for name, result in steps.items():
        assert result.code == 0, (name, result.err)
    return run, steps


def test_search_writes_a_self_describing_run_directory(workflow):
    run, steps = workflow
    described = json.loads((run / "run.json").read_text())
    assert described["format"] == "tfembsize.CliRun"
    assert described["command"].startswith("tfembsize search --dataset synthetic")
    assert described["tfembsize_version"] == tfembsize.__version__
    options = described["options"]
    assert options["method"] == "bet" and options["sparsity"] == [0.5, 0.8]
    assert options["method_settings"] == {
        "bet": {"search_iterations": 2, "num_candidates": 4, "finetune_epochs": 0.3, "top_k": 1}
    }
    assert set(described["layout"]) >= {"plans/<key>.json", "metrics/<key>.json", "run.log"}
    assert "tfembsize search" in (run / "README.md").read_text()
    for c in (0.5, 0.8):
        plan = SizePlan.load(run / "plans" / f"c{c:g}.json")
        assert plan.num_rows() == ROWS
        assert plan.total_params() <= _budget(c)  # the budget guarantee
    assert "| c0.8 |" in steps["search"].out
    log = (run / "run.log").read_text()
    assert "search: tfembsize search" in log and "retrain: tfembsize retrain" in log
    assert "c0.5: plan written" in log


def test_retrain_writes_test_metrics_and_weights_within_budget(workflow):
    run, _ = workflow
    for c in (0.5, 0.8):
        cell = json.loads((run / "metrics" / f"c{c:g}.json").read_text())
        plan = SizePlan.load(run / "plans" / f"c{c:g}.json")
        assert cell["usable_params"] == plan.total_params() <= cell["budget"] == _budget(c)
        assert 0 < cell["test"]["recall@20"] <= 1 and cell["best_step"] in (30, 60)
        assert cell["info"]["search"]["T"] == 2
        assert (run / "weights" / f"c{c:g}.npz").is_file()


def test_export_serves_top_k_and_reports_bytes_against_dense(workflow):
    run, steps = workflow
    assert "bytes stored vs" in steps["export"].out and "dense" in steps["export"].out
    report = json.loads((run / "export" / "c0.8.json").read_text())
    total = report["total"]
    plan = SizePlan.load(run / "plans" / "c0.8.json")
    assert total["usable_params"] == plan.total_params()
    assert total["dense_bytes"] == 4 * 8 * ROWS and total["raw_bytes"] < total["dense_bytes"]
    served = tf.saved_model.load(str(run / "export" / "c0.8"))
    top = served.signatures["serving_default"](
        user_ids=tf.constant([0, 1], tf.int64), k=tf.constant(5)
    )
    ids = [v for k, v in top.items() if "id" in k][0].numpy()
    assert ids.shape == (2, 5) and np.all((ids >= 0) & (ids < 1500))


def test_report_summarises_run_export_and_search_folders(workflow, tmp_path, cli):
    run, steps = workflow
    assert "| c0.5 |" in steps["report"].out and "| c0.8 |" in steps["report"].out
    summary = json.loads(steps["report_json"].out)
    assert summary["kind"] == "cli_run"
    by_target = {r["target"]: r for r in summary["targets"]}
    cell = json.loads((run / "metrics" / "c0.5.json").read_text())
    assert by_target["c0.5"]["test"]["recall@20"] == pytest.approx(cell["test"]["recall@20"])
    assert by_target["c0.5"]["export"]["ratio"] < 1
    export = cli("report", str(run / "export" / "c0.5"), "--json")
    assert export.code == 0 and json.loads(export.out)["kind"] == "export"
    loop = cli("report", str(run / "work" / "bet__shared__seed0"), "--json")
    assert loop.code == 0
    assert json.loads(loop.out)["kind"] == "search_loop"
    assert json.loads(loop.out)["steps"] == 4  # 2 iterations x 2 sparsities
    from tfembsize.protocol.cli import main as protocol_main

    out = tmp_path / "protocol"
    assert (
        protocol_main(
            [
                *TINY[:-4],
                "--max-steps",
                "20",
                "--eval-every",
                "10",
                "--methods",
                "es",
                "--sparsity",
                "0.5",
                "--out",
                str(out),
                "-v",
                "0",
            ]
        )
        == 0
    )
    protocol = cli("report", str(out))
    assert protocol.code == 0 and "| es | 0.5 | 1 |" in protocol.out
    figures = tmp_path / "figures"
    compared = cli("plot", str(run), "--compare", str(out), "--out", str(figures), "-q")
    assert compared.code == 0, compared.err
    assert (figures / "quality_vs_params.png").is_file()
    assert cli("plot", str(run), "--compare", str(tmp_path)).code == 2  # not a run or results


def test_plot_writes_the_three_kinds_of_figure(workflow):
    run, steps = workflow
    names = sorted(p.name for p in (run / "plots").iterdir())
    assert names == [
        "history_bet__shared__seed0.png",
        "quality_vs_params.png",
        "sizes_c0.5.png",
        "sizes_c0.8.png",
    ]
    for name in names:
        assert (run / "plots" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert steps["plot"].out.count(".png") == 4


def test_the_same_command_again_resumes_and_other_options_are_refused(workflow, cli):
    run, _ = workflow
    before = (run / "plans" / "c0.5.json").read_bytes()
    again = cli("search", *TINY, *BET, "--run-dir", str(run))
    assert again.code == 0 and (run / "plans" / "c0.5.json").read_bytes() == before
    assert "already" in again.err
    other = cli("search", *TINY, *BET[:-1], "2", "--run-dir", str(run))
    assert other.code == 2
    assert "--run-dir" in other.err and "top_k" in other.err and "new --run-dir" in other.err
    retrained = cli("retrain", str(run))
    assert retrained.code == 0 and "skipped" in retrained.err


class _KilledTrainer:
    """train_bpr that raises KeyboardInterrupt at its n-th call (Ctrl-C during a training)."""

    def __init__(self, kill_at: int) -> None:
        self.calls = 0
        self.kill_at = kill_at
        self.train = tfembsize.models.train_bpr

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.calls == self.kill_at:
            raise KeyboardInterrupt
        return self.train(*args, **kwargs)


def test_an_interrupted_search_resumes_to_the_same_plans(workflow, tmp_path, monkeypatch, cli):
    run, _ = workflow
    other = tmp_path / "killed"
    killed = _KilledTrainer(kill_at=3)  # the pretraining, one fine-tuning, killed at the second
    monkeypatch.setattr(tfembsize.models, "train_bpr", killed)
    first = cli("search", *TINY, *BET, "--run-dir", str(other))
    assert first.code == 130 and killed.calls == 3
    assert "rerun the same command to resume" in first.err
    assert "Traceback" not in first.err
    assert not (other / "plans" / "c0.5.json").exists()
    monkeypatch.setattr(tfembsize.models, "train_bpr", killed.train)
    second = cli("search", *TINY, *BET, "--run-dir", str(other))
    assert second.code == 0, second.err
    assert "Resuming the search" in second.err
    for c in ("c0.5", "c0.8"):
        assert SizePlan.load(other / "plans" / f"{c}.json") == SizePlan.load(
            run / "plans" / f"{c}.json"
        )
