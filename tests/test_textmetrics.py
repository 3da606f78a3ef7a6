"""Explanation metrics (x2dfd.textmetrics): verdict parsing, accuracy, text-vs-p_fake agreement, ROUGE-L / BLEU."""

from __future__ import annotations

import json
import math

import pytest

from x2dfd.errors import UsageError
from x2dfd.textmetrics import agreement, bleu, explanation_metrics, load_references, parse_verdict, rouge_l, verdict_accuracy


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
