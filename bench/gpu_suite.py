"""x2dfd GPU suite: explain / assess / LoRA+QLoRA / 4+8-bit load on one GPU, one JSON + one markdown table.

    bash bench/gpu_suite.sh                              # full LLaVA-1.5-7B shape on CUDA, bf16 (<= 8 min on an H100)
    bash bench/gpu_suite.sh --shared .gpu_shared         # configs from a copy carried inside the repo
    bash bench/gpu_suite.sh --tiny                       # the same code on CPU, reduced depth/width (~1 min)
    python bench/gpu_suite.py --device cuda --text-layers 8 --batch-sizes 1 8 --parts explain,assess

A random-weight model of the real llava-1.5-7b-hf config (tokenizer, chat template, 336-px processor:
576 image tokens per face) is built directly on the device in the run dtype, saved once with
``save_pretrained`` (safetensors) into a temporary folder and loaded by every part through
``x2dfd.mllm.load_mllm(MLLMOptions(model=DIR))``, the path ``x2dfd explain --model DIR`` takes.
Timing needs no trained weights: the same kernels run on the same shapes.

Parts (each in its own process with its own timeout; a failure or timeout becomes a row with its
one-line error and the suite goes on; a part or batch size that does not fit the memory is skipped
with the reason; the whole suite keeps to ``--budget-s``):

a. explain: faces/s of ``MLLM.judge`` at batch 1/8/32 with 64 new tokens, prefill/decode split, against
   the arithmetic limit (prefill compute-bound at the card's peak bf16 FLOP/s, decode bound by reading the
   weights + KV cache at the card's HBM bandwidth per step); explain-static: the same at the largest batch
   with ``--static-cache`` (generate() compiles the decode step into CUDA graphs; warm-up time reported),
   run after the other parts;
b. assess: CueScorer (cached prefix, packed cues) vs ``score_naive`` (one prompt per cue): (face, cue) pairs/s;
c. LoRA and QLoRA training step (bench_finetune's step) at batch 2 and 8: step time, tokens/s, peak memory;
d. 4-bit and 8-bit (bitsandbytes) load time and GPU memory;
e. converted official-release checkpoint: a random-weight release in the original LLaVA format converted by
   `x2dfd convert x2dfd-release` (time, size, peak memory) and, at full size, its logits through x2dfd checked
   against base + B·A·alpha/r added by hand (bench/bench_convert.py).

Outputs: gpu_suite.json, gpu_suite.md and gpu_suite.log in ``--out`` (default: ``$OUT`` when set, else
bench/out/gpu_suite).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib.abc
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SHARED = REPO.parent / "shared" / "checkpoints"
CONFIG_NAME = "llava-1.5-7b-hf"
GiB = 2**30
ORDER = ("machine", "build", "explain", "assess", "lora", "qlora", "load-4bit", "load-8bit", "explain-static", "release")
MODEL_PARTS = ("explain", "assess", "lora", "qlora", "load-4bit", "load-8bit", "explain-static")  # need the checkpoint

# Assumed peaks per card (dense bf16 tensor-core FLOP/s, HBM bandwidth), matched on the CUDA device name.
PEAKS = (  # (substring, label, TFLOP/s, TB/s), first match wins
    ("H200", "H200 (SXM/NVL)", 989.0, 4.8),
    ("H100 PCIe", "H100 PCIe", 756.0, 2.0),
    ("H100 NVL", "H100 NVL", 835.0, 3.9),
    ("H100", "H100 SXM", 989.0, 3.35),
    ("A100", "A100 SXM 80GB", 312.0, 2.04),
)

# Default timeouts (s) of each part on CUDA (full size) and in --tiny mode.
TIMEOUTS = {"machine": 90, "build": 240, "explain": 150, "assess": 120, "lora": 150, "qlora": 180,
            "load-4bit": 100, "load-8bit": 100, "explain-static": 200, "release": 150}
TINY_TIMEOUTS = {"machine": 60, "build": 60, "explain": 90, "assess": 60, "lora": 60, "qlora": 60,
                 "load-4bit": 45, "load-8bit": 45, "explain-static": 60, "release": 60}


# ------------------------------------------------------------------------------------------------ imports
class _StageFinder(importlib.abc.MetaPathFinder):
    """Maps x2dfd.experts, x2dfd.feature_assessment, ... to the stage folders (pyproject's package-dir) where the
    project is not installed, so a bare checkout runs the suite; an install (pip install -e .) is used as is."""

    def __init__(self, mapping: dict[str, Path]):
        self.mapping = mapping

    def find_spec(self, name, path=None, target=None):
        folder = self.mapping.get(name)
        if folder is None:
            return None
        return importlib.util.spec_from_file_location(name, folder / "__init__.py",
                                                      submodule_search_locations=[str(folder)])


def ensure_importable() -> str:
    """``installed`` when x2dfd.feature_assessment resolves, else ``mapped`` (this process maps the folders)."""
    if str(REPO) not in sys.path:
        sys.path.append(str(REPO))
    try:
        if importlib.util.find_spec("x2dfd.feature_assessment") is not None:
            return "installed"
    except ImportError:
        pass
    mapping = {}
    for sub in ("experts", "feature_assessment", "finetune", "prompts", "demo"):
        if (REPO / sub / "__init__.py").is_file():
            mapping[f"x2dfd.{sub}"] = REPO / sub
    sys.meta_path.insert(0, _StageFinder(mapping))
    return "mapped"


# ------------------------------------------------------------------------------------------------ settings
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--tiny", action="store_true", help="CPU, fp32, reduced depth and width: the same code in ~1 min")
    p.add_argument("--device", default=None, help="cuda (default), cuda:N or cpu (default with --tiny)")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                   help="default: bfloat16 on CUDA, float32 on CPU")
    p.add_argument("--shared", default=str(DEFAULT_SHARED),
                   help=f"folder holding {CONFIG_NAME}/ (../shared/checkpoints; or ../shared, or a carried copy like "
                        ".gpu_shared)")
    p.add_argument("--config-name", default=CONFIG_NAME, help="checkpoint folder under --shared to build from")
    p.add_argument("--model", default=None, help="time this saved checkpoint instead of building one")
    p.add_argument("--out", default=None, help="output folder (default: $OUT when set, else bench/out/gpu_suite)")
    p.add_argument("--work-dir", default=None, help="where the built checkpoint is saved (default: the temp dir)")
    p.add_argument("--keep-checkpoint", action="store_true", help="do not delete the built checkpoint at the end")
    shape = p.add_argument_group("model shape (default: the config's full size; --tiny: 2 x 256 text, 2 x 128 vision)")
    shape.add_argument("--text-layers", type=int, default=None)
    shape.add_argument("--text-width", "--hidden", dest="text_width", type=int, default=None)
    shape.add_argument("--text-heads", type=int, default=None)
    shape.add_argument("--vision-layers", type=int, default=None)
    shape.add_argument("--vision-width", type=int, default=None)
    shape.add_argument("--vision-heads", type=int, default=None)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=None, help="explain batch sizes (1 8 32; --tiny 1 4 8)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="explain: new tokens per face (64; --tiny 8)")
    p.add_argument("--reps", type=int, default=None, help="explain: timed calls per batch size, best kept (2; --tiny 1)")
    p.add_argument("--faces", type=int, default=None, help="assess: faces for the cached path (4; --tiny 2)")
    p.add_argument("--cues", type=int, default=None, help="assess: cues (0: the whole bank; --tiny 24)")
    p.add_argument("--naive-cues", type=int, default=None, help="assess: (face, cue) pairs for score_naive (8; --tiny 4)")
    p.add_argument("--cue-batch-size", type=int, default=64)
    p.add_argument("--train-batch-sizes", type=int, nargs="+", default=None, help="LoRA/QLoRA batch sizes (2 8; --tiny 1 2)")
    p.add_argument("--train-steps", type=int, default=None, help="timed steps per batch size (3; --tiny 1)")
    p.add_argument("--train-warmup", type=int, default=None, help="untimed steps first (1; --tiny 0)")
    p.add_argument("--no-gradient-checkpointing", action="store_true")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--parts", default=",".join(ORDER), help="comma-separated subset of: " + ", ".join(ORDER))
    p.add_argument("--budget-s", type=float, default=None, help="wall-time budget of the whole suite (480; --tiny 240)")
    p.add_argument("--timeouts", default="", help="per-part timeout overrides, e.g. explain=200,qlora=240")
    p.add_argument("--peak-tflops", type=float, default=None, help="override the assumed peak bf16 TFLOP/s")
    p.add_argument("--peak-tbps", type=float, default=None, help="override the assumed HBM TB/s")
    p.add_argument("--part", default=None, help=argparse.SUPPRESS)
    p.add_argument("--spec", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def find_source(shared: str, name: str) -> Path:
    base = Path(shared).expanduser()
    if not base.is_absolute() and not base.exists() and (REPO / base).exists():
        base = REPO / base
    for cand in (base / name, base / "checkpoints" / name, base):
        if (cand / "config.json").is_file():
            return cand.resolve()
    raise SystemExit(f"gpu_suite: no {name}/config.json under --shared {shared} (looked in {base / name} and "
                     f"{base / 'checkpoints' / name}); copy the config folder there: mkdir -p .gpu_shared && "
                     f"cp -r ../shared/checkpoints/{name} .gpu_shared/")


def make_spec(args) -> dict:
    tiny = args.tiny
    device = args.device or ("cpu" if tiny else "cuda")
    dtype = args.dtype or ("bfloat16" if device.startswith("cuda") else "float32")
    shape = {"text_layers": args.text_layers, "text_width": args.text_width, "text_heads": args.text_heads,
             "vision_layers": args.vision_layers, "vision_width": args.vision_width, "vision_heads": args.vision_heads}
    if tiny:
        for key, value in {"text_layers": 2, "text_width": 256, "text_heads": 4, "vision_layers": 2,
                           "vision_width": 128, "vision_heads": 2}.items():
            shape[key] = value if shape[key] is None else shape[key]
    if shape["text_width"] is not None and shape["text_heads"] is None:
        shape["text_heads"] = max(1, shape["text_width"] // 128)
    if shape["vision_width"] is not None and shape["vision_heads"] is None:
        shape["vision_heads"] = max(1, shape["vision_width"] // 64)

    def pick(value, full, small):
        return value if value is not None else (small if tiny else full)

    timeouts = dict(TINY_TIMEOUTS if tiny else TIMEOUTS)
    for item in filter(None, args.timeouts.split(",")):
        key, _, value = item.partition("=")
        timeouts[key.strip()] = float(value)
    source = None if args.model else str(find_source(args.shared, args.config_name))
    return {
        "tiny": tiny, "device": device, "dtype": dtype, "shape": shape, "source": source,
        "checkpoint": str(Path(args.model).resolve()) if args.model else None, "ckpt_dir": None,
        "work_dir": args.work_dir or tempfile.gettempdir(), "threads": args.threads,
        "batch_sizes": pick(args.batch_sizes, [1, 8, 32], [1, 4, 8]), "max_new_tokens": pick(args.max_new_tokens, 64, 8),
        "static_batch_sizes": pick(args.batch_sizes, [1, 8, 32], [1, 4, 8])[-1:],
        "reps": pick(args.reps, 2, 1), "quant_new_tokens": 16 if not tiny else 4,
        "assess": {"faces": pick(args.faces, 4, 2), "cues": pick(args.cues, 0, 24),
                   "naive_cues": pick(args.naive_cues, 8, 4), "cue_batch_size": args.cue_batch_size},
        "train": {"batch_sizes": pick(args.train_batch_sizes, [2, 8], [1, 2]), "steps": pick(args.train_steps, 3, 1),
                  "warmup": pick(args.train_warmup, 1, 0), "gradient_checkpointing": not args.no_gradient_checkpointing},
        "budget_s": pick(args.budget_s, 480.0, 240.0), "timeouts": timeouts,
        "parts": [p for p in args.parts.split(",") if p],
        "peak_override": {"tflops": args.peak_tflops, "tbps": args.peak_tbps},
    }


# ------------------------------------------------------------------------------------------------ child side
def child(args) -> int:
    ensure_importable()
    sys.path.insert(0, str(REPO / "bench"))
    import _suite_parts

    spec = json.loads(Path(args.spec).read_text())
    result = _suite_parts.run_part(args.part, spec)
    print("RESULT " + json.dumps(result), flush=True)
    return 0


# ------------------------------------------------------------------------------------------------ orchestrator
class Log:
    def __init__(self, path: Path):
        self.file = path.open("w", encoding="utf-8")

    def __call__(self, *parts, quiet: bool = False):
        text = " ".join(str(p) for p in parts)
        if not quiet:
            print(text, flush=True)
        self.file.write(text + "\n")
        self.file.flush()


def _last_error_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in reversed(lines):  # the exception line of a traceback
        if ("Error" in ln or "Exception" in ln or "error:" in ln) and not ln.startswith(("File ", "^", "~")):
            return ln[:400]
    return lines[-1][:400] if lines else "no output"


def run_child(name: str, spec_file: Path, timeout: float, log: Log) -> dict:
    """Run one part in a fresh process (own session: a timeout kills its whole process group)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--part", name, "--spec", str(spec_file)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONUNBUFFERED": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [env.get("PYTHONPATH"), str(REPO)]))
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True, cwd=str(REPO))
    try:
        output, _ = proc.communicate(timeout=timeout)
        timed_out = False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        timed_out = True
    wall = time.perf_counter() - t0
    result = partial = None
    for line in output.splitlines():
        if line.startswith("RESULT "):
            result = json.loads(line[len("RESULT "):])
        elif line.startswith("PARTIAL "):
            partial = json.loads(line[len("PARTIAL "):])
        else:
            log(f"  [{name}] {line}", quiet=True)
    kept = {"partial": partial} if partial is not None else {}
    if timed_out:
        return {"status": "timeout", "error": f"timed out after {timeout:.0f} s (killed)", "wall_s": round(wall, 1), **kept}
    if proc.returncode != 0 or result is None:
        return {"status": "error", "error": f"exit {proc.returncode}: {_last_error_line(output)}", "wall_s": round(wall, 1),
                **kept}
    return {"status": "ok", "error": None, "wall_s": round(wall, 1), "result": result}


def peaks_for(machine: dict, spec: dict) -> dict:
    name = machine.get("gpu") or ""
    label, tflops, tbps = None, None, None
    if spec["device"].startswith("cuda"):
        for sub, lab, tf, tb in PEAKS:
            if sub.lower() in name.lower():
                label, tflops, tbps = lab, tf, tb
                break
    o = spec["peak_override"]
    if o["tflops"]:
        tflops, label = o["tflops"], (label or name or spec["device"]) + " (override)"
    if o["tbps"]:
        tbps, label = o["tbps"], (label or name or spec["device"]) + " (override)"
    return {"card": label, "gpu_name": name or None, "bf16_dense_tflops": tflops, "hbm_tbps": tbps,
            "note": None if tflops and tbps else "no assumed peak for this device: limits not computed"}


def explain_limit(m: dict, peaks: dict, bs: int, prompt_tokens: int, new_tokens: int, bpe: int) -> dict | None:
    """The arithmetic lower bound on the time of one judge() call of ``bs`` faces.

    prefill FLOPs per face = 2 x (language-model params without the embedding table) x prompt tokens
      + 2 x vision params x vision tokens + 2 x projector params x image tokens + 2 x lm_head (one position)
      + causal attention 2 x layers x T^2 x attention width;
    decode per step (the first token comes from the prefill): max(bytes / bandwidth, FLOPs / peak), bytes = the
      language model's weights + lm_head (bpe each) + the KV cache of every row at the mean context length."""
    if not (peaks.get("bf16_dense_tflops") and peaks.get("hbm_tbps")):
        return None
    flops_s, bw = peaks["bf16_dense_tflops"] * 1e12, peaks["hbm_tbps"] * 1e12
    body = m["language_model"] - m["embedding"]
    T, L = prompt_tokens, m["text_layers"]
    image_tokens = m.get("image_tokens") or 0
    prefill_flops = (2 * body * T + 2 * m["vision"] * m["vision_tokens"] + 2 * m["projector"] * image_tokens
                     + 2 * m["lm_head"] + 2 * L * T * T * m["attention_width"])
    t_prefill = bs * prefill_flops / flops_s
    steps = max(0, new_tokens - 1)
    ctx = T + new_tokens / 2
    kv_bytes = bs * L * 2 * m["kv_width"] * ctx * bpe
    step_bytes = (body + m["lm_head"]) * bpe + kv_bytes
    step_flops = bs * (2 * (body + m["lm_head"]) + 4 * L * ctx * m["attention_width"])
    t_step = max(step_bytes / bw, step_flops / flops_s)
    t_total = t_prefill + steps * t_step
    return {"prefill_s": t_prefill, "decode_ms_per_step": 1000 * t_step, "decode_s": steps * t_step,
            "total_s": t_total, "faces_per_s": bs / t_total, "prefill_gflop_per_face": prefill_flops / 1e9,
            "decode_gb_per_step": step_bytes / 1e9, "kv_gb_per_step": kv_bytes / 1e9,
            "decode_bound": "bandwidth" if step_bytes / bw >= step_flops / flops_s else "compute"}


def memory_needs(m: dict, spec: dict) -> dict:
    """Rough bytes each part needs on the run device (weights + KV cache / activations + slack), for skipping what
    cannot fit; per batch size where it grows with the batch."""
    bpe = {"float32": 4, "bfloat16": 2, "float16": 2}[spec["dtype"]]
    P, lin = m["params"], m["language_model_linear"]
    W = P * bpe
    W4 = lin * 0.52 + (P - lin) * bpe
    W8 = lin * 1.0 + (P - lin) * bpe
    T, L, h, hi = m["prompt_tokens"], m["text_layers"], m["text_width"], m["text_intermediate"]
    slack = 1.5 * GiB if spec["device"].startswith("cuda") else 0.3 * GiB

    def kv(bs, ctx):
        return bs * L * 2 * m["kv_width"] * ctx * bpe

    def train_act(bs):  # checkpointed layer inputs + one layer recomputed + fp32 logits and their gradient
        return bs * T * (h * L * bpe + (6 * h + 3 * hi) * 4 + m["vocab"] * 4 * 3)

    n = spec["max_new_tokens"]
    return {
        "build": W + slack,
        "explain": {bs: W + 1.2 * kv(bs, T + n) + bs * T * (2 * h + hi) * bpe * 2 + slack for bs in spec["batch_sizes"]},
        "explain-static": {bs: W + 1.2 * kv(bs, T + n) + bs * T * (2 * h + hi) * bpe * 2 + slack
                           for bs in spec["static_batch_sizes"]},
        "assess": W + kv(1, T) * 2 + T * (2 * h + hi) * bpe * 4 + slack,
        "lora": {bs: W + train_act(bs) + slack for bs in spec["train"]["batch_sizes"]},
        "qlora": {bs: W4 + train_act(bs) + slack for bs in spec["train"]["batch_sizes"]},
        "load-4bit": W4 + slack, "load-8bit": W8 + slack,
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.part:
        return child(args)
    t_start = time.perf_counter()
    load_start = [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None
    spec = make_spec(args)
    out_dir = Path(args.out or os.environ.get("OUT") or REPO / "bench" / "out" / "gpu_suite")
    out_dir.mkdir(parents=True, exist_ok=True)
    log = Log(out_dir / "gpu_suite.log")
    imports = ensure_importable()
    log(f"x2dfd gpu_suite {'--tiny ' if spec['tiny'] else ''}started {_dt.datetime.now().isoformat(timespec='seconds')}; "
        f"load average at start {load_start}; python {sys.version.split()[0]} ({sys.executable}); x2dfd {imports}")
    log(f"device {spec['device']}, dtype {spec['dtype']}, source {spec['source'] or spec['checkpoint']}, "
        f"shape {spec['shape']}, budget {spec['budget_s']:.0f} s, out {out_dir}")
    work = Path(tempfile.mkdtemp(prefix="x2dfd-gpu-suite-", dir=spec["work_dir"]))
    spec["work_dir"] = str(work)
    spec_file = work / "spec.json"
    deadline = t_start + spec["budget_s"]
    report = {"suite": "x2dfd gpu_suite", "version": 1, "tiny": spec["tiny"],
              "created": _dt.datetime.now().isoformat(timespec="seconds"), "load_average_start": load_start,
              "settings": {k: v for k, v in spec.items() if k not in ("ckpt_dir",)}, "parts": {}}
    parts = report["parts"]
    wanted = set(spec["parts"])

    def skip(name, reason, **extra):
        parts[name] = {"status": "skipped", "error": reason, **extra}
        log(f"[{name}] skipped: {reason}")

    def run(name, min_s=None) -> dict:
        remaining = deadline - time.perf_counter() - 3
        min_s = min_s if min_s is not None else (5 if spec["tiny"] else 20)
        if remaining < min_s:
            skip(name, f"the suite's budget of {spec['budget_s']:.0f} s is spent ({remaining:.0f} s left)")
            return parts[name]
        timeout = min(spec["timeouts"].get(name, 120), remaining)
        spec_file.write_text(json.dumps(spec))
        log(f"[{name}] running (timeout {timeout:.0f} s) ...")
        res = run_child(name, spec_file, timeout, log)
        parts[name] = res
        log(f"[{name}] {res['status']} in {res['wall_s']} s" + (f": {res['error']}" if res.get("error") else ""))
        write_outputs(report, out_dir, t_start, log, final=False)
        return res

    try:
        machine_res = run("machine", min_s=1)
        machine = machine_res.get("result") or {}
        report["machine"] = machine
        model = machine.get("model")
        report["model"] = model
        peaks = peaks_for(machine, spec)
        report["peaks"] = peaks
        log(describe_machine(machine, peaks, load_start))
        cuda_missing = spec["device"].startswith("cuda") and not machine.get("cuda_available")
        needs = memory_needs(model, spec) if model else {}
        if spec["device"].startswith("cuda"):
            avail = (machine.get("gpu_free_gb") or 0) * GiB
            where = f"GPU free memory {machine.get('gpu_free_gb')} GiB"
        else:
            avail = (machine.get("ram_available_gb") or 0) * GiB
            where = f"available RAM {machine.get('ram_available_gb'):.1f} GiB" if machine.get("ram_available_gb") else "RAM"

        def fits(need) -> bool:
            return not avail or need <= 0.95 * avail

        # build (or use --model)
        if spec["checkpoint"]:
            skip("build", f"--model {spec['checkpoint']} given: no checkpoint built")
        elif "build" not in wanted and not wanted & set(MODEL_PARTS):
            skip("build", "not in --parts")
        elif cuda_missing:
            skip("build", "CUDA is not available on this machine (use --tiny or --device cpu)")
        elif model is None:
            skip("build", "the machine probe failed: no model shape (see the machine row)")
        else:
            disk_need = model["params"] * {"float32": 4}.get(spec["dtype"], 2) * 1.05
            free = shutil.disk_usage(work).free
            if not fits(needs["build"]):
                skip("build", f"needs ~{needs['build'] / GiB:.1f} GiB, {where}")
            elif free < disk_need:
                skip("build", f"saving needs ~{disk_need / GiB:.1f} GiB on disk, {free / GiB:.1f} GiB free in {work} "
                              "(pass --work-dir)")
            else:
                spec["ckpt_dir"] = str(work / "ckpt")
                res = run("build")
                if res["status"] == "ok":
                    spec["checkpoint"] = res["result"]["checkpoint"]
        no_ckpt = None if spec["checkpoint"] else f"no checkpoint ({parts['build']['status']}: {parts['build']['error']})"
        bnb = machine.get("bitsandbytes")
        no_bnb = None if bnb else ("bitsandbytes is not importable here (" + (machine.get("bitsandbytes_error") or "") +
                                   "); carry its wheel in .whl/ and run bench/gpu_suite.sh")

        for name in MODEL_PARTS:
            if name not in wanted:
                skip(name, "not in --parts")
                continue
            if cuda_missing:
                skip(name, "CUDA is not available on this machine")
                continue
            if no_ckpt:
                skip(name, no_ckpt)
                continue
            if name in ("qlora", "load-4bit", "load-8bit") and no_bnb:
                skip(name, no_bnb)
                continue
            need = needs.get(name)
            saved = {}
            if isinstance(need, dict):  # per batch size: drop the sizes that cannot fit
                key = "static_batch_sizes" if name == "explain-static" else "batch_sizes"
                holder = spec if name.startswith("explain") else spec["train"]
                saved = {"holder": holder, "key": key, "sizes": list(holder[key])}
                dropped = [bs for bs, b in need.items() if not fits(b)]
                holder[key] = [bs for bs in holder[key] if bs not in dropped]
                if not holder[key]:
                    holder[key] = saved["sizes"]
                    skip(name, f"needs ~{min(need.values()) / GiB:.1f} GiB at the smallest batch, {where}")
                    continue
                if dropped:
                    log(f"[{name}] batch sizes {dropped} skipped: need "
                        f"{', '.join(f'~{need[b] / GiB:.1f}' for b in dropped)} GiB, {where}")
            elif need is not None and not fits(need):
                skip(name, f"needs ~{need / GiB:.1f} GiB, {where}")
                continue
            res = run(name)
            if saved:
                dropped = [bs for bs in saved["sizes"] if bs not in saved["holder"][saved["key"]]]
                if dropped and res.get("result"):
                    res["result"].setdefault("rows", []).extend(
                        {"batch_size": bs, "skipped": f"does not fit: needs ~{need[bs] / GiB:.1f} GiB, {where}"}
                        for bs in dropped)
                saved["holder"][saved["key"]] = saved["sizes"]
        if "release" not in wanted:
            skip("release", "not in --parts")
        elif cuda_missing:
            skip("release", "CUDA is not available on this machine")
        else:
            run("release")
    finally:
        if not args.keep_checkpoint:
            shutil.rmtree(work, ignore_errors=True)
        elif spec.get("ckpt_dir"):
            log(f"checkpoint kept: {spec['ckpt_dir']}")
    md = write_outputs(report, out_dir, t_start, log, final=True)
    log("")
    log(md)
    log(f"wrote {out_dir / 'gpu_suite.json'}, {out_dir / 'gpu_suite.md'}, {out_dir / 'gpu_suite.log'} "
        f"({time.perf_counter() - t_start:.0f} s)")
    return 0


# ------------------------------------------------------------------------------------------------ report
def describe_machine(m: dict, peaks: dict, load_start) -> str:
    if not m:
        return "machine: probe failed"
    gpu = (f"{m['gpu']} x{m.get('gpu_count', 1)}, {m['gpu_memory_gb']} GiB ({m['gpu_free_gb']} free), "
           f"driver {m.get('driver')}, CUDA {m.get('cuda_runtime')}, cc {m.get('compute_capability')}"
           if m.get("gpu") else "no CUDA GPU")
    ram = f"{m['ram_available_gb']:.0f} GiB RAM available" if m.get("ram_available_gb") else "RAM ?"
    peak = (f"assumed peak {peaks['bf16_dense_tflops']:g} TFLOP/s bf16 dense, {peaks['hbm_tbps']:g} TB/s "
            f"({peaks['card']})" if peaks.get("bf16_dense_tflops") and peaks.get("hbm_tbps") else
            "no assumed peak (limits not computed)")
    return (f"machine: {gpu}; {m.get('cpus')} CPUs, {ram}; python {m.get('python')}, torch {m.get('torch')}, "
            f"transformers {m.get('transformers')}, peft {m.get('peft')}, accelerate {m.get('accelerate')}, "
            f"bitsandbytes {m.get('bitsandbytes')}; load average {load_start}; {peak}")


def _fmt(x, digits=3):
    if x is None:
        return "-"
    if isinstance(x, float):
        if x == 0:
            return "0"
        if abs(x) >= 100:
            return f"{x:,.0f}"
        return f"{x:.{digits}g}"
    return str(x)


def _mem(mem: dict | None) -> str:
    if not mem:
        return "-"
    if "peak_alloc_gb" in mem:
        return f"peak {mem['peak_alloc_gb']:.2f} GiB GPU (reserved {mem['peak_reserved_gb']:.2f})"
    return f"peak RSS {mem['peak_rss_gb']:.2f} GiB"


def table_rows(report: dict) -> list[dict]:
    """One row per measured case: part, case, status, result, detail, memory, limit."""
    parts, rows = report["parts"], []
    m = report.get("model") or {}
    peaks = report.get("peaks") or {}
    spec = report["settings"]
    bpe = {"float32": 4, "bfloat16": 2, "float16": 2}[spec["dtype"]]

    def add(part, case, status, result="", detail="", memory="-", limit="-"):
        rows.append({"part": part, "case": case, "status": status, "result": result, "detail": detail,
                     "memory": memory, "limit": limit})

    def failed(part, case):
        p = parts.get(part)
        if p is None:
            add(part, case, "not run", "", "")
            return True
        if p["status"] != "ok":
            add(part, case, p["status"], "", p.get("error") or "")
            return True
        return False

    def with_rows(part, case):
        """The result of a part measured row by row: its rows even when it died later (then its error row last)."""
        p = parts.get(part)
        if p is not None and p["status"] != "ok" and p.get("partial"):
            tail.append((part, case, p))
            return p["partial"]
        return None if failed(part, case) else p["result"]

    tail = []

    def flush_tail():
        while tail:
            part, case, p = tail.pop()
            done = bool(p["partial"].get("rows"))
            add(part, case, p["status"], "", (p.get("error") or "") + (" (the rows above finished before)" if done else ""))

    mach = report.get("machine") or {}
    if not failed("machine", "probe"):
        add("machine", mach.get("gpu") or "cpu", "ok", f"{mach.get('gpu_memory_gb', '-')} GiB GPU" if mach.get("gpu") else
            f"{mach.get('cpus')} CPUs", f"driver {mach.get('driver')}, torch {mach.get('torch')}, transformers "
            f"{mach.get('transformers')}, bitsandbytes {mach.get('bitsandbytes')}",
            limit=(f"{peaks['bf16_dense_tflops']:g} TFLOP/s, {peaks['hbm_tbps']:g} TB/s ({peaks['card']})"
                   if peaks.get("bf16_dense_tflops") and peaks.get("hbm_tbps") else "no assumed peak"))
    b = parts.get("build", {})
    if b.get("status") == "ok":
        r = b["result"]
        add("build", f"{r['params'] / 1e9:.2f}B params, {r['dtype']}", "ok", f"{r['build_s'] + r['save_s']:.1f} s",
            f"built on {', '.join(r['built_on'])} in {r['build_s']:.1f} s, save_pretrained {r['size_gb']} GB in "
            f"{r['save_s']:.1f} s", _mem(r.get("memory")))
    else:
        failed("build", "random-weight checkpoint")

    def explain_rows(part, what, label):
        r = with_rows(part, what)
        for row in (r or {}).get("rows", []):
            case = f"batch {row['batch_size']}, {r['max_new_tokens']} new tokens{label}"
            if "skipped" in row or "error" in row:
                add(part, case, "skipped" if "skipped" in row else "error", "", row.get("skipped") or row["error"])
                continue
            lim = explain_limit(m, peaks, row["batch_size"], r["prompt_tokens"], r["max_new_tokens"], bpe) if m else None
            limit = "-"
            if lim:
                row["limit"] = lim
                limit = (f"{lim['faces_per_s']:.3g} faces/s ({lim['prefill_s'] * 1000:.3g} ms prefill, "
                         f"{lim['decode_ms_per_step']:.3g} ms/step); measured = {100 * lim['total_s'] / row['wall_s']:.0f}%")
            add(part, case, "ok", f"{row['faces_per_s']:.3g} faces/s",
                f"{row['wall_s']:.3g} s/call: prompt {row['prompt_s']:.3g} s, prefill {row['prefill_s']:.3g} s "
                f"({row['batch_size'] * r['prompt_tokens']} tok), decode {row['decode_s']:.3g} s "
                f"({row['decode_ms_per_step']:.3g} ms/step x {max(1, row['new_tokens_max'] - 1)})"
                + (f"; warm-up {row['warmup_s']:.3g} s (compile, graph capture)" if "warmup_s" in row else ""),
                _mem(row.get("memory")), limit)
    explain_rows("explain", "judge()", "")
    flush_tail()
    explain_rows("explain-static", "judge(), --static-cache", ", --static-cache")
    flush_tail()
    if not failed("assess", "cue scoring"):
        r = parts["assess"]["result"]
        c, n = r["cached"], r["naive"]
        add("assess", f"CueScorer {r['method']} (cached), {c['faces']} faces x {r['cues']} cues", "ok",
            f"{c['pairs_per_s']:.4g} cues x faces/s", f"{c['seconds_per_face_all_cues']:.3g} s per face for all "
            f"{r['cues']} cues, {c['forwards']} forwards", _mem(c.get("memory")))
        add("assess", f"score_naive (one prompt per cue), 1 face x {n['pairs']} cues", "ok",
            f"{n['pairs_per_s']:.4g} cues x faces/s",
            f"extrapolated {n['seconds_per_face_all_cues_extrapolated']:.3g} s per face for all {r['cues']} cues",
            _mem(n.get("memory")))
        add("assess", "cached / naive", "ok", f"{r['speedup']:.3g}x",
            f"max abs difference of P(yes), cached vs naive: {r['max_abs_diff_p_yes']:.2e} ({spec['dtype']})")
    for mode in ("lora", "qlora"):
        r = with_rows(mode, "training step")
        if r is None:
            continue
        for row in r["rows"]:
            case = f"batch {row['batch_size']}" + (", nf4 base" if mode == "qlora" else f", {r['dtype']} base")
            if "skipped" in row or "error" in row:
                add(mode, case, "skipped" if "skipped" in row else "error", "", row.get("skipped") or row["error"])
                continue
            limit = "-"
            if peaks.get("bf16_dense_tflops") and m:
                flops = 6 * (m["params"] - m["embedding"]) * row["batch_size"] * row["tokens_per_sample"]
                limit = f"~{100 * flops / row['step_s_mean'] / (peaks['bf16_dense_tflops'] * 1e12):.0f}% of peak (6·P·tokens)"
            add(mode, case, "ok", f"{row['step_s_mean']:.3g} s/step, {row['tokens_per_s']:,.0f} tok/s",
                f"{row['tokens_per_sample']} tok/sample, load {r['load_s']:.1f} s, {r['trainable']['trainable']:,} "
                f"trainable ({r['trainable']['percent']:.2f}%), loss {row['losses'][-1]}",
                _mem(row.get("memory")), limit)
        flush_tail()
    for bits in (4, 8):
        name = f"load-{bits}bit"
        if failed(name, f"{bits}-bit load"):
            continue
        r = parts[name]["result"]
        add(name, f"{'nf4' if bits == 4 else 'int8'} (bitsandbytes)", "ok", f"load {r['load_s']:.3g} s",
            f"weights {r['weights_gb']:.2f} GiB; judge() batch 1: prefill {r['judge_prefill_s']:.3g} s, "
            f"{r['judge_decode_ms_per_step']:.3g} ms/step", _mem(r["memory_after_load"]))
    if not failed("release", "converted official-release checkpoint"):
        r = parts["release"]["result"]
        check = (f"; logits vs base + B·A·alpha/r by hand ({r['verify_layers']} layers): max abs diff "
                 f"{r['max_abs_logit_diff']:.2g} ({'ok' if r['ok'] else 'FAILED'})" if "verify_layers" in r else "")
        add("release", f"{r['layers']} layers, r={r['r']}, {'with' if r['experts'] else 'no'} experts", "ok",
            f"convert {r['convert_s']:.3g} s", f"release {r['release_mb']:.0f} MB -> {r['converted_mb']:.0f} MB"
            + check, _mem(r.get("memory")))
    return rows


def render_markdown(report: dict, rows: list[dict]) -> str:
    mach, peaks, m = report.get("machine") or {}, report.get("peaks") or {}, report.get("model") or {}
    s = report["settings"]
    lines = [f"# x2dfd GPU suite{' (--tiny)' if report['tiny'] else ''}", ""]
    lines.append(f"- {describe_machine(mach, peaks, report['load_average_start'])}")
    if m:
        lines.append(f"- model: {m['architecture']} {m['params'] / 1e9:.3f}B params (text {m['text_layers']} x "
                     f"{m['text_width']}, vision {m['vision_layers']} x {m['vision_width']}), random weights, "
                     f"{s['dtype']} on {s['device']}; prompt {m['prompt_tokens']} tokens per face "
                     f"({m.get('image_tokens')} image tokens)")
    lines.append(f"- created {report['created']}, total wall {report.get('wall_s', 0):.0f} s "
                 f"(budget {s['budget_s']:.0f} s)")
    lines.append("- limit: prefill FLOPs (2·params·tokens + vision + attention) at the peak FLOP/s; decode bytes per "
                 "step (weights + KV cache) at the HBM bandwidth")
    lines.append("")
    cols = ("part", "case", "status", "result", "detail", "memory", "limit")
    lines.append("| " + " | ".join(cols) + " |")
    lines.append("|" + "|".join("---" for _ in cols) + "|")
    for r in rows:
        lines.append("| " + " | ".join(str(r[c]).replace("|", "/").replace("\n", " ") for c in cols) + " |")
    return "\n".join(lines) + "\n"


def write_outputs(report: dict, out_dir: Path, t_start: float, log: Log, final: bool) -> str:
    report["wall_s"] = round(time.perf_counter() - t_start, 1)
    report["complete"] = final
    try:
        rows = table_rows(report)
    except Exception as err:  # noqa: BLE001 - a report bug must not lose the measurements
        rows = [{"part": "report", "case": "table", "status": "error", "result": "", "detail": f"{type(err).__name__}: {err}",
                 "memory": "-", "limit": "-"}]
    report["rows"] = rows
    md = render_markdown(report, rows)
    (out_dir / "gpu_suite.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    (out_dir / "gpu_suite.md").write_text(md)
    return md


if __name__ == "__main__":
    sys.exit(main())
