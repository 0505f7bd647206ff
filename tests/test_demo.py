"""`make demo`'s script: its settings are `tfx-transfer train` flags, and it runs end to end
(at its smallest settings) with the summary it promises."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("tensorflow")
from tfx_transfer.cli import build_parser  # noqa: E402
from tfx_transfer.training.job import RUN_SETTINGS, train_defaults  # noqa: E402

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


@pytest.mark.slow  # the demo's job at 32 px, 1 + 1 epochs, in a fresh process: ~60 s
def test_demo_runs_end_to_end_and_prints_its_summary(tmp_path):
    out = tmp_path / "demo"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TFX_TRANSFER_OFFLINE": "1"}
    done = subprocess.run([sys.executable, str(DEMO), "--quick", "--out", str(out)],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((out / "demo.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    assert summary["settings"]["image_size"] == 32 and summary["weights_used"] == "none"  # offline
    # the export, scored through the SavedModel on data_samples/val, agrees with metrics.json
    assert summary["accuracy"] == metrics["accuracy"]
    assert summary["export_accuracy"] == pytest.approx(metrics["accuracy"])
    assert summary["prediction"]["top"][0][0] in ("circle", "square", "triangle")
    printed = done.stdout
    for line in ("demo: weights used: none (requested auto", "demo: validation accuracy",
                 "demo: pictures:", "demo: the same from a shell: tfx-transfer predict"):
        assert line in printed, line
    for picture in printed.split("demo: pictures: ")[1].splitlines()[0].split(", "):
        assert Path(picture).is_file(), picture
