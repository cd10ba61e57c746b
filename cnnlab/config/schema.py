"""The config schema: every key, type and default of a cnnlab YAML file lives here.

Each section is a pydantic model (strict: no `yes` becomes 1, no 2.5 becomes 2); a layer,
an optimizer and a learning-rate schedule are tagged unions (by `type` / `name`). Loading
is `cnnlab.config.loading`; the sentences of its errors are `cnnlab.config.messages`.

Example:
    Config.model_validate({"name": "m", "model": {"layers": [{"type": "dense", "units": 10}]}})
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import AfterValidator, BaseModel, BeforeValidator, Field, ValidationError, model_validator
from pydantic_core import PydanticCustomError

from cnnlab.config.fields import PositiveInt, Section, Size2D, as_tuple
from cnnlab.config.keypaths import KEY_PATH
from cnnlab.config.layers import DenseLayer, Layer
from cnnlab.config.yaml12 import YamlDumper
from cnnlab.errors import did_you_mean
from cnnlab.rundir import MODEL_SUFFIXES

DatasetName = Literal["mnist", "fashion_mnist", "xor", "folder", "csv"]
LossName = Literal[
    "sparse_categorical_crossentropy", "categorical_crossentropy",
    "binary_crossentropy", "mse", "mean_squared_error", "mae", "mean_absolute_error",
]
CROSSENTROPY_LOSSES = ("sparse_categorical_crossentropy", "categorical_crossentropy", "binary_crossentropy")
# train.metrics: these names, plus top_K_accuracy for any K (top_k_accuracy alone is K = 5, as in Keras)
METRIC_NAMES = ("accuracy", "top_k_accuracy", "precision", "recall", "auc", "mse", "mae")
# Keras compares these with targets of the output's shape (over all classes' outputs, micro-averaged)
ONE_HOT_METRICS = ("precision", "recall", "auc", "mse", "mae")
# the PydanticCustomError types of this schema's own validators: their messages are whole sentences already
OWN_ERRORS = ("metric", "one_of", "loss_option", "search_space", "class_weight")


RunName = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$", max_length=100)]


class BackboneSection(Section):
    """A pretrained keras.applications network under model.layers (cnnlab.backbone; its FAMILIES list the names).

    weights: imagenet (Keras' own download and cache), the path of a weights file (.h5), or
    null (a random start). trainable: false keeps it frozen (train.fine_tune unfreezes it
    later); pooling: avg or max gives one vector per picture, null the feature map itself.
    """

    name: str
    alpha: Annotated[float, Field(gt=0.0)] | None = None  # mobilenet's width; default 1.0
    weights: str | None = "imagenet"
    trainable: bool = False
    pooling: Literal["avg", "max"] | None = "avg"
    # frozen and not augmented: the head trains on features computed once (false: through the backbone every batch)
    cache_features: bool = True


class ModelSection(Section):
    backbone: BackboneSection | None = None  # null: model.layers is the whole model
    layers: Annotated[list[Layer], Field(min_length=1)]


# --- data ---------------------------------------------------------------------------


class ValidationSection(Section):
    """How to hold out validation data from the training split.

    stratified: scikit-learn's stratified split (class proportions kept), seeded.
    split: the last `size` fraction, like Keras' `validation_split`.
    none: no validation data (then nothing `val_*` can be monitored).
    """

    method: Literal["stratified", "split", "none"] = "stratified"
    size: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.2
    random_state: int = 777


class TestSplitSection(Section):
    """The test part of a user's data set that has no fixed one (no test/ folder, no split column):
    a stratified share, seeded, taken before the validation split and apart from it."""

    size: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.2
    random_state: int = 1234


class AugmentSection(Section):
    """Random changes to training batches, by Keras' preprocessing layers (never in the saved model).

    rotation: a fraction of a full turn (0.05: up to +-18 degrees), as keras.layers.RandomRotation.
    translation, zoom: a fraction of the height and width. contrast, brightness: a factor.
    flip: only for data where a mirrored image keeps its class (not digits).
    fill_mode: what fills the corners uncovered by a rotation/shift/zoom; auto: black for
    the built-in sets (their background), reflect for a user's photos.
    """

    rotation: Annotated[float, Field(ge=0.0, le=0.5)] = 0.0
    translation: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0
    zoom: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0
    contrast: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0
    brightness: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0
    flip: Literal["none", "horizontal", "vertical", "horizontal_and_vertical"] = "none"
    fill_mode: Literal["auto", "constant", "reflect", "nearest", "wrap"] = "auto"


class DataSection(Section):
    dataset: DatasetName = "mnist"
    path: str | None = None  # folder: one sub-folder per class (or train/ and test/); csv: file,label[,split]
    dir: str | None = None  # built-in sets' files; default: $CNNLAB_DATA_DIR, else ~/.cache/cnnlab/datasets
    download: bool = True  # fetch a missing built-in data set (never a corrupt one)
    image_size: Size2D | None = None  # [height, width]; default: the data set's own (own data: the first image's)
    color: Literal["grayscale", "rgb"] | None = None  # default: the data set's own (own data: the first image's)
    interpolation: Literal["bilinear", "nearest", "bicubic", "area", "lanczos"] = "bilinear"
    scale: Annotated[float, Field(gt=0.0)] = 255.0  # pixels become x / scale
    validation: ValidationSection = ValidationSection()
    test_split: TestSplitSection = TestSplitSection()  # own data without a fixed test set
    train_samples: PositiveInt | None = None  # use only the first N training images
    test_samples: PositiveInt | None = None  # use only the first N test images
    repeat: PositiveInt = 1  # repeat the training set N times per epoch (tiny sets: xor)
    augment: AugmentSection | None = None  # null: no augmentation
    skip_bad_images: bool = False  # own data: leave out files that cannot be read (else an error)
    cache: bool = True  # own data: keep the decoded images on disk (else decode into memory every run)
    cache_dir: str | None = None  # default: $CNNLAB_CACHE_DIR, else ~/.cache/cnnlab/images
    # how `predict` prepares a user's picture: auto = the data set's own (mnist: MNIST's steps,
    # fashion_mnist: Fashion-MNIST's, own data: none, i.e. the conversion and resize of training)
    predict_preprocess: Literal["auto", "mnist", "fashion", "none"] = "auto"


# --- train --------------------------------------------------------------------------


class _Optimizer(Section):
    """What every Keras optimizer takes besides its own options.

    weight_decay: decoupled weight decay, `w -= learning_rate * weight_decay * w` each step
        (Keras applies it to every trainable weight); null: none (adamw: 0.004, as Keras).
    clipnorm / global_clipnorm: clip each gradient's norm / all gradients' joint norm to this.
    """

    name: str
    learning_rate: Annotated[float, Field(gt=0.0)] = 0.001  # with a schedule: its peak (or start)
    weight_decay: Annotated[float, Field(ge=0.0)] | None = None
    clipnorm: Annotated[float, Field(gt=0.0)] | None = None
    global_clipnorm: Annotated[float, Field(gt=0.0)] | None = None

    @model_validator(mode="after")
    def _one_clipping(self):
        if self.clipnorm is not None and self.global_clipnorm is not None:
            raise PydanticCustomError(
                "one_of", "set clipnorm or global_clipnorm, not both (Keras clips one way at a time)"
            )
        return self


class SGD(_Optimizer):
    name: Literal["sgd"]
    learning_rate: Annotated[float, Field(gt=0.0)] = 0.01
    momentum: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0
    nesterov: bool = False


class Adam(_Optimizer):
    name: Literal["adam"]
    beta_1: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.9
    beta_2: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.999
    epsilon: Annotated[float, Field(gt=0.0)] = 1e-7


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter), keras.optimizers.AdamW."""

    name: Literal["adamw"]
    weight_decay: Annotated[float, Field(ge=0.0)] = 0.004


class Nadam(Adam):
    """Adam with Nesterov momentum, keras.optimizers.Nadam."""

    name: Literal["nadam"]


class Adagrad(_Optimizer):
    name: Literal["adagrad"]


class RMSprop(_Optimizer):
    name: Literal["rmsprop"]
    rho: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.9
    momentum: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0


Optimizer = Annotated[Union[SGD, Adam, AdamW, Nadam, Adagrad, RMSprop], Field(discriminator="name")]




def _checkpoint_filename(name: str) -> str:
    """A plain file name in the run directory; its placeholders are checked with the model."""
    if not name or "/" in name or "\\" in name or name in (".", ".."):
        raise PydanticCustomError(
            "checkpoint_filename",
            "must be a plain file name (it is written inside the run directory), "
            "e.g. dm_{epoch:02d}_{val_accuracy:0.2f}.hdf5",
        )
    if not name.endswith(MODEL_SUFFIXES):
        raise PydanticCustomError(
            "checkpoint_filename", "must end in .keras, .h5 or .hdf5 (the Keras file formats)"
        )
    if name == "best.keras":
        raise PydanticCustomError("checkpoint_filename", "best.keras is the run's own best checkpoint; pick another name")
    return name


class CheckpointSection(Section):
    """Keep the best model seen so far (always as `best.keras` in the run directory).

    `filename` adds a copy named by a Keras-style pattern, e.g.
    `dm_{epoch:02d}_{val_accuracy:0.2f}.hdf5`.
    """

    monitor: str = "val_accuracy"
    mode: Literal["auto", "min", "max"] = "auto"
    save_best_only: bool = True
    filename: Annotated[str, AfterValidator(_checkpoint_filename)] | None = None


class EarlyStoppingSection(Section):
    monitor: str = "val_accuracy"
    mode: Literal["auto", "min", "max"] = "auto"
    patience: Annotated[int, Field(ge=0)] = 10
    min_delta: Annotated[float, Field(ge=0.0)] = 0.0
    restore_best_weights: bool = True


class OneCycleSchedule(Section):
    """One-cycle learning rate, per batch: a linear warm-up from max/25 to `max_learning_rate`
    over `warmup_fraction` of all steps, then a cosine decay to max/10000 at the last step.
    The optimizer's own learning_rate is overridden while it runs."""

    name: Literal["one_cycle"]
    max_learning_rate: Annotated[float, Field(gt=0.0)]
    warmup_fraction: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.3


def _one_of(section: BaseModel, *keys: str) -> None:
    given = [key for key in keys if getattr(section, key) is not None]
    if len(given) > 1:
        raise PydanticCustomError("one_of", "set {keys}, not both", {"keys": " or ".join(given)})


class CosineSchedule(Section):
    """keras.optimizers.schedules.CosineDecay, per step: an optional linear warm-up from 0 to the
    optimizer's learning_rate, then a cosine decay to `alpha` x learning_rate.

    Warm-up and decay are given in epochs (`warmup_epochs: 1`, may be fractional) or as a
    fraction of all training steps (`warmup_fraction: 0.1`); cnnlab turns them into steps.
    No decay length: the decay lasts until the last epoch.
    """

    name: Literal["cosine"]
    warmup_epochs: Annotated[float, Field(ge=0.0)] | None = None
    warmup_fraction: Annotated[float, Field(ge=0.0, lt=1.0)] | None = None
    decay_epochs: Annotated[float, Field(gt=0.0)] | None = None
    decay_fraction: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    alpha: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0

    @model_validator(mode="after")
    def _one_length_each(self):
        _one_of(self, "warmup_epochs", "warmup_fraction")
        _one_of(self, "decay_epochs", "decay_fraction")
        return self


class ExponentialSchedule(Section):
    """keras.optimizers.schedules.ExponentialDecay: learning_rate x decay_rate ** (epochs done /
    decay_epochs), updated every step (in whole multiples of decay_epochs with `staircase`)."""

    name: Literal["exponential"]
    decay_rate: Annotated[float, Field(gt=0.0, lt=1.0)]
    decay_epochs: Annotated[float, Field(gt=0.0)] = 1.0
    staircase: bool = False


class StepSchedule(Section):
    """The learning rate times `factor` every `every_epochs` epochs
    (keras.optimizers.schedules.ExponentialDecay with staircase=True)."""

    name: Literal["step"]
    every_epochs: PositiveInt
    factor: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.1


class ReduceOnPlateauSchedule(Section):
    """keras.callbacks.ReduceLROnPlateau: when `monitor` has not improved by `min_delta` for
    `patience` epochs, the learning rate is multiplied by `factor` (not below
    `min_learning_rate`), then `cooldown` epochs pass before it counts again. Defaults as Keras."""

    name: Literal["reduce_on_plateau"]
    monitor: str = "val_loss"
    mode: Literal["auto", "min", "max"] = "auto"
    factor: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.1
    patience: Annotated[int, Field(ge=0)] = 10
    min_delta: Annotated[float, Field(ge=0.0)] = 1e-4
    cooldown: Annotated[int, Field(ge=0)] = 0
    min_learning_rate: Annotated[float, Field(ge=0.0)] = 0.0


LrSchedule = Annotated[
    Union[OneCycleSchedule, CosineSchedule, ExponentialSchedule, StepSchedule, ReduceOnPlateauSchedule],
    Field(discriminator="name"),
]


def _named(value: Any) -> Any:
    return {"name": value} if isinstance(value, str) else value  # `loss: mse` means `{name: mse}`


class Loss(Section):
    """The training loss: a Keras loss and its options; `loss: NAME` is short for `{name: NAME}`.

    label_smoothing (cross-entropies): targets become (1 - s) x one-hot + s / classes.
        Keras' SparseCategoricalCrossentropy has no label smoothing, so
        sparse_categorical_crossentropy with smoothing trains on one-hot targets with
        CategoricalCrossentropy (the same loss, given the same way).
    from_logits (cross-entropies): the output layer is linear (raw scores) and the loss applies
        the softmax (sigmoid for binary_crossentropy) itself; evaluate and predict do the same.
    """

    name: LossName = "sparse_categorical_crossentropy"
    label_smoothing: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0
    from_logits: bool = False

    @model_validator(mode="after")
    def _options_of_crossentropies(self):
        if self.name not in CROSSENTROPY_LOSSES and (self.label_smoothing or self.from_logits):
            raise PydanticCustomError(
                "loss_option", "{name} takes no label_smoothing or from_logits; they are for {valid}",
                {"name": self.name, "valid": ", ".join(CROSSENTROPY_LOSSES)},
            )
        return self


_TOP_K = re.compile(r"top_(\d+)_accuracy")


def metric_name(value: Any) -> str:
    """A metric as its history name: `top_k_accuracy` with k 3 is `top_3_accuracy`."""
    if isinstance(value, dict):
        unknown = sorted(set(value) - {"name", "k"})
        if unknown:
            raise PydanticCustomError("metric", "unknown key {key} in a metric; a metric has a name and, "
                                      "for top_k_accuracy, a k", {"key": repr(unknown[0])})
        if "k" in value:
            k = value["k"]
            if value.get("name") != "top_k_accuracy":
                raise PydanticCustomError("metric", "k is for top_k_accuracy only (got name {name})",
                                          {"name": repr(value.get("name"))})
            if not isinstance(k, int) or isinstance(k, bool) or k < 1:
                raise PydanticCustomError("metric", "k must be a whole number of at least 1 (got {k})", {"k": repr(k)})
            return f"top_{k}_accuracy"
        value = value.get("name")
    if not isinstance(value, str):
        raise PydanticCustomError("metric", "a metric is a name like accuracy or top_3_accuracy (got {value})",
                                  {"value": repr(value)})
    if value == "top_k_accuracy":
        return "top_5_accuracy"  # Keras' default k
    top_k = _TOP_K.fullmatch(value)
    if top_k and int(top_k.group(1)) >= 1:
        return f"top_{int(top_k.group(1))}_accuracy"
    if value in METRIC_NAMES:
        return value
    raise PydanticCustomError(
        "metric", "unknown metric {value}{hint}; valid: {valid}",
        {"value": repr(value), "hint": did_you_mean(value, list(METRIC_NAMES)),
         "valid": "accuracy, top_k_accuracy (k 5) or top_K_accuracy such as top_3_accuracy, "
                  "precision, recall, auc, mse, mae"},
    )


def _distinct(names: list[str]) -> list[str]:
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise PydanticCustomError("metric", "{name} is listed twice", {"name": twice[0]})
    return names


def _class_weight(value: Any) -> Any:
    """auto, or {class name: positive weight}; `{3: 5}` (YAML's number keys) names MNIST's class "3"."""
    if value is None or value == "auto":
        return value
    if not isinstance(value, dict) or not value:
        raise PydanticCustomError("class_weight", f"{value!r} is not valid; use auto, or weights by class name "
                                  "such as {cat: 2.0, dog: 1.0}")
    for name, weight in value.items():
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 < weight < math.inf:
            raise PydanticCustomError("class_weight", f"class {name}: {weight!r} is not a weight; give a "
                                      "positive number")
    return {str(name): float(weight) for name, weight in value.items()}


class FineTuneSection(Section):
    """A second phase after train.epochs: the backbone's top layers unfrozen, trained with a low learning rate.

    unfreeze: how many of the backbone's last layers train (or all); batch_norm: whether its
    batch-normalisation layers train too (they keep their ImageNet statistics either way).
    """

    unfreeze: PositiveInt | Literal["all"] = "all"
    epochs: PositiveInt
    learning_rate: Annotated[float, Field(gt=0.0)] = 1e-5
    batch_norm: bool = False


class TrainSection(Section):
    optimizer: Optimizer = Adam(name="adam")
    lr_schedule: LrSchedule | None = None  # null: the optimizer's constant learning_rate
    loss: Annotated[Loss, BeforeValidator(_named)] = Loss()
    # accuracy, top_3_accuracy (or {name: top_k_accuracy, k: 3}), precision, recall, auc, mse, mae
    metrics: Annotated[list[Annotated[str, BeforeValidator(metric_name)]], AfterValidator(_distinct)] = ["accuracy"]
    epochs: PositiveInt = 5
    batch_size: PositiveInt = 32
    checkpoint: CheckpointSection = CheckpointSection()
    early_stopping: EarlyStoppingSection | None = None  # null: train all epochs
    tensorboard: bool = False  # write TensorBoard logs to <run>/tensorboard
    # fit: Keras' model.fit. gradient_tape: cnnlab.tape's hand-written tf.GradientTape loop
    # (softmax cross-entropy on logits, per-iteration loss in iterations.csv/.png), same run directory.
    loop: Literal["fit", "gradient_tape"] = "fit"
    # progress output as Keras' verbose: auto is 1 (a live bar) on a terminal, 2 (a line per epoch) in a log
    verbose: Literal["auto", 0, 1, 2] = "auto"
    # A run directory (its best.keras) or a .keras/.h5 file to take the starting weights from,
    # layer by layer in order (shapes must match); null: Keras' initializers. Like LightningCLI's ckpt_path.
    init_from: str | None = None
    # tf.distribute (cnnlab.distribute, docs/SCALING.md). none: one process, one device. mirrored: every
    # GPU of this machine (MirroredStrategy). multi_worker: several processes/machines (TF_CONFIG or
    # `--workers`), trained by cnnlab's strategy-aware step (Keras' fit fails under that strategy).
    distribute: Literal["none", "mirrored", "multi_worker"] = "none"
    # what batch_size counts under distribute: global (one step's batch over all replicas: the same
    # training as one process) or per_replica (each replica's batch: the global batch grows with them)
    batch_size_scope: Literal["global", "per_replica"] = "global"
    # Keras' dtype policy for the layers: mixed_* computes in 16 bits, keeps float32 weights, and the
    # output layer stays float32. mixed_bfloat16 for CPUs with AVX512_BF16/AMX and recent GPUs,
    # mixed_float16 for GPUs (on a CPU it is refused: slower there than float32).
    precision: Literal["float32", "mixed_float16", "mixed_bfloat16"] = "float32"
    # weigh each class's share of the loss (cnnlab.data.balance): auto = scikit-learn's "balanced",
    # n_samples / (n_classes * count); {class name: weight}, a class left out weighs 1; null: unweighted
    class_weight: Annotated[str | dict[str, float] | None, BeforeValidator(_class_weight)] = None
    # after the train.epochs of a frozen model.backbone: train.fine_tune.epochs more with it unfrozen
    fine_tune: FineTuneSection | None = None


# --- tune ---------------------------------------------------------------------------


def parse_duration(value: Any) -> float:
    """Seconds in a duration such as 90, "90s", "30m" or "1.5h" (`tune.timeout`, `--timeout`)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0 and math.isfinite(value):
        return float(value)
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*([smh]?)\s*", value) if isinstance(value, str) else None
    if not match or float(match.group(1)) <= 0:
        raise PydanticCustomError("search_space", "a duration is a positive number of seconds, or one like 90s, "
                                  "30m or 1.5h (got {value})", {"value": repr(value)})
    return float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[match.group(2)]


class SearchRange(Section):
    """The values `cnnlab tune` tries for one config key: exactly one of

    choice: [a, b, ...], any values the config takes there (numbers, names, mappings);
    int: [low, high], whole numbers from low to high inclusive, every `step` (default 1);
    float: [low, high], uniform, or on a log scale with `log: true`, or on a grid of `step`.
    """

    choice: Annotated[list[Any], Field(min_length=1)] | None = None
    int_range: Annotated[tuple[int, int], BeforeValidator(as_tuple)] | None = Field(None, alias="int")
    float_range: Annotated[tuple[float, float], BeforeValidator(as_tuple)] | None = Field(None, alias="float")
    step: Annotated[float, Field(gt=0.0)] | None = None
    log: bool = False

    @model_validator(mode="after")
    def _one_range(self):
        kinds = [name for name, given in (("choice", self.choice), ("int", self.int_range),
                                          ("float", self.float_range)) if given is not None]
        if len(kinds) != 1:
            given = f", not {' and '.join(kinds)}" if kinds else ""
            raise PydanticCustomError("search_space", f"give one of choice, int or float{given}")
        if self.choice is not None:
            if self.step is not None or self.log:
                raise PydanticCustomError("search_space", "step and log are for int and float ranges, not a choice")
            return self
        low, high = self.int_range or self.float_range
        if low >= high:
            raise PydanticCustomError("search_space", "{kind}: low ({low}) must be below high ({high})",
                                      {"kind": kinds[0], "low": low, "high": high})
        if self.log and low <= 0:
            raise PydanticCustomError("search_space", "log: true needs a low above 0 (got {low})", {"low": low})
        if self.log and self.step is not None:
            raise PydanticCustomError("search_space", "give step or log, not both (a grid or a log scale)")
        if self.int_range is not None and self.step is not None and self.step != int(self.step):
            raise PydanticCustomError("search_space", "an int range's step is a whole number (got {step})",
                                      {"step": self.step})
        return self


def _search_space(value: Any) -> Any:
    """Each `tune.space` entry, validated with its key in the message (the key holds dots and brackets)."""
    if not isinstance(value, dict):
        return value  # the dict type's own error
    out = {}
    for key, entry in value.items():
        if not isinstance(key, str) or not KEY_PATH.fullmatch(key):
            raise PydanticCustomError("search_space", "{key} is not a key path; write keys as --set takes them, "
                                      "e.g. train.batch_size or model.layers[0].filters", {"key": repr(key)})
        try:
            out[key] = SearchRange.model_validate(entry)
        except ValidationError as exc:
            error = exc.errors()[0]
            where = ".".join(str(part) for part in error["loc"])
            if error["type"] == "extra_forbidden":
                message = f"unknown key {where!r}; valid: choice, int, float, step, log"
            elif error["type"] in ("model_type", "model_attributes_type"):
                message = "expected a mapping such as {choice: [a, b]}, {int: [low, high]} or {float: [low, high]}"
            else:
                message = (f"{where}: " if where else "") + error["msg"].rstrip(".")
                if error["type"] not in OWN_ERRORS:
                    message += f" (got {error.get('input')!r})"
            raise PydanticCustomError("search_space", "{key}: {message}", {"key": key, "message": message}) from None
    return out


class PrunerSection(Section):
    """Stopping weak trials early, on the objective reported after every epoch.

    median: a trial stops when its value is worse than the median of the earlier trials' values
        at the same epoch, once `startup_trials` trials have finished and after `warmup_epochs`.
    hyperband: Optuna's Hyperband over 1..train.epochs epochs. none: every trial trains all epochs.
    """

    name: Literal["median", "hyperband", "none"] = "median"
    startup_trials: Annotated[int, Field(ge=0)] = 3
    warmup_epochs: Annotated[int, Field(ge=0)] = 1


class TuneSection(Section):
    """What `cnnlab tune` searches: config keys (the paths --set takes) and their ranges, the value
    it optimises (logged every epoch; the best epoch's counts) and how long it searches."""

    objective: str = "val_accuracy"
    direction: Literal["auto", "maximize", "minimize"] = "auto"  # auto: accuracies up, losses down
    trials: PositiveInt | None = 20  # finished (completed or pruned) trials in the whole study; null: until timeout
    timeout: Annotated[Any, AfterValidator(parse_duration)] | None = None  # seconds, or 30m / 2h: start no trial after
    sampler: Literal["tpe", "random"] = "tpe"
    seed: int | None = None  # default: the config's seed
    pruner: PrunerSection = PrunerSection()
    space: Annotated[dict[str, SearchRange], BeforeValidator(_search_space), Field(min_length=1)]


class MlflowSection(Section):
    """Where a run is logged in MLflow (`cnnlab.track`).

    uri: the tracking store: a team's `mlflow server` (http://host:5000) or a database URL; default:
        MLFLOW_TRACKING_URI where it is set (MLflow's own convention), else the SQLite file
        <runs folder>/mlflow.db.
    experiment: the experiment the run goes into (made when missing); default: the config's name.
    """

    uri: Annotated[str, Field(min_length=1)] | None = None
    experiment: Annotated[str, Field(min_length=1, max_length=500)] | None = None


class TrackSection(Section):
    """Where runs are logged besides their run directory: `track: {mlflow: {}}` logs to MLflow's defaults."""

    mlflow: MlflowSection


class Config(Section):
    name: RunName
    seed: int = 42
    data: DataSection = DataSection()
    model: ModelSection
    train: TrainSection = TrainSection()
    tune: TuneSection | None = None  # the search of `cnnlab tune`; `cnnlab train` ignores it
    track: TrackSection | None = None  # MLflow tracking (`pip install 'cnnlab[mlflow]'`); null: none

    def one_hot_labels(self) -> bool:
        """Whether targets are one-hot vectors (vs integer class ids).

        `sparse_*` losses take integers; a single output unit takes a 0/1 column;
        every other loss gets one vector per sample, as Keras' `to_categorical` gives.
        A sparse loss gets one-hot targets too where Keras needs them: with label smoothing
        and for precision/recall/auc/mse/mae (it then trains with CategoricalCrossentropy).
        """
        if output_units(self) == 1:
            return False
        if self.train.loss.name.startswith("sparse_"):
            return self.train.loss.label_smoothing > 0 or any(m in ONE_HOT_METRICS for m in self.train.metrics)
        return True

    def to_yaml(self) -> str:
        unset = {key for key in ("tune", "track") if getattr(self, key) is None}
        data = self.model_dump(mode="json", exclude=unset or None)  # no `tune: null`
        return yaml.dump(data, Dumper=YamlDumper, sort_keys=False)


def output_units(cfg: Config) -> int | None:
    """Units of the last layer that decides the output width (the last dense layer)."""
    for layer in reversed(cfg.model.layers):
        if isinstance(layer, DenseLayer):
            return layer.units
    return None
