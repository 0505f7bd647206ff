"""The classifier heads a transfer model puts on its backbone's feature map.

Example:
    >>> from tfx_transfer.models.heads import build_head
    >>> [layer.name for layer in build_head((7, 7, 512), 3, "avg").layers]
    ['avg_pool', 'dropout', 'predictions']
    >>> type(build_head((7, 7, 512), 3, "cosine", dropout=0.0).layers[-1]).__name__
    'CosineClassifier'
"""

from __future__ import annotations

import keras

from tfx_transfer.models.cosine import CosineClassifier
from tfx_transfer.models.spatial import SpatialClassifier

HEADS = ("flatten", "avg", "max", "cosine", "spatial")
HEAD_NAME = "head"


def default_head(multi_label: bool = False) -> str:
    """The head when none is chosen: ``"avg"``, or ``"spatial"`` for a multi-label model.

    Several labels per image are often several objects in different places; the
    spatial head scores each place before pooling (``docs/tables.md`` has the measurement).

    Args:
        multi_label: whether the model has several labels per image.

    Example:
        >>> default_head(), default_head(multi_label=True)
        ('avg', 'spatial')
    """
    return "spatial" if multi_label else "avg"


def build_head(feature_shape: tuple, num_classes: int, head: str = "avg", units: int = 256,
               dropout: float = 0.2, name: str = HEAD_NAME,
               activation: str = "softmax") -> keras.Sequential:
    """A classifier head (``keras.Sequential``) on a backbone's feature map.

    ``head`` is ``"flatten"`` (Flatten -> Dense(units, relu) -> Dropout -> Dense),
    ``"avg"`` or ``"max"`` (global pooling -> Dropout -> Dense), ``"cosine"``
    (global average pooling -> Dropout -> :class:`~tfx_transfer.CosineClassifier`:
    normalised features and class weights, a learned scale) or ``"spatial"`` (Dropout ->
    :class:`~tfx_transfer.SpatialClassifier`: class scores at every location, pooled by
    log-sum-exp); output in float32 under any precision policy.

    Args:
        feature_shape: the backbone's output shape without the batch axis, e.g. ``(7, 7, 512)``.
        num_classes: outputs of the softmax.
        head: ``"flatten"``, ``"avg"``, ``"max"``, ``"cosine"`` or ``"spatial"``.
        units: width of the flatten head's hidden Dense layer.
        dropout: dropout rate before the classifier (0: no Dropout layer).
        name: the Sequential's name (a transfer model's head is ``"head"``).
        activation: ``"softmax"`` (one class per image) or ``"sigmoid"`` (multi-label:
            an independent probability per class).

    Example:
        >>> build_head((7, 7, 512), 5).output_shape
        (None, 5)
    """
    if head not in HEADS:
        raise ValueError(f"head={head!r} is not one of {HEADS}.")
    layers: list[keras.layers.Layer] = [keras.Input(shape=feature_shape)]
    if head == "flatten":
        layers += [keras.layers.Flatten(name="flatten"),
                   keras.layers.Dense(units, activation="relu", name="fc")]
    elif head in ("avg", "cosine"):
        layers.append(keras.layers.GlobalAveragePooling2D(name="avg_pool"))
    elif head == "max":
        layers.append(keras.layers.GlobalMaxPooling2D(name="max_pool"))
    if dropout:
        layers.append(keras.layers.Dropout(dropout, name="dropout"))
    # float32 output even under a mixed-precision policy (stable softmax, exports).
    if activation not in ("softmax", "sigmoid"):
        raise ValueError(f"activation={activation!r}: use 'softmax' or 'sigmoid' (multi-label).")
    if head == "cosine":
        if activation != "softmax":
            raise ValueError("head='cosine' is a softmax classifier; a multi-label (sigmoid) model "
                             "needs head 'spatial' (its default), 'avg', 'max' or 'flatten'.")
        layers.append(CosineClassifier(num_classes, name="predictions"))
        return keras.Sequential(layers, name=name)
    if head == "spatial":
        if len(feature_shape) != 3:
            raise ValueError(f"head='spatial' scores every location of a feature map (H, W, C); "
                             f"this backbone gives {tuple(feature_shape)}. Use head='avg'.")
        layers.append(SpatialClassifier(num_classes, activation=activation, name="predictions"))
        return keras.Sequential(layers, name=name)
    layers.append(keras.layers.Dense(num_classes, activation=activation, dtype="float32",
                                     name="predictions"))
    return keras.Sequential(layers, name=name)
