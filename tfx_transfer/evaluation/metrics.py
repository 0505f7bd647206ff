"""Classification metrics (numpy only) and their text report.

Example:
    >>> import numpy as np
    >>> m = classification_metrics([0, 1, 1], np.array([[.9, .1], [.2, .8], [.6, .4]]),
    ...                            ["cat", "dog"])
    >>> round(m["accuracy"], 3), m["confusion_matrix"], "top_k_accuracy" in m  # top-2 of 2: omitted
    (0.667, [[1, 0], [1, 1]], False)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from tfx_transfer.defaults import default_top_k

_EPS = 1e-7


def as_int_labels(labels: Any, num_classes: int) -> np.ndarray:
    """Integer class ids ``(N,)`` from ids or one-hot rows, checked against ``num_classes``.

    Example:
        >>> as_int_labels(np.eye(3)[[2, 0]], 3).tolist()
        [2, 0]
    """
    labels = np.asarray(labels)
    if labels.ndim == 2 and labels.shape[1] == num_classes:  # one-hot (or mixed) labels
        labels = labels.argmax(axis=1)
    labels = labels.reshape(-1)
    if labels.size and not np.all(np.equal(np.mod(labels, 1), 0)):
        raise ValueError(f"Labels must be integer class ids or one-hot rows; got {labels[:5]}...")
    labels = labels.astype(np.int64)
    bad = labels[(labels < 0) | (labels >= num_classes)]
    if bad.size:
        raise ValueError(
            f"Label {int(bad[0])} is outside 0..{num_classes - 1}; labels must index the "
            f"{num_classes} classes (the order of class_names)."
        )
    return labels


def confusion_matrix(y_true: Any, y_pred: Any, num_classes: int) -> np.ndarray:
    """``int64 (C, C)`` counts: row = true class, column = predicted class.

    Args:
        y_true: true labels, integer ids ``(N,)`` or one-hot rows ``(N, C)``.
        y_pred: predicted labels, the same forms (e.g. ``probabilities.argmax(1)``).
        num_classes: ``C``; every label must be in ``0..C-1``.

    Example:
        >>> confusion_matrix([0, 1, 1], [0, 0, 1], 2).tolist()
        [[1, 0], [1, 1]]
    """
    y_true = as_int_labels(y_true, num_classes)
    y_pred = as_int_labels(y_pred, num_classes)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"{y_true.size} true labels but {y_pred.size} predictions.")
    return np.bincount(y_true * num_classes + y_pred,
                       minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def top_k_accuracy(y_true: Any, probabilities: Any, k: int) -> float:
    """Fraction of samples whose true class is among the ``k`` highest probabilities.

    Ties are broken by class order (stable sort), as ``numpy.argsort(kind="stable")``.

    Args:
        y_true: true labels, integer ids ``(N,)`` or one-hot rows ``(N, C)``.
        probabilities: predicted class scores ``(N, C)``.
        k: how many of the highest scores count, ``1 <= k <= C`` (no samples: 0.0).

    Example:
        >>> probabilities = np.array([[.5, .3, .2], [.1, .2, .7]])
        >>> top_k_accuracy([1, 2], probabilities, k=2), top_k_accuracy([2, 0], probabilities, k=2)
        (1.0, 0.0)
    """
    probabilities = np.asarray(probabilities, np.float64)
    y_true = as_int_labels(y_true, probabilities.shape[1])
    if not 1 <= k <= probabilities.shape[1]:
        raise ValueError(f"top_k={k} must be between 1 and the number of classes, "
                         f"{probabilities.shape[1]}.")
    top = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
    return float(np.mean(np.any(top == y_true[:, None], axis=1))) if len(y_true) else 0.0


def precision_recall_f1(cm: np.ndarray) -> dict[str, np.ndarray]:
    """Per-class precision, recall, F1 and support from a confusion matrix.

    A class never predicted has precision 0; one with no samples has recall 0
    (scikit-learn's ``zero_division=0``).

    Example:
        >>> prf = precision_recall_f1(np.array([[1, 0], [1, 1]]))
        >>> prf["precision"].tolist(), prf["recall"].tolist()
        ([0.5, 1.0], [1.0, 0.5])
    """
    cm = np.asarray(cm, np.float64)
    tp = np.diag(cm)
    predicted, support = cm.sum(axis=0), cm.sum(axis=1)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return {"precision": precision, "recall": recall, "f1": f1, "support": support.astype(np.int64)}


def classification_metrics(
    y_true: Any,
    probabilities: Any,
    class_names: Sequence[str] | None = None,
    top_k: int | None = None,
) -> dict[str, Any]:
    """Every metric of a classifier, as a JSON-ready dict.

    Args:
        y_true: integer labels ``(N,)`` or one-hot ``(N, C)``.
        probabilities: predicted class probabilities ``(N, C)``.
        class_names: names of the ``C`` classes (default ``"0"``, ``"1"``, ...).
        top_k: k of the top-k accuracy; default
            :func:`tfx_transfer.defaults.default_top_k` (``min(5, C)``).

    Returns:
        ``{"num_samples", "accuracy", "top_k", "top_k_accuracy", "loss"`` (mean
        cross-entropy of the probabilities), ``"per_class": {name: {"precision",
        "recall", "f1", "support"}}, "macro_avg", "weighted_avg", "class_names",
        "confusion_matrix"`` (list of rows; row = true class)``}``. ``"top_k"`` and
        ``"top_k_accuracy"`` are left out when ``k >= C``: the true class is then
        always among the top k, an accuracy of 1 that says nothing.

    Example:
        >>> m = classification_metrics([0, 1], np.array([[.8, .2], [.3, .7]]), ["a", "b"])
        >>> m["accuracy"], m["per_class"]["b"]["recall"]
        (1.0, 1.0)
    """
    probabilities = np.asarray(probabilities, np.float64)
    if probabilities.ndim != 2:
        raise ValueError(f"probabilities must be (num_samples, num_classes); got shape "
                         f"{probabilities.shape}.")
    num_classes = probabilities.shape[1]
    names = [str(i) for i in range(num_classes)] if class_names is None else [str(n) for n in class_names]
    if len(names) != num_classes:
        raise ValueError(f"{len(names)} class names for {num_classes} probability columns; "
                         "pass one name per class, in label order.")
    y_true = as_int_labels(y_true, num_classes)
    if len(y_true) != len(probabilities):
        raise ValueError(f"{len(y_true)} labels but {len(probabilities)} rows of probabilities.")
    if len(y_true) == 0:
        raise ValueError("Nothing to evaluate: no samples.")
    k = default_top_k(num_classes) if top_k is None else int(top_k)
    if not 1 <= k <= num_classes:
        raise ValueError(f"top_k={k} must be between 1 and the number of classes, {num_classes}.")
    y_pred = probabilities.argmax(axis=1)
    cm = confusion_matrix(y_true, y_pred, num_classes)
    prf = precision_recall_f1(cm)
    support = prf["support"]
    loss = -np.log(np.clip(probabilities[np.arange(len(y_true)), y_true], _EPS, 1.0))

    def average(weights: np.ndarray) -> dict[str, float]:
        weights = weights / weights.sum() if weights.sum() else weights
        return {key: float(np.sum(prf[key] * weights)) for key in ("precision", "recall", "f1")}

    top = {"top_k": k, "top_k_accuracy": top_k_accuracy(y_true, probabilities, k)} if k < num_classes else {}
    return {
        "num_samples": int(len(y_true)),
        "accuracy": float(np.mean(y_pred == y_true)),
        **top,
        "loss": float(loss.mean()),
        "per_class": {
            name: {"precision": float(prf["precision"][i]), "recall": float(prf["recall"][i]),
                   "f1": float(prf["f1"][i]), "support": int(support[i])}
            for i, name in enumerate(names)
        },
        "macro_avg": average(np.ones(num_classes)),
        "weighted_avg": average(support.astype(np.float64)),
        "class_names": names,
        "confusion_matrix": cm.tolist(),
    }


def format_report(metrics: Mapping[str, Any]) -> str:
    """A plain-text report: headline figures, the per-class table, the confusion matrix.

    The top-k accuracy is shown when :func:`classification_metrics` reported one (k < C).

    Example:
        >>> m = classification_metrics([0, 1], np.array([[.8, .2], [.3, .7]]), ["a", "b"])
        >>> print(format_report(m).splitlines()[0])
        accuracy 1.0000   loss 0.2899   (2 images)
    """
    names = list(metrics["class_names"])
    width = max(12, *(len(n) for n in names)) + 2
    top = f"top-{metrics['top_k']} accuracy {metrics['top_k_accuracy']:.4f}   " if "top_k_accuracy" in metrics else ""
    lines = [
        f"accuracy {metrics['accuracy']:.4f}   {top}loss {metrics['loss']:.4f}   "
        f"({metrics['num_samples']} images)",
        "",
        f"{'class':<{width}}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>10}",
    ]
    for name in names:
        row = metrics["per_class"][name]
        lines.append(f"{name:<{width}}{row['precision']:>10.4f}{row['recall']:>10.4f}"
                     f"{row['f1']:>10.4f}{row['support']:>10d}")
    total = metrics["num_samples"]
    for label, key in (("macro avg", "macro_avg"), ("weighted avg", "weighted_avg")):
        row = metrics[key]
        lines.append(f"{label:<{width}}{row['precision']:>10.4f}{row['recall']:>10.4f}"
                     f"{row['f1']:>10.4f}{total:>10d}")
    cm = np.asarray(metrics["confusion_matrix"])
    col = max(7, *(len(n) + 1 for n in names), len(str(cm.max())) + 1)
    lines += ["", "confusion matrix (rows: true class, columns: predicted class)",
              " " * width + "".join(f"{n[:col - 1]:>{col}}" for n in names)]
    for name, row in zip(names, cm):
        lines.append(f"{name:<{width}}" + "".join(f"{int(v):>{col}d}" for v in row))
    return "\n".join(lines)
