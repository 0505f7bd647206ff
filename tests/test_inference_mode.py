"""The backbone runs in inference mode while frozen and after unfreeze() (issue: frozen means frozen)."""

import keras
import numpy as np
import pytest

import tfx_transfer as tt
from tfx_transfer.models.backbones import get_backbone, list_backbones
from tfx_transfer.models.transfer_model import get_backbone_layer


def _one_per_family() -> list[str]:
    seen, names = set(), []
    for name in list_backbones():
        family = get_backbone(name).blocks
        if id(family) not in seen:
            seen.add(id(family))
            names.append(name)
    return names


def _features(model):
    return keras.Model(model.input, get_backbone_layer(model).output)


def _pixels(size, n=2, seed=0):
    return np.random.RandomState(seed).randint(0, 256, (n, size, size, 3)).astype("float32")


@pytest.mark.parametrize("name", _one_per_family())
def test_frozen_and_unfrozen_backbone_ignore_training_flag(name):
    spec = get_backbone(name)
    size = max(32, spec.min_size)
    model = tt.build_transfer_model(name, 3, input_shape=size, weights=None, head="avg", dropout=0)
    features, x = _features(model), _pixels(size)
    # Features, not probabilities: any noise in the backbone shows at full scale.
    np.testing.assert_array_equal(np.asarray(features(x, training=True)),
                                  np.asarray(features(x, training=False)))
    np.testing.assert_array_equal(np.asarray(model(x, training=True)),
                                  np.asarray(model(x, training=False)))
    tt.unfreeze(model, "all")
    assert get_backbone_layer(model).inference_mode
    np.testing.assert_array_equal(np.asarray(features(x, training=True)),
                                  np.asarray(features(x, training=False)))


def test_efficientnet_drop_connect_would_fire_without_the_backbone_layer():
    model = tt.build_transfer_model("efficientnetb0", 3, input_shape=32, weights=None,
                                    head="avg", dropout=0)
    inner, x = tt.get_backbone_model(model), _pixels(32, n=4)
    scaled = x / 1.0  # efficientnet rescales itself ("none" preprocessing)
    assert not np.allclose(np.asarray(inner(scaled, training=True)),
                           np.asarray(inner(scaled, training=False)))
    features = _features(model)
    np.testing.assert_array_equal(np.asarray(features(x, training=True)),
                                  np.asarray(features(x, training=False)))


def test_train_bn_runs_the_backbone_in_training_mode():
    model = tt.build_transfer_model("mobilenetv2", 3, input_shape=32, weights=None,
                                    head="avg", dropout=0)
    tt.unfreeze(model, "all", train_bn=True)
    assert not get_backbone_layer(model).inference_mode
    features, x = _features(model), _pixels(32, n=4)
    assert not np.allclose(np.asarray(features(x, training=True)),
                           np.asarray(features(x, training=False)))


def test_inference_mode_survives_save_and_load(tmp_path):
    model = tt.build_transfer_model("mobilenetv2", 3, input_shape=32, weights=None, head="avg")
    tt.unfreeze(model, "all", train_bn=True)
    model.save(tmp_path / "m.keras")
    assert not get_backbone_layer(tt.load_model(tmp_path / "m.keras")).inference_mode


def test_cached_and_plain_phase_one_train_the_same_head_efficientnet():
    x = _pixels(32, n=16, seed=1)
    y = np.arange(16) % 3
    heads = []
    for cache in (True, False):
        keras.utils.set_random_seed(3)
        model = tt.build_transfer_model("efficientnetb0", 3, input_shape=32, weights=None,
                                        head="avg", dropout=0)
        tt.fine_tune(model, (x, y), head_epochs=2, fine_tune_epochs=0, cache_features=cache,
                     batch_size=8, shuffle=False, verbose=0)
        heads.append([np.asarray(w) for w in tt.get_head(model).weights])
    for cached, plain in zip(*heads):
        np.testing.assert_allclose(cached, plain, rtol=1e-4, atol=1e-5)
