"""The main job: folder in, fine-tuned, evaluated and exported model out.

:func:`train` is what ``tfx-transfer train`` runs, as one documented call:
load the folder (:func:`tfx_transfer.load_image_folder`), build the model
(:func:`tfx_transfer.build_transfer_model`), train the head then fine-tune the top
blocks (:func:`tfx_transfer.fine_tune`, Keras progress bars), keep the best
checkpoint, evaluate it on the validation split (:func:`tfx_transfer.runs.report.evaluate_run`)
and export it (:func:`tfx_transfer.export_saved_model`). Its steps are in
:mod:`tfx_transfer.runs.steps`, the file names in :mod:`tfx_transfer.layout`,
the settings in :mod:`tfx_transfer.runs.config`. The run folder::

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
    RUN/lr_finder.png, .csv     with head_lr="auto": the learning-rate finder's curve and steps
    RUN/tensorboard/            with tensorboard=True: event files (`tensorboard --logdir RUN`)
    RUN/export/1/               SavedModel (TF Serving layout), metrics in its metadata
    RUN/skipped_files.txt       files left out of the data and why (empty when none)
    RUN/test/                   the same report on DATA/test/, when the folder has one
    RUN/calibration.json        temperature (folded into model.keras and the export), ECE
                                before/after (on test/ when there is one), unknown threshold
    RUN/reliability.png         reliability diagram before and after temperature scaling
    RUN/backup/                 only while training: what ``resume=True`` continues from
    RUN/.lock                   one process per run folder (an OS lock, released on any exit)

Example: see :func:`train` (one run, its folder listed).
"""

from __future__ import annotations

import datetime
import importlib.util
import inspect
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import keras

from tfx_transfer.defaults import DEFAULT_SEED
from tfx_transfer.evaluation.calibration import format_calibration
from tfx_transfer.layout import RunFolder
from tfx_transfer.models.unknown_score import DEFAULT_TPR
from tfx_transfer.runs import steps
from tfx_transfer.runs.config import RUN_SETTINGS, new_config, run_config, validation_images
from tfx_transfer.runs.lock import lock_run_folder
from tfx_transfer.training.finetune import (
    DEFAULT_FINE_TUNE_EPOCHS,
    DEFAULT_FINE_TUNE_LR,
    DEFAULT_HEAD_EPOCHS,
    DEFAULT_HEAD_LR,
)

__all__ = ["RUN_SETTINGS", "find_lr_for_folder", "train", "train_defaults"]


def train_defaults() -> dict[str, Any]:
    """The default of every keyword argument of :func:`train` (run settings and ``verbose``).

    Example:
        >>> train_defaults()["fine_tune_lr"], train_defaults()["batch_size"]
        (1e-05, 32)
    """
    return {name: p.default for name, p in inspect.signature(train).parameters.items()
            if p.default is not inspect.Parameter.empty}


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
    head: str | None = None,
    units: int = 256,
    dropout: float | None = None,
    head_lr: float | str = DEFAULT_HEAD_LR,
    fine_tune_lr: float = DEFAULT_FINE_TUNE_LR,
    validation_split: float | None = 0.2,
    seed: int = DEFAULT_SEED,
    cache_features: bool | str = "auto",
    cache_images: str | os.PathLike | None = "auto",
    cache_budget_gb: float = 2.0,
    class_weight: str | None = None,
    monitor: str = "val_loss",
    top_k: int | None = None,
    train_bn: bool = False,
    deterministic: bool = False,
    unknown_tpr: float = DEFAULT_TPR,
    images: str | os.PathLike | None = None,
    x_col: str = "filename",
    y_col: str | Sequence[str] = "class",
    label_delim: str | None = None,
    valid_col: str | None = None,
    resume: bool = False,
    tensorboard: bool = False,
    tflite: str | None = None,
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
            ``test/``) folders of them, or a CSV table of file names and labels
            (:func:`tfx_transfer.load_image_table`). ``None`` with ``resume=True``: the saved one.
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
            with ``"head_lr_requested": "auto"``), its curve in ``lr_finder.png``.
        validation_split: fraction of each class held out when the folder has no
            ``val/`` (ignored, with a note, when it has).
        seed: seeds the split, shuffling, augmentation and initialisation.
        deterministic: also make TensorFlow's ops deterministic
            (``tf.config.experimental.enable_op_determinism``), so two runs with the
            same seed on the same machine write identical ``history.csv`` (slower
            on GPU; TensorFlow backend).
        unknown_tpr: the share of validation images the "none of these" threshold
            accepts as known (:func:`tfx_transfer.fit_unknown`; ``calibration.json``).
        cache_features: as in :func:`tfx_transfer.fine_tune`: ``"auto"`` trains the
            head on backbone features computed once when the head phase allows it
            (no augmentation in front of the backbone), else through the model;
            ``True`` caches or raises, naming why; ``False`` never caches.
        cache_images: ``"auto"`` (in memory when the decoded images fit
            ``cache_budget_gb``, else streamed from disk; the choice is printed and
            saved in ``config.json`` as ``cache_images_used``), ``"memory"``,
            ``"none"``/``None`` (decode every epoch) or a folder for cache files
            (:mod:`tfx_transfer.data.image_cache`).
        cache_budget_gb: memory budget of ``cache_images="auto"``, in GB of decoded
            uint8 pixels (``images * height * width * 3`` bytes).
        class_weight: ``"balanced"`` to weight classes by inverse frequency.
        monitor: ``"val_loss"`` (default) or ``"val_accuracy"`` for the best checkpoint.
        top_k: k of the reported top-k accuracy (default
            :func:`tfx_transfer.defaults.default_top_k`, ``min(5, classes)``; not reported
            when ``k >= classes``).
        train_bn: also train BatchNormalization scale/offset in phase 2.
        images, x_col, y_col, label_delim, valid_col: for a CSV ``data_dir``:
            :func:`tfx_transfer.load_image_table`'s ``directory`` (default: the CSV's
            folder), ``x_col``, ``y_col``, ``label_delim`` and ``valid_col``. With
            ``label_delim`` or a list ``y_col`` the run is multi-label: a sigmoid head,
            binary cross-entropy, per-label thresholds chosen on the validation
            images, a multi-label report (``per_label.png`` instead of the confusion
            matrix and predictions grid).
        resume: continue the interrupted run in ``out`` from its last
            completed epoch, with the configuration saved in its ``config.json``
            (arguments left at their defaults are taken from there; others must
            agree). A finished run is re-evaluated and re-exported.
        tensorboard: write TensorBoard event files to ``RUN/tensorboard/`` (both
            phases on one epoch axis; loss, accuracy, learning rate and stage per
            epoch): ``tensorboard --logdir RUN``.
        tflite: also write ``RUN/model.tflite`` with this quantization (``"int8"``: full
            integer, calibrated on the training images; ``"float16"``, ``"dynamic"``,
            ``"float32"``), checked on the validation images; its figures go to
            ``RUN/exports.json`` and the export's metadata (:func:`tfx_transfer.export_tflite`).
        callbacks: extra Keras callbacks for both phases (e.g. ``EarlyStopping``).
        verbose: ``"auto"``/1 progress bars and messages, 2 one line per epoch, 0 quiet.

    Returns:
        ``{"metrics": validation metrics, "test_metrics": ... or None, "config":
        resolved config, "best": {"monitor", "value", "epoch"}, "paths": {name: Path}}``.

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
        ...                head_epochs=1, fine_tune_epochs=0, augmentation=None, verbose=0)
        >>> result["metrics"]["num_samples"], result["config"]["class_names"]  # 20% validation
        (2, ['circle', 'square'])
        >>> sorted(os.listdir(run))
        ['.lock', 'best.json', 'best.keras', 'calibration.json', 'config.json',
         'confusion_matrix.png', 'export', 'history.csv', 'history.png', 'metrics.json',
         'model.keras', 'predictions.png', 'reliability.png', 'report.txt', 'skipped_files.txt',
         'top_losses.csv', 'top_losses.png']
        >>> result["paths"]["export"].relative_to(run).as_posix()
        'export/1'
    """
    given = {name: value for name, value in locals().items() if name in RUN_SETTINGS}
    run = RunFolder(out)
    _check_export_possible()  # before minutes of training, not after
    if tensorboard:
        if importlib.util.find_spec("tensorflow") is None or \
                importlib.util.find_spec("tensorboard") is None:
            raise ValueError("tensorboard=True writes its event files with TensorFlow's summary "
                             "writer, which needs the tensorboard package (TensorFlow >= 2.20 no "
                             "longer installs it): pip install tensorboard "
                             "(or tfx_transfer[tensorboard]), or drop tensorboard.")
        callbacks = [*callbacks, keras.callbacks.TensorBoard(str(run.tensorboard),
                                                             write_graph=False)]
    run.path.mkdir(parents=True, exist_ok=True)
    with lock_run_folder(run.path, command="train"):
        return _train_locked(data_dir, run, resume, given, callbacks, verbose, tflite)


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


def _versions() -> dict[str, str]:
    from tfx_transfer import __version__

    versions = {"tfx_transfer": __version__, "keras": keras.__version__,
                "backend": keras.backend.backend()}
    if importlib.util.find_spec("tensorflow") is not None:
        import tensorflow as tf

        versions["tensorflow"] = tf.__version__
    return versions


def _auto_head_lr(model: keras.Model, folder: Any, config: dict[str, Any], run: RunFolder,
                  verbose: Any) -> None:
    """head_lr="auto": the learning-rate finder's suggestion becomes the head-phase rate."""
    result, files = steps.suggest_head_lr(model, folder, config, run.path, verbose)
    config["head_lr_requested"] = "auto"
    config["head_lr"] = float(f"{result.suggestion:.3g}")
    config["lr_finder"] = {"suggestion": result.suggestion, "lr_min": result.lr_min,
                           "steps": len(result.lrs), "stopped": result.stopped}
    steps.say(verbose, f"head_lr: the finder suggests {config['head_lr']:g} ({result.stopped} "
                       f"after {len(result.lrs)} steps; curve in {files['plot']})")


def _announce(run: RunFolder, folder: Any, config: dict[str, Any], verbose: Any) -> None:
    counts = ", ".join(f"{split} {sum(c.values())}" for split, c in folder.counts.items())
    steps.say(
        verbose,
        f"run: {run.path}  data: {config['data_dir']} ({folder.num_classes} classes: "
        f"{', '.join(folder.class_names)}; images: {counts})",
        f"settings: backbone={config['backbone']} weights={config['weights']} "
        f"image_size={config['image_size'][0]}x{config['image_size'][1]} head={config['head']} "
        f"augmentation={config['augmentation']} batch_size={config['batch_size']}",
        f"phases: {config['head_epochs']} head epoch(s) at lr {config['head_lr']:g}, then "
        f"{config['fine_tune_epochs']} fine-tuning epoch(s) of {config['blocks']!r} at lr "
        f"{config['fine_tune_lr']:g}")


def _train_locked(data_dir: Any, run: RunFolder, resume: bool, given: dict[str, Any],
                  callbacks: Sequence[keras.callbacks.Callback], verbose: Any,
                  tflite: str | None = None) -> dict[str, Any]:
    config = run_config(data_dir, run.path, resume, given, train_defaults())
    _set_determinism(config)

    folder = steps.load_data(config, verbose)
    if resume and config.get("class_names") not in (None, folder.class_names):
        raise ValueError(f"The classes in {config['data_dir']} are now {folder.class_names}; the "
                         f"run was started with {config['class_names']}. Start a new run.")
    config["class_names"] = folder.class_names
    config["counts"] = folder.counts
    if folder.multi_label:
        config["multi_label"] = True
    steps.write_skipped(run.skipped, folder.skipped, verbose)
    model = steps.build_model(config, folder.num_classes, verbose)
    if config["head_lr"] == "auto":
        _auto_head_lr(model, folder, config, run, verbose)
    config.setdefault("created", datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
    config["versions"] = _versions()
    run.write_config(config)
    _announce(run, folder, config, verbose)

    finished = resume and run.best_state.exists() and \
        json.loads(run.best_state.read_text()).get("finished")
    if finished:
        steps.say(verbose, f"resume: training of {run.path} had finished; evaluating and "
                           "exporting again")
    else:
        run.model.unlink(missing_ok=True)
        steps.fit(model, folder, config, run, resume, callbacks, verbose)
        run.best_state.write_text(json.dumps(
            {**json.loads(run.best_state.read_text()), "finished": True}, indent=2))
    best_state = json.loads(run.best_state.read_text())
    # model.keras is written once: by _calibrate, which changes the model, when it runs
    final = steps.final_model(run, model, folder, save=not folder.files.get("validation"))
    when = "the imprinted head, before any epoch" if best_state["epoch"] < 0 else \
        f"epoch {best_state['epoch'] + 1}"
    steps.say(verbose, f"final model: best {best_state['monitor']} {best_state['value']:.4f} at "
                       f"{when} -> {run.model}")

    calibration = _calibrate(final, folder, config, run, verbose)
    exports = {}
    if tflite:
        from tfx_transfer.runs.deploy import write_run_tflite

        exports = write_run_tflite(final, folder, run, tflite, verbose)
    metrics, test_metrics, paths = steps.report_and_export(final, folder, config, run, best_state,
                                                           verbose, exports)
    if calibration:
        paths.update(calibration.pop("files"))
        with open(paths["report"], "a", encoding="utf-8") as report:
            report.write("\n" + format_calibration(calibration) + "\n")
    return {"metrics": metrics, "test_metrics": test_metrics, "config": config,
            "best": best_state, "paths": paths, "calibration": calibration}


def _calibrate(final: keras.Model, folder: Any, config: dict[str, Any], run: RunFolder,
               verbose: Any) -> dict[str, Any] | None:
    """Temperature and unknown score fitted on the run's splits (:func:`~tfx_transfer.runs.calibration.calibrate_run`)."""
    if not folder.files.get("validation"):
        steps.say(verbose, "calibration: skipped (no validation images to fit the temperature "
                           "and the unknown threshold on)")
        return None
    from tfx_transfer.runs.calibration import calibrate_run

    result = calibrate_run(final, folder, run.path, batch_size=config["batch_size"],
                           tpr=config.get("unknown_tpr", DEFAULT_TPR),  # (older runs: default)
                           validation=validation_images(config))
    final.save(run.model)
    steps.say(verbose, format_calibration(result))
    return result


def find_lr_for_folder(data_dir: str | os.PathLike, out: str | os.PathLike, *,
                       verbose: Any = "auto", **kwargs: Any) -> tuple[Any, dict[str, Path]]:
    """The learning-rate finder on the model :func:`train` would build: ``tfx-transfer find-lr``.

    Loads the folder and builds the model with :func:`train`'s steps and settings
    (its defaults for any not given: the same head, weights, image size and
    validation split), then ramps the head's learning rate on the backbone features
    of the training images (:func:`~tfx_transfer.training.lr_finder.find_head_lr`).

    Args:
        data_dir: the image folder, as for :func:`train`.
        out: folder for ``lr_finder.png`` and ``lr_finder.csv``.
        verbose: 0 quiet, else a line per step of the job.
        **kwargs: :func:`train`'s settings (``backbone``, ``weights``, ``image_size``,
            ``head``, ...) and :func:`~tfx_transfer.find_lr`'s ramp (``start_lr``,
            ``end_lr``, ``num_steps``).

    Returns:
        The finder's :class:`~tfx_transfer.training.lr_finder.LRFinderResult` and
        ``{"plot": Path, "csv": Path}``.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from PIL import Image
        >>> data = Path(tempfile.mkdtemp())
        >>> for i in range(8):
        ...     (data / f"c{i % 2}").mkdir(exist_ok=True)
        ...     Image.new("RGB", (40, 40), (200 * (i % 2), 80, 0)).save(data / f"c{i % 2}/{i}.png")
        >>> result, files = find_lr_for_folder(data, tempfile.mkdtemp(), backbone="vgg16",
        ...                                    weights=None, image_size=32, num_steps=10, verbose=0)
        >>> sorted(files), 2 <= len(result.lrs) <= 10
        (['csv', 'plot'], True)
    """
    settings = {name: kwargs.pop(name) for name in list(kwargs) if name in RUN_SETTINGS}
    config = new_config(data_dir, {**train_defaults(), **settings})
    keras.utils.set_random_seed(config["seed"])
    folder = steps.load_data(config, verbose)
    config["class_names"] = folder.class_names
    config["multi_label"] = folder.multi_label
    model = steps.build_model(config, folder.num_classes, verbose)
    return steps.suggest_head_lr(model, folder, config, out, verbose, **kwargs)
