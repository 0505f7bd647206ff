"""The backbone runs in inference mode while frozen and after unfreeze() (issue: frozen means frozen).

Every registry family is checked in tests/test_backbones.py's sweep (features ignore the
training flag; EfficientNet's drop-connect would fire without the Backbone layer).
"""

import keras
import numpy as np

import tfx_transfer as tt
from tfx_transfer.models.transfer_model import get_backbone_layer


def _features(model):
    return keras.Model(model.input, get_backbone_layer(model).output)


def _pixels(size, n=2, seed=0):
    return np.random.RandomState(seed).randint(0, 256, (n, size, size, 3)).astype("float32")


def test_train_bn_runs_the_backbone_in_training_mode(tinybn):
    model = tt.build_transfer_model(tinybn, 3, input_shape=16, weights=None, head="avg",
                                    dropout=0)
    features, x = _features(model), _pixels(16, n=4)
    tt.unfreeze(model, "all")
    np.testing.assert_array_equal(np.asarray(features(x, training=True)),
                                  np.asarray(features(x, training=False)))
    tt.unfreeze(model, "all", train_bn=True)
    assert not get_backbone_layer(model).inference_mode
    assert not np.allclose(np.asarray(features(x, training=True)),
                           np.asarray(features(x, training=False)))


def test_inference_mode_survives_save_and_load(tinybn, tmp_path):
    model = tt.build_transfer_model(tinybn, 3, input_shape=16, weights=None, head="avg")
    tt.unfreeze(model, "all", train_bn=True)
    model.save(tmp_path / "m.keras")
    assert not get_backbone_layer(tt.load_model(tmp_path / "m.keras")).inference_mode


def _drop_connect_backbone(include_top=False, weights=None, input_shape=(32, 32, 3)):
    """conv + BatchNormalization + EfficientNet's drop-connect (Dropout per sample)."""
    inputs = keras.Input(input_shape)
    x = keras.layers.Conv2D(8, 3, strides=2, name="b1_conv")(inputs)
    x = keras.layers.BatchNormalization(name="b1_bn")(x)
    x = keras.layers.Dropout(0.5, noise_shape=(None, 1, 1, 1), name="b2_drop")(x)
    x = keras.layers.Conv2D(8, 3, name="b2_conv")(x)
    return keras.Model(inputs, x, name="tinydrop")


def test_cached_and_plain_phase_one_train_the_same_head_with_drop_connect():
    """A backbone with drop-connect and BatchNorm: cached features == the plain path."""
    from tfx_transfer.models import backbones

    tt.register_backbone(tt.BackboneSpec("tinydrop", _drop_connect_backbone, "tf", 32, 8,
                                         blocks=(("b1", "^b1_"), ("b2", "^b2_"))), overwrite=True)
    try:
        _cached_equals_plain("tinydrop")
    finally:
        backbones._REGISTRY.pop("tinydrop")


def _cached_equals_plain(backbone: str) -> None:
    keras.utils.set_random_seed(3)
    model = tt.build_transfer_model(backbone, 3, input_shape=32, weights=None, head="avg",
                                    dropout=0)
    x, y = _pixels(32, n=16, seed=1), np.arange(16) % 3
    inner = tt.get_backbone_model(model)
    assert not np.allclose(np.asarray(inner(x, training=True)), np.asarray(inner(x, training=False)))
    start = model.get_weights()
    heads = []
    for cache in (True, False):
        model.set_weights(start)
        keras.utils.set_random_seed(3)
        tt.fine_tune(model, (x, y), head_epochs=2, fine_tune_epochs=0, cache_features=cache,
                     batch_size=8, shuffle=False, verbose=0)
        heads.append([np.asarray(w) for w in tt.get_head(model).weights])
    kernel = tt.get_head(model).get_layer("predictions").kernel.path
    initial = dict(zip((w.path for w in model.weights), start))[kernel]
    assert not np.allclose(heads[0][0], initial)  # the head trained
    for cached, plain in zip(*heads):
        np.testing.assert_allclose(cached, plain, rtol=1e-4, atol=1e-5)
