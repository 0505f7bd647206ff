"""The ``tfx-transfer adapt`` job: adapt a training run's model to a target folder, as a new run folder.

The new run folder holds ``model.keras`` (the adapted model), ``export/1/`` (its
SavedModel), ``config.json`` (the run's, plus an ``"adaptation"`` entry),
``adaptation.json`` and ``adaptation.txt`` (the report, :func:`format_adaptation_report`).

Example:
    >>> print(format_adaptation_report({"method": "adabn", "run": "r", "target": "t",
    ...     "source": "s", "target_images_used": 3, "target_labels": "none", "scores": None}))
    adaptation: adabn
    run:        r
    target:     t (3 images, labels: none)
    source:     s
"""

from __future__ import annotations

import datetime
import inspect
import json
import os
from pathlib import Path
from typing import Any

from tfx_transfer.adaptation.adapt import DEFAULT_METHOD, adapt
from tfx_transfer.data.files import split_folders, visible_dirs
from tfx_transfer.layout import CONFIG_FILE, EXPORT_DIR, MODEL_FILE


def _labelled_classes(folder: Path) -> list[str]:
    """The class folders ``evaluate_model`` would score (test/, val/ or the folder itself)."""
    splits = split_folders(folder)
    folder = next(splits[n] for n in ("test", "validation", "train") if n in splits)
    return [p.name for p in visible_dirs(folder)]


def _settings(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Every keyword setting of :func:`~tfx_transfer.adapt` as used (defaults included)."""
    return {name: kwargs.get(name, p.default) for name, p in inspect.signature(adapt).parameters.items()
            if p.kind is p.KEYWORD_ONLY and name not in ("callbacks", "class_names")}


def run_source(config: dict[str, Any]) -> Any:
    """The source images a run trained on, for ``adapt``: its folder, or for a run trained
    from a CSV table its training rows as ``(images, labels)`` batches; ``None`` when gone.

    Example:
        >>> run_source({"data_dir": "/nonexistent/photos"}) is None
        True
    """
    data = config.get("data_dir")
    if not data or not Path(data).exists():
        return None
    if Path(data).is_dir():
        return data
    from tfx_transfer.runs.deploy import config_images  # a table: read as training read it

    return config_images({**config, "augmentation": "none"}).train


def adapt_run(
    run_dir: str | os.PathLike,
    target: str | os.PathLike,
    out: str | os.PathLike,
    method: str = "default",
    source: str | os.PathLike | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """Adapt the model of a ``tfx-transfer train`` run to a target folder: a new run folder.

    ``out`` gets ``model.keras`` (the adapted model), ``export/1/`` (its SavedModel,
    :func:`~tfx_transfer.export_saved_model`), ``config.json`` (the run's, plus an
    ``"adaptation"`` entry), ``adaptation.json`` and ``adaptation.txt`` (the report).
    ``source`` defaults to the run's ``data_dir`` (:func:`run_source`: a CSV run's training rows; ``"adabn"`` uses its images only).
    The target's labels are never used for adaptation; when the target folder has
    class folders named like the model's classes, the report scores the model before
    and after on them (its ``test/`` or ``val/`` split when it has one, else all its
    images) and says that those labels served only for scoring.

    Args:
        run_dir: a run folder of ``tfx-transfer train`` (``config.json`` + ``model.keras``).
        target: the folder of target-domain images (see :func:`~tfx_transfer.adapt`).
        out: the new run folder (must not hold a model yet).
        method: see :func:`~tfx_transfer.adapt`.
        source: the labelled source folder (default: the run's training data, :func:`run_source`).
        **kwargs: the other settings of :func:`~tfx_transfer.adapt` (``epochs``,
            ``lr``, ``batch_size``, ``seed``, ``loss_weight``, ``blocks``,
            ``callbacks``, ``verbose``); the report records every setting but
            ``callbacks``, defaults included.

    Returns:
        The report (also in ``adaptation.json``).

    Example (not run by the doctests: it needs a training run; tests/test_adapt.py runs it):
        >>> report = adapt_run("runs/photos", "new_camera/", "runs/photos-adapted")  # doctest: +SKIP
        >>> report["scores"]["after"]["accuracy"]  # doctest: +SKIP
        0.91
    """
    from tfx_transfer.evaluation.evaluate import evaluate_model, load_for_evaluation
    from tfx_transfer.export.saved_model import export_saved_model

    run, target_dir, out_dir = Path(run_dir), Path(target), Path(out)
    if not (run / CONFIG_FILE).is_file() or not (run / MODEL_FILE).is_file():
        raise FileNotFoundError(f"{str(run)!r} is not a run folder (config.json + model.keras "
                                "from 'tfx-transfer train').")
    if not target_dir.is_dir():
        raise FileNotFoundError(f"Target folder {str(target_dir)!r} does not exist.")
    if (out_dir / MODEL_FILE).exists():
        raise ValueError(f"{str(out_dir)!r} already holds a model; choose another --out.")
    if out_dir.resolve() == run.resolve():
        raise ValueError("--out must be a new folder, not the run folder itself.")
    config = json.loads((run / CONFIG_FILE).read_text())
    model, class_names = load_for_evaluation(run)
    class_names = list(class_names or config.get("class_names") or [])
    if not class_names:
        raise ValueError(f"{run / CONFIG_FILE} has no class_names; cannot export the model.")
    if source is None:
        source = run_source(config)
    chosen = DEFAULT_METHOD if method == "default" else method
    adapted = adapt(model, target_dir, chosen, source=source, class_names=class_names, **kwargs)

    folders = _labelled_classes(target_dir)
    labelled = bool(folders) and set(folders) <= set(class_names)
    scores = None
    if labelled:
        # the target's test/ or val/ when present, else all its images (none trained the model)
        found = split_folders(target_dir)
        split = None if {"test", "validation"} & set(found) else "all"
        before = evaluate_model(model, target_dir, class_names, verbose=False, split=split)
        after = evaluate_model(adapted, target_dir, class_names, verbose=False, split=split)
        keep = ("num_samples", "accuracy", "macro_avg")
        scores = {"before": {k: before[k] for k in keep}, "after": {k: after[k] for k in keep}}
    out_dir.mkdir(parents=True, exist_ok=True)
    adapted.save(out_dir / MODEL_FILE)
    report = {
        "method": chosen,
        "run": str(run.resolve()),
        "target": str(target_dir.resolve()),
        "source": None if source is None else str(source),
        "target_images_used": adapted._tfx_adaptation["target_images"],
        "target_labels": ("used only to score the model before and after adaptation, never "
                          "for adaptation") if labelled else "none (no class folders named like "
                          "the model's classes): not scored",
        "scores": scores,
        "settings": _settings(kwargs),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    export = export_saved_model(adapted, out_dir / EXPORT_DIR, class_names, version=1,
                                overwrite=True, metadata={"adaptation": report})
    report["export"] = str(export)
    (out_dir / CONFIG_FILE).write_text(json.dumps({**config, "adaptation": report}, indent=2))
    (out_dir / "adaptation.json").write_text(json.dumps(report, indent=2))
    (out_dir / "adaptation.txt").write_text(format_adaptation_report(report) + "\n")
    return report


def format_adaptation_report(report: dict[str, Any]) -> str:
    """The text form of :func:`adapt_run`'s report.

    Example:
        >>> print(format_adaptation_report({"method": "adabn", "run": "r", "target": "t",
        ...     "source": None, "target_images_used": 5, "target_labels": "none", "scores": None}))
        adaptation: adabn
        run:        r
        target:     t (5 images, labels: none)
        source:     none
    """
    lines = [f"adaptation: {report['method']}", f"run:        {report['run']}",
             f"target:     {report['target']} ({report['target_images_used']} images, labels: "
             f"{report['target_labels']})", f"source:     {report['source'] or 'none'}"]
    scores = report.get("scores")
    if scores:
        b, a = scores["before"], scores["after"]
        lines += [f"target accuracy before: {b['accuracy']:.4f}  after: {a['accuracy']:.4f}  "
                  f"({100 * (a['accuracy'] - b['accuracy']):+.1f} points, {a['num_samples']} "
                  "images; their labels were used only for this score)"]
    return "\n".join(lines)
