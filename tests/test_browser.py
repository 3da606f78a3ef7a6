"""The demo and the HTML report in a real headless Chromium (Debian's chromium + chromedriver, driven by selenium).

Nothing is installed or downloaded here: the tests skip when /usr/bin/chromium or chromedriver is
missing (``.ci/run`` apt-installs both). Screenshots are kept in ``test-artifacts/browser/``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts" / "browser"
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver") if Path("/usr/bin/chromedriver").exists() else None
EVIL_NAME = "<script>alert(1)</script>.jpg"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1360,1000"]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists() or CHROMEDRIVER is None and not shutil.which("chromedriver"),
                       reason="needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)"),
]
# Any window.alert() the page runs is recorded instead of blocking, so a test can assert there was none.
RECORD_ALERTS = "window.__alerts = []; window.alert = function (m) { window.__alerts.push(String(m)); };"


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")  # selenium-manager must not look anything up
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in CHROMIUM_FLAGS + [f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"]:
        options.add_argument(flag)
    service = Service(str(CHROMEDRIVER or shutil.which("chromedriver")))
    drv = webdriver.Chrome(options=options, service=service)
    drv.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": RECORD_ALERTS})
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    yield drv
    drv.quit()


def _wait(drv, condition, timeout: float = 30.0, what: str = "condition"):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(drv, timeout, poll_frequency=0.1).until(lambda d: condition(d), message=f"waiting for {what}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _no_alerts(drv) -> None:
    from selenium.common.exceptions import NoAlertPresentException

    assert drv.execute_script("return window.__alerts") == []
    with pytest.raises(NoAlertPresentException):
        drv.switch_to.alert.text  # noqa: B018


# ---------------------------------------------------------------------------------------------- demo
@pytest.fixture(scope="module")
def demo_url(selfcontained_llava):
    from x2dfd.demo.app import DemoConfig, build_app, launch_app
    from x2dfd.explain import build_explainer

    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    cfg = DemoConfig(model=str(selfcontained_llava), no_expert=True, face_crop=False, max_new_tokens=8, device="cpu")
    app = build_app(build_explainer(cfg), max_file_mb=5)
    port = _free_port()
    launch_app(app, host="127.0.0.1", port=port, max_file_mb=5, concurrency=1, queue_size=8, block=False, quiet=True)
    # one loaded model, requests queued one at a time, uploads capped by the server itself
    assert app.max_file_size == 5 * 1024 * 1024
    assert app._queue.default_concurrency_limit == 1 and app._queue.max_size == 8
    yield f"http://127.0.0.1:{port}/"
    app.close()


def _upload(drv, path: Path) -> None:
    from selenium.webdriver.common.by import By

    field = _wait(drv, lambda d: d.find_elements(By.CSS_SELECTOR, "#upload input[type=file]"), what="the file input")[0]
    field.send_keys(str(path))


def test_demo_upload_shows_verdict_and_explanation(driver, demo_url, tmp_path):
    from selenium.webdriver.common.by import By

    image = tmp_path / "portrait.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (96, 80, 3), dtype=np.uint8)).save(image)
    driver.get(demo_url)
    _upload(driver, image)
    verdict = _wait(driver, lambda d: d.find_element(By.ID, "verdict").text.strip() or None, what="the verdict")
    words = verdict.split()
    assert words[0] in ("REAL", "FAKE") and words[2] == "p_fake", verdict
    p_fake = float(words[3])
    assert 0.0 <= p_fake <= 1.0 and words[0] == ("FAKE" if p_fake >= 0.5 else "REAL")
    explanation = _wait(driver, lambda d: d.find_element(By.CSS_SELECTOR, "#explanation textarea").get_attribute("value"),
                        what="the explanation")
    assert explanation.startswith("This image is")
    _wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#face img"), what="the face crop")
    driver.save_screenshot(str(ARTIFACTS / "demo-verdict.png"))

    # a broken file: a clear line in the page, no traceback
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not a whole JPEG")
    driver.get(demo_url)
    _upload(driver, broken)
    def final_message(d):  # the message box shows Gradio's "processing | 0.1s" status until the answer lands
        text = d.find_element(By.ID, "message").text.strip()
        return text if text and not text.startswith("processing") else None

    message = _wait(driver, final_message, what="the error message")
    assert message.startswith("No verdict for 'broken.jpg':"), message
    assert "Traceback" not in driver.page_source
    driver.save_screenshot(str(ARTIFACTS / "demo-bad-file.png"))
    _no_alerts(driver)


# ---------------------------------------------------------------------------------------------- report
@pytest.fixture(scope="module")
def report_index(tmp_path_factory):
    from x2dfd.pipeline import Artifacts
    from x2dfd.records import Record
    from x2dfd.report import ReportAssets, render_report

    root = tmp_path_factory.mktemp("browser-report")
    rng = np.random.default_rng(0)
    evil = root / "in" / "fake" / EVIL_NAME  # on POSIX: a folder "<script>alert(1)<" holding "script>.jpg"
    evil.parent.mkdir(parents=True)
    Image.fromarray(rng.integers(0, 255, (80, 80, 3), dtype=np.uint8)).save(evil, format="JPEG")
    records = [Record(path=str(evil), sha256=hashlib.sha256(b"evil").hexdigest(), label="fake", p_fake=0.66,
                      explanation='This image is fake. <img src=x onerror="alert(2)"> <b>not bold</b>',
                      experts={"blend": 0.7}, cues=[{"id": "boundary.seam", "phrase": "<script>alert(3)</script>", "p_yes": 0.9}])]
    for i in range(59):
        folder = "fake" if i % 2 else "real"
        p = float(np.clip(rng.normal(0.7 if i % 2 else 0.3, 0.2), 0.0, 1.0))
        records.append(Record(path=str(root / "in" / folder / f"face_{i:02d}.jpg"), sha256=hashlib.sha256(str(i).encode()).hexdigest(),
                              label="fake" if p >= 0.5 else "real", p_fake=round(p, 4),
                              explanation=f"This image is {'fake' if p >= 0.5 else 'real'}. Item {i}.", experts={"blend": round(p, 3)}))
    records.append(Record.failed(str(root / "in" / "real" / "unreadable.jpg"), "cannot decode 'unreadable.jpg': truncated file"))
    assets = ReportAssets(root / "report")
    for k, r in enumerate(records[:12]):
        face = Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
        assets.save(r, Artifacts(face=face, heatmap=np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64)))
    return render_report(records, root / "report", title="Browser test batch")


def _column(drv, css: str) -> list[str]:
    from selenium.webdriver.common.by import By

    return [e.text for e in drv.find_elements(By.CSS_SELECTOR, f"#rows tr {css}")]


def _select(drv, element_id: str, value: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    Select(drv.find_element(By.ID, element_id)).select_by_value(value)


def test_report_sorts_filters_and_keeps_hostile_names_as_text(driver, report_index):
    from selenium.webdriver.common.by import By

    driver.get(report_index.as_uri())
    _wait(driver, lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1", what="the table")
    assert driver.find_element(By.ID, "status").text == "61 matching records"
    assert driver.find_element(By.ID, "metric-auc").text  # labels from the real/fake folders
    driver.save_screenshot(str(ARTIFACTS / "report-summary.png"))

    # default: p_fake high first, 50 per page, unscored rows last
    values = [float(t) for t in _column(driver, ".pf") if t != "–"]
    assert len(_column(driver, ".pf")) == 50 and values == sorted(values, reverse=True)
    _select(driver, "sort", "p_fake-asc")
    values = [float(t) for t in _column(driver, ".pf") if t != "–"]
    assert values == sorted(values) and values[0] <= 0.3
    driver.find_element(By.CSS_SELECTOR, "button.sorter[data-sort=p_fake]").click()  # header click flips it
    values = [float(t) for t in _column(driver, ".pf") if t != "–"]
    assert values == sorted(values, reverse=True)
    driver.find_element(By.ID, "next").click()
    assert driver.find_element(By.ID, "page-info").text.startswith("records 51–61 of 61")
    assert _column(driver, ".pf")[-1] == "–"

    _select(driver, "filter-verdict", "fake")
    badges = _column(driver, ".badge")
    n_fake = int(driver.find_element(By.ID, "count-fake").text)
    assert badges and set(badges) == {"fake"} and len(badges) == min(50, n_fake)
    assert driver.find_element(By.ID, "status").text == f"{n_fake} matching records (filtered from 61)"
    _select(driver, "filter-verdict", "")
    _select(driver, "filter-error", "error")
    assert _column(driver, ".name") == ["unreadable.jpg"] and "truncated file" in _column(driver, ".error-text")[0]
    _select(driver, "filter-error", "")

    search = driver.find_element(By.ID, "search")
    search.send_keys("alert(1)")
    _wait(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#rows tr")) == 1, what="the search result")
    row = driver.find_element(By.CSS_SELECTOR, "#rows tr")
    assert row.find_element(By.CSS_SELECTOR, ".path").text == str(Path(report_index).parents[1] / "in" / "fake" / EVIL_NAME)
    assert row.find_element(By.CSS_SELECTOR, ".name").text == Path(EVIL_NAME).name
    assert '<img src=x onerror="alert(2)"> <b>not bold</b>' in row.find_element(By.CSS_SELECTOR, ".explanation").text
    row.find_element(By.CSS_SELECTOR, "details.cues summary").click()
    assert "<script>alert(3)</script>" in row.find_element(By.CSS_SELECTOR, "details.cues li").text
    assert not driver.find_elements(By.CSS_SELECTOR, "#rows script, #rows b, #rows img[src=x]")
    imgs = row.find_elements(By.CSS_SELECTOR, "img")
    assert len(imgs) == 3 and all(i.get_attribute("loading") == "lazy" for i in imgs)
    _wait(driver, lambda d: all(d.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", i)
                                for i in imgs), what="the row's pictures")
    driver.save_screenshot(str(ARTIFACTS / "report-search-hostile-name.png"))
    _no_alerts(driver)
