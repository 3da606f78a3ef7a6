"""The forgery-cue bank: load, validate and merge cue files (``prompts/cues.yaml`` and user files).

    bank = load_cues()                                  # the shipped bank
    bank = load_cues(["prompts/cues.yaml", "mine.yaml"])  # several files, merged by id
    bank.cues[0].id, bank.cues[0].question, bank.cues[0].present, bank.cues[0].absent

A cue file is YAML: ``regions`` (optional: slug -> description) and ``cues``: a list of
``{id, region, question, present, absent}``; see the header of ``prompts/cues.yaml`` for the rules.
Ids never change once used (rankings, score caches and fine-tuning data refer to them). Every
mistake is a one-line :class:`~x2dfd.errors.UsageError` naming the file, the cue and the fix.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from x2dfd.prompts import PROMPTS_DIR
from x2dfd.errors import UsageError

DEFAULT_CUES_PATH = PROMPTS_DIR / "cues.yaml"

# The region tags of the MFA issue (mouth = mouth/lips, boundary = face boundary/blending,
# lighting = lighting/shadows, geometry = geometry/symmetry).
REGIONS = (
    "eyes", "eyebrows", "mouth", "teeth", "nose", "skin_texture", "skin_tone", "boundary", "lighting",
    "geometry", "hair", "ears", "background", "global",
)
ID_PATTERN = re.compile(r"^[a-z0-9_]+\.[a-z0-9_]+$")
FIELDS = ("id", "region", "question", "present", "absent")


@dataclass(frozen=True)
class Cue:
    id: str  # "<region>.<slug>", stable forever
    region: str  # one of REGIONS
    question: str  # yes/no question; "Yes" is forgery evidence
    present: str  # declarative phrase: the cue is seen (fake evidence)
    absent: str  # declarative phrase: the cue is absent (real evidence)
    origin: str | None = None  # None for hand-written cues; "generated:<model>" for --generate-cues

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass
class CueBank:
    cues: list[Cue]
    paths: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.cues)

    def by_id(self) -> dict[str, Cue]:
        return {c.id: c for c in self.cues}

    def fingerprint(self) -> str:
        """sha256 of the cues' content (ids, regions, wording), independent of file layout and comments."""
        payload = json.dumps([c.to_dict() for c in self.cues], sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(payload.encode()).hexdigest()


def _load_yaml(path: Path):
    import yaml

    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"cue file '{path}' does not exist (check --cues)") from None
    except OSError as err:
        raise UsageError(f"cannot read cue file '{path}': {err.strerror or err}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise UsageError(f"cue file '{path}'{where}: not valid YAML ({getattr(err, 'problem', None) or err})") from None


def validate_cue(raw, where: str) -> Cue:
    """One cue entry -> :class:`Cue`, or a one-line UsageError that says what is wrong and where."""
    if not isinstance(raw, dict):
        raise UsageError(f"{where}: each cue must be a mapping with keys {', '.join(FIELDS)}")
    cue_id = raw.get("id")
    if cue_id is not None:
        where = f"{where} (id '{cue_id}')"
    missing = [k for k in FIELDS if not isinstance(raw.get(k), str) or not raw[k].strip()]
    if missing:
        raise UsageError(f"{where}: missing or empty field(s) {', '.join(missing)}")
    unknown = sorted(set(raw) - set(FIELDS) - {"origin"})
    if unknown:
        raise UsageError(f"{where}: unknown field(s) {', '.join(unknown)}. Allowed: {', '.join(FIELDS)}, origin")
    values = {k: " ".join(str(raw[k]).split()) for k in FIELDS}
    if not ID_PATTERN.match(values["id"]):
        raise UsageError(f"{where}: id must look like '<region>.<slug>' in lower case letters, digits and '_'")
    if values["region"] not in REGIONS:
        raise UsageError(f"{where}: region '{values['region']}' is not allowed. Available: {', '.join(REGIONS)}.")
    if not values["question"].endswith("?"):
        raise UsageError(f"{where}: the question must end with '?'")
    return Cue(**values, origin=raw.get("origin"))


def parse_cue_file(path: str | Path) -> list[Cue]:
    path = Path(path)
    data = _load_yaml(path)
    if not isinstance(data, dict) or not isinstance(data.get("cues"), list):
        raise UsageError(f"cue file '{path}': expected a YAML mapping with a 'cues:' list")
    regions = data.get("regions") or {}
    if not isinstance(regions, dict) or set(regions) - set(REGIONS):
        extra = sorted(set(regions) - set(REGIONS)) if isinstance(regions, dict) else []
        raise UsageError(f"cue file '{path}': unknown region(s) {', '.join(extra) or '?'} under 'regions:'. "
                         f"Available: {', '.join(REGIONS)}.")
    cues, seen = [], set()
    for i, raw in enumerate(data["cues"]):
        cue = validate_cue(raw, f"cue file '{path}' cue #{i + 1}")
        if cue.id in seen:
            raise UsageError(f"cue file '{path}': id '{cue.id}' appears twice (ids must be unique)")
        seen.add(cue.id)
        cues.append(cue)
    if not cues:
        raise UsageError(f"cue file '{path}' has no cues")
    return cues


def load_cues(paths: list[str | Path] | None = None, only: list[str] | None = None) -> CueBank:
    """Load and merge cue files (default: the shipped bank). The same id in two files must be the same cue.

    ``only``: keep these ids or regions (``eyes``, ``teeth.blurry``), in bank order.
    """
    paths = [Path(p) for p in (paths or [DEFAULT_CUES_PATH])]
    merged: dict[str, Cue] = {}
    for path in paths:
        for cue in parse_cue_file(path):
            old = merged.get(cue.id)
            if old is not None and (old.region, old.question, old.present, old.absent) != (
                    cue.region, cue.question, cue.present, cue.absent):
                raise UsageError(f"cue id '{cue.id}' is defined differently in two cue files ('{path}' and an earlier "
                                 "one): ids are stable, give the changed cue a new id")
            merged.setdefault(cue.id, cue)
    cues = list(merged.values())
    if only:
        wanted = set(only)
        unknown = wanted - set(merged) - set(REGIONS)
        if unknown:
            raise UsageError(f"--only: unknown cue id or region '{sorted(unknown)[0]}'. Regions: {', '.join(REGIONS)}.")
        cues = [c for c in cues if c.id in wanted or c.region in wanted]
    return CueBank(cues=cues, paths=[str(p) for p in paths])
