"""Benchmark ``x2dfd convert x2dfd-release`` on a full-size random-weight release, and check the result on a device.

    python bench/bench_convert.py --layers 2 --no-experts                       # CPU smoke (seconds)
    python bench/bench_convert.py --layers 32                                   # the release's full shape (conversion only)
    python bench/bench_convert.py --device cuda --layers 32 --verify-layers 4   # + logits check on the GPU

The release folder is written in X2-DFD's own format (original LLaVA peft names, pickled with torch.save)
at LLaVA-1.5-7B's shapes read from ../shared/checkpoints/llava-1.5-7b-hf: ``--layers`` decoder layers of width
4096 / MLP 11008, LoRA on every linear layer of the language model with rank ``--r`` and ``--alpha``
(X2-DFD's training defaults r=16, alpha=32, from its eval/infer/runner.py; the converter itself reads r and
alpha from the release's adapter_config.json, so a release trained otherwise converts the same way), the
projector (1024 -> 4096 -> 4096) in non_lora_trainables.bin, and the experts at their real size (timm
swinv2_base_window16_256, torchvision ResNet-50) unless ``--no-experts``.

``--verify-layers N`` (N <= --layers) then builds a random llava-1.5 of full width and N layers on ``--device``,
applies the converted adapter through ``x2dfd.mllm.load_mllm`` and compares the last-position logits with the
base weights plus B·A·alpha/r added by hand (the LoRA of layers >= N is dropped for the check). Results go to
bench/out/bench_convert.json.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
LINEARS = {"self_attn": ("q_proj", "k_proj", "v_proj", "o_proj"), "mlp": ("gate_proj", "up_proj", "down_proj")}


def write_release(folder: Path, cfg, layers: int, r: int, alpha: int, experts: bool, seed: int = 0) -> dict:
    import torch

    text, vision = cfg.text_config, cfg.vision_config
    h, inter = text.hidden_size, text.intermediate_size
    shapes = {"q_proj": (h, h), "k_proj": (h, h), "v_proj": (h, h), "o_proj": (h, h),
              "gate_proj": (inter, h), "up_proj": (inter, h), "down_proj": (h, inter)}
    g = torch.Generator().manual_seed(seed)
    lora = {}
    for layer in range(layers):
        for block, names in LINEARS.items():
            for name in names:
                out_f, in_f = shapes[name]
                key = f"base_model.model.model.layers.{layer}.{block}.{name}"
                lora[f"{key}.lora_A.weight"] = (torch.randn(r, in_f, generator=g) * in_f ** -0.5).to(torch.bfloat16)
                lora[f"{key}.lora_B.weight"] = (torch.randn(out_f, r, generator=g) * 0.01).to(torch.bfloat16)
    projector = {
        "base_model.model.model.mm_projector.0.weight": torch.randn(h, vision.hidden_size, generator=g) * 0.02,
        "base_model.model.model.mm_projector.0.bias": torch.zeros(h),
        "base_model.model.model.mm_projector.2.weight": torch.randn(h, h, generator=g) * 0.02,
        "base_model.model.model.mm_projector.2.bias": torch.zeros(h),
    }
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "r": r, "lora_alpha": alpha, "lora_dropout": 0.05, "bias": "none", "task_type": "CAUSAL_LM",
        "target_modules": [n for names in LINEARS.values() for n in names]}))
    torch.save(lora, folder / "adapter_model.bin")
    torch.save({k: v.to(torch.bfloat16) for k, v in projector.items()}, folder / "non_lora_trainables.bin")
    if experts:
        import timm
        from torchvision.models import resnet50

        swin = timm.create_model("swinv2_base_window16_256", pretrained=False, num_classes=2)
        torch.save({f"module.{k}": v for k, v in swin.state_dict().items()}, folder / "best_gf.pth")
        (folder / "diffusion").mkdir()
        torch.save(resnet50(weights=None, num_classes=1).state_dict(), folder / "diffusion" / "model_epoch_best.pth")
    return {"lora": lora, "projector": projector}


def verify(n: int, device: str, tolerance: float, r: int, alpha: int, cfg_dir: Path, out: Path, tensors: dict,
           tmp: Path) -> dict:
    import torch
    from PIL import Image

    from x2dfd.mllm import MLLMOptions, load_mllm
    from x2dfd.tiny import build_checkpoint

    base = build_checkpoint(cfg_dir, tmp / "base", text_layers=n, text_width=None, text_heads=32,
                            vision_layers=1, vision_width=None, vision_heads=16, dtype=torch.float32)
    # the adapter names layers >= n, which this base lacks: check on a copy that keeps layers < n
    import shutil

    from safetensors.torch import load_file, save_file

    check = tmp / "adapter-check"
    shutil.copytree(out, check)
    state = load_file(str(check / "adapter_model.safetensors"))
    keep = {k: v for k, v in state.items() if ".layers." not in k or int(k.split(".layers.")[1].split(".")[0]) < n}
    save_file(keep, str(check / "adapter_model.safetensors"), metadata={"format": "pt"})
    acfg = json.loads((check / "adapter_config.json").read_text())
    mods = sorted({k[len("base_model.model."):].rsplit(".lora_", 1)[0] for k in keep if ".lora_" in k})
    import re

    acfg["target_modules"] = "^(" + "|".join(re.escape(m) for m in mods) + ")$"
    (check / "adapter_config.json").write_text(json.dumps(acfg))

    t0 = time.perf_counter()
    mllm = load_mllm(MLLMOptions(model=str(base), adapter=str(check), device=device, dtype="float32"))
    load_s = time.perf_counter() - t0
    image = Image.new("RGB", (336, 336), (120, 90, 80))
    q = mllm.preset.render_question({"swinv2": 0.5, "grip": 0.5})
    inputs = mllm.encode([image], [mllm.build_prompt(q)])
    with torch.inference_mode():
        got = mllm.model(**inputs).logits[0, -1].float()
    del mllm
    from transformers import AutoModelForImageTextToText

    ref = AutoModelForImageTextToText.from_pretrained(base, dtype=torch.float32).to(device).eval()
    sd = ref.state_dict()
    scale = alpha / r
    for key, a in tensors["lora"].items():
        if not key.endswith("lora_A.weight"):
            continue
        module = key[len("base_model.model.model."):-len(".lora_A.weight")]
        if int(module.split(".")[1]) >= n:
            continue
        b = tensors["lora"][key.replace("lora_A", "lora_B")]
        w = sd[f"model.language_model.{module}.weight"]
        w += (b.float() @ a.float()).to(w.device) * scale
    for i, name in ((0, "linear_1"), (2, "linear_2")):
        for part in ("weight", "bias"):
            sd[f"model.multi_modal_projector.{name}.{part}"].copy_(
                tensors["projector"][f"base_model.model.model.mm_projector.{i}.{part}"].to(torch.bfloat16).float())
    with torch.inference_mode():
        want = ref(**inputs).logits[0, -1].float()
    diff = float((got - want).abs().max())
    return {"verify_layers": n, "max_abs_logit_diff": diff, "ok": diff <= tolerance, "load_s": round(load_s, 3)}


def run(cfg_dir: Path, layers: int, r: int = 16, alpha: int = 32, experts: bool = True, verify_layers: int = 0,
        device: str = "cpu", tolerance: float = 1e-3, log=None) -> dict:
    """Write a random-weight release of this shape, convert it (time, size, peak RSS) and, with ``verify_layers``,
    check logits through x2dfd against base + B·A·alpha/r added by hand (also used by bench/gpu_suite.sh)."""
    from transformers import AutoConfig

    from x2dfd.convert import convert_x2dfd_release

    log = log or (lambda m: print(m, file=sys.stderr))
    cfg = AutoConfig.from_pretrained(cfg_dir)
    result = {"layers": layers, "r": r, "alpha": alpha, "experts": experts, "hidden": cfg.text_config.hidden_size,
              "device": device}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        tensors = write_release(tmp / "release", cfg, layers, r, alpha, experts)
        result["write_release_s"] = round(time.perf_counter() - t0, 3)
        result["release_mb"] = round(sum(p.stat().st_size for p in (tmp / "release").rglob("*") if p.is_file()) / 2**20, 1)
        t0 = time.perf_counter()
        out = convert_x2dfd_release(tmp / "release", tmp / "converted", log=log)
        result["convert_s"] = round(time.perf_counter() - t0, 3)
        result["converted_mb"] = round(sum(p.stat().st_size for p in out.iterdir()) / 2**20, 1)
        result["max_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        if verify_layers:
            result.update(verify(verify_layers, device, tolerance, r, alpha, cfg_dir, out, tensors, tmp))
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", help="where --verify-layers runs (cpu, cuda)")
    ap.add_argument("--config-dir", default=str(SHARED / "checkpoints" / "llava-1.5-7b-hf"))
    ap.add_argument("--layers", type=int, default=32, help="decoder layers carrying LoRA (LLaVA-1.5-7B: 32)")
    ap.add_argument("--r", type=int, default=16, help="LoRA rank (X2-DFD's training default: 16)")
    ap.add_argument("--alpha", type=int, default=32, help="LoRA alpha (X2-DFD's training default: 32)")
    ap.add_argument("--no-experts", action="store_true", help="leave the SwinV2 / ResNet-50 experts out")
    ap.add_argument("--verify-layers", type=int, default=0, help="check logits on a full-width base of this depth")
    ap.add_argument("--tolerance", type=float, default=1e-3, help="max |logit difference| for --verify-layers (fp32)")
    ap.add_argument("--out", default=str(REPO / "bench" / "out" / "bench_convert.json"))
    args = ap.parse_args()
    if args.verify_layers > args.layers:
        raise SystemExit("--verify-layers must be <= --layers")

    result = run(Path(args.config_dir), args.layers, args.r, args.alpha, experts=not args.no_experts,
                 verify_layers=args.verify_layers, device=args.device, tolerance=args.tolerance)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result))
    return 0 if result.get("ok", True) else 1


if __name__ == "__main__":
    raise SystemExit(main())
