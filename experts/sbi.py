"""Self-blended images (SBI; Shiohara & Yamasaki, CVPR 2022): pseudo-fakes made from REAL faces only.

    from x2dfd.experts.sbi import self_blend
    sb = self_blend(face_rgb_uint8, landmarks_68x2, seed=0)
    sb.fake, sb.real, sb.mask     # uint8 HxWx3, uint8 HxWx3, float32 HxW in [0, 1]

One real face becomes two differently augmented copies (colour, frequency, sharpness, JPEG: the
"source-target augmentation"); the source copy is shifted/rescaled a little and pasted onto the
target through a landmark convex-hull mask that is randomly deformed and blurred, at a random blend
ratio. ``fake = mask * source + (1 - mask) * target`` exactly (before rounding to uint8), and the real
counterpart is the target itself, so the pair differs only where the mask is non-zero: the
detector can only learn blending artefacts, never identity or image statistics.

Every random choice comes from one ``numpy.random.Generator``: the same seed gives the same images.
OpenCV only (no albumentations); the constants follow the paper's code (SBI ``sbi.py``/``blend.py``),
with kernel sizes scaled to the face size instead of a fixed 380 px crop.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from x2dfd.faceswap import colour_transfer

HULL_KINDS = ("facehull", "extended", "inner", "components")
BLEND_RATIOS = (0.25, 0.5, 0.75, 1.0, 1.0, 1.0)  # SBI's dynamic_blend: full-strength blends most often

# dlib 68-point layout
_JAW = np.arange(0, 17)
_BROWS = np.arange(17, 27)
_NOSE = np.arange(27, 36)
_EYES = np.arange(36, 48)
_MOUTH = np.arange(48, 68)


@dataclass(frozen=True)
class SelfBlend:
    fake: np.ndarray  # uint8 HxWx3: the pseudo-fake, round(mask * source + (1 - mask) * target)
    real: np.ndarray  # uint8 HxWx3: the real counterpart (= target)
    mask: np.ndarray  # float32 HxW in [0, 1]: weight of the source at each pixel (blend ratio included)
    source: np.ndarray  # uint8 HxWx3: the augmented, shifted copy blended in
    target: np.ndarray  # uint8 HxWx3: the copy it was blended onto
    hull: str  # which landmark hull made the mask
    ratio: float  # blend ratio (the mask's maximum)
    method: str = "alpha"  # how the fake was made: "alpha" (the shifted copy through the mask), "poisson" (a
    # gradient-domain clone of it through the mask) or "multiband" (a Laplacian-pyramid blend)
    colour_matched: bool = False  # the source's colour statistics were matched to the target's inside the hull


def _rng(rng: np.random.Generator | int | None) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def _fill_hull(points: np.ndarray, shape: tuple[int, int], into: np.ndarray | None = None) -> np.ndarray:
    mask = np.zeros(shape, np.uint8) if into is None else into
    hull = cv2.convexHull(np.round(points).astype(np.int32))
    cv2.fillConvexPoly(mask, hull, 1)
    return mask


def hull_mask(landmarks: np.ndarray, shape: tuple[int, int], kind: str = "facehull") -> np.ndarray:
    """Binary float32 mask (HxW) from 68 landmarks: ``facehull`` (all points), ``extended`` (the
    hull raised over the forehead), ``inner`` (brows, eyes, nose, mouth: no jaw line) or
    ``components`` (union of the eye-brow, nose and mouth-jaw regions)."""
    lm = np.asarray(landmarks, np.float32).reshape(68, 2)
    if kind == "facehull":
        mask = _fill_hull(lm, shape)
    elif kind == "extended":
        # brows mirrored upward by the brow-to-nose-tip distance / 2, as face-swap masks cover the forehead
        brows = lm[_BROWS].copy()
        lift = (lm[33, 1] - brows[:, 1].mean()) * 0.5
        brows[:, 1] -= lift
        mask = _fill_hull(np.concatenate([lm, brows]), shape)
    elif kind == "inner":
        mask = _fill_hull(lm[17:], shape)
    elif kind == "components":
        mask = _fill_hull(np.concatenate([lm[_BROWS], lm[_EYES]]), shape)
        _fill_hull(lm[_NOSE], shape, mask)
        _fill_hull(np.concatenate([lm[_JAW[3:14]], lm[_MOUTH]]), shape, mask)
    else:
        raise ValueError(f"hull kind must be one of {HULL_KINDS}, got {kind!r}")
    return mask.astype(np.float32)


def deform_mask(mask: np.ndarray, rng: np.random.Generator, strength: float = 0.04) -> np.ndarray:
    """Random smooth deformation: a coarse 4x4 displacement field (up to ``strength`` x face size)
    plus a fine elastic wiggle, so the blend boundary does not follow the hull exactly."""
    h, w = mask.shape
    size = float(max(h, w))
    coarse = rng.uniform(-1, 1, (2, 4, 4)).astype(np.float32) * strength * size
    dx = cv2.resize(coarse[0], (w, h), interpolation=cv2.INTER_CUBIC)
    dy = cv2.resize(coarse[1], (w, h), interpolation=cv2.INTER_CUBIC)
    fine = rng.uniform(-1, 1, (2, h, w)).astype(np.float32)
    for d, f in ((dx, fine[0]), (dy, fine[1])):
        f = cv2.GaussianBlur(f, (0, 0), 0.02 * size)
        d += f / max(float(f.std()), 1e-6) * (0.006 * size)  # ~0.6% of the face size, rms
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    return cv2.remap(mask, gx + dx, gy + dy, cv2.INTER_LINEAR, borderValue=0)


def _odd(x: float) -> int:
    k = max(3, int(round(x)))
    return k if k % 2 else k + 1


def blur_mask(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """SBI's get_blend_mask: blur, keep the saturated core (an erosion), blur again with a random
    kernel and sigma, renormalise to max 1. Kernel sizes are SBI's (5..25 at ~256 px) scaled to the face."""
    h, w = mask.shape
    scale = max(h, w) / 256.0
    k1 = _odd(rng.choice(np.arange(5, 26, 2)) * scale)
    k2 = _odd(rng.choice(np.arange(5, 26, 2)) * scale)
    sigma2 = float(rng.integers(5, 46)) * scale
    m = cv2.GaussianBlur(mask, (k1, k1), 0)
    if m.max() <= 0:
        return m
    m = m / m.max()
    m[m < 1] = 0
    if m.max() <= 0:  # a very thin hull vanished under the erosion: keep the un-eroded one
        m = mask.copy()
    m = cv2.GaussianBlur(m, (k2, k2), sigma2)
    m = m / max(float(m.max()), 1e-6)
    return np.clip(m, 0.0, 1.0).astype(np.float32)


# ---------------------------------------------------------------- augmentations (uint8 RGB in and out)


def _colour(img: np.ndarray, rng: np.random.Generator, p_shift: float = 0.3, p_hsv: float = 1.0, p_bc: float = 1.0) -> np.ndarray:
    out = img.astype(np.float32)
    if rng.random() < p_shift:  # RGBShift(+-20)
        out += rng.uniform(-20, 20, 3).astype(np.float32)
    if rng.random() < p_hsv:  # HueSaturationValue, small
        hsv = cv2.cvtColor(np.clip(out, 0, 255).astype(np.uint8), cv2.COLOR_RGB2HSV).astype(np.float32)
        hsv[..., 0] = (hsv[..., 0] + rng.uniform(-5, 5)) % 180
        hsv[..., 1] *= rng.uniform(0.85, 1.15)
        hsv[..., 2] *= rng.uniform(0.9, 1.1)
        out = cv2.cvtColor(np.clip(hsv, 0, 255).astype(np.uint8), cv2.COLOR_HSV2RGB).astype(np.float32)
    if rng.random() < p_bc:  # RandomBrightnessContrast(+-0.1)
        alpha = 1.0 + rng.uniform(-0.1, 0.1)
        beta = rng.uniform(-0.1, 0.1) * 255.0
        out = (out - 127.5) * alpha + 127.5 + beta
    return np.clip(out, 0, 255).astype(np.uint8)


def downscale(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Frequency change: nearest-neighbour downscale by 2-4x, bilinear upscale (SBI's RandomDownScale)."""
    h, w = img.shape[:2]
    r = rng.uniform(2.0, 4.0)
    small = cv2.resize(img, (max(1, int(w / r)), max(1, int(h / r))), interpolation=cv2.INTER_NEAREST)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def sharpen(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """albumentations Sharpen(alpha 0.2-0.5, lightness 0.5-1.0)."""
    alpha, lightness = rng.uniform(0.2, 0.5), rng.uniform(0.5, 1.0)
    k_sharp = np.array([[-1, -1, -1], [-1, 8 + lightness, -1], [-1, -1, -1]], np.float32)
    k_id = np.zeros((3, 3), np.float32)
    k_id[1, 1] = 1
    kernel = (1 - alpha) * k_id + alpha * k_sharp
    return np.clip(cv2.filter2D(img.astype(np.float32), -1, kernel), 0, 255).astype(np.uint8)


def jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    assert ok
    return cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def augment_copy(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Source-target augmentation of one copy: colour, then one of frequency (downscale, blur),
    sharpness or JPEG, so that source and target statistics differ as in a real face swap."""
    out = _colour(img, rng)
    choice = rng.integers(4)
    if choice == 0:
        out = downscale(out, rng)
    elif choice == 1:
        out = sharpen(out, rng)
    elif choice == 2:
        out = jpeg(out, int(rng.integers(30, 80)))
    else:
        out = cv2.GaussianBlur(out, (0, 0), rng.uniform(0.6, 1.6))
    return out


def random_shift(img: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """SBI's randaffine for the source and its mask: translate +-3% (x) / +-1.5% (y), scale 0.95-1.05."""
    h, w = mask.shape
    s = rng.uniform(0.95, 1 / 0.95)
    tx, ty = rng.uniform(-0.03, 0.03) * w, rng.uniform(-0.015, 0.015) * h
    m = cv2.getRotationMatrix2D((w / 2, h / 2), 0.0, s)
    m[:, 2] += (tx, ty)
    img2 = cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    mask2 = cv2.warpAffine(mask, m, (w, h), flags=cv2.INTER_LINEAR, borderValue=0)
    return img2, mask2


def blend(source: np.ndarray, target: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``mask * source + (1 - mask) * target`` as float32 (mask HxW in [0, 1])."""
    m = mask[..., None].astype(np.float32)
    return m * source.astype(np.float32) + (1.0 - m) * target.astype(np.float32)


def poisson_clone(source: np.ndarray, target: np.ndarray, mask: np.ndarray) -> np.ndarray | None:
    """``source`` cloned into ``target`` in the gradient domain (``cv2.seamlessClone``, NORMAL_CLONE) over
    the core of ``mask`` (where it is at least half its maximum), as classical face-swap tools blend: the
    source keeps its gradients and takes the target's colours at the boundary. The result is meant to be
    composited back through ``mask`` (OpenCV solves over the core's bounding box, not the core alone).
    None when the core is empty once kept 2 px off the image border."""
    core = (mask >= 0.5 * float(mask.max())).astype(np.uint8) * 255 if mask.max() > 0 else np.zeros(mask.shape, np.uint8)
    core[:2, :] = core[-2:, :] = 0
    core[:, :2] = core[:, -2:] = 0
    if not core.any():
        return None
    x, y, bw, bh = cv2.boundingRect(core)
    centre = (x + bw // 2, y + bh // 2)  # maps the core's bounding box onto itself
    return cv2.seamlessClone(np.ascontiguousarray(source), np.ascontiguousarray(target), core, centre, cv2.NORMAL_CLONE)


def multiband_blend(source: np.ndarray, target: np.ndarray, mask: np.ndarray, levels: int) -> tuple[np.ndarray, np.ndarray]:
    """Burt-Adelson multi-band blend of ``source`` into ``target`` through ``mask`` (HxW in [0, 1], a sharp
    edge): each band of the Laplacian pyramid is blended through the mask's Gaussian pyramid at that level,
    so colour and shading cross a wide band while fine texture switches within a few pixels (the blend of
    ``x2dfd.faceswap2``'s pyramid swap and of panorama / face-swap tools). Returns (fake uint8, the source's
    weight per pixel as a float32 mask: ``mask`` blurred to the coarsest band's reach). Outside that weight's
    support the fake is the target, exactly."""
    from x2dfd.faceswap2 import laplacian_blend

    fake = laplacian_blend(source, target, mask, levels=levels)
    weight = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), 2.0 ** (levels - 1))
    weight *= float(mask.max()) / max(float(weight.max()), 1e-6)
    weight[weight < 1e-3] = 0.0
    fake = np.clip(np.round(fake), 0, 255).astype(np.uint8)
    fake[weight == 0] = target[weight == 0]
    return fake, np.clip(weight, 0.0, 1.0).astype(np.float32)


def self_blend(
    image: np.ndarray,
    landmarks: np.ndarray,
    rng: np.random.Generator | int | None = None,
    hull: str | None = None,
    colour_match: float = 0.0,
    poisson: float = 0.0,
    multiband: float = 0.0,
) -> SelfBlend:
    """One self-blended pseudo-fake of a real face (uint8 HxWx3 RGB, 68 landmarks in its pixel coords).

    ``colour_match`` and ``poisson`` are probabilities of two steps classical face swaps take and SBI
    does not (training options ``--colour-match`` and ``--poisson``): the source copy's LAB mean/std
    inside the hull matched to the target's (``x2dfd.faceswap.colour_transfer``, so a colour shift alone
    does not give the blend away), and a gradient-domain clone of the source (``poisson_clone``) in
    place of the shifted copy. Either way ``fake = mask * source + (1 - mask) * target``. ``multiband`` is the
    probability of a third step, from ``x2dfd.faceswap2``'s pyramid swap (training option ``--multiband``): the
    deformed hull, only lightly softened, blends the copy in band by band (``multiband_blend``, 3-5 levels);
    then ``mask`` is the source's low-frequency weight and the identity holds only outside it (fake = real).
    At 0 (the default, and every validation view) no extra random number is drawn: the same seed gives the
    same images as before."""
    rng = _rng(rng)
    img = np.ascontiguousarray(image, dtype=np.uint8)
    h, w = img.shape[:2]
    kind = hull or HULL_KINDS[int(rng.integers(len(HULL_KINDS)))]
    mask = hull_mask(landmarks, (h, w), kind)

    # Source-target augmentation: one copy (chosen at random) is augmented, the other kept.
    source, target = img.copy(), img.copy()
    if rng.random() < 0.5:
        source = augment_copy(source, rng)
    else:
        target = augment_copy(target, rng)
    matched = colour_match > 0 and rng.random() < colour_match
    if matched:
        source = colour_transfer(source, target, mask)
    source, mask = random_shift(source, mask, rng)
    mask = deform_mask(mask, rng)
    hull_edge = mask
    mask = blur_mask(mask, rng)
    ratio = float(BLEND_RATIOS[int(rng.integers(len(BLEND_RATIOS)))])
    mask = (mask * ratio).astype(np.float32)
    if multiband > 0 and rng.random() < multiband:
        levels = int(rng.integers(3, 6))
        edge = cv2.GaussianBlur(hull_edge, (0, 0), max(1.0, max(h, w) / 256.0)) * ratio
        fake, mask = multiband_blend(source, target, edge, levels)
        return SelfBlend(fake=fake, real=target, mask=mask, source=source, target=target, hull=kind, ratio=ratio,
                         method="multiband", colour_matched=matched)
    method = "alpha"
    if poisson > 0 and rng.random() < poisson:
        cloned = poisson_clone(source, target, mask)
        if cloned is not None:
            source, method = cloned, "poisson"
    fake = np.clip(np.round(blend(source, target, mask)), 0, 255).astype(np.uint8)
    return SelfBlend(fake=fake, real=target, mask=mask, source=source, target=target, hull=kind, ratio=ratio,
                     method=method, colour_matched=matched)


def augment_pair(real: np.ndarray, fake: np.ndarray, rng: np.random.Generator | int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The same colour jitter and JPEG quality applied to a real face and its pseudo-fake (SBI's shared
    train transforms): nuisance variation the detector must ignore, since both classes get it."""
    rng = _rng(rng)
    out = []
    quality = int(rng.integers(40, 101)) if rng.random() < 0.5 else None
    seed = int(rng.integers(2**31))
    for img in (real, fake):
        sub = np.random.default_rng(seed)  # identical draws for both images
        x = _colour(img, sub, p_shift=0.3, p_hsv=0.3, p_bc=0.3)
        if quality is not None:
            x = jpeg(x, quality)
        out.append(x)
    return out[0], out[1]


# ------------------------------------------------ degradations shared by real and fake (robustness)

#: (probability, range) of each degradation in ``degrade_pair``; the ranges cover what bench/eval_experts.py
#: measures (jpeg:50, blur:1, resize:0.5, noise:0.02) and more, so robustness is learnt, not tuned to a point.
DEGRADATIONS = {
    "resize": (0.3, (0.3, 0.9)),  # down by this factor (area), back up (bilinear or bicubic)
    "blur": (0.3, (0.3, 2.0)),  # Gaussian sigma in pixels at the training size
    "noise": (0.25, (0.003, 0.04)),  # Gaussian noise std, fraction of 255
    "jpeg": (0.6, (30, 95)),  # JPEG quality, applied last (as a re-upload would)
}


def jitter_landmarks(landmarks: np.ndarray, rng: np.random.Generator, strength: float = 0.015) -> np.ndarray:
    """Landmark noise (a detector's error): each point moved by N(0, strength x face size) plus one
    shared shift, so hulls built from them do not follow the true face outline exactly."""
    lm = np.asarray(landmarks, np.float32).reshape(68, 2)
    size = _face_size(lm)
    return (lm + rng.normal(0, strength * size, lm.shape) + rng.normal(0, strength * size, (1, 2))).astype(np.float32)


def _face_size(landmarks: np.ndarray) -> float:
    """The larger side of the landmarks' bounding box in pixels (at least 1): the unit of face-relative noise."""
    return float(max(np.ptp(landmarks[:, 0]), np.ptp(landmarks[:, 1]), 1.0))


def degrade(img: np.ndarray, rng: np.random.Generator, p_loss: float | None = None) -> np.ndarray:
    """Random resize down/up, blur, noise and JPEG (each with its ``DEGRADATIONS`` probability; ``p_loss``,
    when given, replaces the probability of each of resize, blur and noise: training option ``--degrade-p``)."""
    out = img
    h, w = img.shape[:2]
    p, (lo, hi) = DEGRADATIONS["resize"]
    p = p if p_loss is None else p_loss
    if rng.random() < p:
        f = rng.uniform(lo, hi)
        small = cv2.resize(out, (max(8, int(w * f)), max(8, int(h * f))), interpolation=cv2.INTER_AREA)
        out = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR if rng.random() < 0.5 else cv2.INTER_CUBIC)
    p, (lo, hi) = DEGRADATIONS["blur"]
    p = p if p_loss is None else p_loss
    if rng.random() < p:
        out = cv2.GaussianBlur(out, (0, 0), rng.uniform(lo, hi))
    p, (lo, hi) = DEGRADATIONS["noise"]
    p = p if p_loss is None else p_loss
    if rng.random() < p:
        noise = rng.normal(0, rng.uniform(lo, hi) * 255.0, out.shape).astype(np.float32)
        out = np.clip(out.astype(np.float32) + noise, 0, 255).astype(np.uint8)
    p, (lo, hi) = DEGRADATIONS["jpeg"]
    if rng.random() < p:
        out = jpeg(out, int(rng.integers(lo, hi + 1)))
    return np.ascontiguousarray(out)


def degrade_pair(real: np.ndarray, fake: np.ndarray, rng: np.random.Generator | int | None = None,
                 p_loss: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``degrade`` with identical draws for a real face and its pseudo-fake: the degradation says nothing
    about the label, so the detector must find the blend under it."""
    rng = _rng(rng)
    seed = int(rng.integers(2**31))
    return degrade(real, np.random.default_rng(seed), p_loss), degrade(fake, np.random.default_rng(seed), p_loss)


# ------------------------------------------------ shallow depth of field, shared by real and fake

def focus_weight(landmarks: np.ndarray, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Where a photo's depth of field would blur, as a weight in [0, 1] (HxW float32): 0 in the plane of
    focus near the face, rising smoothly away from it. Either radial (focus on the face, the surround
    blurred: hair, ears, shoulders, background) or planar (a tilted plane of focus: one side of a turned
    head sharp, the far side soft). Its edge follows no face hull, so a sharpness change alone does not
    mark a blend."""
    lm = np.asarray(landmarks, np.float32).reshape(-1, 2)
    size = _face_size(lm)
    h, w = shape
    cx, cy = lm.mean(axis=0) + rng.normal(0, 0.1 * size, 2)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    if rng.random() < 0.6:
        squash = rng.uniform(0.7, 1.0)  # a face is taller than wide: the sharp region too
        d = np.hypot(xs - cx, (ys - cy) * squash) / size
        start = rng.uniform(0.35, 0.9)
    else:
        theta = rng.uniform(0, 2 * np.pi)
        d = ((xs - cx) * np.cos(theta) + (ys - cy) * np.sin(theta)) / size
        start = rng.uniform(0.0, 0.5)  # the face's centre stays in focus
    return np.clip((d - start) / rng.uniform(0.3, 1.2), 0.0, 1.0).astype(np.float32)


def focus_blur_pair(real: np.ndarray, fake: np.ndarray, landmarks: np.ndarray,
                    rng: np.random.Generator | int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The same shallow depth of field (``focus_weight``; Gaussian blur up to sigma 1.5-6 px, two levels
    interpolated) on a real face and its pseudo-fake (training option ``--dof``): professional photos blur
    what is out of the plane of focus, so the detector must not read every sharpness change as a blend."""
    rng = _rng(rng)
    weight = focus_weight(landmarks, real.shape[:2], rng)[..., None]
    sigma = rng.uniform(1.5, 6.0)
    lo, hi = np.minimum(weight * 2, 1.0), np.clip(weight * 2 - 1, 0.0, 1.0)
    # a crop past the photo's edge is padded black (x2dfd.face.crop_face): the lens blurred the photo, not
    # the padding, so blur within the photo's rectangle only (normalised) and keep the padding black
    valid = _photo_rect(real)[..., None]
    levels = [(amount, s, np.maximum(cv2.GaussianBlur(valid[..., 0], (0, 0), s)[..., None], 1e-3))
              for amount, s in ((lo, sigma / 2), (hi, sigma))]  # the normaliser is the same for both images
    out = []
    for img in (real, fake):
        x = img.astype(np.float32) * valid
        y = x
        for amount, s, norm in levels:
            y = (1 - amount) * y + amount * (cv2.GaussianBlur(x, (0, 0), s) / norm)
        out.append(np.clip(np.round(y * valid + img * (1 - valid)), 0, 255).astype(np.uint8))
    return out[0], out[1]


def _photo_rect(img: np.ndarray) -> np.ndarray:
    """1.0 inside the bounding rectangle of the rows and columns that are not all black, 0.0 outside."""
    lit = img.reshape(img.shape[0], img.shape[1], -1).max(axis=2) > 0
    rows, cols = np.flatnonzero(lit.any(axis=1)), np.flatnonzero(lit.any(axis=0))
    rect = np.zeros(img.shape[:2], np.float32)
    if rows.size and cols.size:
        rect[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1] = 1.0
    return rect
