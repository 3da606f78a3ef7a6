"""Expand the command line's INPUT... (files, directories searched recursively, globs) into media files."""

from __future__ import annotations

import glob
import os
import stat
import sys
from pathlib import Path

from x2dfd.errors import UsageError
from x2dfd.records import safe_text

IMAGE_EXTS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"})
VIDEO_EXTS = frozenset({".mp4", ".avi", ".mov", ".webm", ".mkv", ".m4v"})
MEDIA_EXTS = IMAGE_EXTS | VIDEO_EXTS


def media_kind(path: str | os.PathLike) -> str:
    """``"video"`` for video extensions, else ``"image"`` (decoding decides whether it really is one)."""
    return "video" if Path(path).suffix.lower() in VIDEO_EXTS else "image"


def file_type(mode: int) -> str | None:
    """None for a regular file, else what it is ("a character device", "a FIFO", ...)."""
    if stat.S_ISREG(mode):
        return None
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def _regular(path: Path) -> bool:
    try:
        return stat.S_ISREG(path.stat().st_mode)
    except OSError:
        return False


def expand_inputs(inputs: list[str]) -> list[str]:
    """Files as given (any extension: a bad one becomes an error record, not a silent skip);
    directories walked recursively for media extensions, sorted; globs expanded. Duplicates dropped.

    Only regular files are ever read: a device (``/dev/zero``), FIFO or socket named on the command
    line is a usage error (reading one could block or never end); one found in a folder or by a glob
    is skipped with a warning line."""
    out: list[str] = []
    skipped: list[str] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            for f in sorted(p.rglob("*"), key=str):
                if f.name.startswith(".") or f.suffix.lower() not in MEDIA_EXTS:
                    continue
                if _regular(f):
                    out.append(str(f))
                elif not f.is_dir():
                    skipped.append(str(f))
        elif p.exists() or p.is_symlink():
            try:
                kind = file_type(p.stat().st_mode)
            except OSError as err:  # e.g. a dangling symlink, a permission problem on the way
                raise UsageError(f"input '{safe_text(item)}' cannot be read ({err.strerror or err})") from None
            if kind is not None:
                raise UsageError(f"input '{safe_text(item)}' is {kind}, not a regular file: x2dfd reads image and video "
                                 "files only")
            out.append(str(p))
        elif glob.has_magic(item):
            matches = sorted(glob.glob(item, recursive=True))
            regular = [m for m in matches if _regular(Path(m))]
            skipped += [m for m in matches if not _regular(Path(m)) and not Path(m).is_dir()]
            if not regular:
                raise UsageError(f"no files match '{safe_text(item)}'")
            out.extend(regular)
        else:
            raise UsageError(f"input '{safe_text(item)}' does not exist (give files, directories or glob patterns)")
    if skipped:
        print(f"x2dfd: skipped {len(skipped)} path(s) that are not regular files (devices, FIFOs, sockets, broken "
              f"links), e.g. '{safe_text(skipped[0])}'", file=sys.stderr)
    seen: set[str] = set()
    unique = []
    for path in out:
        key = os.path.realpath(path)
        if key not in seen:
            seen.add(key)
            unique.append(path)
    if not unique:
        raise UsageError(f"no image or video files found in {safe_text(' '.join(inputs))} "
                         f"(extensions: {', '.join(sorted(MEDIA_EXTS))})")
    return unique
