"""Shipped contract suites: run the tests every tfembsize layer and controller passes on yours.

* `LayerContract` / `check_layer_contract` (`tfembsize.testing.layer_contract`): Keras's own
  layer-test harness plus config, save/load, ``mask_zero`` and id-boundary checks for an
  embedding layer.
* `ControllerContract` (`tfembsize.testing.controller_contract`): subclass it in a pytest
  module and implement ``make_controller(sparsity, seed)``.

These helpers need ``pytest``.
"""

from tfembsize.testing.controller_contract import (
    MF_TABLES,
    NCF_TABLES,
    ControllerContract,
    FakeEnvironment,
    drive,
    make_observation,
)
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
    "ControllerContract",
    "FakeEnvironment",
    "LayerContract",
    "MF_TABLES",
    "NCF_TABLES",
    "check_config_round_trip",
    "check_id_boundary",
    "check_keras_layer_test",
    "check_layer_contract",
    "check_mask_zero",
    "check_save_load",
    "drive",
    "make_observation",
]
