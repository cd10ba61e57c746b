"""Turn a photo or drawing into the 28x28 image a model trained on MNIST expects.

Pillow and numpy only (no TensorFlow), so predict can prepare images before, or
without, loading a model.

MNIST digits were made by cropping each digit to its ink, fitting it into a 20x20 box
(aspect ratio kept, anti-aliased) and placing that box in a 28x28 field so that the
centre of mass of the ink lands on the centre: white ink on black. A photo of a digit
is nothing like that (dark ink on light paper, a small digit on a large page, thin
pen strokes, paper grain), which is why a model that reads 99% of MNIST reads about
half of people's own digits after a plain resize. `mnist_style` redoes MNIST's steps:

1. `open_image`: any PNG/JPG/BMP/GIF/TIFF, EXIF rotation applied, transparency
   composited over white, 16-bit and palette images converted properly.
2. `ink_strength`: the background level is the median of the border; a light
   background is inverted, so ink is bright as in MNIST.
3. Otsu's threshold separates ink from paper; specks far smaller than the digit's
   strokes (paper grain, dust, JPEG noise) are dropped, faint strokes are kept.
4. Crop to the ink; thin pen lines are thickened to MNIST's stroke width (about a
   seventh of the digit's height), otherwise they fade to grey when shrunk to 20 px.
5. Fit into 20x20 keeping the aspect ratio; place in 28x28 with the centre of mass
   at (14, 14), as in MNIST. Values are 0..255 (background 0); the model's own
   scale (x / 255 for most) is applied later, as in training.

`fashion_style` does what Fashion-MNIST did to product photos: object light on black,
trimmed to the object, longest side fitted to 28, centred. `plain_resize` only
converts to grey and resizes (no inversion, no cropping): the baseline.

Example:
    image = open_image("my_digit.jpg")
    seen = mnist_style(gray_array(image))  # (28, 28) float32, 0 = background, 255 = ink
"""

from __future__ import annotations

import functools
import io
import os
import stat
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from cnnlab.errors import CnnlabError

SIZE = 28  # the side of an MNIST image
DIGIT_BOX = 20  # MNIST fits each digit into 20x20 before centring it in 28x28
STROKE_RATIO = 0.14  # median MNIST stroke width / the digit's longer side (2.85 px / 20 px)
MIN_SIDE = 4  # fewer pixels than this on a side cannot hold a digit
_SMALL_PNG = 96 * 96  # pixels: below this a PNG's cost is Python's, and Pillow's path is shorter than Wuffs'
WORK_SIDE = 1600  # larger images are shrunk first: the result is 28 px, this saves time, not detail
INK_SIDE = 640  # the MNIST and Fashion steps shrink further: a digit a fifth of the photo keeps 128 px (6 x 20)
_WORK_BOX = 80  # the cropped digit is redrawn at this size (4 x 20) to set its stroke width
_GRID = 256  # connected components are found on a grid this size (a speck is far smaller than a cell of it)
_MIN_CONTRAST = 24.0  # grey levels between paper and ink below which an image counts as blank
STYLES = ("mnist", "fashion", "none")


@dataclass(frozen=True)
class ImageBytes:
    """An image received as bytes (an HTTP upload) rather than a file: its name for messages, its content.

    Everything that reads an image file (`open_image`, `prepare_image`, `cnnlab.predict`) reads these too.
    """

    name: str
    data: bytes = field(repr=False)

    @property
    def stem(self) -> str:
        return Path(self.name).stem

    def __str__(self) -> str:
        return self.name


def open_image(source: str | Path | ImageBytes, draft_size: tuple[int, int] | None = None,
               max_side: int = WORK_SIDE, grey: bool = False) -> Image.Image:
    """Read an image file (or `ImageBytes`) as 8-bit "L" or "RGB", with transparency composited over white.

    `grey=True` gives "L" always, converted before the image is shrunk (a third of the work
    of shrinking RGB): what the MNIST and Fashion steps read.

    Pillow's decompression-bomb limit stays on: an image with more pixels than
    `Image.MAX_IMAGE_PIXELS` is refused before it is decoded. `draft_size` (width, height)
    lets a JPEG decode at the smallest of 1/2, 1/4, 1/8 of its size that still covers it
    (a photo that becomes 64x64 need not be decoded at 4000x3000). An image larger than
    `max_side` is shrunk by the smallest whole factor that fits it (area average, `Image.reduce`:
    an 837 px photo halved to 419 for `max_side=640`), before any per-pixel work.
    """
    if isinstance(source, ImageBytes):
        path, stream, empty = source.name, io.BytesIO(source.data), not source.data
    else:
        path = stream = Path(source)
        try:
            found = os.stat(path)  # one call for the three questions: a folder decodes thousands
        except OSError:
            raise CnnlabError(f"{path}: no such image file.") from None
        if stat.S_ISDIR(found.st_mode):
            raise CnnlabError(f"{path}: is a folder, not an image file.")
        empty = found.st_size == 0
    try:
        with _opened(stream) as image:  # the header only: the bomb limit is checked here
            decoded = _fast_png(image, source)
            if decoded is not None:
                image = decoded
            else:
                if draft_size is not None:
                    image.draft(image.mode, draft_size)
                elif max(image.size) > max_side:
                    image.draft("RGB", (max_side, max_side))  # JPEG decodes at a fraction of the size
                image.load()
                image = ImageOps.exif_transpose(image) if _rotated(image) else image
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise too_large_to_open(path) from None
    except UnidentifiedImageError:
        what = "an empty file" if empty else "not an image Pillow can read"
        raise CnnlabError(f"{path}: is {what}; use a PNG, JPG, BMP or GIF file.") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise CnnlabError(f"{path}: cannot read the image (truncated or corrupt: {exc}).") from None
    width, height = image.size
    if min(width, height) < MIN_SIDE:
        raise CnnlabError(
            f"{path}: the image is {width}x{height} pixels, too small to hold a digit "
            f"(at least {MIN_SIDE}x{MIN_SIDE})."
        )
    image = _eight_bit(image, grey)
    factor = -(-max(image.size) // max_side)  # the smallest whole shrink that fits
    if factor > 1:
        image = image.reduce(factor)  # each pixel the mean of a factor x factor block: thin strokes stay
    return image


def open_plain_png(path: str) -> Image.Image | None:
    """A small 8-bit grey or RGB PNG, decoded, where `open_image` would do nothing else to it; else None.

    A folder of MNIST-sized PNGs costs Python's time, not the decoder's: `open_image`'s checks
    (the file's stat, the bomb-warning guard, EXIF, transparency, bit depth) are most of it.
    For a PNG that is small (under `_SMALL_PNG` pixels: no faster decoder, no bomb), 8-bit L or
    RGB, without a transparent colour or EXIF data, every one of those steps leaves the image
    as it is, so the pixels are `open_image`'s. Anything else (including a damaged file) is None:
    `open_image` decodes it, or says what is wrong. Call it where Pillow's bomb warning is already
    an error (`cnnlab.data.cache` does, once per piece of work).
    """
    try:
        image = Image.open(path)
    except Exception:  # noqa: BLE001 - open_image reads it again and names the fault
        return None
    width, height = image.size
    if (image.format != "PNG" or image.mode not in ("L", "RGB") or "transparency" in image.info
            or width * height >= _SMALL_PNG or min(width, height) < MIN_SIDE):
        image.close()
        return None
    try:
        image.load()
    except Exception:  # noqa: BLE001
        image.close()
        return None
    if "exif" in image.info:  # an eXIf chunk (before or after the pixels): open_image turns the picture upright
        return None
    return image


def too_large_to_open(path) -> CnnlabError:
    """The error for an image whose header declares more pixels than Pillow's decompression-bomb limit."""
    return CnnlabError(f"{path}: the image is too large to open safely (more than {Image.MAX_IMAGE_PIXELS:,} "
                       "pixels, Pillow's decompression-bomb limit); shrink it first.")


_OPENING = threading.Lock()


def _opened(stream) -> Image.Image:
    """`Image.open` (the header only), with Pillow's bomb warning (between its limit and twice it) an error.

    `warnings.catch_warnings` swaps the process's filter list and is not thread-safe; the server
    prepares images in threads, so opening (a few microseconds) holds a lock: otherwise one
    thread's exit could drop another's filter, and that image would be decoded.
    """
    with _OPENING, warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        return Image.open(stream)


def _fast_png(header: Image.Image, source: Path | ImageBytes) -> Image.Image | None:
    """The pixels of an ordinary PNG from a faster decoder than Pillow's, or None where Pillow should decode it.

    Decoding is most of what a served photo costs, and zlib's inflate most of decoding: for the
    benchmark's 806x837 RGBA photo, Wuffs (pywuffs, when installed: the `fast-png` extra) takes
    1.2 ms, libvips 6.0, Pillow 9.4. Wuffs, Google's decoder library, is also memory-safe by
    construction, which suits untrusted uploads; it is built from source at install (no wheels),
    so libvips (wheels everywhere) is the fallback. The pixels are the same as Pillow's (PNG is
    lossless: checked on every ../shared/digits image). Only 8-bit grey or RGB, with or without
    alpha, and without a tRNS transparent colour or EXIF data; anything else, and any PNG the
    decoder finds the least fault with (truncated, a bad checksum), is left to Pillow, whose
    checks and messages apply.
    """
    if header.format != "PNG" or header.mode not in ("L", "LA", "RGB", "RGBA") or "transparency" in header.info:
        return None
    if header.size[0] * header.size[1] < _SMALL_PNG:  # Pillow decodes an icon-sized PNG in less time
        return None
    if _pywuffs() is not None:
        return _wuffs_png(header, source)
    if _pyvips() is not None:
        return _vips_png(header, source)
    return None


def _wuffs_png(header: Image.Image, source: Path | ImageBytes) -> Image.Image | None:
    """`_fast_png` by Wuffs, checksums checked: grey as Y, colour as RGB or RGBA (LA via RGBA, exact)."""
    pywuffs, aux = _pywuffs()
    config = aux.ImageDecoderConfig()
    config.enabled_decoders = [pywuffs.ImageDecoderType.PNG]
    config.quirks = {pywuffs.ImageDecoderQuirks.IGNORE_CHECKSUM: 0}  # pywuffs skips PNG's checksums by default
    config.flags = [aux.ImageDecoderFlags.REPORT_METADATA_EXIF]  # an EXIF turn: Pillow applies it
    config.pixel_format = {"L": pywuffs.PixelFormat.Y, "RGB": pywuffs.PixelFormat.RGB}.get(
        header.mode, pywuffs.PixelFormat.RGBA_NONPREMUL)
    data = source.data if isinstance(source, ImageBytes) else Path(source).read_bytes()
    decoded = aux.ImageDecoder(config).decode(data)  # (a decoder is a few microseconds: one per image)
    pixels = decoded.pixbuf
    if decoded.error_message or decoded.reported_metadata or pixels.shape[1::-1] != header.size:
        return None
    image = Image.fromarray(pixels[..., 0] if header.mode == "L" else pixels, "L" if header.mode == "L" else None)
    if header.mode == "RGBA":  # whether every alpha is 255: each pixel as one little-endian word, alpha on top
        image.info[_OPAQUE] = int(pixels.view("<u4").min()) >= 0xFF000000  # (a third of `_opaque`'s time)
    return image.convert("LA") if header.mode == "LA" else image


@functools.cache
def _pywuffs():
    """(pywuffs, pywuffs.aux), or None where it is not installed (or does not load)."""
    try:
        import pywuffs
        from pywuffs import aux
    except (ImportError, OSError):
        return None
    return pywuffs, aux


def _vips_png(header: Image.Image, source: Path | ImageBytes) -> Image.Image | None:
    """`_fast_png` by libvips (`fail_on="warning"`: the least fault goes to Pillow)."""
    pyvips = _pyvips()
    try:
        if isinstance(source, ImageBytes):
            vips = pyvips.Image.new_from_buffer(source.data, "", access="sequential", fail_on="warning")
        else:
            vips = pyvips.Image.new_from_file(str(source), access="sequential", fail_on="warning")
        if ((vips.width, vips.height) != header.size or vips.bands != len(header.mode) or vips.format != "uchar"
                or (vips.get_typeof("orientation") and vips.get("orientation") != 1)):
            return None
        pixels = vips.write_to_memory()
    except pyvips.Error:
        return None
    return Image.frombuffer(header.mode, header.size, pixels, "raw", header.mode, 0, 1)


@functools.cache
def _pyvips():
    """pyvips set up for one image at a time: no operation cache (no image is kept), one thread per image."""
    try:
        import pyvips
    except (ImportError, OSError):  # libvips missing or broken: Pillow decodes everything
        return None
    pyvips.cache_set_max(0)
    pyvips.concurrency_set(1)  # requests run side by side already; per image, threads only add overhead
    return pyvips


def _rotated(image: Image.Image) -> bool:
    """Whether the image's EXIF orientation asks for a turn or flip (1, or none: it is upright)."""
    return image.getexif().get(ExifTags.Base.Orientation, 1) != 1


def _eight_bit(image: Image.Image, grey: bool = False) -> Image.Image:
    """8-bit grey or RGB (`grey`: grey only); alpha composited over white; 16-bit and float images rescaled."""
    mode = image.mode
    if mode.startswith("I") or mode == "F":
        values = np.asarray(image, dtype=np.float64)
        if mode.startswith("I;16"):
            top = 65535.0
        elif mode == "F":
            top = 1.0 if values.max(initial=0) <= 1.0 else 255.0
        else:  # 32-bit integer: 8- or 16-bit data stored wide
            top = 255.0 if values.max(initial=0) <= 255 else 65535.0
        return Image.fromarray(np.clip(values / top * 255.0, 0, 255).round().astype(np.uint8), "L")
    if mode in ("RGBA", "LA") and _opaque(image):  # most photos saved as RGBA: nothing to composite
        return image.convert("L" if grey or mode == "LA" else "RGB")  # (the grey of RGBA ignores alpha)
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("L" if grey else "RGB")
    if not grey:
        return image if mode in ("L", "RGB") else image.convert("RGB")
    if mode == "L":
        return image
    return image.convert("L") if mode in ("RGB", "P", "1") else image.convert("RGB").convert("L")


_OPAQUE = "cnnlab-opaque"  # `Image.info` key: whether every alpha is 255, where the decoder already knows


def _opaque(image: Image.Image) -> bool:
    """Whether every pixel's alpha is 255 (NumPy's min: a fifth of the time of Pillow's getextrema)."""
    known = image.info.get(_OPAQUE)
    if known is not None:
        return known
    return int(np.asarray(image.getchannel("A")).min()) == 255


def gray_array(image: Image.Image) -> np.ndarray:
    """The image as float32 grey levels, 0 (black) .. 255 (white)."""
    return np.asarray(image.convert("L"), dtype=np.float32)


def plain_resize(gray: np.ndarray) -> np.ndarray:
    """Only a resize to 28x28: no inversion, no cropping (what most tutorials do)."""
    return _resize(gray, (SIZE, SIZE))


def ink_strength(gray: np.ndarray) -> np.ndarray:
    """How much ink each pixel holds, 0 (paper) .. 255: light backgrounds are inverted.

    The background level is the median of the image's border, where a digit
    rarely is; on a light background, dark is ink.
    """
    ring = max(1, min(gray.shape) // 20)
    border = np.concatenate([
        gray[:ring].ravel(), gray[-ring:].ravel(), gray[:, :ring].ravel(), gray[:, -ring:].ravel(),
    ])
    background = float(np.median(border))
    if background > 127.5:
        return np.clip(background - gray, 0, 255)
    return np.clip(gray - background, 0, 255)


def mnist_style(gray: np.ndarray) -> np.ndarray:
    """MNIST's own preparation: the (28, 28) float32 image, ink 0..255 on a 0 background."""
    ink = ink_strength(gray)
    mask = _clean(ink > _otsu(ink), ink)
    top, bottom, left, right = _box(mask)
    # The digit is redrawn from its mask: the soft edges of a photo carry no shape,
    # and a binary stroke of MNIST's width, shrunk with area averaging, gets
    # MNIST's own grey edges.
    crop = mask[top:bottom, left:right].astype(np.float32) * 255.0
    scale = _WORK_BOX / max(crop.shape)
    work = _resize(crop, _fitted(crop.shape, scale)) > 48  # a stroke that covers a fifth of a pixel stays
    work = _thicken(work)
    top, bottom, left, right = _box(work)
    work = work[top:bottom, left:right]
    digit = _resize(work.astype(np.float32) * 255.0, _fitted(work.shape, DIGIT_BOX / max(work.shape)))
    return _place_by_mass(digit)


def fashion_style(gray: np.ndarray) -> np.ndarray:
    """Fashion-MNIST's preparation: object light on black, trimmed, longest side 28, centred."""
    ink = ink_strength(gray)
    top, bottom, left, right = _box(ink > max(_MIN_CONTRAST / 2, 0.5 * _otsu(ink)))
    crop = ink[top:bottom, left:right]
    crop = crop * (255.0 / max(float(crop.max()), 1.0))
    fitted = _resize(crop, _fitted(crop.shape, SIZE / max(crop.shape)))
    out = np.zeros((SIZE, SIZE), np.float32)
    y, x = (SIZE - fitted.shape[0] + 1) // 2, (SIZE - fitted.shape[1] + 1) // 2  # an odd margin: more on top, as in the data
    out[y:y + fitted.shape[0], x:x + fitted.shape[1]] = fitted
    return out


def _otsu(ink: np.ndarray) -> float:
    """Otsu's threshold: the grey level that best splits paper from ink.

    An image with no ink (one flat grey, or only faint noise) is an error.
    """
    if float(ink.max()) < _MIN_CONTRAST:
        raise _Blank()
    levels_seen = Image.fromarray(np.clip(ink, 0, 255).astype(np.uint8), "L")  # (truncated, as astype does)
    hist = np.asarray(levels_seen.histogram(), dtype=np.float64)  # Pillow's: a tenth of np.bincount's time
    levels = np.arange(256, dtype=np.float64)
    weight = np.cumsum(hist)
    mass = np.cumsum(hist * levels)
    total, total_mass = weight[-1], mass[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (total_mass * weight - total * mass) ** 2 / (weight * (total - weight))
    between[~np.isfinite(between)] = 0
    # never below a few grey levels above the paper: JPEG noise is not ink
    return max(float(np.argmax(between)), _MIN_CONTRAST / 2)


class _Blank(Exception):
    """An image without ink; `prepare_image` names the file."""


class BlankImage(CnnlabError):
    """An image with no ink to centre (blank page, empty drawing); the message ends with what to do.

    Args:
        where: the file (or upload) for the message.
        advice: what the user can do; the command line's by default, a server gives its own.
    """

    def __init__(self, where, advice: str = "use --preprocess none to feed it as it is"):
        self.where = where
        super().__init__(f"{where}: found no ink: the image is blank (a single grey level, or contrast below "
                         f"{_MIN_CONTRAST:.0f} grey levels); {advice}.")

    def advising(self, advice: str) -> "BlankImage":
        return BlankImage(self.where, advice)


def _clean(mask: np.ndarray, ink: np.ndarray) -> np.ndarray:
    """Drop specks: connected pieces of ink far smaller than the digit's own.

    Pieces are found on a coarse grid (a cell is ink if any pixel in it is), so a
    faint stroke broken into dashes by the threshold stays one piece. A piece is
    kept if it holds at least 1/20 of the ink of the largest piece: the separate
    bar of a 5 or a 7 is far above that, dust and paper grain far below.
    """
    height, width = mask.shape
    cell = max(1, int(np.ceil(max(height, width) / _GRID)))
    rows, cols = -(-height // cell), -(-width // cell)
    padded = np.zeros((rows * cell, cols * cell), dtype=np.float32)
    np.multiply(ink, mask, out=padded[:height, :width])
    # each cell's mean ink (Pillow's reduce: six times NumPy's strided sum); only ratios matter below
    weight = np.asarray(Image.fromarray(padded, "F").reduce(cell)) if cell > 1 else padded
    labels, sizes = _components(weight > 0, weight)
    if not sizes:
        raise _Blank()
    kept = np.array([False] + [size >= max(sizes) / 20 for size in sizes])  # by label; 0 (no ink) is not kept
    if kept[1:].all():  # every piece is kept (most often there is one): nothing to drop
        return mask
    keep = kept[labels]
    keep = np.repeat(np.repeat(keep, cell, axis=0), cell, axis=1)[:height, :width]  # back to pixels
    return mask & keep


def _components(grid: np.ndarray, weight: np.ndarray) -> tuple[np.ndarray, list[float]]:
    """8-connected pieces of `grid`: a label per cell (0 = none) and each piece's weight.

    Works on runs: the stretches of ink cells along each row (a stroke crosses a row a few
    times). The runs of the row above that touch a run, corners included, are found for all
    runs at once (runs are sorted, so they are one range per run: two searchsorted), and
    union-find joins each touching pair: a Python step per pair (a few hundred per photo)
    instead of one per ink cell or per row.
    """
    rows, cols = grid.shape
    edges = np.diff(np.pad(grid, ((0, 0), (1, 1))).astype(np.int8), axis=1).ravel()  # rows x (cols + 1)
    run_row, run_start = np.divmod(np.flatnonzero(edges == 1), cols + 1)  # row-major: starts, ends pair up
    run_end = np.flatnonzero(edges == -1) - run_row * (cols + 1)  # exclusive
    if len(run_row) == 0:
        return np.zeros(grid.shape, dtype=np.int32), []
    bounds = np.stack([run_row * cols + run_start, run_row * cols + run_end], axis=1).ravel()
    run_weight = np.add.reduceat(np.append(weight.ravel().astype(np.float64), 0.0), bounds)[::2]
    # run i of the row above touches run j if start_i <= end_j and start_j <= end_i (ends exclusive)
    line = cols + 2  # a row's runs as one sorted line: row * line + column
    above = (run_row - 1) * line
    first = np.searchsorted(run_row * line + run_end, above + run_start, side="left")
    stop = np.searchsorted(run_row * line + run_start, above + run_end, side="right")
    touching = np.maximum(stop - first, 0)
    pairs_here = np.repeat(np.arange(len(run_row)), touching)
    pairs_above = np.repeat(first - np.cumsum(touching) + touching, touching) + np.arange(int(touching.sum()))
    parent = list(range(len(run_row)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for here, up in zip(pairs_here.tolist(), pairs_above.tolist()):
        parent[root(here)] = root(up)
    ids: dict[int, int] = {}  # a piece's number: in the order of its first run, from 1
    run_label = np.array([ids.setdefault(root(run), len(ids) + 1) for run in range(len(parent))], dtype=np.int32)
    sizes = np.bincount(run_label, weights=run_weight, minlength=len(ids) + 1)[1:].tolist()
    lengths = run_end - run_start  # every cell of every run gets its run's label, at once
    cells = np.repeat(run_row * cols + run_start - np.cumsum(lengths) + lengths, lengths) + np.arange(lengths.sum())
    labels = np.zeros(rows * cols, dtype=np.int32)
    labels[cells] = np.repeat(run_label, lengths)
    return labels.reshape(rows, cols), sizes


def _box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """top, bottom, left, right (exclusive) of the True pixels."""
    rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    if len(rows) == 0:
        raise _Blank()
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def _stroke_width(mask: np.ndarray) -> float:
    """Mean stroke width: area over half the outline (a stroke w wide, L long: wL / L)."""
    area = int(mask.sum())
    padded = np.pad(mask, 1)
    inside = (padded[1:-1, 1:-1] & padded[:-2, 1:-1] & padded[2:, 1:-1]
              & padded[1:-1, :-2] & padded[1:-1, 2:])
    outline = int((mask & ~inside).sum())
    return 2.0 * area / max(outline, 1)


def _thicken(work: np.ndarray) -> np.ndarray:
    """Widen strokes thinner than MNIST's to MNIST's width (thick ones are left alone)."""
    target = STROKE_RATIO * max(work.shape)
    width = _stroke_width(work)
    if width >= 0.75 * target:
        return work
    grow = int(round((target - width) / 2))
    if grow < 1:
        return work
    return _dilate(np.pad(work, grow + 1), grow)


def _dilate(mask: np.ndarray, grow: int) -> np.ndarray:
    """Every pixel within `grow` (a square: a max filter of side 2 * grow + 1), rows then columns.

    The same pixels as Pillow's MaxFilter (a test checks), in a tenth of its time: a square
    is separable, so 2 x 2 * grow shifted ORs instead of (2 * grow + 1)^2 comparisons a pixel.
    """
    rows = mask.copy()
    for shift in range(1, grow + 1):
        rows[:, shift:] |= mask[:, :-shift]
        rows[:, :-shift] |= mask[:, shift:]
    out = rows.copy()
    for shift in range(1, grow + 1):
        out[shift:] |= rows[:-shift]
        out[:-shift] |= rows[shift:]
    return out


def _fitted(shape: tuple[int, int], scale: float) -> tuple[int, int]:
    return max(1, int(round(shape[0] * scale))), max(1, int(round(shape[1] * scale)))


def _resize(values: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Resize float grey levels: area averaging to shrink, bilinear to enlarge."""
    height, width = shape
    shrinking = height <= values.shape[0] and width <= values.shape[1]
    resample = Image.Resampling.BOX if shrinking else Image.Resampling.BILINEAR
    image = Image.fromarray(values.astype(np.float32), "F").resize((width, height), resample)
    return np.asarray(image, dtype=np.float32)


def _place_by_mass(digit: np.ndarray) -> np.ndarray:
    """Put `digit` in a 28x28 field with its centre of mass at (14, 14), as MNIST did.

    The shift is a whole number of pixels (no blur) and never pushes ink off the
    field: a digit whose mass sits at its very edge stays inside.
    """
    height, width = digit.shape
    total = float(digit.sum())
    mass_y = float((digit.sum(axis=1) * np.arange(height)).sum() / total)
    mass_x = float((digit.sum(axis=0) * np.arange(width)).sum() / total)
    top = int(np.clip(round(SIZE / 2 - mass_y), 0, SIZE - height))
    left = int(np.clip(round(SIZE / 2 - mass_x), 0, SIZE - width))
    out = np.zeros((SIZE, SIZE), np.float32)
    out[top:top + height, left:left + width] = np.clip(digit, 0, 255)
    return out


def prepare_image(path: str | Path | ImageBytes, style: str = "mnist", spec=None,
                  as_read: bool = True) -> tuple[Image.Image, np.ndarray]:
    """Read `path` and prepare it: (the image as read, the image for the model).

    Args:
        path: an image file (PNG, JPG, BMP, GIF, TIFF...), or its bytes (`ImageBytes`).
        style: "mnist" (digits), "fashion" (Fashion-MNIST products) or "none" (only the
            conversion and resize the training images had).
        spec: the model's `cnnlab.data.ImageSpec` (size, colour): the MNIST/Fashion steps make a
            28x28 image, which then gets the same conversion and resize as the training images.
            None: the (28, 28) float32 image of those steps (or a plain 28x28 resize), as is.
        as_read: False when the caller shows nothing of the image as read (a server): the MNIST
            and Fashion steps then read it as grey from the start, and the first item is that grey.
    """
    if style not in STYLES:
        raise ValueError(f"unknown preprocessing style {style!r}; expected one of {STYLES}")
    if style == "none":
        image = open_image(path, draft_size=spec.draft_size if spec is not None else None)
        return image, spec.apply(image) if spec is not None else plain_resize(gray_array(image))
    # A big photo's 28 px digit needs no more than INK_SIDE: each step after this works on fewer pixels.
    image = open_image(path, max_side=INK_SIDE, grey=not as_read)
    gray = gray_array(image)
    try:
        seen = mnist_style(gray) if style == "mnist" else fashion_style(gray)
    except _Blank:
        raise BlankImage(path) from None
    if spec is None:
        return image, seen
    return image, spec.apply(Image.fromarray(np.clip(np.round(seen), 0, 255).astype(np.uint8), "L"))
