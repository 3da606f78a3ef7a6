"""Project-made images with a visible forgery artifact, for learning tests, demos and benchmarks (no faces needed).

    paths = make_seam_dataset("data/", n_real=40, n_fake=40, size=64, seed=0)   # data/real/*.png, data/fake/*.png

A "real" image is a smooth random texture (a few low-frequency colour waves and blobs, mild grain),
natural-looking at a glance. A "fake" is a real-like texture into which a patch of another texture is
blended, the way a face swap blends a face into a target frame: the patch carries its own colour and
a stronger grain, and its border leaves a visible seam (a bright or dark line where the blend mask is
misaligned). Both classes share the texture generator, so only the blended patch tells them apart.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def smooth_texture(rng: np.random.Generator, size: int, grain: float = 4.0) -> np.ndarray:
    """float32 HxWx3 in [0, 255]: low-frequency colour waves plus a little noise."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    img = np.zeros((size, size, 3), np.float32)
    base = rng.uniform(60, 190, 3)
    for _ in range(3):
        fx, fy = rng.uniform(0.3, 2.0, 2)
        phase = rng.uniform(0, 2 * np.pi)
        amp = rng.uniform(10, 35, 3)
        img += np.sin(2 * np.pi * (fx * x + fy * y) + phase)[..., None] * amp
    cx, cy, r = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), rng.uniform(0.15, 0.4)
    blob = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * r * r))
    img += blob[..., None] * rng.uniform(-40, 40, 3)
    img += base
    img += rng.normal(0, grain, img.shape)
    return np.clip(img, 0, 255)


GRAIN = 22.0
CHECKER = 60.0
CELL = 2


def blend_patch(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """Blend another texture into a random rectangle of ``img`` and leave a seam along its border."""
    size = img.shape[0]
    side = int(rng.integers(size * 2 // 5, size * 3 // 5))
    x0, y0 = (int(v) for v in rng.integers(2, size - side - 2, 2))
    patch = smooth_texture(rng, side, grain=GRAIN) * 0.8 + rng.uniform(0, 60, 3) * 0.2
    # a generated face carries the checkerboard of its upsampling layers (2x2-pixel cells, fixed phase)
    yy, xx = np.mgrid[y0 : y0 + side, x0 : x0 + side]
    patch = patch + np.where(((yy // CELL) + (xx // CELL)) % 2 == 0, CHECKER, -CHECKER)[..., None]
    out = img.copy()
    out[y0 : y0 + side, x0 : x0 + side] = 0.15 * out[y0 : y0 + side, x0 : x0 + side] + 0.85 * patch
    seam = 255.0 if rng.random() < 0.5 else 0.0
    t = max(1, size // 32)
    for sl in ((slice(y0, y0 + t), slice(x0, x0 + side)), (slice(y0 + side - t, y0 + side), slice(x0, x0 + side)),
               (slice(y0, y0 + side), slice(x0, x0 + t)), (slice(y0, y0 + side), slice(x0 + side - t, x0 + side))):
        out[sl] = 0.3 * out[sl] + 0.7 * seam
    return out


def make_seam_image(rng: np.random.Generator, fake: bool, size: int = 64) -> Image.Image:
    img = smooth_texture(rng, size)
    if fake:
        img = blend_patch(rng, img)
    return Image.fromarray(img.round().astype(np.uint8))


def make_seam_dataset(folder: str | Path, n_real: int, n_fake: int, size: int = 64, seed: int = 0,
                      prefix: str = "img") -> list[tuple[Path, int]]:
    """Write ``folder/real/*.png`` and ``folder/fake/*.png``; returns ``[(path, label)]`` (1 = fake)."""
    folder = Path(folder)
    rng = np.random.default_rng(seed)
    out = []
    for label, n in ((0, n_real), (1, n_fake)):
        sub = folder / ("fake" if label else "real")
        sub.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            path = sub / f"{prefix}_{i:04d}.png"
            make_seam_image(rng, bool(label), size).save(path)
            out.append((path, label))
    return out
