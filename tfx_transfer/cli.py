"""``tfx-transfer``: the command-line tool, thin over the Python API.

Each sub-command calls one documented library function; its flags are that
function's keyword arguments, with the defaults read from its signature (``--help``
shows them), so the API, the CLI and ``config.json`` say the same. A command's
flags are declared only when that command is asked for (its module is imported
then), so ``tfx-transfer --help`` and ``--version`` import neither Keras nor
TensorFlow and answer at once. The ``tfx-transfer`` script enters through
:mod:`tfx_transfer_cli`, which has the package leave the registration of its Keras
objects to the command that runs (:func:`main` registers them).

TensorFlow's native start-up log (the oneDNN, CUDA and absl lines) stays off the
terminal: ``TF_CPP_MIN_LOG_LEVEL`` is set to 3 unless already set, and while a
command runs, native log lines below that level written to the process's stderr
are dropped -- TensorFlow writes some before it reads the variable. Set
``TF_CPP_MIN_LOG_LEVEL=0`` to see them all.

Example:
    $ tfx-transfer weights fetch vgg16 resnet50
    $ tfx-transfer train data_samples --backbone vgg16 --out runs/demo
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import inspect
import json
import os
import re
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # before anything imports TensorFlow


# ---------------------------------------------------------------------------
# Flags from signatures
# ---------------------------------------------------------------------------


def signature_defaults(function: Callable) -> dict[str, Any]:
    """The default of every parameter of ``function`` that has one.

    Example:
        >>> signature_defaults(lambda a, b=2, *, c="x": None)
        {'b': 2, 'c': 'x'}
    """
    return {name: p.default for name, p in inspect.signature(function).parameters.items()
            if p.default is not inspect.Parameter.empty}


def _shown(value: Any) -> str:
    return "none" if value is None else str(value)


def _add_options(p: argparse.ArgumentParser, defaults: dict[str, Any],
                 specs: dict[str, dict[str, Any]], suppress: bool = False) -> None:
    """A ``--name`` flag per spec, its default the function's (``suppress``: left unset)."""
    for name, spec in specs.items():
        if name not in defaults:
            raise TypeError(f"tfx-transfer: the flag --{name.replace('_', '-')} has no keyword "
                            f"argument {name!r} with a default in the function it calls.")
        default = defaults[name]
        p.add_argument(f"--{name.replace('_', '-')}", dest=name,
                       default=argparse.SUPPRESS if suppress else default,
                       **{**spec, "help": f"{spec['help']} (default: {_shown(default)})"})


def _given(args: argparse.Namespace, names: Iterable[str]) -> dict[str, Any]:
    return {name: getattr(args, name) for name in names if hasattr(args, name)}


def _optional(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    """A flag type that also takes ``none`` (for settings whose default is None)."""
    def parse(value: str) -> Any:
        return None if value.lower() == "none" else kind(value)
    parse.__name__ = kind.__name__
    return parse


def _lr_arg(value: str) -> float | str:
    """``--head-lr``: a float or ``auto``."""
    if value.lower() == "auto":
        return "auto"
    try:
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a learning rate; pass e.g. 1e-3 or auto") from None


def _blocks_arg(value: str) -> Any:
    """``--blocks``: a block name, ``a,b`` (a list), ``all``, ``default`` or an int N."""
    if value.isdigit():
        return int(value)
    return [v.strip() for v in value.split(",") if v.strip()] if "," in value else value


# ---------------------------------------------------------------------------
# train, find-lr
# ---------------------------------------------------------------------------


def train_flags() -> dict[str, dict[str, Any]]:
    """Every setting of :func:`tfx_transfer.train` as a flag: its type and help (defaults: train's)."""
    from tfx_transfer.runs.config import MONITORS, augmentation_presets

    return {
        "backbone": dict(help="registry name: vgg16, resnet50, mobilenetv2, efficientnetb0, ... "
                         "(tfx_transfer.list_backbones())"),
        "weights": dict(metavar="imagenet|none|auto|PATH",
                        help="backbone weights: ImageNet (Keras cache; fails fast offline), none "
                        "(random init), auto (ImageNet when cached or downloadable, else random "
                        "init, stated in the output and config.json) or a weights file"),
        "image_size": dict(type=_optional(int), help="square input side in pixels (none: the "
                           "backbone's default)"),
        "head_epochs": dict(type=int, help="phase 1: head-only epochs"),
        "fine_tune_epochs": dict(type=int, help="phase 2: fine-tuning epochs"),
        "blocks": dict(type=_blocks_arg, help="blocks unfrozen in phase 2: default (the backbone's "
                       "top block(s)), a block name, a comma list, all, or N (top N layers with "
                       "weights)"),
        "augmentation": dict(choices=augmentation_presets(),
                             help="augmentation preset (heavy adds RandAugment and MixUp)"),
        "batch_size": dict(type=int, help="images per batch"),
        "head": dict(choices=("flatten", "avg", "max"),
                     help="flatten: Flatten-Dense-Dropout-Dense; avg/max: global pooling-Dropout-Dense"),
        "units": dict(type=int, help="hidden units of the flatten head"),
        "dropout": dict(type=_optional(float), help="dropout before the classifier (none: 0.5 "
                        "flatten, 0.2 pooled heads)"),
        "head_lr": dict(type=_lr_arg, help="phase 1 (head) Adam learning rate, or auto: the "
                        "learning-rate finder picks it (recorded in config.json, curve in "
                        "lr_finder.png)"),
        "fine_tune_lr": dict(type=float, help="phase 2 (fine-tuning) Adam learning rate"),
        "validation_split": dict(type=_optional(float), help="fraction of each class held out for "
                                 "validation when DATA_DIR has no val/"),
        "seed": dict(type=int, help="seed of split, shuffling, augmentation, initialisation"),
        "cache_features": dict(action=argparse.BooleanOptionalAction, help="phase 1 on backbone "
                               "features computed once: --cache-features always (or an error "
                               "naming why not), --no-cache-features never; unset (auto): when "
                               "the phase allows it"),
        "cache_images": dict(type=_optional(str), metavar="auto|memory|none|DIR",
                             help="cache decoded images: auto (in memory when they fit "
                             "--cache-budget-gb, else streamed; the choice is printed and saved in "
                             "config.json), memory, none (decode every epoch) or files under DIR"),
        "cache_budget_gb": dict(type=float, help="memory budget of --cache-images auto, in GB of "
                                "decoded pixels"),
        "class_weight": dict(type=_optional(str), choices=(None, "balanced"),
                             metavar="none|balanced",
                             help="weight classes by inverse frequency (imbalanced data)"),
        "monitor": dict(choices=MONITORS, help="what the best checkpoint is chosen by"),
        "top_k": dict(type=_optional(int), help="k of the reported top-k accuracy (none: "
                      "min(5, classes))"),
        "train_bn": dict(action=argparse.BooleanOptionalAction, help="also train BatchNorm in "
                         "phase 2, running the backbone in training mode"),
        "deterministic": dict(action=argparse.BooleanOptionalAction, help="deterministic "
                              "TensorFlow ops: two runs with the same seed write identical "
                              "history.csv"),
        "verbose": dict(type=int, choices=(0, 1, 2), help="0 quiet, 1 progress bars, 2 one line "
                        "per epoch"),
        "tensorboard": dict(action=argparse.BooleanOptionalAction, help="write TensorBoard event "
                            "files to RUN_DIR/tensorboard/ (view: tensorboard --logdir RUN_DIR)"),
    }


def _add_train(p: argparse.ArgumentParser) -> None:
    from tfx_transfer.training.job import train_defaults

    p.add_argument("data_dir", nargs="?", default=None, metavar="DATA_DIR",
                   help="folder of class folders, or with train/ and val/ (and test/) folders of "
                   "them (optional with --resume or --config)")
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="run folder to write")
    p.add_argument("--config", metavar="CONFIG_JSON", default=None,
                   help="a run's config.json: train with its settings (and its DATA_DIR unless "
                   "given); flags given beside it override it")
    p.add_argument("--resume", action="store_true",
                   help="continue the interrupted run in RUN_DIR with its saved config.json")
    # unset flags stay unset: train() (or --config, or the resumed run) supplies them
    _add_options(p, train_defaults(), train_flags(), suppress=True)


def _run_train(args: argparse.Namespace) -> None:
    from tfx_transfer.runs.config import settings_of
    from tfx_transfer.training.job import train

    settings, data_dir = settings_of(args.config) if args.config else ({}, None)
    settings.update(_given(args, train_flags()))
    train(args.data_dir or data_dir, args.out, resume=args.resume, **settings)


# find-lr builds what train builds: the same settings, train's defaults
FIND_LR_SETTINGS = ("backbone", "weights", "image_size", "augmentation", "head", "units",
                    "dropout", "batch_size", "validation_split", "cache_images", "seed")
FIND_LR_RAMP = {
    "start_lr": dict(type=float, help="first rate of the ramp"),
    "end_lr": dict(type=float, help="last rate of the ramp"),
    "num_steps": dict(type=int, help="steps of the ramp (at most)"),
}


def _add_find_lr(p: argparse.ArgumentParser) -> None:
    from tfx_transfer.training.job import train_defaults
    from tfx_transfer.training.lr_finder import find_lr

    p.add_argument("data_dir", metavar="DATA_DIR", help="folder of class folders (or train/ + val/)")
    p.add_argument("--out", required=True, help="folder for lr_finder.png and lr_finder.csv")
    flags = train_flags()
    _add_options(p, train_defaults(), {name: flags[name] for name in FIND_LR_SETTINGS},
                 suppress=True)
    _add_options(p, signature_defaults(find_lr), FIND_LR_RAMP, suppress=True)


def _run_find_lr(args: argparse.Namespace) -> None:
    from tfx_transfer.training.job import find_lr_for_folder

    result, files = find_lr_for_folder(args.data_dir, args.out,
                                       **_given(args, [*FIND_LR_SETTINGS, *FIND_LR_RAMP]))
    print(f"suggested learning rate: {result.suggestion:.3g}  (valley; minimum/10: "
          f"{result.lr_min:.3g}; {len(result.lrs)} steps, {result.stopped})")
    print(f"  plot  {files['plot']}")
    print(f"  csv   {files['csv']}")


# ---------------------------------------------------------------------------
# evaluate, explain, predict, export
# ---------------------------------------------------------------------------

EVALUATE_OPTIONS = {
    "top_k": dict(type=_optional(int), help="k of the top-k accuracy (none: min(5, classes))"),
    "batch_size": dict(type=int, help="images per batch"),
    "max_images": dict(type=int, help="images in predictions.png"),
    "split": dict(type=_optional(str), choices=(None, "test", "val", "train", "all"),
                  metavar="test|val|train|all",
                  help="which images of DATA_DIR (none: test/, else val/, else its class "
                  "folders; training images only when asked)"),
    "tta": dict(action=argparse.BooleanOptionalAction,
                help="also score test-time augmentation (mirror + 4 shifts, probabilities "
                "averaged; 6x the inference cost), reported next to the plain metrics"),
}


def _add_evaluate(p: argparse.ArgumentParser) -> None:
    from tfx_transfer.evaluation.evaluate import evaluate_model
    from tfx_transfer.runs.report import evaluate_run

    p.add_argument("model", metavar="RUN_DIR|EXPORT_DIR|MODEL",
                   help="run folder, export folder (or version folder) or .keras file")
    p.add_argument("data", metavar="DATA_DIR", help="folder of labelled class folders")
    _add_options(p, signature_defaults(evaluate_run), {"out": dict(
        help="folder for the report (none: RUN_DIR/evaluate-<DATA_DIR name> for a run, "
        "./evaluate-<DATA_DIR name> otherwise)")})
    _add_options(p, signature_defaults(evaluate_model), EVALUATE_OPTIONS)


def _run_evaluate(args: argparse.Namespace) -> None:
    from tfx_transfer.runs.report import evaluate_run, format_evaluation

    metrics = evaluate_run(args.model, args.data, args.out, **_given(args, EVALUATE_OPTIONS))
    print(format_evaluation(metrics))


EXPLAIN_OPTIONS = {
    "top_k": dict(type=int, help="class scores shown per image"),
    "batch_size": dict(type=int, help="images per batch"),
}


def _add_explain(p: argparse.ArgumentParser) -> None:
    from tfx_transfer.evaluation.gradcam import explain_files

    p.add_argument("model", metavar="RUN_DIR|MODEL", help="run folder of 'tfx-transfer train' "
                   "or a .keras file")
    p.add_argument("images", nargs="+", metavar="IMAGE_OR_FOLDER", help="image files and/or folders")
    p.add_argument("--out", required=True, help="folder for the PNGs")
    _add_options(p, signature_defaults(explain_files), EXPLAIN_OPTIONS)


def _run_explain(args: argparse.Namespace) -> None:
    from tfx_transfer.evaluation.gradcam import explain_files

    result = explain_files(args.model, args.images, args.out, **_given(args, EXPLAIN_OPTIONS))
    width = max(len(row["path"]) for row in result["rows"])
    for row, path in zip(result["rows"], result["files"]):
        print(f"{row['path']:<{width}}  {row['predicted_class']} {row['probability']:.4f}  -> {path}")
    print(f"contact sheet: {result['contact_sheet']}")


PREDICT_OPTIONS = {
    "top_k": dict(type=_optional(int), help="classes shown per image (none: min(5, classes))"),
    "batch_size": dict(type=int, help="images per call"),
}


def _add_predict(p: argparse.ArgumentParser) -> None:
    from tfx_transfer.export.exported import predict_files

    p.add_argument("export_dir", metavar="EXPORT_DIR",
                   help="export folder (TF Serving layout) or one version folder")
    p.add_argument("images", nargs="+", help="image files and/or folders of images")
    _add_options(p, signature_defaults(predict_files), PREDICT_OPTIONS)
    p.add_argument("--json", action="store_true",
                   help='print JSON lines: {"path": ..., "top": [{"class": ..., "score": ...}]}')


def _run_predict(args: argparse.Namespace) -> int:
    from tfx_transfer.export.exported import predict_files

    skipped: list = []
    rows = predict_files(args.export_dir, args.images, skipped=skipped,
                         progress=not args.json and sys.stdout.isatty(),
                         **_given(args, PREDICT_OPTIONS))
    if args.json:
        for row in rows:
            top = [{"class": name, "score": round(score, 6)} for name, score in row["top"]]
            print(json.dumps({"path": row["path"], "top": top}))
    elif rows:
        width = max(len(row["path"]) for row in rows)
        for row in rows:
            top = "  ".join(f"{name} {score:.4f}" for name, score in row["top"])
            print(f"{row['path']:<{width}}  {top}")
    for path, reason in skipped:
        print(f"skipped {path}: {reason}", file=sys.stderr)
    if skipped or not rows:
        print(f"tfx-transfer predict: {len(skipped)} of {len(rows) + len(skipped)} input(s) "
              "could not be predicted", file=sys.stderr)
        return 1
    return 0


EXPORT_OPTIONS = {
    "version": dict(type=_optional(int), help="version number (none: the next one)"),
    "top_k": dict(type=_optional(int), help="top classes returned (none: min(5, classes))"),
    "overwrite": dict(action=argparse.BooleanOptionalAction, help="replace an existing version"),
    "crop_to_aspect_ratio": dict(action=argparse.BooleanOptionalAction,
                                 help="center-crop before resizing (use the training setting)"),
}


def _add_export(p: argparse.ArgumentParser) -> None:
    from tfx_transfer.export.saved_model import export_saved_model
    from tfx_transfer.export.tflite import export_tflite

    p.add_argument("model", help="a .keras model file (e.g. a run's model.keras)")
    p.add_argument("export_dir", metavar="EXPORT_DIR",
                   help="export folder; versions are its numbered sub-folders")
    names = p.add_mutually_exclusive_group(required=True)
    names.add_argument("--labels", help="text file with one class name a line, in label order")
    names.add_argument("--class-names", help="comma-separated class names, in label order")
    _add_options(p, signature_defaults(export_saved_model), EXPORT_OPTIONS)
    p.add_argument("--tflite", default=None, metavar="FILE",
                   help="also write a TFLite model (checked against the Keras model)")
    _add_options(p, signature_defaults(export_tflite), {"quantization": dict(
        type=_optional(str), choices=("float16", "dynamic", None), metavar="float16|dynamic|none",
        help="TFLite quantization")})


def _class_names(args: argparse.Namespace) -> list[str]:
    if args.class_names:
        return [name.strip() for name in args.class_names.split(",")]
    with open(args.labels, encoding="utf-8") as f:  # FileNotFoundError names the file
        return [line.strip() for line in f if line.strip()]


def _run_export(args: argparse.Namespace) -> None:
    from tfx_transfer.export.saved_model import export_saved_model
    from tfx_transfer.export.tflite import export_tflite
    from tfx_transfer.models.saving import load_model

    class_names = _class_names(args)
    model = load_model(args.model, compile=False)
    print(export_saved_model(model, args.export_dir, class_names, **_given(args, EXPORT_OPTIONS)))
    if args.tflite:
        report = export_tflite(model, args.tflite, quantization=args.quantization)
        print(f"{report['path']}  ({report['size_bytes'] / 1e6:.1f} MB, "
              f"{_shown(args.quantization)}, max |prob diff| {report['max_abs_diff']:.2g}, "
              f"top-1 agreement {report['top1_agreement']:.0%})")


# ---------------------------------------------------------------------------
# serve, adapt, pretrain, weights
# ---------------------------------------------------------------------------

SERVE_OPTIONS = {
    "host": dict(help="interface to listen on (0.0.0.0 for all)"),
    "port": dict(type=int, help="port (TF Serving's REST port)"),
}
SERVER_OPTIONS = {
    "max_batch_size": dict(type=int, help="most images per model call"),
    "batch_timeout_ms": dict(type=float, help="longest wait for more requests to batch after "
                             "the first"),
    "poll_interval": dict(type=float, help="seconds between looks for a new version folder "
                          "(0: never)"),
    "max_request_bytes": dict(type=int, help="larger request bodies get HTTP 413"),
}


def _add_serve(p: argparse.ArgumentParser) -> None:
    from tfx_transfer.serving.server import ModelServer, serve

    p.add_argument("export_dir", metavar="EXPORT_DIR",
                   help="folder of numbered versions (TF Serving layout)")
    p.add_argument("--model-name", required=True, help="NAME in /v1/models/NAME")
    _add_options(p, signature_defaults(serve), SERVE_OPTIONS)
    _add_options(p, signature_defaults(ModelServer), SERVER_OPTIONS)


def _run_serve(args: argparse.Namespace) -> int:
    try:
        from tfx_transfer.serving.server import serve

        serve(args.export_dir, args.model_name, **_given(args, {**SERVE_OPTIONS, **SERVER_OPTIONS}))
    except ImportError as exc:  # the [serve] extra is not installed: the message says how
        print(f"tfx-transfer serve: error: {exc}", file=sys.stderr)
        return 2
    return 0


ADAPT_OPTIONS = {
    "epochs": dict(type=int, help="CORAL epochs"),
    "lr": dict(type=float, help="CORAL Adam learning rate"),
    "batch_size": dict(type=int, help="images per batch"),
    "seed": dict(type=int, help="seed of shuffling and initialisation"),
    "verbose": dict(type=int, choices=(0, 1, 2), help="0 quiet, 1 progress bars, 2 one line "
                    "per epoch"),
}


def _add_adapt(p: argparse.ArgumentParser) -> None:
    from tfx_transfer.adaptation.adapt import adapt, adapt_run

    p.add_argument("run_dir", metavar="RUN_DIR", help="run folder of 'tfx-transfer train'")
    p.add_argument("target", metavar="TARGET_FOLDER",
                   help="images of the new domain (class folders optional, only for scoring)")
    p.add_argument("--out", required=True, metavar="NEW_RUN", help="run folder to write")
    _add_options(p, signature_defaults(adapt_run), {
        "method": dict(choices=("default", "adabn", "coral", "adabn+coral"),
                       help="default = adabn"),
        "source": dict(metavar="DIR", help="labelled source folder (none: the run's data_dir)"),
    })
    _add_options(p, signature_defaults(adapt), ADAPT_OPTIONS)


def _run_adapt(args: argparse.Namespace) -> None:
    from tfx_transfer.adaptation.adapt import adapt_run, format_adaptation_report

    report = adapt_run(args.run_dir, args.target, args.out, method=args.method,
                       source=args.source, **_given(args, ADAPT_OPTIONS))
    print(format_adaptation_report(report))
    print(f"  {'run folder':<17}{args.out}")
    print(f"  {'export':<17}{report['export']}")


PRETRAIN_OPTIONS = {
    "image_size": dict(type=_optional(int), help="square input side in pixels (none: the "
                       "backbone's default size)"),
    "epochs": dict(type=int, help="training epochs"),
    "batch_size": dict(type=int, help="images per batch"),
    "lr": dict(type=float, help="peak AdamW learning rate"),
    "weight_decay": dict(type=float, help="AdamW weight decay"),
    "label_smoothing": dict(type=float, help="label smoothing of the cross-entropy"),
    "augmentation": dict(type=_optional(str), metavar="none|light|standard|heavy",
                         help="augmentation preset"),
    "head": dict(choices=("avg", "max", "flatten"), help="classifier head"),
    "validation_split": dict(type=_optional(float), help="fraction held out per class (none: "
                             "no split, or SOURCE has val/)"),
    "cache_images": dict(type=_optional(str), metavar="auto|memory|none|DIR",
                         help="cache decoded images"),
    "seed": dict(type=int, help="seed of split, shuffling, augmentation, initialisation"),
}


def _add_pretrain(p: argparse.ArgumentParser) -> None:
    from tfx_transfer.training.pretraining import pretrain

    p.add_argument("source", help="folder of class folders (or train/ + val/)")
    p.add_argument("--backbone", required=True, help="registry name, e.g. mobilenetv2")
    p.add_argument("--out", required=True,
                   help="output folder, or a file name ending in .weights.h5")
    _add_options(p, signature_defaults(pretrain), PRETRAIN_OPTIONS)
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run of the same command from its last finished "
                        "epoch (the backup lives next to the output while training)")


def _run_pretrain(args: argparse.Namespace) -> None:
    from tfx_transfer.runs.layout import prepare_backup, pretrain_backup_dir
    from tfx_transfer.training.pretraining import output_paths, pretrain, read_pretrain_info

    backup = pretrain_backup_dir(output_paths(args.out, args.backbone)["weights"])
    note = prepare_backup(backup, args.resume)
    if note:
        print(note)
    path = pretrain(args.source, args.backbone, args.out, backup_dir=backup,
                    **_given(args, PRETRAIN_OPTIONS))
    metrics = read_pretrain_info(path)["metrics"]
    shown = ", ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items()))
    print(f"{path}\n  {shown}")


def _add_weights(p: argparse.ArgumentParser) -> None:
    from tfx_transfer.models.weights import fetch_weights

    wsub = p.add_subparsers(dest="weights_command", required=True)
    fetch = wsub.add_parser("fetch", help="download the weights of the named backbones")
    fetch.add_argument("backbones", nargs="+", help="registry names, e.g. vgg16 resnet50")
    _add_options(fetch, signature_defaults(fetch_weights), {"image_size": dict(
        type=_optional(int), help="square input side (only MobileNet variants have "
        "size-specific files; none: the backbone's default)")})
    wsub.add_parser("where", help="print the Keras cache folder")


def _run_weights(args: argparse.Namespace) -> None:
    from tfx_transfer.models.weights import fetch_weights, keras_cache_dir

    if args.weights_command == "where":
        print(keras_cache_dir())
        return
    for path in fetch_weights(args.backbones, image_size=args.image_size):
        print(path)


# ---------------------------------------------------------------------------
# The commands
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Command:
    """A sub-command: what ``--help`` says of it, its flags (declared on demand) and its run."""

    name: str
    help: str
    description: str
    add_flags: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int | None]
    epilog: str | None = None


# In the order `tfx-transfer --help` lists them.
COMMANDS = (
    Command("train", "fine-tune a pretrained backbone on an image folder: train, evaluate, export",
            "Train the new head on the frozen backbone (phase 1, --head-epochs), then unfreeze "
            "the top block(s) and fine-tune at a low learning rate (phase 2, --fine-tune-epochs). "
            "The best checkpoint (lowest val_loss) is evaluated on the validation images and "
            "exported. The run folder (--out) gets config.json, history.csv, best.keras, "
            "model.keras, metrics.json, report.txt, history.png, confusion_matrix.png, "
            "predictions.png, top_losses.png, top_losses.csv, skipped_files.txt and export/1/ (a "
            "SavedModel taking image bytes). Flags are the settings of tfx_transfer.train() and "
            "the keys of config.json.", _add_train, _run_train,
            "Example: tfx-transfer train photos/ --backbone resnet50 --weights imagenet "
            "--image-size 224 --head-epochs 5 --fine-tune-epochs 10 --blocks conv5 --out "
            "runs/photos. An interrupted run continues with: tfx-transfer train --resume --out "
            "runs/photos. The same settings again: tfx-transfer train --config "
            "runs/photos/config.json --out runs/again"),
    Command("evaluate", "evaluate a run or an exported SavedModel on a folder of labelled images",
            "Accuracy, top-k accuracy, per-class precision/recall/F1 and the confusion matrix of "
            "the model on DATA_DIR, printed as a table and written to --out with the images "
            "ranked by their loss (metrics.json, report.txt, confusion_matrix.png, "
            "predictions.png, top_losses.png, top_losses.csv). The model is a run folder of "
            "'tfx-transfer train' (its model.keras), an export folder or version folder "
            "(evaluated through the SavedModel: no Keras model needed) or a .keras file. DATA_DIR "
            "is a folder of class folders (or one with test/ or val/: that split is used); its "
            "classes are matched to the model's by name.", _add_evaluate, _run_evaluate),
    Command("weights", "manage ImageNet backbone weights (the Keras cache)",
            "Pre-fetch ImageNet (no-top) weights into the Keras cache ($KERAS_HOME/models, "
            "default ~/.keras/models) on a machine with network, then copy that folder to an "
            "offline machine.", _add_weights, _run_weights),
    Command("pretrain", "train a backbone from scratch on a source folder (no ImageNet)",
            "Train a registry backbone from random initialisation on a labelled source folder "
            "(AdamW, warmup + cosine decay, label smoothing, augmentation) and save "
            "<out>/<backbone>.weights.h5 (+ .head.weights.h5, .json) for "
            "build_transfer_model(..., weights=PATH).", _add_pretrain, _run_pretrain),
    Command("export", "export a saved .keras model as a SavedModel for TF Serving (and TFLite)",
            "Write MODEL (a .keras file) to EXPORT_DIR/<version>/ as a SavedModel whose "
            "serving_default signature takes encoded images and returns probabilities, top-k "
            "class ids, names and scores.", _add_export, _run_export),
    Command("predict", "predict images with an exported SavedModel",
            "Load EXPORT_DIR (newest version, or a version folder) written by 'tfx-transfer "
            "export' / export_saved_model() and print the top classes of each image. Folders are "
            "searched recursively; files that cannot be decoded are skipped with a warning.",
            _add_predict, _run_predict),
    Command("serve", "serve an export over TF Serving's REST API (and a drop-an-image page)",
            "Serve EXPORT_DIR (numbered version folders, as 'tfx-transfer export' / "
            "export_saved_model() write them) with TF Serving's REST API: GET /v1/models/NAME"
            "[/versions/V][/metadata], POST /v1/models/NAME[/versions/V]:predict; a page at /. "
            "Serves the highest version and picks up new ones while running; concurrent requests "
            "are micro-batched. Needs: pip install 'tfx_transfer[serve]'.", _add_serve, _run_serve),
    Command("explain", "Grad-CAM heatmaps: where in each image the predicted class came from",
            "For each image: the image, its Grad-CAM overlay (the backbone's last feature map, "
            "weighted by the gradient of the predicted class) and the top-k scores, as "
            "OUT/<image name>.png, plus OUT/contact_sheet.png with every overlay.",
            _add_explain, _run_explain,
            "Example: tfx-transfer explain runs/photos photos/val/cats --out explained"),
    Command("find-lr", "learning-rate finder: suggest the head-phase learning rate for a folder",
            "Build the model as 'train' would (the same settings and defaults), compute the "
            "frozen backbone's features of the training images once, ramp the head's learning "
            "rate exponentially (fastai's lr_find), stop when the loss diverges, print the "
            "suggested rate ('valley') and write OUT/lr_finder.png and OUT/lr_finder.csv.",
            _add_find_lr, _run_find_lr,
            "Example: tfx-transfer find-lr photos/ --backbone mobilenet --image-size 160 --out "
            "runs/lr, then tfx-transfer train photos/ --backbone mobilenet --image-size 160 "
            "--head-lr <the suggestion> --out runs/photos (or --head-lr auto: train runs the "
            "finder itself)"),
    Command("adapt", "adapt a trained run to a new domain from its unlabelled images",
            "Unsupervised domain adaptation of RUN_DIR's model (from 'tfx-transfer train') to "
            "the images of TARGET_FOLDER, whose labels are never used for it. --out gets "
            "model.keras, export/1/ (SavedModel), config.json, adaptation.json and "
            "adaptation.txt. When TARGET_FOLDER has class folders named like the model's "
            "classes, the report scores the model before and after on them (test/ or val/ when "
            "present, else all images); those labels serve only for the score. Methods: adabn "
            "(BatchNorm statistics of the target; uses the source's images, not its labels, when "
            "available), coral (Deep CORAL training on labelled source + unlabelled target), "
            "adabn+coral.", _add_adapt, _run_adapt,
            "Example: tfx-transfer adapt runs/photos new_camera/ --out runs/photos-new-camera"),
)


def build_parser(commands: Iterable[str] | None = None) -> argparse.ArgumentParser:
    """The argument parser of ``tfx-transfer``.

    Args:
        commands: the sub-commands whose flags to declare (importing their modules);
            ``None``: all of them. The others are listed by ``--help`` without flags.

    Example:
        >>> build_parser().parse_args(["weights", "where"]).weights_command
        'where'
    """
    from tfx_transfer import __version__

    wanted = {c.name for c in COMMANDS} if commands is None else set(commands)
    parser = argparse.ArgumentParser(
        prog="tfx-transfer",
        description="Image-classification transfer learning on Keras 3: train, evaluate, "
        "export and predict from a folder of class sub-folders.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        p = sub.add_parser(command.name, help=command.help, description=command.description,
                           epilog=command.epilog)
        if command.name in wanted:
            command.add_flags(p)
        p.set_defaults(func=command.run)
    return parser


def _command_in(argv: Sequence[str]) -> list[str]:
    """The sub-command named in ``argv`` (its first word that is not an option), if any."""
    first = next((arg for arg in argv if not arg.startswith("-")), None)
    return [first] if first in {c.name for c in COMMANDS} else []


# ---------------------------------------------------------------------------
# TensorFlow's native log
# ---------------------------------------------------------------------------

# absl ("I0000 00:00:1796215712.361443   14528 port.cc:153] ...") and TensorFlow's own
# ("2025-01-01 12:00:00.000000: I tensorflow/...") native log lines, and their severity
_NATIVE_LINE = re.compile(r"^(?:([IWEF])\d{4} \d\d:\d\d:\d+\.\d+\s+\d+ \S+:\d+\]|"
                          r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: ([IWEF]) \S+:\d+\])")
_SEVERITY = {"I": 0, "W": 1, "E": 2, "F": 3}
# lines of TensorFlow's start-up log without that prefix, and their severity
_NATIVE_TEXT = {"WARNING: All log messages before absl::InitializeLog() is called": 1,
                "To enable the following instructions:": 0}


def _is_native_noise(line: str, level: int) -> bool:
    """Whether ``line`` is a native log line below ``TF_CPP_MIN_LOG_LEVEL``'s ``level``."""
    match = _NATIVE_LINE.match(line)
    if match:
        return _SEVERITY[match.group(1) or match.group(2)] < level
    return any(line.startswith(text) and severity < level for text, severity in _NATIVE_TEXT.items())


def _forward(read_fd: int, write_fd: int, level: int) -> None:
    with os.fdopen(read_fd, "rb") as pipe:
        for raw in pipe:
            if not _is_native_noise(raw.decode(errors="replace"), level):
                os.write(write_fd, raw)


@contextlib.contextmanager
def quiet_native_log() -> Iterator[None]:
    """Drop TensorFlow's native log lines below ``TF_CPP_MIN_LOG_LEVEL`` from the process's stderr.

    TensorFlow's libraries log some lines (oneDNN, CUDA, absl) when they load, before
    they read ``TF_CPP_MIN_LOG_LEVEL`` (abseil-cpp#1718); this applies the level to
    them. Everything else written to stderr (Python warnings, tracebacks, other
    programs' lines) passes. A no-op when ``sys.stderr`` is not the process's own
    (a test harness, a notebook) or when the level is 0.

    Example:
        >>> with quiet_native_log():
        ...     print("passes")
        passes
    """
    level = int(os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0") or 0)
    try:
        real = sys.stderr is sys.__stderr__ and sys.stderr.fileno() == 2
    except (AttributeError, OSError, ValueError):
        real = False
    if not real or level <= 0:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    read_fd, write_fd = os.pipe()
    os.dup2(write_fd, 2)
    os.close(write_fd)
    forwarder = threading.Thread(target=_forward, args=(read_fd, saved, level), daemon=True)
    forwarder.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)  # the pipe loses its last writer: the forwarder reads to its end
        forwarder.join(timeout=5)
        if not forwarder.is_alive():
            os.close(saved)


# ---------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``tfx-transfer``; returns the exit status.

    Errors a user can fix (bad flags, missing folders, unavailable weights) print one
    clear line on stderr and exit with status 2, without a traceback.

    Example:
        >>> main(["weights", "where"])  # prints the Keras cache folder
        /.../models
        0
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    with quiet_native_log():
        args = build_parser(_command_in(argv)).parse_args(argv)
        # every custom object of the kit, so that keras.saving.load_model reads every .keras file
        importlib.import_module("tfx_transfer.models.saving")
        try:
            return int(args.func(args) or 0)
        except (ValueError, FileNotFoundError, NotADirectoryError) as exc:
            print(f"tfx-transfer {args.command}: error: {exc}", file=sys.stderr)
            return 2
        except RuntimeError as exc:
            if type(exc).__name__ not in ("WeightsUnavailableError", "RunFolderLockedError"):
                raise
            print(f"tfx-transfer {args.command}: error: {exc}", file=sys.stderr)
            return 2


if __name__ == "__main__":
    sys.exit(main())
