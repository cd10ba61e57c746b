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

from conftest import DATA_DIR, REPO, needs_data, small_dnn
from test_checkpoint import save_model, zip_bomb
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
]


@pytest.mark.parametrize("change, args, words", [case[1:] for case in CONFIG_CASES],
                         ids=[case[0] for case in CONFIG_CASES])
def test_config_mistakes(runner, write_config, tmp_path, change, args, words):
    data = small_dnn()
    change(data)
    path = write_config(data)
    _assert_user_error(runner, ["train", str(path), "--runs-dir", str(tmp_path / "runs"), *args], words)
    assert not (tmp_path / "runs").exists()  # nothing was started


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
]


@pytest.mark.parametrize("make, words", [case[1:] for case in MODEL_CASES], ids=[case[0] for case in MODEL_CASES])
def test_model_file_mistakes(runner, tmp_path, make, words):
    draw_digit().save(tmp_path / "seven.png")
    _assert_user_error(runner, ["predict", str(make(tmp_path)), str(tmp_path / "seven.png")], words)


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
    (["evaluate", "m.keras", "--dataset", "cifar"], ["--dataset", "'cifar'"]),
    (["predict"], ["Missing argument", "cnnlab predict --help"]),
], ids=["command typo", "unknown option", "option out of range", "unknown choice", "missing argument"])
def test_command_line_mistakes_are_one_line_too(monkeypatch, capsys, args, words):
    monkeypatch.setattr(sys, "argv", ["cnnlab", *args])
    with pytest.raises(SystemExit) as stopped:
        main()
    assert stopped.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    for word in words:
        assert word.lower() in lines[0].lower(), f"{word!r} not in {lines[0]!r}"


def _assert_user_error(runner, args, words) -> str:
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    for word in words:
        assert word in lines[0], f"{word!r} not in {lines[0]!r}"
    assert "Traceback" not in result.output
    return lines[0]
