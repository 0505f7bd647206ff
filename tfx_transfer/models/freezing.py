"""Block freezing, fastai style: ``freeze``, ``freeze_to``, ``unfreeze``.

A transfer model's backbone is partitioned into named blocks by the registry
(:func:`tfx_transfer.backbone_blocks`: ``block1..block5`` for VGG, ``conv1..conv5``
for ResNet, ...), once per model (``model.blocks``, :func:`tfx_transfer.model_parts`).
These functions set which blocks train; the backbone keeps
running in inference mode (:class:`tfx_transfer.Backbone`) unless
``train_bn=True``. Changing ``trainable`` takes effect at the next ``compile``,
or inside ``fit`` through :class:`tfx_transfer.StagedUnfreeze`.

Example:
    >>> import tfx_transfer as tt
    >>> model = tt.build_transfer_model("vgg16", 2, input_shape=32, weights=None)
    >>> tt.freeze_to(model, -1)
    ['block5_conv1', 'block5_conv2', 'block5_conv3', 'block5_pool']
    >>> tt.freeze(model)
    []
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from tfx_transfer.models.parts import ModelParts, model_parts

Blocks = Any  # str | Sequence[str] | int : see unfreeze()


def block_layers(model: keras.Model) -> dict[str, list[keras.layers.Layer]]:
    """``{block name: backbone layers}``, bottom to top, of a transfer model (a copy).

    ``model.blocks`` (read-only) on a :class:`~tfx_transfer.TransferModel`.

    Example:
        >>> import tfx_transfer as tt
        >>> model = tt.build_transfer_model("vgg16", 2, input_shape=32, weights=None)
        >>> [layer.name for layer in block_layers(model)["block5"]][:2]
        ['block5_conv1', 'block5_conv2']
    """
    return {name: list(layers) for name, layers in model_parts(model).blocks.items()}


def _default_blocks(parts: ModelParts) -> list[str]:
    chosen = [b for b in parts.spec.default_unfreeze if b in parts.blocks]
    return chosen or [list(parts.blocks)[-1]]


def resolve_blocks(model: keras.Model, blocks: Blocks) -> list[keras.layers.Layer]:
    """The backbone layers that ``blocks`` names (see :func:`unfreeze` for the forms).

    Example:
        >>> import tfx_transfer as tt
        >>> model = tt.build_transfer_model("vgg16", 2, input_shape=32, weights=None)
        >>> [layer.name for layer in resolve_blocks(model, 2)]
        ['block5_conv2', 'block5_conv3', 'block5_pool']
    """
    return _resolve(model_parts(model), blocks)


def _resolve(parts: ModelParts, blocks: Blocks) -> list[keras.layers.Layer]:
    base, named = parts.backbone_model, parts.blocks
    if isinstance(blocks, bool):
        raise ValueError(f"blocks={blocks!r}: use a block name, a list of names, 'all', "
                         "'default' or an int (top N layers).")
    if isinstance(blocks, (int, np.integer)):
        with_weights = [layer for layer in base.layers if layer.weights]
        if not 0 < blocks <= len(with_weights):
            raise ValueError(
                f"blocks={blocks}: the top-N form needs 1 <= N <= {len(with_weights)} (the "
                f"number of layers with weights in backbone {base.name!r})."
            )
        start = base.layers.index(with_weights[-int(blocks)])
        return [layer for layer in base.layers[start:] if type(layer).__name__ != "InputLayer"]
    if isinstance(blocks, str):
        if blocks == "all":
            return [layer for block in named.values() for layer in block]
        names = _default_blocks(parts) if blocks == "default" else [blocks]
    else:
        names = list(blocks)
    unknown = [n for n in names if n not in named]
    if unknown:
        raise ValueError(
            f"Unknown block(s) {unknown} for backbone {base.name!r}. Valid blocks (bottom to "
            f"top): {list(named)}; or 'all', 'default', or an int N for the top N layers."
        )
    return [layer for name in names for layer in named[name]]


def unfreeze(model: keras.Model, blocks: Blocks = "default", train_bn: bool = False) -> list[str]:
    """Make backbone blocks trainable (adding to what is already unfrozen).

    ``blocks`` is a registry block name (``"block5"`` for VGG, ``"conv5"`` for
    ResNet), a list of them, ``"all"``, ``"default"`` (the backbone's default
    blocks, see :class:`tfx_transfer.BackboneSpec`) or an int N: the top N layers
    of the backbone that have weights. BatchNormalization layers stay frozen, and
    so in inference mode, unless ``train_bn=True``. The head is not touched.
    The backbone keeps running in inference mode (Dropout, drop-connect and
    BatchNorm as at prediction time) unless ``train_bn=True``, which trains the
    BatchNormalization layers of the chosen blocks and runs the whole backbone in
    training mode. Takes effect at the next ``compile`` or, inside ``fit``, through
    :class:`StagedUnfreeze`.

    Args:
        model: a transfer model (any model with one :class:`tfx_transfer.Backbone` layer).
        blocks: which blocks, in one of the forms above.
        train_bn: also train the chosen blocks' BatchNormalization layers.

    Returns:
        Names of the backbone layers that are trainable after the call.

    Raises:
        ValueError: an unknown block name (the message lists the valid ones).

    Example:
        >>> import tfx_transfer as tt
        >>> model = tt.build_transfer_model("vgg16", 2, input_shape=(32, 32, 3),
        ...                                 weights=None, head="avg")
        >>> tt.unfreeze(model, "block5")
        ['block5_conv1', 'block5_conv2', 'block5_conv3', 'block5_pool']
    """
    return _unfreeze(model_parts(model), blocks, train_bn)


def _unfreeze(parts: ModelParts, blocks: Blocks, train_bn: bool) -> list[str]:
    wrapper = parts.backbone
    base = wrapper.model
    chosen = {id(layer) for layer in _resolve(parts, blocks)}
    was = {id(layer) for layer in base.layers if base.trainable and layer.trainable}
    # The container's setter recurses; then every sub-layer is set explicitly.
    base.trainable = True
    for layer in base.layers:
        is_bn = isinstance(layer, keras.layers.BatchNormalization)
        wanted = id(layer) in chosen and (train_bn or not is_bn)
        layer.trainable = wanted or id(layer) in was
    trainable = [layer.name for layer in base.layers
                 if layer.trainable and type(layer).__name__ != "InputLayer"]
    if not trainable:
        base.trainable = False
    if train_bn:
        wrapper.inference_mode = False
    return trainable


def block_names(model: keras.Model) -> list[str]:
    """The backbone's block names, bottom to top.

    Example:
        >>> import tfx_transfer as tt
        >>> tt.block_names(tt.build_transfer_model("vgg16", 2, input_shape=32, weights=None))
        ['block1', 'block2', 'block3', 'block4', 'block5']
    """
    return list(model_parts(model).blocks)


def freeze(model: keras.Model) -> list[str]:
    """Freeze the whole backbone (the head stays trainable); back to inference mode.

    Returns:
        The backbone layers still trainable: ``[]``.

    Example:
        >>> import tfx_transfer as tt
        >>> model = tt.build_transfer_model("vgg16", 2, input_shape=32, weights=None)
        >>> tt.unfreeze(model, "all") != [] and tt.freeze(model) == []
        True
    """
    _freeze(model_parts(model))
    return []


def _freeze(parts: ModelParts) -> None:
    parts.backbone.model.trainable = False
    parts.backbone.inference_mode = True


def freeze_to(model: keras.Model, n: int, train_bn: bool = False) -> list[str]:
    """Freeze the backbone blocks before index ``n``; the blocks from ``n`` on train.

    As fastai's ``Learner.freeze_to``: ``freeze_to(model, -1)`` trains the top
    block only, ``freeze_to(model, -2)`` the top two, ``freeze_to(model, 0)``
    every block. The head always trains.

    Args:
        model: a transfer model (any model with one :class:`tfx_transfer.Backbone` layer).
        n: index of the first block that trains, in :func:`block_names` order.
        train_bn: also train the BatchNormalization layers of those blocks.

    Returns:
        Names of the backbone layers that are trainable after the call.

    Example:
        >>> import tfx_transfer as tt
        >>> model = tt.build_transfer_model("vgg16", 2, input_shape=32, weights=None)
        >>> len(tt.freeze_to(model, -2))
        8
    """
    parts = model_parts(model)
    names = list(parts.blocks)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not -len(names) <= n < len(names):
        raise ValueError(f"freeze_to(n={n!r}): n must be an int in [{-len(names)}, "
                         f"{len(names) - 1}] for the blocks {names}.")
    _freeze(parts)
    return _unfreeze(parts, names[n:], train_bn)
