"""The one record type every command writes and every consumer (JSONL, report, demo) reads.

One :class:`Record` per input file (or per face with ``--all-faces``); videos keep their per-frame
timeline in ``frames``. Probabilities are always ``p_fake`` in [0, 1], 1 meaning fake.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

LABELS = ("real", "fake", "undetermined")
DEFAULT_THRESHOLD = 0.5


@dataclass(frozen=True)
class ExpertScore:
    expert: str  # registry key, e.g. "blend"
    p_fake: float  # in [0, 1]; 1 means fake, everywhere in the code

    def __post_init__(self):
        if not (0.0 <= self.p_fake <= 1.0) or math.isnan(self.p_fake):
            raise ValueError(f"ExpertScore({self.expert!r}): p_fake must be in [0, 1], got {self.p_fake}")


def label_from_p(p_fake: float | None, threshold: float = DEFAULT_THRESHOLD) -> str:
    """``fake`` at or above the threshold, ``real`` below it, ``undetermined`` without a score."""
    if p_fake is None or math.isnan(p_fake):
        return "undetermined"
    return "fake" if p_fake >= threshold else "real"


@dataclass
class Record:
    """What x2dfd says about one input (JSON line schema; new fields are only ever added)."""

    path: str
    sha256: str | None = None
    kind: str = "image"  # "image" | "video"
    label: str = "undetermined"  # "real" | "fake" | "undetermined"
    p_fake: float | None = None
    explanation: str | None = None
    mode: str = "mllm"  # "mllm" (verdict read from the MLLM) | "expert-only" (no MLLM, no invented text)
    experts: dict[str, float | None] = field(default_factory=dict)  # expert name -> p_fake (None: could not run)
    media: dict[str, Any] | None = None  # image: width, height; video: fps, total_frames, duration_s, ...
    face: dict[str, Any] | None = None  # box, landmarks, score, crop_size ... (None until cropped / no crop)
    face_index: int | None = None  # with --all-faces: 0 = largest face
    cues: list[dict[str, Any]] = field(default_factory=list)  # cue evidence: {"id", "phrase", "p_yes"}
    frames: list[dict[str, Any]] | None = None  # video: [{"index", "time_s", "p_fake", "label", "face", "error"}]
    aggregate: str | None = None  # video: how frame p_fake became the video's p_fake
    model: str | None = None
    adapter: str | None = None
    template_version: str | None = None
    error: str | None = None  # one line, or None
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage

    def __post_init__(self):
        if self.label not in LABELS:
            raise ValueError(f"Record.label must be one of {LABELS}, got {self.label!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, allow_nan=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Record":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def failed(cls, path: str, error: str, **kw: Any) -> "Record":
        """An input that got no verdict: ``undetermined`` with a one-line reason."""
        return cls(path=path, label="undetermined", p_fake=None, error=one_line(error), **kw)


def one_line(message: str, limit: int = 500) -> str:
    """Collapse a message to one line (error fields and CLI errors are one line by contract)."""
    text = " ".join(str(message).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
