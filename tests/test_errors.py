"""Every user mistake: one line on stderr naming the file and field, exit code 2, no traceback.

Each row is what a user did and the words the message must contain. Cases for images and
model files live with their commands (test_predict.py, test_evaluate.py, test_checkpoint.py).
"""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import sys

import pytest
import yaml

from cnnlab.cli import app

from conftest import DATA_DIR, REPO, needs_data, small_dnn


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


def test_a_bad_config_fails_before_tensorflow_is_imported(write_config):
    data = small_dnn()
    _conv(data, kernel_size=16)
    code = ("import sys; from typer.testing import CliRunner; from cnnlab.cli import app; "
            f"r = CliRunner().invoke(app, ['train', {str(write_config(data))!r}]); "
            "print(r.exit_code, 'tensorflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["2", "False"]


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
