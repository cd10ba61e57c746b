"""The serving figures of `make bench` (issue 12): `cnnlab serve` against a hand-written Keras server.

Both servers run as their own processes on 127.0.0.1 and get the same requests over
loopback: a multipart upload of one digit photo each, a fixed number of them, first one
client at a time (concurrency 1), then 8 clients at once (each client a thread with its own
keep-alive connection). Measured per server: requests/s (requests / wall time of the
batch), p50 and p99 latency, failed requests (an error or a status other than 200), the
time from starting the process to the first answered `GET /health`, and the peak memory of
its processes (cnnlab's worker processes included).
The reference is bench/plain_keras_server.py: FastAPI calling `keras.saving.load_model(...)
.predict` per request, as a user writes it. Targets: >= 10x its requests/s, p99 <= 50 ms at
concurrency 8, ready <= 1.5 s, no failed request.

`measure(bench)` runs them (a section of bench/run.py); `rows(results)` makes the report rows.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from harness import ROOT, BenchError, Row, free_ports, only_run_dir

TITLE = "serving over loopback"  # its section in the report

CONCURRENCY = (1, 8)
REQUESTS = {1: 200, 8: 400}  # per server and concurrency; --quick: a fifth
WARMUP = 10  # untimed requests first, one at a time: Keras traces its predict function on the first call
WARMUP_S = 1.5  # ... repeated until this long after the start: the same for both servers
READY_TIMEOUT = 120
SIDES = ("cnnlab", "keras")


def measure(bench) -> None:
    """Each repetition starts both servers in turn and loads them alike."""
    import httpx  # the test extra's HTTP client: the bench runs from the project's venv

    run_dir = _run_dir(bench)
    image = bench.image()
    scale = 5 if bench.args.quick else 1
    results = bench.results["serve"] = {
        "run": str(run_dir), "image": str(image), "requests": {str(c): REQUESTS[c] // scale for c in CONCURRENCY},
        "sides": {side: [] for side in SIDES}}
    commands = {
        "cnnlab": lambda port: [*bench.cnnlab, "serve", str(run_dir), "--port", str(port)],
        "keras": lambda port: [sys.executable, "bench/plain_keras_server.py", str(run_dir / "best.keras"),
                               "--port", str(port)],
    }
    for side, command in commands.items():
        bench.note_command(f"serve ({side})", command(8000), run=run_dir)
    body = image.read_bytes()
    for rep in range(bench.args.repeat):
        for side in SIDES:
            port = free_ports(1)[0]
            log = bench.log(f"serve-{side}-{rep}")
            with _server(commands[side](port), log, bench.env) as server:
                ready = server.wait_ready(f"http://127.0.0.1:{port}/health", httpx)
                # Steady state is measured, on both sides alike (ready is its own figure): cnnlab's
                # worker processes load the model during its first second, beside the requests.
                while True:
                    _load(port, body, image.name, WARMUP, 1)
                    if time.perf_counter() - server.started >= WARMUP_S:
                        break
                record = {"ready_seconds": ready}
                for concurrency in CONCURRENCY:
                    record[f"c{concurrency}"] = _load(port, body, image.name,
                                                      REQUESTS[concurrency] // scale, concurrency)
                record["peak_mb"] = server.peak_mb()
            results["sides"][side].append(record)
            bench.say(f"[{rep + 1}/{bench.args.repeat}] {side}: ready {ready:.2f} s; " + "; ".join(
                f"c{c}: {record[f'c{c}']['requests_per_second']:.0f} req/s, p50 {record[f'c{c}']['p50_ms']:.1f} ms, "
                f"p99 {record[f'c{c}']['p99_ms']:.1f} ms, {record[f'c{c}']['failed']} failed" for c in CONCURRENCY)
                + f"; peak {record['peak_mb']:.0f} MB")


def _run_dir(bench) -> Path:
    """--run, the benchmark's own configs/cnn.yaml run, or one trained here on a subset."""
    if bench.args.run:
        run_dir = Path(bench.args.run).resolve()
    elif bench.runs_for_predict:
        run_dir = bench.runs_for_predict[0]
    else:
        runs = bench.work / "runs-serve"
        argv = [*bench.cnnlab, "train", "configs/cnn.yaml", "--runs-dir", str(runs), "-q",
                "--set", "data.train_samples=3000", "--set", "data.test_samples=500", "--set", "train.epochs=1"]
        bench.note_command("train a run to serve", argv, runs=runs)
        done = subprocess.run(argv, cwd=ROOT, env=bench.env, capture_output=True, text=True, timeout=1800)
        if done.returncode != 0:
            raise BenchError(f"training a run to serve failed: {done.stderr.strip()[-500:]}")
        run_dir = only_run_dir(runs)
    if not (run_dir / "best.keras").is_file():
        raise BenchError(f"{run_dir}: not a finished cnnlab run (no best.keras)")
    return run_dir


def multipart_body(body: bytes, name: str) -> tuple[bytes, str]:
    """One file field `file` holding `body`, as browsers and httpx send it: (the body, its Content-Type)."""
    boundary = "cnnlab-bench-" + "7" * 16
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n"
            "Content-Type: image/png\r\n\r\n").encode()
    return head + body + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def _load(port: int, body: bytes, name: str, count: int, concurrency: int) -> dict:
    """`count` uploads of `body` from `concurrency` clients at once: requests/s, latencies, failures.

    Each client is a thread with one keep-alive connection (the standard library's http.client)
    sending the same multipart request, encoded once, as load generators (wrk, hey) do: the
    client shares the 2 cores with the server, and httpx built each upload anew (1.4 ms of CPU
    a request, 15% of the machine at 200 requests/s, taken from the faster server).
    """
    payload, content_type = multipart_body(body, name)
    headers = {"Content-Type": content_type, "Content-Length": str(len(payload))}
    shares = [count // concurrency + (i < count % concurrency) for i in range(concurrency)]

    def client(share: int) -> tuple[list[float], int]:
        latencies, failed = [], 0
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        try:
            for _ in range(share):
                start = time.perf_counter()
                try:
                    connection.request("POST", "/predict", body=payload, headers=headers)
                    response = connection.getresponse()
                    ok = response.status == 200 and b'"class"' in response.read()
                except (OSError, http.client.HTTPException):
                    ok = False
                    connection.close()  # the next request opens a new connection
                latencies.append(time.perf_counter() - start)
                failed += not ok
        finally:
            connection.close()
        return latencies, failed

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        outcomes = list(pool.map(client, shares))
    wall = time.perf_counter() - started
    latencies = sorted(t for times, _ in outcomes for t in times)
    return {"requests": count, "concurrency": concurrency, "seconds": wall, "requests_per_second": count / wall,
            "p50_ms": 1000 * _percentile(latencies, 50), "p99_ms": 1000 * _percentile(latencies, 99),
            "failed": sum(failed for _, failed in outcomes)}


def _percentile(sorted_values: list[float], q: float) -> float:
    """The q-th percentile, nearest rank (p99 of 200 requests is the second slowest)."""
    rank = max(1, -(-len(sorted_values) * q // 100))
    return sorted_values[int(rank) - 1]


class _Server:
    def __init__(self, argv: list[str], log: Path, env: dict):
        self.log = log
        with open(log, "wb") as out:
            self.started = time.perf_counter()
            self.process = subprocess.Popen(argv, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                            stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self, url: str, httpx) -> float:
        """Seconds from the start of the process to its first answered request."""
        while True:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(url, timeout=1).status_code == 200:
                    return time.perf_counter() - self.started
            if self.process.poll() is not None:
                raise BenchError(f"the server exited with code {self.process.returncode}: {self.log}")
            if time.perf_counter() - self.started > READY_TIMEOUT:
                raise BenchError(f"the server did not answer within {READY_TIMEOUT} s: {self.log}")
            time.sleep(0.01)

    def peak_mb(self) -> float:
        """The peak resident memory (VmHWM) of the server and its child processes (workers), summed, MB.

        The sum of each process's own peak: an upper bound of their peak together, where they
        peaked at different times.
        """
        total, found = 0, False
        for pid in _process_tree(self.process.pid):
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        total, found = total + int(line.split()[1]), True
        return total * 1024 / 1e6 if found else float("nan")

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


def _process_tree(pid: int) -> list[int]:
    """`pid` and its descendants (Linux /proc: each task's children)."""
    tree, index = [pid], 0
    while index < len(tree):
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{tree[index]}/task").iterdir():
                tree += [int(child) for child in (task / "children").read_text().split()]
        index += 1
    return tree


@contextlib.contextmanager
def _server(argv: list[str], log: Path, env: dict):
    server = _Server(argv, log, env)
    try:
        yield server
    finally:
        server.stop()



def rows(results: dict) -> list[Row]:
    """The report rows of the serving figures (none if they were not measured)."""
    serve = results.get("serve")
    if not serve or not all(serve["sides"][side] for side in SIDES):
        return []
    cnnlab, keras = serve["sides"]["cnnlab"], serve["sides"]["keras"]

    def check(values, ok):
        return None if not values else bool(ok(statistics.median(values)))

    out: list[Row] = []
    for c in CONCURRENCY:
        n = serve["requests"][str(c)]
        ours = [r[f"c{c}"]["requests_per_second"] for r in cnnlab]
        theirs = [r[f"c{c}"]["requests_per_second"] for r in keras]
        out.append(Row(f"`cnnlab serve`, {n} uploads at concurrency {c}", ours, "{:.0f} requests/s"))
        out.append(Row(f"hand-written Keras server, {n} uploads at concurrency {c}", theirs, "{:.1f} requests/s"))
        ratio = [a / b for a, b in zip(ours, theirs)]
        out.append(Row(f"**requests/s, cnnlab / hand-written, concurrency {c}**", ratio, "{:.1f}x", ">= 10x",
                       check(ratio, lambda v: v >= 10)))
        for side, records in (("`cnnlab serve`", cnnlab), ("hand-written Keras server", keras)):
            p99 = [r[f"c{c}"]["p99_ms"] for r in records]
            out.append(Row(f"{side} p50 latency, concurrency {c}", [r[f"c{c}"]["p50_ms"] for r in records],
                           "{:.1f} ms"))
            if side == "`cnnlab serve`" and c == 8:
                out.append(Row(f"**{side} p99 latency, concurrency 8**", p99, "{:.1f} ms", "<= 50 ms",
                               check(p99, lambda v: v <= 50)))
            else:
                out.append(Row(f"{side} p99 latency, concurrency {c}", p99, "{:.1f} ms"))
    ready = [r["ready_seconds"] for r in cnnlab]
    out.append(Row("**`cnnlab serve` ready (start to first answer)**", ready, "{:.2f} s", "<= 1.5 s",
                   check(ready, lambda v: v <= 1.5)))
    out.append(Row("hand-written Keras server ready", [r["ready_seconds"] for r in keras], "{:.2f} s"))
    failed = [float(sum(r[f"c{c}"]["failed"] for c in CONCURRENCY)) for r in cnnlab]
    out.append(Row("**`cnnlab serve` failed requests**", failed, "{:.0f}", "0", check(failed, lambda v: v == 0)
                   and max(failed) == 0))
    out.append(Row("hand-written Keras server failed requests",
                   [float(sum(r[f"c{c}"]["failed"] for c in CONCURRENCY)) for r in keras], "{:.0f}"))
    out.append(Row("`cnnlab serve` peak memory, all its processes", [r["peak_mb"] for r in cnnlab], "{:.0f} MB"))
    out.append(Row("hand-written Keras server peak memory, all its processes", [r["peak_mb"] for r in keras], "{:.0f} MB"))
    return out
