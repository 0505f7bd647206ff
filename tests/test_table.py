"""Tables of file names and labels (load_image_table) and multi-label models, end to end."""

from __future__ import annotations

import base64
import csv
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers import write_class_folders
from tests.tiny_backbone import tinycam_registered
from tfx_transfer.cli import main
from tfx_transfer.data.folder import load_image_folder
from tfx_transfer.data.table import load_image_table
from tfx_transfer.evaluation.multilabel import (
    average_precision,
    best_f1_cut,
    choose_thresholds,
    multilabel_metrics,
)

TAGS = ("red", "green", "blue")
TINY = ["--backbone", "tinycam", "--weights", "none", "--image-size", "32", "--augmentation",
        "none", "--batch-size", "4", "--verbose", "0"]


def _write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([header, *rows])
    return path


def _batches(dataset) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(x.numpy(), y.numpy()) for x, y in dataset]


def test_single_label_table_gives_exactly_the_folder(tmp_path):
    folder = write_class_folders(tmp_path / "photos", classes=("cats", "dogs", "owls"), per_class=5,
                                 size=24)
    rows = []
    for i, path in enumerate(sorted(folder.rglob("*.*"))):
        name = path.relative_to(tmp_path).as_posix()
        if i % 3 == 0:
            name = name.rsplit(".", 1)[0]  # extension-less: found as name.jpg / name.png
        elif i % 3 == 1:
            name = str(path)  # absolute
        rows.append([name, path.parent.name])
    rows.append(["photos/cats/missing.jpg", "cats"])
    table = _write_csv(tmp_path / "labels.csv", ["filename", "class"], rows[::-1])  # any order
    settings = dict(image_size=16, batch_size=4, validation_split=0.4, seed=7, cache_images="memory")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = load_image_table(table, **settings)
    reference = load_image_folder(folder, **settings)
    messages = [str(w.message) for w in caught if "Skipped" in str(w.message)]
    assert len(messages) == 1 and "missing.jpg" in messages[0] and "row" in messages[0]
    assert loaded.class_names == reference.class_names
    assert loaded.files == reference.files and loaded.counts == reference.counts
    assert loaded.skipped[0][0].endswith("missing.jpg") and not loaded.multi_label
    _assert_same_data(loaded, reference)
    with pytest.warns(UserWarning, match="missing.jpg"):  # no split: the folder's order too
        unsplit = load_image_table(table, image_size=16, verify=False)
    assert unsplit.files == load_image_folder(folder, image_size=16, verify=False).files


def _assert_same_data(a, b) -> None:
    """The same validation batches, and per epoch the same training images and labels (the
    order of a shuffled split is not reproducible even between two loads of one folder)."""
    for (xa, ya), (xb, yb) in zip(_batches(a.validation), _batches(b.validation), strict=True):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)

    def epoch(data):
        x, y = map(np.concatenate, zip(*_batches(data.train)))
        order = np.lexsort(x.reshape(len(x), -1).T)
        return x[order], y[order]

    for got, want in zip(epoch(a), epoch(b)):
        np.testing.assert_array_equal(got, want)


def test_dataframe_valid_col_and_directory(tmp_path):
    pd = pytest.importorskip("pandas")
    folder = write_class_folders(tmp_path / "photos", classes=("a", "b"), per_class=4, size=20)
    files = sorted(folder.rglob("*.*"))
    frame = pd.DataFrame({"file": [p.name for p in files], "label": [p.parent.name for p in files],
                          "is_valid": [i % 4 == 0 for i in range(len(files))]})
    with pytest.raises(ValueError, match="has no usable row"), \
            pytest.warns(UserWarning, match="Skipped 8 file"):  # relative names, no directory
        load_image_table(frame, x_col="file", y_col="label", valid_col="is_valid", image_size=8)
    frame["file"] = [f"{p.parent.name}/{p.name}" for p in files]
    loaded = load_image_table(frame, folder, x_col="file", y_col="label", valid_col="is_valid",
                              image_size=8)
    assert [Path(p).name for p, _ in loaded.files["validation"]] == \
        [p.name for i, p in enumerate(files) if i % 4 == 0]
    assert loaded.counts == {"train": {"a": 3, "b": 3}, "validation": {"a": 1, "b": 1}}


def test_bad_tables_get_errors_naming_the_fix(tmp_path):
    write_class_folders(tmp_path, classes=("a", "b"), per_class=2, size=12)
    rows = [["a/a_0.jpg", "a", "1"], ["a/a_1.png", "a", "0"], ["b/b_0.jpg", "b", "0"],
            ["b/b_1.png", "b", "0"]]
    good = _write_csv(tmp_path / "good.csv", ["filename", "class", "valid"], rows)
    with pytest.raises(ValueError, match=r"no column\(s\) \['label'\]; its columns are "
                                         r"\['filename', 'class', 'valid'\]"):
        load_image_table(good, y_col="label")
    with pytest.raises(ValueError, match="has no rows"):
        load_image_table(_write_csv(tmp_path / "empty.csv", ["filename", "class"], []))
    with pytest.raises(ValueError, match=r"a_0.jpg twice with different labels: \['a'\] and \['b'\]"):
        load_image_table(_write_csv(tmp_path / "dup.csv", ["filename", "class"],
                                    [["a/a_0.jpg", "a"], ["a/a_0.jpg", "b"]]))
    with pytest.raises(ValueError, match="valid_col='class' must be boolean.*'a'"):
        load_image_table(good, valid_col="class")
    with pytest.raises(ValueError, match="drop validation_split"):
        load_image_table(good, valid_col="valid", validation_split=0.2)
    only_b_trains = _write_csv(tmp_path / "unseen.csv", ["filename", "a", "b", "v"],
                               [["a/a_0.jpg", 1, 0, 1], ["b/b_0.jpg", 0, 1, 0]])
    with pytest.raises(ValueError, match=r"label\(s\) \['a'\] appear in no training row"):
        load_image_table(only_b_trains, y_col=["a", "b"], valid_col="v")
    assert load_image_table(good, valid_col="valid", image_size=8).counts["validation"] == \
        {"a": 1, "b": 0}


def test_a_table_of_one_class_is_refused_naming_the_data(tmp_path, capsys):
    write_class_folders(tmp_path, classes=("a",), per_class=4, size=12)
    one = _write_csv(tmp_path / "one.csv", ["filename", "class"],
                     [[f"a/a_{i}.{'jpg' if i % 2 == 0 else 'png'}", "a"] for i in range(4)])
    with tinycam_registered():
        code = main(["train", str(one), "--validation-split", "0.5", "--out",
                     str(tmp_path / "run"), *TINY])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "one.csv has 1 class(es) ['a']" in err


def _tag_images(root: Path, n: int = 24) -> list[tuple[str, tuple[str, ...]]]:
    """Images showing two of three colours (left and right halves), labelled with both."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        pair = (TAGS[i % 3], TAGS[(i + 1 + i // 3 % 2) % 3])
        image = np.zeros((24, 24, 3), np.uint8)
        for half, tag in enumerate(pair):
            image[:, half * 12:(half + 1) * 12, TAGS.index(tag)] = 220
        image = np.clip(image + rng.normal(0, 10, image.shape), 0, 255).astype(np.uint8)
        Image.fromarray(image).save(root / f"{i}.png")
        rows.append((f"{i}.png", pair))
    return rows


def test_label_delim_and_0_1_columns_give_the_same_multi_hot_batches(tmp_path):
    rows = _tag_images(tmp_path / "img", n=9)
    delim = _write_csv(tmp_path / "delim.csv", ["filename", "tags"],
                       [[f, " ".join(tags)] for f, tags in rows])
    columns = _write_csv(tmp_path / "cols.csv", ["filename", *sorted(TAGS)],
                         [[f, *[int(t in tags) for t in sorted(TAGS)]] for f, tags in rows])
    a = load_image_table(delim, tmp_path / "img", y_col="tags", label_delim=" ", image_size=8,
                         validation_split=0.3)
    b = load_image_table(columns, tmp_path / "img", y_col=sorted(TAGS), image_size=8,
                         validation_split=0.3)
    assert a.multi_label and a.class_names == b.class_names == sorted(TAGS)
    assert a.files == b.files and len(a.files["validation"]) == 3
    y = np.concatenate([labels for _, labels in _batches(a.validation)])
    assert y.dtype == np.float32 and y.shape == (3, 3) and (y.sum(axis=1) == 2).all()
    assert a.counts["train"] == {t: sum(t in tags for p, tags in rows if (tmp_path / "img" / p).as_posix()
                                        in {Path(q).as_posix() for q, _ in a.files["train"]})
                                 for t in sorted(TAGS)}


def test_thresholds_maximise_f1_and_metrics_match_their_definitions():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, (40, 3))
    p = np.clip(y * 0.4 + rng.random((40, 3)) * 0.6, 0, 1)

    def f1(t, c):
        pred = p[:, c] >= t
        tp = (pred & (y[:, c] == 1)).sum()
        return 2 * tp / max(pred.sum() + y[:, c].sum(), 1)

    own = choose_thresholds(y, p, prior_positives=0)
    for c in range(3):  # no threshold on a 0.001 grid beats a label's own
        assert f1(own[c], c) >= max(f1(t, c) for t in np.linspace(0, 1, 1001)) - 1e-12
        assert not np.isin(own[c], p[:, c])  # between two scores, never on one
    shared = best_f1_cut(y, p)
    grid = np.linspace(0, 1, 1001)
    micro = [2 * ((p >= t) & (y == 1)).sum() / ((p >= t).sum() + y.sum()) for t in grid]
    assert 2 * ((p >= shared) & (y == 1)).sum() / ((p >= shared).sum() + y.sum()) >= max(micro) - 1e-12
    n = y.sum(0)
    np.testing.assert_allclose(choose_thresholds(y, p), (n * np.array(own) + 20 * shared) / (n + 20),
                               atol=1e-6)
    y4, p4 = np.c_[y, np.zeros(40)], np.c_[p, p[:, :1]]  # a label with no positive: the shared one
    assert choose_thresholds(y4, p4)[3] == pytest.approx(best_f1_cut(y4, p4), abs=1e-6)
    assert best_f1_cut([1, 1, 1, 0, 0, 0], [0.9, 0.8, 0.7, 0.3, 0.2, 0.1]) == 0.5  # plateau middle
    chosen = choose_thresholds(y, p)
    assert average_precision([1, 0, 1, 0], [0.9, 0.8, 0.7, 0.1]) == pytest.approx((1 + 2 / 3) / 2)
    metrics = multilabel_metrics(y, p, ["a", "b", "c"], chosen)
    predicted = p >= np.array(chosen)
    tp = (predicted & (y == 1)).sum()
    assert metrics["micro_f1"] == pytest.approx(2 * tp / (predicted.sum() + y.sum()))
    assert metrics["macro_f1"] == pytest.approx(np.mean([metrics["per_label"][n]["f1"] for n in "abc"]))
    assert metrics["mAP"] == pytest.approx(np.mean([average_precision(y[:, c], p[:, c]) for c in range(3)]))


@pytest.mark.slow
def test_multi_label_table_trains_evaluates_exports_predicts_and_serves(tmp_path, capsys):
    tf = pytest.importorskip("tensorflow")
    rows = _tag_images(tmp_path / "img")
    table = _write_csv(tmp_path / "tags.csv", ["name", "tags", "is_valid"],
                       [[f.removesuffix(".png"), " ".join(tags), int(i % 4 == 0)]
                        for i, (f, tags) in enumerate(rows)])
    run = tmp_path / "run"
    with tinycam_registered():
        assert main(["train", str(table), "--images", str(tmp_path / "img"), "--x-col", "name",
                     "--y-col", "tags", "--label-delim", " ", "--valid-col", "is_valid",
                     "--head-epochs", "2", "--fine-tune-epochs", "0", "--head-lr", "0.01",
                     "--out", str(run), *TINY]) == 0
        import tfx_transfer as tt

        config = json.loads((run / "config.json").read_text())
        assert config["multi_label"] and config["label_delim"] == " " and config["x_col"] == "name"
        model = tt.load_model(run / "model.keras")
        thresholds = tt.transfer_config(model)["thresholds"]
        assert config["head"] == "spatial"  # the multi-label default
        assert model.get_layer("head").get_layer("predictions").activation == "sigmoid"
        data = load_image_table(table, tmp_path / "img", x_col="name", y_col="tags", label_delim=" ",
                                valid_col="is_valid", image_size=32, shuffle=False)
        x, y = map(np.concatenate, zip(*_batches(data.validation)))
        probs = model.predict(x, verbose=0)
        assert thresholds == pytest.approx(choose_thresholds(y, probs))  # chosen on validation
        metrics = json.loads((run / "metrics.json").read_text())
        expected = multilabel_metrics(y, probs, data.class_names, thresholds)
        assert metrics["mAP"] == pytest.approx(expected["mAP"], abs=1e-6)
        assert metrics["micro_f1"] == pytest.approx(expected["micro_f1"])
        assert "mAP" in (run / "report.txt").read_text() and (run / "per_label.png").is_file()
        assert not (run / "confusion_matrix.png").exists()
        with open(run / "top_losses.csv", newline="") as f:
            ranked = list(csv.DictReader(f))
        assert len(ranked) == len(x) * 3 and float(ranked[0]["loss"]) >= float(ranked[-1]["loss"])

        export = run / "export" / "1"
        meta = json.loads((export / "assets.extra" / "metadata.json").read_text())
        assert meta["multi_label"] and meta["thresholds"] == pytest.approx(thresholds)
        encoded = [(tmp_path / "img" / f).read_bytes() for f, _ in rows]
        served = tf.saved_model.load(str(export)).signatures["serving_default"]
        out = served(images=tf.constant(encoded))
        above = out["probabilities"].numpy() >= np.array(thresholds, np.float32)
        np.testing.assert_array_equal(out["above_threshold"].numpy(), above)
        assert (above != (out["probabilities"].numpy() >= 0.5)).any()  # the check can tell
        image, out, above = encoded[1], served(images=tf.constant(encoded[1:2])), above[1:2]
        capsys.readouterr()
        assert main(["predict", str(run / "export"), str(tmp_path / "img" / "1.png"), "--json"]) == 0
        row = json.loads(capsys.readouterr().out)
        assert [label["class"] for label in row["labels"]] == \
            [data.class_names[i] for i in np.argsort(-out["probabilities"].numpy()[0]) if above[0, i]]

        assert main(["evaluate", str(run), str(table), "--out", str(tmp_path / "ev")]) == 0
        assert "the is_valid rows" in capsys.readouterr().out
        assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["mAP"] == \
            pytest.approx(metrics["mAP"], abs=1e-6)
        # int8 TFLite of a CSV run: calibrated on the run's training rows, checked on its
        # validation rows, agreement and accuracy over the label sets (not the argmax)
        assert main(["export", str(run), str(tmp_path / "ex2"), "--tflite",
                     str(tmp_path / "m.tflite"), "--quantization", "int8", "--min-agreement", "0"]) == 0
        assert "label-set agreement" in capsys.readouterr().out
        report = json.loads((run / "exports.json").read_text())["m.tflite"]
        exact = np.mean(np.all((probs >= np.array(thresholds)) == (y >= 0.5), -1))
        assert report["images"] == "validation_data" and report["num_samples"] == len(x)
        assert report["calibration_images"] == len(data.files["train"])
        assert report["keras_accuracy"] == pytest.approx(exact, abs=1e-4)
        assert main(["explain", str(run), str(tmp_path / "img" / "1.png"), "--out",
                     str(tmp_path / "ex")]) == 0
        names = {p.name for p in (tmp_path / "ex").iterdir()}
        assert names - {"contact_sheet.png"} == \
            {f"1-{data.class_names[i]}.png" for i in np.flatnonzero(above[0])} or \
            (not above[0].any() and len(names) == 2)

    starlette = pytest.importorskip("starlette.testclient")
    from tfx_transfer.serving.app import ModelServer

    with starlette.TestClient(ModelServer(run / "export", "tags", poll_interval=0).app) as client:
        answer = client.post("/v1/models/tags:predict",
                             json={"instances": [{"b64": base64.b64encode(image).decode()}]})
        assert answer.json()["predictions"][0]["above_threshold"] == above[0].tolist()
        assert [label["class"] for label in answer.json()["predictions"][0]["labels"]] == \
            [label["class"] for label in row["labels"]]  # the same labels as `predict --json`
        assert "prediction.labels" in client.get("/").text


def test_train_reads_a_single_label_csv_as_the_folder(tmp_path):
    """train()'s data step on a CSV gives the folder's ImageFolder (the rest of train is shared)."""
    from tfx_transfer.runs.config import new_config
    from tfx_transfer.runs.job import train_defaults
    from tfx_transfer.runs.steps import load_data

    folder = write_class_folders(tmp_path / "photos", classes=("a", "b"), per_class=5, size=24)
    table = _write_csv(tmp_path / "labels.csv", ["filename", "class"],
                       [[p.relative_to(tmp_path).as_posix(), p.parent.name]
                        for p in sorted(folder.rglob("*.*"))])
    settings = {**train_defaults(), "backbone": "vgg16", "image_size": 16, "batch_size": 4,
                "validation_split": 0.4, "cache_images": "memory"}
    loaded = [load_data(new_config(data, settings), verbose=0) for data in (table, folder)]
    assert loaded[0].files == loaded[1].files and loaded[0].class_names == ["a", "b"]
    _assert_same_data(*loaded)
    from tfx_transfer.runs.extend import _old_validation
    # add-classes scores the old classes of a CSV run (its validation rows)

    config = {**new_config(table, settings), "class_names": ["a", "b"]}
    assert _old_validation(config, verbose=0) == loaded[1].files["validation"]
    # adapt's source images of a CSV run are its training rows, as for a folder run
    from tfx_transfer.adaptation.run import run_source

    labels = np.concatenate([np.asarray(y) for _, y in run_source(config)])
    assert sorted(labels.tolist()) == sorted(label for _, label in loaded[1].files["train"])
    assert run_source(new_config(folder, settings)) == str(folder)
    with pytest.raises(ValueError, match=r"x_col='file'.* read a table .* is not a file"):
        new_config(folder, {**settings, "x_col": "file"})


def test_multi_label_validation_split_is_stratified_on_each_rows_rarest_label():
    from tfx_transfer.data.table import _multi_label_split

    names = ["common", "rare", "once"]
    files = [(f"c{i}.png", (0,)) for i in range(40)]  # 40 rows of the common label only
    files += [(f"r{i}.png", (0, 1)) for i in range(10)]  # 10 rows with the rare label too
    files += [("o.png", (0, 2)), ("none.png", ())]
    for seed in range(5):
        train, val = _multi_label_split(files, 0.2, seed, names)
        assert sorted(train + val) == sorted(files)  # every row once, labels kept
        assert sum(1 in labels for _, labels in val) == 2  # 20% of the rare label's 10 rows
        assert sum(labels == (0,) for _, labels in val) == 8  # 20% of the 40 common-only rows
        assert ("o.png", (0, 2)) in train and ("none.png", ()) in train  # single rows: train
    train, val = _multi_label_split(files, 0.2, 1337, names)
    assert _multi_label_split(files, 0.2, 1337, names) == (train, val)  # seeded
    assert _multi_label_split(files, 0.2, 7, names) != (train, val)


@pytest.mark.slow
def test_a_csv_run_names_its_validation_rows_not_a_val_folder(tmp_path, capsys):
    """Calibration, report and messages of a CSV run say which rows validated it: the table
    has no val/ folder."""
    folder = write_class_folders(tmp_path / "photos", classes=("a", "b"), per_class=6, size=32)
    rows = [[p.relative_to(tmp_path).as_posix(), p.parent.name, i % 3 == 0]
            for i, p in enumerate(sorted(folder.rglob("*.*")))]
    table = _write_csv(tmp_path / "labels.csv", ["filename", "class", "is_valid"], rows)
    run = tmp_path / "run"
    with tinycam_registered():
        assert main(["train", str(table), "--valid-col", "is_valid", "--head-epochs", "1",
                     "--fine-tune-epochs", "0", "--out", str(run), *TINY[:-2], "--verbose", "1"]) == 0
    out = capsys.readouterr().out
    calibration = json.loads((run / "calibration.json").read_text())
    assert calibration["fitted_on"] == "the is_valid rows of labels.csv (4 images)"
    assert calibration["measured_on"].startswith("the is_valid rows of labels.csv (4 images)")
    assert "accepts 95% of the is_valid rows of labels.csv" in (run / "report.txt").read_text()
    assert "validation (the is_valid rows of labels.csv):" in out
    assert "val/" not in out + (run / "report.txt").read_text() + json.dumps(calibration)


def test_a_test_table_whose_valid_col_marks_no_row_is_scored_whole(tmp_path):
    """A test CSV carrying the run's valid_col, all 0 (the usual shape of a held-out table),
    is scored row by row, and says so; the run's own table still is not (its split rules)."""
    from tfx_transfer.data.labelled import labelled_batches
    from tfx_transfer.data.table import NoValidationRowsError, TableSpec

    rows = _tag_images(tmp_path / "img", n=6)
    test = _write_csv(tmp_path / "test.csv", ["filename", "tags", "is_valid"],
                      [[f"img/{f}", " ".join(tags), 0] for f, tags in rows])
    spec = TableSpec(test, y_col="tags", label_delim=" ", valid_col="is_valid")
    scored = labelled_batches(spec, (32, 32), caller="evaluate_model")
    assert len(scored.paths) == 6 and "every row (its is_valid column marks none)" in scored.description
    labels = np.concatenate([y for _, y in scored.batches])
    assert labels.shape == (6, 3) and labels.sum() == 12  # two tags per image, every row
    with pytest.raises(NoValidationRowsError, match="no validation rows"):
        load_image_table(test, y_col="tags", label_delim=" ", valid_col="is_valid")
