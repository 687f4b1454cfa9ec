"""Shipped contract suites: run the tests every tfembsize layer and controller passes on yours.

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

__all__ = [
    "ControllerContract",
    "FakeEnvironment",
    "MF_TABLES",
    "NCF_TABLES",
    "drive",
    "make_observation",
]
