"""The backbone registry, and one sweep over its families: blocks, inference mode, Grad-CAM.

The sweep builds the smallest member of every family (members share their family's
block regexes) plus an EfficientNetV2, once each, and checks on that one build what
depends on the backbone: the blocks partition its layers, it ignores the training flag
while frozen and after ``unfreeze`` (:class:`tfx_transfer.Backbone`), and Grad-CAM finds
the class evidence in it. ``TFX_TEST_ALL_BACKBONES=1`` sweeps all 38 (minutes: the
large members build slowly on a CPU); do it when the registry changes.
"""

import os

import keras
import numpy as np
import pytest

import tfx_transfer as tt
from tests.tiny_backbone import tiny_cnn
from tfx_transfer.evaluation.gradcam import gradcam
from tfx_transfer.models.backbones import (
    BackboneSpec,
    backbone_blocks,
    get_backbone,
    list_backbones,
    register_backbone,
)
from tfx_transfer.models.transfer_model import get_backbone_layer

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


def test_custom_builder_that_ignores_weights_refuses_imagenet(tmp_path, tinycam):
    """A callable ignores ``weights`` unless registered with loads_weights=True: asking it for
    ImageNet weights must fail, not silently build a random network."""
    spec = get_backbone(tinycam)
    assert (spec.loads_weights, get_backbone("vgg16").loads_weights) == (False, True)
    with pytest.raises(ValueError, match=r"Backbone 'tinycam' cannot load weights='imagenet'.*"
                                         r"tiny_cnn.*weights=None.*weights=PATH.*loads_weights=True"):
        tt.build_transfer_model(tinycam, 2, input_shape=(32, 32, 3), weights="imagenet")
    # a weights file is loaded by the kit, by layer name: it works for any builder
    source = spec.build((32, 32, 3))
    path = tmp_path / "tinycam.weights.h5"
    source.save_weights(path)
    model = tt.build_transfer_model(tinycam, 2, input_shape=(32, 32, 3), weights=path)
    assert np.array_equal(tt.get_backbone_model(model).weights[0].numpy(), source.weights[0].numpy())


def test_builder_registered_as_loading_weights_gets_them():
    seen = []

    def builder(include_top=False, weights=None, input_shape=(32, 32, 3)):
        seen.append(weights)
        return tiny_cnn(input_shape=input_shape)

    spec = BackboneSpec("loader", builder, "none", 32, 32, (("all", "."),), loads_weights=True)
    spec.build((32, 32, 3), weights="imagenet")
    assert seen == ["imagenet"]

# The smallest member of each family, and EfficientNetV2 (same block regexes as EfficientNet,
# other layers: fused MBConv, another default_unfreeze).
FAMILIES = ("vgg16", "resnet50", "resnet50v2", "xception", "inceptionv3", "inceptionresnetv2",
            "mobilenet", "mobilenetv2", "mobilenetv3small", "densenet121", "efficientnetb0",
            "efficientnetv2b0", "convnexttiny")
SWEEP = EXPECTED if os.environ.get("TFX_TEST_ALL_BACKBONES") == "1" else FAMILIES
# The smallest side with a feature map of at least 2x2 (64 px for the stride-32 families).
SIDES = {"xception": 71, "inceptionv3": 107, "inceptionresnetv2": 107}


def test_the_sweep_covers_every_family():
    family = {name: id(get_backbone(name).blocks) for name in EXPECTED}
    assert {family[name] for name in FAMILIES} == set(family.values())


def _check_blocks(spec: BackboneSpec, base: keras.Model) -> None:
    """Every non-input layer in exactly one block, in the spec's order; the top one trains."""
    blocks = backbone_blocks(spec, base)
    layers = [layer for block in blocks.values() for layer in block]
    assert len(layers) == len({id(layer) for layer in layers}) == len(base.layers) - 1
    assert list(blocks) == [b for b in spec.block_names if b in blocks]
    assert len(blocks) >= 4
    assert set(spec.default_unfreeze) & set(blocks)
    assert any(layer.weights for layer in blocks[list(blocks)[-1]])


def _patch_images(side: int) -> tuple[np.ndarray, np.ndarray]:
    """Grey images with a noise patch in the top-left (image 0) / bottom-right (image 1)
    quadrant, and the quadrants' masks."""
    half = side // 2
    images = np.full((2, side, side, 3), 128, np.float32)
    masks = np.zeros((2, side, side), bool)
    masks[0, :half, :half] = masks[1, side - half:, side - half:] = True
    noise = np.random.default_rng(1).integers(0, 256, (2, side, side, 3))
    images[masks] = noise[masks]
    return images, masks


def _check_frozen_inference_mode(model: keras.Model, both: keras.Model,
                                 images: np.ndarray) -> list[np.ndarray]:
    """Features (where noise shows at full scale) and probabilities ignore ``training``
    while frozen; drop-connect stays off. Returns the features and probabilities."""
    off = [np.asarray(out) for out in both(images, training=False)]
    on = both(images, training=True)
    for name, a, b in zip(("features", "probabilities"), on, off):
        np.testing.assert_array_equal(np.asarray(a), b, err_msg=name)
    inner = tt.get_backbone_model(model)
    if any(isinstance(sub, keras.layers.Dropout) and sub.rate > 0
           for sub in inner._flatten_layers()):  # drop-connect: the wrapper keeps it off
        noisy = inner(model.get_layer("preprocess")(images), training=True)
        assert not np.allclose(np.asarray(noisy), off[0], rtol=1e-3, atol=0)
    return off


def _check_gradcam(model: keras.Model, features: np.ndarray, images: np.ndarray,
                   masks: np.ndarray, monkeypatch) -> None:
    """Class i's weights point at image i's patch features: each heatmap must find its patch.

    ``features``: the backbone's map of ``images`` (inference mode). One Grad-CAM pass:
    ``explain`` runs it, and the maps it computes are checked on their way through.
    """
    side = images.shape[1]
    n, h, w, _ = features.shape
    cells = np.zeros((n, h, w), bool)  # feature cells whose centre lies in the patch
    rows, cols = ((np.arange(k) + 0.5) * side / k for k in (h, w))
    for i, mask in enumerate(masks):
        cells[i] = mask[rows.astype(int)][:, cols.astype(int)]
    evidence = np.stack([features[i][cells[i]].mean(0) - features[i][~cells[i]].mean(0)
                         for i in range(n)], axis=1)  # (channels, classes)
    tt.get_head(model).get_layer("predictions").kernel.assign(evidence.astype("float32"))

    import tfx_transfer.evaluation.gradcam as module

    calls = []

    def recording(*args, **kwargs):
        calls.append(gradcam(*args, **kwargs))
        return calls[-1]

    monkeypatch.setattr(module, "gradcam", recording)
    # gradcam() gets the features from the backbone's predict step: run eagerly here (one
    # pass of the layers instead of tracing and optimising the graph of a large network)
    base = tt.get_backbone_model(model)
    base.run_eagerly, base.predict_function = True, None
    heatmaps = tt.explain(model, images, class_index=[0, 1])
    (maps, probabilities, classes), = calls
    assert classes.tolist() == [0, 1]
    logits = np.einsum("nhwk,kc->nc", features, evidence) / (h * w)  # GAP head, zero bias
    expected = np.exp(logits - logits.max(1, keepdims=True))
    np.testing.assert_allclose(probabilities, expected / expected.sum(1, keepdims=True),
                               rtol=1e-4, atol=1e-6)
    cam = np.maximum(np.einsum("nhwk,kn->nhw", features, evidence), 0)  # GAP head: the CAM
    cam /= cam.max(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(maps, cam, atol=1e-3)
    for low, patch in zip(maps, cells):  # the patch's cells are the hottest
        assert low[patch].min() > low[~patch].max(), low
    assert heatmaps.shape == (2, side, side) and np.isfinite(heatmaps).all()
    for heatmap, mask in zip(heatmaps, masks):  # resized to the input: still on the patch
        assert heatmap.max() == pytest.approx(1, abs=1e-3)
        assert mask.flat[heatmap.argmax()], "the hottest pixel is not on the patch"
        assert heatmap[mask].mean() > 1.25 * heatmap[~mask].mean(), "the heat is not on the patch"


@pytest.mark.slow  # 13 backbone builds, the Inception ones slow on 2 CPU cores
@pytest.mark.parametrize("name", SWEEP)
def test_family_blocks_inference_mode_and_gradcam(name, monkeypatch):
    """One build; every check on it. Eager passes of the whole network cost ~1 s on the large
    families, so each one serves several checks: the frozen pass gives Grad-CAM its features."""
    spec = get_backbone(name)
    side = max(SIDES.get(name, 64), spec.min_size)
    keras.utils.set_random_seed(0)
    model = tt.build_transfer_model(name, 2, input_shape=side, weights=None, head="avg", dropout=0)
    base = tt.get_backbone_model(model)
    assert base.name == spec.name and len(base.output.shape) == 4
    _check_blocks(spec, base)
    images, masks = _patch_images(side)
    layer = get_backbone_layer(model)
    # features and probabilities from one call
    both = keras.Model(model.input, [layer.output, model.output])
    off = _check_frozen_inference_mode(model, both, images)
    # after unfreeze the training flag is still ignored: training=True gives exactly the
    # frozen model's inference-mode features and probabilities
    tt.unfreeze(model, "all")
    assert layer.inference_mode and tt.get_backbone_model(model).trainable
    for what, a, b in zip(("features", "probabilities"), both(images, training=True), off):
        np.testing.assert_array_equal(np.asarray(a), b, err_msg=f"{what} after unfreeze")
    _check_gradcam(model, off[0], images, masks, monkeypatch)
