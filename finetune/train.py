"""``x2dfd finetune``: turn an off-the-shelf MLLM into a deepfake explainer with LoRA / QLoRA (X2-DFD's SFS + WFS).

    x2dfd assess data/ --model llava-hf/llava-1.5-7b-hf --out mfa/                       # rank the cues first
    x2dfd finetune data/ --ranking mfa/ranking.json --out runs/x2dfd-lora                 # build data, train, evaluate
    x2dfd finetune data/ --ranking mfa/ranking.json --out runs/x2dfd-lora --build-data-only  # then inspect/edit OUT/data
    x2dfd finetune --data-dir runs/x2dfd-lora/data --out runs/x2dfd-lora --load-in-4bit    # QLoRA from (edited) data
    x2dfd finetune data/ --top-k 0 --out runs/wfs-only                                    # WFS alone: no cue sentences
    x2dfd finetune ... --resume                                                           # continue after a crash
    accelerate launch -m x2dfd finetune data/ --ranking mfa/ranking.json --out runs/x   # many GPUs / nodes
    x2dfd explain faces/ --adapter runs/x2dfd-lora                                        # use it

Steps: build the training data (``finetune.data``: explain's question with the expert scores, answers
from the top-K cues and the expert), wrap the model with LoRA on the language model and a trainable
projector (``finetune.lora``), train with loss on the answer tokens only (``finetune.batch``) through
``accelerate.Accelerator`` (one process on CPU or GPU, or whatever ``accelerate launch`` starts: this
module has no distributed code of its own), measure the held-out AUC of p_fake (read exactly as
explain reads it, ``MLLM.judge``) before training and after every epoch, and write into ``--out``:

* ``adapter_config.json`` + ``adapter_model.safetensors`` (LoRA + projector) and the processor files,
* ``README.md`` (Hugging Face model card), ``finetune.config.json`` (resolved options, data and ranking
  fingerprints, LoRA targets, trainable share), ``ranking.json`` (the ranking trained from; none with --top-k 0,
  whose answers state no cue: then the config's ranking and its fingerprint are null),
* ``preset.json``: the experts whose scores were in the training questions (name, prompt word, weights path and
  sha256; ``[]`` for --no-expert), the question template version and the base model: ``x2dfd explain --adapter
  OUT`` runs those experts by default and refuses others unless --allow-expert-mismatch (``x2dfd.presets``),
* ``metrics.json``, ``loss.jsonl`` (one line per optimizer step), ``loss.png``,
* ``data/`` (the training data, unless --data-dir) and ``checkpoints/step-N/`` (resumable, trainable weights only).
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from x2dfd.finetune.card import auc_text
from x2dfd.finetune.config import FinetuneConfig, parse_args
from x2dfd import __version__
from x2dfd.cliargs import to_jsonable
from x2dfd.errors import UsageError
from x2dfd.records import one_line

CHECKPOINTS_DIR = "checkpoints"
STATE_FILE = "trainer_state.json"
LOSS_FILE = "loss.jsonl"
METRICS_FILE = "metrics.json"
CONFIG_FILE = "finetune.config.json"


@dataclass
class FinetuneResult:
    out_dir: Path
    data_dir: Path
    data_info: dict[str, Any]
    metrics: dict[str, Any] = field(default_factory=dict)
    steps: int = 0


# ------------------------------------------------------------------------------------------------ helpers
def _step_of(p: Path) -> int | None:
    try:
        return int(p.name.split("-", 1)[1])
    except (IndexError, ValueError):
        return None


def list_checkpoints(root: Path) -> list[Path]:
    """Checkpoint folders with a complete state, oldest first."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-") and _step_of(p) is not None
             and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: _step_of(p))


STATE_KEYS = ("step", "epoch", "batches_in_epoch", "data_fingerprint")


def read_state(checkpoint: Path) -> dict[str, Any]:
    """A checkpoint's trainer state; an unreadable or incomplete one is a one-line UsageError (never skipped in
    silence: resuming from an older checkpoint would quietly redo, or lose, training)."""
    path = checkpoint / STATE_FILE
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UsageError(f"--resume: cannot read '{path}' ({type(err).__name__}: {one_line(str(err), 200)}); remove "
                         f"the folder '{checkpoint}' to resume from the checkpoint before it") from None
    missing = [k for k in STATE_KEYS if not isinstance(state, dict) or k not in state]
    if missing or not all(isinstance(state[k], int) for k in ("step", "epoch", "batches_in_epoch")):
        raise UsageError(f"--resume: '{path}' is not a complete trainer state (missing or bad: "
                         f"{', '.join(missing) or 'step/epoch/batches_in_epoch'}); remove the folder '{checkpoint}' to "
                         "resume from the checkpoint before it")
    return state


def resume_checkpoint(root: Path, quiet: bool = False) -> Path | None:
    """The newest checkpoint to resume from. A newest folder whose state file is missing (a save cut off by a
    kill) is reported and passed over; any other unreadable state is an error (see :func:`read_state`)."""
    if not root.is_dir():
        return None
    folders = sorted((p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-")
                      and _step_of(p) is not None), key=lambda p: _step_of(p))
    while folders and not (folders[-1] / STATE_FILE).exists():
        if not quiet:
            print(f"x2dfd finetune: --resume: '{folders[-1]}' has no {STATE_FILE} (its save was cut off); "
                  "resuming from the checkpoint before it", file=sys.stderr)
        folders.pop()
    return folders[-1] if folders else None


def read_loss_lines(path: Path, up_to_step: int | None = None) -> list[dict[str, Any]]:
    """loss.jsonl entries (split on "\\n" only; a torn or corrupt line is skipped, and said so)."""
    from x2dfd.records import read_jsonl_text

    out = []
    for n, text in read_jsonl_text(path, errors="replace"):
        try:
            entry = json.loads(text)
            step = int(entry["step"])
        except (ValueError, KeyError, TypeError):
            print(f"x2dfd finetune: '{path}' line {n} is not a loss entry; skipped", file=sys.stderr)
            continue
        if up_to_step is None or step <= up_to_step:
            out.append(entry)
    return out


class EpochSampler:
    """A fresh seeded permutation per epoch, the same in every process (accelerate shards its batches), so a
    resumed run sees the data in the same order as an uninterrupted one. The prepared loader's ``set_epoch``
    (accelerate's) drives ``set_epoch`` here."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        import torch

        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())


class FaceSamples:
    """Rows of a built split with their face crop decoded (as explain decodes: ``x2dfd.media.load_image``)."""

    def __init__(self, ds):
        self.rows = ds.to_list()

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        from x2dfd.media import load_image

        row = self.rows[i]
        return {"image": load_image(row["image"]), "question": row["question"], "answer": row["answer"],
                "label": row["label"]}


def _device_type(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device.split(":", 1)[0]


def _mixed_precision(dtype) -> str:
    import torch

    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "no")


def _log(cfg: FinetuneConfig, accelerator, message: str) -> None:
    if not cfg.quiet and (accelerator is None or accelerator.is_main_process):
        print(f"x2dfd finetune: {message}", file=sys.stderr)


# ------------------------------------------------------------------------------------------------ evaluation
def evaluate(judge, ds, batch_size: int, accelerator) -> dict[str, Any]:
    """Held-out p_fake read as ``x2dfd explain`` reads it (``MLLM.judge``), AUC and accuracy at 0.5; each process
    scores its share and the results are gathered."""
    import numpy as np
    import torch
    from accelerate.utils import gather_object

    from x2dfd.finetune.lora import evaluation
    from x2dfd.media import load_image
    from x2dfd.metrics import roc_auc

    rows = ds.to_list()
    mine = list(range(accelerator.process_index, len(rows), accelerator.num_processes))
    results: list[tuple[int, float]] = []
    with evaluation(judge.model), accelerator.autocast(), torch.inference_mode():
        for start in range(0, len(mine), batch_size):
            chunk = mine[start : start + batch_size]
            verdicts = judge.judge([load_image(rows[i]["image"]) for i in chunk], [rows[i]["question"] for i in chunk],
                                   max_new_tokens=0)
            results += [(i, float(v.p_fake)) for i, v in zip(chunk, verdicts)]
    merged = dict(gather_object(results))
    y = np.array([rows[i]["label"] for i in sorted(merged)])
    p = np.array([merged[i] for i in sorted(merged)])
    out: dict[str, Any] = {"n": int(len(y)), "n_real": int((y == 0).sum()), "n_fake": int((y == 1).sum())}
    if len(y):
        out["accuracy"] = round(float(np.mean((p >= 0.5) == (y == 1))), 6)
        out["mean_p_fake_real"] = round(float(p[y == 0].mean()), 6) if (y == 0).any() else None
        out["mean_p_fake_fake"] = round(float(p[y == 1].mean()), 6) if (y == 1).any() else None
    out["auc"] = round(float(roc_auc(y, p)), 6) if out["n_real"] and out["n_fake"] else None
    if out["auc"] is not None:  # a small held-out split can mislead: its 95% interval (videos resampled whole)
        from x2dfd.metrics import bootstrap_metrics

        ids = [rows[i].get("video_id") or f"#{i}" for i in sorted(merged)]
        _, lo, hi = bootstrap_metrics(y, p, n=1000, seed=0, groups=ids)["auc"]
        out["auc_ci95"] = [round(lo, 4), round(hi, 4)]
    return out


# ------------------------------------------------------------------------------------------------ stages
def prepare_data(cfg: FinetuneConfig, accelerator, get_mllm: Callable, device: str) -> tuple[Path, dict[str, Any]]:
    """Build the data folder (main process; the others wait) unless --data-dir, or --resume with data already built."""
    from x2dfd.finetune.data import INFO_FILE, SPLIT_FILES, DataBuilder

    if cfg.data_dir is not None:
        data_dir = Path(cfg.data_dir).expanduser()
        info_path = data_dir / INFO_FILE
        return data_dir, json.loads(info_path.read_text(encoding="utf-8")) if info_path.is_file() else {}
    data_dir = Path(cfg.out) / "data"
    if cfg.resume and (data_dir / SPLIT_FILES["train"]).is_file():
        _log(cfg, accelerator, f"--resume: reusing the training data in {data_dir}")
        return data_dir, json.loads((data_dir / INFO_FILE).read_text(encoding="utf-8"))
    info: dict[str, Any] = {}
    if accelerator is None or accelerator.is_main_process:
        from x2dfd.api import load_experts
        from x2dfd.presets import expert_entries, write_training_record

        specs = expert_specs(cfg)
        builder = DataBuilder(cfg, lambda: load_experts(specs, device), get_mllm)
        info = builder.build(data_dir)
        # DATA/preset.json: the experts whose scores are in these questions (a --data-dir run trains with them)
        write_training_record(data_dir, expert_entries(builder.experts, specs), question_version(info),
                              x2dfd_version=__version__, data=str(data_dir))
        _log(cfg, None, data_summary(info, data_dir))
    if accelerator is not None:
        accelerator.wait_for_everyone()
        info = json.loads((data_dir / INFO_FILE).read_text(encoding="utf-8"))
    return data_dir, info


def expert_specs(cfg: FinetuneConfig) -> list[str]:
    """``NAME`` / ``NAME=WEIGHTS`` of the experts this run asks for ([] with --no-expert; the default set without
    --expert), as every command reads --expert (:func:`x2dfd.api.load_experts`)."""
    from x2dfd.experts import DEFAULT_EXPERTS

    return [] if cfg.no_expert else list(cfg.expert or DEFAULT_EXPERTS)


def question_version(info: dict[str, Any]) -> str:
    """The version of the question template the data's questions were rendered with."""
    from x2dfd.pipeline import QUESTION_TEMPLATE
    from x2dfd.prompts import template_version

    return (info.get("templates") or {}).get("question") or template_version(QUESTION_TEMPLATE)


def _normal_specs(specs: list[str]) -> list[tuple[str, str | None]]:
    out = []
    for spec in specs:
        name, _, weights = spec.partition("=")
        weights = weights.strip()
        path = Path(weights).expanduser()
        out.append((name.strip(), str(path.resolve()) if weights and path.exists() else (weights or None)))
    return out


def training_experts(cfg: FinetuneConfig, data_dir: Path, data_info: dict[str, Any]) -> list[dict[str, Any]]:
    """The experts whose scores are in the training questions (name, prompt word, weights, sha256): from the data
    folder's preset.json (written when the data is built), else (data built by an older x2dfd) the --expert options,
    checked against the expert names in its info. Naming other experts than the data's is a one-line error."""
    from x2dfd.presets import RECORD_KEY, describe_experts, expert_entries, folder_preset

    specs = expert_specs(cfg)
    record = folder_preset(str(data_dir))
    if record is not None and record.data.get(RECORD_KEY):
        entries = [dict(e) for e in record.experts]
        if (cfg.no_expert or cfg.expert) and _normal_specs(specs) != _normal_specs(record.expert_specs()):
            raise UsageError(f"the training data in '{data_dir}' was built with experts {describe_experts(entries)} "
                             "(their scores are in its questions); leave out --expert/--no-expert, or build new data "
                             "with these experts")
        return entries
    from x2dfd.api import load_experts

    entries = expert_entries(load_experts(specs, "cpu"), specs)
    if "experts" in data_info:
        names = [str(e.get("name")) for e in data_info.get("experts") or []]
        if names != [e["name"] for e in entries]:
            raise UsageError(f"the training data in '{data_dir}' was built with experts [{', '.join(names) or 'none'}], "
                             f"but this run names {describe_experts(entries)}; give the same --expert (or --no-expert)")
    return entries


def data_summary(info: dict[str, Any], data_dir: Path) -> str:
    """The data report printed after building: class balance per split, what was dropped, the cues."""
    b = info["balance"]
    train, before = b["train"], b["train_before"]
    dropped = info["dropped"]["no_face_or_unreadable"]
    rebalanced = "" if b["mode"] == "none" else f"; {b['mode']} from {before['real']} real, {before['fake']} fake"
    lines = [f"training data in {data_dir}:",
             f"  train: {train['real']} real, {train['fake']} fake ({train['fake_per_real']} fake per real{rebalanced})",
             f"  eval:  {b['eval']['real']} real, {b['eval']['fake']} fake",
             f"  dropped (no face / unreadable): {dropped['real']} real, {dropped['fake']} fake; "
             f"duplicate files: {info['dropped']['duplicate_files']}",
             f"  cues: {', '.join(c['id'] for c in info['cues'])}" if info["cues"] or not info.get("weak_only") else
             "  cues: none (--top-k 0: Weak Feature Supplementing only, no cue sentence in any answer)",
             f"  answers with an expert sentence: {info['expert_sentences']}"]
    ratio = train["fake_per_real"]
    if b["mode"] == "none" and ratio is not None and not 0.5 <= ratio <= 2:
        lines.append("  note: the classes are imbalanced; --balance undersample|oversample evens them")
    return "\n".join(lines)


def _save_checkpoint(accelerator, ckpt_root: Path, state: dict[str, Any], keep: int) -> Path:
    path = ckpt_root / f"step-{state['step']:07d}"
    accelerator.save_state(str(path))
    if accelerator.is_main_process:
        (path / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")
        for old in list_checkpoints(ckpt_root)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return path


def _trainable_only(models, weights, output_dir) -> None:
    """accelerate save hook: a checkpoint holds the trained weights (LoRA, projector), not the frozen base."""
    for i, model in enumerate(models):
        if i < len(weights):
            names = {n for n, p in model.named_parameters() if p.requires_grad}
            weights[i] = {k: v for k, v in weights[i].items() if k in names}


def check_inputs(cfg: FinetuneConfig) -> None:
    """The user's files, checked before anything heavy is imported or loaded (one-line errors in seconds)."""
    from x2dfd.finetune.data import SPLIT_FILES, check_cues, load_ranking

    if cfg.data_dir is not None:
        if not (Path(cfg.data_dir).expanduser() / SPLIT_FILES["train"]).is_file():
            raise UsageError(f"--data-dir '{cfg.data_dir}' has no {SPLIT_FILES['train']} (build one with --build-data-only)")
        return
    if cfg.top_k > 0:  # --top-k 0 states no cue: the ranking is not read (DataBuilder notes it is ignored)
        ranking, _ = load_ranking(cfg.ranking)
        check_cues(ranking, cfg)  # uninformative cues refused here, on every process, before any model loads
    for flag, path in (("DATA", cfg.data), ("--eval-data", cfg.eval_data)):
        if path is not None and not Path(path).expanduser().exists():
            raise UsageError(f"{flag} '{path}' does not exist (give a folder with real/ and fake/, a .csv/.jsonl "
                             "manifest or a DeepfakeBench .json)")


def run_finetune(cfg: FinetuneConfig, on_step: Callable[[int], None] | None = None) -> FinetuneResult:
    """Everything ``x2dfd finetune`` does, callable from Python (``on_step(step)`` after each optimizer step)."""
    check_inputs(cfg)
    import torch
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm
    from transformers import get_scheduler

    from x2dfd.finetune.batch import AnswerEncoder
    from x2dfd.finetune.card import plot_loss, write_model_card
    from x2dfd.finetune.data import RANKING_FILE, data_fingerprint, load_training_data, stale_copy
    from x2dfd.finetune.lora import (add_lora, find_parts, load_for_training, lora_modules, param_groups, target_regex,
                               trainable_share)
    from x2dfd.media import file_sha256
    from x2dfd.mllm import MLLM, resolve_dtype

    t_start = time.perf_counter()
    out_dir = Path(cfg.out)
    ckpt_root = out_dir / CHECKPOINTS_DIR
    checkpoints = list_checkpoints(ckpt_root)
    resume_from = resume_checkpoint(ckpt_root, cfg.quiet) if cfg.resume else None
    if cfg.resume and resume_from is None:
        raise UsageError(f"--resume: no checkpoint in '{ckpt_root}' (start without --resume)")
    resume_state = read_state(resume_from) if resume_from is not None else None
    if checkpoints and not cfg.resume and not cfg.build_data_only:
        raise UsageError(f"'{out_dir}' holds checkpoints of an earlier run: pass --resume to continue it, "
                         "or choose another --out")
    device_type = _device_type(cfg.device)
    dtype = resolve_dtype(cfg.dtype, torch.device(device_type))
    if device_type == "cpu" and dtype == torch.float16:
        raise UsageError("--dtype float16 needs a GPU (use float32 or bfloat16 on CPU)")
    if device_type == "cuda" and ":" in cfg.device:
        torch.cuda.set_device(torch.device(cfg.device))
    accelerator = Accelerator(gradient_accumulation_steps=cfg.grad_accum, mixed_precision=_mixed_precision(dtype),
                              cpu=device_type == "cpu")
    device = accelerator.device
    set_seed(cfg.seed)
    if cfg.quiet:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()

    holder: dict[str, Any] = {}

    def get_mllm():
        if "mllm" not in holder:
            holder["mllm"] = load_for_training(cfg, device)
        return holder["mllm"]

    data_dir, data_info = prepare_data(cfg, accelerator, get_mllm, str(device))
    experts_used = training_experts(cfg, data_dir, data_info)  # recorded in the adapter folder (preset.json)
    train_ds, eval_ds, _ = load_training_data(data_dir)
    fingerprint = data_fingerprint(data_dir)
    result = FinetuneResult(out_dir, data_dir, data_info)
    if cfg.build_data_only:
        _log(cfg, accelerator, f"data built in {data_dir} (fingerprint {fingerprint[:12]}); train with "
                               f"`x2dfd finetune --data-dir {data_dir} --out {out_dir}`")
        return result

    # ----------------------------------------------------------------------------------- model
    mllm = get_mllm()
    parts = find_parts(mllm.model)
    encoder = AnswerEncoder(mllm)
    encoder([FaceSamples(train_ds.select([0]))[0]])  # fail fast on a tokenizer/processor that cannot be trained
    model = add_lora(mllm.model, cfg, parts)
    judge = MLLM(model, mllm.processor, cfg, mllm.source)
    share = trainable_share(model)
    sampler = EpochSampler(len(train_ds), cfg.seed)
    # Its own generator: starting an epoch then draws nothing from the global RNG, so dropout masks after a
    # --resume are those of the uninterrupted run.
    loader = DataLoader(FaceSamples(train_ds), batch_size=cfg.batch_size, sampler=sampler, collate_fn=encoder,
                        num_workers=cfg.num_workers, generator=torch.Generator().manual_seed(cfg.seed))
    optimizer = torch.optim.AdamW(param_groups(model, cfg), weight_decay=cfg.weight_decay)
    world = accelerator.num_processes
    updates_per_epoch = math.ceil(math.ceil(len(train_ds) / (cfg.batch_size * world)) / cfg.grad_accum)
    total_updates = cfg.max_steps or updates_per_epoch * cfg.epochs
    epochs = math.ceil(total_updates / updates_per_epoch)
    # accelerate steps a prepared scheduler once per process per optimizer step: size it for that.
    scheduler = get_scheduler(cfg.scheduler if cfg.scheduler != "constant" else "constant_with_warmup", optimizer,
                              num_warmup_steps=math.ceil(cfg.warmup_ratio * total_updates) * world,
                              num_training_steps=total_updates * world)
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    accelerator.register_save_state_pre_hook(_trainable_only)
    trainable = [p for p in model.parameters() if p.requires_grad]

    # ----------------------------------------------------------------------------------- resume
    step, start_epoch, skip = 0, 0, 0
    metrics: dict[str, Any] = {"eval_before": None, "epochs": []}
    loss_path = out_dir / LOSS_FILE
    if cfg.resume:
        last, state = resume_from, resume_state
        if state.get("data_fingerprint") != fingerprint:
            raise UsageError(f"--resume: the training data changed since checkpoint '{last}' (fingerprint "
                             f"{str(state.get('data_fingerprint'))[:12]} vs {fingerprint[:12]}); start a new --out")
        if state["step"] > total_updates:
            raise UsageError(f"--resume: checkpoint '{last}' is at step {state['step']}, past the {total_updates} steps "
                             "that --max-steps/--epochs now ask for; give at least that many, or start a new --out")
        if state["step"] == total_updates and state.get("total_updates") == total_updates:
            raise UsageError(f"--resume: the run in '{out_dir}' already finished its {total_updates} steps; raise "
                             "--max-steps or --epochs to train further")
        try:
            accelerator.load_state(str(last), strict=False)
        except Exception as err:  # noqa: BLE001 - a damaged checkpoint: say which and what to do, in one line
            raise UsageError(f"--resume: cannot load checkpoint '{last}' ({type(err).__name__}: "
                             f"{one_line(str(err), 200)}); remove that folder to resume from the one before") from None
        step, start_epoch, skip = state["step"], state["epoch"], state["batches_in_epoch"]
        metrics = state.get("metrics", metrics)
        before = state.get("total_updates")
        extended = f"; the schedule now runs to {total_updates} (was {before})" if before not in (None, total_updates) else ""
        _log(cfg, accelerator, f"resuming from {last} (step {step} of {total_updates}{extended})")
    if accelerator.is_main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
        kept = read_loss_lines(loss_path, step) if cfg.resume and loss_path.is_file() else []
        loss_path.write_text("".join(json.dumps(e) + "\n" for e in kept))

    projector = "trained" if len(optimizer.param_groups) > 1 else "frozen"
    _log(cfg, accelerator, f"{type(mllm.model).__name__}: LoRA r={cfg.lora_r} on {len(lora_modules(model))} "
                           f"language-model layers, projector {projector}; "
                           f"trainable {share['trainable']:,} of {share['total']:,} parameters ({share['percent']}%); "
                           f"{len(train_ds)} train / {len(eval_ds)} held-out samples; {total_updates} optimizer steps "
                           f"on {world} process(es), {device}, {str(dtype).replace('torch.', '')}"
                           f"{', 4-bit' if cfg.load_in_4bit else ''}")
    if cfg.eval_before and len(eval_ds) and metrics.get("eval_before") is None:
        metrics["eval_before"] = evaluate(judge, eval_ds, cfg.eval_batch_size, accelerator)
        _log(cfg, accelerator, f"held-out before training: AUC {auc_text(metrics['eval_before'])}, "
                               f"accuracy {metrics['eval_before'].get('accuracy')}")

    # ----------------------------------------------------------------------------------- train
    bar = tqdm(total=total_updates, initial=step, unit="step", desc="finetune", file=sys.stderr,
               disable=cfg.quiet or not accelerator.is_main_process)
    t0 = time.perf_counter()
    window_loss, window_n = torch.zeros((), device=device), 0
    model.train()
    done = step >= total_updates
    for epoch in range(start_epoch, epochs):
        if done:
            break
        loader.set_epoch(epoch)  # accelerate passes it to the sampler, and to the loader skip_first_batches makes
        batches = accelerator.skip_first_batches(loader, skip) if skip else loader
        seen = skip
        skip = 0
        for batch in batches:
            with accelerator.accumulate(model):
                if "pixel_values" in batch:
                    batch["pixel_values"] = batch["pixel_values"].to(judge.dtype)
                loss = model(**batch).loss
                accelerator.backward(loss)
                grad_norm = None
                if accelerator.sync_gradients and cfg.max_grad_norm > 0:
                    grad_norm = accelerator.clip_grad_norm_(trainable, cfg.max_grad_norm)
                lrs = {g.get("name", str(i)): g["lr"] for i, g in enumerate(optimizer.param_groups)}  # this update's
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            seen += 1
            window_loss += loss.detach().float()
            window_n += 1
            if not accelerator.sync_gradients:
                continue
            step += 1
            mean_loss = accelerator.gather(window_loss / window_n).mean().item()
            window_loss, window_n = torch.zeros((), device=device), 0
            if accelerator.is_main_process:
                entry = {"step": step, "epoch": round(epoch + seen / max(1, len(loader)), 4), "loss": round(mean_loss, 6),
                         "lr": lrs.get("lora"), "projector_lr": lrs.get("projector"),
                         "grad_norm": None if grad_norm is None else round(float(grad_norm), 6),
                         "elapsed_s": round(time.perf_counter() - t0, 3)}
                with loss_path.open("a") as fh:
                    fh.write(json.dumps(entry) + "\n")
            bar.update(1)
            bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{lrs.get('lora', 0):.2e}")
            state = {"step": step, "epoch": epoch, "batches_in_epoch": seen, "data_fingerprint": fingerprint,
                     "total_updates": total_updates, "metrics": metrics}
            if cfg.save_every and step % cfg.save_every == 0 and step < total_updates:
                _save_checkpoint(accelerator, ckpt_root, state, cfg.save_total_limit)
            if on_step is not None:
                on_step(step)
            if step >= total_updates:
                done = True
                break
        if len(eval_ds):
            ev = {"epoch": epoch + 1, "step": step, **evaluate(judge, eval_ds, cfg.eval_batch_size, accelerator)}
            metrics["epochs"].append(ev)
            _log(cfg, accelerator, f"epoch {epoch + 1}: held-out AUC {auc_text(ev)}, accuracy {ev.get('accuracy')}")
        # A run that stops inside an epoch (--max-steps) records where: a --resume with more steps goes on from
        # that batch, as the uninterrupted run would.
        whole = seen >= len(loader)
        _save_checkpoint(accelerator, ckpt_root, {"step": step, "epoch": epoch + 1 if whole else epoch,
                                                  "batches_in_epoch": 0 if whole else seen,
                                                  "data_fingerprint": fingerprint, "total_updates": total_updates,
                                                  "metrics": metrics}, cfg.save_total_limit)
    bar.close()
    train_seconds = time.perf_counter() - t0

    # ----------------------------------------------------------------------------------- outputs
    metrics["final"] = metrics["epochs"][-1] if metrics["epochs"] else None
    result.metrics, result.steps = metrics, step
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        unwrapped.save_pretrained(str(out_dir))
        mllm.processor.save_pretrained(str(out_dir))
        ranking_src = data_dir / RANKING_FILE
        if ranking_src.is_file() and not data_info.get("weak_only"):
            shutil.copyfile(ranking_src, out_dir / "ranking.json")
        elif data_info.get("weak_only"):  # no ranking behind these answers (--top-k 0): none, not an earlier run's
            stale_copy(out_dir / "ranking.json", cfg.ranking)
        losses = read_loss_lines(loss_path)
        metrics["train"] = {"steps": step, "final_loss": losses[-1]["loss"] if losses else None,
                            "seconds": round(train_seconds, 2), "samples": len(train_ds)}
        (out_dir / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n")
        plot_loss(losses, metrics["epochs"], out_dir / "loss.png")
        resolved = {
            "command": "finetune", "x2dfd_version": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "config": to_jsonable(cfg), "base_model": cfg.model, "architecture": type(mllm.model).__name__,
            "processes": world, "device": str(device), "dtype": str(dtype).replace("torch.", ""),
            "mixed_precision": accelerator.mixed_precision,
            "quantization": "4bit" if cfg.load_in_4bit else "8bit" if cfg.load_in_8bit else None,
            "lora": {"target_regex": target_regex(parts, cfg.lora_targets or None), "language_model": parts.language_model,
                     "projector": parts.projector, "vision_tower": parts.vision, "layers": len(lora_modules(unwrapped)),
                     "trainable": share},
            "schedule": {"total_updates": total_updates, "updates_per_epoch": updates_per_epoch, "epochs": epochs,
                         "effective_batch": cfg.batch_size * cfg.grad_accum * world},
            "data": {"dir": str(data_dir), "fingerprint": fingerprint, "train": len(train_ds), "held_out": len(eval_ds),
                     "balance": data_info.get("balance"), "cues": data_info.get("cues"),
                     "top_k": data_info.get("top_k"), "weak_only": bool(data_info.get("weak_only")),
                     "templates": data_info.get("templates")},
            "experts": experts_used, "question_template": question_version(data_info),
            "ranking": data_info.get("ranking"),
            "ranking_fingerprint": (file_sha256(out_dir / "ranking.json")
                                    if (out_dir / "ranking.json").is_file() else None),
        }
        (out_dir / CONFIG_FILE).write_text(json.dumps(resolved, indent=2, default=str) + "\n")
        # OUT/preset.json: explain/evaluate/the demo --adapter OUT run these experts (and this base model) by default
        from x2dfd.presets import write_training_record

        base = Path(cfg.model).expanduser()
        write_training_record(out_dir, experts_used, question_version(data_info),
                              checkpoint=str(base.resolve()) if base.is_dir() else cfg.model, x2dfd_version=__version__,
                              created=resolved["created"], data_fingerprint=fingerprint)
        write_model_card(out_dir, resolved, metrics)
        _log(cfg, accelerator, f"adapter written to {out_dir} ({step} steps, {train_seconds:.1f} s); "
                               f"use it with `x2dfd explain FACES --model {cfg.model} --adapter {out_dir}`")
    accelerator.wait_for_everyone()
    _log(cfg, accelerator, f"done in {time.perf_counter() - t_start:.1f} s")
    return result


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    run_finetune(cfg)
    return 0
