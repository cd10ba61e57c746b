"""Models: check an architecture without TensorFlow, then build it as a Keras Sequential.

`check_model` walks the layer list with plain arithmetic (output size
(H + 2P - F) / S + 1), so an impossible shape or a loss that does not fit the output
is reported in a second, before TensorFlow is imported or data is loaded.

Example:
    cfg = load_config("configs/dnn.yaml")
    plan = check_model(cfg, "configs/dnn.yaml")
    plan.params  # 101770
    model = build_model(cfg, plan.input_shape)
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cnnlab.backbone import BackbonePlan, backbone_layer, build_backbone, check_backbone, connect, default_image_size
from cnnlab.backbone import describe as describe_backbone
from cnnlab.config import CROSSENTROPY_LOSSES, Config, CosineSchedule, did_you_mean, output_units
from cnnlab.data import DatasetInfo, describe
from cnnlab.data.spec import OWN_DATA
from cnnlab.errors import CnnlabError


@dataclass
class LayerPlan:
    index: int
    kind: str
    output_shape: tuple[int, ...]
    params: int


@dataclass
class ModelPlan:
    input_shape: tuple[int, ...]
    layers: list[LayerPlan]
    data: DatasetInfo  # the data set the model is for
    backbone: BackbonePlan | None = None  # model.backbone, checked: the head (layers) starts at its output

    @property
    def params(self) -> int:
        return sum(layer.params for layer in self.layers)

    @property
    def output_shape(self) -> tuple[int, ...]:
        return self.layers[-1].output_shape if self.layers else self.input_shape


def input_shape_for(cfg: Config, info: DatasetInfo) -> tuple[int, ...]:
    """The shape of one sample as the model takes it.

    Images keep their (height, width, channels), as conv layers need and Flatten accepts;
    a model that starts with a dense layer gets flat vectors (784,), as in the
    classic `reshape(60000, 784)` scripts. An `input` layer overrides both.
    """
    first = cfg.model.layers[0]
    if cfg.model.backbone is not None:  # the backbone takes the pictures as they are
        return info.sample_shape
    if first.type == "input":
        return tuple(first.shape)
    if info.is_image and first.type == "dense":
        return (int(np.prod(info.sample_shape)),)
    return info.sample_shape


def check_model(cfg: Config, source: str) -> ModelPlan:
    """Check the data, shapes and the output/loss fit; return every layer's output shape and params.

    A user's folder or CSV data set is listed here (not decoded): its classes and image
    size decide the model's input and output.
    """
    info = describe(data_settings(cfg), source)
    shape = input_shape_for(cfg, info)
    sample_size = int(np.prod(info.sample_shape))
    if int(np.prod(shape)) != sample_size:
        raise CnnlabError(
            f"{source}: model.layers[0].shape: {list(shape)} holds {int(np.prod(shape))} values, "
            f"but a {cfg.data.dataset} sample has {sample_size} ({'x'.join(map(str, info.sample_shape))})."
        )
    plan = ModelPlan(shape, [], info, _check_backbone(cfg, source, info))
    if plan.backbone is not None:
        shape = plan.backbone.output_shape
    for index, layer in enumerate(cfg.model.layers):
        if layer.type == "input":
            if index != 0:
                raise CnnlabError(f"{source}: model.layers[{index}]: an input layer can only come first.")
            continue
        where = f"{source}: model.layers[{index}] ({layer.type})"
        if layer.spatial and len(shape) != 3:
            fix = ("put it before any flatten or dense layer" if plan.layers else
                   f"{cfg.data.dataset} samples are not images: use an image data set or only dense layers")
            raise CnnlabError(f"{where}: needs an image input (height, width, channels), got shape {shape}; {fix}.")
        shape, params = layer.output(shape, where)
        plan.layers.append(LayerPlan(index, layer.type, shape, params))
    _check_output(cfg, plan, source, info.num_classes)
    _check_monitors(cfg, source)
    _check_schedule(cfg, source)
    _check_sample_counts(cfg, source, info)
    _check_augment(cfg, source, info)
    _check_memory(cfg, plan, source)
    return plan


def data_settings(cfg: Config):
    """The config's data section, with a backbone's own input size where the user's pictures have none set."""
    backbone = cfg.model.backbone
    if backbone is None or cfg.data.image_size is not None or cfg.data.dataset not in OWN_DATA:
        return cfg.data
    return cfg.data.model_copy(update={"image_size": default_image_size(backbone.name)})


def _check_backbone(cfg: Config, source: str, info: DatasetInfo) -> BackbonePlan | None:
    """model.backbone against the data, and train.fine_tune against the backbone."""
    backbone, fine_tune = cfg.model.backbone, cfg.train.fine_tune
    if backbone is None:
        if fine_tune is not None:
            raise CnnlabError(
                f"{source}: train.fine_tune: fine-tuning unfreezes a pretrained model.backbone, and this model has "
                "none; add model.backbone (e.g. {name: mobilenet, alpha: 0.25}) or remove train.fine_tune."
            )
        return None
    if not info.is_image:
        raise CnnlabError(f"{source}: model.backbone: {info.name} is not an image data set; a backbone takes pictures.")
    if cfg.model.layers[0].type == "input":
        raise CnnlabError(
            f"{source}: model.layers[0]: with a model.backbone the input is the picture (data.image_size); "
            "remove the input layer."
        )
    if cfg.train.loop == "gradient_tape":
        raise CnnlabError(
            f"{source}: train.loop: gradient_tape trains a plain layer list; a model.backbone trains with "
            "train.loop: fit."
        )
    spec = info.spec
    plan = check_backbone(backbone, (spec.height, spec.width), source,
                          what=info.name if cfg.data.image_size is None else "")
    if fine_tune is not None:
        layers = plan.layers
        if backbone.trainable:
            raise CnnlabError(
                f"{source}: train.fine_tune: model.backbone.trainable is true, so the backbone trains from the "
                "first epoch; fine-tuning is the second phase of a frozen one (trainable: false)."
            )
        if fine_tune.unfreeze != "all" and fine_tune.unfreeze > layers:
            raise CnnlabError(
                f"{source}: train.fine_tune.unfreeze: {fine_tune.unfreeze} is more than the {layers} layers of "
                f"{describe_backbone(plan)}; use at most {layers}, or all."
            )
    return plan


def _check_output(cfg: Config, plan: ModelPlan, source: str, num_classes: int) -> None:
    units = output_units(cfg)
    loss = cfg.train.loss.name
    last = len(cfg.model.layers) - 1
    if units is None:
        raise CnnlabError(f"{source}: model.layers: the model needs a dense output layer with one unit per class.")
    if len(plan.output_shape) != 1:
        raise CnnlabError(
            f"{source}: model.layers[{last}]: the model's output has shape {plan.output_shape}, expected "
            f"({units},); add a flatten layer before the dense layers."
        )
    binary_ok = num_classes == 2 and units in (1, 2)
    if units != num_classes and not binary_ok:
        raise CnnlabError(
            f"{source}: model.layers[{last}].units: the output has {units} units but "
            f"{cfg.data.dataset} has {num_classes} classes; use units: {num_classes}."
        )
    if loss == "binary_crossentropy" and num_classes != 2:
        raise CnnlabError(
            f"{source}: train.loss: binary_crossentropy is for 2 classes, but {cfg.data.dataset} has "
            f"{num_classes}; use categorical_crossentropy (one-hot) or sparse_categorical_crossentropy."
        )
    if loss.endswith("categorical_crossentropy") and units == 1:
        raise CnnlabError(
            f"{source}: train.loss: {loss} needs one output unit per class, but the output has 1; "
            "use binary_crossentropy or mse with a single sigmoid unit."
        )
    _check_output_activation(cfg, source, units)
    for index, name in enumerate(cfg.train.metrics):
        if name.startswith("top_") and int(name.split("_")[1]) >= num_classes:
            raise CnnlabError(
                f"{source}: train.metrics[{index}]: {name} is always 1 with {num_classes} classes; "
                f"use a k below {num_classes}."
            )


def output_activation(cfg: Config) -> tuple[int, str]:
    """The layer that decides what the model outputs, and its activation.

    Dropout passes values through; an activation layer after the last dense layer decides
    (a linear one passes values through too); any other layer outputs unsquashed values.
    """
    for index in range(len(cfg.model.layers) - 1, -1, -1):
        layer = cfg.model.layers[index]
        if layer.type == "dropout" or (layer.type == "activation" and layer.activation == "linear"):
            continue
        return index, getattr(layer, "activation", "linear")
    return len(cfg.model.layers) - 1, "linear"


def _check_output_activation(cfg: Config, source: str, units: int) -> None:
    """A loss on probabilities needs an output that gives them; one on logits, a linear output."""
    loss = cfg.train.loss
    if loss.name not in CROSSENTROPY_LOSSES:
        return  # mse/mae take any output (the one-layer XOR net: a sigmoid unit)
    index, activation = output_activation(cfg)
    layer = cfg.model.layers[index]
    where = f"{source}: model.layers[{index}] ({layer.type}) has activation {activation}"
    if loss.from_logits:
        if activation != "linear":
            raise CnnlabError(
                f"{where}, but train.loss.from_logits is true: the loss applies the "
                f"{'sigmoid' if loss.name == 'binary_crossentropy' else 'softmax'} itself and needs raw "
                "scores; use activation: linear, or set train.loss.from_logits: false."
            )
        return
    if loss.name == "binary_crossentropy":
        valid = ("sigmoid", "hard_sigmoid") if units == 1 else ("sigmoid", "hard_sigmoid", "softmax")
        if activation not in valid:
            raise CnnlabError(
                f"{where}, but binary_crossentropy takes probabilities; use activation: "
                f"{'sigmoid' if units == 1 else 'softmax or sigmoid'}, or set train.loss.from_logits: true "
                "with activation: linear."
            )
        return
    if activation != "softmax":
        raise CnnlabError(
            f"{where}, but {loss.name} takes probabilities that sum to 1; use activation: softmax, "
            "or set train.loss.from_logits: true with activation: linear."
        )


def _check_schedule(cfg: Config, source: str) -> None:
    """A cosine warm-up must end before the training does."""
    schedule, epochs = cfg.train.lr_schedule, cfg.train.epochs
    if not isinstance(schedule, CosineSchedule):
        return
    if schedule.warmup_epochs is not None and schedule.warmup_epochs >= epochs:
        raise CnnlabError(
            f"{source}: train.lr_schedule.warmup_epochs: {schedule.warmup_epochs:g} warm-up epochs leave no "
            f"epoch of the {epochs} (train.epochs) for the decay; use fewer, or warmup_fraction."
        )
    warmup = schedule.warmup_fraction or (schedule.warmup_epochs or 0) / epochs
    decay = schedule.decay_fraction or (schedule.decay_epochs or 0) / epochs
    if decay and warmup + decay > 1 + 1e-9:
        raise CnnlabError(
            f"{source}: train.lr_schedule: the warm-up and the decay together last longer than the {epochs} "
            "epochs of train.epochs, so the decay would not finish; shorten them, or leave out the decay "
            "length (then it lasts until the last epoch)."
        )


def _check_sample_counts(cfg: Config, source: str, info: DatasetInfo) -> None:
    """Subsets the data set can give, and a stratified split that can hold every class on both sides."""
    data = cfg.data
    for key, asked, size, split in (("train_samples", data.train_samples, info.train_size, "training"),
                                    ("test_samples", data.test_samples, info.test_size, "test")):
        if asked is not None and asked > size:
            raise CnnlabError(
                f"{source}: data.{key}: {asked} is more than the {size:,} {split} samples of "
                f"{data.dataset}; use at most {size}, or null for all of them."
            )
    if data.validation.method == "stratified":
        total = data.train_samples or info.train_size
        held_out = math.ceil(total * data.validation.size)  # as scikit-learn rounds test_size
        if min(held_out, total - held_out) < info.num_classes:
            raise CnnlabError(
                f"{source}: data.validation: a stratified split of {total} samples with size "
                f"{data.validation.size} leaves {held_out} for validation and {total - held_out} for "
                f"training, but each side needs one sample of each of the {info.num_classes} classes; "
                "use more samples, another size, or validation method split or none."
            )


def _check_augment(cfg: Config, source: str, info: DatasetInfo) -> None:
    augment = cfg.data.augment
    if augment is None:
        return
    if not info.is_image:
        raise CnnlabError(f"{source}: data.augment: {info.name} is not an image data set; leave augment out.")
    if augment.flip != "none" and info.preprocess == "mnist":
        raise CnnlabError(
            f"{source}: data.augment.flip: a mirrored digit is not the same digit (a flipped 2, 3, 7 is no "
            "digit at all); use flip: none, and rotation, translation or zoom instead."
        )


# Per weight, besides the weight itself and its gradient: the optimizer's state (Keras' slots).
_OPTIMIZER_SLOTS = {"sgd": 0, "adam": 2, "adagrad": 1, "rmsprop": 1}
_FLOAT32 = 4


@dataclass
class MemoryEstimate:
    """Bytes one training step needs, in float32: what TensorFlow would allocate, roughly.

    weights: every parameter; training: weights + gradients + the optimizer's slots
    (Adam keeps two per weight); activations: every layer's output for one batch, kept
    for the backward pass, and as much again for their gradients.
    """

    weights: int
    training: int
    activations: int

    @property
    def total(self) -> int:
        return self.training + self.activations


def estimate_memory(cfg: Config, plan: ModelPlan) -> MemoryEstimate:
    """How much memory training `plan` takes (a lower bound: TensorFlow adds its own overhead)."""
    opt = cfg.train.optimizer
    slots = _OPTIMIZER_SLOTS.get(opt.name, 2)
    if getattr(opt, "momentum", 0.0):  # SGD and RMSprop keep a momentum per weight
        slots += 1
    weights = plan.params * _FLOAT32
    values = int(np.prod(plan.input_shape)) + sum(int(np.prod(layer.output_shape)) for layer in plan.layers)
    return MemoryEstimate(weights, weights * (2 + slots), 2 * values * batch_samples(cfg, plan.data) * _FLOAT32)


def batch_samples(cfg: Config, info: DatasetInfo) -> int:
    """Samples in the largest batch: batch_size, unless the training set is smaller."""
    data = cfg.data
    return min(cfg.train.batch_size, (data.train_samples or info.train_size) * data.repeat)


def available_memory() -> int | None:
    """Bytes this process can still allocate: MemAvailable, within a container's limit; None if unknown."""
    available = None
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError, IndexError):
        pass
    if available is None:
        try:  # macOS and other Unixes: physical memory
            available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (AttributeError, ValueError, OSError):
            return None
    for limit_file, used_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                  ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                   "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            limit = int(Path(limit_file).read_text().strip())  # "max": no limit (ValueError)
            used = int(Path(used_file).read_text().strip())
        except (OSError, ValueError):
            continue
        available = min(available, max(limit - used, 0))
        break
    return available


def format_bytes(count: float) -> str:
    """1.5 GiB, 2.9 TiB: binary units, as memory is counted."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if count < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


def _check_memory(cfg: Config, plan: ModelPlan, source: str, available: int | None = None) -> None:
    """A model whose training cannot fit in this machine's memory is refused before TensorFlow allocates it."""
    available = available_memory() if available is None else available
    need = estimate_memory(cfg, plan)
    if available is None or need.total <= available:
        return
    machine = f"this machine has {format_bytes(available)} of memory free"
    if need.activations > need.training:
        widest = max(plan.layers, key=lambda layer: int(np.prod(layer.output_shape)))
        raise CnnlabError(
            f"{source}: model.layers[{widest.index}] ({widest.kind}) outputs {int(np.prod(widest.output_shape)):,} "
            f"values per sample; for a batch of {batch_samples(cfg, plan.data):,} (train.batch_size) the layers' outputs "
            f"take about {format_bytes(need.activations)}, training about {format_bytes(need.total)}, and "
            f"{machine}; use a smaller batch_size or fewer {_width_name(widest.kind)}."
        )
    largest = max(plan.layers, key=lambda layer: layer.params)
    what = _width_name(largest.kind)
    raise CnnlabError(
        f"{source}: model.layers[{largest.index}] ({largest.kind}) has {largest.params:,} parameters "
        f"({format_bytes(largest.params * _FLOAT32)} as float32); with its gradients and the "
        f"{cfg.train.optimizer.name} optimizer's state this model needs about {format_bytes(need.total)} to "
        f"train, and {machine}; use fewer {what}."
    )


def _width_name(kind: str) -> str:
    return "filters" if kind == "conv2d" else "units" if kind == "dense" else "units or filters before it"


def logged_values(cfg: Config) -> list[str]:
    """The values training logs every epoch: loss, the metrics, and their val_* with validation data."""
    names = ["loss", *cfg.train.metrics]
    return names + [f"val_{name}" for name in names] if cfg.data.validation.method != "none" else names


def _check_monitors(cfg: Config, source: str) -> None:
    names = logged_values(cfg)
    if cfg.train.loop == "gradient_tape":
        _check_tape_loop(cfg, source)
    if cfg.train.checkpoint.filename:
        _check_filename_pattern(cfg.train.checkpoint.filename, names, source)
    plateau = cfg.train.lr_schedule if getattr(cfg.train.lr_schedule, "name", None) == "reduce_on_plateau" else None
    for key, section in (("checkpoint", cfg.train.checkpoint), ("early_stopping", cfg.train.early_stopping),
                         ("lr_schedule", plateau)):
        if section is not None and section.monitor not in names:
            hint = ""
            if section.monitor.startswith("val_") and cfg.data.validation.method == "none":
                hint = " (data.validation.method is none, so no val_* values exist)"
            raise CnnlabError(
                f"{source}: train.{key}.monitor: {section.monitor!r} is not computed{hint}"
                f"{did_you_mean(section.monitor, names)}; "
                f"available: {', '.join(names)}."
            )


def _check_filename_pattern(pattern: str, names: list[str], source: str) -> None:
    """Placeholders may only be `epoch` and the logged values, formatted as Keras would."""
    import string

    where = f"{source}: train.checkpoint.filename: {pattern!r}"
    valid = ", ".join(["epoch", *names])
    try:
        fields = [field for _, field, _, _ in string.Formatter().parse(pattern) if field is not None]
    except ValueError as exc:
        raise CnnlabError(f"{where} is not a valid pattern ({exc}); write placeholders as {{epoch:02d}}.") from None
    for field in fields:
        if field not in ("epoch", *names):
            raise CnnlabError(
                f"{where}: placeholder {{{field}}} is not a logged value; valid placeholders: {valid}."
            )
    try:
        pattern.format(epoch=1, **dict.fromkeys(names, 0.5))
    except (ValueError, TypeError) as exc:
        raise CnnlabError(
            f"{where}: {exc}; epoch is an integer ({{epoch:02d}}), the other values are floats ({{val_accuracy:0.2f}})."
        ) from None


def _check_tape_loop(cfg: Config, source: str) -> None:
    """The hand-written loop trains on logits: a softmax/linear dense output, a cross-entropy loss."""
    where = f"{source}: train.loop: gradient_tape"
    loss = cfg.train.loss
    if loss.name not in ("categorical_crossentropy", "sparse_categorical_crossentropy"):
        raise CnnlabError(
            f"{where} trains with softmax cross-entropy, but train.loss is {loss.name}; "
            "use categorical_crossentropy or sparse_categorical_crossentropy."
        )
    if loss.label_smoothing:
        raise CnnlabError(
            f"{where} computes plain softmax cross-entropy (tf.nn, as the material does), without label "
            f"smoothing; remove train.loss.label_smoothing ({loss.label_smoothing:g}) or use train.loop: fit."
        )
    last = cfg.model.layers[-1]
    if last.type != "dense" or last.activation not in ("softmax", "linear"):
        what = f"{last.type} layer" if last.type != "dense" else f"dense layer with activation {last.activation}"
        raise CnnlabError(
            f"{where} needs a dense output layer with activation softmax or linear (its logits are what "
            f"the loss takes), but model.layers[{len(cfg.model.layers) - 1}] is a {what}."
        )
    extra = [name for name in cfg.train.metrics if name != "accuracy"]
    if extra:
        raise CnnlabError(f"{where} computes loss and accuracy only; remove {', '.join(extra)} from train.metrics.")


def build_model(cfg: Config, input_shape: tuple[int, ...], where: str = "the config"):
    """The Keras model for `cfg`, built on `input_shape` (not compiled): a Sequential, or a backbone and its head."""
    return build_network(cfg, input_shape, where).model


@dataclass
class Network:
    """A built model and, for a backbone model, its parts.

    Args:
        model: the whole model, picture in, class out: what is trained, saved and exported.
        backbone: the backbone's Keras parts (`cnnlab.backbone.BackboneParts`), or None.
        features: the picture-to-features part of `model` (preprocessing and backbone).
        head: model.layers on the features alone, sharing `model`'s layers (and weights).
    """

    model: object
    backbone: object = None
    features: object = None
    head: object = None


def build_network(cfg: Config, input_shape: tuple[int, ...], where: str = "the config") -> Network:
    """The Keras model for `cfg` and, with a backbone, its parts (weights loaded; not compiled)."""
    import keras

    own = [layer for layer in cfg.model.layers if layer.type != "input"]
    # train.precision: Keras' dtype policy, given to each layer (Keras' global policy would
    # leak into every later model of the process); the output layer computes in float32, as
    # Keras' mixed-precision guide says: a 16-bit softmax loses the small probabilities.
    layers = [layer.build(keras, "float32" if i == len(own) - 1 else cfg.train.precision)
              for i, layer in enumerate(own)]
    name = cfg.name.replace("+", "_")
    if cfg.model.backbone is None:
        return Network(keras.Sequential([keras.Input(shape=input_shape), *layers], name=name))
    plan = check_backbone(cfg.model.backbone, tuple(input_shape[:2]), where)
    parts = build_backbone(keras, plan, tuple(input_shape), cfg.data.scale, where)
    parts.network.trainable = cfg.model.backbone.trainable
    inputs, out = connect(keras, parts, tuple(input_shape))
    for layer in layers:
        out = layer(out)
    network = split_network(keras, keras.Model(inputs, out, name=name))
    network.backbone = parts
    return network


def split_network(keras, model) -> Network:
    """A whole backbone model (built here or loaded from a run) with its features and head parts.

    Both parts call the whole model's own layer objects again, so they share its weights:
    training the head trains the whole model's head.
    """
    backbone = backbone_layer(keras, model)
    at = model.layers.index(backbone)
    picture = keras.Input(shape=tuple(model.input_shape[1:]), name="picture")
    features = picture
    for layer in model.layers[1:at]:  # after the input: the preprocessing
        features = layer(features)
    features = backbone(features, training=False)
    head_input = keras.Input(shape=tuple(features.shape[1:]), name="features")
    out = head_input
    for layer in model.layers[at + 1:]:
        out = layer(out)
    return Network(model, None, keras.Model(picture, features, name=f"{model.name}_features"),
                   keras.Model(head_input, out, name=f"{model.name}_head"))


def summary_text(model) -> str:
    """Keras' own layer table, as text."""
    import keras

    lines: list[str] = []
    model.summary(print_fn=lambda line, **_: lines.append(line), line_length=78)  # rich crops at 80
    text = "".join(lines)
    if any(isinstance(layer, keras.Model) for layer in model.layers):
        network = backbone_layer(keras, model)
        trainable = sum(int(np.prod(w.shape)) for w in network.trainable_weights)
        total = network.count_params()
        text += (f" Backbone {network.name}: {total:,} params, {trainable:,} trainable, {total - trainable:,} frozen;"
                 " the layers after it are the head.\n")
    return text


def class_predictions(probs: np.ndarray, logits: bool = False) -> np.ndarray:
    """Class ids from model outputs: argmax, or for a single unit a 0.5 threshold (0 on a logit)."""
    probs = np.asarray(probs)
    if probs.ndim == 1 or probs.shape[-1] == 1:
        return (probs.reshape(len(probs)) > (0.0 if logits else 0.5)).astype("int64")
    return probs.argmax(axis=-1).astype("int64")
