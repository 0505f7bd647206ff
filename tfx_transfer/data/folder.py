"""Image folders to ``tf.data``: scan, verify, split, then batch (:func:`load_image_folder`).

Accepted layouts (class names are the sub-folder names, sorted alphabetically
like Keras)::

    photos/cats/*.jpg, photos/dogs/*.png          one folder of classes
    photos/train/<class>/..., photos/val/<class>/...   (``validation/`` and
                                                       ``test/`` also accepted)

Before any dataset is built every candidate file is decoded once with the very
decoder used for training (:mod:`tfx_transfer.data.verify`), so a bad file is
reported up front (one ``UserWarning`` naming each file and the count) instead
of crashing an epoch. Hidden entries (``.DS_Store``, ``._x``, ``.cache/``,
``__MACOSX/``, ``Thumbs.db``, ``desktop.ini``) are ignored silently
(:mod:`tfx_transfer.data.files`). Pixels are decoded by
:mod:`tfx_transfer.data.decode` and batched by :mod:`tfx_transfer.data.pipeline`.

Example:
    >>> import tempfile, tfx_transfer as tt
    >>> from pathlib import Path
    >>> from PIL import Image
    >>> photos = Path(tempfile.mkdtemp())  # photos/cats/*.jpg, photos/dogs/*.jpg
    >>> for i in range(10):
    ...     label = photos / ("cats", "dogs")[i % 2]
    ...     label.mkdir(exist_ok=True)
    ...     Image.new("RGB", (48, 40), (25 * i, 90, 0)).save(label / f"{i}.jpg")
    >>> folder = tt.load_image_folder(photos, image_size=32, validation_split=0.2)
    >>> folder.class_names, folder.counts["train"]
    (['cats', 'dogs'], {'cats': 4, 'dogs': 4})
    >>> model = tt.build_transfer_model("vgg16", 2, input_shape=32, weights=None, head="avg")
    >>> model.compile("adam", "sparse_categorical_crossentropy")
    >>> _ = model.fit(folder.train, validation_data=folder.validation,
    ...               class_weight=tt.class_weights(folder), verbose=0)
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from tfx_transfer.data.files import (
    find_images,
    is_hidden,
    split_folders,
    visible_dirs,
    warn_skipped,
)
from tfx_transfer.data.image_cache import DEFAULT_CACHE_BUDGET_GB, resolve_cache_images
from tfx_transfer.data.pipeline import check_loader_args, make_dataset
from tfx_transfer.data.verify import ROUTES, assumed_routes, verify_images
from tfx_transfer.defaults import DEFAULT_SEED

# -- the result ----------------------------------------------------------------


@dataclass(frozen=True)
class ImageFolder:
    """What :func:`load_image_folder` returns (each argument is also an attribute).

    Args:
        train, validation, test: batched ``tf.data.Dataset`` of ``(images, labels)``
            (``validation``/``test`` are ``None`` when absent); images ``uint8``
            ``(B, H, W, 3)`` in 0..255 (``float32`` when a dataset-side
            augmentation is applied to ``train``), labels ``int32`` ``(B,)`` or
            one-hot ``float32`` ``(B, num_classes)``.
        class_names: sorted class names; label ``i`` is ``class_names[i]``.
        files: split name -> list of ``(path, label)`` actually used.
        skipped: ``(path, reason)`` for every file left out (also warned about once).
        image_size: ``(height, width)`` of the images.
        crop_to_aspect_ratio: whether images were center-cropped before resizing.
        routes: path -> ``"tf"`` or ``"pil"``, the decoder of each file used.
        multi_label: labels are sets of classes (:func:`tfx_transfer.load_image_table`):
            each label in ``files`` is a tuple of class indices, batches carry
            multi-hot ``float32`` ``(B, num_classes)`` rows.
        cache_images_used: the decoded-image cache in use (``"memory"``, ``"none"`` or a
            folder; what ``cache_images="auto"`` chose) and ``cache_images_reason`` why.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from PIL import Image
        >>> photos = Path(tempfile.mkdtemp())
        >>> for i in range(10):
        ...     label = photos / ("cats", "dogs")[i % 2]
        ...     label.mkdir(exist_ok=True)
        ...     Image.new("RGB", (40, 40)).save(label / f"{i}.png")
        >>> folder = load_image_folder(photos, image_size=32, validation_split=0.2)
        >>> folder.counts["validation"]["cats"], folder.num_classes, folder.skipped
        (1, 2, [])
    """

    train: tf.data.Dataset
    validation: tf.data.Dataset | None
    test: tf.data.Dataset | None
    class_names: list[str]
    files: dict[str, list[tuple[str, int]]]
    skipped: list[tuple[str, str]]
    image_size: tuple[int, int] | None = None
    crop_to_aspect_ratio: bool = False
    routes: dict[str, str] = field(default_factory=dict)
    multi_label: bool = False
    cache_images_used: str = "none"
    cache_images_reason: str = ""

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.class_names)

    @property
    def counts(self) -> dict[str, dict[str, int]]:
        """Split name -> class name -> number of usable images (multi-label: images showing it)."""
        out = {}
        for split, pairs in self.files.items():
            flat = [lab for _, label in pairs for lab in (label if self.multi_label else [label])]
            labels = np.bincount(np.asarray(flat, dtype=np.int64), minlength=self.num_classes)
            out[split] = {name: int(n) for name, n in zip(self.class_names, labels)}
        return out


# -- scanning ------------------------------------------------------------------


def _scan_split(split_dir: Path, skipped: list) -> dict[str, list[str]]:
    """Class name -> candidate image paths (sorted); non-images go to ``skipped``."""
    for entry in sorted(split_dir.iterdir()):
        if entry.is_file() and not is_hidden(entry.name):
            skipped.append((str(entry), "not inside a class folder"))
    classes = {}
    for class_dir in visible_dirs(split_dir):
        files, left_out = find_images(class_dir)
        skipped.extend(left_out)
        classes[class_dir.name] = [str(f) for f in files]
    return classes


def _scan(root: Path, validation_split: float | None) -> tuple[dict, dict, list[str], list]:
    """Split folders, split -> class -> candidate paths, the class names and the skipped files."""
    split_dirs = split_folders(root)
    if "validation" in split_dirs and validation_split is not None:
        raise ValueError(
            f"{root} already has {split_dirs['validation'].name}/; drop validation_split={validation_split}."
        )
    skipped: list[tuple[str, str]] = []
    scanned = {split: _scan_split(path, skipped) for split, path in split_dirs.items()}
    class_names = sorted(scanned["train"])
    if not class_names:
        raise ValueError(
            f"No class folders in {split_dirs['train']}: expected one sub-folder of images per class."
        )
    for split, classes in scanned.items():
        extra = sorted(set(classes) - set(class_names))
        if extra:
            raise ValueError(
                f"{split_dirs[split]} has class folder(s) {extra} that {split_dirs['train']} lacks; "
                "every split must use the training classes."
            )
    return split_dirs, scanned, class_names, skipped


def _usable(split_dirs: dict, scanned: dict, class_names: list[str],
            routes: dict[str, str]) -> dict[str, list[tuple[str, int]]]:
    """Split -> ``(path, label)`` of the readable files; a class with none is an error."""
    files: dict[str, list[tuple[str, int]]] = {}
    for split, classes in scanned.items():
        files[split] = []
        for name, paths in classes.items():
            usable = [p for p in paths if routes[p] in ROUTES]
            if not usable:
                raise ValueError(
                    f"Class folder {str(split_dirs[split] / name)!r} has no usable image "
                    f"({len(paths)} candidate file(s) could not be decoded); add images or remove the folder."
                )
            files[split] += [(p, class_names.index(name)) for p in usable]
    return files


# -- splitting -------------------------------------------------------------------


def stratified_split(
    files: list[tuple[str, int]], fraction: float, seed: int, class_names: list[str]
) -> tuple[list, list]:
    """``(train, validation)``: per class, a seeded permutation; the first ``round(n * fraction)`` go to validation.

    Args:
        files: ``(path, label)`` pairs (``int`` labels).
        fraction: the validation fraction of each class (one image stays in train).
        seed: the split's seed (with each class name).
        class_names: the names of the labels.

    Example:
        >>> stratified_split([("a", 0), ("b", 0), ("c", 1), ("d", 1)], 0.5, 1, ["x", "y"])[1]
        [('a', 0), ('d', 1)]
    """
    train, val = [], []
    for label, name in enumerate(class_names):
        paths = sorted(p for p, lab in files if lab == label)
        rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
        order = rng.permutation(len(paths))
        n_val = min(int(round(len(paths) * fraction)), len(paths) - 1)
        val += [(paths[i], label) for i in sorted(order[:n_val])]
        train += [(paths[i], label) for i in sorted(order[n_val:])]
    return train, val


# -- public entry points ----------------------------------------------------------


def load_image_folder(
    directory: str | os.PathLike,
    image_size: int | Sequence[int] = (224, 224),
    batch_size: int = 32,
    validation_split: float | None = None,
    seed: int = DEFAULT_SEED,
    label_mode: str = "int",
    shuffle: bool = True,
    cache_images: str | os.PathLike | None = "auto",
    crop_to_aspect_ratio: bool = False,
    augmentation: Any = None,
    verify: bool = True,
    cache_budget_gb: float = DEFAULT_CACHE_BUDGET_GB,
) -> ImageFolder:
    """Load a folder of class folders (or ``train/``, ``val/``, ``test/`` folders of them).

    Args:
        directory: the root folder.
        image_size: ``(height, width)`` (or one int) every image is resized to.
        batch_size: images per batch (the last batch may be smaller).
        validation_split: fraction in (0, 1) of each class held out for
            ``validation`` (stratified, deterministic for a given ``seed``);
            ``None`` for no split. Not allowed when the folder already has ``val/``.
        seed: seed for the split and the shuffling.
        label_mode: ``"int"`` (``int32`` labels) or ``"categorical"`` (one-hot
            ``float32``, needed by MixUp/CutMix and ``categorical_crossentropy``).
        shuffle: reshuffle ``train`` every epoch (``validation``/``test`` are never shuffled).
        cache_images: ``"auto"`` (the default, as in :func:`tfx_transfer.train`: in memory
            when the decoded images fit ``cache_budget_gb``, 2 GB by default, else
            decoded every epoch; ``ImageFolder.cache_images_used`` says which),
            ``"memory"``, ``None``/``"none"`` (decoded every epoch; no folder is
            created) or a folder for on-disk cache files of the decoded, resized
            images (file names depend on the file list, so a changed folder never
            replays a stale cache). See :mod:`tfx_transfer.data.image_cache`.
        crop_to_aspect_ratio: center-crop to the target aspect ratio before
            resizing instead of stretching (see :func:`tfx_transfer.data.decode.resize_image`).
        augmentation: ``None``, an :class:`~tfx_transfer.data.augmentation.Augmentation`,
            a preset name or a dict of ImageDataGenerator keywords
            (:func:`~tfx_transfer.data.augmentation.as_augmentation`); applied to
            batches of ``train`` only (after the cache, so every epoch differs).
        verify: decode every file once before building the datasets (results
            cached by path, size and mtime under ``$TFX_TRANSFER_CACHE_DIR`` or
            ``~/.cache/tfx_transfer``). ``False`` skips this: faster start, but
            an undecodable file then fails mid-epoch.
        cache_budget_gb: memory budget of ``cache_images="auto"``, in GB of decoded pixels.

    Returns:
        An :class:`ImageFolder`.

    Raises:
        FileNotFoundError: ``directory`` does not exist.
        ValueError: no class folders; a class folder with no usable image; a
            validation/test class missing from ``train``; bad arguments.

    Warns:
        UserWarning: once, listing every skipped file and why (also in ``.skipped``).

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from PIL import Image
        >>> photos = Path(tempfile.mkdtemp())
        >>> for i in range(10):
        ...     label = photos / ("cats", "dogs")[i % 2]
        ...     label.mkdir(exist_ok=True)
        ...     Image.new("RGB", (48, 40)).save(label / f"{i}.png")
        >>> folder = load_image_folder(photos, image_size=32, batch_size=4,
        ...                            validation_split=0.2, augmentation="light")
        >>> images, labels = next(iter(folder.train))
        >>> images.shape, images.dtype, labels.dtype  # float32 once augmented
        (TensorShape([4, 32, 32, 3]), tf.float32, tf.int32)
    """
    root = Path(directory)
    if not root.is_dir():
        raise FileNotFoundError(f"Image folder {str(root)!r} does not exist or is not a folder.")
    image_size, augmentation = check_loader_args(image_size, label_mode, validation_split, augmentation)

    split_dirs, scanned, class_names, skipped = _scan(root, validation_split)
    candidates = [p for classes in scanned.values() for paths in classes.values() for p in paths]
    routes = verify_images(candidates, root) if verify else assumed_routes(candidates)
    skipped += [(p, reason) for p, reason in routes.items() if reason not in ROUTES]
    warn_skipped(skipped, f"under {root}")
    files = _usable(split_dirs, scanned, class_names, routes)
    if validation_split is not None:
        files["train"], files["validation"] = stratified_split(files["train"], validation_split, seed, class_names)
        if not files["validation"]:
            raise ValueError(
                f"validation_split={validation_split} leaves no validation image; use a larger fraction."
            )
    return assemble_image_folder(
        files, routes, class_names, skipped, image_size=image_size, batch_size=batch_size,
        label_mode=label_mode, seed=seed, shuffle=shuffle, cache_images=cache_images,
        crop_to_aspect_ratio=crop_to_aspect_ratio, augmentation=augmentation,
        cache_budget_gb=cache_budget_gb)


# -- shared with the table loader ------------------------------------------------------


def assemble_image_folder(
    files: dict[str, list[tuple[str, Any]]], routes: dict[str, str], class_names: list[str],
    skipped: list[tuple[str, str]], *, image_size: tuple[int, int], batch_size: int, label_mode: str,
    seed: int, shuffle: bool, cache_images: Any, crop_to_aspect_ratio: bool, augmentation: Any,
    cache_budget_gb: float, multi_label: bool = False,
) -> ImageFolder:
    """The :class:`ImageFolder` of labelled files: one dataset per split (:func:`make_dataset`).

    Args:
        files: split -> ``(path, label)`` of readable files (``label``: an ``int``, or a
            tuple of class indices when ``multi_label``).
        routes: path -> ``"tf"`` or ``"pil"``.
        class_names: the names of the labels.
        skipped: ``(path, reason)`` of the files left out.
        image_size, batch_size, label_mode, seed, shuffle, cache_images,
        crop_to_aspect_ratio, augmentation, cache_budget_gb: as in :func:`load_image_folder`.
        multi_label: labels are sets of classes (multi-hot batches).

    Example:
        >>> import tempfile
        >>> from PIL import Image
        >>> path = os.path.join(tempfile.mkdtemp(), "a.png")
        >>> Image.new("RGB", (9, 9)).save(path)
        >>> folder = assemble_image_folder(
        ...     {"train": [(path, (0, 2))]}, {path: "tf"}, ["a", "b", "c"], [], image_size=(4, 4),
        ...     batch_size=2, label_mode="multi_hot", seed=0, shuffle=False, cache_images=None,
        ...     crop_to_aspect_ratio=False, augmentation=None, cache_budget_gb=1.0, multi_label=True)
        >>> next(folder.train.as_numpy_iterator())[1].tolist(), folder.counts["train"]
        ([[1.0, 0.0, 1.0]], {'a': 1, 'b': 0, 'c': 1})
    """
    counts = {split: {"images": len(pairs)} for split, pairs in files.items()}
    cache, why = resolve_cache_images(cache_images, counts, image_size, cache_budget_gb)
    common = dict(
        routes=routes, num_classes=len(class_names), image_size=image_size, batch_size=batch_size,
        label_mode=label_mode, seed=seed, cache=None if cache == "none" else cache,
        crop_to_aspect_ratio=crop_to_aspect_ratio,
    )
    datasets = {
        split: make_dataset(
            pairs, split=split, shuffle=shuffle and split == "train",
            augmentation=augmentation if split == "train" else None, **common,
        )
        for split, pairs in files.items()
    }
    return ImageFolder(
        train=datasets["train"],
        validation=datasets.get("validation"),
        test=datasets.get("test"),
        class_names=class_names,
        files=files,
        skipped=skipped,
        image_size=image_size,
        crop_to_aspect_ratio=crop_to_aspect_ratio,
        routes={path: routes[path] for pairs in files.values() for path, _ in pairs},
        multi_label=multi_label,
        cache_images_used=cache,
        cache_images_reason=why,
    )


def class_weights(folder_or_labels: ImageFolder | str | os.PathLike | Sequence[int] | np.ndarray) -> dict[int, float]:
    """Balanced class weights ``n_samples / (n_classes * count_c)`` (sklearn's formula).

    Accepts an :class:`ImageFolder` (its ``train`` split), a folder path (the
    class folders, or ``train/``, are counted by file name, without decoding)
    or integer / one-hot labels. Pass the result to ``model.fit(class_weight=...)``.

    Example:
        >>> class_weights([0, 0, 0, 1])
        {0: 0.6666666666666666, 1: 2.0}
    """
    if isinstance(folder_or_labels, ImageFolder):
        labels = np.array([label for _, label in folder_or_labels.files["train"]])
    elif isinstance(folder_or_labels, (str, os.PathLike)):
        root = Path(folder_or_labels)
        if not root.is_dir():
            raise FileNotFoundError(f"Image folder {str(root)!r} does not exist or is not a folder.")
        classes = _scan_split(split_folders(root)["train"], [])
        labels = np.concatenate([np.full(len(paths), i) for i, (_, paths) in enumerate(sorted(classes.items()))])
    else:
        labels = np.asarray(folder_or_labels)
        if labels.ndim == 2:
            labels = labels.argmax(axis=1)
    labels = labels.astype(int)
    if labels.size == 0:
        raise ValueError("class_weights needs at least one label; got none.")
    present, counts = np.unique(labels, return_counts=True)
    return {int(c): float(labels.size / (len(present) * n)) for c, n in zip(present, counts)}
