"""The shipped blending expert through ``x2dfd evaluate``: StyleGAN2 faces and project-made face swaps,
clean and under the robustness sweep, at frame level (and video level on small swap videos).

    .venv/bin/python bench/eval_blend.py                                  # everything, bench/out/eval_blend/
    .venv/bin/python bench/eval_blend.py --sets swaps --limit 60 --bootstrap 200   # a quick look

Data it builds (under --out/data, never in the repo; it reads ../shared in place):

* ``stylegan2.csv``: all of ``stylegan2-vs-real`` (images/ and val_images/, the ``source`` column):
  Unsplash real faces vs StyleGAN2 faces. Blending detectors are not built for fully synthetic faces.
* ``swaps.csv``: the expert's HELD-OUT split of ``faces-real-photos`` (from the training record beside the
  weights, ``experts/weights/blend_*.json`` -> split.holdout, or --split): each held-out original is a
  real item (the original file); its fake is ``x2dfd.faceswap.make_face_swap`` of the face of another
  held-out image onto it (a fixed derangement with seed 0; on failure the next 2 images in that order are
  tried), saved losslessly as PNG, so the clean condition sees exactly the swap and the perturbations hit
  both classes alike. Same construction as bench/eval_expert.py, so the clean numbers cross-check it.
* ``swap_videos.csv`` (--videos N): N real and N fake 8-frame H.264 clips (``make_test_video``: the photo
  moving and zooming over a grey background), each from one held-out original or its swap: the video level.

Then, per set: ``x2dfd evaluate MANIFEST --mllm none --expert blend --perturb jpeg:90,70,50,30 blur:1,2
resize:0.5,0.25 noise:0.02`` into --out/<set>/, and a summary of every set in --out/summary.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
PERTURB = ["jpeg:90,70,50,30", "blur:1,2", "resize:0.5,0.25", "noise:0.02"]


def holdout_list(split: Path | None) -> tuple[list[str], str]:
    if split is not None:
        return json.loads(split.read_text())["holdout"], str(split)
    records = sorted((ROOT / "experts" / "weights").glob("blend_*.json"))
    for rec in records:
        data = json.loads(rec.read_text())
        hold = ((data.get("training") or data).get("split") or {}).get("holdout")
        if hold:
            return hold, str(rec)
    raise SystemExit("no held-out split found beside the shipped blend weights; pass --split OUT/split.json")


def write_manifest(path: Path, rows: list[tuple[str, int, str | None, str | None]]) -> Path:
    import csv

    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", "video_id", "source"])
        w.writerows(rows)
    return path


def stylegan_manifest(out: Path, limit: int | None) -> Path:
    root = SHARED / "stylegan2-vs-real"
    rows = []
    for label, cls in ((0, "real"), (1, "fake")):
        for sub in ("images", "val_images"):
            files = sorted((root / sub / cls).glob("*.jpg"))
            rows += [(str(f), label, None, sub) for f in files[: limit or None]]
    return write_manifest(out / "stylegan2.csv", rows)


def swap_manifest(out: Path, holdout: list[str], limit: int | None, videos: int, tries: int = 3) -> tuple[Path, Path | None, dict]:
    from x2dfd.face import get_detector
    from x2dfd.faceswap import make_face_swap, make_test_video
    from x2dfd.media import load_image

    real_dir = SHARED / "faces-real-photos" / "real"
    files = sorted(holdout)[: limit or None]
    n = len(files)
    order = np.random.default_rng(0).permutation(n)
    pos = {int(f): i for i, f in enumerate(order)}
    detector = get_detector()
    fake_dir = out / "swaps"
    fake_dir.mkdir(parents=True, exist_ok=True)
    rows, failures, pairs = [], [], []
    t0 = time.perf_counter()
    for t_idx, name in enumerate(files):
        rows.append((str(real_dir / name), 0, None, "original"))
        dest = fake_dir / f"{Path(name).stem}.png"
        done = dest.is_file()
        for k in range(1, tries + 1):
            if done:
                break
            s_idx = int(order[(pos[t_idx] + k) % n])
            try:
                fake, _ = make_face_swap(load_image(real_dir / files[s_idx]), load_image(real_dir / name),
                                         detector=detector, seed=t_idx)
            except Exception as err:  # noqa: BLE001 - a pair that cannot be swapped is recorded, the next is tried
                failures.append(f"{files[s_idx]} -> {name}: {type(err).__name__}: {' '.join(str(err).split())[:120]}")
                continue
            fake.save(dest)
            done = True
        if done:
            rows.append((str(dest), 1, None, "faceswap"))
            pairs.append((real_dir / name, dest))
    log = fake_dir / "failures.json"  # attempts of earlier runs (a rerun reuses their swaps and tries nothing)
    earlier = json.loads(log.read_text()) if log.is_file() else []
    swapped = {Path(real).name for real, _ in pairs}  # failures of earlier runs for targets swapped since are history
    failures = sorted(set(failures) | {f for f in earlier if f.split(" -> ", 1)[-1].split(":", 1)[0] not in swapped})
    log.write_text(json.dumps(failures, indent=1) + "\n")
    info = {"holdout_images": n, "swaps": sum(r[1] for r in rows), "swap_failures": failures,
            "seconds": round(time.perf_counter() - t0, 1)}
    manifest = write_manifest(out / "swaps.csv", rows)
    vid_manifest = None
    if videos:
        vdir = out / "swap_videos"
        vdir.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(1)
        chosen = [pairs[i] for i in sorted(rng.choice(len(pairs), min(videos, len(pairs)), replace=False))]
        vrows = []
        for j, (real, fake) in enumerate(chosen):
            for label, src in ((0, real), (1, fake)):
                path = vdir / f"{'real' if label == 0 else 'fake'}_{j:03d}.mp4"
                if not path.is_file():
                    make_test_video([load_image(src)], path, n_frames=8, size=(320, 320), seed=j)
                vrows.append((str(path), label, None, None))
        vid_manifest = write_manifest(out / "swap_videos.csv", vrows)
        info["videos_per_class"] = len(chosen)
    return manifest, vid_manifest, info


def run_evaluate(manifest: Path, out: Path, args, perturb: bool = True) -> dict:
    from x2dfd.evaluate import main as evaluate_main

    expert = "blend" + (f"={args.weights}" if args.weights else "")
    argv = [str(manifest), "--mllm", "none", "--expert", expert, "--out", str(out), "--batch-size",
            str(args.batch_size), "--bootstrap", str(args.bootstrap), "--frames", "8", "--quiet"]
    if perturb:
        argv += ["--perturb", *PERTURB]
    t0 = time.perf_counter()
    rc = evaluate_main(argv)
    if rc:
        raise SystemExit(f"x2dfd evaluate failed on {manifest} (exit {rc})")
    metrics = json.loads((out / "metrics.json").read_text())
    metrics["_seconds"] = round(time.perf_counter() - t0, 1)
    return metrics


def summary(name: str, metrics: dict) -> list[str]:
    lines = [f"## {name}", "", f"data fingerprint `{metrics['data']['fingerprint'][:16]}`, "
             f"expert `{metrics['models']['experts'][0].get('weights')}` sha256 "
             f"`{str(metrics['models']['experts'][0].get('sha256'))[:16]}`, {metrics.get('_seconds')} s", ""]
    for level in metrics["protocol"]["levels"]:
        lines += [f"### {level} level", "", "| condition | scored real | scored fake | AUC [95% CI] | AP [95% CI] | "
                  "EER [95% CI] | ACC@0.5 | TPR@1%FPR | TPR@5%FPR |", "|---|---|---|---|---|---|---|---|---|"]
        for cond in metrics["conditions"]:
            lv = cond["levels"][level]
            cov = lv["coverage"]
            b = lv["systems"]["expert:blend"]["all"]

            def f(key, ci=True):
                v = b.get(key)
                if not isinstance(v, dict):
                    return "–"
                return f"{v['value']:.4f}" + (f" [{v['ci'][0]:.4f}, {v['ci'][1]:.4f}]" if ci and v.get("ci") else "")

            lines.append(f"| {cond['name']} | {cov['real']['scored']}/{cov['real']['n']} | {cov['fake']['scored']}/"
                         f"{cov['fake']['n']} | {f('auc')} | {f('ap')} | {f('eer')} | {f('acc', False)} | "
                         f"{f('tpr@fpr0.01', False)} | {f('tpr@fpr0.05', False)} |")
        lines.append("")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "eval_blend")
    ap.add_argument("--sets", nargs="+", default=["stylegan", "swaps", "videos"], choices=["stylegan", "swaps", "videos"])
    ap.add_argument("--weights", default=None, help="blend weights file/dir (default: the shipped ones)")
    ap.add_argument("--split", type=Path, default=None, help="split.json with 'holdout' (default: the weights' record)")
    ap.add_argument("--limit", type=int, default=None, help="images per class (stylegan) / held-out images (swaps)")
    ap.add_argument("--videos", type=int, default=24, help="videos per class for the video level")
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--build-only", action="store_true", help="make the data and manifests, evaluate nothing")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    lines = ["# blend expert through `x2dfd evaluate`", ""]
    built: dict = {}
    if args.build_only:
        stylegan_manifest(out / "data", args.limit)
        holdout, where = holdout_list(args.split)
        *_, built = swap_manifest(out / "data", holdout, args.limit, args.videos)
        print(json.dumps({k: v for k, v in built.items() if k != "swap_failures"}))
        return 0
    if "stylegan" in args.sets:
        m = run_evaluate(stylegan_manifest(out / "data", args.limit), out / "stylegan2", args)
        lines += summary("stylegan2-vs-real (Unsplash real vs StyleGAN2)", m)
    if "swaps" in args.sets or "videos" in args.sets:
        holdout, where = holdout_list(args.split)
        swaps, vids, built = swap_manifest(out / "data", holdout, args.limit,
                                           args.videos if "videos" in args.sets else 0)
        built["holdout_from"] = where
        (out / "data" / "swaps_info.json").write_text(json.dumps(built, indent=1) + "\n")
        if "swaps" in args.sets:
            m = run_evaluate(swaps, out / "swaps", args)
            lines += summary(f"faces-real-photos held-out originals vs x2dfd.faceswap swaps ({built['swaps']} swaps, "
                             f"{len(built['swap_failures'])} failed attempts; held-out list from {where})", m)
        if vids is not None:
            m = run_evaluate(vids, out / "swap_videos", args)
            lines += summary(f"swap videos ({built.get('videos_per_class')} per class, 8 frames, H.264)", m)
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
