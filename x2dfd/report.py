"""``x2dfd report``: a self-contained HTML report and a CSV of explain records.

    x2dfd report results.jsonl --out report/                 # (re-)render from a JSONL file
    x2dfd report results.jsonl --out report/ --labels truth.csv --title "Batch 7"

    assets = ReportAssets("report/")                          # while explaining (x2dfd explain --report DIR)
    for record, artifacts in explainer.run_with_artifacts(paths):
        assets.save(record, artifacts)
    render_report("results.jsonl", "report/")

What DIR holds (it works from ``file://``, copied anywhere, with no network):

* ``index.html``: summary (counts, verdict distribution, p_fake histogram; AUC / AP / EER and the ROC
  curve when true labels are known) and a table that sorts (p_fake, verdict, name), filters (verdict,
  error / no error, free text) and pages through every record;
* ``records.js``: the table's rows as data (``window.X2DFD_REPORT = {...}``), so a 10,000-item batch
  is one small page plus one data file, not 10,000 rendered rows;
* ``records.csv``: one row per record;
* ``assets/``: small JPEGs per record, named ``<key>.thumb.jpg`` (the input), ``<key>.face.jpg`` (the
  face crop the verdict is about) and ``<key>.heat.jpg`` (the expert's heatmap over the face), with
  ``key = sha256[:16]`` (+ ``-face<i>`` with ``--all-faces``, + ``-frame<n>`` for a video's explained
  frame). Images are loaded lazily.

File names, explanations, cue phrases and errors are untrusted text: the page is rendered by jinja2
with autoescaping, the data file escapes ``<``, ``>`` and ``&``, and the table script only ever sets
``textContent``. CSV cells that a spreadsheet would read as a formula get a leading ``'``.

True labels (for the metrics), first match wins: the ``labels`` mapping (``--labels FILE.csv`` with
columns ``path,label``; label 0/1 or real/fake); a ``label_true`` field in the JSON line; the folder
convention: the nearest parent directory named ``real``/``fake`` (or ``0_real``/``1_fake``).
``--labels none`` turns the folder convention off.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from markupsafe import Markup

from x2dfd import __version__
from x2dfd.errors import EXIT_INPUTS_FAILED, EXIT_OK, OutputError, UsageError
from x2dfd.records import RECORD_PREFIX, Record, jsonl_lines, one_line, os_reason, safe_text, terminal_line

TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"
ASSET_SIZE = 192  # px, longest side of every asset: table cells show them at ~96 px, 2x for HiDPI
HEAT_ALPHA = 0.45
HEAT_COLORMAP = "jet"
FOLDER_LABELS = {"real": 0, "fake": 1, "0_real": 0, "1_fake": 1}
HIST_BINS = 20
_HEX = re.compile(r"[0-9a-f]{16,64}")  # a JSONL line is untrusted: its sha256 names files only if it is hex


# ---------------------------------------------------------------------------------------------- assets
def asset_key(record: Record) -> str:
    """Deterministic, file-name-safe key of a record's pictures: content hash (+ face index, + frame)."""
    digest = record.sha256 if isinstance(record.sha256, str) and _HEX.fullmatch(record.sha256 or "") else None
    key = (digest or hashlib.sha256(str(record.path).encode("utf-8", "surrogatepass")).hexdigest())[:16]
    if record.face_index is not None:
        key += f"-face{int(record.face_index)}"
    frame = explained_frame(record)
    if frame is not None:
        key += f"-frame{int(frame['index'])}"
    return key


def explained_frame(record: Record) -> dict[str, Any] | None:
    """The video frame whose face the verdict's explanation is about (None for images)."""
    for f in record.frames or []:
        if f.get("explained"):
            return f
    return None


def overlay_heatmap(face, heatmap, alpha: float = HEAT_ALPHA, colormap: str = HEAT_COLORMAP):
    """The heatmap (float HxW in [0, 1]) in a colormap, alpha-blended over the face (PIL RGB)."""
    import numpy as np
    from matplotlib import colormaps
    from PIL import Image

    face = face.convert("RGB")
    heat = np.nan_to_num(np.asarray(heatmap, dtype=np.float32), nan=0.0)
    if heat.ndim != 2:
        raise ValueError(f"heatmap must be 2-D, got shape {heat.shape}")
    if heat.shape != (face.height, face.width):
        heat = np.asarray(Image.fromarray(heat, mode="F").resize(face.size, Image.BILINEAR))
    rgb = colormaps[colormap](np.clip(heat, 0.0, 1.0))[..., :3]
    blended = (1.0 - alpha) * np.asarray(face, dtype=np.float32) / 255.0 + alpha * rgb
    return Image.fromarray((np.clip(blended, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8))


def _small(image, size: int = ASSET_SIZE):
    image = image.convert("RGB")
    if max(image.size) > size:
        image = image.copy()
        image.thumbnail((size, size))
    return image


def _open_image(path: str):
    """The input as RGB; through x2dfd.media when it is there (same limits and EXIF handling as explain)."""
    try:
        from x2dfd.media import load_image
    except ImportError:
        load_image = None
    if load_image is not None:
        return load_image(path)
    from PIL import Image, ImageOps

    with Image.open(path) as im:
        im.draft("RGB", (ASSET_SIZE * 4, ASSET_SIZE * 4))  # JPEG: decode at reduced scale, thumbnails only
        return ImageOps.exif_transpose(im).convert("RGB")


def _read_video_frame(path: str, index: int):
    import cv2
    from PIL import Image

    cap = cv2.VideoCapture(path)
    try:
        if not cap.isOpened():
            return None
        cap.set(cv2.CAP_PROP_POS_FRAMES, int(index))
        ok, bgr = cap.read()
        return Image.fromarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)) if ok else None
    finally:
        cap.release()


def _crop(image, face: dict[str, Any] | None, scale: float = 1.3):
    """Re-crop the face from the source: the record's ``face['crop_box']`` (x0, y0, x1, y1); without one, a
    square of ``scale`` x the detector ``box`` around its centre (explain's default crop); no face info:
    the whole image (inputs explained with --no-face-crop)."""
    if face is None:
        return image
    box = face.get("crop_box")
    if not box and face.get("box"):
        x0, y0, x1, y1 = (float(v) for v in face["box"][:4])
        cx, cy, half = (x0 + x1) / 2, (y0 + y1) / 2, max(x1 - x0, y1 - y0) * scale / 2
        box = (cx - half, cy - half, cx + half, cy + half)
    if not box:
        return None
    x0, y0, x1, y1 = (int(round(float(v))) for v in box[:4])
    return image.crop((x0, y0, x1, y1))  # PIL pads outside the image with black, like a border crop


REPORT_FILES = {"index.html": b"x2dfd", "records.js": b"window.X2DFD_REPORT", "records.csv": b"path,name,",
                "report.config.json": b'"command": "report"'}


def check_report_dir(out_dir: str | os.PathLike) -> None:
    """Refuse to write a report into a folder that holds anything but an earlier x2dfd report: the report's
    files (index.html, records.js, ...) would overwrite files of the same name that are not ours."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UsageError(f"report folder '{safe_text(out)}' is a file; give a new or empty folder")
    if not out.is_dir():
        return
    try:
        entries = sorted(out.iterdir())
    except OSError as err:
        raise OutputError(f"cannot read the report folder '{safe_text(out)}': {os_reason(err)}") from None
    foreign = []
    for e in entries:
        name = e.name[:-4] if e.name.endswith(".tmp") else e.name
        if name == "assets" and e.is_dir():
            continue
        marker = REPORT_FILES.get(name)
        if marker is None and e.is_file():  # x2dfd's own run files may share the folder (--out DIR/results.jsonl)
            marker = (RECORD_PREFIX if name.endswith(".jsonl") else b'"command"' if name.endswith(".json")
                      else b"" if name.endswith(".lock") else None)
        if marker is None or not e.is_file():
            foreign.append(e.name)
            continue
        if e.name.endswith(".tmp"):
            continue
        try:
            with open(e, "rb") as fh:
                head = fh.read(8192)
        except OSError:
            head = b""
        if marker not in head and not (name.endswith(".jsonl") and not head):  # an empty JSONL: a run starting
            foreign.append(e.name)
    if foreign:
        shown = ", ".join(f"'{safe_text(n)}'" for n in foreign[:3]) + (" ..." if len(foreign) > 3 else "")
        raise UsageError(f"report folder '{safe_text(out)}' holds files that are not an x2dfd report ({shown}); "
                         "x2dfd never overwrites files it did not write: give a new or empty folder")


class ReportAssets:
    """Writes (and finds, and regenerates) the small pictures behind each record under ``out_dir/assets``.

    ``experts``: ``{name: spec}`` of the experts to load (``NAME`` or ``NAME=WEIGHTS``) when a heatmap has
    to be recomputed for a re-rendered report; None: heatmaps are never recomputed."""

    KINDS = ("thumb", "face", "heat")

    def __init__(self, out_dir: str | os.PathLike, size: int = ASSET_SIZE, alpha: float = HEAT_ALPHA,
                 colormap: str = HEAT_COLORMAP, experts: dict[str, str] | None = None):
        self.expert_specs = experts
        self._experts: dict[str, Any] = {}
        self.out_dir = Path(out_dir)
        self.dir = self.out_dir / "assets"
        self.size = size
        self.alpha = alpha
        self.colormap = colormap

    def paths(self, record: Record) -> dict[str, Path]:
        key = asset_key(record)
        return {kind: self.dir / f"{key}.{kind}.jpg" for kind in self.KINDS}

    def save(self, record: Record, artifacts) -> None:
        """Write the thumbnail, face crop and heatmap overlay of one record (what exists of them).

        Never raises: a picture that cannot be made is left out and the report shows a placeholder."""
        self.dir.mkdir(parents=True, exist_ok=True)
        paths = self.paths(record)
        face = getattr(artifacts, "face", None)
        heatmap = getattr(artifacts, "heatmap", None)
        try:
            if face is not None:
                self._write(face, paths["face"])
                if heatmap is not None:
                    self._write(overlay_heatmap(_small(face, 4 * self.size), heatmap, self.alpha, self.colormap),
                                paths["heat"])
        except Exception as err:  # noqa: BLE001 - a picture must never cost the record
            _warn(f"report: no face picture for '{record.path}': {type(err).__name__}: {err}")
        try:
            thumb = getattr(artifacts, "frame_image", None)  # the explained video frame, where the pipeline gives it
            if thumb is None:
                thumb = self._thumbnail_source(record, getattr(artifacts, "frame_index", None))
            if thumb is None:
                thumb = face
            if thumb is not None:
                self._write(thumb, paths["thumb"])
        except Exception:  # noqa: BLE001 - e.g. the input is not decodable: its record already says why
            if face is not None:
                self._write(face, paths["thumb"])

    def ensure(self, record: Record) -> dict[str, str | None]:
        """Relative URLs of the record's pictures; a missing thumbnail, face crop or heatmap is regenerated from
        the source file when it still exists (the heatmap by the record's expert, when ``experts`` allows)."""
        paths = self.paths(record)
        want_heat = self.expert_specs is not None and not paths["heat"].is_file() and bool(record.experts)
        if (not (paths["thumb"].is_file() and paths["face"].is_file()) or want_heat) and record.error is None:
            self._regenerate(record, paths, want_heat)
        return {kind: (f"assets/{p.name}" if p.is_file() else None) for kind, p in paths.items()}

    # ------------------------------------------------------------------------------------------ internals
    def _write(self, image, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        _small(image, self.size).save(tmp, format="JPEG", quality=82)
        os.replace(tmp, path)  # a reader never sees half a file

    def _thumbnail_source(self, record: Record, frame_index: int | None):
        if not Path(record.path).is_file():
            return None
        if record.kind == "video":
            frame = explained_frame(record)
            index = frame_index if frame_index is not None else (frame or {}).get("index")
            return None if index is None else _read_video_frame(record.path, index)
        return _open_image(record.path)

    def _regenerate(self, record: Record, paths: dict[str, Path], heat: bool = False) -> None:
        try:
            source = self._thumbnail_source(record, None)
            if source is None:
                return
            face_info = record.face
            if record.kind == "video":
                face_info = (explained_frame(record) or {}).get("face") or record.face
            if not paths["thumb"].is_file():
                self._write(source, paths["thumb"])
            face = _crop(source, face_info)
            if face is not None and not paths["face"].is_file():
                self._write(face, paths["face"])
            if heat and face is not None:
                heatmap = self._heatmap(record, face)
                if heatmap is not None:
                    self._write(overlay_heatmap(_small(face, 4 * self.size), heatmap, self.alpha, self.colormap),
                                paths["heat"])
        except Exception as err:  # noqa: BLE001 - one bad source file must not stop the report
            _warn(f"report: cannot regenerate pictures of '{record.path}': {type(err).__name__}: {err}")

    def _heatmap(self, record: Record, face):
        """The first of the record's experts that can localize, run again on the re-cropped face."""
        for name in record.experts:
            expert = self._expert(str(name))
            if expert is None or getattr(expert, "localize", None) is None:
                continue
            try:
                [heatmap] = expert.localize([face.convert("RGB")])
            except NotImplementedError:
                continue
            if heatmap is not None:
                return heatmap
        return None

    def _expert(self, name: str):
        if name not in self._experts:
            self._experts[name] = None
            spec = (self.expert_specs or {}).get(name, name)
            try:
                from x2dfd.api import load_experts

                [self._experts[name]] = load_experts([spec], device="cpu")
            except Exception as err:  # noqa: BLE001 - no heatmap, the rest of the report stands
                _warn(f"report: no heatmaps from expert '{name}': {type(err).__name__}: {err}")
        return self._experts[name]


def _warn(message: str) -> None:
    print(terminal_line(message), file=sys.stderr)


# ---------------------------------------------------------------------------------------------- records
def load_records(jsonl: str | os.PathLike) -> tuple[list[Record], list[dict[str, Any]]]:
    """Records of a JSONL file and each line's raw dict (extra fields such as ``label_true`` live there).

    Lines are split on "\\n" only (a U+2028 or "\\r" inside a file name or an explanation is text, not a
    line break). A line that is not a record (truncated by an interrupted run, hand-edited) becomes an
    error record named after its line, so it shows in the report instead of stopping it. For an input
    recorded more than once (a retried item), the last line wins."""
    path = Path(jsonl)
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as err:
        raise UsageError(f"cannot read '{safe_text(jsonl)}': {err.strerror or err}") from err
    latest: dict[tuple, tuple[Record, dict[str, Any]]] = {}
    for lineno, raw_line in enumerate(jsonl_lines(data), 1):
        line = raw_line.decode("utf-8", errors="replace")
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
            if not isinstance(raw, dict):
                raise ValueError(f"a JSON {type(raw).__name__}, not an object")
            record = Record.from_dict(raw)
            key = (record.path, record.face_index)
        except (ValueError, TypeError) as err:
            raw = {"\0bad_line": lineno}
            record = Record.failed(f"{path.name}:{lineno}", f"line {lineno} of '{path}' is not a record: {err}")
            key = ("\0line", lineno)
        latest.pop(key, None)  # re-insert: keep the order of the last occurrence
        latest[key] = (record, raw)
    pairs = list(latest.values())
    return [r for r, _ in pairs], [raw for _, raw in pairs]


_NUM = (int, float)


def _problem(r: Record) -> str | None:
    """Why a record (from a hand-edited or foreign JSONL) cannot be shown as it is, or None."""
    def num(v: Any) -> bool:
        return isinstance(v, _NUM) and not isinstance(v, bool) and math.isfinite(v)

    checks = [
        ("path", isinstance(r.path, str)),
        ("p_fake", r.p_fake is None or (num(r.p_fake) and 0.0 <= r.p_fake <= 1.0)),
        ("kind", r.kind in ("image", "video")),
        ("explanation", r.explanation is None or isinstance(r.explanation, str)),
        ("error", r.error is None or isinstance(r.error, str)),
        ("experts", isinstance(r.experts, dict) and all(v is None or num(v) for v in r.experts.values())),
        ("cues", isinstance(r.cues, list) and all(isinstance(c, dict) for c in r.cues)),
        ("frames", r.frames is None or (isinstance(r.frames, list) and all(
            isinstance(f, dict) and (f.get("p_fake") is None or num(f["p_fake"])) for f in r.frames))),
        ("face", r.face is None or isinstance(r.face, dict)),
        ("face_index", r.face_index is None or (isinstance(r.face_index, int) and not isinstance(r.face_index, bool))),
        ("verdict_band", r.verdict_band is None or (isinstance(r.verdict_band, list) and len(r.verdict_band) == 2
                                                    and all(num(v) for v in r.verdict_band))),
        ("disagreement", isinstance(r.disagreement, list) and all(
            isinstance(d, dict) and isinstance(d.get("a"), str) and isinstance(d.get("b"), str)
            and num(d.get("a_p")) and num(d.get("b_p")) for d in r.disagreement)),
        ("evidence", isinstance(r.evidence, list) and all(
            isinstance(e, dict) and isinstance(e.get("text"), str) for e in r.evidence)),
        ("segments", r.segments is None or (isinstance(r.segments, list) and all(
            isinstance(g, dict) and all(g.get(k) is None or num(g.get(k)) for k in ("start_s", "end_s", "peak_p_fake"))
            for g in r.segments))),
    ]
    bad = [name for name, ok in checks if not ok]
    return f"the record's field(s) {', '.join(bad)} have values x2dfd never writes" if bad else None


def sanitize(record: Record) -> Record:
    """The record itself, or an ``undetermined`` error record saying which fields are malformed."""
    problem = _problem(record)
    if problem is None:
        return record
    return Record.failed(str(record.path), f"cannot show this record: {problem}",
                         sha256=record.sha256 if isinstance(record.sha256, str) else None)


def read_labels_csv(path: str | os.PathLike) -> dict[str, int]:
    """``path,label`` rows (label 0/1 or real/fake; a header row is allowed) -> {path: 0|1}."""
    out: dict[str, int] = {}
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            for row in csv.reader(fh):
                if len(row) < 2 or not row[0].strip():
                    continue
                label = _as_label(row[1])
                if label is None:
                    if not out and row[0].strip().lower() == "path":
                        continue  # header
                    raise UsageError(f"--labels {path}: label '{row[1]}' for '{row[0]}' is not 0, 1, real or fake")
                out[row[0].strip()] = label
    except OSError as err:
        raise UsageError(f"--labels: cannot read '{path}': {err.strerror or err}") from err
    return out


def _as_label(value: Any) -> int | None:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float)) and value in (0, 1):
        return int(value)
    if isinstance(value, str):
        return {"0": 0, "1": 1, "real": 0, "fake": 1}.get(value.strip().lower())
    return None


def folder_label(path: str) -> int | None:
    """0/1 from the nearest parent folder named real/fake (or 0_real/1_fake), else None."""
    for part in reversed(Path(path).parent.parts):
        label = FOLDER_LABELS.get(part.lower())
        if label is not None:
            return label
    return None


def true_labels(records: list[Record], raws: list[dict[str, Any]] | None = None,
                labels: dict[str, int] | None = None, folders: bool = True) -> list[int | None]:
    """Each record's true label (0 real, 1 fake) or None: ``labels``, then ``label_true``, then folders."""
    mapping: dict[str, int] = {}
    for k, v in (labels or {}).items():
        label = _as_label(v)
        if label is not None:
            mapping[str(k)] = label
            mapping.setdefault(os.path.normpath(os.path.abspath(k)), label)
    out: list[int | None] = []
    for i, r in enumerate(records):
        label = None
        if mapping:
            label = mapping.get(r.path)
            if label is None:
                label = mapping.get(os.path.normpath(os.path.abspath(r.path)))
        if label is None and raws is not None and i < len(raws):
            label = _as_label(raws[i].get("label_true"))
        if label is None and folders:
            label = folder_label(r.path)
        out.append(label)
    return out


def display_name(record: Record) -> str:
    name = Path(record.path).name or record.path
    return name + (f" #face{record.face_index}" if record.face_index is not None else "")


# ---------------------------------------------------------------------------------------------- summary
@dataclass
class Summary:
    total: int = 0
    files: int = 0
    images: int = 0
    videos: int = 0
    verdicts: dict[str, int] = field(default_factory=dict)
    errors: int = 0
    top_errors: list[tuple[str, int]] = field(default_factory=list)
    hist: list[dict[str, Any]] = field(default_factory=list)  # per bin: lo, hi, real, fake, unlabeled
    labeled: int = 0
    metrics: dict[str, Any] | None = None  # auc, ap, eer, accuracy, n, n_real, n_fake, excluded
    metrics_note: str | None = None
    roc: list[tuple[float, float]] = field(default_factory=list)
    experts: list[str] = field(default_factory=list)
    uncertain: int = 0
    disagreements: int = 0
    misclassified: int = 0


def summarize(records: list[Record], y_true: list[int | None]) -> Summary:
    from x2dfd import metrics as m

    s = Summary(total=len(records))
    s.files = len({r.path for r in records})
    s.images = sum(r.kind != "video" for r in records)
    s.videos = sum(r.kind == "video" for r in records)
    counts = Counter(r.label for r in records)
    s.verdicts = {k: counts.get(k, 0) for k in ("fake", "real", "undetermined")}
    errors = [r.error for r in records if r.error]
    s.errors = len(errors)
    s.top_errors = Counter(_error_kind(e) for e in errors).most_common(8)
    s.experts = sorted({k for r in records for k in r.experts})
    s.uncertain = sum(r.verdict == "uncertain" for r in records)
    s.disagreements = sum(bool(r.disagreement) for r in records)
    s.misclassified = sum(1 for r, y in zip(records, y_true)
                          if y is not None and r.label != "undetermined" and (r.label == "fake") != (y == 1))
    bins = [{"lo": i / HIST_BINS, "hi": (i + 1) / HIST_BINS, "real": 0, "fake": 0, "unlabeled": 0}
            for i in range(HIST_BINS)]
    for r, y in zip(records, y_true):
        if r.p_fake is None or not math.isfinite(r.p_fake):
            continue
        b = bins[min(HIST_BINS - 1, max(0, int(r.p_fake * HIST_BINS)))]
        b["unlabeled" if y is None else ("fake" if y == 1 else "real")] += 1
    s.hist = bins
    s.labeled = sum(y is not None for y in y_true)
    scored = [(y, r.p_fake) for r, y in zip(records, y_true)
              if y is not None and r.p_fake is not None and math.isfinite(r.p_fake)]
    if s.labeled:
        ys = [y for y, _ in scored]
        if 0 in ys and 1 in ys:
            ps = [p for _, p in scored]
            fpr, tpr, _ = m.roc_curve(ys, ps)
            correct = sum((r.label == "fake") == (y == 1) for r, y in zip(records, y_true)
                          if y is not None and r.label != "undetermined")
            decided = sum(1 for r, y in zip(records, y_true) if y is not None and r.label != "undetermined")
            s.metrics = {"auc": m.roc_auc(ys, ps), "ap": m.average_precision(ys, ps), "eer": m.eer(ys, ps),
                         "accuracy": correct / decided if decided else None, "n": len(scored),
                         "n_real": ys.count(0), "n_fake": ys.count(1), "excluded": s.labeled - len(scored)}
            s.roc = _thin(list(zip(fpr.tolist(), tpr.tolist())), 400)
        else:
            only = "real" if 1 not in ys else "fake"
            s.metrics_note = (f"{s.labeled} items have a known label, but the scored ones are all {only}: "
                              "AUC, AP and EER need both real and fake items." if ys else
                              f"{s.labeled} items have a known label, but none has a p_fake.")
    return s


def _error_kind(error: str) -> str:
    """Errors grouped for the summary: the message with quoted names blanked out."""
    return one_line(re.sub(r"'[^']*'", "'…'", error), 160)


def _thin(points: list[tuple[float, float]], limit: int) -> list[tuple[float, float]]:
    if len(points) <= limit:
        return points
    step = (len(points) - 1) / (limit - 1)
    return [points[round(i * step)] for i in range(limit)]


def sparkline(frames: list[dict[str, Any]] | None, width: int = 160, height: int = 40,
              segments: list[dict[str, Any]] | None = None) -> dict[str, Any] | None:
    """Geometry of a video's per-frame timeline (numbers only: safe in SVG and JSON): the verdict's p_fake
    (``pts``), each expert's per-frame p_fake (``experts``: [name, pts]), the manipulated segments
    (``segs``: [x0, x1]) and the explained frame (``explained_x``). x is time when every frame has one."""
    frames = list(frames or [])
    if not frames:
        return None
    times = [f.get("time_s") for f in frames]
    use_time = all(isinstance(t, (int, float)) for t in times) and len(set(times)) > 1
    t0, t1 = (min(times), max(times)) if use_time else (0, max(1, len(frames) - 1))
    span = (t1 - t0) or 1

    def x_of(i: int, t: Any = None) -> float:
        v = (t if t is not None else times[i]) if use_time else i
        return round(2 + (width - 4) * (float(v) - t0) / span, 1)

    def y_of(p: float) -> float:
        return round(height - 2 - (height - 4) * float(p), 1)

    pts, dots = [], []
    for i, f in enumerate(frames):
        p = f.get("p_fake")
        if p is None:
            dots.append([x_of(i), height - 2])
            continue
        pts.append(f"{x_of(i)},{y_of(p)}")
    names = sorted({k for f in frames for k in (f.get("experts") or {}) if isinstance(k, str)})
    experts = []
    for name in names:
        line = [f"{x_of(i)},{y_of(f['experts'][name])}" for i, f in enumerate(frames)
                if isinstance((f.get("experts") or {}).get(name), (int, float))]
        if line:
            experts.append([name, " ".join(line)])
    segs = []
    for g in segments or []:
        a, b = g.get("start_s"), g.get("end_s")
        if use_time and isinstance(a, (int, float)) and isinstance(b, (int, float)):
            segs.append([max(2.0, x_of(0, a)), min(width - 2.0, x_of(0, b))])
    explained = next((i for i, f in enumerate(frames) if f.get("explained")), None)
    ex = x_of(explained) if explained is not None else None
    return {"w": width, "h": height, "pts": " ".join(pts), "missing": dots, "explained_x": ex, "n": len(frames),
            "experts": experts, "segs": segs}


def face_box(r: Record) -> list[float] | None:
    """The judged face's box in the thumbnail, as fractions [x0, y0, x1, y1] of the input (or explained frame)."""
    face = r.face if r.kind != "video" else ((explained_frame(r) or {}).get("face") or r.face)
    media = r.media or {}
    w, h = media.get("width"), media.get("height")
    box = (face or {}).get("box") if isinstance(face, dict) else None
    if not box or not isinstance(w, (int, float)) or not isinstance(h, (int, float)) or w <= 0 or h <= 0:
        return None
    try:
        x0, y0, x1, y1 = (float(v) for v in box[:4])
    except (TypeError, ValueError):
        return None
    return [round(min(max(x0 / w, 0.0), 1.0), 4), round(min(max(y0 / h, 0.0), 1.0), 4),
            round(min(max(x1 / w, 0.0), 1.0), 4), round(min(max(y1 / h, 0.0), 1.0), 4)]


def run_info(jsonl: str | os.PathLike | None, records: list[Record]) -> dict[str, Any]:
    """What produced the records, for the page header: model, adapter, preset, mode, experts (with their weights'
    sha256), threshold and uncertain band; from the run's config beside the JSONL when there is one, else from
    the records (values the records cannot tell are None)."""
    conf: dict[str, Any] = {}
    if jsonl is not None:
        src = Path(jsonl)
        path = src.with_suffix(".config.json") if src.suffix else src.with_name(src.name + ".config.json")
        try:
            conf = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(conf, dict):
                conf = {}
        except (OSError, ValueError):
            conf = {}
    cfg = conf.get("config") if isinstance(conf.get("config"), dict) else {}
    last = records[-1] if records else None
    modes = sorted({r.mode for r in records if isinstance(r.mode, str)})
    experts = []
    for e in conf.get("experts") or []:
        if isinstance(e, dict) and isinstance(e.get("name"), str):
            sha = e.get("sha256")
            experts.append({"name": e["name"], "sha256": sha if isinstance(sha, str) and _HEX.fullmatch(sha) else None,
                            "weights": Path(str(e["weights"])).name if e.get("weights") else None})
    if not experts:
        experts = [{"name": n, "sha256": None, "weights": None} for n in sorted({k for r in records for k in r.experts})]
    band = cfg.get("uncertain_band")
    if isinstance(band, str) and band.strip().lower() == "auto" and isinstance(cfg.get("threshold"), (int, float)):
        from x2dfd.evidence import band_around

        lo, hi = band_around(cfg["threshold"])
        band = f"{lo:g},{hi:g} (auto)"
    if not band or band == "auto":
        vb = next((r.verdict_band for r in records if isinstance(r.verdict_band, list)), None)
        band = f"{vb[0]:g},{vb[1]:g}" if vb else None
    mllm = conf.get("mllm") if isinstance(conf.get("mllm"), dict) else {}
    return {
        "model": cfg.get("model") if "model" in cfg else (last.model if last else None),
        "adapter": cfg.get("adapter") if "adapter" in cfg else (last.adapter if last else None),
        "preset": cfg.get("preset"),
        "dtype": mllm.get("dtype") if mllm else None,
        "mode": ", ".join(modes) or None,
        "experts": experts,
        "threshold": cfg.get("threshold"),
        "band": band,
        "aggregate": cfg.get("aggregate") or next((r.aggregate for r in records if r.aggregate), None),
        "template_version": conf.get("template_version") or (last.template_version if last else None),
        "from_config": bool(conf),
    }


# ---------------------------------------------------------------------------------------------- rendering
def _row(i: int, r: Record, y: int | None, urls: dict[str, str | None]) -> dict[str, Any]:
    return {
        "i": i,
        "name": display_name(r),
        "path": r.path,
        "kind": r.kind,
        "label": r.label,
        "p_fake": r.p_fake,
        "label_true": None if y is None else ("fake" if y == 1 else "real"),
        "error": r.error,
        "explanation": r.explanation,
        "experts": [[k, v] for k, v in r.experts.items()],
        "cues": [[str(c.get("id", "")), str(c.get("phrase", "")), c.get("p_yes")] for c in (r.cues or [])
                 if isinstance(c, dict)],
        "thumb": urls.get("thumb"),
        "face": urls.get("face"),
        "heat": urls.get("heat"),
        "spark": sparkline(r.frames, segments=r.segments) if r.kind == "video" else None,
        "frames": [f.get("p_fake") for f in r.frames] if r.frames else None,
        "mode": r.mode,
        "face_index": r.face_index,
        "verdict": r.verdict or "undetermined",
        "band": r.verdict_band,
        "disagreement": [[str(d.get("a")), str(d.get("b")), d.get("a_p"), d.get("b_p")] for d in r.disagreement or []],
        "evidence": [[str(e.get("kind", "")), str(e.get("text", ""))] for e in r.evidence or []],
        "segments": [[g.get("start_s"), g.get("end_s"), g.get("peak_p_fake")] for g in r.segments or []],
        "box": face_box(r),
        "group": (r.sha256 if isinstance(r.sha256, str) else None) or r.path,
    }


def script_json(data: Any) -> str:
    """JSON that is safe inside a <script> element or a .js file: no ``</script>``, ``<!--``, ``]]>``."""
    text = json.dumps(data, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    text = _SURROGATE.sub(lambda m: f"\\u{ord(m.group(0)):04x}", text)  # undecodable bytes of a file name
    return (text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


_SURROGATE = re.compile("[\\ud800-\\udfff]")


def _safe_cell(value: Any) -> Any:
    """Untrusted text that a spreadsheet would evaluate as a formula gets a leading quote."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def csv_columns(experts: list[str]) -> list[str]:
    return (["path", "name", "face_index", "kind", "label", "p_fake", "label_true", "error", "explanation"]
            + [f"expert_{e}" for e in experts]
            + ["cues", "n_frames", "frames_p_fake", "aggregate", "mode", "model", "adapter", "template_version",
               "sha256", "thumbnail", "face_crop", "heatmap", "verdict", "verdict_band", "disagreement", "evidence",
               "segments"])


def write_csv(path: Path, records: list[Record], y_true: list[int | None], urls: list[dict[str, str | None]],
              experts: list[str]) -> None:
    columns = csv_columns(experts)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="", encoding="utf-8", errors="backslashreplace") as fh:
        writer = csv.writer(fh)
        writer.writerow(columns)
        for r, y, u in zip(records, y_true, urls):
            row = {
                "path": r.path, "name": display_name(r), "face_index": r.face_index, "kind": r.kind, "label": r.label,
                "p_fake": r.p_fake, "label_true": "" if y is None else ("fake" if y == 1 else "real"),
                "error": r.error, "explanation": r.explanation,
                "cues": json.dumps(r.cues, ensure_ascii=False) if r.cues else "",
                "n_frames": len(r.frames) if r.frames else "",
                "frames_p_fake": " ".join("" if f.get("p_fake") is None else str(f["p_fake"]) for f in r.frames)
                if r.frames else "",
                "aggregate": r.aggregate, "mode": r.mode, "model": r.model, "adapter": r.adapter,
                "template_version": r.template_version, "sha256": r.sha256,
                "thumbnail": u.get("thumb"), "face_crop": u.get("face"), "heatmap": u.get("heat"),
                "verdict": r.verdict,
                "verdict_band": ",".join(f"{v:g}" for v in r.verdict_band) if r.verdict_band else "",
                "disagreement": "; ".join(f"{d['a']} {d['a_p']} vs {d['b']} {d['b_p']}" for d in r.disagreement or []),
                "evidence": " ".join(str(e.get("text", "")) for e in r.evidence or []),
                "segments": "; ".join(f"{g.get('start_s')}-{g.get('end_s')} s peak {g.get('peak_p_fake')}"
                                      for g in r.segments or []),
            }
            for e in experts:
                row[f"expert_{e}"] = r.experts.get(e)
            writer.writerow(["" if row[c] is None else _safe_cell(row[c]) for c in columns])
    os.replace(tmp, path)


def _environment():
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES_DIR)), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["pct"] = lambda v: "–" if v is None else f"{100.0 * v:.1f}%"
    env.filters["num"] = lambda v, d=3: "–" if v is None else f"{v:.{d}f}"
    return env


def environment():
    """The report renderer's jinja2 environment (autoescape, StrictUndefined, ``pct``/``num`` filters) over
    ``x2dfd/templates``: other pages (``x2dfd evaluate``'s evaluate.html) render through it too."""
    return _environment()


def static_text(name: str):
    """Public name of :func:`_static`: a project-owned file from ``x2dfd/templates`` to inline (CSS, scripts)."""
    return _static(name)


def _static(name: str):
    """A project-owned file inlined verbatim into the page (CSS, the table script): trusted, not data."""
    from markupsafe import Markup

    return Markup((TEMPLATES_DIR / name).read_text(encoding="utf-8"))


def expert_specs_for(jsonl: str | os.PathLike | None) -> dict[str, str]:
    """``{name: NAME=WEIGHTS}`` from the run config beside an explain JSONL (``results.config.json``), so a
    recomputed heatmap comes from the weights the run used; empty when there is none (default weights)."""
    if jsonl is None:
        return {}
    src = Path(jsonl)
    conf = src.with_suffix(".config.json") if src.suffix else src.with_name(src.name + ".config.json")
    try:
        specs = json.loads(conf.read_text(encoding="utf-8")).get("config", {}).get("expert") or []
    except (OSError, ValueError, AttributeError):
        return {}
    return {str(s).partition("=")[0].strip(): str(s) for s in specs if isinstance(s, str)}


def render_report(records: list[Record] | str | os.PathLike, out_dir: str | os.PathLike, title: str | None = None,
                  labels: dict[str, int] | None = None, folder_labels: bool = True, heatmaps: bool = True,
                  run: dict[str, Any] | None = None, inline: bool = False) -> Path:
    """Write ``out_dir/index.html``, ``records.js`` and ``records.csv`` for ``records`` (or a JSONL file);
    returns the path of ``index.html``. Pictures come from ``out_dir/assets`` (see :class:`ReportAssets`);
    missing ones are made again from the inputs that still exist (``heatmaps``: heatmaps too, by the
    records' experts). A folder holding files that are not an x2dfd report is refused (UsageError).

    ``run``: header values (model, adapter, preset, experts, threshold, band) that override those read from the
    run config beside the JSONL. ``inline``: one self-contained ``index.html`` (rows and pictures inside it,
    pictures as data: URLs) that can be mailed or downloaded as one file; the folder keeps records.js too."""
    import datetime

    source = None
    raws: list[dict[str, Any]] | None = None
    out = Path(out_dir)
    check_report_dir(out)
    if isinstance(records, (str, os.PathLike)):
        source = Path(records)
        records, raws = load_records(source)
    info = run_info(source, records)
    if run:
        info.update({k: v for k, v in run.items() if v is not None})
    threshold = info.get("threshold") if isinstance(info.get("threshold"), (int, float)) else 0.5
    records = [_complete(sanitize(r), threshold) for r in records]
    out.mkdir(parents=True, exist_ok=True)
    y_true = true_labels(records, raws, labels, folders=folder_labels)
    assets = ReportAssets(out, experts=expert_specs_for(source) if heatmaps else None)
    urls: list[dict[str, str | None]] = []
    rows: list[dict[str, Any]] = []
    for i, (r, y) in enumerate(zip(records, y_true)):
        try:
            u = assets.ensure(r)
        except Exception as err:  # noqa: BLE001 - one bad record must not stop the report
            _warn(f"report: pictures of '{r.path}' skipped: {type(err).__name__}: {err}")
            u = {}
        urls.append(u)
        try:
            rows.append(_row(i, r, y, u))
        except Exception as err:  # noqa: BLE001 - e.g. a hand-edited line with odd field types
            rows.append(_row(i, Record.failed(str(r.path), f"cannot show this record: {type(err).__name__}: {err}"),
                             y, {}))
    summary = summarize(records, y_true)
    title = title or (f"x2dfd report: {source.name}" if source is not None else "x2dfd report")
    _group_faces(rows)
    data = {"version": 1, "title": title, "rows": rows, "experts": summary.experts,
            "has_labels": summary.labeled > 0, "run": info}
    _write_text(out / "records.js", "window.X2DFD_REPORT = " + script_json(data) + ";\n")
    inline_data = None
    if inline:
        for row in rows:
            for kind in ("thumb", "face", "heat"):
                row[kind] = _data_url(out, row.get(kind))
        inline_data = Markup("window.X2DFD_REPORT = " + script_json(data) + ";")
    write_csv(out / "records.csv", records, y_true, urls, summary.experts)
    html = _environment().get_template("report.html.jinja").render(
        title=title, s=summary, source=str(source) if source is not None else None, version=__version__,
        generated=datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        css=_static("report.css"), script=_static("report.js"), run=info, inline_data=inline_data, hist_max=max(
            [b["real"] + b["fake"] + b["unlabeled"] for b in summary.hist] + [1]),
    )
    index = out / "index.html"
    _write_text(index, html)
    return index


def _complete(record: Record, threshold: float) -> Record:
    """Records of an older x2dfd get the verdict / disagreement / segments / evidence the pipeline adds now."""
    from x2dfd.evidence import complete

    if record.error is not None and record.p_fake is None:
        record.verdict = record.verdict or "undetermined"
        return record
    try:
        return complete(record, threshold=threshold)
    except Exception:  # noqa: BLE001 - the row still shows what the record has
        return record


def _group_faces(rows: list[dict[str, Any]]) -> None:
    """Each row's ``faces``: every face judged in the same input ([box, p_fake, face_index, row i]), so the
    thumbnail shows all of them, each box coloured by its p_fake."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        if row.get("box") and row.get("kind") == "image":
            groups.setdefault(str(row.get("group")), []).append(row)
    for row in rows:
        members = groups.get(str(row.get("group"))) if row.get("kind") == "image" else None
        if members:
            row["faces"] = [[m["box"], m["p_fake"], m.get("face_index"), m["i"]] for m in members]
        elif row.get("box"):
            row["faces"] = [[row["box"], row["p_fake"], row.get("face_index"), row["i"]]]
        else:
            row["faces"] = []
        row.pop("group", None)


def _data_url(out: Path, url: str | None) -> str | None:
    """An asset (``assets/NAME.jpg``) as a ``data:image/jpeg;base64,...`` URL, for the one-file report."""
    import base64

    if not url or not re.fullmatch(r"assets/[A-Za-z0-9._-]+\.jpg", url):
        return None
    try:
        return "data:image/jpeg;base64," + base64.b64encode((out / url).read_bytes()).decode("ascii")
    except OSError:
        return None


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8", errors="backslashreplace")
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------- command
@dataclass
class ReportConfig:
    """Render the HTML report (index.html, records.js, assets/) and records.csv of an explain JSONL file."""

    jsonl: str = field(default="", metadata={"positional": True})
    """The JSONL file written by `x2dfd explain --out`."""
    out: str | None = None
    """Report directory (default: next to the JSONL file, named <name>-report)."""
    title: str | None = None
    """Title shown at the top of the page (default: from the JSONL file name)."""
    labels: str = "auto"
    """True labels for the metrics: auto (label_true fields, then real/fake folder names), none, or a CSV file with columns path,label."""
    heatmaps: bool = True
    """Recompute missing heatmaps (e.g. in a new --out folder) with the experts named in the records, from the inputs that still exist."""

    def __post_init__(self):
        if not Path(self.jsonl).is_file():
            raise UsageError(f"JSONL file '{self.jsonl}' does not exist (give the --out file of x2dfd explain)")
        if self.labels not in ("auto", "none") and not Path(self.labels).is_file():
            raise UsageError(f"--labels '{self.labels}' is neither auto, none nor an existing CSV file")

    def out_dir(self) -> Path:
        if self.out:
            return Path(self.out)
        src = Path(self.jsonl)
        return src.with_name(src.stem + "-report")


def main(argv: list[str] | None = None) -> int:
    from x2dfd.cliargs import parse_config, to_jsonable

    cfg = parse_config(ReportConfig, argv, prog="x2dfd report")
    out = cfg.out_dir()
    labels = read_labels_csv(cfg.labels) if cfg.labels not in ("auto", "none") else None
    try:
        index = render_report(cfg.jsonl, out, title=cfg.title, labels=labels, folder_labels=cfg.labels != "none",
                              heatmaps=cfg.heatmaps)
        resolved = {"command": "report", "x2dfd_version": __version__, "config": to_jsonable(cfg)}
        _write_text(out / "report.config.json", json.dumps(resolved, indent=2) + "\n")
    except OSError as err:
        raise OutputError(f"cannot write the report into '{safe_text(out)}': {os_reason(err)}") from None
    records, raws = load_records(cfg.jsonl)
    bad = sum(1 for raw in raws if "\0bad_line" in raw)
    undetermined = sum(1 for r in records if r.p_fake is None) - bad
    print(f"report: {safe_text(index)} (and {safe_text(out / 'records.csv')})", file=sys.stderr)
    print(f"x2dfd report: {len(records) - bad} records rendered ({undetermined} without a verdict); {bad} line(s) of "
          f"'{safe_text(cfg.jsonl)}' {'is' if bad == 1 else 'are'} not records", file=sys.stderr)
    return EXIT_INPUTS_FAILED if bad else EXIT_OK

