"""train_bpr and ValidationRanking: early stopping on validation only, NaN, schedule, presets."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import tensorflow as tf

from tfembsize._keras import keras
from tfembsize.data import bpr_dataset, synthetic
from tfembsize.layers import BudgetedEmbedding
from tfembsize.metrics import RankingEvaluator
from tfembsize.models import (
    MF,
    NCF,
    NGCF,
    PRESETS,
    LightGCN,
    NonFiniteLossError,
    StaircaseDecay,
    TrainConfig,
    ValidationRanking,
    default_config,
    popularity_scorer,
    train_bpr,
)


@pytest.fixture(scope="module")
def small_split():
    return synthetic(60, 80, 1500, seed=3).split(0.5, 0.25, 0.25, seed=42)


# Spies -------------------------------------------------------------------------------------
class SpySplit:
    """Forwards to a Split and records which attributes were read."""

    def __init__(self, split):
        self._split = split
        self.read: list[str] = []

    def __getattr__(self, name):
        self.read.append(name)
        return getattr(self._split, name)


@dataclasses.dataclass
class FakeResult:
    value: float

    def recall_at(self, k):
        return self.value

    def ndcg_at(self, k):
        return self.value / 2

    @property
    def quality(self):
        return self.value / 3

    def to_dict(self):
        return {"value": self.value}


class ScriptedEvaluator:
    """Returns scripted validation values; records phases and the weights at each call."""

    ks = (5, 10, 20)

    def __init__(self, model, values, test_value=0.99):
        self.model = model
        self.values = list(values)
        self.test_value = test_value
        self.phases: list[str] = []
        self.weights: list = []

    def evaluate(self, scorer, phase="validation"):
        self.phases.append(phase)
        if phase == "test":
            return FakeResult(self.test_value)
        self.weights.append(self.model.get_weights())
        return FakeResult(self.values[len(self.weights) - 1])


def _backbone(name, split, d=8):
    if name == "mf":
        return MF.create(split.num_users, split.num_items, d)
    if name == "ncf":
        return NCF.create(split.num_users, split.num_items, d)
    if name == "ngcf":
        return NGCF.create(split.train, d, layer_sizes=(d, d))
    return LightGCN.create(split.train, d)


# Schedule and config ---------------------------------------------------------------------
def test_staircase_decay_values():
    s = StaircaseDecay(0.03, 0.9, 200, 1e-3)
    for step in (0, 199, 200, 401, 5000, 10**6):
        expected = max(0.03 * 0.9 ** (step // 200), 1e-3)
        assert float(s(step)) == pytest.approx(expected, rel=1e-5)
        assert s.value_at(step) == pytest.approx(expected)
    assert float(s(10**6)) == pytest.approx(1e-3)
    clone = StaircaseDecay.from_config(s.get_config())
    assert clone.get_config() == s.get_config()


def test_staircase_decay_drives_the_optimizer():
    schedule = StaircaseDecay(0.1, 0.5, 2, 0.02)
    opt = keras.optimizers.Adam(learning_rate=schedule)
    var = tf.Variable([1.0])
    opt.build([var])
    rates = []
    for _ in range(8):
        rates.append(float(schedule(opt.iterations)))
        opt.apply_gradients([(tf.constant([1.0]), var)])
    assert rates == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.025, 0.025, 0.02, 0.02])


def test_train_config_validation_and_presets():
    with pytest.raises(
        ValueError, match=r"`learning_rate` must be a positive float. Received: learning_rate=0"
    ):
        TrainConfig(learning_rate=0)
    with pytest.raises(
        ValueError, match=r"`decay_rate` must be in \(0, 1\]. Received: decay_rate=1.5"
    ):
        TrainConfig(decay_rate=1.5)
    with pytest.raises(
        ValueError, match="`eval_every` must be a positive integer. Received: eval_every=0"
    ):
        TrainConfig(eval_every=0)
    with pytest.raises(ValueError, match=r"`monitor` must be .*Received: monitor='auc'"):
        TrainConfig(monitor="auc")
    with pytest.raises(ValueError, match="Unknown preset 'adam'"):
        TrainConfig.preset("adam")
    config = TrainConfig.preset("ciess-ngcf", max_steps=10)
    assert (config.learning_rate, config.decay_rate, config.decay_steps) == (0.03, 0.9, 100)
    assert config.min_learning_rate == 1e-3 and config.max_steps == 10
    assert config.learning_rate_at(250) == pytest.approx(0.03 * 0.81)
    assert TrainConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert isinstance(config.schedule(), StaircaseDecay)
    assert TrainConfig().schedule() == 1e-3
    # The measured-good MF recipe (benchmarks/results/lr_grid.md): constant 1e-3, batch 2048.
    assert default_config(MF.create(3, 3, 2)) == PRESETS["mf"]
    assert (PRESETS["mf"].learning_rate, PRESETS["mf"].batch_size) == (1e-3, 2048)
    assert PRESETS["mf"].decay_rate == 1.0
    assert default_config("ncf") is PRESETS["ncf"]


# train_bpr -------------------------------------------------------------------------------
def test_early_stopping_reads_validation_only_and_restores_the_best(small_split):
    model = MF.create(small_split.num_users, small_split.num_items, 8)
    evaluator = ScriptedEvaluator(model, [0.1, 0.3, 0.2, 0.25, 0.29, 0.9])
    spy = SpySplit(small_split)
    config = TrainConfig(max_steps=100, eval_every=5, patience=3, batch_size=16)
    result = train_bpr(model, spy, evaluator, config=config)
    # Validation only until the end, then one test evaluation.
    assert evaluator.phases == ["validation"] * 5 + ["test"]
    assert "test" not in spy.read and "validation" not in spy.read
    assert result.best_step == 10 and result.steps == 25 and result.stopped_early
    assert result.best_value == 0.3 and result.validation.value == 0.3
    assert result.test.value == 0.99
    assert [h.step for h in result.history] == [5, 10, 15, 20, 25]
    assert [h.value for h in result.history] == [0.1, 0.3, 0.2, 0.25, 0.29]
    for got, best in zip(model.get_weights(), evaluator.weights[1], strict=True):
        np.testing.assert_array_equal(got, best)
    assert json.dumps(result.to_dict())


def test_test_split_can_be_left_out_and_progress_is_shown(small_split, capsys, caplog):
    model = MF.create(small_split.num_users, small_split.num_items, 8)
    evaluator = ScriptedEvaluator(model, [0.1, 0.2])
    config = TrainConfig(max_steps=10, eval_every=5, batch_size=16, evaluate_test=False, verbose=1)
    with caplog.at_level("INFO", logger="tfembsize.training.loop"):
        result = train_bpr(model, small_split, evaluator, config=config)
    assert evaluator.phases == ["validation", "validation"]
    assert result.test is None and not result.stopped_early and result.best_step == 10
    assert "10/10" in capsys.readouterr().out  # the Keras progress bar
    assert "mf step 10: loss" in caplog.text and "validation recall@20 0.20000" in caplog.text


def test_parity_refit_trains_best_step_on_train_and_validation(small_split):
    model = LightGCN.create(small_split.train, 8, num_layers=1)
    initial = model.get_weights()
    evaluator = ScriptedEvaluator(model, [0.1, 0.3, 0.2, 0.2, 0.2])
    spy = SpySplit(small_split)
    config = TrainConfig(max_steps=50, eval_every=5, patience=3, batch_size=16, refit=True)
    result = train_bpr(model, spy, evaluator, config=config)
    assert result.best_step == 10 and result.refit_steps == 10
    assert evaluator.phases[-1] == "test" and evaluator.phases.count("test") == 1
    assert "test" not in spy.read
    assert model._num_edges == small_split.train_validation().num_interactions
    moved = [not np.array_equal(a, b) for a, b in zip(model.get_weights(), initial, strict=True)]
    assert any(moved)


def test_non_finite_loss_names_the_step(small_split):
    model = MF.create(small_split.num_users, small_split.num_items, 8)
    evaluator = RankingEvaluator(small_split)
    config = TrainConfig(learning_rate=1e30, max_steps=20, eval_every=10, batch_size=64)
    with pytest.raises(
        NonFiniteLossError, match=r"loss is (nan|inf) at step 2 \(learning rate 1e\+30\)"
    ) as info:
        train_bpr(model, small_split, evaluator, config=config)
    assert info.value.step == 2 and not math.isfinite(info.value.loss)


def test_optimizer_factory(small_split):
    model = MF.create(small_split.num_users, small_split.num_items, 8)
    seen = []

    def sgd(lr):
        seen.append(lr)
        return keras.optimizers.SGD(learning_rate=lr)

    config = TrainConfig.preset("bet-finetune", max_steps=10, eval_every=10, batch_size=16)
    config = config.replace(evaluate_test=False)
    train_bpr(model, small_split, RankingEvaluator(small_split), config=config, optimizer=sgd)
    assert isinstance(model.optimizer, keras.optimizers.SGD)
    assert len(seen) == 1 and isinstance(seen[0], StaircaseDecay)
    assert int(model.optimizer.iterations.numpy()) == 10
    with pytest.raises(TypeError, match="must be a callable returning a Keras optimizer"):
        train_bpr(model, small_split, RankingEvaluator(small_split), optimizer=lambda lr: lr)


def test_bad_inputs(small_split):
    evaluator = RankingEvaluator(small_split)
    with pytest.raises(TypeError, match="`model` must be a tfembsize BPR backbone"):
        train_bpr(keras.Sequential(), small_split, evaluator)
    model = MF.create(small_split.num_users, small_split.num_items, 4)
    with pytest.raises(TypeError, match="`config` must be a TrainConfig"):
        train_bpr(model, small_split, evaluator, config={"max_steps": 3})


def test_train_bpr_beats_popularity_on_ml100k(ml100k):
    evaluator = RankingEvaluator(ml100k)
    popularity = evaluator.evaluate(popularity_scorer(ml100k.train)).recall_at(20)
    model = MF.create(ml100k.num_users, ml100k.num_items, 128)
    config = TrainConfig(max_steps=300, eval_every=150)
    result = train_bpr(model, ml100k, evaluator, config=config)
    assert popularity > 0.1
    assert result.best_value > 1.3 * popularity
    assert result.history[-1].loss < result.history[0].loss < math.log(2)
    assert result.test.recall_at(20) > popularity
    # The restored weights give the recorded validation result.
    again = evaluator.evaluate(model.representations())
    assert again.recall_at(20) == pytest.approx(result.best_value, abs=1e-6)


def test_budgeted_tables_train_and_masked_coordinates_stay(small_split):
    user = BudgetedEmbedding(
        small_split.num_users, 16, sparsity=0.75, allocation="random", seed=1, name="user_embedding"
    )
    item = BudgetedEmbedding(
        small_split.num_items,
        16,
        sparsity=0.75,
        allocation="frequency",
        frequencies=small_split.item_frequencies,
        name="item_embedding",
        embeddings_initializer=keras.initializers.RandomNormal(0, 0.1),
    )
    model = MF(user, item)
    before = [user.embeddings.numpy(), item.embeddings.numpy()]
    result = train_bpr(
        model,
        small_split,
        RankingEvaluator(small_split),
        config=TrainConfig(max_steps=60, eval_every=30, batch_size=32, learning_rate=0.01),
    )
    assert result.history[-1].loss < result.history[0].loss
    for layer, w0 in zip((user, item), before, strict=True):
        w = layer.embeddings.numpy()
        mask = np.arange(16)[None, :] < layer.sizes[:, None]
        np.testing.assert_array_equal(w[~mask], w0[~mask])
        assert not np.allclose(w[mask], w0[mask])
        assert layer.usable_params() <= layer.max_params


@pytest.mark.parametrize("backbone", ["ncf", "ngcf", "lightgcn"])
def test_every_backbone_trains_with_train_bpr(small_split, backbone):
    model = _backbone(backbone, small_split)
    config = default_config(model).replace(max_steps=40, eval_every=20, batch_size=64)
    config = config.replace(learning_rate=0.01)
    result = train_bpr(model, small_split, RankingEvaluator(small_split), config=config)
    assert result.history[-1].loss < math.log(2)
    assert 0 < result.best_value <= 1 and result.test is not None


# fit + ValidationRanking -----------------------------------------------------------------
def test_fit_with_validation_ranking(small_split):
    model = MF.create(small_split.num_users, small_split.num_items, 8)
    evaluator = ScriptedEvaluator(model, [0.1, 0.4, 0.2, 0.3, 0.3, 0.9])
    callback = ValidationRanking(evaluator, monitor="recall@20", patience=3)
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    history = model.fit(
        bpr_dataset(small_split.train, 16, seed=0),
        steps_per_epoch=4,
        epochs=20,
        callbacks=[callback],
        verbose=0,
    )
    assert evaluator.phases == ["validation"] * 5
    assert len(history.history["loss"]) == 5
    assert history.history["val_recall@20"] == pytest.approx([0.1, 0.4, 0.2, 0.3, 0.3])
    assert history.history["val_quality"][1] == pytest.approx(0.4 / 3)
    assert callback.best_epoch == 1 and callback.best_step == 8
    assert callback.best_value == 0.4
    for got, best in zip(model.get_weights(), evaluator.weights[1], strict=True):
        np.testing.assert_array_equal(got, best)


@pytest.mark.parametrize("backbone", ["mf", "ncf", "ngcf", "lightgcn"])
def test_every_backbone_trains_with_fit(small_split, backbone):
    model = _backbone(backbone, small_split)
    model.compile(optimizer=keras.optimizers.Adam(0.01))
    callback = ValidationRanking(RankingEvaluator(small_split), monitor="quality", patience=5)
    history = model.fit(
        bpr_dataset(small_split.train, 64, seed=0),
        steps_per_epoch=10,
        epochs=2,
        callbacks=[callback],
        verbose=0,
    )
    losses = history.history["bpr_loss"]
    assert losses[1] < losses[0] < math.log(2) + 0.01
    assert len(history.history["val_quality"]) == 2 and callback.best_step in (10, 20)
    assert callback.best_value == max(history.history["val_quality"])


def test_fit_raises_on_non_finite_loss(small_split):
    model = MF.create(small_split.num_users, small_split.num_items, 8)
    model.compile(optimizer=keras.optimizers.Adam(1e30))
    callback = ValidationRanking(RankingEvaluator(small_split))
    with pytest.raises(NonFiniteLossError, match="at step 2"):
        model.fit(
            bpr_dataset(small_split.train, 64, seed=0),
            steps_per_epoch=5,
            epochs=2,
            callbacks=[callback],
            verbose=0,
        )


def test_validation_ranking_arguments(small_split):
    evaluator = RankingEvaluator(small_split)
    with pytest.raises(TypeError, match="`evaluator` must be a RankingEvaluator"):
        ValidationRanking(object())
    with pytest.raises(
        ValueError, match="`patience` must be a positive integer. Received: patience=0"
    ):
        ValidationRanking(evaluator, patience=0)
    with pytest.raises(ValueError, match="`monitor` must be"):
        ValidationRanking(evaluator, monitor="ndcg@x")


# Checkpoint and resume ---------------------------------------------------------------------
class _KilledError(RuntimeError):
    pass


class CrashingEvaluator:
    """A real evaluator that raises on its ``crash_at``-th validation call (1-based)."""

    def __init__(self, split, crash_at=None):
        self.inner = RankingEvaluator(split)
        self.crash_at = crash_at
        self.calls = 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def evaluate(self, *args, **kwargs):
        if kwargs.get("phase", "validation") == "validation":
            self.calls += 1
            if self.crash_at is not None and self.calls == self.crash_at:
                raise _KilledError(f"killed at evaluation {self.calls}")
        return self.inner.evaluate(*args, **kwargs)


def _fresh_mf(split):
    keras.utils.set_random_seed(7)
    return MF.create(split.num_users, split.num_items, 8)


def test_a_killed_run_resumes_to_the_uninterrupted_result(small_split, tmp_path):
    config = TrainConfig(
        learning_rate=0.01, max_steps=60, eval_every=10, patience=10, batch_size=32
    ).replace(decay_rate=0.9, decay_steps=7)
    reference = _fresh_mf(small_split)
    expected = train_bpr(reference, small_split, RankingEvaluator(small_split), config=config)

    ckpt = tmp_path / "ckpt"
    killed = _fresh_mf(small_split)
    with pytest.raises(_KilledError):
        train_bpr(
            killed,
            small_split,
            CrashingEvaluator(small_split, 4),
            config=config,
            checkpoint_dir=ckpt,
        )
    assert (ckpt / "LATEST").read_text().startswith("step-000000030")  # 3 chunks written

    resumed_model = _fresh_mf(small_split)  # a new process would start from scratch
    evaluator = CrashingEvaluator(small_split)
    resumed = train_bpr(resumed_model, small_split, evaluator, config=config, checkpoint_dir=ckpt)
    assert evaluator.calls == 3  # chunks 4, 5 and 6 only
    assert int(resumed_model.optimizer.iterations.numpy()) == 60
    assert [h.step for h in resumed.history] == [10, 20, 30, 40, 50, 60]
    np.testing.assert_allclose(
        [h.value for h in resumed.history], [h.value for h in expected.history], atol=1e-9
    )
    assert resumed.best_step == expected.best_step
    for got, want in zip(resumed_model.get_weights(), reference.get_weights(), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert resumed.test.recall_at(20) == pytest.approx(expected.test.recall_at(20), abs=1e-9)

    # A finished run answers from its checkpoint without training.
    again_model = _fresh_mf(small_split)
    evaluator = CrashingEvaluator(small_split, crash_at=1)  # any training would crash
    again = train_bpr(again_model, small_split, evaluator, config=config, checkpoint_dir=ckpt)
    assert again.best_step == resumed.best_step and again.steps == 60
    assert again.test.recall_at(20) == resumed.test.recall_at(20)
    for got, want in zip(again_model.get_weights(), resumed_model.get_weights(), strict=True):
        np.testing.assert_array_equal(got, want)
    assert (
        sorted(p.name for p in ckpt.iterdir() if not p.name.startswith("LATEST"))[0].startswith(
            "step-"
        )
        and len(list(ckpt.iterdir())) == 2
    )  # LATEST + one checkpoint, no leftovers


def test_a_checkpoint_of_another_recipe_is_refused(small_split, tmp_path):
    def train(config, checkpoint_dir=tmp_path):
        evaluator = RankingEvaluator(small_split)
        model = _fresh_mf(small_split)
        return train_bpr(
            model, small_split, evaluator, config=config, checkpoint_dir=checkpoint_dir
        )

    config = TrainConfig(max_steps=10, eval_every=10, batch_size=32, evaluate_test=False)
    train(config)
    with pytest.raises(ValueError, match=r"written by another run: its config is .*Use another"):
        train(config.replace(learning_rate=0.5))
    with pytest.raises(TypeError, match=r"`checkpoint_dir` must be a non-empty path"):
        train(config, checkpoint_dir="")


@pytest.mark.parametrize("backbone", ["mf", "ncf"])
def test_jit_compiled_steps_match_the_plain_loop(small_split, backbone):
    def trained(jit):
        keras.utils.set_random_seed(3)
        if backbone == "mf":
            model = MF.create(small_split.num_users, small_split.num_items, 8)
        else:
            model = NCF.create(small_split.num_users, small_split.num_items, 8)
        config = TrainConfig(
            max_steps=20, eval_every=10, batch_size=32, evaluate_test=False, jit_compile=jit
        )
        result = train_bpr(model, small_split, RankingEvaluator(small_split), config=config)
        return model.get_weights(), [h.loss for h in result.history]

    plain_w, plain_loss = trained(False)
    jit_w, jit_loss = trained(True)
    np.testing.assert_allclose(jit_loss, plain_loss, rtol=1e-4)
    for a, b in zip(jit_w, plain_w, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5)
    with pytest.raises(
        ValueError, match=r"`jit_compile` must be True or False. Received: jit_compile=1"
    ):
        TrainConfig(jit_compile=1)


def test_jit_compile_is_refused_for_graph_backbones(small_split):
    model = LightGCN.create(small_split.train, 8, num_layers=1)
    config = TrainConfig(max_steps=10, eval_every=10, batch_size=16, jit_compile=True)
    with pytest.raises(ValueError, match=r"`jit_compile=True` is not supported for LightGCN"):
        train_bpr(model, small_split, RankingEvaluator(small_split), config=config)


def test_jit_runs_on_one_model_reuse_the_compiled_loop_with_a_fresh_optimiser_state(
    small_split,
):
    # Each XLA compilation stays in TensorFlow's cache for the life of the process, so a search
    # fine-tuning one model many times must not compile a new loop per call; the reused Adam
    # must start from the state of a new one (zero moments, zero step count).
    keras.utils.set_random_seed(5)
    model = MF.create(small_split.num_users, small_split.num_items, 8)
    w0 = model.get_weights()
    evaluator = RankingEvaluator(small_split)
    config = TrainConfig(
        max_steps=20, eval_every=10, batch_size=32, evaluate_test=False, jit_compile=True
    )
    first = train_bpr(model, small_split, evaluator, config=config)
    w_first, opt_first = model.get_weights(), model.optimizer
    cache = model._tfembsize_step_cache
    ((_, runner, _),) = cache.values()
    assert runner.experimental_get_tracing_count() == 1

    model.set_weights(w0)
    second = train_bpr(model, small_split, evaluator, config=config)
    assert model.optimizer is opt_first
    assert runner.experimental_get_tracing_count() == 1
    assert [h.loss for h in second.history] == [h.loss for h in first.history]
    for a, b in zip(model.get_weights(), w_first, strict=True):
        np.testing.assert_array_equal(a, b)
    assert int(opt_first.iterations.numpy()) == 20

    # Another schedule gets its own optimiser and loop; the first entry is kept.
    model.set_weights(w0)
    train_bpr(model, small_split, evaluator, config=config.replace(learning_rate=0.01))
    assert len(cache) == 2 and model.optimizer is not opt_first
