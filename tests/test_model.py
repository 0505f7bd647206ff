"""build_transfer_model: frozen backbone, preprocessing inside, head, weights, errors."""

import io
import json
import time
import zipfile
from pathlib import Path

import h5py
import keras
import numpy as np
import pytest

import tfx_transfer as tt
from tests.helpers import tiny_labels, tiny_pixels, weights_by_name
from tests.tiny_backbone import tinycam_registered
from tfx_transfer.models import weights as weights_mod


def _fit_briefly(model, x, y, epochs=2):
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="sparse_categorical_crossentropy")
    model.fit(x, y, epochs=epochs, batch_size=4, verbose=0)


def test_frozen_backbone_and_bn_stats_unchanged_by_fit_head_trains(tinybn):
    model = tt.build_transfer_model(tinybn, 2, input_shape=(32, 32, 3), weights=None,
                                    head="avg")
    base, head = tt.get_backbone_model(model), tt.get_head(model)
    assert base.trainable_weights == [] and not base.trainable
    assert {id(w) for w in model.trainable_weights} == {id(w) for w in head.trainable_weights}
    before_base, before_head = weights_by_name(base), weights_by_name(head)
    moving = [k for k in before_base if "moving_mean" in k or "moving_variance" in k]
    assert len(moving) == 4
    _fit_briefly(model, tiny_pixels(8), tiny_labels(8))
    after_base, after_head = weights_by_name(base), weights_by_name(head)
    for key, value in before_base.items():
        np.testing.assert_array_equal(value, after_base[key], err_msg=key)
    assert all(not np.array_equal(before_head[k], after_head[k]) for k in before_head)


@pytest.mark.parametrize(
    "backbone,module",
    [("vgg16", "vgg16"), ("resnet50", "resnet50"), ("mobilenetv2", "mobilenet_v2"),
     ("densenet121", "densenet"), ("resnet50v2", "resnet_v2")],
)
def test_uint8_pixels_match_manual_preprocess_input(backbone, module):
    """The registry's preprocessing mode of each backbone == keras.applications' function
    (on tinycam registered with that mode: the backbone's layers do not matter here)."""
    with tinycam_registered(preprocessing=tt.get_backbone(backbone).preprocessing) as name:
        model = tt.build_transfer_model(name, 3, input_shape=(32, 32, 3), weights=None)
    x = tiny_pixels(2)
    expected_in = getattr(keras.applications, module).preprocess_input(x.astype("float32"))
    manual = tt.get_head(model)(tt.get_backbone_model(model)(expected_in, training=False))
    got = model.predict(x, verbose=0)
    np.testing.assert_allclose(got, keras.ops.convert_to_numpy(manual), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.predict(x.astype("float32"), verbose=0), got, atol=1e-7)


@pytest.mark.parametrize("head,layers", [
    ("flatten", ["flatten", "fc", "dropout", "predictions"]),
    ("avg", ["avg_pool", "dropout", "predictions"]),
    ("max", ["max_pool", "dropout", "predictions"]),
])
def test_heads(head, layers, tinycam):
    model = tt.build_transfer_model(tinycam, 4, input_shape=(32, 32, 3), weights=None,
                                    head=head, units=16, dropout=0.3)
    assert [layer.name for layer in tt.get_head(model).layers] == layers
    assert tt.get_head(model).get_layer("dropout").rate == 0.3
    assert model.output.shape == (None, 4)
    assert tt.get_head(model).get_layer("predictions").dtype_policy.compute_dtype == "float32"


def test_weights_file_from_backbone_loads_bit_identical(tmp_path, tinybn):
    source = tt.build_transfer_model(tinybn, 2, input_shape=(32, 32, 3), weights=None)
    path = tmp_path / "backbone.weights.h5"
    tt.get_backbone_model(source).save_weights(path)
    loaded = tt.build_transfer_model(tinybn, 2, input_shape=(32, 32, 3), weights=path)
    a, b = weights_by_name(tt.get_backbone_model(source)), weights_by_name(
        tt.get_backbone_model(loaded))
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def _write_keras2_notop(model, path):
    """The layout of Keras's published *_notop.h5 files (Keras 2 HDF5)."""
    with h5py.File(path, "w") as f:
        names = [layer.name for layer in model.layers if layer.weights]
        f.attrs["layer_names"] = [n.encode() for n in names]
        for layer in model.layers:
            if not layer.weights:
                continue
            group = f.create_group(layer.name)
            wnames = [f"{layer.name}/{w.name}:0".encode() for w in layer.weights]
            group.attrs["weight_names"] = wnames
            for wname, w in zip(wnames, layer.weights):
                group.create_dataset(wname.decode(), data=w.numpy())


def test_keras2_notop_h5_loads_bit_identical(tmp_path, tinycam):
    spec = tt.get_backbone(tinycam)
    reference = spec.build((32, 32, 3))
    path = tmp_path / "tinycam_weights_tf_dim_ordering_tf_kernels_notop.h5"
    _write_keras2_notop(reference, path)
    model = tt.build_transfer_model(tinycam, 2, input_shape=(32, 32, 3), weights=str(path))
    for w_ref, w in zip(reference.weights, tt.get_backbone_model(model).weights):
        np.testing.assert_array_equal(w_ref.numpy(), w.numpy())


def test_keras_roundtrip_safe_mode(tmp_path, tinycam):
    model = tt.build_transfer_model(tinycam, 3, input_shape=(32, 32, 3), weights=None,
                                    head="avg", augmentation="light")
    x = tiny_pixels(3)
    path = tmp_path / "model.keras"
    model.save(path)
    reloaded = keras.models.load_model(path, safe_mode=True)
    np.testing.assert_array_equal(model.predict(x, verbose=0), reloaded.predict(x, verbose=0))
    assert tt.get_backbone_model(reloaded).name == tinycam
    assert not any(type(layer).__name__ == "Lambda" for layer in reloaded._flatten_layers())


@pytest.mark.parametrize("kwargs,message", [
    (dict(backbone="vgg61"), r"Unknown backbone 'vgg61'. Valid names: .*resnet50"),
    (dict(num_classes=1), r"num_classes=1: need an integer of at least 2"),
    (dict(input_shape=(16, 16, 3)), r"smaller than the minimum input size of backbone 'vgg16', 32x32"),
    (dict(input_shape=(32, 32, 1)), r"has 1 channel\(s\).*RGB"),
    (dict(backbone="xception", input_shape=(64, 64, 3)), r"minimum input size of backbone 'xception', 71x71"),
    (dict(head="gap"), r"head='gap' is not one of"),
    (dict(weights="/nonexistent/w.h5"), r"weights='/nonexistent/w.h5': no such file"),
])
def test_errors(kwargs, message):
    args = dict(backbone="vgg16", num_classes=3, input_shape=(32, 32, 3), weights=None)
    args.update(kwargs)
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        tt.build_transfer_model(args.pop("backbone"), args.pop("num_classes"), **args)


def test_weights_file_that_does_not_fit_names_the_layer(tmp_path, tinycam, tinybn):
    other = tt.get_backbone(tinycam).build((32, 32, 3))
    path = tmp_path / "tinybn.weights.h5"
    tt.get_backbone(tinybn).build((32, 32, 3)).save_weights(path)
    with pytest.raises(ValueError, match=r"does not fit backbone .tinycam.*b1_conv|does not fit backbone .tinycam.*\d+ variables"):
        tt.build_transfer_model(tinycam, 2, input_shape=(32, 32, 3), weights=path)
    # same layer names, different shapes: a different-width model
    bad = tmp_path / "tinycam_bad.h5"
    _write_keras2_notop(other, bad)
    with h5py.File(bad, "a") as f:
        del f["b1_conv"]["b1_conv/kernel:0"]
        f["b1_conv"].create_dataset("b1_conv/kernel:0", data=np.zeros((3, 3, 3, 8)))
    with pytest.raises(ValueError, match=r"does not fit layer 'b1_conv'.*\(3, 3, 3, 16\)"):
        tt.build_transfer_model(tinycam, 2, input_shape=(32, 32, 3), weights=bad)


def test_offline_imagenet_fails_fast_with_the_way_out(monkeypatch, tmp_path):
    # a black-holed network: connections hang; the probe must give up within seconds
    monkeypatch.delenv("TFX_TRANSFER_OFFLINE", raising=False)
    monkeypatch.setattr(weights_mod, "keras_cache_dir", lambda: tmp_path)
    from keras.src.backend import config
    monkeypatch.setattr(config, "keras_home", lambda: str(tmp_path))

    def hang(*args, **kwargs):  # as a black hole does: no answer, then a timeout
        time.sleep(60)
        raise TimeoutError("timed out")

    monkeypatch.setattr(weights_mod.socket, "create_connection", hang)
    start = time.monotonic()
    with pytest.raises(tt.WeightsUnavailableError) as info:
        tt.build_transfer_model("vgg16", 2, input_shape=(32, 32, 3), weights="imagenet")
    assert time.monotonic() - start < 10
    message = str(info.value)
    assert "'vgg16'" in message
    assert "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5" in message
    assert "tfx-transfer weights fetch vgg16" in message and "weights=" in message


def test_offline_flag_skips_network(monkeypatch, tmp_path):
    monkeypatch.setenv("TFX_TRANSFER_OFFLINE", "1")
    from keras.src.backend import config
    monkeypatch.setattr(config, "keras_home", lambda: str(tmp_path))
    connections = []  # the probe would run in a thread: record, do not raise there
    monkeypatch.setattr(weights_mod.socket, "create_connection",
                        lambda *args, **kwargs: connections.append(args))
    # VGG16: any keras.applications backbone takes this path (the file is asked for after the
    # architecture is built), and VGG16 builds in a fraction of ResNet50's time
    with pytest.raises(tt.WeightsUnavailableError, match="TFX_TRANSFER_OFFLINE is set"):
        tt.build_transfer_model("vgg16", 2, input_shape=(32, 32, 3), weights="imagenet")
    assert connections == []  # not even a probe


def test_cached_imagenet_file_is_used_without_network(monkeypatch, tmp_path):
    """A file already in the Keras cache is loaded offline (what `weights fetch` prepares)."""
    monkeypatch.setenv("TFX_TRANSFER_OFFLINE", "1")
    from keras.src.backend import config
    monkeypatch.setattr(config, "keras_home", lambda: str(tmp_path))
    reference = tt.get_backbone("vgg16").build((32, 32, 3))
    (tmp_path / "models").mkdir()
    reference.save_weights(tmp_path / "ref.weights.h5")
    # Keras's applications load the cached notop file with model.load_weights (Keras 2 h5)
    cached = tmp_path / "models" / "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
    _write_keras2_notop(reference, cached)
    # our stand-in file cannot carry the published hash: let Keras skip its hash check
    from keras.src.utils import file_utils
    original = file_utils.get_file
    monkeypatch.setattr(file_utils, "get_file",
                        lambda *a, **k: original(*a, **{**k, "file_hash": None}))
    model = tt.build_transfer_model("vgg16", 2, input_shape=(32, 32, 3), weights="imagenet")
    for w_ref, w in zip(reference.weights, tt.get_backbone_model(model).weights):
        np.testing.assert_array_equal(w_ref.numpy(), w.numpy())


@pytest.mark.slow
@pytest.mark.skipif(keras.backend.backend() == "tensorflow",
                    reason="for the other Keras backends (make test-jax runs it): on the "
                    "TensorFlow backend, the fresh process of test_core_promises.py::"
                    "test_every_saved_kind_loads_in_a_new_process_with_plain_keras_and_predicts"
                    "_the_same checks the same (one process fewer to start)")
def test_import_registers_custom_objects_and_keeps_tensorflow_parts_lazy():
    import subprocess
    import sys

    code = ("import sys, keras, tfx_transfer; "
            "names = keras.saving.get_custom_objects(); "
            "print(all(f'tfx_transfer>{n}' in names for n in ('Preprocess', 'Backbone', "
            "'TransferModel', 'FuseProbabilities', 'DiscriminativeOptimizer', 'Augmentation')), "
            "'tfx_transfer.data.folder' in sys.modules, 'tfx_transfer.export.saved_model' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["True", "False", "False"]


LEGACY = Path(__file__).parent / "data" / "legacy_v0_1_tinycam.keras"


def _weight_paths(keras_file) -> list[str]:
    """Every group and dataset path inside a .keras file's weights (its layout)."""
    paths: list[str] = []
    with zipfile.ZipFile(keras_file) as archive, \
            h5py.File(io.BytesIO(archive.read("model.weights.h5")), "r") as f:
        f.visit(paths.append)
    return paths


def _keras_version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(".")[:2])


def _written_by() -> str:
    with zipfile.ZipFile(LEGACY) as archive:
        return json.loads(archive.read("metadata.json"))["keras_version"]


@pytest.mark.skipif(_keras_version(keras.__version__) < _keras_version(_written_by()),
                    reason=f"the file was written by Keras {_written_by()}: an older Keras cannot "
                           "read its layer configs (e.g. GlorotUniform's input_axes)")
def test_legacy_v0_1_file_loads_predicts_and_knows_its_parts(tinycam, tmp_path):
    expected = np.load(LEGACY.with_suffix(".npz"))
    model = tt.load_model(LEGACY)
    assert isinstance(model, tt.TransferModel)
    np.testing.assert_allclose(model.predict(expected["x"], verbose=0), expected["probs"],
                               rtol=0, atol=1e-6)
    assert model.backbone is model.get_layer("backbone") is tt.get_backbone_layer(model)
    assert model.backbone_model is tt.get_backbone_model(model)
    assert model.backbone_model.name == tinycam
    assert model.head is tt.get_head(model) and model.head.layers[-1].name == "predictions"
    assert model.preprocess.mode == "tf"
    assert type(model.augmentation).__name__ == "Augmentation"
    assert {name: [layer.name for layer in layers] for name, layers in model.blocks.items()} \
        == {"b1": ["b1_conv"], "b2": ["b2_conv"], "b3": ["b3_conv"]}
    assert tt.unfreeze(model, "b3") == ["b3_conv"]
    # The properties are not saved state: a file written now has v0.1's weights layout.
    model.save(tmp_path / "again.keras")
    assert _weight_paths(tmp_path / "again.keras") == _weight_paths(LEGACY)


def test_parts_are_found_once_and_agree_with_the_functions():
    model = tt.build_transfer_model("vgg16", 2, input_shape=32, weights=None,
                                    augmentation=keras.layers.RandomFlip(name="my_flip"))
    assert model.augmentation.name == "my_flip"  # found by place, whatever its name
    assert model.backbone is model.get_layer("backbone") and model.backbone.model.name == "vgg16"
    assert model.head is model.get_layer("head") and model.preprocess.mode == "caffe"
    assert model.blocks is model.blocks  # computed once, kept
    assert list(model.blocks) == tt.block_names(model) == [f"block{i}" for i in range(1, 6)]
    assert list(model.blocks["block5"]) == list(tt.backbone_blocks(
        "vgg16", model.backbone_model)["block5"])
    with pytest.raises(TypeError):
        model.blocks["block5"] = ()  # read-only: the kept partition cannot be changed
    assert tt.build_transfer_model("vgg16", 2, input_shape=32, weights=None).augmentation is None
    # A model of another class holding the same layers: the functions find the same parts.
    plain = keras.Model(model.inputs, model.outputs)
    parts = tt.model_parts(plain)
    assert (parts.backbone, parts.head, parts.preprocess, parts.augmentation) == (
        model.backbone, model.head, model.preprocess, model.augmentation)
    assert tt.get_backbone_model(plain) is model.backbone_model
    assert [layer.name for layer in parts.blocks["block1"]] == [
        layer.name for layer in model.blocks["block1"]]


def test_a_model_without_a_part_says_which():
    members = [tt.build_transfer_model("vgg16", 2, input_shape=32, weights=None)
               for _ in range(2)]
    fused = tt.ensemble(members)
    with pytest.raises(ValueError, match=r"expected one Backbone layer, found \["):
        _ = fused.backbone
    inputs = keras.Input((4,))
    dense = tt.TransferModel(inputs, keras.layers.Dense(2)(inputs))
    with pytest.raises(ValueError, match="has no layer named 'head'"):
        _ = dense.head
    with pytest.raises(ValueError, match="expected one Preprocess layer, found"):
        _ = tt.model_parts(dense).preprocess


def test_a_missing_weights_file_fails_before_the_backbone_is_built(monkeypatch):
    from tfx_transfer.models.backbones import BackboneSpec

    monkeypatch.setattr(BackboneSpec, "build", lambda *a, **k: pytest.fail("the backbone was built"))
    with pytest.raises(FileNotFoundError, match=r"weights='/nonexistent/w.h5': no such file"):
        tt.build_transfer_model("inceptionresnetv2", 2, weights="/nonexistent/w.h5")
