"""PEP in the paper protocol: one shared pruning run per seed, a ticket per cell, budgets."""

import json

import numpy as np
import pytest

from tfembsize._io import read_npz
from tfembsize.budget import Budget
from tfembsize.data import synthetic
from tfembsize.layers.pep_embedding import PEPEmbedding, find_pep_layers
from tfembsize.models import TrainConfig, train_bpr
from tfembsize.protocol import ProtocolConfig, available_methods, get_method, run_protocol
from tfembsize.protocol.methods.pep import pep_config

D = 8
RECIPE = TrainConfig(learning_rate=0.01, batch_size=32, max_steps=40, eval_every=20, patience=1)
FAST = {
    "learning_rate": 1e-3,
    "threshold_init": -8.0,
    "threshold_lr": 0.05,
    "chunk_steps": 40,
    "max_steps": 400,
}


@pytest.fixture(scope="module")
def split():
    return synthetic(40, 60, 600, seed=0).split(0.5, 0.25, 0.25, seed=42)


def _config(out, sparsities=(0.5, 0.8), options=FAST):
    return ProtocolConfig(
        dataset="synthetic",
        backbone="mf",
        methods=("pep",),
        sparsities=sparsities,
        seeds=(0,),
        out=str(out),
        d_max=D,
        train_config=RECIPE,
        method_options={"pep": dict(options)},
    )


class Trainer:
    """train_bpr recording the models it trains."""

    def __init__(self):
        self.models = []

    def __call__(self, model, split, evaluator, *, config):
        self.models.append(model)
        return train_bpr(model, split, evaluator, config=config)


def test_pep_is_registered_and_its_config_follows_the_recipe():
    assert "pep" in available_methods()
    assert get_method("pep").budgeted is True
    cfg = pep_config({"max_steps": 7}, RECIPE)
    assert (cfg.learning_rate, cfg.batch_size, cfg.max_steps) == (0.01, 32, 7)
    assert (cfg.threshold_init, cfg.threshold_lr, cfg.threshold_l2) == (-15.0, 1e-3, 1e-5)
    with pytest.raises(ValueError, match=r"Unknown PEPConfig fields \['tlr'\]"):
        pep_config({"tlr": 1.0})


def test_pep_cells_share_one_pruning_run_and_retrain_tickets_within_budget(tmp_path, split):
    trainer = Trainer()
    report = run_protocol(_config(tmp_path), split=split, verbose=0, train_fn=trainer)
    cells = {c.sparsity: c for c in report.cells}
    assert sorted(cells) == [0.5, 0.8] and not report.pending
    rows = split.num_users + split.num_items
    shared = tmp_path / "work" / "pep__shared__seed0"
    state = json.loads((shared / "pep_state.json").read_text())
    steps = {d["sparsity"]: d["step"] for d in state["captures"]}
    for c, cell in cells.items():
        limit = Budget(sparsity=c, d_max=D).max_params_for(rows)
        assert cell.budget == limit and cell.usable_params <= limit
        assert cell.info["capture_step"] == steps[c]
        assert cell.info["capture_usable_params"] == cell.usable_params  # frozen mask count
        assert cell.info["index_overhead"]["column_indices"] == cell.usable_params
        assert cell.info["pruning"]["batch_size"] == RECIPE.batch_size
        assert cell.info["pruning_directory"] == "pep__shared__seed0"
    assert steps[0.5] < steps[0.8]
    # one pruning run for both cells; each cell retrained its own frozen ticket by the recipe
    assert len(trainer.models) == 2
    masks = {c: read_npz(shared / f"masks_{str(c).replace('.', 'p')}.npz") for c in cells}
    initial = read_npz(shared / "initial_tables.npz")  # checksums verified, then left out
    for c, model in zip((0.5, 0.8), trainer.models, strict=True):
        layers = find_pep_layers(model)
        assert sorted(layers) == ["item_embedding", "user_embedding"]
        for name, layer in layers.items():
            assert isinstance(layer, PEPEmbedding) and layer.is_frozen
            mask = masks[c][name]
            np.testing.assert_array_equal(layer.pruning_mask(), mask)
            assert not layer.embeddings.numpy()[~mask].any()  # pruned entries stayed zero
        assert sum(int(m.sum()) for m in masks[c].values()) == cells[c].usable_params
        # the kept coordinates the training pairs' users and items share, measured on the mask
        um, im = masks[c]["user_embedding"], masks[c]["item_embedding"]
        u, i = np.asarray(split.train.users), np.asarray(split.train.items)
        shared = (um[u] & im[i]).sum(axis=1)
        overlap = cells[c].info["overlap"]
        assert overlap["pairs"] == len(u)
        assert overlap["mean_shared"] == pytest.approx(shared.mean())
        assert overlap["zero_shared_fraction"] == pytest.approx(np.mean(shared == 0))
        assert cells[c].info["ticket"] == "entries"
    assert initial["user_embedding"].shape == (split.num_users, D)
    # a rerun reuses the finished cells: nothing is trained again
    again = Trainer()
    run_protocol(_config(tmp_path), split=split, verbose=0, train_fn=again)
    assert again.models == []


def test_a_missed_target_fails_its_cell_without_an_over_budget_mask(tmp_path, split):
    options = {**FAST, "max_steps": 3}
    with pytest.raises(RuntimeError, match=r"PEP did not reach sparsity 0.8 .* max_steps=3"):
        run_protocol(_config(tmp_path, (0.8,), options), split=split, verbose=0)
    shared = tmp_path / "work" / "pep__shared__seed0"
    assert not list(shared.glob("masks_*.npz"))
    assert json.loads((shared / "pep_state.json").read_text())["missed"] == [0.8]
