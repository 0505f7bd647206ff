"""The main job end to end: `tfx-transfer train` run folder, --resume after a kill, `evaluate`."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
import keras  # noqa: E402
from PIL import Image  # noqa: E402

from tests.helpers import write_class_folders  # noqa: E402
from tests.tiny_backbone import tinycam_registered  # noqa: E402
from tfx_transfer.cli import build_parser, main  # noqa: E402
from tfx_transfer.runs.job import train  # noqa: E402
from tfx_transfer.training.finetune import DEFAULT_FINE_TUNE_LR, DEFAULT_HEAD_LR  # noqa: E402

CLASSES = ("cats", "dogs", "foxes")
TINY = ["--backbone", "tinycam", "--weights", "none", "--image-size", "32", "--head", "avg",
        "--augmentation", "none", "--batch-size", "8", "--validation-split", "0.25", "--verbose", "0"]
RUN_FILES = {".lock", "config.json", "history.csv", "best.keras", "best.json", "model.keras",
             "metrics.json", "report.txt", "history.png", "confusion_matrix.png",
             "predictions.png", "top_losses.png", "top_losses.csv", "skipped_files.txt", "export",
             "calibration.json", "reliability.png"}


def make_data(root: Path) -> Path:
    """3 class-coloured classes of 8 images (PNG and JPEG), plus one corrupt file."""
    write_class_folders(root, classes=CLASSES, per_class=8, size=40)
    (root / "dogs" / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    return root


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def assert_png(path: Path) -> None:
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        assert img.format == "PNG" and min(img.size) >= 100


def test_every_train_setting_is_a_flag_with_the_python_default(capsys):
    from tfx_transfer.commands.jobs import train_flags
    from tfx_transfer.runs.job import RUN_SETTINGS, train_defaults

    assert set(RUN_SETTINGS) <= set(train_flags())
    args = build_parser().parse_args(["train", "data", "--out", "run"])
    assert not set(vars(args)) & set(RUN_SETTINGS)  # flags not given leave train()'s defaults
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    shown = " ".join(capsys.readouterr().out.split())
    defaults = train_defaults()
    for name in RUN_SETTINGS:
        flag = "--" + name.replace("_", "-")
        assert flag in shown, flag
        value = "none" if defaults[name] is None else defaults[name]
        assert f"(default: {value})" in shown, name
    assert build_parser().parse_args(["train", "d", "--out", "r", "--blocks", "3"]).blocks == 3
    assert build_parser().parse_args(
        ["train", "d", "--out", "r", "--blocks", "block4,block5"]).blocks == ["block4", "block5"]
    assert build_parser().parse_args(
        ["train", "d", "--out", "r", "--no-cache-features"]).cache_features is False
    assert defaults["cache_features"] == "auto" and defaults["seed"] == 1337


def test_resume_refuses_other_settings_and_a_missing_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="Nothing to resume"):
        train(None, tmp_path / "none", resume=True)
    (tmp_path / "config.json").write_text(json.dumps({"backbone": "vgg16", "image_size": [32, 32],
                                                      "weights": "none", "head_epochs": 1}))
    with pytest.raises(ValueError, match=r"backbone='vgg19' \(the run has 'vgg16'\)"):
        train(None, tmp_path, resume=True, backbone="vgg19")
    with pytest.raises(ValueError, match="already holds a run"):
        train(tmp_path, tmp_path, head_epochs=1)


def test_cache_features_takes_auto_true_or_false_and_is_checked_before_training(tmp_path):
    with pytest.raises(ValueError, match="cache_features=True is not possible with "
                                         "augmentation='light'"):
        train(tmp_path, tmp_path / "run", cache_features=True, augmentation="light")
    assert not (tmp_path / "run" / "config.json").exists()  # refused before anything was written
    with pytest.raises(ValueError, match=r"cache_features='yes': use 'auto'"):
        train(tmp_path, tmp_path / "run", cache_features="yes")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    data = make_data(root / "data")
    run = root / "run"
    with tinycam_registered():  # (module scope: the function-scoped fixture cannot be used)
        status = main(["train", str(data), "--out", str(run), "--head-epochs", "1",
                       "--fine-tune-epochs", "1", "--top-k", "2", "--unknown-tpr", "0.8", *TINY])
    assert status == 0
    return data, run


@pytest.mark.slow
def test_train_writes_every_file_of_the_run_folder(trained):
    data, run = trained
    assert {p.name for p in run.iterdir()} == RUN_FILES  # backup/ removed when training ends
    for name in ("history.png", "confusion_matrix.png", "predictions.png"):
        assert_png(run / name)

    config = json.loads((run / "config.json").read_text())
    assert config["weights"] == "none" and config["weights_requested"] == "none"
    assert config["backbone"] == "tinycam" and config["image_size"] == [32, 32]
    assert config["class_names"] == list(CLASSES) and config["validation_split_used"] == 0.25
    calibration = json.loads((run / "calibration.json").read_text())
    assert config["unknown_tpr"] == calibration["unknown"]["tpr"] == 0.8  # --unknown-tpr reached it
    assert config["counts"]["validation"] == {c: 2 for c in CLASSES}

    skipped = (run / "skipped_files.txt").read_text().splitlines()
    assert len(skipped) == 1 and skipped[0].startswith(str(data / "dogs" / "broken.jpg") + "\t")

    rows = read_csv(run / "history.csv")
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    assert [int(float(r["stage"])) for r in rows] == [0, 1]  # phase 1 (head), phase 2
    assert [float(r["learning_rate"]) for r in rows] == pytest.approx([DEFAULT_HEAD_LR, DEFAULT_FINE_TUNE_LR])  # the defaults
    best = json.loads((run / "best.json").read_text())
    val_losses = [float(r["val_loss"]) for r in rows]
    assert best["epoch"] == int(np.argmin(val_losses)) and best["value"] == pytest.approx(min(val_losses))

    # metrics.json == an independent evaluation of the exported SavedModel on the same files
    from tfx_transfer.data.folder import load_image_folder
    from tfx_transfer.export.exported import load_exported

    with pytest.warns(UserWarning, match="broken.jpg"):
        files = load_image_folder(data, image_size=32, validation_split=0.25,
                                  seed=1337).files["validation"]
    exported = load_exported(run / "export")
    assert exported.path == run / "export" / "1" and exported.class_names == list(CLASSES)
    probs = exported.probabilities([path for path, _ in files])  # image bytes -> serving_default
    labels = np.array([label for _, label in files])
    predicted = probs.argmax(axis=1)
    cm = [[int(np.sum((labels == t) & (predicted == p))) for p in range(3)] for t in range(3)]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["num_samples"] == len(files) == 6
    assert metrics["confusion_matrix"] == cm
    assert metrics["accuracy"] == pytest.approx(np.mean(predicted == labels))
    assert metrics["loss"] == pytest.approx(-np.mean(np.log(probs[np.arange(6), labels])), rel=1e-4)
    top2 = np.argsort(-probs, axis=1)[:, :2]
    assert metrics["top_k"] == 2  # --top-k 2 (of 3 classes)
    assert metrics["top_k_accuracy"] == pytest.approx(np.mean((top2 == labels[:, None]).any(1)))
    for c, name in enumerate(CLASSES):
        tp = cm[c][c]
        recall = tp / sum(cm[c])
        assert metrics["per_class"][name]["recall"] == pytest.approx(recall)
        assert metrics["per_class"][name]["support"] == 2
    assert exported.metadata["metrics"]["validation"]["accuracy"] == metrics["accuracy"]
    assert exported.metadata["checkpoint"]["epoch"] == best["epoch"]

    # model.keras is the best checkpoint and predicts what the export predicts
    import tfx_transfer.data.augmentation  # noqa: F401
    import tfx_transfer.models.layers  # noqa: F401

    model = keras.saving.load_model(run / "model.keras", compile=False)
    pixels = np.stack([np.asarray(Image.open(p).convert("RGB").resize((32, 32))) for p, _ in files])
    np.testing.assert_allclose(model.predict(pixels, verbose=0),
                               exported.probabilities(pixels), atol=1e-5)


@pytest.mark.slow
def test_evaluate_cli_on_a_run_and_on_an_export(trained, tmp_path, capsys, monkeypatch):
    data, run = trained
    test_dir = tmp_path / "test"
    write_class_folders(test_dir, classes=CLASSES[::2], per_class=3, size=48, seed=5)  # no dogs

    assert main(["evaluate", str(run), str(test_dir), "--top-k", "1"]) == 0
    out = capsys.readouterr().out
    assert "top-1 accuracy" in out and "confusion matrix (rows: true class" in out
    report_dir = run / "evaluate-test"
    by_run = json.loads((report_dir / "metrics.json").read_text())
    assert by_run["num_samples"] == 6
    assert [by_run["per_class"][c]["support"] for c in CLASSES] == [3, 0, 3]
    for name in ("confusion_matrix.png", "predictions.png"):
        assert_png(report_dir / name)

    def no_keras_model(*args, **kwargs):
        raise AssertionError("an export is evaluated through the SavedModel, not Keras")

    monkeypatch.setattr(keras.saving, "load_model", no_keras_model)
    out_dir = tmp_path / "by_export"
    assert main(["evaluate", str(run / "export"), str(test_dir), "--top-k", "1",
                 "--out", str(out_dir)]) == 0
    by_export = json.loads((out_dir / "metrics.json").read_text())
    assert by_export["confusion_matrix"] == by_run["confusion_matrix"]
    assert by_export["loss"] == pytest.approx(by_run["loss"], rel=1e-4)
    assert_png(out_dir / "confusion_matrix.png")

    assert main(["evaluate", str(run), str(tmp_path / "missing")]) == 2
    assert "missing' does not exist" in capsys.readouterr().err


def test_weights_auto_with_a_builder_that_loads_no_weights_says_random_init(capsys, tinycam):
    from tfx_transfer.runs.steps import build_model

    config = dict(backbone=tinycam, weights="auto", image_size=[32, 32], head="avg",
                  units=8, dropout=0.0, class_names=None, augmentation="none", seed=1)
    build_model(config, 2, verbose=0)
    out = capsys.readouterr().out
    assert "WEIGHTS: RANDOM INITIALISATION" in out and "loads_weights=False" in out
    assert (config["weights"], config["weights_requested"]) == ("none", "auto")
    assert "loads_weights=False" in config["weights_note"]

@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:`input_shape` is undefined")
def test_weights_auto_offline_falls_back_to_random_init_loudly_and_records_it(capsys):
    from tfx_transfer.runs.steps import build_model

    config = dict(backbone="mobilenetv3small", weights="auto", image_size=[32, 32], head="avg",
                  units=8, dropout=0.0, class_names=None, augmentation="none", seed=1)
    build_model(config, 2, verbose=0)  # offline (conftest): no ImageNet weights
    assert "WEIGHTS: RANDOM INITIALISATION" in capsys.readouterr().out  # said even when quiet
    assert (config["weights"], config["weights_requested"]) == ("none", "auto")
    assert "random initialisation" in config["weights_note"]


@pytest.mark.slow
def test_resuming_a_finished_run_trains_nothing_more(tiny_run, tmp_path, capsys, tinycam):
    """(The kill and resume themselves: tests/test_core_promises.py, on the same tiny run.)"""
    run = tmp_path / "run"
    shutil.copytree(tiny_run.run, run)
    before = read_csv(run / "history.csv")
    (run / "metrics.json").unlink()
    assert main(["train", "--resume", "--out", str(run), "--verbose", "1"]) == 0
    out = capsys.readouterr().out
    assert "training of" in out and "had finished" in out and "Epoch " not in out
    assert read_csv(run / "history.csv") == before  # no epoch ran
    assert {p.name for p in run.iterdir()} >= {"metrics.json", "model.keras", "export"}
    assert json.loads((run / "metrics.json").read_text())["num_samples"] == 4  # evaluated again
