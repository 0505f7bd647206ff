"""The learning-rate finder (Smith 2017; fastai's ``lr_find``): one short ramp, one suggested rate.

:func:`find_lr` trains the model for at most a few hundred steps while the learning
rate grows exponentially from ``start_lr`` to ``end_lr``, records the loss of each
step, smooths it (exponential moving average, bias-corrected), stops once the
smoothed loss diverges (``diverge`` times its minimum, or NaN) and suggests a rate
with fastai's "valley" rule: the middle of the longest stretch where the loss keeps
falling. Afterwards every variable of the model (weights, BatchNorm statistics,
random-layer seeds) and of its optimizer is exactly as before: the ramp runs on a
copy of the optimizer, and the model's own compile state (optimizer, loss, metrics)
is put back.

Example (the "valley" rule on a recorded curve; :func:`find_lr`'s example runs the
ramp on a model and checks the model is unchanged):
    >>> lrs = [1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1, 10]
    >>> losses = [0.70, 0.70, 0.69, 0.60, 0.45, 0.35, 0.30, 0.90, 4.0]  # falls, then diverges
    >>> valley(lrs, losses)
    0.0001
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import keras
import numpy as np

from tfx_transfer._compat import compile_state, restore_compile_state
from tfx_transfer.defaults import DEFAULT_SEED


@dataclasses.dataclass
class LRFinderResult:
    """What :func:`find_lr` measured.

    Attributes:
        lrs: learning rate of each step taken.
        losses: training loss of each step (one batch).
        smoothed: bias-corrected exponential moving average of ``losses``.
        suggestion: fastai's "valley" rate (use it as the head-phase rate).
        lr_min: the rate at the lowest smoothed loss, divided by 10 (fastai's "minimum").
        stopped: why the ramp ended: ``"diverged"``, ``"nan"`` or ``"end"``.

    Example:
        >>> r = LRFinderResult([1e-4, 1e-3], [1.0, 0.5], [1.0, 0.7], 1e-3, 1e-4, "end")
        >>> r.suggestion
        0.001
    """

    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    suggestion: float
    lr_min: float
    stopped: str

    def plot(self, path: str | os.PathLike | None = None, title: str | None = None) -> Any:
        """Smoothed loss against the learning rate (log scale), the suggestion marked.

        Example:
            >>> r = LRFinderResult([1e-4, 1e-3, 1e-2], [1.0, 0.5, 2.0], [1.0, 0.7, 1.2],
            ...                    1e-3, 1e-4, "diverged")
            >>> fig = r.plot("/tmp/lr_finder.png")
        """
        from matplotlib.figure import Figure

        fig = Figure(figsize=(6, 4), dpi=100)
        ax = fig.add_subplot(1, 1, 1)
        ax.plot(self.lrs, self.losses, color="lightgrey", lw=1, label="loss (one batch)")
        ax.plot(self.lrs, self.smoothed, color="tab:blue", lw=2, label="smoothed loss")
        at = int(np.argmin(np.abs(np.log(self.lrs) - math.log(self.suggestion))))
        ax.plot([self.suggestion], [self.smoothed[at]], "o", color="tab:red", ms=8,
                label=f"suggestion (valley) {self.suggestion:.2g}")
        ax.axvline(self.lr_min, color="tab:green", ls=":", lw=1.2,
                   label=f"minimum / 10: {self.lr_min:.2g}")
        ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.set_ylabel("training loss")
        finite = np.asarray([v for v in self.smoothed if np.isfinite(v)])
        if finite.size:
            low, high = finite.min(), min(finite.max(), finite[0] * 2 if finite[0] > 0 else finite.max())
            pad = 0.05 * max(high - low, 1e-6)
            ax.set_ylim(low - pad, max(high, low) + pad)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
        ax.set_title(title or f"learning-rate finder ({len(self.lrs)} steps, {self.stopped})",
                     fontsize=10)
        fig.tight_layout()
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            fig.savefig(path, dpi=100)
        return fig


def valley(lrs: Any, losses: Any) -> float:
    """fastai's "valley" rule: 2/3 down the longest decreasing run of the (smoothed) loss.

    Example:
        >>> valley([1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1],
        ...        [2.0, 1.9, 1.7, 1.2, 0.8, 0.7, 0.75, 3.0])
        1e-05
    """
    lrs, losses = list(lrs), list(losses)
    n = len(losses)
    if n == 0 or len(lrs) != n:
        raise ValueError(f"valley needs as many losses as rates (got {len(lrs)} rates, {n} losses).")
    longest = [1] * n  # longest decreasing subsequence ending at i
    start = end = 0
    for i in range(1, n):
        for j in range(i):
            if losses[i] < losses[j] and longest[i] < longest[j] + 1:
                longest[i] = longest[j] + 1
        if longest[end] < longest[i]:
            end = i
            start = end - longest[end]
    sections = (end - start) / 3
    index = min(n - 1, start + int(sections) + int(sections / 2))
    return float(lrs[index])


def _cycle(train: Any, batch_size: int, seed: int) -> Iterator[tuple[Any, Any]]:
    if isinstance(train, tuple) and len(train) >= 2 and not hasattr(train, "element_spec"):
        x, y = np.asarray(train[0]), np.asarray(train[1])
        if len(x) != len(y) or not len(x):
            raise ValueError(f"train=(x, y) has {len(x)} images and {len(y)} labels; pass as many "
                             "labels as images (at least one).")
        rng = np.random.default_rng(seed)
        while True:
            order = rng.permutation(len(x))
            for s in range(0, len(x), batch_size):
                yield x[order[s:s + batch_size]], y[order[s:s + batch_size]]
    while True:
        empty = True
        for batch in train:
            if not isinstance(batch, (tuple, list)) or len(batch) < 2:
                raise ValueError("find_lr needs labelled batches (images, labels) or an (x, y) tuple.")
            empty = False
            yield batch[0], batch[1]
        if empty:
            raise ValueError("The training data yielded no batches.")


def _loss_for(model: keras.Model, train: Any, loss: Any) -> Any:
    if loss is not None:
        return loss
    if getattr(model, "compiled", False) and model.loss is not None:
        return model.loss
    from tfx_transfer.training.finetune import infer_loss

    labels = np.asarray(next(_cycle(train, 32, DEFAULT_SEED))[1])
    return infer_loss(labels, int(model.output.shape[-1]))


def find_lr(
    model: keras.Model,
    train: Any,
    *,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    num_steps: int = 100,
    smoothing: float = 0.98,
    diverge: float = 4.0,
    loss: Any = None,
    optimizer: Any = None,
    batch_size: int = 32,
    seed: int = DEFAULT_SEED,
    verbose: int = 0,
) -> LRFinderResult:
    """Ramp the learning rate exponentially, record the loss, suggest a rate; model unchanged.

    Args:
        model: any Keras model, compiled or not (e.g. a
            :func:`tfx_transfer.build_transfer_model` model with its frozen
            backbone: the rate found is the head-phase rate). What is trainable
            now is what the ramp trains.
        train: a ``tf.data`` dataset (or iterable) of ``(images, labels)`` batches,
            or an ``(x, y)`` tuple of arrays; cycled when shorter than ``num_steps``.
        start_lr, end_lr: the ramp's first and last rate.
        num_steps: steps of the ramp (2..1000; fastai uses 100).
        smoothing: moving-average factor of the loss (0 = none).
        diverge: stop once the smoothed loss exceeds ``diverge`` times its minimum.
        loss: default: the model's compiled loss, else sparse/categorical
            cross-entropy from the labels.
        optimizer: default: a copy of the model's optimizer, else Adam.
        batch_size: for ``(x, y)`` arrays.
        seed: shuffling of arrays (default ``tfx_transfer.defaults.DEFAULT_SEED``).
        verbose: 1 prints one line per 10 steps and the suggestion.

    Returns:
        A :class:`LRFinderResult` (``.suggestion``, ``.plot(path)``).

    Example:
        >>> import numpy as np, tfx_transfer as tt
        >>> model = tt.build_transfer_model("vgg16", 2, input_shape=32, weights=None, head="avg")
        >>> x, y = np.zeros((8, 32, 32, 3), "uint8"), np.arange(8) % 2
        >>> before = model.get_weights()
        >>> result = find_lr(model, (x, y), num_steps=10, batch_size=4)
        >>> 1e-7 <= result.suggestion <= 10.0, len(result.lrs) <= 10  # the rate to train the head with
        (True, True)
        >>> all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))  # model unchanged
        True
    """
    from tfx_transfer.training.optimizers import copy_optimizer

    if not 0 < start_lr < end_lr:
        raise ValueError(f"start_lr={start_lr!r}, end_lr={end_lr!r}: need 0 < start_lr < end_lr.")
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or not 2 <= num_steps <= 1000:
        raise ValueError(f"num_steps={num_steps!r} must be an int in 2..1000 (100 is plenty).")
    if not 0 <= smoothing < 1:
        raise ValueError(f"smoothing={smoothing!r} must be in [0, 1).")
    if diverge <= 1:
        raise ValueError(f"diverge={diverge!r} must be > 1 (times the lowest smoothed loss).")
    if not model.trainable_weights:
        raise ValueError(f"Model {model.name!r} has no trainable weights: nothing to ramp.")
    ramp_loss = _loss_for(model, train, loss)
    base = optimizer if optimizer is not None else (model.optimizer if getattr(model, "compiled", False)
                                                    and model.optimizer is not None else "adam")
    if isinstance(base, keras.optimizers.LossScaleOptimizer):
        base = base.inner_optimizer
    ramp_optimizer = copy_optimizer(base, start_lr)

    saved_values = [np.array(keras.ops.convert_to_numpy(v)) for v in model.variables]
    saved_state = compile_state(model)
    rates = start_lr * (end_lr / start_lr) ** (np.arange(num_steps) / (num_steps - 1))
    lrs, losses, smoothed = [], [], []
    average, best, stopped = 0.0, math.inf, "end"
    try:
        model.compile(optimizer=ramp_optimizer, loss=ramp_loss)
        batches = _cycle(train, batch_size, seed)
        for step, rate in enumerate(rates):
            x, y = next(batches)
            ramp_optimizer.learning_rate = float(rate)
            model.reset_metrics()  # else Keras 3.8 reports the mean over all calls so far
            value = float(np.asarray(model.train_on_batch(x, y, return_dict=True)["loss"]))
            if not math.isfinite(value):
                stopped = "nan"
                break
            average = smoothing * average + (1 - smoothing) * value
            value_smoothed = average / (1 - smoothing ** (step + 1))
            lrs.append(float(rate))
            losses.append(value)
            smoothed.append(value_smoothed)
            best = min(best, value_smoothed)
            if verbose and step % 10 == 0:
                print(f"find_lr: step {step + 1}/{num_steps} lr {rate:.3g} loss {value:.4f} "
                      f"(smoothed {value_smoothed:.4f})", flush=True)
            if step > 0 and value_smoothed > diverge * best:
                stopped = "diverged"
                break
    finally:
        for variable, value in zip(model.variables, saved_values):
            variable.assign(value)
        restore_compile_state(model, saved_state)
    if len(lrs) < 2:
        raise ValueError(f"The loss was not finite from the first steps (lr {start_lr:g}); "
                         "lower start_lr or check the data and the loss.")
    n = len(lrs)
    skip_start, skip_end = (n // 10, 5) if n >= 20 else (0, 0)  # as fastai: edges are noisy
    window = slice(skip_start, n - skip_end)
    suggestion = valley(lrs[window], smoothed[window])
    lr_min = lrs[int(np.argmin(smoothed))] / 10
    if verbose:
        print(f"find_lr: {n} steps ({stopped}); suggested learning rate {suggestion:.3g} "
              f"(minimum/10: {lr_min:.3g})", flush=True)
    return LRFinderResult(lrs, losses, smoothed, suggestion, lr_min, stopped)


def find_head_lr(model: keras.Model, train: Any, *, max_images: int | None = 2048,
                 **kwargs: Any) -> LRFinderResult:
    """The head-phase rate of a transfer model, fast: backbone features once, the ramp on the head.

    The frozen backbone gives the same features at every step, so they are computed
    in one pass over ``train`` (at most ``max_images`` images, without the model's
    augmentation layer) and :func:`find_lr` ramps the nested head alone on them. The
    head's weights are restored afterwards, as with :func:`find_lr`.

    Args:
        model: a :func:`tfx_transfer.build_transfer_model` model.
        train: ``(images, labels)`` batches or an ``(x, y)`` tuple of arrays.
        max_images: images whose features are computed (``None``: all).
        **kwargs: :func:`find_lr`'s options (``num_steps``, ``start_lr``, ...).

    Example:
        >>> import numpy as np, tfx_transfer as tt
        >>> model = tt.build_transfer_model("vgg16", 2, input_shape=(32, 32, 3),
        ...                                 weights=None, head="avg")
        >>> x = np.random.default_rng(0).integers(0, 256, (16, 32, 32, 3), dtype="uint8")
        >>> result = find_head_lr(model, (x, np.arange(16) % 2), num_steps=20, batch_size=8)
        >>> 1e-7 <= result.suggestion <= 10, result.stopped in ("end", "diverged")
        (True, True)
    """
    from tfx_transfer.models.parts import model_parts

    parts = model_parts(model)
    backbone, preprocess = parts.backbone_model, parts.preprocess
    features, labels, seen = [], [], 0
    batch_size = int(kwargs.get("batch_size", 32))
    if isinstance(train, tuple) and len(train) >= 2 and not hasattr(train, "element_spec"):
        x, y = np.asarray(train[0]), np.asarray(train[1])
        batches: Any = ((x[s:s + batch_size], y[s:s + batch_size]) for s in range(0, len(x), batch_size))
    else:
        batches = train
    for batch in batches:
        if not isinstance(batch, (tuple, list)) or len(batch) < 2:
            raise ValueError("find_head_lr needs labelled batches (images, labels) or an (x, y) tuple.")
        images = np.asarray(batch[0])
        out = backbone(preprocess(images), training=False)
        features.append(np.asarray(keras.ops.convert_to_numpy(keras.ops.cast(out, "float32"))))
        labels.append(np.asarray(batch[1]))
        seen += len(images)
        if max_images is not None and seen >= max_images:
            break
    if not features:
        raise ValueError("The training data yielded no batches.")
    kwargs.setdefault("batch_size", batch_size)
    if (getattr(model, "transfer_config", None) or {}).get("multi_label"):
        kwargs.setdefault("loss", "binary_crossentropy")  # a sigmoid head: multi-hot labels
    return find_lr(parts.head, (np.concatenate(features), np.concatenate(labels)), **kwargs)
