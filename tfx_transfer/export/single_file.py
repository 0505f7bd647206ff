"""What every single-file export (TFLite, ONNX) shares: the class names it carries, the atomic write."""

from __future__ import annotations

import os
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def model_class_names(model: Any, class_names: Sequence[str] | None = None) -> list[str] | None:
    """``class_names`` (checked against the model's outputs), else the model's own, else ``None``.

    Example:
        >>> import keras
        >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2)])
        >>> model_class_names(model), model_class_names(model, ["a", "b"])
        (None, ['a', 'b'])
    """
    if class_names is None:
        from tfx_transfer.models.transfer_model import transfer_config

        try:
            class_names = transfer_config(model).get("class_names")
        except ValueError:  # a plain Keras model: no names known
            return None
    if class_names is not None and len(class_names) != int(model.output_shape[-1]):
        raise ValueError(f"{len(class_names)} class names for a model with "
                         f"{model.output_shape[-1]} outputs; pass one name per output.")
    return None if class_names is None else [str(name) for name in class_names]


def write_file(content: bytes, path: str | os.PathLike) -> Path:
    """Write ``content`` to ``path`` atomically (a temporary file, then a rename); folders created.

    Example:
        >>> import os, tempfile
        >>> write_file(b"abc", os.path.join(tempfile.mkdtemp(), "sub", "m.bin")).read_bytes()
        b'abc'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        tmp.write_bytes(content)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
