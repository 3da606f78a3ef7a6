"""Benchmark ``x2dfd finetune``'s training step: time, peak memory and trainable share, LoRA vs QLoRA.

    python bench/bench_finetune.py --device cpu --text-layers 2                     # llava-1.5 width 4096, 2 text layers
    python bench/bench_finetune.py --device cuda --text-layers 32 --vision-layers 24  # the full LLaVA-1.5-7B shape

The model is LLaVA-1.5-7B's real config (../shared/checkpoints/llava-1.5-7b-hf: tokenizer, chat
template, 336-px image processor, so 576 image tokens per face) with random weights, full width by
default and the depth given. It is saved and loaded back through finetune's own loader, wrapped by
finetune's own LoRA code (r 16 on every language-model linear layer, projector trained) and fed a
batch from finetune's own encoder: a real face from ../shared/data, explain's question with an expert
score, and an answer with three cue phrases and the expert sentence. Each mode runs in a fresh
process, so its peak memory is its own: ``lora`` (base in fp32 on CPU / bf16 on GPU) and ``qlora``
(base in 4-bit NF4 via bitsandbytes). A step is forward + backward + AdamW update, gradient
checkpointing on (finetune's default). Results: a table on stdout and bench/out/bench_finetune.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
MODES = ("lora", "qlora")


def _rss_mb() -> float:
    """Peak resident memory of this process so far (ru_maxrss is in KiB on Linux), loading included: it counts
    the pages of the memory-mapped checkpoint that loading touched, even where training no longer needs them."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class MemoryPeak:
    """Samples /proc/self/status every 20 ms in a thread and keeps the maxima of RssAnon (private memory: weights
    loaded into RAM, activations, gradients, optimizer state) and VmRSS (that plus the pages of memory-mapped
    files in use, e.g. weights read straight from the safetensors file)."""

    FIELDS = ("RssAnon", "VmRSS")

    def __init__(self):
        import threading

        self.peak = dict.fromkeys(self.FIELDS, 0.0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @classmethod
    def now_mb(cls) -> dict[str, float]:
        out = dict.fromkeys(cls.FIELDS, float("nan"))
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                key = line.split(":", 1)[0]
                if key in out:
                    out[key] = int(line.split()[1]) / 1024.0
        except OSError:
            pass
        return out

    def _sample(self):
        for k, v in self.now_mb().items():
            self.peak[k] = max(self.peak[k], v)

    def _run(self):
        while not self._stop.wait(0.02):
            self._sample()

    def __enter__(self):
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._sample()


def prepare(args, face=None) -> dict:
    """Load the checkpoint ``args.ckpt`` for mode ``args.worker`` (lora / qlora), wrap it with LoRA, make the optimizer
    and the sample; ``face`` (a PIL image) replaces the detected face of ../shared/data (e.g. where it is absent)."""
    import torch

    from x2dfd.finetune.batch import AnswerEncoder
    from x2dfd.finetune.config import FinetuneConfig
    from x2dfd.finetune.data import render_answer, render_question
    from x2dfd.finetune.lora import add_lora, find_parts, load_for_training, lora_modules, param_groups, trainable_share

    if args.threads:
        torch.set_num_threads(args.threads)
    qlora = args.worker == "qlora"
    cfg = FinetuneConfig(data_dir="unused", model=args.ckpt, device=args.device, load_in_4bit=qlora,
                         gradient_checkpointing=not args.no_gradient_checkpointing)
    device = torch.device("cuda" if args.device == "cuda" else args.device)
    rss0 = _rss_mb()
    t0 = time.perf_counter()
    with MemoryPeak() as load_mem:
        mllm = load_for_training(cfg, device)
    load_s = time.perf_counter() - t0
    after_load = MemoryPeak.now_mb()
    parts = find_parts(mllm.model)
    encoder = AnswerEncoder(mllm)
    model = add_lora(mllm.model, cfg, parts)
    share = trainable_share(model)
    projector_params = sum(p.numel() for n, p in model.named_parameters() if p.requires_grad and "modules_to_save" in n)
    optimizer = torch.optim.AdamW(param_groups(model, cfg))
    if face is None:
        from x2dfd.face import extract_faces
        from x2dfd.media import load_image

        face_path = sorted((SHARED / "data" / "faces-real-photos" / "real").glob("*.jpg"))[0]
        face = extract_faces(load_image(face_path))[0].image
    question = render_question([("blend", "blending")], {"blend": 0.912})
    answer = render_answer(1, ["the light reflections in the two eyes do not match each other",
                               "the skin looks waxy and too smooth", "a blending seam runs along the jawline"],
                           [{"prompt_name": "blending", "score": "0.912"}])
    info = {"mode": args.worker, "device": str(device), "dtype": str(mllm.dtype).replace("torch.", ""),
            "quantization": "nf4" if qlora else None, "load_s": round(load_s, 2), "rss_at_start_mb": round(rss0),
            "load_peak_private_mb": round(load_mem.peak["RssAnon"]), "load_peak_rss_mb": round(load_mem.peak["VmRSS"]),
            "private_after_load_mb": round(after_load["RssAnon"]), "rss_after_load_mb": round(after_load["VmRSS"]),
            "lora_layers": len(lora_modules(model)), "trainable": share, "projector_params": projector_params}
    return {"mllm": mllm, "model": model, "encoder": encoder, "optimizer": optimizer, "device": device, "face": face,
            "question": question, "answer": answer, "info": info}


def train_steps(state: dict, batch_size: int, warmup: int, steps: int) -> dict:
    """``warmup + steps`` training steps (forward + backward + AdamW) on one batch of ``batch_size`` copies of the
    sample; times, peak memory (CUDA peak reset first) and losses."""
    import torch

    mllm, model, optimizer, device = state["mllm"], state["model"], state["optimizer"], state["device"]
    sample = {"image": state["face"], "question": state["question"], "answer": state["answer"], "label": 1}
    batch = state["encoder"]([sample] * batch_size)
    batch = {k: v.to(device) for k, v in batch.items()}
    batch["pixel_values"] = batch["pixel_values"].to(mllm.dtype)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    model.train()
    times, losses = [], []
    train_mem = MemoryPeak().__enter__()
    cpu_times = []
    for i in range(warmup + steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t, c = time.perf_counter(), time.process_time()
        with autocast:
            loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t)
            cpu_times.append(time.process_time() - c)
        losses.append(round(float(loss), 4))
    train_mem.__exit__(None, None, None)
    out = {
        "batch_size": batch_size,
        "tokens_per_sample": int(batch["attention_mask"][0].sum()),
        "answer_tokens": int((batch["labels"][0] != -100).sum()),
        "step_s_mean": round(sum(times) / len(times), 3), "step_s_min": round(min(times), 3), "steps_timed": len(times),
        "step_cpu_s_mean": round(sum(cpu_times) / len(cpu_times), 3),
        "train_peak_private_mb": round(train_mem.peak["RssAnon"]), "train_peak_rss_mb": round(train_mem.peak["VmRSS"]),
        "process_peak_rss_mb": round(_rss_mb()), "losses": losses,
    }
    if device.type == "cuda":
        out["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated() / 2**20)
    return out


def worker(args, face=None) -> dict:
    """One mode, in its own process: load, wrap, train ``warmup + steps`` steps on one batch."""
    state = prepare(args, face)
    info = state["info"]
    steps = train_steps(state, args.batch_size, args.warmup, args.steps)
    keys = ("mode", "device", "dtype", "quantization", "batch_size", "tokens_per_sample", "answer_tokens", "step_s_mean",
            "step_s_min", "steps_timed", "step_cpu_s_mean", "load_s", "rss_at_start_mb", "load_peak_private_mb",
            "load_peak_rss_mb", "private_after_load_mb", "rss_after_load_mb", "train_peak_private_mb",
            "train_peak_rss_mb", "process_peak_rss_mb", "lora_layers", "trainable", "projector_params", "losses",
            "peak_cuda_mb")
    merged = {**info, **steps}
    return {k: merged[k] for k in keys if k in merged}


def _full_depth_share(full_config, shape, result: dict) -> dict:
    """The trainable share at the config's full depth and width: LoRA weights scale with the number of text
    layers (measured per layer here), the projector does not; the total is counted on the meta device."""
    import torch
    from transformers import AutoModelForImageTextToText

    with torch.device("meta"):
        total = sum(p.numel() for p in AutoModelForImageTextToText.from_config(full_config).parameters())
    measured = result["trainable"]["trainable"]
    projector = result["projector_params"]
    per_layer = (measured - projector) / shape.text_config.num_hidden_layers
    same_width = shape.text_config.hidden_size == full_config.text_config.hidden_size
    trainable = round(per_layer * full_config.text_config.num_hidden_layers + projector) if same_width else None
    return {"text_layers": full_config.text_config.num_hidden_layers, "total_params": total,
            "trainable": trainable, "percent": round(100 * trainable / total, 4) if trainable else None,
            "lora_per_layer": round(per_layer), "projector": projector}


def _full_depth_weights(full_config) -> dict:
    """Computed, not measured: the base weights of the FULL config in each mode. LoRA keeps every weight in the
    run dtype (fp32 on CPU, bf16 on GPU); QLoRA stores the language model's linear layers in NF4 (4 bits, plus a
    double-quantized absmax per 64 values, ~0.52 byte per weight) and keeps the rest (embeddings, output head,
    vision tower, projector) in the run dtype: its saving grows with depth."""
    import torch
    from transformers import AutoModelForImageTextToText

    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(full_config)
    from x2dfd.finetune.lora import find_parts

    parts = find_parts(model)
    quantized = sum(m.weight.numel() for n, m in model.named_modules()
                    if isinstance(m, torch.nn.Linear) and n.startswith(parts.language_model + "."))
    total = sum(p.numel() for p in model.parameters())
    gb = 1e9
    return {"total_params": total, "nf4_params": quantized,
            "lora_cpu_fp32_gb": round(total * 4 / gb, 2), "lora_gpu_bf16_gb": round(total * 2 / gb, 2),
            "qlora_cpu_gb": round((quantized * 0.516 + (total - quantized) * 4) / gb, 2),
            "qlora_gpu_gb": round((quantized * 0.516 + (total - quantized) * 2) / gb, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--config-dir", default=str(SHARED / "checkpoints" / "llava-1.5-7b-hf"))
    ap.add_argument("--text-layers", type=int, default=2)
    ap.add_argument("--text-width", type=int, default=None, help="default: the config's full width (4096)")
    ap.add_argument("--text-heads", type=int, default=32)
    ap.add_argument("--vision-layers", type=int, default=2)
    ap.add_argument("--vision-width", type=int, default=None, help="default: full width (1024)")
    ap.add_argument("--vision-heads", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--modes", default=",".join(MODES), help="comma-separated: lora, qlora")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--no-gradient-checkpointing", action="store_true")
    ap.add_argument("--out", default=str(REPO / "bench" / "out" / "bench_finetune.json"))
    ap.add_argument("--worker", choices=MODES, help=argparse.SUPPRESS)
    ap.add_argument("--ckpt", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(worker(args)), flush=True)
        return

    from x2dfd.tiny import build_checkpoint

    modes = [m for m in args.modes.split(",") if m]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        ckpt = build_checkpoint(args.config_dir, Path(tmp) / "ckpt", text_layers=args.text_layers,
                                text_width=args.text_width, text_heads=args.text_heads, vision_layers=args.vision_layers,
                                vision_width=args.vision_width, vision_heads=args.vision_heads)
        build_s = time.perf_counter() - t0
        for mode in modes:
            cmd = [sys.executable, __file__, "--worker", mode, "--ckpt", str(ckpt), *sys.argv[1:]]
            env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
            res = subprocess.run(cmd, capture_output=True, text=True, env=env)
            line = next((ln for ln in res.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if res.returncode != 0 or line is None:
                raise SystemExit(f"{mode} failed:\n{res.stderr[-3000:]}")
            results.append(json.loads(line[len("RESULT "):]))
    import torch
    from transformers import AutoConfig

    from x2dfd.tiny import shrink_config

    shape = shrink_config(AutoConfig.from_pretrained(args.config_dir), text_layers=args.text_layers,
                          text_width=args.text_width, text_heads=args.text_heads, vision_layers=args.vision_layers,
                          vision_width=args.vision_width, vision_heads=args.vision_heads)
    full = AutoConfig.from_pretrained(args.config_dir)
    report_full = _full_depth_share(full, shape, results[0]) if results else None
    report = {
        "benchmark": "finetune_step", "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                    "threads": args.threads or torch.get_num_threads(),
                    "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None},
        "model": {"config": args.config_dir, "text_layers": shape.text_config.num_hidden_layers,
                  "text_width": shape.text_config.hidden_size, "vision_layers": shape.vision_config.num_hidden_layers,
                  "vision_width": shape.vision_config.hidden_size, "build_s": round(build_s, 1)},
        "settings": {"lora_r": 16, "lora_alpha": 32, "projector_trained": True, "batch_size": args.batch_size,
                     "gradient_checkpointing": not args.no_gradient_checkpointing, "warmup": args.warmup,
                     "steps": args.steps},
        "results": results,
        "full_depth_trainable": report_full,
        "full_depth_weights": _full_depth_weights(full),
    }
    if len(results) == 2:
        a, b = results
        report["qlora_vs_lora"] = {"step_time_ratio": round(b["step_s_mean"] / a["step_s_mean"], 3),
                                   "step_cpu_time_ratio": round(b["step_cpu_s_mean"] / a["step_cpu_s_mean"], 3),
                                   "train_peak_rss_ratio": round(b["train_peak_rss_mb"] / a["train_peak_rss_mb"], 3),
                                   "train_peak_private_ratio": round(b["train_peak_private_mb"] /
                                                                     a["train_peak_private_mb"], 3)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    rows = [("mode", "step s", "step CPU s", "train peak RSS MB", "train peak private MB", "after load RSS/private MB",
             "process peak RSS MB", "trainable", "share %", "tokens")]
    for r in results:
        rows.append((r["mode"], f"{r['step_s_mean']:.2f}", f"{r['step_cpu_s_mean']:.2f}", str(r["train_peak_rss_mb"]), str(r["train_peak_private_mb"]),
                     f"{r['rss_after_load_mb']}/{r['private_after_load_mb']}", str(r["process_peak_rss_mb"]),
                     f"{r['trainable']['trainable']:,}", f"{r['trainable']['percent']:.3f}", str(r["tokens_per_sample"])))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    print("\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows))
    if report_full and report_full["percent"]:
        print(f"at full depth ({report_full['text_layers']} text layers): {report_full['trainable']:,} trainable of "
              f"{report_full['total_params']:,} ({report_full['percent']}%)")
    w = report["full_depth_weights"]
    print(f"base weights at full depth (computed): LoRA {w['lora_cpu_fp32_gb']} GB fp32 / {w['lora_gpu_bf16_gb']} GB "
          f"bf16, QLoRA {w['qlora_cpu_gb']} GB (CPU) / {w['qlora_gpu_gb']} GB (GPU)")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
