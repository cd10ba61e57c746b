"""The MLflow tracking figure of `make bench` (issue 28): what `track: {mlflow: ...}` adds to a run.

`cnnlab train configs/mnist_fast.yaml` from the shell, with and without
`--set track.mlflow.experiment=bench` (the default store: a SQLite file in the runs folder, made
anew each time, the slowest case: its tables are created by the run), taking turns within each
repetition so that a change in machine load hits both alike. Target: at most 3% more wall time.

`measure(bench)` runs it (a section of bench/run.py, `--only track`); `rows(results)` makes the report rows.
"""

from __future__ import annotations

import statistics

from harness import Row, run_measured

TITLE = "MLflow tracking: overhead of a tracked run"  # its section in the report
TRAIN_TIMEOUT = 1800


def measure(bench) -> None:
    config = bench.args.fast_config
    quick = ["--set", "data.train_samples=6000"] if bench.args.quick else []
    records = bench.results["track"] = {"config": str(config), "runs": []}
    for rep in range(bench.args.repeat):
        record = {}
        for side, extra in (("plain", []), ("tracked", ["--set", "track.mlflow.experiment=bench"])):
            runs = bench.work / f"runs-track-{side}-{rep}"
            argv = [*bench.cnnlab, "train", str(config), "--runs-dir", str(runs), *quick, *extra]
            bench.note_command(f"cnnlab train ({side})", argv, runs=runs)
            record[side] = run_measured(argv, bench.log(f"track-{side}-{rep}"), bench.env, TRAIN_TIMEOUT).seconds
        record["overhead_percent"] = 100 * (record["tracked"] / record["plain"] - 1)
        records["runs"].append(record)
        bench.say(f"[{rep + 1}/{bench.args.repeat}] plain {record['plain']:.1f} s, tracked {record['tracked']:.1f} s: "
                  f"{record['overhead_percent']:+.1f}%")


def rows(results: dict) -> list[Row]:
    """The report rows of the tracking figure (none if it was not measured)."""
    runs = (results.get("track") or {}).get("runs")
    if not runs:
        return []
    overhead = [run["overhead_percent"] for run in runs]
    return [
        Row(f"**wall time added by MLflow tracking, `cnnlab train {results['track']['config']}`**", overhead,
            "{:+.1f}%", "<= 3%", statistics.median(overhead) <= 3),
        Row("the same run without tracking", [run["plain"] for run in runs], "{:.1f} s"),
        Row("the same run tracked (SQLite default store)", [run["tracked"] for run in runs], "{:.1f} s"),
    ]
