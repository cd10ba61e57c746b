"""The plain Keras script a user writes for the configs/cnn.yaml model: the reference for cnnlab's speed.

Same model, optimizer, loss, batch size, scaling and data files as `cnnlab train
configs/cnn.yaml`, written the way people write it: NumPy arrays into `model.fit` with
`validation_split`, no checkpoints, no run directory. Only reading the IDX files reuses
`cnnlab.data.load_raw` (that part is not measured).

Prints a line per epoch and, last, one `RESULT {json}` line for bench/run.py with the
seconds of every epoch (from epoch start to epoch end, the validation pass included, as
cnnlab's history.json counts them) and of the whole `fit` call.

Example:
    python bench/plain_keras_train.py --samples 12000 --epochs 2
"""

from __future__ import annotations

import argparse
import json
import time

import keras
import numpy as np

from cnnlab.data import load_raw


class EpochTimer(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        self.seconds = []

    def on_epoch_begin(self, epoch, logs=None):
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self.started)


def cnn_model():
    """The material's "CNN + dropout" (configs/cnn.yaml's model)."""
    return keras.Sequential([
        keras.Input((28, 28, 1)),
        keras.layers.Conv2D(32, 5, padding="same", activation="relu"),
        keras.layers.MaxPooling2D(2, strides=2),
        keras.layers.Conv2D(64, 2, padding="same", activation="relu"),
        keras.layers.MaxPooling2D(2, strides=2),
        keras.layers.Dropout(0.25),
        keras.layers.Flatten(),
        keras.layers.Dense(1000, activation="relu"),
        keras.layers.Dense(10, activation="softmax"),
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=12000, help="first N MNIST training images (before the split)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--validation", type=float, default=0.2, help="validation_split")
    parser.add_argument("--learning-rate", type=float, default=0.001)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()

    raw = load_raw("mnist")
    x = raw.x_train[: args.samples].astype("float32").reshape(-1, 28, 28, 1) / 255.0
    y = raw.y_train[: args.samples]

    keras.utils.set_random_seed(args.seed)
    model = cnn_model()
    model.compile(optimizer=keras.optimizers.Adam(args.learning_rate),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])

    timer = EpochTimer()
    started = time.perf_counter()
    history = model.fit(x, y, batch_size=args.batch_size, epochs=args.epochs,
                        validation_split=args.validation, callbacks=[timer], verbose=2)
    fit_seconds = time.perf_counter() - started

    train_samples = int(np.floor(len(x) * (1.0 - args.validation)))  # where Keras splits
    for epoch, seconds in enumerate(timer.seconds, 1):
        print(f"epoch {epoch}: {seconds:.2f} s, {train_samples / seconds:.1f} training samples/s")
    print("RESULT " + json.dumps({
        "train_samples": train_samples, "epoch_seconds": timer.seconds, "fit_seconds": fit_seconds,
        "val_accuracy": history.history.get("val_accuracy", [None])[-1],
    }), flush=True)


if __name__ == "__main__":
    main()
