"""Builds the API reference (HTML) from the docstrings with pdoc; fails on any warning.

    python docs/build_api.py [--output build/docs] [module ...]

``make docs`` runs it. Without modules it documents ``tfembsize`` (its subpackages are the
names in ``tfembsize.__all__``; each page lists the subpackage's ``__all__``) and
``tfembsize.testing``. pdoc is in the ``dev`` extra (``pip install -e ".[dev]"``). Every
warning pdoc emits (an unresolvable annotation, a broken docstring) fails the build, so the
reference stays complete as the code changes. Open ``<output>/index.html``.
"""

from __future__ import annotations

import argparse
import inspect
import os
import sys
import types
import warnings
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("PDOC_ALLOW_EXEC", "1")  # imports may call platform.processor()

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MODULES = ("tfembsize", "tfembsize.testing")


def _public_objects(module: types.ModuleType) -> list[Any]:
    """The objects a package's ``__all__`` names, with those of its subpackages."""
    out = []
    for name in getattr(module, "__all__", []):
        obj = getattr(module, name, None)
        if isinstance(obj, types.ModuleType):
            if obj.__name__.startswith(module.__name__ + "."):
                out.extend(_public_objects(obj))
        elif obj is not None:
            out.append(obj)
    return out


def _fix_named_tuples(modules: list[types.ModuleType]) -> None:
    """Lets pdoc resolve the field annotations of ``NamedTuple`` constructors.

    ``collections.namedtuple`` creates ``__new__`` in a throwaway namespace, so pdoc cannot
    find the module the (string) annotations refer to and warns. Pointing ``__new__`` at the
    class's module fixes that; it changes nothing else (only in this process).
    """
    for module in modules:
        for obj in _public_objects(module):
            if isinstance(obj, type) and issubclass(obj, tuple) and hasattr(obj, "_fields"):
                new = obj.__dict__.get("__new__")
                new = new.__func__ if isinstance(new, staticmethod) else new
                if inspect.isfunction(new) and new.__module__ not in sys.modules:
                    new.__module__ = obj.__module__


def build(output: str | os.PathLike[str], modules: tuple[str, ...] = DEFAULT_MODULES) -> list[str]:
    """Writes the HTML reference of ``modules`` into ``output``; returns pdoc's warnings."""
    import importlib

    import pdoc
    import pdoc.render

    loaded = [importlib.import_module(m) for m in modules]
    _fix_named_tuples(loaded)
    pdoc.render.configure(docformat="google", footer_text="tfembsize API reference")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pdoc.pdoc(*modules, output_directory=Path(output))
    return [f"{w.category.__name__}: {w.message}" for w in caught]


def main(argv: list[str] | None = None) -> int:
    """Builds the reference; exit status 1 if pdoc warned."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--output", default=str(REPO / "build" / "docs"))
    parser.add_argument("modules", nargs="*", default=list(DEFAULT_MODULES))
    args = parser.parse_args(argv)
    problems = build(args.output, tuple(args.modules))
    for line in problems:
        sys.stderr.write(line + "\n")
    if problems:
        sys.stderr.write(f"API reference: {len(problems)} warning(s); fix them.\n")
        return 1
    pages = sum(1 for _ in Path(args.output).rglob("*.html"))
    sys.stdout.write(f"API reference: {pages} pages in {args.output}/ (open index.html).\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
