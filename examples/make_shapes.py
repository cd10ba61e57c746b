"""Write a small folder data set of coloured shapes: the data of configs/folder_example.yaml.

    python examples/make_shapes.py examples/shapes            # 150 images per class
    python examples/make_shapes.py DIR --per-class 40 --test-per-class 10

Three classes, one sub-folder each (circle/, square/, triangle/), as Keras'
`image_dataset_from_directory` expects; `--test-per-class` adds train/ and test/ levels
for a fixed test set. Each picture is a filled shape of a random dark colour, size and
place on a random pale background, 32, 40 or 56 pixels square, saved as PNG or JPEG: the
mixed sizes and formats a folder of one's own photos has. Only Pillow and NumPy are used.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle")


def draw_shape(kind: str, rng: np.random.Generator, size: int = 40) -> Image.Image:
    """A filled circle, square or triangle of a random colour, size and place on a random pale background."""
    background = tuple(int(v) for v in rng.integers(150, 256, 3))
    image = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)
    colour = tuple(int(v) for v in rng.integers(0, 110, 3))
    half = int(rng.integers(size // 4, size // 3 + 1))
    cx, cy = (int(v) for v in rng.integers(half + 1, size - half - 1, 2))
    if kind == "circle":
        draw.ellipse((cx - half, cy - half, cx + half, cy + half), fill=colour)
    elif kind == "square":
        draw.rectangle((cx - half, cy - half, cx + half, cy + half), fill=colour)
    else:
        draw.polygon([(cx, cy - half), (cx - half, cy + half), (cx + half, cy + half)], fill=colour)
    return image


def write_shapes_folder(folder: Path, per_class: int, seed: int = 0, test_per_class: int = 0) -> Path:
    """Shapes as PNG/JPEG files in <folder>/<shape>/ (or <folder>/train|test/<shape>/ with a test set)."""
    rng = np.random.default_rng(seed)
    for split, count in (("train", per_class), ("test", test_per_class)):
        if not count:
            continue
        for kind in SHAPES:
            target = folder / split / kind if test_per_class else folder / kind
            target.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                image = draw_shape(kind, rng, size=int(rng.choice([32, 40, 56])))
                image.save(target / (f"{kind}{i:03d}.jpg" if i % 4 == 0 else f"{kind}{i:03d}.png"), quality=95)
    return folder


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--per-class", type=int, default=150)
    parser.add_argument("--test-per-class", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    write_shapes_folder(args.folder, args.per_class, args.seed, args.test_per_class)
    print(f"wrote {args.folder}: {len(SHAPES)} classes ({', '.join(SHAPES)})")
