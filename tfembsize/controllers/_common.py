"""Small helpers every controller uses: argument checks, sparsity arithmetic, generator state."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from fractions import Fraction
from typing import Any

import numpy as np

__all__ = [
    "generator_state",
    "set_generator_state",
    "sparsity_key",
    "uniform_size",
    "validate_seed",
    "validate_sparsities",
]


def validate_sparsities(sparsity: Any) -> tuple[float, ...]:
    """One sparsity or a sequence of distinct sparsities in (0, 1), as a tuple of floats."""
    values = [sparsity] if not isinstance(sparsity, (Sequence, np.ndarray)) else list(sparsity)
    if isinstance(sparsity, str) or not values:
        raise ValueError(
            "`sparsity` must be a float in (0, 1) or a non-empty sequence of them. Received: "
            f"sparsity={sparsity!r}"
        )
    out = []
    for s in values:
        if isinstance(s, bool) or not isinstance(s, (int, float, np.integer, np.floating)):
            raise ValueError(f"`sparsity` must be in (0, 1). Received: sparsity={sparsity!r}")
        if not 0.0 < float(s) < 1.0:  # also rejects NaN
            raise ValueError(f"`sparsity` must be in (0, 1). Received: sparsity={s!r}")
        out.append(float(s))
    if len(set(out)) != len(out):
        raise ValueError(f"`sparsity` values must be distinct. Received: sparsity={sparsity!r}")
    return tuple(out)


def validate_seed(seed: Any) -> int | None:
    """None or a non-negative integer."""
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"`seed` must be a non-negative integer or None. Received: seed={seed!r}")
    return int(seed)


def sparsity_key(sparsity: float) -> int:
    """An integer naming a sparsity in seed derivations (parts per million)."""
    return int(Fraction(repr(float(sparsity))) * 1_000_000)


def uniform_size(sparsity: float, d_max: int) -> int:
    """floor((1 - c) * d_max), computed exactly."""
    return int(math.floor((1 - Fraction(repr(float(sparsity)))) * d_max))


def generator_state(rng: np.random.Generator) -> dict[str, Any]:
    """The JSON state of a numpy Generator's bit generator."""
    state = rng.bit_generator.state
    copy: dict[str, Any] = json.loads(json.dumps(state, default=int))
    return copy


def _json_copy(state: Mapping[str, Any]) -> dict[str, Any]:
    """A deep copy of ``state`` through JSON (so it certainly is JSON)."""
    copy: dict[str, Any] = json.loads(json.dumps(state))
    return copy


def set_generator_state(rng: np.random.Generator, state: Mapping[str, Any]) -> None:
    """Restores a state from `generator_state` (same bit generator type)."""
    if state.get("bit_generator") != type(rng.bit_generator).__name__:
        raise ValueError(
            f"Generator state is for {state.get('bit_generator')}, not "
            f"{type(rng.bit_generator).__name__}."
        )
    rng.bit_generator.state = dict(state)
