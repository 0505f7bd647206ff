"""`make demo`'s script speaks the CLI's vocabulary (its settings are `tfx-transfer train` flags)."""

import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("tensorflow")
from tfx_transfer.cli import build_parser  # noqa: E402
from tfx_transfer.training.job import RUN_SETTINGS, train_defaults  # noqa: E402

DEMO = Path(__file__).resolve().parents[1] / "scripts" / "demo.py"


def _demo():
    spec = importlib.util.spec_from_file_location("demo", DEMO)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_demo_settings_are_train_arguments_and_cli_flags():
    demo = _demo()
    assert set(demo.SETTINGS) <= set(train_defaults())
    args = build_parser().parse_args(["train", "data", "--out", "run", *demo.cli_flags().split()])
    assert {name: getattr(args, name) for name in demo.SETTINGS} == demo.SETTINGS
    # the summary it prints reads these config.json keys
    assert {"backbone", "image_size", "head_epochs", "fine_tune_epochs", "weights"} <= set(RUN_SETTINGS)
