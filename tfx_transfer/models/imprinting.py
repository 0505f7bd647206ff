"""Weight imprinting: classifier rows from a few images, and classes added to a trained model.

:func:`imprint` sets each class's weights of a cosine head to the normalised mean
of its images' centred, normalised features (one pass of the backbone, no gradient step;
Qi, Brown & Lowe, CVPR 2018). :func:`add_classes` returns a model with the old
classes and new ones whose rows are imprinted the same way; the old rows, the
backbone and the rest of the head are copied unchanged.

Both need a cosine head (:class:`~tfx_transfer.CosineClassifier`): there, a trained
row and an imprinted one are both directions of centred features, compared by the
same cosine. A Dense classifier (``avg``/``max``/``flatten`` heads) has no such common
scale: an imprinted row scaled to the trained rows' mean norm took 93 points of the
old classes' accuracy on Caltech-101 (``docs/fewshot.md``), so both refuse it and say
how to get a cosine head.

Example: see :func:`imprint` and :func:`add_classes`.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np

from tfx_transfer.models.cosine import CosineClassifier
from tfx_transfer.models.parts import model_parts
from tfx_transfer.models.unknown_score import add_references

CLASSIFIER_NAME = "predictions"


def cosine_classifier(model: keras.Model, caller: str = "add_classes") -> CosineClassifier:
    """The model's :class:`~tfx_transfer.CosineClassifier`, or a ValueError naming the fix.

    Example:
        >>> import tfx_transfer as tt
        >>> cosine_classifier(tt.build_transfer_model("vgg16", 2, input_shape=32, weights=None,
        ...                                           head="cosine")).name
        'predictions'
    """
    last = model_parts(model).head.layers[-1]
    if isinstance(last, keras.layers.Dense):
        raise ValueError(
            f"{caller} needs a cosine head and {model.name!r} has a Dense classifier: a Dense "
            "head's trained rows and imprinted ones are on no common scale (adding 5 classes so "
            "cost the old classes 93 points of accuracy, docs/fewshot.md). Build or train the "
            "model with head='cosine' (tfx-transfer train --head cosine), or train again with "
            "every class.")
    if last.name != CLASSIFIER_NAME or not isinstance(last, CosineClassifier):
        raise ValueError(f"{caller}: the head of {model.name!r} does not end in a CosineClassifier "
                         f"named {CLASSIFIER_NAME!r} (found {type(last).__name__} {last.name!r}); "
                         "build the model with tt.build_transfer_model(..., head='cosine').")
    return last


def _labelled(model: keras.Model, data: Any, class_names: Sequence[str] | None,
              batch_size: int, caller: str) -> Any:
    from tfx_transfer.data.labelled import labelled_batches

    size = tuple(model.input.shape[1:3])
    split = "train" if isinstance(data, (str, os.PathLike)) or hasattr(data, "files") else None
    return labelled_batches(data, size, class_names, batch_size=batch_size, split=split,
                            caller=caller)


def penultimate_features(model: keras.Model, batches: Any) -> tuple[np.ndarray, np.ndarray]:
    """The classifier's input for every image of ``(images, labels)`` batches, and the labels.

    One pass of the backbone (inference mode) per batch, then the head's layers
    before the classifier (pooling; Dropout off). Labels come back as ints.

    Example:
        >>> import numpy as np, tfx_transfer as tt
        >>> model = tt.build_transfer_model("vgg16", 2, input_shape=32, weights=None)
        >>> f, y = penultimate_features(model, [(np.zeros((3, 32, 32, 3)), np.eye(2)[[0, 1, 1]])])
        >>> f.shape, y.tolist()
        ((3, 512), [0, 1, 1])
    """
    parts = model_parts(model)
    extractor = keras.Model(model.inputs, parts.backbone.output, name="feature_extractor")
    feats, labels = [], []
    for images, y in batches:
        x = extractor.predict_on_batch(np.asarray(images))
        for layer in parts.head.layers[:-1]:
            x = layer(x, training=False)
        feats.append(np.asarray(keras.ops.convert_to_numpy(x), np.float32))
        y = np.asarray(y)
        labels.append(y.argmax(axis=-1) if y.ndim == 2 else y.reshape(-1))
    if not feats:
        raise ValueError("The data yielded no images to imprint from.")
    return np.concatenate(feats), np.concatenate(labels).astype(np.int64)


def class_directions(features: np.ndarray, labels: np.ndarray, num_classes: int
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Unit mean direction of each class's normalised features ``(D, C)``, and which classes had images.

    Args:
        features: ``(N, D)`` features (the classifier's input).
        labels: ``(N,)`` int labels in ``0..num_classes-1``.
        num_classes: columns of the result (a class without images: a zero column).

    Example:
        >>> d, seen = class_directions(np.array([[3., 0.], [0., 2.], [0., 5.]]), np.array([0, 1, 1]), 3)
        >>> d.round(3).tolist(), seen.tolist()
        ([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], [True, True, False])
    """
    unit = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    directions = np.zeros((features.shape[1], num_classes), np.float32)
    seen = np.zeros(num_classes, bool)
    for c in range(num_classes):
        rows = unit[labels == c]
        if len(rows):
            mean = rows.mean(axis=0)
            directions[:, c] = mean / max(float(np.linalg.norm(mean)), 1e-12)
            seen[c] = True
    return directions, seen


def _check_labels(labels: np.ndarray, num_classes: int, what: str) -> None:
    bad = labels[(labels < 0) | (labels >= num_classes)]
    if bad.size:
        raise ValueError(f"label {int(bad[0])} is outside 0..{num_classes - 1} ({what}).")


def imprint(model: keras.Model, data: Any, *, class_names: Sequence[str] | None = None,
            batch_size: int = 32) -> keras.Model:
    """Set each class's weights of a cosine head to the normalised mean feature of its images.

    One pass of the backbone over ``data``, no gradient step; classes without images
    keep their weights. When ``data`` has images of every class, the classifier's
    ``center`` becomes their mean feature first (:class:`~tfx_transfer.CosineClassifier`;
    rows are directions of centred features); imprinting some classes keeps it. The
    model is changed in place and returned. A later ``fine_tune`` / ``train`` starts
    from these weights.

    Args:
        model: a model with ``head="cosine"``.
        data: an image folder path (class folders, or its ``train/`` split; images
            resized to the model's input size), an :class:`~tfx_transfer.ImageFolder`
            (its training split), a dataset of ``(images, labels)`` batches or an
            ``(x, y)`` tuple of arrays (labels: the model's class indices).
        class_names: the classes of ``data``'s labels (default: the model's); folder
            classes are matched to them by name.
        batch_size: images per batch for folders and arrays.

    Example:
        >>> import numpy as np, tfx_transfer as tt
        >>> model = tt.build_transfer_model("vgg16", 2, input_shape=32, weights=None, head="cosine")
        >>> x = np.stack([np.full((32, 32, 3), v, "uint8") for v in (10, 20, 240, 250)])
        >>> y = np.array([0, 0, 1, 1])
        >>> model = tt.imprint(model, (x, y))
        >>> model.predict(x, verbose=0).argmax(axis=1).tolist()
        [0, 0, 1, 1]
    """
    layer = cosine_classifier(model, "imprint")
    settings = getattr(model, "transfer_config", None)
    names = class_names or (settings or {}).get("class_names")
    labelled = _labelled(model, data, names, batch_size, "imprint")
    features, labels = penultimate_features(model, labelled.batches)
    _check_labels(labels, layer.units, "imprint's data")
    if names is None and labelled.class_names and settings is not None \
            and len(labelled.class_names) == layer.units:
        settings["class_names"] = list(labelled.class_names)  # a folder named the classes
    if len(np.unique(labels)) == layer.units:  # every class: the images' mean is the center
        layer.center.assign(features.mean(axis=0))
    center = np.asarray(keras.ops.convert_to_numpy(layer.center), np.float32)
    directions, seen = class_directions(features - center, labels, layer.units)
    kernel = keras.ops.convert_to_numpy(layer.kernel).copy()
    kernel[:, seen] = directions[:, seen]
    layer.kernel.assign(kernel)
    return model


def _with_units(config: Any, units: int) -> bool:
    """Set ``units`` of the layer config named ``"predictions"`` (nested anywhere) in place."""
    if isinstance(config, dict):
        inner = config.get("config")
        if isinstance(inner, dict) and inner.get("name") == CLASSIFIER_NAME and "units" in inner:
            inner["units"] = units
            return True
        return any(_with_units(value, units) for value in config.values())
    if isinstance(config, list):
        return any(_with_units(value, units) for value in config)
    return False


def _expanded(model: keras.Model, names: list[str]) -> keras.Model:
    """A copy of ``model`` whose classifier has ``len(names)`` outputs; every other weight copied."""
    config = copy.deepcopy(model.get_config())
    if not _with_units(config, len(names)):
        raise ValueError(f"No classifier named {CLASSIFIER_NAME!r} in {model.name!r}'s config.")
    settings = dict(config.get("transfer_config") or {})
    settings.update(num_classes=len(names), class_names=names)
    if "unknown" in settings:  # add_classes appends the new images to its references
        settings["unknown"] = copy.deepcopy(settings["unknown"])
    config["transfer_config"] = settings
    return type(model).from_config(config)


def add_classes(model: keras.Model, data: Any, *, class_names: Sequence[str] | None = None,
                batch_size: int = 32) -> keras.Model:
    """A new model with the old classes and the new ones of ``data``, their rows imprinted.

    The backbone, the head (its ``center`` included) and the old classes' rows are
    copied unchanged; each new class's row is the normalised mean of its images'
    centred features, as :func:`imprint` makes it (one backbone pass, no gradient
    step). The old classes' scores are unchanged; only the new classes can take
    probability from them (measured in ``docs/fewshot.md``). Where the model has a
    "none of these" score (:func:`tfx_transfer.fit_unknown`), the new images join its
    references (its threshold is kept), so images of the new classes are known too.

    Args:
        model: a model of the kit with a cosine head that knows its class names.
        data: the new classes' images: a folder of class folders (its ``train/``
            split if it has one), an :class:`~tfx_transfer.ImageFolder`, a dataset
            of ``(images, labels)`` batches or an ``(x, y)`` tuple (labels ``0..k-1``
            index ``class_names``).
        class_names: the new classes (default: the folder's class folders).
        batch_size: images per batch for folders and arrays.

    Returns:
        The new model (the given one is unchanged); class names, ``num_classes`` in
        :func:`tfx_transfer.transfer_config` updated, so exports list every class.

    Example:
        >>> import numpy as np, tfx_transfer as tt
        >>> model = tt.build_transfer_model("vgg16", 2, input_shape=32, weights=None,
        ...                                 head="cosine", class_names=["a", "b"])
        >>> new = tt.add_classes(model, (np.zeros((2, 32, 32, 3)), np.array([0, 0])),
        ...                      class_names=["c"])
        >>> new.predict(np.zeros((1, 32, 32, 3)), verbose=0).shape
        (1, 3)
    """
    layer = cosine_classifier(model, "add_classes")
    settings = getattr(model, "transfer_config", None) or {}
    old = settings.get("class_names")
    if not old:
        raise ValueError(f"add_classes needs the model's class names to name the new ones; "
                         f"{model.name!r} has none: set model.transfer_config['class_names'] = "
                         "[...] (a model from tt.train or build_transfer_model(class_names=...) "
                         "has them).")
    if settings.get("multi_label"):
        raise ValueError("add_classes imprints softmax classes; this model is multi-label "
                         "(sigmoid outputs with per-class thresholds). Train it again with the "
                         "new classes.")
    labelled = _labelled(model, data, class_names, batch_size, "add_classes")
    new = list(class_names or labelled.class_names or [])
    if not new:
        raise ValueError("add_classes: pass class_names= (one name per new label) with a dataset "
                         "or arrays.")
    clash = sorted(set(new) & set(old))
    if clash:
        raise ValueError(f"add_classes: {clash} are already classes of the model ({old}); to "
                         "refresh an existing class use tt.imprint on a cosine head.")
    pooled, labels = penultimate_features(model, labelled.batches)  # the cosine head's avg pool
    _check_labels(labels, len(new), f"the new classes are {new}")
    features = pooled - np.asarray(keras.ops.convert_to_numpy(layer.center), np.float32)
    directions, seen = class_directions(features, labels, len(new))
    if not seen.all():
        raise ValueError(f"add_classes: no images of {[n for n, s in zip(new, seen) if not s]}.")
    bigger = _expanded(model, [*old, *new])
    _copy_weights(model, bigger, layer, directions)
    add_references(bigger, pooled)  # the unknown score, where fitted, knows the new classes too
    return bigger


def _copy_weights(old: keras.Model, new: keras.Model, layer: keras.layers.Layer,
                  directions: np.ndarray) -> None:
    kernel = np.asarray(keras.ops.convert_to_numpy(layer.kernel), np.float32)
    replaced = {id(layer.kernel): np.concatenate([kernel, directions], axis=1)}
    if len(old.weights) != len(new.weights):
        raise ValueError(f"add_classes: {len(new.weights)} weights in the new model, "
                         f"{len(old.weights)} in {old.name!r}.")
    for source, target in zip(old.weights, new.weights):
        value = replaced.get(id(source), None)
        value = keras.ops.convert_to_numpy(source) if value is None else value
        if tuple(value.shape) != tuple(target.shape):
            raise ValueError(f"add_classes: weight {source.path} {tuple(value.shape)} does not "
                             f"match {target.path} {tuple(target.shape)} of the new model.")
        target.assign(value)
