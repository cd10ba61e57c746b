"""What model.compile gets: Keras' optimizers, schedules, losses and metrics, chosen from the config."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from cnnlab.compile import learning_rate, make_loss, make_metrics, make_optimizer, monitor_mode, one_cycle_rate
from cnnlab.config import Loss, validate_config

from conftest import small_dnn

STEPS = 100  # steps per epoch


def _rate(schedule, step: int) -> float:
    return float(keras.ops.convert_to_numpy(schedule(step)))


def _cfg(**train):
    return validate_config(small_dnn(**train), "c.yaml")


@pytest.mark.parametrize("schedule, epochs, points", [
    # cosine with a 1-epoch warm-up from 0: the peak at step 100, half of it midway through the decay
    ({"name": "cosine", "warmup_epochs": 1}, 3, {0: 0.0, 50: 0.0005, 100: 0.001, 200: 0.0005, 300: 0.0}),
    ({"name": "cosine", "warmup_fraction": 0.5, "alpha": 0.1}, 2, {100: 0.001, 200: 0.0001}),
    ({"name": "cosine", "decay_epochs": 1}, 3, {0: 0.001, 100: 0.0, 250: 0.0}),  # decays over epoch 1, then stays
    ({"name": "exponential", "decay_rate": 0.5, "decay_epochs": 2}, 4, {0: 0.001, 100: 0.001 * 0.5 ** 0.5, 200: 0.0005}),
    ({"name": "step", "every_epochs": 2, "factor": 0.1}, 5, {0: 0.001, 199: 0.001, 200: 0.0001, 400: 0.00001}),
])
def test_schedules_turn_epochs_into_steps(schedule, epochs, points):
    rate = learning_rate(keras, _cfg(lr_schedule=schedule, epochs=epochs), STEPS)
    for step, expected in points.items():
        assert _rate(rate, step) == pytest.approx(expected, abs=1e-9), step


def test_without_a_schedule_callback_schedules_keep_a_plain_rate():
    for schedule in (None, {"name": "reduce_on_plateau"}):
        assert learning_rate(keras, _cfg(lr_schedule=schedule), STEPS) == 0.001  # its callback sets it as it goes


def test_one_cycle_is_a_keras_schedule_of_the_step_counter():
    """Computed in the graph (no callback per batch), by a class plain Keras can load from best.keras."""
    rate = learning_rate(keras, _cfg(lr_schedule={"name": "one_cycle", "max_learning_rate": 0.01}, epochs=2), STEPS)
    assert type(rate).__module__.startswith("keras.")
    for step in (0, 30, 59, 60, 61, 120, 199, 200):
        assert _rate(rate, step) == pytest.approx(one_cycle_rate(step, 2 * STEPS, 0.01, 0.3), rel=1e-5, abs=1e-9), step
    assert keras.optimizers.schedules.deserialize(keras.optimizers.schedules.serialize(rate)).get_config() == \
        rate.get_config()


@pytest.mark.parametrize("optimizer, cls, options", [
    ({"name": "adamw"}, keras.optimizers.AdamW, {"weight_decay": 0.004}),
    ({"name": "nadam", "weight_decay": 0.01}, keras.optimizers.Nadam, {"weight_decay": 0.01}),
    ({"name": "sgd", "momentum": 0.9, "clipnorm": 1.0}, keras.optimizers.SGD, {"momentum": 0.9, "clipnorm": 1.0}),
    ({"name": "rmsprop", "global_clipnorm": 2.0}, keras.optimizers.RMSprop, {"global_clipnorm": 2.0}),
    ({"name": "adagrad"}, keras.optimizers.Adagrad, {"weight_decay": None}),
])
def test_optimizers_are_keras_own_with_their_options(optimizer, cls, options):
    made = make_optimizer(keras, _cfg(optimizer=optimizer), STEPS)
    assert type(made) is cls
    config = made.get_config()
    for key, value in options.items():
        assert config[key] == value


@pytest.mark.parametrize("loss, one_hot, cls, options", [
    (Loss(), False, keras.losses.SparseCategoricalCrossentropy, {"from_logits": False}),
    (Loss(label_smoothing=0.1), True, keras.losses.CategoricalCrossentropy, {"label_smoothing": 0.1}),
    (Loss(name="categorical_crossentropy", from_logits=True), True, keras.losses.CategoricalCrossentropy,
     {"from_logits": True}),
    (Loss(name="binary_crossentropy", label_smoothing=0.2), True, keras.losses.BinaryCrossentropy,
     {"label_smoothing": 0.2}),
    (Loss(name="mse"), True, keras.losses.MeanSquaredError, {}),
])
def test_losses_are_keras_objects_with_their_options(loss, one_hot, cls, options):
    made = make_loss(keras, loss, one_hot)
    assert type(made) is cls
    for key, value in options.items():
        assert made.get_config()[key] == value


def test_a_smoothed_sparse_loss_is_the_categorical_loss_on_one_hot_targets():
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]], "float32")
    labels = np.array([0, 2])
    plain = make_loss(keras, Loss(), one_hot=False)(labels, probs)
    same = make_loss(keras, Loss(), one_hot=True)(np.eye(3)[labels], probs)
    assert float(plain) == pytest.approx(float(same), rel=1e-6)
    smoothed = make_loss(keras, Loss(label_smoothing=0.3), one_hot=True)(np.eye(3)[labels], probs)
    assert float(smoothed) > float(plain)  # the targets are no longer the probabilities' best match


def test_metrics_pick_the_kind_that_matches_the_targets():
    sparse = make_metrics(keras, ["accuracy", "top_3_accuracy"], one_hot=False)
    one_hot = make_metrics(keras, ["top_3_accuracy", "precision", "auc", "mae"], one_hot=True)
    assert sparse[0] == "accuracy"  # Keras picks sparse/categorical/binary accuracy itself
    assert isinstance(sparse[1], keras.metrics.SparseTopKCategoricalAccuracy) and sparse[1].k == 3
    assert isinstance(one_hot[0], keras.metrics.TopKCategoricalAccuracy)
    assert [metric.name for metric in one_hot] == ["top_3_accuracy", "precision", "auc", "mae"]


@pytest.mark.parametrize("monitor, mode", [
    ("val_accuracy", "max"), ("val_top_3_accuracy", "max"), ("val_precision", "max"), ("recall", "max"),
    ("val_auc", "max"), ("val_loss", "min"), ("val_mse", "min"), ("mae", "min"),
])
def test_monitor_modes_follow_the_direction_keras_gives_each_metric(monitor, mode):
    assert monitor_mode(monitor, "auto") == mode
