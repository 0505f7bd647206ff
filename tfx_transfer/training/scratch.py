"""Training from scratch: a classifier whose whole backbone trains, its optimizer, precise BatchNorm.

The model and optimizer of :func:`~tfx_transfer.training.pretraining.pretrain`'s
from-scratch recipe, usable on their own:

* :func:`build_scratch_model`: the whole backbone trains, its BatchNormalization
  layers in training mode inside ``fit`` with momentum 0.9;
* :func:`scratch_optimizer`: ``AdamW`` with decoupled weight decay on kernels
  only, linear warmup then cosine decay to 0;
* :func:`recalibrate_batchnorm`: the BatchNorm moving statistics recomputed
  after training ("precise BN").

Example:
    >>> import numpy as np
    >>> model = build_scratch_model("mobilenet", 2, input_shape=32)
    >>> model.compile(optimizer=scratch_optimizer(total_steps=10), loss="categorical_crossentropy")
    >>> recalibrate_batchnorm(model, [np.zeros((4, 32, 32, 3), "uint8")])
    1
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras

from tfx_transfer.models.backbones import get_backbone
from tfx_transfer.models.batchnorm import batchnorm_layers, recompute_batchnorm
from tfx_transfer.models.transfer_model import (
    build_transfer_model,
    get_backbone_layer,
    get_backbone_model,
)

NO_DECAY = ("bias", "gamma", "beta")


def build_scratch_model(
    backbone: str,
    num_classes: int,
    input_shape: Sequence[int] | int | None = None,
    head: str = "avg",
    units: int = 256,
    dropout: float | None = None,
    augmentation: Any = None,
    bn_momentum: float | None = 0.9,
    name: str | None = None,
) -> keras.Model:
    """A randomly initialised classifier whose whole backbone trains, BatchNorm included.

    Same structure and layer names as :func:`~tfx_transfer.build_transfer_model`
    (``pixels -> [augmentation] -> Preprocess -> backbone -> head``), so
    :func:`~tfx_transfer.get_backbone_model` and :func:`~tfx_transfer.get_head` work
    on it, with two differences for training from scratch: the backbone is
    trainable, and it is called *without* ``training=False``, so its
    BatchNormalization layers use batch statistics (and update their moving
    averages) inside ``fit`` and their moving averages at inference.

    ``bn_momentum`` (default 0.9, PyTorch's default) replaces the momentum of every
    BatchNormalization layer of the backbone: ``keras.applications`` uses 0.99 to
    0.999, tuned for long ImageNet runs, with which the moving averages of a run of
    a few hundred steps are still mostly their initial values (mean 0, variance 1)
    at inference. ``None`` keeps the backbone's own momentum.

    Args:
        backbone: a registry name (:func:`tfx_transfer.list_backbones`) or spec.
        num_classes: number of source classes (at least 2).
        input_shape: ``(H, W, 3)`` or an int side; default the backbone's size.
        head, units, dropout, augmentation: as for
            :func:`~tfx_transfer.build_transfer_model` (``dropout`` default: 0.5
            for ``"flatten"``, 0.2 for a pooled head).
        bn_momentum: momentum of every backbone BatchNormalization layer, in
            ``[0, 1)`` (see above).
        name: model name; default ``"<backbone>_scratch"``.

    Example:
        >>> from tfx_transfer.models.batchnorm import batchnorm_layers
        >>> model = build_scratch_model("mobilenet", 3, input_shape=32)
        >>> model.output.shape, {bn.momentum for bn in batchnorm_layers(model)}
        ((None, 3), {0.9})
        >>> all(layer.trainable for layer in batchnorm_layers(model))  # the whole backbone trains
        True
    """
    if bn_momentum is not None and not 0.0 <= bn_momentum < 1.0:
        raise ValueError(f"bn_momentum={bn_momentum!r} must be in [0, 1), e.g. 0.9.")
    spec = get_backbone(backbone)
    model = build_transfer_model(spec, num_classes, input_shape=input_shape, weights=None,
                                 head=head, units=units, dropout=dropout,
                                 augmentation=augmentation,
                                 name=name or f"{spec.name}_scratch")
    # Everything trains, BatchNorm included, in training mode during fit (batch
    # statistics, Dropout active) and inference mode at prediction.
    get_backbone_layer(model).inference_mode = False
    base = get_backbone_model(model)
    base.trainable = True
    if bn_momentum is not None:
        for layer in batchnorm_layers(base):
            layer.momentum = float(bn_momentum)
    model.transfer_config["bn_momentum"] = bn_momentum
    return model


def scratch_optimizer(
    total_steps: int,
    lr: float = 1e-3,
    weight_decay: float = 0.05,
    warmup: float = 0.05,
) -> keras.optimizers.AdamW:
    """AdamW with linear warmup then cosine decay to 0, for training from scratch.

    ``warmup`` is the fraction of ``total_steps`` spent rising linearly from 0 to
    ``lr`` (at least one step); the rest follows
    ``keras.optimizers.schedules.CosineDecay``. Weight decay is decoupled (AdamW)
    and skips variables named ``bias``, ``gamma`` or ``beta``.

    Args:
        total_steps: optimizer steps of the whole run (epochs x steps per epoch).
        lr: peak learning rate, reached at the end of the warmup.
        weight_decay: AdamW's decoupled weight decay.
        warmup: fraction of the steps in the linear warmup, in ``[0, 1)`` (0: none,
            the decay starts at ``lr``).

    Example:
        >>> opt = scratch_optimizer(total_steps=1000)
        >>> round(float(opt.learning_rate), 6)   # step 0: start of the warmup
        0.0
        >>> round(float(scratch_optimizer(1000, lr=1e-3, warmup=0).learning_rate), 6)  # no warmup
        0.001
    """
    total_steps = int(total_steps)
    if total_steps < 1:
        raise ValueError(f"total_steps={total_steps!r}: need at least one training step.")
    if not 0.0 <= warmup < 1.0:
        raise ValueError(f"warmup={warmup!r} is a fraction of the steps in [0, 1).")
    warmup_steps = min(max(1, round(warmup * total_steps)), total_steps - 1) if warmup else 0
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0 if warmup_steps else lr,
        decay_steps=max(1, total_steps - warmup_steps),
        warmup_target=lr if warmup_steps else None,
        warmup_steps=warmup_steps,
    )
    optimizer = keras.optimizers.AdamW(learning_rate=schedule, weight_decay=weight_decay)
    optimizer.exclude_from_weight_decay(var_names=list(NO_DECAY))
    return optimizer


def recalibrate_batchnorm(model: keras.Model, data: Any, max_batches: int | None = 100) -> int:
    """Recompute the backbone's BatchNorm moving statistics on ``data`` ("precise BN").

    Sets every BatchNormalization layer's moving mean and variance to the plain
    average of the per-batch statistics over up to ``max_batches`` batches
    (:func:`~tfx_transfer.models.batchnorm.recompute_batchnorm` with
    ``pool="batches"``; no weight update), replacing the exponential moving
    averages. Those start at mean 0 / variance 1 and, after a short run from
    scratch, still carry part of that start: in a MobileNetV2 whose depthwise
    activations have variances near 0.01, even a remainder of 0.002 shrinks every
    block's output at inference, and the network then predicts one class.
    :func:`~tfx_transfer.pretrain` calls this after training.

    Args:
        model: a :func:`build_scratch_model` or
            :func:`~tfx_transfer.build_transfer_model` model (its backbone is used,
            after its Preprocess layer; augmentation and head are not run).
        data: batches of images or ``(images, labels, ...)`` (e.g. an un-augmented
            ``load_image_folder(...).train``).
        max_batches: at most this many batches (``None``: all of ``data``).

    Returns:
        The number of batches used.

    Example:
        >>> import numpy as np
        >>> model = build_scratch_model("mobilenet", 2, input_shape=32)
        >>> recalibrate_batchnorm(model, [np.zeros((4, 32, 32, 3), "uint8")] * 3)
        3
    """
    batches = 0

    def counted() -> Any:
        nonlocal batches
        for batch in data:
            batches += 1
            yield batch

    recompute_batchnorm(model, counted(), max_batches=max_batches, pool="batches")
    return batches
