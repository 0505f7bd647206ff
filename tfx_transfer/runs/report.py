"""The evaluation report of a run: one orchestration for ``train`` and ``tfx-transfer evaluate``.

:func:`evaluate_run` scores a model on labelled images
(:func:`tfx_transfer.evaluate_model`) and ranks the same images by their loss
(:func:`tfx_transfer.evaluation.mislabeled.write_top_losses`), writing into one folder::

    metrics.json  report.txt  confusion_matrix.png  predictions.png  top_losses.png  top_losses.csv

``train`` writes it for the validation images into the run folder (and for
``test/`` into ``RUN/test/``); ``tfx-transfer evaluate RUN FOLDER`` into
``RUN/evaluate-<FOLDER name>/`` (:func:`tfx_transfer.layout.report_dir`).

Example:
    >>> import tempfile, numpy as np, tfx_transfer as tt
    >>> model = tt.build_transfer_model("vgg16", 2, input_shape=32, weights=None,
    ...                                 class_names=["cat", "dog"])
    >>> x, y = np.zeros((4, 32, 32, 3), "uint8"), np.array([0, 1, 0, 1])
    >>> metrics = evaluate_run(model, (x, y), tempfile.mkdtemp(), verbose=False)
    >>> sorted(metrics["files"])
    ['confusion_matrix', 'metrics', 'predictions', 'report', 'top_losses_csv', 'top_losses_png']
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tfx_transfer.layout import report_dir


def evaluate_run(model: Any, data: Any, out: str | os.PathLike | None = None, *,
                 paths: Sequence[str] | None = None, ood: str | os.PathLike | None = None,
                 unknown_threshold: float | None = None, **options: Any) -> dict[str, Any]:
    """Evaluate ``model`` on labelled images and write the whole report into ``out``.

    Args:
        model: a Keras model, an :class:`~tfx_transfer.ExportedModel`, or a path: a run
            folder, an export (or version) folder or a ``.keras`` file.
        data: labelled images: an image folder (its split chosen as
            :func:`tfx_transfer.evaluate_model` does), a dataset of ``(images,
            labels)`` batches or an ``(x, y)`` tuple of arrays.
        out: the report folder; default for an image folder:
            :func:`~tfx_transfer.layout.report_dir` (``RUN/evaluate-<name>/``
            for a run folder, else ``./evaluate-<name>/``).
        paths: the file of each image, in ``data``'s order (listed in
            ``top_losses.csv`` when ``data`` is not a folder).
        ood: a folder of images of classes the model does not know: adds the unknown
            score's AUROC, FPR at 95% TPR and flagged shares (``"unknown"`` in
            ``metrics.json``, lines in ``report.txt``, ``unknown_scores.png``).
        unknown_threshold: with ``ood``, the threshold instead of the model's own.
        **options: :func:`tfx_transfer.evaluate_model`'s keywords (``class_names``,
            ``top_k``, ``batch_size``, ``max_images``, ``split``, ``tta``, ``verbose``);
            the top losses are ranked on the same images.

    Returns:
        ``evaluate_model``'s metrics plus ``"files"``: ``{name: Path}`` of every file written.

    Example:
        >>> import tempfile, numpy as np, tfx_transfer as tt
        >>> model = tt.build_transfer_model("vgg16", 2, input_shape=32, weights=None, head="avg")
        >>> x, y = np.zeros((4, 32, 32, 3), "uint8"), np.array([0, 1, 0, 1])
        >>> out = tempfile.mkdtemp()
        >>> metrics = evaluate_run(model, (x, y), out, class_names=["cat", "dog"], verbose=False)
        >>> metrics["num_samples"], metrics["files"]["top_losses_csv"].name
        (4, 'top_losses.csv')
    """
    from tfx_transfer.evaluation.evaluate import evaluate_model, load_for_evaluation
    from tfx_transfer.evaluation.mislabeled import write_top_losses

    if isinstance(data, (str, os.PathLike)) and not Path(data).exists():
        raise FileNotFoundError(f"{str(data)!r} does not exist (labelled images: class folders, "
                                "or test/ or val/ of them, or a CSV table).")
    if out is None:
        source = getattr(data, "table", data)  # a TableSpec's CSV
        if not isinstance(source, (str, os.PathLike)):
            raise ValueError("evaluate_run: pass out= (the report folder) when data is not an "
                             "image folder or a CSV table.")
        out = report_dir(model, source)
    metrics = evaluate_model(model, data, out=out, **options)
    loaded, known_names = load_for_evaluation(model)  # the same images, ranked by their loss
    ranking = {key: options[key] for key in ("batch_size", "split") if key in options}
    files = {**metrics.pop("files"), **write_top_losses(
        loaded, data, out, class_names=options.get("class_names") or known_names, paths=paths,
        **ranking)}
    if ood is not None:
        unknown = _report_unknown(loaded, data, ood, out, files, unknown_threshold=unknown_threshold,
                                 **ranking)
        files.update(unknown.pop("files"))
        metrics["unknown"] = unknown
    return {**metrics, "files": {name: Path(path) for name, path in files.items()}}


def format_evaluation(metrics: dict[str, Any]) -> str:
    """The text of :func:`evaluate_run`'s result: the report (with TTA when scored) and the files.

    Example:
        >>> import numpy as np
        >>> from tfx_transfer.evaluation.metrics import classification_metrics
        >>> metrics = classification_metrics(np.array([0, 1]), np.eye(2), ["cat", "dog"])
        >>> print(format_evaluation({**metrics, "files": {"report": Path("r/report.txt")}}))
        accuracy ...
          report           r/report.txt
    """
    parts = [format_metrics(metrics)]
    if metrics.get("tta"):
        from tfx_transfer.evaluation.tta import format_tta

        parts.append(format_tta(metrics, metrics["tta"]))
    if metrics.get("unknown"):
        from tfx_transfer.evaluation.unknown_detection import format_unknown

        parts.append(format_unknown(metrics["unknown"]))
    parts.append("\n".join(f"  {name:<17}{path}" for name, path in metrics.get("files", {}).items()))
    return "\n\n".join(parts)


def _report_unknown(model: Any, data: Any, ood: Any, out: str | Path, files: dict[str, Path], *,
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


def format_metrics(metrics: dict[str, Any]) -> str:
    """The report text of single-label or multi-label metrics (``metrics["multi_label"]``).

    Example:
        >>> from tfx_transfer.evaluation.multilabel import multilabel_metrics
        >>> format_metrics(multilabel_metrics([[1, 0]], [[0.9, 0.1]], ["a", "b"]))[:21]
        'multi-label: 1 images'
    """
    if metrics.get("multi_label"):
        from tfx_transfer.evaluation.multilabel import format_multilabel_report

        return format_multilabel_report(metrics)
    from tfx_transfer.evaluation.metrics import format_report

    return format_report(metrics)
