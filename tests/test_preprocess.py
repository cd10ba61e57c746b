"""MNIST-style preprocessing: any picture of a digit becomes the 28x28 image MNIST would have made."""

from __future__ import annotations

import io
import re
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import ExifTags, Image, ImageDraw

from cnnlab.data import load_raw
from cnnlab.errors import CnnlabError
from cnnlab.preprocess import (
    DIGIT_BOX,
    SIZE,
    fashion_style,
    gray_array,
    mnist_style,
    plain_resize,
    prepare_image,
)

from conftest import SHARED, needs_data, needs_shared

SHAPES = {  # strokes of a few digits, in a 100x100 design space
    "7": [[(10, 10), (80, 10), (35, 95)]],
    "4": [[(60, 95), (60, 5), (5, 65), (90, 65)]],
    "1": [[(30, 25), (55, 5), (55, 95)]],
    "5": [[(80, 5), (25, 5), (20, 45), (60, 40), (80, 65), (60, 92), (15, 85)]],
}


def draw_digit(digit="7", canvas=(160, 160), at=(30, 20), scale=1.0, width=9, ink=0, paper=255):
    """A digit drawn with a pen: `ink` strokes on `paper`, as a grey ("L") image."""
    image = Image.new("L", canvas, paper)
    pen = ImageDraw.Draw(image)
    for stroke in SHAPES[digit]:
        pen.line([(at[0] + x * scale, at[1] + y * scale) for x, y in stroke], fill=ink, width=width, joint="curve")
    return image


def prepared(image: Image.Image, tmp_path, name="digit.png", style="mnist", **save) -> np.ndarray:
    path = tmp_path / name
    image.save(path, **save)
    return prepare_image(path, style)[1]


def centre_of_mass(image: np.ndarray) -> tuple[float, float]:
    total = image.sum()
    rows, cols = np.indices(image.shape)
    return float((rows * image).sum() / total), float((cols * image).sum() / total)


def ink_box(image: np.ndarray, level: float = 0) -> tuple[int, int]:
    rows, cols = np.nonzero(image > level)
    return rows.max() - rows.min() + 1, cols.max() - cols.min() + 1


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


@pytest.mark.parametrize("digit", sorted(SHAPES))
@pytest.mark.parametrize("at,scale", [((5, 5), 0.6), ((40, 30), 1.0), ((2, 50), 1.3)])
def test_centre_of_mass_lands_within_one_pixel_of_the_centre(digit, at, scale):
    seen = mnist_style(gray_array(draw_digit(digit, canvas=(200, 200), at=at, scale=scale)))
    assert seen.shape == (SIZE, SIZE) and seen.dtype == np.float32
    row, col = centre_of_mass(seen)
    # the field's centre is 13.5 in pixel indices (MNIST itself put the mass at 14)
    assert abs(row - 13.5) <= 1 and abs(col - 13.5) <= 1


@pytest.mark.parametrize("digit", sorted(SHAPES))
def test_the_digit_is_fitted_into_20x20_keeping_its_aspect_ratio(digit):
    seen = mnist_style(gray_array(draw_digit(digit, canvas=(300, 300), at=(50, 60), scale=2.0, width=16)))
    height, width = ink_box(seen)
    assert max(height, width) == DIGIT_BOX
    drawn = np.asarray(draw_digit(digit, canvas=(300, 300), at=(50, 60), scale=2.0, width=16)) < 128
    drawn_height, drawn_width = ink_box(drawn)
    assert abs(width / height - drawn_width / drawn_height) < 0.15
    assert seen.max() == pytest.approx(255, abs=1) and seen.min() == 0


def test_a_shifted_digit_gives_the_same_28x28():
    here = mnist_style(gray_array(draw_digit("4", canvas=(240, 200), at=(10, 10))))
    there = mnist_style(gray_array(draw_digit("4", canvas=(240, 200), at=(117, 83))))
    np.testing.assert_array_equal(here, there)


def test_black_on_white_and_white_on_black_give_the_same_image():
    dark_on_light = mnist_style(gray_array(draw_digit("5", ink=0, paper=255)))
    light_on_dark = mnist_style(gray_array(draw_digit("5", ink=255, paper=0)))
    np.testing.assert_array_equal(dark_on_light, light_on_dark)
    assert dark_on_light[0, 0] == 0  # background black, ink white, as in MNIST


def test_rgba_with_transparent_background_is_composited_over_white(tmp_path):
    # a drawing app's export: black strokes, and a background of transparent *black* pixels
    mask = np.asarray(draw_digit("7")) < 128
    rgba = np.zeros((*mask.shape, 4), np.uint8)
    rgba[..., 3] = np.where(mask, 255, 0)
    seen = prepared(Image.fromarray(rgba, "RGBA"), tmp_path)
    np.testing.assert_array_equal(seen, mnist_style(gray_array(draw_digit("7"))))


def test_palette_images_with_and_without_transparency(tmp_path):
    reference = mnist_style(gray_array(draw_digit("4")))
    palette = draw_digit("4").convert("RGB").convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    np.testing.assert_array_equal(prepared(palette, tmp_path, "palette.png"), reference)
    # a GIF whose background is a transparent black palette entry: black strokes on "nothing"
    gif = Image.new("P", (160, 160), 0)
    gif.putpalette([0, 0, 0] * 2 + [0] * 762)
    gif.paste(1, mask=Image.eval(draw_digit("4"), lambda v: 255 if v < 128 else 0))
    np.testing.assert_array_equal(prepared(gif, tmp_path, "transparent.gif", transparency=0), reference)


def test_bmp_files_read_like_png(tmp_path):
    reference = mnist_style(gray_array(draw_digit("5")))
    np.testing.assert_array_equal(prepared(draw_digit("5").convert("RGB"), tmp_path, "paint.bmp"), reference)


def test_jpeg_artefacts_do_not_change_the_digit(tmp_path):
    reference = mnist_style(gray_array(draw_digit("5")))
    seen = prepared(draw_digit("5").convert("RGB"), tmp_path, "digit.jpg", quality=60)
    assert correlation(seen, reference) > 0.95
    assert np.allclose(centre_of_mass(seen), centre_of_mass(reference), atol=0.75)


def test_a_16_bit_png_is_scaled_not_clipped(tmp_path):
    # Pillow's own I;16 -> L conversion clips everything above 255 to white: here, ink and paper
    wide = np.where(np.asarray(draw_digit("7")) < 128, 5000, 50000).astype(np.uint16)
    image = Image.fromarray(wide)
    assert image.mode.startswith("I;16")
    seen = prepared(image, tmp_path, "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    np.testing.assert_array_equal(seen, mnist_style(gray_array(draw_digit("7"))))


def test_coloured_ink_on_grey_paper(tmp_path):
    mask = np.asarray(draw_digit("4")) < 128
    photo = np.empty((*mask.shape, 3), np.uint8)
    photo[:] = (178, 176, 170)  # grey paper
    photo[mask] = (40, 50, 190)  # blue ballpoint
    seen = prepared(Image.fromarray(photo, "RGB"), tmp_path)
    assert correlation(seen, mnist_style(gray_array(draw_digit("4")))) > 0.98


def test_paper_noise_and_specks_are_removed(tmp_path):
    clean = mnist_style(gray_array(draw_digit("7", canvas=(300, 300), at=(90, 80))))
    rng = np.random.default_rng(3)
    page = np.asarray(draw_digit("7", canvas=(300, 300), at=(90, 80)), dtype=np.float64)
    page = page - 12 + rng.normal(0, 6, page.shape)  # grey, grainy paper
    for row, col in [(10, 10), (20, 280), (285, 30), (270, 260), (150, 15), (40, 150)]:  # dust, far from the digit
        page[row:row + 3, col:col + 2] = 20
    seen = mnist_style(np.clip(page, 0, 255).astype(np.float32))
    assert ink_box(seen) == ink_box(clean)  # a speck would have widened the crop and shrunk the digit
    assert correlation(seen, clean) > 0.97
    assert seen[:, :2].max() == 0 and seen[:2, :].max() == 0


def test_faint_thin_strokes_are_kept_and_thickened_like_mnist():
    # a hairline pen digit on a big page, light grey: a plain shrink leaves almost nothing of it
    thin = mnist_style(gray_array(draw_digit("4", canvas=(900, 700), at=(300, 150), scale=3.0, width=2, ink=170)))
    bold = mnist_style(gray_array(draw_digit("4", canvas=(900, 700), at=(300, 150), scale=3.0, width=36)))
    assert thin.max() == pytest.approx(255, abs=1)
    assert (thin > 127).sum() > 0.6 * (bold > 127).sum()
    assert correlation(thin, bold) > 0.85


def test_tiny_images_work_and_a_1x1_or_0x0_image_is_an_error(tmp_path):
    tiny = Image.new("L", (6, 9), 255)
    ImageDraw.Draw(tiny).line([(3, 1), (3, 7)], fill=0, width=1)
    seen = prepared(tiny, tmp_path, "tiny.png")
    assert ink_box(seen, 127)[0] >= 18  # a one-pixel "1" becomes a full-height stroke
    assert abs(centre_of_mass(seen)[1] - 13.5) <= 1
    Image.new("L", (1, 1), 0).save(tmp_path / "dot.png")
    with pytest.raises(CnnlabError, match=r"dot\.png: the image is 1x1 pixels, too small"):
        prepare_image(tmp_path / "dot.png")
    (tmp_path / "empty-canvas.png").write_bytes(_png_header(0, 0))
    with pytest.raises(CnnlabError, match=r"empty-canvas\.png"):
        prepare_image(tmp_path / "empty-canvas.png")


def _png_header(width: int, height: int) -> bytes:
    """A PNG file that declares a size and holds (next to) no pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def test_a_large_photo_works_and_a_decompression_bomb_is_refused(tmp_path):
    large = draw_digit("7", canvas=(3000, 2200), at=(1000, 500), scale=10.0, width=80)
    seen = prepared(large, tmp_path, "large.png")
    assert correlation(seen, mnist_style(gray_array(draw_digit("7", width=8)))) > 0.9
    limit = Image.MAX_IMAGE_PIXELS
    (tmp_path / "bomb.png").write_bytes(_png_header(30000, 30000))  # 900 megapixels, a few bytes on disk
    with pytest.raises(CnnlabError, match=r"bomb\.png: the image is too large to open safely"):
        prepare_image(tmp_path / "bomb.png")
    assert Image.MAX_IMAGE_PIXELS == limit  # the limit stays on

    # between the limit and twice it, Pillow only warns: refused too, also from 8 threads at once
    (tmp_path / "half-bomb.png").write_bytes(_png_header(10000, int(limit * 1.5) // 10000))
    digit = tmp_path / "digit.png"
    draw_digit("7").save(digit)

    def one(path):
        try:
            prepare_image(path)
            return "ok"
        except CnnlabError as error:
            return str(error)

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(one, [tmp_path / "half-bomb.png", digit] * 64))
    assert all(answer == "ok" for answer in answers[1::2])
    assert all("half-bomb.png: the image is too large to open safely" in answer for answer in answers[::2])


def test_missing_empty_and_non_image_files_are_errors_naming_the_file(tmp_path):
    with pytest.raises(CnnlabError, match=r"nothing\.png: no such image file"):
        prepare_image(tmp_path / "nothing.png")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(CnnlabError, match=r"empty\.png: is an empty file"):
        prepare_image(tmp_path / "empty.png")
    (tmp_path / "notes.png").write_text("not a picture")
    with pytest.raises(CnnlabError, match=r"notes\.png: is not an image"):
        prepare_image(tmp_path / "notes.png")
    draw_digit().save(tmp_path / "whole.png")
    whole = (tmp_path / "whole.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(CnnlabError, match=r"cut\.png"):
        prepare_image(tmp_path / "cut.png")


def test_a_blank_page_is_an_error_unless_preprocessing_is_off(tmp_path):
    Image.new("L", (50, 50), 240).save(tmp_path / "blank.png")
    with pytest.raises(CnnlabError, match=r"blank\.png: found no ink"):
        prepare_image(tmp_path / "blank.png")
    assert prepare_image(tmp_path / "blank.png", "none")[1].shape == (SIZE, SIZE)


def test_plain_resize_changes_nothing_but_the_size():
    mnist_like = np.zeros((SIZE, SIZE), np.float32)
    mnist_like[5:20, 12:15] = 255
    np.testing.assert_array_equal(plain_resize(mnist_like), mnist_like)
    page = gray_array(draw_digit("7"))  # dark on light stays dark on light: no inversion
    assert plain_resize(page)[0, 0] == 255


def test_exif_rotation_of_a_phone_photo_is_applied(tmp_path):
    wide = Image.new("L", (200, 100), 255)
    ImageDraw.Draw(wide).line([(20, 50), (180, 50)], fill=0, width=12)  # a bar lying down
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees to display": the bar stands up
    seen = prepared(wide.convert("RGB"), tmp_path, "phone.jpg", exif=exif)
    height, width = ink_box(seen, 127)
    assert height > 2 * width


def test_fashion_style_puts_the_object_light_on_black_fitted_to_28():
    product = Image.new("L", (300, 200), 255)
    ImageDraw.Draw(product).rectangle([60, 40, 240, 160], fill=60)  # a dark bag on a white page
    seen = fashion_style(gray_array(product))
    assert seen.shape == (SIZE, SIZE)
    assert seen[0, 0] == 0 and seen[14, 14] > 150
    height, width = ink_box(seen, 20)
    assert width == SIZE and abs(height - SIZE * 121 / 181) <= 1.5
    rows = np.nonzero(seen.max(axis=1) > 20)[0]
    assert abs(rows[0] - (SIZE - 1 - rows[-1])) <= 1  # centred


@needs_data
def test_a_fashion_mnist_item_photographed_as_a_product_comes_back_as_in_the_data_set():
    # Fashion-MNIST was made from product photos: dark on white, trimmed, fitted to 28, inverted
    items = load_raw("fashion_mnist").x_test[:50]
    matches = []
    for item in items:
        photo = Image.fromarray(255 - item).resize((224, 224), Image.Resampling.BICUBIC)
        page = Image.new("L", (400, 300), 255)
        page.paste(photo, (130, 50))
        matches.append(correlation(fashion_style(gray_array(page)), item.astype(np.float32)))
    assert np.median(matches) > 0.95 and np.mean(matches) > 0.9


# --- the fast PNG decoders (Wuffs, libvips) must give Pillow's pixels, and leave the rest to Pillow ------


def _pillow_pixels(source) -> np.ndarray:
    with Image.open(source) as image:
        image.load()
        return np.asarray(image)


def _decoders():
    from cnnlab.preprocess import _pyvips, _pywuffs, _vips_png, _wuffs_png

    # both are installed by `make install` (Wuffs: the fast-png extra): a missing one is a failure, not a skip
    assert _pywuffs() is not None, "pywuffs (the fast-png extra) is not importable: PNGs fall back to libvips"
    assert _pyvips() is not None, "pyvips (a dependency) is not importable: PNGs fall back to Pillow"
    return {"wuffs": _wuffs_png, "libvips": _vips_png}


@pytest.fixture(params=["wuffs", "libvips"])
def decode_png(request):
    return _decoders()[request.param]


@needs_shared
def test_fast_decoders_give_pillows_pixels_for_every_shared_digit_png(decode_png):
    pngs = sorted((SHARED / "digits").rglob("*.png"))
    assert len(pngs) > 50
    for path in pngs:
        with Image.open(path) as header:
            decoded = decode_png(header, path)
            assert decoded is not None, path  # all are ordinary 8-bit RGB/RGBA PNGs
        np.testing.assert_array_equal(np.asarray(decoded), _pillow_pixels(path), err_msg=str(path))


@pytest.mark.parametrize("mode", ["L", "LA", "RGB", "RGBA"])
@pytest.mark.parametrize("interlace", [False, True])
def test_fast_decoders_and_pillow_agree_on_each_png_kind_from_bytes_and_files(tmp_path, mode, interlace, decode_png):
    from cnnlab.preprocess import ImageBytes

    rng = np.random.default_rng(7)
    pixels = rng.integers(0, 256, size=(37, 53, len(mode)), dtype=np.uint8).squeeze()
    path = tmp_path / "x.png"
    if interlace:
        _save_interlaced(pixels, mode, path)
    else:
        Image.fromarray(pixels, mode).save(path)
    for source in (path, ImageBytes("x.png", path.read_bytes())):
        with Image.open(path) as header:
            decoded = decode_png(header, source)
        assert decoded is not None and decoded.mode == mode
        np.testing.assert_array_equal(np.asarray(decoded), pixels)


def test_pngs_are_decoded_by_wuffs_first(monkeypatch):
    from cnnlab import preprocess

    _decoders()
    used, wuffs = [], preprocess._wuffs_png
    monkeypatch.setattr(preprocess, "_wuffs_png", lambda *args: used.append("wuffs") or wuffs(*args))
    monkeypatch.setattr(preprocess, "_vips_png", lambda *args: used.append("libvips"))
    drawn = draw_digit("7")
    image = preprocess.open_image(preprocess.ImageBytes("7.png", _png_bytes(drawn)))
    assert used == ["wuffs"]
    np.testing.assert_array_equal(np.asarray(image), np.asarray(drawn))


@pytest.mark.parametrize("alpha", ["opaque", "one pixel at 254", "half transparent"])
@pytest.mark.parametrize("grey", [True, False])
def test_an_rgba_png_reads_as_pillow_alone_reads_it(monkeypatch, alpha, grey):
    # Wuffs tells whether every alpha is 255 as it decodes: the composite over white must still
    # happen exactly when one pixel is not opaque, as when Pillow decodes and checks
    from cnnlab import preprocess

    _decoders()
    rgba = np.random.default_rng(3).integers(0, 256, size=(40, 30, 4), dtype=np.uint8)
    rgba[..., 3] = 255
    if alpha == "one pixel at 254":
        rgba[17, 9, 3] = 254
    elif alpha == "half transparent":
        rgba[:20, :, 3] = 0
    data = preprocess.ImageBytes("x.png", _png_bytes(Image.fromarray(rgba, "RGBA")))
    fast = np.asarray(preprocess.open_image(data, grey=grey))
    monkeypatch.setattr(preprocess, "_fast_png", lambda *args: None)
    np.testing.assert_array_equal(fast, np.asarray(preprocess.open_image(data, grey=grey)))
    if alpha == "half transparent":  # composited: transparent pixels read as white paper
        assert fast[:20].min() == 255 and fast[20:].min() < 255


def _png_bytes(image: Image.Image, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **options)
    return buffer.getvalue()


def _save_interlaced(pixels: np.ndarray, mode: str, path) -> None:
    """An Adam7-interlaced PNG (Pillow cannot write one): 8-bit, filter 0 on every row."""
    colour_type = {"L": 0, "LA": 4, "RGB": 2, "RGBA": 6}[mode]
    height, width = pixels.shape[:2]
    rows = pixels.reshape(height, width, -1)
    data = b""
    for y0, x0, dy, dx in [(0, 0, 8, 8), (0, 4, 8, 8), (4, 0, 8, 4), (0, 2, 4, 4), (2, 0, 4, 2), (0, 1, 2, 2),
                           (1, 0, 2, 1)]:
        part = rows[y0::dy, x0::dx]
        if part.size:
            data += b"".join(b"\x00" + row.tobytes() for row in part)

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 1)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(data))
                     + chunk(b"IEND", b""))


def test_pngs_the_fast_decoders_do_not_take_go_to_pillow(tmp_path, decode_png):
    from cnnlab.preprocess import _fast_png

    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6  # turned: Pillow applies it
    cases = {
        "palette.png": (Image.new("P", (20, 20), 3), {}),
        "sixteen-bit.png": (Image.fromarray(np.full((20, 20), 40000, dtype=np.uint16)), {}),
        "transparent-colour.png": (Image.new("RGB", (20, 20), (255, 255, 255)), {"transparency": (255, 255, 255)}),
        "photo.jpg": (Image.new("RGB", (20, 20), (200, 10, 10)), {}),
    }
    for name, (image, options) in cases.items():
        image.save(tmp_path / name, **options)
        with Image.open(tmp_path / name) as header:
            assert _fast_png(header, tmp_path / name) is None, name
    turned = tmp_path / "turned.png"
    Image.new("RGB", (30, 20), (9, 9, 9)).save(turned, exif=exif)
    with Image.open(turned) as header:
        assert decode_png(header, turned) is None
    assert prepare_image(turned, "none")[0].size == (20, 30)  # Pillow turned it
    whole = tmp_path / "whole.png"
    draw_digit("7").save(whole)
    data = whole.read_bytes()
    cut = tmp_path / "cut.png"
    cut.write_bytes(data[: len(data) // 2])
    bad_checksum = tmp_path / "bad-checksum.png"
    at = data.index(b"IDAT")
    length = int.from_bytes(data[at - 4:at], "big")
    bad_checksum.write_bytes(data[:at + 4 + length] + bytes([data[at + 4 + length] ^ 0xFF]) + data[at + 5 + length:])
    for broken in (cut, bad_checksum):
        with Image.open(broken) as header:
            assert decode_png(header, broken) is None, broken.name  # the decoder sees the fault: Pillow decides
    with pytest.raises(CnnlabError, match="cut.png: cannot read the image"):
        prepare_image(cut)


def test_separable_dilation_is_pillows_max_filter():
    from PIL import ImageFilter

    from cnnlab.preprocess import _dilate

    rng = np.random.default_rng(3)
    for _ in range(100):
        height, width = rng.integers(3, 90, 2)
        grow = int(rng.integers(1, 8))
        mask = rng.random((height, width)) < rng.random() * 0.2
        pillow = Image.fromarray(mask.astype(np.uint8) * 255, "L").filter(ImageFilter.MaxFilter(2 * grow + 1))
        np.testing.assert_array_equal(_dilate(mask, grow), np.asarray(pillow) > 0)


def _flood_fill_pieces(grid: np.ndarray) -> np.ndarray:
    """8-connected pieces the slow, obvious way, numbered in raster order of their first cell."""
    labels = np.zeros(grid.shape, dtype=np.int32)
    count = 0
    for start in zip(*np.nonzero(grid)):
        if labels[start]:
            continue
        count += 1
        labels[start] = count
        todo = [start]
        while todo:
            y, x = todo.pop()
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    ny, nx = y + dy, x + dx
                    if 0 <= ny < grid.shape[0] and 0 <= nx < grid.shape[1] and grid[ny, nx] and not labels[ny, nx]:
                        labels[ny, nx] = count
                        todo.append((ny, nx))
    return labels


def test_ink_pieces_are_the_8_connected_components_with_their_weights():
    from cnnlab.preprocess import _components

    rng = np.random.default_rng(11)
    for _ in range(150):
        height, width = rng.integers(1, 40, 2)
        grid = rng.random((height, width)) < rng.random() * 0.7
        weight = (rng.random((height, width)) * grid).astype(np.float32)
        labels, sizes = _components(grid, weight)
        expected = _flood_fill_pieces(grid)
        np.testing.assert_array_equal(labels, expected)
        assert sizes == pytest.approx([float(weight[expected == k].sum()) for k in range(1, expected.max() + 1)])


def _png(path, mode: str, size=(28, 28), **save) -> str:
    rng = np.random.default_rng(len(mode) + size[0])
    channels = {"L": 1, "RGB": 3, "RGBA": 4, "LA": 2}.get(mode)
    if mode == "I;16":
        image = Image.fromarray(rng.integers(0, 65535, size[::-1], dtype=np.uint16))
    elif mode == "P":
        image = Image.fromarray(rng.integers(0, 256, (*size[::-1], 3), dtype=np.uint8)).convert("P")
    else:
        pixels = rng.integers(0, 256, (*size[::-1], channels), dtype=np.uint8)
        image = Image.fromarray(pixels[..., 0] if channels == 1 else pixels, mode)
    image.save(path, **save)
    return str(path)


def _exif_turned() -> bytes:
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6
    return exif.tobytes()


# (how the PNG is made, whether the shorter way takes it): where it does not, open_image decodes it
PLAIN_PNG_CASES = {
    "grey 28x28": (dict(mode="L"), True),
    "rgb 40x30": (dict(mode="RGB", size=(40, 30)), True),
    "grey with a transparent colour": (dict(mode="L", transparency=0), False),
    "rgba": (dict(mode="RGBA"), False),
    "grey+alpha": (dict(mode="LA"), False),
    "palette": (dict(mode="P"), False),
    "16-bit grey": (dict(mode="I;16"), False),
    "EXIF turned a quarter": (dict(mode="L", size=(30, 20), exif=_exif_turned()), False),
    "large (a faster decoder's)": (dict(mode="L", size=(200, 120)), False),
    "too small to hold a digit": (dict(mode="L", size=(3, 28)), False),
}


@pytest.mark.parametrize("case", list(PLAIN_PNG_CASES))
@pytest.mark.parametrize("color", ["grayscale", "rgb"])
def test_the_plain_png_way_gives_open_images_pixels_or_leaves_the_file_to_it(tmp_path, case, color):
    from cnnlab.data.cache import decode_file
    from cnnlab.data.spec import ImageSpec
    from cnnlab.preprocess import open_plain_png

    made, taken = PLAIN_PNG_CASES[case]
    path = _png(tmp_path / "x.png", **made)
    assert (open_plain_png(path) is not None) == taken
    spec = ImageSpec(24, 24, color)
    try:
        expected = decode_file(tmp_path / "x.png", spec)
    except CnnlabError as exc:
        with pytest.raises(CnnlabError, match=re.escape(str(exc))):
            decode_file(tmp_path / "x.png", spec, plain_png=True)
        return
    np.testing.assert_array_equal(decode_file(tmp_path / "x.png", spec, plain_png=True), expected)


@pytest.mark.parametrize("damage", ["empty", "truncated", "not a png"])
def test_a_damaged_file_is_left_to_open_image_and_its_message(tmp_path, damage):
    from cnnlab.data.cache import decode_file
    from cnnlab.data.spec import ImageSpec
    from cnnlab.preprocess import open_plain_png

    path = tmp_path / "x.png"
    whole = Path(_png(path, "L")).read_bytes()
    path.write_bytes({"empty": b"", "truncated": whole[: len(whole) // 2], "not a png": b"hello"}[damage])
    assert open_plain_png(str(path)) is None
    with pytest.raises(CnnlabError, match=re.escape(str(path))):
        decode_file(path, ImageSpec(28, 28), plain_png=True)
