"""Frozen features, computed once: a frozen backbone's output for each picture, so the head trains on them.

While the backbone is frozen and the training batches are not augmented, the backbone gives
each picture the same features in every epoch; computing them once turns the frozen epochs
into a pass over a small array. They are kept beside the decoded images:

    <cache dir>/features/<images key>-<hash>/
      features.npy     (rows, *feature shape) float32, one row per row of the decoded images
      done.npy         (rows,) bool: which rows hold features (only the rows a run used)
      index.json       what the features depend on: the decoded images' index (their files and
                       image spec), the backbone, its weights' sha256 and the input scale

so another weights file, backbone, image size or scale, or any changed file, is another entry.
A data set held in memory (the built-in sets, `data.cache: false`), or a backbone without a
weights file (random), has its features computed in memory, once per run.

Example:
    features, reused = frozen_features(feature_model, splits.x_train.images, rows, scale=255.0,
                                       identity=plan.identity(), sha256=digest)
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from cnnlab.data.cache import RowFile
from cnnlab.errors import CnnlabError

FORMAT = 1
_BATCH = 32  # pictures per backbone call: at 64 the peak memory of MobileNet at 224 px doubled, barely faster


def frozen_features(feature_model, images, rows: np.ndarray, scale: float, identity: dict, sha256: str | None,
                    shape: tuple[int, ...], batch_size: int = _BATCH) -> tuple[np.ndarray, int]:
    """The features of `rows` of `images`: (an array with a row for every row of `images`, rows reused).

    Rows not asked for are zeros (never read). `images` from the decoded-image cache (a
    `RowFile`) with a weights file's `sha256` reuse and extend the entry on disk; anything
    else is computed here, in memory.

    Args:
        feature_model: the Keras model from the picture (x / scale) to the backbone's features.
        images: every row of the data set, uint8 (an array or a `RowFile`).
        rows: the rows whose features are needed (training and validation rows).
        scale: pictures are x / scale, as training makes them.
        identity: the backbone's settings (`BackbonePlan.identity()`).
        sha256: its weights file's digest; None (random weights) keeps nothing on disk.
        shape: one picture as the model takes it, e.g. (224, 224, 3).
    """
    rows = np.unique(np.asarray(rows, np.int64))
    slot = _slot(images, scale, identity, sha256)
    out_shape = tuple(int(d) for d in feature_model.output.shape[1:])
    features = done = None
    if slot is not None:
        features, done = _read(slot, len(images), out_shape)
    if features is None:
        features = np.zeros((len(images), *out_shape), np.float32)
        done = np.zeros(len(images), bool)
    missing = rows[~done[rows]]
    for start in range(0, len(missing), batch_size):
        chunk = missing[start:start + batch_size]
        x = images[chunk].astype(np.float32) / np.float32(scale)
        features[chunk] = np.asarray(feature_model(x.reshape((len(chunk), *shape)), training=False))
    done[missing] = True
    if slot is not None and len(missing):
        _write(slot, features, done, images, scale, identity, sha256)
    return features, len(rows) - len(missing)


def _slot(images, scale: float, identity: dict, sha256: str | None) -> Path | None:
    if not isinstance(images, RowFile) or sha256 is None:
        return None
    source = images.path.parent
    try:
        index = (source / "index.json").read_bytes()
    except OSError:
        return None
    what = json.dumps([FORMAT, hashlib.sha256(index).hexdigest(), identity, sha256, scale], sort_keys=True)
    return source.parent / "features" / f"{source.name}-{hashlib.sha256(what.encode()).hexdigest()[:16]}"


def _read(slot: Path, count: int, shape: tuple[int, ...]) -> tuple[np.ndarray | None, np.ndarray | None]:
    try:
        features = np.load(slot / "features.npy")
        done = np.load(slot / "done.npy")
    except (OSError, ValueError):
        return None, None
    if features.shape != (count, *shape) or done.shape != (count,) or features.dtype != np.float32:
        return None, None
    return features, done.astype(bool)


def _write(slot: Path, features: np.ndarray, done: np.ndarray, images: RowFile, scale: float, identity: dict,
           sha256: str) -> None:
    """Replace the entry atomically: a run reading it meanwhile sees the old one or the new one."""
    root = slot.parent
    try:
        root.mkdir(parents=True, exist_ok=True)
        building = Path(tempfile.mkdtemp(dir=root, prefix=".building-"))
    except OSError as exc:
        raise CnnlabError(f"{root}: cannot write the feature cache ({exc.strerror}); set data.cache_dir to a "
                          "writable folder, or data.cache: false.") from None
    try:
        np.save(building / "features.npy", features)
        np.save(building / "done.npy", done)
        (building / "index.json").write_text(json.dumps(
            {"format": FORMAT, "images": str(images.path.parent), "backbone": identity, "weights_sha256": sha256,
             "scale": scale, "rows_done": int(done.sum())}))
        old = None
        if slot.exists():
            old = root / f".old-{slot.name}-{os.getpid()}"
            os.replace(slot, old)
        os.replace(building, slot)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except OSError as exc:
        raise CnnlabError(f"{root}: cannot write the feature cache ({exc.strerror}).") from None
    finally:
        shutil.rmtree(building, ignore_errors=True)
