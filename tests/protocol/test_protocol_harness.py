import json
from pathlib import Path

import numpy as np
import pytest

from tfembsize.data import synthetic
from tfembsize.errors import BudgetExceededError
from tfembsize.models import MF, TrainConfig
from tfembsize.protocol import (
    MethodOutput,
    ProtocolConfig,
    get_method,
    register_method,
    run_protocol,
    unregister_method,
)

D = 8
RECIPE = TrainConfig(learning_rate=0.01, batch_size=128, max_steps=40, eval_every=20, patience=1)


@pytest.fixture(scope="module")
def split():
    return synthetic(60, 80, 1200, seed=0).split(0.5, 0.25, 0.25, seed=42)


def _config(out, methods, **kw):
    kw.setdefault("sparsities", (0.75,))
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


@pytest.fixture
def flaky():
    """Registers `counted-full` (counts calls) and `flaky-es` (killed the first time)."""
    calls = {"full": 0, "es": 0, "kill": True}

    def counted_full(ctx):
        calls["full"] += 1
        return get_method("full").fn(ctx)

    def flaky_es(ctx):
        calls["es"] += 1
        if calls["kill"]:
            calls["kill"] = False
            raise KeyboardInterrupt("killed in the middle of a cell")
        return get_method("es").fn(ctx)

    register_method("counted-full", counted_full, budgeted=False, overwrite=True)
    register_method("flaky-es", flaky_es, overwrite=True)
    yield calls
    unregister_method("counted-full")
    unregister_method("flaky-es")


def test_protocol_end_to_end_and_resume(tmp_path, split, flaky):
    # Uninterrupted reference run.
    flaky["kill"] = False
    ref = run_protocol(
        _config(tmp_path / "a", ("counted-full", "flaky-es")), split=split, verbose=0
    )
    assert not ref.pending and len(ref.cells) == 2
    # Killed after the first cell ...
    flaky.update(full=0, es=0, kill=True)
    out = tmp_path / "b"
    with pytest.raises(KeyboardInterrupt):
        run_protocol(_config(out, ("counted-full", "flaky-es")), split=split, verbose=0)
    assert sorted(p.name for p in (out / "cells").iterdir()) == ["counted-full__cnone__seed0.json"]
    partial = json.loads((out / "results.json").read_text())
    assert partial["pending"] == ["flaky-es__c0.75__seed0"]
    assert "1 cells still to run: flaky-es__c0.75__seed0" in (out / "results.md").read_text()
    # ... and rerun: the finished cell is skipped, the result equals the uninterrupted run.
    report = run_protocol(_config(out, ("counted-full", "flaky-es")), split=split, verbose=0)
    assert flaky["full"] == 1 and flaky["es"] == 2
    assert not report.pending
    for a, b in zip(ref.cells, report.cells, strict=True):
        assert (a.method, a.sparsity, a.seed) == (b.method, b.sparsity, b.seed)
        assert a.usable_params == b.usable_params and a.best_step == b.best_step
        for k in ("recall@5", "recall@20", "ndcg@5", "ndcg@20"):
            assert a.test[k] == pytest.approx(b.test[k], abs=1e-6), k

    full, es = report.cells
    rows = split.num_users + split.num_items
    assert full.usable_params == D * rows and full.budget is None and full.sparsity_reached == 0
    assert es.usable_params == 2 * rows and es.budget == 2 * rows  # floor(0.25 * 8) = 2
    assert es.sparsity_reached == pytest.approx(0.75)
    assert 0 < es.best_step <= 40 and es.train_steps in (20, 40)
    assert es.test["recall@20"] > 0 and es.steps_per_second > 0
    results = json.loads((out / "results.json").read_text())
    assert results["dataset"]["num_entities"] == rows
    assert results["popularity"]["test"]["recall@20"] > 0
    assert results["recipe"]["steps_per_epoch"] == -(-split.train.num_interactions // 128)
    assert [r["n"] for r in results["summary"]] == [1, 1]
    md = (out / "results.md").read_text()
    assert "| popularity (train counts) |" in md and "| flaky-es | 75% |" in md
    assert "— (no paper reports synthetic)" in md


def test_budget_assertion_fires_for_an_over_budget_method(tmp_path, split):
    def greedy(ctx):  # returns the full plan whatever the budget
        obs = ctx.observation()
        return MethodOutput(plan=obs.full_plan())

    def greedy_model(ctx):  # a custom model whose tables break the budget
        return MethodOutput(build_model=lambda: MF.create(split.num_users, split.num_items, D))

    register_method("greedy", greedy, overwrite=True)
    register_method("greedy-model", greedy_model, overwrite=True)
    try:
        limit = 2 * (split.num_users + split.num_items)
        with pytest.raises(BudgetExceededError, match=f"more than the budget of {limit}"):
            run_protocol(_config(tmp_path, ("greedy",)), split=split, verbose=0)
        with pytest.raises(BudgetExceededError, match="The model to retrain uses 1120 usable"):
            run_protocol(_config(tmp_path, ("greedy-model",)), split=split, verbose=0)
        assert not list((tmp_path / "cells").iterdir())  # nothing was reported
    finally:
        unregister_method("greedy")
        unregister_method("greedy-model")


def test_command_line_on_a_lightgcn_format_folder(tmp_path, split):
    """The CLI reads any LightGCN-format folder; named `gowalla`, it shows the BET paper cells."""
    data = synthetic(60, 80, 1200, seed=0)
    folder = tmp_path / "gowalla"
    folder.mkdir()
    csr = data.csr()
    lines = [
        " ".join(map(str, [u, *csr[1][csr[0][u] : csr[0][u + 1]]])) for u in range(data.num_users)
    ]
    (folder / "train.txt").write_text("\n".join(lines[:40]) + "\n")
    (folder / "test.txt").write_text("\n".join(lines[40:]) + "\n")
    from tfembsize.protocol import cli

    out = tmp_path / "out"
    argv = [
        "--data-dir",
        str(folder),
        "--backbone",
        "mf",
        "--methods",
        "es",
        "--sparsity",
        "0.8",
        "--seeds",
        "1",
        "--out",
        str(out),
        "--d-max",
        "10",
        "--lr",
        "0.01",
        "--batch-size",
        "128",
        "--max-steps",
        "20",
        "--eval-every",
        "20",
        "--verbose",
        "0",
    ]
    assert cli.main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["name"] == "gowalla"
    assert results["dataset"]["num_users"] == 60
    assert results["paper"]["es__c0.8"]["recall@20"] == 0.1674
    assert results["command"].startswith("python -m tfembsize.protocol --data-dir")
    assert "machine" in results and "date" in results
    md = (out / "results.md").read_text()
    assert ".1674 / .1400 (LightGCN; paper has no MF column)" in md
    assert "BET paper (Qu et al., WSDM 2024)" in md
    cell = results["cells"][0]
    assert cell["usable_params"] <= np.floor(0.2 * 10 * 140)


def test_a_search_method_uses_the_context_environment(tmp_path, split):
    """The pattern later controllers follow: a search in ctx.environment(), resumable."""
    from tfembsize.controllers import ES
    from tfembsize.search import run

    seen = []

    def searched_es(ctx):
        env = ctx.environment()
        result = run(ES(sparsity=ctx.sparsity, seed=ctx.seed), env, ctx.directory, verbose=0)
        seen.append((ctx.method, ctx.sparsities, env.reference().quality))
        return MethodOutput(plan=result.best_plan, info={"steps": len(result.history)})

    register_method("searched-es", searched_es, overwrite=True)
    try:
        from tfembsize.models import train_bpr

        calls = []

        def counting_train(model, split, evaluator, *, config):
            calls.append(model.usable_params())
            return train_bpr(model, split, evaluator, config=config)

        config = _config(tmp_path, ("searched-es",), sparsities=(0.75, 0.875))
        report = run_protocol(config, split=split, verbose=0, train_fn=counting_train)
    finally:
        unregister_method("searched-es")
    assert [c.usable_params for c in report.cells] == [280, 140]  # sizes 2 and 1, 140 rows
    assert [c.info["steps"] for c in report.cells] == [1, 1]
    assert seen[0][:2] == ("searched-es", (0.75, 0.875))
    assert seen[0][2] == seen[1][2]  # one reference, pretrained once and shared by the cells
    # pretraining (full size) once; per cell one search step and one retraining
    assert calls == [8 * 140, 280, 280, 140, 140]
    work = tmp_path / "work"
    assert (work / "reference__seed0" / "reference_weights.npz").exists()
    assert (work / "searched-es__c0.75__seed0" / "run.json").exists()


def test_retraining_is_checkpointed_in_the_cell_and_cleaned_when_the_cell_is_done(tmp_path, split):
    from tfembsize.models import train_bpr

    dirs = []

    def checkpointed_train(model, split, evaluator, *, config, checkpoint_dir):
        dirs.append(checkpoint_dir)
        result = train_bpr(model, split, evaluator, config=config, checkpoint_dir=checkpoint_dir)
        assert (Path(checkpoint_dir) / "LATEST").is_file()  # written while the cell runs
        return result

    config = _config(tmp_path, ("es",), sparsities=(0.75,))
    report = run_protocol(config, split=split, verbose=0, train_fn=checkpointed_train)
    cell_dir = tmp_path / "work" / "es__c0.75__seed0"
    assert len(dirs) == 1 and Path(dirs[0]).parent == cell_dir / "training"
    assert not (cell_dir / "training").exists()  # the cell JSON is written: no longer needed
    assert report.cells[0].usable_params == 280


def _cell(method, val_recall):
    from tfembsize.protocol import CellResult

    return CellResult(
        method=method,
        sparsity=0.9,
        seed=0,
        test={"recall@20": 0.0},
        validation={"recall@20": val_recall},
        usable_params=1,
        num_rows=1,
        budget=1,
        sparsity_reached=0.9,
        best_step=1,
        train_steps=1,
        retrain_time=0.0,
        method_time=0.0,
        steps_per_second=1.0,
    )


def test_untrained_cells_are_those_below_1_05_times_popularity_on_validation():
    from tfembsize.protocol import untrained_cells

    pop = {"validation": {"recall@20": 0.2}, "test": {"recall@20": 0.9}}
    cells = [_cell("a", 0.2099), _cell("b", 0.2101), _cell("c", 0.1), _cell("d", 0.5)]
    # 1.05 * 0.2 = 0.21; the test numbers play no part.
    assert untrained_cells(cells, pop) == ["a__c0.9__seed0", "c__c0.9__seed0"]
    assert untrained_cells(cells, {}) == []


def test_a_cell_that_did_not_train_is_flagged_in_the_log_and_the_report(tmp_path, split, caplog):
    # lr 1e-9: the tables stay at their N(0, 0.01) initialisation, i.e. random scores, which
    # rank far worse than popularity on this data.
    frozen = RECIPE.replace(learning_rate=1e-9)
    config = _config(tmp_path, ("es",), sparsities=(0.75,), train_config=frozen)
    # run_protocol is called with verbose=0 elsewhere; the warning is logged regardless.
    with caplog.at_level("WARNING", logger="tfembsize.protocol.runner"):
        report = run_protocol(config, split=split, verbose=0)
    assert report.cells[0].validation["recall@20"] < report.popularity["validation"]["recall@20"]
    assert "es__c0.75__seed0: validation R@20" in caplog.text
    assert "may not have trained" in caplog.text
    md = (tmp_path / "results.md").read_text()
    assert "**Warning:** es__c0.75__seed0: validation R@20 below 1.05x" in md
