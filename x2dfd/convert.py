"""``x2dfd convert``: turn a published detector's release folder into x2dfd-native files.

    x2dfd convert x2dfd-release RELEASE/ --out runs/x2dfd-release
    x2dfd explain faces/ --model ./llava-1.5-7b-hf --adapter runs/x2dfd-release    # preset.json picked up

``x2dfd-release`` reads the official X2-DFD release (trained with the original LLaVA code,
haotian-liu/LLaVA, ``--lora_enable``):

* ``adapter_config.json`` + ``adapter_model.bin`` (or ``.safetensors``): peft LoRA over LLaVA's original module
  names (``base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight``, ...);
* ``non_lora_trainables.bin``: the trained projector (``base_model.model.model.mm_projector.{0,2}.{weight,bias}``);
* ``best_gf.pth``: the SwinV2 blending expert (timm ``swinv2_base_window16_256``, 2 classes);
* a ResNet-50 diffusion expert (``*.pth``/``*.pt`` under a folder or file named diffusion/grip/aligner, or
  ``--diffusion FILE``), with the GRIP-style ``config.yaml`` beside it when there is one.

and writes into ``--out``: a peft adapter for ``llava-hf/llava-1.5-7b-hf`` (``adapter_config.json`` +
``adapter_model.safetensors``, the projector as peft ``modules_to_save`` exactly like ``x2dfd finetune`` saves
its trained projector, so ``x2dfd explain --adapter`` loads it unchanged), the experts as safetensors with
their JSON (``swinv2_blending.*``, ``grip_diffusion.*``) and ``preset.json`` (the x2dfd-release preset:
the prompt format the release was trained with, the experts' files, and where everything came from).

Key names follow transformers' own LLaVA conversion: ``convert_llava_weights_to_hf.py``'s
KEYS_TO_MODIFY_MAPPING (``model.vision_tower.`` -> ``""``, ``model.mm_projector`` -> ``multi_modal_projector``,
``multi_modal_projector.0/2`` -> ``linear_1/2``, ``model.model`` -> ``language_model.model``, ``lm_head`` ->
``language_model.lm_head``; written from knowledge of that script, which this transformers no longer ships),
followed by the rename of that older layout into transformers 5's, read from the installed
``transformers/conversion_mapping.py`` ("llava": ``^language_model.lm_head`` -> ``lm_head``,
``^language_model`` -> ``model.language_model``, ``^vision_tower`` -> ``model.vision_tower``,
``^multi_modal_projector`` -> ``model.multi_modal_projector``). Composed:

    model.layers.N.*          -> model.language_model.layers.N.*
    model.embed_tokens / norm -> model.language_model.embed_tokens / norm
    lm_head                   -> lm_head
    model.mm_projector.0 / 2  -> model.multi_modal_projector.linear_1 / linear_2
    model.vision_tower.vision_tower.vision_model.* -> model.vision_tower.vision_model.*

No pickle is ever executed: ``.bin``/``.pth`` files are read with ``torch.load(weights_only=True)``, which
refuses any object that is not a tensor or a plain container; such a file stops the conversion with one line.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

from x2dfd.errors import UsageError
from x2dfd.records import one_line

FORMATS = ("x2dfd-release",)
TARGET_MODEL = "llava-hf/llava-1.5-7b-hf"
TARGET_VOCAB = 32064  # llava-hf/llava-1.5-7b-hf pads the 32000 (+<image>, <pad>) vocabulary to 32064 rows
PEFT_PREFIX = "base_model.model."
PROJECTOR_MODULE = "model.multi_modal_projector"
BLEND_FILE, DIFFUSION_FILE = "swinv2_blending.safetensors", "grip_diffusion.safetensors"
LORA_SUFFIX = re.compile(r"\.(lora_A|lora_B|lora_embedding_A|lora_embedding_B|lora_magnitude_vector)(\.default)?(\.weight)?$")

# original LLaVA module path -> llava-hf (transformers >= 5) module path; first match wins
KEY_RULES: tuple[tuple[str, str], ...] = (
    (r"^model\.mm_projector\.0(?=\.|$)", "model.multi_modal_projector.linear_1"),
    (r"^model\.mm_projector\.2(?=\.|$)", "model.multi_modal_projector.linear_2"),
    (r"^model\.vision_tower\.vision_tower(?=\.|$)", "model.vision_tower"),
    (r"^model\.(layers|embed_tokens|norm)(?=\.|$)", r"model.language_model.\1"),
    (r"^lm_head(?=\.|$)", "lm_head"),
)


class ConversionError(UsageError):
    """A release folder that cannot be converted (one line)."""


# ---------------------------------------------------------------------------------- safe reading
def sha256_file(path: Path) -> str:
    from x2dfd.media import file_sha256  # the one file hash (media imports no torch)

    return file_sha256(path)


def load_tensors(path: Path) -> dict[str, Any]:
    """A state dict from a .safetensors file, or from a pickled .bin/.pth read with ``weights_only=True`` (a file
    whose unpickling would build any other object, e.g. call os.system, is refused before anything runs)."""
    import pickle

    import torch

    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as err:  # noqa: BLE001 - a corrupt file: one line
            raise ConversionError(f"cannot read '{path}': {one_line(str(err))}") from err
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        reason = next((ln.strip() for ln in str(err).splitlines() if "GLOBAL" in ln or "Unsupported" in ln), "")
        raise ConversionError(
            f"refused to load '{path}': it holds Python objects other than tensors, so unpickling it could run code "
            f"(torch.load weights_only refused it{': ' + reason if reason else ''}); get the file from its "
            "official source or as .safetensors") from None
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise ConversionError(f"cannot read '{path}' as a PyTorch weights file: {one_line(str(err))}") from None
    return unwrap_state(obj, path)


def unwrap_state(obj: Any, path: Path) -> dict[str, Any]:
    """The tensor dict inside a checkpoint ({'state_dict': ...}, {'model': ...}, DataParallel 'module.' names)."""
    import torch

    for _ in range(3):
        if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            break
        inner = next((obj[k] for k in ("state_dict", "model", "net", "model_state_dict", "weights")
                      if isinstance(obj, dict) and isinstance(obj.get(k), dict)), None)
        if inner is None:
            raise ConversionError(f"'{path}' holds no state dict of tensors")
        obj = inner
    else:
        raise ConversionError(f"'{path}' holds no state dict of tensors")
    state = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


# ---------------------------------------------------------------------------------- LLaVA keys
def map_module_path(path: str) -> str:
    """An original-LLaVA module/parameter path (without the peft prefix) -> its llava-hf path."""
    for pattern, repl in KEY_RULES:
        if re.match(pattern, path):
            return re.sub(pattern, repl, path, count=1)
    raise ConversionError(f"no llava-hf name for the original LLaVA weight '{path}' (known: model.layers, "
                          "model.embed_tokens, model.norm, lm_head, model.mm_projector.0/2, model.vision_tower)")


def map_peft_key(key: str) -> str:
    if not key.startswith(PEFT_PREFIX):
        raise ConversionError(f"unexpected weight name '{key}' (expected the peft prefix '{PEFT_PREFIX}')")
    return PEFT_PREFIX + map_module_path(key[len(PEFT_PREFIX):])


def _pad_vocab(key: str, tensor, vocab: int):
    """LoRA factors of lm_head / embed_tokens grow from LLaVA's 32000 rows to llava-hf's padded vocabulary (zeros:
    the added rows had no adapter)."""
    import torch

    if ".lm_head." in key and ".lora_B" in key and tensor.shape[0] < vocab:
        return torch.cat([tensor, tensor.new_zeros(vocab - tensor.shape[0], tensor.shape[1])], 0)
    if ".embed_tokens." in key and ".lora_embedding_A" in key and tensor.shape[1] < vocab:
        return torch.cat([tensor, tensor.new_zeros(tensor.shape[0], vocab - tensor.shape[1])], 1)
    return tensor


def convert_lora(state: dict[str, Any], vocab: int = TARGET_VOCAB) -> tuple[dict[str, Any], list[str]]:
    """(peft state for llava-hf, llava-hf paths of the modules carrying LoRA)."""
    out: dict[str, Any] = {}
    modules: set[str] = set()
    for key, tensor in state.items():
        m = LORA_SUFFIX.search(key)
        if m is None:
            raise ConversionError(f"adapter weight '{key}' is not a LoRA factor (lora_A / lora_B)")
        clean = key[: m.start()] + "." + m.group(1) + (m.group(3) or "")
        new = map_peft_key(clean)
        out[new] = _pad_vocab(new, tensor.contiguous(), vocab)
        modules.add(new[len(PEFT_PREFIX): -len("." + m.group(1) + (m.group(3) or ""))])
    if not out:
        raise ConversionError("the adapter holds no LoRA weights")
    return out, sorted(modules)


def convert_projector(state: dict[str, Any]) -> dict[str, Any]:
    """non_lora_trainables.bin -> the peft ``modules_to_save`` weights of ``model.multi_modal_projector``."""
    out = {}
    for key, tensor in state.items():
        path = key[len(PEFT_PREFIX):] if key.startswith(PEFT_PREFIX) else key
        if not path.startswith("model.") and path.startswith("mm_projector."):
            path = "model." + path
        new = PEFT_PREFIX + map_module_path(path)
        if f".{PROJECTOR_MODULE}." not in f".{new[len(PEFT_PREFIX):]}":
            raise ConversionError(f"non_lora_trainables holds '{key}', which is not the projector; x2dfd can carry only "
                                  "the projector beside the LoRA")
        out[new] = tensor.contiguous()
    return out


def module_regex(modules: list[str]) -> str:
    """peft target_modules regex matching exactly these module paths."""
    return "^(" + "|".join(re.escape(m) for m in modules) + ")$"


def write_adapter(out: Path, release_cfg: dict[str, Any], lora: dict[str, Any], modules: list[str],
                  projector: dict[str, Any]) -> None:
    from peft import LoraConfig
    from safetensors.torch import save_file

    if release_cfg.get("bias", "none") != "none":
        raise ConversionError(f"adapter_config.json: bias '{release_cfg.get('bias')}' is not supported (only 'none')")
    if release_cfg.get("rank_pattern") or release_cfg.get("alpha_pattern"):
        raise ConversionError("adapter_config.json: per-module rank_pattern / alpha_pattern are not supported")
    config = LoraConfig(
        r=int(release_cfg["r"]), lora_alpha=release_cfg.get("lora_alpha", 8),
        lora_dropout=float(release_cfg.get("lora_dropout", 0.0)), bias="none",
        use_rslora=bool(release_cfg.get("use_rslora", False)),
        fan_in_fan_out=bool(release_cfg.get("fan_in_fan_out", False)),
        target_modules=module_regex(modules),
        modules_to_save=[PROJECTOR_MODULE] if projector else None,
        task_type="CAUSAL_LM", base_model_name_or_path=TARGET_MODEL, inference_mode=True,
    )
    config.save_pretrained(str(out))
    save_file({**lora, **projector}, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})


# ---------------------------------------------------------------------------------- experts
def swinv2_config(state: dict[str, Any], overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The timm options of a SwinV2 state dict (widths, depths, heads, classes read from the shapes)."""
    try:
        embed_dim, _, patch, _ = state["patch_embed.proj.weight"].shape
        num_classes = state["head.fc.weight"].shape[0]
    except KeyError as err:
        raise ConversionError(f"the blending expert is not a timm SwinV2 state dict (no {err.args[0]})") from None
    depths, heads = [], []
    i = 0
    while any(k.startswith(f"layers.{i}.") for k in state):
        blocks = {int(k.split(".")[3]) for k in state if k.startswith(f"layers.{i}.blocks.")}
        depths.append(len(blocks))
        heads.append(int(state[f"layers.{i}.blocks.0.attn.logit_scale"].shape[0]))
        i += 1
    kwargs = {"embed_dim": int(embed_dim), "patch_size": int(patch), "depths": tuple(depths), "num_heads": tuple(heads)}
    base = {"embed_dim": 128, "patch_size": 4, "depths": (2, 2, 18, 2), "num_heads": (4, 8, 16, 32)}
    kwargs = {k: v for k, v in kwargs.items() if base.get(k) != v}  # the release's own shape needs no override
    kwargs.update(overrides or {})
    return {"model_name": "swinv2_base_window16_256", "model_kwargs": kwargs, "num_classes": int(num_classes),
            "image_size": int(kwargs.get("img_size", 256))}


def convert_blend(path: Path, out: Path, overrides: dict[str, Any] | None = None, state: dict | None = None) -> Path:
    from x2dfd.experts.swinv2 import DERIVED_BUFFERS, SwinV2Expert

    state = load_tensors(path) if state is None else state
    cfg = swinv2_config(state, overrides)
    expert = SwinV2Expert.from_config(cfg)
    _load_checked(expert.model, state, path, DERIVED_BUFFERS)
    return expert.save(out / BLEND_FILE, source={"file": path.name, "sha256": sha256_file(path),
                                                 "format": "timm swinv2 state dict (X2-DFD src/blending)"})


def grip_config(state: dict[str, Any], yaml_path: Path | None) -> dict[str, Any]:
    if "fc.weight" not in state or "conv1.weight" not in state:
        raise ConversionError("the diffusion expert is not a ResNet state dict with torchvision names (conv1, fc)")
    layers = []
    while any(k.startswith(f"layer{len(layers) + 1}.") for k in state):
        prefix = f"layer{len(layers) + 1}."
        layers.append(len({k.split(".")[1] for k in state if k.startswith(prefix)}))
    if "layer1.0.conv3.weight" not in state:
        raise ConversionError("the diffusion expert is not a bottleneck ResNet (ResNet-50 family): no layer1.0.conv3")
    cfg: dict[str, Any] = {"arch": "resnet50", "layers": layers, "num_classes": int(state["fc.weight"].shape[0]),
                           "stride0": 2}
    if yaml_path is not None:
        import yaml

        try:
            meta = yaml.safe_load(yaml_path.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as err:
            raise ConversionError(f"cannot read '{yaml_path}': {one_line(str(err))}") from None
        arch = str(meta.get("arch", "")).lower()
        if "nodown" in arch:
            cfg["stride0"] = 1
        if str(meta.get("norm_type", "resnet")).lower() == "clip":
            cfg["mean"], cfg["std"] = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]
        size = meta.get("patch_size")
        if size == "Clip224":
            cfg["resize"], cfg["center_crop"] = 224, 224
        elif isinstance(size, int) and size > 0:
            cfg["center_crop"] = size
        elif isinstance(size, (list, tuple)) and size:
            cfg["resize"], cfg["center_crop"] = int(size[0]), int(size[0])
    return cfg


def convert_diffusion(path: Path, out: Path, state: dict | None = None) -> Path:
    from x2dfd.experts.grip import GripExpert

    state = load_tensors(path) if state is None else state
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    yaml_path = next((p for p in (path.parent / "config.yaml", path.parent / "config.yml") if p.is_file()), None)
    expert = GripExpert.from_config(grip_config(state, yaml_path))
    _load_checked(expert.model, state, path, ("num_batches_tracked",))
    return expert.save(out / DIFFUSION_FILE, source={"file": path.name, "sha256": sha256_file(path),
                                                     "config_yaml": yaml_path.name if yaml_path else None,
                                                     "format": "ResNet state dict, torchvision names (X2-DFD src/diffusion)"})


def _load_checked(model, state: dict[str, Any], path: Path, ignore: tuple[str, ...]) -> None:
    own = model.state_dict()
    state = {k: v for k, v in state.items() if not any(s in k for s in ignore)}
    missing = [k for k in own if k not in state and not any(s in k for s in ignore)]
    unexpected = [k for k in state if k not in own]
    bad = [k for k in state if k in own and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or bad:
        raise ConversionError(f"'{path.name}' does not match the expected architecture: missing {missing[:3]}, "
                              f"unexpected {unexpected[:3]}, other shapes {bad[:3]}")
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=False)


# ---------------------------------------------------------------------------------- the release folder
WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors", ".ckpt")
LLAVA_FILES = ("adapter_model.bin", "adapter_model.safetensors", "non_lora_trainables.bin")


def find_blend(src: Path) -> Path | None:
    found = sorted(src.rglob("best_gf.pth")) or sorted(
        p for p in src.rglob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES and "blend" in str(p.relative_to(src)).lower())
    return found[0] if found else None


def find_diffusion(src: Path) -> Path | None:
    words = ("diffusion", "grip", "aligner")
    found = sorted(p for p in src.rglob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES
                   and p.name not in LLAVA_FILES and any(w in str(p.relative_to(src)).lower() for w in words))
    return found[0] if found else None


def convert_x2dfd_release(src: str | Path, out: str | Path, blend: str | None = None, diffusion: str | None = None,
                          vocab: int = TARGET_VOCAB, swinv2_overrides: dict[str, Any] | None = None,
                          force: bool = False, log=print) -> Path:
    """Convert an X2-DFD release folder (see the module docstring); returns the output folder."""
    from x2dfd.presets import builtin_preset, write_folder_preset

    src, out = Path(src).expanduser(), Path(out).expanduser()
    if not src.is_dir():
        raise ConversionError(f"'{src}' is not a folder (give the X2-DFD release folder)")
    cfg_path = src / "adapter_config.json"
    if not cfg_path.is_file():
        raise ConversionError(f"'{src}' has no adapter_config.json: not an X2-DFD (LLaVA LoRA) release folder")
    weights = next((p for p in (src / "adapter_model.safetensors", src / "adapter_model.bin") if p.is_file()), None)
    if weights is None:
        raise ConversionError(f"'{src}' has adapter_config.json but no adapter_model.bin / adapter_model.safetensors")
    if out.exists() and any(out.iterdir()) and not force:
        raise ConversionError(f"--out '{out}' exists and is not empty (pass --force to write into it)")
    try:
        release_cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise ConversionError(f"'{cfg_path}' is not valid JSON: {err}") from None
    if "r" not in release_cfg:
        raise ConversionError(f"'{cfg_path}' has no LoRA rank 'r'")
    # read everything (refusing any unsafe pickle) before writing anything
    lora, modules = convert_lora(load_tensors(weights), vocab)
    trainables = src / "non_lora_trainables.bin"
    projector = convert_projector(load_tensors(trainables)) if trainables.is_file() else {}
    blend_path = Path(blend).expanduser() if blend else find_blend(src)
    diffusion_path = Path(diffusion).expanduser() if diffusion else find_diffusion(src)
    for flag, p in (("--blend", blend_path if blend else None), ("--diffusion", diffusion_path if diffusion else None)):
        if p is not None and not p.is_file():
            raise ConversionError(f"{flag} '{p}': no such file")
    states = {p: load_tensors(p) for p in (blend_path, diffusion_path) if p is not None}
    out.mkdir(parents=True, exist_ok=True)
    write_adapter(out, release_cfg, lora, modules, projector)
    log(f"LoRA: {len(modules)} modules, r={release_cfg['r']}, alpha={release_cfg.get('lora_alpha')}"
        + (", projector (non_lora_trainables.bin) as modules_to_save" if projector else
           "; no non_lora_trainables.bin: the base model's projector stays"))

    preset = builtin_preset("x2dfd-release")
    experts = []
    record: dict[str, Any] = {"format": "x2dfd-release", "source": str(src),
                              "files": {weights.name: sha256_file(weights)}}
    if projector:
        record["files"][trainables.name] = sha256_file(trainables)
    for entry, path, convert, fname in (
        (preset.experts[0], blend_path, lambda p: convert_blend(p, out, swinv2_overrides, states[p]), BLEND_FILE),
        (preset.experts[1], diffusion_path, lambda p: convert_diffusion(p, out, states[p]), DIFFUSION_FILE),
    ):
        entry = dict(entry)
        if path is None:
            entry["weights"], entry["absent"] = None, f"the release folder has no {entry['word']} expert weights"
            log(f"{entry['word']} expert: not in the release folder; converted without it (its score is written "
                f"'{preset.missing_score}' in the prompt)")
        else:
            convert(path)
            entry["weights"] = fname
            record["files"][str(path.relative_to(src)) if path.is_relative_to(src) else str(path)] = sha256_file(path)
            log(f"{entry['word']} expert: {path.name} -> {fname}")
        experts.append(entry)
    if all(e.get("absent") for e in experts):
        log("no expert files in the release folder: converted the LoRA alone")
    preset.experts = experts
    preset.folder = out
    write_folder_preset(preset, out, converted_from=record)
    log(f"wrote {out} (use: x2dfd explain INPUT --model BASE --adapter {out})")
    return out


# ---------------------------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="x2dfd convert", description=(
        "Convert a published detector's release folder into x2dfd files: a peft adapter for llava-hf, experts as "
        "safetensors, and preset.json (the prompt format the release was trained with)."))
    p.add_argument("format", choices=FORMATS, help="release format: x2dfd-release (the official X2-DFD checkpoint)")
    p.add_argument("src", help="the release folder (adapter_config.json, adapter_model.bin, non_lora_trainables.bin, "
                               "best_gf.pth, the diffusion expert)")
    p.add_argument("--out", required=True, help="output folder (then: x2dfd explain --adapter OUT)")
    p.add_argument("--blend", help="the blending expert's .pth (default: best_gf.pth found under SRC)")
    p.add_argument("--diffusion", help="the diffusion expert's .pth (default: a weights file under SRC whose path names "
                                       "diffusion, grip or aligner)")
    p.add_argument("--vocab-size", type=int, default=TARGET_VOCAB,
                   help=f"rows of the target model's embeddings / lm_head (llava-1.5-7b-hf: {TARGET_VOCAB})")
    p.add_argument("--swinv2-options", default=None, metavar="JSON",
                   help='timm options of the blending SwinV2 that its weights do not show, e.g. \'{"img_size": 256, '
                        '"window_size": 16}\' (default: swinv2_base_window16_256)')
    p.add_argument("--force", action="store_true", help="write into a non-empty --out")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    overrides = None
    if args.swinv2_options:
        try:
            overrides = json.loads(args.swinv2_options)
        except ValueError as err:
            raise UsageError(f"--swinv2-options is not JSON: {err}") from None
    convert_x2dfd_release(args.src, args.out, blend=args.blend, diffusion=args.diffusion, vocab=args.vocab_size,
                          swinv2_overrides=overrides, force=args.force,
                          log=lambda m: print(f"x2dfd convert: {m}", file=sys.stderr))
    return 0
