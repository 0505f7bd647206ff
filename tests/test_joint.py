"""Joint training: L_target + loss_weight * L_source on a shared backbone; the target model exports alone.

The backbone is tests/tiny_backbone.py's "tinycam" (three convolutions in blocks b1..b3): joint
training is plumbing around whichever backbone it is given, and each fit traces a new train step
(its cost grows with the layers).
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

import tfx_transfer as tt
from tests.helpers import tiny_pixels, write_class_folders
from tests.tiny_backbone import tinycam_registered
from tfx_transfer.data.folder import load_image_folder
from tfx_transfer.models.freezing import unfreeze
from tfx_transfer.models.joint import SOURCE_HEAD_NAME, build_joint_model, fit_joint
from tfx_transfer.models.transfer_model import build_transfer_model, get_backbone_model, get_head


def _snapshot(layer):
    return [np.array(w.numpy()) for w in layer.weights]


def _changed(before, layer):
    return any(not np.array_equal(b, w.numpy()) for b, w in zip(before, layer.weights))


@pytest.fixture(scope="module", autouse=True)
def backbone():
    with tinycam_registered() as name:
        yield name


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("joint")
    target = load_image_folder(write_class_folders(root / "target", ("cat", "dog"), per_class=3,
                                                   size=36), image_size=32, batch_size=4)
    source = load_image_folder(write_class_folders(root / "source", ("a", "b", "c"), per_class=4,
                                                   size=36, seed=1),
                               image_size=32, batch_size=4, label_mode="categorical")
    return target, source


def _target_model():
    keras.utils.set_random_seed(0)
    model = build_transfer_model("tinycam", 2, input_shape=(32, 32, 3), weights=None, head="avg")
    unfreeze(model, "b3")
    return model


def _saved_source_head(model, tmp_path):
    """A source head saved as pretrain() would, and its weights as loaded by build_joint_model."""
    head_file = tmp_path / "src.head.weights.h5"
    build_joint_model(model, 3).get_layer(SOURCE_HEAD_NAME).save_weights(head_file)
    loaded = build_joint_model(model, 3, source_head_weights=head_file).get_layer(SOURCE_HEAD_NAME)
    return head_file, _snapshot(loaded)


def test_joint_training_updates_both_heads_and_the_backbone(folders, tmp_path):
    target_data, source_data = folders
    model = _target_model()
    head_file, start_source = _saved_source_head(model, tmp_path)
    start_target = _snapshot(get_head(model))
    start_conv = _snapshot(get_backbone_model(model).get_layer("b3_conv"))

    history = fit_joint(model, target_data.train, source_data.train, loss_weight=0.5, epochs=1,
                        source_head_weights=head_file, verbose=0)

    joint = history.model
    assert history.params["steps"] == 3  # the larger dataset: 12 source images / 4
    assert _changed(start_target, get_head(model))
    assert _changed(start_source, joint.get_layer(SOURCE_HEAD_NAME))
    assert _changed(start_conv, get_backbone_model(model).get_layer("b3_conv"))
    logs = {k: v[-1] for k, v in history.history.items()}
    assert {"target_loss", "source_loss", "target_accuracy", "source_accuracy"} <= set(logs)
    # the target model is the joint model's target branch: same variables, trained in place
    assert {id(w) for w in model.weights} <= {id(w) for w in joint.weights}


def test_loss_is_target_plus_loss_weight_times_source(folders):
    """On a frozen backbone (the loss is the same sum): fit_joint warns, and still trains."""
    target_data, source_data = folders
    model = build_transfer_model("tinycam", 2, input_shape=(32, 32, 3), weights=None, head="avg")
    with pytest.warns(UserWarning, match="frozen"):
        history = fit_joint(model, target_data.train, source_data.train, loss_weight=0.25,
                            epochs=1, steps_per_epoch=2, verbose=0)
    assert history.params["steps"] == 2
    logs = {k: v[-1] for k, v in history.history.items()}
    assert logs["loss"] == pytest.approx(logs["target_loss"] + 0.25 * logs["source_loss"], rel=1e-4)


def test_target_model_keeps_only_the_target_head_and_exports(folders, tmp_path):
    target_data, source_data = folders
    model = _target_model()
    head_file, start_source = _saved_source_head(model, tmp_path)
    # loss_weight=0 is plain fine-tuning: the source head gets no gradient at all
    history = fit_joint(model, target_data.train, source_data.train, loss_weight=0.0, epochs=1,
                        steps_per_epoch=1, source_head_weights=head_file, verbose=0)
    joint = history.model
    assert not _changed(start_source, joint.get_layer(SOURCE_HEAD_NAME))
    source_paths = [w.path for w in joint.get_layer(SOURCE_HEAD_NAME).weights]
    assert source_paths and len(model.outputs) == 1 and model.output_shape == (None, 2)
    assert not {w.path for w in model.weights} & set(source_paths)
    assert SOURCE_HEAD_NAME not in [layer.name for layer in model.layers]
    x = tiny_pixels(3, 32)
    probs = model.predict(x, verbose=0)
    np.testing.assert_allclose(joint.predict({"target": x, "source": x}, verbose=0)["target"],
                               probs, rtol=1e-5, atol=1e-6)

    export = pytest.importorskip("tfx_transfer.export.saved_model")
    path = export.export_saved_model(model, tmp_path / "export", target_data.class_names)
    served = tt.load_exported(path)
    np.testing.assert_allclose(served.probabilities(x), probs, rtol=1e-5, atol=1e-6)
    # the SavedModel stores exactly the target model's weights: no source head
    import tensorflow as tf

    stored = tf.train.load_checkpoint(str(path / "variables" / "variables"))
    sizes = [int(np.prod(shape)) for key, shape in stored.get_variable_to_shape_map().items()
             if "OBJECT_GRAPH" not in key]
    assert len(sizes) == len(model.weights)
    assert sum(sizes) == sum(int(np.prod(w.shape)) for w in model.weights)


def test_errors(folders):
    """(A frozen backbone's warning: test_loss_is_target_plus_loss_weight_times_source.)"""
    target_data, source_data = folders
    model = build_transfer_model("tinycam", 2, input_shape=(32, 32, 3), weights=None, head="avg")
    with pytest.raises(ValueError, match="num_source_classes"):
        build_joint_model(model, 1)
    with pytest.raises(ValueError, match="num_source_classes"):
        fit_joint(model, source_data.train, target_data.train, epochs=1)  # int source labels
    with pytest.raises(ValueError, match="loss_weight"):
        fit_joint(model, target_data.train, source_data.train, loss_weight=-1)


class _StopBeforeTraining(keras.callbacks.Callback):
    """Records the source head's start at on_train_begin, then stops fit before it traces."""

    class Stop(Exception):
        pass

    def on_train_begin(self, logs=None):
        self.start = _snapshot(self.model.get_layer(SOURCE_HEAD_NAME))
        raise self.Stop


class _RecordStart(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        self.start = _snapshot(self.model.get_layer(SOURCE_HEAD_NAME))


def test_seed_makes_joint_training_repeatable():
    """Same seed, same source-head start and training; the default seed is DEFAULT_SEED.

    Two trainings with seed 7 (same start, same trained head); seed 8 stops at the start of
    fit (no train step traced): its source head starts elsewhere."""
    import inspect

    import tensorflow as tf

    from tfx_transfer.defaults import DEFAULT_SEED

    assert inspect.signature(fit_joint).parameters["seed"].default == DEFAULT_SEED
    x = tiny_pixels(4, 32)
    target = tf.data.Dataset.from_tensor_slices((x, [0, 1, 0, 1])).batch(2)
    source = tf.data.Dataset.from_tensor_slices((x, [0, 1, 2, 0])).batch(2)

    def source_head(seed):
        model, record = _target_model(), _RecordStart()
        history = fit_joint(model, target, source, num_source_classes=3, epochs=1,
                            steps_per_epoch=1, seed=seed, callbacks=[record], verbose=0)
        return record.start, _snapshot(history.model.get_layer(SOURCE_HEAD_NAME))

    (first_start, first), (again_start, again) = source_head(7), source_head(7)
    assert all(np.array_equal(a, b) for a, b in zip(first_start, again_start))
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not all(np.array_equal(a, b) for a, b in zip(first_start, first))  # it trained
    stop = _StopBeforeTraining()
    with pytest.raises(_StopBeforeTraining.Stop):
        fit_joint(_target_model(), target, source, num_source_classes=3, epochs=1,
                  steps_per_epoch=1, seed=8, callbacks=[stop], verbose=0)
    assert not all(np.array_equal(a, b) for a, b in zip(first_start, stop.start))
