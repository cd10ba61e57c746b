"""The custom epoch driver (`cnnlab.loop`): every hand-written step updates weights as `model.fit` does.

Loss scaling is the case that drifted: under `train.precision: mixed_float16` the optimizer is a
`keras.optimizers.LossScaleOptimizer`, which divides every gradient by its scale (2^15 at the
start), so a step that does not multiply the loss by that scale first applies updates 2^15 times
too small. mixed_float16 is refused on CPUs, so the optimizer is made explicitly here, around a
float32 model: the arithmetic of the scaling is the same. Class weights (`train.class_weight`)
are the other thing every step must do as fit does: weigh each sample's loss by its class.
"""

from __future__ import annotations

import numpy as np
import pytest

from cnnlab.backend import init_backend
from cnnlab.config import validate_config
from cnnlab.data import Splits
from cnnlab.distribute import Distributed, fit_distributed
from cnnlab.tape import fit_with_gradient_tape

SAMPLES = 32
LEARNING_RATE = 0.5


def _config():
    return validate_config({
        "name": "loop", "seed": 0, "data": {"dataset": "mnist"},
        "model": {"layers": [{"type": "flatten"}, {"type": "dense", "units": 3, "activation": "softmax"}]},
        "train": {"epochs": 1, "batch_size": SAMPLES, "loss": "sparse_categorical_crossentropy"},
    }, "loop.yaml")


def _splits() -> Splits:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(SAMPLES, 4)).astype("float32")
    y = rng.integers(0, 3, SAMPLES)
    return Splits(x_train=x, y_train=y, x_val=None, y_val=None, x_test=x, y_test=y, labels_test=y)


def _model(keras, scaled: bool):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax")])
    optimizer = keras.optimizers.SGD(LEARNING_RATE)
    if scaled:
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer, initial_scale=2.0 ** 15)
    model.compile(optimizer=optimizer, loss=keras.losses.SparseCategoricalCrossentropy())
    return model


def _update(model, train) -> np.ndarray:
    """How far one full-batch step moves the kernel."""
    before = np.array(model.layers[-1].kernel.numpy())
    train(model)
    return model.layers[-1].kernel.numpy() - before


CLASS_WEIGHT = {0: 0.2, 1: 5.0, 2: 1.0}


def _keras_fit(class_weight):
    def train(model):
        splits = _splits()
        model.fit(splits.x_train, splits.y_train, batch_size=SAMPLES, epochs=1, shuffle=False, verbose=0,
                  class_weight=class_weight)

    return train


def _tape(tmp_path, class_weight):
    return lambda model: fit_with_gradient_tape(model, _config(), _splits(), [], 0, tmp_path, verbose=0,
                                                class_weight=class_weight)


def _multi_worker(keras, class_weight):
    import tensorflow as tf

    def train(model):
        # the multi-worker step, on a one-replica strategy this process can make on its own
        dist = Distributed("multi_worker", strategy, 1, SAMPLES, "global")
        fit_distributed(keras, model, _config(), _splits(), [], 0, dist, verbose=0, class_weight=class_weight)

    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    return train, strategy


@pytest.mark.parametrize("step", ["gradient_tape", "multi_worker"])
@pytest.mark.parametrize("scaled", [False, True], ids=["float32", "loss_scale_2^15"])
@pytest.mark.parametrize("class_weight", [None, CLASS_WEIGHT], ids=["unweighted", "class_weight"])
def test_a_hand_written_step_moves_the_weights_as_model_fit_does(step, scaled, class_weight, tmp_path):
    keras, _ = init_backend("cpu")
    expected = _update(_model(keras, scaled), _keras_fit(class_weight))
    if class_weight is not None:  # the weights change the step: comparing would not be vacuous
        assert not np.allclose(expected, _update(_model(keras, scaled), _keras_fit(None)), rtol=1e-2)
    if step == "gradient_tape":
        actual = _update(_model(keras, scaled), _tape(tmp_path, class_weight))
    else:
        train, strategy = _multi_worker(keras, class_weight)
        with strategy.scope():
            model = _model(keras, scaled)
        actual = _update(model, train)
    assert np.abs(expected).max() > 1e-3  # a real step, not a no-op
    ratio = np.abs(actual).max() / np.abs(expected).max()
    print(f"{step} {'scaled' if scaled else 'float32'}: largest update {np.abs(actual).max():.3g}, "
          f"model.fit's {np.abs(expected).max():.3g} (ratio {ratio:.3g})")
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-6)
