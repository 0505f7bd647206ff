"""Optimizers for fine-tuning: a fresh copy at a learning rate, per-block learning rates.

Example:
    >>> import keras
    >>> opt = copy_optimizer(keras.optimizers.Adam(1e-3), learning_rate=1e-5)
    >>> optimizer_learning_rate(opt)
    1e-05
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

import keras
import numpy as np

from tfx_transfer._compat import raw_learning_rate
from tfx_transfer.models.parts import model_parts


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

    Args:
        optimizer: a Keras optimizer (instance, name or config) to copy per group; its
            learning rate becomes the wrapper's base rate.
        multipliers: regex (searched in ``variable.path``) -> learning-rate multiplier.
        name: the optimizer's name (default ``"discriminative"``).

    Example:
        >>> import numpy as np, tfx_transfer as tt
        >>> model = tt.build_transfer_model("vgg16", 2, input_shape=32, weights=None, head="avg")
        >>> _ = tt.unfreeze(model, ["block4", "block5"])
        >>> opt = DiscriminativeOptimizer(keras.optimizers.Adam(1e-4),
        ...                               {r"(^|/)block5_": 1 / 2.6, r"(^|/)block4_": 1 / 2.6**2})
        >>> model.compile(opt, "sparse_categorical_crossentropy")
        >>> _ = model.fit(np.zeros((4, 32, 32, 3), "uint8"), np.array([0, 1, 0, 1]), verbose=0)
        >>> sorted({round(opt.multiplier(v), 3) for v in model.trainable_weights})
        [0.148, 0.385, 1.0]
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
            >>> opt = DiscriminativeOptimizer("adam", {r"(^|/)block5_": 0.5})
            >>> opt.multiplier(keras.Variable(np.zeros(2), name="block5_conv1_kernel"))
            0.5
            >>> opt.multiplier(keras.Variable(np.zeros(2), name="predictions_kernel"))
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
    def from_config(cls, config: dict, custom_objects: Any = None) -> DiscriminativeOptimizer:
        config = dict(config)
        optimizer = keras.optimizers.deserialize(config.pop("optimizer"), custom_objects=custom_objects)
        return cls(optimizer, **config)


def discriminative_multipliers(model: keras.Model, factor: float) -> dict[str, float]:
    """Learning-rate multipliers, fastai style: each block down gets ``1/factor`` more.

    The head (and anything outside the backbone) gets 1, the backbone's top block
    ``1/factor``, the next ``1/factor**2``, and so on.

    Example:
        >>> import tfx_transfer as tt
        >>> model = tt.build_transfer_model("vgg16", 2, input_shape=32, weights=None)
        >>> mult = discriminative_multipliers(model, 2.6)
        >>> round(mult[r"(^|/)block5_conv1/"], 4), round(mult[r"(^|/)block4_conv1/"], 4)
        (0.3846, 0.1479)
    """
    if not factor or factor < 1:
        raise ValueError(f"discriminative={factor!r}: the per-block factor must be >= 1 "
                         "(e.g. 2.6: each block down trains 2.6x slower).")
    named = model_parts(model).blocks
    out: dict[str, float] = {}
    for depth, block in enumerate(reversed(list(named.values())), start=1):
        for layer in block:
            if layer.weights:
                out[rf"(^|/){re.escape(layer.name)}/"] = float(factor) ** -depth
    return out

