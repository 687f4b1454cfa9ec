"""ESAPN in the paper protocol: one stream per seed, the sparsity reached, the optional cap."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tfembsize.budget import Budget
from tfembsize.data import synthetic
from tfembsize.layers import LadderEmbedding
from tfembsize.models import TrainConfig, train_bpr
from tfembsize.protocol import ProtocolConfig, cli, get_method, run_protocol
from tfembsize.protocol.methods.esapn import ESAPNSettings, esapn_config

D = 8
RECIPE = TrainConfig(learning_rate=0.01, batch_size=32, max_steps=40, eval_every=20, patience=1)
OPTIONS = {"epochs": 1, "ladder": [2, 4, 8]}


@pytest.fixture(scope="module")
def split():
    return synthetic(40, 60, 600, seed=0).split(0.5, 0.25, 0.25, seed=42)


class Trainer:
    """train_bpr recording the models it trains (ESAPN's stream does not go through it)."""

    def __init__(self):
        self.models = []

    def __call__(self, model, split, evaluator, *, config):
        self.models.append(model)
        return train_bpr(model, split, evaluator, config=config)


def _config(out):
    return ProtocolConfig(
        dataset="synthetic",
        backbone="mf",
        methods=("esapn", "esapn-cap"),
        sparsities=(0.7,),
        seeds=(0,),
        out=str(out),
        d_max=D,
        train_config=RECIPE,
        method_options={"esapn": dict(OPTIONS), "esapn-cap": dict(OPTIONS)},
    )


def test_registration_settings_and_config():
    assert get_method("esapn").budgeted is False
    assert get_method("esapn-cap").budgeted is True
    assert get_method("esapn-cap").group == "esapn" == get_method("esapn").group
    settings = ESAPNSettings(ladder=[2, 4, 8], epochs=2)
    assert settings.ladder == (2, 4, 8)
    config = esapn_config(settings, RECIPE, d_max=D, seed=4, budget_cap=0.9)
    assert (config.learning_rate, config.batch_size, config.chunk_steps) == (0.01, 32, 20)
    assert (config.seed, config.epochs, config.budget_cap, config.memory) == (4, 2, 0.9, 5)
    assert config.policy_learning_rate == 1e-4
    assert esapn_config(ESAPNSettings(), RECIPE, d_max=128, seed=0).ladder == (
        2,
        4,
        8,
        16,
        64,
        128,
    )
    with pytest.raises(ValueError, match=r"`ladder` must end at d_max=16"):
        esapn_config(settings, RECIPE, d_max=16, seed=0)
    with pytest.raises(ValueError, match=r"`epochs` must be a positive integer"):
        ESAPNSettings(epochs=0)
    with pytest.raises(ValueError, match=r"`ladder` must be a non-empty, strictly increasing"):
        ESAPNSettings(ladder=(8, 4))


def test_command_line_options(capsys):
    args = cli.parse_args(
        ["--methods", "esapn,esapn-cap", "--esapn-epochs", "2", "--esapn-ladder", "2,4,8"]
    )
    assert args.method_settings == {"esapn": {"epochs": 2, "ladder": (2, 4, 8)}}
    config = cli.build_config(args)
    assert config.method_options["esapn-cap"] == {"epochs": 2, "ladder": (2, 4, 8)}
    with pytest.raises(SystemExit):
        cli.parse_args(["--esapn-memory", "0"])
    assert "`memory` must be a positive integer" in capsys.readouterr().err


def test_esapn_runs_once_per_seed_and_the_cap_per_sparsity_within_budget(tmp_path, split):
    trainer = Trainer()
    report = run_protocol(_config(tmp_path), split=split, verbose=0, train_fn=trainer)
    cells = {c.method: c for c in report.cells}
    assert sorted(cells) == ["esapn", "esapn-cap"] and not report.pending
    rows = split.num_users + split.num_items
    free, capped = cells["esapn"], cells["esapn-cap"]
    assert free.sparsity is None and free.budget is None
    for cell in (free, capped):
        assert cell.num_rows == rows
        assert cell.sparsity_reached == pytest.approx(1 - cell.usable_params / (D * rows))
        assert 2 * rows <= cell.usable_params <= D * rows
        assert cell.train_steps == cell.best_step == -(-split.train.num_interactions // 32)
        sizes = cell.info["sizes"]
        assert sizes["usable_params"] == cell.usable_params
        assert sizes["user_overhead"] == {"maps": 2 * 4 + 4 + 4 * 8 + 8, "batch_norm": 32}
        assert cell.info["esapn"]["ladder"] == [2, 4, 8]
        assert cell.info["esapn"]["count_buckets"] >= 2
        assert {"recall@20", "ndcg@20"} <= set(cell.test) and cell.validation["quality"] >= 0
    limit = Budget(sparsity=0.7, d_max=D).max_params_for(rows)
    assert capped.sparsity == 0.7 and capped.budget == limit and capped.usable_params <= limit
    assert capped.info["esapn"]["budget_cap"] == 0.7 and free.info["esapn"]["budget_cap"] is None
    assert trainer.models == []  # the end-of-stream models are the results: no retraining
    results = json.loads((tmp_path / "results.json").read_text())
    assert {r["method"] for r in results["summary"]} == {"esapn", "esapn-cap"}
    assert "reached" in (tmp_path / "results.md").read_text()
    # the end-of-stream sizes are kept beside the cell (for sizes-against-frequency views)
    from tfembsize import _io

    for cell in (free, capped):
        folder = tmp_path / "work" / cell.key()
        kept = _io.read_npz(folder / cell.info["sizes_file"])
        assert {"item_embedding", "user_embedding"} <= set(kept)
        for side in ("user", "item"):  # the policies' grow probabilities on a count grid
            grid, grow = kept[f"{side}_grid_counts"], kept[f"{side}_grow_probability"]
            assert grid[0] == 0 and np.all(np.diff(grid) > 0)
            assert grow.shape == (grid.size, 2)  # rungs 0 and 1 of the ladder (2, 4, 8)
            assert np.all((grow >= 0) & (grow <= 1))
        assert len(kept["user_embedding"]) == split.num_users
        assert (
            int(kept["user_embedding"].sum() + kept["item_embedding"].sum()) == cell.usable_params
        )
        assert set(np.unique(kept["user_embedding"])) <= {2, 4, 8}
    # the working directories' checkpoints are gone once the cells are written
    assert not (tmp_path / "work" / "esapn__cnone__seed0" / "training").exists()
    again = run_protocol(_config(tmp_path), split=split, verbose=0)  # nothing left to run
    assert {c.key() for c in again.cells} == {c.key() for c in report.cells}


def test_models_in_the_cells_use_ladder_tables(tmp_path, split, monkeypatch):
    from tfembsize.protocol.methods import esapn as esapn_module

    seen = []
    original = esapn_module._method

    def spy(ctx, capped):
        out = original(ctx, capped)
        seen.append(out.retrained.model)
        return out

    monkeypatch.setattr(esapn_module, "_method", spy)
    config = ProtocolConfig(
        dataset="synthetic",
        backbone="lightgcn",
        methods=("esapn",),
        seeds=(1,),
        out=str(tmp_path),
        d_max=D,
        train_config=RECIPE,
        method_options={"esapn": dict(OPTIONS)},
    )
    report = run_protocol(config, split=split, verbose=0)
    assert len(report.cells) == 1 and len(seen) == 1
    model = seen[0]
    assert isinstance(model.user_embedding, LadderEmbedding)
    assert isinstance(model.item_embedding, LadderEmbedding)
    assert report.cells[0].usable_params == (
        model.user_embedding.usable_params() + model.item_embedding.usable_params()
    )
