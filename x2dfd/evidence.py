"""What a record can say for itself from measurements only: the three-way verdict, disagreement between
the judges, and evidence sentences each resting on numbers stored beside it.

    from x2dfd.evidence import annotate
    annotate(record, artifacts, explainer)     # sets verdict, verdict_band, disagreement, evidence, segments

Rules (documented in the README's record table):

* ``verdict``: ``fake`` when p_fake >= the band's top, ``real`` when p_fake < its bottom, ``uncertain``
  in between, ``undetermined`` without a p_fake. Default band [0.35, 0.65) (``--uncertain-band``); see
  :data:`DEFAULT_BAND`.
* ``disagreement``: every pair of judges (the MLLM's p_fake in ``mllm`` mode, each expert that scored)
  where one says >= 0.7 and the other <= 0.3 (:data:`DISAGREE_HIGH`, :data:`DISAGREE_LOW`);
  ``{"a", "b", "a_p", "b_p"}`` with ``a`` the fake-leaning one.
* ``coverage`` (an evidence item, only when the verdict is not ``fake``): the forgery kinds that an expert
  which ran says it does not detect (``blind_to`` in its info()'s scope, with the measured AUC) and that no
  other expert which ran covers (``covers_kinds``). A "real" from a swap detector is no clearance of a
  fully synthetic face, and the record says so as data.
* ``evidence``: a list of ``{"kind", "text", "numbers"}``. Every number in ``text`` is one of ``numbers``
  (p values with 2 decimals, shares as whole percents, seconds with 1 decimal), and every word that grades
  a number (strongly / leans / no strong response ...) follows the thresholds below. Nothing is said that
  no measurement supports: with no heatmap there is no location sentence, with no expert no expert sentence.
"""

from __future__ import annotations

import math
from typing import Any

from x2dfd.records import Record

DEFAULT_BAND = (0.35, 0.65)
"""A convention, not a calibration: threshold 0.5 +/- 0.15. The shipped blending expert's temperature is
fitted on validation self-blends, but on real swaps its ECE is 0.07-0.14 (experts/README.md), too loose to
derive a band from. An expert or MLLM calibrated on held-out data of the user's own kind would justify
another band: pass it with ``--uncertain-band``."""
DISAGREE_HIGH = 0.7
DISAGREE_LOW = 0.3
STRONG = 0.7  # "strongly fake" at or above; "strongly real" at or below 1 - STRONG

# What each kind of expert covers, by its prompt name (X2-DFD's wording), when its info() says nothing.
COVERS = {
    "blending": "blending boundaries left where a face was pasted into a picture (face swaps, self-blended images)",
    "diffusion": "traces of diffusion-model image generation",
}


BAND_HALF_WIDTH = 0.15


def band_around(threshold: float) -> tuple[float, float]:
    """The default band: ``threshold`` -/+ 0.15, kept inside (0, 1) (0.35, 0.65 at the default threshold 0.5)."""
    t = float(threshold)
    return round(max(0.01, t - BAND_HALF_WIDTH), 6), round(min(0.99, t + BAND_HALF_WIDTH), 6)


def parse_band(text: str | tuple[float, float] | list[float] | None) -> tuple[float, float]:
    """``"0.35,0.65"`` -> (0.35, 0.65); raises ValueError with a one-line reason."""
    if text is None:
        return DEFAULT_BAND
    if isinstance(text, str):
        parts = [p.strip() for p in text.split(",")]
        if len(parts) != 2:
            raise ValueError(f"--uncertain-band must be LOW,HIGH (e.g. 0.35,0.65), got '{text}'")
        try:
            lo, hi = float(parts[0]), float(parts[1])
        except ValueError:
            raise ValueError(f"--uncertain-band must be two numbers LOW,HIGH (e.g. 0.35,0.65), got '{text}'") from None
    else:
        lo, hi = (float(v) for v in text)
    if not (0.0 < lo <= hi < 1.0) or math.isnan(lo) or math.isnan(hi):
        raise ValueError(f"--uncertain-band LOW,HIGH needs 0 < LOW <= HIGH < 1, got {lo:g},{hi:g}")
    return lo, hi


def verdict_from_p(p_fake: float | None, band: tuple[float, float] = DEFAULT_BAND) -> str:
    """``real`` / ``uncertain`` / ``fake`` by the band, ``undetermined`` without a score."""
    if p_fake is None or (isinstance(p_fake, float) and math.isnan(p_fake)):
        return "undetermined"
    lo, hi = band
    if p_fake >= hi:
        return "fake"
    if p_fake < lo:
        return "real"
    return "uncertain"


def judges(record: Record) -> dict[str, float]:
    """Who gave a p_fake for this record: ``mllm`` (in mllm mode) and each expert that scored."""
    out: dict[str, float] = {}
    if record.mode == "mllm" and record.p_fake is not None:
        out["mllm"] = float(record.p_fake)
    for name, p in (record.experts or {}).items():
        if p is not None:
            out[str(name)] = float(p)
    return out


def disagreements(scores: dict[str, float], high: float = DISAGREE_HIGH, low: float = DISAGREE_LOW) -> list[dict[str, Any]]:
    """Pairs where one judge says >= ``high`` and the other <= ``low``; ``a`` is the fake-leaning one."""
    names = list(scores)
    out = []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            pa, pb = scores[a], scores[b]
            if pa >= high and pb <= low:
                out.append({"a": a, "b": b, "a_p": round(pa, 4), "b_p": round(pb, 4)})
            elif pb >= high and pa <= low:
                out.append({"a": b, "b": a, "a_p": round(pb, 4), "b_p": round(pa, 4)})
    return out


# ---------------------------------------------------------------------------------------------- wording
def p2(v: float) -> str:
    return f"{float(v):.2f}"


def pct(v: float) -> str:
    return f"{round(100 * float(v))}%"


def s1(v: float) -> str:
    return f"{float(v):.1f}"


def grade(p: float, threshold: float) -> str:
    """How a p_fake reads: strongly fake (>= 0.7), leans fake (>= threshold), leans real, strongly real (<= 0.3)."""
    if p >= STRONG:
        return "strongly fake"
    if p >= threshold:
        return "leans fake"
    if p > 1 - STRONG:
        return "leans real"
    return "strongly real"


def _scope(info: dict[str, Any] | None) -> dict[str, Any]:
    """An expert's info()'s ``scope`` (what it detects and not), or {} when it states none."""
    scope = (info or {}).get("scope")
    return scope if isinstance(scope, dict) else {}


def _covers(info: dict[str, Any] | None, prompt_name: str | None) -> tuple[str | None, dict[str, Any]]:
    """What an expert covers (from its info(): scope, then its measured evaluation), and the numbers."""
    info = info or {}
    numbers: dict[str, Any] = {}
    scope = _scope(info)
    covers = scope.get("detects") or scope.get("covers")
    if isinstance(covers, list):
        covers = ", ".join(str(c) for c in covers)
    covers = str(covers) if covers else COVERS.get(str(prompt_name or info.get("prompt_name") or ""))
    measured = []
    for key, ev in (info.get("evaluation") or {}).items():
        if isinstance(ev, dict) and isinstance(ev.get("auc"), (int, float)) and ev.get("set"):
            numbers[f"auc:{key}"] = round(float(ev["auc"]), 2)
            measured.append(f"AUC {p2(ev['auc'])} on {ev['set']}")
    text = covers
    if measured:
        text = (text + "; " if text else "") + "measured " + ", ".join(measured[:3])
    return text, numbers


def _not_covered(record: Record, expert_info: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One ``coverage`` item per forgery kind that an expert which scored is blind to (its scope's ``blind_to``:
    ``[{"kind", "auc", "on"}]``) and no expert which scored covers (scope ``covers_kinds``)."""
    ran = [n for n, p in (record.experts or {}).items() if p is not None]
    covered = {str(k) for n in ran for k in (_scope(expert_info.get(n) or {}).get("covers_kinds") or [])}
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for name in ran:
        for b in _scope(expert_info.get(name) or {}).get("blind_to") or []:
            kind = str(b.get("kind", "")) if isinstance(b, dict) else str(b)
            if not kind or kind in covered or kind in seen:
                continue
            seen.add(kind)
            nums: dict[str, Any] = {"forgery_kind": kind, "expert": name}
            text = f"Not covered: {kind}: {name} does not detect them"
            auc = b.get("auc") if isinstance(b, dict) else None
            if isinstance(auc, (int, float)) and not isinstance(auc, bool):
                nums["auc"] = round(float(auc), 2)
                text += f" (AUC {p2(auc)}" + (f" on {b['on']}" if b.get("on") else "") + ")"
            text += " and no other expert that ran covers them, so this verdict does not rule them out."
            out.append({"kind": "coverage", "text": text, "numbers": nums})
    return out


def build_evidence(record: Record, *, threshold: float, band: tuple[float, float], heatmap=None, landmarks=None,
                   expert_info: dict[str, dict[str, Any]] | None = None, localizer: str | None = None) -> list[dict[str, Any]]:
    """The evidence sentences of a record (see the module docstring), from its numbers and the heatmap."""
    ev: list[dict[str, Any]] = []
    expert_info = expert_info or {}
    if record.p_fake is None:
        return ev
    p = float(record.p_fake)
    lo, hi = band
    who = "the MLLM" if record.mode == "mllm" else "the experts' mean"
    verdict = verdict_from_p(p, band)
    if verdict == "uncertain":
        text = (f"Uncertain: p_fake {p2(p)} from {who} lies in the uncertain band {p2(lo)}–{p2(hi)}; "
                f"the label at threshold {p2(threshold)} is {record.label}.")
    else:
        side = f"at or above {p2(hi)}" if verdict == "fake" else f"below {p2(lo)}"
        text = f"Verdict {verdict}: p_fake {p2(p)} from {who} is {side}."
    ev.append({"kind": "verdict", "text": text,
               "numbers": {"p_fake": round(p, 4), "band_low": lo, "band_high": hi, "threshold": threshold}})
    for name, ep in (record.experts or {}).items():
        info = expert_info.get(name) or {}
        if ep is None:
            ev.append({"kind": "expert", "text": f"Expert {name} could not score this face.", "numbers": {"expert": name}})
            continue
        covers, nums = _covers(info, info.get("prompt_name"))
        text = f"Expert {name} {grade(float(ep), threshold)}: p_fake {p2(ep)}."
        if covers:
            text += f" It looks for {covers}."
        ev.append({"kind": "expert", "text": text,
                   "numbers": {"expert": name, "p_fake": round(float(ep), 4), "threshold": threshold,
                               "strong": STRONG, **nums}})
    if verdict != "fake":
        ev.extend(_not_covered(record, expert_info))
    for d in record.disagreement or []:
        ev.append({"kind": "disagreement",
                   "text": (f"{d['a']} ({p2(d['a_p'])}) and {d['b']} ({p2(d['b_p'])}) disagree: one is at or above "
                            f"{p2(DISAGREE_HIGH)}, the other at or below {p2(DISAGREE_LOW)}."),
                   "numbers": {**d, "high": DISAGREE_HIGH, "low": DISAGREE_LOW}})
    if heatmap is not None:
        ev.extend(_where(heatmap, landmarks, localizer or "localizing expert"))
    if record.kind == "video" and record.frames:
        ev.extend(_timeline(record))
    return ev


def place(region: str, by: str = "landmarks") -> str:
    """"on the left jaw line", "around the mouth", "outside the face", "in the upper left of the crop"."""
    if by != "landmarks":
        return f"in the {region} of the crop"
    if region.startswith(("around ", "outside ")):
        return region
    return f"on the {region}"


def _where(heatmap, landmarks, name: str) -> list[dict[str, Any]]:
    from x2dfd.regions import heat_by_region

    try:
        h = heat_by_region(heatmap, landmarks)
    except ValueError:
        return []
    nums = {"expert": name, "peak": h["peak"], "hot": h["hot"], "hot_fraction": h["hot_fraction"], "by": h["by"]}
    if h["peak"] < h["hot"]:
        return [{"kind": "where", "text": (f"The {name} heatmap shows no strong response (peak {p2(h['peak'])}, "
                                           f"below {p2(h['hot'])}): it marks no blended area."),
                 "numbers": nums}]
    top = [r for r in h["regions"] if r["share"] >= 0.1][:3] or h["regions"][:1]
    parts = [f"{pct(r['share'])} {place(r['region'], h['by'])}" for r in top]
    nums["regions"] = [{"region": r["region"], "share": r["share"]} for r in top]
    text = (f"The {name} heatmap peaks at {p2(h['peak'])}; of its hot area (heat at or above {p2(h['hot'])}, "
            f"{pct(h['hot_fraction'])} of the face crop), " + ", ".join(parts) + ".")
    return [{"kind": "where", "text": text, "numbers": nums}]


def _timeline(record: Record) -> list[dict[str, Any]]:
    ps = [float(f["p_fake"]) for f in record.frames if f.get("p_fake") is not None]
    out = []
    if ps:
        out.append({"kind": "frames",
                    "text": f"{len(ps)} of {len(record.frames)} sampled frames scored; frame p_fake ranges {p2(min(ps))}–{p2(max(ps))}.",
                    "numbers": {"scored": len(ps), "sampled": len(record.frames), "min": round(min(ps), 4),
                                "max": round(max(ps), 4)}})
    segs = record.segments or []
    if segs:
        spans = ", ".join(f"{s1(s['start_s'])}–{s1(s['end_s'])} s (peak {p2(s['peak_p_fake'])})" for s in segs
                          if s.get("start_s") is not None and s.get("end_s") is not None)
        if spans:
            out.append({"kind": "segments",
                        "text": f"{len(segs)} manipulated segment{'s' if len(segs) != 1 else ''}: {spans}.",
                        "numbers": {"segments": [{k: s[k] for k in ("start_s", "end_s", "peak_p_fake")} for s in segs]}})
    elif ps:
        out.append({"kind": "segments", "text": "No manipulated segment (no run of frames by the segment rule).",
                    "numbers": {"segments": []}})
    return out


# ---------------------------------------------------------------------------------------------- the hook
def expert_infos(explainer) -> dict[str, dict[str, Any]]:
    """``{name: info()}`` of the explainer's experts, computed once per explainer."""
    cached = getattr(explainer, "_x2dfd_expert_infos", None)
    if cached is None:
        cached = {}
        for e in getattr(explainer, "experts", []) or []:
            try:
                cached[e.name] = dict(e.info() or {})
            except Exception:  # noqa: BLE001 - an expert without info still scores
                cached[e.name] = {"name": e.name, "prompt_name": getattr(e, "prompt_name", None)}
            cached[e.name].setdefault("prompt_name", getattr(e, "prompt_name", None))
        try:
            explainer._x2dfd_expert_infos = cached
        except AttributeError:
            pass
    return cached


def localizer_name(explainer) -> str | None:
    for e in getattr(explainer, "experts", []) or []:
        if getattr(e, "localize", None) is not None or getattr(e, "predict", None) is not None:
            return e.name
    return None


def annotate(record: Record, artifacts=None, explainer=None, *, band: tuple[float, float] | None = None,
             threshold: float | None = None) -> Record:
    """Fill ``verdict``, ``verdict_band``, ``disagreement``, ``segments`` (videos) and ``evidence`` of a finished
    record from its own numbers, the heatmap and the landmarks in ``artifacts``. Never raises."""
    options = getattr(explainer, "options", None)
    if band is None:
        band = getattr(options, "band", None)
        band = band() if callable(band) else DEFAULT_BAND
    if threshold is None:
        threshold = float(getattr(options, "threshold", 0.5))
    try:
        record.verdict = verdict_from_p(record.p_fake, band)
        record.verdict_band = [band[0], band[1]]
        record.disagreement = disagreements(judges(record)) if record.p_fake is not None else []
        if record.kind == "video" and record.frames:
            from x2dfd.segments import find_segments

            duration = (record.media or {}).get("duration_s")
            record.segments = find_segments(record.frames, duration_s=duration)
        heatmap = getattr(artifacts, "heatmap", None)
        landmarks = getattr(artifacts, "landmarks", None)
        record.evidence = build_evidence(record, threshold=threshold, band=band, heatmap=heatmap, landmarks=landmarks,
                                         expert_info=expert_infos(explainer) if explainer is not None else {},
                                         localizer=localizer_name(explainer) if explainer is not None else None)
    except Exception as err:  # noqa: BLE001 - evidence must never cost the verdict
        record.evidence = [{"kind": "note", "text": f"No evidence: {type(err).__name__}.", "numbers": {}}]
    return record


def complete(record: Record, threshold: float = 0.5, band: tuple[float, float] | None = None) -> Record:
    """A record from an older x2dfd (or made by hand) given what :func:`annotate` would have added, from its own
    numbers (no heatmap: no location sentence). Fields already there are kept."""
    if band is None:
        vb = record.verdict_band
        band = (float(vb[0]), float(vb[1])) if isinstance(vb, (list, tuple)) and len(vb) == 2 else DEFAULT_BAND
    if record.verdict is None:
        record.verdict = verdict_from_p(record.p_fake, band)
        record.verdict_band = [band[0], band[1]]
    if not record.disagreement and record.p_fake is not None:
        record.disagreement = disagreements(judges(record))
    if record.kind == "video" and record.frames and record.segments is None:
        from x2dfd.segments import find_segments

        record.segments = find_segments(record.frames, duration_s=(record.media or {}).get("duration_s"))
    if not record.evidence and record.p_fake is not None:
        record.evidence = build_evidence(record, threshold=threshold, band=band)
    return record
