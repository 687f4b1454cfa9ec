"""Backbones of the paper protocol by name, and their default retraining recipes.

A backbone builder is ``builder(split, d_max, seed) -> model``: a fresh full-size backbone
whose tables are `tfembsize.layers.MaskedEmbedding` layers named ``user_embedding`` /
``item_embedding`` (NCF adds ``*_mlp``), initialised under ``seed`` (None: under the current
global random state, which the caller has seeded). Register others with
`register_backbone`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = [
    "register_backbone",
    "get_backbone",
    "available_backbones",
    "default_train_config",
    "recipe_dict",
]

Builder = Callable[[Any, int, int | None], Any]
_BACKBONES: dict[str, Builder] = {}


def register_backbone(name: str, builder: Builder, *, overwrite: bool = False) -> None:
    """Registers ``builder(split, d_max, seed) -> model`` under ``name``."""
    if name in _BACKBONES and not overwrite:
        raise ValueError(f"A backbone named {name!r} is already registered.")
    _BACKBONES[name] = builder


def get_backbone(name: str) -> Builder:
    """The builder registered under ``name``.

    Raises:
        KeyError: unknown name (the message lists the known ones).
    """
    if name not in _BACKBONES:
        raise KeyError(
            f"Unknown backbone {name!r}. Known backbones: {', '.join(available_backbones())}."
        )
    return _BACKBONES[name]


def available_backbones() -> list[str]:
    """Registered backbone names."""
    return sorted(_BACKBONES)


def _seed(seed: int | None) -> int:
    """Seeds Keras/TF/NumPy with ``seed``; None keeps the global state (the caller seeded)."""
    if seed is None:
        return int(np.random.randint(0, 2**31 - 1))
    from tfembsize._keras import keras

    keras.utils.set_random_seed(int(seed) % (2**31 - 1))
    return int(seed)


def _mf(split: Any, d_max: int, seed: int | None) -> Any:
    from tfembsize.models import MF

    _seed(seed)
    return MF.create(split.num_users, split.num_items, d_max)


def _ncf(split: Any, d_max: int, seed: int | None) -> Any:
    from tfembsize.models import NCF

    _seed(seed)
    return NCF.create(split.num_users, split.num_items, d_max)


def _ngcf(split: Any, d_max: int, seed: int | None) -> Any:
    from tfembsize.models import NGCF

    return NGCF.create(split.train, d_max, seed=_seed(seed))


def _lightgcn(split: Any, d_max: int, seed: int | None) -> Any:
    from tfembsize.models import LightGCN

    _seed(seed)
    return LightGCN.create(split.train, d_max)


for _name, _builder in (("mf", _mf), ("ncf", _ncf), ("ngcf", _ngcf), ("lightgcn", _lightgcn)):
    register_backbone(_name, _builder)


def default_train_config(backbone: str, split: Any) -> Any:
    """The backbone's default recipe (`tfembsize.models.PRESETS`), or `TrainConfig()`."""
    from tfembsize.models import PRESETS, TrainConfig

    del split
    return PRESETS[backbone] if backbone in PRESETS else TrainConfig()


def recipe_dict(config: Any, split: Any) -> dict:
    """The recipe as JSON, with the steps in one pass over the training interactions."""
    from tfembsize.training.plan_training import steps_per_epoch

    d = config.to_dict() if hasattr(config, "to_dict") else dict(vars(config))
    # The test is evaluated once by the runner; verbosity and XLA change how a cell runs, not
    # what it computes, so cells run with and without them are interchangeable.
    for key in ("evaluate_test", "verbose", "jit_compile"):
        d.pop(key, None)
    d["steps_per_epoch"] = steps_per_epoch(split, d.get("batch_size", 1))
    return d
