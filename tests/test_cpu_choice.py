"""dtype=auto on the CPU: float32 when it fits, else bfloat16 where the CPU has it natively, else 4-bit NF4;
the choice is said up front in one stderr line."""

from __future__ import annotations

import pytest

from x2dfd.mllm import CPU_HEADROOM_BYTES, GIB, MLLMOptions, choose_cpu_precision, load_mllm

LLAVA_7B = (7_063_427_072, 6_777_995_264)  # all weights, and those in quantizable linear layers (counted on meta)


@pytest.mark.parametrize(
    "ram_gib, bf16, expected",
    [
        (64, True, ("float32", None)),      # a 64 GiB machine: 7B fits in float32
        (64, False, ("float32", None)),
        (24, True, ("bfloat16", None)),     # this project's 24 GiB CPU machine (AMX): bf16, 14 GiB of weights
        (24, False, ("float32", "nf4")),    # no native bf16: NF4 with float32 compute
        (18, True, ("bfloat16", None)),
        (16, True, ("bfloat16", "nf4")),    # 14.1 GiB of bf16 weights + 3 GiB for the run do not fit
        (12, True, ("bfloat16", "nf4")),    # bf16 no longer fits: NF4 computing in bf16
        (8, False, ("float32", "nf4")),
    ],
)
def test_llava_7b_choice_by_memory_and_capability(ram_gib, bf16, expected):
    c = choose_cpu_precision(*LLAVA_7B, int(ram_gib * GIB), bf16)
    assert (c.dtype, c.quantization) == expected
    assert c.need_bytes <= c.available_bytes
    line = c.line("llava-hf/llava-1.5-7b-hf")
    assert "\n" not in line and "llava-hf/llava-1.5-7b-hf" in line and "7.06B parameters" in line


def test_memory_estimates_are_weights_plus_headroom():
    total, linear = LLAVA_7B
    assert choose_cpu_precision(total, linear, 10**12, True).need_bytes == total * 4 + CPU_HEADROOM_BYTES
    bf16 = choose_cpu_precision(total, linear, 20 * GIB, True)
    assert bf16.need_bytes == total * 2 + CPU_HEADROOM_BYTES  # 16.2 GiB
    nf4 = choose_cpu_precision(total, linear, 12 * GIB, True)
    assert 6 * GIB < nf4.need_bytes < 8 * GIB


def test_too_little_memory_still_tries_nf4_and_says_so():
    c = choose_cpu_precision(*LLAVA_7B, 4 * GIB, True)
    assert c.quantization == "nf4" and "may not fit" in c.line("m")


def test_small_model_is_float32():
    c = choose_cpu_precision(250_000_000, 200_000_000, 8 * GIB, False)
    assert (c.dtype, c.quantization) == ("float32", None) and "fit in float32" in c.reason


def test_auto_dtype_on_cpu_says_up_front_only_what_is_not_plain_float32(tiny_llava, capsys, monkeypatch):
    mllm = load_mllm(MLLMOptions(model=str(tiny_llava), device="cpu"))
    assert "x2dfd: CPU run of" not in capsys.readouterr().err  # a small model in float32: nothing to say
    assert mllm.describe()["dtype"] == "float32" and mllm.describe()["quantization"] is None
    monkeypatch.setattr("x2dfd.mllm.available_memory_bytes", lambda: 1 * GIB)  # as the 7B model on 24 GiB
    monkeypatch.setattr("x2dfd.mllm.cpu_bf16_native", lambda: True)
    monkeypatch.setattr("x2dfd.mllm.CPU_HEADROOM_BYTES", 1 * GIB - 10_000_000)
    load_mllm(MLLMOptions(model=str(tiny_llava), device="cpu"))
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("x2dfd: CPU run of")]
    assert len(lines) == 1 and "bfloat16 weights" in lines[0]
    load_mllm(MLLMOptions(model=str(tiny_llava), device="cpu", dtype="float32"))  # chosen by the user: no line
    assert "x2dfd: CPU run of" not in capsys.readouterr().err
    from x2dfd.log import quieted

    with quieted():  # --quiet, for this run only
        load_mllm(MLLMOptions(model=str(tiny_llava), device="cpu"))
    assert "x2dfd: CPU run of" not in capsys.readouterr().err
    load_mllm(MLLMOptions(model=str(tiny_llava), device="cpu"))  # and said again afterwards
    assert "x2dfd: CPU run of" in capsys.readouterr().err


def test_auto_dtype_follows_the_choice(tiny_llava, capsys, monkeypatch):
    pytest.importorskip("bitsandbytes")
    import bitsandbytes as bnb
    import torch

    monkeypatch.setattr("x2dfd.mllm.available_memory_bytes", lambda: 1 * GIB)  # nothing fits in float32
    monkeypatch.setattr("x2dfd.mllm.cpu_bf16_native", lambda: True)
    monkeypatch.setattr("x2dfd.mllm.CPU_HEADROOM_BYTES", 1 * GIB - 10_000_000)  # leaves room for bf16 only
    mllm = load_mllm(MLLMOptions(model=str(tiny_llava), device="cpu"))
    assert mllm.dtype == torch.bfloat16 and "bfloat16 weights" in capsys.readouterr().err
    monkeypatch.setattr("x2dfd.mllm.CPU_HEADROOM_BYTES", 2 * GIB)
    mllm = load_mllm(MLLMOptions(model=str(tiny_llava), device="cpu"))
    assert "4-bit NF4 weights (bfloat16 compute)" in capsys.readouterr().err
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in mllm.model.modules())
    assert mllm.describe()["quantization"] == "4bit"
    [j] = mllm.judge([__import__("PIL.Image", fromlist=["Image"]).new("RGB", (64, 64), "gray")], ["Real or fake?"],
                     max_new_tokens=1)
    assert 0.0 <= j.p_fake <= 1.0
