"""Export failures: every one raised with context and the fix (`exporting`)."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from typing import Any

import tensorflow as tf

from tfembsize.export.compress import CompressionError
from tfembsize.layers.utils import iter_layers

__all__ = ["ExportVerificationError", "exporting", "explain", "lookup_resources"]


class ExportVerificationError(RuntimeError):
    """The written SavedModel did not reproduce the in-memory model; nothing was saved."""


_HINTS = (
    (
        ("untracked",),
        "A resource the serving computation uses (such as the table of a lookup layer) is "
        "not held by any layer of the model; for a two-tower model pass query_tower= and "
        "candidate_tower=, whose lookups the export saves itself.",
    ),
    (
        ("not yet been created", "not been built", "never called", "isn't built"),
        "Call the model (or each tower) once on a batch of ids before exporting, or start "
        "each tower with a keras.Input so that it is built when created.",
    ),
)


def explain(model: Any, step: str, err: BaseException) -> str:
    text = str(err)
    layer = re.search(r"layer ['\"]([^'\"]+)['\"]", text)
    hint = next((h for keys, h in _HINTS if any(key in text for key in keys)), None)
    if hint is None and isinstance(err, NotImplementedError):
        hint = (
            "The model's call is not implemented (TensorFlow Recommenders models train through "
            "compute_loss): for a two-tower model pass query_tower= and candidate_tower=."
        )
    if hint is None:
        hint = (
            "For a two-tower model whose towers start with a lookup layer pass query_tower= "
            "and candidate_tower=; for another model pass input_signature= and make sure its "
            "call works on a batch inside tf.function."
        )
    where = f" (in layer '{layer.group(1)}')" if layer else ""
    first = text.strip().splitlines()[0][:400] if text.strip() else ""
    return (
        f"Cannot export {type(model).__name__} '{getattr(model, 'name', '')}': {step} failed"
        f"{where} with {type(err).__name__}: {first}. {hint}"
    )


@contextlib.contextmanager
def exporting(model: Any, step: str) -> Iterator[None]:
    """Re-raises any failure of ``step`` as a `CompressionError` that says what to do."""
    try:
        yield
    except (CompressionError, ExportVerificationError, OSError):
        raise
    except Exception as err:  # noqa: BLE001 - every other failure gets context and a fix
        raise CompressionError(explain(model, step, err)) from err


def lookup_resources(model: Any) -> list[Any]:
    """The TensorFlow resources (lookup tables) held by the layers of ``model``.

    Keras 3 layers do not track them for SavedModel; the export root holds them so that a
    call signature through a ``StringLookup`` or ``IntegerLookup`` can be saved.
    """
    found: list[Any] = []
    for layer in [model, *iter_layers(model)]:
        for value in vars(layer).values():
            if isinstance(value, tf.saved_model.experimental.TrackableResource) and all(
                value is not x for x in found
            ):
                found.append(value)
    return found
