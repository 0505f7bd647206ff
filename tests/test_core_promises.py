"""Core promises: names that cannot collide, one loader, one process per run folder,
no silent fallbacks, reproducible runs, a killed run resumes, JAX end to end."""

from __future__ import annotations

import csv
import dataclasses
import importlib
import json
import os
import pkgutil
import signal
import socket
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
import keras  # noqa: E402

import tfx_transfer as tt  # noqa: E402
from tests.helpers import once_per_session, predict_any, write_class_folders  # noqa: E402
from tfx_transfer.cli import main  # noqa: E402
from tfx_transfer.runs.lock import RunFolderLockedError, lock_run_folder  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(backbone="tinycam", weights="none", image_size=32, head="avg",
            augmentation="none", batch_size=8, head_epochs=1, fine_tune_epochs=1, verbose=0)
X = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3)).astype("uint8")


def test_no_public_function_is_shadowed_by_a_submodule():
    for info in pkgutil.iter_modules(tt.__path__):
        importlib.import_module(f"tfx_transfer.{info.name}")
    for name in tt.__all__:
        value = getattr(tt, name)
        assert not isinstance(value, types.ModuleType), f"tt.{name} is a module"
    assert callable(tt.ensemble) and callable(tt.pretrain) and callable(tt.train)


# the Keras objects `import tfx_transfer` registers (checked in a fresh process below)
LAZY_IMPORT_KINDS = ("Preprocess", "Backbone", "TransferModel", "FuseProbabilities",
                     "DiscriminativeOptimizer", "Augmentation")


def _saved_kinds(folder: Path) -> dict[str, Path]:
    """One .keras file of every kind the kit writes (tinycam: the kinds, not the backbone)."""
    keras.utils.set_random_seed(0)
    model = tt.build_transfer_model("tinycam", 2, input_shape=32, weights=None, head="avg",
                                    augmentation="standard", class_names=["a", "b"])
    other = tt.build_transfer_model("tinycam", 2, input_shape=32, weights=None, head="avg")
    joint = tt.build_joint_model(other, 3)
    disc = tt.build_transfer_model("tinycam", 2, input_shape=32, weights=None, head="avg")
    tt.unfreeze(disc, "b3")
    disc.compile(tt.DiscriminativeOptimizer(keras.optimizers.Adam(1e-3), {"b3": 0.1}),
                 "sparse_categorical_crossentropy")
    x, y = np.zeros((2, 32, 32, 3), "uint8"), np.array([0, 1])
    disc.fit(x, y, verbose=0)
    files = {}
    for name, m in {"transfer": model, "ensemble": tt.ensemble([model, other]),
                    "joint": joint, "discriminative": disc}.items():
        files[name] = folder / f"{name}.keras"
        m.save(files[name])
    return files


# One fresh process serves two tests (TensorFlow's import alone is ~8 s of CPU a process): it
# first checks `import tfx_transfer` and loads the saved kinds with plain Keras (KINDS_PART), then
# runs the determinism job (_DETERMINISM_JOB), whose control needs op determinism still off: loading
# and predicting turn nothing on. Each part reports its own failure ("... failed:" + traceback).
KINDS_PART = textwrap.dedent("""
    import sys, traceback
    try:
        import keras, numpy as np, tfx_transfer
        names = keras.saving.get_custom_objects()  # what `import tfx_transfer` did, and left lazy
        print("kinds:", all(f"tfx_transfer>{n}" in names for n in LAZY_IMPORT_KINDS),
              "tfx_transfer.data.folder" in sys.modules,
              "tfx_transfer.export.saved_model" in sys.modules, flush=True)
        from tests.helpers import predict_any as _predict
        x = np.load(sys.argv[1])
        for path in sys.argv[2].split("|"):
            model = keras.saving.load_model(path)
            print("kinds:", type(model).__name__, flush=True)
            np.save(path + ".npy", _predict(model, x))
    except Exception:
        print("kinds part failed:", traceback.format_exc(), flush=True)
""").replace("LAZY_IMPORT_KINDS", repr(LAZY_IMPORT_KINDS))


@dataclasses.dataclass(frozen=True)
class FreshProcess:
    """What the shared fresh process did (:func:`fresh_process`)."""

    root: Path  # x.npy, the .keras files (each with its predictions, FILE.npy), data/, a/, b/
    files: dict  # {kind: .keras file}
    returncode: int
    output: str  # stdout and stderr


@pytest.fixture(scope="session")
def fresh_process(tmp_path_factory) -> FreshProcess:
    """The saved kinds and the determinism job in one fresh process, once per ``pytest`` session
    (shared by the xdist workers through a file lock, as conftest.py's ``tiny_run``)."""
    from tests.tiny_backbone import tinycam_registered


    def make(root: Path) -> dict:
        (root / "kinds").mkdir()
        with tinycam_registered():
            files = _saved_kinds(root / "kinds")
        np.save(root / "x.npy", X)
        data = write_class_folders(root / "data", per_class=6)
        done = subprocess.run(
            [sys.executable, "-c", KINDS_PART + _DETERMINISM_JOB, str(root / "x.npy"),
             "|".join(map(str, files.values())), str(data), str(root / "a"), str(root / "b"),
             json.dumps(TINY)], cwd=ROOT, timeout=600, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True)
        return {"root": str(root), "files": {k: str(v) for k, v in files.items()},
                "returncode": done.returncode, "output": done.stdout}

    saved = once_per_session(tmp_path_factory, "fresh_process", make)
    return FreshProcess(Path(saved["root"]), {k: Path(v) for k, v in saved["files"].items()},
                        saved["returncode"], saved["output"])


@pytest.mark.slow
def test_every_saved_kind_loads_in_a_new_process_with_plain_keras_and_predicts_the_same(
        tmp_path, tinycam, fresh_process):
    files = fresh_process.files
    assert fresh_process.returncode == 0, fresh_process.output[-3000:]
    assert "kinds part failed" not in fresh_process.output, fresh_process.output[-3000:]
    out = [word for line in fresh_process.output.splitlines() if line.startswith("kinds: ")
           for word in line.split()[1:]]
    # test_model.py's lazy-import check (its own subprocess only off TensorFlow): importing the
    # package registers every Keras object of the kit and imports neither the data nor the export
    assert out[:3] == ["True", "False", "False"]
    assert out[3:] == ["TransferModel", "TransferModel", "Functional", "TransferModel"]
    for path in files.values():  # the same predictions as the model in this process
        expected = predict_any(keras.saving.load_model(path), X)
        np.testing.assert_allclose(np.load(f"{path}.npy"), expected, atol=1e-6, err_msg=path.name)
    loaded = tt.load_model(files["discriminative"])
    assert isinstance(loaded.optimizer, tt.DiscriminativeOptimizer)
    assert tt.transfer_config(tt.load_model(files["transfer"]))["class_names"] == ["a", "b"]
    assert tt.transfer_config(tt.load_model(files["ensemble"]))["ensemble"]["method"] == "mean"
    (tmp_path / "x.h5").write_text("")
    with pytest.raises(ValueError, match="not a .keras file"):
        tt.load_model(tmp_path / "x.h5")
    with pytest.raises(FileNotFoundError, match="missing.keras"):
        tt.load_model(tmp_path / "missing.keras")


def _history(run: Path) -> str:
    return (run / "history.csv").read_text()


_DETERMINISM_JOB = textwrap.dedent("""
    import json, sys, time
    import tensorflow as tf
    import tfx_transfer as tt
    from tests.tiny_backbone import tinycam_registered
    from tfx_transfer.runs import steps

    class Trained(Exception):
        pass

    def trained(*args, **kwargs):  # history.csv is whole when training ends: no report, no export
        raise Trained

    steps.final_model = trained

    def work(i):  # uneven: a parallel map finishes the odd elements first, unless kept in order
        time.sleep(0.03 if i % 2 == 0 else 0.0)
        return i

    def in_order():
        probe = tf.data.Dataset.range(12).map(lambda i: tf.numpy_function(work, [i], tf.int64),
                                              num_parallel_calls=4, deterministic=False)
        return [int(i) for i in probe] == list(range(12))

    print("before train, in order:", in_order())  # the control: the same process, no flag yet
    with tinycam_registered():
        for out in sys.argv[4:6]:  # two runs, one after the other
            try:
                tt.train(sys.argv[3], out, deterministic=True, **json.loads(sys.argv[6]))
            except Trained:
                print("trained", out)
    print("after train, in order:", in_order())
""")


@pytest.mark.slow
def test_deterministic_runs_write_identical_history_and_the_flag_is_what_orders_them(fresh_process):
    """Two ``deterministic=True`` runs (one after the other in one process) write the same
    history.csv; the flag is what turns TensorFlow's op determinism on: a parallel, unevenly
    slow tf.data map comes out of order in the same process before ``train(deterministic=True)``
    and in order after it. Each run stops when its training ends (the report and the export
    after it write nothing into history.csv).

    Runs without the flag are not compared: on CPU they differ only now and then (oneDNN
    threads: one of four tiny runs differed in the 6th digit), too rarely to test.
    """
    # a process of its own (shared with the saved kinds above, which run first and turn nothing
    # on): op determinism is process-wide, and the control needs it off at first
    tmp_path, out = fresh_process.root, fresh_process.output
    assert fresh_process.returncode == 0, out[-3000:]
    assert "before train, in order: False" in out, out[-3000:]
    assert "after train, in order: True" in out, out[-3000:]
    assert f"trained {tmp_path / 'b'}" in out, out[-3000:]  # both runs trained
    assert _history(tmp_path / "a") == _history(tmp_path / "b")
    assert len(_history(tmp_path / "a").splitlines()) == 3  # a header, the 2 epochs
    config = json.loads((tmp_path / "a" / "config.json").read_text())
    assert config["deterministic"] is True and config["seed"] == 1337


def test_cli_export_of_a_saved_ensemble(tmp_path, tinycam):
    keras.utils.set_random_seed(0)
    members = [tt.build_transfer_model(tinycam, 2, input_shape=32, weights=None, head="avg")
               for _ in range(2)]
    fused = tt.ensemble(members)
    fused.save(tmp_path / "ensemble.keras")
    assert main(["export", str(tmp_path / "ensemble.keras"), str(tmp_path / "exp"),
                 "--class-names", "a,b"]) == 0
    served = tt.load_exported(tmp_path / "exp")
    assert served.class_names == ["a", "b"]
    np.testing.assert_allclose(served.probabilities(X), fused.predict(X, verbose=0), atol=1e-5)


@pytest.mark.slow
def test_a_killed_run_resumes_from_its_last_epoch_and_serves_its_best_model(tiny_run):
    assert tiny_run.epochs_at_kill == [0, 1]  # died at the start of the 2nd fine-tuning epoch
    assert tiny_run.at_kill == {"backup": True, "model": False}  # Keras's backup, no best model yet
    assert tiny_run.resumed_epochs == [2]  # only the missing epoch ran again
    assert "continuing" in tiny_run.resume_output
    with open(tiny_run.run / "history.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(row["epoch"]) for row in rows] == [0, 1, 2]
    assert [int(float(row["stage"])) for row in rows] == [0, 1, 1]
    assert json.loads((tiny_run.run / "best.json").read_text())["finished"] is True
    assert not (tiny_run.run / "backup").exists()
    model = tt.load_model(tiny_run.run)  # model.keras: the best checkpoint
    exported = tt.load_exported(tiny_run.run / "export")
    assert exported.class_names == ["cats", "dogs"]
    np.testing.assert_allclose(exported.probabilities(X), model.predict(X, verbose=0), atol=1e-5)


def _hold_lock(run: Path) -> subprocess.Popen:
    # the lock module alone (standard library only): a holder process without Keras starts in ms
    code = ("import importlib.util, sys, time\n"
            "spec = importlib.util.spec_from_file_location('lock', 'tfx_transfer/runs/lock.py')\n"
            "lock = importlib.util.module_from_spec(spec); spec.loader.exec_module(lock)\n"
            "with lock.lock_run_folder(sys.argv[1], command='holder'):\n"
            "    print('locked', flush=True); time.sleep(120)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(run)], stdout=subprocess.PIPE,
                            text=True, cwd=ROOT)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_one_process_per_run_folder_and_stale_locks_are_taken_over(tmp_path, tinycam):
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


def test_a_given_optimizer_keeps_its_learning_rate_or_conflicts_loudly(tinycam):
    x, y = np.zeros((4, 32, 32, 3), "uint8"), np.array([0, 1, 0, 1])
    model = tt.build_transfer_model(tinycam, 2, input_shape=32, weights=None, head="avg")
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


def test_evaluate_never_scores_training_images_unless_asked(tmp_path, tinycam):
    write_class_folders(tmp_path / "only" / "train", per_class=2)
    model = tt.build_transfer_model(tinycam, 2, input_shape=32, weights=None, head="avg",
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


@pytest.mark.slow
def test_predict_prints_rows_and_plain_skip_lines_then_exits_1(tmp_path, capfd, tiny_run):
    images = write_class_folders(tmp_path / "imgs", per_class=1)
    (images / "cats" / "bad.jpg").write_bytes(b"not an image")
    assert main(["predict", str(tiny_run.run / "export"), str(images)]) == 1
    out, err = capfd.readouterr()
    assert "cats_0.jpg" in out and "dogs_0.jpg" in out
    assert "skipped " in err and "bad.jpg" in err and "Warning" not in err


@pytest.mark.slow
def test_train_from_a_config_json_reproduces_its_settings(tmp_path, tiny_run, tinycam,
                                                         monkeypatch):
    from tfx_transfer.runs import steps

    class Stop(Exception):
        pass

    def stop(*args, **kwargs):  # the settings are written before the first epoch: enough here
        raise Stop

    monkeypatch.setattr(steps, "fit", stop)
    first = json.loads((tiny_run.run / "config.json").read_text())
    with pytest.raises(Stop):
        main(["train", "--config", str(tiny_run.run / "config.json"),
              "--out", str(tmp_path / "again"), "--units", "64", "--verbose", "0"])
    again = json.loads((tmp_path / "again" / "config.json").read_text())
    from tfx_transfer.runs.job import RUN_SETTINGS
    assert {k: again[k] for k in RUN_SETTINGS if k != "units"} == \
        {k: first[k] for k in RUN_SETTINGS if k != "units"}
    assert again["units"] == 64 and again["data_dir"] == first["data_dir"]
    assert (again["batch_size"], again["validation_split"]) == (4, 0.34)  # not the defaults


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="jax is not installed")
def test_jax_backend_trains_and_exports_end_to_end(tmp_path):
    data = write_class_folders(tmp_path / "data", per_class=4)
    env = {**os.environ, "KERAS_BACKEND": "jax"}
    args = ["train", str(data), "--out", str(tmp_path / "run"), "--backbone", "tinycam",
            "--weights", "none", "--image-size", "32", "--head", "avg", "--augmentation", "none",
            "--batch-size", "8", "--head-epochs", "1", "--fine-tune-epochs", "1", "--verbose", "0"]
    code = ("import sys; from tests.tiny_backbone import tinycam_registered; from tfx_transfer.cli import main\n"
            "with tinycam_registered():\n    sys.exit(main(sys.argv[1:]))")
    subprocess.run([sys.executable, "-c", code, *args], check=True, env=env, cwd=ROOT,
                   capture_output=True, text=True)
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["versions"]["backend"] == "jax"
    exported = tt.load_exported(tmp_path / "run" / "export")
    keras_model = tt.load_model(tmp_path / "run")
    np.testing.assert_allclose(exported.probabilities(X), keras_model.predict(X, verbose=0),
                               atol=1e-5)
