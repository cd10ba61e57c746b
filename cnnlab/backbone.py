"""Pretrained backbones: a keras.applications network under the model's layers, its weights, its input scaling.

`FAMILIES` is the one table of the backbones cnnlab offers: each family's constructor, how
its inputs are scaled, its default and minimum input size, the alphas it has and the width
of its features. `check_backbone` checks a backbone against the data with that table alone
(no TensorFlow); `build_backbone` makes the Keras parts:

    picture (x / data.scale, grey or RGB)
      -> preprocess   one fixed Dense(3) on the channels: back to pixels, grey to three
                      channels, and the family's own scaling ([-1, 1], BGR minus the mean, ...)
      -> backbone     keras.applications.<Family>(include_top=False, pooling=...), called with
                      training=False, so batch normalisation keeps its ImageNet statistics
      -> head         model.layers

so the user never writes `preprocess_input`, and the saved model takes pictures as training
saw them. Weights come from Keras' own download and cache (`imagenet`), a local weights file
(read as weights only: HDF5 arrays, never code), or nowhere (`null`: a random start).

Example:
    plan = check_backbone({"name": "mobilenet", "alpha": 0.25, "pooling": "avg"}, (224, 224), "cfg.yaml")
    plan.output_shape  # (256,)
    parts = build_backbone(keras, plan, input_shape=(224, 224, 3), scale=255.0, where="cfg.yaml")
"""

from __future__ import annotations

import hashlib
import math
import os
import zipfile
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cnnlab.errors import CnnlabError

IMAGENET = "imagenet"
POOLINGS = ("avg", "max", None)
_STRIDE = 32  # every family halves the picture five times


def _divisible(value: float, divisor: int = 8) -> int:
    """Keras applications' channel rounding (_make_divisible / _depth)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


@dataclass(frozen=True)
class Family:
    """One keras.applications family, as cnnlab builds it.

    Args:
        constructor: the name in keras.applications, e.g. "MobileNet".
        scaling: what the network takes: "tf" (pixels to [-1, 1]), "caffe" (BGR pixels minus
            the ImageNet mean) or "pixels" (0..255; the network scales them itself).
        default_size: the input size its ImageNet weights were trained at.
        min_size: the smallest input side Keras accepts.
        channels: the width of its features for an alpha (None: the family has no alpha).
        alphas: the widths with ImageNet weights (empty: no alpha).
        weight_sizes: the input sizes with their own ImageNet weights (empty: any size).
        layers: how many layers its Keras model has without pooling (train.fine_tune.unfreeze counts them).
    """

    constructor: str
    scaling: str
    channels: Callable[[float], int]
    default_size: int = 224
    min_size: int = 32
    alphas: tuple[float, ...] = ()
    weight_sizes: tuple[int, ...] = ()
    layers: int = 0


FAMILIES: dict[str, Family] = {
    "mobilenet": Family("MobileNet", "tf", lambda a: int(1024 * a), alphas=(0.25, 0.5, 0.75, 1.0),
                        weight_sizes=(128, 160, 192, 224), layers=86),
    "mobilenet_v2": Family("MobileNetV2", "tf", lambda a: _divisible(1280 * a) if a > 1.0 else 1280,
                           alphas=(0.35, 0.5, 0.75, 1.0, 1.3, 1.4), weight_sizes=(96, 128, 160, 192, 224),
                           layers=154),
    "mobilenet_v3_small": Family("MobileNetV3Small", "pixels", lambda a: _divisible(576 * a), alphas=(0.75, 1.0),
                                 layers=157),
    "mobilenet_v3_large": Family("MobileNetV3Large", "pixels", lambda a: _divisible(960 * a), alphas=(0.75, 1.0),
                                 layers=187),
    "efficientnet_b0": Family("EfficientNetB0", "pixels", lambda a: 1280, layers=237),
    "efficientnet_b1": Family("EfficientNetB1", "pixels", lambda a: 1280, default_size=240, layers=339),
    "efficientnet_b2": Family("EfficientNetB2", "pixels", lambda a: 1408, default_size=260, layers=339),
    "efficientnet_b3": Family("EfficientNetB3", "pixels", lambda a: 1536, default_size=300, layers=384),
    "efficientnet_v2_b0": Family("EfficientNetV2B0", "pixels", lambda a: 1280, layers=270),
    "resnet50": Family("ResNet50", "caffe", lambda a: 2048, layers=175),
    "convnext_tiny": Family("ConvNeXtTiny", "pixels", lambda a: 768, layers=133),
}

_CAFFE_MEAN = (103.939, 116.779, 123.68)  # ImageNet's mean pixel, BGR (keras.applications.imagenet_utils)


@dataclass(frozen=True)
class BackbonePlan:
    """A checked backbone: which family and settings, and what it outputs for the data's image size.

    Args:
        name: the family's key in FAMILIES.
        alpha: its width (None for families without one).
        weights: "imagenet", a weights file's path, or None (random).
        pooling: "avg", "max" or None (the feature map itself).
        image_size: (height, width) of the pictures it takes.
        output_shape: one picture's features, e.g. (256,) or (7, 7, 256).
    """

    name: str
    alpha: float | None
    weights: str | None
    pooling: str | None
    image_size: tuple[int, int]
    output_shape: tuple[int, ...]

    @property
    def family(self) -> Family:
        return FAMILIES[self.name]

    @property
    def layers(self) -> int:
        """Layers of the Keras network as built (pooling is one more): what fine_tune.unfreeze counts."""
        return self.family.layers + (self.pooling is not None)

    def identity(self) -> dict:
        """What decides the features apart from the weights' bytes: for cache keys and records."""
        return {"name": self.name, "alpha": self.alpha, "pooling": self.pooling, "image_size": list(self.image_size)}


def default_image_size(name: str) -> tuple[int, int]:
    size = FAMILIES[name].default_size
    return (size, size)


def check_backbone(section: Any, image_size: tuple[int, int], where: str, key: str = "model.backbone",
                   what: str = "") -> BackbonePlan:
    """Check a backbone's settings against the pictures' size; no TensorFlow.

    Args:
        section: the config's backbone section (attributes or a dict: name, alpha, weights, pooling).
        image_size: (height, width) of the data's pictures.
        where: the config file, for messages; key: the section's key path.
        what: the data's name (e.g. "mnist"), said when its own images are too small.
    """
    get = section.get if isinstance(section, dict) else lambda k, d=None: getattr(section, k, d)
    name = get("name")
    if name not in FAMILIES:
        from cnnlab.config import did_you_mean

        raise CnnlabError(
            f"{where}: {key}.name: {name!r} is not a backbone{did_you_mean(str(name), list(FAMILIES))}; "
            f"available: {', '.join(FAMILIES)}."
        )
    family = FAMILIES[name]
    alpha = get("alpha")
    weights = get("weights", IMAGENET)
    if family.alphas:
        alpha = 1.0 if alpha is None else float(alpha)
        if weights == IMAGENET and alpha not in family.alphas:
            raise CnnlabError(
                f"{where}: {key}.alpha: {name} has ImageNet weights for alpha "
                f"{', '.join(f'{a:g}' for a in family.alphas)}, not {alpha:g}."
            )
    elif alpha is not None:
        raise CnnlabError(f"{where}: {key}.alpha: {name} has no alpha (width); leave alpha out.")
    pooling = get("pooling", "avg")
    height, width = image_size
    if min(height, width) < family.min_size:
        size = f"{height}x{width}"
        whose = f"{what} images are {size}" if what else f"data.image_size {size} is"
        raise CnnlabError(
            f"{where}: data.image_size: {whose}, below {name}'s minimum of {family.min_size}x{family.min_size}; "
            f"set data.image_size: [{max(height, family.min_size)}, {max(width, family.min_size)}] or larger "
            f"(the images are resized, and grey ones become three channels inside the model)."
        )
    if weights == IMAGENET and family.weight_sizes and (height != width or height not in family.weight_sizes):
        raise CnnlabError(
            f"{where}: data.image_size: {name}'s ImageNet weights are for square pictures of "
            f"{', '.join(map(str, family.weight_sizes))} pixels, not {height}x{width}; use one of those sizes."
        )
    if weights not in (IMAGENET, None):
        check_weights_file(Path(weights).expanduser(), where, f"{key}.weights")
    channels = family.channels(alpha or 1.0)
    if pooling is None:
        out = (_downsampled(height), _downsampled(width), channels)
    else:
        out = (channels,)
    return BackbonePlan(name, alpha, weights, pooling, (height, width), out)


def _downsampled(side: int) -> int:
    for _ in range(int(math.log2(_STRIDE))):
        side = math.ceil(side / 2)
    return side


@dataclass
class BackboneParts:
    """The Keras pieces of a backbone model.

    Args:
        preprocess: the fixed Dense(3) that turns the model's input into what the family takes.
        network: the keras.applications model (one layer of the whole model).
        weights: {"weights": "imagenet" | path | None, "file": the file read, "sha256": its digest}.
    """

    preprocess: Any
    network: Any
    weights: dict


def build_backbone(keras, plan: BackbonePlan, input_shape: tuple[int, ...], scale: float, where: str,
                   key: str = "model.backbone") -> BackboneParts:
    """The preprocessing layer and the keras.applications network for `plan`, weights loaded, frozen."""
    family = plan.family
    constructor = getattr(keras.applications, family.constructor)
    options: dict = {"input_shape": (*plan.image_size, 3), "include_top": False, "pooling": plan.pooling}
    if plan.alpha is not None:
        options["alpha"] = plan.alpha
    record: dict = {"weights": plan.weights, "file": None, "sha256": None}
    with _keras_weights_file(plan, where, key) as fetched:
        try:
            network = constructor(weights=IMAGENET if plan.weights == IMAGENET else None, **options)
        except ValueError as exc:  # a size or alpha Keras refuses
            raise CnnlabError(f"{where}: {key}: keras.applications.{family.constructor} refuses it: "
                              f"{str(exc).splitlines()[0]}") from None
    if plan.weights == IMAGENET:
        record["file"] = fetched.get("path")
    elif plan.weights is not None:
        path = Path(plan.weights).expanduser()
        load_weights_file(network, path, where, f"{key}.weights", describe(plan))
        record["file"] = str(path.resolve())
    if record["file"]:
        record["sha256"] = file_sha256(Path(record["file"]))
    network.trainable = False
    return BackboneParts(preprocess_layer(keras, family.scaling, input_shape[-1], scale), network, record)


def describe(plan: BackbonePlan) -> str:
    """'mobilenet alpha 0.25': the family and width, as messages name a backbone."""
    return plan.name + (f" alpha {plan.alpha:g}" if plan.alpha is not None else "")


def preprocess_layer(keras, scaling: str, channels: int, scale: float):
    """A fixed Dense(3) on the channels: x / scale (grey or RGB) in, what the family takes out.

    One layer does it all (back to 0..255, grey copied to three channels, the family's own
    scaling and channel order), so the saved, converted and served models hold no custom
    code: every runtime runs a Dense layer.
    """
    kernel = np.zeros((channels, 3), np.float32)
    bias = np.zeros(3, np.float32)
    for out in range(3):
        source = 0 if channels == 1 else (2 - out if scaling == "caffe" else out)
        kernel[source, out] = scale
    if scaling == "tf":
        kernel /= 127.5
        bias[:] = -1.0
    elif scaling == "caffe":
        bias[:] = [-m for m in _CAFFE_MEAN]
    layer = keras.layers.Dense(3, name="preprocess", trainable=False)
    layer.build((None, None, None, channels))
    layer.set_weights([kernel, bias])
    return layer


def connect(keras, parts: BackboneParts, input_shape: tuple[int, ...]):
    """(the model's input, the features): preprocess, then the network in inference mode."""
    inputs = keras.Input(shape=input_shape, name="picture")
    # training=False: batch normalisation uses its ImageNet statistics whether or not its
    # layers are trainable (keras.io's fine-tuning guide), so fine-tuning does not wreck them.
    return inputs, parts.network(parts.preprocess(inputs), training=False)


def backbone_layer(keras, model):
    """The keras.applications network inside a whole model (the one nested model among its layers)."""
    return next(layer for layer in model.layers if isinstance(layer, keras.Model))


@contextmanager
def _keras_weights_file(plan: BackbonePlan, where: str, key: str):
    """Around a keras.applications constructor: the file Keras' get_file gave, or one line if it failed.

    Keras downloads ImageNet weights with `file_utils.get_file` (checking its hash and keeping
    the file in $KERAS_HOME/models/); cnnlab wraps that one call to learn the file's path for
    environment.json, and to turn a failed download into a message that names the file.
    """
    fetched: dict = {}
    if plan.weights != IMAGENET:
        yield fetched
        return
    from keras.src.backend import config
    from keras.src.utils import file_utils

    original = file_utils.get_file

    def recording(fname=None, origin=None, *args, **kwargs):
        try:
            fetched["path"] = original(fname, origin, *args, **kwargs)
        except Exception as exc:  # noqa: BLE001  (get_file raises a bare Exception when offline)
            home = os.path.join(kwargs.get("cache_dir") or config.keras_home(), kwargs.get("cache_subdir", "datasets"))
            name = fname or (origin or "").rsplit("/", 1)[-1]
            cause = str(exc).split(" -- ")[-1].strip() or type(exc).__name__
            raise CnnlabError(
                f"{where}: {key}.weights: imagenet: Keras could not download {name} ({cause}) and it is not in "
                f"its cache {home}; copy the file there, or set {key}.weights to the "
                f"path of a local copy ({origin})."
            ) from None
        return fetched["path"]

    file_utils.get_file = recording
    try:
        yield fetched
    finally:
        file_utils.get_file = original


def load_weights_file(network, path: Path, where: str, key: str, what: str) -> None:
    """Load a Keras HDF5 weights file into `network`, as arrays only; one line for a file that does not fit.

    Read with h5py, layer by layer in the file's order (as Keras' own legacy loader does), after
    every layer's shapes are compared: a file for another architecture or alpha names the first
    layer that does not fit, and nothing is loaded.
    """
    import h5py

    check_weights_file(path, where, key)
    where_key = f"{where}: {key}: {path}"
    with h5py.File(path, "r") as handle:
        stored = [_text(name) for name in handle.attrs["layer_names"]]
        stored = [name for name in stored if len(handle[name].attrs.get("weight_names", ())) > 0]
        layers = [layer for layer in network.layers if layer.weights]
        loaded = []
        for index, layer in enumerate(layers):
            if index >= len(stored):
                raise CnnlabError(
                    f"{where_key} holds weights for {len(stored)} layers, but {what} has {len(layers)}: "
                    f"nothing for layer {layer.name}; the file is for another architecture."
                )
            group = handle[stored[index]]
            arrays = [np.asarray(group[_text(n)]) for n in group.attrs["weight_names"]]
            wanted = [tuple(w.shape) for w in layer.weights]
            found = [tuple(a.shape) for a in arrays]
            if found != wanted:
                raise CnnlabError(
                    f"{where_key}: layer {stored[index]} does not fit {what}'s layer {layer.name}: the file holds "
                    f"shapes {_shapes(found)}, the backbone needs {_shapes(wanted)}; the file is for another "
                    "architecture or alpha."
                )
            loaded.append(arrays)
        if len(stored) > len(layers):
            raise CnnlabError(
                f"{where_key} holds weights for {len(stored)} layers, but {what} has {len(layers)}; the file "
                "is for another architecture."
            )
    for layer, arrays in zip(layers, loaded):
        layer.set_weights(arrays)


def check_weights_file(path: Path, where: str, key: str) -> None:
    """A weights file that is no Keras HDF5 weights file (missing, a whole model, text...) is one line."""
    import h5py

    where_key = f"{where}: {key}: {path}"
    if not path.is_file():
        raise CnnlabError(f"{where_key} does not exist; give the path of a weights file (.h5), imagenet or null.")
    if zipfile.is_zipfile(path):
        raise CnnlabError(
            f"{where_key} is a whole saved Keras model (.keras), not a weights file; give the backbone's "
            "weights file (.h5), e.g. the one keras.applications downloads, or weights: imagenet."
        )
    try:
        handle = h5py.File(path, "r")
    except OSError:
        raise CnnlabError(
            f"{where_key} is not an HDF5 weights file; give a Keras weights file (.h5), or weights: imagenet."
        ) from None
    with handle:
        if "model_config" in handle.attrs or "model_weights" in handle:
            raise CnnlabError(
                f"{where_key} is a whole saved model (HDF5 with its architecture), not a weights file; give "
                "the backbone's weights file (.h5 without the model), or weights: imagenet."
            )
        if "layer_names" not in handle.attrs:
            raise CnnlabError(
                f"{where_key} holds no Keras layer weights (no layer_names); give a weights file as "
                "keras.applications saves them (.h5), or weights: imagenet."
            )


def _text(value) -> str:
    return value.decode("utf8") if isinstance(value, bytes) else str(value)


def _shapes(shapes: list[tuple]) -> str:
    return ", ".join("x".join(map(str, shape)) for shape in shapes) or "none"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
