"""The draw-a-digit page of `cnnlab serve`, in Debian's chromium driven by Selenium.

Strokes are drawn with real mouse events on the canvas, a photo from ../shared/digits is
uploaded with the page's own file input; the answer shown on the page is checked. Each
test saves a screenshot in its tmp dir, and in $CNNLAB_SCREENSHOTS when that is set.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from conftest import SHARED, needs_data, needs_shared

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")

pytestmark = [needs_data, needs_shared]


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):  # make test installs them (scripts/need-debian-packages)
        pytest.fail(f"{CHROMIUM} and {CHROMEDRIVER} are needed: run `make test-system` (Debian's chromium, "
                    "chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1000,760", f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


@pytest.fixture
def page(browser, server):
    browser.get(server.url + "/")
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(browser, 20).until(lambda d: "classes" in d.find_element("id", "model-info").text)
    return browser


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
            for i in range(1, steps + 1):  # many small moves: a smooth line, as a hand draws it
                actions.move_by_offset(round((x - previous[0]) / steps), round((y - previous[1]) / steps))
            previous = (x, y)
        actions.release().perform()


def _answer(driver, expected_change_from: str | None = None, timeout: float = 20) -> str:
    from selenium.webdriver.support.ui import WebDriverWait

    def shown(d):
        text = d.find_element("id", "answer").text
        bars = d.find_elements("css selector", "#bars li")
        return text if text not in ("\u2013", "", expected_change_from) and len(bars) == 10 else False

    return WebDriverWait(driver, timeout).until(shown)


def _bars(driver) -> dict[str, float]:
    rows = driver.find_elements("css selector", "#bars li")
    return {row.get_attribute("data-name"): float(row.find_element("class name", "prob").text.rstrip("%"))
            for row in rows}


def test_drawing_a_one_and_a_seven_with_the_mouse(page, tmp_path):
    _draw(page, [[(140, 40), (140, 240)]])  # a 1: one vertical stroke
    one = _answer(page)
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


def test_a_blank_drawing_shows_the_servers_message(page, tmp_path):
    # a touch that starts and ends off the canvas sends the blank canvas
    page.execute_script("""
        const canvas = document.getElementById('canvas');
        canvas.dispatchEvent(new PointerEvent('pointerdown', {clientX: -100, clientY: -100, pointerId: 1}));
        canvas.dispatchEvent(new PointerEvent('pointerup', {pointerId: 1}));""")
    from selenium.webdriver.support.ui import WebDriverWait

    message = WebDriverWait(page, 20).until(lambda d: d.find_element("id", "error").text)
    _screenshot(page, tmp_path, "blank")
    assert "no ink" in message and page.find_element("id", "answer").text == "?"
