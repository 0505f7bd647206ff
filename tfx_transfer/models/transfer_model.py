"""``build_transfer_model``: a frozen pretrained backbone plus a new head, in a ``TransferModel``.

A :class:`TransferModel` carries its build settings (:func:`transfer_config`) and
knows its parts (``model.backbone``, ``model.head``, ``model.blocks``, ...:
:mod:`tfx_transfer.models.parts`); the ``get_*`` functions read the same parts from
any model holding the kit's layers.

Example:
    >>> import tfx_transfer as tt
    >>> model = tt.build_transfer_model("resnet50", num_classes=5,
    ...                                 input_shape=(64, 64, 3), weights=None)
    >>> model.output.shape
    (None, 5)
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping, Sequence
from typing import Any

import keras
import numpy as np

from tfx_transfer.models.backbones import BackboneSpec, get_backbone
from tfx_transfer.models.heads import HEADS, build_head, default_head
from tfx_transfer.models.layers import Backbone, Preprocess
from tfx_transfer.models.parts import ModelParts, model_parts
from tfx_transfer.models.weights import guard_downloads, load_weights_by_name, require_weights_file

PREPROCESS_NAME = "preprocess"
AUGMENT_NAME = "augmentation"
BACKBONE_NAME = "backbone"


@keras.saving.register_keras_serializable(package="tfx_transfer")
class TransferModel(keras.Model):
    """A functional Keras model that carries its build settings and knows its parts.

    The settings (backbone, num_classes, input_shape, head, units, dropout,
    weights, class_names when known) are part of the model's own ``get_config``,
    as in keras-hub, so they survive ``model.save`` / ``keras.saving.load_model``.
    Read them with :func:`transfer_config`.

    Its parts are properties, found once and kept (:class:`ModelParts`):
    ``model.backbone`` is the :class:`~tfx_transfer.Backbone` layer, the model's
    layer named ``"backbone"`` (as keras-hub's ``task.backbone`` is the task's
    backbone layer: freeze it, read ``.inference_mode``), ``model.backbone_model``
    the ``keras.applications`` model inside it (its ``.layers``, ``.get_layer``),
    ``model.head``, ``model.preprocess``, ``model.augmentation`` (``None`` without
    one) and ``model.blocks``, the backbone's named blocks ``{name: layers}``,
    bottom to top, from the registry. A property the model cannot answer (an
    ensemble has several backbones) raises a ``ValueError``. For models of other
    classes use :func:`get_backbone_layer`, :func:`get_backbone_model`,
    :func:`get_head` or :func:`model_parts`. Otherwise an ordinary functional model.

    Example:
        >>> import tfx_transfer as tt
        >>> model = tt.build_transfer_model("vgg16", 2, input_shape=32, weights=None)
        >>> model.backbone is model.get_layer("backbone"), model.backbone_model.name
        (True, 'vgg16')
        >>> list(model.blocks)[-2:], model.blocks["block5"][0].name
        (['block4', 'block5'], 'block5_conv1')
        >>> inputs = keras.Input((4,))
        >>> m = TransferModel(inputs, keras.layers.Dense(2)(inputs),
        ...                   transfer_config={"num_classes": 2})
        >>> TransferModel.from_config(m.get_config()).transfer_config
        {'num_classes': 2}
    """

    def __init__(self, *args: Any, transfer_config: dict | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.transfer_config = dict(transfer_config or {})

    def get_config(self) -> dict:
        return {**super().get_config(), "transfer_config": dict(self.transfer_config)}

    @classmethod
    def from_config(cls, config: dict, custom_objects: Any = None) -> TransferModel:
        config = dict(config)
        settings = config.pop("transfer_config", None)
        model = super().from_config(config, custom_objects=custom_objects)
        model.transfer_config = dict(settings or {})
        return model

    # Kept in the instance's __dict__ (cached_property writes there directly), so
    # neither Keras's attribute tracking nor a TensorFlow checkpoint sees it.
    @functools.cached_property
    def _transfer_parts(self) -> ModelParts:
        return ModelParts(self)

    @property
    def backbone(self) -> Backbone:
        """The :class:`~tfx_transfer.Backbone` layer (named ``"backbone"``)."""
        return self._transfer_parts.backbone

    @property
    def backbone_model(self) -> keras.Model:
        """The ``keras.applications`` model inside :attr:`backbone`."""
        return self._transfer_parts.backbone_model

    @property
    def head(self) -> keras.layers.Layer:
        """The nested head (a ``keras.Sequential`` named ``"head"``)."""
        return self._transfer_parts.head

    @property
    def preprocess(self) -> Preprocess:
        """The :class:`~tfx_transfer.Preprocess` layer."""
        return self._transfer_parts.preprocess

    @property
    def augmentation(self) -> keras.layers.Layer | None:
        """The augmentation layer in front of :attr:`preprocess`, or ``None``."""
        return self._transfer_parts.augmentation

    @property
    def blocks(self) -> Mapping[str, tuple[keras.layers.Layer, ...]]:
        """The backbone's named blocks ``{name: layers}``, bottom to top (read-only)."""
        return self._transfer_parts.blocks


def transfer_config(model: keras.Model) -> dict:
    """The build settings of a model the kit built or loaded (a copy).

    Example:
        >>> import tfx_transfer as tt
        >>> model = tt.build_transfer_model("vgg16", 2, input_shape=32, weights=None,
        ...                                 head="avg", class_names=["cat", "dog"])
        >>> cfg = tt.transfer_config(model)
        >>> cfg["backbone"], cfg["class_names"], cfg["input_shape"]
        ('vgg16', ['cat', 'dog'], [32, 32, 3])
    """
    settings = getattr(model, "transfer_config", None)
    if not isinstance(model, TransferModel) or not settings:
        raise ValueError(
            f"Model {getattr(model, 'name', model)!r} ({type(model).__name__}) carries no "
            "transfer settings: it was not made by build_transfer_model(), pretrain(), "
            "ensemble() or loaded with tfx_transfer.load_model()."
        )
    return dict(settings)


def _check_input_shape(spec: BackboneSpec, input_shape: Sequence[int] | int | None) -> tuple:
    if input_shape is None:
        input_shape = spec.default_size
    if isinstance(input_shape, int):
        input_shape = (input_shape, input_shape, 3)
    input_shape = tuple(input_shape)
    if len(input_shape) == 2:
        input_shape = input_shape + (3,)
    if len(input_shape) != 3 or any(d is None for d in input_shape):
        raise ValueError(
            f"input_shape={input_shape!r} must be (height, width, 3) with fixed sizes, "
            f"e.g. ({spec.default_size}, {spec.default_size}, 3)."
        )
    height, width, channels = input_shape
    if channels != 3:
        raise ValueError(
            f"input_shape={input_shape!r} has {channels} channel(s); pretrained backbones take "
            "3-channel RGB. Convert grayscale/RGBA images to RGB (load_image_folder does) and "
            f"use input_shape=({height}, {width}, 3)."
        )
    if min(height, width) < spec.min_size:
        raise ValueError(
            f"input_shape={input_shape!r} is smaller than the minimum input size of backbone "
            f"{spec.name!r}, {spec.min_size}x{spec.min_size}; use at least "
            f"({spec.min_size}, {spec.min_size}, 3) (its default is {spec.default_size})."
        )
    return (int(height), int(width), 3)


def _build_backbone(spec: BackboneSpec, input_shape: tuple, weights: Any) -> keras.Model:
    if weights is None or (isinstance(weights, str) and weights.lower() == "none"):
        return spec.build(input_shape, weights=None)
    if isinstance(weights, str) and weights.lower() == "imagenet":
        with guard_downloads(spec.name):
            return spec.build(input_shape, weights="imagenet")
    if isinstance(weights, (str, os.PathLike)):
        require_weights_file(weights)  # before the build: a missing file fails at once
        backbone = spec.build(input_shape, weights=None)
        load_weights_by_name(backbone, weights)
        return backbone
    raise ValueError(
        f"weights={weights!r} is not understood; pass 'imagenet', None, or the path of a "
        "backbone weights file."
    )


def build_transfer_model(
    backbone: str | BackboneSpec,
    num_classes: int,
    input_shape: Sequence[int] | int | None = None,
    weights: str | os.PathLike | None = "imagenet",
    head: str | None = None,
    units: int = 256,
    dropout: float | None = None,
    augmentation: Any = None,
    name: str | None = None,
    class_names: Sequence[str] | None = None,
    multi_label: bool = False,
) -> TransferModel:
    """A ready transfer model: raw RGB pixels in, class probabilities out.

    The model is ``pixels -> [augmentation] -> Preprocess -> backbone -> head``:

    * input: ``(H, W, 3)`` RGB pixels in 0..255, uint8 or float. The backbone's own
      preprocessing is a layer inside the model; never call ``preprocess_input``.
    * backbone: ``keras.applications`` with ``include_top=False``, frozen, inside a
      :class:`tfx_transfer.Backbone` layer named ``"backbone"`` that runs it in
      inference mode (BatchNorm, Dropout, drop-connect) during ``fit`` too, also
      after :func:`tfx_transfer.unfreeze`, unless ``train_bn=True``.
    * head (a nested ``keras.Sequential`` named ``"head"``): ``"avg"`` (default) or
      ``"max"`` (global pooling -> Dropout -> Dense softmax), or ``"flatten"`` (Flatten ->
      Dense(units, relu) -> Dropout -> Dense softmax, the classic recipe; it overfits
      small sets, see ``docs/accuracy.md``), or ``"cosine"`` (global average pooling ->
      Dropout -> :class:`~tfx_transfer.CosineClassifier`: scaled cosine similarity to
      each class's weights; :func:`tfx_transfer.imprint` sets them from a few images,
      ``docs/fewshot.md``), or ``"spatial"`` (the multi-label default: Dropout ->
      :class:`~tfx_transfer.SpatialClassifier`, class scores at every location of the
      feature map pooled by log-sum-exp, so objects in different places are not averaged
      into one feature). The output layer is float32 under any mixed-precision policy.

    Args:
        backbone: a registry name (see :func:`tfx_transfer.list_backbones`) or spec.
        num_classes: number of classes (at least 2).
        input_shape: ``(H, W, 3)`` or an int side; defaults to the backbone's size.
        weights: ``"imagenet"`` (Keras cache, downloaded when online; fails fast
            offline with :class:`tfx_transfer.WeightsUnavailableError`), ``None``
            (random init) or a path to a backbone weights file.
        head: ``"flatten"``, ``"avg"``, ``"max"``, ``"cosine"`` or ``"spatial"``;
            ``None``: ``"avg"``, or ``"spatial"`` when ``multi_label``.
        units: width of the flatten head's hidden Dense layer.
        dropout: dropout before the classifier; default 0.5 (flatten), 0.2 (the others).
        augmentation: optional layer (e.g. :class:`tfx_transfer.Augmentation`), preset
            name or dict of ImageDataGenerator keywords
            (:func:`tfx_transfer.data.augmentation.as_augmentation`) run first; random
            layers are identity at inference and export.
        name: model name; default ``"<backbone>_transfer"``.
        class_names: optional names of the classes in label order (stored in the
            model's settings, used by export and reports).
        multi_label: several classes per image: a sigmoid head (one independent
            probability per class, trained with binary cross-entropy by
            :func:`tfx_transfer.fine_tune`); ``transfer_config`` gets ``"multi_label": True``
            and, once chosen (:func:`tfx_transfer.fit_thresholds`), ``"thresholds"``.

    Example:
        >>> import numpy as np, tfx_transfer as tt
        >>> model = tt.build_transfer_model("vgg16", 3, input_shape=(32, 32, 3),
        ...                                 weights=None, head="avg")
        >>> model.predict(np.zeros((2, 32, 32, 3), "uint8"), verbose=0).shape
        (2, 3)
    """
    spec = get_backbone(backbone)
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 2:
        raise ValueError(
            f"num_classes={num_classes!r}: need an integer of at least 2 (softmax over the "
            "classes; a yes/no problem is num_classes=2)."
        )
    if head is None:
        head = default_head(multi_label)
    if head not in HEADS:
        raise ValueError(f"head={head!r} is not one of {HEADS}: 'avg' (global average "
                         "pooling), 'max', 'flatten' (Flatten + Dense(units)), 'cosine' "
                         "(normalised features and weights, learned scale; tt.imprint) or "
                         "'spatial' (class scores per location, log-sum-exp pooled).")
    if dropout is None:
        dropout = 0.5 if head == "flatten" else 0.2
    if not 0.0 <= float(dropout) < 1.0:
        raise ValueError(f"dropout={dropout!r} must be in [0, 1).")
    input_shape = _check_input_shape(spec, input_shape)
    if class_names is not None:
        class_names = [str(c) for c in class_names]
        if len(class_names) != num_classes:
            raise ValueError(f"class_names has {len(class_names)} names for num_classes="
                             f"{num_classes}; give one name per class.")

    base = _build_backbone(spec, input_shape, weights)
    base.trainable = False

    inputs = keras.Input(shape=input_shape, name="pixels")
    x = inputs
    if not isinstance(augmentation, keras.layers.Layer):  # None, a preset name or IDG keywords
        from tfx_transfer.data.augmentation import as_augmentation

        augmentation = as_augmentation(augmentation, name=AUGMENT_NAME)
    if augmentation is not None:
        x = augmentation(x)
    x = Preprocess(spec.preprocessing, name=PREPROCESS_NAME)(x)
    x = Backbone(base, name=BACKBONE_NAME)(x)
    outputs = build_head(tuple(base.output.shape[1:]), num_classes, head, units, dropout,
                         activation="sigmoid" if multi_label else "softmax")(x)
    settings = {
        "backbone": spec.name,
        "num_classes": num_classes,
        "input_shape": list(input_shape),
        "head": head,
        "units": units,
        "dropout": dropout,
        "weights": weights if weights is None or isinstance(weights, str) else str(weights),
        "class_names": class_names,
        **({"multi_label": True} if multi_label else {}),
    }
    return TransferModel(inputs, outputs, name=name or f"{spec.name}_transfer",
                         transfer_config=settings)


def get_backbone_layer(model: keras.Model) -> Backbone:
    """The :class:`tfx_transfer.Backbone` layer of a :func:`build_transfer_model` model.

    Any model with one Backbone layer; ``model.backbone`` on a :class:`TransferModel`.

    Example:
        >>> import tfx_transfer as tt
        >>> model = tt.build_transfer_model("vgg16", 2, input_shape=32, weights=None)
        >>> get_backbone_layer(model).inference_mode
        True
    """
    return model_parts(model).backbone


def get_backbone_model(model: keras.Model) -> keras.Model:
    """The backbone (a ``keras.applications`` model) of a :func:`build_transfer_model` model.

    ``model.backbone_model`` on a :class:`TransferModel`.

    Example:
        >>> import tfx_transfer as tt
        >>> model = tt.build_transfer_model("vgg16", 2, input_shape=32, weights=None)
        >>> get_backbone_model(model).name
        'vgg16'
    """
    return model_parts(model).backbone_model


def get_head(model: keras.Model) -> keras.Sequential:
    """The nested head (``keras.Sequential``) of a :func:`build_transfer_model` model.

    ``model.head`` on a :class:`TransferModel`.

    Example:
        >>> import tfx_transfer as tt
        >>> model = tt.build_transfer_model("vgg16", 2, input_shape=32, weights=None)
        >>> get_head(model).layers[-1].name
        'predictions'
    """
    return model_parts(model).head


def backbone_name(model: keras.Model) -> str:
    """Registry name of the backbone inside ``model`` (from its settings or layer name).

    Example:
        >>> import tfx_transfer as tt
        >>> backbone_name(tt.build_transfer_model("vgg16", 2, input_shape=32, weights=None))
        'vgg16'
    """
    return model_parts(model).backbone_name


# Multi-label settings, read by evaluation and by exports.
DEFAULT_THRESHOLD = 0.5  # a multi-label model's per-label threshold before one is chosen


def is_multi_label(model: Any) -> bool:
    """Whether a Keras model or an export is multi-label (its settings or metadata say so).

    Example:
        >>> is_multi_label(lambda images: images)
        False
    """
    settings = getattr(model, "transfer_config", None) or getattr(model, "metadata", None) or {}
    return bool(settings.get("multi_label", False))


def model_thresholds(model: Any, num_classes: int) -> np.ndarray:
    """The per-label thresholds a model carries, else 0.5 for every label.

    Example:
        >>> model_thresholds(lambda images: images, 3).tolist()
        [0.5, 0.5, 0.5]
    """
    settings = getattr(model, "transfer_config", None) or getattr(model, "metadata", None) or {}
    saved = settings.get("thresholds")
    return np.asarray(saved if saved else [DEFAULT_THRESHOLD] * num_classes, np.float64)
