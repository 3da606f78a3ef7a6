"""The options of ``x2dfd finetune`` (one dataclass; each field's docstring is its ``--help``).

Defaults are X2-DFD's recipe (Chen et al., NeurIPS 2025, after LLaVA-1.5's LoRA script): LoRA r 16,
alpha 32, dropout 0.05 on the language model's linear layers, projector trained at 2e-5, lr 2e-4 with
cosine decay and 3% warmup, one epoch, vision tower frozen, expert scores written into the question.
No torch here: ``x2dfd finetune --help`` stays fast.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from x2dfd.cliargs import parse_config
from x2dfd.errors import UsageError
from x2dfd.modelargs import ModelArgs
from x2dfd.pipeline import PipelineOptions

BALANCE = ("none", "undersample", "oversample")
CUE_ORDER = ("image", "rank")
SCHEDULERS = ("cosine", "linear", "constant")


@dataclass
class FinetuneConfig(ModelArgs):
    """LoRA/QLoRA fine-tuning of an MLLM into a deepfake explainer: top-ranked cues (SFS) and expert scores (WFS)."""

    adapter: str | None = field(default=None, metadata={"cli": False})
    """Not an option here: fine-tuning starts from the base model (continue a run with --resume)."""
    data: str | None = field(default=None, metadata={"positional": True, "optional": True, "metavar": "DATA"})
    """Labelled faces: a folder with real/ and fake/, a CSV/JSONL manifest (path,label[,video_id,source]), a
    DeepfakeBench or X2-DFD dataset JSON; images, extracted frames or video files (frames sampled as explain does)."""
    ranking: str | None = None
    """ranking.json of `x2dfd assess` (or its output folder): the cues to strengthen, and the per-image P(yes) beside
    it. Not needed with --top-k 0 (then ignored, with a note: not read, copied or fingerprinted)."""
    out: str = "finetune-out"
    """Output folder: the peft adapter, processor, model card, metrics, loss log, checkpoints/, data/."""
    data_dir: str | None = None
    """Train from a data folder built earlier with --build-data-only (and possibly edited) instead of building one from
    DATA."""
    build_data_only: bool = field(default=False, metadata={"store_true": True})
    """Build the training data (OUT/data: train.jsonl, eval.jsonl, images/, data.json), report it and stop."""
    # ---------------------------------------------------------------------------------------- data
    top_k: int = 5
    """Strong cues taken from the top of the ranking (cues flagged inverted or constant are skipped). 0: Weak Feature
    Supplementing alone, no --ranking needed: answers are the verdict, the rationale and the expert sentence where the
    expert agrees, with no cue sentence. With --no-expert too it is plain verdict fine-tuning (allowed, with a note: it
    is the baseline X2-DFD's cue and expert answers are measured against)."""
    allow_uninformative: bool = field(default=False, metadata={"store_true": True})
    """Train on top-K cues the ranking flags uninformative (AUC CI covers 0.5); without it they are refused."""
    cues_per_answer: int = 3
    """At most this many cues stated per answer: of the top-K, those whose base-model P(yes) on that face is on the
    label's side of the cue's threshold (fake: above, real: below), farthest first; none supported: no cue sentence."""
    cue_order: str = field(default="image", metadata={"choices": list(CUE_ORDER)})
    """image: ground each answer in the base MLLM's P(yes) on that face (from the assess scores, else scored now);
    rank: state the ranking's top cues for every face, unchecked (answers not grounded; no scoring)."""
    rationale: bool = True
    """Append a rationale the base MLLM writes (one generate call per face; its cost per face is reported). It is
    label-conditioned: the model is told the label and the cues, so it can state things it would not find
    unprompted; --no-rationale keeps only the sentences checked against its evidence."""
    rationale_tokens: int = 64
    """Length limit of each generated rationale."""
    expert: list[str] = field(default_factory=list, metadata={"metavar": "NAME[=WEIGHTS]"})
    """External expert whose score goes into the question (default: the shipped blending expert); NAME=WEIGHTS loads
    other weights (e.g. from `x2dfd expert train`). Recorded with their sha256 in OUT/preset.json, and used by default
    when explaining with this adapter."""
    no_expert: bool = field(default=False, metadata={"store_true": True})
    """No expert: questions carry no expert scores (then explain with --no-expert too)."""
    eval_fraction: float = 0.1
    """Share of DATA held out for evaluation (split by video_id when there is one, stratified by label)."""
    eval_data: str | None = None
    """Labelled faces for evaluation instead of a split of DATA (same formats as DATA)."""
    eval_split: str | None = field(default=None, metadata={"metavar": "NAME"})
    """DeepfakeBench JSON: the split held out for evaluation (e.g. val), read from --eval-data or else from DATA
    itself; default: --eval-data's --split, or --eval-fraction of DATA."""
    frames_per_video: int | None = field(default=None, metadata={"metavar": "N"})
    """At most N frames per video (extracted frames sharing a video_id, spread evenly from a seeded offset; X2-DFD
    trains on 8); video files give N frames (default: explain's 16). Default: every extracted frame."""
    balance: str = field(default="none", metadata={"choices": list(BALANCE)})
    """Class balance of the training split: none (keep it; X2-DFD trained on 1 real : 5 fake), undersample the larger
    class, or oversample the smaller one."""
    split: str = "train"
    """DeepfakeBench JSON only: the split of DATA to train on (train, val, test)."""
    compression: str = "c23"
    """DeepfakeBench JSON only: FaceForensics++ compression level (raw, c23, c40)."""
    data_root: str | None = None
    """DeepfakeBench JSON only: folder the frame paths are relative to (default: the JSON's folder)."""
    face_crop: bool = PipelineOptions.face_crop
    """Detect the face and crop it as `x2dfd explain` does (square, --face-scale x the box); --no-face-crop for inputs
    that are already face crops."""
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
    max_video_mb: float = PipelineOptions.max_video_mb
    """Video files larger than this are refused."""
    # ---------------------------------------------------------------------------------------- training
    epochs: int = 1
    """Passes over the training split."""
    max_steps: int | None = None
    """Stop after this many optimizer steps (overrides --epochs for the schedule)."""
    batch_size: int = 4
    """Samples per device per forward pass."""
    grad_accum: int = 1
    """Forward passes per optimizer step (effective batch: batch size x grad accum x processes)."""
    lr: float = 2e-4
    """Learning rate of the LoRA weights."""
    projector_lr: float = 2e-5
    """Learning rate of the vision-language projector (trained in full, saved with the adapter); 0 freezes it."""
    scheduler: str = field(default="cosine", metadata={"choices": list(SCHEDULERS)})
    """Learning-rate schedule after the warmup."""
    warmup_ratio: float = 0.03
    """Share of the optimizer steps spent warming the learning rate up from 0."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    max_grad_norm: float = 1.0
    """Gradient clipping norm (0: no clipping)."""
    lora_r: int = 16
    """LoRA rank."""
    lora_alpha: int = 32
    """LoRA scaling alpha (the update is scaled by alpha / r)."""
    lora_dropout: float = 0.05
    """Dropout on the LoRA branch."""
    lora_targets: list[str] = field(default_factory=list, metadata={"metavar": "NAME"})
    """Linear layers of the LANGUAGE MODEL to adapt, by name (q_proj, v_proj, ...); default: all of them. The vision
    tower never gets LoRA."""
    gradient_checkpointing: bool = True
    """Recompute activations in the backward pass (less memory, about a third more time)."""
    seed: int = 0
    """Seed of the split, the sampling, the LoRA init and the data order."""
    eval_batch_size: int = 8
    """Held-out faces per forward pass when measuring AUC."""
    eval_before: bool = True
    """Also measure the held-out AUC before training (the base model's)."""
    save_every: int = 0
    """Save a resumable checkpoint every N optimizer steps (0: at the end of each epoch only)."""
    save_total_limit: int = 2
    """Checkpoints kept in OUT/checkpoints (oldest removed first)."""
    resume: bool = field(default=False, metadata={"store_true": True})
    """Continue from the latest checkpoint in OUT/checkpoints (same data and options)."""
    num_workers: int = 0
    """DataLoader worker processes that load and preprocess images."""
    quiet: bool = field(default=False, metadata={"store_true": True})
    """No progress bars and no summaries."""

    def __post_init__(self):
        ModelArgs.__post_init__(self)
        if self.adapter:
            raise UsageError("--adapter is not a finetune option: to continue a run use --resume with the same --out")
        if self.data_dir is None and self.data is None:
            raise UsageError("give DATA (a folder with real/ and fake/, a manifest or a DeepfakeBench JSON) "
                             "or --data-dir DIR (built earlier with --build-data-only)")
        if self.top_k < 0:
            raise UsageError(f"--top-k must be >= 0 (0: no cue in any answer), got {self.top_k}")
        if self.data_dir is None and self.ranking is None and self.top_k != 0:
            raise UsageError("building the training data needs --ranking RUN/ranking.json (from `x2dfd assess`), "
                             "or --top-k 0 to train on the expert's evidence alone (no cue in any answer)")
        if self.data_dir is not None and self.data is not None:
            raise UsageError("DATA and --data-dir exclude each other (--data-dir trains from data built earlier)")
        if self.data_dir is not None and self.build_data_only:
            raise UsageError("--data-dir and --build-data-only exclude each other (the data is already built)")
        if self.no_expert and self.expert:
            raise UsageError("--no-expert and --expert exclude each other")
        positive = {"--cues-per-answer": self.cues_per_answer, "--epochs": self.epochs,
                    "--batch-size": self.batch_size, "--grad-accum": self.grad_accum, "--lora-r": self.lora_r,
                    "--lora-alpha": self.lora_alpha, "--eval-batch-size": self.eval_batch_size,
                    "--rationale-tokens": self.rationale_tokens, "--save-total-limit": self.save_total_limit}
        for flag, value in positive.items():
            if value < 1:
                raise UsageError(f"{flag} must be >= 1, got {value}")
        if self.frames_per_video is not None and self.frames_per_video < 1:
            raise UsageError(f"--frames-per-video must be >= 1, got {self.frames_per_video}")
        if self.eval_split is not None and self.data is not None and self.eval_data is None:
            if self.eval_split == self.split:
                raise UsageError(f"--eval-split {self.eval_split} is the --split trained on: hold out another split "
                                 "(e.g. --split train --eval-split val)")
        if self.eval_split is not None and self.data_dir is not None:
            raise UsageError("--eval-split applies when building data from DATA, not with --data-dir")
        if self.max_steps is not None and self.max_steps < 1:
            raise UsageError(f"--max-steps must be >= 1, got {self.max_steps}")
        if not 0.0 <= self.eval_fraction < 1.0:
            raise UsageError(f"--eval-fraction must be in [0, 1), got {self.eval_fraction}")
        if self.lr <= 0:
            raise UsageError(f"--lr must be > 0, got {self.lr}")
        for flag, value in {"--projector-lr": self.projector_lr, "--weight-decay": self.weight_decay,
                            "--max-grad-norm": self.max_grad_norm, "--save-every": self.save_every,
                            "--num-workers": self.num_workers}.items():
            if value < 0:
                raise UsageError(f"{flag} must be >= 0, got {value}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise UsageError(f"--warmup-ratio must be in [0, 1), got {self.warmup_ratio}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise UsageError(f"--lora-dropout must be in [0, 1), got {self.lora_dropout}")
        if self.face_scale < 1.0:
            raise UsageError(f"--face-scale must be >= 1.0, got {self.face_scale}")
        for name, allowed in (("balance", BALANCE), ("cue_order", CUE_ORDER), ("scheduler", SCHEDULERS)):
            if getattr(self, name) not in allowed:
                raise UsageError(f"--{name.replace('_', '-')} '{getattr(self, name)}' is unknown. "
                                 f"Available: {', '.join(allowed)}.")


def parse_args(argv: list[str] | None) -> FinetuneConfig:
    """The command line as a FinetuneConfig (DATA is optional: not needed with --data-dir)."""
    return parse_config(FinetuneConfig, argv, prog="x2dfd finetune")
