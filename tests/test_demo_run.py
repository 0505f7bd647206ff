"""`make demo` end to end at its smallest settings, in a fresh process; its summary is checked.

``make demo`` runs ``scripts/demo.py``; this runs the same script with ``--quick`` (32 px,
one epoch per phase) and checks what the summary prints against the run's own files: the accuracy is ``metrics.json``'s (a number in [0, 1]) and the
export's, the settings are the ones asked for, and every file it names exists.

The script runs as ``python scripts/demo.py`` would (``__main__``, its own ``sys.argv``) in a
process that first registers "vgg16" as tests/tiny_backbone.py's stand-in (as
tests/test_notebook.py's kernel does): VGG16's name, preprocessing and blocks on the 6-layer
"tinyvgg" for random weights, and VGG16 itself when ImageNet weights are asked for (offline: the
same WeightsUnavailableError, so the same "weights: none" path). The demo's steps, flags and
summary are the same on a smaller network; the real VGG16 is built, traced and fine-tuned in
test_backbones.py, test_finetune.py and the doctests.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SMALLEST = ["--quick"]  # 32 px, one epoch per phase
# `python scripts/demo.py ARGS`, with the VGG16 stand-in registered first
WITH_STANDIN = ("import runpy, sys; sys.path.insert(0, sys.argv[1]); "
                "from tests.tiny_backbone import register_vgg16_standin; register_vgg16_standin(); "
                "sys.argv = sys.argv[2:]; runpy.run_path(sys.argv[0], run_name='__main__')")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """(stdout, run folder) of the demo at its smallest settings."""
    out = tmp_path_factory.mktemp("demo") / "run"
    env = dict(os.environ, PYTHONPATH=str(ROOT), TFX_TRANSFER_OFFLINE="1", MPLBACKEND="Agg")
    done = subprocess.run([sys.executable, "-c", WITH_STANDIN, str(ROOT),
                           str(ROOT / "scripts" / "demo.py"), "--out", str(out), *SMALLEST],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, f"the demo failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return done.stdout, out


def _line(stdout: str, pattern: str) -> re.Match:
    match = re.search(pattern, stdout, re.MULTILINE)
    assert match, f"the demo's output has no line matching {pattern!r}:\n{stdout[-3000:]}"
    return match


@pytest.mark.slow
def test_demo_summary_matches_the_run(demo):
    stdout, out = demo
    metrics = json.loads((out / "metrics.json").read_text())
    accuracy = metrics["accuracy"]
    assert isinstance(accuracy, float) and 0 <= accuracy <= 1
    summary = stdout[stdout.rindex("=" * 78, 0, stdout.rindex("=" * 78)):]  # between the rules

    shown = _line(summary, r"^demo: validation accuracy ([\d.]+), (?:top-(\d+) ([\d.]+), )?"
                           r"macro F1 ([\d.]+)$")
    assert float(shown.group(1)) == round(accuracy, 4)
    assert float(shown.group(4)) == round(metrics["macro_avg"]["f1"], 4)
    if "top_k_accuracy" in metrics:  # omitted when k >= the number of classes (3 here)
        assert int(shown.group(2)) == metrics["top_k"]
        assert float(shown.group(3)) == round(metrics["top_k_accuracy"], 4)
    else:
        assert shown.group(2) is None and len(metrics["class_names"]) <= 5  # default k: min(5, C)

    export = _line(stdout, r"^demo: export accuracy ([\d.]+) \(metrics\.json: ([\d.]+)\)")
    assert float(export.group(2)) == round(accuracy, 4)
    assert abs(float(export.group(1)) - accuracy) <= 1 / 30 + 1e-9  # at most one of 30 images

    settings = _line(summary, r"^demo: settings: (\w+) (\d+)x(\d+) px, (\d+) head \+ (\d+) fine-tuning")
    assert settings.groups() == ("vgg16", "32", "32", "1", "1")
    config = json.loads((out / "config.json").read_text())
    assert (config["image_size"], config["head_epochs"], config["fine_tune_epochs"]) == ([32, 32], 1, 1)

    weights = _line(summary, r"^demo: weights used: (\S+) \(requested (\S+):")
    assert weights.groups() == (config["weights"], "auto")

    pictures = _line(summary, r"^demo: pictures: (.+)$").group(1).split(", ")
    assert [Path(p).name for p in pictures] == ["history.png", "confusion_matrix.png",
                                                "predictions.png"]
    for picture in pictures:
        assert Path(picture).stat().st_size > 1000, picture

    predicted = _line(stdout, r"^demo: the same from a shell: tfx-transfer predict (\S+) (\S+)$")
    assert (Path(predicted.group(1)) / "saved_model.pb").is_file()
    assert Path(predicted.group(2)).is_file()

    record = json.loads((out / "demo.json").read_text())
    assert record["accuracy"] == accuracy
    assert record["settings"]["image_size"] == 32
    assert record["prediction"]["top"][0][0] in config["class_names"]
