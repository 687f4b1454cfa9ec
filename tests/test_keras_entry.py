"""The single Keras entry point (tfembsize/_keras.py); nothing else imports Keras."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import tensorflow as tf

import tfembsize
from tfembsize import _keras
from tfembsize._keras import is_legacy_keras, keras, keras_version, register_serializable

PACKAGE = Path(tfembsize.__file__).resolve().parent


def test_resolves_what_tensorflow_resolves():
    assert keras.layers.Layer is tf.keras.layers.Layer  # tf.keras is a lazy module proxy
    legacy_env = os.environ.get("TF_USE_LEGACY_KERAS", "").lower() in ("1", "true", "yes")
    assert is_legacy_keras() is legacy_env
    major = keras_version().split(".")[0]
    assert major == ("2" if legacy_env else "3")
    module = keras.layers.Layer.__module__
    assert module.startswith("tf_keras") if legacy_env else module.startswith("keras")


def test_public_api():
    assert tfembsize.__version__ == "0.1.0"
    for name in tfembsize.__all__:
        assert hasattr(tfembsize, name), name
    for name in tfembsize.layers.__all__:
        assert hasattr(tfembsize.layers, name), name


def test_register_serializable():
    @register_serializable
    class Probe(keras.layers.Layer):
        pass

    assert keras.utils.get_registered_name(Probe) == "tfembsize>Probe"
    assert keras.utils.get_registered_object("tfembsize>Probe") is Probe


@pytest.mark.parametrize(
    "value, expected",
    [("1", True), ("true", True), ("YES", True), (" 1 ", True), ("0", False), ("", False)],
)
def test_legacy_requested(monkeypatch, value, expected):
    monkeypatch.setenv("TF_USE_LEGACY_KERAS", value)
    assert _keras._legacy_requested() is expected


def test_unsupported_keras_version_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(_keras, "_version_of", lambda k: "4.0.1")
    with pytest.raises(
        ImportError, match=r"supports Keras 2 \(tf-keras\) and Keras 3; tf\.keras resolved to "
    ):
        _keras._resolve()


def test_legacy_requested_but_keras3_resolved(monkeypatch):
    monkeypatch.setenv("TF_USE_LEGACY_KERAS", "1")
    monkeypatch.setattr(_keras, "_version_of", lambda k: "3.15.0")
    with pytest.raises(
        ImportError,
        match=r"TF_USE_LEGACY_KERAS=1 is set but tf\.keras resolved to Keras 3\.15\.0\. Set the",
    ):
        _keras._resolve()


def test_tf_keras_must_match_tensorflow(monkeypatch):
    monkeypatch.setenv("TF_USE_LEGACY_KERAS", "1")
    monkeypatch.setattr(_keras, "_version_of", lambda k: "2.15.0")
    minor = ".".join(tf.__version__.split(".")[:2])
    with pytest.raises(
        ImportError,
        match=rf"tf-keras 2\.15\.0 does not match TensorFlow .*install `tf-keras~={minor}\.0`",
    ):
        _keras._resolve()


_FORBIDDEN = re.compile(
    r"^\s*(import keras\b|from keras\b|import tf_keras\b|from tf_keras\b)|\btf\.keras\b",
    re.MULTILINE,
)


def test_nothing_else_imports_keras():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "_keras.py":
            continue
        text = path.read_text(encoding="utf-8")
        code = re.sub(r'"""(.|\n)*?"""', "", text)  # docstrings may mention tf.keras
        code = re.sub(r"#.*", "", code)
        if _FORBIDDEN.search(code):
            offenders.append(str(path.relative_to(PACKAGE)))
    assert offenders == [], f"import Keras via tfembsize._keras only: {offenders}"
