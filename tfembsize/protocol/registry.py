"""The method registry of the paper protocol: size-search methods plugged in by name.

A *method* is a function ``fn(context: MethodContext) -> MethodOutput``: given the data, the
backbone, the target sparsity, a seed, a working directory and the shared retraining recipe,
it produces the sizes to retrain (a `SizePlan`, or a model builder for methods whose masks
are not prefix sizes, such as PEP). The protocol runner then asserts the budget, retrains
from scratch with validation early stopping (unless the method already did exactly that)
and reports test metrics. Controllers added later register themselves here:

    from tfembsize.protocol import register_method

    @register_method("bet", description="BET: budgeted table-level search")
    def _bet(ctx):
        ...
        return MethodOutput(plan=plan)
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = [
    "Method",
    "register_method",
    "unregister_method",
    "get_method",
    "available_methods",
]

_NAME = re.compile(r"^[a-z][a-z0-9_\-]*$")


@dataclass(frozen=True)
class Method:
    """A registered method.

    Attributes:
        name: the name used on the command line (lower case).
        fn: ``fn(context) -> MethodOutput``.
        budgeted: True if the method takes a target sparsity and must meet its budget; False
            for full-size or unbudgeted methods (ESAPN), which run once per seed and report
            the sparsity they reach.
        description: one line for ``--help``.
    """

    name: str
    fn: Callable[[Any], Any]
    budgeted: bool = True
    description: str = ""


_REGISTRY: dict[str, Method] = {}
_BUILTINS_LOADED = False


def register_method(
    name: str,
    fn: Callable[[Any], Any] | None = None,
    *,
    budgeted: bool = True,
    description: str = "",
    overwrite: bool = False,
) -> Any:
    """Registers ``fn`` under ``name``; usable as a decorator (``@register_method("bet")``).

    Args:
        name: lower-case name (letters, digits, ``_`` and ``-``).
        fn: ``fn(context: MethodContext) -> MethodOutput``. Omit to use as a decorator.
        budgeted: whether the method targets a sparsity (see `Method`).
        description: one-line description.
        overwrite: replace an existing registration instead of raising.

    Returns:
        ``fn`` (or the decorator).

    Raises:
        ValueError: a bad name, or the name is taken and ``overwrite`` is False.
    """
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(
            "`name` must be lower case letters, digits, '_' or '-', starting with a letter. "
            f"Received: name={name!r}"
        )

    def _register(f: Callable[[Any], Any]) -> Callable[[Any], Any]:
        if not callable(f):
            raise TypeError(f"`fn` must be callable. Received: {f!r}")
        if name in _REGISTRY and not overwrite and _REGISTRY[name].fn is not f:
            raise ValueError(
                f"A method named {name!r} is already registered; pass overwrite=True to replace it."
            )
        _REGISTRY[name] = Method(name, f, bool(budgeted), description)
        return f

    return _register if fn is None else _register(fn)


def unregister_method(name: str) -> None:
    """Removes a registration (no error if absent)."""
    _REGISTRY.pop(name, None)


def _load_builtins() -> None:
    global _BUILTINS_LOADED
    if not _BUILTINS_LOADED:
        _BUILTINS_LOADED = True
        from tfembsize.protocol import methods  # noqa: F401  (registers full, es, mr, ...)


def get_method(name: str) -> Method:
    """The method registered under ``name``.

    Raises:
        KeyError: no such method; the message lists the registered ones.
    """
    _load_builtins()
    if name not in _REGISTRY:
        raise KeyError(
            f"Unknown method {name!r}. Registered methods: {', '.join(available_methods())}."
        )
    return _REGISTRY[name]


def available_methods() -> list[str]:
    """Registered method names, sorted."""
    _load_builtins()
    return sorted(_REGISTRY)
