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
    all_faces: bool = field(default=False, metadata={"cli": False})
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
@dataclass
class DemoResult:
    """Everything the page shows for one upload (plain data: the handler is testable without Gradio)."""

    ok: bool
    message: str  # one line: the verdict, or what went wrong and what to do
    record: Record | None = None
    face: Any = None  # PIL image
    heatmap: Any = None  # PIL image: the heatmap over the face
    experts: list[list[Any]] = field(default_factory=list)  # [expert, p_fake or "N/A"]
    cues: list[list[Any]] | None = None  # [cue id, evidence, P(yes)]; None when not requested
    cue_note: str | None = None
    timeline: list[dict[str, Any]] | None = None  # video: [{"index", "time_s", "p_fake"}]

    @property
    def verdict(self) -> str | None:
        return self.record.label if self.record is not None else None

    @property
    def p_fake(self) -> float | None:
        return self.record.p_fake if self.record is not None else None

    @property
    def explanation(self) -> str:
        return (self.record.explanation or "") if self.record is not None else ""


def _allowed() -> str:
    return f"images ({', '.join(sorted(IMAGE_EXTS))}) or videos ({', '.join(sorted(VIDEO_EXTS))})"


def analyze(explainer, path: str | os.PathLike | None, score_cues: bool = False, *, max_file_mb: float = 50.0,
            cue_scorer=None, cue_top: int = 8) -> DemoResult:
    """Explain one uploaded file. Never raises: every failure is a result with a one-line message."""
    from x2dfd.report import overlay_heatmap

    if path is None or str(path) == "":
        return DemoResult(False, "Upload a face image or a video to see its verdict.")
    path = str(path)
    name = Path(path).name
    if Path(path).suffix.lower() not in MEDIA_EXTS:
        return DemoResult(False, f"'{name}' is not a file type the demo reads: upload {_allowed()}.")
    try:
        size_mb = Path(path).stat().st_size / 1e6
    except OSError as err:
        return DemoResult(False, f"'{name}' could not be read ({err.strerror or err}); upload it again.")
    if size_mb > max_file_mb:
        return DemoResult(False, f"'{name}' is {size_mb:.1f} MB; the demo accepts files up to {max_file_mb:g} MB.")
    try:
        record, artifacts = next(iter(explainer.run_with_artifacts([path])))
    except Exception as err:  # noqa: BLE001 - the page boundary: log the cause, show one line
        log.exception("demo: analysing %s failed", safe_text(path))
        cause = one_line(f"{type(err).__name__}: {err}", 300).replace(path, name)
        return DemoResult(False, f"'{name}' could not be analysed: {cause}")
    # the server's temp path means nothing to the visitor (and is none of their business)
    record.path = name
    if record.error:
        record.error = record.error.replace(path, name)

    result = DemoResult(ok=record.p_fake is not None, message="", record=record)
    result.experts = [[k, "N/A" if v is None else round(float(v), 4)] for k, v in record.experts.items()]
    if artifacts.face is not None:
        result.face = artifacts.face
        if artifacts.heatmap is not None:
            try:
                result.heatmap = overlay_heatmap(artifacts.face, artifacts.heatmap)
            except Exception:  # noqa: BLE001 - a missing picture must not cost the verdict
                log.exception("demo: heatmap overlay failed")
    if record.kind == "video" and record.frames:
        result.timeline = [{"index": f.get("index"), "time_s": f.get("time_s"), "p_fake": f.get("p_fake")}
                           for f in record.frames]
    if record.p_fake is None:
        result.message = f"No verdict for '{name}': {record.error or 'nothing could score it'}"
        return result
    what = "video" if record.kind == "video" else "image"
    result.message = f"This {what} looks {record.label.upper()}: p_fake = {record.p_fake:.3f}"
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
def timeline_figure(timeline: list[dict[str, Any]] | None):
    """A small matplotlib figure (no pyplot: no global state between requests) of p_fake per frame."""
    if not timeline:
        return None
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 2.2), dpi=100)
    ax = fig.add_subplot()
    xs = [f["time_s"] if f.get("time_s") is not None else f.get("index", i) for i, f in enumerate(timeline)]
    ys = [f["p_fake"] if f.get("p_fake") is not None else float("nan") for f in timeline]
    ax.plot(xs, ys, marker="o", ms=3, color="#c9302c")
    ax.axhline(0.5, color="#999", lw=0.8, ls="--")
    ax.set_ylim(0, 1)
    ax.set_xlabel("time (s)" if timeline[0].get("time_s") is not None else "frame")
    ax.set_ylabel("p_fake")
    fig.tight_layout()
    return fig


def plain_html(text: str | None) -> str:
    """Untrusted text for an HTML component: escaped, so it shows as the characters it is (never markup)."""
    return html.escape(safe_text(text or ""))


def build_app(explainer, max_file_mb: float = 50.0, examples: list[str | os.PathLike] | None = None,
              cue_scorer=None, cue_top: int = 8, delete_uploads_after: int = 3600):
    """The page (a ``gradio.Blocks``), wired to ``explainer``; call ``launch_app`` (or ``.launch``) to serve it.
    Uploads are deleted ``delete_uploads_after`` seconds after they arrive (Gradio's ``delete_cache``)."""
    import gradio as gr

    def run(path, score_cues):
        res = analyze(explainer, path, bool(score_cues), max_file_mb=max_file_mb, cue_scorer=cue_scorer,
                      cue_top=cue_top)
        rec = res.record
        if not res.ok and path:
            gr.Warning(html.escape(safe_text(res.message)))  # the toast renders HTML: the file name is shown as text
        verdict = (f"## {rec.label.upper()} · p_fake {rec.p_fake:.3f}" if res.ok else "") if rec else ""
        label = {"fake": rec.p_fake, "real": 1.0 - rec.p_fake} if res.ok else None
        message = "" if res.ok and not (rec and rec.error) else res.message
        if res.ok and rec and rec.error:
            message = f"Note: {rec.error}"
        cues_visible = res.cues is not None
        return (
            gr.update(value=verdict),
            gr.update(value=plain_html(message)),
            label,
            res.explanation,
            res.face,
            res.heatmap,
            res.experts or None,
            gr.update(value=[[c[2], c[0], c[1]] for c in res.cues] if res.cues else None,
                      visible=cues_visible and bool(res.cues)),
            gr.update(value=res.cue_note or "", visible=bool(res.cue_note)),
            gr.update(value=timeline_figure(res.timeline), visible=bool(res.timeline)),
        )

    age = int(delete_uploads_after)
    with gr.Blocks(title="x2dfd: explainable deepfake detection", analytics_enabled=False,
                   delete_cache=(max(1, min(age, 300)), age)) as app:
        gr.Markdown("# x2dfd: is this face real or fake, and why?\n"
                    f"Upload a face image or a short video ({_allowed()}, up to {max_file_mb:g} MB). "
                    "The verdict's p_fake is read from the model's logits; the explanation is the model's own text.")
        with gr.Row():
            with gr.Column(scale=1):
                upload = gr.File(label="Image or video", file_types=sorted(MEDIA_EXTS), type="filepath",
                                 elem_id="upload")
                score = gr.Checkbox(label="Score forgery cues (slower: one yes/no question per cue)", value=False,
                                    visible=cue_scorer is not None, elem_id="score-cues")
                if cue_scorer is None:
                    gr.Markdown("Cue scoring is off in this demo (it needs an MLLM and `feature_assessment`).",
                                elem_id="cues-off")
                button = gr.Button("Explain", variant="primary", elem_id="explain")
                if examples:
                    gr.Examples(examples=[[str(p)] for p in examples], inputs=[upload], label="Examples (made by x2dfd)")
            with gr.Column(scale=2):
                verdict = gr.Markdown(elem_id="verdict")
                message = gr.HTML(elem_id="message")  # plain text (escaped): file names are not markup
                label = gr.Label(label="Verdict", num_top_classes=2, elem_id="verdict-label")
                explanation = gr.Textbox(label="Explanation", lines=5, interactive=False, elem_id="explanation")
                with gr.Row():
                    face = gr.Image(label="Face crop", type="pil", interactive=False, height=240, elem_id="face")
                    heat = gr.Image(label="Blending heatmap over the face", type="pil", interactive=False, height=240,
                                    elem_id="heatmap")
                experts = gr.Dataframe(headers=["expert", "p_fake"], label="Expert scores", interactive=False,
                                       elem_id="experts")
                cues = gr.Dataframe(headers=["P(yes)", "cue", "evidence"], label="Forgery cues, highest P(yes) first",
                                    interactive=False, visible=False, wrap=True, column_widths=["12%", "30%", "58%"],
                                    elem_id="cues")
                cue_note = gr.Markdown(visible=False, elem_id="cue-note")
                timeline = gr.Plot(label="p_fake per sampled frame", visible=False, elem_id="timeline")
        outputs = [verdict, message, label, explanation, face, heat, experts, cues, cue_note, timeline]
        upload.change(run, inputs=[upload, score], outputs=outputs)
        button.click(run, inputs=[upload, score], outputs=outputs)
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
    explainer = build_explainer(cfg)  # loaded once; every request reuses it
    examples: list[Path] = []
    if cfg.examples:
        from x2dfd.demo.examples import make_examples

        try:
            examples = make_examples(cfg.examples_dir, cfg.examples_from)
        except Exception as err:  # noqa: BLE001 - examples are a convenience; the demo works without them
            log.warning("demo: no examples: %s", one_line(f"{type(err).__name__}: {err}"))
    app = build_app(explainer, max_file_mb=cfg.max_file_mb, examples=examples,
                    cue_scorer=build_cue_scorer(explainer, cfg.batch_size * 4), cue_top=cfg.cue_top,
                    delete_uploads_after=cfg.delete_uploads_after)
    launch_app(app, cfg.host, cfg.port, cfg.max_file_mb, cfg.concurrency, cfg.queue_size,
               examples_dir=cfg.examples_dir if examples else None, auth=cfg.auth_pair())
    return 0
