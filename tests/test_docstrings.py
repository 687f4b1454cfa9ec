"""The ``Example:`` sections of the foundation modules' docstrings run and print what they say."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "tfembsize.budget",
    "tfembsize.plan",
    "tfembsize.layers.masked_embedding",
    "tfembsize.layers.budgeted_embedding",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0, f"{name} has no examples"
    assert result.failed == 0
