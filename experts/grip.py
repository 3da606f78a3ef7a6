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

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from x2dfd.experts.converted import IMAGENET_MEAN, IMAGENET_STD, ConfigJSON, ConvertedExpert, as_rgb
from x2dfd.records import ExpertScore


@dataclass
class GripConfig(ConfigJSON):
    arch: str = "resnet50"
    layers: tuple[int, ...] = (3, 4, 6, 3)  # bottleneck blocks per stage (ResNet-50; read from the weights)
    num_classes: int = 1
    stride0: int = 2  # 1: GRIP's "nodown" ResNet (no stride in conv1 / maxpool)
    resize: int | None = None  # shorter side resized to this (bicubic), then centre-cropped
    center_crop: int | None = None
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD


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


class GripExpert(ConvertedExpert):
    """GRIP-style ResNet diffusion detector (see the module docstring)."""

    name = "grip"
    prompt_name = "diffusion"
    weights_pattern = "grip_*.safetensors"
    config_class = GripConfig
    default_batch_size = 16
    build = staticmethod(build_resnet)

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


    def info(self) -> dict[str, Any]:
        return {**super().info(), "architecture": self.config.arch, "num_classes": self.config.num_classes,
                "stride0": self.config.stride0}
