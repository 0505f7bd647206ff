"""Micro-batching: concurrent signature calls concatenated into one, in one worker thread.

TF Serving's ``max_batch_size`` / ``batch_timeout_micros``: a batch starts with
the oldest waiting call and takes the compatible calls that arrive within the
timeout, up to ``max_batch_size`` rows.
"""

from __future__ import annotations

import collections
import concurrent.futures
import queue
import threading
import time
from typing import Any

import numpy as np

DEFAULT_MAX_BATCH_SIZE = 32
DEFAULT_BATCH_TIMEOUT_MS = 2.0


class _Job:
    __slots__ = ("servable", "signature", "inputs", "rows", "key", "future")

    def __init__(self, servable: Any, signature: str, inputs: dict[str, np.ndarray]) -> None:
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


class _Unbatchable(Exception):
    """A signature whose outputs do not follow the input rows: run its jobs one by one."""


class MicroBatcher:
    """One worker thread that runs signature calls, concatenating concurrent ones.

    A batch starts with the oldest waiting job and takes every compatible job
    (same version, signature and per-row input shapes) that arrives within
    ``batch_timeout_ms`` of it, up to ``max_batch_size`` rows; outputs are split
    back per job. If a batched call fails, its jobs are rerun one by one so only
    the faulty one gets the error. :meth:`close` runs everything queued first.

    :attr:`batch_sizes` counts the calls made by their number of rows
    (:attr:`batches` and :attr:`rows` are its totals).

    Args:
        max_batch_size: most rows per call.
        batch_timeout_ms: longest wait for more jobs after the first of a batch.

    Example (any object with a ``signatures`` dict of callables stands in for a Servable):
        >>> import types
        >>> doubler = types.SimpleNamespace(signatures={"double": lambda x: {"y": x * 2}})
        >>> batcher = MicroBatcher(max_batch_size=8, batch_timeout_ms=5)
        >>> futures = [batcher.submit(doubler, "double", {"x": np.array([[i]], np.float32)})
        ...            for i in range(3)]
        >>> batcher.start()
        >>> batcher.close()  # runs what is queued first
        >>> [f.result()["y"].tolist() for f in futures]
        [[[0.0]], [[2.0]], [[4.0]]]
        >>> batcher.batch_sizes, batcher.batches, batcher.rows  # one call of 3 rows
        ({3: 1}, 1, 3)
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
        self._sizes: collections.Counter[int] = collections.Counter()
        self._sizes_lock = threading.Lock()

    @property
    def batch_sizes(self) -> dict[int, int]:
        """Rows per call -> number of calls made with that many rows, so far (a snapshot)."""
        with self._sizes_lock:
            return dict(sorted(self._sizes.items()))

    @property
    def batches(self) -> int:
        """Calls made so far."""
        return sum(self.batch_sizes.values())

    @property
    def rows(self) -> int:
        """Rows served so far."""
        return sum(size * calls for size, calls in self.batch_sizes.items())

    def start(self) -> None:
        """Start the worker thread."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="tfx-transfer-batcher",
                                            daemon=True)
            self._thread.start()

    def submit(self, servable: Any, signature: str,
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

    def _call(self, servable: Any, signature: str, inputs: dict[str, np.ndarray]) -> dict:
        import tensorflow as tf

        outputs = servable.signatures[signature](**{n: tf.constant(a) for n, a in inputs.items()})
        return {name: value.numpy() for name, value in outputs.items()}

    def _record(self, rows: int) -> None:
        with self._sizes_lock:
            self._sizes[rows] += 1

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
        self._record(sum(job.rows for job in batch))
        for job, result in zip(batch, results):
            job.future.set_result(result)

    def _run_alone(self, job: _Job) -> None:
        try:
            result = self._call(job.servable, job.signature, job.inputs)
        except Exception as err:  # noqa: BLE001
            job.future.set_exception(err)
            return
        self._record(job.rows)
        job.future.set_result(result)
