"""The HTML batch report and CSV: untrusted text stays text, CSV columns, 10,000 items, missing pictures, metrics."""

from __future__ import annotations

import csv
import hashlib
import json
import re
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from x2dfd.metrics import average_precision, eer, roc_auc
from x2dfd.pipeline import Artifacts
from x2dfd.records import Record
from x2dfd.report import (ReportAssets, asset_key, csv_columns, load_records, main, overlay_heatmap, render_report,
                          true_labels)

EVIL_NAME = "<script>alert(1)</script>.jpg"


def _sha(i: int | str) -> str:
    return hashlib.sha256(str(i).encode()).hexdigest()


def _data(out: Path) -> dict:
    text = (out / "records.js").read_text(encoding="utf-8")
    prefix = "window.X2DFD_REPORT = "
    assert text.startswith(prefix) and text.rstrip().endswith(";")
    return json.loads(text[len(prefix):].rstrip().rstrip(";"))


def _records(n: int, seed: int = 0) -> list[Record]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        folder = "fake" if i % 2 else "real"
        p = float(np.clip(rng.normal(0.7 if folder == "fake" else 0.3, 0.2), 0, 1))
        out.append(Record(path=f"batch/{folder}/img_{i:05d}.jpg", sha256=_sha(i), label="fake" if p >= 0.5 else "real",
                          p_fake=round(p, 6), explanation=f"This image is {'fake' if p >= 0.5 else 'real'}. Item {i}.",
                          experts={"blend": round(float(rng.random()), 6)},
                          cues=[{"id": "boundary", "phrase": "a blurred blending boundary", "p_yes": 0.8}]))
    return out


def test_untrusted_text_renders_escaped(tmp_path):
    evil = Record(path=f"in/{EVIL_NAME}", sha256=_sha("evil"), label="fake", p_fake=0.9,
                  explanation='This image is fake. <img src=x onerror="alert(2)"> & </script><!-- ]]>',
                  experts={"blend": 0.7}, cues=[{"id": "c<1>", "phrase": "</script><script>alert(3)</script>", "p_yes": 0.6}])
    broken = Record.failed(f"in/{EVIL_NAME}.png", f"'{EVIL_NAME}': cannot decode <b>bold</b>")
    out = tmp_path / "rep"
    index = render_report([evil, broken], out, title="Batch <i>7</i>")
    html = index.read_text(encoding="utf-8")
    # only the report's own two script elements; no record text became markup
    assert html.count("<script") == 2
    assert "<img src=x" not in html and "<b>bold" not in html and "<i>7" not in html
    assert "Batch &lt;i&gt;7&lt;/i&gt;" in html
    assert "&lt;b&gt;bold&lt;/b&gt;" in html  # the error summary (autoescaped)
    js = (out / "records.js").read_text(encoding="utf-8")
    assert "<" not in js and ">" not in js and "&" not in js
    rows = _data(out)["rows"]
    by_path = {r["path"]: r for r in rows}
    assert by_path[f"in/{EVIL_NAME}"]["explanation"] == evil.explanation  # escaping is lossless
    assert by_path[f"in/{EVIL_NAME}"]["cues"] == [["c<1>", "</script><script>alert(3)</script>", 0.6]]
    assert by_path[f"in/{EVIL_NAME}.png"]["error"].startswith(f"'{EVIL_NAME}'")
    # the table script only writes record values through textContent
    script = (Path(__import__("x2dfd").__file__).parent / "templates" / "report.js").read_text()
    assert "innerHTML" not in script and "insertAdjacentHTML" not in script and "document.write" not in script


def test_csv_columns_values_and_formula_guard(tmp_path):
    recs = _records(4)
    recs[0].explanation = "=HYPERLINK(\"http://x\")"
    recs[1] = Record.failed("batch/real/broken.jpg", "cannot decode 'broken.jpg'")
    recs[2].kind = "video"
    recs[2].frames = [{"index": 0, "p_fake": 0.2}, {"index": 5, "p_fake": None}, {"index": 9, "p_fake": 0.9, "explained": True}]
    out = tmp_path / "rep"
    render_report(recs, out)
    with (out / "records.csv").open(newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == csv_columns(["blend"])
    assert rows[0][:9] == ["path", "name", "face_index", "kind", "label", "p_fake", "label_true", "error", "explanation"]
    table = [dict(zip(rows[0], r)) for r in rows[1:]]
    assert len(table) == 4
    assert table[0]["explanation"].startswith("'=HYPERLINK")
    assert table[0]["label_true"] == "real" and table[0]["p_fake"] == str(recs[0].p_fake)
    assert table[0]["expert_blend"] == str(recs[0].experts["blend"])
    assert json.loads(table[0]["cues"])[0]["id"] == "boundary"
    assert table[1]["label"] == "undetermined" and table[1]["p_fake"] == "" and "cannot decode" in table[1]["error"]
    assert table[2]["n_frames"] == "3" and table[2]["frames_p_fake"] == "0.2  0.9"


def test_ten_thousand_items_render_with_pictures_as_files(tmp_path):
    recs = _records(10_000)
    out = tmp_path / "rep"
    assets = ReportAssets(out)
    face = Image.fromarray(np.full((64, 64, 3), 128, np.uint8))
    for r in recs[:25]:
        assets.save(r, Artifacts(face=face, heatmap=np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64)))
    t0 = time.perf_counter()
    index = render_report(recs, out)
    elapsed = time.perf_counter() - t0
    print(f"10,000 records rendered in {elapsed:.1f} s")  # reported, not asserted: speed belongs in bench/
    html = index.read_text(encoding="utf-8")
    assert index.stat().st_size < 100_000  # the page does not grow with the batch: rows live in records.js
    assert not re.search(r"data:image/[a-z]+;base64,[A-Za-z0-9+/]{16}", html)  # no picture inlined into the page
    data = _data(out)
    assert len(data["rows"]) == 10_000
    with_pictures = [r for r in data["rows"] if r["thumb"]]
    assert len(with_pictures) == 25
    for r in with_pictures:
        for kind in ("thumb", "face", "heat"):
            assert re.fullmatch(r"assets/[0-9a-f]{16}\.(thumb|face|heat)\.jpg", r[kind])
            assert (out / r[kind]).is_file() and (out / r[kind]).stat().st_size < 20_000
    assert 'loading = "lazy"' in (Path(__import__("x2dfd").__file__).parent / "templates" / "report.js").read_text()
    assert sum(1 for _ in (out / "records.csv").open(encoding="utf-8")) == 10_001


def test_assets_are_named_from_the_record_and_overlaid(tmp_path):
    rec = Record(path="x/a.jpg", sha256=_sha("a"), face_index=2, p_fake=0.4, label="real")
    assert asset_key(rec) == _sha("a")[:16] + "-face2"
    video = Record(path="x/v.mp4", sha256=_sha("v"), kind="video",
                   frames=[{"index": 0, "p_fake": 0.1}, {"index": 12, "p_fake": 0.8, "explained": True}])
    assert asset_key(video) == _sha("v")[:16] + "-frame12"
    hostile = Record(path="x/b.jpg", sha256="../../../../etc/passwd")
    assert re.fullmatch(r"[0-9a-f]{16}", asset_key(hostile))  # a JSONL's sha256 names files only when it is hex

    face = Image.new("RGB", (300, 200), (0, 0, 0))
    heat = np.zeros((200, 300), np.float32)
    heat[:, 150:] = 1.0
    over = overlay_heatmap(face, heat)
    assert over.size == (300, 200)
    left, right = np.asarray(over)[100, 10], np.asarray(over)[100, 290]
    assert right[0] > 40 and right[2] < 10 and left[2] > 40 and left[0] < 10  # jet: hot = red, cold = blue
    assert overlay_heatmap(face, np.zeros((10, 15), np.float32)).size == (300, 200)  # heatmap resized to the face

    assets = ReportAssets(tmp_path / "rep")
    assets.save(rec, Artifacts(face=face, heatmap=heat))
    paths = assets.paths(rec)
    assert paths["face"].is_file() and paths["heat"].is_file() and paths["thumb"].is_file()
    assert max(Image.open(paths["face"]).size) == 192
    assets.save(video, Artifacts(face=face, heatmap=None, frame_index=12))  # no video on disk: the face stands in
    assert assets.paths(video)["thumb"].is_file() and not assets.paths(video)["heat"].exists()


def test_missing_pictures_are_regenerated_or_placeholders(tmp_path):
    src = tmp_path / "in" / "face.png"
    src.parent.mkdir()
    arr = np.zeros((100, 200, 3), np.uint8)
    arr[20:80, 120:180] = (250, 10, 10)  # the "face" region
    Image.fromarray(arr).save(src)
    ok = Record(path=str(src), sha256=_sha("face"), p_fake=0.8, label="fake", face={"crop_box": [120, 20, 180, 80]})
    src2 = tmp_path / "in" / "face2.png"
    Image.fromarray(arr).save(src2)
    boxed = Record(path=str(src2), sha256=_sha("face2"), p_fake=0.7, label="fake", face={"box": [130, 30, 170, 70]})
    gone = Record(path=str(tmp_path / "moved" / "old.jpg"), sha256=_sha("old"), p_fake=0.1, label="real",
                  face={"crop_box": [0, 0, 10, 10]})
    jsonl = tmp_path / "results.jsonl"
    lines = [ok.to_json(), boxed.to_json(), gone.to_json(),
             json.dumps({"path": "odd.jpg", "p_fake": "not a number", "label": "real", "frames": 3, "kind": "video"}),
             '{"path": "cut.jpg", "p_fa']  # an interrupted writer's last line
    jsonl.write_text("\n".join(lines) + "\n")
    out = tmp_path / "rep"
    render_report(jsonl, out)
    rows = {r["path"]: r for r in _data(out)["rows"]}
    regenerated = rows[str(src)]
    assert regenerated["thumb"] and regenerated["face"] and regenerated["heat"] is None
    crop = np.asarray(Image.open(out / regenerated["face"]).convert("RGB"), np.int32)
    assert crop.shape[:2] == (60, 60) and crop[..., 0].mean() > 200 and crop[..., 1].mean() < 40
    # no crop_box: explain's default square crop (1.3 x the detector box) around the box centre
    assert Image.open(out / rows[str(src2)]["face"]).size == (52, 52)
    assert rows[str(gone.path)]["thumb"] is None and rows[str(gone.path)]["face"] is None
    assert rows["odd.jpg"]["error"]  # shown as an error row instead of stopping the report
    assert "line 5" in rows["results.jsonl:5"]["error"]


def test_metrics_and_roc_when_labels_are_known(tmp_path):
    recs = _records(40)
    y = [1 if "/fake/" in r.path else 0 for r in recs]
    p = [r.p_fake for r in recs]
    html = render_report(recs, tmp_path / "a").read_text()
    assert re.search(r'id="metric-auc">([0-9.]+)<', html).group(1) == f"{roc_auc(y, p):.4f}"
    assert re.search(r'id="metric-ap">([0-9.]+)<', html).group(1) == f"{average_precision(y, p):.4f}"
    assert re.search(r'id="metric-eer">([0-9.]+)<', html).group(1) == f"{eer(y, p):.4f}"
    assert '<polyline class="curve"' in html
    assert _data(tmp_path / "a")["rows"][1]["label_true"] == "fake"

    # an explicit mapping wins over folder names; labels can be turned off
    flipped = {r.path: 1 - yi for r, yi in zip(recs, y)}
    html = render_report(recs, tmp_path / "b", labels=flipped).read_text()
    assert re.search(r'id="metric-auc">([0-9.]+)<', html).group(1) == f"{roc_auc([1 - v for v in y], p):.4f}"
    html = render_report(recs, tmp_path / "c", folder_labels=False).read_text()
    assert 'id="metric-auc"' not in html and "No true labels known" in html
    one_class = [r for r in recs if "/fake/" in r.path]
    html = render_report(one_class, tmp_path / "d").read_text()
    assert 'id="metric-auc"' not in html and "need both real and fake" in html

    raws = [{"label_true": "fake"}, {"label_true": 0}, {}]
    plain = [Record(path="a.jpg"), Record(path="b.jpg"), Record(path="0_real/c.jpg")]
    assert true_labels(plain, raws) == [1, 0, 0]


def test_report_command_rerenders_a_jsonl(tmp_path, capsys):
    recs = _records(6)
    first = recs[0]
    retried = Record(**{**first.to_dict(), "p_fake": 0.99, "label": "fake"})
    jsonl = tmp_path / "results.jsonl"
    jsonl.write_text("".join(r.to_json() + "\n" for r in [*recs, retried]))
    assert [r.p_fake for r in load_records(jsonl)[0]][-1] == 0.99  # the last line of a retried input wins
    labels = tmp_path / "truth.csv"
    labels.write_text("path,label\n" + "".join(f"{r.path},{'real' if i < 3 else 'fake'}\n" for i, r in enumerate(recs)))
    assert main([str(jsonl), "--title", "Night batch", "--labels", str(labels)]) == 0
    out = tmp_path / "results-report"
    assert (out / "index.html").is_file() and (out / "records.csv").is_file()
    assert json.loads((out / "report.config.json").read_text())["config"]["labels"] == str(labels)
    assert "<title>Night batch</title>" in (out / "index.html").read_text()
    assert len(_data(out)["rows"]) == 6
    with pytest.raises(SystemExit) as exc:
        main([str(tmp_path / "missing.jsonl")])
    assert exc.value.code == 2 and "does not exist" in capsys.readouterr().err


def test_explain_writes_the_report_beside_its_jsonl(selfcontained_llava, tmp_path):
    from x2dfd.explain import main as explain_main

    folder = tmp_path / "in" / "real"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (48, 40, 3), dtype=np.uint8)).save(folder / f"crop_{i}.png")
    (folder / "broken.jpg").write_bytes(b"not an image")
    out, report = tmp_path / "res.jsonl", tmp_path / "report"
    # exit status 3: broken.jpg got no verdict (the others did)
    assert explain_main([str(tmp_path / "in"), "--model", str(selfcontained_llava), "--out", str(out), "--report",
                         str(report), "--no-expert", "--no-face-crop", "--max-new-tokens", "3", "--quiet"]) == 3
    rows = {Path(r["path"]).name: r for r in _data(report)["rows"]}
    assert set(rows) == {"crop_0.png", "crop_1.png", "broken.jpg"}
    for name in ("crop_0.png", "crop_1.png"):
        assert (report / rows[name]["thumb"]).is_file() and (report / rows[name]["face"]).is_file()
        assert rows[name]["heat"] is None and rows[name]["label_true"] == "real"
    assert rows["broken.jpg"]["error"] and rows["broken.jpg"]["face"] is None
    assert sum(1 for _ in (report / "records.csv").open(encoding="utf-8")) == 4


def test_header_from_the_run_config_and_older_records_completed(tmp_path):
    """The page header names model, adapter, preset, experts with their weights' hashes, threshold and band from
    the run config beside the JSONL; records of an older x2dfd get verdict / disagreement / evidence at render time."""
    jsonl = tmp_path / "results.jsonl"
    old = {"path": "in/a.jpg", "sha256": _sha("a"), "kind": "image", "label": "fake", "p_fake": 0.92, "mode": "mllm",
           "experts": {"blend": 0.05}, "error": None, "explanation": "This image is fake."}
    jsonl.write_text(json.dumps(old) + "\n")
    conf = {"command": "explain", "config": {"model": "./llava", "adapter": "runs/lora", "preset": "x2dfd",
                                             "threshold": 0.5, "uncertain_band": "0.3,0.7", "aggregate": "mean"},
            "experts": [{"name": "blend", "sha256": "cd" * 32, "weights": "/w/blend.safetensors"}]}
    (tmp_path / "results.config.json").write_text(json.dumps(conf))
    index = render_report(jsonl, tmp_path / "rep")
    html = index.read_text(encoding="utf-8")
    for text in ("./llava", "runs/lora", "x2dfd", "cdcdcdcdcdcd", "fake at p_fake ≥ 0.5", "0.3,0.7"):
        assert text in html, text
    [row] = _data(tmp_path / "rep")["rows"]
    assert row["verdict"] == "fake" and row["disagreement"] == [["mllm", "blend", 0.92, 0.05]]
    assert [k for k, _ in row["evidence"]] == ["verdict", "expert", "disagreement"]
    assert 'id="count-disagreement">1<' in html
    rows = list(csv.DictReader((tmp_path / "rep" / "records.csv").open(encoding="utf-8")))
    assert rows[0]["verdict"] == "fake" and rows[0]["disagreement"] == "mllm 0.92 vs blend 0.05"
