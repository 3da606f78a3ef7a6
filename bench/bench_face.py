"""Throughput of the face and video front end: faces/s and video frames/s on this machine.

    python bench/bench_face.py                              # 300x300 and 1920x1080, all containers
    python bench/bench_face.py --n 50 --sizes 300x300,1920x1080 --video-size 1280x720 --video-frames 300

* faces/s for detect (res10 SSD + dlib 68 landmarks) + align + crop to 224x224: a shared face photo
  as is (300x300) and pasted on a large canvas (1920x1080, where the detector works on a
  downscaled copy and maps boxes back); detect-only and crop-only times are reported too.
* video: a clip per container (mp4, avi, mov, webm, mkv) written from shared face photos, then
  ``sample_video(n_frames=16)`` timed; frames/s = video frames covered per second (total_frames / s)
  and sampled frames/s. OpenCV's VideoCapture (grab every frame, retrieve the sampled ones, as
  DeepfakeBench does) is timed on the same files for comparison with PyAV.

Wall-clock rates depend on what else runs; CPU-time rates (all threads' CPU seconds) are printed
too, as they hardly change on a busy machine.

CPU only (``--device`` is accepted for uniformity with the other benchmarks). Writes
``bench/out/bench_face.json``. Needs ../shared/data for the face photo.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from x2dfd.face import crop_face, extract_faces, get_detector
from x2dfd.faceswap import VIDEO_CODECS, make_test_video
from x2dfd.media import load_image, sample_video, uniform_indices

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
FACES = [f"stylegan2-vs-real/images/real/real_{i}.jpg" for i in (10, 20, 30, 40)]


def parse_size(text: str) -> tuple[int, int]:
    w, h = text.lower().split("x")
    return int(w), int(h)


def test_image(face: Image.Image, size: tuple[int, int]) -> Image.Image:
    if size == face.size:
        return face
    canvas = Image.new("RGB", size, (50, 55, 60))
    side = min(face.width, size[0], size[1])
    canvas.paste(face.resize((side, side)), ((size[0] - side) * 2 // 3, (size[1] - side) // 3))
    return canvas


def bench_faces(image: Image.Image, n: int) -> dict:
    detector = get_detector()
    extract_faces(image, align=True, size=224)  # warm-up
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(n):
        [crop] = extract_faces(image, align=True, size=224)
    total = (time.perf_counter() - t0) / n
    cpu = (time.process_time() - c0) / n  # all threads' CPU time: robust to a busy machine
    rgb = np.asarray(image)
    t0 = time.perf_counter()
    for _ in range(n):
        faces = detector.detect(rgb)
    detect = (time.perf_counter() - t0) / n
    t0 = time.perf_counter()
    for _ in range(n):
        crop_face(image, faces[0], size=224, align=True)
    crop = (time.perf_counter() - t0) / n
    return {"faces_per_s": 1 / total, "ms_per_face": 1000 * total, "cpu_ms_per_face": 1000 * cpu,
            "faces_per_cpu_s": 1 / cpu, "ms_detect_landmarks": 1000 * detect,
            "ms_align_crop": 1000 * crop, "crop_size": list(crop_face(image, faces[0], size=224).image.size)}


def opencv_sample(path: Path, n_frames: int) -> tuple[int, int]:
    """DeepfakeBench's loop: frame count from the container, grab all, retrieve the sampled ones."""
    cap = cv2.VideoCapture(str(path))
    total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    wanted = set(uniform_indices(total, n_frames))
    got = i = 0
    while cap.grab():
        if i in wanted:
            ok, bgr = cap.retrieve()
            if ok:
                Image.fromarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
                got += 1
        i += 1
    cap.release()
    return got, total


def bench_videos(faces: list[Image.Image], size: tuple[int, int], n_video: int, n_sample: int, repeats: int) -> dict:
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for ext in VIDEO_CODECS:
            path = make_test_video(faces, Path(tmp) / f"bench{ext}", n_frames=n_video, fps=30, size=size)
            row = {"codec": VIDEO_CODECS[ext], "mib": path.stat().st_size / 2**20}
            for method in ("auto", "sequential", "seek"):
                sample_video(path, n_sample, method=method)  # warm-up (file cache)
                t0, c0 = time.perf_counter(), time.process_time()
                for _ in range(repeats):
                    frames, info = sample_video(path, n_sample, method=method)
                dt = (time.perf_counter() - t0) / repeats
                cpu = (time.process_time() - c0) / repeats
                row[method] = {"s": dt, "cpu_s": cpu, "video_frames_per_s": info["total_frames"] / dt,
                               "sampled_frames_per_s": len(frames) / dt, "video_frames_per_cpu_s": n_video / cpu,
                               "method": info["method"]}
            t0, c0 = time.perf_counter(), time.process_time()
            for _ in range(repeats):
                got, reported = opencv_sample(path, n_sample)
            dt = (time.perf_counter() - t0) / repeats
            cpu = (time.process_time() - c0) / repeats
            row["opencv"] = {"s": dt, "cpu_s": cpu, "video_frames_per_s": n_video / dt,
                             "sampled_frames_per_s": got / dt, "video_frames_per_cpu_s": n_video / cpu,
                             "reported_total": reported}
            out[ext] = row
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", help="accepted for uniformity; the face front end runs on CPU")
    ap.add_argument("--n", type=int, default=30, help="repetitions per image size")
    ap.add_argument("--sizes", default="300x300,1920x1080", help="image sizes WxH, comma-separated")
    ap.add_argument("--video-size", default="1280x720", help="size of the benchmark videos")
    ap.add_argument("--video-frames", type=int, default=300, help="frames per benchmark video")
    ap.add_argument("--sample", type=int, default=16, help="frames sampled per video (--frames)")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per video and method")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "bench_face.json")
    args = ap.parse_args(argv)
    if args.device != "cpu":
        print(f"note: --device {args.device} ignored, face detection and video decoding run on CPU")
    if not DATA.is_dir():
        raise SystemExit(f"'{DATA}' not found: the benchmark needs the shared face photos")
    faces = [load_image(DATA / rel) for rel in FACES]
    report: dict = {"cpu": platform.processor() or platform.machine(), "cv2_threads": cv2.getNumThreads(),
                    "opencv": cv2.__version__, "faces": {}, "video": {}}
    print(f"load average {' '.join(f'{v:.1f}' for v in os.getloadavg())} on {os.cpu_count()} CPUs")
    report["loadavg"] = os.getloadavg()
    print(f"{'image':>10} {'faces/s':>8} {'ms/face':>8} {'cpu ms':>7} {'detect+lm':>10} {'align+crop':>11}")
    for text in args.sizes.split(","):
        size = parse_size(text)
        r = bench_faces(test_image(faces[0], size), args.n)
        report["faces"][text] = r
        print(f"{text:>10} {r['faces_per_s']:8.1f} {r['ms_per_face']:8.1f} {r['cpu_ms_per_face']:7.1f} "
              f"{r['ms_detect_landmarks']:10.1f} "
              f"{r['ms_align_crop']:11.2f}")
    vsize = parse_size(args.video_size)
    report["video"] = {"size": args.video_size, "frames": args.video_frames, "sample": args.sample,
                       "containers": bench_videos(faces, vsize, args.video_frames, args.sample, args.repeats)}
    print(f"\nvideo {args.video_size}, {args.video_frames} frames, sample {args.sample}: video frames/s covered "
          f"(sampled frames/s)")
    print(f"{'ext':>6} {'codec':>11} {'auto':>16} {'sequential':>16} {'seek':>16} {'opencv':>16}"
          f"  | per CPU-s: auto, opencv")
    for ext, row in report["video"]["containers"].items():
        cells = [f"{row[m]['video_frames_per_s']:7.0f} ({row[m]['sampled_frames_per_s']:5.0f})"
                 for m in ("auto", "sequential", "seek", "opencv")]
        print(f"{ext:>6} {row['codec']:>11} " + " ".join(f"{c:>16}" for c in cells)
              + f"  | {row['auto']['video_frames_per_cpu_s']:6.0f} {row['opencv']['video_frames_per_cpu_s']:6.0f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
