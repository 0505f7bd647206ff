"""notebooks/quickstart.ipynb runs top to bottom (nbclient, the venv's Python as kernel)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

NOTEBOOK = ROOT / "notebooks" / "quickstart.ipynb"
SMALL = {"QUICKSTART_IMAGE_SIZE": "32", "QUICKSTART_HEAD_EPOCHS": "1",
         "QUICKSTART_FINE_TUNE_EPOCHS": "1"}


# The kernel: ipykernel's launcher, after registering "vgg16" as a stand-in that builds
# tests/tiny_backbone.py's "tinyvgg" (VGG16's layer names and blocks, 6 convolutions) for
# random weights, and VGG16 itself when ImageNet weights are asked for (offline: the same
# WeightsUnavailableError). What the notebook runs is the same code on a smaller network:
# about 45% less CPU in its cells (real VGG16 builds, traces and fine-tuning are tested in
# test_backbones.py, test_finetune.py and the doctests).
KERNEL = (f"import sys; sys.path.insert(0, {str(ROOT)!r}); "
          "from tests.tiny_backbone import register_vgg16_standin; register_vgg16_standin(); "
          "from ipykernel.kernelapp import launch_new_instance; launch_new_instance()")


def _kernel_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A kernelspec that runs this interpreter (sys.executable), written under tmp_path."""
    spec_dir = tmp_path / "jupyter" / "kernels" / "tfx-quickstart"
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-c", KERNEL, "-f", "{connection_file}"],
        "display_name": "tfx_transfer tests", "language": "python",
    }))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    return "tfx-quickstart"


@pytest.mark.slow
def test_quickstart_notebook_executes(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    out = tmp_path / "quickstart"
    monkeypatch.setenv("QUICKSTART_OUT", str(out))
    monkeypatch.setenv("TFX_TRANSFER_OFFLINE", "1")  # never try a download from the tests
    for name, value in SMALL.items():  # the notebook's own settings, smaller
        monkeypatch.setenv(name, value)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        nb, kernel_name=_kernel_name(tmp_path, monkeypatch), timeout=300,
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},
    )
    client.execute()

    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "weights: none" in text and "RANDOM INITIALISATION" in text  # offline, said aloud
    assert "stage per epoch: [0, 1]" in text  # both phases inside one fit
    assert "confusion matrix" in text and "max |difference|" in text
    assert "classes after add_classes: ['circle', 'square', 'triangle', 'negative']" in text
    assert "old-class predictions changed:" in text
    images = [o for o in outputs if o.output_type == "display_data" and "image/png" in o.data]
    assert "heatmaps: (8, 32, 32)" in text and "loss " in text  # Grad-CAM and top losses
    # augmentation preview, history, confusion matrix, predictions, top losses, Grad-CAM,
    # the multi-label section's per-label bars
    assert len(images) == 7
    assert "multi-label:" in text and "thresholds: {'circle'" in text
    for name in ("augmentation.png", "history.png", "confusion_matrix.png", "predictions.png",
                 "top_losses.png", "gradcam.png", "metrics.json", "export/1/saved_model.pb",
                 "tags.csv", "tags/per_label.png", "tags/metrics.json"):
        assert (out / name).is_file(), name
