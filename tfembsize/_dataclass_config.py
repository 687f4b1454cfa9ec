"""`DictConfig`: replace / to_dict / from_dict for frozen dataclass recipes."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, TypeVar

__all__ = ["DictConfig"]

_T = TypeVar("_T", bound="DictConfig")


class DictConfig:
    """Mixin for frozen dataclass recipes (`TrainConfig`, `PEPConfig`): copy, JSON round trip."""

    def replace(self: _T, **changes: Any) -> _T:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of the fields."""
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls: type[_T], d: Mapping[str, Any]) -> _T:
        """Inverse of `to_dict`.

        Raises:
            ValueError: ``d`` names a field the class does not have.
        """
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"Unknown {cls.__name__} fields {unknown}.")
        return cls(**dict(d))
