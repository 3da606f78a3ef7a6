"""Video-level aggregation measured on project-made clips: mean vs median vs max vs topk vs segments.

    python bench/bench_video_aggregate.py --pairs 24 --out bench/results/video_aggregate.json

Clips (``x2dfd.faceswap``, the demo's recipe): for each of ``--pairs`` held-out portraits of
``faces-real-photos`` (the blending expert's ``split.holdout``: never trained on) a real clip (a slow
zoom over the portrait, 24 frames at 8 fps) and a real-then-swapped clip (the same zoom, turning into a
classical face swap of another held-out portrait at 1/4, 1/2 or 3/4 of the clip, in turn). Every clip
goes through ``x2dfd explain --mllm none`` (the shipped blending expert, 16 sampled frames); the
per-frame p_fake timeline is then aggregated each way. Reported per method: AUC (real vs swapped
clips), accuracy at 0.5, and for swapped clips the overlap (IoU in seconds) of the detected
segments with the true swapped interval.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

FRAMES, FPS = 24, 8


def holdout_portraits(n: int):
    from x2dfd.demo.examples import SHARED_PHOTOS
    from x2dfd.errors import NoFaceError
    from x2dfd.face import extract_faces

    from x2dfd.experts.blend import DEFAULT_WEIGHTS

    meta = json.loads(DEFAULT_WEIGHTS.with_suffix(".json").read_text())
    names = meta["training"]["split"].get("holdout") or []
    out = []
    for name in sorted(names):
        path = SHARED_PHOTOS / name
        if not path.is_file():
            continue
        photo = Image.open(path).convert("RGB")
        if min(photo.size) < 200:
            continue
        try:
            [crop] = extract_faces(photo)
        except NoFaceError:
            continue
        f = crop.face
        if f is None or f.landmarks is None or f.score < 0.95:
            continue
        x0, y0, x1, y1 = f.box
        if max(x1 - x0, y1 - y0) < 0.35 * min(photo.size):
            continue
        out.append((name, photo))
        if len(out) == n + 1:
            break
    return out


def clip(real: Image.Image, fake: Image.Image | None, switch: float, path: Path) -> Path:
    from x2dfd.faceswap import write_video

    w, h = real.size
    scale = 320 / max(w, h)
    size = (int(w * scale) // 2 * 2, int(h * scale) // 2 * 2)
    frames = []
    for i in range(FRAMES):
        src = fake if fake is not None and i >= round(switch * FRAMES) else real
        z = 1.0 - 0.1 * i / (FRAMES - 1)
        cw, ch = w * z, h * z
        frames.append(np.asarray(src.resize(size, Image.BILINEAR, box=((w - cw) / 2, (h - ch) / 2, (w + cw) / 2, (h + ch) / 2))))
    return write_video(frames, path, fps=FPS)


def iou(segments, lo: float, hi: float) -> float:
    inter = sum(max(0.0, min(hi, s["end_s"]) - max(lo, s["start_s"])) for s in segments)
    union = (hi - lo) + sum(s["end_s"] - s["start_s"] for s in segments) - inter
    return inter / union if union > 0 else 0.0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=24)
    ap.add_argument("--work", default="bench/out/video_aggregate")
    ap.add_argument("--out", default="bench/results/video_aggregate.json")
    args = ap.parse_args()

    from x2dfd import load_detector
    from x2dfd.faceswap import make_face_swap
    from x2dfd.media import aggregate_frames
    from x2dfd.metrics import roc_auc
    from x2dfd.segments import segment_score

    work = REPO / args.work
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    people = holdout_portraits(args.pairs)
    clips = []  # (path, label, switch)
    for i in range(min(args.pairs, len(people) - 1)):
        name, photo = people[i]
        other = people[i + 1][1]
        real_path = work / f"real_{i:02d}.mp4"
        fake_path = work / f"swapped_{i:02d}.mp4"
        switch = (0.25, 0.5, 0.75)[i % 3]
        if not real_path.exists():
            clip(photo, None, 0.0, real_path)
        if not fake_path.exists():
            swap, _ = make_face_swap(other, photo, seed=i)
            clip(photo, swap, switch, fake_path)
        clips += [(real_path, 0, None), (fake_path, 1, switch)]
    made = time.time() - t0
    detector = load_detector(mllm=None, frames=16)
    records = {r.path: r for r in detector.explain([str(p) for p, _, _ in clips])}
    methods = {"mean": lambda fr: aggregate_frames([f["p_fake"] for f in fr], "mean"),
               "median": lambda fr: aggregate_frames([f["p_fake"] for f in fr], "median"),
               "max": lambda fr: aggregate_frames([f["p_fake"] for f in fr], "max"),
               "topk:3": lambda fr: aggregate_frames([f["p_fake"] for f in fr], "topk", k=3),
               "segments": segment_score}
    ys, scores, per_clip, ious = [], {m: [] for m in methods}, [], []
    for path, y, switch in clips:
        r = records[str(path)]
        if r.p_fake is None:
            per_clip.append({"clip": path.name, "error": r.error})
            continue
        ys.append(y)
        row = {"clip": path.name, "label": y, "switch_s": None if switch is None else switch * FRAMES / FPS,
               "frames": [f["p_fake"] for f in r.frames], "found_segments": r.segments}
        for m, fn in methods.items():
            row[f"score_{m}"] = round(float(fn(r.frames)), 4)
            scores[m].append(row[f"score_{m}"])
        if y == 1:
            duration = (r.media or {}).get("duration_s") or FRAMES / FPS
            ious.append(iou(r.segments or [], switch * FRAMES / FPS, duration))
        per_clip.append(row)
    result = {"clips": len(ys), "real": ys.count(0), "swapped": ys.count(1), "frames_per_clip": 16,
              "expert": "blend (shipped weights)", "make_s": round(made, 1), "total_s": round(time.time() - t0, 1),
              "methods": {m: {"auc": round(roc_auc(ys, s), 4),
                              "accuracy@0.5": round(float(np.mean([(v >= 0.5) == (y == 1) for v, y in zip(s, ys)])), 4),
                              "mean_real": round(float(np.mean([v for v, y in zip(s, ys) if y == 0])), 4),
                              "mean_swapped": round(float(np.mean([v for v, y in zip(s, ys) if y == 1])), 4)}
                          for m, s in scores.items()},
              "segment_iou_swapped": {"mean": round(float(np.mean(ious)), 4) if ious else None,
                                      "per_clip": [round(v, 3) for v in ious]},
              "real_clips_with_a_segment": sum(1 for c in per_clip if c.get("label") == 0 and c.get("found_segments")),
              "per_clip": per_clip}
    out = REPO / args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "per_clip"}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
