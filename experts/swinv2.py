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

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from x2dfd.errors import ModelNotFoundError, UsageError
from x2dfd.records import ExpertScore

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# timm buffers that are derived from the architecture (recomputed at build time); older timm versions saved them
DERIVED_BUFFERS = ("relative_position_index", "relative_coords_table", "attn_mask")


@dataclass
class SwinV2Config:
    """Architecture and preprocessing (stored as JSON beside the weights)."""

    model_name: str = "swinv2_base_window16_256"
    model_kwargs: dict[str, Any] = field(default_factory=dict)  # timm overrides (embed_dim, depths, ...)
    num_classes: int = 2
    image_size: int = 256
    fake_index: int = 1
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SwinV2Config":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["mean"], out["std"] = list(self.mean), list(self.std)
        return out


def as_rgb(face: Any, who: str):
    """A PIL RGB image from a PIL image, a uint8 HxWx3 array or a FaceCrop."""
    from PIL import Image

    if hasattr(face, "convert"):
        return face.convert("RGB")
    if hasattr(face, "image") and not isinstance(face, np.ndarray):
        return as_rgb(face.image, who)
    if isinstance(face, np.ndarray) and face.ndim == 3 and face.shape[2] == 3 and face.dtype == np.uint8:
        return Image.fromarray(face)
    raise TypeError(f"{who} expert: expected PIL images or uint8 HxWx3 RGB arrays, got {type(face).__name__}")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def resolve_weights(name: str, weights: str | Path | None, pattern: str) -> Path:
    """A .safetensors file, or a folder holding exactly one file matching ``pattern``; no default is shipped."""
    if weights is None:
        raise ModelNotFoundError(
            f"the {name} expert has no shipped weights: convert a release (x2dfd convert x2dfd-release SRC --out DIR) "
            f"and pass --expert {name}=DIR, or use the preset.json inside DIR"
        )
    path = Path(weights).expanduser()
    if path.is_dir():
        found = sorted(path.glob(pattern))
        if len(found) != 1:
            raise ModelNotFoundError(f"{name} weights: expected one {pattern} in '{path}', found {len(found)}; pass the file")
        path = found[0]
    if not path.is_file():
        raise ModelNotFoundError(f"{name} weights '{path}' not found (give a .safetensors file or the folder holding it)")
    if path.suffix != ".safetensors":
        raise UsageError(f"{name} weights must be a .safetensors file (pickles are never loaded; convert them with "
                         f"`x2dfd convert`), got '{path.name}'")
    return path


def read_meta(name: str, path: Path) -> dict[str, Any]:
    meta_path = path.with_suffix(".json")
    if not meta_path.is_file():
        raise ModelNotFoundError(f"{name} weights '{path.name}' have no config beside them ({meta_path.name})")
    try:
        return json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise UsageError(f"{name} config '{meta_path}' is not readable JSON: {err}") from err


def load_into(name: str, model: torch.nn.Module, path: Path, ignore: tuple[str, ...] = ()) -> None:
    """Load a safetensors state dict into ``model``: every parameter must be there, shapes must match."""
    from safetensors.torch import load_file

    state = load_file(str(path), device="cpu")
    own = model.state_dict()
    state = {k: v.to(own[k].dtype) if k in own else v for k, v in state.items()}
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as err:
        raise UsageError(f"{name} weights '{path.name}' do not match the architecture in {path.with_suffix('.json').name}: "
                         f"{str(err).splitlines()[-1].strip()}") from err
    missing = [k for k in missing if not any(s in k for s in ignore)]
    unexpected = [k for k in unexpected if not any(s in k for s in ignore)]
    if missing or unexpected:
        raise UsageError(f"{name} weights '{path.name}' do not match the architecture: missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]}")


def save_state(model: torch.nn.Module, path: Path, meta: dict[str, Any], ignore: tuple[str, ...] = ()) -> Path:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if not any(s in k for s in ignore)}
    save_file(state, str(path), metadata={"format": "pt", "expert": str(meta.get("expert"))})
    path.with_suffix(".json").write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    return path


def build_swinv2(config: SwinV2Config) -> torch.nn.Module:
    """timm's SwinV2 with random weights (pretrained=False: nothing is downloaded)."""
    try:
        import timm
    except ImportError as err:  # pragma: no cover - timm comes with open_clip_torch
        raise UsageError("the swinv2 expert needs timm (pip install timm)") from err
    kwargs = dict(config.model_kwargs)
    if "img_size" not in kwargs:
        kwargs["img_size"] = config.image_size
    return timm.create_model(config.model_name, pretrained=False, num_classes=config.num_classes, **kwargs)


class SwinV2Expert:
    """X2-DFD's SwinV2 blending detector (see the module docstring)."""

    name = "swinv2"
    prompt_name = "blending"
    weights_pattern = "swinv2_*.safetensors"

    def __init__(self, model: torch.nn.Module, config: SwinV2Config, device: str = "cpu", batch_size: int = 32):
        self.model = model.to(device).eval()
        self.config = config
        self.device = device
        self.batch_size = int(batch_size)
        self.weights_path: Path | None = None
        self.weights_sha256: str | None = None
        self.source: dict[str, Any] = {}

    @classmethod
    def from_config(cls, config: dict[str, Any] | SwinV2Config | None = None, device: str = "cpu", **kw: Any):
        cfg = config if isinstance(config, SwinV2Config) else SwinV2Config.from_dict(dict(config or {}))
        return cls(build_swinv2(cfg), cfg, device=device, **kw)

    def load_weights(self, path: str | Path) -> "SwinV2Expert":
        path = Path(path)
        load_into(self.name, self.model, path, DERIVED_BUFFERS)
        self.model.to(self.device).eval()
        self.weights_path, self.weights_sha256 = path, sha256_file(path)
        return self

    @classmethod
    def load(cls, weights: str | Path | None = None, device: str = "cpu", batch_size: int = 32, **_: Any):
        path = resolve_weights(cls.name, weights, cls.weights_pattern)
        meta = read_meta(cls.name, path)
        expert = cls.from_config(meta.get("config", {}), device=device, batch_size=batch_size).load_weights(path)
        expert.source = dict(meta.get("source", {}))
        return expert

    def save(self, path: str | Path, source: dict[str, Any] | None = None) -> Path:
        meta = {"expert": self.name, "config": self.config.to_dict(), "source": source or self.source}
        return save_state(self.model, Path(path), meta, DERIVED_BUFFERS)

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

    def localize(self, faces: Sequence[Any]) -> None:
        return None

    def info(self) -> dict[str, Any]:
        return {"name": self.name, "prompt_name": self.prompt_name, "architecture": self.config.model_name,
                "image_size": self.config.image_size, "weights": str(self.weights_path) if self.weights_path else None,
                "sha256": self.weights_sha256, "source": self.source}
