"""Unsupervised domain adaptation: a trained classifier, new-domain images without labels.

The model was trained on a labelled *source* domain; the *target* domain (another
camera, lighting, scanner, season...) has images but no labels, and accuracy
drops there. :func:`adapt` returns an adapted copy of the model; target labels
are never read, even when the target folder has class folders.

Methods:

* ``"adabn"`` -- AdaBN (Li et al. 2016, "Revisiting Batch Normalization For
  Practical Domain Adaptation"): every BatchNormalization layer of the backbone
  gets its moving mean and variance re-estimated on the target images (exact
  averages over all of them, not a momentum update). No weight changes, seconds
  of compute. AdaBN assumes the model's statistics are the *source's*; a transfer
  model keeps the backbone's ImageNet statistics (other images, another size), and
  plain AdaBN then also moves what the head learned on (measured: -23 points). So
  when ``source`` is given, its *images* (never its labels) make it
  source-relative (see :func:`recompute_batchnorm`), which is exactly AdaBN when
  the statistics are the source's. Needs a backbone with BatchNorm (ResNet,
  MobileNet, DenseNet, EfficientNet...); VGG has none and is refused.
* ``"coral"`` -- Deep CORAL (Sun & Saenko 2016): one ``model.fit`` on labelled
  source batches plus unlabelled target batches of the loss
  ``cross_entropy(source) + weight * ||C_s - C_t||_F^2 / (4 d^2)``, where ``C`` is
  the covariance of the features the classifier sees (pooled backbone features
  for an ``avg``/``max`` head, the hidden layer of a ``flatten`` head). The head
  and the backbone's top block(s) (``blocks``, BatchNorm kept frozen) train.
  Backend-neutral (``keras.ops``; the loss is a layer's ``add_loss``).
* ``"adabn+coral"`` -- AdaBN, then Deep CORAL on the target-normalised backbone.
* ``"default"`` -- ``"adabn"`` (with the source's images when given), chosen from
  measurements on shifted real photos (``docs/adaptation.md``): it gained on the
  shifts measured, more than CORAL, at a fraction of the cost.

Example:
    >>> import numpy as np, tfx_transfer as tt
    >>> from tfx_transfer.adaptation.adapt import adapt
    >>> model = tt.build_transfer_model("mobilenetv2", 2, input_shape=32,
    ...                                 weights=None, head="avg")
    >>> target = np.random.default_rng(0).integers(0, 255, (8, 32, 32, 3), dtype="uint8")
    >>> adapted = adapt(model, target, method="adabn")
    >>> adapted.output.shape
    (None, 2)
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np
from keras import ops

from tfx_transfer.data.files import IMAGE_EXTENSIONS, find_images, split_folders, visible_dirs
from tfx_transfer.models.parts import model_parts
from tfx_transfer.models.transfer_model import TransferModel, get_backbone_model

METHODS = ("adabn", "coral", "adabn+coral")
DEFAULT_METHOD = "adabn"
DEFAULT_CORAL_WEIGHT = 10.0


# -- target images (labels never read) -------------------------------------------


def image_files(folder: str | os.PathLike, split: str = "train") -> list[str]:
    """Image files under ``folder`` (recursive, sorted), without reading any label.

    Class sub-folders are allowed and their names ignored. A folder laid out as
    ``train/``, ``val/`` (``validation/``), ``test/`` gives the files of ``split``
    only (``"train"``: the images to adapt on; ``"val"``/``"test"``: held out).

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from PIL import Image
        >>> photos = Path(tempfile.mkdtemp())
        >>> for name in ("b.jpg", "a.png"):
        ...     Image.new("RGB", (8, 8)).save(photos / name)
        >>> [Path(p).name for p in image_files(photos)]
        ['a.png', 'b.jpg']
    """
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"Target folder {str(root)!r} does not exist or is not a folder.")
    splits = split_folders(root)
    if len(splits) > 1 or "train" not in splits or splits["train"] != root:
        key = "validation" if split in ("val", "validation") else split
        if key not in splits:
            raise ValueError(f"{root} has no {split}/ folder (it has {sorted(p.name for p in splits.values())}).")
        root = splits[key]
    found, _ = find_images(root)
    files = [str(f) for f in found]
    if not files:
        raise ValueError(
            f"No image files ({', '.join(IMAGE_EXTENSIONS)}) under {str(root)!r}; the target "
            "needs images of the new domain (labels are not needed)."
        )
    return files


def target_dataset(target: Any, image_size: tuple[int, int], batch_size: int = 32,
                   seed: int = 0, shuffle: bool = True,
                   count: bool = True) -> tuple[Any, int | None]:
    """``(batched tf.data of uint8 images, number of images)`` from a folder, array or dataset.

    ``target`` is a folder (see :func:`image_files`; undecodable files are left out
    with one warning), a ``uint8`` array ``(N, H, W, 3)``, or a batched ``tf.data``
    dataset of images or ``(images, labels, ...)`` tuples, whose labels are dropped.
    Counting a ``tf.data`` dataset means reading it once; ``count=False`` skips
    that and gives ``None`` as the number.

    Example:
        >>> import numpy as np
        >>> ds, n = target_dataset(np.zeros((5, 32, 32, 3), "uint8"), (32, 32), batch_size=2)
        >>> n, [len(batch) for batch in ds]
        (5, [2, 2, 1])
    """
    import tensorflow as tf

    from tfx_transfer.data.decode import decode_and_resize

    if isinstance(target, (str, os.PathLike)):
        paths = image_files(target)
        load = lambda p: decode_and_resize(tf.io.read_file(p), image_size)  # noqa: E731
        ok = tf.data.Dataset.from_tensor_slices((np.arange(len(paths)), paths)).map(
            lambda i, p: (i, tf.shape(load(p))), num_parallel_calls=tf.data.AUTOTUNE)
        good = {int(i) for i, _ in ok.ignore_errors().as_numpy_iterator()}
        bad = [p for i, p in enumerate(paths) if i not in good]
        if bad:
            warnings.warn(f"Skipped {len(bad)} target file(s) that cannot be decoded: "
                          + ", ".join(bad[:10]) + (" ..." if len(bad) > 10 else ""),
                          UserWarning, stacklevel=3)
        paths = [p for i, p in enumerate(paths) if i in good]
        if not paths:
            raise ValueError(f"No decodable image in the target folder {str(target)!r}.")
        ds = tf.data.Dataset.from_tensor_slices(paths)
        if shuffle:
            ds = ds.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
        ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size)
        return ds.prefetch(tf.data.AUTOTUNE), len(paths)
    if isinstance(target, np.ndarray):
        if target.ndim != 4 or target.shape[-1] != 3:
            raise ValueError(f"target array has shape {target.shape}; expected (N, H, W, 3) "
                             "RGB pixels in 0..255.")
        _check_size(tuple(target.shape[1:3]), image_size, "target images")
        ds = tf.data.Dataset.from_tensor_slices(target)
        if shuffle:
            ds = ds.shuffle(len(target), seed=seed, reshuffle_each_iteration=True)
        return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE), len(target)
    if isinstance(target, tf.data.Dataset):
        spec = target.element_spec
        if isinstance(spec, (tuple, list)):
            target = target.map(lambda *parts: parts[0])  # labels dropped, never read
        if int(target.cardinality()) <= 0:
            raise ValueError("The target dataset has no known size; pass a folder or an array, "
                             "or a finite batched dataset.")
        return target, (int(sum(int(tf.shape(b)[0]) for b in target)) if count else None)
    raise TypeError(f"target={type(target).__name__}: pass a folder path, a uint8 image array "
                    "(N, H, W, 3) or a batched tf.data dataset.")


def _check_size(got: tuple, want: tuple, what: str) -> None:
    if tuple(int(v) for v in got) != tuple(int(v) for v in want):
        raise ValueError(f"{what} are {got[0]}x{got[1]} but the model takes {want[0]}x{want[1]}; "
                         f"resize them to {want[0]}x{want[1]} (folders are resized for you).")


# -- AdaBN -------------------------------------------------------------------------


def _bn_layers(layer: keras.layers.Layer) -> list[keras.layers.BatchNormalization]:
    found = []
    for sub in getattr(layer, "layers", []):
        if isinstance(sub, keras.layers.BatchNormalization):
            found.append(sub)
        elif hasattr(sub, "layers"):
            found += _bn_layers(sub)
    return found


def _require_batchnorm(model: keras.Model) -> list[keras.layers.BatchNormalization]:
    backbone = get_backbone_model(model)
    layers = _bn_layers(backbone)
    if not layers:
        raise ValueError(
            f"Backbone {backbone.name!r} has no BatchNormalization layer, so AdaBN has no "
            "statistics to adapt; use method='coral' (feature alignment), or a backbone with "
            "BatchNorm (resnet50, mobilenet, mobilenetv2, efficientnetb0...)."
        )
    return layers


def _numpy(variable: Any, dtype: Any = np.float64) -> np.ndarray:
    value = ops.convert_to_numpy(variable)
    return value if dtype is None else value.astype(dtype)


def _images_of(batch: Any) -> Any:
    return batch[0] if isinstance(batch, (tuple, list)) else batch


def batchnorm_input_stats(model: keras.Model, images: Any,
                          max_batches: int | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per-channel ``(mean, variance)`` of every backbone BatchNorm's *input* on ``images``.

    The model runs as it is (inference mode, its own statistics); the moments are
    exact over all pixels of all images. Used by :func:`recompute_batchnorm` to
    describe the source domain as the trained model sees it.

    Example:
        >>> import numpy as np, tfx_transfer as tt
        >>> model = tt.build_transfer_model("mobilenetv2", 2, input_shape=32,
        ...                                 weights=None, head="avg")
        >>> stats = batchnorm_input_stats(model, [np.zeros((2, 32, 32, 3), "uint8")])
        >>> stats[0][0].shape
        (32,)
    """
    parts = model_parts(model)
    backbone, preprocess = parts.backbone_model, parts.preprocess
    layers = _require_batchnorm(model)
    try:
        probe = keras.Model(backbone.inputs, [layer.input for layer in layers])
    except (AttributeError, ValueError) as exc:
        raise ValueError(f"Cannot read the BatchNorm inputs of backbone {backbone.name!r} "
                         f"({exc}); call recompute_batchnorm without reference=.") from exc
    sums: list[list] | None = None
    for batches, batch in enumerate(images):
        if max_batches is not None and batches >= max_batches:
            break
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


def recompute_batchnorm(model: keras.Model, images: Any, reference: Any = None,
                        max_batches: int | None = None) -> int:
    """AdaBN: re-estimate every backbone BatchNorm's moving mean/variance on ``images``.

    Each BatchNormalization layer of the backbone is switched, for the duration of
    the call only, to batch statistics (``trainable=True``, momentum 0), the
    backbone runs forward over the batches (Preprocess first; augmentation and head
    are not run), and the per-batch means and variances are pooled into the exact
    mean and variance over all images (weighted by batch size):
    ``mean = E[x]``, ``var = E[x^2] - E[x]^2``. Nothing else changes: no gradient
    step, gamma/beta and every other weight untouched, trainable flags restored.

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

    Returns:
        The number of target images used.

    Raises:
        ValueError: the backbone has no BatchNormalization layer (e.g. VGG16).

    Example:
        >>> import numpy as np, tfx_transfer as tt
        >>> model = tt.build_transfer_model("mobilenetv2", 2, input_shape=32,
        ...                                 weights=None, head="avg")
        >>> recompute_batchnorm(model, [np.zeros((4, 32, 32, 3), "uint8")] * 2)
        8
    """
    parts = model_parts(model)
    backbone, preprocess = parts.backbone_model, parts.preprocess
    layers = _require_batchnorm(model)
    old = [(_numpy(layer.moving_mean), _numpy(layer.moving_variance))
           for layer in layers]
    # Per layer: the affine map (scale a, shift b) the source's normalised activations
    # had, x_hat_source ~ a * N(0, 1) + b; plain AdaBN is a = 1, b = 0.
    maps = [(1.0, 0.0)] * len(layers)
    if reference is not None:
        source_stats = batchnorm_input_stats(model, reference, max_batches)
        maps = []
        for layer, (mean_old, var_old), (mean_s, var_s) in zip(layers, old, source_stats):
            std_old = np.sqrt(var_old + layer.epsilon)
            maps.append((np.sqrt(var_s + layer.epsilon) / std_old, (mean_s - mean_old) / std_old))
    affine = [(_numpy(layer.gamma, None) if layer.gamma is not None else None,
               _numpy(layer.beta, None) if layer.beta is not None else None) for layer in layers]
    saved = [(layer.trainable, layer.momentum) for layer in layers]
    sums = [[np.zeros(m.shape, np.float64), np.zeros(m.shape, np.float64)] for m, _ in old]
    count = 0
    try:
        for layer, (scale, shift), (gamma, beta) in zip(layers, maps, affine):
            layer.trainable, layer.momentum = True, 0.0  # batch stats; moving := this batch's
            if reference is None:
                continue
            if gamma is None or beta is None:
                raise ValueError(f"BatchNorm layer {layer.name!r} has no scale or center; "
                                 "call recompute_batchnorm without reference=.")
            layer.gamma.assign((gamma * scale).astype(gamma.dtype))
            layer.beta.assign((beta + gamma * shift).astype(beta.dtype))
        for batches, batch in enumerate(images):
            if max_batches is not None and batches >= max_batches:
                break
            x = _images_of(batch)
            n = int(ops.shape(x)[0])
            backbone(preprocess(x), training=True)
            for layer, (s1, s2) in zip(layers, sums):
                mean = _numpy(layer.moving_mean)
                var = _numpy(layer.moving_variance)
                s1 += n * mean
                s2 += n * (var + mean * mean)
            count += n
        if not count:
            raise ValueError("recompute_batchnorm: the target images yielded no batch.")
        for layer, (s1, s2), (scale, shift) in zip(layers, sums, maps):
            mean_t = s1 / count
            var_t = np.maximum(s2 / count - mean_t * mean_t, 0.0)
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
    return count


# -- Deep CORAL --------------------------------------------------------------------


def coral_loss(source_features: Any, target_features: Any) -> Any:
    """Deep CORAL loss: ``||C_s - C_t||_F^2 / (4 d^2)`` between feature covariances.

    Example:
        >>> import numpy as np
        >>> x = np.random.default_rng(0).normal(size=(16, 4)).astype("float32")
        >>> float(coral_loss(x, x))
        0.0
    """
    source_features = ops.cast(source_features, "float32")
    target_features = ops.cast(target_features, "float32")
    d = source_features.shape[-1]

    def covariance(x):
        n = ops.cast(ops.shape(x)[0], "float32")
        centred = x - ops.mean(x, axis=0, keepdims=True)
        return ops.matmul(ops.transpose(centred), centred) / ops.maximum(n - 1.0, 1.0)

    diff = covariance(source_features) - covariance(target_features)
    return ops.sum(ops.square(diff)) / (4.0 * d * d)


class CoralAlignment(keras.layers.Layer):
    """Adds ``weight * coral_loss(source, target)`` to the model's losses; returns ``source``.

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> source = rng.normal(size=(8, 4)).astype("float32")
        >>> target = rng.normal(size=(8, 4)).astype("float32")
        >>> layer = CoralAlignment(weight=1.0)
        >>> features = layer([source, target])  # source unchanged, the CORAL loss added
        >>> bool(np.allclose(features, source)), len(layer.losses)
        (True, 1)
    """

    def __init__(self, weight: float = DEFAULT_CORAL_WEIGHT, **kwargs: Any):
        super().__init__(**kwargs)
        self.weight = float(weight)

    def call(self, inputs):
        source, target = inputs
        self.add_loss(self.weight * coral_loss(source, target))
        return source

    def compute_output_shape(self, input_shapes):
        return input_shapes[0]

    def get_config(self) -> dict:
        return {**super().get_config(), "weight": self.weight}


def build_alignment_model(model: keras.Model, weight: float = DEFAULT_CORAL_WEIGHT) -> keras.Model:
    """Two inputs ``{"source", "target"}`` -> source class probabilities, plus the CORAL loss.

    Every layer is shared with ``model`` (training it trains ``model``). The
    features aligned are the classifier's input: the head's layers up to its last
    Dense, without Dropout (pooled backbone features for an avg/max head).

    Example:
        >>> import tfx_transfer as tt
        >>> model = tt.build_transfer_model("mobilenetv2", 2, input_shape=32,
        ...                                 weights=None, head="avg")
        >>> build_alignment_model(model).output.shape
        (None, 2)
    """
    parts = model_parts(model)
    backbone = parts.backbone  # the Backbone layer: inference mode as in the model
    preprocess, augmentation, head = parts.preprocess, parts.augmentation, parts.head
    head_layers = [l for l in head.layers if type(l).__name__ != "InputLayer"]
    classifier = head_layers[-1]
    body = [l for l in head_layers[:-1] if not isinstance(l, keras.layers.Dropout)]
    dropout = [l for l in head_layers[:-1] if isinstance(l, keras.layers.Dropout)]

    def features(x):
        if augmentation is not None:
            x = augmentation(x)
        x = backbone(preprocess(x))
        for layer in body:
            x = layer(x)
        return x

    shape = tuple(model.input_shape[1:])
    inputs = {"source": keras.Input(shape=shape, name="source"),
              "target": keras.Input(shape=shape, name="target")}
    source = CoralAlignment(weight, name="coral")([features(inputs["source"]),
                                                   features(inputs["target"])])
    for layer in dropout:
        source = layer(source)
    return keras.Model(inputs, classifier(source), name="coral_alignment")


def _source_dataset(source: Any, image_size: tuple[int, int], batch_size: int, seed: int,
                    class_names: Sequence[str] | None, num_classes: int) -> Any:
    import tensorflow as tf

    if isinstance(source, (str, os.PathLike)):
        from tfx_transfer.data.folder import load_image_folder

        folder = load_image_folder(source, image_size=image_size, batch_size=batch_size, seed=seed)
        if class_names is not None and list(folder.class_names) != list(class_names):
            raise ValueError(
                f"The source folder {str(source)!r} has classes {folder.class_names}, the model "
                f"{list(class_names)}; pass the labelled folder the model was trained on.")
        if folder.num_classes != num_classes:
            raise ValueError(
                f"The source folder {str(source)!r} has {folder.num_classes} classes, the model "
                f"outputs {num_classes}; pass the labelled folder the model was trained on.")
        return folder.train
    if isinstance(source, tf.data.Dataset):
        if not isinstance(source.element_spec, (tuple, list)):
            raise ValueError("The source dataset must yield (images, labels) batches.")
        return source
    raise TypeError(f"source={type(source).__name__}: pass a labelled folder or a batched "
                    "tf.data dataset of (images, labels).")


def _align(model: keras.Model, source: Any, target: Any, *, epochs: int,
           lr: float, batch_size: int, weight: float, blocks: Any, callbacks: Sequence,
           verbose: Any) -> keras.callbacks.History:
    import tensorflow as tf

    from tfx_transfer.models.freezing import unfreeze

    n_source = int(source.cardinality())
    if n_source <= 0:
        raise ValueError("The source dataset has no known number of batches; pass a folder.")
    steps = max(n_source, int(target.cardinality()))
    backbone = get_backbone_model(model)
    flags = (backbone.trainable, [layer.trainable for layer in backbone.layers])
    if blocks:
        unfreeze(model, blocks)
    trainer = build_alignment_model(model, weight)
    label_rank = source.element_spec[1].shape.rank
    loss = (keras.losses.SparseCategoricalCrossentropy() if label_rank == 1
            else keras.losses.CategoricalCrossentropy())
    trainer.compile(optimizer=keras.optimizers.Adam(lr), loss=loss, metrics=["accuracy"])
    pairs = tf.data.Dataset.zip(source.repeat(), target.repeat()).map(
        lambda s, t: ({"source": s[0], "target": t}, s[1]))
    # Equal batch sizes keep the two covariance estimates comparable.
    try:
        return trainer.fit(pairs.prefetch(tf.data.AUTOTUNE), epochs=epochs, steps_per_epoch=steps,
                           callbacks=list(callbacks), verbose=verbose)
    finally:
        backbone.trainable = flags[0]
        for layer, trainable in zip(backbone.layers, flags[1]):
            layer.trainable = trainable


# -- the entry point ---------------------------------------------------------------


def copy_model(model: keras.Model) -> keras.Model:
    """An independent copy of a transfer model (same layers, names, weights, trainable flags).

    Example:
        >>> import tfx_transfer as tt
        >>> model = tt.build_transfer_model("mobilenetv2", 2, input_shape=32, weights=None)
        >>> copy_model(model).count_params() == model.count_params()
        True
    """
    if isinstance(model, TransferModel):  # keeps the class, its settings and the Backbone layer
        clone = TransferModel.from_config(model.get_config())
    else:
        clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    pairs = zip(_all_layers(model), _all_layers(clone))
    for a, b in pairs:
        b.trainable = a.trainable
    return clone


def _all_layers(layer: keras.layers.Layer) -> list[keras.layers.Layer]:
    out = []
    for sub in getattr(layer, "layers", []):
        out.append(sub)
        out += _all_layers(sub) if hasattr(sub, "layers") else []
    return out


def adapt(
    model: keras.Model,
    target: Any,
    method: str = "default",
    source: Any = None,
    *,
    epochs: int = 10,
    lr: float = 1e-4,
    batch_size: int = 32,
    image_size: int | Sequence[int] | None = None,
    seed: int = 0,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    weight: float = DEFAULT_CORAL_WEIGHT,
    blocks: Any = "default",
    class_names: Sequence[str] | None = None,
    verbose: Any = 0,
) -> keras.Model:
    """Adapt a trained classifier to an unlabelled target domain; returns an adapted copy.

    Args:
        model: a :func:`~tfx_transfer.build_transfer_model` model trained on the
            source (also one built on :func:`~tfx_transfer.pretrain` weights). Not
            changed: the result is a copy with the same structure (exports the same way).
        target: target-domain images: a folder (searched recursively; class folders
            allowed but their names are never read; with ``train/``/``val/`` only
            ``train/`` is used), a uint8 array ``(N, H, W, 3)`` or a batched
            ``tf.data`` dataset (labels, if any, are dropped unread).
        method: ``"default"`` (= ``"adabn"``, see ``docs/adaptation.md``),
            ``"adabn"``, ``"coral"`` or ``"adabn+coral"``.
        source: the source data: a folder of class folders (its ``train/`` split
            when it has one) or a batched ``tf.data`` of ``(images, labels)``.
            Required by ``"coral"`` (labels used); ``"adabn"`` uses its images only
            (source-relative AdaBN) and warns when it is missing.
        epochs, lr: the CORAL ``fit``: epochs (one epoch = as many steps as the
            larger of source and target has batches) and Adam learning rate.
        batch_size: images per batch, for both domains.
        image_size: the images' size; must be the model's input size (the default).
        seed: seeds shuffling and training.
        callbacks: Keras callbacks for the CORAL ``fit`` (the kit's callbacks work).
        weight: the CORAL loss weight.
        blocks: backbone blocks trained by CORAL (any :func:`~tfx_transfer.unfreeze`
            form; ``None`` trains the head only). BatchNorm stays frozen.
        class_names: the model's classes, checked against a source folder's.
        verbose: passed to ``fit``.

    Returns:
        The adapted model (a new ``keras.Model``).

    Raises:
        ValueError: an unknown method; AdaBN on a backbone without BatchNorm; no
            source for CORAL; image sizes that do not match the model.

    Example:
        >>> import numpy as np, tfx_transfer as tt
        >>> model = tt.build_transfer_model("mobilenetv2", 2, input_shape=32,
        ...                                 weights=None, head="avg")
        >>> rng = np.random.default_rng(0)
        >>> src = (rng.integers(0, 255, (8, 32, 32, 3), dtype="uint8"), np.arange(8) % 2)
        >>> import tensorflow as tf
        >>> source = tf.data.Dataset.from_tensor_slices(src).batch(4)
        >>> adapted = adapt(model, src[0] // 2, "coral", source, epochs=1, batch_size=4)
        >>> adapted.output.shape
        (None, 2)
    """
    chosen = DEFAULT_METHOD if method == "default" else method
    if chosen not in METHODS:
        raise ValueError(f"method={method!r}: choose 'default' ({DEFAULT_METHOD}) or one of "
                         f"{METHODS}.")
    want = tuple(int(v) for v in model.input_shape[1:3])
    if image_size is not None:
        size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        _check_size(size, want, f"image_size={image_size!r}: images")
    uses_coral = "coral" in chosen
    if uses_coral and source is None:
        raise ValueError(f"method={chosen!r} trains on labelled source batches: pass source= "
                         "(the labelled folder the model was trained on). method='adabn' needs "
                         "no source.")
    if epochs < 1 and uses_coral:
        raise ValueError(f"epochs={epochs!r}: CORAL needs at least one epoch.")
    if "adabn" in chosen:
        _require_batchnorm(model)
    keras.utils.set_random_seed(seed)
    adapted = copy_model(model)
    images, n_target = target_dataset(target, want, batch_size, seed=seed, count=False)
    if "adabn" in chosen:
        reference = None
        if source is not None:  # source images only: labels are not needed here
            reference = target_dataset(source, want, batch_size, seed=seed, shuffle=False,
                                       count=False)[0]
        else:
            warnings.warn(
                "adapt(method='adabn') without source=: plain AdaBN, right only when the "
                "model's BatchNorm statistics are the source domain's (a backbone trained on "
                "it). A transfer model keeps ImageNet statistics, and plain AdaBN then lost "
                "accuracy in docs/adaptation.md; pass source= (its images only are read).",
                UserWarning, stacklevel=2)
        n_target = recompute_batchnorm(adapted, images, reference=reference)
    if uses_coral:
        num_classes = int(model.output_shape[-1])
        labelled = _source_dataset(source, want, batch_size, seed, class_names, num_classes)
        _align(adapted, labelled, images, epochs=epochs, lr=lr, batch_size=batch_size,
               weight=weight, blocks=blocks, callbacks=callbacks, verbose=verbose)
    if n_target is None:
        n_target = target_dataset(target, want, batch_size, shuffle=False)[1]
    adapted._tfx_adaptation = {"method": chosen, "target_images": n_target}
    return adapted


# -- run folders (``tfx-transfer adapt``) --------------------------------------------


def _labelled_classes(folder: Path) -> list[str]:
    """The class folders ``evaluate_model`` would score (test/, val/ or the folder itself)."""
    splits = split_folders(folder)
    folder = next(splits[n] for n in ("test", "validation", "train") if n in splits)
    return [p.name for p in visible_dirs(folder)]


def adapt_run(
    run_dir: str | os.PathLike,
    target: str | os.PathLike,
    out: str | os.PathLike,
    method: str = "default",
    source: str | os.PathLike | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """Adapt the model of a ``tfx-transfer train`` run to a target folder: a new run folder.

    ``out`` gets ``model.keras`` (the adapted model), ``export/1/`` (its SavedModel,
    :func:`~tfx_transfer.export_saved_model`), ``config.json`` (the run's, plus an
    ``"adaptation"`` entry), ``adaptation.json`` and ``adaptation.txt`` (the report).
    ``source`` defaults to the run's ``data_dir`` (``"adabn"`` uses its images only).
    The target's labels are never used for adaptation; when the target folder has
    class folders named like the model's classes, the report scores the model before
    and after on them (its ``test/`` or ``val/`` split when it has one, else all its
    images) and says that those labels served only for scoring.

    Example (not run by the doctests: it needs a training run; tests/test_adapt.py runs it):
        >>> report = adapt_run("runs/photos", "new_camera/", "runs/photos-adapted")  # doctest: +SKIP
        >>> report["scores"]["after"]["accuracy"]  # doctest: +SKIP
        0.91
    """
    import datetime
    import json

    from tfx_transfer.data.folder import split_folders
    from tfx_transfer.evaluation.evaluate import evaluate_model, load_for_evaluation
    from tfx_transfer.export.saved_model import export_saved_model

    run, target_dir, out_dir = Path(run_dir), Path(target), Path(out)
    if not (run / "config.json").is_file() or not (run / "model.keras").is_file():
        raise FileNotFoundError(f"{str(run)!r} is not a run folder (config.json + model.keras "
                                "from 'tfx-transfer train').")
    if not target_dir.is_dir():
        raise FileNotFoundError(f"Target folder {str(target_dir)!r} does not exist.")
    if (out_dir / "model.keras").exists():
        raise ValueError(f"{str(out_dir)!r} already holds a model; choose another --out.")
    if out_dir.resolve() == run.resolve():
        raise ValueError("--out must be a new folder, not the run folder itself.")
    config = json.loads((run / "config.json").read_text())
    model, class_names = load_for_evaluation(run)
    class_names = list(class_names or config.get("class_names") or [])
    if not class_names:
        raise ValueError(f"{run / 'config.json'} has no class_names; cannot export the model.")
    if source is None and config.get("data_dir") and Path(config["data_dir"]).is_dir():
        source = config["data_dir"]
    chosen = DEFAULT_METHOD if method == "default" else method
    adapted = adapt(model, target_dir, chosen, source=source, class_names=class_names, **kwargs)

    folders = _labelled_classes(target_dir)
    labelled = bool(folders) and set(folders) <= set(class_names)
    scores = None
    if labelled:
        # the target's test/ or val/ when present, else all its images (none trained the model)
        found = split_folders(target_dir)
        split = None if {"test", "validation"} & set(found) else "all"
        before = evaluate_model(model, target_dir, class_names, verbose=False, split=split)
        after = evaluate_model(adapted, target_dir, class_names, verbose=False, split=split)
        keep = ("num_samples", "accuracy", "macro_avg")
        scores = {"before": {k: before[k] for k in keep}, "after": {k: after[k] for k in keep}}
    out_dir.mkdir(parents=True, exist_ok=True)
    adapted.save(out_dir / "model.keras")
    report = {
        "method": chosen,
        "run": str(run.resolve()),
        "target": str(target_dir.resolve()),
        "source": None if source is None else str(source),
        "target_images_used": adapted._tfx_adaptation["target_images"],
        "target_labels": ("used only to score the model before and after adaptation, never "
                          "for adaptation") if labelled else "none (no class folders named like "
                          "the model's classes): not scored",
        "scores": scores,
        "settings": {k: v for k, v in kwargs.items() if k != "callbacks"},
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    export = export_saved_model(adapted, out_dir / "export", class_names, version=1,
                                overwrite=True, metadata={"adaptation": report})
    report["export"] = str(export)
    (out_dir / "config.json").write_text(json.dumps({**config, "adaptation": report}, indent=2))
    (out_dir / "adaptation.json").write_text(json.dumps(report, indent=2))
    (out_dir / "adaptation.txt").write_text(format_adaptation_report(report) + "\n")
    return report


def format_adaptation_report(report: dict[str, Any]) -> str:
    """The text form of :func:`adapt_run`'s report.

    Example:
        >>> print(format_adaptation_report({"method": "adabn", "run": "r", "target": "t",
        ...     "source": None, "target_images_used": 5, "target_labels": "none", "scores": None}))
        adaptation: adabn
        run:        r
        target:     t (5 images, labels: none)
        source:     none
    """
    lines = [f"adaptation: {report['method']}", f"run:        {report['run']}",
             f"target:     {report['target']} ({report['target_images_used']} images, labels: "
             f"{report['target_labels']})", f"source:     {report['source'] or 'none'}"]
    scores = report.get("scores")
    if scores:
        b, a = scores["before"], scores["after"]
        lines += [f"target accuracy before: {b['accuracy']:.4f}  after: {a['accuracy']:.4f}  "
                  f"({100 * (a['accuracy'] - b['accuracy']):+.1f} points, {a['num_samples']} "
                  "images; their labels were used only for this score)"]
    return "\n".join(lines)
