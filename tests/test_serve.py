"""`tfx-transfer serve`: TF Serving's REST API over a real HTTP stack, batching, versions, page.

Everything runs on loopback: an in-process uvicorn server (a thread) for the API tests, one
``tfx-transfer serve`` process for the CLI and SIGTERM (forked by tests/distribute_jobs.py's
forker: a fresh TensorFlow process that skipped the import), and headless Chromium for the page.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import shutil
import signal
import socket
import sys
import threading
import time
import types
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("starlette")
uvicorn = pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")
tf = pytest.importorskip("tensorflow")
import keras  # noqa: E402
from PIL import Image  # noqa: E402

import tfx_transfer as tt  # noqa: E402
from tests import distribute_jobs  # noqa: E402
from tests.tiny_backbone import tinycam_registered  # noqa: E402
from tfx_transfer.cli import main  # noqa: E402
from tfx_transfer.export.saved_model import export_saved_model  # noqa: E402
from tfx_transfer.models.transfer_model import build_transfer_model, get_head  # noqa: E402
from tfx_transfer.serving.app import ModelServer  # noqa: E402
from tfx_transfer.serving.background import start_server  # noqa: E402
from tfx_transfer.serving.batching import MicroBatcher  # noqa: E402

CLASSES = ["daisy", "rose", "tulip"]
SIZE = 32


def encode(pixels: np.ndarray, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, fmt)
    return buffer.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def images(n: int = 3, seed: int = 0) -> list[bytes]:
    """Encoded noise images, PNG and JPEG, at the model size and larger (resized in the graph)."""
    rng = np.random.default_rng(seed)
    shapes = [(SIZE, SIZE, 3), (SIZE, SIZE, 3), (48, 40, 3)]
    return [encode(rng.integers(0, 256, shapes[i % 3], dtype=np.uint8), ("PNG", "JPEG")[i % 2])
            for i in range(n)]


def tiny_model(backbone: str, seed: int = 0):
    """Random-init tiny backbone at 32 px, classifier sharpened so that noise images spread
    over the classes."""
    keras.utils.set_random_seed(seed)
    model = build_transfer_model(backbone, len(CLASSES), input_shape=(SIZE, SIZE, 3), weights=None,
                                 head="avg")
    dense = get_head(model).get_layer("predictions")
    dense.kernel.assign(dense.kernel * 30.0)
    pixels = np.random.default_rng(9).integers(0, 256, (8, SIZE, SIZE, 3)).astype(np.float32)
    log_probs = np.log(np.maximum(model.predict(pixels, verbose=0), 1e-30))
    dense.bias.assign(dense.bias - log_probs.mean(0))
    return model


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def running(export_dir: Path, name: str = "flowers", **options):
    """The server in a thread (start_server), on a free loopback port: yields (url, ModelServer)."""
    with start_server(export_dir, name, port=0, **options) as server:
        yield server.url, server.model_server


@pytest.fixture(scope="module")
def model():
    with tinycam_registered() as backbone:  # for the whole module: version 2 is exported later
        yield tiny_model(backbone, 0)


@pytest.fixture(scope="module")
def export_dir(model, tmp_path_factory):
    root = tmp_path_factory.mktemp("serve") / "flowers"
    export_saved_model(model, root, CLASSES, top_k=2)
    return root


@pytest.fixture(scope="module")
def signatures(export_dir):
    return tf.saved_model.load(str(export_dir / "1")).signatures


@pytest.fixture(scope="module")
def api(export_dir):
    with running(export_dir, max_request_bytes=2**20, batch_timeout_ms=20, max_batch_size=16,
                 poll_interval=0) as started:
        yield started


def test_start_server_names_a_taken_port_and_stops_on_leaving_its_block(export_dir, api):
    url, _ = api  # a server already listening on this port
    port = int(url.rsplit(":", 1)[1])
    with pytest.raises(OSError, match=f"Cannot listen on 127.0.0.1:{port} .*port=0"):
        start_server(export_dir, "flowers", port=port)
    with start_server(export_dir, "other", port=0, poll_interval=0) as server:
        assert server.url != url and server.running
        reply = httpx.get(server.url + "/v1/models/other").json()
        assert reply["model_version_status"][0]["state"] == "AVAILABLE"
    assert not server.running
    with pytest.raises(httpx.TransportError):
        httpx.get(server.url + "/v1/models/other")


def expected(signatures, data: list[bytes]) -> dict:
    out = signatures["serving_default"](images=tf.constant(data))
    return {k: v.numpy() for k, v in out.items()}


def test_status_and_metadata_in_tf_serving_shape(api):
    url, _ = api
    status = {"model_version_status": [{"version": "1", "state": "AVAILABLE",
                                        "status": {"error_code": "OK", "error_message": ""}}]}
    assert httpx.get(f"{url}/v1/models/flowers").json() == status
    assert httpx.get(f"{url}/v1/models/flowers/versions/1").json() == status
    meta = httpx.get(f"{url}/v1/models/flowers/versions/1/metadata").json()
    assert meta["model_spec"] == {"name": "flowers", "signature_name": "", "version": "1"}
    defs = meta["metadata"]["signature_def"]["signature_def"]
    assert {"serving_default", "predict_pixels", "predict_pixels_uint8"} <= set(defs)
    default = defs["serving_default"]
    assert default["method_name"] == "tensorflow/serving/predict"
    assert default["inputs"]["images"]["dtype"] == "DT_STRING"
    assert default["inputs"]["images"]["tensor_shape"]["dim"] == [{"size": "-1", "name": ""}]
    assert sorted(default["outputs"]) == ["class_ids", "class_names", "probabilities", "scores"]
    assert default["outputs"]["class_names"]["tensor_shape"]["dim"][1]["size"] == "2"  # top_k


def test_predict_row_and_columnar_match_the_savedmodel_in_process(api, signatures):
    url, _ = api
    data = images(3)
    want = expected(signatures, data)
    names = [[n.decode() for n in row] for row in want["class_names"]]
    assert len({row[0] for row in names}) > 1, "the test images should not all get one class"

    row = httpx.post(f"{url}/v1/models/flowers:predict",
                     json={"instances": [{"b64": b64(d)} for d in data]})
    assert row.status_code == 200, row.text
    predictions = row.json()["predictions"]
    assert [sorted(p) for p in predictions] == [["class_ids", "class_names", "probabilities", "scores"]] * 3
    np.testing.assert_allclose([p["probabilities"] for p in predictions], want["probabilities"], atol=1e-5)
    np.testing.assert_allclose([p["scores"] for p in predictions], want["scores"], atol=1e-5)
    assert [p["class_names"] for p in predictions] == names
    assert [p["class_ids"] for p in predictions] == want["class_ids"].tolist()

    named = httpx.post(f"{url}/v1/models/flowers/versions/1:predict",
                       json={"signature_name": "serving_default",
                             "instances": [{"images": {"b64": b64(d)}} for d in data]})
    assert named.json()["predictions"] == predictions

    columnar = httpx.post(f"{url}/v1/models/flowers:predict",
                          json={"inputs": {"images": [{"b64": b64(d)} for d in data]}})
    outputs = columnar.json()["outputs"]
    np.testing.assert_allclose(outputs["probabilities"], want["probabilities"], atol=1e-5)
    assert outputs["class_names"] == names

    pixels = np.random.default_rng(3).integers(0, 256, (2, SIZE, SIZE, 3)).astype(np.float32)
    by_pixels = httpx.post(f"{url}/v1/models/flowers:predict",
                           json={"signature_name": "predict_pixels", "instances": pixels.tolist()})
    want_pixels = signatures["predict_pixels"](pixels=tf.constant(pixels))["probabilities"].numpy()
    np.testing.assert_allclose([p["probabilities"] for p in by_pixels.json()["predictions"]],
                               want_pixels, atol=1e-5)


def test_every_bad_request_gets_its_status_and_the_next_good_one_succeeds(api, signatures):
    url, _ = api
    predict = f"{url}/v1/models/flowers:predict"
    png = images(1)[0]
    good = {"instances": [{"b64": b64(png)}]}
    want = expected(signatures, [png])["probabilities"]
    cases = [
        ("POST", predict, b'{"instances": [', 400, "JSON Parse error"),
        ("POST", predict, b'[1, 2]', 400, "JSON object"),
        ("POST", predict, b'{"instances": [{"b64": "not base64!"}]}', 400, "invalid base64"),
        ("POST", predict, f'{{"instances": [{{"b64": "{b64(b"hello, not an image")}"}}]}}'.encode(),
         400, "not a JPEG, PNG, GIF, BMP or WebP image"),
        ("POST", predict, f'{{"instances": [{{"b64": "{b64(png[: len(png) // 2])}"}}]}}'.encode(),
         400, "corrupt or truncated"),
        ("POST", predict, b'{"instances": [{"image": {"b64": "AAAA"}}]}', 400, "takes the inputs ['images']"),
        ("POST", predict, b'{"instances": []}', 400, "non-empty list"),
        ("POST", predict, b'{"signature_name": "nope", "instances": [1]}', 400,
         'Serving signature name: "nope" not found'),
        ("POST", predict, b'{"instances": [{"b64": "AAAA"}], "inputs": [{"b64": "AAAA"}]}', 400,
         "exactly one"),
        ("POST", predict, b'{"instance": [1]}', 400, "Unknown request field"),
        ("POST", predict, b'{"signature_name": "predict_pixels", "instances": [[1, 2, 3]]}', 400,
         "got shape [1, 3]"),
        ("POST", predict, b'{"instances": [3.5]}', 400, "expected strings"),
        ("POST", f"{url}/v1/models/tulips:predict", b'{"instances": [1]}', 404, "Latest(tulips)"),
        ("POST", f"{url}/v1/models/flowers/versions/9:predict", b'{"instances": [1]}', 404,
         "Specific(flowers, 9)"),
        ("GET", f"{url}/v1/models/flowers/versions/9", None, 404, "Specific(flowers, 9)"),
        ("GET", f"{url}/v1/nothing/here", None, 404, "Malformed request"),
        ("POST", predict, b"x" * (2**20 + 1), 413, "over the limit of 1048576 bytes"),
    ]
    with httpx.Client() as client:
        for method, target, body, status, fragment in cases:
            response = client.request(method, target, content=body)
            assert response.status_code == status, (body, response.text)
            assert fragment in response.json()["error"], (body, response.text)
            ok = client.post(predict, json=good)
            assert ok.status_code == 200, (body, ok.text)
            np.testing.assert_allclose(ok.json()["predictions"][0]["probabilities"], want[0], atol=1e-5)
    # A body streamed without Content-Length is cut at the limit too.
    chunks = (b"x" * 65536 for _ in range(20))
    assert httpx.post(predict, content=chunks).status_code == 413
    assert httpx.post(predict, json=good).status_code == 200


def test_concurrent_load_is_batched_and_a_bad_image_fails_alone(api, signatures):
    url, server = api
    data = images(4, seed=5)
    want = expected(signatures, data)["probabilities"]
    before = server.batcher.batch_sizes

    def client(worker: int) -> list[tuple[int, int, list]]:
        out = []
        with httpx.Client(timeout=60) as http:
            for i in range(5):
                k = (worker + i) % len(data)
                item = b64(b"\x89PNG but broken") if (worker, i) == (3, 2) else b64(data[k])
                r = http.post(f"{url}/v1/models/flowers:predict", json={"instances": [{"b64": item}]})
                out.append((k, r.status_code, r.json()))
        return out

    with ThreadPoolExecutor(16) as pool:
        results = [r for rs in pool.map(client, range(16)) for r in rs]
    statuses = sorted(status for _, status, _ in results)
    assert statuses == [200] * 79 + [400]
    for k, status, body in results:
        if status == 200:
            np.testing.assert_allclose(body["predictions"][0]["probabilities"], want[k], atol=1e-5)
    after = server.batcher.batch_sizes
    calls = {size: n - before.get(size, 0) for size, n in after.items() if n > before.get(size, 0)}
    assert sum(size * n for size, n in calls.items()) == 79, calls  # every good image ran once
    # 16 clients at once: the batcher must have merged at least 4 requests into one call.
    assert max(calls) >= 4, f"concurrent requests were not batched: calls by size {calls}"


def test_batcher_reruns_a_failed_batch_one_by_one_and_drains_on_close():
    def double(x):
        if np.any(x.numpy() < 0):
            raise tf.errors.InvalidArgumentError(None, None, "negative input")
        return {"y": x * 2}

    model = types.SimpleNamespace(signatures={"double": double})
    batcher = MicroBatcher(max_batch_size=8, batch_timeout_ms=300)
    batcher.start()
    futures = [batcher.submit(model, "double", {"x": np.array([v], np.float32)}) for v in (1, -1, 3)]
    batcher.close()  # returns once everything queued has run
    assert all(f.done() for f in futures)
    assert futures[0].result()["y"].tolist() == [2.0] and futures[2].result()["y"].tolist() == [6.0]
    with pytest.raises(tf.errors.InvalidArgumentError, match="negative input"):
        futures[1].result()
    with pytest.raises(RuntimeError, match="shutting down"):
        batcher.submit(model, "double", {"x": np.array([1], np.float32)})


def test_new_version_is_picked_up_and_broken_folders_are_never_served(model, export_dir, tmp_path,
                                                                      caplog):
    model_dir = tmp_path / "flowers"
    shutil.copytree(export_dir / "1", model_dir / "1")
    png = images(1, seed=7)[0]
    body = {"instances": [{"b64": b64(png)}]}
    with running(model_dir, poll_interval=0.2) as (url, server):
        first = httpx.post(f"{url}/v1/models/flowers:predict", json=body).json()["predictions"][0]
        (model_dir / "3" / "variables").mkdir(parents=True)  # half-copied: no saved_model.pb yet
        (model_dir / "4").mkdir()
        (model_dir / "4" / "saved_model.pb").write_bytes(b"not a SavedModel")
        deadline = time.monotonic() + 60
        while "did not load" not in caplog.text:
            assert time.monotonic() < deadline, "the broken version 4 was not reported"
            time.sleep(0.05)
        time.sleep(0.6)  # three more polls: version 4 is not retried while its files stay the same
        assert caplog.text.count("did not load") == 1 and "version 4 at" in caplog.text, caplog.text
        assert httpx.get(f"{url}/v1/models/flowers").json()["model_version_status"][0]["version"] == "1"
        assert httpx.post(f"{url}/v1/models/flowers:predict", json=body).json()["predictions"][0] == first
        shutil.rmtree(model_dir / "3")
        shutil.rmtree(model_dir / "4")

        stop, served = threading.Event(), []

        def keep_asking() -> None:  # requests while the version changes: none may fail
            with httpx.Client(timeout=60) as http:
                while not stop.is_set():
                    served.append(http.post(f"{url}/v1/models/flowers:predict", json=body).status_code)

        asker = threading.Thread(target=keep_asking)
        asker.start()
        try:
            # The same weights with the class list reversed: version 2 answers differently.
            export_saved_model(model, model_dir, CLASSES[::-1], version=2, top_k=2)
            deadline = time.monotonic() + 60
            while server.poller.current.version != 2:
                assert time.monotonic() < deadline, "version 2 was not picked up"
                time.sleep(0.1)
        finally:
            stop.set()
            asker.join()
        assert served and set(served) == {200}
        second = httpx.post(f"{url}/v1/models/flowers:predict", json=body).json()["predictions"][0]
        want = expected(tf.saved_model.load(str(model_dir / "2")).signatures, [png])
        np.testing.assert_allclose(second["probabilities"], want["probabilities"][0], atol=1e-5)
        assert second["class_names"] == [n.decode() for n in want["class_names"][0]]
        assert second["class_names"] != first["class_names"]
        assert httpx.get(f"{url}/v1/models/flowers/versions/1").status_code == 404
        assert httpx.get(f"{url}/v1/models/flowers/versions/2").status_code == 200


def _chromium() -> tuple[str | None, str | None]:
    return shutil.which("chromium"), shutil.which("chromedriver")


def test_page_in_headless_chromium_shows_the_top_class(api, signatures, tmp_path):
    browser, driver_path = _chromium()
    if not (browser and driver_path):
        reason = ("chromium/chromedriver not installed: THE SERVING PAGE IS NOT TESTED. "
                  "apt-get install -y chromium chromium-driver (.ci/run does this)")
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    url, _ = api
    data = images(3)[0]  # a PNG whose top class is not the one most images get
    (tmp_path / "photo.png").write_bytes(data)
    top = expected(signatures, [data])["class_names"][0][0].decode()

    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(driver_path))
    try:
        driver.get(url + "/")
        assert "flowers" in driver.title
        driver.find_element(By.ID, "file").send_keys(str(tmp_path / "photo.png"))
        WebDriverWait(driver, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#results .class"))
        shown = [e.text for e in driver.find_elements(By.CSS_SELECTOR, "#results .class")]
        assert shown[0] == top and len(shown) == 2  # top_k=2 at export
        assert driver.find_element(By.ID, "error").text == ""
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def multi_label_export(tmp_path_factory):
    """A multi-label export, top_k=1, whose thresholds put the top label and the LAST label of
    one image above their thresholds, the middle one below: returns (export_dir, image, labels)."""
    with tinycam_registered() as backbone:
        keras.utils.set_random_seed(3)
        model = build_transfer_model(backbone, len(CLASSES), input_shape=(SIZE, SIZE, 3),
                                     weights=None, head="avg", multi_label=True)
    pixels = np.random.default_rng(5).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    probabilities = model.predict(pixels[None].astype(np.float32), verbose=0)[0]
    order = np.argsort(-probabilities)
    assert probabilities[order[0]] - probabilities[order[-1]] > 1e-3  # a ranking to test
    thresholds = [1.01] * len(CLASSES)
    thresholds[order[0]] = thresholds[order[-1]] = 0.0
    model.transfer_config = {**model.transfer_config, "thresholds": thresholds}
    root = tmp_path_factory.mktemp("serve_multi") / "tags"
    export_saved_model(model, root, CLASSES, top_k=1)
    labels = [(CLASSES[i], float(probabilities[i])) for i in (order[0], order[-1])]
    return root, encode(pixels), labels


def test_multi_label_answer_lists_every_label_above_its_threshold(multi_label_export):
    """above_threshold covers all C labels but class_names only the top k: the answer's
    "labels" names every label above its threshold, also those outside the top k."""
    from starlette.testclient import TestClient

    root, data, labels = multi_label_export
    with TestClient(ModelServer(root, "tags", poll_interval=0).app) as client:
        row = client.post("/v1/models/tags:predict", json={"instances": [{"b64": b64(data)}]}
                          ).json()["predictions"][0]
        columnar = client.post("/v1/models/tags:predict",
                               json={"inputs": {"images": [{"b64": b64(data)}]}}).json()["outputs"]
    assert row["class_names"] == [labels[0][0]]  # top_k=1: the last label is not among them
    assert [(label["class"], pytest.approx(label["score"], abs=1e-5)) for label in row["labels"]] \
        == labels
    assert sum(row["above_threshold"]) == 2 and columnar["labels"] == [row["labels"]]
    exported = tt.load_exported(root).predict(data, top_k=1)[0]  # the Python API agrees
    assert [name for name, _ in exported["labels"]] == [label["class"] for label in row["labels"]]


def test_page_in_headless_chromium_marks_every_label_above_its_threshold(multi_label_export,
                                                                       tmp_path):
    browser, driver_path = _chromium()
    if not (browser and driver_path):
        pytest.skip("chromium/chromedriver not installed: the multi-label page is not tested")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    root, data, labels = multi_label_export
    (tmp_path / "photo.png").write_bytes(data)
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(flag)
    with running(root, "tags", poll_interval=0) as (url, _):
        driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(driver_path))
        try:
            driver.get(url + "/")
            driver.find_element(By.ID, "file").send_keys(str(tmp_path / "photo.png"))
            WebDriverWait(driver, 30).until(
                lambda d: d.find_elements(By.CSS_SELECTOR, "#results .class"))
            shown = [e.text for e in driver.find_elements(By.CSS_SELECTOR, "#results .class")]
            heading = driver.find_element(By.CSS_SELECTOR, "#results .labels").text
        finally:
            driver.quit()
    # the top label (top_k=1) and the last label, outside the top k, both marked
    assert shown == [f"{name} \u2713" for name, _ in labels]
    assert heading == "labels: " + ", ".join(name for name, _ in labels)

@pytest.mark.slow
def test_cli_serve_answers_then_finishes_in_flight_requests_on_sigterm(export_dir, tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    # `tfx-transfer serve` in a process of its own, which gets a real SIGTERM: a fresh process
    # forked from the test process's forker, an interpreter that imported TensorFlow and the kit
    # but started no TensorFlow runtime (what `python -m tfx_transfer.cli serve ...` is, less the
    # import). A long batch wait keeps a request in flight when SIGTERM arrives.
    forker = distribute_jobs.forker(tmp_path)
    argv = ["serve", str(export_dir), "--model-name", "flowers", "--port", str(port),
            "--batch-timeout-ms", "2000", "--poll-interval", "0"]
    started = forker.start([("cli", json.dumps(argv), {})], tmp_path)
    assert not isinstance(started, str), started
    (pid,), log_file, codes = started, tmp_path / "job_0.log", None
    try:
        deadline = time.monotonic() + 90
        while True:
            assert forker.running(), (forker.wait(), log_file.read_text())
            assert time.monotonic() < deadline, "tfx-transfer serve did not come up"
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/v1/models/flowers").status_code == 200:
                    break
            time.sleep(0.3)
        with ThreadPoolExecutor(1) as pool:
            sent = pool.submit(httpx.post, f"{url}/v1/models/flowers:predict", timeout=60,
                               json={"instances": [{"b64": b64(images(1)[0])}]})
            time.sleep(0.7)
            assert not sent.done(), "the request should still be waiting for its batch"
            os.kill(pid, signal.SIGTERM)
            response = sent.result()
        assert response.status_code == 200 and len(response.json()["predictions"]) == 1
        # uvicorn re-raises the SIGTERM it caught once shut down: the conventional exit status.
        codes = forker.wait(60)
        assert codes in ([0], [-signal.SIGTERM]), (codes, log_file.read_text())
    finally:
        if codes is None and forker.running():
            os.kill(pid, signal.SIGKILL)
            forker.wait(60)
    log = log_file.read_text()
    assert "serving version 1" in log and "Finished server process" in log


def test_cli_errors_name_the_fix(tmp_path, capsys, monkeypatch):
    assert main(["serve", str(tmp_path / "missing"), "--model-name", "m"]) == 2
    assert "does not exist" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # as if the extra were not installed
    assert main(["serve", str(tmp_path), "--model-name", "m"]) == 2
    assert "pip install 'tfx_transfer[serve]'" in capsys.readouterr().err
