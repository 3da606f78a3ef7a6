"""The demo's page function, called directly (no server): verdicts, pictures, cues, videos, and bad files as messages."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from x2dfd.demo.app import DemoConfig, analyze, build_app, build_cue_scorer
from x2dfd.records import ExpertScore

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def explainer(selfcontained_llava):
    from x2dfd.explain import build_explainer

    cfg = DemoConfig(model=str(selfcontained_llava), no_expert=True, face_crop=False, max_new_tokens=6, device="cpu")
    return build_explainer(cfg)


@pytest.fixture()
def image(tmp_path) -> Path:
    path = tmp_path / "upload.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (72, 64, 3), dtype=np.uint8)).save(path)
    return path


class StubExpert:
    """A localizing expert with known outputs: a left-to-right ramp heatmap and p_fake 0.75."""

    name = "stub"
    prompt_name = "blending"

    def score(self, faces):
        return [ExpertScore(self.name, 0.75) for _ in faces]

    def localize(self, faces):
        return [np.tile(np.linspace(0, 1, f.width, dtype=np.float32), (f.height, 1)) for f in faces]

    def info(self):
        return {"name": self.name}


class StubCues:
    """The CueScorer surface the demo uses: ``cues`` and ``score_image``."""

    def __init__(self, n=12):
        from types import SimpleNamespace

        self.cues = [SimpleNamespace(id=f"region.cue{i}", present=f"evidence <{i}>", question=f"q{i}?") for i in range(n)]

    def score_image(self, face):
        assert face is not None
        return np.linspace(0.05, 0.95, len(self.cues))


def test_image_gets_verdict_explanation_and_face(explainer, image):
    res = analyze(explainer, image)
    assert res.ok, res.message
    assert res.verdict in ("real", "fake") and 0.0 <= res.p_fake <= 1.0
    assert res.verdict == ("fake" if res.p_fake >= 0.5 else "real")
    assert res.explanation.startswith("This image is")
    looks = "UNCERTAIN" if res.record.verdict == "uncertain" else res.verdict.upper()
    assert res.message.startswith(f"This image looks {looks}: p_fake = {res.p_fake:.3f}")
    assert res.record.verdict == ("uncertain" if 0.35 <= res.p_fake < 0.65 else res.verdict)
    assert isinstance(res.face, Image.Image) and res.face.size == (64, 72)  # --no-face-crop: the whole upload
    assert res.heatmap is None and res.experts == [] and res.cues is None and res.timeline is None
    assert res.record.path == "upload.png"  # the server's temp folder is not shown


def test_bad_files_are_one_line_messages(explainer, tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    res = analyze(explainer, text)
    assert not res.ok and "'notes.txt' is not a file type the demo reads" in res.message and ".jpg" in res.message

    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 definitely not a whole JPEG")
    res = analyze(explainer, broken)
    assert not res.ok and res.message.startswith("No verdict for 'broken.jpg': ")
    assert "\n" not in res.message and "Traceback" not in res.message
    assert res.record.label == "undetermined" and res.record.error

    big = tmp_path / "big.png"
    big.write_bytes(b"\0" * 300_000)
    res = analyze(explainer, big, max_file_mb=0.1)
    assert not res.ok and res.message == "'big.png' is 0.3 MB; the demo accepts files up to 0.1 MB."

    assert analyze(explainer, None).message == "Upload a face image or a video to see its verdict."
    assert "could not be read" in analyze(explainer, tmp_path / "gone.png").message


def test_failure_inside_the_pipeline_is_a_message(image):
    class Exploding:
        def run_with_artifacts(self, paths):
            raise RuntimeError("CUDA out of memory\nwith a second line")

    res = analyze(Exploding(), image)
    assert not res.ok and res.message == "'upload.png' could not be analysed: RuntimeError: CUDA out of memory with a second line"


def test_expert_scores_heatmap_and_cues(explainer, image):
    from x2dfd.pipeline import Explainer

    with_expert = Explainer(explainer.mllm, [StubExpert()], explainer.options)
    res = analyze(with_expert, image, score_cues=True, cue_scorer=StubCues(), cue_top=3)
    assert res.ok
    assert res.experts == [["stub", 0.75]]
    assert isinstance(res.heatmap, Image.Image) and res.heatmap.height == res.face.height
    assert res.heatmap.width > res.face.width  # the colour scale sits on the right of the overlay
    heat = np.asarray(res.heatmap, np.int32)[:, : res.face.width]
    assert heat[:, -1, 0].mean() > heat[:, 0, 0].mean() + 20  # the hot (right) side is redder
    scale = np.asarray(res.heatmap, np.int32)[:, res.face.width + 6]
    assert scale[2, 0] > scale[2, 2] and scale[-3, 2] > scale[-3, 0]  # 1 (red) at the top, 0 (blue) at the bottom
    # the location sentence of the evidence: the ramp is hot on the right third of a crop without landmarks
    where = [e for e in res.record.evidence if e["kind"] == "where"]
    assert where and where[0]["numbers"]["by"] == "grid" and "right" in where[0]["numbers"]["regions"][0]["region"]
    assert res.cues == [["region.cue11", "evidence <11>", 0.95], ["region.cue10", "evidence <10>", 0.868],
                        ["region.cue9", "evidence <9>", 0.786]]
    assert res.record.cues[0] == {"id": "region.cue11", "phrase": "evidence <11>", "p_yes": 0.95}
    assert analyze(with_expert, image, score_cues=False, cue_scorer=StubCues()).cues is None
    res = analyze(with_expert, image, score_cues=True, cue_scorer=None)
    assert res.ok and res.cues == [] and "not available" in res.cue_note


def test_real_cue_scorer_when_available(tiny_llava, image):
    from x2dfd.explain import build_explainer

    pytest.importorskip("x2dfd.feature_assessment.scoring")
    cfg = DemoConfig(model=str(tiny_llava), no_expert=True, face_crop=False, max_new_tokens=2, device="cpu")
    explainer = build_explainer(cfg)
    scorer = build_cue_scorer(explainer)
    assert scorer is not None
    res = analyze(explainer, image, score_cues=True, cue_scorer=scorer, cue_top=5)
    assert res.ok and len(res.cues) == 5 and res.cue_note is None
    ps = [c[2] for c in res.cues]
    assert ps == sorted(ps, reverse=True) and all(0.0 <= p <= 1.0 for p in ps)
    ids = {c.id for c in scorer.cues}
    assert all(c[0] in ids for c in res.cues)


def test_video_gets_a_frame_timeline(explainer, tmp_path):
    cv2 = pytest.importorskip("cv2")
    path = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, (64, 64))
    rng = np.random.default_rng(1)
    for _ in range(20):
        writer.write(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    writer.release()
    res = analyze(explainer, path)
    assert res.ok, res.message
    assert res.message.startswith("This video looks ")
    assert res.timeline and len(res.timeline) == explainer.options.frames
    assert all(0.0 <= f["p_fake"] <= 1.0 for f in res.timeline)
    from x2dfd.demo.app import timeline_figure

    fig = timeline_figure(res.timeline, res.segments)
    assert fig.axes[0].get_ylim() == (0.0, 1.0) and len(fig.axes[0].lines[0].get_xdata()) == len(res.timeline)
    assert res.record.segments is not None and res.record.verdict in ("real", "uncertain", "fake")


def test_build_app_wires_the_handler_without_launching(explainer, image, tmp_path):
    import gradio as gr

    app = build_app(explainer, max_file_mb=5, examples=[image])
    assert isinstance(app, gr.Blocks)
    ids = {getattr(b, "elem_id", None) for b in app.blocks.values()}
    assert {"upload", "verdict", "explanation", "face", "heatmap", "experts", "cues", "timeline", "evidence", "annotated",
            "faces", "segments", "downloads", "gallery", "api-usage"} <= ids
    assert "score-cues" in ids and "cues-off" in ids  # no scorer: the control is hidden, with a note
    out = app.x2dfd_run([str(image)], False, progress=lambda *a, **k: None)
    verdict, message, label, explanation, face, heat, experts, cues, cue_note, timeline = out[:10]
    evidence, annotated, faces, segments, downloads, gallery = out[10:]
    assert 'class="x2-badge"' in verdict["value"] and "p_fake" in verdict["value"]
    assert message["value"] == "" and set(label) == {"fake", "real"} and abs(sum(label.values()) - 1) < 1e-9
    assert explanation.startswith("This image is") and face is not None and heat is None
    assert timeline["visible"] is False and cues["visible"] is False and segments["visible"] is False
    assert "Measured evidence" in evidence["value"]  # beside the model's own text
    assert faces["value"][0][:3] == ["upload.png", "–", out[0]["value"].split('data-verdict="')[1].split('"')[0]]
    names = sorted(Path(f).name for f in downloads["value"])
    assert names == ["upload.report.html", "upload.x2dfd.json"]
    import json

    record = json.loads(Path([f for f in downloads["value"] if f.endswith(".json")][0]).read_text())
    assert record["path"] == "upload.png" and record["verdict"] in ("real", "uncertain", "fake")
    page = Path([f for f in downloads["value"] if f.endswith(".html")][0]).read_text()
    assert "window.X2DFD_REPORT" in page and 'src="records.js"' not in page  # one file: rows inside it
    assert gallery["visible"] is False  # one upload: no gallery

    text = tmp_path / "x.txt"
    text.write_text("x")
    verdict, message, *_ = app.x2dfd_run([str(text)], False, progress=lambda *a, **k: None)
    assert verdict["value"] == "" and "not a file type" in message["value"]


def test_demo_flags_reuse_explain_options():
    res = subprocess.run([sys.executable, "-m", "x2dfd", "demo", "--help"], capture_output=True, text=True, cwd=REPO,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    text = " ".join(res.stdout.split())
    for flag in ("--model", "--adapter", "--no-expert", "--expert", "--mllm", "--load-in-4bit", "--no-face-crop",
                 "--frames", "--host", "--port", "--concurrency", "--queue-size", "--max-file-mb", "--no-examples",
                 "--allow-expert-mismatch", "--expert NAME[=WEIGHTS]"):
        assert flag in text, flag
    for batch_only in ("INPUTS", "--out ", "--report", "--all-faces", "--quiet"):
        assert batch_only not in text, batch_only
    assert "default: 127.0.0.1" in text and "default: 7860" in text


def test_bad_demo_flags_are_one_line_usage_errors(capsys):
    from x2dfd.cliargs import parse_config

    for argv, expected in ((["--port", "70000"], "--port must be in 0..65535"),
                           (["--concurrency", "0"], "--concurrency must be >= 1"),
                           (["--no-expert", "--expert", "blend"], "--no-expert and --expert exclude each other")):
        with pytest.raises(SystemExit) as exc:
            parse_config(DemoConfig, argv, prog="x2dfd demo")
        err = capsys.readouterr().err
        assert exc.value.code == 2 and expected in err and "Traceback" not in err


def test_examples_are_made_by_project_code(tmp_path):
    from x2dfd.demo.examples import make_examples
    from tests.conftest import shared_path

    empty = tmp_path / "no-photos"
    empty.mkdir()
    assert [f.name for f in make_examples(tmp_path / "plain", source_dir=empty)] == ["no-face.png"]

    photos = shared_path("data", "faces-real-photos", "real")
    files = make_examples(tmp_path / "ex", source_dir=photos)
    assert [f.name for f in files] == ["real-face.jpg", "face-swap.jpg", "self-blended-fake.jpg", "real-then-swapped.mp4",
                                       "no-face.png"]
    real = np.asarray(Image.open(files[0]).convert("RGB"), np.int32)
    h, w = real.shape[:2]
    swap = np.asarray(Image.open(files[1]).convert("RGB"), np.int32)
    changed = np.abs(real - swap).max(-1) > 24  # beyond JPEG noise: only the face region was replaced
    assert swap.shape == real.shape and 0.01 < changed.mean() < 0.5
    ys, xs = np.nonzero(changed)
    assert 0.2 * w < xs.mean() < 0.8 * w and 0.2 * h < ys.mean() < 0.8 * h
    sbi = np.asarray(Image.open(files[2]).convert("RGB"), np.int32)  # SBI may colour-jitter the whole target copy
    assert sbi.shape == real.shape and (np.abs(real - sbi).max(-1) > 24).mean() > 0.01

    from x2dfd.media import sample_video

    frames, info = sample_video(files[3], 24)
    assert len(frames) == 24
    stamps = [f.stat().st_mtime_ns for f in files]
    assert make_examples(tmp_path / "ex", source_dir=photos) == files  # made once, reused at the next start
    assert [f.stat().st_mtime_ns for f in files] == stamps


def test_exposed_host_warns_auth_is_passed_and_no_share_hint(capsys):
    from x2dfd.demo.app import exposure_warning, launch_app

    assert exposure_warning("127.0.0.1", 7860, False) is None and exposure_warning("localhost", 1, False) is None
    assert "no login" in exposure_warning("0.0.0.0", 7860, False) and "--auth" in exposure_warning("0.0.0.0", 7860, False)
    assert "plain HTTP" in exposure_warning("192.168.1.5", 7860, True)

    class FakeApp:
        local_url = "http://0.0.0.0:7860/"

        def queue(self, **kw):
            self.queued = kw

        def launch(self, **kw):
            self.launched = kw

        def block_thread(self):
            self.blocked = True

    app = FakeApp()
    launch_app(app, host="0.0.0.0", port=7860, auth=("ann", "s3cret"), block=False)
    err = capsys.readouterr().err
    assert "warning: listening on 0.0.0.0:7860" in err and "share=True" not in err
    assert app.launched["auth"] == ("ann", "s3cret") and app.launched["share"] is False
    assert app.launched["quiet"] is True  # gradio's own banner (with its share=True hint) is not printed
    cfg = DemoConfig(auth="ann:s3:cret", delete_uploads_after=60)
    assert cfg.auth_pair() == ("ann", "s3:cret")
    for bad in ("ann", ":x", "ann:"):
        with pytest.raises(Exception, match="USER:PASS"):
            DemoConfig(auth=bad)


def test_uploads_are_deleted_and_names_are_plain_text(explainer, tmp_path):
    import gradio as gr

    app = build_app(explainer, max_file_mb=5, delete_uploads_after=90)
    assert isinstance(app, gr.Blocks) and app.delete_cache == (90, 90)
    hostile = tmp_path / "<img src=x onerror=alert(1)> [link](javascript:x) \x1b[31m.txt"
    hostile.write_text("x")
    _, message, *_ = app.x2dfd_run([str(hostile)], False, progress=lambda *a, **k: None)
    value = message["value"]
    assert "<img" not in value and "&lt;img src=x onerror=alert(1)&gt;" in value and "\x1b" not in value
    assert "\\x1b" in value  # the control character is shown, escaped


# ---------------------------------------------------------------------------------------------- issue 12
class TwoExperts:
    """Two stub experts that point opposite ways (disagreement), one localizing on the image-left jaw."""

    def __init__(self):
        class Fake(StubExpert):
            name = "fakeish"

            def score(self, faces):
                return [ExpertScore(self.name, 0.9) for _ in faces]

        class Real(StubExpert):
            name = "realish"

            def score(self, faces):
                return [ExpertScore(self.name, 0.1) for _ in faces]

            def localize(self, faces):
                return None

        self.experts = [Fake(), Real()]


def test_every_face_boxes_disagreement_and_the_no_face_message(tmp_path):
    """Two real portraits side by side: both faces judged (one row each), both boxes drawn in their p_fake colour,
    the experts' opposite scores flagged; an image without a face tells a web user what to do."""
    from x2dfd.demo.app import p_color
    from x2dfd.pipeline import Explainer, PipelineOptions
    from tests.conftest import shared_path

    photos = sorted(shared_path("data", "faces-real-photos", "real").glob("*.jpg"))
    from x2dfd.demo.examples import _portraits

    (a, _), (b, _) = _portraits(photos[0].parent, n=2)
    two = Image.new("RGB", (a.width + b.width, max(a.height, b.height)), "white")
    two.paste(a, (0, 0))
    two.paste(b, (a.width, 0))
    path = tmp_path / "two people.jpg"
    two.save(path)
    explainer = Explainer(None, TwoExperts().experts, PipelineOptions(all_faces=True, workers=0))
    res = analyze(explainer, path)
    assert res.ok and len(res.records) == 2 and [r.face_index for r in res.records] == [0, 1]
    rows = res.face_rows()
    assert [r[1] for r in rows] == [0, 1] and all(r[0] == "two people.jpg" for r in rows)
    assert all(r[5] == "fakeish 0.90 vs realish 0.10" for r in rows)  # the disagreement, per face
    assert res.record.disagreement == [{"a": "fakeish", "b": "realish", "a_p": 0.9, "b_p": 0.1}]
    assert res.record.verdict == "uncertain"  # the mean 0.5 of two opposite experts is not a confident verdict
    assert "looks UNCERTAIN" in res.message and "2 faces judged" in res.message
    pic = np.asarray(res.annotated, np.int32)
    for r in res.records:
        x0, y0, x1, y1 = (int(round(v)) for v in r.face["box"])
        edge = pic[min(max(y0 + (y1 - y0) // 2, 0), pic.shape[0] - 1), min(max(x0, 0), pic.shape[1] - 1)]
        assert np.abs(edge - np.array(p_color(r.p_fake))).max() <= 3  # the box's left edge, in its p_fake colour

    blank = tmp_path / "wall.png"
    Image.new("RGB", (200, 160), (120, 160, 200)).save(blank)
    res = analyze(explainer, blank)
    assert not res.ok and res.message.startswith("No face found in 'wall.png'. Upload a photo in which a face")
    assert "--no-face-crop" not in res.message and "--" not in res.message


def test_progress_reports_frames_done_of_total(tmp_path):
    cv2 = pytest.importorskip("cv2")
    from x2dfd.pipeline import Explainer, PipelineOptions

    path = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, (64, 64))
    rng = np.random.default_rng(1)
    for _ in range(12):
        writer.write(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    writer.release()
    explainer = Explainer(None, [StubExpert()], PipelineOptions(face_crop=False, frames=6, batch_size=4, workers=0))
    seen = []
    explainer.progress = lambda stage, done, total: seen.append((stage, done, total))
    res = analyze(explainer, path)
    assert res.ok
    assert [s for s in seen if s[0] == "faces"] == [("faces", i, 6) for i in range(6)]
    assert [s for s in seen if s[0] == "judge"] == [("judge", 0, 6), ("judge", 4, 6)]

    app = build_app(explainer, max_file_mb=5)
    calls = []
    out = app.x2dfd_run([str(path)], False, progress=lambda *a, **k: calls.append((a, k)))
    assert calls and all(isinstance(a[0], tuple) and a[0][1] > 0 for a, _ in calls)
    assert any("frames: faces found" in k["desc"] for _, k in calls)
    assert out[13]["visible"] is True  # the segments table shows for a video


def test_several_files_in_one_request(explainer, image, tmp_path):
    second = tmp_path / "second.png"
    Image.fromarray(np.random.default_rng(5).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(second)
    app = build_app(explainer, max_file_mb=5)
    out = app.x2dfd_run([str(image), str(second)], False, progress=lambda *a, **k: None)
    faces, gallery, downloads = out[12], out[15], out[14]
    assert [r[0] for r in faces["value"]] == ["upload.png", "second.png"]
    assert gallery["visible"] is True and len(gallery["value"]) == 2
    assert any(Path(f).name == "upload-and-1-more.report.html" for f in downloads["value"])


def test_several_systems_are_loaded_once_and_the_page_switches(selfcontained_llava, tmp_path, image):
    """`x2dfd demo --system a=... --system b=...`: both setups loaded at start, a switch on the page, and each
    request answered by the chosen one (here: one with the x2dfd-release prompt format, one with x2dfd's own)."""
    from x2dfd.api import build_explainer
    from x2dfd.evaluate import parse_system_specs

    cfg = DemoConfig(model=str(selfcontained_llava), no_expert=True, face_crop=False, max_new_tokens=4, device="cpu",
                     system=[f"own=model={selfcontained_llava}", "release=preset:x2dfd-release"])
    systems = {spec.name: build_explainer(spec.options, spec.expert_specs, cfg, device="cpu")
               for spec in parse_system_specs(cfg)}
    assert list(systems) == ["own", "release"] and systems["release"].mllm.preset.name == "x2dfd-release"
    app = build_app(systems, max_file_mb=5, downloads_dir=str(tmp_path / "dl"))
    ids = {getattr(b, "elem_id", None): b for b in app.blocks.values()}
    assert ids["system"].choices and [c[0] for c in ids["system"].choices] == ["own", "release"]
    quiet = {"progress": lambda *a, **k: None}
    own = app.x2dfd_run([str(image)], False, "own", **quiet)
    release = app.x2dfd_run([str(image)], False, "release", **quiet)
    default = app.x2dfd_run([str(image)], False, **quiet)  # no choice: the first system
    p = [o[2]["fake"] for o in (own, release, default)]  # the Verdict label: {"fake": p_fake, "real": 1 - p_fake}
    assert p[0] == p[2] and p[0] != p[1]  # another prompt format, another answer from the same weights
