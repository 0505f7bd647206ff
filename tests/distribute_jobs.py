"""Jobs that tests run in fresh processes: training jobs (tests/test_distribute.py,
tests/test_jax_backend.py) and ``tfx-transfer`` commands (``cli``: tests/test_serve.py).

Device layouts (two logical CPUs, two forced XLA host devices) and
``MultiWorkerMirroredStrategy`` must be set up before the framework initializes,
so each job is a fresh process:

    python -m tests.distribute_jobs mirrored OUT.npz
    TF_CONFIG=... python -m tests.distribute_jobs worker OUT_DIR
    XLA_FLAGS=--xla_force_host_platform_device_count=2 KERAS_BACKEND=jax \\
        python -m tests.distribute_jobs data_parallel OUT.npz

tests/test_distribute.py runs them with :func:`run_jobs`: forked from one fresh interpreter
that has imported TensorFlow, Keras and the kit once, before any TensorFlow runtime starts
(:class:`Forker`), so each job is a fresh TensorFlow process that skipped the import. One
forker per test process (:func:`forker`) serves every test there that needs such a process.

Every job trains the same tiny model (tests/tiny_backbone.py's tinycam at 32 px, random init,
pooled head without dropout) with :func:`tfx_transfer.fine_tune`: one epoch on the frozen
backbone, then one epoch with the default top blocks unfrozen (a StagedUnfreeze
phase switch), and saves its weights for the test to compare.
"""

from __future__ import annotations

import atexit
import json
import os
import sys
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TFX_TRANSFER_OFFLINE", "1")

BACKBONE, SIZE, CLASSES, N = "tinycam", 32, 2, 16


def data(n: int = N) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic pixels and labels (the same in every process)."""
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8), np.arange(n) % CLASSES


def build(init: list | None = None):
    """The tiny model; ``init`` (a ``get_weights()`` list) makes runs start equal."""
    import keras

    import tfx_transfer as tt

    keras.utils.set_random_seed(0)
    model = tt.build_transfer_model(BACKBONE, CLASSES, input_shape=(SIZE, SIZE, 3), weights=None,
                                    head="avg", dropout=0.0)
    if init is not None:
        model.set_weights(init)
    return model


def train(model, batch_size: int, **kwargs):
    """Phase 1 (head) for one epoch, phase 2 (default blocks unfrozen) for one epoch."""
    import tfx_transfer as tt

    x, y = data()
    return tt.fine_tune(model, (x, y), head_epochs=1, fine_tune_epochs=1, blocks="default",
                        optimizer="sgd", head_lr=0.1, fine_tune_lr=0.05,
                        loss="sparse_categorical_crossentropy", metrics=[], batch_size=batch_size,
                        shuffle=False, verbose=0, **kwargs)


def weights(model) -> dict[str, np.ndarray]:
    return {w.path: np.asarray(w.numpy() if hasattr(w, "numpy") else w.value)
            for w in model.weights}


def _named(model, values: list) -> dict[str, np.ndarray]:
    """``get_weights()`` values keyed by the variable paths (same order as ``model.weights``)."""
    return {w.path: np.asarray(v) for w, v in zip(model.weights, values)}


def trainable_paths(model) -> list[str]:
    return sorted(w.path for w in model.trainable_weights)


def _save(out: str, runs: dict[str, object], info: dict) -> None:
    """``runs``: {name: model or {path: array}} -> ``name|path`` arrays, plus ``info``."""
    arrays = {f"{run}|{path}": value for run, model in runs.items()
              for path, value in (model if isinstance(model, dict) else weights(model)).items()}
    arrays["info"] = np.array(json.dumps(info))
    np.savez(out, **arrays)


def mirrored(out: str) -> None:
    """Default strategy (batch 8) vs. MirroredStrategy on 2 logical CPUs (4 per replica)."""
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

    from tfx_transfer.training.distribute import (
        get_strategy,
        num_replicas,
        scaled_batch_size,
        strategy_scope,
    )

    single = get_strategy("default")
    with strategy_scope(single):
        one = build()
        init = one.get_weights()
        train(one, scaled_batch_size(8, single), cache_features=False)
    strategy = get_strategy("mirrored", devices=["/cpu:0", "/cpu:1"])
    with strategy_scope(strategy):
        two = build(init)
        history = train(two, scaled_batch_size(4, strategy), cache_features=False)
    info = {"replicas": num_replicas(strategy), "stage": history.history["stage"],
            "trainable_single": trainable_paths(one), "trainable_distributed": trainable_paths(two)}
    _save(out, {"single": one, "distributed": two, "init": _named(one, init)}, info)


def worker(out_dir: str) -> None:
    """One worker of a MultiWorkerMirroredStrategy run (TF_CONFIG from the parent)."""
    from tfx_transfer.training.distribute import (
        get_strategy,
        num_replicas,
        scaled_batch_size,
        strategy_scope,
    )

    strategy = get_strategy("multiworker")  # first: before any other TensorFlow work
    index = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
    out = Path(out_dir)
    with strategy_scope(strategy):
        model = build()
        init = _named(model, model.get_weights())
        history = train(model, scaled_batch_size(4, strategy))
    from tfx_transfer.export.saved_model import export_saved_model

    # Every worker takes part in saving; only the chief's copy is kept.
    target = out / "export" if index == 0 else out / f"scratch_{index}"
    export_saved_model(model, target, ["a", "b"])
    x, _ = data()
    info = {"replicas": num_replicas(strategy), "stage": history.history["stage"],
            "trainable": trainable_paths(model), "index": index}
    np.save(out / f"predictions_{index}.npy", model.predict(x[:4], verbose=0))
    _save(str(out / f"worker_{index}.npz"), {"worker": model, "init": init}, info)


def data_parallel(out: str) -> None:
    """No distribution vs. keras.distribution.DataParallel over 2 host devices (JAX)."""
    import keras

    from tfx_transfer.training.distribute import get_strategy, num_replicas, scaled_batch_size

    one = build()
    init = one.get_weights()
    train(one, scaled_batch_size(8, None), cache_features=False)
    distribution = get_strategy("data_parallel")
    two = build(init)
    history = train(two, scaled_batch_size(4, distribution), cache_features=False)
    kernel = two.get_layer("head").get_layer("predictions").kernel
    info = {"replicas": num_replicas(distribution), "stage": history.history["stage"],
            "trainable_single": trainable_paths(one), "trainable_distributed": trainable_paths(two),
            "kernel_devices": len(kernel.value.sharding.device_set),
            "tensorflow_loaded": "tensorflow" in sys.modules}
    keras.distribution.set_distribution(None)
    _save(out, {"single": one, "distributed": two, "init": _named(one, init)}, info)


# --- used by the tests (parent process) -----------------------------------------------------

ROOT = Path(__file__).resolve().parents[1]
JOB_TIMEOUT_S = 420


def job_env(**extra: str) -> dict[str, str]:
    """The parent's environment, the repo on PYTHONPATH, no inherited TF_CONFIG."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("TF_CONFIG", None)
    env.update(extra)
    return env


def run_job(job: str, target: Path, **env: str) -> None:
    """Run one job in a fresh interpreter (bounded time); fail with its output."""
    import subprocess

    proc = subprocess.run([sys.executable, "-m", "tests.distribute_jobs", job, str(target)],
                          cwd=ROOT, env=job_env(**env), capture_output=True, text=True,
                          timeout=JOB_TIMEOUT_S)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]


class Forker:
    """A fresh interpreter that has imported TensorFlow, Keras and the kit once, before any
    TensorFlow runtime starts, and forks one process per job on request (``forker``): each fork
    is a fresh TensorFlow process that skipped the import (about 10 s of CPU per process, most
    of a job's cost). Its own messages go to ``log``; it exits when its stdin closes."""

    def __init__(self, log: Path):
        import subprocess

        self.log = log
        with open(log, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tests.distribute_jobs", "forker", "-"], cwd=ROOT,
                env=job_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
                start_new_session=True)
        self._reply = b""

    def start(self, jobs: list[tuple[str, str | Path, dict[str, str]]], logs: Path
              ) -> list[int] | str:
        """Fork the jobs (each writes ``logs/job_<i>.log``): their process ids, else why not."""
        spec = [{"job": job, "target": str(target), "env": env, "log": str(logs / f"job_{i}.log")}
                for i, (job, target, env) in enumerate(jobs)]
        try:
            self.proc.stdin.write(json.dumps(spec).encode() + b"\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            return f"the forker is gone: {self.log.read_text()[-3000:]}"
        answer = self._answer(JOB_TIMEOUT_S)
        return answer if isinstance(answer, str) else answer["pids"]

    def running(self) -> bool:
        """Whether the jobs started last are still running (their exit codes not yet sent)."""
        import select

        return self.alive() and not select.select([self.proc.stdout.fileno()], [], [], 0)[0]

    def wait(self, timeout: float = JOB_TIMEOUT_S) -> list[int] | str:
        """The exit codes of the jobs started last (``-N``: killed by signal N), else why not."""
        answer = self._answer(timeout)
        return answer if isinstance(answer, str) else answer["codes"]

    def run(self, jobs: list[tuple[str, str | Path, dict[str, str]]], logs: Path) -> str | None:
        """``None`` when every job exited 0, else why not (the forker is killed on a timeout)."""
        codes = self.start(jobs, logs)
        if not isinstance(codes, str):
            codes = self.wait()
        if isinstance(codes, str):
            return codes
        failed = [f"{job} -> {target}: exit {code}"
                  for (job, target, _), code in zip(jobs, codes) if code != 0]
        return "failed: " + "; ".join(failed) if failed else None

    def _answer(self, timeout: float) -> dict | str:
        """The forker's next answer line (JSON), else why not (the forker is killed on a timeout)."""
        import select
        import time

        deadline, fd = time.monotonic() + timeout, self.proc.stdout.fileno()
        while not self._reply.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                self.close()
                return f"timed out after {timeout} s"
            chunk = os.read(fd, 1)  # byte by byte: never past this answer's line
            if not chunk:
                return f"the forker died: {self.log.read_text()[-3000:]}"
            self._reply += chunk
        line, self._reply = self._reply, b""
        return json.loads(line)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def close(self) -> None:
        """Stdin closed (it exits), then its process group killed: forks left over too."""
        import signal
        import subprocess

        try:
            self.proc.stdin.close()
            self.proc.wait(10)
        except (OSError, ValueError, subprocess.TimeoutExpired):
            pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.wait()


_FORKER: Forker | None = None


def forker(logs: Path) -> Forker:
    """This test process's :class:`Forker`: started on first use (its messages in
    ``logs/forker.log``), then kept, for every test of this process that needs a fresh
    TensorFlow process, until :func:`close_forker` or this process's exit."""
    global _FORKER
    if _FORKER is None or not _FORKER.alive():
        _FORKER = Forker(logs / "forker.log")
        atexit.register(close_forker)
    return _FORKER


def run_jobs(jobs: list[tuple[str, Path, dict[str, str]]], logs: Path) -> None:
    """Run ``(job, target, extra environment)`` jobs at the same time, forked from this test
    process's :func:`forker`; fail with the logs of the jobs."""
    problem = forker(logs).run(jobs, logs)

    def tail(i: int) -> str:
        path = logs / f"job_{i}.log"
        return path.read_text()[-4000:] if path.exists() else "(no log)"

    assert problem is None, problem + "".join(
        f"\n--- {job} -> {target}:\n{tail(i)}" for i, (job, target, _) in enumerate(jobs))


def close_forker() -> None:
    global _FORKER
    if _FORKER is not None:
        _FORKER.close()
        _FORKER = None


def _forker() -> None:
    """The :class:`Forker` process: imports once; per line of stdin (a JSON list of jobs), forks
    one child per job, answers ``{"pids": [...]}`` on stdout, waits for all (when one fails the
    others are killed: a worker alone waits for its peer forever), then answers
    ``{"codes": [...]}`` (exit codes in job order, ``-N`` for a death by signal N)."""
    import signal
    import traceback

    import keras  # noqa: F401  the costly imports, before any TensorFlow runtime starts
    import tensorflow  # noqa: F401

    import tfx_transfer.cli  # noqa: F401
    import tfx_transfer.export.exported  # noqa: F401
    import tfx_transfer.export.saved_model  # noqa: F401
    import tfx_transfer.training.distribute  # noqa: F401
    from tests.tiny_backbone import tinycam_registered

    answer = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # anything printed here goes to the log; answers to the saved stdout

    def reply(**message: object) -> None:
        answer.write(json.dumps(message) + "\n")
        answer.flush()

    for line in sys.stdin:
        children = {}
        for i, job in enumerate(json.loads(line)):
            pid = os.fork()
            if pid == 0:  # the child: its own environment and log, the job, then exit
                code = 1
                try:
                    log = os.open(job["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                    os.dup2(log, 1)
                    os.dup2(log, 2)
                    answer.close()
                    os.environ.update(job["env"])
                    with tinycam_registered():
                        code = JOBS[job["job"]](job["target"]) or 0
                except BaseException:
                    traceback.print_exc()
                finally:
                    sys.stdout.flush()
                    sys.stderr.flush()
                    os._exit(code)
            children[pid] = i
        reply(pids=list(children))
        codes: list[int | None] = [None] * len(children)
        while children:
            pid, status = os.wait()
            i = children.pop(pid)
            codes[i] = os.waitstatus_to_exitcode(status)
            if codes[i] != 0:  # a worker alone would wait for its peer forever
                for other in children:
                    os.kill(other, signal.SIGKILL)
        reply(codes=codes)


def load_runs(path: Path) -> tuple[dict[str, dict[str, np.ndarray]], dict]:
    """``({run: {variable path: array}}, info)`` from a job's npz."""
    z = np.load(path)
    runs: dict[str, dict[str, np.ndarray]] = {}
    for key in z.files:
        if key != "info":
            run, var = key.split("|", 1)
            runs.setdefault(run, {})[var] = z[key]
    return runs, json.loads(str(z["info"]))


def assert_distributed_equals_single(path: Path) -> dict:
    """2 replicas x 4 images trained the same weights as 1 device x 8 images, both phases."""
    runs, info = load_runs(path)
    assert info["replicas"] == 2 and info["stage"] == [0, 1]
    assert info["trainable_single"] == info["trainable_distributed"]
    assert "b3_conv/kernel" in info["trainable_distributed"]
    init, single = runs["init"], runs["single"]
    changed = [k for k in init if not np.array_equal(init[k], single[k])]
    assert "head/predictions/kernel" in changed and "b3_conv/kernel" in changed
    assert not any(k.startswith(("b1_", "b2_")) for k in changed)
    for key in single:
        np.testing.assert_allclose(runs["distributed"][key], single[key], rtol=1e-4, atol=1e-6,
                                   err_msg=key)
    return info


def cli(argv: str) -> int:
    """``tfx-transfer ARGV...`` (``argv``: a JSON list), as ``python -m tfx_transfer.cli`` runs
    it: its exit status (or its death by a signal, e.g. the SIGTERM ``serve`` re-raises)."""
    from tfx_transfer.cli import main

    return main(json.loads(argv))


JOBS = {"mirrored": mirrored, "worker": worker, "data_parallel": data_parallel, "cli": cli}

if __name__ == "__main__":
    job, target = sys.argv[1], sys.argv[2]
    if job == "forker":
        _forker()
    else:
        from tests.tiny_backbone import tinycam_registered

        with tinycam_registered():
            sys.exit(JOBS[job](target))
