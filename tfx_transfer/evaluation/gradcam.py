"""Grad-CAM that works on nested transfer models: where in the image the class came from.

The keras.io Grad-CAM recipe builds ``keras.Model(model.inputs, [conv_layer.output,
model.output])``; with a ``keras.applications`` backbone nested as a layer that
fails with "Graph disconnected" (the conv layer lives in the backbone's graph, not
the outer model's). Here the model is split where our models are split anyway::

    features = backbone(preprocess(pixels))      # the backbone's output feature map
    score    = head(features)[class]              # the class logit (softmax input)

Both halves are the model's own layers (its parts, :func:`tfx_transfer.model_parts`:
backbone, preprocessing and head), called directly: no graph is re-wired. The
augmentation layer is skipped (it is identity at inference anyway). The
gradient of the score with respect to the feature map, averaged over space, weighs
the feature channels (Selvaraju et al. 2017); the ReLU of the weighted sum,
divided by its maximum and resized to the input, is the heatmap. For a global
average pooling head this equals the class activation map (CAM) exactly.
Drawing the heatmaps and explaining image files: :mod:`tfx_transfer.evaluation.explain_plots`.

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

from collections.abc import Callable
from typing import Any

import keras
import numpy as np
from keras import ops

from tfx_transfer.models.parts import model_parts


def _preprocess(model: keras.Model) -> Callable[[Any], Any]:
    try:
        return model_parts(model).preprocess
    except ValueError as exc:
        raise ValueError(f"Model {model.name!r} has no Preprocess layer; explain() takes "
                         "a build_transfer_model() model (or one loaded from a run's "
                         "model.keras).") from exc


def class_logits(head: keras.Model, features: Any) -> Any:
    """The head's class scores before the softmax (its last Dense layer's pre-activation).

    Runs the head's layers one by one in inference mode (Dropout off); a
    :class:`~tfx_transfer.CosineClassifier` gives its ``logits``; when the last layer
    is neither, its output is the score.

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
    if hasattr(last, "logits"):  # CosineClassifier: scale * cosine
        return last.logits(x)
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


def resize_maps(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Maps ``(N, h, w)`` resized bilinearly to ``size``, each again peaking at 1 (0 stays 0).

    Example:
        >>> resize_maps(np.array([[[0.0, 1.0]]], "float32"), (2, 4)).shape
        (1, 2, 4)
    """
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
    parts = model_parts(model)
    backbone, head = parts.backbone_model, parts.head
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
        >>> model = tt.build_transfer_model("mobilenet", 3, input_shape=(32, 32, 3),
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
        out.append(np.clip(resize_maps(maps, size), 0.0, 1.0))
    heatmaps = np.concatenate(out) if out else np.zeros((0, *size), np.float32)
    return heatmaps.astype(np.float32)
