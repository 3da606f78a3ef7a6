"""x2dfd.perturb: spec parsing, errors, determinism and the size/strength of each degradation."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from x2dfd.errors import UsageError
from x2dfd.perturb import Perturbation, looks_like_spec, parse_perturbations


def _image(seed=0, size=(96, 80)) -> Image.Image:
    """Smooth gradients plus texture: JPEG and blur have something to destroy."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0 : size[1], 0 : size[0]]
    base = np.stack([x * 255 / size[0], y * 255 / size[1], (x + y) * 127 / sum(size)], -1)
    texture = rng.normal(0, 12, size[::-1])[..., None]  # luminance texture, like skin and hair
    return Image.fromarray(np.clip(base + texture, 0, 255).astype(np.uint8))


def _mse(a: Image.Image, b: Image.Image) -> float:
    return float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))


def test_parse_specs_order_names_and_dedupe():
    ps = parse_perturbations(["jpeg:90,70", "blur:1,2 resize:0.5", "noise:0.02", "jpeg:90"], seed=3)
    assert [p.name for p in ps] == ["jpeg:90", "jpeg:70", "blur:1", "blur:2", "resize:0.5", "noise:0.02"]
    assert [p.slug for p in ps][:2] == ["jpeg-90", "jpeg-70"] and ps[-1].slug == "noise-0.02"
    assert all(p.seed == 3 for p in ps)
    assert ps[0].describe()["applied_to"].startswith("full decoded frame")
    assert parse_perturbations([]) == []
    assert looks_like_spec("blur:1,2") and not looks_like_spec("data/real") and not looks_like_spec("c:\\x")


@pytest.mark.parametrize("spec, fragment", [
    ("sharpen:1", "unknown kind 'sharpen'. Available: jpeg, blur, resize, noise."),
    ("jpeg:0", "jpeg needs a JPEG quality 1-100"),
    ("jpeg:75.5", "jpeg needs"),
    ("resize:1", "resize needs a down-then-up resize factor in (0, 1)"),
    ("blur:-1", "blur needs"),
    ("noise:x", "'x' is not a number"),
    ("jpeg", "expected KIND:V1[,V2...]"),
])
def test_bad_specs_are_one_line_usage_errors(spec, fragment):
    with pytest.raises(UsageError) as err:
        parse_perturbations([spec])
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_every_kind_keeps_size_and_mode_and_is_deterministic():
    img = _image()
    for p in parse_perturbations(["jpeg:50", "blur:1.5", "resize:0.25", "noise:0.05"]):
        a, b = p(img), p(img.copy())
        assert a.size == img.size and a.mode == "RGB"
        assert np.array_equal(np.asarray(a), np.asarray(b)), p.name
        assert _mse(a, img) > 0, p.name


def test_strength_orders_jpeg_blur_resize_noise():
    img = _image(1)
    assert _mse(Perturbation("jpeg", 30)(img), img) > 1.5 * _mse(Perturbation("jpeg", 90)(img), img)
    assert _mse(Perturbation("blur", 2)(img), img) > _mse(Perturbation("blur", 1)(img), img)
    assert _mse(Perturbation("resize", 0.25)(img), img) > _mse(Perturbation("resize", 0.5)(img), img)
    grey = Image.new("RGB", (200, 200), (128, 128, 128))
    noisy = np.asarray(Perturbation("noise", 0.02)(grey), np.float64) / 255.0
    assert abs(noisy.std() - 0.02) < 0.002 and abs(noisy.mean() - 128 / 255) < 0.002


def test_noise_depends_on_seed_and_image_not_on_call_order():
    a, b = _image(0), _image(1)
    p0, p1 = Perturbation("noise", 0.05, seed=0), Perturbation("noise", 0.05, seed=1)
    first = np.asarray(p0(a))
    p0(b)  # another image in between changes nothing
    assert np.array_equal(first, np.asarray(p0(a)))
    assert not np.array_equal(first, np.asarray(p1(a)))
    grey1, grey2 = Image.new("RGB", (32, 32), (100, 100, 100)), Image.new("RGB", (32, 32), (101, 100, 100))
    d1 = np.asarray(p0(grey1), np.int16) - 100
    d2 = np.asarray(p0(grey2), np.int16) - np.asarray(grey2, np.int16)
    assert not np.array_equal(d1, d2)  # different images get different noise
