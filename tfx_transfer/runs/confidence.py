"""A run's calibration and "none of these" score: fitted after training, reported in the run folder.

:func:`calibrate_run` is the step of ``train`` between the final model and its
report: it fits the temperature on the validation images
(:func:`tfx_transfer.calibrate`), the unknown score on the training images with its
threshold on the validation images (:func:`tfx_transfer.fit_unknown`), saves the
model again and writes::

    RUN/calibration.json   temperature, ECE and NLL before/after, on which images, unknown fit
    RUN/reliability.png    accuracy against confidence, before and after

The expected calibration error is measured on ``test/`` when the folder has one;
otherwise on the validation images the temperature was fitted on (an optimistic
figure, and ``calibration.json`` says so).

Example: see :func:`tfx_transfer.train` (every run is calibrated).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

CALIBRATION_JSON = "calibration.json"
RELIABILITY_PNG = "reliability.png"


def _probabilities(model: Any, folder: Any, split: str, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    from tfx_transfer.data.labelled import labelled_batches
    from tfx_transfer.evaluation.predictor import model_image_size, predictor

    data = labelled_batches(folder, model_image_size(model), folder.class_names,
                            batch_size=batch_size, split=split, caller="train")
    predict = predictor(model)
    pairs = [(predict(x), np.asarray(y).astype(int)) for x, y in data.batches]
    return np.concatenate([p for p, _ in pairs]), np.concatenate([y for _, y in pairs])


def calibrate_run(model: Any, folder: Any, run_path: str | Path, *, batch_size: int = 32,
                  tpr: float | None = None) -> dict[str, Any]:
    """Calibrate ``model`` and fit its unknown score on ``folder``'s splits; write the files.

    Args:
        model: the run's final model (changed in place; the caller saves it).
        folder: the run's :class:`~tfx_transfer.ImageFolder` (with a validation split).
        run_path: the run folder.
        batch_size: images per batch.
        tpr: share of validation images the unknown threshold accepts (default 0.95).

    Returns:
        What ``calibration.json`` holds, plus ``"files"`` (``{name: Path}``).

    Example:
        >>> import tempfile, tfx_transfer as tt
        >>> from PIL import Image
        >>> root = Path(tempfile.mkdtemp())
        >>> for split in ("train", "val"):
        ...     for i, name in enumerate(("cat", "dog")):
        ...         (root / split / name).mkdir(parents=True)
        ...         for j in range(2):
        ...             Image.new("RGB", (40, 40), (200 * i, 60 * j, 90)).save(root / split / name / f"{j}.png")
        >>> folder = tt.load_image_folder(root, image_size=32)
        >>> model = tt.build_transfer_model("vgg16", 2, input_shape=32, weights=None,
        ...                                 class_names=folder.class_names)
        >>> result = calibrate_run(model, folder, tempfile.mkdtemp())
        >>> result["measured_on"], sorted(result["files"])
        ('val/ (4 images), the images the temperature was fitted on', ['calibration', 'reliability'])
    """
    from tfx_transfer.evaluation.calibration import (
        calibrate,
        expected_calibration_error,
        plot_reliability,
    )
    from tfx_transfer.evaluation.unknown_detection import fit_unknown
    from tfx_transfer.models.unknown_score import DEFAULT_TPR

    run_path = Path(run_path)
    measured_on = "test" if folder.files.get("test") else "val"
    before = _probabilities(model, folder, measured_on, batch_size)
    fit = calibrate(model, folder, batch_size=batch_size, split="val")
    after = _probabilities(model, folder, measured_on, batch_size)
    unknown = fit_unknown(model, folder, folder, tpr=DEFAULT_TPR if tpr is None else tpr,
                          batch_size=batch_size)
    result = {
        "temperature": fit["temperature"],
        "fitted_on": f"val/ ({fit['num_samples']} images)",
        "measured_on": (f"test/ ({len(before[1])} images)" if measured_on == "test" else
                        f"val/ ({len(before[1])} images), the images the temperature was fitted on"),
        "ece_before": expected_calibration_error(*before),
        "ece_after": expected_calibration_error(*after),
        "unknown": unknown,
    }
    files = {"calibration": run_path / CALIBRATION_JSON,
             "reliability": plot_reliability({"before": before, "after": after},
                                             run_path / RELIABILITY_PNG,
                                             title=f"Reliability on {measured_on}/")}
    files["calibration"].write_text(json.dumps(result, indent=2))
    return {**result, "files": files}


def format_calibration(result: dict[str, Any]) -> str:
    """The lines ``train`` prints and appends to ``report.txt``.

    Example:
        >>> print(format_calibration({"temperature": 1.8, "fitted_on": "val/ (20 images)",
        ...     "measured_on": "test/ (10 images)", "ece_before": 0.12, "ece_after": 0.03,
        ...     "unknown": {"threshold": 0.31, "tpr": 0.95, "num_references": 40}}))
        calibration: temperature 1.800 fitted on val/ (20 images)
          expected calibration error on test/ (10 images): 0.120 before, 0.030 after
          unknown ("none of these"): score above 0.3100 (accepts 95% of val/), 40 reference images
    """
    unknown = result["unknown"]
    return (f"calibration: temperature {result['temperature']:.3f} fitted on {result['fitted_on']}\n"
            f"  expected calibration error on {result['measured_on']}: "
            f"{result['ece_before']:.3f} before, {result['ece_after']:.3f} after\n"
            f"  unknown (\"none of these\"): score above {unknown['threshold']:.4f} (accepts "
            f"{unknown['tpr']:.0%} of val/), {unknown['num_references']} reference images")


def report_unknown(model: Any, data: Any, ood: Any, out: str | Path, files: dict[str, Path], *,
                   unknown_threshold: float | None = None, split: str | None = None,
                   batch_size: int = 32) -> dict[str, Any]:
    """``evaluate --ood``: the unknown score on ``data`` vs ``ood``, added to the report's files.

    Adds ``"unknown"`` to ``metrics.json``, its lines to ``report.txt`` and writes
    ``unknown_scores.png`` (:func:`tfx_transfer.evaluate_unknown`).

    Args:
        model: the model evaluated (Keras or exported), with an unknown score.
        data: the labelled images of known classes.
        ood: a folder of images of other classes.
        out: the report folder.
        files: the report's files so far (``"metrics"``, ``"report"``).
        unknown_threshold: overrides the model's threshold.
        split: the split of ``data`` (as evaluated).
        batch_size: images per batch.

    Returns:
        :func:`tfx_transfer.evaluate_unknown`'s result (its ``"files"`` too).

    Example:
        >>> import tempfile, numpy as np, tfx_transfer as tt
        >>> from tfx_transfer.runs.report import evaluate_run
        >>> model = tt.build_transfer_model("vgg16", 2, input_shape=32, weights=None,
        ...                                 class_names=["cat", "dog"])
        >>> x, y = np.random.default_rng(0).integers(0, 255, (4, 32, 32, 3)).astype("uint8"), np.arange(4) % 2
        >>> _ = tt.fit_unknown(model, (x, y), (x, y))
        >>> out = Path(tempfile.mkdtemp())
        >>> files = evaluate_run(model, (x, y), out, verbose=False)["files"]
        >>> result = report_unknown(model, (x, y), np.zeros((2, 32, 32, 3), "uint8"), out, files)
        >>> json.loads(files["metrics"].read_text())["unknown"]["num_ood"]
        2
    """
    from tfx_transfer.evaluation.unknown_detection import evaluate_unknown, format_unknown

    result = evaluate_unknown(model, data, ood, out, unknown_threshold=unknown_threshold,
                              split=split, batch_size=batch_size)
    saved = json.loads(Path(files["metrics"]).read_text())
    saved["unknown"] = {**{k: v for k, v in result.items() if k != "files"}, "ood": str(ood)}
    Path(files["metrics"]).write_text(json.dumps(saved, indent=2))
    with open(files["report"], "a", encoding="utf-8") as report:
        report.write(f"\n{format_unknown(result)}\n  other images: {ood}\n")
    return result
