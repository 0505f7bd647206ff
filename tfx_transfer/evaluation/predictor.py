"""A model to score, as one function ``pixels (N, H, W, 3) -> probabilities (N, C)``.

:func:`predictor` is what :func:`tfx_transfer.evaluate_model`,
:func:`tfx_transfer.top_losses` and :func:`tfx_transfer.predict_tta` call: a Keras
model (``predict_on_batch``), an exported SavedModel
(:func:`tfx_transfer.load_exported`, through its pixel signatures, no Keras model
needed) or any function ``images -> probabilities``.

Example:
    >>> import numpy as np
    >>> predict = predictor(lambda images: np.full((len(images), 2), 0.5))
    >>> predict(np.zeros((3, 8, 8, 3), "uint8")).shape
    (3, 2)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np


def is_exported(model: Any) -> bool:
    """Whether ``model`` is an exported SavedModel (:class:`tfx_transfer.ExportedModel`).

    Example:
        >>> is_exported(lambda images: images)
        False
    """
    return hasattr(model, "saved_model") and hasattr(model, "class_names") and hasattr(model, "metadata")


def model_image_size(model: Any) -> tuple[int, int] | None:
    """``(height, width)`` of the model's input, or ``None`` for a plain function.

    Example:
        >>> model_image_size(lambda images: images) is None
        True
    """
    if is_exported(model):
        return tuple(int(s) for s in model.image_size)
    shape = getattr(model, "input_shape", None)
    if shape is None:
        return None
    return int(shape[1]), int(shape[2])


def _exported_predict(model: Any) -> Callable[[np.ndarray], np.ndarray]:
    signatures = model.saved_model.signatures

    def predict(images: np.ndarray) -> np.ndarray:
        import tensorflow as tf

        images = np.asarray(images)
        if images.dtype == np.uint8:
            out = signatures["predict_pixels_uint8"](pixels=tf.constant(images))
        else:
            out = signatures["predict_pixels"](pixels=tf.constant(images, tf.float32))
        return out["probabilities"].numpy()

    return predict


def predictor(model: Any) -> Callable[[np.ndarray], np.ndarray]:
    """``images (N, H, W, 3) in 0..255 -> float64 probabilities (N, C)`` for a model.

    Args:
        model: a Keras model, an exported model (:func:`tfx_transfer.load_exported`)
            or a function ``images -> probabilities``.

    Example:
        >>> import numpy as np, tfx_transfer as tt
        >>> model = tt.build_transfer_model("vgg16", 3, input_shape=32, weights=None)
        >>> predictor(model)(np.zeros((2, 32, 32, 3), "uint8")).shape
        (2, 3)
    """
    if is_exported(model):
        predict = _exported_predict(model)
    elif hasattr(model, "predict_on_batch"):
        import keras

        def predict(images: np.ndarray) -> np.ndarray:
            return keras.ops.convert_to_numpy(model.predict_on_batch(images))
    elif callable(model):
        predict = model
    else:
        raise ValueError(f"model={type(model).__name__}: pass a Keras model, an exported model "
                         "(tfx_transfer.load_exported), a function images -> probabilities, or "
                         "(for evaluate_model) a path to a run folder, export folder or .keras file.")
    return lambda images: np.asarray(predict(images), np.float64)
