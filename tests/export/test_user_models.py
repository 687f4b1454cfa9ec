"""Export of users' own models: lookups inside the towers, serving by raw ids, exclusions.

The models are those a user writes: the TensorFlow Recommenders basic-retrieval recipe
(tf-keras only) and a functional Keras model whose towers start with a ``StringLookup`` or
``IntegerLookup`` followed by a tfembsize table. Each is trained for a step, given a size plan
under a budget, exported, reloaded with plain ``tf.saved_model.load`` and served by raw ids.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2

import tfembsize as tes
from tfembsize._keras import is_legacy_keras, keras
from tfembsize.export import (
    RAW_ID_HOST_OPS,
    CompressionError,
    check_gpu_ready,
    compression_report,
    read_metadata,
    save_compressed,
    save_serving_model,
)
from tfembsize.layers import BudgetedEmbedding, MaskedEmbedding

legacy_only = pytest.mark.skipif(
    not is_legacy_keras(), reason="TensorFlow Recommenders needs TF_USE_LEGACY_KERAS=1"
)

USERS = np.array([f"user_{i}" for i in range(25)])
TITLES = np.array([f"movie {i}: a title" for i in range(40)])
USER_INTS = np.arange(1000, 1025, dtype=np.int64) * 7
ITEM_INTS = np.arange(40, dtype=np.int64) * 13 + 5
DIM = 8


def init(seed: int):
    return keras.initializers.RandomNormal(0.0, 1.0, seed=seed)


def apply_plan(model, seed: int = 0) -> None:
    """A search-free plan: random sizes cut to half of the full tables (``SizePlan.repair``)."""
    rng = np.random.default_rng(seed)
    current = tes.SizePlan.from_model(model)
    plan = tes.SizePlan(
        {name: rng.integers(1, DIM + 1, size=len(sizes)) for name, sizes in current.items()}
    ).repair(tes.Budget(sparsity=0.5, d_max=DIM))
    plan.apply(model)


def top_k_reference(user_tower, item_tower, users, items, k, exclude=None):
    """The in-memory model's top-k over ``items`` (stable: lower index first on ties)."""
    queries = np.asarray(user_tower(tf.constant(users)))
    candidates = np.asarray(item_tower(tf.constant(items)))
    scores = queries @ candidates.T
    if exclude is not None:
        for row, seen in enumerate(exclude):
            scores[row, np.isin(items, seen)] = -np.inf
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.asarray(items)[order], np.take_along_axis(scores, order, axis=1)


def as_ids(tensor: tf.Tensor) -> np.ndarray:
    """Served ids as numpy (strings decoded)."""
    value = tensor.numpy()
    if value.dtype == object:
        return np.vectorize(lambda b: b.decode("utf-8"))(value)
    return value


def serve(loaded, users, k, exclude=None):
    """Calls serving_default (or serving_excluding) of a loaded export."""
    dtype = tf.string if np.asarray(users).dtype.kind in "US" else tf.int64
    args = {"user_ids": tf.constant(users, dtype), "k": tf.constant(k)}
    if exclude is None:
        out = loaded.signatures["serving_default"](**args)
    else:
        out = loaded.signatures["serving_excluding"](
            **args, exclude_item_ids=tf.constant(exclude, dtype)
        )
    return as_ids(out["item_ids"]), out["scores"].numpy()


def function_counts(path: str) -> Counter:
    """How often each Python function was traced into the SavedModel's function library."""
    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString((Path(path) / "saved_model.pb").read_bytes())
    names = [f.signature.name for f in proto.meta_graphs[0].graph_def.library.function]
    return Counter(re.sub(r"_\d+$", "", n) for n in names if n.startswith("__inference_"))


# A functional model of one's own (Keras 3 and tf-keras) -------------------------------------------


def functional_two_tower(kind: str):
    """``Input -> StringLookup/IntegerLookup -> tfembsize table`` per tower, scored by Dot."""
    strings = kind == "string"
    users, items = (USERS, TITLES) if strings else (USER_INTS, ITEM_INTS)
    lookup = keras.layers.StringLookup if strings else keras.layers.IntegerLookup
    dtype = "string" if strings else "int64"
    user_in = keras.Input((), dtype=dtype, name="user_id")
    item_in = keras.Input((), dtype=dtype, name="item_id")
    user_lookup = lookup(vocabulary=users, mask_token=None, name="user_lookup")
    item_lookup = lookup(vocabulary=items, mask_token=None, name="item_lookup")
    user_table = MaskedEmbedding(
        len(users) + 1, DIM, embeddings_initializer=init(1), name="user_embedding"
    )
    item_table = BudgetedEmbedding(
        len(items) + 1,
        DIM,
        sparsity=0.25,
        embeddings_initializer=init(2),
        name="item_embedding",
    )
    user_vec = user_table(user_lookup(user_in))
    item_vec = item_table(item_lookup(item_in))
    score = keras.layers.Dot(axes=-1)([user_vec, item_vec])
    model = keras.Model({"user_id": user_in, "item_id": item_in}, score, name="scorer")
    user_tower = keras.Model(user_in, user_vec, name="user_tower")
    item_tower = keras.Model(item_in, item_vec, name="item_tower")
    return model, user_tower, item_tower, users, items


def train_a_step(model, users, items) -> None:
    rng = np.random.default_rng(0)
    features = {
        "user_id": tf.constant(users[rng.integers(0, len(users), 32)]),
        "item_id": tf.constant(items[rng.integers(0, len(items), 32)]),
    }
    data = tf.data.Dataset.from_tensor_slices((features, tf.ones([32]))).batch(32)
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss=keras.losses.MeanSquaredError())
    model.fit(data, epochs=1, verbose=0)


@pytest.fixture(scope="module", params=["string", "integer"])
def functional_export(request, tmp_path_factory):
    keras.backend.clear_session()
    model, user_tower, item_tower, users, items = functional_two_tower(request.param)
    train_a_step(model, users, items)
    apply_plan(model)
    path = tmp_path_factory.mktemp("functional") / request.param
    result = save_compressed(model, path, query_tower=user_tower, candidate_tower=item_tower)
    return request.param, user_tower, item_tower, users, items, result


def test_functional_model_serves_by_raw_ids(functional_export):
    kind, user_tower, item_tower, users, items, result = functional_export
    assert result.kind == "retrieval" and result.item_scoring == "compressed"
    assert set(result.tables) == {"user_embedding", "item_embedding"}
    loaded = tf.saved_model.load(result.path)
    # The first users, the last one, and an id the lookup does not know (its OOV row).
    stranger = "someone new" if kind == "string" else 99
    query = np.asarray([*users[:3], users[-1], stranger], dtype=users.dtype)
    for k in (1, 5, len(items)):
        ids, scores = serve(loaded, query, k)
        ref_ids, ref_scores = top_k_reference(user_tower, item_tower, query, items, k)
        np.testing.assert_array_equal(ids, ref_ids)
        np.testing.assert_allclose(scores, ref_scores, atol=1e-5, rtol=0)
    embedded = loaded.signatures["embed_items"](item_ids=tf.constant(items[:4]))["embeddings"]
    np.testing.assert_allclose(embedded.numpy(), item_tower(tf.constant(items[:4])), atol=1e-6)
    meta = read_metadata(result.path)
    assert meta["num_candidates"] == len(items)
    assert meta["ids"]["user_ids"]["lookup"] == "user_lookup"


def test_exclusion_removes_seen_items(functional_export):
    kind, user_tower, item_tower, users, items, result = functional_export
    loaded = tf.saved_model.load(result.path)
    query = users[:3]
    ranked, _ = top_k_reference(user_tower, item_tower, query, items, len(items))
    pad = "" if kind == "string" else -1  # any id that is not an item pads a row
    seen = [
        [ranked[0, 0], ranked[0, 1], ranked[0, 5]],
        [ranked[1, 0], pad, pad],
        [pad, pad, pad],
    ]
    ids, scores = serve(loaded, query, 4, exclude=np.asarray(seen, dtype=items.dtype))
    ref_ids, ref_scores = top_k_reference(user_tower, item_tower, query, items, 4, exclude=seen)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_allclose(scores, ref_scores, atol=1e-5, rtol=0)
    for row, excluded in enumerate(seen):
        assert not set(ids[row]) & {s for s in excluded if s != pad}
    np.testing.assert_array_equal(ids[2], ranked[2, :4])  # only padding: nothing removed


def test_raw_id_export_is_gpu_ready(functional_export):
    kind, *_, result = functional_export
    report = check_gpu_ready(result.path)
    assert report.ok, str(report)
    serving = {s.name: s for s in report.signatures}
    assert set(serving) == {"serving_default", "serving_excluding", "embed_users", "embed_items"}
    excluding = serving["serving_excluding"]
    assert {"TopKV2", "TensorScatterUpdate"} <= set(excluding.ops)
    if kind == "string":  # strings are mapped to rows on the host, by the vocabulary tables
        assert "LookupTableFindV2" in excluding.host_ops
        assert set(excluding.host_ops) - RAW_ID_HOST_OPS <= set(tes.export.HOST_OPS)
        assert excluding.jit_compiled is None and "not applicable" in excluding.jit_error
    else:  # integer ids: sorted vocabulary + searchsorted, GPU kernels and XLA end to end
        assert "LowerBound" in excluding.ops and "LookupTableFindV2" not in excluding.ops
        assert excluding.jit_compiled is True


def test_report_counts_the_whole_export_directory(functional_export):
    kind, *_, result = functional_export
    report = compression_report(result.path)
    files = [f for f in Path(result.path).rglob("*") if f.is_file()]
    assert report.total_bytes == sum(f.stat().st_size for f in files)
    assert report.graph_bytes == (Path(result.path) / "saved_model.pb").stat().st_size
    assert report.total_bytes > report.graph_bytes + report.variables_bytes
    assert (report.assets_bytes > 0) == (kind == "string")  # string vocabularies are files
    assert "saved_model.pb (graph)" in str(report) and str(report.total_bytes) in str(report)
    assert report.to_dict()["total_bytes"] == report.total_bytes


def test_graph_stores_each_traced_function_once(functional_export):
    *_, result = functional_export
    counts = function_counts(result.path)
    # Each computation is traced once and called by every signature that needs it.
    own = ["serving_default", "serving_excluding", "embed_users", "embed_items"]
    own += ["recommend", "user_vectors", "item_vectors"]
    assert [counts[f"__inference_{name}"] for name in own] == [1] * len(own), counts


def test_exported_signatures_run_without_tfembsize(functional_export, tmp_path):
    kind, user_tower, item_tower, users, items, result = functional_export
    query = users[:2].tolist() if kind == "string" else [int(u) for u in users[:2]]
    seen = [[items[0].item(), items[1].item()]] * 2
    got = run_elsewhere(result.path, query, seen, tmp_path)
    ref_ids, _ = top_k_reference(user_tower, item_tower, np.asarray(query), items, 3, seen)
    assert np.asarray(got).tolist() == ref_ids.tolist()


_LOADER = textwrap.dedent(
    """
    import importlib.abc, json, sys

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "tfembsize" or name.startswith("tfembsize."):
                raise ImportError("tfembsize is blocked in this process")

    sys.meta_path.insert(0, Block())
    import tensorflow as tf

    loaded = tf.saved_model.load(sys.argv[1])
    users, seen = json.loads(sys.argv[2]), json.loads(sys.argv[3])
    dtype = tf.string if isinstance(users[0], str) else tf.int64
    out = loaded.signatures["serving_excluding"](
        user_ids=tf.constant(users, dtype), k=tf.constant(3),
        exclude_item_ids=tf.constant(seen, dtype))
    assert not any(m.startswith("tfembsize") for m in sys.modules)
    ids = out["item_ids"].numpy().tolist()
    ids = [[i.decode() if isinstance(i, bytes) else i for i in row] for row in ids]
    print(json.dumps(ids))
    """
)


def run_elsewhere(path: str, users: list, seen: list, cwd: Path) -> list:
    """serving_excluding from a fresh interpreter in which tfembsize cannot be imported."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": ""}
    env.pop("TF_USE_LEGACY_KERAS", None)
    proc = subprocess.run(
        [sys.executable, "-c", _LOADER, path, json.dumps(users), json.dumps(seen)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_string_ids_with_an_xla_compiled_row_computation(tmp_path):
    model, user_tower, item_tower, users, items = functional_two_tower("string")
    train_a_step(model, users, items)
    apply_plan(model, seed=2)
    result = save_compressed(
        model,
        tmp_path / "xla",
        query_tower=user_tower,
        candidate_tower=item_tower,
        jit_compile=True,
    )
    assert result.jit_compile is True
    loaded = tf.saved_model.load(result.path)
    seen = np.asarray([[items[3], items[9]], ["", ""]])
    ids, scores = serve(loaded, users[[2, 11]], 7, exclude=seen)
    ref_ids, ref_scores = top_k_reference(user_tower, item_tower, users[[2, 11]], items, 7, seen)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_allclose(scores, ref_scores, atol=1e-5, rtol=0)


def test_call_export_through_a_string_lookup(tmp_path):
    model, *_ = functional_two_tower("string")
    train_a_step(model, USERS, TITLES)
    apply_plan(model)
    result = save_compressed(model, tmp_path / "call", signatures="call")
    assert result.kind == "call"
    sig = tf.saved_model.load(result.path).signatures["serving_default"]
    users, items = tf.constant(USERS[:3]), tf.constant(TITLES[5:8])
    (out,) = sig(user_id=users, item_id=items).values()
    np.testing.assert_allclose(
        out.numpy(), model({"user_id": users, "item_id": items}).numpy(), atol=1e-5
    )


# Towers that cannot be exported -------------------------------------------------------------------


class Holder(keras.Model):
    """A model that only holds two towers (as a user's two-tower model does)."""

    def __init__(self, user_model, item_model):
        super().__init__(name="holder")
        self.user_model = user_model
        self.item_model = item_model


def sequential_tower(vocab, name: str, with_input: bool):
    layers = [
        keras.layers.StringLookup(vocabulary=vocab, mask_token=None, name=f"{name}_lookup"),
        MaskedEmbedding(len(vocab) + 1, DIM, name=f"{name}_embedding"),
    ]
    if with_input:
        layers.insert(0, keras.Input((), dtype="string"))
    return keras.Sequential(layers, name=f"{name}_model")


def test_unbuilt_sequential_tower_gives_the_fix(tmp_path):
    holder = Holder(sequential_tower(USERS, "user", False), sequential_tower(TITLES, "item", False))
    with pytest.raises(
        CompressionError,
        match=r"Layer 'user_embedding' of the query tower 'user_model' has no weights yet.*"
        r"call the tower once on a batch of ids.*keras\.Input",
    ):
        save_compressed(
            holder, tmp_path / "m", query_tower="user_model", candidate_tower="item_model"
        )
    with pytest.raises(CompressionError, match=r"Layer 'user_embedding' .* has no weights yet"):
        save_compressed(holder.user_model, tmp_path / "m")  # the whole-model path says it too
    assert not (tmp_path / "m").exists()


def test_tower_errors_name_the_layer_and_the_fix(tmp_path):
    holder = Holder(sequential_tower(USERS, "user", True), sequential_tower(TITLES, "item", True))
    with pytest.raises(CompressionError, match=r"no attribute 'users'.*\['user_model', 'item_m"):
        save_compressed(holder, tmp_path / "a", query_tower="users", candidate_tower="item_model")
    with pytest.raises(CompressionError, match="Pass both query_tower= and candidate_tower="):
        save_compressed(holder, tmp_path / "b", query_tower="user_model")
    hashed = keras.Sequential(
        [
            keras.Input((), dtype="string"),
            keras.layers.StringLookup(vocabulary=USERS, num_oov_indices=3, name="hashed"),
            MaskedEmbedding(len(USERS) + 3, DIM, name="hashed_embedding"),
        ]
    )
    with pytest.raises(CompressionError, match=r"StringLookup 'hashed'.*num_oov_indices=3"):
        save_compressed(holder, tmp_path / "c", query_tower=hashed, candidate_tower="item_model")
    short = keras.Sequential(
        [
            keras.Input((), dtype="string"),
            keras.layers.StringLookup(vocabulary=TITLES, name="titles"),
            MaskedEmbedding(10, DIM, name="short_embedding"),
        ]
    )
    with pytest.raises(CompressionError, match=r"lookup 'titles' numbers 41 ids.*has 10 rows"):
        save_compressed(holder, tmp_path / "d", query_tower="user_model", candidate_tower=short)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


class BrokenScorer(keras.Model):
    """A model whose call fails while the serving function is traced (a bad reshape)."""

    def __init__(self):
        super().__init__(name="broken")
        self.table = MaskedEmbedding(10, 4, name="broken_embedding")
        self.table(tf.zeros([1], tf.int32))

    def call(self, ids):
        return tf.reshape(self.table(ids), [3, 7])


def test_tracing_failures_are_compression_errors_with_context(tmp_path):
    spec = tf.TensorSpec([None], tf.int32, name="ids")
    with pytest.raises(
        CompressionError,
        match=r"Cannot export BrokenScorer 'broken': tracing the serving functions failed.*"
        r"pass input_signature=",
    ) as info:
        save_serving_model(BrokenScorer(), tmp_path / "m", input_signature=spec)
    assert info.value.__cause__ is not None  # the TensorFlow error stays attached
    assert not (tmp_path / "m").exists()


# The TensorFlow Recommenders basic-retrieval recipe (tf-keras only) -------------------------------


def tutorial_model(with_input: bool):
    """The basic-retrieval tutorial's model, tables swapped for tfembsize layers."""
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

    user_model = sequential_tower(USERS, "user", with_input)
    movie_model = keras.Sequential(
        ([keras.Input((), dtype="string")] if with_input else [])
        + [
            keras.layers.StringLookup(vocabulary=TITLES, mask_token=None),
            BudgetedEmbedding(len(TITLES) + 1, DIM, sparsity=0.25, name="movie_embedding"),
        ]
    )
    movies = tf.data.Dataset.from_tensor_slices(TITLES)
    metrics = tfrs.metrics.FactorizedTopK(candidates=movies.batch(16).map(movie_model))
    return MovielensModel(user_model, movie_model, tfrs.tasks.Retrieval(metrics=metrics))


@legacy_only
@pytest.mark.parametrize("with_input", [False, True])
def test_tfrs_tutorial_model_exports_and_serves_by_raw_ids(tmp_path, with_input):
    import tensorflow_recommenders as tfrs

    model = tutorial_model(with_input)
    rng = np.random.default_rng(3)
    ratings = tf.data.Dataset.from_tensor_slices(
        {"user_id": USERS[rng.integers(0, 25, 96)], "movie_title": TITLES[rng.integers(0, 40, 96)]}
    )
    model.compile(optimizer=keras.optimizers.Adagrad(learning_rate=0.1))
    model.fit(ratings.batch(32), epochs=1, verbose=0)
    apply_plan(model, seed=1)

    with pytest.raises(
        CompressionError, match=r"query_tower='user_model', candidate_tower='movie_model'"
    ):
        save_compressed(model, tmp_path / "whole")  # its towers must be named
    result = save_compressed(
        model, tmp_path / "tfrs", query_tower="user_model", candidate_tower="movie_model"
    )
    loaded = tf.saved_model.load(result.path)

    index = tfrs.layers.factorized_top_k.BruteForce(model.user_model)
    index.index_from_dataset(
        tf.data.Dataset.from_tensor_slices(TITLES)
        .batch(16)
        .map(lambda t: (t, model.movie_model(t)))
    )
    queries = USERS[[0, 4, 24]]
    scores, titles = index(tf.constant(queries), k=6)
    ids, got_scores = serve(loaded, queries, 6)
    np.testing.assert_array_equal(ids, as_ids(titles))
    np.testing.assert_allclose(got_scores, scores.numpy(), atol=1e-5, rtol=0)

    seen = np.asarray([[ids[0][0], ids[0][2]], [ids[1][1], ""], ["", ""]])
    scores, titles = index.query_with_exclusions(tf.constant(queries), tf.constant(seen), k=6)
    ids_x, scores_x = serve(loaded, queries, 6, exclude=seen)
    np.testing.assert_array_equal(ids_x, as_ids(titles))
    np.testing.assert_allclose(scores_x, scores.numpy(), atol=1e-5, rtol=0)
    assert ids[0][0] not in ids_x[0] and ids[0][2] not in ids_x[0]

    names = [
        n for n, _ in tf.train.list_variables(os.path.join(result.path, "variables", "variables"))
    ]
    assert not any("task" in n or "optimizer" in n or "metric" in n for n in names)
    assert check_gpu_ready(result.path).ok
    report = compression_report(result.path)
    assert report.usable_params == sum(
        layer.usable_params()
        for layer in (model.user_model.layers[-1], model.movie_model.layers[-1])
    )
