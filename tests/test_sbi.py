"""Self-blended images: masks, the blend itself, the shared pair augmentation and seed determinism."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from x2dfd.experts.sbi import HULL_KINDS, augment_pair, blend, blur_mask, hull_mask, self_blend

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "faces-real-photos" / "real"


def template_landmarks(size: int = 256) -> np.ndarray:
    """A plausible frontal 68-point layout (dlib order) filling a ``size`` square."""
    def ellipse(cx, cy, rx, ry, a0, a1, n):
        t = np.linspace(a0, a1, n)
        return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], 1)

    jaw = ellipse(0.5, 0.45, 0.36, 0.45, np.pi, 0, 17)[:, :] * [1, 1]
    jaw[:, 1] = 0.45 + np.abs(jaw[:, 1] - 0.45)  # lower half of the ellipse
    brow_l = np.stack([np.linspace(0.22, 0.43, 5), [0.33, 0.30, 0.29, 0.30, 0.32]], 1)
    brow_r = brow_l[::-1] * [-1, 1] + [1, 0]
    nose_bridge = np.stack([np.full(4, 0.5), np.linspace(0.38, 0.56, 4)], 1)
    nose_base = np.stack([np.linspace(0.42, 0.58, 5), [0.62, 0.64, 0.65, 0.64, 0.62]], 1)
    eye_l = ellipse(0.34, 0.42, 0.07, 0.025, np.pi, 3 * np.pi, 7)[:6]
    eye_r = ellipse(0.66, 0.42, 0.07, 0.025, np.pi, 3 * np.pi, 7)[:6]
    mouth_o = ellipse(0.5, 0.77, 0.12, 0.05, np.pi, 3 * np.pi, 13)[:12]
    mouth_i = ellipse(0.5, 0.77, 0.08, 0.02, np.pi, 3 * np.pi, 9)[:8]
    lm = np.concatenate([jaw, brow_l, brow_r, nose_bridge, nose_base, eye_l, eye_r, mouth_o, mouth_i])
    assert lm.shape == (68, 2)
    return (lm * size).astype(np.float32)


@pytest.fixture(scope="module")
def face():
    rng = np.random.default_rng(0)
    size = 256
    img = np.full((size, size, 3), 90, np.uint8)
    lm = template_landmarks(size)
    cv2.fillConvexPoly(img, cv2.convexHull(lm.astype(np.int32)), (200, 160, 140))
    img = np.clip(img.astype(int) + rng.integers(-25, 25, img.shape), 0, 255).astype(np.uint8)  # texture
    return img, lm


def _dilate(mask: np.ndarray, px: int) -> np.ndarray:
    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * px + 1, 2 * px + 1))
    return cv2.dilate(mask.astype(np.uint8), k) > 0


def test_hull_masks_cover_the_landmarks(face):
    img, lm = face
    shape = img.shape[:2]
    masks = {k: hull_mask(lm, shape, k) for k in HULL_KINDS}
    for kind, m in masks.items():
        assert m.dtype == np.float32 and set(np.unique(m)) <= {0.0, 1.0}, kind
        assert m.sum() > 0.05 * m.size, kind
    full = masks["facehull"].astype(bool)
    assert full[int(lm[30, 1]), int(lm[30, 0])]  # nose tip inside
    assert not full[0, 0] and not full[5, 128]  # corner and above the head outside
    assert (masks["inner"].astype(bool) & ~full).sum() == 0  # inner face is inside the face hull
    assert (masks["components"].astype(bool) & ~full).sum() == 0
    assert masks["extended"].sum() > masks["facehull"].sum()  # forehead added
    with pytest.raises(ValueError, match="hull kind"):
        hull_mask(lm, shape, "nope")


@pytest.mark.parametrize("seed", range(6))
def test_self_blend_mask_range_region_and_soft_edge(face, seed):
    img, lm = face
    sb = self_blend(img, lm, seed)
    m = sb.mask
    assert m.shape == img.shape[:2] and m.dtype == np.float32
    assert 0.0 <= m.min() and m.max() <= 1.0
    assert m.max() == pytest.approx(sb.ratio, abs=1e-5)  # normalised to 1, then scaled by the blend ratio
    # support stays near the (shifted, deformed, blurred) hull: never far outside it
    near = _dilate(hull_mask(lm, img.shape[:2], "extended"), px=int(0.15 * 256))
    assert (m[~near] > 1e-3).sum() == 0
    assert m[0, 0] == 0 and m[-1, -1] == 0
    # blurred edge: a band of intermediate weights between the blended core and the untouched rest
    rel = m / sb.ratio
    soft = (rel > 0.05) & (rel < 0.95)
    assert soft.sum() > 200
    assert (rel >= 0.95).sum() > 20  # and a core blended at full ratio


def test_blend_equals_mask_weighted_mix(face):
    img, lm = face
    sb = self_blend(img, lm, 3)
    expected = sb.mask[..., None] * sb.source.astype(np.float32) + (1 - sb.mask[..., None]) * sb.target.astype(np.float32)
    assert np.abs(sb.fake.astype(np.float32) - expected).max() <= 0.5 + 1e-4  # only uint8 rounding
    np.testing.assert_array_equal(sb.real, sb.target)
    outside = sb.mask == 0
    np.testing.assert_array_equal(sb.fake[outside], sb.real[outside])  # untouched where the mask is 0
    assert np.abs(sb.fake.astype(int) - sb.real.astype(int))[sb.mask > 0.5].mean() > 1  # and changed inside
    # the helper itself
    a, b = np.full((4, 4, 3), 200, np.uint8), np.full((4, 4, 3), 100, np.uint8)
    m = np.linspace(0, 1, 16, dtype=np.float32).reshape(4, 4)
    np.testing.assert_allclose(blend(a, b, m)[..., 0], 100 + 100 * m, rtol=1e-6)


def test_source_and_target_are_differently_augmented(face):
    img, lm = face
    target_untouched = []
    for seed in range(10):
        sb = self_blend(img, lm, seed)
        assert not np.array_equal(sb.source, sb.target)
        target_untouched.append(np.array_equal(sb.target, img))
    # SBI augments the source OR the target (the source is always shifted): both branches occur
    assert any(target_untouched) and not all(target_untouched)


def test_seed_determinism(face):
    img, lm = face
    a, b, c = self_blend(img, lm, 7), self_blend(img, lm, 7), self_blend(img, lm, 8)
    for field in ("fake", "real", "mask", "source"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert (a.hull, a.ratio) == (b.hull, b.ratio)
    assert not np.array_equal(a.mask, c.mask) or not np.array_equal(a.fake, c.fake)
    # a Generator works too and continues its stream
    g1, g2 = np.random.default_rng(5), np.random.default_rng(5)
    np.testing.assert_array_equal(self_blend(img, lm, g1).fake, self_blend(img, lm, g2).fake)


def test_augment_pair_applies_identical_nuisance(face):
    img, _ = face
    for seed in range(5):
        r, f = augment_pair(img, img.copy(), seed)
        np.testing.assert_array_equal(r, f)  # same input -> same output: the augmentation is shared
    r1, _ = augment_pair(img, img, 1)
    r2, _ = augment_pair(img, img, 1)
    np.testing.assert_array_equal(r1, r2)


def test_blur_mask_handles_thin_hulls():
    m = np.zeros((100, 100), np.float32)
    m[50, 10:90] = 1  # one pixel thick: the erosion would delete it
    out = blur_mask(m, np.random.default_rng(0))
    assert out.max() == pytest.approx(1.0) and out[50, 50] > 0.5


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared data not available")
def test_self_blend_on_a_real_detected_face():
    face_mod = pytest.importorskip("x2dfd.face")
    from PIL import Image

    det = face_mod.get_detector()
    for path in sorted(SHARED.glob("*.jpg"))[:20]:
        pil = Image.open(path).convert("RGB")
        faces = det.detect(np.asarray(pil))
        if faces and faces[0].landmarks is not None:
            break
    else:
        pytest.skip("no face with landmarks in the first 20 shared images")
    crop = face_mod.crop_face(pil, faces[0], scale=1.8, size=256)
    img = np.asarray(crop.image)
    sb = self_blend(img, crop.landmarks, 0)
    hull = hull_mask(crop.landmarks, img.shape[:2], "extended")
    assert (sb.mask[~_dilate(hull, 40)] > 1e-3).sum() == 0
    assert sb.mask.max() == pytest.approx(sb.ratio, abs=1e-5)


def test_degrade_pair_is_identical_for_real_and_fake(face):
    from x2dfd.experts.sbi import degrade, degrade_pair

    img, lm = face
    sb = self_blend(img, lm, 5)
    outs = [degrade_pair(sb.real, sb.fake, s) for s in range(12)]
    for (r, f), s in zip(outs, range(12)):
        assert r.shape == sb.real.shape and r.dtype == np.uint8
        # identical draws: the real copy is exactly what degrade() makes with the pair's sub-seed
        rng = np.random.default_rng(s)
        sub = int(rng.integers(2**31))
        assert np.array_equal(r, degrade(sb.real, np.random.default_rng(sub)))
        assert np.array_equal(f, degrade(sb.fake, np.random.default_rng(sub)))
    assert any(not np.array_equal(r, sb.real) for r, _ in outs)  # something was degraded
    assert np.array_equal(degrade_pair(sb.real, sb.fake, 3)[0], outs[3][0])  # seeded


def test_jitter_landmarks_moves_points_a_little(face):
    from x2dfd.experts.sbi import jitter_landmarks

    _, lm = face
    j = jitter_landmarks(lm, np.random.default_rng(0), 0.015)
    size = float(max(np.ptp(lm[:, 0]), np.ptp(lm[:, 1])))
    d = np.linalg.norm(j - lm, axis=1)
    assert j.shape == (68, 2) and 0 < d.mean() < 0.06 * size


# ------------------------------------------- the classical-swap steps (training options --colour-match, --poisson)


def test_poisson_clone_removes_a_pure_colour_offset(face):
    """A gradient-domain clone keeps the source's gradients and takes the target's values at the
    boundary: a source that is the target plus a constant comes back as the target, so an offset alone
    cannot give the blend away; a source with other content keeps it."""
    from x2dfd.experts.sbi import poisson_clone

    img, lm = face
    mask = hull_mask(lm, img.shape[:2], "inner")
    core = mask > 0.5
    bright = np.clip(img.astype(int) + 40, 0, 255).astype(np.uint8)
    cloned = poisson_clone(bright, img, mask)
    assert np.abs(bright.astype(int) - img)[core].mean() > 35
    assert np.abs(cloned.astype(int) - img)[core].mean() < 4
    flipped = np.ascontiguousarray(bright[:, ::-1])  # other content: its texture survives the clone
    assert np.abs(poisson_clone(flipped, img, mask).astype(int) - img)[core].mean() > 10
    assert poisson_clone(img, img, np.zeros(img.shape[:2], np.float32)) is None  # an empty core: no clone


@pytest.mark.parametrize("seed", range(4))
def test_swap_steps_keep_the_blend_identity_and_draw_nothing_when_off(face, seed):
    img, lm = face
    sb = self_blend(img, lm, seed, colour_match=1.0, poisson=1.0)
    assert sb.method == "poisson" and sb.colour_matched
    assert np.array_equal(sb.fake, np.clip(np.round(blend(sb.source, sb.target, sb.mask)), 0, 255).astype(np.uint8))
    assert np.array_equal(sb.fake[sb.mask == 0], sb.real[sb.mask == 0])  # outside the mask: the real face, exactly
    plain, off = self_blend(img, lm, seed), self_blend(img, lm, seed, colour_match=0.0, poisson=0.0)
    assert plain.method == "alpha" and not plain.colour_matched
    assert np.array_equal(plain.fake, off.fake)  # off draws no random number: earlier seeds give earlier images


def test_multiband_blend_crosses_colour_wide_and_texture_sharp():
    """Burt-Adelson: a brightness step between source and target spreads over a wide band across the mask's
    edge, the source's fine texture stops within a few pixels of it; beyond the weight's support: the target."""
    from x2dfd.experts.sbi import multiband_blend

    h, w = 64, 128
    target = np.full((h, w, 3), 100, np.uint8)
    yy, xx = np.mgrid[0:h, 0:w]
    checker = np.where((yy + xx) % 2 == 0, 30, -30)[..., None]
    source = np.repeat(np.clip(160 + checker, 0, 255), 3, axis=2).astype(np.uint8)
    mask = np.zeros((h, w), np.float32)
    mask[:, :64] = 1.0
    fake, weight = multiband_blend(source, target, mask, levels=4)
    f = fake.astype(float)
    assert abs(f[:, 4:20].mean() - 160) < 3 and abs(f[:, 4:20].std() - 30) < 4  # the source, texture and all
    outside = f[:, 67:72]  # 3-8 px beyond the edge
    assert outside.mean() > 108  # colour leaks over a wide band...
    assert np.abs(np.diff(outside, axis=1)).mean() < 8  # ...texture (+-30 checker) does not
    assert np.array_equal(fake[weight == 0], target[weight == 0]) and (weight == 0).any()
    assert weight.max() == pytest.approx(1.0) and weight[:, 0].min() > 0.99


@pytest.mark.parametrize("seed", range(3))
def test_multiband_self_blend_and_nothing_drawn_when_off(face, seed):
    img, lm = face
    sb = self_blend(img, lm, seed, multiband=1.0)
    assert sb.method == "multiband" and sb.mask.dtype == np.float32 and sb.mask.max() <= 1.0
    assert np.array_equal(sb.fake[sb.mask == 0], sb.real[sb.mask == 0])
    assert np.abs(sb.fake.astype(int) - sb.real)[sb.mask > 0.5 * sb.ratio].mean() > 1  # a blend happened
    assert np.array_equal(self_blend(img, lm, seed).fake, self_blend(img, lm, seed, multiband=0.0).fake)


def test_colour_match_brings_the_source_to_the_target_colour(face):
    """The source copy is often colour-shifted (source-target augmentation); matched, its LAB mean inside
    the blend region is the target's."""
    img, lm = face

    def gap(sb):
        core = sb.mask > 0.9 * sb.ratio
        lab = [cv2.cvtColor(x, cv2.COLOR_RGB2LAB).astype(np.float32)[core].mean(0) for x in (sb.source, sb.target)]
        return float(np.abs(lab[0] - lab[1]).max())

    matched = [gap(self_blend(img, lm, s, colour_match=1.0)) for s in range(12)]
    plain = [gap(self_blend(img, lm, s)) for s in range(12)]
    assert max(matched) < 5.0  # measured 0.5-3.5 (the source is also shifted a little before the blend)
    assert np.median(plain) > 10.0  # measured 1.9-32: the augmentation shifts most copies


def test_degrade_p_replaces_the_resize_blur_noise_probabilities(face):
    """--degrade-p: at 0 a degraded copy is the face or a JPEG of it (JPEG keeps its own probability);
    at 1 resize, blur and noise always apply; the draws stay identical for the real and the fake."""
    from x2dfd.experts.sbi import degrade, degrade_pair, jpeg

    img = face[0]
    jpegs = [jpeg(img, q) for q in range(30, 96)]
    for s in range(5):
        none = degrade(img, np.random.default_rng(s), 0.0)
        assert np.array_equal(none, img) or any(np.array_equal(none, j) for j in jpegs)
        every = degrade(img, np.random.default_rng(s), 1.0)
        assert not np.array_equal(every, img) and not any(np.array_equal(every, j) for j in jpegs)
        r, f = degrade_pair(img, img, s, 1.0)
        assert np.array_equal(r, f)


@pytest.mark.parametrize("seed", range(4))
def test_focus_blur_sharp_in_focus_soft_away_and_the_same_for_real_and_fake(seed):
    """``--dof``: a shallow depth of field, identical on a real face and its pseudo-fake; the plane of focus
    near the face keeps its texture, the far surround loses it, and the black padding of a crop past the
    photo's edge stays black (the lens blurred the photo, not the padding)."""
    from x2dfd.experts.sbi import focus_blur_pair, focus_weight

    size = 256
    rng = np.random.default_rng(seed)
    img = np.zeros((size, size, 3), np.uint8)
    img[:, 20:] = np.clip(rng.normal(128, 40, (size, size - 20, 3)), 0, 255).astype(np.uint8)  # 20 px of padding
    lm = template_landmarks(size) * 0.5 + size * 0.25  # a half-size face in the middle: surround to blur
    fake = img.copy()
    fake[100:150, 100:150] = 255 - fake[100:150, 100:150]
    r1, f1 = focus_blur_pair(img, fake, lm, np.random.default_rng(seed))
    r2, f2 = focus_blur_pair(img, img, lm, np.random.default_rng(seed))
    assert np.array_equal(r1, r2) and np.array_equal(r2, f2)  # same draws for both, whatever the content
    assert not r1[:, :20].any()  # padding untouched
    w = focus_weight(lm, (size, size), np.random.default_rng(seed))
    assert w.min() == 0.0 and w.max() >= 0.5 and w.dtype == np.float32
    sharp, soft = (w == 0), (w >= 0.5)
    sharp[:, :24], soft[:, :24] = False, False
    diff = np.abs(r1.astype(int) - img)
    assert diff[sharp].max() == 0  # in focus: untouched
    def texture(a):
        return np.abs(np.diff(a.astype(int), axis=1))[soft[:, 1:]].mean()

    assert texture(r1) < 0.5 * texture(img)  # out of focus: soft


def test_focus_weight_is_never_a_face_hull():
    """Radial or planar, the blur's edge does not follow the face outline: over many draws both kinds come up."""
    from x2dfd.experts.sbi import focus_weight

    lm = template_landmarks(128)
    kinds = set()
    for seed in range(20):
        w = focus_weight(lm, (128, 128), np.random.default_rng(seed))
        corners = [w[0, 0], w[0, -1], w[-1, 0], w[-1, -1]]
        kinds.add("radial" if min(corners) > 0 else "planar")
    assert kinds == {"radial", "planar"}
