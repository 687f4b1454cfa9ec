"""FitEnvironment: a size search on a model of one's own, trained by its own compile/fit.

The models are what users write: a functional Keras model whose towers map raw string ids
through a ``StringLookup`` to a tfembsize table, compiled with the user's optimizer and loss,
and (tf-keras only) the TensorFlow Recommenders basic-retrieval model.
"""

from __future__ import annotations

import logging
import math
import re

import numpy as np
import pytest
import tensorflow as tf

from tfembsize._keras import is_legacy_keras, keras
from tfembsize.budget import Budget
from tfembsize.controllers import ES, BETController, CIESSController
from tfembsize.data import Interactions, Split
from tfembsize.layers import MaskedEmbedding
from tfembsize.metrics import RankingEvaluator
from tfembsize.models import MF
from tfembsize.plan import SizePlan
from tfembsize.search import (
    Feedback,
    FitEnvironment,
    KerasEnvironment,
    StatefulEnvironment,
    TowerEvaluator,
    count_frequencies,
    feedback_from_evaluation,
    load_history,
    run,
)
from tfembsize.training.loop import needs_autograph

legacy_only = pytest.mark.skipif(
    not is_legacy_keras(), reason="TensorFlow Recommenders needs TF_USE_LEGACY_KERAS=1"
)

D = 4
USERS = np.array([f"user {i}" for i in range(20)])
ITEMS = np.array([f"item {i}" for i in range(30)])


def interactions(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Raw (user, item) ids with two taste groups and popular items."""
    rng = np.random.default_rng(seed)
    u = rng.integers(0, len(USERS), n)
    i = np.minimum(rng.zipf(1.6, n) - 1, len(ITEMS) - 1)
    i = np.where(u % 2 == 1, len(ITEMS) - 1 - i, i)
    return USERS[u], ITEMS[i]


TRAIN = interactions(400, 0)
VALIDATION = interactions(120, 1)


def tower(vocabulary, name: str, mask: bool = False) -> keras.Model:
    lookup = keras.layers.StringLookup(
        vocabulary=list(vocabulary), mask_token="" if mask else None, name=f"{name}_lookup"
    )
    rows = len(vocabulary) + 1 + int(mask)  # the vocabulary, its OOV row and the mask row
    return keras.Sequential(
        [keras.Input((), dtype="string"), lookup, MaskedEmbedding(rows, D, name=f"{name}_table")],
        name=f"{name}_tower",
    )


def functional_builder(
    optimizer=lambda: keras.optimizers.Adagrad(0.1), mask_users=False, metrics=None
):
    """``build_model``: Input -> StringLookup -> MaskedEmbedding per tower, a dot-product logit,
    compiled with the user's own optimizer, loss and metrics."""

    def build_model():
        user_in = keras.Input((), dtype="string", name="user_id")
        item_in = keras.Input((), dtype="string", name="item_id")
        user_vec = tower(USERS, "user", mask_users)(user_in)
        item_vec = tower(ITEMS, "item")(item_in)
        logit = keras.layers.Dot(axes=-1)([user_vec, item_vec])
        model = keras.Model({"user_id": user_in, "item_id": item_in}, logit)
        model.compile(
            optimizer=optimizer(),
            loss=keras.losses.BinaryCrossentropy(from_logits=True),
            metrics=None if metrics is None else metrics(),
        )
        return model

    return build_model


def train_data() -> tf.data.Dataset:
    """Positives plus one random negative each; shuffled without a fixed seed (per step)."""
    users, items = TRAIN
    negatives = ITEMS[np.random.randint(0, len(ITEMS), len(users))]
    x = {"user_id": np.concatenate([users, users]), "item_id": np.concatenate([items, negatives])}
    y = np.concatenate([np.ones(len(users)), np.zeros(len(users))]).astype("float32")
    return tf.data.Dataset.from_tensor_slices((x, y)).shuffle(2 * len(users)).batch(100)


def frequencies(mask_users: bool = False) -> dict:
    return {
        "user": count_frequencies(TRAIN[0], tower(USERS, "user", mask_users)),
        "item": count_frequencies(TRAIN[1], tower(ITEMS, "item")),
    }


EVALUATE = TowerEvaluator(TRAIN, VALIDATION, query_tower="user_tower", candidate_tower="item_tower")
TABLES = {"user_table": "user", "item_table": "item"}


def make_env(**kw) -> FitEnvironment:
    builder = kw.pop("build_model", None) or functional_builder(mask_users=kw.pop("mask", False))
    kw.setdefault("frequencies", frequencies())
    kw.setdefault("fit_kwargs", {"epochs": 2})
    kw.setdefault("tables", TABLES)
    return FitEnvironment(
        builder, kw.pop("train_data", train_data), kw.pop("evaluate", EVALUATE), **kw
    )


def test_lookup_rows_are_table_rows_counted_and_budgeted(tmp_path):
    freq = frequencies(mask_users=True)
    # Users: mask row 0, out-of-vocabulary row 1, then the vocabulary; items: OOV row 0.
    assert freq["user"].size == len(USERS) + 2 and freq["item"].size == len(ITEMS) + 1
    assert freq["user"][0] == 0 and freq["user"][1] == 0 and freq["user"].sum() == 400
    env = make_env(mask=True, frequencies=freq, reference=False)
    assert isinstance(env, StatefulEnvironment)
    obs = env.observation()
    n = (len(USERS) + 2) + (len(ITEMS) + 1)
    assert obs.num_rows == n and obs.d_max == D
    np.testing.assert_array_equal(obs.user_frequencies, freq["user"])
    result = run(ES(sparsity=0.5), env, tmp_path, verbose=0, tensorboard=False)
    budget = Budget(sparsity=0.5, d_max=D).max_params_for(n)
    assert budget == math.floor(0.5 * D * n) == 2 * n
    plan = result.plans[0.5]
    assert plan.total_params() == budget  # every row, the special ones too, has size 2
    assert result.history[0].feedback.usable_params == budget
    assert env.model.get_layer("user_tower").get_layer("user_table").sizes[0] == 2  # mask row


def test_es_and_bet_search_through_the_users_fit(tmp_path):
    env = make_env(seed=1)
    obs = env.observation()
    ref = obs.reference
    assert ref.ok and ref.user_quality.size == len(USERS) + 1 and ref.quality > 0
    assert {"recall@20", "ndcg@5"} <= set(ref.metrics)
    assert isinstance(env.model.optimizer, keras.optimizers.Adagrad)  # the user's optimizer

    bet = BETController(0.5, search_iterations=2, num_candidates=4, top_k=1, finetune_epochs=1)
    result = run(bet, env, tmp_path / "bet", verbose=0, tensorboard=False)
    modes = [(r.mode, r.phase) for r in result.history]
    assert modes == [("snapshot", "search"), ("snapshot", "search"), ("scratch", "final")]
    for record in result.history:
        fb = record.feedback
        assert fb.ok and fb.quality_ratio == pytest.approx(fb.quality / ref.quality)
        assert fb.user_quality_ratio.size == len(USERS) + 1
    assert result.history[0].feedback.train_steps == 8  # one epoch: 800 examples, batch 100
    assert result.history[2].feedback.train_steps == 16  # final phase: the recipe's 2 epochs
    assert result.best_plan.fits(Budget(sparsity=0.5, d_max=D))

    es = run(ES(sparsity=0.75), env, tmp_path / "es", verbose=0, tensorboard=False)
    assert es.history[0].feedback.ok and es.history[0].mode == "scratch"
    assert es.plans[0.75].total_params() == obs.num_rows  # size 1 everywhere


def test_step_lengths_modes_and_the_users_optimizer():
    # A zero learning rate: training through the user's optimizer changes nothing.
    env = make_env(
        build_model=functional_builder(optimizer=lambda: keras.optimizers.SGD(0.0)),
        reference=False,
    )
    full = env.full_plan()
    env.snapshot()
    before = [w.copy() for w in env.model.get_weights()]
    fb = env.step(full, "snapshot", train_steps=3)
    assert fb.train_steps == 3 and fb.mode == "snapshot"
    for a, b in zip(before, env.model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    assert env.step(full, "continue", train_epochs=0.5).train_steps == 4  # ceil(0.5 * 8)
    assert env.step(full, "continue", train_epochs=2).train_steps == 16
    assert env.step(full, "continue").train_steps == 16  # fit_kwargs: 2 epochs
    first = env.model
    env.step(full, "scratch", train_steps=1)
    assert env.model is not first  # a new build_model() per scratch step


@pytest.mark.skipif(not is_legacy_keras(), reason="tf-keras's legacy optimizers")
def test_an_optimizer_without_build_starts_fresh_in_a_new_model():
    env = make_env(
        build_model=functional_builder(optimizer=lambda: keras.optimizers.legacy.Adagrad(0.1)),
        reference=False,
    )
    full = env.full_plan()
    env.step(full, "scratch", train_steps=3)
    first, trained = env.model, [w.copy() for w in env.model.get_weights()]
    env.snapshot()
    fb = env.step(full, "continue", train_steps=2)
    assert fb.train_steps == 2  # a new optimizer: its step counter starts at 0
    assert env.model is not first  # ... in a new model, with the weights carried over
    env.restore()
    for a, b in zip(trained, env.model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_keras_metric_is_the_quality():
    builder = functional_builder(metrics=lambda: [keras.metrics.AUC(from_logits=True, name="auc")])
    env = make_env(build_model=builder, evaluate="auc", validation_data=train_data)
    ref = env.reference()
    assert {"auc", "loss"} <= set(ref.metrics) and ref.quality == ref.metrics["auc"] > 0
    assert ref.user_quality is None  # a scalar metric: enough for ES and BET, not for CIESS
    fb = env.step(env.full_plan(), "snapshot", train_steps=2)
    assert fb.ok and fb.quality_ratio == pytest.approx(fb.quality / ref.quality)
    wrong = make_env(build_model=builder, evaluate="recall", validation_data=train_data)
    with pytest.raises(ValueError, match=r"`evaluate`='recall' is not a metric of model.evalu"):
        wrong.reference()


def test_interrupted_search_resumes_like_the_uninterrupted_one(tmp_path):
    def search(directory, iterations=None):
        env = make_env(seed=3)
        bet = BETController(
            0.5, search_iterations=3, num_candidates=4, top_k=1, finetune_epochs=1, seed=0
        )
        return run(bet, env, directory, iterations=iterations, verbose=0, tensorboard=False)

    whole = search(tmp_path / "whole")
    part = search(tmp_path / "part", iterations=2)
    assert len(part.history) == 2
    resumed = search(tmp_path / "part")
    assert len(resumed.history) == len(whole.history) == 4
    for a, b in zip(whole.history, load_history(tmp_path / "part"), strict=True):
        assert a.plan == b.plan and a.mode == b.mode
        assert a.feedback.quality == pytest.approx(b.feedback.quality, abs=1e-6)
        assert a.feedback.loss == pytest.approx(b.feedback.loss, rel=1e-5)
    assert resumed.best_plan == whole.best_plan


def test_ciess_gets_per_entity_quality(tmp_path):
    env = make_env(seed=2)
    ciess = CIESSController(
        0.5, episodes=1, iterations=1, train_steps=2, top_k=1, hidden=(8,), batch_size=32, seed=0
    )
    result = run(ciess, env, tmp_path, iterations=1, verbose=0, tensorboard=False)
    fb = result.history[0].feedback
    assert fb.ok and fb.mean_entity_ratio() is not None


def test_tower_evaluator_never_recommends_special_rows():
    model = functional_builder()()
    table = model.get_layer("item_tower").get_layer("item_table")
    result = EVALUATE(model)
    # An out-of-vocabulary row that would outscore every item changes nothing.
    weights = table.embeddings.numpy()
    weights[0] = 100.0
    table.embeddings.assign(weights)
    model.get_layer("user_tower").get_layer("user_table").embeddings.assign(
        np.ones((len(USERS) + 1, D), np.float32)
    )
    boosted = EVALUATE(model)
    assert boosted.recall_at(5) >= 0 and result.user_quality.shape == (len(USERS) + 1,)
    # The same numbers as RankingEvaluator on rows, with the OOV row's scores at -inf.
    users, items = model.get_layer("user_tower"), model.get_layer("item_tower")
    u = users.get_layer("user_table")(tf.range(len(USERS) + 1))
    v = items.get_layer("item_table")(tf.range(len(ITEMS) + 1))
    user_rows = users.layers[0](tf.constant(TRAIN[0])).numpy()
    item_rows = items.layers[0](tf.constant(TRAIN[1])).numpy()
    keys = np.unique(user_rows * (len(ITEMS) + 1) + item_rows)
    val_keys = np.unique(
        users.layers[0](tf.constant(VALIDATION[0])).numpy() * (len(ITEMS) + 1)
        + items.layers[0](tf.constant(VALIDATION[1])).numpy()
    )
    val_keys = np.setdiff1d(val_keys, keys)
    shape = (len(USERS) + 1, len(ITEMS) + 1)
    part = lambda k: Interactions(k // shape[1], k % shape[1], *shape)  # noqa: E731
    split = Split(part(keys), part(val_keys), part(np.zeros(0, np.int64)))

    def scores(rows):
        s = tf.matmul(tf.gather(u, rows), v, transpose_b=True).numpy()
        s[:, 0] = -np.inf
        return s

    expected = RankingEvaluator(split).evaluate(scores)
    assert boosted.quality == pytest.approx(expected.quality)
    np.testing.assert_allclose(boosted.item_quality, expected.item_quality)


def test_count_frequencies():
    lookup = keras.layers.StringLookup(vocabulary=["a", "b", "c"], mask_token="")
    counts = count_frequencies(["a", "c", "c", "zz"], lookup)
    assert counts.tolist() == [0, 1, 1, 0, 2]  # mask, OOV (the unknown "zz"), a, b, c
    ds = tf.data.Dataset.from_tensor_slices(["a", "c", "c", "zz"]).batch(3)
    assert count_frequencies(ds, lookup).tolist() == counts.tolist()
    assert count_frequencies(np.array([0, 2, 2]), num_rows=4).tolist() == [1, 0, 2, 0]
    with pytest.raises(TypeError, match=r"map the dataset to the id feature first"):
        count_frequencies(tf.data.Dataset.from_tensor_slices({"user_id": ["a"]}), lookup)
    with pytest.raises(ValueError, match=r"maps to row 5, outside the table's \[0, num_rows=4\)"):
        count_frequencies([5], num_rows=4)
    with pytest.raises(TypeError, match="pass the model's StringLookup/IntegerLookup as `lookup`"):
        count_frequencies(["a"])
    with pytest.raises(ValueError, match=r"`lookup` must be a StringLookup or IntegerLookup"):
        count_frequencies(["a"], keras.Sequential([keras.layers.Dense(2)]))


def test_feedback_from_evaluation_forms():
    kw = {"num_users": 2, "num_items": 3}
    assert feedback_from_evaluation(0.25, **kw).quality == 0.25
    fb = feedback_from_evaluation(
        {"quality": np.float32(0.5), "user_quality": [0.1, 0.9], "auc": 0.7}, **kw
    )
    assert fb.metrics == {"auc": pytest.approx(0.7)} and fb.user_quality.size == 2
    assert not feedback_from_evaluation(float("nan"), **kw).ok
    with pytest.raises(ValueError, match=r"returned `item_quality` with 2 values; the tables"):
        feedback_from_evaluation({"quality": 1.0, "item_quality": [1, 2]}, **kw)
    with pytest.raises(TypeError, match=r"`evaluate` must return the validation quality"):
        feedback_from_evaluation("good", **kw)
    with pytest.raises(TypeError, match=r"mapping without 'quality'"):
        feedback_from_evaluation({"recall": 0.2}, **kw)
    ref = Feedback(quality=0.5)
    assert feedback_from_evaluation(0.25, reference=ref, **kw).quality_ratio == 0.5


def test_bad_arguments_name_the_argument():
    model = functional_builder()()
    with pytest.raises(TypeError, match=r"`build_model` must be a zero-argument function"):
        FitEnvironment(model, train_data, EVALUATE, frequencies=frequencies())
    with pytest.raises(TypeError, match=r"`train_data` must be a tf.data.Dataset"):
        make_env(train_data=(np.zeros(3), np.zeros(3)))
    with pytest.raises(ValueError, match=r"`evaluate`='auc' names a metric.*`validation_data`"):
        make_env(evaluate="auc")
    with pytest.raises(ValueError, match=r"higher is better; a loss is not one"):
        make_env(evaluate="loss", validation_data=train_data)
    short = {"user": np.ones(len(USERS), np.int64), "item": frequencies()["item"]}
    with pytest.raises(
        ValueError,
        match=r"`frequencies\['user'\]` has 20 counts but the user table 'user_table' has 21 "
        r"rows .*count_frequencies",
    ):
        make_env(frequencies=short)
    with pytest.raises(TypeError, match=r"`frequencies` must be a mapping \{'user'"):
        make_env(frequencies={"users": [1]})
    with pytest.raises(ValueError, match=r"`tables` names 'movie_table', which is not"):
        make_env(tables={"user_table": "user", "movie_table": "item"})
    with pytest.raises(ValueError, match=r"`fit_kwargs` must not set \['x'\]"):
        make_env(fit_kwargs={"x": 1})

    def uncompiled():
        m = functional_builder()()
        return keras.Model(m.inputs, m.outputs)

    with pytest.raises(TypeError, match=r"without an optimizer: call model.compile"):
        make_env(build_model=uncompiled)
    env = make_env(reference=False, evaluate=lambda m: "great")
    with pytest.raises(ValueError, match=r"`mode` must be one of .* Received: mode='warm'"):
        env.step(env.full_plan(), "warm")
    with pytest.raises(ValueError, match="Pass at most one of `train_steps` and `train_epochs`"):
        env.step(env.full_plan(), train_steps=1, train_epochs=1)
    with pytest.raises(TypeError, match=r"`evaluate` must return the validation quality"):
        env.step(env.full_plan(), train_steps=1)
    with pytest.raises(ValueError, match=r"`plan` has no sizes for searchable layers"):
        env.step(SizePlan({"user_table": np.ones(len(USERS) + 1, np.int32)}))


def test_keras_environment_points_own_models_to_fit_environment():
    split = Split(
        Interactions([0, 1], [0, 1], len(USERS), len(ITEMS)),
        Interactions([0], [2], len(USERS), len(ITEMS)),
        Interactions([1], [2], len(USERS), len(ITEMS)),
    )
    builder = functional_builder()
    with pytest.raises(TypeError, match=r"has none\. .*use tfembsize\.search\.FitEnvironment"):
        KerasEnvironment(builder, split, reference=False)
    with pytest.raises(
        ValueError,
        match=r"has input_dim=21; the split has 20 users\. .*out-of-vocabulary rows.*FitEnviron",
    ):
        KerasEnvironment(builder, split, reference=False, train_fn=lambda *a, **k: None)
    KerasEnvironment(MF.create(len(USERS), len(ITEMS), D), split, reference=False)  # unchanged


# TensorFlow Recommenders (tf-keras only) ----------------------------------------------------


def tfrs_builder():
    """The basic-retrieval tutorial's model (towers without an Input, built at first call)."""
    import tensorflow_recommenders as tfrs

    class MovielensModel(tfrs.Model):
        def __init__(self, user_model, movie_model, task):
            super().__init__()
            self.movie_model = movie_model
            self.user_model = user_model
            self.task = task

        def compute_loss(self, features, training=False):
            user_embeddings = self.user_model(features["user_id"])
            movie_embeddings = self.movie_model(features["movie_title"])
            return self.task(user_embeddings, movie_embeddings)

    def build_model():
        user_model = keras.Sequential(
            [
                keras.layers.StringLookup(vocabulary=USERS, mask_token=None),
                MaskedEmbedding(len(USERS) + 1, D, name="user_embedding"),
            ]
        )
        movie_model = keras.Sequential(
            [
                keras.layers.StringLookup(vocabulary=ITEMS, mask_token=None),
                MaskedEmbedding(len(ITEMS) + 1, D, name="movie_embedding"),
            ]
        )
        movies = tf.data.Dataset.from_tensor_slices(ITEMS).batch(16).map(movie_model)
        task = tfrs.tasks.Retrieval(metrics=tfrs.metrics.FactorizedTopK(movies, ks=(1, 5)))
        model = MovielensModel(user_model, movie_model, task)
        model.compile(optimizer=keras.optimizers.Adagrad(learning_rate=0.1))
        return model

    return build_model


def ratings(pairs) -> tf.data.Dataset:
    return tf.data.Dataset.from_tensor_slices({"user_id": pairs[0], "movie_title": pairs[1]})


@legacy_only
def test_tfrs_tutorial_model_is_searched_with_its_own_metric(tmp_path):
    import tensorflow_recommenders as tfrs

    env = FitEnvironment(
        tfrs_builder(),
        lambda: ratings(TRAIN).shuffle(400).batch(64),
        "factorized_top_k/top_5_categorical_accuracy",
        validation_data=ratings(VALIDATION).batch(64),
        frequencies={
            "user": count_frequencies(TRAIN[0], keras.layers.StringLookup(vocabulary=USERS)),
            "item": count_frequencies(TRAIN[1], keras.layers.StringLookup(vocabulary=ITEMS)),
        },
        tables={"user_embedding": "user", "movie_embedding": "item"},
        fit_kwargs={"epochs": 2},
    )
    assert isinstance(env.model, tfrs.Model) and needs_autograph(env.model)
    bet = BETController(
        0.5, search_iterations=2, num_candidates=4, top_k=1, finetune_steps=2, monitor="quality"
    )
    result = run(bet, env, tmp_path, verbose=0, tensorboard=False)
    assert [r.feedback.ok for r in result.history] == [True, True, True]
    assert 0 < result.reference.quality <= 1
    assert "factorized_top_k/top_1_categorical_accuracy" in result.history[0].feedback.metrics
    assert result.history[0].feedback.train_steps == 2
    assert result.best_plan.fits(Budget(sparsity=0.5, d_max=D))


# Progress and crash-safe pretraining ----------------------------------------------------------


class _Interrupt(keras.callbacks.Callback):
    """Stands for a killed process: raises at the end of epoch ``after`` (1-based)."""

    def __init__(self, after: int) -> None:
        super().__init__()
        self.after, self.weights = after, None

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 == self.after:
            self.weights = [np.array(w) for w in self.model.get_weights()]
            raise KeyboardInterrupt("killed")


class _Recorder(keras.callbacks.Callback):
    def __init__(self) -> None:
        super().__init__()
        self.epochs, self.weights_at_start = [], None

    def on_train_begin(self, logs=None):
        self.weights_at_start = [np.array(w) for w in self.model.get_weights()]

    def on_epoch_begin(self, epoch, logs=None):
        self.epochs.append(epoch)


def test_pretraining_killed_after_two_epochs_resumes_at_the_third(tmp_path):
    directory = str(tmp_path / "env")
    interrupt = _Interrupt(after=2)
    env = make_env(reference_fit_kwargs={"epochs": 4, "callbacks": [interrupt]})
    env.attach(directory)
    with pytest.raises(KeyboardInterrupt):
        env.reference()
    checkpoint = tmp_path / "env" / "pretraining" / "fit_checkpoint.npz"
    assert checkpoint.is_file() and not (tmp_path / "env" / "reference.npz").exists()

    recorder = _Recorder()
    again = make_env(reference_fit_kwargs={"epochs": 4, "callbacks": [recorder]})
    again.attach(directory)
    ref = again.reference()
    assert recorder.epochs == [2, 3]  # the two finished epochs are not trained again
    for saved, restored in zip(interrupt.weights, recorder.weights_at_start, strict=True):
        np.testing.assert_array_equal(saved, restored)  # it goes on from epoch 2's weights
    # The optimizer's state came back too: its step counter covers all 4 epochs of 8 batches.
    assert ref.train_steps == 4 * 8 and ref.ok
    # The finished reference replaces the checkpoint; a third run loads it, training nothing.
    assert not checkpoint.parent.exists() and (tmp_path / "env" / "reference.npz").is_file()
    third_recorder = _Recorder()
    third = make_env(reference_fit_kwargs={"epochs": 4, "callbacks": [third_recorder]})
    third.attach(directory)
    assert third.reference().quality == ref.quality and third_recorder.epochs == []


def test_verbose_shows_every_phase_with_its_time(capsys, caplog):
    # 52 rows (20 users, 30 items, an out-of-vocabulary row each) of width 4: 208 parameters.
    env = make_env(verbose=2, reference_fit_kwargs={"epochs": 2}, fit_kwargs={"epochs": 1})
    env.reference()
    full = env.full_plan()
    env.step(full, "snapshot", train_steps=3)
    env.step(full, "scratch", phase="final")  # final_fit_kwargs: reference_fit_kwargs
    out = capsys.readouterr().out
    assert "Pretraining the full-size reference model: 2 epoch(s) of fit." in out
    assert "Epoch 1/2" in out and "Epoch 2/2" in out  # Keras's own per-epoch lines
    assert re.search(r"Pretrained the reference model in [\d.]+s \(training [\d.]+s, evalu", out)
    assert re.search(r"Search step 1 \(snapshot, 208 usable parameters\): trained 3 batches", out)
    assert re.search(r"Retraining 2 \(scratch, 208 usable parameters\): trained 16 batches", out)
    # verbose=0: nothing on standard output; the same lines are logged at INFO.
    quiet = make_env(verbose=0, reference_fit_kwargs={"epochs": 1})
    with caplog.at_level(logging.INFO, logger="tfembsize.search.fit_environment"):
        quiet.step(quiet.full_plan(), "snapshot", train_steps=1)
    assert capsys.readouterr().out == ""
    assert "Pretrained the reference model in" in caplog.text
    assert "Search step 1 (snapshot, 208 usable parameters): trained 1 batches" in caplog.text
    with pytest.raises(ValueError, match=r"`verbose` must be 0 .*Received: verbose=-1"):
        make_env(verbose=-1)


def test_the_search_loop_passes_its_verbose_to_the_environment(tmp_path, capsys):
    env = make_env(reference_fit_kwargs={"epochs": 1})
    assert env.verbose == 0
    run(ES(0.5), env, tmp_path / "run", iterations=1, verbose=2, tensorboard=False)
    assert env.verbose == 2
    out = capsys.readouterr().out
    assert "Pretrained the reference model in" in out
    # ES trains its uniform plan as a final candidate: 4 * 52 * (1 - 0.5) = 104 parameters.
    assert "Retraining 1 (scratch, 104 usable parameters): trained 8 batches in" in out
    env = make_env(verbose=0, reference=False)
    env.set_default_verbose(2)
    assert env.verbose == 0  # the environment's own verbose wins


def test_an_epoch_with_a_nan_loss_is_not_saved(tmp_path):
    from tfembsize.search import EpochCheckpoint

    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    checkpoint = EpochCheckpoint(tmp_path, seed=0)
    checkpoint.set_model(model)
    checkpoint.on_epoch_end(0, {"loss": float("nan")})
    assert not (tmp_path / "fit_checkpoint.npz").exists()
    checkpoint.on_epoch_end(2, {"loss": 0.5})  # epochs 1..3 done
    trained = [w.copy() for w in model.get_weights()]
    fresh = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    fresh.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    assert EpochCheckpoint(tmp_path, seed=1).restore(fresh) == 0  # another run's: ignored
    assert EpochCheckpoint(tmp_path, seed=0).restore(fresh) == 3
    for a, b in zip(trained, fresh.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
