"""x2dfd.metrics against hand-computed cases (and a brute-force pairwise AUC)."""

from __future__ import annotations

import numpy as np
import pytest

from x2dfd.errors import UsageError, X2DFDError
from x2dfd.metrics import average_precision, bootstrap_ci, eer, roc_auc, roc_curve, tpr_at_fpr

Y = [0, 0, 1, 1]
S = [0.1, 0.4, 0.35, 0.8]


def _pairwise_auc(y, s):
    y, s = np.asarray(y), np.asarray(s, float)
    pos, neg = s[y == 1], s[y == 0]
    diff = pos[:, None] - neg[None, :]
    return ((diff > 0).sum() + 0.5 * (diff == 0).sum()) / diff.size


def test_auc_hand_cases():
    assert roc_auc(Y, S) == pytest.approx(0.75)
    assert roc_auc([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == 1.0
    assert roc_auc([0, 0, 1, 1], [0.9, 0.8, 0.2, 0.1]) == 0.0
    # ties count one half (Mann-Whitney): pairs 1, 1, 1, 0.5 -> 3.5 / 4
    assert roc_auc([0, 0, 1, 1], [0.2, 0.5, 0.5, 0.9]) == pytest.approx(0.875)
    assert roc_auc([0, 1], [0.5, 0.5]) == 0.5
    assert roc_auc([1, 0, 1, 0, 1], [3, 3, 3, 3, 3]) == 0.5


def test_auc_matches_pairwise_with_many_ties():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    s = rng.integers(0, 7, 300) / 7.0  # heavy ties
    assert roc_auc(y, s) == pytest.approx(_pairwise_auc(y, s), abs=1e-12)


def test_average_precision_hand_cases():
    # ranking: 0.8 (fake), 0.4 (real), 0.35 (fake), 0.1 (real): 0.5 * 1 + 0.5 * 2/3
    assert average_precision(Y, S) == pytest.approx(0.5 + 1 / 3)
    assert average_precision([0, 1], [0.5, 0.5]) == pytest.approx(0.5)  # one tied step: precision 1/2
    assert average_precision([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == 1.0
    # worst ranking of 1 fake among 3: precision 1/3 at recall 1
    assert average_precision([1, 0, 0], [0.1, 0.5, 0.9]) == pytest.approx(1 / 3)


def test_roc_curve_points():
    fpr, tpr, thr = roc_curve(Y, S)
    np.testing.assert_allclose(fpr, [0, 0, 0.5, 0.5, 1])
    np.testing.assert_allclose(tpr, [0, 0.5, 0.5, 1, 1])
    assert thr[0] == np.inf
    np.testing.assert_allclose(thr[1:], [0.8, 0.4, 0.35, 0.1])
    # area under the returned points (trapezoid) equals the rank AUC, ties included
    y, s = [0, 0, 1, 1, 0, 1], [0.2, 0.5, 0.5, 0.9, 0.5, 0.1]
    f, t, _ = roc_curve(y, s)
    assert np.trapezoid(t, f) == pytest.approx(roc_auc(y, s))


def test_eer_and_tpr_at_fpr():
    assert eer(Y, S) == pytest.approx(0.5)
    assert eer([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == 0.0
    assert eer([0, 0, 1, 1], [0.9, 0.8, 0.2, 0.1]) == 1.0
    # crossing between points: y: 3 real, 1 fake; fake ranked 2nd
    # points (fpr, fnr): (0,1) (1/3,1) (1/3,0) ... -> FPR=FNR at 1/3
    assert eer([0, 1, 0, 0], [0.9, 0.8, 0.2, 0.1]) == pytest.approx(1 / 3)
    # 4 real, 1 fake ranked 3rd: (fpr, fnr) ... (.5, 1) -> (.5, 0): the vertical step crosses at 0.5
    assert eer([0, 0, 1, 0, 0], [5, 4, 3, 2, 1]) == pytest.approx(0.5)
    # one tied step (0,1) -> (1,0): interpolated halfway
    assert eer([0, 1], [0.5, 0.5]) == pytest.approx(0.5)
    assert tpr_at_fpr(Y, S, fpr=0.0) == 0.5
    assert tpr_at_fpr(Y, S, fpr=0.5) == 1.0
    assert tpr_at_fpr(Y, S, fpr=0.01) == 0.5


def test_errors_single_class_nan_and_shapes():
    with pytest.raises(UsageError, match="both real"):
        roc_auc([1, 1, 1], [0.1, 0.2, 0.3])
    with pytest.raises(UsageError, match="only real"):
        average_precision([0, 0], [0.1, 0.2])
    with pytest.raises(UsageError, match="no items"):
        eer([], [])
    with pytest.raises(UsageError, match="NaN"):
        roc_auc([0, 1], [0.1, float("nan")])
    with pytest.raises(UsageError, match="equal length"):
        roc_auc([0, 1, 1], [0.1, 0.2])
    with pytest.raises(UsageError, match="labels must be 0"):
        roc_auc([0, 2], [0.1, 0.2])
    assert issubclass(UsageError, X2DFDError)


def test_bootstrap_ci_brackets_point_and_is_seeded():
    rng = np.random.default_rng(1)
    y = np.repeat([0, 1], 100)
    s = np.concatenate([rng.normal(0, 1, 100), rng.normal(1.5, 1, 100)])
    point, lo, hi = bootstrap_ci(roc_auc, y, s, n=200, seed=0)
    assert point == pytest.approx(roc_auc(y, s))
    assert lo < point < hi and 0.0 <= lo and hi <= 1.0
    assert bootstrap_ci(roc_auc, y, s, n=200, seed=0) == (point, lo, hi)
    assert bootstrap_ci(roc_auc, y, s, n=200, seed=1) != (point, lo, hi)
    # tiny class counts still give finite intervals (stratified resampling keeps both classes)
    p2, lo2, hi2 = bootstrap_ci(eer, [0, 1], [0.2, 0.8], n=50)
    assert (p2, lo2, hi2) == (0.0, 0.0, 0.0)


def test_one_pass_metrics_equal_scikit_learn_with_ties():
    """detection_metrics (one ROC curve per bootstrap replicate) agrees with scikit-learn's own functions."""
    from sklearn import metrics as skm

    from x2dfd.metrics import detection_metrics

    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 500)
    s = rng.integers(0, 11, 500) / 10.0  # heavy ties
    got = detection_metrics(y, s)
    assert got["auc"] == pytest.approx(skm.roc_auc_score(y, s), abs=1e-12)
    assert got["ap"] == pytest.approx(skm.average_precision_score(y, s), abs=1e-12)
    assert got["acc"] == pytest.approx(skm.accuracy_score(y, s >= 0.5), abs=1e-12)


def test_rank_auc_equals_scikit_learn_with_ties():
    """rank_auc (the bootstrap replicates' AUC) is roc_auc_score, ties counted 1/2, on heavily tied scores."""
    from sklearn.metrics import roc_auc_score

    from x2dfd.metrics import rank_auc

    rng = np.random.default_rng(3)
    for n, levels in ((2, 1), (7, 2), (50, 3), (400, 5), (3000, 1000)):
        for _ in range(5):
            y = rng.integers(0, 2, n)
            y[:2] = (0, 1)  # both classes
            s = rng.integers(0, levels, n) / max(1, levels - 1)
            assert rank_auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert rank_auc(np.array([0, 1, 0, 1]), np.array([0.5, 0.5, 0.5, 0.5])) == 0.5
