"""Run the issue-6 benchmark in one go on this machine and write bench/RESULTS.md (`make bench`).

What is measured, each figure at least 3 times (median, min, max):
1. Training throughput of configs/cnn.yaml at its batch size through `cnnlab train`,
   next to bench/plain_keras_train.py (the script a user writes) and, when torch is
   importable, bench/torch_train.py: same subset, split, batch size and epochs. The
   sides take turns within each repetition, so a change in machine load hits all alike.
2. Time to accuracy: the wall time of `cnnlab train configs/mnist_fast.yaml` from the
   shell, and the test accuracy its metrics.json reports.
3. `cnnlab predict RUN one.png`, cold (a new process each time), wall time and peak
   memory, next to bench/plain_keras_predict.py on the same model and image.
4. `cnnlab --help` wall time; the peak memory of every training run.

Every command runs as a fresh process, timed from outside around the whole command;
its peak resident memory is the kernel's ru_maxrss for that process (os.wait4 in a
small launcher process, so that the runner's own memory is not counted).

Usage:
    .venv/bin/python bench/run.py          # the real measurement, about 15-20 min on 2 cores
    .venv/bin/python bench/run.py --quick  # a few minutes: checks the harness; figures mean nothing
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.metadata as md
import json
import math
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import data_figures
import scale_figures
import serve_figures
import speed_figures
import track_figures
import transfer_figures
import tune_figures
from harness import (
    BENCH,
    ROOT,
    SHARED,
    BenchError,
    Process,
    Row,
    only_run_dir,
    read_json,
    result_line,
    run_measured,
    table,
)

from cnnlab.errors import CnnlabError

DEFAULT_IMAGE = SHARED / "digits" / "dFAk0__MNIST-dataset-training" / "3_3.png"  # a marker digit on white paper
TORCH_VENV_PYTHON = BENCH / ".torchvenv" / "bin" / "python"  # where `make bench WITH_TORCH=1` installs torch
NOTES_MARKER = "<!-- Notes below this line are kept when `make bench` rewrites this file. -->"
TRAIN_TIMEOUT = 1800  # seconds for one training command; a hung run fails instead of blocking the bench
SHORT_TIMEOUT = 300  # seconds for predict and --help
CORE_SECTIONS = ("help", "throughput", "time_to_accuracy", "predict")  # measured here, by Bench
# each later group of figures: its own module with TITLE, measure(bench) and rows(results)
FIGURE_MODULES = {"own_data": data_figures, "speed": speed_figures, "serve": serve_figures, "scale": scale_figures,
                  "tune": tune_figures, "photos": transfer_figures,
                  "track": track_figures}


class Bench:
    """The measurements, their settings and everything they recorded."""

    def __init__(self, args: argparse.Namespace, work: Path):
        self.args, self.work = args, work
        (work / "logs").mkdir(parents=True, exist_ok=True)
        self.cnnlab = [str(Path(sys.executable).with_name("cnnlab"))]
        self.env = dict(os.environ, PYTHONUNBUFFERED="1")  # lines arrive when printed, for the time marks
        self.results: dict = {}
        self.failures: dict[str, str] = {}
        self.commands: dict[str, str] = {}
        self.runs_for_predict: list[Path] = []

    def log(self, name: str) -> Path:
        return self.work / "logs" / f"{name}.log"

    def note_command(self, name: str, argv: list[str], **placeholders: Path) -> None:
        """Keep the command line for the report, with temporary paths named and the root left out."""
        line = shlex.join(str(a) for a in argv)
        for label, path in placeholders.items():
            line = line.replace(str(path), f"<{label}>")
        self.commands[name] = line.replace(f"{ROOT}/", "")

    def say(self, text: str) -> None:
        print(text, flush=True)

    def section(self, name: str, measure) -> None:
        self.say(f"\n== {name}")
        try:
            measure()
        except (BenchError, CnnlabError) as exc:
            self.failures[name] = str(exc)
            self.say(f"FAILED: {exc}")

    # --- 1. training throughput ---------------------------------------------------

    def throughput(self) -> None:
        from cnnlab.config import load_config

        args = self.args
        cfg = load_config(ROOT / "configs" / "cnn.yaml")
        validation = cfg.data.validation
        val_fraction = validation.size if validation.method != "none" else 0.0
        # cnnlab's stratified split holds out ceil(size * n) samples (scikit-learn's rule)
        cnnlab_train = args.samples - (math.ceil(val_fraction * args.samples) if validation.method == "stratified"
                                       else round(val_fraction * args.samples))
        overrides = [f"train.epochs={args.epochs}", f"data.train_samples={args.samples}",
                     f"data.test_samples={args.test_samples}"]
        script_args = ["--samples", str(args.samples), "--epochs", str(args.epochs),
                       "--batch-size", str(cfg.train.batch_size), "--validation", str(val_fraction),
                       "--learning-rate", str(cfg.train.optimizer.learning_rate), "--seed", str(cfg.seed)]
        sides = {"cnnlab": [], "keras": [], "torch": []}
        self.results["throughput"] = {"samples": args.samples, "epochs": args.epochs,
                                      "batch_size": cfg.train.batch_size, "validation": val_fraction, "sides": sides}
        torch_python = self.torch_python()
        for rep in range(args.repeat):
            runs_dir = self.work / f"runs-cnn-{rep}"
            argv = [*self.cnnlab, "train", "configs/cnn.yaml", "--runs-dir", str(runs_dir),
                    *(x for o in overrides for x in ("--set", o))]
            self.note_command("cnnlab train", argv, runs=runs_dir)
            proc = run_measured(argv, self.log(f"cnnlab-train-{rep}"), self.env, TRAIN_TIMEOUT)
            run_dir = only_run_dir(runs_dir)
            history = read_json(run_dir / "history.json")["epochs"]
            metrics = read_json(run_dir / "metrics.json")
            seconds = statistics.median(row["seconds"] for row in history)
            if abs(metrics["train_samples_per_second"] * seconds - cnnlab_train) > 0.01 * cnnlab_train:
                raise BenchError(f"{run_dir}: trained on about {metrics['train_samples_per_second'] * seconds:.0f} "
                                 f"samples per epoch, not the {cnnlab_train} the comparison assumes")
            sides["cnnlab"].append(self.training_record(
                cnnlab_train, [row["seconds"] for row in history], metrics["train_seconds"], proc,
                cnnlab_samples_per_second=metrics.get("train_samples_per_second"),
                test_accuracy=metrics.get("test_accuracy")))
            self.runs_for_predict.append(run_dir)
            self.report_training("cnnlab", rep, sides["cnnlab"][-1])

            argv = [sys.executable, "bench/plain_keras_train.py", *script_args]
            self.note_command("plain Keras train", argv)
            proc = run_measured(argv, self.log(f"keras-train-{rep}"), self.env, TRAIN_TIMEOUT)
            found = result_line(proc, "plain_keras_train.py")
            if found["train_samples"] != cnnlab_train:
                raise BenchError(f"plain_keras_train.py trained on {found['train_samples']} samples per epoch, "
                                 f"cnnlab on {cnnlab_train}: not the same work")
            sides["keras"].append(self.training_record(found["train_samples"], found["epoch_seconds"],
                                                       found["fit_seconds"], proc))
            self.report_training("plain Keras", rep, sides["keras"][-1])

            if torch_python:
                argv = [torch_python, "bench/torch_train.py", *script_args]
                self.note_command("PyTorch train", argv)
                env = dict(self.env, PYTHONPATH=str(ROOT))  # cnnlab.data from the repository
                proc = run_measured(argv, self.log(f"torch-train-{rep}"), env, TRAIN_TIMEOUT)
                found = result_line(proc, "torch_train.py")
                sides["torch"].append(self.training_record(found["train_samples"], found["epoch_seconds"],
                                                           found["fit_seconds"], proc, threads=found["threads"]))
                self.results["torch_version"] = found["torch"]
                self.report_training("PyTorch", rep, sides["torch"][-1])

    def training_record(self, train_samples: int, epoch_seconds: list[float], fit_seconds: float,
                        proc: Process, **extra) -> dict:
        steady = epoch_seconds[1:] or epoch_seconds  # the first epoch also traces the model
        return {
            "train_samples": train_samples, "epoch_seconds": [round(s, 3) for s in epoch_seconds],
            "steady_samples_per_second": train_samples / statistics.median(steady),
            "first_epoch_samples_per_second": train_samples / epoch_seconds[0],
            "fit_samples_per_second": train_samples * len(epoch_seconds) / fit_seconds,
            "fit_seconds": fit_seconds, "wall_seconds": proc.seconds, "peak_mb": proc.peak_mb, **extra,
        }

    def report_training(self, side: str, rep: int, record: dict) -> None:
        self.say(f"[{rep + 1}/{self.args.repeat}] {side}: {record['steady_samples_per_second']:.1f} samples/s "
                 f"steady, {record['first_epoch_samples_per_second']:.1f} first epoch, "
                 f"{record['fit_samples_per_second']:.1f} whole fit; epochs {record['epoch_seconds']} s; "
                 f"command {record['wall_seconds']:.1f} s, peak {record['peak_mb']:.0f} MB")

    def torch_python(self) -> str | None:
        """The interpreter that has torch, or None (PyTorch is then skipped, with a note)."""
        candidates = [self.args.torch_python] if self.args.torch_python else [str(TORCH_VENV_PYTHON), sys.executable]
        for python in candidates:
            if not Path(python).exists():
                continue
            check = subprocess.run([python, "-c", "import numpy, torch"], capture_output=True, timeout=120)
            if check.returncode == 0:
                return python
        note = (f"--torch-python {self.args.torch_python}: cannot import torch and numpy" if self.args.torch_python
                else "torch is not installed (`make bench WITH_TORCH=1` installs it into bench/.torchvenv)")
        self.results["torch_skipped"] = note
        self.say(f"PyTorch skipped: {note}")
        return None

    # --- 2. time to accuracy --------------------------------------------------------

    def time_to_accuracy(self) -> None:
        config = Path(self.args.fast_config)
        if not (ROOT / config).exists():
            raise BenchError(f"{config}: config not found (the time-to-accuracy config of issue 6)")
        records = self.results["time_to_accuracy"] = {"config": str(config), "runs": []}
        overrides = ["data.train_samples=6000", "train.epochs=1"] if self.args.quick else []
        for rep in range(self.args.repeat):
            runs_dir = self.work / f"runs-fast-{rep}"
            argv = [*self.cnnlab, "train", str(config), "--runs-dir", str(runs_dir),
                    *(x for o in overrides for x in ("--set", o))]
            self.note_command("cnnlab train (time to accuracy)", argv, runs=runs_dir)
            proc = run_measured(argv, self.log(f"fast-train-{rep}"), self.env, TRAIN_TIMEOUT,
                                marks={"reported": r"^test accuracy \d"})
            run_dir = only_run_dir(runs_dir)
            metrics = read_json(run_dir / "metrics.json")
            record = {"wall_seconds": proc.seconds, "reported_seconds": proc.marks.get("reported"),
                      "test_accuracy": metrics["test_accuracy"], "train_seconds": metrics.get("train_seconds"),
                      "peak_mb": proc.peak_mb}
            records["runs"].append(record)
            self.runs_for_predict.append(run_dir)
            reported = record["reported_seconds"]
            shown = f"printed at {reported:.1f} s" if reported is not None else "no 'test accuracy' line seen"
            self.say(f"[{rep + 1}/{self.args.repeat}] test accuracy {record['test_accuracy']:.4f}; command "
                     f"{proc.seconds:.1f} s ({shown}); training {record['train_seconds']} s, "
                     f"peak {proc.peak_mb:.0f} MB")

    # --- 3. predict -----------------------------------------------------------------

    def predict(self) -> None:
        if self.args.run:
            run_dir = Path(self.args.run).resolve()
        elif self.runs_for_predict:
            run_dir = self.runs_for_predict[0]  # a configs/cnn.yaml run when that section worked
        else:
            raise BenchError("no finished training run to predict with (give one with --run)")
        if not (run_dir / "best.keras").is_file():
            raise BenchError(f"{run_dir}: not a finished cnnlab run (no best.keras)")
        image = self.image()
        cnnlab_argv = [*self.cnnlab, "predict", str(run_dir), str(image)]
        keras_argv = [sys.executable, "bench/plain_keras_predict.py", str(run_dir / "best.keras"), str(image)]
        self.note_command("cnnlab predict", cnnlab_argv, run=run_dir)
        self.note_command("plain Keras predict", keras_argv, run=run_dir)
        records = self.results["predict"] = {
            "run_config": read_json(run_dir / "run.json").get("config_source"),
            "tflite_in_run": (run_dir / "model.tflite").exists(), "image": str(image), "cnnlab": [], "keras": []}
        # one untimed run each first: later runs then all find the files in the OS cache alike
        run_measured(cnnlab_argv, self.log("cnnlab-predict-warmup"), self.env, SHORT_TIMEOUT)
        run_measured(keras_argv, self.log("keras-predict-warmup"), self.env, SHORT_TIMEOUT)
        for rep in range(self.args.repeat_fast):
            for side, argv in (("cnnlab", cnnlab_argv), ("keras", keras_argv)):
                proc = run_measured(argv, self.log(f"{side}-predict-{rep}"), self.env, SHORT_TIMEOUT)
                answer = proc.output.strip().splitlines()[-1] if proc.output.strip() else ""
                records[side].append({"wall_seconds": proc.seconds, "peak_mb": proc.peak_mb, "answer": answer})
                self.say(f"[{rep + 1}/{self.args.repeat_fast}] {side} predict: {proc.seconds:.2f} s, "
                         f"peak {proc.peak_mb:.0f} MB: {answer}")

    def image(self) -> Path:
        """The image to predict: --image, the shared digit photo, or an MNIST digit drawn dark on white."""
        if self.args.image:
            image = Path(self.args.image).resolve()
            if not image.is_file():
                raise BenchError(f"--image {self.args.image}: no such file")
            return image
        if DEFAULT_IMAGE.is_file():
            return DEFAULT_IMAGE
        from PIL import Image

        from cnnlab.data import load_raw

        digit = 255 - load_raw("mnist", test_only=True).x_test[0]
        image = self.work / "one.png"
        Image.fromarray(digit).resize((280, 280)).save(image)
        return image

    # --- 4. --help ------------------------------------------------------------------

    def help(self) -> None:
        argv = [*self.cnnlab, "--help"]
        self.note_command("cnnlab --help", argv)
        run_measured(argv, self.log("help-warmup"), self.env, SHORT_TIMEOUT)
        records = self.results["help"] = []
        for rep in range(self.args.repeat_fast):
            proc = run_measured(argv, self.log(f"help-{rep}"), self.env, SHORT_TIMEOUT)
            records.append({"wall_seconds": proc.seconds, "peak_mb": proc.peak_mb})
            self.say(f"[{rep + 1}/{self.args.repeat_fast}] cnnlab --help: {proc.seconds:.3f} s, "
                     f"peak {proc.peak_mb:.0f} MB")


# --- the report -------------------------------------------------------------------


def rows_of(results: dict) -> list[Row]:
    rows: list[Row] = []

    def median(values):
        return statistics.median(values) if values else None

    def check(values, ok) -> bool | None:
        return None if not values else bool(ok(statistics.median(values)))

    throughput = results.get("throughput")
    if throughput:
        sides = throughput["sides"]
        names = {"cnnlab": "cnnlab", "keras": "plain Keras", "torch": "PyTorch"}
        for key, label in (("steady_samples_per_second", "steady epochs"),
                           ("first_epoch_samples_per_second", "first epoch"),
                           ("fit_samples_per_second", "whole fit")):
            for side, name in names.items():
                if sides[side]:
                    rows.append(Row(f"training throughput, {name}, {label}", [r[key] for r in sides[side]],
                                    "{:.1f} samples/s"))
            pairs = [c[key] / k[key] for c, k in zip(sides["cnnlab"], sides["keras"])]
            if label == "first epoch":  # tracing included: shown, but the target is about training speed
                rows.append(Row(f"ratio cnnlab / plain Keras, {label}", pairs, "{:.3f}"))
            else:
                rows.append(Row(f"**ratio cnnlab / plain Keras, {label}**", pairs, "{:.3f}", ">= 1.00",
                                check(pairs, lambda v: v >= 1.0)))
            if sides["torch"]:
                pairs = [t[key] / k[key] for t, k in zip(sides["torch"], sides["keras"])]
                rows.append(Row(f"ratio PyTorch / plain Keras, {label}", pairs, "{:.3f}"))
    fast = results.get("time_to_accuracy")
    if fast:
        runs = fast["runs"]
        walls = [r["wall_seconds"] for r in runs]
        accuracies = [r["test_accuracy"] for r in runs]
        rows.append(Row(f"**`cnnlab train {fast['config']}` wall, whole command**", walls, "{:.1f} s", "<= 60 s",
                        check(walls, lambda v: v <= 60.0)))
        reported = [r["reported_seconds"] for r in runs if r["reported_seconds"] is not None]
        rows.append(Row("... of which until the test accuracy is printed", reported, "{:.1f} s"))
        rows.append(Row("... of which in `fit` (train_seconds)", [r["train_seconds"] for r in runs
                                                                  if r["train_seconds"] is not None], "{:.1f} s"))
        rows.append(Row(f"**{fast['config']} test accuracy**", accuracies, "{:.4f}", ">= 0.990",
                        check(accuracies, lambda v: v >= 0.990)))
    predict = results.get("predict")
    if predict:
        cnnlab_s = [r["wall_seconds"] for r in predict["cnnlab"]]
        keras_s = [r["wall_seconds"] for r in predict["keras"]]
        cnnlab_mb = [r["peak_mb"] for r in predict["cnnlab"]]
        rows.append(Row("**`cnnlab predict RUN one.png` cold wall**", cnnlab_s, "{:.2f} s", "<= 1.0 s",
                        check(cnnlab_s, lambda v: v <= 1.0)))
        rows.append(Row("**`cnnlab predict` peak memory**", cnnlab_mb, "{:.0f} MB", "<= 300 MB",
                        check(cnnlab_mb, lambda v: v <= 300.0)))
        rows.append(Row("plain Keras predict script wall", keras_s, "{:.2f} s", "(reference: ~7.5 s)"))
        rows.append(Row("plain Keras predict script peak memory", [r["peak_mb"] for r in predict["keras"]],
                        "{:.0f} MB"))
        rows.append(Row("predict speed-up, plain Keras / cnnlab wall", [k / c for k, c in zip(keras_s, cnnlab_s)],
                        "{:.1f}x"))
    helps = [r["wall_seconds"] for r in results.get("help", [])]
    if helps:
        rows.append(Row("**`cnnlab --help` wall**", helps, "{:.3f} s", "<= 0.5 s", check(helps, lambda v: v <= 0.5)))
        rows.append(Row("`cnnlab --help` peak memory", [r["peak_mb"] for r in results["help"]], "{:.0f} MB"))
    if throughput:
        for side, name in (("cnnlab", "`cnnlab train configs/cnn.yaml` (subset)"),
                           ("keras", "plain Keras training script"), ("torch", "PyTorch training script")):
            if throughput["sides"][side]:
                rows.append(Row(f"peak memory, {name}", [r["peak_mb"] for r in throughput["sides"][side]], "{:.0f} MB"))
    if fast:
        rows.append(Row(f"peak memory, `cnnlab train {fast['config']}`", [r["peak_mb"] for r in fast["runs"]],
                        "{:.0f} MB"))
    return rows + [row for module in FIGURE_MODULES.values() for row in module.rows(results)]


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def machine() -> dict:
    def first(path: str, key: str) -> str | None:
        with contextlib.suppress(OSError):
            for line in Path(path).read_text().splitlines():
                if line.startswith(key):
                    return line.split(":", 1)[1].strip()
        return None

    mem_kb = first("/proc/meminfo", "MemTotal")
    quota = None
    with contextlib.suppress(OSError):
        quota = Path("/sys/fs/cgroup/cpu.max").read_text().strip()
    return {
        "cpu": first("/proc/cpuinfo", "model name") or platform.processor() or "unknown",
        "logical_cpus": os.cpu_count(), "usable_cpus": len(os.sched_getaffinity(0)),
        "cgroup_cpu_max": quota,
        "ram_gib": round(int(mem_kb.split()[0]) / 2**20, 1) if mem_kb else None,
        "platform": platform.platform(),
    }


def versions(results: dict) -> dict:
    def version(*packages: str) -> str:
        for package in packages:
            with contextlib.suppress(md.PackageNotFoundError):
                return md.version(package)
        return "not installed"

    commit = "unknown"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True)
        if head.returncode == 0:
            commit = head.stdout.strip() + (" (with uncommitted changes)" if dirty.stdout.strip() else "")
    return {
        "python": platform.python_version(), "cnnlab": f"{version('cnnlab')} at commit {commit}",
        "tensorflow": version("tensorflow-cpu", "tensorflow"), "keras": version("keras"),
        "numpy": version("numpy"), "ai-edge-litert": version("ai-edge-litert"), "pillow": version("pillow"),
        "torch": results.get("torch_version", "not used"),
    }


def write_report(bench: Bench, path: Path, info: dict) -> None:
    args, results = bench.args, bench.results
    notes = ""
    if path.exists() and NOTES_MARKER in path.read_text():
        notes = path.read_text().split(NOTES_MARKER, 1)[1].strip()
    m, v = info["machine"], info["versions"]
    throughput = results.get("throughput")
    lines = [
        "# Benchmark results (issue 6)", "",
        f"Written by `{info['command']}` on {info['date']}, in {info['minutes']:.1f} min. "
        "Each figure: median, min and max over the repetitions; ratios are taken within each repetition "
        "(the sides run in turn), then summarised.",
    ]
    if args.quick:
        lines += ["", "**Quick run (`--quick`): smaller subsets, fewer repetitions. It checks the harness; "
                  "these figures are not the benchmark and say nothing about the targets.**"]
    lines += [
        "", "## Machine", "",
        f"- CPU: {m['cpu']}; {m['logical_cpus']} logical CPUs, {m['usable_cpus']} usable by this process"
        + (f"; cgroup cpu.max {m['cgroup_cpu_max']}" if m["cgroup_cpu_max"] else ""),
        f"- RAM: {m['ram_gib']} GiB; {m['platform']}",
        # The end's average is mostly the benchmark's own last minute: only the start says whether
        # other work was running.
        f"- Load average (1 min) at start {info['load_start']:.2f}"
        + (" — **the machine was busy: other work inflates every figure**" if info["load_start"] > 0.5 else " (idle)")
        + f"; at end {info['load_end']:.2f} (the benchmark's own last minute)",
        "- Versions: " + ", ".join(f"{k} {val}" for k, val in v.items()),
        "", "## Targets", "",
        table([row for row in rows_of(results) if row.target.startswith(("<", ">"))], judge=not args.quick),
        "", "## All figures", "",
        table(rows_of(results), judge=not args.quick),
    ]
    if bench.failures:
        lines += ["", "## Failed measurements", ""]
        lines += [f"- {name}: {message.splitlines()[0]}" for name, message in bench.failures.items()]
    lines += ["", "## How", ""]
    if throughput:
        lines.append(
            f"- Training throughput: the first {throughput['samples']} MNIST training images, "
            f"{throughput['validation']:.0%} held out for validation, batch {throughput['batch_size']}, "
            f"{throughput['epochs']} epochs, {plural(args.repeat, 'repetition')} per side. "
            "Samples/s = training samples / epoch seconds, an epoch timed from its start to its end with its "
            "validation pass (cnnlab: history.json `seconds`; the scripts: the same callback points). "
            "*Steady epochs* leaves out the first epoch (graph tracing); *whole fit* divides all epochs' "
            "samples by the whole `fit` time (cnnlab: metrics.json `train_seconds`, which also counts "
            "cnnlab's per-epoch checkpoint saves).")
    if "torch_skipped" in results:
        lines.append(f"- PyTorch reference skipped: {results['torch_skipped']}.")
    if "time_to_accuracy" in results:
        lines.append("- Time to accuracy: wall clock around the whole `cnnlab train` command (Python start, "
                     "TensorFlow import, data, training, test scoring, TFLite export); the accuracy is metrics.json "
                     "`test_accuracy` (the full 10,000-image MNIST test set).")
    if "predict" in results:
        p = results["predict"]
        lines.append(f"- Predict: model from a `{p['run_config']}` run of this benchmark (model.tflite "
                     f"{'present' if p['tflite_in_run'] else 'absent'}), image `{p['image']}`; each command once "
                     f"untimed (file cache), then {plural(args.repeat_fast, 'timed run')}, each a new process.")
    lines.append("- Wall time: from fork to exit of the command, as a shell's `time` measures it. Peak memory: "
                 "the kernel's maximum resident set size of the command's process (ru_maxrss from os.wait4), "
                 "in MB of 10^6 bytes.")
    lines += ["", "Commands (the repository root is the working directory):", ""]
    lines += [f"- {name}: `{command}`" for name, command in bench.commands.items()]
    lines += ["", NOTES_MARKER, ""]
    if notes:
        lines += [notes, ""]
    path.write_text("\n".join(lines))


def main() -> int:
    parser = argparse.ArgumentParser(description="Run the issue-6 benchmark and write bench/RESULTS.md.")
    parser.add_argument("--quick", action="store_true",
                        help="check the harness in a few minutes: small subsets, 1 repetition, writes "
                             "bench/RESULTS-quick.md")
    parser.add_argument("--repeat", type=int, help="repetitions of each training measurement (default 3; quick 1)")
    parser.add_argument("--repeat-fast", type=int, help="repetitions of predict and --help (default 5; quick 1)")
    parser.add_argument("--samples", type=int, help="training subset for throughput (default 12000; quick 2000)")
    parser.add_argument("--epochs", type=int, help="epochs for throughput (default 2)")
    parser.add_argument("--test-samples", type=int, default=2000,
                        help="test images cnnlab scores after the throughput runs (not timed; default 2000)")
    parser.add_argument("--fast-config", default="configs/mnist_fast.yaml", help="the time-to-accuracy config")
    parser.add_argument("--run", help="the run directory to predict with (default: one trained by this benchmark)")
    parser.add_argument("--image", help="the image to predict (default: a digit photo from ../shared/digits)")
    parser.add_argument("--torch-python", help="a Python with torch for the PyTorch reference "
                                               "(default: bench/.torchvenv, else this Python, else skipped)")
    parser.add_argument("--only", nargs="+", choices=[*CORE_SECTIONS, *FIGURE_MODULES],
                        help="run only these measurements")
    parser.add_argument("--output", type=Path, help="the report (default bench/RESULTS.md; quick: RESULTS-quick.md)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary runs and logs")
    args = parser.parse_args()
    args.repeat = args.repeat or (1 if args.quick else 3)
    args.repeat_fast = args.repeat_fast or (1 if args.quick else 5)
    args.samples = args.samples or (2000 if args.quick else 12000)
    args.epochs = args.epochs or 2
    output = args.output or BENCH / ("RESULTS-quick.md" if args.quick else "RESULTS.md")
    if min(args.repeat, args.repeat_fast, args.samples, args.epochs) < 1:
        parser.error("--repeat, --repeat-fast, --samples and --epochs must be at least 1")

    if not os.environ.get("CNNLAB_DATA_DIR") and (SHARED / "datasets").is_dir():
        os.environ["CNNLAB_DATA_DIR"] = str(SHARED / "datasets")
    cnnlab = Path(sys.executable).with_name("cnnlab")
    if not cnnlab.exists():
        sys.exit(f"error: {cnnlab} not found: run bench/run.py with the project's Python "
                 "(`make install`, then .venv/bin/python bench/run.py)")
    from cnnlab.data import load_raw

    try:
        load_raw("mnist")  # a missing data set downloads now, not inside a timed run
    except CnnlabError as exc:
        sys.exit(f"error: {exc}")

    work = Path(tempfile.mkdtemp(prefix="cnnlab-bench-"))
    bench = Bench(args, work)
    started = time.perf_counter()
    load_start = os.getloadavg()[0]
    print(f"benchmark{' (quick)' if args.quick else ''}: load average {load_start:.2f}; runs and logs in {work}",
          flush=True)
    sections = {"help": ("cnnlab --help", bench.help), "throughput": ("training throughput", bench.throughput),
                "time_to_accuracy": ("time to accuracy", bench.time_to_accuracy),
                "predict": ("predict one image", bench.predict)}
    assert list(sections) == list(CORE_SECTIONS)
    sections |= {key: (module.TITLE, functools.partial(module.measure, bench)) for key, module in FIGURE_MODULES.items()}
    for key, (name, measure) in sections.items():
        if args.only is None or key in args.only:
            bench.section(name, measure)
    info = {
        "command": "make bench" if os.environ.get("MAKELEVEL") else shlex.join(["bench/run.py", *sys.argv[1:]]),
        "date": datetime.now().isoformat(timespec="minutes"), "minutes": (time.perf_counter() - started) / 60,
        "load_start": load_start, "load_end": os.getloadavg()[0], "machine": machine(),
        "versions": versions(bench.results),
    }
    write_report(bench, output, info)
    output.with_suffix(".json").write_text(json.dumps(
        {**info, "args": vars(args) | {"output": str(output)}, "results": bench.results, "failures": bench.failures},
        indent=1, default=str))
    print(f"\n{table(rows_of(bench.results), judge=not args.quick)}\n", flush=True)
    print(f"wrote {output} and {output.with_suffix('.json')}", flush=True)
    if bench.failures:
        print(f"{len(bench.failures)} measurement(s) failed: {', '.join(bench.failures)}; logs kept in {work}")
        return 1
    if args.keep:
        print(f"runs and logs kept in {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
