"""The ``export`` command: a model (a run folder or a ``.keras`` file) to a SavedModel, and
to ``.tflite`` and ``.onnx`` files checked against Keras on real images.

It calls :func:`tfx_transfer.export_saved_model` and
:func:`~tfx_transfer.runs.deploy.export_model_files` (:func:`tfx_transfer.export_tflite`,
:func:`tfx_transfer.export_onnx`) and prints what they return.

Example:
    >>> EXPORT.name
    'export'
"""

from __future__ import annotations

import argparse
import sys

from tfx_transfer.commands.flags import (
    Command,
    add_options,
    given,
    optional,
    optional_choice,
    shown,
    signature_defaults,
)

EXPORT_OPTIONS = {
    "version": dict(type=optional(int), help="version number (none: the next one)"),
    "top_k": dict(type=optional(int), help="top classes returned (none: min(5, classes))"),
    "overwrite": dict(action=argparse.BooleanOptionalAction, help="replace an existing version"),
    "crop_to_aspect_ratio": dict(action=argparse.BooleanOptionalAction,
                                 help="center-crop before resizing (use the training setting)"),
    "unknown_threshold": dict(type=optional(float), help="threshold of the export's 'unknown' "
                              "output (none: the one saved in the model)"),
}


TFLITE_OPTIONS = {
    "quantization": dict(type=optional_choice("float16", "dynamic", "int8"),
                         metavar="float16|dynamic|int8|none",
                         help="TFLite quantization (int8: full integer, calibrated on real images)"),
    "representative_data": dict(type=optional(str), metavar="DIR",
                                help="calibration images of --quantization int8: class folders or a "
                                "flat folder (none: a run folder's training images)"),
    "calibration_images": dict(type=int, help="most calibration images drawn from it"),
    "quantized_io": dict(choices=("uint8", "int8"), help="input/output type of an int8 model"),
    "validation_data": dict(type=optional(str), metavar="DIR",
                            help="labelled images the TFLite/ONNX files are checked on (none: a run "
                            "folder's validation images)"),
    "min_agreement": dict(type=float, help="refuse a TFLite/ONNX file whose top-1 agreement with "
                          "the Keras model is lower"),
}


def _add_export(p: argparse.ArgumentParser) -> None:
    from tfx_transfer.export.saved_model import export_saved_model
    from tfx_transfer.export.tflite import export_tflite

    p.add_argument("model", metavar="RUN_DIR|MODEL",
                   help="a run folder of 'tfx-transfer train' or a .keras model file")
    p.add_argument("export_dir", metavar="EXPORT_DIR",
                   help="export folder; versions are its numbered sub-folders")
    names = p.add_mutually_exclusive_group()
    names.add_argument("--labels", help="text file with one class name a line, in label order "
                       "(none: the model's own class names)")
    names.add_argument("--class-names", help="comma-separated class names, in label order")
    add_options(p, signature_defaults(export_saved_model), EXPORT_OPTIONS)
    p.add_argument("--tflite", default=None, metavar="FILE",
                   help="also write a TFLite model with its labels inside (checked against the "
                   "Keras model)")
    p.add_argument("--onnx", default=None, metavar="FILE",
                   help="also write an ONNX model (checked with onnxruntime; needs "
                   "'tfx_transfer[onnx]')")
    add_options(p, signature_defaults(export_tflite), TFLITE_OPTIONS)


def _class_names(args: argparse.Namespace, model: object) -> list[str]:
    from tfx_transfer.export.single_file import model_class_names

    if args.class_names:
        return [name.strip() for name in args.class_names.split(",")]
    if args.labels:
        with open(args.labels, encoding="utf-8") as f:  # FileNotFoundError names the file
            return [line.strip() for line in f if line.strip()]
    names = model_class_names(model)
    if names is None:
        raise ValueError(f"{args.model} does not know its class names: pass --labels FILE or "
                         "--class-names a,b,c.")
    return names


def _print_check(kind: str, report: dict) -> None:
    from tfx_transfer.export.parity import describe

    what = kind if kind == "onnx" else f"{kind} {shown(report['quantization'])}"
    figures = describe(report | {"num_images": report["num_samples"]}) if report["num_samples"] \
        else "not checked"
    print(f"{report['path']}  ({report['size_bytes'] / 1e6:.2f} MB, {what}; {figures})")


def _run_export(args: argparse.Namespace) -> int:
    from tfx_transfer.export.saved_model import export_saved_model
    from tfx_transfer.models.saving import load_model
    from tfx_transfer.runs.deploy import export_model_files, resolve_model

    model_path, run_dir = resolve_model(args.model)
    model = load_model(model_path, compile=False)
    class_names = _class_names(args, model)
    try:
        reports = export_model_files(model, tflite=args.tflite, onnx=args.onnx, run_dir=run_dir,
                                     class_names=class_names, **given(args, TFLITE_OPTIONS))
    except ImportError as exc:  # the [onnx] extra is not installed: the message says how
        print(f"tfx-transfer export: error: {exc}", file=sys.stderr)
        return 2
    options = given(args, EXPORT_OPTIONS)
    print(export_saved_model(model, args.export_dir, class_names, metadata=reports or None,
                             **options))
    for kind, report in reports.items():
        _print_check(kind, report)
    return 0


EXPORT = Command(
    name="export",
    help="export a run's model (or a .keras file) as a SavedModel for TF Serving, TFLite and ONNX",
    description="Write the model of RUN_DIR (its model.keras) or MODEL (a .keras "
                "file) to EXPORT_DIR/<version>/ as a SavedModel whose serving_default "
                "signature takes encoded images and returns probabilities, top-k class "
                "ids, names and scores; with --tflite FILE and/or --onnx FILE also as "
                "TFLite (class names inside, float32/float16/dynamic/int8) and ONNX, "
                "each checked against the Keras model on real validation images (a "
                "run's own by default) and refused below --min-agreement. The figures "
                "go into the export's metadata (and RUN_DIR/exports.json).",
    add_flags=_add_export,
    run=_run_export,
)
