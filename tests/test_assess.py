"""MFA: cached cue scoring == full-prompt forward, fallback, ranking metrics, and `x2dfd assess` end to end."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from x2dfd.feature_assessment.cues import Cue, load_cues
from x2dfd.feature_assessment.ranking import balanced_accuracy, rank_cues, summarize_regions
from x2dfd.feature_assessment.scoring import CueScorer, _Unsupported, render_cue_text
from x2dfd.mllm import MLLMOptions, load_mllm


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models run faster on one thread, and much faster when the CPU is shared (no spinning workers)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _images(n: int = 2) -> list[Image.Image]:
    g = torch.Generator().manual_seed(1)
    return [Image.fromarray((torch.rand(90 + 20 * i, 80, 3, generator=g) * 255).byte().numpy()) for i in range(n)]


def _varied_cues(n: int = 6) -> list[Cue]:
    """Cues whose questions span short to long (different suffix lengths, so padding is exercised)."""
    cues = sorted(load_cues().cues, key=lambda c: len(c.question))
    picks = np.linspace(0, len(cues) - 1, n).round().astype(int)
    return [cues[i] for i in picks]


def _reference_p_yes(mllm, image, prompt: str, yes_id: int, no_id: int) -> float:
    """P(yes) from the processor and one plain forward of the whole prompt: no x2dfd scoring code."""
    inputs = mllm.processor(images=[image], text=prompt, return_tensors="pt")
    with torch.no_grad():
        logits = mllm.model(**inputs, logits_to_keep=1).logits[0, -1].double()
    return torch.softmax(torch.stack([logits[yes_id], logits[no_id]]), 0)[0].item()


def test_llava_prompt_and_answer_tokens_are_the_real_ones(tiny_llava):
    mllm = load_mllm(MLLMOptions(model=str(tiny_llava)))
    cue = load_cues(only=["teeth.blurry"]).cues[0]
    scorer = CueScorer(mllm, [cue])
    assert scorer.prompts[0] == f"USER: <image>\n{render_cue_text(cue.question)} ASSISTANT:"
    assert mllm.tokenizer.convert_ids_to_tokens([scorer.yes_id, scorer.no_id]) == ["▁Yes", "▁No"]


@pytest.mark.parametrize("fixture", ["tiny_llava", "selfcontained_llava", "tiny_qwen2vl"])
def test_cached_scores_equal_full_prompt_forward(fixture, request):
    mllm = load_mllm(MLLMOptions(model=str(request.getfixturevalue(fixture))))
    assert mllm.dtype == torch.float32
    cues = _varied_cues(5)
    images = _images(2)
    one = CueScorer(mllm, cues, batch_size=1, method="packed")
    three = CueScorer(mllm, cues, batch_size=3, method="packed")
    padded = CueScorer(mllm, cues, batch_size=3, method="padded")
    suffix_lens = {len(ids) - three.shared_len for ids in three.token_ids}
    assert len(suffix_lens) >= 4  # really different lengths: padded batches are padded, packed segments differ
    refs = []
    for image in images:  # two images: the second must not see the first one's cache
        ref = np.array([_reference_p_yes(mllm, image, p, one.yes_id, one.no_id) for p in one.prompts])
        for scorer in (one, three, padded):
            assert np.abs(scorer.score_image(image) - ref).max() < 1e-4, scorer.method
        refs.append(ref)
    assert np.abs(three.score_image(images[0], [4, 0, 2]) - refs[0][[4, 0, 2]]).max() < 1e-4  # any subset, any order
    assert (one.method, three.method, padded.method) == ("packed", "packed", "padded") and one.fallback_reason is None
    # one prefill per image, then ceil(5 / batch) suffix passes (+1 once where this transformers version cannot
    # keep per-row logit positions, e.g. 5.17: the padded path then retries that batch with the union of positions)
    retry = 0 if padded._per_row_keep else 1
    assert one.calls == 2 * (1 + 5) and padded.calls == 2 * (1 + 2) + retry and three.calls == 2 * (1 + 2) + (1 + 1)
    assert len({round(float(p), 7) for p in refs[0]}) > 1  # cues do change the answer
    assert np.abs(refs[0] - refs[1]).max() > 1e-6  # and so do images


def test_auto_verifies_then_falls_back_once(selfcontained_llava, monkeypatch):
    mllm = load_mllm(MLLMOptions(model=str(selfcontained_llava)))
    cues = _varied_cues(4)
    images = _images(2)
    good = CueScorer(mllm, cues, batch_size=2)  # auto: verified on the first image, stays cached
    expected = [good.score_image(im) for im in images]
    assert good.method == "packed" and good.max_verify_diff is not None and good.max_verify_diff < 1e-6

    original = CueScorer._score_batch
    monkeypatch.setattr(CueScorer, "_score_batch", lambda self, prefix, idx: original(self, prefix, idx) + 0.1)
    broken = CueScorer(mllm, cues, batch_size=2)
    with pytest.warns(RuntimeWarning, match="falling back to the exact one-prompt-per-cue path") as record:
        got = [broken.score_image(im) for im in images]
    ours = [w for w in record if w.category is RuntimeWarning and "one-prompt-per-cue" in str(w.message)]
    assert len(ours) == 1 and broken.method == "naive"  # one warning of ours (others' warnings are not counted)
    assert broken.fallback_reason.count("differs from the full-prompt forward") == 2  # packed, then padded
    for a, b in zip(got, expected):
        assert np.abs(a - b).max() < 1e-6

    def unsupported(self, image):
        raise _Unsupported("no prefix cache for this architecture")

    monkeypatch.setattr(CueScorer, "_prefill", unsupported)
    forced = CueScorer(mllm, cues, batch_size=2, method="packed")  # an explicit method never falls back
    with pytest.raises(_Unsupported):
        forced.score_image(images[0])
    auto = CueScorer(mllm, cues, batch_size=2)
    with pytest.warns(RuntimeWarning, match="no prefix cache for this architecture"):
        assert np.abs(auto.score_image(images[0]) - expected[0]).max() < 1e-6


# ------------------------------------------------------------------------------------------------ ranking
def _cue(cid: str) -> Cue:
    region = cid.split(".")[0]
    return Cue(id=cid, region=region, question=f"{cid}?", present="p", absent="a")


def _brute_auc(y, s) -> float:
    pos = [b for b, t in zip(s, y) if t == 1]
    neg = [b for b, t in zip(s, y) if t == 0]
    return sum((p > n) + 0.5 * (p == n) for p in pos for n in neg) / (len(pos) * len(neg))


def test_ranking_metrics_and_flags():
    y = [0] * 5 + [1] * 5
    perfect = [0.1, 0.2, 0.3, 0.2, 0.1, 0.8, 0.9, 0.7, 0.6, 0.95]
    mixed = [0.1, 0.4, 0.6, 0.2, 0.3, 0.5, 0.35, 0.7, 0.8, 0.45]
    cues = [_cue("eyes.perfect"), _cue("eyes.inverted"), _cue("teeth.constant"), _cue("teeth.mixed")]
    p = np.array([perfect, [1 - v for v in perfect], [0.7] * 10, mixed]).T
    rows = rank_cues(cues, y, p, n_boot=200, seed=0)
    by_id = {r["id"]: r for r in rows}
    assert [r["id"] for r in rows] == ["eyes.perfect", "teeth.mixed", "teeth.constant", "eyes.inverted"]
    assert [r["rank"] for r in rows] == [1, 2, 3, 4]
    assert by_id["eyes.perfect"]["auc"] == 1.0 and by_id["eyes.perfect"]["auc_ci"] == [1.0, 1.0]
    assert by_id["eyes.perfect"]["flags"] == [] and by_id["eyes.perfect"]["balanced_accuracy"] == 1.0
    inv = by_id["eyes.inverted"]
    assert inv["auc"] == 0.0 and inv["flags"] == ["inverted"]  # kept and flagged, its CI excludes 0.5
    assert inv["mean_p_yes_real"] > inv["mean_p_yes_fake"]
    const = by_id["teeth.constant"]
    assert const["auc"] == 0.5 and set(const["flags"]) == {"uninformative", "always_yes", "constant"}
    assert const["balanced_accuracy"] == 0.5 and const["yes_rate"] == 1.0
    mixed_row = by_id["teeth.mixed"]
    assert mixed_row["auc"] == pytest.approx(_brute_auc(y, mixed))
    assert mixed_row["balanced_accuracy"] == pytest.approx(0.5 * (3 / 5 + 4 / 5))  # fakes >= .5: 3/5, reals < .5: 4/5
    lo, hi = mixed_row["auc_ci"]
    assert lo <= mixed_row["auc"] <= hi and (mixed_row["n_real"], mixed_row["n_fake"]) == (5, 5)
    assert rank_cues(cues, y, p, rank_by="balanced_accuracy", n_boot=20)[0]["id"] == "eyes.perfect"
    assert balanced_accuracy(np.array(y), np.array(mixed), threshold=0.4) == pytest.approx(0.5 * (4 / 5 + 3 / 5))

    regions = summarize_regions(cues, y, p, rows, n_boot=100)
    assert [g["region"] for g in regions] == ["teeth", "eyes"]  # eyes' perfect and inverted cues cancel out
    eyes = next(g for g in regions if g["region"] == "eyes")
    assert (eyes["n_cues"], eyes["n_inverted"], eyes["best_cue"], eyes["worst_cue"]) == (2, 1, "eyes.perfect", "eyes.inverted")
    assert eyes["region_auc"] == 0.5 and eyes["mean_cue_auc"] == 0.5
    teeth = next(g for g in regions if g["region"] == "teeth")
    assert teeth["region_auc"] == pytest.approx(_brute_auc(y, (np.array(mixed) + 0.7) / 2))


# ------------------------------------------------------------------------------------------------ command
@pytest.fixture
def face_data(tmp_path, request) -> Path:
    from tests.conftest import shared_path

    root = shared_path("data", "stylegan2-vs-real", "images")
    data = tmp_path / "data"
    for label in ("real", "fake"):
        (data / label).mkdir(parents=True)
        for src in sorted((root / label).glob("*.jpg"))[:3]:
            shutil.copy(src, data / label / src.name)
    return data


def _assess(args: list[str]) -> int:
    from x2dfd.cli import main

    return main(["assess", *args])


def test_assess_command_end_to_end_rerun_and_resume(tiny_llava, face_data, tmp_path, monkeypatch):
    from x2dfd.feature_assessment.cache import read_scores

    out = tmp_path / "mfa"
    common = [str(face_data), "--model", str(tiny_llava), "--only", "teeth", "--only", "eyes.pupil_shape",
              "--no-face-crop", "--per-class", "2", "--bootstrap", "50", "--cue-batch-size", "5", "--quiet"]
    assert _assess([*common, "--out", str(out)]) == 0
    for name in ("ranking.json", "ranking.csv", "regions.csv", "ranking.png", "scores.jsonl", "assess.config.json"):
        assert (out / name).is_file(), name
    assert (out / "ranking.png").read_bytes()[:4] == b"\x89PNG"
    ranking = json.loads((out / "ranking.json").read_text())
    assert ranking["model"]["model"] == str(tiny_llava) and ranking["model"]["adapter"] is None
    assert ranking["model"]["architecture"] == "LlavaForConditionalGeneration"
    assert ranking["template_version"].startswith("cue.jinja@")
    assert ranking["answer_tokens"] == {"yes": "▁Yes", "no": "▁No"}
    assert ranking["data"]["n_scored"] == {"real": 2, "fake": 2} and len(ranking["data"]["fingerprint"]) == 64
    assert ranking["data"]["n_available"] == {"real": 3, "fake": 3} and ranking["data"]["per_class"] == 2
    assert ranking["scorer"]["method"] == "packed" and ranking["scorer"]["max_verify_diff"] < 1e-4
    cues = ranking["cues"]
    assert len(cues) == 9 and [c["rank"] for c in cues] == list(range(1, 10))
    assert {c["region"] for c in cues} == {"teeth", "eyes"} and {r["region"] for r in ranking["regions"]} == {"teeth", "eyes"}
    assert all({"auc", "auc_ci", "balanced_accuracy", "balanced_accuracy_ci", "flags", "present", "absent"} <= set(c)
               for c in cues)
    assert ranking["run"]["newly_scored"] == 4 * 9
    assert len((out / "ranking.csv").read_text().strip().splitlines()) == 10
    config = json.loads((out / "assess.config.json").read_text())
    assert config["setting_id"] == ranking["setting"]["id"] and config["config"]["only"] == ["teeth", "eyes.pupil_shape"]

    # Per-image scores, as `x2dfd finetune` reads them.
    scores = read_scores(out)
    assert len(scores) == 4 and {s.label for s in scores.values()} == {0, 1}
    assert all(len(s.p_yes) == 9 and all(0 < v < 1 for v in s.p_yes.values()) for s in scores.values())

    # A rerun on the same inputs scores nothing and does not even load the model.
    lines = (out / "scores.jsonl").read_text()
    assert _assess([*common, "--out", str(out)]) == 0
    assert (out / "scores.jsonl").read_text() == lines
    rerun = json.loads((out / "ranking.json").read_text())
    assert rerun["run"]["newly_scored"] == 0 and rerun["run"]["model_calls"] == 0
    assert rerun["cues"] == ranking["cues"]

    # An interrupted run keeps what it scored; the next run scores only the rest, to the same values.
    out2 = tmp_path / "mfa-interrupted"
    original = CueScorer._score_batch
    calls = {"n": 0}

    def flaky(self, prefix, idx):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return original(self, prefix, idx)

    monkeypatch.setattr(CueScorer, "_score_batch", flaky)
    common += ["--no-verify-cache"]  # checked above; saves two full forwards per run
    assert _assess([*common, "--out", str(out2)]) == 130
    assert not (out2 / "ranking.json").exists()
    partial = sum(len(s.p_yes) for s in _read_all(out2).values())
    assert 0 < partial < 4 * 9
    monkeypatch.setattr(CueScorer, "_score_batch", original)
    assert _assess([*common, "--out", str(out2)]) == 0
    resumed = json.loads((out2 / "ranking.json").read_text())
    assert resumed["run"]["newly_scored"] == 4 * 9 - partial
    assert resumed["setting"]["id"] == ranking["setting"]["id"]
    again = read_scores(out2)
    assert set(again) == set(scores)
    for sha, entry in scores.items():
        assert max(abs(entry.p_yes[c] - again[sha].p_yes[c]) for c in entry.p_yes) < 1e-6


def _read_all(out: Path) -> dict:
    from x2dfd.feature_assessment.cache import ScoreStore

    return {image: entry for (_, image), entry in ScoreStore(out / "scores.jsonl").images.items()}


def test_assess_with_face_crop_and_undecodable_file(tiny_llava, face_data, tmp_path):
    """Faces are detected and cropped as in explain; a broken file is an undetermined face, reported per class."""
    from tests.conftest import shared_path

    (face_data / "real" / "broken.jpg").write_bytes(b"not a jpeg")
    extra = sorted(shared_path("data", "stylegan2-vs-real", "images", "fake").glob("*.jpg"))[3]
    shutil.copy(extra, face_data / "fake" / extra.name)
    out = tmp_path / "mfa"
    rc = _assess([str(face_data), "--model", str(tiny_llava), "--only", "teeth.blurry", "--only", "eyes.pupil_shape",
                  "--bootstrap", "20", "--quiet", "--out", str(out)])
    assert rc == 0
    data = json.loads((out / "ranking.json").read_text())["data"]
    # the undecodable file is dropped before sampling (reported), so both classes keep equal usable counts
    assert data["n_sampled"] == {"real": 3, "fake": 3}
    assert data["face"] == {"crop": True, "scale": 1.3, "align": False, "min_score": 0.5}
    assert sum(data["undetermined"].values()) == len(data["errors"])  # no face: kept in the sample, undetermined
    assert data["n_scored"]["real"] + data["undetermined"]["real"] == 3
    assert data["unreadable"]["real"] == 1 and data["unreadable"]["fake"] == 0
    [broken] = data["unreadable"]["examples"]
    assert broken["path"].endswith("broken.jpg") and broken["label"] == "real" and "\n" not in broken["error"]
    lines = [json.loads(x) for x in (out / "scores.jsonl").read_text().splitlines()]
    assert sum(x["kind"] == "error" for x in lines) == len(data["errors"])  # cached: a rerun skips them


def test_assess_usage_errors(tmp_path, capsys):
    assert _assess([str(tmp_path / "nope"), "--model", str(tmp_path)]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "real").mkdir()
    (tmp_path / "fake").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "real" / "a.png")
    (tmp_path / "fake" / "clip.mp4").write_bytes(b"")  # videos are read (an unreadable one is replaced later)
    assert _assess([str(tmp_path), "--model", str(tmp_path / "no-model"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "no-model" in err and "video" not in err and len(err.strip().splitlines()) == 1
    with pytest.raises(SystemExit) as info:
        _assess([str(tmp_path), "--frames-per-video", "0"])
    assert info.value.code == 2
    assert "--frames-per-video must be >= 1" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        _assess([str(tmp_path), "--cue-batch-size", "0"])
    assert info.value.code == 2
    assert "--cue-batch-size must be >= 1" in capsys.readouterr().err
