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

How the ImageDataGenerator keywords map:

* ``rotation_range``, ``width_shift_range``, ``height_shift_range``,
  ``shear_range``, ``zoom_range``, ``horizontal_flip``, ``vertical_flip``,
  ``fill_mode``, ``cval`` (-> ``fill_value``), ``interpolation_order`` 0/1
  (-> ``"nearest"``/``"bilinear"``): one :class:`RandomAffine` with IDG's own
  matrix (:func:`idg_affine_transform`: rotation, shift, shear, zoom about the
  center, then flips), so each batch is resampled once, as IDG does. Keras's
  ``RandomRotation``/``RandomTranslation``/``RandomShear``/``RandomZoom``/
  ``RandomFlip`` chained would resample four or five times (softer images,
  about 3x slower on CPU) and shear about the top-left corner instead of the
  center. ``Augmentation(..., engine="keras")`` builds that stock Keras chain
  instead (see :class:`Augmentation` for its exact factors and differences).
* ``channel_shift_range=r``: :class:`RandomChannelShift`, one U(-r, r) added to
  all channels, clipped to the image's own min/max (as IDG).
* ``brightness_range=[a, b]``: :class:`RandomBrightnessScale`, pixels times
  U(a, b), clipped to 0..255 (IDG multiplies; Keras's ``RandomBrightness`` adds).

Residual differences: ``interpolation_order`` above 1 (spline) is not
available (bilinear is used, with a warning); brightness is not re-quantized
to integers as IDG's PIL round trip does. Keras 3's legacy
``ImageDataGenerator`` port applies ``height_shift_range`` horizontally and
``width_shift_range`` vertically, and centers zoom/rotation at (H/2, W/2)
swapped on non-square images; we follow the documented meaning.

Harmless keywords are accepted with one ``UserWarning`` when set: ``rescale``
(the model rescales raw 0..255 pixels itself), ``dtype`` (output is
``float32``), ``validation_split`` (pass it to ``load_image_folder``),
``interpolation_order`` other than 0/1. ``zca_epsilon`` and keywords at their
IDG default are accepted silently, so ``ImageDataGenerator``'s full keyword set
works. Keywords with no equivalent raise ``ValueError`` when set
(``featurewise_*``, ``samplewise_*``, ``zca_whitening``,
``preprocessing_function``); so do unknown keywords and
``data_format="channels_first"``.

Presets: ``"none"``; ``"light"`` (flip, 10 deg, zoom 0.1); ``"standard"`` (flip,
20 deg, shifts 0.1, zoom 0.15, brightness 0.9-1.1); ``"heavy"`` (flip,
``keras.layers.RandAugment(num_ops=2, factor=0.2)`` and ``MixUp(alpha=0.2)``).
"""

from __future__ import annotations

import itertools
import math
import os
import warnings
from pathlib import Path
from typing import Any

import keras
import numpy as np

from tfx_transfer.data.augmentation_layers import (
    FILL_MODES,
    RandomAffine,
    RandomBrightnessScale,
    RandomChannelShift,
    check_shift,
    zoom_bounds,
)

_IDG_DEFAULTS: dict[str, Any] = {
    "rotation_range": 0,
    "width_shift_range": 0.0,
    "height_shift_range": 0.0,
    "brightness_range": None,
    "shear_range": 0.0,
    "zoom_range": 0.0,
    "channel_shift_range": 0.0,
    "fill_mode": "nearest",
    "cval": 0.0,
    "horizontal_flip": False,
    "vertical_flip": False,
    "interpolation_order": 1,
}
_HARMLESS = {
    "rescale": "the model's own preprocessing scales raw 0..255 pixels; rescaling here would scale twice",
    "dtype": "the output is float32",
    "validation_split": "pass validation_split to load_image_folder instead",
    "data_format": "images are channels_last",
}
_NO_EQUIVALENT = (
    "featurewise_center",
    "samplewise_center",
    "featurewise_std_normalization",
    "samplewise_std_normalization",
    "zca_whitening",
    "preprocessing_function",
)
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


def _is_default(key: str, value: Any) -> bool:
    if key == "data_format":
        return value in (None, "channels_last")
    if key == "rescale":
        return value in (None, 0, 1)
    return not value  # False, None, 0, 0.0


def _check_idg_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Validate ImageDataGenerator keywords; return the ones we implement (warns for harmless ones)."""
    known = set(_IDG_DEFAULTS) | set(_HARMLESS) | set(_NO_EQUIVALENT) | {"zca_epsilon"}
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise ValueError(
            f"Unknown ImageDataGenerator keyword(s) {unknown}; supported: {sorted(_IDG_DEFAULTS)}."
        )
    unsupported = sorted(k for k in _NO_EQUIVALENT if k in kwargs and not _is_default(k, kwargs[k]))
    if unsupported:
        raise ValueError(
            f"ImageDataGenerator keyword(s) {unsupported} have no equivalent here: the model "
            "normalizes inputs itself (remove them); for preprocessing_function, map your "
            "function over the tf.data dataset."
        )
    if kwargs.get("fill_mode", "nearest") not in FILL_MODES:
        raise ValueError(f"fill_mode={kwargs['fill_mode']!r}: use one of {list(FILL_MODES)}.")
    if kwargs.get("data_format") == "channels_first":
        raise ValueError("data_format='channels_first' is not supported: images are (H, W, 3).")
    ignored = sorted(k for k in _HARMLESS if k in kwargs and not _is_default(k, kwargs[k]))
    order = kwargs.get("interpolation_order", 1)
    if order not in (0, 1):
        ignored.append("interpolation_order")
    if ignored:
        reasons = {**_HARMLESS, "interpolation_order": f"order {order} is not available; bilinear (1) is used"}
        warnings.warn(
            "Augmentation ignores " + "; ".join(f"{k}={kwargs[k]!r} ({reasons[k]})" for k in ignored),
            UserWarning,
            stacklevel=3,
        )
    kept = {k: v for k, v in kwargs.items() if k in _IDG_DEFAULTS}
    if kept.get("interpolation_order", 1) not in (0, 1):
        del kept["interpolation_order"]
    return kept


def _make_augmenters(
    s: dict[str, Any], rand_augment: bool, seed: int | None, engine: str = "affine"
) -> tuple[list[keras.layers.Layer], dict[str, Any] | None]:
    """The layers for IDG settings ``s``, in IDG's order (geometric, channel shift, brightness).

    Also returns the ``RandomTranslation`` still waiting for the image size (keras
    engine with pixel shifts; see :func:`_keras_geometric`), else ``None``.
    """
    seeds = itertools.count(seed or 0)

    def next_seed():
        return None if seed is None else next(seeds)

    layers: list[keras.layers.Layer] = []
    pending = None
    geometric = ("rotation_range", "width_shift_range", "height_shift_range", "shear_range",
                 "horizontal_flip", "vertical_flip")
    if engine == "keras":
        layers, pending = _keras_geometric(s, next_seed)
    elif any(_is_active(s[k]) for k in geometric) or zoom_bounds(s["zoom_range"]) != (1.0, 1.0):
        layers.append(RandomAffine(
            **{k: s[k] for k in geometric}, zoom_range=zoom_bounds(s["zoom_range"]),
            fill_mode=s["fill_mode"], fill_value=s["cval"],
            interpolation="nearest" if s["interpolation_order"] == 0 else "bilinear",
            seed=next_seed(), dtype="float32",
        ))
    if s["channel_shift_range"]:
        layers.append(RandomChannelShift(s["channel_shift_range"], seed=next_seed(), dtype="float32"))
    if s["brightness_range"] is not None and list(s["brightness_range"]) != [1, 1]:
        layers.append(RandomBrightnessScale(s["brightness_range"], seed=next_seed(), dtype="float32"))
    if rand_augment:
        layers.append(keras.layers.RandAugment(
            value_range=(0, 255), num_ops=2, factor=0.2, seed=next_seed(), dtype="float32"
        ))
    return layers, pending


def _keras_geometric(s: dict[str, Any], next_seed) -> tuple[list[keras.layers.Layer], dict[str, Any] | None]:
    """Stock Keras layers for IDG's geometric settings, in IDG's order (see ``Augmentation``'s ``engine``).

    Pixel shifts need the image size, so their ``RandomTranslation`` is returned
    as keyword arguments (with its list index) for :func:`_keras_translation` at build time.
    """
    common = dict(fill_mode=s["fill_mode"], fill_value=float(s["cval"]), dtype="float32",
                  interpolation="nearest" if s["interpolation_order"] == 0 else "bilinear")
    layers: list[keras.layers.Layer] = []
    pending = None
    if s["rotation_range"]:
        layers.append(keras.layers.RandomRotation(abs(float(s["rotation_range"])) / 360.0, seed=next_seed(), **common))
    shifts = {k: check_shift(s[k], k) for k in ("width_shift_range", "height_shift_range")}
    if any(_is_active(v) for v in shifts.values()):
        for key, spec in shifts.items():
            if isinstance(spec, list):
                raise ValueError(f"{key}={spec!r}: a list of shifts has no RandomTranslation equivalent; "
                                 "pass a float or an int, or use engine='affine'.")
        translation = {**shifts, "seed": next_seed(), **common}
        if any(_shift_pixels(v) for v in shifts.values()):
            pending = {"index": len(layers), **translation}
        else:
            layers.append(_keras_translation(height=None, width=None, **translation))
    if s["shear_range"]:
        angle = abs(float(s["shear_range"]))
        if angle > 45:
            raise ValueError(f"shear_range={s['shear_range']!r}: engine='keras' shears by at most 45 degrees "
                             "(RandomShear x_factor = tan(angle) <= 1); lower it or use engine='affine'.")
        layers.append(keras.layers.RandomShear(x_factor=math.tan(math.radians(angle)), y_factor=0.0,
                                               seed=next_seed(), **common))
    low, high = zoom_bounds(s["zoom_range"])
    if (low, high) != (1.0, 1.0):
        if high > 2:
            raise ValueError(f"zoom_range={s['zoom_range']!r}: engine='keras' zooms up to 2 (RandomZoom "
                             "factor <= 1); lower it or use engine='affine'.")
        factor = (low - 1.0, high - 1.0)
        layers.append(keras.layers.RandomZoom(height_factor=factor, width_factor=factor, seed=next_seed(), **common))
    for key, mode in (("horizontal_flip", "horizontal"), ("vertical_flip", "vertical")):
        if s[key]:
            layers.append(keras.layers.RandomFlip(mode, seed=next_seed(), dtype="float32"))
    return layers, pending


def _shift_pixels(spec: float | int) -> float:
    """The pixel range of an IDG shift (0.0 when it is a fraction of the side)."""
    if isinstance(spec, float):
        return spec if spec >= 1 else 0.0
    return float(max(spec - 1, 0))  # int n: IDG draws integers in [-(n-1), n-1]


def _keras_translation(width_shift_range, height_shift_range, height, width, **kwargs) -> keras.layers.Layer:
    """``RandomTranslation`` for IDG shifts; pixel shifts become fractions of ``height``/``width``."""

    def fraction(spec, key, size):
        pixels = _shift_pixels(spec)
        if not pixels:
            return float(spec) if isinstance(spec, float) else 0.0
        if size is None:
            raise ValueError(f"{key}={spec!r} is in pixels, which engine='keras' converts with the image size, "
                             "but the input size is unknown; give the input a fixed size, pass a fraction "
                             "(< 1) or use engine='affine'.")
        if pixels > size:
            raise ValueError(f"{key}={spec!r} pixels is more than the image side ({size}); lower it.")
        return pixels / size

    return keras.layers.RandomTranslation(
        height_factor=fraction(height_shift_range, "height_shift_range", height),
        width_factor=fraction(width_shift_range, "width_shift_range", width),
        **kwargs,
    )


def _is_active(value: Any) -> bool:
    return bool(len(value)) if isinstance(value, (list, tuple, np.ndarray)) else bool(value)


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
        **idg_kwargs: ImageDataGenerator keywords (see the module docstring);
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
        self._kwargs = _check_idg_kwargs(kwargs)
        self.settings = {**_IDG_DEFAULTS, **PRESETS[preset_key], **self._kwargs}
        self.augmenters, self._pending_shift = _make_augmenters(self.settings, preset_key == "heavy", seed, engine)
        mixer_seed = None if seed is None else seed + len(self.augmenters) + (self._pending_shift is not None)
        self.mixer = None
        if mixing == "mixup":
            self.mixer = keras.layers.MixUp(alpha=0.2, seed=mixer_seed, dtype="float32")
        elif mixing == "cutmix":
            self.mixer = keras.layers.CutMix(seed=mixer_seed, dtype="float32")
        self._warned_mixing = False

    @property
    def is_random(self) -> bool:
        """Whether any random operation is active (``False`` for ``"none"`` or no keywords)."""
        return bool(self.augmenters) or self._pending_shift is not None or self.mixer is not None

    def build(self, input_shape):
        if self._pending_shift is not None:  # keras engine, pixel shifts: now the image size is known
            index = self._pending_shift.pop("index")
            layer = _keras_translation(height=input_shape[-3], width=input_shape[-2], **self._pending_shift)
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
    :func:`~tfx_transfer.pretrain` and :func:`preview_augmentation`.

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


def preview_augmentation(
    images_or_dataset: Any,
    augmentation: Augmentation | str | dict,
    path: str | os.PathLike = "augmentation.png",
    n: int = 9,
    seed: int | None = 0,
) -> Path:
    """Save a PNG grid of ``n`` augmented samples and return its path.

    One image ``(H, W, 3)`` gives ``n`` variants of it; a batch or a ``tf.data``
    dataset (of images or ``(images, labels)``) gives its first ``n`` images,
    each augmented (cycling when there are fewer). Label mixing is not shown.

    Args:
        images_or_dataset: one image, a batch, or a ``tf.data`` dataset.
        augmentation: an :class:`Augmentation`, a preset name or a dict of
            ImageDataGenerator keywords (:func:`as_augmentation`).
        path: the PNG file to write.
        n: samples shown.
        seed: seed of the random draws (``None``: a different grid each call).

    Example:
        >>> import os, tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "aug.png")
        >>> image = np.random.default_rng(0).integers(0, 255, (32, 32, 3), "uint8")
        >>> preview_augmentation(image, Augmentation(rotation_range=30), path).name
        'aug.png'
    """
    from matplotlib.figure import Figure

    images = _first_images(images_or_dataset, n)
    augmentation = as_augmentation(augmentation)
    if augmentation is None:
        raise ValueError("augmentation=None: nothing to preview; pass a preset name, a dict of "
                         "ImageDataGenerator keywords or an Augmentation.")
    config = {**augmentation.get_config(), "seed": seed}
    layer = Augmentation.from_config(config)
    out = np.clip(keras.ops.convert_to_numpy(layer._augment(images)), 0, 255).astype("uint8")
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(2 * cols, 2 * rows))
    for i, axis in enumerate(fig.subplots(rows, cols, squeeze=False).ravel()):
        axis.axis("off")
        if i < n:
            axis.imshow(out[i])
    fig.tight_layout()
    fig.savefig(path)
    return Path(path)


def _first_images(source: Any, n: int) -> np.ndarray:
    """``n`` images as a float32 (n, H, W, 3) array from an image, a batch or a dataset."""
    if hasattr(source, "take") and hasattr(source, "element_spec"):  # tf.data.Dataset
        batches = []
        for element in source:
            batch = element[0] if isinstance(element, tuple) else element
            batch = np.asarray(batch)
            batches.append(batch if batch.ndim == 4 else batch[None])
            if sum(len(b) for b in batches) >= n:
                break
        source = np.concatenate(batches)
    images = np.asarray(source, dtype="float32")
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"Expected images (H, W, 3) or (N, H, W, 3); got shape {images.shape}.")
    return images[np.arange(n) % len(images)]
