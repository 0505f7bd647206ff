"""Model fusion: several classifiers with the same input and classes as one Keras model.

``ensemble([m1, m2, ...])`` is a functional model that feeds the same pixels to
every member and fuses their probabilities with :class:`FuseProbabilities`:

* ``method="mean"``: the (weighted) mean of the members' probabilities;
* ``method="vote"``: majority vote. Each member votes for its argmax class with
  its weight; the output is each class's share of the votes (sums to 1). Ties
  are broken by the highest mean probability among the tied classes (then the
  lowest class index): the winner gets a bonus of 0.001 before renormalising,
  so ``argmax`` of the output is always the winner.

It is an ordinary model: ``predict``, ``evaluate``, ``save`` (the fusion layer is
registered serializable) and :func:`~tfx_transfer.export_saved_model` as one
SavedModel.

Example:
    >>> import numpy as np, tfx_transfer as tt
    >>> members = [tt.build_transfer_model("vgg16", 2, input_shape=32, weights=None, head=head)
    ...            for head in ("avg", "max")]
    >>> fused = ensemble(members, method="vote")
    >>> fused.predict(np.zeros((3, 32, 32, 3), "uint8"), verbose=0).shape
    (3, 2)
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
from keras import ops

from tfx_transfer.models.transfer_model import TransferModel

METHODS = ("mean", "vote")
TIE_BONUS = 1e-3


@keras.saving.register_keras_serializable(package="tfx_transfer")
class FuseProbabilities(keras.layers.Layer):
    """Fuse a list of ``(batch, classes)`` probability tensors (mean or majority vote).

    Args:
        method: ``"mean"`` or ``"vote"`` (see the module docstring for ties).
        member_weights: one non-negative weight per input (normalised to sum to 1);
            ``None`` for equal weights.

    Example:
        >>> import numpy as np
        >>> a = np.array([[0.9, 0.1]], "float32"); b = np.array([[0.3, 0.7]], "float32")
        >>> FuseProbabilities("mean")([a, b]).numpy().round(2)
        array([[0.6, 0.4]], dtype=float32)
        >>> FuseProbabilities("vote", member_weights=[2, 1])([a, b]).numpy().argmax(-1)
        array([0])
    """

    def __init__(self, method: str = "mean", member_weights: Sequence[float] | None = None,
                 **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        if method not in METHODS:
            raise ValueError(f"method={method!r} is not one of {METHODS}.")
        weights = member_weights
        if weights is not None:
            weights = [float(w) for w in weights]
            if any(w < 0 for w in weights) or sum(weights) <= 0:
                raise ValueError(
                    f"member_weights={weights!r}: need non-negative weights with a positive sum."
                )
        self.method = method
        self.weights_ = weights

    def normalised(self, n: int) -> list[float]:
        """The member weights for ``n`` members, summing to 1.

        Example:
            >>> FuseProbabilities(member_weights=[3, 1]).normalised(2)
            [0.75, 0.25]
        """
        weights = self.weights_ or [1.0] * n
        if len(weights) != n:
            raise ValueError(f"member_weights={self.weights_!r} has {len(weights)} entries for {n} models.")
        total = sum(weights)
        return [w / total for w in weights]

    def call(self, probabilities):
        probs = [ops.cast(p, "float32") for p in probabilities]
        weights = self.normalised(len(probs))
        mean = sum(w * p for w, p in zip(weights, probs))
        if self.method == "mean":
            return mean
        num_classes = probs[0].shape[-1]
        shares = sum(w * ops.one_hot(ops.argmax(p, axis=-1), num_classes)
                     for w, p in zip(weights, probs))
        tied = ops.equal(shares, ops.max(shares, axis=-1, keepdims=True))
        winner = ops.argmax(ops.where(tied, mean, -1.0), axis=-1)
        return (shares + TIE_BONUS * ops.one_hot(winner, num_classes)) / (1.0 + TIE_BONUS)

    def compute_output_shape(self, input_shape):
        return input_shape[0]

    def get_config(self) -> dict:
        return {**super().get_config(), "method": self.method, "member_weights": self.weights_}


def ensemble(
    models: Sequence[keras.Model],
    member_weights: Sequence[float] | None = None,
    method: str = "mean",
    name: str = "ensemble",
) -> keras.Model:
    """One Keras model from several classifiers: same pixels in, fused probabilities out.

    Members must share the input shape and the number of classes (same class
    order). Members with the same name (two ``build_transfer_model`` models of one
    backbone are both ``"<backbone>_transfer"``) are renamed ``"<name>_<i>"`` in
    place, since a Keras model needs unique layer names.

    Args:
        models: two or more Keras models with one softmax output each.
        member_weights: per-model weights (default equal).
        method: ``"mean"`` (default) or ``"vote"`` (see the module docstring).
        name: model name.

    Example:
        >>> import numpy as np, tfx_transfer as tt
        >>> ms = [tt.build_transfer_model("vgg16", 3, input_shape=32, weights=None, head="avg")
        ...       for _ in range(2)]
        >>> fused = ensemble(ms)
        >>> x = np.zeros((1, 32, 32, 3), "uint8")
        >>> np.allclose(fused.predict(x, verbose=0),
        ...             (ms[0].predict(x, verbose=0) + ms[1].predict(x, verbose=0)) / 2)
        True
    """
    models = list(models)
    if len(models) < 2:
        raise ValueError(f"ensemble needs at least 2 models, got {len(models)}.")
    fuse = FuseProbabilities(method, member_weights, name="fuse")
    fuse.normalised(len(models))  # fail now on a wrong number of weights
    shapes = {tuple(m.input_shape[1:]) for m in models}
    outputs = {tuple(m.output_shape[1:]) for m in models}
    if len(shapes) != 1 or len(outputs) != 1:
        raise ValueError(
            f"ensemble members must share the input shape and number of classes; got input "
            f"shapes {sorted(shapes)} and output shapes {sorted(outputs)}. Build them at the "
            "same input size for the same classes."
        )
    seen: set[str] = set()
    for i, model in enumerate(models):
        if model.name in seen or model.name in (name, "fuse", "pixels"):
            model.name = f"{model.name}_{i}"
        seen.add(model.name)

    inputs = keras.Input(shape=shapes.pop(), dtype=models[0].inputs[0].dtype, name="pixels")
    probs = fuse([model(inputs) for model in models])
    configs = [getattr(m, "transfer_config", None) or {} for m in models]
    backbones = sorted({c["backbone"] for c in configs if c.get("backbone")})
    names = {tuple(c["class_names"]) for c in configs if c.get("class_names")}
    settings = {
        "backbone": "+".join(backbones) or None,  # what export metadata reports
        "num_classes": int(models[0].output_shape[-1]),
        "input_shape": list(models[0].input_shape[1:]),
        "head": None,
        "ensemble": {"method": method, "member_weights": None if member_weights is None else list(member_weights),
                     "members": [m.name for m in models]},
        "class_names": list(names.pop()) if len(names) == 1 else None,
    }
    return TransferModel(inputs, probs, name=name, transfer_config=settings)
