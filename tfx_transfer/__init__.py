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
(The ``tfx-transfer`` script alone defers the registration to the command it runs:
see :mod:`tfx_transfer_cli`.)

Example:
    >>> import tfx_transfer as tt
    >>> model = tt.build_transfer_model("vgg16", num_classes=3,
    ...                                 input_shape=(64, 64, 3), weights=None)
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it (imported on first access)
_EXPORTS = {
    # backbones / registry
    "BackboneSpec": "models.backbones",
    "get_backbone": "models.backbones",
    "list_backbones": "models.backbones",
    "register_backbone": "models.backbones",
    "backbone_blocks": "models.backbones",
    # layers
    "Preprocess": "models.layers",
    "Backbone": "models.layers",
    # model
    "build_transfer_model": "models.transfer_model",
    "build_head": "models.heads",
    "get_backbone_model": "models.transfer_model",
    "get_backbone_layer": "models.transfer_model",
    "get_head": "models.transfer_model",
    "TransferModel": "models.transfer_model",
    "transfer_config": "models.transfer_model",
    "ModelParts": "models.parts",
    "model_parts": "models.parts",
    "load_model": "models.saving",
    # weights
    "WeightsUnavailableError": "models.weights",
    "fetch_weights": "models.weights",
    # data (TensorFlow)
    "load_image_folder": "data.folder",
    "load_image_table": "data.table",
    "fit_thresholds": "evaluation.multilabel",
    "ImageFolder": "data.folder",
    "class_weights": "data.folder",
    "decode_and_resize": "data.decode",
    # augmentation
    "Augmentation": "data.augmentation",
    "preview_augmentation": "data.preview",
    "RandomAffine": "data.augmentation_layers",
    # fine-tuning
    "freeze": "models.freezing",
    "freeze_to": "models.freezing",
    "unfreeze": "models.freezing",
    "block_names": "models.freezing",
    "StagedUnfreeze": "training.callbacks",
    "StagedBackupAndRestore": "training.callbacks",
    "DiscriminativeOptimizer": "training.optimizers",
    "copy_optimizer": "training.optimizers",
    "fine_tune": "training.finetune",
    # export / serving (TensorFlow)
    "export_saved_model": "export.saved_model",
    "load_exported": "export.exported",
    "ExportedModel": "export.exported",
    "export_tflite": "export.tflite",
    "read_tflite_labels": "export.tflite_metadata",
    "read_tflite_metadata": "export.tflite_metadata",
    "export_onnx": "export.onnx",
    "predict_files": "export.exported",
    # evaluation, reports, end-to-end training
    "evaluate_model": "evaluation.evaluate",
    "calibrate": "evaluation.calibration",
    "expected_calibration_error": "evaluation.calibration",
    "fit_unknown": "evaluation.unknown_detection",
    "evaluate_unknown": "evaluation.unknown_detection",
    "unknown_scores": "models.unknown_score",
    "train": "runs.job",
    "RunFolderLockedError": "runs.lock",
    # scaling
    "get_strategy": "training.distribute",
    "set_precision": "training.distribute",
    "num_replicas": "training.distribute",
    "scaled_batch_size": "training.distribute",
    "strategy_scope": "training.distribute",
    # transfer without ImageNet
    "pretrain": "training.pretraining",
    "build_joint_model": "models.joint",
    "fit_joint": "models.joint",
    "ensemble": "models.ensembles",
    # explanations and debugging aids
    "explain": "evaluation.gradcam",
    "top_losses": "evaluation.mislabeled",
    "find_lr": "training.lr_finder",
    "predict_tta": "evaluation.tta",
    # unsupervised domain adaptation
    "adapt": "adaptation.adapt",
    # few-shot: cosine head, weight imprinting, classes added to a trained model
    "CosineClassifier": "models.cosine",
    "SpatialClassifier": "models.spatial",
    "imprint": "models.imprinting",
    "add_classes": "models.imprinting",
}

__all__ = sorted(_EXPORTS) + ["__version__"]

# The modules whose import registers the kit's serializable objects (augmentation layers,
# Preprocess/Backbone, TransferModel, FuseProbabilities, DiscriminativeOptimizer) for
# keras.saving.load_model; listed here, above every layer, so that no layer imports one above it.
_REGISTERING = ("data.augmentation", "data.augmentation_layers", "models.layers",
                "models.transfer_model", "models.ensembles", "training.optimizers")


def _register_objects() -> None:
    for module in _REGISTERING:
        importlib.import_module(f"tfx_transfer.{module}")


# The `tfx-transfer` script enters through the module tfx_transfer_cli, imported before this
# package: then the command that runs registers them (tfx_transfer.cli.main), so that
# `tfx-transfer --help` and `--version` answer without importing Keras and TensorFlow.
if "tfx_transfer_cli" not in sys.modules:
    _register_objects()


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'tfx_transfer' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"tfx_transfer.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
