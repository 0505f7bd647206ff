"""The main job: folder in, fine-tuned, evaluated and exported model out.

:func:`train` is what ``tfx-transfer train`` runs, as one documented call:
load the folder (:func:`tfx_transfer.load_image_folder`), build the model
(:func:`tfx_transfer.build_transfer_model`), train the head then fine-tune the top
blocks (:func:`tfx_transfer.fine_tune`, Keras progress bars), keep the best
checkpoint, evaluate it on the validation split (:func:`tfx_transfer.evaluate_model`)
and export it (:func:`tfx_transfer.export_saved_model`). The run folder::

    RUN/config.json             the resolved configuration (weights actually used, classes, ...)
    RUN/history.csv             one row per epoch: loss, accuracy, val_*, stage (0 = head
                                phase, 1 = fine-tuning), learning_rate
    RUN/best.keras              best checkpoint so far (lowest val_loss), written while training
    RUN/best.json               its epoch and monitored value
    RUN/model.keras             the final model: the best checkpoint (without optimizer state)
    RUN/metrics.json            validation metrics of model.keras (accuracy, top-k, loss,
                                per-class precision/recall/F1, confusion matrix)
    RUN/report.txt              the same as a text table
    RUN/history.png             loss and accuracy across both phases, phase boundary marked
    RUN/confusion_matrix.png    validation confusion matrix
    RUN/predictions.png         validation images, predicted vs true, misclassified first
    RUN/top_losses.png          the validation images with the highest loss, with Grad-CAM
    RUN/top_losses.csv          every validation image, worst loss first (path, true, predicted)
    RUN/lr_finder.png           with head_lr="auto": the learning-rate finder's curve
    RUN/tensorboard/            with tensorboard=True: event files (`tensorboard --logdir RUN`)
    RUN/export/1/               SavedModel (TF Serving layout), metrics in its metadata
    RUN/skipped_files.txt       files left out of the data and why (empty when none)
    RUN/test/                   metrics and plots on DATA/test/, when the folder has one
    RUN/backup/                 only while training: what ``resume=True`` continues from
    RUN/.lock                   one process per run folder (an OS lock, released on any exit)

Example:
    >>> import os, tempfile, tfx_transfer as tt
    >>> from pathlib import Path
    >>> from PIL import Image
    >>> data = Path(tempfile.mkdtemp())  # data/circle/*.png, data/square/*.png
    >>> for i in range(12):
    ...     label = data / ("circle", "square")[i % 2]
    ...     label.mkdir(exist_ok=True)
    ...     Image.new("RGB", (40, 40), (20 * i, 90, 0)).save(label / f"{i}.png")
    >>> run = os.path.join(tempfile.mkdtemp(), "shapes")
    >>> result = tt.train(data, run, backbone="vgg16", weights=None, image_size=32,
    ...                   head_epochs=1, fine_tune_epochs=1, verbose=0)
    >>> sorted(os.listdir(run))
    ['.lock', 'best.json', 'best.keras', 'config.json', 'confusion_matrix.png', 'export',
     'history.csv', 'history.png', 'metrics.json', 'model.keras', 'predictions.png',
     'report.txt', 'skipped_files.txt', 'top_losses.csv', 'top_losses.png']
    >>> os.path.relpath(result["paths"]["export"], run)
    'export/1'
"""

from __future__ import annotations

import csv
import datetime
import importlib.util
import inspect
import json
import os
import shutil
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np

from tfx_transfer.data.image_cache import choose_image_cache, parse_cache_images
from tfx_transfer.evaluation.evaluate import evaluate_model
from tfx_transfer.evaluation.metrics import format_report
from tfx_transfer.evaluation.plots import HISTORY_PNG, plot_history
from tfx_transfer.models.backbones import get_backbone
from tfx_transfer.models.saving import load_model
from tfx_transfer.runs.lock import lock_run_folder
from tfx_transfer.training.finetune import (
    DEFAULT_FINE_TUNE_EPOCHS,
    DEFAULT_FINE_TUNE_LR,
    DEFAULT_HEAD_EPOCHS,
    DEFAULT_HEAD_LR,
)

CONFIG_FILE = "config.json"
HISTORY_FILE = "history.csv"
BEST_FILE = "best.keras"
BEST_STATE_FILE = "best.json"
MODEL_FILE = "model.keras"
SKIPPED_FILE = "skipped_files.txt"
BACKUP_DIR = "backup"
EXPORT_DIR = "export"
TENSORBOARD_DIR = "tensorboard"
LR_FINDER_PNG = "lr_finder.png"
AUGMENT_PRESETS = ("none", "light", "standard", "heavy")
# The settings that define a run: train()'s arguments, the CLI's flags and config.json's keys.
RUN_SETTINGS = ("backbone", "weights", "image_size", "head_epochs", "fine_tune_epochs", "blocks",
             "augmentation", "batch_size", "head", "units", "dropout", "head_lr", "fine_tune_lr",
             "validation_split", "seed", "cache_features", "cache_images", "cache_budget_gb",
             "class_weight",
             "monitor", "top_k", "train_bn", "deterministic")


class BestModelCheckpoint(keras.callbacks.Callback):
    """Save the whole transfer model whenever the monitored value improves.

    ``ModelCheckpoint(save_best_only=True)`` saves ``self.model``, which during
    :func:`tfx_transfer.fine_tune`'s cached-features head phase is the head model
    alone (and ``fine_tune`` therefore turns feature caching off when it sees one).
    This callback always saves the ``model`` it was given, so it works in both
    phases and with cached features. The best value and epoch go to a JSON file
    next to the checkpoint, from which a resumed run continues to compare.

    Example:
        >>> import os, tempfile, numpy as np, tfx_transfer as tt
        >>> model = tt.build_transfer_model("vgg16", 2, input_shape=32, weights=None, head="avg")
        >>> x, y = np.zeros((4, 32, 32, 3), "uint8"), np.array([0, 1, 0, 1])
        >>> best = BestModelCheckpoint(model, os.path.join(tempfile.mkdtemp(), "best.keras"),
        ...                            monitor="val_loss", verbose=0)
        >>> _ = tt.fine_tune(model, (x, y), (x, y), head_epochs=1, fine_tune_epochs=0,
        ...                  callbacks=[best], verbose=0)
        >>> best.filepath.is_file(), best.state_path.is_file()
        (True, True)
    """

    def __init__(self, model: keras.Model, filepath: str | os.PathLike, monitor: str = "val_loss",
                 resume: bool = False, verbose: int = 1):
        super().__init__()
        self.full_model = model
        self.filepath = Path(filepath)
        self.state_path = self.filepath.with_name(BEST_STATE_FILE)
        self.monitor = monitor
        self.mode = "max" if "acc" in monitor or monitor.endswith("auc") else "min"
        self.verbose = verbose
        self.best: float | None = None
        self.best_epoch: int | None = None
        if resume and self.state_path.exists() and self.filepath.exists():
            state = json.loads(self.state_path.read_text())
            if state.get("monitor") == monitor:
                self.best, self.best_epoch = float(state["value"]), int(state["epoch"])

    def _improved(self, value: float) -> bool:
        if self.best is None:
            return True
        return value < self.best if self.mode == "min" else value > self.best

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        value = (logs or {}).get(self.monitor)
        if value is None:
            raise ValueError(
                f"BestModelCheckpoint monitors {self.monitor!r} but the epoch logs only have "
                f"{sorted(logs or {})}; pass validation data or monitor one of those."
            )
        value = float(value)
        if not self._improved(value):
            return
        if self.verbose:
            before = "" if self.best is None else f" (was {self.best:.4f})"
            print(f"\nEpoch {epoch + 1}: {self.monitor} {value:.4f}{before}; saving {self.filepath}")
        self.best, self.best_epoch = value, epoch
        self.full_model.save(self.filepath)
        self.state_path.write_text(json.dumps(
            {"monitor": self.monitor, "value": value, "epoch": epoch}, indent=2))


# ---------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------


def train_defaults() -> dict[str, Any]:
    """The default of every keyword argument of :func:`train` (run settings and ``verbose``).

    Example:
        >>> train_defaults()["fine_tune_lr"]
        1e-05
    """
    return {name: p.default for name, p in inspect.signature(train).parameters.items()
            if p.default is not inspect.Parameter.empty}


def _as_jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_as_jsonable(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def _normalise(name: str, value: Any) -> Any:
    if name == "image_size" and value is not None:
        size = [int(value)] * 2 if isinstance(value, (int, np.integer)) else [int(v) for v in value]
        if len(size) != 2:
            raise ValueError(f"image_size={value!r}: pass an int or (height, width).")
        return size
    if name == "augmentation":
        key = "none" if value is None else str(value).lower()
        if key not in AUGMENT_PRESETS:
            raise ValueError(f"augmentation={value!r}: choose one of {AUGMENT_PRESETS}.")
        return key
    if name == "head_lr" and isinstance(value, str):
        if value.lower() != "auto":
            raise ValueError(f"head_lr={value!r}: pass a learning rate (e.g. 1e-3) or 'auto' (the "
                             "learning-rate finder picks it).")
        return "auto"
    if name == "cache_images":
        return parse_cache_images(value)
    if name == "weights":
        return "none" if value is None else os.fspath(value) if isinstance(value, os.PathLike) else value
    return _as_jsonable(value)


def _resume_config(run: Path, given: dict[str, Any]) -> dict[str, Any]:
    """The saved configuration; an argument set to a non-default value must agree with it."""
    path = run / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"Nothing to resume in {str(run)!r}: it has no {CONFIG_FILE}. Start the run without "
            "resume (--resume) first."
        )
    config = json.loads(path.read_text())
    defaults = train_defaults()
    clashes = []
    for name in RUN_SETTINGS:
        value = _normalise(name, given[name])
        saved = config.get(f"{name}_requested", config.get(name)) if name in ("weights", "head_lr") \
            else config.get(name)
        if value != _normalise(name, defaults[name]) and value != saved:
            clashes.append(f"{name}={value!r} (the run has {saved!r})")
    if clashes:
        raise ValueError(
            f"Cannot resume {str(run)!r} with different settings: {', '.join(clashes)}. Drop "
            "those arguments (the saved config.json is reused) or start a new run folder."
        )
    return config


def _new_config(data_dir: Path, given: dict[str, Any]) -> dict[str, Any]:
    config = {name: _normalise(name, given[name]) for name in RUN_SETTINGS}
    spec = get_backbone(config["backbone"])
    config["backbone"] = spec.name
    if config["image_size"] is None:
        config["image_size"] = [spec.default_size, spec.default_size]
    budget = config["cache_budget_gb"]
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or budget < 0:
        raise ValueError(f"cache_budget_gb={budget!r} must be a number of GB >= 0.")
    if config["monitor"] not in ("val_loss", "val_accuracy"):
        raise ValueError(f"monitor={config['monitor']!r}: use 'val_loss' or 'val_accuracy'.")
    if config["class_weight"] not in (None, "balanced"):
        raise ValueError(f"class_weight={config['class_weight']!r}: use None or 'balanced'.")
    for name in ("head_epochs", "fine_tune_epochs"):
        if isinstance(config[name], bool) or not isinstance(config[name], int) or config[name] < 0:
            raise ValueError(f"{name}={config[name]!r} must be an int >= 0.")
    if config["head_epochs"] + config["fine_tune_epochs"] == 0:
        raise ValueError("head_epochs=0 and fine_tune_epochs=0: nothing to train.")
    config["data_dir"] = str(data_dir.resolve())
    return config


def _run_config(data_dir: Any, run: Path, resume: bool, given: dict[str, Any]) -> dict[str, Any]:
    """The configuration of a new run, or the saved one of the run to resume."""
    if resume:
        config = _resume_config(run, given)
        if data_dir is not None and Path(data_dir).resolve() != Path(config["data_dir"]):
            raise ValueError(f"Cannot resume {str(run)!r} on {str(data_dir)!r}: the run trains on "
                             f"{config['data_dir']!r}. Drop DATA_DIR or pass that folder.")
        return config
    if data_dir is None:
        raise ValueError("data_dir is required (None is only for resume=True).")
    if (run / CONFIG_FILE).exists():
        raise ValueError(f"{str(run)!r} already holds a run; pass resume=True (--resume) to "
                         "continue it, or choose another run folder (--out).")
    return _new_config(Path(data_dir), given)


def _has_split_folders(root: Path) -> dict[str, Path]:
    from tfx_transfer.data.folder import (
        split_folders,  # the loader's own rule for train/val/test layouts
    )

    return split_folders(root)


# ---------------------------------------------------------------------------
# Steps
# ---------------------------------------------------------------------------


def _say(verbose: Any, *lines: str) -> None:
    if verbose != 0:
        print(*lines, sep="\n", flush=True)


def _banner(text: str) -> str:
    rule = "=" * 78
    return f"{rule}\n{text}\n{rule}"


def _load_data(config: dict[str, Any], verbose: Any):
    from tfx_transfer.data.augmentation import Augmentation
    from tfx_transfer.data.folder import load_image_folder

    root = Path(config["data_dir"])
    if not root.is_dir():
        raise FileNotFoundError(f"Data folder {str(root)!r} does not exist or is not a folder.")
    split = config["validation_split"]
    splits = _has_split_folders(root)
    if "validation" in splits:
        _say(verbose, f"data: validation images from {splits['validation']} "
                      "(validation_split is not applied)")
        split = None
    elif not split:
        raise ValueError(
            f"{root} has no val/ folder and validation_split={split!r}: training needs "
            "validation images (best checkpoint, metrics). Pass validation_split=0.2 or add "
            f"{root}/val/<class>/ folders."
        )
    config["validation_split_used"] = split
    heavy = config["augmentation"] == "heavy"  # MixUp mixes labels: dataset side, one-hot labels

    def load(cache: str | None):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"Skipped \d+ file")  # train lists them itself
            return load_image_folder(
                root, image_size=config["image_size"], batch_size=config["batch_size"],
                validation_split=split, seed=config["seed"], cache_images=cache,
                label_mode="categorical" if heavy else "int",
                augmentation=Augmentation(preset="heavy", seed=config["seed"]) if heavy else None,
            )

    mode = config["cache_images"]
    if mode != "auto":
        config["cache_images_used"] = mode
        return load(None if mode == "none" else mode)
    folder = load(None)  # datasets are lazy: this lists (and verifies) the files only
    used, reason = choose_image_cache(folder.counts, config["image_size"],
                                      config["cache_budget_gb"])
    config["cache_images_used"], config["cache_images_reason"] = used, reason
    _say(verbose, f"data: cache_images=auto -> {used} ({reason})")
    return folder if used == "none" else load(used)


def _build(config: dict[str, Any], num_classes: int, verbose: Any) -> keras.Model:
    from tfx_transfer.data.augmentation import Augmentation
    from tfx_transfer.models.transfer_model import build_transfer_model
    from tfx_transfer.models.weights import WeightsUnavailableError

    in_model = config["augmentation"] in ("light", "standard")
    kwargs = dict(num_classes=num_classes, input_shape=tuple(config["image_size"]) + (3,),
                  head=config["head"], units=config["units"], dropout=config["dropout"],
                  class_names=config["class_names"])

    def build(weights: Any) -> keras.Model:
        keras.utils.set_random_seed(config["seed"])
        augmentation = Augmentation(preset=config["augmentation"], seed=config["seed"]) if in_model else None
        return build_transfer_model(config["backbone"], weights=weights, augmentation=augmentation,
                                    **kwargs)

    requested = config.get("weights_requested", config["weights"])
    weights = config["weights"]
    if weights == "auto":
        try:
            model = build("imagenet")
            config["weights"] = "imagenet"
            config["weights_note"] = "ImageNet weights were cached or downloadable"
            _say(verbose, _banner(f"WEIGHTS: ImageNet ({config['backbone']}) -- requested 'auto', "
                                  "and the ImageNet weights were available."))
        except WeightsUnavailableError as err:
            config["weights"] = "none"
            config["weights_note"] = ("ImageNet weights neither cached nor downloadable; "
                                      "trained from random initialisation")
            print(_banner(  # printed even when quiet: never a silent fallback
                f"WEIGHTS: RANDOM INITIALISATION (weights=none) -- requested 'auto', but the "
                f"ImageNet weights of {config['backbone']!r}\nare not cached and cannot be "
                "downloaded here. Expect far lower accuracy than with ImageNet weights.\n"
                f"To use them: run `tfx-transfer weights fetch {config['backbone']}` where there is "
                "network and copy the Keras cache here.\n"
                + next((line.strip() for line in str(err).splitlines() if "missing file" in line), "")),
                flush=True)
            model = build(None)
    else:
        model = build(None if weights == "none" else weights)
        what = {"imagenet": "ImageNet", "none": "RANDOM INITIALISATION (weights=none)"}.get(
            weights, f"from the file {weights}")
        _say(verbose, _banner(f"WEIGHTS: {what} ({config['backbone']})"))
    config["weights_requested"] = requested
    return model


def _find_lr(model: keras.Model, folder: Any, config: dict[str, Any], run: Path,
             verbose: Any) -> None:
    """head_lr="auto": the learning-rate finder's suggestion becomes the head-phase rate."""
    from tfx_transfer.training.lr_finder import find_head_lr

    _say(verbose, "head_lr: auto -- running the learning-rate finder on the head (backbone features "
                  "of up to 2048 training images, 100 steps)")
    result = find_head_lr(model, folder.train, batch_size=config["batch_size"], seed=config["seed"])
    result.plot(run / LR_FINDER_PNG, title=f"learning-rate finder: suggestion {result.suggestion:.2g}")
    config["head_lr_requested"] = "auto"
    config["head_lr"] = float(f"{result.suggestion:.3g}")
    config["lr_finder"] = {"suggestion": result.suggestion, "lr_min": result.lr_min,
                           "steps": len(result.lrs), "stopped": result.stopped}
    _say(verbose, f"head_lr: the finder suggests {config['head_lr']:g} ({result.stopped} after "
                  f"{len(result.lrs)} steps; curve in {run / LR_FINDER_PNG})")


def _prune_history(path: Path, keep_epochs: int) -> None:
    """Keep the rows of epochs ``< keep_epochs`` (a resumed run rewrites the rest)."""
    if not path.exists():
        return
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        return
    header, body = rows[0], rows[1:]
    index = header.index("epoch") if "epoch" in header else 0
    kept = [row for row in body if row and int(float(row[index])) < keep_epochs]
    if keep_epochs == 0 or not kept:
        path.unlink()
        return
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([header, *kept])


def _write_skipped(path: Path, skipped: Sequence[tuple[str, str]], verbose: Any) -> None:
    path.write_text("".join(f"{file}\t{reason}\n" for file, reason in skipped))
    if skipped:
        _say(verbose, f"data: skipped {len(skipped)} file(s) (listed in {path}):",
             *(f"  {file}: {reason}" for file, reason in skipped))


def _fit(model: keras.Model, folder: Any, config: dict[str, Any], run: Path, resume: bool,
         callbacks: Sequence[keras.callbacks.Callback], verbose: Any) -> BestModelCheckpoint:
    from tfx_transfer.data.folder import class_weights
    from tfx_transfer.training.callbacks import backup_epoch
    from tfx_transfer.training.finetune import fine_tune

    backup = run / BACKUP_DIR
    done = backup_epoch(backup) if resume else None
    if resume:
        _prune_history(run / HISTORY_FILE, done or 0)
        if not done:  # nothing saved to continue from: the run starts over
            for name in (BEST_FILE, BEST_STATE_FILE):
                (run / name).unlink(missing_ok=True)
        total = config["head_epochs"] + config["fine_tune_epochs"]
        _say(verbose, f"resume: continuing {run} from epoch {(done or 0) + 1} of {total}"
                      + ("" if done else " (no backup yet: starting over)"))
    elif backup.exists():
        shutil.rmtree(backup)
    best = BestModelCheckpoint(model, run / BEST_FILE, monitor=config["monitor"],
                               resume=bool(done), verbose=int(verbose != 0))
    logger = keras.callbacks.CSVLogger(str(run / HISTORY_FILE), append=bool(done))
    cache = "auto" if config["cache_features"] and config["augmentation"] != "heavy" else False
    weights = class_weights(folder) if config["class_weight"] == "balanced" else None
    with warnings.catch_warnings():
        # Keras 3.15 warns on every fit(tf.data.Dataset) that its default shuffle=True is
        # ignored; our datasets are shuffled by load_image_folder.
        warnings.filterwarnings("ignore", message=r"`shuffle=True` was passed")
        fine_tune(
            model, folder.train, folder.validation,
            head_epochs=config["head_epochs"], fine_tune_epochs=config["fine_tune_epochs"],
            blocks=config["blocks"], head_lr=config["head_lr"], fine_tune_lr=config["fine_tune_lr"],
            callbacks=[logger, best, *callbacks], cache_features=cache, backup_dir=backup,
            class_weight=weights, train_bn=config["train_bn"], verbose=verbose,
        )
    return best


def _final_model(run: Path, model: keras.Model) -> keras.Model:
    """The best checkpoint, loaded, saved again as model.keras without optimizer state."""
    best = load_model(run / BEST_FILE, compile=False)  # weights only, no optimizer
    best.transfer_config = dict(model.transfer_config)  # class names may have been added since
    best.save(run / MODEL_FILE)
    return best


def _summary(metrics: dict[str, Any]) -> dict[str, Any]:
    keys = ("num_samples", "accuracy", "top_k", "top_k_accuracy", "loss", "macro_avg")
    return {key: metrics[key] for key in keys if key in metrics}  # no top-k when k >= classes


def _evaluate_and_export(final: keras.Model, folder: Any, config: dict[str, Any], run: Path,
                         best_state: dict[str, Any], verbose: Any) -> tuple[dict, dict | None, dict]:
    """Metrics, report and plots of the final model, then its SavedModel export."""
    from tfx_transfer.evaluation.mislabeled import write_top_losses
    from tfx_transfer.export.saved_model import export_saved_model

    metrics = evaluate_model(final, folder.validation, folder.class_names, top_k=config["top_k"],
                             out=run, batch_size=config["batch_size"], verbose=False)
    files = metrics.pop("files")
    files.update(write_top_losses(final, folder.validation, run, class_names=folder.class_names,
                                  paths=[path for path, _ in folder.files["validation"]],
                                  batch_size=config["batch_size"]))
    plot_history(run / HISTORY_FILE, run / HISTORY_PNG,
                 title=f"{config['backbone']}, weights: {config['weights']}")
    test_metrics = None
    if folder.test is not None:
        test_metrics = evaluate_model(final, folder.test, folder.class_names, top_k=config["top_k"],
                                      out=run / "test", batch_size=config["batch_size"],
                                      verbose=False)
        test_metrics.pop("files")

    info = {"metrics": {"validation": _summary(metrics),
                        **({"test": _summary(test_metrics)} if test_metrics else {})},
            "training": {k: config[k] for k in ("weights", "weights_requested", "image_size",
                                                "head_epochs", "fine_tune_epochs", "blocks",
                                                "augmentation", "head_lr", "fine_tune_lr", "seed")},
            "checkpoint": best_state}
    export_path = export_saved_model(final, run / EXPORT_DIR, folder.class_names, version=1,
                                     overwrite=True, metadata=info)
    paths = {"run": str(run), "config": str(run / CONFIG_FILE), "history": str(run / HISTORY_FILE),
             "history_png": str(run / HISTORY_PNG), "best": str(run / BEST_FILE),
             "model": str(run / MODEL_FILE), "metrics": files["metrics"], "report": files["report"],
             "confusion_matrix": files["confusion_matrix"], "predictions": files["predictions"],
             "top_losses": files["top_losses_png"], "top_losses_csv": files["top_losses_csv"],
             "export": str(export_path), "skipped": str(run / SKIPPED_FILE)}
    _say(verbose, "", f"validation ({config['data_dir']}):", format_report(metrics), "",
         *(f"  {name:<17}{path}" for name, path in paths.items()))
    if test_metrics:
        _say(verbose, "", "test:", format_report(test_metrics))
    return metrics, test_metrics, paths


# ---------------------------------------------------------------------------
# The job
# ---------------------------------------------------------------------------


def train(
    data_dir: str | os.PathLike | None,
    out: str | os.PathLike,
    *,
    backbone: str = "resnet50",
    weights: str | os.PathLike | None = "imagenet",
    image_size: int | Sequence[int] | None = 224,
    head_epochs: int = DEFAULT_HEAD_EPOCHS,
    fine_tune_epochs: int = DEFAULT_FINE_TUNE_EPOCHS,
    blocks: Any = "default",
    augmentation: str | None = "standard",
    batch_size: int = 32,
    head: str = "avg",
    units: int = 256,
    dropout: float | None = None,
    head_lr: float | str = DEFAULT_HEAD_LR,
    fine_tune_lr: float = DEFAULT_FINE_TUNE_LR,
    validation_split: float | None = 0.2,
    seed: int = 1337,
    cache_features: bool = True,
    cache_images: str | os.PathLike | None = "auto",
    cache_budget_gb: float = 2.0,
    class_weight: str | None = None,
    monitor: str = "val_loss",
    top_k: int | None = None,
    train_bn: bool = False,
    deterministic: bool = False,
    resume: bool = False,
    tensorboard: bool = False,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    verbose: Any = "auto",
) -> dict[str, Any]:
    """Train, evaluate and export a transfer model from an image folder, into a run folder.

    Phase 1 trains the new head on the frozen backbone for ``head_epochs`` at
    ``head_lr``; phase 2 unfreezes ``blocks`` and fine-tunes for ``fine_tune_epochs`` at
    ``fine_tune_lr`` (:func:`tfx_transfer.fine_tune`). The checkpoint with the best
    ``monitor`` value over both phases is the final model; it is evaluated on the
    validation split and exported. See the module docstring for the run folder.

    Args:
        data_dir: a folder of class folders, or with ``train/`` + ``val/`` (+
            ``test/``) folders of them. ``None`` with ``resume=True``: the saved one.
        out: the run folder (created; one process at a time: a second one on the
            same folder fails, naming the first).
        backbone: registry name (:func:`tfx_transfer.list_backbones`).
        weights: ``"imagenet"``, ``"none"``/``None`` (random init), ``"auto"``
            (ImageNet when cached or downloadable, else random init -- said loudly
            and recorded in ``config.json``) or a backbone weights file.
        image_size: square side or ``(height, width)``; ``None``: the backbone's default.
        head_epochs, fine_tune_epochs: epochs of phase 1 (head) and phase 2 (fine-tuning).
        blocks: blocks unfrozen in phase 2: ``"default"`` (the backbone's top
            block(s)), a block name such as ``"conv5"``/``"block5"``, a list, ``"all"``,
            or an int N (top N layers with weights).
        augmentation: ``"none"``, ``"light"``, ``"standard"`` (layers at the front of
            the model, identity at inference) or ``"heavy"`` (RandAugment + MixUp
            on the training dataset, one-hot labels).
        batch_size, head, units, dropout: see :func:`tfx_transfer.build_transfer_model`.
        head_lr, fine_tune_lr: Adam learning rates of the two phases. ``head_lr="auto"``:
            the learning-rate finder (:func:`tfx_transfer.training.lr_finder.find_head_lr`) picks
            the head-phase rate first; it is recorded in ``config.json`` (``"head_lr"``,
            with ``"head_lr_requested": "auto"``) and its curve in ``lr_finder.png``.
        validation_split: fraction of each class held out when the folder has no
            ``val/`` (ignored, with a note, when it has).
        seed: seeds the split, shuffling, augmentation and initialisation.
        deterministic: also make TensorFlow's ops deterministic
            (``tf.config.experimental.enable_op_determinism``), so two runs with the
            same seed on the same machine write identical ``history.csv`` (slower
            on GPU; TensorFlow backend).
        cache_features: let phase 1 train the head on backbone features computed
            once (only without augmentation; see :func:`tfx_transfer.fine_tune`).
        cache_images: ``"auto"`` (in memory when the decoded images fit
            ``cache_budget_gb``, else streamed from disk; the choice is printed and
            saved in ``config.json`` as ``cache_images_used``), ``"memory"``,
            ``"none"``/``None`` (decode every epoch) or a folder for cache files
            (:func:`tfx_transfer.load_image_folder`).
        cache_budget_gb: memory budget of ``cache_images="auto"``, in GB of decoded
            uint8 pixels (``images * height * width * 3`` bytes).
        class_weight: ``"balanced"`` to weight classes by inverse frequency.
        monitor: ``"val_loss"`` (default) or ``"val_accuracy"`` for the best checkpoint.
        top_k: k of the reported top-k accuracy (default ``min(5, classes)``; not
            reported when ``k >= classes``).
        train_bn: also train BatchNormalization scale/offset in phase 2.
        resume: continue the interrupted run in ``out`` from its last
            completed epoch, with the configuration saved in its ``config.json``
            (arguments left at their defaults are taken from there; others must
            agree). A finished run is re-evaluated and re-exported.
        tensorboard: write TensorBoard event files to ``RUN/tensorboard/`` (both
            phases on one epoch axis; loss, accuracy, learning rate and stage per
            epoch): ``tensorboard --logdir RUN``.
        callbacks: extra Keras callbacks for both phases (e.g. ``EarlyStopping``).
        verbose: ``"auto"``/1 progress bars and messages, 2 one line per epoch, 0 quiet.

    Returns:
        ``{"metrics": validation metrics, "test_metrics": ... or None, "config":
        resolved config, "best": {"monitor", "value", "epoch"}, "paths": {name: path}}``.

    Raises:
        ValueError: bad arguments, no validation images, resuming with other
            settings, ``out`` already holding a run (without ``resume``).
        tfx_transfer.RunFolderLockedError: another process is using ``out``.
        FileNotFoundError: missing folders; nothing to resume.
        tfx_transfer.WeightsUnavailableError: ``weights="imagenet"`` offline and
            not cached (use ``"auto"`` to fall back to random init).

    Example:
        >>> import os, tempfile
        >>> from pathlib import Path
        >>> from PIL import Image
        >>> data = Path(tempfile.mkdtemp())  # data/circle/*.png, data/square/*.png
        >>> for i in range(12):
        ...     label = data / ("circle", "square")[i % 2]
        ...     label.mkdir(exist_ok=True)
        ...     Image.new("RGB", (40, 40), (20 * i, 90, 0)).save(label / f"{i}.png")
        >>> run = os.path.join(tempfile.mkdtemp(), "demo")
        >>> result = train(data, run, backbone="vgg16", weights=None, image_size=32,
        ...                head_epochs=1, fine_tune_epochs=0, verbose=0)
        >>> result["metrics"]["num_samples"], result["config"]["class_names"]  # 20% validation
        (2, ['circle', 'square'])
    """
    given = {name: value for name, value in locals().items() if name in RUN_SETTINGS}
    run = Path(out)
    _check_export_possible()  # before minutes of training, not after
    if tensorboard:
        if importlib.util.find_spec("tensorflow") is None or \
                importlib.util.find_spec("tensorboard") is None:
            raise ValueError("tensorboard=True writes its event files with TensorFlow's summary "
                             "writer, which needs the tensorboard package (TensorFlow >= 2.20 no "
                             "longer installs it): pip install tensorboard "
                             "(or tfx_transfer[tensorboard]), or drop tensorboard.")
        callbacks = [*callbacks, keras.callbacks.TensorBoard(str(run / TENSORBOARD_DIR),
                                                             write_graph=False)]
    run.mkdir(parents=True, exist_ok=True)
    with lock_run_folder(run, command="train"):
        return _train_locked(data_dir, run, resume, given, callbacks, verbose)


def _check_export_possible() -> None:
    if keras.backend.backend() != "tensorflow" and importlib.util.find_spec("tensorflow") is None:
        raise ValueError(
            f"train writes a SavedModel export, which needs TensorFlow installed (Keras backend "
            f"{keras.backend.backend()!r} trains; TensorFlow only writes the export): "
            "pip install tensorflow, or train with KERAS_BACKEND=tensorflow."
        )


def _set_determinism(config: dict[str, Any]) -> None:
    keras.utils.set_random_seed(config["seed"])
    if config["deterministic"] and keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()


def _train_locked(data_dir: Any, run: Path, resume: bool, given: dict[str, Any],
                  callbacks: Sequence[keras.callbacks.Callback], verbose: Any) -> dict[str, Any]:
    config = _run_config(data_dir, run, resume, given)
    _set_determinism(config)

    folder = _load_data(config, verbose)
    if resume and config.get("class_names") not in (None, folder.class_names):
        raise ValueError(f"The classes in {config['data_dir']} are now {folder.class_names}; the "
                         f"run was started with {config['class_names']}. Start a new run.")
    config["class_names"] = folder.class_names
    config["counts"] = folder.counts
    _write_skipped(run / SKIPPED_FILE, folder.skipped, verbose)
    model = _build(config, folder.num_classes, verbose)
    if config["head_lr"] == "auto":
        _find_lr(model, folder, config, run, verbose)

    from tfx_transfer import __version__

    config.setdefault("created", datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
    config["versions"] = {"tfx_transfer": __version__, "keras": keras.__version__,
                          "backend": keras.backend.backend()}
    if importlib.util.find_spec("tensorflow") is not None:
        import tensorflow as tf

        config["versions"]["tensorflow"] = tf.__version__
    (run / CONFIG_FILE).write_text(json.dumps(config, indent=2))
    counts = ", ".join(f"{split} {sum(c.values())}" for split, c in folder.counts.items())
    _say(verbose,
         f"run: {run}  data: {config['data_dir']} ({folder.num_classes} classes: "
         f"{', '.join(folder.class_names)}; images: {counts})",
         f"settings: backbone={config['backbone']} weights={config['weights']} "
         f"image_size={config['image_size'][0]}x{config['image_size'][1]} head={config['head']} "
         f"augment={config['augmentation']} batch_size={config['batch_size']}",
         f"phases: {config['head_epochs']} head epoch(s) at lr {config['head_lr']:g}, then "
         f"{config['fine_tune_epochs']} fine-tuning epoch(s) of {config['blocks']!r} at lr "
         f"{config['fine_tune_lr']:g}")

    state_path = run / BEST_STATE_FILE
    finished = resume and state_path.exists() and json.loads(state_path.read_text()).get("finished")
    if finished:
        _say(verbose, f"resume: training of {run} had finished; evaluating and exporting again")
    else:
        (run / MODEL_FILE).unlink(missing_ok=True)
        _fit(model, folder, config, run, resume, callbacks, verbose)
        state_path.write_text(json.dumps({**json.loads(state_path.read_text()), "finished": True},
                                         indent=2))
    best_state = json.loads(state_path.read_text())
    final = _final_model(run, model)
    _say(verbose, f"final model: best {best_state['monitor']} {best_state['value']:.4f} at epoch "
                  f"{best_state['epoch'] + 1} -> {run / MODEL_FILE}")

    metrics, test_metrics, paths = _evaluate_and_export(final, folder, config, run, best_state,
                                                         verbose)
    return {"metrics": metrics, "test_metrics": test_metrics, "config": config,
            "best": best_state, "paths": paths}
