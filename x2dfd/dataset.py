"""Labelled face data for ``x2dfd assess`` (and ``evaluate`` / ``finetune``): one loader, five layouts.

    ds = load_labelled("data/")                    # data/real/**, data/fake/**
    ds = load_labelled("manifest.csv")             # path,label[,video_id,source]
    ds = load_labelled("manifest.jsonl")           # {"path": ..., "label": ...} per line
    ds = load_labelled("FaceForensics++.json", split="train", compression="c23", root="datasets/")  # DeepfakeBench
    ds = load_labelled("Deepfakes_fake.json")      # X2-DFD: {"Description": root, "images": [{"image_path": ...}]}
    ds = sample_frames(ds, frames_per_video=8, seed=0)  # at most 8 frames per video; video files -> frame rows
    ds = balanced_sample(ds, per_class=200, seed=0)
    image = load_row_image(ds[0])                  # the row's picture (an image file, or one frame of a video)

The result is a ``datasets.Dataset`` with columns ``path`` (absolute), ``label`` (ClassLabel:
0 = real, 1 = fake), ``video_id`` and ``source`` (strings or None) and ``frame`` (the frame index of
a video file's row after :func:`sample_frames`, else None), in a deterministic order. A video file
(``x2dfd.inputs.VIDEO_EXTS``) without a ``video_id`` gets its own: its path relative to DATA (the
folder, the manifest's folder, the JSON's root), so two video files are never one video.

Layouts:

* folder: ``real/`` and ``fake/`` sub-folders (names case-insensitive), searched recursively for
  images and videos (``x2dfd.inputs.MEDIA_EXTS``; hidden files skipped). The first folder level below them is the ``source`` (``fake/Deepfakes/...`` ->
  ``Deepfakes``); a file two or more levels down gets its parent folder as ``video_id``
  (``fake/Deepfakes/000_003/0001.png`` -> ``Deepfakes/000_003``), the usual layout of extracted frames;
  a video file is its own video (``fake/Deepfakes/000_003.mp4``). A folder without real/ and fake/
  that holds X2-DFD JSON files (below) reads all of them.
* CSV / JSONL manifest (``.csv``, ``.jsonl``, or ``.json`` holding a list of objects): ``path`` and
  ``label`` required (``0``/``1``/``real``/``fake``), ``video_id`` and ``source`` optional; relative
  paths are resolved against the manifest's folder.
* DeepfakeBench dataset JSON (``dataset_json/<Name>.json``):
  ``{dataset: {label_name: {split: {[compression:] {video: {"label": label_name, "frames": [path, ...]}}}}}}``,
  the compression level (``c23``/``c40``/``raw``) only for FaceForensics++-family files. A label
  name containing "real" (``FF-real``, ``CelebDFv2_real``, ``DFDCP_Real``, ...) is 0, every other is 1,
  as in DeepfakeBench's ``label_dict``. ``source`` is the label name, ``video_id`` is
  ``dataset/label name/video`` (unique per manipulation: FF++'s Deepfakes and Face2Face fakes of
  ``000_003`` are two videos). Frame paths are resolved against ``root`` (default: the JSON's folder);
  backslash-separated paths written on Windows are read too.
* X2-DFD dataset JSON (the format of X2-DFD's own ``datasets/raw/data/{train,test}/**.json`` and of
  its annotation / inference scripts): ``{"Description": "/root/of/the/images", "images":
  [{"image_path": "rel/or/abs.png"}, ...]}``, one file per class and source (``Real.json``,
  ``Deepfakes.json``, ``FF_real.json``, ``blendface_fake.json``). The file holds no label: X2-DFD gives it
  by listing the file as real or fake in its config, or else by its name; here a file whose name
  contains "real" is 0, every other 1 (X2-DFD's own rule); an entry may carry its own ``"label"``
  (an extension). Relative image paths are resolved against ``root`` if given (``--data-root``: the
  Description usually names the author's machine), else the Description, else the JSON's folder.
  ``source`` is the file's stem; an image named by a number (``159.png``, an extracted frame) gets the
  file's stem and its folder as written as ``video_id`` (``Deepfakes_fake/000_003``: unique per file, so
  two manipulations' files that both write ``000_003/159.png`` give two videos), any other image none. ``"path"`` is read where ``"image_path"`` is absent,
  as X2-DFD's inference does.

Frames per video (:func:`sample_frames`): rows sharing a ``video_id`` are cut to at most N, spread
evenly over the video's frames sorted by path from a seeded random offset (the same rows for the same
seed; each video's choice depends only on the seed and its id). A video file becomes N rows (default
``x2dfd.media.DEFAULT_FRAMES``, what ``x2dfd explain`` samples), one per frame index of
``x2dfd.media.uniform_indices`` (DeepfakeBench's ``linspace``), decoded later by
:func:`load_row_image` through ``x2dfd.media.sample_video``, the path explain uses.

Anything malformed is a one-line :class:`~x2dfd.errors.UsageError` naming the file, the line or
entry, and the fix. Files are checked to exist when loading, so a typo fails before any model runs.
"""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path
from typing import Any

from x2dfd.errors import UsageError
from x2dfd.inputs import MEDIA_EXTS, media_kind

LABEL_NAMES = ("real", "fake")
_LABEL_VALUES = {"0": 0, "1": 1, "real": 0, "fake": 1}
COLUMNS = ("path", "label", "video_id", "source", "frame")


def _features():
    from datasets import ClassLabel, Features, Value

    return Features({"path": Value("string"), "label": ClassLabel(names=list(LABEL_NAMES)),
                     "video_id": Value("string"), "source": Value("string"), "frame": Value("int64")})


def _to_dataset(rows: list[dict[str, Any]], where: str, base: Path | None = None):
    from datasets import Dataset

    if not rows:
        raise UsageError(f"{where}: no labelled images found")
    for r in rows:
        if r.get("video_id") is None and media_kind(r["path"]) == "video":
            r["video_id"] = video_file_id(r["path"], base)
    columns = {c: [r.get(c) for r in rows] for c in COLUMNS}
    return Dataset.from_dict(columns, features=_features())


def video_file_id(path: str, base: Path | None = None) -> str:
    """A video file's ``video_id``: its path relative to ``base`` (forward slashes), else its absolute path."""
    resolved = Path(path).resolve()
    if base is not None:
        try:
            return resolved.relative_to(Path(base).expanduser().resolve()).as_posix()
        except ValueError:
            pass
    return resolved.as_posix()


def parse_label(value: Any, where: str) -> int:
    key = str(value).strip().lower()
    if isinstance(value, bool) or key not in _LABEL_VALUES:
        raise UsageError(f"{where}: label {value!r} is not one of 0, 1, real, fake")
    return _LABEL_VALUES[key]


def _opt_str(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _local(path: Path, base: Path) -> Path:
    return path if path.is_absolute() else base / path


def _resolve(path_value: Any, base: Path, where: str) -> str:
    if not isinstance(path_value, str) or not path_value.strip():
        raise UsageError(f"{where}: empty or missing 'path'")
    path = _local(Path(path_value.strip()).expanduser(), base)
    if not path.is_file() and "\\" in path_value:
        # Written on Windows (e.g. DeepfakeBench's rearrange.py there): backslash separators, maybe a drive.
        parts = [p for p in path_value.strip().replace("\\", "/").split("/") if p]
        if parts and len(parts[0]) == 2 and parts[0][1] == ":":
            parts = parts[1:]  # C: means nothing here; the rest is taken relative to the base
        path = _local(Path(*parts), base) if parts else path
    if not path.is_file():
        raise UsageError(f"{where}: file '{path}' does not exist (relative paths are resolved against '{base}')")
    return str(path.resolve())


# ------------------------------------------------------------------------------------------------ layouts
def _load_folder(folder: Path, root: str | None = None):
    classes = {p.name.lower(): p for p in folder.iterdir() if p.is_dir() and p.name.lower() in LABEL_NAMES}
    missing = [name for name in LABEL_NAMES if name not in classes]
    if len(missing) == len(LABEL_NAMES) and any(folder.glob("*.json")):
        return _load_x2dfd_folder(folder, root)
    if missing:
        raise UsageError(f"DATA folder '{folder}' has no {' and no '.join(m + '/' for m in missing)} sub-folder "
                         "(expected real/ and fake/, or pass a CSV/JSONL manifest or a DeepfakeBench JSON)")
    rows = []
    for name in LABEL_NAMES:
        root = classes[name]
        files = sorted(f for f in root.rglob("*") if f.is_file() and f.suffix.lower() in MEDIA_EXTS
                       and not any(part.startswith(".") for part in f.relative_to(root).parts))
        if not files:
            raise UsageError(f"DATA folder '{root}' holds no images or videos (extensions: {', '.join(sorted(MEDIA_EXTS))})")
        for f in files:
            parts = f.relative_to(root).parts
            is_frame = len(parts) > 2 and media_kind(f) == "image"  # a video file is its own video
            rows.append({"path": str(f.resolve()), "label": LABEL_NAMES.index(name),
                         "source": parts[0] if len(parts) > 1 else None,
                         "video_id": "/".join(parts[:-1]) if is_frame else None})
    return _to_dataset(rows, f"DATA folder '{folder}'", folder)


def _manifest_row(raw: dict[str, Any], base: Path, where: str) -> dict[str, Any]:
    if "path" not in raw or "label" not in raw:
        raise UsageError(f"{where}: needs 'path' and 'label' (optional: video_id, source)")
    return {"path": _resolve(raw["path"], base, where), "label": parse_label(raw["label"], where),
            "video_id": _opt_str(raw.get("video_id")), "source": _opt_str(raw.get("source"))}


def _load_csv(path: Path):
    base = path.parent
    with path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        header = [h.strip() for h in (reader.fieldnames or [])]
        if "path" not in header or "label" not in header:
            raise UsageError(f"manifest '{path}': the header must name 'path' and 'label' columns "
                             f"(optional: video_id, source), got {', '.join(header) or 'nothing'}")
        reader.fieldnames = header
        rows = [_manifest_row(raw, base, f"manifest '{path}' line {reader.line_num}") for raw in reader]
    return _to_dataset(rows, f"manifest '{path}'", base)


def _load_jsonl(path: Path):
    rows = []
    with path.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            where = f"manifest '{path}' line {n}"
            try:
                raw = json.loads(line)
            except json.JSONDecodeError as err:
                raise UsageError(f"{where}: not valid JSON ({err.msg})") from None
            if not isinstance(raw, dict):
                raise UsageError(f"{where}: each line must be a JSON object with 'path' and 'label'")
            rows.append(_manifest_row(raw, path.parent, where))
    return _to_dataset(rows, f"manifest '{path}'", path.parent)


def _is_video_entry(value: Any) -> bool:
    return isinstance(value, dict) and "frames" in value


def _load_deepfakebench(path: Path, data: dict, split: str, compression: str, root: str | None):
    base = Path(root).expanduser() if root else path.parent
    rows = []
    for dataset_name, by_label in data.items():
        if not isinstance(by_label, dict):
            raise UsageError(f"DeepfakeBench JSON '{path}': '{dataset_name}' must map label names to splits")
        for label_name, by_split in by_label.items():
            where = f"DeepfakeBench JSON '{path}' [{dataset_name}][{label_name}]"
            if not isinstance(by_split, dict) or split not in by_split:
                have = ", ".join(by_split) if isinstance(by_split, dict) else "nothing"
                raise UsageError(f"{where}: no split '{split}' (has: {have}); choose one with --split")
            videos = by_split[split]
            if isinstance(videos, dict) and videos and not any(_is_video_entry(v) for v in videos.values()):
                if compression not in videos:  # FaceForensics++ family: one more level, the compression
                    raise UsageError(f"{where}[{split}]: no compression level '{compression}' "
                                     f"(has: {', '.join(videos)}); choose one with --compression")
                videos = videos[compression]
            if not isinstance(videos, dict):
                raise UsageError(f"{where}[{split}]: expected video name -> {{label, frames}} entries")
            for video, info in videos.items():
                vwhere = f"{where}[{split}][{video}]"
                if not _is_video_entry(info) or not isinstance(info["frames"], list):
                    raise UsageError(f"{vwhere}: expected {{\"label\": ..., \"frames\": [paths]}}")
                name = str(info.get("label", label_name))
                label = 0 if "real" in name.lower() else 1
                for frame in info["frames"]:
                    # One video per (dataset, manipulation, video): FF++'s Deepfakes and Face2Face fakes of
                    # 000_003 are two videos, not one.
                    rows.append({"path": _resolve(frame, base, vwhere), "label": label,
                                 "video_id": f"{dataset_name}/{label_name}/{video}", "source": name})
    return _to_dataset(rows, f"DeepfakeBench JSON '{path}' split '{split}'", base)


def _load_json(path: Path, split: str, compression: str, root: str | None):
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise UsageError(f"'{path}': not valid JSON (line {err.lineno}: {err.msg})") from None
    if isinstance(data, list):  # a JSON array manifest
        rows = []
        for i, raw in enumerate(data):
            if not isinstance(raw, dict):
                raise UsageError(f"manifest '{path}' entry #{i + 1}: must be an object with 'path' and 'label'")
            rows.append(_manifest_row(raw, path.parent, f"manifest '{path}' entry #{i + 1}"))
        return _to_dataset(rows, f"manifest '{path}'", path.parent)
    if _is_x2dfd(data):
        rows, base = _x2dfd_rows(path, data, root)
        return _to_dataset(rows, f"X2-DFD JSON '{path}'", base)
    if isinstance(data, dict) and data and all(isinstance(v, dict) for v in data.values()):
        return _load_deepfakebench(path, data, split, compression, root)
    raise UsageError(f"'{path}': expected a DeepfakeBench dataset JSON ({{dataset: {{label: {{split: ...}}}}}}), "
                     "an X2-DFD JSON ({\"Description\": root, \"images\": [{\"image_path\": ...}]}) "
                     "or a JSON list of {\"path\", \"label\"} objects")


def _is_x2dfd(data: Any) -> bool:
    return isinstance(data, dict) and "images" in data and (not isinstance(data["images"], dict)
                                                            or "Description" in data or "description" in data)


def _x2dfd_rows(path: Path, data: dict, root: str | None) -> tuple[list[dict[str, Any]], Path]:
    """The rows of one X2-DFD dataset JSON and the folder its relative paths are resolved against."""
    where = f"X2-DFD JSON '{path}'"
    images = data["images"]
    if not isinstance(images, list):
        raise UsageError(f"{where}: 'images' must be a list of {{\"image_path\": ...}} objects")
    description = data.get("Description", data.get("description"))
    if description is not None and not isinstance(description, str):
        raise UsageError(f"{where}: 'Description' must be the image root folder (a string), got {description!r}")
    if root:
        base, hint = Path(root).expanduser(), "--data-root"
    elif description and description.strip():
        base, hint = Path(description.strip()).expanduser(), "the JSON's Description; pass --data-root to override it"
    else:
        base, hint = path.parent, "the JSON's folder"
    file_label = 0 if "real" in path.name.lower() else 1  # X2-DFD's rule when no config lists the file
    rows = []
    for i, entry in enumerate(images):
        ewhere = f"{where} entry #{i + 1}"
        if not isinstance(entry, dict):
            raise UsageError(f"{ewhere}: must be an object {{\"image_path\": ...}}, got {type(entry).__name__}")
        value = entry.get("image_path", entry.get("path"))
        if not isinstance(value, str) or not value.strip():
            raise UsageError(f"{ewhere}: needs a non-empty 'image_path' (optional: label)")
        label = parse_label(entry["label"], ewhere) if entry.get("label") is not None else file_label
        written = value.strip().replace("\\", "/")
        parent, stem = written.rsplit("/", 1)[0] if "/" in written else "", Path(written).stem
        try:
            resolved = _resolve(value, base, ewhere)
        except UsageError as err:
            raise UsageError(f"{err} ({hint})") from None
        is_frame = stem.isdigit() and parent and media_kind(written) == "image"
        # A numbered frame's video is its folder, qualified by the JSON file: DF_fake.json and F2F_fake.json may
        # both write "000_003/000.png" under their own Description, and those are two videos.
        rows.append({"path": resolved, "label": label, "source": path.stem,
                     "video_id": _opt_str(entry.get("video_id")) or (f"{path.stem}/{parent}" if is_frame else None)})
    return rows, base


def _load_x2dfd_folder(folder: Path, root: str | None):
    """Every X2-DFD JSON directly in ``folder`` (a benchmark folder such as ``test/DF40_tiny/``), by name."""
    rows = []
    for path in sorted(folder.glob("*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise UsageError(f"'{path}': not valid JSON (line {err.lineno}: {err.msg})") from None
        if not _is_x2dfd(data):
            raise UsageError(f"DATA folder '{folder}' has no real/ and fake/ sub-folders and '{path.name}' is not an "
                             "X2-DFD JSON ({\"Description\", \"images\"}); give real/ and fake/, or only X2-DFD JSON files")
        rows += _x2dfd_rows(path, data, root)[0]
    return _to_dataset(rows, f"DATA folder '{folder}' (X2-DFD JSON files)", Path(root).expanduser() if root else folder)


def load_labelled(data: str, split: str = "test", compression: str = "c23", root: str | None = None):
    """Load DATA (folder, CSV/JSONL/JSON manifest, DeepfakeBench or X2-DFD JSON) as a ``datasets.Dataset``."""
    path = Path(data).expanduser()
    if path.is_dir():
        return _load_folder(path, root)
    if not path.is_file():
        raise UsageError(f"DATA '{data}' does not exist (give a folder with real/ and fake/, a .csv/.jsonl manifest "
                         "or a DeepfakeBench / X2-DFD .json)")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return _load_csv(path)
    if suffix == ".jsonl":
        return _load_jsonl(path)
    if suffix == ".json":
        return _load_json(path, split, compression, root)
    raise UsageError(f"DATA '{data}': unknown format '{suffix}'. Available: a folder, .csv, .jsonl, .json")


def data_layout(data: str) -> str:
    """Which layout :func:`load_labelled` reads DATA as: ``folder``, ``x2dfd-folder``, ``csv``, ``jsonl``,
    ``json-list``, ``x2dfd`` or ``deepfakebench`` (only the last reads ``split`` and ``compression``)."""
    path = Path(data).expanduser()
    if path.is_dir():
        has_classes = any(p.is_dir() and p.name.lower() in LABEL_NAMES for p in path.iterdir())
        return "x2dfd-folder" if not has_classes and any(path.glob("*.json")) else "folder"
    suffix = path.suffix.lower()
    if suffix in (".csv", ".jsonl"):
        return suffix[1:]
    try:
        parsed = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "unknown"
    if isinstance(parsed, list):
        return "json-list"
    return "x2dfd" if _is_x2dfd(parsed) else "deepfakebench"


def class_counts(ds) -> dict[str, int]:
    labels = ds["label"]
    return {name: sum(1 for y in labels if y == i) for i, name in enumerate(LABEL_NAMES)}


def balanced_sample(ds, per_class: int | None = None, seed: int = 0):
    """The same number of real and fake rows: ``min(per_class, smaller class)`` of each, drawn with ``seed``.

    Rows keep their original order. ``per_class=None`` takes the whole smaller class.
    """
    import numpy as np

    if per_class is not None and per_class < 1:
        raise UsageError(f"--per-class must be >= 1, got {per_class}")
    labels = np.asarray(ds["label"])
    by_class = [np.flatnonzero(labels == i) for i in range(len(LABEL_NAMES))]
    for name, idx in zip(LABEL_NAMES, by_class):
        if len(idx) == 0:
            raise UsageError(f"the data has no {name} images; ranking cues needs both real and fake faces")
    n = min(len(idx) for idx in by_class)
    if per_class is not None:
        n = min(n, per_class)
    rng = np.random.default_rng(seed)
    chosen = np.sort(np.concatenate([rng.choice(idx, n, replace=False) for idx in by_class]))
    return ds.select(chosen.tolist())


# ------------------------------------------------------------------------------------------------ frames
def _video_rng(seed: int, video_id: str):
    import numpy as np

    digest = int.from_bytes(hashlib.sha256(video_id.encode("utf-8")).digest()[:8], "big")
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, digest])


def spread_indices(total: int, n: int, rng) -> list[int]:
    """``n`` of ``range(total)`` spread evenly (stride ``total / n``) from a random offset within the first
    stride; all of them when ``n >= total``."""
    if n >= total:
        return list(range(total))
    stride = total / n
    offset = float(rng.random()) * stride
    return [min(total - 1, int(offset + k * stride)) for k in range(n)]


def sample_frames(ds, frames_per_video: int | None = None, seed: int = 0, limits=None):
    """At most ``frames_per_video`` rows per ``video_id``, and every video file as frame rows.

    * Rows sharing a ``video_id`` (frame images) beyond N: N of them, evenly spread over the video's
      frames sorted by path from a random offset drawn from ``seed`` and the video id (deterministic;
      a video's choice does not depend on the other videos). ``None``: all are kept.
    * A video file (``frame`` None) becomes one row per frame index ``x2dfd.media.uniform_indices(total, N)``
      (N defaults to ``x2dfd.media.DEFAULT_FRAMES``, what ``x2dfd explain`` samples), each with ``frame``
      set and the file's ``video_id``; its frame count comes from one demux pass. A video that cannot be
      read stays one row with ``frame`` None: :func:`load_row_image` raises its MediaError later, where the
      caller reports unreadable files.
    * Rows without ``video_id`` (lone images) are untouched. Rows keep their order.
    """
    from x2dfd.errors import MediaError
    from x2dfd.media import DEFAULT_FRAMES, MediaLimits, count_video_frames, uniform_indices

    if frames_per_video is not None and frames_per_video < 1:
        raise UsageError(f"--frames-per-video must be >= 1, got {frames_per_video}")
    limits = limits or MediaLimits()
    rows = ds.to_list()
    per_file = frames_per_video or DEFAULT_FRAMES
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        if r.get("video_id") is not None and (not _is_video_row(r) or r.get("frame") is not None):
            groups.setdefault(r["video_id"], []).append(i)
    keep = set(range(len(rows)))
    if frames_per_video is not None:
        for vid, members in groups.items():
            if len(members) > frames_per_video:
                ordered = sorted(members, key=lambda i: (rows[i]["path"], rows[i].get("frame") or 0))
                chosen = {ordered[k] for k in spread_indices(len(ordered), frames_per_video, _video_rng(seed, vid))}
                keep -= set(members) - chosen
    out = []
    for i, r in enumerate(rows):
        if i not in keep:
            continue
        if not _is_video_row(r) or r.get("frame") is not None:
            out.append(r)
            continue
        vid = r.get("video_id") or video_file_id(r["path"])
        try:
            total = count_video_frames(r["path"], limits)
        except MediaError:
            out.append({**r, "video_id": vid, "frame": None})
            continue
        out += [{**r, "video_id": vid, "frame": k} for k in uniform_indices(total, per_file)]
    from datasets import Dataset

    return Dataset.from_dict({c: [r.get(c) for r in out] for c in COLUMNS}, features=_features())


def _is_video_row(row: dict[str, Any]) -> bool:
    return media_kind(row["path"]) == "video"


def load_row_image(row: dict[str, Any], limits=None):
    """The RGB picture of a row: the image file (``x2dfd.media.load_image``), or frame ``row["frame"]`` of a
    video file decoded by ``x2dfd.media.sample_video`` (the path ``x2dfd explain`` samples videos through).
    Raises MediaError for a file that cannot be decoded (within ``limits``), UsageError for a video row
    without a frame index (expand it with :func:`sample_frames` first)."""
    from x2dfd.errors import MediaError
    from x2dfd.media import MediaLimits, count_video_frames, load_image, sample_video

    limits = limits or MediaLimits()
    path = row["path"]
    if not _is_video_row(row):
        return load_image(path, limits)
    frame = row.get("frame")
    if frame is None:
        count_video_frames(path, limits)  # an unreadable video raises its own MediaError
        raise UsageError(f"'{path}' is a video: pick its frames with x2dfd.dataset.sample_frames first")
    frames, info = sample_video(path, limits=limits, indices=[int(frame)])
    if not frames or frames[0].index != int(frame):
        raise MediaError(f"cannot decode video '{path}': frame {frame} of {info.get('total_frames')} did not decode")
    return frames[0].image


def row_key(row: dict[str, Any]) -> str:
    """What identifies a row's picture among the rows: its path, plus ``#frame`` for a video frame."""
    frame = row.get("frame")
    return row["path"] if frame is None else f"{row['path']}#{int(frame)}"


def row_sha256(row: dict[str, Any], file_sha: str | None = None) -> str:
    """The content key of a row's picture (score caches, deduplication): the file's SHA-256 for an image,
    a SHA-256 of the file's SHA-256 and the frame index for a video frame (so frames of one video differ).
    ``file_sha``: the file's hash when the caller already has it."""
    if file_sha is None:
        from x2dfd.media import file_sha256

        file_sha = file_sha256(row["path"])
    frame = row.get("frame")
    if frame is None:
        return file_sha
    return hashlib.sha256(f"{file_sha}:frame={int(frame)}".encode()).hexdigest()


def count_videos(ds) -> dict[str, int]:
    """Videos per class: distinct ``video_id``s, each row without one being its own video."""
    seen: list[set] = [set(), set()]
    frames = ds["frame"] if "frame" in ds.column_names else [None] * len(ds)
    for label, vid, path, frame in zip(ds["label"], ds["video_id"], ds["path"], frames):
        seen[int(label)].add(vid if vid is not None else ("row", row_key({"path": path, "frame": frame})))
    return {name: len(seen[i]) for i, name in enumerate(LABEL_NAMES)}
