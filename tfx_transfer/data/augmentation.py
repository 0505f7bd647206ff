"""ImageDataGenerator-style augmentation as one Keras layer.

``Augmentation(rotation_range=20, zoom_range=0.15, horizontal_flip=True)`` takes
ImageDataGenerator's keyword names *and meanings* and builds Keras
preprocessing layers (``DataLayer`` subclasses, safe inside ``tf.data``) with
the same ranges. The same object works two ways:

* as a layer at the front of the model (``build_transfer_model(augmentation=...)``):
  random in ``model.fit``, identity otherwise (``predict``, ``evaluate``, export);
* mapped over a batched ``tf.data`` dataset: ``aug.map_dataset(ds)``.

Input: ``uint8`` or float pixels in 0..255, ``(B, H, W, 3)`` or ``(H, W, 3)``.
Output: ``float32`` in 0..255 (the model's own preprocessing follows).

The keywords are checked and translated into layers by
:mod:`tfx_transfer.data.idg` (one :class:`~tfx_transfer.RandomAffine` for the
geometric ones, as ImageDataGenerator resamples once; its docstring lists
every keyword's mapping and the residual differences);
:func:`~tfx_transfer.data.preview.preview_augmentation` draws samples as a PNG grid.

Presets: ``"none"``; ``"light"`` (flip, 10 deg, zoom 0.1); ``"standard"`` (flip,
20 deg, shifts 0.1, zoom 0.15, brightness 0.9-1.1); ``"heavy"`` (flip,
``keras.layers.RandAugment(num_ops=2, factor=0.2)`` and ``MixUp(alpha=0.2)``).
"""

from __future__ import annotations

import warnings
from typing import Any

import keras
import numpy as np

from tfx_transfer.data.idg import IDG_DEFAULTS, check_idg_kwargs, keras_translation, make_augmenters

PRESETS: dict[str, dict[str, Any]] = {
    "none": {},
    "light": {"horizontal_flip": True, "rotation_range": 10, "zoom_range": 0.1, "fill_mode": "reflect"},
    "standard": {
        "horizontal_flip": True,
        "rotation_range": 20,
        "width_shift_range": 0.1,
        "height_shift_range": 0.1,
        "zoom_range": 0.15,
        "brightness_range": [0.9, 1.1],
        "fill_mode": "reflect",
    },
    # plus RandAugment(num_ops=2, factor=0.2) and MixUp (dataset side only)
    "heavy": {"horizontal_flip": True},
}
_MIXING = ("mixup", "cutmix")
_ENGINES = ("affine", "keras")



@keras.saving.register_keras_serializable(package="tfx_transfer")
class Augmentation(keras.layers.Layer):
    """Random image augmentation with ImageDataGenerator's keywords, as a Keras layer.

    Args:
        preset: ``None``/``"none"``, ``"light"``, ``"standard"`` or ``"heavy"``
            (see the module docstring); keywords given as well override the preset's.
        mixing: ``"mixup"``, ``"cutmix"`` or ``None`` (``"heavy"`` defaults to
            ``"mixup"``). Label mixing needs one-hot labels, so it runs only in
            :meth:`map_dataset`; as a model layer it is skipped (one warning).
        seed: optional int for reproducible draws.
        engine: how the geometric keywords (rotation, shifts, shear, zoom,
            flips) run. ``"affine"`` (default): one :class:`RandomAffine`, one
            resampling with ImageDataGenerator's exact matrix. ``"keras"``: the
            stock chain ``RandomRotation -> RandomTranslation -> RandomShear ->
            RandomZoom -> RandomFlip("horizontal") -> RandomFlip("vertical")``
            (IDG's composition order), for users who want Keras's own layers.
            It resamples once per op, so it is slower (about 3x the CPU time per
            batch for rotation + shifts + zoom) and a little softer. Brightness
            and channel shift use the layers above in both engines (Keras has no
            multiplicative brightness).
        **idg_kwargs: ImageDataGenerator keywords (see :mod:`tfx_transfer.data.idg`);
            a user's existing kwargs dict works as is.

    With ``engine="keras"`` the keywords map as follows (Keras 3.15 layers);
    every layer gets ``fill_mode``, ``fill_value=cval`` and the interpolation:

    * ``rotation_range=r`` -> ``RandomRotation(factor=r / 360)``: U(-r, r)
      degrees about the center, counter-clockwise positive, as IDG (exact).
    * ``width_shift_range``/``height_shift_range`` -> ``RandomTranslation``
      with fractions of the side: a float < 1 as is; pixels (a float >= 1, or
      an int ``n``, which IDG draws as integers in [-(n-1), n-1]) divided by the
      image size known when the layer is built (so it fixes the input size).
      Keras draws continuous shifts where IDG draws integer pixels for an int;
      a list of shifts raises ``ValueError`` (no equivalent).
    * ``shear_range=a`` degrees -> ``RandomShear(x_factor=tan(a), y_factor=0)``.
      Keras's factor is the horizontal displacement per row (``x_in = x + k*y``),
      the tangent of the shear angle, drawn as U(-tan(a), tan(a)) (IDG draws the
      angle U(-a, a)). IDG's matrix ``[[1, -sin a], [0, cos a]]`` is that shear
      by ``a`` followed by a vertical stretch of ``1/cos(a)`` (+1.5% at 10 deg,
      +15% at 30 deg) which RandomShear does not apply, and Keras shears about
      the top-left corner, not the center (the image also slides sideways by up
      to ``tan(a) * H / 2``). ``a`` above 45 degrees raises ``ValueError``.
    * ``zoom_range`` ``[lo, hi]`` -> ``RandomZoom(height_factor=(lo-1, hi-1),
      width_factor=(lo-1, hi-1))``: zx and zy drawn independently about the
      center, > 1 zooms out, as IDG (exact); ``hi`` above 2 raises ``ValueError``.
    * ``horizontal_flip``/``vertical_flip`` -> one ``RandomFlip`` each (one
      ``"horizontal_and_vertical"`` layer would flip both or neither).

    Because each op resamples and fills on its own, ``"nearest"``/``"reflect"``
    fills are computed from already-filled images and detail blurs a little more
    than with one resampling.

    Example:
        >>> aug = Augmentation(rotation_range=20, width_shift_range=0.1,
        ...                    zoom_range=0.2, horizontal_flip=True)
        >>> [type(layer).__name__ for layer in aug.augmenters]
        ['RandomAffine']
        >>> tuple(aug(np.zeros((2, 32, 32, 3), "uint8"), training=True).shape)  # as a layer
        (2, 32, 32, 3)
        >>> aug = Augmentation(rotation_range=20, engine="keras")
        >>> [type(layer).__name__ for layer in aug.augmenters]
        ['RandomRotation']

    Attributes:
        augmenters: the per-image layers, applied in order.
        mixer: the ``MixUp``/``CutMix`` layer or ``None``.
        is_random: whether any random operation is active.
    """

    def __init__(self, preset: str | None = None, *, mixing: str | None = None, seed: int | None = None,
                 engine: str = "affine", **kwargs):
        layer_kwargs = {k: kwargs.pop(k) for k in ("name", "trainable") if k in kwargs}
        layer_kwargs.setdefault("name", "augmentation")
        super().__init__(dtype="float32", **layer_kwargs)
        preset_key = "none" if preset is None else str(preset).lower()
        if preset_key not in PRESETS:
            raise ValueError(f"preset={preset!r}: choose one of {sorted(PRESETS)}.")
        if mixing is None and preset_key == "heavy":
            mixing = "mixup"
        if mixing is not None and mixing not in _MIXING:
            raise ValueError(f"mixing={mixing!r}: use 'mixup', 'cutmix' or None.")
        if engine not in _ENGINES:
            raise ValueError(f"engine={engine!r}: use 'affine' (one resampling) or 'keras' (stock Keras layers).")
        self.preset, self.mixing, self.seed, self.engine = preset, mixing, seed, engine
        self._kwargs = check_idg_kwargs(kwargs)
        self.settings = {**IDG_DEFAULTS, **PRESETS[preset_key], **self._kwargs}
        self.augmenters, self._pending_shift = make_augmenters(self.settings, preset_key == "heavy", seed, engine)
        mixer_seed = None if seed is None else seed + len(self.augmenters) + (self._pending_shift is not None)
        self.mixer = None
        if mixing == "mixup":
            self.mixer = keras.layers.MixUp(alpha=0.2, seed=mixer_seed, dtype="float32")
        elif mixing == "cutmix":
            if not hasattr(keras.layers, "CutMix"):
                raise ValueError(f"mixing='cutmix' needs keras.layers.CutMix, which Keras "
                                 f"{keras.__version__} does not have: pip install -U keras, or "
                                 "use mixing='mixup'.")
            self.mixer = keras.layers.CutMix(seed=mixer_seed, dtype="float32")
        self._warned_mixing = False

    @property
    def is_random(self) -> bool:
        """Whether any random operation is active (``False`` for ``"none"`` or no keywords)."""
        return bool(self.augmenters) or self._pending_shift is not None or self.mixer is not None

    def build(self, input_shape):
        if self._pending_shift is not None:  # keras engine, pixel shifts: now the image size is known
            index = self._pending_shift.pop("index")
            layer = keras_translation(height=input_shape[-3], width=input_shape[-2], **self._pending_shift)
            self.augmenters.insert(index, layer)
            self._pending_shift = None
        for layer in [*self.augmenters, self.mixer]:
            if layer is not None and not layer.built:
                layer.build(input_shape)

    def _augment(self, images):
        if not self.built:
            self.build(tuple(images.shape))
        x = keras.ops.cast(images, "float32")
        for op in self.augmenters:
            x = op(x, training=True)
        return x

    def call(self, inputs, training=False):
        if not training:
            return keras.ops.cast(inputs, "float32")
        if self.mixer is not None and not self._warned_mixing:
            self._warned_mixing = True
            warnings.warn(
                f"Augmentation: {self.mixing} mixes labels, which a model layer cannot see; it is "
                "skipped here. Use augmentation.map_dataset(ds) on (images, one-hot labels) to apply it.",
                UserWarning,
                stacklevel=2,
            )
        return self._augment(inputs)

    def compute_output_shape(self, input_shape):
        return input_shape

    def map_dataset(self, dataset, num_parallel_calls=None):
        """Augment a batched ``tf.data`` dataset of images or ``(images, labels[, weights])``.

        Runs in the input pipeline (CPU, in parallel with training); label mixing
        (MixUp/CutMix) is applied here and needs one-hot float labels.

        Example:
            >>> import tensorflow as tf
            >>> ds = tf.data.Dataset.from_tensor_slices(
            ...     (np.zeros((4, 32, 32, 3), "uint8"), [0, 1, 0, 1])).batch(2)
            >>> train = Augmentation(preset="standard").map_dataset(ds)
            >>> images, labels = next(iter(train))
            >>> images.shape, labels.numpy().tolist()
            (TensorShape([2, 32, 32, 3]), [0, 1])
        """
        import tensorflow as tf

        spec = dataset.element_spec
        image_spec = spec[0] if isinstance(spec, tuple) else spec
        if image_spec.shape.rank != 4:
            raise ValueError(
                f"map_dataset needs batched images (B, H, W, 3); got {image_spec.shape}. Call .batch(n) first."
            )
        if not self.built:
            self.build(tuple(image_spec.shape))
        if self.mixer is not None:
            labels = spec[1] if isinstance(spec, tuple) and len(spec) > 1 else None
            if labels is None or labels.shape.rank != 2 or not labels.dtype.is_floating:
                raise ValueError(
                    f"{self.mixing} needs (images, one-hot float labels); got {spec}. "
                    "Use load_image_folder(label_mode='categorical') or one-hot your labels."
                )

        def fn(*element):
            images = self._augment(element[0])
            rest = element[1:]
            if self.mixer is not None:
                mixed = self.mixer({"images": images, "labels": tf.cast(rest[0], tf.float32)}, training=True)
                images, rest = mixed["images"], (mixed["labels"], *rest[1:])
            return (images, *rest) if rest else images

        return dataset.map(fn, num_parallel_calls=num_parallel_calls or tf.data.AUTOTUNE)

    def get_config(self):
        config = super().get_config()
        config.pop("dtype", None)  # always float32; "dtype" is also an IDG keyword
        config.update({"preset": self.preset, "mixing": self.mixing, "seed": self.seed, "engine": self.engine})
        config.update({k: list(v) if isinstance(v, (tuple, np.ndarray)) else v for k, v in self._kwargs.items()})
        return config


def as_augmentation(value: Any, name: str | None = None) -> Augmentation | None:
    """An :class:`Augmentation` (or ``None``) from what an ``augmentation=`` argument may be.

    ``None`` and ``"none"`` mean no augmentation; a preset name (``"light"``,
    ``"standard"``, ``"heavy"``) or a dict of ImageDataGenerator keywords builds
    one; an :class:`Augmentation` is returned as it is. The one coercion used by
    :func:`~tfx_transfer.build_transfer_model`, :func:`~tfx_transfer.load_image_folder`,
    :func:`~tfx_transfer.pretrain` and :func:`~tfx_transfer.data.preview.preview_augmentation`.

    Args:
        value: ``None``, a preset name, a dict of keywords or an :class:`Augmentation`.
        name: the layer name of a newly built :class:`Augmentation` (default ``"augmentation"``).

    Example:
        >>> as_augmentation("none") is None, as_augmentation("light").preset
        (True, 'light')
        >>> as_augmentation({"horizontal_flip": True}).settings["horizontal_flip"]
        True
    """
    if value is None or isinstance(value, Augmentation):
        return value
    named = {} if name is None else {"name": name}
    if isinstance(value, str):
        if value.lower() == "none":
            return None
        if value.lower() not in PRESETS:
            raise ValueError(f"augmentation={value!r}: choose a preset of {sorted(PRESETS)}, pass a dict "
                             "of ImageDataGenerator keywords, an Augmentation, or None.")
        return Augmentation(preset=value, **named)
    if isinstance(value, dict):
        return Augmentation(**{**named, **value})
    raise TypeError(
        f"augmentation={value!r}: pass an Augmentation, a preset name ({', '.join(sorted(PRESETS))}), "
        "a dict of ImageDataGenerator keywords, or None."
    )

