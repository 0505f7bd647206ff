"""Staged unfreezing inside one fit, fine_tune, cached features, resume, discriminative LRs.

Runs under the TensorFlow backend and under KERAS_BACKEND=jax (no TensorFlow):
the core tests use in-memory numpy data; tests needing tf.data skip without it.
"""

from __future__ import annotations

import importlib.util

import keras
import numpy as np
import pytest

import tfx_transfer as tt
from tests.helpers import tiny_labels, tiny_pixels, weights_by_name
from tests.tiny_backbone import tinyvgg_registered
from tfx_transfer.training import finetune as ft
from tfx_transfer.training.callbacks import backup_epoch
from tfx_transfer.training.finetune import DEFAULT_FINE_TUNE_LR, DEFAULT_HEAD_LR

BACKEND = keras.backend.backend()
needs_tf = pytest.mark.skipif(importlib.util.find_spec("tensorflow") is None
                              or BACKEND != "tensorflow", reason="needs TensorFlow / tf.data")
N, BATCH = 8, 4  # 2 steps per epoch
# Tests that check learning rates, stages, callbacks or bookkeeping, not the optimizer's own
# state, train with plain SGD: its train step traces in about half the time of Adam's.
# fine_tune's default (Adam) stays in the tests of the two phases, cached-vs-plain and resume.
SGD = "sgd"


@pytest.fixture(autouse=True, scope="module")
def _tinyvgg():
    with tinyvgg_registered():
        yield


def _vgg(seed: int = 0, **kwargs) -> keras.Model:
    """VGG16's layer names and blocks, 8 channels wide, one or two convolutions per block
    (tests/tiny_backbone.py): the block logic is VGG16's, the cost a fraction."""
    keras.utils.set_random_seed(seed)
    return tt.build_transfer_model("tinyvgg", 2, input_shape=(32, 32, 3), weights=None,
                                   head="avg", **kwargs)


def _data(n: int = N):
    return tiny_pixels(n), tiny_labels(n)


def _lr(model) -> float:
    return float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))


class Probe(keras.callbacks.Callback):
    """Records, at each epoch's begin and end: weights, learning rate, trainable layers."""

    def __init__(self):
        super().__init__()
        self.begin, self.end, self.lr, self.trainable, self.iterations = {}, {}, {}, {}, {}

    def on_epoch_begin(self, epoch, logs=None):
        self.begin[epoch] = weights_by_name(self.model)
        self.lr[epoch] = _lr(self.model)
        base = tt.get_backbone_model(self.model)
        self.trainable[epoch] = [layer.name for layer in base.layers
                                 if base.trainable and layer.trainable and layer.weights]
        self.iterations[epoch] = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))

    def on_epoch_end(self, epoch, logs=None):
        self.end[epoch] = weights_by_name(self.model)


def _block_keys(model, block: str) -> list[str]:
    base = tt.get_backbone_model(model)
    names = {layer.name for layer in tt.backbone_blocks("vgg16", base)[block]}
    return [w.path for w in base.weights if w.path.split("/")[0] in names]


def _same(a: dict, b: dict, keys) -> bool:
    return all(np.array_equal(a[k], b[k]) for k in keys)


def _all_differ(a: dict, b: dict, keys) -> bool:
    return all(not np.array_equal(a[k], b[k]) for k in keys)


# ---------------------------------------------------------------- unfreeze


def test_unfreeze_forms_cumulative_and_errors():
    model = _vgg()
    base = tt.get_backbone_model(model)
    assert tt.unfreeze(model, "block5") == ["block5_conv1", "block5_conv2", "block5_pool"]
    names = tt.unfreeze(model, ["block4"])  # adds to block5
    assert names == ["block4_conv1", "block4_pool", "block5_conv1", "block5_conv2", "block5_pool"]
    trainable = {w.path for w in model.trainable_weights}
    assert {w.path for w in tt.get_head(model).weights} <= trainable
    assert not any(p.startswith(("block1", "block2", "block3")) for p in trainable)
    assert len(base.trainable_weights) == 6  # 3 convs x (kernel, bias)

    fresh = _vgg()
    assert tt.unfreeze(fresh, "default") == tt.unfreeze(_vgg(), "block5")  # vgg16 default: block5
    assert tt.unfreeze(_vgg(), 1) == ["block5_conv2", "block5_pool"]  # part of a block
    assert tt.unfreeze(_vgg(), 3) == ["block4_conv1", "block4_pool", "block5_conv1",
                                      "block5_conv2", "block5_pool"]  # across a block boundary
    assert len(tt.unfreeze(_vgg(), "all")) == len(base.layers) - 1  # all but the InputLayer
    with pytest.raises(ValueError, match=r"Unknown block\(s\) \['block9'\].*'block1', .*'block5'"):
        tt.unfreeze(_vgg(), "block9")
    with pytest.raises(ValueError, match="1 <= N <= 6"):
        tt.unfreeze(_vgg(), 99)


def test_unfreeze_keeps_batchnorm_frozen_unless_asked():
    model = tt.build_transfer_model("resnet50", 2, input_shape=(32, 32, 3), weights=None,
                                    head="avg")
    base = tt.get_backbone_model(model)
    names = tt.unfreeze(model, "conv5")
    layers = {layer.name: layer for layer in base.layers}
    assert names and all(n.startswith("conv5_") for n in names)
    assert not any(isinstance(layers[n], keras.layers.BatchNormalization) for n in names)
    assert not layers["conv4_block6_out"].trainable and layers["conv5_block3_3_conv"].trainable
    names_bn = tt.unfreeze(model, "conv5", train_bn=True)
    assert any(isinstance(layers[n], keras.layers.BatchNormalization) for n in names_bn)
    with pytest.raises(ValueError, match="Valid blocks .*'conv1', 'conv2', 'conv3', 'conv4', 'conv5'"):
        tt.unfreeze(model, "block5")


# ------------------------------------------------------- the same-fit trap


class NaiveUnfreeze(keras.callbacks.Callback):
    """What users write: set trainable inside fit. Documents why StagedUnfreeze rebuilds."""

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == 1:
            base = tt.get_backbone_model(self.model)
            base.trainable = True


def test_same_fit_trap_naive_callback_trains_nothing():
    """TensorFlow: the flags change, not one weight moves. JAX: fit crashes mid-epoch."""
    model = _vgg()
    model.compile(keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy")
    before = weights_by_name(tt.get_backbone_model(model))
    fit = dict(batch_size=BATCH, epochs=2, verbose=0, callbacks=[NaiveUnfreeze()])
    if BACKEND == "jax":  # the stale optimizer state no longer matches the variables
        with pytest.raises(ValueError, match="shape of the target variable"):
            model.fit(*_data(), **fit)
        return
    model.fit(*_data(), **fit)
    after = weights_by_name(tt.get_backbone_model(model))
    assert tt.get_backbone_model(model).trainable_weights  # flagged trainable ...
    assert _same(before, after, before)  # ... but not one weight moved


# ------------------------------------------------------- StagedUnfreeze


def test_staged_unfreeze_trains_inside_one_fit():
    model = _vgg()
    model.compile(keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy")
    probe = Probe()
    stage = tt.StagedUnfreeze({1: "block5", 2: ["block4"]}, learning_rates={1: 1e-3, 2: 5e-4},
                              verbose=0)
    start = weights_by_name(model)
    history = model.fit(*_data(), batch_size=BATCH, epochs=3, verbose=0, callbacks=[stage, probe])

    base_keys = [w.path for w in tt.get_backbone_model(model).weights]
    b5, b4 = _block_keys(model, "block5"), _block_keys(model, "block4")
    lower = [k for k in base_keys if k not in b5 + b4]
    # epoch 0 (head only): every backbone weight bit-identical.
    assert _same(start, probe.end[0], base_keys)
    # epoch 1: block5 trains, everything below it is bit-identical.
    assert _all_differ(probe.begin[1], probe.end[1], b5)
    assert _same(start, probe.end[1], b4 + lower)
    # epoch 2: block4 joins, blocks 1-3 still bit-identical.
    assert _all_differ(probe.begin[2], probe.end[2], b4 + b5)
    assert _same(start, probe.end[2], lower)
    np.testing.assert_allclose([probe.lr[e] for e in range(3)], [1e-2, 1e-3, 5e-4], rtol=1e-6)
    assert history.history["stage"] == [0, 1, 2]
    np.testing.assert_allclose(history.history["learning_rate"], [1e-2, 1e-3, 5e-4], rtol=1e-6)
    assert probe.trainable[1] == [n for n in probe.trainable[2] if n.startswith("block5")]


def test_model_save_after_stage_and_reload(tmp_path):
    model = _vgg()
    model.compile(keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy")
    stage = tt.StagedUnfreeze({0: "block5"}, learning_rates=3e-4, verbose=0)  # epoch 0: before training
    probe = Probe()
    model.fit(*_data(), batch_size=BATCH, epochs=1, verbose=0, callbacks=[stage, probe])
    assert probe.lr[0] == pytest.approx(3e-4) and probe.trainable[0][0] == "block5_conv1"
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert _lr(loaded) == pytest.approx(3e-4)
    assert len(loaded.trainable_weights) == len(model.trainable_weights) == 6  # block5 + head
    for a, b in zip(loaded.optimizer.variables, model.optimizer.variables):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))


def test_batchnorm_frozen_unless_train_bn_inside_one_fit(tinybn):
    """Unfrozen blocks' BatchNormalization stays frozen: no weight, no moving statistic moves.

    ``train_bn=True`` trains BatchNormalization: in Keras 3 a trainable BatchNormalization
    runs in training mode inside ``fit`` (batch statistics, moving statistics updated), even
    though the backbone is called with ``training=False``: the functional model passes
    fit's ``training=True`` down to the nested backbone.
    """
    keras.utils.set_random_seed(0)
    model = tt.build_transfer_model(tinybn, 2, input_shape=(16, 16, 3), weights=None, head="avg")
    model.compile(keras.optimizers.SGD(1e-2), "sparse_categorical_crossentropy")  # see SGD
    probe = Probe()
    stages = [tt.StagedUnfreeze({1: "top"}, verbose=0),
              tt.StagedUnfreeze({2: "low"}, train_bn=True, verbose=0)]
    model.fit(tiny_pixels(N, 16), tiny_labels(N), batch_size=BATCH, epochs=3, verbose=0,
              callbacks=[*stages, probe])
    start, after1, after2 = probe.begin[0], probe.end[1], probe.end[2]
    top_bn = [k for k in start if k.startswith("top_bn/")]
    low_bn_stats = ["low_bn/moving_mean", "low_bn/moving_variance"]
    assert _all_differ(start, after1, ["top_conv/kernel"])
    assert _same(start, after1, top_bn + [k for k in start if k.startswith("low_")])
    assert _same(start, after2, top_bn)  # top_bn never trained, its statistics never moved
    assert _all_differ(after1, after2, ["low_conv/kernel", "low_bn/gamma"] + low_bn_stats)


def test_gradual_unfreezing_top_down_with_decaying_rate():
    model = _vgg()
    model.compile(keras.optimizers.SGD(1e-2), "sparse_categorical_crossentropy")  # see SGD
    probe = Probe()
    stage = tt.StagedUnfreeze.gradual(1, every=1, learning_rate=1e-3, lr_decay=0.5, verbose=0)
    model.fit(*_data(), batch_size=BATCH, epochs=3, verbose=0, callbacks=[stage, probe])
    assert list(stage.schedule.items())[:3] == [(1, "block5"), (2, "block4"), (3, "block3")]
    assert probe.trainable[0] == []
    assert {n[:6] for n in probe.trainable[1]} == {"block5"}
    assert {n[:6] for n in probe.trainable[2]} == {"block4", "block5"}
    np.testing.assert_allclose([probe.lr[e] for e in range(3)], [1e-2, 1e-3, 5e-4], rtol=1e-6)


def test_schedule_with_unknown_block_fails_before_training():
    model = _vgg()
    model.compile("adam", "sparse_categorical_crossentropy")
    probe = Probe()
    with pytest.raises(ValueError, match="Unknown block"):
        model.fit(*_data(), batch_size=BATCH, epochs=2, verbose=0,
                  callbacks=[tt.StagedUnfreeze({1: "conv5"}, verbose=0), probe])
    assert probe.begin == {}
    with pytest.raises(ValueError, match="not in the schedule"):
        tt.StagedUnfreeze({1: "block5"}, learning_rates={2: 1e-5})


# ------------------------------------------------------- discriminative LRs


def test_discriminative_optimizer_applies_each_group_rate_and_serializes():
    inputs = keras.Input((3,))
    bottom_layer = keras.layers.Dense(1, use_bias=False, kernel_initializer="ones", name="bottom")
    top_layer = keras.layers.Dense(1, use_bias=False, kernel_initializer="ones", name="top")
    keras.Model(inputs, top_layer(bottom_layer(inputs)))  # builds both layers
    opt = tt.DiscriminativeOptimizer(keras.optimizers.SGD(0.1), {r"^bottom/": 0.25})
    grads = [np.full((3, 1), 2.0, "float32"), np.full((1, 1), 2.0, "float32")]
    variables = [bottom_layer.kernel, top_layer.kernel]
    opt.apply(grads, variables)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(bottom_layer.kernel), 1 - 0.1 * 0.25 * 2)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(top_layer.kernel), 1 - 0.1 * 2)
    opt.learning_rate = 0.2  # e.g. ReduceLROnPlateau: every group follows
    opt.apply(grads, variables)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(bottom_layer.kernel), 0.95 - 0.2 * 0.25 * 2)
    assert int(keras.ops.convert_to_numpy(opt.iterations)) == 2
    clone = keras.optimizers.deserialize(keras.optimizers.serialize(opt))
    assert isinstance(clone, tt.DiscriminativeOptimizer)
    assert clone.multipliers == {r"^bottom/": 0.25} and float(clone.learning_rate) == pytest.approx(0.2)


def test_discriminative_stage_in_fit_then_save_and_load(tmp_path):
    model = _vgg()
    model.compile(keras.optimizers.SGD(1e-2), "sparse_categorical_crossentropy")
    stage = tt.StagedUnfreeze({1: ["block4", "block5"]}, learning_rates={1: 1e-2},
                              discriminative=2.0, verbose=0)
    probe = Probe()
    model.fit(*_data(), batch_size=BATCH, epochs=2, verbose=0, callbacks=[stage, probe])
    opt = model.optimizer
    assert isinstance(opt, tt.DiscriminativeOptimizer)
    rates = {f: float(keras.ops.convert_to_numpy(inner.learning_rate)) for f, inner in opt._groups}
    np.testing.assert_allclose(sorted(rates.values()), [2.5e-3, 5e-3, 1e-2], rtol=1e-6)
    b5 = _block_keys(model, "block5")
    assert opt.multiplier(next(w for w in model.weights if w.path == b5[0])) == 0.5
    assert _all_differ(probe.begin[1], probe.end[1], _block_keys(model, "block4") + b5)
    model.save(tmp_path / "d.keras")
    loaded = keras.models.load_model(tmp_path / "d.keras")
    assert isinstance(loaded.optimizer, tt.DiscriminativeOptimizer)
    assert len(loaded.optimizer.variables) == len(opt.variables)


# ------------------------------------------------------- fine_tune


def test_fine_tune_two_phases_one_history():
    model = _vgg()
    x, y = _data()
    start = weights_by_name(model)
    probe = Probe()
    history = tt.fine_tune(model, (x, y), (x, y), head_epochs=2, fine_tune_epochs=2,
                           blocks="block5", batch_size=BATCH, cache_features=False, verbose=0,
                           callbacks=[probe])
    assert history.epoch == [0, 1, 2, 3] and history.history["stage"] == [0, 0, 1, 1]
    head, tune = DEFAULT_HEAD_LR, DEFAULT_FINE_TUNE_LR
    np.testing.assert_allclose(history.history["learning_rate"], [head, head, tune, tune], rtol=1e-6)
    assert {"loss", "accuracy", "val_loss", "val_accuracy"} <= set(history.history)
    b5 = _block_keys(model, "block5")
    other = [w.path for w in tt.get_backbone_model(model).weights if w.path not in b5]
    assert _same(start, probe.end[1], b5 + other)
    assert _all_differ(start, probe.end[3], b5) and _same(start, probe.end[3], other)


def test_fine_tune_finds_the_model_parts_once(monkeypatch, tinycam):
    """Backbone, head and blocks are found once per model, not once per helper or stage."""
    from tfx_transfer.models import parts as parts_module

    found = {"layer search": 0, "block partition": 0}
    search, partition = parts_module.ModelParts._one, parts_module.backbone_blocks

    def counted_search(self, kind, what):
        found["layer search"] += 1
        return search(self, kind, what)

    def counted_partition(spec, backbone):
        found["block partition"] += 1
        return partition(spec, backbone)

    monkeypatch.setattr(parts_module.ModelParts, "_one", counted_search)
    monkeypatch.setattr(parts_module, "backbone_blocks", counted_partition)
    model = tt.build_transfer_model(tinycam, 2, input_shape=48, weights=None)
    x, y = tiny_pixels(N, size=48), tiny_labels(N)
    for _ in range(2):  # cached head phase, then two stages with per-block rates
        history = tt.fine_tune(model, (x, y), head_epochs=1, fine_tune_epochs=2, gradual=1,
                               discriminative=2.6, optimizer=SGD, batch_size=BATCH, verbose=0)
        assert history.history["stage"] == [0, 1, 2]
        assert found == {"layer search": 1, "block partition": 1}  # the Backbone layer; blocks


def test_fine_tune_stage_at_epoch_zero_when_no_head_phase():
    model = _vgg()
    history = tt.fine_tune(model, _data(), head_epochs=0, fine_tune_epochs=1, optimizer=SGD,
                           batch_size=BATCH, verbose=0)
    assert history.history["stage"] == [1]
    assert history.history["learning_rate"][0] == pytest.approx(DEFAULT_FINE_TUNE_LR)


def test_cached_features_match_plain_training():
    """Same seed, same order (shuffle=False), dropout included: same weights both ways."""
    x, y = _data()
    results = []
    for cache in (False, True):
        model = _vgg(seed=3)
        history = tt.fine_tune(model, (x, y), (x, y), head_epochs=2, fine_tune_epochs=1,
                               blocks="block5", batch_size=BATCH, cache_features=cache,
                               shuffle=False, verbose=0)
        results.append((weights_by_name(model), history))
    (plain, h_plain), (cached, h_cached) = results
    assert h_cached.epoch == h_plain.epoch == [0, 1, 2]
    assert h_cached.history["stage"] == h_plain.history["stage"] == [0, 0, 1]
    for key in plain:
        np.testing.assert_allclose(cached[key], plain[key], rtol=1e-4, atol=1e-6, err_msg=key)
    initial = weights_by_name(_vgg(seed=3))
    assert _all_differ(initial, cached, [k for k in plain if k.startswith(("head/", "block5"))])
    np.testing.assert_allclose(h_cached.history["loss"], h_plain.history["loss"], rtol=1e-4)
    # the validation features are cached too: the same validation metrics both ways
    for key in ("val_loss", "val_accuracy"):
        np.testing.assert_allclose(h_cached.history[key], h_plain.history[key], rtol=1e-4,
                                   err_msg=key)


def test_cache_auto_resolution_and_explicit_errors(tmp_path):
    x, y = _data()
    plain = _vgg()
    parts = tt.model_parts(plain)
    assert ft._resolve_cache("auto", parts, (x, y), [], 2, {}) is True
    assert ft._resolve_cache("auto", parts, (x, y), [], 0, {}) is False
    saving = [keras.callbacks.ModelCheckpoint(str(tmp_path / "c.keras"))]
    assert ft._resolve_cache("auto", parts, (x, y), saving, 2, {}) is False
    assert ft._resolve_cache("auto", parts, (x, y), [], 2, {"steps_per_epoch": 3}) is False
    augmented = tt.model_parts(
        _vgg(augmentation=keras.layers.RandomFlip("horizontal", name="augmentation")))
    assert ft._random_layers(augmented) == ["augmentation"]
    assert ft._resolve_cache("auto", augmented, (x, y), [], 2, {}) is False
    with pytest.raises(ValueError, match=r"random augmentation layer\(s\) \['augmentation'\]"):
        tt.fine_tune(augmented.model, (x, y), cache_features=True, verbose=0)
    with pytest.raises(ValueError, match="ModelCheckpoint"):
        tt.fine_tune(plain, (x, y), cache_features=True, callbacks=saving, verbose=0)
    with pytest.raises(ValueError, match="pass backup_dir="):
        tt.fine_tune(plain, (x, y), callbacks=[keras.callbacks.BackupAndRestore(str(tmp_path))])
    with pytest.raises(ValueError, match="Unknown block"):
        tt.fine_tune(plain, (x, y), blocks="conv5", verbose=0)


def test_fine_tune_with_checkpoint_early_stopping_reduce_lr(tmp_path):
    model = _vgg()
    x, y = _data()
    never_better = dict(monitor="loss", min_delta=1e9)
    callbacks = [
        keras.callbacks.ModelCheckpoint(str(tmp_path / "best.keras"), monitor="val_loss",
                                        save_best_only=True),
        keras.callbacks.ReduceLROnPlateau(factor=0.5, patience=0, min_lr=0, **never_better),
        keras.callbacks.EarlyStopping(patience=1, start_from_epoch=2, **never_better),
    ]
    history = tt.fine_tune(model, (x, y), (x, y), head_epochs=2, fine_tune_epochs=3,
                           blocks="block5", optimizer=SGD, batch_size=BATCH, verbose=0,
                           callbacks=callbacks)
    # EarlyStopping watched phase 2 only: epoch 2 sets its baseline, epoch 3 stops the run.
    assert history.epoch == [0, 1, 2, 3] and history.history["stage"] == [0, 0, 1, 1]
    # ReduceLROnPlateau halves after every epoch but the first (it logs the rate before
    # halving); at epoch 2 the stage sets the default fine_tune_lr, which is then halved twice.
    lrs = history.history["learning_rate"]
    head, tune = DEFAULT_HEAD_LR, DEFAULT_FINE_TUNE_LR
    np.testing.assert_allclose(lrs, [head, head, tune, tune / 2], rtol=1e-6)
    assert _lr(model) == pytest.approx(tune / 4)
    best = keras.models.load_model(tmp_path / "best.keras")
    assert best.output.shape == model.output.shape


def test_early_stopping_in_phase_one_ends_the_run_cached():
    model = _vgg()
    start = weights_by_name(tt.get_backbone_model(model))
    stop = keras.callbacks.EarlyStopping(monitor="loss", min_delta=1e9, patience=1)
    history = tt.fine_tune(model, _data(), head_epochs=3, fine_tune_epochs=2, optimizer=SGD,
                           batch_size=BATCH, cache_features=True, verbose=0, callbacks=[stop])
    assert history.epoch == [0, 1] and history.history["stage"] == [0, 0]
    assert _same(start, weights_by_name(tt.get_backbone_model(model)), start)


def test_cached_run_carries_reduced_learning_rate_into_phase_two_like_plain():
    rates = []
    for cache in (False, True):
        reduce = keras.callbacks.ReduceLROnPlateau(monitor="loss", min_delta=1e9, factor=0.5,
                                                   patience=0, min_lr=0)
        history = tt.fine_tune(_vgg(), _data(), head_epochs=2, fine_tune_epochs=1,
                               fine_tune_lr=None, optimizer=SGD, batch_size=BATCH,
                               cache_features=cache, verbose=0, callbacks=[reduce])
        rates.append(history.history["learning_rate"])
    head = DEFAULT_HEAD_LR
    np.testing.assert_allclose(rates[0], [head, head, head / 2], rtol=1e-6)
    np.testing.assert_allclose(rates[1], rates[0], rtol=1e-6)


class Killed(Exception):
    pass


class Kill(keras.callbacks.Callback):
    def __init__(self, at_epoch: int):
        super().__init__()
        self.at_epoch, self.weights = at_epoch, None

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.at_epoch:
            self.weights = weights_by_name(self.model)
            raise Killed(f"simulated kill at epoch {epoch}")


@pytest.mark.parametrize("cache", [False, True])
def test_resume_after_kill_in_phase_two_lands_in_phase_two(tmp_path, cache):
    x, y = _data()
    backup = tmp_path / "backup"
    args = dict(head_epochs=2, fine_tune_epochs=2, blocks="block5", fine_tune_lr=2e-5,
                batch_size=BATCH, backup_dir=backup, cache_features=cache, verbose=0)
    kill = Kill(at_epoch=3)  # the backup holds epochs 0-2 (one phase-2 epoch)
    with pytest.raises(Killed):  # no validation data: nothing here reads it
        tt.fine_tune(_vgg(seed=0), (x, y), callbacks=[kill], **args)
    assert backup_epoch(backup) == 3

    model = _vgg(seed=1)  # a fresh process would rebuild the model from scratch
    probe = Probe()
    history = tt.fine_tune(model, (x, y), callbacks=[probe], **args)
    assert history.epoch == [3] and history.history["stage"] == [1]
    assert list(probe.begin) == [3]
    assert probe.trainable[3] == ["block5_conv1", "block5_conv2"]
    assert probe.lr[3] == pytest.approx(2e-5)
    assert probe.iterations[3] == N // BATCH  # phase-2 optimizer state restored (1 epoch of steps)
    for key, value in kill.weights.items():
        np.testing.assert_array_equal(probe.begin[3][key], value, err_msg=key)
    assert not backup.exists()  # finished: BackupAndRestore deleted its backup


def test_infer_loss():
    assert ft.infer_loss(np.array([0, 1, 2]), 3) == "sparse_categorical_crossentropy"
    assert ft.infer_loss(np.array([[0], [1]]), 2) == "sparse_categorical_crossentropy"
    assert ft.infer_loss(np.eye(3, dtype="float32"), 3) == "categorical_crossentropy"


@needs_tf
def test_fine_tune_tf_data_one_hot_cached():
    import tensorflow as tf

    x, y = _data()
    onehot = np.eye(2, dtype="float32")[y]
    ds = tf.data.Dataset.from_tensor_slices((x, onehot)).shuffle(8, seed=0).batch(BATCH)
    model = _vgg()
    history = tt.fine_tune(model, ds, ds, head_epochs=1, fine_tune_epochs=1, optimizer=SGD,
                           verbose=0)
    assert model.loss == "categorical_crossentropy"
    assert history.history["stage"] == [0, 1] and "val_accuracy" in history.history
    with pytest.raises(ValueError, match="repeats forever"):
        tt.fine_tune(_vgg(), ds.repeat(), head_epochs=1, fine_tune_epochs=0,
                     cache_features=True, verbose=0)
