"""Random-weight checkpoints built from real configs, for tests and benchmarks (nothing is downloaded).

    build_checkpoint("../shared/checkpoints/llava-1.5-7b-hf", "/tmp/tiny-llava", text_layers=2, text_width=64)
    x2dfd explain face.jpg --model /tmp/tiny-llava

The config, tokenizer, chat template and processor of the source are kept, so token ids and prompts
are the real ones (llava-1.5: 576 image tokens); only depth and width shrink. With
``text_width=None`` the real width is kept (benchmarks: full width, reduced depth). The result is
written with ``save_pretrained`` and loads through exactly the path a user's checkpoint takes.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch


def _set(cfg, **values):
    for key, value in values.items():
        if value is not None and hasattr(cfg, key):
            setattr(cfg, key, value)


def shrink_config(config, text_layers=2, text_width=64, text_heads=4, vision_layers=1, vision_width=32, vision_heads=2):
    """Shrink depth (and width, unless ``*_width`` is None) of a vision-language config, in place."""
    config = copy.deepcopy(config)
    text, vision = config.text_config, config.vision_config
    model_type = config.model_type
    if model_type.startswith("qwen2") and "vl" in model_type:
        # mrope splits head_dim (128) into sections: keep head_dim, shrink the number of heads.
        head_dim = text.hidden_size // text.num_attention_heads
        if text_width is not None:
            text_heads = max(1, text_width // head_dim)
            text_width = text_heads * head_dim
            _set(text, hidden_size=text_width, intermediate_size=2 * text_width, num_attention_heads=text_heads,
                 num_key_value_heads=1)
        _set(text, num_hidden_layers=text_layers, max_window_layers=text_layers)
        if vision_width is not None:
            _set(vision, embed_dim=vision_width, num_heads=vision_heads)
        _set(vision, depth=vision_layers, hidden_size=text.hidden_size)
        if hasattr(config, "hidden_size"):
            config.hidden_size = text.hidden_size
    else:
        if text_width is not None:
            _set(text, hidden_size=text_width, intermediate_size=2 * text_width, num_attention_heads=text_heads,
                 num_key_value_heads=text_heads, head_dim=text_width // text_heads)
        _set(text, num_hidden_layers=text_layers)
        if vision_width is not None:
            _set(vision, hidden_size=vision_width, intermediate_size=2 * vision_width, num_attention_heads=vision_heads,
                 projection_dim=vision_width)
        _set(vision, num_hidden_layers=vision_layers)
        if getattr(config, "vision_feature_layer", None) is not None and vision_layers is not None:
            config.vision_feature_layer = -1 if vision_layers < 2 else config.vision_feature_layer
    if getattr(text, "layer_types", None) is not None:
        text.layer_types = list(text.layer_types)[: text.num_hidden_layers]
    return config


def build_checkpoint(source_dir: str | Path, out_dir: str | Path, seed: int = 0, dtype: torch.dtype = torch.float32,
                     **shrink) -> Path:
    """Build a random-weight model from ``source_dir``'s config (shrunk), save it with its processor."""
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

    config = shrink_config(AutoConfig.from_pretrained(source_dir), **shrink)
    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_config(config, dtype=dtype)
    processor = AutoProcessor.from_pretrained(source_dir)
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir
