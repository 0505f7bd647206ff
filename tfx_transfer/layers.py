"""Keras layers of the kit (registered serializable, safe-mode loadable)."""

from __future__ import annotations

import keras
from keras import ops

# ImageNet statistics used by keras.applications' ``preprocess_input``.
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
_TORCH_MEAN = (0.485, 0.456, 0.406)
_TORCH_STD = (0.229, 0.224, 0.225)


@keras.saving.register_keras_serializable(package="tfx_transfer")
class Preprocess(keras.layers.Layer):
    """A backbone's input preprocessing, as a layer: 0..255 RGB pixels in.

    Modes match ``keras.applications.imagenet_utils.preprocess_input``:

    * ``"caffe"`` (VGG, ResNet v1): RGB -> BGR, minus the ImageNet BGR mean.
    * ``"tf"`` (ResNet v2, Xception, Inception, MobileNet v1/v2): ``x / 127.5 - 1``.
    * ``"torch"`` (DenseNet): ``x / 255``, minus mean, over std (RGB).
    * ``"none"`` (EfficientNet, MobileNetV3, ConvNeXt): the network rescales itself.

    Any input dtype is accepted (uint8 included); the output has the layer's
    compute dtype.

    Example:
        >>> import numpy as np
        >>> layer = Preprocess("tf")
        >>> layer(np.full((1, 2, 2, 3), 255, "uint8")).numpy().max()
        1.0
    """

    def __init__(self, mode: str = "caffe", **kwargs):
        super().__init__(**kwargs)
        if mode not in ("caffe", "tf", "torch", "none"):
            raise ValueError(
                f"Preprocess mode={mode!r} is not one of 'caffe', 'tf', 'torch', 'none'."
            )
        self.mode = mode

    def call(self, inputs):
        x = ops.cast(inputs, self.compute_dtype)
        if self.mode == "tf":
            return x / 127.5 - 1.0
        if self.mode == "torch":
            mean = ops.convert_to_tensor(_TORCH_MEAN, self.compute_dtype)
            std = ops.convert_to_tensor(_TORCH_STD, self.compute_dtype)
            return (x / 255.0 - mean) / std
        if self.mode == "caffe":
            mean = ops.convert_to_tensor(_CAFFE_MEAN_BGR, self.compute_dtype)
            return ops.flip(x, axis=-1) - mean
        return x

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        return {**super().get_config(), "mode": self.mode}
