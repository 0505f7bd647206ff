"""One BatchNorm re-estimation (tfx_transfer.models.batchnorm) for pretraining and adaptation."""

from __future__ import annotations

import keras
import numpy as np
import pytest

import tfx_transfer as tt
from tests.helpers import tiny_pixels
from tfx_transfer.models.batchnorm import batchnorm_layers, recompute_batchnorm
from tfx_transfer.models.transfer_model import get_backbone_model
from tfx_transfer.training.scratch import build_scratch_model, recalibrate_batchnorm

NAME = "nestedbn"


def _nested_bn_backbone(include_top=False, weights=None, input_shape=(32, 32, 3)):
    """conv -> BN, then a nested block (conv -> BN): the second BN sits in a sub-model."""
    inputs = keras.Input(input_shape)
    x = keras.layers.Conv2D(4, 3, name="c1_conv")(inputs)
    x = keras.layers.BatchNormalization(name="c1_bn")(x)
    inner = keras.Sequential([keras.Input(tuple(x.shape[1:])), keras.layers.Conv2D(4, 3, name="c2_conv"),
                              keras.layers.BatchNormalization(name="c2_bn")], name="c2_block")
    return keras.Model(inputs, inner(x), name=NAME)


@pytest.fixture
def nestedbn():
    from tfx_transfer.models import backbones

    tt.register_backbone(tt.BackboneSpec(NAME, _nested_bn_backbone, "tf", 32, 16,
                                         blocks=(("c1", "^c1_"), ("c2", "^c2_"))), overwrite=True)
    yield NAME
    backbones._REGISTRY.pop(NAME)


def _conv_outputs(model, batches):
    """Per batch, the inputs of c1_bn and c2_bn with every BatchNorm on batch statistics."""
    base = get_backbone_model(model)
    inner = base.get_layer("c2_block")
    pre = model.get_layer("preprocess")
    bn1 = base.get_layer("c1_bn")
    out = []
    for x in batches:
        h1 = base.get_layer("c1_conv")(pre(x))
        mean, var = np.mean(h1, (0, 1, 2)), np.var(h1, (0, 1, 2))
        normed = (h1 - mean) / np.sqrt(var + bn1.epsilon) * bn1.gamma.numpy() + bn1.beta.numpy()
        h2 = inner.get_layer("c2_conv")(normed)
        out.append((np.asarray(h1, np.float64), np.asarray(h2, np.float64)))
    return out


def test_pretrain_and_adapt_re_estimate_the_same_layers_nested_ones_included(nestedbn):
    model = build_scratch_model(nestedbn, 2, input_shape=32)
    layers = batchnorm_layers(model)
    assert [layer.name for layer in layers] == ["c1_bn", "c2_bn"]
    assert layers == batchnorm_layers(get_backbone_model(model))
    assert [layer.momentum for layer in layers] == [0.9, 0.9]  # the scratch recipe reaches both
    batches = [tiny_pixels(4, 32, seed=s) for s in (1, 2)]
    outputs = _conv_outputs(model, batches)

    # pretraining ("precise BN"): the average of the per-batch statistics
    assert recalibrate_batchnorm(model, batches) == 2
    for layer, k in zip(layers, (0, 1)):
        np.testing.assert_allclose(layer.moving_mean.numpy(),
                                   np.mean([o[k].mean((0, 1, 2)) for o in outputs], 0),
                                   rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(layer.moving_variance.numpy(),
                                   np.mean([o[k].var((0, 1, 2)) for o in outputs], 0),
                                   rtol=1e-3, atol=1e-5)
        assert layer.momentum == 0.9  # restored

    # adaptation (AdaBN): the exact moments over all images
    assert recompute_batchnorm(model, batches) == 8
    for layer, k in zip(layers, (0, 1)):
        every = np.concatenate([o[k] for o in outputs])
        np.testing.assert_allclose(layer.moving_mean.numpy(), every.mean((0, 1, 2)),
                                   rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(layer.moving_variance.numpy(), every.var((0, 1, 2)),
                                   rtol=1e-3, atol=1e-5)


def test_failures_leave_the_statistics_and_name_the_fix():
    model = tt.build_transfer_model("mobilenetv2", 2, input_shape=32, weights=None)
    layers = batchnorm_layers(model)
    before = [layer.moving_mean.numpy().copy() for layer in layers]

    def broken():
        yield tiny_pixels(2, 32)
        raise RuntimeError("disk gone")

    with pytest.raises(RuntimeError, match="disk gone"):
        recompute_batchnorm(model, broken())
    assert all(np.array_equal(b, layer.moving_mean.numpy()) for b, layer in zip(before, layers))
    assert all(not layer.trainable and layer.momentum == 0.999 for layer in layers)
    with pytest.raises(ValueError, match="pool='mean'.*'images'.*'batches'"):
        recompute_batchnorm(model, [tiny_pixels(2, 32)], pool="mean")
    vgg = tt.build_transfer_model("vgg16", 2, input_shape=32, weights=None)
    with pytest.raises(ValueError, match="'vgg16' has no BatchNormalization.*resnet50"):
        recompute_batchnorm(vgg, [tiny_pixels(2, 32)])
