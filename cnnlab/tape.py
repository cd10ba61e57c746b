"""The hand-written training loop: tf.GradientTape instead of `model.fit` (`train.loop: gradient_tape`).

This is the loop of the reference material, made to fit a cnnlab run: every iteration
takes a batch, computes softmax cross-entropy on the model's logits under a
`tf.GradientTape`, and applies the gradients with the configured optimizer (the
reference config uses SGD lr 0.01, batch 128). After every epoch it scores the
validation split. It drives the same Keras callbacks `model.fit` would (cnnlab's run
recorder, early stopping, TensorBoard, the progress bar; the epochs are `cnnlab.loop`'s), so the run directory is the
same — best.keras, history.csv/json, loss.png/accuracy.png, metrics.json — plus the
per-iteration training loss:

    iterations.csv   iteration, epoch, loss (the mean loss of that iteration's batch)
    iterations.png   that loss per iteration, with the validation loss after each epoch

Logits: the material builds the model with a softmax output and hands that output to
`tf.nn.softmax_cross_entropy_with_logits`, which applies softmax a second time (the
loss then never goes below ~1.46 and its gradients shrink). cnnlab keeps the softmax in
the model — so the saved checkpoint predicts probabilities and `cnnlab evaluate` scores
it like any other run — and trains on what the material meant: the logits of the last
dense layer before its softmax (x @ kernel + bias). The loss is then the true
cross-entropy, the same number `model.evaluate` reports. A last dense layer with a
linear activation already outputs logits and is used as is.

Example:
    cfg = load_config("configs/fashion_cnn_tape.yaml")   # train.loop: gradient_tape
    train(cfg, "configs/fashion_cnn_tape.yaml")
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from cnnlab import rundir
from cnnlab.config import Config
from cnnlab.data import Splits
from cnnlab.loop import class_weighting, gradient_update, run_epochs
from cnnlab.plots import plot_iterations

ITERATIONS_CSV = "iterations.csv"
ITERATIONS_PNG = "iterations.png"
EVAL_BATCH = 1024


def fit_with_gradient_tape(model, cfg: Config, splits: Splits, callbacks: list, initial_epoch: int,
                           run_dir: Path, verbose: int = 2, class_weight: dict[int, float] | None = None) -> None:
    """Train compiled `model` for epochs initial_epoch..train.epochs with a tf.GradientTape loop.

    Args:
        model: a compiled Keras model whose last layer is a dense softmax or linear layer;
            its optimizer (`model.optimizer`) applies the gradients, so a resumed model
            continues with its saved optimizer state.
        cfg: the run's config (batch size, epochs, loss, seed).
        splits: the prepared data; y is one-hot for categorical_crossentropy, ids for sparse.
        callbacks: Keras callbacks, called at the same points as `model.fit` calls them.
        initial_epoch: epochs already finished (a resumed run).
        run_dir: where iterations.csv and iterations.png go.
        verbose: 1 a live progress bar, 2 a line per epoch, 0 silent (as in `model.fit`).
        class_weight: each class id's weight in the training loss (train.class_weight), or None.
    """
    import keras
    import tensorflow as tf

    weighting = class_weighting(tf, class_weight, model.output_shape[-1])
    train_step, eval_step = _steps(keras, tf, model, sparse=not cfg.one_hot_labels(), weighting=weighting)
    iterations = _read_iterations(run_dir / ITERATIONS_CSV, initial_epoch)

    def train_batch(epoch: int, index):
        loss, hits = train_step(splits.x_train[index], splits.y_train[index])
        iterations.append((len(iterations) + 1, epoch + 1, float(loss)))
        return loss, hits

    def validate() -> dict:
        if splits.x_val is None:
            return {}
        val_loss, val_accuracy = _evaluate(eval_step, splits.x_val, splits.y_val)
        return {"val_loss": val_loss, "val_accuracy": val_accuracy}

    try:
        run_epochs(keras, model, callbacks, epochs=cfg.train.epochs, initial_epoch=initial_epoch,
                   samples=len(splits.x_train), batch_size=cfg.train.batch_size, seed=cfg.seed,
                   train_batch=train_batch, validate=validate, verbose=verbose,
                   epoch_done=lambda epoch: _write_iterations(run_dir / ITERATIONS_CSV, iterations))
    finally:  # an interrupted run keeps its curve too
        if iterations:
            history = run_dir / rundir.HISTORY_JSON
            epochs = rundir.read_json(history)["epochs"] if history.exists() else []
            plot_iterations(iterations, epochs, run_dir / ITERATIONS_PNG, cfg.name)


def _steps(keras, tf, model, sparse: bool, weighting=None):
    """The compiled train and eval steps: (mean loss, correct count) of one batch; `weighting`
    (`cnnlab.loop.class_weighting`) weighs each training sample's loss by its class."""
    *body, head = model.layers

    def logits(x, training):
        for layer in body:
            x = layer(x, training=training)
        z = keras.ops.matmul(x, head.kernel)  # the head's pre-activation: logits, not softmax
        return z + head.bias if head.use_bias else z

    def per_sample(y, z):
        if sparse:
            return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=tf.cast(y, "int64"), logits=z)
        return tf.nn.softmax_cross_entropy_with_logits(labels=y, logits=z)

    def hits(y, z):
        labels = tf.cast(y, "int64") if sparse else tf.argmax(y, axis=-1)
        return tf.reduce_sum(tf.cast(tf.equal(tf.argmax(z, axis=-1), labels), "int32"))

    @tf.function(reduce_retracing=True)
    def train_step(x, y):
        def forward():
            z = logits(x, training=True)
            losses = per_sample(y, z)
            loss = tf.reduce_mean(losses if weighting is None else losses * weighting(y))
            if model.losses:  # the layers' kernel_regularizer penalties, as model.fit adds them
                loss += tf.add_n(model.losses)
            return loss, hits(y, z)

        return gradient_update(tf, model, forward)

    @tf.function(reduce_retracing=True)
    def eval_step(x, y):
        z = logits(x, training=False)
        total = tf.reduce_sum(per_sample(y, z))
        if model.losses:  # once per sample, so the mean carries it once, as in model.evaluate
            total += tf.add_n(model.losses) * tf.cast(tf.shape(z)[0], total.dtype)
        return total, hits(y, z)

    return train_step, eval_step


def _evaluate(eval_step, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    loss_sum, correct = 0.0, 0
    for start in range(0, len(x), EVAL_BATCH):
        loss, hits = eval_step(x[start:start + EVAL_BATCH], y[start:start + EVAL_BATCH])
        loss_sum, correct = loss_sum + float(loss), correct + int(hits)
    return loss_sum / len(x), correct / len(x)


def _read_iterations(path: Path, epochs_done: int) -> list[tuple[int, int, float]]:
    """The iterations of the epochs a resumed run already finished (none for a new run)."""
    if epochs_done == 0 or not path.exists():
        return []
    with path.open(newline="") as handle:
        rows = [(int(r["iteration"]), int(r["epoch"]), float(r["loss"])) for r in csv.DictReader(handle)]
    return [row for row in rows if row[1] <= epochs_done]


def _write_iterations(path: Path, iterations: list[tuple[int, int, float]]) -> None:
    out = io.StringIO()
    out.write("iteration,epoch,loss\n")
    out.writelines(f"{iteration},{epoch},{loss:.6g}\n" for iteration, epoch, loss in iterations)
    rundir.write_text(path, out.getvalue())
