"""The surrogates are plain tf.Modules (no Keras models), so their tests skip the root
``keras.backend.clear_session()`` (a full ``gc.collect`` costing ~0.5 s per test) and only
seed the global generators."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf


@pytest.fixture(autouse=True)
def _seed_and_clear() -> None:
    tf.random.set_seed(0)
    np.random.seed(0)
