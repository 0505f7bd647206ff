"""``load_model``: one loader for every ``.keras`` file the kit writes.

Every custom object of the kit (layers, :class:`~tfx_transfer.TransferModel`, the
ensemble's fusion layer, :class:`~tfx_transfer.DiscriminativeOptimizer`) is
registered when ``tfx_transfer`` is imported, so ``keras.saving.load_model`` works
too; this function adds the checks and messages.

Example:
    >>> import os, tempfile, tfx_transfer as tt
    >>> model = tt.build_transfer_model("vgg16", 2, input_shape=32, weights=None)
    >>> path = os.path.join(tempfile.mkdtemp(), "m.keras")
    >>> model.save(path)
    >>> tt.transfer_config(tt.load_model(path))["backbone"]
    'vgg16'
"""

from __future__ import annotations

import os
from pathlib import Path

import keras

# Importing these registers the serializable objects of the layers below training
# (`import tfx_transfer` registers every one, DiscriminativeOptimizer included).
from tfx_transfer.data import augmentation, augmentation_layers  # noqa: F401
from tfx_transfer.layout import MODEL_FILE
from tfx_transfer.models import ensembles, layers, transfer_model  # noqa: F401


def load_model(path: str | os.PathLike, compile: bool = True, safe_mode: bool = True) -> keras.Model:
    """Load a ``.keras`` file written by the kit (or by ``model.save``), in safe mode.

    Transfer models, pretrained models, ensembles, joint models, models compiled
    with :class:`tfx_transfer.DiscriminativeOptimizer` and models holding
    augmentation layers all load; build settings come back with the model
    (:func:`tfx_transfer.transfer_config`).

    Args:
        path: a ``.keras`` file, or a run folder holding ``model.keras``.
        compile: restore the optimizer, loss and metrics when they were saved.
        safe_mode: refuse to deserialize Python lambdas (Keras's default).

    Example:
        >>> import os, tempfile, tfx_transfer as tt
        >>> m = tt.build_transfer_model("vgg16", 2, input_shape=32, weights=None)
        >>> p = os.path.join(tempfile.mkdtemp(), "m.keras"); m.save(p)
        >>> tt.load_model(p).name
        'vgg16_transfer'
    """
    file = Path(path)
    if file.is_dir() and (file / MODEL_FILE).is_file():
        file = file / MODEL_FILE
    if not file.is_file():
        raise FileNotFoundError(f"{str(path)!r} is not a .keras file (nor a run folder holding "
                                "model.keras); save one with model.save('name.keras').")
    if file.suffix != ".keras":
        raise ValueError(f"{str(path)!r} is not a .keras file; for a SavedModel export use "
                         "tfx_transfer.load_exported(path), for a weights file "
                         "model.load_weights(path).")
    return keras.saving.load_model(file, compile=compile, safe_mode=safe_mode)
