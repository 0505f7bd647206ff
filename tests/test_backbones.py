"""The backbone registry: every keras.applications CNN builds small and splits into blocks."""

import pytest

from tfx_transfer.models.backbones import (
    BackboneSpec,
    backbone_blocks,
    get_backbone,
    list_backbones,
    register_backbone,
)

# Families of keras.applications the registry must cover (issue #2).
EXPECTED = [
    "vgg16", "vgg19", "resnet50", "resnet101", "resnet152", "resnet50v2", "resnet101v2",
    "resnet152v2", "xception", "inceptionv3", "inceptionresnetv2", "mobilenet", "mobilenetv2",
    "mobilenetv3small", "mobilenetv3large", "densenet121", "densenet169", "densenet201",
    *[f"efficientnetb{i}" for i in range(8)],
    *[f"efficientnetv2{v}" for v in ("b0", "b1", "b2", "b3", "s", "m", "l")],
    "convnexttiny", "convnextsmall", "convnextbase", "convnextlarge", "convnextxlarge",
]


def test_registry_covers_keras_applications():
    assert set(EXPECTED) <= set(list_backbones())


def test_first_class_specs():
    vgg, resnet = get_backbone("VGG16"), get_backbone("ResNet50")
    assert vgg.preprocessing == resnet.preprocessing == "caffe"
    assert vgg.block_names == ("block1", "block2", "block3", "block4", "block5")
    assert resnet.block_names == ("conv1", "conv2", "conv3", "conv4", "conv5")
    assert vgg.default_unfreeze == ("block5",) and resnet.default_unfreeze == ("conv5",)
    assert vgg.default_size == resnet.default_size == 224


def test_names_are_normalised():
    assert get_backbone("Efficient-Net_B0").name == "efficientnetb0"
    assert get_backbone("mobilenet_v2").name == "mobilenetv2"


def test_unknown_backbone_lists_valid_names():
    with pytest.raises(ValueError, match=r"Unknown backbone 'vgg61'.*resnet50.*vgg16"):
        get_backbone("vgg61")


def test_register_rejects_duplicate_and_bad_mode():
    with pytest.raises(ValueError, match="already registered"):
        register_backbone(BackboneSpec("vgg16", "VGG16", "caffe", 224, 32, ()))
    with pytest.raises(ValueError, match="preprocessing='bgr'"):
        BackboneSpec("x", "VGG16", "bgr", 224, 32, ())


@pytest.mark.parametrize("name", EXPECTED)
def test_every_backbone_builds_small_and_partitions_into_blocks(name):
    spec = get_backbone(name)
    size = max(spec.min_size, 32)
    base = spec.build((size, size, 3))
    assert base.name == spec.name
    assert base.output.shape[-1] > 0 and len(base.output.shape) == 4
    blocks = backbone_blocks(spec, base)
    # every non-input layer is in exactly one block, blocks keep the spec's order
    layers = [layer for block in blocks.values() for layer in block]
    assert len(layers) == len({id(layer) for layer in layers}) == len(base.layers) - 1
    assert list(blocks) == [b for b in spec.block_names if b in blocks]
    assert len(blocks) >= 4
    assert set(spec.default_unfreeze) & set(blocks)
    # the last block holds weights (so unfreezing it trains something)
    assert any(layer.weights for layer in blocks[list(blocks)[-1]])
