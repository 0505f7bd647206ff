"""A run's calibration: the temperature and the unknown score fitted on its splits.

:func:`calibrate_run` is the step of :func:`tfx_transfer.train` after the best model is
chosen: the temperature (:func:`tfx_transfer.calibrate`) on the validation images, the "none
of these" score (:func:`tfx_transfer.fit_unknown`) with training references and a validation
threshold, and the run folder's ``calibration.json`` and ``reliability.png``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tfx_transfer.layout import CALIBRATION_FILE, RELIABILITY_PNG
from tfx_transfer.models.unknown_score import DEFAULT_TPR


def calibrate_run(model: Any, folder: Any, run_path: str | Path, batch_size: int = 32,
                  tpr: float = DEFAULT_TPR, validation: str = "the validation images") -> dict[str, Any]:
    """Temperature (:func:`tfx_transfer.calibrate`, on the validation split) and unknown score
    (:func:`tfx_transfer.fit_unknown`: training references, validation threshold), in place;
    writes ``calibration.json`` and ``reliability.png``, the ECE measured on the test split when
    the folder has one, else on the validation split (and saying so). Returns what the JSON
    holds, plus ``"files"``.

    Args:
        model: the run's final model (changed in place: temperature folded, score fitted).
        folder: the run's :class:`~tfx_transfer.ImageFolder` (training and validation
            splits, maybe test/).
        run_path: the run folder the two files are written to.
        batch_size: images per prediction batch.
        tpr: the share of validation images the unknown threshold accepts.
        validation: what the validation images are, in the JSON and its lines (``train``
            passes :func:`~tfx_transfer.runs.config.validation_images`: ``"photos/val/"``,
            ``"the is_valid rows of labels.csv"``, ...).

    Example:
        >>> import tempfile, numpy as np, tfx_transfer as tt
        >>> from PIL import Image
        >>> root = Path(tempfile.mkdtemp())
        >>> for i in range(16):  # dark and light images in train/ and val/
        ...     folder = root / ("train", "val")[i % 2] / ("dark", "light")[i // 8]
        ...     folder.mkdir(parents=True, exist_ok=True)
        ...     Image.fromarray(np.full((32, 32, 3), 30 + 180 * (i // 8) + i, "uint8")).save(folder / f"{i}.png")
        >>> data = tt.load_image_folder(root, image_size=32)
        >>> model = tt.build_transfer_model("vgg16", 2, input_shape=32, weights=None,
        ...                                 class_names=data.class_names)
        >>> result = calibrate_run(model, data, root, validation="val/")
        >>> sorted(result["files"]), result["measured_on"].split(" (")[0]
        (['calibration', 'reliability'], 'val/')
    """
    from tfx_transfer.evaluation import calibration as cal
    from tfx_transfer.evaluation.unknown_detection import fit_unknown

    if not cal.softmax_classifier(model):  # e.g. a sigmoid (multi-label) classifier
        result = {"skipped": "no temperature (per-label calibration of a sigmoid classifier is "
                  "not supported)", "validation": validation,
                  "unknown": fit_unknown(model, folder, folder, tpr=tpr, batch_size=batch_size)}
        file = Path(run_path) / CALIBRATION_FILE
        file.write_text(json.dumps(result, indent=2))
        return {**result, "files": {"calibration": file}}
    measured_on = "test" if folder.files.get("test") else "val"
    before = cal.labelled_probabilities(model, folder, batch_size, measured_on)
    # the temperature on the validation images' probabilities (predicted once when ECE is on them)
    fit = cal.calibrate_on(model, *(before if measured_on == "val" else
                                    cal.labelled_probabilities(model, folder, batch_size, "val")))
    # what the folded classifier now gives (softmax ignores the constant of log p)
    after = (cal.softmax(cal.log_probabilities(before[0]) / fit["temperature"]), before[1])
    result = {
        "temperature": fit["temperature"], "validation": validation,
        "fitted_on": f"{validation} ({fit['num_samples']} images)",
        "measured_on": (f"test/ ({len(before[1])} images)" if measured_on == "test" else
                        f"{validation} ({len(before[1])} images), the images the temperature was "
                        "fitted on"),
        "ece_before": cal.expected_calibration_error(*before),
        "ece_after": cal.expected_calibration_error(*after),
        "unknown": fit_unknown(model, folder, folder, tpr=tpr, batch_size=batch_size)}
    files = {"calibration": Path(run_path) / CALIBRATION_FILE,
             "reliability": cal.plot_reliability({"before": before, "after": after},
                                                 Path(run_path) / RELIABILITY_PNG,
                                                 title="Reliability on " + (
                                                     "test/" if measured_on == "test" else validation))}
    files["calibration"].write_text(json.dumps(result, indent=2))
    return {**result, "files": files}
