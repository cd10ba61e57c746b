"""The configs/cnn.yaml model in PyTorch: a second reference for training speed (optional).

Same layers, Adam, cross-entropy, batch size, x/255, data files and train/validation
sizes as bench/plain_keras_train.py, written the way a PyTorch user writes it
(TensorDataset + DataLoader with shuffle, a validation pass after every epoch). torch is
never a dependency of cnnlab: `make bench WITH_TORCH=1` installs it into its own venv,
and bench/run.py runs this script with that interpreter (and the repository on
PYTHONPATH, for `cnnlab.data.load_raw`, which needs only NumPy).

Prints a line per epoch and, last, one `RESULT {json}` line, as the Keras script does.

Example:
    PYTHONPATH=. bench/.torchvenv/bin/python bench/torch_train.py --samples 12000 --epochs 2
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from cnnlab.data import load_raw


def make_model() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 32, 5, padding="same"), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 2, padding="same"), nn.ReLU(), nn.MaxPool2d(2),
        nn.Dropout(0.25), nn.Flatten(),
        nn.Linear(64 * 7 * 7, 1000), nn.ReLU(),
        nn.Linear(1000, 10),  # softmax is inside CrossEntropyLoss
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=12000, help="first N MNIST training images (before the split)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--validation", type=float, default=0.2,
                        help="last fraction held out, as Keras' validation_split")
    parser.add_argument("--learning-rate", type=float, default=0.001)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()

    raw = load_raw("mnist")
    x = torch.from_numpy(raw.x_train[: args.samples].astype("float32").reshape(-1, 1, 28, 28) / 255.0)
    y = torch.from_numpy(raw.y_train[: args.samples].astype("int64"))
    split = int(np.floor(len(x) * (1.0 - args.validation)))
    train = DataLoader(TensorDataset(x[:split], y[:split]), batch_size=args.batch_size, shuffle=True)
    val = DataLoader(TensorDataset(x[split:], y[split:]), batch_size=args.batch_size)

    torch.manual_seed(args.seed)
    model = make_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=args.learning_rate)
    loss_fn = nn.CrossEntropyLoss()

    epoch_seconds = []
    val_accuracy = None
    started = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        epoch_started = time.perf_counter()
        model.train()
        for xb, yb in train:
            optimizer.zero_grad()
            loss = loss_fn(model(xb), yb)
            loss.backward()
            optimizer.step()
        model.eval()
        correct = 0
        with torch.no_grad():
            for xb, yb in val:
                correct += int((model(xb).argmax(1) == yb).sum())
        val_accuracy = correct / max(1, len(x) - split)
        epoch_seconds.append(time.perf_counter() - epoch_started)
        print(f"epoch {epoch}: {epoch_seconds[-1]:.2f} s, {split / epoch_seconds[-1]:.1f} training samples/s, "
              f"loss {loss.item():.4f}, val_accuracy {val_accuracy:.4f}", flush=True)
    fit_seconds = time.perf_counter() - started
    print("RESULT " + json.dumps({
        "train_samples": split, "epoch_seconds": epoch_seconds, "fit_seconds": fit_seconds,
        "val_accuracy": val_accuracy, "torch": torch.__version__, "threads": torch.get_num_threads(),
    }), flush=True)


if __name__ == "__main__":
    main()
