"""A user's own images: folder and CSV data sets, end to end through train, evaluate and predict.

The data sets are made here: MNIST digits written as PNG files into class folders named
after the digits, and a small RGB set of coloured shapes drawn with Pillow.
"""

from __future__ import annotations

import csv
import json
import os
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from cnnlab.cli import app
from cnnlab.config import validate_config
from cnnlab.data import describe, load, prepare
from cnnlab.data.cache import RowFile, decoded_images
from cnnlab.data.files import scan

from conftest import DATA_DIR, REPO, needs_data

sys.path.insert(0, str(REPO / "examples"))
from make_shapes import SHAPES, draw_shape, write_shapes_folder  # noqa: E402  (the script users run too)

DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def write_digit_folder(folder: Path, per_class: int, start: int = 0) -> Path:
    """MNIST training digits as PNGs in <folder>/<digit name>/, `per_class` of each."""
    from cnnlab.data import load_raw

    raw = load_raw("mnist", str(DATA_DIR))
    for digit, name in enumerate(DIGIT_NAMES):
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in np.flatnonzero(raw.y_train == digit)[start:start + per_class]:
            Image.fromarray(raw.x_train[i]).save(folder / name / f"{i:05d}.png")
    return folder


def shapes_config(folder: Path, **data) -> dict:
    """configs/folder_example.yaml, pointed at `folder`, with `data` keys changed."""
    config = yaml.safe_load((REPO / "configs" / "folder_example.yaml").read_text())
    config["data"].update(path=str(folder), **data)
    return config


def _train(runner, tmp_path, data: dict, *args) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    result = runner.invoke(app, ["train", str(path), "--runs-dir", str(tmp_path / "runs"), *args])
    assert result.exit_code == 0, result.output
    (run,) = (tmp_path / "runs").iterdir()
    return run


def test_shapes_folder_trains_and_every_command_names_the_classes(runner, tmp_path):
    folder = write_shapes_folder(tmp_path / "shapes", per_class=150)
    run = _train(runner, tmp_path, shapes_config(folder))
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test_accuracy"] >= 0.85, metrics
    assert set(metrics["test_accuracy_per_class"]) == set(SHAPES)
    record = json.loads((run / "data.json").read_text())
    assert record["classes"] == list(SHAPES) and record["sample_shape"] == [32, 32, 3]
    assert record["predict_preprocess"] == "none" and record["samples"]["test"] == 90  # 20% of 450
    assert len(record["test_files"]) == 90 and all(f.split("/")[0] in SHAPES for f in record["test_files"])

    result = runner.invoke(app, ["evaluate", str(run)])
    assert result.exit_code == 0, result.output
    assert "90 samples" in result.output
    for kind in SHAPES:
        assert kind in result.output
    assert (run / "evaluation" / "confusion_matrix.png").exists()

    pictures = tmp_path / "mine"
    pictures.mkdir()
    rng = np.random.default_rng(99)
    for kind in SHAPES:  # new pictures, larger than the training ones, one of them greyscale
        draw_shape(kind, rng, size=120).save(pictures / f"{kind}.png")
    draw_shape("circle", rng, size=64).convert("L").save(pictures / "grey_circle.png")
    result = runner.invoke(app, ["predict", str(run), str(pictures), "--json"])
    assert result.exit_code == 0, result.output
    answers = {Path(p["file"]).stem: p for p in json.loads(result.stdout)["predictions"]}
    assert json.loads(result.stdout)["preprocess"] == "none"
    assert {p["name"] for p in answers.values()} <= set(SHAPES)
    right = sum(answers[kind]["name"] == kind for kind in SHAPES)
    assert right >= 2, answers
    assert answers["circle"]["class"] == SHAPES.index(answers["circle"]["name"])
    text = runner.invoke(app, ["predict", str(run), str(pictures / "square.png")]).output
    name = answers["square"]["name"]
    assert f"{name} [{SHAPES.index(name)}]" in text  # the class and its index


@needs_data
def test_digit_folder_trains_and_reads_real_digits_with_mnist_preparation(runner, tmp_path):
    folder = write_digit_folder(tmp_path / "digits", per_class=120)
    data = {
        "name": "digits", "seed": 1,
        "data": {"dataset": "folder", "path": str(folder), "predict_preprocess": "mnist",
                 "test_split": {"size": 0.2, "random_state": 5}},
        "model": {"layers": [
            {"type": "conv2d", "filters": 16, "kernel_size": 5, "activation": "relu"},
            {"type": "max_pooling2d", "pool_size": 2},
            {"type": "flatten"},
            {"type": "dense", "units": 64, "activation": "relu"},
            {"type": "dense", "units": 10, "activation": "softmax"},
        ]},
        "train": {"epochs": 6, "batch_size": 32},
    }
    run = _train(runner, tmp_path, data)
    record = json.loads((run / "data.json").read_text())
    assert record["classes"] == sorted(DIGIT_NAMES)  # Keras' order: folder names sorted
    assert record["image_size"] == [28, 28] and record["color"] == "grayscale"  # from the first image
    assert json.loads((run / "metrics.json").read_text())["test_accuracy"] >= 0.85
    seven = Path(__file__).parent.parent.parent / "shared" / "digits"
    result = runner.invoke(app, ["predict", str(run), str(seven), "--json"])
    document = json.loads(result.stdout)
    assert document["preprocess"] == "mnist"
    truth = {row["file"]: int(row["label"]) for row in csv.DictReader((seven / "manifest.csv").open())}
    right = sum(DIGIT_NAMES[truth[str(Path(p["file"]).relative_to(seven))]] == p["name"]
                for p in document["predictions"])
    assert right / len(document["predictions"]) >= 0.6  # 1,200 training digits, 6 epochs


def test_csv_manifest_with_a_fixed_test_split(runner, tmp_path):
    folder = write_shapes_folder(tmp_path / "pics", per_class=40)
    rows = []
    for kind in SHAPES:
        for i, file in enumerate(sorted((folder / kind).iterdir())):
            rows.append({"file": f"pics/{kind}/{file.name}", "label": kind.upper(), "split": "test" if i < 8 else ""})
    manifest = tmp_path / "labels.csv"
    with manifest.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, ["file", "label", "split"])
        writer.writeheader()
        writer.writerows(rows)
    data = shapes_config(folder)
    data["data"].update(dataset="csv", path=str(manifest))
    run = _train(runner, tmp_path, data)
    record = json.loads((run / "data.json").read_text())
    assert record["classes"] == ["CIRCLE", "SQUARE", "TRIANGLE"] and record["test_split"] == "fixed"
    assert sorted(record["test_files"]) == sorted(r["file"] for r in rows if r["split"] == "test")
    result = runner.invoke(app, ["evaluate", str(run), "--json"])
    assert json.loads(result.stdout)["samples"] == 24


def test_the_test_split_is_recorded_and_evaluate_scores_the_same_images(runner, tmp_path):
    folder = write_shapes_folder(tmp_path / "shapes", per_class=30)
    data = shapes_config(folder, test_split={"size": 0.3, "random_state": 11})
    data["train"]["epochs"] = 1
    run = _train(runner, tmp_path, data)
    tested = json.loads((run / "data.json").read_text())["test_files"]
    assert len(tested) == 27
    # the test images never trained: none is in the validation or training rows
    cfg = validate_config(data, "c")
    info = describe(cfg.data)
    loaded = load(cfg.data, info)
    splits = prepare(cfg, info.sample_shape, False, loaded)
    assert not {loaded.files[i] for i in splits.x_train.rows} & set(tested)
    assert not {loaded.files[i] for i in splits.x_val.rows} & set(tested)
    # a picture added afterwards changes the folder, not what evaluate scores
    draw_shape("square", np.random.default_rng(5)).save(folder / "square" / "late.png")
    result = runner.invoke(app, ["evaluate", str(run), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["samples"] == 27
    (folder / tested[0]).unlink()
    result = runner.invoke(app, ["evaluate", str(run)])
    assert result.exit_code == 2 and tested[0] in result.stderr and "no longer" in result.stderr


def test_the_decoded_images_are_cached_and_a_changed_file_decodes_again(tmp_path):
    folder = write_shapes_folder(tmp_path / "shapes", per_class=10)
    manifest = scan("folder", str(folder), "c")
    cfg = validate_config(shapes_config(folder), "c")
    spec = describe(cfg.data).spec
    decoded = []

    def progress(total, label):
        from contextlib import contextmanager

        @contextmanager
        def bar():
            yield decoded.append

        return bar()

    first, bad = decoded_images(manifest, spec, tmp_path / "cache", progress)
    assert sum(decoded) == 30 and not bad and isinstance(first, RowFile)
    again, _ = decoded_images(manifest, spec, tmp_path / "cache", progress)
    assert sum(decoded) == 30  # nothing decoded the second time
    np.testing.assert_array_equal(again[:], first[:])
    # a changed file (same name) invalidates the cache
    changed = folder / manifest.files[4]
    draw_shape("triangle", np.random.default_rng(1), size=40).save(changed, format="PNG" if changed.suffix == ".png" else "JPEG")
    os.utime(changed, ns=(changed.stat().st_atime_ns, changed.stat().st_mtime_ns + 10**9))
    third, _ = decoded_images(manifest, spec, tmp_path / "cache", progress)
    assert sum(decoded) == 60
    assert not np.array_equal(third[[4]], first[[4]]) and np.array_equal(third[[5]], first[[5]])
    # another image size is another cache entry; the entry for 32x32 stays one folder
    assert len([p for p in (tmp_path / "cache").iterdir() if not p.name.startswith(".")]) == 1


def test_hidden_files_other_extensions_and_mixed_modes_are_handled(tmp_path):
    folder = write_shapes_folder(tmp_path / "shapes", per_class=6)
    (folder / "circle" / ".DS_Store").write_bytes(b"\x00\x01")
    (folder / "circle" / "notes.txt").write_text("not an image")
    (folder / ".hidden").mkdir()
    (folder / ".hidden" / "x.png").write_bytes(b"")
    Image.new("LA", (20, 30), (80, 200)).save(folder / "square" / "grey_alpha.png")
    Image.new("P", (50, 20)).save(folder / "square" / "palette.gif")
    Image.new("I;16", (33, 33), 30000).save(folder / "triangle" / "sixteen.png")
    cfg = validate_config(shapes_config(folder), "c")
    info = describe(cfg.data)
    assert info.class_names == SHAPES
    data = load(cfg.data, info)
    assert len(data.files) == 21 and not data.skipped
    assert data.images[:].shape == (21, 32, 32, 3) and data.images[:].dtype == np.uint8


def test_unreadable_images_are_counted_and_can_be_skipped(runner, tmp_path):
    folder = write_shapes_folder(tmp_path / "shapes", per_class=20)
    (folder / "circle" / "empty.png").write_bytes(b"")
    whole = (folder / "square" / "square001.png").read_bytes()
    (folder / "square" / "cut.png").write_bytes(whole[: len(whole) // 2])
    data = shapes_config(folder)
    data["train"]["epochs"] = 1
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    result = runner.invoke(app, ["train", str(path), "--runs-dir", str(tmp_path / "runs")])
    assert result.exit_code == 2
    assert "2 of 62 images cannot be read" in result.stderr and "circle/empty.png" in result.stderr
    assert "square/cut.png" in result.stderr and "data.skip_bad_images" in result.stderr
    run = _train(runner, tmp_path, data, "--set", "data.skip_bad_images=true")
    assert "2 unreadable files skipped" in runner.invoke(app, ["train", str(path), "--runs-dir", str(tmp_path / "r2"),
                                                               "--set", "data.skip_bad_images=true"]).output
    assert json.loads((run / "data.json").read_text())["skipped_files"] == ["circle/empty.png", "square/cut.png"]


def _layer_classes(keras_file: Path) -> list[str]:
    with zipfile.ZipFile(keras_file) as archive:
        config = json.loads(archive.read("config.json"))
    return [layer["class_name"] for layer in config["config"]["layers"]]


def test_augmentation_changes_training_batches_only_and_never_the_saved_models(runner, tmp_path):
    folder = write_shapes_folder(tmp_path / "shapes", per_class=30)
    data = shapes_config(folder, augment={"rotation": 0.1, "translation": 0.1, "zoom": 0.1, "contrast": 0.2,
                                          "flip": "horizontal"})
    data["train"]["epochs"] = 2
    run = _train(runner, tmp_path, data)
    for model_file in (run / "best.keras", run / "resume" / "state.keras"):
        classes = _layer_classes(model_file)
        assert not [name for name in classes if name.startswith("Random")], classes
    from cnnlab.litert import LiteModel

    lite = LiteModel(run / "model.tflite")
    x = np.random.default_rng(0).random((3, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(lite.predict(x), lite.predict(x))  # no randomness left at prediction

    # the pipeline really augments: two passes over the same batch differ, the validation batches do not
    import keras

    from cnnlab.data.pipeline import augmentation, epoch_batches, ordered_batches

    cfg = validate_config(data, "c")
    info = describe(cfg.data)
    splits = prepare(cfg, info.sample_shape, False, load(cfg.data, info))
    augment = augmentation(keras, cfg.data.augment, info, 255.0, info.sample_shape, seed=1)
    train_batches, _ = epoch_batches(splits.x_train, splits.y_train, 8, seed=1, first_epoch=0, epochs=2, augment=augment)
    plain_batches, _ = epoch_batches(splits.x_train, splits.y_train, 8, seed=1, first_epoch=0, epochs=2)
    augmented, plain = next(iter(train_batches))[0].numpy(), next(iter(plain_batches))[0].numpy()
    assert augmented.shape == plain.shape and not np.allclose(augmented, plain)
    val = [x.numpy() for x, _ in ordered_batches(splits.x_val, splits.y_val, 8)]
    np.testing.assert_array_equal(np.concatenate(val), np.asarray(splits.x_val))


@needs_data
def test_mnist_at_another_size_and_in_colour(runner, tmp_path, write_config):
    data = {
        "name": "mnist32", "seed": 2,
        "data": {"dataset": "mnist", "image_size": [32, 32], "color": "rgb", "train_samples": 3000,
                 "test_samples": 500},
        "model": {"layers": [
            {"type": "conv2d", "filters": 8, "kernel_size": 5, "activation": "relu"},
            {"type": "max_pooling2d", "pool_size": 2},
            {"type": "flatten"},
            {"type": "dense", "units": 10, "activation": "softmax"},
        ]},
        "train": {"epochs": 2},
    }
    run = _train(runner, tmp_path, data)
    # conv 5x5 over 3 channels: 5*5*3*8 + 8 = 608; 32-4 = 28 -> pooled 14x14x8 -> dense 1568*10 + 10
    assert "Total params: 16,298" in (run / "summary.txt").read_text()
    assert json.loads((run / "metrics.json").read_text())["test_accuracy"] >= 0.8
    digit = Path(__file__).parent.parent.parent / "shared" / "digits"
    one = sorted(digit.rglob("*.png"))[0]
    result = runner.invoke(app, ["predict", str(run), str(one), "--json", "--explain", str(tmp_path / "why")])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["preprocess"] == "mnist"  # a digit model keeps MNIST's preparation
    assert len(list((tmp_path / "why").glob("*.png"))) == 1


def test_a_folder_with_train_and_test_folders_keeps_its_test_set(tmp_path):
    folder = write_shapes_folder(tmp_path / "split", per_class=12, test_per_class=4)
    cfg = validate_config(shapes_config(folder), "c")
    info = describe(cfg.data)
    assert info.class_names == SHAPES and (info.train_size, info.test_size) == (36, 12)
    data = load(cfg.data, info)
    splits = prepare(cfg, info.sample_shape, False, data)
    assert data.fixed_test and sorted(splits.test_files) == sorted(
        f"test/{kind}/{file.name}" for kind in SHAPES for file in (folder / "test" / kind).iterdir())
    assert all(data.files[i].startswith("train/") for i in [*splits.x_train.rows, *splits.x_val.rows])
    from cnnlab.data import data_record

    assert data_record(data, splits, cfg.data)["test_split"] == "fixed"


def test_large_photos_decode_on_threads_to_the_same_rows(tmp_path):
    """Photos (here 300 KB PNGs of noise) take the threaded path; each row is what predict would see."""
    from cnnlab.data.cache import decode_file

    rng = np.random.default_rng(0)
    for kind in ("a", "b"):
        (tmp_path / "photos" / kind).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (320, 320, 3), dtype=np.uint8)).save(tmp_path / "photos" / kind / f"{i}.png")
    manifest = scan("folder", str(tmp_path / "photos"), "c")
    assert min((tmp_path / "photos" / f).stat().st_size for f in manifest.files) > 64 * 1024
    spec = describe(validate_config(shapes_config(tmp_path / "photos"), "c").data).spec
    images, bad = decoded_images(manifest, spec, tmp_path / "cache")
    assert not bad
    for i in range(len(manifest.files)):
        np.testing.assert_array_equal(images[[i]][0], decode_file(manifest.path(i), spec))


def test_the_garbage_collector_is_paused_while_decoding_and_back_on_after_it(tmp_path):
    """Decoding pauses Python's collector (it walked every imported object between files) and
    always turns it back on: left off, the rest of a training run would never free a cycle."""
    import gc
    from contextlib import contextmanager

    folder = write_shapes_folder(tmp_path / "shapes", per_class=4)
    manifest = scan("folder", str(folder), "c")
    spec = describe(validate_config(shapes_config(folder), "c").data).spec
    seen = []

    def progress(total, label, stop=False):
        @contextmanager
        def bar():
            def update(n):
                seen.append(gc.isenabled())
                if stop:
                    raise KeyboardInterrupt  # Ctrl-C while the bar updates

            yield update

        return bar()

    assert gc.isenabled()
    decoded_images(manifest, spec, tmp_path / "cache", progress)
    assert seen and not any(seen) and gc.isenabled()
    with pytest.raises(KeyboardInterrupt):
        decoded_images(manifest, spec, tmp_path / "other-cache", lambda t, label: progress(t, label, stop=True))
    assert gc.isenabled()


def test_a_relative_data_path_is_read_from_the_config_files_folder(runner, tmp_path, monkeypatch):
    """Issue 27: `data.path: photos` worked only from the folder the run was trained in."""
    project = tmp_path / "project"
    write_shapes_folder(project / "photos", per_class=10)
    (project / "configs").mkdir()
    data = shapes_config(Path("../photos"))
    data["train"]["epochs"] = 1
    (project / "configs" / "x.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    for folder in ("elsewhere", "third"):
        (tmp_path / folder).mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    result = runner.invoke(app, ["train", "../project/configs/x.yaml", "--runs-dir", str(tmp_path / "runs"), "-q"])
    assert result.exit_code == 0, result.output
    (run,) = (tmp_path / "runs").iterdir()
    assert yaml.safe_load((run / "config.yaml").read_text())["data"]["path"] == str(project / "photos")
    monkeypatch.chdir(tmp_path / "third")
    for args in (["evaluate", str(run)], ["export", str(run), "-f", "tflite"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
    # a run written before the path was recorded absolute: its data.json's folder is used
    config = (run / "config.yaml").read_text()
    (run / "config.yaml").write_text(config.replace(f"path: {project / 'photos'}", "path: photos"))
    result = runner.invoke(app, ["evaluate", str(run), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["samples"] == 6


def test_a_data_path_that_is_not_there_is_named_absolute(runner, tmp_path, monkeypatch):
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "x.yaml").write_text(yaml.safe_dump(shapes_config(Path("photos"))))
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["train", "conf/x.yaml", "--runs-dir", str(tmp_path / "runs")])
    assert result.exit_code == 2
    assert f"data.path: {tmp_path / 'conf' / 'photos'} does not exist" in result.stderr
    # given on the command line, a path is read from the current directory, as any command-line path
    result = runner.invoke(app, ["train", "conf/x.yaml", "--set", "data.path=mine", "--runs-dir", str(tmp_path / "r")])
    assert result.exit_code == 2
    assert f"data.path: {tmp_path / 'mine'} does not exist" in result.stderr


def test_a_row_file_reads_slices_and_rows_in_any_order_as_numpy_does(tmp_path):
    rows = np.random.default_rng(0).integers(0, 256, (300, 7, 5, 3), dtype=np.uint8)
    np.save(tmp_path / "images.npy", rows)
    file = RowFile(tmp_path / "images.npy")
    assert len(file) == 300 and file.shape == rows.shape
    for which in (slice(0, 256), slice(256, 300), slice(290, 400), slice(10, 10), slice(3, 60, 7),
                  [299, 0, 5, 5, 150]):
        got = file[which]
        assert got.dtype == np.uint8 and got.flags.writeable  # a batch of its own, not a view of the file
        np.testing.assert_array_equal(got, rows[which])
    with open(tmp_path / "images.npy", "r+b") as handle:  # a cache file cut short (a full disk, a copy stopped)
        handle.truncate(handle.seek(0, 2) - 100)
    with pytest.raises(OSError, match="images.npy: ends before row 299"):
        RowFile(tmp_path / "images.npy")[250:300]


def test_a_cache_file_cut_short_is_decoded_again(tmp_path):
    from cnnlab.config import DataSection

    folder = write_shapes_folder(tmp_path / "shapes", per_class=10)
    data = DataSection(dataset="folder", path=str(folder), image_size=[16, 16], cache_dir=str(tmp_path / "cache"))
    first = load(data, describe(data)).images[:]
    [cached] = (tmp_path / "cache").glob("*/images.npy")
    whole = cached.stat().st_size
    with open(cached, "r+b") as handle:
        handle.truncate(whole // 2)
    again = load(data, describe(data))
    np.testing.assert_array_equal(again.images[:], first)
    [cached] = (tmp_path / "cache").glob("*/images.npy")
    assert cached.stat().st_size == whole
