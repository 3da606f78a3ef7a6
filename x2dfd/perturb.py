"""Image perturbations for robustness sweeps (``x2dfd evaluate --perturb``): pure, deterministic functions.

    from x2dfd.perturb import parse_perturbations
    for p in parse_perturbations(["jpeg:90,70,50,30", "blur:1,2", "resize:0.5,0.25", "noise:0.02"], seed=0):
        degraded = p(image)          # PIL RGB in, PIL RGB of the same size out
        print(p.name, p.slug)        # "jpeg:90", "jpeg-90"

Kinds (the degradations of the FaceForensics++ / DeeperForensics robustness protocols):

* ``jpeg:Q``   re-encode as JPEG at Pillow quality Q (1-100, 4:2:0 chroma subsampling as Pillow does by default);
* ``blur:S``   Gaussian blur with standard deviation S pixels (Pillow's ``GaussianBlur(radius=S)``);
* ``resize:F`` downscale by factor F in (0, 1) (bilinear, antialiased) and back up to the original size
  (bilinear): the resolution is lost, the pixel grid is kept;
* ``noise:S``  additive Gaussian noise with standard deviation S in [0, 1] intensity units (0.02 = about
  5 grey levels), clipped to [0, 1].

``x2dfd evaluate`` applies them to the decoded image or video frame BEFORE face detection, i.e. to the
full frame, as re-compressing or re-scaling the distributed file would; face detection then sees the
degraded frame too. Noise is seeded from ``seed`` and the image's own pixels, so an image gets the same
noise whatever the order or batch it is processed in (cached records stay valid on resume).
"""

from __future__ import annotations

import hashlib
import io
import re
from collections.abc import Sequence
from dataclasses import dataclass

from x2dfd.errors import UsageError

KINDS = {
    "jpeg": "JPEG quality 1-100 (lower = stronger)",
    "blur": "Gaussian blur sigma in pixels (> 0)",
    "resize": "down-then-up resize factor in (0, 1)",
    "noise": "Gaussian noise std in [0, 1] intensity units (> 0)",
}
SPEC_PATTERN = re.compile(r"^(?P<kind>[a-z]+):(?P<values>[^:]+)$")


@dataclass(frozen=True)
class Perturbation:
    """One degradation at one strength; calling it on a PIL image returns the degraded RGB image."""

    kind: str
    value: float
    seed: int = 0

    def __post_init__(self):
        check_value(self.kind, self.value, f"{self.kind}:{self.value:g}")

    @property
    def name(self) -> str:
        """As written on the command line: ``jpeg:90``, ``resize:0.5``."""
        return f"{self.kind}:{_fmt(self.kind, self.value)}"

    @property
    def slug(self) -> str:
        """File-name-safe: ``jpeg-90``, ``resize-0.5``."""
        return f"{self.kind}-{_fmt(self.kind, self.value)}"

    def describe(self) -> dict:
        return {"name": self.name, "kind": self.kind, "value": self.value, "seed": self.seed,
                "meaning": KINDS[self.kind], "applied_to": "full decoded frame, before face detection"}

    def __call__(self, image):
        from PIL import Image

        image = image.convert("RGB")
        if self.kind == "jpeg":
            buf = io.BytesIO()
            image.save(buf, format="JPEG", quality=int(self.value))
            buf.seek(0)
            with Image.open(buf) as im:
                return im.convert("RGB")
        if self.kind == "blur":
            from PIL import ImageFilter

            return image.filter(ImageFilter.GaussianBlur(radius=float(self.value)))
        if self.kind == "resize":
            w, h = image.size
            small = image.resize((max(1, round(w * self.value)), max(1, round(h * self.value))), Image.BILINEAR)
            return small.resize((w, h), Image.BILINEAR)
        if self.kind == "noise":
            import numpy as np

            pixels = np.asarray(image, dtype=np.uint8)
            digest = hashlib.sha256(pixels.tobytes()).digest()[:8]
            rng = np.random.default_rng([self.seed, int.from_bytes(digest, "little")])
            noisy = pixels.astype(np.float32) / 255.0 + rng.normal(0.0, self.value, pixels.shape).astype(np.float32)
            return Image.fromarray((np.clip(noisy, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8))
        raise AssertionError(self.kind)  # unreachable: checked in __post_init__


def _fmt(kind: str, value: float) -> str:
    return str(int(value)) if kind == "jpeg" else f"{value:g}"


def check_value(kind: str, value: float, spec: str) -> None:
    """One-line UsageError when ``kind`` is unknown or ``value`` is outside its range."""
    if kind not in KINDS:
        raise UsageError(f"--perturb '{spec}': unknown kind '{kind}'. Available: {', '.join(KINDS)}.")
    ok = {
        "jpeg": 1 <= value <= 100 and float(value).is_integer(),
        "blur": value > 0,
        "resize": 0 < value < 1,
        "noise": 0 < value <= 1,
    }[kind]
    if not ok:
        raise UsageError(f"--perturb '{spec}': {kind} needs a {KINDS[kind]}, got {value:g}")


def parse_perturbations(specs: Sequence[str], seed: int = 0) -> list[Perturbation]:
    """``["jpeg:90,70", "blur:1"]`` -> [jpeg:90, jpeg:70, blur:1] in the given order, duplicates dropped.

    A spec may also hold several space-separated groups (``"jpeg:90 blur:1"``)."""
    out: list[Perturbation] = []
    for spec in (part for s in specs for part in str(s).split()):
        m = SPEC_PATTERN.match(spec.strip().lower())
        if not m:
            raise UsageError(f"--perturb '{spec}': expected KIND:V1[,V2...], e.g. jpeg:90,70 blur:1 resize:0.5 "
                             f"noise:0.02. Kinds: {', '.join(KINDS)}.")
        kind = m["kind"]
        if kind not in KINDS:
            raise UsageError(f"--perturb '{spec}': unknown kind '{kind}'. Available: {', '.join(KINDS)}.")
        for raw in m["values"].split(","):
            try:
                value = float(raw)
            except ValueError:
                raise UsageError(f"--perturb '{spec}': '{raw}' is not a number") from None
            p = Perturbation(kind, value, seed)
            if p not in out:
                out.append(p)
    return out


def looks_like_spec(token: str) -> bool:
    """True for a command-line token such as ``blur:1,2`` (used to accept ``--perturb a b c``)."""
    m = SPEC_PATTERN.match(token.strip().lower())
    return bool(m) and m["kind"] in KINDS
