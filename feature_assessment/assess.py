"""``x2dfd assess``: Model Feature Assessment, X2-DFD's first stage: which forgery cues does the MLLM already see?

    x2dfd assess data/ --model llava-hf/llava-1.5-7b-hf --per-class 200 --out mfa/     # data/real, data/fake
    x2dfd assess manifest.csv --model ./llava --adapter ./lora --out mfa-tuned/
    x2dfd assess FaceForensics++.json --compression c23 --data-root datasets/ --frames-per-video 8 --out mfa/  # train split
    x2dfd assess videos/ --model ./llava --out mfa/   # videos/real/*.mp4, videos/fake/*.mp4: 16 frames of each
    x2dfd assess --generate-cues 30 --cues-out my_cues.yaml --model ./llava             # propose new cues

DATA is read by ``x2dfd.dataset.load_labelled`` (folder, manifest, DeepfakeBench or X2-DFD JSON); a
DeepfakeBench JSON's TRAIN split by default, so cues are never chosen on test data (the line printed
first and ``ranking.json``'s ``data`` say which split and compression were read). ``--frames-per-video N``
keeps N frames per video (``x2dfd.dataset.sample_frames``: evenly spread, seeded); video files give N
frames each (16 by default, as explain samples), decoded through the same path as explain.

For every sampled face (cropped as in ``x2dfd explain``) and every cue of the bank, P(yes) is read
from the MLLM's next-token logits of "Yes" vs "No" (``feature_assessment.scoring``: the image
prefix is prefilled once, cues run in batches). Cues are ranked by the AUC of P(yes) for fake vs
real (``ranking``). Outputs in ``--out``:

* ``ranking.json``: ranked cues with metrics and flags, per-region summary, model id, revision,
  adapter, cue template version, data fingerprint, the setting id of the scores; read by ``x2dfd finetune``.
* ``ranking.csv``, ``regions.csv``, ``ranking.png`` (top and bottom cues).
* ``scores.jsonl``: per-face P(yes) of every cue (``feature_assessment.cache``); also the resume
  cache: a rerun scores nothing twice, an interrupted run continues where it stopped.
* ``assess.config.json``: the resolved configuration.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from x2dfd import __version__
from x2dfd.cliargs import parse_config, to_jsonable
from x2dfd.errors import UsageError, X2DFDError
from x2dfd.explain import ModelArgs
from x2dfd.pipeline import PipelineOptions
from x2dfd.records import one_line, terminal_line

from x2dfd.feature_assessment.cache import SCORES_FILE, ScoreStore, setting_id

RANK_KEYS = ("auc", "balanced_accuracy")


@dataclass
class AssessConfig(ModelArgs):
    """Rank forgery cues by how well the MLLM's yes/no answers separate real from fake faces."""

    early_model_check: ClassVar[bool] = False  # run_assess checks --model after DATA (whose errors come first)
    static_cache: bool = field(default=False, metadata={"cli": False})
    """Not an option here: cue scoring reads yes/no logits from its own cached forwards and generates nothing."""

    data: str | None = field(default=None, metadata={"positional": True, "optional": True, "metavar": "DATA"})
    """Labelled faces: a folder with real/ and fake/ (images or videos), a CSV/JSONL manifest (path,label[,video_id,source]), a DeepfakeBench dataset JSON or X2-DFD JSON(s)."""
    out: str = "assess-out"
    """Output folder (ranking.json, ranking.csv, regions.csv, ranking.png, scores.jsonl, assess.config.json)."""
    cues: list[str] = field(default_factory=list, metadata={"metavar": "FILE"})
    """Cue bank YAML file (default: the shipped prompts/cues.yaml); several files are merged by id."""
    only: list[str] = field(default_factory=list, metadata={"metavar": "ID|REGION"})
    """Score only these cue ids or regions."""
    per_class: int | None = None
    """Faces sampled per class (real, fake); default: the whole smaller class. Both classes get the same number."""
    seed: int = 0
    """Seed of the per-class sampling and of the bootstrap."""
    split: str = "train"
    """DeepfakeBench JSON only: the split to read (train, val, test); train by default, so cues are not chosen on test data."""
    compression: str = "c23"
    """DeepfakeBench JSON only: FaceForensics++ compression level (raw, c23, c40)."""
    data_root: str | None = None
    """DeepfakeBench / X2-DFD JSON: folder the frame paths are relative to (default: the X2-DFD JSON's Description, else the JSON's folder)."""
    frames_per_video: int | None = field(default=None, metadata={"metavar": "N"})
    """At most N frames per video (evenly spread, seeded by --seed), before the per-class sampling; a video file gives N frames (default 16, as explain samples)."""
    face_crop: bool = PipelineOptions.face_crop
    """Detect the face and crop it as `x2dfd explain` does (square, --face-scale x the box); --no-face-crop for inputs that are already face crops."""
    face_scale: float = PipelineOptions.face_scale
    """Crop side as a multiple of the detected face box (DeepfakeBench uses 1.3)."""
    align: bool = PipelineOptions.align
    """Rotate each face so the eyes are level before cropping."""
    min_face_score: float = PipelineOptions.min_face_score
    """Minimum face-detector confidence."""
    max_pixels: int = PipelineOptions.max_pixels
    """Images with more pixels are refused (decompression-bomb guard)."""
    max_file_mb: float = PipelineOptions.max_file_mb
    """Image files larger than this are refused."""
    cue_batch_size: int = 64
    """Cues scored per forward pass against one face's cached prefix (packed into one row; the padded layout uses at most 16 rows)."""
    method: str = field(default="auto", metadata={"choices": ["auto", "packed", "padded", "naive"]})
    """auto: prefix-cached scoring (packed, else padded), checked on the first face against the full-prompt forward, naive if neither fits the model; naive: one full forward per cue (slow, for checking)."""
    verify_cache: bool = True
    """With --method auto: compare the cached scores of the first face with the full-prompt forward."""
    rank_by: str = field(default="auc", metadata={"choices": list(RANK_KEYS)})
    """Ranking key: auc (threshold-free) or balanced_accuracy (at P(yes) = 0.5, X2-DFD's metric)."""
    bootstrap: int = 1000
    """Bootstrap resamples for the confidence intervals."""
    ci: float = 0.95
    """Confidence level of the bootstrap intervals."""
    top: int = 15
    """Cues shown at each end of ranking.png."""
    generate_cues: int = 0
    """Ask a language model for this many new cues, deduplicated against the bank and appended to --cues-out (DATA is then optional)."""
    cues_out: str | None = None
    """Cue file that --generate-cues appends to (created as a copy of the bank; existing ids are never rewritten)."""
    generator_model: str | None = None
    """Causal LM for --generate-cues (hub id or local dir); default: the language model of --model."""
    generation_tokens: int = 768
    """Maximum new tokens per --generate-cues request."""
    quiet: bool = field(default=False, metadata={"store_true": True})
    """No progress bar and no summary tables."""

    def __post_init__(self):
        ModelArgs.__post_init__(self)
        if self.data is None and not self.generate_cues:
            raise UsageError("give DATA (a folder with real/ and fake/, a manifest or a DeepfakeBench JSON), or --generate-cues N")
        if self.generate_cues < 0:
            raise UsageError(f"--generate-cues must be >= 0, got {self.generate_cues}")
        if self.generate_cues and not self.cues_out:
            raise UsageError("--generate-cues needs --cues-out FILE (the cue file new cues are appended to)")
        if self.cue_batch_size < 1:
            raise UsageError(f"--cue-batch-size must be >= 1, got {self.cue_batch_size}")
        if self.bootstrap < 1:
            raise UsageError(f"--bootstrap must be >= 1, got {self.bootstrap}")
        if not 0.0 < self.ci < 1.0:
            raise UsageError(f"--ci must be in (0, 1), got {self.ci}")
        if self.per_class is not None and self.per_class < 1:
            raise UsageError(f"--per-class must be >= 1, got {self.per_class}")
        if self.frames_per_video is not None and self.frames_per_video < 1:
            raise UsageError(f"--frames-per-video must be >= 1, got {self.frames_per_video}")
        if self.face_scale < 1.0:
            raise UsageError(f"--face-scale must be >= 1.0, got {self.face_scale}")
        if self.top < 1:
            raise UsageError(f"--top must be >= 1, got {self.top}")


def parse_args(argv: list[str] | None) -> AssessConfig:
    """The command line as an AssessConfig (DATA is optional: not needed with --generate-cues)."""
    return parse_config(AssessConfig, argv, prog="x2dfd assess")


# ------------------------------------------------------------------------------------------------ settings
def _model_fingerprint(model: str, revision: str | None) -> str | None:
    """What identifies the weights without hashing them: the hub commit of a cached hub id, or the
    names, sizes and modification times of a local checkpoint's weight files."""
    path = Path(model).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in (".safetensors", ".bin", ".json") and p.is_file())
        stamp = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files]
        return "local:" + hashlib.sha256(json.dumps(stamp).encode()).hexdigest()[:16]
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(model, "config.json", revision=revision)
        if isinstance(cached, str):
            return "hub:" + Path(cached).parent.name  # .../snapshots/<commit>/config.json
    except Exception:  # noqa: BLE001 - a fingerprint is best effort; the model id and revision still key the cache
        return None
    return None


def _adapter_fingerprint(adapter: str | None) -> str | None:
    if not adapter:
        return None
    digest = hashlib.sha256()
    for name in ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin"):
        p = Path(adapter).expanduser() / name
        if p.is_file():
            with p.open("rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()[:16]


def build_setting(cfg: AssessConfig) -> dict[str, Any]:
    """Everything that changes a score: the key of the score cache."""
    from x2dfd.feature_assessment.scoring import cue_template_version
    from x2dfd.mllm import resolve_device, resolve_dtype

    dtype = resolve_dtype(cfg.dtype, resolve_device(cfg.device))
    face = {"crop": cfg.face_crop}
    if cfg.face_crop:
        face.update(scale=cfg.face_scale, align=cfg.align, min_score=cfg.min_face_score)
    return {
        "model": cfg.model, "revision": cfg.revision, "model_fingerprint": _model_fingerprint(cfg.model, cfg.revision),
        "adapter": cfg.adapter, "adapter_fingerprint": _adapter_fingerprint(cfg.adapter),
        "dtype": str(dtype).replace("torch.", ""),
        "quantization": "4bit" if cfg.load_in_4bit else "8bit" if cfg.load_in_8bit else None,
        "template_version": cue_template_version(), "face": face,
    }


def _file_sha256(path: str) -> str:
    from x2dfd.media import file_sha256

    return file_sha256(path)


# ------------------------------------------------------------------------------------------------ stages
@dataclass
class AssessResult:
    out_dir: Path
    ranking: dict[str, Any] | None
    newly_scored: int  # (image, cue) pairs scored by the model in this run
    model_calls: int  # forward passes in this run
    model_loaded: bool
    generated: Any = None  # GenerationResult of --generate-cues


def _limits(cfg: AssessConfig):
    from x2dfd.media import MediaLimits

    return MediaLimits(max_pixels=cfg.max_pixels, max_file_mb=cfg.max_file_mb)


def _load_face(row: dict, cfg: AssessConfig, warner=None):
    """The face crop of a row (an image, or one frame of a video file), counted by the crop ``warner``."""
    from x2dfd.dataset import load_row_image
    from x2dfd.face import extract_faces

    image = load_row_image(row, _limits(cfg))
    crops = extract_faces(image, crop=cfg.face_crop, all_faces=False, scale=cfg.face_scale, align=cfg.align,
                          min_score=cfg.min_face_score)
    if warner is not None:
        warner.observe_crop(image, crops[0], label=row.get("label"))
    return crops[0].image


def _run_generation(cfg: AssessConfig, mllm_holder: dict) -> Any:
    from x2dfd.feature_assessment.cues import load_cues
    from x2dfd.feature_assessment.generate import causal_lm_generator, generate_cues, mllm_generator, write_cue_file

    paths = list(cfg.cues) or None
    base = load_cues(paths)
    out = Path(cfg.cues_out)
    known = load_cues([*(paths or [base.paths[0]]), out]) if out.is_file() else base
    if cfg.generator_model:
        propose = causal_lm_generator(cfg.generator_model, device=cfg.device, dtype=cfg.dtype,
                                      trust_remote_code=cfg.trust_remote_code, max_new_tokens=cfg.generation_tokens,
                                      seed=cfg.seed)
        origin = f"generated:{cfg.generator_model}"
    else:
        propose = mllm_generator(_get_mllm(cfg, mllm_holder), max_new_tokens=cfg.generation_tokens, seed=cfg.seed)
        origin = f"generated:{cfg.model}"
    result = generate_cues(propose, known.cues, cfg.generate_cues, origin=origin)
    write_cue_file(out, base.cues, result.accepted)
    if not cfg.quiet:
        print(f"x2dfd assess: {len(result.accepted)} new cue(s) appended to {out} ({len(result.rejected)} proposal(s) "
              f"rejected, {result.rounds} round(s))", file=sys.stderr)
        for question, reason in result.rejected[:10]:
            print(f"  rejected: {question[:70]} ({one_line(reason, 120)})", file=sys.stderr)
    return result


def _get_mllm(cfg: AssessConfig, holder: dict):
    if "mllm" not in holder:
        from x2dfd.mllm import load_mllm

        holder["mllm"] = load_mllm(cfg)
    return holder["mllm"]


def run_assess(cfg: AssessConfig) -> AssessResult:
    """Everything ``x2dfd assess`` does, callable from Python."""
    from tqdm.auto import tqdm

    from x2dfd.feature_assessment.cues import load_cues
    from x2dfd.feature_assessment.ranking import plot_ranking, write_csv
    from x2dfd.cropcheck import CropWarner
    from x2dfd.dataset import balanced_sample, load_labelled, sample_frames

    holder: dict[str, Any] = {}
    if cfg.data is None or cfg.generate_cues:
        cfg.check_model_paths()
    generated = _run_generation(cfg, holder) if cfg.generate_cues else None
    out_dir = Path(cfg.out)
    if cfg.data is None:
        return AssessResult(out_dir, None, 0, 0, "mllm" in holder, generated)

    cue_paths = [cfg.cues_out] if cfg.generate_cues else (list(cfg.cues) or None)
    bank = load_cues(cue_paths, only=cfg.only or None)
    full_bank = load_cues(cue_paths)  # the scorer's shared prefix depends on all cues, not on --only
    ds_all = load_labelled(cfg.data, split=cfg.split, compression=cfg.compression, root=cfg.data_root)
    ds_all = sample_frames(ds_all, cfg.frames_per_video, cfg.seed, _limits(cfg))
    read = data_read(cfg, ds_all)
    if not cfg.quiet:
        print(read["line"], file=sys.stderr)
    cfg.check_model_paths()  # after the data's own checks, still before anything heavy is imported
    rows, unreadable = sample_readable(ds_all, cfg, balanced_sample)
    out_dir.mkdir(parents=True, exist_ok=True)

    setting = build_setting(cfg)
    sid = setting_id(setting)
    resolved = {"command": "assess", "x2dfd_version": __version__, "config": to_jsonable(cfg), "setting_id": sid,
                "setting": setting}
    (out_dir / "assess.config.json").write_text(json.dumps(resolved, indent=2, default=str) + "\n")

    store = ScoreStore(out_dir / SCORES_FILE)
    cue_ids = [c.id for c in bank.cues]
    todo = [(row, store.missing(sid, row["sha256"], cue_ids)) for row in rows]
    todo = [(row, missing) for row, missing in todo if missing]
    n_pairs = sum(len(m) for _, m in todo)

    scorer = None
    warner = CropWarner("x2dfd assess")
    failures: list[dict[str, str]] = []
    t0 = time.perf_counter()
    try:
        if todo:
            from x2dfd.feature_assessment.scoring import CueScorer

            mllm = _get_mllm(cfg, holder)
            scorer = CueScorer(mllm, full_bank.cues, batch_size=cfg.cue_batch_size, method=cfg.method,
                               verify=cfg.verify_cache)
            index = {c.id: i for i, c in enumerate(full_bank.cues)}
            store.add_setting(sid, {**setting, "answer_tokens": scorer.describe()["answer_tokens"],
                                    "mllm": mllm.describe()})
            bar = tqdm(total=n_pairs, unit="cue", desc="assess", disable=cfg.quiet, file=sys.stderr, smoothing=0.1)
            try:
                for row, missing in todo:
                    _score_one(cfg, scorer, store, sid, row, [index[c] for c in missing], bar, failures, warner)
            finally:
                bar.close()
    finally:
        store.close()
    warner.warn(quiet=cfg.quiet)
    newly = _count_new(store, sid, todo)
    elapsed = time.perf_counter() - t0

    ranking = _rank(cfg, bank, full_bank, rows, ds_all, store, sid, setting, scorer, holder.get("mllm"))
    ranking["data"]["unreadable"] = {"real": sum(u["label"] == "real" for u in unreadable),
                                     "fake": sum(u["label"] == "fake" for u in unreadable),
                                     "examples": unreadable[:20],
                                     "note": "dropped before sampling: other files of the class were drawn instead"}
    ranking["data"].update({k: v for k, v in read.items() if k != "line"})
    ranking["data"]["crop_check"] = {**warner.summary(), "warning": warner.message(),
                                     "note": "faces detected in this run (cached faces are not re-checked)"}
    ranking["run"] = {"newly_scored": newly, "seconds": round(elapsed, 3),
                      "cues_per_second": round(newly / elapsed, 3) if newly and elapsed > 0 else None,
                      "model_calls": scorer.calls if scorer else 0, "failures": failures[:50]}
    (out_dir / "ranking.json").write_text(json.dumps(ranking, indent=2, ensure_ascii=False) + "\n")
    write_csv(ranking["cues"], out_dir / "ranking.csv")
    _write_regions_csv(ranking["regions"], out_dir / "regions.csv")
    plot_ranking(ranking["cues"], out_dir / "ranking.png", top=cfg.top, ci=cfg.ci,
                 title=f"{cfg.model}{' + ' + cfg.adapter if cfg.adapter else ''}: cue AUC, "
                       f"{ranking['data']['n_scored']['real']} real / {ranking['data']['n_scored']['fake']} fake faces")
    return AssessResult(out_dir, ranking, newly, scorer.calls if scorer else 0, "mllm" in holder, generated)


def _readable(row: dict, cfg: AssessConfig, file_shas: dict[str, str]) -> tuple[str | None, str | None]:
    """``(sha256, None)`` for a row whose picture decodes within the limits, else ``(None, why)``. The key is
    ``x2dfd.dataset.row_sha256`` (a video frame's differs from its video's other frames). A file without a
    face is readable (it stays in the sample: face-detection rates per class are part of the data)."""
    from x2dfd.dataset import load_row_image, row_sha256
    from x2dfd.errors import MediaError

    path = row["path"]
    try:
        if path not in file_shas:
            file_shas[path] = _file_sha256(path)
        sha = row_sha256(row, file_shas[path])
    except OSError as err:
        return None, one_line(f"cannot read '{path}': {err.strerror or err}")
    try:
        load_row_image(row, _limits(cfg))
    except MediaError as err:
        return None, one_line(str(err))
    return sha, None


def sample_readable(ds_all, cfg: AssessConfig, balanced_sample) -> tuple[list[dict], list[dict[str, str]]]:
    """The balanced, seeded sample of ``--per-class`` rows per class, with every file that cannot be read or
    decoded replaced by another file of its class (drawn in a seeded order), so both classes keep the same
    count of usable faces. When every file reads, the sample is exactly ``balanced_sample``'s. Returns the
    rows (original order, each with its ``sha256``) and the dropped files."""
    import numpy as np

    from x2dfd.dataset import row_key

    sample = balanced_sample(ds_all, cfg.per_class, cfg.seed).to_list()
    all_rows = ds_all.to_list()
    chosen = {row_key(r) for r in sample}
    order = {row_key(r): i for i, r in enumerate(all_rows)}
    rng = np.random.default_rng(cfg.seed + 1)
    spare = {y: [all_rows[i] for i in rng.permutation(len(all_rows)) if all_rows[i]["label"] == y
                 and row_key(all_rows[i]) not in chosen] for y in (0, 1)}
    kept: dict[int, list[dict]] = {0: [], 1: []}
    dropped: list[dict[str, str]] = []
    file_shas: dict[str, str] = {}
    for row in sample:
        candidate: dict | None = row
        while candidate is not None:
            sha, why = _readable(candidate, cfg, file_shas)
            if why is None:
                kept[candidate["label"]].append({**candidate, "sha256": sha})
                break
            dropped.append({"path": candidate["path"], **({"frame": candidate["frame"]} if candidate.get("frame")
                                                           is not None else {}),
                            "label": "fake" if candidate["label"] == 1 else "real", "error": why})
            pool = spare[row["label"]]
            candidate = pool.pop(0) if pool else None
    n = min(len(kept[0]), len(kept[1]))
    rows = sorted(kept[0][:n] + kept[1][:n], key=lambda r: order[row_key(r)])
    if dropped and not cfg.quiet:
        print(f"x2dfd assess: {len(dropped)} unreadable file(s) replaced by others of their class (e.g. "
              f"{terminal_line(dropped[0]['error'], 200)}); sampled {n} real and {n} fake", file=sys.stderr)
    return rows, dropped


def data_read(cfg: AssessConfig, ds) -> dict[str, Any]:
    """What was read from DATA (recorded in ranking.json's ``data``) and the one line that says so."""
    from x2dfd.dataset import class_counts, count_videos, data_layout

    layout = data_layout(cfg.data)
    rows, videos = class_counts(ds), count_videos(ds)
    counts = (f"{rows['real']} real / {rows['fake']} fake faces from {videos['real']} / {videos['fake']} videos or "
              f"images" + (f", at most {cfg.frames_per_video} frames per video" if cfg.frames_per_video else ""))
    if layout == "deepfakebench":
        line = (f"x2dfd assess: read split '{cfg.split}', compression '{cfg.compression}' of DeepfakeBench JSON "
                f"'{cfg.data}': {counts}")
    else:
        line = f"x2dfd assess: read {layout} DATA '{cfg.data}' (no splits; --split applies to DeepfakeBench JSON): {counts}"
    dfb = layout == "deepfakebench"
    return {"layout": layout, "split": cfg.split if dfb else None, "compression": cfg.compression if dfb else None,
            "frames_per_video": cfg.frames_per_video, "n_videos_available": videos, "line": line}


def _count_new(store: ScoreStore, sid: str, todo: list) -> int:
    """(image, cue) pairs that were missing before this run and are scored now."""
    n = 0
    for row, missing in todo:
        entry = store.get(sid, row["sha256"])
        if entry is not None:
            n += sum(1 for c in missing if c in entry.p_yes)
    return n


def _score_one(cfg, scorer, store, sid, row, indices, bar, failures, warner=None) -> None:
    """Score one face's missing cues batch by batch; a broken file or no face is cached as the image's result."""
    path, label, sha = row["path"], row["label"], row["sha256"]
    try:
        face = _load_face(row, cfg, warner)
    except X2DFDError as err:  # MediaError, NoFaceError: the same on every rerun, so it is cached
        store.add_error(sid, sha, one_line(str(err)), path=path, label=label)
        bar.update(len(indices))
        return
    except Exception as err:  # noqa: BLE001 - per-item boundary: record the cause, keep the run going
        failures.append({"path": path, "error": one_line(f"{type(err).__name__}: {err}")})
        bar.update(len(indices))
        return
    done = 0
    try:
        for idx, p_yes in scorer.iter_scores(face, indices):
            store.add_scores(sid, sha, {scorer.cues[i].id: float(p) for i, p in zip(idx, p_yes)}, path=path,
                             label=label)
            done += len(idx)
            bar.update(len(idx))
    except Exception as err:  # noqa: BLE001 - e.g. out of memory on one odd image: not cached, retried on rerun
        failures.append({"path": path, "error": one_line(f"MLLM failed: {type(err).__name__}: {err}")})
        bar.update(len(indices) - done)


def _rank(cfg, bank, full_bank, rows, ds_all, store, sid, setting, scorer, mllm) -> dict[str, Any]:
    """Metrics of every cue over the faces with a complete set of scores, and the ranking.json document."""
    import numpy as np

    from x2dfd.feature_assessment.ranking import rank_cues, summarize_regions
    from x2dfd.dataset import class_counts

    cue_ids = [c.id for c in bank.cues]
    labels, matrix, complete = [], [], []
    undetermined = {"real": 0, "fake": 0}
    errors = []
    for row in rows:
        entry = store.get(sid, row["sha256"])
        name = "fake" if row["label"] == 1 else "real"
        if entry is not None and entry.error is not None:
            undetermined[name] += 1
            errors.append({"path": row["path"], "label": name, "error": entry.error})
            continue
        if entry is None or any(c not in entry.p_yes for c in cue_ids):
            continue  # failed in this run (see run.failures)
        complete.append(row)
        labels.append(row["label"])
        matrix.append([entry.p_yes[c] for c in cue_ids])
    n_scored = {"real": labels.count(0), "fake": labels.count(1)}
    if not n_scored["real"] or not n_scored["fake"]:
        missing = "real" if not n_scored["real"] else "fake"
        raise UsageError(f"no {missing} face could be scored ({undetermined[missing]} undetermined, e.g. no face found; "
                         f"see {Path(cfg.out) / SCORES_FILE}); cannot rank cues")
    p_yes = np.asarray(matrix, dtype=np.float64)
    alpha = 1.0 - cfg.ci
    ranked = rank_cues(bank.cues, labels, p_yes, rank_by=cfg.rank_by, n_boot=cfg.bootstrap, seed=cfg.seed, alpha=alpha)
    regions = summarize_regions(bank.cues, labels, p_yes, ranked, n_boot=cfg.bootstrap, seed=cfg.seed, alpha=alpha)
    fingerprint = hashlib.sha256("\n".join(sorted(f"{r['sha256']}:{r['label']}" for r in rows)).encode()).hexdigest()
    setting_line = store.settings.get(sid, {})
    return {
        "command": "assess",
        "x2dfd_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "model": {"model": cfg.model, "revision": setting["revision"] or (setting_line.get("mllm") or {}).get("revision"),
                  "adapter": cfg.adapter, "dtype": setting["dtype"], "quantization": setting["quantization"],
                  "fingerprint": setting["model_fingerprint"], "adapter_fingerprint": setting["adapter_fingerprint"],
                  "architecture": (mllm.describe() if mllm else setting_line.get("mllm") or {}).get("architecture")},
        "template_version": setting["template_version"],
        "answer_tokens": setting_line.get("answer_tokens"),
        "setting": {"id": sid, **setting},
        "scorer": scorer.describe() if scorer else {"method": "cache (nothing new to score)"},
        "cue_bank": {"paths": bank.paths, "fingerprint": full_bank.fingerprint(), "n_cues": len(bank.cues),
                     "only": cfg.only or None},
        "data": {
            "source": cfg.data, "fingerprint": fingerprint, "per_class": cfg.per_class, "seed": cfg.seed,
            "n_available": class_counts(ds_all), "n_sampled": {"real": sum(r["label"] == 0 for r in rows),
                                                               "fake": sum(r["label"] == 1 for r in rows)},
            "n_scored": n_scored, "undetermined": undetermined, "errors": errors[:50],
            "face": setting["face"],
        },
        "metrics": {"rank_by": cfg.rank_by, "auc": "ROC AUC of P(yes), fake = positive",
                    "balanced_accuracy_threshold": 0.5, "bootstrap": cfg.bootstrap, "ci": cfg.ci, "seed": cfg.seed},
        "scores_path": SCORES_FILE,
        "cues": ranked,
        "regions": regions,
    }


def _write_regions_csv(regions: list[dict], path: Path) -> None:
    import csv

    cols = ["region", "n_cues", "region_auc", "region_auc_lo", "region_auc_hi", "mean_cue_auc", "best_cue",
            "best_cue_auc", "worst_cue", "worst_cue_auc", "n_inverted"]
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(cols)
        for r in regions:
            w.writerow([r["region"], r["n_cues"], r["region_auc"], *r["region_auc_ci"], r["mean_cue_auc"], r["best_cue"],
                        r["best_cue_auc"], r["worst_cue"], r["worst_cue_auc"], r["n_inverted"]])


def summary_text(ranking: dict[str, Any], n: int = 10) -> str:
    cues = ranking["cues"]
    lines = [f"{'rank':>4}  {'cue':<36} {'AUC':>6} {'CI':>13} {'bACC':>6}  flags"]
    shown = cues if len(cues) <= 2 * n else cues[:n] + [None] + cues[-n:]
    for r in shown:
        if r is None:
            lines.append("   ...")
            continue
        ci = f"[{r['auc_ci'][0]:.3f},{r['auc_ci'][1]:.3f}]"
        lines.append(f"{r['rank']:>4}  {r['id']:<36} {r['auc']:6.3f} {ci:>13} {r['balanced_accuracy']:6.3f}  "
                     f"{','.join(r['flags'])}")
    lines.append("")
    lines.append(f"{'region':<14} {'AUC':>6} {'mean cue AUC':>12}  best cue")
    for g in ranking["regions"]:
        lines.append(f"{g['region']:<14} {g['region_auc']:6.3f} {g['mean_cue_auc']:12.3f}  {g['best_cue']}")
    d = ranking["data"]
    lines.append("")
    lines.append(f"faces scored: {d['n_scored']['real']} real, {d['n_scored']['fake']} fake; undetermined (no face / "
                 f"unreadable): {d['undetermined']['real']} real, {d['undetermined']['fake']} fake; "
                 f"newly scored pairs: {ranking['run']['newly_scored']} ({ranking['run']['cues_per_second'] or '-'} cues/s)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    result = run_assess(cfg)
    if result.ranking is not None and not cfg.quiet:
        print(summary_text(result.ranking), file=sys.stderr)
        print(f"x2dfd assess: wrote {result.out_dir / 'ranking.json'}", file=sys.stderr)
    return 0
