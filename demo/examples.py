"""Example inputs for the demo, made at start by the project's own code: nothing is shipped or downloaded.

    make_examples("~/.cache/x2dfd/demo-examples")                       # photos from ../shared when present
    make_examples("~/.cache/x2dfd/demo-examples", source_dir="my_real_photos/")

From the first two portraits (one confident, centred face with landmarks) of ``source_dir``
(default: ``../shared/data/faces-real-photos/real`` beside the project checkout, MIT-licensed):

* ``real-face.jpg``: the first portrait, re-encoded;
* ``face-swap.jpg``: the second portrait's face swapped onto the first (``x2dfd.faceswap``: landmark
  warp, colour transfer, Poisson blending; the FaceForensics++ FaceSwap family);
* ``self-blended-fake.jpg``: the first portrait blended onto itself by the blending expert's own
  generator (``experts.sbi.self_blend``), the artefact that expert localizes;
* ``real-then-swapped.mp4``: a 3 s H.264 clip, a slow zoom over the real portrait that turns into the
  face swap halfway, so the per-frame p_fake timeline has something to show.

Always, also ``no-face.png`` (a smooth gradient): what an input without a face gives (an
``undetermined`` verdict with the reason). Without a photo folder that is the only example.
Files are written once and reused (``manifest.json`` records how they were made).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from PIL import Image

VERSION = 2
SHARED_PHOTOS = Path(__file__).resolve().parents[2] / "shared" / "data" / "faces-real-photos" / "real"
VIDEO_FRAMES = 24
VIDEO_FPS = 8
FACE_EXAMPLES = ("real-face.jpg", "face-swap.jpg", "self-blended-fake.jpg", "real-then-swapped.mp4")


def default_source_dir() -> Path | None:
    return SHARED_PHOTOS if SHARED_PHOTOS.is_dir() else None


def make_examples(out_dir: str | os.PathLike, source_dir: str | os.PathLike | None = None, seed: int = 0) -> list[Path]:
    """The example files (made now, or reused from an earlier start), best first."""
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    source = Path(source_dir) if source_dir is not None else default_source_dir()
    manifest_path = out / "manifest.json"
    wanted = {"version": VERSION, "source_dir": str(source) if source else None, "seed": seed}
    if manifest_path.is_file():
        try:
            manifest = json.loads(manifest_path.read_text())
            files = [out / f for f in manifest.get("files", [])]
            if {k: manifest.get(k) for k in wanted} == wanted and files and all(f.is_file() for f in files):
                return files
        except (OSError, ValueError):
            pass
    files: list[Path] = []
    if source is not None:
        files += _face_examples(source, out, seed)
    files.append(_no_face_example(out))
    manifest_path.write_text(json.dumps({**wanted, "files": [f.name for f in files]}, indent=2) + "\n")
    return files


def _no_face_example(out: Path) -> Path:
    h, w = 240, 320
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    rgb = np.stack([x / w, y / h, 1.0 - x / w], axis=-1) * 200.0 + 30.0
    path = out / "no-face.png"
    Image.fromarray(rgb.astype(np.uint8)).save(path)
    return path


def _portraits(source: Path, n: int = 2, tries: int = 80) -> list[tuple[Image.Image, object]]:
    """Up to ``n`` (photo, face) pairs: one confident (score >= 0.95), centred face with landmarks whose box
    spans >= 40% of the shorter side; largest files first (deterministic), near-duplicates skipped."""
    from x2dfd.errors import NoFaceError
    from x2dfd.face import extract_faces
    from x2dfd.inputs import IMAGE_EXTS

    files = [p for p in source.iterdir() if p.suffix.lower() in IMAGE_EXTS and p.is_file()]
    found: list[tuple[Image.Image, object]] = []
    signatures: list[np.ndarray] = []
    for path in sorted(files, key=lambda p: (-p.stat().st_size, p.name))[:tries]:
        try:
            with Image.open(path) as im:
                photo = im.convert("RGB")
        except OSError:
            continue
        if min(photo.size) < 200:
            continue
        sig = np.asarray(photo.convert("L").resize((16, 16)), np.float32)
        if any(np.abs(sig - s).mean() < 12 for s in signatures):
            continue  # the folder holds copies and augmented copies of the same photo
        try:
            [crop] = extract_faces(photo, crop=True, all_faces=False)
        except NoFaceError:
            continue
        face = crop.face
        if face is None or face.landmarks is None or face.score < 0.95:
            continue
        x0, y0, x1, y1 = face.box
        cx, cy = (x0 + x1) / 2 / photo.width, (y0 + y1) / 2 / photo.height
        inside = x0 >= 0 and y0 >= 0 and x1 <= photo.width and y1 <= photo.height
        if max(x1 - x0, y1 - y0) >= 0.4 * min(photo.size) and inside and 0.3 < cx < 0.7 and 0.3 < cy < 0.65:
            found.append((photo, face))
            signatures.append(sig)
            if len(found) == n:
                break
    return found


def _face_examples(source: Path, out: Path, seed: int) -> list[Path]:
    from x2dfd.experts.sbi import self_blend
    from x2dfd.faceswap import make_face_swap

    portraits = _portraits(source)
    if not portraits:
        return []
    photo, face = portraits[0]
    files = []
    real = out / FACE_EXAMPLES[0]
    photo.save(real, quality=92)
    files.append(real)
    swap_img = None
    if len(portraits) > 1:
        swap_img, _ = make_face_swap(portraits[1][0], photo, seed=seed)
        swap = out / FACE_EXAMPLES[1]
        swap_img.save(swap, quality=92)
        files.append(swap)
    blended = self_blend(np.asarray(photo), np.asarray(face.landmarks, np.float32), rng=seed, hull="facehull")
    sbi = out / FACE_EXAMPLES[2]
    Image.fromarray(blended.fake).save(sbi, quality=92)
    files.append(sbi)
    second = swap_img if swap_img is not None else Image.fromarray(blended.fake)
    files.append(_video(photo, second, out / FACE_EXAMPLES[3]))
    return files


def _video(real: Image.Image, fake: Image.Image, path: Path) -> Path:
    """A slow zoom (100% -> 90% of the frame) over the real photo, switching to the fake one halfway."""
    from x2dfd.faceswap import write_video

    w, h = real.size
    scale = 320 / max(w, h)
    size = (int(w * scale) // 2 * 2, int(h * scale) // 2 * 2)  # even sides for yuv420p
    frames = []
    for i in range(VIDEO_FRAMES):
        src = real if i < VIDEO_FRAMES // 2 else fake
        z = 1.0 - 0.1 * i / (VIDEO_FRAMES - 1)
        cw, ch = w * z, h * z
        box = ((w - cw) / 2, (h - ch) / 2, (w + cw) / 2, (h + ch) / 2)
        frames.append(np.asarray(src.resize(size, Image.BILINEAR, box=box)))
    return write_video(frames, path, fps=VIDEO_FPS)
