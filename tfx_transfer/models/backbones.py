"""One registry for every backbone: constructor, preprocessing, sizes, named blocks.

A :class:`BackboneSpec` says everything the kit needs to know about a
``keras.applications`` CNN: how to build it without its classifier, which
preprocessing it expects (``"caffe"``, ``"tf"``, ``"torch"`` or ``"none"`` when the
network rescales by itself), its default and minimum input size, and its named
blocks (for staged unfreezing). Blocks are ordered bottom to top; a block is every
layer after the previous block up to the last layer whose name matches the
block's regex, so unnamed helper layers (paddings, adds) always land in a block.

Example:
    >>> from tfx_transfer.models.backbones import get_backbone, list_backbones
    >>> spec = get_backbone("ResNet50")
    >>> spec.preprocessing, spec.default_size, spec.block_names[-1]
    ('caffe', 224, 'conv5')
    >>> "vgg16" in list_backbones()
    True
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

PREPROCESSING_MODES = ("caffe", "tf", "torch", "none")


@dataclasses.dataclass(frozen=True)
class BackboneSpec:
    """Description of one backbone family member (each argument is also an attribute).

    Args:
        name: canonical registry key (lowercase, e.g. ``"resnet50"``).
        constructor: the ``keras.applications`` attribute name (``"ResNet50"``)
            or a callable taking the ``keras.applications`` keyword arguments.
        preprocessing: ``"caffe"`` (RGB->BGR, ImageNet mean subtraction),
            ``"tf"`` (scale to [-1, 1]), ``"torch"`` (scale to [0, 1], ImageNet
            mean/std) or ``"none"`` (the network takes 0..255 pixels itself).
        default_size: the input size the ImageNet weights were trained at.
        min_size: smallest spatial input the architecture accepts.
        blocks: ``(block_name, regex)`` pairs, bottom to top.
        default_unfreeze: blocks unfrozen by default in phase 2; default: the top
            block.
        kwargs: extra constructor keyword arguments.
        loads_weights: whether the constructor itself loads its ``weights`` argument
            (``"imagenet"``). Default: ``True`` for a ``keras.applications`` name,
            ``False`` for a callable (most custom builders take ``weights`` and ignore
            it); pass ``True`` only when your callable really loads them. A backbone
            that does not load weights is built only with ``weights=None``; asking it
            for ``"imagenet"`` raises instead of silently building a random network
            (a weights file still works: the kit loads it by layer name).

    Example:
        >>> spec = BackboneSpec("tinyvgg", "VGG16", "caffe", 224, 32,
        ...                     blocks=(("block4", r"^block4_"), ("block5", r"^block5_")))
        >>> spec.block_names, spec.default_unfreeze, spec.loads_weights
        (('block4', 'block5'), ('block5',), True)
    """

    name: str
    constructor: str | Callable[..., Any]
    preprocessing: str
    default_size: int
    min_size: int
    blocks: tuple[tuple[str, str], ...]
    default_unfreeze: tuple[str, ...] = ()
    kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    loads_weights: bool | None = None

    def __post_init__(self) -> None:
        if self.loads_weights is None:
            object.__setattr__(self, "loads_weights", isinstance(self.constructor, str))
        if self.preprocessing not in PREPROCESSING_MODES:
            raise ValueError(
                f"BackboneSpec {self.name!r}: preprocessing={self.preprocessing!r} "
                f"is not one of {PREPROCESSING_MODES}."
            )
        if not self.default_unfreeze and self.blocks:
            object.__setattr__(self, "default_unfreeze", (self.blocks[-1][0],))

    @property
    def block_names(self) -> tuple[str, ...]:
        """Block names, bottom to top."""
        return tuple(name for name, _ in self.blocks)

    def build(self, input_shape: Sequence[int], weights: str | None = None) -> Any:
        """Build the headless Keras model (``include_top=False``).

        Raises:
            ValueError: ``weights`` is not ``None`` and the constructor does not load
                weights (``loads_weights=False``): it would build a random network.

        Example:
            >>> base = get_backbone("vgg16").build((32, 32, 3))
            >>> base.output.shape
            (None, 1, 1, 512)
        """
        from keras import applications

        if weights is not None and not self.loads_weights:
            raise ValueError(self._no_weights_message(weights))
        kwargs = dict(self.kwargs)
        ctor = self.constructor
        if isinstance(ctor, str):
            ctor = getattr(applications, ctor)
        model = ctor(include_top=False, weights=weights, input_shape=tuple(input_shape), **kwargs)
        model.name = self.name  # a stable name for the nested model, whatever Keras calls it
        return model

    def _no_weights_message(self, weights: Any) -> str:
        builder = getattr(self.constructor, "__name__", repr(self.constructor))
        return (
            f"Backbone {self.name!r} cannot load weights={str(weights)!r}: its builder "
            f"{builder} is registered with loads_weights=False (the default for a callable), "
            "so it would build a randomly initialised network. Pass weights=None (random "
            "initialisation, said as such), weights=PATH (a weights file of this backbone, "
            "loaded by layer name), or register a builder that loads the weights itself "
            "with BackboneSpec(..., loads_weights=True)."
        )


_REGISTRY: dict[str, BackboneSpec] = {}


def _key(name: str) -> str:
    return re.sub(r"[^0-9a-z]", "", name.lower())


def register_backbone(spec: BackboneSpec, *, overwrite: bool = False) -> BackboneSpec:
    """Add a backbone to the registry (under its normalised name).

    Example:
        >>> from tfx_transfer.models.backbones import BackboneSpec, register_backbone
        >>> _ = register_backbone(BackboneSpec(
        ...     "myvgg", "VGG16", "caffe", 224, 32,
        ...     blocks=tuple((f"block{i}", rf"^block{i}_") for i in range(1, 6))),
        ...     overwrite=True)
        >>> get_backbone("MyVGG").block_names[-1]
        'block5'
    """
    key = _key(spec.name)
    if key in _REGISTRY and not overwrite:
        raise ValueError(
            f"Backbone {spec.name!r} is already registered; pass overwrite=True to replace it."
        )
    _REGISTRY[key] = spec
    return spec


def list_backbones() -> list[str]:
    """Names of every registered backbone, sorted.

    Example:
        >>> from tfx_transfer import list_backbones
        >>> {"vgg16", "resnet50"} <= set(list_backbones())
        True
    """
    return sorted(spec.name for spec in _REGISTRY.values())


def get_backbone(name: str | BackboneSpec) -> BackboneSpec:
    """Look a backbone up by name (case, ``_`` and ``-`` are ignored).

    Raises:
        ValueError: unknown name; the message lists the valid names.

    Example:
        >>> get_backbone("MobileNet_V2").name
        'mobilenetv2'
    """
    if isinstance(name, BackboneSpec):
        return name
    spec = _REGISTRY.get(_key(str(name)))
    if spec is None:
        raise ValueError(
            f"Unknown backbone {name!r}. Valid names: {', '.join(list_backbones())}. "
            "Register your own with tfx_transfer.register_backbone(BackboneSpec(...))."
        )
    return spec


def backbone_blocks(spec: str | BackboneSpec, backbone: Any) -> dict[str, list[Any]]:
    """Split a built backbone's layers into the spec's named blocks.

    Every layer except the input layer belongs to exactly one block; blocks whose
    regex matches nothing in this variant are left out.

    Example:
        >>> spec = get_backbone("vgg16")
        >>> blocks = backbone_blocks(spec, spec.build((32, 32, 3)))
        >>> [layer.name for layer in blocks["block5"]][:2]
        ['block5_conv1', 'block5_conv2']
    """
    spec = get_backbone(spec)
    layers = [layer for layer in backbone.layers if type(layer).__name__ != "InputLayer"]
    names = [layer.name for layer in layers]
    ends: list[tuple[str, int]] = []
    for block, pattern in spec.blocks:
        rx = re.compile(pattern)
        hits = [i for i, n in enumerate(names) if rx.search(n)]
        if hits:
            ends.append((block, hits[-1]))
    if not ends:
        raise ValueError(
            f"No block of backbone {spec.name!r} matches the layers of {backbone.name!r}; "
            "check the spec's block regexes."
        )
    out: dict[str, list[Any]] = {}
    start = 0
    for i, (block, end) in enumerate(ends):
        stop = len(layers) if i == len(ends) - 1 else end + 1
        out[block] = layers[start:stop] if stop > start else []
        start = max(start, stop)
    return {k: v for k, v in out.items() if v}


# --------------------------------------------------------------------------
# The keras.applications CNNs.
# --------------------------------------------------------------------------


def _numbered(fmt: str, rx: str, numbers: Sequence[Any]) -> tuple[tuple[str, str], ...]:
    return tuple((fmt.format(n=n), rx.format(n=n)) for n in numbers)


_VGG = _numbered("block{n}", r"^block{n}_", range(1, 6))
_RESNET = (("conv1", r"^(conv1_|pool1_)"),) + _numbered("conv{n}", r"^conv{n}_", range(2, 6))
_RESNET_V2 = _RESNET[:-1] + (("conv5", r"^(conv5_|post_)"),)
_DENSENET = (
    ("conv1", r"^(conv1_|pool1$)"),
    *_numbered("conv{n}", r"^(conv{n}_|pool{n}_)", range(2, 5)),
    ("conv5", r"^(conv5_|bn$|relu$)"),
)
_EFFICIENTNET = (
    ("stem", r"^stem_"),
    *_numbered("block{n}", r"^block{n}[a-z]_", range(1, 8)),
    ("top", r"^top_"),
)
_MOBILENET = (("conv1", r"^conv1"),) + _numbered(
    "block{n}", r"^conv_(dw|pw|pad)_{n}(_|$)", range(1, 14)
)
_MOBILENET_V2 = (
    ("stem", r"^(Conv1|bn_Conv1|expanded_conv_)"),
    *_numbered("block{n}", r"^block_{n}_", range(1, 17)),
    ("top", r"^(Conv_1|out_relu)"),
)
_MOBILENET_V3 = (
    ("stem", r"^conv(_bn)?$"),
    ("block0", r"^expanded_conv_(?!\d)"),
    *_numbered("block{n}", r"^expanded_conv_{n}_", range(1, 15)),
    ("top", r"^conv_1"),
)
_CONVNEXT = (
    ("stem", r"_stem$"),
    *_numbered("stage{n}", r"_stage_{n}_", range(4)),
)
_XCEPTION = _numbered("block{n}", r"^block{n}_", range(1, 15))
_INCEPTION_V3 = _numbered("mixed{n}", r"^mixed{n}$", range(11))
_INCEPTION_RESNET_V2 = (
    ("stem", r"^mixed_5b$"),
    ("block35", r"^block35_"),
    ("mixed_6a", r"^mixed_6a$"),
    ("block17", r"^block17_"),
    ("mixed_7a", r"^mixed_7a$"),
    ("block8", r"^(block8_|conv_7b)"),
)


def _register_defaults() -> None:
    add = register_backbone
    add(BackboneSpec("vgg16", "VGG16", "caffe", 224, 32, _VGG))
    add(BackboneSpec("vgg19", "VGG19", "caffe", 224, 32, _VGG))
    for depth in (50, 101, 152):
        add(BackboneSpec(f"resnet{depth}", f"ResNet{depth}", "caffe", 224, 32, _RESNET))
        add(BackboneSpec(f"resnet{depth}v2", f"ResNet{depth}V2", "tf", 224, 32, _RESNET_V2))
    add(BackboneSpec("xception", "Xception", "tf", 299, 71, _XCEPTION))
    add(BackboneSpec("inceptionv3", "InceptionV3", "tf", 299, 75, _INCEPTION_V3))
    add(BackboneSpec("inceptionresnetv2", "InceptionResNetV2", "tf", 299, 75,
                     _INCEPTION_RESNET_V2))
    # top 3 of 13 depthwise-separable blocks (block13 alone is 2 weight tensors + BN): docs/accuracy.md
    add(BackboneSpec("mobilenet", "MobileNet", "tf", 224, 32, _MOBILENET,
                     default_unfreeze=("block11", "block12", "block13")))
    add(BackboneSpec("mobilenetv2", "MobileNetV2", "tf", 224, 32, _MOBILENET_V2,
                     default_unfreeze=("block16", "top")))
    for size in ("Small", "Large"):
        add(BackboneSpec(f"mobilenetv3{size.lower()}", f"MobileNetV3{size}", "none", 224, 32,
                         _MOBILENET_V3))
    for depth in (121, 169, 201):
        add(BackboneSpec(f"densenet{depth}", f"DenseNet{depth}", "torch", 224, 32, _DENSENET))
    for i, size in enumerate((224, 240, 260, 300, 380, 456, 528, 600)):
        add(BackboneSpec(f"efficientnetb{i}", f"EfficientNetB{i}", "none", size, 32,
                         _EFFICIENTNET, default_unfreeze=("block7", "top")))
    v2_sizes = {"B0": 224, "B1": 240, "B2": 260, "B3": 300, "S": 384, "M": 480, "L": 480}
    for variant, size in v2_sizes.items():
        add(BackboneSpec(f"efficientnetv2{variant.lower()}", f"EfficientNetV2{variant}", "none",
                         size, 32, _EFFICIENTNET,
                         default_unfreeze=("block7", "top") if variant in "ML" else ("block6", "top")))
    for variant in ("Tiny", "Small", "Base", "Large", "XLarge"):
        add(BackboneSpec(f"convnext{variant.lower()}", f"ConvNeXt{variant}", "none", 224, 32,
                         _CONVNEXT))


_register_defaults()
