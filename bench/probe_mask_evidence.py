"""Does the blend expert's mask head carry evidence its classifier logit misses? A probe, no training.

    .venv/bin/python bench/eval_experts.py --build-only          # the sets and crops (once)
    .venv/bin/python bench/probe_mask_evidence.py [--weights experts/weights] [--sets ...]

For one blend expert it runs the network once per face and prints the AUC of five per-face statistics:

* ``cls``: the classifier's fake logit (what ``score`` gives without ``mask_evidence``);
* ``mask_mean``, ``mask_top5``, ``mask_max``: the mean, the mean of the top 5% and the maximum of the blend-mask
  logits (``mask_top5`` is ``x2dfd.experts.blend.mask_evidence``); ``sig_mean``: the mean of the mask's sigmoid;

and of ``cls + w x mask_top5`` for a few ``--weights-grid`` values (what ``x2dfd expert ensemble --mask-evidence w``
makes), on: the validation split's fixed self-blends (clean and under the four degradations), the classical swaps
between validation photos that ``bench/select_blend.py --val-swaps`` builds, and ``bench/eval_experts.py``'s sets
(``--sets``; the test sets are printed when asked for: choose a weight on the validation rows only, with
``bench/select_blend.py``). Nothing is written into the repository.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
STATS = ("cls", "mask_mean", "mask_top5", "mask_max", "sig_mean")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights", default=str(ROOT / "experts" / "weights"), help="a blend_*.safetensors or its folder")
    ap.add_argument("--sets", nargs="*", default=["fr_swap1", "fr_swap2", "un_swap1", "un_swap2"],
                    help="bench/eval_experts.py sets, clean (their crops must exist: --build-only)")
    ap.add_argument("--eval-dir", type=Path, default=ROOT / "bench" / "out" / "eval_experts")
    ap.add_argument("--cache-dir", type=Path, default=ROOT / "bench" / "out" / "blend_cache")
    ap.add_argument("--val-swap-dir", type=Path, default=ROOT / "bench" / "out" / "select_val")
    ap.add_argument("--weights-grid", type=float, nargs="*", default=[0.5, 1.0, 1.5, 2.0, 3.0])
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)

    import torch
    from PIL import Image

    sys.path.insert(0, str(ROOT / "bench"))
    from eval_experts import crops_for
    from select_blend import self_blend_views, val_swap_views
    from x2dfd.experts.blend import BlendConfig, BlendExpert, mask_evidence
    from x2dfd.face import get_detector
    from x2dfd.metrics import roc_auc

    torch.set_num_threads(args.threads)
    expert = BlendExpert.load(args.weights)
    plain = BlendExpert(expert.model, BlendConfig.from_dict({**expert.config.to_dict(), "mask_evidence": 0.0}))
    faces, sbi_views, sbi_y = self_blend_views(expert.record, args.cache_dir)
    views: dict[str, tuple[list, np.ndarray]] = {f"val_sbi {c}": (images, sbi_y) for c, images in sbi_views.items()}
    views.update(val_swap_views([Path(f.path) for f in faces], args.val_swap_dir))
    if args.sets:
        table = json.loads((args.eval_dir / "data" / "sets.json").read_text())["sets"]
        detector = get_detector()
        for name in args.sets:
            rows = [r for r in crops_for(table[name], "clean", args.eval_dir / "crops" / "clean", detector) if r["crop"]]
            views[name] = ([Image.open(r["crop"]).convert("RGB") for r in rows], np.array([r["label"] for r in rows]))

    grid = [w for w in args.weights_grid if w > 0]
    header = ["view", "n", *STATS, *(f"cls+{w:g}*top5" for w in grid)]
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for name, (images, y) in views.items():
        stats = []
        with torch.inference_mode():
            for _, x in plain._batches(images):
                z, m = plain._forward(x)
                flat = m.float().flatten(1)
                stats.append(torch.stack([z.float(), flat.mean(1), mask_evidence(m), flat.max(1).values,
                                          torch.sigmoid(flat).mean(1)], 1).numpy())
        s = np.concatenate(stats)
        aucs = [roc_auc(y, s[:, i]) for i in range(len(STATS))] + [roc_auc(y, s[:, 0] + w * s[:, 2]) for w in grid]
        print(f"| {name} | {len(y)} | " + " | ".join(f"{a:.3f}" for a in aucs) + " |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
