"""Shared fixtures: the real data directory, a CLI runner, small configs written to tmp."""

from __future__ import annotations

import os
import signal
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest
import yaml
from typer.testing import CliRunner

from cnnlab.data import DATASETS

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"


# the IDX files cnnlab reads, as its data module lists them (mnist/..., fashion-mnist/...)
DATA_FILES = [f"{info.folder}/{name}" for info in DATASETS.values() if info.folder for name, _ in info.md5]


def _data_dir() -> Path | None:
    """The real data folder; None only when it is absent (the one case real-data tests skip).

    A folder that is there but lacks a file is a broken set-up, not a reason to skip: the
    run stops, so CI cannot pass with its real-data tests silently skipped.
    """
    configured = os.environ.get("CNNLAB_DATA_DIR")
    path = Path(configured) if configured else SHARED / "datasets"
    if not path.is_dir():
        return None
    missing = [name for name in DATA_FILES if not (path / name).is_file()]
    if missing:
        raise pytest.UsageError(f"{path}: the data folder lacks {', '.join(missing)}; real-data tests cannot run.")
    return path


DATA_DIR = _data_dir()
needs_data = pytest.mark.skipif(DATA_DIR is None, reason="no data folder (set CNNLAB_DATA_DIR)")


# Tests on ../shared's real material skip only when ../shared itself is absent; a missing
# file inside it then fails the test that reads it.
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason="../shared not found beside the repository")


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path_factory):
    """Tests never download (a missing file must be an error) and never write to ~/.cache."""
    monkeypatch.setenv("CNNLAB_OFFLINE", "1")
    monkeypatch.setenv("CNNLAB_CACHE_DIR", str(tmp_path_factory.mktemp("image-cache")))
    if DATA_DIR is not None:
        monkeypatch.setenv("CNNLAB_DATA_DIR", str(DATA_DIR))


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def write_config(tmp_path):
    """Write a config dict as YAML in tmp_path and return its path."""

    def write(data: dict, name: str = "config.yaml") -> Path:
        path = tmp_path / name
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path

    return write


def small_dnn(**train) -> dict:
    """A small MNIST DNN config that trains in seconds on a subset."""
    return {
        "name": "small",
        "seed": 1,
        "data": {"dataset": "mnist", "train_samples": 10000, "test_samples": 2000,
                 "validation": {"method": "stratified", "size": 0.2}},
        "model": {"layers": [
            {"type": "flatten"},
            {"type": "dense", "units": 64, "activation": "relu"},
            {"type": "dense", "units": 10, "activation": "softmax"},
        ]},
        "train": {"epochs": 3, "batch_size": 32, **train},
    }


# --- a served model (tests/test_serve.py, tests/test_serve_page.py) --------------------------

def tiny_cnn() -> dict:
    """A small MNIST CNN that reads real handwriting well enough after a few seconds of training."""
    return {
        "name": "tiny_cnn", "seed": 3,
        "data": {"dataset": "mnist", "train_samples": 12000, "test_samples": 1000,
                 "validation": {"method": "stratified", "size": 0.1}},
        "model": {"layers": [
            {"type": "conv2d", "filters": 16, "kernel_size": 5, "padding": "same", "activation": "relu"},
            {"type": "max_pooling2d", "pool_size": 2},
            {"type": "conv2d", "filters": 32, "kernel_size": 3, "padding": "same", "activation": "relu"},
            {"type": "max_pooling2d", "pool_size": 2},
            {"type": "flatten"},
            {"type": "dense", "units": 64, "activation": "relu"},
            {"type": "dense", "units": 10, "activation": "softmax"},
        ]},
        "train": {"epochs": 2, "batch_size": 64},
    }


@pytest.fixture(scope="session")
def served_run(tmp_path_factory) -> Path:
    """A run directory of `tiny_cnn`, trained once per test process (with its model.tflite)."""
    if DATA_DIR is None:
        pytest.skip("real MNIST files not found")
    from cnnlab.config import validate_config
    from cnnlab.train import train

    data = tiny_cnn()
    data["data"].update(dir=str(DATA_DIR), download=False)  # session scope: no per-test environment
    result = train(validate_config(data, "tiny_cnn"), "tiny_cnn", runs_dir=tmp_path_factory.mktemp("served"),
                   echo=lambda _: None, quiet=True)
    return result.run_dir


def free_ports(count: int = 1) -> list[int]:
    """`count` distinct free TCP ports on 127.0.0.1 (all held until each is known, so no two are the same)."""
    import socket

    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def free_port() -> int:
    return free_ports(1)[0]


def healthy_after(process, url: str, timeout: float, interval: float) -> float | None:
    """Seconds until the server `process` started answers `GET url/health` with 200; None if it
    exits first or `timeout` passes."""
    import time

    import httpx

    start = time.monotonic()
    while True:
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return time.monotonic() - start
        except httpx.TransportError:
            pass
        if process.poll() is not None or time.monotonic() - start > timeout:
            return None
        time.sleep(interval)


class Server:
    """A `cnnlab serve` process on 127.0.0.1: its URL, its process, its log (stdout and stderr)."""

    def __init__(self, run: Path, log: Path, *options: str):
        import subprocess
        import sys

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log
        env = {**os.environ, "CNNLAB_OFFLINE": "1"}
        with open(log, "wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "cnnlab", "serve", str(run), "--port", str(self.port), *options],
                stdout=out, stderr=subprocess.STDOUT, env=env)
        self.ready_after = healthy_after(self.process, self.url, timeout=60, interval=0.05)
        if self.ready_after is None:
            self.stop()
            raise RuntimeError(f"cnnlab serve did not start: {log.read_text()}")

    def log(self) -> str:
        return self.log_path.read_text()

    def stop(self, timeout: float = 30) -> int:
        import signal

        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)


@pytest.fixture(scope="session")
def server(served_run, tmp_path_factory):
    """`cnnlab serve` on the session's run, uploads limited to 1 MiB; stopped at the end of the session."""
    running = Server(served_run, tmp_path_factory.mktemp("server") / "serve.log", "--max-upload-mb", "1")
    yield running
    running.stop()


# --- a throw-away PostgreSQL cluster (tests/test_tune_postgres.py, tests/test_track.py) ------------

PG_BIN = Path("/usr/lib/postgresql/15/bin")
PG_PASSWORD = "tune-secret-7"


def _as_postgres(*argv: str, **kwargs):
    import subprocess

    command = [*argv] if os.geteuid() != 0 else ["runuser", "-u", "postgres", "--", *argv]
    return subprocess.run(command, capture_output=True, text=True, check=True, **kwargs)


@contextmanager
def postgres_cluster() -> Iterator[str]:
    """A PostgreSQL 15 cluster of its own, listening on 127.0.0.1 and a free port: its URL, then it is gone.

    Debian's PostgreSQL (`make test` installs the package when it is missing): initdb and pg_ctl run
    as the `postgres` user (the tests run as root, and PostgreSQL refuses to run as root) in a
    temporary folder that user owns, with a password; stopped and removed afterwards.
    """
    import pwd
    import shutil
    import tempfile

    if not (PG_BIN / "initdb").is_file():
        pytest.fail(f"{PG_BIN}/initdb not found: install Debian's postgresql package (make test-system)")
    folder = Path(tempfile.mkdtemp(prefix="cnnlab-pg-"))  # not under pytest's root-only tmp: postgres must enter
    try:
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            os.chown(folder, user.pw_uid, user.pw_gid)
        (folder / "pw").write_text(PG_PASSWORD + "\n")
        if os.geteuid() == 0:
            os.chown(folder / "pw", user.pw_uid, user.pw_gid)
        data, port = folder / "data", free_port()
        _as_postgres(str(PG_BIN / "initdb"), "-D", str(data), "-U", "cnnlab", f"--pwfile={folder / 'pw'}",
                     "--auth-host=scram-sha-256", "--auth-local=trust", "--no-sync")
        _as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(data), "-l", str(folder / "log"), "-w", "-t", "60",
                     "-o", f"-c listen_addresses=127.0.0.1 -p {port} -k {folder} -c fsync=off", "start")
        try:
            yield f"postgresql+psycopg2://cnnlab:{PG_PASSWORD}@127.0.0.1:{port}/postgres"
        finally:
            _as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def postgres_url():
    """The URL of a throw-away PostgreSQL cluster (`postgres_cluster`) for one test."""
    with postgres_cluster() as url:
        yield url


@pytest.fixture
def ctrl_c_works():
    """SIGINT as in an interactive Python (the suite itself may have been started with it ignored)."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


class SignalInDel:
    """An object whose __del__ receives SIGINT, as TensorFlow's do when Ctrl-C lands during garbage collection."""

    def __del__(self):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)  # the handler runs here, inside __del__


# --- Debian's chromium, driven by Selenium (tests/test_serve_page.py, tests/test_report.py) --------

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


def start_chromium(profile: Path, window: str = "1000,760", *flags: str):
    """A headless chromium with its own profile folder, that reaches nothing on its own (no sync, no updates).

    `flags`: more of chromium's command-line switches.
    """
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):  # make test installs them (scripts/need-debian-packages)
        pytest.fail(f"{CHROMIUM} and {CHROMEDRIVER} are needed: run `make test-system` (Debian's chromium, "
                    "chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--window-size={window}", f"--user-data-dir={profile}", *flags):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(30)
    return driver
