"""The overlapped explain pipeline (decode + face detection in worker threads): the same records, in the
same order, as the sequential path; bad inputs stay per-item errors; inputs are read lazily; thread
settings are put back; the blend expert's score-only path gives predict's numbers."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import shared_path
from x2dfd.pipeline import Explainer, PipelineOptions


def _comparable(records) -> list[dict]:
    out = []
    for r in records:
        d = r.to_dict()
        d.pop("timings")
        out.append(d)
    return out


@pytest.fixture(scope="module")
def blend():
    from x2dfd.experts import load_expert

    return load_expert("blend")


@pytest.fixture(scope="module")
def mixed_inputs(tmp_path_factory) -> list:
    """Real photos with bad inputs between them: missing, not an image, truncated, no face, an array."""
    folder = tmp_path_factory.mktemp("mixed")
    photos = sorted(shared_path("data", "faces-real-photos", "real").glob("*.jpg"))[:9]
    items: list = []
    for i, p in enumerate(photos):
        dst = folder / p.name
        shutil.copy(p, dst)
        items.append(str(dst))
        if i == 1:
            items.append(str(folder / "missing.jpg"))
        if i == 3:
            (folder / "notes.jpg").write_text("not a JPEG")
            items.append(str(folder / "notes.jpg"))
        if i == 5:
            data = dst.read_bytes()
            (folder / "truncated.jpg").write_bytes(data[: len(data) // 3])
            items.append(str(folder / "truncated.jpg"))
        if i == 6:
            Image.fromarray(np.full((120, 90, 3), 128, np.uint8)).save(folder / "grey.png")
            items.append(str(folder / "grey.png"))  # no face
            items.append(("array", np.asarray(Image.open(dst).convert("RGB"))))
    return items


@pytest.mark.parametrize("batch_size", [1, 4])
def test_workers_give_the_sequential_records_in_input_order(blend, mixed_inputs, batch_size):
    runs = {}
    for workers in (0, 1, 3):
        explainer = Explainer(None, [blend], PipelineOptions(batch_size=batch_size, workers=workers))
        runs[workers] = _comparable(explainer.run(mixed_inputs))
    assert runs[0] == runs[1] == runs[3]
    names = [Path(r["path"]).name for r in runs[0]]
    assert names == [Path(i).name if isinstance(i, str) else i[0] for i in mixed_inputs]
    by_name = dict(zip(names, runs[0]))
    for bad in ("missing.jpg", "notes.jpg", "truncated.jpg", "grey.png"):
        assert by_name[bad]["error"] and by_name[bad]["label"] == "undetermined"
    good = [r for r in runs[0] if r["error"] is None]
    assert len(good) == 10 and all(r["face"]["box"] for r in good)


def test_inputs_are_read_lazily_and_records_stream(blend, mixed_inputs):
    pulled = []

    def gen():
        for item in mixed_inputs:
            pulled.append(item)
            yield item

    explainer = Explainer(None, [blend], PipelineOptions(batch_size=1, workers=1))
    it = explainer.run(gen())
    first = next(it)
    assert first.path == mixed_inputs[0]
    assert len(pulled) < len(mixed_inputs)  # a bounded window ahead, not the whole input
    it.close()  # abandoning the run stops its workers
    assert not [t for t in threading.enumerate() if t.name.startswith("x2dfd-prepare")]


def test_thread_settings_are_put_back(blend, mixed_inputs):
    import cv2
    import torch

    cv2_before, torch_before = cv2.getNumThreads(), torch.get_num_threads()
    list(Explainer(None, [blend], PipelineOptions(workers=2)).run(mixed_inputs[:4]))
    assert (cv2.getNumThreads(), torch.get_num_threads()) == (cv2_before, torch_before)


def test_workers_option():
    from x2dfd.errors import UsageError

    assert PipelineOptions(workers=0).resolved_workers() == 0
    assert 1 <= PipelineOptions().resolved_workers() <= 4
    with pytest.raises(UsageError, match="--workers"):
        PipelineOptions(workers=-1)


def test_score_only_path_equals_predict_and_heatmaps_come_from_the_same_pass(blend, mixed_inputs):
    from x2dfd.face import extract_faces
    from x2dfd.media import load_image

    photos = [i for i in mixed_inputs if isinstance(i, str) and i.endswith(".jpg") and Path(i).stem[0].isdigit()][:3]
    crops = [extract_faces(load_image(p))[0].image for p in photos]
    scores, maps = blend.predict(crops)
    assert [s.p_fake for s in blend.score(crops)] == [s.p_fake for s in scores]
    arts = list(Explainer(None, [blend], PipelineOptions(workers=2)).run_with_artifacts(photos))
    for (record, art), m in zip(arts, maps):
        assert art.heatmap is not None and art.heatmap.shape == m.shape
        np.testing.assert_allclose(art.heatmap, m, atol=1e-5)


def test_detector_threads_use_their_own_nets():
    from x2dfd.face import get_detector
    from x2dfd.media import load_image

    photos = sorted(shared_path("data", "faces-real-photos", "real").glob("*.jpg"))[:6]
    images = [np.asarray(load_image(p)) for p in photos]
    det = get_detector()
    expected = [[(f.box, f.score) for f in det.detect(im)] for im in images]
    got: dict[int, list] = {}

    def work(k):
        got[k] = [[(f.box, f.score) for f in det.detect(im)] for im in images]

    threads = [threading.Thread(target=work, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(got[k] == expected for k in range(3))


def test_mllm_records_are_the_same_with_workers(selfcontained_llava, tmp_path):
    from x2dfd.mllm import MLLMOptions, load_mllm

    rng = np.random.default_rng(0)
    paths = []
    for i in range(5):
        p = tmp_path / f"crop_{i}.png"
        Image.fromarray(rng.integers(0, 255, (40, 32, 3), dtype=np.uint8)).save(p)
        paths.append(str(p))
    paths.insert(2, str(tmp_path / "missing.png"))
    mllm = load_mllm(MLLMOptions(model=str(selfcontained_llava), device="cpu"))
    runs = [
        _comparable(Explainer(mllm, [], PipelineOptions(batch_size=2, max_new_tokens=3, face_crop=False,
                                                         workers=w)).run(paths))
        for w in (0, 2)
    ]
    assert runs[0] == runs[1]
    assert [r["path"] for r in runs[0]] == paths
    assert runs[0][2]["error"] and all(r["explanation"] for i, r in enumerate(runs[0]) if i != 2)
