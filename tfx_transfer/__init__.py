"""tfx_transfer: image-classification transfer learning on Keras 3.

A thin layer over ``keras.applications``: a frozen pretrained backbone plus a new
head (:func:`build_transfer_model`), image folders to ``tf.data``
(:func:`load_image_folder`), ImageDataGenerator-style augmentation
(:class:`Augmentation`), staged unfreezing inside one ``model.fit``
(:class:`StagedUnfreeze`, :func:`fine_tune`) and SavedModel export
(:func:`export_saved_model`).

Importing the package imports Keras and registers every custom object of the
kit (so ``keras.saving.load_model`` reads every ``.keras`` file it writes); the
TensorFlow-only parts (data, export, the end-to-end job) are imported on first use.

Example:
    >>> import tfx_transfer as tt
    >>> model = tt.build_transfer_model("vgg16", num_classes=3,
    ...                                 input_shape=(64, 64, 3), weights=None)
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it (imported on first access)
_EXPORTS = {
    # backbones / registry
    "BackboneSpec": "backbones",
    "get_backbone": "backbones",
    "list_backbones": "backbones",
    "register_backbone": "backbones",
    "backbone_blocks": "backbones",
    # layers
    "Preprocess": "layers",
    "Backbone": "layers",
    # model
    "build_transfer_model": "model",
    "build_head": "model",
    "get_backbone_model": "model",
    "get_backbone_layer": "model",
    "get_head": "model",
    "TransferModel": "model",
    "transfer_config": "model",
    "load_model": "saving",
    # weights
    "WeightsUnavailableError": "weights",
    "fetch_weights": "weights",
    # data (TensorFlow)
    "load_image_folder": "data",
    "ImageFolder": "data",
    "class_weights": "data",
    "decode_and_resize": "data",
    # augmentation
    "Augmentation": "augment",
    "preview_augmentation": "augment",
    "RandomAffine": "augment_layers",
    # fine-tuning
    "freeze": "freezing",
    "freeze_to": "freezing",
    "unfreeze": "freezing",
    "block_names": "freezing",
    "StagedUnfreeze": "callbacks",
    "StagedBackupAndRestore": "callbacks",
    "DiscriminativeOptimizer": "optimizers",
    "copy_optimizer": "optimizers",
    "fine_tune": "finetune",
    # export / serving (TensorFlow)
    "export_saved_model": "export",
    "load_exported": "exported",
    "ExportedModel": "exported",
    "export_tflite": "tflite",
    "predict_files": "exported",
    # evaluation, reports, end-to-end training
    "evaluate_model": "evaluate",
    "train": "job",
    "RunFolderLockedError": "runlock",
    # scaling
    "get_strategy": "distribute",
    "set_precision": "distribute",
    "num_replicas": "distribute",
    "scaled_batch_size": "distribute",
    "strategy_scope": "distribute",
    # transfer without ImageNet
    "pretrain": "pretraining",
    "build_joint_model": "joint",
    "fit_joint": "joint",
    "ensemble": "ensembles",
    # explanations and debugging aids
    "explain": "gradcam",
    "top_losses": "mislabeled",
    "find_lr": "lr_finder",
    "predict_tta": "tta",
    # unsupervised domain adaptation
    "adapt": "adaptation",
}

__all__ = sorted(_EXPORTS) + ["__version__"]

# Registers the kit's serializable objects (layers, TransferModel, FuseProbabilities,
# DiscriminativeOptimizer, augmentation layers) for keras.saving.load_model.
from tfx_transfer import saving as _saving  # noqa: E402,F401


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'tfx_transfer' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"tfx_transfer.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
