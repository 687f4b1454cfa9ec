"""Real data sets, loaded once per session (skipped when ../shared/data is missing)."""

from __future__ import annotations

import pytest

from tfembsize.data import load_lightgcn, load_movielens


@pytest.fixture(scope="session")
def gowalla(data_dir):
    return load_lightgcn(data_dir / "gowalla")


@pytest.fixture(scope="session")
def ml1m(data_dir):
    return load_movielens(data_dir / "ml-1m")


@pytest.fixture(scope="session")
def ml100k(data_dir):
    return load_movielens(data_dir / "ml-100k")
