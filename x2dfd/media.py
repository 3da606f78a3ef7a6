"""Decode images and sample video frames, never crashing a batch: every failure is one MediaError line.

    from x2dfd.media import MediaLimits, load_image, sample_video, aggregate_frames
    image = load_image("photo.jpg")                      # RGB PIL image, EXIF orientation applied
    frames, info = sample_video("clip.mp4", n_frames=16)  # uniform over the whole video
    p_video = aggregate_frames([0.9, None, 0.7], "mean")

Images: JPEG, PNG (8/16 bit), WebP, BMP, TIFF, GIF (first frame) and whatever else Pillow reads;
every mode becomes RGB. A file that is missing, empty, too large, too many pixels (decompression
bombs), truncated, corrupt or not an image raises :class:`~x2dfd.errors.MediaError` whose message
names the file and the cause; the explain loop turns it into an ``undetermined`` record.

Videos (mp4, avi, mov, webm, mkv, ...) are decoded with PyAV (FFmpeg), not OpenCV. Speed does not
decide it: OpenCV's VideoCapture wraps the same FFmpeg, and bench/bench_face.py measures the two
within about 20% of each other per decoded frame, either way depending on the codec. But PyAV
exposes packets: one demux pass (no decoding, ~1 ms per 100 frames) counts the frames exactly
and finds the keyframes, where OpenCV only reports the container's frame count, which webm and mkv
do not store (OpenCV estimates it from duration x fps) and broken files get wrong. Sampling is by
frame index, uniform over the whole video (``np.linspace(0, n - 1, k)`` as DeepfakeBench does);
frames are decoded sequentially, or by seeking to the keyframe before each sampled frame when that
decodes fewer frames (long videos). Corrupt packets are skipped; the phone rotation flag is applied.
"""

from __future__ import annotations

import bisect
import hashlib
import math
import re
import statistics
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from x2dfd.errors import MediaError, UsageError

MB = 1024 * 1024
AGGREGATES = ("mean", "median", "max", "topk", "segments")
DEFAULT_FRAMES = 16  # DeepfakeBench samples 8-32 frames per video (32 for training, 8-16 common at test)
VIDEO_DECODER = "pyav"


@dataclass(frozen=True)
class MediaLimits:
    """Safety limits for decoding untrusted files."""

    max_pixels: int = 64_000_000
    """Images (and video frames) with more pixels are refused (decompression-bomb guard); --max-pixels."""
    max_file_mb: float = 200.0
    """Image files larger than this many MiB are refused; --max-file-mb."""
    max_video_mb: float = 2048.0
    """Video files larger than this many MiB are refused; --max-video-mb."""

    def __post_init__(self):
        if self.max_pixels < 1:
            raise UsageError(f"--max-pixels must be >= 1, got {self.max_pixels}")
        if not self.max_file_mb > 0:
            raise UsageError(f"--max-file-mb must be > 0, got {self.max_file_mb}")
        if not self.max_video_mb > 0:
            raise UsageError(f"--max-video-mb must be > 0, got {self.max_video_mb}")


# ---------------------------------------------------------------------------------------------- files
def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks (never the whole file in memory).

    Only regular files: a device (``/dev/zero`` never ends), FIFO or socket raises OSError at once
    (the FIFO is opened without blocking, so a pipe nobody writes to cannot hang the batch)."""
    import errno
    import os
    import stat

    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            from x2dfd.inputs import file_type

            raise OSError(errno.EINVAL, f"{file_type(mode)}, not a regular file", str(path))
        h = hashlib.sha256()
        with os.fdopen(fd, "rb", closefd=True) as f:
            fd = -1
            for block in iter(lambda: f.read(MB), b""):
                h.update(block)
        return h.hexdigest()
    finally:
        if fd >= 0:
            os.close(fd)


_WEIGHTS_SHA: dict[tuple, str] = {}


def weights_sha256(path: str | Path) -> str:
    """``file_sha256`` of a weights file, computed once per process while the file is unchanged (same device,
    inode, size and modification time): a run checks an adapter's recorded expert weights and then loads
    them, and both need the hash."""
    import os

    st = os.stat(path)
    key = (os.path.realpath(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    if key not in _WEIGHTS_SHA:
        _WEIGHTS_SHA[key] = file_sha256(path)
    return _WEIGHTS_SHA[key]


def _check_file(path: Path, name: str, max_mb: float, flag: str) -> int:
    """Size of an existing, non-empty regular file within the limit; else MediaError."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise MediaError(f"'{name}' does not exist") from None
    except OSError as err:
        raise MediaError(f"cannot read '{name}': {err.strerror or err}") from None
    if path.is_dir():
        raise MediaError(f"'{name}' is a directory, not a file")
    import stat

    if not stat.S_ISREG(st.st_mode):
        from x2dfd.inputs import file_type

        raise MediaError(f"'{name}' is {file_type(st.st_mode)}, not a regular file")
    if st.st_size == 0:
        raise MediaError(f"'{name}' is empty (0 bytes)")
    if st.st_size > max_mb * MB:
        raise MediaError(f"'{name}' is {st.st_size / MB:.1f} MiB, above the limit of {max_mb:g} MiB ({flag})")
    return st.st_size


_VIDEO_NAMES = "mp4, mov, m4v, mkv, webm or avi"


def _looks_like_video(head: bytes) -> bool:
    return head[4:8] == b"ftyp" or head[:4] == b"\x1aE\xdf\xa3" or (head[:4] == b"RIFF" and head[8:12] == b"AVI ")


def _sniff(path: Path) -> str:
    """A short guess of what an unusable file is, from its first bytes AND its name: a video container
    that does not decode under a video extension is truncated or corrupt (renaming would not help);
    under another extension it is a video in disguise."""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError:
        return "unreadable"
    is_video_name = path.suffix.lower() in {".mp4", ".avi", ".mov", ".webm", ".mkv", ".m4v"}
    if _looks_like_video(head):
        if is_video_name:
            return "the video container is truncated or corrupt (an incomplete download or copy?)"
        return f"the content is a video: rename it with a video extension ({_VIDEO_NAMES})"
    if head[:5] == b"%PDF-":
        return "a PDF document"
    if head[:8] == b"\x89PNG\r\n\x1a\n" or head[:3] == b"\xff\xd8\xff" or head[:6] in (b"GIF87a", b"GIF89a"):
        return "the content is an image, not a video" if is_video_name else "a damaged image"
    try:
        text = head.decode("utf-8")
        if all(c.isprintable() or c.isspace() for c in text):
            return "looks like text"
    except UnicodeDecodeError:
        pass
    return f"unknown format, starts with {head[:8].hex(' ')}"


# --------------------------------------------------------------------------------------------- images
_PIL_LOCK = threading.Lock()  # guards Pillow's global bomb limit when a caller raises ours above it
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, KeyError, MemoryError,
                  Image.DecompressionBombError)


def load_image(path: str | Path, limits: MediaLimits = MediaLimits()) -> Image.Image:
    """Fully decoded RGB image with its EXIF orientation applied.

    Animated files (GIF, APNG, WebP) give their first frame. Transparent pixels are composited on
    white (as viewers show them; black would turn a transparent background into a dark silhouette).
    16-bit data is scaled to 8 bit (v / 257), never clipped. Raises MediaError, one line naming the
    file and the cause, for anything that is not a decodable image within ``limits``.
    """
    path = Path(path)
    name = str(path)
    _check_file(path, name, limits.max_file_mb, "--max-file-mb")
    pil_limit = Image.MAX_IMAGE_PIXELS
    if pil_limit is not None and limits.max_pixels > pil_limit:
        with _PIL_LOCK:  # rare: a caller allows more pixels than Pillow's own bomb guard
            Image.MAX_IMAGE_PIXELS = None
            try:
                return _decode(path, name, limits)
            finally:
                Image.MAX_IMAGE_PIXELS = pil_limit
    return _decode(path, name, limits)


def _decode(path: Path, name: str, limits: MediaLimits) -> Image.Image:
    fmt = "image"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit applies below
            warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")  # "Corrupt EXIF data" etc.
            with Image.open(path) as im:
                fmt = im.format or fmt
                w, h = im.size
                if w * h > limits.max_pixels:
                    raise MediaError(_too_many_pixels(name, w, h, limits))
                if w < 1 or h < 1:
                    raise MediaError(f"cannot decode '{name}': {fmt} of size {w}x{h}")
                im.seek(0)
                im.load()  # decode now, so truncation is caught here
                try:
                    oriented = ImageOps.exif_transpose(im)
                except _DECODE_ERRORS:  # a malformed EXIF block must not cost the picture
                    oriented = im.copy()
                return to_rgb(oriented)
    except MediaError:
        raise
    except UnidentifiedImageError:
        raise MediaError(f"'{name}' is not an image ({_sniff(path)})") from None
    except (PermissionError, FileNotFoundError, IsADirectoryError) as err:
        raise MediaError(f"cannot read '{name}': {err.strerror or err}") from None
    except Image.DecompressionBombError as err:  # Pillow's own guard (above 2x its limit) fired first
        found = re.search(r"\((\d+) pixels\)", str(err))
        pixels = found.group(1) if found else "too many"
        raise MediaError(f"'{name}' has {pixels} pixels, above the limit of {limits.max_pixels} (--max-pixels)") from None
    except _DECODE_ERRORS as err:
        raise MediaError(f"cannot decode '{name}': {_cause(fmt, err)}") from None


def _too_many_pixels(name: str, w: int, h: int, limits: MediaLimits) -> str:
    return (f"'{name}' has {w * h} pixels ({w}x{h}), above the limit of {limits.max_pixels} "
            f"(--max-pixels)")


def _cause(fmt: str, err: BaseException) -> str:
    msg = " ".join(str(err).split()) or type(err).__name__
    low = msg.lower()
    if "truncated" in low or isinstance(err, EOFError):
        return f"truncated {fmt} ({msg})"
    if "broken data stream" in low:  # Pillow says this for cut-off files and for corrupt bytes alike
        return f"truncated or corrupt {fmt} ({msg})"
    if isinstance(err, MemoryError):
        return f"{fmt} too large to decode in memory"
    return f"corrupt {fmt} ({type(err).__name__}: {msg})"


def _scale_to_u8(arr: np.ndarray, sixteen_bit: bool = False) -> np.ndarray:
    """16-bit (or wider) samples to 8 bit by scaling their range, never by clipping. ``sixteen_bit``:
    the mode says 16 bit (I;16*); plain 32-bit ``I`` data is read as 8-bit when it stays within 0-255,
    else as 16-bit when within 0-65535, else stretched from its min to its max."""
    arr = np.asarray(arr)
    if arr.dtype == np.uint8:
        return arr
    if np.issubdtype(arr.dtype, np.floating):
        a = np.nan_to_num(arr.astype(np.float64))
        lo, hi = float(a.min(initial=0.0)), float(a.max(initial=0.0))
        if lo >= 0.0 and hi <= 1.0:  # float images in [0, 1]
            return np.round(a * 255.0).astype(np.uint8)
        return np.round((a - lo) * (255.0 / (hi - lo or 1.0))).astype(np.uint8)
    a = arr.astype(np.int64)
    lo, hi = int(a.min(initial=0)), int(a.max(initial=0))
    if not sixteen_bit and lo >= 0 and hi <= 255:
        return a.astype(np.uint8)
    if lo >= 0 and hi <= 65535:
        return ((a * 255 + 32767) // 65535).astype(np.uint8)
    return np.round((a - lo) * (255.0 / (hi - lo or 1))).astype(np.uint8)


def _on_white(rgba: Image.Image) -> Image.Image:
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


def to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB: alpha composited on white, 16-bit scaled, CMYK/YCbCr/LAB converted."""
    mode = im.mode
    if mode == "RGB":
        return im.copy() if im.readonly else im
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in im.info) or (
        mode == "L" and "transparency" in im.info
    ):
        if mode == "La":
            im = im.convert("LA")
        return _on_white(im.convert("RGBA"))
    if mode.startswith("I") or mode == "F":
        gray = _scale_to_u8(np.asarray(im), sixteen_bit=mode.startswith("I;16"))
        if gray.ndim == 3:
            gray = gray[..., 0]
        return Image.fromarray(np.ascontiguousarray(gray)).convert("RGB")
    return im.convert("RGB")


def image_from_memory(obj, name: str, limits: MediaLimits = MediaLimits()) -> Image.Image:
    """An in-memory picture (Python API) as the same RGB image a decoded file gives: a PIL image (any
    mode; EXIF orientation applied) or a numpy array, HxW (gray) or HxWx3/4 in RGB(A) order, uint8 or
    16-bit (scaled), or float in [0, 1]. Raises MediaError (one line naming ``name``) for anything else."""
    if isinstance(obj, Image.Image):
        w, h = obj.size
        if w * h > limits.max_pixels:
            raise MediaError(_too_many_pixels(name, w, h, limits))
        try:
            obj = ImageOps.exif_transpose(obj)
        except _DECODE_ERRORS:
            pass
        return to_rgb(obj)
    if not isinstance(obj, np.ndarray):
        raise MediaError(f"'{name}' is a {type(obj).__name__}: give a path, a PIL image or a numpy array")
    arr = obj
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (3, 4))) or min(arr.shape[:2]) < 1:
        raise MediaError(f"'{name}' has shape {arr.shape}: expected HxW, HxWx3 (RGB) or HxWx4 (RGBA)")
    h, w = arr.shape[:2]
    if w * h > limits.max_pixels:
        raise MediaError(_too_many_pixels(name, w, h, limits))
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all() or arr.min() < 0 or arr.max() > 1:
            raise MediaError(f"'{name}' is a float array outside [0, 1]: give uint8 (0-255) or floats in [0, 1]")
        arr = np.round(arr * 255.0).astype(np.uint8)
    elif arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * 255
    elif arr.dtype.kind in "ui":
        if arr.min() < 0:
            raise MediaError(f"'{name}' has negative pixel values")
        arr = _scale_to_u8(arr, sixteen_bit=arr.dtype.itemsize == 2)
    else:
        raise MediaError(f"'{name}' has dtype {arr.dtype}: give uint8, uint16 or float pixels")
    return to_rgb(Image.fromarray(np.ascontiguousarray(arr)))  # uint8: L, RGB or RGBA by channel count


def memory_sha256(image: Image.Image) -> str:
    """Hex SHA-256 of an in-memory picture: its size and RGB pixels (what the verdict is about)."""
    h = hashlib.sha256(f"{image.width}x{image.height}:".encode())
    h.update(image.tobytes())
    return h.hexdigest()


# --------------------------------------------------------------------------------------------- videos
@dataclass
class VideoFrame:
    """One sampled frame: its index in presentation order, its time and its RGB picture."""

    index: int
    time_s: float
    image: Image.Image


def uniform_indices(total: int, n: int) -> list[int]:
    """``n`` frame indices spread evenly over ``[0, total - 1]`` (first and last included), as
    DeepfakeBench samples (``np.linspace(..., dtype=int)``); all frames when ``n >= total``."""
    if total <= 0 or n <= 0:
        return []
    if n >= total:
        return list(range(total))
    return sorted({int(i) for i in np.linspace(0, total - 1, n, endpoint=True, dtype=int)})


def sample_video(path: str | Path, n_frames: int = DEFAULT_FRAMES,
                 limits: MediaLimits = MediaLimits(), method: str = "auto",
                 indices: list[int] | None = None) -> tuple[list[VideoFrame], dict[str, Any]]:
    """``n_frames`` RGB frames sampled uniformly by index over the whole video, and the video's info
    (fps, total_frames, width, height, duration_s, decoder, rotation, method, corrupt_packets).
    ``indices``: exactly these frame indices instead (presentation order; those past the end are dropped),
    e.g. one frame that ``x2dfd.dataset.sample_frames`` chose with ``uniform_indices``.

    ``method``: "sequential" decodes every frame (converting only the sampled ones), "seek" jumps to
    the keyframe before each sampled frame, "auto" picks whichever decodes fewer frames.
    Raises MediaError for missing, empty, too large, unreadable or frameless videos.
    """
    import av

    if n_frames < 1:
        raise UsageError(f"--frames must be >= 1, got {n_frames}")
    if method not in ("auto", "sequential", "seek"):
        raise ValueError(f"method must be auto, sequential or seek, got {method!r}")
    path = Path(path)
    name = str(path)
    _check_file(path, name, limits.max_video_mb, "--max-video-mb")
    try:
        scan = _scan(path, name, limits)
        targets = (uniform_indices(scan.total, n_frames) if indices is None
                   else sorted({int(i) for i in indices if 0 <= int(i) < scan.total}))
        use_seek = method == "seek" or (method == "auto" and scan.seek_cost(targets) < 0.5 * scan.total)
        if use_seek and scan.pts_sorted is not None:
            try:
                frames = _decode_seek(path, scan, targets)
            except _SeekFailed:
                use_seek = False
        else:
            use_seek = False
        if not use_seek:
            frames, decoded = _decode_sequential(path, scan, targets)
            if decoded < scan.total and len(frames) < len(targets):
                # Fewer frames decode than packets exist (corrupt tail, stray packets): sample again
                # over the frames that really decode.
                scan.total = decoded
                targets = (uniform_indices(decoded, n_frames) if indices is None
                           else [i for i in targets if i < decoded])
                frames, _ = _decode_sequential(path, scan, targets)
    except MediaError:
        raise
    except (av.error.FFmpegError, OSError, ValueError, EOFError, MemoryError) as err:
        raise MediaError(f"cannot decode video '{name}': {' '.join(str(err).split()) or type(err).__name__}") from None
    if not frames:
        cause = f"; last error: {scan.last_error}" if scan.last_error else ""
        raise MediaError(f"cannot decode video '{name}': no frame could be decoded ({scan.total} packets, "
                         f"{scan.corrupt} failed{cause})")
    width, height = (scan.height, scan.width) if scan.rotation in (90, 270) else (scan.width, scan.height)
    info = {
        "fps": round(scan.fps, 4), "total_frames": scan.total, "width": width, "height": height,
        "duration_s": round(scan.duration_s, 4), "decoder": f"{VIDEO_DECODER} {av.__version__} ({scan.codec})",
        "container": scan.container, "rotation": scan.rotation, "method": "seek" if use_seek else "sequential",
        "corrupt_packets": scan.corrupt,
    }
    return frames, info


def count_video_frames(path: str | Path, limits: MediaLimits = MediaLimits()) -> int:
    """The video's exact frame count from one demux pass (no decoding), as ``sample_video`` counts them
    before sampling. Raises MediaError for missing, empty, too large or unreadable videos."""
    import av

    path = Path(path)
    name = str(path)
    _check_file(path, name, limits.max_video_mb, "--max-video-mb")
    try:
        return _scan(path, name, limits).total
    except MediaError:
        raise
    except (av.error.FFmpegError, OSError, ValueError, EOFError, MemoryError) as err:
        raise MediaError(f"cannot decode video '{name}': {' '.join(str(err).split()) or type(err).__name__}") from None


class _SeekFailed(Exception):
    """Seeking did not land where the packet scan said; decode sequentially instead."""


@dataclass
class _Scan:
    total: int
    pts_sorted: list[int] | None  # presentation timestamps in order (None: some packets lack pts)
    key_index: list[int]  # presentation indices of keyframes, sorted
    fps: float
    duration_s: float
    width: int
    height: int
    time_base: float
    start: int
    codec: str
    container: str
    rotation: int = 0
    corrupt: int = 0  # packets that failed to decode (skipped)
    last_error: str = ""

    def seek_cost(self, targets: list[int]) -> float:
        """Frames decoded when seeking to each target's preceding keyframe (vs ``total`` sequentially)."""
        if self.pts_sorted is None or not self.key_index:
            return math.inf
        cost = 0
        for t in targets:
            k = bisect.bisect_right(self.key_index, t) - 1
            cost += t - (self.key_index[k] if k >= 0 else 0) + 1 + 8  # + decoder warm-up / reorder delay
        return cost

    def time_of(self, pts: int | None, index: int) -> float:
        if pts is not None:
            return max(0.0, (pts - self.start) * self.time_base)
        return index / self.fps if self.fps > 0 else 0.0


def _open(path: Path, name: str):
    import av

    try:
        container = av.open(str(path), mode="r", metadata_errors="ignore")
    except av.error.FFmpegError as err:
        raise MediaError(f"'{name}' is not a readable video: {_sniff(path)} (FFmpeg: {_ffmpeg_reason(err)})") from None
    # Skip cover art (an "attached picture" stream that mp4/mkv files may carry besides the video).
    attached = getattr(getattr(av.stream, "Disposition", None), "attached_pic", 0)
    streams = [s for s in container.streams.video if not (int(s.disposition or 0) & int(attached))]
    if not streams:
        container.close()
        raise MediaError(f"'{name}' has no video stream")
    return container, streams[0]


def _ffmpeg_reason(err: BaseException) -> str:
    """PyAV's message without its errno number and the file name it repeats."""
    text = getattr(err, "strerror", None) or str(err)
    text = re.sub(r"^\\[Errno -?\\d+\\]\\s*", "", " ".join(str(text).split()))
    return re.sub(r":\\s*'[^']*'$", "", text) or type(err).__name__


def _scan(path: Path, name: str, limits: MediaLimits) -> _Scan:
    """One demux pass (no decoding): exact frame count, presentation timestamps, keyframes."""
    container, stream = _open(path, name)
    with container:
        cc = stream.codec_context
        width, height = int(cc.width or 0), int(cc.height or 0)
        if width * height > limits.max_pixels:
            raise MediaError(f"'{name}' has {width * height} pixels per frame ({width}x{height}), above the limit "
                             f"of {limits.max_pixels} (--max-pixels)")
        pts: list[int | None] = []
        keys: list[int | None] = []
        for packet in container.demux(stream):
            if packet.size == 0:  # the flush packet
                continue
            pts.append(packet.pts)
            if packet.is_keyframe:
                keys.append(packet.pts)
        tb = float(stream.time_base) if stream.time_base else 0.0
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        start = stream.start_time if stream.start_time is not None else 0
        total = len(pts)
        if total == 0:
            raise MediaError(f"'{name}' has no video frames")
        duration = None
        if stream.duration and tb:
            duration = stream.duration * tb
        elif container.duration:
            duration = container.duration / 1_000_000  # AV_TIME_BASE
        fps = float(rate) if rate else 0.0
        if fps <= 0 and duration:
            fps = total / duration
        if duration is None:
            duration = total / fps if fps > 0 else 0.0
        rotation = 0
        if any(p is None for p in pts):
            pts_sorted, key_index = None, []
        else:
            pts_sorted = sorted(pts)  # decode order -> presentation order (B-frames)
            key_index = sorted(bisect.bisect_left(pts_sorted, k) for k in keys if k is not None)
        return _Scan(total=total, pts_sorted=pts_sorted, key_index=key_index, fps=fps, duration_s=float(duration),
                     width=width, height=height, time_base=tb, start=start, codec=cc.name,
                     container=container.format.name, rotation=rotation)


def _frames_of(container, stream, scan: _Scan):
    """Decoded frames of the stream; a packet that fails to decode is counted and skipped."""
    import av

    for packet in container.demux(stream):
        try:
            decoded = packet.decode()
        except av.error.FFmpegError as err:
            scan.corrupt += 1
            scan.last_error = " ".join(str(err).split())
            continue
        yield from decoded


def _to_frame(frame, index: int, scan: _Scan) -> VideoFrame:
    image = Image.fromarray(frame.to_ndarray(format="rgb24"))  # 1 ms at 720p, VideoFrame.to_image() 9 ms
    rotation = int(round(getattr(frame, "rotation", 0) or 0)) % 360
    if rotation:
        scan.rotation = rotation
        # The display matrix rotates counter-clockwise by ``rotation`` degrees to show the frame upright.
        image = image.rotate(rotation, expand=True)
    return VideoFrame(index=index, time_s=round(scan.time_of(frame.pts, index), 4), image=image)


def _decode_sequential(path: Path, scan: _Scan, targets: list[int]) -> tuple[list[VideoFrame], int]:
    container, stream = _open(path, str(path))
    stream.thread_type = "AUTO"
    wanted = set(targets)
    last = max(targets) if targets else -1
    frames: list[VideoFrame] = []
    index = -1
    with container:
        for index, frame in enumerate(_frames_of(container, stream, scan)):
            if index in wanted:
                frames.append(_to_frame(frame, index, scan))
                if index == last:
                    break
    return frames, index + 1


def _decode_seek(path: Path, scan: _Scan, targets: list[int]) -> list[VideoFrame]:
    container, stream = _open(path, str(path))
    stream.thread_type = "AUTO"
    assert scan.pts_sorted is not None
    frames: list[VideoFrame] = []
    with container:
        for t in targets:
            target_pts = scan.pts_sorted[t]
            container.seek(target_pts, stream=stream, backward=True, any_frame=False)
            got, before = None, False
            for frame in _frames_of(container, stream, scan):
                if frame.pts is None:
                    raise _SeekFailed("frame without pts")
                if frame.pts < target_pts:
                    before = True
                    continue
                if frame.pts > target_pts and not before:
                    raise _SeekFailed(f"seek to frame {t} landed after it")
                got = frame  # the target, or the next frame when the target itself did not decode
                break
            if got is None:
                raise _SeekFailed(f"frame {t} not reached")
            frames.append(_to_frame(got, t, scan))
    return frames


# ------------------------------------------------------------------------------------------ aggregate
def aggregate_frames(p_fakes: list[float | None], method: str = "mean", k: int = 3) -> float | None:
    """The video's p_fake from its frames' (None: frame without a face or score, ignored).

    ``mean`` (default, DeepfakeBench's video-level metric), ``median`` (robust to a few odd frames),
    ``max`` (one manipulated frame is enough), ``topk`` (mean of the k most fake-looking frames: a
    partly manipulated video without ``max``'s single-frame noise), ``segments`` (the mean of the strongest
    manipulated segment, see ``x2dfd.segments``; ``p_fakes`` in time order). None when no frame has a score.
    """
    if method not in AGGREGATES:
        raise UsageError(f"--aggregate '{method}' is unknown. Available: {', '.join(AGGREGATES)}.")
    values = [float(p) for p in p_fakes if p is not None and not math.isnan(float(p))]
    if not values:
        return None
    if method == "mean":
        return sum(values) / len(values)
    if method == "median":
        return float(statistics.median(values))
    if method == "max":
        return max(values)
    if method == "segments":
        from x2dfd.segments import segment_score_values

        return segment_score_values(list(p_fakes))
    if k < 1:
        raise UsageError(f"--topk must be >= 1, got {k}")
    top = sorted(values, reverse=True)[:k]
    return sum(top) / len(top)
