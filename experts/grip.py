"""The ``grip`` diffusion expert: X2-DFD's released diffusion detector, a GRIP-style ResNet-50.

    x2dfd convert x2dfd-release RELEASE/ --out runs/x2dfd-release     # *.pth -> grip_diffusion.safetensors
    load_expert("grip", weights="runs/x2dfd-release/grip_diffusion.safetensors").score(faces)

The network is torchvision's ``resnet50`` (``weights=None``: nothing is fetched) with a 1-logit or 2-class
head (read from the weights' ``fc`` shape at conversion). GRIP-lab detectors (Corvi et al.; the
"aligned" detector X2-DFD's ``src/diffusion`` wraps) keep torchvision's parameter names; their
"no-down" variant (``stride0=1``) runs the stem without stride, which the config records. Scores follow
that code: sigmoid of the logit (1 class) or of ``logit[1] - logit[0]`` (2 classes, = softmax P(fake));
the image is normalised at its own size unless the config names a resize / centre crop. ``localize`` is
not supported (None).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Sequence

import torch

from x2dfd.experts.swinv2 import (IMAGENET_MEAN, IMAGENET_STD, as_rgb, load_into, read_meta, resolve_weights,
                                  save_state, sha256_file)
from x2dfd.records import ExpertScore


@dataclass
class GripConfig:
    arch: str = "resnet50"
    layers: tuple[int, ...] = (3, 4, 6, 3)  # bottleneck blocks per stage (ResNet-50; read from the weights)
    num_classes: int = 1
    stride0: int = 2  # 1: GRIP's "nodown" ResNet (no stride in conv1 / maxpool)
    resize: int | None = None  # shorter side resized to this (bicubic), then centre-cropped
    center_crop: int | None = None
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "GripConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["mean"], out["std"], out["layers"] = list(self.mean), list(self.std), list(self.layers)
        return out


def build_resnet(config: GripConfig) -> torch.nn.Module:
    """torchvision's ResNet with bottleneck blocks (``resnet50`` is ``ResNet(Bottleneck, [3, 4, 6, 3])``), no weights."""
    from torchvision.models.resnet import Bottleneck, ResNet

    if config.arch != "resnet50":
        from x2dfd.errors import UsageError

        raise UsageError(f"grip expert: unsupported arch '{config.arch}' (resnet50: bottleneck blocks)")
    model = ResNet(Bottleneck, list(config.layers), num_classes=config.num_classes)
    if config.stride0 == 1:
        model.conv1.stride = (1, 1)
        model.maxpool.stride = 1
    return model


class GripExpert:
    """GRIP-style ResNet diffusion detector (see the module docstring)."""

    name = "grip"
    prompt_name = "diffusion"
    weights_pattern = "grip_*.safetensors"

    def __init__(self, model: torch.nn.Module, config: GripConfig, device: str = "cpu", batch_size: int = 16):
        self.model = model.to(device).eval()
        self.config = config
        self.device = device
        self.batch_size = int(batch_size)
        self.weights_path: Path | None = None
        self.weights_sha256: str | None = None
        self.source: dict[str, Any] = {}

    @classmethod
    def from_config(cls, config: dict[str, Any] | GripConfig | None = None, device: str = "cpu", **kw: Any):
        cfg = config if isinstance(config, GripConfig) else GripConfig.from_dict(dict(config or {}))
        return cls(build_resnet(cfg), cfg, device=device, **kw)

    def load_weights(self, path: str | Path) -> "GripExpert":
        path = Path(path)
        load_into(self.name, self.model, path, ("num_batches_tracked",))
        self.model.to(self.device).eval()
        self.weights_path, self.weights_sha256 = path, sha256_file(path)
        return self

    @classmethod
    def load(cls, weights: str | Path | None = None, device: str = "cpu", batch_size: int = 16, **_: Any):
        path = resolve_weights(cls.name, weights, cls.weights_pattern)
        meta = read_meta(cls.name, path)
        expert = cls.from_config(meta.get("config", {}), device=device, batch_size=batch_size).load_weights(path)
        expert.source = dict(meta.get("source", {}))
        return expert

    def save(self, path: str | Path, source: dict[str, Any] | None = None) -> Path:
        meta = {"expert": self.name, "config": self.config.to_dict(), "source": source or self.source}
        return save_state(self.model, Path(path), meta)

    def preprocess(self, face: Any) -> torch.Tensor:
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms import functional as TF

        img = as_rgb(face, self.name)
        if self.config.resize:
            img = TF.resize(img, self.config.resize, interpolation=InterpolationMode.BICUBIC)
        if self.config.center_crop:
            img = TF.center_crop(img, [self.config.center_crop, self.config.center_crop])
        return TF.normalize(TF.to_tensor(img), list(self.config.mean), list(self.config.std))

    def probability(self, logits: torch.Tensor) -> torch.Tensor:
        logits = logits.float().reshape(logits.shape[0], -1)
        if logits.shape[1] == 1:
            return torch.sigmoid(logits[:, 0])
        return torch.sigmoid(logits[:, 1] - logits[:, 0])

    @torch.inference_mode()
    def score(self, faces: Sequence[Any]) -> list[ExpertScore]:
        tensors = [self.preprocess(f) for f in faces]
        scores: list[ExpertScore] = []
        i = 0
        while i < len(tensors):  # batches of equal-size images (faces come at their own sizes)
            j = i + 1
            while j < len(tensors) and j - i < self.batch_size and tensors[j].shape == tensors[i].shape:
                j += 1
            p = self.probability(self.model(torch.stack(tensors[i:j]).to(self.device)))
            scores += [ExpertScore(self.name, float(v)) for v in p.cpu().tolist()]
            i = j
        return scores

    def localize(self, faces: Sequence[Any]) -> None:
        return None

    def info(self) -> dict[str, Any]:
        return {"name": self.name, "prompt_name": self.prompt_name, "architecture": self.config.arch,
                "num_classes": self.config.num_classes, "stride0": self.config.stride0,
                "weights": str(self.weights_path) if self.weights_path else None, "sha256": self.weights_sha256,
                "source": self.source}
