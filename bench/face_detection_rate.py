"""Face-detection rate per class on the shared development data, with ms/image.

    python bench/face_detection_rate.py                      # all of ../shared/data, min score 0.5
    python bench/face_detection_rate.py --limit 200 --min-score 0.5

Classes: ``faces-real-photos/real`` and ``stylegan2-vs-real/{images,val_images}/{real,fake}`` (real
and fake counted separately: a detector that finds GAN faces more easily than real ones biases every
downstream metric). Prints a table and writes ``bench/out/face_detection_rate.json``.

Three rates per class: ``rate`` is x2dfd's detector (all passes, phantom boxes dropped, see
x2dfd/face.py); ``rate_first_pass`` the single 300x300 pass with the same box check; ``rate_naive``
counts any detection at or above the score, wherever its box lies (what a plain res10 SSD loop
reports, inflated by opencv#14841's out-of-frame boxes on tight crops).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import cv2
import numpy as np

from x2dfd.face import FaceDetector, _plausible
from x2dfd.media import load_image

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
CLASSES = {
    "faces-real-photos/real": ["faces-real-photos/real"],
    "stylegan2-vs-real/real": ["stylegan2-vs-real/images/real", "stylegan2-vs-real/val_images/real"],
    "stylegan2-vs-real/fake": ["stylegan2-vs-real/images/fake", "stylegan2-vs-real/val_images/fake"],
}
EXTS = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}


def class_files(data_dir: Path, folders: list[str], limit: int | None) -> list[Path]:
    files = sorted(p for d in folders for p in (data_dir / d).glob("*") if p.suffix.lower() in EXTS)
    return files[:limit] if limit else files


def measure(detector: FaceDetector, files: list[Path], min_score: float) -> dict:
    found = first = naive = 0
    misses: list[str] = []
    t_decode = t_detect = c_detect = 0.0
    for path in files:
        t0 = time.perf_counter()
        image = load_image(path)
        rgb = np.asarray(image)
        t1, c1 = time.perf_counter(), time.process_time()
        faces = detector.detect(rgb, min_score=min_score)
        t_detect += time.perf_counter() - t1
        c_detect += time.process_time() - c1
        t_decode += t1 - t0
        found += bool(faces)
        if not faces:
            misses.append(path.name)
        rows = detector._forward(rgb, (300, 300))
        strong = rows[rows[:, 4] >= min_score]
        naive += len(strong) > 0
        first += any(_plausible(*r[:4]) for r in strong)
    n = max(1, len(files))
    return {"n": len(files), "detected": found, "rate": found / n, "rate_first_pass": first / n,
            "rate_naive": naive / n, "ms_per_image_detect": 1000 * t_detect / n,
            "cpu_ms_per_image_detect": 1000 * c_detect / n,
            "ms_per_image_decode": 1000 * t_decode / n, "misses": misses}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", type=Path, default=DATA, help="the shared data folder (default ../shared/data)")
    ap.add_argument("--min-score", type=float, default=0.5, help="detector confidence threshold")
    ap.add_argument("--limit", type=int, default=None, help="at most this many images per class")
    ap.add_argument("--no-landmarks", action="store_true", help="time boxes only (no dlib 68-point landmarks)")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "face_detection_rate.json")
    args = ap.parse_args(argv)
    if not args.data_dir.is_dir():
        raise SystemExit(f"data folder '{args.data_dir}' not found (expected ../shared/data next to the repo)")
    detector = FaceDetector(min_score=args.min_score, landmarks=not args.no_landmarks)
    detector.detect(np.zeros((64, 64, 3), np.uint8))  # load the nets outside the timing
    results = {}
    print(f"load average {' '.join(f'{v:.1f}' for v in os.getloadavg())} on {os.cpu_count()} CPUs")
    print(f"{'class':28} {'n':>5} {'rate':>8} {'1st pass':>9} {'naive':>8} {'ms/img':>7} {'cpu ms':>7}  misses")
    for name, folders in CLASSES.items():
        files = class_files(args.data_dir, folders, args.limit)
        if not files:
            print(f"{name:28} (no images)")
            continue
        r = measure(detector, files, args.min_score)
        results[name] = r
        print(f"{name:28} {r['n']:5d} {100 * r['rate']:7.2f}% {100 * r['rate_first_pass']:8.2f}% "
              f"{100 * r['rate_naive']:7.2f}% {r['ms_per_image_detect']:7.1f} {r['cpu_ms_per_image_detect']:7.1f}  "
              f"{', '.join(r['misses'][:5])}")
    report = {"loadavg": os.getloadavg(), "min_score": args.min_score, "landmarks": not args.no_landmarks, "opencv": cv2.__version__,
              "cpu": platform.processor() or platform.machine(), "cv2_threads": cv2.getNumThreads(),
              "classes": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
