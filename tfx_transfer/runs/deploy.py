"""On-device and other-runtime files of a model (TFLite, ONNX), checked on the run's own images.

:func:`export_model_files` is what ``tfx-transfer export --tflite/--onnx`` and
``train(tflite=...)`` call: for a run folder's model the calibration images of an
int8 TFLite default to the run's training images and the parity check runs on its
validation images (the same seeded split as training); the reports go to
``RUN/exports.json`` (and, through the caller, into the SavedModel's metadata).

See :func:`export_model_files` for an example.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

from tfx_transfer.layout import CONFIG_FILE, EXPORTS_FILE, MODEL_FILE, TFLITE_FILE, RunFolder


def run_images(run_dir: str | os.PathLike) -> Any:
    """The run's :class:`~tfx_transfer.ImageFolder` (its split, not decoded yet), or ``None``.

    Read as the run read it (:func:`tfx_transfer.runs.steps.load_data`: a folder
    or a CSV table with the run's table settings). ``None`` when ``run_dir`` is not a
    run folder or its data is gone.

    Example:
        >>> run_images("/nonexistent/run") is None
        True
    """
    config_path = Path(run_dir) / CONFIG_FILE
    if not config_path.is_file():
        return None
    return config_images(json.loads(config_path.read_text()))


def config_images(config: dict[str, Any]) -> Any:
    """:func:`run_images` of a run's settings (its ``config.json``), or ``None`` when its data is gone.

    Example:
        >>> config_images({"data_dir": "/nonexistent/photos"}) is None
        True
    """
    if not config.get("data_dir") or not Path(config["data_dir"]).exists():  # a folder or a CSV
        return None
    from tfx_transfer.runs.steps import load_data

    return load_data({**config, "cache_images": "none"}, verbose=0)


def resolve_model(model: str | os.PathLike) -> tuple[Path, Path | None]:
    """``(the .keras file, its run folder or None)`` of a run folder or a ``.keras`` path.

    Example:
        >>> resolve_model("model.keras")
        (PosixPath('model.keras'), None)
    """
    path = Path(model)
    if path.is_dir():
        if not (path / MODEL_FILE).is_file():
            raise FileNotFoundError(f"{path} is a folder without {MODEL_FILE}: pass a run folder "
                                    "of 'tfx-transfer train' or a .keras file.")
        return path / MODEL_FILE, path
    in_run = path.is_file() and (path.parent / CONFIG_FILE).is_file()  # RUN/model.keras, RUN/best.keras
    return path, path.parent if in_run else None


def export_model_files(model: Any, *, tflite: str | os.PathLike | None = None,
                       onnx: str | os.PathLike | None = None, run_dir: str | os.PathLike | None = None,
                       class_names: list[str] | None = None, representative_data: Any = None,
                       validation_data: Any = None, **tflite_options: Any) -> dict[str, dict]:
    """Write the ``.tflite`` and/or ``.onnx`` file of ``model``, each checked; their reports.

    Args:
        model: a Keras model.
        tflite: the ``.tflite`` file to write (``None``: none).
        onnx: the ``.onnx`` file to write (``None``: none).
        run_dir: the model's run folder: default images for calibration (its training
            images) and the check (its validation images), and ``RUN/exports.json``.
        class_names: the names written into the files (default: the model's).
        representative_data: calibration images of ``quantization="int8"``.
        validation_data: labelled images of the checks.
        **tflite_options: more keywords of :func:`tfx_transfer.export_tflite`.

    Returns:
        ``{"tflite": report, "onnx": report}`` for the files written.

    Example:
        >>> import keras, os, tempfile, numpy as np
        >>> model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Flatten(),
        ...                           keras.layers.Dense(2, activation="softmax")])
        >>> x = np.random.default_rng(0).uniform(0, 255, (6, 8, 8, 3))
        >>> reports = export_model_files(model, tflite=os.path.join(tempfile.mkdtemp(), "m.tflite"),
        ...                              class_names=["a", "b"], quantization="int8",
        ...                              representative_data=x, validation_data=(x, np.arange(6) % 2),
        ...                              min_agreement=0.5)
        >>> sorted(reports), reports["tflite"]["quantization"], reports["tflite"]["num_samples"]
        (['tflite'], 'int8', 6)
    """
    int8 = tflite is not None and tflite_options.get("quantization") == "int8"
    wanted = validation_data is None or (int8 and representative_data is None)
    images = run_images(run_dir) if run_dir is not None and wanted else None
    if validation_data is None and images is not None and images.validation is not None:
        validation_data = images
    if representative_data is None and int8:
        representative_data = images
    reports: dict[str, dict] = {}
    if tflite is not None:
        from tfx_transfer.export.tflite import export_tflite

        reports["tflite"] = export_tflite(model, tflite, class_names=class_names,
                                          representative_data=representative_data,
                                          validation_data=validation_data, **tflite_options)
    if onnx is not None:
        from tfx_transfer.export.onnx import export_onnx

        options = {k: v for k, v in tflite_options.items() if k in ("min_agreement", "check")}
        reports["onnx"] = export_onnx(model, onnx, class_names=class_names,
                                      validation_data=validation_data, **options)
    if run_dir is not None and reports:
        record = Path(run_dir) / EXPORTS_FILE
        known = json.loads(record.read_text()) if record.is_file() else {}
        known.update({str(Path(r["path"]).name): r for r in reports.values()})
        record.write_text(json.dumps(known, indent=2) + "\n")
    return reports


def write_run_tflite(final: Any, folder: Any, run: RunFolder, quantization: str,
                     verbose: Any = 1) -> dict[str, dict]:
    """``RUN/model.tflite`` (int8: calibrated on the training images), checked on the validation
    images; ``{"tflite": report}`` (also in ``RUN/exports.json``).

    A file refused by the check (``ParityError``) does not stop the run: the refusal and its
    figures are warned about and recorded as ``{"tflite": {"path": None, "refused": message}}``.

    Args:
        final: the run's final Keras model.
        folder: the run's :class:`~tfx_transfer.ImageFolder` (training and validation images).
        run: the run folder.
        quantization: ``"int8"``, ``"float16"``, ``"dynamic"`` or ``"float32"``.
        verbose: 0 prints nothing.

    Example:
        >>> import keras, tempfile, tfx_transfer as tt
        >>> from PIL import Image
        >>> root = Path(tempfile.mkdtemp())
        >>> for i in range(8):
        ...     (root / "ab"[i % 2]).mkdir(exist_ok=True)
        ...     Image.new("RGB", (8, 8), (200 * (i % 2), 50, 90)).save(root / "ab"[i % 2] / f"{i}.png")
        >>> folder = tt.load_image_folder(root, image_size=8, validation_split=0.5)
        >>> model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Flatten(),
        ...                           keras.layers.Dense(2, activation="softmax")])
        >>> run = RunFolder(tempfile.mkdtemp())
        >>> report = write_run_tflite(model, folder, run, "float32", verbose=0)["tflite"]
        >>> Path(report["path"]).name, report["num_samples"], report["top1_agreement"]
        ('model.tflite', 4, 1.0)
    """
    from tfx_transfer.export.parity import ParityError, describe

    try:
        reports = export_model_files(
            final, tflite=run.file(TFLITE_FILE), run_dir=run.path, class_names=folder.class_names,
            representative_data=folder, validation_data=folder,
            quantization=None if quantization == "float32" else quantization)
    except ParityError as exc:
        warnings.warn(f"train(tflite={quantization!r}): {exc}", UserWarning, stacklevel=2)
        refused = {"path": None, "quantization": quantization, "refused": str(exc)}
        record = run.file(EXPORTS_FILE)
        known = json.loads(record.read_text()) if record.is_file() else {}
        record.write_text(json.dumps({**known, TFLITE_FILE: refused}, indent=2) + "\n")
        return {"tflite": refused}
    report = reports["tflite"]
    if verbose != 0:
        print(f"tflite ({quantization}): {report['path']} ({report['size_bytes'] / 1e6:.2f} MB), "
              f"{describe(report | {'num_images': report['num_samples']})}", flush=True)
    return reports
