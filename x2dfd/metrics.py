"""Detection metrics: ROC AUC, average precision, ROC curve and accuracy from scikit-learn; EER, TPR at a fixed
FPR and the stratified / cluster (by video) bootstrap, which scikit-learn and scipy do not provide, here.

    from x2dfd.metrics import roc_auc, average_precision, eer, tpr_at_fpr, bootstrap_ci
    roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])  # 0.75

Conventions (as everywhere in x2dfd): label 1 = fake = positive class, and a higher score means
"more fake". Ties between a real and a fake score count one half (``sklearn.metrics.roc_auc_score``,
the Mann-Whitney U statistic), so AUC = P(s_fake > s_real) + 0.5 P(s_fake = s_real). Every function
refuses single-class input or non-finite scores with a :class:`~x2dfd.errors.UsageError` (one line)
instead of scikit-learn's warning and NaN.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
from sklearn import metrics as skm

from x2dfd.errors import UsageError

__all__ = ["roc_auc", "rank_auc", "average_precision", "roc_curve", "eer", "tpr_at_fpr", "accuracy", "detection_metrics",
           "bootstrap_ci", "bootstrap_metrics"]


def _check(y_true: Sequence, scores: Sequence) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true)
    s = np.asarray(scores, dtype=np.float64)
    if y.ndim != 1 or s.ndim != 1 or len(y) != len(s):
        raise UsageError(f"metrics: y_true and scores must be 1-D and of equal length, got shapes {y.shape} and {s.shape}")
    if len(y) and not np.isin(y, (0, 1)).all():
        raise UsageError(f"metrics: labels must be 0 (real) or 1 (fake), got values {sorted(set(y.tolist()))[:5]}")
    if not np.isfinite(s).all():
        raise UsageError(f"metrics: scores contain {int((~np.isfinite(s)).sum())} NaN/inf value(s); drop or fix those items first")
    y = y.astype(np.int64)
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == len(y):
        present = "no items" if len(y) == 0 else f"only {'fake (1)' if n_pos else 'real (0)'} labels ({len(y)} items)"
        raise UsageError(f"metrics: need both real (0) and fake (1) items to rank, got {present}")
    return y, s


def roc_auc(y_true: Sequence, scores: Sequence) -> float:
    """Area under the ROC curve (``sklearn.metrics.roc_auc_score``): Mann-Whitney U / (n_pos * n_neg), ties 1/2."""
    y, s = _check(y_true, scores)
    return float(skm.roc_auc_score(y, s))


def rank_auc(y: np.ndarray, s: np.ndarray) -> float:
    """:func:`roc_auc` of already checked arrays (0/1 labels, both classes, finite scores), from average ranks:
    (sum of the fakes' ranks - n_fake (n_fake + 1) / 2) / (n_fake n_real), the Mann-Whitney U with ties 1/2.
    Equal to ``roc_auc_score`` (tested on heavily tied data) and 4-20x faster: for bootstrap replicates."""
    from scipy.stats import rankdata

    r = rankdata(s)
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    return float((r[y == 1].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def roc_curve(y_true: Sequence, scores: Sequence) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(fpr, tpr, thresholds)``: one point per distinct score (predict fake when score >= threshold),
    starting at (0, 0) with threshold +inf and ending at (1, 1) (``sklearn.metrics.roc_curve``, every point kept)."""
    y, s = _check(y_true, scores)
    fpr, tpr, thr = skm.roc_curve(y, s, drop_intermediate=False)
    return fpr, tpr, thr


def average_precision(y_true: Sequence, scores: Sequence) -> float:
    """AP = sum_n (R_n - R_{n-1}) P_n over distinct thresholds, no interpolation (``average_precision_score``)."""
    y, s = _check(y_true, scores)
    return float(skm.average_precision_score(y, s))


def eer(y_true: Sequence, scores: Sequence) -> float:
    """Equal error rate: where FPR = FNR on the ROC curve, linearly interpolated between its points."""
    fpr, tpr, _ = roc_curve(y_true, scores)
    return _eer_from_curve(fpr, tpr)


def _eer_from_curve(fpr: np.ndarray, tpr: np.ndarray) -> float:
    fnr = 1.0 - tpr
    diff = fpr - fnr  # increases from -1 to +1 along the curve
    i = int(np.flatnonzero(diff >= 0)[0])
    if diff[i] == 0 or i == 0:
        return float(fpr[i])
    # crossing between points i-1 (diff < 0) and i (diff > 0)
    t = -diff[i - 1] / (diff[i] - diff[i - 1])
    return float(fpr[i - 1] + t * (fpr[i] - fpr[i - 1]))


def tpr_at_fpr(y_true: Sequence, scores: Sequence, fpr: float = 0.01) -> float:
    """Largest TPR among ROC operating points whose FPR is <= ``fpr`` (no interpolation: an achievable threshold)."""
    if not 0.0 <= fpr <= 1.0:
        raise UsageError(f"metrics: fpr must be in [0, 1], got {fpr}")
    fprs, tprs, _ = roc_curve(y_true, scores)
    return float(tprs[fprs <= fpr + 1e-12].max())


def bootstrap_ci(
    metric_fn: Callable[[np.ndarray, np.ndarray], float],
    y: Sequence,
    s: Sequence,
    n: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> tuple[float, float, float]:
    """``(point estimate, lower, upper)``: percentile bootstrap over items, ``1 - alpha`` coverage.

    Resampling is stratified (reals and fakes resampled separately, keeping their counts), so every
    replicate has both classes and no replicate has to be thrown away."""
    if n < 1:
        raise UsageError(f"bootstrap_ci: n must be >= 1, got {n}")
    if not 0.0 < alpha < 1.0:
        raise UsageError(f"bootstrap_ci: alpha must be in (0, 1), got {alpha}")
    y_arr, s_arr = _check(y, s)
    point = float(metric_fn(y_arr, s_arr))
    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(y_arr == 1), np.flatnonzero(y_arr == 0)
    values = np.empty(n, dtype=np.float64)
    for b in range(n):
        idx = np.concatenate((rng.choice(pos, len(pos)), rng.choice(neg, len(neg))))
        values[b] = metric_fn(y_arr[idx], s_arr[idx])
    lo, hi = np.quantile(values, [alpha / 2.0, 1.0 - alpha / 2.0])
    return point, float(lo), float(hi)


def accuracy(y_true: Sequence, scores: Sequence, threshold: float = 0.5) -> float:
    """Fraction of items whose verdict (fake when score >= ``threshold``) matches the label."""
    y, s = _check(y_true, scores)
    return float(skm.accuracy_score(y, (s >= threshold).astype(np.int64)))


def _metric_names(fprs: Sequence[float]) -> list[str]:
    return ["auc", "ap", "eer", "acc"] + [f"tpr@fpr{f:g}" for f in fprs]


def _all_metrics(y: np.ndarray, s: np.ndarray, threshold: float, fprs: Sequence[float]) -> list[float]:
    """Every metric of :func:`detection_metrics` from ONE ROC curve of the (checked) inputs."""
    fpr, tpr, _ = skm.roc_curve(y, s, drop_intermediate=False)
    auc = float(skm.auc(fpr, tpr))  # trapezoids over every point = Mann-Whitney, ties count 1/2
    n_pos = int(y.sum())
    tps, fps = tpr[1:] * n_pos, fpr[1:] * (len(y) - n_pos)  # counts at each distinct threshold
    ap = float(np.sum(np.diff(tpr) * tps / (tps + fps)))  # = average_precision_score, without a second sort
    acc = float(np.mean((s >= threshold) == (y == 1)))
    return [auc, ap, _eer_from_curve(fpr, tpr), acc] + [float(tpr[fpr <= f + 1e-12].max()) for f in fprs]


def detection_metrics(y_true: Sequence, scores: Sequence, threshold: float = 0.5,
                      fprs: Sequence[float] = (0.01, 0.05)) -> dict[str, float]:
    """``{"auc", "ap", "eer", "acc", "tpr@fpr0.01", "tpr@fpr0.05"}`` in one pass; each value equals the
    function of the same name (``acc`` = :func:`accuracy` at ``threshold``)."""
    y, s = _check(y_true, scores)
    return dict(zip(_metric_names(fprs), _all_metrics(y, s, threshold, fprs)))


def bootstrap_metrics(
    y_true: Sequence,
    scores: Sequence,
    n: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    groups: Sequence | None = None,
    threshold: float = 0.5,
    fprs: Sequence[float] = (0.01, 0.05),
) -> dict[str, tuple[float, float | None, float | None]]:
    """``{metric: (point, lower, upper)}`` for every metric of :func:`detection_metrics`, all from the same
    ``n`` stratified percentile-bootstrap replicates (``n = 0``: points only, bounds None).

    ``groups`` (one id per item, e.g. the video of each frame): a cluster bootstrap. Whole groups are
    resampled within each class, so frames of one video never count as independent evidence (frame-level
    intervals of video datasets would otherwise be too narrow)."""
    if n < 0:
        raise UsageError(f"bootstrap: n must be >= 0, got {n}")
    if not 0.0 < alpha < 1.0:
        raise UsageError(f"bootstrap: alpha must be in (0, 1), got {alpha}")
    y, s = _check(y_true, scores)
    names = _metric_names(fprs)
    point = _all_metrics(y, s, threshold, fprs)
    if n == 0:
        return {k: (v, None, None) for k, v in zip(names, point)}
    rng = np.random.default_rng(seed)
    per_class: list[list[np.ndarray]] = []
    for label in (1, 0):
        idx = np.flatnonzero(y == label)
        if groups is None:
            per_class.append([idx])
            continue
        g = np.asarray(groups, dtype=object)
        if len(g) != len(y):
            raise UsageError(f"bootstrap: {len(g)} group ids for {len(y)} items")
        clusters: dict = {}
        for i in idx:
            clusters.setdefault(g[i], []).append(i)
        per_class.append([np.asarray(v) for v in clusters.values()])
    values = np.empty((n, len(names)), dtype=np.float64)
    for b in range(n):
        parts = []
        for clusters in per_class:
            if len(clusters) == 1 and groups is None:  # plain stratified bootstrap over items
                parts.append(rng.choice(clusters[0], len(clusters[0])))
            else:
                chosen = rng.integers(0, len(clusters), len(clusters))
                parts.extend(clusters[c] for c in chosen)
        idx = np.concatenate(parts)
        values[b] = _all_metrics(y[idx], s[idx], threshold, fprs)
    lo = np.quantile(values, alpha / 2.0, axis=0)
    hi = np.quantile(values, 1.0 - alpha / 2.0, axis=0)
    return {k: (v, float(a), float(c)) for k, v, a, c in zip(names, point, lo, hi)}
