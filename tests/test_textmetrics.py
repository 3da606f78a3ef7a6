"""Explanation metrics (x2dfd.textmetrics): verdict parsing, accuracy, text-vs-p_fake agreement, ROUGE-L / BLEU."""

from __future__ import annotations

import json
import math

import pytest

from x2dfd.errors import UsageError
from x2dfd.textmetrics import (BleuStats, agreement, bleu, bootstrap_explanation_metrics, explanation_metrics,
                               load_references, match_references, parse_verdict, rouge_l, verdict_accuracy)


@pytest.mark.parametrize("text, want", [
    ("This image is fake. The blending boundary is visible.", "fake"),
    ("This image is real. The skin texture is natural.", "real"),
    ("This is a fake image with warped teeth.", "fake"),
    ("Is this image real or fake? It looks manipulated around the jaw.", "fake"),
    ("The face is not fake: lighting is consistent.", "real"),
    ("The photo appears authentic.", "real"),
    ("Nothing conclusive can be said.", None),
    ("", None),
    (None, None),
])
def test_parse_verdict(text, want):
    assert parse_verdict(text) == want


def test_accuracy_and_agreement():
    texts = ["This image is fake.", "This image is real.", "Unclear.", "This image is fake."]
    acc = verdict_accuracy(texts, [1, "real", 0, 0])
    assert acc == {"n": 4, "accuracy": 0.5, "no_verdict": 1}
    ag = agreement(texts, [0.9, 0.2, 0.7, 0.1])
    assert ag["n"] == 4 and ag["agreement"] == 0.5 and ag["no_verdict"] == 1
    assert math.isnan(agreement([], [])["agreement"])
    with pytest.raises(UsageError, match="neither 0/1 nor real/fake"):
        verdict_accuracy(["x"], ["maybe"])


def test_references_file_and_metrics(tmp_path):
    refs = tmp_path / "refs.jsonl"
    refs.write_text("\n".join(json.dumps(r) for r in [
        {"path": "a.jpg", "reference": "This image is fake. The mouth region is blurred.", "label": 1},
        {"path": "b.jpg", "reference": "This image is real. The lighting is consistent.", "label": "real"},
    ]) + "\n")
    loaded = load_references(refs)
    assert loaded["a.jpg"]["label"] == 1
    csv_refs = tmp_path / "refs.csv"
    csv_refs.write_text("path,reference,label\na.jpg,This image is fake.,1\n")
    assert load_references(csv_refs)["a.jpg"]["reference"] == "This image is fake."
    records = [{"path": "a.jpg", "explanation": "This image is fake. The mouth region is blurred.", "p_fake": 0.8},
               {"path": "b.jpg", "explanation": "This image is fake. Odd eyes.", "p_fake": 0.3},
               {"path": "c.jpg", "explanation": None, "p_fake": None}]
    m = explanation_metrics(records, loaded, text_metrics=False)
    assert m["n"] == 3 and m["explained"] == 2 and m["with_reference"] == 2
    assert m["verdict"]["accuracy"] == 0.5 and m["agreement"]["agreement"] == 0.5
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"path": "a.jpg"}\n')
    with pytest.raises(UsageError, match="needs 'path' and 'reference'"):
        load_references(bad)


def test_rouge_and_bleu():
    pytest.importorskip("rouge_score")
    pytest.importorskip("sacrebleu")
    same = ["This image is fake. The mouth region is blurred."]
    assert rouge_l(same, same) == pytest.approx(1.0)
    assert bleu(same, same) == pytest.approx(100.0)
    assert 0.0 < rouge_l(["This image is fake. Blurred mouth."], same) < 1.0
    m = explanation_metrics([{"path": "a", "explanation": same[0], "p_fake": 0.9}], {"a": {"reference": same[0]}})
    assert m["rouge_l"] == pytest.approx(1.0) and m["bleu"] == pytest.approx(100.0)


def test_missing_library_is_one_line(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *a, **kw):
        if name in ("rouge_score", "sacrebleu"):
            raise ImportError(name)
        return real_import(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(UsageError, match="pip install rouge-score"):
        rouge_l(["a"], ["a"])
    with pytest.raises(UsageError, match="pip install sacrebleu"):
        bleu(["a"], ["a"])


def test_ddvqa_rows_json_array_and_several_references(tmp_path):
    ddvqa = tmp_path / "ddvqa.jsonl"
    ddvqa.write_text("\n".join(json.dumps(r) for r in [
        {"path": "a.jpg", "question": "Does the image look fake?", "answer": ["Yes, the mouth is blurred.", "It is fake."]},
        {"path": "a.jpg", "question": "Do the eyes look fake?", "answer": "The eyes differ in colour."},
        {"path": "b.jpg", "question": "Does the image look fake?", "answer": "No, it looks real.", "label": "real"},
    ]) + "\n")
    refs = load_references(ddvqa)
    assert refs["a.jpg"]["references"] == ["Yes, the mouth is blurred.", "It is fake.", "The eyes differ in colour."]
    assert refs["a.jpg"]["rows"] == 2 and len(refs["a.jpg"]["questions"]) == 2 and refs["b.jpg"]["label"] == "real"
    array = tmp_path / "lavis.json"  # LAVIS-style annotation file: a JSON array with "image"
    array.write_text(json.dumps([{"image": "c.png", "question": "Real or fake?", "answer": ["fake, blending seam"]}]))
    assert load_references(array)["c.png"]["reference"] == "fake, blending seam"
    csv_qa = tmp_path / "qa.csv"
    csv_qa.write_text("path,question,answer\nd.png,Is it fake?,\"Yes, the jaw is warped.\"\n")
    assert load_references(csv_qa)["d.png"]["references"] == ["Yes, the jaw is warped."]
    both = tmp_path / "both.jsonl"
    both.write_text('{"path": "a", "reference": "x", "label": 1}\n{"path": "a", "reference": "y", "label": 0}\n')
    with pytest.raises(UsageError, match="labelled both real and fake"):
        load_references(both)
    pytest.importorskip("rouge_score")
    pytest.importorskip("sacrebleu")
    # several references: ROUGE-L takes the best one; BLEU is sacrebleu's multi-reference BLEU
    assert rouge_l(["The eyes differ in colour."], [refs["a.jpg"]["references"]]) == pytest.approx(1.0)
    assert bleu(["The eyes differ in colour."], [refs["a.jpg"]["references"]]) == pytest.approx(100.0)


def test_match_references_by_path_then_unique_file_name(tmp_path, monkeypatch):
    data = tmp_path / "data"
    for rel in ("real/a.png", "fake/b.png", "x/dup.png", "y/dup.png"):
        (data / rel).parent.mkdir(parents=True, exist_ok=True)
        (data / rel).write_bytes(b"")
    items = [str((data / rel).resolve()) for rel in ("real/a.png", "fake/b.png", "x/dup.png", "y/dup.png")]
    refs = {"real/a.png": {"reference": "r1"},              # relative to the references file's folder (data/)
            str(data / "fake" / "b.png"): {"reference": "r2"},  # absolute
            "/other/place/b.png": {"reference": "r3", "label": "fake"},  # same file name: a fallback, merged
            "dup.png": {"reference": "r4"},                  # two items have this name: ambiguous
            "nowhere.png": {"reference": "r5"}}
    matched, report = match_references(refs, items, base=data)
    assert matched[items[0]]["references"] == ["r1"] and matched[items[0]]["matched_by"] == "path"
    assert matched[items[1]]["references"] == ["r2", "r3"] and matched[items[1]]["label"] == "fake"
    assert (report["matched_by_path"], report["matched_by_file_name"], report["unmatched"],
            report["ambiguous_file_name"], report["items_with_reference"]) == (2, 1, 1, 1, 2)
    assert report["unmatched_examples"] == ["nowhere.png"] and report["ambiguous_examples"] == ["dup.png"]
    monkeypatch.chdir(tmp_path)  # relative to the working directory when not to the file's folder
    matched, report = match_references({"data/real/a.png": {"reference": "r"}}, items, base=tmp_path / "elsewhere")
    assert report["matched_by_path"] == 1 and items[0] in matched


def test_bootstrap_explanation_metrics_hand_computed():
    pytest.importorskip("rouge_score")
    pytest.importorskip("sacrebleu")
    texts = ["This image is fake. The mouth is blurred.", "This image is real. Natural skin.",
             "Nothing to say.", "This image is real. Fine."]
    labels = [1, 0, 0, 1]
    refs = [["This image is fake. The mouth is blurred."], "This image is real. Natural skin.", None, None]
    res = bootstrap_explanation_metrics(texts, labels, [0.9, 0.7, 0.2, None], refs, n=0)
    assert (res["n"], res["n_real"], res["n_fake"], res["no_verdict"], res["n_with_reference"]) == (4, 2, 2, 1, 2)
    assert res["verdict_accuracy"] == {"value": 0.5, "ci": None}  # items 0 and 1 right; no verdict counts wrong
    # fake class: TP 1 (item 0), FN 1 (item 3 called real), FP 1 (item 2, a real left without a verdict)
    assert res["verdict_f1"]["value"] == pytest.approx(2 / 4)
    assert res["agreement"]["value"] == pytest.approx(1 / 3)  # item 3 has no p_fake; items 1, 2 disagree
    assert res["rouge_l"]["value"] == pytest.approx(1.0) and res["bleu"]["value"] == pytest.approx(100.0)
    groups = ["v1", "v2", "v2", "v1"]  # whole groups are resampled (one label per group, as videos have)
    a = bootstrap_explanation_metrics(texts, labels, [0.9, 0.7, 0.2, None], refs, groups=groups, n=200, seed=3)
    assert a == bootstrap_explanation_metrics(texts, labels, [0.9, 0.7, 0.2, None], refs, groups=groups, n=200, seed=3)
    for key in ("verdict_accuracy", "verdict_f1", "agreement", "rouge_l", "bleu"):
        lo, hi = a[key]["ci"]
        assert lo <= a[key]["value"] <= hi, key
    assert bootstrap_explanation_metrics(texts, labels, [0.9] * 4, None, n=10)["rouge_l"] is None


def test_bleu_statistics_match_corpus_bleu():
    pytest.importorskip("sacrebleu")
    import numpy as np

    preds = ["the mouth is blurred and the eyes differ", "natural skin texture", "a seam at the jaw line"]
    refs = [["the mouth looks blurred", "eyes differ"], "the skin texture is natural", ["there is a seam along the jaw"]]
    stats = BleuStats(preds, refs)
    assert stats.score() == pytest.approx(bleu(preds, refs))
    idx = np.array([0, 0, 2])
    assert stats.score(idx) == pytest.approx(bleu([preds[i] for i in idx], [refs[i] for i in idx]))
