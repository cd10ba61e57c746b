"""Every user mistake: one line on stderr naming the file and field, exit code 2, no traceback.

Each row is what a user did and the words the message must contain, checked through the
command line. The finer points of reading images and model files are tested with their
modules (test_preprocess.py, test_checkpoint.py); here each reaches the user as one line.
"""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import sys
from pathlib import Path

import keras
import pytest
import yaml
from PIL import Image

from cnnlab.cli import app, main

from conftest import DATA_DIR, REPO, free_port, needs_data, small_dnn
from test_checkpoint import save_model, zip_bomb
from test_own_data import shapes_config, write_shapes_folder
from test_preprocess import _png_header, draw_digit


def _layers(data):
    return data["model"]["layers"]


def _conv(data, **conv):
    data["model"]["layers"] = [
        {"type": "conv2d", "filters": 4, "kernel_size": 3},
        {"type": "max_pooling2d", "pool_size": 2},
        {"type": "conv2d", "filters": 4, "kernel_size": 3, **conv},
        {"type": "flatten"},
        {"type": "dense", "units": 10, "activation": "softmax"},
    ]


# (id, change to small_dnn(), extra CLI args, words the message must contain)
CONFIG_CASES = [
    ("unknown top-level key", lambda d: d.update(trian={}), [], ["unknown key 'trian'", "did you mean 'train'"]),
    ("unknown nested key", lambda d: d["train"].update(epoch=3), [], ["train.epoch", "did you mean 'epochs'"]),
    ("unknown layer type", lambda d: _layers(d)[1].update(type="Dense"), [], ["model.layers[1].type", "'dense'"]),
    ("layer type typo", lambda d: _layers(d)[0].update(type="flaten"), [], ["model.layers[0].type", "'flatten'"]),
    ("missing units", lambda d: _layers(d)[1].pop("units"), [], ["model.layers[1].units", "missing"]),
    ("missing layer type", lambda d: _layers(d)[1].pop("type"), [], ["model.layers[1]", "missing `type`"]),
    ("missing name", lambda d: d.pop("name"), [], ["name", "missing"]),
    ("missing model", lambda d: d.pop("model"), [], ["model", "missing"]),
    ("empty layer list", lambda d: d["model"].update(layers=[]), [], ["model.layers", "at least 1"]),
    ("units as text", lambda d: _layers(d)[1].update(units="ten"), [], ["model.layers[1].units", "'ten'"]),
    ("negative units", lambda d: _layers(d)[1].update(units=-5), [], ["model.layers[1].units", "-5"]),
    ("zero filters", lambda d: _conv(d, filters=0), [], ["model.layers[2].filters", "greater than 0"]),
    ("zero kernel", lambda d: _conv(d, kernel_size=[3, 0]), [], ["model.layers[2].kernel_size[1]"]),
    ("zero epochs", lambda d: d["train"].update(epochs=0), [], ["train.epochs", "greater than 0"]),
    ("negative batch size", lambda d: d["train"].update(batch_size=-32), [], ["train.batch_size", "-32"]),
    ("dropout rate 1", lambda d: _layers(d).insert(2, {"type": "dropout", "rate": 1}), [], ["model.layers[2].rate", "less than 1"]),
    ("dropout rate negative", lambda d: _layers(d).insert(2, {"type": "dropout", "rate": -0.1}), [], ["model.layers[2].rate"]),
    ("unknown activation", lambda d: _layers(d)[1].update(activation="Relu"), [], ["model.layers[1].activation", "'relu'"]),
    ("unknown optimizer", lambda d: d["train"].update(optimizer={"name": "sgdm"}), [], ["train.optimizer.name", "'sgd'"]),
    ("option of another optimizer", lambda d: d["train"].update(optimizer={"name": "adam", "nesterov": True}), [], ["train.optimizer.nesterov"]),
    ("negative learning rate", lambda d: d["train"].update(optimizer={"name": "sgd", "learning_rate": -1}), [], ["train.optimizer.learning_rate"]),
    ("learning rate .nan", lambda d: d["train"].update(optimizer={"name": "adam", "learning_rate": float("nan")}), [],
     ["train.optimizer.learning_rate", "finite number", "nan"]),
    ("learning rate .inf", lambda d: d["train"].update(optimizer={"name": "adam", "learning_rate": float("inf")}), [],
     ["train.optimizer.learning_rate", "finite number", "inf"]),
    ("scale .inf", lambda d: d["data"].update(scale=float("inf")), [], ["data.scale", "finite number", "inf"]),
    ("quoted number", lambda d: d["train"].update(optimizer={"name": "adam"}), ["--set", "train.optimizer.learning_rate='1e-3'"],
     ["(from --set)", "train.optimizer.learning_rate", "'1e-3' is text because it is quoted", "without quotes"]),
    ("unknown loss", lambda d: d["train"].update(loss="cross_entropy"), [], ["train.loss", "'cross_entropy'"]),
    ("unknown metric", lambda d: d["train"].update(metrics=["acc"]), [], ["train.metrics[0]", "did you mean 'accuracy'"]),
    ("metrics not a list", lambda d: d["train"].update(metrics="accuracy"), [], ["train.metrics"]),
    ("binary CE on 10 classes", lambda d: d["train"].update(loss="binary_crossentropy"), [], ["train.loss", "2 classes", "10"]),
    ("output units do not match classes", lambda d: _layers(d)[-1].update(units=5), [], ["model.layers[2].units", "10 classes"]),
    ("10-unit output on 2 classes", lambda d: d["data"].update(dataset="xor", validation={"method": "none"}),
     ["--set", "train.checkpoint.monitor=loss"], ["units", "xor has 2 classes"]),
    ("kernel larger than its input", lambda d: _conv(d, kernel_size=16), [], ["model.layers[2] (conv2d)", "16x16", "13x13x4"]),
    ("pooling below one pixel", lambda d: _layers(d).__setitem__(slice(0, 0), [
        {"type": "max_pooling2d", "pool_size": 14}, {"type": "max_pooling2d", "pool_size": 4}]),
     [], ["model.layers[1] (max_pooling2d)", "pool 4x4", "2x2x1"]),
    ("conv after flatten", lambda d: _layers(d).insert(1, {"type": "conv2d", "filters": 2, "kernel_size": 1}),
     [], ["model.layers[1] (conv2d)", "needs an image input"]),
    ("conv on a data set of points", lambda d: d["data"].update(dataset="xor", validation={"method": "none"})
     or _layers(d).__setitem__(0, {"type": "conv2d", "filters": 2, "kernel_size": 1}),
     ["--set", "train.checkpoint.monitor=loss"], ["model.layers[0] (conv2d)", "got shape (2,)", "xor samples are not images"]),
    ("no flatten before dense", lambda d: _conv(d) or _layers(d).pop(3), [], ["add a flatten layer"]),
    ("monitor without validation", lambda d: d["data"].update(validation={"method": "none"}), [],
     ["train.checkpoint.monitor", "val_accuracy", "no val_*"]),
    ("monitor typo", lambda d: d["train"].update(early_stopping={"monitor": "val_acc"}), [],
     ["train.early_stopping.monitor", "'val_acc'", "did you mean 'val_accuracy'"]),
    ("validation size above 1", lambda d: d["data"]["validation"].update(size=20), [], ["data.validation.size"]),
    ("unknown validation method", lambda d: d["data"]["validation"].update(method="random"), [], ["data.validation.method", "stratified"]),
    ("scale zero", lambda d: d["data"].update(scale=0), [], ["data.scale"]),
    ("seed as text", lambda d: d.update(seed="abc"), [], ["seed", "'abc'"]),
    ("unknown dataset", lambda d: d["data"].update(dataset="mnist2"), [], ["data.dataset", "did you mean 'mnist'"]),
    ("run name escaping runs dir", lambda d: d.update(name="../../x"), [], ["name", "'../../x'", "not a valid run name"]),
    ("section not a mapping", lambda d: d.update(train=5), [], ["train", "expected a mapping"]),
    ("--set bad index", lambda d: None, ["--set", "model.layers[9].units=3"], ["model.layers[9]", "does not exist"]),
    ("--set without value", lambda d: None, ["--set", "train.epochs"], ["--set", "KEY=VALUE"]),
    ("--set bad value", lambda d: None, ["--set", "train.epochs=many"], ["(from --set)", "train.epochs", "'many'"]),
    ("--set into a number", lambda d: None, ["--set", "train.epochs.max=3"], ["train.epochs", "not a mapping"]),
    ("--set unknown key", lambda d: None, ["--set", "train.patience=3"], ["unknown key 'train.patience'"]),
    ("--set empty key part", lambda d: None, ["--set", "train..epochs=3"], ["'train..epochs'", "not a key path"]),
    ("--set layer type typo", lambda d: None, ["--set", "model.layers[1].type=dens"],
     ["(from --set)", "model.layers[1].type", "'dense'"]),
    ("yes as a number", lambda d: _layers(d)[1].update(units=True), [], ["model.layers[1].units", "integer", "True"]),
    ("fraction as a count", lambda d: d["train"].update(epochs=2.5), [], ["train.epochs", "2.5"]),
    ("kernel size as a fraction", lambda d: _conv(d, kernel_size=2.5), [],
     ["model.layers[2].kernel_size", "like 5 or a pair", "2.5"]),
    ("misspelt required key", lambda d: _layers(d)[1].update(unitz=_layers(d)[1].pop("units")), [],
     ["unknown key 'model.layers[1].unitz'", "did you mean 'units'"]),
    ("more samples than the data set", lambda d: d["data"].update(train_samples=70000), [],
     ["data.train_samples", "70000", "60,000"]),
    ("model too large for memory", lambda d: None, ["--set", "model.layers[1].units=1000000000"],
     ["model.layers[1] (dense) has 785,000,000,000 parameters (2.9 TiB as float32)", "TiB to train",
      "of memory free", "use fewer units"]),
    ("stratified split too small for the classes", lambda d: d["data"].update(train_samples=15), [],
     ["data.validation", "15 samples", "10 classes"]),
    ("flipping digits", lambda d: d["data"].update(augment={"flip": "horizontal"}), [],
     ["data.augment.flip", "mirrored digit"]),
    ("augment rotation of a whole turn", lambda d: d["data"].update(augment={"rotation": 2}), [],
     ["data.augment.rotation", "0.5"]),
    ("image size for points", lambda d: d["data"].update(dataset="xor", image_size=[8, 8], validation={"method": "none"}),
     ["--set", "train.checkpoint.monitor=loss"], ["data.image_size", "xor is not an image data set"]),
    ("folder without a path", lambda d: d["data"].update(dataset="folder"), [], ["data.path", "needs a path"]),
    ("a path for a built-in set", lambda d: d["data"].update(path="photos/"), [],
     ["data.path", "mnist is built in", "dataset: folder or csv"]),
    ("unknown colour", lambda d: d["data"].update(color="rbg"), [], ["data.color", "did you mean 'rgb'"]),
    ("optimizer typo", lambda d: d["train"].update(optimizer={"name": "adamW"}), [],
     ["train.optimizer.name", "did you mean 'adamw'", "nadam"]),
    ("schedule typo", lambda d: d["train"].update(lr_schedule={"name": "cosine_decay"}), [],
     ["train.lr_schedule.name", "unknown learning-rate schedule 'cosine_decay'", "did you mean 'cosine'"]),
    ("schedule key typo", lambda d: d["train"].update(lr_schedule={"name": "step", "every_epoch": 3}), [],
     ["train.lr_schedule.every_epoch", "did you mean 'every_epochs'"]),
    ("metric typo", lambda d: d["train"].update(metrics=["accuracy", "precission"]), [],
     ["train.metrics[1]", "did you mean 'precision'"]),
    ("top-k of all the classes", lambda d: d["train"].update(metrics=["top_10_accuracy"]), [],
     ["train.metrics[0]", "top_10_accuracy is always 1", "k below 10"]),
    ("loss option typo", lambda d: d["train"].update(loss={"name": "categorical_crossentropy", "from_logit": True}), [],
     ["train.loss.from_logit", "did you mean 'from_logits'"]),
    ("relu output with a probabilities loss", lambda d: None, ["--set", "model.layers[2].activation=relu"],
     ["model.layers[2] (dense) has activation relu", "sparse_categorical_crossentropy takes probabilities",
      "use activation: softmax", "train.loss.from_logits: true"]),
    ("softmax folded into an activation layer, then relu", lambda d: _layers(d).append({"type": "activation", "activation": "relu"}),
     [], ["model.layers[3] (activation) has activation relu"]),
    ("softmax output with from_logits", lambda d: d["train"].update(loss={"name": "sparse_categorical_crossentropy",
                                                                          "from_logits": True}), [],
     ["model.layers[2] (dense) has activation softmax", "from_logits is true", "use activation: linear"]),
    ("plateau monitor typo", lambda d: d["train"].update(lr_schedule={"name": "reduce_on_plateau", "monitor": "val_los"}),
     [], ["train.lr_schedule.monitor", "'val_los'", "did you mean 'val_loss'"]),
    ("cosine warm-up as long as training", lambda d: d["train"].update(lr_schedule={"name": "cosine", "warmup_epochs": 3}),
     [], ["train.lr_schedule.warmup_epochs", "3 warm-up epochs", "train.epochs"]),
    ("both clippings", lambda d: d["train"].update(optimizer={"name": "sgd", "clipnorm": 1.0, "global_clipnorm": 1.0}), [],
     ["train.optimizer", "clipnorm or global_clipnorm, not both"]),
    ("label smoothing in the tape loop", lambda d: d["train"].update(
        loop="gradient_tape", loss={"name": "sparse_categorical_crossentropy", "label_smoothing": 0.1}), [],
     ["train.loop: gradient_tape", "train.loss.label_smoothing"]),
    ("init_from that is not there", lambda d: d["train"].update(init_from="runs/nope"), [],
     ["train.init_from: runs/nope", "no such run directory or model file"]),
    ("init_from not a model file", lambda d: d["train"].update(init_from=str(REPO / "README.md")), [],
     ["train.init_from", "README.md", "not a run directory or a .keras, .h5, .hdf5 file"]),
    ("--set append beyond the end", lambda d: None, ["--set", "model.layers[4]={type: dropout, rate: 0.1}"],
     ["model.layers[4] does not exist", "[3] appends one"]),
]


@pytest.mark.parametrize("change, args, words", [case[1:] for case in CONFIG_CASES],
                         ids=[case[0] for case in CONFIG_CASES])
def test_config_mistakes(runner, write_config, tmp_path, change, args, words):
    data = small_dnn()
    change(data)
    path = write_config(data)
    _assert_user_error(runner, ["train", str(path), "--runs-dir", str(tmp_path / "runs"), *args], words)
    assert not (tmp_path / "runs").exists()  # nothing was started


def test_the_output_activation_must_suit_the_loss_on_a_shipped_config(runner):
    """Issue 11: `--set model.layers[7].activation=relu` on configs/cnn.yaml was accepted and trained badly."""
    cnn = str(REPO / "configs" / "cnn.yaml")
    message = _assert_user_error(runner, ["config", cnn, "--set", "model.layers[7].activation=relu"],
                                 ["model.layers[7] (dense) has activation relu", "use activation: softmax"])
    assert message.startswith(f"error: {cnn}")
    # logits with a loss told so are fine
    result = runner.invoke(app, ["config", cnn, "--set", "model.layers[7].activation=linear",
                                 "--set", "train.loss.from_logits=true"])
    assert result.exit_code == 0, result.output
    assert yaml.safe_load(result.stdout)["train"]["loss"]["from_logits"] is True


FILE_CASES = [
    ("missing file", None, ["config file not found"]),
    ("empty file", "", ["empty"]),
    ("only a comment", "# nothing here\n", ["empty"]),
    ("not YAML", "name: cnn\nmodel: {layers: [\n", ["not valid YAML", "line"]),
    ("YAML list", "- name: cnn\n", ["mapping", "list"]),
    ("YAML scalar", "just text\n", ["mapping", "str"]),
    ("python tag", "name: !!python/object/apply:os.system ['true']\n", ["not valid YAML"]),
    ("binary file", b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe", ["not a text file"]),
    ("key given twice", "name: cnn\ntrain: {epochs: 5}\ntrain: {epochs: 50}\n", ["'train' is given twice", "line 3"]),
]


@pytest.mark.parametrize("content, words", [case[1:] for case in FILE_CASES], ids=[case[0] for case in FILE_CASES])
def test_config_file_mistakes(runner, tmp_path, content, words):
    path = tmp_path / "c.yaml"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    message = _assert_user_error(runner, ["train", str(path)], words)
    assert str(path) in message


def _shapes(tmp: Path, per_class: int = 4) -> Path:
    return write_shapes_folder(tmp / "shapes", per_class=per_class)


def _csv(tmp: Path, text: str) -> Path:
    folder = _shapes(tmp)
    path = tmp / "labels.csv"
    path.write_text(text.format(circle=sorted(p.name for p in (folder / "circle").iterdir())[0],
                                square=sorted(p.name for p in (folder / "square").iterdir())[0]))
    return path


def _link_loop(tmp: Path) -> Path:
    folder = _shapes(tmp)
    os.symlink(folder / "circle", folder / "circle" / "again")
    return folder


def _same_picture_twice(tmp: Path) -> Path:
    folder = _shapes(tmp)
    shutil.copy(folder / "circle" / "circle001.png", folder / "square" / "circle001.png")
    return folder


def _split_folders(tmp: Path, test_class: str = "circle", extra: str | None = None) -> Path:
    folder = write_shapes_folder(tmp / "split", per_class=4, test_per_class=2)
    if test_class != "circle":
        (folder / "test" / "circle").rename(folder / "test" / test_class)
    if extra:
        (folder / extra).mkdir()
    return folder


def _one_class_per_image(tmp: Path) -> Path:
    folder = _shapes(tmp, per_class=20)
    for extra in sorted((folder / "triangle").iterdir())[1:]:
        extra.unlink()
    return folder


# (id, makes the data set in a folder and returns (dataset, path), words); each trained with shapes_config
OWN_DATA_CASES = [
    ("path that does not exist", lambda t: ("folder", t / "nowhere"), ["data.path", "nowhere", "does not exist"]),
    ("a file as the folder", lambda t: ("folder", _write(t / "x.txt", "hi")), ["x.txt", "is a file", "dataset: csv"]),
    ("one class", lambda t: ("folder", shutil.rmtree(_shapes(t) / "square") or shutil.rmtree(t / "shapes" / "triangle")
                             or t / "shapes"), ["only one class folder (circle)", "at least two"]),
    ("empty class folder", lambda t: ("folder", (_shapes(t) / "star").mkdir() or t / "shapes"),
     ["shapes/star", "holds no images"]),
    ("class folder of text files", lambda t: ("folder", (_shapes(t) / "star").mkdir() or _write(t / "shapes" / "star" / "a.txt", "x")
                                              and t / "shapes"), ["shapes/star", "holds no images"]),
    ("no images at all", lambda t: ("folder", (t / "none").mkdir() or t / "none"), ["none", "holds no class folders"]),
    ("images but no class folders", lambda t: ("folder", (t / "flat").mkdir() or draw_digit().save(t / "flat" / "a.png")
                                               or t / "flat"), ["flat", "put each class's images in a sub-folder"]),
    ("a text file named .png", lambda t: ("folder", _write(_shapes(t, 10) / "circle" / "notes.png", "my shapes") and t / "shapes"),
     ["1 of 31 images cannot be read", "circle/notes.png", "not an image", "data.skip_bad_images"]),
    ("a truncated image", lambda t: ("folder", _cut(_shapes(t, 10) / "square" / "square001.png") and t / "shapes"),
     ["1 of 30 images cannot be read", "square/square001.png", "truncated"]),
    ("the same picture in two classes", lambda t: ("folder", _same_picture_twice(t)),
     ["circle/circle001.png and square/circle001.png", "same image in two classes"]),
    ("symbolic link loop", lambda t: ("folder", _link_loop(t)), ["circle/again", "symbolic link loop"]),
    ("test class without a training class", lambda t: ("folder", _split_folders(t, test_class="star")),
     ["split/test", "'star'", "no counterpart"]),
    ("train and test beside class folders", lambda t: ("folder", _split_folders(t, extra="dog")),
     ["train/ and test/ beside other folders (dog)"]),
    ("a class too small for a test split", lambda t: ("folder", _one_class_per_image(t)),
     ["'triangle' has 1 readable image", "at least 2 per class"]),
    ("CSV without a file column", lambda t: ("csv", _csv(t, "path,label\nshapes/circle/{circle},circle\n")),
     ["labels.csv", "no 'file' column", "columns found: path, label"]),
    ("CSV with one class", lambda t: ("csv", _csv(t, "file,label\nshapes/circle/{circle},cat\nshapes/square/{square},cat\n")),
     ["labels.csv", "only one class ('cat')"]),
    ("CSV naming a missing file", lambda t: ("csv", _csv(t, "file,label\nshapes/circle/{circle},a\nshapes/gone.png,b\n")),
     ["labels.csv: line 3", "shapes/gone.png does not exist"]),
    ("CSV listing a file twice", lambda t: ("csv", _csv(t, "file,label\nshapes/circle/{circle},a\nshapes/circle/{circle},b\n")),
     ["line 3", "listed twice", "line 2"]),
    ("CSV with a bad split", lambda t: ("csv", _csv(t, "file,label,split\nshapes/circle/{circle},a,val\nshapes/square/{square},b,\n")),
     ["line 2", "split 'val'", "train or test"]),
    ("CSV given as a folder", lambda t: ("csv", _shapes(t)), ["is a folder", "dataset: folder"]),
]


@pytest.mark.parametrize("make, words", [case[1:] for case in OWN_DATA_CASES], ids=[case[0] for case in OWN_DATA_CASES])
def test_own_data_mistakes(runner, tmp_path, make, words):
    dataset, path = make(tmp_path)
    data = shapes_config(Path(path))
    data["data"]["dataset"] = dataset
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(data))
    _assert_user_error(runner, ["train", str(config), "--runs-dir", str(tmp_path / "runs")], words)
    assert not (tmp_path / "runs").exists()  # nothing was started


def _bmp_header(width: int, height: int) -> bytes:
    """A BMP file that declares a size and holds no pixels."""
    import struct

    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 14 + len(info), 0, 0, 14 + len(info)) + info


def _bomb_first(tmp: Path, name: str = "circle/a-bomb.png", header: bytes | None = None, before: str | None = None,
                split: bool = False) -> Path:
    """A shapes folder whose first image (by name) declares 900 megapixels; `before` an unreadable file ahead of it."""
    folder = _split_folders(tmp) if split else _shapes(tmp)
    where = folder / "train" if split else folder
    if before:
        _write(where / before, "not an image")
    return _write(where / name, header or _png_header(30000, 30000)) and folder


def _bomb_csv(tmp: Path) -> Path:
    _bomb_first(tmp)
    return _csv(tmp, "file,label\nshapes/circle/a-bomb.png,a\nshapes/circle/circle001.png,a\nshapes/square/{square},b\n")


# (id, makes the data set and returns (dataset, path), the bomb's name): the image size is left to be guessed
BOMB_CASES = [
    ("the first image of a folder", lambda t: ("folder", _bomb_first(t)), "circle/a-bomb.png"),
    ("after an unreadable image", lambda t: ("folder", _bomb_first(t, before="circle/a-a.png")), "circle/a-bomb.png"),
    ("a BMP header", lambda t: ("folder", _bomb_first(t, "circle/a-bomb.bmp", _bmp_header(30000, 30000))),
     "circle/a-bomb.bmp"),
    ("in a train/ folder", lambda t: ("folder", _bomb_first(t, split=True)), "train/circle/a-bomb.png"),
    ("listed in a CSV file", lambda t: ("csv", _bomb_csv(t)), "circle/a-bomb.png"),
]


@pytest.mark.parametrize("make, bomb", [case[1:] for case in BOMB_CASES], ids=[case[0] for case in BOMB_CASES])
def test_a_decompression_bomb_met_while_the_image_size_is_guessed(runner, tmp_path, make, bomb):
    dataset, path = make(tmp_path)
    data = shapes_config(Path(path))
    data["data"].update(dataset=dataset)
    for key in ("image_size", "color"):
        data["data"].pop(key)
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(data))
    _assert_user_error(runner, ["train", str(config), "--runs-dir", str(tmp_path / "runs")],
                       [bomb, "too large to open safely", "decompression-bomb limit"])
    assert not (tmp_path / "runs").exists()


def test_config_is_a_directory(runner, tmp_path):
    _assert_user_error(runner, ["train", str(tmp_path)], ["is a directory"])


def _data_dir_with(tmp_path, damage):
    """A copy of the real data folder with one file damaged by `damage(path)`."""
    folder = tmp_path / "data" / "mnist"
    folder.mkdir(parents=True)
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                 "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        os.symlink(DATA_DIR / "mnist" / name, folder / name)
    target = folder / "train-labels-idx1-ubyte.gz"
    target.unlink()
    damage(target)
    return tmp_path / "data"


@needs_data
@pytest.mark.parametrize("damage, words", [
    (lambda p: None, ["mnist file not found", "train-labels-idx1-ubyte.gz", "data.dir"]),
    (lambda p: p.write_bytes((DATA_DIR / "mnist" / p.name).read_bytes()[:20000]), ["md5", "corrupt"]),
    (lambda p: p.write_bytes(gzip.compress(b"\x00\x00\x08\x01" + (5).to_bytes(4, "big") + bytes(5))),
     ["md5 is", "expected d53e105ee54ea40749a09fcbcd1e9432"]),
    (lambda p: p.write_bytes(b""), ["md5", "train-labels-idx1-ubyte.gz"]),
], ids=["missing offline", "truncated gz", "wrong md5", "empty file"])
def test_data_mistakes(runner, write_config, tmp_path, damage, words):
    data_dir = _data_dir_with(tmp_path, damage)
    data = small_dnn()
    data["data"]["dir"] = str(data_dir)
    message = _assert_user_error(runner, ["train", str(write_config(data)), "--runs-dir", str(tmp_path / "runs")], words)
    assert "train-labels-idx1-ubyte.gz" in message
    assert not (tmp_path / "runs").exists()


def test_runs_dir_not_writable(runner, write_config, tmp_path):
    blocker = tmp_path / "runs"
    blocker.write_text("a file where the runs folder should be")
    _assert_user_error(runner, ["train", str(write_config(small_dnn())), "--runs-dir", str(blocker)],
                       ["cannot create", str(blocker)])


def test_init_from_a_model_with_a_lambda_layer_is_refused(runner, write_config, tmp_path):
    model = save_model(tmp_path / "lambda.keras", input_shape=(28, 28),
                       layers=(keras.layers.Lambda(lambda x: x * 2.0, name="double"),))
    data = small_dnn()
    data["train"]["init_from"] = str(model)
    _assert_user_error(runner, ["train", str(write_config(data)), "--runs-dir", str(tmp_path / "runs")],
                       ["train.init_from", "Lambda layer (double)", "has to load without running code"])
    assert not (tmp_path / "runs").exists()


def test_resume_with_a_config_is_refused(runner, write_config, tmp_path):
    _assert_user_error(runner, ["train", str(write_config(small_dnn())), "--resume", str(tmp_path)],
                       ["--resume takes no CONFIG"])


@pytest.mark.parametrize("command, change", [
    ("train", lambda d: _conv(d, kernel_size=16)),
    ("train", lambda d: _layers(d)[1].update(units=10**9)),  # 3 TiB of weights: refused, not allocated
    ("summary", lambda d: _layers(d)[1].update(units=10**9)),
    ("config", lambda d: _layers(d)[1].update(units=10**9)),
], ids=["shapes", "memory (train)", "memory (summary)", "memory (config)"])
def test_a_bad_config_fails_before_tensorflow_is_imported(write_config, command, change):
    data = small_dnn()
    change(data)
    code = ("import sys; from typer.testing import CliRunner; from cnnlab.cli import app; "
            f"r = CliRunner().invoke(app, [{command!r}, {str(write_config(data))!r}]); "
            "print(r.exit_code, 'tensorflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["2", "False"]


def _write(path: Path, data: bytes | str) -> Path:
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return path


def _cut(path: Path) -> Path:
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) // 2])
    return path


# (id, makes the image in a folder and returns its path, words); predicted with a good model
IMAGE_CASES = [
    ("missing image", lambda d: d / "nothing.png", ["nothing.png", "no such image file"]),
    ("empty file", lambda d: _write(d / "empty.png", b""), ["empty.png", "empty file"]),
    ("text named .png", lambda d: _write(d / "notes.png", "my digit"),
     ["notes.png", "not an image", "PNG, JPG"]),
    ("truncated PNG", lambda d: draw_digit().save(d / "cut.png") or _cut(d / "cut.png"), ["cut.png", "truncated"]),
    ("1x1 image", lambda d: Image.new("L", (1, 1)).save(d / "dot.png") or d / "dot.png", ["dot.png", "1x1", "too small"]),
    ("0x0 image", lambda d: _write(d / "none.png", _png_header(0, 0)), ["none.png"]),
    ("decompression bomb", lambda d: _write(d / "bomb.png", _png_header(30000, 30000)),
     ["bomb.png", "too large to open safely"]),
    ("blank page", lambda d: Image.new("L", (40, 40), 250).save(d / "blank.png") or d / "blank.png",
     ["blank.png", "found no ink"]),
    ("folder without images", lambda d: (d / "sub").mkdir() or d / "sub", ["sub", "holds no images"]),
]


@pytest.mark.parametrize("make, words", [case[1:] for case in IMAGE_CASES], ids=[case[0] for case in IMAGE_CASES])
def test_image_mistakes(runner, tmp_path, make, words):
    model = save_model(tmp_path / "model.keras")
    (tmp_path / "in").mkdir()
    _assert_user_error(runner, ["predict", str(model), str(make(tmp_path / "in"))], words)


def _lambda_model(d: Path) -> Path:
    return save_model(d / "lambda.keras", layers=(keras.layers.Lambda(lambda x: x * 2.0, name="double"),))


# (id, makes the model file in a folder and returns its path, words); each given to predict
MODEL_CASES = [
    ("missing model", lambda d: d / "gone.keras", ["gone.keras", "no such run directory or model file"]),
    ("not a model file", lambda d: _write(d / "notes.txt", "hi"), ["notes.txt", "not a model file"]),
    ("text named .h5", lambda d: _write(d / "text.h5", "hi"), ["text.h5", "not a complete HDF5"]),
    ("truncated .keras", lambda d: _cut(save_model(d / "cut.keras")), ["cut.keras", "not a complete .keras file"]),
    ("truncated .h5", lambda d: _cut(save_model(d / "cut.h5")), ["cut.h5"]),
    ("model for other images", lambda d: save_model(d / "cifar.keras", input_shape=(32, 32, 3)),
     ["cifar.keras", "(32, 32, 3)", "trained on other data", "28x28"]),
    ("model with other classes", lambda d: save_model(d / "five.keras", outputs=5), ["five.keras", "10 classes"]),
    ("Lambda layer", _lambda_model, ["lambda.keras", "Lambda layer (double)", "--unsafe"]),
    ("zip bomb", lambda d: zip_bomb(d / "bomb.keras", weights_declared=2**32 - 2),
     ["bomb.keras", "refuses", "model.weights.h5 declares 4.0 GiB but stores 1.0 KiB"]),
    ("folder that is not a run", lambda d: (d / "folder").mkdir() or d / "folder", ["folder", "not a cnnlab run directory"]),
    ("a config file", lambda d: _write(d / "cnn.yaml", "name: cnn\n"), ["cnn.yaml", "is a config file", "cnnlab train"]),
    ("a config file named .yml", lambda d: _write(d / "My Net.YML", "name: x\n"),
     ["My Net.YML", "is a config file", "cnnlab train '", "/My Net.YML'"]),
]


@pytest.mark.parametrize("make, words", [case[1:] for case in MODEL_CASES], ids=[case[0] for case in MODEL_CASES])
def test_model_file_mistakes(runner, tmp_path, make, words):
    draw_digit().save(tmp_path / "seven.png")
    _assert_user_error(runner, ["predict", str(make(tmp_path)), str(tmp_path / "seven.png")], words)


@pytest.mark.parametrize("command", [["serve"], ["evaluate"], ["export", "--format", "tflite"], ["report"]])
def test_a_config_given_where_a_run_is_wanted_says_how_to_train_it(runner, tmp_path, command):
    config = _write(tmp_path / "cnn.yaml", "name: cnn\n")
    _assert_user_error(runner, [command[0], str(config), *command[1:]], ["cnn.yaml", "is a config file"])


def test_results_folder_not_writable(runner, tmp_path):
    model = save_model(tmp_path / "model.keras")
    draw_digit().save(tmp_path / "seven.png")
    (tmp_path / "taken").write_text("a file where the folder should go")
    _assert_user_error(runner, ["predict", str(model), str(tmp_path / "seven.png"), "--explain", str(tmp_path / "taken")],
                       ["--explain", "taken", "is a file, not a folder"])
    (tmp_path / "locked").mkdir(mode=0o555)
    _assert_user_error(runner, ["evaluate", str(model), "--out", str(tmp_path / "locked" / "eval")],
                       ["--out", "locked", "read-only"])


@pytest.mark.parametrize("args, words", [
    (["trian"], ["No such command 'trian'", "did you mean 'train'", "cnnlab --help"]),
    (["train", "--epochs", "3"], ["No such option: --epochs", "cnnlab train --help"]),
    (["predict", "m.keras", "x.png", "--top-k", "0"], ["--top-k", "greater than or equal to 1"]),
    (["evaluate", "m.keras", "--dataset", "cifar"],
     ["Invalid value for '--dataset': 'cifar' is not one of 'mnist', 'fashion_mnist'."]),
    (["predict"], ["Missing argument", "cnnlab predict --help"]),
    # numbers that are not: inf and nan parse as floats, but no scale or size means them
    (["predict", "m.keras", "x.png", "--scale", "inf"], ["--scale", "inf is not a finite number"]),
    (["predict", "m.keras", "x.png", "--scale", "-inf"], ["--scale", "-inf is not a finite number"]),
    (["evaluate", "m.keras", "--scale", "nan"], ["--scale", "nan is not a finite number"]),
    (["serve", "runs/x", "--max-upload-mb", "inf"], ["--max-upload-mb", "inf is not a finite number"]),
    (["serve", "runs/x", "--max-upload-mb", "nan"], ["--max-upload-mb", "greater than or equal to 0.001"]),
    (["tune", "configs/tune_cnn.yaml", "--timeout", "inf"], ["a duration is a positive number", "'inf'"]),
], ids=["command typo", "unknown option", "option out of range", "unknown choice", "missing argument",
        "predict --scale inf", "predict --scale -inf", "evaluate --scale nan", "serve --max-upload-mb inf",
        "serve --max-upload-mb nan", "tune --timeout inf"])
def test_command_line_mistakes_are_one_line_too(monkeypatch, capsys, args, words):
    monkeypatch.chdir(REPO)  # configs/tune_cnn.yaml
    monkeypatch.setattr(sys, "argv", ["cnnlab", *args])
    with pytest.raises(SystemExit) as stopped:
        main()
    assert stopped.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    for word in words:
        assert word.lower() in lines[0].lower(), f"{word!r} not in {lines[0]!r}"


def _assert_user_error(runner, args, words) -> str:
    """The error is one line, the last on stderr; before it only status lines of slow steps ("loading mnist ...")."""
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    *status, line = result.stderr.strip().splitlines()
    assert all(earlier.endswith(" ...") and not earlier.startswith("error") for earlier in status), result.stderr
    assert line.startswith("error: ")
    for word in words:
        assert word in line, f"{word!r} not in {line!r}"
    assert "Traceback" not in result.output
    return line


def _backbone_case(tmp: Path, change) -> dict:
    from test_backbone import backbone_config, write_photo_folder

    data = backbone_config(write_photo_folder(tmp / "photos", train=4, test=2))
    change(data, tmp)
    return data


def _backbone(data, **settings):
    data["model"]["backbone"].update(settings)


def _saved_model(tmp: Path) -> str:
    save_model(tmp / "whole.keras", input_shape=(4,), outputs=2)
    return str(tmp / "whole.keras")


# (id, change(config, tmp), words); the config is test_backbone's tiny MobileNet on a photo folder.
# A weights file's layers are compared with the network once TensorFlow has built it: those two
# cases fail in the run they started (marked failed); the others before any run starts.
BUILT = ("weights of another alpha", "weights of another architecture")
BACKBONE_CASES = [
    ("unknown backbone", lambda d, t: _backbone(d, name="mobilenetv2"),
     ["model.backbone.name", "'mobilenetv2' is not a backbone", "did you mean 'mobilenet_v2'"]),
    ("weights of another alpha", lambda d, t: _backbone(d, alpha=0.5),
     ["model.backbone.weights", "layer conv1 does not fit mobilenet alpha 0.5", "3x3x3x8", "another architecture or alpha"]),
    ("weights of another architecture", lambda d, t: _backbone(d, name="mobilenet_v2", alpha=0.35),
     ["model.backbone.weights", "does not fit mobilenet_v2 alpha 0.35"]),
    ("a whole saved model as weights", lambda d, t: _backbone(d, weights=_saved_model(t)),
     ["model.backbone.weights", "whole.keras is a whole saved Keras model", "not a weights file"]),
    ("a text file as weights", lambda d, t: _backbone(d, weights=str(_write(t / "weights.h5", "not weights"))),
     ["model.backbone.weights", "weights.h5 is not an HDF5 weights file"]),
    ("an image size the ImageNet weights do not have", lambda d, t: (_backbone(d, weights="imagenet"),
                                                                     d["data"].update(image_size=[100, 100])),
     ["data.image_size", "ImageNet weights are for square pictures of 128, 160, 192, 224", "not 100x100"]),
    ("an image size below the minimum", lambda d, t: d["data"].update(image_size=[24, 24]),
     ["data.image_size 24x24 is, below mobilenet's minimum of 32x32", "[32, 32]"]),
    ("fine-tuning more layers than the backbone has", lambda d, t: d["train"].update(
        fine_tune={"unfreeze": 500, "epochs": 1}), ["train.fine_tune.unfreeze: 500", "the 87 layers of mobilenet alpha 0.25"]),
    ("fine-tuning a backbone that trains from the start", lambda d, t: (_backbone(d, trainable=True), d["train"].update(
        fine_tune={"epochs": 1})), ["train.fine_tune", "trainable is true"]),
]


@pytest.mark.parametrize("case, change, words", BACKBONE_CASES, ids=[case[0] for case in BACKBONE_CASES])
def test_backbone_mistakes(runner, tmp_path, case, change, words):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(_backbone_case(tmp_path, change)))
    _assert_user_error(runner, ["train", str(config), "--runs-dir", str(tmp_path / "runs")], words)
    assert (tmp_path / "runs").exists() == (case in BUILT)  # the others are refused before a run starts


def test_imagenet_weights_offline_name_the_file_keras_wanted(runner, tmp_path, monkeypatch):
    import keras.src.backend.config as keras_config

    monkeypatch.setattr(keras_config, "_KERAS_DIR", str(tmp_path / "keras-home"))  # an empty Keras cache
    data = _backbone_case(tmp_path, lambda d, t: (_backbone(d, weights="imagenet"), d["data"].update(image_size=[128, 128])))
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(data))
    _assert_user_error(runner, ["train", str(config), "--runs-dir", str(tmp_path / "runs")], [
        "model.backbone.weights: imagenet", "could not download mobilenet_2_5_128_tf_no_top.h5",
        str(tmp_path / "keras-home" / "models"), "set model.backbone.weights to the path of a local copy"])


def test_fine_tuning_without_a_backbone(runner, write_config):
    data = small_dnn()
    data["train"]["fine_tune"] = {"epochs": 2}
    _assert_user_error(runner, ["train", str(write_config(data))], ["train.fine_tune", "has none", "model.backbone"])


@needs_data
def test_a_backbone_on_28x28_digits_is_refused_below_its_minimum(runner, write_config):
    data = small_dnn()
    data["model"] = {"backbone": {"name": "mobilenet", "alpha": 0.25, "weights": None},
                     "layers": [{"type": "dense", "units": 10, "activation": "softmax"}]}
    _assert_user_error(runner, ["train", str(write_config(data))], [
        "data.image_size: mnist images are 28x28, below mobilenet's minimum of 32x32", "data.image_size: [32, 32]",
        "grey ones become three channels"])


# --- damaged files inside a run directory (issue 27) -------------------------------------------

def _edit_record(run: Path, **changes) -> None:
    import json

    record = json.loads((run / "data.json").read_text())
    for key, value in changes.items():
        if value is None:
            del record[key]
        else:
            record[key] = value
    (run / "data.json").write_text(json.dumps(record))


def _checkpoint(run: Path, content: bytes | None) -> None:
    """best.keras damaged; the TFLite copy no longer matches it, so every command reads the checkpoint."""
    _write(run / "best.keras", content if content is not None else (run / "best.keras").read_bytes()[:3000])


# (id, damage done to a copy of a trained run, command, words); the command is one of RUN_COMMANDS
RUN_CASES = [
    ("run.json truncated", lambda r: _cut(r / "run.json"), "predict", ["run.json: is damaged (not valid JSON"]),
    ("run.json empty", lambda r: _write(r / "run.json", ""), "evaluate", ["run.json: is damaged (empty)"]),
    ("run.json a list", lambda r: _write(r / "run.json", "[1, 2]"), "resume", ["run.json", "a JSON list, not an object"]),
    ("run.json not text", lambda r: _write(r / "run.json", b"\xff\xfe\x00garbage"), "serve", ["run.json", "not text"]),
    ("run.json a folder", lambda r: (r / "run.json").unlink() or (r / "run.json").mkdir(), "export",
     ["run.json", "cannot be read: Is a directory"]),
    ("data.json garbage", lambda r: _write(r / "data.json", "{classes: [0, 1]"), "predict", ["data.json", "not valid JSON"]),
    ("data.json classes a number", lambda r: _edit_record(r, classes=5), "evaluate", ["data.json", "classes is 5, not a list"]),
    ("data.json without dataset", lambda r: _edit_record(r, dataset=None), "export", ["data.json", "no 'dataset'"]),
    ("data.json shape as text", lambda r: _edit_record(r, sample_shape="28x28"), "serve",
     ["data.json", "sample_shape is \"28x28\""]),
    ("data.json test files not names", lambda r: _edit_record(r, test_files=[1, 2]), "evaluate",
     ["data.json", "test_files is [1, 2], not a list of file names"]),
    ("data.json empty", lambda r: _write(r / "data.json", ""), "resume", ["data.json: is damaged (empty)"]),
    ("config.yaml empty", lambda r: _write(r / "config.yaml", ""), "evaluate", ["config.yaml", "the config is empty"]),
    ("config.yaml binary", lambda r: _write(r / "config.yaml", b"\x89PNG\r\n\x1a\n\x00\xff"), "export",
     ["config.yaml", "not a text file"]),
    ("config.yaml wrong type", lambda r: _write(r / "config.yaml", "name: x\nmodel: 5\n"), "predict",
     ["config.yaml", "model"]),
    ("config.yaml cut inside a list", lambda r: _write(r / "config.yaml", "name: x\nmodel: {layers: [\n"), "serve",
     ["config.yaml", "not valid YAML"]),
    ("best.keras truncated", lambda r: _checkpoint(r, None), "evaluate", ["best.keras", "not a complete .keras file"]),
    ("best.keras empty", lambda r: _checkpoint(r, b""), "export", ["best.keras"]),
    ("best.keras text", lambda r: _checkpoint(r, b"my notes"), "predict", ["best.keras", "not a complete .keras file"]),
    ("model.tflite garbage", lambda r: _write(r / "model.tflite", "not a flatbuffer"), "predict",
     ["model.tflite: LiteRT cannot load it", "delete it"]),
    ("model.tflite empty", lambda r: _write(r / "model.tflite", b""), "serve", ["model.tflite: LiteRT cannot load it"]),
    ("model.tflite truncated", lambda r: _cut(r / "model.tflite"), "predict", ["model.tflite"]),
    ("history.json damaged", lambda r: _write(r / "history.json", '{"epochs": 3}'), "resume",
     ["history.json", "epochs"]),
]
RUN_COMMANDS = {
    "predict": lambda run, tmp: ["predict", str(run), str(tmp / "seven.png")],
    "evaluate": lambda run, tmp: ["evaluate", str(run)],
    "export": lambda run, tmp: ["export", str(run), "-f", "onnx", "-o", str(tmp / "m.onnx")],
    "resume": lambda run, tmp: ["train", "--resume", str(run), "--set", "train.epochs=3"],
    "serve": lambda run, tmp: ["serve", str(run), "--workers", "1", "--port", str(free_port())],
}


@needs_data
@pytest.mark.parametrize("damage, command, words", [case[1:] for case in RUN_CASES], ids=[case[0] for case in RUN_CASES])
def test_damaged_run_files(runner, served_run, tmp_path, damage, command, words):
    run = shutil.copytree(served_run, tmp_path / "run")
    damage(run)
    draw_digit().save(tmp_path / "seven.png")
    args = RUN_COMMANDS[command](run, tmp_path)
    if command == "serve":  # a real server process: a damage that were not noticed must not leave it running
        out = subprocess.run([sys.executable, "-m", "cnnlab", *args], capture_output=True, text=True, timeout=120,
                             env={**os.environ, "CNNLAB_OFFLINE": "1"})
        assert out.returncode == 2 and out.stderr.count("\n") == 1 and out.stderr.startswith("error: "), out.stderr
        line = out.stderr
    else:
        line = _assert_user_error(runner, args, words)
    for word in words:
        assert word in line, f"{word!r} not in {line!r}"
    assert not (tmp_path / "m.onnx").exists()


# --- export targets that cannot be written --------------------------------------------------------

def _read_only(t: Path) -> Path:
    (t / "locked").mkdir(mode=0o555)
    return t / "locked" / "m.tflite"


# (id, makes the -o path in a folder, the format, words); each with --force, which must not help
EXPORT_TARGET_CASES = [
    ("read-only folder", _read_only, "tflite", ["locked is read-only"]),
    ("under a regular file", lambda t: _write(t / "notes.txt", "x") / "m.onnx", "onnx", ["notes.txt is a file, not a folder"]),
    ("deep under a regular file", lambda t: _write(t / "f", "x") / "a" / "b" / "m.tflite", "tflite", ["f is a file, not a folder"]),
    ("in /proc", lambda t: Path("/proc/cnnlab-export.onnx"), "onnx", ["/proc is read-only"]),
    ("in /sys", lambda t: Path("/sys/cnnlab-export/m.tflite"), "tflite", ["/sys is read-only"]),
    ("a /proc file", lambda t: Path("/proc/self/status"), "tflite", ["is a file that is not a tflite model cnnlab exported"]),
    ("a folder for a file", lambda t: (t / "out").mkdir() or t / "out", "onnx",
     ["is a folder; a onnx export is a file", "out/model.onnx"]),
    ("a file for a SavedModel", lambda t: _write(t / "saved", "mine"), "saved_model", ["is not a folder"]),
    ("a named pipe", lambda t: os.mkfifo(t / "p.tflite") or t / "p.tflite", "tflite", ["is a named pipe, not a file"]),
    ("a link to a file", lambda t: os.symlink(_write(t / "mine.onnx", "x"), t / "l.onnx") or t / "l.onnx", "onnx",
     ["is a symbolic link"]),
    ("an empty .tflite", lambda t: _write(t / "e.tflite", b""), "tflite", ["not a tflite model cnnlab exported"]),
]


@needs_data
@pytest.mark.parametrize("make, format, words", [case[1:] for case in EXPORT_TARGET_CASES],
                         ids=[case[0] for case in EXPORT_TARGET_CASES])
def test_export_targets_that_cannot_be_written(runner, served_run, tmp_path, make, format, words):
    target = make(tmp_path)
    line = _assert_user_error(runner, ["export", str(served_run), "-f", format, "-o", str(target), "--force"], words)
    assert line.startswith(f"error: -o {target}: ")
    assert not Path("/proc/cnnlab-export.onnx").exists()


# --- control characters in file names: escaped in the one line, never printed raw ---------------------

def _odd_class(t: Path, name: str) -> Path:
    folder = _shapes(t)
    (folder / name).mkdir()
    return folder


# (id, the user's command built from a folder, the raw name, how it must read)
CONTROL_CASES = [
    ("newline in an image name", lambda t: ["predict", str(save_model(t / "m.keras")), str(t / "two\nlines.png")],
     "two\\nlines.png"),
    ("escape sequence in a config name", lambda t: ["train", str(t / "c\x1b[2J.yaml")], "c\\x1b[2J.yaml"),
    ("right-to-left override in a run name", lambda t: ["evaluate", str(t / "run\u202egpj.exe")], "run\\u202egpj.exe"),
    ("carriage return in an export path", lambda t: ["export", str(save_model(t / "m.keras")), "-f", "onnx",
                                                     "-o", str(_read_only(t).parent / "x\r.onnx")], "x\\r.onnx"),
    ("tab and bell in a class folder", lambda t: ["train", str(_write(t / "c.yaml", yaml.safe_dump(
        shapes_config(_odd_class(t, "st\ta\x07r"))))), "--runs-dir", str(t / "runs")], "st\\ta\\x07r"),
]


@pytest.mark.parametrize("make, escaped", [case[1:] for case in CONTROL_CASES], ids=[case[0] for case in CONTROL_CASES])
def test_control_characters_in_names_are_escaped(runner, tmp_path, make, escaped):
    line = _assert_user_error(runner, make(tmp_path), [escaped])
    assert line.isprintable()


# --- inf and nan where a number is expected -----------------------------------------------------------

INFINITE_CONFIG_CASES = [
    ("dropout rate .nan", lambda d: _layers(d).insert(2, {"type": "dropout", "rate": float("nan")}), "model.layers[2].rate"),
    ("validation size .inf", lambda d: d["data"]["validation"].update(size=float("inf")), "data.validation.size"),
    ("augment zoom .nan", lambda d: d["data"].update(augment={"zoom": float("nan")}), "data.augment.zoom"),
    ("momentum .inf", lambda d: d["train"].update(optimizer={"name": "sgd", "momentum": float("inf")}),
     "train.optimizer.momentum"),
    ("label smoothing .nan", lambda d: d["train"].update(loss={"name": "categorical_crossentropy",
                                                               "label_smoothing": float("nan")}), "train.loss.label_smoothing"),
    ("early stopping min_delta -.inf", lambda d: d["train"].update(early_stopping={"min_delta": float("-inf")}),
     "train.early_stopping.min_delta"),
    ("clipnorm .inf", lambda d: d["train"].update(optimizer={"name": "adam", "clipnorm": float("inf")}),
     "train.optimizer.clipnorm"),
]


@pytest.mark.parametrize("change, field", [case[1:] for case in INFINITE_CONFIG_CASES],
                         ids=[case[0] for case in INFINITE_CONFIG_CASES])
def test_infinite_and_undefined_config_values(runner, write_config, tmp_path, change, field):
    data = small_dnn()
    change(data)
    _assert_user_error(runner, ["config", str(write_config(data))], [field, "finite number"])
