"""Mixed precision, XLA, MirroredStrategy, MultiWorkerMirroredStrategy (TensorFlow backend, CPU)."""

import json
import socket

import keras
import numpy as np
import pytest

import tfx_transfer as tt
from tests.distribute_jobs import assert_distributed_equals_single, load_runs, run_jobs
from tfx_transfer.training.distribute import num_replicas, scaled_batch_size, strategy_scope

pytestmark = pytest.mark.skipif(keras.backend.backend() != "tensorflow",
                                reason="tf.distribute tests (jax: test_jax_backend.py)")


@pytest.fixture
def float32_after():
    yield
    tt.set_precision(None)


def _learnable(n=16, size=32):
    """Dark images are class 0, bright ones class 1."""
    rng = np.random.default_rng(1)
    y = np.arange(n) % 2
    x = rng.integers(0, 100, (n, size, size, 3)) + 140 * y[:, None, None, None]
    return x.astype(np.uint8), y


# --- options ---------------------------------------------------------------------------------

def test_set_precision_sets_and_validates(float32_after):
    assert tt.set_precision("mixed_bfloat16") == "mixed_bfloat16"
    assert keras.config.dtype_policy().name == "mixed_bfloat16"
    assert tt.set_precision(None) == "float32"
    assert keras.config.dtype_policy().name == "float32"
    with pytest.raises(ValueError, match=r"precision='fp16' is not one of .*mixed_float16"):
        tt.set_precision("fp16")


def test_get_strategy_names_and_errors(monkeypatch):
    default = tt.get_strategy(None)
    assert num_replicas(default) == 1 and scaled_batch_size(32, default) == 32
    assert tt.get_strategy("default") is default
    with strategy_scope(default) as strategy:
        assert strategy is default
    with pytest.raises(ValueError, match=r"strategy='tpu' is not one of"):
        tt.get_strategy("tpu")
    with pytest.raises(ValueError, match=r"needs KERAS_BACKEND=jax .*use\s+strategy='mirrored'"):
        tt.get_strategy("data_parallel")
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ValueError, match=r"needs the TF_CONFIG environment variable"):
        tt.get_strategy("multiworker")
    monkeypatch.setenv("TF_CONFIG", '{"cluster": {}}')
    with pytest.raises(ValueError, match=r"TF_CONFIG=.* is not a JSON object with 'cluster'"):
        tt.get_strategy("multiworker")
    with pytest.raises(ValueError, match=r"per_replica=0 must be a positive integer"):
        scaled_batch_size(0, None)


# --- mixed precision and XLA ------------------------------------------------------------------

@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_float32_outputs_and_trains(policy, float32_after, tinycam):
    tt.set_precision(policy)
    compute = policy.split("_")[1]
    model = tt.build_transfer_model(tinycam, 2, input_shape=(32, 32, 3), weights=None,
                                    head="avg", dropout=0.0)
    base, head = tt.get_backbone_model(model), tt.get_head(model)
    assert base.get_layer("b3_conv").compute_dtype == compute
    assert head.get_layer("predictions").compute_dtype == "float32"
    assert model.output.dtype == "float32"
    assert all(w.dtype == "float32" for w in model.weights)  # variables stay float32
    x, y = _learnable()
    before = {w.path: w.numpy().copy() for w in model.weights}
    history = tt.fine_tune(model, (x, y), head_epochs=3, fine_tune_epochs=1, blocks="b3",
                           optimizer="adam", head_lr=1e-2, fine_tune_lr=1e-4, batch_size=8,
                           cache_features=False, verbose=0)
    loss = history.history["loss"]
    assert all(np.isfinite(loss)) and loss[2] < loss[0], loss
    assert history.history["stage"] == [0, 0, 0, 1]
    # mixed_float16: compile wrapped the optimizer in a LossScaleOptimizer; the phase switch kept it
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer) == (
        policy == "mixed_float16")
    changed = {w.path for w in model.weights if not np.array_equal(before[w.path], w.numpy())}
    assert {"head/predictions/kernel", "b3_conv/kernel"} <= changed
    assert not any(p.startswith(("b1_", "b2_")) for p in changed)
    probs = model.predict(x[:4], verbose=0)
    assert probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)


def test_xla_compiled_train_step_survives_phase_switch(tinycam):
    model = tt.build_transfer_model(tinycam, 2, input_shape=(32, 32, 3), weights=None,
                                    head="avg", dropout=0.0)
    model.compile(keras.optimizers.SGD(0.1), "sparse_categorical_crossentropy", jit_compile=True)
    x, y = _learnable(8)
    kernel = tt.get_backbone_model(model).get_layer("b3_conv").kernel
    start = kernel.numpy().copy()
    stage = tt.StagedUnfreeze({1: "b3"}, learning_rates={1: 0.05}, verbose=0)
    model.fit(x, y, batch_size=4, epochs=2, callbacks=[stage], verbose=0)
    assert model.jit_compile is True
    assert not np.array_equal(start, kernel.numpy())  # the rebuilt XLA step trains b3


# --- tf.distribute ----------------------------------------------------------------------------

@pytest.mark.slow
def test_mirrored_two_cpus_matches_one_device_through_phase_switch(tmp_path):
    run_jobs([("mirrored", tmp_path / "mirrored.npz", {})], tmp_path)
    assert_distributed_equals_single(tmp_path / "mirrored.npz")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_multiworker_two_local_workers_phase_switch_and_export(tmp_path):
    ports = [_free_port(), _free_port()]
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    run_jobs([("worker", tmp_path, {"TF_CONFIG": json.dumps(
        {"cluster": cluster, "task": {"type": "worker", "index": index}})}) for index in range(2)],
        tmp_path)
    (w0, info0), (w1, info1) = (load_runs(tmp_path / f"worker_{i}.npz") for i in range(2))
    assert info0["replicas"] == info1["replicas"] == 2
    assert info0["stage"] == info1["stage"] == [0, 1]
    assert "b3_conv/kernel" in info0["trainable"]
    for key in w0["worker"]:  # synchronous training: both workers hold the same weights
        np.testing.assert_array_equal(w0["worker"][key], w1["worker"][key], err_msg=key)
    for key in ("head/predictions/kernel", "b3_conv/kernel"):
        assert not np.array_equal(w0["worker"][key], w0["init"][key]), key
    below = "b2_conv/kernel"
    np.testing.assert_array_equal(w0["worker"][below], w0["init"][below])
    # the chief's export serves the trained model
    from tests.distribute_jobs import data
    from tfx_transfer.export.exported import load_exported

    exported = load_exported(tmp_path / "export")
    x, _ = data()
    np.testing.assert_allclose(exported.probabilities(list(x[:4])),
                               np.load(tmp_path / "predictions_0.npy"), atol=1e-5)
