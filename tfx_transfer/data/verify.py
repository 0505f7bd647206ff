"""Decode every file once before training, with the training decoder, and remember the answer.

:func:`verify_images` tells, per file, which decoder reads it (``"tf"`` or
``"pil"``) or why it cannot be read, so a bad file is reported up front instead
of crashing an epoch. Results are cached per folder in a JSON file keyed by each
file's size and modification time (:func:`verify_cache_file`), so a second load of
an unchanged folder decodes nothing.

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> from PIL import Image
    >>> root = Path(tempfile.mkdtemp())
    >>> Image.new("RGB", (8, 8)).save(root / "ok.png")
    >>> _ = (root / "broken.jpg").write_bytes(b"not a jpeg")
    >>> routes = verify_images([str(root / "ok.png"), str(root / "broken.jpg")], root)
    >>> routes[str(root / "ok.png")], routes[str(root / "broken.jpg")].startswith("cannot be decoded")
    ('tf', True)
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path

import numpy as np
import tensorflow as tf

from tfx_transfer.data.decode import decode_image, needs_pil, pil_decode

# the routes a readable file can take; anything else is the reason it cannot be read
ROUTES = ("tf", "pil")


def verify_cache_file(root: str | os.PathLike) -> Path:
    """Where the verification results of the folder ``root`` are kept.

    Under ``$TFX_TRANSFER_CACHE_DIR`` (default ``~/.cache/tfx_transfer``), one file
    per folder and TensorFlow version.

    Example:
        >>> verify_cache_file("/data/photos").parent.name
        'verified'
    """
    base = Path(os.environ.get("TFX_TRANSFER_CACHE_DIR", Path.home() / ".cache" / "tfx_transfer"))
    key = hashlib.sha1(f"{Path(root).resolve()}|tf{tf.__version__}".encode()).hexdigest()[:16]
    return base / "verified" / f"{key}.json"


def file_key(path: str | os.PathLike) -> list[int]:
    """``[size, mtime_ns]`` of a file: a changed file gets a new key.

    Example:
        >>> import tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "x.bin")
        >>> _ = open(path, "wb").write(b"abc")
        >>> file_key(path)[0]
        3
    """
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


def _read_cache(cache_file: Path) -> dict[str, list]:
    if not cache_file.exists():
        return {}
    try:
        return json.loads(cache_file.read_text())
    except (OSError, ValueError):
        return {}


def _route(path: str, tf_ok: bool) -> str:
    """``"tf"``, ``"pil"`` or the reason the file cannot be decoded."""
    if tf_ok and not needs_pil(path):
        return "tf"
    try:
        pil_decode(path)
        return "pil"
    except Exception as err:  # any Pillow failure means "cannot decode"
        return f"cannot be decoded ({type(err).__name__}: {err})"


def verify_images(paths: list[str], root: str | os.PathLike) -> dict[str, str]:
    """Path -> ``"tf"``, ``"pil"`` (the decoder to use) or the reason it cannot be read.

    Files whose size and modification time match the cache of ``root`` are not
    decoded again; the cache is rewritten when anything was decoded.

    Args:
        paths: the candidate image files.
        root: the folder they belong to (names the cache file).

    Example:
        >>> import tempfile
        >>> from PIL import Image
        >>> root = tempfile.mkdtemp()
        >>> Image.new("RGB", (8, 8)).save(os.path.join(root, "scan.tif"))
        >>> verify_images([os.path.join(root, "scan.tif")], root)[os.path.join(root, "scan.tif")]
        'pil'
    """
    cache_file = verify_cache_file(root)
    cache = _read_cache(cache_file)
    result, todo = {}, []
    for path in paths:
        hit = cache.get(path)
        if hit is not None and hit[:2] == file_key(path):
            result[path] = hit[2]
        else:
            todo.append(path)
    if not todo:
        return result
    tf_ok = _tf_decodable(todo)
    for i, path in enumerate(todo):
        result[path] = _route(path, i in tf_ok)
    cache = {p: file_key(p) + [result[p]] for p in paths}
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        cache_file.write_text(json.dumps(cache))
    except OSError as err:
        warnings.warn(f"Could not write the verification cache {cache_file}: {err}", stacklevel=3)
    return result


def assumed_routes(paths: list[str]) -> dict[str, str]:
    """The routes without decoding (``verify=False``): Pillow where :func:`needs_pil`, else TensorFlow.

    Example:
        >>> assumed_routes(["a.jpg", "b.tif"])
        {'a.jpg': 'tf', 'b.tif': 'pil'}
    """
    return {p: "pil" if needs_pil(p) else "tf" for p in paths}
