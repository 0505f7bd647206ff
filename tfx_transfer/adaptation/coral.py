"""Deep CORAL (Sun & Saenko 2016): align the feature covariances of source and target while training.

One ``model.fit`` on labelled source batches plus unlabelled target batches of the loss
``cross_entropy(source) + loss_weight * ||C_s - C_t||_F^2 / (4 d^2)``, where ``C`` is
the covariance of the features the classifier sees (pooled backbone features for
an ``avg``/``max`` head, the hidden layer of a ``flatten`` head, the feature map's
locations for a ``spatial`` head). The head and the
backbone's top block(s) (``blocks``, BatchNorm kept frozen) train. Backend-neutral
(``keras.ops``; the loss is a layer's ``add_loss``), so the kit's callbacks work.

Example:
    >>> import numpy as np
    >>> x = np.random.default_rng(0).normal(size=(16, 4)).astype("float32")
    >>> float(coral_loss(x, x)), float(coral_loss(x, 2 * x)) > 0
    (0.0, True)
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import keras
from keras import ops

from tfx_transfer.defaults import DEFAULT_SEED
from tfx_transfer.models.parts import model_parts

DEFAULT_LOSS_WEIGHT = 10.0


def coral_loss(source_features: Any, target_features: Any) -> Any:
    """Deep CORAL loss: ``||C_s - C_t||_F^2 / (4 d^2)`` between feature covariances.

    Features ``(N, d)``, or feature maps ``(N, H, W, d)`` whose locations are the samples.

    Example:
        >>> import numpy as np
        >>> x = np.random.default_rng(0).normal(size=(16, 4)).astype("float32")
        >>> float(coral_loss(x, x))
        0.0
    """
    d = source_features.shape[-1]
    # a feature map (the spatial head classifies every location): each location is a sample
    source_features = ops.reshape(ops.cast(source_features, "float32"), (-1, d))
    target_features = ops.reshape(ops.cast(target_features, "float32"), (-1, d))

    def covariance(x):
        n = ops.cast(ops.shape(x)[0], "float32")
        centred = x - ops.mean(x, axis=0, keepdims=True)
        return ops.matmul(ops.transpose(centred), centred) / ops.maximum(n - 1.0, 1.0)

    diff = covariance(source_features) - covariance(target_features)
    return ops.sum(ops.square(diff)) / (4.0 * d * d)


class CoralAlignment(keras.layers.Layer):
    """Adds ``loss_weight * coral_loss(source, target)`` to the model's losses; returns ``source``.

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> source = rng.normal(size=(8, 4)).astype("float32")
        >>> target = rng.normal(size=(8, 4)).astype("float32")
        >>> layer = CoralAlignment(loss_weight=1.0)
        >>> features = layer([source, target])  # source unchanged, the CORAL loss added
        >>> bool(np.allclose(features, source)), len(layer.losses)
        (True, 1)
    """

    def __init__(self, loss_weight: float = DEFAULT_LOSS_WEIGHT, **kwargs: Any):
        super().__init__(**kwargs)
        self.loss_weight = float(loss_weight)

    def call(self, inputs):
        source, target = inputs
        self.add_loss(self.loss_weight * coral_loss(source, target))
        return source

    def compute_output_shape(self, input_shapes):
        return input_shapes[0]

    def get_config(self) -> dict:
        return {**super().get_config(), "loss_weight": self.loss_weight}


def build_alignment_model(model: keras.Model,
                          loss_weight: float = DEFAULT_LOSS_WEIGHT) -> keras.Model:
    """Two inputs ``{"source", "target"}`` -> source class probabilities, plus the CORAL loss.

    Every layer is shared with ``model`` (training it trains ``model``). The
    features aligned are the classifier's input: the head's layers up to its last
    Dense, without Dropout (pooled backbone features for an avg/max head).

    Example:
        >>> import tfx_transfer as tt
        >>> model = tt.build_transfer_model("vgg16", 2, input_shape=32, weights=None, head="avg")
        >>> build_alignment_model(model).output.shape
        (None, 2)
    """
    parts = model_parts(model)
    backbone = parts.backbone  # the Backbone layer: inference mode as in the model
    preprocess, augmentation, head = parts.preprocess, parts.augmentation, parts.head
    head_layers = [l for l in head.layers if type(l).__name__ != "InputLayer"]
    classifier = head_layers[-1]
    body = [l for l in head_layers[:-1] if not isinstance(l, keras.layers.Dropout)]
    dropout = [l for l in head_layers[:-1] if isinstance(l, keras.layers.Dropout)]

    def features(x):
        if augmentation is not None:
            x = augmentation(x)
        x = backbone(preprocess(x))
        for layer in body:
            x = layer(x)
        return x

    shape = tuple(model.input_shape[1:])
    inputs = {"source": keras.Input(shape=shape, name="source"),
              "target": keras.Input(shape=shape, name="target")}
    source = CoralAlignment(loss_weight, name="coral")([features(inputs["source"]),
                                                        features(inputs["target"])])
    for layer in dropout:
        source = layer(source)
    return keras.Model(inputs, classifier(source), name="coral_alignment")


def labelled_source(source: Any, image_size: tuple[int, int], batch_size: int = 32,
                    seed: int = DEFAULT_SEED, class_names: Sequence[str] | None = None,
                    num_classes: int | None = None) -> Any:
    """The labelled source batches CORAL trains on, checked against the model's classes.

    Args:
        source: a folder of class folders (its ``train/`` split when it has one,
            loaded with :func:`~tfx_transfer.load_image_folder`) or a batched
            ``tf.data`` dataset of ``(images, labels)``.
        image_size: the model's ``(height, width)``.
        batch_size: images per batch (folders).
        seed: seed of the folder's shuffling.
        class_names: the model's classes, checked against a folder's.
        num_classes: the model's number of outputs, checked against a folder's.

    Example:
        >>> import numpy as np, tensorflow as tf
        >>> data = tf.data.Dataset.from_tensor_slices((np.zeros((4, 8, 8, 3)), [0, 1, 0, 1]))
        >>> int(labelled_source(data.batch(2), (8, 8)).cardinality())
        2
    """
    import tensorflow as tf

    if isinstance(source, (str, os.PathLike)):
        from tfx_transfer.data.folder import load_image_folder

        folder = load_image_folder(source, image_size=image_size, batch_size=batch_size, seed=seed)
        if class_names is not None and list(folder.class_names) != list(class_names):
            raise ValueError(
                f"The source folder {str(source)!r} has classes {folder.class_names}, the model "
                f"{list(class_names)}; pass the labelled folder the model was trained on.")
        if num_classes is not None and folder.num_classes != num_classes:
            raise ValueError(
                f"The source folder {str(source)!r} has {folder.num_classes} classes, the model "
                f"outputs {num_classes}; pass the labelled folder the model was trained on.")
        return folder.train
    if isinstance(source, tf.data.Dataset):
        if not isinstance(source.element_spec, (tuple, list)):
            raise ValueError("The source dataset must yield (images, labels) batches.")
        return source
    raise TypeError(f"source={type(source).__name__}: pass a labelled folder or a batched "
                    "tf.data dataset of (images, labels).")


def fit_coral(model: keras.Model, source: Any, target: Any, *, epochs: int = 10,
              lr: float = 1e-4, loss_weight: float = DEFAULT_LOSS_WEIGHT, blocks: Any = "default",
              callbacks: Sequence[keras.callbacks.Callback] = (),
              verbose: Any = 0) -> keras.callbacks.History:
    """Deep CORAL training of ``model`` in place: one ``fit`` on paired source and target batches.

    An epoch is as many steps as the larger of the two has batches (both repeat).
    ``blocks`` (any :func:`~tfx_transfer.unfreeze` form; ``None``: the head only)
    train with the head, BatchNorm frozen; the trainable flags are restored after.

    Args:
        model: a :func:`~tfx_transfer.build_transfer_model` model (trained in place).
        source: labelled source batches (:func:`labelled_source`).
        target: batches of target images (:func:`~tfx_transfer.adaptation.targets.target_dataset`).
        epochs: epochs of the ``fit``.
        lr: Adam learning rate.
        loss_weight: weight of the CORAL term.
        blocks: backbone blocks trained with the head.
        callbacks: Keras callbacks for the ``fit``.
        verbose: passed to ``fit``.

    Example:
        >>> import numpy as np, tensorflow as tf, tfx_transfer as tt
        >>> model = tt.build_transfer_model("vgg16", 2, input_shape=32, weights=None)
        >>> x = np.random.default_rng(0).integers(0, 255, (4, 32, 32, 3), dtype="uint8")
        >>> source = tf.data.Dataset.from_tensor_slices((x, [0, 1, 0, 1])).batch(2)
        >>> target = tf.data.Dataset.from_tensor_slices(x // 2).batch(2)
        >>> fit_coral(model, source, target, epochs=1, blocks=None).params["steps"]
        2
    """
    import tensorflow as tf

    from tfx_transfer.models.freezing import unfreeze

    if epochs < 1:
        raise ValueError(f"epochs={epochs!r}: CORAL needs at least one epoch.")
    n_source = int(source.cardinality())
    if n_source <= 0:
        raise ValueError("The source dataset has no known number of batches; pass a folder.")
    steps = max(n_source, int(target.cardinality()))
    backbone = model_parts(model).backbone_model
    flags = (backbone.trainable, [layer.trainable for layer in backbone.layers])
    if blocks:
        unfreeze(model, blocks)
    trainer = build_alignment_model(model, loss_weight)
    label_rank = source.element_spec[1].shape.rank
    loss = (keras.losses.SparseCategoricalCrossentropy() if label_rank == 1
            else keras.losses.CategoricalCrossentropy())
    trainer.compile(optimizer=keras.optimizers.Adam(lr), loss=loss, metrics=["accuracy"])
    # Equal batch sizes keep the two covariance estimates comparable.
    pairs = tf.data.Dataset.zip(source.repeat(), target.repeat()).map(
        lambda s, t: ({"source": s[0], "target": t}, s[1]))
    try:
        return trainer.fit(pairs.prefetch(tf.data.AUTOTUNE), epochs=epochs, steps_per_epoch=steps,
                           callbacks=list(callbacks), verbose=verbose, shuffle=False)
    finally:
        backbone.trainable = flags[0]
        for layer, trainable in zip(backbone.layers, flags[1]):
            layer.trainable = trainable
