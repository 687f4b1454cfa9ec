"""Every tfembsize name README.md shows imports, and is public (listed in its module's __all__)."""

from __future__ import annotations

import importlib
import pkgutil
import re
from pathlib import Path

import pytest

import tfembsize
import tfembsize.layers
from tfembsize._keras import is_legacy_keras, keras

README = Path(__file__).resolve().parents[1] / "README.md"
TEXT = README.read_text(encoding="utf-8")

# Modules that only import under tf-keras (TensorFlow Recommenders needs it).
LEGACY_ONLY = {"tfembsize.integrations.tfrs"}
# Opt-in subpackages: `import tfembsize` does not import them, so they are not in the
# parent's __all__ (every other submodule the README shows must be).
ON_DEMAND = {
    "tfembsize.integrations",
    "tfembsize.integrations.keras_tuner",
    "tfembsize.integrations.tfrs",
    "tfembsize.protocol",
    "tfembsize.testing",
}

_DOTTED = re.compile(r"(?<![\w./-])(tes|tfembsize)((?:\.[A-Za-z_]\w*)+)")
_FROM_IMPORT = re.compile(
    r"^\s*from\s+(tfembsize(?:\.\w+)*)\s+import\s+(\([^)]*\)|[^\n#]+)", re.MULTILINE
)


def dotted_names(text: str) -> list[str]:
    """``tes.x.Y`` / ``tfembsize.x.Y`` paths, with ``tes`` spelled out as ``tfembsize``."""
    found = {"tfembsize" + m.group(2) for m in _DOTTED.finditer(text)}
    return sorted(found)


def from_imports(text: str) -> list[tuple[str, str]]:
    """``(module, name)`` for every ``from tfembsize... import ...`` statement."""
    out = set()
    for m in _FROM_IMPORT.finditer(text):
        names = m.group(2).strip().strip("()")
        for part in names.split(","):
            name = part.split(" as ")[0].strip()
            if name:
                out.add((m.group(1), name))
    return sorted(out)


def test_the_parsers_find_what_they_should():
    sample = """
    Use `tes.layers.MaskedEmbedding(4, 3)` or tfembsize.SizePlan.from_model; not coordinates.
    from tfembsize.layers import MaskedEmbedding, BudgetedEmbedding as BE
    from tfembsize.testing import (
        LayerContract,
        check_layer_contract,
    )
    """
    assert dotted_names(sample) == [  # the modules of the import lines too
        "tfembsize.SizePlan.from_model",
        "tfembsize.layers",
        "tfembsize.layers.MaskedEmbedding",
        "tfembsize.testing",
    ]
    assert from_imports(sample) == [
        ("tfembsize.layers", "BudgetedEmbedding"),
        ("tfembsize.layers", "MaskedEmbedding"),
        ("tfembsize.testing", "LayerContract"),
        ("tfembsize.testing", "check_layer_contract"),
    ]


def test_the_readme_shows_names_of_every_kind():
    names = dotted_names(TEXT)
    assert "tfembsize.layers.PEPEmbedding" in names
    assert "tfembsize.optimizers.PEPAdam" in names
    assert ("tfembsize.testing", "check_layer_contract") in from_imports(TEXT)


def _skip_if_legacy_only(path: str) -> None:
    for module in LEGACY_ONLY:
        if (path == module or path.startswith(module + ".")) and not is_legacy_keras():
            pytest.skip(f"{module} needs tf-keras (TF_USE_LEGACY_KERAS=1)")


@pytest.mark.parametrize("path", dotted_names(TEXT))
def test_dotted_name_imports_and_is_public(path):
    _skip_if_legacy_only(path)
    parts = path.split(".")
    module = importlib.import_module(parts[0])
    i = 1
    # Walk down through modules as far as the path names modules.
    while i < len(parts):
        name = ".".join(parts[: i + 1])
        try:
            sub = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name != name:
                raise
            break
        if name not in ON_DEMAND:
            assert parts[i] in module.__all__, f"{parts[i]} missing from {module.__name__}.__all__"
        module, i = sub, i + 1
    if i == len(parts):
        return  # the path is a module; importing it is the check
    assert parts[i] in getattr(module, "__all__", ()), (
        f"README shows {path}, but {parts[i]!r} is not in {module.__name__}.__all__"
    )
    obj = module
    for attr in parts[i:]:
        obj = getattr(obj, attr)


@pytest.mark.parametrize(("module_name", "name"), from_imports(TEXT))
def test_from_import_name_imports_and_is_public(module_name, name):
    _skip_if_legacy_only(module_name)
    module = importlib.import_module(module_name)
    assert name in module.__all__, f"README imports {name} from {module_name}, not in __all__"
    assert getattr(module, name) is not None


def test_every_public_layer_is_exported_by_tfembsize_layers_and_shown_in_the_readme():
    defined = set()
    for info in pkgutil.iter_modules(tfembsize.layers.__path__):
        module = importlib.import_module(f"tfembsize.layers.{info.name}")
        for name in getattr(module, "__all__", ()):
            obj = getattr(module, name)
            if (
                isinstance(obj, type)
                and issubclass(obj, keras.layers.Layer)
                and obj.__module__ == module.__name__
            ):
                defined.add(name)
    assert defined == {
        "BudgetedEmbedding",
        "CompressedEmbedding",
        "CompressedLadderEmbedding",
        "LadderEmbedding",
        "MaskedEmbedding",
        "PEPEmbedding",
    }
    assert defined <= set(tfembsize.layers.__all__)
    for name in tfembsize.layers.__all__:
        assert getattr(tfembsize.layers, name) is not None
    for name in defined:
        assert f"tes.layers.{name}" in TEXT or f"`{name}`" in TEXT, f"README omits {name}"


def test_readme_contract_example_runs(tmp_path, monkeypatch):
    """The "Testing your own layer" code block runs as shown."""
    blocks = re.findall(r"```python\n(.*?)```", TEXT, re.DOTALL)
    (block,) = [b for b in blocks if "check_layer_contract(" in b]
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(block, str(README), "exec"), namespace)  # noqa: S102 - our own README
    assert namespace["TestMyEmbedding"].init_kwargs == {"input_dim": 10, "output_dim": 4}
