"""Video decoding and sampling in every container, bad videos as MediaError, video-level aggregation.

Videos are written in tmp_path by the project's own encoder (x2dfd.faceswap.write_video). Each frame
shows its own index as an 8-bit stripe code, so a test can check that the frame sampled as index k
really is frame k (B-frame reordering, seeking)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from x2dfd.errors import MediaError, NoFaceError, UsageError
from x2dfd.face import extract_faces
from x2dfd.faceswap import make_test_video, render_test_frames, write_video
from x2dfd.media import AGGREGATES, MediaLimits, aggregate_frames, load_image, sample_video, uniform_indices

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CONTAINERS = (".mp4", ".avi", ".mov", ".webm", ".mkv")
W, H, N, FPS = 160, 96, 40, 10.0


def code_frame(i: int) -> np.ndarray:
    """Frame ``i``: bit b of i as a white stripe b (top half); a red block bottom-left marks orientation."""
    f = np.zeros((H, W, 3), np.uint8)
    for b in range(8):
        if (i >> b) & 1:
            f[: H // 2, b * 20 : (b + 1) * 20] = 255
    f[H // 2 :, : W // 4] = (255, 0, 0)
    return f


def read_code(image: Image.Image) -> int:
    a = np.asarray(image).astype(np.float32)
    return sum(1 << b for b in range(8) if a[6 : H // 2 - 6, b * 20 + 4 : (b + 1) * 20 - 4].mean() > 128)


@pytest.fixture(scope="module")
def coded_videos(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("videos")
    frames = [code_frame(i) for i in range(N)]
    return {ext: write_video(frames, out / f"coded{ext}", fps=FPS, gop=8) for ext in CONTAINERS}


@pytest.mark.parametrize("ext", CONTAINERS)
@pytest.mark.parametrize("method", ["auto", "sequential", "seek"])
def test_uniform_sampling_in_every_container(coded_videos, ext, method):
    frames, info = sample_video(coded_videos[ext], 8, method=method)
    expected = [int(i) for i in np.linspace(0, N - 1, 8, dtype=int)]  # DeepfakeBench's indices
    assert [f.index for f in frames] == expected == uniform_indices(N, 8)
    assert [read_code(f.image) for f in frames] == expected  # the pixels really are those frames
    assert all(abs(f.time_s - f.index / FPS) < 1e-3 for f in frames)
    assert all(f.image.mode == "RGB" and f.image.size == (W, H) for f in frames)
    assert info["total_frames"] == N and info["width"] == W and info["height"] == H
    assert abs(info["fps"] - FPS) < 1e-6 and abs(info["duration_s"] - N / FPS) < 0.15
    assert info["decoder"].startswith("pyav") and info["corrupt_packets"] == 0
    if method != "auto":
        assert info["method"] == method


def test_auto_seeks_in_long_videos_with_short_gops(tmp_path):
    path = write_video([code_frame(i % 256) for i in range(240)], tmp_path / "long.mkv", fps=FPS, gop=10)
    frames, info = sample_video(path, 4)
    assert info["method"] == "seek" and info["total_frames"] == 240
    assert [read_code(f.image) for f in frames] == [f.index % 256 for f in frames] == uniform_indices(240, 4)


def test_more_frames_than_the_video_has(coded_videos):
    frames, info = sample_video(coded_videos[".mp4"], 100)
    assert [f.index for f in frames] == list(range(N))
    assert [read_code(f.image) for f in frames] == list(range(N))


def test_single_frame_video(tmp_path):
    path = write_video([code_frame(5)], tmp_path / "one.mp4", fps=FPS)
    frames, info = sample_video(path, 16)
    assert [f.index for f in frames] == [0] and read_code(frames[0].image) == 5 and info["total_frames"] == 1


def test_rotation_flag_is_applied(tmp_path):
    path = write_video([code_frame(i) for i in range(4)], tmp_path / "phone.mp4", fps=FPS, rotation=90)
    frames, info = sample_video(path, 2)
    a = np.asarray(frames[0].image)
    assert a.shape == (W, H, 3) and info["rotation"] == 90 and (info["width"], info["height"]) == (H, W)
    red = np.argwhere((a[..., 0] > 200) & (a[..., 1] < 60) & (a[..., 2] < 60)).mean(0)
    # The stored frame's red block (bottom-left) is shown bottom-right after the 90-degree display
    # rotation (what players and OpenCV's auto-orientation show).
    assert red[0] > a.shape[0] * 0.6 and red[1] > a.shape[1] * 0.5


def test_bad_videos_are_media_errors(tmp_path, coded_videos):
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(MediaError, match=r"is empty \(0 bytes\)"):
        sample_video(empty)
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n" * 20)
    with pytest.raises(MediaError) as err:
        sample_video(text)
    assert str(text) in str(err.value) and "not a readable video" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(MediaError, match="does not exist"):
        sample_video(tmp_path / "missing.mkv")
    with pytest.raises(MediaError, match=r"--max-video-mb"):
        sample_video(coded_videos[".avi"], limits=MediaLimits(max_video_mb=1e-4))
    with pytest.raises(MediaError, match=r"pixels per frame .* \(--max-pixels\)"):
        sample_video(coded_videos[".avi"], limits=MediaLimits(max_pixels=1000))
    picture = tmp_path / "still.mkv"
    Image.new("RGB", (8, 8), (255, 0, 0)).save(picture, "PNG")  # FFmpeg reads a still picture as one frame
    frames, info = sample_video(picture)
    assert info["total_frames"] == 1 and np.asarray(frames[0].image)[0, 0].tolist() == [255, 0, 0]
    with pytest.raises(UsageError, match="--frames"):
        sample_video(coded_videos[".mp4"], 0)


def _write_av(path: Path, video: bool, audio: bool) -> Path:
    """A file with a video stream (coded frames) and/or an audio stream (a second of a 440 Hz tone)."""
    import av

    with av.open(str(path), "w") as c:
        vs = c.add_stream("libx264", rate=10) if video else None
        aus = c.add_stream("aac", rate=16000) if audio else None
        if vs is not None:
            vs.width, vs.height, vs.pix_fmt = W, H, "yuv420p"
            for i in range(12):
                for p in vs.encode(av.VideoFrame.from_ndarray(code_frame(i), format="rgb24")):
                    c.mux(p)
            for p in vs.encode():
                c.mux(p)
        if aus is not None:
            tone = (np.sin(np.arange(16000) * 2 * np.pi * 440 / 16000) * 0.3).astype(np.float32)
            for start in range(0, 16000, 1024):
                chunk = tone[start : start + 1024][None, :]
                frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="mono")
                frame.sample_rate, frame.pts = 16000, start
                for p in aus.encode(frame):
                    c.mux(p)
            for p in aus.encode():
                c.mux(p)
    return path


def test_audio_streams(tmp_path):
    frames, info = sample_video(_write_av(tmp_path / "talk.mp4", video=True, audio=True), 4)
    assert [read_code(f.image) for f in frames] == [f.index for f in frames] == uniform_indices(12, 4)
    assert info["total_frames"] == 12  # audio packets are not counted as frames
    with pytest.raises(MediaError, match="has no video stream"):
        sample_video(_write_av(tmp_path / "song.mkv", video=False, audio=True))


@pytest.mark.parametrize("ext", [".mp4", ".avi", ".mkv"])
def test_truncated_and_corrupt_videos_never_crash(tmp_path, coded_videos, ext):
    data = coded_videos[ext].read_bytes()
    rng = np.random.default_rng(0)
    for k, cut in enumerate((0.3, 0.6, 0.9)):
        path = tmp_path / f"cut{k}{ext}"
        path.write_bytes(data[: int(len(data) * cut)])
        _frames_or_media_error(path)
    b = bytearray(data)
    for pos in rng.integers(len(b) // 4, len(b), size=40):
        b[pos] = int(rng.integers(0, 256))
    path = tmp_path / f"flipped{ext}"
    path.write_bytes(bytes(b))
    _frames_or_media_error(path)


def _frames_or_media_error(path: Path) -> None:
    try:
        frames, info = sample_video(path, 8)
    except MediaError as err:
        assert str(path) in str(err) and "\n" not in str(err)
        return
    idx = [f.index for f in frames]
    assert frames and idx == sorted(set(idx)) and all(0 <= i < info["total_frames"] for i in idx)


@pytest.fixture(scope="module")
def face_images():
    if not DATA.is_dir():
        pytest.skip("../shared/data is not present")
    return [load_image(DATA / f"stylegan2-vs-real/images/real/real_{i}.jpg") for i in (10, 20, 30)]


def test_face_video_per_frame_crops(tmp_path, face_images):
    """A video made from face photos: faces found in the face frames, NoFaceError in the blank ones."""
    no_face = (4, 5, 11)
    path = make_test_video(face_images, tmp_path / "faces.mp4", n_frames=12, fps=6, size=(256, 192),
                           no_face_frames=no_face)
    frames, info = sample_video(path, 12)
    assert [f.index for f in frames] == list(range(12)) and info["total_frames"] == 12
    found = []
    for f in frames:
        try:
            [crop] = extract_faces(f.image, size=128)
        except NoFaceError:
            found.append(False)
            continue
        found.append(True)
        assert crop.image.size == (128, 128)
    assert [i for i, ok in enumerate(found) if not ok] == list(no_face)


def test_test_video_moves_and_zooms(face_images):
    frames = render_test_frames(face_images, n_frames=16, size=(256, 192), no_face_frames=(3,))
    bg = np.array([128, 128, 128])
    boxes = []
    for i, f in enumerate(frames):
        fg = np.argwhere(np.abs(f.astype(int) - bg).max(-1) > 0)
        if i == 3:
            assert len(fg) == 0  # a plain background frame
            continue
        (y0, x0), (y1, x1) = fg.min(0), fg.max(0)
        boxes.append((x0, y0, x1 - x0, y1 - y0))
    boxes = np.array(boxes)
    assert np.ptp(boxes[:, 0]) > 10 or np.ptp(boxes[:, 1]) > 10  # it moves
    assert np.ptp(boxes[:, 2]) > 10  # it zooms


# ------------------------------------------------------------------------------------------ aggregate
def test_aggregate_frames():
    p = [0.1, None, 0.9, 0.4, None, 0.8]
    assert aggregate_frames(p) == pytest.approx((0.1 + 0.9 + 0.4 + 0.8) / 4)
    assert aggregate_frames(p, "median") == pytest.approx(0.6)
    assert aggregate_frames(p, "max") == 0.9
    assert aggregate_frames(p, "topk", k=2) == pytest.approx(0.85)
    assert aggregate_frames(p, "topk", k=10) == pytest.approx(aggregate_frames(p))  # k beyond the frames
    assert aggregate_frames([None, None]) is None and aggregate_frames([]) is None
    assert aggregate_frames([float("nan"), 0.2], "mean") == pytest.approx(0.2)
    assert AGGREGATES == ("mean", "median", "max", "topk", "segments")
    assert aggregate_frames([0.1, 0.2, 0.9, 0.95, None, 0.1], "segments") == pytest.approx(0.925)  # x2dfd.segments
    for method in AGGREGATES:
        assert aggregate_frames([0.3], method) == pytest.approx(0.3)
    with pytest.raises(UsageError, match="Available: mean, median, max, topk, segments"):
        aggregate_frames([0.5], "mode")
    with pytest.raises(UsageError, match="--topk"):
        aggregate_frames([0.5], "topk", k=0)


def test_uniform_indices():
    assert uniform_indices(0, 8) == [] and uniform_indices(5, 8) == [0, 1, 2, 3, 4]
    idx = uniform_indices(300, 16)
    assert len(idx) == 16 and idx[0] == 0 and idx[-1] == 299
    gaps = np.diff(idx)
    assert gaps.max() - gaps.min() <= 1 and math.isclose(gaps.mean(), 299 / 15, rel_tol=0.01)
