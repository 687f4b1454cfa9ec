"""The ``Example:`` sections of the backbone modules run and print what they say."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "tfembsize.models.mf",
    "tfembsize.models.ncf",
    "tfembsize.models.ngcf",
    "tfembsize.models.lightgcn",
    "tfembsize.models.graph",
    "tfembsize.training.config",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0, f"{name} has no examples"
    assert result.failed == 0
