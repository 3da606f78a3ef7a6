"""The blending expert ``blend``: a self-blended-image classifier with a mask head (heatmap for free).

    from x2dfd.experts import load_expert
    expert = load_expert("blend")                 # shipped efficientnet_lite0 weights, offline
    expert.score(faces)                           # [ExpertScore("blend", p_fake), ...]
    expert.localize(faces)                        # [float32 HxW heatmap in [0, 1]] at each face's size

Input faces are square crops like ``x2dfd.face.crop_face(scale=1.3)`` (what explain hands over);
the training crops follow the same convention. Weights are safetensors with a JSON beside them
(the shipped ``blend_efficientnet_lite0-efficientnet_lite2.safetensors`` + ``.json``: the model config and its training record).
Train your own with ``x2dfd expert train --expert blend --real DIR --out DIR``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from x2dfd.experts.backbones import BACKBONES, build_backbone, lite_variant
from x2dfd.errors import ModelNotFoundError, UsageError
from x2dfd.records import ExpertScore

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
# the shipped ensemble: two EfficientNet-Lite0 networks and one Lite2 (experts/README.md)
DEFAULT_WEIGHTS = WEIGHTS_DIR / "blend_efficientnet_lite0-efficientnet_lite2.safetensors"
FORMAT_VERSION = 1


@dataclass
class BlendConfig:
    """Architecture and preprocessing of a blend model (stored as JSON beside its weights)."""

    backbone: str = "efficientnet_lite0"
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)
    image_size: int = 224
    mean: tuple[float, ...] | None = None  # None: the backbone's own normalisation
    std: tuple[float, ...] | None = None
    dropout: float = 0.2
    mask_channels: int = 64
    crop_scale: float = 1.3  # faces are expected cropped at this multiple of the detector box
    # members > 1: that many networks of this config, trained separately (assemble_ensemble), whose logits and
    # blend-mask logits are averaged; 1 = one network (state-dict keys without a "members." prefix)
    members: int = 1
    # members with different EfficientNet-Lite backbones (one per member; same input size and normalisation);
    # None: every member is ``backbone``
    member_backbones: list[str] | None = None
    flip_average: bool = False  # also run the mirrored face and average (logits; heatmaps mirrored back)
    # w: the fake logit becomes the classifier's logit + w x the blend-mask evidence (the mean of the top
    # MASK_EVIDENCE_TOP fraction of the mask logits: where the model is surest it sees a blend); 0 = the
    # classifier's logit alone (the mask head then only draws heatmaps)
    mask_evidence: float = 0.0
    format_version: int = FORMAT_VERSION

    def __post_init__(self):
        if self.backbone not in BACKBONES:
            raise UsageError(f"Unknown backbone '{self.backbone}'. Available: {', '.join(BACKBONES)}.")
        if self.image_size < 32:
            raise UsageError(f"blend: image_size must be >= 32, got {self.image_size}")
        if not 0.0 <= float(self.mask_evidence) <= 100.0:
            raise UsageError(f"blend: mask_evidence must be in [0, 100], got {self.mask_evidence}")
        self.mask_evidence = float(self.mask_evidence)
        if int(self.members) < 1:
            raise UsageError(f"blend: members must be >= 1, got {self.members}")
        self.members = int(self.members)
        if self.member_backbones is not None:
            names = [str(b) for b in self.member_backbones]
            if len(names) != self.members or names[0] != self.backbone:
                raise UsageError(f"blend: member_backbones must name {self.members} backbones, the first '{self.backbone}', "
                                 f"got {names}")
            for b in names:
                if lite_variant(b) is None:
                    raise UsageError(f"blend: an ensemble mixes efficientnet_lite backbones only, got '{b}'")
            self.member_backbones = names if len(set(names)) > 1 else None
        cls = BACKBONES[self.backbone]
        self.mean = tuple(float(v) for v in (self.mean or cls.mean))
        self.std = tuple(float(v) for v in (self.std or cls.std))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "BlendConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["mean"], out["std"] = list(self.mean), list(self.std)
        return out


class BlendNet(nn.Module):
    """Backbone -> (fake logit from pooled features, blend-mask logits from the feature map)."""

    def __init__(self, config: BlendConfig):
        super().__init__()
        self.backbone = build_backbone(config.backbone, **config.backbone_kwargs)
        self.cls_head = nn.Sequential(nn.Dropout(config.dropout), nn.Linear(self.backbone.pooled_dim, 1))
        c = config.mask_channels
        self.mask_head = nn.Sequential(
            nn.Conv2d(self.backbone.fmap_dim, c, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(c, 1, 1)
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pooled, fmap = self.backbone(x)
        return self.cls_head(pooled).squeeze(-1), self.mask_head(fmap)

    def logit(self, x: torch.Tensor) -> torch.Tensor:
        """The fake logit alone (no mask head)."""
        pooled, _ = self.backbone(x)
        return self.cls_head(pooled).squeeze(-1)


class BlendEnsemble(nn.Module):
    """``config.members`` BlendNets of one config, trained separately: logits and mask logits are averaged."""

    def __init__(self, config: BlendConfig):
        super().__init__()
        names = config.member_backbones or [config.backbone] * config.members
        self.members = nn.ModuleList(
            BlendNet(replace(config, backbone=name, members=1, member_backbones=None)) for name in names)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        outs = [m(x) for m in self.members]
        return torch.stack([o[0] for o in outs]).mean(0), torch.stack([o[1] for o in outs]).mean(0)

    def logit(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([m.logit(x) for m in self.members]).mean(0)


#: the fraction of blend-mask cells whose logits make the mask evidence (BlendConfig.mask_evidence)
MASK_EVIDENCE_TOP = 0.05


def mask_evidence(mask_logits: torch.Tensor) -> torch.Tensor:
    """Per face, the mean of the top ``MASK_EVIDENCE_TOP`` fraction of its blend-mask logits (at least one cell):
    high where some region looks blended, whatever the classifier's pooled view says."""
    flat = mask_logits.float().flatten(1)
    k = max(1, int(flat.shape[1] * MASK_EVIDENCE_TOP))
    return flat.topk(k, dim=1).values.mean(1)


def build_net(config: BlendConfig) -> nn.Module:
    """The network a config describes: one BlendNet, or a BlendEnsemble of ``config.members``."""
    return BlendNet(config) if config.members == 1 else BlendEnsemble(config)


def resize_face(image: np.ndarray, size: int) -> np.ndarray:
    """The one resize used in training and inference: area when shrinking, bicubic when enlarging."""
    h, w = image.shape[:2]
    if (h, w) == (size, size):
        return image
    interp = cv2.INTER_AREA if min(h, w) >= size else cv2.INTER_CUBIC
    return cv2.resize(image, (size, size), interpolation=interp)


def to_tensor(images: Sequence[np.ndarray], mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 HxWx3 RGB arrays (same size) -> normalised float32 NCHW batch."""
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div_(255.0)
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return (x - m) / s


def _as_rgb_array(face: Any) -> np.ndarray:
    if isinstance(face, np.ndarray):
        arr = face
    elif hasattr(face, "convert"):  # PIL
        arr = np.asarray(face.convert("RGB"))
    elif hasattr(face, "image"):  # FaceCrop
        return _as_rgb_array(face.image)
    else:
        raise TypeError(f"blend expert: expected PIL images or RGB arrays, got {type(face).__name__}")
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise TypeError(f"blend expert: expected uint8 HxWx3 RGB, got {arr.dtype} {arr.shape}")
    return arr


def resolve_weights(weights: str | Path | None, default: Path = DEFAULT_WEIGHTS, prefix: str = "blend") -> Path:
    """A .safetensors file, or a directory holding exactly one ``<prefix>_*.safetensors``; None: the shipped one."""
    if weights is None:
        path = default
        if not path.is_file():
            raise ModelNotFoundError(
                f"the shipped {prefix} weights are missing ({path}); reinstall x2dfd or train your own: "
                f"x2dfd expert train --expert {prefix} --real DIR --out DIR, then pass weights=DIR"
            )
        return path
    path = Path(weights)
    if path.is_dir():
        found = sorted(path.glob(f"{prefix}_*.safetensors"))
        if len(found) != 1:
            raise ModelNotFoundError(
                f"{prefix} weights: expected one {prefix}_*.safetensors in '{path}', found {len(found)}; pass the file itself"
            )
        path = found[0]
    if not path.is_file():
        raise ModelNotFoundError(f"{prefix} weights '{path}' not found (give a .safetensors file or the training --out directory)")
    if path.suffix != ".safetensors":
        raise UsageError(f"{prefix} weights must be a .safetensors file (pickles are never loaded), got '{path.name}'")
    return path


def save_safetensors(state: dict[str, torch.Tensor], path: str | Path) -> None:
    """The one writer of expert weights (and training checkpoints). The header's metadata is only
    ``{"format": "pt"}``: safetensors writes that map in hash order, so with a second key two saves of the
    same tensors could differ in their bytes, and a recorded sha256 would name a save, not the weights. The
    expert's name and config live in the JSON beside the file."""
    from safetensors.torch import save_file

    save_file(state, str(path), metadata={"format": "pt"})


def load_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors on the CPU (the one reader of expert weights; pickles are never loaded)."""
    from safetensors.torch import load_file

    return load_file(str(path), device="cpu")


def load_state(module: nn.Module, state: dict[str, torch.Tensor], mismatch: str) -> None:
    """Load ``state`` into ``module`` exactly (every key, every shape), each value cast to the module's dtype
    (float16 files load into float32 models). A mismatch is one UsageError line starting with ``mismatch``."""
    own = module.state_dict()
    state = {k: v.to(own[k].dtype) if k in own else v for k, v in state.items()}
    try:
        missing, unexpected = module.load_state_dict(state, strict=False)
    except RuntimeError as err:  # same names, other shapes
        raise UsageError(f"{mismatch}: {str(err).splitlines()[-1].strip()}") from None
    if missing or unexpected:
        raise UsageError(f"{mismatch}: missing {list(missing)[:3]}, unexpected {list(unexpected)[:3]}")


class _TorchThreads:
    """Run a CPU forward with ``n`` intra-op threads, then restore the caller's count. (torch keeps the
    count per thread once a thread has used it, so other threads' MLLM calls keep theirs.)"""

    def __init__(self, n: int | None, device: str):
        self.n = n if n and str(device).startswith("cpu") else None

    def __enter__(self):
        self.before = torch.get_num_threads()
        if self.n is not None and self.n != self.before:
            torch.set_num_threads(self.n)

    def __exit__(self, *exc):
        if self.n is not None and self.n != self.before:
            torch.set_num_threads(self.before)


class BlendExpert:
    """Self-blended-image blending detector (see module docstring). ``localize`` is supported."""

    name = "blend"
    prompt_name = "blending"
    # CPU forwards run single-threaded. (1) Convolution results depend on the thread count (last-bit
    # differences that can move p_fake's 6th decimal), so a fixed count gives the same scores whatever
    # the core count or the pipeline's worker threads. (2) On a 2-core machine the explain pipeline's
    # face-detection worker takes the other core: single-threaded lanes side by side measured ~3x
    # faster than two-thread kernels waiting on each other when the machine is shared (bench_pipeline.py).
    cpu_threads: int | None = 1
    # channels_last (NHWC) weights and inputs: oneDNN's depthwise convolutions, most of an EfficientNet's
    # time, run 1.5-1.7x faster on CPU at batch 32 in that layout (bench/bench_expert.py --layout); the logits
    # move in their 7th significant digit. Saved files are unchanged (save() writes contiguous tensors).
    memory_format: torch.memory_format = torch.channels_last
    default_weights: Path = DEFAULT_WEIGHTS
    weights_prefix = "blend"

    def __init__(self, model: nn.Module, config: BlendConfig, device: str = "cpu", batch_size: int = 32):
        self.model = model.to(device, memory_format=self.memory_format).eval()
        self.config = config
        self.device = device
        self.batch_size = int(batch_size)
        self.weights_path: Path | None = None
        self.weights_sha256: str | None = None
        self.record: dict[str, Any] = {}
        self.evaluation: dict[str, Any] = {}  # measured figures stored beside the weights, if any
        self.scope: dict[str, Any] = {}  # what it detects and what not (stored beside the weights)
        # p_fake = sigmoid(logit / temperature): temperature scaling fitted on held-out data (Guo et al.
        # 2017); 1.0 = the raw network output. Stored beside the weights as "calibration".
        self.calibration: dict[str, Any] = {}
        self.temperature = 1.0

    # -- build / load ------------------------------------------------------------------------
    @classmethod
    def from_config(cls, config: dict[str, Any] | BlendConfig | None = None, device: str = "cpu", **kw: Any) -> "BlendExpert":
        """Random weights, nothing read (backbone ImageNet/CLIP init only if backbone_kwargs asks for it)."""
        cfg = config if isinstance(config, BlendConfig) else BlendConfig.from_dict(dict(config or {}))
        return cls(build_net(cfg), cfg, device=device, **kw)

    def load_weights(self, path: str | Path) -> "BlendExpert":
        path = Path(path)
        load_state(self.model, load_safetensors(path),
                   f"{self.name} weights '{path.name}' do not match the {self.config.backbone} config "
                   f"in {path.with_suffix('.json').name}")
        self.model.to(self.device, memory_format=self.memory_format).eval()
        from x2dfd.media import weights_sha256

        self.weights_path, self.weights_sha256 = path, weights_sha256(path)
        return self

    @classmethod
    def load(cls, weights: str | Path | None = None, device: str = "cpu", batch_size: int = 32, **_: Any) -> "BlendExpert":
        path = resolve_weights(weights, cls.default_weights, cls.weights_prefix)
        meta_path = path.with_suffix(".json")
        if not meta_path.is_file():
            raise ModelNotFoundError(f"blend weights '{path.name}' have no config beside them ({meta_path.name})")
        meta = json.loads(meta_path.read_text())
        cfg_dict = dict(meta.get("config", meta))
        # the saved weights replace any pretrained init: never fetch CLIP/ImageNet weights here
        bk = dict(cfg_dict.get("backbone_kwargs", {}))
        bk["pretrained"] = None if cfg_dict.get("backbone") == "clip" else False
        cfg_dict["backbone_kwargs"] = bk
        expert = cls.from_config(cfg_dict, device=device, batch_size=batch_size).load_weights(path)
        expert.record = dict(meta.get("training", {}))
        expert.evaluation = dict(meta.get("evaluation", {}))
        expert.scope = dict(meta.get("scope", {}))
        expert.set_calibration(meta.get("calibration") or {})
        return expert

    def set_layout(self, memory_format: torch.memory_format) -> None:
        """Weights and inputs in ``memory_format`` from now on (``torch.contiguous_format`` = plain NCHW)."""
        self.memory_format = memory_format
        self.model.to(memory_format=memory_format)

    def set_calibration(self, calibration: dict[str, Any]) -> None:
        t = float(calibration.get("temperature", 1.0)) if calibration else 1.0
        if not (t > 0 and np.isfinite(t)):
            raise UsageError(f"{self.name}: calibration temperature must be a positive number, got {t}")
        self.calibration, self.temperature = dict(calibration or {}), t

    def save(self, path: str | Path, training: dict[str, Any] | None = None, dtype: torch.dtype | None = None) -> Path:
        """Write ``path`` (.safetensors) and its ``.json`` (config + training record)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
        if dtype is not None:
            state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
        save_safetensors(state, path)
        cfg = self.config.to_dict()
        cfg["backbone_kwargs"] = {k: v for k, v in cfg["backbone_kwargs"].items() if k != "pretrained"}
        meta = {"expert": self.name, "config": cfg, "training": training or self.record or {}}
        for key in ("calibration", "scope", "evaluation"):
            if getattr(self, key):
                meta[key] = getattr(self, key)
        path.with_suffix(".json").write_text(json.dumps(meta, indent=1) + "\n")
        return path

    # -- inference ---------------------------------------------------------------------------
    def _batches(self, faces: Sequence[Any]):
        arrays = [_as_rgb_array(f) for f in faces]
        size = self.config.image_size
        for i in range(0, len(arrays), self.batch_size):
            chunk = arrays[i : i + self.batch_size]
            x = to_tensor([resize_face(a, size) for a in chunk], self.config.mean, self.config.std)
            yield chunk, x.to(self.device)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Fake logits (before the temperature) of a normalised batch: every member, the mirrored faces too
        when ``flip_average``, plus the blend-mask evidence when ``mask_evidence`` (what ``score`` turns into
        p_fake and calibration is fitted on). Any layout in; the network runs in ``memory_format``."""
        if self.config.mask_evidence:
            return self._forward(x)[0]
        x = x.contiguous(memory_format=self.memory_format)
        if not self.config.flip_average:
            return self.model.logit(x)
        n = len(x)
        z = self.model.logit(torch.cat([x, x.flip(3)]))
        return (z[:n] + z[n:]) / 2

    def _forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(fake logits as ``logits`` gives them, blend-mask logits) of a normalised batch."""
        x = x.contiguous(memory_format=self.memory_format)
        if not self.config.flip_average:
            z, m = self.model(x)
        else:
            n = len(x)
            z, m = self.model(torch.cat([x, x.flip(3)]))
            z, m = (z[:n] + z[n:]) / 2, (m[:n] + m[n:].flip(3)) / 2
        if self.config.mask_evidence:
            z = z.float() + self.config.mask_evidence * mask_evidence(m)
        return z, m

    @torch.inference_mode()
    def predict(self, faces: Sequence[Any]) -> tuple[list[ExpertScore], list[np.ndarray]]:
        """Scores and heatmaps from one forward pass (what ``score`` and ``localize`` each return)."""
        scores: list[ExpertScore] = []
        heatmaps: list[np.ndarray] = []
        for chunk, x in self._batches(faces):
            with _TorchThreads(self.cpu_threads, self.device):
                logits, mask_logits = self._forward(x)
            p = torch.sigmoid(logits.float() / self.temperature).cpu().numpy()
            masks = torch.sigmoid(mask_logits.float())
            scores += [ExpertScore(self.name, float(np.clip(v, 0.0, 1.0))) for v in p]
            for arr, m in zip(chunk, masks):
                h, w = arr.shape[:2]
                up = F.interpolate(m[None], size=(h, w), mode="bilinear", align_corners=False)[0, 0]
                heatmaps.append(up.clamp_(0, 1).cpu().numpy().astype(np.float32))
        return scores, heatmaps

    @torch.inference_mode()
    def score(self, faces: Sequence[Any]) -> list[ExpertScore]:
        """p_fake per face (PIL images or uint8 RGB arrays), batched, in input order. The same numbers
        as ``predict``'s, without the heatmaps (nobody looks at them here; the mask head runs only when its
        evidence enters the logit)."""
        scores: list[ExpertScore] = []
        for _, x in self._batches(faces):
            with _TorchThreads(self.cpu_threads, self.device):
                logits = self.logits(x)
            p = torch.sigmoid(logits.float() / self.temperature).cpu().numpy()
            scores += [ExpertScore(self.name, float(np.clip(v, 0.0, 1.0))) for v in p]
        return scores

    def localize(self, faces: Sequence[Any]) -> list[np.ndarray]:
        """Where the model thinks a face was blended: float32 HxW in [0, 1] at each face's size."""
        if not faces:
            return []
        return self.predict(faces)[1]

    def info(self) -> dict[str, Any]:
        rec = self.record or {}
        return {
            "name": self.name,
            "prompt_name": self.prompt_name,
            "backbone": self.config.backbone,
            "image_size": self.config.image_size,
            "members": self.config.members,
            "member_backbones": self.config.member_backbones or [self.config.backbone] * self.config.members,
            "flip_average": self.config.flip_average,
            "mask_evidence": self.config.mask_evidence,
            "weights": str(self.weights_path) if self.weights_path else None,
            "sha256": self.weights_sha256,
            "training": {k: rec[k] for k in ("command", "seed", "data_fingerprint", "epochs", "val_auc", "train_images", "train_seconds") if k in rec},
            "evaluation": {k: {m: v[m] for m in ("set", "auc", "ap", "eer", "auc_drop") if m in v} for k, v in self.evaluation.items() if isinstance(v, dict)},
            "scope": self.scope,
            "calibration": self.calibration or {"temperature": 1.0, "method": "none"},
        }
