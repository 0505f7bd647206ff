"""Core promises: names that cannot collide, one loader, one process per run folder,
no silent fallbacks, reproducible runs, JAX end to end."""

from __future__ import annotations

import importlib
import json
import os
import pkgutil
import signal
import socket
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
import keras  # noqa: E402

import tfx_transfer as tt  # noqa: E402
from tests.helpers import write_class_folders  # noqa: E402
from tfx_transfer.cli import main  # noqa: E402
from tfx_transfer.runs.lock import RunFolderLockedError, lock_run_folder  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(backbone="mobilenetv2", weights="none", image_size=32, head="avg",
            augmentation="none", batch_size=8, head_epochs=1, fine_tune_epochs=1, verbose=0)


def test_no_public_function_is_shadowed_by_a_submodule():
    for info in pkgutil.iter_modules(tt.__path__):
        importlib.import_module(f"tfx_transfer.{info.name}")
    for name in tt.__all__:
        value = getattr(tt, name)
        assert not isinstance(value, types.ModuleType), f"tt.{name} is a module"
    assert callable(tt.ensemble) and callable(tt.pretrain) and callable(tt.train)


def _saved_kinds(folder: Path) -> dict[str, Path]:
    """One .keras file of every kind the kit writes."""
    model = tt.build_transfer_model("mobilenetv2", 2, input_shape=32, weights=None, head="avg",
                                    augmentation="standard", class_names=["a", "b"])
    other = tt.build_transfer_model("mobilenetv2", 2, input_shape=32, weights=None, head="avg")
    joint = tt.build_joint_model(other, 3)
    disc = tt.build_transfer_model("vgg16", 2, input_shape=32, weights=None, head="avg")
    tt.unfreeze(disc, "block5")
    disc.compile(tt.DiscriminativeOptimizer(keras.optimizers.Adam(1e-3), {"block5": 0.1}),
                 "sparse_categorical_crossentropy")
    x, y = np.zeros((2, 32, 32, 3), "uint8"), np.array([0, 1])
    disc.fit(x, y, verbose=0)
    files = {}
    for name, m in {"transfer": model, "ensemble": tt.ensemble([model, other]),
                    "joint": joint, "discriminative": disc}.items():
        files[name] = folder / f"{name}.keras"
        m.save(files[name])
    return files


def test_every_saved_kind_loads_in_a_new_process_with_plain_keras(tmp_path):
    files = _saved_kinds(tmp_path)
    code = ("import sys, keras, tfx_transfer; "
            "[print(type(keras.saving.load_model(p)).__name__) for p in sys.argv[1:]]")
    out = subprocess.run([sys.executable, "-c", code, *map(str, files.values())], check=True,
                         capture_output=True, text=True, cwd=ROOT).stdout.split()
    assert out == ["TransferModel", "TransferModel", "Functional", "TransferModel"]
    loaded = tt.load_model(files["discriminative"])
    assert isinstance(loaded.optimizer, tt.DiscriminativeOptimizer)
    assert tt.transfer_config(tt.load_model(files["transfer"]))["class_names"] == ["a", "b"]
    assert tt.transfer_config(tt.load_model(files["ensemble"]))["ensemble"]["method"] == "mean"
    (tmp_path / "x.h5").write_text("")
    with pytest.raises(ValueError, match="not a .keras file"):
        tt.load_model(tmp_path / "x.h5")
    with pytest.raises(FileNotFoundError, match="missing.keras"):
        tt.load_model(tmp_path / "missing.keras")


def test_cli_export_of_a_saved_ensemble(tmp_path):
    files = _saved_kinds(tmp_path)
    assert main(["export", str(files["ensemble"]), str(tmp_path / "exp"), "--class-names", "a,b"]) == 0
    assert (tmp_path / "exp" / "1" / "saved_model.pb").is_file()


def _hold_lock(run: Path) -> subprocess.Popen:
    code = ("import sys, time; from tfx_transfer.runs.lock import lock_run_folder\n"
            "with lock_run_folder(sys.argv[1], command='holder'):\n"
            "    print('locked', flush=True); time.sleep(120)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(run)], stdout=subprocess.PIPE,
                            text=True, cwd=ROOT)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_one_process_per_run_folder_and_stale_locks_are_taken_over(tmp_path):
    run = tmp_path / "run"
    holder = _hold_lock(run)
    try:
        with pytest.raises(RunFolderLockedError, match=f"process {holder.pid} .*holder"):
            tt.train(write_class_folders(tmp_path / "data"), run, **TINY)
        assert main(["train", str(tmp_path / "data"), "--out", str(run), "--resume"]) == 2
    finally:
        holder.send_signal(signal.SIGKILL)  # kill -9: the lock is left behind, stale
        holder.wait()
    with lock_run_folder(run):  # taken over
        assert json.loads((run / ".lock").read_text())["pid"] == os.getpid()


def test_a_given_optimizer_keeps_its_learning_rate_or_conflicts_loudly():
    x, y = np.zeros((4, 32, 32, 3), "uint8"), np.array([0, 1, 0, 1])
    model = tt.build_transfer_model("vgg16", 2, input_shape=32, weights=None, head="avg")
    history = tt.fine_tune(model, (x, y), head_epochs=1, fine_tune_epochs=0,
                           optimizer=keras.optimizers.SGD(0.01), verbose=0)
    assert history.history["learning_rate"] == pytest.approx([0.01])
    with pytest.raises(ValueError, match="disagree"):
        tt.fine_tune(model, (x, y), head_epochs=1, fine_tune_epochs=0,
                     optimizer=keras.optimizers.SGD(0.01), head_lr=1e-3, verbose=0)


def test_staged_unfreeze_refuses_a_model_it_cannot_read():
    inputs = keras.Input((4,))
    plain = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(inputs))
    plain.compile("adam", "sparse_categorical_crossentropy")
    with pytest.raises(ValueError, match="cannot find the backbone"):
        plain.fit(np.zeros((2, 4)), np.array([0, 1]), epochs=1, verbose=0,
                  callbacks=[tt.StagedUnfreeze({0: "all"})])


def test_evaluate_never_scores_training_images_unless_asked(tmp_path):
    write_class_folders(tmp_path / "only" / "train", per_class=2)
    model = tt.build_transfer_model("vgg16", 2, input_shape=32, weights=None, head="avg",
                                    class_names=["cats", "dogs"])
    with pytest.raises(ValueError, match="only a train/ split"):
        tt.evaluate_model(model, tmp_path / "only", verbose=False)
    metrics = tt.evaluate_model(model, tmp_path / "only", split="train", verbose=False)
    assert metrics["num_samples"] == 4


def test_offline_probe_goes_through_the_https_proxy(monkeypatch):
    from tfx_transfer.models.weights import _reachable

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    try:
        monkeypatch.delenv("TFX_TRANSFER_OFFLINE", raising=False)
        monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{server.getsockname()[1]}")
        monkeypatch.setenv("NO_PROXY", "")
        assert _reachable("https://storage.googleapis.com/x.h5", timeout=2)
        monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:1")  # nothing listens there
        assert not _reachable("https://storage.googleapis.com/x.h5", timeout=2)
    finally:
        server.close()


def test_predict_prints_rows_and_plain_skip_lines_then_exits_1(tmp_path, capfd):
    model = tt.build_transfer_model("vgg16", 2, input_shape=32, weights=None, head="avg",
                                    class_names=["cats", "dogs"])
    tt.export_saved_model(model, tmp_path / "exp")
    images = write_class_folders(tmp_path / "imgs", per_class=1)
    (images / "cats" / "bad.jpg").write_bytes(b"not an image")
    assert main(["predict", str(tmp_path / "exp"), str(images)]) == 1
    out, err = capfd.readouterr()
    assert "cats_0.jpg" in out and "dogs_0.jpg" in out
    assert "skipped " in err and "bad.jpg" in err and "Warning" not in err


def _history(run: Path) -> str:
    return (run / "history.csv").read_text()


def test_deterministic_runs_write_identical_history(tmp_path):
    data = write_class_folders(tmp_path / "data", per_class=6)
    code = ("import sys, tfx_transfer as tt, json; "
            "tt.train(sys.argv[1], sys.argv[2], deterministic=True, **json.loads(sys.argv[3]))")
    for run in ("a", "b"):  # separate processes: op determinism is process-wide
        subprocess.run([sys.executable, "-c", code, str(data), str(tmp_path / run), json.dumps(TINY)],
                       check=True, cwd=ROOT, capture_output=True)
    assert _history(tmp_path / "a") == _history(tmp_path / "b")
    config = json.loads((tmp_path / "a" / "config.json").read_text())
    assert config["deterministic"] is True and config["seed"] == 1337


def test_train_from_a_config_json_reproduces_its_settings(tmp_path):
    data = write_class_folders(tmp_path / "data", per_class=4)
    tt.train(data, tmp_path / "first", **{**TINY, "fine_tune_epochs": 0, "head_lr": 3e-3})
    first = json.loads((tmp_path / "first" / "config.json").read_text())
    assert main(["train", "--config", str(tmp_path / "first" / "config.json"),
                 "--out", str(tmp_path / "again"), "--units", "64"]) == 0
    again = json.loads((tmp_path / "again" / "config.json").read_text())
    from tfx_transfer.training.job import RUN_SETTINGS
    assert {k: again[k] for k in RUN_SETTINGS if k != "units"} == \
        {k: first[k] for k in RUN_SETTINGS if k != "units"}
    assert again["units"] == 64 and again["data_dir"] == first["data_dir"]


@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="jax is not installed")
def test_jax_backend_trains_and_exports_end_to_end(tmp_path):
    data = write_class_folders(tmp_path / "data", per_class=4)
    env = {**os.environ, "KERAS_BACKEND": "jax"}
    args = ["train", str(data), "--out", str(tmp_path / "run"), "--backbone", "mobilenetv2",
            "--weights", "none", "--image-size", "32", "--head", "avg", "--augmentation", "none",
            "--batch-size", "8", "--head-epochs", "1", "--fine-tune-epochs", "1", "--verbose", "0"]
    subprocess.run([sys.executable, "-m", "tfx_transfer.cli", *args], check=True, env=env,
                   cwd=ROOT, capture_output=True, text=True)
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["versions"]["backend"] == "jax"
    exported = tt.load_exported(tmp_path / "run" / "export")
    keras_model = tt.load_model(tmp_path / "run")
    x = np.random.RandomState(0).randint(0, 256, (2, 32, 32, 3)).astype("uint8")
    np.testing.assert_allclose(exported.probabilities(x), keras_model.predict(x, verbose=0),
                               atol=1e-5)
