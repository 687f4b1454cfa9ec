"""Test helpers shipped with tfembsize: contract checks for your own layers."""

from tfembsize.testing.layer_contract import (
    LayerContract,
    check_config_round_trip,
    check_id_boundary,
    check_keras_layer_test,
    check_layer_contract,
    check_mask_zero,
    check_save_load,
)

__all__ = [
    "LayerContract",
    "check_config_round_trip",
    "check_id_boundary",
    "check_keras_layer_test",
    "check_layer_contract",
    "check_mask_zero",
    "check_save_load",
]
