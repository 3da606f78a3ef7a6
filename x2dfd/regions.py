"""Named facial regions from dlib's 68 landmarks, and where a heatmap concentrates among them.

    from x2dfd.regions import region_map, heat_by_region
    labels, names = region_map(landmarks, (h, w))         # int label per pixel, names[label]
    summary = heat_by_region(heatmap, landmarks)           # where the hot pixels lie, by region

Left and right are **as seen in the picture** (image left / image right), not the subject's own left
and right: dlib's point 0 (the subject's right jaw) is on the image's left for a frontal face.

How a pixel gets its region (a documented rule, no learned model): every pixel is given the region of
its nearest *anchor* point. Anchors are the 68 landmarks grouped by part (jaw 0-5 / 6-10 / 11-16,
eyebrows 17-21 / 22-26, nose bridge 27-30, nose tip and nostrils 31-35, eyes 36-41 / 42-47, mouth
48-67), cheek anchors half-way between the jaw and the nose / mouth corners, and two rows of points
above the eyebrows (the eyebrows moved up along the chin-to-nose-bridge axis by 0.25 and 0.5 of the
chin-to-nose-bridge distance): "forehead" and "forehead/face boundary" (where the hairline usually
is). A pixel farther than a margin (0.12 x that distance) outside the hull of all anchors is "outside
the face" (background, hair, neck).
"""

from __future__ import annotations

from typing import Any

import numpy as np

OUTSIDE = "outside the face"
# (name, landmark indices); order = label numbers
GROUPS: tuple[tuple[str, tuple[int, ...]], ...] = (
    ("left jaw line", tuple(range(0, 6))),
    ("chin", tuple(range(6, 11))),
    ("right jaw line", tuple(range(11, 17))),
    ("left eyebrow", tuple(range(17, 22))),
    ("right eyebrow", tuple(range(22, 27))),
    ("nose bridge", tuple(range(27, 31))),
    ("nose tip and nostrils", tuple(range(31, 36))),
    ("left eye", tuple(range(36, 42))),
    ("right eye", tuple(range(42, 48))),
    ("around the mouth", tuple(range(48, 68))),
)
EXTRA = ("left cheek", "right cheek", "forehead", "forehead/face boundary")
NAMES: tuple[str, ...] = tuple(g[0] for g in GROUPS) + EXTRA + (OUTSIDE,)
GRID = 64  # regions and heat shares are computed on a GRID x GRID resampling of the crop


def anchors(landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(points (N, 2), labels (N,))``: the anchor points of every named region (index into NAMES)."""
    lm = np.asarray(landmarks, np.float64).reshape(68, 2)
    pts: list[np.ndarray] = []
    labels: list[int] = []
    for label, (_, idx) in enumerate(GROUPS):
        pts.append(lm[list(idx)])
        labels += [label] * len(idx)
    n = len(GROUPS)
    # cheeks: half-way between the jaw (points 1-4 / 12-15) and the nose wing / mouth corner
    for side, (jaw, inner) in enumerate((((1, 2, 3, 4), (31, 31, 48, 48)), ((15, 14, 13, 12), (35, 35, 54, 54)))):
        cheek = (lm[list(jaw)] + lm[list(inner)]) / 2.0
        pts.append(cheek)
        labels += [n + side] * len(cheek)
    up = lm[27] - lm[8]  # chin -> nose bridge
    length = float(np.hypot(*up)) or 1.0
    brows = lm[17:27]
    for k, frac in ((2, 0.25), (3, 0.5)):
        pts.append(brows + up * frac)
        labels += [n + k] * len(brows)
    return np.concatenate(pts), np.asarray(labels, np.int32)


def face_scale(landmarks: np.ndarray) -> float:
    lm = np.asarray(landmarks, np.float64).reshape(68, 2)
    return float(np.hypot(*(lm[27] - lm[8]))) or 1.0


def region_map(landmarks: np.ndarray, shape: tuple[int, int], grid: int | None = None) -> tuple[np.ndarray, tuple[str, ...]]:
    """An int32 label image (``grid`` x ``grid`` when given, else ``shape``) over a crop of ``shape`` = (h, w)
    whose landmarks (68, 2, crop pixels) are given; ``NAMES[label]`` names each pixel's region."""
    import cv2

    h, w = int(shape[0]), int(shape[1])
    gh, gw = (grid, grid) if grid else (h, w)
    pts, labels = anchors(landmarks)
    ys, xs = np.mgrid[0:gh, 0:gw].astype(np.float32)
    xs = (xs + 0.5) * (w / gw)
    ys = (ys + 0.5) * (h / gh)
    pix = np.stack([xs.ravel(), ys.ravel()], axis=1)
    d2 = ((pix[:, None, :] - pts[None, :, :].astype(np.float32)) ** 2).sum(-1)
    out = labels[np.argmin(d2, axis=1)].reshape(gh, gw)
    # outside: beyond a margin from the anchors' convex hull (distance measured on the grid, in crop pixels)
    hull = cv2.convexHull((pts * [gw / w, gh / h]).astype(np.float32)).astype(np.int32)
    inside = np.zeros((gh, gw), np.uint8)
    cv2.fillConvexPoly(inside, hull, 1)
    dist = cv2.distanceTransform((1 - inside).astype(np.uint8), cv2.DIST_L2, 3) * (w / gw)
    margin = 0.12 * face_scale(landmarks)
    out = np.where(dist > margin, NAMES.index(OUTSIDE), out)
    return out.astype(np.int32), NAMES


def grid_name(x: float, y: float) -> str:
    """A coarse place in a picture without landmarks: x, y in [0, 1] -> "upper left" ... "centre"."""
    col = "left" if x < 1 / 3 else "right" if x > 2 / 3 else ""
    row = "upper" if y < 1 / 3 else "lower" if y > 2 / 3 else ""
    return " ".join(p for p in (row, col) if p) or "centre"


HOT = 0.5  # a heatmap pixel is "hot" at or above this value (the mask head's sigmoid: >= 0.5 means "blended")


def heat_by_region(heatmap: np.ndarray, landmarks: np.ndarray | None, hot: float = HOT) -> dict[str, Any]:
    """Where a heatmap (float HxW in [0, 1] over the crop) concentrates.

    Returns ``peak`` (max), ``mean``, ``hot`` (the threshold), ``hot_fraction`` (share of the crop at or
    above it) and ``regions``: ``[{"region", "share", "mean"}]`` sorted by ``share`` (the region's share
    of the hot pixels; with no hot pixel, of the total heat), best first. Without landmarks the regions
    are the nine cells of a 3x3 grid ("upper left", ..., "centre")."""
    import cv2

    heat = np.nan_to_num(np.asarray(heatmap, np.float32), nan=0.0)
    if heat.ndim != 2 or heat.size == 0:
        raise ValueError(f"heatmap must be a non-empty 2-D array, got shape {heat.shape}")
    h, w = heat.shape
    small = cv2.resize(np.clip(heat, 0.0, 1.0), (GRID, GRID), interpolation=cv2.INTER_AREA)
    if landmarks is not None:
        labels, names = region_map(landmarks, (h, w), grid=GRID)
    else:
        ys, xs = np.mgrid[0:GRID, 0:GRID]
        cells = [grid_name(x, y) for y in (0.1, 0.5, 0.9) for x in (0.1, 0.5, 0.9)]
        labels = (np.minimum(ys * 3 // GRID, 2) * 3 + np.minimum(xs * 3 // GRID, 2)).astype(np.int32)
        names = tuple(cells)
    peak = float(heat.max())
    mask = small >= hot
    weights = mask.astype(np.float64) if mask.any() else small.astype(np.float64)
    total = float(weights.sum())
    regions = []
    for label, name in enumerate(names):
        sel = labels == label
        if not sel.any():
            continue
        share = float(weights[sel].sum() / total) if total > 0 else 0.0
        regions.append({"region": name, "share": round(share, 4), "mean": round(float(small[sel].mean()), 4)})
    regions.sort(key=lambda r: (-r["share"], -r["mean"]))
    return {"peak": round(peak, 4), "mean": round(float(heat.mean()), 4), "hot": hot,
            "hot_fraction": round(float(mask.mean()), 4), "regions": regions,
            "by": "landmarks" if landmarks is not None else "grid"}
