"""Image decoding: every format and mode to RGB, EXIF orientation, 16-bit scaling, and every bad file
(truncated, corrupt, empty, not an image, too many pixels, too large) as one MediaError line.
All files are generated in tmp_path."""

from __future__ import annotations

import hashlib
import io
import struct
import warnings
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image

from x2dfd.errors import MediaError, UsageError
from x2dfd.media import MediaLimits, file_sha256, load_image, to_rgb

RED, BLUE = (255, 0, 0), (0, 0, 255)


def halves(w: int = 64, h: int = 48) -> np.ndarray:
    """Left half red, right half blue."""
    a = np.zeros((h, w, 3), np.uint8)
    a[:, : w // 2] = RED
    a[:, w // 2 :] = BLUE
    return a


def assert_halves(im: Image.Image, size=(64, 48), tol: int = 40):
    assert im.mode == "RGB" and im.size == size
    a = np.asarray(im).astype(int)
    h, w = a.shape[:2]
    assert np.abs(a[h // 2, w // 4] - RED).max() <= tol
    assert np.abs(a[h // 2, 3 * w // 4] - BLUE).max() <= tol


@pytest.mark.parametrize("ext,fmt", [(".jpg", "JPEG"), (".png", "PNG"), (".webp", "WEBP"), (".bmp", "BMP"),
                                     (".tif", "TIFF"), (".gif", "GIF")])
def test_formats_decode_to_rgb(tmp_path, ext, fmt):
    path = tmp_path / f"img{ext}"
    Image.fromarray(halves()).save(path, fmt)
    assert_halves(load_image(path))


def test_gif_first_frame(tmp_path):
    frames = [Image.new("RGB", (32, 32), c) for c in (RED, BLUE, (0, 255, 0))]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    a = np.asarray(load_image(path))
    assert np.abs(a.astype(int) - RED).max() <= 8


@pytest.mark.parametrize("mode", ["P", "CMYK", "YCbCr", "RGBX", "LAB", "HSV"])
def test_colour_modes_convert_to_rgb(mode):
    src = Image.fromarray(halves())
    im = src.convert(mode) if mode not in ("LAB", "HSV") else src.convert("RGB").convert(mode) if mode == "HSV" else None
    if mode == "LAB":
        from PIL import ImageCms

        im = ImageCms.applyTransform(src, ImageCms.buildTransform(
            ImageCms.createProfile("sRGB"), ImageCms.createProfile("LAB"), "RGB", "LAB"))
    assert im.mode == mode
    assert_halves(to_rgb(im), tol=60)


@pytest.mark.parametrize("mode", ["L", "1", "I", "F"])
def test_gray_modes_convert_to_rgb(mode):
    ramp = Image.fromarray(np.linspace(0, 255, 64, dtype=np.uint8)[None, :].repeat(8, 0))
    im = ramp.convert(mode)
    out = np.asarray(to_rgb(im)).astype(int)
    assert out.shape == (8, 64, 3) and (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()
    assert out[0, 0, 0] == 0 and out[0, -1, 0] == 255
    if mode != "1":
        assert np.all(np.diff(out[0, :, 0]) >= 0) and len(np.unique(out)) > 30  # a ramp, not clipped


def test_cmyk_jpeg_and_tiff(tmp_path):
    for fmt, ext in (("JPEG", ".jpg"), ("TIFF", ".tif")):
        path = tmp_path / f"cmyk{ext}"
        Image.fromarray(halves()).convert("CMYK").save(path, fmt)
        assert_halves(load_image(path))


def test_alpha_composited_on_white(tmp_path):
    a = np.zeros((48, 64, 4), np.uint8)
    a[:, :32] = (255, 0, 0, 255)  # opaque red
    a[:, 32:] = (0, 0, 0, 0)  # fully transparent (black underneath)
    path = tmp_path / "rgba.png"
    Image.fromarray(a, "RGBA").save(path)
    out = np.asarray(load_image(path))
    assert tuple(out[10, 10]) == RED
    assert tuple(out[10, 50]) == (255, 255, 255)
    la = Image.fromarray(np.dstack([np.full((8, 8), 0, np.uint8), np.full((8, 8), 0, np.uint8)]), "LA")
    la.save(tmp_path / "la.png")
    assert tuple(np.asarray(load_image(tmp_path / "la.png"))[0, 0]) == (255, 255, 255)


def test_palette_with_transparency(tmp_path):
    im = Image.new("P", (16, 16), 0)
    im.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    im.paste(1, (0, 0, 8, 16))  # left half palette index 1 = red
    path = tmp_path / "p.png"
    im.save(path, transparency=0)  # index 0 (black) transparent
    out = np.asarray(load_image(path))
    assert tuple(out[8, 2]) == RED and tuple(out[8, 12]) == (255, 255, 255)


def test_16bit_gray_png_is_scaled_not_clipped(tmp_path):
    ramp = np.linspace(0, 65535, 256, dtype=np.uint16)[None, :].repeat(4, 0)
    path = tmp_path / "g16.png"
    Image.fromarray(ramp).save(path)  # mode I;16
    assert Image.open(path).mode.startswith("I")
    out = np.asarray(load_image(path))[0, :, 0].astype(int)
    assert out[0] == 0 and out[-1] == 255
    assert abs(out[128] - 128) <= 1  # mid-grey stays mid-grey (clipping would give 255)
    assert np.all(np.diff(out) >= 0) and len(np.unique(out)) > 200


def test_16bit_rgb_png(tmp_path):
    a = np.zeros((8, 8, 3), np.uint16)
    a[..., 0], a[..., 1], a[..., 2] = 65535, 32896, 2570  # 255, 128, 10 in 8 bit
    path = tmp_path / "rgb16.png"
    cv2.imwrite(str(path), a[..., ::-1])  # OpenCV writes BGR
    out = np.asarray(load_image(path))
    assert np.abs(out[0, 0].astype(int) - (255, 128, 10)).max() <= 1


def test_16bit_tiff(tmp_path):
    path = tmp_path / "g16.tif"
    Image.fromarray(np.full((8, 8), 32896, np.uint16)).save(path)
    assert abs(int(np.asarray(load_image(path))[0, 0, 0]) - 128) <= 1


def test_exif_orientation_applied(tmp_path):
    raw = halves(60, 40)  # stored landscape: red left, blue right
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = tmp_path / "rot.jpg"
    Image.fromarray(raw).save(path, exif=exif.tobytes(), quality=95)
    im = load_image(path)
    assert im.size == (40, 60)  # displayed portrait
    a = np.asarray(im).astype(int)
    assert np.abs(a[10, 20] - RED).max() < 40  # red is on top after the 90-degree clockwise turn
    assert np.abs(a[50, 20] - BLUE).max() < 40


def _msg(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert "\n" not in msg
    return msg


def test_truncated_jpeg(tmp_path):
    buf = io.BytesIO()
    Image.fromarray((np.random.default_rng(0).random((256, 256, 3)) * 255).astype(np.uint8)).save(buf, "JPEG")
    path = tmp_path / "x.jpg"
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(MediaError) as err:
        load_image(path)
    assert "'" + str(path) + "'" in _msg(err) and "truncated JPEG" in _msg(err)


def test_truncated_png(tmp_path):
    buf = io.BytesIO()
    Image.fromarray((np.random.default_rng(0).random((128, 128, 3)) * 255).astype(np.uint8)).save(buf, "PNG")
    path = tmp_path / "t.png"
    path.write_bytes(buf.getvalue()[:3000])
    with pytest.raises(MediaError, match="cannot decode .*t.png.*PNG"):
        load_image(path)


def test_empty_file(tmp_path):
    path = tmp_path / "e.jpg"
    path.write_bytes(b"")
    with pytest.raises(MediaError) as err:
        load_image(path)
    assert _msg(err) == f"'{path}' is empty (0 bytes)"


def test_text_named_jpg(tmp_path):
    path = tmp_path / "a.jpg"
    path.write_text("hello, I am not a picture\n")
    with pytest.raises(MediaError) as err:
        load_image(path)
    assert _msg(err) == f"'{path}' is not an image (looks like text)"


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(MediaError, match="does not exist"):
        load_image(tmp_path / "nope.png")
    with pytest.raises(MediaError, match="is a directory"):
        load_image(tmp_path)


def _png_header_only(path, w: int, h: int) -> None:
    """A valid PNG signature + IHDR claiming w x h, with a tiny (wrong) IDAT: a decompression-bomb header."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


def test_pixel_limit(tmp_path):
    path = tmp_path / "big.png"
    Image.new("RGB", (2000, 1000), (10, 20, 30)).save(path)  # 2 Mpx, compresses to a few KiB
    with pytest.raises(MediaError) as err:
        load_image(path, MediaLimits(max_pixels=1_000_000))
    assert _msg(err) == f"'{path}' has 2000000 pixels (2000x1000), above the limit of 1000000 (--max-pixels)"
    assert load_image(path, MediaLimits(max_pixels=2_000_000)).size == (2000, 1000)


@pytest.mark.parametrize("side", [10_000, 20_000])  # above Pillow's warning (89 Mpx) and error (179 Mpx) limits
def test_decompression_bomb_headers(tmp_path, side):
    path = tmp_path / "bomb.png"
    _png_header_only(path, side, side)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no DecompressionBombWarning may escape either
        with pytest.raises(MediaError) as err:
            load_image(path)
    assert f"has {side * side} pixels" in _msg(err) and "--max-pixels" in _msg(err)


def test_limit_above_pillows_own(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # Pillow would refuse a 100x100 image as a bomb
    path = tmp_path / "ok.png"
    Image.new("RGB", (100, 100), RED).save(path)
    assert load_image(path, MediaLimits(max_pixels=1_000_000)).size == (100, 100)
    assert Image.MAX_IMAGE_PIXELS == 1000  # restored
    with pytest.raises(MediaError, match="--max-pixels"):
        load_image(path, MediaLimits(max_pixels=5000))


def test_file_size_limit(tmp_path):
    path = tmp_path / "noise.png"
    Image.fromarray((np.random.default_rng(0).random((700, 700, 3)) * 255).astype(np.uint8)).save(path)
    assert path.stat().st_size > 1024 * 1024
    with pytest.raises(MediaError) as err:
        load_image(path, MediaLimits(max_file_mb=1.0))
    assert "above the limit of 1 MiB (--max-file-mb)" in _msg(err)
    assert load_image(path, MediaLimits(max_file_mb=5.0)).size == (700, 700)


def test_corrupt_bytes_never_escape_as_other_errors(tmp_path):
    """Fuzz: truncations and byte flips of every format give an RGB image or a MediaError, nothing else."""
    rng = np.random.default_rng(1)
    pic = Image.fromarray((rng.random((40, 56, 3)) * 255).astype(np.uint8))
    outcomes = {"ok": 0, "error": 0}
    for fmt, ext in (("JPEG", ".jpg"), ("PNG", ".png"), ("WEBP", ".webp"), ("GIF", ".gif"), ("TIFF", ".tif"),
                     ("BMP", ".bmp")):
        buf = io.BytesIO()
        pic.save(buf, fmt)
        data = buf.getvalue()
        for trial in range(12):
            b = bytearray(data)
            if trial % 2:
                b = b[: int(len(b) * rng.uniform(0.05, 0.95))]
            else:
                for pos in rng.integers(0, len(b), size=8):
                    b[pos] = int(rng.integers(0, 256))
            path = tmp_path / f"f{trial}{ext}"
            path.write_bytes(bytes(b))
            try:
                im = load_image(path)
            except MediaError as err:
                assert "\n" not in str(err) and str(path) in str(err)
                outcomes["error"] += 1
            else:
                assert im.mode == "RGB"
                outcomes["ok"] += 1
    assert outcomes["error"] > 10


def test_file_sha256(tmp_path):
    path = tmp_path / "data.bin"
    data = np.random.default_rng(0).bytes(3 * 1024 * 1024 + 17)  # spans several read blocks
    path.write_bytes(data)
    assert file_sha256(path) == hashlib.sha256(data).hexdigest()


def test_weights_sha256_hashes_once_until_the_file_changes(tmp_path, monkeypatch):
    import x2dfd.media as media

    path = tmp_path / "w.safetensors"
    path.write_bytes(b"first")
    calls = []
    real = media.file_sha256
    monkeypatch.setattr(media, "file_sha256", lambda p: calls.append(p) or real(p))
    assert media.weights_sha256(path) == hashlib.sha256(b"first").hexdigest()
    assert media.weights_sha256(path) == hashlib.sha256(b"first").hexdigest()
    assert len(calls) == 1  # checked, then loaded: one read
    path.write_bytes(b"second file")  # replaced (other size and time): hashed again
    assert media.weights_sha256(path) == hashlib.sha256(b"second file").hexdigest()
    assert len(calls) == 2


def test_limits_validated():
    with pytest.raises(UsageError, match="--max-pixels"):
        MediaLimits(max_pixels=0)
    with pytest.raises(UsageError, match="--max-file-mb"):
        MediaLimits(max_file_mb=0)
    with pytest.raises(UsageError, match="--max-video-mb"):
        MediaLimits(max_video_mb=-1)


def test_video_messages_say_what_is_really_wrong(tmp_path):
    """A truncated .mp4 is called truncated (renaming would not help); a video under an image name is told to
    take a video extension; devices are refused without being read."""
    import cv2

    from x2dfd.media import sample_video

    clip = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"mp4v"), 5, (64, 64))
    for i in range(6):
        writer.write(np.full((64, 64, 3), 40 * i, np.uint8))
    writer.release()
    data = clip.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[:200])
    with pytest.raises(MediaError) as err:
        sample_video(cut, 2)
    assert "truncated or corrupt" in _msg(err) and "video extension" not in _msg(err)
    disguised = tmp_path / "holiday.jpg"
    disguised.write_bytes(data)
    with pytest.raises(MediaError) as err:
        load_image(disguised)
    assert "the content is a video: rename it with a video extension" in _msg(err)
    with pytest.raises(MediaError) as err:
        load_image("/dev/zero")
    assert _msg(err) == "'/dev/zero' is a character device, not a regular file"
