"""Issue 12: three-way verdict, disagreement, measured-only evidence, facial regions, video segments."""

from __future__ import annotations

import re

import numpy as np
import pytest

from x2dfd.evidence import (DEFAULT_BAND, annotate, build_evidence, complete, disagreements, parse_band, verdict_from_p)
from x2dfd.records import Record
from x2dfd.regions import NAMES, heat_by_region, region_map
from x2dfd.segments import find_segments, segment_score, segment_score_values

NUMBER = re.compile(r"(?<![\w.])(\d+\.\d+|\d+%)")


def _formats(value) -> set[str]:
    """Every way the evidence writes a number: 2 decimals (p values), 1 decimal (seconds), whole percent."""
    out: set[str] = set()
    if isinstance(value, bool):
        return out
    if isinstance(value, (int, float)):
        out |= {f"{value:.2f}", f"{value:.1f}", f"{round(100 * value)}%", str(value)}
    elif isinstance(value, dict):
        for v in value.values():
            out |= _formats(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            out |= _formats(v)
    return out


def check_sentences(record: Record) -> None:
    """Each evidence sentence states only numbers it carries, and grades them by the documented thresholds."""
    assert record.evidence, "no evidence"
    for e in record.evidence:
        text, nums = e["text"], e["numbers"]
        allowed = _formats(nums)
        for token in NUMBER.findall(text):
            assert token in allowed, f"{token!r} in {text!r} rests on no number of {nums}"
        if e["kind"] == "expert" and "p_fake" in nums:
            p = nums["p_fake"]
            grade = ("strongly fake" if p >= 0.7 else "leans fake" if p >= nums["threshold"] else
                     "leans real" if p > 0.3 else "strongly real")
            assert grade in text and record.experts[nums["expert"]] == pytest.approx(p, abs=1e-4)
        if e["kind"] == "verdict":
            assert nums["p_fake"] == pytest.approx(record.p_fake, abs=1e-4)
            assert text.lower().split(":")[0] in (f"verdict {record.verdict}", record.verdict)
        if e["kind"] == "disagreement":
            assert nums["a_p"] >= 0.7 and nums["b_p"] <= 0.3
        if e["kind"] == "where":
            if "no strong response" in text:
                assert nums["peak"] < nums["hot"]
            else:
                assert nums["peak"] >= nums["hot"]
                shares = [r["share"] for r in nums["regions"]]
                assert shares == sorted(shares, reverse=True)
                for r in nums["regions"]:
                    assert r["region"] in text
        if e["kind"] == "segments" and nums["segments"]:
            for s in nums["segments"]:
                assert f"{s['start_s']:.1f}–{s['end_s']:.1f} s" in text


def test_band_parsing_and_three_way_verdict():
    assert parse_band("0.35,0.65") == (0.35, 0.65) == DEFAULT_BAND
    assert parse_band("0.5, 0.5") == (0.5, 0.5)
    for bad in ("0.7", "a,b", "0.6,0.4", "0,0.5", "0.5,1"):
        with pytest.raises(ValueError):
            parse_band(bad)
    assert [verdict_from_p(p) for p in (0.0, 0.3499, 0.35, 0.5, 0.6499, 0.65, 1.0, None)] == \
        ["real", "real", "uncertain", "uncertain", "uncertain", "fake", "fake", "undetermined"]
    assert verdict_from_p(0.5, (0.5, 0.5)) == "fake" and verdict_from_p(0.49, (0.5, 0.5)) == "real"


def test_band_option_is_checked_against_the_threshold():
    from x2dfd.errors import UsageError
    from x2dfd.pipeline import PipelineOptions

    assert PipelineOptions().band() == (0.35, 0.65) and PipelineOptions().uncertain_band == "auto"
    assert PipelineOptions(threshold=0.7).band() == (0.55, 0.85)  # auto follows --threshold
    assert PipelineOptions(uncertain_band="0.2,0.8").band() == (0.2, 0.8)
    with pytest.raises(UsageError, match="must contain --threshold"):
        PipelineOptions(uncertain_band="0.6,0.8")
    with pytest.raises(UsageError, match="LOW,HIGH"):
        PipelineOptions(uncertain_band="0.6")


def test_disagreement_rule():
    assert disagreements({"mllm": 0.91, "blend": 0.12}) == [{"a": "mllm", "b": "blend", "a_p": 0.91, "b_p": 0.12}]
    assert disagreements({"mllm": 0.2, "blend": 0.75}) == [{"a": "blend", "b": "mllm", "a_p": 0.75, "b_p": 0.2}]
    assert disagreements({"mllm": 0.69, "blend": 0.1}) == []  # not a clear margin
    assert disagreements({"a": 0.7, "b": 0.3}) == [{"a": "a", "b": "b", "a_p": 0.7, "b_p": 0.3}]  # the bounds count
    assert len(disagreements({"a": 0.9, "b": 0.1, "c": 0.05})) == 2
    # expert-only: the experts' mean is not a judge of its own
    rec = Record(path="x.jpg", label="real", p_fake=0.5, mode="expert-only", experts={"a": 0.95, "b": 0.05})
    annotate(rec, None, None)
    assert rec.disagreement == [{"a": "a", "b": "b", "a_p": 0.95, "b_p": 0.05}] and rec.verdict == "uncertain"
    rec = Record(path="x.jpg", label="fake", p_fake=0.93, mode="mllm", experts={"blend": 0.08})
    annotate(rec, None, None)
    assert rec.disagreement == [{"a": "mllm", "b": "blend", "a_p": 0.93, "b_p": 0.08}]
    check_sentences(rec)


def _landmarks(size: int = 200) -> np.ndarray:
    """A frontal 68-point face in a size x size crop (dlib's layout, mean-shape-like)."""
    s = size / 200.0
    jaw = [(40 + 120 * i / 16, 90 + 75 * np.sin(np.pi * i / 16)) for i in range(17)]
    brows = [(55 + 10 * i, 70 - 5 * np.sin(np.pi * i / 4)) for i in range(5)] + \
            [(105 + 10 * i, 70 - 5 * np.sin(np.pi * i / 4)) for i in range(5)]
    bridge = [(100, 80 + 10 * i) for i in range(4)]
    nose = [(88 + 6 * i, 122 + (2 if i in (1, 3) else 4 if i == 2 else 0)) for i in range(5)]
    eye = lambda cx: [(cx - 12, 88), (cx - 6, 84), (cx + 6, 84), (cx + 12, 88), (cx + 6, 91), (cx - 6, 91)]  # noqa: E731
    mouth_outer = [(100 + 22 * np.cos(np.pi + 2 * np.pi * i / 12), 145 + 9 * np.sin(np.pi + 2 * np.pi * i / 12))
                   for i in range(12)]
    mouth_inner = [(100 + 14 * np.cos(np.pi + 2 * np.pi * i / 8), 145 + 4 * np.sin(np.pi + 2 * np.pi * i / 8))
                   for i in range(8)]
    pts = np.array(jaw + brows + bridge + nose + eye(75) + eye(125) + mouth_outer + mouth_inner, np.float32)
    assert pts.shape == (68, 2)
    return pts * s


def _blob(shape, centre, sigma):
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    return np.exp(-((xx - centre[0]) ** 2 + (yy - centre[1]) ** 2) / (2 * sigma ** 2)).astype(np.float32)


@pytest.mark.parametrize("point,region", [(2, "left jaw line"), (14, "right jaw line"), (8, "chin"), (28, "nose bridge"),
                                          (62, "around the mouth"), (37, "left eye"), (44, "right eye")])
def test_heat_is_named_by_the_landmark_region_it_sits_on(point, region):
    lm = _landmarks()
    heat = _blob((200, 200), lm[point], 5)
    h = heat_by_region(heat, lm)
    assert h["regions"][0]["region"] == region, h["regions"][:3]
    assert h["peak"] == pytest.approx(heat.max(), abs=1e-4) and h["by"] == "landmarks"


def test_region_map_covers_forehead_and_outside():
    lm = _landmarks()
    labels, names = region_map(lm, (200, 200), grid=100)
    assert names == NAMES
    at = lambda x, y: names[labels[y // 2, x // 2]]  # noqa: E731
    assert at(100, 58) == "forehead" and at(100, 100) in ("nose bridge",)
    assert at(5, 195) == "outside the face" and at(195, 5) == "outside the face"
    assert at(72, 122) == "left cheek" and at(128, 122) == "right cheek"


def test_expert_only_record_gets_grounded_evidence_and_no_invented_text():
    lm = _landmarks()
    heat = _blob((200, 200), lm[3], 8)
    rec = Record(path="a.jpg", label="fake", p_fake=0.82, mode="expert-only", experts={"blend": 0.82})

    class Art:
        heatmap = heat
        landmarks = lm

    class FakeExplainer:
        class options:
            threshold = 0.5

            @staticmethod
            def band():
                return (0.35, 0.65)

        class Blend:
            name = "blend"
            prompt_name = "blending"

            def localize(self, faces):
                return None

            def info(self):
                return {"name": "blend", "evaluation": {"swaps": {"set": "held-out swaps", "auc": 0.9295}}}

        experts = [Blend()]

    annotate(rec, Art(), FakeExplainer())
    assert rec.explanation is None  # expert-only: the model text stays absent, the evidence is separate
    assert rec.verdict == "fake" and rec.verdict_band == [0.35, 0.65]
    kinds = [e["kind"] for e in rec.evidence]
    assert kinds == ["verdict", "expert", "where"]
    assert "left jaw line" in rec.evidence[2]["text"] and "blend heatmap" in rec.evidence[2]["text"]
    assert "AUC 0.93 on held-out swaps" in rec.evidence[1]["text"]
    check_sentences(rec)

    cold = Record(path="b.jpg", label="real", p_fake=0.1, mode="expert-only", experts={"blend": 0.1})
    Art.heatmap = heat * 0.3
    annotate(cold, Art(), FakeExplainer())
    assert "no strong response" in cold.evidence[-1]["text"]
    check_sentences(cold)
    # no heatmap: no location sentence; no expert: no expert sentence
    bare = Record(path="c.jpg", label="real", p_fake=0.2, mode="mllm")
    annotate(bare, None, None)
    assert [e["kind"] for e in bare.evidence] == ["verdict"]
    check_sentences(bare)


def test_segments_hysteresis_min_length_and_times():
    ps = [0.1, 0.2, 0.7, 0.55, 0.8, 0.3, 0.9, 0.2, 0.66, 0.7, None, 0.9, 0.95]
    frames = [{"index": i * 10, "time_s": i * 0.5, "p_fake": p} for i, p in enumerate(ps)]
    segs = find_segments(frames, duration_s=6.5)
    # 0.7 enters, 0.55 stays (>= 0.5), 0.8, then 0.3 ends: frames 2-4; 0.9 alone is too short; 0.66, 0.7 then a
    # frame without a score ends it; 0.9, 0.95 at the end run to the video's duration
    assert [(s["start_s"], s["end_s"], s["frames"], s["peak_p_fake"]) for s in segs] == \
        [(1.0, 2.5, 3, 0.8), (4.0, 5.0, 2, 0.7), (5.5, 6.5, 2, 0.95)]
    assert segs[0]["start_index"] == 20 and segs[0]["end_index"] == 40
    assert segs[0]["mean_p_fake"] == pytest.approx((0.7 + 0.55 + 0.8) / 3, abs=1e-6)
    assert find_segments([{"index": 0, "time_s": 0, "p_fake": 0.99}]) == []  # one frame is not a segment
    assert segment_score(frames) == pytest.approx(0.925)  # the strongest segment's mean
    real = [0.2, 0.3, 0.66, 0.4, 0.2]
    assert segment_score_values(real) == pytest.approx(np.mean(real))  # no segment: the mean, capped below 0.65
    assert segment_score_values([0.6, 0.64, 0.64]) < 0.65 and segment_score_values([None, None]) is None


def test_video_record_evidence_names_its_segments():
    frames = [{"index": i, "time_s": i * 0.25, "p_fake": p, "experts": {"blend": p}}
              for i, p in enumerate([0.1, 0.2, 0.15, 0.9, 0.95, 0.97, 0.92])]
    frames[4]["explained"] = True
    rec = Record(path="v.mp4", kind="video", label="fake", p_fake=0.6, mode="expert-only",
                 experts={"blend": 0.6}, frames=frames, media={"duration_s": 1.75})
    annotate(rec, None, None)
    assert rec.segments == [{"start_s": 0.75, "end_s": 1.75, "start_index": 3, "end_index": 6, "frames": 4,
                             "peak_p_fake": 0.97, "mean_p_fake": pytest.approx(0.935)}]
    assert any("0.8–1.8 s (peak 0.97)" in e["text"] for e in rec.evidence)
    check_sentences(rec)


def test_older_records_are_completed_and_new_fields_round_trip():
    old = {"path": "a.jpg", "sha256": None, "kind": "image", "label": "fake", "p_fake": 0.5, "experts": {"blend": 0.5},
           "error": None, "mode": "expert-only"}
    rec = Record.from_dict(old)
    assert rec.verdict is None and rec.evidence == [] and rec.segments is None
    complete(rec)
    assert rec.verdict == "uncertain" and rec.evidence and rec.evidence[0]["kind"] == "verdict"
    back = Record.from_dict(__import__("json").loads(rec.to_json()))
    assert back == rec
    with pytest.raises(ValueError):
        Record(path="x", verdict="maybe")
    assert Record.failed("x", "boom").verdict == "undetermined"


def test_pipeline_records_carry_the_fields_and_evidence_checks_out(tmp_path):
    """The real pipeline, expert-only with the shipped blending expert on a real portrait and its face swap."""
    from tests.conftest import shared_path
    from x2dfd import load_detector
    from x2dfd.demo.examples import make_examples

    photos = shared_path("data", "faces-real-photos", "real")
    files = make_examples(tmp_path / "ex", source_dir=photos)
    detector = load_detector(mllm=None)
    records = detector.explain([str(f) for f in files[:2]])
    for rec in records:
        assert rec.verdict in ("real", "uncertain", "fake") and rec.verdict_band == [0.35, 0.65]
        assert rec.explanation is None
        kinds = [e["kind"] for e in rec.evidence]
        assert kinds[:2] == ["verdict", "expert"] and "where" in kinds  # heatmaps are on by default (--localize)
        check_sentences(rec)
    swap = records[1]
    where = next(e for e in swap.evidence if e["kind"] == "where")
    assert where["numbers"]["by"] == "landmarks"
    names = {r["region"] for r in where["numbers"].get("regions", [])}
    assert names <= set(NAMES)


def test_a_real_verdict_says_which_forgery_kinds_no_expert_that_ran_covers():
    """Issue 16: the shipped blend expert is blind to fully synthetic faces (its scope says so, with the AUC);
    a real or uncertain verdict carries that as a ``coverage`` item, a fake one does not, and an expert that
    covers the kind removes it."""
    from x2dfd.experts import load_expert

    blend = load_expert("blend")
    blind = blend.info()["scope"]["blind_to"]
    assert blind and blind[0]["kind"].startswith("fully synthetic") and blind[0]["auc"] < 0.5

    class Synth:
        name = "synthesis"
        prompt_name = "synthesis"

        def info(self):
            return {"name": "synthesis", "scope": {"covers_kinds": [blind[0]["kind"]]}}

    def explainer(*experts):
        class E:
            class options:
                threshold = 0.5

                @staticmethod
                def band():
                    return (0.35, 0.65)
        E.experts = list(experts)
        return E()

    for p, expect in ((0.1, True), (0.5, True), (0.9, False)):
        rec = Record(path="a.jpg", label="real", p_fake=p, mode="expert-only", experts={"blend": p})
        annotate(rec, None, explainer(blend))
        cov = [e for e in rec.evidence if e["kind"] == "coverage"]
        assert bool(cov) is expect, (p, rec.evidence)
        if cov:
            assert cov[0]["numbers"] == {"forgery_kind": blind[0]["kind"], "expert": "blend", "auc": round(blind[0]["auc"], 2)}
            assert "does not rule them out" in cov[0]["text"] and "fully synthetic" in cov[0]["text"]
        check_sentences(rec)
    covered = Record(path="b.jpg", label="real", p_fake=0.1, mode="expert-only", experts={"blend": 0.1, "synthesis": 0.1})
    annotate(covered, None, explainer(blend, Synth()))
    assert not [e for e in covered.evidence if e["kind"] == "coverage"]
    unscored = Record(path="c.jpg", label="real", p_fake=0.1, mode="expert-only", experts={"blend": None})
    annotate(unscored, None, explainer(blend))  # an expert that did not score says nothing about coverage
    assert not [e for e in unscored.evidence if e["kind"] == "coverage"]
