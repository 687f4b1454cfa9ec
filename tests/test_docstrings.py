"""Docstrings: the foundation modules' ``Example:`` sections run and print what they say, and
no module of the package points its users at documents they do not have."""

from __future__ import annotations

import doctest
import importlib
import importlib.util
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


# The API reference (`make docs`): every public name is documented --------------------------

_BUILD_API = REPO / "docs" / "build_api.py"


def _public_names() -> list[tuple[str, object]]:
    """``(tfembsize.<package>.<name>, object)`` for every name of the packages' ``__all__``."""
    import types

    out = []
    packages = [getattr(tfembsize, n) for n in tfembsize.__all__]
    packages = [m for m in packages if isinstance(m, types.ModuleType)]
    packages.append(importlib.import_module("tfembsize.testing"))
    for package in packages:
        out.append((package.__name__, package))
        for name in package.__all__:
            out.append((f"{package.__name__}.{name}", getattr(package, name)))
    return out


def _undocumented(names: list[tuple[str, object]]) -> list[str]:
    """Public names (and public methods and properties of public classes) without a docstring."""
    import inspect

    def documented(obj: object) -> bool:
        doc = obj.__dict__.get("__doc__") if isinstance(obj, type) else obj.__doc__
        return bool(doc and doc.strip())

    missing = []
    for full, obj in names:
        if not documented(obj):
            missing.append(full)
        if not isinstance(obj, type):
            continue
        for attr, value in vars(obj).items():
            member = value.fget if isinstance(value, property) else value
            member = getattr(member, "__func__", member)  # static and class methods
            if attr.startswith("_") or not (inspect.isfunction(member) or inspect.isclass(member)):
                continue
            if not documented(member):
                missing.append(f"{full}.{attr}")
    return missing


def test_every_public_name_has_a_docstring():
    names = _public_names()
    assert len(names) > 200  # every subpackage of tfembsize.__all__ and tfembsize.testing
    assert ("tfembsize.search.FitEnvironment", tfembsize.search.FitEnvironment) in names

    class Undocumented:
        def method(self):
            pass

        @property
        def value(self):
            return 1

    found = _undocumented([("x.Undocumented", Undocumented)])
    assert found == ["x.Undocumented", "x.Undocumented.method", "x.Undocumented.value"]
    assert _undocumented(names) == []


def _build_api():
    spec = importlib.util.spec_from_file_location("build_api", _BUILD_API)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_api_reference_of_a_package_builds_without_warnings(tmp_path):
    pytest.importorskip("pdoc", reason="pdoc is in the dev extra")
    warnings = _build_api().build(tmp_path, ("tfembsize.search",))
    assert warnings == []
    page = (tmp_path / "tfembsize" / "search.html").read_text(encoding="utf-8")
    for name in tfembsize.search.__all__:
        assert f'id="{name}"' in page, name


@pytest.mark.slow
def test_the_whole_api_reference_builds_without_warnings(tmp_path):
    pytest.importorskip("pdoc", reason="pdoc is in the dev extra")
    assert _build_api().main(["--output", str(tmp_path)]) == 0
    for full, _ in _public_names():
        package, _, name = full.rpartition(".")
        if package.count(".") == 1:  # tfembsize.<package>.<name>
            page = tmp_path / Path(*package.split(".")).with_suffix(".html")
            assert f'id="{name}"' in page.read_text(encoding="utf-8"), full
