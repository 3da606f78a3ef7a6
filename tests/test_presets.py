"""Presets: golden prompt strings, where a preset comes from, and that the default behaviour is unchanged."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from PIL import Image

from x2dfd.errors import ModelNotFoundError, UsageError
from x2dfd.modelargs import DEFAULT_MODEL, MLLMOptions
from x2dfd.presets import (BUILTIN_PRESETS, attach_preset, builtin_preset, prepare_options, preset_expert_specs,
                           resolve_preset)

LLAVA_V1_SYSTEM = ("A chat between a curious human and an artificial intelligence assistant. "
                   "The assistant gives helpful, detailed, and polite answers to the human's questions.")
VICUNA_V1_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
                    "The assistant gives helpful, detailed, and polite answers to the user's questions.")


def test_golden_x2dfd_release():
    p = builtin_preset("x2dfd-release")
    assert p.checkpoint == DEFAULT_MODEL
    q = p.render_question({"swinv2": 0.81249, "grip": 0.0153})
    assert q == "Is this image real or fake? And the blending score is 0.812, and the diffusion score is 0.015."
    assert p.render_question({"swinv2": None}) == (
        "Is this image real or fake? And the blending score is N/A, and the diffusion score is N/A.")
    assert p.render_prompt(q) == (
        f"{LLAVA_V1_SYSTEM} USER: <image>\n"
        "Is this image real or fake? And the blending score is 0.812, and the diffusion score is 0.015. "
        "ASSISTANT: This image is")
    assert p.render_prompt("Q?", answer_prefix="") == f"{LLAVA_V1_SYSTEM} USER: <image>\nQ? ASSISTANT:"
    one = builtin_preset("x2dfd-release")
    one.experts = one.experts[:1]
    assert one.render_question({"swinv2": 1.0}) == "Is this image real or fake? And the blending score is 1.000."
    one.experts = []
    assert one.render_question({}) == "Is this image real or fake?"


def test_golden_fakevlm():
    p = builtin_preset("fakevlm")
    assert p.checkpoint == "lingcco/fakeVLM" and p.experts == []
    assert p.render_prompt(p.render_question({})) == (
        f"{VICUNA_V1_SYSTEM} USER: <image>\nDoes the image look real/fake? ASSISTANT: This is a")


def test_every_builtin_cites_or_says_unverified():
    for name in BUILTIN_PRESETS:
        p = builtin_preset(name)
        assert p.sources, name
        for what, src in p.sources.items():
            assert src["status"] in ("verified", "unverified"), (name, what)
            assert src.get("where") or src.get("based_on"), (name, what)
    x2dfd = builtin_preset("x2dfd")
    assert not x2dfd.changes_prompt() and x2dfd.expert_specs() == ["blend"]


def test_resolution_order(tmp_path):
    assert resolve_preset(MLLMOptions()) is None  # the default: no preset, nothing changes
    assert resolve_preset(MLLMOptions(preset="fakevlm")).name == "fakevlm"
    folder = tmp_path / "adapter"
    folder.mkdir()
    data = builtin_preset("x2dfd-release").to_dict()
    data["experts"][0]["weights"] = "swinv2_blending.safetensors"
    (folder / "preset.json").write_text(json.dumps(data))
    found = resolve_preset(MLLMOptions(adapter=str(folder)))
    assert found.name == "x2dfd-release" and found.folder == folder
    assert found.expert_specs() == [f"swinv2={folder / 'swinv2_blending.safetensors'}", "grip"]
    # the same built-in name takes the folder's file (its weights); another name wins over the folder
    assert resolve_preset(MLLMOptions(adapter=str(folder), preset="x2dfd-release")).folder == folder
    assert resolve_preset(MLLMOptions(adapter=str(folder), preset="x2dfd")).name == "x2dfd"
    assert resolve_preset(MLLMOptions(preset=str(folder / "preset.json"))).name == "x2dfd-release"
    with pytest.raises(UsageError, match="unknown preset 'nope'"):
        resolve_preset(MLLMOptions(preset="nope"))
    (folder / "preset.json").write_text("{not json")
    with pytest.raises(UsageError, match="not valid JSON"):
        resolve_preset(MLLMOptions(adapter=str(folder)))


def test_checkpoint_only_replaces_the_default_model():
    opts, preset = prepare_options(MLLMOptions(preset="fakevlm"))
    assert preset.name == "fakevlm" and opts.model == "lingcco/fakeVLM"
    opts, _ = prepare_options(MLLMOptions(preset="fakevlm", model="org/other"))
    assert opts.model == "org/other"
    original = MLLMOptions(preset="fakevlm")
    prepare_options(original)
    assert original.model == DEFAULT_MODEL  # the caller's options are not changed


def test_preset_experts_without_weights_say_how_to_get_them():
    specs = preset_expert_specs(SimpleNamespace(preset="x2dfd-release", adapter=None, model=DEFAULT_MODEL))
    assert specs == ["swinv2", "grip"]
    from x2dfd.experts import load_expert

    with pytest.raises(ModelNotFoundError, match="x2dfd convert x2dfd-release"):
        load_expert("swinv2")
    assert preset_expert_specs(SimpleNamespace(preset=None, adapter=None, model=DEFAULT_MODEL)) is None


def test_llava_v1_template_needs_a_llava_processor():
    mllm = SimpleNamespace(processor=SimpleNamespace(image_token="<|image_pad|>"), options=SimpleNamespace(model="qwen"))
    with pytest.raises(UsageError, match="LLaVA-1.5 checkpoint"):
        attach_preset(mllm, builtin_preset("x2dfd-release"))


def test_real_tokenizer_and_default_unchanged(tiny_llava):
    """With llava-1.5's real tokenizer: the default prompt is the checkpoint's own; a preset's prompt and its verdict
    tokens are the ones the release was trained on (' real' / ' fake' after 'ASSISTANT: This image is')."""
    from x2dfd.mllm import MLLM, load_mllm

    default = load_mllm(MLLMOptions(model=str(tiny_llava), device="cpu"))
    assert default.preset is None and "build_prompt" not in vars(default)
    assert default.build_prompt("Q?") == MLLM.build_prompt(default, "Q?")
    same = load_mllm(MLLMOptions(model=str(tiny_llava), device="cpu", preset="x2dfd"))
    assert same.preset.name == "x2dfd" and same.build_prompt("Q?") == default.build_prompt("Q?")
    assert (same.real_id, same.fake_id) == (default.real_id, default.fake_id)

    release = load_mllm(MLLMOptions(model=str(tiny_llava), device="cpu", preset="x2dfd-release"))
    prompt = release.build_prompt("Is this image real or fake?")
    assert prompt == f"{LLAVA_V1_SYSTEM} USER: <image>\nIs this image real or fake? ASSISTANT: This image is"
    tok = release.tokenizer
    assert tok.convert_ids_to_tokens([release.real_id, release.fake_id]) == ["▁real", "▁fake"]
    ids = release.encode([Image.new("RGB", (40, 40))], [prompt])["input_ids"][0].tolist()
    assert ids.count(release.model.config.image_token_id) == 576
    assert tok.convert_ids_to_tokens(ids[-4:]) == [":", "▁This", "▁image", "▁is"]

    fakevlm = load_mllm(MLLMOptions(model=str(tiny_llava), device="cpu", preset="fakevlm"))
    assert fakevlm.options.model == str(tiny_llava)
    [j] = fakevlm.judge([Image.new("RGB", (40, 40))], ["Does the image look real/fake?"],
                        max_new_tokens=2)
    assert j.explanation.startswith("This is a")


def test_training_record_comparison(tmp_path):
    """An adapter's record of its experts against a run's: names, order, prompt words, sha256 (where recorded)."""
    from x2dfd.presets import compare_with_record, describe_experts, training_record, write_training_record

    blend = {"name": "blend", "word": "blending", "weights": None, "weights_file": "/x/b.safetensors",
             "sha256": "a" * 64, "shipped": True}
    hf = {"name": "hf", "word": "classifier", "weights": "org/m", "weights_file": None, "sha256": None, "shipped": False}
    write_training_record(tmp_path, [blend, hf], "explain.jinja@12345678", checkpoint="base")
    assert training_record(MLLMOptions(model="base", adapter=str(tmp_path))) is not None
    assert training_record(MLLMOptions()) is None
    record = training_record(MLLMOptions(adapter=str(tmp_path)))
    assert record.expert_specs() == ["blend", "hf=org/m"] and record.data["template_version"] == "explain.jinja@12345678"
    assert describe_experts([blend, hf]) == "[blend (shipped, sha256 aaaaaaaaaaaa), hf=org/m]"
    assert compare_with_record(record, [dict(blend), dict(hf, sha256="c" * 64)])["status"] == "match"
    for used in ([hf, blend], [blend], [dict(blend, sha256="b" * 64), hf], [blend, dict(hf, word="other")], []):
        with pytest.raises(UsageError, match="--allow-expert-mismatch") as err:
            compare_with_record(record, used)
        assert "\n" not in str(err.value)
        assert compare_with_record(record, used, allow=True)["status"] == "mismatch allowed by --allow-expert-mismatch"
    # a folder preset from elsewhere (x2dfd convert) is no training record: nothing is enforced
    (tmp_path / "preset.json").write_text(json.dumps(builtin_preset("x2dfd-release").to_dict()))
    assert training_record(MLLMOptions(adapter=str(tmp_path))) is None
