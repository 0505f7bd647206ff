"""Which version is served: the highest numbered folder of ``export_dir``, followed as new ones land."""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

from tfx_transfer.serving.servable import Servable

DEFAULT_POLL_INTERVAL = 1.0  # TF Serving's --file_system_poll_wait_seconds

log = logging.getLogger(__name__)


def _fingerprint(folder: Path) -> tuple:
    """Sizes and mtimes of every file: a failed load is retried only once the folder changes."""
    entries = []
    for dirpath, _, filenames in os.walk(folder):
        for name in filenames:
            try:
                stat = os.stat(os.path.join(dirpath, name))
            except OSError:
                continue
            entries.append((os.path.relpath(os.path.join(dirpath, name), folder), stat.st_size,
                            stat.st_mtime_ns))
    return tuple(sorted(entries))


class VersionPoller:
    """Serves the highest numbered version folder of ``export_dir`` and follows new ones.

    ``poll()`` looks once; ``start()`` polls every ``interval`` seconds in a
    thread. Only folders named by digits that contain ``saved_model.pb`` are
    candidates (the hidden ``.tmp-*`` folders an export writes before renaming
    never are); one that fails to load (or to answer the warm-up call) is
    logged and retried when its files change, while the current version keeps
    serving.

    Example (versions written by ``tf.saved_model.save``; ``export_saved_model`` numbers them too):
        >>> import tempfile, tensorflow as tf
        >>> module = tf.Module()
        >>> module.double = tf.function(lambda x: {"y": 2 * x},
        ...                             input_signature=[tf.TensorSpec([None], tf.float32)])
        >>> export_dir = Path(tempfile.mkdtemp())
        >>> tf.saved_model.save(module, str(export_dir / "1"), signatures=module.double)
        >>> poller = VersionPoller(export_dir)
        >>> poller.poll().version
        1
        >>> (export_dir / "3").mkdir()  # being written: no saved_model.pb yet, so not a candidate
        >>> tf.saved_model.save(module, str(export_dir / "2"), signatures=module.double)
        >>> poller.poll().version, poller.candidates()
        (2, [1, 2])
    """

    def __init__(self, export_dir: str | os.PathLike,
                 interval: float = DEFAULT_POLL_INTERVAL) -> None:
        self.export_dir = Path(export_dir)
        self.interval = float(interval)
        self.current: Servable | None = None
        self._failed: dict[int, tuple] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def candidates(self) -> list[int]:
        """Version numbers on disk that look complete, ascending."""
        if not self.export_dir.is_dir():
            return []
        return sorted(int(p.name) for p in self.export_dir.iterdir()
                      if p.name.isdigit() and (p / "saved_model.pb").is_file())

    def poll(self) -> Servable | None:
        """Load the highest complete version if it is not the one served; return the served one."""
        with self._lock:
            versions = self.candidates()
            if not versions:
                return self.current
            target = versions[-1]
            if self.current is not None and self.current.version == target \
                    and self.current.path.exists():
                return self.current
            folder = self.export_dir / str(target)
            stamp = _fingerprint(folder)
            if self._failed.get(target) == stamp:
                return self.current
            return self._load(folder, target, stamp)

    def _load(self, folder: Path, version: int, stamp: tuple) -> Servable | None:
        """Switch to ``folder`` once it has loaded and warmed up; else log and keep the current."""
        start = time.monotonic()
        try:
            servable = Servable(folder, version)
            servable.warm_up()
        except Exception as err:  # noqa: BLE001 - any failure: keep serving the old version
            self._failed[version] = stamp
            log.error("version %d at %s did not load (%s: %s); still serving %s; retried when "
                      "its files change", version, folder, type(err).__name__,
                      str(err).strip().splitlines()[0] if str(err).strip() else "",
                      f"version {self.current.version}" if self.current else "nothing")
            return self.current
        self._failed.pop(version, None)
        old, self.current = self.current, servable
        log.info("serving version %d from %s (loaded in %.1f s)%s", version, folder,
                 time.monotonic() - start, f", replacing version {old.version}" if old else "")
        return servable

    def start(self) -> None:
        """Poll every ``interval`` seconds in a daemon thread until :meth:`stop`."""
        if self._thread is not None:
            return
        self._stop.clear()

        def run() -> None:
            while not self._stop.wait(self.interval):
                try:
                    self.poll()
                except Exception:  # noqa: BLE001 - a poll never kills the server
                    log.exception("polling %s failed", self.export_dir)

        self._thread = threading.Thread(target=run, name="tfx-transfer-poller", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the polling thread (waits for a load in progress)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
