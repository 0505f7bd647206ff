"""``CosineClassifier``: the cosine head's classifier layer (scaled cosine similarity + softmax).

The class scores are ``scale * cos(feature - center, w_c)``: the centred features
and each class's weight vector are L2-normalised, so a class's weights are a
direction in feature space and a normalised mean feature is a ready classifier row
(weight imprinting, Qi, Brown & Lowe 2018; cosine classifiers, Gidaris & Komodakis
2018, Chen et al. 2019). ``scale`` is learned (it sets how sharp the softmax is).
``center`` (not trained; zeros until :func:`tfx_transfer.imprint` sets it to the mean
feature of the images it saw) removes what every image shares: pooled ReLU features
are all positive, so without it any class mean is close to every image, and an
imprinted row would outscore trained ones (centring + L2 normalisation, "CL2N", of
Wang et al. 2019, SimpleShot). The output is the softmax in float32 under any
precision policy, as for every head of the kit.

Example:
    >>> import numpy as np
    >>> layer = CosineClassifier(2, scale=10.0)
    >>> probs = layer(np.array([[3.0, 0.0]], "float32"))
    >>> layer.set_weights([np.array([[1.0, 0.0], [0.0, 1.0]], "float32"), np.array(10.0, "float32"),
    ...                    np.zeros(2, "float32")])
    >>> np.round(keras.ops.convert_to_numpy(layer(np.array([[3.0, 0.0]], "float32"))), 4).tolist()
    [[1.0, 0.0]]
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

DEFAULT_SCALE = 10.0
_EPSILON = 1e-12


def l2_normalize(x: Any, axis: int = -1) -> Any:
    """``x / ||x||`` along ``axis`` (zero vectors stay zero).

    Example:
        >>> import numpy as np
        >>> keras.ops.convert_to_numpy(l2_normalize(np.array([[3.0, 4.0]], "float32"))).tolist()
        [[0.6000000238418579, 0.800000011920929]]
    """
    return x / ops.sqrt(ops.maximum(ops.sum(ops.square(x), axis=axis, keepdims=True), _EPSILON))


@keras.saving.register_keras_serializable(package="tfx_transfer")
class CosineClassifier(keras.layers.Layer):
    """Softmax over ``scale * cosine(features, class weights)``: the ``"cosine"`` head's classifier.

    Weights: ``kernel`` ``(features, units)`` (each column is a class's direction;
    only its direction matters), a scalar ``scale`` (learned unless
    ``trainable_scale=False``) and ``center`` ``(features,)``, subtracted from the
    features first (not trained; set by :func:`tfx_transfer.imprint`). Computes in float32 (``dtype="float32"`` by default),
    so the probabilities are float32 under a mixed-precision policy.

    Args:
        units: number of classes.
        scale: the initial scale (the softmax's inverse temperature).
        trainable_scale: learn the scale with the class weights.
        **kwargs: ``keras.layers.Layer`` keywords (``name``, ``dtype``).

    Example:
        >>> import numpy as np
        >>> layer = CosineClassifier(3, name="predictions")
        >>> tuple(layer(np.ones((2, 8), "float32")).shape), layer.compute_dtype
        ((2, 3), 'float32')
    """

    def __init__(self, units: int, scale: float = DEFAULT_SCALE, trainable_scale: bool = True,
                 **kwargs: Any):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        if not isinstance(units, int) or units < 1:
            raise ValueError(f"CosineClassifier units={units!r}: need the number of classes (>= 1).")
        if not float(scale) > 0:
            raise ValueError(f"CosineClassifier scale={scale!r} must be > 0 (e.g. 10.0).")
        self.units = units
        self.initial_scale = float(scale)
        self.trainable_scale = bool(trainable_scale)

    def build(self, input_shape: Any) -> None:
        self.kernel = self.add_weight(name="kernel", shape=(int(input_shape[-1]), self.units),
                                      initializer="glorot_uniform")
        self.scale = self.add_weight(name="scale", shape=(),
                                     initializer=keras.initializers.Constant(self.initial_scale),
                                     trainable=self.trainable_scale)
        self.center = self.add_weight(name="center", shape=(int(input_shape[-1]),),
                                      initializer="zeros", trainable=False)

    def logits(self, inputs: Any) -> Any:
        """The class scores before the softmax: ``scale * cos(inputs - center, kernel)``."""
        x = l2_normalize(ops.cast(inputs, self.compute_dtype) - self.center)
        return self.scale * ops.matmul(x, l2_normalize(self.kernel, axis=0))

    def call(self, inputs: Any) -> Any:
        return ops.softmax(self.logits(inputs), axis=-1)

    def compute_output_shape(self, input_shape: Any) -> tuple:
        return (*tuple(input_shape)[:-1], self.units)

    def get_config(self) -> dict:
        return {**super().get_config(), "units": self.units, "scale": self.initial_scale,
                "trainable_scale": self.trainable_scale}
