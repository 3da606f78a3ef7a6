"""Warn when the inputs already are face crops, which face cropping would crop again with black padding.

    from x2dfd.cropcheck import CropWarner
    warner = CropWarner("x2dfd assess")
    crops = extract_faces(image, ...)                     # the detection the stage does anyway
    warner.observe_crop(image, crops[0], label=row["label"])
    ...
    warner.warn(quiet=cfg.quiet)   # at most one stderr line per run, e.g.
    # x2dfd assess: 183 of 200 inputs look like existing face crops (the face box covers >= 70% of the picture
    # on both axes; real 98 of 100, fake 85 of 100); cropping them again pads about 37% of each crop with
    # black - pass --no-face-crop

An input "looks like a crop" when the detected face box covers at least ``CROP_SIDE`` of the image's
width AND of its height (``fill_fraction``). DeepfakeBench's preprocessed frames, FaceForensics++
crops and most face datasets are such crops; a 1.3x square crop of them lies partly outside the
picture, and ``x2dfd.face.crop_face`` pads that part with black.

The threshold is measured with the res10 SSD boxes of ``x2dfd.face`` on ``../shared/data``
(``min(box w / image w, box h / image h)``; ``python -m x2dfd.cropcheck FOLDER...`` prints these figures):

* ``stylegan2-vs-real/images/real`` (539 tight 300x300 face crops; 536 with a face): 5th / 50th / 95th
  percentile 0.59 / 0.79 / 0.91; 439 (81%) at or above 0.70, flagged; a 1.3x crop of a flagged one is a
  median 39% black (27% for the crops below 0.70, which the rule misses);
* ``stylegan2-vs-real/images/fake`` (650 StyleGAN2 faces in FFHQ framing: head, hair, background):
  0.46-0.649, none flagged; a 1.3x crop is a median 6% black;
* ``faces-real-photos/real`` (1930 images, a mix): 388 head-and-shoulders photos at 0.55-0.70, not
  flagged, and 1216 tight face crops at 0.85-1.0, flagged (1250, 65% of the folder, in all); only 34
  images lie between 0.70 and 0.85.

0.70 leaves a margin above FFHQ framing (max 0.649), where a 1.3x crop stays inside the picture.

A warning names the counts per class when labels are given: a class whose inputs are crops while the
other's are photos gets black borders the other lacks, a shortcut a trained detector learns.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

CROP_SIDE = 0.70  # face box side / image side, on both axes, from which an input counts as a crop
MIN_SHARE = 0.25  # warn when at least this share of the checked inputs (overall or of one class) are crops
LABEL_NAMES = ("real", "fake")


def fill_fraction(image_size: tuple[int, int], box: tuple[float, float, float, float]) -> float:
    """``min(box width / image width, box height / image height)``: how much of the picture the face fills."""
    w, h = image_size
    x0, y0, x1, y1 = box
    if w <= 0 or h <= 0:
        return 0.0
    return max(0.0, min((x1 - x0) / w, (y1 - y0) / h))


def looks_like_crop(image_size: tuple[int, int], box: tuple[float, float, float, float] | None,
                    threshold: float = CROP_SIDE) -> bool:
    """True when the face box covers at least ``threshold`` of the image on both axes (None: no face, False)."""
    return box is not None and fill_fraction(image_size, box) >= threshold


def padding_fraction(image_size: tuple[int, int], box: tuple[float, float, float, float], scale: float = 1.3) -> float:
    """Share of the ``scale`` x square crop around ``box`` (``x2dfd.face.square_box``) that lies outside the
    image, i.e. that cropping pads with black (before any alignment rotation)."""
    from x2dfd.face import square_box

    w, h = image_size
    bx0, by0, bx1, by1 = square_box(box, scale)
    side_x, side_y = bx1 - bx0, by1 - by0
    if side_x <= 0 or side_y <= 0:
        return 0.0
    inside_x = max(0, min(bx1, w) - max(bx0, 0))
    inside_y = max(0, min(by1, h) - max(by0, 0))
    return 1.0 - (inside_x * inside_y) / (side_x * side_y)


@dataclass
class CropWarner:
    """Counts, over one run, the inputs that look like existing face crops, and says so once.

    ``command`` opens the line (``"x2dfd assess"``); ``hint`` ends it (the flag that turns cropping off).
    ``observe`` / ``observe_crop`` are cheap (no detection of their own) and thread-safe enough for
    counting from one thread; call ``warn`` once at the end of the run (a second call prints nothing).
    """

    command: str
    threshold: float = CROP_SIDE
    min_share: float = MIN_SHARE
    scale: float = 1.3
    hint: str = "pass --no-face-crop"
    stream: TextIO | None = None
    checked: list[int] = field(default_factory=lambda: [0, 0, 0])  # real, fake, unlabelled
    flagged: list[int] = field(default_factory=lambda: [0, 0, 0])
    padding: list[float] = field(default_factory=list)  # black share of the crop, per flagged input
    warned: bool = False

    def observe(self, image_size: tuple[int, int], box: tuple[float, float, float, float] | None,
                label: int | None = None) -> bool:
        """Count one input (its size and detected face box; None: no face, not counted). True if it looks like a crop."""
        if box is None:
            return False
        k = int(label) if label in (0, 1) else 2
        self.checked[k] += 1
        if not looks_like_crop(image_size, box, self.threshold):
            return False
        self.flagged[k] += 1
        self.padding.append(padding_fraction(image_size, box, self.scale))
        return True

    def observe_crop(self, image: Any, crop: Any, label: int | None = None) -> bool:
        """Count one input from its source picture (PIL image) and the ``x2dfd.face.FaceCrop`` cut from it
        (``crop.face`` None, i.e. ``--no-face-crop``: not counted)."""
        face = getattr(crop, "face", None)
        return self.observe(image.size, None if face is None else tuple(face.box), label)

    def observe_record(self, record: Any, label: int | None = None) -> bool:
        """Count one input from its ``x2dfd.records.Record`` (the picture's size and the face box it holds; a
        video: its first sampled frame with a face). Records without a face or a size are not counted."""
        media = getattr(record, "media", None) or {}
        if not media.get("width") or not media.get("height"):
            return False
        face = getattr(record, "face", None)
        if getattr(record, "kind", None) == "video":
            face = next((f["face"] for f in getattr(record, "frames", None) or []
                         if isinstance(f, dict) and isinstance(f.get("face"), dict)), None)
        box = (face or {}).get("box") if isinstance(face, dict) else None
        return self.observe((media["width"], media["height"]), tuple(box) if box else None, label)

    def observe_records(self, records: Iterable[Any], labels: Iterable[int | None] | None = None) -> CropWarner:
        """Count a run's records (``observe_record``), each with its label where ``labels`` runs alongside them
        (same length); a None in ``records`` (an input without a record) is skipped. Returns the warner, so
        ``CropWarner("x2dfd explain").observe_records(records).warn()`` is the whole check."""
        pairs = zip(records, labels, strict=True) if labels is not None else ((r, None) for r in records)
        for record, label in pairs:
            if record is not None:
                self.observe_record(record, label)
        return self

    @property
    def n_checked(self) -> int:
        return sum(self.checked)

    @property
    def n_flagged(self) -> int:
        return sum(self.flagged)

    def summary(self) -> dict[str, Any]:
        """JSON-able counts (for a run's metadata): checked and flagged inputs, per class, the rule."""
        out: dict[str, Any] = {"checked": self.n_checked, "look_like_crops": self.n_flagged,
                               "rule": f"face box >= {self.threshold:g} of the image on both axes"}
        if self.checked[0] or self.checked[1]:
            out["by_class"] = {name: {"checked": self.checked[i], "look_like_crops": self.flagged[i]}
                               for i, name in enumerate(LABEL_NAMES)}
        if self.padding:
            out["mean_padding"] = round(sum(self.padding) / len(self.padding), 3)
        return out

    def should_warn(self) -> bool:
        shares = [f / c for f, c in zip(self.flagged, self.checked) if c]
        overall = self.n_flagged / self.n_checked if self.n_checked else 0.0
        return self.n_flagged > 0 and (overall >= self.min_share or any(s >= self.min_share for s in shares))

    def message(self) -> str | None:
        """The warning line, or None when too few inputs look like crops."""
        if not self.should_warn():
            return None
        per_class = ""
        if self.checked[0] or self.checked[1]:
            per_class = "; " + ", ".join(f"{name} {self.flagged[i]} of {self.checked[i]}"
                                         for i, name in enumerate(LABEL_NAMES) if self.checked[i])
        pad = sum(self.padding) / len(self.padding)
        shortcut = ""
        if self.checked[0] and self.checked[1] and abs(self.flagged[0] / self.checked[0]
                                                       - self.flagged[1] / self.checked[1]) >= 0.5:
            shortcut = "; the classes differ in framing, a shortcut a detector can learn"
        return (f"{self.command}: {self.n_flagged} of {self.n_checked} inputs look like existing face crops (the face "
                f"box covers >= {self.threshold:.0%} of the picture on both axes{per_class}){shortcut}; cropping them "
                f"again pads about {pad:.0%} of each crop with black - {self.hint}")

    def warn(self, quiet: bool = False) -> str | None:
        """Print the warning line once (to ``stream``, default stderr) unless ``quiet``; returns it either way."""
        msg = self.message()
        if msg is not None and not self.warned and not quiet:
            print(msg, file=self.stream or sys.stderr, flush=True)
        if msg is not None:
            self.warned = True
        return msg


def measure(folders: list[str], threshold: float = CROP_SIDE, scale: float = 1.3) -> list[dict[str, Any]]:
    """Per folder (searched recursively for images): images, faces found, fill-fraction percentiles, how many
    look like crops and the median black share of their ``scale`` x crop. What the threshold was chosen on."""
    import numpy as np

    from x2dfd.errors import MediaError
    from x2dfd.face import get_detector
    from x2dfd.inputs import IMAGE_EXTS
    from x2dfd.media import load_image

    detector = get_detector()
    out = []
    for folder in folders:
        files = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_EXTS and p.is_file())
        fills, pads = [], []
        for f in files:
            try:
                image = load_image(f)
            except MediaError:
                continue
            faces = detector.detect(np.asarray(image), landmarks=False)
            if faces:
                fills.append(fill_fraction(image.size, faces[0].box))
                pads.append(padding_fraction(image.size, faces[0].box, scale))
        fill, pad = np.asarray(fills), np.asarray(pads)
        flagged = fill >= threshold
        out.append({"folder": str(folder), "images": len(files), "faces": len(fills),
                    "fill_p5_p50_p95": np.percentile(fill, [5, 50, 95]).round(3).tolist() if len(fill) else None,
                    "fill_max": round(float(fill.max()), 3) if len(fill) else None,
                    "look_like_crops": int(flagged.sum()),
                    "share_of_images": round(float(flagged.sum()) / len(files), 3) if files else None,
                    "median_padding_flagged": round(float(np.median(pad[flagged])), 3) if flagged.any() else None})
    return out


def main(argv: list[str] | None = None) -> int:
    import argparse
    import json

    parser = argparse.ArgumentParser(prog="python -m x2dfd.cropcheck",
                                     description="How many images of each folder look like existing face crops.")
    parser.add_argument("folders", nargs="+")
    parser.add_argument("--threshold", type=float, default=CROP_SIDE)
    parser.add_argument("--scale", type=float, default=1.3)
    args = parser.parse_args(argv)
    for row in measure(args.folders, args.threshold, args.scale):
        print(json.dumps(row))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
