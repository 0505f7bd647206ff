"""The one way the kit runs a ``.tflite`` model: LiteRT where installed, ``tf.lite`` otherwise.

LiteRT (``pip install ai-edge-litert``, the ``tflite`` extra) is TensorFlow Lite's
successor; from TensorFlow 2.20 ``tf.lite.Interpreter`` is deprecated (it still
works and runs the same kernels). :class:`TFLiteModel` hides which one runs and
the quantized input/output of full-integer models: it takes RGB pixels in 0..255
and returns float32 probabilities, whatever the file's input and output types.
The parity check, ``predict`` on a ``.tflite`` file and the benchmark use it.

Example:
    >>> tflite_runtime() in ("ai-edge-litert", "tf.lite")  # TFLiteModel(path).probabilities(pixels)
    True
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import numpy as np


def tflite_runtime() -> str:
    """``"ai-edge-litert"`` when LiteRT is installed, else ``"tf.lite"``.

    Example:
        >>> tflite_runtime() in ("ai-edge-litert", "tf.lite")
        True
    """
    try:
        import ai_edge_litert.interpreter  # noqa: F401
    except ImportError:
        return "tf.lite"
    return "ai-edge-litert"


def _interpreter(content: bytes, num_threads: int | None) -> Any:
    if tflite_runtime() == "ai-edge-litert":
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter(model_content=content, num_threads=num_threads)
    import tensorflow as tf

    with warnings.catch_warnings():  # deprecated in favour of LiteRT (the reports name the
        # runtime used), still works; TF 2.18-2.19 and 2.20+ word the warning differently
        warnings.filterwarnings("ignore", message=r"(?s).*tf\.lite\.Interpreter is deprecated")
        warnings.filterwarnings("ignore", message=r"(?s).*Please use the LiteRT interpreter")
        return tf.lite.Interpreter(model_content=content, num_threads=num_threads)


class TFLiteModel:
    """A ``.tflite`` model (file or bytes) that maps 0..255 RGB pixels to float32 probabilities.

    Args:
        model: a ``.tflite`` path or the file's bytes.
        num_threads: CPU threads of the interpreter (``None``: the runtime's default).
    """

    def __init__(self, model: str | os.PathLike | bytes, num_threads: int | None = None) -> None:
        if isinstance(model, (bytes, bytearray)):
            content, self.path = bytes(model), None
        else:
            self.path = os.fspath(model)
            with open(self.path, "rb") as f:  # FileNotFoundError names the file
                content = f.read()
        self.runtime = tflite_runtime()
        self._interpreter = _interpreter(content, num_threads)
        self._input = self._interpreter.get_input_details()[0]
        self._output = self._interpreter.get_output_details()[0]
        self._batch = None

    image_size = property(lambda self: tuple(int(v) for v in self._input["shape"][1:3]),
                          doc="``(height, width)`` of the model's input.")
    input_dtype = property(lambda self: np.dtype(self._input["dtype"]).name,
                           doc="the input tensor's dtype name (``float32``, ``uint8``, ``int8``).")
    output_dtype = property(lambda self: np.dtype(self._output["dtype"]).name,
                            doc="the output tensor's dtype name.")

    def _quantize(self, pixels: np.ndarray) -> np.ndarray:
        dtype = np.dtype(self._input["dtype"])
        if dtype.kind == "f":
            return pixels.astype(dtype)
        scale, zero = self._input["quantization"]
        info = np.iinfo(dtype)
        return np.clip(np.round(pixels / scale + zero), info.min, info.max).astype(dtype)

    def _dequantize(self, values: np.ndarray) -> np.ndarray:
        if np.dtype(self._output["dtype"]).kind == "f":
            return values.astype(np.float32)
        scale, zero = self._output["quantization"]
        return ((values.astype(np.float32) - zero) * scale).astype(np.float32)

    def probabilities(self, pixels: Any) -> np.ndarray:
        """``(N, C)`` float32 probabilities of ``(N, H, W, 3)`` RGB pixels in 0..255."""
        pixels = np.asarray(pixels, np.float32)
        if pixels.ndim != 4 or pixels.shape[1:] != (*self.image_size, 3):
            raise ValueError(f"pixels have shape {pixels.shape}; this TFLite model takes "
                             f"(N, {self.image_size[0]}, {self.image_size[1]}, 3).")
        index = self._input["index"]
        if self._batch != len(pixels):
            self._interpreter.resize_tensor_input(index, [len(pixels), *self.image_size, 3])
            self._interpreter.allocate_tensors()
            self._batch = len(pixels)
        self._interpreter.set_tensor(index, self._quantize(pixels))
        self._interpreter.invoke()
        return self._dequantize(self._interpreter.get_tensor(self._output["index"]))
