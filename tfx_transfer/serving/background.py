"""``tfx-transfer serve``'s server in a thread of this process: :func:`start_server`.

:func:`tfx_transfer.serving.app.serve` blocks until SIGTERM / Ctrl-C, as a server process
should; a notebook or a test wants the server next to its own code. :func:`start_server`
runs the same :class:`~tfx_transfer.serving.app.ModelServer` under uvicorn in a daemon
thread and returns a :class:`RunningServer` once it listens (the newest version loaded).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from typing import Any

from tfx_transfer.serving.app import DEFAULT_PORT, ModelServer

log = logging.getLogger(__name__)


class RunningServer:
    """A server running in a thread of this process (:func:`start_server`).

    ``url`` is where it answers, ``model_server`` its
    :class:`~tfx_transfer.serving.app.ModelServer` (versions,
    batcher); ``stop()`` stops accepting connections and finishes the requests in flight,
    as SIGTERM does for :func:`~tfx_transfer.serving.app.serve`. A context manager: leaving the ``with`` block stops it.
    """

    def __init__(self, http: Any, thread: threading.Thread, sock: socket.socket,
                 model_server: ModelServer):
        self._http, self._thread, self._sock = http, thread, sock
        self.model_server = model_server
        host, port = sock.getsockname()[:2]
        self.url = f"http://{f'[{host}]' if ':' in host else host}:{port}"

    @property
    def running(self) -> bool:
        """Whether it still serves (``False`` after :meth:`stop`)."""
        return self._thread.is_alive()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop accepting connections, answer the requests in flight, stop the batcher.

        Args:
            timeout: seconds to wait for the requests in flight; then ``TimeoutError``.
        """
        self._http.should_exit = True
        self._thread.join(timeout)
        self._sock.close()
        if self._thread.is_alive():
            raise TimeoutError(f"The server at {self.url} was still answering requests after "
                               f"{timeout} s; call stop() again to wait longer.")

    def __enter__(self) -> RunningServer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<RunningServer {self.model_server.model_name!r} at {self.url}>"


def start_server(export_dir: str | os.PathLike, model_name: str, host: str = "127.0.0.1",
                 port: int = DEFAULT_PORT, *, start_timeout: float = 60.0,
                 **options: Any) -> RunningServer:
    """Serve ``export_dir`` from a thread of this process; returns once it listens.

    At start the newest loadable version is loaded, as for ``tfx-transfer serve``; with none
    yet, it answers 404 for the model and waits for one (the log says so).

    The same server as :func:`~tfx_transfer.serving.app.serve` (and ``tfx-transfer serve``),
    for a notebook or a test: the call returns a :class:`RunningServer` (``.url``,
    ``.stop()``, a context manager) instead of blocking. Logs go to the
    ``tfx_transfer.serving`` logger.

    Args:
        export_dir: folder of numbered versions (``export_saved_model``'s ``export_dir``).
        model_name: the ``NAME`` in ``/v1/models/NAME``.
        host: the interface to listen on (``"0.0.0.0"``: every interface).
        port: the TCP port (default 8501, TF Serving's REST port); ``0``: a free one
            (``.url`` says which).
        start_timeout: seconds to wait for the server to load the model and listen.
        **options: :class:`~tfx_transfer.serving.app.ModelServer`'s ``max_batch_size``,
            ``batch_timeout_ms``, ``poll_interval``, ``max_request_bytes`` and
            ``unknown_threshold``.

    Raises:
        OSError: the port is taken (the message names it).
        RuntimeError: the server did not start (the ``tfx_transfer.serving`` log says why).

    Example:
        >>> import json, tempfile, urllib.request, numpy as np, tfx_transfer as tt
        >>> model = tt.build_transfer_model("vgg16", 2, input_shape=32, weights=None)
        >>> path = tt.export_saved_model(model, tempfile.mkdtemp() + "/flowers", ["daisy", "rose"])
        >>> with start_server(path.parent, "flowers", port=0) as server:
        ...     body = json.dumps({"instances": np.zeros((1, 32, 32, 3), int).tolist(),
        ...                        "signature_name": "predict_pixels"}).encode()
        ...     reply = urllib.request.urlopen(server.url + "/v1/models/flowers:predict", body)
        ...     len(json.load(reply)["predictions"])
        1
        >>> server.running
        False
    """
    model_server = ModelServer(export_dir, model_name, **options)  # ImportError: the extra to install
    import uvicorn

    try:
        sock = socket.create_server((host, int(port)),
                                    family=socket.AF_INET6 if ":" in host else socket.AF_INET)
    except OSError as exc:
        raise OSError(exc.errno, f"Cannot listen on {host}:{port} ({exc.strerror}); pass another "
                                 "port, or port=0 for a free one.") from exc
    http = uvicorn.Server(uvicorn.Config(model_server.app, log_level="warning", log_config=None))
    thread = threading.Thread(target=http.run, kwargs={"sockets": [sock]}, daemon=True,
                              name=f"tfx_transfer serve {model_name}")
    thread.start()
    deadline = time.monotonic() + start_timeout
    while not http.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            what = "stopped while starting" if not thread.is_alive() else \
                f"did not start within start_timeout={start_timeout} s"
            http.should_exit = True
            thread.join(5)
            sock.close()
            raise RuntimeError(f"The server for {export_dir} {what} (the tfx_transfer.serving log "
                               "says why).")
        time.sleep(0.02)
    server = RunningServer(http, thread, sock, model_server)
    log.info("model %r: REST API at %s/v1/models/%s", model_name, server.url, model_name)
    return server
