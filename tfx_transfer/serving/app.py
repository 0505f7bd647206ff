"""Serve an export over TF Serving's REST API: ``tfx-transfer serve``.

The same requests a client sends to TF Serving
(``tensorflow_serving/g3doc/api_rest.md``), answered by the same SavedModel
(:func:`tfx_transfer.export_saved_model`'s ``<export_dir>/<version>/`` layout), on any
machine with Python: no Docker, no ``tensorflow_model_server`` binary.

================================================  ====================================
``GET  /v1/models/NAME[/versions/V]``             ``{"model_version_status": [...]}``
``GET  /v1/models/NAME[/versions/V]/metadata``    ``{"model_spec", "metadata": {"signature_def"}}``
``POST /v1/models/NAME[/versions/V]:predict``     row (``"instances"``) or columnar
                                                  (``"inputs"``) form, ``"signature_name"``
``GET  /``                                        a page: drop an image, see the top classes
================================================  ====================================

A multi-label export's predictions also carry ``"labels"``: every label whose
``above_threshold`` is set, best first, as ``{"class", "score"}`` (the export's
``class_names`` list only the top ``k``; ``tfx-transfer predict --json`` prints the same).

Binary values are ``{"b64": "..."}`` objects. Errors are ``{"error": "..."}``:
400 for bad JSON, bad base64, bytes that are not an image, unknown or missing
inputs; 404 for an unknown model, version or path; 413 past
``max_request_bytes``.

How it runs (versions as TF Serving's defaults):

* **Images.** For an export of ours, each request's images are decoded and
  resized in the request's thread with the function the export's graph uses
  (:func:`tfx_transfer.data.decode.decode_and_resize`) and batched as pixels into the
  export's ``predict_pixels_uint8`` signature: the same network, the same
  outputs (tested within 1e-5 of calling ``serving_default`` in process), a bad
  image fails its own request before batching, and decoding runs in parallel
  (:mod:`tfx_transfer.serving.servable`).
* **Versions.** The highest numbered folder of ``export_dir`` is served;
  the folder is polled every ``poll_interval`` seconds and a new version
  replaces the old one once it has ``saved_model.pb``, has loaded and has
  answered a warm-up call (hidden ``.tmp-*`` folders, which the export writes
  before renaming, are never looked at). Requests already queued finish on the
  version they were routed to; nothing is dropped (:mod:`tfx_transfer.serving.versions`).
* **Micro-batching.** Concurrent requests for the same signature are
  concatenated into one call of up to ``max_batch_size`` rows, waiting at most
  ``batch_timeout_ms`` after the first (TF Serving's ``max_batch_size`` /
  ``batch_timeout_micros``), in one worker thread (:mod:`tfx_transfer.serving.batching`).
* **Shutdown.** On SIGTERM / Ctrl-C uvicorn stops accepting connections and
  waits for the requests in flight; the batcher then runs what is queued.

Requests are parsed and answered by :mod:`tfx_transfer.serving.protocol`; this
module holds the application (:class:`ModelServer`, :func:`create_app`) and :func:`serve`
(blocks, as the CLI); :mod:`tfx_transfer.serving.background` runs the same server in a thread
of this process (a notebook, a test).
Needs the optional extra: ``pip install 'tfx_transfer[serve]'`` (Starlette +
uvicorn).

Example:
    $ tfx-transfer serve runs/photos/export --model-name photos --port 8501
    $ curl -d '{"instances": [{"b64": "'$(base64 -w0 cat.jpg)'"}]}' \\
        localhost:8501/v1/models/photos:predict
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
from pathlib import Path
from typing import Any

from tfx_transfer.serving.batching import (
    DEFAULT_BATCH_TIMEOUT_MS,
    DEFAULT_MAX_BATCH_SIZE,
    MicroBatcher,
)
from tfx_transfer.serving.page import page_html
from tfx_transfer.serving.protocol import ROUTE, RequestError, parse_predict, predict_response
from tfx_transfer.serving.servable import Servable
from tfx_transfer.serving.versions import DEFAULT_POLL_INTERVAL, VersionPoller

DEFAULT_PORT = 8501  # TF Serving's REST port
DEFAULT_MAX_REQUEST_BYTES = 32 * 2**20
INSTALL_HINT = "pip install 'tfx_transfer[serve]'"

log = logging.getLogger(__name__)


def _require_stack() -> None:
    missing = []
    for module in ("starlette", "uvicorn"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise ImportError(
            f"tfx-transfer serve needs {' and '.join(missing)} (not installed); "
            f"install the serving extra: {INSTALL_HINT}"
        )


class ModelServer:
    """A model's versions, its batcher and the Starlette application that serves them.

    Args:
        export_dir: folder of numbered versions (``export_saved_model``'s ``export_dir``).
        model_name: the ``NAME`` in ``/v1/models/NAME``.
        max_batch_size: most rows per signature call.
        batch_timeout_ms: longest wait for more requests after the first of a batch.
        poll_interval: seconds between looks for a new version (0: never look again).
        max_request_bytes: larger request bodies get 413.
        unknown_threshold: for an export with an unknown score, the threshold of its
            ``unknown`` output instead of the export's own.

    Example (any SavedModel in a numbered folder; :func:`create_app` serves an export of ours):
        >>> import tempfile, tensorflow as tf
        >>> module = tf.Module()
        >>> module.double = tf.function(lambda x: {"y": 2 * x},
        ...                             input_signature=[tf.TensorSpec([None], tf.float32)])
        >>> export_dir = Path(tempfile.mkdtemp()) / "doubler"
        >>> tf.saved_model.save(module, str(export_dir / "1"), signatures=module.double)
        >>> server = ModelServer(export_dir, "doubler", max_batch_size=16)
        >>> server.start()  # what the app's lifespan does before the first request
        >>> server.poller.current.version
        1
        >>> server.stop()  # and after the last: finishes queued calls
        >>> type(server.app).__name__  # run it with uvicorn.run(server.app) or serve(...)
        'Starlette'
    """

    def __init__(self, export_dir: str | os.PathLike, model_name: str, *,
                 max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
                 batch_timeout_ms: float = DEFAULT_BATCH_TIMEOUT_MS,
                 poll_interval: float = DEFAULT_POLL_INTERVAL,
                 max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
                 unknown_threshold: float | None = None) -> None:
        _require_stack()
        export_dir = Path(export_dir)
        if not export_dir.is_dir():
            raise FileNotFoundError(
                f"export_dir {str(export_dir)!r} does not exist; pass the export folder that holds "
                "numbered versions (tfx-transfer export / export_saved_model's export_dir)."
            )
        if (export_dir / "saved_model.pb").exists():
            raise ValueError(
                f"export_dir {str(export_dir)!r} is itself a SavedModel; pass its parent, the folder "
                "that holds the numbered versions (TF Serving layout <export_dir>/<version>/)."
            )
        if not model_name or not re.fullmatch(r"[^/:\s]+", model_name):
            raise ValueError(f"model_name={model_name!r}: use a non-empty name without '/', ':' "
                             "or spaces, e.g. the folder's name.")
        if int(max_request_bytes) < 1024:
            raise ValueError(f"max_request_bytes={max_request_bytes} is too small; use at least 1024.")
        if float(poll_interval) < 0:
            raise ValueError(f"poll_interval={poll_interval} must be 0 (no polling) or more seconds.")
        if unknown_threshold is not None:
            from tfx_transfer.models.unknown_score import check_threshold

            unknown_threshold = check_threshold(unknown_threshold)
        self.unknown_threshold = unknown_threshold
        self.model_name = model_name
        self.max_request_bytes = int(max_request_bytes)
        self.poller = VersionPoller(export_dir, poll_interval)
        self.batcher = MicroBatcher(max_batch_size, batch_timeout_ms)
        self.app = self._build_app()

    # lifecycle

    def start(self) -> None:
        """Load the newest version (if any yet), start the batcher and the poller."""
        if self.poller.poll() is None:
            log.warning("no loadable version under %s yet (numbered folders with saved_model.pb); "
                        "waiting for one", self.poller.export_dir)
        self.batcher.start()
        if self.poller.interval > 0:
            self.poller.start()

    def stop(self) -> None:
        """Stop polling, finish every queued call (in-flight requests get their answers)."""
        self.poller.stop()
        self.batcher.close()
        sizes = self.batcher.batch_sizes
        if sizes:
            calls, rows = sum(sizes.values()), sum(size * n for size, n in sizes.items())
            log.info("served %d row(s) in %d model call(s), %.1f per call, at most %d", rows, calls,
                     rows / calls, max(sizes))

    # routing helpers

    def _servable(self, name: str, version: str | None) -> Servable:
        current = self.poller.current
        if name != self.model_name:
            raise RequestError(404, f"Servable not found for request: Latest({name}); this server "
                                    f"serves the model {self.model_name!r}.")
        if version is not None:
            if not version.isdigit():
                raise RequestError(404, f"Malformed request: version {version!r} must be an "
                                        "integer, e.g. /versions/1.")
            if current is None or current.version != int(version):
                serving = f"version {current.version}" if current else "no version yet"
                raise RequestError(404, f"Servable not found for request: Specific({name}, "
                                        f"{int(version)}); serving {serving}.")
        if current is None:
            raise RequestError(404, f"Servable not found for request: Latest({name}); no version "
                                    f"loaded yet under {str(self.poller.export_dir)!r}.")
        return current

    def _status(self, servable: Servable) -> dict:
        return {"model_version_status": [{
            "version": str(servable.version), "state": "AVAILABLE",
            "status": {"error_code": "OK", "error_message": ""},
        }]}

    def _metadata(self, servable: Servable) -> dict:
        return {
            "model_spec": {"name": self.model_name, "signature_name": "",
                           "version": str(servable.version)},
            "metadata": {"signature_def": {"signature_def": servable.signature_defs}},
        }

    async def _read_body(self, request: Any) -> bytes:
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.max_request_bytes:
            raise RequestError(413, f"Request body of {int(length)} bytes is over the limit of "
                                    f"{self.max_request_bytes} bytes (--max-request-bytes); send "
                                    "fewer or smaller images per request.")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self.max_request_bytes:
                raise RequestError(413, f"Request body over the limit of {self.max_request_bytes} "
                                        "bytes (--max-request-bytes); send fewer or smaller images "
                                        "per request.")
            chunks.append(chunk)
        return b"".join(chunks)

    async def _predict(self, request: Any, servable: Servable) -> dict:
        from starlette.concurrency import run_in_threadpool

        body = await self._read_body(request)

        def parse() -> tuple[str, dict, bool]:
            try:
                data = json.loads(body)
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                raise RequestError(400, f"JSON Parse error: {err}") from None
            signature, inputs, row_form = parse_predict(data, servable)
            return (*servable.prepare(signature, inputs), row_form)

        signature, inputs, row_form = await run_in_threadpool(parse)
        try:
            future = self.batcher.submit(servable, signature, inputs)
        except RuntimeError as err:
            raise RequestError(503, str(err)) from None
        try:
            outputs = await asyncio.wrap_future(future)
        except Exception as err:  # noqa: BLE001 - a model error is the client's 400
            import tensorflow as tf

            if isinstance(err, tf.errors.InvalidArgumentError):
                raise RequestError(400, err.message.strip().splitlines()[0]) from None
            raise
        if self.unknown_threshold is not None and "unknown_score" in outputs:
            import numpy as np

            outputs = {**outputs, "unknown": np.asarray(outputs["unknown_score"]) > self.unknown_threshold}
        return await run_in_threadpool(predict_response, servable.add_labels(outputs), row_form)

    # the application

    def _build_app(self) -> Any:
        import contextlib

        from starlette.applications import Starlette
        from starlette.concurrency import run_in_threadpool
        from starlette.requests import Request
        from starlette.responses import HTMLResponse, Response
        from starlette.routing import Route

        def reply(data: dict, status: int = 200) -> Response:
            return Response(json.dumps(data), status_code=status, media_type="application/json")

        async def api(request: Request) -> Response:
            path, method = request.url.path, request.method
            try:
                match = ROUTE.match(path)
                if match is None:
                    raise RequestError(404, f"Malformed request: {method} {path}")
                servable = self._servable(match["name"], match["version"])
                verb = match["verb"]
                if verb is None:
                    if method != "GET":
                        raise RequestError(405, f"Malformed request: {method} {path}; use GET.")
                    return reply(self._metadata(servable) if match["metadata"] else
                                 self._status(servable))
                if method != "POST":
                    raise RequestError(405, f"Malformed request: {method} {path}; use POST.")
                if verb != "predict":
                    raise RequestError(400 if verb in ("classify", "regress") else 404,
                                       f"{verb!r} is not supported here: the export's signatures "
                                       "are predict signatures; use :predict.")
                return reply(await self._predict(request, servable))
            except RequestError as err:
                return reply({"error": err.message}, err.status)
            except Exception as err:  # noqa: BLE001 - the server keeps serving
                log.exception("%s %s failed", method, path)
                return reply({"error": f"Internal error: {type(err).__name__}: {err}"}, 500)

        async def page(request: Request) -> Response:
            servable = self.poller.current
            return HTMLResponse(page_html(self.model_name, servable.version if servable else None))

        @contextlib.asynccontextmanager
        async def lifespan(app: Any):
            await run_in_threadpool(self.start)
            try:
                yield
            finally:
                await run_in_threadpool(self.stop)

        methods = ["GET", "POST", "PUT", "DELETE", "PATCH"]
        return Starlette(routes=[Route("/", page, methods=["GET"]),
                                 Route("/v1/{rest:path}", api, methods=methods)],
                         lifespan=lifespan)


def create_app(export_dir: str | os.PathLike, model_name: str, **options: Any) -> Any:
    """The Starlette application serving ``export_dir`` as ``model_name`` (options: :class:`ModelServer`).

    Run it with any ASGI server; its lifespan loads the model and starts the batcher.

    Example:
        >>> import tempfile, tfx_transfer as tt
        >>> from starlette.testclient import TestClient
        >>> model = tt.build_transfer_model("vgg16", 2, input_shape=(32, 32, 3), weights=None)
        >>> path = tt.export_saved_model(model, tempfile.mkdtemp() + "/flowers", ["daisy", "rose"])
        >>> app = create_app(path.parent, "flowers", max_batch_size=16)
        >>> with TestClient(app) as client:  # in-process, lifespan included
        ...     client.get("/v1/models/flowers").json()["model_version_status"][0]["version"]
        '1'

        Served for real with ``uvicorn.run(app, port=8501)`` (blocks, so not run here).
    """
    return ModelServer(export_dir, model_name, **options).app


def serve(export_dir: str | os.PathLike, model_name: str, host: str = "127.0.0.1",
          port: int = DEFAULT_PORT, **options: Any) -> None:
    """Serve ``export_dir`` on ``http://host:port`` until SIGTERM / Ctrl-C (blocks).

    Args:
        export_dir: folder of numbered versions (``export_saved_model``'s ``export_dir``).
        model_name: the ``NAME`` in ``/v1/models/NAME``.
        host: the interface to listen on (``"0.0.0.0"``: every interface).
        port: the TCP port (default 8501, TF Serving's REST port).
        **options: :class:`ModelServer`'s ``max_batch_size``, ``batch_timeout_ms``,
            ``poll_interval``, ``max_request_bytes`` and ``unknown_threshold``.

    Example (a folder that is not an export is refused before anything listens):
        >>> import tempfile
        >>> serve(Path(tempfile.mkdtemp()) / "missing", "photos")
        Traceback (most recent call last):
        ...
        FileNotFoundError: export_dir '...missing' does not exist; pass the export folder ...

        Serving for real blocks until Ctrl-C, so it is not run here:

        >>> serve("runs/photos/export", "photos", port=8501)  # doctest: +SKIP
    """
    _require_stack()
    import uvicorn

    serving_log = logging.getLogger("tfx_transfer.serving")  # the parent of every module's logger
    if not logging.getLogger().handlers and not serving_log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s:     %(message)s"))
        serving_log.addHandler(handler)
        serving_log.setLevel(logging.INFO)
    server = ModelServer(export_dir, model_name, **options)
    log.info("model %r: REST API at http://%s:%d/v1/models/%s, page at http://%s:%d/",
             model_name, host, port, model_name, host, port)
    uvicorn.run(server.app, host=host, port=int(port), log_level="info")
