"""`tfx-transfer serve` under load vs calling the SavedModel in process.

The same export, the same encoded images, one image per call both ways:

* in process: ``c`` threads each calling the ``serving_default`` signature
  with a batch of one (``tf.saved_model.load(...).signatures[...]``);
* server: ``tfx-transfer serve`` in its own process, ``c`` client threads each
  sending ``{"instances": [{"b64": ...}]}`` over loopback HTTP (keep-alive,
  bodies encoded before timing), the server micro-batching them.

For concurrency 1, 4 and 16 it prints throughput (images/s), p50 and p99
latency, and the ratios server / in process. The issue's target: at
concurrency 16 the server's throughput is at least the in-process batch-1
throughput (concurrency 1), i.e. batching pays for HTTP and JSON.

With ``--smoke`` the server runs in this process instead (the same ``serve`` flags, read
by the CLI's own parser, the same application under uvicorn, in a thread): a second
process would cost a TensorFlow import, more than the rest of a smoke run.

Images: JPEG photos from ``--data`` (default ``../shared/datasets/hymenoptera/val``);
when that folder is absent, random-noise JPEGs of 320x240 (said in the output).
The model is a random-init backbone (timing does not depend on the weights).

Usage (from the repository root)::

    python benchmarks/serve_load.py                               # mobilenetv2, 224 px
    python benchmarks/serve_load.py --backbone vgg16 --image-size 64 --requests 64
    python benchmarks/serve_load.py --smoke       # seconds: data_samples/ JPEGs, 32 px, 8 requests
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
DEFAULT_DATA = ROOT.parent / "shared" / "datasets" / "hymenoptera" / "val"

from benchmarks import _smoke  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbone", default="mobilenetv2")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--requests", type=int, default=96, help="images per concurrency level and side")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="folder of JPEG photos (recursive)")
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--batch-timeout-ms", type=float, default=2.0)
    parser.add_argument("--smoke", action="store_true",
                        help="seconds: data_samples/ JPEGs, a tiny backbone at 32 px, 8 requests at "
                        "concurrency 1 and 2, the server in this process (checks that it runs; the "
                        "figures mean nothing)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.data, args.backbone, args.image_size = str(_smoke.SAMPLES / "val"), _smoke.BACKBONE, 32
        args.requests, args.concurrency = 8, [1, 2]
    return args


def load_images(folder: str, count: int) -> tuple[list[bytes], str]:
    paths = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in (".jpg", ".jpeg"))
    if paths:
        return [p.read_bytes() for p in paths[:count]], f"{min(count, len(paths))} JPEG photos from {folder}"
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    out = []
    for _ in range(count):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)).save(buffer, "JPEG")
        out.append(buffer.getvalue())
    return out, f"{folder} NOT FOUND: {count} random-noise 320x240 JPEGs instead"


def percentile(values: list[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(values, q))


def load(call, items: list, concurrency: int) -> dict:
    """Run ``call(item)`` for every item from ``concurrency`` threads; throughput and latencies."""
    latencies: list[float] = []
    lock = threading.Lock()
    next_index = iter(range(len(items)))

    def worker() -> None:
        while True:
            with lock:
                i = next(next_index, None)
            if i is None:
                return
            start = time.perf_counter()
            call(items[i])
            elapsed = time.perf_counter() - start
            with lock:
                latencies.append(elapsed)

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    return {"throughput": len(items) / wall, "p50": percentile(latencies, 50) * 1000,
            "p99": percentile(latencies, 99) * 1000}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class InProcessServer:
    """``tfx-transfer serve ARGV`` in this process (``--smoke``): the flags parsed by the CLI's own
    parser and handed to :func:`tfx_transfer.serving.background.start_server`, behind
    ``subprocess.Popen``'s ``poll`` / ``send_signal`` / ``wait`` / ``kill``; the server's log goes
    to ``log``."""

    def __init__(self, serve_argv: list[str], log) -> None:
        import logging

        from tfx_transfer.cli import build_parser
        from tfx_transfer.commands.flags import given
        from tfx_transfer.commands.use import SERVER_OPTIONS
        from tfx_transfer.serving.background import start_server

        args = build_parser(["serve"]).parse_args(serve_argv)
        self.handler = logging.StreamHandler(log)
        self.handler.setFormatter(logging.Formatter("%(levelname)s:     %(message)s"))
        self.logger = logging.getLogger("tfx_transfer.serving")
        self.level = self.logger.level
        self.logger.addHandler(self.handler)
        self.logger.setLevel(logging.INFO)
        self.server = start_server(args.export_dir, args.model_name, args.host, args.port,
                                   **given(args, SERVER_OPTIONS))

    def poll(self):
        return None if self.server.running else 0

    def send_signal(self, _signal) -> None:
        """Nothing yet: ``wait`` stops the server as SIGTERM would (in-flight requests answered)."""

    def wait(self, timeout: float) -> None:
        try:
            self.server.stop(timeout)
        except TimeoutError as exc:
            raise subprocess.TimeoutExpired("tfx-transfer serve (in process)", timeout) from exc
        finally:
            self.logger.removeHandler(self.handler)
            self.logger.setLevel(self.level)

    def kill(self) -> None:
        """Nothing: the server's thread is a daemon."""


def main(argv=None) -> int:
    args = parse_args(argv)
    import httpx
    import tensorflow as tf

    import tfx_transfer as tt

    if args.smoke:
        _smoke.register_backbone()
    images, source = load_images(args.data, args.requests)
    items = (images * (args.requests // len(images) + 1))[: args.requests]
    work = Path(tempfile.mkdtemp(prefix="serve_load_"))
    model = tt.build_transfer_model(args.backbone, 2, input_shape=(args.image_size, args.image_size, 3),
                                    weights=None, head="avg")
    export_dir = tt.export_saved_model(model, work / "bench", ["a", "b"]).parent
    port = free_port()
    server_log = open(work / "server.log", "w")
    serve_argv = ["serve", str(export_dir), "--model-name", "bench", "--port", str(port),
                  "--max-batch-size", str(args.max_batch_size),
                  "--batch-timeout-ms", str(args.batch_timeout_ms), "--poll-interval", "0"]
    if args.smoke:
        server = InProcessServer(serve_argv, server_log)
    else:
        server = subprocess.Popen([sys.executable, "-m", "tfx_transfer.cli", *serve_argv],
                                  env=dict(os.environ, PYTHONPATH=str(ROOT)), stdout=server_log,
                                  stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1/models/bench:predict"
    try:
        signature = tf.saved_model.load(str(export_dir / "1")).signatures["serving_default"]
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/v1/models/bench").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("tfx-transfer serve did not start")
            time.sleep(0.3)

        bodies = [json.dumps({"instances": [{"b64": base64.b64encode(b).decode()}]}).encode()
                  for b in items]
        clients = threading.local()

        def over_http(body: bytes) -> None:
            if not hasattr(clients, "http"):
                clients.http = httpx.Client(timeout=120, headers={"Content-Type": "application/json"})
            response = clients.http.post(url, content=body)
            if response.status_code != 200:
                raise RuntimeError(response.text)

        def in_process(data: bytes) -> None:
            signature(images=tf.constant([data]))["probabilities"].numpy()

        for _ in range(3):  # warm-up both
            in_process(items[0])
            over_http(bodies[0])

        print(f"# serve_load: {args.backbone} {args.image_size} px, {args.requests} requests of one "
              f"image per level, {source}; server: --max-batch-size {args.max_batch_size} "
              f"--batch-timeout-ms {args.batch_timeout_ms}; {os.cpu_count()} CPU cores")
        print(f"{'c':>3} | {'in-process img/s':>16} {'p50 ms':>7} {'p99 ms':>7} | {'server img/s':>12} "
              f"{'p50 ms':>7} {'p99 ms':>7} | {'thr ratio':>9} {'p50 ratio':>9} {'p99 ratio':>9}")
        base_1 = None
        for c in args.concurrency:
            local = load(in_process, items, c)
            served = load(over_http, bodies, c)
            base_1 = base_1 or (local["throughput"] if c == 1 else None)
            print(f"{c:>3} | {local['throughput']:16.1f} {local['p50']:7.1f} {local['p99']:7.1f} | "
                  f"{served['throughput']:12.1f} {served['p50']:7.1f} {served['p99']:7.1f} | "
                  f"{served['throughput'] / local['throughput']:9.2f} {served['p50'] / local['p50']:9.2f} "
                  f"{served['p99'] / local['p99']:9.2f}", flush=True)
            if c == max(args.concurrency) and base_1:
                print(f"server at concurrency {c} / in-process batch-1 (concurrency 1) throughput: "
                      f"{served['throughput'] / base_1:.2f} (target >= 1)")
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()
        server_log.close()
    log = (work / "server.log").read_text()
    calls = [line.split("INFO:", 1)[-1].strip() for line in log.splitlines() if "model call(s)" in line]
    print(f"server (all levels and warm-up): {calls[0] if calls else 'no batching figure logged'}")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
