"""Time to 99% MNIST test accuracy of a plain Keras script: the reference for `cnnlab train`'s speed (issue 15).

Two recipes, written the way people write them (NumPy arrays into `model.fit`, no run
directory, no checkpoints):
- `material`: the material's "CNN + dropout" (SPEC.md): Conv(32, 5x5, same) -> MaxPool ->
  Conv(64, 2x2, same) -> MaxPool -> Dropout 0.25 -> Flatten -> Dense(1000) -> Dense(10),
  Adam 0.001, batch 32, x/255, sparse cross-entropy, all 60,000 training images.
- `fast`: configs/mnist_fast.yaml's recipe by hand (the same model, Adam with the same
  one-cycle learning rate, label smoothing 0.1 on one-hot labels, batch 128, one epoch), so
  that the ratio shows what cnnlab adds or saves.

After every epoch the script scores the full 10,000-image test set (that time counts) and
prints `reached 0.99 after epoch N` the first time the accuracy is at least 0.99; it stops
there. bench/speed_figures.py times that line from the process start. Last, one
`RESULT {json}` line: per epoch the test accuracy and the seconds since the script started.

Example:
    python bench/plain_keras_time_to_99.py --recipe material --max-epochs 5
"""

from __future__ import annotations

import argparse
import json
import math
import time

STARTED = time.perf_counter()

import keras  # noqa: E402  (after STARTED: the import is part of the time, as for cnnlab)
import numpy as np  # noqa: E402
from plain_keras_train import cnn_model  # noqa: E402  (the same model as the throughput script)

from cnnlab.data import load_raw  # noqa: E402  (only reads the IDX files)

TARGET = 0.99


class OneCycle(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up from peak/25 to peak, then cosine down to peak/1e4 (configs/mnist_fast.yaml's one_cycle)."""

    def __init__(self, peak: float, total_steps: int, warmup_fraction: float):
        self.peak, self.total, self.warmup = peak, total_steps, max(1, int(total_steps * warmup_fraction))

    def __call__(self, step):
        step = keras.ops.cast(step, "float32")
        start, end = self.peak / 25.0, self.peak / 1e4
        rising = start + (self.peak - start) * step / self.warmup
        progress = keras.ops.minimum(1.0, (step - self.warmup) / max(1, self.total - 1 - self.warmup))
        falling = end + (self.peak - end) * 0.5 * (1.0 + keras.ops.cos(math.pi * progress))
        return keras.ops.where(step < self.warmup, rising, falling)


def material_model():
    return cnn_model(), keras.optimizers.Adam(0.001), 32, 5


def fast_model(steps_per_epoch: int):
    epochs = 1
    return keras.Sequential([
        keras.Input((28, 28, 1)),
        keras.layers.Conv2D(16, 5, activation="relu"),
        keras.layers.MaxPooling2D(2),
        keras.layers.Conv2D(32, 5, activation="relu"),
        keras.layers.MaxPooling2D(2),
        keras.layers.Flatten(),
        keras.layers.Dense(128, activation="relu"),
        keras.layers.Dense(10, activation="softmax"),
    ]), keras.optimizers.Adam(OneCycle(0.01, steps_per_epoch * epochs, 0.3)), None, epochs


class TestScore(keras.callbacks.Callback):
    """The full test set after every epoch; stops training at the first epoch at or above TARGET."""

    def __init__(self, x, y):
        super().__init__()
        self.x, self.y, self.epochs = x, y, []

    def on_epoch_end(self, epoch, logs=None):
        probs = self.model.predict(self.x, batch_size=1000, verbose=0)
        accuracy = float(np.mean(probs.argmax(axis=1) == self.y))
        self.epochs.append({"epoch": epoch + 1, "test_accuracy": accuracy,
                            "seconds": round(time.perf_counter() - STARTED, 3)})
        print(f"epoch {epoch + 1}: test accuracy {accuracy:.4f}", flush=True)
        if accuracy >= TARGET:
            print(f"reached {TARGET} after epoch {epoch + 1}", flush=True)
            self.model.stop_training = True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", choices=["material", "fast"], default="material")
    parser.add_argument("--max-epochs", type=int, help="give up after this many epochs (default: the recipe's)")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()

    raw = load_raw("mnist")
    x = raw.x_train.astype("float32").reshape(-1, 28, 28, 1) / 255.0
    x_test = raw.x_test.astype("float32").reshape(-1, 28, 28, 1) / 255.0
    keras.utils.set_random_seed(args.seed)
    y = raw.y_train
    if args.recipe == "material":
        model, optimizer, batch_size, epochs = material_model()
        loss = "sparse_categorical_crossentropy"
    else:
        batch_size = 128
        model, optimizer, _, epochs = fast_model(-(-len(x) // batch_size))
        loss = keras.losses.CategoricalCrossentropy(label_smoothing=0.1)
        y = keras.utils.to_categorical(y, 10)
    model.compile(optimizer=optimizer, loss=loss, metrics=["accuracy"])
    score = TestScore(x_test, raw.y_test)
    model.fit(x, y, batch_size=batch_size, epochs=args.max_epochs or epochs, callbacks=[score], verbose=2)
    reached = next((row for row in score.epochs if row["test_accuracy"] >= TARGET), None)
    print("RESULT " + json.dumps({
        "recipe": args.recipe, "params": model.count_params(), "batch_size": batch_size, "epochs": score.epochs,
        "reached_epoch": reached and reached["epoch"], "reached_seconds": reached and reached["seconds"],
    }), flush=True)


if __name__ == "__main__":
    main()
