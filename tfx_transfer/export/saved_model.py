"""Serving: a SavedModel that takes image bytes, TFLite, and quick predictions.

:func:`export_saved_model` writes a TensorFlow SavedModel in the TF Serving
layout (``<export_dir>/<version>/``) that needs nothing of ours at serving time:
encoded images in, class names and probabilities out. Its signatures
(``serving_default`` on image bytes, ``predict_pixels`` and
``predict_pixels_uint8`` on pixels), their inputs, outputs and pixel semantics
are described in :mod:`tfx_transfer.export.signatures`.

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

from tfx_transfer._compat import save_tracing, trackable_root
from tfx_transfer.defaults import default_top_k
from tfx_transfer.export.signatures import (
    SERVING_FORMATS,
    SIGNATURE_IMAGES,
    SIGNATURE_PIXELS,
    SIGNATURE_PIXELS_UINT8,
    Serving,
)

LABELS_FILE = "labels.txt"
METADATA_FILE = "metadata.json"  # under <version>/assets.extra/

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
    if config.get("multi_label"):
        info["multi_label"] = True
        info["thresholds"] = _thresholds(model, len(class_names))
    clash = sorted(set(extra or {}) & set(info))
    if clash:
        raise ValueError(f"metadata keys {clash} are written by the export itself; rename them.")
    info.update(extra or {})
    return info


def _thresholds(model: Any, num_classes: int) -> list[float] | None:
    """A multi-label model's per-label thresholds (0.5 each when none were chosen), else ``None``."""
    config = getattr(model, "transfer_config", None) or {}
    if not config.get("multi_label"):
        return None
    return [float(t) for t in config.get("thresholds") or [0.5] * num_classes]


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


def _unknown_outputs(model: Any, threshold: float | None) -> tuple | None:
    """``(feature model, references, threshold, settings)`` of a model with an unknown score."""
    from tfx_transfer.models.unknown_score import (
        check_threshold,
        feature_model,
        unknown_settings,
        unpack_array,
    )

    settings = unknown_settings(model)
    if settings is None:
        if threshold is not None:
            raise ValueError(f"unknown_threshold={threshold!r}, but model {model.name!r} has no "
                             "unknown score; fit one with tt.fit_unknown (train does it).")
        return None
    threshold = check_threshold(settings["threshold"] if threshold is None else threshold)
    return (feature_model(model), tf.constant(unpack_array(settings["references"])), threshold,
            settings)


def write_signatures(path: str | os.PathLike, endpoints: dict[str, tuple[Any, tf.TensorSpec]]) -> None:
    """Save ``{name: (function, input spec)}`` as a SavedModel's signatures, each traced once.

    The SavedModel is the one ``keras.export.ExportArchive`` writes for these endpoints (the
    same object graph: an ``AutoTrackable`` with the variables the signatures use and one
    ``tf.function`` per endpoint, also an attribute of the loaded object), but each function
    is traced once, for the save (:func:`tfx_transfer._compat.save_tracing`), not a second time
    by it.

    Example:
        >>> import tempfile
        >>> scale = tf.Variable(2.0)
        >>> path = Path(tempfile.mkdtemp()) / "double"
        >>> write_signatures(path, {"serving_default": (lambda x: {"y": x * scale},
        ...                                              tf.TensorSpec([None], tf.float32, "x"))})
        >>> tf.saved_model.load(str(path)).signatures["serving_default"](x=tf.ones([2]))["y"].numpy()
        array([2., 2.], dtype=float32)
    """
    options = tf.saved_model.SaveOptions()
    root = trackable_root()  # attributes in ExportArchive's order
    root.variables, root.trainable_variables, root.non_trainable_variables = [], [], []
    functions = {}
    for name, (function, spec) in endpoints.items():
        functions[name] = tf.function(function, input_signature=[spec], autograph=False)
        setattr(root, name, functions[name])
    with save_tracing(options):
        concrete = {name: function.get_concrete_function() for name, function in functions.items()}
    trainable, other, seen = [], [], set()  # no archive.track(model): only the variables used
    for function in concrete.values():
        for variable in function.trainable_variables:
            if id(variable) not in seen:
                trainable.append(variable)
                seen.add(id(variable))
    for function in concrete.values():
        for variable in function.variables:
            if id(variable) not in seen:
                other.append(variable)
                seen.add(id(variable))
    root._all_variables = trainable + other
    root._misc_assets = []
    # the functions (as ExportArchive passes them): the save looks up the traces above
    tf.saved_model.save(root, os.fspath(path), signatures=functions, options=options)


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
    unknown_threshold: float | None = None,
) -> Path:
    """Write ``model`` as a SavedModel that takes encoded images (TF Serving layout).

    See :mod:`tfx_transfer.export.signatures` for the signatures. The version folder is written
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
        unknown_threshold: for a model with an unknown score (:func:`tfx_transfer.fit_unknown`),
            the threshold of the ``unknown`` output instead of the model's own.

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
    if class_names is None:
        class_names = (getattr(model, "transfer_config", None) or {}).get("class_names")
        if not class_names:
            raise ValueError(f"Model {model.name!r} carries no class names: pass class_names=[...] "
                             "(one per output unit, in label order).")
    if not tensorflow_backend():
        return _export_through_tensorflow(model, out, dict(
            class_names=list(class_names), version=version, top_k=top_k, overwrite=overwrite,
            metadata=metadata, crop_to_aspect_ratio=crop_to_aspect_ratio,
            unknown_threshold=unknown_threshold))
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
    unknown = _unknown_outputs(model, unknown_threshold)
    info = _metadata(model, names, image_size, top_k, crop_to_aspect_ratio, metadata)
    if getattr(model, "transfer_config", {}).get("temperature") is not None:
        info["temperature"] = model.transfer_config["temperature"]
    if unknown is not None:
        info["unknown"] = {key: value for key, value in unknown[3].items() if key != "references"}
        info["unknown"]["threshold"] = unknown[2]
    meta_text = json.dumps(info, indent=2, default=_json_default)

    export_dir.mkdir(parents=True, exist_ok=True)
    tmp = export_dir / f".tmp-{version}-{uuid.uuid4().hex[:8]}"
    try:
        # Class names are a constant of the graph (no lookup-table resource, which older Keras
        # export archives do not save); assets/labels.txt lists them for people and tools.
        serving = Serving(model, tf.constant(names), image_size, top_k, crop_to_aspect_ratio,
                          unknown[:3] if unknown else None,
                          thresholds=_thresholds(model, len(names)))
        write_signatures(tmp, {
            SIGNATURE_IMAGES: (serving.images, tf.TensorSpec([None], tf.string, name="images")),
            SIGNATURE_PIXELS: (serving.pixels,
                               tf.TensorSpec([None, None, None, 3], tf.float32, name="pixels")),
            SIGNATURE_PIXELS_UINT8: (serving.pixels,
                                     tf.TensorSpec([None, None, None, 3], tf.uint8, name="pixels")),
        })
        (tmp / "assets").mkdir(exist_ok=True)
        (tmp / "assets" / LABELS_FILE).write_text("".join(f"{n}\n" for n in names), encoding="utf-8")
        (tmp / "assets.extra").mkdir(exist_ok=True)
        (tmp / "assets.extra" / METADATA_FILE).write_text(meta_text, encoding="utf-8")
        _move_into_place(tmp, final, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final
