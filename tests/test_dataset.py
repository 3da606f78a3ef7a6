"""Labelled-data loader: folder, CSV, JSONL, JSON list, DeepfakeBench and X2-DFD JSON, frames per video,
balanced sampling, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from x2dfd.dataset import (balanced_sample, class_counts, count_videos, data_layout, load_labelled, sample_frames,
                           spread_indices)
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


def _ff_json(tmp_path: Path) -> tuple[Path, Path, dict]:
    """A combined FaceForensics++ JSON as DeepfakeBench writes it: FF-real + FF-DF + FF-F2F + FF-FS, the fakes of
    each manipulation sharing the FF++ ids (000_003, ...), 3 to 9 frames per video, a train and a test split."""
    root = tmp_path / "datasets"
    entries: dict = {}
    frames_of: dict[str, int] = {}
    for m, (label_name, folder) in enumerate((("FF-real", "original"), ("FF-DF", "Deepfakes"), ("FF-F2F", "Face2Face"),
                                              ("FF-FS", "FaceSwap"))):
        splits = {}
        for split, ids in (("train", range(4)), ("test", range(4, 6))):
            videos = {}
            for v in ids:
                vid = f"{v:03d}" if label_name == "FF-real" else f"{v:03d}_{(v + 3) % 10:03d}"
                n = 3 + (v + m) % 7
                frames = [f"{folder}/c23/frames/{vid}/{i:03d}.png" for i in range(n)]
                for f in frames:
                    _img(root / f)
                videos[vid] = {"label": label_name, "frames": frames}
                frames_of[f"FaceForensics++/{label_name}/{vid}"] = n
            splits[split] = {"c23": videos}
        entries[label_name] = splits
    path = tmp_path / "FaceForensics++.json"
    path.write_text(json.dumps({"FaceForensics++": entries}))
    return path, root, frames_of


def test_combined_ff_json_video_and_frame_counts_at_every_level(tmp_path):
    path, root, frames_of = _ff_json(tmp_path)
    train = load_labelled(str(path), split="train", root=str(root))
    videos = sorted(set(train["video_id"]))
    assert len(videos) == 16 and count_videos(train) == {"real": 4, "fake": 12}  # 000_003 of DF, F2F, FS: 3 videos
    assert {v for v in videos if v.endswith("/000_003")} == {f"FaceForensics++/FF-{m}/000_003" for m in ("DF", "F2F", "FS")}
    assert all(train["video_id"].count(v) == frames_of[v] for v in videos)  # every frame of every video
    assert class_counts(train) == {"real": sum(frames_of[v] for v in videos if "FF-real" in v),
                                   "fake": sum(frames_of[v] for v in videos if "FF-real" not in v)}
    by_source = {s: len({v for v, src in zip(train["video_id"], train["source"]) if src == s}) for s in set(train["source"])}
    assert by_source == {"FF-real": 4, "FF-DF": 4, "FF-F2F": 4, "FF-FS": 4}
    test = load_labelled(str(path), split="test", root=str(root))
    assert count_videos(test) == {"real": 2, "fake": 6} and not set(test["path"]) & set(train["path"])

    untouched = sample_frames(train)  # no N: frame images are all kept (only video files are expanded)
    assert untouched["path"] == train["path"] and set(untouched["frame"]) == {None}
    capped = sample_frames(train, 4, seed=0)
    assert count_videos(capped) == count_videos(train)  # no video lost, none merged
    for v in videos:
        chosen = sorted(p for p, vid in zip(capped["path"], capped["video_id"]) if vid == v)
        everything = sorted(p for p, vid in zip(train["path"], train["video_id"]) if vid == v)
        assert len(chosen) == min(4, frames_of[v]) and set(chosen) <= set(everything)
        picks = [everything.index(c) for c in chosen]
        if frames_of[v] > 4:  # spread over the whole video: one pick per stride
            stride = frames_of[v] / 4
            assert all(int(k * stride) <= i < int((k + 1) * stride) + 1 for k, i in enumerate(picks))
    assert len(capped) == sum(min(4, frames_of[v]) for v in videos)
    assert [capped["path"].index(p) for p in capped["path"]] == list(range(len(capped)))  # no duplicates
    order = [train["path"].index(p) for p in capped["path"]]
    assert order == sorted(order)  # original order kept
    assert sample_frames(train, 4, seed=0)["path"] == capped["path"]  # deterministic for a seed
    assert len({tuple(sample_frames(train, 4, seed=s)["path"]) for s in range(4)}) > 1  # the seed matters
    one = sample_frames(train, 1, seed=3)
    assert count_videos(one) == {"real": 4, "fake": 12} and class_counts(one) == {"real": 4, "fake": 12}
    sampled = balanced_sample(capped, per_class=8, seed=0)
    assert class_counts(sampled) == {"real": 8, "fake": 8}
    _usage_error(sample_frames, train, 0, match="--frames-per-video must be >= 1")


def test_frames_per_video_leaves_lone_images_and_keeps_a_videos_choice_independent(tmp_path):
    for i in range(6):
        _img(tmp_path / "fake" / "DF" / "v1" / f"{i:02d}.png")
        _img(tmp_path / "fake" / "DF" / "v2" / f"{i:02d}.png")
    for name in ("a.png", "b.png", "c.png"):
        _img(tmp_path / "real" / name)
    ds = load_labelled(str(tmp_path))
    capped = sample_frames(ds, 2, seed=5)
    assert [p for p in capped["path"] if "/real/" in p] == [p for p in ds["path"] if "/real/" in p]
    v1 = [p for p, v in zip(capped["path"], capped["video_id"]) if v == "DF/v1"]
    (tmp_path / "fake" / "DF" / "v2" / "00.png").unlink()  # another video changes: v1's frames do not
    again = sample_frames(load_labelled(str(tmp_path)), 2, seed=5)
    assert [p for p, v in zip(again["path"], again["video_id"]) if v == "DF/v1"] == v1
    rng = __import__("numpy").random.default_rng(0)
    assert spread_indices(5, 9, rng) == [0, 1, 2, 3, 4]
    for total, n in ((10, 3), (7, 7), (100, 8), (9, 2)):
        picks = spread_indices(total, n, rng)
        assert len(set(picks)) == min(n, total) and picks == sorted(picks) and 0 <= picks[0] and picks[-1] < total


def _x2dfd_tree(tmp_path: Path) -> Path:
    root = tmp_path / "Datasets"
    for rel in ("FaceForensics++/original_sequences/youtube/c23/frames/000/000.png",
                "FaceForensics++/original_sequences/youtube/c23/frames/000/010.png",
                "FaceForensics++/original_sequences/youtube/c23/frames/001/000.png",
                "FaceForensics++/manipulated_sequences/Deepfakes/c23/frames/000_003/000.png",
                "FaceForensics++/manipulated_sequences/Deepfakes/c23/frames/000_003/010.png",
                "FaceForensics++/manipulated_sequences/Face2Face/c23/frames/000_003/000.png",
                "DiFF/T2I/SDXL/face_a.png"):
        _img(root / rel)
    return root


def test_x2dfd_json(tmp_path):
    """X2-DFD's own dataset JSON: {"Description": root, "images": [{"image_path": ...}]}, one file per class and
    source, the label from the file name as X2-DFD's annotation script infers it."""
    root = _x2dfd_tree(tmp_path)
    bench = tmp_path / "test" / "FF"
    bench.mkdir(parents=True)
    real = bench / "FF_real.json"
    real.write_text(json.dumps({"Description": str(root), "images": [
        {"image_path": "FaceForensics++/original_sequences/youtube/c23/frames/000/000.png"},
        {"image_path": "FaceForensics++\\original_sequences\\youtube\\c23\\frames\\000\\010.png"},  # Windows
        {"image_path": str(root / "FaceForensics++/original_sequences/youtube/c23/frames/001/000.png")}]}))  # absolute
    fake = bench / "Deepfakes_fake.json"
    fake.write_text(json.dumps({"Description": str(root), "images": [
        {"image_path": "FaceForensics++/manipulated_sequences/Deepfakes/c23/frames/000_003/000.png"},
        {"image_path": "FaceForensics++/manipulated_sequences/Deepfakes/c23/frames/000_003/010.png"},
        {"path": "FaceForensics++/manipulated_sequences/Face2Face/c23/frames/000_003/000.png"},
        {"image_path": "DiFF/T2I/SDXL/face_a.png", "label": "fake"}]}))
    ds = load_labelled(str(real))
    assert ds["label"] == [0, 0, 0] and set(ds["source"]) == {"FF_real"} and data_layout(str(real)) == "x2dfd"
    assert ds["video_id"] == ["FF_real/FaceForensics++/original_sequences/youtube/c23/frames/000"] * 2 + [
        "FF_real/" + str(root / "FaceForensics++/original_sequences/youtube/c23/frames/001").replace("\\", "/")]
    both = load_labelled(str(bench))  # the benchmark folder: every X2-DFD JSON in it
    assert data_layout(str(bench)) == "x2dfd-folder"
    assert class_counts(both) == {"real": 3, "fake": 4} and both["source"][:4] == ["Deepfakes_fake"] * 4
    fake_videos = both["video_id"][:4]
    assert fake_videos[0] == fake_videos[1] != fake_videos[2]  # Deepfakes and Face2Face of 000_003: two videos
    assert fake_videos[3] is None  # not a numbered frame: a lone image
    assert count_videos(both) == {"real": 2, "fake": 3}
    # two manipulations' files, each relative to its own Description, write the same "000_003/000.png": two videos
    pair = tmp_path / "pair"
    pair.mkdir()
    for name, method in (("DF_fake.json", "Deepfakes"), ("F2F_fake.json", "Face2Face")):
        (pair / name).write_text(json.dumps({
            "Description": str(root / f"FaceForensics++/manipulated_sequences/{method}/c23/frames"),
            "images": [{"image_path": "000_003/000.png"}]}))
    assert sorted(load_labelled(str(pair))["video_id"]) == ["DF_fake/000_003", "F2F_fake/000_003"]

    moved = tmp_path / "moved.json"  # the Description names the author's machine: --data-root overrides it
    moved.write_text(json.dumps({"Description": "/data/250010183/Datasets", "images": [{"image_path": "DiFF/T2I/SDXL/face_a.png"}]}))
    msg = _usage_error(load_labelled, str(moved), match="does not exist")
    assert "--data-root" in msg
    assert load_labelled(str(moved), root=str(root))["label"] == [1]
    (root / "local_real.json").write_text(json.dumps({"images": [{"image_path": "DiFF/T2I/SDXL/face_a.png"}]}))
    assert load_labelled(str(root / "local_real.json"))["label"] == [0]  # no Description: the JSON's folder

    for images, match in (({"a": 1}, r"must be a list"), ([1], r"entry #1: must be an object"),
                          ([{"image_path": ""}], r"entry #1: needs a non-empty 'image_path'"),
                          ([{"image_path": "DiFF/T2I/SDXL/face_a.png"}, {"label": "x"}], r"entry #2: needs"),
                          ([{"image_path": "DiFF/T2I/SDXL/face_a.png", "label": "maybe"}], r"entry #1: label 'maybe'")):
        bad = tmp_path / "bad_fake.json"
        bad.write_text(json.dumps({"Description": str(root), "images": images}))
        _usage_error(load_labelled, str(bad), match=match)
    bad.write_text(json.dumps({"Description": 3, "images": []}))
    _usage_error(load_labelled, str(bad), match="'Description' must be the image root folder")
    (bench / "notes.json").write_text(json.dumps({"x": {}}))
    _usage_error(load_labelled, str(bench), match="'notes.json' is not an X2-DFD JSON")


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
