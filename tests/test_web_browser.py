"""The web page in a real headless Chromium: picture, live labels, no errors."""

from __future__ import annotations

import json
import os
import shutil
import time
import urllib.request

import cv2
import numpy as np
import pytest
from helpers import Feeder

from pi_classifier.config import WebConfig
from pi_classifier.state import LiveState, ShownLabel
from pi_classifier.web import WebServer

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
TOKEN = "browser-token-7"
PALETTE = [(0, 0, 230), (0, 200, 0), (220, 60, 0), (0, 220, 220), (200, 0, 200)]
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1024,768",
)


def need(what):
    """Skip without a browser, but under CI a missing browser is a failure."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{what} is needed for the browser tests under CI", pytrace=False)
    pytest.skip(f"{what} is not installed")


@pytest.fixture
def webdriver_module():
    try:
        from selenium import webdriver
    except ImportError:
        need("selenium (pip install selenium)")
    for path in (CHROMIUM, CHROMEDRIVER):
        if not shutil.which(path):
            need(f"{path} (apt-get install chromium chromium-driver)")
    return webdriver


@pytest.fixture
def browser(webdriver_module, tmp_path):
    from selenium.webdriver.chrome.service import Service

    options = webdriver_module.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'profile'}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver_module.Chrome(
        options=options, service=Service(executable_path=CHROMEDRIVER)
    )
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


@pytest.fixture
def live():
    state = LiveState(
        model="mobilenet_v1_0.25_128_quant.tflite", worker_alive=True, display_fps=24.5,
        inference_fps=9.5, inference_ms=42.0, temperature_c=48.4,
        labels=(ShownLabel(954, "banana", 0.91), ShownLabel(951, "lemon", 0.04)),
    )
    server = WebServer(WebConfig(port=0, token=TOKEN, max_fps=20.0), state)
    server.start()
    with Feeder(state, lambda i: np.full((240, 320, 3), PALETTE[i % len(PALETTE)],
                                         np.uint8), period=0.25):
        yield state, server
    assert server.stop(5.0)


def base_url(server):
    host, port = server.address
    return f"http://{host}:{port}"


def status_json(server):
    url = f"{base_url(server)}/status.json?token={TOKEN}"
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)


def wait_for(predicate, what, timeout=15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    pytest.fail(f"gave up waiting: {what}")


def picture_pixels(driver):
    """The picture's region of a screenshot, as a BGR array."""
    rect = driver.execute_script(
        "const r = document.getElementById('picture').getBoundingClientRect();"
        "return [r.left, r.top, r.width, r.height, window.devicePixelRatio];"
    )
    left, top, width, height, ratio = rect
    png = np.frombuffer(driver.get_screenshot_as_png(), np.uint8)
    shot = cv2.imdecode(png, cv2.IMREAD_COLOR)
    x0, y0 = int(left * ratio) + 2, int(top * ratio) + 2
    x1, y1 = int((left + width) * ratio) - 2, int((top + height) * ratio) - 2
    region = shot[y0:y1, x0:x1]
    assert region.size > 0, "the picture is not on screen"
    return region


def near_palette(region):
    mean = region.reshape(-1, 3).mean(axis=0)
    return min(float(np.abs(mean - np.array(c)).sum()) for c in PALETTE) < 40


def page_labels(driver):
    return driver.execute_script(
        "return Array.from(document.querySelectorAll('#labels .label-row'))"
        ".map(r => [r.querySelector('.label-name').textContent,"
        " r.querySelector('.label-score').textContent]);"
    )


def expected_labels(status):
    return [[item["label"], f"{round(item['score'] * 100)}%"]
            for item in status["labels"]]


def severe_console_entries(driver):
    return [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def natural_width(driver):
    return driver.execute_script(
        "return document.getElementById('picture').naturalWidth;"
    )


def test_page_shows_the_live_picture_and_labels_without_errors(browser, live):
    state, server = live
    browser.get(f"{base_url(server)}/?token={TOKEN}")

    assert wait_for(lambda: natural_width(browser), "the picture to load") == 320
    assert "/stream.mjpg?token=" in browser.execute_script(
        "return document.getElementById('picture').src;"
    )
    first = picture_pixels(browser)
    assert near_palette(first), "the picture region does not show the stream"
    wait_for(
        lambda: np.abs(picture_pixels(browser).astype(int) - first).mean() > 20,
        "the picture to change",
    )

    wait_for(lambda: page_labels(browser) == expected_labels(status_json(server)),
             "the labels of /status.json on the page")
    state.update(labels=(ShownLabel(1, "goldfish", 0.62), ShownLabel(2, "shark", 0.2)))
    wait_for(lambda: page_labels(browser) == expected_labels(status_json(server)),
             "the new labels on the page")
    assert page_labels(browser)[0] == ["goldfish", "62%"]
    figures = browser.execute_script(
        "return ['display-fps', 'inference-ms', 'model', 'temperature']"
        ".map(id => document.getElementById(id).textContent);"
    )
    assert figures == ["24.5 fps", "42.0 ms", "mobilenet_v1_0.25_128_quant", "48.4 °C"]

    assert severe_console_entries(browser) == []


def test_page_falls_back_to_snapshots_when_the_stream_fails(browser, live):
    _, server = live
    browser.execute_cdp_cmd("Network.enable", {})
    browser.execute_cdp_cmd("Network.setBlockedURLs", {"urls": ["*stream.mjpg*"]})
    browser.get(f"{base_url(server)}/?token={TOKEN}")

    wait_for(lambda: natural_width(browser) == 320, "a snapshot to show")
    assert browser.execute_script(
        "return document.getElementById('picture').src;"
    ).startswith("blob:")
    first = picture_pixels(browser)
    assert near_palette(first)
    wait_for(
        lambda: np.abs(picture_pixels(browser).astype(int) - first).mean() > 20,
        "the snapshot to be replaced by a newer one",
    )

    # Only the blocked stream itself may show up as a failed load.
    errors = severe_console_entries(browser)
    others = [entry for entry in errors if "stream.mjpg" not in entry["message"]]
    assert others == []


def test_page_fits_a_phone_screen(browser, live):
    _, server = live
    browser.set_window_size(390, 844)
    browser.get(f"{base_url(server)}/?token={TOKEN}")
    wait_for(lambda: natural_width(browser), "the picture to load")
    wait_for(lambda: page_labels(browser), "the labels to show")

    layout = browser.execute_script(
        "const de = document.documentElement;"
        "const pic = document.getElementById('picture').getBoundingClientRect();"
        "const label = document.querySelector('.label-name');"
        "return [de.scrollWidth, window.innerWidth, pic.right,"
        " parseFloat(getComputedStyle(label).fontSize),"
        " parseFloat(getComputedStyle(document.body).fontSize)];"
    )
    scroll_width, inner_width, picture_right, label_px, body_px = layout
    assert scroll_width <= inner_width
    assert picture_right <= inner_width
    assert label_px >= 24
    assert body_px >= 16
    assert severe_console_entries(browser) == []
