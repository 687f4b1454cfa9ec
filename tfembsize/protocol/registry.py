"""The method registry of the paper protocol: size-search methods plugged in by name.

A *method* is a function ``fn(context: MethodContext) -> MethodOutput``: given the data, the
backbone, the target sparsity, a seed, a working directory and the shared retraining recipe,
it produces the sizes to retrain (a `SizePlan`, or a model builder for methods whose masks
are not prefix sizes, such as PEP). The protocol runner then asserts the budget, retrains
from scratch with validation early stopping (unless the method already did exactly that)
and reports test metrics. A method may register a frozen dataclass of its options
(``settings=``); the command line then offers one ``--<group>-<field>`` option per field.
Controllers added later register themselves here:

    from tfembsize.protocol import register_method

    @register_method("bet", settings=BETSettings, description="BET: budgeted table-level search")
    def _bet(ctx):
        settings = ctx.settings()
        ...
        return MethodOutput(plan=plan)

This module imports no method: the built-in ones are listed by module name (`BUILTIN_MODULES`)
and imported on the first lookup, so a method module may import the registry freely.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tfembsize.protocol.settings import check_settings_class

__all__ = [
    "BUILTIN_MODULES",
    "Method",
    "register_method",
    "unregister_method",
    "get_method",
    "available_methods",
    "option_groups",
]

_NAME = re.compile(r"^[a-z][a-z0-9_\-]*$")

BUILTIN_MODULES = (
    "tfembsize.protocol.methods.baselines",  # full, es, mr, frequency
    "tfembsize.protocol.methods.bet",  # bet, bet-random, bet-sizes-only
    "tfembsize.protocol.methods.pep",  # pep
    "tfembsize.protocol.methods.ciess",  # ciess, ciess-no-walk
    "tfembsize.protocol.methods.esapn",  # esapn, esapn-cap
)
"""Modules that register the built-in methods when imported (on the first lookup)."""


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
        settings: a frozen dataclass of the method's options (None: no options).
        group: the option group of ``settings`` on the command line (``--<group>-<field>``);
            methods sharing settings (BET and its ablations) share one group.
    """

    name: str
    fn: Callable[[Any], Any]
    budgeted: bool = True
    description: str = ""
    settings: type | None = None
    group: str = ""


_REGISTRY: dict[str, Method] = {}
_BUILTINS_LOADED = False


def register_method(
    name: str,
    fn: Callable[[Any], Any] | None = None,
    *,
    budgeted: bool = True,
    description: str = "",
    settings: type | None = None,
    group: str | None = None,
    overwrite: bool = False,
) -> Any:
    """Registers ``fn`` under ``name``; usable as a decorator (``@register_method("bet")``).

    Args:
        name: lower-case name (letters, digits, ``_`` and ``-``).
        fn: ``fn(context: MethodContext) -> MethodOutput``. Omit to use as a decorator.
        budgeted: whether the method targets a sparsity (see `Method`).
        description: one-line description.
        settings: a frozen dataclass of the method's options, every field with a default
            (help and command-line aliases in the field metadata, see
            `tfembsize.protocol.settings.setting`).
        group: the option group on the command line (default: ``name``). Methods in one
            group must register the same settings class.
        overwrite: replace an existing registration instead of raising.

    Returns:
        ``fn`` (or the decorator).

    Raises:
        ValueError: a bad name or group, the name is taken and ``overwrite`` is False, or the
            group is used with another settings class.
        TypeError: ``fn`` is not callable or ``settings`` is not a frozen dataclass.
    """
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(
            "`name` must be lower case letters, digits, '_' or '-', starting with a letter. "
            f"Received: name={name!r}"
        )
    group = name if group is None else group
    if not isinstance(group, str) or not _NAME.match(group):
        raise ValueError(
            "`group` must be lower case letters, digits, '_' or '-', starting with a letter. "
            f"Received: group={group!r}"
        )
    if settings is not None:
        check_settings_class(settings)

    def _register(f: Callable[[Any], Any]) -> Callable[[Any], Any]:
        if not callable(f):
            raise TypeError(f"`fn` must be callable. Received: {f!r}")
        if name in _REGISTRY and not overwrite and _REGISTRY[name].fn is not f:
            raise ValueError(
                f"A method named {name!r} is already registered; pass overwrite=True to replace it."
            )
        if settings is not None:
            for other in _REGISTRY.values():
                if other.name != name and other.group == group and other.settings is not settings:
                    raise ValueError(
                        f"Option group {group!r} belongs to method {other.name!r} with settings "
                        f"{getattr(other.settings, '__name__', None)}; method {name!r} registers "
                        f"{settings.__name__}. Received: group={group!r}"
                    )
        _REGISTRY[name] = Method(name, f, bool(budgeted), description, settings, group)
        return f

    return _register if fn is None else _register(fn)


def unregister_method(name: str) -> None:
    """Removes a registration (no error if absent)."""
    _REGISTRY.pop(name, None)


def _load_builtins() -> None:
    global _BUILTINS_LOADED
    if not _BUILTINS_LOADED:
        _BUILTINS_LOADED = True
        for module in BUILTIN_MODULES:
            importlib.import_module(module)


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


def option_groups() -> dict[str, tuple[type, tuple[str, ...]]]:
    """Option group -> (settings class, the methods sharing it), for methods with settings."""
    _load_builtins()
    out: dict[str, tuple[type, tuple[str, ...]]] = {}
    for name in sorted(_REGISTRY):
        m = _REGISTRY[name]
        if m.settings is not None:
            cls, names = out.get(m.group, (m.settings, ()))
            out[m.group] = (cls, (*names, name))
    return out
