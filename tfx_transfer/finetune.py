"""Two-phase fine-tuning that really trains: ``unfreeze``, ``StagedUnfreeze``, ``fine_tune``.

The classic recipe: train the new head on a frozen backbone at a normal learning
rate, then unfreeze the top block(s) and go on at a much lower rate, BatchNorm kept
frozen. :func:`fine_tune` does both phases in one call;
:class:`StagedUnfreeze` is the callback that switches phases *inside* one
``model.fit`` call.

Why a callback that only sets ``layer.trainable = True`` is not enough: the
compiled train step and the optimizer captured the trainable variables when
``fit`` started, so on TensorFlow the "unfrozen" weights stay bit-identical
(silently) and on JAX ``fit`` crashes with a shape mismatch at the next epoch.
At each stage :class:`StagedUnfreeze` therefore (1) under JAX syncs the in-flight
state back into the variables, (2) sets the trainable flags, (3) gives the model a
fresh optimizer of the same configuration at the stage's learning rate, built on
the new trainable variables (exactly what recompiling does in the two-``compile``
recipe) and (4) rebuilds the train function.

BatchNormalization: the BatchNormalization layers of unfrozen blocks stay frozen
unless ``train_bn=True``, and Keras 3 runs a frozen BatchNormalization in inference
mode, so its moving mean/variance never change. With ``train_bn=True`` they train
*in training mode* (batch statistics; moving statistics updated): Keras 3.15's
functional model passes ``fit``'s ``training=True`` down to the nested backbone
although the model calls it with ``training=False``.

Example:
    >>> import tfx_transfer as tt
    >>> model = tt.build_transfer_model("vgg16", 5, weights="imagenet")  # doctest: +SKIP
    >>> history = tt.fine_tune(model, train_ds, val_ds, head_epochs=5,
    ...                        fine_tune_epochs=10, blocks="block5")  # doctest: +SKIP
    >>> history.history["stage"]  # doctest: +SKIP
    [0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]
"""

from __future__ import annotations

import inspect
import json
import os
import re
from typing import Any, Iterable, Mapping, Sequence

import keras
import numpy as np

from tfx_transfer._compat import (clear_initial_epoch, distribute_strategy, has_seed_generators,
                                  raw_learning_rate, record_optimizer)
from tfx_transfer.backbones import backbone_blocks, get_backbone
from tfx_transfer.model import backbone_name, get_backbone_layer, get_backbone_model, get_head

Blocks = Any  # str | Sequence[str] | int : see unfreeze()
DEFAULT_HEAD_LR = 1e-3

# ---------------------------------------------------------------------------
# unfreeze
# ---------------------------------------------------------------------------


def _blocks_of(model: keras.Model) -> tuple[keras.Model, dict[str, list[keras.layers.Layer]]]:
    base = get_backbone_model(model)
    return base, backbone_blocks(backbone_name(model), base)


def _default_blocks(model: keras.Model, blocks: Mapping[str, list]) -> list[str]:
    chosen = [b for b in get_backbone(backbone_name(model)).default_unfreeze if b in blocks]
    return chosen or [list(blocks)[-1]]


def resolve_blocks(model: keras.Model, blocks: Blocks) -> list[keras.layers.Layer]:
    """The backbone layers that ``blocks`` names (see :func:`unfreeze` for the forms).

    Example:
        >>> [layer.name for layer in resolve_blocks(model, "block5")][:2]  # doctest: +SKIP
        ['block5_conv1', 'block5_conv2']
    """
    base, named = _blocks_of(model)
    if isinstance(blocks, bool):
        raise ValueError(f"blocks={blocks!r}: use a block name, a list of names, 'all', "
                         "'default' or an int (top N layers).")
    if isinstance(blocks, (int, np.integer)):
        with_weights = [layer for layer in base.layers if layer.weights]
        if not 0 < blocks <= len(with_weights):
            raise ValueError(
                f"blocks={blocks}: the top-N form needs 1 <= N <= {len(with_weights)} (the "
                f"number of layers with weights in backbone {base.name!r})."
            )
        start = base.layers.index(with_weights[-int(blocks)])
        return [layer for layer in base.layers[start:] if type(layer).__name__ != "InputLayer"]
    if isinstance(blocks, str):
        if blocks == "all":
            return [layer for block in named.values() for layer in block]
        names = _default_blocks(model, named) if blocks == "default" else [blocks]
    else:
        names = list(blocks)
    unknown = [n for n in names if n not in named]
    if unknown:
        raise ValueError(
            f"Unknown block(s) {unknown} for backbone {base.name!r}. Valid blocks (bottom to "
            f"top): {list(named)}; or 'all', 'default', or an int N for the top N layers."
        )
    return [layer for name in names for layer in named[name]]


def unfreeze(model: keras.Model, blocks: Blocks = "default", train_bn: bool = False) -> list[str]:
    """Make backbone blocks trainable (adding to what is already unfrozen).

    ``blocks`` is a registry block name (``"block5"`` for VGG, ``"conv5"`` for
    ResNet), a list of them, ``"all"``, ``"default"`` (the backbone's default
    blocks, see :class:`tfx_transfer.BackboneSpec`) or an int N: the top N layers
    of the backbone that have weights. BatchNormalization layers stay frozen, and
    so in inference mode, unless ``train_bn=True``. The head is not touched.
    The backbone keeps running in inference mode (Dropout, drop-connect and
    BatchNorm as at prediction time) unless ``train_bn=True``, which trains the
    BatchNormalization layers of the chosen blocks and runs the whole backbone in
    training mode. Takes effect at the next ``compile`` or, inside ``fit``, through
    :class:`StagedUnfreeze`.

    Returns:
        Names of the backbone layers that are trainable after the call.

    Raises:
        ValueError: an unknown block name (the message lists the valid ones).

    Example:
        >>> import tfx_transfer as tt
        >>> model = tt.build_transfer_model("vgg16", 2, input_shape=(32, 32, 3),
        ...                                 weights=None, head="avg")
        >>> tt.unfreeze(model, "block5")
        ['block5_conv1', 'block5_conv2', 'block5_conv3', 'block5_pool']
    """
    wrapper = get_backbone_layer(model)
    base = wrapper.model
    chosen = {id(layer) for layer in resolve_blocks(model, blocks)}
    was = {id(layer) for layer in base.layers if base.trainable and layer.trainable}
    # The container's setter recurses; then every sub-layer is set explicitly.
    base.trainable = True
    for layer in base.layers:
        is_bn = isinstance(layer, keras.layers.BatchNormalization)
        wanted = id(layer) in chosen and (train_bn or not is_bn)
        layer.trainable = wanted or id(layer) in was
    trainable = [layer.name for layer in base.layers
                 if layer.trainable and type(layer).__name__ != "InputLayer"]
    if not trainable:
        base.trainable = False
    if train_bn:
        wrapper.inference_mode = False
    return trainable


# ---------------------------------------------------------------------------
# Optimizers: a fresh copy at a learning rate; per-block learning rates.
# ---------------------------------------------------------------------------


def _set_config_lr(config: dict, learning_rate: float) -> None:
    """Set the learning rate of the innermost optimizer in a serialized optimizer."""
    inner = config["config"]
    if "learning_rate" in inner:
        inner["learning_rate"] = float(learning_rate)
        return
    for value in inner.values():
        if isinstance(value, dict) and "class_name" in value:
            _set_config_lr(value, learning_rate)
            return
    raise ValueError(f"Cannot set the learning rate of optimizer {config['class_name']!r}.")


def copy_optimizer(optimizer: Any, learning_rate: float | None = None) -> keras.optimizers.Optimizer:
    """A fresh, unbuilt optimizer with ``optimizer``'s configuration.

    ``optimizer`` is a name (``"adam"``) or an instance (its current learning
    rate is kept unless ``learning_rate`` is given). Wrappers such as
    ``LossScaleOptimizer`` are copied with their inner optimizer.

    Example:
        >>> opt = copy_optimizer("adam", learning_rate=1e-5)
        >>> type(opt).__name__, round(float(opt.learning_rate), 8)
        ('Adam', 1e-05)
    """
    optimizer = keras.optimizers.get(optimizer)
    config = keras.optimizers.serialize(optimizer)
    if learning_rate is not None:
        _set_config_lr(config, learning_rate)
    return keras.optimizers.deserialize(config)


def optimizer_learning_rate(optimizer: Any) -> float | None:
    """The constant learning rate of an optimizer instance (``None`` for a schedule).

    Example:
        >>> optimizer_learning_rate(keras.optimizers.SGD(0.01))
        0.01
    """
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        optimizer = optimizer.inner_optimizer
    value = keras.optimizers.serialize(optimizer)["config"].get("learning_rate")
    if not isinstance(value, (int, float)):
        return None
    return float(np.format_float_positional(np.float32(value)))  # 0.01, not 0.0099999998


@keras.saving.register_keras_serializable(package="tfx_transfer")
class DiscriminativeOptimizer(keras.optimizers.Optimizer):
    """Per-layer learning rates: one copy of ``optimizer`` per learning-rate group.

    Keras 3 optimizers have one learning rate. This wrapper holds one inner copy of
    ``optimizer`` per distinct multiplier and sends each variable's gradient to its
    group's copy, whose learning rate is ``multiplier * self.learning_rate`` (a
    callable, so ``ReduceLROnPlateau`` or a schedule on the wrapper moves every
    group). ``multipliers`` maps a regex, searched in ``variable.path``, to a
    multiplier; the first match wins; unmatched variables get 1.0. Gradient
    clipping by norm applies per group.

    Example:
        >>> opt = DiscriminativeOptimizer(keras.optimizers.Adam(1e-4),
        ...                               {r"(^|/)block5_": 1 / 2.6, r"(^|/)block4_": 1 / 2.6**2})
        >>> model.compile(opt, "sparse_categorical_crossentropy")  # doctest: +SKIP
    """

    def __init__(self, optimizer: Any, multipliers: Mapping[str, float], name: str | None = None,
                 **kwargs: Any):
        if kwargs:
            raise ValueError(f"DiscriminativeOptimizer takes no {sorted(kwargs)}; set them on "
                             "the wrapped optimizer.")
        template = keras.optimizers.get(optimizer)
        if not isinstance(template, keras.optimizers.Optimizer) or isinstance(
                template, (DiscriminativeOptimizer, keras.optimizers.LossScaleOptimizer)):
            raise ValueError(f"optimizer={optimizer!r}: wrap a plain Keras optimizer (the "
                             "LossScaleOptimizer goes outside: LossScaleOptimizer(DiscriminativeOptimizer(...))).")
        learning_rate = raw_learning_rate(template)  # float variable, schedule or callable
        if isinstance(learning_rate, keras.Variable):
            learning_rate = float(keras.ops.convert_to_numpy(learning_rate))
        super().__init__(learning_rate=learning_rate, name=name or "discriminative",
                         loss_scale_factor=template.loss_scale_factor)
        self.optimizer_config = keras.optimizers.serialize(template)
        self.multipliers = {str(k): float(v) for k, v in multipliers.items()}
        self._patterns = [(re.compile(k), v) for k, v in self.multipliers.items()]
        self._groups: list[tuple[float, keras.optimizers.Optimizer]] = []
        self._group_of: list[int] = []

    def multiplier(self, variable: Any) -> float:
        """The learning-rate multiplier of ``variable`` (by its path).

        Example:
            >>> opt.multiplier(model.get_layer("head").weights[0])  # doctest: +SKIP
            1.0
        """
        path = getattr(variable, "path", "") or ""
        for pattern, value in self._patterns:
            if pattern.search(path):
                return value
        return 1.0

    def build(self, variables: Sequence[Any]) -> None:
        super().build(variables)
        factors = [self.multiplier(v) for v in variables]
        distinct = sorted(set(factors), reverse=True)
        self._groups, self._group_of = [], [distinct.index(f) for f in factors]
        for g, factor in enumerate(distinct):
            config = json.loads(json.dumps(self.optimizer_config))
            config["config"]["name"] = f"{self.name}_group{g}"
            inner = keras.optimizers.deserialize(config)
            inner.learning_rate = self._scaled_lr(factor)  # a callable: follows self.learning_rate
            inner.build([v for v, i in zip(variables, self._group_of) if i == g])
            self._groups.append((factor, inner))

    def _scaled_lr(self, factor: float):
        return lambda: keras.ops.multiply(self._get_current_learning_rate(), factor)

    @property
    def variables(self) -> list[Any]:
        return self._variables + [v for _, inner in self._groups for v in inner.variables]

    def apply(self, grads: Sequence[Any], trainable_variables: Sequence[Any] | None = None) -> None:
        if not self.built:
            with keras.name_scope(self.name, caller=self):
                self.build(list(trainable_variables))
        variables = list(trainable_variables) if trainable_variables is not None \
            else self._trainable_variables
        per_group: list[tuple[list, list]] = [([], []) for _ in self._groups]
        for grad, var in zip(grads, variables):
            g = self._group_of[self._get_variable_index(var)]
            per_group[g][0].append(grad)
            per_group[g][1].append(var)
        for (_, inner), (group_grads, group_vars) in zip(self._groups, per_group):
            if group_vars:
                inner.apply(group_grads, group_vars)
        self._iterations.assign_add(1)

    def finalize_variable_values(self, var_list: Sequence[Any]) -> None:
        for g, (_, inner) in enumerate(self._groups):
            inner.finalize_variable_values(
                [v for v in var_list if self._group_of[self._get_variable_index(v)] == g])

    def get_config(self) -> dict:
        config = json.loads(json.dumps(self.optimizer_config))
        current = raw_learning_rate(self)
        if isinstance(current, keras.Variable):  # the current value, e.g. after ReduceLROnPlateau
            config["config"]["learning_rate"] = float(keras.ops.convert_to_numpy(current))
        return {"name": self.name, "optimizer": config, "multipliers": dict(self.multipliers)}

    @classmethod
    def from_config(cls, config: dict, custom_objects: Any = None) -> "DiscriminativeOptimizer":
        config = dict(config)
        optimizer = keras.optimizers.deserialize(config.pop("optimizer"), custom_objects=custom_objects)
        return cls(optimizer, **config)


def discriminative_multipliers(model: keras.Model, factor: float) -> dict[str, float]:
    """Learning-rate multipliers, fastai style: each block down gets ``1/factor`` more.

    The head (and anything outside the backbone) gets 1, the backbone's top block
    ``1/factor``, the next ``1/factor**2``, and so on.

    Example:
        >>> mult = discriminative_multipliers(model, 2.6)  # doctest: +SKIP
        >>> mult[r"(^|/)block5_conv1/"], mult[r"(^|/)block4_conv1/"]  # doctest: +SKIP
        (0.3846..., 0.1479...)
    """
    if not factor or factor < 1:
        raise ValueError(f"discriminative={factor!r}: the per-block factor must be >= 1 "
                         "(e.g. 2.6: each block down trains 2.6x slower).")
    _, named = _blocks_of(model)
    out: dict[str, float] = {}
    for depth, block in enumerate(reversed(list(named.values())), start=1):
        for layer in block:
            if layer.weights:
                out[rf"(^|/){re.escape(layer.name)}/"] = float(factor) ** -depth
    return out


# ---------------------------------------------------------------------------
# StagedUnfreeze
# ---------------------------------------------------------------------------


def _blocks_label(blocks: Blocks) -> str:
    if isinstance(blocks, (int, np.integer)) and not isinstance(blocks, bool):
        return f"top {blocks} layers"
    return blocks if isinstance(blocks, str) else "+".join(blocks)


class StagedUnfreeze(keras.callbacks.Callback):
    """Unfreeze backbone blocks on a schedule, inside one ``model.fit`` call.

    Args:
        schedule: ``{epoch: blocks}``; at the start of ``epoch`` (0-based) the
            blocks (any :func:`unfreeze` form) become trainable, adding to earlier
            stages. A stage at epoch 0 applies before training.
        learning_rates: ``{epoch: lr}`` (or one float for every stage); a stage
            without one keeps the current learning rate.
        train_bn: also train BatchNormalization layers (Keras 3 then runs them in
            training mode: batch statistics, moving statistics updated).
        discriminative: optional factor (e.g. 2.6): each block further down gets a
            learning rate ``factor`` times smaller (:class:`DiscriminativeOptimizer`);
            the stage's rate is the head's.
        verbose: print each stage change.

    At each stage the model gets a fresh optimizer of the same configuration, built
    on the new trainable variables (as a recompile would), and a rebuilt train
    function. The epoch logs (``History``, ``CSVLogger``) get ``"stage"`` (number of
    stages applied) and ``"learning_rate"``. Resuming (``initial_epoch`` or
    ``BackupAndRestore``) applies every stage due by the first epoch at once; use
    :class:`StagedBackupAndRestore` to restore the phase-2 optimizer state too.

    Example:
        >>> stage = StagedUnfreeze({3: "block5", 6: ["block4"]},
        ...                        learning_rates={3: 1e-5, 6: 5e-6})
        >>> model.fit(train_ds, epochs=10, callbacks=[stage])  # doctest: +SKIP
    """

    def __init__(self, schedule: Mapping[int, Blocks], learning_rates: Mapping[int, float] | float | None = None,
                 train_bn: bool = False, discriminative: float | None = None, verbose: int = 1):
        super().__init__()
        self.schedule = self._check_schedule(schedule)
        if learning_rates is None:
            learning_rates = {}
        elif not isinstance(learning_rates, Mapping):
            learning_rates = {epoch: float(learning_rates) for epoch in self.schedule}
        extra = sorted(set(learning_rates) - set(self.schedule))
        if extra:
            raise ValueError(f"learning_rates has epochs {extra} that are not in the schedule "
                             f"{sorted(self.schedule)}; give a rate only for a scheduled stage.")
        self.learning_rates = {int(k): float(v) for k, v in learning_rates.items()}
        self.train_bn = train_bn
        self.discriminative = discriminative
        self.verbose = verbose
        self.applied: list[int] = []
        self._gradual: dict[str, Any] | None = None
        self._model_id: int | None = None

    @staticmethod
    def _check_schedule(schedule: Mapping[int, Blocks]) -> dict[int, Blocks]:
        if not isinstance(schedule, Mapping):
            raise ValueError(f"schedule={schedule!r} must be a dict {{epoch: blocks}}, "
                             "e.g. {3: 'block5', 6: ['block4']}.")
        out = {}
        for epoch, blocks in schedule.items():
            if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)) or epoch < 0:
                raise ValueError(f"schedule epoch {epoch!r} must be an int >= 0 (0-based epoch).")
            out[int(epoch)] = blocks if isinstance(blocks, (str, int)) else list(blocks)
        return dict(sorted(out.items()))

    @classmethod
    def gradual(cls, start_epoch: int, every: int = 1, blocks: Sequence[str] | None = None,
                learning_rate: float | None = None, lr_decay: float = 1.0,
                **kwargs: Any) -> "StagedUnfreeze":
        """Gradual unfreezing: one more block every ``every`` epochs from ``start_epoch``.

        ``blocks`` are taken in the order given (default: every block of the
        backbone, top down, read from the registry when training starts). Stage
        ``i`` gets ``learning_rate * lr_decay**i`` when a rate is given.

        Example:
            >>> stage = StagedUnfreeze.gradual(5, every=2, learning_rate=1e-5)
            >>> model.fit(train_ds, epochs=15, callbacks=[stage])  # doctest: +SKIP
        """
        if every < 1:
            raise ValueError(f"every={every!r} must be an int >= 1.")
        stage = cls({}, **kwargs)
        stage._gradual = dict(start=int(start_epoch), every=int(every),
                              learning_rate=learning_rate, lr_decay=float(lr_decay))
        if blocks is not None:
            stage._resolve_gradual(list(blocks))
        return stage

    def _resolve_gradual(self, blocks: list[str]) -> None:
        g = self._gradual
        self.schedule = {g["start"] + i * g["every"]: block for i, block in enumerate(blocks)}
        if g["learning_rate"] is not None:
            self.learning_rates = {epoch: g["learning_rate"] * g["lr_decay"] ** i
                                   for i, epoch in enumerate(self.schedule)}
        self._gradual = None

    def set_model(self, model: keras.Model) -> None:
        super().set_model(model)
        if id(model) != self._model_id:  # a different model: nothing applied to it yet
            self._model_id, self.applied = id(model), []

    @property
    def stage(self) -> int:
        """Number of stages applied so far (0: nothing unfrozen yet)."""
        return len(self.applied)

    def _is_transfer_model(self) -> bool:
        try:
            get_backbone_model(self.model)
        except ValueError:
            return False
        return True

    def on_train_begin(self, logs: dict | None = None) -> None:
        if not self._is_transfer_model():
            raise ValueError(
                f"StagedUnfreeze cannot find the backbone of model {self.model.name!r}: it needs "
                "a model made by build_transfer_model() (or loaded with tfx_transfer.load_model), "
                "with its Backbone layer."
            )
        if self._gradual is not None:
            _, named = _blocks_of(self.model)
            self._resolve_gradual(list(reversed(list(named))))
        for blocks in self.schedule.values():  # fail before training on a bad block name
            resolve_blocks(self.model, blocks)

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.apply_through(epoch)

    def apply_through(self, epoch: int) -> bool:
        """Apply every stage scheduled at or before ``epoch`` that is not applied yet.

        Returns whether anything changed. Safe to call between epochs.

        Example:
            >>> stage.apply_through(3)  # doctest: +SKIP
            True
        """
        due = [e for e in self.schedule if e <= epoch and e not in self.applied]
        if not due:
            return False
        model = self.model
        if getattr(model, "jax_state_sync", None) is not None:
            model.jax_state_sync()  # the in-flight JAX state back into the variables
        done = self.applied + due
        for e in done:
            unfreeze(model, self.schedule[e], train_bn=self.train_bn)
        rates = [self.learning_rates[e] for e in due if e in self.learning_rates]
        learning_rate = rates[-1] if rates else None
        _replace_optimizer(model, learning_rate, self.discriminative)
        self.applied = done
        if self.verbose:
            base = get_backbone_model(model)
            blocks = ", ".join(_blocks_label(self.schedule[e]) for e in due)
            print(f"\nStagedUnfreeze: epoch {epoch + 1}: stage {self.stage}: unfroze {blocks}; "
                  f"{len(base.trainable_weights)} backbone weights trainable; learning rate "
                  f"{_current_lr(model):.3g}")
        return True

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if logs is not None:
            logs["stage"] = self.stage
            logs["learning_rate"] = _current_lr(self.model)


def _current_lr(model: keras.Model) -> float:
    return float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))


def _replace_optimizer(model: keras.Model, learning_rate: float | None,
                       discriminative: float | None) -> None:
    """A fresh optimizer like the model's, at ``learning_rate``, built on its trainable variables."""
    current = model.optimizer
    if current is None:
        raise ValueError("StagedUnfreeze needs a compiled model: call model.compile(...) before fit.")
    wrapper = None
    if isinstance(current, keras.optimizers.LossScaleOptimizer):
        wrapper, current = current, current.inner_optimizer
    if isinstance(current, DiscriminativeOptimizer):
        current = keras.optimizers.deserialize(current.get_config()["optimizer"])
    new = copy_optimizer(current, learning_rate)
    if discriminative:
        new = DiscriminativeOptimizer(new, discriminative_multipliers(model, discriminative))
    if wrapper is not None:
        config = wrapper.get_config()
        config.pop("inner_optimizer")
        new = keras.optimizers.LossScaleOptimizer(new, **config)
    strategy = getattr(model, "distribute_strategy", None)
    if strategy is not None:
        with strategy.scope():
            new.build(model.trainable_variables)
    else:
        new.build(model.trainable_variables)
    model.optimizer = new
    record_optimizer(model, new)  # so model.save records the optimizer in use
    model.make_train_function(force=True)


# ---------------------------------------------------------------------------
# Resume
# ---------------------------------------------------------------------------


def _backup_metadata(backup_dir: str | os.PathLike) -> dict | None:
    folder = os.fspath(backup_dir)
    path = os.path.join(folder, "training_metadata.json")
    if not (os.path.exists(path) and os.path.exists(os.path.join(folder, "latest.weights.h5"))):
        return None
    with open(path) as f:
        return json.load(f)


def backup_epoch(backup_dir: str | os.PathLike) -> int | None:
    """The epoch a ``BackupAndRestore`` backup resumes at (``None`` when there is none).

    Example:
        >>> backup_epoch("/tmp/no-such-backup") is None
        True
    """
    metadata = _backup_metadata(backup_dir)
    return None if metadata is None else int(metadata["epoch"])


class StagedBackupAndRestore(keras.callbacks.BackupAndRestore):
    """``BackupAndRestore`` that restores a :class:`StagedUnfreeze` run in its stage.

    Before loading the backup it applies the stages that had been applied when it
    was written, so the layers, the optimizer (same variables, so its state loads)
    and the learning rate are those of the interrupted run. A plain
    ``BackupAndRestore`` restores the weights, and the stages are then caught up,
    but the optimizer state is dropped (Keras warns "Skipping variable loading").

    Example:
        >>> stage = StagedUnfreeze({3: "block5"}, learning_rates={3: 1e-5})
        >>> backup = StagedBackupAndRestore("backup", stage)
        >>> model.fit(train_ds, epochs=8, callbacks=[stage, backup])  # doctest: +SKIP
    """

    def __init__(self, backup_dir: str | os.PathLike, staged: StagedUnfreeze, **kwargs: Any):
        super().__init__(os.fspath(backup_dir), **kwargs)
        self.staged = staged

    def _load_model(self) -> None:
        metadata = _backup_metadata(self.backup_dir)
        if metadata is not None:
            # Saved at an epoch's end: stages up to that epoch; mid-epoch (save_freq=N
            # batches): that epoch's stage too.
            last = int(metadata["epoch"]) - (0 if metadata.get("batch") else 1)
            self.staged.on_train_begin()
            self.staged.apply_through(last)
        super()._load_model()


# ---------------------------------------------------------------------------
# fine_tune
# ---------------------------------------------------------------------------

_SAVING_CALLBACKS = (keras.callbacks.ModelCheckpoint, keras.callbacks.BackupAndRestore)


def _random_layers(model: keras.Model) -> list[str]:
    """Names of active random layers in front of the backbone (they make features differ)."""
    front = model.layers[: model.layers.index(get_backbone_layer(model))]

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


def _resolve_cache(cache: Any, model: keras.Model, train: Any, callbacks: Sequence,
                   head_epochs: int, fit_kwargs: Mapping) -> bool:
    reasons = []
    random_layers = _random_layers(model)
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
    strategy = distribute_strategy(model)  # set under a tf.distribute scope
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


def _feature_extractor(model: keras.Model) -> keras.Model:
    """``pixels -> [augmentation] -> preprocess -> backbone``: the head's input, as a model."""
    return keras.Model(model.inputs, get_backbone_layer(model).output, name="feature_extractor")


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
    head_epochs: int = 5,
    fine_tune_epochs: int = 5,
    blocks: Blocks = "default",
    head_lr: float | None = None,
    fine_tune_lr: float | None = 1e-5,
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
            is an instance, else 1e-3. Giving both an optimizer instance and a
            different ``head_lr`` is an error (which one did you mean?).
        fine_tune_lr: learning rate of phase 2 (``None``: keep phase 1's last rate).
        optimizer: name or instance; copied for each phase.
        loss: default: sparse categorical cross-entropy for integer labels,
            categorical for one-hot labels (read from the first batch).
        backup_dir: resume an interrupted run (:class:`StagedBackupAndRestore`):
            re-running the same call continues in the right phase, layers, learning
            rate and optimizer state. Do not also pass a ``BackupAndRestore``.
        gradual: unfreeze one more block every ``gradual`` epochs (top down through
            ``blocks`` when it is a list of blocks, else through all blocks).
        discriminative: per-block learning-rate factor for phase 2 (e.g. 2.6).
        batch_size: for array data.
        **fit_kwargs: passed to every ``fit`` (e.g. ``shuffle``, ``steps_per_epoch``).

    Returns:
        One ``History`` for epochs ``0 .. head_epochs + fine_tune_epochs - 1`` with
        ``"stage"`` (0 in phase 1) and ``"learning_rate"`` per epoch.

    Example:
        >>> import numpy as np, tfx_transfer as tt
        >>> model = tt.build_transfer_model("vgg16", 2, input_shape=(32, 32, 3),
        ...                                 weights=None, head="avg")
        >>> x = np.random.randint(0, 255, (8, 32, 32, 3), "uint8"); y = np.arange(8) % 2
        >>> h = tt.fine_tune(model, (x, y), head_epochs=1, fine_tune_epochs=1,
        ...                  blocks="block5", verbose=0)
        >>> h.history["stage"]
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
    for name, value in (("head_epochs", head_epochs), ("fine_tune_epochs", fine_tune_epochs)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name}={value!r} must be an int >= 0.")
    get_backbone_model(model)  # fails early on a model that is not a transfer model
    total = head_epochs + fine_tune_epochs

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
    cache = _resolve_cache(cache_features, model, train, callbacks, head_epochs, fit_kwargs)
    try:
        if not cache:
            return model.fit(**_fit_data(train), epochs=total,
                             callbacks=[stage, *callbacks, *backup], **fit)
        return _fine_tune_cached(model, train, validation, stage, callbacks, backup, head_epochs,
                                 total, loss, metrics, fit)
    finally:
        clear_initial_epoch(model)  # set by BackupAndRestore; would leak into a later fit


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


def _fine_tune_cached(model, train, validation, stage, callbacks, backup, head_epochs, total,
                      loss, metrics, fit) -> keras.callbacks.History:
    first = keras.callbacks.History()
    first.set_model(model)
    resumed = backup and backup_epoch(backup[0].backup_dir) is not None
    if not resumed:  # a backup holds later weights: phase 2 restores it
        first = _train_head_on_features(model, train, validation, stage, callbacks, head_epochs,
                                        loss, metrics, fit)
        optimizer = model.optimizer
        if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
            optimizer = optimizer.inner_optimizer
        if isinstance(raw_learning_rate(optimizer), keras.Variable):  # not a schedule
            # as in the plain run, phase 2 starts from phase 1's last rate (e.g. ReduceLROnPlateau)
            model.optimizer.learning_rate = _current_lr(first.model)
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


def _train_head_on_features(model, train, validation, stage, callbacks, head_epochs, loss,
                            metrics, fit) -> keras.callbacks.History:
    verbose = 0 if fit["verbose"] == 0 else 1
    extractor = _feature_extractor(model)
    if verbose:
        print("fine_tune: computing backbone features once for the head-only phase")
    features, labels, weights, batch_size = _extract(extractor, train, fit["batch_size"], verbose)
    head = get_head(model)
    head_model = keras.Model(head.inputs, head.outputs, name="head")  # same layers, same weights
    head_model.compile(optimizer=copy_optimizer(model.optimizer), loss=loss,
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
            logs["learning_rate"] = _current_lr(self.model)
