"""Classical face swap (landmark warp + colour transfer + seamless clone) and its building blocks."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from PIL import Image

from x2dfd.errors import NoFaceError
from x2dfd.face import get_detector
from x2dfd.faceswap import colour_transfer, delaunay, make_face_swap


def test_swap_changes_the_face_only(swap_pair):
    source, target = swap_pair
    fake, mask = make_face_swap(source, target, seed=0)
    assert fake.mode == "RGB" and fake.size == target.size
    assert mask.shape == (target.height, target.width) and mask.dtype == np.uint8
    f, t = np.asarray(fake).astype(int), np.asarray(target).astype(int)
    outside, core = mask == 0, mask == 255
    assert np.array_equal(f[outside], t[outside])  # the target's own pixels outside the mask
    assert 0.05 < (mask > 0).mean() < 0.6 and core.sum() > 0.5 * (mask > 0).sum()
    assert np.abs(f[core] - t[core]).mean() > 10  # the face really changed
    # the landmarks of the target face are inside the mask: the swap covers the face
    lm = get_detector().detect(np.asarray(target))[0].landmarks
    inner = lm[27:68].round().astype(int)  # nose, eyes, mouth
    assert (mask[inner[:, 1], inner[:, 0]] > 0).mean() > 0.9
    # the fake still looks like a face to the detector, at the same place
    g = get_detector().detect(np.asarray(fake))[0]
    tb = get_detector().detect(np.asarray(target))[0].box
    assert abs((g.box[0] + g.box[2]) - (tb[0] + tb[2])) / 2 < 0.15 * (tb[2] - tb[0])


def test_swap_is_deterministic_and_seeded(swap_pair):
    source, target = swap_pair
    a, ma = make_face_swap(source, target, seed=3)
    b, mb = make_face_swap(source, target, seed=3)
    assert np.array_equal(np.asarray(a), np.asarray(b)) and np.array_equal(ma, mb)
    areas = {int((make_face_swap(source, target, seed=s)[1] > 0).sum()) for s in (0, 1)}
    assert len(areas) > 1  # the seed varies the mask


def test_swap_without_a_face(swap_pair):
    source, _ = swap_pair
    blank = Image.new("RGB", (300, 300), (120, 120, 120))
    with pytest.raises(NoFaceError, match="target"):
        make_face_swap(source, blank)
    with pytest.raises(NoFaceError, match="source"):
        make_face_swap(blank, source)


def test_delaunay_covers_the_points():
    rng = np.random.default_rng(0)
    pts = rng.uniform(10, 190, size=(68, 2)).astype(np.float32)
    tris = delaunay(pts, (200, 200))
    hull = len(cv2.convexHull(pts))
    assert len(tris) == 2 * len(pts) - 2 - hull  # Euler's count for a triangulation of points in general position
    assert {i for t in tris for i in t} == set(range(68))


def test_colour_transfer_matches_target_statistics():
    rng = np.random.default_rng(0)
    src = (rng.random((64, 64, 3)) * 80 + 20).astype(np.uint8)
    dst = (rng.random((64, 64, 3)) * 60 + 150).astype(np.uint8)
    mask = np.zeros((64, 64), np.uint8)
    mask[16:48, 16:48] = 255
    out = colour_transfer(src, dst, mask)
    lab = lambda a: cv2.cvtColor(a, cv2.COLOR_RGB2LAB).astype(float)[mask > 0]  # noqa: E731
    assert np.abs(lab(out).mean(0) - lab(dst).mean(0)).max() < 3
    assert np.abs(lab(src).mean(0) - lab(dst).mean(0)).max() > 30


def test_triangle_warp_with_landmarks_outside_the_source():
    """Tight crops put landmarks outside the picture: the warp pads instead of failing in cv2.warpAffine."""
    from x2dfd.faceswap import _warp_triangle

    src = (np.random.default_rng(0).random((50, 60, 3)) * 255).astype(np.uint8)
    dst = np.zeros((80, 80, 3), np.uint8)
    _warp_triangle(src, dst, np.array([[-10.0, -5], [30, 10], [5, 60]]), np.array([[10.0, 10], [50, 20], [20, 70]]))
    filled = dst.sum(-1) > 0
    assert filled.sum() > 1000  # the destination triangle (area 1000) is painted
    assert not filled[:9].any() and not filled[:, :9].any()  # and nothing outside its bounding box
