"""The web page in a real browser: Debian's chromium, driven headless by Selenium through Debian's
chromium-driver (no browser download). Uploads a real CIFAR-10 image, waits for the predicted
class and the Grad-CAM heatmap, and saves a screenshot to $IMGCLF_ARTIFACTS (default: the test's
tmp folder)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import httpx
import pytest

from deploy_helpers import CIFAR_JPEG, ServerThread

CHROMIUM = os.environ.get("IMGCLF_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("IMGCLF_CHROMEDRIVER", "/usr/bin/chromedriver")


@pytest.fixture(scope="module")
def server():
    from imgclf.deploy.serve import create_app
    from imgclf.runtime.zoo import pretrained_path

    with ServerThread(create_app(pretrained_path("cifar10", prefer=("keras",)))) as s:
        yield s


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    assert Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists(), \
        "apt-get install chromium chromium-driver (see .ci/run)"
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run", "--window-size=1100,800"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    try:
        yield driver
    finally:
        driver.quit()


def test_upload_shows_prediction_and_heatmap(server, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    image = sorted((CIFAR_JPEG / "ship").glob("*.jpg"))[0]
    upload = tmp_path / "ship.jpg"  # a file name we know
    shutil.copyfile(image, upload)
    expected = httpx.post(f"{server.url}/predict", files=[("files", (upload.name, upload.read_bytes(), "image/jpeg"))],
                          timeout=60).json()["predictions"][0]["top"]

    browser.get(server.url + "/")
    wait = WebDriverWait(browser, 60)
    wait.until(lambda d: "classes" in d.find_element(By.ID, "model-line").text)
    assert "Grad-CAM" in browser.find_element(By.ID, "heatmap-note").text
    browser.find_element(By.ID, "file-input").send_keys(str(upload))
    predicted = wait.until(EC.visibility_of_element_located((By.CSS_SELECTOR, ".card .predicted")))
    heat = wait.until(EC.visibility_of_element_located((By.CSS_SELECTOR, ".card img.heatmap")))
    wait.until(lambda d: d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", heat))

    assert predicted.text == expected[0]["class"]
    bars = browser.find_elements(By.CSS_SELECTOR, ".card .bar")
    assert [b.find_element(By.CLASS_NAME, "name").text for b in bars] == [t["class"] for t in expected]
    assert bars[0].find_element(By.CLASS_NAME, "pct").text == f"{100 * expected[0]['probability']:.1f}%"
    assert browser.execute_script("return arguments[0].naturalWidth", heat) == 128
    assert "Grad-CAM" in heat.get_attribute("alt")

    artifacts = Path(os.environ.get("IMGCLF_ARTIFACTS", tmp_path))
    artifacts.mkdir(parents=True, exist_ok=True)
    shot = artifacts / "web_page.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    print(f"screenshot: {shot}")


def test_docs_render_offline(server, browser):
    """Swagger UI at /docs renders from the locally served assets (the browser has no network)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(server.url + "/docs")
    WebDriverWait(browser, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, ".opblock-summary"))
    paths = [e.text for e in browser.find_elements(By.CSS_SELECTOR, ".opblock-summary-path")]
    assert {"/predict", "/model", "/health"} <= set(paths)
