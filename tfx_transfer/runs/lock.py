"""One process per run folder: an exclusive lock on ``RUN/.lock``.

The lock is an OS file lock (``fcntl.flock``), so the kernel releases it when
its process ends in any way, ``kill -9`` included: a lock left by a dead process
is stale and the next run takes it over. The file records the holder's pid and
host, so a refused run can say who holds the folder.

Example:
    >>> import tempfile
    >>> run = tempfile.mkdtemp()
    >>> with lock_run_folder(run):
    ...     pass
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

LOCK_FILE = ".lock"


class RunFolderLockedError(RuntimeError):
    """Another live process is using the run folder.

    Raised by :func:`lock_run_folder`; the message names the holder's pid, host,
    command and start time.

    Example (a second lock on a held folder is refused, also within one process):
        >>> import tempfile
        >>> run = tempfile.mkdtemp()
        >>> with lock_run_folder(run, command="train"):
        ...     try:
        ...         with lock_run_folder(run):
        ...             pass
        ...     except RunFolderLockedError as err:
        ...         refused = str(err)
        >>> refused.startswith(f"Run folder {run!r} is in use by process"), "(train," in refused
        (True, True)
    """


@contextlib.contextmanager
def lock_run_folder(run: str | os.PathLike, command: str | None = None) -> Iterator[Path]:
    """Hold the run folder's lock for the ``with`` block; refuse if a live process holds it.

    Raises:
        RunFolderLockedError: naming the pid, host and command of the holder.

    Example:
        >>> import tempfile
        >>> with lock_run_folder(tempfile.mkdtemp()) as path:
        ...     path.name
        '.lock'
    """
    path = Path(run) / LOCK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            try:
                holder = json.loads(handle.read() or "{}")
            except ValueError:
                holder = {}
            raise RunFolderLockedError(
                f"Run folder {str(run)!r} is in use by process {holder.get('pid', '?')} on "
                f"{holder.get('host', '?')} ({holder.get('command', 'tfx_transfer')}, since "
                f"{holder.get('since', '?')}). Wait for it to finish, stop it, or use another "
                "folder (--out)."
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({
            "pid": os.getpid(), "host": socket.gethostname(),
            "command": command or " ".join(sys.argv[:3]) or "python",
            "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }))
        handle.flush()
        yield path
    finally:
        handle.close()  # releases the lock; the file stays (a stale one is harmless)
