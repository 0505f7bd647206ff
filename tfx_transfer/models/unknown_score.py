"""The "none of these" score a model carries: nearest known image in its own feature space.

A model fitted by :func:`tfx_transfer.fit_unknown` keeps, in its transfer settings
(``tt.transfer_config(model)["unknown"]``), a few hundred reference features: the
pooled, L2-normalised backbone features of training images (at most
``max_references``, stratified by class, stored as float16). The score of an image is
``1 - cosine similarity to its nearest reference`` (k = 1 nearest neighbour, Sun et
al. 2022): 0 for an image like a training image, up to 2; higher means "less like
anything known". An image is ``unknown`` when its score is above ``threshold``
(chosen on validation images so that ``tpr`` of them are accepted).
``benchmarks/unknown_classes.py`` measured it against the maximum softmax
probability, the energy score and Mahalanobis distances (``docs/unknown.md``).

The same :func:`knn_score` (``keras.ops``) runs in Python on any backend and inside
the exported SavedModel's graph.

Example:
    >>> import numpy as np
    >>> refs = np.eye(3, 4, dtype="float32")
    >>> np.round(np.asarray(knn_score(np.array([[2.0, 0, 0, 0], [0, 0, 0, 1]]), refs)), 3)
    array([0., 1.], dtype=float32)
"""

from __future__ import annotations

import base64
import weakref
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np

UNKNOWN_KEY = "unknown"
METHOD = "knn"
DEFAULT_TPR = 0.95
DEFAULT_MAX_REFERENCES = 1024

_FEATURE_MODELS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def pack_array(array: np.ndarray) -> dict[str, Any]:
    """A float array as JSON: ``{"shape", "dtype": "float16", "base64"}`` (half the bytes of float32).

    Example:
        >>> unpack_array(pack_array(np.ones((2, 3)))).tolist()
        [[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]]
    """
    data = np.ascontiguousarray(array, dtype="<f2")
    return {"shape": list(data.shape), "dtype": "float16",
            "base64": base64.b64encode(data.tobytes()).decode("ascii")}


def unpack_array(packed: dict[str, Any]) -> np.ndarray:
    """The float32 array of :func:`pack_array`'s dict.

    Example:
        >>> unpack_array(pack_array(np.zeros(2))).dtype
        dtype('float32')
    """
    raw = np.frombuffer(base64.b64decode(packed["base64"]), dtype="<f2")
    return raw.reshape(packed["shape"]).astype("float32")


def l2_normalize(features: Any) -> Any:
    """Rows scaled to unit length (``keras.ops``; zero rows stay zero).

    Example:
        >>> np.round(np.asarray(l2_normalize(np.array([[3.0, 4.0]])), "float64"), 3).tolist()
        [[0.6, 0.8]]
    """
    features = keras.ops.cast(features, "float32")
    norm = keras.ops.sqrt(keras.ops.sum(keras.ops.square(features), axis=-1, keepdims=True))
    return features / keras.ops.maximum(norm, 1e-12)


def knn_score(features: Any, references: Any) -> Any:
    """``1 - max cosine(features, references)`` per row: higher is less like the references.

    Args:
        features: ``(N, D)`` pooled features (any scale).
        references: ``(R, D)`` L2-normalised reference features.

    Example:
        >>> float(knn_score(np.ones((1, 2)), np.array([[0.0, 1.0]]))[0]) > 0.29
        True
    """
    similarity = keras.ops.matmul(l2_normalize(features),
                                  keras.ops.transpose(keras.ops.cast(references, "float32")))
    return keras.ops.clip(1.0 - keras.ops.max(similarity, axis=-1), 0.0, 2.0)


def pooled(features: Any) -> Any:
    """A backbone's output averaged over its spatial axes (``(N, h, w, c)`` -> ``(N, c)``).

    Example:
        >>> np.asarray(pooled(np.ones((2, 3, 3, 4)))).shape
        (2, 4)
    """
    if len(features.shape) == 4:
        return keras.ops.mean(features, axis=(1, 2))
    return features


def feature_model(model: keras.Model) -> keras.Model:
    """``pixels -> [pooled backbone features (N, D), probabilities (N, C)]`` from one pass (cached).

    Example:
        >>> import tfx_transfer as tt
        >>> model = tt.build_transfer_model("vgg16", 2, input_shape=32, weights=None)
        >>> [tuple(t.shape) for t in feature_model(model).outputs]
        [(None, 512), (None, 2)]
    """
    cached = _FEATURE_MODELS.get(model)
    if cached is None:
        from tfx_transfer.models.parts import model_parts

        features = model_parts(model).backbone.output
        cached = keras.Model(model.inputs, [keras.layers.GlobalAveragePooling2D()(features)
                                            if len(features.shape) == 4 else features,
                                            model.outputs[0]])
        _FEATURE_MODELS[model] = cached
    return cached


def unknown_settings(model: Any) -> dict[str, Any] | None:
    """The model's fitted ``"unknown"`` settings (method, threshold, tpr, references), or ``None``.

    Example:
        >>> import tfx_transfer as tt
        >>> unknown_settings(tt.build_transfer_model("vgg16", 2, input_shape=32, weights=None)) is None
        True
    """
    settings = (getattr(model, "transfer_config", None) or {}).get(UNKNOWN_KEY)
    if settings and settings.get("method") != METHOD:
        raise ValueError(f"The model's unknown score method {settings.get('method')!r} is not "
                         f"known to this version (it knows {METHOD!r}); refit it with fit_unknown.")
    return settings or None


def check_threshold(threshold: Any) -> float:
    """A score threshold as a float in [0, 2], else a ``ValueError`` naming it.

    Example:
        >>> check_threshold("0.3")
        0.3
    """
    value = float(threshold)
    if not 0.0 <= value <= 2.0:
        raise ValueError(f"unknown_threshold={threshold!r} is outside the score's range [0, 2] "
                         "(1 - cosine similarity); e.g. 0.3.")
    return value


def model_threshold(model: Any, unknown_threshold: float | None = None) -> float:
    """``unknown_threshold`` when given, else the one saved in the model or export.

    Example:
        >>> model_threshold(None, 0.4)
        0.4
    """
    if unknown_threshold is not None:
        return check_threshold(unknown_threshold)
    settings = (getattr(model, "metadata", None) or {}).get("unknown") or unknown_settings(model)
    if not settings:
        raise ValueError("The model has no unknown threshold; fit one with tt.fit_unknown or pass "
                         "unknown_threshold=.")
    return float(settings["threshold"])


def unknown_scores(model: keras.Model, images: np.ndarray, batch_size: int = 32,
                   ) -> tuple[np.ndarray, np.ndarray]:
    """``(probabilities (N, C), unknown scores (N,))`` of a fitted model on pixel batches.

    One pass through the network gives both (:func:`feature_model`).

    Args:
        model: a model fitted by :func:`tfx_transfer.fit_unknown`.
        images: ``(N, H, W, 3)`` pixels in 0..255 at the model's size.
        batch_size: images per call.

    Example:
        >>> import tfx_transfer as tt
        >>> model = tt.build_transfer_model("vgg16", 2, input_shape=32, weights=None)
        >>> set_references(model, np.ones((2, 512)), threshold=0.5)
        >>> probabilities, scores = unknown_scores(model, np.zeros((3, 32, 32, 3), "uint8"))
        >>> probabilities.shape, scores.shape
        ((3, 2), (3,))
    """
    settings = unknown_settings(model)
    if settings is None:
        raise ValueError(f"Model {model.name!r} has no unknown score; fit one with "
                         "tt.fit_unknown(model, train_images, validation_images).")
    references = unpack_array(settings["references"])
    features, probabilities = [], []
    for start in range(0, len(images), batch_size):
        feats, probs = feature_model(model).predict_on_batch(images[start:start + batch_size])
        features.append(keras.ops.convert_to_numpy(feats))
        probabilities.append(keras.ops.convert_to_numpy(probs))
    if not features:
        return np.zeros((0, int(model.output_shape[-1]))), np.zeros((0,))
    scores = knn_score(np.concatenate(features), references)
    return np.concatenate(probabilities).astype(np.float64), np.asarray(
        keras.ops.convert_to_numpy(scores), np.float64)


def set_references(model: keras.Model, features: np.ndarray, threshold: float,
                   tpr: float = DEFAULT_TPR, labels: Sequence[int] | None = None,
                   max_references: int = DEFAULT_MAX_REFERENCES, seed: int = 0) -> None:
    """Store reference features and the threshold in the model's transfer settings.

    At most ``max_references`` rows are kept, the same share of each class when
    ``labels`` are given (seeded).

    Args:
        model: a :class:`~tfx_transfer.TransferModel`.
        features: ``(N, D)`` pooled features of known images.
        threshold: scores above it are ``unknown``.
        tpr: the share of validation images the threshold accepts (recorded).
        labels: the class of each row, for a stratified subsample.
        max_references: the most rows stored.
        seed: seed of the subsample.

    Example:
        >>> import tfx_transfer as tt
        >>> model = tt.build_transfer_model("vgg16", 2, input_shape=32, weights=None)
        >>> set_references(model, np.ones((5, 512)), 0.2, max_references=3)
        >>> tt.transfer_config(model)["unknown"]["references"]["shape"]
        [3, 512]
    """
    features = np.asarray(features, np.float32)
    rng = np.random.default_rng(seed)
    if len(features) > max_references:
        labels = np.zeros(len(features), int) if labels is None else np.asarray(labels)
        classes = np.unique(labels)
        per_class = max(1, max_references // len(classes))
        keep = np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:per_class]
                               for c in classes])[:max_references]
        features = features[np.sort(keep)]
    normalised = np.asarray(keras.ops.convert_to_numpy(l2_normalize(features)))
    model.transfer_config[UNKNOWN_KEY] = {
        "method": METHOD, "k": 1, "feature": "pooled backbone output, L2-normalised",
        "threshold": check_threshold(threshold), "tpr": float(tpr),
        "references": pack_array(normalised)}


def add_references(model: keras.Model, features: np.ndarray) -> int:
    """Append known images' pooled features to a fitted model's references (threshold kept).

    For classes added after the score was fitted (:func:`tfx_transfer.add_classes`):
    their images become references too, so images like them are not called unknown.
    Returns the number of references now stored (0 when the model has no score).

    Args:
        model: a :class:`~tfx_transfer.TransferModel` (its settings are changed).
        features: ``(N, D)`` pooled backbone features of the new known images.

    Example:
        >>> import tfx_transfer as tt
        >>> model = tt.build_transfer_model("vgg16", 2, input_shape=32, weights=None)
        >>> set_references(model, np.ones((2, 512)), threshold=0.5)
        >>> add_references(model, np.eye(3, 512))
        5
    """
    settings = unknown_settings(model)
    if settings is None:
        return 0
    old = unpack_array(settings["references"])
    new = np.asarray(keras.ops.convert_to_numpy(l2_normalize(np.asarray(features, np.float32))))
    if new.shape[1:] != old.shape[1:]:
        raise ValueError(f"add_references: features of shape {new.shape[1:]} do not match the "
                         f"model's references {old.shape[1:]}.")
    references = np.concatenate([old, new])
    settings["references"] = pack_array(references)
    return len(references)

