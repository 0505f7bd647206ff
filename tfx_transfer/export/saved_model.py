"""Serving: a SavedModel that takes image bytes, TFLite, and quick predictions.

:func:`export_saved_model` writes a TensorFlow SavedModel in the TF Serving
layout (``<export_dir>/<version>/``) that needs nothing of ours at serving time:
encoded images in, class names and probabilities out. Its signatures:

=========================  ==========================================================
``serving_default``        ``images``: ``tf.string [None]`` (JPEG, PNG, GIF, BMP or
                           WebP bytes) -> ``probabilities`` ``float32 [None, C]``,
                           ``class_ids`` ``int32 [None, k]``, ``class_names``
                           ``string [None, k]``, ``scores`` ``float32 [None, k]``
``predict_pixels``         ``pixels``: ``float32 [None, None, None, 3]``, RGB in
                           0..255, any size -> the same four outputs
``predict_pixels_uint8``   ``pixels``: ``uint8 [None, None, None, 3]`` -> the same
=========================  ==========================================================

Pixels go through exactly the training pipeline's code
(:func:`tfx_transfer.data.decode.decode_and_resize`): decode to RGB (grayscale, palette,
RGBA become RGB; a GIF gives its first frame), bilinear antialiased resize to
the model's input size, rounded to ``uint8``; then the model with
``training=False`` (augmentation layers are identity). A pixel batch already at
the model size is passed to the model unchanged (no rounding), so
``predict_pixels`` equals ``model.predict`` exactly; other sizes are resized as
in training. Resize semantics can differ from yours in two documented ways:
images you resize yourself (PIL, OpenCV) before sending differ by that
resampler's rounding; and TensorFlow reads 8-bit palette BMPs as their palette
indices (the training pipeline reads those, and TIFFs, with Pillow) -- send PNG
or JPEG instead.

A bad image in a batch fails the call with ``tf.errors.InvalidArgumentError``
naming every bad index and why, e.g. ``Could not decode 1 of 3 image(s) of the
batch (index 1: not a JPEG, PNG, GIF, BMP or WebP image)``.

The class names are a constant of the graph, also listed in ``assets/labels.txt``
(one name a line), and ``assets.extra/metadata.json`` records the backbone,
input size, class names, versions and any training metrics.

Example:
    >>> import os, tempfile, numpy as np, tfx_transfer as tt
    >>> from PIL import Image
    >>> model = tt.build_transfer_model("vgg16", 2, input_shape=32, weights=None)
    >>> flowers = os.path.join(tempfile.mkdtemp(), "flowers")
    >>> path = tt.export_saved_model(model, flowers, ["daisy", "rose"])
    >>> path.name
    '1'
    >>> Image.new("RGB", (64, 48), "red").save(os.path.join(flowers, "rose.jpg"))
    >>> exported = tt.load_exported(flowers)
    >>> probabilities = exported.probabilities([os.path.join(flowers, "rose.jpg")])
    >>> np.allclose(probabilities.sum(), 1.0)
    True
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from tfx_transfer._compat import write_archive
from tfx_transfer.data.decode import TENSORFLOW_DECODES_WEBP, decode_and_resize, resize_image
from tfx_transfer.defaults import default_top_k

LABELS_FILE = "labels.txt"
METADATA_FILE = "metadata.json"  # under <version>/assets.extra/
SIGNATURE_IMAGES = "serving_default"
SIGNATURE_PIXELS = "predict_pixels"
SIGNATURE_PIXELS_UINT8 = "predict_pixels_uint8"
SERVING_FORMATS = "JPEG, PNG, GIF, BMP or WebP" if TENSORFLOW_DECODES_WEBP else "JPEG, PNG, GIF or BMP"

# -- checks ---------------------------------------------------------------------------


def tensorflow_backend() -> bool:
    """Whether Keras runs on TensorFlow in this process (exports build TensorFlow graphs).

    Example:
        >>> import keras
        >>> tensorflow_backend() == (keras.backend.backend() == "tensorflow")
        True
    """
    import keras

    return keras.backend.backend() == "tensorflow"


def _export_through_tensorflow(model: Any, out: str | os.PathLike, kwargs: dict) -> Path:
    """Export from another Keras backend: the same ``.keras`` file, exported by a TensorFlow process.

    The graph of the export (image decoding, class names) is TensorFlow's, so a JAX
    or PyTorch process saves the model and a ``KERAS_BACKEND=tensorflow`` child
    process loads and exports it: same weights, same signatures.
    """
    import subprocess
    import sys

    with tempfile.TemporaryDirectory(prefix="tfx_transfer_export_") as tmp:
        model_path, args_path = Path(tmp) / "model.keras", Path(tmp) / "args.json"
        model.save(model_path)
        args_path.write_text(json.dumps({"out": os.fspath(out), **kwargs}, default=_json_default))
        code = ("import json, sys; from tfx_transfer.export.saved_model import export_saved_model; "
                "from tfx_transfer.models.saving import load_model; a = json.load(open(sys.argv[2])); "
                "print(export_saved_model(load_model(sys.argv[1], compile=False), a.pop('out'), **a))")
        env = {**os.environ, "KERAS_BACKEND": "tensorflow"}
        done = subprocess.run([sys.executable, "-c", code, str(model_path), str(args_path)],
                              env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError("Exporting through a TensorFlow process failed:\n" + done.stderr[-3000:])
    return Path(done.stdout.strip().splitlines()[-1])


def model_image_size(model: Any) -> tuple[int, int]:
    """``(height, width)`` of a model that takes ``(None, H, W, 3)`` pixels; else ``ValueError``.

    Example:
        >>> import keras
        >>> model_image_size(keras.Sequential([keras.Input((48, 32, 3)), keras.layers.Flatten()]))
        (48, 32)
    """
    shape = tuple(model.input_shape)
    if len(shape) != 4 or shape[-1] != 3 or shape[1] is None or shape[2] is None:
        raise ValueError(
            f"Model {model.name!r} takes input_shape={shape}; exporting needs a fixed "
            "(None, height, width, 3) pixel input, as build_transfer_model() makes."
        )
    return int(shape[1]), int(shape[2])


def _check_class_names(class_names: Sequence[str], model: Any) -> list[str]:
    names = [str(name) for name in class_names]
    num_outputs = int(model.output_shape[-1])
    if len(names) != num_outputs:
        raise ValueError(
            f"{len(names)} class names {names[:5]}... for a model with {num_outputs} outputs; "
            "pass one name per output unit, in label order (e.g. ImageFolder.class_names)."
        )
    bad = [n for n in names if not n.strip() or "\n" in n or "\r" in n]
    if bad:
        raise ValueError(f"Class names {bad!r} are empty or contain line breaks; rename them.")
    if len(set(names)) != len(names):
        raise ValueError(f"Class names {names!r} have duplicates; each class needs its own name.")
    return names


# -- graph pieces (pure TensorFlow ops: they end up in the SavedModel) ----------------


def _recognised_format(images: tf.Tensor) -> tf.Tensor:
    """Per element: do the bytes start like JPEG, PNG, GIF, BMP or WebP?"""
    head = tf.strings.substr(tf.strings.join([images, "\0" * 12]), 0, 12)

    def starts(prefix: bytes) -> tf.Tensor:
        return tf.equal(tf.strings.substr(head, 0, len(prefix)), prefix)

    known = starts(b"\xff\xd8\xff") | starts(b"\x89PNG") | starts(b"GIF8") | starts(b"BM")
    if not TENSORFLOW_DECODES_WEBP:  # TensorFlow < 2.19 cannot decode WebP in the graph
        return known
    return known | (starts(b"RIFF") & tf.equal(tf.strings.substr(head, 8, 4), b"WEBP"))


def _decode_batch(images: tf.Tensor, image_size: tuple[int, int], crop: bool) -> tf.Tensor:
    """``(N,)`` encoded images -> ``uint8 (N, H, W, 3)`` with ``decode_and_resize``.

    Each image is decoded on its own inside ``tf.data`` (in parallel); failures
    are dropped with ``ignore_errors`` and then reported together by one assert,
    so the error names the index of every bad image instead of the graph node.
    """
    height, width = image_size
    count = tf.shape(images, out_type=tf.int64)[0]
    decoded = (
        tf.data.Dataset.from_tensor_slices((tf.range(count), images))
        .map(lambda i, data: (i, decode_and_resize(data, image_size, crop)),
             num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        .ignore_errors()
        .batch(tf.maximum(count, 1))
    )
    empty = (tf.zeros([0], tf.int64), tf.zeros([0, height, width, 3], tf.uint8))
    ok, pixels = decoded.reduce(
        empty, lambda acc, batch: (tf.concat([acc[0], batch[0]], 0), tf.concat([acc[1], batch[1]], 0))
    )
    hit = tf.scatter_nd(ok[:, None], tf.ones_like(ok, tf.int32), tf.reshape(count, [1]))
    bad = tf.where(tf.equal(hit, 0))[:, 0]
    reasons = tf.where(
        tf.gather(_recognised_format(images), bad),
        "corrupt or truncated image data",
        f"not a {SERVING_FORMATS} image",
    )
    details = tf.strings.reduce_join(
        tf.strings.join(["index ", tf.strings.as_string(bad), ": ", reasons]), separator="; "
    )
    message = tf.strings.join([
        "Could not decode ", tf.strings.as_string(tf.size(bad)), " of ",
        tf.strings.as_string(count), " image(s) of the batch (", details, ")",
    ])
    check = tf.debugging.Assert(tf.equal(tf.size(bad), 0), [message])
    with tf.control_dependencies([check]):
        return tf.ensure_shape(tf.identity(pixels), [None, height, width, 3])


def _fit_pixels(pixels: tf.Tensor, image_size: tuple[int, int], crop: bool) -> tf.Tensor:
    """Pixels at the model size pass unchanged; others are resized like training images."""
    height, width = image_size
    shape = tf.shape(pixels)
    same = tf.logical_and(tf.equal(shape[1], height), tf.equal(shape[2], width))

    def resize() -> tf.Tensor:
        out = tf.map_fn(
            lambda image: resize_image(image, image_size, crop),
            pixels,
            fn_output_signature=tf.TensorSpec([height, width, 3], tf.uint8),
        )
        return tf.cast(out, tf.float32)

    fitted = tf.cond(same, lambda: tf.cast(pixels, tf.float32), resize)
    return tf.ensure_shape(fitted, [None, height, width, 3])


class _Serving:
    """The signature functions of one export (closes over the model and the class names)."""

    def __init__(self, model: Any, labels: tf.Tensor, image_size: tuple[int, int],
                 top_k: int, crop: bool) -> None:
        self.model, self.labels, self.image_size = model, labels, image_size
        self.top_k, self.crop = top_k, crop

    def _outputs(self, pixels: tf.Tensor) -> dict[str, tf.Tensor]:
        # An empty batch never reaches the network: TensorFlow's oneDNN convolutions fail on
        # zero-size inputs inside a SavedModel graph.
        probabilities = tf.cond(
            tf.shape(pixels)[0] > 0,
            lambda: tf.cast(self.model(pixels, training=False), tf.float32),
            lambda: tf.zeros([0, self.labels.shape[0]], tf.float32))
        scores, class_ids = tf.math.top_k(probabilities, k=self.top_k)
        return {
            "probabilities": probabilities,
            "class_ids": class_ids,
            "class_names": tf.gather(self.labels, class_ids),
            "scores": scores,
        }

    def images(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
        pixels = _decode_batch(images, self.image_size, self.crop)
        return self._outputs(tf.cast(pixels, tf.float32))

    def pixels(self, pixels: tf.Tensor) -> dict[str, tf.Tensor]:
        return self._outputs(_fit_pixels(pixels, self.image_size, self.crop))


# -- metadata and folders ------------------------------------------------------------


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(
        f"metadata value {value!r} ({type(value).__name__}) is not JSON serialisable; "
        "pass numbers, strings, lists and dicts."
    )


def _metadata(model: Any, class_names: list[str], image_size: tuple[int, int], top_k: int,
              crop: bool, extra: dict | None) -> dict:
    import keras

    from tfx_transfer import __version__
    from tfx_transfer.models.transfer_model import backbone_name

    config = dict(getattr(model, "transfer_config", None) or {})
    try:
        backbone = backbone_name(model)
    except ValueError:
        backbone = None  # a plain Keras model: exported the same way, no backbone to name
    info = {
        "format": "tfx_transfer-savedmodel-1",
        "backbone": backbone,
        "head": config.get("head"),
        "image_size": list(image_size),
        "num_classes": len(class_names),
        "class_names": class_names,
        "top_k": top_k,
        "crop_to_aspect_ratio": crop,
        "signatures": {
            SIGNATURE_IMAGES: f"images: tf.string [None] ({SERVING_FORMATS} bytes)",
            SIGNATURE_PIXELS: "pixels: float32 [None, None, None, 3], RGB 0..255, any size",
            SIGNATURE_PIXELS_UINT8: "pixels: uint8 [None, None, None, 3], any size",
        },
        "versions": {"tfx_transfer": __version__, "tensorflow": tf.__version__,
                     "keras": keras.__version__},
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    clash = sorted(set(extra or {}) & set(info))
    if clash:
        raise ValueError(f"metadata keys {clash} are written by the export itself; rename them.")
    info.update(extra or {})
    return info


def list_versions(export_dir: str | os.PathLike) -> list[int]:
    """The numbered version folders of an export folder, ascending (hidden temp folders ignored).

    Example:
        >>> import tempfile; from pathlib import Path
        >>> root = Path(tempfile.mkdtemp()); (root / "2").mkdir(); (root / "10").mkdir()
        >>> list_versions(root)
        [2, 10]
    """
    export_dir = Path(export_dir)
    if not export_dir.is_dir():
        return []
    return sorted(int(p.name) for p in export_dir.iterdir() if p.is_dir() and p.name.isdigit())


def _check_export_dir(export_dir: Path) -> None:
    if export_dir.exists() and not export_dir.is_dir():
        raise ValueError(f"export_dir {str(export_dir)!r} is a file; pass a folder.")
    if (export_dir / "saved_model.pb").exists():
        raise ValueError(
            f"export_dir {str(export_dir)!r} is itself a SavedModel; pass the parent folder that "
            "holds the numbered versions (TF Serving layout <dir>/<version>/)."
        )


def _move_into_place(tmp: Path, final: Path, overwrite: bool) -> None:
    """Rename ``tmp`` to ``final``; with ``overwrite`` the old version is set aside, then deleted."""
    if not final.exists():
        os.rename(tmp, final)
        return
    old = final.with_name(f".old-{final.name}-{uuid.uuid4().hex[:8]}")
    os.rename(final, old)
    try:
        os.rename(tmp, final)
    except BaseException:
        os.rename(old, final)
        raise
    shutil.rmtree(old, ignore_errors=True)


# -- public API ------------------------------------------------------------------------


def export_saved_model(
    model: Any,
    out: str | os.PathLike,
    class_names: Sequence[str] | None = None,
    *,
    version: int | None = None,
    top_k: int | None = None,
    overwrite: bool = False,
    metadata: dict | None = None,
    crop_to_aspect_ratio: bool = False,
) -> Path:
    """Write ``model`` as a SavedModel that takes encoded images (TF Serving layout).

    See the module docstring for the signatures. The version folder is written
    into a hidden temporary folder next to it and renamed into place, so a server
    watching ``out`` never sees a half-written version and a failure
    leaves nothing behind.

    Args:
        model: a Keras model with a fixed ``(None, H, W, 3)`` pixel input (e.g.
            from :func:`tfx_transfer.build_transfer_model`, also after reloading
            a ``.keras`` file); TensorFlow backend.
        out: the model's export folder; versions are its numbered sub-folders.
        class_names: one name per output unit, in label order; default: the
            names the model carries (:func:`tfx_transfer.transfer_config`).
        version: the version number; default: the next integer (1 for a new folder).
        top_k: how many ``class_ids``/``class_names``/``scores`` per image;
            default ``min(5, num_classes)``.
        overwrite: replace an existing version instead of refusing.
        metadata: extra JSON-serialisable entries for ``metadata.json``, e.g.
            ``{"metrics": {"val_accuracy": 0.93}}``.
        crop_to_aspect_ratio: center-crop before resizing, as in
            :func:`tfx_transfer.load_image_folder`; use the training setting.

    Returns:
        The version folder, e.g. ``exports/flowers/3``.

    Raises:
        ValueError: the version exists (and not ``overwrite``), class names do
            not match the model, bad arguments, a non-TensorFlow Keras backend.

    Example:
        >>> import tempfile, tfx_transfer as tt
        >>> model = tt.build_transfer_model("vgg16", 2, input_shape=32, weights=None)
        >>> path = export_saved_model(model, tempfile.mkdtemp(), ["daisy", "rose"],
        ...                           metadata={"metrics": {"val_accuracy": 0.91}})
        >>> sorted(p.name for p in path.iterdir())
        ['assets', 'assets.extra', 'fingerprint.pb', 'saved_model.pb', 'variables']
    """
    import keras

    if class_names is None:
        class_names = (getattr(model, "transfer_config", None) or {}).get("class_names")
        if not class_names:
            raise ValueError(f"Model {model.name!r} carries no class names: pass class_names=[...] "
                             "(one per output unit, in label order).")
    if not tensorflow_backend():
        return _export_through_tensorflow(model, out, dict(
            class_names=list(class_names), version=version, top_k=top_k, overwrite=overwrite,
            metadata=metadata, crop_to_aspect_ratio=crop_to_aspect_ratio))
    image_size = model_image_size(model)
    names = _check_class_names(class_names, model)
    top_k = default_top_k(len(names)) if top_k is None else int(top_k)
    if not 1 <= top_k <= len(names):
        raise ValueError(f"top_k={top_k} must be between 1 and the number of classes, {len(names)}.")
    export_dir = Path(out)
    _check_export_dir(export_dir)
    existing = list_versions(export_dir)
    version = (existing[-1] + 1 if existing else 1) if version is None else version
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise ValueError(f"version={version!r} must be a non-negative integer (TF Serving versions).")
    final = export_dir / str(version)
    if final.exists() and not overwrite:
        raise ValueError(
            f"Version {version} already exists at {str(final)!r}; pass overwrite=True (--overwrite) "
            f"to replace it, or leave the version unset for the next one ({existing[-1] + 1})."
        )
    info = _metadata(model, names, image_size, top_k, crop_to_aspect_ratio, metadata)
    meta_text = json.dumps(info, indent=2, default=_json_default)

    export_dir.mkdir(parents=True, exist_ok=True)
    tmp = export_dir / f".tmp-{version}-{uuid.uuid4().hex[:8]}"
    try:
        # Class names are a constant of the graph (no lookup-table resource, which older Keras
        # export archives do not save); assets/labels.txt lists them for people and tools.
        serving = _Serving(model, tf.constant(names), image_size, top_k, crop_to_aspect_ratio)
        archive = keras.export.ExportArchive()
        # No archive.track(model): with it every weight is stored twice (keras-team/keras#23553);
        # the endpoints' captured variables are tracked by the archive anyway.
        archive.add_endpoint(SIGNATURE_IMAGES, serving.images,
                             [tf.TensorSpec([None], tf.string, name="images")])
        archive.add_endpoint(SIGNATURE_PIXELS, serving.pixels,
                             [tf.TensorSpec([None, None, None, 3], tf.float32, name="pixels")])
        archive.add_endpoint(SIGNATURE_PIXELS_UINT8, serving.pixels,
                             [tf.TensorSpec([None, None, None, 3], tf.uint8, name="pixels")])
        write_archive(archive, str(tmp))
        (tmp / "assets").mkdir(exist_ok=True)
        (tmp / "assets" / LABELS_FILE).write_text("".join(f"{n}\n" for n in names), encoding="utf-8")
        (tmp / "assets.extra").mkdir(exist_ok=True)
        (tmp / "assets.extra" / METADATA_FILE).write_text(meta_text, encoding="utf-8")
        _move_into_place(tmp, final, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final
