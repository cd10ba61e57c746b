"""The plain Keras script a user writes to classify one picture: the reference for `cnnlab predict`.

Loads a saved model with `keras.saving.load_model`, reads one image with Pillow
(greyscale, resized to 28x28, inverted: dark ink on light paper becomes MNIST's light on
dark, /255) and prints the predicted digit. bench/run.py times the whole process, the
TensorFlow import included, as a user waits for it.

Example:
    python bench/plain_keras_predict.py runs/cnn-20261123-012542/best.keras one.png
"""

from __future__ import annotations

import sys

import keras
import numpy as np
from PIL import Image


def main() -> None:
    if len(sys.argv) != 3:
        sys.exit("usage: plain_keras_predict.py MODEL.keras IMAGE")
    model = keras.saving.load_model(sys.argv[1])
    image = Image.open(sys.argv[2]).convert("L").resize((28, 28))
    x = (255.0 - np.asarray(image, dtype="float32")) / 255.0
    probs = model.predict(x.reshape((1, *model.input_shape[1:])), verbose=0)[0]
    print(f"{sys.argv[2]}: {int(probs.argmax())} ({probs.max():.1%})")


if __name__ == "__main__":
    main()
