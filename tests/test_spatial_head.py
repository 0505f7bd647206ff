"""The spatial head (``SpatialClassifier``), the multi-label default.

Checked on values: its pooled score is the mean of the location scores at small
sharpness (the avg head's logit) and their maximum at large sharpness, its logit is what
Grad-CAM differentiates, a saved model predicts the same, and the head is chosen by the
labels. Its accuracy on real photos is ``benchmarks/multi_label.py``'s measurement.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

import tfx_transfer as tt
from tfx_transfer.evaluation.gradcam import class_logits


def _maps(seed: int = 0, shape=(3, 4, 5, 6)) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape).astype("float32")


def _location_scores(layer, maps):
    w, b = (keras.ops.convert_to_numpy(v) for v in (layer.kernel, layer.bias))
    return (maps @ w + b).reshape(len(maps), -1, layer.units)


def test_pooling_goes_from_the_mean_to_the_max_of_the_location_scores():
    maps = _maps()
    for sharpness, pool in ((0.01, np.mean), (200.0, np.max)):
        layer = tt.SpatialClassifier(3, sharpness=sharpness, activation="linear")
        pooled = keras.ops.convert_to_numpy(layer(maps))  # builds the layer
        np.testing.assert_allclose(pooled, pool(_location_scores(layer, maps), axis=1), atol=0.03)
    layer = tt.SpatialClassifier(3)  # the default sharpness: between the two, above the mean
    probs = keras.ops.convert_to_numpy(layer(maps))
    scores = _location_scores(layer, maps)
    logits = keras.ops.convert_to_numpy(layer.logits(maps))
    r = layer.sharpness
    expected = (np.log(np.mean(np.exp(r * scores), axis=1))) / r
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)
    assert (logits > scores.mean(axis=1)).all() and (logits < scores.max(axis=1)).all()
    np.testing.assert_allclose(probs, 1 / (1 + np.exp(-logits)), rtol=1e-5)


def test_a_label_in_one_corner_is_not_diluted_as_in_the_avg_head():
    """One location carries the label's evidence: the avg head's logit (the mean) shrinks with
    the map's size, the spatial head's stays near the location's own score."""
    layer = tt.SpatialClassifier(1, activation="linear")
    layer.build((None, 8, 8, 1))
    layer.set_weights([np.ones((1, 1), "float32"), np.zeros(1, "float32")])
    logits = {}
    for side in (4, 8):
        maps = np.zeros((1, side, side, 1), "float32")
        maps[0, 0, 0, 0] = 10.0
        logits[side] = float(keras.ops.convert_to_numpy(layer.logits(maps))[0, 0])
        assert logits[side] > 10.0 / side**2 + 4  # the mean would be 0.62 and 0.16
    assert logits[4] > 7 and logits[8] > 5.8


def test_multi_label_models_get_the_spatial_head_and_single_label_ones_avg(tinycam):
    multi = tt.build_transfer_model("tinycam", 3, input_shape=32, weights=None, multi_label=True)
    single = tt.build_transfer_model("tinycam", 3, input_shape=32, weights=None)
    assert multi.transfer_config["head"] == "spatial" and single.transfer_config["head"] == "avg"
    assert isinstance(multi.head.layers[-1], tt.SpatialClassifier)
    assert multi.head.layers[-1].activation == "sigmoid" and multi.head.layers[-1].name == "predictions"
    assert tt.build_transfer_model("tinycam", 3, input_shape=32, weights=None, multi_label=True,
                                   head="avg").transfer_config["head"] == "avg"
    with pytest.raises(ValueError, match="'spatial' \\(its default\\)"):
        tt.build_transfer_model("tinycam", 3, input_shape=32, weights=None, multi_label=True,
                                head="cosine")
    with pytest.raises(ValueError, match="sharpness=0"):
        tt.SpatialClassifier(2, sharpness=0)


def test_saved_model_predicts_the_same_and_gradcam_reads_the_pooled_logit(tinycam, tmp_path):
    keras.utils.set_random_seed(0)
    model = tt.build_transfer_model("tinycam", 3, input_shape=32, weights=None, multi_label=True)
    pixels = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3)).astype("uint8")
    y = np.eye(3, dtype="float32")[[0, 1, 2, 0]]
    tt.fine_tune(model, (pixels, y), head_epochs=2, fine_tune_epochs=0, verbose=0)
    probs = model.predict(pixels, verbose=0)
    model.save(tmp_path / "m.keras")
    again = keras.saving.load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(again.predict(pixels, verbose=0), probs, atol=1e-6)
    assert again.head.layers[-1].get_config()["sharpness"] == model.head.layers[-1].sharpness
    features = model.backbone(model.preprocess(pixels.astype("float32")))
    logits = keras.ops.convert_to_numpy(class_logits(model.head, features))
    np.testing.assert_allclose(1 / (1 + np.exp(-logits)), probs, atol=1e-5)


def test_fine_tune_takes_model_fits_validation_data_keyword(tinycam):
    keras.utils.set_random_seed(0)
    model = tt.build_transfer_model("tinycam", 2, input_shape=32, weights=None)
    x = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3)).astype("uint8")
    y = np.array([0, 1, 0, 1])
    history = tt.fine_tune(model, (x, y), validation_data=(x, y), head_epochs=1,
                           fine_tune_epochs=0, verbose=0)
    assert len(history.history["val_loss"]) == 1
    with pytest.raises(ValueError, match="validation and validation_data are both given"):
        tt.fine_tune(model, (x, y), (x, y), validation_data=(x, y), verbose=0)


def test_coral_aligns_the_locations_a_spatial_head_classifies(tinycam):
    from tfx_transfer.adaptation.coral import build_alignment_model, coral_loss

    maps = _maps(shape=(2, 3, 3, 4)), _maps(1, shape=(2, 3, 3, 4)) * 2
    flat = [m.reshape(-1, 4) for m in maps]
    assert float(coral_loss(*maps)) == pytest.approx(float(coral_loss(*flat)))
    assert float(coral_loss(*maps)) > 0
    model = tt.build_transfer_model("tinycam", 3, input_shape=32, weights=None, multi_label=True)
    pixels = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3)).astype("uint8")
    aligned = build_alignment_model(model)
    np.testing.assert_allclose(aligned.predict({"source": pixels, "target": pixels}, verbose=0),
                               model.predict(pixels, verbose=0), atol=1e-6)
