"""load_image_folder on generated folders with every kind of real-world file."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

tf = pytest.importorskip("tensorflow")

from tfx_transfer.data import verify as tverify  # noqa: E402
from tfx_transfer.data.decode import decode_and_resize  # noqa: E402
from tfx_transfer.data.folder import ImageFolder, class_weights, load_image_folder  # noqa: E402

RED, GREEN, BLUE, GRAY = (220, 30, 30), (30, 200, 40), (20, 40, 230), (128, 128, 128)


@pytest.fixture(autouse=True)
def _private_verify_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TFX_TRANSFER_CACHE_DIR", str(tmp_path / "verify-cache"))


def solid(color, size=(24, 16)) -> Image.Image:
    """A (width, height) RGB image of one color."""
    return Image.new("RGB", size, color)


def make_messy_folder(root: Path) -> dict[str, list[str]]:
    """A 'cats'/'dogs' folder with every kind of file; returns the expected good and bad paths."""
    cats, dogs = root / "cats", root / "dogs"
    cats.mkdir(parents=True)
    dogs.mkdir()
    solid(RED).save(cats / "rgb.jpg")
    solid(RED).save(cats / "rgb.png")
    solid(GRAY).convert("L").save(cats / "gray.jpg")
    solid(RED).convert("CMYK").save(cats / "cmyk.jpg")
    frames = [solid(RED).convert("P"), solid(BLUE).convert("P")]
    frames[0].save(cats / "anim.gif", save_all=True, append_images=frames[1:], duration=100)
    solid(RED).save(cats / "pic.bmp")
    solid(RED).convert("P").save(cats / "palette.png")
    Image.new("RGBA", (24, 16), RED + (90,)).save(cats / "rgba.png")
    solid(RED).convert("P").save(cats / "palette.bmp")  # TF would read the indices as gray
    solid(RED).save(cats / "photo.tif")  # TF cannot decode TIFF: Pillow path
    solid(RED, (3000, 2000)).save(cats / "huge.jpg")
    solid(RED, (5, 5)).save(cats / "tiny.png")
    for i in range(4):
        solid(BLUE).save(dogs / f"dog{i}.jpg")
    # junk that is ignored silently
    (root / ".DS_Store").write_bytes(b"\x00\x01junk")
    (cats / ".DS_Store").write_bytes(b"\x00\x01junk")
    (cats / "._rgb.jpg").write_bytes(b"\x00\x05\x16\x07AppleDouble")
    (dogs / "Thumbs.db").write_bytes(os.urandom(64))
    (dogs / "desktop.ini").write_text("[.ShellClassInfo]")
    (dogs / ".cache").mkdir()
    solid(BLUE).save(dogs / ".cache" / "hidden.jpg")
    # bad files: must be listed in the warning
    bad = {
        str(cats / "notes.txt"): "not an image",
        str(cats / "empty.jpg"): "empty file",
        str(dogs / "random.jpg"): "cannot be decoded",
        str(dogs / "truncated.jpg"): "cannot be decoded",
    }
    (cats / "notes.txt").write_text("not an image")
    (cats / "empty.jpg").write_bytes(b"")
    (dogs / "random.jpg").write_bytes(os.urandom(300))
    solid(BLUE, (64, 64)).save(dogs / "full.jpg")
    full = (dogs / "full.jpg").read_bytes()
    (dogs / "full.jpg").unlink()
    (dogs / "truncated.jpg").write_bytes(full[: len(full) // 2])
    return {"bad": bad, "cats": 12, "dogs": 4}


def load_quietly(*args, **kwargs) -> ImageFolder:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return load_image_folder(*args, **kwargs)


def all_batches(ds) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = zip(*[(x.numpy(), y.numpy()) for x, y in ds])
    return np.concatenate(xs), np.concatenate(ys)


def test_messy_folder_classes_counts_and_one_warning_listing_exactly_the_bad_files(tmp_path):
    expected = make_messy_folder(tmp_path / "photos")
    with pytest.warns(UserWarning) as record:
        folder = load_image_folder(tmp_path / "photos", image_size=(16, 16), batch_size=4)
    messages = [str(w.message) for w in record if "Skipped" in str(w.message)]
    assert len(messages) == 1
    message = messages[0]
    assert "Skipped 4 file(s)" in message
    listed = {line.strip().split(": ")[0] for line in message.splitlines()[1:]}
    assert listed == set(expected["bad"])
    assert {p for p, _ in folder.skipped} == set(expected["bad"])
    for path, reason in folder.skipped:
        assert expected["bad"][path] in reason
    assert folder.class_names == ["cats", "dogs"]
    assert folder.counts == {"train": {"cats": 12, "dogs": 4}}
    assert folder.validation is None and folder.test is None
    used = {os.path.basename(p) for p, _ in folder.files["train"]}
    assert not {".DS_Store", "._rgb.jpg", "Thumbs.db", "desktop.ini", "hidden.jpg"} & used
    images, labels = all_batches(folder.train)
    assert images.shape == (16, 16, 16, 3) and images.dtype == np.uint8
    assert labels.dtype == np.int32 and sorted(labels.tolist()) == [0] * 12 + [1] * 4


def test_every_format_comes_out_rgb_with_the_right_colors(tmp_path):
    make_messy_folder(tmp_path / "photos")
    folder = load_quietly(tmp_path / "photos", image_size=(8, 8), batch_size=64, shuffle=False)
    images, _ = all_batches(folder.train)
    by_name = {os.path.basename(p): img for (p, _), img in zip(folder.files["train"], images)}
    for name in ("rgb.jpg", "rgb.png", "cmyk.jpg", "anim.gif", "pic.bmp", "palette.png",
                 "rgba.png", "palette.bmp", "photo.tif", "huge.jpg", "tiny.png"):
        mean = by_name[name].reshape(-1, 3).mean(axis=0)
        np.testing.assert_allclose(mean, RED, atol=12, err_msg=name)  # GIF: first frame (red)
    gray = by_name["gray.jpg"].reshape(-1, 3)
    assert np.all(gray[:, 0] == gray[:, 1]) and np.all(gray[:, 1] == gray[:, 2])
    np.testing.assert_allclose(gray.mean(axis=0), GRAY, atol=3)


def test_pillow_route_only_for_files_tensorflow_cannot_read(tmp_path):
    make_messy_folder(tmp_path / "photos")
    folder = load_quietly(tmp_path / "photos", image_size=8)
    routes = tverify.verify_images([p for p, _ in folder.files["train"]], tmp_path / "photos")
    pil = sorted(os.path.basename(p) for p, r in routes.items() if r == "pil")
    assert pil == ["palette.bmp", "photo.tif"]


def test_verify_false_skips_decoding_but_still_routes_tiff_to_pillow(tmp_path, monkeypatch):
    root = tmp_path / "photos"
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        solid(RED).save(root / name / "x.tif")
        solid(BLUE).convert("P").save(root / name / "y.bmp")
    monkeypatch.setattr(tverify, "_tf_decodable", lambda paths: pytest.fail("verify=False must not decode"))
    folder = load_image_folder(root, image_size=4, shuffle=False, verify=False)
    images, labels = all_batches(folder.train)
    np.testing.assert_allclose(images[0].reshape(-1, 3).mean(0), RED, atol=2)
    np.testing.assert_allclose(images[1].reshape(-1, 3).mean(0), BLUE, atol=2)
    assert labels.tolist() == [0, 0, 1, 1]


def test_verification_is_cached_by_size_and_mtime(tmp_path, monkeypatch):
    root = tmp_path / "photos"
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        solid(RED).save(root / name / "x.png")
    load_image_folder(root, image_size=8)
    calls = []
    real = tverify._tf_decodable
    monkeypatch.setattr(tverify, "_tf_decodable", lambda paths: calls.append(list(paths)) or real(paths))
    load_image_folder(root, image_size=8)
    assert calls == []  # nothing re-decoded
    (root / "a" / "x.png").write_bytes(b"garbage now")
    with pytest.warns(UserWarning, match="cannot be decoded"):
        with pytest.raises(ValueError, match="'.*a'.* has no usable image"):
            load_image_folder(root, image_size=8)
    assert calls == [[str(root / "a" / "x.png")]]


def test_class_folder_without_usable_images_is_an_error_naming_it(tmp_path):
    root = tmp_path / "photos"
    (root / "good").mkdir(parents=True)
    (root / "broken").mkdir()
    solid(RED).save(root / "good" / "a.png")
    (root / "broken" / "a.jpg").write_bytes(b"")
    (root / "broken" / "readme.txt").write_text("x")
    with pytest.warns(UserWarning, match="Skipped 2 file"):
        with pytest.raises(ValueError, match="broken"):
            load_image_folder(root, image_size=8)
    with pytest.raises(ValueError, match="No class folders"):
        load_image_folder(root / "good", image_size=8)
    with pytest.raises(FileNotFoundError, match="missing"):
        load_image_folder(tmp_path / "missing")


def make_balanced_folder(root: Path, per_class=(10, 20, 5)) -> None:
    """Small 8x8 PNGs with a diagonal gradient (so flips and rotations change them)."""
    ramp = np.add.outer(np.arange(8), 2 * np.arange(8)) * 10
    for c, n in enumerate(per_class):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(n):
            pixels = np.stack([ramp, np.full((8, 8), c * 80), np.full((8, 8), i * 10)], -1)
            Image.fromarray(pixels.astype(np.uint8)).save(root / f"class{c}" / f"img{i:02d}.png")


def test_validation_split_is_deterministic_stratified_and_disjoint(tmp_path):
    root = tmp_path / "photos"
    make_balanced_folder(root)
    a = load_image_folder(root, image_size=8, validation_split=0.2, seed=7)
    b = load_image_folder(root, image_size=8, validation_split=0.2, seed=7)
    c = load_image_folder(root, image_size=8, validation_split=0.2, seed=8)
    assert a.files == b.files
    assert a.files["validation"] != c.files["validation"]
    assert a.counts["validation"] == {"class0": 2, "class1": 4, "class2": 1}
    assert a.counts["train"] == {"class0": 8, "class1": 16, "class2": 4}
    train, val = {p for p, _ in a.files["train"]}, {p for p, _ in a.files["validation"]}
    assert not train & val and len(train | val) == 35
    # validation is never shuffled: same order on every pass and across loads
    _, y1 = all_batches(a.validation)
    _, y2 = all_batches(b.validation)
    assert y1.tolist() == y2.tolist() == [lab for _, lab in a.files["validation"]]


def test_train_val_test_layout_and_class_checks(tmp_path):
    root = tmp_path / "hymenoptera"
    for split, n in (("train", 3), ("val", 2), ("test", 1)):
        for cls in ("ants", "bees"):
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                solid(RED if cls == "ants" else BLUE).save(root / split / cls / f"{i}.jpg")
    folder = load_image_folder(root, image_size=8, batch_size=2, label_mode="categorical")
    assert folder.class_names == ["ants", "bees"]
    assert folder.counts == {
        "train": {"ants": 3, "bees": 3},
        "validation": {"ants": 2, "bees": 2},
        "test": {"ants": 1, "bees": 1},
    }
    x, y = next(iter(folder.test))
    assert x.dtype == tf.uint8 and y.dtype == tf.float32 and y.shape == (2, 2)
    with pytest.raises(ValueError, match="already has val/"):
        load_image_folder(root, image_size=8, validation_split=0.2)
    (root / "val" / "wasps").mkdir()
    solid(GREEN).save(root / "val" / "wasps" / "0.jpg")
    with pytest.raises(ValueError, match="wasps"):
        load_image_folder(root, image_size=8)


def test_shuffle_reshuffles_each_epoch_and_cache_modes(tmp_path):
    root = tmp_path / "photos"
    make_balanced_folder(root, (12, 12))
    folder = load_image_folder(root, image_size=8, batch_size=24)
    _, e1 = all_batches(folder.train)
    _, e2 = all_batches(folder.train)
    assert sorted(e1.tolist()) == sorted(e2.tolist()) and e1.tolist() != e2.tolist()
    plain = load_image_folder(root, image_size=8, batch_size=8, shuffle=False)
    for cache in ("memory", tmp_path / "tfcache"):
        cached = load_image_folder(root, image_size=8, batch_size=8, shuffle=False, cache_images=cache)
        for _ in range(2):  # fill the cache, then replay it
            np.testing.assert_array_equal(all_batches(cached.train)[0], all_batches(plain.train)[0])
    assert any(name.startswith("train-") for name in os.listdir(tmp_path / "tfcache"))


def test_dataset_side_augmentation_changes_train_batches_only(tmp_path):
    from tfx_transfer.data.augmentation import Augmentation

    root = tmp_path / "photos"
    make_balanced_folder(root, (4, 4))
    aug = Augmentation(rotation_range=40, horizontal_flip=True, zoom_range=0.3, seed=1)
    for augmentation in (aug, {"rotation_range": 40, "horizontal_flip": True}, "light"):
        folder = load_image_folder(root, image_size=8, batch_size=8, validation_split=0.25,
                                   shuffle=False, augmentation=augmentation)
        plain = load_image_folder(root, image_size=8, batch_size=8, validation_split=0.25, shuffle=False)
        x_aug, _ = all_batches(folder.train)
        x_plain, _ = all_batches(plain.train)
        assert x_aug.dtype == np.float32 and not np.allclose(x_aug, x_plain)
        np.testing.assert_array_equal(all_batches(folder.validation)[0], all_batches(plain.validation)[0])
    with pytest.raises(ValueError, match="label_mode='categorical'"):
        load_image_folder(root, image_size=8, augmentation="heavy")


def test_decode_and_resize_is_graph_friendly_and_documented_semantics():
    img = np.zeros((40, 80, 3), np.uint8)
    img[:, :20] = 255  # left quarter white
    png = tf.io.encode_png(img)
    fn = tf.function(lambda b: decode_and_resize(b, (10, 10)), input_signature=[tf.TensorSpec([], tf.string)])
    out = fn(png).numpy()
    assert out.shape == (10, 10, 3) and out.dtype == np.uint8
    assert out[:, 0].min() == 255 and out[:, -1].max() == 0  # stretched, not cropped
    cropped = decode_and_resize(png, (10, 10), crop_to_aspect_ratio=True).numpy()
    assert cropped.max() == 0  # central 40x40 crop has no white
    same = decode_and_resize(png, (40, 80)).numpy()
    np.testing.assert_array_equal(same, img)  # identity at the native size
    gray = decode_and_resize(tf.io.encode_jpeg(np.full((9, 9, 1), 77, np.uint8)), (4, 4)).numpy()
    assert gray.shape == (4, 4, 3)


def test_class_weights_from_labels_folder_and_imagefolder(tmp_path):
    assert class_weights([0, 0, 0, 1]) == {0: 4 / 6, 1: 2.0}
    assert class_weights(np.eye(2)[[0, 1, 1, 1]]) == {0: 2.0, 1: 4 / 6}
    root = tmp_path / "photos"
    make_balanced_folder(root, (10, 20, 5))
    expected = {0: 35 / 30, 1: 35 / 60, 2: 35 / 15}
    assert class_weights(root) == pytest.approx(expected)
    assert class_weights(load_image_folder(root, image_size=8)) == pytest.approx(expected)
