"""Image bytes to pixels: the one decoder of training, evaluation, export and serving.

:func:`decode_and_resize` is used by the ``tf.data`` pipeline and by the exported
serving signature alike, so a model sees identical pixels in training and in
production. Pixels come out as ``uint8`` RGB ``(H, W, 3)`` in 0..255: grayscale,
palette, RGBA and CMYK images become RGB, a GIF gives its first frame. EXIF
orientation is ignored (as in Keras). The few files TensorFlow cannot decode
(TIFF, palette BMP, and WebP before TensorFlow 2.19) are read with Pillow
instead (:func:`needs_pil`, :func:`pil_decode`), chosen per file.

Example:
    >>> import io
    >>> from PIL import Image
    >>> jpg = io.BytesIO(); Image.new("RGB", (64, 48)).save(jpg, "JPEG")
    >>> tuple(decode_and_resize(jpg.getvalue(), (32, 32)).shape)
    (32, 32, 3)
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

# tf.io.decode_image reads WebP from TensorFlow 2.19; older versions read it with Pillow.
TENSORFLOW_DECODES_WEBP = tuple(int(v) for v in tf.__version__.split(".")[:2]) >= (2, 19)
PIL_ONLY_EXTENSIONS = (".tif", ".tiff") + (() if TENSORFLOW_DECODES_WEBP else (".webp",))


def decode_image(image_bytes: tf.Tensor) -> tf.Tensor:
    """Decode JPEG/PNG/GIF/BMP/WebP bytes to ``uint8`` RGB ``(H, W, 3)``.

    Grayscale, palette, RGBA and CMYK become RGB (alpha is dropped); a GIF
    gives its first frame. Pure TensorFlow ops, usable inside a graph.

    Example:
        >>> import io
        >>> from PIL import Image
        >>> png = io.BytesIO(); Image.new("L", (64, 48)).save(png, "PNG")  # grayscale
        >>> decode_image(png.getvalue()).shape
        TensorShape([48, 64, 3])
    """
    image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False, dtype=tf.uint8)
    image.set_shape([None, None, 3])
    return image


def resize_image(
    image: tf.Tensor, image_size: Sequence[int], crop_to_aspect_ratio: bool = False
) -> tf.Tensor:
    """Resize a ``(H, W, 3)`` image to ``image_size`` = (height, width), ``uint8`` out.

    Bilinear with antialiasing (``tf.image.resize(..., antialias=True)``), so
    large photos are downscaled without aliasing; the result is rounded and
    clipped to 0..255. The aspect ratio is not kept (the image is stretched)
    unless ``crop_to_aspect_ratio=True``, which first takes the largest central
    crop with the target aspect ratio (as Keras's ``crop_to_aspect_ratio``).

    Args:
        image: ``(H, W, 3)`` pixels, any numeric dtype, 0..255.
        image_size: ``(height, width)`` of the result.
        crop_to_aspect_ratio: center-crop to the target aspect ratio first.

    Example:
        >>> resize_image(tf.zeros([300, 400, 3], tf.uint8), (224, 224)).shape
        TensorShape([224, 224, 3])
    """
    height, width = int(image_size[0]), int(image_size[1])
    if crop_to_aspect_ratio:
        shape = tf.shape(image)
        in_h, in_w = shape[0], shape[1]
        crop_h = tf.minimum(in_h, tf.cast(tf.cast(in_w, tf.float64) * height / width, tf.int32))
        crop_w = tf.minimum(in_w, tf.cast(tf.cast(in_h, tf.float64) * width / height, tf.int32))
        crop_h, crop_w = tf.maximum(crop_h, 1), tf.maximum(crop_w, 1)
        image = tf.image.crop_to_bounding_box(
            image, (in_h - crop_h) // 2, (in_w - crop_w) // 2, crop_h, crop_w
        )
    resized = tf.image.resize(image, (height, width), method="bilinear", antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(resized), 0.0, 255.0), tf.uint8)


def decode_and_resize(
    image_bytes: tf.Tensor, image_size: Sequence[int], crop_to_aspect_ratio: bool = False
) -> tf.Tensor:
    """Encoded image bytes (a scalar string tensor) to ``uint8`` ``(H, W, 3)`` at ``image_size``.

    :func:`decode_image` then :func:`resize_image`; the training pipeline and
    the exported serving signature both use it, so they see identical pixels.

    Args:
        image_bytes: the encoded file (JPEG, PNG, GIF, BMP, WebP).
        image_size: ``(height, width)`` of the result.
        crop_to_aspect_ratio: center-crop to the target aspect ratio before resizing.

    Example:
        >>> import io
        >>> from PIL import Image
        >>> jpg = io.BytesIO(); Image.new("RGB", (64, 48)).save(jpg, "JPEG")
        >>> image = decode_and_resize(jpg.getvalue(), (32, 32))
        >>> image.shape, image.dtype
        (TensorShape([32, 32, 3]), tf.uint8)
    """
    return resize_image(decode_image(image_bytes), image_size, crop_to_aspect_ratio)


def pil_decode(path: bytes | str | os.PathLike) -> np.ndarray:
    """Decode a file with Pillow (first frame, RGB), for the files TensorFlow cannot read.

    Example:
        >>> import tempfile
        >>> from PIL import Image
        >>> path = os.path.join(tempfile.mkdtemp(), "photo.tif")
        >>> Image.new("RGB", (5, 4), (200, 10, 10)).save(path)
        >>> pil_decode(path).shape, pil_decode(path)[0, 0].tolist()
        ((4, 5, 3), [200, 10, 10])
    """
    from PIL import Image

    path = path.decode() if isinstance(path, bytes) else os.fspath(path)
    with Image.open(path) as img:
        img.seek(0)
        return np.asarray(img.convert("RGB"), dtype=np.uint8)


def needs_pil(path: str | os.PathLike) -> bool:
    """Whether a file must be read with Pillow: TIFF, and BMPs of 8 bits or less per pixel.

    TensorFlow reads a palette BMP's indices as gray levels, so those go to Pillow too.

    Example:
        >>> needs_pil("scan.TIFF"), needs_pil("photo.jpg")
        (True, False)
    """
    path = os.fspath(path)
    if path.lower().endswith(PIL_ONLY_EXTENSIONS):
        return True
    if not path.lower().endswith(".bmp"):
        return False
    with open(path, "rb") as f:
        header = f.read(30)
    return header[:2] == b"BM" and len(header) == 30 and int.from_bytes(header[28:30], "little") <= 8
