"""Fixtures shared by the export tests (helpers live in `export_helpers`)."""

from __future__ import annotations

import numpy as np
import pytest
from export_helpers import ExportTestTwoTower, random_sizes, two_tower


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture
def retrieval_model(rng) -> ExportTestTwoTower:
    """A two-tower model with random prefix sizes on both tables."""
    model = two_tower()
    random_sizes(model.user_embedding, rng)
    random_sizes(model.item_embedding, rng)
    return model
