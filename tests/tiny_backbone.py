"""Tiny backbones registered for a test, for plumbing that does not depend on the backbone.

``tinycam``: three convolutions, trains in seconds, a 12x12 map at 48 px (Grad-CAM).
``tinybn``: convolution + BatchNormalization in two blocks, a fast stand-in for ResNet.
``tinyvgg``: VGG16's layer names and blocks (block1..block5, each convolutions + a pool) with
one convolution per block but two in block5 (block5_conv1, block5_conv2, block5_pool: 6 weighted
layers) and 8 channels: the block logic of VGG16 at a fraction of its tracing cost.
"""

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
def tinycam_registered(preprocessing: str = "tf") -> Iterator[str]:
    """The backbone registered as "tinycam" inside the block (for module-scoped fixtures,
    subprocesses, or another preprocessing mode)."""
    from tfx_transfer.models import backbones

    tt.register_backbone(tt.BackboneSpec(NAME, tiny_cnn, preprocessing, 48, 16,
                                         blocks=(("b1", "^b1_"), ("b2", "^b2_"), ("b3", "^b3_"))),
                         overwrite=True)
    try:
        yield NAME
    finally:
        backbones._REGISTRY.pop(NAME, None)


@pytest.fixture
def tinycam():
    """Registers the backbone as "tinycam" for the test, removes it afterwards."""
    with tinycam_registered() as name:
        yield name


def tiny_bn_backbone(include_top=False, weights=None, input_shape=(32, 32, 3)):
    """conv + BatchNormalization in two blocks: a fast stand-in for ResNet."""
    inputs = keras.Input(input_shape)
    x = keras.layers.Conv2D(4, 3, name="low_conv")(inputs)
    x = keras.layers.BatchNormalization(name="low_bn")(x)
    x = keras.layers.Conv2D(4, 3, name="top_conv")(x)
    x = keras.layers.BatchNormalization(name="top_bn")(x)
    return keras.Model(inputs, x, name="tinybn")


@pytest.fixture
def tinybn():
    """A registered two-block conv+BN backbone, removed again after the test."""
    from tfx_transfer.models import backbones

    tt.register_backbone(tt.BackboneSpec("tinybn", tiny_bn_backbone, "tf", 32, 8,
                                         blocks=(("low", "^low_"), ("top", "^top_"))),
                         overwrite=True)
    yield "tinybn"
    backbones._REGISTRY.pop("tinybn", None)


def tiny_vgg_backbone(include_top=False, weights=None, input_shape=(32, 32, 3)):
    """VGG16's layer names and blocks, 8 channels, 1 convolution per block but 2 in block5 (a
    block the top-N form can cut through): fewer layers, so each tf.function traces faster."""
    inputs = keras.Input(input_shape)
    x = inputs
    for block, convs in enumerate((1, 1, 1, 1, 2), start=1):
        for i in range(1, convs + 1):
            x = keras.layers.Conv2D(8, 3, padding="same", activation="relu",
                                    name=f"block{block}_conv{i}")(x)
        x = keras.layers.MaxPooling2D(2, name=f"block{block}_pool")(x)
    return keras.Model(inputs, x, name="tinyvgg")


@contextlib.contextmanager
def tinyvgg_registered() -> Iterator[str]:
    """"tinyvgg" registered inside the block, with VGG16's blocks and default (block5)."""
    from tfx_transfer.models import backbones

    vgg = tt.get_backbone("vgg16")
    tt.register_backbone(tt.BackboneSpec("tinyvgg", tiny_vgg_backbone, vgg.preprocessing, 32, 32,
                                         blocks=vgg.blocks, default_unfreeze=vgg.default_unfreeze),
                         overwrite=True)
    try:
        yield "tinyvgg"
    finally:
        backbones._REGISTRY.pop("tinyvgg", None)


def tiny_bn_relu_backbone(include_top=False, weights=None, input_shape=(32, 32, 3)):
    """Conv -> BatchNorm -> ReLU twice, 16 and 32 channels: random features that keep colour
    (what domain-adaptation tests need), built in a fraction of a second."""
    inputs = keras.Input(input_shape)
    x = inputs
    for block, (filters, strides) in enumerate(((16, 1), (32, 2)), start=1):
        x = keras.layers.Conv2D(filters, 3, strides=strides, padding="same", use_bias=False,
                                name=f"b{block}_conv")(x)
        x = keras.layers.BatchNormalization(name=f"b{block}_bn")(x)
        x = keras.layers.ReLU(name=f"b{block}_relu")(x)
    return keras.Model(inputs, x, name="tinybnrelu")


@contextlib.contextmanager
def tinybnrelu_registered() -> Iterator[str]:
    """"tinybnrelu" (conv + BatchNorm + ReLU, two blocks) registered inside the block."""
    from tfx_transfer.models import backbones

    tt.register_backbone(tt.BackboneSpec("tinybnrelu", tiny_bn_relu_backbone, "tf", 32, 8,
                                         blocks=(("b1", "^b1_"), ("b2", "^b2_"))),
                         overwrite=True)
    try:
        yield "tinybnrelu"
    finally:
        backbones._REGISTRY.pop("tinybnrelu", None)


def tiny_vgg16_standin(include_top=False, weights=None, input_shape=(32, 32, 3)):
    """VGG16 itself when weights are asked for (cached ImageNet weights, or the kit's
    WeightsUnavailableError offline: the same path as the real backbone), "tinyvgg" for
    random initialisation."""
    if weights is not None:
        return keras.applications.VGG16(include_top=False, weights=weights, input_shape=input_shape)
    return tiny_vgg_backbone(input_shape=input_shape)


def register_vgg16_standin() -> None:
    """Registers "vgg16" as :func:`tiny_vgg16_standin`, with VGG16's preprocessing, sizes and
    blocks (for a process that runs code written for VGG16 where the backbone is not the
    point, such as the quickstart notebook's kernel in tests/test_notebook.py)."""
    vgg = tt.get_backbone("vgg16")
    tt.register_backbone(tt.BackboneSpec("vgg16", tiny_vgg16_standin, vgg.preprocessing,
                                         vgg.default_size, vgg.min_size, blocks=vgg.blocks,
                                         default_unfreeze=vgg.default_unfreeze, loads_weights=True),
                         overwrite=True)
