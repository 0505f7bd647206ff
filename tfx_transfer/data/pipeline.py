"""``(path, label)`` lists to batched ``tf.data`` datasets: decode, resize, cache, shuffle, augment.

:func:`make_dataset` is what :func:`tfx_transfer.load_image_folder` builds each
split with; :func:`files_dataset` reads a list of labelled files in order, with no
shuffling, cache or augmentation (what evaluation needs).

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> from PIL import Image
    >>> root = Path(tempfile.mkdtemp())
    >>> for i in range(3):
    ...     Image.new("RGB", (20, 10), (80 * i, 0, 0)).save(root / f"{i}.png")
    >>> ds = files_dataset([(str(root / f"{i}.png"), i % 2) for i in range(3)], (8, 8), batch_size=2)
    >>> [(tuple(x.shape), y.tolist()) for x, y in ds.as_numpy_iterator()]
    [((2, 8, 8, 3), [0, 1]), ((1, 8, 8, 3), [0])]
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from tfx_transfer.data.augmentation import as_augmentation
from tfx_transfer.data.decode import decode_image, pil_decode, resize_image
from tfx_transfer.data.verify import assumed_routes, file_key


def _shuffle_buffer(n: int, image_size: Sequence[int], cache: str | None) -> int:
    """Whole split for the memory cache (tensors are shared); ~256 MB of pixels for a file cache."""
    if cache == "memory":
        return max(n, 1)
    per_image = int(image_size[0]) * int(image_size[1]) * 3
    return max(1, min(n, (256 << 20) // per_image))


def _cache_path(cache_dir: str, split: str, files: list[tuple[str, int]],
                image_size: Sequence[int], crop: bool) -> str:
    """A cache file name keyed by the file list, sizes/mtimes and resize settings (stale caches never replay)."""
    digest = hashlib.sha1(repr((tuple(image_size), crop)).encode())
    for path, label in files:
        digest.update(f"{path}|{label}|{file_key(path)}\n".encode())
    os.makedirs(cache_dir, exist_ok=True)
    return os.path.join(cache_dir, f"{split}-{digest.hexdigest()[:16]}")


def make_dataset(
    files: list[tuple[str, int]],
    routes: dict[str, str],
    *,
    split: str,
    num_classes: int,
    image_size: tuple[int, int],
    batch_size: int,
    label_mode: str,
    shuffle: bool,
    seed: int,
    cache: str | None,
    crop_to_aspect_ratio: bool,
    augmentation: Any,
) -> tf.data.Dataset:
    """A batched dataset of ``(uint8 images, labels)`` from ``(path, label)`` pairs.

    Args:
        files: ``(path, label)`` pairs, in the order read when ``shuffle`` is off.
        routes: path -> ``"tf"`` or ``"pil"``, the decoder of each file
            (:func:`tfx_transfer.data.verify.verify_images`).
        split: the split's name (names the on-disk cache file).
        num_classes: for one-hot labels.
        image_size: ``(height, width)`` every image is resized to.
        batch_size: images per batch.
        label_mode: ``"int"``, ``"categorical"`` (one-hot ``float32``) or ``"multi_hot"``
            (each label a tuple of class indices; multi-hot ``float32`` rows).
        shuffle: reshuffle every epoch.
        seed: seed of the shuffling.
        cache: ``None``, ``"memory"`` or a folder of cache files.
        crop_to_aspect_ratio: center-crop before resizing instead of stretching.
        augmentation: ``None`` or an object with ``map_dataset`` (applied to batches).

    Example:
        >>> import tempfile
        >>> from PIL import Image
        >>> path = os.path.join(tempfile.mkdtemp(), "a.png")
        >>> Image.new("RGB", (9, 9)).save(path)
        >>> ds = make_dataset([(path, 1)], {path: "tf"}, split="train", num_classes=2,
        ...                   image_size=(4, 4), batch_size=8, label_mode="categorical",
        ...                   shuffle=False, seed=0, cache=None, crop_to_aspect_ratio=False,
        ...                   augmentation=None)
        >>> next(ds.as_numpy_iterator())[1].tolist()
        [[0.0, 1.0]]
    """
    paths = [p for p, _ in files]
    if label_mode == "multi_hot":  # labels are tuples of class indices
        labels = np.zeros((len(files), num_classes), np.float32)
        for row, (_, lab) in enumerate(files):
            labels[row, list(lab)] = 1.0
    else:
        labels = np.array([lab for _, lab in files], dtype=np.int32)
    use_pil = np.array([routes.get(p) == "pil" for p in paths], dtype=bool)

    def load(path, label, pil):
        if use_pil.any():
            image = tf.cond(
                pil,
                lambda: tf.ensure_shape(tf.numpy_function(pil_decode, [path], tf.uint8), [None, None, 3]),
                lambda: decode_image(tf.io.read_file(path)),
            )
        else:
            image = decode_image(tf.io.read_file(path))
        image = resize_image(image, image_size, crop_to_aspect_ratio)
        if label_mode == "categorical":
            label = tf.one_hot(label, num_classes, dtype=tf.float32)
        return image, label

    ds = tf.data.Dataset.from_tensor_slices((tf.constant(paths, tf.string), labels, use_pil))
    if shuffle and not cache:
        ds = ds.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=not shuffle)
    if cache:
        ds = ds.cache("" if cache == "memory" else _cache_path(cache, split, files, image_size, crop_to_aspect_ratio))
        if shuffle:
            buffer = _shuffle_buffer(len(paths), image_size, cache)
            ds = ds.shuffle(buffer, seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size)
    if augmentation is not None:
        ds = augmentation.map_dataset(ds)
    return ds.prefetch(tf.data.AUTOTUNE)


def files_dataset(files: list[tuple[str, Any]], image_size: Sequence[int], batch_size: int = 32,
                  crop_to_aspect_ratio: bool = False,
                  routes: dict[str, str] | None = None, num_classes: int | None = None) -> tf.data.Dataset:
    """``(path, label)`` pairs read in order: ``uint8`` images and ``int32`` labels, no shuffling.

    The files are taken as readable (as listed in an ``ImageFolder``'s ``files``).

    Args:
        files: ``(path, label)`` pairs.
        image_size: ``(height, width)`` every image is resized to.
        batch_size: images per batch.
        crop_to_aspect_ratio: center-crop before resizing instead of stretching.
        routes: path -> ``"tf"`` or ``"pil"`` (an ``ImageFolder``'s ``routes``); a
            file not in it goes to Pillow when :func:`~tfx_transfer.data.decode.needs_pil`.
        num_classes: for multi-label files (labels are tuples of class indices):
            the width of the multi-hot ``float32`` labels.

    Example:
        >>> files_dataset([], (8, 8)).element_spec[1].dtype
        tf.int32
    """
    size = (int(image_size[0]), int(image_size[1]))
    return make_dataset(
        list(files), {**assumed_routes([p for p, _ in files]), **(routes or {})}, split="files",
        num_classes=num_classes or 0, image_size=size, batch_size=batch_size,
        label_mode="int" if num_classes is None else "multi_hot", shuffle=False, seed=0,
        cache=None, crop_to_aspect_ratio=crop_to_aspect_ratio, augmentation=None,
    )


def check_loader_args(image_size: int | Sequence[int], label_mode: str, validation_split: float | None,
                      augmentation: Any) -> tuple[tuple[int, int], Any]:
    """``(image_size as (height, width), augmentation object)`` of a loader's arguments; ValueError when bad.

    Args:
        image_size: an int or ``(height, width)``.
        label_mode: ``"int"``, ``"categorical"`` or (multi-label tables) ``"multi_hot"``.
        validation_split: ``None`` or a fraction in (0, 1).
        augmentation: what :func:`~tfx_transfer.data.augmentation.as_augmentation` takes;
            one that mixes labels (MixUp, CutMix) needs non-integer labels.

    Example:
        >>> check_loader_args(32, "int", 0.2, None)
        ((32, 32), None)
    """
    if isinstance(image_size, int):
        image_size = (image_size, image_size)
    image_size = (int(image_size[0]), int(image_size[1]))
    if label_mode not in ("int", "categorical", "multi_hot"):
        raise ValueError(f"label_mode={label_mode!r}: use 'int' or 'categorical'.")
    if validation_split is not None and not 0 < validation_split < 1:
        raise ValueError(f"validation_split={validation_split!r} must be in (0, 1), or None for no split.")
    augmentation = as_augmentation(augmentation)
    if augmentation is not None and augmentation.mixing and label_mode == "int":
        raise ValueError(
            f"augmentation mixes labels ({augmentation.mixing}); use label_mode='categorical'."
        )
    return image_size, augmentation
