"""What the experts converted from published releases (``swinv2``, ``grip``) share: a config dataclass stored as
JSON beside safetensors weights, strict loading, and the expert protocol around one classifier network.

A subclass names its registry key, prompt word, weights pattern, config class and network builder, and
implements ``preprocess``/``score``; loading, saving and the weights record are here, once.
"""

from __future__ import annotations

import json
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from x2dfd.errors import ModelNotFoundError, UsageError
from x2dfd.media import weights_sha256

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ConfigJSON:
    """Mixin for the config dataclasses: JSON round trip (unknown keys ignored, tuples as lists)."""

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


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
    from x2dfd.experts.blend import save_safetensors

    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if not any(s in k for s in ignore)}
    save_safetensors(state, path)
    path.with_suffix(".json").write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    return path


class ConvertedExpert:
    """One classifier network behind the expert protocol, with weights from ``x2dfd convert`` (safetensors + JSON)."""

    name: ClassVar[str]
    prompt_name: ClassVar[str]
    weights_pattern: ClassVar[str]
    config_class: ClassVar[type]
    ignored_keys: ClassVar[tuple[str, ...]] = ()  # buffers rebuilt from the architecture, never stored
    default_batch_size: ClassVar[int] = 32

    def __init__(self, model: torch.nn.Module, config: Any, device: str = "cpu", batch_size: int | None = None):
        self.model = model.to(device).eval()
        self.config = config
        self.device = device
        self.batch_size = int(batch_size or self.default_batch_size)
        self.weights_path: Path | None = None
        self.weights_sha256: str | None = None
        self.source: dict[str, Any] = {}

    @staticmethod
    def build(config: Any) -> torch.nn.Module:  # pragma: no cover - every subclass defines it
        raise NotImplementedError

    @classmethod
    def from_config(cls, config: Any = None, device: str = "cpu", **kw: Any):
        cfg = config if isinstance(config, cls.config_class) else cls.config_class.from_dict(dict(config or {}))
        return cls(cls.build(cfg), cfg, device=device, **kw)

    def load_weights(self, path: str | Path):
        path = Path(path)
        load_into(self.name, self.model, path, self.ignored_keys)
        self.model.to(self.device).eval()
        self.weights_path, self.weights_sha256 = path, weights_sha256(path)
        return self

    @classmethod
    def load(cls, weights: str | Path | None = None, device: str = "cpu", batch_size: int | None = None, **_: Any):
        path = resolve_weights(cls.name, weights, cls.weights_pattern)
        meta = read_meta(cls.name, path)
        expert = cls.from_config(meta.get("config", {}), device=device, batch_size=batch_size).load_weights(path)
        expert.source = dict(meta.get("source", {}))
        return expert

    def save(self, path: str | Path, source: dict[str, Any] | None = None) -> Path:
        meta = {"expert": self.name, "config": self.config.to_dict(), "source": source or self.source}
        return save_state(self.model, Path(path), meta, self.ignored_keys)

    def localize(self, faces) -> None:
        return None  # no mask head: no heatmap

    def info(self) -> dict[str, Any]:
        return {"name": self.name, "prompt_name": self.prompt_name,
                "weights": str(self.weights_path) if self.weights_path else None, "sha256": self.weights_sha256,
                "source": self.source}
