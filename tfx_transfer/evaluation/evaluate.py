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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tfx_transfer.data.labelled import labelled_batches
from tfx_transfer.evaluation.metrics import as_int_labels, classification_metrics, format_report
from tfx_transfer.evaluation.multilabel import evaluate_multilabel, is_multi_label
from tfx_transfer.evaluation.plots import plot_confusion_matrix, plot_predictions
from tfx_transfer.evaluation.predictor import is_exported, model_image_size, predictor
from tfx_transfer.layout import (
    CONFIG_FILE,
    CONFUSION_PNG,
    METRICS_FILE,
    MODEL_FILE,
    PREDICTIONS_PNG,
    REPORT_FILE,
)
from tfx_transfer.models.saving import load_model


def load_for_evaluation(model: Any) -> tuple[Any, list[str] | None]:
    """A model (Keras or exported) and its class names from an object or a path.

    ``model``: a Keras model, an :class:`~tfx_transfer.ExportedModel`, a function
    ``images -> probabilities``, or a path: a run folder of ``tfx-transfer train`` (``model.keras`` +
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
    if not isinstance(model, (str, os.PathLike)):
        names = model.class_names if is_exported(model) else \
            (getattr(model, "transfer_config", None) or {}).get("class_names")
        return model, names
    path = Path(model)
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


def _trained_on(model: Any) -> str | None:
    """The data folder a run folder's model was trained on (its ``config.json``), else ``None``."""
    if isinstance(model, (str, os.PathLike)) and (Path(model) / CONFIG_FILE).is_file():
        return json.loads((Path(model) / CONFIG_FILE).read_text()).get("data_dir")
    return None


def _score(batches: Any, predict: Any, tta: bool, max_images: int) -> dict[str, Any]:
    """Labels and probabilities of every image (and TTA's), plus the images kept for the grid."""
    labels, probs, tta_probs, images_kept, labels_kept, probs_kept = [], [], [], [], [], []
    wrong_kept = right_kept = 0
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
            if (is_wrong and wrong_kept < max_images) or (not is_wrong and right_kept < max_images):
                wrong_kept += int(is_wrong)
                right_kept += int(not is_wrong)
                images_kept.append(np.asarray(images[i]))
                labels_kept.append(y[i])
                probs_kept.append(p[i])
    if not labels:
        raise ValueError("The evaluation data yielded no batches; nothing to evaluate.")
    return {"labels": np.concatenate(labels), "probabilities": np.concatenate(probs),
            "tta": np.concatenate(tta_probs) if tta else None, "images": images_kept,
            "shown_labels": labels_kept, "shown_probabilities": probs_kept}


def evaluate_model(
    model: Any,
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
        model: a Keras model, an :class:`~tfx_transfer.ExportedModel`
            (evaluated through its SavedModel signatures: no Keras model needed), a
            function ``images -> probabilities``, or a path (see :func:`load_for_evaluation`).
        data: a ``tf.data`` dataset (or any iterable) of ``(images, labels)``
            batches, an ``(x, y)`` tuple of arrays, an :class:`~tfx_transfer.ImageFolder`
            or an image folder path (labels are matched to the model's classes by
            name). Images are RGB pixels in 0..255 at the model's input size.
        class_names: class names in label order (default: the model's, when known).
        top_k: k of the top-k accuracy (default
            :func:`tfx_transfer.defaults.default_top_k`; left out when ``k >= C``).
        out: a folder; when given, write ``metrics.json``, ``report.txt``,
            ``confusion_matrix.png`` and ``predictions.png`` there (a multi-label
            model: ``metrics.json``, ``report.txt`` and ``per_label.png`` of
            :func:`tfx_transfer.evaluation.multilabel.multilabel_metrics`).
        max_images: images in the predictions grid (misclassified first).
        batch_size: images per batch for folders and arrays.
        verbose: print which images are scored.
        split: for a folder or ``ImageFolder``: ``None`` (its test split, else its
            validation split, else -- for a plain folder of classes -- every image;
            training images are refused: a folder with only ``train/`` or the folder
            the run trained on), or ``"test"``, ``"val"``, ``"train"``, ``"all"``
            (:func:`tfx_transfer.data.labelled.labelled_batches`).
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
    loaded, known_names = load_for_evaluation(model)
    names = list(class_names or known_names or [])
    if isinstance(data, (str, os.PathLike)) and not names:
        raise ValueError("Pass class_names= to evaluate a folder with a model that does not "
                         "record its classes.")
    labelled = labelled_batches(data, model_image_size(loaded), names or None, batch_size=batch_size,
                                split=split, trained_on=_trained_on(model), caller="evaluate_model")
    names = names or labelled.class_names or []
    if verbose and labelled.paths is not None:
        print(f"evaluating {labelled.description}")
    if is_multi_label(loaded):  # per-label P/R/F1/AP, micro/macro F1, mAP; per_label.png
        if tta:
            raise ValueError("tta=True scores single-label models; drop it for a multi-label model.")
        return evaluate_multilabel(loaded, labelled.batches, names, out)
    scored = _score(labelled.batches, predictor(loaded), tta, max_images)
    names = names or [str(i) for i in range(scored["probabilities"].shape[1])]
    metrics = classification_metrics(scored["labels"], scored["probabilities"], names, top_k)
    report = format_report(metrics)
    if tta:
        from tfx_transfer.evaluation.tta import format_tta, tta_views

        views = len(tta_views(np.zeros((1, 8, 8, 3))))
        metrics["tta"] = {**classification_metrics(scored["labels"], scored["tta"], names, top_k),
                          "views": views}
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
        plot_predictions(np.stack(scored["images"]), scored["shown_labels"],
                         np.stack(scored["shown_probabilities"]), names,
                         files["predictions"], max_images=max_images,
                         title=f"predicted (score) / true -- {wrong} of {metrics['num_samples']} "
                               "misclassified, shown first")
        metrics = {**metrics, "files": dict(files)}
    return metrics
