"""Training a backbone model the Keras way: the frozen phase (on features computed once), then fine-tuning.

    epochs 1 .. train.epochs                 the backbone frozen: only the head trains. Without
                                             augmentation the head trains on the backbone's
                                             features, computed once (`cnnlab.features`).
    train.epochs + 1 .. + fine_tune.epochs   train.fine_tune: the backbone's last `unfreeze`
                                             layers train too (batch normalisation stays frozen
                                             unless `batch_norm: true`), recompiled with the low
                                             `fine_tune.learning_rate`.

One run directory and one history over both phases: the same recorder writes every epoch,
and `best.keras` is the best epoch of either, always the whole model (picture in, class
out). Early stopping ends the phase it stops; the fine-tuning phase starts from the best
value seen so far, with its patience counted afresh. A resumed run continues in the phase
its saved state is in (a backbone layer that trains: fine-tuning).

Example:
    fit_with_backbone(keras, model, cfg, splits, validation, callbacks, first_epoch=0, ...)
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import numpy as np

from cnnlab.backbone import backbone_layer
from cnnlab.compile import compile_model, make_loss, make_metrics
from cnnlab.config import Config
from cnnlab.data.pipeline import epoch_batches, ordered_batches
from cnnlab.data.splits import Samples, Splits
from cnnlab.features import frozen_features
from cnnlab.model import split_network


def total_epochs(cfg: Config) -> int:
    """Epochs over both phases."""
    return cfg.train.epochs + (cfg.train.fine_tune.epochs if cfg.train.fine_tune else 0)


def phase_change(cfg: Config) -> int | None:
    """The last epoch of the frozen phase where fine-tuning follows it (for the plots), else None."""
    return cfg.train.epochs if cfg.train.fine_tune is not None else None


def fine_tuning(keras, model) -> bool:
    """Whether a backbone model is in its fine-tuning phase: some backbone layer trains."""
    network = backbone_layer(keras, model)
    return network.trainable and any(layer.trainable and layer.weights for layer in network.layers)


def unfreeze(keras, model, unfreeze: int | str, batch_norm: bool) -> None:
    """Let the backbone's last `unfreeze` layers (or all) train; batch normalisation only if `batch_norm`."""
    network = backbone_layer(keras, model)
    network.trainable = True
    first = 0 if unfreeze == "all" else len(network.layers) - int(unfreeze)
    for index, layer in enumerate(network.layers):
        layer.trainable = index >= first and (batch_norm or not isinstance(layer, keras.layers.BatchNormalization))


def weights_digest(keras, model) -> str:
    """sha256 of the backbone's weights as they are in the model (what its features depend on)."""
    digest = hashlib.sha256()
    for weight in backbone_layer(keras, model).weights:
        digest.update(np.ascontiguousarray(keras.ops.convert_to_numpy(weight)).tobytes())
    return digest.hexdigest()


def fit_with_backbone(keras, model, cfg: Config, splits: Splits, validation, callbacks: list, first_epoch: int,
                      augment, batch_size: int, recorder, early_stopping: Callable[[], object] | None,
                      say: Callable[[str], None], verbose: int, steps_per_epoch: int,
                      class_weight: dict[int, float] | None = None) -> None:
    """Train a backbone model from epoch `first_epoch` (0-based) through both phases.

    Args:
        model: the whole model, compiled for the phase `first_epoch` is in.
        callbacks: every callback of the run (the recorder among them); an early-stopping one
            is replaced at the phase change by `early_stopping()`, made from the history then.
        recorder: the run's recorder: it saves the whole model even while the head trains alone.
        augment: Keras' random layers for training batches, or None.
        class_weight: each class's weight in the loss (train.class_weight), or None.
    """
    frozen = cfg.train.epochs
    fine_tune = cfg.train.fine_tune
    if first_epoch < frozen:
        _frozen_phase(keras, model, cfg, splits, validation, callbacks, first_epoch, augment, batch_size, recorder,
                      say, verbose, class_weight)
        if fine_tune is None or any(getattr(c, "diverged", None) is not None for c in callbacks):
            return
        unfreeze(keras, model, fine_tune.unfreeze, fine_tune.batch_norm)
        compile_model(keras, model, _fine_tune_config(cfg), steps_per_epoch)
        network = backbone_layer(keras, model)
        trainable = sum(int(np.prod(w.shape)) for w in network.trainable_weights)
        say(f"fine-tuning from epoch {frozen + 1}: {trainable:,} of {network.count_params():,} backbone parameters "
            f"train, learning rate {fine_tune.learning_rate:g}")
        if early_stopping is not None:
            callbacks = [c for c in callbacks if not isinstance(c, keras.callbacks.EarlyStopping)] + [early_stopping()]
        first_epoch = frozen
    elif fine_tune is None:
        return
    batches, steps = epoch_batches(splits.x_train, splits.y_train, batch_size, cfg.seed, first_epoch,
                                   total_epochs(cfg), augment)
    model.fit(batches, steps_per_epoch=steps, shuffle=False, validation_data=validation, epochs=total_epochs(cfg),
              initial_epoch=first_epoch, callbacks=callbacks, verbose=verbose, class_weight=class_weight)


def _fine_tune_config(cfg: Config) -> Config:
    """The config the fine-tuning phase compiles with: its learning rate, constant."""
    optimizer = cfg.train.optimizer.model_copy(update={"learning_rate": cfg.train.fine_tune.learning_rate})
    return cfg.model_copy(update={"train": cfg.train.model_copy(update={"optimizer": optimizer, "lr_schedule": None})})


def _frozen_phase(keras, model, cfg: Config, splits: Splits, validation, callbacks: list, first_epoch: int,
                  augment, batch_size: int, recorder, say, verbose: int, class_weight) -> None:
    """Epochs `first_epoch`..train.epochs - 1 with the backbone frozen: on cached features where they can be."""
    x_train, x_val = splits.x_train, splits.x_val
    if cfg.model.backbone.trainable or not cfg.model.backbone.cache_features:
        fitted, val_data = model, validation
    elif augment is not None:
        say("backbone features are computed per batch: augmentation makes every epoch's pictures new, so there "
            "is nothing to compute once (data.augment: null trains the frozen epochs on features computed once)")
        fitted, val_data = model, validation
    else:
        network = split_network(keras, model)
        rows = np.concatenate([x_train.rows, x_val.rows if x_val is not None else np.zeros(0, np.int64)])
        weights = cfg.model.backbone.weights
        features, reused = frozen_features(
            network.features, x_train.images, rows, x_train.scale, _identity(cfg, x_train),
            weights_digest(keras, model) if weights is not None else None, x_train.sample_shape)
        count = len(np.unique(rows))
        say(f"backbone features of {count:,} pictures: {reused:,} from the cache, {count - reused:,} computed; "
            "the frozen epochs train the head on them")
        shape = features.shape[1:]
        x_train = Samples(features, x_train.rows, None, shape)
        val_data = validation
        if x_val is not None:
            val_data = ordered_batches(Samples(features, x_val.rows, None, shape), splits.y_val, batch_size)
        fitted = network.head
        one_hot = cfg.one_hot_labels()
        # the head shares the whole model's layers and its optimizer: what it learns, and the
        # optimizer's state, are the whole model's, which the recorder saves every epoch
        fitted.compile(optimizer=model.optimizer, loss=make_loss(keras, cfg.train.loss, one_hot),
                       metrics=make_metrics(keras, cfg.train.metrics, one_hot))
        recorder.saved_model = model
        if not cfg.train.checkpoint.filename:  # (a file per epoch is written when asked for)
            recorder.defer()  # epochs of milliseconds: the whole model is written when the phase ends
        augment = None
    try:
        batches, steps = epoch_batches(x_train, splits.y_train, batch_size, cfg.seed, first_epoch, cfg.train.epochs,
                                       augment)
        fitted.fit(batches, steps_per_epoch=steps, shuffle=False, validation_data=val_data, epochs=cfg.train.epochs,
                   initial_epoch=first_epoch, callbacks=callbacks, verbose=verbose, class_weight=class_weight)
    finally:
        recorder.flush()  # also when interrupted: the finished epochs are kept
        recorder.saved_model = None


def _identity(cfg: Config, x: Samples) -> dict:
    backbone = cfg.model.backbone
    return {"name": backbone.name, "alpha": backbone.alpha, "pooling": backbone.pooling,
            "input": list(x.sample_shape)}
