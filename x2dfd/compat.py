"""Where transformers and peft versions differ, the one place that adapts (so no caller uses a deprecated name).

Supported: transformers >= 5.17, < 5.40 (pyproject.toml); the versions CI tests are in constraints.txt.

* KV cache keyword: transformers 5.24 renamed the forward argument and output field ``past_key_values``
  to ``cache`` (the old name warns, and goes in 5.40): :func:`cache_kwargs`, :func:`output_cache`.
* Activation checkpointing: ``gradient_checkpointing_enable`` became ``activation_checkpointing_enable``
  (the old name warns, and goes in v6): :func:`enable_activation_checkpointing`.
* peft (0.21) itself still reads the deprecated ``is_gradient_checkpointing`` property when it wraps or
  loads an adapter: :func:`peft_calls` silences exactly that message, only around those calls.
* bitsandbytes (0.50), imported by peft, logs on CPUs with AVX512-BF16 that it could not fetch an optional
  kernel from the Hugging Face hub (the ``kernels`` package is not installed; it falls back to its own CPU
  code): a line on every run that is no failure. Importing this module (``import x2dfd`` does) drops exactly
  that message.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import logging
import warnings
from collections.abc import Iterator

_BNB_CPU_KERNEL_NOTICE = "Failed to load CPU gemm_4bit_forward from kernels-community"


class _DropBnbKernelNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_BNB_CPU_KERNEL_NOTICE)


logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_DropBnbKernelNotice())

_CACHE_KEYWORD: dict[type, str] = {}


def cache_kwargs(model, cache) -> dict:
    """The forward keyword that hands a KV cache to ``model``: ``cache=`` where its forward takes it
    (transformers >= 5.24), else ``past_key_values=``; decided from the forward's signature (a peft
    wrapper is looked through), once per model class."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    key = type(base)
    if key not in _CACHE_KEYWORD:
        params = inspect.signature(base.forward).parameters
        _CACHE_KEYWORD[key] = "cache" if "cache" in params else "past_key_values"
    return {_CACHE_KEYWORD[key]: cache}


def output_cache(out):
    """The KV cache a forward returned: its ``cache`` field (transformers >= 5.24) or ``past_key_values``."""
    names = {f.name for f in dataclasses.fields(out)} if dataclasses.is_dataclass(out) else set(out.keys())
    return getattr(out, "cache" if "cache" in names else "past_key_values", None)


def enable_activation_checkpointing(model, kwargs: dict) -> None:
    """Activation (gradient) checkpointing through transformers' current name, the old one where only it exists."""
    enable = getattr(model, "activation_checkpointing_enable", None)  # transformers >= 5.24
    if enable is not None:
        enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


@contextlib.contextmanager
def peft_calls() -> Iterator[None]:
    """Around ``get_peft_model`` / ``PeftModel.from_pretrained``: peft's own read of the deprecated
    ``is_gradient_checkpointing`` property warns (peft's call, not ours); only that message is silenced."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        yield
