"""Joint training: the target task together with the source task on one shared backbone.

For very small target sets, fine-tuning the backbone on the target alone can
forget what pretraining learned and overfit a few dozen images. Joint training
keeps the source task in the loss while the backbone adapts::

    loss = L_target + loss_weight * L_source          (loss_weight default 0.5)

It is an ordinary Keras functional model with two inputs and two outputs,
``{"target": ..., "source": ...}``, compiled with ``loss_weights`` and fed a
``tf.data`` zip of one target batch and one source batch per step (both
repeated; an epoch is as many steps as the larger of the two has batches unless
``steps_per_epoch`` says otherwise). The target branch *is* your
:func:`~tfx_transfer.build_transfer_model` model (called as a layer), and the
source branch reuses its Preprocess layer and backbone and adds a second head
named ``"source_head"``. Training the joint model therefore trains the target
model in place; export the target model itself, which carries only the target
head.

Only what is trainable in the target model (plus the source head) trains. With
a frozen backbone the source term cannot reach the target head, so unfreeze
first (:func:`tfx_transfer.unfreeze`); :func:`fit_joint` warns otherwise.

Example (in practice ``weights=`` and ``source_head_weights=`` are the files
:func:`tfx_transfer.pretrain` wrote, and the data come from
:func:`tfx_transfer.load_image_folder`; :func:`fit_joint`'s example trains one):
    >>> import tfx_transfer as tt
    >>> model = tt.build_transfer_model("vgg16", 2, input_shape=32, weights=None, head="avg")
    >>> _ = tt.unfreeze(model, "block5")  # else the source loss cannot reach the target head
    >>> joint = build_joint_model(model, num_source_classes=3)  # what fit_joint trains
    >>> sorted(joint.input), sorted(joint.output)
    (['source', 'target'], ['source', 'target'])
    >>> joint.get_layer("source_head").output.shape, model.output.shape
    ((None, 3), (None, 2))
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from typing import Any

import keras

from tfx_transfer.defaults import DEFAULT_SEED
from tfx_transfer.models.heads import build_head
from tfx_transfer.models.parts import model_parts
from tfx_transfer.models.transfer_model import get_backbone_model, transfer_config

SOURCE_HEAD_NAME = "source_head"
DEFAULT_LOSS_WEIGHT = 0.5


def build_joint_model(
    target_model: keras.Model,
    num_source_classes: int,
    *,
    source_head_weights: str | os.PathLike | None = None,
    name: str = "joint",
) -> keras.Model:
    """Two-input, two-output model: the target model plus a source head on its backbone.

    Inputs and outputs are dicts keyed ``"target"`` and ``"source"``; both inputs
    take pixels of the target model's input shape. The source head has the target
    head's type (avg / max / flatten, units, dropout) and ``num_source_classes``
    outputs; ``source_head_weights`` loads the head :func:`~tfx_transfer.pretrain`
    saved (``<name>.head.weights.h5``), otherwise it starts random. All layers are
    shared with ``target_model``, which keeps working on its own.

    Args:
        target_model: a :func:`~tfx_transfer.build_transfer_model` model.
        num_source_classes: classes of the source task (at least 2).
        source_head_weights: the source head's weights file; ``None``: random init.
        name: the joint model's name.

    Example:
        >>> import tfx_transfer as tt
        >>> target = tt.build_transfer_model("vgg16", 2, input_shape=32, weights=None, head="avg")
        >>> joint = build_joint_model(target, num_source_classes=5)
        >>> sorted(joint.output.keys()), joint.output["source"].shape
        (['source', 'target'], (None, 5))
    """
    if not isinstance(num_source_classes, int) or num_source_classes < 2:
        raise ValueError(
            f"num_source_classes={num_source_classes!r}: need the number of source classes "
            "(an integer of at least 2)."
        )
    parts = model_parts(target_model)
    backbone, preprocess = parts.backbone_model, parts.preprocess
    config = transfer_config(target_model)
    source_head = build_head(
        tuple(backbone.output.shape[1:]), num_source_classes, config.get("head", "avg"),
        config.get("units", 256), config.get("dropout", 0.2), name=SOURCE_HEAD_NAME,
    )
    if source_head_weights is not None:
        try:
            source_head.load_weights(source_head_weights)
        except (ValueError, FileNotFoundError) as exc:
            raise ValueError(
                f"source_head_weights={str(source_head_weights)!r} does not fit a "
                f"{config.get('head', 'avg')!r} head with {num_source_classes} classes on "
                f"{backbone.name!r}: {exc}. Pass the <name>.head.weights.h5 written by the "
                "pretrain run of this backbone, with the same head and image size."
            ) from exc

    shape = tuple(target_model.input_shape[1:])
    inputs = {"target": keras.Input(shape=shape, name="target"),
              "source": keras.Input(shape=shape, name="source")}
    # The target model's own layers, called again (not the nested model): the joint model is
    # then a plain functional graph of shared layers, which saves and loads as .keras.
    target = inputs["target"]
    for layer in target_model.layers:
        if not isinstance(layer, keras.layers.InputLayer):
            target = layer(target)
    features = parts.backbone(preprocess(inputs["source"]))
    outputs = {"target": target, "source": source_head(features)}
    return keras.Model(inputs, outputs, name=name)


def _label_loss(labels_spec: Any, which: str) -> keras.losses.Loss:
    rank = labels_spec.shape.rank
    if rank == 1:
        return keras.losses.SparseCategoricalCrossentropy()
    if rank == 2:
        return keras.losses.CategoricalCrossentropy()
    raise ValueError(
        f"{which} labels have shape {labels_spec.shape}; expected integer labels (B,) or "
        "one-hot labels (B, classes), as load_image_folder gives."
    )


def joint_dataset(target_data: Any, source_data: Any) -> Any:
    """Zip batched ``(images, labels)`` datasets into the joint model's ``(x, y)`` dicts.

    Both are repeated forever, so the smaller one cycles while the larger one is
    consumed; pass ``steps_per_epoch`` to ``fit``.

    Example:
        >>> import numpy as np, tensorflow as tf
        >>> x = np.zeros((6, 32, 32, 3), "uint8")
        >>> target = tf.data.Dataset.from_tensor_slices((x[:4], [0, 1, 0, 1])).batch(2)
        >>> source = tf.data.Dataset.from_tensor_slices((x, [0, 1, 2, 0, 1, 2])).batch(2)
        >>> x, y = next(iter(joint_dataset(target, source)))
        >>> sorted(x), y["source"].numpy().tolist()
        (['source', 'target'], [0, 1])
    """
    import tensorflow as tf

    def pair(target, source):
        return ({"target": target[0], "source": source[0]},
                {"target": target[1], "source": source[1]})

    zipped = tf.data.Dataset.zip(target_data.repeat(), source_data.repeat())
    return zipped.map(pair, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def _batches(dataset: Any, which: str) -> int:
    n = int(dataset.cardinality())
    if n <= 0:
        raise ValueError(
            f"The {which} dataset has no known number of batches (cardinality {n}); pass "
            "steps_per_epoch=... to fit_joint."
        )
    return n


def fit_joint(
    target_model: keras.Model,
    target_data: Any,
    source_data: Any,
    *,
    num_source_classes: int | None = None,
    loss_weight: float = DEFAULT_LOSS_WEIGHT,
    epochs: int = 5,
    steps_per_epoch: int | None = None,
    lr: float = 1e-4,
    optimizer: keras.optimizers.Optimizer | None = None,
    source_head_weights: str | os.PathLike | None = None,
    callbacks: Sequence[keras.callbacks.Callback] | None = None,
    seed: int | None = DEFAULT_SEED,
    verbose: Any = "auto",
) -> keras.callbacks.History:
    """Train ``target_model`` jointly with the source task: ``L_target + loss_weight * L_source``.

    Args:
        target_model: a :func:`~tfx_transfer.build_transfer_model` model, trained in
            place (unfreeze backbone blocks first; see the module docstring).
        target_data, source_data: batched ``tf.data`` datasets of ``(images, labels)``
            (integer or one-hot labels, e.g. ``load_image_folder(...).train``), images
            at the target model's input size.
        num_source_classes: defaults to the width of one-hot source labels.
        loss_weight: weight of the source loss (default 0.5; 0 is plain fine-tuning).
        epochs: epochs (default 5).
        steps_per_epoch: default: the larger dataset's number of batches.
        lr: Adam learning rate when ``optimizer`` is None (default 1e-4,
            a fine-tuning rate).
        optimizer: a Keras optimizer instance instead of ``Adam(lr)``.
        source_head_weights: the source head from :func:`~tfx_transfer.pretrain`.
        callbacks: Keras callbacks for ``fit``.
        seed: seeds the source head's initialisation and the training
            (``keras.utils.set_random_seed``); ``None`` leaves the global seeds alone.
        verbose: passed to ``fit``.

    Returns:
        The ``History``; ``history.model`` is the joint model. Logs hold ``loss``,
        ``target_loss``, ``source_loss``, ``target_accuracy``, ``source_accuracy``.

    Example:
        >>> import numpy as np, tensorflow as tf, tfx_transfer as tt
        >>> x = np.zeros((6, 32, 32, 3), "uint8")
        >>> target = tf.data.Dataset.from_tensor_slices((x[:4], [0, 1, 0, 1])).batch(2)
        >>> source = tf.data.Dataset.from_tensor_slices((x, [0, 1, 2, 0, 1, 2])).batch(2)
        >>> model = tt.build_transfer_model("vgg16", 2, input_shape=32, weights=None, head="avg")
        >>> _ = tt.unfreeze(model, "block5")
        >>> history = fit_joint(model, target, source, loss_weight=0.5, num_source_classes=3,
        ...                     epochs=1, verbose=0)
        >>> history.params["steps"]  # the larger dataset's batches
        3
        >>> sorted(history.history)
        ['loss', 'source_accuracy', 'source_loss', 'target_accuracy', 'target_loss']
    """
    if loss_weight < 0:
        raise ValueError(f"loss_weight={loss_weight!r}: the source-loss weight must be >= 0 "
                         "(0 is plain fine-tuning).")
    source_labels = source_data.element_spec[1]
    if num_source_classes is None:
        if source_labels.shape.rank != 2 or source_labels.shape[-1] is None:
            raise ValueError(
                "num_source_classes is needed with integer source labels: pass "
                "num_source_classes=len(source.class_names)."
            )
        num_source_classes = int(source_labels.shape[-1])
    if not get_backbone_model(target_model).trainable_weights:
        warnings.warn(
            "fit_joint: the backbone of the target model is frozen, so the source loss cannot "
            "influence the target head; unfreeze blocks first (tfx_transfer.unfreeze).",
            UserWarning, stacklevel=2,
        )
    if steps_per_epoch is None:
        steps_per_epoch = max(_batches(target_data, "target"), _batches(source_data, "source"))
    if seed is not None:
        keras.utils.set_random_seed(seed)

    joint = build_joint_model(target_model, num_source_classes,
                              source_head_weights=source_head_weights)
    joint.compile(
        optimizer=optimizer or keras.optimizers.Adam(lr),
        loss={"target": _label_loss(target_data.element_spec[1], "target"),
              "source": _label_loss(source_labels, "source")},
        loss_weights={"target": 1.0, "source": float(loss_weight)},
        metrics={"target": ["accuracy"], "source": ["accuracy"]},
    )
    return joint.fit(joint_dataset(target_data, source_data), epochs=epochs,
                     steps_per_epoch=steps_per_epoch, callbacks=list(callbacks or []),
                     verbose=verbose, shuffle=False)
