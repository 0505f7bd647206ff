"""Test-time augmentation (tfx_transfer.evaluation.tta) and evaluate_model(..., tta=True)."""

import importlib.util

import keras
import numpy as np
import pytest

import tfx_transfer as tt
from tests.helpers import tiny_pixels
from tfx_transfer.evaluation.evaluate import evaluate_model
from tfx_transfer.evaluation.tta import tta_views


def _model(tinycam):
    keras.utils.set_random_seed(0)
    return tt.build_transfer_model(tinycam, 3, input_shape=(32, 32, 3), weights=None, head="avg")


def test_views_are_the_mirror_and_four_shifts():
    images = tiny_pixels(2, 20)
    views = tta_views(images, shift=0.1)  # 2 px
    assert len(views) == 6 and all(v.shape == images.shape for v in views)
    np.testing.assert_array_equal(views[1], images[:, :, ::-1])
    np.testing.assert_array_equal(views[2][:, 2:], images[:, :-2])  # moved down 2 px
    np.testing.assert_array_equal(views[3][:, :-2], images[:, 2:])  # moved up
    np.testing.assert_array_equal(views[4][:, :, 2:], images[:, :, :-2])  # moved right
    np.testing.assert_array_equal(views[5][:, :, :-2], images[:, :, 2:])  # moved left
    with pytest.raises(ValueError, match="shift=0.6 must be"):
        tta_views(images, shift=0.6)


def test_predict_tta_is_the_mean_over_views_and_mirror_invariant(tinycam):
    model = _model(tinycam)
    images = tiny_pixels(3, 32, seed=1)
    expected = np.mean([model.predict(v, verbose=0) for v in tta_views(images)], axis=0)
    np.testing.assert_allclose(tt.predict_tta(model, images), expected, atol=1e-5)
    mirrored = tt.predict_tta(model, images[:, :, ::-1], shift=0)
    np.testing.assert_allclose(mirrored, tt.predict_tta(model, images, shift=0), atol=1e-5)
    assert not np.allclose(tt.predict_tta(model, images), model.predict(images, verbose=0))


def test_evaluate_reports_plain_and_tta_side_by_side(tinycam, tmp_path):
    model = _model(tinycam)
    x, y = tiny_pixels(8, 32, seed=2), np.arange(8) % 3
    plots = importlib.util.find_spec("matplotlib") is not None  # not in `make test-jax`'s venv
    metrics = evaluate_model(model, (x, y), ["a", "b", "c"], out=tmp_path if plots else None,
                             tta=True, batch_size=4, verbose=False)
    plain = evaluate_model(model, (x, y), ["a", "b", "c"], verbose=False)
    assert "tta" not in plain and metrics["accuracy"] == plain["accuracy"]
    tta_probs = tt.predict_tta(model, x)
    assert metrics["tta"]["views"] == 6
    assert metrics["tta"]["accuracy"] == pytest.approx(np.mean(tta_probs.argmax(1) == y))
    assert metrics["tta"]["loss"] == pytest.approx(-np.mean(np.log(tta_probs[np.arange(8), y])),
                                                   rel=1e-4)
    if plots:
        report = (tmp_path / "report.txt").read_text()
        assert "test-time augmentation" in report and "plain" in report and "TTA" in report
