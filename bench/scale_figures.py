"""The multi-worker figure of `make bench` (issue 14): two workers on loopback against one process.

`configs/dnn.yaml` on the same training images, epochs and global batch, once as one process
(`train.distribute: none`) and once as a two-worker job (`--workers 127.0.0.1:P,127.0.0.1:Q`,
MultiWorkerMirroredStrategy): samples/s of the job (the chief's median epoch; every step trains
the global batch over both workers), wall time, test accuracy, and the ratio of the samples/s.
On one machine the two workers share its cores, so the ratio says what the collectives (a gRPC
all-reduce of the weights every step) and the per-step host work cost, not a speed-up.

`measure(bench)` runs it (a section of bench/run.py); `rows(results)` makes the report rows.
"""

from __future__ import annotations

import subprocess

from harness import ROOT, BenchError, Row, free_ports, only_run_dir, read_json, run_measured

TITLE = "two workers against one process"  # its section in the report

TRAIN_TIMEOUT = 1800



def measure(bench) -> None:
    """One process and two workers, in turn within each repetition; a failure is reported."""
    bench.say("-- two workers on loopback against one process")
    try:
        _scale(bench, bench.results.setdefault("scale", {}))
    except BenchError as exc:
        bench.failures["scale: two workers"] = str(exc)
        bench.say(f"FAILED: {exc}")


def _scale(bench, results: dict) -> None:
    samples, epochs = (4000, 2) if bench.args.quick else (20_000, 3)
    base = ["train", "configs/dnn.yaml", "--set", f"data.train_samples={samples}", "--set", f"train.epochs={epochs}",
            "--set", "train.batch_size=32", "--quiet"]
    results.update(samples=samples, epochs=epochs, global_batch=32, one=[], two=[])
    for rep in range(bench.args.repeat):
        for side in ("one", "two"):
            runs = bench.work / f"runs-scale-{side}-{rep}"
            argv = [*bench.cnnlab, *base, "--runs-dir", str(runs)]
            other = None
            if side == "two":
                workers = ",".join(f"127.0.0.1:{port}" for port in free_ports(2))
                argv += ["--workers", workers, "--worker-index", "0"]
                other_argv = [*bench.cnnlab, *base, "--runs-dir", str(bench.work / f"runs-scale-other-{rep}"),
                              "--workers", workers, "--worker-index", "1"]
                with bench.log(f"scale-worker1-{rep}").open("w") as log:  # the child keeps its own copy
                    other = subprocess.Popen(other_argv, cwd=ROOT, env=bench.env, stdout=log, stderr=subprocess.STDOUT)
            bench.note_command(f"train dnn.yaml, {'two workers (the chief)' if other else 'one process'}", argv,
                               runs=runs)
            try:
                proc = run_measured(argv, bench.log(f"scale-{side}-{rep}"), bench.env, TRAIN_TIMEOUT)
            finally:
                if other is not None:
                    try:
                        other.wait(timeout=120)
                    except subprocess.TimeoutExpired:
                        other.kill()
                        raise BenchError("worker 1 did not end within 120 s of the chief") from None
            if other is not None and other.returncode != 0:
                raise BenchError(f"worker 1 exited with code {other.returncode} (log: {bench.log(f'scale-worker1-{rep}')})")
            metrics = read_json(only_run_dir(runs) / "metrics.json")
            record = {"samples_per_second": metrics["train_samples_per_second"], "wall_seconds": proc.seconds,
                      "test_accuracy": metrics["test_accuracy"], "peak_mb": proc.peak_mb}
            results[side].append(record)
            bench.say(f"[{rep + 1}/{bench.args.repeat}] {side} {'process' if side == 'one' else 'workers'}: "
                      f"{record['samples_per_second']:.0f} samples/s, command {proc.seconds:.1f} s, "
                      f"test accuracy {record['test_accuracy']:.4f}")


def rows(results: dict) -> list[Row]:
    """The report rows of the multi-worker figure (none if it was not measured)."""
    scale = results.get("scale") or {}
    if not scale.get("one") or not scale.get("two"):
        return []
    what = f"dnn.yaml, {scale['samples']:,} images, {scale['epochs']} epochs, global batch {scale['global_batch']}"
    out = []
    for side, name in (("one", "one process"), ("two", "two workers on 127.0.0.1")):
        out.append(Row(f"training throughput, {what}, {name}", [r["samples_per_second"] for r in scale[side]],
                       "{:.0f} samples/s"))
        out.append(Row(f"wall time of the job, {name}", [r["wall_seconds"] for r in scale[side]], "{:.1f} s"))
        out.append(Row(f"test accuracy, {name}", [r["test_accuracy"] for r in scale[side]], "{:.4f}"))
    ratio = [t["samples_per_second"] / o["samples_per_second"] for o, t in zip(scale["one"], scale["two"])]
    out.append(Row("**ratio two workers / one process, samples/s** (one 2-core machine: the cost of the "
                   "collectives, not a speed-up)", ratio, "{:.2f}"))
    gap = [abs(t["test_accuracy"] - o["test_accuracy"]) * 100 for o, t in zip(scale["one"], scale["two"])]
    out.append(Row("**test accuracy gap, two workers vs one process**", gap, "{:.2f} points", "<= 0.5 points",
                   bool(sorted(gap)[len(gap) // 2] <= 0.5)))
    return out
