"""Serving: SavedModel signatures, fresh-process loading, atomic writes, TFLite, predict CLI."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
import keras  # noqa: E402
from PIL import Image  # noqa: E402

from tests.helpers import tiny_pixels  # noqa: E402
from tests.tiny_backbone import tinyvgg_registered  # noqa: E402
from tfx_transfer.cli import main  # noqa: E402
from tfx_transfer.data.decode import TENSORFLOW_DECODES_WEBP, decode_and_resize  # noqa: E402
from tfx_transfer.export import saved_model  # noqa: E402
from tfx_transfer.export.exported import load_exported, predict_files  # noqa: E402
from tfx_transfer.export.saved_model import export_saved_model  # noqa: E402
from tfx_transfer.export.signatures import SERVING_FORMATS, Serving  # noqa: E402
from tfx_transfer.export.tflite import export_tflite  # noqa: E402
from tfx_transfer.models.transfer_model import build_transfer_model, get_backbone_model, get_head  # noqa: E402

CLASSES = ["daisy", "rose", "tulip"]
SIZE = 32
BIN = Path(sys.executable).parent


def encode(pixels: np.ndarray, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, fmt)
    return buffer.getvalue()


@pytest.fixture(autouse=True, scope="module")
def _tinyvgg():
    with tinyvgg_registered():
        yield


def tiny_vgg(augmentation=None, calibrate=True):
    """Random-init tinyvgg (VGG16's layer names and blocks, 8 channels: tests/tiny_backbone.py)
    at 32 px whose classifier is calibrated so random images spread over classes (calibrate=False:
    as built, for a test that compares the model with itself and does not need the spread)."""
    keras.utils.set_random_seed(0)
    model = build_transfer_model("tinyvgg", len(CLASSES), input_shape=(SIZE, SIZE, 3), weights=None,
                                 head="avg", augmentation=augmentation)
    if not calibrate:
        return model
    dense = get_head(model).get_layer("predictions")
    dense.kernel.assign(dense.kernel * 1.5)
    log_probs = np.log(np.maximum(model.predict(tiny_pixels(8, SIZE, seed=9), verbose=0), 1e-30))
    dense.bias.assign(dense.bias - log_probs.mean(0))  # centre each class's logit
    return model


@pytest.fixture(scope="module")
def model():
    # Our custom layers (Augmentation, Preprocess) must trace into the export.
    return tiny_vgg(augmentation="light")


@pytest.fixture(scope="module")
def export_dir(model, tmp_path_factory):
    root = tmp_path_factory.mktemp("exports") / "flowers"
    traced, outputs = [], Serving._outputs

    def counted(self, pixels):  # runs once per trace of a signature's graph
        traced.append(pixels.dtype)
        return outputs(self, pixels)

    Serving._outputs = counted
    try:
        path = export_saved_model(model, root, CLASSES, metadata={"metrics": {"val_accuracy": 0.5}})
    finally:
        Serving._outputs = outputs
    assert path == root / "1"
    assert len(traced) == 3  # each of the 3 signatures traced once (the save does not trace again)
    return root


@pytest.fixture(scope="module")
def serving(export_dir):
    return tf.saved_model.load(str(export_dir / "1")).signatures


@pytest.fixture
def pixels():
    return tiny_pixels(4, SIZE, seed=1)


def test_both_signatures_match_model_predict(model, serving, pixels):
    expected = model.predict(pixels, verbose=0)
    by_bytes = serving["serving_default"](images=tf.constant([encode(p) for p in pixels]))
    by_float = serving["predict_pixels"](pixels=tf.constant(pixels.astype("float32")))
    by_uint8 = serving["predict_pixels_uint8"](pixels=tf.constant(pixels))
    for out in (by_bytes, by_float, by_uint8):
        probs = out["probabilities"].numpy()
        assert probs.dtype == np.float32 and probs.shape == (4, 3)
        np.testing.assert_allclose(probs, expected, atol=1e-4)
        np.testing.assert_array_equal(out["class_ids"].numpy()[:, 0], expected.argmax(1))
        # top_k defaults to min(5, 3); names and scores follow the ids
        ids = out["class_ids"].numpy()
        assert ids.shape == (4, 3)
        names = out["class_names"].numpy().astype(str)
        assert names.tolist() == np.array(CLASSES)[ids].tolist()
        np.testing.assert_allclose(out["scores"].numpy(), np.sort(probs, 1)[:, ::-1], atol=1e-6)
    assert len(set(expected.argmax(1))) > 1  # the check is not vacuous: classes differ


def test_resize_and_formats_use_the_training_decoder(model, serving):
    # Other sizes and formats: the graph runs data.decode_and_resize, the training pipeline's code.
    rng = np.random.default_rng(2)
    big = rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)
    images = [encode(big, "PNG"), encode(big, "JPEG"), encode(big, "BMP"), encode(big, "GIF"),
              encode(np.dstack([big, big[..., :1]]), "PNG")]  # RGBA -> RGB
    if TENSORFLOW_DECODES_WEBP:  # TensorFlow >= 2.19
        images.append(encode(big, "WEBP"))
    as_trained = np.stack([decode_and_resize(tf.constant(b), (SIZE, SIZE)).numpy() for b in images])
    expected = model.predict(as_trained.astype("float32"), verbose=0)
    out = serving["serving_default"](images=tf.constant(images))
    np.testing.assert_allclose(out["probabilities"].numpy(), expected, atol=1e-4)
    # the pixel signature resizes other sizes with the same resize (uint8 and float input)
    for name, value in (("predict_pixels_uint8", big), ("predict_pixels", big.astype("float32"))):
        out = serving[name](pixels=tf.constant(value[None]))
        np.testing.assert_allclose(out["probabilities"].numpy(), expected[:1], atol=1e-4)


def test_bad_bytes_raise_invalid_argument_naming_each_index(serving, pixels):
    good = encode(pixels[0])
    batch = tf.constant([good, b"<html>not an image</html>", good[:60], good])
    with pytest.raises(tf.errors.InvalidArgumentError) as info:
        serving["serving_default"](images=batch)
    message = info.value.message
    assert "Could not decode 2 of 4 image(s)" in message
    assert f"index 1: not a {SERVING_FORMATS} image" in message
    assert "index 2: corrupt or truncated image data" in message
    assert "index 0" not in message and "index 3" not in message
    # the process and the loaded model carry on
    assert serving["serving_default"](images=tf.constant([good]))["probabilities"].shape == (1, 3)
    empty = serving["serving_default"](images=tf.constant([], tf.string))
    assert empty["probabilities"].shape == (0, 3)


def test_layout_assets_and_metadata(export_dir, model):
    assert sorted(p.name for p in export_dir.iterdir()) == ["1"]  # no temporary litter
    version = export_dir / "1"
    assert (version / "saved_model.pb").is_file()
    assert (version / "assets" / "labels.txt").read_text().splitlines() == CLASSES
    meta = json.loads((version / "assets.extra" / "metadata.json").read_text())
    assert meta["backbone"] == "tinyvgg" and meta["head"] == "avg"
    assert meta["image_size"] == [SIZE, SIZE] and meta["class_names"] == CLASSES
    assert meta["metrics"] == {"val_accuracy": 0.5}
    assert meta["top_k"] == 3
    assert meta["versions"]["tensorflow"] == tf.__version__
    assert meta["versions"]["keras"] == keras.__version__
    assert set(meta["versions"]) == {"tfx_transfer", "tensorflow", "keras"} and meta["created"]
    # every weight is stored once (keras.export's track(model) would store each twice)
    reader = tf.train.load_checkpoint(str(version / "variables" / "variables"))
    shapes = reader.get_variable_to_shape_map()
    stored = sum(int(np.prod(shape)) for key, shape in shapes.items() if key != "_CHECKPOINTABLE_OBJECT_GRAPH")
    assert stored == model.count_params()


FRESH = r"""
import json, sys
for name in ("keras", "tf_keras", "tfx_transfer"):
    sys.modules[name] = None  # importing any of them now raises ImportError
import tensorflow as tf
loaded = tf.saved_model.load(sys.argv[1])
images = tf.constant([open(p, "rb").read() for p in sys.argv[2:]])
out = loaded.signatures["serving_default"](images=images)
used = sorted(k for k, v in sys.modules.items()
              if v is not None and k.split(".")[0] in ("keras", "tf_keras", "tfx_transfer"))
print(json.dumps({"probabilities": out["probabilities"].numpy().tolist(),
                  "class_names": out["class_names"].numpy().astype(str).tolist(), "used": used}))
"""


@pytest.mark.slow
def test_loads_and_runs_in_a_process_without_keras_or_tfx_transfer(export_dir, model, pixels, tmp_path):
    # TensorFlow 2.21's own __init__ imports Keras when it is installed (it swallows the
    # ImportError when it is not), so "keras not in sys.modules" can only be shown by making
    # Keras unimportable: the export must then still load and serve.
    paths = []
    for i, image in enumerate(pixels[:2]):
        paths.append(tmp_path / f"{i}.png")
        paths[-1].write_bytes(encode(image))
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop("PYTHONPATH", None)
    done = subprocess.run([sys.executable, "-c", FRESH, str(export_dir / "1"), *map(str, paths)],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["used"] == []
    expected = model.predict(pixels[:2], verbose=0)
    np.testing.assert_allclose(result["probabilities"], expected, atol=1e-4)
    assert [row[0] for row in result["class_names"]] == [CLASSES[i] for i in expected.argmax(1)]


def saved_model_cli(*argv: str) -> str:
    """What ``saved_model_cli ARGV...`` prints, run in this process: the console script's own
    code (its entry point's parsing and dispatch, without absl's ``app.run``, which would hand
    the process's logging and fault handler to absl), not a second TensorFlow import (~8 s)."""
    from absl import flags
    from tensorflow.python.tools import saved_model_cli as cli

    assert (BIN / "saved_model_cli").is_file()  # the command users run is installed
    argv = ["saved_model_cli", *argv]
    out = io.StringIO()
    flags.FLAGS(argv)  # what app.run parses before it calls the entry point
    try:
        with contextlib.redirect_stdout(out):
            cli.create_parser().parse_args(argv[1:]).func()
    finally:
        flags.FLAGS.unparse_flags()
    return out.getvalue()


def test_saved_model_cli_lists_signatures_with_dtypes_and_shapes(export_dir):
    text = saved_model_cli("show", "--all", "--dir", str(export_dir / "1"))
    blocks = {b.split("']")[0]: b for b in text.split("signature_def['")[1:]}
    assert {"serving_default", "predict_pixels", "predict_pixels_uint8"} <= set(blocks)
    compact = {k: " ".join(v.split()) for k, v in blocks.items()}
    assert "inputs['images'] tensor_info: dtype: DT_STRING shape: (-1)" in compact["serving_default"]
    assert "inputs['pixels'] tensor_info: dtype: DT_FLOAT shape: (-1, -1, -1, 3)" in compact["predict_pixels"]
    assert "inputs['pixels'] tensor_info: dtype: DT_UINT8 shape: (-1, -1, -1, 3)" in compact["predict_pixels_uint8"]
    for block in (compact[name] for name in ("serving_default", "predict_pixels", "predict_pixels_uint8")):
        assert "outputs['probabilities'] tensor_info: dtype: DT_FLOAT shape: (-1, 3)" in block
        assert "outputs['class_ids'] tensor_info: dtype: DT_INT32 shape: (-1, 3)" in block
        assert "outputs['class_names'] tensor_info: dtype: DT_STRING shape: (-1, 3)" in block
        assert "outputs['scores'] tensor_info: dtype: DT_FLOAT shape: (-1, 3)" in block


def test_load_exported_predicts_paths_bytes_and_arrays(export_dir, model, pixels, tmp_path):
    path = tmp_path / "a.png"
    path.write_bytes(encode(pixels[0]))
    exported = load_exported(export_dir)
    assert exported.path == export_dir / "1" and exported.class_names == CLASSES
    assert exported.metadata["backbone"] == "tinyvgg" and exported.image_size == (SIZE, SIZE)
    rows = exported.predict([path, encode(pixels[1]), pixels[2], pixels[3].astype("float32")], top_k=2)
    expected = model.predict(pixels, verbose=0)
    np.testing.assert_allclose(np.stack([r["probabilities"] for r in rows]), expected, atol=1e-4)
    for row, probs in zip(rows, expected):
        order = np.argsort(-probs)[:2]
        assert [name for name, _ in row["top"]] == [CLASSES[i] for i in order]
        np.testing.assert_allclose([s for _, s in row["top"]], probs[order], atol=1e-4)
    assert load_exported(export_dir / "1").path == export_dir / "1"
    with pytest.raises(FileNotFoundError, match="neither a SavedModel"):
        load_exported(tmp_path)


def _photo_folder(root: Path, pixels: np.ndarray) -> Path:
    (root / "sub").mkdir(parents=True)
    (root / "a.png").write_bytes(encode(pixels[0]))
    (root / "b.jpg").write_bytes(encode(pixels[1], "JPEG"))
    (root / "sub" / "c.png").write_bytes(encode(pixels[2]))
    (root / "broken.jpg").write_bytes(b"this is not a jpeg")
    (root / "notes.txt").write_text("hello")
    (root / ".DS_Store").write_bytes(b"\0\0")
    return root


def test_predict_files_skips_bad_files_with_a_warning(export_dir, model, pixels, tmp_path, capsys):
    folder = _photo_folder(tmp_path / "photos", pixels)
    with pytest.warns(UserWarning, match="Skipped 2 file") as caught:
        rows = predict_files(export_dir, folder, top_k=1, batch_size=2, progress=True)
    text = str(caught[0].message)
    assert "notes.txt: not an image file" in text
    assert f"broken.jpg: not a {SERVING_FORMATS} image" in text
    assert [Path(r["path"]).name for r in rows] == ["a.png", "b.jpg", "c.png"]
    expected = model.predict(pixels[[0, 2]], verbose=0)  # PNG is lossless: exact pixels
    assert [rows[0]["top"][0][0], rows[2]["top"][0][0]] == [CLASSES[i] for i in expected.argmax(1)]
    assert "4/4" in capsys.readouterr().out  # the bar counts the 4 candidate images to the end


def test_cli_predict_json_and_table(export_dir, model, pixels, tmp_path, capsys):
    folder = _photo_folder(tmp_path / "photos", pixels)
    # a file that cannot be decoded: the rows that could be computed, a plain line, exit 1
    assert main(["predict", str(export_dir), str(folder), "--json", "--top-k", "2"]) == 1
    out, err = capsys.readouterr()
    assert "skipped " in err and "broken.jpg" in err and "Warning" not in err
    lines = [json.loads(line) for line in out.strip().splitlines()]
    assert [Path(line["path"]).name for line in lines] == ["a.png", "b.jpg", "c.png"]
    assert all(len(line["top"]) == 2 and set(line["top"][0]) == {"class", "score"} for line in lines)
    assert lines[0]["top"][0]["class"] == CLASSES[int(model.predict(pixels[:1], verbose=0).argmax())]

    assert main(["predict", str(export_dir / "1"), str(folder / "a.png")]) == 0
    row = capsys.readouterr().out.strip()
    assert row.startswith(str(folder / "a.png")) and all(name in row for name in CLASSES)


def test_existing_version_is_refused(model, tmp_path):
    (tmp_path / "m" / "1").mkdir(parents=True)
    (tmp_path / "m" / "1" / "keep.txt").write_text("old")
    with pytest.raises(ValueError, match=r"Version 1 already exists .*overwrite=True"):
        export_saved_model(model, tmp_path / "m", CLASSES, version=1)
    assert (tmp_path / "m" / "1" / "keep.txt").read_text() == "old"
    with pytest.raises(ValueError, match="class names"):
        export_saved_model(model, tmp_path / "m", ["a", "b"])


@pytest.mark.parametrize("overwrite", [False, True])
def test_failure_mid_save_leaves_no_version_and_no_litter(model, tmp_path, monkeypatch, overwrite):
    root = tmp_path / "m"
    if overwrite:
        (root / "1").mkdir(parents=True)
        (root / "1" / "keep.txt").write_text("old")

    def crash(filepath, endpoints):  # dies half-way through writing the SavedModel
        Path(filepath, "variables").mkdir(parents=True)
        Path(filepath, "saved_model.pb").write_bytes(b"half written")
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(saved_model, "write_signatures", crash)
    with pytest.raises(OSError, match="simulated"):
        export_saved_model(model, root, CLASSES, version=1, overwrite=overwrite)
    if overwrite:  # the old version is untouched
        assert sorted(p.name for p in root.iterdir()) == ["1"]
        assert sorted(p.name for p in (root / "1").iterdir()) == ["keep.txt"]
    else:
        assert list(root.iterdir()) == []


@pytest.mark.filterwarnings(r"ignore:(?s).*tf\.lite\.Interpreter is deprecated")
@pytest.mark.parametrize("quantization", ["float16", "dynamic"])
def test_tflite_parity(model, tmp_path, quantization):
    sample = tiny_pixels(12, SIZE, seed=3)
    # random pixels: dynamic int8 flips near-ties (the agreement bound is for real images)
    bounds = {"float16": {}, "dynamic": dict(tolerance=0.1, min_agreement=0.5)}[quantization]
    report = export_tflite(model, tmp_path / "m.tflite", quantization=quantization,
                           sample_pixels=sample, **bounds)
    assert report["max_abs_diff"] <= report["tolerance"] and report["num_samples"] == 12
    content = (tmp_path / "m.tflite").read_bytes()
    assert len(content) == report["size_bytes"]
    # the file on disk is the checked model: run it again independently
    interpreter = tf.lite.Interpreter(model_content=content)
    index = interpreter.get_input_details()[0]["index"]
    interpreter.resize_tensor_input(index, [12, SIZE, SIZE, 3])
    interpreter.allocate_tensors()
    interpreter.set_tensor(index, sample.astype("float32"))
    interpreter.invoke()
    got = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    expected = model.predict(sample, verbose=0)
    np.testing.assert_allclose(got, expected, atol=report["tolerance"])
    # top-1 agrees wherever the Keras margin exceeds twice the measured difference
    top2 = np.sort(expected, 1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 2 * report["max_abs_diff"]
    assert clear.sum() >= 3
    np.testing.assert_array_equal(got.argmax(1)[clear], expected.argmax(1)[clear])
    assert report["top1_agreement"] >= clear.mean()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.tflite"]


def test_tflite_parity_failure_writes_nothing(tmp_path, monkeypatch):
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Conv2D(4, 3)(inputs)
    outputs = keras.layers.Dense(3, activation="softmax")(keras.layers.GlobalAveragePooling2D()(x))
    small = keras.Model(inputs, outputs)
    import tfx_transfer.export.tflite as export

    real = export.TFLiteModel.probabilities
    monkeypatch.setattr(export.TFLiteModel, "probabilities", lambda self, p: real(self, p) + 0.1)
    with pytest.raises(RuntimeError, match=r"beyond the bound max_abs_diff=0\.0001: .*max \|prob "
                                           r"diff\| 0\.1.*a larger tolerance="):
        export_tflite(small, tmp_path / "s.tflite", quantization=None)
    assert list(tmp_path.iterdir()) == []


def test_keras_and_savedmodel_round_trip_after_fine_tuning(tmp_path, capsys):
    model = tiny_vgg(calibrate=False)
    base = get_backbone_model(model)
    base.trainable = True
    for layer in base.layers:  # unfreeze block5 only
        layer.trainable = layer.name.startswith("block5")
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="sparse_categorical_crossentropy")
    images, labels = tiny_pixels(6, SIZE, seed=4), np.array([0, 1, 2, 0, 1, 2])
    before = {layer.name: layer.get_weights() for layer in base.layers if layer.weights}
    model.fit(images, labels, batch_size=6, epochs=1, verbose=0)
    changed = {name for name, weights in before.items()
               if any(not np.array_equal(a, b) for a, b in zip(weights, base.get_layer(name).get_weights()))}
    assert changed == {"block5_conv1", "block5_conv2"}

    expected = model.predict(images, verbose=0)
    model.save(tmp_path / "model.keras")
    reloaded = keras.saving.load_model(tmp_path / "model.keras")
    np.testing.assert_allclose(reloaded.predict(images, verbose=0), expected, atol=1e-5)

    # export the reloaded .keras through the CLI, replacing an existing version 1
    root = tmp_path / "exports"
    (root / "1").mkdir(parents=True)
    (root / "1" / "stale.txt").write_text("old")
    assert main(["export", str(tmp_path / "model.keras"), str(root), "--class-names", ",".join(CLASSES),
                 "--version", "1", "--overwrite"]) == 0
    assert capsys.readouterr().out.strip() == str(root / "1")
    assert sorted(p.name for p in root.iterdir()) == ["1"] and not (root / "1" / "stale.txt").exists()
    exported = load_exported(root)
    assert exported.metadata["backbone"] == "tinyvgg"
    np.testing.assert_allclose(exported.probabilities([encode(p) for p in images]), expected, atol=1e-4)
