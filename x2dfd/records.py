"""The one record type every command writes and every consumer (JSONL, report, demo) reads.

One :class:`Record` per input file (or per face with ``--all-faces``); videos keep their per-frame
timeline in ``frames``. Probabilities are always ``p_fake`` in [0, 1], 1 meaning fake.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field, fields
from typing import Any

LABELS = ("real", "fake", "undetermined")
VERDICTS = ("real", "uncertain", "fake", "undetermined")  # Record.verdict: the label with an uncertain band
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
    # What an analyst acts on (x2dfd.evidence, x2dfd.segments); records of older versions load with the defaults.
    verdict: str | None = None  # "real" | "uncertain" | "fake" | "undetermined": p_fake against verdict_band
    verdict_band: list[float] | None = None  # [low, high]: real below low, fake at or above high, uncertain between
    disagreement: list[dict[str, Any]] = field(default_factory=list)  # [{"a", "b", "a_p", "b_p"}]: a >= 0.7, b <= 0.3
    evidence: list[dict[str, Any]] = field(default_factory=list)  # [{"kind", "text", "numbers"}]: measured only
    segments: list[dict[str, Any]] | None = None  # video: [{"start_s", "end_s", "peak_p_fake", "mean_p_fake", ...}]

    def __post_init__(self):
        if self.label not in LABELS:
            raise ValueError(f"Record.label must be one of {LABELS}, got {self.label!r}")
        if self.verdict is not None and self.verdict not in VERDICTS:
            raise ValueError(f"Record.verdict must be one of {VERDICTS}, got {self.verdict!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        """One JSON line (no newline in it: JSON escapes every control character). Text that UTF-8 cannot
        encode (a file name with undecodable bytes, held as lone surrogates) is written \\u-escaped, so the
        line is always valid UTF-8 and reads back to the same string."""
        text = json.dumps(self.to_dict(), ensure_ascii=False, allow_nan=False)
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            text = json.dumps(self.to_dict(), ensure_ascii=True, allow_nan=False)
        return text

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Record":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def failed(cls, path: str, error: str, **kw: Any) -> "Record":
        """An input that got no verdict: ``undetermined`` with a one-line reason."""
        kw.setdefault("verdict", "undetermined")
        return cls(path=path, label="undetermined", p_fake=None, error=one_line(error), **kw)


def one_line(message: str, limit: int = 500) -> str:
    """Collapse a message to one line (error fields and CLI errors are one line by contract)."""
    text = " ".join(str(message).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


# Characters that must never reach a terminal raw: C0 and C1 controls (ESC starts terminal escape
# sequences, CR and BS overwrite what was printed), DEL, line and paragraph separators, and the
# bidirectional overrides that reorder what is shown.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def _escape(match: re.Match) -> str:
    ch = match.group(0)
    code = ord(ch)
    if ch in "\n\r\t":
        return {"\n": "\\n", "\r": "\\r", "\t": "\\t"}[ch]
    if 0xDC80 <= code <= 0xDCFF:  # an undecodable byte of a file name (surrogateescape)
        return f"\\x{code - 0xDC00:02x}"
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def safe_text(text: object) -> str:
    """Untrusted text (file names, model output, JSONL fields) made safe for a terminal: control
    characters, line separators and bidi overrides are shown escaped (``\\x1b``, ``\\n``, ``\\u2028``)."""
    return _UNSAFE.sub(_escape, str(text))


def terminal_line(message: object, limit: int = 500) -> str:
    """One line for stderr: escaped like :func:`safe_text` (a newline in a name stays visible as ``\\n``),
    then collapsed to single spaces and cut at ``limit``."""
    return one_line(safe_text(message), limit)


# ---------------------------------------------------------------------------------------------- JSONL files
# An x2dfd JSONL file is one Record per line, lines ended by "\n" and split on "\n" only: a file name
# or an explanation holding U+2028, U+0085 or "\r" (which str.splitlines() would split on) is one line.
# Every line x2dfd writes starts with RECORD_PREFIX (``path`` is the first field of Record) and carries
# RECORD_KEYS: that is how a file is recognised as x2dfd's before anything is appended to it.
RECORD_KEYS = frozenset({"path", "sha256", "kind", "label", "p_fake", "experts", "error"})
RECORD_PREFIX = b'{"path": '


def jsonl_lines(data: bytes) -> list[bytes]:
    """The lines of a JSONL file's bytes, split on b"\\n" only (the last element is what follows the
    last newline: b"" for a complete file, a torn line otherwise)."""
    return data.split(b"\n")


def read_jsonl_text(path, errors: str = "strict") -> list[tuple[int, str]]:
    """``(line number, text)`` of every non-blank line of a JSONL file, split on "\\n" only."""
    with open(path, "rb") as fh:
        data = fh.read()
    out = []
    for n, raw in enumerate(jsonl_lines(data), 1):
        text = raw.decode("utf-8", errors)
        if text.strip():
            out.append((n, text))
    return out


def is_record_dict(obj: Any) -> bool:
    """Whether a parsed JSON line is one of x2dfd's records (its keys, a path and a known label)."""
    return (isinstance(obj, dict) and RECORD_KEYS <= obj.keys() and isinstance(obj.get("path"), str)
            and obj.get("label") in LABELS)


def parse_record_line(raw: bytes) -> tuple[Record | None, dict[str, Any] | None, str | None]:
    """``(record, raw dict, None)`` for a record line, else ``(None, None, why not)``."""
    try:
        obj = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        return None, None, "not UTF-8 text"
    except json.JSONDecodeError as err:
        return None, None, f"not JSON ({err.msg} at column {err.colno})"
    if not is_record_dict(obj):
        return None, None, "JSON, but not an x2dfd record"
    try:
        return Record.from_dict(obj), obj, None
    except (TypeError, ValueError) as err:
        return None, None, f"not a valid record ({err})"


@dataclass
class JsonlScan:
    """What an existing output file holds (nothing is changed by scanning it)."""

    path: Any  # pathlib.Path
    records: list[Record] = field(default_factory=list)
    raws: list[dict[str, Any]] = field(default_factory=list)
    bad_lines: list[tuple[int, str]] = field(default_factory=list)  # (line number, why): kept in the file
    torn: bytes = b""  # a last line without its newline that is not a record (a write cut off): repaired
    missing_newline: bool = False  # the last line is a whole record, only its newline is missing
    size: int = 0

    @property
    def good_end(self) -> int:
        """Byte offset where the torn tail starts (the file's size when there is none)."""
        return self.size - len(self.torn)


def scan_jsonl(path) -> JsonlScan:
    """Read an x2dfd JSONL output file without changing it. A missing or empty file is an empty scan.

    Raises :class:`~x2dfd.errors.UsageError` when the file is not x2dfd's (its first non-blank line is
    not a record: x2dfd never appends to such a file) and :class:`~x2dfd.errors.OutputError` when it
    cannot be read. Corrupt or blank lines after the first record are listed in ``bad_lines`` (kept,
    never a reason to drop the records after them); a last line without a newline that is not a
    record is ``torn`` (what a killed write leaves)."""
    import os
    import stat
    from pathlib import Path

    from x2dfd.errors import OutputError, UsageError

    path = Path(path)
    scan = JsonlScan(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return scan
    except OSError as err:
        raise OutputError(f"cannot read '{safe_text(path)}': {os_reason(err)}") from None
    if stat.S_ISDIR(st.st_mode):
        raise OutputError(f"'{safe_text(path)}' is a directory [EISDIR]; give a file name for --out, "
                          f"e.g. '{safe_text(path / 'results.jsonl')}'")
    if not stat.S_ISREG(st.st_mode):
        return scan  # a device or FIFO (e.g. /dev/stdout): written as a stream, never read back
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as err:
        raise OutputError(f"cannot read '{safe_text(path)}': {os_reason(err)}") from None
    scan.size = len(data)
    if not data:
        return scan
    lines = jsonl_lines(data)
    last = len(lines) - 1  # lines[last] follows the last newline (b"" when the file ends with one)
    first_record = False
    for i, raw in enumerate(lines):
        n = i + 1
        if i == last:
            if not raw:
                break
            record, obj, why = parse_record_line(raw)
            if record is not None:
                first_record = True
                scan.records.append(record)
                scan.raws.append(obj)
                scan.missing_newline = True
            elif first_record or raw.lstrip().startswith(RECORD_PREFIX):
                scan.torn = raw
            else:
                raise _foreign(path, n, why or "not an x2dfd record")
            break
        if not raw.strip():
            if first_record:
                scan.bad_lines.append((n, "blank line"))
            continue
        record, obj, why = parse_record_line(raw)
        if record is None:
            if not first_record:
                raise _foreign(path, n, why or "not an x2dfd record")
            scan.bad_lines.append((n, why or "not a record"))
            continue
        first_record = True
        scan.records.append(record)
        scan.raws.append(obj)
    if not first_record and not scan.records and not scan.torn:
        raise _foreign(path, 1, "no x2dfd record in it")
    return scan


def _foreign(path, lineno: int, why: str):
    from x2dfd.errors import UsageError

    return UsageError(f"'{safe_text(path)}' is not an x2dfd JSONL file (line {lineno}: {why}); x2dfd never "
                      "changes a file it did not write: give a new --out file")


def os_reason(err: OSError) -> str:
    """``No space left on device [ENOSPC]``: an OSError's cause and its errno name, one line."""
    import errno as errno_mod

    name = errno_mod.errorcode.get(err.errno or 0, "")
    text = err.strerror or str(err) or type(err).__name__
    return one_line(f"{text} [{name}]" if name else text)
