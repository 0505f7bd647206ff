"""Grad-CAM that works on nested transfer models: where in the image the class came from.

The keras.io Grad-CAM recipe builds ``keras.Model(model.inputs, [conv_layer.output,
model.output])``; with a ``keras.applications`` backbone nested as a layer that
fails with "Graph disconnected" (the conv layer lives in the backbone's graph, not
the outer model's). Here the model is split where our models are split anyway::

    features = backbone(preprocess(pixels))      # the backbone's output feature map
    score    = head(features)[class]              # the class logit (softmax input)

Both halves are the model's own layers (:func:`tfx_transfer.get_backbone_model`,
:func:`tfx_transfer.get_head`), called directly: no graph is re-wired. The
augmentation layer is skipped (it is identity at inference anyway). The
gradient of the score with respect to the feature map, averaged over space, weighs
the feature channels (Selvaraju et al. 2017); the ReLU of the weighted sum,
divided by its maximum and resized to the input, is the heatmap. For a global
average pooling head this equals the class activation map (CAM) exactly.

The gradient is the only backend-specific step (:func:`feature_gradients`:
``tf.GradientTape`` on TensorFlow, ``jax.grad`` on JAX, autograd on PyTorch).

Example:
    >>> import numpy as np, tfx_transfer as tt
    >>> model = tt.build_transfer_model("vgg16", 2, input_shape=(32, 32, 3),
    ...                                 weights=None, head="avg")
    >>> heatmaps = tt.explain(model, np.zeros((2, 32, 32, 3), "uint8"))
    >>> heatmaps.shape, float(heatmaps.min()) >= 0, float(heatmaps.max()) <= 1
    ((2, 32, 32), True, True)
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np
from keras import ops

from tfx_transfer.defaults import default_top_k
from tfx_transfer.evaluation.plots import save_figure
from tfx_transfer.models.transfer_model import PREPROCESS_NAME, get_backbone_model, get_head


def _preprocess(model: keras.Model) -> Callable[[Any], Any]:
    try:
        layer = model.get_layer(PREPROCESS_NAME)
    except ValueError as exc:
        raise ValueError(f"Model {model.name!r} has no {PREPROCESS_NAME!r} layer; explain() takes "
                         "a build_transfer_model() model (or one loaded from a run's "
                         "model.keras).") from exc
    return layer


def class_logits(head: keras.Model, features: Any) -> Any:
    """The head's class scores before the softmax (its last Dense layer's pre-activation).

    Runs the head's layers one by one in inference mode (Dropout off); when the
    last layer is not a ``Dense``, its output is the score.

    Example:
        >>> import numpy as np, tfx_transfer as tt
        >>> model = tt.build_transfer_model("vgg16", 3, input_shape=(32, 32, 3),
        ...                                 weights=None, head="avg")
        >>> logits = class_logits(tt.get_head(model), np.ones((1, 1, 1, 512), "float32"))
        >>> tuple(logits.shape)
        (1, 3)
    """
    layers = list(head.layers)
    x = features
    for layer in layers[:-1]:
        x = layer(x, training=False)
    last = layers[-1]
    if isinstance(last, keras.layers.Dense):
        x = ops.cast(x, last.kernel.dtype)
        out = ops.matmul(x, last.kernel)
        return out + last.bias if last.use_bias else out
    return last(x, training=False)


def feature_gradients(score_fn: Callable[[Any], Any], features: Any) -> np.ndarray:
    """``d sum(score_fn(features)) / d features`` on the current Keras backend, as numpy.

    ``score_fn`` maps the feature map ``(N, h, w, C)`` to one score per image
    ``(N,)``; images are independent (inference mode), so the gradient of the sum
    is each image's own gradient. The one backend-specific function of the module.

    Example:
        >>> import numpy as np
        >>> g = feature_gradients(lambda f: ops.sum(f ** 2, axis=(1, 2, 3)),
        ...                       np.ones((1, 2, 2, 1), "float32"))
        >>> g.ravel().tolist()
        [2.0, 2.0, 2.0, 2.0]
    """
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        features = tf.convert_to_tensor(features)
        with tf.GradientTape() as tape:
            tape.watch(features)
            total = tf.reduce_sum(score_fn(features))
        return tape.gradient(total, features).numpy()
    if backend == "jax":
        import jax
        import jax.numpy as jnp

        return np.asarray(jax.grad(lambda f: jnp.sum(score_fn(f)))(jnp.asarray(features)))
    if backend == "torch":
        import torch

        features = torch.as_tensor(np.asarray(features)).requires_grad_(True)
        total = torch.sum(score_fn(features))
        (grad,) = torch.autograd.grad(total, features)
        return grad.detach().cpu().numpy()
    raise ValueError(f"explain() supports the tensorflow, jax and torch Keras backends, not "
                     f"{backend!r}; set KERAS_BACKEND to one of those.")


def _class_indices(class_index: Any, n: int, num_classes: int) -> np.ndarray | None:
    if class_index is None:
        return None
    if isinstance(class_index, (int, np.integer)) and not isinstance(class_index, bool):
        indices = np.full(n, int(class_index))
    else:
        indices = np.asarray(class_index).reshape(-1)
        if len(indices) != n or not np.issubdtype(indices.dtype, np.integer):
            raise ValueError(f"class_index={class_index!r}: pass None (the predicted class), one "
                             f"int, or one int per image ({n} images).")
    bad = indices[(indices < 0) | (indices >= num_classes)]
    if bad.size:
        raise ValueError(f"class_index {int(bad[0])} is outside 0..{num_classes - 1} (the model "
                         f"has {num_classes} classes).")
    return indices.astype(np.int64)


def _resize(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if maps.shape[1:] == size:
        return maps
    resized = ops.image.resize(maps[..., None].astype("float32"), size, interpolation="bilinear")
    resized = np.clip(np.asarray(ops.convert_to_numpy(resized))[..., 0], 0.0, None)
    peak = resized.max(axis=(1, 2), keepdims=True)  # the peak again at 1 after interpolation
    return np.divide(resized, peak, out=np.zeros_like(resized), where=peak > 0)


def gradcam(model: keras.Model, images: Any, class_index: Any = None,
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Grad-CAM maps at the feature-map resolution, the probabilities and the explained classes.

    Returns ``(maps (N, h, w) in [0, 1], probabilities (N, C), classes (N,))``;
    :func:`explain` resizes the maps to the input. A map is all zeros when no
    location speaks for the class (every weighted sum is negative).

    Args:
        model: a :func:`tfx_transfer.build_transfer_model` model.
        images: ``(N, H, W, 3)`` (or one ``(H, W, 3)``) RGB pixels in 0..255 at the
            model's input size.
        class_index: ``None`` explains each image's predicted class; an int that
            class for every image; a sequence one class per image.

    Example:
        >>> import numpy as np, tfx_transfer as tt
        >>> model = tt.build_transfer_model("vgg16", 2, input_shape=(32, 32, 3),
        ...                                 weights=None, head="avg")
        >>> maps, probs, classes = gradcam(model, np.zeros((1, 32, 32, 3), "uint8"), 1)
        >>> maps.shape, classes.tolist()
        ((1, 1, 1), [1])
    """
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[None]
    expected = tuple(model.input_shape[1:])
    if images.ndim != 4 or tuple(images.shape[1:]) != expected:
        raise ValueError(f"images of shape {images.shape}: pass a batch (N, {expected[0]}, "
                         f"{expected[1]}, 3) of RGB pixels in 0..255 at the model's input size "
                         "(tfx_transfer.decode_and_resize reads and resizes files).")
    backbone, head = get_backbone_model(model), get_head(model)
    # the compiled predict step (inference mode): as fast as the model's own forward pass
    features = backbone.predict_on_batch(_preprocess(model)(images))
    features = np.asarray(ops.convert_to_numpy(features), np.float32)
    probabilities = np.asarray(ops.convert_to_numpy(head(features, training=False)), np.float64)
    num_classes = probabilities.shape[1]
    indices = _class_indices(class_index, len(images), num_classes)
    if indices is None:
        indices = probabilities.argmax(axis=1)
    onehot = ops.convert_to_tensor(np.eye(num_classes, dtype="float32")[indices])

    def score(f: Any) -> Any:
        return ops.sum(ops.cast(class_logits(head, f), "float32") * onehot, axis=1)

    grads = feature_gradients(score, features)
    weights = grads.mean(axis=(1, 2), keepdims=True)  # (N, 1, 1, C): channel importance
    maps = np.maximum((weights * features).sum(axis=-1), 0.0)
    peak = maps.max(axis=(1, 2), keepdims=True)
    maps = np.divide(maps, peak, out=np.zeros_like(maps), where=peak > 0)
    return maps.astype(np.float32), probabilities, indices


def explain(model: keras.Model, images: Any, class_index: Any = None,
            batch_size: int = 32) -> np.ndarray:
    """Grad-CAM heatmaps ``(N, H, W)`` in [0, 1] at the input resolution.

    Args:
        model: a :func:`tfx_transfer.build_transfer_model` model (any registry
            backbone, any head), e.g. loaded from a run's ``model.keras``.
        images: ``(N, H, W, 3)`` (or one ``(H, W, 3)``) RGB pixels in 0..255 at the
            model's input size, uint8 or float.
        class_index: ``None`` explains each image's predicted class; an int explains
            that class for every image; a sequence gives one class per image.
        batch_size: images per backbone call.

    Returns:
        float32 ``(N, H, W)``: 1 where the evidence for the class is strongest, 0
        where there is none (bilinear upsampling of the ``h x w`` feature-map grid).

    Example:
        >>> import numpy as np, tfx_transfer as tt
        >>> model = tt.build_transfer_model("mobilenetv2", 3, input_shape=(32, 32, 3),
        ...                                 weights=None, head="avg")
        >>> tt.explain(model, np.zeros((2, 32, 32, 3), "uint8"), class_index=[0, 2]).shape
        (2, 32, 32)
    """
    images = np.asarray(images)
    single = images.ndim == 3
    if single:
        images = images[None]
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} must be >= 1.")
    classes = class_index
    if class_index is not None and not isinstance(class_index, (int, np.integer)):
        classes = np.asarray(class_index).reshape(-1)
        if len(classes) != len(images):
            raise ValueError(f"class_index has {len(classes)} entries for {len(images)} images; "
                             "pass one per image, one int, or None.")
    size = tuple(int(s) for s in model.input_shape[1:3])
    out = []
    for start in range(0, len(images), batch_size):
        part = classes if classes is None or isinstance(classes, (int, np.integer)) \
            else classes[start:start + batch_size]
        maps, _, _ = gradcam(model, images[start:start + batch_size], part)
        out.append(np.clip(_resize(maps, size), 0.0, 1.0))
    heatmaps = np.concatenate(out) if out else np.zeros((0, *size), np.float32)
    return heatmaps.astype(np.float32)


def overlay(image: Any, heatmap: Any, alpha: float = 0.45, cmap: str = "jet") -> np.ndarray:
    """The image with the heatmap blended on top, uint8 ``(H, W, 3)``.

    Args:
        image: ``(H, W, 3)`` RGB pixels in 0..255.
        heatmap: ``(H, W)`` in [0, 1] (:func:`explain`), the image's size.
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
        heatmap: ``(H, W)`` in [0, 1] (:func:`explain`).
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
        heatmaps: ``(N, H, W)`` in [0, 1], one per image (:func:`explain`).
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
        "predicted_class", "probability"}]}``.

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
        maps, probs, classes = gradcam(loaded, images)
        heatmaps = np.clip(_resize(maps, size), 0.0, 1.0)
        if names is None:
            names = [str(i) for i in range(probs.shape[1])]
        for path, image, heatmap, p, c in zip(chunk, images, heatmaps, probs, classes):
            stem = path.stem
            while stem in used:  # same file name in two folders
                stem += "_"
            used.add(stem)
            target = out / f"{stem}.png"
            plot_explanation(image, heatmap, p, names, target, top_k=top_k,
                             title=f"{path.name}: {names[c]} ({p[c]:.3f})")
            written.append(str(target))
            rows.append({"path": str(path), "predicted_class": names[c], "probability": float(p[c])})
            if len(sheet_images) < 48:
                sheet_images.append(image)
                sheet_maps.append(heatmap)
                titles.append(f"{path.name[:18]}\n{names[c]} ({p[c]:.2f})")
    sheet = out / "contact_sheet.png"
    plot_contact_sheet(np.stack(sheet_images), np.stack(sheet_maps), titles, sheet, cols=6,
                       title=f"Grad-CAM of the predicted class ({len(files)} images"
                             + (", first 48 shown)" if len(files) > 48 else ")"))
    return {"files": written, "contact_sheet": str(sheet), "rows": rows}
