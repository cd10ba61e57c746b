"""The one custom training loop: what cnnlab runs where Keras' `model.fit` does not.

Two trainers need their own step: the GradientTape loop of the reference material
(`train.loop: gradient_tape`, `cnnlab.tape`) and the multi-worker step
(`train.distribute: multi_worker`, `cnnlab.distribute`, where Keras' fit fails). Both are
this module's two functions with their own forward pass:

- `gradient_update` computes one batch's loss under a `tf.GradientTape` and applies its
  gradients with the model's optimizer, loss scaling included: a `LossScaleOptimizer`
  (`train.precision: mixed_float16`) divides every gradient by its scale, so the loss is
  multiplied by it first, under the tape, as `model.fit` does. (Written twice, the
  multi-worker step once forgot it and applied updates 2^15 times too small.)
- `class_weighting` turns `train.class_weight` into what a step multiplies each sample's
  loss by, as Keras' `fit(class_weight=...)` does (the batch's mean is still over its samples).
- `run_epochs` drives the epochs: the same shuffled order per (seed, epoch) as cnnlab's
  fit, the same Keras callbacks at the same points with the same logs (loss, accuracy,
  then what `validate` adds), and a stop (`model.stop_training`) honoured after the batch.

Example:
    @tf.function
    def step(x, y):
        return gradient_update(tf, model, lambda: (loss_of(model(x, training=True), y), 0))
    run_epochs(keras, model, callbacks, epochs=3, initial_epoch=0, samples=len(x), batch_size=32,
               seed=1, train_batch=lambda epoch, index: step(x[index], y[index]), validate=dict)
"""

from __future__ import annotations

from typing import Callable

import numpy as np


def gradient_update(tf, model, forward: Callable[[], tuple]):
    """One optimizer step: `forward()` -> (loss, extra) runs under a GradientTape; returns them.

    Args:
        tf: the tensorflow module.
        model: a compiled model; `model.optimizer` applies the gradients of `loss` with respect
            to `model.trainable_variables`.
        forward: computes the batch's loss (a scalar) and anything else the caller wants back
            (e.g. the count of correct predictions).

    The loss is scaled by `model.optimizer.scale_loss` inside the tape: the identity for every
    optimizer except a LossScaleOptimizer, which unscales the gradients in `apply_gradients`.
    """
    with tf.GradientTape() as tape:
        loss, extra = forward()
        scaled = model.optimizer.scale_loss(loss)
    variables = model.trainable_variables
    model.optimizer.apply_gradients(zip(tape.gradient(scaled, variables), variables))
    return loss, extra


def class_weighting(tf, class_weight: dict[int, float] | None, num_classes: int) -> Callable | None:
    """labels -> each sample's weight (its class's), for `train.class_weight`; None when unweighted.

    `labels` are class ids, one-hot rows, or a single sigmoid unit's 0/1 targets.
    """
    if class_weight is None:
        return None
    table = tf.constant([class_weight.get(c, 1.0) for c in range(max(num_classes, 2))], tf.float32)

    def weights(y):
        ids = tf.argmax(y, axis=-1) if y.shape.rank == 2 and y.shape[-1] > 1 else tf.reshape(y, [-1])
        return tf.gather(table, tf.cast(ids, tf.int32))

    return weights


def run_epochs(keras, model, callbacks: list, *, epochs: int, initial_epoch: int, samples: int, batch_size: int,
               seed: int, train_batch: Callable, validate: Callable[[], dict], verbose: int = 2,
               epoch_done: Callable[[int], None] | None = None) -> None:
    """Train epochs initial_epoch..epochs, calling the Keras callbacks where `model.fit` calls them.

    Args:
        keras: the keras module.
        model: the model the callbacks see (`model.stop_training` ends the fit after a batch).
        callbacks: Keras callbacks (cnnlab's recorder, early stopping, schedules, ...); a progress
            bar is added unless `verbose` is 0.
        epochs, initial_epoch: as for `model.fit` (a resumed run starts after its finished epochs).
        samples: the training samples; epoch e visits them in the order
            `np.random.default_rng([seed, e]).permutation(samples)`, `batch_size` at a time.
        train_batch: (epoch, index) -> (mean loss of the batch, correct predictions in it); it
            trains on the samples at `index`.
        validate: () -> the epoch's validation logs ({} without a validation split).
        verbose: 1 a live progress bar, 2 a line per epoch, 0 silent (as in `model.fit`).
        epoch_done: called with the epoch after its validation, before the callbacks' epoch end
            (the tape loop writes its per-iteration losses there).
    """
    steps = -(-samples // batch_size)
    callback_list = keras.callbacks.CallbackList(callbacks, add_progbar=verbose != 0, model=model, verbose=verbose,
                                                 epochs=epochs, steps=steps)
    model.stop_training = False
    callback_list.on_train_begin()
    for epoch in range(initial_epoch, epochs):
        callback_list.on_epoch_begin(epoch)
        order = np.random.default_rng([seed, epoch]).permutation(samples)
        loss_sum, correct = 0.0, 0.0
        for step in range(steps):
            index = order[step * batch_size:(step + 1) * batch_size]
            callback_list.on_train_batch_begin(step)
            loss, hits = train_batch(epoch, index)
            loss_sum, correct = loss_sum + float(loss) * len(index), correct + float(hits)
            seen = step * batch_size + len(index)
            callback_list.on_train_batch_end(step, {"loss": loss_sum / seen, "accuracy": correct / seen})
            if model.stop_training:  # e.g. the divergence guard, as model.fit stops mid-epoch
                break
        logs = {"loss": loss_sum / samples, "accuracy": correct / samples, **validate()}
        if epoch_done is not None:
            epoch_done(epoch)
        callback_list.on_epoch_end(epoch, logs)
        if model.stop_training:
            break
    callback_list.on_train_end(logs=None)
