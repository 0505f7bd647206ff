"""The mislabeled-image finder (tfx_transfer.evaluation.mislabeled): ranking, inputs, files."""

import csv

import keras
import numpy as np
import pytest

import tfx_transfer as tt
from tests.helpers import tiny_pixels, write_class_folders
from tfx_transfer.evaluation.mislabeled import plot_top_losses, write_top_losses


def _model(num_classes=2, trainable=False):
    keras.utils.set_random_seed(0)
    model = tt.build_transfer_model("tinycam", num_classes, input_shape=(32, 32, 3),
                                    weights=None, head="avg", dropout=0.0)
    tt.get_backbone_model(model).trainable = trainable
    return model


def test_rows_are_the_worst_losses_in_order_with_true_and_predicted(tinycam):
    model = _model(3)
    x, y = tiny_pixels(10, 32, seed=1), np.arange(10) % 3
    probs = model.predict(x, verbose=0)
    expected = -np.log(probs[np.arange(10), y])
    rows = tt.top_losses(model, (x, y), k=4, class_names=["a", "b", "c"], batch_size=3)
    assert [row["index"] for row in rows] == np.argsort(-expected, kind="stable")[:4].tolist()
    for row in rows:
        i = row["index"]
        np.testing.assert_allclose(row["loss"], expected[i], rtol=1e-4)
        assert row["true_class"] == "abc"[y[i]] and row["predicted_class"] == "abc"[probs[i].argmax()]
        np.testing.assert_allclose(row["probability"], probs[i].max(), rtol=1e-4)
        np.testing.assert_array_equal(row["image"], x[i])
    # one-hot labels and a tf.data dataset give the same ranking
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((x, np.eye(3)[y])).batch(4)
    assert [r["index"] for r in tt.top_losses(model, ds, k=4)] == [r["index"] for r in rows]
    assert [r["rank"] for r in tt.top_losses(model, (x, y), k=None)] == list(range(1, 11))


def test_a_mislabeled_image_comes_first(tinycam):
    """Two colours, learnt; one red image labelled 'green' is the top loss, confidently wrong."""
    rng = np.random.default_rng(0)
    x = np.zeros((24, 32, 32, 3), np.uint8)
    y = np.arange(24) % 2
    x[y == 0, ..., 0], x[y == 1, ..., 1] = 220, 220
    x = np.clip(x + rng.integers(0, 30, x.shape), 0, 255).astype(np.uint8)
    model = _model(trainable=True)
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy")
    model.fit(x, y, epochs=12, verbose=0)  # p(red) of image 6: 0.92 at epoch 9, 0.99 at 12
    noisy = y.copy()
    noisy[6] = 1  # a red image labelled green
    rows = tt.top_losses(model, (x, noisy), k=3, class_names=["red", "green"])
    assert rows[0]["index"] == 6
    assert rows[0]["true_class"] == "green" and rows[0]["predicted_class"] == "red"
    assert rows[0]["probability"] > 0.9 and rows[0]["loss"] > 2 * rows[1]["loss"]


def test_folder_input_gives_paths_and_files_are_written(tinycam, tmp_path):
    root = write_class_folders(tmp_path / "data", classes=("cats", "dogs"), per_class=3, size=40)
    model = _model()
    rows = tt.top_losses(model, root, k=2, class_names=["cats", "dogs"])
    assert len(rows) == 2 and all(row["path"].startswith(str(root)) for row in rows)
    assert all(row["true_class"] in row["path"] for row in rows)  # labels match the folder names

    files = write_top_losses(model, root, tmp_path / "out", k=4, class_names=["cats", "dogs"])
    with open(files["top_losses_csv"], newline="") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 6 and list(table[0]) == ["rank", "index", "path", "true_class",
                                                  "predicted_class", "probability", "p_true", "loss"]
    losses = [float(row["loss"]) for row in table]
    assert losses == sorted(losses, reverse=True)
    from PIL import Image

    assert Image.open(files["top_losses_png"]).size[0] > 300  # a real figure


def test_errors_and_plot_without_a_keras_model(tinycam, tmp_path):
    model = _model()
    x = tiny_pixels(4, 32)
    with pytest.raises(ValueError, match="k=0 must be an int >= 1"):
        tt.top_losses(model, (x, np.zeros(4, int)), k=0)
    with pytest.raises(ValueError, match=r"Label 5 is outside 0\.\.1"):
        tt.top_losses(model, (x, np.array([0, 1, 5, 0])))
    with pytest.raises(ValueError, match="3 paths for 4 images"):
        tt.top_losses(model, (x, np.zeros(4, int)), paths=["a", "b", "c"])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        tt.top_losses(model, tmp_path / "missing")
    # any function images -> probabilities works; its plot has no heatmaps
    rows = tt.top_losses(lambda images: np.full((len(images), 2), 0.5), (x, np.zeros(4, int)), k=2)
    assert rows[0]["loss"] == pytest.approx(np.log(2))
    plot_top_losses(rows, None, tmp_path / "plain.png")
    assert (tmp_path / "plain.png").stat().st_size > 1000


def _split_folder(root, splits=("train",)):
    for split in splits:
        write_class_folders(root / split, classes=("cats", "dogs"), per_class=3, size=40,
                            seed=len(split))
    return root


def test_top_losses_follows_evaluates_rule_on_training_images(tinycam, tmp_path):
    """A folder with only train/ is refused by both, with the same error; the train/ folder itself works."""
    root = _split_folder(tmp_path / "data")
    model = _model()
    names = ["cats", "dogs"]
    with pytest.raises(ValueError) as refused_by_evaluate:
        tt.evaluate_model(model, root, names, verbose=False)
    with pytest.raises(ValueError) as refused_by_top_losses:
        tt.top_losses(model, root, class_names=names)
    assert str(refused_by_top_losses.value) == str(refused_by_evaluate.value)
    assert "only a train/ split" in str(refused_by_evaluate.value)
    assert "train/ folder itself" in str(refused_by_evaluate.value)

    metrics = tt.evaluate_model(model, root / "train", names, verbose=False)
    rows = tt.top_losses(model, root / "train", k=None, class_names=names)
    assert metrics["num_samples"] == len(rows) == 6
    assert sorted(row["path"] for row in rows) == sorted(str(p) for p in (root / "train").rglob("*.*"))
    assert len(tt.top_losses(model, root, k=None, class_names=names, split="train")) == 6


def test_an_image_folder_is_scored_on_its_validation_split(tinycam, tmp_path):
    """README's ``tt.top_losses(model, data, k=16)`` with ``data`` an ImageFolder."""
    root = write_class_folders(tmp_path / "data", classes=("cats", "dogs"), per_class=8, size=40)
    data = tt.load_image_folder(root, image_size=32, validation_split=0.25, augmentation="light")
    model = _model()
    rows = tt.top_losses(model, data, k=16)
    validation = data.files["validation"]
    assert len(rows) == len(validation) == 4
    assert sorted(row["path"] for row in rows) == sorted(path for path, _ in validation)
    truth = dict(validation)
    assert all(row["true"] == truth[row["path"]] for row in rows)
    # the same pixels as the folder's own validation dataset, hence the same losses
    images = np.concatenate([x for x, _ in data.validation.as_numpy_iterator()])
    probs = model.predict(images, verbose=0)
    expected = {path: -np.log(probs[i, label]) for i, (path, label) in enumerate(validation)}
    for row in rows:
        np.testing.assert_allclose(row["loss"], expected[row["path"]], rtol=1e-4)
    assert tt.evaluate_model(model, data, verbose=False)["num_samples"] == 4

    train_only = tt.load_image_folder(root, image_size=48)  # no validation split: training images
    with pytest.raises(ValueError, match="only a train/ split"):
        tt.top_losses(model, train_only)
    with pytest.raises(ValueError, match="only a train/ split"):
        tt.evaluate_model(model, train_only, ["cats", "dogs"], verbose=False)
    rows = tt.top_losses(model, train_only, k=None, split="train")  # read at the model's 32 px
    assert len(rows) == 16 and rows[0]["image"].shape == (32, 32, 3)
