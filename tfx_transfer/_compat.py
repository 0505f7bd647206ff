"""Every private Keras API the kit touches, in one place, each with why and for which versions.

Supported: Keras 3.8 to 3.15 (TensorFlow 2.18 to 2.21). Each entry names the
private thing, why no public API does the job, and the versions it was checked on.
Two subclasses also rely on protected members of their Keras base class, noted
here so a Keras upgrade checks them too:

* ``finetune.DiscriminativeOptimizer`` (an ``Optimizer`` subclass) uses
  ``_learning_rate``, ``_get_current_learning_rate``, ``_variables``,
  ``_trainable_variables``, ``_get_variable_index`` and ``_iterations`` as any
  optimizer wrapper must (``LossScaleOptimizer`` does the same); 3.8-3.15.
* ``finetune.StagedBackupAndRestore`` overrides ``BackupAndRestore._load_model``
  to apply the unfreezing stages before the optimizer state is restored; 3.8-3.15.

Two TensorFlow modules that are not public API, used where TensorFlow is imported anyway:
``export/tflite_metadata.py`` reads and re-writes ``.tflite`` flatbuffers with
``tensorflow.lite.python.schema_py_generated`` (the TFLite schema that TensorFlow's own
TFLite tools use; ``tflite-support``, which ships it publicly, cannot be installed beside
TensorFlow >= 2.18); TensorFlow 2.18-2.21. :func:`save_tracing` (below) enters
``tensorflow.python.saved_model.save_context``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import keras

# DataLayer: the base of Keras's own preprocessing layers that also run inside tf.data
# (``self.backend`` switches to TensorFlow there). Never public. keras.src...data_layer
# since 3.10; tf_data_layer.TFDataLayer in 3.5-3.9.
try:
    from keras.src.layers.preprocessing.data_layer import DataLayer  # noqa: F401
except ImportError:  # Keras < 3.10
    from keras.src.layers.preprocessing.tf_data_layer import TFDataLayer as DataLayer  # noqa: F401


def seed_generator(layer: Any) -> Any:
    """The seed generator of a DataLayer for its current backend (tf.data or the model's).

    Private ``DataLayer._get_seed_generator``: a random layer that runs both in tf.data and
    in a model needs one generator per backend; 3.8-3.15.
    """
    return layer._get_seed_generator(layer.backend._backend)


def keras_home() -> Path:
    """``$KERAS_HOME`` as Keras resolves it (falls back to /tmp/.keras when ~ is read-only).

    Private ``keras.src.backend.config.keras_home``: the public API has no accessor; 3.8-3.15.
    """
    from keras.src.backend import config

    return Path(config.keras_home())


@contextlib.contextmanager
def replaced_get_file(make: Callable[[Callable[..., Any]], Callable[..., Any]]) -> Iterator[None]:
    """Replace the ``get_file`` that ``keras.applications`` downloads weights with.

    Private ``keras.src.utils.file_utils.get_file`` (the applications call it through the
    module, so patching the module attribute reaches them): the only way to fail fast offline
    instead of a long network time-out; 3.8-3.15.
    """
    from keras.src.utils import file_utils

    original = file_utils.get_file
    file_utils.get_file = make(original)
    try:
        yield
    finally:
        file_utils.get_file = original


def raw_learning_rate(optimizer: keras.optimizers.Optimizer) -> Any:
    """The optimizer's learning rate as stored: a Variable, a schedule or a callable.

    Private ``Optimizer._learning_rate``: ``optimizer.learning_rate`` evaluates a schedule,
    losing which kind it is; 3.8-3.15.
    """
    return optimizer._learning_rate


def record_optimizer(model: keras.Model, optimizer: keras.optimizers.Optimizer) -> None:
    """Make ``model.save`` record ``optimizer`` (replaced inside ``fit``) as the compiled one.

    Private ``Model._compile_config``: assigning ``model.optimizer`` does not update what
    ``model.save`` serializes; 3.8-3.15.
    """
    compile_config = getattr(model, "_compile_config", None)
    if compile_config is not None:
        compile_config.config["optimizer"] = optimizer


def clear_initial_epoch(model: keras.Model) -> None:
    """Forget the epoch ``BackupAndRestore`` set, so it does not leak into a later ``fit``.

    Private ``Model._initial_epoch``; 3.8-3.15.
    """
    model._initial_epoch = None


def distribute_strategy(model: keras.Model) -> Any:
    """The tf.distribute strategy a model was built under, or None.

    Private ``Model._distribute_strategy`` (the public ``distribute_strategy`` returns the
    default strategy instead of None); TensorFlow backend, 3.8-3.15.
    """
    return getattr(model, "_distribute_strategy", None)


def has_seed_generators(layer: Any) -> bool:
    """Whether a layer draws random numbers (Keras's random layers own seed generators).

    Private ``Layer._seed_generators``: no public flag says a layer is random; 3.8-3.15.
    """
    return bool(getattr(layer, "_seed_generators", None))


def trackable_root() -> Any:
    """An empty ``AutoTrackable``, the root object ``keras.export.ExportArchive`` saves.

    ``tf.__internal__.tracking.AutoTrackable`` is not public API: ``tf.Module`` would add
    attributes of its own to the saved object graph, which then differs from the graph
    ExportArchive writes; TensorFlow 2.18-2.21.
    """
    import tensorflow as tf

    return tf.__internal__.tracking.AutoTrackable()


@contextlib.contextmanager
def save_tracing(options: Any) -> Iterator[None]:
    """Trace tf.functions as ``tf.saved_model.save(..., options=options)`` looks them up.

    Private ``tensorflow.python.saved_model.save_context.save_context``: a function's trace
    cache key holds the save options' variable policy while ``tf.saved_model.save`` runs, so a
    function traced before the save is traced again by it. Traced inside this context, the
    save finds the trace and writes it as is: one trace per signature instead of two (the
    public API has no way to trace for a save); TensorFlow 2.18-2.21.
    """
    from tensorflow.python.saved_model import save_context

    with save_context.save_context(options):
        yield


# What Model.compile sets (public and private attributes); find_lr saves them before its
# learning-rate ramp and puts them back after it, so the user's compiled model is as before.
# Keras has no public "uncompile"; checked on 3.8-3.15.
_COMPILE_STATE = ("optimizer", "loss", "_compile_loss", "_compile_metrics", "_loss_tracker",
                  "compiled", "train_function", "test_function", "predict_function",
                  "_compile_config", "_compiled_trainable_state", "steps_per_execution",
                  "_jit_compile", "_run_eagerly", "stop_training")


def compile_state(model: keras.Model) -> dict[str, Any]:
    """The attributes ``Model.compile`` sets, as they are now (see ``_COMPILE_STATE``)."""
    return {name: model.__dict__[name] for name in _COMPILE_STATE if name in model.__dict__}


def restore_compile_state(model: keras.Model, state: dict[str, Any]) -> None:
    """Put back what :func:`compile_state` saved (and drop what a later compile added)."""
    for name in _COMPILE_STATE:
        if name in state:
            setattr(model, name, state[name])
        elif name in model.__dict__:
            delattr(model, name)
