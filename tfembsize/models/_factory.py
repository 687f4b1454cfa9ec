"""Builds the embedding tables of the backbones' ``create`` constructors."""

from __future__ import annotations

from typing import Any

from tfembsize._keras import keras


def make_table(num_rows: int, dim: int, cls: Any, initializer: Any, name: str, kwargs: dict) -> Any:
    """One table of class ``cls`` (default `MaskedEmbedding`) named ``name``.

    ``initializer`` is a zero-argument callable returning a fresh initialiser (an initialiser
    instance must not be shared between tables: unseeded tf-keras initialisers would repeat
    their values).
    """
    if cls is None:
        from tfembsize.layers import MaskedEmbedding

        cls = MaskedEmbedding
    kwargs = dict(kwargs)
    if "embeddings_initializer" not in kwargs:
        kwargs["embeddings_initializer"] = initializer()
    return cls(num_rows, dim, name=name, **kwargs)


def make_tables(
    num_users: int, num_items: int, dim: int, cls: Any, initializer: Any, kwargs: dict
) -> tuple[Any, Any]:
    """The user table ``"user_embedding"`` and the item table ``"item_embedding"``."""
    return (
        make_table(num_users, dim, cls, initializer, "user_embedding", kwargs),
        make_table(num_items, dim, cls, initializer, "item_embedding", kwargs),
    )


def glorot() -> Any:
    """Xavier (Glorot) uniform initialiser, the NGCF/NCF default."""
    return keras.initializers.GlorotUniform()


def normal_001() -> Any:
    """``N(0, 0.01)``, the MF/LightGCN default."""
    return keras.initializers.RandomNormal(0.0, 0.01)
