"""The ``swinv2`` blending expert: X2-DFD's released blending detector (timm ``swinv2_base_window16_256``, 2 classes).

    x2dfd convert x2dfd-release RELEASE/ --out runs/x2dfd-release     # best_gf.pth -> swinv2_blending.safetensors
    load_expert("swinv2", weights="runs/x2dfd-release/swinv2_blending.safetensors").score(faces)

The architecture is built in code from timm's definition (``pretrained=False``: nothing is fetched)
with the options in the JSON beside the weights; the weights are read from safetensors only (the
release's pickled ``.pth`` is turned into safetensors by ``x2dfd convert``, which never runs a pickle).

Scoring follows the release's own detector (X2-DFD ``src/blending/detector.py``: RGB -> Resize((256, 256))
-> ToTensor -> ImageNet Normalize -> softmax, P(class 1) is the fake score), so a face gives the same
number here as in the original code. ``localize`` is not supported (returns None): this network has no
mask head.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from x2dfd.errors import UsageError
from x2dfd.experts.converted import IMAGENET_MEAN, IMAGENET_STD, ConfigJSON, ConvertedExpert, as_rgb
from x2dfd.records import ExpertScore

# timm buffers that are derived from the architecture (recomputed at build time); older timm versions saved them
DERIVED_BUFFERS = ("relative_position_index", "relative_coords_table", "attn_mask")


@dataclass
class SwinV2Config(ConfigJSON):
    """Architecture and preprocessing (stored as JSON beside the weights)."""

    model_name: str = "swinv2_base_window16_256"
    model_kwargs: dict[str, Any] = field(default_factory=dict)  # timm overrides (embed_dim, depths, ...)
    num_classes: int = 2
    image_size: int = 256
    fake_index: int = 1
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD


def build_swinv2(config: SwinV2Config) -> torch.nn.Module:
    """timm's SwinV2 with random weights (pretrained=False: nothing is downloaded)."""
    try:
        import timm
    except ImportError as err:  # pragma: no cover - timm is a dependency of x2dfd
        raise UsageError("the swinv2 expert needs timm (pip install timm)") from err
    kwargs = dict(config.model_kwargs)
    if "img_size" not in kwargs:
        kwargs["img_size"] = config.image_size
    return timm.create_model(config.model_name, pretrained=False, num_classes=config.num_classes, **kwargs)


class SwinV2Expert(ConvertedExpert):
    """X2-DFD's SwinV2 blending detector (see the module docstring)."""

    name = "swinv2"
    prompt_name = "blending"
    weights_pattern = "swinv2_*.safetensors"
    config_class = SwinV2Config
    ignored_keys = DERIVED_BUFFERS
    default_batch_size = 32
    build = staticmethod(build_swinv2)

    def preprocess(self, faces: Sequence[Any]) -> torch.Tensor:
        """Resize((s, s)) on the PIL image (bilinear, as torchvision does), ToTensor, Normalize."""
        from torchvision.transforms import functional as TF

        size = self.config.image_size
        out = []
        for face in faces:
            img = TF.resize(as_rgb(face, self.name), [size, size])
            out.append(TF.normalize(TF.to_tensor(img), list(self.config.mean), list(self.config.std)))
        return torch.stack(out)

    @torch.inference_mode()
    def score(self, faces: Sequence[Any]) -> list[ExpertScore]:
        scores: list[ExpertScore] = []
        for i in range(0, len(faces), self.batch_size):
            x = self.preprocess(faces[i : i + self.batch_size]).to(self.device)
            p = torch.softmax(self.model(x).float(), dim=-1)[:, self.config.fake_index]
            scores += [ExpertScore(self.name, float(v)) for v in p.cpu().tolist()]
        return scores


    def info(self) -> dict[str, Any]:
        return {**super().info(), "architecture": self.config.model_name, "image_size": self.config.image_size}
