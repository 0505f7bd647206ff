"""Metrics against hand-computed values, the text report, the PNG plots, evaluate_model."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from tfx_transfer.defaults import default_top_k
from tfx_transfer.evaluation.evaluate import evaluate_model
from tfx_transfer.evaluation.metrics import (
    classification_metrics,
    confusion_matrix,
    format_report,
    precision_recall_f1,
    top_k_accuracy,
)
from tfx_transfer.evaluation.plots import (
    plot_confusion_matrix,
    plot_history,
    plot_predictions,
    read_history_csv,
)

NAMES = ["cat", "dog", "fox"]
# 6 samples; argmax predictions: cat, dog, dog, fox, cat, cat
Y_TRUE = np.array([0, 0, 1, 1, 2, 2])
PROBS = np.array([
    [0.7, 0.2, 0.1],
    [0.3, 0.6, 0.1],
    [0.1, 0.8, 0.1],
    [0.2, 0.3, 0.5],
    [0.5, 0.1, 0.4],
    [0.6, 0.3, 0.1],
])


def assert_close(got, expected, rel=1e-5):
    """Nested dicts/lists equal, floats within ``rel`` (pytest.approx is flat only)."""
    if isinstance(expected, dict):
        assert sorted(got) == sorted(expected)
        for key in expected:
            assert_close(got[key], expected[key], rel)
    elif isinstance(expected, (list, tuple)):
        assert len(got) == len(expected)
        for a, b in zip(got, expected):
            assert_close(a, b, rel)
    elif isinstance(expected, float):
        assert got == pytest.approx(expected, rel=rel, abs=1e-6)
    else:
        assert got == expected


def assert_png(path, min_side=100):
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        assert img.format == "PNG" and min(img.size) >= min_side


def test_metrics_match_hand_computed_values():
    m = classification_metrics(Y_TRUE, PROBS, NAMES, top_k=2)
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 1, 1], [2, 0, 0]]
    assert m["accuracy"] == pytest.approx(2 / 6)
    # top-2: sample 1 (cat: 2nd), 3 (dog: 2nd), 4 (fox: 2nd) join samples 0 and 2; sample 5 does not
    assert m["top_k"] == 2 and m["top_k_accuracy"] == pytest.approx(5 / 6)
    assert m["loss"] == pytest.approx(-np.mean(np.log([0.7, 0.3, 0.8, 0.3, 0.4, 0.1])))
    cat, dog, fox = (m["per_class"][n] for n in NAMES)
    assert (cat["precision"], cat["recall"], cat["support"]) == (pytest.approx(1 / 3), 0.5, 2)
    assert cat["f1"] == pytest.approx(2 * (1 / 3) * 0.5 / (1 / 3 + 0.5))
    assert (dog["precision"], dog["recall"], dog["f1"]) == (0.5, 0.5, 0.5)
    assert (fox["precision"], fox["recall"], fox["f1"]) == (0.0, 0.0, 0.0)
    assert m["macro_avg"]["recall"] == pytest.approx((0.5 + 0.5 + 0.0) / 3)
    assert m["weighted_avg"]["precision"] == pytest.approx((1 / 3 + 0.5 + 0) / 3)  # equal supports
    assert m["num_samples"] == 6 and m["class_names"] == NAMES
    json.dumps(m)  # JSON-ready


def test_default_top_k_and_a_trivial_top_k_accuracy_is_left_out():
    assert default_top_k(3) == 3 and default_top_k(1000) == 5
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(7), size=40)
    y = rng.integers(0, 7, 40)
    m = classification_metrics(y, probs)  # 7 classes: top-5 by default
    top5 = np.argsort(-probs, axis=1, kind="stable")[:, :5]
    assert m["top_k"] == 5 and m["top_k_accuracy"] == pytest.approx(np.mean((top5 == y[:, None]).any(1)))
    assert "top-5 accuracy" in format_report(m).splitlines()[0]
    for k in (None, 3):  # 3 classes: top-3 accuracy is always 1, so it is not reported
        m = classification_metrics(Y_TRUE, PROBS, NAMES, top_k=k)
        assert "top_k" not in m and "top_k_accuracy" not in m
        assert format_report(m).splitlines()[0] == "accuracy 0.3333   loss 1.0344   (6 images)"


def test_one_hot_labels_and_zero_division():
    m = classification_metrics(np.eye(3)[Y_TRUE], PROBS, NAMES)
    assert m["confusion_matrix"] == classification_metrics(Y_TRUE, PROBS, NAMES)["confusion_matrix"]
    prf = precision_recall_f1(np.array([[3, 0], [2, 0]]))  # class 1 never predicted, never right
    assert prf["precision"].tolist() == [0.6, 0.0] and prf["f1"][1] == 0.0
    assert confusion_matrix([1, 1], [0, 1], 2).tolist() == [[0, 0], [1, 1]]
    assert top_k_accuracy([2], np.array([[0.2, 0.3, 0.5]]), k=1) == 1.0


@pytest.mark.parametrize("call, message", [
    (lambda: classification_metrics([0, 3], PROBS[:2], NAMES), "outside 0..2"),
    (lambda: classification_metrics(Y_TRUE, PROBS, NAMES, top_k=4), "top_k=4"),
    (lambda: classification_metrics(Y_TRUE[:5], PROBS, NAMES), "5 labels but 6 rows"),
    (lambda: classification_metrics(Y_TRUE, PROBS, ["a", "b"]), "2 class names for 3"),
])
def test_bad_inputs_name_the_value(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_text_report_has_table_and_confusion_matrix():
    text = format_report(classification_metrics(Y_TRUE, PROBS, NAMES, top_k=2))
    lines = text.splitlines()
    assert lines[0].startswith("accuracy 0.3333   top-2 accuracy 0.8333")
    assert any(line.split() == ["cat", "0.3333", "0.5000", "0.4000", "2"] for line in lines)
    assert any(line.split()[:2] == ["macro", "avg"] for line in lines)
    assert [line.split() for line in lines[-3:]] == [["cat", "1", "1", "0"], ["dog", "0", "1", "1"],
                                                      ["fox", "2", "0", "0"]]


def test_history_plot_marks_the_phase_boundary(tmp_path):
    pytest.importorskip("matplotlib")
    csv = tmp_path / "history.csv"
    csv.write_text("epoch,accuracy,learning_rate,loss,stage,val_accuracy,val_loss\n"
                   "0,0.5,0.001,1.0,0,0.4,1.1\n1,0.6,0.001,0.8,0,0.5,0.9\n"
                   "2,0.7,1e-05,0.6,1,0.6,0.8\n3,0.8,1e-05,0.5,1,0.7,0.7\n")
    assert read_history_csv(csv)["epoch"] == [0, 1, 2, 3]
    fig = plot_history(csv, tmp_path / "history.png")
    assert_png(tmp_path / "history.png")
    loss_ax, acc_ax = fig.axes
    for ax in (loss_ax, acc_ax):
        vertical = [line.get_xdata() for line in ax.lines if len(set(line.get_xdata())) == 1]
        assert [list(x) for x in vertical] == [[2.5, 2.5]]  # between epoch 2 and 3 (1-based)
    assert [line.get_label() for line in loss_ax.lines[:2]] == ["training", "validation"]
    with pytest.raises(ValueError, match="no 'loss'"):
        plot_history({"accuracy": [0.1]})


def test_confusion_and_prediction_plots(tmp_path):
    pytest.importorskip("matplotlib")
    fig = plot_confusion_matrix([[5, 1], [0, 6]], ["cat", "dog"], tmp_path / "cm.png")
    assert_png(tmp_path / "cm.png")
    assert sorted(t.get_text() for t in fig.axes[0].texts) == ["0", "1", "5", "6"]
    images = np.random.default_rng(0).integers(0, 255, (6, 24, 24, 3), dtype=np.uint8)
    fig = plot_predictions(images, Y_TRUE, PROBS, NAMES, tmp_path / "pred.png", max_images=5)
    assert_png(tmp_path / "pred.png")
    titles = [ax.get_title() for ax in fig.axes]
    assert len(titles) == 5
    # the 4 misclassified samples (1, 3, 4, 5) come first, then the correct ones
    assert titles[:4] == ["dog (0.60)\ntrue: cat", "fox (0.50)\ntrue: dog",
                          "cat (0.50)\ntrue: fox", "cat (0.60)\ntrue: fox"]
    assert titles[4] == "cat (0.70)\ntrue: cat"


keras = pytest.importorskip("keras")


def tiny_classifier(num_classes=3, size=16):
    """A small Keras model on raw pixels: its prediction follows the dominant colour channel."""
    inputs = keras.Input((size, size, 3))
    x = keras.layers.GlobalAveragePooling2D()(inputs)
    outputs = keras.layers.Dense(num_classes, activation="softmax")(x / 255.0)
    model = keras.Model(inputs, outputs)
    model.layers[-1].set_weights([np.eye(3, num_classes) * 8.0, np.zeros(num_classes)])
    return model


def colour_images(labels, size=16, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 60, (len(labels), size, size, 3)).astype(np.uint8)
    for i, label in enumerate(labels):
        x[i, ..., label] = 220
    return x


def test_evaluate_model_on_arrays_writes_the_report(tmp_path):
    pytest.importorskip("matplotlib")
    model = tiny_classifier()
    y = np.array([0, 1, 2, 0, 1, 2, 0])
    x = colour_images(y)
    x[0, ..., 0], x[0, ..., 1] = 0, 220  # one "cat" that looks like a dog
    metrics = evaluate_model(model, (x, y), NAMES, top_k=1, out=tmp_path, batch_size=3)
    expected = classification_metrics(y, model.predict(x, verbose=0), NAMES, top_k=1)
    files = metrics.pop("files")
    assert_close(metrics, expected)
    assert metrics["accuracy"] == pytest.approx(6 / 7)
    assert_close(json.loads((tmp_path / "metrics.json").read_text()), expected)
    assert "confusion matrix" in (tmp_path / "report.txt").read_text()
    for name in ("confusion_matrix", "predictions"):
        assert_png(files[name])


def test_evaluate_model_on_a_folder_matches_classes_by_name(tmp_path):
    pytest.importorskip("tensorflow")  # the folder is read by tfx_transfer.data.folder (tf.data)
    for name, label, count in (("fox", 2, 3), ("cat", 0, 2)):  # no "dog" folder
        (tmp_path / "test" / name).mkdir(parents=True)
        for i, pixels in enumerate(colour_images([label] * count, seed=label)):
            Image.fromarray(pixels).save(tmp_path / "test" / name / f"{i}.png")
    metrics = evaluate_model(tiny_classifier(), tmp_path / "test", NAMES, verbose=False)
    assert metrics["accuracy"] == 1.0
    assert [metrics["per_class"][n]["support"] for n in NAMES] == [2, 0, 3]
    (tmp_path / "test" / "wolf").mkdir()
    Image.fromarray(colour_images([1])[0]).save(tmp_path / "test" / "wolf" / "0.png")
    with pytest.raises(ValueError, match=r"\['wolf'\] that the model does not know"):
        evaluate_model(tiny_classifier(), tmp_path / "test", NAMES, verbose=False)


def test_evaluate_model_through_an_export_equals_keras(tmp_path):
    pytest.importorskip("tensorflow")
    from tfx_transfer.export.exported import load_exported
    from tfx_transfer.export.saved_model import export_saved_model

    model = tiny_classifier()
    y = np.array([0, 1, 2, 2, 1, 0])
    x = colour_images(y)
    export_saved_model(model, tmp_path / "export", NAMES)
    via_export = evaluate_model(tmp_path / "export", (x, y), top_k=2)  # class names from labels.txt
    via_keras = evaluate_model(model, (x, y), NAMES, top_k=2)
    assert_close(via_export, via_keras)
    assert evaluate_model(load_exported(tmp_path / "export"), (x, y))["class_names"] == NAMES
