"""Labelled face data for ``x2dfd assess`` (and ``evaluate`` / ``finetune``): one loader, four layouts.

    ds = load_labelled("data/")                    # data/real/**, data/fake/**
    ds = load_labelled("manifest.csv")             # path,label[,video_id,source]
    ds = load_labelled("manifest.jsonl")           # {"path": ..., "label": ...} per line
    ds = load_labelled("FaceForensics++.json", split="test", compression="c23", root="datasets/")  # DeepfakeBench
    ds = balanced_sample(ds, per_class=200, seed=0)

The result is a ``datasets.Dataset`` with columns ``path`` (absolute), ``label`` (ClassLabel:
0 = real, 1 = fake), ``video_id`` and ``source`` (strings or None), in a deterministic order.

Layouts:

* folder: ``real/`` and ``fake/`` sub-folders (names case-insensitive), searched recursively for
  images and videos (``x2dfd.inputs.MEDIA_EXTS``; hidden files skipped). The first folder level below them is the ``source`` (``fake/Deepfakes/...`` ->
  ``Deepfakes``); a file two or more levels down gets its parent folder as ``video_id``
  (``fake/Deepfakes/000_003/0001.png`` -> ``Deepfakes/000_003``), the usual layout of extracted frames.
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

Anything malformed is a one-line :class:`~x2dfd.errors.UsageError` naming the file, the line or
entry, and the fix. Files are checked to exist when loading, so a typo fails before any model runs.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from x2dfd.errors import UsageError
from x2dfd.inputs import MEDIA_EXTS

LABEL_NAMES = ("real", "fake")
_LABEL_VALUES = {"0": 0, "1": 1, "real": 0, "fake": 1}
COLUMNS = ("path", "label", "video_id", "source")


def _features():
    from datasets import ClassLabel, Features, Value

    return Features({"path": Value("string"), "label": ClassLabel(names=list(LABEL_NAMES)),
                     "video_id": Value("string"), "source": Value("string")})


def _to_dataset(rows: list[dict[str, Any]], where: str):
    from datasets import Dataset

    if not rows:
        raise UsageError(f"{where}: no labelled images found")
    columns = {c: [r.get(c) for r in rows] for c in COLUMNS}
    return Dataset.from_dict(columns, features=_features())


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
def _load_folder(folder: Path):
    classes = {p.name.lower(): p for p in folder.iterdir() if p.is_dir() and p.name.lower() in LABEL_NAMES}
    missing = [name for name in LABEL_NAMES if name not in classes]
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
            rows.append({"path": str(f.resolve()), "label": LABEL_NAMES.index(name),
                         "source": parts[0] if len(parts) > 1 else None,
                         "video_id": "/".join(parts[:-1]) if len(parts) > 2 else None})
    return _to_dataset(rows, f"DATA folder '{folder}'")


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
    return _to_dataset(rows, f"manifest '{path}'")


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
    return _to_dataset(rows, f"manifest '{path}'")


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
    return _to_dataset(rows, f"DeepfakeBench JSON '{path}' split '{split}'")


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
        return _to_dataset(rows, f"manifest '{path}'")
    if isinstance(data, dict) and data and all(isinstance(v, dict) for v in data.values()):
        return _load_deepfakebench(path, data, split, compression, root)
    raise UsageError(f"'{path}': expected a DeepfakeBench dataset JSON ({{dataset: {{label: {{split: ...}}}}}}) "
                     "or a JSON list of {\"path\", \"label\"} objects")


def load_labelled(data: str, split: str = "test", compression: str = "c23", root: str | None = None):
    """Load DATA (folder, CSV/JSONL/JSON manifest or DeepfakeBench JSON) as a ``datasets.Dataset``."""
    path = Path(data).expanduser()
    if path.is_dir():
        return _load_folder(path)
    if not path.is_file():
        raise UsageError(f"DATA '{data}' does not exist (give a folder with real/ and fake/, a .csv/.jsonl manifest "
                         "or a DeepfakeBench .json)")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return _load_csv(path)
    if suffix == ".jsonl":
        return _load_jsonl(path)
    if suffix == ".json":
        return _load_json(path, split, compression, root)
    raise UsageError(f"DATA '{data}': unknown format '{suffix}'. Available: a folder, .csv, .jsonl, .json")


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
