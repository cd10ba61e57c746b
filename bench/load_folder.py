"""Load every image of a class-folder data set once, the cnnlab way or the Keras way; print the time.

    python bench/load_folder.py cnnlab FOLDER --cache DIR [--size 28] [--color grayscale] [--interpolation area]
    python bench/load_folder.py keras FOLDER [--size 28] [--color grayscale]

cnnlab: `cnnlab.data.load` (decoded once into the cache under --cache, then read from it),
then every image read back in batches of 256, as an epoch reads them. keras:
`keras.utils.image_dataset_from_directory` (decoded by tf.data on every pass), iterated
once. The time covers loading and reading, not the imports. The last line is
`RESULT {"seconds": ..., "images": ...}`.
"""

from __future__ import annotations

import argparse
import json
import time


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("side", choices=["cnnlab", "keras"])
    parser.add_argument("folder")
    parser.add_argument("--cache")
    parser.add_argument("--size", type=int, default=28)
    parser.add_argument("--color", default="grayscale", choices=["grayscale", "rgb"])
    parser.add_argument("--interpolation", default="bilinear", help="cnnlab's data.interpolation (Keras: bilinear)")
    args = parser.parse_args()
    if args.side == "cnnlab":
        import PIL.Image  # noqa: F401  (imports are left out of the time on both sides)
        import sklearn.model_selection  # noqa: F401

        from cnnlab.config import DataSection
        from cnnlab.data import describe, load

        data = DataSection(dataset="folder", path=args.folder, image_size=[args.size, args.size],
                           color=args.color, interpolation=args.interpolation, cache_dir=args.cache)
        started = time.perf_counter()
        loaded = load(data, describe(data))
        count = 0
        for start in range(0, len(loaded.images), 256):
            count += len(loaded.images[start:start + 256])
    else:
        import keras

        started = time.perf_counter()
        dataset = keras.utils.image_dataset_from_directory(
            args.folder, image_size=(args.size, args.size), color_mode=args.color, batch_size=256,
            shuffle=False, verbose=False)
        count = sum(int(images.shape[0]) for images, _ in dataset)
    seconds = time.perf_counter() - started
    print("RESULT " + json.dumps({"seconds": seconds, "images": count}), flush=True)


if __name__ == "__main__":
    main()
