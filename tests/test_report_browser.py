"""report.html in a real headless Chromium: it opens from disk on its own, every image renders, no errors.

Needs the system packages ``chromium`` and ``chromium-driver`` (``apt-get install -y chromium
chromium-driver``); without them this test fails, it does not skip.
"""

import shutil
from pathlib import Path

import numpy as np
import pytest

from ftkit.evaluate import evaluate_predictions
from ftkit.evaluate.gallery import PER_CELL

CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROME_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--no-first-run", "--disable-sync",
)


@pytest.fixture
def browser(tmp_path):
    if not CHROMEDRIVER.is_file():
        pytest.fail(f"{CHROMEDRIVER} is missing: install the system packages with "
                    "`apt-get update && apt-get install -y chromium chromium-driver`")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for flag in CHROME_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chrome-profile'}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    yield driver
    driver.quit()


@pytest.mark.browser
def test_report_html_renders_from_disk(browser, tmp_path, shared_data):
    # Real images, known predictions: 30 cats and 30 dogs, 27 cats called dogs (more than a gallery cell
    # shows) and 2 dogs called cats.
    paths = [str(p) for name in ("cats", "dogs") for p in sorted((shared_data / "catsdogs" / "test" / name).iterdir())[:30]]
    y_true = np.array([0] * 30 + [1] * 30)
    y_pred = np.array([0] * 3 + [1] * 27 + [0] * 2 + [1] * 28)
    confidence = np.linspace(0.55, 0.99, 60)
    probs = np.where(np.eye(2)[y_pred] == 1, confidence[:, None], 1 - confidence[:, None])
    evaluate_predictions(paths, y_true, probs, ["cats", "dogs"], tmp_path / "bundle", model="m.keras", data="catsdogs")

    alone = tmp_path / "elsewhere" / "report.html"  # nothing beside it: it must be self-contained
    alone.parent.mkdir()
    shutil.copy(tmp_path / "bundle" / "report.html", alone)
    browser.get(alone.as_uri())

    state = browser.execute_script(
        "return Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.src.slice(0, 5)])"
    )
    expected_thumbnails = min(27, PER_CELL) + 2
    assert len(state) == 3 + expected_thumbnails  # 2 confusion matrices + reliability diagram + gallery
    assert all(complete and width > 0 and src == "data:" for complete, width, src in state), state
    assert browser.title == "ftkit evaluation report"
    text = browser.find_element("tag name", "body").text
    assert "cats → dogs: 27 images (showing 24)" in text
    assert "Showing 26 of 29 misclassified images" in text
    severe = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert severe == []


@pytest.mark.browser
def test_a_50_class_confusion_matrix_opens_at_full_size_on_a_click(browser, tmp_path, shared_data):
    # At page width a 50-class matrix's labels are a few pixels high; a click shows it at its own size.
    paths = [str(p) for p in sorted((shared_data / "catsdogs" / "test" / "cats").iterdir())[:100]]
    y_true = np.arange(100) % 50
    probs = np.full((100, 50), 0.5 / 49)
    probs[np.arange(100), (y_true + np.arange(100) // 50) % 50] = 0.5  # the second half all wrong
    evaluate_predictions(paths, y_true, probs, [f"class_{i:02d}" for i in range(50)], tmp_path / "bundle", top_k=())
    browser.set_window_size(1280, 900)
    browser.get((tmp_path / "bundle" / "report.html").as_uri())

    matrix = browser.find_elements("css selector", ".fig img")[0]
    natural = browser.execute_script("return arguments[0].naturalWidth", matrix)
    assert natural == 2300 and matrix.size["width"] <= 1202  # shrunk to the page (1200 + its border)
    assert "click the image for its full size (2300x2200 pixels)" in browser.find_element("tag name", "body").text
    matrix.click()
    assert matrix.size["width"] == natural + 2  # its own size, plus the 1px border on each side
    matrix.click()
    assert matrix.size["width"] <= 1202
    small = browser.find_elements("css selector", ".fig img")[2]  # the reliability diagram fits the page
    assert "zoomable" not in (small.get_attribute("class") or "")
    assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []
