"""``fine_tune``: train the head on the frozen backbone, then fine-tune the top blocks.

The classic recipe in one call: phase 1 trains the new head at a normal learning
rate; phase 2 unfreezes the top block(s) (:func:`tfx_transfer.unfreeze`) and goes
on at a much lower rate, the backbone still in inference mode. Both phases are one
``model.fit`` with :class:`tfx_transfer.StagedUnfreeze`; phase 1 can train on
backbone features computed once (``cache_features``).

Example (the recipe's defaults; :func:`fine_tune`'s example trains through both phases):
    >>> DEFAULT_HEAD_EPOCHS, DEFAULT_HEAD_LR  # phase 1: the head
    (10, 0.003)
    >>> DEFAULT_FINE_TUNE_EPOCHS, DEFAULT_FINE_TUNE_LR  # phase 2: the top block(s) too
    (10, 1e-05)
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import keras
import numpy as np

from tfx_transfer._compat import (
    clear_initial_epoch,
    distribute_strategy,
    has_seed_generators,
    raw_learning_rate,
)
from tfx_transfer.evaluation.multilabel import fit_thresholds, is_multi_label, multilabel_training
from tfx_transfer.models.freezing import Blocks, resolve_blocks
from tfx_transfer.models.parts import ModelParts, model_parts
from tfx_transfer.training.callbacks import (
    StagedBackupAndRestore,
    StagedUnfreeze,
    backup_epoch,
    current_learning_rate,
)
from tfx_transfer.training.optimizers import copy_optimizer, optimizer_learning_rate

# The defaults of fine_tune, train and the CLI, chosen by measurement: docs/accuracy.md.
DEFAULT_HEAD_EPOCHS = 10
DEFAULT_FINE_TUNE_EPOCHS = 10
DEFAULT_HEAD_LR = 3e-3
DEFAULT_FINE_TUNE_LR = 1e-5

_SAVING_CALLBACKS = (keras.callbacks.ModelCheckpoint, keras.callbacks.BackupAndRestore)


def _random_layers(parts: ModelParts) -> list[str]:
    """Names of active random layers in front of the backbone (they make features differ)."""
    front = parts.model.layers[: parts.model.layers.index(parts.backbone)]

    def walk(layer: keras.layers.Layer) -> Iterable[keras.layers.Layer]:
        yield layer
        for sub in getattr(layer, "layers", None) or getattr(layer, "_layers", []):
            yield from walk(sub)

    found = []
    for top in front:
        for layer in walk(top):
            is_random = getattr(layer, "is_random", None)
            if is_random is None:
                is_random = has_seed_generators(layer)
            if is_random:
                found.append(layer.name)
                break
    return found


def _resolve_cache(cache: Any, parts: ModelParts, train: Any, callbacks: Sequence,
                   head_epochs: int, fit_kwargs: Mapping) -> bool:
    reasons = []
    random_layers = _random_layers(parts)
    if random_layers:
        reasons.append(f"the model has random augmentation layer(s) {random_layers} in front "
                       "of the backbone")
    savers = [type(cb).__name__ for cb in callbacks if isinstance(cb, _SAVING_CALLBACKS)]
    if savers:
        reasons.append(f"callback(s) {savers} save the model, but with cached features phase 1 "
                       "trains the head model alone")
    if inspect.isgenerator(train):
        reasons.append("the training data is a Python generator (it can be read only once)")
    if fit_kwargs.get("steps_per_epoch"):
        reasons.append("steps_per_epoch is set (repeating data cannot be cached)")
    strategy = distribute_strategy(parts.model)  # set under a tf.distribute scope
    if strategy is not None:
        reasons.append(f"the model is distributed ({type(strategy).__name__}): predict() "
                       "gives per-replica, sharded features")
    if cache == "auto":
        return head_epochs > 0 and not reasons
    if cache is True and reasons:
        raise ValueError("cache_features=True is not possible: " + "; ".join(reasons)
                         + ". Use cache_features='auto' or False.")
    if cache not in (True, False):
        raise ValueError(f"cache_features={cache!r}: use 'auto', True or False.")
    return bool(cache) and head_epochs > 0


def _unpack(batch: Any) -> tuple[Any, Any, Any]:
    if isinstance(batch, (tuple, list)):
        return (tuple(batch) + (None, None))[:3]
    return batch, None, None


def _fit_data(data: Any) -> dict[str, Any]:
    """``model.fit`` keywords for ``data``: arrays tuple -> x/y/sample_weight, else x."""
    if isinstance(data, tuple) and not hasattr(data, "element_spec"):
        x, y, sw = _unpack(data)
        return {"x": x, "y": y, "sample_weight": sw}
    return {"x": data}


def _first_labels(data: Any) -> tuple[Any, Any]:
    """Labels of the first batch (or all labels for arrays), and ``data`` to use after peeking."""
    if isinstance(data, tuple) and not hasattr(data, "element_spec"):
        return data[1], data
    spec = getattr(data, "element_spec", None)
    if spec is not None:  # tf.data: shape only, nothing consumed
        label = spec[1] if isinstance(spec, (tuple, list)) and len(spec) > 1 else None
        if label is None:
            return None, data
        return np.zeros([d or 1 for d in label.shape], label.dtype.as_numpy_dtype), data
    if inspect.isgenerator(data):
        first = next(data)

        def chained():
            yield first
            yield from data

        return _unpack(first)[1], chained()
    if hasattr(data, "__getitem__"):  # keras.utils.PyDataset
        return _unpack(data[0])[1], data
    return None, data


def infer_loss(labels: Any, num_classes: int) -> str:
    """``"categorical_crossentropy"`` for one-hot labels, else ``"sparse_categorical_crossentropy"``.

    Example:
        >>> infer_loss(np.array([0, 1, 1]), 2), infer_loss(np.eye(3)[[0, 2]], 3)
        ('sparse_categorical_crossentropy', 'categorical_crossentropy')
    """
    labels = np.asarray(keras.ops.convert_to_numpy(labels))
    if labels.ndim >= 2 and labels.shape[-1] == num_classes > 1:
        return "categorical_crossentropy"
    return "sparse_categorical_crossentropy"


def _feature_extractor(parts: ModelParts) -> keras.Model:
    """``pixels -> [augmentation] -> preprocess -> backbone``: the head's input, as a model."""
    return keras.Model(parts.model.inputs, parts.backbone.output, name="feature_extractor")


def _extract(extractor: keras.Model, data: Any, batch_size: int | None, verbose: int):
    """Run the extractor once over ``data``; return (features, labels, sample_weight, batch size)."""
    if isinstance(data, tuple) and not hasattr(data, "element_spec"):
        x, y, sw = _unpack(data)
        features = extractor.predict(x, batch_size=batch_size or 32, verbose=verbose)
        return features, np.asarray(y), None if sw is None else np.asarray(sw), batch_size or 32
    cardinality = getattr(data, "cardinality", None)
    if cardinality is not None and int(cardinality()) < 0:
        raise ValueError("The dataset repeats forever (or its size is unknown), so its features "
                         "cannot be cached: use a finite dataset or cache_features=False.")
    if hasattr(data, "__getitem__") and not hasattr(data, "element_spec"):
        size = getattr(data, "num_batches", None) or len(data)
        batches = (data[i] for i in range(size))
    elif hasattr(data, "as_numpy_iterator"):  # tf.data: numpy batches feed any backend
        batches = data.as_numpy_iterator()
    else:
        batches = iter(data)
    feats, ys, sws, first = [], [], [], None
    for batch in batches:
        x, y, sw = _unpack(batch)
        first = first or len(x)
        feats.append(keras.ops.convert_to_numpy(extractor.predict_on_batch(np.asarray(x))))
        ys.append(np.asarray(y))
        if sw is not None:
            sws.append(np.asarray(sw))
    if not feats:
        raise ValueError("The data yielded no batches; nothing to train on.")
    return (np.concatenate(feats), np.concatenate(ys),
            np.concatenate(sws) if sws else None, batch_size or first)


def _copy_metric(metric: Any) -> Any:
    """A metric object has state: the head model gets its own copy (names and functions as is)."""
    if isinstance(metric, keras.metrics.Metric):
        return type(metric).from_config(metric.get_config())
    return metric


def _merge_histories(first: keras.callbacks.History, second: keras.callbacks.History,
                     model: keras.Model) -> keras.callbacks.History:
    merged = keras.callbacks.History()
    merged.set_model(model)
    merged.epoch = list(getattr(first, "epoch", [])) + list(getattr(second, "epoch", []))
    for part in (first, second):
        for key, values in getattr(part, "history", {}).items():
            merged.history.setdefault(key, []).extend(values)
    merged.params = {**(first.params or {}), **(second.params or {})}
    model.history = merged
    return merged


def fine_tune(
    model: keras.Model,
    train: Any,
    validation: Any = None,
    *,
    head_epochs: int = DEFAULT_HEAD_EPOCHS,
    fine_tune_epochs: int = DEFAULT_FINE_TUNE_EPOCHS,
    blocks: Blocks = "default",
    head_lr: float | None = None,
    fine_tune_lr: float | None = DEFAULT_FINE_TUNE_LR,
    optimizer: Any = "adam",
    loss: Any = None,
    metrics: Sequence[Any] = ("accuracy",),
    callbacks: Sequence[keras.callbacks.Callback] | None = None,
    cache_features: bool | str = "auto",
    backup_dir: str | os.PathLike | None = None,
    class_weight: Mapping[int, float] | None = None,
    train_bn: bool = False,
    gradual: int | None = None,
    discriminative: float | None = None,
    verbose: Any = "auto",
    batch_size: int | None = None,
    **fit_kwargs: Any,
) -> keras.callbacks.History:
    """Train the head on the frozen backbone, then fine-tune the top blocks: one call.

    Phase 1 (``head_epochs``) trains the head at ``head_lr``; phase 2
    (``fine_tune_epochs``) unfreezes ``blocks`` (any :func:`unfreeze` form) and
    continues at ``fine_tune_lr`` with a fresh optimizer, BatchNorm frozen. Both
    phases are one ``model.fit`` with :class:`StagedUnfreeze`, so
    ``EarlyStopping``, ``ModelCheckpoint`` and ``ReduceLROnPlateau`` in
    ``callbacks`` see one run of ``head_epochs + fine_tune_epochs`` epochs: an
    ``EarlyStopping`` that fires in phase 1 ends the run, one with
    ``start_from_epoch=head_epochs`` watches phase 2 only.

    Cached features (``cache_features``): when nothing random runs in front of the
    backbone, phase 1 runs the backbone once over ``train``/``validation`` and
    trains the head on the cached features (same weights as the plain way, far
    faster; the features are held in memory). ``"auto"`` caches unless the model
    has an active random augmentation layer or a callback saves the model
    (``ModelCheckpoint``; in phase 1 callbacks see the head model, and see phase 1
    and phase 2 as two ``fit`` runs; a ``CSVLogger`` is switched to append for
    phase 2). Augmentation mapped over a ``tf.data`` dataset cannot be detected:
    pass ``cache_features=False`` then.

    Args:
        model: a :func:`tfx_transfer.build_transfer_model` model (compiled here).
        train, validation: what ``model.fit`` takes: a ``tf.data`` dataset of
            ``(images, labels)``, a ``keras.utils.PyDataset``, a generator, or an
            ``(x, y)`` / ``(x, y, sample_weight)`` tuple of arrays.
        head_lr: learning rate of phase 1; default: the rate of ``optimizer`` when it
            is an instance, else 3e-3. Giving both an optimizer instance and a
            different ``head_lr`` is an error (which one did you mean?).
        fine_tune_lr: learning rate of phase 2 (``None``: keep phase 1's last rate).
        optimizer: name or instance; copied for each phase.
        loss: default: sparse categorical cross-entropy for integer labels,
            categorical for one-hot labels (read from the first batch); binary
            cross-entropy for a multi-label model, whose ``"accuracy"`` is per label
            and whose thresholds are then chosen on ``validation`` (:func:`tfx_transfer.fit_thresholds`).
        backup_dir: resume an interrupted run (:class:`StagedBackupAndRestore`):
            re-running the same call continues in the right phase, layers, learning
            rate and optimizer state. Do not also pass a ``BackupAndRestore``.
        gradual: unfreeze one more block every ``gradual`` epochs (top down through
            ``blocks`` when it is a list of blocks, else through all blocks).
        discriminative: per-block learning-rate factor for phase 2 (e.g. 2.6).
        batch_size: for array data.
        **fit_kwargs: passed to every ``fit`` (e.g. ``shuffle``, ``steps_per_epoch``);
            ``validation_data=`` is taken as ``validation``.

    Returns:
        One ``History`` for epochs ``0 .. head_epochs + fine_tune_epochs - 1`` with
        ``"stage"`` (0 in phase 1) and ``"learning_rate"`` per epoch.

    Example:
        >>> import numpy as np, tfx_transfer as tt
        >>> model = tt.build_transfer_model("vgg16", 2, input_shape=(32, 32, 3),
        ...                                 weights=None, head="avg")
        >>> x = np.random.randint(0, 255, (8, 32, 32, 3), "uint8"); y = np.arange(8) % 2
        >>> h = tt.fine_tune(model, (x, y), head_epochs=1, fine_tune_epochs=1,
        ...                  blocks="block5", verbose=0)  # VGG16's default blocks
        >>> h.history["stage"]  # phase 1 (head), then phase 2 (block5 + head)
        [0, 1]
    """
    callbacks = list(callbacks or [])
    if backup_dir is not None and any(isinstance(cb, keras.callbacks.BackupAndRestore) for cb in callbacks):
        raise ValueError("Pass either backup_dir= or a BackupAndRestore callback, not both.")
    plain_backups = [cb for cb in callbacks if type(cb) is keras.callbacks.BackupAndRestore]
    if plain_backups:
        raise ValueError(
            f"callbacks has a keras BackupAndRestore({plain_backups[0].backup_dir!r}): pass "
            f"backup_dir={plain_backups[0].backup_dir!r} instead, so a resumed run also restores "
            "the phase-2 optimizer (fine_tune uses StagedBackupAndRestore)."
        )
    if "validation_data" in fit_kwargs:  # model.fit's name for ``validation``
        if validation is not None:
            raise ValueError("validation and validation_data are both given: pass it once.")
        validation = fit_kwargs.pop("validation_data")
    for name, value in (("head_epochs", head_epochs), ("fine_tune_epochs", fine_tune_epochs)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name}={value!r} must be an int >= 0.")
    parts = model_parts(model)
    _ = parts.backbone  # fails early on a model that is not a transfer model
    total = head_epochs + fine_tune_epochs

    loss, metrics = multilabel_training(model, loss, metrics)  # multi-label: BCE, per-label accuracy
    if loss is None:
        labels, train = _first_labels(train)
        if labels is None:
            raise ValueError("Cannot read labels from the training data to choose the loss; "
                             "pass loss='sparse_categorical_crossentropy' (integer labels) or "
                             "'categorical_crossentropy' (one-hot).")
        loss = infer_loss(labels, int(model.output.shape[-1]))
    head_lr = _head_lr(optimizer, head_lr)
    model.compile(optimizer=copy_optimizer(optimizer, head_lr), loss=loss, metrics=list(metrics))

    if gradual:
        order = list(blocks) if isinstance(blocks, (list, tuple)) else None
        stage = StagedUnfreeze.gradual(head_epochs, every=gradual, blocks=order,
                                       learning_rate=fine_tune_lr, train_bn=train_bn,
                                       discriminative=discriminative, verbose=int(verbose != 0))
    else:
        stage = StagedUnfreeze({head_epochs: blocks},
                               None if fine_tune_lr is None else {head_epochs: fine_tune_lr},
                               train_bn=train_bn, discriminative=discriminative,
                               verbose=int(verbose != 0))
    resolve_blocks(model, blocks)  # a bad block name fails now, not after phase 1
    backup = [] if backup_dir is None else [StagedBackupAndRestore(backup_dir, stage)]
    fit = dict(validation_data=validation, class_weight=class_weight, verbose=verbose,
               batch_size=batch_size, **fit_kwargs)
    cache = _resolve_cache(cache_features, parts, train, callbacks, head_epochs, fit_kwargs)
    try:
        history = model.fit(**_fit_data(train), epochs=total, callbacks=[stage, *callbacks, *backup],
                            **fit) if not cache else _fine_tune_cached(
            parts, train, validation, stage, callbacks, backup, head_epochs, total, loss, metrics, fit)
    finally:
        clear_initial_epoch(model)  # set by BackupAndRestore; would leak into a later fit
    if is_multi_label(model) and validation is not None:
        fit_thresholds(model, validation)  # per-label thresholds chosen for validation F1
    return history


def _head_lr(optimizer: Any, head_lr: float | None) -> float | None:
    """Phase 1's rate: ``head_lr``, or the given optimizer instance's own (never both)."""
    if not isinstance(optimizer, keras.optimizers.Optimizer):
        return DEFAULT_HEAD_LR if head_lr is None else float(head_lr)
    own = optimizer_learning_rate(optimizer)
    if head_lr is None or own is None:
        return head_lr  # None: copy_optimizer keeps the instance's rate or schedule
    if not np.isclose(own, float(head_lr)):
        raise ValueError(
            f"optimizer={type(optimizer).__name__}(learning_rate={own:g}) and head_lr={head_lr:g} "
            "disagree: leave head_lr=None to use the optimizer's rate, or pass the optimizer by "
            "name (e.g. 'adam') with head_lr."
        )
    return float(head_lr)


def _fine_tune_cached(parts, train, validation, stage, callbacks, backup, head_epochs, total,
                      loss, metrics, fit) -> keras.callbacks.History:
    model = parts.model
    first = keras.callbacks.History()
    first.set_model(model)
    resumed = backup and backup_epoch(backup[0].backup_dir) is not None
    if not resumed:  # a backup holds later weights: phase 2 restores it
        first = _train_head_on_features(parts, train, validation, callbacks, head_epochs,
                                        loss, metrics, fit)
        optimizer = model.optimizer
        if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
            optimizer = optimizer.inner_optimizer
        if isinstance(raw_learning_rate(optimizer), keras.Variable):  # not a schedule
            # as in the plain run, phase 2 starts from phase 1's last rate (e.g. ReduceLROnPlateau)
            model.optimizer.learning_rate = current_learning_rate(first.model)
    if total == head_epochs or first.model.stop_training:  # e.g. EarlyStopping fired in phase 1
        return _merge_histories(first, keras.callbacks.History(), model)
    csv = [cb for cb in callbacks if isinstance(cb, keras.callbacks.CSVLogger) and not cb.append]
    for cb in csv:
        cb.append = True  # phase 2 continues phase 1's file
    try:
        second = model.fit(**_fit_data(train), initial_epoch=head_epochs, epochs=total,
                           callbacks=[stage, *callbacks, *backup], **fit)
    finally:
        for cb in csv:
            cb.append = False
    return _merge_histories(first, second, model)


def _train_head_on_features(parts, train, validation, callbacks, head_epochs, loss,
                            metrics, fit) -> keras.callbacks.History:
    verbose = 0 if fit["verbose"] == 0 else 1
    extractor = _feature_extractor(parts)
    if verbose:
        print("fine_tune: computing backbone features once for the head-only phase")
    features, labels, weights, batch_size = _extract(extractor, train, fit["batch_size"], verbose)
    head = parts.head
    head_model = keras.Model(head.inputs, head.outputs, name="head")  # same layers, same weights
    head_model.compile(optimizer=copy_optimizer(parts.model.optimizer), loss=loss,
                       metrics=[_copy_metric(m) for m in metrics])
    kwargs = {k: v for k, v in fit.items() if k not in ("validation_data", "batch_size")}
    if validation is not None:
        vf, vy, vw, _ = _extract(extractor, validation, batch_size, verbose)
        kwargs["validation_data"] = (vf, vy) if vw is None else (vf, vy, vw)
    return head_model.fit(features, labels, sample_weight=weights, batch_size=batch_size,
                          epochs=head_epochs, callbacks=[_HeadPhaseLog(), *callbacks], **kwargs)


class _HeadPhaseLog(keras.callbacks.Callback):
    """The epoch logs of the cached head phase get ``stage`` 0 and ``learning_rate``, as in phase 2."""

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if logs is not None:
            logs["stage"] = 0
            logs["learning_rate"] = current_learning_rate(self.model)
