"""How to load an MLLM, as options with their command-line help (no torch import: ``--help`` stays fast).

Every command that loads an MLLM (explain, assess, finetune, evaluate, demo) takes these options by
inheriting :class:`MLLMOptions`; ``x2dfd.mllm.load_mllm`` reads them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from x2dfd.errors import UsageError

DEFAULT_MODEL = "llava-hf/llava-1.5-7b-hf"  # X2-DFD's base model
DTYPE_NAMES = ("float32", "bfloat16", "float16")


@dataclass
class MLLMOptions:
    """Which MLLM checkpoint to load, and how."""

    model: str = DEFAULT_MODEL
    """MLLM checkpoint: a Hugging Face hub id (fetched on first use where the hub is reachable) or a local directory."""
    revision: str | None = None
    """Hub revision (branch, tag or commit) of --model."""
    adapter: str | None = None
    """A peft LoRA adapter directory to apply (e.g. the output of `x2dfd finetune`)."""
    device: str = "auto"
    """auto (CUDA if available, else CPU), cpu, cuda or cuda:N."""
    dtype: str = field(default="auto", metadata={"choices": ["auto", *DTYPE_NAMES]})
    """auto: bfloat16 on CUDA; on CPU float32 when the model fits in memory, else bfloat16 (CPUs with AVX512-BF16/AMX) or 4-bit NF4, said on one stderr line."""
    load_in_4bit: bool = False
    """Quantize the MLLM to 4-bit NF4 with bitsandbytes (works on CPU too)."""
    load_in_8bit: bool = False
    """Quantize the MLLM to 8-bit with bitsandbytes."""
    trust_remote_code: bool = False
    """Allow the checkpoint's own Python code to run (only for checkpoints you trust)."""
    static_cache: bool = False
    """Generate explanations with a static (preallocated) KV cache; on CUDA, transformers then compiles each decode step into CUDA graphs (torch.compile; the first batch of each shape compiles for a while). Same verdicts and text; for throughput on a GPU."""
    preset: str | None = None
    """Prompt format, experts and verdict readout of a published detector: x2dfd-release, fakevlm, x2dfd, or a preset JSON file (default: a preset.json inside the adapter folder, then the model folder, if any; else x2dfd's own prompt)."""

    # A command whose data checks should speak first (assess) sets this False and calls check_model_paths itself.
    early_model_check: ClassVar[bool] = True

    def check_model_paths(self) -> None:
        """A path-looking --model/--adapter that does not exist: one line now, before torch is imported."""
        if getattr(self, "mllm", "auto") != "none":  # expert-only runs load no model: nothing to check
            check_local_path("--model", self.model, "a checkpoint directory saved with save_pretrained, or a hub id "
                             f"such as {DEFAULT_MODEL}")
            check_local_path("--adapter", self.adapter, "the --out folder of `x2dfd finetune`, or a hub id")

    def __post_init__(self):
        if self.early_model_check:
            self.check_model_paths()
        if self.load_in_4bit and self.load_in_8bit:
            raise UsageError("--load-in-4bit and --load-in-8bit exclude each other; pick one")
        if self.dtype not in ("auto", *DTYPE_NAMES):
            raise UsageError(f"--dtype '{self.dtype}' is not supported. Available: auto, {', '.join(DTYPE_NAMES)}.")


# The name the commands use for these options.
ModelArgs = MLLMOptions


def looks_like_path(value: str) -> bool:
    """A value the user meant as a local path (``./x``, ``../x``, ``/x``, ``~/x``), never a hub id."""
    return value.startswith(("./", "../", "/", "~", ".\\", "..\\")) or value in (".", "..")


def check_local_path(flag: str, value: str | None, what: str) -> None:
    """A path-looking --model/--adapter that does not exist (or is a file) fails here, in milliseconds, before
    torch and transformers are imported; hub ids and existing directories pass."""
    import os

    if not value or not looks_like_path(value):
        return
    path = os.path.expanduser(value)
    if not os.path.exists(path):
        raise UsageError(f"{flag} '{value}': no such directory; give {what}")
    if not os.path.isdir(path):
        raise UsageError(f"{flag} '{value}' is a file, not a checkpoint directory; give {what}")
