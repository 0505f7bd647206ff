"""Real images for an export: the calibration sample of int8 TFLite and the images of a parity check.

:func:`sample_images` turns a folder (class folders or a flat folder of images;
its ``train/`` split when it has one), an :class:`~tfx_transfer.ImageFolder`
(its training images), a ``tf.data`` dataset or iterable of image batches (or
``(images, labels)`` batches), or an array into at most ``count`` RGB images in
0..255 at the model's size, drawn with a seed. :func:`labelled_sample` does the
same for labelled images (the validation images of a parity check).

Example:
    >>> import numpy as np
    >>> pixels = np.zeros((10, 8, 8, 3), "uint8")
    >>> sample_images(pixels, (8, 8), count=4).shape
    (4, 8, 8, 3)
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tfx_transfer.defaults import DEFAULT_SEED

DEFAULT_CALIBRATION_IMAGES = 300  # "a few hundred": TFLite's calibration settles well before that


def _read(paths: Sequence[Path], image_size: Sequence[int], crop: bool) -> np.ndarray:
    import tensorflow as tf

    from tfx_transfer.data.decode import decode_and_resize

    images = [decode_and_resize(tf.io.read_file(str(p)), image_size, crop).numpy() for p in paths]
    return np.stack(images).astype(np.float32)


def _pick(n: int, count: int | None, seed: int) -> np.ndarray:
    if count is None or n <= count:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, count, replace=False))


def _folder_files(folder: Path) -> list[Path]:
    from tfx_transfer.data.files import find_images, split_folders

    if not folder.is_dir():
        raise FileNotFoundError(f"Image folder {str(folder)!r} does not exist or is not a folder.")
    root = split_folders(folder).get("train", folder)
    files, _ = find_images(root)
    if not files:
        raise ValueError(f"No images under {str(root)!r} (class folders or a flat folder of images).")
    return files


def _batches(data: Any) -> tuple[np.ndarray, np.ndarray | None]:
    """Concatenated images (and labels, when the batches have them) of a dataset or iterable."""
    images, labels = [], []
    for batch in data:
        if isinstance(batch, (tuple, list)):
            images.append(np.asarray(batch[0]))
            labels.append(np.asarray(batch[1]))
        else:
            images.append(np.asarray(batch))
    if not images:
        raise ValueError("The dataset yielded no images.")
    y = np.concatenate(labels) if labels else None  # indices, one-hot or multi-hot: as given
    return np.concatenate(images), y


def sample_images(data: Any, image_size: Sequence[int], count: int | None = DEFAULT_CALIBRATION_IMAGES,
                  seed: int = DEFAULT_SEED, crop_to_aspect_ratio: bool = False) -> np.ndarray:
    """At most ``count`` images of ``data`` as ``float32 (N, H, W, 3)`` pixels in 0..255.

    Args:
        data: a folder (its ``train/`` split if any; class folders or flat), an
            ``ImageFolder`` (its training files), a dataset/iterable of image or
            ``(images, labels)`` batches, or an ``(N, H, W, 3)`` array.
        image_size: ``(height, width)`` to read files at.
        count: most images returned (``None``: all), drawn with ``seed``.
        seed: seed of the draw.
        crop_to_aspect_ratio: center-crop files before resizing (the training setting).

    Example:
        >>> sample_images(np.ones((3, 4, 4, 3)), (4, 4)).dtype
        dtype('float32')
    """
    if isinstance(data, (str, os.PathLike)):
        files = _folder_files(Path(data))
        return _read([files[i] for i in _pick(len(files), count, seed)], image_size,
                     crop_to_aspect_ratio)
    if hasattr(data, "files") and hasattr(data, "class_names"):  # an ImageFolder
        files = [Path(path) for path, _ in data.files["train"]]
        return _read([files[i] for i in _pick(len(files), count, seed)], image_size,
                     data.crop_to_aspect_ratio)
    pixels = np.asarray(data) if isinstance(data, np.ndarray) else _batches(data)[0]
    if pixels.ndim != 4 or pixels.shape[-1] != 3:
        raise ValueError(f"Images have shape {pixels.shape}; need (N, H, W, 3) RGB pixels in 0..255.")
    return pixels[_pick(len(pixels), count, seed)].astype(np.float32)


def labelled_sample(data: Any, image_size: Sequence[int], class_names: Sequence[str] | None,
                    count: int | None = None, seed: int = DEFAULT_SEED
                    ) -> tuple[np.ndarray, np.ndarray]:
    """At most ``count`` labelled images: ``(pixels float32 (N, H, W, 3), labels)``.

    The labels are as ``data`` gives them: class indices ``int (N,)``, or ``float32 (N, C)``
    one-hot or multi-hot rows (:func:`~tfx_transfer.export.parity.compare` reads both).

    Args:
        data: what :func:`~tfx_transfer.data.labelled.labelled_batches` reads (a folder: its
            test, else validation split; an ``ImageFolder``; a dataset of ``(images, labels)``;
            an ``(x, y)`` tuple).
        image_size: ``(height, width)`` to read files at.
        class_names: the model's classes; a folder's labels are matched to them by name.
        count: most images returned (``None``: all), drawn with ``seed``.
        seed: seed of the draw.

    Example:
        >>> x, y = labelled_sample((np.zeros((5, 4, 4, 3)), np.arange(5) % 2), (4, 4), None, count=3)
        >>> x.shape, y.tolist()
        ((3, 4, 4, 3), [1, 1, 0])
    """
    from tfx_transfer.data.labelled import labelled_batches

    batches = labelled_batches(data, image_size, class_names, caller="export_tflite").batches
    x, y = _batches(batches)
    keep = _pick(len(x), count, seed)
    y = np.asarray(y)[keep]
    return x[keep].astype(np.float32), y.astype(np.int64) if y.ndim == 1 else y.astype(np.float32)
