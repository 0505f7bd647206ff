"""`cache_images`: one meaning in load_image_folder, train, pretrain and the CLI; "auto" picks by budget."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("tensorflow")

from tests.helpers import write_class_folders  # noqa: E402
from tfx_transfer.cli import build_parser  # noqa: E402
from tfx_transfer.data.folder import load_image_folder  # noqa: E402
from tfx_transfer.data.image_cache import (  # noqa: E402
    choose_image_cache,
    parse_cache_images,
    resolve_cache_images,
)
from tfx_transfer.training.job import train, train_defaults  # noqa: E402

TINY = dict(backbone="mobilenet", weights="none", image_size=32, head="avg",
            augmentation="none", batch_size=8, head_epochs=1, fine_tune_epochs=0, verbose=1)


def test_choose_image_cache_compares_decoded_bytes_with_the_budget():
    counts = {"train": {"a": 600, "b": 400}, "validation": {"a": 100, "b": 100}}  # 1,200 images
    need_gb = 1200 * 100 * 100 * 3 / 1e9  # 0.036 GB
    used, why = choose_image_cache(counts, (100, 100), budget_gb=need_gb)
    assert used == "memory" and "0.04 GB <= budget" in why
    used, why = choose_image_cache(counts, (100, 100), budget_gb=need_gb * 0.99)
    assert used == "none" and "streamed" in why and "cache_budget_gb" in why


@pytest.mark.parametrize("budget, expected", [(1e-6, "none"), (2.0, "memory")])
def test_train_picks_the_input_path_by_budget_and_says_so(tmp_path, capsys, budget, expected):
    data = write_class_folders(tmp_path / "data", classes=("red", "blue"), per_class=6, size=36)
    result = train(data, tmp_path / "run", cache_budget_gb=budget, validation_split=0.34, **TINY)
    out = capsys.readouterr().out
    assert f"data: cache_images=auto -> {expected} (decoded images 0.00 GB" in out
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["cache_images"] == "auto" and saved["cache_images_used"] == expected
    assert saved["cache_images_reason"] == result["config"]["cache_images_reason"]
    assert 0.0 <= result["metrics"]["accuracy"] <= 1.0


def test_cache_images_flags_and_bad_budget(tmp_path):
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
