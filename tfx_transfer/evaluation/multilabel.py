"""Multi-label models: per-label thresholds, metrics, report and bar chart.

A multi-label model (``build_transfer_model(..., multi_label=True)``) gives one
independent probability per class; a class is predicted when its probability
reaches the class's threshold. :func:`fit_thresholds` chooses each threshold on
validation images (the label's best-F1 threshold, steadied by the best shared one
when the label has few validation positives) and keeps them in the
model's settings (``tt.transfer_config(model)["thresholds"]``), which travel
into the ``.keras`` file and the export. :func:`multilabel_metrics` gives
per-label precision/recall/F1/average precision, micro and macro F1 and mAP.

Example:
    >>> import numpy as np
    >>> y = np.array([[1, 0], [1, 1], [0, 1], [0, 0]])
    >>> p = np.array([[0.9, 0.2], [0.6, 0.7], [0.3, 0.8], [0.1, 0.4]])
    >>> thresholds = choose_thresholds(y, p)  # between the classes' scores: 0.3-0.6, 0.4-0.7
    >>> thresholds
    [0.495455, 0.504545]
    >>> m = multilabel_metrics(y, p, ["sky", "sea"], thresholds)
    >>> m["micro_f1"], m["mAP"], m["per_label"]["sea"]["average_precision"]
    (1.0, 1.0, 1.0)
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tfx_transfer.evaluation.plots import save_figure
from tfx_transfer.models.transfer_model import (  # noqa: F401 - also read from here
    DEFAULT_THRESHOLD,
    is_multi_label,
    model_thresholds,
)

PER_LABEL_PNG = "per_label.png"


def multilabel_training(model: Any, loss: Any, metrics: Sequence[Any]) -> tuple[Any, list[Any]]:
    """``fine_tune``'s loss and metrics: for a multi-label model binary cross-entropy and a
    per-label (binary) ``"accuracy"``; for any other model, unchanged.

    Args:
        model: the model to train.
        loss: the caller's loss (``None``: binary cross-entropy for a multi-label model).
        metrics: the caller's metrics (``"accuracy"`` becomes per-label accuracy).

    Example:
        >>> multilabel_training(lambda images: images, None, ["accuracy"])
        (None, ['accuracy'])
    """
    if not is_multi_label(model):
        return loss, list(metrics)
    import keras

    metrics = [keras.metrics.BinaryAccuracy(name=str(m)) if str(m).lower() in ("accuracy", "acc")
               else m for m in metrics]
    return loss or "binary_crossentropy", metrics


def _f1(y: np.ndarray, predicted: np.ndarray) -> tuple[float, float, float]:
    tp = float(np.sum(predicted & y))
    precision = tp / max(float(predicted.sum()), 1.0)
    recall = tp / max(float(y.sum()), 1.0)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


# Validation positives at which a label's own threshold weighs as much as the shared one.
PRIOR_POSITIVES = 20


def best_f1_cut(labels: Any, scores: Any) -> float:
    """The threshold with the highest F1 of ``scores >= threshold`` against ``labels``.

    The candidates lie halfway between consecutive distinct scores (a threshold on a
    score itself sits on an edge: an image scored a hair lower flips); where several
    give the best F1 (a plateau), the middle one. Sorted cumulative counts: O(n log n).

    Args:
        labels: 0/1, any shape (flattened).
        scores: the same shape.

    Example:
        >>> best_f1_cut([1, 1, 0, 0], [0.9, 0.7, 0.3, 0.2])  # any cut in (0.3, 0.7] is perfect
        0.5
    """
    y = np.asarray(labels).ravel() > 0.5
    p = np.asarray(scores, np.float64).ravel()
    order = np.argsort(-p, kind="stable")
    ranked, hits = p[order], y[order]
    ends = np.append(ranked[1:] != ranked[:-1], True)  # the last image of each distinct score
    true_positives = np.cumsum(hits)[ends]
    predicted = np.arange(1, len(p) + 1)[ends]
    f1 = 2 * true_positives / np.maximum(predicted + y.sum(), 1)
    distinct = ranked[ends]
    cuts = (distinct + np.append(distinct[1:], 0.0)) / 2  # cut k keeps distinct[:k + 1]
    best = np.flatnonzero(f1 >= f1.max() - 1e-12)
    return float(cuts[best[len(best) // 2]])


def choose_thresholds(labels: Any, probabilities: Any,
                      prior_positives: float = PRIOR_POSITIVES) -> list[float]:
    """One threshold per label, chosen for F1 on validation images, steadied by a shared one.

    A label's own best-F1 threshold (:func:`best_f1_cut`) rests on its few validation
    positives and swings with them (on 80 validation images, 10-20 positives a
    label, it ranged over 0.03-0.98 and cost 5 points of test micro-F1 in
    ``benchmarks/multi_label.py``). So it is averaged with the one threshold that
    maximises micro-F1 over all labels, weighted by the label's positives ``n``:
    ``(n * own + prior_positives * shared) / (n + prior_positives)``. With many
    positives a label keeps its own threshold; a label with none gets the shared one.

    Args:
        labels: ``(N, C)`` 0/1.
        probabilities: ``(N, C)`` scores.
        prior_positives: the positives at which the two weigh the same (0: each
            label's own best-F1 threshold).

    Example:
        >>> y = [[1, 0], [1, 0], [0, 1], [0, 0]]
        >>> p = [[0.9, 0.1], [0.7, 0.2], [0.3, 0.8], [0.2, 0.1]]
        >>> choose_thresholds(y, p, prior_positives=0)  # each label's own best cut
        [0.5, 0.5]
    """
    y = np.asarray(labels) > 0.5
    p = np.asarray(probabilities, np.float64)
    if y.ndim != 2 or y.shape != p.shape:
        raise ValueError(f"labels {y.shape} and probabilities {p.shape} must both be (N, C).")
    shared = best_f1_cut(y, p) if y.any() else DEFAULT_THRESHOLD
    chosen = []
    for c in range(y.shape[1]):
        positives = float(y[:, c].sum())
        own = best_f1_cut(y[:, c], p[:, c]) if positives else shared
        weight = positives / (positives + prior_positives) if positives + prior_positives else 1.0
        chosen.append(round(weight * own + (1 - weight) * shared, 6))
    return chosen


def average_precision(labels: Any, scores: Any) -> float:
    """Average precision of one label (area under the precision-recall steps, sklearn's definition).

    Example:
        >>> average_precision([1, 0, 1], [0.9, 0.8, 0.1])
        0.8333333333333333
    """
    y = np.asarray(labels) > 0.5
    if not y.any():
        return float("nan")
    order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
    hits = y[order]
    precision_at = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float(np.sum(precision_at[hits]) / hits.sum())


def multilabel_metrics(labels: Any, probabilities: Any, class_names: Sequence[str],
                       thresholds: Sequence[float] | None = None) -> dict[str, Any]:
    """Per-label P/R/F1/AP/support/threshold, micro and macro F1, mAP and the mean binary cross-entropy.

    Args:
        labels: ``(N, C)`` 0/1.
        probabilities: ``(N, C)`` scores.
        class_names: the names of the labels.
        thresholds: per label (default 0.5 each).

    Example:
        >>> m = multilabel_metrics([[1, 0], [0, 1]], [[0.8, 0.6], [0.2, 0.9]], ["a", "b"])
        >>> m["per_label"]["b"]["precision"], m["macro_f1"]
        (0.5, 0.8333333333333333)
    """
    y = np.asarray(labels) > 0.5
    p = np.asarray(probabilities, np.float64)
    t = np.asarray(thresholds if thresholds is not None else [DEFAULT_THRESHOLD] * y.shape[1])
    predicted = p >= t
    per_label = {}
    for c, name in enumerate(class_names):
        precision, recall, f1 = _f1(y[:, c], predicted[:, c])
        per_label[str(name)] = {"precision": precision, "recall": recall, "f1": f1,
                                "average_precision": average_precision(y[:, c], p[:, c]),
                                "support": int(y[:, c].sum()), "threshold": float(t[c])}
    micro = _f1(y.ravel(), predicted.ravel())
    aps = [v["average_precision"] for v in per_label.values() if not np.isnan(v["average_precision"])]
    clipped = np.clip(p, 1e-7, 1 - 1e-7)
    loss = -np.mean(y * np.log(clipped) + (~y) * np.log(1 - clipped))
    return {"multi_label": True, "num_samples": int(len(y)), "loss": float(loss),
            "micro_precision": micro[0], "micro_recall": micro[1], "micro_f1": micro[2],
            "macro_f1": float(np.mean([v["f1"] for v in per_label.values()])),
            "mAP": float(np.mean(aps)) if aps else float("nan"),
            "exact_match": float(np.mean(np.all(predicted == y, axis=1))),
            "per_label": per_label}


def format_multilabel_report(metrics: dict[str, Any]) -> str:
    """The text table of :func:`multilabel_metrics`.

    Example:
        >>> m = multilabel_metrics([[1, 0], [0, 1]], [[0.8, 0.6], [0.2, 0.9]], ["a", "b"])
        >>> print(format_multilabel_report(m).splitlines()[0])
        multi-label: 2 images  mAP 1.0000  micro-F1 0.8000  macro-F1 0.8333  exact match 0.5000  loss 0.3670
    """
    lines = [f"multi-label: {metrics['num_samples']} images  mAP {metrics['mAP']:.4f}  "
             f"micro-F1 {metrics['micro_f1']:.4f}  macro-F1 {metrics['macro_f1']:.4f}  "
             f"exact match {metrics['exact_match']:.4f}  loss {metrics['loss']:.4f}", "",
             f"{'label':<24}{'precision':>10}{'recall':>10}{'f1':>10}{'AP':>10}{'threshold':>11}"
             f"{'support':>9}"]
    for name, row in metrics["per_label"].items():
        lines.append(f"{name[:23]:<24}{row['precision']:>10.4f}{row['recall']:>10.4f}"
                     f"{row['f1']:>10.4f}{row['average_precision']:>10.4f}{row['threshold']:>11.3f}"
                     f"{row['support']:>9d}")
    return "\n".join(lines)


def plot_per_label(metrics: dict[str, Any], path: str | os.PathLike) -> Path:
    """A bar chart of each label's precision, recall, F1 and AP (multi-label's confusion matrix).

    Example:
        >>> import tempfile
        >>> m = multilabel_metrics([[1, 0], [0, 1]], [[0.8, 0.6], [0.2, 0.9]], ["a", "b"])
        >>> plot_per_label(m, os.path.join(tempfile.mkdtemp(), "per_label.png")).name
        'per_label.png'
    """
    from matplotlib.figure import Figure  # no pyplot: no GUI, no global state, thread-safe

    names = list(metrics["per_label"])
    keys = ("precision", "recall", "f1", "average_precision")
    x = np.arange(len(names))
    fig = Figure(figsize=(max(6.0, 0.6 * len(names) * len(keys) / 2), 4), dpi=100)
    ax = fig.add_subplot()
    for i, key in enumerate(keys):
        ax.bar(x + (i - 1.5) * 0.2, [metrics["per_label"][n][key] for n in names], 0.2, label=key)
    ax.set_xticks(x, names, rotation=45 if len(names) > 6 else 0, ha="right" if len(names) > 6 else "center")
    ax.set_ylim(0, 1.05)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(f"per label: mAP {metrics['mAP']:.3f}, micro-F1 {metrics['micro_f1']:.3f}")
    fig.tight_layout()
    save_figure(fig, path)
    return Path(path)


def scores_and_labels(predict: Any, batches: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(labels (N, C), probabilities (N, C))`` of labelled batches (multi-hot labels).

    Example:
        >>> y, p = scores_and_labels(lambda x: np.full((len(x), 2), 0.5), [(np.zeros((3, 4)), np.eye(2)[[0, 1, 1]])])
        >>> y.shape, p.shape
        ((3, 2), (3, 2))
    """
    labels, probs = [], []
    for images, y in batches:
        probs.append(np.asarray(predict(images), np.float64))
        labels.append(np.asarray(y))
    if not labels:
        raise ValueError("The data yielded no batches; nothing to score.")
    return np.concatenate(labels), np.concatenate(probs)


def fit_thresholds(model: Any, data: Any) -> list[float]:
    """Choose per-label thresholds on labelled validation data and store them in the model's settings.

    Args:
        model: a multi-label transfer model.
        data: a ``tf.data`` dataset of ``(images, multi-hot labels)``, an ``(x, y)``
            tuple or a multi-label :class:`~tfx_transfer.ImageFolder` (its validation split).

    Example:
        >>> import numpy as np, tfx_transfer as tt
        >>> model = tt.build_transfer_model("vgg16", 3, input_shape=32, weights=None,
        ...                                 multi_label=True)
        >>> x = np.random.default_rng(0).integers(0, 255, (6, 32, 32, 3)).astype("uint8")
        >>> y = np.eye(3)[[0, 1, 2, 0, 1, 2]] + np.eye(3)[[1, 2, 0, 1, 2, 0]]
        >>> len(fit_thresholds(model, (x, y))), len(tt.transfer_config(model)["thresholds"])
        (3, 3)
    """
    from tfx_transfer.data.labelled import labelled_batches
    from tfx_transfer.evaluation.predictor import predictor

    if not is_multi_label(model):
        raise ValueError("fit_thresholds needs a multi-label model (build_transfer_model(..., "
                         "multi_label=True)).")
    size = (int(model.input_shape[1]), int(model.input_shape[2]))
    labelled = labelled_batches(data, size, caller="fit_thresholds")
    labels, probs = scores_and_labels(predictor(model), labelled.batches)
    thresholds = choose_thresholds(labels, probs)
    model.transfer_config = {**model.transfer_config, "thresholds": thresholds}
    return thresholds


def evaluate_multilabel(model: Any, batches: Any, class_names: Sequence[str],
                        out: str | os.PathLike | None = None) -> dict[str, Any]:
    """:func:`multilabel_metrics` of a model on labelled batches; with ``out``, its report files.

    Writes ``metrics.json``, ``report.txt`` and ``per_label.png`` into ``out``.

    Args:
        model: a multi-label Keras model or export (its thresholds are used).
        batches: ``(images, multi-hot labels)`` batches.
        class_names: the label names.
        out: the report folder (``None``: nothing written).

    Example:
        >>> import tempfile, numpy as np, tfx_transfer as tt
        >>> model = tt.build_transfer_model("vgg16", 2, input_shape=32, weights=None,
        ...                                 multi_label=True)
        >>> batches = [(np.zeros((2, 32, 32, 3), "uint8"), np.array([[1, 0], [1, 1]]))]
        >>> m = evaluate_multilabel(model, batches, ["a", "b"], tempfile.mkdtemp())
        >>> m["num_samples"], sorted(m["files"])
        (2, ['metrics', 'per_label', 'report'])
    """
    from tfx_transfer.evaluation.predictor import predictor
    from tfx_transfer.layout import METRICS_FILE, REPORT_FILE

    labels, probs = scores_and_labels(predictor(model), batches)
    names = list(class_names) or [str(i) for i in range(probs.shape[1])]
    metrics = multilabel_metrics(labels, probs, names, model_thresholds(model, probs.shape[1]))
    if out is None:
        return metrics
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = {"metrics": out / METRICS_FILE, "report": out / REPORT_FILE,
             "per_label": out / PER_LABEL_PNG}
    files["metrics"].write_text(json.dumps(metrics, indent=2))
    files["report"].write_text(format_multilabel_report(metrics) + "\n")
    plot_per_label(metrics, files["per_label"])
    return {**metrics, "files": files}


def ranked_label_errors(model: Any, batches: Any, class_names: Sequence[str],
                        paths: Sequence[str] | None = None,
                        keep_images: int | None = None) -> list[dict[str, Any]]:
    """``top_losses`` of a multi-label model: every (image, label) pair, highest binary cross-entropy first.

    Rows have :func:`tfx_transfer.top_losses`' keys: ``true_class`` is ``"sky"`` or
    ``"not sky"``, ``predicted_class`` the same at the label's threshold,
    ``probability`` the label's score, ``p_true`` that of the truth, ``label`` the
    label's index (Grad-CAM explains that label); ``true``/``predicted`` differ
    exactly when the pair is wrong.

    Args:
        model: a multi-label Keras model, export or function ``images -> probabilities``.
        batches: ``(images, multi-hot labels)`` batches.
        class_names: the label names (empty: ``"0"``, ``"1"``, ...).
        paths: the file of each image, in order.
        keep_images: keep the image of the first ``keep_images`` rows only (``None``: all).

    Example:
        >>> batches = [(np.zeros((2, 8, 8, 3), "uint8"), np.array([[1, 0], [0, 1]]))]
        >>> rows = ranked_label_errors(lambda x: np.array([[0.2, 0.1], [0.3, 0.9]]), batches, ["a", "b"])
        >>> rows[0]["true_class"], rows[0]["predicted_class"], rows[0]["index"]
        ('a', 'not a', 0)
    """
    from tfx_transfer.evaluation.predictor import predictor

    predict, images_all, labels, probs = predictor(model), [], [], []
    for images, y in batches:
        probs.append(np.asarray(predict(images), np.float64))
        labels.append(np.asarray(y) > 0.5)
        images_all.extend(np.asarray(images))
    if not labels:
        raise ValueError("The data yielded no images; nothing to rank.")
    y, p = np.concatenate(labels), np.concatenate(probs)
    if paths is not None and len(paths) != len(y):
        raise ValueError(f"{len(paths)} paths for {len(y)} images: pass one path per image, in data order.")
    thresholds = model_thresholds(model, p.shape[1])
    p_true = np.where(y, p, 1 - p)
    loss = -np.log(np.clip(p_true, 1e-7, 1.0))
    order = np.argsort(-loss.ravel(), kind="stable")
    rows = []
    for rank, flat in enumerate(order.tolist()):
        i, c = divmod(flat, p.shape[1])
        above = bool(p[i, c] >= thresholds[c])
        name = str(class_names[c]) if class_names else str(c)
        rows.append({
            "rank": rank + 1, "index": i, "path": None if paths is None else str(paths[i]),
            "true": c if y[i, c] else -1, "predicted": c if above else -1, "label": c,
            "true_class": name if y[i, c] else f"not {name}",
            "predicted_class": name if above else f"not {name}",
            "probability": float(p[i, c]), "p_true": float(p_true[i, c]), "loss": float(loss[i, c]),
            "probabilities": p[i],
            "image": images_all[i] if keep_images is None or rank < keep_images else None})
    return rows
