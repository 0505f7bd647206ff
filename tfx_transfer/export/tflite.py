"""TFLite export (float32, float16, dynamic-range, full-integer int8), checked on real images.

The ``.tflite`` takes RGB pixels in 0..255 at the model's fixed size (decode and
resize on the device) and returns the probabilities; it carries its class names
and input normalisation as TFLite metadata (:mod:`~tfx_transfer.export.tflite_metadata`).

Example (any Keras classifier with a fixed pixel input; a tiny one here):
    >>> import os, tempfile, keras, tfx_transfer as tt
    >>> model = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Rescaling(1 / 255),
    ...                           keras.layers.Conv2D(4, 3), keras.layers.GlobalAveragePooling2D(),
    ...                           keras.layers.Dense(2, activation="softmax")])
    >>> path = os.path.join(tempfile.mkdtemp(), "m.tflite")
    >>> report = tt.export_tflite(model, path, quantization="float16")
    >>> report["max_abs_diff"] <= report["tolerance"], os.path.isfile(path)
    (True, True)
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from tfx_transfer.defaults import DEFAULT_SEED
from tfx_transfer.export.parity import (
    DEFAULT_MIN_AGREEMENT,
    answer_thresholds,
    check_agreement,
    compare,
    describe,
)
from tfx_transfer.export.sample_images import (
    DEFAULT_CALIBRATION_IMAGES,
    labelled_sample,
    sample_images,
)
from tfx_transfer.export.saved_model import model_image_size, tensorflow_backend, write_signatures
from tfx_transfer.export.single_file import model_class_names, write_file
from tfx_transfer.export.tflite_metadata import add_metadata
from tfx_transfer.export.tflite_runtime import TFLiteModel

QUANTIZATIONS = (None, "float16", "dynamic", "int8")
QUANTIZED_IO = ("uint8", "int8")
# Largest |TFLite - Keras| probability allowed by the parity check, where it is meaningful
# (float32: near-exact; float16: up to 0.018 measured on ImageNet MobileNet v1 / hymenoptera
# validation photos with 100% top-1 agreement). Quantized models are judged by top-1 agreement.
TFLITE_TOLERANCE: dict[str | None, float | None] = {None: 1e-4, "float16": 5e-2, "dynamic": None,
                                                    "int8": None}
CHECK_IMAGES = 500  # most validation images a parity check runs


def _converter(model: Any, saved_model_dir: str, size: tuple[int, int]) -> Any:
    # Keras 3's own route (keras/src/export/litert.py): SavedModel -> converter, the SavedModel
    # as keras.export.ExportArchive writes it, traced once (write_signatures).
    # (from_concrete_functions keeps Keras variables as uninitialised resources: NaN outputs.)
    write_signatures(saved_model_dir, {"serving_default": (
        lambda pixels: model(pixels, training=False),
        tf.TensorSpec([None, *size, 3], tf.float32, name="pixels"))})
    return tf.lite.TFLiteConverter.from_saved_model(saved_model_dir)


def _convert(model: Any, quantization: str | None, calibration: np.ndarray | None,
             quantized_io: str) -> bytes:
    """The ``.tflite`` flatbuffer of ``model`` (no metadata, no check); ``calibration``: the
    representative images of ``"int8"``."""
    with tempfile.TemporaryDirectory(prefix="tfx_transfer_tflite_") as saved_model_dir:
        converter = _converter(model, saved_model_dir, model_image_size(model))
        if quantization is not None:
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if quantization == "float16":
            converter.target_spec.supported_types = [tf.float16]
        if quantization == "int8":
            images = np.asarray(calibration, np.float32)
            converter.representative_dataset = lambda: ([images[i:i + 1]] for i in range(len(images)))
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            converter.inference_input_type = converter.inference_output_type = getattr(
                tf, quantized_io)
        return converter.convert()


def _check_arguments(quantization: str | None, quantized_io: str, representative_data: Any) -> None:
    if not tensorflow_backend():
        import keras

        raise ValueError(f"export_tflite converts a TensorFlow graph; this process uses the Keras "
                         f"backend {keras.backend.backend()!r}. Save the model (model.save) and "
                         "run export_tflite with KERAS_BACKEND=tensorflow (or `tfx-transfer "
                         "export MODEL.keras OUT --tflite FILE`).")
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization={quantization!r}: use 'float16', 'dynamic', 'int8' or None.")
    if quantized_io not in QUANTIZED_IO:
        raise ValueError(f"quantized_io={quantized_io!r}: use 'uint8' or 'int8'.")
    if quantization == "int8" and representative_data is None:
        raise ValueError("quantization='int8' calibrates on real images: pass representative_data= "
                         "(a folder of training images, an ImageFolder, a dataset or an array; "
                         "--representative-data DIR).")


def _check_images(model: Any, size: tuple[int, int], names: list[str] | None, validation_data: Any,
                  sample_pixels: Any, calibration: np.ndarray | None
                  ) -> tuple[np.ndarray, np.ndarray | None, str]:
    """Images (and labels) of the parity check, and what they are."""
    if validation_data is not None:
        x, y = labelled_sample(validation_data, size, names, count=CHECK_IMAGES)
        source = (f"{os.fspath(validation_data)}" if isinstance(validation_data, (str, os.PathLike))
                  else "validation_data")
        return x, y, source
    if sample_pixels is not None:
        return sample_images(sample_pixels, size, count=None), None, "sample_pixels"
    if calibration is not None:
        return calibration[:CHECK_IMAGES], None, "the calibration images (no validation_data)"
    pixels = np.random.default_rng(0).integers(0, 256, (8, *size, 3)).astype(np.float32)
    return pixels, None, "random pixels (no validation_data)"


def export_tflite(
    model: Any,
    path: str | os.PathLike,
    quantization: str | None = "float16",
    check: bool = True,
    sample_pixels: np.ndarray | None = None,
    tolerance: float | None = None,
    *,
    representative_data: Any = None,
    calibration_images: int = DEFAULT_CALIBRATION_IMAGES,
    quantized_io: str = "uint8",
    validation_data: Any = None,
    min_agreement: float = DEFAULT_MIN_AGREEMENT,
    class_names: Sequence[str] | None = None,
    seed: int = DEFAULT_SEED,
) -> dict:
    """Convert ``model`` to TFLite, check it against Keras on real images, write it with its labels.

    ``quantization``: ``None`` (float32), ``"float16"`` (weights as float16, half
    the size), ``"dynamic"`` (int8 weights, float activations, a quarter) or
    ``"int8"`` (full integer: int8 weights and activations calibrated on
    ``representative_data``, ``quantized_io`` input and output, for integer-only
    accelerators). The file takes ``(N, H, W, 3)`` RGB pixels in 0..255 (``float32``,
    or ``uint8``/``int8`` for ``"int8"``) and returns probabilities (quantized the
    same way for ``"int8"``); :class:`~tfx_transfer.export.tflite_runtime.TFLiteModel`
    hides the difference.

    The check runs the converted model (LiteRT, or ``tf.lite``) on the images of
    ``validation_data`` (at most 500) and compares it with ``model.predict``: top-1
    agreement, accuracy of both (with labels) and the largest probability
    difference. The file is written (atomically) only if the agreement is at least
    ``min_agreement`` and, for float32/float16, the difference is within
    ``tolerance`` (:data:`TFLITE_TOLERANCE`: 1e-4, 5e-2); otherwise :class:`~tfx_transfer.export.parity.ParityError` with
    the figures. Without ``validation_data`` the check uses ``sample_pixels``, else
    the calibration images, else (float32/float16 only) 8 random images.

    Args:
        model: a Keras model with a fixed ``(None, H, W, 3)`` pixel input; TensorFlow backend.
        path: the ``.tflite`` file to write (folders created).
        quantization: ``None``, ``"float16"`` (default), ``"dynamic"`` or ``"int8"``.
        check: run the check (and refuse a model that fails it).
        sample_pixels: ``(N, H, W, 3)`` pixels for the check when no ``validation_data``.
        tolerance: largest probability difference (default :data:`TFLITE_TOLERANCE`).
        representative_data: calibration images for ``"int8"``: a folder (its ``train/``
            split if any; class folders or flat), an ``ImageFolder``, a dataset or an array.
        calibration_images: most calibration images drawn (seeded) from it.
        quantized_io: ``"uint8"`` (default, as Model Maker) or ``"int8"``.
        validation_data: labelled images for the check (a folder: its test, else
            validation split; an ``ImageFolder``; ``(x, y)``; a dataset).
        min_agreement: smallest top-1 agreement with Keras accepted.
        class_names: written into the file (default: the model's, when it knows them).
        seed: seed of the calibration draw.

    Returns:
        ``{"path", "quantization", "quantized_io", "size_bytes", "runtime",
        "calibration_images", "class_names", "tolerance", "min_agreement",
        "max_abs_diff", "top1_agreement", "accuracy", "keras_accuracy",
        "num_samples", "images"}`` (figures ``None`` without ``check``).

    Example:
        >>> import os, tempfile, numpy as np, tfx_transfer as tt
        >>> import keras
        >>> model = keras.Sequential([keras.Input((16, 16, 3)), keras.layers.Rescaling(1 / 255),
        ...                           keras.layers.Conv2D(8, 3), keras.layers.GlobalAveragePooling2D(),
        ...                           keras.layers.Dense(2, activation="softmax")])
        >>> pixels = np.random.default_rng(0).uniform(0, 255, (8, 16, 16, 3)).astype("float32")
        >>> report = export_tflite(model, os.path.join(tempfile.mkdtemp(), "m.tflite"),
        ...                        quantization="int8", representative_data=pixels,
        ...                        validation_data=(pixels, np.arange(8) % 2), min_agreement=0,
        ...                        class_names=["cat", "dog"])
        >>> report["num_samples"], report["quantized_io"], tt.read_tflite_labels(report["path"])
        (8, 'uint8', ['cat', 'dog'])
    """
    _check_arguments(quantization, quantized_io, representative_data)
    if check and quantization == "dynamic" and validation_data is None and sample_pixels is None \
            and representative_data is None:
        raise ValueError("quantization='dynamic' is checked on real images: pass validation_data= "
                         "(--validation-data DIR), sample_pixels= or representative_data=, or "
                         "check=False.")
    size = model_image_size(model)
    names = model_class_names(model, class_names)
    calibration = None
    if representative_data is not None:
        calibration = sample_images(representative_data, size, calibration_images, seed)
    content = _convert(model, quantization, calibration if quantization == "int8" else None,
                      quantized_io)
    tolerance = TFLITE_TOLERANCE[quantization] if tolerance is None else float(tolerance)
    report: dict[str, Any] = {
        "path": str(path), "quantization": quantization,
        "quantized_io": quantized_io if quantization == "int8" else None,
        "runtime": TFLiteModel(content).runtime,
        "calibration_images": None if quantization != "int8" else len(calibration),
        "class_names": names, "tolerance": tolerance, "min_agreement": min_agreement,
        "max_abs_diff": None, "top1_agreement": None, "accuracy": None, "keras_accuracy": None,
        "num_samples": 0, "images": None}
    line = "not checked"
    if check:
        x, y, source = _check_images(model, size, names, validation_data, sample_pixels,
                                     calibration)
        expected = np.asarray(model.predict(x, verbose=0), np.float32)
        figures = compare(expected, TFLiteModel(content).probabilities(x), y, source,
                          answer_thresholds(model, expected.shape[-1]))
        report.update({k: v for k, v in figures.items() if k != "num_images"},
                      num_samples=figures["num_images"])
        bound = 0.0 if source.startswith("random") else min_agreement  # ties flip on noise
        check_agreement(figures, bound, f"TFLite ({quantization or 'float32'})", tolerance)
        line = describe(figures)
    if names is not None:
        settings = getattr(model, "transfer_config", None) or {}
        thresholds = settings.get("thresholds") if settings.get("multi_label") else None
        content = add_metadata(content, names, getattr(model, "name", "model"),
                               f"Image classifier ({quantization or 'float32'}); pixels 0..255 "
                               f"in, probabilities out. Checked against Keras: {line}.",
                               thresholds=thresholds)
    path = write_file(content, path)
    report["size_bytes"] = path.stat().st_size
    return report
