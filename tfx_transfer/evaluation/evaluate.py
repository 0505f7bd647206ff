"""``evaluate_model``: score a Keras model or an exported SavedModel; write its report.

Metrics come from :mod:`tfx_transfer.evaluation.metrics`, figures from :mod:`tfx_transfer.evaluation.plots`.

Example:
    >>> import numpy as np, tfx_transfer as tt
    >>> model = tt.build_transfer_model("vgg16", 2, input_shape=32, weights=None,
    ...                                 class_names=["cat", "dog"])
    >>> x, y = np.zeros((4, 32, 32, 3), "uint8"), np.array([0, 1, 0, 1])
    >>> tt.evaluate_model(model, (x, y), verbose=False)["num_samples"]
    4
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tfx_transfer.evaluation.metrics import as_int_labels, classification_metrics, format_report
from tfx_transfer.evaluation.plots import plot_confusion_matrix, plot_predictions
from tfx_transfer.models.saving import load_model
from tfx_transfer.runs.layout import (
    CONFIG_FILE,
    CONFUSION_PNG,
    METRICS_FILE,
    MODEL_FILE,
    PREDICTIONS_PNG,
    REPORT_FILE,
)


def _is_exported(obj: Any) -> bool:
    return hasattr(obj, "saved_model") and hasattr(obj, "class_names") and hasattr(obj, "metadata")


def load_for_evaluation(source: Any) -> tuple[Any, list[str] | None]:
    """A model (Keras or exported) and its class names from an object or a path.

    ``source``: a Keras model, an :class:`~tfx_transfer.ExportedModel`, or a
    path: a run folder of ``tfx-transfer train`` (``model.keras`` +
    ``config.json``), an export folder or version folder (loaded with
    :func:`tfx_transfer.load_exported`, no Keras model needed), or a ``.keras``
    file.

    Example:
        >>> import os, tempfile, tfx_transfer as tt
        >>> path = os.path.join(tempfile.mkdtemp(), "model.keras")
        >>> tt.build_transfer_model("vgg16", 2, input_shape=32, weights=None,
        ...                         class_names=["cat", "dog"]).save(path)
        >>> model, names = load_for_evaluation(path)
        >>> names
        ['cat', 'dog']
    """
    if not isinstance(source, (str, os.PathLike)):
        names = source.class_names if _is_exported(source) else \
            (getattr(source, "transfer_config", None) or {}).get("class_names")
        return source, names
    path = Path(source)
    if path.is_dir() and (path / CONFIG_FILE).is_file() and (path / MODEL_FILE).is_file():
        config = json.loads((path / CONFIG_FILE).read_text())
        return load_model(path / MODEL_FILE, compile=False), config.get("class_names")
    if path.is_file() and path.suffix == ".keras":
        model = load_model(path, compile=False)
        return model, (getattr(model, "transfer_config", None) or {}).get("class_names")
    if path.is_dir():
        from tfx_transfer.export.exported import load_exported

        exported = load_exported(path)
        return exported, exported.class_names
    raise FileNotFoundError(
        f"{str(path)!r} is not a run folder (config.json + model.keras), an export folder or a "
        ".keras file."
    )


def _predictor(model: Any) -> tuple[Callable[[np.ndarray], np.ndarray], tuple[int, int]]:
    """A batch function ``uint8/float pixels (B, H, W, 3) -> probabilities`` and the input size."""
    if _is_exported(model):
        signatures = model.saved_model.signatures

        def predict(images: np.ndarray) -> np.ndarray:
            import tensorflow as tf

            if images.dtype == np.uint8:
                out = signatures["predict_pixels_uint8"](pixels=tf.constant(images))
            else:
                out = signatures["predict_pixels"](pixels=tf.constant(images, tf.float32))
            return out["probabilities"].numpy()

        return predict, tuple(int(s) for s in model.image_size)
    if not hasattr(model, "predict_on_batch"):
        raise ValueError(f"model={type(model).__name__}: pass a Keras model, an exported model "
                         "(load_exported) or a path (run folder, export folder, .keras file).")
    import keras

    shape = tuple(model.input_shape)
    return (lambda images: np.asarray(keras.ops.convert_to_numpy(model.predict_on_batch(images)))), \
        (shape[1], shape[2])


def _batches(data: Any, batch_size: int) -> Iterable[tuple[np.ndarray, np.ndarray]]:
    if isinstance(data, tuple) and len(data) >= 2 and not hasattr(data, "element_spec"):
        x, y = np.asarray(data[0]), np.asarray(data[1])
        for start in range(0, len(x), batch_size):
            yield x[start:start + batch_size], y[start:start + batch_size]
        return
    for batch in data:
        if not isinstance(batch, (tuple, list)) or len(batch) < 2:
            raise ValueError("evaluate_model needs labelled data: batches of (images, labels).")
        yield np.asarray(batch[0]), np.asarray(batch[1])


def _choose_split(folder: Path, split: str | None, trained_on: str | None) -> str:
    """Which images of ``folder`` to score; never training images unless ``split`` says so."""
    from tfx_transfer.data.folder import split_folders

    found = split_folders(folder)
    plain = found.get("train") == folder  # class folders, no train/val/test layout
    if split is not None:
        wanted = {"val": "validation", "all": "train" if plain else "all"}.get(split, split)
        if wanted not in (*found, "all"):
            have = "no split folders (use split='all')" if plain else \
                f"the splits {sorted(found)} (use one of them or 'all')"
            raise ValueError(f"split={split!r}: {folder} has {have}.")
        return wanted
    for name in ("test", "validation"):
        if name in found:
            return name
    if not plain:
        raise ValueError(f"{folder} has only a train/ split: those are training images. Pass "
                         "split='train' (--split train) to score them anyway.")
    if trained_on is not None and Path(trained_on).resolve() == folder.resolve():
        raise ValueError(f"{folder} is the folder the run trained on: its images include the "
                         "training images. Evaluate on held-out images, or pass split='all' "
                         "(--split all) to score every image anyway.")
    return "train"


def _folder_batches(folder: str | os.PathLike, image_size: tuple[int, int], class_names: Sequence[str],
                    batch_size: int, verbose: bool, split: str | None = None,
                    trained_on: str | None = None) -> Iterable[tuple[np.ndarray, np.ndarray]]:
    """Batches of a folder's chosen split, labels in the model's class order."""
    from tfx_transfer.data.folder import load_image_folder

    chosen = _choose_split(Path(folder), split, trained_on)
    loaded = load_image_folder(folder, image_size=image_size, batch_size=batch_size,
                               shuffle=False, validation_split=None)
    if chosen == "all":
        parts = [s for s in ("train", "validation", "test") if getattr(loaded, s) is not None]
        dataset = getattr(loaded, parts[0])
        for part in parts[1:]:
            dataset = dataset.concatenate(getattr(loaded, part))
        count = sum(sum(loaded.counts[p].values()) for p in parts)
    else:
        dataset = getattr(loaded, chosen)
        count = sum(loaded.counts[chosen].values())
    if verbose:
        what = {"train": "every image (class folders, no split)" if loaded.validation is None
                and loaded.test is None else "the train/ split (training images)",
                "validation": "the val/ split", "test": "the test/ split",
                "all": "every split, training images included"}[chosen]
        print(f"evaluating {count} images of {folder}: {what}")
    unknown = [n for n in loaded.class_names if n not in class_names]
    if unknown:
        raise ValueError(f"{folder} has class folder(s) {unknown} that the model does not know; "
                         f"its classes are {list(class_names)}.")
    mapping = np.array([list(class_names).index(n) for n in loaded.class_names])
    for images, labels in dataset.as_numpy_iterator():
        yield images, mapping[as_int_labels(labels, len(loaded.class_names))]


def evaluate_model(
    model_or_export: Any,
    data: Any,
    class_names: Sequence[str] | None = None,
    *,
    top_k: int | None = None,
    out: str | os.PathLike | None = None,
    max_images: int = 16,
    batch_size: int = 32,
    verbose: bool = True,
    split: str | None = None,
    tta: bool = False,
) -> dict[str, Any]:
    """Evaluate a Keras model or an exported SavedModel; optionally write the report files.

    Args:
        model_or_export: a Keras model, an :class:`~tfx_transfer.ExportedModel`
            (evaluated through its SavedModel signatures: no Keras model needed), or
            a path (see :func:`load_for_evaluation`).
        data: a ``tf.data`` dataset (or any iterable) of ``(images, labels)``
            batches, an ``(x, y)`` tuple of arrays, or an image folder path (class
            folders, or a folder with ``test/`` or ``val/``: that split is used;
            labels are matched to the model's classes by name). Images are RGB
            pixels in 0..255 at the model's input size.
        split: for a folder: ``None`` (its ``test/``, else ``val/``, else all its
            class folders -- refused when it has only ``train/`` or is the folder
            the run trained on), or ``"test"``, ``"val"``, ``"train"``, ``"all"``.
        class_names: class names in label order (default: the model's, when known).
        top_k: k of the top-k accuracy (default :func:`default_top_k`).
        out: a folder; when given, write ``metrics.json``, ``report.txt``,
            ``confusion_matrix.png`` and ``predictions.png`` there.
        max_images: images in the predictions grid (misclassified first).
        tta: also score test-time augmentation (:func:`tfx_transfer.evaluation.tta.predict_tta`:
            flips and shifts, probabilities averaged); its metrics go under
            ``"tta"`` and the report shows plain and TTA side by side.

    Returns:
        :func:`classification_metrics`' dict (plus ``"tta"``: the same for TTA),
        plus ``"files"`` (paths written) when ``out`` is given.

    Example:
        >>> import tempfile, numpy as np, tfx_transfer as tt
        >>> model = tt.build_transfer_model("vgg16", 2, input_shape=32, weights=None, head="avg")
        >>> x, y = np.zeros((4, 32, 32, 3), "uint8"), np.array([0, 1, 0, 1])
        >>> metrics = evaluate_model(model, (x, y), ["cat", "dog"], out=tempfile.mkdtemp(),
        ...                          verbose=False)
        >>> metrics["num_samples"], sorted(metrics["per_class"]), sorted(metrics["files"])
        (4, ['cat', 'dog'], ['confusion_matrix', 'metrics', 'predictions', 'report'])
    """
    model, known_names = load_for_evaluation(model_or_export)
    names = list(class_names or known_names or [])
    predict, image_size = _predictor(model)
    if isinstance(data, (str, os.PathLike)):
        if not names:
            raise ValueError("Pass class_names= to evaluate a folder with a model that does not "
                             "record its classes.")
        trained_on = None
        if isinstance(model_or_export, (str, os.PathLike)) and (Path(model_or_export) / CONFIG_FILE).is_file():
            trained_on = json.loads((Path(model_or_export) / CONFIG_FILE).read_text()).get("data_dir")
        batches = _folder_batches(data, image_size, names, batch_size, verbose, split, trained_on)
    else:
        batches = _batches(data, batch_size)
    labels, probs, shown_images, shown_labels, shown_probs, tta_probs = [], [], [], [], [], []
    wrong_shown = right_shown = 0
    for images, y in batches:
        p = predict(images)
        if tta:
            from tfx_transfer.evaluation.tta import predict_tta

            tta_probs.append(predict_tta(predict, images))
        y = as_int_labels(y, p.shape[1])
        labels.append(y)
        probs.append(p)
        for i in range(len(y)):  # keep just enough images for the grid (misclassified first)
            is_wrong = p[i].argmax() != y[i]
            if (is_wrong and wrong_shown < max_images) or (not is_wrong and right_shown < max_images):
                wrong_shown += int(is_wrong)
                right_shown += int(not is_wrong)
                shown_images.append(np.asarray(images[i]))
                shown_labels.append(y[i])
                shown_probs.append(p[i])
    if not labels:
        raise ValueError("The evaluation data yielded no batches; nothing to evaluate.")
    probabilities = np.concatenate(probs)
    names = names or [str(i) for i in range(probabilities.shape[1])]
    metrics = classification_metrics(np.concatenate(labels), probabilities, names, top_k)
    report = format_report(metrics)
    if tta:
        from tfx_transfer.evaluation.tta import format_tta, tta_views

        views = len(tta_views(np.zeros((1, *image_size, 3))))
        metrics["tta"] = {**classification_metrics(np.concatenate(labels), np.concatenate(tta_probs),
                                                    names, top_k), "views": views}
        report += "\n\ntest-time augmentation\n" + format_tta(metrics, metrics["tta"])
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        files = {"metrics": out / METRICS_FILE, "report": out / REPORT_FILE,
                 "confusion_matrix": out / CONFUSION_PNG, "predictions": out / PREDICTIONS_PNG}
        files["metrics"].write_text(json.dumps(metrics, indent=2))
        files["report"].write_text(report + "\n")
        plot_confusion_matrix(metrics["confusion_matrix"], names, files["confusion_matrix"])
        wrong = metrics["num_samples"] - int(np.trace(np.asarray(metrics["confusion_matrix"])))
        plot_predictions(np.stack(shown_images), shown_labels, np.stack(shown_probs), names,
                         files["predictions"], max_images=max_images,
                         title=f"predicted (score) / true -- {wrong} of {metrics['num_samples']} "
                               "misclassified, shown first")
        metrics = {**metrics, "files": {k: str(v) for k, v in files.items()}}
    return metrics
