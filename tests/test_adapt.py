"""Unsupervised domain adaptation (tfx_transfer.adaptation) on small generated images."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.tiny_backbone import tinybnrelu_registered
from tfx_transfer.defaults import DEFAULT_SEED
from tfx_transfer.models.transfer_model import get_backbone_model

SIZE = 32
CLASSES = ([200.0, 60.0, 60.0], [60.0, 60.0, 200.0])  # red-ish vs blue-ish scenes


def _domain(n_per_class: int, seed: int, shifted: bool = False):
    """Two classes told apart by colour; ``shifted``: the same kind of scenes, cast and dimmed."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for label, tint in enumerate(CLASSES):
        for _ in range(n_per_class):
            img = np.asarray(tint) + rng.normal(0.0, 20.0, 3) + rng.normal(0.0, 3.0, (SIZE, SIZE, 3))
            if shifted:
                img = 0.5 * img + np.array([100.0, 30.0, 0.0])  # everything looks red
            images.append(np.clip(img, 0, 255))
            labels.append(label)
    return np.stack(images).astype("uint8"), np.array(labels, "int32")


def _accuracy(model, x, y) -> float:
    return float((model.predict(x, verbose=0).argmax(axis=1) == y).mean())


def _weights(model) -> list[tuple[str, np.ndarray]]:
    """(name, value) of every weight, in order (a copy's paths may be renamed, its order is not)."""
    return [(w.path, np.array(w.numpy())) for w in model.weights]


@pytest.fixture(scope="module")
def backbone():
    """A tiny conv + BatchNorm + ReLU backbone (random init): adaptation is plumbing on the
    backbone's BatchNorm layers, whichever backbone it is (tests/test_batchnorm.py finds them
    in real keras.applications networks)."""
    with tinybnrelu_registered() as name:
        yield name


@pytest.fixture(scope="module")
def trained(backbone):
    """The backbone (random init) whose BatchNorm holds source statistics, head fit on the
    source. Its random features keep the colour, so the source model is right on new source
    images."""
    import keras

    import tfx_transfer as tt
    from tfx_transfer.models.batchnorm import recompute_batchnorm
    from tfx_transfer.models.transfer_model import get_backbone_model, get_head

    keras.utils.set_random_seed(0)
    x, y = _domain(24, seed=0)
    model = tt.build_transfer_model(backbone, 2, input_shape=SIZE, weights=None,
                                    head="avg", dropout=0.0)
    recompute_batchnorm(model, [x])  # the model's statistics are the source's (AdaBN's setting)
    features = get_backbone_model(model)(model.get_layer("preprocess")(x))
    head = get_head(model)
    head.compile(optimizer=keras.optimizers.Adam(1e-2), loss="sparse_categorical_crossentropy")
    head.fit(features, y, epochs=10, batch_size=16, verbose=0)  # accuracies as with 30 epochs from 8 on
    return model, (x, y)


@pytest.fixture(scope="module")
def small(backbone):
    """A small transfer model (random init, statistics of its source images)."""
    import keras

    import tfx_transfer as tt
    from tfx_transfer.models.batchnorm import recompute_batchnorm

    keras.utils.set_random_seed(0)
    model = tt.build_transfer_model(backbone, 2, input_shape=SIZE, weights=None, head="avg")
    x, y = _domain(8, seed=0)
    recompute_batchnorm(model, [x])
    return model, (x, y)


def test_adabn_recovers_accuracy_on_a_colour_shifted_target(trained):
    from tfx_transfer.adaptation.adapt import adapt

    model, (xs, ys) = trained
    xt_train, _ = _domain(24, seed=20, shifted=True)
    xt_val, yt_val = _domain(24, seed=10, shifted=True)
    source_val = _accuracy(model, *_domain(24, seed=10))
    before = _accuracy(model, xt_val, yt_val)
    with pytest.warns(UserWarning, match="without source="):  # plain AdaBN: said so
        adapted = adapt(model, xt_train)  # method "default"; target labels are not even given
    after = _accuracy(adapted, xt_val, yt_val)
    assert source_val >= 0.9, source_val
    assert before <= 0.6, before  # the shift hurts
    assert after >= before + 0.25 and after >= 0.85, (before, after)
    assert adapted._tfx_adaptation["method"] == "adabn"  # what "default" is


@pytest.mark.filterwarnings("ignore:adapt\\(method='adabn'\\) without source")
def test_adabn_changes_only_batchnorm_statistics(small):
    from tfx_transfer.adaptation.adapt import adapt

    model, _ = small
    before = _weights(model)
    adapted = adapt(model, _domain(8, seed=3, shifted=True)[0], "adabn")
    after = _weights(adapted)
    assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(before, _weights(model)))  # a copy
    assert len(after) == len(before)
    changed = {name for (name, a), (_, b) in zip(before, after) if not np.allclose(a, b)}
    assert changed and all(k.endswith(("moving_mean", "moving_variance")) for k in changed)
    assert {name for name, _ in before if name.endswith("moving_mean")} <= changed
    # trainable flags and structure are the input model's
    assert [l.name for l in adapted.layers] == [l.name for l in model.layers]
    assert not any(l.trainable for l in get_backbone_model(adapted).layers
                   if "BN" in l.name or "bn" in l.name)


def test_source_relative_adabn_on_the_source_itself_changes_nothing(trained):
    """With reference images equal to the target, the adapted model predicts as before."""
    from tfx_transfer.adaptation.adapt import copy_model
    from tfx_transfer.models.batchnorm import recompute_batchnorm

    model, (xs, _) = trained
    probe = _domain(6, seed=4)[0]
    copy = copy_model(model)
    bn = get_backbone_model(copy).get_layer("b1_bn")
    bn.moving_mean.assign(bn.moving_mean + 0.3)  # statistics that are not the source's
    expected = copy.predict(probe, verbose=0)
    recompute_batchnorm(copy, [xs], reference=[xs])
    np.testing.assert_allclose(copy.predict(probe, verbose=0), expected, atol=2e-3)


def test_adabn_refuses_a_backbone_without_batchnorm(tinycam):
    import tfx_transfer as tt
    from tfx_transfer.adaptation.adapt import adapt

    model = tt.build_transfer_model(tinycam, 2, input_shape=SIZE, weights=None, head="avg")
    with pytest.raises(ValueError, match="no BatchNormalization.*method='coral'"):
        adapt(model, _domain(2, seed=0)[0], "adabn")


def test_bad_arguments_name_the_fix(small):
    from tfx_transfer.adaptation.adapt import adapt

    model, (xs, _) = small
    with pytest.raises(ValueError, match="method='mmd'"):
        adapt(model, xs, "mmd")
    with pytest.raises(ValueError, match="pass source="):
        adapt(model, xs, "coral")
    with pytest.raises(ValueError, match="64x64.*32x32"):
        adapt(model, np.zeros((2, 64, 64, 3), "uint8"), "adabn")


@pytest.mark.filterwarnings("ignore:adapt\\(method='adabn'\\) without source")
def test_target_folders_labels_are_never_read(small, tmp_path):
    """A flat folder works; so does one whose class folders mean nothing to the model."""
    from PIL import Image

    from tfx_transfer.adaptation.adapt import adapt
    from tfx_transfer.adaptation.targets import image_files

    model, _ = small
    xt, _ = _domain(4, seed=5, shifted=True)
    flat, named = tmp_path / "flat", tmp_path / "named"
    for i, img in enumerate(xt):
        flat.mkdir(exist_ok=True)
        Image.fromarray(img).save(flat / f"{i}.png")
        (named / f"unknown_{i % 3}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(named / f"unknown_{i % 3}" / f"{i}.png")
    (flat / "notes.txt").write_text("not an image")
    assert len(image_files(flat)) == len(xt)
    a = adapt(model, flat, "adabn", batch_size=len(xt))
    b = adapt(model, named, "adabn", batch_size=len(xt))
    np.testing.assert_allclose(a.predict(xt, verbose=0), b.predict(xt, verbose=0), atol=1e-3)


@pytest.mark.filterwarnings("ignore:adapt\\(method='adabn'\\) without source")
def test_a_tiff_target_image_is_adapted(small, tmp_path):
    """TIFF is a target format like any other: .tif/.tiff files are found, decoded and used."""
    from PIL import Image

    from tfx_transfer.adaptation.adapt import adapt
    from tfx_transfer.adaptation.targets import image_files
    from tfx_transfer.models.batchnorm import batchnorm_layers

    model, _ = small
    xt, _ = _domain(3, seed=9, shifted=True)  # 6 images
    png, mixed = tmp_path / "png", tmp_path / "mixed"
    for folder in (png, mixed):
        folder.mkdir()
        for i, img in enumerate(xt[:4]):
            Image.fromarray(img).save(folder / f"{i}.png")
    Image.fromarray(xt[4]).save(mixed / "4.tif")
    Image.fromarray(xt[5]).save(mixed / "5.tiff")
    assert [p.rsplit(".", 1)[1] for p in image_files(mixed)] == ["png"] * 4 + ["tif", "tiff"]

    def first_mean(adapted):
        return batchnorm_layers(get_backbone_model(adapted))[0].moving_mean.numpy()

    only_png = adapt(model, png, "adabn", batch_size=8)
    with_tiff = adapt(model, mixed, "adabn", batch_size=8)
    from_pixels = adapt(model, xt, "adabn", batch_size=8)  # the same 6 images as an array
    assert only_png._tfx_adaptation["target_images"] == 4
    assert with_tiff._tfx_adaptation["target_images"] == 6
    # the TIFF pixels reached the statistics: the same as adapting on the decoded arrays
    np.testing.assert_allclose(first_mean(with_tiff), first_mean(from_pixels), rtol=1e-4, atol=1e-5)
    assert np.abs(first_mean(with_tiff) - first_mean(only_png)).max() > 1e-3


def test_coral_is_one_fit_with_callbacks_and_returns_the_same_classifier(small):
    import keras
    import tensorflow as tf

    from tfx_transfer.adaptation.adapt import adapt
    from tfx_transfer.adaptation.coral import build_alignment_model, coral_loss

    model, (xs, ys) = small
    x = np.random.default_rng(0).normal(size=(16, 8)).astype("float32")
    assert float(coral_loss(x, x)) == 0.0 and float(coral_loss(x, 3 * x)) > 0.0
    aligner = build_alignment_model(model, loss_weight=1.0)
    aligner({"source": xs[:8], "target": _domain(4, seed=6, shifted=True)[0]})
    assert len(aligner.losses) == 1 and float(aligner.losses[0]) > 0.0

    class Count(keras.callbacks.Callback):
        epochs = 0

        def on_epoch_end(self, epoch, logs=None):
            Count.epochs += 1
            assert "loss" in logs

    source = tf.data.Dataset.from_tensor_slices((xs, ys)).shuffle(64, seed=0).batch(8)
    xt, _ = _domain(8, seed=7, shifted=True)
    before = _weights(model)
    adapted = adapt(model, xt, "coral", source, epochs=2, batch_size=8, callbacks=[Count()])
    assert Count.epochs == 2
    assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(before, _weights(model)))
    assert [l.name for l in adapted.layers] == [l.name for l in model.layers]
    assert adapted.output.shape == model.output.shape
    trained_weights = {name for (name, a), (_, b) in zip(before, _weights(adapted))
                       if not np.array_equal(a, b)}
    assert any("predictions" in name for name in trained_weights)  # the head trained
    assert not any(name.endswith(("moving_mean", "moving_variance")) for name in trained_weights)
    assert not get_backbone_model(adapted).trainable_weights  # frozen again, as given


@pytest.mark.filterwarnings("ignore:adapt\\(method='adabn'\\) without source")
def test_cli_adapt_writes_a_run_folder(small, tmp_path):
    from PIL import Image

    from tfx_transfer.cli import main

    model, _ = small
    run = tmp_path / "run"
    run.mkdir()
    model.save(run / "model.keras")
    (run / "config.json").write_text(json.dumps({
        "class_names": ["red", "blue"], "image_size": [SIZE, SIZE], "data_dir": None}))
    target = tmp_path / "target"
    xt, yt = _domain(6, seed=8, shifted=True)
    for i, (img, label) in enumerate(zip(xt, yt)):
        folder = target / ["red", "blue"][label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(folder / f"{i}.png")
    out = tmp_path / "adapted"
    assert main(["adapt", str(run), str(target), "--out", str(out), "--method", "adabn",
                 "--loss-weight", "3", "--verbose", "0"]) == 0
    report = json.loads((out / "adaptation.json").read_text())
    assert report["method"] == "adabn" and report["target_images_used"] == len(xt)
    # every setting recorded, the flags given and adapt()'s defaults for the others
    assert report["settings"]["loss_weight"] == 3.0 and report["settings"]["verbose"] == 0
    assert report["settings"]["seed"] == DEFAULT_SEED and report["settings"]["epochs"] == 10
    assert "only to score" in report["target_labels"]
    assert report["scores"]["after"]["num_samples"] == len(xt)
    assert "their labels were used only for this score" in (out / "adaptation.txt").read_text()
    assert (out / "model.keras").is_file() and (out / "export" / "1" / "saved_model.pb").is_file()
    assert json.loads((out / "config.json").read_text())["adaptation"]["method"] == "adabn"
    assert main(["adapt", str(run), str(target), "--out", str(out)]) == 2  # never overwrites
