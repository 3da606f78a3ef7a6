"""Choose a blend expert among candidates by the rule fixed before any test figure: validation data only.

    .venv/bin/python bench/select_blend.py A=bench/out/cand/cpuft B=bench/out/cand/lite2 AB=bench/out/cand/ens_ab
    .venv/bin/python bench/select_blend.py --flip shipped=experts/weights   # also each candidate mirror-averaged

The rule (the one behind the shipped weights' ``training.selection``):

1. score the candidates on the VALIDATION split's fixed self-blends (the split every candidate records,
   which must be the same; faces from ``--cache-dir``, detected where missing), clean and under
   jpeg:50 / blur:1 / resize:0.5 / noise:0.02 applied to the 1.3x crop;
2. keep those that score at least ``--min-faces-per-s`` (10: the issue's constraint) with ``score()`` at batch 32
   on real 1.3x face crops, as ``bench/bench_expert.py`` measures it (the expert's own CPU thread count; the
   median of ``--speed-repeats`` runs);
3. take the highest mean AUC over the five conditions; within 0.002 of it, the fastest (at equal speed, the
   higher mean).

With ``--val-swaps`` (the rule since 2026-11-28: decided before any figure of the ``--dof`` candidates it first
chose among, after the multi-band candidate's test figures; experts/README.md says what was known), step 1 also builds classical face swaps between the VALIDATION split's photos with the two tuning
implementations (``x2dfd.faceswap``, ``x2dfd.faceswap2``; never ``faceswap3``, the independent test, and never
a held-out or Unsplash photo), scores each candidate on the validation reals against each kind (clean, 1.3x crops
as ``bench/eval_experts.py`` makes them), and step 3 ranks by ``mean`` = one third each of the self-blend mean
over the five conditions, the ``faceswap`` AUC and the ``faceswap2`` AUC. The plain self-blend view alone rewards
networks that specialise in SBI's own alpha blend: ``--multiband``, trained for classical swaps, lowered it while
raising every swap figure.

``--speed-from EARLIER.json`` (an earlier run's output) applies step 2 with the speeds that run timed, for every
candidate whose architecture (member backbones, input size, mirror averaging: the per-face cost) it timed, the
median over its rows of that architecture; the speed timed now is kept beside it (``faces_per_s_here``). For a
machine whose speed is not the one the floor was checked on (on 2026-11-27 evening this 2-core VM timed one
Lite0 forward at 10 faces/s against 33 earlier, and two ensembles of identical architecture at 3.1 and 6.1).

No held-out, Unsplash, faceswap3 or StyleGAN2 figure enters (faceswap2 only on validation photos, with
``--val-swaps``). Prints one markdown table and writes
``bench/out/select_blend.json``. The pairs are built as ``experts.train`` builds its validation view (crop
256 px, seeded per face), so a candidate's clean figure is its training record's validation AUC up to the
resize to its input size.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CONDITIONS = ["jpeg:50", "blur:1", "resize:0.5", "noise:0.02"]


def parse_candidate(text: str) -> tuple[str, Path]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise SystemExit(f"select_blend: a candidate is NAME=WEIGHTS (file or folder), got '{text}'")
    return name, Path(path)


def choose(rows: list[dict], min_faces_per_s: float, tie: float = 0.002) -> str | None:
    """The rule's steps 2 and 3: among rows fast enough, the highest ``mean``; within ``tie`` of it, the fastest;
    at the same speed (the same architecture's carried timing), the higher ``mean``, never the order of the rows."""
    eligible = [r for r in rows if r["faces_per_s"] >= min_faces_per_s]
    if not eligible:
        return None
    best = max(r["mean"] for r in eligible)
    return max((r for r in eligible if r["mean"] >= best - tie), key=lambda r: (r["faces_per_s"], r["mean"]))["candidate"]


def architecture(config) -> str:
    """What fixes a candidate's per-face cost: member backbones, input size, mirror averaging, and whether the
    mask head runs in ``score`` (``mask_evidence``; its weight does not change the cost)."""
    backbones = list(config.member_backbones or [config.backbone] * config.members)
    return ("+".join(backbones) + f"@{config.image_size}" + (" mirror-averaged" if config.flip_average else "")
            + (" +mask evidence" if getattr(config, "mask_evidence", 0.0) else ""))


def carry_speeds(rows: list[dict], earlier: list[dict], source: str) -> None:
    """Step 2 with ``earlier``'s timings: each row whose ``architecture`` an earlier row has takes the median of
    those rows' ``faces_per_s`` (its own timing moves to ``faces_per_s_here``); other rows keep their own."""
    timed: dict[str, list[float]] = {}
    for r in earlier:
        if r.get("architecture"):
            timed.setdefault(r["architecture"], []).append(float(r["faces_per_s"]))
    for r in rows:
        if r["architecture"] in timed:
            r["faces_per_s_here"] = r["faces_per_s"]
            r["faces_per_s"] = round(statistics.median(timed[r["architecture"]]), 1)
            r["speed_from"] = f"{source}: median of {len(timed[r['architecture']])} row(s) of {r['architecture']}"


def self_blend_views(record: dict, cache_dir: Path) -> tuple[list, dict[str, list], np.ndarray]:
    """The validation split a training ``record`` names (faces from ``cache_dir``, detected where missing) and its
    fixed self-blend views: SBIDataset's validation pairs at seed 0 (the same pairs for every candidate), kept as
    uint8 at 256 px, clean and under each of ``CONDITIONS``. Returns (faces, {condition: images}, labels)."""
    from PIL import Image

    from x2dfd.experts.train import VAL_SEED_OFFSET, make_pair, recorded_split_faces
    from x2dfd.perturb import parse_perturbations

    real = [str(ROOT / d) if not Path(d).is_absolute() else d for d in record.get("real_dirs") or []]
    faces = recorded_split_faces(record["split"]["val"], real, cache_dir, "val")
    pairs = []
    for i, face in enumerate(faces):
        r, f, _ = make_pair(face, np.random.default_rng([0, VAL_SEED_OFFSET, i]), 256, False)
        pairs.append((Image.fromarray(r), Image.fromarray(f)))
    conditions = [None] + parse_perturbations(CONDITIONS)
    views = {c.name if c else "clean": [c(x) if c else x for p in pairs for x in p] for c in conditions}
    return faces, views, np.tile([0, 1], len(pairs))


def val_swap_views(photos: list[Path], out: Path) -> dict[str, tuple[list, np.ndarray]]:
    """``--val-swaps``: the validation photos' 1.3x face crops against crops of swaps between them, one view per
    tuning implementation (``eval_experts.build_swaps``: one swap per target photo, seeded; PNG; cached in ``out``).
    Returns {"val_swap1": (images, labels), "val_swap2": ...}; a photo with no face is left out of its view."""
    from PIL import Image

    if str(ROOT / "bench") not in sys.path:  # imported from elsewhere (tests) rather than run as a script
        sys.path.insert(0, str(ROOT / "bench"))
    from eval_experts import build_swaps, crops_for
    from x2dfd.face import get_detector

    detector = get_detector()
    reals = [{"path": str(p), "label": 0, "method": "original"} for p in photos]
    views = {}
    for impl in ("swap1", "swap2"):
        swaps, fails = build_swaps(photos, out / "data" / impl, impl, detector)
        rows = [r for r in crops_for(reals + swaps, "clean", out / "crops", detector) if r["crop"]]
        views[f"val_{impl}"] = ([Image.open(r["crop"]).convert("RGB") for r in rows], np.array([r["label"] for r in rows]))
        print(f"[val {impl}] {sum(r['label'] == 0 for r in rows)} real / {sum(r['label'] == 1 for r in rows)} swapped "
              f"faces, {len(fails)} failed tries", file=sys.stderr, flush=True)
    return views


def earlier_rows(path: Path) -> list[dict]:
    """An earlier select_blend output's rows, each with its ``architecture`` (read from the config beside its
    weights where the row predates that field and the file is still there; rows without either are left out)."""
    from x2dfd.experts.blend import BlendConfig

    rows = []
    for r in json.loads(path.read_text())["rows"]:
        if "architecture" not in r:
            meta = (ROOT / r["weights"]).with_suffix(".json")  # an absolute path stays itself under ROOT /
            if not meta.is_file():
                continue
            config = BlendConfig.from_dict(json.loads(meta.read_text())["config"])
            config.flip_average = config.flip_average or r["candidate"].endswith(", mirror-averaged")
            r = {**r, "architecture": architecture(config)}
        rows.append(r)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("candidates", nargs="+", help="NAME=WEIGHTS (a blend_*.safetensors or the folder holding one)")
    ap.add_argument("--flip", action="store_true", help="also score each candidate averaged over the face and its mirror")
    ap.add_argument("--cache-dir", type=Path, default=ROOT / "bench" / "out" / "blend_cache")
    ap.add_argument("--min-faces-per-s", type=float, default=10.0)
    ap.add_argument("--speed-faces", type=int, default=64)
    ap.add_argument("--speed-repeats", type=int, default=3, help="timed runs per candidate; the median counts (one run "
                    "of the three-network ensemble gave 8.3 to 13.4 faces/s on this shared machine)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads for the validation scoring (speed: the expert's own)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "select_blend.json")
    ap.add_argument("--val-swaps", action="store_true",
                    help="also score classical swaps between the validation photos (faceswap, faceswap2); see the rule")
    ap.add_argument("--val-swap-dir", type=Path, default=ROOT / "bench" / "out" / "select_val",
                    help="where --val-swaps keeps its swaps and crops (built once, reused)")
    ap.add_argument("--speed-from", type=Path, default=None, metavar="EARLIER.json",
                    help="step 2 with the speeds an earlier run timed for the same architectures (see above)")
    args = ap.parse_args(argv)

    import torch

    from bench_expert import real_crops
    from x2dfd.experts.blend import BlendExpert
    from x2dfd.metrics import roc_auc

    torch.set_num_threads(args.threads)
    print(f"start: load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}, {os.cpu_count()} CPUs", file=sys.stderr)
    loaded = []
    for text in args.candidates:
        name, path = parse_candidate(text)
        loaded.append((name, BlendExpert.load(path)))
    splits = {name: (e.record.get("split") or {}).get("val") for name, e in loaded}
    first_name, first = loaded[0]
    for name, val in splits.items():
        if not val or sorted(val) != sorted(splits[first_name]):
            raise SystemExit(f"select_blend: '{name}' records another (or no) validation split than '{first_name}'")
    faces, views, y = self_blend_views(first.record, args.cache_dir)
    speed_faces = real_crops(args.speed_faces)
    swap_views = val_swap_views([Path(f.path) for f in faces], args.val_swap_dir) if args.val_swaps else {}

    rows = []
    for name, expert in loaded:
        for flip in ([False, True] if args.flip and not expert.config.flip_average else [expert.config.flip_average]):
            expert.config.flip_average = flip
            label = name + (", mirror-averaged" if flip else "")
            aucs = {}
            threads, expert.cpu_threads = expert.cpu_threads, None  # validation scoring: --threads
            for cond, images in views.items():
                aucs[cond] = round(roc_auc(y, np.array([s.p_fake for s in expert.score(images)])), 4)
            for kind, (images, labels) in swap_views.items():
                aucs[kind] = round(roc_auc(labels, np.array([s.p_fake for s in expert.score(images)])), 4)
            expert.cpu_threads = threads
            aucs["mean"] = round(float(np.mean([aucs[c] for c in views])), 4)
            if swap_views:
                aucs["sbi_mean"] = aucs["mean"]
                aucs["mean"] = round(float(np.mean([aucs["sbi_mean"], *(aucs[k] for k in swap_views)])), 4)
            expert.batch_size = 32
            expert.score(speed_faces[:4])
            rates = []
            for _ in range(args.speed_repeats):
                t = time.perf_counter()
                expert.score(speed_faces)
                rates.append(len(speed_faces) / (time.perf_counter() - t))
            fps = statistics.median(rates)
            rows.append({"candidate": label, "weights": str(expert.weights_path), "sha256": expert.weights_sha256,
                         "members": expert.config.members, "backbone": expert.config.backbone,
                         "architecture": architecture(expert.config), **aucs, "faces_per_s": round(fps, 1)})
            print(f"{label}: {aucs} {fps:.1f} faces/s", file=sys.stderr, flush=True)
    if args.speed_from:
        carry_speeds(rows, earlier_rows(args.speed_from), str(args.speed_from))
    chosen = choose(rows, args.min_faces_per_s)
    cols = ["clean", *CONDITIONS, *(["sbi_mean", *swap_views] if swap_views else []), "mean"]
    swaps_said = (f", validation swaps {', '.join(f'{k} {int(v[1].sum())}' for k, v in swap_views.items())}, "
                  "mean = (self-blend mean + each swap AUC) / 3" if swap_views else "")
    print(f"\n{len(faces)} validation faces ({len(y)} images){swaps_said}, {args.speed_faces} crops for speed; "
          f"rule: highest mean with >= {args.min_faces_per_s:g} faces/s, ties within 0.002 to the fastest\n")
    print("| candidate | " + " | ".join(cols) + " | faces/s | |\n|---|" + "---|" * (len(cols) + 2))
    for r in rows:
        mark = "**chosen**" if r["candidate"] == chosen else ("" if r["faces_per_s"] >= args.min_faces_per_s else "too slow")
        here = f" (timed here {r['faces_per_s_here']:.1f})" if "faces_per_s_here" in r else ""
        print(f"| {r['candidate']} | " + " | ".join(f"{r[c]:.4f}" for c in cols) + f" | {r['faces_per_s']:.1f}{here} | {mark} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rule": __doc__.split("The rule")[1].split("No held-out")[0].strip(),
                                    "validation_faces": len(faces), "conditions": cols, "rows": rows,
                                    "validation_swaps": {k: {"real": int((v[1] == 0).sum()), "fake": int(v[1].sum())}
                                                         for k, v in swap_views.items()} or None,
                                    "chosen": chosen, "load_average": os.getloadavg(),
                                    "speed_from": str(args.speed_from) if args.speed_from else None}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
