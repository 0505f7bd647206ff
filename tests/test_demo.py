"""`make demo`'s script: its settings are `tfx-transfer train` flags, and it runs end to end
(at its smallest settings) with the summary it promises."""

import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("tensorflow")
from tfx_transfer.cli import build_parser  # noqa: E402
from tfx_transfer.runs.job import RUN_SETTINGS, train_defaults  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "scripts" / "demo.py"


def _demo():
    spec = importlib.util.spec_from_file_location("demo", DEMO)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_demo_settings_are_train_arguments_and_cli_flags():
    demo = _demo()
    for settings in (demo.SETTINGS, {**demo.SETTINGS, **demo.QUICK}):
        assert set(settings) <= set(train_defaults()) and set(settings) <= set(RUN_SETTINGS)
        args = build_parser(["train"]).parse_args(["train", "data", "--out", "run",
                                                   *demo.cli_flags(settings).split()])
        assert {name: getattr(args, name) for name in settings} == settings


# The demo itself runs end to end in tests/test_demo_run.py (its summary checked against the run).
