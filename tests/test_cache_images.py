"""`train(cache_images="auto")`: decoded images in memory when they fit the budget, else streamed."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("tensorflow")

from tests.helpers import write_class_folders  # noqa: E402
from tfx_transfer.cli import build_parser  # noqa: E402
from tfx_transfer.data.image_cache import choose_image_cache  # noqa: E402
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
