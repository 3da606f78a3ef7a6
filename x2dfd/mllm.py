"""The MLLM runtime: load any image-text-to-text checkpoint, prompt it, read P(fake), generate the explanation.

    mllm = load_mllm(MLLMOptions(model="llava-hf/llava-1.5-7b-hf"))      # or model="/path/to/checkpoint"
    [j] = mllm.judge([face_image], [render_question(experts)], max_new_tokens=128)
    j.p_fake, j.explanation

Everything goes through the transformers Auto classes (``AutoProcessor``,
``AutoModelForImageTextToText``), so LLaVA-1.5 (X2-DFD's base), LLaVA-NeXT/OneVision, Qwen2-VL and
Idefics3/SmolVLM load the same way. The prompt is the checkpoint's own chat template applied to a
user turn (image + question from ``prompts/``) and an assistant turn that is *continued*
("This image is"), so the next token carries the verdict.

P(fake) is read, not parsed: the softmax over the next-token logits of " real" and " fake" right
after the answer prefix (teacher-forced). The X2-DFD reference reads the 4th generated token and
stops generating at 4 tokens, so it never explains while it scores; here one ``generate`` call does
both: its first step's raw logits are exactly the prefix's next-token logits, and the explanation
continues from the same KV cache.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from PIL import Image

from x2dfd.prompts import ANSWER_PREFIX, VERDICT_WORDS
from x2dfd.errors import ModelNotFoundError, UsageError
from x2dfd.log import get_logger
from x2dfd.modelargs import DEFAULT_MODEL, DTYPE_NAMES, MLLMOptions

__all__ = ["DEFAULT_MODEL", "MLLM", "MLLMOptions", "Judgement", "load_mllm", "resolve_checkpoint", "resolve_device",
           "resolve_dtype", "apply_adapter", "CPUPrecision", "choose_cpu_precision"]

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
assert tuple(DTYPES) == DTYPE_NAMES


def resolve_device(device: str = "auto") -> torch.device:
    """``auto``: the first CUDA device if there is one, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise UsageError(f"--device '{device}' is not a device (use auto, cpu, cuda or cuda:N)") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {device}: CUDA is not available on this machine (use --device cpu)")
    return dev


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """``auto``: bfloat16 on CUDA (float16 on GPUs without bf16), float32 on CPU (where ``load_mllm``
    then picks by the model's size and the machine: :func:`choose_cpu_precision`)."""
    if dtype != "auto":
        return DTYPES[dtype]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


# ---------------------------------------------------------------------------- CPU precision (dtype auto)
GIB = 2**30
# What a run needs beside the weights: activations and KV cache of a batch of 4 at LLaVA-1.5-7B's width
# (576 image tokens + prompt + 128 new tokens: ~1.5 GiB in bf16), the processor, experts, face models and
# Python (~1 GiB measured for `x2dfd explain --mllm none`); rounded up.
CPU_HEADROOM_BYTES = 3 * GIB
NF4_BYTES_PER_PARAM = 0.5 + 1 / 64 + 4 / (64 * 256)  # 4-bit codes, an 8-bit absmax per 64 weights, an fp32 per 256 blocks


@dataclass(frozen=True)
class CPUPrecision:
    """How ``dtype=auto`` loads a model on the CPU, and why (the line printed before loading)."""

    dtype: str  # "float32" or "bfloat16": weights that stay unquantized and the compute dtype
    quantization: str | None  # None or "nf4" (bitsandbytes 4-bit)
    need_bytes: int  # estimated weights + CPU_HEADROOM_BYTES
    available_bytes: int
    reason: str

    def line(self, model: str) -> str:
        what = f"{self.dtype} weights" if self.quantization is None else f"4-bit NF4 weights ({self.dtype} compute)"
        return (f"x2dfd: CPU run of {model}: {what}, ~{self.need_bytes / GIB:.1f} GiB of "
                f"{self.available_bytes / GIB:.1f} GiB available; {self.reason} "
                "(--dtype float32/bfloat16 or --load-in-4bit choose yourself)")


def choose_cpu_precision(params: int, linear_params: int, available_bytes: int, bf16_native: bool) -> CPUPrecision:
    """``dtype=auto`` on the CPU: float32 when the model fits in float32; else bfloat16 when the CPU
    computes it natively (AVX512-BF16 / AMX) and it fits; else 4-bit NF4 (bitsandbytes, computing in
    bfloat16 where native, float32 otherwise). ``params`` counts every weight, ``linear_params`` the
    ones NF4 quantizes (linear layers outside the projector and the output head)."""
    def need(bytes_per_param: float, quantized: float | None = None) -> int:
        if quantized is None:
            return int(params * bytes_per_param) + CPU_HEADROOM_BYTES
        return int(linear_params * quantized + (params - linear_params) * bytes_per_param) + CPU_HEADROOM_BYTES

    billions = f"{params / 1e9:.2f}B parameters"
    fp32 = need(4)
    if fp32 <= available_bytes:
        return CPUPrecision("float32", None, fp32, available_bytes, f"{billions} fit in float32")
    bf16 = need(2)
    if bf16_native and bf16 <= available_bytes:
        return CPUPrecision("bfloat16", None, bf16, available_bytes,
                            f"{billions} need {fp32 / GIB:.1f} GiB in float32; this CPU has native bfloat16")
    compute = "bfloat16" if bf16_native else "float32"
    nf4 = need(2 if bf16_native else 4, NF4_BYTES_PER_PARAM)
    why = (f"{billions} need {fp32 / GIB:.1f} GiB in float32"
           + (f", {bf16 / GIB:.1f} GiB in bfloat16" if bf16_native else ", and this CPU has no native bfloat16"))
    if nf4 > available_bytes:
        why += "; even 4-bit may not fit: close other programs or use a GPU"
    return CPUPrecision(compute, "nf4", nf4, available_bytes, why)


def cpu_bf16_native() -> bool:
    """Whether the CPU computes bfloat16 natively: AVX512-BF16 or AMX-BF16 (/proc/cpuinfo flags, else
    what oneDNN reports). torch's get_cpu_capability() says only "AVX512", which does not imply it."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool({"avx512_bf16", "amx_bf16"} & flags)
    except OSError:
        pass
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def available_memory_bytes() -> int:
    """Memory this process can still use: MemAvailable, capped by a cgroup (container) limit."""
    avail = None
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    if avail is None:
        try:
            import psutil

            avail = int(psutil.virtual_memory().available)
        except ImportError:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            used = int(Path("/sys/fs/cgroup/memory.current").read_text())
            avail = min(avail, int(limit) - used)
    except (OSError, ValueError):
        pass
    return max(0, int(avail))


def count_parameters(source: str, **common) -> tuple[int, int]:
    """(all weights, weights in linear layers NF4 would quantize) of a checkpoint, from its config on the
    meta device: nothing is allocated and no weight file is read."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForImageTextToText

    config = AutoConfig.from_pretrained(source, **common)
    with init_empty_weights():
        model = AutoModelForImageTextToText.from_config(config, trust_remote_code=common.get("trust_remote_code", False))
    skip = (*PROJECTOR_NAMES, "lm_head")
    total = sum(p.numel() for p in model.parameters())
    linear = sum(m.weight.numel() for name, m in model.named_modules()
                 if isinstance(m, torch.nn.Linear) and not any(k in name.split(".") for k in skip))
    return total, linear


def _looks_like_path(model: str) -> bool:
    return model.startswith((".", "/", "~")) or model.count("/") > 1 or os.sep != "/" and os.sep in model


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").strip().lower() in ("1", "true", "yes", "on")


def _hub_reachable(timeout: float = 3.0) -> bool:
    """A TCP probe of the hub endpoint, so an offline machine fails in seconds instead of minutes of retries."""
    if _hub_offline():
        return False
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    url = urlparse(endpoint)
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout).close()
        return True
    except OSError:
        return False


def resolve_checkpoint(model: str, revision: str | None = None) -> tuple[str, bool]:
    """Return ``(source, local_files_only)`` for ``from_pretrained``, or raise a one-line ModelNotFoundError.

    Order: a local directory; a hub id already in the Hugging Face cache (works offline); a hub id
    fetched from a reachable hub.
    """
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(
                f"cannot load model '{model}': the directory has no config.json, so it is not a Hugging Face "
                "checkpoint (save one with save_pretrained, or pass the checkpoint's root folder)"
            )
        return str(path), True
    if _looks_like_path(model) or path.exists():
        raise ModelNotFoundError(f"cannot load model '{model}': no such directory (check the --model path)")
    from huggingface_hub import constants, try_to_load_from_cache

    cached = try_to_load_from_cache(model, "config.json", revision=revision)
    if isinstance(cached, str):
        return model, True
    if _hub_reachable():
        return model, False
    if _hub_offline():
        why = "HF_HUB_OFFLINE is set (unset it to let x2dfd download the checkpoint)"
    else:
        why = f"the hub ({os.environ.get('HF_ENDPOINT', 'https://huggingface.co')}) is unreachable"
    raise ModelNotFoundError(
        f"cannot load model '{model}': not a local directory, not in the Hugging Face cache "
        f"({constants.HF_HUB_CACHE}), and {why}. Fix: on a machine with hub access run "
        f"`hf download {model} --local-dir DIR`, copy DIR here and pass --model DIR"
        + ("; or run `--mllm none` now for expert-only verdicts (nothing to download)" if model == DEFAULT_MODEL else "")
    )


@dataclass
class Judgement:
    """The MLLM's answer for one image."""

    p_fake: float
    logit_real: float
    logit_fake: float
    explanation: str | None  # "This image is ..." (None when no tokens were generated)
    new_tokens: int
    timings: dict[str, float] = field(default_factory=dict)


class _StepTimer:
    """A generate() streamer used only as a clock: it is called once with the prompt, then once per step."""

    def __init__(self):
        self.stamps: list[float] = []

    def put(self, value):
        self.stamps.append(time.perf_counter())

    def end(self):
        self.stamps.append(time.perf_counter())


class MLLM:
    """A loaded checkpoint with its processor; see the module docstring."""

    def __init__(self, model, processor, options: MLLMOptions, source: str):
        self.model = model
        self.processor = processor
        self.options = options
        self.source = source
        self.device = next(p for p in model.parameters()).device
        self.dtype = model.get_input_embeddings().weight.dtype  # also the compute dtype of a quantized model
        self.tokenizer = processor.tokenizer
        self.tokenizer.padding_side = "left"  # batched generation continues every row from its last real token
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.real_id, self.fake_id = self._verdict_token_ids()

    # ----------------------------------------------------------------------------------------- prompts
    def build_prompt(self, question: str, answer_prefix: str = ANSWER_PREFIX) -> str:
        """The checkpoint's chat template over [user: image + question, assistant: answer_prefix...]."""
        messages = [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]},
            {"role": "assistant", "content": [{"type": "text", "text": answer_prefix}]},
        ]
        return self.processor.apply_chat_template(messages, tokenize=False, continue_final_message=True)

    def _verdict_token_ids(self) -> tuple[int, int]:
        """First sub-token of " real" / " fake" as they follow the answer prefix; asserted distinct (the one rule,
        :func:`x2dfd.presets.verdict_token_ids`, that presets apply to their own words)."""
        from x2dfd.presets import verdict_token_ids

        return verdict_token_ids(self.tokenizer, ANSWER_PREFIX, VERDICT_WORDS, self.options.model)

    def encode(self, images: list[Image.Image], prompts: list[str]) -> dict[str, Any]:
        """Processor inputs for a batch (left-padded), on the model's device and dtype."""
        batch = self.processor(images=[[im] for im in images], text=prompts, padding=True, return_tensors="pt")
        out = {}
        for key, value in batch.items():
            if isinstance(value, torch.Tensor):
                value = value.to(self.device)
                if value.is_floating_point():
                    value = value.to(self.dtype)
            out[key] = value
        return out

    # ----------------------------------------------------------------------------------------- inference
    def cache_options(self) -> dict[str, Any]:
        """generate() keywords of the KV cache: with --static-cache a preallocated one (no growth per step), for
        which generate() on CUDA compiles the decode step into CUDA graphs (the per-step launch overhead that
        dominates decoding goes); else generate()'s default dynamic cache."""
        return {"cache_implementation": "static"} if getattr(self.options, "static_cache", False) else {}

    @torch.inference_mode()
    def judge(self, images: list[Image.Image], questions: list[str], max_new_tokens: int = 128) -> list[Judgement]:
        """P(fake) and the explanation for each (image, question), in one batched generate() call."""
        if len(images) != len(questions):
            raise ValueError("judge(): one question per image")
        t0 = time.perf_counter()
        prompts = [self.build_prompt(q) for q in questions]
        inputs = self.encode(images, prompts)
        t_prompt = time.perf_counter() - t0
        timer = _StepTimer()
        out = self.model.generate(
            **inputs,
            max_new_tokens=max(1, max_new_tokens),
            do_sample=False,
            num_beams=1,
            output_logits=True,
            return_dict_in_generate=True,
            pad_token_id=self.tokenizer.pad_token_id,
            streamer=timer,
            **self.cache_options(),
        )
        t_end = time.perf_counter()
        # stamps: [prompt handed over, step 1 done, step 2 done, ..., end]
        prefill = (timer.stamps[1] - timer.stamps[0]) if len(timer.stamps) > 1 else t_end - t0
        generation = (t_end - timer.stamps[1]) if len(timer.stamps) > 1 else 0.0
        first = out.logits[0].float()  # raw (unprocessed) next-token logits after "This image is"
        pair = torch.stack([first[:, self.real_id], first[:, self.fake_id]], dim=-1)
        p_fake = torch.softmax(pair, dim=-1)[:, 1]
        new_ids = out.sequences[:, inputs["input_ids"].shape[1]:]
        prefix_ids = self.tokenizer(getattr(self, "answer_prefix", ANSWER_PREFIX), add_special_tokens=False).input_ids
        n = len(images)
        results = []
        for i in range(n):
            ids = new_ids[i].tolist()
            ids = [t for t in ids if t != self.tokenizer.pad_token_id]
            if self.tokenizer.eos_token_id in ids:
                ids = ids[: ids.index(self.tokenizer.eos_token_id)]
            text = None
            if max_new_tokens > 0:
                text = self.tokenizer.decode(prefix_ids + ids, skip_special_tokens=True).strip()
            results.append(
                Judgement(
                    p_fake=float(p_fake[i]),
                    logit_real=float(pair[i, 0]),
                    logit_fake=float(pair[i, 1]),
                    explanation=text,
                    new_tokens=len(ids) if max_new_tokens > 0 else 0,
                    timings={"prompt": t_prompt / n, "prefill": prefill / n, "generate": generation / n},
                )
            )
        return results

    def describe(self) -> dict[str, Any]:
        """What the records and resolved configs store about the model."""
        cfg = self.model.config
        return {
            "model": self.options.model,
            "revision": self.options.revision or getattr(cfg, "_commit_hash", None),
            "adapter": self.options.adapter,
            "architecture": type(self.model).__name__,
            "device": str(self.device),
            "dtype": str(self.dtype).replace("torch.", ""),
            "quantization": getattr(self, "quantization", None)
            or ("4bit" if self.options.load_in_4bit else "8bit" if self.options.load_in_8bit else None),
        }


# The vision-language projector of each architecture (LLaVA, Qwen2-VL, Idefics3/SmolVLM, original LLaVA).
PROJECTOR_NAMES = ("multi_modal_projector", "merger", "connector", "mm_projector")


def quantization_config(options: MLLMOptions, dtype: torch.dtype):
    """bitsandbytes settings for --load-in-4bit / --load-in-8bit, or None.

    4-bit is QLoRA's recipe (Dettmers et al. 2023): NF4 storage, double quantization, compute in the run
    dtype. The projector and the output head stay in full precision: X2-DFD trains the projector, so an
    adapter from `x2dfd finetune` carries it, and loading must leave it a plain layer to receive it.
    """
    if not (options.load_in_4bit or options.load_in_8bit):
        return None
    from transformers import BitsAndBytesConfig

    # transformers matches these from the start of a module path, as a regex, or as a suffix: ".*\.name"
    # reaches "model.multi_modal_projector.linear_1"; the plain names serve versions that match substrings.
    skip = [*PROJECTOR_NAMES, *(rf".*\.{n}" for n in PROJECTOR_NAMES), "lm_head"]
    if options.load_in_4bit:
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                  bnb_4bit_compute_dtype=dtype, llm_int8_skip_modules=skip)
    return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)


def load_mllm(options: MLLMOptions) -> MLLM:
    """Load processor + model (+ LoRA adapter) as ``options`` say; one-line errors for missing checkpoints."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from x2dfd.presets import attach_preset, prepare_options

    options, preset = prepare_options(options)  # --preset / preset.json: checkpoint, prompt format, readout
    source, local_only = resolve_checkpoint(options.model, options.revision)
    device = resolve_device(options.device)
    dtype = resolve_dtype(options.dtype, device)
    common = dict(revision=options.revision, trust_remote_code=options.trust_remote_code, local_files_only=local_only)
    quant = quantization_config(options, dtype)
    choice = None
    try:
        if device.type == "cpu" and options.dtype == "auto" and quant is None:
            choice = choose_cpu_precision(*count_parameters(source, **common), available_memory_bytes(),
                                          cpu_bf16_native())
            # Said up front when it is not plain float32 (the 7B default on a 24 GiB machine); --quiet silences it.
            plain = choice.dtype == "float32" and choice.quantization is None
            get_logger("mllm").log(logging.INFO if plain else logging.WARNING, choice.line(options.model))
            dtype = DTYPES[choice.dtype]
            if choice.quantization == "nf4":
                quant = quantization_config(MLLMOptions(load_in_4bit=True), dtype)
        processor = AutoProcessor.from_pretrained(source, **common)
        model = AutoModelForImageTextToText.from_pretrained(
            source,
            dtype=dtype,
            quantization_config=quant,
            device_map={"": str(device)},
            **common,
        )
    except ValueError as err:  # e.g. "Unrecognized configuration class ... for AutoModelForImageTextToText"
        raise ModelNotFoundError(f"cannot load model '{options.model}' as an image-text-to-text model: {err}") from err
    except OSError as err:
        raise ModelNotFoundError(f"cannot load model '{options.model}': {err}") from err
    quantized = options.load_in_4bit or options.load_in_8bit or (choice is not None and choice.quantization is not None)
    if options.adapter:
        model = apply_adapter(model, options.adapter, merge=not quantized)
    model.eval()
    mllm = MLLM(model, processor, options, source)
    if choice is not None and choice.quantization == "nf4":
        mllm.quantization = "4bit"
    return attach_preset(mllm, preset)


def apply_adapter(model, adapter_dir: str, merge: bool = True):
    """Apply a peft LoRA adapter directory; merged into the weights unless the base is quantized."""
    from peft import PeftModel

    path = Path(adapter_dir).expanduser()
    if not (path / "adapter_config.json").is_file():
        raise ModelNotFoundError(
            f"cannot load adapter '{adapter_dir}': no adapter_config.json there (pass the output dir of `x2dfd finetune`)"
        )
    from x2dfd.compat import peft_calls

    with peft_calls():
        model = PeftModel.from_pretrained(model, str(path))
    return model.merge_and_unload() if merge else model
