"""The single Keras entry point of tfembsize.

Every module of the package gets Keras from here and nowhere else. TensorFlow resolves
``tf.keras`` to Keras 3 by default, or to tf-keras (Keras 2) when the environment variable
``TF_USE_LEGACY_KERAS=1`` is set *before* TensorFlow is imported. TensorFlow Recommenders only
works with the latter. tfembsize's layers and controllers work with both.
"""

from __future__ import annotations

import os
from typing import Any

import tensorflow as tf

__all__ = ["keras", "is_legacy_keras", "keras_version", "register_serializable"]


def _legacy_requested() -> bool:
    return os.environ.get("TF_USE_LEGACY_KERAS", "").strip().lower() in ("1", "true", "yes")


def _version_of(k: Any) -> str:
    if k.layers.Layer.__module__.startswith("tf_keras"):
        import tf_keras

        return str(tf_keras.__version__)
    version = getattr(k, "__version__", None)
    if version is None and callable(getattr(k, "version", None)):
        version = k.version()
    return str(version or "")


def _resolve() -> Any:
    try:
        k = tf.keras
        version = _version_of(k)
    except ImportError as err:  # tf-keras missing under TF_USE_LEGACY_KERAS=1
        raise ImportError(
            "tfembsize: TensorFlow could not resolve `tf.keras` "
            f"(TF_USE_LEGACY_KERAS={os.environ.get('TF_USE_LEGACY_KERAS')!r}). With legacy "
            "Keras requested, install the tf-keras release matching TensorFlow "
            f"{tf.__version__}: `pip install 'tf-keras~={tf.__version__.rsplit('.', 1)[0]}'`."
        ) from err
    major = version.split(".")[0]
    if major not in ("2", "3"):
        raise ImportError(
            f"tfembsize supports Keras 2 (tf-keras) and Keras 3; tf.keras resolved to version "
            f"{version!r}."
        )
    if _legacy_requested() and major != "2":
        raise ImportError(
            "tfembsize: TF_USE_LEGACY_KERAS=1 is set but tf.keras resolved to Keras "
            f"{version}. Set the variable before TensorFlow is first imported, and install "
            "tf-keras."
        )
    if major == "2":
        tf_minor = ".".join(tf.__version__.split(".")[:2])
        k_minor = ".".join(version.split(".")[:2])
        if tf_minor != k_minor:
            raise ImportError(
                f"tfembsize: tf-keras {version} does not match TensorFlow {tf.__version__}; "
                f"install `tf-keras~={tf_minor}.0`."
            )
    return k


keras = _resolve()
_VERSION = _version_of(keras)


def keras_version() -> str:
    """Returns the version string of the Keras that TensorFlow resolved."""
    return _VERSION


def is_legacy_keras() -> bool:
    """Returns True when running on tf-keras (Keras 2), False on Keras 3."""
    return _VERSION.startswith("2.")


def register_serializable(cls: type) -> type:
    """Registers a class as serializable under the package name ``tfembsize``."""
    return keras.utils.register_keras_serializable(package="tfembsize")(cls)
