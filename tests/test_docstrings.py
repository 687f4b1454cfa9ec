"""Docstrings: the foundation modules' ``Example:`` sections run and print what they say, and
no module of the package points its users at documents they do not have."""

from __future__ import annotations

import doctest
import importlib
import re
from pathlib import Path

import pytest

import tfembsize

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


PACKAGE = Path(tfembsize.__file__).resolve().parent
REPO = PACKAGE.parent

# References a user of the package cannot follow: sections of a private design document, the
# document itself, or an issue tracker. Each rule must be stated where it is used instead.
_PRIVATE_REFERENCES = re.compile(
    r"§|algorithms\.md|\bspec\)|\bthe spec\b|\bthe issue\b", flags=re.IGNORECASE
)


def _package_files() -> list[Path]:
    files = sorted(p for p in PACKAGE.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    return list(files)


def test_the_patterns_catch_what_they_should():
    for text in ("(spec §1.2)", "see algorithms.md", "as the spec says", "(the issue's)"):
        assert _PRIVATE_REFERENCES.search(text), text
    for text in ("tf.TensorSpec(shape)", "input_spec)", "a specification", "issues = []"):
        assert not _PRIVATE_REFERENCES.search(text), text


def test_no_module_refers_to_private_documents():
    files = _package_files()
    assert any(p.name == "interactions.py" for p in files)  # the scan sees the package
    found = []
    for path in files:
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError:
            continue
        for number, line in enumerate(lines, start=1):
            if _PRIVATE_REFERENCES.search(line):
                found.append(f"{path.relative_to(REPO).as_posix()}:{number}: {line.strip()}")
    assert not found, "References users cannot follow (say the rule instead):\n" + "\n".join(found)
