"""The photo figures of `make bench` (issue 25): transfer learning on ../shared/photos/hymenoptera.

1. `cnnlab train configs/photos_transfer.yaml` (cold: an empty image and feature cache)
   beside bench/plain_keras_transfer.py, the Keras guide's script (frozen MobileNet alpha
   0.25 with the same weights, 40 epochs): wall time of the whole command, test accuracy,
   peak memory. Targets: accuracy >= 0.85 and >= the script's, wall time <= the script's.
2. The frozen phase's epochs on features computed once against the same epochs through the
   backbone every batch (`model.backbone.cache_features: false`): median epoch seconds from
   history.json, target >= 5x.
3. The cold decode pass over the photo folder as configs/photos_transfer.yaml decodes it (its
   image size, colour and interpolation; bench/load_folder.py, an empty cache) against
   `keras.utils.image_dataset_from_directory` on the same folder: target >= 1.0. Where the
   config's interpolation is not bilinear, the pass with bilinear (the default) is a row too.

`measure(bench)` runs them (a section of bench/run.py); `rows(results)` makes the report rows.
"""

from __future__ import annotations

import statistics
import sys

import yaml
from harness import (
    ROOT,
    SHARED,
    BenchError,
    Row,
    measure_figures,
    median_meets,
    only_run_dir,
    read_json,
    result_line,
    run_measured,
)

TITLE = "photos: transfer learning, feature cache, cold decoding"  # its section in the report

PHOTOS = SHARED / "photos" / "hymenoptera"
WEIGHTS = SHARED / "weights" / "mobilenet_2_5_224_tf_no_top.h5"
CONFIG = ROOT / "configs" / "photos_transfer.yaml"
TIMEOUT = 1800


def measure(bench) -> None:
    """All three figures; each failure is reported and the others still run."""
    measure_figures(bench, "photos", "photos", (
        ("transfer learning against the Keras guide's script", _transfer), ("frozen epochs, cached features", _cache),
        ("cold decoding of the photo folder", _decoding)))


def _photo_args(bench, runs, cache) -> list[str]:
    return ["--runs-dir", str(runs), "--set", f"data.path={PHOTOS}", "--set", f"model.backbone.weights={WEIGHTS}",
            "--set", f"data.cache_dir={cache}"]


def _transfer(bench, results: dict) -> None:
    records = results["transfer"] = {"cnnlab": [], "keras": []}
    epochs = ["--epochs", "5"] if bench.args.quick else []
    quick = ["--set", "train.epochs=3", "--set", "train.fine_tune.epochs=1"] if bench.args.quick else []
    for rep in range(bench.args.repeat):
        runs, cache = bench.work / f"runs-transfer-{rep}", bench.work / f"photo-cache-{rep}"
        cnnlab = [*bench.cnnlab, "train", str(CONFIG), *_photo_args(bench, runs, cache), *quick]
        keras = [sys.executable, "bench/plain_keras_transfer.py", str(PHOTOS), str(WEIGHTS), *epochs]
        for side, argv in (("cnnlab", cnnlab), ("keras", keras)):
            bench.note_command(f"transfer learning ({side})", argv, runs=runs, cache=cache)
            proc = run_measured(argv, bench.log(f"transfer-{side}-{rep}"), bench.env, TIMEOUT)
            if side == "cnnlab":
                accuracy = read_json(only_run_dir(runs) / "metrics.json")["test_accuracy"]
            else:
                accuracy = result_line(proc, "plain_keras_transfer.py")["test_accuracy"]
            records[side].append({"seconds": proc.seconds, "test_accuracy": accuracy, "peak_mb": proc.peak_mb})
            bench.say(f"[{rep + 1}/{bench.args.repeat}] {side}: test accuracy {accuracy:.4f}, "
                      f"{proc.seconds:.1f} s, peak {proc.peak_mb:.0f} MB")


def _cache(bench, results: dict) -> None:
    epochs = 3 if bench.args.quick else 10
    records = results["feature_cache"] = {"epochs": epochs, "cached": [], "uncached": []}
    for rep in range(bench.args.repeat):
        cache = bench.work / f"photo-cache-epochs-{rep}"
        for side, flag in (("cached", "true"), ("uncached", "false")):
            runs = bench.work / f"runs-features-{side}-{rep}"
            argv = [*bench.cnnlab, "train", str(CONFIG), *_photo_args(bench, runs, cache), "--set", "train.fine_tune=null",
                    "--set", f"train.epochs={epochs}", "--set", f"model.backbone.cache_features={flag}"]
            bench.note_command(f"frozen epochs ({side} features)", argv, runs=runs, cache=cache)
            run_measured(argv, bench.log(f"features-{side}-{rep}"), bench.env, TIMEOUT)
            history = read_json(only_run_dir(runs) / "history.json")["epochs"]
            steady = [row["seconds"] for row in history[1:]] or [history[0]["seconds"]]
            records[side].append(statistics.median(steady))
            bench.say(f"[{rep + 1}/{bench.args.repeat}] frozen epoch, {side} features: {records[side][-1]:.3f} s")


def _decoding(bench, results: dict) -> None:
    data = yaml.safe_load(CONFIG.read_text())["data"]
    height, width = data["image_size"]
    if height != width:
        raise BenchError(f"{CONFIG.name}: bench/load_folder.py decodes square images, not {height}x{width}")
    interpolation = data.get("interpolation", "bilinear")
    records = results["decoding"] = {"images": None, "size": height, "interpolation": interpolation,
                                     "cnnlab_cold": [], "keras": [], "cnnlab_bilinear": []}
    script = [sys.executable, "bench/load_folder.py"]
    size = ["--size", str(height), "--color", data["color"]]
    for rep in range(bench.args.repeat):
        cache, bilinear = bench.work / f"photo-decode-cache-{rep}", bench.work / f"photo-decode-bilinear-{rep}"
        sides = [("cnnlab_cold", cache, [*script, "cnnlab", str(PHOTOS / "train"), "--cache", str(cache), *size,
                                         "--interpolation", interpolation]),
                 ("keras", cache, [*script, "keras", str(PHOTOS / "train"), *size])]
        if interpolation != "bilinear":
            sides.append(("cnnlab_bilinear", bilinear,
                          [*script, "cnnlab", str(PHOTOS / "train"), "--cache", str(bilinear), *size]))
        for side, folder, argv in sides:
            bench.note_command(f"decode the photo folder ({side})", argv, cache=folder)
            proc = run_measured(argv, bench.log(f"photo-decode-{side}-{rep}"), bench.env, TIMEOUT)
            found = result_line(proc, "load_folder.py")
            if records["images"] not in (None, found["images"]):
                raise BenchError(f"{side} read {found['images']} images, not {records['images']}")
            records["images"] = found["images"]
            records[side].append(found["images"] / found["seconds"])
            bench.say(f"[{rep + 1}/{bench.args.repeat}] {side}: {records[side][-1]:.0f} images/s")


def rows(results: dict) -> list[Row]:
    """The report rows of the photo figures (none if they were not measured)."""
    photos = results.get("photos") or {}
    out: list[Row] = []
    transfer = photos.get("transfer")
    if transfer and transfer["cnnlab"] and transfer["keras"]:
        ours, theirs = transfer["cnnlab"], transfer["keras"]
        accuracy = [r["test_accuracy"] for r in ours]
        out.append(Row("**test accuracy, cnnlab train configs/photos_transfer.yaml**", accuracy, "{:.4f}", ">= 0.85",
                       median_meets(accuracy, lambda v: v >= 0.85)))
        out.append(Row("test accuracy, the Keras guide's script (40 frozen epochs)",
                       [r["test_accuracy"] for r in theirs], "{:.4f}"))
        gain = [a["test_accuracy"] - b["test_accuracy"] for a, b in zip(ours, theirs)]
        out.append(Row("**test accuracy, cnnlab - the script**", gain, "{:+.4f}", ">= 0", median_meets(gain, lambda v: v >= 0)))
        out.append(Row("wall time, cnnlab train (whole command, cold caches)", [r["seconds"] for r in ours], "{:.1f} s"))
        out.append(Row("wall time, the Keras guide's script (whole command)", [r["seconds"] for r in theirs], "{:.1f} s"))
        ratio = [a["seconds"] / b["seconds"] for a, b in zip(ours, theirs)]
        out.append(Row("**wall time ratio, cnnlab / the script**", ratio, "{:.2f}", "<= 1.0",
                       median_meets(ratio, lambda v: v <= 1.0)))
        out.append(Row("peak memory, cnnlab train photos_transfer", [r["peak_mb"] for r in ours], "{:.0f} MB"))
        out.append(Row("peak memory, the Keras guide's script", [r["peak_mb"] for r in theirs], "{:.0f} MB"))
    cache = photos.get("feature_cache")
    if cache and cache["cached"] and cache["uncached"]:
        out.append(Row("frozen epoch, head on cached features", cache["cached"], "{:.3f} s"))
        out.append(Row("frozen epoch, through the backbone every batch", cache["uncached"], "{:.3f} s"))
        speedup = [u / c for c, u in zip(cache["cached"], cache["uncached"])]
        out.append(Row("**speed-up of the frozen epochs by cached features**", speedup, "{:.1f}x", ">= 5",
                       median_meets(speedup, lambda v: v >= 5)))
    decoding = photos.get("decoding")
    if decoding and decoding["cnnlab_cold"] and decoding["keras"]:
        n = f"{decoding['images']} photos at {decoding['size']}x{decoding['size']}"
        out.append(Row(f"decode {n}, cnnlab cold ({decoding['interpolation']}, as photos_transfer.yaml)",
                       decoding["cnnlab_cold"], "{:.0f} images/s"))
        out.append(Row(f"decode {n}, keras image_dataset_from_directory", decoding["keras"], "{:.0f} images/s"))
        ratio = [c / k for c, k in zip(decoding["cnnlab_cold"], decoding["keras"])]
        out.append(Row("**ratio cnnlab cold / Keras, photo decoding**", ratio, "{:.2f}", ">= 1.0",
                       median_meets(ratio, lambda v: v >= 1.0)))
        if decoding["cnnlab_bilinear"]:
            out.append(Row(f"decode {n}, cnnlab cold (bilinear, the default)", decoding["cnnlab_bilinear"],
                           "{:.0f} images/s"))
            ratio = [c / k for c, k in zip(decoding["cnnlab_bilinear"], decoding["keras"])]
            out.append(Row("ratio cnnlab cold (bilinear) / Keras", ratio, "{:.2f}"))
    return out
