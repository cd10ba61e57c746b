"""The tuning figures of `make bench` (issue 13): what a trial costs beyond its own training.

`cnnlab tune` runs its trials in one process (TensorFlow imported once, Keras' state cleared
between trials, the data read once). A trial's overhead is its wall time (from Optuna's ask to
its tell, as trials.csv records it) minus its fit time (`train_seconds` of its run: Keras' fit
with cnnlab's per-epoch checkpoint writes): configuring the trial, building and compiling the
model, scoring the best checkpoint on the test split, the plots and the study's bookkeeping.
Measured on a study of a small DNN on an MNIST subset, each repetition a fresh study; the
first trial of a process also traces Keras' functions for the first time, so it is left out.
Target: well under a second (<= 0.5 s on the median).

`measure(bench)` runs it (a section of bench/run.py); `rows(results)` makes the report rows.
"""

from __future__ import annotations

import csv
import statistics

import yaml
from harness import BenchError, Row, run_measured

TITLE = "tuning: per-trial overhead"  # its section in the report

TRIALS = 8
TUNE_TIMEOUT = 1800


def study_config(samples: int) -> dict:
    return {
        "name": "overhead", "seed": 1,
        "data": {"dataset": "mnist", "train_samples": samples, "test_samples": 1000},
        "model": {"layers": [{"type": "flatten"}, {"type": "dense", "units": 64, "activation": "relu"},
                             {"type": "dense", "units": 10, "activation": "softmax"}]},
        "train": {"epochs": 2, "batch_size": 64},
        "tune": {"pruner": {"name": "none"}, "space": {
            "model.layers[1].units": {"int": [32, 128], "step": 32},
            "train.optimizer.learning_rate": {"float": [1.0e-4, 1.0e-2], "log": True}}},
    }


def measure(bench) -> None:
    results = bench.results.setdefault("tune", {})
    bench.say("-- per-trial overhead")
    try:
        _overhead(bench, results)
    except BenchError as exc:
        bench.failures["tune: per-trial overhead"] = str(exc)
        bench.say(f"FAILED: {exc}")


def _overhead(bench, results: dict) -> None:
    trials = 3 if bench.args.quick else TRIALS
    samples = 1000 if bench.args.quick else 4000
    config = bench.work / "tune-overhead.yaml"
    config.write_text(yaml.safe_dump(study_config(samples), sort_keys=False))
    records = results["overhead"] = {"trials": trials, "samples": samples, "runs": []}
    for rep in range(bench.args.repeat):
        runs = bench.work / f"runs-tune-{rep}"
        argv = [*bench.cnnlab, "tune", str(config), "--trials", str(trials), "--runs-dir", str(runs)]
        bench.note_command("a study of small trials", argv, config=config, runs=runs)
        proc = run_measured(argv, bench.log(f"tune-overhead-{rep}"), bench.env, TUNE_TIMEOUT)
        with open(runs / "overhead" / "trials.csv", newline="") as handle:
            rows = [row for row in csv.DictReader(handle) if row["state"] == "complete"]
        if len(rows) != trials:
            raise BenchError(f"{runs}: {len(rows)} completed trials, not {trials}")
        overheads = [float(row["wall_seconds"]) - float(row["fit_seconds"]) for row in rows[1:]]
        record = {"overhead_seconds": statistics.median(overheads), "first_trial_overhead_seconds":
                  float(rows[0]["wall_seconds"]) - float(rows[0]["fit_seconds"]),
                  "fit_seconds": statistics.median(float(row["fit_seconds"]) for row in rows[1:]),
                  "wall_seconds": proc.seconds, "peak_mb": proc.peak_mb}
        records["runs"].append(record)
        bench.say(f"[{rep + 1}/{bench.args.repeat}] {trials} trials: overhead {record['overhead_seconds']:.2f} s "
                  f"a trial (first {record['first_trial_overhead_seconds']:.2f} s), fit {record['fit_seconds']:.2f} s, "
                  f"command {proc.seconds:.1f} s, peak {proc.peak_mb:.0f} MB")


def rows(results: dict) -> list[Row]:
    """The report rows of the tuning figures (none if they were not measured)."""
    overhead = (results.get("tune") or {}).get("overhead")
    if not overhead or not overhead["runs"]:
        return []
    runs = overhead["runs"]
    values = [run["overhead_seconds"] for run in runs]
    what = f"{overhead['trials']} trials of a small DNN on {overhead['samples']:,} images"
    return [
        Row(f"**per-trial overhead of `cnnlab tune` (trial wall - fit), {what}**", values, "{:.2f} s", "<= 0.5 s",
            statistics.median(values) <= 0.5),
        Row("the same, first trial of the process (traces Keras' functions)",
            [run["first_trial_overhead_seconds"] for run in runs], "{:.2f} s"),
        Row("fit time of one of those trials", [run["fit_seconds"] for run in runs], "{:.2f} s"),
        Row("peak memory of that study", [run["peak_mb"] for run in runs], "{:.0f} MB"),
    ]
