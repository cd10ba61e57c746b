"""The own-data figures of `make bench` (issue 10): folder loading, memory against data size, augmentation.

1. Loading a folder of 10,000 PNGs (MNIST digits written into class folders): cnnlab cold
   (decoding into an empty cache), cnnlab cached (the second run), and
   `keras.utils.image_dataset_from_directory` on the same folder, each a fresh process
   (bench/load_folder.py), images per second. Target: cached at least as fast as Keras.
2. Peak memory of `cnnlab train` for one epoch on 10,000 and on 40,000 64x64 RGB images
   (coloured shapes, examples/make_shapes.py): the second no more than 1.2x the first,
   because training reads the decoded cache a batch at a time.
3. Training throughput of configs/mnist_best.yaml (a subset) with its augmentation on,
   against the same run with `data.augment` off: ratio >= 0.8 on the steady epochs.

`measure(bench)` runs them (a section of bench/run.py); `rows(results)` makes the report rows.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

import numpy as np
from harness import (
    ROOT,
    BenchError,
    Row,
    measure_figures,
    only_run_dir,
    read_json,
    result_line,
    run_measured,
)

TITLE = "own data: folder loading, memory, augmentation"  # its section in the report

LOAD_IMAGES = 10_000
MEMORY_SIZES = (10_000, 40_000)
TRAIN_TIMEOUT = 1800


def write_digit_folder(folder: Path, count: int) -> Path:
    """The first `count` MNIST training digits as PNG files in <folder>/<digit>/."""
    from PIL import Image

    from cnnlab.data import load_raw

    raw = load_raw("mnist")
    for i in range(count):
        target = folder / str(int(raw.y_train[i]))
        target.mkdir(parents=True, exist_ok=True)
        Image.fromarray(raw.x_train[i]).save(target / f"{i:05d}.png")
    return folder


def write_shape_folder(folder: Path, count: int, size: int = 64) -> Path:
    """`count` coloured shapes, `size` pixels square, as PNG files in <folder>/<shape>/."""
    sys.path.insert(0, str(ROOT / "examples"))
    from make_shapes import SHAPES, draw_shape

    rng = np.random.default_rng(0)
    for kind in SHAPES:
        (folder / kind).mkdir(parents=True, exist_ok=True)
    for i in range(count):
        kind = SHAPES[i % len(SHAPES)]
        draw_shape(kind, rng, size=size).save(folder / kind / f"{i:05d}.png", compress_level=1)
    return folder


def measure(bench) -> None:
    """All three figures; each failure is reported and the others still run."""
    measure_figures(bench, "own_data", "own data", (
        ("folder loading", _loading), ("memory against data size", _memory), ("augmentation throughput", _augmentation)))


def _loading(bench, results: dict) -> None:
    count = 1000 if bench.args.quick else LOAD_IMAGES
    folder = write_digit_folder(bench.work / "digits-png", count)
    records = results["loading"] = {"images": count, "cnnlab_cold": [], "cnnlab_cached": [], "keras": []}
    script = [sys.executable, "bench/load_folder.py"]
    for rep in range(bench.args.repeat):
        cache = bench.work / f"image-cache-{rep}"
        for side, argv in (("cnnlab_cold", [*script, "cnnlab", str(folder), "--cache", str(cache)]),
                           ("cnnlab_cached", [*script, "cnnlab", str(folder), "--cache", str(cache)]),
                           ("keras", [*script, "keras", str(folder)])):
            bench.note_command(f"load a folder ({side})", argv, folder=folder, cache=cache)
            proc = run_measured(argv, bench.log(f"load-{side}-{rep}"), bench.env, TRAIN_TIMEOUT)
            found = result_line(proc, "load_folder.py")
            if found["images"] != count:
                raise BenchError(f"{side} read {found['images']} images, not {count}")
            record = {"seconds": found["seconds"], "images_per_second": count / found["seconds"],
                      "wall_seconds": proc.seconds, "peak_mb": proc.peak_mb}
            records[side].append(record)
            bench.say(f"[{rep + 1}/{bench.args.repeat}] {side}: {record['images_per_second']:.0f} images/s "
                      f"({found['seconds']:.2f} s), command {proc.seconds:.1f} s, peak {proc.peak_mb:.0f} MB")


def _memory(bench, results: dict) -> None:
    sizes = (2000, 8000) if bench.args.quick else MEMORY_SIZES
    big = write_shape_folder(bench.work / f"shapes-{sizes[-1]}", sizes[-1])
    records = results["memory"] = {"runs": []}
    config = ROOT / "configs" / "folder_example.yaml"
    for count in sizes:
        folder = big if count == sizes[-1] else _subset(big, bench.work / f"shapes-{count}", count)
        for phase in ("cold", "cached"):  # the first run decodes into the cache, the second reads it
            runs = bench.work / f"runs-memory-{count}-{phase}"
            argv = [*bench.cnnlab, "train", str(config), "--runs-dir", str(runs), "--set", f"data.path={folder}",
                    "--set", "data.image_size=[64, 64]", "--set", "train.epochs=1", "--set", "train.batch_size=64",
                    "--set", f"data.cache_dir={bench.work / 'memory-cache'}"]
            bench.note_command(f"train one epoch on {count:,} 64x64 RGB images", argv, folder=folder, runs=runs,
                               cache=bench.work / "memory-cache")
            proc = run_measured(argv, bench.log(f"memory-{count}-{phase}"), bench.env, TRAIN_TIMEOUT)
            metrics = read_json(only_run_dir(runs) / "metrics.json")
            record = {"images": count, "phase": phase, "peak_mb": proc.peak_mb, "wall_seconds": proc.seconds,
                      "train_seconds": metrics.get("train_seconds")}
            records["runs"].append(record)
            bench.say(f"{count:,} images, {phase}: peak {proc.peak_mb:.0f} MB, command {proc.seconds:.1f} s, "
                      f"fit {record['train_seconds']} s")


def _subset(source: Path, folder: Path, count: int) -> Path:
    """The first `count` files of `source` (evenly over its class folders), linked into `folder`."""
    files: list[Path] = []
    per_class = {d.name: sorted(d.iterdir()) for d in sorted(source.iterdir())}
    while len(files) < count:
        for found in per_class.values():
            if found and len(files) < count:
                files.append(found.pop(0))
    for file in files:
        target = folder / file.parent.name / file.name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(file)
    return folder


def _augmentation(bench, results: dict) -> None:
    samples, epochs = (3000, 2) if bench.args.quick else (12_000, 2)
    records = results["augmentation"] = {"samples": samples, "on": [], "off": []}
    base = ["train", "configs/mnist_best.yaml", "--set", f"data.train_samples={samples}",
            "--set", f"train.epochs={epochs}", "--set", "data.test_samples=1000"]
    for rep in range(bench.args.repeat):
        for side, extra in (("on", []), ("off", ["--set", "data.augment=null"])):
            runs = bench.work / f"runs-augment-{side}-{rep}"
            argv = [*bench.cnnlab, *base, "--runs-dir", str(runs), *extra]
            bench.note_command(f"train with augmentation {side}", argv, runs=runs)
            proc = run_measured(argv, bench.log(f"augment-{side}-{rep}"), bench.env, TRAIN_TIMEOUT)
            history = read_json(only_run_dir(runs) / "history.json")["epochs"]
            steady = [row["seconds"] for row in history[1:]] or [history[0]["seconds"]]
            record = {"samples_per_second": samples / statistics.median(steady), "peak_mb": proc.peak_mb}
            records[side].append(record)
            bench.say(f"[{rep + 1}/{bench.args.repeat}] augmentation {side}: "
                      f"{record['samples_per_second']:.0f} samples/s steady")


def rows(results: dict) -> list[Row]:
    """The report rows of the own-data figures (none if they were not measured)."""
    own = results.get("own_data") or {}
    out: list[Row] = []

    def check(values, ok):
        return None if not values else bool(ok(statistics.median(values)))

    loading = own.get("loading")
    if loading:
        speed = {side: [r["images_per_second"] for r in loading[side]] for side in ("cnnlab_cold", "cnnlab_cached", "keras")}
        n = f"{loading['images']:,} PNGs"
        out.append(Row(f"load a folder of {n}, cnnlab cold (decode into the cache)", speed["cnnlab_cold"], "{:.0f} images/s"))
        out.append(Row(f"load a folder of {n}, cnnlab cached", speed["cnnlab_cached"], "{:.0f} images/s"))
        out.append(Row(f"load a folder of {n}, keras image_dataset_from_directory", speed["keras"], "{:.0f} images/s"))
        cold = [c / k for c, k in zip(speed["cnnlab_cold"], speed["keras"])]
        cached = [c / k for c, k in zip(speed["cnnlab_cached"], speed["keras"])]
        out.append(Row("**ratio cnnlab cold / Keras, loading**", cold, "{:.2f}", ">= 1.0", check(cold, lambda v: v >= 1.0)))
        out.append(Row("**ratio cnnlab cached / Keras, loading**", cached, "{:.1f}", ">= 1.0",
                       check(cached, lambda v: v >= 1.0)))
    memory = own.get("memory")
    if memory:
        by = {}
        for run in memory["runs"]:
            by.setdefault((run["images"], run["phase"]), []).append(run["peak_mb"])
        sizes = sorted({images for images, _ in by})
        for images in sizes:
            for phase in ("cold", "cached"):
                if (images, phase) in by:
                    out.append(Row(f"peak memory, one epoch on {images:,} 64x64 RGB images ({phase} cache)",
                                   by[(images, phase)], "{:.0f} MB"))
        if len(sizes) == 2 and (sizes[0], "cached") in by and (sizes[1], "cached") in by:
            ratio = [b / s for s, b in zip(by[(sizes[0], "cached")], by[(sizes[1], "cached")])]
            out.append(Row(f"**peak memory ratio, {sizes[1]:,} / {sizes[0]:,} images**", ratio, "{:.2f}", "<= 1.2",
                           check(ratio, lambda v: v <= 1.2)))
    augmentation = own.get("augmentation")
    if augmentation:
        on = [r["samples_per_second"] for r in augmentation["on"]]
        off = [r["samples_per_second"] for r in augmentation["off"]]
        out.append(Row("training throughput, mnist_best, augmentation on", on, "{:.0f} samples/s"))
        out.append(Row("training throughput, mnist_best, augmentation off", off, "{:.0f} samples/s"))
        ratio = [a / b for a, b in zip(on, off)]
        out.append(Row("**ratio augmentation on / off, steady epochs**", ratio, "{:.2f}", ">= 0.8",
                       check(ratio, lambda v: v >= 0.8)))
    return out
