"""Reliability: a 22-kind bad-input corpus, built here from code, through `explain`, `expert score`, `evaluate`,
`report` and the demo's handler. Every command: no traceback, one record per input, exit status 0 or 3 (never a
crash), nothing outside its --out changed, nothing untrusted reaching the terminal raw.

Expert-only (``--mllm none``, the shipped blend expert): no MLLM weights, a few seconds per command. The
corpus is built once per module; faces come from ../shared when it is there (else drawn pictures, which
then take the no-face path: the assertions hold either way).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from x2dfd.cli import main as cli_main

SHARED_FACES = Path(__file__).resolve().parents[2] / "shared" / "data" / "stylegan2-vs-real" / "images"

HOSTILE = {
    "script": "<script>alert(1)<\u2215script>.jpg",  # '/' cannot be in a file name: U+2215 looks the same
    "quotes": "it's \"quoted\" & 'odd'.jpg",
    "newline": "new\nline.jpg",
    "esc": "esc\x1b[31mred\x1b[0m.jpg",
    "u2028": "line\u2028separator.jpg",
}


def _faces() -> list[Image.Image]:
    found = sorted(SHARED_FACES.glob("*/*.jpg"))[:3] if SHARED_FACES.is_dir() else []
    if found:
        return [Image.open(p).convert("RGB") for p in found]
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(60, 200, (300, 300, 3), dtype=np.uint8)) for _ in range(3)]


def _png_bomb(path: Path, side: int = 30000) -> None:
    """A valid PNG header claiming side x side pixels with a few bytes of data (a decompression bomb)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


def _video(path: Path, face: Image.Image, frames: int = 6) -> None:
    import cv2

    size = (160, 160)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 5, size)
    base = np.asarray(face.resize(size))[..., ::-1]
    for i in range(frames):
        writer.write(np.ascontiguousarray(np.roll(base, i, axis=1)))
    writer.release()


def build_corpus(root: Path) -> list[Path]:
    """22 kinds of input under root/real and root/fake (so `evaluate` can take the folder as DATA)."""
    faces = _faces()
    real, fake = root / "real", root / "fake"
    for d in (real, fake):
        d.mkdir(parents=True)
    made: list[Path] = []

    def save(img: Image.Image, path: Path, **kw) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        img.save(path, **kw)
        made.append(path)

    def raw(path: Path, data: bytes) -> None:
        path.write_bytes(data)
        made.append(path)

    save(faces[0], real / "face.jpg", quality=90)                                           # 1 a good face
    buf = io.BytesIO()
    faces[1].save(buf, "JPEG", quality=90)
    raw(real / "truncated.jpg", buf.getvalue()[: len(buf.getvalue()) // 2])                # 2 truncated
    raw(real / "empty.png", b"")                                                           # 3 empty
    raw(real / "text.jpg", b"this is a text file, not a JPEG\n")                           # 4 text
    raw(fake / "random.png", np.random.default_rng(1).bytes(4096))                         # 5 random bytes
    _png_bomb(fake / "bomb.png")                                                           # 6 30000x30000 header
    made.append(fake / "bomb.png")
    gray16 = (np.asarray(faces[1].convert("L"), dtype=np.uint16) * 257)
    save(Image.fromarray(gray16), real / "gray16.png")                                    # 7 16-bit
    save(faces[2].convert("CMYK"), fake / "cmyk.jpg")                                      # 8 CMYK
    save(faces[2].convert("P", palette=Image.Palette.ADAPTIVE), fake / "palette.png")      # 9 palette
    frames = [faces[0], faces[1].resize(faces[0].size)]
    save(frames[0], fake / "animated.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)  # 10
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to show
    save(faces[1].transpose(Image.Transpose.ROTATE_90), real / "exif_rotated.jpg", exif=exif)  # 11 EXIF-rotated
    save(faces[0].resize((6, 6)), fake / "tiny6.png")                                      # 12 6 px
    save(faces[0].resize((4000, 300)), fake / "wide4000x300.png")                          # 13 4000x300
    save(Image.new("RGB", (200, 200), (120, 160, 200)), real / "noface.png")              # 14 no face
    save(faces[2], real / "nested" / "a" / "b" / "deep.jpg")                               # 15 nested folders
    for i, (kind, name) in enumerate(HOSTILE.items()):                                     # 16-20 hostile names
        save(faces[i % 3], (real if i % 2 else fake) / name)
    _video(fake / "clip.mp4", faces[0])                                                    # 21 a video
    made.append(fake / "clip.mp4")
    good = (fake / "clip.mp4").read_bytes()
    raw(real / "broken.mp4", good[: len(good) // 3])                                       # 22 a broken video
    assert len(made) == 22
    return made


def snapshot(root: Path) -> dict[str, tuple[int, str]]:
    """Every file under root: size and content hash (what "nothing changed" is checked against)."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            out[str(p.relative_to(root))] = (p.stat().st_size, hashlib.sha256(p.read_bytes()).hexdigest())
    return out


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("reliability")
    inputs = build_corpus(root / "corpus")
    return {"root": root, "dir": root / "corpus", "inputs": inputs, "before": snapshot(root / "corpus")}


@pytest.fixture(scope="module")
def explained(corpus):
    """`x2dfd explain CORPUS --mllm none --out ... --report ...`, once for the module."""
    import contextlib

    out = corpus["root"] / "out" / "explain.jsonl"
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = cli_main(["explain", str(corpus["dir"]), "--mllm", "none", "--out", str(out), "--report",
                       str(corpus["root"] / "out" / "report"), "--frames", "3", "--batch-size", "8"])
    return {"rc": rc, "out": out, "err": err.getvalue()}


def _rows(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_bytes().split(b"\n") if x.strip()]


def _clean_terminal(text: str) -> None:
    assert "Traceback" not in text
    for ch in ("\x1b", "\u2028", "\x85", "\x07"):  # ("\r" is the progress bar's own)
        assert ch not in text, repr(ch)


def _unchanged(corpus) -> None:
    assert snapshot(corpus["dir"]) == corpus["before"]
    assert sorted(p.name for p in corpus["root"].iterdir()) in (["corpus", "out"], ["corpus"])


def test_explain_one_record_per_input_no_traceback(corpus, explained):
    assert explained["rc"] == 3, explained["err"][-2000:]  # some inputs cannot get a verdict
    _clean_terminal(explained["err"])
    rows = _rows(explained["out"])
    assert sorted(r["path"] for r in rows) == sorted(map(str, corpus["inputs"]))
    by_name = {Path(r["path"]).name: r for r in rows}
    for name in ("truncated.jpg", "empty.png", "text.jpg", "random.png", "bomb.png", "tiny6.png", "noface.png",
                 "broken.mp4"):
        r = by_name[name]
        assert r["label"] == "undetermined" and r["error"] and "\n" not in r["error"], name
    assert "above the limit" in by_name["bomb.png"]["error"]
    assert "truncated or corrupt" in by_name["broken.mp4"]["error"] and "video extension" not in by_name["broken.mp4"]["error"]
    assert by_name["clip.mp4"]["kind"] == "video"
    for name in ("gray16.png", "cmyk.jpg", "palette.png", "animated.gif", "exif_rotated.jpg", "wide4000x300.png"):
        assert by_name[name]["media"] is not None, name  # decoded, whatever the face detector then found
    last = explained["err"].strip().splitlines()[-1]
    failed = sum(1 for r in rows if r["p_fake"] is None)
    assert last.startswith(f"x2dfd explain: 22 inputs, {22 - failed} with a verdict, {failed} failed")
    _unchanged(corpus)


def test_explain_report_and_rerender(corpus, explained, capsys):
    report = corpus["root"] / "out" / "report"
    data = json.loads((report / "records.js").read_text().split("=", 1)[1].rstrip().rstrip(";"))
    assert len(data["rows"]) == 22
    html = (report / "index.html").read_text()
    assert "<script>alert(1)" not in html and "<script>alert(1)" not in (report / "records.js").read_text()
    rc = cli_main(["report", str(explained["out"]), "--out", str(corpus["root"] / "out" / "report2")])
    err = capsys.readouterr().err
    assert rc == 0 and "Traceback" not in err
    _clean_terminal(err)
    data2 = json.loads((corpus["root"] / "out" / "report2" / "records.js").read_text().split("=", 1)[1]
                       .rstrip().rstrip(";"))
    assert len(data2["rows"]) == 22
    # the re-rendered folder has the heatmaps explain made (recomputed from the inputs by the records' expert)
    heat1 = sorted(p.name for p in (report / "assets").glob("*.heat.jpg"))
    heat2 = sorted(p.name for p in (corpus["root"] / "out" / "report2" / "assets").glob("*.heat.jpg"))
    assert heat1 == heat2
    _unchanged(corpus)


def test_expert_score_same_records(corpus, explained, capsys):
    out = corpus["root"] / "out" / "score.jsonl"
    rc = cli_main(["expert", "score", str(corpus["dir"]), "--out", str(out), "--frames", "3", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 3 and len(err.strip().splitlines()) == 1  # --quiet: only the failure count
    _clean_terminal(err)
    rows = _rows(out)
    assert sorted(r["path"] for r in rows) == sorted(map(str, corpus["inputs"]))
    p_explain = {r["path"]: r["p_fake"] for r in _rows(explained["out"])}
    assert {r["path"]: r["p_fake"] for r in rows} == p_explain
    _unchanged(corpus)


def test_evaluate_takes_the_corpus_as_data(corpus, capsys):
    out = corpus["root"] / "out" / "eval"
    rc = cli_main(["evaluate", str(corpus["dir"]), "--mllm", "none", "--out", str(out), "--frames", "3",
                   "--bootstrap", "10", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 3, err[-2000:]
    _clean_terminal(err)
    assert err.strip().splitlines()[-1].startswith("x2dfd evaluate: 22 items")
    [cache] = (out / "records").glob("clean.*.jsonl")
    assert len(_rows(cache)) == 22
    assert (out / "metrics.json").is_file()
    _unchanged(corpus)


def test_demo_handler_answers_every_file_in_one_line(corpus):
    from x2dfd.demo.app import analyze, plain_html
    from x2dfd.explain import ExplainConfig, build_explainer

    explainer = build_explainer(ExplainConfig(inputs=["-"], mllm="none", frames=3, device="cpu"))
    for path in corpus["inputs"]:
        res = analyze(explainer, path, max_file_mb=50)
        assert res.message and "Traceback" not in res.message
        shown = plain_html(res.message)
        assert "<script>" not in shown and "\x1b" not in shown and "\u2028" not in shown
        if res.record is not None:
            assert res.record.path == path.name  # the server's folder is not shown
    _unchanged(corpus)
