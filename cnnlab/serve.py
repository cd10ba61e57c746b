"""An HTTP API and a page for a trained model: `cnnlab serve RUN`.

The app predicts exactly as `cnnlab predict` does: the model is loaded by
`cnnlab.checkpoint.load_checkpoint(fast=True)` (the run's `model.tflite` through LiteRT,
so the server is ready without importing TensorFlow; `best.keras` where there is none),
and every image goes through `cnnlab.predict.predict_files`: the same preprocessing, the
same top-k. This module only adds HTTP.

Routes:
- `POST /predict`: images as a multipart upload (any field name, up to `max_files`) or
  one image as the raw body (`Content-Type: image/...` or `application/octet-stream`).
  Query: `top_k` (default 3), `preprocess` (auto | mnist | fashion | none), `seen=true`
  to get the image the model saw as a PNG data URL. Answer: per image the top-k classes
  with names and probabilities.
- `GET /health` (with worker processes: how many of them answer now), `GET /model` (name, classes,
  input shape, test accuracy, versions),
  `GET /docs` (FastAPI's OpenAPI page).
- `GET /`: the page (`cnnlab/serve_page/`: plain HTML, CSS and JS, no CDN), fitted to the model:
  a canvas to draw on for a digit model, upload and the camera for a photo model.

Every bad request gets a JSON error `{"detail": "..."}` with a 4xx status and the server
keeps serving: 400 empty body / too many files, 413 a body over `max_upload_bytes`
(checked before and while it is read), 415 a content type that is no image, 422 an
upload that is not an image, truncated, a decompression bomb (Pillow's limit) or blank,
404 any other path (no route reads a file named by the request); and, from
`cnnlab.serve_http` before the app sees the request, 400 a request that is not HTTP/1.1,
431 a request line and header over 32 KiB. One line per request is logged (method, path,
status, milliseconds); a client that leaves mid-upload is logged with 499.

Images are prepared and predicted by `cnnlab.serve_workers`: in worker processes, each
with its own model, fed from one first-come-first-served queue (`--workers N`, default
one per core; one request at a time is answered here, without the hop), or with
`--workers 1` in this process's threads (LiteRT's interpreter is not thread-safe:
`LiteModel` holds a lock around each call).

Example:
    app = create_app(load_checkpoint("runs/cnn-20261123-012542", fast=True))
    serve("runs/cnn-20261123-012542", port=8000)  # blocks; Ctrl-C / SIGTERM stop it cleanly
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from importlib import resources
from pathlib import Path
from typing import Callable

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, Response
from starlette.requests import ClientDisconnect

from cnnlab import rundir
from cnnlab.backend import sigterm_interrupts
from cnnlab.checkpoint import LoadedModel, load_checkpoint
from cnnlab.errors import CnnlabError
from cnnlab.predict import PREPROCESS_CHOICES, preprocessing_for
from cnnlab.preprocess import ImageBytes
from cnnlab.serve_http import ANSWERED, JsonErrorsProtocol
from cnnlab.serve_workers import Processes, Refused, Threads, Workers, keep_freed_memory

CLIENT_GONE = 499  # nginx's "client closed request": logged, never sent (there is no one to send it to)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
MAX_UPLOAD_BYTES = 10 * 2**20  # a phone photo is 2-5 MB
MAX_FILES = 64  # images per request
PAGE = "serve_page"  # package folder of the page: index.html, page.js, page.css
_PAGE_FILES = {"page.js": "text/javascript", "page.css": "text/css"}
_RAW_TYPES = ("image/", "application/octet-stream")


def create_app(loaded: LoadedModel, max_upload_bytes: int = MAX_UPLOAD_BYTES, max_files: int = MAX_FILES,
               log: Callable[[str], None] | None = None, workers: "Workers | None" = None):
    """The FastAPI app serving `loaded` (see the module docstring for its routes).

    Args:
        loaded: the model, as `cnnlab.checkpoint.load_checkpoint` returns it.
        max_upload_bytes: a request body larger than this is refused with 413.
        max_files: a multipart request with more images than this is refused with 400.
        log: called with one line per request (default: print to stderr).
        workers: where images are prepared and predicted (default: `Threads(loaded)`, in this process).
    """
    app = FastAPI(title="cnnlab", version=rundir.installed_version("cnnlab"),
                  description=f"Predictions of {loaded.path} ({loaded.kind}).")
    described = describe_model(loaded)
    workers = workers or Threads(loaded)

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", **workers.state()}

    @app.get("/model")
    def model() -> dict:
        return described

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> HTMLResponse:
        return HTMLResponse(_page_file("index.html"))

    for name, media_type in _PAGE_FILES.items():  # fixed names only: no route maps a request to a path
        app.add_api_route(f"/{name}", _static(name, media_type), methods=["GET"], include_in_schema=False)

    @app.post("/predict", openapi_extra=_PREDICT_BODY)
    async def predict(
        request: Request,
        top_k: int = Query(3, ge=1, description="How many classes to list per image."),
        preprocess: str = Query("auto", description=f"One of {', '.join(PREPROCESS_CHOICES)}.",
                                pattern=f"^({'|'.join(PREPROCESS_CHOICES)})$"),
        seen: bool = Query(False, description="Also return the image the model saw, as a PNG data URL."),
    ) -> dict:
        """Predict the class of each uploaded image (multipart files, or one image as the raw body)."""
        try:
            images = await _received_images(request, max_files)
        except ClientDisconnect:
            raise HTTPException(status_code=CLIENT_GONE, detail="the client left before its upload was complete.") \
                from None
        try:
            answers = await workers.answers(images, top_k, preprocess, seen)
        except Refused as refused:
            raise HTTPException(status_code=refused.status, detail=refused.detail) from None
        return {"model": str(loaded.path), "preprocess": preprocessing_for(loaded.info, preprocess),
                "predictions": answers}

    app.add_middleware(_BodyLimit, limit=max_upload_bytes)
    app.add_middleware(_RequestLog, log=log or (lambda line: print(line, file=sys.stderr, flush=True)))
    return app


_PREDICT_BODY = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "properties": {
        "files": {"type": "array", "items": {"type": "string", "format": "binary"}}}}},
    "image/png": {"schema": {"type": "string", "format": "binary"}},
    "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
}}}


async def _received_images(request: Request, max_files: int) -> list[ImageBytes]:
    """The images of a request: the files of a multipart form, or the raw body as one image."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        form = await request.form(max_files=max_files, max_fields=max_files)
        uploads = [value for _, value in form.multi_items() if not isinstance(value, str)]
        if not uploads:
            raise HTTPException(status_code=400, detail="the multipart request holds no file; send images as file fields.")
        images = [ImageBytes(upload.filename or f"file {i + 1}", await upload.read()) for i, upload in enumerate(uploads)]
        await form.close()
    elif content_type.startswith(_RAW_TYPES):
        images = [ImageBytes("the request body", await request.body())]
    else:
        raise HTTPException(
            status_code=415,
            detail=f"Content-Type {content_type or '(none)'!r}: send an image (image/png, image/jpeg, ...) as the body "
                   "or images as multipart/form-data files.")
    empty = [image.name for image in images if not image.data]
    if empty:
        raise HTTPException(status_code=400, detail=f"{', '.join(empty)}: empty; send the image's bytes.")
    return images


def describe_model(loaded: LoadedModel) -> dict:
    """What `GET /model` answers: the model, its data set and classes, how it scored, versions."""
    run = loaded.run_dir
    metrics = _json_or_empty(run / rundir.METRICS) if run else {}
    environment = _json_or_empty(run / rundir.ENVIRONMENT) if run else {}
    name = _json_or_empty(run / rundir.RUN).get("name", run.name) if run else loaded.path.stem
    return {
        "name": name, "model": str(loaded.path), "kind": loaded.kind, "dataset": loaded.dataset,
        "classes": list(loaded.class_names), "input_shape": list(loaded.input_shape),
        "preprocess": loaded.info.preprocess, "test_accuracy": metrics.get("test_accuracy"),
        "trained_with": environment,
        "serving": {package: rundir.installed_version(package)
                    for package in ("cnnlab", "ai-edge-litert", "fastapi", "uvicorn")},
    }


def serve(target: str | Path, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
          max_upload_bytes: int = MAX_UPLOAD_BYTES, workers: int | None = None,
          echo: Callable[[str], None] = print) -> None:
    """Load TARGET and serve it until Ctrl-C or SIGTERM (requests in flight are finished first).

    Args:
        workers: processes that prepare and predict the images, each with its own copy of the
            model (default `default_workers()`: one per core, at most 4); under load this
            process then only speaks HTTP. 1: all in this process, in one thread per core (preparing a photo holds
            the GIL for part of its time, so threads share the cores less well than processes).
    """
    import uvicorn

    if not 0 <= port <= 65535:
        raise CnnlabError(f"--port {port}: must be between 0 and 65535.")
    workers = default_workers() if workers is None else workers
    if workers < 1:
        raise CnnlabError(f"--workers {workers}: must be at least 1.")
    listener = _listen(host, port)  # before loading: uvicorn would log its own lines, then exit
    keep_freed_memory()  # (this process prepares images too: before the workers are up, or with --workers 1)
    pool = None
    try:
        # a bad run fails here, once, with the command line's message
        # With workers, this process predicts one image at a time, when the server is quiet: the
        # interpreter's second thread has a core of its own (0.35 ms a call instead of 0.53).
        loaded = load_checkpoint(target, fast=True, threads=1 if workers == 1 else 2)
        if not loaded.info.is_image:
            raise CnnlabError(f"{target}: the model was trained on {loaded.dataset}, which is not an image data "
                              "set; serve predicts images.")
        here = Threads(loaded)
        if workers > 1:
            pool = Processes(target, workers)
            pool.meanwhile = here  # answers until the workers have loaded the model
        app = create_app(loaded, max_upload_bytes=max_upload_bytes, workers=pool or here)
        config = uvicorn.Config(app, http=JsonErrorsProtocol, access_log=False, log_level="warning",
                                timeout_graceful_shutdown=30)
        shown = f"[{host}]" if ":" in host else host
        what = f"{workers} worker processes" if pool else "1 process"
        echo(f"serving {loaded.path} ({loaded.kind}) on http://{shown}:{listener.getsockname()[1]} with {what}  "
             "(API docs: /docs; Ctrl-C stops)")
        if not _loopback(host):
            echo(f"note: --host {host}: the server is reachable from other machines and has no authentication; "
                 "anyone who can reach the port can use the model (keep the default 127.0.0.1 for this machine only).")
        _run_one(uvicorn.Server(config), listener)
        echo("stopped")
    finally:
        if pool is not None:
            pool.close()
        listener.close()


def default_workers() -> int:
    """Worker processes `cnnlab serve` starts: one per core, at most 4 (each holds ~90 MB)."""
    return max(1, min(os.cpu_count() or 1, 4))


def _run_one(server, listener: socket.socket) -> None:
    """Serve in this process; SIGTERM, like Ctrl-C, stops it cleanly."""
    # uvicorn finishes the requests in flight on SIGINT/SIGTERM, then raises the signal again
    # with the handlers it found: ours turns SIGTERM into KeyboardInterrupt, as Ctrl-C is.
    with sigterm_interrupts(), contextlib.suppress(KeyboardInterrupt):
        server.run(sockets=[listener])


def _listen(host: str, port: int) -> socket.socket:
    """The listening socket, or one clear error (the address is in use, not this machine's, a privileged port).

    It is made with `IPPROTO_TCP`, not the 0 uvicorn's own `bind_socket` leaves: asyncio's loop
    (where uvloop is missing) turns on TCP_NODELAY only for accepted sockets that say TCP, and
    without it a keep-alive request can wait ~40 ms for a delayed ACK (uvicorn issue #3149).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: restart at once
    try:
        listener.bind((host, port))
        listener.listen(2048)
    except OSError as exc:
        listener.close()
        raise CnnlabError(f"--host {host} --port {port}: cannot listen there ({exc.strerror or exc}); choose "
                          "another --port, or a --host that is this machine's address.") from None
    listener.set_inheritable(True)
    return listener


def _loopback(host: str) -> bool:
    """Whether `host` is this machine only (127.0.0.0/8, ::1, localhost): no other machine can connect."""
    import ipaddress

    if host.lower() in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a name: its addresses may be anyone's
        return False


class _BodyLimit:
    """ASGI middleware: a request body over `limit` bytes gets 413, by its Content-Length or as it streams in."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await self._refuse(send)
        received, started = 0, False

        async def counting_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise _TooLarge()
            return message

        async def tracking_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except _TooLarge:
            if started:
                raise
            await self._refuse(send)

    async def _refuse(self, send):
        limit = f"{self.limit / 2**20:g} MiB" if self.limit >= 2**20 else f"{self.limit:,} bytes"
        body = json.dumps({"detail": f"the request body is larger than the server's limit of {limit} "
                                     "(cnnlab serve --max-upload-mb)."}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


class _TooLarge(Exception):
    pass


class _RequestLog:
    """ASGI middleware: one line per request, `POST /predict 200 3.1 ms`."""

    def __init__(self, app, log: Callable[[str], None]):
        self.app, self.log = app, log

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), [500]

        async def recording_send(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            if not scope.get("state", {}).get(ANSWERED):  # else the protocol answered it and logged it
                elapsed = (time.perf_counter() - start) * 1000
                self.log(f"{scope['method']} {scope['path']} {status[0]} {elapsed:.1f} ms")


def _static(name: str, media_type: str):
    def route() -> Response:
        return Response(_page_file(name), media_type=media_type)

    return route


def _page_file(name: str) -> str:
    return resources.files("cnnlab").joinpath(PAGE, name).read_text(encoding="utf-8")


def _json_or_empty(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}

