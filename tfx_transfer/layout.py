"""The run folder's layout: every file name in one place, and its ``config.json``.

A run folder is what ``tfx-transfer train --out RUN`` (:func:`tfx_transfer.train`)
writes; ``tfx-transfer evaluate``, ``adapt`` and ``explain`` read it. Every module
that names one of its files takes the name from here, never from a string
literal. The folder (see :mod:`tfx_transfer.runs.job` for what each file holds)::

    RUN/config.json  history.csv  best.keras  best.json  model.keras  skipped_files.txt
    RUN/metrics.json  report.txt  history.png  confusion_matrix.png  predictions.png
    RUN/top_losses.png  top_losses.csv  lr_finder.png  lr_finder.csv  model.tflite  exports.json
    RUN/export/1/  RUN/test/  RUN/tensorboard/  RUN/backup/  RUN/.lock
    RUN/evaluate-<folder>/    written by ``tfx-transfer evaluate RUN FOLDER``

Pure Python: importing this module imports neither TensorFlow nor Keras.

Example:
    >>> import tempfile
    >>> run = RunFolder(tempfile.mkdtemp())
    >>> run.model.name, run.export_dir.name, run.is_run()
    ('model.keras', 'export', False)
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

# written by train
CONFIG_FILE = "config.json"
HISTORY_FILE = "history.csv"
BEST_FILE = "best.keras"
BEST_STATE_FILE = "best.json"
MODEL_FILE = "model.keras"
SKIPPED_FILE = "skipped_files.txt"
EXPORT_DIR = "export"
BACKUP_DIR = "backup"
TENSORBOARD_DIR = "tensorboard"
TEST_DIR = "test"
LR_FINDER_PNG = "lr_finder.png"
LR_FINDER_CSV = "lr_finder.csv"
HISTORY_PNG = "history.png"
# written by train(tflite=...) and `tfx-transfer export RUN ... --tflite/--onnx`
TFLITE_FILE = "model.tflite"
EXPORTS_FILE = "exports.json"  # the check figures of each .tflite/.onnx file written
CALIBRATION_FILE = "calibration.json"
RELIABILITY_PNG = "reliability.png"
UNKNOWN_SCORES_PNG = "unknown_scores.png"
# the report of an evaluation (train's validation images, RUN/test/, RUN/evaluate-<folder>/)
METRICS_FILE = "metrics.json"
REPORT_FILE = "report.txt"
CONFUSION_PNG = "confusion_matrix.png"
PREDICTIONS_PNG = "predictions.png"
TOP_LOSSES_PNG = "top_losses.png"
TOP_LOSSES_CSV = "top_losses.csv"
EVALUATE_PREFIX = "evaluate-"


@dataclasses.dataclass(frozen=True)
class RunFolder:
    """The paths of one run folder.

    Example:
        >>> run = RunFolder("runs/photos")
        >>> run.config.as_posix(), run.file("report.txt").as_posix()
        ('runs/photos/config.json', 'runs/photos/report.txt')
    """

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    def file(self, name: str) -> Path:
        """``RUN/name``."""
        return self.path / name

    config = property(lambda self: self.path / CONFIG_FILE)
    history = property(lambda self: self.path / HISTORY_FILE)
    best = property(lambda self: self.path / BEST_FILE)
    best_state = property(lambda self: self.path / BEST_STATE_FILE)
    model = property(lambda self: self.path / MODEL_FILE)
    skipped = property(lambda self: self.path / SKIPPED_FILE)
    export_dir = property(lambda self: self.path / EXPORT_DIR)
    backup = property(lambda self: self.path / BACKUP_DIR)
    tensorboard = property(lambda self: self.path / TENSORBOARD_DIR)

    def is_run(self) -> bool:
        """Whether the folder holds a trained run (``config.json`` and ``model.keras``)."""
        return self.config.is_file() and self.model.is_file()

    def read_config(self) -> dict[str, Any]:
        """The run's ``config.json``; FileNotFoundError naming the folder when it has none.

        Example:
            >>> import tempfile
            >>> run = RunFolder(tempfile.mkdtemp())
            >>> _ = run.write_config({"backbone": "vgg16"})
            >>> run.read_config()
            {'backbone': 'vgg16'}
        """
        if not self.config.is_file():
            raise FileNotFoundError(f"{str(self.path)!r} is not a run folder: it has no "
                                    f"{CONFIG_FILE} (written by 'tfx-transfer train').")
        return json.loads(self.config.read_text())

    def write_config(self, config: dict[str, Any]) -> Path:
        """Write ``config.json`` (indented JSON); returns its path."""
        self.path.mkdir(parents=True, exist_ok=True)
        self.config.write_text(json.dumps(config, indent=2))
        return self.config


def is_run_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder holding a trained run (``config.json`` + ``model.keras``).

    Example:
        >>> import tempfile
        >>> is_run_folder(tempfile.mkdtemp())
        False
    """
    return Path(path).is_dir() and RunFolder(Path(path)).is_run()


def report_dir(model: str | os.PathLike | Any, data: str | os.PathLike) -> Path:
    """Where ``tfx-transfer evaluate MODEL DATA`` writes its report by default.

    ``RUN/evaluate-<DATA name>/`` when ``model`` is a run folder, else
    ``./evaluate-<DATA name>/``.

    Example:
        >>> report_dir("model.keras", "photos/test").as_posix()
        'evaluate-test'
    """
    name = EVALUATE_PREFIX + Path(data).resolve().name
    if isinstance(model, (str, os.PathLike)) and is_run_folder(model):
        return Path(model) / name
    return Path(name)


def pretrain_backup_dir(weights_path: str | os.PathLike) -> Path:
    """The backup folder of a pretraining run that writes ``weights_path`` (``NAME.weights.h5``).

    ``.NAME.pretrain-backup`` next to the weights file: what ``tfx-transfer pretrain
    --resume`` continues from.

    Example:
        >>> pretrain_backup_dir("out/vgg16.weights.h5").as_posix()
        'out/.vgg16.pretrain-backup'
    """
    weights = Path(weights_path)
    name = weights.name.removesuffix(".weights.h5")
    return weights.with_name(f".{name}.pretrain-backup")


def prepare_backup(backup: str | os.PathLike, resume: bool) -> str | None:
    """Keep a training backup folder to resume from, or remove it to start over.

    Returns a line for the user when something worth saying happened (a backup
    removed, or nothing to resume), else ``None``.

    Example:
        >>> import tempfile
        >>> backup = Path(tempfile.mkdtemp()) / "backup"
        >>> backup.mkdir()
        >>> print(prepare_backup(backup, resume=False))
        /.../backup: a backup of an interrupted run; starting over (pass --resume to continue it)
        >>> backup.exists()
        False
    """
    import shutil

    backup = Path(backup)
    if backup.exists() and not resume:
        shutil.rmtree(backup)
        return f"{backup}: a backup of an interrupted run; starting over (pass --resume to continue it)"
    if resume and not backup.exists():
        return f"--resume: no backup at {backup}; starting from the first epoch"
    return None
