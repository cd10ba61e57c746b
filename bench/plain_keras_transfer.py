"""The transfer-learning script every Keras user copies (keras.io's guide): the anchor for configs/photos_transfer.yaml.

`image_dataset_from_directory` at 224x224 (batch 32) on the photo folder's train/ and test/,
keras.applications.MobileNet (alpha 0.25, no top) with the ImageNet weights file given,
frozen and called with training=False, `preprocess_input` in the model, global average
pooling, dropout 0.2, a dense softmax, Adam 1e-3, 40 epochs, then the test accuracy. No
validation data, no checkpoints: the script as people write it.

The last line is `RESULT {"test_accuracy": ..., "fit_seconds": ..., "epochs": ...}`.

Example:
    python bench/plain_keras_transfer.py ../shared/photos/hymenoptera ../shared/weights/mobilenet_2_5_224_tf_no_top.h5
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import keras


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("folder")
    parser.add_argument("weights")
    parser.add_argument("--epochs", type=int, default=40)
    args = parser.parse_args()
    folder = Path(args.folder)
    keras.utils.set_random_seed(42)
    train = keras.utils.image_dataset_from_directory(folder / "train", image_size=(224, 224), batch_size=32, seed=42)
    test = keras.utils.image_dataset_from_directory(folder / "test", image_size=(224, 224), batch_size=32,
                                                    shuffle=False)
    classes = len(train.class_names)

    base = keras.applications.MobileNet(input_shape=(224, 224, 3), alpha=0.25, include_top=False,
                                        weights=args.weights)
    base.trainable = False
    inputs = keras.Input(shape=(224, 224, 3))
    x = keras.applications.mobilenet.preprocess_input(inputs)
    x = base(x, training=False)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dropout(0.2)(x)
    outputs = keras.layers.Dense(classes, activation="softmax")(x)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    started = time.perf_counter()
    model.fit(train, epochs=args.epochs, verbose=2)
    fit_seconds = time.perf_counter() - started
    _, accuracy = model.evaluate(test, verbose=0)
    print("RESULT " + json.dumps({"test_accuracy": float(accuracy), "fit_seconds": fit_seconds,
                                  "epochs": args.epochs}), flush=True)


if __name__ == "__main__":
    main()
