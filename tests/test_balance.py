"""train.class_weight: the weights, their mistakes, and that training's loss is weighted by them."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cnnlab.config import validate_config
from cnnlab.data.balance import class_weights, is_uneven
from cnnlab.errors import CnnlabError
from cnnlab.train import train

from conftest import needs_data, small_dnn

NAMES = ("ant", "bee", "wasp")


def test_auto_weighs_each_class_by_its_inverse_frequency():
    weights = class_weights("auto", np.array([0] * 6 + [1] * 3 + [2]), NAMES, "c.yaml")
    assert weights == pytest.approx({0: 10 / 18, 1: 10 / 9, 2: 10 / 3})  # n / (classes * count)
    assert class_weights(None, np.array([0, 1]), NAMES, "c.yaml") is None


def test_weights_by_name_and_the_classes_left_out_weigh_one():
    assert class_weights({"wasp": 4.0}, np.array([0, 1, 2]), NAMES, "c.yaml") == {0: 1.0, 1: 1.0, 2: 4.0}


@pytest.mark.parametrize("setting, labels, says", [
    ({"hornet": 2.0}, [0, 1, 2], "c.yaml: train.class_weight: 'hornet' is not a class of the data set (classes: "
                                 "ant, bee, wasp)."),
    ("auto", [0, 0, 1], "c.yaml: train.class_weight: auto: class 'wasp' has no training samples"),
])
def test_a_weight_for_no_class_is_one_line(setting, labels, says):
    with pytest.raises(CnnlabError) as error:
        class_weights(setting, np.array(labels), NAMES, "c.yaml")
    assert str(error.value).startswith(says)


@pytest.mark.parametrize("value, says", [
    ("balanced", "train.class_weight: 'balanced' is not valid; use auto, or weights by class name"),
    ({"3": -1}, "train.class_weight: class 3: -1 is not a weight; give a positive number."),
    ({"3": True}, "train.class_weight: class 3: True is not a weight"),
])
def test_the_config_refuses_what_is_no_class_weight(value, says):
    with pytest.raises(CnnlabError) as error:
        validate_config({**small_dnn(class_weight=value)}, "c.yaml")
    assert says in str(error.value)


def test_yaml_number_keys_name_classes():
    assert validate_config(small_dnn(class_weight={3: 5}), "c.yaml").train.class_weight == {"3": 5.0}


def test_uneven_is_more_than_three_to_one_among_the_classes_with_images():
    assert is_uneven([31, 10]) and not is_uneven([30, 10]) and not is_uneven([30, 0, 10])


@needs_data
@pytest.mark.parametrize("loop", ["fit"])
def test_a_weight_of_two_on_every_class_doubles_the_training_loss(tmp_path, loop):
    """With a learning rate too small to move the weights, the epoch's loss is the weighted mean."""
    losses = {}
    for name, weight in (("plain", None), ("weighted", dict.fromkeys(map(str, range(10)), 2.0))):
        data = small_dnn(epochs=1, loop=loop, class_weight=weight, optimizer={"name": "sgd", "learning_rate": 1e-9})
        data["data"].update(train_samples=600, test_samples=200)
        cfg = validate_config(data, "c.yaml")
        result = train(cfg, "c.yaml", runs_dir=tmp_path / name, echo=lambda line: None, quiet=True)
        losses[name] = json.loads((result.run_dir / "history.json").read_text())["epochs"][0]
        record = json.loads((result.run_dir / "data.json").read_text())
        assert record["class_weight"] == (weight and {str(d): 2.0 for d in range(10)})
    assert losses["weighted"]["loss"] == pytest.approx(2 * losses["plain"]["loss"], rel=1e-3)
    assert losses["weighted"]["val_loss"] == pytest.approx(losses["plain"]["val_loss"], rel=1e-3)  # as Keras: unweighted
