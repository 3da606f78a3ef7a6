"""Throughput of an expert on CPU (or --device): faces/s for score(), localize() and predict() by batch size.

    .venv/bin/python bench/bench_expert.py                      # shipped blend, 2 threads
    .venv/bin/python bench/bench_expert.py --batch-sizes 1 32 --threads 4 --faces 128
    .venv/bin/python bench/bench_expert.py --layout plain      # weights and inputs in plain NCHW (before 2026-11-28)

Faces are real detected crops from ../shared/data/faces-real-photos when present (1.3x crops at
native resolution, as explain hands them over), else random 256x256 images. Not a test: figures
go to stdout and bench/out/bench_expert.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT.parent / "shared" / "data" / "faces-real-photos" / "real"


def real_crops(n: int) -> list[Image.Image]:
    from x2dfd.face import crop_face, get_detector

    det = get_detector()
    crops = []
    for path in sorted(REAL.glob("*.jpg"))[::7]:
        img = Image.open(path).convert("RGB")
        faces = det.detect(np.asarray(img))
        if faces:
            crops.append(crop_face(img, faces[0], scale=1.3).image)
        if len(crops) == n:
            break
    return crops


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--expert", default="blend")
    ap.add_argument("--weights", default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--faces", type=int, default=64)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--layout", choices=["channels_last", "plain"], default="channels_last",
                    help="blend-family experts: weights and inputs in NHWC (the default) or plain NCHW")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "bench_expert.json")
    args = ap.parse_args(argv)

    from x2dfd import experts

    torch.set_num_threads(args.threads)
    load0 = os.getloadavg()
    print(f"{args.expert} on {args.device}, {args.threads} threads, {args.layout} layout; load average "
          + " ".join(f"{v:.2f}" for v in load0), flush=True)
    faces = real_crops(args.faces) if REAL.is_dir() else []
    source = "faces-real-photos 1.3x crops" if faces else "random 256x256"
    if not faces:
        rng = np.random.default_rng(0)
        faces = [Image.fromarray(rng.integers(0, 255, (256, 256, 3), dtype=np.uint8)) for _ in range(args.faces)]
    sizes = [f.width for f in faces]
    results = []
    for bs in args.batch_sizes:
        expert = experts.load_expert(args.expert, device=args.device, weights=args.weights, batch_size=bs)
        if hasattr(expert, "cpu_threads"):  # the blend family pins its CPU forward to 1 thread; time --threads
            expert.cpu_threads = args.threads
        if args.layout == "plain":
            expert.set_layout(torch.contiguous_format)
        expert.score(faces[: min(bs, 4)])  # warm-up
        row = {"batch_size": bs}
        for method in ("score", "localize", "predict"):
            fn = getattr(expert, method, None)
            if fn is None:
                continue
            t = time.perf_counter()
            out = fn(faces)
            dt = time.perf_counter() - t
            if out is None:
                continue
            row[f"{method}_faces_per_s"] = round(len(faces) / dt, 2)
        results.append(row)
        print(row)
    report = {"expert": expert.info(), "device": args.device, "threads": args.threads, "layout": args.layout,
              "load_average_start": [round(v, 2) for v in load0], "faces": len(faces),
              "face_source": source, "crop_side_px": {"min": min(sizes), "median": int(np.median(sizes)), "max": max(sizes)},
              "torch": torch.__version__, "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
