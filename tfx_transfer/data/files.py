"""Finding image files: the one home of the extensions, hidden-file and split-folder rules.

Every module that looks for images (the folder loader, ``predict``, Grad-CAM,
domain adaptation, the server's folder checks) uses :func:`find_images` and
:func:`split_folders`, so they all accept the same files and skip the same ones.
Pure Python: importing this module imports neither TensorFlow nor Keras.

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> root = Path(tempfile.mkdtemp())
    >>> for name in ("b.jpg", "a.TIF", ".DS_Store", "notes.txt"):
    ...     _ = (root / name).write_bytes(b"x")
    >>> files, skipped = find_images(root)
    >>> [p.name for p in files], skipped[0][1]
    (['a.TIF', 'b.jpg'], "not an image file (extension '.txt')")
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".jfif", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff")
SPLITS = ("train", "validation", "test")
_SPLIT_DIRS = {"train": "train", "val": "validation", "validation": "validation", "test": "test"}
_JUNK_FILES = ("thumbs.db", "desktop.ini")
_JUNK_DIRS = ("__macosx",)

Skipped = list[tuple[str, str]]


def is_hidden(name: str) -> bool:
    """Whether a file or folder name is hidden or OS junk (``.x``, ``Thumbs.db``, ``__MACOSX``).

    Args:
        name: a file or folder name (not a path).

    Example:
        >>> is_hidden(".DS_Store"), is_hidden("__MACOSX"), is_hidden("cat.jpg")
        (True, True, False)
    """
    low = name.lower()
    return name.startswith(".") or low in _JUNK_FILES or low in _JUNK_DIRS


def visible_dirs(path: str | os.PathLike) -> list[Path]:
    """The sub-folders of ``path`` that are not hidden, sorted by name.

    Args:
        path: a folder.

    Example:
        >>> import tempfile
        >>> root = Path(tempfile.mkdtemp())
        >>> for d in ("dogs", "cats", ".cache"): (root / d).mkdir()
        >>> [p.name for p in visible_dirs(root)]
        ['cats', 'dogs']
    """
    return sorted(p for p in Path(path).iterdir() if p.is_dir() and not is_hidden(p.name))


def split_folders(root: str | os.PathLike) -> dict[str, Path]:
    """``{"train": root}`` for a folder of classes, else its train/val/test folders.

    Keys are ``"train"``, ``"validation"`` (``val/`` or ``validation/``) and ``"test"``.

    Args:
        root: a folder of class folders, or one holding ``train/`` (and ``val/``, ``test/``).

    Example:
        >>> import tempfile
        >>> root = Path(tempfile.mkdtemp())
        >>> for d in ("train/cat", "val/cat"): (root / d).mkdir(parents=True)
        >>> sorted(split_folders(root))
        ['train', 'validation']
    """
    root = Path(root)
    subdirs = {p.name.lower(): p for p in visible_dirs(root)}
    if "train" not in subdirs or not set(subdirs) <= set(_SPLIT_DIRS):
        return {"train": root}
    if "val" in subdirs and "validation" in subdirs:
        raise ValueError(
            f"{root} has both val/ and validation/; keep one of them as the validation split."
        )
    return {_SPLIT_DIRS[name]: path for name, path in subdirs.items()}


def _walk(folder: Path, extensions: tuple[str, ...], files: list[Path], skipped: Skipped) -> None:
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not is_hidden(d))
        for name in sorted(filenames):
            if is_hidden(name):
                continue
            path = Path(dirpath) / name
            ext = path.suffix.lower()
            if ext not in extensions:
                skipped.append((str(path), f"not an image file (extension {ext or 'none'!r})"))
            elif not path.is_file():
                skipped.append((str(path), "cannot be read (broken link or not a regular file)"))
            elif path.stat().st_size == 0:
                skipped.append((str(path), "empty file (0 bytes)"))
            else:
                files.append(path)


def find_images(
    paths: str | os.PathLike | Iterable[str | os.PathLike],
    extensions: Iterable[str] = IMAGE_EXTENSIONS,
) -> tuple[list[Path], Skipped]:
    """Image files under folders (walked recursively, sorted) and the files left out, with why.

    Hidden files and folders are ignored silently; other non-images, broken links
    and empty files are returned in ``skipped`` as ``(path, reason)`` so the caller
    can name them. A path that is a file is taken as it is.

    Args:
        paths: a file or folder, or a list of them.
        extensions: lower-case extensions to accept (default: every format the kit reads).

    Example:
        >>> import tempfile
        >>> root = Path(tempfile.mkdtemp())
        >>> (root / "x").mkdir(); _ = (root / "x" / "1.png").write_bytes(b"x")
        >>> [p.name for p in find_images([root])[0]]
        ['1.png']
    """
    entries = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    extensions = tuple(e.lower() for e in extensions)
    files: list[Path] = []
    skipped: Skipped = []
    for entry in map(Path, entries):
        if entry.is_dir():
            _walk(entry, extensions, files, skipped)
        elif entry.is_file():
            files.append(entry)
        else:
            raise FileNotFoundError(f"{str(entry)!r} is neither an image file nor a folder.")
    return files, skipped


def warn_skipped(skipped: Sequence[tuple[str, str]], where: str) -> None:
    """The loaders' one warning: every file left out and why (nothing when none).

    Example:
        >>> import warnings
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     warn_skipped([("a.jpg", "missing file")], "of labels.csv")
        >>> str(caught[0].message).splitlines()
        ['Skipped 1 file(s) of labels.csv:', '  a.jpg: missing file']
    """
    if skipped:
        lines = "\n".join(f"  {path}: {reason}" for path, reason in skipped)
        warnings.warn(f"Skipped {len(skipped)} file(s) {where}:\n{lines}", UserWarning, stacklevel=3)
