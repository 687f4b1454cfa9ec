"""BET in the paper protocol: one shared search, top-K retraining, resume, budgets, report."""

import json

import numpy as np
import pytest

from tfembsize.budget import Budget
from tfembsize.data import synthetic
from tfembsize.models import TrainConfig, train_bpr
from tfembsize.protocol import (
    ProtocolConfig,
    available_methods,
    bet_report,
    cli,
    get_method,
    plan_stats,
    run_protocol,
)
from tfembsize.protocol.bet_report import diagnostics_stem
from tfembsize.protocol.methods.bet import BETSettings, bet_controller, bet_finetune_config
from tfembsize.protocol.report import spearman
from tfembsize.search import load_history

D = 8
RECIPE = TrainConfig(learning_rate=0.01, batch_size=128, max_steps=40, eval_every=20, patience=1)
TINY = {"search_iterations": 3, "num_candidates": 4, "finetune_epochs": 1, "top_k": 2}


@pytest.fixture(scope="module")
def split():
    return synthetic(60, 80, 1200, seed=0).split(0.5, 0.25, 0.25, seed=42)


def _config(out, methods=("es", "bet"), **kw):
    kw.setdefault("sparsities", (0.5, 0.75))
    kw.setdefault("method_options", {"bet": TINY})
    kw.setdefault("train_config", RECIPE)
    return ProtocolConfig(
        dataset="synthetic",
        backbone="mf",
        methods=methods,
        seeds=(0,),
        out=str(out),
        d_max=D,
        **kw,
    )


class Trainer:
    """train_bpr that counts calls (and their configs) and can be killed at a given call."""

    def __init__(self, kill_at=None):
        self.calls = []
        self.kill_at = kill_at

    def __call__(self, model, split, evaluator, *, config):
        if self.kill_at is not None and len(self.calls) == self.kill_at:
            self.kill_at = None
            raise KeyboardInterrupt("killed during training")
        self.calls.append(config)
        return train_bpr(model, split, evaluator, config=config)


def _cells(report):
    return {(c.method, c.sparsity): c for c in report.cells}


def test_bet_end_to_end_shared_search_resume_and_budget(tmp_path, split):
    whole = Trainer()
    ref = run_protocol(_config(tmp_path / "a"), split=split, verbose=0, train_fn=whole)
    assert not ref.pending
    # Calls: ES x2 retrainings; BET: pretraining once, T = 3 fine-tunings per sparsity in ONE
    # search (both sparsities), then K = 2 retrainings per cell.
    per_epoch = -(-split.train.num_interactions // RECIPE.batch_size)
    lengths = [c.max_steps for c in whole.calls]
    assert lengths == [40, 40, 40] + [per_epoch] * 6 + [40] * 4
    ft = whole.calls[3]
    assert (ft.learning_rate, ft.decay_rate, ft.decay_steps) == (0.01, 0.98, 200)
    assert ft.min_learning_rate == pytest.approx(0.01 / 30) and ft.batch_size == 128

    cells = _cells(ref)
    rows = split.num_users + split.num_items
    shared = tmp_path / "a" / "work" / "bet__shared__seed0"
    history = load_history(shared)
    assert len(history) == 6 and all(r.mode == "snapshot" for r in history)
    for c in (0.5, 0.75):
        budget = Budget(sparsity=c, d_max=D)
        cell = cells[("bet", c)]
        assert cell.budget == budget.max_params_for(rows)
        assert cell.usable_params <= cell.budget  # the guarantee, on the retrained model
        steps = [r for r in history if r.info["sparsity"] == c]
        assert len(steps) == 3 and all(r.plan.fits(budget) for r in steps)
        info = cell.info
        assert (info["T"], info["m"], info["h"], info["K"]) == (3, 4, 1.0, 2)
        assert info["search_iterations_done"] == 3 and info["search_steps_all"] == 6
        assert info["search_time"] == pytest.approx(sum(r.elapsed for r in steps))
        assert info["full_train_time"] > 0 and info["full_train_steps"] == 40
        assert info["search_vs_full_train_ratio"] == pytest.approx(
            info["search_time"] / info["full_train_time"]
        )
        assert len(info["candidates"]) == 2
        chosen = info["candidates"][info["chosen_rank"]]
        others = [r["selection_value"] for r in info["candidates"]]
        assert chosen["selection_value"] == max(others)  # chosen on validation R@20
        assert cell.validation["recall@20"] == pytest.approx(chosen["selection_value"])
        fitness = [r["search_fitness"] for r in info["candidates"]]
        assert fitness == sorted(fitness, reverse=True)  # the top K of the search, best first
    results = json.loads((tmp_path / "a" / "results.json").read_text())
    assert results["config"]["method_options"] == {"bet": TINY}
    for c in ("0.5", "0.75"):
        bet, es = cells[("bet", float(c))], cells[("es", float(c))]
        assert results["ratio_vs_es"]["bet"][c] == pytest.approx(
            bet.test["recall@20"] / es.test["recall@20"]
        )
        timing = results["search_time"]["bet"][c]
        assert timing["search_time"] == pytest.approx(bet.info["search_time"])
    md = (tmp_path / "a" / "results.md").read_text()
    assert "| bet | 50% |" in md and "search / full training" in md

    # Killed in the middle of the search, then in the middle of the second cell's retraining.
    out = tmp_path / "b"
    first = Trainer(kill_at=5)  # ES x2, pretraining, two fine-tunings, killed at the third
    with pytest.raises(KeyboardInterrupt):
        run_protocol(_config(out), split=split, verbose=0, train_fn=first)
    assert len(load_history(out / "work" / "bet__shared__seed0")) == 2
    second = Trainer(kill_at=6)  # 4 fine-tunings, 0.5's two retrainings, killed in 0.75's 1st
    with pytest.raises(KeyboardInterrupt):
        run_protocol(_config(out), split=split, verbose=0, train_fn=second)
    assert [c.max_steps for c in second.calls] == [per_epoch] * 4 + [40, 40]
    third = Trainer()
    report = run_protocol(_config(out), split=split, verbose=0, train_fn=third)
    assert len(third.calls) == 2  # only 0.75's retrainings were left
    assert not report.pending
    for key, a in cells.items():
        b = _cells(report)[key]
        assert a.usable_params == b.usable_params and a.best_step == b.best_step, key
        for k in ("recall@5", "recall@20", "ndcg@5", "ndcg@20"):
            assert a.test[k] == pytest.approx(b.test[k], abs=1e-6), (key, k)
    assert [r.plan for r in load_history(out / "work" / "bet__shared__seed0")] == [
        r.plan for r in history
    ]

    # A cell rerun after its retrainings finished rebuilds the winner from its saved weights.
    (out / "cells" / "bet__c0.5__seed0.json").unlink()
    fourth = Trainer()
    again = run_protocol(_config(out), split=split, verbose=0, train_fn=fourth)
    assert fourth.calls == []
    assert _cells(again)[("bet", 0.5)].test == pytest.approx(cells[("bet", 0.5)].test, abs=1e-6)
    weights = sorted(p.name for p in (out / "work" / "bet__c0.5__seed0" / "retrain").iterdir())
    assert len([w for w in weights if w.endswith(".weights.npz")]) == 1  # only the winner's


def test_bet_variants_and_settings():
    names = available_methods()
    for name in ("bet", "bet-random", "bet-sizes-only"):
        assert name in names and get_method(name).budgeted
    assert BETSettings.from_options({}, "mf") == BETSettings(50, 100, 10.0, 5)
    assert BETSettings.from_options({}, "ngcf").finetune_epochs == 15.0  # [paper]
    assert BETSettings.from_options({"finetune_epochs": 2}, "ngcf").finetune_epochs == 2.0
    with pytest.raises(ValueError, match=r"Unknown BET option\(s\) \['T'\]"):
        BETSettings.from_options({"T": 3})
    with pytest.raises(ValueError, match="`num_candidates` must be a positive integer"):
        BETSettings(num_candidates=0)
    settings = BETSettings(**TINY)
    random = bet_controller((0.8, 0.9), 3, settings, strategy_cycle=("random",)).get_config()
    assert random["strategy_cycle"] == ["random"] and random["retrain"] is False
    assert (random["search_iterations"], random["num_candidates"]) == (3, 4)
    assert random["finetune_epochs"] == 1.0 and random["sparsity"] == [0.8, 0.9]
    sizes = bet_controller((0.9,), 3, settings, surrogate_features="constant").get_config()
    assert sizes["surrogate_features"] == "constant"
    assert sizes["strategy_cycle"] == ["predict", "predict", "predict", "random", "nearest"]
    assert BETSettings().search_start == "full"
    scratch = bet_controller((0.9,), 3, BETSettings(**TINY, search_start="scratch"))
    assert scratch.get_config()["search_start"] == "scratch"
    with pytest.raises(ValueError, match=r"`search_start` must be 'full' or 'scratch'.*'warm'"):
        BETSettings(search_start="warm")
    ft = bet_finetune_config(RECIPE.replace(refit=True))
    assert ft.refit is False and ft.evaluate_test is False and ft.batch_size == RECIPE.batch_size
    with pytest.raises(ValueError, match=r"`method_options` names methods that do not run"):
        _config("x", methods=("es",))


def test_reuse_cells_from_another_run(tmp_path, split):
    first = Trainer()
    run_protocol(
        _config(tmp_path / "a", ("es",), sparsities=(0.75,), method_options={}),
        split=split,
        verbose=0,
        train_fn=first,
    )
    assert len(first.calls) == 1
    reuse = Trainer()
    report = run_protocol(
        _config(tmp_path / "b", ("es",), sparsities=(0.75,), method_options={}),
        split=split,
        verbose=0,
        train_fn=reuse,
        reuse_cells_from=[tmp_path / "a"],
    )
    assert reuse.calls == [] and report.cells[0].info["reused_from"] == str(tmp_path / "a")
    # Reused up front, even when the cells before it in the table have not run yet.
    early = run_protocol(
        _config(tmp_path / "d", ("mr", "es"), sparsities=(0.75,), method_options={}),
        split=split,
        verbose=0,
        train_fn=reuse,
        reuse_cells_from=[tmp_path / "a"],
        max_cells=0,
    )
    assert [c.method for c in early.cells] == ["es"] and early.pending == (("mr", 0.75, 0),)
    other = Trainer()  # another recipe: the cell is not interchangeable and runs again
    run_protocol(
        _config(
            tmp_path / "c",
            ("es",),
            sparsities=(0.75,),
            method_options={},
            train_config=RECIPE.replace(max_steps=20),
        ),
        split=split,
        verbose=0,
        train_fn=other,
        reuse_cells_from=[tmp_path / "a"],
    )
    assert len(other.calls) == 1


def test_command_line_and_bet_report(tmp_path):
    """The CLI's --bet-* flags (and a `full` cell), then the BET report on its output."""
    data = synthetic(60, 80, 1200, seed=0)
    folder = tmp_path / "gowalla"
    folder.mkdir()
    indptr, indices = data.csr()
    lines = [" ".join(map(str, [u, *indices[indptr[u] : indptr[u + 1]]])) for u in range(60)]
    (folder / "train.txt").write_text("\n".join(lines[:40]) + "\n")
    (folder / "test.txt").write_text("\n".join(lines[40:]) + "\n")
    out = tmp_path / "out"
    argv = f"--data-dir {folder} --backbone mf --methods es,mr,bet,full --sparsity 0.8 --seeds 1 "
    argv += f"--out {out} --d-max 10 --lr 0.01 --batch-size 128 --max-steps 20 --eval-every 20 "
    argv += "--bet-iterations 2 --bet-candidates 3 --bet-epochs 0.5 --bet-top-k 1 --verbose 0"
    assert cli.main(argv.split()) == 0
    results = json.loads((out / "results.json").read_text())
    options = {"search_iterations": 2, "num_candidates": 3, "finetune_epochs": 0.5, "top_k": 1}
    assert results["config"]["method_options"] == {"bet": options}

    (out / "NOTES.md").write_text("# Notes\n\nT reduced\nfor CI.\n\nDetails.\n")
    assert bet_report.main([str(out)], results_dir=tmp_path / "results") == 0
    report = json.loads((tmp_path / "results" / "bet_gowalla_mf.json").read_text())
    cells = {c["method"]: c for c in results["cells"]}
    ratio = cells["bet"]["test"]["recall@20"] / cells["es"]["test"]["recall@20"]
    assert report["ratio_vs_es"]["0.8"] == pytest.approx(ratio)
    assert report["paper_ratio_vs_es"]["0.8"] == pytest.approx(0.1753 / 0.1674)
    assert report["paper_ratio_vs_es_by_backbone"]["0.8"] == pytest.approx(
        {"lightgcn": 0.1753 / 0.1674, "ngcf": 0.1454 / 0.1466, "ncf": 0.1294 / 0.1235}
    )
    assert report["search_vs_full_train_ratio"]["0.8"] == pytest.approx(
        cells["bet"]["info"]["search_vs_full_train_ratio"]
    )
    assert report["bet_settings"] == {**options, "search_start": "full"}
    row = report["rows"][0]
    assert row["bet_beats_es"] == (ratio > 1)
    assert row["mr"]["recall@20"]["mean"] == cells["mr"]["test"]["recall@20"]
    assert "command" in report and "machine" in report
    md = (tmp_path / "results" / "bet_gowalla_mf.md").read_text()
    assert "T = 2, m = 3, h = 0.5, top K = 1" in md and "| 80% |" in md
    assert report["note"] == "T reduced for CI." and "Note: T reduced for CI." in md
    assert f"| {ratio:.3f} | 1.047 |" in md
    assert "| 1.047 / 0.992 / 1.048 |" in md
    assert np.isfinite(report["rows"][0]["search_time"])


def test_spearman_and_diagnostics_stem(tmp_path):
    """The reports' Spearman (None where undefined) and the diagnostics path."""
    # ranks (1, 2, 3) vs (1, 3, 2): d = (0, 1, 1), rho = 1 - 6 * 2 / (3 * 8) = 0.5
    assert spearman([0.1, 0.2, 0.3], [5.0, 9.0, 7.0]) == pytest.approx(0.5)
    assert spearman([3, 2, 1], [1, 2, 3]) == pytest.approx(-1.0)
    assert spearman([1, 2], [2, 1]) is None
    assert spearman([1, 2], [2, 1], min_points=2) == pytest.approx(-1.0)
    assert spearman([1, 1, 1], [1, 2, 3]) is None
    assert spearman([1, 2, 3], [4, 4, 4]) is None
    assert diagnostics_stem(tmp_path, "gowalla", "mf") == tmp_path / "bet_diagnostics_gowalla_mf"


def test_bet_report_proxy_vs_retraining_hand_computed():
    """BET's search fitness beside its retrained validation R@20, and ES's under both."""
    candidates = [
        {"rank": r, "search_fitness": f, "validation": {"recall@20": v}}
        for r, (f, v) in enumerate([(0.9, 0.20), (0.8, 0.22), (0.7, 0.18)])
    ]
    results = {
        "cells": [
            {
                "method": "bet",
                "sparsity": 0.8,
                "seed": 0,
                "validation": {"recall@20": 0.22},
                "info": {"candidates": candidates, "chosen_rank": 1},
            },
            {"method": "es", "sparsity": 0.8, "seed": 0, "validation": {"recall@20": 0.25}},
            {"method": "bet", "sparsity": 0.8, "seed": 1, "validation": {}, "info": {}},
        ]
    }
    out = bet_report.proxy_vs_retraining(results, {"probes": {"es@0.8": {"fitness": 0.75}}})
    e = out["0.8"]
    # ranks of fitness 3, 2, 1 and of R@20 2, 3, 1: sum d^2 = 2, rho = 1 - 6 * 2 / (3 * 8).
    assert e["spearman_fitness_vs_retrained"] == pytest.approx(0.5)
    assert e["bet_chosen_fitness"] == 0.8 and e["bet_chosen_validation_recall@20"] == 0.22
    assert e["es_fitness"] == 0.75 and e["es_validation_recall@20"] == 0.25
    assert [k["search_fitness"] for k in e["candidates"]] == [0.9, 0.8, 0.7]
    without = bet_report.proxy_vs_retraining(results)["0.8"]
    assert without["es_fitness"] is None and without["es_validation_recall@20"] == 0.25


def test_bet_report_missing_diagnostics_file_is_an_error(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "results.json").write_text(json.dumps({"config": {"name": "x", "backbone": "mf"}}))
    with pytest.raises(SystemExit):
        bet_report.main(
            [str(out), "--diagnostics", str(tmp_path / "nope.json")], results_dir=tmp_path
        )
    assert "--diagnostics: no such file" in capsys.readouterr().err


def test_bet_diagnostics_plan_helpers_hand_computed():
    """The diagnostics' split-w probe plan, user share and size cv, by hand."""
    from tfembsize.controllers.base import Problem

    problem = Problem(
        tables={"u": "user", "i": "item"},
        d_max=8,
        num_users=3,
        num_items=5,
        digest="x",
        user_frequencies=np.array([5, 3, 1]),
        item_frequencies=np.array([4, 4, 2, 1, 1]),
    )
    # B(0.5) = floor(0.5 * 8 * 8) = 32 size units; users get 0.7 * 32 // 3 = 7 each,
    # items (32 - 21) // 5 = 2 each: 31 <= 32 parameters.
    plan = plan_stats.split_plan(problem, 0.5, 0.7)
    np.testing.assert_array_equal(plan["u"], [7, 7, 7])
    np.testing.assert_array_equal(plan["i"], [2, 2, 2, 2, 2])
    plan.check(Budget(sparsity=0.5, d_max=8))
    assert plan_stats.plan_share(plan, problem.tables) == pytest.approx(21 / 31)
    counts = np.zeros((2, 8), np.int64)  # entities per size (column d-1), per side
    counts[0, 6], counts[1, 1] = 3, 5
    assert plan_stats.user_share(counts) == pytest.approx(21 / 31)
    # pooled sizes (7, 7, 7, 2, 2, 2, 2, 2): mean 3.875, variance 46.875 / 8
    assert plan_stats.size_cv(counts) == pytest.approx(np.sqrt(46.875 / 8) / 3.875)
    assert plan_stats.side_cv(counts) == 0.0
    assert np.isnan(plan_stats.spearman_or_nan(np.array([1.0, 2.0]), np.array([3.0, 3.0])))
