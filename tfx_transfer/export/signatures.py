"""The serving signatures of an export: encoded images or pixels in, classes out.

:func:`~tfx_transfer.export.saved_model.export_saved_model` adds these functions
(:class:`Serving`) to the SavedModel; they are pure TensorFlow ops, so serving
needs nothing of ours:

=========================  ==========================================================
``serving_default``        ``images``: ``tf.string [None]`` (JPEG, PNG, GIF, BMP or
                           WebP bytes) -> ``probabilities`` ``float32 [None, C]``,
                           ``class_ids`` ``int32 [None, k]``, ``class_names``
                           ``string [None, k]``, ``scores`` ``float32 [None, k]``
``predict_pixels``         ``pixels``: ``float32 [None, None, None, 3]``, RGB in
                           0..255, any size -> the same four outputs
``predict_pixels_uint8``   ``pixels``: ``uint8 [None, None, None, 3]`` -> the same
=========================  ==========================================================

A model fitted with :func:`tfx_transfer.fit_unknown` (every ``train`` run) adds two
outputs to each signature: ``unknown_score`` ``float32 [None]`` (1 - cosine
similarity of the image's pooled backbone features to the nearest stored training
image's, :mod:`tfx_transfer.models.unknown_score`) and ``unknown`` ``bool [None]``
(score above the threshold saved with the export).

A multi-label model's export adds ``above_threshold`` ``bool [None, C]``: each
label's probability reaches its threshold (chosen on validation images,
:func:`tfx_transfer.fit_thresholds`; listed in the metadata's ``thresholds``).

Pixels go through exactly the training pipeline's code
(:func:`tfx_transfer.data.decode.decode_and_resize`): decode to RGB (grayscale, palette,
RGBA become RGB; a GIF gives its first frame), bilinear antialiased resize to
the model's input size, rounded to ``uint8``; then the model with
``training=False`` (augmentation layers are identity). A pixel batch already at
the model size is passed to the model unchanged (no rounding), so
``predict_pixels`` equals ``model.predict`` exactly; other sizes are resized as
in training. Resize semantics can differ from yours in two documented ways:
images you resize yourself (PIL, OpenCV) before sending differ by that
resampler's rounding; and TensorFlow reads 8-bit palette BMPs as their palette
indices (the training pipeline reads those, and TIFFs, with Pillow) -- send PNG
or JPEG instead.

A bad image in a batch fails the call with ``tf.errors.InvalidArgumentError``
naming every bad index and why, e.g. ``Could not decode 1 of 3 image(s) of the
batch (index 1: not a JPEG, PNG, GIF, BMP or WebP image)``.

Example:
    >>> import keras
    >>> model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.GlobalAveragePooling2D(),
    ...                           keras.layers.Dense(2, activation="softmax")])
    >>> serving = Serving(model, tf.constant(["cat", "dog"]), (8, 8), top_k=1, crop=False)
    >>> outputs = serving.pixels(tf.zeros([3, 16, 12, 3]))  # resized to 8 x 8 as in training
    >>> sorted(outputs), outputs["class_names"].shape.as_list()
    (['class_ids', 'class_names', 'probabilities', 'scores'], [3, 1])
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf

from tfx_transfer.data.decode import TENSORFLOW_DECODES_WEBP, decode_and_resize, resize_image

SIGNATURE_IMAGES = "serving_default"
SIGNATURE_PIXELS = "predict_pixels"
SIGNATURE_PIXELS_UINT8 = "predict_pixels_uint8"
SERVING_FORMATS = "JPEG, PNG, GIF, BMP or WebP" if TENSORFLOW_DECODES_WEBP else "JPEG, PNG, GIF or BMP"


def _recognised_format(images: tf.Tensor) -> tf.Tensor:
    """Per element: do the bytes start like JPEG, PNG, GIF, BMP or WebP?"""
    head = tf.strings.substr(tf.strings.join([images, "\0" * 12]), 0, 12)

    def starts(prefix: bytes) -> tf.Tensor:
        return tf.equal(tf.strings.substr(head, 0, len(prefix)), prefix)

    known = starts(b"\xff\xd8\xff") | starts(b"\x89PNG") | starts(b"GIF8") | starts(b"BM")
    if not TENSORFLOW_DECODES_WEBP:  # TensorFlow < 2.19 cannot decode WebP in the graph
        return known
    return known | (starts(b"RIFF") & tf.equal(tf.strings.substr(head, 8, 4), b"WEBP"))


def decode_failure(data: bytes) -> str:
    """Why ``data`` (one encoded image that failed to decode) failed, as the export's error says it.

    Example:
        >>> decode_failure(b"hello")
        'not a JPEG, PNG, GIF, BMP or WebP image'
    """
    known = bool(_recognised_format(tf.constant([bytes(data)]))[0])
    return "corrupt or truncated image data" if known else f"not a {SERVING_FORMATS} image"


def _decode_batch(images: tf.Tensor, image_size: tuple[int, int], crop: bool) -> tf.Tensor:
    """``(N,)`` encoded images -> ``uint8 (N, H, W, 3)`` with ``decode_and_resize``.

    Each image is decoded on its own inside ``tf.data`` (in parallel); failures
    are dropped with ``ignore_errors`` and then reported together by one assert,
    so the error names the index of every bad image instead of the graph node.
    """
    height, width = image_size
    count = tf.shape(images, out_type=tf.int64)[0]
    decoded = (
        tf.data.Dataset.from_tensor_slices((tf.range(count), images))
        .map(lambda i, data: (i, decode_and_resize(data, image_size, crop)),
             num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        .ignore_errors()
        .batch(tf.maximum(count, 1))
    )
    empty = (tf.zeros([0], tf.int64), tf.zeros([0, height, width, 3], tf.uint8))
    ok, pixels = decoded.reduce(
        empty, lambda acc, batch: (tf.concat([acc[0], batch[0]], 0), tf.concat([acc[1], batch[1]], 0))
    )
    hit = tf.scatter_nd(ok[:, None], tf.ones_like(ok, tf.int32), tf.reshape(count, [1]))
    bad = tf.where(tf.equal(hit, 0))[:, 0]
    reasons = tf.where(
        tf.gather(_recognised_format(images), bad),
        "corrupt or truncated image data",
        f"not a {SERVING_FORMATS} image",
    )
    details = tf.strings.reduce_join(
        tf.strings.join(["index ", tf.strings.as_string(bad), ": ", reasons]), separator="; "
    )
    message = tf.strings.join([
        "Could not decode ", tf.strings.as_string(tf.size(bad)), " of ",
        tf.strings.as_string(count), " image(s) of the batch (", details, ")",
    ])
    check = tf.debugging.Assert(tf.equal(tf.size(bad), 0), [message])
    with tf.control_dependencies([check]):
        return tf.ensure_shape(tf.identity(pixels), [None, height, width, 3])


def _fit_pixels(pixels: tf.Tensor, image_size: tuple[int, int], crop: bool) -> tf.Tensor:
    """Pixels at the model size pass unchanged; others are resized like training images."""
    height, width = image_size
    shape = tf.shape(pixels)
    same = tf.logical_and(tf.equal(shape[1], height), tf.equal(shape[2], width))

    def resize() -> tf.Tensor:
        out = tf.map_fn(
            lambda image: resize_image(image, image_size, crop),
            pixels,
            fn_output_signature=tf.TensorSpec([height, width, 3], tf.uint8),
        )
        return tf.cast(out, tf.float32)

    fitted = tf.cond(same, lambda: tf.cast(pixels, tf.float32), resize)
    return tf.ensure_shape(fitted, [None, height, width, 3])


class Serving:
    """The signature functions of one export (closes over the model and the class names)."""

    def __init__(self, model: Any, labels: tf.Tensor, image_size: tuple[int, int],
                 top_k: int, crop: bool, unknown: tuple[Any, Any, float] | None = None,
                 thresholds: Any = None) -> None:
        self.model, self.labels, self.image_size = model, labels, image_size
        self.top_k, self.crop = top_k, crop
        # (feature model pixels -> [features, probabilities], references, threshold): adds
        # unknown_score and unknown (tfx_transfer.models.unknown_score).
        self.unknown = unknown
        # multi-label: per-label thresholds; adds ``above_threshold`` bool [None, C]
        self.thresholds = None if thresholds is None else tf.constant(thresholds, tf.float32)

    def _network(self, pixels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor | None]:
        if self.unknown is None:
            return tf.cast(self.model(pixels, training=False), tf.float32), None
        from tfx_transfer.models.unknown_score import knn_score

        features, probabilities = self.unknown[0](pixels, training=False)
        return tf.cast(probabilities, tf.float32), knn_score(features, self.unknown[1])

    def _outputs(self, pixels: tf.Tensor) -> dict[str, tf.Tensor]:
        # An empty batch never reaches the network: TensorFlow's oneDNN convolutions fail on
        # zero-size inputs inside a SavedModel graph.
        empty = tf.zeros([0, self.labels.shape[0]], tf.float32)
        if self.unknown is None:
            probabilities = tf.cond(tf.shape(pixels)[0] > 0, lambda: self._network(pixels)[0],
                                    lambda: empty)
        else:
            probabilities, unknown_score = tf.cond(
                tf.shape(pixels)[0] > 0, lambda: self._network(pixels),
                lambda: (empty, tf.zeros([0], tf.float32)))
        scores, class_ids = tf.math.top_k(probabilities, k=self.top_k)
        outputs = {
            "probabilities": probabilities,
            "class_ids": class_ids,
            "class_names": tf.gather(self.labels, class_ids),
            "scores": scores,
        }
        if self.unknown is not None:
            outputs["unknown_score"] = unknown_score
            outputs["unknown"] = unknown_score > self.unknown[2]
        if self.thresholds is not None:
            outputs["above_threshold"] = probabilities >= self.thresholds
        return outputs

    def images(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
        pixels = _decode_batch(images, self.image_size, self.crop)
        return self._outputs(tf.cast(pixels, tf.float32))

    def pixels(self, pixels: tf.Tensor) -> dict[str, tf.Tensor]:
        return self._outputs(_fit_pixels(pixels, self.image_size, self.crop))

