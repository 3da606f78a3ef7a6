"""``x2dfd explain DIR --mllm none`` throughput: today's sequential path against the overlapped one, in one process.

    python bench/bench_pipeline.py                       # 200 real photos, 2 interleaved rounds
    python bench/bench_pipeline.py --images 60 --rounds 3 --workers 2
    python bench/bench_pipeline.py --profile             # where one image's time goes, stage by stage

Lanes (same process, same loaded models, run in turn A B B A ... so a change of machine load hits both):

* ``before``: the pipeline as it was: one thread decodes, detects and crops each input, then the
  blending expert scores the chunk through ``predict`` (scores + heatmaps) with torch's default
  intra-op threads;
* ``after``: ``workers`` threads decode + detect ahead (OpenCV single-threaded each) while the calling
  thread scores chunks with the expert's single-threaded, score-only forward;
* ``sequential``: the new code with ``workers=0`` (checks that the overlap changes nothing).

The records are compared field by field (path order, label, p_fake, expert scores, face boxes,
landmarks, errors; timings excluded). ``after`` must equal ``sequential`` exactly. Against ``before``
p_fake may move in its 6th decimal: convolutions give last-bit different sums with 2 threads than with
1, so rounding to 6 decimals can flip; the count and the largest difference are printed.
The machine's load average is printed at the start and with every round. Results: bench/out/bench_pipeline.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def load() -> str:
    return "load average " + " ".join(f"{v:.2f}" for v in os.getloadavg())


class _Before:
    """The blending expert as the pipeline called it before: ``score`` = ``predict(...)[0]`` (mask head and
    heatmaps computed and dropped) with torch's default thread count."""

    def __init__(self, expert):
        self._expert = expert
        self.name, self.prompt_name = expert.name, expert.prompt_name

    def score(self, faces):
        saved = self._expert.cpu_threads
        self._expert.cpu_threads = None
        try:
            return self._expert.predict(faces)[0]
        finally:
            self._expert.cpu_threads = saved

    def localize(self, faces):
        return self._expert.localize(faces)

    def info(self):
        return self._expert.info()


def _comparable(record) -> dict:
    d = record.to_dict()
    d.pop("timings", None)
    return d


def compare(a: list, b: list) -> dict:
    """Differences between two record lists (timings excluded)."""
    out = {"same_order": [r["path"] for r in a] == [r["path"] for r in b], "differing_records": 0,
           "differing_fields": {}, "max_p_fake_diff": 0.0}
    for x, y in zip(a, b):
        if x == y:
            continue
        out["differing_records"] += 1
        for k in x:
            if x[k] != y.get(k):
                out["differing_fields"][k] = out["differing_fields"].get(k, 0) + 1
        if x.get("p_fake") is not None and y.get("p_fake") is not None:
            out["max_p_fake_diff"] = max(out["max_p_fake_diff"], abs(x["p_fake"] - y["p_fake"]))
    out["differing_records"] += abs(len(a) - len(b))
    return out


def profile(paths: list[str], expert, batch: int) -> dict:
    """Seconds per image of each stage of the sequential path, timed one call at a time."""
    import numpy as np

    from x2dfd import face as F
    from x2dfd.media import file_sha256, load_image

    det = F.get_detector()
    t = {k: 0.0 for k in ("sha256", "decode", "ssd", "landmarks", "crop", "expert_score", "expert_predict")}
    passes = 0
    crops = []
    orig_forward = det._forward

    def counted(*a, **kw):
        nonlocal passes
        passes += 1
        return orig_forward(*a, **kw)

    det._forward = counted
    try:
        for p in paths:
            t0 = time.perf_counter(); file_sha256(p); t1 = time.perf_counter()
            im = load_image(p); t2 = time.perf_counter()
            rgb = np.asarray(im)
            boxes = det._boxes(rgb, F.DEFAULT_MIN_SCORE); t3 = time.perf_counter()
            boxes.sort(key=lambda b: -(b[0][2] - b[0][0]) * (b[0][3] - b[0][1]))
            faces = [F.Face(box=tuple(float(v) for v in b), score=s, landmarks=det._landmarks(rgb, b)) for b, s in boxes[:1]]
            t4 = time.perf_counter()
            crops += [F.crop_face(rgb, f).image for f in faces]; t5 = time.perf_counter()
            for k, dt in zip(("sha256", "decode", "ssd", "landmarks", "crop"), (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)):
                t[k] += dt
    finally:
        det._forward = orig_forward
    for i in range(0, len(crops), batch):
        t0 = time.perf_counter(); expert.score(crops[i : i + batch]); t1 = time.perf_counter()
        _Before(expert).score(crops[i : i + batch]); t2 = time.perf_counter()
        t["expert_score"] += t1 - t0
        t["expert_predict"] += t2 - t1
    n = len(paths)
    return {"per_image_s": {k: round(v / n, 5) for k, v in t.items()}, "ssd_passes_per_image": passes / n,
            "faces": len(crops)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(SHARED / "data" / "faces-real-photos" / "real"))
    ap.add_argument("--images", type=int, default=200, help="the first N files of --data, sorted")
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds (each lane runs once per round)")
    ap.add_argument("--workers", type=int, default=None, help="workers of the 'after' lane (default: auto)")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--profile", action="store_true", help="also time each stage of the sequential path")
    ap.add_argument("--out", default=str(REPO / "bench" / "out" / "bench_pipeline.json"))
    args = ap.parse_args()
    print(f"start: {load()}, {os.cpu_count()} CPUs", flush=True)

    import cv2
    import torch

    from x2dfd.api import build_explainer
    from x2dfd.pipeline import PipelineOptions

    paths = sorted(str(p) for p in Path(args.data).iterdir() if p.is_file())[: args.images]
    new = build_explainer(None, None, PipelineOptions(batch_size=args.batch_size, workers=args.workers), device="cpu")
    expert = new.experts[0]
    old = build_explainer(None, None, PipelineOptions(batch_size=args.batch_size, workers=0), device="cpu")
    old.experts = [_Before(expert)]
    seq = build_explainer(None, None, PipelineOptions(batch_size=args.batch_size, workers=0), device="cpu")
    seq.experts = [expert]
    lanes = {"before": old, "after": new, "sequential": seq}
    print(f"{len(paths)} images, batch {args.batch_size}, after-lane workers {new.options.resolved_workers()}, "
          f"torch threads {torch.get_num_threads()}, cv2 threads {cv2.getNumThreads()}", flush=True)
    list(new.run(paths[:4]))  # warm-up: detector and expert weights, kernels
    list(old.run(paths[:4]))

    prof = None
    if args.profile:
        prof = profile(paths, expert, args.batch_size)
        print(f"profile ({load()}): " + ", ".join(f"{k} {v * 1000:.1f} ms" for k, v in prof["per_image_s"].items())
              + f"; {prof['ssd_passes_per_image']:.2f} SSD passes per image", flush=True)

    times: dict[str, list[float]] = {k: [] for k in lanes}
    records: dict[str, list] = {}
    order = list(lanes)
    for r in range(args.rounds):
        for name in (order if r % 2 == 0 else order[::-1]):
            t0 = time.perf_counter()
            recs = [_comparable(x) for x in lanes[name].run(paths)]
            dt = time.perf_counter() - t0
            times[name].append(dt)
            records.setdefault(name, recs)
            print(f"round {r + 1} {name:10s} {len(recs) / dt:6.2f} images/s ({dt:.1f} s)  [{load()}]", flush=True)

    rate = {k: len(paths) / statistics.median(v) for k, v in times.items()}
    ratios = [b / a for a, b in zip(times["after"], times["before"])]
    same = compare(records["sequential"], records["after"])
    vs_before = compare(records["before"], records["after"])
    print(f"images/s (median of {args.rounds}): before {rate['before']:.2f}, after {rate['after']:.2f}, "
          f"sequential {rate['sequential']:.2f}; after/before per round: "
          + ", ".join(f"{x:.2f}x" for x in ratios))
    print(f"after vs sequential: {'IDENTICAL' if same['differing_records'] == 0 and same['same_order'] else same}")
    print(f"after vs before: {vs_before['differing_records']} of {len(paths)} records differ "
          f"(fields {vs_before['differing_fields']}, max |p_fake diff| {vs_before['max_p_fake_diff']:.1e}), "
          f"same order: {vs_before['same_order']}")
    errors = sum(1 for r in records["after"] if r["error"])
    print(f"{errors} records with errors (no face etc.); end: {load()}")
    result = {"images": len(paths), "batch_size": args.batch_size, "workers": new.options.resolved_workers(),
              "seconds": times, "images_per_s": rate, "after_over_before": ratios,
              "after_vs_sequential": same, "after_vs_before": vs_before, "profile": prof,
              "cpus": os.cpu_count(), "end_load": os.getloadavg()}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    if same["differing_records"] or not same["same_order"]:
        raise SystemExit("the overlapped pipeline changed the records")


if __name__ == "__main__":
    main()
