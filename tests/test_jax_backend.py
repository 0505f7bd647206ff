"""The core on KERAS_BACKEND=jax with no TensorFlow installed (run by ``make test-jax``).

``make test-jax`` builds ``.venv-jax`` (jax, keras, numpy, pillow, h5py, pytest; no
TensorFlow) and runs this file with the backend-neutral core tests
(``tests/test_finetune.py`` and the model-building tests) under ``KERAS_BACKEND=jax``.
Under the TensorFlow backend every test here is skipped.
"""

import importlib.util
import os
import sys

import keras
import numpy as np
import pytest

import tfx_transfer as tt
from tests.distribute_jobs import assert_distributed_equals_single, run_job
from tests.helpers import tiny_labels, tiny_pixels
from tests.tiny_backbone import tinycam_registered

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "jax",
    reason="JAX-backend checks: run by `make test-jax` (KERAS_BACKEND=jax in .venv-jax)")


@pytest.fixture
def float32_after():
    yield
    tt.set_precision(None)


@pytest.fixture(autouse=True)
def _tinycam():
    with tinycam_registered():
        yield


def _tiny(**kwargs):
    keras.utils.set_random_seed(0)
    return tt.build_transfer_model("tinycam", 2, input_shape=(32, 32, 3), weights=None,
                                   head="avg", dropout=0.0, **kwargs)


def test_no_tensorflow_anywhere():
    assert importlib.util.find_spec("tensorflow") is None, "the JAX venv must not have TensorFlow"
    model = _tiny()
    assert model.predict(tiny_pixels(2), verbose=0).shape == (2, 2)
    assert "tensorflow" not in sys.modules
    assert tt.list_backbones() and tt.get_backbone("resnet50").block_names[-1] == "conv5"


def test_tf_only_parts_say_what_they_need():
    with pytest.raises(ModuleNotFoundError, match="tensorflow"):
        tt.load_image_folder  # noqa: B018  (tf.data)
    with pytest.raises(ModuleNotFoundError, match="tensorflow"):
        tt.export_saved_model  # noqa: B018  (SavedModel)
    with pytest.raises(ValueError, match=r"strategy='mirrored' is a tf.distribute strategy.*"
                                         r"use strategy='data_parallel'"):
        tt.get_strategy("mirrored")


def test_fine_tune_on_a_python_generator_switches_phase():
    model = _tiny()
    base = tt.get_backbone_model(model)
    x, y = tiny_pixels(8), tiny_labels(8)

    def batches():
        while True:
            for i in range(0, 8, 4):
                yield x[i:i + 4], y[i:i + 4]

    top, below = base.get_layer("b3_conv").kernel, base.get_layer("b2_conv").kernel
    top0, below0 = np.array(top.numpy()), np.array(below.numpy())
    history = tt.fine_tune(model, batches(), head_epochs=1, fine_tune_epochs=1, blocks="b3",
                           steps_per_epoch=2, shuffle=False, optimizer="sgd", head_lr=0.1,
                           fine_tune_lr=0.05, verbose=0)
    assert history.history["stage"] == [0, 1]
    assert not np.array_equal(top0, top.numpy())
    np.testing.assert_array_equal(below0, below.numpy())


def test_mixed_bfloat16_float32_outputs_and_trains(float32_after):
    tt.set_precision("mixed_bfloat16")
    model = _tiny()
    assert tt.get_backbone_model(model).get_layer("b3_conv").compute_dtype == "bfloat16"
    assert tt.get_head(model).get_layer("predictions").compute_dtype == "float32"
    rng = np.random.default_rng(1)
    y = np.arange(16) % 2
    x = (rng.integers(0, 100, (16, 32, 32, 3)) + 140 * y[:, None, None, None]).astype(np.uint8)
    history = tt.fine_tune(model, (x, y), head_epochs=3, fine_tune_epochs=0, optimizer="adam",
                           head_lr=1e-2, batch_size=8, cache_features=False, verbose=0)
    loss = history.history["loss"]
    assert all(np.isfinite(loss)) and loss[-1] < loss[0], loss
    assert model.predict(x[:2], verbose=0).dtype == np.float32


@pytest.mark.slow
def test_data_parallel_two_devices_matches_one_device_through_phase_switch(tmp_path):
    out = tmp_path / "data_parallel.npz"
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=2"
    run_job("data_parallel", out, KERAS_BACKEND="jax", XLA_FLAGS=flags.strip())
    info = assert_distributed_equals_single(out)
    assert info["kernel_devices"] == 2  # the head's kernel is replicated on both devices
    assert info["tensorflow_loaded"] is False


def test_train_without_tensorflow_says_so_before_training(tmp_path):
    with pytest.raises(ValueError, match="needs TensorFlow installed"):
        tt.train(tmp_path / "data", tmp_path / "run", weights="none")
    assert not (tmp_path / "run").exists()  # nothing was started


def test_a_saved_model_loads_on_jax_and_predicts_the_same(tmp_path):
    model = _tiny(class_names=["a", "b"], augmentation="light")
    model.save(tmp_path / "m.keras")
    loaded = tt.load_model(tmp_path / "m.keras")
    assert tt.transfer_config(loaded)["class_names"] == ["a", "b"]
    x = tiny_pixels(3)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0),
                               atol=1e-6)


def test_cosine_head_imprint_and_add_classes_on_jax(tmp_path):
    keras.utils.set_random_seed(0)
    model = tt.build_transfer_model("tinycam", 2, input_shape=(32, 32, 3), weights=None,
                                    head="cosine", class_names=["dark", "light"])
    x = np.concatenate([np.full((2, 32, 32, 3), 30, "uint8"), np.full((2, 32, 32, 3), 220, "uint8")])
    x[:, :16] = 120  # the images differ in half of each image only
    y = np.array([0, 0, 1, 1])
    tt.imprint(model, (x, y))
    before = model.predict(x, verbose=0)
    assert (before.argmax(axis=1) == y).all()
    bigger = tt.add_classes(model, (np.full((2, 32, 32, 3), 120, "uint8"), np.zeros(2, int)),
                            class_names=["grey"])
    after = bigger.predict(x, verbose=0)
    np.testing.assert_allclose(after[:, :2] / after[:, :2].sum(axis=1, keepdims=True), before,
                               atol=1e-5)
    bigger.save(tmp_path / "m.keras")
    loaded = tt.load_model(tmp_path / "m.keras")
    assert tt.transfer_config(loaded)["class_names"] == ["dark", "light", "grey"]
    np.testing.assert_allclose(loaded.predict(x, verbose=0), after, atol=1e-6)


def test_calibrate_and_unknown_score_on_jax(tmp_path):
    model = _tiny()
    x, y = tiny_pixels(4), tiny_labels(4)
    stripes = np.zeros((4, 32, 32, 3), "uint8")
    stripes[:, ::4] = 255
    result = tt.calibrate(model, (x, y))
    assert result["nll_after"] <= result["nll_before"] + 1e-9
    fit = tt.fit_unknown(model, (x, y), (x, y))
    _, known = tt.unknown_scores(model, x)
    _, other = tt.unknown_scores(model, stripes)
    assert known.max() <= fit["threshold"] < other.min()
    model.save(tmp_path / "m.keras")
    loaded = tt.load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(tt.unknown_scores(loaded, stripes)[1], other, atol=1e-6)
    assert tt.transfer_config(loaded)["temperature"] == result["temperature"]
