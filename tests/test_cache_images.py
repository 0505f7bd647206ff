"""`cache_images`: one meaning in load_image_folder, train, pretrain and the CLI; "auto" picks by
budget; the chosen cache is really used (decoded images in memory or cache files are reused)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

tf = pytest.importorskip("tensorflow")
import keras  # noqa: E402

from tests.helpers import write_class_folders  # noqa: E402
from tfx_transfer.cli import build_parser  # noqa: E402
from tfx_transfer.data.folder import load_image_folder  # noqa: E402
from tfx_transfer.data.image_cache import (  # noqa: E402
    choose_image_cache,
    parse_cache_images,
    resolve_cache_images,
)
from tfx_transfer.runs.job import train, train_defaults  # noqa: E402

# Two head epochs on the images themselves (no feature cache): the 2nd epoch reads the images
# again, from the cache if there is one.
TINY = dict(backbone="tinycam", weights="none", image_size=32, head="avg", augmentation="none",
            batch_size=8, head_epochs=2, fine_tune_epochs=0, cache_features=False,
            validation_split=0.34, verbose=1)


class HideImagesAfterFirstEpoch(keras.callbacks.Callback):
    """Moves the data folder away once epoch 0 (train and validation) has read every image,
    and back when training ends: epoch 1 can only read what was cached."""

    def __init__(self, data: Path):
        super().__init__()
        self.data, self.hidden = data, data.with_name(data.name + "-hidden")

    def on_epoch_end(self, epoch, logs=None):
        if epoch == 0:
            self.data.rename(self.hidden)

    def on_train_end(self, logs=None):
        self.restore()

    def restore(self):
        if self.hidden.exists():
            self.hidden.rename(self.data)


class TrainingDone(Exception):
    """Raised once fit() is over: what follows (report, export) does not touch the cache."""


class StopAfterTraining(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.epochs: list[int] = []

    def on_epoch_end(self, epoch, logs=None):
        self.epochs.append(epoch)

    def on_train_end(self, logs=None):
        raise TrainingDone


def _train_hiding_images(data: Path, run: Path, callbacks=(), **kwargs) -> dict:
    hide = HideImagesAfterFirstEpoch(data)
    try:
        return train(data, run, callbacks=[hide, *callbacks], **{**TINY, **kwargs})
    finally:
        hide.restore()


def test_choose_image_cache_compares_decoded_bytes_with_the_budget():
    counts = {"train": {"a": 600, "b": 400}, "validation": {"a": 100, "b": 100}}  # 1,200 images
    need_gb = 1200 * 100 * 100 * 3 / 1e9  # 0.036 GB
    used, why = choose_image_cache(counts, (100, 100), budget_gb=need_gb)
    assert used == "memory" and "0.04 GB <= budget" in why
    used, why = choose_image_cache(counts, (100, 100), budget_gb=need_gb * 0.99)
    assert used == "none" and "streamed" in why and "cache_budget_gb" in why


@pytest.mark.slow  # two tiny runs, each up to the end of training (or its failure)
def test_auto_keeps_images_in_memory_within_the_budget_and_streams_them_beyond(
        tmp_path, capsys, tinycam):
    data = write_class_folders(tmp_path / "data", classes=("red", "blue"), per_class=6, size=36)
    stop = StopAfterTraining()  # what follows training (report, export) does not read the cache
    with pytest.raises(TrainingDone):
        _train_hiding_images(data, tmp_path / "memory", callbacks=[stop], cache_budget_gb=2.0)
    printed = capsys.readouterr().out
    assert "data: cache_images=auto -> memory (decoded images 0.00 GB" in printed
    saved = json.loads((tmp_path / "memory" / "config.json").read_text())
    assert saved["cache_images"] == "auto" and saved["cache_images_used"] == "memory"
    # the reason saved is the one train() said
    assert f"data: cache_images=auto -> memory ({saved['cache_images_reason']})\n" in printed
    assert stop.epochs == [0, 1]  # trained and validated 2 epochs, the 2nd without the files

    with pytest.raises(tf.errors.NotFoundError):  # streamed: epoch 1 reads the files again
        _train_hiding_images(data, tmp_path / "streamed", cache_budget_gb=1e-6)
    assert "data: cache_images=auto -> none (decoded images 0.00 GB" in capsys.readouterr().out
    saved = json.loads((tmp_path / "streamed" / "config.json").read_text())
    assert saved["cache_images_used"] == "none"


@pytest.mark.slow  # one tiny end-to-end run (up to the end of training)
def test_a_cache_folder_holds_both_splits_and_epoch_two_reads_no_image(tmp_path, tinycam):
    data = write_class_folders(tmp_path / "data", classes=("red", "blue"), per_class=6, size=36)
    cache, stop = tmp_path / "cache", StopAfterTraining()
    hide = HideImagesAfterFirstEpoch(data)
    try:
        with pytest.raises(TrainingDone):
            train(data, tmp_path / "run", callbacks=[hide, stop], **{**TINY, "verbose": 0,
                                                                     "cache_images": str(cache)})
    finally:
        hide.restore()
    assert stop.epochs == [0, 1]  # epoch 1 trained and validated without the files
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["cache_images_used"] == str(cache)
    files = {p.name.split("-")[0] for p in cache.iterdir() if p.name.endswith(".index")}
    assert files == {"train", "validation"}


def test_cache_images_flags_and_bad_budget(tmp_path, tinycam):
    args = build_parser().parse_args(["train", "d", "--out", "r", "--cache-images", "none",
                                      "--cache-budget-gb", "0.5"])
    assert (args.cache_images, args.cache_budget_gb) == (None, 0.5)  # none: train() says "none"
    assert train_defaults()["cache_images"] == "auto"
    with pytest.raises(ValueError, match=r"cache_budget_gb=-1 must be a number of GB >= 0"):
        train(tmp_path, tmp_path / "run", cache_budget_gb=-1, **TINY)


def _batches(dataset):
    import numpy as np

    parts = list(dataset.as_numpy_iterator())
    return np.concatenate([x for x, _ in parts]), np.concatenate([y for _, y in parts])


@pytest.mark.parametrize("value", ["none", "None", None])
def test_no_cache_creates_no_folder_and_yields_the_same_batches(tmp_path, monkeypatch, value):
    import numpy as np

    data = write_class_folders(tmp_path / "data", classes=("red", "blue"), per_class=3, size=20)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    before = sorted(p.name for p in data.iterdir())
    folder = load_image_folder(data, image_size=8, batch_size=4, shuffle=False, cache_images=value)
    streamed = load_image_folder(data, image_size=8, batch_size=4, shuffle=False)
    for _ in range(2):  # a file cache would be written in the first pass and read in the second
        x, y = _batches(folder.train)
        x_ref, y_ref = _batches(streamed.train)
        np.testing.assert_array_equal(x, x_ref)
        np.testing.assert_array_equal(y, y_ref)
    assert list(cwd.iterdir()) == [] and sorted(p.name for p in data.iterdir()) == before


def test_cache_images_values_have_one_meaning(tmp_path):
    assert [parse_cache_images(v) for v in (None, "NONE", "Memory", "auto")] == [
        "none", "none", "memory", "auto"]
    assert parse_cache_images(tmp_path / "cache") == str(tmp_path / "cache")
    with pytest.raises(TypeError, match="cache_images=3"):
        parse_cache_images(3)
    with pytest.raises(ValueError, match="cache_images=''"):
        parse_cache_images("")
    counts = {"train": {"a": 100}}  # 100 images of 10x10: 30 kB
    assert resolve_cache_images("auto", counts, (10, 10), budget_gb=1.0)[0] == "memory"
    assert resolve_cache_images("auto", counts, (10, 10), budget_gb=1e-6)[0] == "none"
    assert resolve_cache_images("none", counts, (10, 10), budget_gb=1.0)[0] == "none"
    assert resolve_cache_images("memory", counts, (10, 10), budget_gb=1e-6)[0] == "memory"


def test_pretrain_with_cache_images_none_creates_no_folder(tinycam, tmp_path, monkeypatch):
    from tfx_transfer.training.pretraining import pretrain

    data = write_class_folders(tmp_path / "data", classes=("red", "blue"), per_class=3, size=20)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    pretrain(data, tinycam, tmp_path / "out", image_size=16, epochs=1, batch_size=6,
             validation_split=None, augmentation="none", recalibrate_batches=0,
             cache_images="none", verbose=0)
    assert list(cwd.iterdir()) == []
    assert sorted(p.name for p in data.iterdir()) == ["blue", "red"]


def test_one_default_for_cache_images_and_the_loaders_say_what_auto_chose(tmp_path):
    import inspect
    import shutil

    import numpy as np

    import tfx_transfer as tt

    defaults = {f.__name__: inspect.signature(f).parameters["cache_images"].default
                for f in (tt.train, tt.pretrain, tt.load_image_folder, tt.load_image_table)}
    assert set(defaults.values()) == {"auto"}, defaults
    assert build_parser().parse_args(["pretrain", "s", "--backbone", "vgg16", "--out", "o"]
                                     ).cache_images == "auto"
    data = write_class_folders(tmp_path / "data", classes=("red", "blue"), per_class=3, size=20)
    folder = load_image_folder(data, image_size=8, batch_size=4, shuffle=False)
    assert folder.cache_images_used == "memory" and "<= budget 2 GB" in folder.cache_images_reason
    first = _batches(folder.train)
    shutil.move(data, tmp_path / "hidden")  # the default's memory cache: no file read again
    np.testing.assert_array_equal(_batches(folder.train)[0], first[0])
    shutil.move(tmp_path / "hidden", data)
    over = load_image_folder(data, image_size=8, batch_size=4, cache_budget_gb=1e-9)
    assert over.cache_images_used == "none" and "streamed from disk" in over.cache_images_reason
