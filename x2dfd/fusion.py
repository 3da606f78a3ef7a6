"""Score fusion of the MLLM and the experts: mean of p_fake, and an L2-regularised logistic fusion.

    from x2dfd.fusion import mean_fusion, fit_logistic
    p = mean_fusion([[0.9, 0.2], [0.7, None]])                  # per item: mean of the available p_fakes
    model = fit_logistic([[0.9, 0.2], [0.1, 0.3], ...], y, names=["mllm", "blend"])
    p = model.predict([[0.8, 0.6]])

The logistic fusion works on logit features, ``z_j = log(p_j / (1 - p_j))`` with p clipped to
[1e-4, 1 - 1e-4]; a missing score (an expert that could not run) is the neutral ``z = 0``. It
minimises ``sum_i logloss_i + l2 / 2 * ||w||^2`` (the bias is not penalised) by Newton's method
(IRLS), which converges in a few steps on such small problems; the penalty keeps the weights finite
on separable data. ``l2 = 1`` is a standard-normal prior on weights that act on the logit scale.
Pure numpy, no sklearn.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from x2dfd.errors import UsageError

EPS = 1e-4


def logit(p, eps: float = EPS) -> np.ndarray:
    """Logit of p clipped to [eps, 1 - eps]; NaN (missing) stays NaN."""
    p = np.clip(np.asarray(p, dtype=np.float64), eps, 1.0 - eps)
    return np.log(p) - np.log1p(-p)


def _matrix(rows: Sequence[Sequence[float | None]]) -> np.ndarray:
    """Rows of p_fake (None = missing) -> float matrix with NaN for missing."""
    return np.array([[np.nan if v is None else float(v) for v in row] for row in rows], dtype=np.float64).reshape(
        len(rows), -1)


def mean_fusion(rows: Sequence[Sequence[float | None]]) -> list[float | None]:
    """Per row: the mean of its available p_fakes; None when none is available."""
    out: list[float | None] = []
    for row in rows:
        values = [float(v) for v in row if v is not None and not math.isnan(float(v))]
        out.append(sum(values) / len(values) if values else None)
    return out


@dataclass
class LogisticFusion:
    """A fitted logistic fusion: ``p = sigmoid(bias + sum_j weights[j] * logit(p_j))``."""

    names: list[str]
    weights: list[float]
    bias: float
    l2: float = 1.0
    iterations: int = 0
    converged: bool = False
    n_fit: int = 0
    n_fit_real: int = 0
    n_fit_fake: int = 0
    fit_on: str = ""  # which items it was fitted on (a sentence for reports)
    extra: dict = field(default_factory=dict)

    def predict(self, rows: Sequence[Sequence[float | None]]) -> list[float | None]:
        """p_fake per row; None for a row with no available score at all."""
        P = _matrix(rows)
        if P.shape[1] != len(self.names):
            raise UsageError(f"logistic fusion: expected {len(self.names)} scores per item ({', '.join(self.names)}), "
                             f"got {P.shape[1]}")
        present = ~np.isnan(P)
        Z = np.where(present, logit(np.where(present, P, 0.5)), 0.0)
        p = 1.0 / (1.0 + np.exp(-(Z @ np.asarray(self.weights) + self.bias)))
        return [float(v) if ok else None for v, ok in zip(p, present.any(axis=1))]

    def to_dict(self) -> dict:
        return {"names": list(self.names), "weights": [round(w, 6) for w in self.weights], "bias": round(self.bias, 6),
                "l2": self.l2, "iterations": self.iterations, "converged": self.converged, "n_fit": self.n_fit,
                "n_fit_real": self.n_fit_real, "n_fit_fake": self.n_fit_fake, "fit_on": self.fit_on,
                "features": "logit(p_fake) clipped to [1e-4, 1-1e-4]; missing -> 0", **self.extra}

    @classmethod
    def from_dict(cls, d: dict) -> "LogisticFusion":
        return cls(names=list(d["names"]), weights=[float(w) for w in d["weights"]], bias=float(d["bias"]),
                   l2=float(d.get("l2", 1.0)), iterations=int(d.get("iterations", 0)),
                   converged=bool(d.get("converged", False)), n_fit=int(d.get("n_fit", 0)),
                   n_fit_real=int(d.get("n_fit_real", 0)), n_fit_fake=int(d.get("n_fit_fake", 0)),
                   fit_on=str(d.get("fit_on", "")))


def fit_logistic(rows: Sequence[Sequence[float | None]], y: Sequence[int], names: Sequence[str], l2: float = 1.0,
                 max_iter: int = 100, tol: float = 1e-8) -> LogisticFusion:
    """Fit the fusion on ``rows`` (p_fake per component, None = missing) with labels ``y`` (1 = fake)."""
    if l2 < 0:
        raise UsageError(f"--fusion-l2 must be >= 0, got {l2}")
    P = _matrix(rows)
    yv = np.asarray(y, dtype=np.float64)
    if P.shape[0] != len(yv):
        raise UsageError(f"logistic fusion: {P.shape[0]} score rows but {len(yv)} labels")
    if P.shape[1] != len(names):
        raise UsageError(f"logistic fusion: {len(names)} component names but {P.shape[1]} scores per item")
    keep = ~np.isnan(P).all(axis=1)
    P, yv = P[keep], yv[keep]
    n_fake = int(yv.sum())
    if n_fake == 0 or n_fake == len(yv):
        have = f"only {'fake' if n_fake else 'real'} items ({len(yv)})" if len(yv) else "no scored items"
        raise UsageError(f"logistic fusion: the fit split needs both real and fake items, got {have}; "
                         "choose another --fit-split")
    present = ~np.isnan(P)
    Z = np.where(present, logit(np.where(present, P, 0.5)), 0.0)
    X = np.hstack([np.ones((len(Z), 1)), Z])
    penalty = np.full(X.shape[1], float(l2))
    penalty[0] = 1e-9  # the bias is (almost) unpenalised; the tiny ridge keeps H invertible on separable data
    beta = np.zeros(X.shape[1])
    converged, it = False, 0
    for it in range(1, max_iter + 1):
        eta = np.clip(X @ beta, -35.0, 35.0)
        p = 1.0 / (1.0 + np.exp(-eta))
        grad = X.T @ (p - yv) + penalty * beta
        W = p * (1.0 - p)
        H = (X * W[:, None]).T @ X + np.diag(penalty)
        step = np.linalg.solve(H, grad)
        beta = beta - step
        if float(np.max(np.abs(step))) < tol:
            converged = True
            break
    return LogisticFusion(names=list(names), weights=[float(b) for b in beta[1:]], bias=float(beta[0]), l2=float(l2),
                          iterations=it, converged=converged, n_fit=len(yv), n_fit_real=len(yv) - n_fake,
                          n_fit_fake=n_fake)
