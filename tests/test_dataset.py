"""Labelled-data loader: folder, CSV, JSONL, JSON list, DeepfakeBench JSON, balanced sampling, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from x2dfd.dataset import balanced_sample, class_counts, load_labelled
from x2dfd.errors import UsageError


def _img(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (len(path.name) * 9 % 255, 40, 90)).save(path)
    return path


def _usage_error(fn, *args, match: str, **kwargs) -> str:
    with pytest.raises(UsageError, match=match) as info:
        fn(*args, **kwargs)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_folder_layout_sources_and_video_ids(tmp_path):
    _img(tmp_path / "real" / "a.jpg")
    _img(tmp_path / "real" / "ffhq" / "b.png")
    _img(tmp_path / "Fake" / "Deepfakes" / "000_003" / "0001.png")
    _img(tmp_path / "Fake" / "Deepfakes" / "000_003" / "0002.png")
    _img(tmp_path / "Fake" / "c.webp")
    _img(tmp_path / "real" / ".hidden" / "x.jpg")  # hidden folders are skipped
    (tmp_path / "real" / "notes.txt").write_text("not an image")
    (tmp_path / "Fake" / "clip.mp4").write_bytes(b"")  # videos are listed too (evaluate reads them)
    ds = load_labelled(str(tmp_path))
    assert ds.column_names == ["path", "label", "video_id", "source", "frame"]
    assert ds.features["label"].names == ["real", "fake"]
    rows = {Path(r["path"]).relative_to(tmp_path).as_posix(): r for r in ds}
    assert set(rows) == {"real/a.jpg", "real/ffhq/b.png", "Fake/Deepfakes/000_003/0001.png",
                         "Fake/Deepfakes/000_003/0002.png", "Fake/c.webp", "Fake/clip.mp4"}
    assert rows["real/a.jpg"]["label"] == 0 and rows["real/a.jpg"]["source"] is None
    assert rows["real/ffhq/b.png"]["source"] == "ffhq" and rows["real/ffhq/b.png"]["video_id"] is None
    frame = rows["Fake/Deepfakes/000_003/0001.png"]
    assert (frame["label"], frame["source"], frame["video_id"]) == (1, "Deepfakes", "Deepfakes/000_003")
    assert class_counts(ds) == {"real": 2, "fake": 4}
    assert all(Path(p).is_absolute() for p in ds["path"])


def test_folder_errors(tmp_path):
    _img(tmp_path / "real" / "a.jpg")
    _usage_error(load_labelled, str(tmp_path), match=r"no fake/ sub-folder")
    (tmp_path / "fake").mkdir()
    _usage_error(load_labelled, str(tmp_path), match=r"holds no images or videos")
    _usage_error(load_labelled, str(tmp_path / "nope"), match="does not exist")


def test_csv_manifest_relative_paths_and_labels(tmp_path):
    a, b, c = _img(tmp_path / "img" / "a.jpg"), _img(tmp_path / "img" / "b.jpg"), _img(tmp_path / "abs.png")
    sub = tmp_path / "lists"
    sub.mkdir()
    (sub / "m.csv").write_text(
        "path,label,video_id,source\n"
        f"../img/a.jpg,real,,\n"
        f"../img/b.jpg,FAKE,v1,Deepfakes\n"
        f"{c},1,,\n", encoding="utf-8")
    ds = load_labelled(str(sub / "m.csv"))
    assert ds["path"] == [str(a.resolve()), str(b.resolve()), str(c.resolve())]
    assert ds["label"] == [0, 1, 1]
    assert ds["video_id"] == [None, "v1", None] and ds["source"] == [None, "Deepfakes", None]


def test_csv_manifest_errors(tmp_path):
    _img(tmp_path / "a.jpg")
    bad_label = tmp_path / "bad_label.csv"
    bad_label.write_text("path,label\na.jpg,real\na.jpg,maybe\n")
    msg = _usage_error(load_labelled, str(bad_label), match=r"line 3: label 'maybe' is not one of 0, 1, real, fake")
    assert "bad_label.csv" in msg
    missing = tmp_path / "missing.csv"
    missing.write_text("path,label\nnope.jpg,0\n")
    _usage_error(load_labelled, str(missing), match=r"line 2: file .*nope.jpg' does not exist")
    header = tmp_path / "header.csv"
    header.write_text("file,class\na.jpg,0\n")
    _usage_error(load_labelled, str(header), match=r"must name 'path' and 'label' columns")
    empty = tmp_path / "empty.csv"
    empty.write_text("path,label\n")
    _usage_error(load_labelled, str(empty), match="no labelled images")


def test_jsonl_and_json_list_manifests(tmp_path):
    _img(tmp_path / "a.jpg")
    _img(tmp_path / "b.jpg")
    jl = tmp_path / "m.jsonl"
    jl.write_text('{"path": "a.jpg", "label": 0, "source": "ffhq"}\n\n{"path": "b.jpg", "label": "fake", "video_id": 7}\n')
    ds = load_labelled(str(jl))
    assert ds["label"] == [0, 1] and ds["source"] == ["ffhq", None] and ds["video_id"] == [None, "7"]
    js = tmp_path / "m.json"
    js.write_text(json.dumps([{"path": "a.jpg", "label": "real"}, {"path": "b.jpg", "label": 1}]))
    assert load_labelled(str(js))["label"] == [0, 1]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"path": "a.jpg", "label": 0}\n{"path": "b.jpg", label: 1}\n')
    _usage_error(load_labelled, str(bad), match=r"bad.jsonl' line 2: not valid JSON")
    nolabel = tmp_path / "nolabel.jsonl"
    nolabel.write_text('{"path": "a.jpg"}\n')
    _usage_error(load_labelled, str(nolabel), match=r"line 1: needs 'path' and 'label'")
    boollabel = tmp_path / "bool.jsonl"
    boollabel.write_text('{"path": "a.jpg", "label": true}\n')
    _usage_error(load_labelled, str(boollabel), match=r"label True is not one of")
    other = tmp_path / "data.txt"
    other.write_text("x")
    _usage_error(load_labelled, str(other), match=r"unknown format '.txt'")


def _deepfakebench(tmp_path: Path) -> Path:
    """FaceForensics++-style (compression level) and Celeb-DF-style (none) entries, frames under datasets/."""
    root = tmp_path / "datasets"
    for rel in ("ff/real/000/0.png", "ff/real/000/1.png", "ff/df/000_003/0.png", "ff/df/000_003/1.png",
                "ff/df/c40/000_003/0.png", "ff/real/train/9.png"):
        _img(root / rel)
    ff = {"FaceForensics++": {
        "FF-real": {"train": {"c23": {"999": {"label": "FF-real", "frames": ["ff/real/train/9.png"]}}},
                    "test": {"c23": {"000": {"label": "FF-real", "frames": ["ff/real/000/0.png", "ff/real/000/1.png"]}},
                             "c40": {"000": {"label": "FF-real", "frames": ["ff/real/000/1.png"]}}}},
        "FF-DF": {"test": {"c23": {"000_003": {"label": "FF-DF", "frames": ["ff/df/000_003/0.png", "ff/df/000_003/1.png"]}},
                           "c40": {"000_003": {"label": "FF-DF", "frames": ["ff/df/c40/000_003/0.png"]}}}},
    }}
    json_dir = tmp_path / "dataset_json"
    json_dir.mkdir()
    (json_dir / "FaceForensics++.json").write_text(json.dumps(ff))
    return json_dir / "FaceForensics++.json"


def test_deepfakebench_json(tmp_path):
    path = _deepfakebench(tmp_path)
    root = tmp_path / "datasets"
    ds = load_labelled(str(path), root=str(root))
    assert ds["label"] == [0, 0, 1, 1]
    assert ds["source"] == ["FF-real", "FF-real", "FF-DF", "FF-DF"]
    assert ds["video_id"][2] == "FaceForensics++/FF-DF/000_003"
    c40 = load_labelled(str(path), root=str(root), compression="c40")
    assert c40["label"] == [0, 1] and c40["path"][1].endswith("c40/000_003/0.png")
    celeb = tmp_path / "Celeb-DF-v2.json"
    celeb.write_text(json.dumps({"Celeb-DF-v2": {
        "CelebDFv2_real": {"test": {"id0_0000": {"label": "CelebDFv2_real", "frames": ["datasets/ff/real/000/0.png"]}}},
        "CelebDFv2_fake": {"test": {"id0_id1_0000": {"label": "CelebDFv2_fake", "frames": ["datasets/ff/df/000_003/0.png"]}}},
    }}))
    ds2 = load_labelled(str(celeb))  # frame paths relative to the JSON's folder by default
    assert ds2["label"] == [0, 1] and ds2["source"] == ["CelebDFv2_real", "CelebDFv2_fake"]


def test_combined_ff_json_keeps_each_manipulation_its_own_video(tmp_path):
    """5 real + 5 Deepfakes + 5 Face2Face videos sharing the FF++ ids: 15 videos, 10 of them fake, at every
    level (frames per video, videos per class), with Windows backslash paths in the JSON."""
    root = tmp_path / "datasets"
    entries: dict = {}
    for label_name, folder in (("FF-real", "original"), ("FF-DF", "Deepfakes"), ("FF-F2F", "Face2Face")):
        videos = {}
        for v in range(5):
            vid = f"{v:03d}" if label_name == "FF-real" else f"{v:03d}_{v + 100:03d}"
            frames = [f"{folder}\\c23\\{vid}\\{i:03d}.png" for i in range(2)]
            for f in frames:
                _img(root / f.replace("\\", "/"))
            videos[vid] = {"label": label_name, "frames": frames}
        entries[label_name] = {"test": {"c23": videos}}
    path = tmp_path / "FaceForensics++.json"
    path.write_text(json.dumps({"FaceForensics++": entries}))
    ds = load_labelled(str(path), root=str(root))
    assert len(ds) == 30 and all(Path(p).is_file() for p in ds["path"])
    videos = {(v, y) for v, y in zip(ds["video_id"], ds["label"])}
    assert len(videos) == 15 and sum(y for _, y in videos) == 10
    assert {v for v, y in videos if y} >= {"FaceForensics++/FF-DF/000_100", "FaceForensics++/FF-F2F/000_100"}
    frames_per_video = {v: ds["video_id"].count(v) for v, _ in videos}
    assert set(frames_per_video.values()) == {2}


def test_deepfakebench_errors(tmp_path):
    path = _deepfakebench(tmp_path)
    root = str(tmp_path / "datasets")
    msg = _usage_error(load_labelled, str(path), root=root, split="val", match=r"no split 'val' \(has: train, test\)")
    assert "--split" in msg
    _usage_error(load_labelled, str(path), root=root, compression="raw", match=r"no compression level 'raw'")
    _usage_error(load_labelled, str(path), match=r"does not exist")  # frames not under the JSON's folder
    weird = tmp_path / "weird.json"
    weird.write_text(json.dumps({"a": 1}))
    _usage_error(load_labelled, str(weird), match="expected a DeepfakeBench dataset JSON")
    broken = tmp_path / "broken.json"
    broken.write_text("{\"a\": ")
    _usage_error(load_labelled, str(broken), match="not valid JSON")


def test_balanced_sample(tmp_path):
    for i in range(7):
        _img(tmp_path / "real" / f"r{i}.png")
    for i in range(3):
        _img(tmp_path / "fake" / f"f{i}.png")
    ds = load_labelled(str(tmp_path))
    full = balanced_sample(ds, None, seed=0)
    assert class_counts(full) == {"real": 3, "fake": 3}
    two = balanced_sample(ds, 2, seed=1)
    assert class_counts(two) == {"real": 2, "fake": 2}
    assert two["path"] == balanced_sample(ds, 2, seed=1)["path"]  # deterministic with a seed
    picks = {tuple(balanced_sample(ds, 2, seed=s)["path"]) for s in range(6)}
    assert len(picks) > 1  # and the seed matters
    order = [ds["path"].index(p) for p in two["path"]]
    assert order == sorted(order)  # original order kept
    only_real = ds.filter(lambda r: r["label"] == 0)
    _usage_error(balanced_sample, only_real, match="no fake images")
    _usage_error(balanced_sample, ds, 0, match="--per-class must be >= 1")
