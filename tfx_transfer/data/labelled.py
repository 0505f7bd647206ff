"""Labelled batches to score, from a folder, an ``ImageFolder``, a dataset or arrays: one rule for all.

:func:`labelled_batches` is what :func:`tfx_transfer.evaluate_model` and
:func:`tfx_transfer.top_losses` (and so TTA and the Grad-CAM grid of the top
losses) read their data with. Labels of a folder are matched to the model's
classes by name, and the file of each image is known.

The rule for training images: a folder or ``ImageFolder`` is scored on its test
split, else its validation split. Training images are never scored unless asked
for: a folder with only ``train/`` (or an ``ImageFolder`` with no validation or
test split) is refused, as is the folder a run trained on; pass the ``train/``
folder itself (a plain folder of classes) or ``split="train"`` to score them.

Pure Python at import; TensorFlow is imported only to read images from disk.

Example:
    >>> import numpy as np
    >>> data = labelled_batches((np.zeros((5, 8, 8, 3), "uint8"), np.arange(5) % 2), (8, 8),
    ...                         batch_size=2)
    >>> [len(y) for _, y in data.batches], data.paths
    ([2, 2, 1], None)
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from tfx_transfer.data.files import SPLITS, split_folders

SPLIT_CHOICES = ("test", "val", "validation", "train", "all")
_SHOWN = {"train": "the train/ split (training images)", "validation": "the val/ split",
          "test": "the test/ split", "all": "every split, training images included"}


@dataclass
class Labelled:
    """What :func:`labelled_batches` returns.

    Attributes:
        batches: iterable of ``(images, labels)`` numpy batches; a folder's labels
            are ``int`` indices into ``class_names``; arrays and datasets keep
            theirs (ints or one-hot rows).
        paths: the file of each image, in order (``None`` when not known).
        class_names: the class names of the labels (``None`` when not known).
        description: what is scored, e.g. ``"12 images of photos/: the val/ split"``.
    """

    batches: Iterable[tuple[np.ndarray, np.ndarray]]
    paths: list[str] | None = None
    class_names: list[str] | None = None
    description: str = "the given data"


def choose_split(available: Sequence[str], split: str | None, *, plain: bool, what: str,
                 trained_on_it: bool = False) -> str:
    """The split to score: ``"test"``, ``"validation"``, ``"train"`` or ``"all"`` (the rule above).

    Args:
        available: the splits present (``"train"``, ``"validation"``, ``"test"``).
        split: the caller's ``split=`` (``None``, ``"test"``, ``"val"``, ``"train"``, ``"all"``).
        plain: whether ``"train"`` is a plain folder of classes (not a ``train/`` split).
        what: the data, as named in errors (e.g. the folder path).
        trained_on_it: whether a run trained on this very folder.

    Example:
        >>> choose_split(["train", "validation"], None, plain=False, what="photos")
        'validation'
        >>> choose_split(["train"], None, plain=True, what="photos")
        'train'
    """
    if split is not None:
        if split not in SPLIT_CHOICES:
            raise ValueError(f"split={split!r}: use None, 'test', 'val', 'train' or 'all'.")
        wanted = {"val": "validation", "all": "train" if plain else "all"}.get(split, split)
        if wanted not in (*available, "all"):
            have = "no split folders (use split='all')" if plain else \
                f"the splits {sorted(available)} (use one of them or 'all')"
            raise ValueError(f"split={split!r}: {what} has {have}.")
        return wanted
    for name in ("test", "validation"):
        if name in available:
            return name
    if not plain:
        raise ValueError(
            f"{what} has only a train/ split: those are training images. Pass held-out images (a "
            "folder with val/ or test/, or an ImageFolder loaded with validation_split=), or, to "
            "score the training images anyway, the train/ folder itself or split='train' "
            "(--split train).")
    if trained_on_it:
        raise ValueError(
            f"{what} is the folder the run trained on: its images include the training images. "
            "Evaluate on held-out images, or pass split='all' (--split all) to score every image "
            "anyway.")
    return "train"


def _mapping(found: Sequence[str], names: Sequence[str], what: str) -> np.ndarray:
    """Folder label -> model label, matched by class name."""
    unknown = [n for n in found if n not in names]
    if unknown:
        raise ValueError(f"{what} has class folder(s) {unknown} that the model does not know; "
                         f"its classes are {list(names)}.")
    return np.array([list(names).index(n) for n in found], dtype=np.int64)


def _remapped(dataset: Any, mapping: np.ndarray, multi_label: bool = False,
              width: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    for images, labels in dataset.as_numpy_iterator():
        labels = np.asarray(labels)
        if multi_label:  # multi-hot rows: column i goes to the model's column mapping[i]
            out = np.zeros((len(labels), width), labels.dtype)
            out[:, mapping] = labels
            yield images, out
            continue
        if labels.ndim == 2:  # one-hot rows
            labels = labels.argmax(axis=1)
        yield images, mapping[labels.astype(np.int64)]


def _from_folder(folder: Any, parts: list[str], class_names: Sequence[str] | None,
                 image_size: Sequence[int], batch_size: int, what: str, description: str) -> Labelled:
    """The files of ``parts`` of an ``ImageFolder``, in order, at ``image_size``, labels in the model's order."""
    from tfx_transfer.data.pipeline import files_dataset

    pairs = [pair for part in parts for pair in folder.files[part]]
    names = list(class_names or folder.class_names)
    mapping = _mapping(folder.class_names, names, what)
    multi = getattr(folder, "multi_label", False)
    dataset = files_dataset(pairs, image_size, batch_size, crop_to_aspect_ratio=folder.crop_to_aspect_ratio,
                            routes=folder.routes, num_classes=folder.num_classes if multi else None)
    return Labelled(_remapped(dataset, mapping, multi, len(names)), [p for p, _ in pairs], names,
                    f"{len(pairs)} images of {description}")


def _parts(chosen: str, available: Sequence[str]) -> list[str]:
    return [s for s in SPLITS if s in available] if chosen == "all" else [chosen]


def _folder(folder: Path, image_size: Sequence[int], class_names: Sequence[str] | None,
            batch_size: int, split: str | None, trained_on: str | os.PathLike | None) -> Labelled:
    from tfx_transfer.data.folder import load_image_folder

    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {str(folder)!r} does not exist.")
    found = split_folders(folder)
    plain = found.get("train") == folder  # class folders, no train/val/test layout
    trained_on_it = trained_on is not None and Path(trained_on).resolve() == folder.resolve()
    chosen = choose_split(list(found), split, plain=plain, what=str(folder), trained_on_it=trained_on_it)
    loaded = load_image_folder(folder, image_size=image_size, batch_size=batch_size, shuffle=False,
                               cache_images=None)  # read once: nothing to cache
    what = "every image (class folders, no split)" if plain else _SHOWN[chosen]
    return _from_folder(loaded, _parts(chosen, list(loaded.files)), class_names, image_size,
                        batch_size, str(folder), f"{folder}: {what}")


def _table(spec: Any, image_size: Sequence[int], class_names: Sequence[str] | None,
           batch_size: int, split: str | None, trained_on: str | os.PathLike | None) -> Labelled:
    """A table's rows: its ``valid_col`` rows, else every row (the folder rule)."""
    from tfx_transfer.data.table import NoValidationRowsError

    what = str(spec.table) if isinstance(spec.table, (str, os.PathLike)) else "the table"
    unmarked = ""
    try:
        loaded = spec.load(image_size, batch_size)
    except NoValidationRowsError:
        if not spec.valid_col:
            raise
        # a test table with the run's valid_col, marking none: its rows are all to be scored
        unmarked = f" (its {spec.valid_col} column marks none)"
        spec = replace(spec, valid_col=None)
        loaded = spec.load(image_size, batch_size)
    available = list(loaded.files)
    plain = "validation" not in available
    trained_on_it = trained_on is not None and isinstance(spec.table, (str, os.PathLike)) and \
        Path(trained_on).resolve() == Path(spec.table).resolve()
    chosen = choose_split(available, split, plain=plain, what=what, trained_on_it=trained_on_it)
    shown = f"every row{unmarked}" if plain or chosen == "all" else \
        {"validation": f"the {spec.valid_col} rows", "train": "the training rows"}[chosen]
    return _from_folder(loaded, _parts(chosen, available), class_names, image_size, batch_size,
                        what, f"{what}: {shown}")


def _image_folder(data: Any, image_size: Sequence[int], class_names: Sequence[str] | None,
                  batch_size: int, split: str | None) -> Labelled:
    available = [s for s in SPLITS if data.files.get(s)]
    chosen = choose_split(available, split, plain=False, what="the ImageFolder")
    return _from_folder(data, _parts(chosen, available), class_names, image_size, batch_size,
                        "the ImageFolder", f"the ImageFolder: {_SHOWN[chosen]}")


def _arrays(x: Any, y: Any, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    for start in range(0, len(x), batch_size):
        yield x[start:start + batch_size], y[start:start + batch_size]


def _dataset(data: Iterable, caller: str) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    for batch in data:
        if not isinstance(batch, (tuple, list)) or len(batch) < 2:
            raise ValueError(f"{caller} needs labelled data: batches of (images, labels), an "
                             "(x, y) tuple of arrays, an ImageFolder or an image folder path.")
        yield np.asarray(batch[0]), np.asarray(batch[1])


def labelled_batches(
    data: Any,
    image_size: Sequence[int] | None,
    class_names: Sequence[str] | None = None,
    *,
    batch_size: int = 32,
    split: str | None = None,
    trained_on: str | os.PathLike | None = None,
    caller: str = "evaluate_model",
) -> Labelled:
    """Labelled batches (and the files when known) from whatever data a scoring function takes.

    Args:
        data: an image folder path, a CSV table path (or a
            :class:`~tfx_transfer.data.table.TableSpec`), an :class:`~tfx_transfer.ImageFolder`, a
            ``tf.data`` dataset (or any iterable) of ``(images, labels)`` batches,
            or an ``(x, y)`` tuple of arrays.
        image_size: ``(height, width)`` of the model's input (images of a folder
            or an ``ImageFolder`` are read at this size).
        class_names: the model's classes in label order; a folder's labels are
            matched to them by name (default: the folder's own classes).
        batch_size: images per batch for folders and arrays.
        split: for a folder or ``ImageFolder``: ``None`` (test, else validation;
            training images are refused, see the module docstring), ``"test"``,
            ``"val"``, ``"train"`` or ``"all"``.
        trained_on: the folder the model was trained on, refused unless ``split``
            says otherwise.
        caller: the function named in errors.

    Returns:
        A :class:`Labelled`.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from PIL import Image
        >>> root = Path(tempfile.mkdtemp())
        >>> for split in ("train", "val"):
        ...     for name in ("cat", "dog"):
        ...         (root / split / name).mkdir(parents=True)
        ...         Image.new("RGB", (9, 9)).save(root / split / name / "1.png")
        >>> data = labelled_batches(root, (8, 8), ["dog", "cat"])
        >>> [y.tolist() for _, y in data.batches], data.description.endswith("the val/ split")
        ([[1, 0]], True)
        >>> labelled_batches(root / "train", (8, 8)).paths[0].endswith("1.png")  # asked for
        True
    """
    if isinstance(data, (str, os.PathLike)) and Path(data).is_file():  # a CSV table
        from tfx_transfer.data.table import TableSpec

        data = TableSpec(data)
    if type(data).__name__ == "TableSpec":
        if image_size is None:
            raise ValueError(f"{caller} reads a table at the model's input size; pass a Keras or "
                             "exported model.")
        return _table(data, image_size, class_names, batch_size, split, trained_on)
    if isinstance(data, (str, os.PathLike)):
        if image_size is None:
            raise ValueError(f"{caller} reads a folder at the model's input size; pass a Keras or "
                             "exported model (a plain function has no input size).")
        return _folder(Path(data), image_size, class_names, batch_size, split, trained_on)
    folder_module = sys.modules.get("tfx_transfer.data.folder")  # an ImageFolder implies it is loaded
    if folder_module is not None and isinstance(data, folder_module.ImageFolder):
        size = image_size or data.image_size
        if size is None:
            raise ValueError(f"{caller}: the model has no input size and the ImageFolder none "
                             "recorded; pass a Keras or exported model.")
        return _image_folder(data, size, class_names, batch_size, split)
    if split is not None:
        raise ValueError(f"split={split!r} applies to a folder or an ImageFolder, not to "
                         f"{type(data).__name__} data.")
    names = None if class_names is None else list(class_names)
    if isinstance(data, tuple) and len(data) >= 2 and not hasattr(data, "element_spec"):
        x, y = np.asarray(data[0]), np.asarray(data[1])
        if len(x) != len(y):
            raise ValueError(f"{len(x)} images but {len(y)} labels.")
        return Labelled(_arrays(x, y, batch_size), None, names, f"{len(x)} images")
    if not isinstance(data, Iterable):
        raise TypeError(f"{caller}: data of type {type(data).__name__} is not labelled data; pass "
                        "an image folder path, an ImageFolder, a tf.data dataset of (images, "
                        "labels) or an (x, y) tuple of arrays.")
    return Labelled(_dataset(data, caller), None, names)
