"""Shared test setup: tiny images, quiet TensorFlow, deterministic seeds, one shared tiny run.

Under ``CI=true`` (``.ci/run``) nothing skips silently: a skip fails the test unless the
test is for the other Keras backend (``make test`` runs it in the other venv) or needs
TensorFlow in the JAX venv built without it (see :func:`skip_is_by_design`).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import importlib.util
import io
import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
# Never try the network for ImageNet weights from the test suite.
os.environ.setdefault("TFX_TRANSFER_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# The "tinycam" and "tinybn" backbone fixtures, for every test module.
from tests.helpers import once_per_session  # noqa: E402
from tests.tiny_backbone import tinybn, tinycam  # noqa: E402,F401

IN_CI = os.environ.get("CI", "").lower() == "true"


# -- nothing skips silently in CI ---------------------------------------------------------


def skip_is_by_design(reason: str) -> bool:
    """True for the skips ``make test`` expects: a test for the other Keras backend (the
    other venv runs it), or a TensorFlow-only test in a venv without TensorFlow."""
    text = reason.lower()
    if "backend" in text:
        return True
    return importlib.util.find_spec("tensorflow") is None and ("tensorflow" in text or "tf." in text)


def _fail_unexpected_skip(report) -> None:
    if not IN_CI or not report.skipped or hasattr(report, "wasxfail"):
        return
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    if skip_is_by_design(reason):
        return
    report.outcome = "failed"
    report.longrepr = (f"skipped under CI=true, where nothing may skip ({reason}): install what "
                       "the test needs (.ci/run installs chromium and chromedriver; make test "
                       "builds the venvs) or fix the test")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    _fail_unexpected_skip(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    _fail_unexpected_skip(outcome.get_result())


# -- one tiny training run for the whole session --------------------------------------------


@dataclasses.dataclass(frozen=True)
class TinyRun:
    """A finished run folder (read it, never write into it: copy it first)."""

    data: Path  # class folders cats/, dogs/: 6 images each, 40 px
    run: Path  # the run folder: tinycam at 32 px, 1 head epoch + 2 fine-tuning epochs
    settings: dict  # the train() arguments
    epochs_at_kill: list  # epochs in history.csv when the first process died
    resumed_epochs: list  # epochs the resumed train() ran
    at_kill: dict  # what the killed run left: {"backup": bool, "model": bool}
    resume_output: str  # what the resumed train() printed (verbose=1)


TINY_RUN_SETTINGS = dict(backbone="tinycam", weights="none", image_size=32, head="avg",
                         augmentation="none", batch_size=4, head_epochs=1, fine_tune_epochs=2,
                         validation_split=0.34, verbose=0)


def _make_tiny_run(root: Path) -> dict:
    import keras

    from tests.helpers import write_class_folders
    from tests.tiny_backbone import tinycam_registered
    from tfx_transfer.runs.job import train

    class KillAt(keras.callbacks.Callback):
        """The process dies at the start of epoch 2 (the 2nd fine-tuning epoch)."""

        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 2:
                raise KeyboardInterrupt("simulated kill at epoch 2")

    class Record(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.epochs: list[int] = []

        def on_epoch_begin(self, epoch, logs=None):
            self.epochs.append(epoch)

    data = write_class_folders(root / "data", classes=("cats", "dogs"), per_class=6, size=40)
    run, record = root / "run", Record()
    with tinycam_registered():
        try:
            train(data, run, callbacks=[KillAt()], **TINY_RUN_SETTINGS)
            raise AssertionError("the simulated kill did not happen")
        except KeyboardInterrupt:
            pass
        with open(run / "history.csv", newline="") as f:
            epochs_at_kill = [int(row["epoch"]) for row in csv.DictReader(f)]
        at_kill = {"backup": (run / "backup").is_dir(), "model": (run / "model.keras").exists()}
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):  # settings from config.json
            train(None, run, resume=True, callbacks=[record], verbose=1)
    return dict(data=str(data), run=str(run), settings=TINY_RUN_SETTINGS,
                epochs_at_kill=epochs_at_kill, resumed_epochs=record.epochs, at_kill=at_kill,
                resume_output=printed.getvalue())


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> TinyRun:
    """One tiny ``train()`` run, killed at the start of its 2nd fine-tuning epoch and resumed.

    Made once per ``pytest`` session, shared by the xdist workers (a file lock: the
    first worker trains, the others wait and reuse the folder). For tests that need *a*
    finished run folder (``config.json``, ``model.keras``, ``export/``, metrics).
    """
    saved = once_per_session(tmp_path_factory, "tiny_run", _make_tiny_run)
    return TinyRun(**{**saved, "data": Path(saved["data"]), "run": Path(saved["run"])})
