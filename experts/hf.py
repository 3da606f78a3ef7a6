"""The generic ``hf`` expert: any Hugging Face image-classification checkpoint as a deepfake expert.

    from x2dfd.experts import load_expert
    expert = load_expert("hf", weights="path/or/hub-id")              # fake label read from id2label
    expert = load_expert("hf", weights="...", fake_label="Deepfake")  # or named explicitly

Works with ViT-style "Deep-Fake-Detector-Model" checkpoints and anything else that loads through
``AutoModelForImageClassification`` + ``AutoImageProcessor`` (hub id or local directory; local
directories never touch the network). ``p_fake`` is the softmax probability of the fake label
(sigmoid for single-logit heads). ``localize`` returns None: a plain classifier has no heatmap.
``trust_remote_code`` is never enabled.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from x2dfd.errors import ModelNotFoundError, UsageError
from x2dfd.records import ExpertScore

# id2label names taken to mean "fake" when --fake-label is not given (compared lower-cased)
FAKE_NAMES = ("fake", "deepfake", "deep-fake", "deep_fake", "forged", "forgery", "manipulated", "spoof",
              "synthetic", "generated", "ai", "ai-generated", "artificial")


def find_fake_label(id2label: dict[int, str], fake_label: str | None = None) -> int:
    """Index of the fake class: ``fake_label`` (name or index) if given, else the one id2label name
    meaning fake. Ambiguous or absent -> UsageError naming the labels and the fix."""
    labels = {int(k): str(v) for k, v in id2label.items()}
    shown = ", ".join(f"{k}={v!r}" for k, v in sorted(labels.items()))
    if fake_label is not None:
        for k, v in labels.items():
            if v == fake_label or v.lower() == str(fake_label).lower():
                return k
        if str(fake_label).isdigit() and int(fake_label) in labels:
            return int(fake_label)
        raise UsageError(f"hf expert: fake label '{fake_label}' is not one of the model's labels ({shown})")
    exact = [k for k, v in labels.items() if v.strip().lower() in FAKE_NAMES]
    if len(exact) != 1:
        exact = [k for k, v in labels.items() if "fake" in v.lower()]
    if len(exact) == 1:
        return exact[0]
    raise UsageError(
        f"hf expert: cannot tell which label means fake among {shown}; pass fake_label=NAME (--fake-label NAME)"
    )


class HFExpert:
    """A transformers image classifier used as an expert. ``localize`` returns None (not supported)."""

    name = "hf"
    prompt_name = "detector"

    def __init__(self, model: Any, processor: Any, fake_index: int, device: str = "cpu", batch_size: int = 16,
                 source: str | None = None):
        self.model = model.to(device).eval()
        self.processor = processor
        self.fake_index = int(fake_index)
        self.device = device
        self.batch_size = int(batch_size)
        self.source = source

    @classmethod
    def from_config(cls, config: dict[str, Any] | Any, device: str = "cpu", fake_label: str | None = None,
                    processor: Any = None, **kw: Any) -> "HFExpert":
        """Random weights from a transformers config (a PretrainedConfig or its dict with ``model_type``)."""
        from transformers import AutoConfig, AutoModelForImageClassification, ViTImageProcessor

        if isinstance(config, dict):
            config = dict(config)
            config.setdefault("model_type", "vit")
            model_type = config.pop("model_type")
            config = AutoConfig.for_model(model_type, **config)
        model = AutoModelForImageClassification.from_config(config)
        if processor is None:
            size = getattr(config, "image_size", 224)
            processor = ViTImageProcessor(size={"height": size, "width": size})
        return cls(model, processor, find_fake_label(model.config.id2label, fake_label), device=device, **kw)

    @classmethod
    def load(cls, weights: str | Path | None = None, device: str = "cpu", fake_label: str | None = None,
             batch_size: int = 16, **_: Any) -> "HFExpert":
        if not weights:
            raise UsageError("the hf expert needs a checkpoint: weights=HUB_ID_OR_DIR (e.g. a 'Deep-Fake-Detector-Model' id or a local dir)")
        from transformers import AutoImageProcessor, AutoModelForImageClassification

        src = str(weights)
        local = Path(src).is_dir()
        try:
            processor = AutoImageProcessor.from_pretrained(src, local_files_only=local)
            model = AutoModelForImageClassification.from_pretrained(src, local_files_only=local)
        except (OSError, ValueError) as err:
            where = "local directory" if local else "hub id"
            raise ModelNotFoundError(
                f"hf expert: cannot load image classifier from {where} '{src}': {str(err).splitlines()[0]}"
            ) from err
        fake_index = find_fake_label(model.config.id2label, fake_label)
        return cls(model, processor, fake_index, device=device, batch_size=batch_size, source=src)

    @torch.inference_mode()
    def score(self, faces: Sequence[Any]) -> list[ExpertScore]:
        out: list[ExpertScore] = []
        images = [f.convert("RGB") if hasattr(f, "convert") else f for f in faces]
        for i in range(0, len(images), self.batch_size):
            batch = self.processor(images=images[i : i + self.batch_size], return_tensors="pt")
            logits = self.model(pixel_values=batch["pixel_values"].to(self.device)).logits.float()
            if logits.shape[-1] == 1:
                p = torch.sigmoid(logits[:, 0])
                p = p if self.fake_index == 0 else 1 - p
            else:
                p = torch.softmax(logits, dim=-1)[:, self.fake_index]
            out += [ExpertScore(self.name, float(np.clip(v, 0.0, 1.0))) for v in p.cpu().numpy()]
        return out

    def localize(self, faces: Sequence[Any]) -> None:
        """Not supported: a plain image classifier has no spatial output."""
        return None

    def info(self) -> dict[str, Any]:
        cfg = self.model.config
        return {
            "name": self.name,
            "prompt_name": self.prompt_name,
            "backbone": cfg.model_type,
            "weights": self.source,
            "sha256": None,
            "fake_label": cfg.id2label.get(self.fake_index, str(self.fake_index)),
            "id2label": {int(k): v for k, v in cfg.id2label.items()},
            "training": {},
        }
