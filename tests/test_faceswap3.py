"""The third classical face swap (evaluation only): thin-plate-spline warp, linear colour transfer, ellipse mask,
linear-ramp alpha blend."""

from __future__ import annotations

import numpy as np
import pytest

from x2dfd.errors import NoFaceError
from x2dfd.faceswap3 import ellipse_mask, linear_colour_transfer, make_face_swap3, tps_map


def test_tps_reproduces_an_affine_map_exactly():
    rng = np.random.default_rng(0)
    tgt = rng.uniform(20, 80, (30, 2))
    a = np.array([[1.1, 0.2], [-0.1, 0.9]])
    src = tgt @ a.T + np.array([3.0, -5.0])
    map_x, map_y = tps_map(tgt, src, (100, 100), (10, 20, 90, 70))
    y, x = 40, 50
    np.testing.assert_allclose([map_x[y, x], map_y[y, x]], a @ [x, y] + [3.0, -5.0], atol=1e-3)
    assert map_x[5, 5] == -1 and map_y[95, 95] == -1  # outside the box: nothing is taken


def test_tps_bends_through_the_landmarks():
    rng = np.random.default_rng(1)
    tgt = rng.uniform(10, 90, (12, 2)).round()
    src = tgt + rng.normal(0, 4, tgt.shape)  # a non-affine displacement
    map_x, map_y = tps_map(tgt, src, (100, 100), (0, 0, 100, 100), smoothing=0.0)
    for (x, y), (sx, sy) in zip(tgt.astype(int), src):
        assert map_x[y, x] == pytest.approx(sx, abs=1e-3) and map_y[y, x] == pytest.approx(sy, abs=1e-3)


def test_linear_colour_transfer_matches_mean_and_covariance():
    rng = np.random.default_rng(2)
    src = rng.integers(0, 120, (40, 40, 3)).astype(np.uint8)
    base = rng.normal(0, 1, (40, 40, 3))
    mix = np.array([[20, 5, 0], [5, 15, 3], [0, 3, 10]])
    tgt = np.clip(base @ mix.T + [150, 120, 100], 0, 255).astype(np.uint8)
    mask = np.ones((40, 40), np.uint8)
    out = linear_colour_transfer(src, tgt, mask).reshape(-1, 3).astype(np.float64)
    t = tgt.reshape(-1, 3).astype(np.float64)
    np.testing.assert_allclose(out.mean(0), t.mean(0), atol=1e-6)
    np.testing.assert_allclose(np.cov(out, rowvar=False), np.cov(t, rowvar=False), rtol=1e-3, atol=1e-2)


def test_ellipse_mask_covers_the_face_and_lifts_over_the_brows():
    # a synthetic 68-point layout: jaw as a lower half-ellipse, brows above
    t = np.linspace(np.pi, 0, 17)
    jaw = np.column_stack([50 + 30 * np.cos(t), 50 + 35 * np.sin(t)])
    brows = np.column_stack([np.linspace(25, 75, 10), np.full(10, 35.0)])
    rest = np.column_stack([np.full(41, 50.0), np.linspace(40, 75, 41)])
    lm = np.vstack([jaw, brows, rest])
    m = ellipse_mask(lm, (120, 100), brow_lift=0.12)
    assert m.dtype == np.uint8 and set(np.unique(m)) <= {0, 1}
    assert m[60, 50] == 1 and m[30, 50] == 1 and m[0, 0] == 0 and m[119, 99] == 0
    assert ellipse_mask(lm, (120, 100), shrink=0.2).sum() < m.sum()


def test_swap_changes_the_face_only_and_is_deterministic(swap_pair):
    source, target = swap_pair
    fake, mask = make_face_swap3(source, target, seed=3)
    assert fake.size == target.size and mask.shape == (target.height, target.width) and mask.dtype == np.uint8
    f, t = np.asarray(fake).astype(int), np.asarray(target).astype(int)
    assert np.array_equal(f[mask == 0], t[mask == 0])
    assert 0.05 < (mask > 0).mean() < 0.8
    assert np.abs(f[mask == 255] - t[mask == 255]).mean() > 8
    ramp = (mask > 0) & (mask < 255)
    assert ramp.sum() > 0.05 * (mask > 0).sum()  # a feathered edge, not a hard cut
    again, _ = make_face_swap3(source, target, seed=3)
    assert np.array_equal(np.asarray(again), np.asarray(fake))


def test_no_face(swap_pair):
    from PIL import Image

    with pytest.raises(NoFaceError):
        make_face_swap3(Image.new("RGB", (200, 200), "gray"), swap_pair[1])
