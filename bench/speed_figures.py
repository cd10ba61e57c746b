"""The speed-round-2 figures of `make bench` (issue 15), and mixed_bfloat16 against float32 (issue 14).

1. Time to 99% MNIST test accuracy. Each repetition runs, in turn:
   - `python -c "import tensorflow"` (the yardstick: machines differ);
   - the whole `cnnlab train configs/mnist_fast.yaml` command (its wall time is the time to
     99%, if its metrics.json says test_accuracy >= 0.99 on the full 10,000-image test set;
     the moment the accuracy line is printed is shown too);
   - bench/plain_keras_time_to_99.py with the material's recipe (its CNN + dropout, Adam,
     batch 32) and with mnist_fast's recipe by hand: the time its `reached 0.99` line is
     printed, from the process start.
   Targets: cnnlab <= 2.0x the import, <= 0.15x the material's script.
2. Peak memory of `cnnlab train configs/mnist_fast.yaml` against the plain script with the
   same data and model (mnist_fast's recipe): <= 1.1x, and <= 1.0 GB.
3. `cnnlab train configs/cnn.yaml` on a subset with `train.precision` mixed_bfloat16 and
   float32: steady-epoch samples/s ratio, and the test accuracy of each (full test set).

`measure(bench)` runs them (a section of bench/run.py); `rows(results)` makes the report rows.
"""

from __future__ import annotations

import statistics
import sys

from harness import BenchError, Row, measure_figures, median_meets, only_run_dir, read_json, result_line, run_measured

TITLE = "time to 99%, memory against the plain script, mixed_bfloat16"  # its section in the report

TRAIN_TIMEOUT = 1800
FAST_CONFIG = "configs/mnist_fast.yaml"
TARGET = 0.99


def measure(bench) -> None:
    """Both groups of figures; a failure is reported and the other group still runs."""
    measure_figures(bench, "speed", "speed", (("time to 99%", _time_to_99), ("mixed_bfloat16 vs float32", _precision)))


def _time_to_99(bench, results: dict) -> None:
    records = results["time_to_99"] = {"config": FAST_CONFIG, "import": [], "cnnlab": [], "material": [],
                                       "same_recipe": []}
    quick = bench.args.quick
    script = [sys.executable, "bench/plain_keras_time_to_99.py"]
    for rep in range(bench.args.repeat):
        argv = [sys.executable, "-c", "import tensorflow"]
        bench.note_command("import tensorflow", argv)
        proc = run_measured(argv, bench.log(f"import-tf-{rep}"), bench.env, TRAIN_TIMEOUT)
        records["import"].append({"wall_seconds": proc.seconds, "peak_mb": proc.peak_mb})

        runs = bench.work / f"runs-speed-{rep}"
        argv = [*bench.cnnlab, "train", FAST_CONFIG, "--runs-dir", str(runs)]
        bench.note_command("cnnlab train (time to 99%)", argv, runs=runs)
        proc = run_measured(argv, bench.log(f"speed-cnnlab-{rep}"), bench.env, TRAIN_TIMEOUT,
                            marks={"reported": r"^test accuracy \d"})
        run = only_run_dir(runs)
        metrics = read_json(run / "metrics.json")
        accuracy = metrics["test_accuracy"]
        records["cnnlab"].append({
            "wall_seconds": proc.seconds, "reported_seconds": proc.marks.get("reported"), "test_accuracy": accuracy,
            "test_samples": metrics["test_samples"], "train_seconds": metrics.get("train_seconds"),
            "peak_mb": proc.peak_mb, "params": _params(run),
            "reached": accuracy >= TARGET and metrics["test_samples"] == 10_000})

        for side, recipe in (("material", "material"), ("same_recipe", "fast")):
            if quick and side == "material":
                continue  # two epochs of the material's CNN: minutes, not a harness check
            argv = [*script, "--recipe", recipe]
            bench.note_command(f"plain Keras time to 99% ({recipe} recipe)", argv)
            proc = run_measured(argv, bench.log(f"speed-{side}-{rep}"), bench.env, TRAIN_TIMEOUT,
                                marks={"reached": rf"^reached {TARGET} after epoch"})
            found = result_line(proc, "plain_keras_time_to_99.py")
            records[side].append({"wall_seconds": proc.seconds, "reached_seconds": proc.marks.get("reached"),
                                  "reached_epoch": found["reached_epoch"], "epochs": found["epochs"],
                                  "peak_mb": proc.peak_mb, "params": found["params"]})
        mine, same = records["cnnlab"][-1], records["same_recipe"][-1]
        if mine["params"] is not None and mine["params"] != same["params"]:
            raise BenchError(f"{FAST_CONFIG} has {mine['params']:,} parameters, the script's same recipe "
                             f"{same['params']:,}: bench/plain_keras_time_to_99.py no longer matches the config")
        material = _s(records["material"][-1]["reached_seconds"]) if records["material"] else "skipped (--quick)"
        bench.say(f"[{rep + 1}/{bench.args.repeat}] import tensorflow {records['import'][-1]['wall_seconds']:.1f} s; "
                  f"cnnlab {mine['wall_seconds']:.1f} s (accuracy {accuracy:.4f}, printed at "
                  f"{_s(mine['reported_seconds'])}), peak {mine['peak_mb']:.0f} MB; plain Keras to 99%: material "
                  f"{material}, same recipe {_s(same['reached_seconds'])}, peak {same['peak_mb']:.0f} MB")


def _params(run) -> int | None:
    for line in (run / "summary.txt").read_text().splitlines():
        if "Total params:" in line:
            return int(line.split("Total params:")[1].split("(")[0].replace(",", "").strip())
    return None


def _s(seconds: float | None) -> str:
    return "not reached" if seconds is None else f"{seconds:.1f} s"


def _precision(bench, results: dict) -> None:
    samples, epochs = (2000, 2) if bench.args.quick else (12_000, 2)
    records = results["precision"] = {"samples": samples, "epochs": epochs, "float32": [], "mixed_bfloat16": []}
    for rep in range(bench.args.repeat):
        for precision in ("float32", "mixed_bfloat16"):
            runs = bench.work / f"runs-precision-{precision}-{rep}"
            argv = [*bench.cnnlab, "train", "configs/cnn.yaml", "--runs-dir", str(runs),
                    "--set", f"data.train_samples={samples}", "--set", f"train.epochs={epochs}",
                    "--set", f"train.precision={precision}"]
            bench.note_command(f"cnnlab train cnn.yaml ({precision})", argv, runs=runs)
            proc = run_measured(argv, bench.log(f"precision-{precision}-{rep}"), bench.env, TRAIN_TIMEOUT)
            run = only_run_dir(runs)
            history = read_json(run / "history.json")["epochs"]
            metrics = read_json(run / "metrics.json")
            environment = read_json(run / "environment.json")
            if environment.get("precision") != precision:
                raise BenchError(f"{run}: environment.json records precision {environment.get('precision')!r}, "
                                 f"not {precision}")
            trained = metrics["train_samples_per_second"] * statistics.median(row["seconds"] for row in history)
            steady = [row["seconds"] for row in history[1:]] or [history[0]["seconds"]]
            records[precision].append({"samples_per_second": trained / statistics.median(steady),
                                       "test_accuracy": metrics["test_accuracy"], "peak_mb": proc.peak_mb})
            bench.say(f"[{rep + 1}/{bench.args.repeat}] cnn.yaml {precision}: "
                      f"{records[precision][-1]['samples_per_second']:.0f} samples/s steady, test accuracy "
                      f"{metrics['test_accuracy']:.4f}")


def rows(results: dict) -> list[Row]:
    """The report rows of these figures (none if they were not measured)."""
    speed = results.get("speed") or {}
    out: list[Row] = []
    check = median_meets
    t = speed.get("time_to_99")
    if t and t["cnnlab"]:
        imports = [r["wall_seconds"] for r in t["import"]]
        # a run that missed 99% has no time to 99%: it counts as infinitely slow
        mine = [r["wall_seconds"] if r["reached"] else float("inf") for r in t["cnnlab"]]
        out.append(Row('`python -c "import tensorflow"` wall', imports, "{:.1f} s"))
        out.append(Row(f"`cnnlab train {t['config']}` wall (time to 99%, whole command)", mine, "{:.1f} s"))
        out.append(Row("... of which until the test accuracy is printed",
                       [r["reported_seconds"] for r in t["cnnlab"] if r["reported_seconds"] is not None], "{:.1f} s"))
        out.append(Row(f"{t['config']} test accuracy (10,000 test images)", [r["test_accuracy"] for r in t["cnnlab"]],
                       "{:.4f}", ">= 0.990", check([r["test_accuracy"] for r in t["cnnlab"]], lambda v: v >= 0.99)))
        ratio = [m / i for m, i in zip(mine, imports)]
        out.append(Row("**time to 99%, cnnlab / `import tensorflow`**", ratio, "{:.2f}x", "<= 2.0x",
                       check(ratio, lambda v: v <= 2.0)))
        for side, name in (("material", "material's recipe"), ("same_recipe", "mnist_fast's recipe")):
            reached = [r["reached_seconds"] if r["reached_seconds"] is not None else float("inf") for r in t[side]]
            if not reached:
                continue
            epochs = [r["reached_epoch"] or 0 for r in t[side]]
            out.append(Row(f"plain Keras script, time to 99% ({name})", reached, "{:.1f} s"))
            out.append(Row(f"... epochs it needed ({name})", epochs, "{:.0f}"))
            pairs = [m / r for m, r in zip(mine, reached)]
            if side == "material":
                out.append(Row("**time to 99%, cnnlab / plain Keras with the material's recipe**", pairs, "{:.3f}x",
                               "<= 0.15x", check(pairs, lambda v: v <= 0.15)))
            else:
                out.append(Row("time to 99%, cnnlab / plain Keras with the same recipe", pairs, "{:.2f}x"))
        same = [r["peak_mb"] for r in t["same_recipe"]]
        mb = [r["peak_mb"] for r in t["cnnlab"]]
        out.append(Row(f"peak memory, `cnnlab train {t['config']}`", mb, "{:.0f} MB", "<= 1000 MB",
                       check(mb, lambda v: v <= 1000.0)))
        if same:
            out.append(Row("peak memory, plain Keras script (same data and model)", same, "{:.0f} MB"))
            ratio = [c / s for c, s in zip(mb, same)]
            out.append(Row("**peak memory, cnnlab / plain Keras (same data and model)**", ratio, "{:.2f}", "<= 1.1",
                           check(ratio, lambda v: v <= 1.1)))
    p = speed.get("precision")
    if p and p["float32"] and p["mixed_bfloat16"]:
        f32 = [r["samples_per_second"] for r in p["float32"]]
        bf16 = [r["samples_per_second"] for r in p["mixed_bfloat16"]]
        out.append(Row("configs/cnn.yaml float32, steady epochs", f32, "{:.0f} samples/s"))
        out.append(Row("configs/cnn.yaml mixed_bfloat16, steady epochs", bf16, "{:.0f} samples/s"))
        out.append(Row("ratio mixed_bfloat16 / float32, samples/s", [b / f for b, f in zip(bf16, f32)], "{:.2f}"))
        for precision in ("float32", "mixed_bfloat16"):
            out.append(Row(f"configs/cnn.yaml {precision} test accuracy ({p['samples']:,} training images, "
                           f"{p['epochs']} epochs)", [r["test_accuracy"] for r in p[precision]], "{:.4f}"))
    return out
