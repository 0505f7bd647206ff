"""Target-domain images for adaptation: found and decoded as everywhere in the kit, labels never read.

A target is a folder (searched with :func:`tfx_transfer.data.files.find_images`:
every format the kit reads, TIFF included; class folders allowed, their names
ignored; with ``train/``/``val/`` only one split), a ``uint8`` image array or a
batched ``tf.data`` dataset (labels dropped unread).

Example:
    >>> import numpy as np
    >>> images, n = target_dataset(np.zeros((3, 32, 32, 3), "uint8"), (32, 32), batch_size=2)
    >>> n
    3
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tfx_transfer.data.files import IMAGE_EXTENSIONS, find_images, split_folders
from tfx_transfer.defaults import DEFAULT_SEED


def image_files(folder: str | os.PathLike, split: str = "train") -> list[str]:
    """Image files under ``folder`` (recursive, sorted), without reading any label.

    Class sub-folders are allowed and their names ignored. A folder laid out as
    ``train/``, ``val/`` (``validation/``), ``test/`` gives the files of ``split``
    only (``"train"``: the images to adapt on; ``"val"``/``"test"``: held out).

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from PIL import Image
        >>> photos = Path(tempfile.mkdtemp())
        >>> for name in ("b.jpg", "a.png", "c.tif"):
        ...     Image.new("RGB", (8, 8)).save(photos / name)
        >>> [Path(p).name for p in image_files(photos)]
        ['a.png', 'b.jpg', 'c.tif']
    """
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"Target folder {str(root)!r} does not exist or is not a folder.")
    splits = split_folders(root)
    if len(splits) > 1 or "train" not in splits or splits["train"] != root:
        key = "validation" if split in ("val", "validation") else split
        if key not in splits:
            raise ValueError(f"{root} has no {split}/ folder (it has "
                             f"{sorted(p.name for p in splits.values())}); pass another split.")
        root = splits[key]
    found, _ = find_images(root)
    if not found:
        raise ValueError(
            f"No image files ({', '.join(IMAGE_EXTENSIONS)}) under {str(root)!r}; the target "
            "needs images of the new domain (labels are not needed).")
    return [str(f) for f in found]


def check_image_size(got: Sequence[int], want: Sequence[int], what: str) -> None:
    """Raise a ValueError naming both sizes when ``got`` (height, width) is not ``want``.

    Args:
        got: the images' ``(height, width)``.
        want: the model's ``(height, width)``.
        what: how the message names the images.

    Example:
        >>> check_image_size((32, 32), (32, 32), "target images")  # same size: no error
        >>> check_image_size((64, 64), (32, 32), "target images")
        Traceback (most recent call last):
        ...
        ValueError: target images are 64x64 but the model takes 32x32; resize them to 32x32 (folders are resized for you).
    """
    got, want = tuple(int(v) for v in got), tuple(int(v) for v in want)
    if got != want:
        raise ValueError(f"{what} are {got[0]}x{got[1]} but the model takes {want[0]}x{want[1]}; "
                         f"resize them to {want[0]}x{want[1]} (folders are resized for you).")


def _folder_dataset(folder: str | os.PathLike, image_size: tuple[int, int], batch_size: int,
                    seed: int, shuffle: bool) -> tuple[Any, int]:
    """The folder's images decoded as the loader decodes them (TensorFlow, or Pillow for TIFF)."""
    from tfx_transfer.data.pipeline import make_dataset
    from tfx_transfer.data.verify import ROUTES, verify_images

    paths = image_files(folder)
    routes = verify_images(paths, folder)
    used = [p for p in paths if routes[p] in ROUTES]
    skipped = [p for p in paths if routes[p] not in ROUTES]
    if skipped:
        warnings.warn(f"Skipped {len(skipped)} target file(s) that cannot be decoded: "
                      + ", ".join(skipped[:10]) + (" ..." if len(skipped) > 10 else ""),
                      UserWarning, stacklevel=4)
    if not used:
        raise ValueError(f"No decodable image in the target folder {str(folder)!r} "
                         f"({routes[skipped[0]]}); the target needs readable images.")
    images = make_dataset([(p, 0) for p in used], routes, split="target", num_classes=1,
                          image_size=image_size, batch_size=batch_size, label_mode="int",
                          shuffle=shuffle, seed=seed, cache=None, crop_to_aspect_ratio=False,
                          augmentation=None)
    return images.map(lambda x, _: x), len(used)


def target_dataset(target: Any, image_size: tuple[int, int], batch_size: int = 32,
                   seed: int = DEFAULT_SEED, shuffle: bool = True,
                   count: bool = True) -> tuple[Any, int | None]:
    """``(batched tf.data of uint8 images, number of images)`` from a folder, array or dataset.

    Args:
        target: a folder (see :func:`image_files`; each file decoded as
            :func:`~tfx_transfer.load_image_folder` decodes it, undecodable files
            left out with one warning), a ``uint8`` array ``(N, H, W, 3)``, or a
            batched ``tf.data`` dataset of images or ``(images, labels, ...)``
            tuples, whose labels are dropped.
        image_size: the model's ``(height, width)``; folders are resized to it,
            arrays must have it.
        batch_size: images per batch (folders and arrays).
        seed: seed of the shuffling.
        shuffle: reshuffle folders and arrays every iteration.
        count: counting a ``tf.data`` dataset means reading it once; ``False``
            skips that and gives ``None`` as its number.

    Example:
        >>> import numpy as np
        >>> ds, n = target_dataset(np.zeros((5, 32, 32, 3), "uint8"), (32, 32), batch_size=2)
        >>> n, [len(batch) for batch in ds]
        (5, [2, 2, 1])
    """
    import tensorflow as tf

    if isinstance(target, (str, os.PathLike)):
        return _folder_dataset(target, image_size, batch_size, seed, shuffle)
    if isinstance(target, np.ndarray):
        if target.ndim != 4 or target.shape[-1] != 3:
            raise ValueError(f"target array has shape {target.shape}; expected (N, H, W, 3) "
                             "RGB pixels in 0..255.")
        check_image_size(target.shape[1:3], image_size, "target images")
        ds = tf.data.Dataset.from_tensor_slices(target)
        if shuffle:
            ds = ds.shuffle(len(target), seed=seed, reshuffle_each_iteration=True)
        return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE), len(target)
    if isinstance(target, tf.data.Dataset):
        if isinstance(target.element_spec, (tuple, list)):
            target = target.map(lambda *parts: parts[0])  # labels dropped, never read
        if int(target.cardinality()) <= 0:
            raise ValueError("The target dataset has no known size; pass a folder or an array, "
                             "or a finite batched dataset.")
        return target, (int(sum(int(tf.shape(b)[0]) for b in target)) if count else None)
    raise TypeError(f"target={type(target).__name__}: pass a folder path, a uint8 image array "
                    "(N, H, W, 3) or a batched tf.data dataset.")
