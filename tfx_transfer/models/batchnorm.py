"""BatchNorm statistics: find a model's BatchNormalization layers, re-estimate their moving statistics.

The one implementation behind two uses:

* after training from scratch, "precise BN": the moving averages are replaced by
  the average of the per-batch statistics over the training data
  (:func:`~tfx_transfer.training.scratch.recalibrate_batchnorm`, ``pool="batches"``);
* AdaBN, domain adaptation: the statistics become the exact moments over all the
  target images, optionally relative to the source domain's
  (:func:`~tfx_transfer.adapt`, ``pool="images"``, ``reference=``).

Both run the backbone (after its Preprocess layer; augmentation and head are not
run) in training mode with every BatchNormalization layer temporarily trainable
and at momentum 0, so that after each batch a layer's moving statistics are that
batch's; nothing else changes (no gradient step, every flag restored, the old
statistics put back if anything fails).

Example (:func:`recompute_batchnorm`'s example re-estimates them):
    >>> import tfx_transfer as tt
    >>> model = tt.build_transfer_model("mobilenet", 2, input_shape=32, weights=None)
    >>> len(batchnorm_layers(model))
    27
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from typing import Any

import keras
import numpy as np
from keras import ops

from tfx_transfer.models.layers import Backbone
from tfx_transfer.models.parts import model_parts

POOLS = ("images", "batches")


def batchnorm_layers(layer: keras.layers.Layer) -> list[keras.layers.BatchNormalization]:
    """Every BatchNormalization layer inside ``layer``, nested models included, in order, each once.

    ``layer`` is a model (a transfer model: its backbone's layers are searched), a
    :class:`~tfx_transfer.Backbone` layer or any layer with ``.layers``.

    Example:
        >>> import keras
        >>> inner = keras.Sequential([keras.Input((4,)), keras.layers.BatchNormalization(name="a")])
        >>> outer = keras.Sequential([keras.Input((4,)), inner, keras.layers.BatchNormalization(name="b")])
        >>> [bn.name for bn in batchnorm_layers(outer)]
        ['a', 'b']
    """
    found: list[keras.layers.BatchNormalization] = []
    seen: set[int] = set()

    def walk(parent: Any) -> None:
        children = [parent.model] if isinstance(parent, Backbone) else getattr(parent, "layers", [])
        for sub in children:
            if id(sub) in seen:
                continue
            seen.add(id(sub))
            if isinstance(sub, keras.layers.BatchNormalization):
                found.append(sub)
            else:
                walk(sub)

    walk(layer)
    return found


def _backbone_batchnorm(model: keras.Model) -> tuple[keras.Model, Any, list]:
    """``(backbone, preprocess layer, its BatchNorm layers)``, or a ValueError naming the fix."""
    parts = model_parts(model)
    backbone = parts.backbone_model
    layers = batchnorm_layers(backbone)
    if not layers:
        raise ValueError(
            f"Backbone {backbone.name!r} has no BatchNormalization layer, so it has no BatchNorm "
            "statistics to re-estimate; use a backbone with BatchNorm (resnet50, mobilenetv2, "
            "efficientnetb0, densenet121...).")
    return backbone, parts.preprocess, layers


def _numpy(variable: Any, dtype: Any = np.float64) -> np.ndarray:
    # Variables and eager tensors: .numpy() (np.array() of a TensorFlow variable warns under NumPy 2).
    value = np.asarray(variable.numpy() if hasattr(variable, "numpy") else ops.convert_to_numpy(variable))
    return value if dtype is None else value.astype(dtype)


def _images_of(batch: Any) -> Any:
    return batch[0] if isinstance(batch, (tuple, list)) else batch


def batchnorm_input_stats(model: keras.Model, images: Iterable[Any],
                          max_batches: int | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per-channel ``(mean, variance)`` of every backbone BatchNorm's *input* on ``images``.

    The model runs as it is (inference mode, its own statistics); the moments are
    exact over all pixels of all images. :func:`recompute_batchnorm` uses them
    (``reference=``) to describe the source domain as the trained model sees it.

    Args:
        model: a :func:`~tfx_transfer.build_transfer_model` model.
        images: batches of uint8 images, or ``(images, labels...)`` tuples (labels ignored).
        max_batches: at most this many batches (``None``: all).

    Example:
        >>> import numpy as np, tfx_transfer as tt
        >>> model = tt.build_transfer_model("mobilenet", 2, input_shape=32, weights=None)
        >>> stats = batchnorm_input_stats(model, [np.zeros((2, 32, 32, 3), "uint8")])
        >>> len(stats), stats[0][0].shape
        (27, (32,))
    """
    backbone, preprocess, layers = _backbone_batchnorm(model)
    try:
        probe = keras.Model(backbone.inputs, [layer.input for layer in layers])
    except (AttributeError, ValueError) as exc:
        raise ValueError(f"Cannot read the BatchNorm inputs of backbone {backbone.name!r} "
                         f"({exc}); call recompute_batchnorm without reference=.") from exc
    sums: list[list] | None = None
    for batch in itertools.islice(images, max_batches):
        outputs = probe(preprocess(_images_of(batch)), training=False)
        outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
        if sums is None:
            sums = [[0.0, 0.0, 0] for _ in outputs]
        for acc, x in zip(sums, outputs):
            flat = _numpy(x).reshape(-1, x.shape[-1])
            acc[0] = acc[0] + flat.sum(axis=0)
            acc[1] = acc[1] + (flat * flat).sum(axis=0)
            acc[2] += flat.shape[0]
    if sums is None:
        raise ValueError("batchnorm_input_stats: the images yielded no batch.")
    out = []
    for s1, s2, n in sums:
        mean = s1 / n
        out.append((mean, np.maximum(s2 / n - mean * mean, 0.0)))
    return out


def _source_maps(model: keras.Model, layers: list, old: list, reference: Any,
                 max_batches: int | None) -> list[tuple[Any, Any]]:
    """Per layer, the affine map ``(scale, shift)`` of the source's normalised activations.

    ``x_hat_source ~ scale * N(0, 1) + shift`` in the trained model; plain
    re-estimation is ``(1, 0)``.
    """
    if reference is None:
        return [(1.0, 0.0)] * len(layers)
    maps = []
    stats = batchnorm_input_stats(model, reference, max_batches)
    for layer, (mean_old, var_old), (mean_s, var_s) in zip(layers, old, stats):
        std_old = np.sqrt(var_old + layer.epsilon)
        maps.append((np.sqrt(var_s + layer.epsilon) / std_old, (mean_s - mean_old) / std_old))
    return maps


def recompute_batchnorm(
    model: keras.Model,
    images: Iterable[Any],
    reference: Iterable[Any] | None = None,
    max_batches: int | None = None,
    *,
    pool: str = "images",
) -> int:
    """Re-estimate every backbone BatchNorm's moving mean and variance on ``images``; in place.

    The backbone runs forward over the batches in training mode (see the module
    docstring) and each layer's per-batch statistics are pooled:

    * ``pool="images"`` (AdaBN): the exact moments over all images, each image
      weighted once: ``mean = E[x]``, ``var = E[x^2] - E[x]^2``;
    * ``pool="batches"`` ("precise BN"): the plain average of the per-batch means
      and variances, the quantity the exponential moving averages estimate during
      training, without their memory of the start values.

    ``reference`` (images of the source domain, labels ignored) makes it
    *source-relative*: AdaBN assumes the model's statistics are the source's, but a
    transfer model keeps the backbone's ImageNet statistics, measured on other
    images at another size, so plain AdaBN also moves the features of the source
    domain itself away from what the head was trained on. With ``reference``, each
    layer's new statistics are set so that the target's normalised activations get
    the mean and spread the source's had in the trained model:
    ``var' = (var_T + eps) * (var_old + eps) / (var_S + eps) - eps`` and
    ``mean' = mean_T - sqrt(var' + eps) * (mean_S - mean_old) / sqrt(var_old + eps)``
    (``mean_S, var_S``: the source's moments at the layer input, trained model;
    ``mean_T, var_T``: the target's, measured layer after layer with the earlier
    layers already adapted). When the model's statistics are the source's own this
    is exactly AdaBN.

    Args:
        model: a :func:`~tfx_transfer.build_transfer_model` model (changed in place).
        images: batches of uint8 images, or ``(images, labels...)`` tuples (labels
            are ignored).
        reference: optional batches of source-domain images (labels ignored).
        max_batches: at most this many batches of each (``None``: all).
        pool: ``"images"`` or ``"batches"`` (above).

    Returns:
        The number of images used.

    Raises:
        ValueError: the backbone has no BatchNormalization layer (e.g. VGG16); no
            batch in ``images``; an unknown ``pool``.

    Example:
        >>> import numpy as np, tfx_transfer as tt
        >>> model = tt.build_transfer_model("mobilenet", 2, input_shape=32, weights=None)
        >>> recompute_batchnorm(model, [np.zeros((4, 32, 32, 3), "uint8")] * 3, max_batches=2)  # images used
        8
    """
    if pool not in POOLS:
        raise ValueError(f"pool={pool!r}: choose 'images' (exact moments over all images) or "
                         "'batches' (average of the per-batch statistics).")
    backbone, preprocess, layers = _backbone_batchnorm(model)
    old = [(_numpy(layer.moving_mean), _numpy(layer.moving_variance)) for layer in layers]
    maps = _source_maps(model, layers, old, reference, max_batches)
    affine = [(None if layer.gamma is None else _numpy(layer.gamma, None),
               None if layer.beta is None else _numpy(layer.beta, None)) for layer in layers]
    saved = [(layer.trainable, layer.momentum) for layer in layers]
    sums = [[np.zeros(m.shape, np.float64), np.zeros(m.shape, np.float64)] for m, _ in old]
    images_used = weight = 0
    try:
        for layer, (scale, shift), (gamma, beta) in zip(layers, maps, affine):
            layer.trainable, layer.momentum = True, 0.0  # batch statistics; moving := this batch's
            if reference is None:
                continue
            if gamma is None or beta is None:
                raise ValueError(f"BatchNorm layer {layer.name!r} has no scale or center; "
                                 "call recompute_batchnorm without reference=.")
            layer.gamma.assign((gamma * scale).astype(gamma.dtype))
            layer.beta.assign((beta + gamma * shift).astype(beta.dtype))
        for batch in itertools.islice(images, max_batches):
            x = _images_of(batch)
            n = int(ops.shape(x)[0])
            backbone(preprocess(x), training=True)
            w = n if pool == "images" else 1
            for layer, (s1, s2) in zip(layers, sums):
                mean, var = _numpy(layer.moving_mean), _numpy(layer.moving_variance)
                s1 += w * mean
                s2 += w * (var + mean * mean if pool == "images" else var)
            images_used, weight = images_used + n, weight + w
        if not images_used:
            raise ValueError("recompute_batchnorm: the images yielded no batch.")
        for layer, (s1, s2), (scale, shift) in zip(layers, sums, maps):
            mean_t = s1 / weight
            var_t = np.maximum(s2 / weight - mean_t * mean_t, 0.0) if pool == "images" else s2 / weight
            var = (var_t + layer.epsilon) / np.square(scale) - layer.epsilon
            mean = mean_t - np.sqrt(var + layer.epsilon) * shift
            layer.moving_mean.assign(mean.astype(layer.moving_mean.dtype))
            layer.moving_variance.assign(np.maximum(var, 0.0).astype(layer.moving_variance.dtype))
    except BaseException:
        for layer, (mean, var) in zip(layers, old):  # nothing half-done
            layer.moving_mean.assign(mean.astype(layer.moving_mean.dtype))
            layer.moving_variance.assign(var.astype(layer.moving_variance.dtype))
        raise
    finally:
        for layer, (trainable, momentum), (gamma, beta) in zip(layers, saved, affine):
            layer.trainable, layer.momentum = trainable, momentum
            if gamma is not None:
                layer.gamma.assign(gamma)
            if beta is not None:
                layer.beta.assign(beta)
    return images_used
