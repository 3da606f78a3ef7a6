"""Temperature scaling of an expert's p_fake (Guo et al. 2017), fitted on held-out labelled scores.

    from x2dfd.experts.calibration import fit_temperature, ece
    t = fit_temperature(logits, labels)            # p = sigmoid(logit / t) minimises the NLL
    ece(labels, p)                                 # expected calibration error, 10 equal-width bins

The temperature is stored beside the weights (``"calibration": {"temperature": t, ...}`` in the JSON)
and applied by ``BlendExpert.score``/``predict``. One scalar cannot change the ranking of the scores, so
every AUC stays what it was; it only makes p_fake mean what it says on data like the fitting set.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def logit(p: Sequence[float], eps: float = 1e-6) -> np.ndarray:
    p = np.clip(np.asarray(p, np.float64), eps, 1 - eps)
    return np.log(p / (1 - p))


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(x, np.float64)))


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    z = np.asarray(logits, np.float64) / temperature
    y = np.asarray(labels, np.float64)
    # log(1 + exp(-|z|)) + max(z, 0) - y z: the stable binary cross-entropy with logits
    return float(np.mean(np.logaddexp(0.0, z) - y * z))


def fit_temperature(logits: Sequence[float], labels: Sequence[int], lo: float = 0.05, hi: float = 20.0) -> float:
    """The temperature in [lo, hi] minimising the NLL of sigmoid(logit / T) (golden-section search in log T)."""
    z, y = np.asarray(logits, np.float64), np.asarray(labels, np.float64)
    if len(z) != len(y) or len(z) == 0:
        raise ValueError("fit_temperature: logits and labels must be non-empty and of equal length")
    if len(set(y.tolist())) < 2:
        raise ValueError("fit_temperature: both classes are needed")
    a, b = np.log(lo), np.log(hi)
    g = (np.sqrt(5) - 1) / 2
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = nll(z, y, np.exp(c)), nll(z, y, np.exp(d))
    for _ in range(80):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = nll(z, y, np.exp(c))
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = nll(z, y, np.exp(d))
    return float(np.exp((a + b) / 2))


def ece(labels: Sequence[int], p_fake: Sequence[float], bins: int = 10) -> float:
    """Expected calibration error of p_fake: sum over equal-width bins of (share of items) x
    |fraction fake in the bin - mean p_fake in the bin|."""
    y, p = np.asarray(labels, np.float64), np.asarray(p_fake, np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    total = 0.0
    for i, (lo, hi) in enumerate(zip(edges[:-1], edges[1:])):
        sel = (p >= lo) & ((p < hi) if i < bins - 1 else (p <= hi))
        if sel.any():
            total += sel.mean() * abs(float(y[sel].mean()) - float(p[sel].mean()))
    return float(total)
