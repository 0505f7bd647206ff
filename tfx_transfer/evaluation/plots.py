"""Training and evaluation plots as PNG files (``matplotlib.figure.Figure``: no GUI, no pyplot state).

Example:
    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "cm.png")
    >>> plot_confusion_matrix([[3, 1], [0, 4]], ["cat", "dog"], path) is not None
    True
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tfx_transfer.evaluation.metrics import as_int_labels


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100)


def save_figure(fig: Any, path: str | os.PathLike | None) -> Any:
    """Write ``fig`` as a PNG at ``path`` (folders created; nothing when ``path`` is None).

    Example:
        >>> import os, tempfile
        >>> from matplotlib.figure import Figure
        >>> path = os.path.join(tempfile.mkdtemp(), "a", "f.png")
        >>> _ = save_figure(Figure(), path); os.path.isfile(path)
        True
    """
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=100)
    return fig


def read_history_csv(path: str | os.PathLike) -> dict[str, list]:
    """A ``CSVLogger`` file as ``{column: [values]}`` (numbers as floats, ``epoch`` as int).

    Example:
        >>> import os, tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "history.csv")
        >>> with open(path, "w") as f:  # what keras.callbacks.CSVLogger(path) writes
        ...     _ = f.write("epoch,loss,val_accuracy\\n0,0.9,0.56\\n1,0.6,0.71\\n")
        >>> history = read_history_csv(path)
        >>> history["epoch"], history["val_accuracy"]
        ([0, 1], [0.56, 0.71])
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

    Args:
        history: see above.
        path: where to save the PNG (``None``: not saved).
        title: the figure's title.

    Returns:
        The ``matplotlib.figure.Figure`` (also saved as PNG when ``path`` is given).

    Example:
        >>> import os, tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "history.png")
        >>> fig = plot_history({"loss": [1.0, .6, .4], "val_loss": [1.1, .8, .5],
        ...                     "stage": [0, 1, 1]}, path)
        >>> os.path.isfile(path)
        True
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
    return save_figure(fig, path)


def plot_confusion_matrix(cm: Any, class_names: Sequence[str], path: str | os.PathLike | None = None,
                          title: str | None = "confusion matrix") -> Any:
    """The confusion matrix as a heat map: colour = row-normalised recall, text = counts.

    Args:
        cm: ``(C, C)`` counts, row = true class, column = predicted class
            (:func:`tfx_transfer.evaluation.metrics.confusion_matrix`).
        class_names: the ``C`` class names, in label order.
        path: where to save the PNG (``None``: not saved).
        title: the axes' title (``None``: none).

    Returns:
        The ``matplotlib.figure.Figure``.

    Example:
        >>> fig = plot_confusion_matrix([[5, 1], [0, 6]], ["cat", "dog"])  # path=None: not saved
        >>> type(fig).__name__
        'Figure'
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
    return save_figure(fig, path)


def plot_predictions(images: Any, y_true: Any, probabilities: Any, class_names: Sequence[str],
                     path: str | os.PathLike | None = None, max_images: int = 16,
                     title: str | None = None) -> Any:
    """A grid of images titled "predicted (score) / true": misclassified first, in red.

    Args:
        images: ``(N, H, W, 3)`` RGB pixels in 0..255.
        y_true: true labels, integer ids ``(N,)`` or one-hot rows.
        probabilities: predicted class scores ``(N, C)``.
        class_names: the ``C`` class names, in label order.
        path: where to save the PNG (``None``: not saved).
        max_images: the most images shown.
        title: the figure's title; default: how many of the given images are
            misclassified.

    Returns:
        The ``matplotlib.figure.Figure``.

    Example:
        >>> import os, tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "predictions.png")
        >>> fig = plot_predictions(np.zeros((2, 32, 32, 3), "uint8"), [0, 1],
        ...                        np.array([[.9, .1], [.8, .2]]), ["cat", "dog"], path)
        >>> os.path.isfile(path)
        True
    """
    images = np.asarray(images)
    probabilities = np.asarray(probabilities, np.float64)
    names = [str(n) for n in class_names]
    y_true = as_int_labels(y_true, probabilities.shape[1])
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
    return save_figure(fig, path)
