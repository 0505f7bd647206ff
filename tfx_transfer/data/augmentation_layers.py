"""The random layers behind :class:`tfx_transfer.Augmentation`, with ImageDataGenerator's meanings.

:class:`RandomAffine` (rotation, shifts, shear, zoom, flips in one resampling, IDG's
own matrix: :func:`idg_affine_transform`), :class:`RandomBrightnessScale` (IDG
multiplies) and :class:`RandomChannelShift`. They are ``DataLayer`` subclasses: safe
inside ``tf.data`` and in a model, on any backend.

Example:
    >>> import numpy as np
    >>> float(RandomBrightnessScale((0.5, 0.5))(np.full((1, 2, 2, 3), 100.0)).numpy().max())
    50.0
"""

from __future__ import annotations

import math
from typing import Any

import keras
import numpy as np

from tfx_transfer._compat import DataLayer, seed_generator

FILL_MODES = ("nearest", "constant", "reflect", "wrap")


def check_shift(value: Any, key: str) -> float | int | list:
    """IDG shift range, kept as IDG reads it: float (fraction if < 1, else pixels), int pixels or a list.

    A float or int becomes its absolute value (the range is symmetric); a list
    becomes a list of floats (the values drawn from, with a random sign). ``key``
    is the keyword's name, used in the error message for an empty list.

    Example:
        >>> check_shift(-0.1, "width_shift_range"), check_shift(4, "width_shift_range")
        (0.1, 4)
        >>> check_shift([2, 3], "height_shift_range")
        [2.0, 3.0]
    """
    if isinstance(value, (list, tuple, np.ndarray)):
        values = [float(v) for v in value]
        if not values:
            raise ValueError(f"{key}={value!r}: the list of shifts is empty.")
        return values
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return abs(int(value))
    return abs(float(value))


def zoom_bounds(zoom_range: Any) -> tuple[float, float]:
    """IDG ``zoom_range`` as ``(low, high)``: a float ``z`` is ``[1 - z, 1 + z]``, a pair is sorted.

    Raises ``ValueError`` unless the lower bound is > 0 (a scale of 0 or less has
    no image to sample).

    Example:
        >>> zoom_bounds(0.2), zoom_bounds([1.2, 0.8])
        ((0.8, 1.2), (0.8, 1.2))
    """
    if isinstance(zoom_range, (int, float)):
        low, high = 1 - zoom_range, 1 + zoom_range
    elif len(zoom_range) == 2:
        low, high = sorted(float(z) for z in zoom_range)
    else:
        raise ValueError(f"zoom_range={zoom_range!r}: pass a float or [lower, upper].")
    if not low > 0:
        raise ValueError(f"zoom_range={zoom_range!r} gives [{low}, {high}]; the lower bound must be > 0.")
    return low, high


def idg_affine_transform(bk, height, width, theta, tx, ty, shear, zx, zy, flip_x, flip_y):
    """ImageDataGenerator's transform as ``(B, 8)`` projective transforms for ``affine_transform``.

    ``C @ R(theta) @ T(tx, ty) @ S(shear) @ Z(zx, zy) @ F(flip_x, flip_y) @ C^-1``:
    rotation, shift, shear and zoom composed in IDG's order about the image
    center ``C`` (pixel-center coordinates, x = column, y = row), then the flips
    (``flip_x``/``flip_y`` = -1 to flip, 1 not). Each matrix maps output to
    input coordinates, as in IDG: ``zx > 1`` zooms out, the shear maps
    ``(x, y)`` to ``(x - sin(shear) * y, cos(shear) * y)``.

    Args:
        bk: the backend module to compute with (a ``DataLayer``'s ``self.backend``:
            TensorFlow inside ``tf.data``, the Keras backend in a model).
        height, width: the image size in pixels (ints or scalar tensors).
        theta: rotation angles in degrees, ``(B,)``.
        tx, ty: shifts in pixels along x (columns) and y (rows), ``(B,)``.
        shear: shear angles in degrees, ``(B,)``.
        zx, zy: zoom factors along x and y, ``(B,)`` (1: none; > 1 zooms out).
        flip_x, flip_y: -1 to flip along that axis, 1 not to, ``(B,)``.

    Returns:
        ``(B, 8)`` float32: the first 8 entries of each 3x3 matrix, row-major, as
        ``keras.ops.image.affine_transform`` takes them.

    Example:
        >>> bk = RandomAffine().backend
        >>> zeros, ones = np.zeros(2, "float32"), np.ones(2, "float32")
        >>> t = idg_affine_transform(bk, 32, 32, *[zeros] * 4, *[ones] * 4)
        >>> keras.ops.convert_to_numpy(t)[0].tolist()  # identity: no rotation, shift, zoom
        [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0]
        >>> t = idg_affine_transform(bk, 32, 32, *[zeros] * 4, *[ones] * 2, -ones, ones)
        >>> keras.ops.convert_to_numpy(t)[0].tolist()  # horizontal flip: output x reads 31 - x
        [-1.0, 0.0, 31.0, 0.0, 1.0, 0.0, 0.0, 0.0]
    """
    n = bk.numpy
    one, zero = n.ones_like(theta), n.zeros_like(theta)
    cx = one * (bk.cast(width, "float32") - 1.0) / 2.0
    cy = one * (bk.cast(height, "float32") - 1.0) / 2.0
    t, s = theta * (math.pi / 180.0), shear * (math.pi / 180.0)

    def mat(*rows):
        return n.stack([n.stack(row, axis=-1) for row in rows], axis=-2)

    last = [zero, zero, one]
    m = mat([one, zero, cx], [zero, one, cy], last)
    for step in (
        mat([n.cos(t), -n.sin(t), zero], [n.sin(t), n.cos(t), zero], last),
        mat([one, zero, tx], [zero, one, ty], last),
        mat([one, -n.sin(s), zero], [zero, n.cos(s), zero], last),
        mat([zx, zero, zero], [zero, zy, zero], last),
        mat([flip_x, zero, zero], [zero, flip_y, zero], last),
        mat([one, zero, -cx], [zero, one, -cy], last),
    ):
        m = n.matmul(m, step)
    return n.concatenate([m[:, 0, :], m[:, 1, :], n.zeros_like(m[:, 0, :2])], axis=-1)


@keras.saving.register_keras_serializable(package="tfx_transfer")
class RandomAffine(DataLayer):
    """ImageDataGenerator's geometric augmentation in one resampling (rotation, shifts, shear, zoom, flips).

    Same keywords, meanings and composition as ImageDataGenerator (see
    :func:`idg_affine_transform`): ``rotation_range`` and ``shear_range`` in
    degrees (U(-r, r)); shifts as a fraction of the side if < 1, pixels if
    >= 1 (an int ``n`` draws integers in [-(n-1), n-1], a list draws one of its
    values with a random sign); ``zoom_range=(low, high)`` draws ``zx`` and
    ``zy`` independently; each flip with probability 0.5. One
    ``affine_transform`` call per batch (the per-image matrices differ).

    Args:
        rotation_range: largest rotation, degrees.
        width_shift_range, height_shift_range: horizontal / vertical shift range
            (:func:`check_shift`).
        shear_range: largest shear angle, degrees.
        zoom_range: a float ``z`` (``[1 - z, 1 + z]``) or ``(low, high)``
            (:func:`zoom_bounds`); factors > 1 zoom out, as in IDG.
        horizontal_flip, vertical_flip: mirror left-right / upside down with
            probability 0.5.
        fill_mode: how pixels outside the image are filled: ``"nearest"``,
            ``"constant"``, ``"reflect"`` or ``"wrap"``.
        fill_value: the pixel value for ``fill_mode="constant"``.
        interpolation: ``"bilinear"`` or ``"nearest"``.
        seed: seed of the layer's random draws (``None``: unseeded).

    Example:
        >>> layer = RandomAffine(rotation_range=20, zoom_range=(0.8, 1.2), seed=0)
        >>> tuple(layer(np.zeros((2, 32, 32, 3)), training=True).shape)
        (2, 32, 32, 3)
    """

    def __init__(self, rotation_range=0.0, width_shift_range=0.0, height_shift_range=0.0, shear_range=0.0,
                 zoom_range=(1.0, 1.0), horizontal_flip=False, vertical_flip=False, fill_mode="nearest",
                 fill_value=0.0, interpolation="bilinear", seed=None, **kwargs):
        super().__init__(**kwargs)
        self.rotation_range = abs(float(rotation_range))
        self.width_shift_range = check_shift(width_shift_range, "width_shift_range")
        self.height_shift_range = check_shift(height_shift_range, "height_shift_range")
        self.shear_range = abs(float(shear_range))
        self.zoom_range = list(zoom_bounds(zoom_range))
        self.horizontal_flip, self.vertical_flip = bool(horizontal_flip), bool(vertical_flip)
        if fill_mode not in FILL_MODES:
            raise ValueError(f"fill_mode={fill_mode!r}: use one of {list(FILL_MODES)}.")
        self.fill_mode, self.fill_value, self.interpolation = fill_mode, float(fill_value), interpolation
        self.seed = seed
        self.generator = keras.random.SeedGenerator(seed)
        self.supports_jit = False  # ImageProjectiveTransform has no XLA kernel

    def _shift(self, spec, batch, size, seed):
        bk = self.backend
        if isinstance(spec, float):
            shift = bk.random.uniform((batch,), -spec, spec, seed=seed)
            fraction = spec < 1
        else:  # IDG: np.random.choice(range(n) or the list) times a random sign
            values = list(range(spec)) if isinstance(spec, int) else spec
            index = bk.random.randint((batch,), 0, len(values), seed=seed)
            sign = bk.numpy.where(bk.random.uniform((batch,), seed=seed) < 0.5, -1.0, 1.0)
            shift = bk.numpy.take(bk.convert_to_tensor(values, "float32"), index) * sign
            fraction = max(abs(v) for v in values) < 1
        return shift * bk.cast(size, "float32") if fraction else shift

    def call(self, images, training=True):
        bk = self.backend
        images = bk.cast(images, self.compute_dtype)
        if not training:
            return images
        shape = bk.shape(images)
        batched = images if len(shape) == 4 else bk.numpy.expand_dims(images, 0)
        batch, height, width = bk.shape(batched)[0], bk.shape(batched)[1], bk.shape(batched)[2]
        seed = seed_generator(self)

        def uniform(low, high):
            return bk.random.uniform((batch,), low, high, seed=seed)

        def flip(enabled):
            return bk.numpy.where(uniform(0.0, 1.0) < 0.5, -1.0, 1.0) if enabled else uniform(1.0, 1.0)

        transform = idg_affine_transform(
            bk, height, width,
            theta=uniform(-self.rotation_range, self.rotation_range),
            tx=self._shift(self.width_shift_range, batch, width, seed),
            ty=self._shift(self.height_shift_range, batch, height, seed),
            shear=uniform(-self.shear_range, self.shear_range),
            zx=uniform(*self.zoom_range),
            zy=uniform(*self.zoom_range),
            flip_x=flip(self.horizontal_flip),
            flip_y=flip(self.vertical_flip),
        )
        out = bk.image.affine_transform(
            batched, transform, interpolation=self.interpolation, fill_mode=self.fill_mode,
            fill_value=self.fill_value,
        )
        return out if len(shape) == 4 else bk.numpy.squeeze(out, 0)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        keys = ("rotation_range", "width_shift_range", "height_shift_range", "shear_range", "zoom_range",
                "horizontal_flip", "vertical_flip", "fill_mode", "fill_value", "interpolation", "seed")
        return {**super().get_config(), **{k: getattr(self, k) for k in keys}}


@keras.saving.register_keras_serializable(package="tfx_transfer")
class RandomBrightnessScale(DataLayer):
    """Multiply each image by a random U(lower, upper) factor, clip to 0..255 (IDG ``brightness_range``).

    Example:
        >>> out = RandomBrightnessScale((0.8, 1.2), seed=0)(np.full((2, 4, 4, 3), 100.0))
        >>> bool(keras.ops.all((out >= 80) & (out <= 120)))
        True
    """

    def __init__(self, factor_range, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.factor_range = [float(f) for f in factor_range]
        if len(self.factor_range) != 2 or min(self.factor_range) < 0:
            raise ValueError(f"brightness_range={factor_range!r}: pass [lower, upper] with lower >= 0.")
        self.seed = seed
        self.generator = keras.random.SeedGenerator(seed)

    def call(self, images, training=True):
        images = self.backend.cast(images, self.compute_dtype)
        if not training:
            return images
        shape = self.backend.shape(images)
        batch = 1 if len(shape) == 3 else shape[0]
        factor = self.backend.random.uniform(
            (batch, 1, 1, 1), *self.factor_range, seed=seed_generator(self)
        )
        factor = self.backend.numpy.reshape(factor, (1, 1, 1)) if len(shape) == 3 else factor
        return self.backend.numpy.clip(images * factor, 0.0, 255.0)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "factor_range": self.factor_range, "seed": self.seed}


@keras.saving.register_keras_serializable(package="tfx_transfer")
class RandomChannelShift(DataLayer):
    """Add one U(-intensity, intensity) value to all channels of each image (IDG ``channel_shift_range``).

    As in ImageDataGenerator, the result is clipped to the image's own min and max.

    Example:
        >>> images = np.linspace(0, 255, 96, dtype="float32").reshape(2, 4, 4, 3)
        >>> out = RandomChannelShift(30.0, seed=0)(images, training=True)
        >>> tuple(out.shape), bool(keras.ops.all((out >= 0) & (out <= 255)))
        ((2, 4, 4, 3), True)
    """

    def __init__(self, intensity, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.intensity = abs(float(intensity))
        self.seed = seed
        self.generator = keras.random.SeedGenerator(seed)

    def call(self, images, training=True):
        images = self.backend.cast(images, self.compute_dtype)
        if not training:
            return images
        bk, shape = self.backend, self.backend.shape(images)
        batched = images if len(shape) == 4 else bk.numpy.expand_dims(images, 0)
        shift = bk.random.uniform(
            (bk.shape(batched)[0], 1, 1, 1), -self.intensity, self.intensity,
            seed=seed_generator(self),
        )
        low = bk.numpy.min(batched, axis=(1, 2, 3), keepdims=True)
        high = bk.numpy.max(batched, axis=(1, 2, 3), keepdims=True)
        out = bk.numpy.minimum(bk.numpy.maximum(batched + shift, low), high)
        return out if len(shape) == 4 else bk.numpy.squeeze(out, 0)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "intensity": self.intensity, "seed": self.seed}
