"""Image folders to ``tf.data``: scan, verify, split, decode, resize, batch.

Accepted layouts (class names are the sub-folder names, sorted alphabetically
like Keras)::

    photos/cats/*.jpg, photos/dogs/*.png          one folder of classes
    photos/train/<class>/..., photos/val/<class>/...   (``validation/`` and
                                                       ``test/`` also accepted)

Before any dataset is built every candidate file is decoded once with the very
decoder used for training, so a bad file is reported up front (one
``UserWarning`` naming each file and the count) instead of crashing an epoch.
Hidden entries (``.DS_Store``, ``._x``, ``.cache/``, ``__MACOSX/``,
``Thumbs.db``, ``desktop.ini``) are ignored silently. Pixels come out as
``uint8`` RGB ``(H, W, 3)`` in 0..255: grayscale, palette, RGBA and CMYK images
become RGB, a GIF gives its first frame. EXIF orientation is ignored (as in
Keras). The few files TensorFlow cannot decode (TIFF, palette BMP) are decoded
with Pillow instead, chosen per file.

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

import hashlib
import json
import os
import warnings
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from tfx_transfer.data.files import (
    SPLITS,
    find_images,
    is_hidden,
    split_folders,
    visible_dirs,
)

# tf.io.decode_image reads WebP from TensorFlow 2.19; older versions read it with Pillow.
TENSORFLOW_DECODES_WEBP = tuple(int(v) for v in tf.__version__.split(".")[:2]) >= (2, 19)
_PIL_ONLY_EXTENSIONS = (".tif", ".tiff") + (() if TENSORFLOW_DECODES_WEBP else (".webp",))
_SPLITS = SPLITS

# -- decoding (shared with the export module) --------------------------------


def decode_image(image_bytes: tf.Tensor) -> tf.Tensor:
    """Decode JPEG/PNG/GIF/BMP/WebP bytes to ``uint8`` RGB ``(H, W, 3)``.

    Grayscale, palette, RGBA and CMYK become RGB (alpha is dropped); a GIF
    gives its first frame. Pure TensorFlow ops, usable inside a graph.

    Example:
        >>> import io
        >>> from PIL import Image
        >>> png = io.BytesIO(); Image.new("L", (64, 48)).save(png, "PNG")  # grayscale
        >>> decode_image(png.getvalue()).shape
        TensorShape([48, 64, 3])
    """
    image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False, dtype=tf.uint8)
    image.set_shape([None, None, 3])
    return image


def resize_image(
    image: tf.Tensor, image_size: Sequence[int], crop_to_aspect_ratio: bool = False
) -> tf.Tensor:
    """Resize a ``(H, W, 3)`` image to ``image_size`` = (height, width), ``uint8`` out.

    Bilinear with antialiasing (``tf.image.resize(..., antialias=True)``), so
    large photos are downscaled without aliasing; the result is rounded and
    clipped to 0..255. The aspect ratio is not kept (the image is stretched)
    unless ``crop_to_aspect_ratio=True``, which first takes the largest central
    crop with the target aspect ratio (as Keras's ``crop_to_aspect_ratio``).

    Example:
        >>> resize_image(tf.zeros([300, 400, 3], tf.uint8), (224, 224)).shape
        TensorShape([224, 224, 3])
    """
    height, width = int(image_size[0]), int(image_size[1])
    if crop_to_aspect_ratio:
        shape = tf.shape(image)
        in_h, in_w = shape[0], shape[1]
        crop_h = tf.minimum(in_h, tf.cast(tf.cast(in_w, tf.float64) * height / width, tf.int32))
        crop_w = tf.minimum(in_w, tf.cast(tf.cast(in_h, tf.float64) * width / height, tf.int32))
        crop_h, crop_w = tf.maximum(crop_h, 1), tf.maximum(crop_w, 1)
        image = tf.image.crop_to_bounding_box(
            image, (in_h - crop_h) // 2, (in_w - crop_w) // 2, crop_h, crop_w
        )
    resized = tf.image.resize(image, (height, width), method="bilinear", antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(resized), 0.0, 255.0), tf.uint8)


def decode_and_resize(
    image_bytes: tf.Tensor, image_size: Sequence[int], crop_to_aspect_ratio: bool = False
) -> tf.Tensor:
    """Encoded image bytes (a scalar string tensor) to ``uint8`` ``(H, W, 3)`` at ``image_size``.

    :func:`decode_image` then :func:`resize_image`; the training pipeline and
    the exported serving signature both use it, so they see identical pixels.

    Example:
        >>> import io
        >>> from PIL import Image
        >>> jpg = io.BytesIO(); Image.new("RGB", (64, 48)).save(jpg, "JPEG")
        >>> image = decode_and_resize(jpg.getvalue(), (32, 32))
        >>> image.shape, image.dtype
        (TensorShape([32, 32, 3]), tf.uint8)
    """
    return resize_image(decode_image(image_bytes), image_size, crop_to_aspect_ratio)


def _pil_decode(path: bytes | str) -> np.ndarray:
    """Decode with Pillow (first frame, RGB) for files TensorFlow cannot read."""
    from PIL import Image

    path = path.decode() if isinstance(path, bytes) else path
    with Image.open(path) as img:
        img.seek(0)
        return np.asarray(img.convert("RGB"), dtype=np.uint8)


def _needs_pil(path: str) -> bool:
    """TIFF, and BMPs of 8 bits or less (TensorFlow reads their palette indices as gray)."""
    if path.lower().endswith(_PIL_ONLY_EXTENSIONS):
        return True
    if not path.lower().endswith(".bmp"):
        return False
    with open(path, "rb") as f:
        header = f.read(30)
    return header[:2] == b"BM" and len(header) == 30 and int.from_bytes(header[28:30], "little") <= 8


# -- the result ----------------------------------------------------------------


@dataclass(frozen=True)
class ImageFolder:
    """What :func:`load_image_folder` returns.

    Attributes:
        train, validation, test: batched ``tf.data.Dataset`` of ``(images, labels)``
            (``validation``/``test`` are ``None`` when absent); images ``uint8``
            ``(B, H, W, 3)`` in 0..255 (``float32`` when a dataset-side
            augmentation is applied to ``train``), labels ``int32`` ``(B,)`` or
            one-hot ``float32`` ``(B, num_classes)``.
        class_names: sorted class names; label ``i`` is ``class_names[i]``.
        files: split name -> list of ``(path, label)`` actually used.
        skipped: ``(path, reason)`` for every file left out (also warned about once).

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

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.class_names)

    @property
    def counts(self) -> dict[str, dict[str, int]]:
        """Split name -> class name -> number of usable images."""
        out = {}
        for split, pairs in self.files.items():
            labels = np.bincount([label for _, label in pairs], minlength=self.num_classes)
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


# -- verification (same decoder as training), cached by path/size/mtime -------


def _verify_cache_file(root: Path) -> Path:
    base = Path(os.environ.get("TFX_TRANSFER_CACHE_DIR", Path.home() / ".cache" / "tfx_transfer"))
    key = hashlib.sha1(f"{root.resolve()}|tf{tf.__version__}".encode()).hexdigest()[:16]
    return base / "verified" / f"{key}.json"


def _file_key(path: str) -> list:
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns]


def _tf_decodable(paths: list[str]) -> set[int]:
    """Indices of ``paths`` that TensorFlow decodes, checked in parallel."""
    ds = tf.data.Dataset.from_tensor_slices((np.arange(len(paths)), paths))
    ds = ds.map(
        lambda i, p: (i, tf.shape(decode_image(tf.io.read_file(p)))),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=False,
    ).ignore_errors()
    return {int(i) for i, _ in ds.as_numpy_iterator()}


def _verify(paths: list[str], root: Path) -> dict[str, str]:
    """Path -> ``"tf"``, ``"pil"`` (decoder to use) or the reason it cannot be read."""
    cache_file = _verify_cache_file(root)
    cache: dict[str, list] = {}
    if cache_file.exists():
        try:
            cache = json.loads(cache_file.read_text())
        except (OSError, ValueError):
            cache = {}
    result, todo = {}, []
    for path in paths:
        hit = cache.get(path)
        if hit is not None and hit[:2] == _file_key(path):
            result[path] = hit[2]
        else:
            todo.append(path)
    tf_ok = _tf_decodable(todo) if todo else set()
    for i, path in enumerate(todo):
        if i in tf_ok and not _needs_pil(path):
            result[path] = "tf"
            continue
        try:
            _pil_decode(path)
            result[path] = "pil"
        except Exception as err:  # any Pillow failure means "cannot decode"
            result[path] = f"cannot be decoded ({type(err).__name__}: {err})"
    if todo:
        cache = {p: _file_key(p) + [result[p]] for p in paths}
        try:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            cache_file.write_text(json.dumps(cache))
        except OSError as err:
            warnings.warn(f"Could not write the verification cache {cache_file}: {err}", stacklevel=3)
    return result


# -- splitting -------------------------------------------------------------------


def _stratified_split(
    files: list[tuple[str, int]], fraction: float, seed: int, class_names: list[str]
) -> tuple[list, list]:
    """Per class, a seeded permutation; the first ``round(n * fraction)`` go to validation."""
    train, val = [], []
    for label, name in enumerate(class_names):
        paths = sorted(p for p, lab in files if lab == label)
        rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
        order = rng.permutation(len(paths))
        n_val = min(int(round(len(paths) * fraction)), len(paths) - 1)
        val += [(paths[i], label) for i in sorted(order[:n_val])]
        train += [(paths[i], label) for i in sorted(order[n_val:])]
    return train, val


# -- pipeline ----------------------------------------------------------------------


def _shuffle_buffer(n: int, image_size: Sequence[int], cache: str | None) -> int:
    """Whole split for the memory cache (tensors are shared); ~256 MB of pixels for a file cache."""
    if cache == "memory":
        return max(n, 1)
    per_image = int(image_size[0]) * int(image_size[1]) * 3
    return max(1, min(n, (256 << 20) // per_image))


def _make_dataset(
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
    paths = [p for p, _ in files]
    labels = np.array([lab for _, lab in files], dtype=np.int32)
    use_pil = np.array([routes.get(p) == "pil" for p in paths], dtype=bool)

    def load(path, label, pil):
        if use_pil.any():
            image = tf.cond(
                pil,
                lambda: tf.ensure_shape(tf.numpy_function(_pil_decode, [path], tf.uint8), [None, None, 3]),
                lambda: decode_image(tf.io.read_file(path)),
            )
        else:
            image = decode_image(tf.io.read_file(path))
        image = resize_image(image, image_size, crop_to_aspect_ratio)
        if label_mode == "categorical":
            label = tf.one_hot(label, num_classes, dtype=tf.float32)
        return image, label

    ds = tf.data.Dataset.from_tensor_slices((paths, labels, use_pil))
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


def _cache_path(cache_dir: str, split: str, files, image_size, crop: bool) -> str:
    """A cache file name keyed by the file list, sizes/mtimes and resize settings (stale caches never replay)."""
    digest = hashlib.sha1(repr((image_size, crop)).encode())
    for path, label in files:
        digest.update(f"{path}|{label}|{_file_key(path)}\n".encode())
    os.makedirs(cache_dir, exist_ok=True)
    return os.path.join(cache_dir, f"{split}-{digest.hexdigest()[:16]}")


def _as_augmentation(augmentation: Any):
    if augmentation is None or hasattr(augmentation, "map_dataset"):
        return augmentation
    from tfx_transfer.data.augmentation import Augmentation

    if isinstance(augmentation, str):
        return Augmentation(preset=augmentation)
    if isinstance(augmentation, dict):
        return Augmentation(**augmentation)
    raise TypeError(
        f"augmentation={augmentation!r}: pass an Augmentation, a preset name "
        "('light', 'standard', 'heavy') or a dict of ImageDataGenerator keywords."
    )


# -- public entry points ----------------------------------------------------------


def load_image_folder(
    directory: str | os.PathLike,
    image_size: int | Sequence[int] = (224, 224),
    batch_size: int = 32,
    validation_split: float | None = None,
    seed: int = 1337,
    label_mode: str = "int",
    shuffle: bool = True,
    cache_images: str | os.PathLike | None = None,
    crop_to_aspect_ratio: bool = False,
    augmentation: Any = None,
    verify: bool = True,
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
        cache_images: ``None`` (stream from disk every epoch), ``"memory"``, or a folder
            for on-disk cache files of the decoded, resized images (file names
            depend on the file list, so a changed folder never replays a stale cache).
        crop_to_aspect_ratio: center-crop to the target aspect ratio before
            resizing instead of stretching (see :func:`resize_image`).
        augmentation: ``None``, an :class:`~tfx_transfer.data.augmentation.Augmentation`,
            a preset name or a dict of ImageDataGenerator keywords; applied to
            batches of ``train`` only (after the cache, so every epoch differs).
        verify: decode every file once before building the datasets (results
            cached by path, size and mtime under ``$TFX_TRANSFER_CACHE_DIR`` or
            ``~/.cache/tfx_transfer``). ``False`` skips this: faster start, but
            an undecodable file then fails mid-epoch.

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
    if isinstance(image_size, int):
        image_size = (image_size, image_size)
    image_size = (int(image_size[0]), int(image_size[1]))
    if label_mode not in ("int", "categorical"):
        raise ValueError(f"label_mode={label_mode!r}: use 'int' or 'categorical'.")
    if validation_split is not None and not 0 < validation_split < 1:
        raise ValueError(f"validation_split={validation_split!r} must be in (0, 1), or None for no split.")
    cache = None if cache_images is None else ("memory" if cache_images == "memory" else os.fspath(cache_images))

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

    candidates = [p for classes in scanned.values() for paths in classes.values() for p in paths]
    if verify:
        routes = _verify(candidates, root)
    else:
        routes = {p: "pil" if _needs_pil(p) else "tf" for p in candidates}
    skipped += [(p, reason) for p, reason in routes.items() if reason not in ("tf", "pil")]
    if skipped:
        lines = "\n".join(f"  {path}: {reason}" for path, reason in skipped)
        warnings.warn(f"Skipped {len(skipped)} file(s) under {root}:\n{lines}", UserWarning, stacklevel=2)

    files: dict[str, list[tuple[str, int]]] = {}
    for split, classes in scanned.items():
        files[split] = []
        for name, paths in classes.items():
            usable = [p for p in paths if routes[p] in ("tf", "pil")]
            if not usable:
                raise ValueError(
                    f"Class folder {str(split_dirs[split] / name)!r} has no usable image "
                    f"({len(paths)} candidate file(s) could not be decoded); add images or remove the folder."
                )
            files[split] += [(p, class_names.index(name)) for p in usable]
    if validation_split is not None:
        files["train"], files["validation"] = _stratified_split(files["train"], validation_split, seed, class_names)
        if not files["validation"]:
            raise ValueError(
                f"validation_split={validation_split} leaves no validation image; use a larger fraction."
            )

    augmentation = _as_augmentation(augmentation)
    if augmentation is not None and getattr(augmentation, "mixing", None) and label_mode != "categorical":
        raise ValueError(
            f"augmentation mixes labels ({augmentation.mixing}); use label_mode='categorical'."
        )
    common = dict(
        routes=routes, num_classes=len(class_names), image_size=image_size, batch_size=batch_size,
        label_mode=label_mode, seed=seed, cache=cache, crop_to_aspect_ratio=crop_to_aspect_ratio,
    )
    datasets = {
        split: _make_dataset(
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
    )


def load_image_files(
    paths: Sequence[str | os.PathLike],
    image_size: int | Sequence[int],
    batch_size: int = 32,
    *,
    shuffle: bool = False,
    seed: int = 1337,
    verify: bool = True,
) -> tuple[tf.data.Dataset, list[str], list[tuple[str, str]]]:
    """Batched ``uint8`` images, without labels, from image files: decoded as :func:`load_image_folder` does.

    Each file is decoded with the loader's decoder (TensorFlow, or Pillow for TIFF
    and palette BMP), and with ``verify`` every file is decoded once first (same
    cache as the loader), so an undecodable file is left out instead of failing
    mid-iteration.

    Args:
        paths: image files (e.g. :func:`~tfx_transfer.data.files.find_images`'s).
        image_size: ``(height, width)`` or one int; every image is resized to it.
        batch_size: images per batch (the last batch may be smaller).
        shuffle: reshuffle the files every iteration (with ``seed``).
        seed: seed of the shuffling.
        verify: decode every file once first and leave out the ones that fail.

    Returns:
        ``(dataset of (B, H, W, 3) uint8 batches, the files used, the files left out
        as (path, reason))``.

    Raises:
        ValueError: no file given, or none can be decoded.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from PIL import Image
        >>> folder = Path(tempfile.mkdtemp())
        >>> for name in ("a.png", "b.tif"):
        ...     Image.new("RGB", (40, 30)).save(folder / name)
        >>> _ = (folder / "c.jpg").write_bytes(b"not a jpeg")
        >>> images, used, skipped = load_image_files(sorted(folder.iterdir()), 32)
        >>> [Path(p).name for p in used], Path(skipped[0][0]).name, next(iter(images)).shape
        (['a.png', 'b.tif'], 'c.jpg', TensorShape([2, 32, 32, 3]))
    """
    paths = [os.fspath(p) for p in paths]
    if not paths:
        raise ValueError("load_image_files: no image file given.")
    if isinstance(image_size, int):
        image_size = (image_size, image_size)
    image_size = (int(image_size[0]), int(image_size[1]))
    if verify:
        routes = _verify(paths, Path(os.path.commonpath([os.path.abspath(p) for p in paths])))
    else:
        routes = {p: "pil" if _needs_pil(p) else "tf" for p in paths}
    used = [p for p in paths if routes[p] in ("tf", "pil")]
    skipped = [(p, routes[p]) for p in paths if routes[p] not in ("tf", "pil")]
    if not used:
        reasons = "; ".join(f"{path}: {reason}" for path, reason in skipped[:5])
        raise ValueError(f"None of the {len(paths)} image file(s) can be decoded ({reasons}"
                         f"{' ...' if len(skipped) > 5 else ''}); pass readable images.")
    dataset = _make_dataset(
        [(p, 0) for p in used], routes, split="images", num_classes=1, image_size=image_size,
        batch_size=batch_size, label_mode="int", shuffle=shuffle, seed=seed, cache=None,
        crop_to_aspect_ratio=False, augmentation=None,
    )
    return dataset.map(lambda images, _: images), used, skipped


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
