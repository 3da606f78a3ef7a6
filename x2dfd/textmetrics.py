"""Explanation metrics for ``x2dfd evaluate --references FILE``: how good is the text, and does it agree with p_fake?

    refs = load_references("refs.jsonl")                    # path -> {"reference": str, "references": [str], "label"}
    explanation_metrics(records, refs)                      # {"n", "rouge_l", "bleu", "verdict", "agreement", ...}
    matched, report = match_references(refs, item_paths, base="refs.jsonl's folder")   # DATA path -> entry
    bootstrap_explanation_metrics(texts, labels, p_fakes, references, groups=...)      # values with intervals

References file: CSV or JSON lines (or a JSON array) with ``path`` (or ``image``), the reference text in
``reference`` (or ``answer``: DD-VQA-style ``{"path", "question", "answer"}`` rows; an answer may be a list
of texts) and optionally ``label``. Several rows (or answers) for one path are several references: ROUGE-L
takes the best-matching one, BLEU uses them all (sacrebleu's multi-reference BLEU).

**Caveat (label leak).** DD-VQA's reference answers come from prompts that contain the true label, so its
references state the label ("... looks fake because ..."): ROUGE-L / BLEU against them reward a text for echoing
the right verdict words as much as for its reasoning. Read them next to the verdict accuracy, and compare systems
at similar accuracy.

* ROUGE-L (F-measure, mean over inputs, the best of an input's references; Google's ``rouge-score`` with its Porter stemmer, as FakeVLM /
  DD-VQA-style explanation benchmarks report it) and corpus BLEU (``sacrebleu``'s default 13a tokenizer,
  0-100). Both libraries are optional: asking for a metric without its library is one line naming the
  package to install.
* verdict accuracy: the verdict parsed from the text (:func:`parse_verdict`) against the true label; verdict F1:
  F1 of the fake class, a text stating no verdict counted as the wrong verdict (a fake -> missed, a real -> false
  alarm), so that silence is never rewarded;
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


RefText = str | list[str] | tuple[str, ...]  # one reference, or several for one prediction


def _refs(r: RefText) -> list[str]:
    return [r] if isinstance(r, str) else [x for x in r if isinstance(x, str)]


def _rouge_scorer():
    try:
        from rouge_score import rouge_scorer
    except ImportError:
        raise UsageError("ROUGE-L needs the rouge-score package: pip install rouge-score "
                         "(or x2dfd's 'metrics' extra)") from None
    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l_scores(predictions: list[str], references: list[RefText]) -> list[float]:
    """ROUGE-L F-measure of each prediction (rouge-score, Porter stemming), the best over its references."""
    scorer = _rouge_scorer()
    return [max((scorer.score(r, p)["rougeL"].fmeasure for r in _refs(refs)), default=0.0)
            for p, refs in zip(predictions, references)]


def rouge_l(predictions: list[str], references: list[RefText]) -> float:
    """Mean ROUGE-L F-measure (rouge-score, Porter stemming; several references: the best one)."""
    if not predictions:
        _rouge_scorer()
        return float("nan")
    scores = rouge_l_scores(predictions, references)
    return sum(scores) / len(scores)


def _sacrebleu():
    try:
        import sacrebleu
    except ImportError:
        raise UsageError("BLEU needs the sacrebleu package: pip install sacrebleu (or x2dfd's 'metrics' extra)") from None
    return sacrebleu


def _reference_streams(references: list[RefText]) -> list[list[str | None]]:
    """sacrebleu's layout: one stream per reference slot, None where a prediction has fewer references."""
    lists = [_refs(r) for r in references]
    width = max((len(x) for x in lists), default=1)
    return [[x[k] if k < len(x) else None for x in lists] for k in range(width)]


def bleu(predictions: list[str], references: list[RefText]) -> float:
    """Corpus BLEU, 0-100 (sacrebleu defaults: 13a tokenizer, exp smoothing); several references per prediction
    are allowed (multi-reference BLEU)."""
    sacrebleu = _sacrebleu()
    if not predictions:
        return float("nan")
    return float(sacrebleu.corpus_bleu(predictions, _reference_streams(references)).score)


class BleuStats:
    """Per-prediction BLEU sufficient statistics (n-gram matches and totals, lengths), so that corpus BLEU of any
    resample is a sum and one formula (what sacrebleu's own paired bootstrap does) instead of re-tokenizing."""

    def __init__(self, predictions: list[str], references: list[RefText]):
        import numpy as np

        sacrebleu = _sacrebleu()
        self.metric = sacrebleu.metrics.BLEU()
        self.predictions, self.references = predictions, references
        try:
            stats = self.metric._extract_corpus_statistics(predictions, _reference_streams(references))
            self.stats = np.asarray(stats, dtype=np.int64)
            self.exact = True
        except (AttributeError, TypeError):  # pragma: no cover - a sacrebleu without the statistics hook
            self.stats, self.exact = None, False

    def score(self, idx=None) -> float:
        """Corpus BLEU of the predictions at ``idx`` (all by default; repeats count again)."""
        import numpy as np

        if idx is None:
            idx = np.arange(len(self.predictions))
        if len(idx) == 0:
            return float("nan")
        if self.exact:
            return float(self.metric._compute_score_from_stats(self.stats[idx].sum(axis=0)).score)
        return bleu([self.predictions[i] for i in idx], [self.references[i] for i in idx])  # pragma: no cover


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


REFERENCE_KEYS = ("reference", "answer")  # DD-VQA-style rows: the answer is the reference
PATH_KEYS = ("path", "image", "file")


def _read_rows(path: Path, text: str) -> list[Any]:
    if path.suffix.lower() in (".jsonl", ".json"):
        stripped = text.lstrip()
        if path.suffix.lower() == ".json" and stripped.startswith("["):  # a JSON array of rows (LAVIS-style files)
            try:
                rows = json.loads(stripped)
            except ValueError as err:
                raise UsageError(f"references '{path}': not JSON ({err})") from None
            return rows
        rows = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except ValueError as err:
                    raise UsageError(f"references '{path}' line {n}: not JSON ({err})") from None
        return rows
    return list(csv.DictReader(text.splitlines()))


def load_references(path: str | Path) -> dict[str, dict[str, Any]]:
    """A CSV or JSON lines file (or a JSON array) of ``path`` (or ``image``), ``reference`` (or ``answer``, DD-VQA
    style, text or list of texts), optional ``label`` and ``question`` -> path as written -> entry
    ``{"reference": first text, "references": [texts], "label", "questions": [...], "rows": n}``. Rows sharing a
    path add references."""
    path = Path(path).expanduser()
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as err:
        raise UsageError(f"cannot read references '{path}': {err.strerror or err}") from err
    except UnicodeDecodeError as err:
        raise UsageError(f"references '{path}' is not UTF-8 text ({err.reason})") from None
    rows = _read_rows(path, text)
    if not isinstance(rows, list):
        raise UsageError(f"references '{path}': expected rows (JSON lines, a JSON array or a CSV)")
    out: dict[str, dict[str, Any]] = {}
    for n, row in enumerate(rows, 1):
        key = next((k for k in PATH_KEYS if isinstance(row, dict) and row.get(k)), None)
        ref_key = next((k for k in REFERENCE_KEYS if isinstance(row, dict) and row.get(k) is not None), None)
        texts = _refs(row[ref_key]) if ref_key else []
        texts = [t for t in texts if t.strip()]
        if key is None or not texts:
            raise UsageError(f"references '{path}' entry {n}: needs 'path' and 'reference' (text) - or DD-VQA-style "
                             "'path', 'question' and 'answer'")
        entry = out.setdefault(str(row[key]), {"reference": texts[0], "references": [], "label": None,
                                               "questions": [], "rows": 0})
        entry["references"] += [t for t in texts if t not in entry["references"]]
        entry["rows"] += 1
        if row.get("question"):
            entry["questions"].append(str(row["question"]))
        label = row.get("label")
        if label not in (None, ""):
            name = _label_name(label)
            if entry["label"] is not None and _label_name(entry["label"]) != name:
                raise UsageError(f"references '{path}' entry {n}: '{row[key]}' is labelled both real and fake")
            entry["label"] = label
    if not out:
        raise UsageError(f"references '{path}' has no rows")
    return out


def match_references(references: Mapping[str, Mapping[str, Any]], paths: Iterable[str],
                     base: str | Path | None = None) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Match reference rows to DATA's item paths: by resolved path (a relative path against ``base``, the
    references file's folder, then the working directory), else by file name when exactly one item has it.

    Returns (item path -> merged entry, report): the report counts rows matched by path, by file name (a
    fallback: check it), unmatched and ambiguous ones, with a few examples."""
    items = list(dict.fromkeys(str(p) for p in paths))
    by_resolved = {str(Path(p).resolve()): p for p in items}
    by_name: dict[str, list[str]] = {}
    for p in items:
        by_name.setdefault(Path(p).name, []).append(p)
    bases = [Path(base).expanduser() if base is not None else None, Path.cwd()]
    matched: dict[str, dict[str, Any]] = {}
    how = {"path": 0, "file_name": 0}
    unmatched: list[str] = []
    ambiguous: list[str] = []
    for key, entry in references.items():
        raw = Path(key).expanduser()
        candidates = [raw] if raw.is_absolute() else [b / raw for b in bases if b is not None]
        target = next((by_resolved[str(c.resolve())] for c in candidates if str(c.resolve()) in by_resolved), None)
        kind = "path"
        if target is None:
            named = by_name.get(raw.name, [])
            if len(named) == 1:
                target, kind = named[0], "file_name"
            elif len(named) > 1:
                ambiguous.append(key)
                continue
        if target is None:
            unmatched.append(key)
            continue
        how[kind] += 1
        have = matched.setdefault(target, {"reference": entry["reference"], "references": [], "label": None,
                                           "questions": [], "matched_by": kind})
        have["references"] += [t for t in entry.get("references") or [entry["reference"]] if t not in have["references"]]
        have["questions"] += list(entry.get("questions") or [])
        if entry.get("label") not in (None, ""):
            have["label"] = entry["label"]
    report = {"entries": len(references), "matched_by_path": how["path"], "matched_by_file_name": how["file_name"],
              "unmatched": len(unmatched), "ambiguous_file_name": len(ambiguous), "items_with_reference": len(matched),
              "unmatched_examples": unmatched[:5], "ambiguous_examples": ambiguous[:5]}
    return matched, report


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
    paired = [(r["explanation"], references[r["path"]].get("references") or references[r["path"]]["reference"])
              for r in recs if r.get("explanation") and r.get("path") in references]
    out["with_reference"] = len(paired)
    if text_metrics and paired:
        preds, refs = [p for p, _ in paired], [r for _, r in paired]
        out["rouge_l"] = rouge_l(preds, refs)
        out["bleu"] = bleu(preds, refs)
    labels = [(references.get(r.get("path"), {}) or {}).get("label", r.get("label_true")) for r in recs]
    out["verdict"] = verdict_accuracy(texts, labels)
    out["agreement"] = agreement(texts, [r.get("p_fake") for r in recs], threshold)
    return out


# --------------------------------------------------------------------------------------- with intervals
def bootstrap_explanation_metrics(texts: list[str], labels: list[int], p_fakes: list[float | None],
                                  references: list[RefText | None] | None = None, groups: list[Any] | None = None,
                                  threshold: float = 0.5, n: int = 1000, seed: int = 0,
                                  alpha: float = 0.05) -> dict[str, Any]:
    """Explanation metrics of one system with percentile bootstrap intervals.

    One entry per explained input: its text, true label (0 real / 1 fake), p_fake and references (None: none).
    ``groups`` (e.g. the video of each input): whole groups are resampled; resampling is stratified by class.
    Returns ``{"n", "n_real", "n_fake", "no_verdict", "n_with_reference", "verdict_accuracy", "verdict_f1",
    "agreement", "rouge_l", "bleu"}``, each metric ``{"value", "ci"}`` (``ci`` None without resamples) or None
    when undefined (no reference: no ROUGE-L / BLEU). BLEU is corpus BLEU (0-100) of each resample."""
    import numpy as np

    m = len(texts)
    references = list(references) if references is not None else [None] * m
    if not (len(labels) == len(p_fakes) == len(references) == m):
        raise ValueError("texts, labels, p_fakes and references must have one entry per input")
    verdicts = [parse_verdict(t) for t in texts]
    y = np.asarray(labels, dtype=int)
    said_fake = np.array([v == "fake" for v in verdicts])
    said_real = np.array([v == "real" for v in verdicts])
    correct = np.where(y == 1, said_fake, said_real).astype(float)
    tp = ((y == 1) & said_fake).astype(float)
    fn = ((y == 1) & ~said_fake).astype(float)  # a fake called real, or left without a verdict
    fp = ((y == 0) & ~said_real).astype(float)  # a real called fake, or left without a verdict
    agree = np.array([np.nan if p is None or not t else float(v == ("fake" if p >= threshold else "real"))
                      for t, v, p in zip(texts, verdicts, p_fakes)])
    has_ref = np.array([r is not None and bool(_refs(r)) for r in references])
    rouge = np.full(m, np.nan)
    bleu_stats = None
    ref_idx = np.flatnonzero(has_ref)
    if len(ref_idx):
        preds = [texts[i] or "" for i in ref_idx]
        refs = [references[i] for i in ref_idx]
        rouge[ref_idx] = rouge_l_scores(preds, refs)
        bleu_stats = BleuStats(preds, refs)
    position = np.full(m, -1)
    position[ref_idx] = np.arange(len(ref_idx))

    def stats(idx) -> dict[str, float]:
        out = {"verdict_accuracy": float(correct[idx].mean()) if len(idx) else np.nan}
        denom = 2 * tp[idx].sum() + fp[idx].sum() + fn[idx].sum()
        out["verdict_f1"] = float(2 * tp[idx].sum() / denom) if denom else np.nan
        a = agree[idx]
        out["agreement"] = float(np.nanmean(a)) if np.isfinite(a).any() else np.nan
        if bleu_stats is not None:
            r = rouge[idx]
            out["rouge_l"] = float(np.nanmean(r)) if np.isfinite(r).any() else np.nan
            pos = position[idx]
            out["bleu"] = bleu_stats.score(pos[pos >= 0])
        return out

    point = stats(np.arange(m))
    samples: dict[str, list[float]] = {k: [] for k in point}
    if n > 0 and m:
        keys = list(groups) if groups is not None else list(range(m))
        rng = np.random.default_rng(seed)
        clusters = []
        for label in (1, 0):
            members: dict[Any, list[int]] = {}
            for i, (k, yy) in enumerate(zip(keys, y)):
                if yy == label:
                    members.setdefault(k, []).append(i)
            clusters.append([np.asarray(v) for v in members.values()])
        for _ in range(n):
            parts = [c[j] for c in clusters if c for j in rng.integers(0, len(c), len(c))]
            for k, v in stats(np.concatenate(parts)).items():
                samples[k].append(v)

    def block(name: str) -> dict[str, Any] | None:
        v = point.get(name)
        if v is None or not np.isfinite(v):
            return None
        vals = np.asarray(samples.get(name) or [], dtype=float)
        vals = vals[np.isfinite(vals)]
        ci = None
        if len(vals):
            lo, hi = np.quantile(vals, [alpha / 2, 1 - alpha / 2])
            ci = [round(float(lo), 6), round(float(hi), 6)]
        return {"value": round(float(v), 6), "ci": ci}

    return {"n": m, "n_real": int((y == 0).sum()), "n_fake": int((y == 1).sum()),
            "no_verdict": int(sum(v is None for v in verdicts)), "n_with_reference": int(has_ref.sum()),
            **{name: block(name) for name in ("verdict_accuracy", "verdict_f1", "agreement", "rouge_l", "bleu")}}
