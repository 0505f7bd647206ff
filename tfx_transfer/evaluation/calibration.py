"""Temperature scaling (Guo et al. 2017): probabilities that mean what they say.

:func:`calibrate` fits one temperature ``T`` on held-out images by minimising the
negative log-likelihood of ``softmax(logits / T)`` and folds it into the classifier
layer (a ``Dense``: kernel and bias divided by ``T``; a ``CosineClassifier``: its
``scale``), so ``model.predict`` and every export give the calibrated
probabilities with no new layer. The class ranking (accuracy) does not change.
The model's transfer settings record ``temperature`` (the product of every
temperature folded in). :func:`expected_calibration_error` (15 equal-width
confidence bins) and :func:`plot_reliability` measure the result.

Example:
    >>> import numpy as np
    >>> logits = np.array([[4.0, 0.0], [4.0, 0.0], [0.0, 4.0], [0.0, 4.0]])
    >>> round(fit_temperature(logits, np.array([0, 1, 1, 0])), 1) > 4  # half wrong: flatten
    True
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import keras
import numpy as np

from tfx_transfer.evaluation.plots import save_figure

ECE_BINS = 15
TEMPERATURE_KEY = "temperature"


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64.

    Example:
        >>> softmax(np.zeros((1, 4))).tolist()
        [[0.25, 0.25, 0.25, 0.25]]
    """
    z = np.asarray(logits, np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def log_probabilities(probabilities: np.ndarray) -> np.ndarray:
    """``log p`` (floored at 1e-38): logits up to a per-row constant, which softmax ignores.

    Example:
        >>> np.allclose(softmax(log_probabilities(np.array([[0.2, 0.8]]))), [[0.2, 0.8]])
        True
    """
    return np.log(np.maximum(np.asarray(probabilities, np.float64), 1e-38))


def _nll(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    z = logits / temperature
    z = z - z.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(z).sum(axis=1))
    return float(np.mean(log_norm - z[np.arange(len(z)), labels]))


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature minimising the mean NLL of ``softmax(logits / T)`` (``T`` in [0.05, 100]).

    A golden-section search on ``log T`` (the NLL is unimodal in ``T``).

    Example:
        >>> logits = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
        >>> fit_temperature(logits, np.array([0, 0, 0, 1])) < 0.2  # all right: sharpen
        True
    """
    logits, labels = np.asarray(logits, np.float64), np.asarray(labels, int)
    if len(labels) == 0:
        raise ValueError("fit_temperature needs at least one labelled image.")
    low, high = np.log(0.05), np.log(100.0)
    ratio = (np.sqrt(5.0) - 1) / 2
    for _ in range(60):
        a, b = high - ratio * (high - low), low + ratio * (high - low)
        if _nll(logits, labels, np.exp(a)) <= _nll(logits, labels, np.exp(b)):
            high = b
        else:
            low = a
    return float(np.exp((low + high) / 2))


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray,
                               bins: int = ECE_BINS) -> float:
    """ECE: the mean |accuracy - confidence| over equal-width confidence bins, weighted by size.

    Args:
        probabilities: ``(N, C)`` predicted probabilities.
        labels: ``(N,)`` true class indices.
        bins: equal-width confidence bins (15, as Guo et al.).

    Example:
        >>> expected_calibration_error(np.array([[0.9, 0.1], [0.9, 0.1]]), np.array([0, 1]))
        0.4
    """
    probabilities = np.asarray(probabilities, np.float64)
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == np.asarray(labels)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            total += mask.mean() * abs(correct[mask].mean() - confidence[mask].mean())
    return round(float(total), 6)


def classifier_layer(model: keras.Model) -> keras.layers.Layer:
    """The model's classifier, the layer named ``"predictions"`` (the head's last layer).

    Example:
        >>> import tfx_transfer as tt
        >>> classifier_layer(tt.build_transfer_model("vgg16", 2, input_shape=32, weights=None)).name
        'predictions'
    """
    from tfx_transfer.models.parts import model_parts

    try:
        layer = model_parts(model).head.layers[-1]
    except ValueError:
        layer = None
    if layer is None or layer.name != "predictions":
        raise ValueError(f"Model {model.name!r} has no classifier layer named 'predictions' at the "
                         "end of its head; calibrate models made by build_transfer_model().")
    return layer


def _activation(layer: keras.layers.Layer) -> str:
    """The classifier's activation by name (a ``Dense`` holds a function, a ``SpatialClassifier`` a name)."""
    activation = getattr(layer, "activation", None)
    return activation if isinstance(activation, str) else getattr(activation, "__name__", str(activation))


def softmax_classifier(model: keras.Model) -> bool:
    """Whether the model's classifier is one temperature scaling applies to (softmax, or cosine).

    Example:
        >>> import tfx_transfer as tt
        >>> softmax_classifier(tt.build_transfer_model("vgg16", 2, input_shape=32, weights=None))
        True
    """
    layer = classifier_layer(model)
    return type(layer).__name__ == "CosineClassifier" or _activation(layer) == "softmax"


def fold_temperature(model: keras.Model, temperature: float) -> None:
    """Divide the classifier's logits by ``temperature`` in its weights; record it in the settings.

    A ``Dense`` softmax classifier gets ``kernel / T`` and ``bias / T``; a softmax
    ``SpatialClassifier`` (the ``"spatial"`` head) also ``sharpness * T``, so that its
    log-sum-exp pooled logits are divided by ``T`` exactly; a ``CosineClassifier`` gets
    ``scale / T``. Any other classifier raises a ``ValueError`` naming its class.

    Example:
        >>> import tfx_transfer as tt
        >>> model = tt.build_transfer_model("vgg16", 2, input_shape=32, weights=None)
        >>> fold_temperature(model, 2.0); fold_temperature(model, 1.5)
        >>> tt.transfer_config(model)["temperature"]
        3.0
    """
    temperature = float(temperature)
    if not temperature > 0:
        raise ValueError(f"temperature={temperature!r} must be positive.")
    layer = classifier_layer(model)
    kind = type(layer).__name__
    if kind in ("Dense", "SpatialClassifier"):
        if _activation(layer) != "softmax":
            raise ValueError(f"Classifier {layer.name!r} has activation {_activation(layer)!r}; "
                             "temperature scaling applies to a softmax classifier (per-label "
                             "calibration of a sigmoid classifier is not supported).")
        layer.kernel.assign(keras.ops.convert_to_numpy(layer.kernel) / temperature)
        if layer.bias is not None:
            layer.bias.assign(keras.ops.convert_to_numpy(layer.bias) / temperature)
        if kind == "SpatialClassifier":  # log-sum-exp pooling: (LSE(rT * s/T) - log L) / rT = logit / T
            layer.sharpness *= temperature
            # a Python number, traced into the model's compiled functions: trace them again
            model.train_function = model.test_function = model.predict_function = None
    elif kind == "CosineClassifier":
        layer.scale.assign(keras.ops.convert_to_numpy(layer.scale) / temperature)
    else:
        raise ValueError(f"Classifier layer {layer.name!r} is a {kind}; temperature scaling can fold "
                         "into a softmax Dense or SpatialClassifier, or a CosineClassifier only.")
    settings = getattr(model, "transfer_config", None)
    if settings is not None:
        settings[TEMPERATURE_KEY] = round(float(settings.get(TEMPERATURE_KEY, 1.0)) * temperature, 6)


def labelled_probabilities(model: keras.Model, data: Any, batch_size: int = 32,
                           split: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(probabilities (N, C), labels (N,))`` of labelled images (a folder's val/ by default).

    Args:
        model: a Keras model or an export.
        data: a folder or ``ImageFolder`` (its ``split``, default ``"val"``), a dataset of
            ``(images, labels)`` or an ``(x, y)`` tuple.
        batch_size: images per batch.
        split: the split of a folder.

    Example:
        >>> import numpy as np, tfx_transfer as tt
        >>> model = tt.build_transfer_model("vgg16", 2, input_shape=32, weights=None)
        >>> p, y = labelled_probabilities(model, (np.zeros((3, 32, 32, 3), "uint8"), np.array([0, 1, 1])))
        >>> p.shape, y.tolist()
        ((3, 2), [0, 1, 1])
    """
    from tfx_transfer.data.labelled import labelled_batches
    from tfx_transfer.evaluation.predictor import model_image_size, predictor

    if isinstance(data, (str, os.PathLike)) or type(data).__name__ == "ImageFolder":
        split = split or "val"
    else:
        split = None
    names = (getattr(model, "transfer_config", None) or {}).get("class_names")
    labelled = labelled_batches(data, model_image_size(model), names, batch_size=batch_size,
                                split=split, caller="calibrate")
    predict = predictor(model)
    probabilities, labels = [], []
    for images, y in labelled.batches:
        y = np.asarray(y)
        labels.append(y.argmax(axis=1) if y.ndim == 2 else y.astype(int))
        probabilities.append(predict(images))
    if not labels:
        raise ValueError("calibrate: the validation data holds no images.")
    return np.concatenate(probabilities), np.concatenate(labels)


def calibrate(model: keras.Model, validation: Any, *, batch_size: int = 32,
              split: str | None = None) -> dict[str, Any]:
    """Fit a temperature on held-out labelled images and fold it into ``model`` (in place).

    Args:
        model: a model of :func:`tfx_transfer.build_transfer_model` (softmax classifier).
        validation: held-out labelled images: a folder or ``ImageFolder`` (its ``val/``
            split unless ``split`` says otherwise), a dataset of ``(images, labels)``
            or an ``(x, y)`` tuple.
        batch_size: images per prediction batch.
        split: the split of a folder to fit on (default ``"val"``).

    Returns:
        ``{"temperature", "ece_before", "ece_after", "nll_before", "nll_after",
        "num_samples"}`` measured on ``validation`` (the images ``T`` was fitted on).

    Example:
        >>> import numpy as np, tfx_transfer as tt
        >>> model = tt.build_transfer_model("vgg16", 2, input_shape=32, weights=None)
        >>> x, y = np.random.default_rng(0).integers(0, 255, (8, 32, 32, 3)), np.arange(8) % 2
        >>> result = calibrate(model, (x, y))
        >>> result["nll_after"] <= result["nll_before"], tt.transfer_config(model)["temperature"] > 0
        (True, True)
    """
    return calibrate_on(model, *labelled_probabilities(model, validation, batch_size, split))


def calibrate_on(model: keras.Model, probabilities: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """:func:`calibrate` on held-out images the model has already predicted: same temperature, same result.

    Args:
        model: the classifier; the fitted temperature is folded into it.
        probabilities: ``(N, C)`` the model's probabilities for the held-out images.
        labels: ``(N,)`` their class indices.

    Example:
        >>> import numpy as np, tfx_transfer as tt
        >>> model = tt.build_transfer_model("vgg16", 2, input_shape=32, weights=None)
        >>> p = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]], "float32")
        >>> result = calibrate_on(model, p, np.array([0, 1, 1, 0]))
        >>> result["nll_after"] <= result["nll_before"]
        True
    """
    logits = log_probabilities(probabilities)
    temperature = fit_temperature(logits, labels)
    fold_temperature(model, temperature)
    after = softmax(logits / temperature)
    return {"temperature": round(temperature, 6),
            "ece_before": expected_calibration_error(probabilities, labels),
            "ece_after": expected_calibration_error(after, labels),
            "nll_before": round(_nll(logits, labels, 1.0), 6),
            "nll_after": round(_nll(logits, labels, temperature), 6),
            "num_samples": int(len(labels))}


def plot_reliability(curves: dict[str, tuple[np.ndarray, np.ndarray]], out: str | os.PathLike,
                     title: str = "Reliability", bins: int = ECE_BINS) -> Path:
    """A reliability diagram: accuracy against confidence per bin, one line per curve.

    Args:
        curves: ``{label: (probabilities, labels)}``, e.g. before and after calibration.
        out: the PNG file.
        title: the figure's title.
        bins: equal-width confidence bins.

    Example:
        >>> import tempfile
        >>> p, y = np.array([[0.9, 0.1], [0.3, 0.7]]), np.array([0, 0])
        >>> plot_reliability({"before": (p, y)}, tempfile.mkdtemp() + "/r.png").suffix
        '.png'
    """
    from matplotlib.figure import Figure  # no pyplot: no GUI, no global state, thread-safe

    edges = np.linspace(0.0, 1.0, bins + 1)
    fig = Figure(figsize=(5, 5), dpi=100)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], "k:", label="perfect calibration")
    for label, (probabilities, labels) in curves.items():
        confidence = np.asarray(probabilities).max(axis=1)
        correct = np.asarray(probabilities).argmax(axis=1) == np.asarray(labels)
        which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
        used = [b for b in range(bins) if (which == b).any()]
        ece = expected_calibration_error(probabilities, labels, bins)
        ax.plot([confidence[which == b].mean() for b in used],
                [correct[which == b].mean() for b in used], "o-", label=f"{label} (ECE {ece:.3f})")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence (top probability)", ylabel="accuracy",
           title=title)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    save_figure(fig, out)
    return Path(out)


def format_calibration(result: dict[str, Any]) -> str:
    """The lines ``train`` prints and appends to ``report.txt`` (temperature, ECE, unknown threshold).

    Example:
        >>> print(format_calibration({"temperature": 1.8, "validation": "val/",
        ...     "fitted_on": "val/ (20 images)",
        ...     "measured_on": "test/ (10 images)", "ece_before": 0.12, "ece_after": 0.03,
        ...     "unknown": {"threshold": 0.31, "tpr": 0.95, "num_references": 40}}))
        calibration: temperature 1.800 fitted on val/ (20 images)
          expected calibration error on test/ (10 images): 0.120 before, 0.030 after
          unknown ("none of these"): score above 0.3100 (accepts 95% of val/), 40 reference images
    """
    unknown = result["unknown"]
    calibration = (f"calibration: temperature {result['temperature']:.3f} fitted on "
                   f"{result['fitted_on']}\n  expected calibration error on {result['measured_on']}: "
                   f"{result['ece_before']:.3f} before, {result['ece_after']:.3f} after"
                   if "temperature" in result else f"calibration: {result['skipped']}")
    return (f"{calibration}\n"
            f"  unknown (\"none of these\"): score above {unknown['threshold']:.4f} (accepts "
            f"{unknown['tpr']:.0%} of {result.get('validation', 'the validation images')}), "
            f"{unknown['num_references']} reference images")
