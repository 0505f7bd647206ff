"""Grad-CAM pictures: overlays, one figure per image, contact sheets, and image files explained.

The heatmaps come from :func:`tfx_transfer.evaluation.gradcam.explain` (or
:func:`~tfx_transfer.evaluation.gradcam.gradcam`); this module draws them and
writes the PNGs of ``tfx-transfer explain`` (:func:`explain_files`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tfx_transfer.defaults import default_top_k
from tfx_transfer.evaluation.gradcam import gradcam, resize_maps
from tfx_transfer.evaluation.multilabel import is_multi_label
from tfx_transfer.evaluation.plots import save_figure


def overlay(image: Any, heatmap: Any, alpha: float = 0.45, cmap: str = "jet") -> np.ndarray:
    """The image with the heatmap blended on top, uint8 ``(H, W, 3)``.

    Args:
        image: ``(H, W, 3)`` RGB pixels in 0..255.
        heatmap: ``(H, W)`` in [0, 1] (:func:`~tfx_transfer.explain`), the image's size.
        alpha: weight of the coloured heatmap (0: the image alone, 1: the heatmap alone).
        cmap: the matplotlib colormap that colours the heatmap.

    Example:
        >>> overlay(np.zeros((8, 8, 3), "uint8"), np.ones((8, 8))).shape
        (8, 8, 3)
    """
    from matplotlib import colormaps

    image = np.clip(np.asarray(image, np.float32), 0, 255)
    heatmap = np.clip(np.asarray(heatmap, np.float32), 0, 1)
    if heatmap.shape != image.shape[:2]:
        raise ValueError(f"heatmap {heatmap.shape} and image {image.shape} differ in size.")
    colours = colormaps[cmap](heatmap)[..., :3] * 255.0
    return np.clip((1 - alpha) * image + alpha * colours, 0, 255).astype(np.uint8)


def plot_explanation(image: Any, heatmap: Any, probabilities: Any, class_names: Sequence[str],
                     path: str | os.PathLike | None = None, top_k: int | None = None,
                     title: str | None = None) -> Any:
    """One figure: the image, its Grad-CAM heatmap, the overlay and the top-k class scores.

    Args:
        image: ``(H, W, 3)`` RGB pixels in 0..255.
        heatmap: ``(H, W)`` in [0, 1] (:func:`~tfx_transfer.explain`).
        probabilities: the ``C`` class scores of the image.
        class_names: the ``C`` class names.
        path: where to save the PNG (``None``: not saved).
        top_k: classes shown (default :func:`tfx_transfer.defaults.default_top_k`).
        title: the figure's title.

    Example:
        >>> import os, tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "explained.png")
        >>> fig = plot_explanation(np.zeros((32, 32, 3), "uint8"), np.ones((32, 32)),
        ...                        [0.7, 0.3], ["cat", "dog"], path)
        >>> os.path.isfile(path)
        True
    """
    from matplotlib.figure import Figure

    probabilities = np.asarray(probabilities, np.float64).reshape(-1)
    names = [str(n) for n in class_names]
    if len(names) != len(probabilities):
        raise ValueError(f"{len(names)} class names for {len(probabilities)} scores.")
    k = default_top_k(len(names)) if top_k is None else top_k
    top = np.argsort(-probabilities, kind="stable")[:max(1, k)]
    fig = Figure(figsize=(11, 3.0), dpi=100)
    ax = fig.add_subplot(1, 4, 1)
    ax.imshow(np.clip(np.asarray(image), 0, 255).astype(np.uint8))
    ax.set_title("image", fontsize=9)
    ax.axis("off")
    ax = fig.add_subplot(1, 4, 2)
    ax.imshow(np.clip(np.asarray(heatmap, np.float32), 0, 1), cmap="jet", vmin=0, vmax=1)
    ax.set_title(f"Grad-CAM: {names[top[0]]}", fontsize=9)
    ax.axis("off")
    ax = fig.add_subplot(1, 4, 3)
    ax.imshow(overlay(image, heatmap))
    ax.set_title("overlay", fontsize=9)
    ax.axis("off")
    ax = fig.add_subplot(1, 4, 4)
    ax.barh(range(len(top))[::-1], probabilities[top], color="tab:blue")
    ax.set_yticks(range(len(top))[::-1], [names[i] for i in top], fontsize=8)
    ax.set_xlim(0, 1)
    ax.set_xlabel("probability", fontsize=8)
    for k, i in enumerate(top):
        ax.text(min(probabilities[i] + 0.02, 0.8), len(top) - 1 - k, f"{probabilities[i]:.3f}",
                va="center", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_contact_sheet(images: Any, heatmaps: Any, titles: Sequence[str],
                       path: str | os.PathLike | None = None, cols: int = 4,
                       title: str | None = None) -> Any:
    """A grid of Grad-CAM overlays, one titled cell per image.

    Args:
        images: ``(N, H, W, 3)`` RGB pixels in 0..255.
        heatmaps: ``(N, H, W)`` in [0, 1], one per image (:func:`~tfx_transfer.explain`).
        titles: one title per image.
        path: where to save the PNG (``None``: not saved).
        cols: cells per row (at most ``N``).
        title: the figure's title.

    Returns:
        The ``matplotlib.figure.Figure``.

    Example:
        >>> import os, tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "sheet.png")
        >>> fig = plot_contact_sheet(np.zeros((2, 32, 32, 3), "uint8"), np.ones((2, 32, 32)),
        ...                          ["a", "b"], path)
        >>> os.path.isfile(path)
        True
    """
    from matplotlib.figure import Figure

    images, heatmaps = np.asarray(images), np.asarray(heatmaps)
    if not len(images) or len(images) != len(heatmaps) or len(titles) != len(images):
        raise ValueError(f"{len(images)} images, {len(heatmaps)} heatmaps and {len(titles)} "
                         "titles: pass one heatmap and one title per image (at least one).")
    cols = max(1, min(cols, len(images)))
    rows = -(-len(images) // cols)
    fig = Figure(figsize=(2.3 * cols, 2.5 * rows + (0.3 if title else 0)), dpi=100)
    for k in range(len(images)):
        ax = fig.add_subplot(rows, cols, k + 1)
        ax.imshow(overlay(images[k], heatmaps[k]))
        ax.set_title(titles[k], fontsize=7)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def _image_files(paths: Sequence[str | os.PathLike]) -> list[Path]:
    from tfx_transfer.data.files import IMAGE_EXTENSIONS, find_images

    files, _ = find_images(paths)
    if not files:
        raise ValueError(f"no image files in {[str(p) for p in paths]} (extensions: "
                         f"{', '.join(IMAGE_EXTENSIONS)}).")
    return files


def _label_pairs(model: Any, files: list[Path], images: np.ndarray) -> tuple[list, np.ndarray, list]:
    """A multi-label model's (file, image, label) for every label at or above its threshold."""
    from tfx_transfer.evaluation.multilabel import model_thresholds

    probs = np.asarray(model.predict_on_batch(images))
    above = probs >= model_thresholds(model, probs.shape[1])
    pairs = [(i, c) for i in range(len(files))
             for c in (np.flatnonzero(above[i]).tolist() or [int(probs[i].argmax())])]
    return [files[i] for i, _ in pairs], images[[i for i, _ in pairs]], [c for _, c in pairs]


def explain_files(model: Any, paths: Sequence[str | os.PathLike], out: str | os.PathLike,
                  class_names: Sequence[str] | None = None, top_k: int | None = None,
                  batch_size: int = 16) -> dict[str, Any]:
    """Explain image files: one PNG per image (image, heatmap, overlay, top-k) and a contact sheet.

    What ``tfx-transfer explain RUN_DIR IMAGE_OR_FOLDER... --out DIR`` runs.

    Args:
        model: a transfer model, a run folder (``model.keras`` + ``config.json``,
            whose class names are used) or a ``.keras`` file.
        paths: image files and/or folders (searched recursively).
        out: output folder: ``<image name>.png`` each, and ``contact_sheet.png``.
        class_names: default: the run's (or ``"0"``, ``"1"``, ...).
        top_k: class scores shown per image (default
            :func:`tfx_transfer.defaults.default_top_k`).
        batch_size: images per Grad-CAM call.

    Returns:
        ``{"files": [png per image], "contact_sheet": path, "rows": [{"path",
        "predicted_class", "probability"}]}``. A multi-label model gets one PNG and
        row per label at or above its threshold (``<image name>-<label>.png``; the
        best label when none is).

    Example:
        >>> import os, tempfile, tfx_transfer as tt
        >>> from PIL import Image
        >>> tmp = tempfile.mkdtemp()
        >>> model = tt.build_transfer_model("vgg16", 2, input_shape=32, weights=None,
        ...                                 class_names=["cat", "dog"])
        >>> model.save(os.path.join(tmp, "model.keras"))
        >>> Image.new("RGB", (40, 40), "red").save(os.path.join(tmp, "photo.png"))
        >>> result = explain_files(os.path.join(tmp, "model.keras"), [os.path.join(tmp, "photo.png")],
        ...                        os.path.join(tmp, "explained"))
        >>> [os.path.basename(f) for f in result["files"]]
        ['photo.png']
    """
    import tensorflow as tf

    from tfx_transfer.data.decode import decode_and_resize
    from tfx_transfer.evaluation.evaluate import load_for_evaluation

    loaded, known = load_for_evaluation(model)
    if not hasattr(loaded, "get_layer"):
        raise ValueError("explain needs the Keras model (a run folder or a .keras file), not an "
                         "exported SavedModel: Grad-CAM needs the gradients of the model's layers.")
    files = _image_files(paths)
    size = tuple(int(s) for s in loaded.input_shape[1:3])
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    names: list[str] | None = list(class_names or known or []) or None
    written, rows, sheet_images, sheet_maps, titles, used = [], [], [], [], [], set()
    for start in range(0, len(files), batch_size):
        chunk = files[start:start + batch_size]
        images = np.stack([decode_and_resize(tf.io.read_file(str(p)), size).numpy() for p in chunk])
        label_of = None
        if is_multi_label(loaded):  # one explanation per label above its threshold (else the best)
            chunk, images, label_of = _label_pairs(loaded, chunk, images)
        maps, probs, classes = gradcam(loaded, images, class_index=label_of)
        heatmaps = np.clip(resize_maps(maps, size), 0.0, 1.0)
        if names is None:
            names = [str(i) for i in range(probs.shape[1])]
        for path, image, heatmap, p, c in zip(chunk, images, heatmaps, probs, classes):
            stem = path.stem if label_of is None else f"{path.stem}-{names[c]}"
            while stem in used:  # same file name in two folders
                stem += "_"
            used.add(stem)
            target = out / f"{stem}.png"
            plot_explanation(image, heatmap, p, names, target, top_k=top_k,
                             title=f"{path.name}: {names[c]} ({p[c]:.3f})")
            written.append(target)
            rows.append({"path": str(path), "predicted_class": names[c], "probability": float(p[c])})
            if len(sheet_images) < 48:
                sheet_images.append(image)
                sheet_maps.append(heatmap)
                titles.append(f"{path.name[:18]}\n{names[c]} ({p[c]:.2f})")
    sheet = out / "contact_sheet.png"
    plot_contact_sheet(np.stack(sheet_images), np.stack(sheet_maps), titles, sheet, cols=6,
                       title=f"Grad-CAM of the predicted class ({len(files)} images"
                             + (", first 48 shown)" if len(files) > 48 else ")"))
    return {"files": written, "contact_sheet": sheet, "rows": rows}
