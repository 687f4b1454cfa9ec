"""check_gpu_ready: kernel walk through nested functions, dtype constraints, XLA compilation."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from tfembsize.export import (
    HOST_OPS,
    GpuReadinessError,
    OpIssue,
    check_gpu_ready,
    ops_without_gpu_kernel,
    save_compressed,
)


def test_compressed_retrieval_export_is_gpu_ready(tmp_path, retrieval_model):
    result = save_compressed(retrieval_model, tmp_path / "m", verify=False)
    report = check_gpu_ready(result.path)
    assert report.ok
    assert {s.name for s in report.signatures} == {
        "serving_default",
        "serving_excluding",
        "embed_users",
        "embed_items",
    }
    for name in ("serving_default", "serving_excluding"):
        serving = next(s for s in report.signatures if s.name == name)
        assert serving.jit_compiled is True and serving.max_abs_diff <= 1e-5
        assert {"TopKV2", "MatMul", "GatherV2", "RightShift"} <= set(serving.ops)
        assert set(serving.host_ops) <= HOST_OPS
    excluding = next(s for s in report.signatures if s.name == "serving_excluding")
    assert "TensorScatterUpdate" in excluding.ops  # the -inf mask
    assert "OK" in str(report)


def save_module(path, fn, spec):
    module = tf.Module()
    module.f = tf.function(fn, input_signature=[spec])
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.f})
    return str(path)


def test_cpu_only_op_in_a_nested_function_is_found(tmp_path):
    @tf.function
    def inner(x):
        return tf.raw_ops.UniqueV2(x=x, axis=tf.constant([0], tf.int64)).y

    path = save_module(
        tmp_path / "u", lambda x: {"y": inner(x) * 2}, tf.TensorSpec([None], tf.int32, name="x")
    )
    missing, _, ops = ops_without_gpu_kernel(path)
    assert "UniqueV2" in ops
    assert [m.op for m in missing] == ["UniqueV2"]
    with pytest.raises(GpuReadinessError, match=r"missing GPU kernels: UniqueV2"):
        check_gpu_ready(path, jit=False)
    report = check_gpu_ready(path, jit=False, strict=False)
    assert not report.ok and report.signatures[0].jit_compiled is None


def test_dtype_without_gpu_kernel_is_reported(tmp_path):
    # Min has GPU kernels, but none for int64.
    path = save_module(
        tmp_path / "m", lambda x: {"y": tf.reduce_min(x)}, tf.TensorSpec([None], tf.int64, name="x")
    )
    missing, _, _ = ops_without_gpu_kernel(path)
    assert missing == [OpIssue("Min", ("T=int64",), 1)]


def test_xla_failure_is_reported(tmp_path):
    adjacency = tf.sparse.from_dense(tf.constant(np.eye(3, dtype=np.float32)))
    path = save_module(
        tmp_path / "s",
        lambda x: {"y": tf.sparse.sparse_dense_matmul(adjacency, x)},
        tf.TensorSpec([3, 2], tf.float32, name="x"),
    )
    report = check_gpu_ready(path, strict=False)
    sig = report.signatures[0]
    assert not sig.missing  # SparseTensorDenseMatMul has a GPU kernel...
    assert sig.jit_compiled is False and "SparseTensorDenseMatMul" in sig.jit_error  # ...no XLA
    with pytest.raises(GpuReadinessError, match="XLA: FAILED"):
        check_gpu_ready(path)


def test_plain_savedmodel_gets_example_inputs(tmp_path):
    path = save_module(
        tmp_path / "p",
        lambda x: {"y": tf.nn.relu(x) * 2.0},
        tf.TensorSpec([None, 3], tf.float32, name="x"),
    )
    report = check_gpu_ready(path)
    assert report.ok and report.signatures[0].jit_compiled
    assert report.to_dict()["signatures"][0]["ok"] is True
