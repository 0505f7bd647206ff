"""tfx_transfer: image-classification transfer learning on Keras 3.

A thin layer over ``keras.applications``: a frozen pretrained backbone plus a new
head (:func:`build_transfer_model`), image folders to ``tf.data``
(:func:`load_image_folder`), ImageDataGenerator-style augmentation
(:class:`Augmentation`), staged unfreezing inside one ``model.fit``
(:class:`StagedUnfreeze`, :func:`fine_tune`) and SavedModel export
(:func:`export_saved_model`).

Importing the package is cheap: nothing below is imported (and no TensorFlow or
Keras work is done) until a name is first used.

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
    # model
    "build_transfer_model": "model",
    "get_backbone_model": "model",
    "get_head": "model",
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
    "RandomAffine": "augment",
    # fine-tuning
    "StagedUnfreeze": "finetune",
    "fine_tune": "finetune",
    "unfreeze": "finetune",
    "StagedBackupAndRestore": "finetune",
    "DiscriminativeOptimizer": "finetune",
    "copy_optimizer": "finetune",
    # export / serving (TensorFlow)
    "export_saved_model": "export",
    "load_exported": "export",
    "export_tflite": "export",
    "predict_files": "export",
    # evaluation, reports, end-to-end training
    "evaluate_model": "evaluate",
    "train": "job",
    # scaling
    "get_strategy": "distribute",
    "set_precision": "distribute",
    "num_replicas": "distribute",
    "scaled_batch_size": "distribute",
    "strategy_scope": "distribute",
    # transfer without ImageNet
    "pretrain": "pretrain",
    "build_joint_model": "joint",
    "fit_joint": "joint",
    "ensemble": "ensemble",
    # unsupervised domain adaptation
    "adapt": "adapt",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'tfx_transfer' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"tfx_transfer.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
