"""Augmentation: ImageDataGenerator keywords -> Keras preprocessing layers, both ways of use."""

from __future__ import annotations

import inspect
import warnings

import keras
import numpy as np
import pytest
from PIL import Image

tf = pytest.importorskip("tensorflow")

from tfx_transfer.data.augmentation import Augmentation, as_augmentation  # noqa: E402
from tfx_transfer.data.augmentation_layers import (  # noqa: E402
    RandomAffine,
    RandomBrightnessScale,
    RandomChannelShift,
    idg_affine_transform,
)
from tfx_transfer.data.preview import preview_augmentation  # noqa: E402

IDG_KWARGS = dict(
    rotation_range=20,
    width_shift_range=0.1,
    height_shift_range=8,  # pixels (>= 1), like IDG
    shear_range=10,  # degrees
    zoom_range=0.2,
    horizontal_flip=True,
    vertical_flip=True,
    brightness_range=[0.8, 1.2],
    channel_shift_range=20.0,
    fill_mode="constant",
    cval=7.0,
)


def images(n=4, size=32, seed=0) -> np.ndarray:
    ramp = np.add.outer(np.arange(size), 3 * np.arange(size)) % 256
    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 40, (n, size, size, 3))
    return np.clip(ramp[None, :, :, None] + noise, 0, 255).astype("uint8")


def affine_of(aug: Augmentation) -> RandomAffine:
    (affine,) = [layer for layer in aug.augmenters if isinstance(layer, RandomAffine)]
    return affine


def test_idg_kwargs_map_to_layers_with_the_same_ranges():
    aug = Augmentation(**IDG_KWARGS)
    assert [type(layer).__name__ for layer in aug.augmenters] == [
        "RandomAffine", "RandomChannelShift", "RandomBrightnessScale",
    ]
    affine = affine_of(aug)
    assert affine.rotation_range == 20.0  # U(-20, 20) degrees
    assert affine.width_shift_range == 0.1  # fraction of the width
    assert affine.height_shift_range == 8  # int >= 1: pixels
    assert affine.shear_range == 10.0  # degrees
    assert affine.zoom_range == [0.8, 1.2]  # zx, zy independently in [1 - z, 1 + z]
    assert affine.horizontal_flip and affine.vertical_flip
    assert (affine.fill_mode, affine.fill_value, affine.interpolation) == ("constant", 7.0, "bilinear")
    assert aug.augmenters[1].intensity == 20.0
    assert aug.augmenters[2].factor_range == [0.8, 1.2]


@pytest.mark.parametrize(
    "params",
    [
        dict(theta=17.0, tx=3.0, ty=-2.0, shear=12.0, zx=0.9, zy=1.15, flip_horizontal=True, flip_vertical=False),
        dict(theta=-30.0, tx=0.0, ty=5.0, shear=0.0, zx=1.2, zy=1.2, flip_horizontal=False, flip_vertical=True),
    ],
)
def test_affine_matrix_reproduces_legacy_image_data_generator_exactly(params):
    pytest.importorskip("scipy")  # the legacy generator resamples with scipy
    from keras.src.legacy.preprocessing.image import ImageDataGenerator

    x = np.random.default_rng(0).random((33, 33, 3)).astype("float32") * 255
    legacy = ImageDataGenerator(fill_mode="nearest").apply_transform(x, dict(params))

    def one(v):
        return np.array([v], "float32")

    flips = [one(-1.0 if params[k] else 1.0) for k in ("flip_horizontal", "flip_vertical")]
    transform = idg_affine_transform(
        RandomAffine().backend, 33, 33,
        *[one(params[k]) for k in ("theta", "tx", "ty", "shear", "zx", "zy")], *flips,
    )
    ours = np.asarray(keras.ops.image.affine_transform(x[None], transform, fill_mode="nearest"))[0]
    np.testing.assert_allclose(ours, legacy, atol=0.01)


def dot_columns(out: np.ndarray) -> np.ndarray:
    return np.array([np.argwhere(img[..., 0] > 100)[:, 1].mean() for img in out])


def test_pixel_shifts_follow_idg_int_float_and_list_rules():
    x = np.zeros((64, 21, 21, 3), "float32")
    x[:, 10, 10] = 255
    int_shift = RandomAffine(width_shift_range=3, interpolation="nearest", fill_mode="constant", seed=0)
    moved = np.round(dot_columns(np.asarray(int_shift(x, training=True))) - 10)
    assert set(moved) == {-2.0, -1.0, 0.0, 1.0, 2.0}  # np.random.choice(3) * (+-1)
    list_shift = RandomAffine(width_shift_range=[4, 6], interpolation="nearest", fill_mode="constant", seed=1)
    moved = np.round(dot_columns(np.asarray(list_shift(x, training=True))) - 10)
    assert set(moved) == {-6.0, -4.0, 4.0, 6.0}
    fraction = RandomAffine(width_shift_range=0.2, height_shift_range=0.0, seed=2, fill_mode="constant")
    moved = dot_columns(np.asarray(fraction(x, training=True))) - 10
    assert np.all(np.abs(moved) <= 0.2 * 21 + 0.5) and np.ptp(moved) > 2


def test_zoom_pairs_nearest_interpolation_and_defaults():
    affine = affine_of(Augmentation(zoom_range=[0.8, 1.3], interpolation_order=0))
    assert affine.zoom_range == [0.8, 1.3]
    assert affine.interpolation == "nearest" and affine.fill_mode == "nearest"  # IDG's default fill
    assert affine.rotation_range == 0 and not affine.horizontal_flip
    assert not Augmentation().augmenters and not Augmentation().is_random


def test_brightness_multiplies_and_channel_shift_clips_like_idg():
    x = images(8).astype("float32")
    y = np.asarray(RandomBrightnessScale([0.5, 0.9], seed=1)(x, training=True))
    ratio = y.reshape(8, -1).sum(1) / x.reshape(8, -1).sum(1)
    assert np.all((ratio >= 0.5) & (ratio <= 0.9)) and np.ptp(ratio) > 0
    per_image = y / np.maximum(x, 1e-6)
    assert np.allclose(per_image[x > 0].reshape(-1)[:10], per_image[x > 0].reshape(-1)[0], atol=1e-4)
    shifted = np.asarray(RandomChannelShift(50.0, seed=2)(x, training=True))
    for src, out in zip(x, shifted):
        assert out.min() >= src.min() and out.max() <= src.max()
        delta = (out - src)[(out > src.min()) & (out < src.max())]
        assert np.allclose(delta, delta[0], atol=1e-3)  # one shift for all channels


def test_identity_at_inference_random_in_training_float32_out():
    aug = Augmentation(**IDG_KWARGS, seed=0)
    x = images()
    y = aug(x)
    assert y.dtype == "float32"
    np.testing.assert_array_equal(np.asarray(y), x.astype("float32"))
    y_train = np.asarray(aug(x, training=True))
    assert y_train.shape == x.shape and not np.allclose(y_train, x)
    assert 0 <= y_train.min() and y_train.max() <= 255


def test_as_model_layer_identity_in_predict_and_keras_file_round_trip(tmp_path):
    inputs = keras.Input((32, 32, 3))
    outputs = keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(Augmentation(**IDG_KWARGS, seed=3)(inputs)))
    model = keras.Model(inputs, outputs)
    plain = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(inputs)))
    plain.layers[-1].set_weights(model.layers[-1].get_weights())
    x = images()
    np.testing.assert_allclose(model.predict(x, verbose=0), plain.predict(x, verbose=0), rtol=1e-6)
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras", safe_mode=True)
    aug = loaded.get_layer("augmentation")
    assert isinstance(aug, Augmentation)
    assert {k: aug.get_config()[k] for k in IDG_KWARGS} == {
        **IDG_KWARGS, "brightness_range": [0.8, 1.2]
    }
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-6)
    model.compile("sgd", "mse")
    model.fit(x, np.zeros((4, 2)), epochs=1, verbose=0)  # trains through the random layer


def test_existing_idg_kwargs_dict_works_as_is():
    from keras.src.legacy.preprocessing.image import ImageDataGenerator

    defaults = {
        name: p.default for name, p in inspect.signature(ImageDataGenerator.__init__).parameters.items()
        if name != "self"
    }
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        aug = Augmentation(**defaults)  # every keyword at its default: accepted silently
    assert not aug.is_random
    user = {**defaults, "rotation_range": 15, "horizontal_flip": True, "rescale": 1 / 255, "validation_split": 0.2}
    with pytest.warns(UserWarning, match="rescale=.*validation_split=0.2 .*load_image_folder"):
        aug = Augmentation(**user)
    assert affine_of(aug).rotation_range == 15
    assert aug.is_random and "rescale" not in aug.get_config()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"featurewise_center": True, "zca_whitening": True}, r"\['featurewise_center', 'zca_whitening'\]"),
        ({"preprocessing_function": lambda x: x}, "preprocessing_function"),
        ({"rotation": 10, "flip": True}, r"Unknown .*\['flip', 'rotation'\]"),
        ({"data_format": "channels_first"}, "channels_first"),
        ({"preset": "extreme"}, "extreme"),
        ({"mixing": "blend"}, "blend"),
        ({"zoom_range": [0.0, 1.0]}, "zoom_range"),
        ({"fill_mode": "mirror"}, "mirror"),
    ],
)
def test_keywords_without_equivalent_raise_naming_them(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Augmentation(**kwargs)


def test_presets():
    assert not Augmentation(preset="none").is_random
    light, standard, heavy = (Augmentation(preset=p) for p in ("light", "standard", "heavy"))
    assert light.is_random and standard.is_random and heavy.is_random
    assert [type(layer).__name__ for layer in light.augmenters] == ["RandomAffine"]
    assert affine_of(light).rotation_range == 10 and affine_of(light).horizontal_flip
    assert [type(layer).__name__ for layer in standard.augmenters] == ["RandomAffine", "RandomBrightnessScale"]
    assert [type(layer).__name__ for layer in heavy.augmenters] == ["RandomAffine", "RandAugment"]
    assert heavy.mixing == "mixup" and type(heavy.mixer).__name__ == "MixUp"
    assert affine_of(Augmentation(preset="light", rotation_range=45)).rotation_range == 45
    if hasattr(keras.layers, "CutMix"):
        assert type(Augmentation(preset="heavy", mixing="cutmix").mixer).__name__ == "CutMix"
    else:  # Keras 3.8, the floor
        with pytest.raises(ValueError, match=r"mixing='cutmix' needs keras.layers.CutMix.*mixup"):
            Augmentation(preset="heavy", mixing="cutmix")


def test_as_augmentation_is_the_one_coercion_of_every_caller(tmp_path, tinycam):
    """(tinycam, tests/tiny_backbone.py: the coercion is the same for every backbone.)"""
    import tfx_transfer as tt
    from tfx_transfer.training.pretraining import pretrain

    assert as_augmentation(None) is None and as_augmentation("none") is None and as_augmentation("NONE") is None
    aug = Augmentation(rotation_range=5)
    assert as_augmentation(aug) is aug
    assert as_augmentation("Light").settings["rotation_range"] == 10
    built = as_augmentation({"rotation_range": 7, "seed": 3}, name="front")
    assert (built.settings["rotation_range"], built.seed, built.name) == (7, 3, "front")
    with pytest.raises(ValueError, match=r"augmentation='fancy': choose a preset"):
        as_augmentation("fancy")
    with pytest.raises(TypeError, match=r"augmentation=42: pass an Augmentation"):
        as_augmentation(42)
    # the model, the folder loader and pretrain give the same answers and the same errors
    model = tt.build_transfer_model(tinycam, 2, input_shape=32, weights=None,
                                    augmentation={"horizontal_flip": True})
    assert model.get_layer("augmentation").settings["horizontal_flip"] is True
    plain = tt.build_transfer_model(tinycam, 2, input_shape=32, weights=None, augmentation="none")
    assert "augmentation" not in [layer.name for layer in plain.layers]
    with pytest.raises(TypeError, match=r"augmentation=42: pass an Augmentation"):
        tt.build_transfer_model(tinycam, 2, input_shape=32, weights=None, augmentation=42)
    folder = tmp_path / "photos"
    for name in ("a", "b"):
        (folder / name).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(folder / name / "1.png")
    with pytest.raises(TypeError, match=r"augmentation=42: pass an Augmentation"):
        tt.load_image_folder(folder, image_size=8, augmentation=42)
    with pytest.raises(TypeError, match=r"augmentation=42: pass an Augmentation"):
        pretrain(folder, tinycam, tmp_path / "out", image_size=32, epochs=1, augmentation=42)


def test_heavy_as_model_layer_skips_mixing_with_one_warning():
    aug = Augmentation(preset="heavy", seed=0)
    x = images()
    with pytest.warns(UserWarning, match="mixup .* skipped") as record:
        aug(x, training=True)
        aug(x, training=True)
    assert len([w for w in record if "mixup" in str(w.message)]) == 1


def test_map_dataset_batches_and_mixes_one_hot_labels():
    x = images(16)
    labels = np.eye(2, dtype="float32")[np.arange(16) % 2]
    ds = tf.data.Dataset.from_tensor_slices((x, labels)).batch(16)
    out_x, out_y = next(iter(Augmentation(preset="heavy", seed=4).map_dataset(ds)))
    assert out_x.dtype == tf.float32 and out_x.shape == (16, 32, 32, 3)
    assert np.allclose(out_y.numpy().sum(1), 1.0)
    assert not np.all(np.isin(out_y.numpy(), (0.0, 1.0)))  # labels were mixed
    plain = Augmentation(rotation_range=30, seed=1).map_dataset(tf.data.Dataset.from_tensor_slices(x).batch(4))
    first = next(iter(plain)).numpy()
    assert first.shape == (4, 32, 32, 3) and not np.allclose(first, x[:4])
    int_labels = tf.data.Dataset.from_tensor_slices((x, np.arange(16) % 2)).batch(4)
    with pytest.raises(ValueError, match="one-hot"):
        Augmentation(preset="heavy").map_dataset(int_labels)
    with pytest.raises(ValueError, match="batch"):
        Augmentation(rotation_range=10).map_dataset(tf.data.Dataset.from_tensor_slices(x))


def test_preview_augmentation_writes_a_png_grid(tmp_path):
    path = preview_augmentation(images(1)[0], Augmentation(rotation_range=30), tmp_path / "one.png", n=4)
    assert Image.open(path).format == "PNG"
    ds = tf.data.Dataset.from_tensor_slices((images(6), np.arange(6))).batch(3)
    path = preview_augmentation(ds, "standard", tmp_path / "grid.png", n=9)
    with Image.open(path) as img:
        assert img.size[0] > 100 and img.size[1] > 100


# --- engine="keras": the stock Keras preprocessing-layer chain --------------------------------------------------


def keras_chain(size=32, **overrides) -> Augmentation:
    aug = Augmentation(**{**IDG_KWARGS, **overrides}, engine="keras", seed=0)
    aug.build((None, size, size, 3))  # pixel shifts are converted with the image size here
    return aug


def test_keras_engine_builds_stock_layers_with_the_mapped_factors():
    aug = keras_chain()
    rotation, translation, shear, zoom, flip_h, flip_v, shift, brightness = aug.augmenters
    assert [type(layer) for layer in aug.augmenters[:6]] == [
        keras.layers.RandomRotation, keras.layers.RandomTranslation, keras.layers.RandomShear,
        keras.layers.RandomZoom, keras.layers.RandomFlip, keras.layers.RandomFlip,
    ]
    assert (type(shift), type(brightness)) == (RandomChannelShift, RandomBrightnessScale)  # same in both engines
    np.testing.assert_allclose(rotation.factor, (-20 / 360, 20 / 360))  # fraction of a full turn
    assert translation.width_factor == 0.1  # fraction as is
    assert translation.height_factor == 7 / 32  # int 8 px: IDG draws -7..7 px; / the 32-px side
    np.testing.assert_allclose(shear.x_factor, (-np.tan(np.radians(10)), np.tan(np.radians(10))))
    assert shear.y_factor == (0.0, 0.0)
    np.testing.assert_allclose([zoom.height_lower, zoom.height_upper], (-0.2, 0.2))  # 1 + U(-0.2, 0.2)
    np.testing.assert_allclose([zoom.width_lower, zoom.width_upper], (-0.2, 0.2))  # zx drawn on its own
    assert (flip_h.mode, flip_v.mode) == ("horizontal", "vertical")
    for layer in (rotation, translation, shear, zoom):
        assert (layer.fill_mode, layer.fill_value, layer.interpolation) == ("constant", 7.0, "bilinear")
    assert Augmentation(**IDG_KWARGS).engine == "affine"  # the default stays the one-resampling layer
    assert type(Augmentation(width_shift_range=0.2, engine="keras").augmenters[0]) is keras.layers.RandomTranslation


def test_keras_shear_factor_is_tan_of_idg_angle():
    """RandomShear(tan a) == IDG's shear by a without its 1/cos(a) row stretch, about the top-left corner."""
    angle = 25.0
    (shear,) = Augmentation(shear_range=angle, engine="keras").augmenters
    k = shear.x_factor[1]
    x = np.random.default_rng(0).random((1, 33, 33, 3)).astype("float32") * 255
    ours = shear.transform_images(x, {"shear_factor": np.array([[k, 0.0]], "float32")}, training=True)

    def one(v):
        return np.array([v], "float32")

    # IDG's matrix for shear -a, rows scaled by 1/cos(a), center moved to the corner (tx = tan(a) * cy)
    transform = idg_affine_transform(
        RandomAffine().backend, 33, 33, one(0.0), one(np.tan(np.radians(angle)) * 16), one(0.0), one(-angle),
        one(1.0), one(1 / np.cos(np.radians(angle))), one(1.0), one(1.0),
    )
    idg = keras.ops.image.affine_transform(x, transform, fill_mode=shear.fill_mode)
    np.testing.assert_allclose(np.asarray(ours), np.asarray(idg), atol=0.05)


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"shear_range": 50}, "shear_range=50.*45 degrees"),
        ({"zoom_range": [0.5, 2.5]}, r"zoom_range=\[0.5, 2.5\].*up to 2"),
        ({"width_shift_range": [4, 6]}, r"width_shift_range=\[4.0, 6.0\].*engine='affine'"),
        ({"engine": "torchvision"}, "torchvision"),
    ],
)
def test_keras_engine_out_of_range_keywords_raise_naming_them(overrides, match):
    with pytest.raises(ValueError, match=match):
        Augmentation(**{"engine": "keras", **overrides})


def test_keras_engine_pixel_shift_needs_a_known_size():
    with pytest.raises(ValueError, match="height_shift_range=8 is in pixels"):
        Augmentation(height_shift_range=8, engine="keras").build((None, None, None, 3))
    with pytest.raises(ValueError, match="more than the image side"):
        Augmentation(height_shift_range=40, engine="keras").build((None, 32, 32, 3))


def test_keras_engine_changes_training_batches_identity_at_inference():
    aug = Augmentation(**IDG_KWARGS, engine="keras", seed=0)
    x = images()
    np.testing.assert_array_equal(np.asarray(aug(x)), x.astype("float32"))
    y = np.asarray(aug(x, training=True))
    assert y.dtype == "float32" and y.shape == x.shape and not np.allclose(y, x)
    assert 0 <= y.min() and y.max() <= 255
    ds = tf.data.Dataset.from_tensor_slices(x).batch(4)
    batch = next(iter(Augmentation(**IDG_KWARGS, engine="keras", seed=1).map_dataset(ds))).numpy()
    assert batch.shape == x.shape and not np.allclose(batch, x)


def test_keras_engine_serialization_round_trip(tmp_path):
    config = keras_chain().get_config()
    assert config["engine"] == "keras"
    assert Augmentation.from_config(config).engine == "keras"
    inputs = keras.Input((32, 32, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(Augmentation(**IDG_KWARGS, engine="keras", seed=3)(inputs))
    model = keras.Model(inputs, keras.layers.Dense(2)(pooled))
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras", safe_mode=True)
    aug = loaded.get_layer("augmentation")
    assert aug.engine == "keras" and [type(a).__name__ for a in aug.augmenters] == [
        type(a).__name__ for a in model.get_layer("augmentation").augmenters
    ]
    assert aug.augmenters[1].height_factor == 7 / 32
    x = images()
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-6)
    assert preview_augmentation(x, aug, tmp_path / "keras.png", n=4) == tmp_path / "keras.png"
