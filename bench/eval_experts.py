"""Every figure of the blend / synthesis experts from the shared data, in one command and one table.

    .venv/bin/python bench/eval_experts.py                                   # shipped experts, all sets (~40 min on 2 cores)
    .venv/bin/python bench/eval_experts.py --expert blend --expert blend=runs/blend@mine --limit 40

Sets (built under --out/data and --out/crops, never in the repo; ../shared is read in place):

* ``fr_swap1``   faces-real-photos HELD-OUT split (the shipped blend record's split.holdout: never trained
  on, never validated on): each original (real) vs ``x2dfd.faceswap`` (Delaunay warp + Reinhard colour
  + Poisson clone) of another held-out face onto it (fixed derangement, seed 0; on failure the next 2
  sources in that order are tried).
* ``fr_swap2``   the same originals vs ``x2dfd.faceswap2`` swaps (similarity warp; method i % 3 of
  similarity / similarity_nocolour / pyramid), per-method rows as ``fr_swap2:<method>``; tuning sets since
  training took faceswap2's multi-band blend (``--multiband``).
* ``fr_swap3``   the same originals vs ``x2dfd.faceswap3`` swaps (thin-plate-spline warp, linear colour
  transfer, ellipse mask, linear-ramp blend): the independent test once training took ideas from faceswap2.
* ``un_swap1`` / ``un_swap2`` / ``un_swap3``  the REAL half of stylegan2-vs-real (589 Unsplash photos: another
  photo source, never used for training or tuning) vs swaps between those photos, with faceswap / faceswap2 /
  faceswap3.
* ``stylegan2``  Unsplash real vs 700 StyleGAN2 faces (fully synthetic, not blended).

Conditions: ``clean`` everywhere, and ``jpeg:50 blur:1 resize:0.5 noise:0.02`` (``x2dfd.perturb``, applied
to the full image before face detection, as ``x2dfd evaluate`` does) on fr_swap1 and fr_swap2. Faces are
detected with x2dfd's detector and cropped at 1.3x (what ``x2dfd explain`` feeds experts); images with no
face are counted per class and left out of the metrics. Metrics: AUC with a 95% stratified bootstrap CI,
AP, EER, accuracy at 0.5 and ECE (10 equal-width bins) of the expert's p_fake.

Writes --out/table.md and --out/table.json (one row per expert x set x condition; ``--table NAME`` renames
them, ``--merge A.json B.json`` joins tables written by separate runs over the same data).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
PERTURB = ["jpeg:50", "blur:1", "resize:0.5", "noise:0.02"]
PERTURB_SETS = ("fr_swap1", "fr_swap2")
SETS = ("fr_swap1", "fr_swap2", "un_swap1", "un_swap2", "stylegan2", "fr_swap3", "un_swap3")


def holdout_list() -> tuple[list[str], str]:
    for rec in sorted((ROOT / "experts" / "weights").glob("blend_*.json")):
        data = json.loads(rec.read_text())
        hold = ((data.get("training") or {}).get("split") or {}).get("holdout")
        if hold:
            return sorted(hold), str(rec.relative_to(ROOT))
    raise SystemExit("no held-out split beside the shipped blend weights")


def unsplash_reals() -> list[Path]:
    root = SHARED / "stylegan2-vs-real"
    return sorted(root.glob("images/real/*.jpg")) + sorted(root.glob("val_images/real/*.jpg"))


def stylegan_fakes() -> list[Path]:
    root = SHARED / "stylegan2-vs-real"
    return sorted(root.glob("images/fake/*.jpg")) + sorted(root.glob("val_images/fake/*.jpg"))


def build_swaps(paths: list[Path], out_dir: Path, impl: str, detector, tries: int = 3) -> tuple[list[dict], list[str]]:
    """One swap per target (sources: the derangement of ``paths`` with seed 0). Saved as PNG (lossless)."""
    from x2dfd.faceswap import make_face_swap
    from x2dfd.faceswap2 import METHODS, make_face_swap2
    from x2dfd.faceswap3 import make_face_swap3
    from x2dfd.media import load_image

    out_dir.mkdir(parents=True, exist_ok=True)
    n = len(paths)
    order = np.random.default_rng(0).permutation(n)
    pos = {int(f): i for i, f in enumerate(order)}
    rows, failures = [], []
    for t_idx, target in enumerate(paths):
        method = {"swap1": "faceswap", "swap3": "faceswap3"}.get(impl) or METHODS[t_idx % len(METHODS)]
        dest = out_dir / f"{target.stem}.png"
        if dest.is_file():
            rows.append({"path": str(dest), "label": 1, "method": method, "target": target.name})
            continue
        for k in range(1, tries + 1):
            s_idx = int(order[(pos[t_idx] + k) % n])
            try:
                src, tgt = load_image(paths[s_idx]), load_image(target)
                if impl == "swap1":
                    fake, _ = make_face_swap(src, tgt, detector=detector, seed=t_idx)
                elif impl == "swap3":
                    fake, _ = make_face_swap3(src, tgt, detector=detector, seed=t_idx)
                else:
                    fake, _ = make_face_swap2(src, tgt, method=method, detector=detector, seed=t_idx)
            except Exception as err:  # noqa: BLE001 - per-item loop: a pair that cannot be swapped is recorded
                failures.append(f"{paths[s_idx].name} -> {target.name}: {type(err).__name__}: {' '.join(str(err).split())[:100]}")
                continue
            fake.save(dest)
            rows.append({"path": str(dest), "label": 1, "method": method, "target": target.name, "source": paths[s_idx].name})
            break
    return rows, failures


def build_sets(out: Path, limit: int | None, sets: list[str]) -> dict[str, list[dict]]:
    from x2dfd.face import get_detector

    detector = get_detector()
    data = out / "data"
    hold, where = holdout_list()
    fr_dir = SHARED / "faces-real-photos" / "real"
    fr = [fr_dir / h for h in hold][: limit or None]
    un = unsplash_reals()[: limit or None]
    info: dict = {"holdout_from": where}
    result: dict[str, list[dict]] = {}
    for name in sets:
        t0 = time.time()
        if name == "stylegan2":
            rows = [{"path": str(p), "label": 0, "method": "original"} for p in un]
            rows += [{"path": str(p), "label": 1, "method": "stylegan2"} for p in stylegan_fakes()[: limit or None]]
            fails: list[str] = []
        else:
            reals = fr if name.startswith("fr_") else un
            swaps, fails = build_swaps(reals, data / name, name.split("_")[1], detector)
            rows = [{"path": str(p), "label": 0, "method": "original"} for p in reals] + swaps
        result[name] = rows
        info[name] = {"real": sum(r["label"] == 0 for r in rows), "fake": sum(r["label"] == 1 for r in rows),
                      "swap_failures": len(fails), "seconds": round(time.time() - t0, 1)}
        print(f"[data] {name}: {info[name]}", file=sys.stderr, flush=True)
    (data / "sets.json").write_text(json.dumps({"info": info, "sets": result}, indent=1) + "\n")
    return result


def crops_for(rows: list[dict], cond: str, crop_dir: Path, detector) -> list[dict]:
    """Detect + crop (1.3x) each image under ``cond``; crops cached as PNG by (path, condition)."""
    from x2dfd.face import crop_face
    from x2dfd.media import load_image
    from x2dfd.perturb import parse_perturbations

    pert = None if cond == "clean" else parse_perturbations([cond], seed=0)[0]
    crop_dir.mkdir(parents=True, exist_ok=True)
    out = []
    for r in rows:
        key = hashlib.sha256(f"{r['path']}|{cond}".encode()).hexdigest()[:20]
        png, miss = crop_dir / f"{key}.png", crop_dir / f"{key}.noface"
        if not png.is_file() and not miss.is_file():
            img = load_image(r["path"])
            if pert is not None:
                img = pert(img)
            faces = detector.detect(np.asarray(img))
            if faces:
                crop_face(img, faces[0], scale=1.3).image.convert("RGB").save(png)
            else:
                miss.write_text("")
        out.append({**r, "crop": str(png) if png.is_file() else None})
    return out


def metrics(y: np.ndarray, p: np.ndarray, n_boot: int) -> dict:
    from x2dfd.experts.calibration import ece
    from x2dfd.metrics import bootstrap_metrics

    if len(set(y.tolist())) < 2:
        return {"error": "one class only"}
    b = bootstrap_metrics(y, p, n=n_boot, seed=0)
    auc, lo, hi = b["auc"]
    return {"auc": round(auc, 4), "auc_ci95": [round(lo, 4), round(hi, 4)] if lo is not None else None,
            "ap": round(b["ap"][0], 4), "eer": round(b["eer"][0], 4), "acc": round(b["acc"][0], 4),
            "ece": round(ece(y, p), 4), "mean_p_real": round(float(p[y == 0].mean()), 4),
            "mean_p_fake": round(float(p[y == 1].mean()), 4)}


def score_expert(spec: str, table: list[dict], crops: dict, n_boot: int, threads: int) -> tuple[dict, list[dict]]:
    from PIL import Image

    from x2dfd.experts import load_expert

    name, _, rest = spec.partition("=")
    weights, _, label = rest.partition("@")
    expert = load_expert(name, weights=weights or None)
    expert.cpu_threads = threads
    label = label or (f"{name}" + (f"={weights}" if weights else " (shipped)"))
    info = expert.info()
    rows = []
    faces_per_s = []
    cache: dict[str, float] = {}  # crop -> p_fake: the real originals are shared by several sets
    for (set_name, cond), items in crops.items():
        scored = [r for r in items if r["crop"]]
        todo = sorted({r["crop"] for r in scored} - set(cache))
        t0 = time.perf_counter()
        for i in range(0, len(todo), 32):
            chunk = todo[i : i + 32]
            cache.update(zip(chunk, (s.p_fake for s in expert.score([Image.open(c).convert("RGB") for c in chunk]))))
        if len(todo) >= 32:
            faces_per_s.append(len(todo) / max(time.perf_counter() - t0, 1e-9))
        y = np.array([r["label"] for r in scored])
        p = np.array([cache[r["crop"]] for r in scored])
        groups = [("all", np.ones(len(scored), bool))]
        methods = sorted({r["method"] for r in scored if r["label"] == 1})
        if len(methods) > 1:
            groups += [(m, np.array([r["label"] == 0 or r["method"] == m for r in scored])) for m in methods]
        for g, sel in groups:
            row = {"expert": label, "set": set_name if g == "all" else f"{set_name}:{g}", "condition": cond,
                   "n_real": int((y[sel] == 0).sum()), "n_fake": int((y[sel] == 1).sum()),
                   "no_face": {"real": sum(1 for r in items if not r["crop"] and r["label"] == 0),
                               "fake": sum(1 for r in items if not r["crop"] and r["label"] == 1)},
                   **metrics(y[sel], p[sel], n_boot if g == "all" else min(n_boot, 200))}
            rows.append(row)
        print(f"[{label}] {set_name} {cond}: AUC {rows[-len(groups)].get('auc')}", file=sys.stderr, flush=True)
    # AUC lost under each degradation, against the same set's clean AUC
    clean = {(r["set"]): r.get("auc") for r in rows if r["condition"] == "clean"}
    for r in rows:
        if r["condition"] != "clean" and r.get("auc") is not None and clean.get(r["set"]) is not None:
            r["auc_drop"] = round(clean[r["set"]] - r["auc"], 4)
    return {"label": label, "info": {k: info.get(k) for k in ("name", "weights", "sha256", "calibration")},
            "faces_per_s_scoring": round(float(np.median(faces_per_s)), 1) if faces_per_s else None}, rows


def render(rows: list[dict], experts: list[dict], info: dict) -> str:
    lines = ["# Expert evaluation (bench/eval_experts.py)", "",
             "Each row: one expert on one set under one condition. Real and fake counts are faces scored "
             "(images with no detected face left out, counted in `no face r/f`). AUC with a 95% bootstrap CI.", ""]
    for e in experts:
        lines.append(f"* `{e['label']}`: {e['info'].get('weights')} (sha256 {str(e['info'].get('sha256'))[:12]}), "
                     f"calibration {json.dumps(e['info'].get('calibration'))}, {e['faces_per_s_scoring']} faces/s scoring here")
    lines += ["", "| expert | set | condition | real | fake | no face r/f | AUC [95% CI] | AUC lost | AP | EER | ACC@0.5 | ECE |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ci = f" [{r['auc_ci95'][0]:.3f}, {r['auc_ci95'][1]:.3f}]" if r.get("auc_ci95") else ""
        auc = f"{r['auc']:.3f}{ci}" if "auc" in r else r.get("error", "-")
        lines.append(f"| {r['expert']} | {r['set']} | {r['condition']} | {r['n_real']} | {r['n_fake']} | "
                     f"{r['no_face']['real']}/{r['no_face']['fake']} | {auc} | {r.get('auc_drop', '')} | "
                     f"{r.get('ap', '')} | {r.get('eer', '')} | {r.get('acc', '')} | {r.get('ece', '')} |")
    lines += ["", "Sets: " + json.dumps(info)]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--expert", action="append", default=None,
                    help="NAME[=WEIGHTS][@LABEL], repeatable (default: the shipped blend, and synthesis if its weights ship)")
    ap.add_argument("--sets", nargs="+", default=list(SETS), choices=list(SETS))
    ap.add_argument("--perturb", nargs="*", default=PERTURB, help="conditions on fr_swap1/fr_swap2 besides clean")
    ap.add_argument("--limit", type=int, default=None, help="images per class per set (quick runs)")
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "eval_experts")
    ap.add_argument("--build-only", action="store_true", help="make the swaps and crops, score nothing")
    ap.add_argument("--table", default="table", help="name of the written table (--out/NAME.md, NAME.json)")
    ap.add_argument("--merge", nargs="+", type=Path, default=None,
                    help="only merge these table JSONs (same --out) into --table, in order")
    args = ap.parse_args(argv)
    if args.merge:
        parts = [json.loads(p.read_text()) for p in args.merge]
        experts_, rows_ = [e for d in parts for e in d["experts"]], [r for d in parts for r in d["rows"]]
        merged = {"experts": experts_, "rows": rows_, "sets": parts[0]["sets"]}
        (args.out / f"{args.table}.json").write_text(json.dumps(merged, indent=1) + "\n")
        (args.out / f"{args.table}.md").write_text(render(rows_, experts_, merged["sets"]))
        print(render(rows_, experts_, merged["sets"]))
        return 0

    import torch

    from x2dfd.face import get_detector

    torch.set_num_threads(args.threads)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    sets = build_sets(out, args.limit, args.sets)
    detector = get_detector()
    crops: dict[tuple[str, str], list[dict]] = {}
    for name, rows in sets.items():
        for cond in ["clean"] + (list(args.perturb) if name in PERTURB_SETS else []):
            t0 = time.time()
            crops[(name, cond)] = crops_for(rows, cond, out / "crops" / cond, detector)
            print(f"[crops] {name} {cond}: {time.time() - t0:.0f} s", file=sys.stderr, flush=True)
    if args.build_only:
        return 0
    from x2dfd.experts.synthesis import DEFAULT_WEIGHTS as SYNTH

    specs = args.expert or (["blend", "synthesis"] if SYNTH.is_file() else ["blend"])
    experts, rows = [], []
    for spec in specs:
        e, r = score_expert(spec, [], crops, args.bootstrap, args.threads)
        experts.append(e)
        rows += r
    info = json.loads((out / "data" / "sets.json").read_text())["info"]
    (out / f"{args.table}.json").write_text(json.dumps({"experts": experts, "rows": rows, "sets": info}, indent=1) + "\n")
    (out / f"{args.table}.md").write_text(render(rows, experts, info))
    print(render(rows, experts, info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
