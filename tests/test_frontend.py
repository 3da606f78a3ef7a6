"""The data front end of assess (and of finetune / evaluate, which call the same API): video files in DATA as
frame rows decoded through explain's media path, the train split by default and said, the crop warning."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from x2dfd.cropcheck import CropWarner, fill_fraction, looks_like_crop, padding_fraction
from x2dfd.dataset import count_videos, load_labelled, load_row_image, row_key, row_sha256, sample_frames
from x2dfd.errors import MediaError, UsageError
from x2dfd.faceswap import write_video
from x2dfd.media import DEFAULT_FRAMES, sample_video, uniform_indices

from tests.conftest import shared_path

W, H = 64, 48


def code_frame(i: int, shade: int = 0) -> np.ndarray:
    """Frame ``i`` shows bit b of i as a white stripe b, so a decoded picture names its own index."""
    f = np.full((H, W, 3), shade, np.uint8)
    for b in range(7):
        if (i >> b) & 1:
            f[: H // 2, b * 9 : b * 9 + 8] = 255
    return f


def read_code(image: Image.Image) -> int:
    a = np.asarray(image).astype(np.float32)
    return sum(1 << b for b in range(7) if a[4 : H // 2 - 4, b * 9 + 2 : b * 9 + 6].mean() > 128)


@pytest.fixture
def video_data(tmp_path) -> Path:
    """real/: two videos (40 and 7 frames) and one image; fake/DF/: two videos of the same name in two folders."""
    data = tmp_path / "data"
    for rel, n in (("real/a.mp4", 40), ("real/b.avi", 7), ("fake/DF/x/000_003.mp4", 30), ("fake/DF/y/000_003.mp4", 20)):
        (data / rel).parent.mkdir(parents=True, exist_ok=True)
        write_video([code_frame(i) for i in range(n)], data / rel, fps=10, gop=6)
    Image.fromarray(code_frame(3)).save(data / "real" / "still.png")
    return data


def test_video_files_in_data_become_frame_rows_decoded_as_explain_decodes_them(video_data):
    ds = load_labelled(str(video_data))
    assert ds["video_id"] == ["real/a.mp4", "real/b.avi", None, "fake/DF/x/000_003.mp4", "fake/DF/y/000_003.mp4"]
    assert count_videos(ds) == {"real": 3, "fake": 2}  # one file, one video (two 000_003 in two folders: two)

    frames = sample_frames(ds)  # default: the frames explain samples
    totals = {"fake/DF/x/000_003.mp4": 30, "fake/DF/y/000_003.mp4": 20, "real/a.mp4": 40, "real/b.avi": 7}
    for vid, total in totals.items():
        assert [f for f, v in zip(frames["frame"], frames["video_id"]) if v == vid] == uniform_indices(total, DEFAULT_FRAMES)
    assert len(frames) == 16 + 16 + 16 + 7 + 1 and count_videos(frames) == count_videos(ds)
    still = frames[16 + 7]
    assert still["frame"] is None and read_code(load_row_image(still)) == 3

    capped = sample_frames(ds, 3, seed=0)
    assert len(capped) == 4 * 3 + 1 and count_videos(capped) == count_videos(ds)
    rows = [r for r in capped if r["video_id"] == "real/a.mp4"]
    assert [r["frame"] for r in rows] == uniform_indices(40, 3) == [0, 19, 39]
    explain_frames, _ = sample_video(rows[0]["path"], 3)  # what explain judges for this video
    for row, seen in zip(rows, explain_frames):
        image = load_row_image(row)
        assert read_code(image) == row["frame"] == seen.index
        assert np.array_equal(np.asarray(image), np.asarray(seen.image))
    keys = [row_key(r) for r in capped]
    assert len(set(keys)) == len(keys) and keys[0].endswith("a.mp4#0")
    shas = {row_sha256(r) for r in capped}
    assert len(shas) == len(capped)  # frames of one video never share a cache key
    assert sample_frames(ds, 3, seed=7)["frame"] == capped["frame"]  # video files: uniform, as explain


def test_unreadable_video_stays_one_row_and_fails_when_read(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "fake").mkdir()
    (tmp_path / "real" / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 not really a video")
    write_video([code_frame(i) for i in range(5)], tmp_path / "fake" / "ok.mp4", fps=5)
    ds = sample_frames(load_labelled(str(tmp_path)), 2)
    assert ds["frame"] == [None, 0, 4] and ds["video_id"][0] == "real/broken.mp4"
    with pytest.raises(MediaError, match="broken.mp4"):
        load_row_image(ds[0])
    unexpanded = load_labelled(str(tmp_path))[1]  # a video row that was never expanded: a usage error
    with pytest.raises(UsageError, match="sample_frames"):
        load_row_image(unexpanded)


def test_crop_warner_counts_per_class_and_warns_once():
    assert fill_fraction((200, 100), (10, 10, 150, 90)) == pytest.approx(0.7)
    assert looks_like_crop((100, 100), (5, 5, 95, 98)) and not looks_like_crop((100, 100), (30, 20, 80, 75))
    assert not looks_like_crop((100, 100), None)
    assert padding_fraction((100, 100), (0, 0, 100, 100)) == pytest.approx(1 - 1 / 1.3**2, abs=0.02)
    assert padding_fraction((400, 400), (150, 150, 250, 250)) == 0.0

    lines: list[str] = []

    class Sink:
        def write(self, text):
            lines.append(text)

        def flush(self):
            pass

    w = CropWarner("x2dfd assess", stream=Sink())
    for k in range(10):  # real: tight crops; fake: photos with the face in the middle
        w.observe((100, 100), (3, 2, 97, 99), label=0)
        w.observe((400, 300), (150, 100, 250, 220), label=1)
    w.observe((100, 100), None, label=1)  # no face: not counted
    assert w.summary()["by_class"] == {"real": {"checked": 10, "look_like_crops": 10},
                                       "fake": {"checked": 10, "look_like_crops": 0}}
    msg = w.warn()
    assert msg is not None and w.warn() == msg and len(lines) == 2  # printed once (the line and its newline)
    assert msg.startswith("x2dfd assess: 10 of 20 inputs look like existing face crops") and "\n" not in msg
    assert "real 10 of 10, fake 0 of 10" in msg and "--no-face-crop" in msg and "black" in msg
    assert "classes differ in framing" in msg
    quiet = CropWarner("x2dfd assess", stream=Sink())
    for k in range(20):
        quiet.observe((400, 300), (150, 100, 250, 220))
    quiet.observe((100, 100), (0, 0, 100, 100))  # 1 of 21: below the share that warns
    assert quiet.message() is None and quiet.warn() is None and len(lines) == 2


def test_crop_warner_observes_a_runs_records():
    """observe_records: explain's and evaluate's loop over records (labels alongside, None skipped), one helper."""
    from x2dfd.records import Record

    tight = Record(path="a.png", media={"width": 100, "height": 100}, face={"box": [3, 2, 97, 99]})
    photo = Record(path="b.png", media={"width": 400, "height": 300}, face={"box": [150, 100, 250, 220]})
    no_face = Record(path="c.png", media={"width": 100, "height": 100}, face=None)
    video = Record(path="v.mp4", kind="video", media={"width": 100, "height": 100},
                   frames=[{"index": 0, "face": None}, {"index": 4, "face": {"box": [0, 0, 100, 100]}}])
    unlabelled = CropWarner("x2dfd explain")
    assert unlabelled.observe_records([tight, photo, no_face, video]) is unlabelled
    assert (unlabelled.checked, unlabelled.flagged) == ([0, 0, 3], [0, 0, 2])
    labelled = CropWarner("x2dfd evaluate").observe_records([tight, None, photo, video], [0, 1, 1, 1])
    assert labelled.summary()["by_class"] == {"real": {"checked": 1, "look_like_crops": 1},
                                              "fake": {"checked": 2, "look_like_crops": 1}}
    with pytest.raises(ValueError):  # labels run alongside the records: one each
        CropWarner("x2dfd evaluate").observe_records([tight, photo], [0])


def _detect_and_observe(paths: list[Path], warner: CropWarner, label: int) -> None:
    from x2dfd.face import extract_faces
    from x2dfd.media import load_image

    for p in paths:
        image = load_image(p)
        warner.observe_crop(image, extract_faces(image)[0], label=label)


def test_crop_warning_fires_on_face_crops_not_on_photos(tmp_path):
    """stylegan2-vs-real's real faces are tight 300x300 crops; its StyleGAN2 faces have FFHQ framing (hair,
    background), and a crop pasted small into a larger picture is a photo with background by construction."""
    crops = sorted(shared_path("data", "stylegan2-vs-real", "images", "real").glob("*.jpg"))[:6]
    ffhq = sorted(shared_path("data", "stylegan2-vs-real", "images", "fake").glob("*.jpg"))[:4]
    rng = np.random.default_rng(0)
    photos = []
    for k, src in enumerate(crops[:3]):
        canvas = Image.fromarray(rng.integers(60, 200, (360, 480, 3), dtype=np.uint8)).resize((480, 360))
        canvas.paste(Image.open(src).convert("RGB").resize((150, 150)), (160 + 10 * k, 90))
        photos.append(tmp_path / f"photo{k}.png")
        canvas.save(photos[-1])
    on_crops = CropWarner("x2dfd assess")
    _detect_and_observe(crops, on_crops, 0)
    assert on_crops.n_flagged >= 5 and on_crops.message() is not None
    on_photos = CropWarner("x2dfd assess")
    _detect_and_observe(ffhq, on_photos, 1)
    _detect_and_observe(photos, on_photos, 1)
    assert on_photos.n_checked == 7 and on_photos.n_flagged == 0 and on_photos.message() is None


def _assess(args: list[str]) -> int:
    from x2dfd.cli import main

    return main(["assess", *args])


def test_assess_reads_the_train_split_by_default_and_says_so(tmp_path, capsys):
    from x2dfd.feature_assessment.assess import parse_args

    assert parse_args(["d"]).split == "train" and parse_args(["d", "--split", "test"]).split == "test"
    root = tmp_path / "datasets"
    entries = {}
    for label_name in ("FF-real", "FF-DF"):
        entries[label_name] = {}
        for split, n in (("train", 3), ("test", 1)):
            videos = {}
            for v in range(n):
                frames = [f"{label_name}/{split}/{v:03d}/{i}.png" for i in range(2)]
                for f in frames:
                    (root / f).parent.mkdir(parents=True, exist_ok=True)
                    Image.new("RGB", (8, 8)).save(root / f)
                videos[f"{v:03d}"] = {"label": label_name, "frames": frames}
            entries[label_name][split] = {"c23": videos}
    path = tmp_path / "FaceForensics++.json"
    path.write_text(json.dumps({"FaceForensics++": entries}))
    assert _assess([str(path), "--data-root", str(root), "--model", str(tmp_path / "no-model")]) == 2
    first = capsys.readouterr().err.splitlines()[0]
    assert first == (f"x2dfd assess: read split 'train', compression 'c23' of DeepfakeBench JSON '{path}': "
                     "6 real / 6 fake faces from 3 / 3 videos or images")
    assert _assess([str(path), "--data-root", str(root), "--split", "test", "--frames-per-video", "1", "--model",
                    str(tmp_path / "no-model")]) == 2
    assert "read split 'test'" in capsys.readouterr().err
    assert _assess([str(path), "--data-root", str(root), "--quiet", "--model", str(tmp_path / "no-model")]) == 2
    assert "read split" not in capsys.readouterr().err


def test_assess_scores_video_frames_and_warns_about_crops(tmp_path, selfcontained_llava, capsys):
    """DATA holds videos: real ones made of tight face crops, fake ones of FFHQ-framed faces. assess samples
    --frames-per-video frames of each through explain's media path, and says the real inputs are crops."""
    data = tmp_path / "data"
    for label, folder in ((0, "real"), (1, "fake")):
        faces = sorted(shared_path("data", "stylegan2-vs-real", "images", folder).glob("*.jpg"))[:4]
        (data / folder).mkdir(parents=True)
        for v in range(2):
            frames = [np.asarray(Image.open(f).convert("RGB").resize((160, 160))) for f in faces[2 * v : 2 * v + 2] * 2]
            write_video(frames, data / folder / f"clip{v}.mp4", fps=4)
    out = tmp_path / "mfa"
    assert _assess([str(data), "--model", str(selfcontained_llava), "--only", "eyes.pupil_shape", "--frames-per-video",
                    "2", "--bootstrap", "10", "--no-verify-cache", "--device", "cpu", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert f"x2dfd assess: read folder DATA '{data}'" in err and "4 real / 4 fake faces from 2 / 2 videos" in err
    [warning] = [line for line in err.splitlines() if "look like existing face crops" in line]
    assert "real 4 of 4" in warning and "fake 0 of 4" in warning and "--no-face-crop" in warning
    ranking = json.loads((out / "ranking.json").read_text())
    d = ranking["data"]
    assert d["layout"] == "folder" and d["split"] is None and d["frames_per_video"] == 2
    assert d["n_videos_available"] == {"real": 2, "fake": 2} and d["n_sampled"] == {"real": 4, "fake": 4}
    assert d["crop_check"]["by_class"]["real"]["look_like_crops"] == 4 and d["crop_check"]["warning"] == warning
    scored = [json.loads(x) for x in (out / "scores.jsonl").read_text().splitlines()]
    images = {x["image"] for x in scored if x["kind"] in ("scores", "error")}
    assert len(images) == 8  # each frame its own entry, though two frames share a file
    config = json.loads((out / "assess.config.json").read_text())["config"]
    assert config["frames_per_video"] == 2 and config["split"] == "train"


def test_explain_warns_once_when_its_inputs_already_are_face_crops(tmp_path, capsys):
    """explain (and expert score) apply the same rule to their records: a folder of tight face crops gets one
    warning line before the outcome line; the same run with --no-face-crop, and FFHQ-framed faces, get none."""
    from x2dfd.explain import main as explain_main

    crops = sorted(shared_path("data", "stylegan2-vs-real", "images", "real").glob("*.jpg"))[:4]
    ffhq = sorted(shared_path("data", "stylegan2-vs-real", "images", "fake").glob("*.jpg"))[:3]
    assert explain_main([*map(str, crops), "--mllm", "none"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    warned = [line for line in err if "look like existing face crops" in line]
    assert len(warned) == 1 and warned[0].startswith("x2dfd explain: ") and "pass --no-face-crop" in warned[0]
    assert "look like" not in err[-1]  # the outcome line stays last
    assert explain_main([*map(str, crops), "--mllm", "none", "--no-face-crop"]) == 0
    assert "look like existing face crops" not in capsys.readouterr().err
    assert explain_main([*map(str, ffhq), "--mllm", "none"]) == 0
    assert "look like existing face crops" not in capsys.readouterr().err
