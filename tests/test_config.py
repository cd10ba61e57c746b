"""The config schema: what loads, what is refused, and how the messages read."""

from __future__ import annotations

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


# the training options of compile.py: Keras' optimizers, schedules, losses, metrics, regularizers
TRAINING_OPTION_CASES = [
    (lambda d: d["train"].update(optimizer={"name": "adam_w"}), ["train.optimizer.name", "did you mean 'adamw'"]),
    (lambda d: d["train"].update(optimizer={"name": "nadam", "weight_decay": -1}), ["train.optimizer.weight_decay"]),
    (lambda d: d["train"].update(lr_schedule={"name": "cosin"}), ["train.lr_schedule.name", "did you mean 'cosine'"]),
    (lambda d: d["train"].update(lr_schedule={"name": "cosine", "warmup_epoch": 1}),
     ["train.lr_schedule.warmup_epoch", "did you mean 'warmup_epochs'"]),
    (lambda d: d["train"].update(lr_schedule={"name": "cosine", "warmup_epochs": 1, "warmup_fraction": 0.1}),
     ["train.lr_schedule", "warmup_epochs or warmup_fraction, not both"]),
    (lambda d: d["train"].update(lr_schedule={"name": "step", "factor": 0.5}), ["train.lr_schedule.every_epochs", "missing"]),
    (lambda d: d["train"].update(lr_schedule={"warmup_epochs": 1}), ["train.lr_schedule: missing `name`", "cosine, exponential"]),
    (lambda d: d["train"].update(loss={"name": "categorical_crossentropy", "smoothing": 0.1}),
     ["train.loss.smoothing", "did you mean 'label_smoothing'"]),
    (lambda d: d["train"].update(loss={"name": "mse", "label_smoothing": 0.1}), ["train.loss", "mse takes no label_smoothing"]),
    (lambda d: d["train"].update(loss={"name": "categorical_crossentropy", "label_smoothing": 1.0}),
     ["train.loss.label_smoothing", "less than 1"]),
    (lambda d: d["train"].update(metrics=["top_3_acc"]), ["train.metrics[0]", "unknown metric 'top_3_acc'"]),
    (lambda d: d["train"].update(metrics=[{"name": "precision", "k": 3}]), ["train.metrics[0]", "k is for top_k_accuracy only"]),
    (lambda d: d["train"].update(metrics=["accuracy", "accuracy"]), ["train.metrics", "accuracy is listed twice"]),
    (lambda d: d["train"].update(verbose=3), ["train.verbose", "valid: auto, 0, 1, 2"]),
    (lambda d: d["model"]["layers"][1].update(kernel_regularizer={"l3": 0.1}), ["model.layers[1].kernel_regularizer.l3", "l1, l2"]),
]


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
] + TRAINING_OPTION_CASES)
def test_bad_configs_name_the_file_and_field(write_config, change, words):
    data = small_dnn()
    change(data)
    path = write_config(data)
    with pytest.raises(CnnlabError) as err:
        load_config(path)
    message = str(err.value)
    assert message.startswith(str(path)) and "\n" not in message
    for word in words:
        assert word in message, message
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


def test_training_options_have_keras_defaults_and_show_in_the_resolved_config(runner, write_config):
    from cnnlab.cli import app

    cfg = load_config(write_config(small_dnn()))
    train = cfg.train
    assert train.loss.name == "sparse_categorical_crossentropy"
    assert (train.loss.label_smoothing, train.loss.from_logits) == (0.0, False)
    assert train.optimizer.weight_decay is None and train.optimizer.clipnorm is None
    assert train.lr_schedule is None and train.verbose == "auto" and train.metrics == ["accuracy"]
    assert cfg.model.layers[1].kernel_regularizer is None
    adamw = load_config(write_config(small_dnn(optimizer={"name": "adamw"}))).train.optimizer
    assert adamw.weight_decay == 0.004 and adamw.learning_rate == 0.001  # keras.optimizers.AdamW's own
    # `cnnlab config` writes every one of them out
    result = runner.invoke(app, ["config", str(write_config(small_dnn(optimizer={"name": "nadam"})))])
    assert result.exit_code == 0, result.output
    printed = yaml.safe_load(result.stdout)["train"]
    assert printed["loss"] == {"name": "sparse_categorical_crossentropy", "label_smoothing": 0.0, "from_logits": False}
    assert printed["optimizer"]["name"] == "nadam" and printed["optimizer"]["weight_decay"] is None
    assert printed["verbose"] == "auto" and printed["lr_schedule"] is None
    assert yaml.safe_load(result.stdout)["model"]["layers"][1]["kernel_regularizer"] is None


def test_a_loss_is_a_name_or_a_mapping_and_both_mean_the_same(write_config):
    short = load_config(write_config(small_dnn(loss="categorical_crossentropy"))).train.loss
    long = load_config(write_config(small_dnn(loss={"name": "categorical_crossentropy"}))).train.loss
    assert short == long
    smoothed = load_config(write_config(small_dnn(loss="categorical_crossentropy")),
                           ["train.loss.label_smoothing=0.1"]).train.loss  # --set into the short form
    assert smoothed.name == "categorical_crossentropy" and smoothed.label_smoothing == 0.1
    # the resolved form reloads to the same config (a run's config.yaml is read back by --resume)
    cfg = load_config(write_config(small_dnn(loss={"name": "binary_crossentropy", "from_logits": True})))
    assert load_config(write_config(yaml.safe_load(cfg.to_yaml()), "again.yaml")) == cfg


def test_sparse_loss_gets_one_hot_targets_where_keras_needs_them(write_config):
    """Keras' SparseCategoricalCrossentropy has no label smoothing, and precision/recall/auc need one-hot."""
    def one_hot(**train):
        return load_config(write_config(small_dnn(**train))).one_hot_labels()

    assert one_hot() is False
    assert one_hot(loss={"name": "sparse_categorical_crossentropy", "label_smoothing": 0.1}) is True
    assert one_hot(metrics=["accuracy", "precision"]) is True
    assert one_hot(metrics=["accuracy", "top_3_accuracy"]) is False


@pytest.mark.parametrize("metrics, names", [
    (["top_3_accuracy"], ["top_3_accuracy"]),
    ([{"name": "top_k_accuracy", "k": 2}], ["top_2_accuracy"]),
    (["top_k_accuracy"], ["top_5_accuracy"]),  # Keras' default k
    (["accuracy", "precision", "recall", {"name": "auc"}, "mse", "mae"], ["accuracy", "precision", "recall", "auc", "mse", "mae"]),
])
def test_metrics_are_named_as_the_history_and_monitors_name_them(write_config, metrics, names):
    assert load_config(write_config(small_dnn(metrics=metrics))).train.metrics == names


@pytest.mark.parametrize("schedule", [
    {"name": "cosine", "warmup_epochs": 1, "alpha": 0.01},
    {"name": "cosine", "warmup_fraction": 0.1, "decay_fraction": 0.5},
    {"name": "exponential", "decay_rate": 0.9},
    {"name": "step", "every_epochs": 2, "factor": 0.5},
    {"name": "reduce_on_plateau", "patience": 2},
    {"name": "one_cycle", "max_learning_rate": 0.01},
])
def test_each_schedule_loads_with_its_defaults(write_config, schedule):
    loaded = load_config(write_config(small_dnn(lr_schedule=schedule))).train.lr_schedule
    assert loaded.model_dump(include=set(schedule)) == schedule
    assert loaded.name == schedule["name"]


def test_set_appends_a_list_item_one_past_the_end(write_config):
    path = write_config(small_dnn())  # three layers
    cfg = load_config(path, ["model.layers[3]={type: dropout, rate: 0.1}"])
    assert [layer.type for layer in cfg.model.layers] == ["flatten", "dense", "dense", "dropout"]
    cfg = load_config(path, ["model.layers[3].type=dropout", "model.layers[3].rate=0.2"])  # built key by key
    assert cfg.model.layers[3].rate == 0.2
    with pytest.raises(CnnlabError, match=r"model.layers\[4\] does not exist \(the list has 3 items; \[3\] appends one\)"):
        load_config(path, ["model.layers[4]={type: dropout, rate: 0.1}"])


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
