"""Method settings as frozen dataclasses, read generically by the command line and the methods.

A method registers a frozen dataclass of its options (``register_method(...,
settings=BETSettings)``). Each field is one option: its type, default and the help text and
command-line aliases in the field's metadata (`setting`). The command line turns every field
into ``--<group>-<field>`` (``_`` written ``-``), validates the values by constructing the
dataclass and records the options given in `ProtocolConfig.method_options`; the method reads
them back with `MethodContext.settings` (or `settings_from_options`).

Example:
    >>> from dataclasses import dataclass
    >>> @dataclass(frozen=True)
    ... class ToySettings:
    ...     rounds: int = setting(3, help="search rounds", aliases=("--toy-n",))
    >>> [(o.flags, o.default) for o in setting_options("toy", ToySettings)]
    [(('--toy-rounds', '--toy-n'), 3)]
    >>> settings_from_options(ToySettings, {"rounds": 5})
    ToySettings(rounds=5)
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "parse_bool",
    "SettingOption",
    "setting",
    "check_settings_class",
    "setting_options",
    "settings_from_options",
    "settings_label",
]

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def setting(
    default: Any,
    *,
    help: str = "",  # noqa: A002  (the argparse word)
    aliases: Sequence[str] = (),
    parse: Callable[[str], Any] | None = None,
) -> Any:
    """A settings field with its command-line help and aliases.

    Args:
        default: the field's default.
        help: one line for ``--help``.
        aliases: more flags for the same option, e.g. ``("--bet-iterations",)`` (kept for
            commands recorded before the option got its generated name).
        parse: converts the command-line text to the field's value (default: from the
            field's type: ``int``, ``float``, ``str`` or ``bool``).

    Returns:
        A `dataclasses.field`.
    """
    for flag in aliases:
        if not (isinstance(flag, str) and flag.startswith("--") and len(flag) > 2):
            raise ValueError(f"`aliases` must be flags such as '--name'. Received: {flag!r}")
    metadata: dict[str, Any] = {"help": str(help), "aliases": tuple(aliases)}
    if parse is not None:
        metadata["parse"] = parse
    return dataclasses.field(default=default, metadata=metadata)


def check_settings_class(settings: Any) -> None:
    """Raises unless ``settings`` is a frozen dataclass whose fields all have defaults.

    Raises:
        TypeError: not a frozen dataclass class, or a field without a default.
    """
    if not (isinstance(settings, type) and dataclasses.is_dataclass(settings)):
        raise TypeError(f"`settings` must be a dataclass class. Received: settings={settings!r}")
    # __dataclass_params__ (set by @dataclass) is not in typeshed.
    if not settings.__dataclass_params__.frozen:  # type: ignore[attr-defined]
        raise TypeError(
            f"`settings` must be a frozen dataclass (@dataclass(frozen=True)). Received: "
            f"{settings.__name__}"
        )
    for f in dataclasses.fields(settings):
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise TypeError(
                f"Every settings field needs a default; {settings.__name__}.{f.name} has none."
            )


def settings_label(settings: type) -> str:
    """The name used in messages: the class name without ``Settings`` (``BETSettings``: BET)."""
    name = settings.__name__
    return name[: -len("Settings")] if name.endswith("Settings") and name != "Settings" else name


def settings_from_options(
    settings: type,
    options: Mapping[str, Any],
    *,
    defaults: Mapping[str, Any] | None = None,
) -> Any:
    """An instance of ``settings`` from a method's options.

    Args:
        settings: the settings dataclass.
        options: field name -> value (None values are left to the defaults).
        defaults: defaults that depend on the caller (e.g. the backbone), for fields that
            ``options`` does not set.

    Returns:
        ``settings(**values)``.

    Raises:
        ValueError: an unknown option name (the message lists the known ones), or a value the
            dataclass rejects.
    """
    names = [f.name for f in dataclasses.fields(settings)]
    unknown = sorted(set(options) - set(names))
    if unknown:
        raise ValueError(
            f"Unknown {settings_label(settings)} option(s) {unknown}; known options: "
            f"{sorted(names)}."
        )
    values = {k: v for k, v in (defaults or {}).items() if v is not None}
    values.update({k: v for k, v in options.items() if v is not None})
    return settings(**values)


@dataclass(frozen=True)
class SettingOption:
    """One command-line option generated from a settings field.

    Attributes:
        group: the option group (``bet``); the flag is ``--<group>-<field>``.
        field: the field name.
        flags: the generated flag first, then the aliases.
        parse: text -> value.
        default: the field's default (for ``--help``).
        help: the field's help text.
        metavar: the value's name in ``--help``.
    """

    group: str
    field: str
    flags: tuple[str, ...]
    parse: Callable[[str], Any]
    default: Any
    help: str
    metavar: str


def parse_bool(text: str) -> bool:
    """A yes/no command-line value: 1/true/yes/on or 0/false/no/off (any case).

    Raises:
        ValueError: any other text.
    """
    t = text.strip().lower()
    if t in _TRUE:
        return True
    if t in _FALSE:
        return False
    raise ValueError(f"expected one of {_TRUE + _FALSE}, got {text!r}")


def _parser_for(
    settings: type, f: dataclasses.Field[Any], hint: Any
) -> tuple[Callable[[str], Any], str]:
    if "parse" in f.metadata:
        return f.metadata["parse"], f.name.upper()
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            hint = args[0]
    if hint is bool:
        return parse_bool, "BOOL"
    if hint in (int, float, str):
        return hint, hint.__name__.upper()
    raise TypeError(
        f"{settings.__name__}.{f.name} has type {hint!r}; the command line reads int, float, str "
        "and bool fields. Give the field `setting(..., parse=fn)`."
    )


def setting_options(group: str, settings: type) -> list[SettingOption]:
    """The command-line options of a settings dataclass, in field order.

    Args:
        group: the option group (usually the method's name, shared by its variants).
        settings: the settings dataclass.

    Returns:
        One `SettingOption` per field.

    Raises:
        TypeError: a field of a type the command line cannot read (and no ``parse``).
    """
    check_settings_class(settings)
    hints = typing.get_type_hints(settings)
    out: list[SettingOption] = []
    for f in dataclasses.fields(settings):
        parse, metavar = _parser_for(settings, f, hints.get(f.name, str))
        if f.default is not dataclasses.MISSING:
            default = f.default
        else:
            assert f.default_factory is not dataclasses.MISSING  # check_settings_class
            default = f.default_factory()
        flag = f"--{group}-{f.name.replace('_', '-')}"
        flags = (flag, *[a for a in f.metadata.get("aliases", ()) if a != flag])
        out.append(
            SettingOption(
                group=group,
                field=f.name,
                flags=flags,
                parse=parse,
                default=default,
                help=str(f.metadata.get("help", "")),
                metavar=metavar,
            )
        )
    return out
