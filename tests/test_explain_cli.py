"""The debugging aids in the run folder and on the CLI: top losses, lr=auto, TensorBoard,
evaluate --tta, explain, find-lr (one tiny run, 32 px)."""

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import write_class_folders
from tfx_transfer.cli import main
from tfx_transfer.runs.job import train
from tfx_transfer.training.finetune import DEFAULT_FINE_TUNE_LR


def _scalars(folder: Path) -> dict[str, dict[int, float]]:
    """{tag: {step: value}} from the TensorBoard event files under ``folder``."""
    import tensorflow as tf

    out: dict[str, dict[int, float]] = {}
    for path in sorted(folder.glob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                number = float(tf.make_ndarray(value.tensor)) if value.HasField("tensor") \
                    else value.simple_value
                out.setdefault(value.tag, {})[int(event.step)] = number
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_class_folders(tmp_path_factory.mktemp("data"), classes=("cats", "dogs"),
                               per_class=6, size=40)


@pytest.mark.slow  # one tiny end-to-end run with export: ~25 s of CPU
def test_run_folder_gets_top_losses_auto_lr_and_tensorboard(tinycam, data, tmp_path, capsys):
    run = tmp_path / "run"
    result = train(data, run, backbone=tinycam, weights="none", image_size=32, head_epochs=2,
                   fine_tune_epochs=1, augmentation="none", batch_size=4, head_lr="auto",
                   tensorboard=True, verbose=0)
    config = json.loads((run / "config.json").read_text())
    assert config["head_lr_requested"] == "auto" and isinstance(config["head_lr"], float)
    assert config["head_lr"] == float(f"{config['lr_finder']['suggestion']:.3g}")
    assert (run / "lr_finder.png").stat().st_size > 5000
    with open(run / "lr_finder.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == config["lr_finder"]["steps"] >= 2

    with open(run / "top_losses.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == result["metrics"]["num_samples"]
    assert all(Path(row["path"]).parent.name == row["true_class"] for row in rows)
    losses = [float(row["loss"]) for row in rows]
    assert losses == sorted(losses, reverse=True)
    assert result["paths"]["top_losses"] == run / "top_losses.png"
    assert (run / "top_losses.png").stat().st_size > 5000

    train_scalars = _scalars(run / "tensorboard" / "train")
    assert train_scalars["epoch_stage"] == {0: 0.0, 1: 0.0, 2: 1.0}  # both phases, one timeline
    rates = train_scalars["epoch_learning_rate"]
    assert rates[0] == pytest.approx(config["head_lr"]) and rates[2] == pytest.approx(DEFAULT_FINE_TUNE_LR)
    assert set(_scalars(run / "tensorboard" / "validation")["epoch_loss"]) == {0, 1, 2}

    # evaluate --tta writes the same top-losses files for the folder it scores
    out = tmp_path / "eval"
    assert main(["evaluate", str(run), str(data), "--out", str(out), "--tta", "--split", "all"]) == 0
    printed = capsys.readouterr().out
    assert "plain" in printed and "TTA" in printed and "top_losses" in printed
    assert json.loads((out / "metrics.json").read_text())["tta"]["views"] == 6
    with open(out / "top_losses.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == 12  # the whole folder (--split all)

    # explain: one PNG per image (of a folder given, and of a file) and a contact sheet
    few = tmp_path / "few_cats"  # a folder of two of the cats (every image costs a Grad-CAM plot)
    few.mkdir()
    for name in ("cats_0.jpg", "cats_1.png"):
        shutil.copy(data / "cats" / name, few / name)
    explained = tmp_path / "explained"
    assert main(["explain", str(run), str(few), str(data / "dogs" / "dogs_0.jpg"),
                 "--out", str(explained)]) == 0
    pngs = sorted(p.name for p in explained.glob("*.png"))
    assert pngs == ["cats_0.png", "cats_1.png", "contact_sheet.png", "dogs_0.png"]


def test_find_lr_cli_builds_what_train_builds(tinycam, data, tmp_path, capsys, monkeypatch):
    import tfx_transfer as tt
    import tfx_transfer.training.lr_finder as lr_finder
    from tfx_transfer.models.transfer_model import AUGMENT_NAME
    from tfx_transfer.runs.job import train_defaults

    built, real = [], lr_finder.find_head_lr

    def spy(model, train, **kwargs):
        built.append(model)
        return real(model, train, **kwargs)

    monkeypatch.setattr(lr_finder, "find_head_lr", spy)
    out = tmp_path / "lr"
    assert main(["find-lr", str(data), "--backbone", tinycam, "--weights", "none",
                 "--image-size", "32", "--batch-size", "4", "--num-steps", "12",
                 "--out", str(out)]) == 0
    # no --head, --units, --dropout, --augmentation given: train's defaults
    defaults = train_defaults()
    as_train = tt.build_transfer_model(tinycam, 2, input_shape=32, weights=None,
                                       head=defaults["head"], units=defaults["units"],
                                       dropout=defaults["dropout"])
    keys = ("head", "units", "dropout", "input_shape")
    assert {k: tt.transfer_config(built[0])[k] for k in keys} == \
        {k: tt.transfer_config(as_train)[k] for k in keys}
    assert defaults["augmentation"] == "standard"
    assert AUGMENT_NAME in [layer.name for layer in built[0].layers]

    # the printed suggestion is the valley of the curve written to lr_finder.csv
    printed = capsys.readouterr().out
    suggestion = float(printed.split("suggested learning rate: ")[1].split()[0])
    with open(out / "lr_finder.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert 2 <= len(rows) <= 12 and (out / "lr_finder.png").is_file()
    rates = np.array([float(r["learning_rate"]) for r in rows])
    assert np.all(np.diff(rates) > 0)
    smoothed = [float(r["smoothed_loss"]) for r in rows]
    # fewer than 20 steps: no edge is skipped
    assert suggestion == pytest.approx(lr_finder.valley(rates, smoothed), rel=5e-3)

    assert main(["explain", str(tmp_path / "nothing"), str(data), "--out", str(out)]) == 2
    assert "nothing' is not a run folder" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", str(data), "--out", str(tmp_path / "r"), "--head-lr", "fast"])
    with pytest.raises(ValueError, match="head_lr='fast'"):
        train(data, tmp_path / "r2", backbone=tinycam, weights="none", head_lr="fast", verbose=0)
