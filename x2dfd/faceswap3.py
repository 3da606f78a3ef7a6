"""A third classical face swap, for EVALUATION only: the independent test of training steps that took ideas
from ``x2dfd.faceswap2`` (multi-band blending, part masks).

    from x2dfd.faceswap3 import make_face_swap3
    fake, mask = make_face_swap3(load_image("a.jpg"), load_image("b.jpg"))   # a's face on b

``x2dfd.faceswap`` warps piecewise-affinely over Delaunay triangles, moves colour with Reinhard's LAB
transfer and blends with a Poisson clone through the landmark hull; ``x2dfd.faceswap2`` moves the face
with one similarity transform, corrects colour by a blurred-image ratio or histogram matching, and blends
through a union of eye / nose / mouth hulls or a Laplacian pyramid. This module shares none of those steps:

* warp: a dense thin-plate spline (Bookstein 1989) fitted on the 68 landmark pairs (target -> source
  coordinates, with a little smoothing) and applied with ``cv2.remap``: a smooth non-rigid warp, neither
  piecewise affine nor rigid;
* colour: the linear Monge-Kantorovich transfer (Pitie & Kokaram 2007): the source face's RGB mean and
  full 3x3 covariance are mapped onto the target face's, so cross-channel colour casts move too;
* mask: an ellipse fitted to the jaw line and the brows raised by a fraction of the face height (not a
  landmark hull), shrunk at random;
* blend: alpha compositing through a LINEAR ramp of the distance to the ellipse's edge (a distance
  transform; not a Gaussian feather, not gradient-domain, not multi-band).

Returns ``(fake RGB PIL image of the target's size, uint8 HxW mask)``: 255 where the pixels are the swapped
face's, 0 where they are exactly the target's. Raises NoFaceError when either image has no detectable face.
"""

from __future__ import annotations

import cv2
import numpy as np
from PIL import Image

from x2dfd.errors import NoFaceError
from x2dfd.faceswap2 import swap_inputs

_JAW, _BROWS = list(range(0, 17)), list(range(17, 27))


def tps_map(target_pts: np.ndarray, source_pts: np.ndarray, shape: tuple[int, int], box: tuple[int, int, int, int],
            smoothing: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    """``cv2.remap`` maps (x, y float32 arrays of ``shape``) that take each pixel inside ``box`` (x0, y0, x1, y1)
    of the target to where the thin-plate spline through the landmark pairs puts it in the source; pixels
    outside ``box`` map to -1 (nothing)."""
    from scipy.interpolate import RBFInterpolator

    h, w = shape
    map_x = np.full((h, w), -1.0, np.float32)
    map_y = np.full((h, w), -1.0, np.float32)
    x0, y0, x1, y1 = box
    if x1 <= x0 or y1 <= y0:
        return map_x, map_y
    spline = RBFInterpolator(target_pts, source_pts, kernel="thin_plate_spline", smoothing=smoothing, degree=1)
    gy, gx = np.mgrid[y0:y1, x0:x1]
    mapped = spline(np.column_stack([gx.ravel(), gy.ravel()]).astype(np.float64))
    map_x[y0:y1, x0:x1] = mapped[:, 0].reshape(gx.shape)
    map_y[y0:y1, x0:x1] = mapped[:, 1].reshape(gx.shape)
    return map_x, map_y


def linear_colour_transfer(source: np.ndarray, target: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Monge-Kantorovich linear colour transfer: source pixels (RGB uint8) moved so that, inside ``mask``,
    their mean and covariance are the target's. Returns float32 RGB (unclipped)."""
    sel = mask > 0.5
    s = source[sel].astype(np.float64)
    t = target[sel].astype(np.float64)
    if len(s) < 16:
        return source.astype(np.float32)
    mu_s, mu_t = s.mean(0), t.mean(0)
    cov_s = np.cov(s, rowvar=False) + np.eye(3) * 1e-3
    cov_t = np.cov(t, rowvar=False) + np.eye(3) * 1e-3

    def sqrtm(c: np.ndarray) -> np.ndarray:
        vals, vecs = np.linalg.eigh(c)
        return (vecs * np.sqrt(np.clip(vals, 1e-9, None))) @ vecs.T

    cs = sqrtm(cov_s)
    cs_inv = np.linalg.inv(cs)
    transfer = cs_inv @ sqrtm(cs @ cov_t @ cs) @ cs_inv
    flat = source.reshape(-1, 3).astype(np.float64)
    out = (flat - mu_s) @ transfer.T + mu_t
    return out.reshape(source.shape).astype(np.float32)


def ellipse_mask(landmarks: np.ndarray, shape: tuple[int, int], brow_lift: float = 0.12, shrink: float = 0.0) -> np.ndarray:
    """uint8 {0, 1} mask: the ellipse fitted to the jaw line and the brows lifted by ``brow_lift`` x the face
    height, its axes scaled by ``1 - shrink``."""
    pts = landmarks[_JAW + _BROWS].astype(np.float64).copy()
    height = float(np.ptp(landmarks[:, 1]))
    pts[len(_JAW):, 1] -= brow_lift * height
    (cx, cy), (a, b), angle = cv2.fitEllipse(pts.astype(np.float32))
    mask = np.zeros(shape, np.uint8)
    axes = (max(1, int(round(a * (1 - shrink) / 2))), max(1, int(round(b * (1 - shrink) / 2))))
    cv2.ellipse(mask, (int(round(cx)), int(round(cy))), axes, angle, 0, 360, 1, -1)
    return mask


def make_face_swap3(source: Image.Image, target: Image.Image, detector=None, seed: int = 0) -> tuple[Image.Image, np.ndarray]:
    """``source``'s face on ``target`` (see the module docstring). ``seed`` varies the mask's shrink and the
    width of its linear ramp a little."""
    src, dst, s_lm, t_lm = swap_inputs(source, target, detector)
    h, w = dst.shape[:2]
    rng = np.random.default_rng(seed)

    region = ellipse_mask(t_lm, (h, w), shrink=rng.uniform(0.0, 0.06))
    ys, xs = np.nonzero(region)
    if len(xs) < 64:
        raise NoFaceError("face swap: the target face is too small to blend into")
    box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
    map_x, map_y = tps_map(t_lm, s_lm, (h, w), box)
    warped = cv2.remap(src, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    # where the spline lands outside the source picture there is no face to take
    inside = ((map_x >= 0) & (map_x <= src.shape[1] - 1) & (map_y >= 0) & (map_y <= src.shape[0] - 1)).astype(np.uint8)
    region = region * inside
    if region.sum() < 64:
        raise NoFaceError("face swap: the warped source face falls outside the source picture")
    warped = linear_colour_transfer(warped, dst, cv2.erode(region, np.ones((5, 5), np.uint8)))

    ramp = max(2.0, rng.uniform(0.06, 0.12) * float(np.ptp(t_lm[:, 0])))
    dist = cv2.distanceTransform(region, cv2.DIST_L2, 5)
    alpha = np.clip(dist / ramp, 0.0, 1.0).astype(np.float32)
    fake = alpha[..., None] * warped + (1 - alpha[..., None]) * dst.astype(np.float32)
    fake = np.clip(np.round(fake), 0, 255).astype(np.uint8)
    out = np.round(alpha * 255).astype(np.uint8)
    fake[out == 0] = dst[out == 0]
    return Image.fromarray(fake), out
