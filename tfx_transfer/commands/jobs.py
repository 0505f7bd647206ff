"""The commands that train: ``train``, ``find-lr``, ``pretrain``, ``adapt`` and ``add-classes``.

Each calls one library function (:func:`tfx_transfer.train`,
:func:`~tfx_transfer.runs.job.find_lr_for_folder`, :func:`tfx_transfer.pretrain`,
:func:`~tfx_transfer.adaptation.run.adapt_run`,
:func:`~tfx_transfer.runs.extend.add_classes_run`) with the flags given; ``find-lr``
takes ``train``'s build settings and defaults, so it builds what ``train`` builds.

Example:
    >>> TRAIN.name, sorted(FIND_LR_RAMP)
    ('train', ['end_lr', 'num_steps', 'start_lr'])
"""

from __future__ import annotations

import argparse
from typing import Any

from tfx_transfer.commands.flags import (
    Command,
    add_options,
    blocks_arg,
    columns_arg,
    given,
    lr_arg,
    optional,
    optional_choice,
    signature_defaults,
)


def train_flags() -> dict[str, dict[str, Any]]:
    """Every setting of :func:`tfx_transfer.train` as a flag: its type and help (defaults: train's)."""
    from tfx_transfer.models.heads import HEADS
    from tfx_transfer.runs.config import MONITORS, augmentation_presets

    return {
        "backbone": dict(help="registry name: vgg16, resnet50, mobilenetv2, efficientnetb0, ... "
                         "(tfx_transfer.list_backbones())"),
        "weights": dict(metavar="imagenet|none|auto|PATH",
                        help="backbone weights: ImageNet (Keras cache; fails fast offline), none "
                        "(random init), auto (ImageNet when cached or downloadable, else random "
                        "init, stated in the output and config.json) or a weights file"),
        "image_size": dict(type=optional(int), help="square input side in pixels (none: the "
                           "backbone's default)"),
        "head_epochs": dict(type=int, help="phase 1: head-only epochs"),
        "fine_tune_epochs": dict(type=int, help="phase 2: fine-tuning epochs"),
        "blocks": dict(type=blocks_arg, help="blocks unfrozen in phase 2: default (the backbone's "
                       "top block(s)), a block name, a comma list, all, or N (top N layers with "
                       "weights)"),
        "augmentation": dict(choices=augmentation_presets(),
                             help="augmentation preset (heavy adds RandAugment and MixUp)"),
        "batch_size": dict(type=int, help="images per batch"),
        "head": dict(type=optional_choice(*HEADS), metavar="|".join(HEADS),
                     help="flatten: Flatten-Dense-Dropout-Dense; avg/max: global pooling-Dropout-"
                     "Dense; cosine: average pooling-Dropout-CosineClassifier, imprinted from the "
                     "training images before the head phase (0 epochs: the imprinted model); "
                     "spatial: Dropout-SpatialClassifier, class scores per location pooled by "
                     "log-sum-exp (none: avg, spatial for a multi-label table)"),
        "units": dict(type=int, help="hidden units of the flatten head"),
        "dropout": dict(type=optional(float), help="dropout before the classifier (none: 0.5 "
                        "flatten, 0.2 pooled heads)"),
        "head_lr": dict(type=lr_arg, help="phase 1 (head) Adam learning rate, or auto: the "
                        "learning-rate finder picks it (recorded in config.json, curve in "
                        "lr_finder.png)"),
        "fine_tune_lr": dict(type=float, help="phase 2 (fine-tuning) Adam learning rate"),
        "validation_split": dict(type=optional(float), help="fraction of each class held out for "
                                 "validation when DATA_DIR has no val/"),
        "seed": dict(type=int, help="seed of split, shuffling, augmentation, initialisation"),
        "cache_features": dict(action=argparse.BooleanOptionalAction, help="phase 1 on backbone "
                               "features computed once: --cache-features always (or an error "
                               "naming why not), --no-cache-features never; unset (auto): when "
                               "the phase allows it"),
        "cache_images": dict(type=optional(str), metavar="auto|memory|none|DIR",
                             help="cache decoded images: auto (in memory when they fit "
                             "--cache-budget-gb, else streamed; the choice is printed and saved in "
                             "config.json), memory, none (decode every epoch) or files under DIR"),
        "cache_budget_gb": dict(type=float, help="memory budget of --cache-images auto, in GB of "
                                "decoded pixels"),
        "class_weight": dict(type=optional(str), choices=(None, "balanced"),
                             metavar="none|balanced",
                             help="weight classes by inverse frequency (imbalanced data)"),
        "monitor": dict(choices=MONITORS, help="what the best checkpoint is chosen by"),
        "top_k": dict(type=optional(int), help="k of the reported top-k accuracy (none: "
                      "min(5, classes); not reported when k >= classes)"),
        "train_bn": dict(action=argparse.BooleanOptionalAction, help="also train BatchNorm in "
                         "phase 2, running the backbone in training mode"),
        "deterministic": dict(action=argparse.BooleanOptionalAction, help="deterministic "
                              "TensorFlow ops: two runs with the same seed write identical "
                              "history.csv"),
        "unknown_tpr": dict(type=float, help="share of the validation images the 'none of "
                            "these' threshold accepts as known (calibration.json)"),
        "verbose": dict(type=int, choices=(0, 1, 2), help="0 quiet, 1 progress bars, 2 one line "
                        "per epoch"),
        "images": dict(type=optional(str), metavar="DIR", help="DATA_DIR a CSV table: the folder "
                       "its file names are relative to (none: the CSV's folder)"),
        "x_col": dict(help="DATA_DIR a CSV table: the column of file names"),
        "y_col": dict(type=columns_arg, metavar="COLUMN|A,B,...", help="DATA_DIR a CSV table: the "
                      "label column, or a comma list of 0/1 columns, one per class (multi-label)"),
        "label_delim": dict(type=optional(str), metavar="DELIM", help="DATA_DIR a CSV table: split "
                            "each label cell into several classes (multi-label), e.g. ' '"),
        "valid_col": dict(type=optional(str), metavar="COLUMN", help="DATA_DIR a CSV table: a "
                          "boolean column marking the validation rows (instead of "
                          "--validation-split)"),
        "tensorboard": dict(action=argparse.BooleanOptionalAction, help="write TensorBoard event "
                            "files to RUN_DIR/tensorboard/ (view: tensorboard --logdir RUN_DIR)"),
        "tflite": dict(type=optional_choice("int8", "float16", "dynamic", "float32"),
                       metavar="int8|float16|dynamic|float32",
                       help="also write RUN_DIR/model.tflite with this quantization (int8: "
                       "calibrated on the training images), checked on the validation images"),
    }


def _add_train(p: argparse.ArgumentParser) -> None:
    from tfx_transfer.runs.job import train_defaults

    p.add_argument("data_dir", nargs="?", default=None, metavar="DATA_DIR",
                   help="folder of class folders, or with train/ and val/ (and test/) folders of "
                   "them, or a CSV table of file names and labels (--images, --x-col, --y-col) "
                   "(optional with --resume or --config)")
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="run folder to write")
    p.add_argument("--config", metavar="CONFIG_JSON", default=None,
                   help="a run's config.json: train with its settings (and its DATA_DIR unless "
                   "given); flags given beside it override it")
    p.add_argument("--resume", action="store_true",
                   help="continue the interrupted run in RUN_DIR with its saved config.json")
    # unset flags stay unset: train() (or --config, or the resumed run) supplies them
    add_options(p, train_defaults(), train_flags(), suppress=True)


def _run_train(args: argparse.Namespace) -> None:
    from tfx_transfer.runs.config import settings_of
    from tfx_transfer.runs.job import train

    settings, data_dir = settings_of(args.config) if args.config else ({}, None)
    settings.update(given(args, train_flags()))
    train(args.data_dir or data_dir, args.out, resume=args.resume, **settings)


TRAIN = Command(
    name="train",
    help="fine-tune a pretrained backbone on an image folder: train, evaluate, "
         "export",
    description="Train the new head on the frozen backbone (phase 1, "
                "--head-epochs), then unfreeze the top block(s) and fine-tune at "
                "a low learning rate (phase 2, --fine-tune-epochs). The best "
                "checkpoint (lowest val_loss) is evaluated on the validation "
                "images and exported. The run folder (--out) gets config.json, "
                "history.csv, best.keras, model.keras, metrics.json, report.txt, "
                "history.png, confusion_matrix.png, predictions.png, "
                "top_losses.png, top_losses.csv, skipped_files.txt and export/1/ "
                "(a SavedModel taking image bytes). Flags are the settings of "
                "tfx_transfer.train() and the keys of config.json.",
    add_flags=_add_train,
    run=_run_train,
    epilog="Example: tfx-transfer train photos/ --backbone resnet50 --weights "
           "imagenet --image-size 224 --head-epochs 5 --fine-tune-epochs 10 "
           "--blocks conv5 --out runs/photos. An interrupted run continues with: "
           "tfx-transfer train --resume --out runs/photos. The same settings "
           "again: tfx-transfer train --config runs/photos/config.json --out "
           "runs/again",
)


# find-lr builds what train builds: the same settings, train's defaults
FIND_LR_SETTINGS = ("backbone", "weights", "image_size", "augmentation", "head", "units",
                    "dropout", "batch_size", "validation_split", "cache_images", "seed",
                    "images", "x_col", "y_col", "label_delim", "valid_col")
FIND_LR_RAMP = {
    "start_lr": dict(type=float, help="first rate of the ramp"),
    "end_lr": dict(type=float, help="last rate of the ramp"),
    "num_steps": dict(type=int, help="steps of the ramp (at most)"),
}


def _add_find_lr(p: argparse.ArgumentParser) -> None:
    from tfx_transfer.runs.job import train_defaults
    from tfx_transfer.training.lr_finder import find_lr

    p.add_argument("data_dir", metavar="DATA_DIR", help="folder of class folders (or train/ + val/)")
    p.add_argument("--out", required=True, help="folder for lr_finder.png and lr_finder.csv")
    flags = train_flags()
    add_options(p, train_defaults(), {name: flags[name] for name in FIND_LR_SETTINGS},
                 suppress=True)
    add_options(p, signature_defaults(find_lr), FIND_LR_RAMP, suppress=True)


def _run_find_lr(args: argparse.Namespace) -> None:
    from tfx_transfer.runs.job import find_lr_for_folder

    result, files = find_lr_for_folder(args.data_dir, args.out,
                                       **given(args, [*FIND_LR_SETTINGS, *FIND_LR_RAMP]))
    print(f"suggested learning rate: {result.suggestion:.3g}  (valley; minimum/10: "
          f"{result.lr_min:.3g}; {len(result.lrs)} steps, {result.stopped})")
    print(f"  plot  {files['plot']}")
    print(f"  csv   {files['csv']}")


FIND_LR = Command(
    name="find-lr",
    help="learning-rate finder: suggest the head-phase learning rate for a folder",
    description="Build the model as 'train' would (the same settings and "
                "defaults), compute the frozen backbone's features of the "
                "training images once, ramp the head's learning rate "
                "exponentially (fastai's lr_find), stop when the loss diverges, "
                "print the suggested rate ('valley') and write OUT/lr_finder.png "
                "and OUT/lr_finder.csv.",
    add_flags=_add_find_lr,
    run=_run_find_lr,
    epilog="Example: tfx-transfer find-lr photos/ --backbone mobilenet "
           "--image-size 160 --out runs/lr, then tfx-transfer train photos/ "
           "--backbone mobilenet --image-size 160 --head-lr <the suggestion> "
           "--out runs/photos (or --head-lr auto: train runs the finder itself)",
)


ADAPT_OPTIONS = {
    "epochs": dict(type=int, help="CORAL epochs"),
    "lr": dict(type=float, help="CORAL Adam learning rate"),
    "loss_weight": dict(type=float, help="weight of the CORAL loss term"),
    "batch_size": dict(type=int, help="images per batch"),
    "seed": dict(type=int, help="seed of shuffling and initialisation"),
    "verbose": dict(type=int, choices=(0, 1, 2), help="0 quiet, 1 progress bars, 2 one line "
                    "per epoch"),
}


def _add_adapt(p: argparse.ArgumentParser) -> None:
    from tfx_transfer.adaptation.adapt import adapt
    from tfx_transfer.adaptation.run import adapt_run

    p.add_argument("run_dir", metavar="RUN_DIR", help="run folder of 'tfx-transfer train'")
    p.add_argument("target", metavar="TARGET_FOLDER",
                   help="images of the new domain (class folders optional, only for scoring)")
    p.add_argument("--out", required=True, metavar="NEW_RUN", help="run folder to write")
    add_options(p, signature_defaults(adapt_run), {
        "method": dict(choices=("default", "adabn", "coral", "adabn+coral"),
                       help="default = adabn"),
        "source": dict(metavar="DIR", help="labelled source folder (none: the run's data_dir)"),
    })
    add_options(p, signature_defaults(adapt), ADAPT_OPTIONS)


def _run_adapt(args: argparse.Namespace) -> None:
    from tfx_transfer.adaptation.run import adapt_run, format_adaptation_report

    report = adapt_run(args.run_dir, args.target, args.out, method=args.method,
                       source=args.source, **given(args, ADAPT_OPTIONS))
    print(format_adaptation_report(report))
    print(f"  {'run folder':<17}{args.out}")
    print(f"  {'export':<17}{report['export']}")


ADAPT = Command(
    name="adapt",
    help="adapt a trained run to a new domain from its unlabelled images",
    description="Unsupervised domain adaptation of RUN_DIR's model (from "
                "'tfx-transfer train') to the images of TARGET_FOLDER, whose "
                "labels are never used for it. --out gets model.keras, export/1/ "
                "(SavedModel), config.json, adaptation.json and adaptation.txt. "
                "When TARGET_FOLDER has class folders named like the model's "
                "classes, the report scores the model before and after on them "
                "(test/ or val/ when present, else all images); those labels "
                "serve only for the score. Methods: adabn (BatchNorm statistics "
                "of the target; uses the source's images, not its labels, when "
                "available), coral (Deep CORAL training on labelled source + "
                "unlabelled target), adabn+coral.",
    add_flags=_add_adapt,
    run=_run_adapt,
    epilog="Example: tfx-transfer adapt runs/photos new_camera/ --out "
           "runs/photos-new-camera",
)


def _add_add_classes(p: argparse.ArgumentParser) -> None:
    from tfx_transfer.runs.extend import add_classes_run

    p.add_argument("run_dir", metavar="RUN_DIR", help="run folder of 'tfx-transfer train'")
    p.add_argument("data", metavar="NEW_FOLDER", help="a folder of the new classes' folders (a "
                   "few images each), or train/ + val/ of them")
    p.add_argument("--out", required=True, metavar="NEW_RUN", help="run folder to write")
    add_options(p, signature_defaults(add_classes_run), {
        "top_k": dict(type=optional(int), help="k of the reported top-k accuracy (none: "
                      "min(5, classes))"),
        "verbose": dict(type=int, choices=(0, 1), help="0 quiet, 1 the report"),
    })


def _run_add_classes(args: argparse.Namespace) -> None:
    from tfx_transfer.runs.extend import add_classes_run

    add_classes_run(args.run_dir, args.data, args.out, top_k=args.top_k, verbose=args.verbose)


ADD_CLASSES = Command(
    name="add-classes",
    help="add classes to a trained run from a few images each, without training",
    description="Add the classes of NEW_FOLDER to RUN_DIR's model: each new class's "
                "classifier row is imprinted from its images (the normalised mean "
                "feature; one pass of the backbone, no training); the old classes, "
                "the backbone and the head are kept. --out gets model.keras, "
                "export/1/, config.json (every class), the report on the old run's "
                "validation images plus the new classes' images (metrics.json, "
                "report.txt, confusion_matrix.png, predictions.png, top_losses), "
                "and add_classes.json / add_classes.txt: old-class accuracy before "
                "and after, new-class accuracy. Best with --head cosine runs; Dense "
                "heads get rows on the scale of their trained rows (docs/fewshot.md).",
    add_flags=_add_add_classes,
    run=_run_add_classes,
    epilog="Example: tfx-transfer add-classes runs/photos new_things/ --out runs/photos-more",
)


PRETRAIN_OPTIONS = {
    "image_size": dict(type=optional(int), help="square input side in pixels (none: the "
                       "backbone's default size)"),
    "epochs": dict(type=int, help="training epochs"),
    "batch_size": dict(type=int, help="images per batch"),
    "lr": dict(type=float, help="peak AdamW learning rate"),
    "weight_decay": dict(type=float, help="AdamW weight decay"),
    "label_smoothing": dict(type=float, help="label smoothing of the cross-entropy"),
    "augmentation": dict(type=optional(str), metavar="none|light|standard|heavy",
                         help="augmentation preset"),
    "head": dict(choices=("avg", "max", "flatten"), help="classifier head"),
    "validation_split": dict(type=optional(float), help="fraction held out per class (none: "
                             "no split, or SOURCE has val/)"),
    "cache_images": dict(type=optional(str), metavar="auto|memory|none|DIR",
                         help="cache decoded images"),
    "seed": dict(type=int, help="seed of split, shuffling, augmentation, initialisation"),
}


def _add_pretrain(p: argparse.ArgumentParser) -> None:
    from tfx_transfer.training.pretraining import pretrain

    p.add_argument("source", help="folder of class folders (or train/ + val/)")
    p.add_argument("--backbone", required=True, help="registry name, e.g. mobilenetv2")
    p.add_argument("--out", required=True,
                   help="output folder, or a file name ending in .weights.h5")
    add_options(p, signature_defaults(pretrain), PRETRAIN_OPTIONS)
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run of the same command from its last finished "
                        "epoch (the backup lives next to the output while training)")


def _run_pretrain(args: argparse.Namespace) -> None:
    from tfx_transfer.layout import prepare_backup, pretrain_backup_dir
    from tfx_transfer.training.pretraining import output_paths, pretrain, read_pretrain_info

    backup = pretrain_backup_dir(output_paths(args.out, args.backbone)["weights"])
    note = prepare_backup(backup, args.resume)
    if note:
        print(note)
    path = pretrain(args.source, args.backbone, args.out, backup_dir=backup,
                    **given(args, PRETRAIN_OPTIONS))
    metrics = read_pretrain_info(path)["metrics"]
    shown = ", ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items()))
    print(f"{path}\n  {shown}")


PRETRAIN = Command(
    name="pretrain",
    help="train a backbone from scratch on a source folder (no ImageNet)",
    description="Train a registry backbone from random initialisation on a "
                "labelled source folder (AdamW, warmup + cosine decay, label "
                "smoothing, augmentation) and save <out>/<backbone>.weights.h5 (+"
                " .head.weights.h5, .json) for build_transfer_model(..., "
                "weights=PATH).",
    add_flags=_add_pretrain,
    run=_run_pretrain,
)
