"""Project-made test data: classical face swaps and small test videos built from face photos.

    from x2dfd.faceswap import make_face_swap, make_test_video
    fake, mask = make_face_swap(load_image("a.jpg"), load_image("b.jpg"))   # a's face on b's head
    make_test_video([load_image(p) for p in paths], "clip.mp4", n_frames=24, no_face_frames=(5, 6))

Public face-swap sets forbid redistribution, so tests and ``x2dfd evaluate`` make their own fakes of
the FaceForensics++ FaceSwap family: 68 dlib landmarks on both faces, a piecewise-affine warp of the
source face over the Delaunay triangles of the target's landmarks, Reinhard colour transfer (LAB
mean/std inside the face), Poisson blending (``cv2.seamlessClone``) and a feathered composite into
the target. Pixels outside the returned mask are exactly the target's.

Test videos move and zoom the photos over a plain background (a panning, zooming camera), include
frames without a face, and are encoded with PyAV by extension: .mp4/.mov/.mkv H.264 (with
B-frames, so presentation order differs from decode order), .avi MPEG-4 Part 2, .webm VP9.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from x2dfd.errors import NoFaceError

VIDEO_CODECS = {".mp4": "libx264", ".mov": "libx264", ".mkv": "libx264", ".avi": "mpeg4", ".webm": "libvpx-vp9"}
BACKGROUND = (128, 128, 128)
FEATHER = 0.08  # blend band at the mask's edge, as a fraction of the face width  # plain grey: the no-face frames and the area around the moving photo


# ------------------------------------------------------------------------------------------ face swap
def _landmarks(image: Image.Image, detector, role: str) -> np.ndarray:
    faces = detector.detect(np.asarray(image.convert("RGB")))
    if not faces:
        raise NoFaceError(f"face swap: no face found in the {role} image")
    if faces[0].landmarks is None:
        raise NoFaceError(f"face swap: no landmarks for the {role} face (detector ran with landmarks=False)")
    return np.asarray(faces[0].landmarks, np.float32)


def delaunay(points: np.ndarray, shape: tuple[int, int]) -> list[tuple[int, int, int]]:
    """Triangles (as point indices) of the Delaunay triangulation of ``points`` inside ``shape`` (h, w)."""
    h, w = shape
    pts = np.clip(points, 0, [w - 1, h - 1]).astype(np.float32)
    subdiv = cv2.Subdiv2D((0, 0, w, h))
    for p in pts:
        subdiv.insert((float(p[0]), float(p[1])))
    tris = []
    for t in subdiv.getTriangleList().reshape(-1, 3, 2):
        idx = [int(np.argmin(((pts - v) ** 2).sum(1))) for v in t]
        if len(set(idx)) == 3 and all(((pts[i] - v) ** 2).sum() < 1.0 for i, v in zip(idx, t)):
            tris.append(tuple(idx))
    return sorted(set(tris))


def _warp_triangle(src: np.ndarray, dst: np.ndarray, t_src: np.ndarray, t_dst: np.ndarray) -> None:
    """Affine-warp triangle ``t_src`` of ``src`` onto triangle ``t_dst`` of ``dst`` (in place)."""
    x, y, w, h = cv2.boundingRect(t_dst.astype(np.float32))
    sx, sy, sw, sh = cv2.boundingRect(t_src.astype(np.float32))
    if w <= 0 or h <= 0 or sw <= 0 or sh <= 0:
        return
    m = cv2.getAffineTransform((t_src - [sx, sy]).astype(np.float32), (t_dst - [x, y]).astype(np.float32))
    # Landmarks of a tightly cropped face can fall outside the picture: pad (mirrored) so the slice exists.
    pad = max(0, -sx, -sy, sx + sw - src.shape[1], sy + sh - src.shape[0])
    if pad:
        src = cv2.copyMakeBorder(src, pad, pad, pad, pad, cv2.BORDER_REFLECT_101)
        sx, sy = sx + pad, sy + pad
    patch = cv2.warpAffine(src[sy : sy + sh, sx : sx + sw], m, (w, h), flags=cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_REFLECT_101)
    tri_mask = np.zeros((h, w), np.uint8)
    cv2.fillConvexPoly(tri_mask, np.round(t_dst - [x, y]).astype(np.int32), 1, lineType=cv2.LINE_8)
    H, W = dst.shape[:2]
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, W), min(y + h, H)
    if x1 <= x0 or y1 <= y0:
        return
    region = dst[y0:y1, x0:x1]
    sel = tri_mask[y0 - y : y1 - y, x0 - x : x1 - x].astype(bool)
    region[sel] = patch[y0 - y : y1 - y, x0 - x : x1 - x][sel]


def colour_transfer(source: np.ndarray, target: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Reinhard colour transfer: ``source``'s LAB mean/std inside ``mask`` matched to ``target``'s."""
    sel = mask > 0
    s_lab = cv2.cvtColor(source, cv2.COLOR_RGB2LAB).astype(np.float32)
    t_lab = cv2.cvtColor(target, cv2.COLOR_RGB2LAB).astype(np.float32)
    s_mu, s_sd = s_lab[sel].mean(0), s_lab[sel].std(0) + 1e-6
    t_mu, t_sd = t_lab[sel].mean(0), t_lab[sel].std(0) + 1e-6
    out = (s_lab - s_mu) * (t_sd / s_sd) + t_mu
    return cv2.cvtColor(np.clip(out, 0, 255).astype(np.uint8), cv2.COLOR_LAB2RGB)


def make_face_swap(source: Image.Image, target: Image.Image, detector=None, seed: int = 0) -> tuple[Image.Image, np.ndarray]:
    """``source``'s face blended onto ``target`` (FaceForensics++ FaceSwap family).

    Returns the fake (RGB, the target's size) and the blend mask (uint8 HxW: 255 where the pixels are
    the swapped face's, fading to 0 at the face's edge; where it is 0 the pixels are exactly the
    target's). ``seed`` varies the mask's erosion.
    Raises NoFaceError when either image has no detectable face.
    """
    from x2dfd.face import get_detector

    detector = detector or get_detector()
    src = np.ascontiguousarray(np.asarray(source.convert("RGB")))
    dst = np.ascontiguousarray(np.asarray(target.convert("RGB")))
    s_lm = _landmarks(source, detector, "source")
    t_lm = _landmarks(target, detector, "target")
    h, w = dst.shape[:2]

    warped = dst.copy()
    for i, j, k in delaunay(t_lm, (h, w)):
        _warp_triangle(src, warped, s_lm[[i, j, k]], t_lm[[i, j, k]])

    mask = np.zeros((h, w), np.uint8)
    hull = cv2.convexHull(np.round(t_lm).astype(np.int32))
    cv2.fillConvexPoly(mask, hull, 255)
    rng = np.random.default_rng(seed)
    face_w = float(np.ptp(t_lm[:, 0]))
    erode = int(round(face_w * rng.uniform(0.0, 0.06)))
    if erode > 0:
        mask = cv2.erode(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * erode + 1, 2 * erode + 1)))
    mask[:2, :] = mask[-2:, :] = 0  # seamlessClone needs the mask off the image border
    mask[:, :2] = mask[:, -2:] = 0
    if mask.sum() == 0:
        raise NoFaceError("face swap: the target face is too small to blend into")
    warped = colour_transfer(warped, dst, mask)
    x, y, bw, bh = cv2.boundingRect(mask)
    centre = (x + bw // 2, y + bh // 2)  # maps the mask's bounding box onto itself
    cloned = cv2.seamlessClone(warped, dst, mask.copy(), centre, cv2.NORMAL_CLONE)  # it erodes its mask in place
    # OpenCV solves the Poisson equation over the mask's whole bounding box (Dirichlet on the box, not
    # on the mask), so it also shifts target pixels outside the mask. Composite the clone back through
    # a feathered mask (FaceForensics++ FaceSwap feathers its blend too): outside it the fake is
    # exactly the target, and the clone fades in over a band of FEATHER x the face width.
    dist = cv2.distanceTransform(mask, cv2.DIST_L2, 5)
    alpha = np.clip(dist / max(1.0, FEATHER * face_w), 0.0, 1.0)
    fake = np.round(alpha[..., None] * cloned + (1.0 - alpha[..., None]) * dst).astype(np.uint8)
    return Image.fromarray(fake), np.round(alpha * 255).astype(np.uint8)


# --------------------------------------------------------------------------------------- test videos
def render_test_frames(images: Sequence[Image.Image], n_frames: int = 24, size: tuple[int, int] = (256, 256),
                       no_face_frames: Sequence[int] = (), seed: int = 0) -> list[np.ndarray]:
    """RGB frames (H x W x 3 uint8): the images in turn (equal segments), each fitted into the frame at
    a scale between 0.6 and 1.0 that changes over time and panning along a smooth path over a grey
    background; frames listed in ``no_face_frames`` are plain background."""
    if not images:
        raise ValueError("render_test_frames needs at least one image")
    w, h = size
    rng = np.random.default_rng(seed)
    phase = rng.uniform(0, 2 * math.pi, size=2)
    skip = set(no_face_frames)
    frames = []
    for t in range(n_frames):
        canvas = np.empty((h, w, 3), np.uint8)
        canvas[:] = BACKGROUND
        if t not in skip:
            pic = images[min(len(images) - 1, t * len(images) // n_frames)].convert("RGB")
            u = t / max(1, n_frames - 1)
            scale = 0.8 + 0.2 * math.sin(2 * math.pi * u + phase[0])  # 0.6 .. 1.0 of the frame
            fit = scale * min(w / pic.width, h / pic.height)
            pw, ph = max(8, int(pic.width * fit)), max(8, int(pic.height * fit))
            small = np.asarray(pic.resize((pw, ph), Image.BILINEAR))
            x = int((w - pw) * (0.5 + 0.5 * math.sin(2 * math.pi * u + phase[1])))
            y = int((h - ph) * (0.5 + 0.5 * math.cos(2 * math.pi * u + phase[1])))
            canvas[y : y + ph, x : x + pw] = small
        frames.append(canvas)
    return frames


def write_video(frames: Sequence[np.ndarray], path: str | Path, fps: float = 8.0, codec: str | None = None,
                gop: int | None = None, rotation: int = 0) -> Path:
    """Encode RGB frames with PyAV; the codec follows the extension (``VIDEO_CODECS``) unless given.
    ``rotation`` stores a display-rotation flag (as phones do) without touching the pixels."""
    import av

    path = Path(path)
    codec = codec or VIDEO_CODECS.get(path.suffix.lower())
    if codec is None:
        raise ValueError(f"no codec for '{path.suffix}'. Available: {', '.join(VIDEO_CODECS)}")
    h, w = frames[0].shape[:2]
    if w % 2 or h % 2:
        raise ValueError(f"frame size must be even for yuv420p, got {w}x{h}")
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        if gop:
            stream.codec_context.gop_size = int(gop)
        if codec in ("libx264",):
            stream.options = {"preset": "veryfast", "crf": "20"}
        elif codec in ("libvpx", "libvpx-vp9"):
            stream.options = {"deadline": "realtime", "cpu-used": "8", "crf": "10", "b": "2M"}
        if rotation:
            stream.set_display_rotation(rotation)
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def make_test_video(images: Sequence[Image.Image], path: str | Path, n_frames: int = 24, fps: float = 8.0,
                    size: tuple[int, int] = (256, 256), no_face_frames: Sequence[int] = (), seed: int = 0,
                    codec: str | None = None, gop: int | None = None, rotation: int = 0) -> Path:
    """A small video of the face images (moving, zooming; plain background at ``no_face_frames``),
    encoded by extension: .mp4, .avi, .mov, .webm, .mkv. Returns the path."""
    frames = render_test_frames(images, n_frames, size, no_face_frames, seed)
    return write_video(frames, path, fps=fps, codec=codec, gop=gop, rotation=rotation)
