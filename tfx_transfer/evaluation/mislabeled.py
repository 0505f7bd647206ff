"""The mislabeled-image finder: the images the model finds hardest, worst first (fastai's top losses).

:func:`top_losses` runs a model over labelled data and returns one row per image,
sorted by its loss ``-log p(true class)``: at the top are the images the model is
most confidently wrong about -- often mislabeled, ambiguous or broken files.
:func:`plot_top_losses` draws them with their Grad-CAM heatmaps
(:func:`tfx_transfer.explain`), :func:`write_top_losses_csv` writes the table, and
:func:`write_top_losses` does all three into a folder (``top_losses.png`` and
``top_losses.csv``; every ``train`` run folder and ``tfx-transfer evaluate`` get them).

(The module is not called ``top_losses.py`` so that ``tfx_transfer.top_losses`` stays
the function even after the module has been imported.)

Example:
    >>> import numpy as np, tfx_transfer as tt
    >>> model = tt.build_transfer_model("vgg16", 2, input_shape=(32, 32, 3),
    ...                                 weights=None, head="avg")
    >>> x = np.random.default_rng(0).integers(0, 256, (6, 32, 32, 3), dtype="uint8")
    >>> rows = top_losses(model, (x, np.array([0, 1, 0, 1, 0, 1])), k=3)
    >>> len(rows), rows[0]["loss"] >= rows[1]["loss"] >= rows[2]["loss"]
    (3, True)
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tfx_transfer.data.labelled import labelled_batches
from tfx_transfer.evaluation.metrics import as_int_labels
from tfx_transfer.evaluation.multilabel import is_multi_label, ranked_label_errors
from tfx_transfer.evaluation.plots import save_figure
from tfx_transfer.evaluation.predictor import model_image_size, predictor
from tfx_transfer.layout import TOP_LOSSES_CSV, TOP_LOSSES_PNG

CSV_COLUMNS = ("rank", "index", "path", "true_class", "predicted_class", "probability",
               "p_true", "loss")
_EPS = 1e-7


def top_losses(
    model: Any,
    data: Any,
    k: int | None = 16,
    class_names: Sequence[str] | None = None,
    paths: Sequence[str] | None = None,
    batch_size: int = 32,
    split: str | None = None,
) -> list[dict[str, Any]]:
    """The ``k`` images with the highest loss ``-log p(true class)``, worst first.

    Args:
        model: a Keras model, an exported model (:func:`tfx_transfer.load_exported`)
            or a function ``images -> probabilities``.
        data: a ``tf.data`` dataset (or iterable) of ``(images, labels)`` batches, an
            ``(x, y)`` tuple of arrays, an :class:`~tfx_transfer.ImageFolder` or an image
            folder path (classes are matched to ``class_names`` by name). Labels: ints
            or one-hot rows. Images: RGB pixels in 0..255 at the model's input size.
        k: rows returned (``None``: every image).
        class_names: class names in label order (default: the model's recorded
            ones, else the folder's, else ``"0"``, ``"1"``, ...).
        paths: the file of each image, in data order (filled in for a folder).
        batch_size: for arrays and folders.
        split: for a folder or ``ImageFolder``: ``None`` (its test split, else its
            validation split, else -- for a plain folder of classes -- every image;
            a folder with only ``train/`` is refused, as by
            :func:`tfx_transfer.evaluate_model`), ``"test"``, ``"val"``, ``"train"``
            or ``"all"`` (:func:`tfx_transfer.data.labelled.labelled_batches`).

    Returns:
        Rows (dicts), worst first: ``rank``, ``index`` (position in ``data``),
        ``path`` (or ``None``), ``true_class``, ``predicted_class`` (names),
        ``true``/``predicted`` (ids), ``probability`` (of the predicted class),
        ``p_true``, ``loss``, ``probabilities`` (the row) and ``image`` (uint8, for
        plotting).

    Example:
        >>> import numpy as np, tfx_transfer as tt
        >>> model = tt.build_transfer_model("vgg16", 2, input_shape=32, weights=None,
        ...                                 class_names=["cat", "dog"])
        >>> x, y = np.zeros((4, 32, 32, 3), "uint8"), np.array([0, 1, 0, 1])
        >>> rows = top_losses(model, (x, y), k=2)
        >>> len(rows), rows[0]["loss"] >= rows[1]["loss"], rows[0]["true_class"] in ("cat", "dog")
        (2, True, True)
    """
    if k is not None and (isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1):
        raise ValueError(f"k={k!r} must be an int >= 1 (or None for every image).")
    return _ranked(model, data, class_names, paths, batch_size, keep_images=k, split=split)[:k]


def _ranked(model: Any, data: Any, class_names: Sequence[str] | None, paths: Sequence[str] | None,
            batch_size: int, keep_images: int | None, split: str | None = None,
            ) -> list[dict[str, Any]]:
    """Every image's row, worst first; ``image`` only in the first ``keep_images`` rows."""
    if class_names is None:
        class_names = (getattr(model, "transfer_config", None) or {}).get("class_names") \
            or getattr(model, "class_names", None)
    labelled = labelled_batches(data, model_image_size(model), class_names, batch_size=batch_size,
                                split=split, caller="top_losses")
    class_names = labelled.class_names
    paths = labelled.paths if labelled.paths is not None else paths
    if is_multi_label(model):  # one row per (image, label) pair
        return ranked_label_errors(model, labelled.batches, class_names or [], paths, keep_images)
    batches, predict = labelled.batches, predictor(model)
    losses, truths, probs_all, kept = [], [], [], {}
    budget = keep_images
    offset = 0
    for images, labels in batches:
        probs = predict(images)
        y = as_int_labels(labels, probs.shape[1])
        if len(y) != len(probs):
            raise ValueError(f"a batch of {len(probs)} images has {len(y)} labels.")
        loss = -np.log(np.clip(probs[np.arange(len(y)), y], _EPS, 1.0))
        for i in range(len(y)):  # keep only the images of the current worst k
            kept[offset + i] = np.asarray(images[i])
        losses.append(loss)
        truths.append(y)
        probs_all.append(probs)
        offset += len(y)
        if budget is not None and len(kept) > 4 * budget:
            worst = set(np.argsort(-np.concatenate(losses), kind="stable")[:budget].tolist())
            kept = {i: im for i, im in kept.items() if i in worst}
    if not losses:
        raise ValueError("The data yielded no images; nothing to rank.")
    loss, y, probs = np.concatenate(losses), np.concatenate(truths), np.concatenate(probs_all)
    if paths is not None and len(paths) != len(loss):
        raise ValueError(f"{len(paths)} paths for {len(loss)} images: pass one path per image, "
                         "in data order.")
    names = [str(n) for n in (class_names or range(probs.shape[1]))]
    if len(names) != probs.shape[1]:
        raise ValueError(f"{len(names)} class names for a model with {probs.shape[1]} classes.")
    order = np.argsort(-loss, kind="stable")
    rows = []
    for rank, i in enumerate(order.tolist()):
        predicted = int(probs[i].argmax())
        rows.append({
            "rank": rank + 1, "index": i, "path": None if paths is None else str(paths[i]),
            "true": int(y[i]), "predicted": predicted,
            "true_class": names[y[i]], "predicted_class": names[predicted],
            "probability": float(probs[i, predicted]), "p_true": float(probs[i, y[i]]),
            "loss": float(loss[i]), "probabilities": probs[i], "image": kept.get(i) if keep_images is None or rank < keep_images else None,
        })
    return rows


def write_top_losses_csv(rows: Sequence[dict[str, Any]], path: str | os.PathLike) -> Path:
    """The rows as CSV (``rank,index,path,true_class,predicted_class,probability,p_true,loss``).

    Example:
        >>> import os, tempfile
        >>> x, y = np.zeros((3, 8, 8, 3), "uint8"), np.array([0, 1, 1])
        >>> rows = top_losses(lambda images: np.full((len(images), 2), .5), (x, y), k=2)
        >>> path = os.path.join(tempfile.mkdtemp(), "top_losses.csv")
        >>> write_top_losses_csv(rows, path).read_text().splitlines()[1]
        '1,0,,0,0,0.500000,0.500000,0.693147'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_COLUMNS)
        for row in rows:
            writer.writerow([row["rank"], row["index"], row["path"] or "", row["true_class"],
                             row["predicted_class"], f"{row['probability']:.6f}",
                             f"{row['p_true']:.6f}", f"{row['loss']:.6f}"])
    return path


def _is_keras_transfer_model(model: Any) -> bool:
    if not hasattr(model, "get_layer"):
        return False
    from tfx_transfer.models.transfer_model import get_backbone_model

    try:
        get_backbone_model(model)
        return True
    except ValueError:
        return False


def plot_top_losses(rows: Sequence[dict[str, Any]], model: Any = None,
                    path: str | os.PathLike | None = None, cols: int = 4,
                    title: str | None = None) -> Any:
    """A grid of the rows' images, each titled ``predicted / true / loss / p(true)``.

    With a Keras transfer model, each image carries the Grad-CAM heatmap
    (:func:`tfx_transfer.explain`) of its *predicted* class: what the model looked
    at when it went wrong. Returns the ``matplotlib.figure.Figure``.

    Args:
        rows: :func:`top_losses` rows (each with its ``image``).
        model: the model that ranked them; a Keras transfer model adds the heatmaps,
            anything else (or ``None``) shows the plain images.
        path: where to save the PNG (``None``: not saved).
        cols: images per row (at most ``len(rows)``).
        title: the figure's title (default: what the cells show).

    Example:
        >>> import os, tempfile
        >>> x, y = np.zeros((3, 8, 8, 3), "uint8"), np.array([0, 1, 1])
        >>> rows = top_losses(lambda images: np.full((len(images), 2), .5), (x, y), k=2)
        >>> path = os.path.join(tempfile.mkdtemp(), "top_losses.png")
        >>> fig = plot_top_losses(rows, None, path)
        >>> os.path.isfile(path)
        True
    """
    from matplotlib.figure import Figure

    from tfx_transfer.evaluation.explain_plots import overlay
    from tfx_transfer.evaluation.gradcam import explain

    if not rows:
        raise ValueError("plot_top_losses: no rows to plot.")
    images = np.stack([np.asarray(row["image"]) for row in rows])
    heatmaps = None
    if model is not None and _is_keras_transfer_model(model):
        heatmaps = explain(model, images, class_index=[row.get("label", row["predicted"]) for row in rows])
    cols = max(1, min(cols, len(rows)))
    grid_rows = -(-len(rows) // cols)
    fig = Figure(figsize=(2.4 * cols, 2.75 * grid_rows + 0.4), dpi=100)
    for n, row in enumerate(rows):
        ax = fig.add_subplot(grid_rows, cols, n + 1)
        image = np.clip(images[n], 0, 255).astype(np.uint8)
        if heatmaps is not None:
            image = overlay(image, heatmaps[n], alpha=0.35)
        ax.imshow(image)
        wrong = row["true"] != row["predicted"]
        name = Path(row["path"]).name if row.get("path") else f"#{row['index']}"
        ax.set_title(f"{row['predicted_class']} ({row['probability']:.2f}) / {row['true_class']}\n"
                     f"loss {row['loss']:.2f}  {name[:22]}", fontsize=7,
                     color="crimson" if wrong else "darkgreen")
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_edgecolor("crimson" if wrong else "darkgreen")
            spine.set_linewidth(2)
    if title is None:
        title = ("top losses: predicted (probability) / true" +
                 ("; Grad-CAM of the predicted class" if heatmaps is not None else ""))
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def write_top_losses(model: Any, data: Any, out: str | os.PathLike, k: int = 16,
                     class_names: Sequence[str] | None = None, paths: Sequence[str] | None = None,
                     batch_size: int = 32, split: str | None = None) -> dict[str, Path]:
    """:func:`top_losses`, then ``top_losses.png`` (k worst) and ``top_losses.csv`` (every image).

    Args:
        model, data, class_names, paths, batch_size, split: as for :func:`top_losses`.
        out: the folder to write into (created).
        k: images drawn in the PNG (the CSV lists every image).

    Returns:
        ``{"top_losses_png": path, "top_losses_csv": path}`` (strings).

    Example:
        >>> import tempfile, numpy as np, tfx_transfer as tt
        >>> model = tt.build_transfer_model("vgg16", 2, input_shape=32, weights=None)
        >>> x, y = np.zeros((4, 32, 32, 3), "uint8"), np.array([0, 1, 0, 1])
        >>> sorted(write_top_losses(model, (x, y), tempfile.mkdtemp(), k=2,
        ...                         class_names=["cat", "dog"]))
        ['top_losses_csv', 'top_losses_png']
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k={k!r} must be an int >= 1.")
    rows = _ranked(model, data, class_names, paths, batch_size, keep_images=k, split=split)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    csv_path = write_top_losses_csv(rows, out / TOP_LOSSES_CSV)
    wrong = sum(row["true"] != row["predicted"] for row in rows)
    png = out / TOP_LOSSES_PNG
    plot_top_losses(rows[:k], model, png,
                    title=f"top {min(k, len(rows))} losses of {len(rows)} images ({wrong} "
                          "misclassified): predicted (probability) / true")
    return {"top_losses_png": Path(png), "top_losses_csv": Path(csv_path)}
