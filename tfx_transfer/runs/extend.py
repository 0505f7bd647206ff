"""The ``tfx-transfer add-classes`` job: a trained run plus new classes from a few images, as a new run.

:func:`add_classes_run` loads a run's model, adds the classes of a folder
(:func:`tfx_transfer.add_classes`: rows imprinted, nothing trained) and writes a
complete run folder: ``model.keras``, ``export/1/``, ``config.json`` (the run's,
with every class and an ``"add_classes"`` entry), the report of
:func:`~tfx_transfer.runs.report.evaluate_run` on the old run's validation images
plus the new classes' images (``metrics.json``, ``report.txt``, confusion matrix,
predictions, top losses), and ``add_classes.json`` / ``add_classes.txt``: the old
classes' accuracy before and after, how many of their predictions changed, and the
new classes' accuracy.

Example:
    >>> print(format_add_classes_report({"run": "r", "new_classes": ["c"], "imprinted_images": 5,
    ...     "imprint_seconds": 0.5, "old": None, "new": {"images": 3, "accuracy": 1.0,
    ...     "scored_on": "the imprinting images"}}))
    added classes: ['c'] (imprinted from 5 images in 0.5 s) to r
    old classes:   not scored (the run's data_dir is gone or its classes changed)
    new classes:   accuracy 1.0000 on 3 images (the imprinting images)
"""

from __future__ import annotations

import datetime
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from tfx_transfer.layout import CONFIG_FILE, EXPORT_DIR, MODEL_FILE
from tfx_transfer.runs import steps


def _old_validation(config: dict[str, Any], verbose: Any) -> list[tuple[str, int]] | None:
    """The old run's validation files, split again as the run split them (``None``: data gone)."""
    from tfx_transfer.runs.deploy import config_images

    folder = config_images(config)
    if folder is None:
        return None
    if folder.class_names != config["class_names"]:
        steps.say(verbose, f"add-classes: {config['data_dir']} now has the classes "
                           f"{folder.class_names}, not the run's; its images are not scored")
        return None
    return list(folder.files["validation"])


def _new_images(folder: Path, config: dict[str, Any]) -> tuple[Any, list[tuple[str, int]], str]:
    """The new classes' ImageFolder, the files to score and what they are."""
    from tfx_transfer.data.folder import load_image_folder

    new = load_image_folder(folder, image_size=config["image_size"],
                            batch_size=config["batch_size"], shuffle=False)
    for split in ("test", "validation"):
        if new.files.get(split):
            return new, list(new.files[split]), f"held-out images ({split} split)"
    return new, list(new.files["train"]), "the imprinting images: the folder has no val/ or test/"


def _predictions(models: list[Any], files: list[tuple[str, int]], config: dict[str, Any]
                 ) -> list[np.ndarray]:
    from tfx_transfer.data.pipeline import files_dataset

    outs: list[list[np.ndarray]] = [[] for _ in models]
    for images, _ in files_dataset(files, config["image_size"], config["batch_size"]).as_numpy_iterator():
        for out, model in zip(outs, models):
            out.append(np.asarray(model.predict_on_batch(images)))
    return [np.concatenate(out) for out in outs]


def old_class_change(before: np.ndarray, after: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """The old classes' accuracy before/after adding classes and the share of changed predictions.

    Args:
        before: ``(N, C)`` probabilities of the old model on old-class images.
        after: ``(N, C + k)`` probabilities of the model with ``k`` added classes.
        labels: ``(N,)`` true labels (old classes).

    Example:
        >>> before = np.array([[.9, .1], [.2, .8]]); after = np.array([[.8, .1, .1], [.1, .3, .6]])
        >>> old_class_change(before, after, np.array([0, 1]))["accuracy_after"]
        0.5
    """
    old_after = after.argmax(axis=1)
    return {"images": int(len(labels)),
            "accuracy_before": float((before.argmax(axis=1) == labels).mean()),
            "accuracy_after": float((old_after == labels).mean()),
            "changed": float((before.argmax(axis=1) != old_after).mean()),
            "to_new_classes": float((old_after >= before.shape[1]).mean())}


def add_classes_run(run_dir: str | os.PathLike, data: str | os.PathLike, out: str | os.PathLike,
                    *, top_k: int | None = None, verbose: int = 1) -> dict[str, Any]:
    """Add the classes of ``data`` to a ``tfx-transfer train`` run's model: a new run folder.

    New rows are imprinted from ``data``'s images (its ``train/`` split when it has
    one, else every image); nothing is trained. The report scores the new model on
    the old run's validation images (split again from its ``data_dir`` as the run
    did) and on the new classes' ``val/`` or ``test/`` images (else on the imprinting
    images, and says so). See the module docstring for the files.

    Args:
        run_dir: a run folder of ``tfx-transfer train`` (``config.json`` + ``model.keras``).
        data: a folder of the new classes' folders (or ``train/`` + ``val/`` of them).
        out: the new run folder (must not hold a model yet).
        top_k: k of the reported top-k accuracy (default: min(5, classes)).
        verbose: 0 quiet, else the report.

    Returns:
        The report (also in ``add_classes.json``), with ``"files"``.

    Example (not run by the doctests: it needs a training run; tests/test_fewshot.py runs it):
        >>> report = add_classes_run("runs/photos", "new_things/", "runs/photos-more")  # doctest: +SKIP
        >>> report["old"]["accuracy_after"] - report["old"]["accuracy_before"]  # doctest: +SKIP
        0.0
    """
    from tfx_transfer.export.saved_model import export_saved_model
    from tfx_transfer.models.imprinting import add_classes, cosine_classifier
    from tfx_transfer.models.saving import load_model
    from tfx_transfer.runs.report import evaluate_run

    run, folder, out_dir = Path(run_dir), Path(data), Path(out)
    if not (run / CONFIG_FILE).is_file() or not (run / MODEL_FILE).is_file():
        raise FileNotFoundError(f"{str(run)!r} is not a run folder (config.json + model.keras "
                                "from 'tfx-transfer train').")
    if not folder.is_dir():
        raise FileNotFoundError(f"New-class folder {str(folder)!r} does not exist.")
    if out_dir.resolve() == run.resolve():
        raise ValueError("--out must be a new folder, not the run folder itself.")
    if (out_dir / MODEL_FILE).exists():
        raise ValueError(f"{str(out_dir)!r} already holds a model; choose another --out.")
    config = json.loads((run / CONFIG_FILE).read_text())
    model = load_model(run / MODEL_FILE, compile=False)
    cosine_classifier(model, "add-classes")  # a Dense head fails here, before any image is read
    new_folder, new_files, scored_on = _new_images(folder, config)
    start = time.perf_counter()
    bigger = add_classes(model, new_folder, batch_size=config["batch_size"])
    seconds = time.perf_counter() - start
    old_names, names = list(config["class_names"]), list(bigger.transfer_config["class_names"])

    old_files = _old_validation(config, verbose) or []
    shifted = [(path, label + len(old_names)) for path, label in new_files]
    old_report = None
    if old_files:
        before, after = _predictions([model, bigger], old_files, config)
        old_report = old_class_change(before, after, np.array([label for _, label in old_files]))
    new_probs = _predictions([bigger], new_files, config)[0]
    new_labels = np.array([label for _, label in shifted])
    report: dict[str, Any] = {
        "run": str(run.resolve()), "data": str(folder.resolve()), "new_classes": names[len(old_names):],
        "imprinted_images": len(new_folder.files["train"]), "imprint_seconds": round(seconds, 3),
        "head": config.get("head"),
        "old": old_report,
        "new": {"images": len(new_files), "accuracy": float((new_probs.argmax(1) == new_labels).mean()),
                "scored_on": scored_on},
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }

    from tfx_transfer.data.pipeline import files_dataset

    out_dir.mkdir(parents=True, exist_ok=True)
    bigger.save(out_dir / MODEL_FILE)
    scored = old_files + shifted
    metrics = evaluate_run(bigger, files_dataset(scored, config["image_size"], config["batch_size"]),
                           out_dir, class_names=names, paths=[p for p, _ in scored], top_k=top_k,
                           batch_size=config["batch_size"], verbose=False)
    files = metrics.pop("files")
    report["metrics"] = {k: metrics[k] for k in ("num_samples", "accuracy") if k in metrics}
    export = export_saved_model(bigger, out_dir / EXPORT_DIR, names, version=1, overwrite=True,
                                metadata={"add_classes": report})
    files.update(model=out_dir / MODEL_FILE, export=Path(export), config=out_dir / CONFIG_FILE,
                 add_classes=out_dir / "add_classes.json", add_classes_txt=out_dir / "add_classes.txt")
    (out_dir / CONFIG_FILE).write_text(json.dumps(
        {**config, "class_names": names, "add_classes": report}, indent=2))
    files["add_classes"].write_text(json.dumps(report, indent=2))
    files["add_classes_txt"].write_text(format_add_classes_report(report) + "\n")
    steps.say(verbose, format_add_classes_report(report),
              *(f"  {name:<17}{path}" for name, path in files.items()))
    return {**report, "files": files}


def format_add_classes_report(report: dict[str, Any]) -> str:
    """The text form of :func:`add_classes_run`'s report.

    Example:
        >>> print(format_add_classes_report({"run": "r", "new_classes": ["c"], "imprinted_images": 2,
        ...     "imprint_seconds": 0.1, "new": {"images": 2, "accuracy": 0.5, "scored_on": "x"},
        ...     "old": {"images": 4, "accuracy_before": 1.0, "accuracy_after": 0.75,
        ...             "changed": 0.25, "to_new_classes": 0.25}}))
        added classes: ['c'] (imprinted from 2 images in 0.1 s) to r
        old classes:   accuracy 1.0000 -> 0.7500 (-25.0 points) on 4 validation images; 25.0% of their predictions changed (25.0% to a new class)
        new classes:   accuracy 0.5000 on 2 images (x)
    """
    lines = [f"added classes: {report['new_classes']} (imprinted from {report['imprinted_images']} "
             f"images in {report['imprint_seconds']:.1f} s) to {report['run']}"]
    old = report.get("old")
    if old:
        lines.append(f"old classes:   accuracy {old['accuracy_before']:.4f} -> {old['accuracy_after']:.4f} "
                     f"({100 * (old['accuracy_after'] - old['accuracy_before']):+.1f} points) on "
                     f"{old['images']} validation images; {100 * old['changed']:.1f}% of their "
                     f"predictions changed ({100 * old['to_new_classes']:.1f}% to a new class)")
    else:
        lines.append("old classes:   not scored (the run's data_dir is gone or its classes changed)")
    new = report["new"]
    lines.append(f"new classes:   accuracy {new['accuracy']:.4f} on {new['images']} images "
                 f"({new['scored_on']})")
    return "\n".join(lines)
