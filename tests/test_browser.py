"""The demo and the HTML report in a real headless Chromium (Debian's chromium + chromedriver, driven by selenium).

Nothing is installed or downloaded here: the tests skip when /usr/bin/chromium or chromedriver is
missing (``.ci/run`` apt-installs both). Screenshots are kept in ``test-artifacts/browser/``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tests.stubs import brightness_expert

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


def _upload(drv, path) -> None:
    from selenium.webdriver.common.by import By

    field = _wait(drv, lambda d: d.find_elements(By.CSS_SELECTOR, "#upload input[type=file]"), what="the file input")[0]
    field.send_keys("\n".join(str(p) for p in (path if isinstance(path, (list, tuple)) else [path])))


def _verdict_text(d):
    """The verdict badges' text once the answer landed (before that Gradio shows its own timer there)."""
    from selenium.webdriver.common.by import By

    found = d.find_elements(By.CSS_SELECTOR, "#verdict #verdict-badges")
    return found[0].text.strip() if found and found[0].text.strip() else None


def test_demo_upload_shows_verdict_and_explanation(driver, demo_url, tmp_path):
    from selenium.webdriver.common.by import By

    image = tmp_path / "portrait.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (96, 80, 3), dtype=np.uint8)).save(image)
    driver.get(demo_url)
    _upload(driver, image)
    verdict = _wait(driver, _verdict_text, what="the verdict")
    words = verdict.split()
    assert words[0] in ("REAL", "UNCERTAIN", "FAKE") and words[1] == "p_fake", verdict
    p_fake = float(words[2])
    assert 0.0 <= p_fake <= 1.0
    assert words[0] == ("FAKE" if p_fake >= 0.65 else "REAL" if p_fake < 0.35 else "UNCERTAIN")
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
        return text if "'broken.jpg'" in text else None

    message = _wait(driver, final_message, what="the error message")
    assert message.startswith("No verdict for 'broken.jpg':") or "'broken.jpg'" in message, message
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
    badges = _column(driver, ".badge:not(.uncertain):not(.disagree)")
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


# ---------------------------------------------------------------------------------------------- issue 12
@pytest.fixture(scope="module")
def blend_demo(tmp_path_factory):
    """The demo expert-only with the shipped blending expert (offline), and project-made inputs."""
    from tests.conftest import shared_path
    from x2dfd.demo.app import DemoConfig, build_app, launch_app
    from x2dfd.demo.examples import make_examples
    from x2dfd.explain import build_explainer

    photos = shared_path("data", "faces-real-photos", "real")
    root = tmp_path_factory.mktemp("blend-demo")
    files = {f.name: f for f in make_examples(root / "ex", source_dir=photos)}
    a, b = Image.open(files["real-face.jpg"]), Image.open(files["face-swap.jpg"])
    two = Image.new("RGB", (a.width + b.width, max(a.height, b.height)), "white")
    two.paste(a, (0, 0))
    two.paste(b, (a.width, 0))
    two.save(root / "two-people.jpg")
    files["two-people.jpg"] = root / "two-people.jpg"
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    cfg = DemoConfig(mllm="none", device="cpu")
    app = build_app(build_explainer(cfg), max_file_mb=20)
    port = _free_port()
    launch_app(app, host="127.0.0.1", port=port, max_file_mb=20, block=False, quiet=True)
    yield f"http://127.0.0.1:{port}/", files
    app.close()


def _rows(drv, css: str):
    from selenium.webdriver.common.by import By

    return drv.find_elements(By.CSS_SELECTOR, css)


def _face_rows(drv, where: str = "#faces") -> list[list[str]]:
    """The cell texts of each data row Gradio's (virtualised) table has rendered (its cells are role=gridcell)."""
    cols = len(_rows(drv, f"{where} th[role=columnheader]"))
    cells = [c.text for c in _rows(drv, f"{where} [role=gridcell]")]
    return [cells[i:i + cols] for i in range(0, len(cells), cols)] if cols else []


def test_demo_every_face_evidence_downloads_and_api(driver, blend_demo):
    from selenium.webdriver.common.by import By

    url, files = blend_demo
    driver.get(url)
    _upload(driver, files["two-people.jpg"])
    verdict = _wait(driver, _verdict_text, timeout=90, what="the verdict")
    assert verdict.split()[0] == "FAKE", verdict  # the largest face is the swap
    badge = driver.find_element(By.CSS_SELECTOR, "#verdict .x2-badge")
    assert badge.get_attribute("data-verdict") == "fake"
    assert "201, 48, 44" in badge.value_of_css_property("background-color")  # red at a glance
    # every face: a row each, and both boxes drawn on the input
    driver.execute_script("document.getElementById('faces').scrollIntoView()")  # the table renders rows in view
    _wait(driver, lambda d: len(_face_rows(d)) == 2, what="two face rows")
    cells = _face_rows(driver)
    assert [c[1] for c in cells] == ["0", "1"] and {c[2] for c in cells} == {"fake", "real"}, cells
    assert _rows(driver, "#annotated img")
    # measured evidence: the expert, and where its heatmap concentrates, by facial region
    items = [e.text for e in _rows(driver, "#evidence li")]
    assert any(t.startswith("Expert blend strongly fake") for t in items), items
    assert any("blend heatmap peaks at" in t and (" on the " in t or "around the mouth" in t) for t in items), items
    # downloads: the record as JSON and a one-file report
    listing = _wait(driver, lambda d: d.find_element(By.ID, "downloads").text if _rows(d, "#downloads a[href]") else None,
                    what="the downloads")
    listing = listing.replace("\n.", ".")  # Gradio shows the extension on a line of its own
    assert "two-people.x2dfd.json" in listing and "two-people.report.html" in listing, listing
    hrefs = [a.get_attribute("href") for a in _rows(driver, "#downloads a[href]")]
    assert len(hrefs) == 2 and all(h.startswith(url) for h in hrefs)  # served by the demo itself
    driver.execute_script("window.scrollTo(0, 0)")
    driver.save_screenshot(str(ARTIFACTS / "demo-every-face.png"))
    driver.execute_script("document.getElementById('evidence').scrollIntoView()")
    driver.save_screenshot(str(ARTIFACTS / "demo-evidence-heatmap.png"))
    # API usage, with this server's address
    driver.find_element(By.CSS_SELECTOR, "#api-usage button").click()
    api = _wait(driver, lambda d: d.find_element(By.ID, "api-usage").text if "api_name" in d.find_element(By.ID, "api-usage").text else None,
                what="the API usage")
    assert 'api_name="/explain"' in api and url.rstrip("/") in api
    _no_alerts(driver)


def test_demo_video_progress_timeline_and_segments(driver, blend_demo):
    from selenium.webdriver.common.by import By

    url, files = blend_demo
    driver.get(url)
    _upload(driver, files["real-then-swapped.mp4"])
    seen = set()

    def done(d):
        text = d.find_element(By.TAG_NAME, "body").text
        if "faces found" in text or "faces judged" in text:
            seen.add("progress")
        return _verdict_text(d)

    verdict = _wait(driver, done, timeout=120, what="the video verdict")
    assert verdict.split()[0] in ("REAL", "UNCERTAIN", "FAKE")
    assert seen == {"progress"}  # Gradio showed our frames-done / total bar while the video ran
    _wait(driver, lambda d: _rows(d, "#timeline img, #timeline svg, #timeline canvas"), what="the timeline plot")
    driver.execute_script("document.getElementById('segments').scrollIntoView()")
    rows = _wait(driver, lambda d: _face_rows(d, "#segments") or None, what="the segments table")
    start = float(rows[0][0])
    assert 1.0 <= start <= 2.0  # the clip turns into the swap at 1.5 s
    driver.execute_script("document.getElementById('timeline').scrollIntoView()")
    driver.save_screenshot(str(ARTIFACTS / "demo-video-timeline.png"))
    _no_alerts(driver)


def test_demo_no_face_message_and_several_files(driver, blend_demo):
    from selenium.webdriver.common.by import By

    url, files = blend_demo
    driver.get(url)
    _upload(driver, files["no-face.png"])
    message = _wait(driver, lambda d: d.find_element(By.ID, "message").text if "no-face.png" in d.find_element(By.ID, "message").text else None,
                    timeout=60, what="the no-face message")
    assert "No face found in 'no-face.png'. Upload a photo in which a face is clearly visible" in message
    assert "--" not in message  # no command-line flag for a web user
    driver.save_screenshot(str(ARTIFACTS / "demo-no-face.png"))

    driver.get(url)
    _upload(driver, [files["real-face.jpg"], files["face-swap.jpg"]])
    _wait(driver, lambda d: len(_rows(d, "#gallery img")) >= 2, timeout=120, what="the gallery of both uploads")
    driver.execute_script("document.getElementById('faces').scrollIntoView()")
    _wait(driver, lambda d: len(_face_rows(d)) == 2, what="two face rows")
    names = [r[0] for r in _face_rows(driver)]
    assert names == ["real-face.jpg", "face-swap.jpg"], names
    driver.execute_script("document.getElementById('gallery').scrollIntoView()")
    driver.save_screenshot(str(ARTIFACTS / "demo-several-files.png"))
    _no_alerts(driver)


@pytest.fixture(scope="module")
def analyst_report(tmp_path_factory):
    """A report with an uncertain record, a disagreement, a misclassified record, two faces of one photo and a video
    with expert curves and a segment, built through the real annotate() rules."""
    from x2dfd.evidence import annotate
    from x2dfd.pipeline import Artifacts
    from x2dfd.records import Record
    from x2dfd.report import ReportAssets, render_report

    root = tmp_path_factory.mktemp("analyst-report")
    rng = np.random.default_rng(1)
    photo = root / "in" / "real" / "group.jpg"
    photo.parent.mkdir(parents=True)
    Image.fromarray(rng.integers(0, 255, (200, 300, 3), dtype=np.uint8)).save(photo)
    (root / "in" / "fake").mkdir()
    sha = hashlib.sha256(b"group").hexdigest()
    records = [
        Record(path=str(photo), sha256=sha, face_index=0, label="fake", p_fake=0.91, mode="mllm",
               experts={"blend": 0.08}, media={"width": 300, "height": 200}, face={"box": [20, 40, 120, 160]},
               explanation="This image is fake. The skin looks too smooth."),
        Record(path=str(photo), sha256=sha, face_index=1, label="real", p_fake=0.12, mode="mllm",
               experts={"blend": 0.2}, media={"width": 300, "height": 200}, face={"box": [180, 50, 270, 150]},
               explanation="This image is real."),
        Record(path=str(root / "in" / "fake" / "borderline.jpg"), sha256=hashlib.sha256(b"b").hexdigest(), label="real",
               p_fake=0.45, mode="expert-only", experts={"blend": 0.45}),
    ]
    times = [i * 0.25 for i in range(12)]
    ps = [0.2, 0.25, 0.2, 0.3, 0.22, 0.2, 0.9, 0.95, 0.92, 0.97, 0.9, 0.93]
    frames = [{"index": i * 2, "time_s": t, "p_fake": p, "experts": {"blend": min(1.0, p + 0.03)}, "label": "fake"}
              for i, (t, p) in enumerate(zip(times, ps))]
    frames[9]["explained"] = True
    records.append(Record(path=str(root / "in" / "fake" / "clip.mp4"), sha256=hashlib.sha256(b"v").hexdigest(),
                          kind="video", label="fake", p_fake=0.53, mode="mllm", experts={"blend": 0.55},
                          frames=frames, media={"duration_s": 3.0, "width": 320, "height": 240}, aggregate="mean"))
    for r in records:
        annotate(r, None, None)
    assets = ReportAssets(root / "report")
    heat = np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64)
    for r in records:
        assets.save(r, Artifacts(face=Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)), heatmap=heat,
                                 frame_image=Image.fromarray(rng.integers(0, 255, (240, 320, 3), dtype=np.uint8))
                                 if r.kind == "video" else None))
    run = {"model": "./llava-1.5-7b-hf", "adapter": "runs/x2dfd-lora", "preset": "x2dfd", "threshold": 0.5,
           "band": "0.35,0.65", "experts": [{"name": "blend", "sha256": "ab" * 32, "weights": "blend.safetensors"}]}
    index = render_report(records, root / "report", title="Analyst view", run=run)
    single = render_report(records, root / "single", title="One file", run=run, inline=True, heatmaps=False)
    alone = root / "mailed" / "report.html"
    alone.parent.mkdir()
    alone.write_bytes(single.read_bytes())
    return index, alone


def test_report_analyst_filters_in_url_boxes_timeline_and_header(driver, analyst_report):
    from selenium.webdriver.common.by import By

    index, _ = analyst_report
    ready = lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1"  # noqa: E731
    driver.get(index.as_uri())
    _wait(driver, ready, what="the table")
    header = driver.find_element(By.ID, "run-info").text
    assert "./llava-1.5-7b-hf" in header and "runs/x2dfd-lora" in header and "x2dfd" in header
    assert "abababababab" in driver.find_element(By.ID, "run-experts").text and "0.5" in header and "0.35,0.65" in header
    assert driver.find_element(By.ID, "count-uncertain").text == "2"  # borderline 0.45 and the video 0.53
    assert driver.find_element(By.ID, "count-disagreement").text == "1"
    # the two faces of one photo: both boxes on each of their thumbnails, coloured by p_fake
    boxed = _wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, ".boxed[data-boxes='2']") if
                  len(d.find_elements(By.CSS_SELECTOR, ".boxed[data-boxes='2']")) == 2 else None, what="face boxes")
    colours = {b.get_attribute("title"): b.value_of_css_property("border-top-color")
               for b in boxed[0].find_elements(By.CSS_SELECTOR, ".fbox")}
    assert len(colours) == 2 and any("p_fake 0.910" in t for t in colours)
    red = next(c for t, c in colours.items() if "0.910" in t)
    blue = next(c for t, c in colours.items() if "0.120" in t)
    assert red != blue
    # evidence beside the model's own text; the disagreement badge
    row0 = driver.find_element(By.CSS_SELECTOR, "#row-0")
    assert "Measured evidence (beside the model's text)" in row0.text and "disagree" in row0.text
    assert row0.find_element(By.CSS_SELECTOR, ".badge.disagree").get_attribute("title") == "mllm 0.91 vs blend 0.08"
    # the video: verdict and expert curves on one timeline, the segment shaded, the explained frame marked
    video = driver.find_element(By.CSS_SELECTOR, "#row-3")
    assert len(video.find_elements(By.CSS_SELECTOR, "svg.spark polyline.expert")) == 1
    assert len(video.find_elements(By.CSS_SELECTOR, "svg.spark rect.seg")) == 1
    assert video.find_elements(By.CSS_SELECTOR, "svg.spark line.explained")
    assert "1.5–3.0 s (peak 0.97)" in video.text
    driver.save_screenshot(str(ARTIFACTS / "report-analyst.png"))
    driver.execute_script("document.getElementById('table-section').scrollIntoView()")
    driver.save_screenshot(str(ARTIFACTS / "report-analyst-rows.png"))

    # filters, kept in the URL: a reload (or a link) shows the same view
    _select(driver, "filter-flag", "uncertain")
    assert sorted(_column(driver, ".name")) == ["borderline.jpg", "clip.mp4"]
    assert "flag=uncertain" in driver.current_url
    driver.get(driver.current_url)
    driver.refresh()
    _wait(driver, ready, what="the table again")
    assert driver.find_element(By.ID, "filter-flag").get_attribute("value") == "uncertain"
    assert sorted(_column(driver, ".name")) == ["borderline.jpg", "clip.mp4"]
    _select(driver, "filter-flag", "disagreement")
    assert _column(driver, ".name") == ["group.jpg #face0"]
    _select(driver, "filter-flag", "misclassified")  # group.jpg is under real/ (face 0 said fake), borderline under fake/
    assert sorted(_column(driver, ".name")) == ["borderline.jpg", "group.jpg #face0"]
    assert "flag=misclassified" in driver.current_url
    driver.execute_script("document.getElementById('table-section').scrollIntoView()")
    driver.save_screenshot(str(ARTIFACTS / "report-filter-misclassified.png"))
    # a link to one record (what evaluate.html's worst errors use): its page, scrolled to, marked
    driver.get(index.as_uri() + "#row=2")
    _wait(driver, ready, what="the linked row")
    assert "target" in driver.find_element(By.ID, "row-2").get_attribute("class")
    _no_alerts(driver)


def test_one_file_report_opens_alone(driver, analyst_report):
    from selenium.webdriver.common.by import By

    _, alone = analyst_report
    assert sorted(p.name for p in alone.parent.iterdir()) == ["report.html"]  # nothing beside it
    driver.get(alone.as_uri())
    _wait(driver, lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1", what="the table")
    assert driver.find_element(By.ID, "status").text == "4 matching records"
    imgs = driver.find_elements(By.CSS_SELECTOR, "#rows img")
    assert imgs and all(i.get_attribute("src").startswith("data:image/jpeg;base64,") for i in imgs)
    _wait(driver, lambda d: all(d.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", i)
                                for i in imgs), what="the inlined pictures")
    driver.execute_script("document.getElementById('table-section').scrollIntoView()")
    driver.save_screenshot(str(ARTIFACTS / "report-one-file.png"))
    _no_alerts(driver)


def test_evaluate_page_links_worst_errors_to_their_report_rows(driver, tmp_path):
    """evaluate.html (expert-only, a stub expert that gets two items wrong): each worst-error link opens the item
    report on that row, marked and in view."""
    from selenium.webdriver.common.by import By

    from x2dfd import experts
    from x2dfd.cli import main as cli_main

    Mean = brightness_expert("mean", "mean")

    rng = np.random.default_rng(0)
    for label, level in (("real", 70), ("fake", 170)):
        for k in range(5):
            (tmp_path / "data" / label).mkdir(parents=True, exist_ok=True)
            value = level + (100 if label == "real" and k == 0 else -100 if label == "fake" and k == 0 else 0)
            Image.fromarray(np.clip(rng.normal(value, 5, (24, 24, 3)), 0, 255).astype(np.uint8)).save(
                tmp_path / "data" / label / f"{label}{k}.png")
    experts.register_expert("mean", Mean, overwrite=True)
    try:
        assert cli_main(["evaluate", str(tmp_path / "data"), "--mllm", "none", "--expert", "mean", "--no-face-crop",
                         "--bootstrap", "20", "--out", str(tmp_path / "eval"), "--quiet"]) == 0
    finally:
        experts.unregister_expert("mean")
    driver.get((tmp_path / "eval" / "evaluate.html").as_uri())
    links = driver.find_elements(By.CSS_SELECTOR, "#worst a")
    assert links and links[0].text.endswith("real0.png")  # the real item scored most fake comes first
    driver.save_screenshot(str(ARTIFACTS / "evaluate-worst-errors.png"))
    links[0].click()
    _wait(driver, lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1", what="the report")
    marked = _wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "tr.target") or None,
                   what="the marked row")
    assert "real0.png" in marked[0].text
    driver.save_screenshot(str(ARTIFACTS / "evaluate-worst-error-row.png"))
    _no_alerts(driver)
