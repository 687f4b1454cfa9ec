"""Fakes for controller tests (shipped in `tfembsize.testing`) and a light autouse fixture."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from tfembsize.testing.controller_contract import (  # noqa: F401  (re-exported for tests)
    MF_TABLES,
    NCF_TABLES,
    FakeEnvironment,
    drive,
    make_observation,
)


@pytest.fixture(autouse=True)
def _seed_and_clear() -> None:
    """Replaces the root conftest's fixture in modules that import it.

    Controllers never build Keras models, so these tests skip ``keras.backend.clear_session()``
    (a full ``gc.collect``, ~0.5 s per test on a busy machine) and only seed the generators.
    """
    tf.random.set_seed(0)
    np.random.seed(0)
