"""The commands that use a model: ``evaluate``, ``explain``, ``predict``, ``serve``;
and ``weights`` (the ImageNet weights cache). ``export``: :mod:`tfx_transfer.commands.export`.

Each calls one library function (:func:`~tfx_transfer.runs.report.evaluate_run`,
:func:`~tfx_transfer.evaluation.explain_plots.explain_files`,
:func:`tfx_transfer.predict_files`, :func:`~tfx_transfer.serving.app.serve`,
:func:`tfx_transfer.fetch_weights`) and prints what it returns.

Example:
    >>> EVALUATE.name, sorted(EXPLAIN_OPTIONS)
    ('evaluate', ['batch_size', 'top_k'])
"""

from __future__ import annotations

import argparse
import json
import sys

from tfx_transfer.commands.flags import (
    Command,
    add_options,
    given,
    optional,
    signature_defaults,
)

EVALUATE_OPTIONS = {
    "top_k": dict(type=optional(int), help="k of the top-k accuracy (none: min(5, classes); not "
                  "reported when k >= classes)"),
    "batch_size": dict(type=int, help="images per batch"),
    "max_images": dict(type=int, help="images in predictions.png"),
    "split": dict(type=optional(str), choices=(None, "test", "val", "train", "all"),
                  metavar="test|val|train|all",
                  help="which images of DATA_DIR (none: test/, else val/, else its class "
                  "folders; training images only when asked)"),
    "tta": dict(action=argparse.BooleanOptionalAction,
                help="also score test-time augmentation (mirror + 4 shifts, probabilities "
                "averaged; 6x the inference cost), reported next to the plain metrics"),
}

EVALUATE_UNKNOWN_OPTIONS = {
    "ood": dict(type=optional(str), metavar="OTHER_FOLDER",
                help="folder of images of classes the model does not know: reports the unknown "
                "score's AUROC, FPR at 95%% TPR and the share of each folder flagged, with "
                "unknown_scores.png"),
    "unknown_threshold": dict(type=optional(float), help="with --ood: threshold instead of the "
                              "model's own"),
}


def _add_table_flags(p: argparse.ArgumentParser) -> None:
    """--images, --x-col, --y-col, --label-delim, --valid-col (train's; unset: the run's own)."""
    from tfx_transfer.commands.jobs import train_flags
    from tfx_transfer.runs.config import TABLE_SETTINGS
    from tfx_transfer.runs.job import train_defaults

    flags = train_flags()
    add_options(p, train_defaults(), {name: {**flags[name], "help": flags[name]["help"] +
                                             "; unset: the run's setting"}
                                      for name in TABLE_SETTINGS}, suppress=True)


def _add_evaluate(p: argparse.ArgumentParser) -> None:
    from tfx_transfer.evaluation.evaluate import evaluate_model
    from tfx_transfer.runs.report import evaluate_run

    p.add_argument("model", metavar="RUN_DIR|EXPORT_DIR|MODEL",
                   help="run folder, export folder (or version folder) or .keras file")
    p.add_argument("data", metavar="DATA_DIR", help="folder of labelled class folders, or a CSV "
                   "table of file names and labels")
    _add_table_flags(p)
    add_options(p, signature_defaults(evaluate_run), {"out": dict(
        help="folder for the report (none: RUN_DIR/evaluate-<DATA_DIR name> for a run, "
        "./evaluate-<DATA_DIR name> otherwise)")})
    add_options(p, signature_defaults(evaluate_run), EVALUATE_UNKNOWN_OPTIONS)
    add_options(p, signature_defaults(evaluate_model), EVALUATE_OPTIONS)


def _table_spec(args: argparse.Namespace) -> object:
    """DATA_DIR a CSV: a TableSpec with the flags given, else the run's own table settings."""
    from pathlib import Path

    from tfx_transfer.data.table import TableSpec
    from tfx_transfer.runs.config import TABLE_SETTINGS

    config = Path(args.model) / "config.json"
    saved = json.loads(config.read_text()) if config.is_file() else {}
    settings = {name: saved[name] for name in TABLE_SETTINGS if name in saved}
    settings.update(given(args, TABLE_SETTINGS))
    return TableSpec(args.data, **{TABLE_SETTINGS[name]: value for name, value in settings.items()})


def _run_evaluate(args: argparse.Namespace) -> None:
    from pathlib import Path

    from tfx_transfer.runs.report import evaluate_run, format_evaluation

    data = _table_spec(args) if Path(args.data).is_file() else args.data
    metrics = evaluate_run(args.model, data, args.out,
                           **given(args, {**EVALUATE_OPTIONS, **EVALUATE_UNKNOWN_OPTIONS}))
    print(format_evaluation(metrics))


EVALUATE = Command(
    name="evaluate",
    help="evaluate a run or an exported SavedModel on a folder of labelled images",
    description="Accuracy, top-k accuracy, per-class precision/recall/F1 and the "
                "confusion matrix of the model on DATA_DIR, printed as a table "
                "and written to --out with the images ranked by their loss "
                "(metrics.json, report.txt, confusion_matrix.png, "
                "predictions.png, top_losses.png, top_losses.csv). The model is a"
                " run folder of 'tfx-transfer train' (its model.keras), an export"
                " folder or version folder (evaluated through the SavedModel: no "
                "Keras model needed) or a .keras file. DATA_DIR is a folder of "
                "class folders (or one with test/ or val/: that split is used); "
                "its classes are matched to the model's by name.",
    add_flags=_add_evaluate,
    run=_run_evaluate,
)


EXPLAIN_OPTIONS = {
    "top_k": dict(type=optional(int), help="class scores shown per image (none: "
                  "min(5, classes))"),
    "batch_size": dict(type=int, help="images per batch"),
}


def _add_explain(p: argparse.ArgumentParser) -> None:
    from tfx_transfer.evaluation.explain_plots import explain_files

    p.add_argument("model", metavar="RUN_DIR|MODEL", help="run folder of 'tfx-transfer train' "
                   "or a .keras file")
    p.add_argument("images", nargs="+", metavar="IMAGE_OR_FOLDER", help="image files and/or folders")
    p.add_argument("--out", required=True, help="folder for the PNGs")
    add_options(p, signature_defaults(explain_files), EXPLAIN_OPTIONS)


def _run_explain(args: argparse.Namespace) -> None:
    from tfx_transfer.evaluation.explain_plots import explain_files

    result = explain_files(args.model, args.images, args.out, **given(args, EXPLAIN_OPTIONS))
    width = max(len(row["path"]) for row in result["rows"])
    for row, path in zip(result["rows"], result["files"]):
        print(f"{row['path']:<{width}}  {row['predicted_class']} {row['probability']:.4f}  -> {path}")
    print(f"contact sheet: {result['contact_sheet']}")


EXPLAIN = Command(
    name="explain",
    help="Grad-CAM heatmaps: where in each image the predicted class came from",
    description="For each image: the image, its Grad-CAM overlay (the backbone's "
                "last feature map, weighted by the gradient of the predicted "
                "class) and the top-k scores, as OUT/<image name>.png, plus "
                "OUT/contact_sheet.png with every overlay.",
    add_flags=_add_explain,
    run=_run_explain,
    epilog="Example: tfx-transfer explain runs/photos photos/val/cats --out "
           "explained",
)


PREDICT_OPTIONS = {
    "top_k": dict(type=optional(int), help="classes shown per image (none: min(5, classes))"),
    "batch_size": dict(type=int, help="images per call"),
    "unknown_threshold": dict(type=optional(float), help="images whose unknown score is above it "
                              "are 'unknown' (none: the threshold saved in the export)"),
}


def _add_predict(p: argparse.ArgumentParser) -> None:
    from tfx_transfer.export.exported import predict_files

    p.add_argument("export_dir", metavar="EXPORT_DIR|FILE.tflite",
                   help="export folder (TF Serving layout), one version folder or a .tflite file")
    p.add_argument("images", nargs="+", help="image files and/or folders of images")
    add_options(p, signature_defaults(predict_files), PREDICT_OPTIONS)
    p.add_argument("--json", action="store_true",
                   help='print JSON lines: {"path": ..., "top": [{"class": ..., "score": ...}]} '
                   '(multi-label: also "labels", those above their thresholds; + "unknown", '
                   '"unknown_score" when the export has an unknown score)')


def _run_predict(args: argparse.Namespace) -> int:
    from tfx_transfer.export.exported import predict_files

    skipped: list = []
    rows = predict_files(args.export_dir, args.images, skipped=skipped,
                         progress=not args.json and sys.stdout.isatty(),
                         **given(args, PREDICT_OPTIONS))
    if args.json:
        for row in rows:
            top = [{"class": name, "score": round(score, 6)} for name, score in row["top"]]
            labels = {"labels": [{"class": name, "score": round(score, 6)}
                                 for name, score in row["labels"]]} if "labels" in row else {}
            extra = {} if "unknown" not in row else {
                "unknown": row["unknown"], "unknown_score": round(row["unknown_score"], 6)}
            print(json.dumps({"path": row["path"], "top": top, **labels, **extra}))
    elif rows:
        width = max(len(row["path"]) for row in rows)
        for row in rows:  # multi-label: every label above its threshold
            top = "  ".join(f"{name} {score:.4f}" for name, score in row.get("labels", row["top"]))
            top = top or "(no label above its threshold)"
            if "unknown" in row:
                top = f"{'unknown' if row['unknown'] else 'known  '} ({row['unknown_score']:.3f})  {top}"
            print(f"{row['path']:<{width}}  {top}")
    for path, reason in skipped:
        print(f"skipped {path}: {reason}", file=sys.stderr)
    if skipped or not rows:
        print(f"tfx-transfer predict: {len(skipped)} of {len(rows) + len(skipped)} input(s) "
              "could not be predicted", file=sys.stderr)
        return 1
    return 0


PREDICT = Command(
    name="predict",
    help="predict images with an exported SavedModel or a .tflite file",
    description="Load EXPORT_DIR (newest version, or a version folder) written by"
                " 'tfx-transfer export' / export_saved_model(), or a .tflite file "
                "with its class names inside, and print the top "
                "classes of each image. Folders are searched recursively; files "
                "that cannot be decoded are skipped with a warning.",
    add_flags=_add_predict,
    run=_run_predict,
)


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
    "unknown_threshold": dict(type=optional(float), help="threshold of the 'unknown' output "
                              "(none: the one saved in the export)"),
}


def _add_serve(p: argparse.ArgumentParser) -> None:
    from tfx_transfer.serving.app import ModelServer, serve

    p.add_argument("export_dir", metavar="EXPORT_DIR",
                   help="folder of numbered versions (TF Serving layout)")
    p.add_argument("--model-name", required=True, help="NAME in /v1/models/NAME")
    add_options(p, signature_defaults(serve), SERVE_OPTIONS)
    add_options(p, signature_defaults(ModelServer), SERVER_OPTIONS)


def _run_serve(args: argparse.Namespace) -> int:
    try:
        from tfx_transfer.serving.app import serve

        serve(args.export_dir, args.model_name, **given(args, {**SERVE_OPTIONS, **SERVER_OPTIONS}))
    except ImportError as exc:  # the [serve] extra is not installed: the message says how
        print(f"tfx-transfer serve: error: {exc}", file=sys.stderr)
        return 2
    return 0


SERVE = Command(
    name="serve",
    help="serve an export over TF Serving's REST API (and a drop-an-image page)",
    description="Serve EXPORT_DIR (numbered version folders, as 'tfx-transfer "
                "export' / export_saved_model() write them) with TF Serving's "
                "REST API: GET /v1/models/NAME[/versions/V][/metadata], POST "
                "/v1/models/NAME[/versions/V]:predict; a page at /. Serves the "
                "highest version and picks up new ones while running; concurrent "
                "requests are micro-batched. Needs: pip install "
                "'tfx_transfer[serve]'.",
    add_flags=_add_serve,
    run=_run_serve,
)


def _add_weights(p: argparse.ArgumentParser) -> None:
    from tfx_transfer.models.weights import fetch_weights

    wsub = p.add_subparsers(dest="weights_command", required=True)
    fetch = wsub.add_parser("fetch", help="download the weights of the named backbones")
    fetch.add_argument("backbones", nargs="+", help="registry names, e.g. vgg16 resnet50")
    add_options(fetch, signature_defaults(fetch_weights), {"image_size": dict(
        type=optional(int), help="square input side (only MobileNet variants have "
        "size-specific files; none: the backbone's default)")})
    # a path, printed without Keras: `weights where` answers at once (main registers nothing)
    wsub.add_parser("where", help="print the Keras cache folder").set_defaults(uses_keras=False)


def _run_weights(args: argparse.Namespace) -> None:
    from tfx_transfer.models.weights import fetch_weights, keras_cache_dir

    if args.weights_command == "where":
        print(keras_cache_dir())
        return
    for path in fetch_weights(args.backbones, image_size=args.image_size):
        print(path)


WEIGHTS = Command(
    name="weights",
    help="manage ImageNet backbone weights (the Keras cache)",
    description="Pre-fetch ImageNet (no-top) weights into the Keras cache "
                "($KERAS_HOME/models, default ~/.keras/models) on a machine with "
                "network, then copy that folder to an offline machine.",
    add_flags=_add_weights,
    run=_run_weights,
)
