"""Unsupervised domain adaptation: a trained classifier, new-domain images without labels.

The model was trained on a labelled *source* domain; the *target* domain (another
camera, lighting, scanner, season...) has images but no labels, and accuracy
drops there. :func:`adapt` returns an adapted copy of the model; target labels
are never read, even when the target folder has class folders
(:mod:`tfx_transfer.adaptation.targets`). The run-folder job
(``tfx-transfer adapt``) is :func:`tfx_transfer.adaptation.run.adapt_run`.

Methods:

* ``"adabn"`` -- AdaBN (Li et al. 2016, "Revisiting Batch Normalization For
  Practical Domain Adaptation"): every BatchNormalization layer of the backbone
  gets its moving mean and variance re-estimated on the target images (exact
  averages over all of them, not a momentum update). No weight changes, seconds
  of compute. AdaBN assumes the model's statistics are the *source's*; a transfer
  model keeps the backbone's ImageNet statistics (other images, another size), and
  plain AdaBN then also moves what the head learned on (measured: -23 points). So
  when ``source`` is given, its *images* (never its labels) make it
  source-relative (see :func:`~tfx_transfer.models.batchnorm.recompute_batchnorm`),
  which is exactly AdaBN when
  the statistics are the source's. Needs a backbone with BatchNorm (ResNet,
  MobileNet, DenseNet, EfficientNet...); VGG has none and is refused.
* ``"coral"`` -- Deep CORAL (Sun & Saenko 2016, :mod:`tfx_transfer.adaptation.coral`):
  one ``model.fit`` on labelled source batches plus unlabelled target batches of
  the loss ``cross_entropy(source) + loss_weight * ||C_s - C_t||_F^2 / (4 d^2)``
  on the features the classifier sees. The head and the backbone's top block(s)
  (``blocks``, BatchNorm kept frozen) train.
* ``"adabn+coral"`` -- AdaBN, then Deep CORAL on the target-normalised backbone.
* ``"default"`` -- ``"adabn"`` (with the source's images when given), chosen from
  measurements on shifted real photos (``docs/adaptation.md``): it gained on the
  shifts measured, more than CORAL, at a fraction of the cost.

Example (the methods; :func:`adapt`'s example adapts a model with AdaBN):
    >>> from tfx_transfer.adaptation.adapt import DEFAULT_METHOD, METHODS
    >>> METHODS, DEFAULT_METHOD
    (('adabn', 'coral', 'adabn+coral'), 'adabn')
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import keras

from tfx_transfer.adaptation.coral import DEFAULT_LOSS_WEIGHT, fit_coral, labelled_source
from tfx_transfer.adaptation.targets import check_image_size, target_dataset
from tfx_transfer.defaults import DEFAULT_SEED
from tfx_transfer.models.batchnorm import batchnorm_layers, recompute_batchnorm
from tfx_transfer.models.transfer_model import TransferModel, get_backbone_model

METHODS = ("adabn", "coral", "adabn+coral")
DEFAULT_METHOD = "adabn"


def _require_batchnorm(model: keras.Model) -> None:
    backbone = get_backbone_model(model)
    if not batchnorm_layers(backbone):
        raise ValueError(
            f"Backbone {backbone.name!r} has no BatchNormalization layer, so AdaBN has no "
            "statistics to adapt; use method='coral' (feature alignment), or a backbone with "
            "BatchNorm (resnet50, mobilenet, mobilenetv2, efficientnetb0...)."
        )


def copy_model(model: keras.Model) -> keras.Model:
    """An independent copy of a transfer model (same layers, names, weights, trainable flags).

    Example:
        >>> import tfx_transfer as tt
        >>> model = tt.build_transfer_model("vgg16", 2, input_shape=32, weights=None)
        >>> copy_model(model).count_params() == model.count_params()
        True
    """
    if isinstance(model, TransferModel):  # keeps the class, its settings and the Backbone layer
        clone = TransferModel.from_config(model.get_config())
    else:
        clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    pairs = zip(_all_layers(model), _all_layers(clone))
    for a, b in pairs:
        b.trainable = a.trainable
    return clone


def _all_layers(layer: keras.layers.Layer) -> list[keras.layers.Layer]:
    out = []
    for sub in getattr(layer, "layers", []):
        out.append(sub)
        out += _all_layers(sub) if hasattr(sub, "layers") else []
    return out


def adapt(
    model: keras.Model,
    target: Any,
    method: str = "default",
    source: Any = None,
    *,
    epochs: int = 10,
    lr: float = 1e-4,
    batch_size: int = 32,
    image_size: int | Sequence[int] | None = None,
    seed: int = DEFAULT_SEED,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    loss_weight: float = DEFAULT_LOSS_WEIGHT,
    blocks: Any = "default",
    class_names: Sequence[str] | None = None,
    verbose: Any = 0,
) -> keras.Model:
    """Adapt a trained classifier to an unlabelled target domain; returns an adapted copy.

    Args:
        model: a :func:`~tfx_transfer.build_transfer_model` model trained on the
            source (also one built on :func:`~tfx_transfer.pretrain` weights). Not
            changed: the result is a copy with the same structure (exports the same way).
        target: target-domain images: a folder (searched recursively for every
            format the kit reads, TIFF included; class folders allowed but their
            names are never read; with ``train/``/``val/`` only ``train/`` is used),
            a uint8 array ``(N, H, W, 3)`` or a batched ``tf.data`` dataset (labels,
            if any, are dropped unread).
        method: ``"default"`` (= ``"adabn"``, see ``docs/adaptation.md``),
            ``"adabn"``, ``"coral"`` or ``"adabn+coral"``.
        source: the source data: a folder of class folders (its ``train/`` split
            when it has one) or a batched ``tf.data`` of ``(images, labels)``.
            Required by ``"coral"`` (labels used); ``"adabn"`` uses its images only
            (source-relative AdaBN) and warns when it is missing.
        epochs, lr: the CORAL ``fit``: epochs (one epoch = as many steps as the
            larger of source and target has batches) and Adam learning rate.
        batch_size: images per batch, for both domains.
        image_size: the images' size; must be the model's input size (the default).
        seed: seeds shuffling and training.
        callbacks: Keras callbacks for the CORAL ``fit`` (the kit's callbacks work).
        loss_weight: weight of the CORAL loss term.
        blocks: backbone blocks trained by CORAL (any :func:`~tfx_transfer.unfreeze`
            form; ``None`` trains the head only). BatchNorm stays frozen.
        class_names: the model's classes, checked against a source folder's.
        verbose: passed to ``fit``.

    Returns:
        The adapted model (a new ``keras.Model``); ``adapted._tfx_adaptation`` holds
        ``{"method", "target_images"}`` (the number of target images used).

    Raises:
        ValueError: an unknown method; AdaBN on a backbone without BatchNorm; no
            source for CORAL; image sizes that do not match the model.

    Example:
        >>> import numpy as np, tfx_transfer as tt
        >>> model = tt.build_transfer_model("mobilenet", 2, input_shape=32,
        ...                                 weights=None, head="avg")
        >>> rng = np.random.default_rng(0)
        >>> source = rng.integers(0, 255, (8, 32, 32, 3), dtype="uint8")
        >>> adapted = adapt(model, source // 2, "adabn", source, batch_size=4)
        >>> adapted._tfx_adaptation, adapted.output.shape  # an adapted copy of model
        ({'method': 'adabn', 'target_images': 8}, (None, 2))
    """
    chosen = DEFAULT_METHOD if method == "default" else method
    if chosen not in METHODS:
        raise ValueError(f"method={method!r}: choose 'default' ({DEFAULT_METHOD}) or one of "
                         f"{METHODS}.")
    want = tuple(int(v) for v in model.input_shape[1:3])
    if image_size is not None:
        size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        check_image_size(size, want, f"image_size={image_size!r}: images")
    uses_coral = "coral" in chosen
    if uses_coral and source is None:
        raise ValueError(f"method={chosen!r} trains on labelled source batches: pass source= "
                         "(the labelled folder the model was trained on). method='adabn' needs "
                         "no source.")
    if epochs < 1 and uses_coral:
        raise ValueError(f"epochs={epochs!r}: CORAL needs at least one epoch.")
    if "adabn" in chosen:
        _require_batchnorm(model)
    keras.utils.set_random_seed(seed)
    adapted = copy_model(model)
    images, n_target = target_dataset(target, want, batch_size, seed=seed, count=False)
    if "adabn" in chosen:
        reference = None
        if source is not None:  # source images only: labels are not needed here
            reference = target_dataset(source, want, batch_size, seed=seed, shuffle=False,
                                       count=False)[0]
        else:
            warnings.warn(
                "adapt(method='adabn') without source=: plain AdaBN, right only when the "
                "model's BatchNorm statistics are the source domain's (a backbone trained on "
                "it). A transfer model keeps ImageNet statistics, and plain AdaBN then lost "
                "accuracy in docs/adaptation.md; pass source= (its images only are read).",
                UserWarning, stacklevel=2)
        n_target = recompute_batchnorm(adapted, images, reference=reference)
    if uses_coral:
        labelled = labelled_source(source, want, batch_size, seed, class_names,
                                   int(model.output_shape[-1]))
        fit_coral(adapted, labelled, images, epochs=epochs, lr=lr, loss_weight=loss_weight,
                  blocks=blocks, callbacks=callbacks, verbose=verbose)
    if n_target is None:
        n_target = target_dataset(target, want, batch_size, shuffle=False)[1]
    adapted._tfx_adaptation = {"method": chosen, "target_images": n_target}
    return adapted
