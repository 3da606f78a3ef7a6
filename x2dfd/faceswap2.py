"""A second, different classical face swap, for evaluation. Since its Laplacian-pyramid blend became a training
step of the blend expert (``x2dfd expert train --multiband``), its sets count as tuning sets; the independent
test is ``x2dfd.faceswap3``.

    from x2dfd.faceswap2 import make_face_swap2, METHODS
    fake, mask = make_face_swap2(load_image("a.jpg"), load_image("b.jpg"), method="similarity")  # a's face on b

``x2dfd.faceswap`` (the project's first swap) is a piecewise-affine warp over Delaunay triangles,
Reinhard LAB colour transfer, Poisson blending (``cv2.seamlessClone``) and a feathered composite. A
detector tuned on one implementation can learn its fingerprints, so this module shares none of those
steps and ships three variants:

* ``similarity``: ONE global similarity transform (Procrustes / Umeyama on the 68 landmarks) moves the
  whole source face; colour corrected by the ratio of Gaussian-blurred images (Matthew Earl's
  "Switching eds with Python" recipe, blur = 0.6 x pupil distance); the mask is the union of the
  eyes+brows, nose and mouth hulls, dilated and Gaussian-feathered; a plain alpha blend.
* ``similarity_nocolour``: the same without any colour correction (the source's skin tone comes along).
* ``pyramid``: the same similarity warp, per-channel histogram (CDF) matching inside the face, then a
  Laplacian-pyramid blend (Burt & Adelson) through the landmark face hull.

Every variant returns ``(fake RGB PIL image of the target's size, uint8 HxW mask)``: 255 where the pixels
are the swapped face's, 0 where they are exactly the target's. Raises NoFaceError when either image has
no detectable face.
"""

from __future__ import annotations

import cv2
import numpy as np
from PIL import Image

from x2dfd.errors import NoFaceError

METHODS = ("similarity", "similarity_nocolour", "pyramid")

_BROWS_EYES = list(range(17, 27)) + list(range(36, 48))
_NOSE = list(range(27, 36))
_MOUTH = list(range(48, 68))
_LEFT_EYE, _RIGHT_EYE = list(range(36, 42)), list(range(42, 48))
ALIGN_POINTS = list(range(17, 68))  # brows, eyes, nose, mouth: the jaw line is pose-dependent


def _landmarks(image: np.ndarray, detector, role: str) -> np.ndarray:
    faces = detector.detect(image)
    if not faces:
        raise NoFaceError(f"face swap: no face found in the {role} image")
    if faces[0].landmarks is None:
        raise NoFaceError(f"face swap: no landmarks for the {role} face (detector ran with landmarks=False)")
    return np.asarray(faces[0].landmarks, np.float64).reshape(68, 2)


def swap_inputs(source: Image.Image, target: Image.Image, detector=None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(source RGB array, target RGB array, source landmarks, target landmarks (68x2 float64)); NoFaceError
    naming the image without a face."""
    from x2dfd.face import get_detector

    detector = detector or get_detector()
    src = np.ascontiguousarray(np.asarray(source.convert("RGB")))
    dst = np.ascontiguousarray(np.asarray(target.convert("RGB")))
    return src, dst, _landmarks(src, detector, "source"), _landmarks(dst, detector, "target")


def similarity_transform(src_pts: np.ndarray, dst_pts: np.ndarray) -> np.ndarray:
    """2x3 matrix of the least-squares similarity (rotation, uniform scale, translation) src -> dst
    (Umeyama 1991, without reflection)."""
    src = np.asarray(src_pts, np.float64)
    dst = np.asarray(dst_pts, np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s0, d0 = src - mu_s, dst - mu_d
    var_s = (s0**2).sum() / len(src)
    cov = d0.T @ s0 / len(src)
    u, sig, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[-1] = -1
    r = u @ np.diag(d) @ vt
    scale = (sig * d).sum() / max(var_s, 1e-12)
    t = mu_d - scale * r @ mu_s
    return np.hstack([scale * r, t[:, None]])


def components_mask(landmarks: np.ndarray, shape: tuple[int, int], grow: float = 0.08, feather: float = 0.06) -> np.ndarray:
    """float32 HxW in [0, 1]: union of the eyes+brows, nose and mouth hulls, dilated by ``grow`` x face
    width and Gaussian-feathered over ``feather`` x face width (Earl's overlay mask)."""
    h, w = shape
    mask = np.zeros((h, w), np.uint8)
    for group in (_BROWS_EYES, _NOSE, _MOUTH):
        cv2.fillConvexPoly(mask, cv2.convexHull(np.round(landmarks[group]).astype(np.int32)), 255)
    face_w = float(np.ptp(landmarks[:, 0]))
    k = max(1, int(round(grow * face_w)))
    mask = cv2.dilate(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * k + 1, 2 * k + 1)))
    sigma = max(1.0, feather * face_w / 2)
    m = cv2.GaussianBlur(mask.astype(np.float32) / 255.0, (0, 0), sigma)
    return np.clip(m / max(float(m.max()), 1e-6), 0.0, 1.0)


def hull_mask(landmarks: np.ndarray, shape: tuple[int, int], shrink: float = 0.03) -> np.ndarray:
    """float32 HxW in {0, 1}: the convex hull of all 68 landmarks, eroded by ``shrink`` x face width."""
    mask = np.zeros(shape, np.uint8)
    cv2.fillConvexPoly(mask, cv2.convexHull(np.round(landmarks).astype(np.int32)), 1)
    k = int(round(shrink * float(np.ptp(landmarks[:, 0]))))
    if k > 0:
        mask = cv2.erode(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * k + 1, 2 * k + 1)))
    return mask.astype(np.float32)


def blur_ratio_colour(warped: np.ndarray, target: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """Earl's colour correction: warped * blur(target) / blur(warped), blur sigma ~ 0.6 x pupil distance."""
    pupils = np.linalg.norm(landmarks[_LEFT_EYE].mean(0) - landmarks[_RIGHT_EYE].mean(0))
    k = int(round(0.6 * pupils)) | 1
    t_blur = cv2.GaussianBlur(target.astype(np.float32), (k, k), 0)
    w_blur = cv2.GaussianBlur(warped.astype(np.float32), (k, k), 0)
    w_blur += 128.0 * (w_blur <= 1.0)  # avoid dividing by ~0
    return np.clip(warped.astype(np.float32) * t_blur / w_blur, 0, 255).astype(np.uint8)


def match_histograms(source: np.ndarray, target: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per-channel CDF matching of ``source``'s pixels inside ``mask`` to ``target``'s (whole image remapped)."""
    sel = mask > 0.5
    out = np.empty_like(source)
    for c in range(3):
        s_vals, t_vals = source[..., c][sel], target[..., c][sel]
        s_cdf = np.cumsum(np.bincount(s_vals, minlength=256)).astype(np.float64)
        t_cdf = np.cumsum(np.bincount(t_vals, minlength=256)).astype(np.float64)
        s_cdf /= max(s_cdf[-1], 1.0)
        t_cdf /= max(t_cdf[-1], 1.0)
        lut = np.interp(s_cdf, t_cdf, np.arange(256)).round().clip(0, 255).astype(np.uint8)
        out[..., c] = lut[source[..., c]]
    return out


def laplacian_blend(a: np.ndarray, b: np.ndarray, mask: np.ndarray, levels: int = 5) -> np.ndarray:
    """Burt-Adelson multiband blend: ``mask`` (HxW in [0, 1]) selects ``a`` over ``b``; float32 out."""
    h, w = mask.shape
    levels = max(1, min(levels, int(np.log2(max(2, min(h, w) // 8)))))
    ga, gb, gm = [a.astype(np.float32)], [b.astype(np.float32)], [mask.astype(np.float32)]
    for _ in range(levels):
        ga.append(cv2.pyrDown(ga[-1]))
        gb.append(cv2.pyrDown(gb[-1]))
        gm.append(cv2.pyrDown(gm[-1]))
    out = gm[-1][..., None] * ga[-1] + (1 - gm[-1][..., None]) * gb[-1]
    for i in range(levels - 1, -1, -1):
        size = (ga[i].shape[1], ga[i].shape[0])
        la = ga[i] - cv2.pyrUp(ga[i + 1], dstsize=size)
        lb = gb[i] - cv2.pyrUp(gb[i + 1], dstsize=size)
        m = gm[i][..., None]
        out = cv2.pyrUp(out, dstsize=size) + m * la + (1 - m) * lb
    return out


def make_face_swap2(source: Image.Image, target: Image.Image, method: str = "similarity", detector=None,
                    seed: int = 0) -> tuple[Image.Image, np.ndarray]:
    """``source``'s face on ``target`` with one of ``METHODS`` (see the module docstring).
    ``seed`` varies the mask's growth a little (as make_face_swap's erosion does)."""
    if method not in METHODS:
        raise ValueError(f"Unknown face swap method '{method}'. Available: {', '.join(METHODS)}.")
    src, dst, s_lm, t_lm = swap_inputs(source, target, detector)
    h, w = dst.shape[:2]
    rng = np.random.default_rng(seed)

    m = similarity_transform(s_lm[ALIGN_POINTS], t_lm[ALIGN_POINTS])
    warped = cv2.warpAffine(src, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    s_lm_w = s_lm @ m[:, :2].T + m[:, 2]  # the source landmarks where the warp put them

    if method == "pyramid":
        face = hull_mask(t_lm, (h, w), shrink=rng.uniform(0.0, 0.05)) * hull_mask(s_lm_w, (h, w), shrink=0.0)
        if face.sum() < 16:
            raise NoFaceError("face swap: the target face is too small to blend into")
        warped = match_histograms(warped, dst, face)
        alpha = cv2.GaussianBlur(face, (0, 0), max(1.0, 0.01 * float(np.ptp(t_lm[:, 0]))))
        fake = laplacian_blend(warped, dst, alpha)
        # outside the (blurred) hull the multiband blend still leaks low frequencies: keep the target there
        keep = cv2.dilate((alpha > 1e-3).astype(np.uint8), np.ones((3, 3), np.uint8)).astype(np.float32)
        keep = cv2.GaussianBlur(keep, (0, 0), 2.0) * (keep > 0)
        fake = keep[..., None] * fake + (1 - keep[..., None]) * dst.astype(np.float32)
        out_mask = keep
    else:
        alpha = components_mask(t_lm, (h, w), grow=rng.uniform(0.06, 0.12)) * components_mask(s_lm_w, (h, w), grow=0.12)
        alpha = alpha / max(float(alpha.max()), 1e-6)
        if alpha.sum() < 16:
            raise NoFaceError("face swap: the target face is too small to blend into")
        if method == "similarity":
            warped = blur_ratio_colour(warped, dst, t_lm)
        alpha[alpha < 1e-3] = 0.0
        fake = alpha[..., None] * warped.astype(np.float32) + (1 - alpha[..., None]) * dst.astype(np.float32)
        out_mask = alpha
    fake = np.clip(np.round(fake), 0, 255).astype(np.uint8)
    out = np.round(np.clip(out_mask, 0, 1) * 255).astype(np.uint8)
    fake[out == 0] = dst[out == 0]
    return Image.fromarray(fake), out
