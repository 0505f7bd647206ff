"""Calibration (temperature scaling) and the "none of these" score: library, export, run, CLI."""

import json

import keras
import numpy as np
import pytest

import tfx_transfer as tt
from tests.helpers import tiny_labels, tiny_pixels
from tfx_transfer.cli import main
from tfx_transfer.evaluation.calibration import (
    expected_calibration_error,
    fit_temperature,
    fold_temperature,
    softmax,
)
from tfx_transfer.evaluation.unknown_detection import fpr_at_tpr, roc_auc


def _stripes(n: int, size: int = 32) -> np.ndarray:
    """Images clearly unlike tiny_pixels' smooth noise: black with white lines."""
    out = np.zeros((n, size, size, 3), np.uint8)
    out[:, ::4] = 255
    return out


def _tiny(name: str) -> keras.Model:
    keras.utils.set_random_seed(0)
    return tt.build_transfer_model(name, 2, input_shape=32, weights=None, dropout=0.0,
                                   class_names=["a", "b"])


def test_fit_temperature_recovers_the_temperature_of_the_labels():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (4000, 3))
    labels = np.array([rng.choice(3, p=p) for p in softmax(logits / 2.5)])
    assert fit_temperature(logits, labels) == pytest.approx(2.5, rel=0.1)
    assert expected_calibration_error(softmax(logits / 2.5), labels) < 0.03
    assert expected_calibration_error(softmax(logits), labels) > 0.1


def test_ood_metrics_values():
    assert roc_auc(np.array([0.1, 0.2]), np.array([0.3, 0.2])) == 0.875
    known = np.arange(20) / 20  # 19 of 20 (95%) known accepted at 0.90
    assert fpr_at_tpr(known, np.array([0.5, 0.9, 0.91, 1.5])) == 0.5


@pytest.mark.parametrize("head", ["avg", "spatial"])  # a Dense, a log-sum-exp pooled classifier
def test_calibrate_folds_the_temperature_into_the_classifier(tinycam, head, tmp_path):
    keras.utils.set_random_seed(0)
    model = tt.build_transfer_model(tinycam, 2, input_shape=32, weights=None, dropout=0.0,
                                    head=head)
    model.get_layer("head").layers[-1].kernel.assign(
        np.random.default_rng(1).normal(0, 3, (32, 2)).astype("float32"))
    x, y = tiny_pixels(8), tiny_labels(8)
    before = model.predict(x, verbose=0)  # the traced predict function, kept by the model
    result = tt.calibrate(model, (x, y))
    t = result["temperature"]
    assert abs(np.log(t)) > 0.1  # a temperature that changes the probabilities
    after = model.predict(x, verbose=0)
    np.testing.assert_allclose(after, softmax(np.log(before) / t), atol=1e-5)
    assert np.array_equal(after.argmax(1), before.argmax(1)) and result["nll_after"] < result["nll_before"]
    assert tt.transfer_config(model)["temperature"] == pytest.approx(t, rel=1e-5)
    model.save(tmp_path / "calibrated.keras")  # the fold is in the weights and the settings
    np.testing.assert_allclose(tt.load_model(tmp_path / "calibrated.keras").predict(x, verbose=0),
                               after, atol=1e-6)


def test_fold_temperature_names_an_unsupported_classifier(tinycam):
    inputs = keras.Input((4,))
    model = tt.TransferModel(inputs, keras.layers.Activation("softmax", name="predictions")(inputs),
                             transfer_config={"num_classes": 4})
    with pytest.raises(ValueError, match="no classifier layer"):
        fold_temperature(model, 2.0)
    model = tt.build_transfer_model(tinycam, 2, input_shape=32, weights=None)
    head = model.get_layer("head")
    head.layers[-1].activation = keras.activations.sigmoid
    with pytest.raises(ValueError, match="activation 'sigmoid'"):
        fold_temperature(model, 2.0)


def test_unknown_score_model_export_and_threshold_override(tinycam, tmp_path):
    model = _tiny(tinycam)
    x, y = tiny_pixels(8, seed=1), tiny_labels(8, seed=1)
    fit = tt.fit_unknown(model, (x[:6], y[:6]), (x[6:], y[6:]), tpr=1.0)
    assert fit["validation_accepted"] == 1.0 and fit["num_references"] == 6
    _, own = tt.unknown_scores(model, x[:6])  # the reference images: their own nearest neighbour
    np.testing.assert_allclose(own, 0.0, atol=2e-3)
    known, other = tiny_pixels(6, seed=2), _stripes(4)
    _, known_scores = tt.unknown_scores(model, known)
    _, other_scores = tt.unknown_scores(model, other)
    assert other_scores.min() > max(known_scores.max(), fit["threshold"])
    result = tt.evaluate_unknown(model, (known, tiny_labels(6)), other, tmp_path)
    assert result["auroc"] == 1.0 and result["ood_flagged"] == 1.0
    assert result["files"]["unknown_scores"].stat().st_size > 0
    # the export computes the same score in its graph; the threshold can be overridden
    exported = tt.load_exported(tt.export_saved_model(model, tmp_path / "export"))
    assert exported.metadata["unknown"]["threshold"] == fit["threshold"]
    import tensorflow as tf

    served = exported.saved_model.signatures["predict_pixels_uint8"](
        pixels=tf.constant(np.concatenate([known[:2], other[:2]])))
    assert served["unknown"].numpy().tolist() == [False, False, True, True]
    rows = exported.predict(np.concatenate([known[:2], other[:2]]))
    np.testing.assert_allclose([r["unknown_score"] for r in rows],
                               np.r_[known_scores[:2], other_scores[:2]], atol=2e-3)
    assert [r["unknown"] for r in rows] == [False, False, True, True]
    assert not any(r["unknown"] for r in exported.predict(other[:2], unknown_threshold=2.0))
    loose = tt.load_exported(tt.export_saved_model(model, tmp_path / "export", unknown_threshold=2.0))
    assert not loose.predict(other[:1])[0]["unknown"]
    # saved and loaded with the .keras file
    model.save(tmp_path / "m.keras")
    np.testing.assert_allclose(tt.unknown_scores(tt.load_model(tmp_path / "m.keras"), other)[1],
                               other_scores, atol=1e-6)


def test_every_run_is_calibrated_and_says_none_of_these(tiny_run, tmp_path, capsys):
    run = tiny_run.run
    calibration = json.loads((run / "calibration.json").read_text())
    assert "the images the temperature was fitted on" in calibration["measured_on"]  # no test/
    # a class folder split by validation_split has no val/: the report says what validated it
    assert calibration["fitted_on"].startswith(f"a validation_split=0.34 share of {tiny_run.data.name}/")
    assert (run / "reliability.png").stat().st_size > 0
    assert "expected calibration error" in (run / "report.txt").read_text()
    settings = tt.transfer_config(tt.load_model(run / "model.keras"))
    assert settings["temperature"] == calibration["temperature"]
    assert settings["unknown"]["threshold"] == calibration["unknown"]["threshold"]
    exported = tt.load_exported(run / "export")
    assert exported.metadata["unknown"]["tpr"] == 0.95 and "temperature" in exported.metadata
    # evaluate --ood: metrics.json, report.txt and the histogram
    other = tmp_path / "other"
    other.mkdir()
    from PIL import Image

    for i, image in enumerate(_stripes(3, 40)):
        Image.fromarray(image).save(other / f"{i}.png")
    assert main(["evaluate", str(run), str(tiny_run.data), "--split", "all", "--ood", str(other),
                 "--out", str(tmp_path / "ev")]) == 0
    unknown = json.loads((tmp_path / "ev" / "metrics.json").read_text())["unknown"]
    assert unknown["num_ood"] == 3 and unknown["num_known"] == 12 and 0 <= unknown["auroc"] <= 1
    assert "AUROC" in (tmp_path / "ev" / "report.txt").read_text()
    assert (tmp_path / "ev" / "unknown_scores.png").is_file()
    # predict prints the verdict, --unknown-threshold overrides the export's
    capsys.readouterr()
    assert main(["predict", str(run / "export"), str(other), "--json", "--unknown-threshold", "0"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 3 and [r["unknown"] for r in rows] == [r["unknown_score"] > 0 for r in rows]


def test_serve_returns_unknown_and_overrides_the_threshold(tiny_run):
    pytest.importorskip("starlette")
    from starlette.testclient import TestClient

    from tfx_transfer.serving.app import create_app

    body = {"instances": [{"pixels": _stripes(1)[0].tolist()}], "signature_name": "predict_pixels"}
    with TestClient(create_app(tiny_run.run / "export", "m", unknown_threshold=2.0)) as client:
        prediction = client.post("/v1/models/m:predict", json=body).json()["predictions"][0]
        assert prediction["unknown"] is False and prediction["unknown_score"] >= 0
        assert "unknown_score" in client.get("/").text


def test_train_takes_the_unknown_tpr_and_checks_it_before_training(tmp_path):
    from tfx_transfer.cli import build_parser
    from tfx_transfer.runs.job import train

    args = build_parser().parse_args(["train", "d", "--out", "o", "--unknown-tpr", "0.9"])
    assert args.unknown_tpr == 0.9
    with pytest.raises(ValueError, match=r"unknown_tpr=1.5 must be in \(0, 1\]"):
        train(tmp_path, tmp_path / "run", unknown_tpr=1.5)
    # refused before a config or an epoch was written (only the released lock file)
    assert {p.name for p in (tmp_path / "run").iterdir()} <= {".lock"}
