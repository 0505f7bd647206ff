"""How far a converted model (TFLite, ONNX) is from the Keras model, on real images, and the bound.

:func:`compare` scores the converted model's probabilities against Keras's on the
same images: largest absolute difference, agreement (the share of images both
models answer alike: the same top class or, for a multi-label model, the same set of
labels above their thresholds) and, with labels, the accuracy of each (multi-label:
exact match); :func:`check_agreement` refuses a model whose agreement falls below the
caller's bound, with the figures in the message.

Example:
    >>> import numpy as np
    >>> keras_p = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    >>> report = compare(keras_p, keras_p[:, ::-1], labels=np.array([0, 1, 1]))
    >>> report["top1_agreement"], report["keras_accuracy"], report["accuracy"]
    (0.0, 0.6667, 0.3333)
"""

from __future__ import annotations

from typing import Any

import numpy as np

# Smallest top-1 agreement with the Keras model on real images that an export accepts by
# default (int8 MobileNet on hymenoptera: see docs/deploy.md for the measured figures).
DEFAULT_MIN_AGREEMENT = 0.95


class ParityError(RuntimeError):
    """A converted model disagrees with the Keras model beyond the bound; nothing was written."""


def answer_thresholds(model: Any, num_classes: int) -> np.ndarray | None:
    """A multi-label model's per-label thresholds (its answer: the labels at or above them), else ``None``.

    Example:
        >>> answer_thresholds(lambda images: images, 2) is None
        True
    """
    from tfx_transfer.models.transfer_model import is_multi_label, model_thresholds

    return model_thresholds(model, num_classes) if is_multi_label(model) else None


def _answers(probabilities: np.ndarray, thresholds: np.ndarray | None) -> np.ndarray:
    """Each image's answer: its top class, or (multi-label) the row of labels at or above their thresholds."""
    if thresholds is None:
        return probabilities.argmax(-1)[:, None]
    return probabilities >= np.asarray(thresholds, np.float32)


def _true_answers(labels: Any, thresholds: np.ndarray | None) -> np.ndarray:
    """The labels in the form of :func:`_answers` (class indices or one-hot; multi-hot)."""
    labels = np.asarray(labels)
    if thresholds is not None:
        return labels.reshape(len(labels), -1) >= 0.5
    return (labels.argmax(-1) if labels.ndim == 2 else labels.reshape(-1))[:, None]


def compare(expected: np.ndarray, got: np.ndarray, labels: np.ndarray | None = None,
            source: str = "the given images", thresholds: Any = None) -> dict[str, Any]:
    """Figures of ``got`` (converted model) against ``expected`` (Keras) probabilities.

    Args:
        expected: ``(N, C)`` probabilities of the Keras model.
        got: ``(N, C)`` probabilities of the converted model on the same images.
        labels: ``(N,)`` true class indices or ``(N, C)`` one-hot (multi-hot with
            ``thresholds``); accuracy is reported when given.
        source: which images (reported as ``"images"``).
        thresholds: a multi-label model's per-label thresholds (:func:`answer_thresholds`):
            agreement and accuracy then compare the sets of labels at or above them.

    Returns:
        ``{"num_images", "images", "max_abs_diff", "top1_agreement", "accuracy",
        "keras_accuracy", "multi_label"}`` (``top1_agreement``: the share of images
        answered alike; accuracies ``None`` without labels; figures rounded to 4 digits,
        the difference to 3 significant ones).

    Example:
        >>> compare(np.eye(2), np.eye(2))["max_abs_diff"]
        0.0
        >>> p = np.array([[0.9, 0.8], [0.9, 0.2]])
        >>> r = compare(p, p * [1, 0.5], np.array([[1, 1], [1, 0]]), thresholds=[0.5, 0.5])
        >>> r["top1_agreement"], r["keras_accuracy"], r["accuracy"]
        (0.5, 1.0, 0.5)
    """
    expected, got = np.asarray(expected, np.float32), np.asarray(got, np.float32)
    if expected.shape != got.shape:
        raise ValueError(f"Probabilities of shape {got.shape} cannot be compared with the Keras "
                         f"model's {expected.shape}.")
    answer, keras_answer = _answers(got, thresholds), _answers(expected, thresholds)
    report = {"num_images": int(len(got)), "images": source,
              "max_abs_diff": float(f"{np.max(np.abs(got - expected)):.3g}") if len(got) else None,
              "top1_agreement": round(float(np.mean(np.all(answer == keras_answer, -1))), 4),
              "accuracy": None, "keras_accuracy": None, "multi_label": thresholds is not None}
    if labels is not None:
        truth = _true_answers(labels, thresholds)
        report["accuracy"] = round(float(np.mean(np.all(answer == truth, -1))), 4)
        report["keras_accuracy"] = round(float(np.mean(np.all(keras_answer == truth, -1))), 4)
    return report


def describe(report: dict[str, Any]) -> str:
    """One line: agreement, accuracy and difference of a :func:`compare` report.

    Example:
        >>> describe({"top1_agreement": 0.5, "num_images": 2, "max_abs_diff": 0.25,
        ...           "accuracy": 0.5, "keras_accuracy": 1.0, "images": "x"})
        'top-1 agreement 50.0% on 2 images (x), accuracy 50.0% (Keras 100.0%), max |prob diff| 0.25'
    """
    what, correct = (("label-set agreement", "exact-match accuracy") if report.get("multi_label")
                     else ("top-1 agreement", "accuracy"))
    text = (f"{what} {report['top1_agreement']:.1%} on {report['num_images']} images "
            f"({report['images']})")
    if report.get("accuracy") is not None:
        text += f", {correct} {report['accuracy']:.1%} (Keras {report['keras_accuracy']:.1%})"
    return text + f", max |prob diff| {report['max_abs_diff']:.2g}"


def check_agreement(report: dict[str, Any], min_agreement: float, what: str,
                    max_abs_diff: float | None = None) -> None:
    """Raise :class:`ParityError` when the report is below ``min_agreement`` (or above ``max_abs_diff``).

    Args:
        report: a :func:`compare` report.
        min_agreement: smallest top-1 agreement accepted (0..1).
        what: the model named in the message, e.g. ``"TFLite (int8)"``.
        max_abs_diff: largest probability difference accepted (``None``: not checked).

    Example:
        >>> check_agreement({"top1_agreement": 1.0, "max_abs_diff": 0.0}, 0.95, "TFLite")
    """
    low = report["top1_agreement"] < min_agreement
    far = max_abs_diff is not None and report["max_abs_diff"] > max_abs_diff
    if low or far:
        bound, accept = ((f"below the bound min_agreement={min_agreement:g}",
                          "a lower min_agreement (--min-agreement)") if low else
                         (f"beyond the bound max_abs_diff={max_abs_diff:g}", "a larger tolerance="))
        raise ParityError(f"{what} is {bound}: {describe(report)}; nothing written. Use a less "
                          "aggressive quantization, more or more typical calibration images, or "
                          f"accept it with {accept}.")
