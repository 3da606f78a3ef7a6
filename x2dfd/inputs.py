"""Expand the command line's INPUT... (files, directories searched recursively, globs) into media files."""

from __future__ import annotations

import glob
import os
from pathlib import Path

from x2dfd.errors import UsageError

IMAGE_EXTS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"})
VIDEO_EXTS = frozenset({".mp4", ".avi", ".mov", ".webm", ".mkv", ".m4v"})
MEDIA_EXTS = IMAGE_EXTS | VIDEO_EXTS


def media_kind(path: str | os.PathLike) -> str:
    """``"video"`` for video extensions, else ``"image"`` (decoding decides whether it really is one)."""
    return "video" if Path(path).suffix.lower() in VIDEO_EXTS else "image"


def expand_inputs(inputs: list[str]) -> list[str]:
    """Files as given (any extension: a bad one becomes an error record, not a silent skip);
    directories walked recursively for media extensions, sorted; globs expanded. Duplicates dropped."""
    out: list[str] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(
                str(f) for f in p.rglob("*") if f.is_file() and f.suffix.lower() in MEDIA_EXTS and not f.name.startswith(".")
            )
            out.extend(found)
        elif p.exists():
            out.append(str(p))
        elif glob.has_magic(item):
            matches = sorted(m for m in glob.glob(item, recursive=True) if Path(m).is_file())
            if not matches:
                raise UsageError(f"no files match '{item}'")
            out.extend(matches)
        else:
            raise UsageError(f"input '{item}' does not exist (give files, directories or glob patterns)")
    seen: set[str] = set()
    unique = []
    for path in out:
        key = os.path.realpath(path)
        if key not in seen:
            seen.add(key)
            unique.append(path)
    if not unique:
        raise UsageError(f"no image or video files found in {' '.join(inputs)} (extensions: {', '.join(sorted(MEDIA_EXTS))})")
    return unique
