"""Benchmark of `x2dfd assess` cue scoring: the prefix-cached scorer vs the X2-DFD reference's naive approach.

    .venv/bin/python bench/bench_assess.py                          # llava-1.5 shape: full width 4096, 2 text + 2 vision layers, CPU
    .venv/bin/python bench/bench_assess.py --images 3 --cues 60 --threads 2
    .venv/bin/python bench/bench_assess.py --device cuda --text-layers 32 --dtype bfloat16   # real depth on a GPU

Both methods score the same faces and the same cues with the same model (random weights, built from
``../shared/checkpoints/llava-1.5-7b-hf``'s real config, tokenizer and processor, so prompts, token
counts and the 576 image tokens are the real ones; only the depth is reduced):

* naive (the reference's approach): one full prompt per cue (image + question), ``generate`` a few
  tokens greedily, parse "yes"/"no" from the text; its P(yes) is read from the first generation
  step's logits so the scores can be compared.
* cached (``feature_assessment.scoring.CueScorer``): the image prefix is prefilled once per face,
  the cues run in batches against its KV cache, no generation.

Prints cues/s of both, the speed ratio and max |P_naive(yes) - P_cached(yes)|; writes everything to
``bench/out/bench_assess.json`` (gitignored). One warm-up call of each method is not timed.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--source", default=str(SHARED / "checkpoints" / "llava-1.5-7b-hf"), help="real config to build from")
    p.add_argument("--model", default=None, help="use this checkpoint instead of building one from --source")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--text-layers", type=int, default=2)
    p.add_argument("--text-width", type=int, default=None, help="default: the real width (4096 for llava-1.5-7b)")
    p.add_argument("--vision-layers", type=int, default=2)
    p.add_argument("--vision-width", type=int, default=None, help="default: the real width (1024 for CLIP ViT-L)")
    p.add_argument("--images", type=int, default=2)
    p.add_argument("--cues", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=64, help="cues per forward in the cached path")
    p.add_argument("--method", default="packed", choices=["packed", "padded"], help="layout of the cached path")
    p.add_argument("--gen-tokens", type=int, default=3, help="tokens the naive path generates per cue")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--out", default=str(REPO / "bench" / "out" / "bench_assess.json"))
    return p.parse_args(argv)


def pick_cues(n: int):
    """``n`` bank cues taken round-robin over the regions, so every region is represented."""
    from x2dfd.feature_assessment.cues import REGIONS, load_cues

    by_region = {r: [c for c in load_cues().cues if c.region == r] for r in REGIONS}
    out, k = [], 0
    while len(out) < n and any(len(v) > k for v in by_region.values()):
        out += [v[k] for v in by_region.values() if len(v) > k]
        k += 1
    return out[:n]


def pick_images(n: int) -> list[Image.Image]:
    folder = SHARED / "data" / "stylegan2-vs-real" / "images"
    files = [f for pair in zip(sorted((folder / "real").glob("*.jpg")), sorted((folder / "fake").glob("*.jpg")))
             for f in pair] if folder.is_dir() else []
    if len(files) >= n + 1:
        return [Image.open(f).convert("RGB") for f in files[: n + 1]]  # +1: the warm-up face
    g = torch.Generator().manual_seed(0)
    return [Image.fromarray((torch.rand(300, 300, 3, generator=g) * 255).byte().numpy()) for _ in range(n + 1)]


def naive_scores(mllm, scorer, image, indices, gen_tokens: int) -> tuple[np.ndarray, list[str | None]]:
    """The reference's approach: one prompt per cue, greedy generate, parse yes/no from the text."""
    p_yes, answers = [], []
    for i in indices:
        inputs = mllm.encode([image], [scorer.prompts[i]])
        out = mllm.model.generate(**inputs, max_new_tokens=gen_tokens, do_sample=False, num_beams=1, output_logits=True,
                                  return_dict_in_generate=True, pad_token_id=mllm.tokenizer.pad_token_id)
        first = out.logits[0][0].double()
        p_yes.append(torch.softmax(torch.stack([first[scorer.yes_id], first[scorer.no_id]]), 0)[0].item())
        text = mllm.tokenizer.decode(out.sequences[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
        m = re.match(r"\W*(yes|no)\b", text.strip().lower())
        answers.append(m.group(1) if m else None)
    return np.array(p_yes), answers


def main(argv=None) -> int:
    args = parse_args(argv)
    from x2dfd.feature_assessment.scoring import CueScorer
    from x2dfd.mllm import MLLMOptions, load_mllm
    from x2dfd.tiny import build_checkpoint

    if args.threads:
        torch.set_num_threads(args.threads)
    tmp = None
    model_dir = args.model
    t0 = time.perf_counter()
    if model_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="bench-assess-")
        model_dir = build_checkpoint(args.source, Path(tmp.name) / "ckpt", dtype=getattr(torch, args.dtype),
                                     text_layers=args.text_layers, text_width=args.text_width,
                                     vision_layers=args.vision_layers, vision_width=args.vision_width)
    mllm = load_mllm(MLLMOptions(model=str(model_dir), device=args.device, dtype=args.dtype))
    build_s = time.perf_counter() - t0
    cfg = mllm.model.config
    cues = pick_cues(args.cues)
    images = pick_images(args.images)
    warm, images = images[0], images[1:]
    scorer = CueScorer(mllm, cues, batch_size=args.batch_size, method=args.method, verify=False)
    suffix = [len(ids) - scorer.shared_len for ids in scorer.token_ids]
    n_params = sum(p.numel() for p in mllm.model.parameters())
    print(f"model: {type(mllm.model).__name__}, text {cfg.text_config.num_hidden_layers} layers x "
          f"{cfg.text_config.hidden_size}, vision {cfg.vision_config.num_hidden_layers} layers x "
          f"{cfg.vision_config.hidden_size}, {n_params / 1e6:.0f}M params, {args.dtype} on {args.device}, "
          f"{torch.get_num_threads()} threads (built/loaded in {build_s:.1f}s)")
    print(f"{len(images)} faces x {len(cues)} cues; cue suffix {min(suffix)}-{max(suffix)} tokens "
          f"(mean {np.mean(suffix):.1f}) after a shared prefix of {scorer.shared_len} text tokens + the image tokens")

    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    clocks = {"cached": [0.0, 0.0], "naive": [0.0, 0.0]}  # [wall s, process CPU s]

    def timed(name, fn):
        sync()
        w, c = time.perf_counter(), time.process_time()
        value = fn()
        sync()
        clocks[name][0] += time.perf_counter() - w
        clocks[name][1] += time.process_time() - c
        return value

    cached, naive, answers = [], [], []
    with torch.inference_mode():
        naive_scores(mllm, scorer, warm, [0], args.gen_tokens)  # warm-up (not timed)
        scorer.score_image(warm, range(min(len(cues), args.batch_size)))
        calls0 = scorer.calls
        # Interleaved per face, so a machine whose load changes over time slows both methods alike.
        for k, im in enumerate(images):
            cached.append(timed("cached", lambda: scorer.score_image(im)))
            p, a = timed("naive", lambda: naive_scores(mllm, scorer, im, range(len(cues)), args.gen_tokens))
            naive.append(p)
            answers.append(a)
            print(f"face {k + 1}/{len(images)}: cached {clocks['cached'][0]:.1f}s, naive {clocks['naive'][0]:.1f}s "
                  f"(cumulative wall)", flush=True)
    t_cached, t_naive = clocks["cached"][0], clocks["naive"][0]
    n = len(images) * len(cues)
    diff = float(max(np.abs(a - b).max() for a, b in zip(naive, cached)))
    ratio = t_naive / t_cached
    flat = [a for ans in answers for a in ans]
    parsed = sum(a is not None for a in flat)
    agree = sum((a == "yes") == (p >= 0.5) for a, p in zip(flat, np.concatenate(naive)) if a is not None)
    cpu_ratio = clocks["naive"][1] / clocks["cached"][1]
    print(f"cached: {n / t_cached:8.2f} cues/s ({t_cached:.1f}s wall, {clocks['cached'][1]:.1f}s CPU)")
    print(f"naive:  {n / t_naive:8.2f} cues/s ({t_naive:.1f}s wall, {clocks['naive'][1]:.1f}s CPU)")
    print(f"speed-up: {ratio:.1f}x wall ({cpu_ratio:.1f}x CPU time)   max |dP(yes)|: {diff:.2e}   "
          f"naive text answers parsed as yes/no: {parsed}/{len(flat)} (random weights)")
    result = {
        "model": {"source": args.source if args.model is None else args.model, "architecture": type(mllm.model).__name__,
                  "text_layers": cfg.text_config.num_hidden_layers, "text_width": cfg.text_config.hidden_size,
                  "vision_layers": cfg.vision_config.num_hidden_layers, "vision_width": cfg.vision_config.hidden_size,
                  "params_m": round(n_params / 1e6, 1), "dtype": args.dtype},
        "device": args.device, "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__, "images": len(images), "cues": len(cues), "batch_size": args.batch_size,
        "method": args.method,
        "gen_tokens": args.gen_tokens, "shared_prefix_text_tokens": scorer.shared_len,
        "suffix_tokens": {"min": min(suffix), "mean": float(np.mean(suffix)), "max": max(suffix)},
        "cached": {"seconds": t_cached, "cpu_seconds": clocks["cached"][1], "cues_per_s": n / t_cached, "forwards": scorer.calls - calls0},
        "naive": {"seconds": t_naive, "cpu_seconds": clocks["naive"][1], "cues_per_s": n / t_naive, "forwards": n,
                  "answers_parsed": parsed, "answers_agreeing_with_p_yes": agree},
        "speedup": ratio, "speedup_cpu_time": cpu_ratio, "max_abs_diff_p_yes": diff,
        "load_average": list(__import__("os").getloadavg()),
        "p_yes": {"cached": [c.tolist() for c in cached], "naive": [c.tolist() for c in naive]},
        "cue_ids": [c.id for c in cues],
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
