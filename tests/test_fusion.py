"""x2dfd.fusion: mean fusion, logistic fusion (fit, separation, regularisation, missing scores, errors)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from x2dfd.errors import UsageError
from x2dfd.fusion import LogisticFusion, fit_logistic, logit, mean_fusion
from x2dfd.metrics import roc_auc


def test_mean_fusion_uses_available_scores():
    assert mean_fusion([[0.2, 0.4], [0.9, None], [None, None], [float("nan"), 0.3]]) == pytest.approx(
        [0.3, 0.9, None, 0.3])


def test_logit_clips():
    assert logit([0.5])[0] == 0.0
    assert math.isfinite(logit([0.0])[0]) and logit([1.0])[0] == pytest.approx(-logit([0.0])[0])


def _two_weak_detectors(n=400, seed=0):
    """Two detectors, each seeing half of the evidence: fused, they separate far better than alone."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    a = 1 / (1 + np.exp(-(1.2 * (2 * y - 1) + rng.normal(0, 1.5, n))))
    b = 1 / (1 + np.exp(-(1.2 * (2 * y - 1) + rng.normal(0, 1.5, n))))
    return np.stack([a, b], 1), y


def test_logistic_fusion_beats_each_component_and_generalises():
    X, y = _two_weak_detectors(800)
    fit, test = slice(0, 400), slice(400, 800)
    model = fit_logistic(X[fit].tolist(), y[fit].tolist(), names=["mllm", "expert:blend"])
    assert model.converged and model.iterations < 20
    assert all(w > 0 for w in model.weights)
    p = model.predict(X[test].tolist())
    fused = roc_auc(y[test], p)
    assert fused > max(roc_auc(y[test], X[test, 0]), roc_auc(y[test], X[test, 1])) + 0.03
    assert model.n_fit == 400 and model.n_fit_real + model.n_fit_fake == 400


def test_logistic_fusion_ignores_a_useless_component_and_stays_finite_when_separable():
    rng = np.random.default_rng(1)
    y = np.repeat([0, 1], 50)
    good = np.where(y == 1, 0.9, 0.1)  # perfectly separable
    noise = rng.random(100)
    model = fit_logistic(np.stack([good, noise], 1).tolist(), y.tolist(), names=["good", "noise"], l2=1.0)
    assert model.converged and all(math.isfinite(w) for w in model.weights)
    assert model.weights[0] > 5 * abs(model.weights[1])
    assert roc_auc(y, model.predict(np.stack([good, noise], 1).tolist())) == 1.0


def test_logistic_fusion_missing_scores_and_roundtrip():
    X, y = _two_weak_detectors(200, seed=2)
    rows = X.tolist()
    rows[0] = [None, rows[0][1]]
    rows[1] = [None, None]  # dropped from the fit
    model = fit_logistic(rows, y.tolist(), names=["a", "b"])
    assert model.n_fit == 199
    p = model.predict([[None, None], [0.5, 0.5], [None, 0.9]])
    assert p[0] is None and p[1] == pytest.approx(1 / (1 + math.exp(-model.bias)))
    again = LogisticFusion.from_dict(model.to_dict())
    assert again.predict([[0.3, 0.8]])[0] == pytest.approx(model.predict([[0.3, 0.8]])[0], abs=1e-5)


def test_logistic_fusion_errors():
    with pytest.raises(UsageError, match="needs both real and fake items, got only fake items"):
        fit_logistic([[0.2, 0.3], [0.4, 0.5]], [1, 1], names=["a", "b"])
    with pytest.raises(UsageError, match="2 component names but 3 scores"):
        fit_logistic([[0.2, 0.3, 0.1], [0.4, 0.5, 0.2]], [0, 1], names=["a", "b"])
    with pytest.raises(UsageError, match="--fusion-l2"):
        fit_logistic([[0.2], [0.4]], [0, 1], names=["a"], l2=-1)
    model = fit_logistic([[0.2, 0.3], [0.8, 0.5]], [0, 1], names=["a", "b"])
    with pytest.raises(UsageError, match="expected 2 scores per item"):
        model.predict([[0.1]])
