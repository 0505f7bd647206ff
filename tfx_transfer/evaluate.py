"""Evaluation: metrics (numpy), a text report and PNG plots (matplotlib, no pyplot).

* :func:`classification_metrics`: accuracy, top-k accuracy, cross-entropy,
  per-class precision / recall / F1 / support, macro and weighted averages and
  the confusion matrix (rows: true class, columns: predicted), from labels and
  predicted probabilities. Plain numpy.
* :func:`format_report`: those metrics as a text table.
* :func:`plot_history`, :func:`plot_confusion_matrix`, :func:`plot_predictions`:
  PNG figures (``matplotlib.figure.Figure``, so no GUI backend and no global
  pyplot state).
* :func:`evaluate_model`: run a Keras model or an exported SavedModel over a
  dataset, arrays or an image folder and return (and optionally write) all of it.

Example:
    >>> import numpy as np
    >>> m = classification_metrics([0, 1, 1], np.array([[.9, .1], [.2, .8], [.6, .4]]),
    ...                            ["cat", "dog"], top_k=1)
    >>> round(m["accuracy"], 3), m["confusion_matrix"]
    (0.667, [[1, 0], [1, 1]])
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

METRICS_FILE = "metrics.json"
REPORT_FILE = "report.txt"
CONFUSION_PNG = "confusion_matrix.png"
PREDICTIONS_PNG = "predictions.png"
HISTORY_PNG = "history.png"
_EPS = 1e-7

# ---------------------------------------------------------------------------
# Metrics (numpy only)
# ---------------------------------------------------------------------------


def _as_int_labels(labels: Any, num_classes: int) -> np.ndarray:
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


def default_top_k(num_classes: int) -> int:
    """The k reported by default: ``min(5, num_classes - 1)`` (top-C accuracy is always 1).

    Example:
        >>> default_top_k(3), default_top_k(100)
        (2, 5)
    """
    return max(1, min(5, num_classes - 1))


def confusion_matrix(y_true: Any, y_pred: Any, num_classes: int) -> np.ndarray:
    """``int64 (C, C)`` counts: row = true class, column = predicted class.

    Example:
        >>> confusion_matrix([0, 1, 1], [0, 0, 1], 2).tolist()
        [[1, 0], [1, 1]]
    """
    y_true = _as_int_labels(y_true, num_classes)
    y_pred = _as_int_labels(y_pred, num_classes)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"{y_true.size} true labels but {y_pred.size} predictions.")
    return np.bincount(y_true * num_classes + y_pred,
                       minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def top_k_accuracy(y_true: Any, probabilities: Any, k: int) -> float:
    """Fraction of samples whose true class is among the ``k`` highest probabilities.

    Ties are broken by class order (stable sort), as ``numpy.argsort(kind="stable")``.

    Example:
        >>> top_k_accuracy([2, 0], np.array([[.5, .3, .2], [.1, .2, .7]]), k=2)
        0.0
    """
    probabilities = np.asarray(probabilities, np.float64)
    y_true = _as_int_labels(y_true, probabilities.shape[1])
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
        top_k: k of the top-k accuracy; default :func:`default_top_k`.

    Returns:
        ``{"num_samples", "accuracy", "top_k", "top_k_accuracy", "loss"`` (mean
        cross-entropy of the probabilities), ``"per_class": {name: {"precision",
        "recall", "f1", "support"}}, "macro_avg", "weighted_avg", "class_names",
        "confusion_matrix"`` (list of rows; row = true class)``}``.

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
    y_true = _as_int_labels(y_true, num_classes)
    if len(y_true) != len(probabilities):
        raise ValueError(f"{len(y_true)} labels but {len(probabilities)} rows of probabilities.")
    if len(y_true) == 0:
        raise ValueError("Nothing to evaluate: no samples.")
    k = default_top_k(num_classes) if top_k is None else int(top_k)
    y_pred = probabilities.argmax(axis=1)
    cm = confusion_matrix(y_true, y_pred, num_classes)
    prf = precision_recall_f1(cm)
    support = prf["support"]
    loss = -np.log(np.clip(probabilities[np.arange(len(y_true)), y_true], _EPS, 1.0))

    def average(weights: np.ndarray) -> dict[str, float]:
        weights = weights / weights.sum() if weights.sum() else weights
        return {key: float(np.sum(prf[key] * weights)) for key in ("precision", "recall", "f1")}

    return {
        "num_samples": int(len(y_true)),
        "accuracy": float(np.mean(y_pred == y_true)),
        "top_k": k,
        "top_k_accuracy": top_k_accuracy(y_true, probabilities, k),
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

    Example:
        >>> m = classification_metrics([0, 1], np.array([[.8, .2], [.3, .7]]), ["a", "b"])
        >>> print(format_report(m).splitlines()[0])
        accuracy 1.0000   top-1 accuracy 1.0000   loss 0.2899   (2 images)
    """
    names = list(metrics["class_names"])
    width = max(12, *(len(n) for n in names)) + 2
    lines = [
        f"accuracy {metrics['accuracy']:.4f}   top-{metrics['top_k']} accuracy "
        f"{metrics['top_k_accuracy']:.4f}   loss {metrics['loss']:.4f}   "
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


# ---------------------------------------------------------------------------
# Plots (matplotlib Figure objects: Agg canvas, no pyplot)
# ---------------------------------------------------------------------------


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100)


def _save(fig: Any, path: str | os.PathLike | None) -> Any:
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=100)
    return fig


def read_history_csv(path: str | os.PathLike) -> dict[str, list]:
    """A ``CSVLogger`` file as ``{column: [values]}`` (numbers as floats, ``epoch`` as int).

    Example:
        >>> read_history_csv("runs/demo/history.csv")["val_accuracy"][:2]  # doctest: +SKIP
        [0.56, 0.71]
    """
    import csv

    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    out: dict[str, list] = {key: [] for key in (rows[0] if rows else {})}
    for row in rows:
        for key, value in row.items():
            try:
                number = float(value)
                out[key].append(int(number) if key == "epoch" else number)
            except (TypeError, ValueError):
                out[key].append(value)
    return out


def _history_dict(history: Any) -> dict[str, list]:
    if isinstance(history, (str, os.PathLike)):
        return read_history_csv(history)
    if hasattr(history, "history") and isinstance(history.history, dict):  # keras History
        data = dict(history.history)
        data.setdefault("epoch", list(getattr(history, "epoch", range(len(next(iter(data.values()), []))))))
        return data
    if isinstance(history, Mapping):
        return dict(history)
    raise ValueError(f"history={type(history).__name__}: pass a keras History, its .history "
                     "dict, or the path of a CSVLogger file (history.csv).")


def plot_history(history: Any, path: str | os.PathLike | None = None,
                 title: str | None = None) -> Any:
    """Loss and accuracy per epoch across both phases, each stage change marked.

    ``history``: a Keras ``History`` (e.g. from :func:`tfx_transfer.fine_tune`),
    its ``.history`` dict, or a ``history.csv`` path. The ``"stage"`` column (from
    :class:`tfx_transfer.StagedUnfreeze`) marks where fine-tuning starts: a
    dashed line and a shaded phase 2.

    Returns:
        The ``matplotlib.figure.Figure`` (also saved as PNG when ``path`` is given).

    Example:
        >>> fig = plot_history({"loss": [1.0, .6, .4], "val_loss": [1.1, .8, .5],
        ...                     "stage": [0, 1, 1]}, "/tmp/history.png")
    """
    from matplotlib.ticker import MaxNLocator

    data = _history_dict(history)
    if "loss" not in data or not data["loss"]:
        raise ValueError(f"history has no 'loss' values (keys: {sorted(data)}); nothing to plot.")
    n = len(data["loss"])
    epochs = np.asarray(data.get("epoch", range(n)), dtype=float)[:n] + 1
    stages = np.asarray(data.get("stage", [0] * n), dtype=float)[:n]
    accuracy_keys = [k for k in ("accuracy", "val_accuracy") if k in data]
    panels = [("loss", ["loss", "val_loss"])] + ([("accuracy", accuracy_keys)] if accuracy_keys else [])
    fig = _figure(5.5 * len(panels), 4)
    changes = [i for i in range(1, n) if stages[i] != stages[i - 1]]
    for j, (label, keys) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), j + 1)
        for key in keys:
            if key in data:
                style = "o--" if key.startswith("val_") else "o-"
                ax.plot(epochs, np.asarray(data[key], float)[:n], style, ms=3,
                        label="validation" if key.startswith("val_") else "training")
        for k, i in enumerate(changes):
            boundary = (epochs[i - 1] + epochs[i]) / 2
            ax.axvline(boundary, color="grey", ls=":", lw=1.5)
            if k == 0:
                ax.axvspan(boundary, epochs[-1] + 0.5, color="tab:orange", alpha=0.08)
                ax.text(boundary, 0.99, " fine-tuning", transform=ax.get_xaxis_transform(),
                        va="top", ha="left", fontsize=8, color="dimgrey")
                ax.text(boundary, 0.99, "head only ", transform=ax.get_xaxis_transform(),
                        va="top", ha="right", fontsize=8, color="dimgrey")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(label)
        if label == "accuracy":
            ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(loc="center right", fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def plot_confusion_matrix(cm: Any, class_names: Sequence[str], path: str | os.PathLike | None = None,
                          title: str | None = "confusion matrix") -> Any:
    """The confusion matrix as a heat map: colour = row-normalised recall, text = counts.

    Example:
        >>> fig = plot_confusion_matrix([[5, 1], [0, 6]], ["cat", "dog"], "/tmp/cm.png")
    """
    cm = np.asarray(cm, dtype=np.int64)
    names = [str(n) for n in class_names]
    if cm.shape != (len(names), len(names)):
        raise ValueError(f"confusion matrix of shape {cm.shape} for {len(names)} class names.")
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros(cm.shape), where=rows > 0)
    side = min(max(3.5, 0.45 * len(names) + 2.5), 16)
    fig = _figure(side + 1, side)
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    ticks = np.arange(len(names))
    ax.set_xticks(ticks, names, rotation=45 if max(map(len, names)) > 4 else 0, ha="right"
                  if max(map(len, names)) > 4 else "center")
    ax.set_yticks(ticks, names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    if len(names) <= 30:
        for i in range(len(names)):
            for j in range(len(names)):
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=9,
                        color="white" if norm[i, j] > 0.5 else "black")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return _save(fig, path)


def plot_predictions(images: Any, y_true: Any, probabilities: Any, class_names: Sequence[str],
                     path: str | os.PathLike | None = None, max_images: int = 16,
                     title: str | None = None) -> Any:
    """A grid of images titled "predicted (score) / true": misclassified first, in red.

    ``title`` defaults to how many of the given images are misclassified.

    Example:
        >>> fig = plot_predictions(np.zeros((2, 32, 32, 3), "uint8"), [0, 1],
        ...                        np.array([[.9, .1], [.8, .2]]), ["cat", "dog"], "/tmp/p.png")
    """
    images = np.asarray(images)
    probabilities = np.asarray(probabilities, np.float64)
    names = [str(n) for n in class_names]
    y_true = _as_int_labels(y_true, probabilities.shape[1])
    y_pred = probabilities.argmax(axis=1)
    wrong = np.flatnonzero(y_pred != y_true)
    right = np.flatnonzero(y_pred == y_true)
    order = np.concatenate([wrong, right])[:max_images]
    if not len(order):
        raise ValueError("plot_predictions: no images to show.")
    cols = min(len(order), max(1, math.ceil(math.sqrt(len(order)))))
    rows = math.ceil(len(order) / cols)
    fig = _figure(2.1 * cols, 2.4 * rows)
    for k, i in enumerate(order):
        ax = fig.add_subplot(rows, cols, k + 1)
        ax.imshow(np.clip(images[i], 0, 255).astype(np.uint8), interpolation="nearest")
        ok = y_pred[i] == y_true[i]
        ax.set_title(f"{names[y_pred[i]]} ({probabilities[i, y_pred[i]]:.2f})\ntrue: {names[y_true[i]]}",
                     fontsize=8, color="darkgreen" if ok else "crimson")
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_edgecolor("darkgreen" if ok else "crimson")
            spine.set_linewidth(2)
    if title is None:
        title = f"predicted (score) / true -- {len(wrong)} of {len(y_true)} misclassified"
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


# ---------------------------------------------------------------------------
# Running a model or an export over data
# ---------------------------------------------------------------------------


def _is_exported(obj: Any) -> bool:
    return hasattr(obj, "saved_model") and hasattr(obj, "class_names") and hasattr(obj, "metadata")


def load_for_evaluation(source: Any) -> tuple[Any, list[str] | None]:
    """A model (Keras or exported) and its class names from an object or a path.

    ``source``: a Keras model, an :class:`~tfx_transfer.export.ExportedModel`, or a
    path: a run folder of ``tfx-transfer train`` (``model.keras`` +
    ``config.json``), an export folder or version folder (loaded with
    :func:`tfx_transfer.load_exported`, no Keras model needed), or a ``.keras``
    file.

    Example:
        >>> model, names = load_for_evaluation("runs/demo")  # doctest: +SKIP
    """
    from tfx_transfer.saving import load_model

    if not isinstance(source, (str, os.PathLike)):
        names = source.class_names if _is_exported(source) else \
            (getattr(source, "transfer_config", None) or {}).get("class_names")
        return source, names
    path = Path(source)
    if path.is_dir() and (path / "config.json").is_file() and (path / "model.keras").is_file():
        config = json.loads((path / "config.json").read_text())
        return load_model(path / "model.keras", compile=False), config.get("class_names")
    if path.is_file() and path.suffix == ".keras":
        model = load_model(path, compile=False)
        return model, (getattr(model, "transfer_config", None) or {}).get("class_names")
    if path.is_dir():
        from tfx_transfer.export import load_exported

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
    from tfx_transfer.data import split_folders

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
    from tfx_transfer.data import load_image_folder

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
        yield images, mapping[_as_int_labels(labels, len(loaded.class_names))]


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
        model_or_export: a Keras model, an :class:`~tfx_transfer.export.ExportedModel`
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
        tta: also score test-time augmentation (:func:`tfx_transfer.tta.predict_tta`:
            flips and shifts, probabilities averaged); its metrics go under
            ``"tta"`` and the report shows plain and TTA side by side.

    Returns:
        :func:`classification_metrics`' dict (plus ``"tta"``: the same for TTA),
        plus ``"files"`` (paths written) when ``out`` is given.

    Example:
        >>> metrics = evaluate_model(model, folder.validation, folder.class_names,
        ...                          out="runs/demo")  # doctest: +SKIP
        >>> metrics["accuracy"], metrics["per_class"]["circle"]["f1"]  # doctest: +SKIP
        (0.93, 0.95)
    """
    model, known_names = load_for_evaluation(model_or_export)
    names = list(class_names or known_names or [])
    predict, image_size = _predictor(model)
    if isinstance(data, (str, os.PathLike)):
        if not names:
            raise ValueError("Pass class_names= to evaluate a folder with a model that does not "
                             "record its classes.")
        trained_on = None
        if isinstance(model_or_export, (str, os.PathLike)) and (Path(model_or_export) / "config.json").is_file():
            trained_on = json.loads((Path(model_or_export) / "config.json").read_text()).get("data_dir")
        batches = _folder_batches(data, image_size, names, batch_size, verbose, split, trained_on)
    else:
        batches = _batches(data, batch_size)
    labels, probs, shown_images, shown_labels, shown_probs, tta_probs = [], [], [], [], [], []
    wrong_shown = right_shown = 0
    for images, y in batches:
        p = predict(images)
        if tta:
            from tfx_transfer.tta import predict_tta

            tta_probs.append(predict_tta(predict, images))
        y = _as_int_labels(y, p.shape[1])
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
        from tfx_transfer.tta import format_tta, tta_views

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
