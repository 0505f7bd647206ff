"""``SpatialClassifier``: the ``"spatial"`` head's classifier (class scores at every location, pooled).

The ``"avg"`` head pools the feature map first and classifies the mean feature. For
several labels per image that mixes the objects: a mug in one corner and a cat in
another average into one feature that is neither. The spatial classifier swaps the
order: one linear classifier scores every location of the feature map (a 1x1
convolution), and each class's scores are pooled over the locations with a
log-sum-exp, a smooth maximum (class-wise pooling; Pinheiro & Collobert 2015, Durand
et al. 2017)::

    logit_c = log(mean_xy exp(sharpness * (w_c . f_xy + b_c))) / sharpness

As ``sharpness -> 0`` this is the mean of the location scores, which is exactly the
``"avg"`` head's logit (both are linear); as it grows it becomes the maximum, so a
label present in one region is not diluted by the rest of the image.
``benchmarks/multi_label.py`` measured it against the ``"avg"`` head and a linear
probe (``docs/tables.md``); it is the default head of a multi-label model.

Example:
    >>> import numpy as np
    >>> layer = SpatialClassifier(2, sharpness=0.01, activation="linear")
    >>> maps = np.random.default_rng(0).random((1, 3, 3, 4)).astype("float32")
    >>> pooled = layer(maps)  # sharpness ~ 0: the mean of the location scores ...
    >>> w, b = (keras.ops.convert_to_numpy(v) for v in (layer.kernel, layer.bias))
    >>> bool(np.allclose(pooled, maps.mean(axis=(1, 2)) @ w + b, atol=0.01))  # ... = the avg head
    True
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import ops

DEFAULT_SHARPNESS = 1.0
_ACTIVATIONS = ("sigmoid", "softmax", "linear")


@keras.saving.register_keras_serializable(package="tfx_transfer")
class SpatialClassifier(keras.layers.Layer):
    """A linear classifier at every location of a feature map, class scores pooled by log-sum-exp.

    Weights: ``kernel`` ``(features, units)`` and ``bias`` ``(units,)``, as a ``Dense``
    layer's (a trained ``"avg"`` head's rows can be copied in). Input ``(N, H, W, D)``
    (a ``(N, D)`` input is classified as it is). Computes in float32 (``dtype="float32"``
    by default), so the probabilities are float32 under a mixed-precision policy.

    Args:
        units: number of classes.
        sharpness: the log-sum-exp's ``r``: near 0 the mean of the location scores
            (the ``"avg"`` head), large the maximum.
        activation: ``"sigmoid"`` (multi-label), ``"softmax"`` or ``"linear"``.
        **kwargs: ``keras.layers.Layer`` keywords (``name``, ``dtype``).

    Example:
        >>> layer = SpatialClassifier(3, name="predictions")
        >>> tuple(layer(np.ones((2, 5, 5, 8), "float32")).shape), layer.compute_dtype
        ((2, 3), 'float32')
    """

    def __init__(self, units: int, sharpness: float = DEFAULT_SHARPNESS,
                 activation: str = "sigmoid", **kwargs: Any):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        if not isinstance(units, int) or units < 1:
            raise ValueError(f"SpatialClassifier units={units!r}: need the number of classes (>= 1).")
        if not float(sharpness) > 0:
            raise ValueError(f"SpatialClassifier sharpness={sharpness!r} must be > 0 (e.g. "
                             f"{DEFAULT_SHARPNESS}).")
        if activation not in _ACTIVATIONS:
            raise ValueError(f"SpatialClassifier activation={activation!r}: use one of {_ACTIVATIONS}.")
        self.units = units
        self.sharpness = float(sharpness)
        self.activation = activation

    def build(self, input_shape: Any) -> None:
        self.kernel = self.add_weight(name="kernel", shape=(int(input_shape[-1]), self.units),
                                      initializer="glorot_uniform")
        self.bias = self.add_weight(name="bias", shape=(self.units,), initializer="zeros")

    def location_logits(self, inputs: Any) -> Any:
        """Class scores at every location: ``(N, H, W, units)`` (a class activation map)."""
        return ops.matmul(ops.cast(inputs, self.compute_dtype), self.kernel) + self.bias

    def logits(self, inputs: Any) -> Any:
        """The pooled class scores before the activation, ``(N, units)``."""
        scores = self.location_logits(inputs)
        if len(scores.shape) == 2:
            return scores
        spatial = scores.shape[1:-1]
        if all(d is not None for d in spatial):
            locations = int(np.prod(spatial))
            log_locations = float(np.log(locations))
        else:  # a backbone without a fixed input size: count the locations at run time
            dims = ops.shape(scores)
            locations = dims[1] * dims[2]
            log_locations = ops.log(ops.cast(locations, self.compute_dtype))
        flat = ops.reshape(scores, (-1, locations, self.units))
        r = self.sharpness
        return (ops.logsumexp(r * flat, axis=1) - log_locations) / r

    def call(self, inputs: Any) -> Any:
        logits = self.logits(inputs)
        if self.activation == "sigmoid":
            return ops.sigmoid(logits)
        if self.activation == "softmax":
            return ops.softmax(logits, axis=-1)
        return logits

    def compute_output_shape(self, input_shape: Any) -> tuple:
        return (tuple(input_shape)[0], self.units)

    def get_config(self) -> dict:
        return {**super().get_config(), "units": self.units, "sharpness": self.sharpness,
                "activation": self.activation}
