"""``x2dfd evaluate``: the field's detection metrics at frame and video level, systems side by side,
robustness sweeps and explanation checks, on labelled data.

    x2dfd evaluate data/ --out eval/                                     # MLLM + shipped blend expert
    x2dfd evaluate ff.json --split test --fit-split train --out eval/    # DeepfakeBench JSON, fusion fitted on train
    x2dfd evaluate manifest.csv --mllm none --expert blend --perturb jpeg:90,70,50,30 blur:1,2 resize:0.5,0.25 noise:0.02
    x2dfd evaluate data/ --model ./llava --adapter ./x2dfd-lora --fit-split 0.3 --no-cue-check
    x2dfd evaluate data/ --model ./llava --records run.jsonl --out eval/   # score `x2dfd explain data/ --out run.jsonl`
    x2dfd evaluate data/ --system release=preset:x2dfd-release --system fakevlm=model=./fakeVLM,preset=fakevlm \
        --system mine=adapter=runs/x2dfd-lora --references refs.jsonl --out eval/     # side by side, + text metrics

DATA is what ``x2dfd assess`` reads (``x2dfd.dataset.load_labelled``): a folder with real/ and fake/,
a CSV/JSONL/JSON manifest (path,label[,video_id,source]; images or video files) or a DeepfakeBench
dataset JSON. Every item goes through THE pipeline (``x2dfd.pipeline.Explainer``: decode -> face crop
-> experts -> MLLM), once per condition (clean, then each ``--perturb`` strength); one run gives the
MLLM's p_fake and every expert's p_fake at once.

Protocol (stated in every output, because numbers are only comparable when it is):

* levels: ``frame`` = one score per image, and per sampled frame of a video file; ``video`` = frames
  grouped by ``video_id`` (DeepfakeBench frame folders, manifests) or by video file, their p_fake
  aggregated with ``--aggregate`` (mean by default, DeepfakeBench's video-level metric). A lone image
  without a ``video_id`` is its own group; the video level is reported only when some group has more
  than one frame. Two frame counts, kept apart: ``--frames-per-video N`` keeps at most N of the frame
  IMAGES of each video_id (evenly spread from a seeded offset, ``x2dfd.dataset.sample_frames``: X2-DFD
  uses 8, DeepfakeBench its ``frame_num``); ``--frames`` is how many frames the pipeline samples
  uniformly from each video FILE (as explain does). ``metrics.json`` states both (``protocol``).
* systems: ``mllm`` (the MLLM's P(fake)), ``expert:NAME`` (each expert alone), ``fusion:mean`` (mean of
  the available p_fakes) and ``fusion:logistic`` (L2-regularised logistic regression on their logits,
  fitted at frame level on the clean run of ``--fit-split`` items, then applied unchanged to every
  condition and level). Fusions appear when there are at least two components.
* ``--fit-split``: ``F`` in (0, 1) takes a seeded, class-stratified fraction F of DATA's videos (or
  images) to fit on, and then EVERY system is reported on the remaining items only (one report set
  for the whole table); ``source:A,B`` fits on DATA items whose source is A or B and reports the rest;
  a split name (DeepfakeBench JSON: ``train``, ``val``) or another DATA path fits on those items (run
  clean through the same pipeline) and reports all of DATA (files also in DATA are dropped from the
  fit set); ``all`` fits on the reported items themselves (in-sample, marked optimistic everywhere).
  Without ``--fit-split`` there is no logistic fusion.
* metrics: AUC, AP, EER, accuracy at ``--threshold`` (0.5), TPR at FPR 1% and 5%, each with a
  percentile bootstrap interval (``--bootstrap`` resamples, stratified by class; at frame level whole
  videos are resampled, so frames of one video are not counted as independent). Label 1 = fake =
  positive. Items without a score (no face found, undecodable) are excluded by default and counted per
  class in ``coverage`` (``--undetermined as-0.5`` etc. scores them instead): a detector that misses
  real faces more often than fakes biases every metric, so read the coverage with the numbers.
* subsets: one row per ``source`` (the first folder under real/ or fake/, or the manifest column); a
  source holding only fakes is scored against all real items of the report set (FaceForensics++
  per-manipulation convention), one holding only reals against all fakes.
* face crops: with face cropping on, the items whose detected face box covers most of the picture (inputs that
  already are face crops, e.g. DeepfakeBench's preprocessed frames) are counted per class in ``data.face_crops``,
  and one stderr line (also in ``notes``) says so when they are many, with the ``--no-face-crop`` hint
  (``x2dfd.cropcheck``, the rule assess and finetune apply): a second 1.3x crop pads them with black.
* perturbations are applied to the decoded image or video frame before face detection (full frame,
  as re-compressing the distributed file would); see ``x2dfd.perturb``.
* explanation checks (MLLM with explanations): the verdict the text states first ("This image is
  real/fake") against the label from p_fake, and with ``--cue-check`` (clean run only) cue grounding:
  the cues whose present/absent phrase (``prompts/cues.yaml``) the explanation mentions against the
  ``--cue-top-k`` cues with the highest P(yes) on that face (``feature_assessment`` scoring).

Side by side (``--system NAME=SPEC``, repeatable): every item is decoded, face-cropped and scored by the experts
ONCE per condition (``prepared/<condition>.<hash>/``: the crops as lossless PNG and the expert scores), then each
MLLM system is loaded in turn (one model in memory at a time), judges those very crops through the pipeline
(prompt with its own preset's wording and experts, video aggregation, explanation) and is freed. Systems are named
``mllm:NAME`` in every table and plot, next to ``expert:NAME``; paired AUC deltas are against the first system;
records are cached per system and condition (adding a system to a finished run judges only with the new one).
There are no fusions with ``--system``. SPEC: ``preset:NAME``, a folder (adapter folder if it holds
adapter_config.json, else a checkpoint) or ``KEY=VALUE[,KEY=VALUE...]`` with keys model, adapter, preset, revision,
dtype; the command line's --model/--revision/--dtype/--device/quantization apply where a SPEC is silent.

Scoring an explain run (``--records RUN.jsonl``, repeatable): the clean condition's MLLM and expert results are read
from ``x2dfd explain``'s records instead of computed: no MLLM is loaded and no expert runs, e.g.
``x2dfd explain data/ --model ./llava --out run.jsonl`` then ``x2dfd evaluate data/ --records run.jsonl``. Checked
first, each failure one line: every DATA item (and ``--fit-split`` item) has a record carrying its file's current
sha256 (matched by path, else by that sha256; duplicates of a resumed or sharded run, and shard files a killed run
left beside RUN: the latest record wins), else the error counts and names the missing ones and says to explain them
into the same ``--out`` (it resumes); the run's settings from ``RUN.config.json`` (face crop, scale, align, min face
score, all faces, threshold, frames, aggregate, topk and, for an MLLM run, max new tokens) equal evaluate's; the
model, revision, adapter, preset, dtype, quantization and experts are compared where evaluate's command line gives
them, otherwise the run's are scored (and named in ``metrics.json``'s ``records_from``). An expert-only run
(``explain --mllm none``) is scored with ``--mllm none``; an MLLM run may be scored with ``--mllm none`` (its experts
alone); a run explain made with ``--allow-expert-mismatch`` (other experts than its adapter was trained with) needs
that flag here too. Records with an error count as failed items exactly as computed ones do. ``--perturb``, ``--system`` and
``--cue-check`` need the model on the inputs and are refused with ``--records`` (the cue check is off by default
there). A copy of the matched records is ``records/clean.from-records.<hash>.jsonl``.

Explanation metrics (``--references FILE``): see :mod:`x2dfd.textmetrics`; per MLLM system, on the clean run's
explained items of the report set, with the same kind of bootstrap intervals (``explanation_metrics`` in
metrics.json, a table in ``table_frame.md``, ``table_explanations.csv`` and evaluate.html).

Outputs in ``--out``: ``metrics.json`` (everything, with model/adapter/expert ids and the data
fingerprint), ``table_frame.md/.csv`` and ``table_video.md/.csv`` (a paper's table), ``roc_frame.png``
/ ``roc_video.png``, ``robustness_<level>.png``, ``evaluate.html`` (the report renderer's jinja
environment), ``evaluate.config.json`` and ``records/<condition>.<settings-hash>.jsonl`` (per-item
records; a rerun computes only what is missing).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import math
import os
import re
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from x2dfd import __version__
from x2dfd.cliargs import parse_config, to_jsonable
from x2dfd.errors import UsageError, X2DFDError
from x2dfd.modelargs import ModelArgs
from x2dfd.pipeline import PipelineOptions
from x2dfd.records import Record, terminal_line

LEVELS = ("frame", "video")
UNDETERMINED = {"exclude": None, "as-0.5": 0.5, "as-real": 0.0, "as-fake": 1.0}
FPRS = (0.01, 0.05)
METRIC_LABELS = {"auc": "AUC", "ap": "AP", "eer": "EER", "acc": "ACC", "tpr@fpr0.01": "TPR@1%FPR",
                 "tpr@fpr0.05": "TPR@5%FPR"}
VERDICT = re.compile(r"\bthis\s+image\s+is\s+\W{0,3}(real|fake)\b", re.IGNORECASE)


@dataclass
class EvaluateConfig(PipelineOptions, ModelArgs):
    """Evaluate an MLLM, adapter or expert on labelled data: metrics at frame and video level, side by side,
    under perturbations, with explanation checks."""

    data: str = field(default="", metadata={"positional": True})
    """Labelled data: a folder with real/ and fake/, a CSV/JSONL/JSON manifest (path,label[,video_id,source]; images or videos) or a DeepfakeBench dataset JSON."""
    out: str | None = None
    """Output folder (metrics.json, tables, ROC PNGs, evaluate.html, records/); default: evaluate-<DATA name>."""
    mllm: str = field(default="auto", metadata={"choices": ["auto", "none"]})
    """none: evaluate the experts alone (no MLLM is loaded)."""
    expert: list[str] = field(default_factory=list, metadata={"metavar": "NAME[=WEIGHTS]"})
    """Expert to evaluate (default: the shipped blending expert); NAME=WEIGHTS evaluates your own weights (e.g. blend=runs/blend, the --out of x2dfd expert train)."""
    no_expert: bool = field(default=False, metadata={"store_true": True})
    """Run no expert (the MLLM alone, without expert scores in its prompt)."""
    allow_expert_mismatch: bool = field(default=False, metadata={"store_true": True})
    """Evaluate even though --expert/--no-expert/--preset differ from the experts the --adapter was trained with (recorded in its folder by `x2dfd finetune`), or their recorded weights file changed; without it that is a one-line error (as in explain). metrics.json records both sets."""
    perturb: list[str] = field(default_factory=list, metadata={"metavar": "KIND:V[,V...]"})
    """Robustness sweep, e.g. --perturb jpeg:90,70,50,30 blur:1,2 resize:0.5,0.25 noise:0.02 (kinds: jpeg quality, blur sigma px, resize factor, noise std in [0,1]); applied to the full decoded frame before face detection."""
    fit_split: str | None = None
    """Items the logistic fusion is fitted on: a fraction (0.3: that share of DATA's videos, the rest reported), source:A,B (those sources fit, the rest reported), a DeepfakeBench split name or another DATA path (fit there, all of DATA reported), or all (in-sample, optimistic). Default: no logistic fusion."""
    fusion_l2: float = 1.0
    """L2 penalty of the logistic fusion's weights (on logit features)."""
    undetermined: str = field(default="exclude", metadata={"choices": list(UNDETERMINED)})
    """Items without a score (no face, undecodable): exclude them (counted per class in the coverage), or score them 0.5, 0 (real) or 1 (fake)."""
    bootstrap: int = 1000
    """Bootstrap resamples for the confidence intervals (0: no intervals)."""
    ci: float = 0.95
    """Confidence level of the bootstrap intervals."""
    seed: int = 0
    """Seed of the bootstrap, the --fit-split fraction, --per-class sampling and the noise perturbation."""
    per_class: int | None = None
    """Evaluate a seeded sample of this many items per class (default: all items)."""
    frames_per_video: int | None = field(default=None, metadata={"metavar": "N"})
    """At most N frames of each video given as frame images (items sharing a video_id: DeepfakeBench frame lists, frame folders under real/ and fake/, a manifest's video_id column), spread evenly from a seeded offset (--seed; x2dfd.dataset.sample_frames), as X2-DFD (8 frames) and DeepfakeBench's frame_num do; default: all of them. Video FILES are not cut here: the pipeline samples --frames frames from each, as explain does (give --frames N too for the same count)."""
    split: str = "test"
    """DeepfakeBench JSON only: the split to evaluate (train, val, test)."""
    compression: str = "c23"
    """DeepfakeBench JSON only: FaceForensics++ compression level (raw, c23, c40)."""
    data_root: str | None = None
    """DeepfakeBench JSON only: folder the frame paths are relative to (default: the JSON's folder)."""
    cue_check: bool | None = None
    """Cue grounding of the explanations (clean run, needs the MLLM): score every cue on each face (costs about one prefill plus a few short forwards per face). Default: on, except with --records (no model is loaded)."""
    cue_top_k: int = 5
    """Cues with the highest P(yes) per face that the explanation's mentioned cues are compared with."""
    cues: list[str] = field(default_factory=list, metadata={"metavar": "FILE"})
    """Cue bank YAML file(s) for the cue check (default: the shipped prompts/cues.yaml)."""
    cue_batch_size: int = 16
    """Cues scored per forward pass against one face's cached prefix."""
    system: list[str] = field(default_factory=list, metadata={"metavar": "NAME=SPEC"})
    """Evaluate several MLLM setups side by side over the same face crops and expert scores (one model in memory at a time; reported as mllm:NAME). SPEC: preset:NAME (a built-in preset: x2dfd-release, fakevlm, x2dfd), a folder (an adapter folder, i.e. one with adapter_config.json, else a model checkpoint; its preset.json applies), or KEY=VALUE[,KEY=VALUE...] with keys model, adapter, preset, revision, dtype (e.g. lora=model=./llava,adapter=runs/x2dfd-lora,preset=x2dfd). --model, --revision, --dtype, --device and the quantization options apply to every system a SPEC does not override; --adapter and --preset go into each SPEC instead."""
    references: str | None = field(default=None, metadata={"metavar": "FILE"})
    """Reference explanations (CSV or JSONL: path, reference[, label]; DD-VQA-style rows path, question, answer are accepted, several per path = several references): per MLLM system, verdict accuracy and F1 parsed from the text, agreement of that verdict with p_fake, ROUGE-L and BLEU against the references, with bootstrap intervals (clean run, reported items). Paths match DATA by resolved path (relative to the references file, then the working directory), else by unique file name (reported). Caveat: DD-VQA's reference answers come from prompts that contain the true label, so they state (leak) it: a model scored against them is rewarded for echoing the right verdict, not only for its reasoning; read ROUGE-L/BLEU with the verdict accuracy."""
    records: list[str] = field(default_factory=list, metadata={"metavar": "RUN.jsonl"})
    """Score the records of an `x2dfd explain` run (its --out JSONL; repeatable, e.g. real/ and fake/ explained apart) as the clean condition, instead of running the pipeline: no model is loaded. Every DATA item needs a record of the same file content (sha256), and the run's settings (RUN.config.json: face crop, scale, align, threshold, frames, aggregate, max new tokens; model, adapter, preset and experts where given here) must be evaluate's: otherwise a one-line error names what differs. Not with --perturb, --system or --cue-check (they need the model)."""
    title: str | None = None
    """Title of evaluate.html (default: from DATA)."""
    quiet: bool = field(default=False, metadata={"store_true": True})
    """No progress bars and no summary on stderr."""
    all_faces: bool = field(default=False, metadata={"cli": False})
    """Always False: one verdict (the largest face) per labelled item."""

    def __post_init__(self):
        ModelArgs.__post_init__(self)
        PipelineOptions.__post_init__(self)
        if not self.data:
            raise UsageError("give DATA: a folder with real/ and fake/, a CSV/JSONL manifest or a DeepfakeBench JSON")
        if self.all_faces:
            raise UsageError("evaluate scores one face per labelled item; --all-faces is not supported")
        if self.no_expert and self.expert:
            raise UsageError("--no-expert and --expert exclude each other")
        if self.mllm == "none" and self.no_expert:
            raise UsageError("--mllm none and --no-expert leave nothing to evaluate; name an --expert")
        if self.frames_per_video is not None and self.frames_per_video < 1:
            raise UsageError(f"--frames-per-video must be >= 1, got {self.frames_per_video}")
        if self.bootstrap < 0:
            raise UsageError(f"--bootstrap must be >= 0, got {self.bootstrap}")
        if not 0.5 <= self.ci < 1.0:
            raise UsageError(f"--ci must be in [0.5, 1), got {self.ci}")
        if self.cue_top_k < 1:
            raise UsageError(f"--cue-top-k must be >= 1, got {self.cue_top_k}")
        if self.fusion_l2 < 0:
            raise UsageError(f"--fusion-l2 must be >= 0, got {self.fusion_l2}")
        if self.system:
            if self.mllm == "none":
                raise UsageError("--system names MLLM setups; --mllm none evaluates no MLLM (leave one of them out)")
            for flag, value in (("--adapter", self.adapter), ("--preset", self.preset)):
                if value:
                    raise UsageError(f"with --system, give the adapter and the preset in each SPEC ({flag} {value} "
                                     f"applies to no system), e.g. --system NAME=adapter=DIR,preset=NAME")
            parse_system_specs(self)  # every SPEC is checked before any model loads
        if self.references is not None:
            if self.mllm == "none":
                raise UsageError("--references scores the MLLM's explanations; --mllm none has none")
            if self.max_new_tokens == 0:
                raise UsageError("--references scores the explanations; --max-new-tokens 0 generates none")
        if self.records:
            for flag, given in (("--perturb", self.perturb), ("--system", self.system), ("--cue-check", self.cue_check)):
                if given:
                    raise UsageError(f"{flag} needs the model on the inputs, and --records scores an explain run without "
                                     f"loading it: run evaluate without --records for {flag} (or leave {flag} out)")
        if self.cue_check is None:
            self.cue_check = not self.records
        from x2dfd.perturb import parse_perturbations

        parse_perturbations(self.perturb, self.seed)  # fail on a bad spec before any model loads

    def out_dir(self) -> Path:
        return Path(self.out) if self.out else Path(f"evaluate-{Path(self.data).stem or 'data'}")


# --------------------------------------------------------------------------------------------- systems
SPEC_KEYS = ("model", "adapter", "preset", "revision", "dtype")
_SYSTEM_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


@dataclass
class SystemSpec:
    """One ``--system NAME=SPEC``: an MLLM setup, reported as ``mllm:NAME``."""

    name: str
    spec: str
    options: Any  # x2dfd.modelargs.MLLMOptions
    expert_specs: list[str] | None  # NAME[=WEIGHTS] of the experts its prompt shows (None: the default set)

    @property
    def system(self) -> str:
        return f"mllm:{self.name}"


def _spec_overrides(name: str, spec: str) -> dict[str, Any]:
    where = f"--system {name}={spec}"
    if spec.startswith("preset:"):
        preset = spec.split(":", 1)[1].strip()
        if not preset:
            raise UsageError(f"{where}: preset: needs a name (x2dfd-release, fakevlm, x2dfd or a preset JSON file)")
        return {"preset": preset}
    head = spec.split(",", 1)[0]
    if "=" in head:
        out: dict[str, Any] = {}
        for part in spec.split(","):
            key, eq, value = part.partition("=")
            key, value = key.strip(), value.strip()
            if not eq or key not in SPEC_KEYS or not value:
                raise UsageError(f"{where}: '{part}' is not KEY=VALUE with KEY one of {', '.join(SPEC_KEYS)} "
                                 "(SPEC: preset:NAME, a folder, or KEY=VALUE[,KEY=VALUE...])")
            if key in out:
                raise UsageError(f"{where}: '{key}' is given twice")
            out[key] = value
        return out
    folder = Path(spec).expanduser()
    if folder.is_dir():
        return {"adapter": spec} if (folder / "adapter_config.json").is_file() else {"model": spec}
    if folder.exists():
        raise UsageError(f"{where}: '{spec}' is a file, not a model or adapter folder")
    from x2dfd.modelargs import looks_like_path

    if looks_like_path(spec):
        raise UsageError(f"{where}: no such folder '{spec}' (SPEC: preset:NAME, a folder, or KEY=VALUE[,...])")
    return {"model": spec}  # a hub id


def parse_system_specs(cfg: EvaluateConfig) -> list[SystemSpec]:
    """The ``--system NAME=SPEC`` setups (see the option's help), each checked (names, keys, folders, presets)
    without loading anything."""
    import dataclasses

    from x2dfd.modelargs import MLLMOptions
    from x2dfd.presets import preset_expert_specs

    base = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(MLLMOptions)} | {"adapter": None, "preset": None}
    out: list[SystemSpec] = []
    for arg in cfg.system:
        name, eq, spec = arg.partition("=")
        name, spec = name.strip(), spec.strip()
        if not eq or not spec or not _SYSTEM_NAME.match(name):
            raise UsageError(f"--system '{arg}': give NAME=SPEC, NAME made of letters, digits and . _ + - "
                             "(e.g. --system release=preset:x2dfd-release)")
        if any(s.name == name for s in out):
            raise UsageError(f"--system: the name '{name}' is used twice; give each system its own name")
        options = MLLMOptions(**(base | _spec_overrides(name, spec)))
        if cfg.no_expert:
            experts = []
        elif cfg.expert:
            experts = list(cfg.expert)
        else:
            experts = preset_expert_specs(options)
        out.append(SystemSpec(name, spec, options, experts))
    return out


# ------------------------------------------------------------------------------------------------ data
@dataclass(frozen=True)
class Item:
    path: str
    label: int  # 0 real, 1 fake
    video_id: str | None = None
    source: str | None = None


def items_from_dataset(ds) -> list[Item]:
    return [Item(r["path"], int(r["label"]), r.get("video_id"), r.get("source")) for r in ds]


def load_items(data: str, split: str = "test", compression: str = "c23", data_root: str | None = None,
               per_class: int | None = None, seed: int = 0, require_both: bool = True,
               frames_per_video: int | None = None) -> list[Item]:
    """DATA as items (one per labelled file, duplicates of a path dropped); both classes required.
    ``frames_per_video``: at most that many frame images per video_id (:func:`cap_frames`), before ``per_class``."""
    from x2dfd.dataset import balanced_sample, load_labelled

    ds = load_labelled(data, split=split, compression=compression, root=data_root)
    if frames_per_video is not None:
        ds = cap_frames(ds, frames_per_video, seed)
    if per_class is not None:
        ds = balanced_sample(ds, per_class=per_class, seed=seed)
    items, seen = [], {}
    for item in items_from_dataset(ds):
        if item.path in seen:
            if seen[item.path] != item.label:
                raise UsageError(f"DATA '{data}': '{item.path}' is listed as both real and fake")
            continue
        seen[item.path] = item.label
        items.append(item)
    check_groups(items, data)
    if require_both:
        n_fake = sum(i.label for i in items)
        if n_fake in (0, len(items)):
            raise UsageError(f"DATA '{data}' has only {'fake' if n_fake else 'real'} items ({len(items)}); the metrics "
                             "need both real and fake items (add the other class or another manifest)")
    return items


def cap_frames(ds, frames_per_video: int, seed: int):
    """``--frames-per-video``: rows of frame images sharing a video_id cut to at most ``frames_per_video``, evenly spread
    from a seeded offset (:func:`x2dfd.dataset.sample_frames`, the sampler assess and finetune use); rows keep their
    order. Video files stay one item each (the pipeline samples ``--frames`` of their frames)."""
    from x2dfd.dataset import sample_frames
    from x2dfd.inputs import media_kind

    paths = ds["path"]
    videos = [media_kind(p) == "video" for p in paths]
    images = [i for i, v in enumerate(videos) if not v]
    kept = set(sample_frames(ds.select(images), frames_per_video, seed)["path"]) if images else set()
    return ds.select([i for i, (p, v) in enumerate(zip(paths, videos)) if v or p in kept])


def check_groups(items: list[Item], where: str) -> None:
    labels: dict[str, set[int]] = defaultdict(set)
    for i in items:
        if i.video_id is not None:
            labels[i.video_id].add(i.label)
    mixed = sorted(v for v, ls in labels.items() if len(ls) > 1)
    if mixed:
        raise UsageError(f"DATA '{where}': video_id '{mixed[0]}' has both real and fake frames "
                         f"({len(mixed)} such videos); one video has one label")


def group_key(item: Item) -> str:
    """The video an item belongs to: its video_id, else the video file itself, else the image alone."""
    if item.video_id is not None:
        return f"video_id:{item.video_id}"
    return f"file:{item.path}"


# ------------------------------------------------------------------------------------------ conditions
@dataclass
class Condition:
    name: str  # "clean" | "jpeg:90" ...
    slug: str  # file-name-safe
    perturbation: Any = None  # x2dfd.perturb.Perturbation | None

    def describe(self) -> dict[str, Any] | None:
        return self.perturbation.describe() if self.perturbation is not None else None


def conditions_for(cfg: EvaluateConfig) -> list[Condition]:
    from x2dfd.perturb import parse_perturbations

    return [Condition("clean", "clean")] + [Condition(p.name, p.slug, p) for p in
                                            parse_perturbations(cfg.perturb, cfg.seed)]


def settings_hash(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:10]


def build_explainer(cfg: EvaluateConfig):
    """The pipeline ``cfg`` asks for: the MLLM (unless --mllm none) and the experts, ``NAME=WEIGHTS`` loading
    those weights instead of the expert's default (:func:`x2dfd.api.build_explainer`)."""
    from x2dfd.api import build_explainer as build

    experts = [] if cfg.no_expert else (cfg.expert or None)
    return build(None if cfg.mllm == "none" else cfg, experts, cfg, device=cfg.device)


def run_settings(cfg: EvaluateConfig, explainer, condition: Condition, options=None) -> dict[str, Any]:
    """Everything a cached record depends on (a change starts a new cache file instead of mixing). ``options``: the
    MLLM options of a ``--system`` (default: the command line's)."""
    o = cfg if options is None else options
    return {
        "model": explainer.model_name, "adapter": explainer.adapter,
        "revision": o.revision if explainer.mllm is not None else None,
        "dtype": o.dtype if explainer.mllm is not None else None,
        "quantization": (o.load_in_4bit, o.load_in_8bit) if explainer.mllm is not None else None,
        "template_version": explainer.template_version,
        "experts": [[e.name, (e.info() or {}).get("sha256") or (e.info() or {}).get("weights")] for e in explainer.experts],
        "face_crop": cfg.face_crop, "align": cfg.align, "face_scale": cfg.face_scale,
        "min_face_score": cfg.min_face_score, "frames": cfg.frames, "max_new_tokens": cfg.max_new_tokens,
        "threshold": cfg.threshold, "aggregate": cfg.aggregate, "topk": cfg.topk,
        "perturbation": condition.describe(),
    }


def _sha(path: str) -> str | None:
    from x2dfd.media import file_sha256

    try:
        return file_sha256(path)
    except OSError:
        return None


def run_condition(explainer, paths: list[str], condition: Condition, cache_path: Path, hashes: dict[str, str | None],
                  cue_scorer=None, quiet: bool = False, label: str | None = None) -> dict[str, Record]:
    """Records of ``paths`` under ``condition``: those in ``cache_path`` are reused, the rest computed through
    the pipeline (with ``condition``'s perturbation as its transform) and appended, one flushed line each."""
    from x2dfd.explain import OutputLock

    with OutputLock(cache_path):  # a second evaluate on the same --out refuses instead of interleaving lines
        return _run_condition(explainer, paths, condition, cache_path, hashes, cue_scorer, quiet, label)


def _run_condition(explainer, paths: list[str], condition: Condition, cache_path: Path, hashes: dict[str, str | None],
                   cue_scorer=None, quiet: bool = False, label: str | None = None) -> dict[str, Record]:
    from tqdm.auto import tqdm

    from x2dfd.explain import RecordWriter, read_records

    expert_names = {e.name for e in explainer.experts}
    wanted = set(paths)

    def done(r: Record) -> bool:
        if r.path not in wanted or r.sha256 != hashes.get(r.path):
            return False
        if r.p_fake is not None and not expert_names <= set(r.experts):
            return False
        return cue_scorer is None or r.p_fake is None or bool(r.cues) or not r.explanation

    have = {r.path: r for r in read_records(cache_path) if done(r)}
    todo = [p for p in paths if p not in have]
    tag = condition.name if label is None else f"{label}, {condition.name}"
    if todo and not quiet and have:
        print(f"evaluate[{tag}]: {len(have)} items cached in {cache_path}, {len(todo)} to go", file=sys.stderr)
    if not todo:
        return have
    explainer.transform = condition.perturbation
    writer = RecordWriter(cache_path)
    bar = tqdm(total=len(todo), unit="item", desc=f"evaluate[{tag}]", disable=quiet or len(todo) < 2,
               file=sys.stderr)
    try:
        for record, artifacts in explainer.run_with_artifacts(todo, heatmaps=False):
            if cue_scorer is not None and record.p_fake is not None and artifacts.face is not None \
                    and record.explanation:
                try:
                    record.cues = score_cues(cue_scorer, artifacts.face)
                except Exception as err:  # noqa: BLE001 - per-item boundary: the verdict stands, the cue check skips it
                    print(f"evaluate: cue scoring failed on '{record.path}': {type(err).__name__}: {err}",
                          file=sys.stderr)
            writer.write(record)
            have[record.path] = record
            bar.update(1)
    finally:
        bar.close()
        writer.close()
        explainer.transform = None
    return have


def score_cues(cue_scorer, face) -> list[dict[str, Any]]:
    """Every cue's P(yes) on ``face``, highest first (what the grounding check compares mentions with)."""
    p_yes = cue_scorer.score_image(face)
    cues = cue_scorer.cues
    order = sorted(range(len(cues)), key=lambda i: -float(p_yes[i]))
    return [{"id": cues[i].id, "phrase": cues[i].present, "p_yes": round(float(p_yes[i]), 5)} for i in order]


# ------------------------------------------------------------------------- shared crops (--system runs)
class StoredCrop:
    """A face crop read back from the prepared store: the same pixels (lossless PNG) and face info."""

    def __init__(self, image, info: dict[str, Any] | None):
        self.image = image
        self._info = info
        self.face = True if info is not None else None  # the pipeline only asks whether there was a face
        self.landmarks = _crop_landmarks(info)  # as FaceCrop.landmarks: what the evidence names regions by

    def info(self) -> dict[str, Any] | None:
        return json.loads(json.dumps(self._info)) if self._info is not None else None


def _crop_landmarks(info: dict[str, Any] | None):
    """The 68 landmarks in crop pixels, from the stored face info (source landmarks, crop box, crop size); None
    without landmarks or for an eye-levelled (rotated) crop, whose mapping the info does not hold."""
    import numpy as np

    if not info or info.get("landmarks") is None or info.get("aligned") or not info.get("crop_box"):
        return None
    x0, y0, x1, y1 = info["crop_box"]
    w, h = info.get("crop_size") or (x1 - x0, y1 - y0)
    if x1 <= x0 or y1 <= y0:
        return None
    pts = np.asarray(info["landmarks"], dtype=np.float32)
    return (pts - np.array([x0, y0], np.float32)) * np.array([w / (x1 - x0), h / (y1 - y0)], np.float32)


class PreparedStore:
    """Decode + face crop + expert scores of each item, computed once per condition and shared by every
    ``--system``: ``prepared/<condition>.<hash>/units.jsonl`` (one line per item) and ``crops/*.png``."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.index = folder / "units.jsonl"
        self.units: dict[str, dict[str, Any]] = {}

    def load(self, hashes: dict[str, str | None]) -> None:
        self.units = {}
        if not self.index.is_file():
            return
        data = self.index.read_bytes()
        if data and not data.endswith(b"\n"):  # a line torn by an interrupted run: cut it, its item is redone
            data = data[: data.rfind(b"\n") + 1]
            with self.index.open("r+b") as fh:
                fh.truncate(len(data))
        for line in data.decode("utf-8", "replace").splitlines():
            try:
                u = json.loads(line)
            except ValueError:
                continue  # a torn last line of an interrupted run: that item is prepared again
            if not isinstance(u, dict) or u.get("sha256") != hashes.get(u.get("path")):
                continue
            if all((self.folder / s["file"]).is_file() for s in u.get("samples", [])):
                self.units[u["path"]] = u

    def add(self, unit, fh) -> None:
        """Store a prepared pipeline unit (crops as PNG first, then its index line, flushed)."""
        key = hashlib.sha256(unit.record.path.encode("utf-8", "surrogateescape")).hexdigest()[:20]
        samples = []
        for k, smp in enumerate(unit.samples):
            name = f"crops/{key}_{k}.png"
            tmp = self.folder / (name + ".tmp")
            smp.crop.image.save(tmp, format="PNG", compress_level=1)
            os.replace(tmp, self.folder / name)
            samples.append({"file": name, "face": smp.crop.info() if smp.crop.face is not None else None,
                            "face_index": smp.face_index, "experts": dict(smp.experts), "error": smp.error,
                            "timings": dict(smp.timings),
                            "frame": None if smp.frame is None else {"index": smp.frame.index,
                                                                     "time_s": smp.frame.time_s}})
        r = unit.record
        entry = {"path": r.path, "sha256": r.sha256, "kind": r.kind, "media": r.media, "error": r.error,
                 "timings": dict(r.timings), "frame_errors": unit.frame_errors, "samples": samples}
        fh.write(json.dumps(entry, allow_nan=False) + "\n")
        fh.flush()
        self.units[r.path] = entry

    def expert_record(self, path: str) -> Record | None:
        """The experts' scores of an item as a record (``frame_units`` reads expert systems from it)."""
        u = self.units.get(path)
        if u is None:
            return None
        rec = Record(path=path, kind=u["kind"], sha256=u["sha256"], error=u["error"])
        if u["error"] is not None or not u["samples"]:
            return rec

        def mean(scores: dict[str, float | None]) -> float | None:
            vals = [v for v in scores.values() if v is not None]
            return sum(vals) / len(vals) if vals else None

        if u["kind"] == "video":
            rec.frames = list(u["frame_errors"]) + [{"index": s["frame"]["index"], "p_fake": mean(s["experts"]),
                                                     "experts": dict(s["experts"])} for s in u["samples"]]
            rec.frames.sort(key=lambda f: f["index"])
            rec.p_fake = mean({str(f["index"]): f["p_fake"] for f in rec.frames})
        else:
            s = u["samples"][0]
            rec.experts = dict(s["experts"])
            rec.p_fake = mean(s["experts"])
        return rec


def _preparer_class():
    from x2dfd.pipeline import Explainer

    class Preparer(Explainer):
        """The pipeline's own decode + face crop (worker threads) and expert pass, without an MLLM: yields each
        prepared unit (crops and expert scores) instead of records."""

        def __init__(self, experts: list, options, transform=None):  # noqa: D107 - no MLLM, maybe no expert
            super().__init__(None, list(experts) or [None], options, transform)  # (no expert is fine here)
            self.experts = list(experts)

        def _finish_chunk(self, units, heatmaps):
            samples = [s for u in units if u.record.error is None for s in u.samples]
            bs = self.options.batch_size
            if self.experts:
                for i in range(0, len(samples), bs):
                    self._score_experts(samples[i: i + bs])
            for unit in units:
                yield unit, None

    return Preparer


def _replay_class():
    from x2dfd.pipeline import Explainer, _Sample
    from x2dfd.media import VideoFrame

    class ReplayExplainer(Explainer):
        """An MLLM system fed from the prepared store: the stored crops (and expert scores) instead of decoding and
        detecting again; everything after (prompt, MLLM, records, video aggregation) is the pipeline's own."""

        def __init__(self, mllm, experts: list, options, store: PreparedStore):
            super().__init__(mllm, experts, options)
            self.store = store
            self._names = {e.name for e in experts}

        def _prepare_any(self, item, n):
            from PIL import Image

            path = os.fspath(item)
            u = self.store.units.get(path)
            unit = self._new_unit(path, u["kind"] if u else "image")
            if u is None:
                unit.record.error = f"'{path}': not prepared (internal error)"
                return unit
            rec = unit.record
            rec.sha256, rec.media, rec.error = u["sha256"], u["media"], u["error"]
            rec.timings.update(u["timings"])
            unit.frame_errors = [dict(f) for f in u["frame_errors"]]
            for s in u["samples"]:
                with Image.open(self.store.folder / s["file"]) as im:
                    image = im.copy()
                frame = None if s["frame"] is None else VideoFrame(s["frame"]["index"], s["frame"]["time_s"], None)
                unit.samples.append(_Sample(crop=StoredCrop(image, s["face"]), face_index=s["face_index"], frame=frame,
                                            experts={k: v for k, v in s["experts"].items() if k in self._names},
                                            error=s["error"], timings=dict(s["timings"])))
            return unit

        def _score_experts(self, samples, heatmaps=False):
            return  # scored once, in the preparation pass

    return ReplayExplainer


def prepare_condition(preparer, paths: list[str], condition: Condition, store: PreparedStore,
                      hashes: dict[str, str | None], quiet: bool = False) -> None:
    """Decode, crop and score with the experts every path the store lacks (under ``condition``)."""
    from tqdm.auto import tqdm

    from x2dfd.explain import OutputLock

    with OutputLock(store.index):
        store.load(hashes)
        todo = [p for p in paths if p not in store.units]
        if not todo:
            return
        (store.folder / "crops").mkdir(parents=True, exist_ok=True)
        preparer.transform = condition.perturbation
        bar = tqdm(total=len(todo), unit="item", desc=f"evaluate[{condition.name}] crops+experts",
                   disable=quiet or len(todo) < 2, file=sys.stderr)
        try:
            with store.index.open("a", encoding="utf-8") as fh:
                for unit, _ in preparer.run_with_artifacts(todo, heatmaps=False):
                    store.add(unit, fh)
                    bar.update(1)
        finally:
            bar.close()
            preparer.transform = None


# ------------------------------------------------------------------------------------------ score table
@dataclass
class Unit:
    """One scored unit at one level: a frame (image or video frame) or a video (group of frames)."""

    key: str
    label: int
    source: str | None
    group: str
    item_paths: tuple[str, ...]
    scores: dict[str, float | None] = field(default_factory=dict)


def components(explainer_mllm: bool, expert_names: list[str]) -> list[str]:
    return (["mllm"] if explainer_mllm else []) + [f"expert:{n}" for n in expert_names]


def frame_units(items: list[Item], records: dict[str, Record], comps: list[str]) -> list[Unit]:
    """Frame level: one unit per image item, one per sampled frame of a video file (no face: no scores)."""
    units = []
    for item in items:
        r = records.get(item.path)
        g = group_key(item)
        if r is not None and r.kind == "video" and r.frames:
            for f in r.frames:
                units.append(Unit(f"{item.path}#{f.get('index')}", item.label, item.source, g, (item.path,),
                                  _component_scores(comps, f.get("p_fake"), f.get("experts") or {})))
            continue
        if r is None or r.p_fake is None:
            scores = {c: None for c in comps}
        else:
            scores = _component_scores(comps, r.p_fake, r.experts)
        units.append(Unit(item.path, item.label, item.source, g, (item.path,), scores))
    return units


def _component_scores(comps: list[str], p_fake, experts: dict) -> dict[str, float | None]:
    out = {}
    for c in comps:
        v = p_fake if c == "mllm" else experts.get(c.split(":", 1)[1])
        out[c] = None if v is None or not math.isfinite(float(v)) else float(v)
    return out


def add_fusions(units: list[Unit], comps: list[str], logistic=None) -> None:
    from x2dfd.fusion import mean_fusion

    if len(comps) < 2:
        return
    rows = [[u.scores.get(c) for c in comps] for u in units]
    for u, p in zip(units, mean_fusion(rows)):
        u.scores["fusion:mean"] = p
    if logistic is not None:
        for u, p in zip(units, logistic.predict(rows)):
            u.scores["fusion:logistic"] = p


def video_units(frames: list[Unit], method: str, k: int) -> list[Unit]:
    """Video level: frames grouped by video, each system's frame p_fake aggregated (None frames ignored)."""
    from x2dfd.media import aggregate_frames

    groups: dict[str, list[Unit]] = {}
    for u in frames:
        groups.setdefault(u.group, []).append(u)
    out = []
    for g, us in groups.items():
        systems = list(us[0].scores)
        scores = {s: aggregate_frames([u.scores.get(s) for u in us], method, k=k) for s in systems}
        paths = tuple(dict.fromkeys(p for u in us for p in u.item_paths))
        out.append(Unit(g, us[0].label, us[0].source, g, paths, scores))
    return out


def has_video_level(frames: list[Unit]) -> bool:
    return len({u.group for u in frames}) < len(frames)


# -------------------------------------------------------------------------------------------- fit split
@dataclass
class FitPlan:
    mode: str  # "none" | "fraction" | "source" | "external" | "all"
    description: str
    fit_paths: set[str] = field(default_factory=set)
    extra_items: list[Item] = field(default_factory=list)  # fit items that are not in DATA
    report_paths: set[str] = field(default_factory=set)
    notes: list[str] = field(default_factory=list)

    @property
    def in_sample(self) -> bool:
        return self.mode == "all"


def plan_fit(cfg: EvaluateConfig, items: list[Item]) -> FitPlan:
    """Which items fit the logistic fusion and which are reported; see the module docstring."""
    import numpy as np

    spec = cfg.fit_split
    everything = {i.path for i in items}
    if spec is None:
        return FitPlan("none", "no logistic fusion (no --fit-split)", report_paths=everything)
    if spec == "all":
        return FitPlan("all", f"all {len(items)} reported items (in-sample: optimistic, as asked by --fit-split all)",
                       fit_paths=set(everything), report_paths=everything,
                       notes=["fusion:logistic is fitted on the items it is reported on (--fit-split all): optimistic"])
    try:
        fraction = float(spec)
    except ValueError:
        fraction = None
    if fraction is not None:
        if not 0.0 < fraction < 1.0:
            raise UsageError(f"--fit-split {spec}: a fraction must be in (0, 1)")
        rng = np.random.default_rng(cfg.seed)
        fit = set()
        for label in (0, 1):
            groups = sorted({group_key(i) for i in items if i.label == label})
            n = int(round(fraction * len(groups)))
            chosen = set(rng.permutation(len(groups))[:n].tolist())
            fit |= {groups[j] for j in chosen}
        fit_paths = {i.path for i in items if group_key(i) in fit}
        return FitPlan("fraction", f"a seeded class-stratified {fraction:g} of DATA's videos/images "
                       f"({len(fit_paths)} items, seed {cfg.seed}); every system is reported on the other "
                       f"{len(everything) - len(fit_paths)}", fit_paths=fit_paths, report_paths=everything - fit_paths)
    if spec.startswith(("source:", "source=")):
        names = {s.strip() for s in spec.split(spec[6], 1)[1].split(",") if s.strip()}
        sources = sorted({i.source for i in items if i.source is not None})
        unknown = sorted(names - set(sources))
        if unknown or not names:
            raise UsageError(f"--fit-split {spec}: unknown source(s) {', '.join(unknown) or '(none given)'}. "
                             f"Available: {', '.join(sources) or '(DATA has no source column)'}.")
        fit_paths = {i.path for i in items if i.source in names}
        return FitPlan("source", f"DATA items of source {', '.join(sorted(names))} ({len(fit_paths)} items); every "
                       f"system is reported on the other {len(everything) - len(fit_paths)}", fit_paths=fit_paths,
                       report_paths=everything - fit_paths)
    # a split of the same DeepfakeBench JSON, or another DATA
    is_json = Path(cfg.data).suffix.lower() == ".json" and Path(cfg.data).is_file()
    if Path(spec).exists():
        source, extra = spec, load_items(spec, per_class=None, seed=cfg.seed, require_both=False,
                                         frames_per_video=cfg.frames_per_video)
        what = f"the labelled data '{spec}'"
    elif is_json and not any(c in spec for c in "/\\."):
        source, extra = spec, load_items(cfg.data, split=spec, compression=cfg.compression, data_root=cfg.data_root,
                                         seed=cfg.seed, require_both=False, frames_per_video=cfg.frames_per_video)
        what = f"split '{spec}' of '{cfg.data}'"
    else:
        raise UsageError(f"--fit-split '{spec}' is neither a fraction in (0, 1), source:NAME[,NAME], all, an existing "
                         "DATA path, nor a split name of a DeepfakeBench JSON DATA")
    overlap = [i for i in extra if i.path in everything]
    extra = [i for i in extra if i.path not in everything]
    plan = FitPlan("external", f"{what} ({len(extra)} items); all of DATA is reported", fit_paths={i.path for i in extra},
                   extra_items=extra, report_paths=everything)
    if overlap:
        plan.notes.append(f"{len(overlap)} file(s) of the fit set {source!r} are also in DATA and were left out of the fit")
    return plan


def fit_fusion(cfg: EvaluateConfig, plan: FitPlan, frames: list[Unit], comps: list[str]):
    """The logistic fusion fitted at frame level on the plan's fit units (clean condition), or None."""
    from x2dfd.fusion import fit_logistic

    if plan.mode == "none" or len(comps) < 2:
        return None
    fit_units = [u for u in frames if u.item_paths[0] in plan.fit_paths]
    model = fit_logistic([[u.scores.get(c) for c in comps] for u in fit_units], [u.label for u in fit_units],
                         names=comps, l2=cfg.fusion_l2)
    model.fit_on = plan.description
    model.extra = {"mode": plan.mode, "in_sample": plan.in_sample, "level": "frame", "condition": "clean"}
    return model


# ------------------------------------------------------------------------------------------------ metrics
def metric_block(units: list[Unit], system: str, cfg: EvaluateConfig, groups: bool) -> dict[str, Any]:
    """Counts and the metrics (value and interval) of one system on ``units``; an ``error`` when undefined."""
    from x2dfd.metrics import bootstrap_metrics

    fill = UNDETERMINED[cfg.undetermined]
    ys, ss, gs = [], [], []
    excluded = Counter()
    for u in units:
        s = u.scores.get(system)
        if s is None:
            if fill is None:
                excluded[u.label] += 1
                continue
            s = fill
        ys.append(u.label)
        ss.append(s)
        gs.append(u.group)
    block: dict[str, Any] = {"n_real": ys.count(0), "n_fake": ys.count(1), "n_excluded_real": excluded[0],
                             "n_excluded_fake": excluded[1]}
    if 0 not in ys or 1 not in ys:
        block["error"] = (f"only {'fake' if ys else 'no'} items" if 0 not in ys else "only real items") + " scored"
        return block
    try:
        res = bootstrap_metrics(ys, ss, n=cfg.bootstrap, seed=cfg.seed, alpha=1.0 - cfg.ci,
                                groups=gs if groups else None, threshold=cfg.threshold, fprs=FPRS)
    except UsageError as err:
        block["error"] = str(err)
        return block
    for name, (v, lo, hi) in res.items():
        block[name] = {"value": round(v, 6), "ci": None if lo is None else [round(lo, 6), round(hi, 6)]}
    return block


def subsets(units: list[Unit]) -> dict[str, tuple[str, list[Unit]]]:
    """Per-source subsets: name -> (how it is scored, units); only when DATA has two or more sources, and
    only subsets that differ from the whole set (real/ = "original", fake/ = "faceswap" adds nothing)."""
    sources = sorted({u.source for u in units if u.source is not None})
    if len(sources) < 2:
        return {}
    out = {}
    for s in sources:
        mine = [u for u in units if u.source == s]
        labels = {u.label for u in mine}
        if labels == {1}:
            out[s] = ("fakes of this source vs all real items", mine + [u for u in units if u.label == 0])
        elif labels == {0}:
            out[s] = ("reals of this source vs all fake items", mine + [u for u in units if u.label == 1])
        else:
            out[s] = ("this source's real and fake items", mine)
    return {k: v for k, v in out.items() if len(v[1]) < len(units)}


def coverage(units: list[Unit], systems: list[str]) -> dict[str, Any]:
    """Per class: units and units with a score from at least one system (no face / undecodable otherwise)."""
    out = {}
    for label, name in ((0, "real"), (1, "fake")):
        mine = [u for u in units if u.label == label]
        scored = sum(any(u.scores.get(s) is not None for s in systems) for u in mine)
        out[name] = {"n": len(mine), "scored": scored, "rate": round(scored / len(mine), 4) if mine else None}
    return out


def evaluate_level(units: list[Unit], systems: list[str], cfg: EvaluateConfig, groups: bool,
                   paired: bool = False) -> dict[str, Any]:
    subs = subsets(units)
    result = {"coverage": coverage(units, systems), "systems": {}}
    for system in systems:
        entry = {"all": metric_block(units, system, cfg, groups)}
        if subs:
            entry["by_source"] = {name: {"scored_as": how, **metric_block(us, system, cfg, groups)}
                                  for name, (how, us) in subs.items()}
        result["systems"][system] = entry
    if paired and len(systems) > 1:
        result["paired_auc"] = paired_auc(units, systems, cfg, groups)
    return result


def paired_auc(units: list[Unit], systems: list[str], cfg: EvaluateConfig, groups: bool) -> dict[str, Any]:
    """AUC of every system minus the first one's (the MLLM, or the first expert), on the units both scored,
    with a paired bootstrap interval (the same resamples for both): is a stage's gain more than noise?"""
    import numpy as np

    from x2dfd.metrics import rank_auc, roc_auc

    ref = systems[0]
    out: dict[str, Any] = {"reference": ref, "deltas": {}}
    rng_seed = cfg.seed
    for system in systems[1:]:
        both = [u for u in units if u.scores.get(ref) is not None and u.scores.get(system) is not None]
        y = np.array([u.label for u in both])
        if len(set(y.tolist())) < 2:
            out["deltas"][system] = {"error": "the two systems share no scored items of both classes"}
            continue
        a = np.array([u.scores[ref] for u in both])
        b = np.array([u.scores[system] for u in both])
        delta = roc_auc(y, b) - roc_auc(y, a)
        entry: dict[str, Any] = {"delta_auc": round(delta, 6), "n": len(both), "ci": None}
        if cfg.bootstrap:
            rng = np.random.default_rng(rng_seed)
            keys = [u.group for u in both] if groups else list(range(len(both)))
            clusters: list[list[np.ndarray]] = []
            for label in (1, 0):
                members: dict = {}
                for i, (k, yy) in enumerate(zip(keys, y)):
                    if yy == label:
                        members.setdefault(k, []).append(i)
                clusters.append([np.asarray(v) for v in members.values()])
            values = np.empty(cfg.bootstrap)
            for r in range(cfg.bootstrap):
                idx = np.concatenate([c[j] for c in clusters for j in rng.integers(0, len(c), len(c))])
                values[r] = rank_auc(y[idx], b[idx]) - rank_auc(y[idx], a[idx])  # both classes in every replicate
            alpha = 1.0 - cfg.ci
            lo, hi = np.quantile(values, [alpha / 2, 1 - alpha / 2])
            entry["ci"] = [round(float(lo), 6), round(float(hi), 6)]
        out["deltas"][system] = entry
    return out


# ---------------------------------------------------------------------------------------- explanations
def stated_verdict(text: str | None) -> str | None:
    """The verdict an explanation states first ("This image is real/fake"), or None."""
    if not text:
        return None
    m = VERDICT.search(text)
    return m.group(1).lower() if m else None


def _norm(text: str) -> str:
    return " " + " ".join(re.sub(r"[^a-z0-9]+", " ", text.lower()).split()) + " "


def mentioned_cues(text: str | None, bank) -> tuple[list[str], list[str]]:
    """(ids whose ``present`` phrase the text contains, ids whose ``absent`` phrase it contains); case,
    punctuation and spacing ignored. A cue whose both phrases match counts for the longer one."""
    if not text:
        return [], []
    t = _norm(text)
    present, absent = [], []
    for cue in bank:
        p, a = _norm(cue.present), _norm(cue.absent)
        hit_p, hit_a = p in t, a in t
        if hit_p and hit_a:
            hit_p, hit_a = len(p) >= len(a), len(a) > len(p)
        if hit_p:
            present.append(cue.id)
        elif hit_a:
            absent.append(cue.id)
    return present, absent


def explanation_checks(items: list[Item], records: dict[str, Record], bank, top_k: int) -> dict[str, Any] | None:
    """Verdict agreement (stated verdict vs p_fake's label, and vs the truth) and, where the records carry
    cue scores, cue grounding (mentioned cues vs the top-k cues by P(yes) on the face)."""
    explained = [(i, records[i.path]) for i in items if i.path in records and records[i.path].explanation
                 and records[i.path].p_fake is not None]
    if not explained:
        return None
    stated = [(i, r, stated_verdict(r.explanation)) for i, r in explained]
    with_verdict = [(i, r, v) for i, r, v in stated if v is not None]
    agree = [r.label == v for _, r, v in with_verdict]
    truth = [(v == "fake") == (i.label == 1) for i, _, v in with_verdict]
    out: dict[str, Any] = {
        "n_explained": len(explained),
        "verdict_stated": len(with_verdict),
        "no_verdict_rate": round(1 - len(with_verdict) / len(explained), 4),
        "agree_with_p_fake_rate": round(sum(agree) / len(agree), 4) if agree else None,
        "verdict_correct_rate": round(sum(truth) / len(truth), 4) if truth else None,
        "disagreements": [r.path for (_, r, v), ok in zip(with_verdict, agree) if not ok][:20],
        "no_verdict_examples": [r.path for _, r, v in stated if v is None][:5],
    }
    if bank is None:
        return out
    scored = [(i, r) for i, r in explained if r.cues]
    if not scored:
        return out
    n_cues = len(scored[0][1].cues)
    k = min(top_k, n_cues)
    hits = mentions = absent_total = absent_consistent = absent_in_top = items_with_mention = 0
    rank_pcts: list[float] = []
    for _, r in scored:
        order = [c["id"] for c in r.cues]
        p_yes = {c["id"]: float(c["p_yes"]) for c in r.cues}
        top = set(order[:k])
        rank = {cid: n for n, cid in enumerate(order)}
        present, absent = mentioned_cues(r.explanation, bank)
        present = [c for c in present if c in rank]
        absent = [c for c in absent if c in rank]
        items_with_mention += bool(present or absent)
        mentions += len(present)
        hits += len(set(present) & top)
        rank_pcts += [1.0 - rank[c] / max(1, len(order) - 1) for c in present]
        absent_total += len(absent)
        absent_consistent += sum(p_yes[c] < 0.5 for c in absent)
        absent_in_top += sum(c in top for c in absent)
    out["cue_grounding"] = {
        "n_items": len(scored), "n_cues": n_cues, "top_k": k,
        "items_mentioning_a_cue_rate": round(items_with_mention / len(scored), 4),
        "present_mentions": mentions,
        "precision_at_k": round(hits / mentions, 4) if mentions else None,
        "recall_at_k": round(hits / (k * len(scored)), 4),
        "chance_precision": round(k / n_cues, 4),
        "mean_rank_percentile_of_mentioned": round(sum(rank_pcts) / len(rank_pcts), 4) if rank_pcts else None,
        "absent_mentions": absent_total,
        "absent_consistent_rate": round(absent_consistent / absent_total, 4) if absent_total else None,
        "absent_in_top_k_rate": round(absent_in_top / absent_total, 4) if absent_total else None,
        "definition": ("present_mentions: cues whose 'present' phrase the explanation contains; precision_at_k: share "
                       "of them among the face's top-k cues by P(yes); recall_at_k: share of the top-k cues the "
                       "explanation mentions; chance_precision: k / n_cues; absent_consistent_rate: share of "
                       "'absent' phrases whose cue has P(yes) < 0.5"),
    }
    return out


# ------------------------------------------------------------------------------------------------ driver
def data_fingerprint(items: list[Item], hashes: dict[str, str | None]) -> str:
    lines = sorted(f"{hashes.get(i.path) or 'unreadable:' + i.path}\t{i.label}" for i in items)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def _system_order(comps: list[str], has_logistic: bool) -> list[str]:
    systems = list(comps)
    if len(comps) >= 2:
        systems.append("fusion:mean")
        if has_logistic:
            systems.append("fusion:logistic")
    return systems


@dataclass
class RunRecords:
    """What the pipeline runs produced, in the form the metrics need (one MLLM or several ``--system``)."""

    comps: list[str]  # components: "mllm" or "mllm:NAME"..., then "expert:NAME"...
    frames_for: Any  # (condition name, items) -> list[Unit] with every component's scores
    mllm_records: dict[str, dict[str, dict[str, Record]]]  # system -> condition -> path -> record (MLLM systems)
    cache_files: dict[str, str]  # condition -> records file (the first system's)
    cache_by_system: dict[str, dict[str, str]]  # system -> condition -> records file (--system runs)
    models: dict[str, Any]
    bank: Any = None
    kinds: dict[str, str] = field(default_factory=dict)  # path -> record kind (clean)
    fusions: bool = True
    checks_records: dict[str, dict[str, Record]] = field(default_factory=dict)  # single run: condition -> records
    source: dict[str, Any] | None = None  # --records: the explain run(s) scored, and how they were checked
    clean_records: dict[str, Record] = field(default_factory=dict)  # path -> a clean-run record (face box, size)


def run_evaluate(cfg: EvaluateConfig, explainer=None) -> dict[str, Any]:
    """Everything ``x2dfd evaluate`` does, callable from Python; returns the metrics.json content.
    ``explainer``: an already loaded pipeline (tests, notebooks; not with ``--system``); default: built from ``cfg``."""
    out = cfg.out_dir()
    items = load_items(cfg.data, cfg.split, cfg.compression, cfg.data_root, cfg.per_class, cfg.seed,
                       frames_per_video=cfg.frames_per_video)
    references = match_reference_file(cfg.references, items) if cfg.references else None  # before any model loads
    plan = plan_fit(cfg, items)
    conditions = conditions_for(cfg)
    notes = list(plan.notes)
    if cfg.quiet:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    all_items = items + plan.extra_items
    if cfg.system:
        if explainer is not None:
            raise UsageError("run_evaluate: --system loads its own systems; pass no explainer")
        specs = parse_system_specs(cfg)
        hashes = {i.path: _sha(i.path) for i in all_items}
        run = run_systems(cfg, specs, items, all_items, conditions, hashes, out, notes)
    elif cfg.records:
        if explainer is not None:
            raise UsageError("run_evaluate: --records scores an explain run; pass no explainer")
        hashes = {i.path: _sha(i.path) for i in all_items}
        run = run_from_records(cfg, items, all_items, hashes, out, notes)
    else:
        if explainer is None:
            explainer = build_explainer(cfg)
        hashes = {i.path: _sha(i.path) for i in all_items}
        run = run_single(cfg, explainer, items, all_items, conditions, hashes, out, notes)
    return assemble_metrics(cfg, run, items, all_items, plan, conditions, hashes, notes, references, out)


def run_single(cfg: EvaluateConfig, explainer, items: list[Item], all_items: list[Item], conditions: list[Condition],
               hashes: dict[str, str | None], out: Path, notes: list[str]) -> RunRecords:
    """The classic run: one pipeline (the MLLM, if any, and the experts) over every condition."""
    comps = components(explainer.mllm is not None, [e.name for e in explainer.experts])
    bank = cue_scorer = None
    if cfg.cue_check and explainer.mllm is not None and cfg.max_new_tokens > 0:
        from x2dfd.feature_assessment.cues import load_cues
        from x2dfd.feature_assessment.scoring import CueScorer

        bank = load_cues(cfg.cues or None).cues
        cue_scorer = CueScorer(explainer.mllm, bank, batch_size=cfg.cue_batch_size)
    elif cfg.cue_check and explainer.mllm is not None:
        notes.append("no cue grounding: --max-new-tokens 0 generates no explanations")

    (out / "records").mkdir(parents=True, exist_ok=True)
    per_condition: dict[str, dict[str, Record]] = {}
    cache_files: dict[str, str] = {}
    for cond in conditions:
        h = settings_hash(run_settings(cfg, explainer, cond))
        cache = out / "records" / f"{cond.slug}.{h}.jsonl"
        paths = [i.path for i in (all_items if cond.name == "clean" else items)]
        per_condition[cond.name] = run_condition(explainer, paths, cond, cache, hashes,
                                                 cue_scorer if cond.name == "clean" else None, cfg.quiet)
        cache_files[cond.name] = str(cache.relative_to(out))
    models = {"mllm": explainer.mllm.describe() if explainer.mllm is not None else None,
              "adapter": explainer.adapter, "template_version": explainer.template_version,
              "experts": [e.info() for e in explainer.experts]}
    if getattr(explainer, "expert_check", None) is not None:  # an adapter that records its training experts
        models["adapter_experts"] = explainer.expert_check
    return RunRecords(comps=comps, frames_for=lambda cond, its: frame_units(its, per_condition[cond], comps),
                      mllm_records={"mllm": per_condition} if explainer.mllm is not None else {},
                      cache_files=cache_files, cache_by_system={}, models=models, bank=bank,
                      kinds={p: r.kind for p, r in per_condition["clean"].items()},
                      fusions=True, checks_records=per_condition, clean_records=per_condition["clean"])


# ----------------------------------------------------------------------------------- --records (explain runs)
# Settings of an explain run that change its records and that evaluate states in its protocol: always compared.
RECORDS_PIPELINE_FIELDS = ("threshold", "face_crop", "all_faces", "align", "face_scale", "min_face_score", "frames",
                           "aggregate", "topk")
# What the MLLM was: compared where evaluate's command line names it (not left at its default); else the run's is scored.
RECORDS_MODEL_FIELDS = ("model", "revision", "adapter", "preset", "dtype", "load_in_4bit", "load_in_8bit")


@dataclass
class ExplainRunFile:
    """One ``--records`` file: an ``x2dfd explain`` run's records (with the shard files a killed sharded run left
    beside it) and its resolved config (``RUN.config.json``; None for output written to stdout or by old versions)."""

    path: Path
    files: list[Path]
    records: list[Record]
    info: dict[str, Any] | None
    identity: dict[str, Any]

    @property
    def config(self) -> dict[str, Any]:
        return (self.info or {}).get("config") or {}

    def expert_names(self) -> list[str]:
        """The experts the run loaded (their names), in its order."""
        if self.info is not None and isinstance(self.info.get("experts"), list):
            return [str((e or {}).get("name")) for e in self.info["experts"]]
        if "experts" in self.identity:
            return [str(e).partition("=")[0].strip() for e in self.identity["experts"]]
        return sorted({k for r in self.records if r.p_fake is not None for k in (r.experts or {})})


def read_explain_run(spec: str) -> ExplainRunFile:
    """``--records RUN.jsonl``: the records of RUN and of its leftover shard files, and its run config."""
    import glob

    from x2dfd.explain import _records_identity, config_path, read_records, read_run_config, run_identity

    path = Path(spec).expanduser()
    if not path.is_file():
        raise UsageError(f"--records '{safe(spec)}': no such file (give the --out JSONL of x2dfd explain)")
    shards = sorted(path.parent.glob(f"{glob.escape(path.stem)}.shard-*{glob.escape(path.suffix)}"))
    files = [path] + [s for s in shards if s.is_file()]
    records: list[Record] = []
    for f in files:
        records += read_records(f, repair=False, warn=True)  # a file that is not x2dfd's: one-line UsageError
    if not records:
        raise UsageError(f"--records '{safe(spec)}' holds no records yet")
    info = read_run_config(config_path(path))
    if info is not None and info.get("command") not in (None, "explain"):
        raise UsageError(f"--records '{safe(spec)}': its config was written by x2dfd {info.get('command')}, not by "
                         "x2dfd explain")
    identity = run_identity(info["config"]) if info is not None else _records_identity(records)
    return ExplainRunFile(path, files, records, info, identity)


def safe(text: Any) -> str:
    return terminal_line(text, 300)


def _show(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(map(str, value)) + "]"
    return "null" if value is None else str(value)


def _same_model(a: Any, b: Any) -> bool:
    """The same model/adapter/preset: equal text, or two local paths to the same folder."""
    if a == b:
        return True
    if a is None or b is None:
        return False
    try:
        pa, pb = Path(str(a)).expanduser(), Path(str(b)).expanduser()
        return pa.exists() and pb.exists() and pa.resolve() == pb.resolve()
    except OSError:
        return False


def given_model_settings(cfg: EvaluateConfig) -> dict[str, Any]:
    """The MLLM settings evaluate's command line names (defaults name nothing: the run's are scored)."""
    from x2dfd.modelargs import DEFAULT_MODEL

    given = {"model": cfg.model if cfg.model != DEFAULT_MODEL else None, "revision": cfg.revision,
             "adapter": cfg.adapter, "preset": cfg.preset, "dtype": None if cfg.dtype == "auto" else cfg.dtype,
             "load_in_4bit": True if cfg.load_in_4bit else None, "load_in_8bit": True if cfg.load_in_8bit else None}
    return {k: v for k, v in given.items() if v is not None}


def records_differences(cfg: EvaluateConfig, run: ExplainRunFile) -> list[str]:
    """What differs between an explain run and this evaluate (``name: run X, evaluate Y``); empty when they match."""
    ident, conf = run.identity, run.config
    diffs: list[str] = []

    def differ(name: str, ran: Any, wanted: Any, same=None) -> None:
        if not (same(ran, wanted) if same else ran == wanted):
            diffs.append(f"{name}: run {_show(ran)}, evaluate {_show(wanted)}")

    mllm_run = ident.get("mode") != "expert-only"
    if cfg.mllm != "none" and not mllm_run:
        diffs.append("mode: run expert-only (explain --mllm none), evaluate scores the MLLM (add --mllm none)")
    if run.info is not None:
        for k in RECORDS_PIPELINE_FIELDS:
            differ(k, ident.get(k, conf.get(k)), getattr(cfg, k))
        if cfg.mllm != "none" and mllm_run:
            differ("max_new_tokens", conf.get("max_new_tokens"), cfg.max_new_tokens)
    if cfg.mllm != "none" and mllm_run:
        for k, wanted in given_model_settings(cfg).items():
            if k in ident:
                differ(k, ident[k], wanted, _same_model if k in ("model", "adapter", "preset") else None)
    if cfg.no_expert or cfg.expert:
        wanted_names = [] if cfg.no_expert else [e.partition("=")[0].strip() for e in cfg.expert]
        have = run.expert_names()
        if sorted(have) != sorted(wanted_names):
            diffs.append(f"experts: run {_show(have)}, evaluate {_show(wanted_names)}")
        elif any("=" in e for e in cfg.expert) and run.info is not None:
            diffs += _expert_weight_differences(cfg.expert, run.info.get("experts") or [])
    return diffs


def _expert_weight_differences(specs: list[str], ran: list[dict[str, Any]]) -> list[str]:
    """``--expert NAME=WEIGHTS`` against the weights the run loaded (sha256 from its config); experts are small,
    they are loaded here to read their weights' sha256 (the MLLM never is)."""
    from x2dfd.api import load_experts

    by_name = {str((e or {}).get("name")): e for e in ran}
    out = []
    for spec, expert in zip(specs, load_experts(specs, "cpu")):
        if "=" not in spec:
            continue
        mine = (expert.info() or {}).get("sha256")
        theirs = (by_name.get(expert.name) or {}).get("sha256")
        if mine != theirs:
            out.append(f"expert {expert.name} weights: run sha256 {str(theirs)[:12]}, evaluate sha256 {str(mine)[:12]} "
                       f"({spec.partition('=')[2].strip()})")
    return out


def _resolved(path: str) -> str:
    try:
        return str(Path(path).expanduser().resolve())
    except (OSError, RuntimeError, ValueError):
        return path


def match_records(runs: list[ExplainRunFile], items: list[Item], hashes: dict[str, str | None]
                  ) -> tuple[dict[str, Record], dict[str, Any]]:
    """Each item's record: by its path (resolved) with the file's current sha256, else any record of that content
    (the run named the file another way); the latest one wins (a resumed or sharded run's duplicates). A record
    counts only if it is the run's (its model and adapter; explain's resume rule) and of the largest face."""
    import dataclasses as dc

    by_path: dict[str, list[Record]] = defaultdict(list)
    by_sha: dict[str, list[Record]] = defaultdict(list)
    for run in runs:
        model, adapter = run.identity.get("model"), run.identity.get("adapter")
        for r in run.records:
            if (r.model, r.adapter) != (model, adapter) or r.face_index not in (None, 0):
                continue
            by_path[_resolved(r.path)].append(r)
            if r.sha256 is not None:
                by_sha[r.sha256].append(r)
    found: dict[str, Record] = {}
    stats = {"matched_by_path": 0, "matched_by_content": 0, "missing": [], "changed": 0}
    for item in items:
        if item.path in found:
            continue
        sha = hashes.get(item.path)
        same = [r for r in by_path.get(item.path, []) if r.sha256 == sha]
        if same:
            stats["matched_by_path"] += 1
        elif sha is not None and by_sha.get(sha):
            same = by_sha[sha]
            stats["matched_by_content"] += 1
        else:
            stats["missing"].append(item.path)
            stats["changed"] += bool(by_path.get(item.path))
            continue
        found[item.path] = dc.replace(same[-1], path=item.path)
    return found, stats


def run_from_records(cfg: EvaluateConfig, items: list[Item], all_items: list[Item], hashes: dict[str, str | None],
                     out: Path, notes: list[str]) -> RunRecords:
    """``--records``: the clean condition's results read from explain run(s) (checked against DATA by sha256 and
    against evaluate's settings) instead of computed; no model is loaded. A copy of the matched records (paths as
    DATA names them) becomes ``records/clean.from-records.<hash>.jsonl``: the item report and the failure count read
    it as they read a computed run."""
    from x2dfd.explain import OutputLock, config_path

    runs = [read_explain_run(spec) for spec in cfg.records]
    for run in runs:
        diffs = records_differences(cfg, run)
        if diffs:
            raise UsageError(f"--records '{safe(run.path)}' was made with other settings than this evaluate's "
                             f"({'; '.join(diffs)}); give evaluate the run's settings, or explain again with these")
    for run in runs:  # a run that explain was told to make with other experts than its adapter's: say so here too
        check = (run.info or {}).get("adapter_experts")
        if isinstance(check, dict) and check.get("status", "match") != "match" and not cfg.allow_expert_mismatch:
            raise UsageError(f"--records '{safe(run.path)}' ran other experts than adapter '{safe(check.get('adapter'))}' "
                             f"was trained with (explain --allow-expert-mismatch: {check.get('status')}); add "
                             "--allow-expert-mismatch to score it")
    first = runs[0]
    for run in runs[1:]:
        keys = list(dict.fromkeys(list(first.identity) + list(run.identity)))
        diffs = [f"{k}: {_show(first.identity.get(k))} vs {_show(run.identity.get(k))}" for k in keys
                 if first.identity.get(k) != run.identity.get(k)]
        if sorted(run.expert_names()) != sorted(first.expert_names()):
            diffs.append(f"experts: {_show(first.expert_names())} vs {_show(run.expert_names())}")
        if diffs:
            raise UsageError(f"--records: '{safe(first.path)}' and '{safe(run.path)}' are runs with other settings "
                             f"({'; '.join(diffs)}); score runs made with the same settings together")
    found, stats = match_records(runs, all_items, hashes)
    missing = stats["missing"]
    if missing:
        changed = f" ({stats['changed']} of them changed since: their record has another sha256)" if stats["changed"] else ""
        examples = ", ".join(f"'{safe(Path(p).name)}'" for p in missing[:3])
        what = "DATA items" if len(all_items) == len(items) else "items of DATA and of the --fit-split set"
        raise UsageError(f"--records: {len(missing)} of {len(all_items)} {what} have no record of their file's "
                         f"content in {', '.join(repr(safe(r.path)) for r in runs)}{changed}, e.g. {examples}; explain "
                         f"them with the run's settings into the same --out (it resumes: only what is missing is "
                         f"explained), then evaluate again")

    mllm = cfg.mllm != "none" and first.identity.get("mode") != "expert-only"
    expert_names = [] if cfg.no_expert else first.expert_names()
    comps = components(mllm, expert_names)
    per: dict[str, Record] = {i.path: found[i.path] for i in all_items}
    (out / "records").mkdir(parents=True, exist_ok=True)
    h = settings_hash({"records": [_resolved(str(f)) for r in runs for f in r.files], "identity": first.identity,
                       "data": sorted(f"{p}\t{hashes.get(p)}" for p in per)})
    cache = out / "records" / f"clean.from-records.{h}.jsonl"
    with OutputLock(cache):
        tmp = cache.with_name(cache.name + ".tmp")
        tmp.write_text("".join(r.to_json() + "\n" for r in per.values()), encoding="utf-8")
        os.replace(tmp, cache)

    info = first.info or {}
    last = first.records[-1]
    if mllm:
        models = {"mllm": info.get("mllm") or {"model": first.identity.get("model"),
                                              "adapter": first.identity.get("adapter")},
                  "adapter": first.identity.get("adapter"),
                  "template_version": info.get("template_version") or last.template_version}
    else:
        models = {"mllm": None, "adapter": None, "template_version": None}
    ran = {str((e or {}).get("name")): e for e in info.get("experts") or []}
    models["experts"] = [ran.get(n) or {"name": n} for n in expert_names]
    if mllm and info.get("adapter_experts") is not None:
        models["adapter_experts"] = info["adapter_experts"]
    given = given_model_settings(cfg) if mllm else {}
    checked = ["every item's record carries the sha256 of its file now"]
    unchecked = []
    if first.info is not None:
        checked.append("run settings " + ", ".join(RECORDS_PIPELINE_FIELDS + (("max_new_tokens",) if mllm else ())))
    else:
        unchecked.append("run settings " + ", ".join(RECORDS_PIPELINE_FIELDS) + " (no run config beside the records: "
                         "taken to be evaluate's)")
        print(terminal_line(f"evaluate: --records '{first.path}' has no {config_path(first.path).name} (explain wrote "
                            "to stdout, or an older x2dfd): its face crop, threshold and frame settings cannot be "
                            "checked; they are taken to be evaluate's", 1000), file=sys.stderr)
    checked.append("mode" + (", " + ", ".join(k for k in given if k in first.identity) if given else ""))
    if mllm:
        unchecked += [f"{k} (the run's: {_show(first.identity.get(k))})" for k in RECORDS_MODEL_FIELDS
                      if k not in given and k in first.identity]
    if cfg.expert or cfg.no_expert:
        checked.append("experts")
    else:
        unchecked.append(f"experts (the run's: {_show(expert_names)})")
    source = {
        "files": [str(f) for r in runs for f in r.files],
        "configs": [str(config_path(r.path)) if r.info is not None else None for r in runs],
        "explain_version": [(r.info or {}).get("x2dfd_version") for r in runs],
        "run": {k: v for k, v in first.identity.items()},
        "n_records_read": sum(len(r.records) for r in runs),
        "matched_by_path": stats["matched_by_path"], "matched_by_content": stats["matched_by_content"],
        "checked": checked, "not_checked": unchecked,
        "conditions": "clean only (perturbations and the cue check need the model)",
    }
    what = ", ".join(repr(str(r.path)) for r in runs)
    notes.append(f"clean condition scored from the records of x2dfd explain {what} (no model loaded): "
                 f"{stats['matched_by_path']} items matched by path and file sha256"
                 + (f", {stats['matched_by_content']} by file sha256 only (another path in the run)"
                    if stats["matched_by_content"] else ""))
    if mllm and cfg.max_new_tokens > 0:
        notes.append("no cue grounding: --records loads no model (the cue check scores every cue on each face)")
    return RunRecords(comps=comps, frames_for=lambda cond, its: frame_units(its, per, comps),
                      mllm_records={"mllm": {"clean": per}} if mllm else {},
                      cache_files={"clean": str(cache.relative_to(out))}, cache_by_system={}, models=models,
                      bank=None, kinds={p: r.kind for p, r in per.items()}, fusions=True,
                      checks_records={"clean": per if mllm else {}}, source=source, clean_records=per)


def prepare_settings(cfg: EvaluateConfig, experts: list, condition: Condition) -> dict[str, Any]:
    """Everything a prepared crop and its expert scores depend on."""
    return {"experts": [[e.name, (e.info() or {}).get("sha256") or (e.info() or {}).get("weights")] for e in experts],
            "face_crop": cfg.face_crop, "align": cfg.align, "face_scale": cfg.face_scale,
            "min_face_score": cfg.min_face_score, "frames": cfg.frames, "perturbation": condition.describe(),
            "limits": [cfg.max_pixels, cfg.max_file_mb, cfg.max_video_mb]}


def run_systems(cfg: EvaluateConfig, specs: list[SystemSpec], items: list[Item], all_items: list[Item],
                conditions: list[Condition], hashes: dict[str, str | None], out: Path, notes: list[str]) -> RunRecords:
    """``--system``: decode + face crop + experts once per item and condition (the prepared store), then each MLLM
    system in turn (loaded, run over the stored crops, freed), its records cached per system and condition."""
    import gc

    from x2dfd.api import load_experts
    from x2dfd.experts import DEFAULT_EXPERTS
    from x2dfd.mllm import load_mllm, resolve_device
    from x2dfd.presets import check_recorded_files, compare_with_record, expert_entries, training_record

    device = str(resolve_device(cfg.device))
    wanted: dict[str, str] = {}  # expert name -> spec, over every system
    for spec in specs:
        for e in (list(DEFAULT_EXPERTS) if spec.expert_specs is None else spec.expert_specs):
            name = e.partition("=")[0].strip()
            if name in wanted and wanted[name] != e:
                raise UsageError(f"--system {spec.name}: its expert '{e}' differs from another system's '{wanted[name]}'; "
                                 "every system shares one set of experts (name them with --expert)")
            wanted[name] = e
    trained = {spec.system: r for spec in specs if (r := training_record(spec.options)) is not None}
    named = bool(cfg.expert) or cfg.no_expert
    for spec in specs:  # an adapter's own recorded weights are checked before anything loads (as explain does)
        record = trained.get(spec.system)
        if record is not None and not named and _spec_list(spec) == record.expert_specs():
            _for_system(spec, check_recorded_files, record, cfg.allow_expert_mismatch)
    experts = load_experts(list(wanted.values()), device) if wanted else []
    by_name = {e.name: e for e in experts}
    expert_checks: dict[str, Any] = {}
    for spec in specs:  # the experts every system runs against those its adapter was trained with, before any MLLM loads
        record = trained.get(spec.system)
        if record is not None:
            used = _spec_list(spec)
            expert_checks[spec.system] = _for_system(
                spec, compare_with_record, record, expert_entries([by_name[e.partition("=")[0].strip()] for e in used],
                                                                  used),
                cfg.allow_expert_mismatch, not named and used == record.expert_specs())
    Preparer, ReplayExplainer = _preparer_class(), _replay_class()
    preparer = Preparer(experts, cfg)
    stores: dict[str, PreparedStore] = {}
    for cond in conditions:
        h = settings_hash(prepare_settings(cfg, experts, cond))
        store = PreparedStore(out / "prepared" / f"{cond.slug}.{h}")
        paths = [i.path for i in (all_items if cond.name == "clean" else items)]
        prepare_condition(preparer, paths, cond, store, hashes, cfg.quiet)
        stores[cond.name] = store

    bank = None
    if cfg.cue_check and cfg.max_new_tokens > 0:
        from x2dfd.feature_assessment.cues import load_cues

        bank = load_cues(cfg.cues or None).cues
    elif cfg.cue_check:
        notes.append("no cue grounding: --max-new-tokens 0 generates no explanations")
    (out / "records").mkdir(parents=True, exist_ok=True)
    records: dict[str, dict[str, dict[str, Record]]] = {}
    cache_by_system: dict[str, dict[str, str]] = {}
    described: dict[str, Any] = {}
    for spec in specs:
        own = [by_name[e.partition("=")[0].strip()] for e in
               (list(DEFAULT_EXPERTS) if spec.expert_specs is None else spec.expert_specs)]
        mllm = load_mllm(spec.options)
        try:
            cue_scorer = None
            if bank is not None:
                from x2dfd.feature_assessment.scoring import CueScorer

                cue_scorer = CueScorer(mllm, bank, batch_size=cfg.cue_batch_size)
            records[spec.system], cache_by_system[spec.system] = {}, {}
            for cond in conditions:
                explainer = ReplayExplainer(mllm, own, cfg, stores[cond.name])
                h = settings_hash(run_settings(cfg, explainer, cond, spec.options))
                cache = out / "records" / f"{cond.slug}.{h}.jsonl"
                paths = [i.path for i in (all_items if cond.name == "clean" else items)]
                records[spec.system][cond.name] = run_condition(
                    explainer, paths, cond, cache, hashes, cue_scorer if cond.name == "clean" else None, cfg.quiet,
                    label=spec.system)
                cache_by_system[spec.system][cond.name] = str(cache.relative_to(out))
            described[spec.system] = {
                "spec": spec.spec, "mllm": mllm.describe(), "adapter": spec.options.adapter,
                "preset": getattr(getattr(mllm, "preset", None), "name", None),
                "template_version": explainer.template_version, "experts": [e.name for e in own]}
            if spec.system in expert_checks:
                described[spec.system]["adapter_experts"] = expert_checks[spec.system]
        finally:
            del mllm, cue_scorer
            explainer = None
            gc.collect()
            _empty_device_cache()

    expert_comps = [f"expert:{e.name}" for e in experts]
    comps = [s.system for s in specs] + expert_comps

    def frames_for(cond: str, its: list[Item]) -> list[Unit]:
        merged: dict[str, Unit] = {}
        sources = [(records[s.system][cond], ["mllm"], {"mllm": s.system}) for s in specs]
        expert_recs = {p: r for p in stores[cond].units if (r := stores[cond].expert_record(p)) is not None}
        sources.append((expert_recs, expert_comps, {}))
        for recs, cs, rename in sources:
            for u in frame_units(its, recs, cs):
                tgt = merged.setdefault(u.key, Unit(u.key, u.label, u.source, u.group, u.item_paths, {}))
                for c, v in u.scores.items():
                    tgt.scores[rename.get(c, c)] = v
        for u in merged.values():
            for c in comps:
                u.scores.setdefault(c, None)
        return list(merged.values())

    first = specs[0].system
    models = {"mllm": None, "adapter": None, "template_version": None, "systems": described,
              "experts": [e.info() for e in experts]}
    notes.append(f"{len(specs)} MLLM systems side by side ({', '.join(s.system for s in specs)}) over the same face "
                 "crops and expert scores (decoded, cropped and scored once per item; prepared/ holds them)")
    if len(experts) + len(specs) >= 2:
        notes.append("no fusions with --system (each system's fusion with the experts: run it alone)")
    return RunRecords(comps=comps, frames_for=frames_for, mllm_records=records,
                      cache_files=dict(cache_by_system[first]), cache_by_system=cache_by_system, models=models,
                      bank=bank, kinds={p: u["kind"] for p, u in stores["clean"].units.items()}, fusions=False,
                      clean_records=records[first]["clean"])


def _spec_list(spec: SystemSpec) -> list[str]:
    """The expert specs a system runs (the default set when its SPEC and the command line name none)."""
    from x2dfd.experts import DEFAULT_EXPERTS

    return list(DEFAULT_EXPERTS) if spec.expert_specs is None else list(spec.expert_specs)


def _for_system(spec: SystemSpec, check, *args):
    """``check(*args)`` with its one-line error prefixed by the system it is about."""
    try:
        return check(*args)
    except UsageError as err:
        raise UsageError(f"--system {spec.name}: {err}") from None


def _empty_device_cache() -> None:
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # noqa: BLE001 - freeing memory is best effort
        pass


def match_reference_file(path: str, items: list[Item]) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """``--references``: the file's rows matched to DATA's items; none matching is a one-line error."""
    from x2dfd.textmetrics import load_references, match_references

    refs = load_references(path)
    matched, report = match_references(refs, [i.path for i in items], base=Path(path).expanduser().parent)
    report["file"] = str(path)
    if not matched:
        example = next(iter(refs))
        raise UsageError(f"--references '{path}': none of its {len(refs)} paths matches an item of DATA, by resolved "
                         f"path (relative paths against the file's folder, then the working directory) or by file "
                         f"name (e.g. '{example}')")
    labels = {i.path: i.label for i in items}
    from x2dfd.textmetrics import _label_name

    report["label_conflicts"] = sum(
        1 for p, e in matched.items() if e.get("label") not in (None, "")
        and _label_name(e["label"]) != ("fake" if labels[p] else "real"))
    return matched, report


REFERENCE_CAVEAT = ("DD-VQA's reference answers come from prompts that contain the true label, so they state (leak) "
                    "it: ROUGE-L/BLEU against such references reward a text for echoing the right verdict as much as "
                    "for its reasoning; read them with the verdict accuracy, and compare systems of similar accuracy")


def text_metrics(cfg: EvaluateConfig, run: RunRecords, report_items: list[Item], references, video: bool) -> dict | None:
    """``--references``: per MLLM system, on the reported items it explained (clean run)."""
    from x2dfd.textmetrics import bootstrap_explanation_metrics

    if references is None:
        return None
    matched, report = references
    out: dict[str, Any] = {"references": report, "caveat": REFERENCE_CAVEAT, "systems": {},
                           "definition": "verdict parsed from the text (x2dfd.textmetrics.parse_verdict) vs the true "
                                         "label (no verdict = wrong; F1 of the fake class); agreement: that verdict vs "
                                         f"p_fake >= {cfg.threshold}; ROUGE-L F (rouge-score, stemmed, best reference), "
                                         "corpus BLEU 0-100 (sacrebleu 13a); on the explained items of the report "
                                         "set, clean run; intervals: percentile bootstrap over "
                                         + ("whole videos" if video else "items") + ", stratified by class"}
    for system, by_cond in run.mllm_records.items():
        recs = by_cond["clean"]
        explained = [(i, recs[i.path]) for i in report_items if i.path in recs and recs[i.path].explanation]
        block = bootstrap_explanation_metrics(
            [r.explanation for _, r in explained], [i.label for i, _ in explained], [r.p_fake for _, r in explained],
            [matched[i.path]["references"] if i.path in matched else None for i, _ in explained],
            groups=[group_key(i) for i, _ in explained] if video else None, threshold=cfg.threshold,
            n=cfg.bootstrap, seed=cfg.seed, alpha=1.0 - cfg.ci)
        block["n_unexplained"] = len(report_items) - len(explained)
        out["systems"][system] = block
    return out


def assemble_metrics(cfg: EvaluateConfig, run: RunRecords, items: list[Item], all_items: list[Item], plan: FitPlan,
                     conditions: list[Condition], hashes: dict[str, str | None], notes: list[str], references,
                     out: Path) -> dict[str, Any]:
    comps = run.comps
    fit_frames = run.frames_for("clean", all_items)
    logistic = fit_fusion(cfg, plan, fit_frames, comps) if run.fusions else None
    systems = _system_order(comps, logistic is not None) if run.fusions else list(comps)
    report_items = [i for i in items if i.path in plan.report_paths]
    video = has_video_level(run.frames_for("clean", report_items))
    levels = ["frame", "video"] if video else ["frame"]
    if not video:
        notes.append("no video level: every item is a single image without a video_id")

    results = []
    clean_frames = None
    for cond in conditions:
        frames = run.frames_for(cond.name, report_items)
        if run.fusions:
            add_fusions(frames, comps, logistic)
        if cond.name == "clean":
            clean_frames = frames
        by_level = {"frame": frames}
        if video:
            by_level["video"] = video_units(frames, cfg.aggregate, cfg.topk)
        entry = {"name": cond.name, "perturbation": cond.describe(), "records": run.cache_files[cond.name],
                 "levels": {lv: evaluate_level(us, systems, cfg, groups=(lv == "frame" and video),
                                               paired=cond.name == "clean") for lv, us in by_level.items()}}
        if run.cache_by_system:
            entry["records_by_system"] = {s: files[cond.name] for s, files in run.cache_by_system.items()}
            by_system = {}
            for s, by_cond in run.mllm_records.items():
                checks = explanation_checks(items, by_cond[cond.name], run.bank if cond.name == "clean" else None,
                                            cfg.cue_top_k)
                if checks is not None:
                    by_system[s] = checks
            if by_system:
                entry["explanations_by_system"] = by_system
        else:
            checks = explanation_checks(items, run.checks_records[cond.name],
                                        run.bank if cond.name == "clean" else None, cfg.cue_top_k)
            if checks is not None:
                entry["explanations"] = checks
        results.append(entry)

    for lv in levels:
        cov = results[0]["levels"][lv]["coverage"]
        rates = [cov[c]["rate"] for c in ("real", "fake")]
        if None not in rates and abs(rates[0] - rates[1]) > 0.02:
            notes.append(f"{lv} level, clean: scored {rates[0]:.1%} of real and {rates[1]:.1%} of fake items "
                         f"(no face / undecodable); with --undetermined {cfg.undetermined} this biases the metrics")
    robustness = {lv: {s: {c["name"]: _value(c["levels"][lv]["systems"][s]["all"], "auc") for c in results}
                       for s in systems} for lv in levels}
    explanations = text_metrics(cfg, run, report_items, references, video)
    if explanations is not None:
        rep = explanations["references"]
        if rep["matched_by_file_name"]:
            notes.append(f"--references: {rep['matched_by_file_name']} path(s) matched DATA by file name only "
                         "(their paths did not resolve to a DATA item): check them")
        if rep["unmatched"] or rep["ambiguous_file_name"]:
            notes.append(f"--references: {rep['unmatched']} path(s) match no DATA item and {rep['ambiguous_file_name']} "
                         f"match several by file name; they are not used (e.g. "
                         f"{', '.join(repr(x) for x in (rep['unmatched_examples'] + rep['ambiguous_examples'])[:3])})")
        if rep["label_conflicts"]:
            notes.append(f"--references: {rep['label_conflicts']} path(s) carry a label that contradicts DATA's; "
                         "DATA's label is used")
    crops = crop_check(cfg, items, run.clean_records)
    if crops is not None:
        line = crops.warn(quiet=cfg.quiet)
        if line is not None:
            notes.append(line)
    n_fake = sum(i.label for i in items)
    metrics = {
        "command": "evaluate",
        "x2dfd_version": __version__,
        "created": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "data": {"path": str(cfg.data), "split": cfg.split if Path(cfg.data).suffix.lower() == ".json" else None,
                 "n_items": len(items), "n_real": len(items) - n_fake, "n_fake": n_fake,
                 "n_reported": len(report_items), "per_class_sample": cfg.per_class,
                 "frames_per_video": cfg.frames_per_video,
                 "face_crops": crops.summary() if crops is not None else None,
                 "sources": dict(Counter(i.source or "(none)" for i in items)),
                 "kinds": dict(Counter(run.kinds[i.path] for i in items if i.path in run.kinds)),
                 "fingerprint": data_fingerprint(items, hashes),
                 "fingerprint_method": "sha256 over the sorted lines '<file sha256>\\t<label>' of DATA's items"},
        "models": run.models,
        "protocol": {
            "levels": levels, "face_crop": cfg.face_crop, "face_scale": cfg.face_scale, "align": cfg.align,
            "min_face_score": cfg.min_face_score, "frames_per_video_file": cfg.frames,
            "frames_per_video": cfg.frames_per_video,
            "frames_per_video_kind": ("frame images sharing a video_id: at most frames_per_video, evenly spread from "
                                      f"a seeded offset (seed {cfg.seed}); video files: frames_per_video_file sampled "
                                      "uniformly by the pipeline") if cfg.frames_per_video is not None else
            "frame images: all of them; video files: frames_per_video_file sampled uniformly by the pipeline",
            "video_aggregate": cfg.aggregate if cfg.aggregate != "topk" else f"topk:{cfg.topk}",
            "video_grouping": "video_id, else the video file; a lone image is its own group",
            "threshold": cfg.threshold, "undetermined": cfg.undetermined, "bootstrap": cfg.bootstrap,
            "ci": cfg.ci, "bootstrap_kind": "percentile, stratified by class; frame level resamples whole videos"
            if video else "percentile, stratified by class", "seed": cfg.seed,
            "positive_class": "fake (label 1)", "perturbations_applied_to": "decoded full frame, before face detection",
            "max_new_tokens": cfg.max_new_tokens,
        },
        "systems": systems,
        "fusion": {"mean": "mean of the available p_fake of " + ", ".join(comps)
                   if run.fusions and len(comps) >= 2 else None,
                   "logistic": logistic.to_dict() if logistic is not None else None,
                   "fit_split": cfg.fit_split, "fit_plan": plan.description},
        "conditions": results,
        "robustness_auc": robustness,
        "notes": notes,
    }
    if explanations is not None:
        metrics["explanation_metrics"] = explanations
    if run.source is not None:
        metrics["records_from"] = run.source
    write_outputs(cfg, metrics, clean_frames, out)
    return metrics


def crop_check(cfg: EvaluateConfig, items: list[Item], records: dict[str, Record]):
    """With face cropping on: how many of DATA's items look like existing face crops (the detected face box covers
    most of the picture: a second 1.3x crop pads them with black), from the clean run's records
    (:class:`x2dfd.cropcheck.CropWarner`, the rule assess and finetune apply); None with --no-face-crop."""
    if not cfg.face_crop:
        return None
    from x2dfd.cropcheck import CropWarner

    return CropWarner("x2dfd evaluate", scale=cfg.face_scale).observe_records(
        [records.get(item.path) for item in items], [item.label for item in items])


def _value(block: dict[str, Any], name: str) -> float | None:
    v = block.get(name)
    return v["value"] if isinstance(v, dict) else None


# ------------------------------------------------------------------------------------------------ outputs
def _fmt_metric(block: dict[str, Any], name: str, ci: bool = True) -> str:
    v = block.get(name)
    if not isinstance(v, dict):
        return "–"
    text = f"{v['value']:.4f}"
    if ci and v.get("ci"):
        text += f" [{v['ci'][0]:.4f}, {v['ci'][1]:.4f}]"
    return text


TABLE_COLUMNS = ["condition", "system", "subset", "n_real", "n_fake", "excluded_real", "excluded_fake", "auc",
                 "auc_lo", "auc_hi", "ap", "ap_lo", "ap_hi", "eer", "eer_lo", "eer_hi", "acc", "acc_lo", "acc_hi",
                 "tpr@fpr0.01", "tpr@fpr0.01_lo", "tpr@fpr0.01_hi", "tpr@fpr0.05", "tpr@fpr0.05_lo", "tpr@fpr0.05_hi",
                 "note"]


def table_rows(metrics: dict[str, Any], level: str) -> list[dict[str, Any]]:
    rows = []
    for cond in metrics["conditions"]:
        lv = cond["levels"].get(level)
        if lv is None:
            continue
        for system, entry in lv["systems"].items():
            blocks = [("all", entry["all"])] + list((entry.get("by_source") or {}).items())
            for subset, b in blocks:
                row = {"condition": cond["name"], "system": system, "subset": subset, "n_real": b["n_real"],
                       "n_fake": b["n_fake"], "excluded_real": b["n_excluded_real"],
                       "excluded_fake": b["n_excluded_fake"], "note": b.get("error") or b.get("scored_as") or ""}
                for m in METRIC_LABELS:
                    v = b.get(m)
                    row[m] = v["value"] if isinstance(v, dict) else None
                    row[f"{m}_lo"], row[f"{m}_hi"] = (v["ci"] if isinstance(v, dict) and v.get("ci") else (None, None))
                rows.append(row)
    return rows


def markdown_table(metrics: dict[str, Any], level: str) -> str:
    """The paper's tables for one level: clean metrics with intervals (all + per source), then AUC per condition."""
    pct = int(round(metrics["protocol"]["ci"] * 100))
    thr = metrics["protocol"]["threshold"]
    head = ["system", "subset", "N real", "N fake", f"AUC [{pct}% CI]", "AP", "EER", f"ACC@{thr:g}", "TPR@1%FPR",
            "TPR@5%FPR"]
    lines = [f"## {level} level, clean ({metrics['data']['path']}, {metrics['data']['n_reported']} items reported)", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    clean = metrics["conditions"][0]["levels"][level]
    for system, entry in clean["systems"].items():
        for subset, b in [("all", entry["all"])] + list((entry.get("by_source") or {}).items()):
            cells = [system, subset, str(b["n_real"]), str(b["n_fake"])]
            if "error" in b:
                cells += [b["error"]] + ["–"] * 5
            else:
                cells += [_fmt_metric(b, "auc")] + [_fmt_metric(b, m, ci=False) for m in
                                                     ("ap", "eer", "acc", "tpr@fpr0.01", "tpr@fpr0.05")]
            lines.append("| " + " | ".join(cells) + " |")
    paired = clean.get("paired_auc")
    if paired:
        lines += ["", f"AUC minus {paired['reference']}'s on items both scored ({pct}% paired bootstrap interval): " +
                  "; ".join(f"{s}: " + (d["error"] if "error" in d else f"{d['delta_auc']:+.4f}" + (
                      f" [{d['ci'][0]:+.4f}, {d['ci'][1]:+.4f}]" if d.get("ci") else "") + f" (n={d['n']})")
                            for s, d in paired["deltas"].items())]
    cov = clean["coverage"]
    lines += ["", f"Coverage (scored / total): real {cov['real']['scored']}/{cov['real']['n']}, "
                  f"fake {cov['fake']['scored']}/{cov['fake']['n']}; undetermined items: {metrics['protocol']['undetermined']}."]
    if level == "frame" and "explanation_metrics" in metrics:
        lines += ["", explanation_markdown(metrics).rstrip("\n")]
    if len(metrics["conditions"]) > 1:
        names = [c["name"] for c in metrics["conditions"]]
        lines += ["", f"### {level} level: AUC per condition", "", "| system | " + " | ".join(names) + " |",
                  "|" + "---|" * (len(names) + 1)]
        for system, by_cond in metrics["robustness_auc"][level].items():
            lines.append(f"| {system} | " + " | ".join("–" if by_cond[n] is None else f"{by_cond[n]:.4f}"
                                                       for n in names) + " |")
    return "\n".join(lines) + "\n"


EXPLANATION_METRICS = {"verdict_accuracy": "verdict ACC", "verdict_f1": "verdict F1", "agreement": "text = p_fake",
                       "rouge_l": "ROUGE-L", "bleu": "BLEU"}
EXPLANATION_COLUMNS = ["system", "n_explained", "n_real", "n_fake", "n_unexplained", "no_verdict", "n_with_reference"] + [
    f"{k}{suffix}" for k in EXPLANATION_METRICS for suffix in ("", "_lo", "_hi")]


def explanation_rows(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for system, b in metrics["explanation_metrics"]["systems"].items():
        row = {"system": system, "n_explained": b["n"], "n_real": b["n_real"], "n_fake": b["n_fake"],
               "n_unexplained": b["n_unexplained"], "no_verdict": b["no_verdict"],
               "n_with_reference": b["n_with_reference"]}
        for k in EXPLANATION_METRICS:
            v = b.get(k)
            row[k] = v["value"] if isinstance(v, dict) else None
            row[f"{k}_lo"], row[f"{k}_hi"] = v["ci"] if isinstance(v, dict) and v.get("ci") else (None, None)
        rows.append(row)
    return rows


def explanation_markdown(metrics: dict[str, Any]) -> str:
    """The --references table: per MLLM system, the text's verdict and its overlap with the references."""
    em = metrics["explanation_metrics"]
    rep = em["references"]
    pct = int(round(metrics["protocol"]["ci"] * 100))
    head = ["system", "explained (real/fake)", "no verdict", "with reference"] + [
        f"{name} [{pct}% CI]" for name in EXPLANATION_METRICS.values()]
    lines = [f"## Explanations vs references (clean, {rep['file']})", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for system, b in em["systems"].items():
        cells = [system, f"{b['n']} ({b['n_real']}/{b['n_fake']})", str(b["no_verdict"]), str(b["n_with_reference"])]
        cells += [_fmt_metric(b, k) if k != "bleu" or not isinstance(b.get(k), dict) else
                  f"{b[k]['value']:.2f}" + (f" [{b[k]['ci'][0]:.2f}, {b[k]['ci'][1]:.2f}]" if b[k].get("ci") else "")
                  for k in EXPLANATION_METRICS]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"References: {rep['entries']} paths in the file, {rep['matched_by_path']} matched by path, "
                  f"{rep['matched_by_file_name']} by file name only, {rep['unmatched']} unmatched, "
                  f"{rep['ambiguous_file_name']} ambiguous by file name. {em['definition']}.", "",
              f"Caveat: {em['caveat']}."]
    return "\n".join(lines) + "\n"


def write_outputs(cfg: EvaluateConfig, metrics: dict[str, Any], clean_frames: list[Unit], out: Path) -> None:
    """metrics.json, the tables, the plots and evaluate.html; ``clean_frames``: the reported frame units of the clean
    run with every system's score (fusions included), for the ROC curves."""
    import csv

    out.mkdir(parents=True, exist_ok=True)
    worst = worst_errors(cfg, metrics, clean_frames, out) if clean_frames else {}  # adds metrics["worst_errors"]
    _write(out / "metrics.json", json.dumps(metrics, indent=1, allow_nan=False) + "\n")
    resolved = {"command": "evaluate", "x2dfd_version": __version__, "config": to_jsonable(cfg)}
    _write(out / "evaluate.config.json", json.dumps(resolved, indent=2, default=str) + "\n")
    images = {}
    for level in metrics["protocol"]["levels"]:
        _write(out / f"table_{level}.md", markdown_table(metrics, level))
        tmp = out / f"table_{level}.csv.tmp"
        with tmp.open("w", newline="", encoding="utf-8") as fh:
            w = csv.DictWriter(fh, fieldnames=TABLE_COLUMNS)
            w.writeheader()
            w.writerows(table_rows(metrics, level))
        os.replace(tmp, out / f"table_{level}.csv")
        units = clean_frames if level == "frame" else video_units(clean_frames, cfg.aggregate, cfg.topk)
        images[level] = {"roc": plot_roc(units, metrics["systems"], out / f"roc_{level}.png", cfg, level)}
        if len(metrics["conditions"]) > 1:
            images[level]["robustness"] = plot_robustness(metrics, level, out / f"robustness_{level}.png")
    if "explanation_metrics" in metrics:
        tmp = out / "table_explanations.csv.tmp"
        with tmp.open("w", newline="", encoding="utf-8") as fh:
            w = csv.DictWriter(fh, fieldnames=EXPLANATION_COLUMNS)
            w.writeheader()
            w.writerows(explanation_rows(metrics))
        os.replace(tmp, out / "table_explanations.csv")
    render_html(metrics, images, out / "evaluate.html", cfg.title, worst=worst)


WORST_PER_SIDE = 5


def worst_errors(cfg: EvaluateConfig, metrics: dict[str, Any], clean_frames: list[Unit], out: Path,
                 n: int = WORST_PER_SIDE) -> dict[str, dict[str, Any]]:
    """An item report (``reports/<run>/index.html``, x2dfd.report) of every records file of the clean run, and per
    system its ``n`` worst errors at frame level: the reals it scored most fake and the fakes it scored most real,
    each linked to its row (``#row=N``). MLLM systems of ``--system`` link to their own report; experts and
    fusions to the first one (their scores are in every record)."""
    from x2dfd.explain import read_records
    from x2dfd.report import render_report

    clean = next((c for c in metrics.get("conditions", []) if c.get("name") == "clean"), None)
    if clean is None:
        return {}
    files = clean.get("records_by_system") or {"run": clean["records"]}
    labels = {p: u.label for u in clean_frames for p in u.item_paths}
    reports: dict[str, tuple[str, dict[str, int]]] = {}
    names = {system: re.sub(r"[^A-Za-z0-9._-]+", "-", system.split(":", 1)[-1]).strip("-") or "run" for system in files}
    for system, rel in files.items():
        records = read_records(out / rel, repair=False, warn=False)
        name = names[system]
        # With --system, each report links its siblings: the page switches between the loaded setups.
        siblings = [{"name": s, "href": f"../{n}/index.html", "current": s == system} for s, n in names.items()]
        try:
            render_report(records, out / "reports" / name, title=f"x2dfd evaluate: {system} (clean)", labels=labels,
                          folder_labels=False, heatmaps=False,
                          run={"systems": siblings} if len(siblings) > 1 else None)
        except X2DFDError as err:  # e.g. a folder there that is not an x2dfd report: the metrics still stand
            print(terminal_line(f"evaluate: no item report for {system}: {err}", 1000), file=sys.stderr)
            continue
        rows: dict[str, int] = {}
        for i, r in enumerate(records):
            rows.setdefault(r.path, i)  # --all-faces: the item's first row
        reports[system] = (f"reports/{name}/index.html", rows)
    if not reports:
        return {}
    first = next(iter(reports.values()))
    worst: dict[str, dict[str, Any]] = {}
    for system in metrics["systems"]:
        href, rows = reports.get(system, first)
        scored = [u for u in clean_frames if u.scores.get(system) is not None]
        sides = {"real scored fake": sorted((u for u in scored if u.label == 0), key=lambda u: -u.scores[system]),
                 "fake scored real": sorted((u for u in scored if u.label == 1), key=lambda u: u.scores[system])}
        entry: dict[str, Any] = {"report": href, "items": []}
        for kind, units in sides.items():
            for u in units[:n]:
                wrong = u.scores[system] >= cfg.threshold if u.label == 0 else u.scores[system] < cfg.threshold
                path = u.item_paths[0]
                row = rows.get(path)
                entry["items"].append({"kind": kind, "path": path, "score": round(float(u.scores[system]), 4),
                                       "wrong": bool(wrong),
                                       "href": f"{href}#row={row}" if row is not None else None})
        worst[system] = entry
    metrics["worst_errors"] = worst
    return worst


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _scored(units: list[Unit], system: str, fill: float | None) -> tuple[list[int], list[float]]:
    ys, ss = [], []
    for u in units:
        s = u.scores.get(system)
        if s is None:
            if fill is None:
                continue
            s = fill
        ys.append(u.label)
        ss.append(s)
    return ys, ss


def plot_roc(units: list[Unit], systems: list[str], path: Path, cfg: EvaluateConfig, level: str) -> str | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from x2dfd.metrics import roc_auc, roc_curve

    fig, ax = plt.subplots(figsize=(5, 5), dpi=110)
    drawn = 0
    for system in systems:
        ys, ss = _scored(units, system, UNDETERMINED[cfg.undetermined])
        if 0 not in ys or 1 not in ys:
            continue
        fpr, tpr, _ = roc_curve(ys, ss)
        ax.plot(fpr, tpr, lw=1.6, ls="--" if system.startswith("fusion") else "-",
                label=f"{system} (AUC {roc_auc(ys, ss):.3f})")
        drawn += 1
    if not drawn:
        plt.close(fig)
        return None
    ax.plot([0, 1], [0, 1], ls="--", c="#999", lw=1)
    ax.set(xlabel="false positive rate (real called fake)", ylabel="true positive rate (fake caught)",
           xlim=(0, 1), ylim=(0, 1.01), title=f"ROC, {level} level, clean")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path.name


def plot_robustness(metrics: dict[str, Any], level: str, path: Path) -> str | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [c["name"] for c in metrics["conditions"]]
    fig, ax = plt.subplots(figsize=(max(5, 0.7 * len(names) + 2), 4), dpi=110)
    for system, by_cond in metrics["robustness_auc"][level].items():
        ax.plot(range(len(names)), [float("nan") if by_cond[n] is None else by_cond[n] for n in names], marker="o",
                lw=1.4, ls="--" if system.startswith("fusion") else "-", label=system)
    ax.axhline(0.5, ls="--", c="#999", lw=1)
    ax.set_xticks(range(len(names)), names, rotation=35, ha="right")
    ax.set(ylabel="AUC", ylim=(0.0, 1.0), title=f"AUC per condition, {level} level")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path.name


def render_html(metrics: dict[str, Any], images: dict[str, dict[str, str | None]], path: Path,
                title: str | None = None, worst: dict[str, dict[str, Any]] | None = None) -> Path:
    from x2dfd.report import environment, static_text

    rows = {lv: [r for r in table_rows(metrics, lv)] for lv in metrics["protocol"]["levels"]}
    html = environment().get_template("evaluate.html.jinja").render(
        m=metrics, rows=rows, images=images, labels=METRIC_LABELS, css=static_text("report.css"), worst=worst or {},
        title=title or f"x2dfd evaluate: {Path(metrics['data']['path']).name}", version=__version__,
        pct=int(round(metrics["protocol"]["ci"] * 100)))
    _write(path, html)
    return path


def summary_text(metrics: dict[str, Any]) -> str:
    """Short stderr summary: clean AUC [CI] / EER per system and level, then AUC per condition."""
    lines = []
    for level in metrics["protocol"]["levels"]:
        clean = metrics["conditions"][0]["levels"][level]
        cov = clean["coverage"]
        lines.append(f"{level} level (clean; scored real {cov['real']['scored']}/{cov['real']['n']}, "
                     f"fake {cov['fake']['scored']}/{cov['fake']['n']}):")
        for system, entry in clean["systems"].items():
            b = entry["all"]
            lines.append(f"  {system:<18} " + (b["error"] if "error" in b else
                                              f"AUC {_fmt_metric(b, 'auc')}  AP {_fmt_metric(b, 'ap', False)}  "
                                              f"EER {_fmt_metric(b, 'eer', False)}"))
        if len(metrics["conditions"]) > 1:
            for system, by_cond in metrics["robustness_auc"][level].items():
                lines.append(f"  AUC {system}: " + "  ".join(f"{n}={'–' if v is None else f'{v:.3f}'}"
                                                             for n, v in by_cond.items()))
    em = metrics.get("explanation_metrics")
    if em:
        lines.append(f"explanations vs references ({em['references']['items_with_reference']} items with a reference):")
        for system, b in em["systems"].items():
            lines.append(f"  {system:<18} " + "  ".join(
                f"{name} {'–' if not isinstance(b.get(k), dict) else format(b[k]['value'], '.3f')}"
                for k, name in EXPLANATION_METRICS.items()))
    return "\n".join(lines)


def expand_perturb_args(argv: list[str]) -> list[str]:
    """Accept the issue's ``--perturb jpeg:90,70 blur:1,2`` (several specs after one flag) besides the
    repeatable ``--perturb jpeg:90,70 --perturb blur:1,2``."""
    from x2dfd.perturb import looks_like_spec

    out: list[str] = []
    state = None  # None | "need" (flag seen, no value yet) | "more" (further specs may follow)
    for tok in argv:
        if tok == "--perturb":
            state = "need"
        elif tok.startswith("--perturb="):
            out += ["--perturb", tok.split("=", 1)[1]]
            state = "more"
        elif state == "need" or (state == "more" and looks_like_spec(tok)):
            out += ["--perturb", tok]
            state = "more"
        else:
            state = None
            out.append(tok)
    if state == "need":
        out.append("--perturb")  # argparse reports the missing value
    return out


def main(argv: list[str] | None = None) -> int:
    argv = expand_perturb_args(list(sys.argv[1:] if argv is None else argv))
    cfg = parse_config(EvaluateConfig, argv, prog="x2dfd evaluate")
    metrics = run_evaluate(cfg)
    if not cfg.quiet:
        print(summary_text(metrics), file=sys.stderr)
        print(f"evaluate: {cfg.out_dir() / 'metrics.json'}, {cfg.out_dir() / 'evaluate.html'}", file=sys.stderr)
    return outcome(cfg, metrics)


def outcome(cfg: EvaluateConfig, metrics: dict[str, Any]) -> int:
    """The last stderr line (always, even with --quiet): how many items got no verdict in the clean condition;
    exit status 3 when some did (they enter the metrics as --undetermined says), else 0."""
    from x2dfd.errors import EXIT_INPUTS_FAILED, EXIT_OK
    from x2dfd.explain import read_records

    clean = next((c for c in metrics.get("conditions", []) if c.get("name") == "clean"), None)
    files = list((clean.get("records_by_system") or {"": clean["records"]}).values()) if clean else []
    paths: list[str] = []
    failed_set: set[str] = set()
    for f in files:  # --system: an item counts as failed when some system gave it no verdict
        records = read_records(cfg.out_dir() / f, repair=False, warn=False)
        judged = {r.path for r in records if r.p_fake is not None}
        paths += [r.path for r in records]
        failed_set |= {r.path for r in records if r.path not in judged}
    paths = list(dict.fromkeys(paths))
    failed = [p for p in paths if p in failed_set]
    line = f"x2dfd evaluate: {len(paths)} items, {len(paths) - len(failed)} with a verdict, {len(failed)} failed"
    if failed:
        line += f" (no verdict: see {clean['records']} under {cfg.out_dir()})"
    print(line, file=sys.stderr)
    return EXIT_INPUTS_FAILED if failed else EXIT_OK
