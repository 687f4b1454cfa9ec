"""The shipped layer contract: every tfembsize layer keeps it, and it catches broken layers."""

from __future__ import annotations

import doctest

import numpy as np
import pytest
import tensorflow as tf

from tfembsize._keras import is_legacy_keras, keras, register_serializable
from tfembsize.layers import (
    BudgetedEmbedding,
    CompressedEmbedding,
    CompressedLadderEmbedding,
    LadderEmbedding,
    MaskedEmbedding,
    PEPEmbedding,
    ids_out_of_range_message,
)
from tfembsize.layers import utils as layer_utils
from tfembsize.layers.utils import check_ids_in_range
from tfembsize.testing import (
    LayerContract,
    check_config_round_trip,
    check_id_boundary,
    check_keras_layer_test,
    check_mask_zero,
)
from tfembsize.testing import layer_contract as contract_module

IDS = np.array([[0, 3, 9], [1, 9, 4]], dtype=np.int32)
SIZES = np.array([4, 3, 2, 1, 4, 1, 2, 3, 4, 1], dtype=np.int32)


# Every layer keeps the contract -----------------------------------------------------------------
class TestMaskedEmbeddingContract(LayerContract):
    layer_cls = MaskedEmbedding
    init_kwargs = {"input_dim": 10, "output_dim": 4, "min_size": 1}
    input_data = IDS

    def prepare(self, layer):
        layer.assign_sizes(SIZES)


class TestMaskedEmbeddingRank1Contract(LayerContract):
    """Rank-1 ids, and a mask from the start."""

    layer_cls = MaskedEmbedding
    init_kwargs = {"input_dim": 7, "output_dim": 3, "mask_zero": True}
    input_data = np.array([0, 6, 3, 1], dtype=np.int32)


class TestMaskedEmbeddingDefaultsContract(LayerContract):
    """The contract's own default ids (rank 2) and plain Embedding arguments."""

    layer_cls = MaskedEmbedding
    init_kwargs = {"input_dim": 7, "output_dim": 3}


class TestBudgetedEmbeddingContract(LayerContract):
    layer_cls = BudgetedEmbedding
    init_kwargs = {
        "input_dim": 10,
        "output_dim": 4,
        "sparsity": 0.5,
        "allocation": "frequency",
        "frequencies": [9.0, 1, 5, 3, 7, 0, 2, 8, 4, 6],
    }
    input_data = IDS


class TestPEPEmbeddingContract(LayerContract):
    """While pruning: thresholds high enough that some entries are exactly zero."""

    layer_cls = PEPEmbedding
    init_kwargs = {
        "input_dim": 10,
        "output_dim": 4,
        "granularity": "feature",
        "threshold_init": -3.0,
        "embeddings_initializer": keras.initializers.RandomUniform(-0.1, 0.1, seed=1),
    }
    input_data = IDS


class TestFrozenPEPEmbeddingContract(LayerContract):
    """After freeze_mask: the lookup is E * M."""

    layer_cls = PEPEmbedding
    init_kwargs = {"input_dim": 10, "output_dim": 4, "granularity": "global"}
    input_data = IDS

    def prepare(self, layer):
        layer.freeze_mask(np.arange(40).reshape(10, 4) % 3 != 0)


def _prefix_source() -> MaskedEmbedding:
    source = MaskedEmbedding(10, 4, name="compressed")
    source.assign_sizes(SIZES)
    return source


def _sparse_source() -> PEPEmbedding:
    source = PEPEmbedding(10, 4, name="compressed")
    source.build(None)
    mask = np.arange(40).reshape(10, 4) % 3 != 0
    mask[5] = False  # a row with nothing kept
    source.freeze_mask(mask)
    return source


class TestCompressedPrefixEmbeddingContract(LayerContract):
    layer_cls = CompressedEmbedding
    _packed = CompressedEmbedding.from_layer(_prefix_source(), scoring=True).packed()
    init_kwargs = CompressedEmbedding.config_for(_packed)
    input_data = IDS
    run_training_check = False  # inference only: nothing to train

    def prepare(self, layer):
        layer.set_packed(self._packed)


class TestCompressedSparseEmbeddingContract(LayerContract):
    layer_cls = CompressedEmbedding
    _packed = CompressedEmbedding.from_layer(_sparse_source(), positions="smallest").packed()
    init_kwargs = CompressedEmbedding.config_for(_packed)
    input_data = IDS
    run_training_check = False

    def prepare(self, layer):
        layer.set_packed(self._packed)


def _ladder_source() -> LadderEmbedding:
    source = LadderEmbedding(10, (1, 2, 4), name="compressed")
    source.grow([1, 2, 4, 4, 7])
    source.grow([2, 7, 8])
    source.moving_mean.assign([0.1, -0.2, 0.3, 0.0])
    source.moving_variance.assign([1.5, 0.5, 2.0, 1.0])
    return source


class TestCompressedLadderEmbeddingContract(LayerContract):
    layer_cls = CompressedLadderEmbedding
    _source = CompressedLadderEmbedding.from_layer(_ladder_source())
    init_kwargs = {k: v for k, v in _source.get_config().items() if k not in ("name", "dtype")}
    input_data = IDS
    run_training_check = False  # inference only: nothing to train

    def prepare(self, layer):
        layer.set_weights(self._source.get_weights())


def test_compressed_contract_cases_are_not_trivial():
    prefix = TestCompressedPrefixEmbeddingContract._packed
    sparse = TestCompressedSparseEmbeddingContract._packed
    assert prefix.kind == "prefix" and len(prefix.class_widths) == 4
    assert sparse.kind == "sparse" and 0 in sparse.class_widths
    ladder = TestCompressedLadderEmbeddingContract._source
    assert sorted(set(ladder.rungs.tolist())) == [0, 1, 2]


def test_module_example_runs():
    result = doctest.testmod(contract_module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


# The contract catches broken layers ------------------------------------------------------------
def _planted_off_by_one(ids, input_dim, layer_name):
    """`check_ids_in_range` with the graph-mode bound written as ``hi <= limit``.

    Planted where the layers' `integer_ids` looks it up (`tfembsize.layers.utils`).
    """
    if tf.executing_eagerly():
        return check_ids_in_range(ids, input_dim, layer_name)
    lo, hi = tf.reduce_min(ids), tf.reduce_max(ids)
    ok = tf.logical_and(lo >= 0, hi <= tf.constant(input_dim, ids.dtype))
    bad = tf.where(hi >= input_dim, hi, lo)
    msg = ids_out_of_range_message(layer_name, input_dim)
    with tf.control_dependencies([tf.debugging.Assert(ok, [msg, bad])]):
        return tf.identity(ids)


def test_id_boundary_catches_an_off_by_one_graph_check(monkeypatch):
    monkeypatch.setattr(layer_utils, "check_ids_in_range", _planted_off_by_one)
    with pytest.raises(AssertionError, match=r"in a tf\.function: int32 id 10 \(input_dim=10\)"):
        check_id_boundary(MaskedEmbedding, {"input_dim": 10, "output_dim": 4}, input_data=IDS)


def test_id_boundary_catches_a_missing_check(monkeypatch):
    monkeypatch.setattr(layer_utils, "check_ids_in_range", lambda ids, n, name: ids)
    # On CPU the gather complains by itself; that is not the layer's own error.
    with pytest.raises(AssertionError, match="without the layer's own out-of-range message"):
        check_id_boundary(MaskedEmbedding, {"input_dim": 10, "output_dim": 4}, input_data=IDS)


def test_id_boundary_catches_a_rejected_valid_id(monkeypatch):
    monkeypatch.setattr(
        layer_utils,
        "check_ids_in_range",
        lambda ids, n, name: check_ids_in_range(ids, n - 1, name),
    )
    ids = np.array([[0, 3, 5]], np.int32)  # fine for the narrowed check, so the layer builds
    with pytest.raises(AssertionError, match=r"eagerly: int32 ids 0 and 9: raised"):
        check_id_boundary(MaskedEmbedding, {"input_dim": 10, "output_dim": 4}, input_data=ids)


@register_serializable
class _TfMaskEmbedding(MaskedEmbedding):
    """The drop-in faults: a TensorFlow op in compute_mask, a tuple as output shape."""

    def compute_mask(self, inputs, mask=None):
        return tf.not_equal(inputs, 0) if self.mask_zero else None

    def compute_output_shape(self, input_shape):
        return (*tuple(input_shape), self.output_dim)


@pytest.mark.skipif(is_legacy_keras(), reason="Keras 3 symbolic inputs")
def test_mask_check_catches_a_tensorflow_op_on_symbolic_inputs():
    kwargs = {"input_dim": 10, "output_dim": 4}
    with pytest.raises(ValueError, match="KerasTensor cannot be used as input"):
        check_mask_zero(_TfMaskEmbedding, kwargs, input_data=IDS)
    with pytest.raises(ValueError, match="KerasTensor cannot be used as input"):
        check_keras_layer_test(_TfMaskEmbedding, {**kwargs, "mask_zero": True}, input_data=IDS)


@pytest.mark.skipif(not is_legacy_keras(), reason="tf-keras shape inference")
def test_keras_harness_catches_a_tuple_output_shape():
    with pytest.raises(AttributeError, match="as_list"):
        check_keras_layer_test(_TfMaskEmbedding, {"input_dim": 10, "output_dim": 4}, input_data=IDS)


@register_serializable
class _ForgetfulEmbedding(MaskedEmbedding):
    """get_config drops min_size."""

    def get_config(self):
        config = super().get_config()
        del config["min_size"]
        return config


def test_config_check_catches_a_dropped_argument():
    kwargs = {"input_dim": 10, "output_dim": 4, "min_size": 2}
    with pytest.raises(AssertionError, match=r"lacks the constructor arguments \['min_size'\]"):
        check_config_round_trip(_ForgetfulEmbedding, kwargs, input_data=IDS)


@register_serializable
class _MaskIgnoringEmbedding(MaskedEmbedding):
    """Accepts mask_zero but never masks."""

    def compute_mask(self, inputs, mask=None):
        return None


def test_mask_check_catches_an_ignored_mask_zero():
    with pytest.raises(AssertionError, match=r"mask_zero=True\): compute_mask\(ids\) is not"):
        check_mask_zero(_MaskIgnoringEmbedding, {"input_dim": 10, "output_dim": 4}, input_data=IDS)


def test_argument_errors():
    with pytest.raises(ValueError, match=r"`input_data` must be a non-empty integer array"):
        check_mask_zero(MaskedEmbedding, {"input_dim": 4, "output_dim": 2}, input_data=[0.5])
    with pytest.raises(ValueError, match=r"`formats` may hold .*Received: 'json'"):
        contract_module.check_save_load(
            MaskedEmbedding, {"input_dim": 4, "output_dim": 2}, formats=["json"]
        )
    with pytest.raises(ValueError, match=r"`input_dim` must be a positive integer"):
        contract_module.default_input_data(0)
    with pytest.raises(TypeError, match="must set `layer_cls`"):
        LayerContract().test_mask_zero()


def test_mask_check_covers_layers_that_take_mask_zero_through_kwargs():
    # BudgetedEmbedding's own signature has no mask_zero; its config does.
    takes = contract_module._takes_mask_zero
    assert takes(BudgetedEmbedding, {"input_dim": 4, "output_dim": 2, "sparsity": 0.5})
    assert not takes(contract_module._MaskEcho, {})
