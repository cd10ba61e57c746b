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
import signal
from pathlib import Path

import anyio

from cnnlab.checkpoint import LoadedModel, load_checkpoint
from cnnlab.errors import CnnlabError
from cnnlab.predict import predict_files
from cnnlab.preprocess import BlankImage, ImageBytes


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
    """An upload the model cannot read (HTTP 422); only its message, so it crosses process boundaries."""

    def __init__(self, detail: str):
        super().__init__(detail)
        self.detail = detail


class Workers:
    """Where `POST /predict` prepares and predicts images: `Threads` or `Processes`."""

    async def answers(self, images: list[ImageBytes], top_k: int, preprocess: str, seen: bool) -> list[dict]:
        raise NotImplementedError

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
    that accepted it); this process only speaks HTTP. The workers start at once and take
    ~0.3 s longer than this process to be ready: until all have loaded the model, requests are
    answered by `meanwhile` (this process's `Threads`), so the server is ready as soon as a
    one-process server would be. If they never come up, `meanwhile` goes on answering.
    """

    meanwhile: Workers | None = None

    def __init__(self, target: str | Path, count: int, timeout: float = 120):
        import multiprocessing
        import threading
        from concurrent.futures import ProcessPoolExecutor

        context = multiprocessing.get_context("spawn")  # not fork: this process may hold threads
        self.up = threading.Event()
        loaded = context.Barrier(count + 1)
        self.pool = ProcessPoolExecutor(count, mp_context=context, initializer=_load_in_worker,
                                        initargs=(str(target), loaded, timeout))
        started = [self.pool.submit(int) for _ in range(count)]  # the pool starts a process per waiting task

        def watch() -> None:
            try:
                loaded.wait(timeout)
                for future in started:
                    future.result(timeout)
            except Exception as exc:  # noqa: BLE001 (any failure: this process goes on answering)
                _warn(f"warning: the {count} worker processes did not start ({type(exc).__name__}: "
                                f"{exc}); this process answers every request.")
            else:
                self.up.set()

        self.watcher = threading.Thread(target=watch, name="cnnlab-workers-up", daemon=True)
        self.watcher.start()

    async def answers(self, images, top_k, preprocess, seen):
        import asyncio

        if not self.up.is_set() and self.meanwhile is not None:
            return await self.meanwhile.answers(images, top_k, preprocess, seen)
        return await asyncio.wrap_future(self.pool.submit(_answers_here, images, top_k, preprocess, seen))

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


def _warn(line: str) -> None:
    import sys

    print(line, file=sys.stderr, flush=True)


_WORKER_MODEL: LoadedModel | None = None  # in a `Processes` worker: its model


def _load_in_worker(target: str, loaded, timeout: float) -> None:
    global _WORKER_MODEL
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the server stops the workers
    try:
        _WORKER_MODEL = load_checkpoint(target, fast=True)
    except BaseException:
        loaded.abort()  # the server stops waiting for the workers at once
        raise
    loaded.wait(timeout)


def _answers_here(images, top_k, preprocess, seen):
    return answers_for(_WORKER_MODEL, images, top_k, preprocess, seen)


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
