"""Blend ensembles (`x2dfd expert ensemble`) and mirror averaging: separately trained members on one split
become one expert whose logits are the mean of theirs, calibrated on their validation faces, loaded and used
like any blend weights; members of other splits or shapes are refused in one line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from x2dfd import experts
from x2dfd.errors import UsageError
from x2dfd.experts.blend import BlendConfig, BlendExpert, to_tensor

pytestmark = pytest.mark.usefixtures("one_thread")


def _faces(n=4, seed=1):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (72, 60 + 4 * i, 3), dtype=np.uint8)) for i in range(n)]


def test_flip_average_is_mirror_invariant_and_averages_both_views():
    torch.manual_seed(0)
    plain = experts.build_expert("blend", {"image_size": 64})
    flipped = BlendExpert(plain.model, BlendConfig.from_dict({**plain.config.to_dict(), "flip_average": True}))
    faces = _faces()
    mirrored = [Image.fromarray(np.ascontiguousarray(np.asarray(f)[:, ::-1])) for f in faces]
    p = [s.p_fake for s in flipped.score(faces)]
    assert p == pytest.approx([s.p_fake for s in flipped.score(mirrored)], abs=1e-5)  # a face and its mirror agree
    a, b = [s.p_fake for s in plain.score(faces)], [s.p_fake for s in plain.score(mirrored)]
    assert p != pytest.approx(a, abs=1e-4)  # the random model is not mirror-symmetric on its own
    logit = lambda q: np.log(np.asarray(q) / (1 - np.asarray(q)))  # noqa: E731
    assert logit(p) == pytest.approx((logit(a) + logit(b)) / 2, abs=1e-4)
    scores, maps = flipped.predict(faces)
    assert [s.p_fake for s in scores] == pytest.approx(p, abs=1e-6)
    assert [m.shape for m in maps] == [np.asarray(f).shape[:2] for f in faces]
    assert flipped.info()["flip_average"] is True and plain.info()["members"] == 1


def test_mask_evidence_adds_the_top_mask_logits_to_the_fake_logit():
    """mask_evidence w: the fake logit is the classifier's + w x the mean of the top 5% of the blend-mask logits, in
    score, predict and calibration alike (all read ``logits``); w = 0 leaves the classifier's logit alone; its
    weight survives a save and load and is refused outside [0, 100]."""
    from x2dfd.experts.blend import mask_evidence, resize_face

    torch.manual_seed(0)
    plain = experts.build_expert("blend", {"image_size": 64})
    fused = BlendExpert(plain.model, BlendConfig.from_dict({**plain.config.to_dict(), "mask_evidence": 2.5}))
    faces = _faces()
    x = to_tensor([resize_face(np.asarray(f), 64) for f in faces], plain.config.mean, plain.config.std)
    with torch.inference_mode():
        z, m = plain.model(x)
        flat = m.flatten(1)
        assert flat.shape[1] == 16  # 64 px in, a 4x4 mask: the top 5% is its single largest cell
        assert torch.allclose(mask_evidence(m), flat.max(1).values)
        big = torch.zeros(2, 1, 10, 10)
        big[0, 0, 0, :6] = torch.tensor([6.0, 5.0, 4.0, 3.0, 2.0, 1.0])
        assert mask_evidence(big).tolist() == pytest.approx([4.0, 0.0])  # the top 5 of 100 cells
        assert torch.allclose(plain.logits(x), z, atol=1e-6)
        assert torch.allclose(fused.logits(x), z + 2.5 * mask_evidence(m), atol=1e-5)
    p = [s.p_fake for s in fused.score(faces)]
    assert p != pytest.approx([s.p_fake for s in plain.score(faces)], abs=1e-4)
    scores, maps = fused.predict(faces)
    assert [s.p_fake for s in scores] == pytest.approx(p, abs=1e-6)
    assert [mp.tolist() for mp in maps] == [mp.tolist() for mp in plain.predict(faces)[1]]  # heatmaps unchanged
    assert fused.info()["mask_evidence"] == 2.5 and plain.info()["mask_evidence"] == 0.0
    assert BlendConfig.from_dict(fused.config.to_dict()).mask_evidence == 2.5
    with pytest.raises(UsageError, match=r"mask_evidence must be in \[0, 100\], got -1"):
        BlendConfig(mask_evidence=-1)


def test_member_backbones_config():
    cfg = BlendConfig(members=2, member_backbones=["efficientnet_lite0", "efficientnet_lite1"], image_size=64)
    assert BlendConfig.from_dict(cfg.to_dict()) == cfg
    net = BlendExpert.from_config(cfg).model
    assert [len(m.backbone.blocks) for m in net.members] == [16, 21]
    assert BlendConfig(members=2, member_backbones=["efficientnet_lite0"] * 2).member_backbones is None  # all alike
    with pytest.raises(UsageError, match="member_backbones must name 2 backbones"):
        BlendConfig(members=2, member_backbones=["efficientnet_lite0"])
    with pytest.raises(UsageError, match="mixes efficientnet_lite backbones only, got 'clip'"):
        BlendConfig(members=2, member_backbones=["efficientnet_lite0", "clip"])


@pytest.mark.slow
def test_ensemble_of_two_trained_members_round_trip_and_refusals(tmp_path, capsys):
    from tests.conftest import shared_path

    real = shared_path("data", "faces-real-photos", "real")  # skips without ../shared
    pytest.importorskip("x2dfd.face")
    from x2dfd.experts.cli import main

    cache = tmp_path / "cache"
    base = ["train", "--real", str(real), "--cache-dir", str(cache), "--image-size", "64", "--batch-size", "2",
            "--max-steps", "1", "--max-images", "10", "--val-fraction", "0.3", "--holdout-fraction", "0.2",
            "--workers", "0", "--no-pretrained", "--no-progress", "--epochs", "1"]
    assert main(base + ["--out", str(tmp_path / "a"), "--seed", "3"]) == 0
    assert main(base + ["--out", str(tmp_path / "b"), "--seed", "4", "--split-seed", "3"]) == 0
    wa, wb = (tmp_path / m / "blend_efficientnet_lite0.safetensors" for m in "ab")
    out = tmp_path / "ens"
    assert main(["ensemble", "--weights", str(wa), "--weights", str(wb), "--out", str(out), "--cache-dir", str(cache),
                 "--save-dtype", "float32"]) == 0

    ens = experts.load_expert("blend", weights=str(out))
    a, b = BlendExpert.load(wa), BlendExpert.load(wb)
    assert ens.config.members == 2 and ens.info()["members"] == 2
    x = to_tensor([np.asarray(f.resize((64, 64))) for f in _faces()], ens.config.mean, ens.config.std)
    with torch.inference_mode():
        assert torch.allclose(ens.logits(x), (a.logits(x) + b.logits(x)) / 2, atol=1e-5)
    rec = json.loads((out / "blend_efficientnet_lite0.json").read_text())
    members = rec["training"]["ensemble"]["members"]
    assert [m["sha256"] for m in members] == [a.weights_sha256, b.weights_sha256]
    assert rec["training"]["split"] == a.record["split"]  # the held-out list evaluations read stays the members'
    cal = rec["calibration"]
    assert cal["method"] == "temperature" and cal["temperature"] > 0 and cal["n"] == 2 * rec["training"]["val_images"]
    assert ens.temperature == pytest.approx(cal["temperature"])
    assert 0.0 <= rec["training"]["val_auc"] == cal["val_auc"] <= 1.0 and ens.info()["training"]["val_auc"] == cal["val_auc"]
    assert all(m["training"]["split"] == "the ensemble's split" for m in members)  # stored once
    assert len(ens.score(_faces())) == 4 and len(ens.localize(_faces())) == 4

    # EfficientNet-Lites of different sizes combine too (same split, input size and normalisation)
    assert main(base + ["--out", str(tmp_path / "l2"), "--seed", "6", "--split-seed", "3", "--backbone", "efficientnet_lite2"]) == 0
    wl2 = tmp_path / "l2" / "blend_efficientnet_lite2.safetensors"
    mixed_out = tmp_path / "mixed"
    assert main(["ensemble", "--weights", str(wa), "--weights", str(wl2), "--out", str(mixed_out), "--cache-dir", str(cache),
                 "--save-dtype", "float32"]) == 0
    mixed = experts.load_expert("blend", weights=str(mixed_out / "blend_efficientnet_lite0-efficientnet_lite2.safetensors"))
    l2 = BlendExpert.load(wl2)
    assert mixed.info()["member_backbones"] == ["efficientnet_lite0", "efficientnet_lite2"]
    with torch.inference_mode():
        assert torch.allclose(mixed.logits(x), (a.logits(x) + l2.logits(x)) / 2, atol=1e-5)
    scores, maps = mixed.predict(_faces())
    assert len(scores) == 4 and [m.shape for m in maps] == [np.asarray(f).shape[:2] for f in _faces()]

    # --mask-evidence: the averaged logit plus w x the averaged mask's evidence, calibrated and recorded with it
    me_out = tmp_path / "ens_me"
    assert main(["ensemble", "--weights", str(wa), "--weights", str(wb), "--out", str(me_out), "--cache-dir", str(cache),
                 "--save-dtype", "float32", "--mask-evidence", "1.5"]) == 0
    assert "mask evidence x1.5" in capsys.readouterr().out
    me = experts.load_expert("blend", weights=str(me_out))
    from x2dfd.experts.blend import mask_evidence

    with torch.inference_mode():
        za, ma = a.model(x)
        zb, mb = b.model(x)
        assert torch.allclose(me.logits(x), (za + zb) / 2 + 1.5 * mask_evidence((ma + mb) / 2), atol=1e-5)
    me_rec = json.loads((me_out / "blend_efficientnet_lite0.json").read_text())
    assert me_rec["config"]["mask_evidence"] == 1.5 and "1.5 x the mean of the top 5%" in me_rec["training"]["ensemble"]["combination"]
    from x2dfd.experts.train import calibrate, recorded_split_faces

    val_faces = recorded_split_faces(me_rec["training"]["split"]["val"], [str(real)], cache, "val")
    refit = BlendExpert(me.model, BlendConfig.from_dict({**me.config.to_dict(), "mask_evidence": 0.0}))
    assert me_rec["calibration"] == calibrate(me, val_faces, a.record.get("seed", 0))  # fitted on the fused logits
    assert calibrate(refit, val_faces, a.record.get("seed", 0)) == cal  # without it: the plain ensemble's
    assert me_rec["calibration"]["nll_before"] != cal["nll_before"]

    # a member trained on another split, a lone member, or an ensemble as a member: one line each
    assert main(base + ["--out", str(tmp_path / "c"), "--seed", "5"]) == 0
    with pytest.raises(UsageError, match="another train/val/holdout split"):
        main(["ensemble", "--weights", str(wa), "--weights", str(tmp_path / "c" / wa.name), "--out", str(tmp_path / "x"),
              "--cache-dir", str(cache)])
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:  # an option error: usage status, one line
        main(["ensemble", "--weights", str(wa), "--out", str(tmp_path / "x")])
    assert exc.value.code == 2 and "at least twice" in capsys.readouterr().err
    with pytest.raises(UsageError, match=r"single efficientnet_lite\* networks at 64 px; .* 2 member\(s\)"):
        main(["ensemble", "--weights", str(wa), "--weights", str(out / wa.name), "--out", str(tmp_path / "x"),
              "--cache-dir", str(cache)])
