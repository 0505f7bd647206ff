"""Fitting and measuring the "none of these" score (:mod:`tfx_transfer.models.unknown_score`).

:func:`fit_unknown` stores reference features of training images in the model and
chooses the threshold on validation images (``tpr`` of them accepted).
:func:`evaluate_unknown` scores known images and images of other classes
(``tfx-transfer evaluate RUN FOLDER --ood OTHER``): AUROC, the false-positive rate
at 95% TPR, the share of each folder flagged ``unknown`` and a histogram of the
two score distributions.

Example:
    >>> import numpy as np
    >>> roc_auc(np.array([0.1, 0.2]), np.array([0.3, 0.15]))
    0.75
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from tfx_transfer.evaluation.plots import save_figure
from tfx_transfer.layout import UNKNOWN_SCORES_PNG
from tfx_transfer.models.unknown_score import (
    DEFAULT_MAX_REFERENCES,
    DEFAULT_TPR,
    feature_model,
    knn_score,
    model_threshold,
    set_references,
    unknown_scores,
    unknown_settings,
    unpack_array,
)


def roc_auc(known: np.ndarray, unknown: np.ndarray) -> float:
    """AUROC of telling ``unknown`` scores (positives, higher) from ``known`` ones (ties count half).

    Example:
        >>> roc_auc(np.array([0.0, 0.1]), np.array([0.5, 0.9]))
        1.0
    """
    known, unknown = np.asarray(known, np.float64), np.asarray(unknown, np.float64)
    if not len(known) or not len(unknown):
        raise ValueError("roc_auc needs at least one known and one unknown score.")
    greater = (unknown[:, None] > known[None, :]).mean()
    ties = (unknown[:, None] == known[None, :]).mean()
    return round(float(greater + 0.5 * ties), 6)


def threshold_at_tpr(known: np.ndarray, tpr: float = DEFAULT_TPR) -> float:
    """The score below or at which ``tpr`` of the ``known`` scores lie (they are accepted).

    Example:
        >>> threshold_at_tpr(np.arange(20) / 20, 0.95)  # 19 of the 20 at or below it
        0.9
    """
    if not 0.0 < tpr <= 1.0:
        raise ValueError(f"tpr={tpr!r} must be in (0, 1], e.g. 0.95 (95% of known images accepted).")
    ordered = np.sort(np.asarray(known, np.float64))
    return float(ordered[max(0, math.ceil(round(tpr * len(ordered), 9)) - 1)])


def fpr_at_tpr(known: np.ndarray, unknown: np.ndarray, tpr: float = DEFAULT_TPR) -> float:
    """The share of ``unknown`` images accepted as known at the threshold accepting ``tpr`` known ones.

    Args:
        known: scores of images of known classes.
        unknown: scores of images of other classes.
        tpr: the share of known images accepted (0.95: "FPR at 95% TPR").

    Example:
        >>> fpr_at_tpr(np.arange(100) / 100, np.array([0.5, 0.99, 2.0]))
        0.333333
    """
    return round(float((np.asarray(unknown) <= threshold_at_tpr(known, tpr)).mean()), 6)


def _batches(data: Any, model: Any, split: str | None, batch_size: int) -> tuple[list, list]:
    from tfx_transfer.data.labelled import labelled_batches
    from tfx_transfer.evaluation.predictor import model_image_size

    if not (isinstance(data, (str, os.PathLike)) or type(data).__name__ == "ImageFolder"):
        split = None
    names = (getattr(model, "transfer_config", None) or {}).get("class_names")
    labelled = labelled_batches(data, model_image_size(model), names, batch_size=batch_size,
                                split=split, caller="fit_unknown")
    images, labels = [], []
    for x, y in labelled.batches:
        y = np.asarray(y)
        images.append(np.asarray(x))
        labels.append(y.argmax(axis=1) if y.ndim == 2 else y.astype(int))
    return images, labels


def _features(model: Any, images: list) -> np.ndarray:
    import keras

    out = [keras.ops.convert_to_numpy(feature_model(model).predict_on_batch(x)[0]) for x in images]
    return np.concatenate(out) if out else np.zeros((0, 0))


def fit_unknown(model: Any, train: Any, validation: Any, *, tpr: float = DEFAULT_TPR,
                max_references: int = DEFAULT_MAX_REFERENCES, batch_size: int = 32) -> dict[str, Any]:
    """Fit the model's "none of these" score: reference features and a threshold (in place).

    Args:
        model: a model of :func:`tfx_transfer.build_transfer_model`.
        train: known images for the references: a folder or ``ImageFolder`` (its
            ``train/`` split), a dataset of ``(images, labels)`` or an ``(x, y)`` tuple.
        validation: held-out known images for the threshold (a folder's ``val/`` split).
        tpr: the share of validation images to accept as known (default 0.95).
        max_references: the most reference features stored (stratified by class).
        batch_size: images per batch.

    Returns:
        ``{"method", "threshold", "tpr", "num_references", "validation_accepted"}``.

    Example:
        >>> import numpy as np, tfx_transfer as tt
        >>> model = tt.build_transfer_model("vgg16", 2, input_shape=32, weights=None)
        >>> rng = np.random.default_rng(0)
        >>> x, y = rng.integers(0, 255, (6, 32, 32, 3)).astype("uint8"), np.arange(6) % 2
        >>> fit = fit_unknown(model, (x[:4], y[:4]), (x[4:], y[4:]), tpr=1.0)
        >>> fit["num_references"], fit["validation_accepted"]
        (4, 1.0)
    """
    ref_images, ref_labels = _batches(train, model, "train", batch_size)
    features = _features(model, ref_images)
    if not len(features):
        raise ValueError("fit_unknown: the training data holds no images.")
    val_images, _ = _batches(validation, model, "val", batch_size)
    if not val_images:
        raise ValueError("fit_unknown: the validation data holds no images.")
    set_references(model, features, threshold=2.0, tpr=tpr, labels=np.concatenate(ref_labels),
                   max_references=max_references)
    settings = unknown_settings(model)
    scores = np.asarray(knn_score(_features(model, val_images), unpack_array(settings["references"])),
                        np.float64)
    threshold = threshold_at_tpr(scores, tpr)
    settings["threshold"] = math.ceil(threshold * 1e6) / 1e6  # rounded up: still accepts them
    return {"method": settings["method"], "threshold": settings["threshold"], "tpr": float(tpr),
            "num_references": int(settings["references"]["shape"][0]),
            "validation_accepted": round(float((scores <= settings["threshold"]).mean()), 6)}


def score_images(model: Any, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """Unknown scores of pixel batches, from a fitted Keras model or an export with ``unknown_score``.

    Args:
        model: a Keras model fitted by :func:`fit_unknown`, or an export of one.
        images: ``(N, H, W, 3)`` pixels at the model's size.
        batch_size: images per call.

    Example:
        >>> import numpy as np, tfx_transfer as tt
        >>> model = tt.build_transfer_model("vgg16", 2, input_shape=32, weights=None)
        >>> score_images(model, np.zeros((1, 32, 32, 3), "uint8"))
        Traceback (most recent call last):
        ...
        ValueError: Model 'vgg16_transfer' has no unknown score; fit one with tt.fit_unknown(model, train_images, validation_images).
    """
    from tfx_transfer.evaluation.predictor import is_exported

    if is_exported(model):
        import tensorflow as tf

        signature = model.saved_model.signatures["predict_pixels"]
        if "unknown_score" not in signature.structured_outputs:
            raise ValueError("This export has no unknown_score output; export a model fitted with "
                             "tt.fit_unknown (train does it).")
        return np.concatenate([signature(pixels=tf.constant(images[i:i + batch_size], tf.float32))[
            "unknown_score"].numpy() for i in range(0, len(images), batch_size)]).astype(np.float64)
    return unknown_scores(model, images, batch_size)[1]


def _ood_images(ood: Any, image_size: tuple[int, int], batch_size: int) -> np.ndarray:
    if isinstance(ood, np.ndarray):
        return ood
    from tfx_transfer.data.files import find_images
    from tfx_transfer.data.pipeline import make_dataset
    from tfx_transfer.data.verify import ROUTES, verify_images

    if not Path(ood).is_dir():
        raise FileNotFoundError(f"ood={str(ood)!r} does not exist or is not a folder of images.")
    paths = [str(p) for p in find_images(Path(ood))[0]]
    routes = verify_images(paths, ood)
    used = [(p, 0) for p in paths if routes[p] in ROUTES]
    if not used:
        raise ValueError(f"No readable image under ood={str(ood)!r}; give a folder of images of "
                         "classes the model does not know.")
    ds = make_dataset(used, routes, split="ood", num_classes=1, image_size=image_size,
                      batch_size=batch_size, label_mode="int", shuffle=False, seed=0, cache=None,
                      crop_to_aspect_ratio=False, augmentation=None)
    return np.concatenate([np.asarray(x) for x, _ in ds])


def evaluate_unknown(model: Any, known: Any, ood: Any, out: str | os.PathLike | None = None, *,
                     unknown_threshold: float | None = None, tpr: float = DEFAULT_TPR,
                     batch_size: int = 32, split: str | None = None) -> dict[str, Any]:
    """How well the unknown score tells ``known`` images from ``ood`` images of other classes.

    Args:
        model: a fitted Keras model or an export (:func:`tfx_transfer.load_exported`).
        known: labelled images of the model's classes (as :func:`tfx_transfer.evaluate_model`
            reads them: a folder's test split, else its val split).
        ood: a folder of images of other classes (labels not read) or a pixel array.
        out: folder for the histogram ``unknown_scores.png`` (none written when ``None``).
        unknown_threshold: overrides the model's threshold for the flagged shares.
        tpr: the true-positive rate of ``fpr_at_tpr``.
        batch_size: images per batch.
        split: the split of a known folder (see :func:`tfx_transfer.evaluate_model`).

    Returns:
        ``{"auroc", "fpr_at_tpr", "tpr", "threshold", "known_flagged", "ood_flagged",
        "num_known", "num_ood"}`` (+ ``"files"`` when ``out`` is given).

    Example:
        >>> import numpy as np, tfx_transfer as tt
        >>> model = tt.build_transfer_model("vgg16", 2, input_shape=32, weights=None)
        >>> x = np.random.default_rng(0).integers(0, 255, (4, 32, 32, 3)).astype("uint8")
        >>> _ = fit_unknown(model, (x, np.arange(4) % 2), (x, np.arange(4) % 2))
        >>> result = evaluate_unknown(model, (x, np.arange(4) % 2), np.full((3, 32, 32, 3), 255, "uint8"))
        >>> result["known_flagged"], result["num_ood"]
        (0.0, 3)
    """
    from tfx_transfer.evaluation.predictor import model_image_size

    images, _ = _batches(known, model, split, batch_size)
    known_scores = score_images(model, np.concatenate(images), batch_size)
    ood_scores = score_images(model, _ood_images(ood, model_image_size(model), batch_size), batch_size)
    threshold = model_threshold(model, unknown_threshold)
    result: dict[str, Any] = {
        "auroc": roc_auc(known_scores, ood_scores), "fpr_at_tpr": fpr_at_tpr(known_scores, ood_scores, tpr),
        "tpr": float(tpr), "threshold": round(threshold, 6),
        "known_flagged": round(float((known_scores > threshold).mean()), 6),
        "ood_flagged": round(float((ood_scores > threshold).mean()), 6),
        "num_known": int(len(known_scores)), "num_ood": int(len(ood_scores))}
    if out is not None:
        result["files"] = {"unknown_scores": plot_unknown_scores(
            known_scores, ood_scores, threshold, Path(out) / UNKNOWN_SCORES_PNG)}
    return result


def plot_unknown_scores(known: np.ndarray, ood: np.ndarray, threshold: float,
                        out: str | os.PathLike, title: str = "Unknown score") -> Path:
    """Histograms of the known and the other images' scores, the threshold marked.

    Args:
        known: scores of images of known classes.
        ood: scores of images of other classes.
        threshold: the threshold line.
        out: the PNG file.
        title: the figure's title.

    Example:
        >>> import tempfile
        >>> plot_unknown_scores(np.array([0.1]), np.array([0.5]), 0.3, tempfile.mkdtemp() + "/h.png").name
        'h.png'
    """
    from matplotlib.figure import Figure  # no pyplot: no GUI, no global state, thread-safe

    fig = Figure(figsize=(6, 3.5), dpi=100)
    ax = fig.add_subplot()
    top = max(float(np.max(known)), float(np.max(ood)), threshold) * 1.05 + 1e-6
    bins = np.linspace(0.0, top, 40)
    ax.hist(known, bins=bins, alpha=0.6, density=True, label=f"known classes ({len(known)})")
    ax.hist(ood, bins=bins, alpha=0.6, density=True, label=f"other images ({len(ood)})")
    ax.axvline(threshold, color="k", linestyle="--", label=f"threshold {threshold:.3f}")
    ax.set(xlabel="unknown score (1 - cosine to nearest training image)", ylabel="density",
           title=title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, out)
    return Path(out)


def format_unknown(result: dict[str, Any]) -> str:
    """The text lines of :func:`evaluate_unknown`'s result (for ``report.txt``).

    Example:
        >>> print(format_unknown({"auroc": 0.97, "fpr_at_tpr": 0.1, "tpr": 0.95, "threshold": 0.3,
        ...                       "known_flagged": 0.05, "ood_flagged": 0.9, "num_known": 20,
        ...                       "num_ood": 10}))
        unknown images (none of these): 20 known, 10 other
          AUROC 0.970   FPR at 95% TPR 0.100
          flagged unknown at threshold 0.3000: known 5.0%, other 90.0%
    """
    return (f"unknown images (none of these): {result['num_known']} known, {result['num_ood']} other\n"
            f"  AUROC {result['auroc']:.3f}   FPR at {result['tpr']:.0%} TPR {result['fpr_at_tpr']:.3f}\n"
            f"  flagged unknown at threshold {result['threshold']:.4f}: known "
            f"{result['known_flagged']:.1%}, other {result['ood_flagged']:.1%}")
