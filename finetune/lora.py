"""LoRA / QLoRA on a vision-language model: the language model's linear layers, the projector in full.

    mllm = load_for_training(cfg, device)               # base checkpoint (4-bit with --load-in-4bit), as an MLLM
    parts = find_parts(mllm.model)                      # module paths: language model, projector, vision tower
    model = add_lora(mllm.model, cfg, parts)            # peft model; asserts no LoRA outside the language model
    groups = param_groups(model, cfg)                   # LoRA at --lr, projector at --projector-lr

A plain ``target_modules=["q_proj", "v_proj"]`` also hits the CLIP/SigLIP vision tower, whose attention
uses the same names. Here the targets are a regex over module PATHS rooted at the language model
(``model.language_model`` for LLaVA and Qwen2-VL, ``model.text_model`` for Idefics3/SmolVLM), found
from the model itself (``get_decoder()``), and after wrapping every LoRA layer is checked to sit under
it. The projector (``multi_modal_projector``, Qwen2-VL's ``visual.merger``, Idefics3's ``connector``)
is trained in full as a peft ``modules_to_save`` entry, so it is saved in the adapter and restored by
``PeftModel.from_pretrained`` (``x2dfd explain --adapter``). For QLoRA (X2-DFD's recipe has none) the
base is NF4 4-bit with double quantization; the projector and the output head stay unquantized (a 4-bit
weight cannot be trained), and ``prepare_model_for_kbit_training`` readies the rest.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from x2dfd.compat import enable_activation_checkpointing, peft_calls
from x2dfd.errors import ModelNotFoundError, UsageError
from x2dfd.mllm import PROJECTOR_NAMES  # one list, shared with the runtime's 4-bit loading

LANGUAGE_MODEL_NAMES = ("language_model", "text_model")
VISION_NAMES = ("vision_tower", "vision_model", "visual")


@dataclass(frozen=True)
class ModelParts:
    language_model: str  # module path, e.g. "model.language_model"
    projector: str | None  # e.g. "model.multi_modal_projector"
    vision: str | None  # e.g. "model.vision_tower"
    linear_names: tuple[str, ...]  # leaf names of the language model's linear layers


def _module_paths(model) -> dict[int, str]:
    return {id(m): name for name, m in model.named_modules()}


def find_parts(model) -> ModelParts:
    """Where the language model, projector and vision tower sit in ``model`` (a bare transformers model)."""
    paths = _module_paths(model)
    lm_path = None
    get_decoder = getattr(model, "get_decoder", None)
    if callable(get_decoder):
        try:
            lm_path = paths.get(id(get_decoder()))
        except (AttributeError, NotImplementedError):
            lm_path = None
    names = [name for name, _ in model.named_modules()]
    if not lm_path:
        lm_path = next((n for n in names if n.rsplit(".", 1)[-1] in LANGUAGE_MODEL_NAMES), None)
    if not lm_path:
        raise UsageError(f"cannot find the language model inside {type(model).__name__} (looked for "
                         f"{', '.join(LANGUAGE_MODEL_NAMES)}); LoRA needs to know which layers are the language model's")
    projector = next((n for n in names if n.rsplit(".", 1)[-1] in PROJECTOR_NAMES), None)
    vision = next((n for n in names if n.rsplit(".", 1)[-1] in VISION_NAMES), None)
    prefix = lm_path + "."
    linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules()
                     if n.startswith(prefix) and isinstance(m, torch.nn.Linear)})
    if not linear:
        raise UsageError(f"the language model '{lm_path}' of {type(model).__name__} has no linear layers for LoRA")
    return ModelParts(lm_path, projector, vision, tuple(linear))


def target_regex(parts: ModelParts, names: list[str] | None = None) -> str:
    """peft ``target_modules`` regex (full match on module paths): ``names`` (default: every linear layer
    name of the language model) under the language model only."""
    names = list(names or parts.linear_names)
    unknown = sorted(set(names) - set(parts.linear_names))
    if unknown:
        raise UsageError(f"--lora-targets: '{unknown[0]}' is not a linear layer of the language model. "
                         f"Available: {', '.join(parts.linear_names)}.")
    alternatives = "|".join(re.escape(n) for n in sorted(names))
    return rf"^{re.escape(parts.language_model)}\..*\.({alternatives})$"


def lora_config(cfg, parts: ModelParts):
    from peft import LoraConfig

    train_projector = cfg.projector_lr > 0 and parts.projector is not None
    return LoraConfig(
        r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout, bias="none",
        target_modules=target_regex(parts, cfg.lora_targets or None),
        modules_to_save=[parts.projector] if train_projector else None,
        task_type="CAUSAL_LM",
    )


def lora_modules(model) -> list[str]:
    """Paths of the modules that carry a LoRA adapter."""
    return [name for name, m in model.named_modules() if hasattr(m, "lora_A") and len(getattr(m, "lora_A", {}))]


def check_lora_scope(model, parts: ModelParts) -> list[str]:
    """Every LoRA layer sits under the language model, none in the vision tower; returns their paths."""
    found = lora_modules(model)
    if not found:
        raise UsageError("no layer received a LoRA adapter (check --lora-targets)")
    outside = [n for n in found if f".{parts.language_model}." not in f".{n}"]
    if parts.vision is not None:
        outside += [n for n in found if f".{parts.vision}." in f".{n}"]
    if outside:
        raise UsageError(f"LoRA landed outside the language model: {outside[0]} (and {len(outside) - 1} more)")
    return found


def kbit_config(cfg, dtype: torch.dtype):
    """QLoRA's quantization: the one the runtime loads with (projector and output head kept in full precision)."""
    from x2dfd.mllm import quantization_config

    return quantization_config(cfg, dtype)


def load_for_training(cfg, device: torch.device):
    """The base checkpoint and its processor as an :class:`x2dfd.mllm.MLLM` (fp32 on CPU, bf16 on GPU)."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from x2dfd.mllm import MLLM, resolve_checkpoint, resolve_dtype

    source, local_only = resolve_checkpoint(cfg.model, cfg.revision)
    dtype = resolve_dtype(cfg.dtype, device)
    common = dict(revision=cfg.revision, trust_remote_code=cfg.trust_remote_code, local_files_only=local_only)
    try:
        processor = AutoProcessor.from_pretrained(source, **common)
        model = AutoModelForImageTextToText.from_pretrained(
            source, dtype=dtype, quantization_config=kbit_config(cfg, dtype), device_map={"": str(device)}, **common)
    except ValueError as err:
        raise ModelNotFoundError(f"cannot load model '{cfg.model}' as an image-text-to-text model: {err}") from err
    except OSError as err:
        raise ModelNotFoundError(f"cannot load model '{cfg.model}': {err}") from err
    model.eval()
    keep_4bit_trainable(model)
    return MLLM(model, processor, cfg, source)


def keep_4bit_trainable(model) -> None:
    """Keep bitsandbytes 4-bit layers in training mode. On CPU, a 4-bit layer in eval mode repacks its weights
    on the first forward for a fast inference kernel that has no backward, and training the model after that
    (cue scoring or a held-out pass before training) fails. The mode changes nothing else in those layers."""
    try:
        from bitsandbytes.nn import Linear4bit
    except ImportError:
        return
    for m in model.modules():
        if isinstance(m, Linear4bit):
            m.training = True


@contextmanager
def evaluation(model):
    """``model.eval()`` for a held-out pass (dropout off), then back to the mode it was in."""
    was_training = model.training
    model.eval()
    keep_4bit_trainable(model)
    try:
        yield model
    finally:
        model.train(was_training)


def add_lora(model, cfg, parts: ModelParts):
    """Wrap ``model`` with LoRA (+ trainable projector); trainable weights in fp32, the rest frozen."""
    from peft import get_peft_model, prepare_model_for_kbit_training

    gc_kwargs = {"use_reentrant": False}
    if cfg.load_in_4bit or cfg.load_in_8bit:
        # Checkpointing is enabled below through the current API, not by peft (which calls the deprecated
        # `gradient_checkpointing_enable`); with use_reentrant=False no input-grad hook is needed.
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    if cfg.gradient_checkpointing:
        enable_activation_checkpointing(model, gc_kwargs)
    model.config.use_cache = False
    with peft_calls():
        peft_model = get_peft_model(model, lora_config(cfg, parts))
    check_lora_scope(peft_model, parts)
    for p in peft_model.parameters():
        if p.requires_grad and p.dtype != torch.float32:
            p.data = p.data.float()  # bf16 master weights would swallow 2e-5-sized updates
    return peft_model


def param_groups(model, cfg) -> list[dict]:
    """AdamW groups: LoRA weights at ``--lr``, the projector (``modules_to_save``) at ``--projector-lr``."""
    lora, projector = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (projector if "modules_to_save" in name else lora).append(p)
    groups = [{"params": lora, "lr": cfg.lr, "name": "lora"}]
    if projector:
        groups.append({"params": projector, "lr": cfg.projector_lr, "name": "projector"})
    return groups


def trainable_share(model) -> dict[str, float | int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(_numel(p) for p in model.parameters())
    return {"trainable": trainable, "total": total, "percent": round(100.0 * trainable / total, 4)}


def _numel(p) -> int:
    """Logical parameter count; a bitsandbytes 4-bit weight packs two values per byte."""
    shape = getattr(p, "quant_state", None)
    if shape is not None and getattr(shape, "shape", None) is not None:
        return int(torch.Size(shape.shape).numel())
    return p.numel()
