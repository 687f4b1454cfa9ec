"""Helpers shared by the backbone tests (a unique module name: `conftest` is ambiguous)."""

from __future__ import annotations

import numpy as np
import tensorflow as tf


def dense(grad) -> np.ndarray:
    """A gradient (Tensor or IndexedSlices) as a numpy array."""
    return tf.convert_to_tensor(grad).numpy()
