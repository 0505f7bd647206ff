"""The cosine head, weight imprinting and classes added to a trained model (issue #27).

Tiny backbone (``tinycam``, random weights) at 32 px on generated, class-coloured images:
the checks are on values (the imprinted rows are the normalised class means, the old
classes' scores survive ``add_classes`` exactly), not on few-shot accuracy, which
``benchmarks/few_shot.py`` measures on real photos.
"""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest

import tfx_transfer as tt
from tests.helpers import write_class_folders


def _images(colour: int, n: int, seed: int = 0) -> np.ndarray:
    base = np.zeros((n, 32, 32, 3), np.float32)
    base[..., colour % 3] = 200
    noise = np.random.default_rng(seed + colour).normal(0, 25, base.shape)
    return np.clip(base + noise, 0, 255).astype("uint8")


def _model(head: str, classes=("red", "green")):
    keras.utils.set_random_seed(0)
    return tt.build_transfer_model("tinycam", len(classes), input_shape=32, weights=None,
                                   head=head, class_names=list(classes))


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_cosine_classifier_is_scaled_cosine_softmax_in_float32():
    layer = tt.CosineClassifier(3, scale=7.0, name="predictions")
    x = np.random.default_rng(0).normal(size=(4, 5)).astype("float32")
    probs = keras.ops.convert_to_numpy(layer(x))
    kernel = keras.ops.convert_to_numpy(layer.kernel)
    logits = 7.0 * _unit(x) @ _unit(kernel.T).T
    expected = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(probs, expected, atol=1e-5)
    assert probs.dtype == np.float32 and [w.name for w in layer.trainable_weights] == ["kernel", "scale"]
    assert [w.name for w in layer.non_trainable_weights] == ["center"]
    layer.center.assign(x[0])  # the center is subtracted first: x[0] has no direction left
    assert np.allclose(keras.ops.convert_to_numpy(layer(x[:1])), 1 / 3, atol=1e-6)
    with pytest.raises(ValueError, match="scale=0"):
        tt.CosineClassifier(2, scale=0)


def test_imprint_sets_each_row_to_the_normalised_class_mean(tinycam, tmp_path):
    model = _model("cosine")
    x = np.concatenate([_images(0, 4), _images(1, 4)])
    y = np.repeat([0, 1], 4)
    assert tt.imprint(model, (x, y)) is model
    # the features by another route: the backbone's map, averaged over space
    maps = keras.ops.convert_to_numpy(
        keras.Model(model.inputs, model.backbone.output).predict(x, verbose=0))
    feats = maps.mean(axis=(1, 2))
    layer = model.head.get_layer("predictions")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer.center), feats.mean(axis=0),
                               rtol=1e-5, atol=1e-6)  # every class imprinted: their mean
    centred = _unit(feats - feats.mean(axis=0))
    kernel = keras.ops.convert_to_numpy(layer.kernel)
    for c in range(2):
        np.testing.assert_allclose(kernel[:, c], _unit(centred[y == c].mean(axis=0)), atol=1e-5)
    assert (model.predict(x, verbose=0).argmax(axis=1) == y).all()
    # a folder: its classes are matched to the model's by name ("green" first on disk)
    from PIL import Image

    for name, images in (("green", x[4:]), ("red", x[:4])):
        (tmp_path / "photos" / name).mkdir(parents=True)
        for i, image in enumerate(images):
            Image.fromarray(image).save(tmp_path / "photos" / name / f"{i}.png")
    fresh = tt.imprint(_model("cosine"), tmp_path / "photos")
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(fresh.head.get_layer("predictions").kernel), kernel, atol=1e-5)


def test_add_classes_keeps_the_old_scores_and_imprints_the_new_rows(tinycam):
    model = _model("cosine")
    x_old = np.concatenate([_images(0, 4), _images(1, 4)])
    tt.imprint(model, (x_old, np.repeat([0, 1], 4)))
    before = model.predict(x_old, verbose=0)
    x_new = _images(2, 3)
    tt.fit_unknown(model, (x_old, np.repeat([0, 1], 4)), (x_old, np.repeat([0, 1], 4)))
    assert tt.unknown_scores(model, x_new)[1].min() > 0.01  # blue is not known yet
    bigger = tt.add_classes(model, (x_new, np.zeros(3, int)), class_names=["blue"])
    # the unknown score's references gained the new images (the old model's did not)
    assert tt.transfer_config(bigger)["unknown"]["references"]["shape"][0] == \
        tt.transfer_config(model)["unknown"]["references"]["shape"][0] + 3
    assert tt.unknown_scores(bigger, x_new)[1].max() < 1e-3  # the new images are known now
    np.testing.assert_allclose(tt.unknown_scores(bigger, x_old)[1],
                               tt.unknown_scores(model, x_old)[1], atol=1e-6)
    assert tt.transfer_config(bigger)["class_names"] == ["red", "green", "blue"]
    assert tt.transfer_config(bigger)["num_classes"] == 3
    assert tt.transfer_config(model)["class_names"] == ["red", "green"]  # the old model is unchanged
    after = bigger.predict(x_old, verbose=0)
    # the old classes' scores are untouched: renormalised over them, the same probabilities
    np.testing.assert_allclose(after[:, :2] / after[:, :2].sum(axis=1, keepdims=True), before,
                               atol=1e-5)
    old_layer, new_layer = (m.head.get_layer("predictions") for m in (model, bigger))
    old_k, new_k = (keras.ops.convert_to_numpy(layer.kernel) for layer in (old_layer, new_layer))
    np.testing.assert_array_equal(new_k[:, :2], old_k)
    center = keras.ops.convert_to_numpy(new_layer.center)
    np.testing.assert_array_equal(center, keras.ops.convert_to_numpy(old_layer.center))
    maps = keras.ops.convert_to_numpy(
        keras.Model(model.inputs, model.backbone.output).predict(x_new, verbose=0))
    row = _unit(_unit(maps.mean(axis=(1, 2)) - center).mean(axis=0))
    np.testing.assert_allclose(new_k[:, 2], row, atol=1e-5)  # the centred, normalised mean
    assert (bigger.predict(_images(2, 3, seed=5), verbose=0).argmax(axis=1) == 2).all()


def test_calibrating_a_cosine_head_divides_its_scale_by_the_temperature(tinycam):
    """Temperature scaling folds into the cosine classifier's scale: softmax(logits / T)."""
    keras.utils.set_random_seed(0)
    model = tt.build_transfer_model(tinycam, 2, input_shape=32, weights=None, head="cosine")
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.integers(0, 140, (6, 32, 32, 3)),
                        rng.integers(90, 256, (6, 32, 32, 3))]).astype("uint8")
    y = np.repeat([0, 1], 6)
    tt.imprint(model, (x, y))
    before = model.predict(x, verbose=0)
    scale = float(model.head.get_layer("predictions").scale.numpy())
    temperature = tt.calibrate(model, (x[::2], y[::2]))["temperature"]
    assert temperature != 1.0
    assert float(model.head.get_layer("predictions").scale.numpy()) == pytest.approx(scale / temperature)
    expected = np.exp(np.log(before) / temperature)
    np.testing.assert_allclose(model.predict(x, verbose=0), expected / expected.sum(1, keepdims=True),
                               atol=1e-5)


@pytest.mark.parametrize("head", ["avg", "flatten"])
def test_imprint_and_add_classes_refuse_a_dense_head_naming_the_fix(tinycam, head):
    data = (_images(0, 2), np.array([0, 1]))
    for function in (tt.imprint, tt.add_classes):
        with pytest.raises(ValueError, match="needs a cosine head.*head='cosine'"):
            function(_model(head), data)


def test_add_classes_errors_name_the_fix(tinycam):
    model = _model("cosine")
    x, y = _images(2, 2), np.zeros(2, int)
    with pytest.raises(ValueError, match=r"\['red'\] are already classes.*tt.imprint"):
        tt.add_classes(model, (x, y), class_names=["red"])
    with pytest.raises(ValueError, match="pass class_names="):
        tt.add_classes(model, (x, y))
    model.transfer_config["class_names"] = None
    with pytest.raises(ValueError, match=r"transfer_config\['class_names'\]"):
        tt.add_classes(model, (x, y), class_names=["blue"])


@pytest.mark.slow
def test_train_cosine_with_no_epochs_then_cli_add_classes(tinycam, tmp_path, tiny_run, capsys):
    from tfx_transfer.cli import main

    data = write_class_folders(tmp_path / "data", classes=("cats", "dogs"), per_class=6, size=40)
    run = tmp_path / "run"
    result = tt.train(data, run, backbone=tinycam, weights="none", image_size=32, head="cosine",
                      head_epochs=0, fine_tune_epochs=0, augmentation="none",
                      validation_split=0.34, verbose=0)
    assert result["best"]["epoch"] == -1 and result["best"]["imprinted"] is True
    assert result["metrics"]["accuracy"] == 1.0  # class-coloured images
    assert not (run / "history.csv").exists()
    with pytest.raises(ValueError, match="nothing to train.*head='cosine'"):
        tt.train(data, tmp_path / "run2", backbone=tinycam, weights="none", image_size=32,
                 head_epochs=0, fine_tune_epochs=0, verbose=0)

    new = write_class_folders(tmp_path / "new", classes=("birds",), per_class=3, size=40, seed=3)
    out = tmp_path / "more"
    assert main(["add-classes", str(run), str(new), "--out", str(out), "--verbose", "0"]) == 0
    report = json.loads((out / "add_classes.json").read_text())
    config = json.loads((out / "config.json").read_text())
    assert config["class_names"] == ["cats", "dogs", "birds"] and report["new_classes"] == ["birds"]
    old = json.loads((run / "metrics.json").read_text())
    assert report["old"]["images"] == old["num_samples"] == 4
    assert report["old"]["accuracy_before"] == pytest.approx(old["accuracy"])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_samples"] == old["num_samples"] + 3
    assert sorted(metrics["per_class"]) == ["birds", "cats", "dogs"]
    exported = tt.load_exported(out / "export")
    assert exported.class_names == ["cats", "dogs", "birds"]
    x = _images(1, 2)
    np.testing.assert_allclose(exported.probabilities(x),
                               tt.load_model(out).predict(x, verbose=0), atol=1e-5)
    for name in ("model.keras", "report.txt", "confusion_matrix.png", "top_losses.csv",
                 "add_classes.txt"):
        assert (out / name).is_file(), name
    # foreseeable errors: one line, exit status 2 (an existing --out; a Dense-head run)
    capsys.readouterr()
    assert main(["add-classes", str(run), str(new), "--out", str(out)]) == 2
    assert main(["add-classes", str(tiny_run.run), str(new), "--out", str(tmp_path / "x")]) == 2
    assert "needs a cosine head" in capsys.readouterr().err
