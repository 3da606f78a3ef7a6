"""Manipulated segments of a video, found in its per-frame p_fake timeline.

    from x2dfd.segments import find_segments, segment_score
    segments = find_segments(record.frames)      # [{"start_s", "end_s", "peak_p_fake", ...}]

The rule (hysteresis over the sampled frames, in time order; a frame without a score ends a run):

* a segment **starts** at a frame whose p_fake is >= ``enter`` (default 0.65, the top of the default
  uncertain band: a frame that is itself judged fake with some confidence);
* it **continues** while the following frames' p_fake stays >= ``stay`` (default 0.5, the verdict
  threshold), so one frame dipping into the uncertain band above 0.5 does not split it;
* it is **kept** only when it spans at least ``min_frames`` sampled frames (default 2): a single
  fake-looking frame is noise more often than an edit.

Times: a sampled frame stands for the interval up to the next sampled frame, so a segment runs from
its first frame's time to the next sampled frame's time after its last one (the video's duration for
the last frame, when known; else one sampling step). ``peak_p_fake`` is the highest frame p_fake in
it and ``mean_p_fake`` the mean.

:func:`segment_score` turns the timeline into one video p_fake (``--aggregate segments``): the mean
p_fake of the strongest segment (highest mean) when there is one, else the mean of all frames capped
just below ``enter`` (a video with no segment never scores as high as one with a segment).
"""

from __future__ import annotations

import math
from typing import Any

ENTER = 0.65
STAY = 0.5
MIN_FRAMES = 2


def _p(frame: dict[str, Any]) -> float | None:
    p = frame.get("p_fake")
    if p is None:
        return None
    p = float(p)
    return None if math.isnan(p) else p


def find_segments(frames: list[dict[str, Any]] | None, enter: float = ENTER, stay: float = STAY,
                  min_frames: int = MIN_FRAMES, duration_s: float | None = None) -> list[dict[str, Any]]:
    """Segments of ``frames`` (``[{"index", "time_s", "p_fake"}]``, any order) by the module's rule."""
    if not frames:
        return []
    if not stay <= enter:
        raise ValueError(f"segments: stay ({stay}) must be <= enter ({enter})")
    fr = sorted(frames, key=lambda f: (f.get("time_s") if f.get("time_s") is not None else f.get("index", 0),
                                       f.get("index", 0)))
    runs: list[list[int]] = []
    current: list[int] | None = None
    for i, f in enumerate(fr):
        p = _p(f)
        if current is not None and p is not None and p >= stay:
            current.append(i)
            continue
        if current is not None:
            runs.append(current)
            current = None
        if p is not None and p >= enter:
            current = [i]
    if current is not None:
        runs.append(current)
    times = [f.get("time_s") for f in fr]
    step = _step(times)
    out = []
    for run in runs:
        if len(run) < min_frames:
            continue
        first, last = run[0], run[-1]
        ps = [_p(fr[i]) for i in run]
        start = times[first]
        if last + 1 < len(fr) and times[last + 1] is not None:
            end = times[last + 1]
        elif duration_s is not None and times[last] is not None:
            end = max(float(duration_s), float(times[last]))
        else:
            end = None if times[last] is None else float(times[last]) + (step or 0.0)
        out.append({
            "start_s": None if start is None else round(float(start), 3),
            "end_s": None if end is None else round(float(end), 3),
            "start_index": fr[first].get("index"), "end_index": fr[last].get("index"),
            "frames": len(run),
            "peak_p_fake": round(max(ps), 6),
            "mean_p_fake": round(sum(ps) / len(ps), 6),
        })
    return out


def _step(times: list[Any]) -> float | None:
    ts = [float(t) for t in times if t is not None]
    gaps = [b - a for a, b in zip(ts, ts[1:]) if b > a]
    return sorted(gaps)[len(gaps) // 2] if gaps else None


def segment_score(frames: list[dict[str, Any]] | None, enter: float = ENTER, stay: float = STAY,
                  min_frames: int = MIN_FRAMES) -> float | None:
    """The video's p_fake from its segments (see the module docstring); None when no frame has a score."""
    values = [p for p in (_p(f) for f in frames or []) if p is not None]
    if not values:
        return None
    segs = find_segments(frames, enter, stay, min_frames)
    if segs:
        return max(s["mean_p_fake"] for s in segs)
    return min(sum(values) / len(values), math.nextafter(enter, 0.0))


def segment_score_values(p_fakes: list[float | None], **kw: Any) -> float | None:
    """:func:`segment_score` of a bare list of per-frame p_fake in time order."""
    return segment_score([{"index": i, "time_s": None, "p_fake": p} for i, p in enumerate(p_fakes)], **kw)
