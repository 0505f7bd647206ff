"""A table of file names and labels (a CSV file or a pandas DataFrame) to an ``ImageFolder``.

:func:`load_image_table` is Keras 2's ``flow_from_dataframe`` and fastai's
``from_csv``/``from_df`` for the kit: one row per image, its file in ``x_col``
(relative to ``directory``, or absolute; a name without extension also finds
``name.jpg``, ``name.png``, ...), its label(s) in ``y_col``. It returns the
folder loader's :class:`~tfx_transfer.ImageFolder`, built by the same code
(verification, the single bad-files warning, the stratified seeded split,
``cache_images``, augmentation, :mod:`tfx_transfer.data.pipeline`), so a
single-label table gives exactly what the same images in class folders give.

Several labels per image (multi-label): ``label_delim`` splits a cell
(``"daisy tulips"`` with ``label_delim=" "``), or ``y_col`` is a list of 0/1
columns, one per class; batches then carry multi-hot ``float32`` rows.

A CSV is read with the standard library; a DataFrame needs pandas only because
the caller made one.

Example:
    >>> import tempfile, tfx_transfer as tt
    >>> from pathlib import Path
    >>> from PIL import Image
    >>> root = Path(tempfile.mkdtemp())
    >>> rows = ["filename,class"]
    >>> for i in range(6):
    ...     Image.new("RGB", (20, 20), (40 * i, 0, 0)).save(root / f"{i}.png")
    ...     rows.append(f"{i}.png,{('cat', 'dog')[i % 2]}")
    >>> _ = (root / "labels.csv").write_text("\\n".join(rows))
    >>> data = tt.load_image_table(root / "labels.csv", image_size=16, validation_split=0.34)
    >>> data.class_names, data.counts["validation"]
    (['cat', 'dog'], {'cat': 1, 'dog': 1})
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tfx_transfer.data.files import IMAGE_EXTENSIONS, warn_skipped
from tfx_transfer.data.folder import ImageFolder, assemble_image_folder, stratified_split
from tfx_transfer.data.image_cache import DEFAULT_CACHE_BUDGET_GB
from tfx_transfer.data.pipeline import check_loader_args
from tfx_transfer.data.verify import ROUTES, assumed_routes, verify_images
from tfx_transfer.defaults import DEFAULT_SEED

_TRUE, _FALSE = ("true", "1", "yes", "y", "t"), ("false", "0", "no", "n", "f", "")


def read_table(table: Any) -> tuple[list[str], list[dict[str, Any]], str]:
    """``(columns, rows as dicts, description)`` of a CSV path or a pandas DataFrame.

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "t.csv"
        >>> _ = path.write_text("filename,class\\na.jpg,cat\\n")
        >>> read_table(path)[:2]
        (['filename', 'class'], [{'filename': 'a.jpg', 'class': 'cat'}])
    """
    if isinstance(table, (str, os.PathLike)):
        path = Path(table)
        if not path.is_file():
            raise FileNotFoundError(f"Table {str(path)!r} does not exist (a CSV file of file "
                                    "names and labels).")
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            rows = [dict(row) for row in reader]
            columns = list(reader.fieldnames or [])
        return columns, rows, str(path)
    if hasattr(table, "columns") and hasattr(table, "to_dict"):  # a pandas DataFrame
        return [str(c) for c in table.columns], table.to_dict("records"), "the DataFrame"
    raise TypeError(f"table of type {type(table).__name__}: pass a CSV path or a pandas DataFrame.")


def _check_columns(columns: list[str], wanted: Sequence[str], what: str) -> None:
    missing = [c for c in wanted if c not in columns]
    if missing:
        raise ValueError(f"{what} has no column(s) {missing}; its columns are {columns}. Pass "
                         "x_col=/y_col=/valid_col= (--x-col, --y-col, --valid-col) naming them.")


def _is_blank(value: Any) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value)) or str(value).strip() == ""


def _as_bool(value: Any, column: str, row: int) -> bool:
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer, float)) and value in (0, 1):
        return bool(value)
    text = "" if value is None else str(value).strip().lower()
    if text in _TRUE or text in _FALSE:
        return text in _TRUE
    raise ValueError(f"valid_col={column!r} must be boolean (True/False, 1/0); row {row} has "
                     f"{value!r}.")


def _labels(row: dict[str, Any], y_col: str | list[str], label_delim: str | None,
            index: int) -> tuple[str, ...]:
    """The class names of one row: one name, a split cell, or the 0/1 columns set to 1."""
    if isinstance(y_col, list):
        names = []
        for column in y_col:
            value = row[column]
            text = str(value).strip()
            if text in ("1", "1.0", "True", "true"):
                names.append(column)
            elif text not in ("0", "0.0", "False", "false"):
                raise ValueError(f"y_col column {column!r} must hold 0/1; row {index} has {value!r}.")
        return tuple(names)
    value = row[y_col]
    if _is_blank(value):
        return ()
    text = str(value).strip()
    if label_delim is None:
        return (text,)
    return tuple(sorted({part.strip() for part in text.split(label_delim) if part.strip()}))


def resolve_file(name: str, directory: Path) -> Path | None:
    """The image file a table names: absolute or under ``directory``; an extension-less name
    also finds ``name`` + each image extension. ``None`` when there is none.

    Example:
        >>> import tempfile
        >>> root = Path(tempfile.mkdtemp()); _ = (root / "cat1.png").write_bytes(b"x")
        >>> resolve_file("cat1", root).name, resolve_file("dog1", root)
        ('cat1.png', None)
    """
    path = Path(name) if os.path.isabs(name) else directory / name
    if path.is_file():
        return path
    if not path.suffix:
        for ext in IMAGE_EXTENSIONS + tuple(e.upper() for e in IMAGE_EXTENSIONS):
            candidate = path.with_name(path.name + ext)
            if candidate.is_file():
                return candidate
    return None


def _parse_rows(rows: list[dict[str, Any]], directory: Path, x_col: str, y_col: str | list[str],
                label_delim: str | None, valid_col: str | None, what: str
                ) -> tuple[dict[str, tuple[tuple[str, ...], bool]], list[tuple[str, str]]]:
    """Path -> (class names, is validation) of every row whose file exists; the rows left out."""
    entries: dict[str, tuple[tuple[str, ...], bool]] = {}
    skipped: list[tuple[str, str]] = []
    for i, row in enumerate(rows, start=2):  # row 1 is the header
        name = row[x_col]
        if _is_blank(name):
            skipped.append((f"{what} row {i}", f"no file name in column {x_col!r}"))
            continue
        labels = _labels(row, y_col, label_delim, i)
        valid = _as_bool(row[valid_col], valid_col, i) if valid_col else False
        path = resolve_file(str(name).strip(), directory)
        if path is None:
            skipped.append((str(directory / str(name).strip()), f"missing file ({what} row {i})"))
            continue
        key = str(path)
        if key in entries and entries[key] != (labels, valid):
            raise ValueError(f"{what} lists {key} twice with different labels: "
                             f"{list(entries[key][0])} and {list(labels)} (row {i}); keep one row per file.")
        entries[key] = (labels, valid)
    return entries, skipped


def _multi_label_split(files: list[tuple[str, tuple[int, ...]]], fraction: float, seed: int,
                       class_names: list[str]) -> tuple[list, list]:
    """Stratified on each row's rarest label: ``stratified_split`` over those keys.

    A row counts for the least frequent of its labels (rows without labels form one
    group), so every label that has rows enough gets about ``fraction`` of them in
    validation and a label's only row stays in train.
    """
    counts = np.zeros(len(class_names) + 1, int)
    for _, labels in files:
        counts[list(labels)] += 1
    none = len(class_names)  # the key of rows without labels
    keyed = [(path, min(labels, key=lambda i: (counts[i], i)) if labels else none)
             for path, labels in files]
    train, val = stratified_split(keyed, fraction, seed, [*class_names, "(no label)"])
    labels_of = dict(files)
    return ([(p, labels_of[p]) for p, _ in sorted(train)], [(p, labels_of[p]) for p, _ in sorted(val)])


class NoValidationRowsError(ValueError):
    """A table's ``valid_col`` marks no row, or ``validation_split`` leaves none."""


@dataclass(frozen=True)
class TableSpec:
    """A table of labelled images to score (what ``evaluate``, ``top_losses`` read a CSV with).

    A plain CSV path is read as ``TableSpec(path)``: ``x_col="filename"``,
    ``y_col="class"``. Scored like a folder: its ``valid_col`` rows when it has
    them, else every row (a test table whose ``valid_col`` marks no row, too; a table
    a run trained on only when asked for).

    Example:
        >>> TableSpec("labels.csv", y_col=["sky", "sea"]).multi_label
        True
    """

    table: Any
    directory: str | os.PathLike | None = None
    x_col: str = "filename"
    y_col: str | Sequence[str] = "class"
    label_delim: str | None = None
    valid_col: str | None = None

    @property
    def multi_label(self) -> bool:
        """Whether the rows hold several labels."""
        return self.label_delim is not None or not isinstance(self.y_col, str)

    def load(self, image_size: Sequence[int], batch_size: int) -> ImageFolder:
        """The table's :class:`ImageFolder` (unshuffled; ``validation`` = the ``valid_col`` rows)."""
        return load_image_table(self.table, self.directory, self.x_col, self.y_col, self.label_delim,
                                self.valid_col, image_size=image_size, batch_size=batch_size,
                                shuffle=False, cache_images=None)  # read once: nothing to cache


def load_image_table(
    table: Any,
    directory: str | os.PathLike | None = None,
    x_col: str = "filename",
    y_col: str | Sequence[str] = "class",
    label_delim: str | None = None,
    valid_col: str | None = None,
    image_size: int | Sequence[int] = (224, 224),
    batch_size: int = 32,
    validation_split: float | None = None,
    seed: int = DEFAULT_SEED,
    label_mode: str | None = None,
    shuffle: bool = True,
    cache_images: str | os.PathLike | None = "auto",
    crop_to_aspect_ratio: bool = False,
    augmentation: Any = None,
    verify: bool = True,
    cache_budget_gb: float = DEFAULT_CACHE_BUDGET_GB,
) -> ImageFolder:
    """Load the images a table names, with their labels: the same :class:`ImageFolder` as a folder.

    Args:
        table: a CSV file (header row) or a pandas DataFrame, one row per image.
        directory: the folder file names are relative to (default: the CSV's folder;
            required for a DataFrame with relative names). Absolute names are taken as they are.
        x_col: the column of file names (a name without extension finds ``name.jpg``, ...).
        y_col: the label column (class names), or a list of 0/1 columns, one per
            class (multi-label, class names = the column names, in that order).
        label_delim: split each label cell into several classes (multi-label), e.g. ``" "``.
        valid_col: a boolean column: ``True`` rows are the validation split
            (instead of ``validation_split``).
        image_size, batch_size, seed, shuffle, cache_images, crop_to_aspect_ratio,
        augmentation, verify, cache_budget_gb: as in :func:`tfx_transfer.load_image_folder`.
        validation_split: fraction held out for validation (stratified per class and
            seeded as the folder loader's; multi-label: stratified on each row's rarest
            label, so a rare label gets its share of validation rows and its only row stays
            in train).
        label_mode: ``None`` (``"int"``; multi-label: ``"multi_hot"``), ``"int"`` or
            ``"categorical"`` (single-label only).

    Returns:
        An :class:`ImageFolder`; ``multi_label`` is set, and ``files`` hold tuples of
        class indices, for a multi-label table.

    Raises:
        ValueError: a missing column (the existing ones are named), an empty table, a
            file listed twice with different labels, a non-boolean ``valid_col``, a
            class in no training row (when the table is split into training and
            validation rows), both ``valid_col`` and ``validation_split``.

    Warns:
        UserWarning: once, naming every row whose file is missing or cannot be decoded.

    Example:
        >>> import tempfile
        >>> from PIL import Image
        >>> root = Path(tempfile.mkdtemp())
        >>> for i in range(4):
        ...     Image.new("RGB", (20, 20), (60 * i, 0, 0)).save(root / f"{i}.png")
        >>> _ = (root / "tags.csv").write_text(
        ...     "filename,tags,is_valid\\n0.png,sky sea,0\\n1.png,sea,0\\n2.png,sky,0\\n3.png,sky sea,1\\n")
        >>> data = load_image_table(root / "tags.csv", y_col="tags", label_delim=" ",
        ...                         valid_col="is_valid", image_size=8)
        >>> data.class_names, data.multi_label, next(iter(data.validation))[1].numpy().tolist()
        (['sea', 'sky'], True, [[1.0, 1.0]])
    """
    columns, rows, what = read_table(table)
    if not rows:
        raise ValueError(f"{what} has no rows: one row per image (columns {columns}).")
    multi_label = label_delim is not None or not isinstance(y_col, str)
    y_col = y_col if isinstance(y_col, str) else [str(c) for c in y_col]
    _check_columns(columns, [x_col, *([y_col] if isinstance(y_col, str) else y_col),
                             *([valid_col] if valid_col else [])], what)
    if valid_col and validation_split is not None:
        raise ValueError(f"valid_col={valid_col!r} chooses the validation rows; drop "
                         f"validation_split={validation_split}.")
    label_mode = label_mode or ("multi_hot" if multi_label else "int")
    if multi_label and label_mode != "multi_hot":
        raise ValueError(f"label_mode={label_mode!r}: a multi-label table gives multi-hot labels "
                         "(leave label_mode=None).")
    image_size, augmentation = check_loader_args(image_size, label_mode, validation_split, augmentation)
    if directory is None:
        directory = Path(table).parent if isinstance(table, (str, os.PathLike)) else Path.cwd()
    directory = Path(directory)

    entries, skipped = _parse_rows(rows, directory, x_col, y_col, label_delim, valid_col, what)
    routes = verify_images(list(entries), directory) if verify else assumed_routes(list(entries))
    skipped += [(p, reason) for p, reason in routes.items() if reason not in ROUTES]
    warn_skipped(skipped, f"of {what}")
    usable = {p: v for p, v in entries.items() if routes[p] in ROUTES}
    class_names = list(y_col) if isinstance(y_col, list) else \
        sorted({name for labels, _ in usable.values() for name in labels})
    if not usable or not class_names:
        raise ValueError(f"{what} has no usable row: {len(rows)} row(s), {len(skipped)} left out "
                         "(missing or unreadable files, see the warning), or no labels.")
    index = {name: i for i, name in enumerate(class_names)}

    def label(names: tuple[str, ...]) -> Any:
        if multi_label:
            return tuple(index[n] for n in names)
        if len(names) != 1:
            raise ValueError(f"{what}: a row has no label in column {y_col!r}; give every row a "
                             "class (or pass label_delim= for multi-label rows).")
        return index[names[0]]

    usable = dict(sorted(usable.items()))
    files = {"train": [(p, label(names)) for p, (names, valid) in usable.items() if not valid]}
    if valid_col:
        files["validation"] = [(p, label(names)) for p, (names, valid) in usable.items() if valid]
    elif validation_split is not None:
        split = _multi_label_split if multi_label else stratified_split
        files["train"], files["validation"] = split(files["train"], validation_split, seed,
                                                    class_names)
    if not multi_label:  # the folder loader's order: by class, then path (same shuffles)
        files = {split: sorted(pairs, key=lambda pair: (pair[1], pair[0])) for split, pairs in files.items()}
    if "validation" in files and not files["validation"]:
        raise NoValidationRowsError(f"{what}: no validation rows (valid_col={valid_col!r}, "
                         f"validation_split={validation_split}); mark some or use a larger fraction.")
    seen = {lab for _, labels in files["train"] for lab in (labels if multi_label else [labels])}
    unseen = [name for i, name in enumerate(class_names) if i not in seen]
    if unseen and "validation" in files:  # a table split for training
        raise ValueError(f"{what}: label(s) {unseen} appear in no training row; add training "
                         "images of them or drop them from the table.")
    return assemble_image_folder(
        files, routes, class_names, skipped, image_size=image_size, batch_size=batch_size,
        label_mode=label_mode, seed=seed, shuffle=shuffle, cache_images=cache_images,
        crop_to_aspect_ratio=crop_to_aspect_ratio, augmentation=augmentation,
        cache_budget_gb=cache_budget_gb, multi_label=multi_label)
