"""``x2dfd demo``: a Gradio explain-this-image page over the same pipeline as ``x2dfd explain``.

    x2dfd demo --model ./llava-1.5-7b-hf --adapter runs/x2dfd-lora    # http://127.0.0.1:7860
    x2dfd demo --model ./tiny-llava --no-expert --port 7861           # no expert: no heatmap, no scores

Upload a face image or a short video: the page shows the verdict with p_fake, the MLLM's
explanation, the face crop, the blending expert's heatmap over the face, the experts' scores, on
request the forgery cues with the highest P(yes) (``feature_assessment``'s cached cue scoring), and
for a video the p_fake of every sampled frame. The model is loaded once at start; requests wait in
a queue (``--concurrency`` at a time, ``--queue-size`` waiting); uploads are limited in size
(``--max-file-mb``) and type (the image and video extensions of ``x2dfd explain``). A file that
cannot be used is answered with one line in the page, never a traceback.

Example inputs are made by the project's own code at start, into ``--examples-dir`` (see
``demo/examples.py``); nothing is shipped or downloaded. It listens on 127.0.0.1 unless ``--host``
says otherwise; the page has no login unless ``--auth USER:PASS`` (Gradio's own login form), and
listening on any other address prints a warning. Uploaded files are deleted from Gradio's cache
``--delete-uploads-after`` seconds after they arrive (and all of them when the demo stops). File
names and messages are shown as plain text, never as Markdown or HTML.
"""

from __future__ import annotations

import html
import logging
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from x2dfd.errors import UsageError
from x2dfd.explain import ExplainConfig, ModelArgs
from x2dfd.inputs import IMAGE_EXTS, MEDIA_EXTS, VIDEO_EXTS
from x2dfd.pipeline import PipelineOptions
from x2dfd.records import Record, one_line, safe_text

log = logging.getLogger("x2dfd.demo")

DEFAULT_EXAMPLES_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "x2dfd" / "demo-examples"
CSS = """
#verdict h2 { margin: 0; }
#message, #message * { color: #a35f00 !important; font-weight: 600; }
.x2-badge { display: inline-block; color: #fff !important; font-weight: 700; padding: 2px 12px; border-radius: 12px; font-size: 20px; }
.x2-disagree { font-size: 14px; }
.x2-p { font-size: 20px; font-weight: 600; margin: 0 8px; }
.x2-note { color: #5a636c; font-size: 13px; }
.x2-evidence ul { margin: 4px 0 0 18px; padding: 0; } .x2-evidence li { margin: 2px 0; }
"""


@dataclass
class DemoConfig(ExplainConfig):
    """Gradio demo: upload a face image or video; verdict, p_fake, explanation, face crop, heatmap, expert scores."""

    cli_epilog: ClassVar[str | None] = None  # explain's exit statuses are a batch's

    # explain's batch-only options do not apply to a page that takes one upload at a time
    inputs: list[str] = field(default_factory=list, metadata={"cli": False})
    out: str | None = field(default=None, metadata={"cli": False})
    quiet: bool = field(default=False, metadata={"cli": False})
    report: str | None = field(default=None, metadata={"cli": False})
    all_faces: bool = field(default=True, metadata={"cli": False})  # the page judges every face of an image
    force_new_run: bool = field(default=False, metadata={"cli": False})
    max_file_mb: float = 50.0
    """Largest upload accepted, in MB (images and videos)."""
    host: str = "127.0.0.1"
    """Address to listen on: 127.0.0.1 (this machine only) or 0.0.0.0 (every interface: anyone who can reach this machine can use it; see --auth)."""
    auth: str | None = field(default=None, metadata={"metavar": "USER:PASS"})
    """Require this user name and password (Gradio's login page) before the page can be used; the connection itself is plain HTTP."""
    delete_uploads_after: int = 3600
    """Seconds after which uploaded files are deleted from Gradio's cache (checked every few minutes; all are deleted when the demo stops)."""
    port: int = 7860
    """Port to listen on."""
    concurrency: int = 1
    """Requests analysed at the same time by the one loaded model; the others wait in the queue."""
    queue_size: int = 32
    """Requests that may wait in the queue; beyond that new ones are turned away with a message."""
    cue_top: int = 8
    """Cues listed when 'score forgery cues' is ticked (highest P(yes) first)."""
    system: list[str] = field(default_factory=list, metadata={"metavar": "NAME=SPEC"})
    """Load several MLLM setups and let the page switch between them; SPEC as in `x2dfd evaluate --system`: preset:NAME (x2dfd-release, fakevlm, x2dfd), a model or adapter folder, or model=DIR,adapter=DIR,preset=NAME. Without it: the one setup of --model/--adapter/--preset."""
    examples: bool = True
    """Offer example inputs, generated at start by the project's own code (--no-examples: none)."""
    examples_dir: str = str(DEFAULT_EXAMPLES_DIR)
    """Folder the example inputs are generated into (reused when already there)."""
    examples_from: str | None = None
    """Folder of real face photos the examples are made from (default: ../shared/data/faces-real-photos/real beside the checkout, when present)."""

    def __post_init__(self):
        ModelArgs.__post_init__(self)
        PipelineOptions.__post_init__(self)
        if self.no_expert and self.expert:
            raise UsageError("--no-expert and --expert exclude each other")
        if not 0 <= self.port <= 65535:
            raise UsageError(f"--port must be in 0..65535, got {self.port}")
        if self.concurrency < 1:
            raise UsageError(f"--concurrency must be >= 1, got {self.concurrency}")
        if self.queue_size < 1:
            raise UsageError(f"--queue-size must be >= 1, got {self.queue_size}")
        if not self.max_file_mb > 0:
            raise UsageError(f"--max-file-mb must be > 0, got {self.max_file_mb}")
        if self.cue_top < 1:
            raise UsageError(f"--cue-top must be >= 1, got {self.cue_top}")
        if self.auth is not None:
            user, sep, password = self.auth.partition(":")
            if not sep or not user or not password:
                raise UsageError("--auth must be USER:PASS (a user name and a password separated by ':')")
        if self.delete_uploads_after < 1:
            raise UsageError(f"--delete-uploads-after must be >= 1 second, got {self.delete_uploads_after}")

    def auth_pair(self) -> tuple[str, str] | None:
        if self.auth is None:
            return None
        user, _, password = self.auth.partition(":")
        return user, password


LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")


def is_loopback(host: str) -> bool:
    return host in LOOPBACK or host.startswith("127.")


def exposure_warning(host: str, port: int, auth: bool) -> str | None:
    """The warning printed when the page is reachable from other machines (None on loopback)."""
    if is_loopback(host):
        return None
    where = f"{host}:{port}" + (" (every network interface)" if host in ("0.0.0.0", "::", "") else "")
    if auth:
        return (f"x2dfd demo: warning: listening on {where}: other machines can reach this page; it asks for the "
                "--auth login, but the connection is plain HTTP (put it behind HTTPS to keep the password private)")
    return (f"x2dfd demo: warning: listening on {where}: anyone who can reach this machine can use the page and the "
            "model, with no login; add --auth USER:PASS, or listen on 127.0.0.1")


# ---------------------------------------------------------------------------------------------- handler
NO_FACE_HELP = ("Upload a photo in which a face is clearly visible (facing the camera, not tiny, not cut off "
                "at the edge), or crop the picture around the face and upload the crop.")


@dataclass
class DemoResult:
    """Everything the page shows for one upload (plain data: the handler is testable without Gradio)."""

    ok: bool
    message: str  # one line: the verdict, or what went wrong and what to do
    record: Record | None = None  # the largest face's record (the video's record)
    face: Any = None  # PIL image
    heatmap: Any = None  # PIL image: the heatmap over the face, with its colour scale
    experts: list[list[Any]] = field(default_factory=list)  # [expert, p_fake or "N/A"]
    cues: list[list[Any]] | None = None  # [cue id, evidence, P(yes)]; None when not requested
    cue_note: str | None = None
    timeline: list[dict[str, Any]] | None = None  # video: [{"index", "time_s", "p_fake", "experts", "explained"}]
    records: list[Record] = field(default_factory=list)  # every judged face (largest first)
    artifacts: list[Any] = field(default_factory=list)  # the pipeline's Artifacts, one per record
    annotated: Any = None  # PIL image: the input (a video's explained frame) with every face box, coloured by p_fake
    name: str = ""

    @property
    def verdict(self) -> str | None:
        return self.record.label if self.record is not None else None

    @property
    def p_fake(self) -> float | None:
        return self.record.p_fake if self.record is not None else None

    @property
    def explanation(self) -> str:
        return (self.record.explanation or "") if self.record is not None else ""

    @property
    def evidence(self) -> list[str]:
        return [str(e.get("text", "")) for e in (self.record.evidence or [])] if self.record is not None else []

    @property
    def segments(self) -> list[dict[str, Any]]:
        return list(self.record.segments or []) if self.record is not None else []

    def face_rows(self) -> list[list[Any]]:
        """One row per judged face: [file, face, verdict (three-way), p_fake, experts, disagreement]."""
        rows = []
        for r in self.records:
            experts = ", ".join(f"{k} {'N/A' if v is None else f'{float(v):.3f}'}" for k, v in r.experts.items())
            dis = "; ".join(f"{d['a']} {d['a_p']:.2f} vs {d['b']} {d['b_p']:.2f}" for d in r.disagreement or [])
            rows.append([safe_text(self.name), "–" if r.face_index is None else r.face_index, r.verdict or r.label,
                         None if r.p_fake is None else round(float(r.p_fake), 4), experts or "–", dis or "–"])
        return rows


def _allowed() -> str:
    return f"images ({', '.join(sorted(IMAGE_EXTS))}) or videos ({', '.join(sorted(VIDEO_EXTS))})"


def p_color(p: float | None) -> tuple[int, int, int]:
    """A face box's colour: blue (real, 0) through grey (0.5) to red (fake, 1); grey without a score."""
    if p is None:
        return (138, 138, 138)
    a, m, b = (42, 111, 176), (150, 150, 150), (201, 48, 44)
    if p < 0.5:
        t = p / 0.5
        return tuple(round(a[k] + (m[k] - a[k]) * t) for k in range(3))
    t = (p - 0.5) / 0.5
    return tuple(round(m[k] + (b[k] - m[k]) * t) for k in range(3))


def draw_faces(image, records: list[Record], frame_face: bool = False):
    """``image`` with each record's face box drawn in its p_fake colour and labelled "face i: p"."""
    from PIL import ImageDraw, ImageFont

    out = image.convert("RGB").copy()
    draw = ImageDraw.Draw(out)
    width = max(2, round(max(out.size) / 200))
    size = max(11, round(max(out.size) / 50))
    try:
        font = ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: one fixed size
        font = ImageFont.load_default()
    for r in records:
        face = r.face
        if frame_face:
            face = next((f.get("face") for f in r.frames or [] if f.get("explained")), None) or face
        box = (face or {}).get("box")
        if not box:
            continue
        x0, y0, x1, y1 = (float(v) for v in box[:4])
        colour = p_color(r.p_fake)
        draw.rectangle((x0, y0, x1, y1), outline=colour, width=width)
        tag = ("" if r.face_index is None else f"face {r.face_index}: ") + ("–" if r.p_fake is None else f"{r.p_fake:.2f}")
        ty = max(0.0, y0 - size - 6)
        tw = draw.textlength(tag, font=font)
        draw.rectangle((x0, ty, x0 + tw + 6, ty + size + 4), fill=colour)
        draw.text((x0 + 3, ty + 1), tag, fill=(255, 255, 255), font=font)
    return out


def heatmap_with_scale(face, heatmap):
    """The heatmap over the face, with a vertical colour scale (0 at the bottom, 1 at the top) on its right."""
    import numpy as np
    from matplotlib import colormaps
    from PIL import Image, ImageDraw

    from x2dfd.report import HEAT_COLORMAP, overlay_heatmap

    over = overlay_heatmap(face, heatmap)
    h = over.height
    bar_w, pad, text_w = max(8, h // 24), 4, 28
    ramp = colormaps[HEAT_COLORMAP](np.linspace(1.0, 0.0, h))[:, :3]
    bar = (np.repeat(ramp[:, None, :], bar_w, axis=1) * 255 + 0.5).astype(np.uint8)
    canvas = Image.new("RGB", (over.width + pad + bar_w + text_w, h), (255, 255, 255))
    canvas.paste(over, (0, 0))
    canvas.paste(Image.fromarray(bar), (over.width + pad, 0))
    draw = ImageDraw.Draw(canvas)
    x = over.width + pad + bar_w + 3
    draw.text((x, 0), "1", fill=(0, 0, 0))
    draw.text((x, h // 2 - 6), "0.5", fill=(0, 0, 0))
    draw.text((x, h - 12), "0", fill=(0, 0, 0))
    return canvas


def _input_picture(path: str, record: Record, artifacts):
    """What the face boxes are drawn on: the image itself, or the video's explained frame."""
    if record.kind == "video":
        return getattr(artifacts, "frame_image", None)
    try:
        from x2dfd.media import load_image

        return load_image(path)
    except Exception:  # noqa: BLE001 - no picture, the verdict stands
        return None


def analyze(explainer, path: str | os.PathLike | None, score_cues: bool = False, *, max_file_mb: float = 50.0,
            cue_scorer=None, cue_top: int = 8) -> DemoResult:
    """Explain one uploaded file (every face in an image). Never raises: every failure is a result with a
    one-line message."""
    if path is None or str(path) == "":
        return DemoResult(False, "Upload a face image or a video to see its verdict.")
    path = str(path)
    name = Path(path).name
    if Path(path).suffix.lower() not in MEDIA_EXTS:
        return DemoResult(False, f"'{name}' is not a file type the demo reads: upload {_allowed()}.", name=name)
    try:
        size_mb = Path(path).stat().st_size / 1e6
    except OSError as err:
        return DemoResult(False, f"'{name}' could not be read ({err.strerror or err}); upload it again.", name=name)
    if size_mb > max_file_mb:
        return DemoResult(False, f"'{name}' is {size_mb:.1f} MB; the demo accepts files up to {max_file_mb:g} MB.",
                          name=name)
    try:
        pairs = list(explainer.run_with_artifacts([path]))
    except Exception as err:  # noqa: BLE001 - the page boundary: log the cause, show one line
        log.exception("demo: analysing %s failed", safe_text(path))
        cause = one_line(f"{type(err).__name__}: {err}", 300).replace(path, name)
        return DemoResult(False, f"'{name}' could not be analysed: {cause}", name=name)
    if not pairs:
        return DemoResult(False, f"'{name}' gave no result; upload it again.", name=name)
    for record, _ in pairs:  # the server's temp path means nothing to the visitor (and is none of their business)
        record.path = name
        if record.error:
            record.error = record.error.replace(path, name)
    record, artifacts = pairs[0]
    result = DemoResult(ok=record.p_fake is not None, message="", record=record, name=name,
                        records=[r for r, _ in pairs], artifacts=[a for _, a in pairs])
    result.experts = [[k, "N/A" if v is None else round(float(v), 4)] for k, v in record.experts.items()]
    if artifacts.face is not None:
        result.face = artifacts.face
        if artifacts.heatmap is not None:
            try:
                result.heatmap = heatmap_with_scale(artifacts.face, artifacts.heatmap)
            except Exception:  # noqa: BLE001 - a missing picture must not cost the verdict
                log.exception("demo: heatmap overlay failed")
    picture = _input_picture(path, record, artifacts)
    if picture is not None and any(r.face for r in result.records):
        try:
            result.annotated = draw_faces(picture, result.records, frame_face=record.kind == "video")
        except Exception:  # noqa: BLE001
            log.exception("demo: drawing face boxes failed")
    if record.kind == "video" and record.frames:
        result.timeline = [{"index": f.get("index"), "time_s": f.get("time_s"), "p_fake": f.get("p_fake"),
                            "experts": dict(f.get("experts") or {}), "explained": bool(f.get("explained"))}
                           for f in record.frames]
    if record.p_fake is None:
        why = record.error or "nothing could score it"
        if "no face found" in why.lower():
            where = "in any sampled frame of" if record.kind == "video" else "in"
            result.message = f"No face found {where} '{name}'. {NO_FACE_HELP}"
        else:
            result.message = f"No verdict for '{name}': {why}"
        return result
    what = "video" if record.kind == "video" else "image"
    looks = "UNCERTAIN" if record.verdict == "uncertain" else record.label.upper()
    result.message = f"This {what} looks {looks}: p_fake = {record.p_fake:.3f}"
    if record.verdict == "uncertain":
        result.message += f" (label at the threshold: {record.label})"
    if len(result.records) > 1:
        n_fake = sum(r.label == "fake" for r in result.records)
        result.message += f"; {len(result.records)} faces judged, {n_fake} fake (largest face shown)"
    if record.error:
        result.message += f" (note: {record.error})"
    if score_cues:
        result.cues, result.cue_note = _score_cues(cue_scorer, artifacts.face, cue_top)
        if result.cues:
            record.cues = [{"id": c[0], "phrase": c[1], "p_yes": c[2]} for c in result.cues]
    return result


def _score_cues(cue_scorer, face, top: int) -> tuple[list[list[Any]], str | None]:
    if cue_scorer is None:
        return [], "Cue scoring is not available in this demo (no MLLM, or feature_assessment is not installed)."
    if face is None:
        return [], "No face crop to ask the cue questions about."
    try:
        p_yes = cue_scorer.score_image(face)
    except Exception as err:  # noqa: BLE001 - cues are extra evidence; the verdict stands without them
        log.exception("demo: cue scoring failed")
        return [], f"Cue scoring failed: {one_line(f'{type(err).__name__}: {err}', 200)}"
    cues = list(cue_scorer.cues)
    order = sorted(range(len(cues)), key=lambda i: -float(p_yes[i]))[:top]
    rows = [[cues[i].id, getattr(cues[i], "present", None) or getattr(cues[i], "question", ""), round(float(p_yes[i]), 3)]
            for i in order if math.isfinite(float(p_yes[i]))]
    return rows, None


def build_cue_scorer(explainer, batch_size: int = 16):
    """``feature_assessment``'s cached cue scorer over the shipped cue bank, or None where it cannot run
    (expert-only demo, feature_assessment missing): the page then hides the cue control."""
    if getattr(explainer, "mllm", None) is None:
        return None
    try:
        from x2dfd.feature_assessment.cues import load_cues
        from x2dfd.feature_assessment.scoring import CueScorer
    except ImportError:
        return None
    try:
        return CueScorer(explainer.mllm, load_cues().cues, batch_size=batch_size)
    except Exception:  # noqa: BLE001 - e.g. a chat template the scorer cannot continue: no cues, still a demo
        log.warning("demo: cue scoring is off: %s", sys.exc_info()[1])
        return None


# ---------------------------------------------------------------------------------------------- page
EXPERT_COLORS = ("#2e8b57", "#d98c00", "#7b52ab", "#1f9aa8")


def timeline_figure(timeline: list[dict[str, Any]] | None, segments: list[dict[str, Any]] | None = None,
                    threshold: float = 0.5):
    """p_fake per frame on one time axis (no pyplot: no global state between requests): the verdict's p_fake
    (the MLLM's, or the experts' mean in expert-only mode), each expert's, the explained frame (dotted line)
    and the manipulated segments (shaded)."""
    if not timeline:
        return None
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 2.6), dpi=100)
    ax = fig.add_subplot()
    timed = timeline[0].get("time_s") is not None
    xs = [f["time_s"] if timed and f.get("time_s") is not None else f.get("index", i) for i, f in enumerate(timeline)]
    ys = [f["p_fake"] if f.get("p_fake") is not None else float("nan") for f in timeline]
    for g in segments or []:
        if timed and g.get("start_s") is not None and g.get("end_s") is not None:
            ax.axvspan(g["start_s"], g["end_s"], color="#c9302c", alpha=0.13, lw=0,
                       label="manipulated segment" if g is segments[0] else None)
    ax.plot(xs, ys, marker="o", ms=3, color="#c9302c", label="verdict p_fake")
    names = sorted({k for f in timeline for k in (f.get("experts") or {})})
    for k, name in enumerate(names):
        vals = [(f.get("experts") or {}).get(name) for f in timeline]
        ax.plot(xs, [float("nan") if v is None else v for v in vals], ls="--", lw=1.2,
                color=EXPERT_COLORS[k % len(EXPERT_COLORS)], label=f"{name} (expert)")
    for x, f in zip(xs, timeline):
        if f.get("explained"):
            ax.axvline(x, color="#333", lw=1, ls=":", label="explained frame")
    ax.axhline(threshold, color="#999", lw=0.8, ls="--")
    ax.set_ylim(0, 1)
    ax.set_xlabel("time (s)" if timed else "frame")
    ax.set_ylabel("p_fake")
    ax.legend(loc="upper left", fontsize=7, ncol=4, frameon=False)
    fig.tight_layout()
    return fig


def plain_html(text: str | None) -> str:
    """Untrusted text for an HTML component: escaped, so it shows as the characters it is (never markup)."""
    return html.escape(safe_text(text or ""))


VERDICT_COLORS = {"fake": "#c9302c", "real": "#2a6fb0", "uncertain": "#d98c00", "undetermined": "#8a8a8a"}


def verdict_html(res: DemoResult) -> str:
    """The verdict at a glance: a coloured badge (three-way verdict), p_fake, and a disagreement badge."""
    rec = res.record
    if rec is None or not res.ok:
        return ""
    verdict = rec.verdict or rec.label
    band = rec.verdict_band or [0.35, 0.65]
    parts = [f'<span class="x2-badge" data-verdict="{verdict}" style="background:{VERDICT_COLORS.get(verdict, "#888")}">'
             f"{verdict.upper()}</span> <span class=\"x2-p\">p_fake {rec.p_fake:.3f}</span>",
             f'<span class="x2-note">label at threshold: {rec.label} · uncertain band {band[0]:g}–{band[1]:g}</span>']
    if rec.disagreement:
        pairs = "; ".join(f"{plain_html(d['a'])} {float(d['a_p']):.2f} vs {plain_html(d['b'])} {float(d['b_p']):.2f}"
                          for d in rec.disagreement)
        parts.append(f'<span class="x2-badge x2-disagree" style="background:#7b52ab">⚠ DISAGREEMENT</span> '
                     f'<span class="x2-note">{pairs}</span>')
    return "<div id='verdict-badges'>" + " ".join(parts) + "</div>"


def evidence_html(res: DemoResult) -> str:
    """The measured evidence as an escaped list (shown beside the model's own text)."""
    if not res.evidence:
        return ""
    items = "".join(f"<li>{plain_html(t)}</li>" for t in res.evidence)
    return f"<div class='x2-evidence'><strong>Measured evidence</strong><ul>{items}</ul></div>"


def segments_rows(res: DemoResult) -> list[list[Any]]:
    return [[g.get("start_s"), g.get("end_s"), g.get("peak_p_fake"), g.get("frames")] for g in res.segments]


def _safe_stem(name: str) -> str:
    import re

    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(name).stem).strip("._") or "upload"
    return stem[:60]


def explainer_run_info(explainer) -> dict[str, Any]:
    """The report header's values for the demo's own explainer."""
    from x2dfd.evidence import expert_infos

    opts = explainer.options
    infos = expert_infos(explainer)
    preset = getattr(getattr(explainer.mllm, "preset", None), "name", None) if explainer.mllm is not None else None
    return {"model": explainer.model_name, "adapter": explainer.adapter, "preset": preset,
            "mode": "mllm" if explainer.mllm is not None else "expert-only",
            "experts": [{"name": n, "sha256": i.get("sha256"), "weights": Path(str(i["weights"])).name if i.get("weights") else None}
                        for n, i in infos.items()],
            "threshold": opts.threshold, "band": "{:g},{:g}".format(*opts.band()), "aggregate": opts.aggregate}


def write_downloads(results: list[DemoResult], folder: str | os.PathLike, run: dict[str, Any] | None = None) -> list[str]:
    """The record(s) as JSON and a one-file HTML report of this request, in ``folder``; returns their paths."""
    import json

    from x2dfd.report import ReportAssets, render_report

    done = [r for r in results if r.records]
    if not done:
        return []
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    stem = _safe_stem(done[0].name) + (f"-and-{len(done) - 1}-more" if len(done) > 1 else "")
    records = [rec for r in done for rec in r.records]
    data = records[0].to_dict() if len(records) == 1 else [rec.to_dict() for rec in records]
    json_path = folder / f"{stem}.x2dfd.json"
    json_path.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    report_dir = folder / "report"
    assets = ReportAssets(report_dir)
    for r in done:
        for rec, art in zip(r.records, r.artifacts):
            assets.save(rec, art)
    index = render_report(records, report_dir, title=f"x2dfd: {done[0].name}" + (f" and {len(done) - 1} more" if len(done) > 1 else ""),
                          folder_labels=False, heatmaps=False, run=run, inline=True)
    html_path = folder / f"{stem}.report.html"
    html_path.write_bytes(index.read_bytes())
    return [str(json_path), str(html_path)]


def api_usage(url: str = "http://127.0.0.1:7860/") -> str:
    return f"""Call this page from a program (Gradio's client, `pip install gradio_client`):

```python
from gradio_client import Client, handle_file
client = Client("{url}")
result = client.predict([handle_file("face.jpg")], False, api_name="/explain")   # files, score cues
# with several systems loaded (--system NAME=SPEC): a third argument names the one to ask
```

The same pipeline without a server (Python, the records of `x2dfd explain`):

```python
from x2dfd import load_detector
detector = load_detector(mllm=None)                  # or model="./llava-1.5-7b-hf", adapter=...
for record in detector.explain(["face.jpg", "clip.mp4"]):
    print(record.verdict, record.p_fake, record.disagreement, [e["text"] for e in record.evidence])
```

Command line: `x2dfd explain photos/ --out results.jsonl --report report/`."""


class _ProgressRouter:
    """One callable on the shared explainer that sends each thread's progress to that request's bar."""

    def __init__(self):
        import threading

        self.local = threading.local()

    def __call__(self, stage: str, done: int, total: int) -> None:
        bar = getattr(self.local, "bar", None)
        if bar is not None:
            bar(stage, done, total)


def build_app(explainer, max_file_mb: float = 50.0, examples: list[str | os.PathLike] | None = None,
              cue_scorer=None, cue_top: int = 8, delete_uploads_after: int = 3600, downloads_dir: str | None = None):
    """The page (a ``gradio.Blocks``), wired to ``explainer``; call ``launch_app`` (or ``.launch``) to serve it.
    ``explainer`` may be a dict NAME -> explainer (``--system``): the page then offers a switch between them
    (``cue_scorer`` likewise a dict, or one scorer for the first). Uploads are deleted ``delete_uploads_after``
    seconds after they arrive (Gradio's ``delete_cache``)."""
    import tempfile

    import gradio as gr

    systems = dict(explainer) if isinstance(explainer, dict) else {"default": explainer}
    first = next(iter(systems))
    scorers = dict(cue_scorer) if isinstance(cue_scorer, dict) else {first: cue_scorer}
    router = _ProgressRouter()
    infos = {}
    for name, e in systems.items():
        e.progress = router
        infos[name] = explainer_run_info(e)
    downloads_root = Path(downloads_dir or tempfile.mkdtemp(prefix="x2dfd-demo-downloads-"))

    def run(paths, score_cues, system=None, progress=gr.Progress()):
        name_ = system if system in systems else first
        explainer, cue_scorer, run_info = systems[name_], scorers.get(name_), infos[name_]
        if isinstance(paths, (str, os.PathLike)):
            paths = [paths]
        paths = [str(getattr(p, "name", p)) for p in (paths or []) if p]
        results: list[DemoResult] = []
        n = max(1, len(paths))
        for k, path in enumerate(paths or [None]):
            name = Path(path).name if path else ""

            def bar(stage, done, total, k=k, name=name):
                what = "frames: faces found" if stage == "faces" else "faces judged"
                progress((k * total + done, n * total), desc=f"{safe_text(name)} ({k + 1}/{n}): {what} {done}/{total}",
                         unit="frames" if stage == "faces" else "faces")

            router.local.bar = bar
            try:
                results.append(analyze(explainer, path, bool(score_cues), max_file_mb=max_file_mb,
                                       cue_scorer=cue_scorer, cue_top=cue_top))
            finally:
                router.local.bar = None
        res = results[0]
        rec = res.record
        for r in results:
            if not r.ok and r.message and r.name:
                gr.Warning(html.escape(safe_text(r.message)))  # the toast renders HTML: the file name is shown as text
        label = {"fake": rec.p_fake, "real": 1.0 - rec.p_fake} if res.ok else None
        notes = [r.message for r in results if not r.ok] + ([f"Note: {rec.error}"] if res.ok and rec and rec.error else [])
        message = " ".join(notes)
        cues_visible = res.cues is not None
        rows = [row for r in results for row in (r.face_rows() if r.records else [[safe_text(r.name), "–", "–", None, "–", r.message]])]
        gallery = [(r.annotated if r.annotated is not None else r.face,
                    f"{safe_text(r.name)}: {(r.record.verdict or r.record.label) if r.record else 'no verdict'}"
                    + (f" {r.p_fake:.2f}" if r.p_fake is not None else ""))
                   for r in results if (r.annotated is not None or r.face is not None)]
        try:
            folder = tempfile.mkdtemp(dir=downloads_root)
            files = write_downloads(results, folder, run_info)
        except Exception:  # noqa: BLE001 - the downloads are extras
            log.exception("demo: downloads failed")
            files = []
        return (
            gr.update(value=verdict_html(res)),
            gr.update(value=plain_html(message)),
            label,
            res.explanation,
            res.face,
            res.heatmap,
            res.experts or None,
            gr.update(value=[[c[2], c[0], c[1]] for c in res.cues] if res.cues else None,
                      visible=cues_visible and bool(res.cues)),
            gr.update(value=res.cue_note or "", visible=bool(res.cue_note)),
            gr.update(value=timeline_figure(res.timeline, res.segments, explainer.options.threshold),
                      visible=bool(res.timeline)),
            gr.update(value=evidence_html(res)),
            gr.update(value=res.annotated, visible=res.annotated is not None),
            gr.update(value=rows if any(r.records for r in results) or len(results) > 1 else None),
            gr.update(value=segments_rows(res) or None, visible=bool(res.timeline)),
            gr.update(value=files or None),
            gr.update(value=gallery or None, visible=len(gallery) > 1),
        )

    age = int(delete_uploads_after)
    with gr.Blocks(title="x2dfd: explainable deepfake detection", analytics_enabled=False,
                   delete_cache=(max(1, min(age, 300)), age)) as app:
        gr.Markdown("# x2dfd: is this face real or fake, where, and why?\n"
                    f"Upload face images or short videos ({_allowed()}, up to {max_file_mb:g} MB each; several at once "
                    "are fine). Every face in an image is judged. p_fake is read from the model's logits (expert-only: "
                    "the experts' mean); **uncertain** means p_fake lies in the uncertain band; the measured "
                    "evidence rests only on numbers in the record.")
        with gr.Row():
            with gr.Column(scale=1):
                upload = gr.File(label="Images or videos", file_types=sorted(MEDIA_EXTS), type="filepath",
                                 file_count="multiple", elem_id="upload")
                choice = gr.Dropdown(choices=list(systems), value=first, label="System (loaded presets / models)",
                                     visible=len(systems) > 1, elem_id="system")
                any_scorer = any(v is not None for v in scorers.values())
                score = gr.Checkbox(label="Score forgery cues (slower: one yes/no question per cue)", value=False,
                                    visible=any_scorer, elem_id="score-cues")
                if not any_scorer:
                    gr.Markdown("Cue scoring is off in this demo (it needs an MLLM and `feature_assessment`).",
                                elem_id="cues-off")
                button = gr.Button("Explain", variant="primary", elem_id="explain")
                if examples:
                    gr.Examples(examples=[[[str(p)]] for p in examples], inputs=[upload], label="Examples (made by x2dfd)")
                downloads = gr.File(label="Download: the record (JSON) and a one-file HTML report", interactive=False,
                                    file_count="multiple", elem_id="downloads")
                with gr.Accordion("Use it from a program (API)", open=False, elem_id="api-usage"):
                    api_md = gr.Markdown(api_usage())
            with gr.Column(scale=2):
                verdict = gr.HTML(elem_id="verdict")
                message = gr.HTML(elem_id="message")  # plain text (escaped): file names are not markup
                label = gr.Label(label="Verdict", num_top_classes=2, elem_id="verdict-label")
                with gr.Row():
                    explanation = gr.Textbox(label="Explanation (the model's own text)", lines=5, interactive=False,
                                             elem_id="explanation",
                                             visible=any(e.mllm is not None for e in systems.values()))
                    evidence = gr.HTML(elem_id="evidence")
                annotated = gr.Image(label="Faces found (boxes coloured by p_fake: blue real, red fake)", type="pil",
                                     interactive=False, height=300, visible=False, elem_id="annotated")
                faces = gr.Dataframe(headers=["file", "face", "verdict", "p_fake", "experts", "disagreement"],
                                     label="Every face judged", interactive=False, wrap=True, elem_id="faces")
                gallery = gr.Gallery(label="All uploads", visible=False, columns=4, height=220, elem_id="gallery")
                with gr.Row():
                    face = gr.Image(label="Face crop", type="pil", interactive=False, height=240, elem_id="face")
                    heat = gr.Image(label="Blending heatmap over the face (scale: 0 no blending … 1 blended)", type="pil",
                                    interactive=False, height=240, elem_id="heatmap")
                experts = gr.Dataframe(headers=["expert", "p_fake"], label="Expert scores", interactive=False,
                                       elem_id="experts")
                cues = gr.Dataframe(headers=["P(yes)", "cue", "evidence"], label="Forgery cues, highest P(yes) first",
                                    interactive=False, visible=False, wrap=True, column_widths=["12%", "30%", "58%"],
                                    elem_id="cues")
                cue_note = gr.Markdown(visible=False, elem_id="cue-note")
                timeline = gr.Plot(label="p_fake per sampled frame: verdict and experts, segments shaded", visible=False,
                                   elem_id="timeline")
                segments = gr.Dataframe(headers=["start (s)", "end (s)", "peak p_fake", "frames"],
                                        label="Manipulated segments", interactive=False, visible=False, elem_id="segments")
        outputs = [verdict, message, label, explanation, face, heat, experts, cues, cue_note, timeline, evidence,
                   annotated, faces, segments, downloads, gallery]
        upload.change(run, inputs=[upload, score, choice], outputs=outputs, api_visibility="private")
        button.click(run, inputs=[upload, score, choice], outputs=outputs, api_name="explain")

        def show_url(request: gr.Request):
            try:
                base = str(request.base_url) or None
            except Exception:  # noqa: BLE001 - the default address is shown instead
                base = None
            return api_usage(base or "http://127.0.0.1:7860/")

        show_url.__annotations__ = {"request": gr.Request}  # this module's annotations are strings ("gr" is local)

        app.load(show_url, None, api_md, api_visibility="private")
    app.x2dfd_run = run  # the wired handler, for tests that drive the page's function directly
    return app


def launch_app(app, host: str = "127.0.0.1", port: int = 7860, max_file_mb: float = 50.0, concurrency: int = 1,
               queue_size: int = 32, examples_dir: str | None = None, block: bool = True, quiet: bool = False,
               auth: tuple[str, str] | None = None):
    """Queue and serve the page; with ``block=False`` return at once (tests, notebooks). Gradio's own start-up
    lines (and its "set share=True" hint: the demo never opens a public tunnel) are replaced by ours:
    the URL, and a warning when ``host`` is not a loopback address."""
    app.queue(default_concurrency_limit=concurrency, max_size=queue_size)
    warning = exposure_warning(host, port, auth is not None)
    if warning:
        print(warning, file=sys.stderr)
        log.warning(warning)
    result = app.launch(server_name=host, server_port=port, max_file_size=int(max_file_mb * 1024 * 1024),
                        show_error=False, prevent_thread_lock=True, quiet=True, ssr_mode=False, css=CSS,
                        footer_links=[], allowed_paths=[examples_dir] if examples_dir else None, share=False,
                        auth=auth)
    if not quiet:
        url = getattr(app, "local_url", None) or f"http://{host}:{port}/"
        print(f"x2dfd demo: serving on {url}{' (login required)' if auth else ''}; Ctrl-C stops it", file=sys.stderr)
    if block:
        app.block_thread()
    return result


def main(argv: list[str] | None = None) -> int:
    from x2dfd.cliargs import parse_config
    from x2dfd.explain import build_explainer

    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    cfg = parse_config(DemoConfig, argv, prog="x2dfd demo")
    if cfg.system:  # several setups, each loaded once; the page switches between them
        from x2dfd.api import build_explainer as build
        from x2dfd.evaluate import parse_system_specs

        explainer = {spec.name: build(spec.options, spec.expert_specs, cfg, device=cfg.device)
                     for spec in parse_system_specs(cfg)}
        scorers = {name: build_cue_scorer(e, cfg.batch_size * 4) for name, e in explainer.items()}
    else:
        explainer = build_explainer(cfg)  # loaded once; every request reuses it
        scorers = build_cue_scorer(explainer, cfg.batch_size * 4)
    examples: list[Path] = []
    if cfg.examples:
        from x2dfd.demo.examples import make_examples

        try:
            examples = make_examples(cfg.examples_dir, cfg.examples_from)
        except Exception as err:  # noqa: BLE001 - examples are a convenience; the demo works without them
            log.warning("demo: no examples: %s", one_line(f"{type(err).__name__}: {err}"))
    app = build_app(explainer, max_file_mb=cfg.max_file_mb, examples=examples,
                    cue_scorer=scorers, cue_top=cfg.cue_top,
                    delete_uploads_after=cfg.delete_uploads_after)
    launch_app(app, cfg.host, cfg.port, cfg.max_file_mb, cfg.concurrency, cfg.queue_size,
               examples_dir=cfg.examples_dir if examples else None, auth=cfg.auth_pair())
    return 0
