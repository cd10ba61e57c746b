"""What every bench figure is measured with: a fresh process timed from outside, and a report row.

`run_measured` starts a command through a small launcher that reads the command's wall time
and peak resident memory (ru_maxrss from os.wait4); `Row` is one line of the report (median,
min, max, target, verdict). bench/run.py and each figure's own module (bench/data_figures.py,
...) use both.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
SHARED = ROOT.parent / "shared"


class BenchError(Exception):
    """A measured command failed, timed out, or left no result to read."""


@dataclass
class Process:
    """One finished command: wall seconds, peak memory, output, when marked lines appeared."""

    seconds: float
    peak_mb: float  # ru_maxrss in MB (10^6 bytes)
    output: str
    marks: dict[str, float] = field(default_factory=dict)  # name -> seconds from start


# Runs the measured command as its child and reports that child's wall time and peak
# memory. It exists because a process forked from the runner starts with the runner's own
# resident set counted in its ru_maxrss (the kernel copies the page tables, and the high-water
# mark survives exec); forked from this small interpreter instead, only ~10 MB are inherited,
# less than any measured command uses. Its own start-up is left out of the wall time.
LAUNCHER = """
import os, sys, time
started = time.perf_counter()
pid = os.fork()
if pid == 0:
    try:
        os.execvp(sys.argv[2], sys.argv[2:])
    except OSError as exc:
        print(f"cannot run {sys.argv[2]}: {exc}", file=sys.stderr, flush=True)
    os._exit(127)
_, status, usage = os.wait4(pid, 0)
seconds = time.perf_counter() - started
with open(sys.argv[1], "w") as out:
    out.write(f"{seconds!r} {usage.ru_maxrss}")
code = os.waitstatus_to_exitcode(status)
sys.exit(code if code >= 0 else 128 - code)
"""


def run_measured(argv: list[str], log: Path, env: dict, timeout: float, marks: dict[str, str] | None = None) -> Process:
    """Run `argv` from the repository root, timing it and reading its peak memory.

    `marks` maps a name to a regular expression; the time of the first output line that
    matches it is recorded. Output (stdout and stderr) goes to `log` as well. A non-zero
    exit or the timeout raises BenchError with the last lines of output.
    """
    patterns = {name: re.compile(pattern) for name, pattern in (marks or {}).items()}
    found: dict[str, float] = {}
    lines: list[str] = []
    command = shlex.join(str(a) for a in argv)
    usage_file = log.with_suffix(".usage")
    usage_file.unlink(missing_ok=True)
    started = time.perf_counter()
    try:
        proc = subprocess.Popen([sys.executable, "-S", "-c", LAUNCHER, str(usage_file), *map(str, argv)],
                                cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, errors="replace", start_new_session=True)
    except OSError as exc:
        raise BenchError(f"`{command}` could not start: {exc}") from None

    def read() -> None:
        for line in proc.stdout:
            now = time.perf_counter() - started
            lines.append(line)
            for name, pattern in patterns.items():
                if name not in found and pattern.search(line):
                    found[name] = now

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        proc.wait(timeout=timeout)
    except BaseException:  # the timeout, or Ctrl-C: the whole process group goes, launcher and command
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        reader.join(timeout=10)
        log.write_text(f"$ {command}\n{''.join(lines)}")
        if sys.exc_info()[0] is subprocess.TimeoutExpired:
            raise BenchError(
                f"`{command}` did not finish within {timeout:.0f} s and was killed; output: {log}") from None
        raise
    reader.join(timeout=10)
    output = "".join(lines)
    log.write_text(f"$ {command}\n{output}")
    if proc.returncode != 0:
        tail = "".join(lines[-15:]).rstrip()
        raise BenchError(f"`{command}` exited with code {proc.returncode}; last lines:\n{tail}\n(full output: {log})")
    try:
        seconds, max_rss_kib = usage_file.read_text().split()
    except (OSError, ValueError):
        raise BenchError(f"`{command}`: the launcher left no timing in {usage_file}") from None
    return Process(float(seconds), int(max_rss_kib) * 1024 / 1e6, output, found)


def result_line(proc: Process, command: str) -> dict:
    """The `RESULT {json}` line a bench script prints last."""
    for line in reversed(proc.output.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise BenchError(f"`{command}` printed no RESULT line")


def only_run_dir(runs_dir: Path) -> Path:
    found = [p for p in runs_dir.iterdir() if p.is_dir()] if runs_dir.exists() else []
    if len(found) != 1:
        raise BenchError(f"{runs_dir}: expected one run directory after training, found {len(found)}")
    return found[0]


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise BenchError(f"{path}: cannot read the run's result ({exc})") from None


@dataclass
class Row:
    figure: str
    values: list[float]
    fmt: str  # format of one value, e.g. "{:.1f} samples/s"
    target: str = ""
    met: bool | None = None  # None: no target

    def cells(self, judge: bool = True) -> list[str]:
        if not self.values:
            return [self.figure, "n/a", "", "", self.target, ""]
        values = [self.fmt.format(v) for v in (statistics.median(self.values), min(self.values), max(self.values))]
        verdict = "" if self.met is None else ("met" if self.met else "**missed**") if judge else "(quick run)"
        return [self.figure, *values, self.target, verdict]


def free_ports(count: int = 1) -> list[int]:
    """`count` distinct free TCP ports on 127.0.0.1 (all held until each is known, so no two are the same)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def measure_figures(bench, group: str, label: str, figures) -> None:
    """Measure each `(name, figure)` of a group into bench.results[group]; a BenchError fails only that figure."""
    results = bench.results.setdefault(group, {})
    for name, figure in figures:
        bench.say(f"-- {name}")
        try:
            figure(bench, results)
        except BenchError as exc:
            bench.failures[f"{label}: {name}"] = str(exc)
            bench.say(f"FAILED: {exc}")


def median_meets(values: list[float], ok) -> bool | None:
    """Whether the median of `values` meets the target `ok` (None: nothing measured)."""
    return None if not values else bool(ok(statistics.median(values)))


def table(rows: list[Row], judge: bool = True) -> str:
    lines = ["| figure | median | min | max | target | |", "|---|---:|---:|---:|---|---|"]
    lines += ["| " + " | ".join(row.cells(judge)) + " |" for row in rows]
    return "\n".join(lines)
