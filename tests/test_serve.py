"""`cnnlab serve`: a real uvicorn process on 127.0.0.1, spoken to over HTTP with httpx."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from PIL import Image

from cnnlab.checkpoint import load_checkpoint
from cnnlab.predict import predict_files
from cnnlab.serve import MAX_FILES, default_workers

from conftest import SHARED, Server, free_port, needs_data, needs_shared

pytestmark = [needs_data, needs_shared]


def _digits(count: int | None = None) -> list:
    """Real handwritten digits (../shared/digits), with their labels."""
    rows = (SHARED / "digits" / "manifest.csv").read_text().splitlines()[1:]
    found = [(SHARED / "digits" / row.split(",")[0], int(row.split(",")[1])) for row in rows]
    return found[:count] if count else found


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _post_image(server, data: bytes, content_type: str = "image/png", **params) -> httpx.Response:
    return httpx.post(f"{server.url}/predict", content=data, headers={"Content-Type": content_type},
                      params=params, timeout=30)


def test_health_model_and_docs(server, served_run):
    health = httpx.get(f"{server.url}/health").json()
    assert health["status"] == "ok" and 0 <= health["workers_ready"] <= health["workers"] == default_workers()
    model = httpx.get(f"{server.url}/model").json()
    metrics = json.loads((served_run / "metrics.json").read_text())
    assert model["name"] == "tiny_cnn" and model["dataset"] == "mnist"
    assert model["classes"] == [str(i) for i in range(10)] and model["input_shape"] == [28, 28, 1]
    assert model["model"].endswith("model.tflite")  # predicts through LiteRT
    assert model["test_accuracy"] == metrics["test_accuracy"]
    assert model["trained_with"]["keras"] and model["serving"]["fastapi"]
    docs = httpx.get(f"{server.url}/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    assert "/predict" in httpx.get(f"{server.url}/openapi.json").json()["paths"]


def test_a_raw_image_body_gets_the_answer_cnnlab_predict_gives(server, served_run):
    loaded = load_checkpoint(served_run, fast=True)
    right = 0
    for path, label in _digits()[::10]:
        answer = _post_image(server, path.read_bytes(), top_k=3)
        assert answer.status_code == 200, answer.text
        served = answer.json()["predictions"][0]
        local = predict_files(loaded, [path], top_k=3)[0]
        assert served["class"] == local.label and len(served["top_k"]) == 3
        assert [c["probability"] for c in served["top_k"]] == pytest.approx([p for _, _, p in local.top], abs=1e-6)
        right += served["class"] == label
    assert right >= 7  # of 11 real photos and drawings: the server reads handwriting, not only MNIST


def test_multipart_upload_of_several_files_with_the_seen_images(server, served_run):
    digits = _digits()[:3]
    files = [("files", (path.name, path.read_bytes(), "image/png")) for path, _ in digits]
    answer = httpx.post(f"{server.url}/predict", files=files, params={"seen": "true", "top_k": 10}, timeout=30)
    assert answer.status_code == 200, answer.text
    predictions = answer.json()["predictions"]
    assert [p["file"] for p in predictions] == [path.name for path, _ in digits]
    local = predict_files(load_checkpoint(served_run, fast=True), [path for path, _ in digits], top_k=10)
    for served, expected in zip(predictions, local):
        assert len(served["top_k"]) == 10 and served["class"] == expected.label
        header, data = served["seen"].split(",", 1)
        assert header == "data:image/png;base64"
        seen = np.asarray(Image.open(io.BytesIO(base64.b64decode(data))))
        assert seen.shape == (28, 28)
        np.testing.assert_array_equal(seen, expected.seen[..., 0])  # the very 28x28 the model saw


def test_preprocess_none_is_a_query_option(server):
    path, _ = _digits()[0]
    answer = _post_image(server, path.read_bytes(), preprocess="none")
    assert answer.status_code == 200 and answer.json()["preprocess"] == "none"
    assert _post_image(server, path.read_bytes()).json()["preprocess"] == "mnist"
    bad = _post_image(server, path.read_bytes(), preprocess="sharpen")
    assert bad.status_code == 422 and "preprocess" in bad.text


def _decompression_bomb() -> bytes:
    """A 1-bit PNG of 12,000 x 12,000 pixels: a few KB that would decode to 144 million pixels."""
    return _png(Image.new("1", (12000, 12000)))


def _bad_requests(server) -> dict:
    """Each bad input of issue 12, as a function sending it, with the status and message expected."""
    photo = _digits()[0][0].read_bytes()
    blank = _png(Image.new("RGB", (280, 280), "white"))
    tiny = _png(Image.new("L", (28, 28)))
    return {
        "not an image": (lambda: _post_image(server, b"GIF89 this is text, not a picture"), 422, "not an image"),
        "empty body": (lambda: _post_image(server, b""), 400, "empty"),
        "truncated png": (lambda: _post_image(server, photo[: len(photo) // 2]), 422, "truncated"),
        "decompression bomb": (lambda: _post_image(server, _decompression_bomb()), 422, "decompression-bomb"),
        "over the size limit": (lambda: _post_image(server, photo + bytes(2**20)), 413, "1 MiB"),
        "over the limit, streamed": (
            lambda: httpx.post(f"{server.url}/predict", content=iter([photo, bytes(2**20)]),
                               headers={"Content-Type": "image/png"}, timeout=30), 413, "1 MiB"),
        "blank drawing": (lambda: _post_image(server, blank), 422, "no ink: the image is blank (a single grey level, "
                          "or contrast below 24 grey levels); draw or upload a digit, or send preprocess=none"),
        "too many files": (
            lambda: httpx.post(f"{server.url}/predict", files=[("files", (f"{i}.png", tiny, "image/png"))
                                                               for i in range(MAX_FILES + 1)], timeout=30),
            400, "Too many files"),
        "a form without files": (
            lambda: httpx.post(f"{server.url}/predict", files={"note": (None, "a text field")}, timeout=30), 400,
            "no file"),
        "wrong content type": (lambda: _post_image(server, photo, "text/plain"), 415, "text/plain"),
        "json body": (lambda: httpx.post(f"{server.url}/predict", json={"image": "x"}, timeout=30), 415,
                      "application/json"),
    }


@pytest.mark.parametrize("case", [
    "not an image", "empty body", "truncated png", "decompression bomb", "over the size limit",
    "over the limit, streamed", "blank drawing", "too many files", "a form without files", "wrong content type",
    "json body",
])
def test_a_bad_request_gets_a_json_error_and_the_server_keeps_serving(server, case):
    send, status, message = _bad_requests(server)[case]
    answer = send()
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"].startswith("application/json")
    assert message in answer.json()["detail"]
    good = _post_image(server, _digits()[0][0].read_bytes())
    assert good.status_code == 200


@pytest.mark.parametrize("path", [
    "/etc/passwd", "/../pyproject.toml", "/%2e%2e/%2e%2e/pyproject.toml", "/serve_page/index.html",
    "/cnnlab/serve.py", "/model.tflite", "/static/../config.yaml",
])
def test_unknown_paths_are_404_and_never_a_file(server, path):
    answer = httpx.get(server.url + path)
    assert answer.status_code == 404 and answer.json() == {"detail": "Not Found"}


def test_the_page_and_its_assets_come_from_the_package(server):
    page = httpx.get(f"{server.url}/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '<canvas id="canvas"' in page.text
    assert "http" not in re.sub(r"<!doctype[^>]*>", "", page.text, flags=re.I)  # no CDN: everything is local
    assert httpx.get(f"{server.url}/page.js").headers["content-type"].startswith("text/javascript")
    assert httpx.get(f"{server.url}/page.css").headers["content-type"].startswith("text/css")


def test_concurrent_requests_and_a_burst_of_bad_ones(server):
    """8 clients at once, good and bad requests mixed: every good one gets the answer a lone one gets."""
    digits = _digits()[::12][:8]
    alone = {path: _post_image(server, path.read_bytes()).json()["predictions"][0] for path, _ in digits}
    bad = [b"", b"not an image", _png(Image.new("L", (64, 64), 255))]

    def client(index: int) -> list:
        results = []
        with httpx.Client(timeout=30) as http:
            for step in range(12):
                if step % 3 == 2:
                    data = bad[(index + step) % len(bad)]
                    status = http.post(f"{server.url}/predict", content=data,
                                       headers={"Content-Type": "image/png"}).status_code
                    results.append(("bad", status))
                else:
                    path = digits[(index + step) % len(digits)][0]
                    answer = http.post(f"{server.url}/predict", content=path.read_bytes(),
                                       headers={"Content-Type": "image/png"})
                    results.append((path, answer.status_code, answer.json()))
        return results

    with ThreadPoolExecutor(8) as pool:
        outcomes = [r for rs in pool.map(client, range(8), timeout=120) for r in rs]
    assert len(outcomes) == 96
    for outcome in outcomes:
        if outcome[0] == "bad":
            assert outcome[1] in (400, 422)
        else:
            path, status, answer = outcome
            assert status == 200
            served = answer["predictions"][0]
            assert served["class"] == alone[path]["class"]
            assert served["top_k"][0]["probability"] == pytest.approx(alone[path]["top_k"][0]["probability"], abs=1e-6)


def test_one_log_line_per_request_and_the_address_printed(server):
    _post_image(server, b"", "image/png")
    httpx.get(f"{server.url}/health")
    log = server.log()
    assert f"on http://127.0.0.1:{server.port}" in log.splitlines()[0]
    assert re.search(r"^POST /predict 400 \d+\.\d ms$", log, flags=re.M)
    assert re.search(r"^GET /health 200 \d+\.\d ms$", log, flags=re.M)
    assert "Traceback" not in log


def _process_tree(pid: int) -> list[int]:
    """pid and its descendants (Linux /proc)."""
    children = []
    for task in os.listdir(f"/proc/{pid}/task"):
        children += [int(c) for c in open(f"/proc/{pid}/task/{task}/children").read().split()]
    return [pid] + [p for child in children for p in _process_tree(child)]


def test_ready_fast_and_no_tensorflow_in_the_server(served_run, tmp_path):
    # the server answers /health without TensorFlow: LiteRT only (the speed target is in bench/)
    probe = Server(served_run, tmp_path / "serve.log", "--workers", "2")
    try:
        tree = _process_tree(probe.process.pid)
        workers = [pid for pid in tree[1:] if "multiprocessing" in open(f"/proc/{pid}/cmdline").read()]
        assert len(workers) >= 2  # the two workers (spawn may add its resource tracker)
        for pid in tree:
            maps = open(f"/proc/{pid}/maps").read()
            assert "_pywrap_tensorflow" not in maps and "libtensorflow_framework" not in maps
    finally:
        assert probe.stop() == 0
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in tree) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [pid for pid in tree if _alive(pid)]  # no worker outlives the server


def _alive(pid: int) -> bool:
    try:
        return open(f"/proc/{pid}/stat").read().split(")")[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_one_process_serves_the_same_answers(served_run, tmp_path):
    """--workers 1: no worker processes, images prepared in this process's threads; the same answers."""
    digits = _digits()[::20]
    alone = predict_files(load_checkpoint(served_run, fast=True), [path for path, _ in digits])
    single = Server(served_run, tmp_path / "serve.log", "--workers", "1")
    try:
        assert _process_tree(single.process.pid) == [single.process.pid]
        for (path, _), expected in zip(digits, alone):
            answer = _post_image(single, path.read_bytes()).json()["predictions"][0]
            assert answer["class"] == expected.label
        assert _post_image(single, b"not an image").status_code == 422
        assert "with 1 process" in single.log().splitlines()[0]
    finally:
        assert single.stop() == 0


def test_sigterm_finishes_the_request_in_flight(served_run, tmp_path):
    probe = Server(served_run, tmp_path / "serve.log")
    photo = _digits()[0][0].read_bytes()
    sent_first = threading.Event()

    def slow_body():
        yield photo[:100]
        sent_first.set()
        time.sleep(1.0)  # SIGTERM arrives while the body is still coming
        yield photo[100:]

    result = {}

    def request():
        result["answer"] = httpx.post(f"{probe.url}/predict", content=slow_body(),
                                      headers={"Content-Type": "image/png"}, timeout=30)

    thread = threading.Thread(target=request)
    thread.start()
    assert sent_first.wait(10)
    time.sleep(0.3)
    probe.process.terminate()
    thread.join(30)
    assert probe.process.wait(30) == 0
    assert result["answer"].status_code == 200 and result["answer"].json()["predictions"][0]["class"] >= 0
    assert "POST /predict 200" in probe.log()


def test_serve_errors_are_one_line(served_run, tmp_path, runner):
    from cnnlab.cli import app

    missing = runner.invoke(app, ["serve", str(tmp_path / "nope")])
    assert missing.exit_code == 2 and missing.stderr.count("\n") == 1 and "no such run directory" in missing.stderr
    port = free_port()
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        busy = subprocess.run([sys.executable, "-m", "cnnlab", "serve", str(served_run), "--port", str(port)],
                              capture_output=True, text=True, timeout=60)
    assert busy.returncode == 2 and busy.stderr.count("\n") == 1
    assert busy.stderr.startswith(f"error: --host 127.0.0.1 --port {port}: cannot listen there (Address already in use)")
    elsewhere = runner.invoke(app, ["serve", str(served_run), "--host", "192.0.2.1", "--port", str(free_port())])
    assert elsewhere.exit_code == 2 and "cannot listen there" in elsewhere.stderr  # not this machine's address


@pytest.mark.parametrize("args", [["serve", "--help"], ["export", "--help"]])
def test_the_cli_does_not_import_the_server_or_tensorflow(args):
    heavy = ("fastapi", "uvicorn", "starlette", "tensorflow", "keras", "PIL", "onnxruntime", "tf2onnx")
    code = ("import sys; from typer.testing import CliRunner; from cnnlab.cli import app; "
            f"r = CliRunner().invoke(app, {args!r}); assert r.exit_code == 0, r.output; "
            f"print(sorted(m for m in {heavy!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_fashion_run_answers_with_class_names(tmp_path):
    from cnnlab.config import validate_config
    from cnnlab.data import DATASETS
    from cnnlab.train import train

    from conftest import DATA_DIR, small_dnn

    data = small_dnn(epochs=1)
    data["data"].update(dataset="fashion_mnist", train_samples=3000, test_samples=500)
    run = train(validate_config(data, "f"), "f", runs_dir=tmp_path, echo=lambda _: None, quiet=True).run_dir
    names = list(DATASETS["fashion_mnist"].class_names)
    from cnnlab.data import load_raw

    raw = load_raw("fashion_mnist", str(DATA_DIR), test_only=True)
    photo = _png(Image.fromarray(255 - raw.x_test[0]).resize((112, 112)))  # a product photo: dark on white
    fashion = Server(run, tmp_path / "serve.log")
    try:
        assert httpx.get(f"{fashion.url}/model").json()["classes"] == names
        answer = _post_image(fashion, photo, top_k=10).json()
        assert answer["preprocess"] == "fashion"
        top = answer["predictions"][0]["top_k"]
        assert sorted(entry["name"] for entry in top) == sorted(names)
        assert answer["predictions"][0]["name"] == names[answer["predictions"][0]["class"]]
    finally:
        assert fashion.stop() == 0


def test_worker_processes_that_cannot_start_leave_this_process_answering(served_run, tmp_path, capsys):
    import asyncio

    from cnnlab.preprocess import ImageBytes
    from cnnlab.serve_workers import Processes, Threads

    loaded = load_checkpoint(served_run, fast=True)
    photo = _digits()[0][0]
    expected = predict_files(loaded, [photo])[0].label
    pool = Processes(tmp_path / "no-such-run", 2)  # each worker fails to load it
    pool.meanwhile = Threads(loaded)
    try:
        answers = asyncio.run(pool.answers([ImageBytes(photo.name, photo.read_bytes())], 3, "auto", False))
        assert answers[0]["class"] == expected
        pool.watcher.join(60)
        assert not pool.watcher.is_alive() and not pool.up.is_set()
        assert "worker processes did not start" in capsys.readouterr().err
        again = asyncio.run(pool.answers([ImageBytes(photo.name, photo.read_bytes())], 3, "auto", False))
        assert again[0]["class"] == expected  # still answered, by this process
    finally:
        pool.close()


def test_a_killed_worker_leaves_the_others_and_then_the_server_answering(served_run, tmp_path):
    import signal

    probe = Server(served_run, tmp_path / "serve.log", "--workers", "2")
    photo = _digits()[0][0].read_bytes()
    try:
        expected = _post_image(probe, photo).json()["predictions"][0]["class"]
        deadline = time.monotonic() + 30
        while "multiprocessing" not in "".join(open(f"/proc/{pid}/cmdline").read()
                                               for pid in _process_tree(probe.process.pid)[1:]):
            assert time.monotonic() < deadline
            time.sleep(0.1)
        workers = [pid for pid in _process_tree(probe.process.pid)[1:]
                   if "spawn_main" in open(f"/proc/{pid}/cmdline").read()
                   and "resource_tracker" not in open(f"/proc/{pid}/cmdline").read()]
        assert len(workers) == 2
        while httpx.get(f"{probe.url}/health").json()["workers_ready"] < 2:  # both have loaded the model
            assert time.monotonic() < deadline, probe.log()
            time.sleep(0.1)
        for number, worker in enumerate(workers, 1):
            os.kill(worker, signal.SIGKILL)
            time.sleep(0.2)
            for _ in range(6):  # none was in that worker: none is lost (one sent to its pipe goes elsewhere)
                answer = _post_image(probe, photo)
                assert answer.status_code == 200 and answer.json()["predictions"][0]["class"] == expected
            assert probe.log().count("a worker process stopped") == number
        assert "0 left; this process answers every request" in probe.log()
        assert httpx.get(f"{probe.url}/health").json() == {"status": "ok", "workers": 2, "workers_ready": 0}
    finally:
        assert probe.stop() == 0


def test_one_request_at_a_time_is_answered_here_and_a_crowd_by_the_workers(served_run):
    import asyncio

    from cnnlab.preprocess import ImageBytes
    from cnnlab.serve_workers import QUIET_S, Processes, Threads

    loaded = load_checkpoint(served_run, fast=True)
    photos = [ImageBytes(path.name, path.read_bytes()) for path, _ in _digits(8)]
    expected = [prediction.label for prediction in predict_files(loaded, photos)]

    class Counted(Threads):
        answered = 0

        async def answers(self, *args):
            Counted.answered += 1
            return await super().answers(*args)

    pool = Processes(served_run, 2)
    pool.meanwhile = Counted(loaded)
    try:
        assert pool.up.wait(60), "the worker processes did not start"

        async def one_by_one():
            return [(await pool.answers([photo], 3, "auto", False))[0]["class"] for photo in photos]

        async def all_at_once():
            answers = await asyncio.gather(*(pool.answers([photo], 3, "auto", False) for photo in photos))
            return [answer[0]["class"] for answer in answers]

        assert asyncio.run(one_by_one()) == expected
        assert Counted.answered == len(photos)  # no hop to a worker and back
        Counted.answered = 0
        assert asyncio.run(all_at_once()) == expected
        assert Counted.answered <= 1  # the first, while nothing else was in flight; the rest went to workers
        Counted.answered = 0
        assert asyncio.run(one_by_one()) == expected
        assert Counted.answered < len(photos)  # just after a crowd, the workers still answer ...
        time.sleep(QUIET_S * 2)
        assert asyncio.run(one_by_one()) == expected
        assert Counted.answered >= len(photos)  # ... and once it is quiet again, this process does
    finally:
        pool.close()


# --- what uvicorn would answer itself: malformed requests, oversized heads, clients that leave ---------

def _raw(server, chunks: list[bytes], pause: float = 0.0) -> tuple[int, dict, bytes]:
    """Send `chunks` on one raw connection (stopping once the server answers) and read the reply to its end."""
    import select
    import socket

    with socket.create_connection(("127.0.0.1", server.port), timeout=20) as sock:
        for chunk in chunks:
            try:
                sock.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                break
            if select.select([sock], [], [], pause)[0]:  # answered: the rest would not be read
                break
        reply = b""
        try:
            while data := sock.recv(65536):
                reply += data
        except ConnectionResetError:
            pass
    head, _, body = reply.partition(b"\r\n\r\n")
    status_line, *fields = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (field.partition(":") for field in fields)}
    return int(status_line.split()[1]), headers, body


def _settled_log(server, quiet: float = 0.3, timeout: float = 10) -> int:
    """How many lines the server has logged, once no line has come for `quiet` seconds.

    An access line is written after its response is sent: the previous request's line may still be on its way.
    """
    deadline = time.monotonic() + timeout
    count, since = len(server.log().splitlines()), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.05)
        now = len(server.log().splitlines())
        if now != count:
            count, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            break
    return count


def _log_after(server, before: int, timeout: float = 10) -> list[str]:
    """The lines the server has logged since it had `before` lines (waiting for at least one)."""
    deadline = time.monotonic() + timeout
    while True:
        lines = server.log().splitlines()[before:]
        if lines or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)


HOST = b"Host: 127.0.0.1\r\n"

# (id, the bytes sent): each is not HTTP/1.1 the parser accepts
MALFORMED_CASES = [
    ("not HTTP at all", b"HELLO SERVER\r\n\r\n"),
    ("a space in a header name", b"GET /health HTTP/1.1\r\n" + HOST + b"Bad Header: x\r\n\r\n"),
    ("both Content-Length and chunked", b"POST /predict HTTP/1.1\r\n" + HOST +
     b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
    ("a negative Content-Length", b"POST /predict HTTP/1.1\r\n" + HOST + b"Content-Length: -1\r\n\r\n"),
    ("a chunk size that is no number", b"POST /predict HTTP/1.1\r\n" + HOST +
     b"Content-Type: image/png\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n"),
    ("HTTP/2 without upgrade", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
    ("a TLS handshake", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(40)),
    ("a byte above ASCII in the path", b"GET /\xff HTTP/1.1\r\n" + HOST + b"\r\n"),
    ("a bare line feed in a header", b"GET /health HTTP/1.1\r\n" + HOST + b"X-A: 1\nX-B: 2\r\n\r\n"),
]


@pytest.mark.parametrize("sent", [case[1] for case in MALFORMED_CASES], ids=[case[0] for case in MALFORMED_CASES])
def test_a_malformed_request_gets_json_from_the_protocol_and_one_log_line(server, sent):
    before = _settled_log(server)
    status, headers, body = _raw(server, [sent])
    assert status == 400 and headers["content-type"] == "application/json", (status, headers, body)
    assert "not valid HTTP/1.1" in json.loads(body)["detail"]
    assert headers["connection"] == "close" and int(headers["content-length"]) == len(body)
    logged = _log_after(server, before)
    assert len(logged) == 1 and "Traceback" not in server.log(), logged
    assert httpx.get(f"{server.url}/health").status_code == 200


def _headers(count: int, size: int) -> bytes:
    return b"".join(b"X-Field-%d: %s\r\n" % (i, b"v" * size) for i in range(count))


# (id, the chunks sent, seconds between them): each head is over 32 KiB, however it arrives
OVERSIZED_CASES = [
    ("one field of 100 KB", [b"GET /health HTTP/1.1\r\n" + HOST + b"Cookie: " + b"c" * 100_000 + b"\r\n\r\n"], 0),
    ("2000 small fields in 1 KB pieces", [piece for data in [b"GET /health HTTP/1.1\r\n" + HOST + _headers(2000, 40)]
                                          for piece in (data[i:i + 1024] for i in range(0, len(data), 1024))], 0.002),
    ("a URL of 64 KB", [b"GET /health?q=" + b"q" * 65536 + b" HTTP/1.1\r\n" + HOST + b"\r\n"], 0),
    ("a head that never ends, 200 bytes at a time", [b"POST /predict HTTP/1.1\r\n" + HOST] +
     [b"X-Slow: " + b"s" * 190 + b"\r\n"] * 400, 0.001),
    ("a multipart upload with a huge header", [b"POST /predict HTTP/1.1\r\n" + HOST + b"Content-Type: multipart/form-data;"
                                               b" boundary=" + b"b" * 40_000 + b"\r\nContent-Length: 10\r\n\r\n"], 0),
]


@pytest.mark.parametrize("chunks, pause", [case[1:] for case in OVERSIZED_CASES], ids=[case[0] for case in OVERSIZED_CASES])
def test_a_head_over_32_kib_is_refused_with_431_as_it_arrives(server, chunks, pause):
    before = _settled_log(server)
    status, headers, body = _raw(server, chunks, pause)
    assert status == 431 and headers["content-type"] == "application/json", (status, body)
    assert "32 KiB" in json.loads(body)["detail"]
    assert len(_log_after(server, before)) == 1
    assert httpx.get(f"{server.url}/health").status_code == 200


# (id, the chunks of one connection): heads within the limit, however they are cut, get their answer
WITHIN_CASES = [
    ("a 24 KB cookie", [b"GET /health HTTP/1.1\r\n" + HOST + b"Cookie: " + b"c" * 24_000 + b"\r\nConnection: close\r\n\r\n"]),
    ("the blank line split across reads", [b"GET /health HTTP/1.1\r\n" + HOST + b"Connection: close\r\n\r", b"\n"]),
    ("two 20 KB heads on one connection", [b"GET /health HTTP/1.1\r\n" + HOST + b"Cookie: " + b"c" * 20_000 + b"\r\n\r\n",
                                           b"GET /health HTTP/1.1\r\n" + HOST + b"Cookie: " + b"c" * 20_000 +
                                           b"\r\nConnection: close\r\n\r\n"]),
]


@pytest.mark.parametrize("chunks", [case[1] for case in WITHIN_CASES], ids=[case[0] for case in WITHIN_CASES])
def test_a_head_within_the_limit_is_answered(server, chunks):
    import socket

    with socket.create_connection(("127.0.0.1", server.port), timeout=20) as sock:
        for chunk in chunks:
            sock.sendall(chunk)
            time.sleep(0.05)
        reply = b""
        while data := sock.recv(65536):
            reply += data
    assert reply.count(b"HTTP/1.1 200 OK") == len(chunks) - (chunks[-1] == b"\n"), reply[:300]


def _upload_start(content_type: bytes, length: int, body: bytes) -> bytes:
    return (b"POST /predict HTTP/1.1\r\n" + HOST + b"Content-Type: " + content_type + b"\r\n" +
            (b"Content-Length: %d\r\n" % length if length else b"Transfer-Encoding: chunked\r\n") + b"\r\n" + body)


# (id, what the client sends before it closes the connection)
LEAVING_CASES = [
    ("half a raw image body", _upload_start(b"image/png", 200_000, b"\x89PNG\r\n\x1a\n" + bytes(5000))),
    ("the head of an upload, no body", _upload_start(b"image/png", 50_000, b"")),
    ("part of a multipart file", _upload_start(b"multipart/form-data; boundary=XyZ", 300_000,
                                               b'--XyZ\r\nContent-Disposition: form-data; name="files"; filename="a.png"'
                                               b"\r\nContent-Type: image/png\r\n\r\n" + bytes(20_000))),
    ("one chunk of a chunked body", _upload_start(b"image/png", 0, b"1000\r\n" + bytes(4096) + b"\r\n")),
]


@pytest.mark.parametrize("sent", [case[1] for case in LEAVING_CASES], ids=[case[0] for case in LEAVING_CASES])
def test_a_client_leaving_mid_upload_is_one_4xx_log_line(server, sent):
    import socket

    before = _settled_log(server)
    with socket.create_connection(("127.0.0.1", server.port), timeout=20) as sock:
        sock.sendall(sent)
        time.sleep(0.2)  # the server is reading the body when the client leaves
    logged = _log_after(server, before)
    time.sleep(0.3)  # anything logged after the line (a traceback) would be here by now
    logged = server.log().splitlines()[before:]
    assert len(logged) == 1 and re.fullmatch(r"POST /predict 499 \d+\.\d ms", logged[0]), logged
    assert httpx.get(f"{server.url}/health").status_code == 200


@pytest.mark.parametrize("host, told", [("0.0.0.0", True), ("127.0.0.1", False), ("localhost", False)])
def test_serving_beyond_this_machine_says_so_in_one_line(served_run, tmp_path, host, told):
    running = Server(served_run, tmp_path / "serve.log", "--host", host, "--workers", "1")
    assert running.stop() == 0
    notes = [line for line in running.log().splitlines() if "reachable from other machines" in line]
    assert len(notes) == (1 if told else 0), running.log()
    if told:
        assert notes[0].startswith(f"note: --host {host}:") and "no authentication" in notes[0]
