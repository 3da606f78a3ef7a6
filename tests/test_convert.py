"""`x2dfd convert x2dfd-release`: tiny checkpoints in the release's own formats, converted and checked against
an independent computation (base weights + B·A·alpha/r added by hand, projector replaced), within 1e-5.

The release format is the original LLaVA training code's (haotian-liu/LLaVA): a pickled peft state dict over
LLaVA's module names (`base_model.model.model.layers.N...`), `non_lora_trainables.bin` with the projector
(`model.mm_projector.{0,2}`), a timm SwinV2 `best_gf.pth` and a torchvision-named ResNet `.pth`, all written
here with `torch.save` at the tiny LLaVA's shapes (tests/conftest.py).
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from x2dfd.convert import convert_x2dfd_release, map_module_path

R, ALPHA = 4, 8
ORIG_VOCAB = 32000  # original LLaVA-1.5; llava-hf pads to 32064
LINEARS = {"self_attn": ("q_proj", "k_proj", "v_proj", "o_proj"), "mlp": ("gate_proj", "up_proj", "down_proj")}


def _face(seed: int = 0, size: int = 96) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8))


def _tiny_swinv2():
    import timm

    torch.manual_seed(1)
    return timm.create_model("swinv2_base_window16_256", pretrained=False, num_classes=2, embed_dim=8,
                             depths=(1, 1), num_heads=(1, 2)).eval()


def _tiny_resnet(num_classes: int = 1):
    from torchvision.models.resnet import Bottleneck, ResNet

    torch.manual_seed(2)
    model = ResNet(Bottleneck, [1, 1, 1, 1], num_classes=num_classes).eval()
    for m in model.modules():  # non-trivial BN statistics, so eval-mode numbers differ from a fresh net
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return model


def make_release(folder: Path, base_dir: Path, experts: bool = True) -> dict:
    """A release folder in X2-DFD's format at the tiny LLaVA's shapes; returns the tensors written."""
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(base_dir)
    text, vision = cfg.text_config, cfg.vision_config
    h, inter = text.hidden_size, text.intermediate_size
    shapes = {"q_proj": (h, h), "k_proj": (h, h), "v_proj": (h, h), "o_proj": (h, h),
              "gate_proj": (inter, h), "up_proj": (inter, h), "down_proj": (h, inter)}
    g = torch.Generator().manual_seed(3)
    lora = {}
    for layer in range(text.num_hidden_layers):
        for block, names in LINEARS.items():
            for name in names:
                out_f, in_f = shapes[name]
                key = f"base_model.model.model.layers.{layer}.{block}.{name}"
                lora[f"{key}.lora_A.weight"] = torch.randn(R, in_f, generator=g) * 0.2
                lora[f"{key}.lora_B.weight"] = torch.randn(out_f, R, generator=g) * 0.2
    lora["base_model.model.lm_head.lora_A.weight"] = torch.randn(R, h, generator=g) * 0.2
    lora["base_model.model.lm_head.lora_B.weight"] = torch.randn(ORIG_VOCAB, R, generator=g) * 0.2
    projector = {
        "base_model.model.model.mm_projector.0.weight": torch.randn(h, vision.hidden_size, generator=g) * 0.1,
        "base_model.model.model.mm_projector.0.bias": torch.randn(h, generator=g) * 0.1,
        "base_model.model.model.mm_projector.2.weight": torch.randn(h, h, generator=g) * 0.1,
        "base_model.model.model.mm_projector.2.bias": torch.randn(h, generator=g) * 0.1,
    }
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "r": R, "lora_alpha": ALPHA, "lora_dropout": 0.05, "bias": "none", "task_type": "CAUSAL_LM",
        "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        "base_model_name_or_path": "liuhaotian/llava-v1.5-7b"}))
    torch.save(lora, folder / "adapter_model.bin")
    torch.save(projector, folder / "non_lora_trainables.bin")
    out = {"lora": lora, "projector": projector}
    if experts:
        swin, resnet = _tiny_swinv2(), _tiny_resnet()
        # DataParallel names, as the release's own loader expects them
        torch.save({f"module.{k}": v for k, v in swin.state_dict().items()}, folder / "best_gf.pth")
        (folder / "diffusion").mkdir()
        torch.save(resnet.state_dict(), folder / "diffusion" / "model_epoch_best.pth")
        out.update(swin=swin, resnet=resnet)
    return out


@pytest.fixture(scope="module")
def converted(tmp_path_factory, tiny_llava):
    root = tmp_path_factory.mktemp("release")
    tensors = make_release(root / "release", tiny_llava)
    out = convert_x2dfd_release(root / "release", root / "converted", log=lambda m: None)
    return tiny_llava, out, tensors


def test_key_mapping_follows_transformers_llava_conversion():
    assert map_module_path("model.layers.3.self_attn.q_proj") == "model.language_model.layers.3.self_attn.q_proj"
    assert map_module_path("model.embed_tokens") == "model.language_model.embed_tokens"
    assert map_module_path("lm_head") == "lm_head"
    assert map_module_path("model.mm_projector.0.weight") == "model.multi_modal_projector.linear_1.weight"
    assert map_module_path("model.mm_projector.2.bias") == "model.multi_modal_projector.linear_2.bias"
    assert (map_module_path("model.vision_tower.vision_tower.vision_model.encoder.layers.0.self_attn.q_proj")
            == "model.vision_tower.vision_model.encoder.layers.0.self_attn.q_proj")


def test_output_folder(converted):
    _, out, _ = converted
    names = sorted(p.name for p in out.iterdir())
    assert names == ["adapter_config.json", "adapter_model.safetensors", "grip_diffusion.json",
                     "grip_diffusion.safetensors", "preset.json", "swinv2_blending.json", "swinv2_blending.safetensors"]
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["r"] == R and cfg["lora_alpha"] == ALPHA and cfg["modules_to_save"] == ["model.multi_modal_projector"]
    preset = json.loads((out / "preset.json").read_text())
    assert preset["name"] == "x2dfd-release"
    assert [(e["name"], e["weights"]) for e in preset["experts"]] == [
        ("swinv2", "swinv2_blending.safetensors"), ("grip", "grip_diffusion.safetensors")]
    assert set(preset["converted_from"]["files"]) == {"adapter_model.bin", "non_lora_trainables.bin", "best_gf.pth",
                                                       "diffusion/model_epoch_best.pth"}


def _reference_model(base_dir: Path, tensors: dict):
    """The base weights with every LoRA delta B·A·alpha/r added by hand and the projector replaced."""
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(base_dir, dtype=torch.float32).eval()
    state = model.state_dict()
    lora = tensors["lora"]
    for key in lora:
        if not key.endswith(".lora_A.weight"):
            continue
        module = key[len("base_model.model."):-len(".lora_A.weight")]
        a, b = lora[key], lora[key.replace("lora_A", "lora_B")]
        if module == "lm_head":
            target = "lm_head.weight"
        else:
            assert module.startswith("model.layers.")
            target = "model.language_model." + module[len("model."):] + ".weight"
        delta = (b @ a) * (ALPHA / R)
        state[target][: delta.shape[0]] += delta  # lm_head: llava-hf's 64 padding rows get no delta
    p = tensors["projector"]
    for i, name in ((0, "linear_1"), (2, "linear_2")):
        for part in ("weight", "bias"):
            state[f"model.multi_modal_projector.{name}.{part}"] = p[f"base_model.model.model.mm_projector.{i}.{part}"]
    model.load_state_dict(state)
    return model


def test_logits_equal_hand_merged_lora(converted):
    from x2dfd.mllm import MLLMOptions, load_mllm

    base_dir, out, tensors = converted
    mllm = load_mllm(MLLMOptions(model=str(base_dir), adapter=str(out), device="cpu", dtype="float32"))
    assert mllm.preset is not None and mllm.preset.name == "x2dfd-release"
    question = mllm.preset.render_question({"swinv2": 0.25, "grip": 0.5})
    prompt = mllm.build_prompt(question)
    assert prompt.endswith("And the blending score is 0.250, and the diffusion score is 0.500. ASSISTANT: This image is")
    inputs = mllm.encode([_face()], [prompt])
    with torch.inference_mode():
        got = mllm.model(**inputs).logits[0, -1].float()
        reference = _reference_model(base_dir, tensors)
        want = reference(**inputs).logits[0, -1].float()
        base = _reference_model(base_dir, {"lora": {}, "projector": tensors["projector"]})(**inputs).logits[0, -1]
    assert (want - base).abs().max() > 1e-3  # the LoRA matters: the comparison below is not vacuous
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    [judgement] = mllm.judge([_face()], [question], max_new_tokens=0)
    pair = torch.stack([want[mllm.real_id], want[mllm.fake_id]])
    assert judgement.p_fake == pytest.approx(float(torch.softmax(pair, 0)[1]), abs=1e-5)


def test_experts_score_like_the_release_code(converted):
    """SwinV2: the release's detector.py preprocessing (ToPILImage, Resize((256, 256)), ToTensor, Normalize) and
    softmax[:, 1]; ResNet: sigmoid of the single logit."""
    from torchvision import transforms

    from x2dfd.experts import load_expert

    _, out, tensors = converted
    faces = [_face(1, 120), _face(2, 300)]
    swin = load_expert("swinv2", weights=str(out))
    tf = transforms.Compose([transforms.ToPILImage(), transforms.Resize((256, 256)), transforms.ToTensor(),
                             transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])])
    with torch.inference_mode():
        want = torch.softmax(tensors["swin"](torch.stack([tf(np.asarray(f)) for f in faces])), -1)[:, 1]
    got = [s.p_fake for s in swin.score(faces)]
    np.testing.assert_allclose(got, want.numpy(), atol=1e-5)
    assert swin.prompt_name == "blending" and swin.localize(faces) is None

    grip = load_expert("grip", weights=str(out / "grip_diffusion.safetensors"))
    norm = transforms.Compose([transforms.ToTensor(), transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    with torch.inference_mode():
        want = [float(torch.sigmoid(tensors["resnet"](norm(f)[None]))[0, 0]) for f in faces]
    np.testing.assert_allclose([s.p_fake for s in grip.score(faces)], want, atol=1e-5)
    assert grip.prompt_name == "diffusion"


def test_explain_with_converted_adapter(converted, tmp_path):
    """`x2dfd explain --model BASE --adapter DIR`: the preset inside DIR picks the prompt and the experts."""
    from x2dfd.cli import main

    base_dir, out, _ = converted
    image = tmp_path / "face.png"
    _face(5, 128).save(image)
    results = tmp_path / "r.jsonl"
    rc = main(["explain", str(image), "--model", str(base_dir), "--adapter", str(out), "--no-face-crop",
               "--max-new-tokens", "0", "--device", "cpu", "--out", str(results), "--quiet"])
    assert rc == 0
    [record] = [json.loads(line) for line in results.read_text().splitlines()]
    assert record["error"] is None and 0.0 <= record["p_fake"] <= 1.0
    assert set(record["experts"]) == {"swinv2", "grip"}
    assert record["template_version"].startswith("preset:x2dfd-release@")


def test_release_without_experts_converts_lora_alone(tmp_path, tiny_llava, capsys):
    from x2dfd.cli import main

    make_release(tmp_path / "release", tiny_llava, experts=False)
    rc = main(["convert", "x2dfd-release", str(tmp_path / "release"), "--out", str(tmp_path / "out")])
    assert rc == 0
    err = capsys.readouterr().err
    assert "converted the LoRA alone" in err
    preset = json.loads((tmp_path / "out" / "preset.json").read_text())
    assert all(e["absent"] and e["weights"] is None for e in preset["experts"])
    from x2dfd.presets import read_preset_file

    p = read_preset_file(tmp_path / "out" / "preset.json")
    assert p.expert_specs() == []
    assert p.render_question({}) == "Is this image real or fake? And the blending score is N/A, and the diffusion score is N/A."


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("victim", ["adapter_model.bin", "non_lora_trainables.bin", "best_gf.pth"])
def test_malicious_pickle_is_refused_without_running(tmp_path, tiny_llava, capsys, victim):
    from x2dfd.cli import main

    release = tmp_path / "release"
    make_release(release, tiny_llava, experts=True)
    marker = tmp_path / "pwned"
    (release / victim).write_bytes(pickle.dumps({"x": _Evil(marker)}, protocol=2))
    rc = main(["convert", "x2dfd-release", str(release), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1 and "refused to load" in err and victim in err
    assert not marker.exists()
    assert not (tmp_path / "out").exists()  # nothing written before every file was read safely


def test_not_a_release_folder(tmp_path, capsys):
    from x2dfd.cli import main

    rc = main(["convert", "x2dfd-release", str(tmp_path), "--out", str(tmp_path / "out")])
    assert rc == 2 and "no adapter_config.json" in capsys.readouterr().err
