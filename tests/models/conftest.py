"""Fixtures shared by the backbone tests."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from tfembsize.data import Interactions, load_dataset


@pytest.fixture
def tiny() -> Interactions:
    """3 users, 4 items: user 0 has items 0 and 1, user 1 item 1, user 2 items 2 and 3."""
    return Interactions([0, 0, 1, 2, 2], [0, 1, 1, 2, 3], num_users=3, num_items=4)


@pytest.fixture(scope="session")
def ml100k(data_dir):
    """ML-100K split 50/25/25 with seed 42."""
    return load_dataset(data_dir / "ml-100k").split(0.5, 0.25, 0.25, seed=42)


def dense(grad) -> np.ndarray:
    """A gradient (Tensor or IndexedSlices) as a numpy array."""
    return tf.convert_to_tensor(grad).numpy()
