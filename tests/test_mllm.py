"""MLLM runtime: loading, prompts (golden strings), P(fake) from the verdict logits, explanation, errors."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from x2dfd import prompts
from x2dfd.errors import ModelNotFoundError, UsageError
from x2dfd.mllm import MLLMOptions, load_mllm, resolve_checkpoint, resolve_device, resolve_dtype

QUESTION = prompts.render_template("explain.jinja", experts=[{"prompt_name": "blending", "score": "0.873"}])


def _faces(n: int = 3) -> list[Image.Image]:
    """Deterministic, distinct test images (content matters only in that they differ)."""
    g = torch.Generator().manual_seed(0)
    return [Image.fromarray((torch.rand(120, 100 + 10 * i, 3, generator=g) * 255).byte().numpy()) for i in range(n)]


def _independent_p_fake(model, processor, image, prompt: str, real_id: int, fake_id: int) -> float:
    """P(fake) straight from the processor and one plain forward: no x2dfd code involved."""
    inputs = processor(images=image, text=prompt, return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs).logits[0, -1].double()
    return torch.softmax(torch.stack([logits[real_id], logits[fake_id]]), 0)[1].item()


def test_question_template_golden():
    assert QUESTION == (
        "Is this face image real or fake? External detectors report that the blending score is 0.873 "
        "(scores near 1 suggest a forgery). Answer with \"This image is real.\" or \"This image is fake.\" and "
        "explain which visual evidence in the face supports the answer."
    )
    bare = prompts.render_template("explain.jinja", experts=[])
    assert "score" not in bare and bare.startswith("Is this face image real or fake? Answer with")
    na = prompts.render_template("explain.jinja", experts=[{"prompt_name": "blending", "score": prompts.format_expert_score(None)}])
    assert "the blending score is N/A" in na
    assert prompts.format_expert_score(0.87349) == "0.873"
    assert prompts.template_version("explain.jinja").startswith("explain.jinja@")


def test_llava_prompt_and_tokens_are_the_real_ones(tiny_llava):
    mllm = load_mllm(MLLMOptions(model=str(tiny_llava)))
    assert mllm.build_prompt(QUESTION) == f"USER: <image>\n{QUESTION} ASSISTANT: This image is"
    tok = mllm.tokenizer
    assert tok.convert_ids_to_tokens([mllm.real_id, mllm.fake_id]) == ["▁real", "▁fake"]
    inputs = mllm.encode(_faces(1), [mllm.build_prompt(QUESTION)])
    assert int((inputs["input_ids"] == mllm.model.config.image_token_id).sum()) == 576  # 24x24 patches of 14 px
    assert inputs["pixel_values"].shape[-2:] == (336, 336)


@pytest.mark.parametrize("fixture", ["tiny_llava", "tiny_smolvlm", "tiny_qwen2vl", "selfcontained_llava"])
def test_p_fake_is_softmax_of_verdict_logits(fixture, request):
    ckpt = request.getfixturevalue(fixture)
    mllm = load_mllm(MLLMOptions(model=str(ckpt)))
    images = _faces(3)
    results = mllm.judge(images, [QUESTION] * 3, max_new_tokens=4)
    prompt = mllm.build_prompt(QUESTION)
    for image, j in zip(images, results):
        assert 0.0 <= j.p_fake <= 1.0
        expected = _independent_p_fake(mllm.model, mllm.processor, [image], prompt, mllm.real_id, mllm.fake_id)
        assert j.p_fake == pytest.approx(expected, abs=1e-5)  # batched + left-padded == single, unpadded
        assert j.p_fake == pytest.approx(torch.sigmoid(torch.tensor(j.logit_fake - j.logit_real)).item(), abs=1e-6)
        assert j.explanation.startswith("This image is")
        assert 1 <= j.new_tokens <= 4
        assert set(j.timings) == {"prompt", "prefill", "generate"}
    assert len({round(j.p_fake, 6) for j in results}) > 1  # different images, different answers


@pytest.mark.parametrize("fixture", ["tiny_llava", "tiny_smolvlm", "tiny_qwen2vl"])
def test_static_cache_gives_the_same_verdicts_and_text(fixture, request):
    """--static-cache (a preallocated KV cache; compiled decode steps on CUDA) changes speed only: the same
    p_fake and, token for token, the same explanation as the default dynamic cache, on the real architectures."""
    ckpt = request.getfixturevalue(fixture)
    dynamic = load_mllm(MLLMOptions(model=str(ckpt)))
    static = load_mllm(MLLMOptions(model=str(ckpt), static_cache=True))
    images = _faces(3)
    a = dynamic.judge(images, [QUESTION] * 3, max_new_tokens=6)
    b = static.judge(images, [QUESTION] * 3, max_new_tokens=6)
    for x, y in zip(a, b):
        assert y.p_fake == pytest.approx(x.p_fake, abs=1e-5)
        assert (y.explanation, y.new_tokens) == (x.explanation, x.new_tokens)


def test_verdict_only_generates_no_text(selfcontained_llava):
    mllm = load_mllm(MLLMOptions(model=str(selfcontained_llava)))
    [j] = mllm.judge(_faces(1), [QUESTION], max_new_tokens=0)
    assert j.explanation is None and j.new_tokens == 0 and 0 < j.p_fake < 1


def test_device_and_dtype_resolution():
    cpu = resolve_device("auto") if not torch.cuda.is_available() else torch.device("cpu")
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("bfloat16", cpu) == torch.bfloat16
    with pytest.raises(UsageError, match="not a device"):
        resolve_device("tpu:9x")
    with pytest.raises(UsageError, match="exclude each other"):
        MLLMOptions(load_in_4bit=True, load_in_8bit=True)


def test_bfloat16_override_on_cpu(selfcontained_llava):
    mllm = load_mllm(MLLMOptions(model=str(selfcontained_llava), dtype="bfloat16"))
    assert mllm.dtype == torch.bfloat16
    [j] = mllm.judge(_faces(1), [QUESTION], max_new_tokens=1)
    assert 0.0 <= j.p_fake <= 1.0


def test_missing_local_dir_is_one_line(tmp_path):
    with pytest.raises(ModelNotFoundError) as err:
        resolve_checkpoint(str(tmp_path / "nope"))
    assert "no such directory" in str(err.value) and "\n" not in str(err.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        resolve_checkpoint(str(tmp_path / "empty"))


def test_unreachable_hub_id_names_id_cache_and_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(ModelNotFoundError) as err:
        resolve_checkpoint("llava-hf/llava-1.5-7b-hf")
    msg = str(err.value)
    assert "llava-hf/llava-1.5-7b-hf" in msg and "--model DIR" in msg and str(tmp_path / "hub") in msg
    assert "\n" not in msg
    # HF_HUB_OFFLINE is named as the cause (the hub was never tried), and the default model's error
    # offers what works right away: expert-only verdicts
    assert "HF_HUB_OFFLINE is set" in msg and "is unreachable" not in msg
    assert "--mllm none" in msg


def test_unreachable_hub_without_offline_flag_says_unreachable(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr("x2dfd.mllm._hub_reachable", lambda timeout=3.0: False)
    with pytest.raises(ModelNotFoundError) as err:
        resolve_checkpoint("llava-hf/llava-1.5-7b-hf")
    msg = str(err.value)
    assert "is unreachable" in msg and "HF_HUB_OFFLINE" not in msg and "--mllm none" in msg and "\n" not in msg
    with pytest.raises(ModelNotFoundError) as err:  # another model: --mllm none is not offered as its substitute
        resolve_checkpoint("someone/other-vlm")
    assert "unreachable" in str(err.value) and "--mllm none" not in str(err.value)


def test_4bit_qlora_path_on_cpu(tiny_llava):
    pytest.importorskip("bitsandbytes")
    import bitsandbytes as bnb

    mllm = load_mllm(MLLMOptions(model=str(tiny_llava), load_in_4bit=True))
    quantized = [m for m in mllm.model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert quantized, "no layer was quantized"
    assert mllm.describe()["quantization"] == "4bit"
    full = load_mllm(MLLMOptions(model=str(tiny_llava)))
    images = _faces(2)
    q4 = [j.p_fake for j in mllm.judge(images, [QUESTION] * 2, max_new_tokens=1)]
    fp = [j.p_fake for j in full.judge(images, [QUESTION] * 2, max_new_tokens=1)]
    assert all(0 <= p <= 1 for p in q4)
    assert q4 == pytest.approx(fp, abs=0.1)  # NF4 perturbs, but does not scramble, a tiny model's answer


def test_lora_adapter_changes_the_answer(selfcontained_llava, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    from x2dfd.compat import peft_calls

    base = AutoModelForImageTextToText.from_pretrained(selfcontained_llava)
    with peft_calls():  # peft's own read of a property transformers deprecates
        lora = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=r".*language_model.*\.(q_proj|v_proj)",
                                               init_lora_weights=False))
    lora.save_pretrained(tmp_path / "adapter")
    cfg = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA"
    images = _faces(2)
    plain = load_mllm(MLLMOptions(model=str(selfcontained_llava)))
    adapted = load_mllm(MLLMOptions(model=str(selfcontained_llava), adapter=str(tmp_path / "adapter")))
    p0 = [j.p_fake for j in plain.judge(images, [QUESTION] * 2, max_new_tokens=0)]
    p1 = [j.p_fake for j in adapted.judge(images, [QUESTION] * 2, max_new_tokens=0)]
    assert p0 != pytest.approx(p1, abs=1e-6)
    assert adapted.describe()["adapter"] == str(tmp_path / "adapter")
    with pytest.raises(ModelNotFoundError, match="adapter_config.json"):
        load_mllm(MLLMOptions(model=str(selfcontained_llava), adapter=str(tmp_path)))


def test_bitsandbytes_cpu_kernel_notice_is_dropped_and_nothing_else(caplog):
    """bitsandbytes logs, on AVX512-BF16 CPUs, that an optional hub kernel could not be fetched (it falls back to
    its own CPU code): not a failure, so x2dfd drops exactly that line; its other messages still come through."""
    import logging

    import x2dfd  # noqa: F401  (installs the filter through x2dfd.compat)

    log = logging.getLogger("bitsandbytes.backends.cpu.ops")
    with caplog.at_level(logging.WARNING, logger="bitsandbytes.backends.cpu.ops"):
        log.warning("Failed to load CPU gemm_4bit_forward from kernels-community: %s. Please make sure you already "
                    "`pip install kernels` and the kernels >= 0.11.1", "No module named 'kernels'")
        log.warning("some other bitsandbytes warning")
    assert [r.getMessage() for r in caplog.records] == ["some other bitsandbytes warning"]
