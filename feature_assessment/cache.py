"""The per-image cue scores of ``x2dfd assess``: an append-only JSONL file that is also the resume cache.

    store = ScoreStore(out_dir / "scores.jsonl")
    store.missing(setting_id, sha256, cue_ids)  # cue ids not yet scored for this image and setting
    store.add_scores(setting_id, sha256, {"eyes.pupil_shape": 0.73, ...}, path=..., label=1)

    scores = read_scores("assess-out")          # what `x2dfd finetune` reads (setting of ranking.json)
    scores["<sha256>"].p_yes["eyes.pupil_shape"]

Lines (one JSON object each, flushed as written; a crash loses at most the line being written,
and a torn last line is ignored on reading):

* ``{"kind": "setting", "setting": ID, "model", "revision", "adapter", "dtype", "quantization",
  "template_version", "face", ...}`` once per setting: everything that changes a score.
* ``{"kind": "scores", "setting": ID, "image": SHA256, "path", "label", "p_yes": {cue_id: float}}``
  one per scored batch of cues of one face.
* ``{"kind": "error", "setting": ID, "image": SHA256, "path", "label", "error"}`` for a face that
  could not be scored for a reason that will not change on a rerun (undecodable file, no face).

A score is keyed by (setting, image sha256, cue id), the setting being a hash of model id,
revision, adapter, dtype/quantization, cue template version and face-crop options: a rerun on the
same inputs scores nothing twice, an interrupted run resumes, and runs of different models can
share one file without mixing.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from x2dfd.errors import UsageError

SCORES_FILE = "scores.jsonl"


def setting_id(setting: dict[str, Any]) -> str:
    payload = json.dumps(setting, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


@dataclass
class ImageScores:
    image: str  # sha256 of the file
    path: str
    label: int  # 0 real, 1 fake
    p_yes: dict[str, float] = field(default_factory=dict)
    error: str | None = None


class ScoreStore:
    """Reads every line of the file once, then appends (and flushes) new ones."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.settings: dict[str, dict[str, Any]] = {}
        self.images: dict[tuple[str, str], ImageScores] = {}
        self.lines_written = 0
        if self.path.is_file():
            self._read()
        self._fh = None

    def _read(self) -> None:
        # newline="": no universal-newline translation, so a "\\r" inside a path is not a line break either
        with self.path.open(encoding="utf-8", errors="replace", newline="") as fh:
            lines = fh.read().split("\n")
        bad = []
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                if not isinstance(rec, dict):
                    raise ValueError("not an object")
                self._apply(rec)
            except (ValueError, KeyError, TypeError, AttributeError):
                if n >= len(lines) - 1:  # a line torn by an interrupted write: drop it, rescore those cues
                    continue
                bad.append(n)  # kept in the file; its scores are computed again
        if bad:
            import sys

            print(f"x2dfd: score file '{self.path}': line(s) {', '.join(map(str, bad[:10]))}"
                  f"{' ...' if len(bad) > 10 else ''} are not score lines; kept, and their scores computed again",
                  file=sys.stderr)

    def _apply(self, rec: dict[str, Any]) -> None:
        kind = rec.get("kind")
        if kind == "setting":
            self.settings[rec["setting"]] = rec
            return
        key = (rec["setting"], rec["image"])
        entry = self.images.get(key)
        if entry is None:
            entry = self.images[key] = ImageScores(image=rec["image"], path=rec.get("path", ""), label=rec.get("label", -1))
        if kind == "scores":
            entry.p_yes.update(rec["p_yes"])
        elif kind == "error":
            entry.error = rec["error"]

    def _write(self, rec: dict[str, Any]) -> None:
        if self._fh is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self.path.is_file() and self.path.stat().st_size:
                with self.path.open("rb") as fh:  # finish a torn last line so the next record starts cleanly
                    fh.seek(-1, 2)
                    torn = fh.read(1) != b"\n"
                self._fh = self.path.open("a", encoding="utf-8")
                if torn:
                    self._fh.write("\n")
            else:
                self._fh = self.path.open("a", encoding="utf-8")
        self._fh.write(json.dumps(rec, ensure_ascii=False, allow_nan=False) + "\n")
        self._fh.flush()
        self.lines_written += 1
        self._apply(rec)

    # ------------------------------------------------------------------------------------------ public
    def add_setting(self, sid: str, setting: dict[str, Any]) -> None:
        if sid not in self.settings:
            self._write({"kind": "setting", "setting": sid, **setting})

    def add_scores(self, sid: str, image: str, p_yes: dict[str, float], path: str, label: int) -> None:
        self._write({"kind": "scores", "setting": sid, "image": image, "path": path, "label": int(label),
                     "p_yes": {k: float(v) for k, v in p_yes.items()}})

    def add_error(self, sid: str, image: str, error: str, path: str, label: int) -> None:
        self._write({"kind": "error", "setting": sid, "image": image, "path": path, "label": int(label), "error": error})

    def get(self, sid: str, image: str) -> ImageScores | None:
        return self.images.get((sid, image))

    def missing(self, sid: str, image: str, cue_ids: list[str]) -> list[str]:
        entry = self.images.get((sid, image))
        if entry is None:
            return list(cue_ids)
        if entry.error is not None:
            return []
        return [c for c in cue_ids if c not in entry.p_yes]

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def read_scores(out_dir: str | Path, setting: str | None = None) -> dict[str, ImageScores]:
    """Per-image P(yes) of an ``x2dfd assess`` output folder, by file sha256.

    ``setting`` defaults to the one ``ranking.json`` was computed with; images with an error are included
    with ``error`` set and no scores.
    """
    out_dir = Path(out_dir)
    if setting is None:
        ranking = out_dir / "ranking.json"
        if not ranking.is_file():
            raise UsageError(f"'{out_dir}' has no ranking.json (run `x2dfd assess DATA --out {out_dir}` first)")
        setting = json.loads(ranking.read_text(encoding="utf-8"))["setting"]["id"]
    store = ScoreStore(out_dir / SCORES_FILE)
    return {image: entry for (sid, image), entry in store.images.items() if sid == setting}
