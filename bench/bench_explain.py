"""Benchmark ``x2dfd explain``: images/s and the time split per stage (decode+face, prompt, prefill, generation).

    python bench/bench_explain.py --device cpu --text-layers 2 --vision-layers 2 --images 8 --max-new-tokens 32
    python bench/bench_explain.py --device cuda --text-layers 32 --vision-layers 24        # full LLaVA-1.5-7B shape
    python bench/bench_explain.py --precisions float32,bfloat16,nf4 --images 4              # CPU: memory, s/face, p_fake vs fp32
    python bench/bench_explain.py --shared-kv --images 4 --max-new-tokens 64                # verdict+explanation vs plain generate

The model is LLaVA-1.5-7B's real config (../shared/checkpoints/llava-1.5-7b-hf) with random weights:
full width by default, depth as given. Timing needs no trained weights: the same kernels run. It is
saved and loaded back through ``--model DIR`` like a user's checkpoint, and runs the real pipeline
(x2dfd.pipeline.Explainer) on real face photos from ../shared/data. Results go to bench/out/*.json.

``--precisions``: each precision loads the same checkpoint in its own process (peak RSS is per
process), runs the same faces, and reports peak RSS, seconds per face and |p_fake - p_fake(fp32)|;
the weights are then extrapolated to full depth (parameters counted on the meta device x bytes).

``--shared-kv``: X2-DFD's verdict and explanation from one generate() (``MLLM.judge``: p_fake from the
first step's logits, the explanation continuing the same KV cache) against the same explanation from a
plain ``model.generate`` and p_fake from a plain forward; interleaved rounds, ratio of times, and
whether text and p_fake are equal. EOS is disabled so both generate exactly --max-new-tokens tokens.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
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
    ap.add_argument("--static-cache", action="store_true",
                    help="explain's --static-cache: preallocated KV cache (compiled decode steps on CUDA)")
    ap.add_argument("--out", default=str(REPO / "bench" / "out" / "bench_explain.json"))
    ap.add_argument("--precisions", default=None,
                    help="comma list of float32, bfloat16, nf4: one process each, peak RSS, s/face, p_fake vs float32")
    ap.add_argument("--shared-kv", action="store_true",
                    help="verdict + explanation in one generate() vs plain generate of the same explanation")
    ap.add_argument("--rounds", type=int, default=3, help="--shared-kv: interleaved rounds")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--ckpt", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return _child(args)
    if args.precisions:
        return _precisions(args)
    if args.shared_kv:
        return _shared_kv(args)

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
                                     load_in_4bit=args.load_in_4bit, static_cache=args.static_cache))
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


def _load() -> str:
    return "load average " + " ".join(f"{v:.2f}" for v in os.getloadavg())


def _rss_gib() -> float:
    """Peak resident set (ru_maxrss): includes file pages of memory-mapped weight files."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def _anon_gib() -> float:
    """Resident anonymous memory now (RssAnon): what must fit in RAM; mapped checkpoint pages are not in it
    (the kernel can drop those clean file pages under pressure)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return float("nan")


class _AnonPeak:
    """Samples RssAnon every 20 ms in a thread; ``peak`` is the highest seen."""

    def __init__(self):
        import threading

        self.peak = _anon_gib()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, _anon_gib())

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return max(self.peak, _anon_gib())


def _images(n: int) -> list[Path]:
    images = sorted((SHARED / "data" / "faces-real-photos" / "real").glob("*"))[:n]
    if len(images) < n:
        raise SystemExit(f"need {n} images under ../shared/data/faces-real-photos/real")
    return images


def _build(args, tmp: str) -> Path:
    from x2dfd.tiny import build_checkpoint

    return build_checkpoint(
        args.config_dir, Path(tmp) / "ckpt", text_layers=args.text_layers, text_width=args.text_width,
        text_heads=args.text_heads, vision_layers=args.vision_layers, vision_width=args.vision_width,
        vision_heads=args.vision_heads,
    )


def _mode_options(mode: str, ckpt: str):
    from x2dfd.mllm import MLLMOptions, cpu_bf16_native

    if mode == "nf4":  # compute dtype: bfloat16 where native (as dtype=auto chooses), else float32
        return MLLMOptions(model=ckpt, device="cpu", load_in_4bit=True,
                           dtype="bfloat16" if cpu_bf16_native() else "float32")
    return MLLMOptions(model=ckpt, device="cpu", dtype=mode)


def _speed_child(args) -> None:
    """Every precision loaded in this one process, timed in interleaved rounds (A B C C B A ...), so a
    change of machine load hits them all alike."""
    from x2dfd.mllm import load_mllm
    from x2dfd.pipeline import Explainer, PipelineOptions

    modes = args.precisions.split(",")
    images = [str(p) for p in _images(args.images)]
    explainers = {}
    for m in modes:
        explainers[m] = Explainer(load_mllm(_mode_options(m, args.ckpt)), [], PipelineOptions(
            batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, workers=0))
        list(explainers[m].run(images[:1]))  # warm-up
    times: dict[str, list[float]] = {m: [] for m in modes}
    for r in range(args.rounds):
        for m in (modes if r % 2 == 0 else modes[::-1]):
            t0 = time.perf_counter()
            list(explainers[m].run(images))
            times[m].append((time.perf_counter() - t0) / len(images))
            print(f"round {r + 1} {m:9s} {times[m][-1]:.2f} s/face  [{_load()}]", file=sys.stderr, flush=True)
    print(json.dumps(times))


def _child(args) -> None:
    """One precision in this process: load, warm up, explain --images faces; JSON on stdout's last line."""
    import torch

    from x2dfd.mllm import load_mllm
    from x2dfd.pipeline import Explainer, PipelineOptions

    if args.child == "speed":
        return _speed_child(args)
    rss_start = _rss_gib()
    anon = _AnonPeak()
    mode = args.child
    t0 = time.perf_counter()
    mllm = load_mllm(_mode_options(mode, args.ckpt))
    load_s = time.perf_counter() - t0
    rss_loaded = _rss_gib()
    anon_loaded = _anon_gib()
    weight_bytes = sum(p.numel() * p.element_size() for p in mllm.model.parameters())
    explainer = Explainer(mllm, [], PipelineOptions(batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
                                                    workers=0))
    images = [str(p) for p in _images(args.images)]
    list(explainer.run(images[:1]))  # warm-up
    t0 = time.perf_counter()
    records = list(explainer.run(images))
    wall = time.perf_counter() - t0
    print(json.dumps({
        "peak_anon_gib": anon.stop(), "anon_after_load_gib": anon_loaded,
        "mode": mode, "dtype": mllm.describe()["dtype"], "quantization": mllm.describe()["quantization"],
        "load_s": load_s, "s_per_face": wall / len(records), "rss_start_gib": rss_start,
        "rss_after_load_gib": rss_loaded, "peak_rss_gib": _rss_gib(), "weight_bytes": weight_bytes,
        "p_fake": [r.p_fake for r in records], "explanations": [r.explanation for r in records],
        "errors": [r.error for r in records], "threads": torch.get_num_threads(),
    }))


def _precisions(args) -> None:
    from x2dfd.mllm import count_parameters

    modes = [m.strip() for m in args.precisions.split(",") if m.strip()]
    print(f"start: {_load()}", flush=True)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = _build(args, tmp)
        reduced = count_parameters(str(ckpt))
        for mode in modes:
            cmd = [sys.executable, __file__, "--child", mode, "--ckpt", str(ckpt), "--images", str(args.images),
                   "--batch-size", str(args.batch_size), "--max-new-tokens", str(args.max_new_tokens)]
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode != 0:
                raise SystemExit(f"{mode} failed:\n{out.stderr[-3000:]}")
            results[mode] = json.loads(out.stdout.strip().splitlines()[-1])
            r = results[mode]
            print(f"{mode:9s} peak anonymous memory {r['peak_anon_gib']:.2f} GiB (after load {r['anon_after_load_gib']:.2f}), "
                  f"peak RSS {r['peak_rss_gib']:.2f} GiB (with mapped checkpoint pages), weights "
                  f"{r['weight_bytes'] / 2**30:.2f} GiB; {r['s_per_face']:.2f} s/face, load {r['load_s']:.1f} s"
                  f"  [{_load()}]", flush=True)
        cmd = [sys.executable, __file__, "--child", "speed", "--precisions", ",".join(modes), "--ckpt", str(ckpt),
               "--images", str(args.images), "--batch-size", str(args.batch_size),
               "--max-new-tokens", str(args.max_new_tokens), "--rounds", str(args.rounds)]
        print(f"speed, all precisions in one process, {args.rounds} interleaved rounds:", flush=True)
        out = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
        if out.returncode != 0:
            raise SystemExit("speed run failed")
        speed = json.loads(out.stdout.strip().splitlines()[-1])
        for mode in modes:
            results[mode]["s_per_face_rounds"] = speed[mode]
        if "float32" in speed:
            for mode in modes:
                ratios = [a / b for a, b in zip(speed[mode], speed["float32"])]
                print(f"{mode:9s} median {statistics.median(speed[mode]):.2f} s/face; time vs float32 per round: "
                      + ", ".join(f"{x:.2f}x" for x in ratios), flush=True)
    full = count_parameters(args.config_dir)
    base = results.get("float32")
    for mode, r in results.items():
        if base is not None and mode != "float32":
            diffs = [abs(a - b) for a, b in zip(r["p_fake"], base["p_fake"]) if a is not None and b is not None]
            r["p_fake_abs_diff_vs_fp32"] = {"max": max(diffs), "mean": statistics.fmean(diffs)} if diffs else None
            same_text = sum(a == b for a, b in zip(r["explanations"], base["explanations"]))
            r["same_explanation_as_fp32"] = f"{same_text}/{len(base['explanations'])}"
            print(f"{mode:9s} |p_fake - fp32|: max {diffs and max(diffs):.2e}, mean "
                  f"{diffs and statistics.fmean(diffs):.2e}; explanations equal to fp32: {r['same_explanation_as_fp32']}")
        # full depth: the measured bytes per weight of this precision times the full parameter count,
        # plus the non-weight memory measured here (which grows with depth only by the KV cache).
        bytes_per_param = r["weight_bytes"] / reduced[0]
        full_weights = bytes_per_param * full[0] if mode != "nf4" else r["weight_bytes"] * full[1] / reduced[1]
        if mode == "nf4":  # the unquantized part (embeddings, lm_head, projector, norms) does not grow with depth
            unq = r["weight_bytes"] - (reduced[1] * 0.5 * (1 + 1 / 32))
            full_weights = full[1] * 0.5 * (1 + 1 / 32) + unq + (full[0] - full[1] - (reduced[0] - reduced[1])) * (
                2 if r["dtype"] == "bfloat16" else 4)
        r["full_depth_weights_gib"] = full_weights / 2**30
        # beside the weights: peak anonymous memory, less the weights where they are anonymous (converted
        # on load; float32 weights of a float32 checkpoint stay memory-mapped file pages)
        w = r["weight_bytes"] / 2**30
        r["non_weight_peak_gib"] = r["peak_anon_gib"] - (w if r["anon_after_load_gib"] >= w else 0.0)
        # the KV cache grows with depth: 2 (k, v) x batch x tokens x width x bytes per layer
        from transformers import AutoConfig

        text = AutoConfig.from_pretrained(args.config_dir).text_config
        kv_bytes = 2 if r["dtype"] == "bfloat16" else 4
        kv_layer = 2 * args.batch_size * (700 + args.max_new_tokens) * text.hidden_size * kv_bytes
        extra_kv = kv_layer * (text.num_hidden_layers - args.text_layers) / 2**30
        r["full_depth_need_gib"] = r["full_depth_weights_gib"] + r["non_weight_peak_gib"] + extra_kv
        print(f"{mode:9s} full depth ({full[0] / 1e9:.2f}B params): weights ~{r['full_depth_weights_gib']:.1f} GiB "
              f"+ {r['non_weight_peak_gib']:.1f} GiB measured beside them here + {extra_kv:.1f} GiB more KV cache "
              f"= ~{r['full_depth_need_gib']:.1f} GiB")
    result = {"reduced_params": reduced, "full_params": full, "config": {k: v for k, v in vars(args).items()},
              "results": results, "end_load": os.getloadavg()}
    out = Path(args.out).with_name("bench_explain_precisions.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"end: {_load()}; written {out}")


def _shared_kv(args) -> None:
    import torch

    from x2dfd.mllm import MLLMOptions, load_mllm
    from x2dfd.pipeline import Explainer, PipelineOptions

    print(f"start: {_load()}", flush=True)
    n = args.max_new_tokens
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = _build(args, tmp)
        mllm = load_mllm(MLLMOptions(model=str(ckpt), device=args.device, dtype=args.dtype))
    mllm.model.generation_config.eos_token_id = None  # both paths generate exactly n tokens
    explainer = Explainer(mllm, [], PipelineOptions(face_crop=True, workers=0))
    from x2dfd.face import extract_faces
    from x2dfd.media import load_image

    faces = [extract_faces(load_image(p))[0].image for p in _images(args.images)]
    question = explainer.question({})
    batches = [faces[i : i + args.batch_size] for i in range(0, len(faces), args.batch_size)]
    tok = mllm.tokenizer

    def shared():
        return [j for b in batches for j in mllm.judge(b, [question] * len(b), max_new_tokens=n)]

    @torch.inference_mode()
    def plain():
        texts, ps = [], []
        prefix = tok(getattr(mllm, "answer_prefix", None) or __import__("x2dfd.prompts", fromlist=["x"]).ANSWER_PREFIX,
                     add_special_tokens=False).input_ids
        for b in batches:
            inputs = mllm.encode(b, [mllm.build_prompt(question)] * len(b))
            seq = mllm.model.generate(**inputs, max_new_tokens=n, do_sample=False, num_beams=1,
                                      pad_token_id=tok.pad_token_id)
            for row in seq[:, inputs["input_ids"].shape[1]:].tolist():
                ids = [t for t in row if t != tok.pad_token_id]
                texts.append(tok.decode(prefix + ids, skip_special_tokens=True).strip())
        return texts

    @torch.inference_mode()
    def forward_p():
        ps = []
        for b in batches:
            inputs = mllm.encode(b, [mllm.build_prompt(question)] * len(b))
            logits = mllm.model(**inputs).logits[:, -1].float()
            pair = torch.stack([logits[:, mllm.real_id], logits[:, mllm.fake_id]], dim=-1)
            ps += torch.softmax(pair, dim=-1)[:, 1].tolist()
        return ps

    shared(), plain()  # warm-up
    t_shared, t_plain = [], []
    for r in range(args.rounds):
        for name in (("shared", "plain") if r % 2 == 0 else ("plain", "shared")):
            t0 = time.perf_counter()
            if name == "shared":
                js = shared()
                t_shared.append(time.perf_counter() - t0)
            else:
                texts = plain()
                t_plain.append(time.perf_counter() - t0)
            print(f"round {r + 1} {name:6s} {(time.perf_counter() - t0) / len(faces):.2f} s/face  [{_load()}]", flush=True)
    ps = forward_p()
    same_text = [j.explanation == t for j, t in zip(js, texts)]
    p_diff = max(abs(j.p_fake - p) for j, p in zip(js, ps))
    ratio = statistics.median(t_shared) / statistics.median(t_plain)
    print(f"{mllm.describe()['dtype']}, batch {args.batch_size}, {n} new tokens, {len(faces)} faces: verdict+explanation "
          f"{statistics.median(t_shared) / len(faces):.2f} s/face vs plain generate {statistics.median(t_plain) / len(faces):.2f} "
          f"s/face: ratio {ratio:.3f} (per round: "
          + ", ".join(f"{a / b:.3f}" for a, b in zip(t_shared, t_plain)) + ")")
    print(f"explanations equal: {sum(same_text)}/{len(same_text)}; max |p_fake(judge) - p_fake(plain forward)| = "
          f"{p_diff:.2e}; new tokens {[j.new_tokens for j in js]}")
    result = {"dtype": mllm.describe()["dtype"], "batch_size": args.batch_size, "new_tokens": n, "faces": len(faces),
              "shared_s": t_shared, "plain_s": t_plain, "ratio": ratio, "equal_text": sum(same_text),
              "max_p_fake_diff": p_diff, "config": {k: v for k, v in vars(args).items()}, "end_load": os.getloadavg()}
    out = Path(args.out).with_name("bench_explain_shared_kv.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"end: {_load()}; written {out}")


if __name__ == "__main__":
    main()
