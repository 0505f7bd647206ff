"""The learning-rate finder (tfx_transfer.training.lr_finder): ramp, divergence, valley, nothing changed.

Backend-neutral: ``make test-jax`` runs it under KERAS_BACKEND=jax too.
"""

import importlib.util

import keras
import numpy as np
import pytest

import tfx_transfer as tt
from tfx_transfer.training.lr_finder import valley


def _colour_data(n=32, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    x = rng.integers(0, 60, (n, 32, 32, 3)).astype(np.uint8)
    x[y == 0, ..., 0] += 150
    x[y == 1, ..., 2] += 150
    return x, y


def _model(tinycam, augmentation=None):
    keras.utils.set_random_seed(0)
    model = tt.build_transfer_model(tinycam, 2, input_shape=(32, 32, 3), weights=None,
                                    head="flatten", units=8, augmentation=augmentation)
    tt.get_backbone_model(model).trainable = True
    return model


def _state(model):
    return ([keras.ops.convert_to_numpy(v).copy() for v in model.variables],
            [keras.ops.convert_to_numpy(v).copy() for v in model.optimizer.variables])


def test_compiled_model_weights_and_optimizer_state_exactly_as_before(tinycam):
    """A trained, compiled model (Adam moments, BatchNorm-free, augmentation seeds): every variable
    of the model and of its optimizer is bit-identical after the ramp, and it trains on.

    The random layer is a RandomFlip: its seed state is a SeedGenerator like the presets'
    RandomAffine's, whose XLA compile alone costs ~20 s of the JAX run."""
    model = _model(tinycam, augmentation=keras.layers.RandomFlip("horizontal", name="augmentation"))
    seeds = [i for i, v in enumerate(model.variables) if "seed_generator_state" in v.path]
    assert seeds  # the augmentation's seed state is among the variables compared
    x, y = _colour_data()
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    optimizer = model.optimizer
    before_model, before_optimizer = _state(model)
    result = tt.find_lr(model, (x, y), num_steps=30, batch_size=8)
    after_model, after_optimizer = _state(model)
    assert len(before_model) == len(after_model) and len(before_optimizer) == len(after_optimizer)
    for a, b in zip(before_model + before_optimizer, after_model + after_optimizer):
        np.testing.assert_array_equal(a, b)
    assert model.optimizer is optimizer and float(optimizer.learning_rate) == pytest.approx(1e-3)
    assert len(result.lrs) == len(result.losses) == len(result.smoothed) >= 2
    history = model.fit(x, y, batch_size=8, epochs=1, verbose=0).history
    assert set(history) == {"loss", "accuracy"}  # the user's loss and metrics, compiled again
    trained_on = _state(model)[0]  # training moves the seed state: kept above, not left alone
    assert any(not np.array_equal(trained_on[i], after_model[i]) for i in seeds)


def test_ramp_diverges_and_the_suggestion_lies_on_the_falling_slope(tinycam, tmp_path):
    model = _model(tinycam)
    x, y = _colour_data(48)
    y[::4] = 1 - y[::4]  # label noise: no perfect fit, so huge steps blow the loss up
    # plain SGD blows up at the top of the ramp; the loss then levels off near 4x its minimum,
    # so diverge=3 (not the default 4) makes the stop certain on every backend and data order
    result = tt.find_lr(model, (x, y), start_lr=1e-6, end_lr=1e4, num_steps=60, batch_size=8,
                        optimizer="sgd", diverge=3)
    assert not model.compiled  # an uncompiled model stays uncompiled
    rates = np.asarray(result.lrs)
    np.testing.assert_allclose(np.diff(np.log(rates)), np.log(1e10) / 59, rtol=1e-6)  # exponential
    assert result.stopped in ("diverged", "nan") and len(rates) < 60
    if result.stopped == "diverged":
        assert result.smoothed[-1] > 3 * min(result.smoothed)
    at = int(np.argmin(np.abs(rates - result.suggestion)))
    assert 1e-6 < result.suggestion < rates[int(np.argmin(result.smoothed))] * 1.0001
    assert result.smoothed[at] < result.smoothed[0]  # loss already falling there
    if importlib.util.find_spec("matplotlib"):  # not in the JAX venv of `make test-jax`
        fig = result.plot(tmp_path / "lr.png")
        assert (tmp_path / "lr.png").stat().st_size > 5000 and fig.axes[0].get_xscale() == "log"


def test_valley_and_errors(tinycam):
    losses = [2.0, 1.9, 1.7, 1.2, 0.8, 0.7, 0.75, 3.0]
    lrs = [10.0 ** e for e in range(-7, 1)]
    assert valley(lrs, losses) == 1e-5  # 2/3 of the way down the run 2.0 .. 0.7
    model = _model(tinycam)
    data = _colour_data(8)
    with pytest.raises(ValueError, match="need 0 < start_lr < end_lr"):
        tt.find_lr(model, data, start_lr=1.0, end_lr=0.1)
    with pytest.raises(ValueError, match="num_steps=5000 must be an int in 2..1000"):
        tt.find_lr(model, data, num_steps=5000)
    tt.get_backbone_model(model).trainable = False
    for layer in tt.get_head(model).layers:
        layer.trainable = False
    with pytest.raises(ValueError, match="no trainable weights"):
        tt.find_lr(model, data)


def _least_squares(n=256, d=8, noise=0.1, seed=0):
    """A problem with a known best rate: whitened least squares (x.T @ x / n = I), so the MSE
    Hessian is 2 I: plain gradient descent converges in one step at lr 0.5 and diverges
    above 1."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(n, d)))
    x = (q * np.sqrt(n)).astype("float32")
    y = (x @ rng.normal(size=(d, 1)) + noise * rng.normal(size=(n, 1))).astype("float32")
    model = keras.Sequential([keras.Input((d,)), keras.layers.Dense(1, use_bias=False,
                                                                     kernel_initializer="zeros")])
    return model, (x, y)


def _ramp(start_lr):
    model, data = _least_squares()
    result = tt.find_lr(model, data, loss="mse", optimizer="sgd", start_lr=start_lr, end_lr=10.0,
                        num_steps=60, batch_size=len(data[0]))  # full batch: exact descent
    return result, np.asarray(result.lrs), np.asarray(result.losses), np.asarray(result.smoothed)


def test_suggestion_is_where_the_loss_falls_fastest_on_a_problem_with_a_known_rate():
    result, lrs, losses, smoothed = _ramp(start_lr=1e-3)
    assert result.stopped == "diverged" and lrs[-1] > 1  # the problem blows up above lr 1
    assert losses.min() < 0.1 * losses[0]
    assert 0.05 <= result.suggestion < 1  # within 10x below the best rate, and stable
    slope = -np.gradient(np.log(smoothed))  # where the (smoothed) loss the rule reads falls
    at = int(np.argmin(np.abs(np.log(lrs / result.suggestion))))
    assert slope[at] >= 0.5 * slope.max(), f"suggestion {result.suggestion:.3g} is off the steep part"


@pytest.mark.xfail(strict=True, reason=(
    "lr_finder's valley rule on a noise-free curve: the smoothed loss decreases from the first "
    "step, so the longest decreasing run is the whole ramp up to the divergence and the "
    "suggestion is its middle (about 1e-3 from start_lr=1e-7): it depends on start_lr, not on "
    "where the loss falls"))
def test_default_ramp_suggests_a_rate_near_the_known_best_one():
    result, *_ = _ramp(start_lr=1e-7)
    assert 0.05 <= result.suggestion < 1
