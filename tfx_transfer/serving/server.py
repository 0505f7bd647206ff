"""Serve an export over TF Serving's REST API: ``tfx-transfer serve``.

The same requests a client sends to TF Serving
(``tensorflow_serving/g3doc/api_rest.md``), answered by the same SavedModel
(:func:`tfx_transfer.export_saved_model`'s ``<base>/<version>/`` layout), on any
machine with Python: no Docker, no ``tensorflow_model_server`` binary.

================================================  ====================================
``GET  /v1/models/NAME[/versions/V]``             ``{"model_version_status": [...]}``
``GET  /v1/models/NAME[/versions/V]/metadata``    ``{"model_spec", "metadata": {"signature_def"}}``
``POST /v1/models/NAME[/versions/V]:predict``     row (``"instances"``) or columnar
                                                  (``"inputs"``) form, ``"signature_name"``
``GET  /``                                        a page: drop an image, see the top classes
================================================  ====================================

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
  (see :class:`Servable`).

* **Versions.** The highest numbered folder under the base directory is served;
  the folder is polled every ``poll_interval`` seconds and a new version
  replaces the old one once it has ``saved_model.pb``, has loaded and has
  answered a warm-up call (hidden ``.tmp-*`` folders, which the export writes
  before renaming, are never looked at). Requests already queued finish on the
  version they were routed to; nothing is dropped.
* **Micro-batching.** Concurrent requests for the same signature are
  concatenated into one call of up to ``max_batch_size`` rows, waiting at most
  ``batch_timeout_ms`` after the first (TF Serving's ``max_batch_size`` /
  ``batch_timeout_micros``), in one worker thread.
* **Shutdown.** On SIGTERM / Ctrl-C uvicorn stops accepting connections and
  waits for the requests in flight; the batcher then runs what is queued.

Needs the optional extra: ``pip install 'tfx_transfer[serve]'`` (Starlette +
uvicorn).

Example:
    $ tfx-transfer serve runs/photos/export --model-name photos --port 8501
    $ curl -d '{"instances": [{"b64": "'$(base64 -w0 cat.jpg)'"}]}' \\
        localhost:8501/v1/models/photos:predict
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import concurrent.futures
import json
import logging
import os
import queue
import re
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from tfx_transfer.serving.page import page_html

DEFAULT_PORT = 8501  # TF Serving's REST port
DEFAULT_MAX_REQUEST_BYTES = 32 * 2**20
DEFAULT_MAX_BATCH_SIZE = 32
DEFAULT_BATCH_TIMEOUT_MS = 2.0
DEFAULT_POLL_INTERVAL = 1.0  # TF Serving's --file_system_poll_wait_seconds
SIGNATURE_DEFAULT = "serving_default"
INSTALL_HINT = "pip install 'tfx_transfer[serve]'"

log = logging.getLogger("tfx_transfer.serving.server")

_ROUTE = re.compile(
    r"^/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>[^/:]+))?"
    r"(?:(?P<metadata>/metadata)|:(?P<verb>[A-Za-z]+))?/?$"
)


class RequestError(Exception):
    """A request the server refuses: ``status`` (HTTP) and a message for ``{"error": ...}``.

    Example:
        >>> RequestError(404, "Servable not found for request: Latest(tulips)").status
        404
    """

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


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


# -- one loaded version ------------------------------------------------------------------


def _tiny_png() -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), 127, np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def _signature_defs(path: Path) -> dict:
    """The SignatureDefMap of ``saved_model.pb`` as TF Serving's JSON (proto field names)."""
    from google.protobuf import json_format
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString((path / "saved_model.pb").read_bytes())
    graph = proto.meta_graphs[0]
    return {
        name: json_format.MessageToDict(graph.signature_def[name], preserving_proto_field_name=True,
                                        always_print_fields_with_no_presence=True)
        for name in sorted(graph.signature_def)
    }


class Servable:
    """One version of the model, loaded: its signatures and their input/output specs.

    For an export of :func:`tfx_transfer.export_saved_model` (it has
    ``assets.extra/metadata.json``), a ``serving_default`` request is
    :meth:`prepare`-d in the request's thread: each image is decoded and
    resized with :func:`tfx_transfer.data.decode.decode_and_resize` -- the very
    function the export's graph runs, at the export's ``input_size`` and
    ``crop_to_aspect_ratio`` -- and the ``uint8`` pixels go to the export's
    ``predict_pixels_uint8`` signature, which passes pixels at the model size
    unchanged to the same network and returns the same outputs. So a bad image
    fails its own request before batching, decoding runs in parallel across
    requests, and the batching thread only runs the network. Any other
    SavedModel's signatures are called as they are.

    Attributes:
        version: the folder's number.
        path: the version folder.
        signatures: name -> concrete function (``tf.saved_model.load(...).signatures``).
        inputs: signature name -> {input name: ``tf.TensorSpec``}.
        signature_defs: signature name -> SignatureDef as TF Serving's metadata JSON.
        image_size: ``(height, width)`` of an export whose images are decoded per request, else None.

    Example:
        >>> import tempfile, tfx_transfer as tt
        >>> model = tt.build_transfer_model("vgg16", 2, input_shape=(32, 32, 3), weights=None)
        >>> path = tt.export_saved_model(model, tempfile.mkdtemp() + "/flowers", ["daisy", "rose"])
        >>> servable = Servable(path, 1)
        >>> sorted(servable.inputs["serving_default"]), servable.image_size
        (['images'], (32, 32))
        >>> import io
        >>> from PIL import Image
        >>> png = io.BytesIO()
        >>> Image.new("RGB", (48, 40)).save(png, "PNG")
        >>> signature, inputs = servable.prepare("serving_default",
        ...                                      {"images": np.array([png.getvalue()], object)})
        >>> signature, inputs["pixels"].shape
        ('predict_pixels_uint8', (1, 32, 32, 3))
    """

    def __init__(self, path: Path, version: int) -> None:
        import tensorflow as tf

        from tfx_transfer.data.decode import decode_and_resize
        from tfx_transfer.export.saved_model import (
            METADATA_FILE,
            SIGNATURE_IMAGES,
            SIGNATURE_PIXELS_UINT8,
        )

        self.path, self.version = Path(path), int(version)
        self._model = tf.saved_model.load(str(self.path))
        self.signatures = dict(self._model.signatures)
        if not self.signatures:
            raise ValueError(f"{str(self.path)!r} has no serving signatures.")
        self.inputs = {name: dict(fn.structured_input_signature[1])
                       for name, fn in self.signatures.items()}
        self.signature_defs = _signature_defs(self.path)
        self.image_size: tuple[int, int] | None = None
        meta_file = self.path / "assets.extra" / METADATA_FILE
        images = self.inputs.get(SIGNATURE_IMAGES, {})
        if (meta_file.is_file() and SIGNATURE_PIXELS_UINT8 in self.signatures
                and list(images) == ["images"] and images["images"].dtype == tf.string):
            meta = json.loads(meta_file.read_text(encoding="utf-8"))
            size = (int(meta["input_size"][0]), int(meta["input_size"][1]))
            crop = bool(meta.get("crop_to_aspect_ratio", False))
            self.image_size = size
            self._decode = tf.function(lambda data: decode_and_resize(data, size, crop),
                                       input_signature=[tf.TensorSpec([], tf.string)])

    def prepare(self, signature: str, inputs: dict[str, np.ndarray]) -> tuple[str, dict[str, np.ndarray]]:
        """The call to batch for a request: decoded pixels for an export's images, else as given.

        Raises:
            RequestError: 400 naming the first image that cannot be decoded.
        """
        import tensorflow as tf

        from tfx_transfer.export.saved_model import (
            SERVING_FORMATS,
            SIGNATURE_IMAGES,
            SIGNATURE_PIXELS_UINT8,
        )

        if self.image_size is None or signature != SIGNATURE_IMAGES:
            return signature, inputs
        pixels = []
        for i, data in enumerate(inputs["images"].reshape(-1)):
            try:
                pixels.append(self._decode(tf.constant(data)).numpy())
            except (tf.errors.InvalidArgumentError, tf.errors.UnknownError) as err:
                raise RequestError(400, f"images[{i}] ({len(data)} bytes): "
                                        f"{_decode_reason(err.message)}; send the file's bytes "
                                        f"of a {SERVING_FORMATS} image.") from None
        return SIGNATURE_PIXELS_UINT8, {"pixels": np.stack(pixels)}

    def warm_up(self) -> None:
        """Run a tiny PNG through ``serving_default`` and the per-request route, so a broken
        version is never switched to and the first request is not slow."""
        import tensorflow as tf

        specs = self.inputs.get(SIGNATURE_DEFAULT)
        if not specs or not all(s.dtype == tf.string and s.shape.rank == 1 for s in specs.values()):
            return
        self.signatures[SIGNATURE_DEFAULT](**{n: tf.constant([_tiny_png()]) for n in specs})
        if self.image_size is not None:
            signature, inputs = self.prepare(SIGNATURE_DEFAULT, {"images": np.array([_tiny_png()])})
            self.signatures[signature](**{n: tf.constant(a) for n, a in inputs.items()})

    def __repr__(self) -> str:
        return f"Servable(version={self.version}, path={str(self.path)!r})"


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
    """Serves the highest numbered version folder of ``base_dir`` and follows new ones.

    ``poll()`` looks once; ``start()`` polls every ``interval`` seconds in a
    thread. Only folders named by digits that contain ``saved_model.pb`` are
    candidates; one that fails to load (or to answer the warm-up call) is
    logged and retried when its files change, while the current version keeps
    serving.

    Example:
        >>> import tempfile, tfx_transfer as tt
        >>> model = tt.build_transfer_model("vgg16", 2, input_shape=(32, 32, 3), weights=None)
        >>> path = tt.export_saved_model(model, tempfile.mkdtemp() + "/flowers", ["daisy", "rose"])
        >>> poller = VersionPoller(path.parent)
        >>> poller.poll().version
        1
        >>> _ = tt.export_saved_model(model, path.parent, ["daisy", "rose"])  # version 2
        >>> poller.poll().version
        2
    """

    def __init__(self, base_dir: str | os.PathLike, interval: float = DEFAULT_POLL_INTERVAL) -> None:
        self.base_dir = Path(base_dir)
        self.interval = float(interval)
        self.current: Servable | None = None
        self._failed: dict[int, tuple] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def candidates(self) -> list[int]:
        """Version numbers on disk that look complete, ascending."""
        if not self.base_dir.is_dir():
            return []
        return sorted(int(p.name) for p in self.base_dir.iterdir()
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
            folder = self.base_dir / str(target)
            stamp = _fingerprint(folder)
            if self._failed.get(target) == stamp:
                return self.current
            start = time.monotonic()
            try:
                servable = Servable(folder, target)
                servable.warm_up()
            except Exception as err:  # noqa: BLE001 - any failure: keep serving the old version
                self._failed[target] = stamp
                log.error("version %d at %s did not load (%s: %s); still serving %s; retried when "
                          "its files change", target, folder, type(err).__name__,
                          str(err).strip().splitlines()[0] if str(err).strip() else "",
                          f"version {self.current.version}" if self.current else "nothing")
                return self.current
            self._failed.pop(target, None)
            old, self.current = self.current, servable
            log.info("serving version %d from %s (loaded in %.1f s)%s", target, folder,
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
                    log.exception("polling %s failed", self.base_dir)

        self._thread = threading.Thread(target=run, name="tfx-transfer-poller", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the polling thread (waits for a load in progress)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None


# -- micro-batching ----------------------------------------------------------------------


class _Job:
    __slots__ = ("servable", "signature", "inputs", "rows", "key", "future")

    def __init__(self, servable: Servable, signature: str, inputs: dict[str, np.ndarray]) -> None:
        self.servable, self.signature, self.inputs = servable, signature, inputs
        leading = {a.shape[0] if a.ndim else None for a in inputs.values()}
        self.rows = leading.pop() if len(leading) == 1 else None
        if self.rows is None:  # scalars or ragged batch sizes: run alone
            self.key: Any = object()
            self.rows = 1
        else:
            self.key = (id(servable), signature,
                        tuple((n, a.dtype.str, a.shape[1:]) for n, a in sorted(inputs.items())))
        self.future: concurrent.futures.Future = concurrent.futures.Future()


class MicroBatcher:
    """One worker thread that runs signature calls, concatenating concurrent ones.

    A batch starts with the oldest waiting job and takes every compatible job
    (same version, signature and per-row input shapes) that arrives within
    ``batch_timeout_ms`` of it, up to ``max_batch_size`` rows; outputs are split
    back per job. If a batched call fails, its jobs are rerun one by one so only
    the faulty one gets the error. :meth:`close` runs everything queued first.

    Example (any object with a ``signatures`` dict of callables stands in for a Servable):
        >>> import types
        >>> doubler = types.SimpleNamespace(signatures={"double": lambda x: {"y": x * 2}})
        >>> batcher = MicroBatcher(max_batch_size=8, batch_timeout_ms=5)
        >>> futures = [batcher.submit(doubler, "double", {"x": np.array([[i]], np.float32)})
        ...            for i in range(3)]
        >>> batcher.start()
        >>> batcher.close()  # runs what is queued first
        >>> [f.result()["y"].tolist() for f in futures], batcher.batches
        ([[[0.0]], [[2.0]], [[4.0]]], 1)
    """

    def __init__(self, max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
                 batch_timeout_ms: float = DEFAULT_BATCH_TIMEOUT_MS) -> None:
        if int(max_batch_size) < 1:
            raise ValueError(f"max_batch_size={max_batch_size} must be at least 1.")
        if float(batch_timeout_ms) < 0:
            raise ValueError(f"batch_timeout_ms={batch_timeout_ms} must be 0 or more.")
        self.max_batch_size = int(max_batch_size)
        self.batch_timeout = float(batch_timeout_ms) / 1000.0
        self._queue: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self._closed = False
        self.batches = 0  # calls made
        self.rows = 0  # rows served

    def start(self) -> None:
        """Start the worker thread."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="tfx-transfer-batcher",
                                            daemon=True)
            self._thread.start()

    def submit(self, servable: Servable, signature: str,
               inputs: dict[str, np.ndarray]) -> concurrent.futures.Future:
        """Queue one call; the future gets ``{output name: numpy array}`` or the call's error."""
        if self._closed:
            raise RuntimeError("the server is shutting down; retry on another replica or later.")
        job = _Job(servable, signature, inputs)
        self._queue.put(job)
        return job.future

    def close(self) -> None:
        """Refuse new jobs, finish every queued one, stop the worker."""
        self._closed = True
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None

    def _loop(self) -> None:
        carry: list[_Job] = []  # taken from the queue, not compatible with the batch being built
        stopping = False
        while True:
            if carry:
                first = carry.pop(0)
            elif stopping:
                return
            else:
                first = self._queue.get()
                if first is None:
                    stopping = True
                    continue
            batch, rows = [first], first.rows
            for job in list(carry):
                if job.key == first.key and rows + job.rows <= self.max_batch_size:
                    batch.append(job)
                    carry.remove(job)
                    rows += job.rows
            deadline = time.monotonic() + self.batch_timeout
            while rows < self.max_batch_size and not stopping:
                remaining = deadline - time.monotonic()
                try:
                    job = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    stopping = True
                elif job.key == first.key and rows + job.rows <= self.max_batch_size:
                    batch.append(job)
                    rows += job.rows
                else:
                    carry.append(job)
            self._run(batch)

    def _call(self, servable: Servable, signature: str, inputs: dict[str, np.ndarray]) -> dict:
        import tensorflow as tf

        outputs = servable.signatures[signature](**{n: tf.constant(a) for n, a in inputs.items()})
        return {name: value.numpy() for name, value in outputs.items()}

    def _run(self, batch: list[_Job]) -> None:
        batch = [job for job in batch if job.future.set_running_or_notify_cancel()]
        if not batch:
            return
        first = batch[0]
        try:
            if len(batch) == 1:
                results = [self._call(first.servable, first.signature, first.inputs)]
            else:
                joined = {n: np.concatenate([job.inputs[n] for job in batch]) for n in first.inputs}
                outputs = self._call(first.servable, first.signature, joined)
                total = sum(job.rows for job in batch)
                if any(np.ndim(v) == 0 or v.shape[0] != total for v in outputs.values()):
                    raise _Unbatchable()
                bounds = np.cumsum([0] + [job.rows for job in batch])
                results = [{n: v[bounds[i]:bounds[i + 1]] for n, v in outputs.items()}
                           for i in range(len(batch))]
        except Exception as err:  # noqa: BLE001 - the error goes to the request(s)
            if len(batch) > 1:
                for job in batch:  # only the faulty job(s) should fail
                    self._run_alone(job)
                return
            first.future.set_exception(err)
            return
        self.batches += 1
        self.rows += sum(job.rows for job in batch)
        for job, result in zip(batch, results):
            job.future.set_result(result)

    def _run_alone(self, job: _Job) -> None:
        try:
            result = self._call(job.servable, job.signature, job.inputs)
        except Exception as err:  # noqa: BLE001
            job.future.set_exception(err)
            return
        self.batches += 1
        self.rows += job.rows
        job.future.set_result(result)


class _Unbatchable(Exception):
    """A signature whose outputs do not follow the input rows: run its jobs one by one."""


# -- JSON <-> tensors (TF Serving's JSON mapping) ----------------------------------------


def _unwrap_b64(value: Any, where: str) -> Any:
    """Replace every ``{"b64": "..."}`` by its bytes (recursively)."""
    if isinstance(value, dict):
        if set(value) != {"b64"}:
            raise RequestError(400, f"{where}: an object here must be {{\"b64\": \"...\"}} "
                                    f"(binary data), got keys {sorted(value)}.")
        text = value["b64"]
        if not isinstance(text, str):
            raise RequestError(400, f"{where}: \"b64\" must be a base64 string, got "
                                    f"{type(text).__name__}.")
        try:
            return base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError) as err:
            raise RequestError(400, f"{where}: invalid base64 ({err}); encode the file's bytes "
                                    "with standard base64 (e.g. `base64 -w0 cat.jpg`).") from None
    if isinstance(value, list):
        return [_unwrap_b64(v, f"{where}[{i}]") for i, v in enumerate(value)]
    return value


def _to_array(values: list, spec: Any, where: str) -> np.ndarray:
    """Rows of one input (already b64-decoded) to a numpy array of the input's dtype and rank."""
    import tensorflow as tf

    if spec.dtype == tf.string:
        def as_bytes(v: Any) -> Any:
            if isinstance(v, list):
                return [as_bytes(x) for x in v]
            if isinstance(v, str):
                return v.encode("utf-8")
            if isinstance(v, bytes):
                return v
            raise RequestError(400, f"{where}: expected strings or {{\"b64\": ...}} for a "
                                    f"tf.string input, got {type(v).__name__} {v!r:.40}.")
        converted = as_bytes(values)
        try:
            array = np.array(converted, dtype=object)
        except ValueError as err:
            raise RequestError(400, f"{where}: ragged nested lists ({err}).") from None
        if array.dtype != object or any(not isinstance(v, bytes) for v in array.reshape(-1)):
            raise RequestError(400, f"{where}: ragged nested lists of strings.")
    else:
        dtype = spec.dtype.as_numpy_dtype
        try:
            array = np.array(values, dtype=dtype)
        except (ValueError, TypeError) as err:
            raise RequestError(400, f"{where}: cannot read the values as {spec.dtype.name} ({err}); "
                                    "send numbers in nested lists of equal lengths.") from None
    rank = spec.shape.rank
    if rank is not None:
        dims = spec.shape.as_list()
        ok = array.ndim == rank and all(d is None or d == a for d, a in zip(dims, array.shape))
        if not ok:
            shape = [d if d is not None else -1 for d in dims]
            raise RequestError(400, f"{where}: got shape {list(array.shape)}, the input takes "
                                    f"{spec.dtype.name} {shape} (-1: any size).")
    return array


def _parse_predict(body: dict, servable: Servable) -> tuple[str, dict[str, np.ndarray], bool]:
    """``(signature, inputs, row_form)`` from a predict request body."""
    if not isinstance(body, dict):
        raise RequestError(400, "The request body must be a JSON object with \"instances\" "
                                f"or \"inputs\", got a JSON {type(body).__name__}.")
    unknown = sorted(set(body) - {"signature_name", "instances", "inputs"})
    if unknown:
        raise RequestError(400, f"Unknown request field(s) {unknown}; a predict request has "
                                "\"instances\" (row form) or \"inputs\" (columnar) and optionally "
                                "\"signature_name\".")
    signature = body.get("signature_name") or SIGNATURE_DEFAULT
    if not isinstance(signature, str) or signature not in servable.signatures:
        raise RequestError(400, f"Serving signature name: {json.dumps(signature)} not found in "
                                f"signature def; this model has {sorted(servable.signatures)}.")
    specs = servable.inputs[signature]
    if ("instances" in body) == ("inputs" in body):
        raise RequestError(400, "Missing 'inputs' or 'instances' key: a predict request needs "
                                "exactly one of them.")
    names = sorted(specs)
    if "instances" in body:
        instances = body["instances"]
        if not isinstance(instances, list) or not instances:
            raise RequestError(400, "\"instances\" must be a non-empty list, one item per example, "
                                    "e.g. [{\"b64\": \"...\"}].")
        columns: dict[str, list] = {n: [] for n in names}
        for i, item in enumerate(instances):
            named = isinstance(item, dict) and "b64" not in item
            if not named:
                if len(names) != 1:
                    raise RequestError(400, f"instances[{i}] must be an object with the inputs "
                                            f"{names} of signature {signature!r}.")
                item = {names[0]: item}
            if sorted(item) != names:
                raise RequestError(400, f"instances[{i}] has keys {sorted(item)}; signature "
                                        f"{signature!r} takes the inputs {names}.")
            for n in names:
                columns[n].append(_unwrap_b64(item[n], f"instances[{i}].{n}"))
        arrays = {n: _to_array(columns[n], specs[n], f"instances ({n})") for n in names}
        return signature, arrays, True
    given = body["inputs"]
    if not (isinstance(given, dict) and "b64" not in given):
        if len(names) != 1:
            raise RequestError(400, f"\"inputs\" must be an object with the inputs {names} of "
                                    f"signature {signature!r}.")
        given = {names[0]: given}
    if sorted(given) != names:
        raise RequestError(400, f"\"inputs\" has keys {sorted(given)}; signature {signature!r} "
                                f"takes the inputs {names}.")
    arrays = {n: _to_array(_unwrap_b64(given[n], f"inputs.{n}"), specs[n], f"inputs.{n}")
              for n in names}
    return signature, arrays, False


def _decode_reason(message: str) -> str:
    """TensorFlow's decode error, without the op and device noise."""
    from tfx_transfer.export.saved_model import SERVING_FORMATS

    if "Unknown image file format" in message:
        return f"not a {SERVING_FORMATS} image"
    text = re.sub(r"\{\{[^}]*\}\}|\[Op:[^\]]*\].*", "", message).strip()
    return f"corrupt or truncated image data ({text.splitlines()[0] if text else 'no detail'})"


def _jsonable(value: np.ndarray, name: str) -> Any:
    """An output tensor to JSON values: strings as text (``*_bytes`` outputs or non-UTF-8 as b64)."""
    if value.dtype != object:
        return value.tolist()

    def convert(v: Any) -> Any:
        if isinstance(v, list):
            return [convert(x) for x in v]
        if isinstance(v, bytes):
            if not name.endswith("_bytes"):
                try:
                    return v.decode("utf-8")
                except UnicodeDecodeError:
                    pass
            return {"b64": base64.b64encode(v).decode("ascii")}
        return v

    return convert(value.tolist())


def _predict_response(outputs: dict[str, np.ndarray], row_form: bool) -> dict:
    names = sorted(outputs)
    if not row_form:
        if len(names) == 1:
            return {"outputs": _jsonable(outputs[names[0]], names[0])}
        return {"outputs": {n: _jsonable(outputs[n], n) for n in names}}
    if len(names) == 1:
        return {"predictions": _jsonable(outputs[names[0]], names[0])}
    columns = {n: _jsonable(outputs[n], n) for n in names}
    rows = {len(c) if isinstance(c, list) else -1 for c in columns.values()}
    if len(rows) != 1 or -1 in rows:
        raise RequestError(400, "The signature's outputs do not share the batch size; use the "
                                "columnar form (\"inputs\") for this signature.")
    return {"predictions": [{n: columns[n][i] for n in names} for i in range(rows.pop())]}


# -- the HTTP application ----------------------------------------------------------------


class ModelServer:
    """A model's versions, its batcher and the Starlette application that serves them.

    Args:
        base_dir: folder of numbered versions (``export_saved_model``'s ``export_dir``).
        model_name: the ``NAME`` in ``/v1/models/NAME``.
        max_batch_size: most rows per signature call.
        batch_timeout_ms: longest wait for more requests after the first of a batch.
        poll_interval: seconds between looks for a new version (0: never look again).
        max_request_bytes: larger request bodies get 413.

    Example:
        >>> import tempfile, tfx_transfer as tt
        >>> model = tt.build_transfer_model("vgg16", 2, input_shape=(32, 32, 3), weights=None)
        >>> path = tt.export_saved_model(model, tempfile.mkdtemp() + "/flowers", ["daisy", "rose"])
        >>> server = ModelServer(path.parent, "flowers", max_batch_size=16)
        >>> server.start()  # what the app's lifespan does before the first request
        >>> server.poller.current.version
        1
        >>> server.stop()  # and after the last: finishes queued calls
        >>> type(server.app).__name__  # run it with uvicorn.run(server.app) or serve(...)
        'Starlette'
    """

    def __init__(self, base_dir: str | os.PathLike, model_name: str, *,
                 max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
                 batch_timeout_ms: float = DEFAULT_BATCH_TIMEOUT_MS,
                 poll_interval: float = DEFAULT_POLL_INTERVAL,
                 max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES) -> None:
        _require_stack()
        base = Path(base_dir)
        if not base.is_dir():
            raise FileNotFoundError(
                f"Model base folder {str(base)!r} does not exist; pass the export folder that holds "
                "numbered versions (tfx-transfer export / export_saved_model's export_dir)."
            )
        if (base / "saved_model.pb").exists():
            raise ValueError(
                f"{str(base)!r} is itself a SavedModel; pass its parent, the folder that holds the "
                "numbered versions (TF Serving layout <base>/<version>/)."
            )
        if not model_name or not re.fullmatch(r"[^/:\s]+", model_name):
            raise ValueError(f"model_name={model_name!r}: use a non-empty name without '/', ':' "
                             "or spaces, e.g. the folder's name.")
        if int(max_request_bytes) < 1024:
            raise ValueError(f"max_request_bytes={max_request_bytes} is too small; use at least 1024.")
        if float(poll_interval) < 0:
            raise ValueError(f"poll_interval={poll_interval} must be 0 (no polling) or more seconds.")
        self.model_name = model_name
        self.max_request_bytes = int(max_request_bytes)
        self.poller = VersionPoller(base, poll_interval)
        self.batcher = MicroBatcher(max_batch_size, batch_timeout_ms)
        self.app = self._build_app()

    # lifecycle

    def start(self) -> None:
        """Load the newest version (if any yet), start the batcher and the poller."""
        if self.poller.poll() is None:
            log.warning("no loadable version under %s yet (numbered folders with saved_model.pb); "
                        "waiting for one", self.poller.base_dir)
        self.batcher.start()
        if self.poller.interval > 0:
            self.poller.start()

    def stop(self) -> None:
        """Stop polling, finish every queued call (in-flight requests get their answers)."""
        self.poller.stop()
        self.batcher.close()
        if self.batcher.batches:
            log.info("served %d row(s) in %d model call(s), %.1f per call", self.batcher.rows,
                     self.batcher.batches, self.batcher.rows / self.batcher.batches)

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
                                    f"loaded yet under {str(self.poller.base_dir)!r}.")
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
            signature, inputs, row_form = _parse_predict(data, servable)
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
        return await run_in_threadpool(_predict_response, outputs, row_form)

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
                match = _ROUTE.match(path)
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


def create_app(base_dir: str | os.PathLike, model_name: str, **options: Any) -> Any:
    """The Starlette application serving ``base_dir`` as ``model_name`` (options: :class:`ModelServer`).

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
    return ModelServer(base_dir, model_name, **options).app


def serve(base_dir: str | os.PathLike, model_name: str, host: str = "127.0.0.1",
          port: int = DEFAULT_PORT, **options: Any) -> None:
    """Serve ``base_dir`` on ``http://host:port`` until SIGTERM / Ctrl-C (blocks).

    ``options`` are :class:`ModelServer`'s (``max_batch_size``,
    ``batch_timeout_ms``, ``poll_interval``, ``max_request_bytes``).

    Example (not run by the tests: it blocks until Ctrl-C):
        >>> serve("runs/photos/export", "photos", port=8501)  # doctest: +SKIP
    """
    _require_stack()
    import uvicorn

    if not logging.getLogger().handlers and not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s:     %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
    server = ModelServer(base_dir, model_name, **options)
    log.info("model %r: REST API at http://%s:%d/v1/models/%s, page at http://%s:%d/",
             model_name, host, port, model_name, host, port)
    uvicorn.run(server.app, host=host, port=int(port), log_level="info")
