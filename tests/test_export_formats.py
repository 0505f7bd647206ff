"""int8 TFLite, labels inside the file, LiteRT, ONNX: each checked against Keras on images."""

from __future__ import annotations

import json
import shutil
import zipfile

import numpy as np
import pytest

pytest.importorskip("tensorflow")

import keras  # noqa: E402

import tfx_transfer as tt  # noqa: E402
from tests.helpers import write_class_folders  # noqa: E402
from tfx_transfer.cli import main  # noqa: E402
from tfx_transfer.export import tflite_runtime  # noqa: E402
from tfx_transfer.export.parity import ParityError  # noqa: E402
from tfx_transfer.export.sample_images import sample_images  # noqa: E402
from tfx_transfer.export.tflite_classifier import TFLiteClassifier  # noqa: E402
from tfx_transfer.export.tflite_metadata import read_tflite_metadata  # noqa: E402
from tfx_transfer.export.tflite_runtime import TFLiteModel  # noqa: E402

SIZE = 32
NAMES = ["cats", "dogs", "owls"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Class folders of class-coloured images (the classes are separable by colour)."""
    return write_class_folders(tmp_path_factory.mktemp("photos"), classes=NAMES, per_class=6,
                               size=40, seed=2)


@pytest.fixture(scope="module")
def trained(folder):
    """A small CNN fitted on the folder, so that its predictions are not ties."""
    x = sample_images(folder, (SIZE, SIZE), count=None)
    y = np.repeat(np.arange(3), 6)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((SIZE, SIZE, 3)), keras.layers.Rescaling(1 / 255),
                              keras.layers.Conv2D(8, 3, activation="relu"),
                              keras.layers.GlobalAveragePooling2D(),
                              keras.layers.Dense(3, activation="softmax")], name="tiny")
    model.compile(keras.optimizers.Adam(0.1), "sparse_categorical_crossentropy")
    model.fit(x, y, epochs=10, batch_size=18, verbose=0)  # every top probability >= 0.74
    return model, x, y


def test_sample_images_reads_class_and_flat_folders(folder, tmp_path):
    pixels = sample_images(folder, (SIZE, SIZE), count=5)
    assert pixels.shape == (5, SIZE, SIZE, 3) and pixels.dtype == np.float32
    assert 0 <= pixels.min() and pixels.max() <= 255 and pixels.std() > 1
    flat = tmp_path / "flat"
    flat.mkdir()
    for path in sorted(folder.rglob("*.*"))[:4]:
        (flat / f"{path.parent.name}_{path.name}").write_bytes(path.read_bytes())
    assert len(sample_images(flat, (SIZE, SIZE))) == 4
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="No images under"):
        sample_images(tmp_path / "empty", (SIZE, SIZE))


@pytest.mark.parametrize("quantized_io", ["uint8", "int8"])
def test_int8_tflite_is_full_integer_with_labels_and_checked(trained, folder, tmp_path, quantized_io):
    model, x, y = trained
    path = tmp_path / "m.tflite"
    report = tt.export_tflite(model, path, quantization="int8", representative_data=folder,
                              quantized_io=quantized_io, validation_data=(x, y),
                              class_names=NAMES)
    runner = TFLiteModel(path)
    assert runner.input_dtype == runner.output_dtype == quantized_io
    assert report["calibration_images"] == 18 and report["num_samples"] == 18
    assert report["top1_agreement"] >= 0.95 and report["accuracy"] == report["keras_accuracy"] > 0.9
    np.testing.assert_allclose(runner.probabilities(x), model.predict(x, verbose=0), atol=0.05)
    assert tt.read_tflite_labels(path) == NAMES
    meta = read_tflite_metadata(path)
    assert meta["mean"] == [0.0] * 3 and meta["std"] == [1.0] * 3 and meta["name"] == "tiny"
    with zipfile.ZipFile(path) as archive:  # the label file travels inside, as the Task Library reads it
        assert archive.read("labels.txt").decode().split() == NAMES


def test_float_exports_keep_agreement_and_the_bound_refuses_with_figures(trained, tmp_path):
    model, x, y = trained
    report = tt.export_tflite(model, tmp_path / "f.tflite", quantization=None,
                              validation_data=(x, y))
    assert report["top1_agreement"] == 1.0 and report["max_abs_diff"] <= 1e-4
    assert report["accuracy"] == report["keras_accuracy"] and report["class_names"] is None
    with pytest.raises(ValueError, match="carries no class names"):  # a plain Keras model
        tt.read_tflite_labels(tmp_path / "f.tflite")
    with pytest.raises(ParityError, match=r"below the bound min_agreement=1.01: top-1 agreement "
                                          r"100.0% on 18 images"
                                          r".*accuracy"):
        tt.export_tflite(model, tmp_path / "no.tflite", quantization="dynamic",
                         validation_data=(x, y), min_agreement=1.01)
    with pytest.raises(ValueError, match="checked on real images"):
        tt.export_tflite(model, tmp_path / "no.tflite", quantization="dynamic")
    with pytest.raises(ValueError, match="representative_data"):
        tt.export_tflite(model, tmp_path / "no.tflite", quantization="int8")
    assert not (tmp_path / "no.tflite").exists()


def test_tf_lite_interpreter_is_the_fallback_with_the_same_figures(trained, tmp_path, monkeypatch):
    model, x, _ = trained
    path = tt.export_tflite(model, tmp_path / "m.tflite", quantization=None, check=False)["path"]
    litert = TFLiteModel(path).probabilities(x)
    monkeypatch.setattr(tflite_runtime, "tflite_runtime", lambda: "tf.lite")
    fallback = TFLiteModel(path)
    assert fallback.runtime == "tf.lite" and "tensorflow" in type(fallback._interpreter).__module__
    np.testing.assert_allclose(fallback.probabilities(x), litert, atol=1e-6)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_cli_exports_a_run_to_int8_and_onnx_and_predicts_with_the_tflite(tiny_run, tmp_path,
                                                                         capsys, monkeypatch):
    run = tmp_path / "run"  # a copy: the shared run folder stays as train() left it
    shutil.copytree(tiny_run.run, run, ignore=shutil.ignore_patterns("export", "*.png", "best*"))
    tflite, onnx = tmp_path / "m.tflite", tmp_path / "m.onnx"
    code = main(["export", str(run), str(tmp_path / "export"), "--tflite", str(tflite),
                 "--quantization", "int8", "--onnx", str(onnx), "--min-agreement", "0.5"])
    out = capsys.readouterr().out
    assert code == 0 and "int8; top-1 agreement" in out and "onnx;" in out
    meta = json.loads((tmp_path / "export" / "1" / "assets.extra" / "metadata.json").read_text())
    figures = json.loads((run / "exports.json").read_text())["m.tflite"]
    assert meta["tflite"]["top1_agreement"] == figures["top1_agreement"] >= 0.5
    assert figures["num_samples"] == 4 and figures["calibration_images"] == 8  # the run's split
    assert meta["onnx"]["max_abs_diff"] <= 1e-4 and meta["onnx"]["top1_agreement"] == 1.0
    from tfx_transfer.export.onnx import onnx_probabilities, read_onnx_class_names

    model = tt.load_model(run / "model.keras")
    x = sample_images(tiny_run.data, (SIZE, SIZE), count=3)
    np.testing.assert_allclose(onnx_probabilities(onnx, x), model.predict(x, verbose=0), atol=1e-4)
    assert read_onnx_class_names(onnx) == ["cats", "dogs"]
    assert tt.read_tflite_labels(tflite) == ["cats", "dogs"]
    assert main(["predict", str(tflite), str(tiny_run.data / "cats"), "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 6 and {row["top"][0]["class"] for row in rows} <= {"cats", "dogs"}
    # a non-image file: skipped with the SavedModel's reason, not TensorFlow's op message
    (tmp_path / "notes.jpg").write_text("not an image")
    assert main(["predict", str(tflite), str(tmp_path / "notes.jpg")]) == 1
    err = capsys.readouterr().err
    assert "notes.jpg: not a JPEG, PNG, GIF" in err and "DecodeImage" not in err
    assert main(["predict", str(onnx), str(tmp_path / "notes.jpg")]) == 2  # says what to use
    assert "is an ONNX file: predict takes a SavedModel export or a .tflite" in capsys.readouterr().err
    # train(tflite="float16") writes RUN/model.tflite the same way, next to the others' figures
    from tfx_transfer.layout import RunFolder
    from tfx_transfer.runs.deploy import run_images, write_run_tflite

    folder = run_images(run)
    reports = write_run_tflite(model, folder, RunFolder(run), "float16", verbose=0)
    assert reports["tflite"]["path"] == str(run / "model.tflite") and \
        tt.read_tflite_labels(run / "model.tflite") == ["cats", "dogs"]
    assert sorted(json.loads((run / "exports.json").read_text())) == ["m.onnx", "m.tflite",
                                                                      "model.tflite"]
    # a refused file does not end the training job: warned, recorded, the run goes on
    with pytest.warns(UserWarning, match="below the bound min_agreement=1.01"):
        import tfx_transfer.export.tflite as tflite_module

        monkeypatch.setitem(tflite_module.export_tflite.__kwdefaults__, "min_agreement", 1.01)
        refused = write_run_tflite(model, folder, RunFolder(run), "float32", verbose=0)
    assert refused["tflite"]["path"] is None
    assert "refused" in json.loads((run / "exports.json").read_text())["model.tflite"]


def test_cli_refusal_is_one_line_and_writes_nothing(tiny_run, tmp_path, capsys):
    code = main(["export", str(tiny_run.run), str(tmp_path / "export"), "--tflite",
                 str(tmp_path / "m.tflite"), "--quantization", "dynamic", "--min-agreement", "1.01"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert "min_agreement=1.01: top-1 agreement" in err and "nothing written" in err
    assert not (tmp_path / "m.tflite").exists() and not (tmp_path / "export").exists()
    with pytest.raises(SystemExit) as exit_:  # argparse: one line, 'none' spelled as typed
        main(["export", str(tiny_run.run), str(tmp_path / "export"), "--quantization", "int4"])
    err = capsys.readouterr().err.splitlines()[-1]
    assert exit_.value.code == 2 and err.endswith("invalid choice: 'int4' (choose from 'float16', "
                                                  "'dynamic', 'int8', 'none')")


def test_a_multi_label_tflite_carries_its_thresholds_and_predicts_labels(tinycam, tmp_path):
    """Per-label thresholds travel inside the .tflite (thresholds.txt beside labels.txt), and
    predicting with the file lists every label at or above its threshold, as the export does."""
    keras.utils.set_random_seed(0)
    model = tt.build_transfer_model(tinycam, 3, input_shape=32, weights=None, multi_label=True,
                                    class_names=["sky", "tree", "road"])
    model.transfer_config["thresholds"] = [0.2, 0.5, 0.9]
    pixels = np.random.default_rng(0).integers(0, 256, (6, 32, 32, 3)).astype("uint8")
    path = tmp_path / "tags.tflite"
    tt.export_tflite(model, path, quantization=None, sample_pixels=pixels)
    assert read_tflite_metadata(path)["thresholds"] == [0.2, 0.5, 0.9]
    with zipfile.ZipFile(path) as archive:
        assert sorted(archive.namelist()) == ["labels.txt", "thresholds.txt"]
    rows = TFLiteClassifier(path).predict(list(pixels))  # what predict / predict_files use
    expected = model.predict(pixels, verbose=0)
    for row, probs in zip(rows, expected):
        want = [name for name, p, t in zip(["sky", "tree", "road"], probs, [0.2, 0.5, 0.9]) if p >= t]
        assert sorted(name for name, _ in row["labels"]) == sorted(want)
    single = tt.build_transfer_model(tinycam, 2, input_shape=32, weights=None, class_names=["a", "b"])
    tt.export_tflite(single, tmp_path / "one.tflite", quantization=None, sample_pixels=pixels)
    assert read_tflite_metadata(tmp_path / "one.tflite")["thresholds"] is None
    assert "labels" not in TFLiteClassifier(tmp_path / "one.tflite").predict(list(pixels[:1]))[0]
