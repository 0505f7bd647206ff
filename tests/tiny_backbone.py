"""A three-convolution backbone registered for a test: trains in seconds, 12x12 map at 48 px."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import keras
import pytest

import tfx_transfer as tt

NAME = "tinycam"


def tiny_cnn(include_top=False, weights=None, input_shape=(48, 48, 3)):
    inputs = keras.Input(input_shape)
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="b1_conv")(inputs)
    x = keras.layers.Conv2D(24, 3, strides=2, padding="same", activation="relu", name="b2_conv")(x)
    x = keras.layers.Conv2D(32, 3, strides=2, padding="same", activation="relu", name="b3_conv")(x)
    return keras.Model(inputs, x, name=NAME)


@contextlib.contextmanager
def tinycam_registered() -> Iterator[str]:
    """The backbone registered as "tinycam" inside the block (for module-scoped fixtures)."""
    from tfx_transfer.models import backbones

    tt.register_backbone(tt.BackboneSpec(NAME, tiny_cnn, "tf", 48, 16,
                                         blocks=(("b1", "^b1_"), ("b2", "^b2_"), ("b3", "^b3_"))),
                         overwrite=True)
    try:
        yield NAME
    finally:
        backbones._REGISTRY.pop(NAME)


@pytest.fixture
def tinycam():
    """Registers the backbone as "tinycam" for the test, removes it afterwards."""
    with tinycam_registered() as name:
        yield name
