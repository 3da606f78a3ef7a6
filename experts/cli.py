"""``x2dfd expert``: train the blending expert, or score inputs with the experts (no MLLM).

    x2dfd expert train --expert blend --real DIR [--real DIR2] --out DIR [--epochs 8 --seed 0 --resume]
    x2dfd expert ensemble --weights A.safetensors --weights B.safetensors --out DIR [--flip-average]
    x2dfd expert score INPUT... [--expert NAME[=WEIGHTS]] [--out FILE.jsonl]
    x2dfd expert list

This module does not import torch (``--help`` stays fast); the training code is imported when it runs.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from x2dfd.cliargs import parse_config, to_jsonable
from x2dfd.errors import EXIT_STATUS_HELP, UsageError
from x2dfd.pipeline import PipelineOptions

TRAINABLE = ("blend",)
BACKBONE_CHOICES = ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "clip"]


@dataclass
class TrainConfig:
    """Train the blend expert on self-blended images of real faces (SBI, CVPR 2022). Writes
    OUT/blend_<backbone>.safetensors + .json (config and training record), OUT/split.json,
    OUT/train_config.json and a per-epoch checkpoint for --resume."""

    real: list[str] = field(default_factory=list, metadata={"metavar": "DIR"})
    """Directory of REAL face photos (searched recursively); give --real again for more directories."""
    out: Path | None = field(default=None, metadata={"metavar": "DIR"})
    """Output directory for weights, training record, split and checkpoints."""
    expert: str = field(default="blend", metadata={"choices": list(TRAINABLE)})
    """Expert to train (only blend is trainable)."""
    backbone: str = field(default="efficientnet_lite0", metadata={"choices": BACKBONE_CHOICES})
    """Backbone: efficientnet_lite0/1/2 (ImageNet init shipped on PyPI, offline; their native --image-size is 224/240/260) or clip (open_clip, LayerNorm-only tuning)."""
    image_size: int = 224
    """Model input size in pixels (face crops are resized to it)."""
    epochs: int = 8
    """Training epochs (one self-blend per training image per epoch)."""
    batch_size: int = 16
    """Real/fake pairs per step (the model sees twice as many images)."""
    lr: float = 3e-4
    """Peak AdamW learning rate (linear warmup, cosine decay)."""
    weight_decay: float = 1e-4
    """AdamW weight decay."""
    mask_weight: float = 1.0
    """Weight of the blend-mask loss next to the real/fake loss."""
    seed: int = 0
    """Seed of the split, the self-blends, the augmentation and the initialisation of the heads."""
    split_seed: int | None = None
    """Seed of the train/val/holdout split alone (default: --seed); a continued run (--init-weights) gives the first run's seed so held-out faces stay out."""
    warmup_steps: int = 100
    """Optimizer steps of linear learning-rate warmup before the cosine decay."""
    val_fraction: float = 0.1
    """Fraction of unique images used for validation AUC on held-out self-blends each epoch."""
    holdout_fraction: float = 0.0
    """Fraction of unique images kept out of training AND validation (listed in split.json) for an external evaluation."""
    max_images: int | None = None
    """Use only this many unique images (after shuffling with --seed); for quick runs."""
    max_steps: int | None = None
    """Cap on steps per epoch; for smoke tests."""
    resume: bool = False
    """Continue from OUT/checkpoint (same data and settings; a larger --epochs extends the run)."""
    workers: int = 1
    """Data-loading worker processes (0: in the training process)."""
    threads: int = 2
    """Torch CPU threads for the training process."""
    cache_dir: Path | None = None
    """Where face crops + landmarks are cached (default OUT/cache); detection runs once per image."""
    pretrained: bool = True
    """Start from ImageNet (efficientnet_lite*) or CLIP weights; --no-pretrained for random init."""
    freeze_blocks: int = 0
    """efficientnet_lite* only: keep the stem and the first N of its blocks (16 in Lite0, 21 in Lite1/2) at their ImageNet weights (N=3 saves about a third of Lite0's CPU time per step)."""
    clip_arch: str = "ViT-L-14"
    """open_clip architecture for --backbone clip."""
    clip_pretrained: str = "openai"
    """open_clip pretrained tag for --backbone clip (downloads on first use)."""
    save_dtype: str = field(default="float32", metadata={"choices": ["float32", "float16"]})
    """Precision of the saved weights (float16 halves the file; the model runs in float32)."""
    degrade: bool = True
    """Apply the same random resize down/up, blur, noise and JPEG to each real face and its pseudo-fake (robustness); --no-degrade for the plain SBI recipe."""
    degrade_p: float | None = None
    """Probability of each of the resize, blur and noise degradations (default: 0.3, 0.3, 0.25; JPEG keeps 0.6)."""
    landmark_jitter: float = 0.015
    """Landmark noise before the blend hull is drawn, as a fraction of the face size (0: off)."""
    colour_match: float = 0.0
    """Probability that a self-blend's source copy gets the target's colour statistics inside the hull first (Reinhard LAB transfer, as classical face swaps do), so a colour shift alone does not give a blend away."""
    poisson: float = 0.0
    """Probability that a self-blend's source copy is cloned in the gradient domain (cv2.seamlessClone) before the masked blend, as classical face swaps blend."""
    multiband: float = 0.0
    """Probability that a self-blend is a Laplacian-pyramid (multi-band) blend through the sharp deformed hull: colour crosses a wide band, texture switches at the edge, as panorama and face-swap tools blend."""
    dof: float = 0.0
    """Probability of the same shallow depth of field on a real face and its pseudo-fake (the surround or one side blurred, as a portrait lens does), so a sharpness change alone does not mark a blend."""
    device: str = "cpu"
    """Training device (cpu, cuda, cuda:1, ...)."""
    init_weights: Path | None = field(default=None, metadata={"metavar": "FILE"})
    """Safetensors weights to start from: a backbone state dict (e.g. ImageNet weights converted offline), or a whole blend expert (an earlier run's blend_*.safetensors, heads included) to continue training it with a fresh schedule."""
    time_budget_s: float | None = None
    """Seconds of training: after epoch 1, --epochs is cut to what fits (the LR schedule follows)."""
    progress: bool = True
    """Show progress bars."""

    def __post_init__(self):
        if not self.real:
            raise UsageError("--real DIR is required: a directory of real face photos (repeat --real for more)")
        if self.out is None:
            raise UsageError("--out DIR is required: where the weights and training record go")
        for name in ("image_size", "epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.image_size < 32:
            raise UsageError(f"--image-size must be >= 32, got {self.image_size}")
        if not (0.0 <= self.val_fraction < 1.0 and 0.0 <= self.holdout_fraction < 1.0 and self.val_fraction + self.holdout_fraction < 1.0):
            raise UsageError("--val-fraction and --holdout-fraction must be in [0, 1) and sum to less than 1")
        if self.val_fraction <= 0:
            raise UsageError("--val-fraction must be > 0: validation AUC is computed every epoch")
        from x2dfd.experts.backbones import lite_blocks

        n_blocks = lite_blocks(self.backbone)
        if not 0 <= self.freeze_blocks <= n_blocks:
            raise UsageError(f"--freeze-blocks must be in [0, {n_blocks}] for {self.backbone}, got {self.freeze_blocks}")
        if self.lr <= 0:
            raise UsageError(f"--lr must be > 0, got {self.lr}")
        for name in ("colour_match", "poisson", "degrade_p", "multiband", "dof"):
            if getattr(self, name) is not None and not 0.0 <= getattr(self, name) <= 1.0:
                raise UsageError(f"--{name.replace('_', '-')} is a probability in [0, 1], got {getattr(self, name)}")
        if self.warmup_steps < 0:
            raise UsageError(f"--warmup-steps must be >= 0, got {self.warmup_steps}")
        self.out = Path(self.out)


def train_main(argv: list[str]) -> int:
    cfg = parse_config(TrainConfig, argv, prog="x2dfd expert train")
    from x2dfd.experts.train import TrainSettings, command_line, train

    cfg.out.mkdir(parents=True, exist_ok=True)
    (cfg.out / "train_config.json").write_text(json.dumps(to_jsonable(cfg), indent=1) + "\n")
    known = {f.name for f in dataclasses.fields(TrainSettings)}
    settings = TrainSettings(**{k: v for k, v in dataclasses.asdict(cfg).items() if k in known}, command=command_line(argv))
    record = train(settings)
    weights = cfg.out / f"blend_{cfg.backbone}.safetensors"
    print(f"wrote {weights} (val AUC {record['val_auc']:.4f} after {record['epochs']} epochs, "
          f"{record['train_images']} training faces, {record['train_seconds']:.0f} s training)")
    print(f"load it: experts.load_expert(\"blend\", weights=\"{cfg.out}\")")
    return 0


@dataclass
class EnsembleConfig:
    """Combine separately trained blend experts into one: their logits and blend masks are averaged (and, with
    --flip-average, over each face's mirror image too). The members must share the input size and the
    train/val/holdout split, and the backbone (EfficientNet-Lite0/1/2 may be mixed); the temperature is fitted anew
    on their validation self-blends. Writes OUT/blend_<backbone>.safetensors + .json (each member's training record
    inside; blend_<backbone>-<backbone>... when the backbones differ)."""

    weights: list[Path] = field(default_factory=list, metadata={"metavar": "FILE"})
    """A member's blend_*.safetensors (the --out of `x2dfd expert train`); give --weights again for each member (at least two)."""
    out: Path | None = field(default=None, metadata={"metavar": "DIR"})
    """Output directory for the combined weights and record."""
    flip_average: bool = field(default=False, metadata={"store_true": True})
    """Also score each face's mirror image and average (twice the compute per face)."""
    mask_evidence: float = 0.0
    """Weight w of the blend-mask evidence in the fake logit: logit + w x (mean of the top 5% of the averaged mask logits); 0 = the classifiers' logits alone. Choose it on validation data (bench/select_blend.py)."""
    real: list[str] = field(default_factory=list, metadata={"metavar": "DIR"})
    """The real photos the members were trained on (default: the first member's recorded --real): their validation split calibrates the ensemble."""
    cache_dir: Path | None = None
    """Face-crop cache of the training runs (default OUT/cache)."""
    save_dtype: str = field(default="float16", metadata={"choices": ["float32", "float16"]})
    """Precision of the saved weights."""

    def __post_init__(self):
        if len(self.weights) < 2:
            raise UsageError("give --weights FILE at least twice: an ensemble needs two or more members")
        if self.out is None:
            raise UsageError("--out DIR is required: where the combined weights go")
        self.out = Path(self.out)


def ensemble_main(argv: list[str]) -> int:
    cfg = parse_config(EnsembleConfig, argv, prog="x2dfd expert ensemble")
    from x2dfd.experts.train import assemble_ensemble, command_line

    path, record = assemble_ensemble(cfg.weights, cfg.out, real=cfg.real or None, cache_dir=cfg.cache_dir,
                                     flip_average=cfg.flip_average, command=command_line(argv, "ensemble"),
                                     save_dtype=cfg.save_dtype, mask_evidence=cfg.mask_evidence)
    cal = record["calibration"]
    print(f"wrote {path} ({len(cfg.weights)} members{', flip-averaged' if cfg.flip_average else ''}"
          f"{f', mask evidence x{cfg.mask_evidence:g}' if cfg.mask_evidence else ''}; temperature "
          f"{cal['temperature']}, ECE {cal['ece_before']} -> {cal['ece_after']} on {record['val_images']} validation faces)")
    return 0


@dataclass
class ScoreConfig(PipelineOptions):
    """Score faces with the external experts alone (no MLLM): p_fake per input as JSON lines, the same
    inputs and face cropping as `x2dfd explain` (this is `x2dfd explain --mllm none`)."""

    cli_epilog: ClassVar[str] = EXIT_STATUS_HELP

    inputs: list[str] = field(default_factory=list, metadata={"positional": True})
    """Images, videos, directories (searched recursively) or glob patterns."""
    expert: list[str] = field(default_factory=list, metadata={"metavar": "NAME[=WEIGHTS]"})
    """Expert to run, by registry name; NAME=WEIGHTS loads other weights, e.g. blend=DIR, the --out of `x2dfd expert train` (default: the shipped blending expert). The same loader as explain, evaluate and finetune."""
    out: str | None = None
    """JSONL file the records are appended to (default: printed to stdout); reruns resume."""
    report: str | None = None
    """Also write an HTML report (with the experts' heatmaps) into this directory."""
    device: str = "auto"
    """auto (CUDA if available, else CPU), cpu, cuda or cuda:N."""
    force_new_run: bool = field(default=False, metadata={"store_true": True})
    """When --out holds a run with other settings (experts, verdict options): move that run's files aside (OUT.run-<time>.jsonl and its config) and start a new one, instead of refusing."""
    quiet: bool = field(default=False, metadata={"store_true": True})
    """No progress bar and no summary table (the last stderr line still says how many inputs failed)."""
    max_new_tokens: int = field(default=0, metadata={"cli": False})

    def __post_init__(self):
        PipelineOptions.__post_init__(self)
        if not self.inputs:
            raise UsageError("give at least one INPUT (image, video, directory or glob)")


def score_main(argv: list[str]) -> int:
    """``x2dfd expert score INPUT... [--expert NAME[=WEIGHTS]] [--out FILE.jsonl]``: explain's pipeline in expert-only
    mode (experts loaded by :func:`x2dfd.api.load_experts`, as everywhere)."""
    cfg = parse_config(ScoreConfig, argv, prog="x2dfd expert score")
    from x2dfd.explain import ExplainConfig, execute, finish

    explain_cfg = ExplainConfig(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}, mllm="none")
    # exit status: 0 every input got a verdict, 3 some did not (as `x2dfd explain`); the last stderr line counts them
    return finish("expert score", cfg, execute(explain_cfg, command="expert score"))


def list_main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="x2dfd expert list",
                                     description="List the registered experts (built-ins and x2dfd.experts plugins); "
                                                 "the default set is marked.")
    parser.parse_args(argv)
    from x2dfd.experts import DEFAULT_EXPERTS, available_experts

    for name in available_experts():
        print(f"{name}{'  (default)' if name in DEFAULT_EXPERTS else ''}")
    return 0


SUBCOMMANDS = {"train": train_main, "ensemble": ensemble_main, "score": score_main, "list": list_main}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: x2dfd expert {train,ensemble,score,list} [options]\n\n"
              "  train     train the blend expert on self-blended real faces\n"
              "  ensemble  combine separately trained blend experts into one (averaged logits)\n"
              "  score     p_fake (and heatmaps) from the experts alone, no MLLM\n"
              "  list      registered experts (built-ins and x2dfd.experts plugins)\n\n"
              "Run 'x2dfd expert <subcommand> --help' for its options.")
        return 0 if argv else 2
    sub, rest = argv[0], argv[1:]
    if sub not in SUBCOMMANDS:
        from x2dfd.records import safe_text

        raise UsageError(f"unknown subcommand 'x2dfd expert {safe_text(sub)}'. Available: {', '.join(SUBCOMMANDS)}.")
    return SUBCOMMANDS[sub](rest)
