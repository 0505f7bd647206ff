"""The client side of an export: ``load_exported``, ``ExportedModel``, ``predict_files``.

Loads what :func:`tfx_transfer.export_saved_model` wrote with TensorFlow alone (no
Keras model, none of our layers) and predicts image files, bytes or arrays through
its signatures.

Example:
    >>> import tempfile, numpy as np, tfx_transfer as tt
    >>> model = tt.build_transfer_model("vgg16", 2, input_shape=32, weights=None,
    ...                                 class_names=["cat", "dog"])
    >>> folder = tt.export_saved_model(model, tempfile.mkdtemp())
    >>> exported = tt.load_exported(folder)
    >>> exported.class_names, exported.probabilities(np.zeros((1, 32, 32, 3), "uint8")).shape
    (['cat', 'dog'], (1, 2))
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from tfx_transfer.data.files import find_images
from tfx_transfer.defaults import default_top_k
from tfx_transfer.export.saved_model import LABELS_FILE, METADATA_FILE, list_versions
from tfx_transfer.export.signatures import (
    SERVING_FORMATS,
    SIGNATURE_IMAGES,
    SIGNATURE_PIXELS,
    SIGNATURE_PIXELS_UINT8,
)


def _resolve_version(path: Path) -> Path:
    if (path / "saved_model.pb").exists():
        return path
    versions = list_versions(path)
    if not versions:
        raise FileNotFoundError(
            f"{str(path)!r} is neither a SavedModel nor a folder of numbered versions; pass the "
            "export_dir given to export_saved_model() or one of its version folders."
        )
    return path / str(versions[-1])


class ExportedModel:
    """A SavedModel written by :func:`export_saved_model`, loaded for quick checks.

    Attributes:
        path: the version folder loaded.
        saved_model: the object from ``tf.saved_model.load`` (``.signatures[...]``).
        class_names: from ``assets/labels.txt``.
        metadata: ``assets.extra/metadata.json`` as a dict.
        image_size: the model's ``(height, width)``.

    Example:
        >>> import io, tempfile, numpy as np, tfx_transfer as tt
        >>> from PIL import Image
        >>> model = tt.build_transfer_model("vgg16", 2, input_shape=32, weights=None)
        >>> exported = ExportedModel(tt.export_saved_model(model, tempfile.mkdtemp(),
        ...                                                ["daisy", "rose"]))
        >>> exported.class_names, exported.image_size
        (['daisy', 'rose'], (32, 32))
        >>> png = io.BytesIO(); Image.new("RGB", (64, 48), "red").save(png, "PNG")
        >>> rows = exported.predict([png.getvalue(), np.zeros((40, 40, 3), "uint8")], top_k=2)
        >>> len(rows), sorted(name for name, score in rows[0]["top"])
        (2, ['daisy', 'rose'])
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = _resolve_version(Path(path))
        labels = self.path / "assets" / LABELS_FILE
        meta = self.path / "assets.extra" / METADATA_FILE
        if not labels.exists() or not meta.exists():
            raise ValueError(
                f"{str(self.path)!r} has no assets/{LABELS_FILE} or assets.extra/{METADATA_FILE}; "
                "it was not written by export_saved_model()."
            )
        self.class_names = labels.read_text(encoding="utf-8").splitlines()
        self.metadata = json.loads(meta.read_text(encoding="utf-8"))
        # "input_size" in exports written before the vocabulary settled on image_size
        self.image_size = tuple(self.metadata.get("image_size", self.metadata.get("input_size")))
        self.saved_model = tf.saved_model.load(str(self.path))

    def __repr__(self) -> str:
        return f"ExportedModel({str(self.path)!r}, classes={len(self.class_names)})"

    def probabilities(self, images: Any) -> np.ndarray:
        """``float32 (N, C)`` probabilities for paths, bytes or ``(H, W, 3)`` arrays (mixed is fine).

        Encoded images (paths, bytes) go through ``serving_default`` in one call;
        arrays through ``predict_pixels`` / ``predict_pixels_uint8`` (resized inside).
        A decoding error names the bad image's index among the encoded ones.

        Example:
            >>> import tempfile, numpy as np, tfx_transfer as tt
            >>> model = tt.build_transfer_model("vgg16", 2, input_shape=32, weights=None)
            >>> exported = tt.load_exported(tt.export_saved_model(model, tempfile.mkdtemp(),
            ...                                                   ["daisy", "rose"]))
            >>> pixels = np.zeros((2, 32, 32, 3), "uint8")
            >>> np.allclose(exported.probabilities(pixels), model.predict(pixels, verbose=0))
            True
        """
        return self.outputs(images)["probabilities"]

    @property
    def has_unknown(self) -> bool:
        """Whether the export returns ``unknown_score`` and ``unknown`` (a model fitted by
        :func:`tfx_transfer.fit_unknown`)."""
        return "unknown" in self.metadata

    def outputs(self, images: Any) -> dict[str, np.ndarray]:
        """``{"probabilities" (N, C)}``, plus ``"unknown_score"``, ``"unknown"`` (N,) when the export has them.

        Takes what :meth:`probabilities` takes (its example applies)."""
        items = _as_items(images)
        keys = ["probabilities"] + (["unknown_score", "unknown"] if self.has_unknown else [])
        out = {"probabilities": np.zeros((len(items), len(self.class_names)), np.float32)}
        if self.has_unknown:
            out["unknown_score"] = np.zeros(len(items), np.float32)
            out["unknown"] = np.zeros(len(items), bool)
        encoded = [i for i, item in enumerate(items) if isinstance(item, bytes)]
        if encoded:
            result = self.saved_model.signatures[SIGNATURE_IMAGES](
                images=tf.constant([items[i] for i in encoded], tf.string))
            for key in keys:
                out[key][encoded] = result[key].numpy()
        for i, item in enumerate(items):
            if isinstance(item, np.ndarray):
                name = SIGNATURE_PIXELS_UINT8 if item.dtype == np.uint8 else SIGNATURE_PIXELS
                dtype = tf.uint8 if item.dtype == np.uint8 else tf.float32
                result = self.saved_model.signatures[name](pixels=tf.constant(item[None], dtype))
                for key in keys:
                    out[key][i] = result[key].numpy()[0]
        return out

    def predict(self, images: Any, top_k: int | None = None,
                unknown_threshold: float | None = None) -> list[dict]:
        """Top classes per image: ``[{"top": [(class, score), ...], "probabilities": array}]``.

        ``images``: a path, bytes, an ``(H, W, 3)`` array, an ``(N, H, W, 3)``
        batch, or a list of them. ``top_k`` defaults to the export's. An export with
        an unknown score adds ``"unknown_score"`` and ``"unknown"`` (score above
        ``unknown_threshold``, default the export's threshold). A multi-label
        export's rows also have ``"labels"``: every label at or above its threshold.

        Example:
            >>> import tempfile, numpy as np, tfx_transfer as tt
            >>> model = tt.build_transfer_model("vgg16", 2, input_shape=32, weights=None)
            >>> exported = tt.load_exported(tt.export_saved_model(model, tempfile.mkdtemp(),
            ...                                                   ["daisy", "rose"]))
            >>> row = exported.predict(np.zeros((32, 32, 3), "uint8"), top_k=1)[0]
            >>> len(row["top"]), row["top"][0][0] in exported.class_names, row["probabilities"].shape
            (1, True, (2,))
        """
        top_k = int(self.metadata["top_k"] if top_k is None else top_k)
        if not 1 <= top_k <= len(self.class_names):
            raise ValueError(f"top_k={top_k} must be between 1 and {len(self.class_names)}.")
        out = self.outputs(images)
        thresholds = self.metadata.get("thresholds") if self.metadata.get("multi_label") else None
        rows = [top_classes(row, self.class_names, top_k, thresholds) for row in out["probabilities"]]
        if self.has_unknown:
            from tfx_transfer.models.unknown_score import model_threshold

            flags = out["unknown"] if unknown_threshold is None else \
                out["unknown_score"] > model_threshold(self, unknown_threshold)
            for row, score, flag in zip(rows, out["unknown_score"], flags):
                row.update(unknown_score=float(score), unknown=bool(flag))
        elif unknown_threshold is not None:
            raise ValueError(f"unknown_threshold={unknown_threshold!r}, but the export {self.path} "
                             "has no unknown score (export a model fitted with tt.fit_unknown).")
        return rows

    __call__ = predict


def top_classes(row: np.ndarray, class_names: list[str], top_k: int, thresholds: Any = None) -> dict:
    """One prediction row: its ``top_k`` classes, and with ``thresholds`` (multi-label) ``"labels"``.

    Args:
        row: one image's probabilities.
        class_names: the labels, in output order.
        top_k: how many classes ``"top"`` lists.
        thresholds: per-label thresholds of a multi-label model (else ``None``).

    Example:
        >>> top_classes(np.array([0.2, 0.9, 0.6]), ["a", "b", "c"], 1, [0.5, 0.5, 0.5])["labels"]
        [('b', 0.9), ('c', 0.6)]
    """
    order = np.argsort(-row, kind="stable")
    out = {"top": [(class_names[i], float(row[i])) for i in order[:top_k]], "probabilities": row}
    if thresholds is not None:  # multi-label: every label at or above its threshold, best first
        out["labels"] = [(class_names[i], float(row[i])) for i in order if row[i] >= thresholds[i]]
    return out


def _as_items(images: Any) -> list[bytes | np.ndarray]:
    """Normalise the accepted inputs to a list of encoded bytes or ``(H, W, 3)`` arrays."""
    if isinstance(images, (str, bytes, os.PathLike)):
        images = [images]
    elif isinstance(images, np.ndarray):
        images = list(images) if images.ndim == 4 else [images]
    items: list[bytes | np.ndarray] = []
    for i, item in enumerate(images):
        if isinstance(item, (str, os.PathLike)):
            items.append(Path(item).read_bytes())
        elif isinstance(item, (bytes, bytearray)):
            items.append(bytes(item))
        else:
            array = np.asarray(item)
            if array.ndim != 3 or array.shape[-1] != 3:
                raise ValueError(
                    f"Image {i} is an array of shape {array.shape}; pass (H, W, 3) RGB pixels "
                    "(convert grayscale/RGBA first), a file path or encoded bytes."
                )
            items.append(array if array.dtype == np.uint8 else array.astype(np.float32))
    return items


def load_exported(path: str | os.PathLike) -> ExportedModel:
    """Load an export for quick checks: ``path`` is an ``export_dir`` (newest version) or a version.

    Example:
        >>> import shutil, tempfile, tfx_transfer as tt
        >>> model = tt.build_transfer_model("vgg16", 2, input_shape=32, weights=None)
        >>> flowers = tempfile.mkdtemp()
        >>> first = tt.export_saved_model(model, flowers, ["daisy", "rose"])  # version 1
        >>> _ = shutil.copytree(first, first.with_name("2"))  # as a second export would add it
        >>> exported = load_exported(flowers)  # the newest version
        >>> exported.metadata["backbone"], exported.path.name
        ('vgg16', '2')
    """
    return ExportedModel(path)


def _collect_files(paths_or_folder: Any) -> tuple[list[Path], list[tuple[str, str]]]:
    """Image files to predict (folders walked recursively, sorted) and files left out."""
    found, skipped = find_images(paths_or_folder)
    files = []
    for path in found:
        if path.suffix.lower() in (".tif", ".tiff"):
            skipped.append((str(path), f"TIFF: the serving graph decodes {SERVING_FORMATS} only"))
        else:
            files.append(path)
    return files, skipped


def _decode_failure(err: tf.errors.InvalidArgumentError) -> str:
    found = re.search(r"index 0: ([^;)]*)", err.message)
    return found.group(1) if found else err.message.strip().splitlines()[0]


def predict_files(
    export: str | os.PathLike | ExportedModel,
    paths_or_folder: str | os.PathLike | Iterable[str | os.PathLike],
    top_k: int | None = None,
    batch_size: int = 32,
    progress: bool = True,
    skipped: list | None = None,
    unknown_threshold: float | None = None,
) -> list[dict]:
    """Predict image files (or every image under folders) with an export, in batches.

    Files that cannot be read or decoded are skipped, never stopping the run: they
    are appended as ``(path, reason)`` to ``skipped`` when a list is given, else
    named in one ``UserWarning``. Folders are walked recursively
    (hidden files ignored); a progress bar (``keras.utils.Progbar``) counts images.

    Args:
        export: an ``export_dir`` (its newest version), a version folder, an
            :class:`ExportedModel` already loaded, or a ``.tflite`` file with class names
            (:class:`~tfx_transfer.export.tflite_classifier.TFLiteClassifier`).
        paths_or_folder: an image file, a folder, or a list of them. TIFFs are
            skipped: the serving graph does not decode them.
        top_k: classes per image; default
            :func:`tfx_transfer.defaults.default_top_k` (``min(5, C)``).
        batch_size: files per call of the export.
        progress: show the progress bar.
        skipped: a list that receives ``(path, reason)`` for each file left out,
            instead of the warning.
        unknown_threshold: the threshold of ``unknown`` instead of the export's own.

    Returns:
        ``[{"path": str, "top": [(class, score), ...]}]`` in file order; with
        ``"unknown"`` and ``"unknown_score"`` when the export has an unknown score (a
        multi-label export adds ``"labels"``: every label at or above its threshold).

    Example:
        >>> import os, tempfile, tfx_transfer as tt
        >>> from PIL import Image
        >>> model = tt.build_transfer_model("vgg16", 2, input_shape=32, weights=None)
        >>> export = tt.export_saved_model(model, tempfile.mkdtemp(), ["daisy", "rose"])
        >>> photos = tempfile.mkdtemp()
        >>> for name in ("1.jpg", "2.png"):
        ...     Image.new("RGB", (64, 48), "red").save(os.path.join(photos, name))
        >>> rows = predict_files(export, photos, top_k=1, progress=False)
        >>> [(os.path.basename(row["path"]), len(row["top"])) for row in rows]
        [('1.jpg', 1), ('2.png', 1)]
    """
    if isinstance(export, (str, os.PathLike)) and os.fspath(export).endswith(".onnx"):
        raise ValueError(f"{os.fspath(export)!r} is an ONNX file: predict takes a SavedModel export "
                         "or a .tflite file; run an .onnx file with onnxruntime (docs/deploy.md).")
    if isinstance(export, (str, os.PathLike)) and os.fspath(export).endswith(".tflite"):
        from tfx_transfer.export.tflite_classifier import TFLiteClassifier

        export = TFLiteClassifier(export)  # labels from its metadata, same predict()
    exported = export if hasattr(export, "predict") else load_exported(export)
    top_k = default_top_k(len(exported.class_names)) if top_k is None else top_k
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be at least 1.")
    report = skipped
    files, skipped = _collect_files(paths_or_folder)
    bar = None
    if progress and files:
        import keras

        bar = keras.utils.Progbar(len(files), unit_name="image")
    results: list[dict] = []
    for start in range(0, len(files), batch_size):
        batch, data = [], []
        for path in files[start:start + batch_size]:
            try:
                data.append(path.read_bytes())
                batch.append(path)
            except OSError as err:
                skipped.append((str(path), f"cannot be read ({err})"))
        try:
            rows = exported.predict(data, top_k=top_k, unknown_threshold=unknown_threshold) if data else []
        except tf.errors.InvalidArgumentError:
            rows = []  # one bad file fails the batch: redo it file by file to skip only the bad ones
            for path, item in list(zip(batch, data)):
                try:
                    rows += exported.predict([item], top_k=top_k, unknown_threshold=unknown_threshold)
                except tf.errors.InvalidArgumentError as err:
                    skipped.append((str(path), _decode_failure(err)))
                    batch.remove(path)
        results += [{"path": str(path), **{key: row[key] for key in ("top", "labels", "unknown",
                                                                    "unknown_score") if key in row}}
                    for path, row in zip(batch, rows)]
        if bar is not None:
            bar.update(min(start + batch_size, len(files)))
    if report is not None:
        report.extend(skipped)
    elif skipped:
        lines = "\n".join(f"  {path}: {reason}" for path, reason in skipped)
        warnings.warn(f"Skipped {len(skipped)} file(s):\n{lines}", UserWarning, stacklevel=2)
    return results
