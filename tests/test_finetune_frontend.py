"""`x2dfd finetune`'s data front end: video files in DATA, --frames-per-video, --eval-split of a DeepfakeBench JSON."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from x2dfd.errors import UsageError
from x2dfd.finetune import data as ftdata
from x2dfd.finetune.config import FinetuneConfig
from x2dfd.finetune.synthetic import make_seam_dataset
from x2dfd.media import uniform_indices

from test_finetune_grounding import _ranking


def _build(tmp_path, name="built", **kw) -> tuple[dict, list[dict], list[dict]]:
    cfg = FinetuneConfig(ranking=str(_ranking(tmp_path / "mfa")), face_crop=False, no_expert=True, cue_order="rank",
                         quiet=True, **kw)
    info = ftdata.DataBuilder(cfg, lambda: [], get_mllm=None).build(tmp_path / name)
    rows = [[json.loads(x) for x in (tmp_path / name / f).read_text().splitlines()] for f in ("train.jsonl", "eval.jsonl")]
    return info, rows[0], rows[1]


def _video(path: Path, frames: int = 12, size: int = 48) -> Path:
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 5, (size, size))
    rng = np.random.default_rng(0)
    for i in range(frames):
        writer.write((rng.random((size, size, 3)) * 60 + 15 * i).astype(np.uint8))
    writer.release()
    return path


def test_a_video_file_in_finetune_data(tmp_path):
    data = tmp_path / "data"
    make_seam_dataset(data, 2, 4, size=48, seed=1)
    clip = _video(data / "real" / "clip.mp4")
    info, train, held = _build(tmp_path, data=str(data), frames_per_video=3, eval_fraction=0.0)
    assert held == [] and info["dropped"]["no_face_or_unreadable"] == {"real": 0, "fake": 0}
    frames = [r for r in train if r["path"] == str(clip.resolve())]
    assert sorted(r["frame"] for r in frames) == uniform_indices(12, 3)  # the frames explain would sample
    assert len({r["sha256"] for r in frames}) == 3 and len({r["video_id"] for r in frames}) == 1
    assert all((tmp_path / "built" / r["image"]).is_file() for r in frames)
    pictures = {np.asarray(Image.open(tmp_path / "built" / r["image"])).mean() for r in frames}
    assert len(pictures) == 3  # three different frames were decoded, not one frame three times
    assert info["videos"]["train"] == {"real": 3, "fake": 4, "video_file_frames": 3}  # 2 images + 1 video; 4 images
    assert info["source"]["frames_per_video"] == 3
    assert all(r["frame"] is None for r in train if r["path"] != str(clip.resolve()))


def test_frames_per_video_caps_extracted_frames(tmp_path):
    data = tmp_path / "data"
    for label in ("real", "fake"):
        for v in range(3):
            make_seam_dataset(tmp_path / "tmp" / f"{label}{v}", 5, 5, size=32, seed=v + 10 * (label == "fake"))
            for k, png in enumerate(sorted((tmp_path / "tmp" / f"{label}{v}" / label).glob("*.png"))):
                folder = data / label / f"{label}-source" / f"vid{v}"  # <label>/<source>/<video>/<frame>.png
                folder.mkdir(parents=True, exist_ok=True)
                png.rename(folder / f"{k:04d}.png")
    info, train, held = _build(tmp_path, data=str(data), frames_per_video=2, eval_fraction=0.34, seed=3)
    rows = train + held
    per_video = {}
    for r in rows:
        per_video.setdefault((r["label"], r["video_id"]), []).append(r["path"])
    assert len(per_video) == 6 and all(len(v) == 2 for v in per_video.values())  # 5 frames each, 2 kept
    assert {r["video_id"] for r in train}.isdisjoint({r["video_id"] for r in held})
    again, train2, held2 = _build(tmp_path, name="again", data=str(data), frames_per_video=2, eval_fraction=0.34, seed=3)
    assert sorted(r["path"] for r in train2 + held2) == sorted(r["path"] for r in rows)  # seeded: the same frames
    _, all_train, all_held = _build(tmp_path, name="all", data=str(data), eval_fraction=0.0)
    assert len(all_train) == 30 and all_held == []  # without the cap every extracted frame is used


def _deepfakebench(tmp_path: Path) -> Path:
    """A DeepfakeBench-style JSON with train and val splits (2 real + 2 fake videos of 2 frames each per split)."""
    root = tmp_path / "dfb"
    make_seam_dataset(root / "frames", 8, 8, size=32, seed=5)
    reals = sorted((root / "frames" / "real").glob("*.png"))
    fakes = sorted((root / "frames" / "fake").glob("*.png"))

    def split(files, name, offset):
        return {f"{offset + i:03d}": {"label": name, "frames": [str(p.relative_to(root)) for p in files[2 * i: 2 * i + 2]]}
                for i in range(len(files) // 2)}

    doc = {"Celeb-DF-v2": {"Celeb-real": {"train": split(reals[:4], "Celeb-real", 0),
                                          "val": split(reals[4:], "Celeb-real", 10)},
                           "Celeb-synthesis": {"train": split(fakes[:4], "Celeb-synthesis", 0),
                                               "val": split(fakes[4:], "Celeb-synthesis", 10)}}}
    (root / "Celeb-DF-v2.json").write_text(json.dumps(doc))
    return root / "Celeb-DF-v2.json"


def test_eval_split_of_the_same_json(tmp_path):
    js = _deepfakebench(tmp_path)
    doc = json.loads(js.read_text())["Celeb-DF-v2"]
    want = {s: {str((js.parent / f).resolve()) for lab in doc.values() for v in lab[s].values() for f in v["frames"]}
            for s in ("train", "val")}
    info, train, held = _build(tmp_path, data=str(js), split="train", eval_split="val")
    assert {r["path"] for r in train} == want["train"] and {r["path"] for r in held} == want["val"]
    assert info["source"]["eval_data"] == str(js) and info["source"]["eval_split"] == "val"
    assert info["videos"]["eval"] == {"real": 2, "fake": 2, "video_file_frames": 0}
    # --eval-data with --eval-split: that file's split (here the same file)
    info, _, held = _build(tmp_path, name="b", data=str(js), eval_data=str(js), eval_split="val")
    assert {r["path"] for r in held} == want["val"]
    with pytest.raises(UsageError, match="is the --split trained on"):
        FinetuneConfig(data=str(js), ranking="r", split="val", eval_split="val")
    with pytest.raises(UsageError, match=r"--eval-split reads a split of a DeepfakeBench JSON; DATA '.*' is a folder"):
        _build(tmp_path, name="c", data=str(js.parent / "frames"), eval_split="val")
    with pytest.raises(UsageError, match="--frames-per-video must be >= 1"):
        FinetuneConfig(data=str(js), ranking="r", frames_per_video=0)


def test_inputs_that_are_face_crops_are_warned_about(tmp_path, capsys):
    """Tight face crops (DeepfakeBench-style frames) cropped again: one warning line with the --no-face-crop hint."""
    from conftest import shared_path

    crops = sorted(shared_path("data", "stylegan2-vs-real", "images", "real").glob("*.jpg"))[:6]
    data = tmp_path / "data"
    for i, src in enumerate(crops):
        dst = data / ("real" if i % 2 else "fake") / src.name
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(src.read_bytes())
    cfg = FinetuneConfig(data=str(data), ranking=str(_ranking(tmp_path / "mfa")), no_expert=True, cue_order="rank",
                         eval_fraction=0.0)
    capsys.readouterr()
    info = ftdata.DataBuilder(cfg, lambda: [], get_mllm=None).build(tmp_path / "built")
    check = info["crop_check"]
    assert check["checked"] == 6 - sum(info["dropped"]["no_face_or_unreadable"].values())
    assert check["look_like_crops"] >= 2 and check["warning"].startswith("x2dfd finetune: ")
    err = [line for line in capsys.readouterr().err.splitlines() if "look like existing face crops" in line]
    assert err == [check["warning"]] and err[0].endswith("pass --no-face-crop")
    # --no-face-crop: nothing is detected, so nothing is checked or said
    cfg.face_crop = False
    info = ftdata.DataBuilder(cfg, lambda: [], get_mllm=None).build(tmp_path / "plain")
    assert info["crop_check"]["checked"] == 0 and info["crop_check"]["warning"] is None
