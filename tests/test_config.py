"""The config schema: what loads, what is refused, and how the messages read."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from cnnlab.config import load_config
from cnnlab.errors import CnnlabError

from conftest import REPO, small_dnn


def test_shipped_cnn_config_loads_with_defaults_filled_in():
    cfg = load_config(REPO / "configs" / "cnn.yaml")
    assert cfg.data.dataset == "mnist"
    assert cfg.model.layers[0].kernel_size == (5, 5)
    assert cfg.train.optimizer.name == "adam"
    assert cfg.train.early_stopping.patience == 10
    # every default is written out in the resolved form, so a run directory is self-contained
    resolved = yaml.safe_load(cfg.to_yaml())
    assert resolved["data"]["validation"] == {"method": "stratified", "size": 0.2, "random_state": 777}
    assert resolved["train"]["checkpoint"]["monitor"] == "val_accuracy"


def test_overrides_change_nested_values_and_list_items(write_config):
    path = write_config(small_dnn())
    cfg = load_config(path, ["train.epochs=7", "model.layers[1].units=32", "train.optimizer.name=sgd",
                             "data.validation.method=split", "train.tensorboard=true"])
    assert cfg.train.epochs == 7
    assert cfg.model.layers[1].units == 32
    assert cfg.train.optimizer.name == "sgd"
    assert cfg.data.validation.method == "split"
    assert cfg.train.tensorboard is True


@pytest.mark.parametrize("loss, units, one_hot", [
    ("sparse_categorical_crossentropy", 10, False),
    ("categorical_crossentropy", 10, True),
    ("binary_crossentropy", 2, True),   # the XOR MLP: 2 softmax units, one-hot targets
    ("mse", 1, False),                   # the one-layer XOR net: a single sigmoid unit
])
def test_label_encoding_follows_loss_and_output(write_config, loss, units, one_hot):
    data = small_dnn(loss=loss)
    data["model"]["layers"][-1]["units"] = units
    assert load_config(write_config(data)).one_hot_labels() is one_hot


@pytest.mark.parametrize("change, words", [
    (lambda d: d["train"].update(epochz=3), ["train.epochz", "did you mean 'epochs'"]),
    (lambda d: d.update(extra=1), ["unknown key 'extra'", "valid keys here"]),
    (lambda d: d["model"]["layers"][1].update(type="dense2"), ["model.layers[1].type", "dense"]),
    (lambda d: d["model"]["layers"][1].update(units="ten"), ["model.layers[1].units", "'ten'"]),
    (lambda d: d["model"]["layers"][1].update(units=0), ["model.layers[1].units", "greater than 0"]),
    (lambda d: d["model"]["layers"][1].update(activation="rleu"), ["model.layers[1].activation", "did you mean 'relu'"]),
    (lambda d: d["model"]["layers"].insert(1, {"type": "dropout", "rate": 1.0}), ["model.layers[1].rate", "less than 1"]),
    (lambda d: d["model"]["layers"][1].pop("units"), ["model.layers[1].units", "required"]),
    (lambda d: d["train"].update(optimizer={"name": "adamm"}), ["train.optimizer.name", "did you mean 'adam'"]),
    (lambda d: d["train"].update(optimizer={"name": "adam", "momentum": 0.9}), ["train.optimizer.momentum", "learning_rate"]),
    (lambda d: d["train"].update(loss="crossentropy"), ["train.loss", "sparse_categorical_crossentropy"]),
    (lambda d: d["data"].update(dataset="cifar"), ["data.dataset", "mnist"]),
    (lambda d: d.update(name="../../x"), ["name", "not a valid run name"]),
    (lambda d: d.pop("model"), ["model", "required"]),
])
def test_bad_configs_name_the_file_and_field(write_config, change, words):
    data = small_dnn()
    change(data)
    path = write_config(data)
    with pytest.raises(CnnlabError) as err:
        load_config(path)
    message = str(err.value)
    assert message.startswith(str(path))
    for word in words:
        assert word in message
    assert "\n" not in message


@pytest.mark.parametrize("text, words", [
    ("", ["empty"]),
    ("name: [unclosed", ["not valid YAML", "line"]),
    ("- a\n- b\n", ["mapping", "list"]),
])
def test_unusable_files_are_clear_errors(tmp_path, text, words):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(CnnlabError) as err:
        load_config(path)
    for word in words:
        assert word in str(err.value)


def test_missing_file(tmp_path):
    with pytest.raises(CnnlabError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


@pytest.mark.parametrize("override, words", [
    ("train.epochs", ["KEY=VALUE"]),
    ("model.layers[7].units=3", ["model.layers[7]", "does not exist", "3 items"]),
    ("train.epochs.x=3", ["train.epochs", "not a mapping"]),
    ("train.epochz=3", ["unknown key 'train.epochz'"]),
])
def test_bad_overrides(write_config, override, words):
    path = write_config(small_dnn())
    with pytest.raises(CnnlabError) as err:
        load_config(path, [override])
    for word in words:
        assert word in str(err.value)


def test_yaml_is_loaded_safely(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("name: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(CnnlabError, match="not valid YAML"):
        load_config(path)


def test_yaml_12_numbers_are_numbers_in_a_file(tmp_path):
    """`1e-3` is a float in YAML 1.2 (and JSON); PyYAML's YAML 1.1 rules made it a string."""
    path = tmp_path / "c.yaml"
    path.write_text(
        "name: numbers\n"
        "data: {scale: 2.55E2, validation: {size: .2}}\n"
        "model: {layers: [{type: flatten}, {type: dropout, rate: +.5}, {type: dense, units: 10}]}\n"
        "train:\n"
        "  optimizer: {name: sgd, learning_rate: 1e-3, momentum: 9e-1}\n"
        "  early_stopping: {min_delta: 1E-4}\n"
        "  lr_schedule: {name: one_cycle, max_learning_rate: 6.e-3}\n"
    )
    cfg = load_config(path)
    assert cfg.train.optimizer.learning_rate == 0.001 and cfg.train.optimizer.momentum == 0.9
    assert cfg.data.scale == 255.0 and cfg.data.validation.size == 0.2 and cfg.model.layers[1].rate == 0.5
    assert cfg.train.early_stopping.min_delta == 0.0001 and cfg.train.lr_schedule.max_learning_rate == 0.006
    assert cfg.model.layers[2].units == 10 and isinstance(cfg.model.layers[2].units, int)


@pytest.mark.parametrize("value, expected", [
    ("1e-4", 1e-4), ("5E4", 5e4), (".5", 0.5), ("+1.5e-3", 1.5e-3), ("3E+0", 3.0), ("2", 2.0),
])
def test_yaml_12_numbers_are_numbers_in_overrides(write_config, value, expected):
    cfg = load_config(write_config(small_dnn(optimizer={"name": "adam"})), [f"train.optimizer.learning_rate={value}"])
    assert cfg.train.optimizer.learning_rate == expected


def test_a_negative_exponent_number_is_read_as_a_number(write_config):
    with pytest.raises(CnnlabError, match=r"learning_rate: Input should be greater than 0 \(got -200.0\)"):
        load_config(write_config(small_dnn(optimizer={"name": "adam"})), ["train.optimizer.learning_rate=-2E+2"])


def test_a_name_that_looks_like_a_number_survives_the_run_directory(write_config, tmp_path):
    """The resolved config quotes '1e-3', so reading the run's config.yaml gives the same name back."""
    data = small_dnn()
    cfg = load_config(write_config(data), ["name='1e-3'"])
    assert cfg.name == "1e-3"
    copy = tmp_path / "resolved.yaml"
    copy.write_text(cfg.to_yaml())
    assert load_config(copy).name == "1e-3"
