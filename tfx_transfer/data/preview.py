"""A PNG grid of augmented samples: what an augmentation does to your images."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import keras
import numpy as np

from tfx_transfer.data.augmentation import Augmentation, as_augmentation
from tfx_transfer.defaults import DEFAULT_SEED


def preview_augmentation(
    images_or_dataset: Any,
    augmentation: Augmentation | str | dict,
    path: str | os.PathLike = "augmentation.png",
    n: int = 9,
    seed: int | None = DEFAULT_SEED,
) -> Path:
    """Save a PNG grid of ``n`` augmented samples and return its path.

    One image ``(H, W, 3)`` gives ``n`` variants of it; a batch or a ``tf.data``
    dataset (of images or ``(images, labels)``) gives its first ``n`` images,
    each augmented (cycling when there are fewer). Label mixing is not shown.

    Args:
        images_or_dataset: one image, a batch, or a ``tf.data`` dataset.
        augmentation: an :class:`Augmentation`, a preset name or a dict of
            ImageDataGenerator keywords (:func:`as_augmentation`).
        path: the PNG file to write.
        n: samples shown.
        seed: seed of the random draws (``None``: a different grid each call).

    Example:
        >>> import os, tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "aug.png")
        >>> image = np.random.default_rng(0).integers(0, 255, (32, 32, 3), "uint8")
        >>> preview_augmentation(image, Augmentation(rotation_range=30), path).name
        'aug.png'
    """
    from matplotlib.figure import Figure

    images = _first_images(images_or_dataset, n)
    augmentation = as_augmentation(augmentation)
    if augmentation is None:
        raise ValueError("augmentation=None: nothing to preview; pass a preset name, a dict of "
                         "ImageDataGenerator keywords or an Augmentation.")
    config = {**augmentation.get_config(), "seed": seed}
    layer = Augmentation.from_config(config)
    out = np.clip(keras.ops.convert_to_numpy(layer._augment(images)), 0, 255).astype("uint8")
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(2 * cols, 2 * rows))
    for i, axis in enumerate(fig.subplots(rows, cols, squeeze=False).ravel()):
        axis.axis("off")
        if i < n:
            axis.imshow(out[i])
    fig.tight_layout()
    fig.savefig(path)
    return Path(path)


def _first_images(source: Any, n: int) -> np.ndarray:
    """``n`` images as a float32 (n, H, W, 3) array from an image, a batch or a dataset."""
    if hasattr(source, "take") and hasattr(source, "element_spec"):  # tf.data.Dataset
        batches = []
        for element in source:
            batch = element[0] if isinstance(element, tuple) else element
            batch = np.asarray(batch)
            batches.append(batch if batch.ndim == 4 else batch[None])
            if sum(len(b) for b in batches) >= n:
                break
        source = np.concatenate(batches)
    images = np.asarray(source, dtype="float32")
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"Expected images (H, W, 3) or (N, H, W, 3); got shape {images.shape}.")
    return images[np.arange(n) % len(images)]
