"""The synthesis expert (autoencoder pseudo-fakes) and temperature calibration shared with blend."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from x2dfd import experts
from x2dfd.experts.calibration import ece, fit_temperature, sigmoid
from x2dfd.experts.synthesis import UPSAMPLERS, SynthesisExpert, UpsamplingAE, reconstruct, train_classifier

TINY = {"backbone": "efficientnet_lite0", "image_size": 64}


def _faces(n=3):
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (80 + 10 * i, 80 + 10 * i, 3), dtype=np.uint8)) for i in range(n)]


def test_registered_scores_and_does_not_localize(tmp_path):
    assert "synthesis" in experts.available_experts()
    e = experts.build_expert("synthesis", TINY)
    assert e.name == "synthesis" and e.prompt_name == "synthesis"
    scores = e.score(_faces())
    assert [s.expert for s in scores] == ["synthesis"] * 3 and all(0 <= s.p_fake <= 1 for s in scores)
    assert e.localize(_faces()) is None
    e.save(tmp_path / "synthesis_efficientnet_lite0.safetensors")
    back = experts.load_expert("synthesis", weights=str(tmp_path))
    assert [s.p_fake for s in back.score(_faces())] == pytest.approx([s.p_fake for s in scores], abs=1e-6)


@pytest.mark.parametrize("kind", UPSAMPLERS)
def test_autoencoder_shapes(kind):
    ae = UpsamplingAE(kind, width=8)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    y = ae(x)
    assert y.shape == x.shape and y.abs().max() <= 1
    faces = torch.randint(0, 255, (4, 3, 32, 32), dtype=torch.uint8)
    rec = reconstruct({k: UpsamplingAE(k, width=8).eval() for k in UPSAMPLERS}, faces, "cpu", batch=3)
    assert rec.shape == faces.shape and rec.dtype == torch.uint8


def test_classifier_trains_on_pairs():
    rng = np.random.default_rng(0)
    real = rng.integers(0, 255, (6, 64, 64, 3), dtype=np.uint8)
    fake = np.clip(real.astype(int) // 2 + 60, 0, 255).astype(np.uint8)
    expert, history = train_classifier(real, fake, real[:4], fake[:4], "cpu", epochs=1, batch=3, threads=2, log=lambda m: None)
    assert len(history) == 1 and 0.0 <= history[0]["val_auc"] <= 1.0
    assert isinstance(expert, SynthesisExpert) and expert.config.image_size == 224


def test_temperature_fit_and_ece():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 4000)
    x = (2 * y - 1) * 1.0 + rng.normal(0, 1.0, len(y))  # class means -1 / +1, sd 1: the true logit is 2x
    over = x * 8  # an overconfident model: logits 4x too large
    t = fit_temperature(over, y)
    assert 3.5 < t < 4.5
    assert ece(y, sigmoid(over / t)) < ece(y, sigmoid(over))
    assert ece([0, 1], [0.0, 1.0]) == 0.0 and ece([0, 0], [1.0, 1.0]) == 1.0
    with pytest.raises(ValueError):
        fit_temperature([1.0, 2.0], [1, 1])


def test_calibration_is_stored_and_applied(tmp_path):
    e = experts.build_expert("blend", TINY)
    raw = np.array([s.p_fake for s in e.score(_faces())])
    e.set_calibration({"method": "temperature", "temperature": 2.0})
    path = e.save(tmp_path / "blend_efficientnet_lite0.safetensors")
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["calibration"]["temperature"] == 2.0
    back = experts.load_expert("blend", weights=str(tmp_path))
    assert back.info()["calibration"]["temperature"] == 2.0
    got = np.array([s.p_fake for s in back.score(_faces())])
    z = np.log(raw / (1 - raw))
    np.testing.assert_allclose(got, sigmoid(z / 2.0), atol=1e-5)
    assert np.argsort(got).tolist() == np.argsort(raw).tolist()  # ranking (hence AUC) unchanged
