"""Public names of tfembsize.layers and tfembsize.optimizers, and the import paths kept working
after the layer modules were split."""

from __future__ import annotations

import importlib

import pytest

import tfembsize
import tfembsize.layers
import tfembsize.optimizers


@pytest.mark.parametrize("module_name", ["tfembsize.layers", "tfembsize.optimizers"])
def test_all_lists_exactly_importable_names(module_name):
    module = importlib.import_module(module_name)
    assert len(module.__all__) == len(set(module.__all__))
    for name in module.__all__:
        assert getattr(module, name) is not None


def test_layers_exports_every_layer_and_the_id_helpers():
    assert {
        "MaskedEmbedding",
        "BudgetedEmbedding",
        "PEPEmbedding",
        "CompressedEmbedding",
        "find_searchable_layers",
        "find_pep_layers",
        "check_ids_in_range",
        "ids_out_of_range_message",
    } <= set(tfembsize.layers.__all__)
    assert tfembsize.layers.PEPEmbedding is tfembsize.layers.pep_embedding.PEPEmbedding
    assert (
        tfembsize.layers.CompressedEmbedding
        is tfembsize.layers.compressed_embedding.CompressedEmbedding
    )


def test_pep_adam_lives_in_optimizers_and_is_re_exported_by_the_layer_module():
    from tfembsize.layers.pep_embedding import PEPAdam, coupled_l2_gradients
    from tfembsize.optimizers.pep_adam import PEPAdam as CanonicalPEPAdam

    assert PEPAdam is CanonicalPEPAdam is tfembsize.optimizers.PEPAdam
    assert CanonicalPEPAdam.__module__ == "tfembsize.optimizers.pep_adam"
    assert coupled_l2_gradients is tfembsize.optimizers.coupled_l2_gradients
    assert set(tfembsize.optimizers.__all__) == {"PEPAdam", "coupled_l2_gradients"}
    assert "optimizers" in tfembsize.__all__ and tfembsize.optimizers is not None


def test_pep_adam_keeps_its_registered_name():
    from tfembsize._keras import keras

    opt = tfembsize.optimizers.PEPAdam(1e-3)
    restored = keras.optimizers.deserialize(keras.optimizers.serialize(opt))
    assert type(restored) is tfembsize.optimizers.PEPAdam
    assert keras.utils.get_registered_name(tfembsize.optimizers.PEPAdam) == "tfembsize>PEPAdam"


# Every name the modules held before the split, by old module path.
OLD_PATHS = {
    "tfembsize.layers.compressed_embedding": [
        "CompressedEmbedding",
        "PackedTable",
        "pack_table",
        "pack_layer",
        "KINDS",
        "POSITIONS",
        "bits_for",
        "merge_classes",
        "pack_uint",
        "unpack_uint",
        "_unpack_tf",
        "_unpack_all_tf",
    ],
    "tfembsize.layers.pep_embedding": [
        "PEPEmbedding",
        "PEPAdam",
        "GRANULARITIES",
        "THRESHOLD_FNS",
        "coupled_l2_gradients",
        "find_pep_layers",
        "is_threshold_variable",
    ],
}


@pytest.mark.parametrize(
    ("module_name", "name"),
    [(m, n) for m, names in OLD_PATHS.items() for n in names],
)
def test_old_import_paths_still_work(module_name, name):
    module = importlib.import_module(module_name)
    assert getattr(module, name) is not None


def test_split_modules_stay_small():
    for name in ("compressed_embedding", "packed_table", "_packing", "pep_embedding"):
        module = importlib.import_module(f"tfembsize.layers.{name}")
        with open(module.__file__, encoding="utf-8") as f:
            assert sum(1 for _ in f) <= 700, name
