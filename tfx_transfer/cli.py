"""``tfx-transfer``: the command-line tool (thin over the Python API).

Each sub-command is a pair of functions here: ``_add_<name>(subparsers)`` declares
its flags, ``_run_<name>(args)`` calls the documented Python function that does
the work. Heavy imports happen inside ``_run_*`` so ``--help`` is instant.

Example:
    $ tfx-transfer weights fetch vgg16 resnet50
    $ tfx-transfer train data_samples --backbone vgg16 --out runs/demo
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any


def _add_weights(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "weights",
        help="manage ImageNet backbone weights (the Keras cache)",
        description="Pre-fetch ImageNet (no-top) weights into the Keras cache "
        "($KERAS_HOME/models, default ~/.keras/models) on a machine with network, then copy "
        "that folder to an offline machine.",
    )
    wsub = p.add_subparsers(dest="weights_command", required=True)
    fetch = wsub.add_parser("fetch", help="download the weights of the named backbones")
    fetch.add_argument("backbones", nargs="+", help="registry names, e.g. vgg16 resnet50")
    fetch.add_argument("--input-size", type=int, default=None,
                       help="input size (only MobileNet variants have size-specific files)")
    wsub.add_parser("where", help="print the Keras cache folder")
    p.set_defaults(func=_run_weights)


def _run_weights(args: argparse.Namespace) -> int:
    from tfx_transfer.models.weights import fetch_weights, keras_cache_dir

    if args.weights_command == "where":
        print(keras_cache_dir())
        return 0
    for path in fetch_weights(args.backbones, input_size=args.input_size):
        print(path)
    return 0


def _add_pretrain(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pretrain",
        help="train a backbone from scratch on a source folder (no ImageNet)",
        description="Train a registry backbone from random initialisation on a labelled source "
        "folder (AdamW, warmup + cosine decay, label smoothing 0.1, 'standard' augmentation) and "
        "save <out>/<backbone>.weights.h5 (+ .head.weights.h5, .json) for "
        "build_transfer_model(..., weights=PATH).",
    )
    p.add_argument("source", help="folder of class folders (or train/ + val/)")
    p.add_argument("--backbone", required=True, help="registry name, e.g. mobilenetv2")
    p.add_argument("--out", required=True,
                   help="output folder, or a file name ending in .weights.h5")
    p.add_argument("--image-size", type=int, default=None,
                   help="square input side in pixels (default: the backbone's default size)")
    p.add_argument("--epochs", type=int, default=30, help="training epochs (default 30)")
    p.add_argument("--batch-size", type=int, default=32, help="batch size (default 32)")
    p.add_argument("--lr", type=float, default=1e-3, help="peak AdamW learning rate (default 1e-3)")
    p.add_argument("--weight-decay", type=float, default=0.05, help="AdamW weight decay (default 0.05)")
    p.add_argument("--label-smoothing", type=float, default=0.1, help="default 0.1")
    p.add_argument("--augmentation", default="standard",
                   help="augmentation preset: none, light, standard (default), heavy")
    p.add_argument("--head", default="avg", choices=("avg", "max", "flatten"))
    p.add_argument("--validation-split", type=float, default=0.1,
                   help="fraction held out per class (default 0.1; 0 for none or when SOURCE has val/)")
    p.add_argument("--cache-images", default=None,
                   help="'memory' or a folder for decoded-image cache files (default: none)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run of the same command from its last finished "
                        "epoch (the backup lives next to the output while training)")
    p.set_defaults(func=_run_pretrain)


def _run_pretrain(args: argparse.Namespace) -> int:
    from tfx_transfer.training.pretraining import output_paths, pretrain, read_pretrain_info

    weights = output_paths(args.out, args.backbone)["weights"]
    backup = weights.with_name(f".{weights.name[: -len('.weights.h5')]}.pretrain-backup")
    if backup.exists() and not args.resume:
        print(f"{backup}: a backup of an interrupted run; starting over (pass --resume to continue it)")
        shutil.rmtree(backup)
    elif args.resume and not backup.exists():
        print(f"--resume: no backup at {backup}; starting from the first epoch")
    path = pretrain(
        args.source, args.backbone, args.out, image_size=args.image_size, epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
        label_smoothing=args.label_smoothing,
        augmentation=args.augmentation,
        head=args.head, validation_split=args.validation_split or None,
        cache_images=args.cache_images, seed=args.seed,
        backup_dir=backup,
    )
    metrics = read_pretrain_info(path)["metrics"]
    shown = ", ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items()))
    print(f"{path}\n  {shown}")
    return 0


def _add_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict",
        help="predict images with an exported SavedModel",
        description="Load EXPORT_DIR (newest version, or a version folder) written by "
        "'tfx-transfer export' / export_saved_model() and print the top classes of each image. "
        "Folders are searched recursively; files that cannot be decoded are skipped with a warning.",
    )
    p.add_argument("export_dir", help="export folder (TF Serving layout) or one version folder")
    p.add_argument("images", nargs="+", help="image files and/or folders of images")
    p.add_argument("--top-k", type=int, default=None,
                   help="classes shown per image (default min(5, classes))")
    p.add_argument("--batch-size", type=int, default=32, help="images per call (default 32)")
    p.add_argument("--json", action="store_true",
                   help='print JSON lines: {"path": ..., "top": [{"class": ..., "score": ...}]}')
    p.set_defaults(func=_run_predict)


def _run_predict(args: argparse.Namespace) -> int:
    import json

    from tfx_transfer.export.exported import predict_files

    skipped: list = []
    rows = predict_files(args.export_dir, args.images, top_k=args.top_k,
                         batch_size=args.batch_size, skipped=skipped,
                         progress=not args.json and sys.stdout.isatty())
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


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export a saved .keras model as a SavedModel for TF Serving (and TFLite)",
        description="Write MODEL (a .keras file) to EXPORT_DIR/<version>/ as a SavedModel whose "
        "serving_default signature takes encoded images (JPEG/PNG/GIF/BMP/WebP bytes) and returns "
        "probabilities, top-k class ids, names and scores.",
    )
    p.add_argument("model", help="a .keras model file (e.g. from 'tfx-transfer train')")
    p.add_argument("export_dir", help="export folder; versions are its numbered sub-folders")
    names = p.add_mutually_exclusive_group(required=True)
    names.add_argument("--labels", help="text file with one class name a line, in label order")
    names.add_argument("--class-names", help="comma-separated class names, in label order")
    p.add_argument("--version", type=int, default=None, help="version number (default: next)")
    p.add_argument("--top-k", type=int, default=None, help="top classes returned (default min(5, C))")
    p.add_argument("--overwrite", action="store_true", help="replace an existing version")
    p.add_argument("--crop-to-aspect-ratio", action="store_true",
                   help="center-crop before resizing (use the training setting)")
    p.add_argument("--tflite", default=None, metavar="FILE",
                   help="also write a TFLite model (checked against the Keras model)")
    p.add_argument("--quantization", default="float16", choices=("float16", "dynamic", "none"),
                   help="TFLite quantization (default float16)")
    p.set_defaults(func=_run_export)


def _run_export(args: argparse.Namespace) -> int:
    from pathlib import Path

    if not Path(args.model).is_file():
        raise FileNotFoundError(f"model file {args.model!r} does not exist.")
    if args.labels:
        if not Path(args.labels).is_file():
            raise FileNotFoundError(f"labels file {args.labels!r} does not exist.")
        class_names = [line.strip() for line in Path(args.labels).read_text(encoding="utf-8").splitlines()]
        class_names = [name for name in class_names if name]
    else:
        class_names = [name.strip() for name in args.class_names.split(",")]

    from tfx_transfer.export.saved_model import export_saved_model
    from tfx_transfer.export.tflite import export_tflite
    from tfx_transfer.models.saving import load_model

    model = load_model(args.model, compile=False)
    path = export_saved_model(model, args.export_dir, class_names, version=args.version,
                              top_k=args.top_k, overwrite=args.overwrite,
                              crop_to_aspect_ratio=args.crop_to_aspect_ratio)
    print(path)
    if args.tflite:
        quantization = None if args.quantization == "none" else args.quantization
        report = export_tflite(model, args.tflite, quantization=quantization)
        print(f"{report['path']}  ({report['size_bytes'] / 1e6:.1f} MB, {args.quantization}, "
              f"max |prob diff| {report['max_abs_diff']:.2g}, top-1 agreement "
              f"{report['top1_agreement']:.0%})")
    return 0


def _lr_arg(value: str):
    """``--head-lr``: a float or ``auto``."""
    if value.lower() == "auto":
        return "auto"
    try:
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a learning rate; pass e.g. 1e-3 or auto") from None


def _blocks_arg(value: str):
    """``--blocks``: a block name, ``a,b`` (a list), ``all``, ``default`` or an int N."""
    if value.isdigit():
        return int(value)
    return [v.strip() for v in value.split(",") if v.strip()] if "," in value else value


def _optional(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    """A flag type that also takes ``none`` (for settings whose default is None)."""
    def parse(value: str) -> Any:
        return None if value.lower() == "none" else kind(value)
    parse.__name__ = kind.__name__
    return parse


# Every setting of tfx_transfer.train, with its flag's type and help. Defaults come from
# train()'s signature (shown by --help), so the API, the CLI and config.json agree.
TRAIN_FLAGS: dict[str, dict[str, Any]] = {
    "backbone": dict(help="registry name: vgg16, resnet50, mobilenetv2, efficientnetb0, ... "
                     "(tfx_transfer.list_backbones())"),
    "weights": dict(metavar="imagenet|none|auto|PATH",
                    help="backbone weights: ImageNet (Keras cache; fails fast offline), none "
                    "(random init), auto (ImageNet when cached or downloadable, else random init, "
                    "stated in the output and config.json) or a weights file"),
    "image_size": dict(type=_optional(int), help="square input side in pixels (none: the "
                       "backbone's default)"),
    "head_epochs": dict(type=int, help="phase 1: head-only epochs"),
    "fine_tune_epochs": dict(type=int, help="phase 2: fine-tuning epochs"),
    "blocks": dict(type=_blocks_arg, help="blocks unfrozen in phase 2: default (the backbone's "
                   "top block(s)), a block name, a comma list, all, or N (top N layers with weights)"),
    "augmentation": dict(choices=("none", "light", "standard", "heavy"),
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
    "cache_features": dict(action=argparse.BooleanOptionalAction, help="train phase 1 on backbone "
                           "features computed once (only without augmentation)"),
    "cache_images": dict(type=_optional(str), metavar="auto|memory|none|DIR",
                         help="cache decoded images: auto (in memory when they fit "
                         "--cache-budget-gb, else streamed; the choice is printed and saved in "
                         "config.json), memory, none (decode every epoch) or files under DIR"),
    "cache_budget_gb": dict(type=float, help="memory budget of --cache-images auto, in GB of "
                            "decoded pixels"),
    "class_weight": dict(type=_optional(str), choices=(None, "balanced"), metavar="none|balanced",
                         help="weight classes by inverse frequency (imbalanced data)"),
    "monitor": dict(choices=("val_loss", "val_accuracy"), help="what the best checkpoint is "
                    "chosen by"),
    "top_k": dict(type=_optional(int), help="k of the reported top-k accuracy (none: "
                  "min(5, classes); not reported when k >= classes)"),
    "train_bn": dict(action=argparse.BooleanOptionalAction, help="also train BatchNorm in phase 2, "
                     "running the backbone in training mode"),
    "deterministic": dict(action=argparse.BooleanOptionalAction, help="deterministic TensorFlow "
                          "ops: two runs with the same seed write identical history.csv"),
    "verbose": dict(type=int, choices=(0, 1, 2), help="0 quiet, 1 progress bars, 2 one line per "
                    "epoch"),
    "tensorboard": dict(action=argparse.BooleanOptionalAction, help="write TensorBoard event "
                        "files to RUN_DIR/tensorboard/ (view: tensorboard --logdir RUN_DIR)"),
}


def _add_train(sub: argparse._SubParsersAction) -> None:
    from tfx_transfer.training.job import RUN_SETTINGS, train_defaults

    missing = sorted(set(RUN_SETTINGS) - set(TRAIN_FLAGS))
    assert not missing, f"train() settings without a CLI flag: {missing}"
    p = sub.add_parser(
        "train",
        help="fine-tune a pretrained backbone on an image folder: train, evaluate, export",
        description="Train the new head on the frozen backbone (phase 1, --head-epochs), then "
        "unfreeze the top block(s) and fine-tune at a low learning rate (phase 2, "
        "--fine-tune-epochs). The best checkpoint (lowest val_loss) is evaluated on the "
        "validation images and exported. The run folder (--out) gets config.json, history.csv, "
        "best.keras, model.keras, metrics.json, report.txt, history.png, confusion_matrix.png, "
        "predictions.png, top_losses.png, top_losses.csv, skipped_files.txt and export/1/ (a "
        "SavedModel taking image bytes). "
        "Flags are the settings of tfx_transfer.train() and the keys of config.json.",
        epilog="Example: tfx-transfer train photos/ --backbone resnet50 --weights imagenet "
        "--image-size 224 --head-epochs 5 --fine-tune-epochs 10 --blocks conv5 --out runs/photos. "
        "An interrupted run continues with: tfx-transfer train --resume --out runs/photos. "
        "The same settings again: tfx-transfer train --config runs/photos/config.json --out runs/again",
    )
    p.add_argument("data_dir", nargs="?", default=None, metavar="DATA_DIR",
                   help="folder of class folders, or with train/ and val/ (and test/) folders of "
                   "them (optional with --resume or --config)")
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="run folder to write")
    p.add_argument("--config", metavar="CONFIG_JSON", default=None,
                   help="a run's config.json: train with its settings (and its DATA_DIR unless "
                   "given); flags given beside it override it")
    p.add_argument("--resume", action="store_true",
                   help="continue the interrupted run in RUN_DIR with its saved config.json")
    defaults = train_defaults()
    for name, spec in TRAIN_FLAGS.items():
        shown = defaults[name]
        shown = "none" if shown is None else shown
        p.add_argument(f"--{name.replace('_', '-')}", dest=name, default=argparse.SUPPRESS,
                       **{**spec, "help": f"{spec['help']} (default: {shown})"})
    p.set_defaults(func=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    import json

    from tfx_transfer.training.job import RUN_SETTINGS, train

    settings: dict[str, Any] = {}
    data_dir = args.data_dir
    if args.config:
        path = Path(args.config)
        if not path.is_file():
            raise FileNotFoundError(f"--config {args.config!r} does not exist (a run's config.json).")
        saved = json.loads(path.read_text())
        settings = {name: saved[name] for name in RUN_SETTINGS if name in saved}
        data_dir = data_dir or saved.get("data_dir")
    settings.update({name: getattr(args, name) for name in TRAIN_FLAGS if hasattr(args, name)})
    train(data_dir, args.out, resume=args.resume, **settings)
    return 0


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="evaluate a run or an exported SavedModel on a folder of labelled images",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Accuracy, top-k accuracy, per-class precision/recall/F1 and the confusion "
        "matrix of SOURCE on TEST_DIR, printed as a table and written to --out (metrics.json, "
        "report.txt, confusion_matrix.png, predictions.png). SOURCE is a run folder of "
        "'tfx-transfer train' (its model.keras), an export folder or version folder (evaluated "
        "through the SavedModel: no Keras model needed) or a .keras file. TEST_DIR is a folder of "
        "class folders (or one with test/ or val/: that split is used); its classes are matched "
        "to the model's by name.",
    )
    p.add_argument("source", metavar="RUN_DIR|EXPORT_DIR", help="run folder, export folder or .keras file")
    p.add_argument("test_dir", metavar="TEST_DIR", help="folder of labelled class folders")
    p.add_argument("--top-k", type=int, default=None,
                   help="k of the top-k accuracy (default min(5, classes); not reported when k >= "
                        "classes)")
    p.add_argument("--out", default=None,
                   help="folder for the report files (default: RUN_DIR/evaluate-<TEST_DIR name> "
                   "for a run, ./evaluate-<TEST_DIR name> otherwise)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-images", type=int, default=16, help="images in predictions.png")
    p.add_argument("--split", choices=("test", "val", "train", "all"), default=None,
                   help="which images of TEST_DIR (default: test/, else val/, else its class "
                   "folders; training images only when asked)")
    p.add_argument("--tta", action="store_true",
                   help="also score test-time augmentation (mirror + 4 shifts, probabilities "
                   "averaged; 6x the inference cost), reported next to the plain metrics")
    p.set_defaults(func=_run_evaluate)


def _run_evaluate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from tfx_transfer.evaluation.evaluate import evaluate_model
    from tfx_transfer.evaluation.metrics import format_report

    source, test_dir = Path(args.source), Path(args.test_dir)
    if not source.exists():
        raise FileNotFoundError(f"{args.source!r} does not exist (a run folder, export folder or "
                                ".keras file).")
    if not test_dir.is_dir():
        raise FileNotFoundError(f"test folder {args.test_dir!r} does not exist.")
    name = f"evaluate-{test_dir.resolve().name}"
    is_run = (source / "config.json").is_file() and (source / "model.keras").is_file()
    out = Path(args.out) if args.out else (source / name if is_run else Path(name))
    from tfx_transfer.evaluation.evaluate import load_for_evaluation
    from tfx_transfer.evaluation.mislabeled import write_top_losses
    from tfx_transfer.evaluation.tta import format_tta

    metrics = evaluate_model(source, test_dir, top_k=args.top_k, out=out,
                             batch_size=args.batch_size, max_images=args.max_images,
                             split=args.split, tta=args.tta)
    model, class_names = load_for_evaluation(source)  # the same images, ranked by their loss
    metrics["files"].update(write_top_losses(model, test_dir, out, class_names=class_names,
                                             batch_size=args.batch_size, split=args.split))
    print(format_report(metrics))
    if args.tta:
        print()
        print(format_tta(metrics, metrics["tta"]))
    print()
    for label, path in metrics["files"].items():
        print(f"  {label:<17}{path}")
    return 0


def _add_explain(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "explain",
        help="Grad-CAM heatmaps: where in each image the predicted class came from",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="For each image: the image, its Grad-CAM overlay (the backbone's last "
        "feature map, weighted by the gradient of the predicted class) and the top-k scores, as "
        "OUT/<image name>.png, plus OUT/contact_sheet.png with every overlay.",
        epilog="Example: tfx-transfer explain runs/photos photos/val/cats --out explained",
    )
    p.add_argument("run", metavar="RUN_DIR", help="run folder of 'tfx-transfer train' or a .keras file")
    p.add_argument("images", nargs="+", metavar="IMAGE_OR_FOLDER", help="image files and/or folders")
    p.add_argument("--out", required=True, help="folder for the PNGs")
    p.add_argument("--top-k", type=int, default=None,
                   help="class scores shown per image (default min(5, classes))")
    p.add_argument("--batch-size", type=int, default=16)
    p.set_defaults(func=_run_explain)


def _run_explain(args: argparse.Namespace) -> int:
    from pathlib import Path

    from tfx_transfer.evaluation.gradcam import explain_files

    if not Path(args.run).exists():
        raise FileNotFoundError(f"{args.run!r} does not exist (a run folder or .keras file).")
    result = explain_files(args.run, args.images, args.out, top_k=args.top_k,
                           batch_size=args.batch_size)
    width = max(len(row["path"]) for row in result["rows"])
    for row, path in zip(result["rows"], result["files"]):
        print(f"{row['path']:<{width}}  {row['predicted_class']} {row['probability']:.4f}  -> {path}")
    print(f"contact sheet: {result['contact_sheet']}")
    return 0


def _add_find_lr(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "find-lr",
        help="learning-rate finder: suggest the head-phase learning rate for a folder",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Build the model as 'train' would, compute the frozen backbone's features "
        "of the training images once, ramp the head's learning rate exponentially (fastai's "
        "lr_find), stop when the loss diverges, print the suggested rate ('valley') and write "
        "OUT/lr_finder.png and OUT/lr_finder.csv.",
        epilog="Example: tfx-transfer find-lr photos/ --backbone mobilenet --image-size 160 "
        "--out runs/lr && tfx-transfer train photos/ --lr auto ...",
    )
    p.add_argument("data_dir", metavar="DATA_DIR", help="folder of class folders (or train/ + val/)")
    p.add_argument("--out", required=True, help="folder for lr_finder.png and lr_finder.csv")
    p.add_argument("--backbone", default="resnet50", help="registry name")
    p.add_argument("--weights", default="imagenet", metavar="imagenet|none|PATH",
                   help="backbone weights")
    p.add_argument("--image-size", type=int, default=224, help="square input side in pixels")
    p.add_argument("--head", default="flatten", choices=("flatten", "avg", "max"))
    p.add_argument("--units", type=int, default=256, help="hidden units of the flatten head")
    p.add_argument("--dropout", type=float, default=None, help="dropout before the classifier")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--start-lr", type=float, default=1e-7, help="first rate of the ramp")
    p.add_argument("--end-lr", type=float, default=10.0, help="last rate of the ramp")
    p.add_argument("--num-steps", type=int, default=100, help="steps of the ramp (at most)")
    p.set_defaults(func=_run_find_lr)


def _run_find_lr(args: argparse.Namespace) -> int:
    import csv
    from pathlib import Path

    if not Path(args.data_dir).is_dir():
        raise FileNotFoundError(f"data folder {args.data_dir!r} does not exist.")
    import keras

    from tfx_transfer.data.folder import load_image_folder
    from tfx_transfer.models.transfer_model import build_transfer_model
    from tfx_transfer.training.lr_finder import find_head_lr

    folder = load_image_folder(args.data_dir, image_size=args.image_size,
                               batch_size=args.batch_size, seed=args.seed)
    keras.utils.set_random_seed(args.seed)
    weights = None if args.weights.lower() == "none" else args.weights
    model = build_transfer_model(args.backbone, folder.num_classes, input_shape=args.image_size,
                                 weights=weights, head=args.head, units=args.units,
                                 dropout=args.dropout)
    result = find_head_lr(model, folder.train, start_lr=args.start_lr, end_lr=args.end_lr,
                          num_steps=args.num_steps, batch_size=args.batch_size, seed=args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result.plot(out / "lr_finder.png",
                title=f"{args.backbone}, {args.head} head: suggestion {result.suggestion:.2g}")
    with open(out / "lr_finder.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["step", "learning_rate", "loss", "smoothed_loss"])
        writer.writerows([i, f"{lr:.6g}", f"{loss:.6f}", f"{smooth:.6f}"] for i, (lr, loss, smooth)
                         in enumerate(zip(result.lrs, result.losses, result.smoothed)))
    print(f"suggested learning rate: {result.suggestion:.3g}  (valley; minimum/10: "
          f"{result.lr_min:.3g}; {len(result.lrs)} steps, {result.stopped})")
    print(f"  plot  {out / 'lr_finder.png'}")
    print(f"  csv   {out / 'lr_finder.csv'}")


def _add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="serve an export over TF Serving's REST API (and a drop-an-image page)",
        description="Serve EXPORT_DIR (numbered version folders, as 'tfx-transfer export' / "
        "export_saved_model() write them) with TF Serving's REST API: GET /v1/models/NAME"
        "[/versions/V][/metadata], POST /v1/models/NAME[/versions/V]:predict; a page at /. "
        "Serves the highest version and picks up new ones while running; concurrent requests "
        "are micro-batched. Needs: pip install 'tfx_transfer[serve]'.",
    )
    p.add_argument("export_dir", help="folder of numbered versions (TF Serving layout)")
    p.add_argument("--model-name", required=True, help="NAME in /v1/models/NAME")
    p.add_argument("--host", default="127.0.0.1",
                   help="interface to listen on (default 127.0.0.1; 0.0.0.0 for all)")
    p.add_argument("--port", type=int, default=8501, help="port (default 8501, as TF Serving)")
    p.add_argument("--max-batch-size", type=int, default=32,
                   help="most images per model call (default 32)")
    p.add_argument("--batch-timeout-ms", type=float, default=2.0,
                   help="longest wait for more requests to batch after the first (default 2)")
    p.add_argument("--poll-interval", type=float, default=1.0,
                   help="seconds between looks for a new version folder (default 1; 0: never)")
    p.add_argument("--max-request-bytes", type=int, default=32 * 2**20,
                   help="larger request bodies get HTTP 413 (default 33554432 = 32 MiB)")
    p.set_defaults(func=_run_serve)


def _run_serve(args: argparse.Namespace) -> int:
    try:
        from tfx_transfer.serving.app import serve
        serve(args.export_dir, args.model_name, host=args.host, port=args.port,
              max_batch_size=args.max_batch_size, batch_timeout_ms=args.batch_timeout_ms,
              poll_interval=args.poll_interval, max_request_bytes=args.max_request_bytes)
    except ImportError as exc:
        print(f"tfx-transfer serve: error: {exc}", file=sys.stderr)
        return 2
    return 0


def _add_adapt(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "adapt",
        help="adapt a trained run to a new domain from its unlabelled images",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Unsupervised domain adaptation of RUN_DIR's model (from 'tfx-transfer train') "
        "to the images of TARGET_FOLDER, whose labels are never used for it. --out gets "
        "model.keras, export/1/ (SavedModel), config.json, adaptation.json and adaptation.txt. "
        "When TARGET_FOLDER has class folders named like the model's classes, the report scores "
        "the model before and after on them (test/ or val/ when present, else all images); those "
        "labels serve only for the score. Methods: adabn (BatchNorm statistics of the target; "
        "uses the source's images, not its labels, when available), coral (Deep CORAL training "
        "on labelled source + unlabelled target), adabn+coral; default = adabn.",
        epilog="Example: tfx-transfer adapt runs/photos new_camera/ --out runs/photos-new-camera",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="run folder of 'tfx-transfer train'")
    p.add_argument("target", metavar="TARGET_FOLDER",
                   help="images of the new domain (class folders optional, only for scoring)")
    p.add_argument("--out", required=True, metavar="NEW_RUN", help="run folder to write")
    p.add_argument("--method", default="default",
                   choices=("default", "adabn", "coral", "adabn+coral"))
    p.add_argument("--source", default=None, metavar="DIR",
                   help="labelled source folder (default: the run's data_dir)")
    p.add_argument("--epochs", type=int, default=10, help="CORAL epochs")
    p.add_argument("--lr", type=float, default=1e-4, help="CORAL Adam learning rate")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--verbose", type=int, default=2, choices=(0, 1, 2))
    p.set_defaults(func=_run_adapt)


def _run_adapt(args: argparse.Namespace) -> int:
    from tfx_transfer.adaptation.adapt import adapt_run, format_adaptation_report

    report = adapt_run(args.run_dir, args.target, args.out, method=args.method,
                       source=args.source, epochs=args.epochs, lr=args.lr,
                       batch_size=args.batch_size, seed=args.seed, verbose=args.verbose)
    print(format_adaptation_report(report))
    print(f"  {'run folder':<17}{args.out}")
    print(f"  {'export':<17}{report['export']}")
    return 0


# Sub-commands, in the order `--help` lists them. Modules add theirs here.
COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [_add_weights, _add_pretrain]
COMMANDS += [_add_export, _add_predict]
COMMANDS += [_add_serve]
COMMANDS += [_add_explain, _add_find_lr]
COMMANDS += [_add_adapt]
COMMANDS[:0] = [_add_train, _add_evaluate]  # the main job first


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``tfx-transfer`` (all sub-commands).

    Example:
        >>> build_parser().parse_args(["weights", "where"]).weights_command
        'where'
    """
    from tfx_transfer import __version__

    parser = argparse.ArgumentParser(
        prog="tfx-transfer",
        description="Image-classification transfer learning on Keras 3: train, evaluate, "
        "export and predict from a folder of class sub-folders.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``tfx-transfer``; returns the exit status.

    Errors a user can fix (bad flags, missing folders, unavailable weights) print one
    clear line on stderr and exit with status 2, without a traceback.

    Example:
        >>> main(["weights", "where"])  # prints the Keras cache folder
        /.../models
        0
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args = build_parser().parse_args(argv)
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
