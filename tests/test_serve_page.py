"""The page of `cnnlab serve`, in Debian's chromium driven by Selenium.

For a digit model, strokes are drawn with real mouse events on the canvas and a photo from
../shared/digits is uploaded with the page's own file input; for a photo model (a folder run
on ../shared/photos/hymenoptera), photos are uploaded and taken with chromium's fake camera.
The answer shown on the page is checked. Each test saves a screenshot in its tmp dir, and in
$CNNLAB_SCREENSHOTS when that is set.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from conftest import SHARED, Server, needs_data, needs_shared, start_chromium

pytestmark = [needs_data, needs_shared]


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    # a camera that shows a test pattern, allowed without asking
    driver = start_chromium(tmp_path_factory.mktemp("chromium-profile"), "1000,760",
                            "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream")
    yield driver
    driver.quit()


PHOTOS = SHARED / "photos" / "hymenoptera"


@pytest.fixture(scope="module")
def photo_run(tmp_path_factory) -> Path:
    """A folder run on RGB photos: 30 training photos of each class of hymenoptera, 32x32."""
    from cnnlab.config import validate_config
    from cnnlab.train import train

    folder = tmp_path_factory.mktemp("photos")
    for kind in ("ants", "bees"):
        (folder / kind).mkdir()
        for photo in sorted((PHOTOS / "train" / kind).glob("*.jpg"))[:30]:
            shutil.copy(photo, folder / kind / photo.name)
    data = {"name": "insects", "seed": 1,
            "data": {"dataset": "folder", "path": str(folder), "image_size": [32, 32], "color": "rgb",
                     "validation": {"method": "none"}},
            "model": {"layers": [{"type": "conv2d", "filters": 8, "kernel_size": 3, "activation": "relu"},
                                 {"type": "max_pooling2d", "pool_size": 4}, {"type": "flatten"},
                                 {"type": "dense", "units": 2, "activation": "softmax"}]},
            "train": {"epochs": 2, "batch_size": 16, "checkpoint": {"monitor": "loss"}}}
    result = train(validate_config(data, "insects"), "insects", runs_dir=tmp_path_factory.mktemp("photo-runs"),
                   echo=lambda _: None, quiet=True)
    return result.run_dir


@pytest.fixture(scope="module")
def photo_server(photo_run, tmp_path_factory):
    running = Server(photo_run, tmp_path_factory.mktemp("photo-server") / "serve.log", "--workers", "1")
    yield running
    running.stop()


def _open(browser, server):
    browser.get(server.url + "/")
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(browser, 20).until(lambda d: "classes" in d.find_element("id", "model-info").text)
    return browser


@pytest.fixture
def page(browser, server):
    return _open(browser, server)


@pytest.fixture
def photo_page(browser, photo_server):
    return _open(browser, photo_server)


def _screenshot(driver, tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.png"
    driver.save_screenshot(str(path))
    if os.environ.get("CNNLAB_SCREENSHOTS"):
        folder = Path(os.environ["CNNLAB_SCREENSHOTS"])
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, folder / path.name)
    return path


def _draw(driver, strokes: list[list[tuple[int, int]]]) -> None:
    """Draw strokes on the canvas: each a list of points in canvas pixels (280 x 280), mouse down to up."""
    from selenium.webdriver.common.action_chains import ActionChains

    canvas = driver.find_element("id", "canvas")
    box = canvas.rect
    for stroke in strokes:
        actions = ActionChains(driver, duration=10)
        # offsets are from the element's centre
        x0, y0 = stroke[0]
        actions.move_to_element_with_offset(canvas, x0 - box["width"] / 2, y0 - box["height"] / 2).click_and_hold()
        previous = stroke[0]
        for x, y in stroke[1:]:
            steps = 6
            for _ in range(steps):  # many small moves: a smooth line, as a hand draws it
                actions.move_by_offset(round((x - previous[0]) / steps), round((y - previous[1]) / steps))
            previous = (x, y)
        actions.release().perform()


WAITING = ("\u2013", "\u2026", "")  # no answer yet, a request in flight


def _answer(driver, source: str | None = None, bars: int = 10, timeout: float = 20) -> str:
    """The answer the page shows (for the image named `source`, when given), once it has its bars."""
    from selenium.webdriver.support.ui import WebDriverWait

    def shown(d):
        if source is not None and d.find_element("id", "source").text != source:
            return False
        text = d.find_element("id", "answer").text
        return text if text not in WAITING and len(d.find_elements("css selector", "#bars li")) == bars else False

    return WebDriverWait(driver, timeout).until(shown)


def _error(driver, timeout: float = 20) -> str:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(lambda d: d.find_element("id", "error").text)


def _darkest(driver) -> int:
    """The darkest grey level on the canvas (255: nothing drawn on it)."""
    return driver.execute_script("""
        const c = document.getElementById('canvas');
        const pixels = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let darkest = 255;
        for (let i = 0; i < pixels.length; i += 4) darkest = Math.min(darkest, pixels[i], pixels[i + 1], pixels[i + 2]);
        return darkest;""")


def _predictions_logged(server) -> int:
    return server.log().count("POST /predict")


def _bars(driver) -> dict[str, float]:
    rows = driver.find_elements("css selector", "#bars li")
    return {row.get_attribute("data-name"): float(row.find_element("class name", "prob").text.rstrip("%"))
            for row in rows}


def test_drawing_a_one_and_a_seven_with_the_mouse(page, tmp_path):
    _draw(page, [[(140, 40), (140, 240)]])  # a 1: one vertical stroke
    one = _answer(page, "your drawing")
    _screenshot(page, tmp_path, "drawn-1")
    assert one == "1"
    bars = _bars(page)
    assert len(bars) == 10 and max(bars, key=bars.get) == "1" and sum(bars.values()) == pytest.approx(100, abs=1)
    assert page.find_element("id", "seen").get_attribute("src").startswith("data:image/png;base64,")

    page.find_element("id", "clear").click()
    assert page.find_element("id", "answer").text == "\u2013" and not _bars(page)
    _draw(page, [[(70, 50), (210, 50), (120, 240)]])  # a 7: the bar, then down to the left, in one stroke
    seven = _answer(page)
    _screenshot(page, tmp_path, "drawn-7")
    assert seven == "7"


def test_uploading_a_photo_of_a_digit(page, served_run, tmp_path):
    from cnnlab.checkpoint import load_checkpoint
    from cnnlab.predict import predict_files

    rows = [row.split(",") for row in (SHARED / "digits" / "manifest.csv").read_text().splitlines()[1:]]
    photos = [(SHARED / "digits" / row[0], row[1]) for row in rows if row[4] != "28"]  # photos, not 28x28s
    # the first photo the session's small model reads right (`cnnlab predict`'s answer)
    loaded = load_checkpoint(served_run, fast=True)
    answers = predict_files(loaded, [path for path, _ in photos])
    photo, label = next((path, label) for (path, label), answer in zip(photos, answers) if answer.name == label)
    page.find_element("id", "upload").send_keys(str(photo))
    shown = _answer(page)
    _screenshot(page, tmp_path, "uploaded")
    assert shown == label, f"{photo} is a {label}"
    assert page.find_element("id", "error").text == ""


def test_a_tap_draws_a_dot_and_the_page_asks_for_strokes_itself(page, server, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains

    sent = _predictions_logged(server)
    ActionChains(page).move_to_element(page.find_element("id", "canvas")).click().perform()
    message = _error(page)
    _screenshot(page, tmp_path, "tap")
    assert _darkest(page) == 0, "the tap left no dot"
    assert "dot" in message and "preprocess" not in message and page.find_element("id", "answer").text == "?"
    # a pointer pressed and let go off the canvas draws nothing at all
    page.find_element("id", "clear").click()
    page.execute_script("""
        const canvas = document.getElementById('canvas');
        canvas.dispatchEvent(new PointerEvent('pointerdown', {clientX: -100, clientY: -100, pointerId: 1}));
        canvas.dispatchEvent(new PointerEvent('pointerup', {pointerId: 1}));""")
    assert "Nothing is drawn" in _error(page) and _darkest(page) == 255
    time.sleep(0.5)
    assert _predictions_logged(server) == sent, "a dot or nothing was sent to the server"


def test_a_blank_photo_gets_the_pages_advice_not_the_apis(page, tmp_path):
    from PIL import Image

    Image.new("L", (200, 200), 250).save(tmp_path / "white.png")
    page.find_element("id", "upload").send_keys(str(tmp_path / "white.png"))
    message = _error(page)
    assert "no ink" in message.lower() and "white.png" in message and "preprocess" not in message, message


def test_a_failed_upload_leaves_nothing_of_the_drawing_before_it(page, tmp_path):
    _draw(page, [[(140, 40), (140, 240)]])
    assert _answer(page, "your drawing") == "1" and _darkest(page) == 0
    (tmp_path / "notes.png").write_text("not a picture")
    page.find_element("id", "upload").send_keys(str(tmp_path / "notes.png"))
    message = _error(page)
    _screenshot(page, tmp_path, "failed-upload")
    assert "notes.png" in message and page.find_element("id", "answer").text == "?"
    assert page.find_element("id", "seen").get_attribute("src") in (None, "")
    assert not _bars(page) and _darkest(page) == 255, "the earlier drawing is still on the canvas"


# A 375x667 phone screen, less the ~120 px its browser's address and tool bars take (Safari's on an iPhone SE)
PHONE = {"width": 375, "height": 547, "deviceScaleFactor": 2, "mobile": True}


def test_on_a_phone_screen_the_answer_is_in_view_after_drawing(browser, server, tmp_path):
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", PHONE)
    try:
        page = _open(browser, server)
        _draw(page, [[(140, 40), (140, 240)]])
        assert _answer(page) == "1"
        _screenshot(page, tmp_path, "phone")
        box = page.execute_script("""
            const a = document.getElementById('answer').getBoundingClientRect();
            const c = document.getElementById('canvas').getBoundingClientRect();
            return {answer: a.bottom, canvas: c.right, width: innerWidth, height: innerHeight,
                    scrolled: scrollY, wide: document.documentElement.scrollWidth};""")
        assert (box["width"], box["height"], box["scrolled"]) == (375, 547, 0)
        assert box["answer"] <= box["height"], box  # seen without scrolling
        assert box["canvas"] <= box["width"] and box["wide"] <= box["width"], box  # nothing sticks out sideways
    finally:
        browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def test_a_photo_model_offers_upload_and_the_camera_and_no_canvas_to_draw_on(photo_page, photo_server, tmp_path):
    page = photo_page
    assert page.find_element("tag name", "body").get_attribute("data-mode") == "photo"
    assert "Classes: ants, bees" in page.find_element("id", "hint").text
    assert page.find_element("id", "camera-button").is_displayed()
    assert page.find_element("css selector", "label[for=upload]").is_displayed()
    sent = _predictions_logged(photo_server)
    _draw(page, [[(140, 40), (140, 240)]])
    time.sleep(0.5)
    assert _darkest(page) == 255 and _predictions_logged(photo_server) == sent, "a photo model's canvas took a drawing"


def test_thirty_photos_uploaded_in_a_row_each_keep_their_answer_on_screen(photo_page, photo_run, tmp_path):
    """The answer and its bars stay after the photo is drawn on the canvas, whichever of the two comes first."""
    from cnnlab.checkpoint import load_checkpoint
    from cnnlab.predict import predict_files

    page = photo_page
    photos = sorted((PHOTOS / "test" / "ants").glob("*.jpg"))[:15] + sorted((PHOTOS / "test" / "bees").glob("*.jpg"))[:15]
    expected = [answer.name for answer in predict_files(load_checkpoint(photo_run, fast=True), photos)]
    wiped = []
    for photo, name in zip(photos, expected):
        page.find_element("id", "upload").send_keys(str(photo))
        assert _answer(page, photo.name, bars=2) == name, photo
        time.sleep(0.15)  # longer than decoding one of these photos takes
        after = page.find_element("id", "answer").text
        if after != name or len(page.find_elements("css selector", "#bars li")) != 2:
            wiped.append((photo.name, after))
        assert _darkest(page) < 200, f"{photo.name} is not shown on the canvas"
    _screenshot(page, tmp_path, "photo-uploaded")
    assert not wiped, f"answers wiped after they arrived: {wiped}"
    assert set(_bars(page)) == {"ants", "bees"} and page.find_element("id", "error").text == ""
    assert page.find_element("id", "seen").get_attribute("src").startswith("data:image/png;base64,")


def test_a_photo_taken_with_the_camera_is_answered(photo_page, tmp_path):
    from selenium.webdriver.support.ui import WebDriverWait

    page = photo_page
    button = page.find_element("id", "camera-button")
    button.click()
    WebDriverWait(page, 20).until(lambda d: d.execute_script("return document.getElementById('camera').videoWidth > 0"))
    assert page.find_element("id", "camera").is_displayed() and not page.find_element("id", "canvas").is_displayed()
    _screenshot(page, tmp_path, "camera-on")
    button.click()  # "Take the photo"
    assert _answer(page, "the camera's photo", bars=2) in ("ants", "bees")
    _screenshot(page, tmp_path, "camera-taken")
    assert page.find_element("id", "canvas").is_displayed() and _darkest(page) < 200
    assert button.text == "Camera"
