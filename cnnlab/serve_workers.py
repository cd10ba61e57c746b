"""Where `cnnlab serve` prepares and predicts the uploaded images: threads here, or worker processes.

Both run `answers_for`: `cnnlab.predict.predict_files`, exactly as `cnnlab predict` does, turned
into the JSON `POST /predict` answers. This module holds no HTTP (cnnlab.serve does), so a
worker process imports only what predicting needs: no FastAPI, no TensorFlow.

Example:
    workers = Processes("runs/cnn-20261123-012542", 2)   # two processes, each with the model
    answers = await workers.answers([ImageBytes("7.png", data)], top_k=3, preprocess="auto", seen=False)
"""

from __future__ import annotations

import base64
import io
import os
import pickle
import signal
import time
from pathlib import Path

import anyio

from cnnlab.checkpoint import LoadedModel, load_checkpoint
from cnnlab.errors import CnnlabError
from cnnlab.predict import predict_files
from cnnlab.preprocess import BlankImage, ImageBytes

QUIET_S = 0.1  # Processes answers in this process after this long with one request at a time


def answers_for(loaded: LoadedModel, images: list[ImageBytes], top_k: int, preprocess: str, seen: bool) -> list[dict]:
    """What `POST /predict` answers per image: `predict_files`, as `cnnlab predict` does; `Refused` if one is bad."""
    try:
        predictions = predict_files(loaded, images, top_k, preprocess)
    except BlankImage as error:  # the command line's advice (--preprocess none) means nothing here
        raise Refused(str(error.advising("draw or upload a digit, or send preprocess=none to feed the image "
                                          "as it is"))) from None
    except CnnlabError as error:
        raise Refused(str(error)) from None
    answers = []
    for prediction in predictions:
        answer = prediction.to_dict()
        del answer["explanation"]
        if seen:
            answer["seen"] = png_data_url(prediction.seen)
        answers.append(answer)
    return answers


class Refused(Exception):
    """A request the server cannot answer, with its HTTP status; only plain values, so it crosses processes.

    422: an upload the model cannot read. 503: the worker preparing it stopped before it
    answered (sending it again works).
    """

    def __init__(self, detail: str, status: int = 422):
        super().__init__(detail, status)
        self.detail, self.status = detail, status


class Workers:
    """Where `POST /predict` prepares and predicts images: `Threads` or `Processes`."""

    async def answers(self, images: list[ImageBytes], top_k: int, preprocess: str, seen: bool) -> list[dict]:
        raise NotImplementedError

    def state(self) -> dict:
        """What `GET /health` adds about the workers (nothing: this process answers)."""
        return {}

    def close(self) -> None:
        pass


class Threads(Workers):
    """In this process, in at most `threads` threads at once (default: one per core).

    Preparing an image is CPU work, partly under the GIL: more at once than there are cores
    only makes each slower. Requests wait their turn in order (anyio's limiter is first come,
    first served), so a burst does not leave some of them waiting for seconds.
    """

    def __init__(self, loaded: LoadedModel, threads: int | None = None):
        self.loaded, self.limiter = loaded, anyio.CapacityLimiter(threads or os.cpu_count() or 1)

    async def answers(self, images, top_k, preprocess, seen):
        return await anyio.to_thread.run_sync(answers_for, self.loaded, images, top_k, preprocess, seen,
                                              limiter=self.limiter)


class Processes(Workers):
    """In `count` worker processes, each with its own copy of the model (LiteRT's interpreter is not shared).

    One queue feeds them all, first come first served, so a request never waits behind a busy
    worker while another is idle (uvicorn's own `--workers` pins each connection to the process
    that accepted it); under load this process only speaks HTTP. Each worker has a pipe: the
    event loop writes a request to an idle worker's pipe and reads the answer when the pipe is readable,
    with no threads in between (concurrent.futures' process pool spent 0.6 ms of this
    process's CPU per request on its feeder and manager threads; this, 0.05 ms).

    The workers take ~0.3 s longer than this process to be ready: until all have loaded the
    model, requests are answered by `meanwhile` (this process's `Threads`), so the server is
    ready as soon as a one-process server would be. If they do not start, or all of them stop,
    `meanwhile` answers every request; a worker that stops costs only the request it was
    preparing (`Refused` with a 503). `meanwhile` also answers while requests come one at a
    time (none overlapped another for `QUIET_S`): the hop to a worker and back was a fifth of
    such a request's time.
    """

    meanwhile: Workers | None = None

    def __init__(self, target: str | Path, count: int, timeout: float = 120):
        import collections
        import multiprocessing
        import threading

        context = multiprocessing.get_context("spawn")  # not fork: this process may hold threads
        self.up = threading.Event()
        self._workers: list[_Worker] = []
        for _ in range(count):
            here, there = context.Pipe()
            process = context.Process(target=_work, args=(there, str(target)), name="cnnlab-serve-worker",
                                      daemon=True)
            process.start()
            there.close()
            self._workers.append(_Worker(process, here))
        self._idle: collections.deque[_Worker] = collections.deque()
        self._waiting: collections.deque[tuple[bytes, object]] = collections.deque()
        self._loop = None
        self._busy = 0  # requests being answered, here or by a worker
        self._overlapped = -QUIET_S  # when a request last came while another was being answered

        def watch() -> None:  # reads each worker's first message: ready, or why not
            problems = []
            for worker in self._workers:
                try:
                    state, detail = (pickle.loads(worker.pipe.recv_bytes()) if worker.pipe.poll(timeout)
                                     else ("late", f"no word within {timeout:.0f} s"))
                except (EOFError, OSError):
                    state, detail = "exited", f"exited with code {worker.process.exitcode}"
                if state != "ready":
                    problems.append(detail)
            if problems:
                _warn(f"warning: the {count} worker processes did not start ({'; '.join(problems)}); this process "
                      "answers every request.")
            else:
                self._idle.extend(self._workers)
                self.up.set()

        self.watcher = threading.Thread(target=watch, name="cnnlab-workers-up", daemon=True)
        self.watcher.start()

    async def answers(self, images, top_k, preprocess, seen):
        import asyncio

        if not self.up.is_set():
            if self.meanwhile is None:
                raise RuntimeError("the server's worker processes are not running")
            return await self.meanwhile.answers(images, top_k, preprocess, seen)
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._attach(loop)
        now = time.monotonic()
        if self._busy:
            self._overlapped = now
        elif self.meanwhile is not None and now - self._overlapped > QUIET_S:
            # One request at a time lately: this process answers, without the hop to a worker and back
            # (about 1 ms of a 6 ms request). Under load it would take a core from the workers, and the
            # GIL from the event loop: p99 at concurrency 8 went from 28 to 56 ms when it answered
            # whenever nothing else was in flight.
            self._busy += 1
            try:
                return await self.meanwhile.answers(images, top_k, preprocess, seen)
            finally:
                self._busy -= 1
        self._busy += 1
        try:
            return await self._sent(images, top_k, preprocess, seen, loop)
        finally:
            self._busy -= 1

    async def _sent(self, images, top_k, preprocess, seen, loop):
        future = loop.create_future()
        self._dispatch(pickle.dumps((images, top_k, preprocess, seen), protocol=pickle.HIGHEST_PROTOCOL), future)
        ok, value = await future
        if ok is None:  # every worker stopped while this waited: this process answers
            return await self.answers(images, top_k, preprocess, seen)
        if not ok:
            raise value
        return value

    def _attach(self, loop) -> None:
        """Read the workers' pipes in `loop` (the server's event loop, from its first request on)."""
        self._detach()
        self._loop = loop
        for worker in self._workers:
            if worker.alive:
                loop.add_reader(worker.pipe.fileno(), self._answered, worker)

    def _detach(self) -> None:
        if self._loop is not None and not self._loop.is_closed():
            for worker in self._workers:
                if worker.alive:
                    self._loop.remove_reader(worker.pipe.fileno())
        self._loop = None

    def _dispatch(self, request: bytes, future) -> None:
        """To an idle worker, or the queue; a worker found dead on the way is passed over."""
        while self._idle:
            worker = self._idle.popleft()
            worker.future = future
            try:
                # An idle worker is waiting to read: the write is a copy even when it exceeds the pipe's
                # buffer (a 10 MB upload, 64 files), so the event loop is not held up for long.
                worker.pipe.send_bytes(request)
                return
            except OSError:  # it died while idle: the request was not sent, another worker takes it
                worker.future = None
                self._lost(worker)
        if not self.up.is_set():
            future.set_result((None, None))  # no worker left: this process answers
        else:
            self._waiting.append((request, future))

    def _answered(self, worker: "_Worker") -> None:
        try:
            answer = pickle.loads(worker.pipe.recv_bytes())
        except (EOFError, OSError):
            return self._lost(worker)
        future, worker.future = worker.future, None
        if future is not None and not future.done():  # (done: the client went away)
            future.set_result(answer)
        self._next(worker)

    def _next(self, worker: "_Worker") -> None:
        self._idle.append(worker)
        while self._waiting:
            request, future = self._waiting.popleft()
            if not future.done():
                return self._dispatch(request, future)

    def _lost(self, worker: "_Worker") -> None:
        """A worker stopped (killed, crashed): its request fails; without workers, this process answers."""
        if not worker.alive:
            return
        worker.alive = False
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(worker.pipe.fileno())
        if worker in self._idle:
            self._idle.remove(worker)
        worker.process.join(1)
        if worker.future is not None and not worker.future.done():
            worker.future.set_result((False, Refused(
                f"a worker process stopped (exit code {worker.process.exitcode}) while preparing this request; "
                "send it again.", status=503)))
        left = sum(w.alive for w in self._workers)
        _warn(f"warning: a worker process stopped (exit code {worker.process.exitcode}); {left} left"
              + ("" if left else "; this process answers every request") + ".")
        if not left:
            self.up.clear()
            while self._waiting:
                _, future = self._waiting.popleft()
                if not future.done():
                    future.set_result((None, None))

    def state(self) -> dict:
        """The worker processes, and how many answer now (0 while they load the model: this process answers)."""
        ready = sum(worker.alive for worker in self._workers) if self.up.is_set() else 0
        return {"workers": len(self._workers), "workers_ready": ready}

    def close(self) -> None:
        self._detach()
        for worker in self._workers:
            worker.pipe.close()  # the worker reads the end of its pipe and exits
        for worker in self._workers:
            worker.process.join(10)
            if worker.process.is_alive():
                worker.process.terminate()
                worker.process.join()


class _Worker:
    def __init__(self, process, pipe):
        self.process, self.pipe, self.future, self.alive = process, pipe, None, True


def _warn(line: str) -> None:
    import sys

    print(line, file=sys.stderr, flush=True)


def _work(pipe, target: str) -> None:
    """A worker process: load the model, say so, then answer each request on `pipe` until it closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the server stops the workers
    keep_freed_memory()
    try:
        loaded = load_checkpoint(target, fast=True, threads=1)
    except BaseException as exc:  # noqa: BLE001 (the server says why, once)
        pipe.send_bytes(pickle.dumps(("failed", f"{type(exc).__name__}: {exc}")))
        return
    warm_up(loaded)
    pipe.send_bytes(pickle.dumps(("ready", None)))
    while True:
        try:
            images, top_k, preprocess, seen = pickle.loads(pipe.recv_bytes())
        except (EOFError, OSError):
            return
        try:
            answer = (True, answers_for(loaded, images, top_k, preprocess, seen))
        except Refused as refused:
            answer = (False, refused)
        except Exception as exc:  # noqa: BLE001 (the request gets a 500, the worker goes on)
            answer = (False, RuntimeError(f"{type(exc).__name__}: {exc}"))
        pipe.send_bytes(pickle.dumps(answer, protocol=pickle.HIGHEST_PROTOCOL))


def warm_up(loaded: LoadedModel) -> None:
    """Answer one made-up photo of a 1, so that the first real request does not pay for the first time.

    A fresh process's first photo took ~50 ms instead of 5 (modules imported on first use, the
    decoder's and the interpreter's first call): at concurrency 8 those first requests were the p99.
    """
    from PIL import Image, ImageDraw

    photo = Image.new("RGB", (120, 160), "white")
    ImageDraw.Draw(photo).line([(60, 20), (60, 140)], fill="black", width=12)
    buffer = io.BytesIO()
    photo.save(buffer, format="PNG")
    try:
        answers_for(loaded, [ImageBytes("warm-up.png", buffer.getvalue())], 1, "auto", False)
    except Exception:  # noqa: BLE001 (a model that cannot answer it says so on the first real request)
        pass


def keep_freed_memory() -> None:
    """Let this process's malloc keep the memory a request freed for the next one (glibc; elsewhere nothing).

    A photo's buffers are megabytes each (the decoded 806x837 RGBA photo is 2.7 MB). By default
    glibc hands freed megabytes back to the kernel (a fresh mmap for each, or a trimmed heap), so
    the next request touches fresh pages: about 1,900 page faults per photo, 5 ms on this 2-core
    machine, where Wuffs decodes it in 1.2. Buffers up to 32 MB now come from the heap, and up to
    64 MB of it stays with the process when free: the server's memory holds at its peak instead
    of going up and down with every request.
    """
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return
    try:
        mallopt = ctypes.CDLL(None).mallopt  # glibc (musl has none)
    except (OSError, AttributeError):
        return
    m_trim_threshold, m_mmap_threshold = -1, -3  # malloc.h
    mallopt(m_mmap_threshold, 32 << 20)  # glibc's largest
    mallopt(m_trim_threshold, 64 << 20)


def png_data_url(seen) -> str:
    """An image array (H, W[, C]) of grey levels 0..255 as a `data:image/png;base64,...` URL."""
    import numpy as np
    from PIL import Image

    pixels = np.clip(np.round(np.asarray(seen, dtype=np.float32)), 0, 255).astype(np.uint8)
    if pixels.ndim == 3 and pixels.shape[-1] == 1:
        pixels = pixels[..., 0]
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
