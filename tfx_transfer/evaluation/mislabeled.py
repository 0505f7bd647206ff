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
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tfx_transfer.evaluation.plots import save_figure
from tfx_transfer.runs.layout import TOP_LOSSES_CSV, TOP_LOSSES_PNG

CSV_COLUMNS = ("rank", "index", "path", "true_class", "predicted_class", "probability",
               "p_true", "loss")
_EPS = 1e-7


def _model_image_size(model: Any) -> tuple[int, int]:
    if hasattr(model, "image_size") and not hasattr(model, "input_shape"):  # ExportedModel
        return tuple(int(s) for s in model.image_size)
    shape = tuple(model.input_shape)
    return int(shape[1]), int(shape[2])


def _probabilities(model: Any, images: np.ndarray) -> np.ndarray:
    if hasattr(model, "predict_on_batch"):
        import keras

        return np.asarray(keras.ops.convert_to_numpy(model.predict_on_batch(images)), np.float64)
    if hasattr(model, "probabilities"):  # tfx_transfer.load_exported(...)
        return np.asarray(model.probabilities(images), np.float64)
    if callable(model):
        return np.asarray(model(images), np.float64)
    raise ValueError(f"model={type(model).__name__}: pass a Keras model, an exported model "
                     "(tfx_transfer.load_exported) or a function images -> probabilities.")


def _int_labels(labels: Any) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim == 2:  # one-hot (or MixUp-mixed) rows
        labels = labels.argmax(axis=1)
    return labels.reshape(-1).astype(np.int64)


def _folder_batches(folder: str | os.PathLike, model: Any, class_names: Sequence[str] | None,
                    batch_size: int, split: str | None) -> tuple[Iterable, list[str], list[str]]:
    """Batches of a folder's split, labels in the model's order (the split rule of evaluate_model:
    test/, else val/, else the class folders; or ``split`` = test, val, train or all)."""
    from tfx_transfer.data.folder import load_image_folder, split_folders

    found = split_folders(folder)
    if split is None:
        parts = [next(name for name in ("test", "validation", "train") if name in found)]
    elif split == "all":
        parts = [name for name in ("train", "validation", "test") if name in found]
    else:
        wanted = {"val": "validation"}.get(split, split)
        if wanted not in found:
            raise ValueError(f"split={split!r}: {folder} has the splits {sorted(found)}; use one "
                             "of them or 'all'.")
        parts = [wanted]
    loaded = load_image_folder(folder, image_size=_model_image_size(model), batch_size=batch_size,
                               shuffle=False, validation_split=None)
    dataset = getattr(loaded, parts[0])
    for part in parts[1:]:
        dataset = dataset.concatenate(getattr(loaded, part))
    names = list(class_names or loaded.class_names)
    unknown = [n for n in loaded.class_names if n not in names]
    if unknown:
        raise ValueError(f"{folder} has class folder(s) {unknown} that the model does not know; "
                         f"its classes are {names}.")
    mapping = np.array([names.index(n) for n in loaded.class_names])
    batches = ((images, mapping[_int_labels(labels)]) for images, labels in dataset.as_numpy_iterator())
    return batches, [path for part in parts for path, _ in loaded.files[part]], names


def _batches(data: Any, batch_size: int) -> Iterable[tuple[np.ndarray, np.ndarray]]:
    if isinstance(data, tuple) and len(data) >= 2 and not hasattr(data, "element_spec"):
        x, y = np.asarray(data[0]), np.asarray(data[1])
        if len(x) != len(y):
            raise ValueError(f"{len(x)} images but {len(y)} labels.")
        for start in range(0, len(x), batch_size):
            yield x[start:start + batch_size], y[start:start + batch_size]
        return
    for batch in data:
        if not isinstance(batch, (tuple, list)) or len(batch) < 2:
            raise ValueError("top_losses needs labelled data: batches of (images, labels), an "
                             "(x, y) tuple of arrays, or an image folder path.")
        yield np.asarray(batch[0]), np.asarray(batch[1])


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
            ``(x, y)`` tuple of arrays, or an image folder path (class folders, or
            ``test/``/``val/`` folders of them: that split is used; classes are
            matched to ``class_names`` by name). Labels: ints or one-hot rows.
            Images: RGB pixels in 0..255 at the model's input size.
        k: rows returned (``None``: every image).
        class_names: class names in label order (default: the model's recorded
            ones, else the folder's, else ``"0"``, ``"1"``, ...).
        paths: the file of each image, in data order (filled in for a folder).
        batch_size: for arrays and folders.
        split: for a folder: ``None`` (its ``test/``, else ``val/``, else its class
            folders, as :func:`tfx_transfer.evaluate_model`), ``"test"``, ``"val"``,
            ``"train"`` or ``"all"``.

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
    if isinstance(data, (str, os.PathLike)):
        if not Path(data).is_dir():
            raise FileNotFoundError(f"image folder {str(data)!r} does not exist.")
        batches, paths, class_names = _folder_batches(data, model, class_names, batch_size, split)
    else:
        batches = _batches(data, batch_size)
    losses, truths, probs_all, kept = [], [], [], {}
    budget = keep_images
    offset = 0
    for images, labels in batches:
        probs = _probabilities(model, images)
        y = _int_labels(labels)
        if len(y) != len(probs):
            raise ValueError(f"a batch of {len(probs)} images has {len(y)} labels.")
        if y.size and (y.min() < 0 or y.max() >= probs.shape[1]):
            raise ValueError(f"label {int(y.max() if y.max() >= probs.shape[1] else y.min())} is "
                             f"outside 0..{probs.shape[1] - 1} (the model has {probs.shape[1]} "
                             "classes).")
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
        >>> x, y = np.zeros((3, 8, 8, 3), "uint8"), np.array([0, 1, 1])
        >>> rows = top_losses(lambda images: np.full((len(images), 2), .5), (x, y), k=2)
        >>> write_top_losses_csv(rows, "/tmp/top_losses.csv").read_text().splitlines()[1]
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

    Example:
        >>> x, y = np.zeros((3, 8, 8, 3), "uint8"), np.array([0, 1, 1])
        >>> rows = top_losses(lambda images: np.full((len(images), 2), .5), (x, y), k=2)
        >>> fig = plot_top_losses(rows, None, "/tmp/top_losses.png")
    """
    from matplotlib.figure import Figure

    from tfx_transfer.evaluation.gradcam import explain, overlay

    if not rows:
        raise ValueError("plot_top_losses: no rows to plot.")
    images = np.stack([np.asarray(row["image"]) for row in rows])
    heatmaps = None
    if model is not None and _is_keras_transfer_model(model):
        heatmaps = explain(model, images, class_index=[row["predicted"] for row in rows])
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
                     batch_size: int = 32, split: str | None = None) -> dict[str, str]:
    """:func:`top_losses`, then ``top_losses.png`` (k worst) and ``top_losses.csv`` (every image).

    Returns ``{"top_losses_png": path, "top_losses_csv": path}``.

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
    return {"top_losses_png": str(png), "top_losses_csv": str(csv_path)}
