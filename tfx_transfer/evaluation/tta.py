"""Test-time augmentation: average the probabilities over flipped and shifted views of each image.

:func:`predict_tta` predicts each image as it is, mirrored left-right, and shifted
by a few pixels up, down, left and right (reflect padding, same size: no resize),
and averages the probabilities (fastai's ``Learner.tta``: about one accuracy point
for several times the inference cost). It takes a Keras model or any function
``images -> probabilities`` (e.g. an exported model's), so
:func:`tfx_transfer.evaluate_model` can report plain and TTA metrics side by side
(``evaluate_model(..., tta=True)``, ``tfx-transfer evaluate --tta``).

Example:
    >>> import numpy as np, tfx_transfer as tt
    >>> model = tt.build_transfer_model("vgg16", 3, input_shape=(32, 32, 3),
    ...                                 weights=None, head="avg")
    >>> probs = predict_tta(model, np.zeros((2, 32, 32, 3), "uint8"))
    >>> probs.shape, bool(np.allclose(probs.sum(axis=1), 1, atol=1e-5))
    ((2, 3), True)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from tfx_transfer.evaluation.predictor import predictor


def tta_views(images: Any, flip: bool = True, shift: float = 0.1) -> list[np.ndarray]:
    """The views :func:`predict_tta` averages over: the images, mirrored, and shifted 4 ways.

    Args:
        images: a batch ``(N, H, W, C)``.
        flip: add the left-right mirror image.
        shift: shift by this fraction of the side, in ``[0, 0.5)`` (at least one
            pixel when > 0), down, up, right and left; the uncovered border is
            filled by reflection. 0: no shifted views.

    Returns:
        The views, each ``(N, H, W, C)``: the images, the mirror (``flip``), then the
        four shifts.

    Example:
        >>> len(tta_views(np.zeros((1, 32, 32, 3))))
        6
        >>> len(tta_views(np.zeros((1, 32, 32, 3)), flip=False, shift=0))
        1
    """
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"images of shape {images.shape}: pass a batch (N, H, W, C).")
    if not 0 <= shift < 0.5:
        raise ValueError(f"shift={shift!r} must be a fraction of the side in [0, 0.5).")
    views = [images]
    if flip:
        views.append(images[:, :, ::-1])
    if shift > 0:
        height, width = images.shape[1:3]
        dy, dx = max(1, round(shift * height)), max(1, round(shift * width))
        padded = np.pad(images, ((0, 0), (dy, dy), (dx, dx), (0, 0)), mode="reflect")
        for oy, ox in ((0, dx), (2 * dy, dx), (dy, 0), (dy, 2 * dx)):  # down, up, right, left
            views.append(padded[:, oy:oy + height, ox:ox + width])
    return views


def predict_tta(model: Any, images: Any, flip: bool = True, shift: float = 0.1) -> np.ndarray:
    """Class probabilities averaged over :func:`tta_views` of each image.

    Args:
        model: a Keras model, an exported model or a function ``images (N, H, W, 3) ->
            probabilities`` (:func:`tfx_transfer.evaluation.predictor.predictor`).
        images: a batch of RGB pixels in 0..255 at the model's input size.
        flip: add the left-right mirror image (for photos; not for text or digits).
        shift: also shift by this fraction of the side, 4 ways (0: no shifts).

    Returns:
        float64 ``(N, C)``, the mean of the views' probabilities (rows sum to 1).

    Example:
        >>> predict_tta(lambda x: np.full((len(x), 2), .5), np.zeros((1, 8, 8, 3))).tolist()
        [[0.5, 0.5]]
    """
    predict = predictor(model)
    views = tta_views(images, flip=flip, shift=shift)
    return np.mean([np.asarray(predict(np.ascontiguousarray(v)), np.float64) for v in views], axis=0)


def format_tta(plain: Mapping[str, Any], tta: Mapping[str, Any]) -> str:
    """Plain and TTA metrics side by side (two :func:`classification_metrics` dicts).

    Example:
        >>> a = {"accuracy": .9, "top_k": 2, "top_k_accuracy": 1., "loss": .3}
        >>> print(format_tta(a, {**a, "accuracy": .92, "views": 6}).splitlines()[1])
        accuracy              0.9000    0.9200    +0.0200
    """
    views = tta.get("views")
    lines = [f"{'':<18}{'plain':>10}{'TTA':>10}{'change':>11}" +
             (f"   (TTA: mean of {views} views)" if views else "")]
    rows = [("accuracy", "accuracy"), ("loss", "loss")]
    if "top_k_accuracy" in plain and plain["top_k"] > 1:  # top-1 accuracy is the accuracy
        rows.insert(1, (f"top-{plain['top_k']} accuracy", "top_k_accuracy"))
    for label, key in rows:
        lines.append(f"{label:<18}{plain[key]:>10.4f}{tta[key]:>10.4f}{tta[key] - plain[key]:>+11.4f}")
    return "\n".join(lines)
