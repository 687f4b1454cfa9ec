"""save_compressed: signatures, round trips, bad inputs, atomic writes, loading elsewhere."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from export_helpers import ExportTestTwoTower, random_sizes, two_tower

from tfembsize._keras import is_legacy_keras, keras
from tfembsize.export import (
    CompressionError,
    ExportVerificationError,
    check_gpu_ready,
    compression_report,
    read_metadata,
    save_compressed,
    save_serving_model,
)
from tfembsize.export import saved_model as sm
from tfembsize.layers import MaskedEmbedding
from tfembsize.layers.pep_embedding import PEPEmbedding

VENV_BIN = Path(sys.executable).parent


def dense_top_k(model, users, k):
    """Reference top-k of the uncompressed model (numpy, stable: lower id first on ties)."""
    u = model.embed_users(tf.constant(users)).numpy()
    items = model.embed_items(tf.range(model.num_items)).numpy()
    scores = u @ items.T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(scores, order, axis=1)


def serve(loaded, users, k, dtype=tf.int64):
    out = loaded.signatures["serving_default"](user_ids=tf.constant(users, dtype), k=tf.constant(k))
    return out["item_ids"].numpy(), out["scores"].numpy()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A compressed retrieval export of a two-tower model with random prefix sizes."""
    keras.backend.clear_session()
    rng = np.random.default_rng(5)
    model = two_tower(40, 70, 8, seed=2)
    random_sizes(model.user_embedding, rng)
    random_sizes(model.item_embedding, rng)
    # Training state that must stay out of the export.
    model.compile(optimizer="adam", loss="mse")
    pairs = np.stack([rng.integers(0, 40, 16), rng.integers(0, 70, 16)], 1)
    model.fit(pairs, np.zeros(16, np.float32), epochs=1, verbose=0)
    path = tmp_path_factory.mktemp("export") / "two_tower"
    result = save_compressed(model, path, k=5)
    return model, result, tf.saved_model.load(str(path))


# Retrieval signatures -----------------------------------------------------------------------------


def test_retrieval_export_round_trip(exported):
    model, result, loaded = exported
    assert result.kind == "retrieval" and result.item_scoring == "compressed"
    assert set(result.signatures) == {
        "serving_default",
        "serving_excluding",
        "embed_users",
        "embed_items",
    }
    users = [0, 7, 39, 13]
    for k in (1, 5, 70):  # k is an input of the signature, not frozen at trace time
        ids, scores = serve(loaded, users, k)
        ref_ids, ref_scores = dense_top_k(model, users, k)
        np.testing.assert_array_equal(ids, ref_ids)
        np.testing.assert_allclose(scores, ref_scores, atol=1e-5, rtol=0)
    emb = loaded.signatures["embed_users"](user_ids=tf.constant(users, tf.int64))["embeddings"]
    np.testing.assert_allclose(
        emb.numpy(), model.embed_users(tf.constant(users)).numpy(), atol=1e-6, rtol=0
    )
    items = loaded.signatures["embed_items"](item_ids=tf.range(70, dtype=tf.int64))["embeddings"]
    np.testing.assert_allclose(
        items.numpy(), model.embed_items(tf.range(70)).numpy(), atol=1e-6, rtol=0
    )


def test_serving_excluding_masks_the_given_items(exported):
    model, _, loaded = exported
    users = [0, 7, 39]
    ref_ids, _ = dense_top_k(model, users, 70)
    # Exclude each user's first three items; -1 and ids past the table are padding.
    exclude = np.concatenate([ref_ids[:, :3], [[-1, 70], [-1, -1], [99, -1]]], axis=1)
    out = loaded.signatures["serving_excluding"](
        user_ids=tf.constant(users, tf.int64),
        k=tf.constant(5),
        exclude_item_ids=tf.constant(exclude, tf.int64),
    )
    np.testing.assert_array_equal(out["item_ids"].numpy(), ref_ids[:, 3:8])
    none = loaded.signatures["serving_excluding"](
        user_ids=tf.constant(users, tf.int64),
        k=tf.constant(5),
        exclude_item_ids=tf.zeros([3, 0], tf.int64),
    )
    np.testing.assert_array_equal(none["item_ids"].numpy(), ref_ids[:, :5])


def test_export_holds_only_the_compressed_tables(exported):
    model, result, _ = exported
    names = [
        name
        for name, _ in tf.train.list_variables(os.path.join(result.path, "variables", "variables"))
    ]
    tables = [n for n in names if n.startswith("tables/")]
    assert tables and all(n.startswith(("tables/", "_CHECKPOINTABLE_OBJECT_GRAPH")) for n in names)
    assert not any("optimizer" in n or "embeddings" in n for n in names)
    meta = read_metadata(result.path)
    assert meta["kind"] == "retrieval" and meta["default_k"] == 5
    assert [t["name"] for t in meta["tables"]] == ["user_embedding", "item_embedding"]
    report = compression_report(result.path)
    assert report.usable_params == model.user_embedding.usable_params() + (
        model.item_embedding.usable_params()
    )
    assert report.value_bytes == 4 * report.usable_params  # no padding by default
    assert report.variables_bytes > report.raw_bytes


@pytest.mark.parametrize(
    ("inputs", "error", "match"),
    [
        (
            {"user_ids": [0, 40]},
            tf.errors.InvalidArgumentError,
            r"`user_ids` must be in \[0, num_users=40\)\. Received id\] \[40\]",
        ),
        ({"user_ids": [-3, 1]}, tf.errors.InvalidArgumentError, r"Received id\] \[-3\]"),
        ({"k": 0}, tf.errors.InvalidArgumentError, r"`k` must be in \[1, num_items=70\]"),
        ({"k": 71}, tf.errors.InvalidArgumentError, r"Received k =\] \[71\]"),
        ({"dtype": tf.float32}, (tf.errors.InvalidArgumentError, TypeError, ValueError), "int64"),
    ],
)
def test_serving_default_rejects_bad_inputs(exported, inputs, error, match):
    _, _, loaded = exported
    users = inputs.get("user_ids", [0, 1])
    k = inputs.get("k", 3)
    dtype = inputs.get("dtype", tf.int64)
    with pytest.raises(error, match=match):
        serve(loaded, users, k, dtype=dtype)


def test_embed_items_rejects_out_of_range_ids(exported):
    _, _, loaded = exported
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"`item_ids` must be in \[0, num_i"):
        loaded.signatures["embed_items"](item_ids=tf.constant([70], tf.int64))


@pytest.mark.skipif(not is_legacy_keras(), reason="TFRS needs tf-keras (TF_USE_LEGACY_KERAS=1)")
def test_top_k_equals_tfrs_brute_force(exported):
    import tensorflow_recommenders as tfrs

    model, _, loaded = exported
    index = tfrs.layers.factorized_top_k.BruteForce(k=10)
    index.index(model.embed_items(tf.range(70)), tf.range(70, dtype=tf.int64))
    users = np.arange(40)
    scores, ids = index(model.embed_users(tf.constant(users)), k=10)
    got_ids, got_scores = serve(loaded, users, 10)
    np.testing.assert_array_equal(got_ids, ids.numpy())
    np.testing.assert_allclose(got_scores, scores.numpy(), atol=1e-5, rtol=0)


@pytest.mark.skipif(not is_legacy_keras(), reason="TFRS needs tf-keras (TF_USE_LEGACY_KERAS=1)")
@pytest.mark.parametrize("item_tower", [False, True])
def test_tfrs_two_tower_export_matches_its_brute_force_index(tmp_path, rng, item_tower):
    from tfembsize.integrations.tfrs import TwoTowerRetrieval, build_index

    model = TwoTowerRetrieval(
        MaskedEmbedding(30, 8, name="user_embedding", embeddings_initializer="normal"),
        MaskedEmbedding(50, 8, name="item_embedding", embeddings_initializer="normal"),
        item_tower=keras.layers.Dense(8, name="item_dense") if item_tower else None,
    )
    random_sizes(model.user_embedding, rng)
    random_sizes(model.item_embedding, rng)
    result = save_compressed(model, tmp_path / "tfrs")
    # With an item tower the candidates are recomputed from the compressed table per call.
    assert result.item_scoring == ("representations" if item_tower else "compressed")
    scores, ids = build_index(model, 10)(tf.range(30))
    got_ids, got_scores = serve(tf.saved_model.load(result.path), np.arange(30), 10)
    np.testing.assert_array_equal(got_ids, ids.numpy())
    np.testing.assert_allclose(got_scores, scores.numpy(), atol=1e-5, rtol=0)
    names = [
        n for n, _ in tf.train.list_variables(os.path.join(result.path, "variables", "variables"))
    ]
    assert not any("task" in n or "optimizer" in n for n in names)


def test_pep_model_export(tmp_path, rng):
    user = PEPEmbedding(
        30,
        8,
        threshold_init=0.0,
        name="user_embedding",
        embeddings_initializer=keras.initializers.RandomNormal(0, 1, seed=1),
    )
    item = PEPEmbedding(
        50,
        8,
        threshold_init=0.0,
        name="item_embedding",
        embeddings_initializer=keras.initializers.RandomNormal(0, 1, seed=2),
    )
    model = ExportTestTwoTower(user, item)
    item.freeze_mask(rng.random((50, 8)) < 0.4)
    result = save_compressed(model, tmp_path / "pep")
    loaded = tf.saved_model.load(result.path)
    ids, scores = serve(loaded, [0, 29], 7)
    ref_ids, ref_scores = dense_top_k(model, [0, 29], 7)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_allclose(scores, ref_scores, atol=1e-5, rtol=0)
    assert [t.kind for t in compression_report(result.path).tables] == ["sparse", "sparse"]
    # Unstructured tables are compiled with XLA by default (small-batch CPU latency).
    assert result.jit_compile is True and read_metadata(result.path)["jit_compile"] is True
    assert check_gpu_ready(result.path).ok  # XLA-compiled bodies have GPU kernels too
    got = serve_elsewhere(result.path, [0, 29], tmp_path)  # XLA bodies load without tfembsize
    np.testing.assert_array_equal(got["item_ids"], ref_ids[:, :4])
    plain = save_compressed(model, tmp_path / "pep-plain", jit_compile=False)
    assert plain.jit_compile is False and read_metadata(plain.path)["jit_compile"] is False
    np.testing.assert_array_equal(serve(tf.saved_model.load(plain.path), [0, 29], 7)[0], ref_ids)
    if is_legacy_keras():  # TFRS needs tf-keras
        import tensorflow_recommenders as tfrs

        index = tfrs.layers.factorized_top_k.BruteForce(k=7)
        index.index(model.embed_items(tf.range(50)), tf.range(50, dtype=tf.int64))
        bf_scores, bf_ids = index(model.embed_users(tf.range(30)), k=7)
        ids, scores = serve(loaded, np.arange(30), 7)
        np.testing.assert_array_equal(ids, bf_ids.numpy())
        np.testing.assert_allclose(scores, bf_scores.numpy(), atol=1e-5, rtol=0)


def test_graph_backbone_gets_a_clear_error_and_nothing_is_written(tmp_path, rng):
    from tfembsize.data import synthetic
    from tfembsize.models import LightGCN

    model = LightGCN.create(synthetic(20, 30, 200, seed=0), 8, num_layers=1)
    random_sizes(model.user_embedding, rng)
    random_sizes(model.item_embedding, rng)
    with pytest.raises(CompressionError, match="LightGCN 'lightgcn'.*captures a tensor"):
        save_compressed(model, tmp_path / "lgcn")
    assert list(tmp_path.iterdir()) == []


def test_prefix_tables_are_not_compiled_by_default(tmp_path, retrieval_model):
    result = save_compressed(retrieval_model, tmp_path / "plain")
    assert result.jit_compile is False and read_metadata(result.path)["jit_compile"] is False
    with pytest.raises(TypeError, match="`jit_compile` must be True, False or None.*'yes'"):
        save_compressed(retrieval_model, tmp_path / "bad", jit_compile="yes")
    assert not (tmp_path / "bad").exists()


def test_jit_compiled_signatures_still_validate_ids(tmp_path, retrieval_model):
    result = save_compressed(retrieval_model, tmp_path / "jit", jit_compile=True)
    assert result.jit_compile is True
    loaded = tf.saved_model.load(result.path)
    ids, _ = serve(loaded, [0, 29], 6)
    np.testing.assert_array_equal(ids, dense_top_k(retrieval_model, [0, 29], 6)[0])
    # Validation happens outside the compiled region, so the error survives jit_compile.
    with pytest.raises(tf.errors.InvalidArgumentError, match="num_users=30"):
        serve(loaded, [30], 3)


def test_dense_baseline_export_scores_the_variable(tmp_path, retrieval_model):
    item_table = retrieval_model.item_embedding.masked_table().numpy()
    user_table = retrieval_model.user_embedding.masked_table().numpy()
    dense = ExportTestTwoTower(
        keras.layers.Embedding(
            30, 8, embeddings_initializer=keras.initializers.Constant(user_table), name="u"
        ),
        keras.layers.Embedding(
            50, 8, embeddings_initializer=keras.initializers.Constant(item_table), name="i"
        ),
    )
    result = save_serving_model(dense, tmp_path / "dense", verify=False)
    assert result.item_scoring == "dense_table" and result.tables == ()
    ids, _ = serve(tf.saved_model.load(result.path), [3], 4)
    np.testing.assert_array_equal(ids, dense_top_k(retrieval_model, [3], 4)[0])
    with pytest.raises(CompressionError, match="holds neither searchable nor compressed"):
        save_compressed(dense, tmp_path / "nothing")


# Call signatures ----------------------------------------------------------------------------------


def test_functional_model_call_signature(tmp_path, rng):
    inputs = keras.Input((3,), dtype="int32", name="ids")
    emb = MaskedEmbedding(20, 4, name="emb")
    model = keras.Model(inputs, keras.layers.Dense(1)(keras.layers.Flatten()(emb(inputs))))
    random_sizes(emb, rng)
    result = save_compressed(model, tmp_path / "call")
    assert result.kind == "call" and result.signatures == ("serving_default",)
    sig = tf.saved_model.load(result.path).signatures["serving_default"]
    ids = rng.integers(0, 20, size=(4, 3)).astype(np.int32)
    (out,) = sig(ids=tf.constant(ids)).values()
    np.testing.assert_allclose(out.numpy(), model(ids).numpy(), atol=1e-6, rtol=0)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"ids must be in \[0, input_dim=20\)"):
        sig(ids=tf.constant([[0, 1, 20]], tf.int32))


def test_subclassed_call_signature_needs_or_takes_input_signature(tmp_path, retrieval_model):
    spec = tf.TensorSpec([None, 2], tf.int32, name="pairs")
    result = save_compressed(
        retrieval_model, tmp_path / "pairs", signatures="call", input_signature=spec
    )
    pairs = tf.constant([[0, 1], [29, 49]], tf.int32)
    out = tf.saved_model.load(result.path).signatures["serving_default"](pairs=pairs)
    np.testing.assert_allclose(out["outputs"].numpy(), retrieval_model(pairs).numpy(), atol=1e-5)
    if not is_legacy_keras():  # tf-keras records the call's input spec itself
        with pytest.raises(ValueError, match="Pass input_signature="):
            save_compressed(retrieval_model, tmp_path / "nospec", signatures="call")


# Atomic write -------------------------------------------------------------------------------------


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def test_failure_mid_write_leaves_nothing(tmp_path, retrieval_model, monkeypatch):
    real_save = tf.saved_model.save

    def crash(obj, export_dir, **kwargs):
        real_save(obj, export_dir, **kwargs)  # a complete SavedModel in the temp dir...
        raise OSError("disk full")  # ...then the crash

    monkeypatch.setattr(sm.tf.saved_model, "save", crash)
    target = tmp_path / "model"
    with pytest.raises(OSError, match="disk full"):
        save_compressed(retrieval_model, target)
    assert not target.exists()
    assert leftovers(tmp_path) == []


def test_failed_verification_and_overwrite(tmp_path, retrieval_model, monkeypatch):
    target = tmp_path / "model"
    save_compressed(retrieval_model, target, verify=False)
    stamp = (target / "saved_model.pb").stat().st_mtime_ns
    with pytest.raises(FileExistsError, match="already exists.*overwrite=True"):
        save_compressed(retrieval_model, target)

    def bad_verify(*args):
        raise ExportVerificationError("mismatch")

    monkeypatch.setattr(sm, "_verify_saved", bad_verify)
    with pytest.raises(ExportVerificationError):
        save_compressed(retrieval_model, target, overwrite=True)
    assert (target / "saved_model.pb").stat().st_mtime_ns == stamp  # old export untouched
    assert leftovers(tmp_path) == []
    monkeypatch.undo()
    save_compressed(retrieval_model, target, overwrite=True, verify=False)
    assert (target / "saved_model.pb").stat().st_mtime_ns != stamp
    assert leftovers(tmp_path) == []


def test_bad_arguments(tmp_path, retrieval_model):
    with pytest.raises(ValueError, match="`signatures` must be 'auto', 'retrieval' or 'call'"):
        save_compressed(retrieval_model, tmp_path / "a", signatures="predict")
    with pytest.raises(ValueError, match="`k` must be a positive integer. Received: k=0"):
        save_compressed(retrieval_model, tmp_path / "b", k=0)
    with pytest.raises(ValueError, match="atomically to a local directory"):
        save_compressed(retrieval_model, "gs://bucket/model")
    plain = keras.Sequential([keras.Input((1,), dtype="int32"), MaskedEmbedding(3, 2)])
    with pytest.raises(ValueError, match="signatures='retrieval' needs"):
        save_compressed(plain, tmp_path / "c", signatures="retrieval")


# Serving without tfembsize ------------------------------------------------------------------------

_LOADER = textwrap.dedent(
    """
    import importlib.abc, json, sys

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "tfembsize" or name.startswith("tfembsize."):
                raise ImportError("tfembsize is blocked in this process")

    sys.meta_path.insert(0, Block())
    sys.path = [p for p in sys.path if not p.rstrip("/").endswith("main")]
    try:
        import tfembsize  # noqa: F401
        raise SystemExit("tfembsize was importable")
    except ImportError:
        pass
    import tensorflow as tf

    loaded = tf.saved_model.load(sys.argv[1])
    users = json.loads(sys.argv[2])
    out = loaded.signatures["serving_default"](
        user_ids=tf.constant(users, tf.int64), k=tf.constant(4))
    assert not any(m.startswith("tfembsize") for m in sys.modules)
    print(json.dumps({"item_ids": out["item_ids"].numpy().tolist(),
                      "scores": out["scores"].numpy().tolist()}))
    """
)


def serve_elsewhere(path: str, users: list[int], cwd: Path) -> dict:
    """Top-4 of ``users`` from a fresh interpreter in which tfembsize cannot be imported."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": ""}
    env.pop("TF_USE_LEGACY_KERAS", None)
    proc = subprocess.run(
        [sys.executable, "-c", _LOADER, path, json.dumps(users)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_loads_in_a_process_without_tfembsize(exported, tmp_path):
    model, result, _ = exported
    got = serve_elsewhere(result.path, [0, 7, 39], tmp_path)
    ref_ids, ref_scores = dense_top_k(model, [0, 7, 39], 4)
    np.testing.assert_array_equal(got["item_ids"], ref_ids)
    np.testing.assert_allclose(got["scores"], ref_scores, atol=1e-5)


def test_saved_model_cli_run(exported, tmp_path):
    model, result, _ = exported
    cli = VENV_BIN / "saved_model_cli"
    if not cli.exists():
        pytest.skip("saved_model_cli not installed next to the interpreter")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run(
        [
            str(cli),
            "run",
            "--dir",
            result.path,
            "--tag_set",
            "serve",
            "--signature_def",
            "serving_default",
            "--input_exprs",
            "user_ids=[0,7,39];k=4",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    block = proc.stdout.split("Result for output key item_ids:")[1].split("Result for")[0]
    rows = [r.strip(" []") for r in block.strip().splitlines()]
    ids = np.array([[int(v) for v in r.split()] for r in rows])
    np.testing.assert_array_equal(ids, dense_top_k(model, [0, 7, 39], 4)[0])
