"""Benchmark ``x2dfd explain``: images/s and the time split per stage (decode+face, prompt, prefill, generation).

    python bench/bench_explain.py --device cpu --text-layers 2 --vision-layers 2 --images 8 --max-new-tokens 32
    python bench/bench_explain.py --device cuda --text-layers 32 --vision-layers 24        # full LLaVA-1.5-7B shape

The model is LLaVA-1.5-7B's real config (../shared/checkpoints/llava-1.5-7b-hf) with random weights:
full width by default, depth as given. Timing needs no trained weights: the same kernels run. It is
saved and loaded back through ``--model DIR`` like a user's checkpoint, and runs the real pipeline
(x2dfd.pipeline.Explainer) on real face photos from ../shared/data. Results go to bench/out/*.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--config-dir", default=str(SHARED / "checkpoints" / "llava-1.5-7b-hf"))
    ap.add_argument("--text-layers", type=int, default=2)
    ap.add_argument("--text-width", type=int, default=None, help="default: the config's full width (4096)")
    ap.add_argument("--text-heads", type=int, default=32)
    ap.add_argument("--vision-layers", type=int, default=2)
    ap.add_argument("--vision-width", type=int, default=None, help="default: full width (1024)")
    ap.add_argument("--vision-heads", type=int, default=16)
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--no-face-crop", action="store_true")
    ap.add_argument("--load-in-4bit", action="store_true")
    ap.add_argument("--out", default=str(REPO / "bench" / "out" / "bench_explain.json"))
    args = ap.parse_args()

    import torch

    from x2dfd.mllm import MLLMOptions, load_mllm
    from x2dfd.pipeline import Explainer, PipelineOptions
    from x2dfd.tiny import build_checkpoint

    images = sorted((SHARED / "data" / "faces-real-photos" / "real").glob("*"))[: args.images]
    if len(images) < args.images:
        raise SystemExit(f"need {args.images} images under ../shared/data/faces-real-photos/real")
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        ckpt = build_checkpoint(
            args.config_dir, Path(tmp) / "ckpt", text_layers=args.text_layers, text_width=args.text_width,
            text_heads=args.text_heads, vision_layers=args.vision_layers, vision_width=args.vision_width,
            vision_heads=args.vision_heads,
        )
        build_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        mllm = load_mllm(MLLMOptions(model=str(ckpt), device=args.device, dtype=args.dtype,
                                     load_in_4bit=args.load_in_4bit))
        load_s = time.perf_counter() - t0
        n_params = sum(p.numel() for p in mllm.model.parameters())
        options = PipelineOptions(batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
                                  face_crop=not args.no_face_crop)
        explainer = Explainer(mllm, [], options)
        list(explainer.run([str(images[0])]))  # warm-up (kernels, detector load)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        records = list(explainer.run([str(p) for p in images]))
        wall = time.perf_counter() - t0
    ok = [r for r in records if r.error is None]
    stages = {}
    for key in ("decode+face", "prompt", "prefill", "generate", "total"):
        values = [r.timings.get(key, 0.0) for r in ok]
        stages[key] = {"mean_s": statistics.fmean(values) if values else None}
    result = {
        "device": args.device, "dtype": mllm.describe()["dtype"], "params": n_params,
        "config": {k: v for k, v in vars(args).items() if k != "out"},
        "images": len(records), "errors": len(records) - len(ok), "wall_s": wall,
        "images_per_s": len(records) / wall, "per_image_stage_s": stages,
        "new_tokens_per_image": args.max_new_tokens, "build_s": build_s, "load_s": load_s,
        "peak_cuda_mem_gb": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None,
        "torch": torch.__version__, "threads": torch.get_num_threads(),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{n_params / 1e6:.0f}M params, {args.device}/{result['dtype']}, batch {args.batch_size}, "
          f"{args.max_new_tokens} new tokens: {result['images_per_s']:.3f} images/s ({wall:.1f} s for {len(records)})")
    for key, v in stages.items():
        print(f"  {key:12s} {v['mean_s']:.3f} s/image")
    print(f"written {out}")


if __name__ == "__main__":
    main()
