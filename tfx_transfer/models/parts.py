"""A transfer model's parts: its backbone, head, preprocessing, augmentation and blocks.

Every function of the kit that needs a part of a model (freezing, ``fine_tune``,
feature caching, Grad-CAM, the callbacks, adaptation) asks :func:`model_parts`,
which answers from what a :class:`~tfx_transfer.TransferModel` keeps (each part
found once, on first use) and finds the parts anew in any other model (a joint
model, a functional model of the kit's layers).

Example:
    >>> import tfx_transfer as tt
    >>> model = tt.build_transfer_model("vgg16", 2, input_shape=32, weights=None)
    >>> parts = model_parts(model)
    >>> parts.preprocess.mode, list(parts.blocks)[-1]
    ('caffe', 'block5')
"""

from __future__ import annotations

import functools
import types
from collections.abc import Mapping

import keras

from tfx_transfer.models.backbones import BackboneSpec, backbone_blocks, get_backbone
from tfx_transfer.models.heads import HEAD_NAME
from tfx_transfer.models.layers import Backbone, Preprocess


class ModelParts:
    """The parts of a transfer model, each found on first use and then kept.

    Found by structure, as :func:`~tfx_transfer.build_transfer_model` lays a model
    out (``pixels -> [augmentation] -> preprocess -> backbone -> head``): the one
    :class:`~tfx_transfer.Backbone` layer, the one :class:`~tfx_transfer.Preprocess`
    layer, the layer named ``"head"`` and the layer between the input and
    ``preprocess``. A :class:`~tfx_transfer.TransferModel` keeps its parts (its
    properties read them); for any other model (a joint model, a functional model of
    the kit's layers) :func:`model_parts` finds them anew. A part the model lacks
    raises a ``ValueError`` that names it, when asked for.

    Example:
        >>> import tfx_transfer as tt
        >>> model = tt.build_transfer_model("vgg16", 2, input_shape=32, weights=None)
        >>> parts = ModelParts(model)
        >>> parts.backbone_model.name, parts.head.name, parts.augmentation is None
        ('vgg16', 'head', True)
    """

    def __init__(self, model: keras.Model):
        self.model = model

    def _one(self, kind: type, what: str) -> keras.layers.Layer:
        found = [layer for layer in self.model.layers if isinstance(layer, kind)]
        if len(found) != 1:
            raise ValueError(
                f"Model {self.model.name!r} does not look like a build_transfer_model() model: "
                f"expected one {what} layer, found {[layer.name for layer in found]}."
            )
        return found[0]

    @functools.cached_property
    def backbone(self) -> Backbone:
        """The :class:`~tfx_transfer.Backbone` layer (``.model``, ``.inference_mode``)."""
        return self._one(Backbone, "Backbone")

    @property
    def backbone_model(self) -> keras.Model:
        """The ``keras.applications`` model inside the Backbone layer."""
        return self.backbone.model

    @functools.cached_property
    def head(self) -> keras.layers.Layer:
        """The nested head (a ``keras.Sequential`` named ``"head"``)."""
        try:
            return self.model.get_layer(HEAD_NAME)
        except ValueError as exc:
            raise ValueError(f"Model {self.model.name!r} has no layer named {HEAD_NAME!r}; was "
                             "it made by build_transfer_model()?") from exc

    @functools.cached_property
    def preprocess(self) -> Preprocess:
        """The :class:`~tfx_transfer.Preprocess` layer (0..255 pixels in)."""
        return self._one(Preprocess, "Preprocess")

    @functools.cached_property
    def augmentation(self) -> keras.layers.Layer | None:
        """The layer between the input and ``preprocess`` (``None`` when there is none)."""
        layers = self.model.layers
        front = [layer for layer in layers[:layers.index(self.preprocess)]
                 if not isinstance(layer, keras.layers.InputLayer)]
        if len(front) > 1:
            raise ValueError(
                f"Model {self.model.name!r} has {len(front)} layers in front of its "
                f"preprocessing, {[layer.name for layer in front]}; a transfer model has at most "
                "one augmentation layer (combine them, e.g. in a keras.Sequential)."
            )
        return front[0] if front else None

    @functools.cached_property
    def backbone_name(self) -> str:
        """The registry name of the backbone (from the settings, else the nested model's name)."""
        settings = getattr(self.model, "transfer_config", None) or {}
        name = settings.get("backbone")
        if name and "+" not in name:
            return name
        return get_backbone(self.backbone_model.name).name

    @functools.cached_property
    def spec(self) -> BackboneSpec:
        """The backbone's registry entry (:class:`~tfx_transfer.BackboneSpec`)."""
        return get_backbone(self.backbone_name)

    @functools.cached_property
    def blocks(self) -> Mapping[str, tuple[keras.layers.Layer, ...]]:
        """``{block name: backbone layers}``, bottom to top (read-only), from the registry."""
        named = backbone_blocks(self.spec, self.backbone_model)
        return types.MappingProxyType({name: tuple(layers) for name, layers in named.items()})


def model_parts(model: keras.Model) -> ModelParts:
    """A model's parts: those a :class:`~tfx_transfer.TransferModel` keeps, else found now.

    Works on any model holding the kit's layers (a joint model, a functional model
    of your own, a plain Keras model loaded from a file); the kit's functions
    (freezing, ``fine_tune``, Grad-CAM, ...) read a model's parts through it.

    Example:
        >>> import tfx_transfer as tt
        >>> model = tt.build_transfer_model("vgg16", 2, input_shape=32, weights=None)
        >>> model_parts(model) is model_parts(model), model_parts(model).spec.name
        (True, 'vgg16')
        >>> plain = keras.Model(model.inputs, model.outputs)  # not a TransferModel
        >>> model_parts(plain).backbone is model.backbone
        True
    """
    kept = getattr(model, "_transfer_parts", None)  # a TransferModel keeps its parts
    return kept if isinstance(kept, ModelParts) else ModelParts(model)
