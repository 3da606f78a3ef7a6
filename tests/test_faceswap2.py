"""The second classical face swap (evaluation only): similarity warp, colour variants, pyramid blend."""

from __future__ import annotations

import numpy as np
import pytest

from x2dfd.errors import NoFaceError
from x2dfd.faceswap2 import METHODS, laplacian_blend, make_face_swap2, match_histograms, similarity_transform


def test_similarity_transform_recovers_a_known_one():
    rng = np.random.default_rng(0)
    pts = rng.uniform(0, 100, (20, 2))
    a, s, t = 0.3, 1.7, np.array([5.0, -3.0])
    r = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    dst = pts @ (s * r).T + t
    m = similarity_transform(pts, dst)
    np.testing.assert_allclose(m, np.hstack([s * r, t[:, None]]), atol=1e-9)


def test_laplacian_blend_and_histogram_matching():
    a = np.full((64, 64, 3), 200, np.uint8)
    b = np.full((64, 64, 3), 50, np.uint8)
    mask = np.zeros((64, 64), np.float32)
    mask[:, :32] = 1
    out = laplacian_blend(a, b, mask)
    assert out[:, :8].mean() == pytest.approx(200, abs=2) and out[:, -8:].mean() == pytest.approx(50, abs=2)
    src = np.random.default_rng(0).integers(0, 100, (32, 32, 3)).astype(np.uint8)
    tgt = np.random.default_rng(1).integers(150, 250, (32, 32, 3)).astype(np.uint8)
    matched = match_histograms(src, tgt, np.ones((32, 32), np.float32))
    assert abs(float(matched.mean()) - float(tgt.mean())) < 5


@pytest.mark.parametrize("method", METHODS)
def test_each_method_changes_the_face_only(swap_pair, method):
    source, target = swap_pair
    fake, mask = make_face_swap2(source, target, method=method, seed=0)
    assert fake.size == target.size and mask.shape == (target.height, target.width) and mask.dtype == np.uint8
    f, t = np.asarray(fake).astype(int), np.asarray(target).astype(int)
    assert np.array_equal(f[mask == 0], t[mask == 0])  # the target's own pixels outside the mask
    assert 0.05 < (mask > 0).mean() < 0.7
    assert np.abs(f[mask > 200] - t[mask > 200]).mean() > 8  # the face really changed
    again, _ = make_face_swap2(source, target, method=method, seed=0)
    assert np.array_equal(np.asarray(again), np.asarray(fake))  # deterministic


def test_colour_correction_moves_the_face_towards_the_target(swap_pair):
    source, target = swap_pair
    t = np.asarray(target).astype(float)
    with_c, m = make_face_swap2(source, target, method="similarity")
    without, _ = make_face_swap2(source, target, method="similarity_nocolour")
    core = m > 200
    err = lambda img: abs(np.asarray(img).astype(float)[core].mean(0) - t[core].mean(0)).sum()  # noqa: E731
    assert err(with_c) < err(without)


def test_unknown_method_and_no_face(swap_pair):
    from PIL import Image

    source, target = swap_pair
    with pytest.raises(ValueError, match="Available: similarity"):
        make_face_swap2(source, target, method="poisson")
    with pytest.raises(NoFaceError):
        make_face_swap2(Image.new("RGB", (200, 200), "gray"), target)
