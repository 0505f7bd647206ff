"""pretrain(): from-scratch training on a source folder, weights reloadable bit-identically."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest

from tests.helpers import tiny_pixels, write_class_folders
from tfx_transfer.models.transfer_model import build_transfer_model, get_backbone_model, get_head
from tfx_transfer.training.pretraining import output_paths, pretrain, read_pretrain_info
from tfx_transfer.training.scratch import (
    build_scratch_model,
    recalibrate_batchnorm,
    scratch_optimizer,
)


class KeepModel(keras.callbacks.Callback):
    """Remembers the model being trained (to compare with what was saved)."""

    def on_train_end(self, logs=None):
        self.trained = self.model


@pytest.fixture(scope="module")
def resumed_pretraining(tmp_path_factory):
    """One tiny pretraining run (tinybn: conv + BatchNorm, as a real backbone; 2 epochs,
    validation and augmentation), interrupted after its first epoch and run again with the
    same arguments: it resumes. Shared by the resume test and the bit-identical test."""
    from tests.tiny_backbone import tiny_bn_backbone
    from tfx_transfer.models import backbones
    from tfx_transfer.models.backbones import BackboneSpec, register_backbone

    register_backbone(BackboneSpec("tinybn", tiny_bn_backbone, "tf", 32, 8,
                                   blocks=(("low", "^low_"), ("top", "^top_"))), overwrite=True)
    tmp_path = tmp_path_factory.mktemp("pretrain")
    source = write_class_folders(tmp_path / "src", classes=("a", "b", "c"), per_class=4, size=36)
    out, backup = tmp_path / "out", tmp_path / "out" / ".backup"
    kwargs = dict(image_size=32, epochs=2, batch_size=4, validation_split=0.25,
                  augmentation="light", backup_dir=backup, verbose=0)
    try:
        with pytest.raises(RuntimeError, match="simulated"):
            pretrain(source, "tinybn", out, callbacks=[StopAfterFirstEpoch()], **kwargs)
        interrupted = {"backup": backup.is_dir(), "outputs": sorted(
            p.name for p in [*out.glob("*.weights.h5"), *out.glob("*.json")])}
        keep = KeepModel()
        path = pretrain(source, "tinybn", out, callbacks=[keep], **kwargs)
        yield dict(path=path, out=out, backup=backup, interrupted=interrupted, keep=keep)
    finally:
        backbones._REGISTRY.pop("tinybn", None)


@pytest.mark.slow  # the shared pretraining run (interrupted and resumed)
def test_pretrain_writes_weights_that_transfer_loads_bit_identical(resumed_pretraining, tinybn):
    path, out, keep = (resumed_pretraining[k] for k in ("path", "out", "keep"))
    assert path == out / "tinybn.weights.h5" and path.is_file()

    trained = get_backbone_model(keep.trained)
    fresh = build_scratch_model(tinybn, 3, input_shape=32)
    # training changed the backbone, BatchNorm moving statistics included
    moved = [v.path for v, f in zip(trained.weights, get_backbone_model(fresh).weights)
             if not np.array_equal(v.numpy(), f.numpy())]
    assert any("moving_mean" in p for p in moved) and any("kernel" in p for p in moved)

    model = build_transfer_model(tinybn, 2, input_shape=(32, 32, 3), weights=path,
                                 head="avg")
    loaded = get_backbone_model(model)
    assert len(loaded.weights) == len(trained.weights)
    for got, want in zip(loaded.weights, trained.weights):
        assert got.path == want.path
        np.testing.assert_array_equal(got.numpy(), want.numpy())

    info = read_pretrain_info(path)
    assert info["backbone"] == tinybn and info["image_size"] == [32, 32]
    assert info["class_names"] == ["a", "b", "c"] and info["recipe"]["epochs"] == 2
    assert info["counts"] == {"train": 9, "validation": 3}
    assert {"loss", "accuracy", "val_accuracy", "final_val_accuracy"} <= set(info["metrics"])
    assert info["versions"]["tfx_transfer"]
    assert json.loads((out / "tinybn.json").read_text()) == info

    head = get_head(build_scratch_model(tinybn, 3, input_shape=32))
    head.load_weights(out / "tinybn.head.weights.h5")
    for got, want in zip(head.weights, get_head(keep.trained).weights):
        np.testing.assert_array_equal(got.numpy(), want.numpy())


def test_scratch_model_trains_its_batchnorm(tinybn):
    """tinybn (conv + BatchNorm, two blocks): the scratch model's wiring, whatever backbone
    (tests/test_batchnorm.py finds the BatchNorm layers of real keras.applications networks)."""
    x = tiny_pixels(4, 32)
    scratch = build_scratch_model(tinybn, 2, input_shape=32)
    base = get_backbone_model(scratch)
    assert base.trainable and base.trainable_weights
    bn = base.get_layer("low_bn")
    before = bn.moving_mean.numpy().copy()
    scratch(x, training=False)
    np.testing.assert_array_equal(bn.moving_mean.numpy(), before)
    scratch(x, training=True)  # as inside fit: batch statistics, moving averages updated
    assert not np.allclose(bn.moving_mean.numpy(), before)
    transfer = build_transfer_model(tinybn, 2, input_shape=(32, 32, 3), weights=None)
    frozen_bn = get_backbone_model(transfer).get_layer("low_bn")
    transfer(x, training=True)  # the transfer model pins its backbone to inference mode
    np.testing.assert_array_equal(frozen_bn.moving_mean.numpy(), 0.0)
    assert bn.momentum == 0.9  # short runs: moving averages must keep up
    assert frozen_bn.momentum == 0.99  # the backbone's own (Keras's default)
    keep = build_scratch_model(tinybn, 2, input_shape=32, bn_momentum=None)
    assert get_backbone_model(keep).get_layer("low_bn").momentum == 0.99  # kept


def test_recalibrate_batchnorm_sets_the_average_batch_statistics(tinybn):
    model = build_scratch_model(tinybn, 2, input_shape=32)
    base = get_backbone_model(model)
    batches = [tiny_pixels(4, 32, seed=s) for s in (1, 2)]
    bn = base.get_layer("low_bn")
    conv = keras.Model(base.input, base.get_layer("low_conv").output)
    pre = model.get_layer("preprocess")
    stats = [np.asarray(conv(pre(x))) for x in batches]
    assert recalibrate_batchnorm(model, [(x, None) for x in batches] * 3, max_batches=2) == 2
    np.testing.assert_allclose(bn.moving_mean.numpy(),
                               np.mean([s.mean((0, 1, 2)) for s in stats], 0), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(bn.moving_variance.numpy(),
                               np.mean([s.var((0, 1, 2)) for s in stats], 0), rtol=1e-3, atol=1e-6)
    assert bn.momentum == 0.9  # restored
    with pytest.raises(ValueError, match="no batch"):
        recalibrate_batchnorm(model, [])


def test_scratch_optimizer_warms_up_then_decays():
    opt = scratch_optimizer(100, lr=1e-3, warmup=0.1)
    values = []
    for step in (0, 5, 10, 55, 100):
        opt.iterations.assign(step)
        values.append(float(opt.learning_rate))
    assert values[0] == 0.0 and values[1] == pytest.approx(5e-4)
    assert values[2] == pytest.approx(1e-3) and values[3] == pytest.approx(5e-4, rel=1e-3)
    assert values[4] == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError, match="total_steps"):
        scratch_optimizer(0)


def test_output_paths_and_errors(tmp_path):
    assert output_paths(tmp_path / "x.weights.h5", "vgg16")["head"] == tmp_path / "x.head.weights.h5"
    assert output_paths(tmp_path, "VGG-16")["weights"] == tmp_path / "vgg16.weights.h5"
    with pytest.raises(ValueError, match=r"\.weights\.h5"):
        output_paths(tmp_path / "model.h5", "vgg16")
    with pytest.raises(FileNotFoundError, match="pretrain"):
        read_pretrain_info(tmp_path / "missing.weights.h5")
    with pytest.raises(ValueError, match="epochs"):
        pretrain(tmp_path, "vgg16", tmp_path / "o", epochs=0)


def test_cli_pretrain_flags_and_a_clear_error(tmp_path, capsys):
    from tfx_transfer.cli import build_parser, main

    args = build_parser().parse_args(["pretrain", "src", "--backbone", "vgg16", "--out", "o",
                                      "--image-size", "64", "--epochs", "3"])
    assert (args.backbone, args.image_size, args.epochs, args.augmentation) == ("vgg16", 64, 3, "standard")
    assert main(["pretrain", str(tmp_path / "missing"), "--backbone", "vgg16",
                 "--out", str(tmp_path / "o")]) == 2
    assert "missing" in capsys.readouterr().err
    assert build_parser().parse_args(["pretrain", "s", "--backbone", "vgg16", "--out", "o",
                                      "--resume"]).resume


class StopAfterFirstEpoch(keras.callbacks.Callback):
    """Simulates a crash after the first epoch (after BackupAndRestore has saved it)."""

    def on_epoch_end(self, epoch, logs=None):
        raise RuntimeError("simulated interruption")


@pytest.mark.slow  # the shared pretraining run (interrupted and resumed)
def test_interrupted_pretraining_resumes_and_leaves_no_partial_files(resumed_pretraining):
    out, backup, path = (resumed_pretraining[k] for k in ("out", "backup", "path"))
    # the interrupted run left its backup and no weights or description
    assert resumed_pretraining["interrupted"] == {"backup": True, "outputs": []}

    info = read_pretrain_info(path)
    assert info["recipe"]["epochs_run"] == 1  # continued at epoch 2 of 2
    assert not backup.exists()  # Keras removes the backup when training completes
    assert sorted(p.name for p in out.iterdir()) == [
        "tinybn.head.weights.h5", "tinybn.json", "tinybn.weights.h5"]


def test_failed_write_keeps_the_previous_file(tmp_path):
    from tfx_transfer.training.pretraining import _write_atomic

    target = tmp_path / "x.weights.h5"
    target.write_text("previous")

    def crash(tmp):
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        _write_atomic(target, crash)
    assert target.read_text() == "previous" and [p.name for p in tmp_path.iterdir()] == ["x.weights.h5"]
