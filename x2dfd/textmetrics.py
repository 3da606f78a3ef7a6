"""Explanation metrics for ``x2dfd evaluate --references FILE``: how good is the text, and does it agree with p_fake?

    refs = load_references("refs.jsonl")                    # path -> {"reference": str, "label": 0/1 or None}
    explanation_metrics(records, refs)                      # {"n", "rouge_l", "bleu", "verdict_accuracy", "agreement", ...}

* ROUGE-L (F-measure, mean over inputs; Google's ``rouge-score`` with its Porter stemmer, as FakeVLM /
  DD-VQA-style explanation benchmarks report it) and corpus BLEU (``sacrebleu``'s default 13a tokenizer,
  0-100). Both libraries are optional: asking for a metric without its library is one line naming the
  package to install.
* verdict accuracy: the verdict parsed from the text (:func:`parse_verdict`) against the true label;
* text-vs-p_fake agreement: the parsed verdict against ``p_fake >= threshold`` (an explanation that says
  "real" while the logits say fake is a self-contradiction worth counting); texts with no verdict count
  as disagreeing and are also reported on their own (``no_verdict``).
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from x2dfd.errors import UsageError

FAKE_WORDS = ("fake", "forged", "manipulated", "synthetic", "generated", "deepfake", "altered", "tampered")
REAL_WORDS = ("real", "authentic", "genuine", "unaltered", "pristine")
# "This image is fake", "this is a real image", "the face looks manipulated", ... ; "not fake" flips
_VERDICT = re.compile(r"\b(not\s+|n't\s+)?(?:an?\s+)?(" + "|".join(FAKE_WORDS + REAL_WORDS) + r")\b", re.IGNORECASE)
_QUESTION_ECHO = re.compile(r"\breal\s+or\s+(?:fake|forged|synthetic)\b|\bfake\s+or\s+real\b", re.IGNORECASE)


def parse_verdict(text: str | None) -> str | None:
    """``"real"``, ``"fake"`` or None: the first verdict word in the text (an echoed "real or fake" is skipped;
    "not fake" reads as real, "not real" as fake)."""
    if not text:
        return None
    text = _QUESTION_ECHO.sub(" ", text)
    m = _VERDICT.search(text)
    if m is None:
        return None
    fake = m.group(2).lower() in FAKE_WORDS
    if m.group(1):
        fake = not fake
    return "fake" if fake else "real"


def _label_name(label: Any) -> str | None:
    if label is None or label == "":
        return None
    s = str(label).strip().lower()
    if s in ("1", "fake", "1.0", "true"):
        return "fake"
    if s in ("0", "real", "0.0", "false"):
        return "real"
    raise UsageError(f"label {label!r} is neither 0/1 nor real/fake")


def rouge_l(predictions: list[str], references: list[str]) -> float:
    """Mean ROUGE-L F-measure (rouge-score, Porter stemming)."""
    try:
        from rouge_score import rouge_scorer
    except ImportError:
        raise UsageError("ROUGE-L needs the rouge-score package: pip install rouge-score") from None
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    if not predictions:
        return float("nan")
    return sum(scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(predictions, references)) / len(predictions)


def bleu(predictions: list[str], references: list[str]) -> float:
    """Corpus BLEU, 0-100 (sacrebleu defaults: 13a tokenizer, exp smoothing), one reference per prediction."""
    try:
        import sacrebleu
    except ImportError:
        raise UsageError("BLEU needs the sacrebleu package: pip install sacrebleu") from None
    if not predictions:
        return float("nan")
    return float(sacrebleu.corpus_bleu(predictions, [references]).score)


def verdict_accuracy(texts: list[str | None], labels: list[Any]) -> dict[str, Any]:
    """Accuracy of the verdict parsed from each text against its label (0/1 or real/fake); no verdict = wrong."""
    pairs = [(parse_verdict(t), _label_name(y)) for t, y in zip(texts, labels)]
    pairs = [(v, y) for v, y in pairs if y is not None]
    n = len(pairs)
    return {"n": n, "accuracy": (sum(v == y for v, y in pairs) / n) if n else float("nan"),
            "no_verdict": sum(v is None for v, _ in pairs)}


def agreement(texts: list[str | None], p_fakes: list[float | None], threshold: float = 0.5) -> dict[str, Any]:
    """How often the text's verdict is the logits' verdict (p_fake >= threshold is fake); no verdict = disagree."""
    pairs = [(parse_verdict(t), "fake" if p >= threshold else "real") for t, p in zip(texts, p_fakes)
             if p is not None and t]
    n = len(pairs)
    return {"n": n, "agreement": (sum(v == w for v, w in pairs) / n) if n else float("nan"),
            "no_verdict": sum(v is None for v, _ in pairs)}


def load_references(path: str | Path) -> dict[str, dict[str, Any]]:
    """A CSV (``path,reference[,label]``) or JSON lines (``{"path", "reference", "label"?}``) file -> path -> entry."""
    path = Path(path).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise UsageError(f"cannot read references '{path}': {err.strerror or err}") from err
    rows: list[dict[str, Any]] = []
    if path.suffix.lower() in (".jsonl", ".json"):
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except ValueError as err:
                    raise UsageError(f"references '{path}' line {n}: not JSON ({err})") from None
    else:
        rows = list(csv.DictReader(text.splitlines()))
    out = {}
    for n, row in enumerate(rows, 1):
        if not isinstance(row, dict) or not row.get("path") or not isinstance(row.get("reference"), str):
            raise UsageError(f"references '{path}' entry {n}: needs 'path' and 'reference' (text)")
        out[str(row["path"])] = {"reference": row["reference"], "label": row.get("label")}
    return out


def explanation_metrics(records: Iterable[Any], references: Mapping[str, Mapping[str, Any]] | None = None,
                        threshold: float = 0.5, text_metrics: bool = True) -> dict[str, Any]:
    """Metrics over records (``x2dfd.Record`` or dicts with path, explanation, p_fake[, label_true]).

    ROUGE-L and BLEU over the records that have a reference and an explanation (``text_metrics=False`` skips
    them, needing neither library); verdict accuracy against the reference file's label, else the record's
    ``label_true``; agreement between each text and its own p_fake."""
    references = references or {}
    recs = [r if isinstance(r, Mapping) else r.to_dict() for r in records]
    texts = [r.get("explanation") for r in recs]
    out: dict[str, Any] = {"n": len(recs), "explained": sum(1 for t in texts if t)}
    paired = [(r["explanation"], references[r["path"]]["reference"]) for r in recs
              if r.get("explanation") and r.get("path") in references]
    out["with_reference"] = len(paired)
    if text_metrics and paired:
        preds, refs = [p for p, _ in paired], [r for _, r in paired]
        out["rouge_l"] = rouge_l(preds, refs)
        out["bleu"] = bleu(preds, refs)
    labels = [(references.get(r.get("path"), {}) or {}).get("label", r.get("label_true")) for r in recs]
    out["verdict"] = verdict_accuracy(texts, labels)
    out["agreement"] = agreement(texts, [r.get("p_fake") for r in recs], threshold)
    return out
