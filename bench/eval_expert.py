"""Measure an expert (default: the shipped ``blend``) on face swaps of held-out real photos and on
StyleGAN2 faces: AUC, AP, EER, TPR@1%FPR with bootstrap CIs, detection rate per class, faces/s.

    .venv/bin/python bench/eval_expert.py                       # shipped weights, both sets
    .venv/bin/python bench/eval_expert.py --weights runs/blend --sets swaps --limit 100

(a) ``swaps``: the training record's held-out split of ``faces-real-photos`` (never seen in training
    or validation). Real = each held-out original; fake = ``x2dfd.faceswap.make_face_swap`` of another
    held-out image's face onto it (a fixed derangement, seed 0). Both go through the same detection
    and 1.3x crop as ``x2dfd explain``.
(b) ``stylegan``: ``stylegan2-vs-real`` (real Unsplash faces vs fully synthetic StyleGAN2 faces):
    blending detectors are not designed for fully synthetic faces; reported as measured.

Images where no face is found are counted per class and left out of the metrics (also reported
with them scored 0.5, the "undetermined" middle). Writes bench/out/eval_expert.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def _metrics(y: list[int], p: list[float], n_boot: int = 1000) -> dict:
    from x2dfd.metrics import average_precision, bootstrap_ci, eer, roc_auc, tpr_at_fpr

    y_arr, p_arr = np.asarray(y), np.asarray(p)
    if len(set(y)) < 2:
        return {"n": len(y), "error": "one class only"}
    out = {"n": len(y), "n_real": int((y_arr == 0).sum()), "n_fake": int((y_arr == 1).sum())}
    for name, fn in (("auc", roc_auc), ("ap", average_precision), ("eer", eer)):
        point, lo, hi = bootstrap_ci(fn, y_arr, p_arr, n=n_boot, seed=0)
        out[name] = round(point, 4)
        out[f"{name}_ci95"] = [round(lo, 4), round(hi, 4)]
    out["tpr_at_1pct_fpr"] = round(tpr_at_fpr(y_arr, p_arr, fpr=0.01), 4)
    out["acc_at_0.5"] = round(float(((p_arr >= 0.5) == y_arr).mean()), 4)
    out["mean_p_fake_real"] = round(float(p_arr[y_arr == 0].mean()), 4)
    out["mean_p_fake_fake"] = round(float(p_arr[y_arr == 1].mean()), 4)
    return out


def _crop(image, detector, scale: float = 1.3):
    from x2dfd.face import crop_face

    faces = detector.detect(np.asarray(image))
    return crop_face(image, faces[0], scale=scale) if faces else None


def _score(expert, crops: list) -> tuple[list[float], float]:
    t = time.perf_counter()
    scores = [s.p_fake for s in expert.score([c.image for c in crops])] if crops else []
    return scores, time.perf_counter() - t


def _evaluate(expert, items: list[tuple[str, int, object]], detector, name: str) -> dict:
    """items: (id, label, PIL image). Detect + crop + score; metrics on detected faces."""
    crops, labels, ids, missed = [], [], [], {0: 0, 1: 0}
    totals = {0: 0, 1: 0}
    t0 = time.perf_counter()
    for key, label, image in items:
        totals[label] += 1
        crop = _crop(image, detector)
        if crop is None:
            missed[label] += 1
            continue
        crops.append(crop)
        labels.append(label)
        ids.append(key)
    t_detect = time.perf_counter() - t0
    scores, t_score = _score(expert, crops)
    res = {
        "set": name,
        "detection_rate": {("real" if k == 0 else "fake"): round(1 - missed[k] / max(totals[k], 1), 4) for k in (0, 1)},
        "images": {("real" if k == 0 else "fake"): totals[k] for k in (0, 1)},
        "metrics_detected": _metrics(labels, scores),
        "faces_per_s_score_only": round(len(crops) / max(t_score, 1e-9), 2),
        "images_per_s_detect_crop": round(sum(totals.values()) / max(t_detect, 1e-9), 2),
    }
    # undetected faces as "undetermined" (0.5): what a pipeline that keeps every input would see
    y_all = labels + [0] * missed[0] + [1] * missed[1]
    s_all = scores + [0.5] * (missed[0] + missed[1])
    res["metrics_all_inputs_undetected_0.5"] = _metrics(y_all, s_all, n_boot=200)
    res["per_item"] = [{"id": i, "label": y, "p_fake": round(s, 5)} for i, y, s in zip(ids, labels, scores)]
    return res


def swap_items(real_dir: Path, holdout: list[str], limit: int | None, seed: int = 0, tries: int = 3):
    """(id, label, PIL) for held-out originals (0) and face swaps onto them (1), plus the failures.

    Sources follow a fixed random derangement of the held-out list; when a swap fails (no face, or
    x2dfd.faceswap raising on faces cut by the image border), the next ``tries - 1`` images in that
    order are tried as the source. Every failed attempt is reported."""
    from x2dfd.faceswap import make_face_swap
    from x2dfd.face import get_detector
    from x2dfd.media import load_image

    files = sorted(holdout)[: limit or None]
    n = len(files)
    order = np.random.default_rng(seed).permutation(n)
    pos = {int(f): i for i, f in enumerate(order)}
    detector = get_detector()
    cache: dict[int, object] = {}

    def image(i: int):
        if i not in cache:
            cache[i] = load_image(real_dir / files[i])
        return cache[i]

    failures, items = [], []
    for t_idx, name in enumerate(files):
        target = image(t_idx)
        items.append((name, 0, target))
        for k in range(1, tries + 1):
            s_idx = int(order[(pos[t_idx] + k) % n])  # the k-th next image in the derangement cycle
            try:
                fake, _mask = make_face_swap(image(s_idx), target, detector=detector, seed=t_idx)
            except Exception as err:  # noqa: BLE001 - per-item loop: a pair that cannot be swapped is recorded
                failures.append(f"{files[s_idx]} -> {name}: {type(err).__name__}: {' '.join(str(err).split())[:160]}")
                continue
            items.append((f"swap:{files[s_idx]}->{name}", 1, fake))
            break
        if len(cache) > 64:
            cache.clear()
    return items, failures


def stylegan_items(root: Path, limit: int | None):
    from x2dfd.media import load_image

    items = []
    for label, cls in ((0, "real"), (1, "fake")):
        files = sorted(root.glob(f"*/{cls}/*.jpg"))
        for f in files[: limit or None]:
            items.append((str(f.relative_to(root)), label, load_image(f)))
    return items


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--expert", default="blend")
    ap.add_argument("--weights", default=None, help="weights file/dir (default: the shipped ones)")
    ap.add_argument("--sets", nargs="+", default=["swaps", "stylegan"], choices=["swaps", "stylegan"])
    ap.add_argument("--real-dir", type=Path, default=SHARED / "faces-real-photos" / "real")
    ap.add_argument("--stylegan-dir", type=Path, default=SHARED / "stylegan2-vs-real")
    ap.add_argument("--split", type=Path, default=None, help="split.json with a 'holdout' list (default: the weights' training record)")
    ap.add_argument("--limit", type=int, default=None, help="per class / per set, for quick runs")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "eval_expert.json")
    args = ap.parse_args(argv)

    from x2dfd import experts
    from x2dfd.face import get_detector

    torch.set_num_threads(args.threads)
    expert = experts.load_expert(args.expert, weights=args.weights)
    info = expert.info()
    detector = get_detector()
    report: dict = {"expert": info, "threads": args.threads, "torch": torch.__version__, "sets": {}}

    if "swaps" in args.sets:
        if args.split:
            holdout = json.loads(args.split.read_text())["holdout"]
        else:
            holdout = (getattr(expert, "record", {}) or {}).get("split", {}).get("holdout")
        if not holdout:
            raise SystemExit("no held-out split: pass --split OUT/split.json")
        items, failures = swap_items(args.real_dir, holdout, args.limit)
        res = _evaluate(expert, items, detector, "faces-real-photos held-out: originals vs x2dfd.faceswap swaps")
        res["swap_failures"] = failures
        report["sets"]["swaps"] = res
    if "stylegan" in args.sets:
        report["sets"]["stylegan"] = _evaluate(expert, stylegan_items(args.stylegan_dir, args.limit), detector,
                                               "stylegan2-vs-real: Unsplash real vs StyleGAN2 fake")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    for key, res in report["sets"].items():
        m = res["metrics_detected"]
        print(f"[{key}] {res['set']}")
        print(f"  detection rate  real {res['detection_rate']['real']:.3f}  fake {res['detection_rate']['fake']:.3f}"
              f"  (images: {res['images']})")
        if "auc" in m:
            print(f"  AUC {m['auc']:.4f} {m['auc_ci95']}  AP {m['ap']:.4f}  EER {m['eer']:.4f}  "
                  f"TPR@1%FPR {m['tpr_at_1pct_fpr']:.3f}  (n real {m['n_real']}, fake {m['n_fake']})")
        print(f"  scoring {res['faces_per_s_score_only']:.1f} faces/s (score only, {args.threads} threads); "
              f"detect+crop {res['images_per_s_detect_crop']:.1f} images/s")
        if res.get("swap_failures"):
            print(f"  swap failures: {len(res['swap_failures'])}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
