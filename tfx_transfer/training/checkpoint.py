"""``BestModelCheckpoint``: keep the whole transfer model of the best epoch, across both phases.

:func:`tfx_transfer.train` keeps ``RUN/best.keras`` and ``RUN/best.json`` with it; the
best checkpoint becomes the run's ``model.keras``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import keras

from tfx_transfer.layout import BEST_STATE_FILE


class BestModelCheckpoint(keras.callbacks.Callback):
    """Save the whole transfer model whenever the monitored value improves.

    ``ModelCheckpoint(save_best_only=True)`` saves ``self.model``, which during
    :func:`tfx_transfer.fine_tune`'s cached-features head phase is the head model
    alone (and ``fine_tune`` therefore turns feature caching off when it sees one).
    This callback always saves the ``model`` it was given, so it works in both
    phases and with cached features. The best value and epoch go to a JSON file
    next to the checkpoint (``best.json``), from which a resumed run continues to compare.

    Args:
        model: the model to save (the whole transfer model).
        filepath: the ``.keras`` file to write.
        monitor: the epoch log to compare (``"val_loss"``: lower is better;
            accuracy and AUC: higher is better).
        resume: start from the best value saved next to ``filepath`` (when it
            monitors the same value), so that a resumed run only saves improvements.
        verbose: 1 to print a line on each save.

    Example:
        >>> import os, tempfile, numpy as np, tfx_transfer as tt
        >>> model = tt.build_transfer_model("vgg16", 2, input_shape=32, weights=None, head="avg")
        >>> x, y = np.zeros((4, 32, 32, 3), "uint8"), np.array([0, 1, 0, 1])
        >>> best = BestModelCheckpoint(model, os.path.join(tempfile.mkdtemp(), "best.keras"),
        ...                            monitor="val_loss", verbose=0)
        >>> _ = tt.fine_tune(model, (x, y), (x, y), head_epochs=1, fine_tune_epochs=0,
        ...                  callbacks=[best], verbose=0)
        >>> best.filepath.is_file(), best.state_path.is_file()
        (True, True)
    """

    def __init__(self, model: keras.Model, filepath: str | os.PathLike, monitor: str = "val_loss",
                 resume: bool = False, verbose: int = 1):
        super().__init__()
        self.full_model = model
        self.filepath = Path(filepath)
        self.state_path = self.filepath.with_name(BEST_STATE_FILE)
        self.monitor = monitor
        self.mode = "max" if "acc" in monitor or monitor.endswith("auc") else "min"
        self.verbose = verbose
        self.best: float | None = None
        self.best_epoch: int | None = None
        if resume and self.state_path.exists() and self.filepath.exists():
            state = json.loads(self.state_path.read_text())
            if state.get("monitor") == monitor:
                self.best, self.best_epoch = float(state["value"]), int(state["epoch"])

    def _improved(self, value: float) -> bool:
        if self.best is None:
            return True
        return value < self.best if self.mode == "min" else value > self.best

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        value = (logs or {}).get(self.monitor)
        if value is None:
            raise ValueError(
                f"BestModelCheckpoint monitors {self.monitor!r} but the epoch logs only have "
                f"{sorted(logs or {})}; pass validation data or monitor one of those."
            )
        value = float(value)
        if not self._improved(value):
            return
        if self.verbose:
            before = "" if self.best is None else f" (was {self.best:.4f})"
            print(f"\nEpoch {epoch + 1}: {self.monitor} {value:.4f}{before}; saving {self.filepath}")
        self.best, self.best_epoch = value, epoch
        self.full_model.save(self.filepath)
        self.state_path.write_text(json.dumps(
            {"monitor": self.monitor, "value": value, "epoch": epoch}, indent=2))
