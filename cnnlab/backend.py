"""The ground floor under every stage: TensorFlow's start-up, its output, and the stop signals.

- `init_backend(device)` imports Keras on the requested device, hiding TensorFlow's chatter
  unless $CNNLAB_VERBOSE is 1 (`cnnlab --verbose`).
- `output_silenced` is the one place that points stdout/stderr's file descriptors elsewhere
  (what C++ code prints never passes through `sys.stdout`); `silenced` adds Python's own
  stdout and warnings, for converters that print pages of details.
- `environment(keras, device)` is what environment.json records about this process.
- `step(label)` shows a status line on stderr around a slow step (a spinner on a terminal).
- `StopRequest` turns Ctrl-C and SIGTERM into a stop at the next batch; `sigterm_interrupts`
  makes SIGTERM raise KeyboardInterrupt like Ctrl-C, for commands that are not inside a fit.

Nothing here imports TensorFlow at module level: `cnnlab --help` stays instant.

Example:
    keras, device_name = init_backend("cpu")
    with StopRequest() as stop:
        ...  # a callback calls stop.check() at every batch
"""

from __future__ import annotations

import gc
import io
import os
import platform
import re
import signal
import sys
import tempfile
import threading
import time
import warnings
from contextlib import contextmanager, nullcontext, redirect_stdout
from typing import Callable, Iterator

from cnnlab import rundir
from cnnlab.errors import CnnlabError

VERBOSE_ENV = "CNNLAB_VERBOSE"  # 1: TensorFlow's own start-up and log lines are shown (`cnnlab --verbose`)


def init_backend(device: str):
    """Import Keras on the requested device; returns (keras, a name for that device).

    Args:
        device: auto, cpu (TensorFlow sees no GPU, even where there is one) or gpu (a
            CnnlabError when TensorFlow sees none).

    TensorFlow's own chatter is hidden unless $CNNLAB_VERBOSE is 1 (`cnnlab --verbose`):
    TF_CPP_MIN_LOG_LEVEL=2 (unless set) silences its C++ INFO/WARNING logs after start-up,
    and the lines it prints while its shared libraries load are filtered out (see
    `_start_up_lines_hidden`); Keras' absl warnings are raised to errors.

    Example:
        keras, device_name = init_backend("auto")   # device_name: "CPU (2 cores)"
    """
    verbose = os.environ.get(VERBOSE_ENV) == "1"
    if not verbose:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = "-1"  # takes effect only before TensorFlow starts
    first = "tensorflow" not in sys.modules
    # Python's collector would walk the import's objects hundreds of times: ~0.5 s
    with _start_up_lines_hidden(not verbose and first), collector_paused() if first else nullcontext():
        try:
            import keras
        finally:
            if first:
                # TensorFlow's modules live as long as the process: kept out of every later
                # collection (and of the ones at exit, which took ~1 s after training).
                gc.freeze()
    if not verbose:
        import absl.logging

        absl.logging.set_verbosity(absl.logging.ERROR)

    if keras.backend.backend() != "tensorflow":
        return keras, f"{keras.backend.backend()} backend (default device)"
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if device == "gpu" and not gpus:
        raise CnnlabError(
            "--device gpu: TensorFlow sees no GPU on this machine (is the `gpu` extra with CUDA "
            "installed?); use --device cpu or --device auto."
        )
    if device == "cpu" and gpus:
        tf.config.set_visible_devices([], "GPU")
        gpus = []
    return keras, (f"GPU ({', '.join(gpu.name for gpu in gpus)})" if gpus else f"CPU ({os.cpu_count()} cores)")


@contextmanager
def collector_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off for a burst of short-lived objects, then as it was.

    For work that makes many objects, freed by their reference counts, in a process that has
    imported many long-lived ones: each collection it triggers walks all of those, holding the
    GIL (TensorFlow's import here; a folder's decoding in `cnnlab.data.cache`, where processes
    forked for it inherit the pause).
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def environment(keras, device_name: str) -> dict:
    """environment.json's versions and device: what a run's numbers were measured with."""
    import numpy as np

    version = rundir.installed_version
    return {
        "python": sys.version.split()[0], "platform": platform.platform(),
        "cnnlab": version("cnnlab"), "keras": keras.__version__, "backend": keras.backend.backend(),
        "tensorflow": version("tensorflow") or version("tensorflow-cpu"), "numpy": np.__version__,
        "device": device_name,
    }


@contextmanager
def step(label: str, quiet: bool = False, spinner: bool = True) -> Iterator[None]:
    """Say on stderr that a slow step is running: `with step("scoring 10,000 test images"): ...`.

    Args:
        label: what is being done, for people ("loading mnist").
        quiet: say nothing (`--quiet`).
        spinner: False for a step that draws its own progress bar (a spinner would fight it
            for the terminal): the plain line then.

    On a terminal a spinner, then the label with how long it took; in a log one line
    "label ..." when the step starts.
    """
    if quiet:
        yield
        return
    if not spinner or not sys.stderr.isatty():
        print(f"{label} ...", file=sys.stderr, flush=True)
        yield
        return
    from rich.console import Console
    from rich.text import Text

    console = Console(stderr=True, highlight=False)
    started = time.perf_counter()
    with console.status(Text(f"{label} ...")):
        yield
    console.print(Text(f"{label} ({time.perf_counter() - started:.1f} s)"))


# --- what C++ code prints ---------------------------------------------------------------

# A line of TensorFlow's C++ logging: "I0000 00:00:1795584511.108566    5723 port.cc:153] ..." (absl before
# its InitializeLog: month-day 0000, the seconds since 1970)
# or "2026-01-30 22:44:42.456316: I tensorflow/core/util/port.cc:153] ..." (older TSL format).
_TF_LOG_LINE = re.compile(
    r"^(?:[IWE]\d{4} \d\d:\d\d:\d+\.\d+\s+\d+ |\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: [IWE] )\S+:\d+\] "
)
_START_UP_NOISE = (
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "To enable the following instructions:",  # the second line of cpu_feature_guard's notice
)


@contextmanager
def output_silenced(fds: tuple[int, ...] = (1, 2), keep: Callable[[str], bool] | None = None) -> Iterator[None]:
    """Point the file descriptors `fds` (1: stdout, 2: stderr) elsewhere while the block runs.

    What C++ libraries print (TensorFlow, LiteRT, tf2onnx) is written to the descriptors, not
    through `sys.stdout`, so only this silences it.

    Args:
        fds: the descriptors to silence.
        keep: None drops everything. Otherwise the output is caught in a temporary file and,
            after the block, the lines `keep` accepts are written to stderr; every line when
            the block raised (they may say why).

    Example:
        with output_silenced((2,), keep=lambda line: "error" in line):
            import tensorflow
    """
    try:
        sys.stdout.flush()
        sys.stderr.flush()
        saved = [os.dup(fd) for fd in fds]
    except (OSError, ValueError):  # no usable stdout/stderr: nothing to hide
        yield
        return
    sink = tempfile.TemporaryFile() if keep is not None else open(os.devnull, "wb")  # closed below
    failed = True
    try:
        for fd in fds:
            os.dup2(sink.fileno(), fd)
        yield
        failed = False
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except ValueError:
                pass
        for fd, copy in zip(fds, saved):
            os.dup2(copy, fd)
            os.close(copy)
        if keep is not None:
            sink.seek(0)
            lines = sink.read().decode("utf-8", "replace").splitlines(keepends=True)
            kept = lines if failed else [line for line in lines if keep(line)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()
        sink.close()


@contextmanager
def silenced() -> Iterator[None]:
    """Silence stdout and stderr at the file-descriptor level (C++ logs included), Python's
    sys.stdout where it is not file descriptor 1 (a CLI runner's capture), and warnings."""
    with output_silenced((1, 2)), redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. tf2onnx's FutureWarning on np.object: Keras' code, not the user's
        yield


def _not_start_up_noise(line: str) -> bool:
    return not _TF_LOG_LINE.match(line) and not line.startswith(_START_UP_NOISE)


@contextmanager
def _start_up_lines_hidden(hide: bool) -> Iterator[None]:
    """Filter TensorFlow's C++ start-up lines out of stderr while it is imported.

    They come from static initialisers of TensorFlow's shared libraries, which log through
    their own copies of absl before anything has set a log level, so TF_CPP_MIN_LOG_LEVEL does
    not reach them: libtensorflow_framework.so.2 and _pywrap_profiler_plugin.so each print
    absl's "WARNING: All log messages before absl::InitializeLog() ..." and port.cc's "oneDNN
    custom operations are on ..." (oneDNN stays on: TF_ENABLE_ONEDNN_OPTS=0 would silence it
    by making training slower). So stderr is caught for the import; lines in TensorFlow's log
    format are dropped, anything else is passed on, and all of it when the import fails.
    """
    if not hide:
        yield
        return
    with output_silenced((2,), keep=_not_start_up_noise):
        yield


# --- Ctrl-C and SIGTERM --------------------------------------------------------------------


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


@contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """In the block, SIGTERM raises KeyboardInterrupt, as Ctrl-C does: a service manager's stop
    ends a command the way Ctrl-C would (interrupted runs are kept, a server finishes its requests).

    A SIGTERM that was ignored when the process started (SIG_IGN, as for `nohup`) stays
    ignored; outside the main thread (which alone receives signals) nothing changes.
    """
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) == signal.SIG_IGN:
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class StopRequest:
    """Ctrl-C (SIGINT) or SIGTERM while training: stop at the next batch, as an interruption.

    Python raises KeyboardInterrupt wherever the main thread is when the signal lands; inside
    one of TensorFlow's `__del__` methods it is printed as "Exception ignored" and lost, and
    training went on to the end (seen once in CI). Here the signal only sets a flag, which the
    recorder turns into KeyboardInterrupt at a batch boundary, in cnnlab's own code. A second
    signal raises at once, for a batch that never ends. A signal that was ignored when
    training started (SIG_IGN, as for a background job) stays ignored; on leaving, the
    handlers found on entering are put back. It may be entered again inside itself (tune's
    request around the study, then each trial's fit): only the outermost entry and exit touch
    the handlers, and a request stays requested.

    Example:
        with StopRequest() as stop:
            for batch in batches:
                stop.check()   # KeyboardInterrupt once Ctrl-C or SIGTERM arrived
    """

    def __init__(self):
        self.requested = False
        self._previous: dict = {}
        self._depth = 0

    def __enter__(self):
        self._depth += 1
        if self._depth == 1 and threading.current_thread() is threading.main_thread():  # only it gets signals
            for sig in (signal.SIGINT, signal.SIGTERM):
                if signal.getsignal(sig) == signal.SIG_IGN:
                    # Started with it ignored (`cnnlab train ... &` in a script, nohup): a Unix program
                    # keeps an ignored signal ignored. SIGTERM still stops such a run cleanly.
                    continue
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc_info):
        self._depth -= 1
        if self._depth:
            return
        for sig, handler in self._previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        self._previous.clear()

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def check(self) -> None:
        if self.requested:
            raise KeyboardInterrupt
