"""The steps of :func:`tfx_transfer.train`, each on the run's configuration (``config.json``).

:func:`load_data` (the image folder, its validation images and the decoded-image
cache), :func:`build_model` (the transfer model, with ``weights="auto"`` resolved
loudly), :func:`suggest_head_lr` (``head_lr="auto"``), :func:`fit` (both phases,
best checkpoint, history, backup for resume), :func:`final_model`,
:func:`~tfx_transfer.runs.calibration.calibrate_run` (temperature scaling, "none of
these") and :func:`report_and_export`. ``tfx-transfer find-lr`` runs the first three, so it
builds what ``train`` builds.

Example:
    >>> say(1, "data: 12 images")
    data: 12 images
"""

from __future__ import annotations

import csv
import json
import shutil
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import keras

from tfx_transfer.layout import (
    HISTORY_PNG,
    LR_FINDER_CSV,
    LR_FINDER_PNG,
    TEST_DIR,
    RunFolder,
)
from tfx_transfer.training.checkpoint import BestModelCheckpoint


def say(verbose: Any, *lines: str) -> None:
    """Print ``lines`` unless ``verbose`` is 0."""
    if verbose != 0:
        print(*lines, sep="\n", flush=True)


def _banner(text: str) -> str:
    rule = "=" * 78
    return f"{rule}\n{text}\n{rule}"


def load_data(config: dict[str, Any], verbose: Any = 1) -> Any:
    """The run's :class:`~tfx_transfer.ImageFolder`; records the split and cache used in ``config``.

    The folder's ``val/`` when it has one, else ``validation_split`` of each class;
    ``cache_images="auto"`` is decided by
    :func:`~tfx_transfer.data.image_cache.choose_image_cache` on the listed images.
    """
    from tfx_transfer.data.augmentation import Augmentation
    from tfx_transfer.data.files import split_folders
    from tfx_transfer.data.folder import load_image_folder
    from tfx_transfer.data.image_cache import choose_image_cache
    from tfx_transfer.data.table import load_image_table
    from tfx_transfer.runs.config import TABLE_SETTINGS

    root = Path(config["data_dir"])
    if not root.exists():
        raise FileNotFoundError(f"Data folder {str(root)!r} does not exist (a folder of class "
                                "folders, or a CSV table of file names and labels).")
    table = root.is_file()
    split = config["validation_split"]
    splits = {} if table else split_folders(root)  # the loader's own rule for train/val/test layouts
    if table and config.get("valid_col"):
        say(verbose, f"data: validation rows marked by {config['valid_col']!r} "
                     "(validation_split is not applied)")
        split = None
    elif "validation" in splits:
        say(verbose, f"data: validation images from {splits['validation']} "
                     "(validation_split is not applied)")
        split = None
    elif not split and table:
        raise ValueError(
            f"{root} has no validation rows (valid_col=None) and validation_split={split!r}: "
            "training needs validation images (best checkpoint, metrics). Pass "
            "validation_split=0.2 or valid_col=COLUMN (a column that is True for validation rows)."
        )
    elif not split:
        raise ValueError(
            f"{root} has no val/ folder and validation_split={split!r}: training needs "
            "validation images (best checkpoint, metrics). Pass validation_split=0.2 or add "
            f"{root}/val/<class>/ folders."
        )
    config["validation_split_used"] = split
    heavy = config["augmentation"] == "heavy"  # MixUp mixes labels: dataset side, one-hot labels

    multi = table and (config.get("label_delim") is not None or not isinstance(config.get("y_col"), str))

    def load(cache: str) -> Any:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"Skipped \d+ file")  # train lists them itself
            common = dict(
                image_size=config["image_size"], batch_size=config["batch_size"],
                validation_split=split, seed=config["seed"],
                cache_images=None if cache == "none" else cache,
                **({"cache_budget_gb": config["cache_budget_gb"]} if cache == "auto" else {}),
                label_mode=None if multi else "categorical" if heavy else "int",
                augmentation=Augmentation(preset="heavy", seed=config["seed"]) if heavy else None,
            )
            if table:
                return load_image_table(root, **{TABLE_SETTINGS[n]: config.get(n) for n in TABLE_SETTINGS},
                                        **common)
            return load_image_folder(root, **common)

    mode = config["cache_images"]
    if mode != "auto":
        config["cache_images_used"] = mode
        return load(mode)
    # the loader chooses on its image count, the run on folder.counts (a multi-label table counts
    # an image once per label): loaded again only when the two choices differ
    folder = load("auto")
    used, reason = choose_image_cache(folder.counts, config["image_size"],
                                      config["cache_budget_gb"])
    config["cache_images_used"], config["cache_images_reason"] = used, reason
    say(verbose, f"data: cache_images=auto -> {used} ({reason})")
    return folder if used == folder.cache_images_used else load(used)


def write_skipped(path: Path, skipped: Sequence[tuple[str, str]], verbose: Any = 1) -> Path:
    """``skipped_files.txt``: one ``file<TAB>reason`` line per file left out of the data."""
    path.write_text("".join(f"{file}\t{reason}\n" for file, reason in skipped))
    if skipped:
        say(verbose, f"data: skipped {len(skipped)} file(s) (listed in {path}):",
            *(f"  {file}: {reason}" for file, reason in skipped))
    return path


def _random_init(config: dict[str, Any], why: str, message: str) -> None:
    """weights='auto' resolved to random initialisation: recorded and printed, even when quiet."""
    config["weights"] = "none"
    config["weights_note"] = f"{why}; trained from random initialisation"
    print(_banner(f"WEIGHTS: RANDOM INITIALISATION (weights=none) -- requested 'auto', but "
                  f"{message}"), flush=True)  # never a silent fallback


def build_model(config: dict[str, Any], num_classes: int, verbose: Any = 1) -> keras.Model:
    """The run's transfer model; ``weights="auto"`` resolved (ImageNet, else random init, said loudly).

    Records ``weights`` (what was used), ``weights_requested``, ``weights_note`` and the
    ``head`` used (``None``: the default for the labels) in ``config``.
    """
    if num_classes < 2 and not config.get("multi_label"):
        raise ValueError(f"{config['data_dir']} has {num_classes} class(es) "
                         f"{list(config.get('class_names') or [])}: a classifier needs at least 2 "
                         "(a folder of images per class, or 2 or more values in the table's label "
                         "column).")
    from tfx_transfer.data.augmentation import Augmentation
    from tfx_transfer.models.backbones import get_backbone
    from tfx_transfer.models.transfer_model import build_transfer_model
    from tfx_transfer.models.weights import WeightsUnavailableError

    in_model = config["augmentation"] in ("light", "standard")
    kwargs = dict(num_classes=num_classes, input_shape=tuple(config["image_size"]) + (3,),
                  head=config["head"], units=config["units"], dropout=config["dropout"],
                  class_names=config.get("class_names"), multi_label=config.get("multi_label", False))

    def build(weights: Any) -> keras.Model:
        keras.utils.set_random_seed(config["seed"])
        augmentation = Augmentation(preset=config["augmentation"], seed=config["seed"]) if in_model else None
        return build_transfer_model(config["backbone"], weights=weights, augmentation=augmentation,
                                    **kwargs)

    requested = config.get("weights_requested", config["weights"])
    weights = config["weights"]
    if weights == "auto" and not get_backbone(config["backbone"]).loads_weights:
        _random_init(config, "the backbone's builder does not load ImageNet weights "
                     "(loads_weights=False)",
                     f"backbone {config['backbone']!r} is registered with loads_weights=False:\nits "
                     "builder loads no ImageNet weights. Pass weights=PATH (a weights file of this "
                     "backbone) to start from trained weights.")
        model = build(None)
    elif weights == "auto":
        try:
            model = build("imagenet")
            config["weights"] = "imagenet"
            config["weights_note"] = "ImageNet weights were cached or downloadable"
            say(verbose, _banner(f"WEIGHTS: ImageNet ({config['backbone']}) -- requested 'auto', "
                                 "and the ImageNet weights were available."))
        except WeightsUnavailableError as err:
            _random_init(config, "ImageNet weights neither cached nor downloadable",
                         f"the ImageNet weights of {config['backbone']!r}\nare not cached and cannot "
                         "be downloaded here. Expect far lower accuracy than with ImageNet weights.\n"
                         f"To use them: run `tfx-transfer weights fetch {config['backbone']}` where "
                         "there is network and copy the Keras cache here.\n"
                         + next((line.strip() for line in str(err).splitlines()
                                 if "missing file" in line), ""))
            model = build(None)
    else:
        model = build(None if weights == "none" else weights)
        what = {"imagenet": "ImageNet", "none": "RANDOM INITIALISATION (weights=none)"}.get(
            weights, f"from the file {weights}")
        say(verbose, _banner(f"WEIGHTS: {what} ({config['backbone']})"))
    config["weights_requested"] = requested
    config["head"] = model.transfer_config["head"]  # None: the default for these labels
    return model


def write_lr_finder(result: Any, out: str | Path, title: str) -> dict[str, Path]:
    """``lr_finder.png`` (the curve) and ``lr_finder.csv`` (one row per step) of a finder's result."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    plot, table = out / LR_FINDER_PNG, out / LR_FINDER_CSV
    result.plot(plot, title=title)
    with open(table, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["step", "learning_rate", "loss", "smoothed_loss"])
        writer.writerows([i, f"{lr:.6g}", f"{loss:.6f}", f"{smooth:.6f}"] for i, (lr, loss, smooth)
                         in enumerate(zip(result.lrs, result.losses, result.smoothed)))
    return {"plot": plot, "csv": table}


def suggest_head_lr(model: keras.Model, folder: Any, config: dict[str, Any], out: str | Path,
                    verbose: Any = 1, **ramp: Any) -> tuple[Any, dict[str, Path]]:
    """Run the learning-rate finder on the head (:func:`~tfx_transfer.training.lr_finder.find_head_lr`).

    Writes ``lr_finder.png`` and ``lr_finder.csv`` into ``out``; ``ramp``:
    :func:`~tfx_transfer.find_lr`'s options (``start_lr``, ``end_lr``, ``num_steps``).
    Returns the finder's result and the files written.
    """
    from tfx_transfer.training.lr_finder import find_head_lr

    say(verbose, "learning-rate finder: ramping the head's rate on the backbone features of up to "
                 "2048 training images")
    result = find_head_lr(model, folder.train, batch_size=config["batch_size"], seed=config["seed"],
                          **ramp)
    files = write_lr_finder(result, out, f"{config['backbone']}, {config['head']} head: "
                                         f"suggestion {result.suggestion:.2g}")
    return result, files


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


def fit(model: keras.Model, folder: Any, config: dict[str, Any], run: RunFolder, resume: bool,
        callbacks: Sequence[keras.callbacks.Callback], verbose: Any = 1) -> BestModelCheckpoint:
    """Both phases (:func:`tfx_transfer.fine_tune`) with the best checkpoint, history and backup.

    With ``resume``, continues from the backup's last finished epoch (history rows
    after it are dropped); without, a stale backup is removed first.
    """
    from tfx_transfer.data.folder import class_weights
    from tfx_transfer.training.callbacks import backup_epoch
    from tfx_transfer.training.finetune import fine_tune

    done = backup_epoch(run.backup) if resume else None
    if resume:
        _prune_history(run.history, done or 0)
        if not done:  # nothing saved to continue from: the run starts over
            for path in (run.best, run.best_state):
                path.unlink(missing_ok=True)
        total = config["head_epochs"] + config["fine_tune_epochs"]
        say(verbose, f"resume: continuing {run.path} from epoch {(done or 0) + 1} of {total}"
                     + ("" if done else " (no backup yet: starting over)"))
    elif run.backup.exists():
        shutil.rmtree(run.backup)
    imprinted = config["head"] == "cosine" and not done
    if imprinted:  # the head phase starts from the imprinted rows, the first checkpoint
        imprint_head(model, folder, config, run, verbose)
    best = BestModelCheckpoint(model, run.best, monitor=config["monitor"],
                               resume=bool(done) or imprinted, verbose=int(verbose != 0))
    if config["head_epochs"] + config["fine_tune_epochs"] == 0:
        return best
    logger = keras.callbacks.CSVLogger(str(run.history), append=bool(done))
    # heavy augmentation changes the images every epoch on the dataset side: nothing to cache
    cache = False if config["augmentation"] == "heavy" else config["cache_features"]
    weights = class_weights(folder) if config["class_weight"] == "balanced" else None
    with warnings.catch_warnings():
        # Keras 3.15 warns on every fit(tf.data.Dataset) that its default shuffle=True is
        # ignored; our datasets are shuffled by load_image_folder.
        warnings.filterwarnings("ignore", message=r"`shuffle=True` was passed")
        fine_tune(
            model, folder.train, folder.validation,
            head_epochs=config["head_epochs"], fine_tune_epochs=config["fine_tune_epochs"],
            blocks=config["blocks"], head_lr=config["head_lr"], fine_tune_lr=config["fine_tune_lr"],
            callbacks=[logger, best, *callbacks], cache_features=cache, backup_dir=run.backup,
            class_weight=weights, train_bn=config["train_bn"], verbose=verbose,
        )
    return best


def imprint_head(model: keras.Model, folder: Any, config: dict[str, Any], run: RunFolder,
                 verbose: Any = 1) -> dict[str, Any]:
    """A cosine head imprinted from the training images (:func:`tfx_transfer.imprint`), kept as epoch -1.

    Scores it on the validation images and writes it as the run's first best
    checkpoint (``best.keras``, ``best.json`` with ``"epoch": -1, "imprinted": true``),
    so training keeps it unless an epoch improves on it. Returns the state written.
    """
    import time

    from tfx_transfer.models.imprinting import imprint

    start = time.perf_counter()
    imprint(model, folder, batch_size=config["batch_size"])
    seconds = time.perf_counter() - start
    model.compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    scores = model.evaluate(_int_labels(folder.validation), verbose=0, return_dict=True)
    value = float(scores[config["monitor"].removeprefix("val_")])
    model.save(run.best)
    state = {"monitor": config["monitor"], "value": value, "epoch": -1, "imprinted": True,
             "imprint_seconds": round(seconds, 3)}
    run.best_state.write_text(json.dumps(state, indent=2))
    say(verbose, f"imprint: cosine head set from the training images' mean features in "
                 f"{seconds:.1f} s; {config['monitor']} {value:.4f}, val_accuracy "
                 f"{scores['accuracy']:.4f}")
    return state


def _int_labels(dataset: Any) -> Any:
    """``(images, labels)`` batches with integer labels (one-hot rows -> argmax)."""
    import tensorflow as tf

    def fix(images: Any, labels: Any) -> Any:
        return images, tf.argmax(labels, axis=-1) if labels.shape.rank == 2 else labels

    return dataset.map(fix)


def final_model(run: RunFolder, model: keras.Model, folder: Any = None, save: bool = True) -> keras.Model:
    """The best checkpoint, loaded, saved again (unless ``save=False``: ``train`` saves it once
    calibrated) as ``model.keras`` without optimizer state; a multi-label model's thresholds
    chosen again for it on ``folder``'s validation images."""
    from tfx_transfer.evaluation.multilabel import fit_thresholds, is_multi_label
    from tfx_transfer.models.saving import load_model

    best = load_model(run.best, compile=False)  # weights only, no optimizer
    best.transfer_config = dict(model.transfer_config)  # class names may have been added since
    if is_multi_label(best) and folder is not None and folder.validation is not None:
        fit_thresholds(best, folder)
    if save:
        best.save(run.model)
    return best


def _summary(metrics: dict[str, Any]) -> dict[str, Any]:
    keys = ("num_samples", "accuracy", "top_k", "top_k_accuracy", "loss", "macro_avg",
            "mAP", "micro_f1", "macro_f1")
    return {key: metrics[key] for key in keys if key in metrics}


def report_and_export(final: keras.Model, folder: Any, config: dict[str, Any], run: RunFolder,
                      best_state: dict[str, Any], verbose: Any = 1,
                      exports: dict[str, dict] | None = None,
                      ) -> tuple[dict, dict | None, dict[str, Path]]:
    """The run's report (validation images, and ``test/`` when the folder has one), then its export.

    ``exports``: reports of files written beside it (``{"tflite": ...}``), recorded in the
    export's metadata.

    Returns the validation metrics, the test metrics (or ``None``) and ``{name: path}``
    of the run's files.
    """
    from tfx_transfer.evaluation.plots import plot_history
    from tfx_transfer.export.saved_model import export_saved_model
    from tfx_transfer.runs.config import validation_images
    from tfx_transfer.runs.report import evaluate_run
    from tfx_transfer.runs.report import format_metrics as format_report

    def report(split: str, out: Path) -> dict[str, Any]:
        return evaluate_run(final, getattr(folder, split), out, class_names=folder.class_names,
                            paths=[path for path, _ in folder.files[split]],
                            top_k=config["top_k"], batch_size=config["batch_size"], verbose=False)

    metrics = report("validation", run.path)
    files = metrics.pop("files")
    if run.history.exists():  # a cosine head imprinted without epochs has no history
        plot_history(run.history, run.file(HISTORY_PNG),
                     title=f"{config['backbone']}, weights: {config['weights']}")
    test_metrics = None
    if folder.test is not None:
        test_metrics = report("test", run.file(TEST_DIR))
        test_metrics.pop("files")

    info = {"metrics": {"validation": _summary(metrics),
                        **({"test": _summary(test_metrics)} if test_metrics else {})},
            "training": {k: config[k] for k in ("weights", "weights_requested", "image_size",
                                                "head_epochs", "fine_tune_epochs", "blocks",
                                                "augmentation", "head_lr", "fine_tune_lr", "seed")},
            "checkpoint": best_state, **(exports or {})}
    export_path = export_saved_model(final, run.export_dir, folder.class_names, version=1,
                                     overwrite=True, metadata=info)
    paths = {"run": run.path, "config": run.config, "history": run.history,
             "history_png": run.file(HISTORY_PNG), "best": run.best, "model": run.model,
             **{name: files[key] for name, key in (  # a multi-label report: per_label, no confusion
                 ("metrics", "metrics"), ("report", "report"), ("confusion_matrix", "confusion_matrix"),
                 ("predictions", "predictions"), ("per_label", "per_label"), ("top_losses",
                 "top_losses_png"), ("top_losses_csv", "top_losses_csv")) if key in files},
             "export": Path(export_path), "skipped": run.skipped,
             **{kind: Path(report["path"]) for kind, report in (exports or {}).items()
                if report["path"]}}
    if not run.history.exists():
        del paths["history"], paths["history_png"]
    say(verbose, "", f"validation ({validation_images(config)}):", format_report(metrics), "",
        *(f"  {name:<17}{path}" for name, path in paths.items()))
    if test_metrics:
        say(verbose, "", "test:", format_report(test_metrics))
    return metrics, test_metrics, paths
