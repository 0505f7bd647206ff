"""Callbacks for staged fine-tuning inside one ``model.fit``: ``StagedUnfreeze``, resume.

Why a callback that only sets ``layer.trainable = True`` is not enough: the
compiled train step and the optimizer captured the trainable variables when
``fit`` started, so on TensorFlow the "unfrozen" weights stay bit-identical
(silently) and on JAX ``fit`` crashes with a shape mismatch at the next epoch.
At each stage :class:`StagedUnfreeze` therefore (1) under JAX syncs the in-flight
state back into the variables, (2) sets the trainable flags, (3) gives the model a
fresh optimizer of the same configuration at the stage's learning rate, built on
the new trainable variables (exactly what recompiling does in the two-``compile``
recipe) and (4) rebuilds the train function.

Example (what ``fit`` does at the start of epoch 1; :class:`StagedUnfreeze`'s own
example runs it inside ``model.fit``):
    >>> import tfx_transfer as tt
    >>> model = tt.build_transfer_model("vgg16", 2, input_shape=32, weights=None, head="avg")
    >>> model.compile("adam", "sparse_categorical_crossentropy")
    >>> stage = tt.StagedUnfreeze({1: "block5"}, learning_rates={1: 1e-5}, verbose=0)
    >>> stage.set_model(model)
    >>> before = model.optimizer
    >>> stage.apply_through(1)  # unfreeze, fresh optimizer, rebuilt train function
    True
    >>> model.optimizer is before
    False
    >>> len(model.trainable_weights), round(current_learning_rate(model), 10)  # head + block5
    (8, 1e-05)
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import keras
import numpy as np

from tfx_transfer._compat import record_optimizer
from tfx_transfer.models.freezing import Blocks, resolve_blocks, unfreeze
from tfx_transfer.models.parts import model_parts
from tfx_transfer.training.optimizers import (
    DiscriminativeOptimizer,
    copy_optimizer,
    discriminative_multipliers,
)


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
        >>> import numpy as np, tfx_transfer as tt
        >>> model = tt.build_transfer_model("vgg16", 2, input_shape=32, weights=None, head="avg")
        >>> model.compile("adam", "sparse_categorical_crossentropy")
        >>> x, y = np.zeros((4, 32, 32, 3), "uint8"), np.array([0, 1, 0, 1])
        >>> stage = StagedUnfreeze({1: "block5", 2: ["block4"]},
        ...                        learning_rates={1: 1e-5, 2: 5e-6}, verbose=0)
        >>> model.fit(x, y, epochs=3, callbacks=[stage], verbose=0).history["stage"]
        [0, 1, 2]
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
                **kwargs: Any) -> StagedUnfreeze:
        """Gradual unfreezing: one more block every ``every`` epochs from ``start_epoch``.

        ``blocks`` are taken in the order given (default: every block of the
        backbone, top down, read from the registry when training starts). Stage
        ``i`` gets ``learning_rate * lr_decay**i`` when a rate is given.

        Example:
            >>> import numpy as np, tfx_transfer as tt
            >>> model = tt.build_transfer_model("vgg16", 2, input_shape=32, weights=None,
            ...                                 head="avg")
            >>> model.compile("adam", "sparse_categorical_crossentropy")
            >>> stage = StagedUnfreeze.gradual(1, every=1, learning_rate=1e-5, verbose=0)
            >>> history = model.fit(np.zeros((4, 32, 32, 3), "uint8"), np.array([0, 1, 0, 1]),
            ...                     epochs=3, callbacks=[stage], verbose=0)
            >>> history.history["stage"]
            [0, 1, 2]
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

    def on_train_begin(self, logs: dict | None = None) -> None:
        parts = model_parts(self.model)
        try:
            _ = parts.backbone
        except ValueError as exc:
            raise ValueError(
                f"StagedUnfreeze cannot find the backbone of model {self.model.name!r}: it needs "
                "a model made by build_transfer_model() (or loaded with tfx_transfer.load_model), "
                "with its Backbone layer."
            ) from exc
        if self._gradual is not None:
            self._resolve_gradual(list(reversed(list(parts.blocks))))
        for blocks in self.schedule.values():  # fail before training on a bad block name
            resolve_blocks(self.model, blocks)

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.apply_through(epoch)

    def apply_through(self, epoch: int) -> bool:
        """Apply every stage scheduled at or before ``epoch`` that is not applied yet.

        Returns whether anything changed. Safe to call between epochs.

        Example:
            >>> import tfx_transfer as tt
            >>> model = tt.build_transfer_model("vgg16", 2, input_shape=32, weights=None)
            >>> model.compile("adam", "sparse_categorical_crossentropy")
            >>> stage = StagedUnfreeze({2: "block5"}, verbose=0)
            >>> stage.set_model(model)
            >>> stage.apply_through(1), stage.apply_through(3), stage.apply_through(3)
            (False, True, False)
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
            base = model_parts(model).backbone_model
            blocks = ", ".join(_blocks_label(self.schedule[e]) for e in due)
            print(f"\nStagedUnfreeze: epoch {epoch + 1}: stage {self.stage}: unfroze {blocks}; "
                  f"{len(base.trainable_weights)} backbone weights trainable; learning rate "
                  f"{current_learning_rate(model):.3g}")
        return True

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if logs is not None:
            logs["stage"] = self.stage
            logs["learning_rate"] = current_learning_rate(self.model)


def current_learning_rate(model: keras.Model) -> float:
    """The learning rate the model's optimizer applies now.

    Example:
        >>> import keras
        >>> m = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
        >>> m.compile(keras.optimizers.SGD(0.5), "mse")
        >>> current_learning_rate(m)
        0.5
    """
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
        >>> import tempfile, numpy as np, tfx_transfer as tt
        >>> model = tt.build_transfer_model("vgg16", 2, input_shape=32, weights=None, head="avg")
        >>> model.compile("adam", "sparse_categorical_crossentropy")
        >>> stage = StagedUnfreeze({1: "block5"}, learning_rates={1: 1e-5}, verbose=0)
        >>> backup = StagedBackupAndRestore(tempfile.mkdtemp(), stage)
        >>> history = model.fit(np.zeros((4, 32, 32, 3), "uint8"), np.array([0, 1, 0, 1]),
        ...                     epochs=2, callbacks=[stage, backup], verbose=0)
        >>> history.history["stage"]  # rerun the same fit after a crash: it resumes
        [0, 1]
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

