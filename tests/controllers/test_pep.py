"""PEP's capture controller, pruning phase, lottery tickets and run_pep on small data."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest

from tfembsize._keras import keras
from tfembsize.controllers.pep import (
    PEPConfig,
    PEPController,
    pep_model,
    prune,
    retrain_ticket,
    run_pep,
    ticket_model,
)
from tfembsize.controllers.pep import tickets as pep_tickets
from tfembsize.errors import BudgetExceededError
from tfembsize.layers.pep_embedding import PEPAdam, PEPEmbedding, find_pep_layers


def logit(p: float) -> float:
    return math.log(p / (1 - p))


def two_tables():
    """Tables of 5 x 4 and 7 x 4 whose |E| are 0.01, 0.02, ..., 0.48 (48 entries, N = 12)."""
    a = PEPEmbedding(5, 4, granularity="global", name="a")
    b = PEPEmbedding(7, 4, granularity="global", name="b")
    values = np.arange(1, 49, dtype=np.float32) / 100 * np.where(np.arange(48) % 2, 1, -1)
    for layer, chunk in ((a, values[:20]), (b, values[20:])):
        layer.build(None)
        layer.embeddings.assign(chunk.reshape(-1, 4))
    return a, b


def set_threshold(layers, t):
    for layer in layers:
        layer.threshold.assign([logit(t)])


# Controller ---------------------------------------------------------------------------------


def test_captures_at_first_crossing_within_budget(tmp_path):
    a, b = two_tables()
    # full table 48 entries: B(0.5) = 24, B(0.75) = 12, B(0.9) = floor(4.8) = 4
    controller = PEPController((0.9, 0.5, 0.75), directory=tmp_path).attach([a, b])
    assert controller.sparsities == (0.5, 0.75, 0.9)
    assert (controller.d_max, controller.num_rows) == (4, 12)
    assert [controller.limit(c) for c in controller.sparsities] == [24, 12, 4]
    assert controller.next_limit() == 24
    set_threshold([a, b], 0.185)  # |E| > 0.185: 30 usable
    assert controller.observe(1) == [] and controller.last_usable == 30
    set_threshold([a, b], 0.285)  # 20 usable: under B(0.5) only
    (first,) = controller.observe(2)
    assert (first.sparsity, first.step, first.usable_params, first.limit) == (0.5, 2, 20, 24)
    assert first.layer_params == {"a": 0, "b": 20}
    np.testing.assert_array_equal(first.masks["b"], np.abs(b.embeddings.numpy()) > 0.285)
    assert controller.next_limit() == 12
    set_threshold([a, b], 0.455)  # 3 usable: under B(0.75) and B(0.9) at once
    second, third = controller.observe(3)
    assert (second.sparsity, third.sparsity) == (0.75, 0.9)
    assert second.step == third.step == 3 and second.usable_params == 3
    assert controller.done and controller.next_limit() is None
    # the first capture is untouched by later steps
    assert controller.captures[0.5].usable_params == 20
    # written as they were captured
    saved = np.load(tmp_path / "masks_0p5.npz")
    np.testing.assert_array_equal(saved["b"], first.masks["b"])
    assert sorted(saved.files) == ["__checksum__", "a", "b"]  # and the writer's checksum
    state = json.loads((tmp_path / "pep_state.json").read_text())
    assert [d["step"] for d in state["captures"]] == [2, 3, 3]
    assert state["missed"] == []


def test_missed_targets_are_reported_and_nothing_is_saved_for_them(tmp_path, caplog):
    a, b = two_tables()
    controller = PEPController((0.5, 0.99), directory=tmp_path).attach({"a": a, "b": b})
    set_threshold([a, b], 0.285)
    controller.observe(10)
    assert controller.limit(0.99) == 0
    assert controller.finish(10) == (0.99,)
    assert controller.missed == (0.99,) and controller.done
    assert "not reached within 10 steps" in caplog.text
    assert sorted(os.listdir(tmp_path)) == ["masks_0p5.npz", "pep_state.json"]
    assert json.loads((tmp_path / "pep_state.json").read_text())["missed"] == [0.99]


def test_state_round_trip_and_tampered_masks(tmp_path):
    a, b = two_tables()
    controller = PEPController((0.5, 0.9), directory=tmp_path).attach([a, b])
    set_threshold([a, b], 0.285)
    controller.observe(4)
    restored = PEPController((0.5, 0.9)).attach([a, b])
    assert restored.restore(tmp_path)
    assert restored.captures[0.5].step == 4 and restored.pending == (0.9,)
    np.testing.assert_array_equal(
        restored.captures[0.5].masks["b"], controller.captures[0.5].masks["b"]
    )
    assert not PEPController(0.5).restore(tmp_path / "nothing")
    with pytest.raises(ValueError, match=r"The saved run has targets \[0.5, 0.9\]"):
        PEPController((0.5, 0.8)).restore(tmp_path)
    # an over-budget mask on disk is refused
    np.savez(tmp_path / "masks_0p5.npz", a=np.ones((5, 4), bool), b=np.ones((7, 4), bool))
    with pytest.raises(BudgetExceededError, match=r"hold 48 usable parameters"):
        PEPController((0.5, 0.9)).restore(tmp_path)


@pytest.mark.parametrize(
    "sparsity, match",
    [
        (1.2, r"`sparsity` must be in \(0, 1\)\. Received: sparsity=1.2"),
        ((0.5, 0.5), r"`sparsity` values must be distinct"),
        ((), r"non-empty sequence"),
        ("0.5", r"non-empty sequence"),
    ],
)
def test_controller_argument_errors(sparsity, match):
    with pytest.raises(ValueError, match=match):
        PEPController(sparsity)


def test_attach_errors():
    with pytest.raises(RuntimeError, match=r"call `attach\(model\)` first"):
        PEPController(0.5).observe(1)
    with pytest.raises(ValueError, match=r"PEP needs PEPEmbedding tables"):
        PEPController(0.5).attach(keras.Sequential([keras.layers.Embedding(3, 2)]))
    with pytest.raises(ValueError, match=r"share one width d_max\. Received widths \[2, 3\]"):
        PEPController(0.5).attach([PEPEmbedding(3, 2, name="x"), PEPEmbedding(3, 3, name="y")])


def test_config_validation_and_round_trip():
    config = PEPConfig(threshold_init=-8, threshold_lr=0.05, max_steps=10)
    assert PEPConfig.from_dict(config.to_dict()) == config
    opt = config.optimizer()
    assert isinstance(opt, PEPAdam) and opt.threshold_lr == 0.05 and opt.global_clipnorm == 100.0
    with pytest.raises(ValueError, match=r"`rewind` must be 'initial' or 'fresh'"):
        PEPConfig(rewind="random")
    with pytest.raises(ValueError, match=r"`threshold_lr` must be a positive number"):
        PEPConfig(threshold_lr=0.0)
    with pytest.raises(ValueError, match=r"`check_every` must be a positive integer"):
        PEPConfig(check_every=0)
    with pytest.raises(ValueError, match=r"Unknown PEPConfig fields \['lr'\]"):
        PEPConfig.from_dict({"lr": 1})


# Models -------------------------------------------------------------------------------------


def test_pep_model_converts_every_table():
    from tfembsize.models import MF, NCF

    mf = MF.create(6, 9, 8)
    converted = pep_model(mf, PEPConfig(granularity="feature", threshold_init=-3.0))
    layers = find_pep_layers(converted)
    assert sorted(layers) == ["item_embedding", "user_embedding"]
    assert (layers["item_embedding"].input_dim, layers["item_embedding"].output_dim) == (9, 8)
    assert layers["user_embedding"].granularity == "feature"
    assert layers["user_embedding"].threshold_init == -3.0
    assert isinstance(
        layers["user_embedding"].embeddings_initializer,
        type(mf.user_embedding.embeddings_initializer),
    )
    assert pep_model(converted) is converted
    ncf = pep_model(NCF.create(6, 9, 8))
    assert len(find_pep_layers(ncf)) == 4
    with pytest.raises(ValueError, match=r"has no embedding table"):
        pep_model(keras.Sequential([keras.layers.Dense(2)]))


def small_split():
    from tfembsize.data import synthetic

    return synthetic(40, 60, 600, seed=0).split(0.5, 0.25, 0.25, seed=42)


def builder(split):
    from tfembsize.models import MF

    return lambda seed: MF.create(split.num_users, split.num_items, 8)


FAST = PEPConfig(threshold_init=-8.0, threshold_lr=0.05, batch_size=32, chunk_steps=40)


def test_callback_captures_during_fit():
    from tfembsize.data import bpr_dataset

    split = small_split()
    keras.utils.set_random_seed(0)
    model = pep_model(builder(split)(0), FAST)
    model.compile(optimizer=FAST.optimizer())
    controller = PEPController((0.5, 0.8))
    callback = controller.callback()
    model.fit(
        bpr_dataset(split.train, 32, seed=0),
        steps_per_epoch=100,
        epochs=5,
        verbose=0,
        callbacks=[callback],
    )
    assert controller.done and not controller.missed
    for c, capture in controller.captures.items():
        assert capture.usable_params <= capture.limit == controller.limit(c)
    # stopped as soon as the last target was captured
    assert callback.step == controller.captures[0.8].step < 500
    assert controller.captures[0.5].step < controller.captures[0.8].step


# Pruning phase, resume, tickets ----------------------------------------------------------------


def test_prune_resumes_to_the_same_captures(tmp_path):
    split = small_split()
    targets = (0.5, 0.8, 0.9)

    def run(directory, max_steps):
        model = pep_tickets._build(builder(split), 3, FAST)
        return prune(
            model,
            split,
            PEPController(targets),
            config=FAST.replace(max_steps=max_steps),
            seed=3,
            directory=directory,
        )

    whole = run(tmp_path / "whole", 400)
    assert set(whole.captures) == set(targets) and not whole.missed
    limits = {c: cap.limit for c, cap in whole.captures.items()}
    assert limits == {0.5: 400, 0.8: 160, 0.9: 80}  # N = 100 rows, d = 8
    for cap in whole.captures.values():
        assert cap.usable_params <= cap.limit
        assert sum(m.sum() for m in cap.masks.values()) == cap.usable_params
    steps = [whole.captures[c].step for c in targets]
    assert steps == sorted(steps) and steps[0] > 0
    # interrupted after the first capture (the rest missed at that max_steps), then resumed
    stop = whole.captures[0.5].step + 1
    first = run(tmp_path / "split", stop)
    assert set(first.captures) == {0.5} and first.missed == (0.8, 0.9)
    resumed = run(tmp_path / "split", 400)
    assert not resumed.missed and resumed.steps == whole.steps
    for c in targets:
        assert resumed.captures[c].step == whole.captures[c].step
        for name in ("user_embedding", "item_embedding"):
            np.testing.assert_array_equal(
                resumed.captures[c].masks[name], whole.captures[c].masks[name]
            )
    for name, table in whole.initial_tables.items():
        np.testing.assert_array_equal(resumed.initial_tables[name], table)


def test_ticket_rewinds_and_retraining_keeps_the_budget(tmp_path):
    from tfembsize.metrics import RankingEvaluator
    from tfembsize.models import TrainConfig

    split = small_split()
    make = builder(split)
    results = run_pep(
        split,
        make,
        (0.8, 0.999),
        TrainConfig(max_steps=40, eval_every=20, batch_size=32),
        seed=5,
        directory=tmp_path,
        pep=FAST.replace(max_steps=300),
    )
    ok, missed = results[0.8], results[0.999]
    assert (ok.status, missed.status) == ("ok", "missed")
    assert (
        missed.capture is None
        and missed.budget == 0
        and not (tmp_path / "masks_0p999.npz").exists()
    )
    assert ok.usable_params == ok.capture.usable_params <= ok.budget == 160
    assert ok.train["best_step"] in (20, 40) and 0 <= ok.metric("test", "recall@20") <= 1
    # the retrained model: frozen, pruned entries zero, same mask
    for name, layer in find_pep_layers(ok.model).items():
        assert layer.is_frozen
        np.testing.assert_array_equal(layer.pruning_mask(), ok.capture.masks[name])
        assert not layer.pruned_table().numpy()[~ok.capture.masks[name]].any()
    # the ticket before training: E = E0 * M, other weights from the seed
    initial = np.load(tmp_path / "initial_tables.npz")
    ticket = ok.build_model()
    for name, layer in find_pep_layers(ticket).items():
        np.testing.assert_array_equal(
            layer.embeddings.numpy(), initial[name] * ok.capture.masks[name]
        )
    # results are kept: a rerun skips the retraining
    again = run_pep(
        split,
        make,
        (0.8, 0.999),
        TrainConfig(max_steps=40, eval_every=20, batch_size=32),
        seed=5,
        directory=tmp_path,
        pep=FAST.replace(max_steps=300),
    )
    assert again[0.8].model is None and again[0.8].train == ok.train
    # a mask over the budget is refused before any training
    masks = {k: np.ones_like(v) for k, v in ok.capture.masks.items()}
    fat = ticket_model(make, 5, masks, initial, FAST)
    with pytest.raises(BudgetExceededError, match=r"PEP ticket for sparsity 0.8 uses 800"):
        retrain_ticket(fat, split, RankingEvaluator(split), 0.8)


def test_fresh_rewind_uses_another_initialisation():
    split = small_split()
    make = builder(split)
    masks = {
        "user_embedding": np.ones((split.num_users, 8), bool),
        "item_embedding": np.zeros((split.num_items, 8), bool),
    }
    initial = {
        "user_embedding": np.full((split.num_users, 8), 0.5, np.float32),
        "item_embedding": np.full((split.num_items, 8), 0.5, np.float32),
    }
    model = ticket_model(make, 1, masks, initial, FAST.replace(rewind="fresh"))
    users = find_pep_layers(model)["user_embedding"].embeddings.numpy()
    assert not np.any(users == 0.5) and users.std() > 0
    assert not find_pep_layers(model)["item_embedding"].embeddings.numpy().any()
    with pytest.raises(ValueError, match=r"The masks are for tables \['user_embedding'\]"):
        ticket_model(make, 1, {"user_embedding": masks["user_embedding"]}, initial, FAST)


def test_pruning_compiled_with_xla_captures_the_same_masks():
    split = small_split()
    targets = (0.5, 0.8, 0.9)
    results = []
    for jit in (False, True):
        config = FAST.replace(max_steps=400, jit_compile=jit)
        model = pep_tickets._build(builder(split), 3, config)
        results.append(prune(model, split, PEPController(targets), config=config, seed=3))
    plain, xla = results
    assert set(plain.captures) == set(xla.captures) == set(targets)
    for c in targets:
        assert xla.captures[c].step == plain.captures[c].step
        for name, mask in plain.captures[c].masks.items():
            np.testing.assert_array_equal(xla.captures[c].masks[name], mask)
