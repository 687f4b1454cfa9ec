"""Shared pytest fixtures. Every test runs under both Keras 3 and tf-keras (see Makefile)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from tfembsize._keras import is_legacy_keras, keras

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("TFEMBSIZE_DATA_DIR", REPO.parent / "shared" / "data"))


@pytest.fixture(autouse=True)
def _seed_and_clear() -> None:
    keras.backend.clear_session()
    tf.random.set_seed(0)
    np.random.seed(0)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real datasets in ../shared/data (never copied into the project).

    Missing data fails the test on CI (CI=true) and skips it elsewhere.
    """
    if not SHARED_DATA.is_dir():
        msg = f"real datasets not found at {SHARED_DATA} (set TFEMBSIZE_DATA_DIR)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    return SHARED_DATA


@pytest.fixture(scope="session")
def legacy() -> bool:
    """True under tf-keras (TF_USE_LEGACY_KERAS=1)."""
    return is_legacy_keras()
