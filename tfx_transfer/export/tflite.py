"""TFLite export with a parity check against the Keras model.

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
import uuid
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from tfx_transfer.export.saved_model import model_image_size, tensorflow_backend

# Largest |TFLite - Keras| probability allowed by export_tflite's parity check
# (measured figures in the export_tflite docstring).
TFLITE_TOLERANCE: dict[str | None, float] = {None: 1e-4, "float16": 1e-2, "dynamic": 1e-1}


def _tflite_probabilities(content: bytes, pixels: np.ndarray) -> np.ndarray:
    """Run the converted model in TensorFlow's bundled TFLite interpreter."""
    with warnings.catch_warnings():
        # TF 2.21 still ships tf.lite.Interpreter (same runtime as ai_edge_litert's) but warns
        # at every construction that it is deprecated; we check parity, nothing more.
        warnings.filterwarnings("ignore", message=r"(?s).*tf\.lite\.Interpreter is deprecated")
        interpreter = tf.lite.Interpreter(model_content=content)
    index = interpreter.get_input_details()[0]["index"]
    interpreter.resize_tensor_input(index, list(pixels.shape))
    interpreter.allocate_tensors()
    interpreter.set_tensor(index, pixels)
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])


def export_tflite(
    model: Any,
    path: str | os.PathLike,
    quantization: str | None = "float16",
    check: bool = True,
    sample_pixels: np.ndarray | None = None,
    tolerance: float | None = None,
) -> dict:
    """Convert ``model`` to TFLite (``tf.lite.TFLiteConverter``) and check it against Keras.

    The TFLite model takes ``float32 [N, H, W, 3]`` RGB pixels in 0..255 at the
    model's fixed size (decode and resize on the device) and returns the
    probabilities. ``quantization``: ``"float16"`` (weights stored as float16,
    about half the size), ``"dynamic"`` (dynamic-range int8 weights, about a
    quarter) or ``None`` (float32).

    With ``check`` the converted model runs in ``tf.lite.Interpreter`` on
    ``sample_pixels`` (default: 8 seeded random images; pass real ones for
    meaningful agreement figures) and is compared with ``model.predict``; the
    file is written (atomically) only if the largest absolute probability
    difference is within ``tolerance`` (default :data:`TFLITE_TOLERANCE`:
    1e-4 float32, 1e-2 float16, 0.1 dynamic). Measured (TF 2.21, 4 x 16 random
    images) on a random-init VGG16 at 32 px whose classifier was sharpened so
    probabilities spread over 3 classes: float32 <= 8e-6; float16 <= 2.1e-3,
    top-1 agreement 100%; dynamic int8 0.055-0.066, top-1 agreement 88-94%
    (flips only where Keras's top-2 margin is small). ResNet50 (head x10):
    float16 7e-5, dynamic 1.3e-3. Check real images of your task before
    shipping a ``"dynamic"`` model.

    Args:
        model: a Keras model with a fixed ``(None, H, W, 3)`` pixel input (a
            :func:`tfx_transfer.build_transfer_model` model); TensorFlow backend.
        path: the ``.tflite`` file to write (folders created).
        quantization: ``"float16"`` (default), ``"dynamic"`` or ``None``.
        check: run the parity check (and refuse to write a model that fails it).
        sample_pixels: ``(N, H, W, 3)`` RGB pixels in 0..255 for the check.
        tolerance: largest allowed absolute probability difference; default
            :data:`TFLITE_TOLERANCE` for the quantization.

    Returns:
        ``{"path", "quantization", "size_bytes", "max_abs_diff", "top1_agreement",
        "tolerance", "num_samples"}`` (the figures are ``None`` without ``check``).

    Raises:
        RuntimeError: the parity check failed (nothing is written).

    Example:
        >>> import os, tempfile, numpy as np, tfx_transfer as tt
        >>> model = tt.build_transfer_model("vgg16", 2, input_shape=32, weights=None)
        >>> pixels = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
        >>> report = export_tflite(model, os.path.join(tempfile.mkdtemp(), "flowers.tflite"),
        ...                        quantization="float16", sample_pixels=pixels)
        >>> report["max_abs_diff"] <= 1e-2, report["num_samples"]
        (True, 4)
    """
    if not tensorflow_backend():
        import keras

        raise ValueError(f"export_tflite converts a TensorFlow graph; this process uses the Keras "
                         f"backend {keras.backend.backend()!r}. Save the model (model.save) and "
                         "run export_tflite with KERAS_BACKEND=tensorflow (or `tfx-transfer "
                         "export MODEL.keras OUT --tflite FILE`).")
    if quantization not in TFLITE_TOLERANCE:
        raise ValueError(f"quantization={quantization!r}: use 'float16', 'dynamic' or None.")
    import keras

    height, width = model_image_size(model)
    # Keras 3's own route (keras/src/export/litert.py): ExportArchive -> SavedModel -> converter.
    # (from_concrete_functions keeps Keras variables as uninitialised resources: NaN outputs.)
    with tempfile.TemporaryDirectory(prefix="tfx_transfer_tflite_") as saved_model_dir:
        archive = keras.export.ExportArchive()
        archive.add_endpoint(
            "serving_default", lambda pixels: model(pixels, training=False),
            [tf.TensorSpec([None, height, width, 3], tf.float32, name="pixels")],
        )
        archive.write_out(saved_model_dir, verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(saved_model_dir)
        if quantization is not None:
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if quantization == "float16":
            converter.target_spec.supported_types = [tf.float16]
        content = converter.convert()

    tolerance = TFLITE_TOLERANCE[quantization] if tolerance is None else float(tolerance)
    report = {"path": str(path), "quantization": quantization, "size_bytes": len(content),
              "max_abs_diff": None, "top1_agreement": None, "tolerance": tolerance, "num_samples": 0}
    if check:
        if sample_pixels is None:
            sample_pixels = np.random.default_rng(0).integers(0, 256, (8, height, width, 3))
        pixels = np.asarray(sample_pixels, np.float32)
        if pixels.shape[1:] != (height, width, 3):
            raise ValueError(
                f"sample_pixels has shape {pixels.shape}; need (N, {height}, {width}, 3) at the model size."
            )
        expected = np.asarray(model.predict(pixels, verbose=0), np.float32)
        got = _tflite_probabilities(content, pixels)
        diff = float(np.max(np.abs(got - expected)))
        agree = float(np.mean(got.argmax(-1) == expected.argmax(-1)))
        report.update(max_abs_diff=diff, top1_agreement=agree, num_samples=len(pixels))
        if not diff <= tolerance:
            raise RuntimeError(
                f"TFLite ({quantization}) differs from the Keras model by up to {diff:.3g} in "
                f"probability (tolerance {tolerance:g}, top-1 agreement {agree:.0%}); nothing written. "
                "Try quantization=None or 'float16', or pass a looser tolerance= if this is acceptable."
            )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        tmp.write_bytes(content)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return report
