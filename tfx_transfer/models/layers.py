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
        >>> float(layer(np.full((1, 2, 2, 3), 255, "uint8")).numpy().max())
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


@keras.saving.register_keras_serializable(package="tfx_transfer")
class Backbone(keras.layers.Layer):
    """A nested backbone model, called in inference mode unless told otherwise.

    Keras 3's functional models pass the outer call's ``training`` down to every
    nested layer, overriding an explicit ``training=False`` in the graph, so a
    ``keras.applications`` model nested in a transfer model would run its Dropout,
    drop-connect and (trainable) BatchNormalization layers in training mode during
    ``fit``. This layer calls its model with ``training=False`` whenever
    ``inference_mode`` is true (the default: frozen and fine-tuned backbones, as
    the Keras transfer-learning guide intends), and with the caller's ``training``
    otherwise (``unfreeze(..., train_bn=True)`` and training from scratch).

    Args:
        model: the backbone, a Keras model (``include_top=False``).
        inference_mode: run ``model`` with ``training=False`` whatever the caller says.

    Example:
        >>> import numpy as np
        >>> inner = keras.Sequential([keras.Input((4,)), keras.layers.Dropout(0.5)])
        >>> layer = Backbone(inner)
        >>> x = np.ones((1, 4), "float32")
        >>> bool((layer(x, training=True) == x).numpy().all())
        True
    """

    def __init__(self, model: keras.Model, inference_mode: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.model = model
        self.inference_mode = bool(inference_mode)

    def call(self, inputs, training=None):
        return self.model(inputs, training=False if self.inference_mode else training)

    def compute_output_shape(self, input_shape):
        return self.model.compute_output_shape(input_shape)

    def get_config(self) -> dict:
        return {**super().get_config(), "inference_mode": self.inference_mode,
                "model": keras.saving.serialize_keras_object(self.model)}

    @classmethod
    def from_config(cls, config: dict, custom_objects=None) -> Backbone:
        config = dict(config)
        model = keras.saving.deserialize_keras_object(config.pop("model"),
                                                      custom_objects=custom_objects)
        return cls(model, **config)
