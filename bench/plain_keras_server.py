"""The prediction server a user writes by hand: the reference for `cnnlab serve`.

A minimal FastAPI app: the model is loaded once with `keras.saving.load_model`, and each
`POST /predict` (a multipart file upload) reads the image with Pillow (greyscale, resized
to 28x28, inverted: dark ink on light paper becomes MNIST's light on dark, /255) and calls
`model.predict` on it, as tutorials do. bench/serve_figures.py starts it next to
`cnnlab serve` and sends both the same requests.

Example:
    python bench/plain_keras_server.py runs/cnn-20261123-012542/best.keras --port 8001
"""

from __future__ import annotations

import argparse
import io

import keras
import numpy as np
import uvicorn
from fastapi import FastAPI, File, UploadFile
from PIL import Image


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("--port", type=int, default=8001)
    args = parser.parse_args()

    model = keras.saving.load_model(args.model)
    app = FastAPI()

    @app.get("/health")
    def health():
        return {"status": "ok"}

    @app.post("/predict")
    def predict(file: UploadFile = File(...)):
        image = Image.open(io.BytesIO(file.file.read())).convert("L").resize((28, 28))
        x = (255.0 - np.asarray(image, dtype="float32")) / 255.0
        probs = model.predict(x.reshape((1, *model.input_shape[1:])), verbose=0)[0]
        return {"class": int(probs.argmax()), "probability": float(probs.max())}

    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
