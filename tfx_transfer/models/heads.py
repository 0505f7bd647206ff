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

HEADS = ("flatten", "avg", "max", "cosine")
HEAD_NAME = "head"


def build_head(feature_shape: tuple, num_classes: int, head: str = "avg", units: int = 256,
               dropout: float = 0.2, name: str = HEAD_NAME) -> keras.Sequential:
    """A classifier head (``keras.Sequential``) on a backbone's feature map.

    ``head`` is ``"flatten"`` (Flatten -> Dense(units, relu) -> Dropout -> Dense),
    ``"avg"`` or ``"max"`` (global pooling -> Dropout -> Dense), or ``"cosine"``
    (global average pooling -> Dropout -> :class:`~tfx_transfer.CosineClassifier`:
    normalised features and class weights, a learned scale); softmax output in
    float32 under any precision policy.

    Args:
        feature_shape: the backbone's output shape without the batch axis, e.g. ``(7, 7, 512)``.
        num_classes: outputs of the softmax.
        head: ``"flatten"``, ``"avg"``, ``"max"`` or ``"cosine"``.
        units: width of the flatten head's hidden Dense layer.
        dropout: dropout rate before the classifier (0: no Dropout layer).
        name: the Sequential's name (a transfer model's head is ``"head"``).

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
    else:
        layers.append(keras.layers.GlobalMaxPooling2D(name="max_pool"))
    if dropout:
        layers.append(keras.layers.Dropout(dropout, name="dropout"))
    # float32 output even under a mixed-precision policy (stable softmax, exports).
    if head == "cosine":
        layers.append(CosineClassifier(num_classes, name="predictions"))
        return keras.Sequential(layers, name=name)
    layers.append(keras.layers.Dense(num_classes, activation="softmax", dtype="float32",
                                     name="predictions"))
    return keras.Sequential(layers, name=name)
