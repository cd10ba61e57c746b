"""tf.data pipelines that feed `model.fit`, `evaluate` and `predict` from `Samples`, batch by batch.

Samples held in memory (the built-in sets) are gathered from their uint8 array, samples in
the decoded-image cache are read from disk (`RowFile`), a batch at a time either way, so a
data set larger than memory trains. Either way a batch is scaled and
shaped only when it is made, and augmentation (Keras' random preprocessing layers, from
`data.augment`) is applied to training batches only: nothing random ever enters the model
that is saved.

Example:
    batches, steps = epoch_batches(splits.x_train, splits.y_train, 32, seed=42, first_epoch=0, epochs=5)
    model.fit(batches, steps_per_epoch=steps, epochs=5)
"""

from __future__ import annotations

import numpy as np

from cnnlab.data.splits import Samples


def epoch_batches(x: Samples, y: np.ndarray, batch_size: int, seed: int, first_epoch: int, epochs: int,
                  augment=None):
    """A tf.data pipeline of shuffled training batches for epochs `first_epoch`..`epochs - 1`.

    Epoch e's order depends only on (seed, e), so a run resumed after epoch k sees the
    very batches an uninterrupted run would have: same seed, same model, same result.
    (Keras' own shuffle draws each epoch's order from one random stream that a new
    process cannot fast-forward.) `augment`, a Keras model of random layers, is applied
    to each batch (training=True).

    Returns the dataset and the number of batches per epoch.
    """
    import tensorflow as tf

    count = len(x)
    full = count // batch_size * batch_size

    def order(epoch):
        return tf.random.experimental.stateless_shuffle(
            tf.range(count, dtype=tf.int64), seed=tf.stack([tf.constant(seed, tf.int64), epoch])
        )

    def batches(indices):  # whole batches in one reshape, then the remainder
        dataset = tf.data.Dataset.from_tensor_slices(tf.reshape(indices[:full], (-1, batch_size)))
        return dataset.concatenate(tf.data.Dataset.from_tensors(indices[full:])) if full < count else dataset

    dataset = tf.data.Dataset.range(first_epoch, epochs).map(order).flat_map(batches)
    dataset = _gathered(dataset, x, y, augment)
    return dataset, -(-count // batch_size)


def ordered_batches(x: Samples, y: np.ndarray | None, batch_size: int):
    """One pass over `x` (and `y`) in order, in batches: validation, test scoring, prediction."""
    import tensorflow as tf

    count = len(x)
    starts = tf.data.Dataset.range(0, count, batch_size)
    dataset = starts.map(lambda start: tf.range(start, tf.minimum(start + batch_size, count)))
    return _gathered(dataset, x, y, None)


def _gathered(indices, x: Samples, y: np.ndarray | None, augment):
    """Map batches of positions in `x` to (features, targets) batches; finish the pipeline."""
    import tensorflow as tf

    scale = None if x.scale is None else tf.constant(x.scale, tf.float32)
    shape = (-1, *x.sample_shape)
    dtype = tf.as_dtype(x.images.dtype)
    stored_shape = x.images.shape[1:]

    # Each batch is gathered by NumPy from the stored array (or the cache file): a copy of the
    # samples as a TensorFlow constant cost twice their size in resident memory (98 MB for
    # MNIST's 47 MB of training pixels), and one call per batch costs next to nothing.
    def read(positions):
        raw = tf.numpy_function(lambda p: x.raw(p), [positions], dtype, stateful=False)
        raw.set_shape([None, *stored_shape])
        return raw

    def features(positions):
        values = tf.cast(read(positions), tf.float32)
        if scale is not None:
            values = values / scale
        return tf.reshape(values, shape)

    if y is None:
        dataset = indices.map(features, num_parallel_calls=2)
    else:
        targets = tf.constant(y)
        dataset = indices.map(lambda p: (features(p), tf.gather(targets, p)), num_parallel_calls=2)
    if augment is not None:
        dataset = dataset.map(lambda a, b: (augment(a, training=True), b), num_parallel_calls=2)
    # No autotuning: its background thread sleeps in growing periods, and destroying the
    # iterator at the end of `fit` waited for that sleep to end, 2 to 20 s measured here
    # after the last epoch. Two parallel gathers and two batches ahead keep 2 cores busy.
    options = tf.data.Options()
    options.autotune.enabled = False
    return dataset.prefetch(2).with_options(options)


def augmentation(keras, augment, info, scale: float, input_shape: tuple[int, ...], seed: int):
    """Keras' random preprocessing layers for `data.augment`, as one model; None if nothing is on.

    The layers work on images (height, width, channels); a model whose input is flat (784,)
    gets its batches reshaped to the image and back.
    """
    if augment is None:
        return None
    fill = augment.fill_mode
    if fill == "auto":  # digits and products sit on black: fill with black; photos: mirror the edge
        fill = "reflect" if info.own_data else "constant"
    top = 255.0 / scale
    layers = []
    if augment.flip != "none":
        layers.append(keras.layers.RandomFlip(augment.flip, seed=seed))
    if augment.rotation:
        layers.append(keras.layers.RandomRotation(augment.rotation, fill_mode=fill, seed=seed + 1))
    if augment.translation:
        layers.append(keras.layers.RandomTranslation(augment.translation, augment.translation, fill_mode=fill,
                                                     seed=seed + 2))
    if augment.zoom:
        layers.append(keras.layers.RandomZoom(augment.zoom, fill_mode=fill, seed=seed + 3))
    if augment.contrast:
        layers.append(keras.layers.RandomContrast(augment.contrast, value_range=(0.0, top), seed=seed + 4))
    if augment.brightness:
        layers.append(keras.layers.RandomBrightness(augment.brightness, value_range=(0.0, top), seed=seed + 5))
    if not layers:
        return None
    image = info.sample_shape
    if tuple(input_shape) != tuple(image):
        layers = [keras.layers.Reshape(image), *layers, keras.layers.Reshape(input_shape)]
    return keras.Sequential(layers, name="augmentation")
