"""What a data set is, before any of it is loaded: `DatasetInfo`, and `ImageSpec`, how its images are made alike.

Every image a model sees, from a built-in data set, a user's folder or a picture given to
`predict`, goes through the same `ImageSpec.apply`: converted to grey or RGB and resized with
Pillow, as `keras.utils.load_img` does. That one function is why a picture is prepared for
prediction exactly as the training images were.

Example:
    spec = ImageSpec(64, 64, "rgb")
    spec.apply(Image.open("cat.jpg")).shape  # (64, 64, 3), uint8
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
COLORS = ("grayscale", "rgb")
INTERPOLATIONS = ("bilinear", "nearest", "bicubic", "area", "lanczos")
OWN_DATA = ("folder", "csv")  # data sets a user brings; the others are built in


@dataclass(frozen=True)
class ImageSpec:
    """The size and colour every image of a data set is converted to.

    Args:
        height, width: the size in pixels, as the model takes it.
        color: "grayscale" (one channel) or "rgb" (three).
        interpolation: Pillow's resampling filter for resizing: bilinear (default, as Keras),
            nearest, bicubic, area (box averaging) or lanczos.
    """

    height: int
    width: int
    color: str = "grayscale"
    interpolation: str = "bilinear"

    @property
    def channels(self) -> int:
        return 1 if self.color == "grayscale" else 3

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.height, self.width, self.channels)

    @property
    def draft_size(self) -> tuple[int, int]:
        """(width, height) a JPEG may be decoded at (1/2 .. 1/8 of its size) and still be resized well."""
        return (2 * self.width, 2 * self.height)

    def apply(self, image) -> np.ndarray:
        """A PIL image of any mode and size as this spec's uint8 array (height, width, channels)."""
        from PIL import Image

        mode = "L" if self.color == "grayscale" else "RGB"
        if image.mode != mode:  # (converting to its own mode copies the image)
            image = image.convert(mode)
        if image.size != (self.width, self.height):
            filters = {
                "bilinear": Image.Resampling.BILINEAR, "nearest": Image.Resampling.NEAREST,
                "bicubic": Image.Resampling.BICUBIC, "area": Image.Resampling.BOX,
                "lanczos": Image.Resampling.LANCZOS,
            }
            image = image.resize((self.width, self.height), filters[self.interpolation])
        return np.asarray(image, dtype=np.uint8).reshape(self.shape)

    def to_dict(self) -> dict:
        return {"image_size": [self.height, self.width], "color": self.color, "interpolation": self.interpolation}


@dataclass(frozen=True)
class DatasetInfo:
    """What the rest of cnnlab needs to know about a data set without loading it.

    Args:
        name: mnist, fashion_mnist, xor, folder or csv.
        num_classes: how many classes.
        class_names: one name per class id (digits, Fashion-MNIST's names, folder names...).
        spec: how images are converted and resized (None: not an image data set, e.g. xor).
        sample_shape: one sample as stored, (height, width, channels) for images.
        preprocess: how `predict` prepares a user's picture before `spec` applies: "mnist"
            (MNIST's own steps: invert, crop to the ink, centre by mass), "fashion", or "none".
        train_size, test_size: samples in the training part (validation is taken from it) and the test part.
        source: the folder or CSV file of a user's own data set.
        folder, urls, md5: a built-in data set's sub-folder of the data directory, download
            mirrors, and the md5 of each of its IDX files.
        manifest: a user's data set: the files `describe` listed (`cnnlab.data.files.Manifest`),
            so that loading does not list the folder a second time.
    """

    name: str
    num_classes: int
    class_names: tuple[str, ...]
    spec: ImageSpec | None
    sample_shape: tuple[int, ...]
    preprocess: str = "none"
    train_size: int = 0
    test_size: int = 0
    source: str | None = None
    folder: str = ""
    urls: tuple[str, ...] = ()
    md5: tuple[tuple[str, str], ...] = ()
    manifest: Any = field(default=None, compare=False, repr=False)

    @property
    def is_image(self) -> bool:
        return self.spec is not None

    @property
    def own_data(self) -> bool:
        return self.name in OWN_DATA
