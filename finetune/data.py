"""Training data of ``x2dfd finetune``: labelled faces + a cue ranking + expert scores -> chat samples on disk.

    x2dfd finetune data/ --ranking mfa/ranking.json --build-data-only --out run/   # writes run/data/, stops
    info = DataBuilder(cfg, load_experts=lambda: experts, get_mllm=load_base).build("run/data")
    train, held_out, info = load_training_data("run/data")                        # datasets.Dataset each

Inputs: DATA (and --eval-data) through ``x2dfd.dataset.load_labelled`` (folders, manifests, DeepfakeBench
and X2-DFD JSONs), then ``sample_frames``: at most ``--frames-per-video`` frames per video (seeded, even
spread) and every video file as frame rows, each decoded by ``load_row_image`` (explain's video path);
a frame's ``sha256`` is ``row_sha256`` (file hash + frame index). Held out: --eval-data, or another
split of DATA's DeepfakeBench JSON (``--split train --eval-split val``), else ``--eval-fraction`` of
DATA split by video.

Per face (cropped as ``x2dfd explain`` crops it):

* question: ``prompts/explain.jinja`` with the experts' scores in X2-DFD's wording ("the blending score
  is 0.873", "N/A" when an expert could not run): the exact question ``x2dfd explain`` asks.
* answer (``prompts/answer.jinja``): "This image is fake." / "This image is real.", then the cues of
  the top-K of the ranking (Strong Feature Strengthening) that THIS face's base-model evidence
  supports: a cue is stated only where the base MLLM's P(yes) on this face (from the assess scores,
  else scored here) is on the label's side of the cue's decision threshold from the ranking (fake:
  P(yes) above it, stated present; real: below it, stated absent), most decisive first, at most
  ``--cues-per-answer``. A face where no cue is supported gets no cue sentence (counted in
  ``data.json``). With ``--cue-order rank`` no face is scored, every answer states the ranking's top
  cues and ``data.json`` says the answers are not grounded. Then a rationale the base MLLM writes
  (on by default, ``--no-rationale``; its cost per face is in ``data.json``); then, only when the
  expert agrees by X2-DFD's margin (fake: score >= 0.70, real: score <= 0.30), a sentence on its
  score (Weak Feature Supplementing).

Label conditioning of the rationale: the base MLLM is TOLD the label (and the supported cues) and asked
why the face is real/fake, as X2-DFD builds its answers. It therefore writes reasons for a verdict it
was given, and can state things it would not find unprompted (a seam it cannot see, on a fake); the
fine-tuned model learns to produce such text too. Only the cue sentence is checked against the base
model's own evidence; the rationale is not. ``--no-rationale`` trains on checked sentences only.

``--top-k 0`` is Weak Feature Supplementing alone: no cue sentence in any answer, no ranking needed (a
``--ranking`` given is ignored with a one-line note: not read, copied or fingerprinted, since no answer
depends on it), no cue scored; answers are the verdict, the rationale (asked given the label and no cues)
and the expert sentence where the expert agrees. ``data.json`` says so (``weak_only``, ``ranking``: null,
``cues``: []). With ``--no-expert`` too it is plain verdict fine-tuning, built with a one-line note.

Uninformative cues (ranking flag ``uninformative``: the bootstrap CI of the cue's AUC holds 0.5) among
the top-K are refused by default (one line naming them, by count); ``--allow-uninformative`` trains on
them with a one-line warning, recorded in ``data.json`` and the model card.

The folder holds ``train.jsonl`` and ``eval.jsonl`` (one sample per line: image, label, question,
answer, cues (the stated ones), cue_p_yes, grounded, rationale, experts, path, frame (of a video
file, else null), sha256, video_id, source), ``images/`` (the face crops the samples point to), ``ranking.json`` (a copy of the ranking it
was built from), ``data.json`` (class balance, dropped faces, what the data was built from, the cue
thresholds, what the answers are made of) and ``scores.jsonl`` (cue scores computed here, a resume
cache). Edit the JSONL files freely before training with ``--data-dir``: ``load_training_data``
checks every line.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from x2dfd.cropcheck import CropWarner
from x2dfd.prompts import ANSWER_PREFIX, VERDICT_WORDS, format_expert_score, render_template, template_version
from x2dfd.errors import UsageError, X2DFDError
from x2dfd.media import file_sha256
from x2dfd.pipeline import QUESTION_TEMPLATE
from x2dfd.records import one_line, read_jsonl_text

ANSWER_TEMPLATE = "answer.jinja"
RATIONALE_TEMPLATE = "rationale.jinja"
# The rationale's label conditioning, keyed by weak_only (--top-k 0): data.json's rationale.caveat ("written by the
# base MLLM " + it) and the model card's Rationales sentence ("were written by the base model " + it).
RATIONALE_CAVEAT = {
    False: ("GIVEN the label and the stated cues: a rationale can state things the model would not find unprompted, "
            "and unlike the cue sentence it is not checked against the model's own evidence"),
    True: ("GIVEN the label (and no cue: --top-k 0): a rationale can state things the model would not find "
           "unprompted, and nothing checks it against the model's own evidence"),
}
LABEL_NAMES = ("real", "fake")
# X2-DFD's Weak Feature Supplementing states the expert's evidence only where it clearly agrees with
# the label: a fake scored >= 0.70 or a real scored <= 0.30 by the expert.
EXPERT_FAKE_MIN = 0.70
EXPERT_REAL_MAX = 0.30
SPLIT_FILES = {"train": "train.jsonl", "eval": "eval.jsonl"}
INFO_FILE = "data.json"
RANKING_FILE = "ranking.json"
IMAGES_DIR = "images"
UNINFORMATIVE = "uninformative"
# A ranking written before thresholds were stored, with no assess scores beside it: the cut X2-DFD's MFA
# scores cues at (P(yes) = 0.5, "yes" = fake).
FALLBACK_THRESHOLD = 0.5
FALLBACK_SOURCE = "0.5 (no threshold in the ranking, no assess scores)"
REQUIRED_COLUMNS = ("image", "label", "question", "answer")
LOADED_COLUMNS = (*REQUIRED_COLUMNS, "path", "sha256", "video_id", "source")


# ------------------------------------------------------------------------------------------------ ranking
def load_ranking(path: str | Path) -> tuple[dict[str, Any], Path]:
    """``(ranking, path of ranking.json)`` from the file or the ``x2dfd assess`` output folder holding it."""
    path = Path(path).expanduser()
    if path.is_dir():
        path = path / "ranking.json"
    if not path.is_file():
        raise UsageError(f"--ranking '{path}' does not exist (run `x2dfd assess DATA --out DIR` and pass DIR/ranking.json)")
    try:
        ranking = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise UsageError(f"--ranking '{path}' is not valid JSON (line {err.lineno}: {err.msg})") from None
    if not isinstance(ranking, dict) or not isinstance(ranking.get("cues"), list) or not ranking["cues"]:
        raise UsageError(f"--ranking '{path}' has no 'cues' list: pass the ranking.json written by `x2dfd assess`")
    return ranking, path


def strong_cues(ranking: dict[str, Any], top_k: int) -> list[dict[str, Any]]:
    """The ``top_k`` best-ranked cues whose "yes" points to fakes (``inverted`` and ``constant`` ones are skipped:
    their present/absent wording would state the wrong evidence, or none)."""
    rows = sorted(ranking["cues"], key=lambda r: r.get("rank", 0))
    keep = [r for r in rows if not {"inverted", "constant"} & set(r.get("flags", ()))]
    for r in keep:
        missing = [k for k in ("id", "question", "present", "absent") if not r.get(k)]
        if missing:
            raise UsageError(f"--ranking: cue '{r.get('id', '?')}' lacks {', '.join(missing)} (re-run `x2dfd assess`)")
    if not keep:
        raise UsageError("--ranking: every cue is flagged inverted or constant, so none can be stated as evidence; "
                         "assess more faces or a different cue bank (or --top-k 0: train on the expert's evidence "
                         "alone, no cue in any answer)")
    return keep[:top_k]


def uninformative_cues(cues: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The cues the ranking flags ``uninformative`` (the bootstrap CI of their AUC holds 0.5)."""
    return [c for c in cues if UNINFORMATIVE in (c.get("flags") or ())]


def uninformative_message(cues: Sequence[dict[str, Any]]) -> str | None:
    """``3 of the top-5 cues are uninformative (AUC CI covers 0.5): a (AUC 0.58, CI 0.41-0.74), ...`` or None."""
    bad = uninformative_cues(cues)
    if not bad:
        return None

    def one(c):
        ci = c.get("auc_ci") or [None, None]
        return (f"{c['id']} (AUC {c['auc']:.2f}, CI {ci[0]:.2f}-{ci[1]:.2f})"
                if isinstance(c.get("auc"), (int, float)) and None not in ci else c["id"])

    return (f"{len(bad)} of the top-{len(cues)} cues are uninformative (AUC CI covers 0.5): "
            f"{', '.join(one(c) for c in bad)}")


def check_cues(ranking: dict[str, Any], cfg) -> list[dict[str, Any]]:
    """The top-K strong cues of ``cfg``, refusing (one line, by count) uninformative ones unless
    ``cfg.allow_uninformative``: what ``DataBuilder`` checks first; callable before any model is loaded. ``--top-k 0``:
    no cue (the ranking is not looked at)."""
    if cfg.top_k == 0:
        return []
    cues = strong_cues(ranking, cfg.top_k)
    message = uninformative_message(cues)
    if message and not getattr(cfg, "allow_uninformative", False):
        raise UsageError(f"{message}; answers would state cues the base model does not tell apart from chance: "
                         "assess more faces (--per-class), lower --top-k, or pass --allow-uninformative to train on "
                         "them anyway")
    return cues


def cue_thresholds(cues: Sequence[dict[str, Any]], assess_scores: dict[str, Any] | None = None) -> dict[str, dict]:
    """Each cue's decision threshold on P(yes): ``{id: {"threshold", "source"}}``. From the ranking (its Youden
    cut), else computed the same way from the assess run's per-image scores beside it, else 0.5 (MFA's cut)."""
    from x2dfd.feature_assessment.ranking import youden_threshold

    out = {}
    for c in cues:
        thr = c.get("threshold")
        if isinstance(thr, (int, float)) and not isinstance(thr, bool):
            out[c["id"]] = {"threshold": float(thr), "source": "ranking"}
            continue
        pairs = [(e.label, e.p_yes[c["id"]]) for e in (assess_scores or {}).values()
                 if e.error is None and c["id"] in e.p_yes and e.label in (0, 1)]
        if {y for y, _ in pairs} == {0, 1}:
            thr, _ = youden_threshold([y for y, _ in pairs], [p for _, p in pairs])
            out[c["id"]] = {"threshold": round(thr, 6), "source": f"assess scores ({len(pairs)} faces)"}
        else:
            out[c["id"]] = {"threshold": FALLBACK_THRESHOLD, "source": FALLBACK_SOURCE}
    return out


def supports(label: int, p_yes: float, threshold: float) -> bool:
    """Whether a face's P(yes) backs its label: above the threshold for a fake, below it for a real."""
    return p_yes > threshold if label == 1 else p_yes < threshold


def grounded_cues(label: int, p_yes: dict[str, float], cues: Sequence[dict[str, Any]],
                  thresholds: dict[str, dict]) -> list[dict[str, Any]]:
    """The cues THIS face's base-model P(yes) supports (see ``supports``), farthest past the threshold first
    (ties: ranking order); a cue without a score for the face is not supported."""
    kept = []
    for i, c in enumerate(cues):
        p, thr = p_yes.get(c["id"]), thresholds[c["id"]]["threshold"]
        if p is not None and supports(label, p, thr):
            kept.append((-abs(p - thr), i, c))
    return [c for _, _, c in sorted(kept, key=lambda t: t[:2])]


# ------------------------------------------------------------------------------------------------ text
def expert_prompt_list(experts: Sequence) -> list[tuple[str, str]]:
    """``[(registry name, prompt name)]`` of loaded experts, in question order."""
    return [(e.name, e.prompt_name) for e in experts]


def render_question(experts: Sequence[tuple[str, str]], scores: dict[str, float | None]) -> str:
    """The explain question with the experts' scores, word for word what ``Explainer.question`` renders."""
    shown = [{"prompt_name": prompt, "score": format_expert_score(scores.get(name))} for name, prompt in experts]
    return render_template(QUESTION_TEMPLATE, experts=shown)


def supporting_experts(label: int, experts: Sequence[tuple[str, str]], scores: dict[str, float | None]) -> list[dict]:
    """The experts whose score agrees with the label by X2-DFD's margin (the answer then mentions them)."""
    out = []
    for name, prompt in experts:
        score = scores.get(name)
        if score is None:
            continue
        if (label == 1 and score >= EXPERT_FAKE_MIN) or (label == 0 and score <= EXPERT_REAL_MAX):
            out.append({"prompt_name": prompt, "score": format_expert_score(score)})
    return out


def cue_phrases(label: int, cues: Sequence[dict[str, Any]]) -> list[str]:
    """The cue bank's wording: ``present`` for a fake face, ``absent`` for a real one."""
    return [c["present"] if label == 1 else c["absent"] for c in cues]


def render_answer(label: int, phrases: Sequence[str], experts: Sequence[dict] = (), rationale: str | None = None) -> str:
    """The target answer; it starts with the answer prefix and the verdict word explain reads P(fake) from."""
    name = LABEL_NAMES[label]
    return render_template(ANSWER_TEMPLATE, prefix=ANSWER_PREFIX, verdict=VERDICT_WORDS[name], label=name,
                           cues=list(phrases), rationale=rationale or None, experts=list(experts))


def answer_head(label: int) -> str:
    """``This image is fake.``: what every answer of that label starts with."""
    return f"{ANSWER_PREFIX}{VERDICT_WORDS[LABEL_NAMES[label]]}."


def clean_rationale(text: str, max_sentences: int = 2) -> str | None:
    """The first complete sentences of a generated continuation (an unfinished last sentence is dropped)."""
    text = " ".join(text.split())
    if not text:
        return None
    sentences, start = [], 0
    for i, ch in enumerate(text):
        if ch in ".!?" and (i + 1 == len(text) or text[i + 1] == " "):
            sentences.append(text[start : i + 1].strip())
            start = i + 1
            if len(sentences) == max_sentences:
                break
    sentences = [s for s in sentences if len(s) > 1]
    return " ".join(sentences) or None


def generate_rationales(mllm, faces: list, labels: list[int], phrases: list[list[str]],
                        max_new_tokens: int) -> list[str | None]:
    """Ask the base MLLM, for each face, why it is real/fake given the cues (continuing "This image is <label>.")."""
    import torch

    prompts = []
    for label, ph in zip(labels, phrases):
        question = render_template(RATIONALE_TEMPLATE, label=LABEL_NAMES[label], cues=ph)
        prompts.append(mllm.build_prompt(question, answer_head(label)))
    inputs = mllm.encode(faces, prompts)
    with torch.inference_mode():
        out = mllm.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                                  pad_token_id=mllm.tokenizer.pad_token_id, **mllm.cache_options())
    new = out[:, inputs["input_ids"].shape[1]:]
    texts = mllm.tokenizer.batch_decode(new, skip_special_tokens=True)
    return [clean_rationale(t) for t in texts]


def answer_composition(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """What a split's answers are made of: distinct answers (and the most repeated one's count), cues stated per
    answer, answers with no cue, with a rationale, with an expert sentence; per label where it matters."""
    answers = [str(r.get("answer", "")) for r in rows]
    n_cues = [len(r.get("cues") or []) for r in rows]
    top = Counter(answers).most_common(1)
    out: dict[str, Any] = {
        "answers": len(rows), "distinct": len(set(answers)), "most_repeated": top[0][1] if top else 0,
        "cues_per_answer": {"mean": round(sum(n_cues) / len(n_cues), 4) if n_cues else None,
                            "min": min(n_cues, default=None), "max": max(n_cues, default=None)},
        "no_cue": {name: sum(1 for r, k in zip(rows, n_cues) if k == 0 and r.get("label") == y)
                   for y, name in enumerate(LABEL_NAMES)},
        "with_rationale": sum(1 for r in rows if r.get("rationale")),
        "with_expert_sentence": sum(1 for r in rows if r.get("expert_sentence")),
        "grounded": sum(1 for r in rows if r.get("grounded")),
    }
    out["by_label"] = {name: {"answers": sum(1 for r in rows if r.get("label") == y),
                              "distinct": len({a for r, a in zip(rows, answers) if r.get("label") == y})}
                       for y, name in enumerate(LABEL_NAMES)}
    return out


def composition_text(comp: dict[str, Any]) -> str:
    """One line: ``80 answers, 61 distinct (most repeated: 7x); cues per answer 1.9 (0-3); ...``."""
    c = comp["cues_per_answer"]
    per = "-" if c["mean"] is None else f"{c['mean']:.1f} ({c['min']}-{c['max']})"
    return (f"{comp['answers']} answers, {comp['distinct']} distinct (most repeated: {comp['most_repeated']}x); "
            f"cues per answer {per}; no supported cue: {comp['no_cue']['real']} real, {comp['no_cue']['fake']} fake; "
            f"with a rationale: {comp['with_rationale']}; with an expert sentence: {comp['with_expert_sentence']}")


# ------------------------------------------------------------------------------------------------ splits
def split_rows(rows: list[dict], eval_fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """A held-out split stratified by label, whole groups at a time (a video's frames never straddle the split)."""
    import numpy as np

    if eval_fraction <= 0:
        return list(rows), []
    rng = np.random.default_rng(seed)
    held: set[tuple[int, str]] = set()
    for label in (0, 1):
        groups = sorted({(label, r.get("video_id") or r["sha256"]) for r in rows if r["label"] == label})
        if len(groups) < 2:
            continue
        n = min(len(groups) - 1, max(1, round(eval_fraction * len(groups))))
        held.update(groups[i] for i in rng.permutation(len(groups))[:n])
    train = [r for r in rows if (r["label"], r.get("video_id") or r["sha256"]) not in held]
    return train, [r for r in rows if (r["label"], r.get("video_id") or r["sha256"]) in held]


def rebalance(rows: list[dict], mode: str, seed: int) -> list[dict]:
    """``undersample`` the larger class or ``oversample`` (repeat) the smaller one to equal counts; ``none`` keeps all."""
    import numpy as np

    if mode == "none":
        return list(rows)
    by = [[r for r in rows if r["label"] == y] for y in (0, 1)]
    if not by[0] or not by[1]:
        return list(rows)
    rng = np.random.default_rng(seed)
    small, large = sorted(by, key=len)
    if mode == "undersample":
        keep = sorted(rng.choice(len(large), len(small), replace=False).tolist())
        large = [large[i] for i in keep]
    else:
        extra = rng.choice(len(small), len(large) - len(small), replace=True).tolist()
        small = small + [small[i] for i in extra]
    return sorted(small + large, key=lambda r: r["order"])


def eval_source_of(cfg) -> tuple[str | None, str | None]:
    """``(file, split)`` of the held-out faces: --eval-data (at --eval-split, else --split), or DATA at --eval-split;
    ``(None, None)``: a --eval-fraction split of DATA."""
    from x2dfd.dataset import data_layout

    eval_split = getattr(cfg, "eval_split", None)
    source = cfg.eval_data or (cfg.data if eval_split else None)
    if eval_split and data_layout(source) != "deepfakebench":
        flag = "--eval-data" if cfg.eval_data else "DATA"
        raise UsageError(f"--eval-split reads a split of a DeepfakeBench JSON; {flag} '{source}' is a "
                         f"{data_layout(source)} (give the held-out faces with --eval-data instead)")
    if cfg.eval_data:
        return cfg.eval_data, eval_split or cfg.split
    return source, eval_split


def video_counts(rows: Sequence[dict]) -> dict[str, int]:
    """Videos per class (distinct video_id; a sample without one is its own) and frames that come from video files."""
    seen: list[set] = [set(), set()]
    for r in rows:
        seen[r["label"]].add(r.get("video_id") or ("sample", r["sha256"]))
    return {"real": len(seen[0]), "fake": len(seen[1]),
            "video_file_frames": sum(1 for r in rows if r.get("frame") is not None)}


def class_balance(rows: Sequence[dict]) -> dict[str, Any]:
    counts = Counter(LABEL_NAMES[r["label"]] for r in rows)
    real, fake = counts.get("real", 0), counts.get("fake", 0)
    return {"real": real, "fake": fake, "fake_per_real": round(fake / real, 3) if real else None}


# ------------------------------------------------------------------------------------------------ building
@dataclass
class _Face:
    row: dict[str, Any]
    image: Any  # PIL.Image
    p_yes: dict[str, float] = field(default_factory=dict)
    experts: dict[str, float | None] = field(default_factory=dict)


def warn(message: str) -> None:
    """A one-line warning on stderr (printed under --quiet too: it is about the data, not progress)."""
    print(f"x2dfd finetune: {message}", file=sys.stderr)


class DataBuilder:
    """Builds the data folder. ``load_experts`` runs once the ranking and the data have been checked;
    ``get_mllm`` loads the base MLLM only if cue scoring or rationales need it (without one, no rationale).
    Uninformative top-K cues are refused here, before anything is loaded, unless ``cfg.allow_uninformative``.
    ``cfg.top_k == 0`` (Weak Feature Supplementing alone): no ranking is read and no cue is stated or scored."""

    def __init__(self, cfg, load_experts: Callable[[], Sequence], get_mllm: Callable[[], Any] | None = None,
                 chunk: int = 8):
        self.cfg = cfg
        self.load_experts = load_experts
        self.experts: list = []
        self.expert_names: list[tuple[str, str]] = []
        self.get_mllm = get_mllm
        self.chunk = chunk
        self.weak_only = cfg.top_k == 0
        if self.weak_only:
            self.ranking, self.ranking_path = {}, None
            if cfg.ranking is not None:
                warn(f"--top-k 0 states no cue, so --ranking '{cfg.ranking}' is ignored (not read, copied or "
                     "fingerprinted)")
            if cfg.no_expert:
                warn("--top-k 0 with --no-expert: the answers are the verdict (and the rationale) only, plain verdict "
                     "fine-tuning with no cue and no expert score to learn from")
        else:
            self.ranking, self.ranking_path = load_ranking(cfg.ranking)
        self.cues = check_cues(self.ranking, cfg)
        self.uninformative = uninformative_message(self.cues)
        if self.uninformative:
            warn(f"{self.uninformative}; training on them anyway (--allow-uninformative)")
        self.grounded = cfg.cue_order == "image" and not self.weak_only
        self.cached = self._assess_scores()
        self.thresholds = cue_thresholds(self.cues, self.cached) if self.grounded else {}
        fallback = [k for k, v in self.thresholds.items() if v["source"] == FALLBACK_SOURCE]
        if fallback:
            warn(f"the ranking stores no decision threshold for {len(fallback)} cue(s) and no assess scores are beside "
                 f"it: a cue is stated where P(yes) is on the label's side of 0.5 (re-run `x2dfd assess` for "
                 f"per-cue thresholds)")
        if not self.grounded and not self.weak_only:
            warn("--cue-order rank states the ranking's top cues in every answer without checking them on the face: "
                 "the answers are NOT grounded in the base model's evidence (data.json says so); "
                 "--cue-order image grounds them")
        self.rationale = bool(cfg.rationale) and get_mllm is not None
        self.crop_warner = CropWarner("x2dfd finetune", scale=cfg.face_scale)
        self.rationale_seconds = 0.0
        self.rationale_faces = 0
        self.rationale_written = 0
        self.scorer = None
        self.store = None
        self.setting_id = None
        self.scored_now = 0
        self.data_dir = Path(".")

    def _assess_scores(self) -> dict[str, Any]:
        """Per-image P(yes) of the assess run the ranking comes from (empty when its scores file is gone)."""
        from x2dfd.feature_assessment.cache import SCORES_FILE, read_scores

        if self.cfg.cue_order != "image" or self.ranking_path is None:
            return {}
        if not (self.ranking_path.parent / self.ranking.get("scores_path", SCORES_FILE)).is_file():
            return {}
        return read_scores(self.ranking_path.parent, (self.ranking.get("setting") or {}).get("id"))

    def build(self, data_dir: str | Path) -> dict[str, Any]:
        """Write the data folder; returns its ``data.json`` content."""
        from x2dfd.dataset import load_labelled, row_sha256, sample_frames

        cfg = self.cfg
        data_dir = self.data_dir = Path(data_dir)
        (data_dir / IMAGES_DIR).mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        limits = self._limits()
        eval_source, eval_split = eval_source_of(cfg)

        def load(source, split):  # frames per video capped, video files turned into frame rows (explain's sampling)
            ds = load_labelled(source, split=split, compression=cfg.compression, root=cfg.data_root)
            return sample_frames(ds, getattr(cfg, "frames_per_video", None), cfg.seed, limits)

        ds = load(cfg.data, cfg.split)
        eval_ds = load(eval_source, eval_split) if eval_source else None
        self.experts = list(self.load_experts())
        self.expert_names = expert_prompt_list(self.experts)
        dropped: dict[str, list[dict[str, str]]] = {"real": [], "fake": []}
        duplicates = 0
        seen: set[str] = set()
        file_sha: dict[str, str] = {}  # a video's frames share one file hash
        groups = {"data": ds.to_list(), "eval_data": eval_ds.to_list() if eval_ds is not None else []}
        built: dict[str, list[dict]] = {"data": [], "eval_data": []}
        for group, rows in groups.items():
            todo = []
            for row in rows:
                try:
                    if row["path"] not in file_sha:
                        file_sha[row["path"]] = file_sha256(row["path"])
                    row["sha256"] = row_sha256(row, file_sha[row["path"]])
                except OSError as err:  # missing, unreadable, a device: dropped and reported per class
                    dropped[LABEL_NAMES[row["label"]]].append(
                        {"path": row["path"], "error": one_line(f"cannot read '{row['path']}': {err.strerror or err}")})
                    continue
                if row["sha256"] in seen:
                    duplicates += 1  # the same file twice would leak across the split
                    continue
                seen.add(row["sha256"])
                row["order"] = len(seen)
                todo.append(row)
            for start in range(0, len(todo), self.chunk):
                faces = []
                for row in todo[start : start + self.chunk]:
                    try:
                        faces.append(_Face(row, self._face(row)))
                    except X2DFDError as err:  # no face / unreadable: reported per class, never silently dropped
                        dropped[LABEL_NAMES[row["label"]]].append({"path": row["path"], "error": one_line(str(err))})
                    except Exception as err:  # noqa: BLE001 - per-item boundary: record the file and the cause
                        dropped[LABEL_NAMES[row["label"]]].append(
                            {"path": row["path"], "error": one_line(f"{type(err).__name__}: {err}")})
                built[group] += self._samples(faces, data_dir)
                if not cfg.quiet:
                    print(f"\rbuilding data: {group} {min(start + self.chunk, len(todo))}/{len(todo)} faces",
                          end="", file=sys.stderr, flush=True)
            if not cfg.quiet and todo:
                print(file=sys.stderr)
        if self.store is not None:
            self.store.close()
        self.crop_warner.warn(quiet=cfg.quiet)  # one line, before training starts
        if eval_ds is not None:
            train, held = built["data"], built["eval_data"]
        else:
            train, held = split_rows(built["data"], cfg.eval_fraction, cfg.seed)
        before = class_balance(train)
        train = rebalance(train, cfg.balance, cfg.seed)
        for split, rows in (("train", train), ("eval", held)):
            _write_jsonl(data_dir / SPLIT_FILES[split], rows)
        if self.ranking_path is not None and self.ranking_path.resolve() != (data_dir / RANKING_FILE).resolve():
            shutil.copyfile(self.ranking_path, data_dir / RANKING_FILE)  # the folder stays self-contained
        elif self.ranking_path is None:
            stale_copy(data_dir / RANKING_FILE, cfg.ranking)  # an earlier build's: these answers used no ranking
        info = {
            "command": "finetune --build-data-only" if cfg.build_data_only else "finetune",
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "source": {"data": cfg.data, "eval_data": eval_source, "split": cfg.split, "eval_split": eval_split,
                       "frames_per_video": getattr(cfg, "frames_per_video", None)},
            "videos": {"train": video_counts(train), "eval": video_counts(held)},
            "top_k": cfg.top_k, "weak_only": self.weak_only,
            "ranking": None if self.ranking_path is None else {
                "path": str(self.ranking_path), "copy": RANKING_FILE, "fingerprint": file_sha256(self.ranking_path),
                "model": self.ranking.get("model"), "setting": (self.ranking.get("setting") or {}).get("id")},
            "cues": [{"id": c["id"], "rank": c.get("rank"), "auc": c.get("auc"), "auc_ci": c.get("auc_ci"),
                      "flags": list(c.get("flags") or []), **self.thresholds.get(c["id"], {}),
                      "present": c["present"], "absent": c["absent"]} for c in self.cues],
            "cue_order": None if self.weak_only else cfg.cue_order,
            "cues_per_answer": 0 if self.weak_only else cfg.cues_per_answer,
            "grounding": {"grounded": None if self.weak_only else self.grounded, "rule": self._grounding_rule()},
            "uninformative_cues": {"ids": [c["id"] for c in uninformative_cues(self.cues)],
                                   "allowed": bool(getattr(cfg, "allow_uninformative", False)),
                                   "message": self.uninformative},
            "rationale": self._rationale_info(),
            "answers": {"train": answer_composition(train), "eval": answer_composition(held)},
            "cue_scores": {"from_assess": sum(1 for r in built["data"] + built["eval_data"] if r["cue_source"] == "assess"),
                           "scored_now": self.scored_now},
            "experts": [{"name": n, "prompt_name": p} for n, p in self.expert_names],
            "expert_thresholds": {"fake_min": EXPERT_FAKE_MIN, "real_max": EXPERT_REAL_MAX},
            "templates": {"question": template_version(QUESTION_TEMPLATE), "answer": template_version(ANSWER_TEMPLATE)},
            "face": _face_setting(cfg),
            "crop_check": {**self.crop_warner.summary(), "warning": self.crop_warner.message()},
            "balance": {"mode": cfg.balance, "train_before": before, "train": class_balance(train),
                        "eval": class_balance(held)},
            "dropped": {"no_face_or_unreadable": {k: len(v) for k, v in dropped.items()},
                        "examples": {k: v[:20] for k, v in dropped.items()}, "duplicate_files": duplicates},
            "expert_sentences": sum(1 for r in train if r["expert_sentence"]),
            "seconds": round(time.perf_counter() - t0, 2),
        }
        (data_dir / INFO_FILE).write_text(json.dumps(info, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        if not cfg.quiet:
            print(f"answers (train): {composition_text(info['answers']['train'])}", file=sys.stderr)
        if self.rationale and self.rationale_faces and not cfg.quiet:
            r = info["rationale"]
            print(f"rationales by the base model: {r['seconds_per_face']:.3f} s per face ({r['faces']} faces, "
                  f"{r['seconds']:.1f} s; {r['written']} ended a sentence and were kept; --no-rationale skips them)",
                  file=sys.stderr)
        if not train:
            raise UsageError(f"no training sample could be built from '{cfg.data}' (see {data_dir / INFO_FILE})")
        return info

    def _grounding_rule(self) -> str:
        if self.weak_only:
            return "no cue is stated in any answer (--top-k 0: Weak Feature Supplementing only)"
        if self.grounded:
            return ("a cue is stated for a face only where its base-model P(yes) on that face is above the cue's "
                    "threshold (fake, stated present) or below it (real, stated absent); otherwise omitted")
        return "not grounded: --cue-order rank states the ranking's top cues in every answer, unchecked"

    def _rationale_info(self) -> dict[str, Any]:
        cfg = self.cfg
        if not self.rationale:
            return {"enabled": False, "reason": "--no-rationale" if not cfg.rationale else "no MLLM loaded"}
        return {"enabled": True, "max_new_tokens": cfg.rationale_tokens, "faces": self.rationale_faces,
                "written": self.rationale_written, "seconds": round(self.rationale_seconds, 3),
                "seconds_per_face": round(self.rationale_seconds / self.rationale_faces, 4) if self.rationale_faces else None,
                "label_conditioned": True,
                "caveat": "written by the base MLLM " + RATIONALE_CAVEAT[self.weak_only]}

    def _limits(self):
        from x2dfd.media import MediaLimits

        cfg = self.cfg
        return MediaLimits(max_pixels=cfg.max_pixels, max_file_mb=cfg.max_file_mb,
                           max_video_mb=getattr(cfg, "max_video_mb", MediaLimits.max_video_mb))

    def _face(self, row: dict[str, Any]):
        """The face crop of a row: an image file or one frame of a video, read as explain reads it."""
        from x2dfd.dataset import load_row_image
        from x2dfd.face import extract_faces

        cfg = self.cfg
        image = load_row_image(row, self._limits())
        [crop] = extract_faces(image, crop=cfg.face_crop, all_faces=False, scale=cfg.face_scale, align=cfg.align,
                               min_score=cfg.min_face_score)
        self.crop_warner.observe_crop(image, crop, label=row["label"])  # inputs that already are face crops
        return crop.image

    def _samples(self, faces: list[_Face], data_dir: Path) -> list[dict]:
        if not faces:
            return []
        images = [f.image for f in faces]
        for expert in self.experts:  # an expert that fails is "N/A", as in explain
            try:
                scores = [float(s.p_fake) for s in expert.score(images)]
            except Exception as err:  # noqa: BLE001 - per-batch boundary; the question then says N/A
                print(f"x2dfd finetune: expert '{expert.name}' failed ({one_line(f'{type(err).__name__}: {err}')}); "
                      "its score is N/A for this batch", file=sys.stderr)
                scores = [None] * len(faces)
            for f, s in zip(faces, scores):
                f.experts[expert.name] = None if s is None else round(s, 6)
        sources = [self._cue_scores(f) for f in faces]
        k = self.cfg.cues_per_answer
        if self.grounded:
            chosen = [grounded_cues(f.row["label"], f.p_yes, self.cues, self.thresholds)[:k] for f in faces]
        else:
            chosen = [list(self.cues[:k]) for _ in faces]
        phrases = [cue_phrases(f.row["label"], c) for f, c in zip(faces, chosen)]
        rationales: list[str | None] = [None] * len(faces)
        if self.rationale:
            mllm = self.get_mllm()
            t0 = time.perf_counter()
            rationales = generate_rationales(mllm, images, [f.row["label"] for f in faces], phrases,
                                             self.cfg.rationale_tokens)
            self.rationale_seconds += time.perf_counter() - t0
            self.rationale_faces += len(faces)
            self.rationale_written += sum(1 for r in rationales if r)
        out = []
        for f, cues, ph, rationale, source in zip(faces, chosen, phrases, rationales, sources):
            label = f.row["label"]
            support = supporting_experts(label, self.expert_names, f.experts)
            name = f"{f.row['sha256'][:24]}.png"
            f.image.save(data_dir / IMAGES_DIR / name)
            out.append({
                "image": f"{IMAGES_DIR}/{name}", "label": label,
                "question": render_question(self.expert_names, f.experts),
                "answer": render_answer(label, ph, support, rationale),
                "cues": [c["id"] for c in cues], "cue_p_yes": {k: round(v, 6) for k, v in f.p_yes.items()},
                "cue_source": source, "grounded": None if self.weak_only else self.grounded, "rationale": rationale,
                "experts": f.experts, "expert_sentence": bool(support),
                "path": f.row["path"], "frame": f.row.get("frame"), "sha256": f.row["sha256"],
                "video_id": f.row.get("video_id"),
                "source": f.row.get("source"), "order": f.row["order"],
            })
        return out

    def _cue_scores(self, face: _Face) -> str:
        """Fill ``face.p_yes`` for the strong cues: from the assess run, else scored now (cached in the data folder)."""
        if not self.cues:
            return "none"  # --top-k 0: no cue to score
        if self.cfg.cue_order != "image":
            return "rank"
        ids = [c["id"] for c in self.cues]
        entry = self.cached.get(face.row["sha256"])
        if entry is not None:
            face.p_yes.update({k: v for k, v in entry.p_yes.items() if k in ids})
        missing = [c for c in ids if c not in face.p_yes]
        if not missing:
            return "assess"
        scorer, store, sid = self._scorer()
        mine = store.get(sid, face.row["sha256"])
        if mine is not None:
            face.p_yes.update({k: v for k, v in mine.p_yes.items() if k in missing})
        missing = [c for c in ids if c not in face.p_yes]
        if missing:
            index = {c.id: i for i, c in enumerate(scorer.cues)}
            p = scorer.score_image(face.image, [index[c] for c in missing])
            new = {c: float(v) for c, v in zip(missing, p)}
            store.add_scores(sid, face.row["sha256"], new, path=face.row["path"], label=face.row["label"])
            face.p_yes.update(new)
            self.scored_now += 1
        return "scored"

    def _scorer(self):
        if self.scorer is None:
            from x2dfd.feature_assessment.assess import build_setting
            from x2dfd.feature_assessment.cache import SCORES_FILE, ScoreStore, setting_id
            from x2dfd.feature_assessment.cues import Cue
            from x2dfd.feature_assessment.scoring import CueScorer

            cues = [Cue(id=c["id"], region=c.get("region", "global"), question=c["question"], present=c["present"],
                        absent=c["absent"]) for c in self.cues]
            mllm = self.get_mllm()
            self.scorer = CueScorer(mllm, cues)
            self.setting_id = setting_id(build_setting(self.cfg))
            self.store = ScoreStore(self.data_dir / SCORES_FILE)
            self.store.add_setting(self.setting_id, {**build_setting(self.cfg), "mllm": mllm.describe()})
        return self.scorer, self.store, self.setting_id


def stale_copy(path: Path, keep: str | None = None) -> None:
    """Remove ``path`` (a ranking copy an earlier run left in a folder this run writes) unless it is ``keep``, the
    --ranking the user named."""
    if path.is_file() and (keep is None or Path(keep).expanduser().resolve() not in (path.resolve(),
                                                                                     path.parent.resolve())):
        path.unlink()


def _face_setting(cfg) -> dict[str, Any]:
    face = {"crop": cfg.face_crop}
    if cfg.face_crop:
        face.update(scale=cfg.face_scale, align=cfg.align, min_score=cfg.min_face_score)
    return face


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        for r in rows:
            line = json.dumps({k: v for k, v in r.items() if k != "order"}, ensure_ascii=False)
            try:
                line.encode("utf-8")
            except UnicodeEncodeError:  # a path with undecodable bytes: \\u-escaped, reads back the same
                line = json.dumps({k: v for k, v in r.items() if k != "order"}, ensure_ascii=True)
            fh.write(line + "\n")
    tmp.replace(path)


# ------------------------------------------------------------------------------------------------ loading
def data_fingerprint(data_dir: str | Path) -> str:
    """sha256 over both JSONL files and every image they point to: changes when any sample or picture does."""
    data_dir = Path(data_dir)
    h = hashlib.sha256()
    for split, name in SPLIT_FILES.items():
        path = data_dir / name
        h.update(f"{split}\0".encode())
        if path.is_file():
            h.update(path.read_bytes())
            for _, line in read_jsonl_text(path, errors="replace"):  # "\n" only: U+2028 in a path is no break
                try:
                    image = json.loads(line).get("image")
                except (ValueError, AttributeError):
                    continue  # load_training_data names the bad line
                if isinstance(image, str) and (data_dir / image).is_file():
                    h.update(file_sha256(data_dir / image).encode())
    return h.hexdigest()


def _check_row(row: dict[str, Any], data_dir: Path, where: str) -> dict[str, Any]:
    missing = [k for k in REQUIRED_COLUMNS if k not in row or row[k] is None]
    if missing:
        raise UsageError(f"{where}: missing {', '.join(missing)} (each line needs {', '.join(REQUIRED_COLUMNS)})")
    if row["label"] not in (0, 1):
        raise UsageError(f"{where}: label must be 0 (real) or 1 (fake), got {row['label']!r}")
    head = answer_head(row["label"])
    if not str(row["answer"]).startswith(head):
        raise UsageError(f"{where}: the answer must start with '{head}' (its label is {LABEL_NAMES[row['label']]}); "
                         "explain reads P(fake) from the verdict word right after the answer prefix")
    image = Path(str(row["image"])).expanduser()
    image = image if image.is_absolute() else data_dir / image
    if not image.is_file():
        raise UsageError(f"{where}: image '{image}' does not exist (paths are relative to the data folder)")
    return {**row, "image": str(image.resolve())}


def _features():
    from datasets import ClassLabel, Features, Value

    return Features({k: ClassLabel(names=list(LABEL_NAMES)) if k == "label" else Value("string")
                     for k in LOADED_COLUMNS})


def _text_or_none(value: Any) -> str | None:
    return None if value is None else str(value)


def load_training_data(data_dir: str | Path):
    """``(train, eval, info)``: the data folder's splits as ``datasets.Dataset`` (image paths made absolute),
    every line checked (a one-line UsageError names the file, line and fix); eval may be empty."""
    from datasets import Dataset

    data_dir = Path(data_dir).expanduser()
    if not (data_dir / SPLIT_FILES["train"]).is_file():
        raise UsageError(f"--data-dir '{data_dir}' has no {SPLIT_FILES['train']} (build one with --build-data-only)")
    info_path = data_dir / INFO_FILE
    info = json.loads(info_path.read_text(encoding="utf-8")) if info_path.is_file() else {}
    splits = []
    for name in SPLIT_FILES.values():
        rows = []
        path = data_dir / name
        if path.is_file():
            try:
                lines = read_jsonl_text(path)
            except UnicodeDecodeError as err:
                raise UsageError(f"'{path}' is not UTF-8 text (byte {err.start}); save it as UTF-8") from None
            for n, line in lines:
                where = f"'{path}' line {n}"
                try:
                    raw = json.loads(line)
                except json.JSONDecodeError as err:
                    raise UsageError(f"{where}: not valid JSON ({err.msg})") from None
                if not isinstance(raw, dict):
                    raise UsageError(f"{where}: each line must be a JSON object")
                rows.append(_check_row(raw, data_dir, where))
        splits.append(Dataset.from_dict({k: [_text_or_none(r.get(k)) if k != "label" else r[k] for r in rows]
                                         for k in LOADED_COLUMNS}, features=_features()))
    if len(splits[0]) == 0:
        raise UsageError(f"'{data_dir / SPLIT_FILES['train']}' holds no samples")
    return splits[0], splits[1], info
