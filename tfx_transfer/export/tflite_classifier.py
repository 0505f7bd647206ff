"""A ``.tflite`` file as an image classifier: its own class names, images decoded as in training.

:class:`TFLiteClassifier` reads the class names from the file's TFLite metadata
(:func:`tfx_transfer.read_tflite_labels`), decodes and resizes encoded images
with the training pipeline's :func:`~tfx_transfer.data.decode.decode_and_resize`
and runs the model with :class:`~tfx_transfer.export.tflite_runtime.TFLiteModel`
(LiteRT or ``tf.lite``). It answers ``predict`` as an
:class:`~tfx_transfer.ExportedModel` does, so ``tfx-transfer predict FILE.tflite``
and :func:`tfx_transfer.predict_files` take a ``.tflite`` file.

Example:
    >>> import io, keras, os, tempfile, numpy as np, tfx_transfer as tt
    >>> from PIL import Image
    >>> model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Flatten(),
    ...                           keras.layers.Dense(2, activation="softmax")])
    >>> path = tt.export_tflite(model, os.path.join(tempfile.mkdtemp(), "m.tflite"),
    ...                         quantization=None, class_names=["cat", "dog"])["path"]
    >>> png = io.BytesIO(); Image.new("RGB", (20, 10), "red").save(png, "PNG")
    >>> row = TFLiteClassifier(path).predict([png.getvalue()], top_k=1)[0]
    >>> row["top"][0][0] in ("cat", "dog"), row["probabilities"].shape
    (True, (2,))
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from tfx_transfer.defaults import default_top_k
from tfx_transfer.export.exported import top_classes
from tfx_transfer.export.tflite_metadata import read_tflite_labels, read_tflite_metadata
from tfx_transfer.export.tflite_runtime import TFLiteModel


class TFLiteClassifier:
    """A ``.tflite`` file with its class names; ``predict`` takes encoded images or pixels.

    Args:
        path: a ``.tflite`` file written by :func:`tfx_transfer.export_tflite` (or any
            image classifier with TFLite metadata and a label file).
        num_threads: CPU threads of the interpreter.
    """

    def __init__(self, path: str | os.PathLike, num_threads: int | None = None) -> None:
        self.path = os.fspath(path)
        self.class_names = read_tflite_labels(path)
        thresholds = read_tflite_metadata(path)["thresholds"]
        self.model = TFLiteModel(path, num_threads=num_threads)
        self.image_size = self.model.image_size
        self.metadata = {"top_k": default_top_k(len(self.class_names)),
                         "image_size": list(self.image_size), "multi_label": thresholds is not None,
                         "thresholds": thresholds}

    def __repr__(self) -> str:
        return f"TFLiteClassifier({self.path!r}, classes={len(self.class_names)})"

    def _pixels(self, item: Any) -> np.ndarray:
        import tensorflow as tf

        from tfx_transfer.data.decode import decode_and_resize, resize_image

        if isinstance(item, (bytes, bytearray)):
            try:
                return decode_and_resize(tf.constant(bytes(item)), self.image_size).numpy()
            except tf.errors.InvalidArgumentError as err:  # the SavedModel's message, not TF's op
                from tfx_transfer.export.signatures import decode_failure

                raise tf.errors.InvalidArgumentError(
                    None, None, f"Could not decode 1 of 1 image(s) of the batch "
                    f"(index 0: {decode_failure(item)})") from err
        return resize_image(tf.convert_to_tensor(np.asarray(item)), self.image_size).numpy()

    def probabilities(self, images: Any) -> np.ndarray:
        """``float32 (N, C)`` probabilities of encoded images (bytes) or ``(H, W, 3)`` arrays."""
        pixels = np.stack([self._pixels(item) for item in images]).astype(np.float32)
        return self.model.probabilities(pixels)

    def predict(self, images: Any, top_k: int | None = None,
                unknown_threshold: float | None = None) -> list[dict]:
        """``[{"top": [(class, score), ...], "probabilities": row}]`` per image; a multi-label
        file's rows also have ``"labels"``: every label at or above its threshold.

        A ``.tflite`` file returns probabilities only: ``unknown_threshold`` (the "none of
        these" flag of a SavedModel export) is refused.
        """
        if unknown_threshold is not None:
            raise ValueError(f"unknown_threshold={unknown_threshold!r}, but {self.path} returns "
                             "probabilities only (no unknown score); use the SavedModel export.")
        top_k = self.metadata["top_k"] if top_k is None else int(top_k)
        if not 1 <= top_k <= len(self.class_names):
            raise ValueError(f"top_k={top_k} must be between 1 and {len(self.class_names)}.")
        return [top_classes(row, self.class_names, top_k, self.metadata["thresholds"])
                for row in self.probabilities(images)]
