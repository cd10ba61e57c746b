"""What `model.compile` gets, and the callbacks that drive the learning rate: all Keras' own.

From the config's `train` section this module makes
- the optimizer (`keras.optimizers.SGD/Adam/AdamW/Nadam/Adagrad/RMSprop`, with weight
  decay and gradient clipping), whose learning rate is a constant or a Keras
  `LearningRateSchedule` (one-cycle, cosine with warm-up, exponential, step);
- the loss object (`keras.losses.*Crossentropy` with label smoothing / from_logits,
  `MeanSquaredError`, `MeanAbsoluteError`);
- the metric objects (accuracy, top-k accuracy, precision, recall, AUC, MSE, MAE);
- the learning-rate callback of reduce_on_plateau (`cnnlab.callbacks.ResumableReduceLROnPlateau`).

A schedule is a function of the optimizer's step counter, which `resume/state.keras`
saves with the optimizer, so a resumed run continues the schedule where it stopped.
Steps come from epochs as `epochs x steps_per_epoch`.

Example:
    compile_model(keras, model, cfg, steps_per_epoch=1500)
    callbacks += schedule_callbacks(keras, cfg, steps_per_epoch=1500, history=[])
"""

from __future__ import annotations

import numpy as np

from cnnlab.config import Config, CosineSchedule, ExponentialSchedule, Loss, OneCycleSchedule, StepSchedule


def compile_model(keras, model, cfg: Config, steps_per_epoch: int) -> None:
    """Compile `model` with the optimizer, loss and metrics of `cfg`."""
    one_hot = cfg.one_hot_labels()
    optimizer = make_optimizer(keras, cfg, steps_per_epoch)
    if cfg.train.precision == "mixed_float16":  # float16 gradients underflow without loss scaling
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    model.compile(
        optimizer=optimizer,
        loss=make_loss(keras, cfg.train.loss, one_hot),
        metrics=make_metrics(keras, cfg.train.metrics, one_hot),
    )


def make_optimizer(keras, cfg: Config, steps_per_epoch: int):
    """The Keras optimizer of `train.optimizer`, its learning rate scheduled by `train.lr_schedule`."""
    opt = cfg.train.optimizer
    common = dict(
        learning_rate=learning_rate(keras, cfg, steps_per_epoch), weight_decay=opt.weight_decay,
        clipnorm=opt.clipnorm, global_clipnorm=opt.global_clipnorm,
    )
    if opt.name == "sgd":
        return keras.optimizers.SGD(momentum=opt.momentum, nesterov=opt.nesterov, **common)
    if opt.name in ("adam", "adamw", "nadam"):
        cls = {"adam": keras.optimizers.Adam, "adamw": keras.optimizers.AdamW, "nadam": keras.optimizers.Nadam}
        return cls[opt.name](beta_1=opt.beta_1, beta_2=opt.beta_2, epsilon=opt.epsilon, **common)
    if opt.name == "adagrad":
        return keras.optimizers.Adagrad(**common)
    if opt.name == "rmsprop":
        return keras.optimizers.RMSprop(rho=opt.rho, momentum=opt.momentum, **common)
    raise AssertionError(f"no optimizer for {opt.name!r}")


def learning_rate(keras, cfg: Config, steps_per_epoch: int):
    """The optimizer's learning rate: a float, or a Keras schedule of the step counter."""
    base = cfg.train.optimizer.learning_rate
    schedule = cfg.train.lr_schedule
    total = steps_per_epoch * cfg.train.epochs
    if isinstance(schedule, OneCycleSchedule):
        # one_cycle_rate as Keras' own CosineDecay (a linear warm-up, then the cosine): computed in
        # the graph from the step counter. Set from a callback before every batch, it cost an eager
        # variable write per step; and a Keras class keeps best.keras loadable by plain Keras.
        top = schedule.max_learning_rate
        warmup = max(1, int(total * schedule.warmup_fraction))
        return keras.optimizers.schedules.CosineDecay(
            top / 25.0, decay_steps=max(1, total - 1 - warmup), alpha=1e-4, warmup_target=top, warmup_steps=warmup,
        )
    if isinstance(schedule, CosineSchedule):
        warmup = _steps(schedule.warmup_epochs, schedule.warmup_fraction, steps_per_epoch, total) or 0
        decay = _steps(schedule.decay_epochs, schedule.decay_fraction, steps_per_epoch, total) or total - warmup
        if warmup == 0:
            return keras.optimizers.schedules.CosineDecay(base, decay_steps=max(1, decay), alpha=schedule.alpha)
        return keras.optimizers.schedules.CosineDecay(
            0.0, decay_steps=max(1, decay), alpha=schedule.alpha, warmup_target=base, warmup_steps=warmup,
        )
    if isinstance(schedule, ExponentialSchedule):
        return keras.optimizers.schedules.ExponentialDecay(
            base, decay_steps=max(1, round(schedule.decay_epochs * steps_per_epoch)),
            decay_rate=schedule.decay_rate, staircase=schedule.staircase,
        )
    if isinstance(schedule, StepSchedule):
        return keras.optimizers.schedules.ExponentialDecay(
            base, decay_steps=schedule.every_epochs * steps_per_epoch, decay_rate=schedule.factor, staircase=True,
        )
    return base  # constant, or changed by a callback (reduce_on_plateau)


def _steps(epochs: float | None, fraction: float | None, steps_per_epoch: int, total: int) -> int | None:
    if epochs is not None:
        return round(epochs * steps_per_epoch)
    if fraction is not None:
        return round(fraction * total)
    return None


def make_loss(keras, loss: Loss, one_hot: bool):
    """The Keras loss object; a sparse loss on one-hot targets is the same loss, categorical."""
    name = loss.name
    if name == "sparse_categorical_crossentropy" and not one_hot:
        return keras.losses.SparseCategoricalCrossentropy(from_logits=loss.from_logits)
    if name in ("sparse_categorical_crossentropy", "categorical_crossentropy"):
        return keras.losses.CategoricalCrossentropy(from_logits=loss.from_logits, label_smoothing=loss.label_smoothing)
    if name == "binary_crossentropy":
        return keras.losses.BinaryCrossentropy(from_logits=loss.from_logits, label_smoothing=loss.label_smoothing)
    if name in ("mse", "mean_squared_error"):
        return keras.losses.MeanSquaredError(name=name)
    if name in ("mae", "mean_absolute_error"):
        return keras.losses.MeanAbsoluteError(name=name)
    raise AssertionError(f"no loss for {name!r}")


def make_metrics(keras, names: list[str], one_hot: bool) -> list:
    """Keras metrics named as in the history (`top_3_accuracy`, `val_auc`, ...).

    accuracy stays Keras' string, so Keras picks the sparse, categorical or binary kind;
    top-k accuracy is picked here the same way from the targets' encoding.
    """
    metrics: list = []
    for name in names:
        if name == "accuracy":
            metrics.append("accuracy")
        elif name.startswith("top_"):
            k = int(name.split("_")[1])
            cls = keras.metrics.TopKCategoricalAccuracy if one_hot else keras.metrics.SparseTopKCategoricalAccuracy
            metrics.append(cls(k=k, name=name))
        else:
            cls = {"precision": keras.metrics.Precision, "recall": keras.metrics.Recall, "auc": keras.metrics.AUC,
                   "mse": keras.metrics.MeanSquaredError, "mae": keras.metrics.MeanAbsoluteError}[name]
            metrics.append(cls(name=name))
    return metrics


def monitor_mode(monitor: str, mode: str) -> str:
    """'max' or 'min', as Keras decides for mode='auto': accuracies, precision, recall, AUC go up."""
    if mode != "auto":
        return mode
    base = monitor.removeprefix("val_")
    return "max" if "acc" in base or base in ("auc", "precision", "recall") else "min"


def schedule_callbacks(keras, cfg: Config, steps_per_epoch: int, history: list[dict]) -> list:
    """The callbacks a learning-rate schedule needs (none for the step-counter schedules)."""
    schedule = cfg.train.lr_schedule
    if schedule is None:
        return []
    if schedule.name == "reduce_on_plateau":
        from cnnlab.callbacks import ResumableReduceLROnPlateau  # Keras is imported now

        return [ResumableReduceLROnPlateau(
            history, monitor=schedule.monitor, mode=monitor_mode(schedule.monitor, schedule.mode),
            factor=schedule.factor, patience=schedule.patience, min_delta=schedule.min_delta,
            cooldown=schedule.cooldown, min_lr=schedule.min_learning_rate, verbose=int(cfg.train.verbose != 0))]
    return []


def one_cycle_rate(step: int, total_steps: int, max_rate: float, warmup_fraction: float) -> float:
    """The one-cycle learning rate at `step` (0-based) of `total_steps` (what `learning_rate` makes Keras compute)."""
    start, end = max_rate / 25.0, max_rate / 1e4
    warmup = max(1, int(total_steps * warmup_fraction))
    if step < warmup:
        return start + (max_rate - start) * step / warmup
    progress = min(1.0, (step - warmup) / max(1, total_steps - 1 - warmup))
    return end + (max_rate - end) * 0.5 * (1.0 + np.cos(np.pi * progress))
