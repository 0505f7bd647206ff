"""ImageDataGenerator's keywords, checked and translated into Keras preprocessing layers.

:class:`~tfx_transfer.data.augmentation.Augmentation` takes ImageDataGenerator's
keyword names *and meanings*; this module checks them (:func:`check_idg_kwargs`)
and builds the layers with the same ranges (:func:`make_augmenters`).

How the ImageDataGenerator keywords map:

* ``rotation_range``, ``width_shift_range``, ``height_shift_range``,
  ``shear_range``, ``zoom_range``, ``horizontal_flip``, ``vertical_flip``,
  ``fill_mode``, ``cval`` (-> ``fill_value``), ``interpolation_order`` 0/1
  (-> ``"nearest"``/``"bilinear"``): one :class:`~tfx_transfer.RandomAffine` with IDG's own
  matrix (:func:`~tfx_transfer.data.augmentation_layers.idg_affine_transform`: rotation, shift, shear, zoom about the
  center, then flips), so each batch is resampled once, as IDG does. Keras's
  ``RandomRotation``/``RandomTranslation``/``RandomShear``/``RandomZoom``/
  ``RandomFlip`` chained would resample four or five times (softer images,
  about 3x slower on CPU) and shear about the top-left corner instead of the
  center. ``Augmentation(..., engine="keras")`` builds that stock Keras chain
  instead (see
  :class:`~tfx_transfer.data.augmentation.Augmentation` for its exact factors and differences).
* ``channel_shift_range=r``: :class:`~tfx_transfer.data.augmentation_layers.RandomChannelShift`, one U(-r, r) added to
  all channels, clipped to the image's own min/max (as IDG).
* ``brightness_range=[a, b]``:
  :class:`~tfx_transfer.data.augmentation_layers.RandomBrightnessScale`, pixels times
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
"""

from __future__ import annotations

import itertools
import math
import warnings
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

IDG_DEFAULTS: dict[str, Any] = {
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


def _is_default(key: str, value: Any) -> bool:
    if key == "data_format":
        return value in (None, "channels_last")
    if key == "rescale":
        return value in (None, 0, 1)
    return not value  # False, None, 0, 0.0


def check_idg_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Validate ImageDataGenerator keywords; return the ones we implement (warns for harmless ones).

    Example:
        >>> check_idg_kwargs({"rotation_range": 20, "zca_epsilon": 1e-6})
        {'rotation_range': 20}
    """
    known = set(IDG_DEFAULTS) | set(_HARMLESS) | set(_NO_EQUIVALENT) | {"zca_epsilon"}
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise ValueError(
            f"Unknown ImageDataGenerator keyword(s) {unknown}; supported: {sorted(IDG_DEFAULTS)}."
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
    kept = {k: v for k, v in kwargs.items() if k in IDG_DEFAULTS}
    if kept.get("interpolation_order", 1) not in (0, 1):
        del kept["interpolation_order"]
    return kept


def make_augmenters(
    s: dict[str, Any], rand_augment: bool, seed: int | None, engine: str = "affine"
) -> tuple[list[keras.layers.Layer], dict[str, Any] | None]:
    """The layers for IDG settings ``s``, in IDG's order (geometric, channel shift, brightness).

    Also returns the ``RandomTranslation`` still waiting for the image size (keras
    engine with pixel shifts; see :func:`_keras_geometric`), else ``None``.

    Args:
        s: every keyword of :data:`IDG_DEFAULTS`, set or at its default.
        rand_augment: append ``RandAugment(num_ops=2, factor=0.2)`` (preset ``"heavy"``).
        seed: first seed of the layers (one more per layer), or ``None``.
        engine: ``"affine"`` (one :class:`~tfx_transfer.RandomAffine`) or ``"keras"``
            (the stock Keras layers).

    Example:
        >>> layers, pending = make_augmenters({**IDG_DEFAULTS, "rotation_range": 20,
        ...                                    "channel_shift_range": 10}, False, seed=0)
        >>> [type(layer).__name__ for layer in layers], pending
        (['RandomAffine', 'RandomChannelShift'], None)
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
    as keyword arguments (with its list index) for :func:`keras_translation` at build time.
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
            layers.append(keras_translation(height=None, width=None, **translation))
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


def keras_translation(width_shift_range, height_shift_range, height, width, **kwargs) -> keras.layers.Layer:
    """``RandomTranslation`` for IDG shifts; pixel shifts become fractions of ``height``/``width``.

    Args:
        width_shift_range, height_shift_range: IDG shifts (a fraction of the side
            below 1, else pixels).
        height, width: the image size (``None`` when unknown: pixel shifts then raise).
        **kwargs: passed to ``RandomTranslation`` (seed, fill mode, ...).

    Example:
        >>> layer = keras_translation(0.1, 4, height=32, width=32)
        >>> layer.height_factor, layer.width_factor
        (0.09375, 0.1)
    """

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
